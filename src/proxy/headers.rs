//! Header rules between browser and app: one `Host` only, hop-by-hop
//! headers removed both ways (never `Host`), WebSocket upgrades restored,
//! forwarding headers believed only from a trusted peer (see
//! [`crate::forwarded`]), our `Set-Cookie`s placed before the app's on a
//! response made private, and the app's sign-out recognised.

use super::error::ProxyError;
use crate::session::cookie_name;
use crate::state::RelayState;
use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, CACHE_CONTROL, CONNECTION, FORWARDED, HOST,
    PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, SET_COOKIE, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
    VARY,
};
use hyper::{Method, Request, Version};
use std::net::SocketAddr;

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

/// `GET` + `Connection: upgrade` + `Upgrade: websocket` (case-insensitive).
pub fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
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
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        // `Connection: host` must not strip the one header a request needs
        // (RFC 9110 §7.6.1: only headers about this connection are listed).
        .filter(|name| *name != HOST)
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// RFC 9112 §3.2: a request with more than one `Host` is answered 400.
pub fn check_host(headers: &HeaderMap) -> Result<(), ProxyError> {
    if headers.get_all(HOST).iter().count() > 1 {
        return Err(ProxyError::BadTarget);
    }
    Ok(())
}

/// A response that carries session tokens must never be stored by a shared
/// cache, whatever the app said about it.
pub fn make_private(headers: &mut HeaderMap) {
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
    headers.append(VARY, HeaderValue::from_static("Cookie"));
}

/// Whether an app response expires the refresh-token cookie of `username`'s
/// session (Amplify's sign-out: `Max-Age=0` or an `Expires` in the past).
/// Another user's cookie being cleared (a stale one the browser still
/// carries) says nothing about the session the request showed.
pub fn clears_session(headers: &HeaderMap, client_id: &str, username: &str) -> bool {
    let name = cookie_name(client_id, username, "refreshToken");
    let now = std::time::SystemTime::now();
    headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| cookie::Cookie::parse(v.to_string()).ok())
        .filter(|c| c.name() == name)
        .any(|c| {
            c.max_age()
                .is_some_and(|age| age.is_zero() || age.is_negative())
                || c.expires_datetime()
                    .is_some_and(|at| std::time::SystemTime::from(at) <= now)
        })
}

/// The two headers that make a request or a 101 an upgrade to WebSocket.
pub fn restore_websocket_upgrade(headers: &mut HeaderMap) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
}

/// `X-Forwarded-*` for the app (see the module docs for the trust rules).
pub fn set_forwarding(headers: &mut HeaderMap, state: &RelayState, peer: SocketAddr) {
    state.note_forwarding(headers, peer);
    let proxies = &state.config().trust_forwarded;
    let trusted = proxies.trusts(peer.ip().to_canonical());
    let xff = proxies.x_forwarded_for(headers, peer);
    headers.insert(X_FORWARDED_FOR, xff);

    if !trusted {
        for name in &FORWARDING_CLAIMS {
            headers.remove(name);
        }
    }
    if !headers.contains_key(X_FORWARDED_PROTO) {
        let proto = if state.config().tls.is_some() {
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

/// Puts `ours` before the app's own `Set-Cookie` headers.
pub fn prepend_set_cookies(headers: &mut HeaderMap, ours: Vec<HeaderValue>) {
    let app: Vec<HeaderValue> = headers.get_all(SET_COOKIE).iter().cloned().collect();
    headers.remove(SET_COOKIE);
    for v in ours.into_iter().chain(app) {
        headers.append(SET_COOKIE, v);
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
    fn connection_cannot_name_host_away() {
        let mut h = headers(&[("connection", "host, x-a"), ("host", "app"), ("x-a", "1")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h["host"], "app");
        assert!(!h.contains_key("x-a"));
        assert!(check_host(&headers(&[("host", "a"), ("host", "b")])).is_err());
        assert!(check_host(&headers(&[("host", "a")])).is_ok());
    }

    #[test]
    fn sign_out_is_an_expired_refresh_token_cookie() {
        let base = "CognitoIdentityServiceProvider.cid.u";
        let out = headers(&[(
            "set-cookie",
            &format!("{base}.refreshToken=; Max-Age=0; Path=/"),
        )]);
        assert!(clears_session(&out, "cid", "u"));
        let out = headers(&[(
            "set-cookie",
            &format!("{base}.refreshToken=; Expires=Thu, 01 Jan 1970 00:00:00 GMT"),
        )]);
        assert!(clears_session(&out, "cid", "u"));
        let keep = headers(&[(
            "set-cookie",
            &format!("{base}.refreshToken=x; Max-Age=3600"),
        )]);
        assert!(!clears_session(&keep, "cid", "u"));
        assert!(!clears_session(&out, "cid", "someone-else"));
        let other = headers(&[(
            "set-cookie",
            "CognitoIdentityServiceProvider.zzz.u.refreshToken=; Max-Age=0",
        )]);
        assert!(!clears_session(&other, "cid", "u"));
    }

    #[test]
    fn our_set_cookies_go_before_the_apps() {
        let mut h = headers(&[("set-cookie", "app=1"), ("set-cookie", "app=2")]);
        prepend_set_cookies(&mut h, vec![HeaderValue::from_static("ours=1")]);
        let all: Vec<_> = h.get_all(SET_COOKIE).iter().collect();
        assert_eq!(all, ["ours=1", "app=1", "app=2"]);
    }
}
