//! The admin listener's endpoints and the background watchers that decide
//! readiness. Never reachable from the public listener.
//!
//! - `GET /healthz`: 200 while the process serves at all.
//! - `GET /readyz`: 200 once the JWKS is loaded and the AppSync real-time
//!   host resolves, 503 before that and from the first moment of a drain.
//! - `GET /metrics`: Prometheus text format.
//!
//! The watchers: [`load_jwks`] (until the first load succeeds, backing
//! off) and [`watch_upstream_dns`] (every 10 s until the drain).

use crate::response::{json_error, text, Body};
use crate::state::RelayState;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// The admin listener: `/healthz` (alive), `/readyz` (keys loaded, not
/// draining), `/metrics` (Prometheus text).
pub fn respond(state: &RelayState, req: &Request<Incoming>) -> Response<Body> {
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
            let mut resp = text(StatusCode::OK, state.metrics.render());
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            resp
        }
        _ => json_error(StatusCode::NOT_FOUND, "not_found", "not_found"),
    }
}

/// Resolves the AppSync real-time host now and every 10 s: readiness
/// follows it, so a pod whose DNS is broken takes no new traffic.
pub async fn watch_upstream_dns(state: Arc<RelayState>) {
    if let Some(ip) = state.config.appsync_address {
        // Pinned: there is no name to resolve.
        tracing::info!(%ip, "AppSync connections pinned to an address");
        state.upstream_resolvable.store(true, Ordering::Release);
        return;
    }
    let url = &state.config.realtime_endpoint;
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
        let was = state.upstream_resolvable.swap(ok, Ordering::AcqRel);
        if was != ok {
            if ok {
                tracing::info!(%host, "upstream host resolves");
            } else {
                tracing::warn!(%host, "upstream host does not resolve; not ready");
            }
        }
        tokio::select! {
            _ = state.draining.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
    }
}

/// Loads the JWKS until it succeeds, backing off; readiness waits for it.
pub async fn load_jwks(state: Arc<RelayState>) {
    let mut delay = Duration::from_millis(250);
    loop {
        let attempt = tokio::select! {
            _ = state.draining.cancelled() => return,
            r = state.verifier.load_jwks() => r,
        };
        match attempt {
            Ok(keys) => {
                state.metrics.jwks_fetches.with_label_values(&["ok"]).inc();
                tracing::info!(keys, jwks_url = %state.config.jwks_url, "signing keys loaded");
                return;
            }
            Err(e) => {
                state
                    .metrics
                    .jwks_fetches
                    .with_label_values(&["error"])
                    .inc();
                tracing::warn!(error = %e, jwks_url = %state.config.jwks_url, retry_in_ms = delay.as_millis() as u64, "JWKS not loaded yet; not ready");
            }
        }
        tokio::select! {
            _ = state.draining.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}
