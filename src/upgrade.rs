//! The server side of a WebSocket upgrade over hyper: checking that a request
//! is a well-formed RFC 6455 upgrade, reading the offered subprotocols, and
//! the `WebSocketConfig` every socket we own is built with.
//!
//! It owns no policy (origins, sessions): the handshake module decides who
//! gets a 101; this module only knows what a valid upgrade looks like.

use hyper::header::{
    HeaderMap, HeaderValue, CONNECTION, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL,
    SEC_WEBSOCKET_VERSION, UPGRADE,
};
use hyper::{Method, Request};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Why a request is not a WebSocket upgrade we can accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UpgradeError {
    #[error("WebSocket upgrade requires GET")]
    NotGet,
    #[error("missing 'Connection: upgrade' or 'Upgrade: websocket'")]
    NotUpgrade,
    #[error("unsupported Sec-WebSocket-Version (need 13)")]
    BadVersion,
    #[error("missing or malformed Sec-WebSocket-Key")]
    BadKey,
}

fn header_has_token(headers: &HeaderMap, name: hyper::header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// Validates the upgrade and returns the `Sec-WebSocket-Accept` value.
pub fn check_upgrade<B>(req: &Request<B>) -> Result<HeaderValue, UpgradeError> {
    if req.method() != Method::GET {
        return Err(UpgradeError::NotGet);
    }
    let headers = req.headers();
    if !header_has_token(headers, CONNECTION, "upgrade")
        || !header_has_token(headers, UPGRADE, "websocket")
    {
        return Err(UpgradeError::NotUpgrade);
    }
    if headers
        .get(SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err(UpgradeError::BadVersion);
    }
    let key = headers.get(SEC_WEBSOCKET_KEY).ok_or(UpgradeError::BadKey)?;
    // RFC 6455 §4.1: the key is 16 random bytes, base64 encoded (24 chars).
    if key.len() != 24 {
        return Err(UpgradeError::BadKey);
    }
    HeaderValue::from_str(&derive_accept_key(key.as_bytes())).map_err(|_| UpgradeError::BadKey)
}

/// Every subprotocol the client offered, across repeated headers, in order.
pub fn offered_protocols(headers: &HeaderMap) -> Vec<&str> {
    headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(crate::protocol::split_protocols)
        .collect()
}

/// The largest frame the relay reads from a browser, for a largest frame
/// it forwards of `max_message_bytes`: Amplify sends every publish's events
/// twice (`events` and `payload.events`), and the relay forwards one copy,
/// so a browser's frame may be twice what AppSync gets, plus room for the
/// rest of the frame.
pub fn max_client_frame(max_message_bytes: usize) -> usize {
    max_message_bytes
        .saturating_mul(2)
        .saturating_add(64 * 1024)
}

/// The emulator's tungstenite socket configuration (the relay's own legs
/// use [`crate::ws`], which holds no buffer while idle). tungstenite's
/// defaults (128 KiB read and write buffers, unbounded write queue) would
/// cost ~256 KiB per idle socket; small buffers that grow only while a
/// large message is in flight, and a hard cap on what can queue.
pub fn ws_config(max_message_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        // Allocated up front per leg and the most one read syscall takes:
        // 2 KiB holds a typical AppSync frame (measured: 4 KiB → 2 KiB saves
        // ~4 KiB per relayed connection); larger frames grow the buffer.
        .read_buffer_size(2 * 1024)
        // 0 = write every frame straight to the socket: lowest latency, and
        // nothing lingers in a per-socket buffer.
        .write_buffer_size(0)
        // A peer that stops reading can make us queue at most one maximal
        // message plus some control frames before sends fail.
        .max_write_buffer_size(max_message_bytes + 64 * 1024)
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade_req() -> hyper::http::request::Builder {
        Request::get("/event/realtime")
            .header(CONNECTION, "keep-alive, Upgrade")
            .header(UPGRADE, "websocket")
            .header(SEC_WEBSOCKET_VERSION, "13")
            .header(SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==")
    }

    #[test]
    fn accepts_rfc_example_key() {
        let req = upgrade_req().body(()).unwrap();
        assert_eq!(check_upgrade(&req).unwrap(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn rejects_non_upgrades() {
        let post = Request::post("/").body(()).unwrap();
        assert_eq!(check_upgrade(&post), Err(UpgradeError::NotGet));
        let plain = Request::get("/").body(()).unwrap();
        assert_eq!(check_upgrade(&plain), Err(UpgradeError::NotUpgrade));
        let mut v8 = upgrade_req().body(()).unwrap();
        v8.headers_mut()
            .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        assert_eq!(check_upgrade(&v8), Err(UpgradeError::BadVersion));
        let mut nokey = upgrade_req().body(()).unwrap();
        nokey.headers_mut().remove(SEC_WEBSOCKET_KEY);
        assert_eq!(check_upgrade(&nokey), Err(UpgradeError::BadKey));
    }

    #[test]
    fn collects_protocols_across_headers() {
        let req = upgrade_req()
            .header(SEC_WEBSOCKET_PROTOCOL, "header-abc, aws-appsync-event-ws")
            .header(SEC_WEBSOCKET_PROTOCOL, "other")
            .body(())
            .unwrap();
        assert_eq!(
            offered_protocols(req.headers()),
            vec!["header-abc", "aws-appsync-event-ws", "other"]
        );
    }
}
