//! `POST <events-path>`: HTTP publish on behalf of the signed-in user.
//!
//! Same gate as the WebSocket (Origin, session, token), then the body is
//! sent to AppSync's `/event` with the user's token as `Authorization`, and
//! AppSync's status and body come back to the browser. Only `content-type`
//! is copied from the browser's request: any `Authorization`, `x-api-key` or
//! other header the browser sent is dropped, never forwarded.

use crate::authenticate::authenticate;
use crate::error::RelayError;
use crate::response::{full, Body};
use crate::state::RelayState;
use crate::upstream::UpstreamError;
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
                .metrics
                .publish_requests
                .with_label_values(&[outcome])
                .inc();
            resp
        }
        Err(e) => {
            state
                .metrics
                .publish_requests
                .with_label_values(&[e.reason()])
                .inc();
            tracing::info!(%peer, status = e.status().as_u16(), reason = e.reason(), side = e.side(), error = %e, "http publish refused");
            e.into_response()
        }
    }
}

async fn publish(
    state: &RelayState,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Body>, RelayError> {
    state.config.origins.check(req.headers())?;
    let secure = state.is_secure(req.headers(), peer);
    let authenticated = authenticate(state, req.headers(), secure).await?;
    let token = HeaderValue::from_str(&authenticated.token)
        .map_err(|_| RelayError::Internal("token is not header-safe"))?;

    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("application/json"));
    let body = Limited::new(req.into_body(), state.config.max_message_bytes)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                RelayError::BodyTooLarge
            } else {
                RelayError::BodyRead
            }
        })?
        .to_bytes();

    let upstream_req = Request::post(state.config.http_endpoint.as_str())
        .header(CONTENT_TYPE, content_type)
        .header(AUTHORIZATION, token)
        .body(Full::new(body))
        .map_err(|_| RelayError::Internal("could not build the upstream request"))?;
    let timeout = state.config.upstream_timeout;
    let exchange = async {
        let resp = state
            .http
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
    let (parts, bytes): (_, Bytes) = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| UpstreamError::Timeout(timeout))??;

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
