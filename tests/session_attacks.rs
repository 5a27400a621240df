//! Attacks on the session lifecycle found by an adversarial review, each
//! kept as a test that failed before its fix (what it showed then is in the
//! test's doc). They drive `identify`/`complete` (a handshake's or
//! publish's authentication) and `TokenState::renew` (an open socket's
//! renewal) directly against the hostile fake Cognito, with rotation and a
//! zero grace period unless a test says otherwise.

mod support;

use appsync_relay::relay::token::TokenState;
use appsync_relay::rewrite::UpstreamAuth;
use appsync_relay::state::RelayState;
use hyper::header::HeaderValue;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use support::fake_cognito::FakeCognito;
use support::jar::{apply, header_for, jar, Jar};
use support::*;

struct Harness {
    state: Arc<RelayState>,
    cognito: FakeCognito,
    _jwks: JwksServer,
}

async fn start(extra: &[&str]) -> Harness {
    let jwks = JwksServer::start(json!({"keys": [signing_key().jwk()]})).await;
    let cognito = FakeCognito::start(jwks.issuer(), 3600).await;
    cognito.rotate.store(true, Ordering::SeqCst);
    cognito.invalidate_rotated.store(true, Ordering::SeqCst);
    let endpoint = cognito.endpoint();
    let mut args = vec![
        "--cognito-endpoint",
        endpoint.as_str(),
        "--refresh-rate-per-ip",
        "0",
        "--refresh-rate-per-user",
        "0",
    ];
    args.extend_from_slice(extra);
    let config = relay_config("http://127.0.0.1:9/event", &jwks, &args);
    let state = RelayState::new(config, None);
    state.sessions().verifier().load_jwks().await.unwrap();
    Harness {
        state,
        cognito,
        _jwks: jwks,
    }
}

/// A handshake's authentication: its `Set-Cookie`s and the socket's token
/// state, or the refusal's reason label.
async fn handshake(h: &Harness, jar: &Jar) -> Result<(Vec<HeaderValue>, TokenState), String> {
    let id = h
        .state
        .sessions()
        .identify(&header_for(jar))
        .await
        .map_err(|e| e.reason().to_string())?;
    let a = h
        .state
        .sessions()
        .complete(id, true, "10.0.0.1".parse().unwrap())
        .await
        .map_err(|e| e.reason().to_string())?;
    let ts = TokenState::new(
        UpstreamAuth::new(a.token.clone(), "h"),
        a.claims.clone(),
        a.session,
        Duration::from_secs(60),
    );
    Ok((a.set_cookies, ts))
}

/// An attacker with a victim's expired access token (leaked in a HAR file
/// or a proxy log) and any junk refresh token cannot end the victim's
/// sign-in. Before the fix: Cognito's refusal of the junk token ended the
/// victim's lineage, and the victim's live cookies got 401 `session_ended`.
#[tokio::test]
async fn a_junk_refresh_token_beside_a_victims_token_ends_nothing() {
    let h = start(&[]).await;
    h.cognito.issued_ago.store(3700, Ordering::SeqCst);
    let victim = h.cognito.sign_in(USERNAME);
    h.cognito.issued_ago.store(0, Ordering::SeqCst);
    let mut forged = jar(&victim);
    forged.insert("refreshToken", "junk".into());
    forged.remove("idToken");
    assert!(
        handshake(&h, &forged).await.is_err(),
        "the forgery is refused"
    );
    let again = handshake(&h, &jar(&victim)).await;
    assert!(again.is_ok(), "victim's sign-in ended: {:?}", again.err());
}

/// The same with the attacker's own valid refresh token: Cognito answers
/// with the attacker's identity; the request is refused and the victim's
/// sign-in goes on. Before the fix: `IdentityChanged` ended the victim's.
#[tokio::test]
async fn another_users_refresh_token_beside_a_victims_token_ends_nothing() {
    let h = start(&[]).await;
    h.cognito.issued_ago.store(3700, Ordering::SeqCst);
    let victim = h.cognito.sign_in(USERNAME);
    h.cognito.issued_ago.store(0, Ordering::SeqCst);
    let mallory = h.cognito.sign_in("mallory");
    *h.cognito.answer_as_sub.lock().unwrap() = Some("mallory-sub".into());
    let mut forged = jar(&victim);
    forged.insert("refreshToken", mallory.refresh.clone());
    assert_eq!(
        handshake(&h, &forged).await.err().as_deref(),
        Some("identity_changed")
    );
    *h.cognito.answer_as_sub.lock().unwrap() = None;
    let again = handshake(&h, &jar(&victim)).await;
    assert!(again.is_ok(), "victim's sign-in ended: {:?}", again.err());
}

/// A socket whose refresh token was rotated by someone the relay did not
/// see (the app's server-side Amplify) is refused at its renewal; that must
/// not lock out the browser's fresh, live tokens of the same sign-in.
/// Before the fix: 401 `session_ended` for the fresh tokens.
#[tokio::test]
async fn a_stale_sockets_refusal_does_not_lock_out_the_live_session() {
    let h = start(&[]).await;
    let s = h.cognito.sign_in(USERNAME);
    let mut browser = jar(&s);
    let (_, mut socket) = handshake(&h, &browser).await.unwrap();
    // The relay itself renews once (so it knows rt1 as the sign-in's newest).
    assert!(socket.renew(h.state.sessions()).await.unwrap());
    // The app rotates behind the relay's back: rt1 -> rt2.
    let rt1 = h
        .state
        .sessions()
        .waiting_refresh_token(&s.refresh)
        .expect("a renewal waits for the browser");
    let (access, id, rt2) = h.cognito.refresh_outside(&rt1).await.unwrap();
    browser.insert("accessToken", access);
    browser.insert("idToken", id);
    browser.insert("refreshToken", rt2.clone());
    // The socket renews with rt1, now dead: it ends, fine.
    assert!(socket.renew(h.state.sessions()).await.is_err());
    // The browser's live tokens still work (Cognito is asked and agrees).
    let again = handshake(&h, &browser).await;
    assert!(again.is_ok(), "live session locked out: {:?}", again.err());
    assert!(h.cognito.any_live(USERNAME));
}

/// Single flight holds for a Cognito call slower than the 5 s reuse window.
/// Before the fix: the second caller, 5.3 s in, started its own call with
/// the same refresh token (2 calls), was refused (rotated), and ended the
/// session the first caller had just renewed.
#[tokio::test]
async fn a_slow_cognito_call_stays_single_flight() {
    let h = Arc::new(start(&["--upstream-timeout", "10"]).await);
    h.cognito.issued_ago.store(3550, Ordering::SeqCst);
    let s = h.cognito.sign_in(USERNAME);
    h.cognito.delay_ms.store(6000, Ordering::SeqCst);
    let j = jar(&s);
    let (h1, j1) = (h.clone(), j.clone());
    let first = tokio::spawn(async move { handshake(&h1, &j1).await.map(|(c, _)| c) });
    tokio::time::sleep(Duration::from_millis(5300)).await;
    let (h2, j2) = (h.clone(), j.clone());
    let second = tokio::spawn(async move { handshake(&h2, &j2).await.map(|(c, _)| c) });
    let first = first.await.unwrap().expect("first renewed");
    let second = second
        .await
        .unwrap()
        .expect("second joined the same flight");
    assert_eq!(h.cognito.calls("GetTokensFromRefreshToken"), 1);
    assert_eq!(first, second, "both got the same answer");
    h.cognito.delay_ms.store(0, Ordering::SeqCst);
    let mut after = j.clone();
    apply(&mut after, &first);
    assert!(handshake(&h, &after).await.is_ok());
}

/// A copy of the cookie jar taken before a rotation (a backup, a stolen
/// jar) does not buy the newest refresh token once the browser has shown
/// it received it. Before the fix: the copy followed the relay's rotation
/// chain for 24 h and obtained a live refresh token.
#[tokio::test]
async fn a_copied_jar_does_not_follow_a_rotation_the_browser_received() {
    let h = start(&[]).await;
    h.cognito.issued_ago.store(3550, Ordering::SeqCst);
    let s = h.cognito.sign_in(USERNAME);
    let copied = jar(&s);
    let mut browser = jar(&s);
    let (c, _) = handshake(&h, &browser).await.unwrap();
    apply(&mut browser, &c);
    assert!(!h.cognito.is_live(&s.refresh), "rt0 is dead at Cognito");
    // The browser's next request shows the new token: received.
    h.cognito.issued_ago.store(0, Ordering::SeqCst);
    let (c, _) = handshake(&h, &browser).await.unwrap();
    apply(&mut browser, &c);
    // Past the reuse window and the hand-over grace.
    h.state.sessions().forget_recent_answers();
    tokio::time::sleep(appsync_relay::refresh::HANDOVER_GRACE).await;
    let got = handshake(&h, &copied).await;
    let mut attacker = copied.clone();
    apply(&mut attacker, &got.map(|(c, _)| c).unwrap_or_default());
    assert!(
        !h.cognito.is_live(&attacker["refreshToken"]),
        "a rotated-out refresh token bought a live one"
    );
    // The browser itself is unaffected.
    assert!(handshake(&h, &browser).await.is_ok());
}

/// One device's refusal leaves the user's other devices alone. Before the
/// fix: it wiped the rotation chain of every sign-in of the user, so a
/// second socket of device B renewed with its dead token and B was ended.
#[tokio::test]
async fn another_devices_refusal_leaves_a_live_sign_in_alone() {
    let h = start(&[]).await;
    h.cognito.issued_ago.store(3700, Ordering::SeqCst);
    let a = h.cognito.sign_in(USERNAME);
    h.cognito.issued_ago.store(0, Ordering::SeqCst);
    let b = h.cognito.sign_in(USERNAME);
    let jar_b = jar(&b);
    let (_, mut s1) = handshake(&h, &jar_b).await.unwrap();
    let (_, mut s2) = handshake(&h, &jar_b).await.unwrap();
    assert!(s1.renew(h.state.sessions()).await.unwrap(), "rtB0 -> rtB1");
    h.cognito.revoke(&a.refresh);
    assert!(handshake(&h, &jar(&a)).await.is_err(), "A is over");
    assert!(
        s2.renew(h.state.sessions()).await.is_ok(),
        "B's second socket renews"
    );
    let again = handshake(&h, &jar_b).await;
    assert!(
        again.is_ok(),
        "B's live sign-in was lost: {:?}",
        again.err()
    );
}

/// An open socket computes `SECRET_HASH` from Cognito's username (the
/// `username` claim), not the cookie's `LastAuthUser`, as the handshake
/// does. Before the fix: Cognito refused the hash and the socket's live
/// session ended at its first renewal.
#[tokio::test]
async fn a_socket_renews_with_cognitos_username_for_the_secret_hash() {
    let h = start(&[
        "--refresh-api",
        "initiate-auth",
        "--cognito-client-secret",
        "s3cret",
    ])
    .await;
    *h.cognito.client_secret.lock().unwrap() = Some("s3cret".into());
    let s = h.cognito.sign_in("cognito-internal-name");
    let (_, mut socket) = handshake(&h, &jar(&s)).await.unwrap();
    let r = socket.renew(h.state.sessions()).await;
    assert!(r.is_ok(), "socket ended: {:?}", r.err());
}

/// A revoked sign-in stays ended for its other sockets and its browser,
/// while a new sign-in of the same user is unaffected: the rule the fixes
/// above must not weaken.
#[tokio::test]
async fn a_revoked_sign_in_stays_ended_and_a_new_one_works() {
    let h = start(&[]).await;
    let s = h.cognito.sign_in(USERNAME);
    let browser = jar(&s);
    let (_, mut s1) = handshake(&h, &browser).await.unwrap();
    let (_, mut s2) = handshake(&h, &browser).await.unwrap();
    assert!(
        s1.renew(h.state.sessions()).await.unwrap(),
        "rt0 -> rt1 (the newest)"
    );
    h.cognito.revoke_user(USERNAME);
    assert!(s1.renew(h.state.sessions()).await.is_err(), "rt1 refused");
    let calls = h.cognito.total_calls();
    assert!(
        s2.renew(h.state.sessions()).await.is_err(),
        "the sibling ends too"
    );
    assert_eq!(
        h.cognito.total_calls(),
        calls,
        "without asking Cognito again"
    );
    // The browser's access token is still a valid JWT: not taken on its word.
    assert_eq!(
        handshake(&h, &browser).await.err().as_deref(),
        Some("session_ended")
    );
    let fresh = h.cognito.sign_in(USERNAME);
    assert!(handshake(&h, &jar(&fresh)).await.is_ok());
}

/// A browser that hangs up while the relay renews its session (tab closed,
/// navigation) does not lose the rotation, and a request joining the same
/// flight does not make a second Cognito call. Before the fix: the call ran
/// inside the first request, was cancelled with it after Cognito had
/// rotated, and the joiner called again with the dead token (2 calls, 401).
#[tokio::test]
async fn a_browser_hanging_up_mid_renewal_loses_nothing() {
    let h = Arc::new(start(&[]).await);
    h.cognito.issued_ago.store(3700, Ordering::SeqCst);
    let s = h.cognito.sign_in(USERNAME);
    h.cognito.issued_ago.store(0, Ordering::SeqCst);
    h.cognito.delay_ms.store(800, Ordering::SeqCst);
    let j = jar(&s);
    let (h1, j1) = (h.clone(), j.clone());
    let first = tokio::spawn(async move { handshake(&h1, &j1).await.map(|(c, _)| c) });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (h2, j2) = (h.clone(), j.clone());
    let second = tokio::spawn(async move { handshake(&h2, &j2).await.map(|(c, _)| c) });
    tokio::time::sleep(Duration::from_millis(200)).await;
    first.abort();
    let second = second.await.unwrap();
    assert_eq!(h.cognito.calls("GetTokensFromRefreshToken"), 1);
    assert!(
        second.is_ok(),
        "the joiner lost the session: {:?}",
        second.err()
    );
    // Nobody waiting at all: the browser's retry still gets the rotation.
    h.state.sessions().forget_recent_answers();
    h.cognito.issued_ago.store(3700, Ordering::SeqCst);
    let t = h.cognito.sign_in(USERNAME);
    h.cognito.issued_ago.store(0, Ordering::SeqCst);
    let j = jar(&t);
    let (h1, j1) = (h.clone(), j.clone());
    let alone = tokio::spawn(async move { handshake(&h1, &j1).await.map(|(c, _)| c) });
    tokio::time::sleep(Duration::from_millis(200)).await;
    alone.abort();
    tokio::time::sleep(Duration::from_millis(900)).await;
    h.cognito.delay_ms.store(0, Ordering::SeqCst);
    let again = handshake(&h, &j).await;
    assert!(
        again.is_ok(),
        "the retry lost the session: {:?}",
        again.err()
    );
}

/// A response carrying a rotation that never reached the browser (an
/// aborted fetch, a dropped 101) does not cost it the session: its own
/// cookie still follows the rotation until it shows the new token. Before
/// the fix: the rotation counted as handed over when the response was
/// built, and 5 s later the browser's own jar was refused.
#[tokio::test]
async fn a_response_the_browser_never_got_costs_nothing() {
    let h = start(&[]).await;
    h.cognito.issued_ago.store(3700, Ordering::SeqCst);
    let s = h.cognito.sign_in(USERNAME);
    h.cognito.issued_ago.store(0, Ordering::SeqCst);
    let browser = jar(&s);
    let (_lost, _) = handshake(&h, &browser).await.unwrap();
    h.state.sessions().forget_recent_answers();
    tokio::time::sleep(appsync_relay::refresh::HANDOVER_GRACE).await;
    let again = handshake(&h, &browser).await;
    assert!(
        again.is_ok(),
        "the browser lost its session: {:?}",
        again.err()
    );
}

/// An ended sign-in's mark is cleared only by a renewal of that sign-in,
/// not by a live refresh token of another sign-in of the same user shown
/// next to the ended one's access token. Before the fix: the mixed request
/// cleared it and the revoked sign-in's tokens were taken on their word.
#[tokio::test]
async fn another_sign_in_cannot_clear_an_ended_mark() {
    let h = start(&[]).await;
    let a = h.cognito.sign_in(USERNAME);
    let jar_a = jar(&a);
    let (_, mut sa) = handshake(&h, &jar_a).await.unwrap();
    assert!(
        sa.renew(h.state.sessions()).await.unwrap(),
        "rtA0 -> rtA1 (the newest)"
    );
    h.cognito.revoke_user(USERNAME);
    assert!(
        sa.renew(h.state.sessions()).await.is_err(),
        "A's newest refused: A ended"
    );
    assert_eq!(
        handshake(&h, &jar_a).await.err().as_deref(),
        Some("session_ended")
    );
    let b = h.cognito.sign_in(USERNAME);
    let mut mixed = jar_a.clone();
    mixed.insert("refreshToken", b.refresh.clone());
    let _ = handshake(&h, &mixed).await;
    assert_eq!(
        handshake(&h, &jar_a).await.err().as_deref(),
        Some("session_ended"),
        "A's ended sign-in was revived by B's refresh token"
    );
}

/// Junk refresh tokens next to a victim's leaked access token do not spend
/// the victim's per-user refresh budget. Before the fix: ten of them made
/// the victim's own renewal a 429.
#[tokio::test]
async fn junk_refreshes_do_not_spend_the_victims_budget() {
    let h = start(&["--refresh-rate-per-user", "10"]).await;
    h.cognito.issued_ago.store(3700, Ordering::SeqCst);
    let victim = h.cognito.sign_in(USERNAME);
    h.cognito.issued_ago.store(0, Ordering::SeqCst);
    for i in 0..10 {
        let mut forged = jar(&victim);
        forged.insert("refreshToken", format!("junk-{i}"));
        let _ = handshake(&h, &forged).await;
    }
    let again = handshake(&h, &jar(&victim)).await;
    assert!(again.is_ok(), "victim locked out: {:?}", again.err());
}
