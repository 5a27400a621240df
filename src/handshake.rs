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
//! [`accept`] is that list as code. Each refusal is logged once, with a
//! bounded reason and never a token or cookie value, counted in
//! `handshakes_total{outcome=<reason>}`, and sent with `Connection: close`:
//! a refused upgrade's connection is not kept alive to hold memory.

use crate::authenticate::{complete, identify, Authenticated};
use crate::error::RelayError;
use crate::limits::{ConnectionPermit, LimitHit};
use crate::protocol;
use crate::relay::{ConnectionContext, Relay, RelayOutcome};
use crate::response::{empty, Body};
use crate::rewrite::UpstreamAuth;
use crate::state::RelayState;
use crate::upgrade;
use crate::upstream::{self, UpstreamSocket};
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_PROTOCOL, SET_COOKIE, UPGRADE,
};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

/// What a successful handshake produced before the 101 goes out.
struct Accepted {
    accept_key: HeaderValue,
    upstream: UpstreamSocket,
    auth: UpstreamAuth,
    authenticated: Authenticated,
    /// This connection's slot in the admission limits, held until it ends.
    permit: ConnectionPermit,
    /// The socket's lease in the cluster-wide per-user count.
    lease: Option<crate::cluster::leases::Lease>,
    client_ip: std::net::IpAddr,
}

/// A refusal, with the renewed session cookies it must still carry when
/// the session was renewed (or a pending renewal taken) before the step
/// that failed: Cognito may already have rotated the refresh token.
struct Refused {
    error: RelayError,
    set_cookies: Vec<HeaderValue>,
}

impl<E> From<E> for Refused
where
    RelayError: From<E>,
{
    fn from(error: E) -> Refused {
        Refused {
            error: error.into(),
            set_cookies: Vec::new(),
        }
    }
}

/// Answers an upgrade request: a 101 (and the relay task), or the refusal.
pub async fn respond(
    state: Arc<RelayState>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let started = Instant::now();
    let request_id = state.config.trust_forwarded.request_id(req.headers(), peer);
    match accept(&state, &req, peer).await {
        Ok(accepted) => {
            record_accepted(&state, started);
            let on_upgrade = hyper::upgrade::on(&mut req);
            switch_protocols(state, accepted, on_upgrade, peer, request_id)
        }
        Err(Refused { error, set_cookies }) => {
            record_refused(&state, &error, peer, &request_id);
            let mut resp = error.into_response();
            let h = resp.headers_mut();
            h.insert(CONNECTION, HeaderValue::from_static("close"));
            for cookie in set_cookies {
                h.append(SET_COOKIE, cookie);
            }
            resp
        }
    }
}

/// The phases, in contract order.
async fn accept(
    state: &RelayState,
    req: &Request<Incoming>,
    peer: SocketAddr,
) -> Result<Accepted, Refused> {
    if state.stop_accepting.is_cancelled() {
        return Err(RelayError::Draining.into());
    }
    let accept_key = upgrade::check_upgrade(req)?;
    state.config.origins.check(req.headers())?;
    // Full already? Refuse before spending any verification work.
    if state.limits.total_full() {
        return Err(limit_hit(state, LimitHit::Total).into());
    }
    // Any `header-…` the browser offered holds a placeholder at best; it is
    // never looked at or forwarded.
    if !upgrade::offered_protocols(req.headers()).contains(&protocol::SUBPROTOCOL) {
        return Err(RelayError::NoSubprotocol.into());
    }
    let (secure, client_ip) = (
        state.is_secure(req.headers(), peer),
        state.client_ip(req.headers(), peer),
    );
    let identified = timed(state, "verify", identify(state, req.headers())).await?;
    // Admission before any Cognito call: a refused request spends none.
    let permit = match state.limits.try_acquire(identified.sub(), client_ip) {
        Ok(permit) => permit,
        Err(hit) => {
            return Err(Refused {
                error: limit_hit(state, hit),
                set_cookies: identified.undelivered_cookies(state, secure),
            })
        }
    };
    // The same user's limit across replicas (with --redis-url).
    let max_per_user = state.config.limits.max_connections_per_user;
    let lease = match state.cluster.admit(identified.sub(), max_per_user).await {
        Ok(lease) => lease,
        Err(()) => {
            drop(permit);
            return Err(Refused {
                error: limit_hit(state, LimitHit::PerUser),
                set_cookies: identified.undelivered_cookies(state, secure),
            });
        }
    };
    let authenticated = timed(
        state,
        "renew",
        complete(state, identified, secure, client_ip),
    )
    .await?;
    let auth = UpstreamAuth::new(
        authenticated.token.as_str(),
        state.config.http_host.as_str(),
    );
    let upstream = match timed(state, "upstream_connect", connect_upstream(state, &auth)).await {
        Ok(upstream) => upstream,
        Err(error) => {
            return Err(Refused {
                error,
                set_cookies: authenticated.set_cookies,
            })
        }
    };
    Ok(Accepted {
        accept_key,
        upstream,
        auth,
        authenticated,
        permit,
        lease,
        client_ip,
    })
}

/// Opens the upstream as the user `auth` stands for, counting the result.
async fn connect_upstream(
    state: &RelayState,
    auth: &UpstreamAuth,
) -> Result<UpstreamSocket, RelayError> {
    let result = upstream::connect(&state.upstream, auth).await;
    let label = result.as_ref().map(|_| "ok").unwrap_or_else(|e| e.reason());
    state
        .metrics
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
        accept_key,
        upstream,
        auth,
        authenticated,
        permit,
        lease,
        client_ip,
    } = accepted;
    let sub = authenticated.claims.sub.clone();
    // Registered before the 101 goes out: a sign-out from here on reaches it.
    let who = crate::session::Who {
        subjects: crate::session::subjects_of(&authenticated.claims),
        signed_in_at: crate::session::signed_in_at(&authenticated.claims),
    };
    let registration = state.sockets.register(
        &authenticated.session.proof,
        authenticated.session.browser_refresh,
        who,
    );
    let ctx = ConnectionContext {
        registration,
        state: state.clone(),
        auth,
        expires_at: authenticated.claims.exp,
        issued_at: authenticated.claims.iat,
        session: authenticated.session,
    };
    let mut relay = Relay::new(upstream, ctx);
    let task_state = state.clone();
    state.tracker.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::info!(%request_id, %peer, error = %e, "browser vanished during the upgrade");
                return;
            }
        };
        let mut client = WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            Some(task_state.ws_config),
        )
        .await;
        let metrics = &task_state.metrics;
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
    h.insert(SEC_WEBSOCKET_ACCEPT, accept_key);
    h.insert(
        SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(protocol::SUBPROTOCOL),
    );
    // Renewed session cookies ride on the 101 (Chromium stores them; see README).
    for cookie in authenticated.set_cookies {
        h.append(SET_COOKIE, cookie);
    }
    resp
}

// === Metrics and logs ===

/// Runs a phase, observing its duration in `handshake_seconds{phase}`
/// when it succeeds.
async fn timed<T>(
    state: &RelayState,
    phase: &'static str,
    fut: impl std::future::Future<Output = Result<T, RelayError>>,
) -> Result<T, RelayError> {
    let started = Instant::now();
    let result = fut.await?;
    state
        .metrics
        .handshake_seconds
        .with_label_values(&[phase])
        .observe(started.elapsed().as_secs_f64());
    Ok(result)
}

fn record_accepted(state: &RelayState, started: Instant) {
    state
        .metrics
        .handshakes
        .with_label_values(&["accepted"])
        .inc();
    state
        .metrics
        .handshake_seconds
        .with_label_values(&["total"])
        .observe(started.elapsed().as_secs_f64());
}

fn record_refused(state: &RelayState, e: &RelayError, peer: SocketAddr, request_id: &str) {
    state
        .metrics
        .handshakes
        .with_label_values(&[e.reason()])
        .inc();
    tracing::info!(%request_id, %peer, status = e.status().as_u16(), reason = e.reason(), side = e.side(), error = %e, "websocket handshake refused");
}

fn limit_hit(state: &RelayState, hit: LimitHit) -> RelayError {
    state
        .metrics
        .limits_hit
        .with_label_values(&[hit.reason()])
        .inc();
    RelayError::Limit(hit)
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
    let metrics = &state.metrics;
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
