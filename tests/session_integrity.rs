//! A session only moves forward: a refresh token once rotated out or
//! revoked never buys anything again, the newest live one is never lost,
//! and the identity of a socket never changes — against a hostile fake
//! Cognito (rotation with no grace period, revocation, throttling, other
//! users' tokens).
//!
//! Each test is named after the rule it tries to break.

mod support;

use futures_util::StreamExt;
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;
use support::fake_cognito::{expired_access, Session};
use support::*;
use tokio_tungstenite::tungstenite::Message;

fn cookies(access: Option<&str>, refresh: &str) -> String {
    use appsync_relay::session::{cookie_name, last_auth_user_cookie};
    let mut c = format!(
        "{}={USERNAME}; {}={refresh}",
        last_auth_user_cookie(CLIENT_ID),
        cookie_name(CLIENT_ID, USERNAME, "refreshToken"),
    );
    if let Some(a) = access {
        c.push_str(&format!(
            "; {}={a}",
            cookie_name(CLIENT_ID, USERNAME, "accessToken")
        ));
    }
    c
}

fn session_cookies(s: &Session) -> String {
    cookies(Some(&s.access), &s.refresh)
}

/// `Set-Cookie` headers as `suffix → value`.
fn set_cookies(headers: &hyper::HeaderMap) -> HashMap<String, String> {
    headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| {
            let (pair, _) = v.to_str().ok()?.split_once(';')?;
            let (name, value) = pair.split_once('=')?;
            Some((name.rsplit('.').next()?.to_string(), value.to_string()))
        })
        .collect()
}

async fn attempt(stack: &Stack, cookie: &str) -> Attempt {
    try_connect(&stack.realtime_url(), &Upgrade::browser(cookie)).await
}

async fn publish(stack: &Stack, cookie: &str, body: &str) -> (u16, hyper::HeaderMap, String) {
    http(
        stack.relay.public_addr,
        "POST",
        "/event",
        &[
            ("origin", ORIGIN),
            ("cookie", cookie),
            ("content-type", "application/json"),
        ],
        body,
    )
    .await
}

async fn wait_for_calls(stack: &Stack, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while stack.cognito.calls("GetTokensFromRefreshToken") < n {
        assert!(tokio::time::Instant::now() < deadline, "no renewal");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// A stack whose sockets renew in place 2 s into 4 s tokens, with rotation
/// and a zero grace period, and a socket open that has rotated RT0 → RT1.
async fn rotated_stack(extra: &[&str]) -> (Stack, Session, Ws) {
    rotated_stack_with(extra, 4).await
}

/// The same with tokens living `lifetime` seconds (renewed at half-life).
async fn rotated_stack_with(extra: &[&str], lifetime: u64) -> (Stack, Session, Ws) {
    let before = (lifetime / 2).to_string();
    let mut args = vec!["--refresh-before", before.as_str()];
    args.extend_from_slice(extra);
    let stack = Stack::start_with_lifetime(&args, lifetime).await;
    stack.cognito.rotate.store(true, Ordering::SeqCst);
    stack
        .cognito
        .invalidate_rotated
        .store(true, Ordering::SeqCst);
    let s = stack.cognito.sign_in(USERNAME);
    let mut ws = match attempt(&stack, &session_cookies(&s)).await {
        Attempt::Open(ws, _) => *ws,
        _ => panic!("first handshake refused"),
    };
    init(&mut ws).await;
    wait_for_calls(&stack, 1).await;
    (stack, s, ws)
}

async fn close_code(ws: &mut Ws, within: Duration) -> Option<u16> {
    loop {
        match tokio::time::timeout(within, ws.next()).await {
            Err(_) => return None,
            Ok(Some(Ok(Message::Close(f)))) => return f.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => continue,
            Ok(_) => return Some(0),
        }
    }
}

// === 1. A rotated-out refresh token is not redeemable ===

#[tokio::test]
async fn a_dead_refresh_token_alone_gets_nothing() {
    let (stack, s, ws) = rotated_stack(&[]).await;
    drop(ws);
    // LastAuthUser + the dead RT0, no token: nothing to prove the session.
    match attempt(&stack, &cookies(None, &s.refresh)).await {
        Attempt::Refused(401, body) => assert!(!body.contains("Token")),
        Attempt::Open(_, h) => panic!(
            "a dead refresh token alone opened a socket, with cookies {:?}",
            set_cookies(&h).keys().collect::<Vec<_>>()
        ),
        other => panic!("unexpected: {:?}", matches!(other, Attempt::Failed(_))),
    }
    let (status, headers, _) = publish(&stack, &cookies(None, &s.refresh), "{}").await;
    assert_eq!(status, 401);
    assert!(set_cookies(&headers).is_empty(), "tokens handed out");
}

#[tokio::test]
async fn a_dead_refresh_token_with_another_users_token_gets_nothing() {
    let (stack, s, ws) = rotated_stack(&[]).await;
    drop(ws);
    // Mallory's own genuine token, Alice's dead refresh token.
    let mut claims = access_claims(&stack.jwks.issuer());
    claims["sub"] = json!("mallory-sub");
    claims["username"] = json!("mallory");
    let mallory = sign(&claims, signing_key());
    let (status, headers, _) = publish(
        &stack,
        &cookies(Some(&mallory), &s.refresh),
        r#"{"channel":"/default/x","events":["1"]}"#,
    )
    .await;
    assert!(
        !set_cookies(&headers).contains_key("refreshToken"),
        "Alice's renewal was handed to Mallory (status {status})"
    );
}

#[tokio::test]
async fn a_renewal_is_delivered_once() {
    // Long enough tokens that the renewal is still fresh at the second try.
    let (stack, s, ws) = rotated_stack_with(&[], 20).await;
    drop(ws);
    let body = r#"{"channel":"/default/x","events":["1"]}"#;
    let (status, headers, _) = publish(&stack, &session_cookies(&s), body).await;
    assert_eq!(status, 200);
    let rt1 = set_cookies(&headers)["refreshToken"].clone();
    assert_ne!(rt1, s.refresh);
    // The same old cookies again, once the single-flight reuse of the
    // rotation (5 s) is over: nothing is waiting any more. (The session,
    // proven by its token, may renew again with the newest refresh token —
    // a new answer from Cognito, never the same renewal twice.)
    tokio::time::sleep(Duration::from_millis(5500)).await;
    let (_, headers, _) = publish(&stack, &session_cookies(&s), body).await;
    assert_ne!(
        set_cookies(&headers).get("refreshToken"),
        Some(&rt1),
        "the renewal was handed out twice"
    );
}

#[tokio::test]
async fn a_revoked_session_is_not_revived_by_its_pending_renewal() {
    let (stack, s, mut ws) = rotated_stack(&[]).await;
    // Cognito revokes everything; the socket's next renewal is refused.
    stack.cognito.revoke_user(USERNAME);
    assert_eq!(
        close_code(&mut ws, Duration::from_secs(8)).await,
        Some(4401)
    );
    let calls = stack.cognito.total_calls();
    let (status, headers, _) = publish(
        &stack,
        &session_cookies(&s),
        r#"{"channel":"/default/x","events":["1"]}"#,
    )
    .await;
    let written = set_cookies(&headers);
    assert!(
        !written.contains_key("refreshToken") && !written.contains_key("accessToken"),
        "a revoked session got fresh tokens (status {status})"
    );
    assert!(stack.cognito.total_calls() <= calls + 1);
}

// === 2. Every response after a refresh carries the new cookies ===

#[tokio::test]
async fn a_refresh_followed_by_an_upstream_failure_still_writes_the_cookies() {
    let stack = Stack::start().await;
    stack.cognito.rotate.store(true, Ordering::SeqCst);
    stack
        .cognito
        .invalidate_rotated
        .store(true, Ordering::SeqCst);
    let s = stack.cognito.sign_in(USERNAME);
    let expired = expired_access(&stack.jwks.issuer(), USERNAME, 5);
    // AppSync goes away after the refresh has rotated the token.
    stack.emulator.close_all(1001);
    let Stack {
        jwks,
        emulator,
        cognito,
        relay,
    } = stack;
    emulator.shutdown().await;
    let stack_url = format!("ws://{}/event/realtime", relay.public_addr);
    let refused = try_connect(
        &stack_url,
        &Upgrade::browser(&cookies(Some(&expired), &s.refresh)),
    )
    .await;
    match refused {
        Attempt::Refused(status, _) => assert!(status >= 500, "{status}"),
        _ => panic!("expected a refusal"),
    }
    assert_eq!(cognito.calls("GetTokensFromRefreshToken"), 1);
    // The 502 itself is checked over raw HTTP to see its headers.
    let (status, headers, _) = http(
        relay.public_addr,
        "POST",
        "/event",
        &[
            ("origin", ORIGIN),
            ("cookie", &cookies(Some(&expired), &s.refresh)),
            ("content-type", "application/json"),
        ],
        r#"{"channel":"/default/x","events":["1"]}"#,
    )
    .await;
    assert!(status >= 500, "{status}");
    assert!(
        set_cookies(&headers).contains_key("refreshToken"),
        "a {status} after a rotation dropped the new refresh token"
    );
    drop((jwks, relay));
}

#[tokio::test]
async fn a_refresh_followed_by_a_refused_body_still_writes_the_cookies() {
    let stack = Stack::start_with(&["--max-message-bytes", "1024"]).await;
    stack.cognito.rotate.store(true, Ordering::SeqCst);
    let s = stack.cognito.sign_in(USERNAME);
    let expired = expired_access(&stack.jwks.issuer(), USERNAME, 5);
    let big = format!(
        r#"{{"channel":"/default/x","events":["\"{}\""]}}"#,
        "x".repeat(4000)
    );
    let (status, headers, _) = publish(&stack, &cookies(Some(&expired), &s.refresh), &big).await;
    assert_eq!(status, 413);
    assert!(
        set_cookies(&headers).contains_key("refreshToken"),
        "a 413 after a rotation dropped the new refresh token"
    );
}

// === 3. The newest live refresh token is used ===

#[tokio::test]
async fn a_due_pending_renewal_is_renewed_with_the_newest_refresh_token() {
    let (stack, s, ws) = rotated_stack(&[]).await;
    drop(ws);
    // The laptop sleeps past the pending access token's lifetime: the
    // browser's own token (of the same sign-in) has expired too.
    tokio::time::sleep(Duration::from_secs(4)).await;
    match attempt(&stack, &cookies(Some(&s.access), &s.refresh)).await {
        Attempt::Open(_, headers) => {
            let written = set_cookies(&headers);
            assert!(written.contains_key("refreshToken"));
            assert_ne!(written["refreshToken"], s.refresh);
        }
        Attempt::Refused(status, body) => {
            panic!("logged out although the relay held a live refresh token: {status} {body}")
        }
        Attempt::Failed(e) => panic!("{e}"),
    }
}

// === 4. Transient Cognito errors do not end sessions ===

#[tokio::test]
async fn throttling_on_an_open_socket_is_retried_not_fatal() {
    let stack = Stack::start_with_lifetime(&["--refresh-before", "3"], 6).await;
    let s = stack.cognito.sign_in(USERNAME);
    for kind in [
        "TooManyRequestsException",
        "LimitExceededException",
        "UnexpectedLambdaException",
    ] {
        stack
            .cognito
            .fail_next
            .lock()
            .unwrap()
            .push_back((400, kind.to_string()));
    }
    let mut ws = match attempt(&stack, &session_cookies(&s)).await {
        Attempt::Open(ws, _) => *ws,
        _ => panic!("refused"),
    };
    init(&mut ws).await;
    // Renewal at 3 s fails three times, then succeeds: the socket lives
    // past the first token's expiry (6 s).
    assert_eq!(
        close_code(&mut ws, Duration::from_secs(9)).await,
        None,
        "a throttled refresh ended the session"
    );
    assert!(stack.cognito.calls("GetTokensFromRefreshToken") >= 4);
}

// === 5. Refresh is not an amplifier ===

#[tokio::test]
async fn a_token_older_than_any_refresh_token_costs_no_cognito_call() {
    let stack = Stack::start_with(&["--refresh-token-validity", "86400"]).await;
    let s = stack.cognito.sign_in(USERNAME);
    let ancient = expired_access(&stack.jwks.issuer(), USERNAME, 400 * 86_400);
    match attempt(&stack, &cookies(Some(&ancient), &s.refresh)).await {
        Attempt::Refused(401, _) => {}
        _ => panic!("expected 401"),
    }
    assert_eq!(stack.cognito.total_calls(), 0, "Cognito was asked");
}

#[tokio::test]
async fn refresh_attempts_are_budgeted_per_address() {
    let stack =
        Stack::start_with(&["--refresh-rate-per-ip", "5", "--refresh-rate-per-user", "0"]).await;
    let expired = expired_access(&stack.jwks.issuer(), USERNAME, 5);
    for i in 0..30 {
        let _ = attempt(&stack, &cookies(Some(&expired), &format!("random-{i}"))).await;
    }
    let calls = stack.cognito.total_calls();
    assert!(
        calls <= 5,
        "{calls} Cognito calls for 30 random refresh tokens"
    );
    // A rejected refresh token is remembered: replaying it is free.
    let _ = attempt(&stack, &cookies(Some(&expired), "random-0")).await;
    assert_eq!(stack.cognito.total_calls(), calls);
}

// === 6. Identity never changes ===

#[tokio::test]
async fn a_refresh_answered_with_another_users_tokens_is_refused() {
    let stack = Stack::start().await;
    let s = stack.cognito.sign_in(USERNAME);
    *stack.cognito.answer_as_sub.lock().unwrap() = Some("someone-else".into());
    let expired = expired_access(&stack.jwks.issuer(), USERNAME, 5);
    match attempt(&stack, &cookies(Some(&expired), &s.refresh)).await {
        Attempt::Refused(401, _) => {}
        Attempt::Open(..) => panic!("a socket opened with another user's tokens"),
        _ => panic!("expected 401"),
    }
}

#[tokio::test]
async fn an_open_socket_never_changes_identity() {
    let stack = Stack::start_with_lifetime(&["--refresh-before", "2"], 4).await;
    let s = stack.cognito.sign_in(USERNAME);
    let mut ws = match attempt(&stack, &session_cookies(&s)).await {
        Attempt::Open(ws, _) => *ws,
        _ => panic!("refused"),
    };
    init(&mut ws).await;
    *stack.cognito.answer_as_sub.lock().unwrap() = Some("someone-else".into());
    assert_eq!(
        close_code(&mut ws, Duration::from_secs(8)).await,
        Some(4401)
    );
    let m = http(stack.relay.admin_addr, "GET", "/metrics", &[], "")
        .await
        .2;
    assert!(
        m.contains("sessions_ended_total{reason=\"identity_changed\"} 1"),
        "{m}"
    );
}

// === 7. A withdrawn key stops verifying ===

#[tokio::test]
async fn a_key_withdrawn_from_the_jwks_stops_verifying_cached_tokens() {
    let stack = Stack::start_with(&["--jwks-refresh-interval", "1"]).await;
    let cookie = stack.good_cookies();
    assert!(matches!(attempt(&stack, &cookie).await, Attempt::Open(..)));
    // The pool rotates its keys and withdraws the old one.
    *stack.jwks.jwks.lock().unwrap() = json!({"keys": [forger_key().jwk()]});
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The first verification after the interval starts the refetch.
    let _ = attempt(&stack, &cookie).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    match attempt(&stack, &cookie).await {
        Attempt::Refused(401, _) => {}
        Attempt::Open(..) => panic!("a token signed with a withdrawn key is still accepted"),
        _ => panic!("expected 401"),
    }
}
