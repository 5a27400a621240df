//! `GET <events-path>/realtime`: deciding whether a browser gets a 101, in
//! the contract's order, then handing both sockets to the relay.
//!
//! 0. listeners still accepting → else 503 (during the drain delay new
//!    clients are still served; after it, a keep-alive connection could
//!    still carry a new upgrade, and gets 503)
//! 1. valid WebSocket upgrade → else 400
//! 2. Origin in the allowlist → else 403 (then: relay full → 429)
//! 3. `aws-appsync-event-ws` offered → else 400 (`header-…` offers ignored)
//! 4. session cookie present and its token genuine → else 401
//! 5. admission per user and per client IP → else 429
//! 6. token renewed if due (within the refresh budgets) → else 401 / 429 / 503
//! 7. upstream connected with the token → 401 / 502 / 504
//! 8. 101 selecting `aws-appsync-event-ws`
//!
//! Once the session was renewed, every answer carries the new cookies, the
//! refusals too.
//!
//! Steps 0–6 are the gate the HTTP publish passes too ([`crate::gate`]);
//! [`accept`] runs it, then step 7, then checks that no end was said since
//! step 4 (the request was registered among the user's live sockets before
//! any end was checked: an end said at any instant either refuses the
//! handshake or closes the socket it became). Each refusal is logged once,
//! with a bounded reason and never a token or cookie value, counted in
//! `handshakes_total{outcome=<reason>}`, and sent with `Connection: close`:
//! a refused upgrade's connection is not kept alive to hold memory.

mod refusal;

use crate::error::RelayError;
use crate::gate::{Gate, Passed, Refused, Route};
use crate::protocol;
use crate::relay::{ConnectionContext, Relay, RelayOutcome};
use crate::response::{empty, Body};
use crate::rewrite::UpstreamAuth;
use crate::state::RelayState;
use crate::upstream::{self, UpstreamSocket};
use crate::ws::{Role, WsSocket};
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_PROTOCOL, SET_COOKIE, UPGRADE,
};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// What a successful handshake produced before the 101 goes out.
struct Accepted {
    passed: Passed,
    upstream: UpstreamSocket,
    auth: UpstreamAuth,
}

/// Answers an upgrade request: a 101 (and the relay task), or the refusal.
pub async fn respond(
    state: Arc<RelayState>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let started = Instant::now();
    let request_id = state
        .config()
        .trust_forwarded
        .request_id(req.headers(), peer);
    match accept(&state, &req, peer).await {
        Ok(accepted) => {
            record_accepted(&state, started);
            let on_upgrade = hyper::upgrade::on(&mut req);
            switch_protocols(state, accepted, on_upgrade, peer, request_id)
        }
        Err(refused) => {
            record_refused(&state, &refused.error, peer, &request_id);
            match refusal::in_band(&state, refused, &mut req) {
                Ok(resp) => resp,
                Err(refused) => refused.into_response(Route::Upgrade),
            }
        }
    }
}

/// The gate's phases, then the upstream connection with the token.
async fn accept(
    state: &RelayState,
    req: &Request<Incoming>,
    peer: SocketAddr,
) -> Result<Accepted, Refused> {
    let passed = Gate::pass(state, Route::Upgrade, req, peer).await?;
    let authenticated = &passed.authenticated;
    let auth = UpstreamAuth::new(
        authenticated.token.as_str(),
        state.config().http_host.as_str(),
    );
    let started = Instant::now();
    let upstream = match connect_upstream(state, &auth).await {
        Ok(upstream) => upstream,
        Err(error) => {
            return Err(
                Refused::with_cookies(error, authenticated.set_cookies.clone())
                    .in_band(passed.accept_key.clone()),
            )
        }
    };
    state
        .metrics()
        .handshake_seconds
        .with_label_values(&["upstream_connect"])
        .observe(started.elapsed().as_secs_f64());
    // An end said while the upstream connection was being opened.
    Gate::still_live(authenticated).map_err(|r| r.in_band(passed.accept_key.clone()))?;
    Ok(Accepted {
        passed,
        upstream,
        auth,
    })
}

/// Opens the upstream as the user `auth` stands for, counting the result.
async fn connect_upstream(
    state: &RelayState,
    auth: &UpstreamAuth,
) -> Result<UpstreamSocket, RelayError> {
    let result = upstream::connect(state.upstream(), auth).await;
    let label = result.as_ref().map(|_| "ok").unwrap_or_else(|e| e.reason());
    state
        .metrics()
        .upstream_connects
        .with_label_values(&[label])
        .inc();
    Ok(result?)
}

/// The 101, with the relay task spawned to take over once hyper has
/// written it.
fn switch_protocols(
    state: Arc<RelayState>,
    accepted: Accepted,
    on_upgrade: hyper::upgrade::OnUpgrade,
    peer: SocketAddr,
    request_id: String,
) -> Response<Body> {
    let Accepted {
        passed,
        upstream,
        auth,
    } = accepted;
    let Passed {
        accept_key,
        authenticated,
        permit,
        lease,
        client_ip,
    } = passed;
    let sub = authenticated.claims.sub.clone();
    let set_cookies = authenticated.set_cookies;
    // Registered since the gate identified it (before any end was
    // checked): an end from then on reaches the socket.
    let ctx = ConnectionContext {
        registration: authenticated.registration,
        state: state.clone(),
        auth,
        claims: authenticated.claims,
        session: authenticated.session,
    };
    let mut relay = Relay::new(upstream, ctx);
    let task_state = state.clone();
    state.tracker().spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::info!(%request_id, %peer, error = %e, "browser vanished during the upgrade");
                return;
            }
        };
        let mut client = WsSocket::new(
            TokioIo::new(upgraded),
            Role::Server,
            task_state.client_limits(),
            &[],
        );
        let metrics = task_state.metrics();
        metrics.connections_active.inc();
        let opened = Instant::now();
        let outcome = relay.run(&mut client).await;
        drop(permit);
        drop(lease);
        metrics.connections_active.dec();
        let who = Who {
            request_id: &request_id,
            peer,
            client_ip,
            sub: &sub,
        };
        record_ended(&task_state, &outcome, opened, &who);
    });

    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    if let Some(key) = accept_key {
        h.insert(SEC_WEBSOCKET_ACCEPT, key);
    }
    h.insert(
        SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(protocol::SUBPROTOCOL),
    );
    // Renewed session cookies ride on the 101 (Chromium stores them; see README).
    for cookie in set_cookies {
        h.append(SET_COOKIE, cookie);
    }
    resp
}

// === Metrics and logs ===

fn record_accepted(state: &RelayState, started: Instant) {
    state
        .metrics()
        .handshakes
        .with_label_values(&["accepted"])
        .inc();
    state
        .metrics()
        .handshake_seconds
        .with_label_values(&["total"])
        .observe(started.elapsed().as_secs_f64());
}

fn record_refused(state: &RelayState, e: &RelayError, peer: SocketAddr, request_id: &str) {
    state
        .metrics()
        .handshakes
        .with_label_values(&[e.reason()])
        .inc();
    tracing::info!(%request_id, %peer, status = e.status().as_u16(), reason = e.reason(), side = e.side(), error = %e, "websocket handshake refused");
}

/// Whose connection it was, for its log line.
struct Who<'a> {
    request_id: &'a str,
    peer: SocketAddr,
    client_ip: std::net::IpAddr,
    sub: &'a str,
}

/// The connection's closing figures: metrics and its one log line, whose
/// fields are a stable interface (README, "Logs").
fn record_ended(state: &RelayState, outcome: &RelayOutcome, opened: Instant, who: &Who) {
    let metrics = state.metrics();
    metrics
        .connection_seconds
        .observe(opened.elapsed().as_secs_f64());
    let code = outcome.client_close.unwrap_or(0);
    metrics
        .connections_closed
        .with_label_values(&[close_label(code)])
        .inc();
    tracing::info!(
        request_id = %who.request_id,
        peer = %who.peer,
        client_ip = %who.client_ip,
        sub = %who.sub,
        duration_ms = opened.elapsed().as_millis() as u64,
        reason = %outcome.ending.reason(),
        close_code = code,
        upstream_close_code = outcome.upstream_close.unwrap_or(0),
        frames_to_upstream = outcome.stats.frames_to_upstream,
        frames_to_client = outcome.stats.frames_to_client,
        local_replies = outcome.stats.local_replies,
        refreshes = outcome.stats.refreshes,
        redials = outcome.stats.redials,
        "websocket relay ended"
    );
}

/// Bounded label for a close code.
fn close_label(code: u16) -> &'static str {
    match code {
        0 => "none",
        1000 => "1000",
        1001 => "1001",
        1002 => "1002",
        1007 => "1007",
        1003 => "1003",
        1009 => "1009",
        1011 => "1011",
        1013 => "1013",
        4000 => "4000",
        4401 => "4401",
        _ => "other",
    }
}
