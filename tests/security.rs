//! The attack suite: every way in we could think of, kept as a test.
//! Cross-site WebSocket hijacking, token and cookie forgery, hostile frames,
//! and resource exhaustion. Every test also checks that nothing it received
//! (frames, error bodies, metrics) contains a token.

mod support;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

/// Asserts a refusal with `status` and `reason`, and that its body is
/// free of tokens.
async fn assert_refused(stack: &Stack, up: &Upgrade, status: u16, reason: &str, what: &str) {
    match try_connect(&stack.realtime_url(), up).await {
        Attempt::Refused(got, body) => {
            assert_eq!(got, status, "{what}: {body}");
            let body: Value =
                serde_json::from_str(&body).unwrap_or_else(|_| panic!("{what}: {body}"));
            assert_eq!(body["reason"], reason, "{what}");
            assert!(
                !body.to_string().contains("eyJ"),
                "{what}: token in error body"
            );
        }
        Attempt::Open(..) => panic!("{what}: got a 101"),
        Attempt::Failed(e) => panic!("{what}: {e}"),
    }
}

async fn assert_metrics_clean(stack: &Stack) {
    let (_, _, metrics) = http(stack.relay.admin_addr, "GET", "/metrics", &[], "").await;
    assert!(!metrics.contains("eyJ"), "token-shaped label in metrics");
}

// === Cross-site WebSocket hijacking ===

#[tokio::test]
async fn cross_site_websocket_hijacking_is_refused() {
    let stack = Stack::start().await;
    let good = stack.good_cookies();
    for origin in [
        "https://evil.example",
        "null",
        "http://app.example.com",
        "https://app.example.com:444",
        "https://APP.EXAMPLE.COM",
        "https://app.example.com.",
        "https://app.example.com.evil.test",
        "https://evil.test/https://app.example.com",
        "https://app.example.com@evil.test",
        "https://app.example.com, https://evil.example",
    ] {
        let up = Upgrade {
            origin: Some(origin.into()),
            ..Upgrade::browser(&good)
        };
        assert_refused(&stack, &up, 403, "origin_forbidden", origin).await;
    }
    let missing = Upgrade {
        origin: None,
        ..Upgrade::browser(&good)
    };
    assert_refused(&stack, &missing, 403, "origin_missing", "missing Origin").await;
    // HTTP publish from a foreign origin, with a CORS-simple content type.
    let (status, _, body) = http(
        stack.relay.public_addr,
        "POST",
        "/event",
        &[
            ("origin", "https://evil.example"),
            ("cookie", &good),
            ("content-type", "text/plain"),
        ],
        r#"{"channel":"/default/x","events":["1"]}"#,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        stack.emulator.seen_authorizations(),
        Vec::<String>::new(),
        "nothing reached upstream"
    );
    assert_metrics_clean(&stack).await;
}

// === Tokens and cookies ===

#[tokio::test]
async fn forged_and_foreign_tokens_are_refused() {
    let stack = Stack::start().await;
    let iss = stack.jwks.issuer();
    let cookie = |t: &str| amplify_cookies(Some(t), None);

    // Another user pool whose key happens to use the same kid.
    let mut other_pool =
        access_claims("https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Other");
    other_pool["client_id"] = json!(CLIENT_ID);
    let cases = [
        (
            "another pool's key, same kid",
            sign(&other_pool, forger_key()),
            "token_signature",
        ),
        (
            "our key, another pool's issuer",
            sign(&other_pool, signing_key()),
            "token_issuer",
        ),
    ];
    for (what, token, reason) in cases {
        assert_refused(
            &stack,
            &Upgrade::browser(&cookie(&token)),
            401,
            reason,
            what,
        )
        .await;
    }

    // kid path and encoding tricks: never a key.
    for kid in [
        "../key-1",
        "key-1/../key-1",
        "key-1\u{0}",
        "KEY-1",
        " key-1",
        "key-1 ",
        "*",
        "",
    ] {
        let header = json!({"alg": "RS256", "typ": "JWT", "kid": kid});
        let token = raw_token(&header, &access_claims(&iss), b"sig");
        let reason = if kid.is_empty() {
            "token_missing_kid"
        } else {
            "token_unknown_kid"
        };
        assert_refused(&stack, &Upgrade::browser(&cookie(&token)), 401, reason, kid).await;
    }
    // Unknown kids refetch the JWKS at most once per interval.
    assert!(
        stack.jwks.fetch_count() <= 2,
        "JWKS fetched {} times",
        stack.jwks.fetch_count()
    );

    // Oversized tokens and cookie headers.
    assert_refused(
        &stack,
        &Upgrade::browser(&cookie(&"A".repeat(40_000))),
        401,
        "token_too_large",
        "40 KB token",
    )
    .await;

    // A token whose header points at the attacker's keys (jku / x5u / jwk)
    // must not make the relay fetch or trust them.
    let attacker = JwksServer::start(json!({"keys": [forger_key().jwk()]})).await;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("attacker-key".into());
    header.jku = Some(attacker.jwks_url());
    header.x5u = Some(attacker.jwks_url());
    let enc = jsonwebtoken::EncodingKey::from_rsa_pem(forger_key().private_pem.as_bytes()).unwrap();
    let token = jsonwebtoken::encode(&header, &access_claims(&iss), &enc).unwrap();
    assert_refused(
        &stack,
        &Upgrade::browser(&cookie(&token)),
        401,
        "token_unknown_kid",
        "jku/x5u",
    )
    .await;
    let mut with_jwk = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    with_jwk.kid = Some("key-1".into());
    with_jwk.jwk = serde_json::from_value(forger_key().jwk()).ok();
    let token = jsonwebtoken::encode(&with_jwk, &access_claims(&iss), &enc).unwrap();
    assert_refused(
        &stack,
        &Upgrade::browser(&cookie(&token)),
        401,
        "token_signature",
        "embedded jwk",
    )
    .await;
    assert_eq!(
        attacker.fetch_count(),
        0,
        "the relay fetched keys from a URL in a token header"
    );
    assert_metrics_clean(&stack).await;
}

#[tokio::test]
async fn cookie_tricks_are_refused() {
    use appsync_relay::session::{cookie_name, last_auth_user_cookie};
    let stack = Stack::start().await;
    let token = stack.good_token();
    let last = last_auth_user_cookie(CLIENT_ID);
    let access = |user: &str| cookie_name(CLIENT_ID, user, "accessToken");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "cookie tossing: two access tokens for the same name",
            format!("{last}={USERNAME}; {}={token}; {}=attacker-planted", access(USERNAME), access(USERNAME)),
            "ambiguous_session",
        ),
        (
            "cookie tossing via an encoding variant of the name",
            format!("{last}={USERNAME}; {}={token}; CognitoIdentityServiceProvider.{CLIENT_ID}.alice@example.com.accessToken=other", access(USERNAME)),
            "ambiguous_session",
        ),
        (
            "two LastAuthUser cookies",
            format!("{last}={USERNAME}; {last}=mallory; {}={token}", access(USERNAME)),
            "ambiguous_session",
        ),
        (
            "LastAuthUser names a user without a token cookie",
            format!("{last}=mallory; {}={token}", access(USERNAME)),
            "no_session",
        ),
        (
            "double-encoded username",
            format!("{last}=alice%2540example.com; {}={token}", access(USERNAME)),
            "no_session",
        ),
        (
            "NUL in the username",
            format!("{last}=alice%00; CognitoIdentityServiceProvider.{CLIENT_ID}.alice%00.accessToken={token}x"),
            "token_malformed",
        ),
        (
            "cookies of another app client",
            format!(
                "{}={USERNAME}; {}={token}",
                last_auth_user_cookie("otherclient"),
                cookie_name("otherclient", USERNAME, "accessToken")
            ),
            "no_session",
        ),
    ];
    for (what, cookie, reason) in cases {
        let up = Upgrade {
            cookie: Some(cookie),
            ..Upgrade::browser("")
        };
        assert_refused(&stack, &up, 401, reason, what).await;
    }
    assert_eq!(stack.emulator.seen_authorizations(), Vec::<String>::new());
    // A huge Cookie header is refused before parsing (the request-head limit
    // is raised here so the cookie limit is the one that bites).
    let roomy = Stack::start_with(&["--max-header-bytes", "200000"]).await;
    let huge = format!("{}; pad={}", roomy.good_cookies(), "x".repeat(70_000));
    let up = Upgrade {
        cookie: Some(huge),
        ..Upgrade::browser("")
    };
    assert_refused(&roomy, &up, 431, "cookie_too_large", "70 KB cookie header").await;
}

// === Hostile frames ===

async fn open(stack: &Stack) -> Ws {
    let mut ws = connect(&stack.realtime_url(), &stack.good_cookies()).await;
    init(&mut ws).await;
    ws
}

#[tokio::test]
async fn client_authorization_never_reaches_upstream_in_any_place() {
    let stack = Stack::start().await;
    let mut ws = open(&stack).await;
    let stolen = "stolen-token-from-elsewhere";
    let frames = [
        json!({"type":"subscribe","id":"a","channel":"/default/x","authorization":{"Authorization":stolen}}),
        json!({"type":"subscribe","id":"b","channel":"/default/x","Authorization":{"Authorization":stolen},"AUTHORIZATION":stolen}),
        json!({"type":"subscribe","id":"c","channel":"/default/x","payload":{"extensions":{"authorization":{"Authorization":stolen}}}}),
        json!({"type":"subscribe","id":"d","channel":"/default/x","Payload":{"Extensions":{"AuthoriZation":{"Authorization":stolen}}}}),
        json!({"type":"subscribe","id":"e","channel":"/default/x","payload":{"authorization":{"x-api-key":stolen}}}),
        json!({"type":"publish","id":"f","channel":"/default/x","events":["1"],"authorization":{"x-api-key":stolen}}),
        json!({"type":"connection_init","authorization":{"Authorization":stolen}}),
        json!({"type":"unsubscribe","id":"a","Authorization":stolen}),
        // Deeper still: top-level extensions, arrays in payload, payload.data.
        json!({"type":"subscribe","id":"g","channel":"/default/x","extensions":{"authorization":{"Authorization":stolen}}}),
        json!({"type":"subscribe","id":"h","channel":"/default/x","payload":[{"authorization":{"Authorization":stolen}}]}),
        json!({"type":"publish","id":"i","channel":"/default/x","events":["1"],"payload":{"data":{"authorization":{"Authorization":stolen}}}}),
    ];
    for f in frames {
        send_json(&mut ws, f).await;
    }
    // Drain the answers (7 subscribes, 2 publishes, 1 connection_ack, 1 unsubscribe).
    let mut seen_types = Vec::new();
    for _ in 0..11 {
        let v = recv_json(&mut ws).await;
        assert!(
            !v.to_string().contains("eyJ"),
            "token in a browser-bound frame: {v}"
        );
        seen_types.push(v["type"].as_str().unwrap().to_string());
    }
    assert!(
        !seen_types.iter().any(|t| t.ends_with("_error")),
        "{seen_types:?}"
    );
    let seen = stack.emulator.seen_authorizations();
    assert!(
        !seen.iter().any(|a| a.contains(stolen)),
        "client auth reached upstream: {seen:?}"
    );
    assert!(
        seen.iter().all(|a| a.starts_with("eyJ") && *a == seen[0]),
        "{seen:?}"
    );
}

#[tokio::test]
async fn frames_with_duplicate_keys_are_refused_locally_not_guessed_at() {
    let stack = Stack::start_with(&["--publish-rate", "0"]).await;
    let mut ws = open(&stack).await;
    let before = stack.emulator.seen_authorizations().len();
    // Classified by one `type`, read by AppSync as another: never forwarded.
    for text in [
        r#"{"type":"subscribe","id":"s","channel":"/default/x","type":"publish","events":["1"]}"#,
        r#"{"type":"publish","id":"p","channel":"/default/x","events":["1"],"type":"connection_init"}"#,
        r#"{"type":"subscribe","id":"s","channel":"/default/x","\u0063hannel":"/default/*"}"#,
        r#"{"type":"start","id":"s","payload":{}}"#,
    ] {
        ws.send(Message::Text(text.into())).await.unwrap();
        let v = recv_json(&mut ws).await;
        assert_eq!(v["type"], "error", "{text} -> {v}");
    }
    assert_eq!(
        stack.emulator.seen_authorizations().len(),
        before,
        "a duplicate-key frame reached upstream"
    );
    // The socket is fine afterwards.
    send_json(&mut ws, amplify_subscribe("ok", "/default/x")).await;
    assert_eq!(recv_json(&mut ws).await["type"], "subscribe_success");
}

#[tokio::test]
async fn hostile_json_is_answered_locally_and_the_socket_survives() {
    let stack = Stack::start().await;
    let mut ws = open(&stack).await;
    let before = stack.emulator.seen_authorizations().len();
    let deep = format!(
        r#"{{"type":"subscribe","id":"deep","channel":"/default/x","payload":{}{}}}"#,
        "[".repeat(20_000),
        "]".repeat(20_000)
    );
    let many_events =
        json!({"type":"publish","id":"many","channel":"/default/x","events": vec!["1"; 100_000]});
    let huge_id = json!({"type":"subscribe","id": "x".repeat(100_000),"channel":"/default/x"});
    let bad_channel =
        json!({"type":"subscribe","id":"c","channel": format!("/{}", "a/".repeat(10_000))});
    for (frame, expected) in [
        (deep, "error"),
        (many_events.to_string(), "publish_error"),
        (huge_id.to_string(), "subscribe_error"),
        (bad_channel.to_string(), "subscribe_error"),
        ("\"just a string\"".to_string(), "error"),
        (
            "{\"type\":\"subscribe\",\"id\":\"dup\",\"id\":\"dup2\"".to_string(),
            "error",
        ),
    ] {
        ws.send(Message::Text(frame.into())).await.unwrap();
        let v = recv_json(&mut ws).await;
        assert_eq!(v["type"], expected, "{v}");
        assert!(!v.to_string().contains("eyJ"));
    }
    assert_eq!(
        stack.emulator.seen_authorizations().len(),
        before,
        "hostile frames reached upstream"
    );
    send_json(&mut ws, amplify_subscribe("ok", "/default/x")).await;
    assert_eq!(recv_json(&mut ws).await["type"], "subscribe_success");
}

#[tokio::test]
async fn subscription_ids_cannot_collide_with_the_relays_bookkeeping() {
    let stack = Stack::start().await;
    let mut ws = open(&stack).await;
    send_json(&mut ws, amplify_subscribe("same", "/default/a")).await;
    assert_eq!(recv_json(&mut ws).await["type"], "subscribe_success");
    // The same id again (for another channel) is refused by the relay; the
    // first subscription stays tracked and is still replayed after a re-dial.
    send_json(&mut ws, amplify_subscribe("same", "/default/b")).await;
    let e = recv_json(&mut ws).await;
    assert_eq!(
        (e["type"].as_str(), e["id"].as_str()),
        (Some("subscribe_error"), Some("same"))
    );
    stack.emulator.abort_all();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let redialled = || async {
        let (_, _, m) = http(stack.relay.admin_addr, "GET", "/metrics", &[], "").await;
        m.contains("appsync_relay_upstream_redials_total{result=\"ok\"} 1")
    };
    while !redialled().await || stack.emulator.subscription_count() != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "subscription not replayed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, _, _) = http(
        stack.relay.public_addr,
        "POST",
        "/event",
        &[
            ("origin", ORIGIN),
            ("cookie", &stack.good_cookies()),
            ("content-type", "application/json"),
        ],
        r#"{"channel":"/default/a","events":["{\"still\":\"here\"}"]}"#,
    )
    .await;
    assert_eq!(status, 200);
    let data = recv_json(&mut ws).await;
    assert_eq!(
        (data["type"].as_str(), data["id"].as_str()),
        (Some("data"), Some("same"))
    );
}

#[tokio::test]
async fn non_utf8_text_closes_with_1007() {
    let stack = Stack::start().await;
    let mut ws = open(&stack).await;
    ws.send(Message::Frame(Frame::message(
        vec![0x7b, 0xff, 0xfe, 0x7d],
        OpCode::Data(Data::Text),
        true,
    )))
    .await
    .unwrap();
    assert_eq!(recv_close(&mut ws).await, Some(1007));
}

#[tokio::test]
async fn oversized_control_frames_close_with_1002() {
    let stack = Stack::start().await;
    let mut ws = open(&stack).await;
    ws.send(Message::Frame(Frame::ping(vec![0u8; 300])))
        .await
        .unwrap();
    assert_eq!(recv_close(&mut ws).await, Some(1002));
}

#[tokio::test]
async fn fragmented_messages_over_the_cap_close_with_1009() {
    let stack = Stack::start_with(&["--max-message-bytes", "4096"]).await;
    let mut ws = open(&stack).await;
    // The browser-leg cap is 2 × 4096 + 64 KiB (see relay.rs).
    ws.send(Message::Frame(Frame::message(
        vec![b'{'; 40_000],
        OpCode::Data(Data::Text),
        false,
    )))
    .await
    .unwrap();
    let _ = ws
        .send(Message::Frame(Frame::message(
            vec![b' '; 40_000],
            OpCode::Data(Data::Continue),
            false,
        )))
        .await;
    let _ = ws
        .send(Message::Frame(Frame::message(
            b"}".to_vec(),
            OpCode::Data(Data::Continue),
            true,
        )))
        .await;
    assert_eq!(recv_close(&mut ws).await, Some(1009));
}

#[tokio::test]
async fn ping_floods_are_absorbed() {
    let stack = Stack::start().await;
    let ws = open(&stack).await;
    let (mut tx, mut rx) = ws.split();
    let pongs = Arc::new(AtomicUsize::new(0));
    let counter = pongs.clone();
    let reader = tokio::spawn(async move {
        while let Some(Ok(msg)) = rx.next().await {
            match msg {
                Message::Pong(_) => {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                Message::Text(t) if t.contains("subscribe_success") => return (rx, true),
                _ => {}
            }
        }
        (rx, false)
    });
    for _ in 0..20_000 {
        tx.feed(Message::Ping(b"flood".to_vec().into()))
            .await
            .unwrap();
    }
    tx.flush().await.unwrap();
    tx.send(Message::Text(
        amplify_subscribe("after-flood", "/default/x")
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let (_, subscribed) = tokio::time::timeout(Duration::from_secs(20), reader)
        .await
        .unwrap()
        .unwrap();
    assert!(subscribed, "the socket stopped working after a ping flood");
    assert!(pongs.load(Ordering::Relaxed) > 0);
}

// === Resource exhaustion ===

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Half-open connections, slow and oversized request heads, and rapid
/// connect/disconnect churn, all at once.
async fn attack(stack: &Stack) {
    let addr = stack.relay.public_addr;
    let mut half_open = Vec::new();
    for _ in 0..300 {
        if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
            let _ = s
                .write_all(b"GET /event/realtime HTTP/1.1\r\nHost: x\r\n")
                .await;
            half_open.push(s);
        }
    }
    let churn = (0..8).map(|_| {
        let url = stack.realtime_url();
        let cookies = stack.good_cookies();
        tokio::spawn(async move {
            for _ in 0..25 {
                if let Attempt::Open(ws, _) = try_connect(&url, &Upgrade::browser(&cookies)).await {
                    let mut ws = *ws;
                    let _ = ws.close(None).await;
                }
                // Some that vanish without a close frame.
                let _ = tokio::net::TcpStream::connect(
                    url.trim_start_matches("ws://").split('/').next().unwrap(),
                )
                .await;
            }
        })
    });
    let big = (0..50).map(|_| {
        tokio::spawn(async move {
            if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
                let _ = s
                    .write_all(
                        format!(
                            "GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n",
                            "y".repeat(100_000)
                        )
                        .as_bytes(),
                    )
                    .await;
            }
        })
    });
    let tasks: Vec<_> = churn.chain(big).collect();
    // Well-behaved clients are served while all of this goes on.
    let mut served = 0;
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let t = tokio::time::Instant::now();
        let mut ws = connect(&stack.realtime_url(), &stack.good_cookies()).await;
        init(&mut ws).await;
        send_json(&mut ws, amplify_subscribe("good", "/default/x")).await;
        assert_eq!(recv_json(&mut ws).await["type"], "subscribe_success");
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "a good client waited {:?}",
            t.elapsed()
        );
        served += 1;
        let _ = ws.close(None).await;
    }
    assert!(
        served >= 3,
        "only {served} good clients served in 3 s under attack"
    );
    for t in tasks {
        let _ = t.await;
    }
    drop(half_open);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_attacks_leave_good_clients_served_and_memory_flat() {
    let stack =
        Stack::start_with(&["--handshake-timeout", "1", "--max-header-bytes", "16384"]).await;
    attack(&stack).await; // warm-up: allocator pools, caches
    let settle = || async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while stack.relay.state.limits().active() != 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "connections never drained"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(1500)).await; // half-open ones time out
    };
    settle().await;
    let baseline = rss_kib();
    for _ in 0..2 {
        attack(&stack).await;
        settle().await;
    }
    let after = rss_kib();
    assert_eq!(stack.relay.state.limits().active(), 0);
    assert!(
        after <= baseline + 16 * 1024,
        "memory grew across repeated attacks: {baseline} KiB -> {after} KiB"
    );
    let (_, _, metrics) = http(stack.relay.admin_addr, "GET", "/metrics", &[], "").await;
    assert!(
        metrics.contains("appsync_relay_connections_active 0"),
        "{metrics}"
    );
    assert!(!metrics.contains("eyJ"));
}

/// A raw upgrade request head for the realtime path.
fn raw_upgrade(cookie: Option<&str>) -> String {
    let cookie = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    format!(
        "GET /event/realtime HTTP/1.1\r\nHost: relay\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Protocol: aws-appsync-event-ws\r\nOrigin: {ORIGIN}\r\n{cookie}\r\n"
    )
}

/// Reads one response head (up to the blank line) from `stream`.
async fn read_head(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte))
            .await
            .expect("response head in time")
            .unwrap();
        assert!(n == 1, "connection closed before a response head");
        buf.push(byte[0]);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn refused_upgrades_do_not_keep_their_connection_alive() {
    use tokio::io::AsyncReadExt;
    let stack = Stack::start().await;
    let mut tcp = tokio::net::TcpStream::connect(stack.relay.public_addr)
        .await
        .unwrap();
    // A foreign Origin: refused with an HTTP answer (a 401 is answered in
    // band, and its socket closes after the connection_error: see
    // tests/relay.rs).
    let foreign = raw_upgrade(None).replace(ORIGIN, "https://evil.example");
    tcp.write_all(foreign.as_bytes()).await.unwrap();
    let head = read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    // The relay closes after the body: the socket reads to its end.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), tcp.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(_))),
        "a refused upgrade's connection was kept open"
    );
}

#[tokio::test]
async fn no_upgrade_is_accepted_once_the_listeners_stopped_accepting() {
    let Stack {
        relay,
        jwks,
        emulator,
        cognito,
    } = Stack::start().await;
    let token = sign(&access_claims(&jwks.issuer()), signing_key());
    let cookie = amplify_cookies(Some(&token), None);
    // A keep-alive connection opened before the drain: one request on it.
    let mut tcp = tokio::net::TcpStream::connect(relay.public_addr)
        .await
        .unwrap();
    tcp.write_all(b"GET /nowhere HTTP/1.1\r\nHost: relay\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    tokio::io::AsyncReadExt::read_exact(&mut tcp, &mut body)
        .await
        .unwrap();

    let state = relay.state.clone();
    let drain = tokio::spawn(relay.shutdown(Duration::from_millis(100), Duration::from_secs(3)));
    while !state.stop_accepting().is_cancelled() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tcp.write_all(raw_upgrade(Some(&cookie)).as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut tcp).await;
    assert!(
        head.starts_with("HTTP/1.1 503"),
        "an upgrade after the listeners closed got: {head}"
    );
    drain.await.unwrap();
    drop((jwks, emulator, cognito));
}

#[tokio::test]
async fn http_publish_is_held_to_the_publish_rate_and_a_body_deadline() {
    use tokio::io::AsyncReadExt;
    let stack = Stack::start_with(&["--publish-rate", "2", "--body-timeout", "1"]).await;
    let cookie = stack.good_cookies();
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let (status, _, body) = http(
            stack.relay.public_addr,
            "POST",
            "/event",
            &[
                ("origin", ORIGIN),
                ("cookie", &cookie),
                ("content-type", "application/json"),
            ],
            r#"{"channel":"/default/x","events":["1"]}"#,
        )
        .await;
        assert!(!body.contains("eyJ"));
        statuses.push(status);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        2,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().filter(|s| **s == 429).count() >= 4,
        "{statuses:?}"
    );
    // A body that never finishes arriving is cut off.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut tcp = tokio::net::TcpStream::connect(stack.relay.public_addr)
        .await
        .unwrap();
    let head = format!(
        "POST /event HTTP/1.1\r\nHost: relay\r\nOrigin: {ORIGIN}\r\nCookie: {cookie}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"chan"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("a stalled body held the request past the body timeout")
        .unwrap();
    let resp = String::from_utf8_lossy(&buf[..n]);
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
}

/// An RSA key below 2048 bits in the JWKS verifies nothing: AWS-LC (the
/// verifier's backend) refuses it, as it should (Cognito's keys are 2048
/// bits; a 1024-bit key is factorable by a determined attacker). The token
/// is signed with the weak key by hand (PKCS#1 v1.5, SHA-256), since no
/// signer the project uses would sign with it. Before the switch from the
/// pure-Rust `rsa` backend such a token was accepted (the relay went on to
/// dial the upstream and answered 502, not 401).
#[tokio::test]
async fn tokens_signed_with_an_rsa_key_under_2048_bits_are_refused() {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use rsa::traits::PublicKeyParts;
    use sha2::Digest as _;
    let weak = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 1024).unwrap();
    let public = weak.to_public_key();
    let jwks = JwksServer::start(json!({"keys": [{
        "kty": "RSA", "kid": "weak-1", "alg": "RS256", "use": "sig",
        "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
        "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
    }]}))
    .await;
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": "weak-1"});
    let claims = access_claims(&jwks.issuer());
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    // DigestInfo prefix of SHA-256 (RFC 8017, 9.2 note 1), then the hash.
    let mut digest_info = vec![
        0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
        0x05, 0x00, 0x04, 0x20,
    ];
    digest_info.extend_from_slice(&sha2::Sha256::digest(input.as_bytes()));
    let signature = weak
        .sign(rsa::Pkcs1v15Sign::new_unprefixed(), &digest_info)
        .unwrap();
    let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature));
    // Nothing upstream: the relay must refuse before it would dial.
    let relay = start_relay(relay_config("http://127.0.0.1:9/event", &jwks, &[])).await;
    let url = format!("ws://{}/event/realtime", relay.public_addr);
    let cookies = amplify_cookies(Some(&token), None);
    match try_connect(&url, &Upgrade::browser(&cookies)).await {
        Attempt::Refused(status, _) => assert_eq!(
            status, 401,
            "a weak-key token was not refused as unauthenticated"
        ),
        Attempt::Open(..) => panic!("a token signed with a 1024-bit RSA key was accepted"),
        Attempt::Failed(e) => panic!("{e}"),
    }
}

/// A socket refused in band (no session) reads frames of at most 4 KiB,
/// not the browser leg's 2 × `--max-message-bytes`: a client with no
/// session cannot make the relay hold megabytes on each of the up to 1 024
/// refusal sockets. Before: a 100 kB frame was read whole and answered
/// with the `connection_error`.
#[tokio::test]
async fn a_socket_refused_in_band_reads_no_large_frame() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let stack = Stack::start().await;
    let mut req = stack.realtime_url().into_client_request().unwrap();
    req.headers_mut().insert("origin", ORIGIN.parse().unwrap());
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "aws-appsync-event-ws".parse().unwrap(),
    );
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.headers()["x-appsync-relay-refused"], "401 no_session");
    let big = format!(
        "{{\"type\":\"connection_init\",\"pad\":\"{}\"}}",
        "x".repeat(100_000)
    );
    let _ = ws.send(Message::Text(big.into())).await;
    let next = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("the refused socket answered in time");
    match next {
        Some(Ok(Message::Close(frame))) => {
            assert_eq!(frame.map(|f| u16::from(f.code)), Some(1009));
        }
        None | Some(Err(_)) => {}
        Some(Ok(other)) => panic!("the large frame was read and answered: {other:?}"),
    }
}
