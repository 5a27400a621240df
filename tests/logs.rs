//! Log redaction: everything the relay logs (at `trace` for the relay's own
//! code, `info` for its dependencies) during whole sessions — accepted and
//! refused handshakes, refreshes with rotation, HTTP publishes, a revoked
//! session — is captured and searched for every token, refresh token and
//! cookie value the test used.
//!
//! This file has one test: it installs the process-wide log subscriber.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::fake_cognito::expired_access;
use support::*;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

fn cookies(access: &str, refresh: &str) -> String {
    use appsync_relay::session::{cookie_name, last_auth_user_cookie};
    format!(
        "{}={USERNAME}; {}={access}; {}={refresh}",
        last_auth_user_cookie(CLIENT_ID),
        cookie_name(CLIENT_ID, USERNAME, "accessToken"),
        cookie_name(CLIENT_ID, USERNAME, "refreshToken"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn no_token_or_cookie_value_is_ever_logged() {
    let capture = Capture::default();
    tracing_subscriber::fmt()
        .with_env_filter("appsync_relay=trace,info")
        .with_writer(capture.clone())
        .with_ansi(false)
        .init();

    let stack = Stack::start_with_lifetime(&["--refresh-before", "2"], 4).await;
    stack
        .cognito
        .rotate
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let mut secrets: Vec<String> = Vec::new();

    // An accepted session with traffic, renewed (and rotated) in place.
    let s = stack.cognito.sign_in(USERNAME);
    secrets.extend([s.access.clone(), s.id.clone(), s.refresh.clone()]);
    let mut ws = connect(&stack.realtime_url(), &cookies(&s.access, &s.refresh)).await;
    init(&mut ws).await;
    send_json(&mut ws, amplify_subscribe("s", "/default/logs")).await;
    assert_eq!(recv_json(&mut ws).await["type"], "subscribe_success");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while stack.cognito.calls("GetTokensFromRefreshToken") == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no renewal");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    send_json(
        &mut ws,
        amplify_publish("p", "/default/logs", &[serde_json::json!(1)]),
    )
    .await;

    // A handshake refresh, an HTTP publish, and refusals of several kinds.
    let s2 = stack.cognito.sign_in(USERNAME);
    let expired = expired_access(&stack.jwks.issuer(), USERNAME, 30);
    secrets.extend([s2.refresh.clone(), expired.clone()]);
    let (_, headers, _) = http(
        stack.relay.public_addr,
        "POST",
        "/event",
        &[
            ("origin", ORIGIN),
            ("cookie", &cookies(&expired, &s2.refresh)),
            ("content-type", "application/json"),
        ],
        r#"{"channel":"/default/logs","events":["2"]}"#,
    )
    .await;
    for v in headers.get_all("set-cookie") {
        let pair = v.to_str().unwrap().split(';').next().unwrap();
        secrets.push(pair.split_once('=').unwrap().1.to_string());
    }
    let forged = sign(&access_claims(&stack.jwks.issuer()), forger_key());
    secrets.push(forged.clone());
    let _ = try_connect(
        &stack.realtime_url(),
        &Upgrade::browser(&cookies(&forged, "rt-unknown-secret-value")),
    )
    .await;
    let _ = try_connect(
        &stack.realtime_url(),
        &Upgrade::browser(&cookies(&expired, "rt-unknown-secret-value")),
    )
    .await;
    secrets.push("rt-unknown-secret-value".into());
    let mut foreign = Upgrade::browser(&cookies(&s2.access, &s2.refresh));
    foreign.origin = Some("https://evil.example".into());
    let _ = try_connect(&stack.realtime_url(), &foreign).await;

    // The session is revoked: 4401, and the connection's closing log line.
    stack.cognito.revoke_user(USERNAME);
    assert_eq!(recv_close(&mut ws).await, Some(4401));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("websocket relay ended"),
        "the per-connection line is logged:\n{logs}"
    );
    assert!(logs.contains("websocket handshake refused"), "{logs}");
    assert!(logs.contains("sub="), "the user is identified by sub");
    // The per-connection line's fields are an interface (README, "Logs"):
    // every one is on every such line.
    let ended: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("websocket relay ended"))
        .collect();
    for line in &ended {
        for field in [
            "request_id=",
            "peer=",
            "client_ip=",
            "sub=",
            "duration_ms=",
            "reason=",
            "close_code=",
            "upstream_close_code=",
            "frames_to_upstream=",
            "frames_to_client=",
        ] {
            assert!(line.contains(field), "{field} missing: {line}");
        }
    }
    assert!(
        ended.iter().any(|l| l.contains("reason=refresh_rejected")),
        "the 4401 connection names why: {ended:#?}"
    );
    for secret in &secrets {
        assert!(secret.len() > 10);
        // Any 12-character window of the secret would do: check three.
        let n = secret.len();
        let mid = (n - 12) / 2;
        for probe in [&secret[..12], &secret[mid..mid + 12], &secret[n - 12..]] {
            assert!(
                !logs.contains(probe),
                "a secret leaked into the logs: …{probe}…\n{logs}"
            );
        }
    }
    assert!(
        !logs.contains("eyJ"),
        "something JWT-shaped was logged:\n{logs}"
    );
}
