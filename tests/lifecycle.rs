//! The session lifecycle on long-lived connections: refresh at the
//! handshake (single flight), renewal on open sockets across several token
//! lifetimes, rotation safety, re-authentication and clean endings.
//!
//! Cognito here is `support::fake_cognito` (real RS256 tokens from the test
//! JWKS key; the refresh APIs with rotation, revocation, counters and
//! delays), and the emulator verifies every token it is sent with zero
//! leeway, so an expired token on any frame fails the test.

mod support;

use futures_util::StreamExt;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;
use support::fake_cognito::{expired_access, Session};
use support::*;
use tokio_tungstenite::tungstenite::Message;

fn cookies(access: &str, id: &str, refresh: &str) -> String {
    use appsync_relay::session::{cookie_name, last_auth_user_cookie};
    format!(
        "{}={USERNAME}; {}={access}; {}={id}; {}={refresh}",
        last_auth_user_cookie(CLIENT_ID),
        cookie_name(CLIENT_ID, USERNAME, "accessToken"),
        cookie_name(CLIENT_ID, USERNAME, "idToken"),
        cookie_name(CLIENT_ID, USERNAME, "refreshToken"),
    )
}

fn session_cookies(s: &Session) -> String {
    cookies(&s.access, &s.id, &s.refresh)
}

/// `Set-Cookie` headers as `suffix → (value, attributes)`.
fn set_cookies(headers: &hyper::HeaderMap) -> HashMap<String, (String, String)> {
    headers
        .get_all("set-cookie")
        .iter()
        .map(|v| {
            let v = v.to_str().unwrap();
            let (pair, attrs) = v.split_once(';').unwrap_or((v, ""));
            let (name, value) = pair.split_once('=').unwrap();
            let suffix = name.rsplit('.').next().unwrap().to_string();
            (suffix, (value.to_string(), attrs.trim().to_string()))
        })
        .collect()
}

async fn open(stack: &Stack, cookie: &str) -> (Ws, hyper::HeaderMap) {
    match try_connect(&stack.realtime_url(), &Upgrade::browser(cookie)).await {
        Attempt::Open(ws, headers) => (*ws, headers),
        Attempt::Refused(s, b) => panic!("refused {s} {b}"),
        Attempt::Failed(e) => panic!("failed {e}"),
    }
}

async fn metrics(stack: &Stack) -> String {
    http(stack.relay.admin_addr, "GET", "/metrics", &[], "")
        .await
        .2
}

#[tokio::test]
async fn expired_session_is_refreshed_at_the_handshake_and_cookies_written_back() {
    let stack = Stack::start().await;
    let s = stack.cognito.sign_in(USERNAME);
    let expired = expired_access(&stack.jwks.issuer(), USERNAME, 30);
    let (mut ws, headers) = open(&stack, &cookies(&expired, &s.id, &s.refresh)).await;
    assert_eq!(stack.cognito.calls("GetTokensFromRefreshToken"), 1);
    let written = set_cookies(&headers);
    let (access, attrs) = &written["accessToken"];
    assert_ne!(access, &expired);
    assert!(
        attrs.contains("HttpOnly")
            && attrs.contains("SameSite=Strict")
            && attrs.contains("Max-Age=31536000"),
        "{attrs}"
    );
    assert!(attrs.contains("Path=/"));
    assert!(written.contains_key("idToken"));
    assert!(
        !written.contains_key("refreshToken"),
        "no rotation, no refresh cookie"
    );
    // The socket works with the renewed token (the emulator verifies it).
    init(&mut ws).await;
    send_json(&mut ws, amplify_subscribe("s", "/default/renewed")).await;
    assert_eq!(recv_json(&mut ws).await["type"], "subscribe_success");
    assert!(stack
        .emulator
        .seen_authorizations()
        .iter()
        .all(|a| a == access));

    // The next handshake with the written cookies needs no refresh.
    let (_, headers) = open(&stack, &cookies(access, &written["idToken"].0, &s.refresh)).await;
    assert!(headers.get("set-cookie").is_none());
    assert_eq!(stack.cognito.calls("GetTokensFromRefreshToken"), 1);
    assert!(metrics(&stack)
        .await
        .contains("appsync_relay_token_refreshes_total{phase=\"handshake\",result=\"ok\"} 1"));
}

#[tokio::test]
async fn concurrent_handshakes_of_one_session_make_one_refresh_call() {
    let stack = Stack::start().await;
    stack
        .cognito
        .rotate
        .store(true, std::sync::atomic::Ordering::SeqCst);
    stack
        .cognito
        .invalidate_rotated
        .store(true, std::sync::atomic::Ordering::SeqCst);
    stack
        .cognito
        .delay_ms
        .store(300, std::sync::atomic::Ordering::SeqCst);
    let s = stack.cognito.sign_in(USERNAME);
    let cookie = cookies(
        &expired_access(&stack.jwks.issuer(), USERNAME, 5),
        &s.id,
        &s.refresh,
    );
    let url = stack.realtime_url();
    let attempts: Vec<_> = (0..20)
        .map(|_| {
            let (url, cookie) = (url.clone(), cookie.clone());
            tokio::spawn(async move { try_connect(&url, &Upgrade::browser(&cookie)).await })
        })
        .collect();
    let mut refresh_cookies = Vec::new();
    for a in attempts {
        match a.await.unwrap() {
            Attempt::Open(_, headers) => {
                refresh_cookies.push(set_cookies(&headers)["refreshToken"].0.clone())
            }
            Attempt::Refused(s, b) => panic!("refused {s} {b}"),
            Attempt::Failed(e) => panic!("failed {e}"),
        }
    }
    assert_eq!(
        stack.cognito.calls("GetTokensFromRefreshToken"),
        1,
        "one rotated refresh, shared"
    );
    refresh_cookies.dedup();
    assert_eq!(
        refresh_cookies.len(),
        1,
        "every browser tab got the same rotated refresh token"
    );
    assert_ne!(refresh_cookies[0], s.refresh);
}

#[tokio::test]
async fn connection_stays_healthy_across_three_token_lifetimes() {
    // 4 s tokens, renewed 2 s before expiry: ~5 renewals in 13 s.
    let stack = Stack::start_with_lifetime(&["--refresh-before", "2"], 4).await;
    let s = stack.cognito.sign_in(USERNAME);
    let (mut ws, _) = open(&stack, &session_cookies(&s)).await;
    init(&mut ws).await;
    send_json(&mut ws, amplify_subscribe("s0", "/default/long")).await;
    assert_eq!(recv_json(&mut ws).await["type"], "subscribe_success");
    let started = tokio::time::Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(13) {
        n += 1;
        // A publish and a new subscription, each verified by the emulator
        // with zero leeway: they only succeed with a live token.
        send_json(
            &mut ws,
            amplify_publish(&format!("p{n}"), "/default/long", &[json!({"n": n})]),
        )
        .await;
        let mut got = (false, false);
        while got != (true, true) {
            let v = recv_json(&mut ws).await;
            match v["type"].as_str().unwrap() {
                "publish_success" => got.0 = true,
                "data" => got.1 = true,
                other => panic!("after {:?}: {other} {v}", started.elapsed()),
            }
        }
        send_json(
            &mut ws,
            amplify_subscribe(&format!("s{n}"), &format!("/default/extra{n}")),
        )
        .await;
        let v = recv_json(&mut ws).await;
        assert_eq!(
            v["type"],
            "subscribe_success",
            "after {:?}: {v}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let m = metrics(&stack).await;
    let renewals = stack.cognito.calls("GetTokensFromRefreshToken");
    assert!(renewals >= 3, "only {renewals} renewals in 13 s\n{m}");
    assert!(
        m.contains("appsync_relay_token_refreshes_total{phase=\"connection\",result=\"ok\"}"),
        "{m}"
    );
}

#[tokio::test]
async fn rotation_on_an_open_socket_is_written_back_on_the_next_request() {
    let stack = Stack::start_with_lifetime(&["--refresh-before", "2"], 4).await;
    stack
        .cognito
        .rotate
        .store(true, std::sync::atomic::Ordering::SeqCst);
    // The old refresh token dies the moment it is rotated (grace period 0).
    stack
        .cognito
        .invalidate_rotated
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let s = stack.cognito.sign_in(USERNAME);
    let (mut ws, _) = open(&stack, &session_cookies(&s)).await;
    init(&mut ws).await;
    // Wait for the socket's renewal (2 s in), which rotates.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while stack.cognito.calls("GetTokensFromRefreshToken") == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no renewal");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The browser still holds the dead refresh token. Its next request
    // through the relay (an HTTP publish) gets the current set of cookies,
    // with no call to Cognito using the dead token.
    let calls = stack.cognito.total_calls();
    let (status, headers, body) = http(
        stack.relay.public_addr,
        "POST",
        "/event",
        &[
            ("origin", ORIGIN),
            ("cookie", &session_cookies(&s)),
            ("content-type", "application/json"),
        ],
        r#"{"channel":"/default/rot","events":["1"]}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let written = set_cookies(&headers);
    let new_refresh = &written
        .get("refreshToken")
        .expect("rotated refresh token written back")
        .0;
    assert_ne!(new_refresh, &s.refresh);
    assert_eq!(
        stack.cognito.total_calls(),
        calls,
        "no refresh with the dead token"
    );
    // And a reconnect with an expired access token and the dead refresh
    // token is served the same way, on the 101.
    let dead = cookies(
        &expired_access(&stack.jwks.issuer(), USERNAME, 5),
        &s.id,
        &s.refresh,
    );
    let (mut ws2, headers) = open(&stack, &dead).await;
    assert_eq!(&set_cookies(&headers)["refreshToken"].0, new_refresh);
    init(&mut ws2).await;
    send_json(&mut ws2, amplify_subscribe("s", "/default/rot")).await;
    assert_eq!(recv_json(&mut ws2).await["type"], "subscribe_success");
}

#[tokio::test]
async fn revoked_refresh_token_ends_the_connection_with_4401() {
    let stack = Stack::start_with_lifetime(&["--refresh-before", "2"], 4).await;
    let s = stack.cognito.sign_in(USERNAME);
    let (mut ws, _) = open(&stack, &session_cookies(&s)).await;
    init(&mut ws).await;
    stack.cognito.revoke(&s.refresh);
    let started = tokio::time::Instant::now();
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(6), ws.next())
            .await
            .expect("no close within a token lifetime")
        {
            Some(Ok(Message::Close(f))) => {
                break f.map(|f| (u16::from(f.code), f.reason.to_string()))
            }
            Some(Ok(_)) => continue,
            other => panic!("socket ended without a close frame: {other:?}"),
        }
    };
    assert_eq!(code, Some((4401, "session ended".to_string())));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(metrics(&stack)
        .await
        .contains("appsync_relay_sessions_ended_total{reason=\"refresh_rejected\"} 1"));
    // Its upstream was closed too.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while stack.emulator.connection_count() != 0 {
        assert!(tokio::time::Instant::now() < deadline, "upstream left open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn without_mid_connection_refresh_the_client_is_asked_to_reauthenticate() {
    let stack = Stack::start_with_lifetime(
        &["--refresh-before", "2", "--mid-connection-refresh", "off"],
        4,
    )
    .await;
    let s = stack.cognito.sign_in(USERNAME);
    let (mut ws, _) = open(&stack, &session_cookies(&s)).await;
    init(&mut ws).await;
    assert_eq!(recv_close(&mut ws).await, Some(4000));
    assert_eq!(
        stack.cognito.total_calls(),
        0,
        "off means the socket never refreshes"
    );
}

#[tokio::test]
async fn max_session_age_ends_connections() {
    let stack = Stack::start_with(&["--max-session-age", "1"]).await;
    let (mut ws, _) = open(&stack, &stack.good_cookies()).await;
    init(&mut ws).await;
    assert_eq!(recv_close(&mut ws).await, Some(4401));
    assert!(metrics(&stack)
        .await
        .contains("appsync_relay_sessions_ended_total{reason=\"max_session_age\"} 1"));
}

#[tokio::test]
async fn http_publish_refreshes_an_expired_session_and_sets_cookies() {
    let stack = Stack::start_with(&["--public-origin", ORIGIN]).await;
    let s = stack.cognito.sign_in(USERNAME);
    let expired = expired_access(&stack.jwks.issuer(), USERNAME, 30);
    let (status, headers, body) = http(
        stack.relay.public_addr,
        "POST",
        "/event",
        &[
            ("origin", ORIGIN),
            ("cookie", &cookies(&expired, &s.id, &s.refresh)),
            ("content-type", "application/json"),
        ],
        r#"{"channel":"/default/x","events":["1"]}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let written = set_cookies(&headers);
    assert!(
        written["accessToken"].1.contains("Secure"),
        "an https public origin means Secure cookies"
    );
    let seen = stack.emulator.seen_authorizations();
    assert_eq!(seen, vec![written["accessToken"].0.clone()]);
}

#[tokio::test]
async fn client_secret_is_sent_as_cognito_expects_for_both_apis() {
    for api in ["get-tokens", "initiate-auth"] {
        let stack =
            Stack::start_with(&["--refresh-api", api, "--cognito-client-secret", "s3cret"]).await;
        *stack.cognito.client_secret.lock().unwrap() = Some("s3cret".into());
        let s = stack.cognito.sign_in(USERNAME);
        let expired = expired_access(&stack.jwks.issuer(), USERNAME, 30);
        let (_, headers) = open(&stack, &cookies(&expired, &s.id, &s.refresh)).await;
        assert!(set_cookies(&headers).contains_key("accessToken"), "{api}");
        let action = if api == "get-tokens" {
            "GetTokensFromRefreshToken"
        } else {
            "InitiateAuth"
        };
        assert_eq!(stack.cognito.calls(action), 1, "{api}");

        // A wrong secret is a refused refresh: the session is over.
        *stack.cognito.client_secret.lock().unwrap() = Some("other".into());
        let s = stack.cognito.sign_in(USERNAME);
        match try_connect(
            &stack.realtime_url(),
            &Upgrade::browser(&cookies(&expired, &s.id, &s.refresh)),
        )
        .await
        {
            Attempt::Refused(401, body) => assert!(body.contains("session_ended"), "{body}"),
            _ => panic!("{api}: wrong secret accepted"),
        }
    }
}

#[tokio::test]
async fn restarted_emulator_does_not_close_the_browser_and_subscriptions_resume() {
    let stack = Stack::start().await;
    let (mut sub, _) = open(&stack, &stack.good_cookies()).await;
    init(&mut sub).await;
    send_json(&mut sub, amplify_subscribe("sub-1", "/default/restart")).await;
    assert_eq!(recv_json(&mut sub).await["type"], "subscribe_success");

    // Stop the emulator and start a new one on the same port.
    let Stack {
        jwks,
        emulator,
        cognito,
        relay,
    } = stack;
    let addr = emulator.local_addr();
    emulator.shutdown().await;
    let listener = {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "port not free again: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    };
    let mut cfg = appsync_relay::emulator::EmulatorConfig::new(
        appsync_relay::emulator::EmulatorAuth::Cognito(emulator_verifier(&jwks, CLIENT_ID)),
    );
    cfg.http_host = Some(addr.to_string());
    let emulator = appsync_relay::emulator::spawn(listener, cfg).await;
    let stack = Stack {
        jwks,
        emulator,
        cognito,
        relay,
    };

    // The browser was not closed; the subscription works on the new emulator.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while stack.emulator.subscription_count() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "subscription never replayed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, _, body) = http(
        stack.relay.public_addr,
        "POST",
        "/event",
        &[
            ("origin", ORIGIN),
            ("cookie", &stack.good_cookies()),
            ("content-type", "application/json"),
        ],
        r#"{"channel":"/default/restart","events":["{\"after\":\"restart\"}"]}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let data = recv_json(&mut sub).await;
    assert_eq!(data["type"], "data", "{data}");
    assert_eq!(data["id"], "sub-1");
    assert_eq!(
        serde_json::from_str::<Value>(data["event"].as_str().unwrap()).unwrap(),
        json!({"after": "restart"})
    );
}
