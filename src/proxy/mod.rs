//! The reverse proxy to the SSR app (`--app-upstream`): every request on the
//! public listener outside `<events-path>` is forwarded to the app, streaming
//! both ways, with WebSocket upgrades (Next.js HMR) tunnelled unchanged.
//!
//! It owns the app-side HTTP client (its own keep-alive pool), the header
//! rewrite between browser and app, the WebSocket tunnel, and writing pending
//! session renewals onto app responses. It must never buffer a body, parse a
//! tunnelled frame, echo request data in an error body, log a cookie or
//! token, or forward headers a client could forge as if the relay vouched
//! for them.
//!
//! A request goes through these phases, top to bottom in [`AppProxy`]'s
//! `proxy` (header rules in [`headers`], the tunnel in [`tunnel`], errors
//! in [`error`]):
//!
//! 1. **Target.** Only the path and query of the request are used; they are
//!    appended to `upstream`'s path (so `http://app:3000/base` serves
//!    `/x` from `/base/x`, like nginx's `proxy_pass` with a URI). An
//!    absolute-form request target cannot steer the proxy elsewhere.
//!    `CONNECT` is refused with 405: this is not a forward proxy.
//! 2. **Session renewal.** If the request's Amplify cookies carry a refresh
//!    token for which an open socket already renewed the session (the
//!    session authority hands it out: [`crate::sessions::Sessions::renewal_for`]),
//!    the request's `Cookie` header is rewritten so the
//!    app sees the new tokens (other cookies stay byte for byte, in order; a
//!    token cookie the browser lacks is appended, because the browser will
//!    hold it after this response too), and the response carries the
//!    matching `Set-Cookie`. Ours are placed *before* the app's own
//!    `Set-Cookie` headers, so if the app renews the session itself while
//!    handling the request, its newer cookies win in the browser.
//! 3. **Request headers.**
//!    - Hop-by-hop headers are removed: `Connection`, `Keep-Alive`,
//!      `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`,
//!      `Proxy-Authenticate`, `Proxy-Authorization`, and every header named
//!      in `Connection`. `Expect` is removed too: hyper answers the browser's
//!      `100-continue` itself when the body is first read.
//!    - Framework-internal headers a browser must never set are removed
//!      (`--strip-request-header`; by default Next.js's
//!      `x-middleware-subrequest`, the CVE-2025-29927 middleware bypass, and
//!      its other internal `x-middleware-*` / `x-invoke-*` headers).
//!    - A request with two `Host` headers is refused with 400 (RFC 9112).
//!    - `Host` is kept as the browser sent it (nginx's
//!      `proxy_set_header Host $host`): Next.js builds absolute URLs and
//!      checks Server Action origins against it, so it must be the public
//!      host, not `127.0.0.1:3000`.
//!    - The TCP peer is *trusted* when it is in `--trust-forwarded` (a
//!      TLS-terminating ingress in front of us). From a trusted peer the
//!      incoming `X-Forwarded-Proto`, `X-Forwarded-Host`, `X-Forwarded-Port`,
//!      `X-Real-IP` and `Forwarded` are kept, and the peer's address is
//!      appended to its `X-Forwarded-For` chain. From anyone else those
//!      headers are forgeries: they are dropped, `X-Forwarded-For` is set to
//!      the peer address alone, `X-Forwarded-Proto` to `https` when we
//!      terminate TLS (`http` otherwise) and `X-Forwarded-Host` to the
//!      request's `Host`. We never synthesise `Forwarded`, `X-Forwarded-Port`
//!      or `X-Real-IP`: the trio above is what Next.js reads.
//! 4. **Send.** Over a pooled HTTP/1.1 connection (`http://`, or `https://`
//!    with the webpki roots). The request body is a stream handed straight
//!    to the app. `response_timeout` bounds the time from sending the request
//!    to the app's response head; a slow upload counts against it, a slow
//!    response body does not. Errors are plain text: 502 when the app cannot
//!    be reached or breaks the exchange, 504 on `response_timeout`.
//! 5. **Response headers.** The same hop-by-hop removal, then the renewal's
//!    `Set-Cookie`. Body streamed as it arrives.
//! 6. **Upgrade.** A `GET` with `Connection: upgrade` and `Upgrade: websocket`
//!    is forwarded with those two headers restored (and the `Sec-WebSocket-*`
//!    headers, which are end-to-end). If the app answers 101, the browser
//!    gets the 101 and the two upgraded connections are spliced as an opaque
//!    byte tunnel on the relay's task tracker, so a drain waits for it; at
//!    the end of the drain timeout it is cut (no close frame: we do not parse
//!    frames). The Origin allowlist is *not* applied: it guards the AppSync
//!    relay, and the app checks its own WebSockets. Other `Upgrade` values
//!    (e.g. `h2c`) are dropped like any hop-by-hop header, so a client
//!    cannot smuggle a different protocol past us.

mod error;
mod headers;
mod tunnel;

use crate::config::AppTarget;
use crate::http_client::https_connector;
use crate::http_client::Resolver;
use crate::response::{Body, BoxError};
use crate::session::{rewrite_cookie_header, Pending};
use crate::state::{App, RelayState};
use error::ProxyError;
use headers::{
    check_host, clears_session, is_websocket_upgrade, make_private, prepend_set_cookies,
    restore_websocket_upgrade, set_forwarding, strip_hop_by_hop,
};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderName, EXPECT};
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// How the app is reached.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// `http://host:port[/base]` (or `https://`), parsed at start-up.
    pub target: AppTarget,
    /// TCP (and TLS) connect to the app; past it the request is a 502.
    pub connect_timeout: Duration,
    /// From sending the request to the app's response head; past it, 504.
    pub response_timeout: Duration,
    /// How long an idle keep-alive connection stays pooled. Keep it below the
    /// app's own keep-alive timeout (Node's default is 5 s), or requests race
    /// the app closing the connection.
    pub idle_pool_timeout: Duration,
    /// Idle connections kept per app host.
    pub max_idle_per_host: usize,
    /// Request headers never passed from the browser to the app
    /// (framework-internal ones; see [`crate::config::app::FRAMEWORK_INTERNAL_HEADERS`]).
    pub strip_headers: Vec<HeaderName>,
}

impl ProxyConfig {
    /// Defaults suited to a Next.js app on the same host: 5 s connect, 60 s
    /// to response head (SSR pages can be slow), 4 s idle pooling (under
    /// Node's 5 s keep-alive), 32 idle connections.
    pub fn new(target: AppTarget) -> ProxyConfig {
        ProxyConfig {
            target,
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(60),
            idle_pool_timeout: Duration::from_secs(4),
            max_idle_per_host: 32,
            strip_headers: crate::config::app::default_strip_headers(),
        }
    }
}

/// The metric label for a response the app produced (`upgrade` for a 101).
pub fn outcome_label(status: StatusCode) -> &'static str {
    match status.as_u16() {
        101 => "upgrade",
        // hyper's client consumes other 1xx; a final 1xx cannot reach here.
        100..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

type AppClient = Client<HttpsConnector<HttpConnector<Resolver>>, Body>;

/// Forwards non-relay requests to the SSR app (see the module docs).
pub struct AppProxy {
    client: AppClient,
    target: AppTarget,
    response_timeout: Duration,
    strip_headers: Vec<HeaderName>,
}

impl std::fmt::Debug for AppProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppProxy")
            .field("target", &self.target)
            .field("response_timeout", &self.response_timeout)
            .finish_non_exhaustive()
    }
}

// === impl AppProxy ===

impl AppProxy {
    pub fn new(cfg: ProxyConfig) -> AppProxy {
        let client = Client::builder(TokioExecutor::new())
            // The pool's idle timeout is only enforced with a timer.
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(cfg.idle_pool_timeout)
            .pool_max_idle_per_host(cfg.max_idle_per_host)
            .build(https_connector(cfg.connect_timeout));
        AppProxy {
            client,
            target: cfg.target,
            response_timeout: cfg.response_timeout,
            strip_headers: cfg.strip_headers,
        }
    }

    async fn proxy(
        &self,
        state: &Arc<RelayState>,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        renewal: Option<&Pending>,
        request_id: &str,
    ) -> Result<Response<Body>, ProxyError> {
        // 1. Target.
        if req.method() == Method::CONNECT {
            return Err(ProxyError::Connect);
        }
        check_host(req.headers())?;
        let uri = self
            .target
            .uri_for(req.uri())
            .ok_or(ProxyError::BadTarget)?;

        // 2. Session renewal: taken by the caller before any header is
        //    rewritten, written into the app's Cookie header below.

        // 3. Request headers.
        let websocket = is_websocket_upgrade(&req);
        let browser_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        headers.remove(EXPECT);
        for name in &self.strip_headers {
            headers.remove(name);
        }
        if websocket {
            restore_websocket_upgrade(&mut headers);
        }
        set_forwarding(&mut headers, state, peer);
        // After the hop-by-hop headers are gone (a client naming
        // X-Request-Id in `Connection` cannot strip it), replacing any value.
        if let Ok(v) = hyper::header::HeaderValue::from_str(request_id) {
            headers.insert(crate::forwarded::X_REQUEST_ID, v);
        }
        if let Some(p) = renewal {
            rewrite_cookie_header(
                &mut headers,
                &state.config().client_id,
                &p.username,
                &p.tokens,
            );
        }
        // A fresh request: the browser's extensions (its upgrade handle, its
        // connection info) must not leak into the client.
        let mut upstream_req = Request::new(body.map_err(|e| -> BoxError { Box::new(e) }).boxed());
        *upstream_req.method_mut() = parts.method;
        *upstream_req.uri_mut() = uri;
        // HTTP/1.0 browsers still get a keep-alive upstream connection.
        *upstream_req.version_mut() = Version::HTTP_11;
        *upstream_req.headers_mut() = headers;

        // 4. Send.
        let mut resp =
            match tokio::time::timeout(self.response_timeout, self.client.request(upstream_req))
                .await
            {
                Err(_) => return Err(ProxyError::Timeout(self.response_timeout)),
                Ok(Err(e)) if e.is_connect() => return Err(ProxyError::Unreachable(e)),
                Ok(Err(e)) => return Err(ProxyError::Failed(e)),
                Ok(Ok(resp)) => resp,
            };

        // 6. Upgrade (needs the response before its headers are rewritten).
        let tunnel = if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            match browser_upgrade {
                Some(browser) => Some((browser, hyper::upgrade::on(&mut resp))),
                // hyper refuses an unsolicited 101, but never relay one.
                None => return Err(ProxyError::UnexpectedUpgrade),
            }
        } else {
            None
        };

        // 5. Response headers.
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if tunnel.is_some() {
            restore_websocket_upgrade(&mut parts.headers);
        }
        let mut out = Response::new(body.map_err(|e| -> BoxError { Box::new(e) }).boxed());
        *out.status_mut() = parts.status;
        *out.headers_mut() = parts.headers;

        if let Some((browser, app)) = tunnel {
            let shutdown = state.shutdown().clone();
            state.tracker().spawn(async move {
                tunnel::splice(browser, app, shutdown, peer).await;
            });
        }
        Ok(out)
    }
}

impl App for AppProxy {
    fn respond<'a>(
        &'a self,
        state: &'a Arc<RelayState>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = Response<Body>> + Send + 'a>> {
        Box::pin(async move {
            let sessions = state.sessions();
            // The id the app sees and the relay logs: a trusted proxy's, or
            // ours (a client's own never reaches the app).
            let request_id = state
                .config()
                .trust_forwarded
                .request_id(req.headers(), peer);
            let app_session = sessions.app_session(req.headers());
            let renewal = match &app_session {
                Some(app) => sessions.renewal_for(app).await,
                None => None,
            };
            let secure = state.is_secure(req.headers(), peer);
            let result = self
                .proxy(state, req, peer, renewal.as_ref(), &request_id)
                .await;
            let label = match &result {
                Ok(resp) => outcome_label(resp.status()),
                Err(e) => e.label(),
            };
            record_outcome(state, label);
            let mut resp = result.unwrap_or_else(|e| {
                tracing::warn!(%request_id, %peer, status = e.status().as_u16(), reason = e.label(), side = e.side(), error = %e, "app request failed");
                e.into_response()
            });
            // 5b. Our Set-Cookies, on whatever the answer is: the renewal was
            //     taken from the store and this response is its only way out.
            if let Some(p) = &renewal {
                prepend_set_cookies(resp.headers_mut(), sessions.set_cookies(p, secure));
                make_private(resp.headers_mut());
            }
            // A sign-out the app performed: the session authority retires
            // what that browser holds (see `Sessions::signed_out`).
            if let Some(app) = &app_session {
                if clears_session(resp.headers(), &state.config().client_id, &app.username) {
                    sessions.signed_out(app).await;
                }
            }
            resp
        })
    }
}

/// The one place the app-proxy metric is touched.
fn record_outcome(state: &RelayState, label: &'static str) {
    state
        .metrics()
        .app_requests
        .with_label_values(&[label])
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_labels_are_status_classes() {
        assert_eq!(outcome_label(StatusCode::SWITCHING_PROTOCOLS), "upgrade");
        assert_eq!(outcome_label(StatusCode::NO_CONTENT), "2xx");
        assert_eq!(outcome_label(StatusCode::FOUND), "3xx");
        assert_eq!(outcome_label(StatusCode::NOT_FOUND), "4xx");
        assert_eq!(outcome_label(StatusCode::BAD_GATEWAY), "5xx");
    }
}
