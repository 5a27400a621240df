//! `POST <events-path>`: HTTP publish on behalf of the signed-in user.
//!
//! The same gate as the WebSocket ([`crate::gate`]: Origin, session, the
//! per-user publish budget `--publish-rate` — the budget a socket has —
//! and renewal), then the body — read within `--body-timeout` and `--max-message-bytes`
//! — is sent to AppSync's `/event` with the user's token as
//! `Authorization`, and AppSync's status and body come back to the browser.
//! Once the session was renewed, every answer carries the new cookies,
//! errors included. Only `content-type` is copied from the browser's
//! request: any `Authorization`, `x-api-key` or other header the browser
//! sent is dropped, never forwarded. With `--channel-policy`, the body's
//! channel must be one the user may publish on, or nothing is sent (403).

use crate::error::RelayError;
use crate::gate::{Gate, Refused, Route};
use crate::policy::Op;
use crate::protocol::Channel;
use crate::response::{full, Body};
use crate::state::RelayState;
use crate::upstream::UpstreamError;
use crate::verify::Claims;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, SET_COOKIE};
use hyper::{Request, Response};
use std::net::SocketAddr;
use std::sync::Arc;

/// AppSync's publish answers are small; cap what we buffer from it.
const MAX_UPSTREAM_RESPONSE_BYTES: usize = 1024 * 1024;

/// Answers an HTTP publish: AppSync's answer, or the refusal.
pub async fn respond(
    state: Arc<RelayState>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    match publish(&state, req, peer).await {
        Ok(resp) => {
            let outcome = match resp.status().as_u16() {
                200..=299 => "2xx",
                400..=499 => "upstream_4xx",
                _ => "upstream_5xx",
            };
            state
                .metrics()
                .publish_requests
                .with_label_values(&[outcome])
                .inc();
            resp
        }
        Err(refused) => {
            let e = &refused.error;
            state
                .metrics()
                .publish_requests
                .with_label_values(&[e.reason()])
                .inc();
            tracing::info!(%peer, status = e.status().as_u16(), reason = e.reason(), side = e.side(), error = %e, "http publish refused");
            refused.into_response(Route::Publish)
        }
    }
}

async fn publish(
    state: &RelayState,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Body>, Refused> {
    let passed = Gate::pass(state, Route::Publish, &req, peer).await?;
    let authenticated = passed.authenticated;
    let cookies = authenticated.set_cookies.clone();
    let with_cookies = |e: RelayError| Refused::with_cookies(e, cookies.clone());
    let token = HeaderValue::from_str(&authenticated.token)
        .map_err(|_| with_cookies(RelayError::Internal("token is not header-safe")))?;

    let config = state.config();
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("application/json"));
    let read = Limited::new(req.into_body(), config.max_message_bytes).collect();
    let body = match tokio::time::timeout(config.body_timeout, read).await {
        Err(_) => return Err(with_cookies(RelayError::BodyTimeout)),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(with_cookies(RelayError::BodyTooLarge))
        }
        Ok(Err(_)) => return Err(with_cookies(RelayError::BodyRead)),
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    // An end said while the body arrived: nothing is published for it.
    Gate::still_live(&authenticated)?;
    let body = match decided_body(state, body, &authenticated.claims) {
        Some(body) => body,
        None => return Err(with_cookies(RelayError::ChannelPolicy)),
    };

    let upstream_req = Request::post(config.http_endpoint.as_str())
        .header(CONTENT_TYPE, content_type)
        .header(AUTHORIZATION, token)
        .body(Full::new(body))
        .map_err(|_| with_cookies(RelayError::Internal("could not build the upstream request")))?;
    let timeout = config.upstream_timeout;
    let exchange = async {
        let resp = state
            .appsync_http()
            .request(upstream_req)
            .await
            .map_err(|e| UpstreamError::Unreachable(e.to_string()))?;
        let (parts, body) = resp.into_parts();
        let bytes = Limited::new(body, MAX_UPSTREAM_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| UpstreamError::Protocol(e.to_string()))?
            .to_bytes();
        Ok::<_, UpstreamError>((parts, bytes))
    };
    let (parts, bytes): (_, Bytes) = match tokio::time::timeout(timeout, exchange).await {
        Err(_) => return Err(with_cookies(UpstreamError::Timeout(timeout).into())),
        Ok(Err(e)) => return Err(with_cookies(e.into())),
        Ok(Ok(answer)) => answer,
    };

    let mut resp = Response::new(full(bytes));
    *resp.status_mut() = parts.status;
    if let Some(ct) = parts.headers.get(CONTENT_TYPE) {
        resp.headers_mut().insert(CONTENT_TYPE, ct.clone());
    }
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for cookie in authenticated.set_cookies {
        resp.headers_mut().append(SET_COOKIE, cookie);
    }
    Ok(resp)
}

/// The body to send AppSync: as the browser sent it without a channel
/// policy; with one, `None` unless the user may publish on its channel,
/// and then rebuilt from what was decided on (`channel` and `events`
/// only), so AppSync cannot read another channel than the relay did (a
/// `"Channel"` key beside `"channel"`, say). The body is read strictly:
/// duplicate keys are refused; a body without one readable channel is
/// denied, never waved through.
fn decided_body(state: &RelayState, body: Bytes, claims: &Claims) -> Option<Bytes> {
    if state.live_policy().is_none() {
        return Some(body);
    }
    let parsed = std::str::from_utf8(&body)
        .ok()
        .and_then(|text| crate::strict_json::parse(text).ok());
    let channel = parsed.as_ref().and_then(|v| match v.get("channel") {
        Some(serde_json::Value::String(c)) => Channel::parse(c, false).ok(),
        _ => None,
    });
    let Some(channel) = channel else {
        state
            .metrics()
            .policy_decisions
            .with_label_values(&["publish", "denied"])
            .inc();
        return None;
    };
    let permitted = state
        .policy_decision(Op::Publish, &channel, claims)
        .is_some_and(|d| d.is_permitted());
    if !permitted {
        return None;
    }
    let events = parsed.as_ref().and_then(|v| v.get("events")).cloned();
    let rebuilt = serde_json::json!({"channel": channel.path(), "events": events});
    Some(Bytes::from(rebuilt.to_string()))
}
