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
//! A request goes through these phases, top to bottom in this file:
//!
//! 1. **Target.** Only the path and query of the request are used; they are
//!    appended to `upstream`'s path (so `http://app:3000/base` serves
//!    `/x` from `/base/x`, like nginx's `proxy_pass` with a URI). An
//!    absolute-form request target cannot steer the proxy elsewhere.
//!    `CONNECT` is refused with 405: this is not a forward proxy.
//! 2. **Session renewal.** If the request's Amplify cookies carry a refresh
//!    token for which an open socket already renewed the session (see
//!    [`crate::cookies`]), the request's `Cookie` header is rewritten so the
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

use crate::error::{full, Body, BoxError};
use crate::refresh::RefreshedTokens;
use crate::server::{App, RelayState};
use crate::session;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, CACHE_CONTROL, CONNECTION, CONTENT_TYPE, COOKIE, EXPECT,
    FORWARDED, HOST, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, SET_COOKIE, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};
use hyper::http::uri::{Authority, PathAndQuery, Scheme};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use percent_encoding::percent_decode_str;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Hop-by-hop headers (RFC 9110 §7.6.1 plus the legacy `Keep-Alive` and
/// `Proxy-Connection`): they describe one connection, never the next one.
const HOP_BY_HOP: [HeaderName; 9] = [
    CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
];

/// Headers only a trusted forwarder may set; from anyone else they are forged.
const FORWARDING_CLAIMS: [HeaderName; 5] = [
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
    X_FORWARDED_PORT,
    X_REAL_IP,
    FORWARDED,
];

/// How the app is reached.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// `http://host:port[/base]` (or `https://`). Checked by [`check_upstream`].
    pub upstream: url::Url,
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
}

impl ProxyConfig {
    /// Defaults suited to a Next.js app on the same host: 5 s connect, 60 s
    /// to response head (SSR pages can be slow), 4 s idle pooling (under
    /// Node's 5 s keep-alive), 32 idle connections.
    pub fn new(upstream: url::Url) -> ProxyConfig {
        ProxyConfig {
            upstream,
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(60),
            idle_pool_timeout: Duration::from_secs(4),
            max_idle_per_host: 32,
        }
    }
}

/// Whether `url` can be an app upstream: `http` or `https`, a host, no
/// credentials, query or fragment. For start-up validation of the flag.
pub fn check_upstream(url: &url::Url) -> Result<(), String> {
    Target::parse(url).map(|_| ())
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

type AppClient = Client<HttpsConnector<HttpConnector>, Body>;

/// Forwards non-relay requests to the SSR app (see the module docs).
pub struct AppProxy {
    client: AppClient,
    /// `Err` when the configured upstream is unusable: every request is then
    /// a 502 (start-up validation with [`check_upstream`] prevents this).
    target: Result<Target, String>,
    response_timeout: Duration,
}

impl std::fmt::Debug for AppProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppProxy")
            .field("target", &self.target)
            .field("response_timeout", &self.response_timeout)
            .finish_non_exhaustive()
    }
}

/// Scheme, authority and base path of the app.
#[derive(Debug, Clone)]
struct Target {
    scheme: Scheme,
    authority: Authority,
    /// The upstream URL's path without its trailing `/` (`""` for the root).
    base_path: String,
}

impl Target {
    fn parse(url: &url::Url) -> Result<Target, String> {
        let scheme = match url.scheme() {
            "http" => Scheme::HTTP,
            "https" => Scheme::HTTPS,
            other => {
                return Err(format!(
                    "app upstream scheme must be http or https, not {other}"
                ))
            }
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err("app upstream must not carry credentials".into());
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err("app upstream must not have a query or fragment".into());
        }
        let host = url
            .host_str()
            .ok_or_else(|| "app upstream needs a host".to_string())?;
        // `port()` is `None` for the scheme's default, which the URI implies.
        let host = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        let authority = Authority::try_from(host.as_str())
            .map_err(|_| "app upstream host is not a valid authority".to_string())?;
        Ok(Target {
            scheme,
            authority,
            base_path: url.path().trim_end_matches('/').to_string(),
        })
    }

    /// The app's URI for a browser request target: only its path and query.
    fn uri_for(&self, browser: &Uri) -> Result<Uri, ProxyError> {
        let pq = browser
            .path_and_query()
            .map(PathAndQuery::as_str)
            .filter(|pq| pq.starts_with('/'))
            .ok_or(ProxyError::BadTarget)?;
        let pq = PathAndQuery::try_from(format!("{}{pq}", self.base_path))
            .map_err(|_| ProxyError::BadTarget)?;
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|_| ProxyError::BadTarget)
    }
}

// === impl AppProxy ===

impl AppProxy {
    pub fn new(cfg: ProxyConfig) -> AppProxy {
        let mut http = HttpConnector::new();
        // The HTTPS wrapper below decides per scheme; the inner connector
        // must let `https://` URIs through to it.
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*crate::http_client::tls_client_config()).clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            // The pool's idle timeout is only enforced with a timer.
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(cfg.idle_pool_timeout)
            .pool_max_idle_per_host(cfg.max_idle_per_host)
            .build(connector);
        let target = Target::parse(&cfg.upstream);
        if let Err(e) = &target {
            tracing::error!(error = %e, "app upstream is unusable; every app request will be a 502");
        }
        AppProxy {
            client,
            target,
            response_timeout: cfg.response_timeout,
        }
    }

    async fn proxy(
        &self,
        state: &Arc<RelayState>,
        mut req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Response<Body>, ProxyError> {
        // 1. Target.
        if req.method() == Method::CONNECT {
            return Err(ProxyError::Connect);
        }
        let target = self
            .target
            .as_ref()
            .map_err(|_| ProxyError::Misconfigured)?;
        let uri = target.uri_for(req.uri())?;

        // 2. Session renewal (read before any header is rewritten).
        let renewal = pending_renewal(state, req.headers());
        let secure = state.is_secure(req.headers(), peer);

        // 3. Request headers.
        let websocket = is_websocket_upgrade(&req);
        let browser_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        headers.remove(EXPECT);
        if websocket {
            restore_websocket_upgrade(&mut headers);
        }
        set_forwarding(&mut headers, state, peer);
        if let Some((username, tokens)) = &renewal {
            rewrite_session_cookies(&mut headers, &state.config.client_id, username, tokens);
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
        if let Some((username, tokens)) = &renewal {
            let ours =
                state
                    .config
                    .cookies
                    .set_cookies(&state.config.client_id, username, tokens, secure);
            prepend_set_cookies(&mut parts.headers, ours);
        }
        let mut out = Response::new(body.map_err(|e| -> BoxError { Box::new(e) }).boxed());
        *out.status_mut() = parts.status;
        *out.headers_mut() = parts.headers;

        if let Some((browser, app)) = tunnel {
            let shutdown = state.shutdown.clone();
            state.tracker.spawn(async move {
                splice(browser, app, shutdown, peer).await;
            });
        }
        Ok(out)
    }
}

impl App for AppProxy {
    fn handle<'a>(
        &'a self,
        state: &'a Arc<RelayState>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = Response<Body>> + Send + 'a>> {
        Box::pin(async move {
            let result = self.proxy(state, req, peer).await;
            let label = match &result {
                Ok(resp) => outcome_label(resp.status()),
                Err(e) => e.label(),
            };
            record_outcome(state, label);
            result.unwrap_or_else(|e| {
                tracing::warn!(%peer, status = e.status().as_u16(), reason = e.label(), side = e.side(), error = %e, "app request failed");
                e.into_response()
            })
        })
    }
}

/// The one place the app-proxy metric is touched.
fn record_outcome(state: &RelayState, label: &'static str) {
    state.metrics.app_requests.with_label_values(&[label]).inc();
}

// === Tunnel ===

/// Splices the browser's and the app's upgraded connections until either
/// side ends or the relay shuts down.
async fn splice(
    browser: hyper::upgrade::OnUpgrade,
    app: hyper::upgrade::OnUpgrade,
    shutdown: tokio_util::sync::CancellationToken,
    peer: SocketAddr,
) {
    // The browser's side completes once hyper has written our 101.
    let (browser, app) = match tokio::try_join!(browser, app) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "app WebSocket upgrade did not complete");
            return;
        }
    };
    let mut browser = TokioIo::new(browser);
    let mut app = TokioIo::new(app);
    tokio::select! {
        // Opaque bytes, so no close frame is possible: cut both sides.
        _ = shutdown.cancelled() => {
            tracing::debug!(%peer, "app WebSocket tunnel cut by shutdown");
        }
        r = tokio::io::copy_bidirectional(&mut browser, &mut app) => match r {
            Ok((up, down)) => tracing::debug!(%peer, bytes_to_app = up, bytes_to_browser = down, "app WebSocket tunnel closed"),
            Err(e) => tracing::debug!(%peer, error = %e, "app WebSocket tunnel ended with an error"),
        },
    }
}

// === Headers ===

/// `GET` + `Connection: upgrade` + `Upgrade: websocket` (case-insensitive).
fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    req.method() == Method::GET
        && req.version() == Version::HTTP_11
        && has_token(req.headers(), &CONNECTION, "upgrade")
        && has_token(req.headers(), &UPGRADE, "websocket")
}

/// Whether any value of `name` lists `token` (comma-separated, any case).
fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers, including every header `Connection` names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// The two headers that make a request or a 101 an upgrade to WebSocket.
fn restore_websocket_upgrade(headers: &mut HeaderMap) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
}

/// `X-Forwarded-*` for the app (see the module docs for the trust rules).
fn set_forwarding(headers: &mut HeaderMap, state: &RelayState, peer: SocketAddr) {
    let ip = peer.ip().to_canonical();
    let trusted = state.config.trust_forwarded.iter().any(|n| n.contains(ip));
    let ip_value = HeaderValue::from_str(&ip.to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
    let chain: Vec<u8> = if trusted {
        headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .map(HeaderValue::as_bytes)
            .chain(std::iter::once(ip_value.as_bytes()))
            .collect::<Vec<_>>()
            .join(&b", "[..])
    } else {
        ip_value.as_bytes().to_vec()
    };
    // Joining valid values with ", " yields a valid value; fall back to the
    // peer alone rather than trust a chain we could not rebuild.
    let xff = HeaderValue::from_bytes(&chain).unwrap_or(ip_value);
    headers.insert(X_FORWARDED_FOR, xff);

    if !trusted {
        for name in &FORWARDING_CLAIMS {
            headers.remove(name);
        }
    }
    if !headers.contains_key(X_FORWARDED_PROTO) {
        let proto = if state.config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !headers.contains_key(X_FORWARDED_HOST) {
        if let Some(host) = headers.get(HOST).cloned() {
            headers.insert(X_FORWARDED_HOST, host);
        }
    }
}

// === Session renewal ===

/// The renewal waiting for this request's session, if any: `(username,
/// tokens)` from [`crate::cookies::PendingCookies`].
fn pending_renewal(
    state: &RelayState,
    headers: &HeaderMap,
) -> Option<(String, Arc<RefreshedTokens>)> {
    let session = session::from_headers(headers, &state.config.client_id).ok()?;
    let refresh = session.refresh_token.as_deref()?;
    state.pending.lookup(refresh)
}

/// Replaces the values of `username`'s token cookies with `tokens` in every
/// `Cookie` header, keeping every other cookie as sent and in order. Token
/// cookies the renewal has a value for but the browser did not send are
/// appended (the browser will hold them once our `Set-Cookie` lands).
fn rewrite_session_cookies(
    headers: &mut HeaderMap,
    client_id: &str,
    username: &str,
    tokens: &RefreshedTokens,
) {
    let mut replacements: Vec<(String, &str, bool)> = vec![(
        token_cookie(client_id, username, "accessToken"),
        tokens.access_token.as_str(),
        false,
    )];
    if let Some(id) = &tokens.id_token {
        replacements.push((token_cookie(client_id, username, "idToken"), id, false));
    }
    if let Some(refresh) = &tokens.refresh_token {
        replacements.push((
            token_cookie(client_id, username, "refreshToken"),
            refresh,
            false,
        ));
    }

    // Each Cookie header is rewritten in place; `None` marks one that is not
    // UTF-8 (it cannot hold the session we found) and is kept byte for byte.
    let mut rewritten: Vec<Option<String>> = Vec::new();
    for value in headers.get_all(COOKIE).iter() {
        let Ok(value) = value.to_str() else {
            rewritten.push(None);
            continue;
        };
        let pairs: Vec<String> = value
            .split(';')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|pair| {
                let name = pair.split_once('=').map_or(pair, |(n, _)| n).trim();
                let decoded = decode_cookie_name(name);
                match replacements.iter_mut().find(|(n, _, _)| *n == decoded) {
                    Some((_, new, seen)) => {
                        *seen = true;
                        format!("{name}={new}")
                    }
                    None => pair.to_string(),
                }
            })
            .collect();
        rewritten.push(Some(pairs.join("; ")));
    }
    let missing: Vec<String> = replacements
        .iter()
        .filter(|(_, _, seen)| !seen)
        .filter_map(|(decoded, value, _)| {
            // Written under the name Amplify uses, not the decoded one.
            let suffix = decoded.rsplit('.').next()?;
            Some(format!(
                "{}={value}",
                session::cookie_name(client_id, username, suffix)
            ))
        })
        .collect();
    if !missing.is_empty() {
        let missing = missing.join("; ");
        match rewritten.iter_mut().rev().find_map(Option::as_mut) {
            Some(last) if !last.is_empty() => {
                last.push_str("; ");
                last.push_str(&missing);
            }
            Some(last) => last.push_str(&missing),
            None => rewritten.push(Some(missing)),
        }
    }

    let originals: Vec<HeaderValue> = headers.get_all(COOKIE).iter().cloned().collect();
    let mut values = Vec::with_capacity(rewritten.len());
    for (i, v) in rewritten.into_iter().enumerate() {
        let value = match v {
            Some(text) => HeaderValue::from_str(&text).ok(),
            None => originals.get(i).cloned(),
        };
        match value {
            Some(value) => values.push(value),
            // Every part came from a valid header or a header-safe token; if
            // one did not survive, leave the browser's cookies as they were.
            None => return,
        }
    }
    headers.remove(COOKIE);
    for v in values {
        headers.append(COOKIE, v);
    }
}

/// A token cookie's name, decoded (as [`decode_cookie_name`] yields it).
fn token_cookie(client_id: &str, username: &str, suffix: &str) -> String {
    decode_cookie_name(&session::cookie_name(client_id, username, suffix))
}

/// Percent-decodes a cookie name the way [`crate::session`] matches them, so
/// `alice%40example.com` and `alice@example.com` are the same cookie.
fn decode_cookie_name(raw: &str) -> String {
    match percent_decode_str(raw).decode_utf8() {
        Ok(s) => s.into_owned(),
        Err(_) => raw.to_string(),
    }
}

/// Puts `ours` before the app's own `Set-Cookie` headers.
fn prepend_set_cookies(headers: &mut HeaderMap, ours: Vec<HeaderValue>) {
    let app: Vec<HeaderValue> = headers.get_all(SET_COOKIE).iter().cloned().collect();
    headers.remove(SET_COOKIE);
    for v in ours.into_iter().chain(app) {
        headers.append(SET_COOKIE, v);
    }
}

// === Errors ===

/// Why a request could not be answered by the app; the side is in `side()`.
#[derive(Debug, thiserror::Error)]
enum ProxyError {
    // --- downstream ---
    #[error("CONNECT is not supported")]
    Connect,
    #[error("request target is not origin-form")]
    BadTarget,
    // --- upstream: the app ---
    #[error("app unreachable: {0}")]
    Unreachable(hyper_util::client::legacy::Error),
    #[error("app failed: {0}")]
    Failed(hyper_util::client::legacy::Error),
    #[error("app sent no response head within {0:?}")]
    Timeout(Duration),
    #[error("app switched protocols without being asked")]
    UnexpectedUpgrade,
    // --- internal ---
    #[error("app upstream is misconfigured")]
    Misconfigured,
}

impl ProxyError {
    fn status(&self) -> StatusCode {
        match self {
            ProxyError::Connect => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::BadTarget => StatusCode::BAD_REQUEST,
            ProxyError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Unreachable(_)
            | ProxyError::Failed(_)
            | ProxyError::UnexpectedUpgrade
            | ProxyError::Misconfigured => StatusCode::BAD_GATEWAY,
        }
    }

    /// Metric label (same set as [`outcome_label`], plus the failures).
    fn label(&self) -> &'static str {
        match self {
            ProxyError::Connect | ProxyError::BadTarget => "4xx",
            ProxyError::Unreachable(_) | ProxyError::Misconfigured => "unreachable",
            ProxyError::Failed(_) | ProxyError::UnexpectedUpgrade => "upstream_error",
            ProxyError::Timeout(_) => "timeout",
        }
    }

    fn side(&self) -> &'static str {
        match self {
            ProxyError::Connect | ProxyError::BadTarget => "downstream",
            ProxyError::Misconfigured => "internal",
            _ => "upstream",
        }
    }

    /// A fixed plain-text body: never anything from the request.
    fn body(&self) -> &'static str {
        match self {
            ProxyError::Connect => "method not allowed\n",
            ProxyError::BadTarget => "bad request\n",
            ProxyError::Unreachable(_) | ProxyError::Misconfigured => {
                "bad gateway: app upstream unreachable\n"
            }
            ProxyError::Failed(_) | ProxyError::UnexpectedUpgrade => {
                "bad gateway: app upstream failed\n"
            }
            ProxyError::Timeout(_) => "gateway timeout: app upstream did not answer in time\n",
        }
    }

    fn into_response(self) -> Response<Body> {
        let mut resp = Response::new(full(self.body()));
        *resp.status_mut() = self.status();
        resp.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp.headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = headers(&[
            ("connection", "keep-alive, X-Hop"),
            ("connection", "x-other"),
            ("x-hop", "1"),
            ("x-other", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic x"),
            ("proxy-authenticate", "Basic"),
            ("x-end-to-end", "kept"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-end-to-end"], "kept");
    }

    #[test]
    fn websocket_upgrade_needs_both_tokens() {
        let req = |c: &str, u: &str| {
            let mut r = Request::get("/").body(()).unwrap();
            *r.headers_mut() = headers(&[("connection", c), ("upgrade", u)]);
            r
        };
        assert!(is_websocket_upgrade(&req(
            "keep-alive, Upgrade",
            "WebSocket"
        )));
        assert!(!is_websocket_upgrade(&req("upgrade", "h2c")));
        assert!(!is_websocket_upgrade(&req("keep-alive", "websocket")));
    }

    #[test]
    fn cookie_rewrite_keeps_order_and_other_cookies() {
        let cid = "cid";
        let user = "a@b.c";
        let base = "CognitoIdentityServiceProvider.cid";
        let mut h = headers(&[(
            "cookie",
            &format!(
                "theme=dark; {base}.LastAuthUser=a%40b.c; {base}.a%40b.c.accessToken=OLD-A; \
                 x=\"q\"; {base}.a%40b.c.refreshToken=OLD-R; {base}.other.accessToken=KEEP"
            ),
        )]);
        let tokens = RefreshedTokens {
            access_token: "NEW-A".into(),
            id_token: Some("NEW-I".into()),
            refresh_token: None,
        };
        rewrite_session_cookies(&mut h, cid, user, &tokens);
        assert_eq!(
            h[COOKIE].to_str().unwrap(),
            format!(
                "theme=dark; {base}.LastAuthUser=a%40b.c; {base}.a%40b.c.accessToken=NEW-A; \
                 x=\"q\"; {base}.a%40b.c.refreshToken=OLD-R; {base}.other.accessToken=KEEP; \
                 {base}.a%40b.c.idToken=NEW-I"
            )
        );
    }

    #[test]
    fn cookie_rewrite_matches_decoded_names() {
        let base = "CognitoIdentityServiceProvider.cid";
        let mut h = headers(&[("cookie", &format!("{base}.a@b.c.accessToken=OLD"))]);
        let tokens = RefreshedTokens {
            access_token: "NEW".into(),
            id_token: None,
            refresh_token: None,
        };
        rewrite_session_cookies(&mut h, "cid", "a@b.c", &tokens);
        assert_eq!(
            h[COOKIE].to_str().unwrap(),
            format!("{base}.a@b.c.accessToken=NEW")
        );
    }

    #[test]
    fn our_set_cookies_go_before_the_apps() {
        let mut h = headers(&[("set-cookie", "app=1"), ("set-cookie", "app=2")]);
        prepend_set_cookies(&mut h, vec![HeaderValue::from_static("ours=1")]);
        let all: Vec<_> = h.get_all(SET_COOKIE).iter().collect();
        assert_eq!(all, ["ours=1", "app=1", "app=2"]);
    }

    #[test]
    fn target_uses_only_path_and_query() {
        let t = Target::parse(&"http://127.0.0.1:3000/base/".parse().unwrap()).unwrap();
        let u = t
            .uri_for(&"http://evil.example/x?y=1".parse().unwrap())
            .unwrap();
        assert_eq!(u.to_string(), "http://127.0.0.1:3000/base/x?y=1");
        let root = Target::parse(&"http://app:3000".parse().unwrap()).unwrap();
        assert_eq!(
            root.uri_for(&"/".parse().unwrap()).unwrap().to_string(),
            "http://app:3000/"
        );
        assert!(root.uri_for(&"*".parse().unwrap()).is_err());
        assert!(check_upstream(&"ftp://x/".parse().unwrap()).is_err());
        assert!(check_upstream(&"http://u:p@x/".parse().unwrap()).is_err());
        assert!(check_upstream(&"https://app.internal:8443".parse().unwrap()).is_ok());
    }

    #[test]
    fn outcome_labels_are_status_classes() {
        assert_eq!(outcome_label(StatusCode::SWITCHING_PROTOCOLS), "upgrade");
        assert_eq!(outcome_label(StatusCode::NO_CONTENT), "2xx");
        assert_eq!(outcome_label(StatusCode::FOUND), "3xx");
        assert_eq!(outcome_label(StatusCode::NOT_FOUND), "4xx");
        assert_eq!(outcome_label(StatusCode::BAD_GATEWAY), "5xx");
    }
}
