//! What the tests of several replicas share: waiting for a metric line,
//! `POST /sessions/end`, a socket's close code, tokens of a named user or
//! an expired copy of a sign-in's token.

use super::{access_claims, http, now, sign, signing_key, JwksServer, Ws, CLIENT_ID};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Waits until `/metrics` on `admin` has exactly the line `line` (the
/// listener may not be up yet: a child process).
pub async fn wait_metric(admin: SocketAddr, line: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let listening = tokio::net::TcpStream::connect(admin).await.is_ok();
        let seen = listening
            && tokio::time::timeout(
                Duration::from_secs(1),
                http(admin, "GET", "/metrics", &[], ""),
            )
            .await
            .is_ok_and(|(_, _, m)| m.lines().any(|l| l == line));
        if seen {
            return;
        }
        assert!(Instant::now() < deadline, "never saw `{line}` on {admin}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `POST /sessions/end` with `body` on the admin listener `admin`.
pub async fn end_sessions(admin: SocketAddr, body: &str) -> (u16, Value) {
    let (status, _, text) = http(
        admin,
        "POST",
        "/sessions/end",
        &[("content-type", "application/json")],
        body,
    )
    .await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The close code `ws` gets within `within`, `None` if it stays open
/// (1006 for an end without a close frame).
pub async fn closed_within(ws: &mut Ws, within: Duration) -> Option<u16> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return None,
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Close(f)))) => {
                return Some(f.map(|f| u16::from(f.code)).unwrap_or(1005))
            }
            Ok(Some(Ok(_))) => continue,
            Ok(_) => return Some(1006),
        }
    }
}

/// Amplify cookies of user `name` (sub `sub-<name>`) signed in at
/// `signed_in_at`.
pub fn cookies_for(jwks: &JwksServer, name: &str, signed_in_at: u64) -> String {
    let mut c = access_claims(&jwks.issuer());
    c["sub"] = json!(format!("sub-{name}"));
    c["username"] = json!(name);
    c["auth_time"] = json!(signed_in_at);
    let token = sign(&c, signing_key());
    format!(
        "{}={name}; {}={token}",
        appsync_relay::session::last_auth_user_cookie(CLIENT_ID),
        appsync_relay::session::cookie_name(CLIENT_ID, name, "accessToken"),
    )
}

/// The same sign-in's token (its lineage claims kept), expired.
pub fn expired_copy(token: &str) -> String {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let mut claims: Value = serde_json::from_slice(&bytes).unwrap();
    claims["iat"] = json!(now() - 3700);
    claims["exp"] = json!(now() - 60);
    sign(&claims, signing_key())
}
