//! The admin listener's endpoints and the background watchers that decide
//! readiness. Never reachable from the public listener.
//!
//! - `GET /healthz`: 200 while the process serves at all.
//! - `GET /readyz`: 200 once the JWKS is loaded and the AppSync real-time
//!   host resolves, 503 before that and from the first moment of a drain.
//! - `GET /metrics`: Prometheus text format.
//! - `POST /sessions/end` with `{"sub": "…"}` or `{"username": "…"}`: ends
//!   that user's sessions (every sign-in made until now) on every replica:
//!   open sockets close with 4401, handshakes are refused until the user
//!   signs in again. Answers `{"closed_here": <sockets and handshakes in
//!   progress closed on this replica>, "reach": "local" | "cluster" |
//!   "degraded"}`: the other replicas close theirs as the end reaches them
//!   (`reach` says whether it did), and do not count them here.
//!
//! The watchers: [`load_jwks`] (until the first load succeeds, backing
//! off) and [`watch_upstream_dns`] (every 10 s until the drain).

use crate::response::{json_error, text, Body};
use crate::session::Subject;
use crate::state::RelayState;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use std::sync::Arc;
use std::time::Duration;

/// Largest `POST /sessions/end` body read.
const MAX_END_BODY: usize = 4096;
/// Longest `sub` or username accepted (Cognito's usernames: 128).
const MAX_SUBJECT_CHARS: usize = 256;

/// The admin listener: `/healthz` (alive), `/readyz` (keys loaded, not
/// draining), `/metrics` (Prometheus text), `POST /sessions/end`.
pub async fn respond(state: &RelayState, req: Request<Incoming>) -> Response<Body> {
    if req.uri().path() == "/sessions/end" {
        return end_sessions(state, req).await;
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        // Ready stays ready with a warning: an outage of trust settings
        // must not take every replica out of the load balancer.
        "/readyz" if state.is_ready() => text(
            StatusCode::OK,
            format!("ready\n{}", state.readiness_notes()),
        ),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        "/metrics" => {
            let mut resp = text(StatusCode::OK, state.metrics().render());
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            resp
        }
        _ => json_error(StatusCode::NOT_FOUND, "not_found", "not_found"),
    }
}

/// `POST /sessions/end`: `{"sub": "…"}` or `{"username": "…"}`, one of them.
async fn end_sessions(state: &RelayState, req: Request<Incoming>) -> Response<Body> {
    use http_body_util::BodyExt as _;
    if req.method() != hyper::Method::POST {
        return json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method_not_allowed",
        );
    }
    let bad = || {
        json_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "expected_sub_or_username",
        )
    };
    let Ok(body) = http_body_util::Limited::new(req.into_body(), MAX_END_BODY)
        .collect()
        .await
    else {
        return bad();
    };
    let bytes = body.to_bytes();
    let Ok(text_body) = std::str::from_utf8(&bytes) else {
        return bad();
    };
    let Ok(serde_json::Value::Object(fields)) = crate::strict_json::parse(text_body) else {
        return bad();
    };
    let subject = match (fields.len(), fields.get("sub"), fields.get("username")) {
        (1, Some(serde_json::Value::String(s)), None) => Subject::Sub(s.clone()),
        (1, None, Some(serde_json::Value::String(u))) => Subject::Username(u.clone()),
        _ => return bad(),
    };
    let (Subject::Sub(v) | Subject::Username(v)) = &subject;
    if v.is_empty() || v.chars().count() > MAX_SUBJECT_CHARS {
        return bad();
    }
    let (closed, reach) = state.sessions().end_subject(&subject).await;
    let body = serde_json::json!({"closed_here": closed, "reach": reach.as_str()}).to_string();
    let mut resp = text(StatusCode::OK, body);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// What the other replicas said (and what a resync found in Redis) is
/// applied by the session authority, until the shutdown.
pub async fn apply_remote_ends(state: Arc<RelayState>) {
    let sessions = state.sessions().clone();
    sessions.follow_replicas(state.shutdown().clone()).await;
}

/// Resolves the AppSync real-time host now and every 10 s: readiness
/// follows it, so a pod whose DNS is broken takes no new traffic.
pub async fn watch_upstream_dns(state: Arc<RelayState>) {
    if let Some(ip) = state.config().appsync_address {
        // Pinned: there is no name to resolve.
        tracing::info!(%ip, "AppSync connections pinned to an address");
        state.set_upstream_resolvable(true);
        return;
    }
    let url = &state.config().realtime_endpoint;
    let host = url.host_str().unwrap_or_default().to_string();
    let port = url.port_or_known_default().unwrap_or(443);
    loop {
        let lookup = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::lookup_host((host.as_str(), port)),
        )
        .await;
        let ok = match lookup {
            Ok(Ok(mut addrs)) => addrs.next().is_some(),
            _ => false,
        };
        let was = state.set_upstream_resolvable(ok);
        if was != ok {
            if ok {
                tracing::info!(%host, "upstream host resolves");
            } else {
                tracing::warn!(%host, "upstream host does not resolve; not ready");
            }
        }
        tokio::select! {
            _ = state.draining().cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
    }
}

/// Loads the JWKS until it succeeds, backing off; readiness waits for it.
pub async fn load_jwks(state: Arc<RelayState>) {
    let mut delay = Duration::from_millis(250);
    loop {
        let attempt = tokio::select! {
            _ = state.draining().cancelled() => return,
            r = state.sessions().verifier().load_jwks() => r,
        };
        match attempt {
            Ok(keys) => {
                state
                    .metrics()
                    .jwks_fetches
                    .with_label_values(&["ok"])
                    .inc();
                tracing::info!(keys, jwks_url = %state.config().jwks_url, "signing keys loaded");
                return;
            }
            Err(e) => {
                state
                    .metrics()
                    .jwks_fetches
                    .with_label_values(&["error"])
                    .inc();
                tracing::warn!(error = %e, jwks_url = %state.config().jwks_url, retry_in_ms = delay.as_millis() as u64, "JWKS not loaded yet; not ready");
            }
        }
        tokio::select! {
            _ = state.draining().cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// How often the channel policy file is read for changes.
pub const POLICY_RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// Watches `--channel-policy`'s file: a changed, valid file replaces the
/// policy (open connections then decide their subscriptions again); a
/// broken one is logged once per content and the previous policy stays.
/// The file is compared by content, so a Kubernetes ConfigMap's symlink
/// swap and a same-second edit are both seen.
pub async fn watch_channel_policy(state: Arc<RelayState>) {
    let (Some(live), Some((path, _))) = (state.live_policy(), &state.config().channel_policy)
    else {
        return;
    };
    let read =
        |p: std::path::PathBuf| tokio::task::spawn_blocking(move || crate::policy::read_file(&p));
    let count = |result: &str| {
        state
            .metrics()
            .policy_reloads
            .with_label_values(&[result])
            .inc()
    };
    let mut seen = read(path.clone()).await.ok().and_then(Result::ok);
    loop {
        tokio::select! {
            _ = state.draining().cancelled() => return,
            _ = tokio::time::sleep(POLICY_RELOAD_INTERVAL) => {}
        }
        let now = match read(path.clone()).await {
            Ok(Ok(text)) => text,
            Ok(Err(e)) => {
                if seen.take().is_some() {
                    count("error");
                    tracing::warn!(file = %path.display(), error = %e, "channel policy unreadable; keeping the previous policy");
                }
                continue;
            }
            Err(_) => continue,
        };
        if seen.as_deref() == Some(now.as_str()) {
            continue;
        }
        let parsed = crate::policy::Policy::from_toml(&now);
        seen = Some(now);
        match parsed {
            Ok(policy) => {
                let rules = policy.rules().len();
                live.replace(policy);
                count("ok");
                tracing::info!(file = %path.display(), rules, "channel policy reloaded");
            }
            Err(e) => {
                count("error");
                tracing::warn!(file = %path.display(), error = %e, "channel policy changed but is not valid; keeping the previous policy");
            }
        }
    }
}
