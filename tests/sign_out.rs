//! A sign-out the app performs reaches the browser's open sockets: when an
//! app response (seen by the relay as the app proxy) expires the session's
//! refresh-token cookie, the sockets that browser opened close with 4401
//! within a second, and its old cookies open nothing again — while nobody
//! else can use a sign-out to close someone's sockets.
//!
//! Before the fix: the sockets stayed open until their next renewal (up to
//! the access token's lifetime, an hour with Cognito's defaults), and the
//! old cookies, replayed, opened a new socket at once (the access token was
//! taken on its word).

mod support;

use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::app::{proxy_config, roundtrip, TestApp};
use support::fake_cognito::FakeCognito;
use support::jar::{header_for, jar, Jar};
use support::replicas::closed_within;
use support::*;
use tokio::net::TcpListener;

struct Stack {
    relay: appsync_relay::server::RelayHandle,
    cognito: FakeCognito,
    _app: TestApp,
    _jwks: JwksServer,
    _emulator: appsync_relay::emulator::EmulatorHandle,
}

async fn start() -> Stack {
    let jwks = JwksServer::start(json!({"keys": [signing_key().jwk()]})).await;
    let cognito = FakeCognito::start(jwks.issuer(), 3600).await;
    let emulator = start_emulator(&jwks, CLIENT_ID).await;
    let app = TestApp::start().await;
    let endpoint = cognito.endpoint();
    let config = relay_config(
        &emulator.http_endpoint(),
        &jwks,
        &["--cognito-endpoint", endpoint.as_str()],
    );
    let public = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = appsync_relay::proxy::AppProxy::new(proxy_config(app.url()));
    let relay = appsync_relay::server::spawn_with_app(config, public, admin, Some(Arc::new(proxy)))
        .unwrap();
    assert!(relay.wait_ready(Duration::from_secs(10)).await);
    Stack {
        relay,
        cognito,
        _app: app,
        _jwks: jwks,
        _emulator: emulator,
    }
}

impl Stack {
    fn ws_url(&self) -> String {
        format!("ws://{}/event/realtime", self.relay.public_addr)
    }

    /// A socket opened with `jar`'s cookies, subscribed (so it is live).
    async fn open(&self, jar: &Jar) -> Ws {
        let mut ws = connect(&self.ws_url(), &cookie(jar)).await;
        init(&mut ws).await;
        send_json(&mut ws, amplify_subscribe("s1", "/default/board")).await;
        assert_eq!(recv_json(&mut ws).await["type"], "subscribe_success");
        ws
    }

    /// The app's sign-out route, requested with `jar`'s cookies.
    async fn sign_out(&self, jar: &Jar) {
        let (status, _, _) = roundtrip(
            self.relay.public_addr,
            "GET",
            "/signout",
            &[("cookie", &cookie(jar))],
            "",
        )
        .await;
        assert_eq!(status, 200);
    }
}

fn cookie(jar: &Jar) -> String {
    header_for(jar)["cookie"].to_str().unwrap().to_string()
}

#[tokio::test]
async fn sign_out_closes_the_browsers_sockets_with_4401_within_a_second() {
    let s = start().await;
    let alice = jar(&s.cognito.sign_in(USERNAME));
    let mut tab1 = s.open(&alice).await;
    let mut tab2 = s.open(&alice).await;
    let started = Instant::now();
    s.sign_out(&alice).await;
    assert_eq!(
        closed_within(&mut tab1, Duration::from_secs(1)).await,
        Some(4401)
    );
    assert_eq!(
        closed_within(&mut tab2, Duration::from_secs(1)).await,
        Some(4401)
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// The cookies of a signed-out browser, replayed (copied before the
/// sign-out, or kept by a tab that never saw the answer), open nothing and
/// publish nothing, though the access token in them has not expired.
#[tokio::test]
async fn old_cookies_are_refused_after_sign_out() {
    let s = start().await;
    let alice = jar(&s.cognito.sign_in(USERNAME));
    let _ws = s.open(&alice).await;
    s.sign_out(&alice).await;
    match try_connect(&s.ws_url(), &Upgrade::browser(&cookie(&alice))).await {
        Attempt::Refused(status, _) => assert_eq!(status, 401),
        other => panic!("a signed-out browser's cookies opened a socket: {other:?}"),
    }
    // Without the refresh token, the access token alone is no better.
    let mut access_only = alice.clone();
    access_only.remove("refreshToken");
    match try_connect(&s.ws_url(), &Upgrade::browser(&cookie(&access_only))).await {
        Attempt::Refused(status, _) => assert_eq!(status, 401),
        other => panic!("a signed-out access token opened a socket: {other:?}"),
    }
    // A new sign-in of the same user works.
    let again = jar(&s.cognito.sign_in(USERNAME));
    let _ws = s.open(&again).await;
}

/// Someone holding a victim's access token (leaked) next to a junk refresh
/// token gets the app to answer with a sign-out: the victim's sockets stay
/// open, and the victim's cookies keep working.
#[tokio::test]
async fn a_strangers_sign_out_closes_nobody_elses_socket() {
    let s = start().await;
    let victim = jar(&s.cognito.sign_in(USERNAME));
    let mut ws = s.open(&victim).await;
    let mut forged = victim.clone();
    forged.insert("refreshToken", "rt-junk".into());
    s.sign_out(&forged).await;
    assert_eq!(
        closed_within(&mut ws, Duration::from_millis(1500)).await,
        None
    );
    send_json(
        &mut ws,
        amplify_publish("p1", "/default/board", &[json!({"n": 1})]),
    )
    .await;
    let mut types = Vec::new();
    for _ in 0..2 {
        types.push(
            recv_json(&mut ws).await["type"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert!(types.contains(&"publish_success".to_string()), "{types:?}");
    // The victim reconnects with the same cookies (the relay renews the
    // stranger-retired access token with the victim's own refresh token).
    let _again = s.open(&victim).await;
}

/// Another sign-in of the same user (another device) is not signed out by
/// this browser's sign-out.
#[tokio::test]
async fn another_sign_in_of_the_user_stays_open() {
    let s = start().await;
    let laptop = jar(&s.cognito.sign_in(USERNAME));
    let phone = jar(&s.cognito.sign_in(USERNAME));
    let mut on_laptop = s.open(&laptop).await;
    let mut on_phone = s.open(&phone).await;
    s.sign_out(&laptop).await;
    assert_eq!(
        closed_within(&mut on_laptop, Duration::from_secs(1)).await,
        Some(4401)
    );
    assert_eq!(
        closed_within(&mut on_phone, Duration::from_millis(1500)).await,
        None
    );
}
