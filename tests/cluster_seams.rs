//! The seams between replicas, and between a handshake's steps, that an
//! attacker's review of the multi-replica path found (issue "one session
//! authority"). Each test drives release-shaped relays over real sockets
//! and a real `redis-server`, and each failed before its fix (what it
//! showed then is in its doc).

mod support;

use appsync_relay::server::RelayHandle;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::app::{proxy_config, roundtrip, TestApp};
use support::fake_cognito::{FakeCognito, Session};
use support::jar::{apply, header_for, jar, Jar};
use support::redis_server::{Cuttable, Redis};
use support::replicas::{closed_within, end_sessions, expired_copy, wait_metric};
use support::*;
use tokio::net::TcpListener;

/// One deployment's shared parts: the identity provider, AppSync, the app.
struct World {
    jwks: JwksServer,
    cognito: FakeCognito,
    emulator: appsync_relay::emulator::EmulatorHandle,
    app: TestApp,
    /// A `--session-key-file`.
    key_file: std::path::PathBuf,
}

impl World {
    async fn start() -> World {
        let jwks = JwksServer::start(json!({"keys": [signing_key().jwk()]})).await;
        let cognito = FakeCognito::start(jwks.issuer(), 3600).await;
        let emulator = start_emulator(&jwks, CLIENT_ID).await;
        let app = TestApp::start().await;
        let key_file = std::env::temp_dir().join(format!(
            "relay-seams-key-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::write(&key_file, format!("{:064x}\n", rand::random::<u128>())).unwrap();
        World {
            jwks,
            cognito,
            emulator,
            app,
            key_file,
        }
    }

    /// A replica fronting the app, coordinated through `redis_url`.
    async fn replica(&self, redis_url: &str, extra: &[&str]) -> RelayHandle {
        let endpoint = self.cognito.endpoint();
        let mut args = vec!["--cognito-endpoint", endpoint.as_str()];
        args.extend(["--redis-url", redis_url]);
        args.extend_from_slice(extra);
        let config = relay_config(&self.emulator.http_endpoint(), &self.jwks, &args);
        let public = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = appsync_relay::proxy::AppProxy::new(proxy_config(self.app.url()));
        let relay =
            appsync_relay::server::spawn_with_app(config, public, admin, Some(Arc::new(proxy)))
                .unwrap();
        assert!(relay.wait_ready(Duration::from_secs(10)).await);
        wait_up(&relay).await;
        relay
    }

    fn key_file(&self) -> String {
        self.key_file.to_str().unwrap().to_string()
    }
}

async fn wait_up(relay: &RelayHandle) {
    wait_metric(
        relay.admin_addr,
        "appsync_relay_redis_up 1",
        Duration::from_secs(15),
    )
    .await;
}

fn cookie(jar: &Jar) -> String {
    header_for(jar)["cookie"].to_str().unwrap().to_string()
}

fn ws_url(relay: &RelayHandle) -> String {
    format!("ws://{}/event/realtime", relay.public_addr)
}

/// The browser's jar after a sign-in whose access token already expired
/// (a handshake must renew it with Cognito first).
fn expired(s: &Session) -> Jar {
    jar(&Session {
        access: expired_copy(&s.access),
        ..s.clone()
    })
}

/// An upgrade: the open socket (cookies applied to `jar`), or the status.
async fn upgrade(relay: &RelayHandle, jar: &mut Jar) -> Result<Ws, u16> {
    match try_connect(&ws_url(relay), &Upgrade::browser(&cookie(jar))).await {
        Attempt::Open(ws, headers) => {
            let set: Vec<_> = headers.get_all("set-cookie").iter().cloned().collect();
            apply(jar, &set);
            Ok(*ws)
        }
        Attempt::Refused(status, _) => Err(status),
        Attempt::Failed(e) => panic!("{e}"),
    }
}

async fn open(relay: &RelayHandle, jar: &mut Jar) -> Ws {
    let mut ws = upgrade(relay, jar).await.expect("a live session opens");
    init(&mut ws).await;
    ws
}

async fn sign_out(relay: &RelayHandle, jar: &Jar) {
    let (status, _, _) = roundtrip(
        relay.public_addr,
        "GET",
        "/signout",
        &[("cookie", &cookie(jar))],
        "",
    )
    .await;
    assert_eq!(status, 200);
}

async fn end(relay: &RelayHandle, body: Value) -> Value {
    let (status, answer) = end_sessions(relay.admin_addr, &body.to_string()).await;
    assert_eq!(status, 200, "{answer}");
    answer
}

/// A handshake that an end reaches while it is still in progress is
/// refused, or its socket closes with 4401: never a live socket.
async fn refused_or_closed(handshake: tokio::task::JoinHandle<Result<Ws, u16>>) -> String {
    match handshake.await.unwrap() {
        Err(status) => {
            assert_eq!(status, 401, "refused, as an ended session");
            "refused".into()
        }
        Ok(mut ws) => {
            let code = closed_within(&mut ws, Duration::from_secs(2)).await;
            assert_eq!(
                code,
                Some(4401),
                "the socket of an ended session stayed open"
            );
            "closed".into()
        }
    }
}

/// An operator's end arriving while a handshake is at Cognito (after its
/// checks of the ends, before its socket existed) either refuses it or
/// closes the socket it became, and the answer counts it. Before the fix:
/// a 101, a socket that stayed open (and kept renewing), `{"closed": 0}`.
#[tokio::test(flavor = "multi_thread")]
async fn an_operator_end_during_a_handshake_reaches_it() {
    let redis = Redis::start().await;
    let w = World::start().await;
    let a = w.replica(&redis.url(), &[]).await;
    w.cognito.delay_ms.store(800, Ordering::SeqCst);
    let mut browser = expired(&w.cognito.sign_in(USERNAME));
    let url = ws_url(&a);
    let cookies = cookie(&browser);
    let handshake = tokio::spawn(async move {
        match try_connect(&url, &Upgrade::browser(&cookies)).await {
            Attempt::Open(ws, _) => Ok(*ws),
            Attempt::Refused(status, _) => Err(status),
            Attempt::Failed(e) => panic!("{e}"),
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answer = end(&a, json!({ "sub": SUB })).await;
    assert_eq!(answer["closed_here"], 1, "{answer}");
    let how = refused_or_closed(handshake).await;
    eprintln!("an end during the handshake: {how}");
    // And later handshakes of that sign-in are refused.
    w.cognito.delay_ms.store(0, Ordering::SeqCst);
    assert_eq!(upgrade(&a, &mut browser).await.err(), Some(401));
}

/// The app signing the browser out while that browser's handshake is at
/// Cognito: the handshake is refused or its socket closes. Before the
/// fix: the sign-out found no socket to close (it registered only after
/// Cognito answered), and the socket stayed open.
#[tokio::test(flavor = "multi_thread")]
async fn a_sign_out_during_a_handshake_reaches_it() {
    let redis = Redis::start().await;
    let w = World::start().await;
    let a = w.replica(&redis.url(), &[]).await;
    w.cognito.delay_ms.store(800, Ordering::SeqCst);
    let browser = expired(&w.cognito.sign_in(USERNAME));
    let url = ws_url(&a);
    let cookies = cookie(&browser);
    let handshake = tokio::spawn(async move {
        match try_connect(&url, &Upgrade::browser(&cookies)).await {
            Attempt::Open(ws, _) => Ok(*ws),
            Attempt::Refused(status, _) => Err(status),
            Attempt::Failed(e) => panic!("{e}"),
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    sign_out(&a, &browser).await;
    let how = refused_or_closed(handshake).await;
    eprintln!("a sign-out during the handshake: {how}");
}

/// A sign-out said while its replica cannot reach Redis reaches the other
/// replicas once it can: said again with backoff, and written back by the
/// resynchronisation. Before the fix: said once, lost; the other
/// replica's socket stayed open and the signed-out cookies opened sockets
/// there.
#[tokio::test(flavor = "multi_thread")]
async fn a_sign_out_said_during_an_outage_reaches_the_others_after_it() {
    let redis = Redis::start().await;
    let path_a = Cuttable::start(redis.port).await;
    let w = World::start().await;
    let a = w.replica(&path_a.url(), &[]).await;
    let b = w.replica(&redis.url(), &[]).await;
    let mut alice = jar(&w.cognito.sign_in(USERNAME));
    let mut on_b = open(&b, &mut alice).await;
    path_a.cut();
    tokio::time::sleep(Duration::from_millis(300)).await;
    sign_out(&a, &alice).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        closed_within(&mut on_b, Duration::from_millis(200)).await,
        None,
        "A was cut off: B cannot have heard yet"
    );
    path_a.heal();
    let healed = Instant::now();
    assert_eq!(
        closed_within(&mut on_b, Duration::from_secs(8)).await,
        Some(4401),
        "the sign-out never reached the other replica"
    );
    eprintln!("sign-out reached B {:?} after healing", healed.elapsed());
    assert_eq!(upgrade(&b, &mut alice).await.err(), Some(401));
}

/// `--max-connections-per-user` holds after Redis restarts empty between
/// two lease renewals: each replica writes its leases back when its feed
/// reconnects. Before the fix: the leases were gone until the sockets
/// closed, and another replica admitted the user again.
#[tokio::test(flavor = "multi_thread")]
async fn the_per_user_limit_holds_after_redis_restarts_empty() {
    let mut redis = Redis::start().await;
    let w = World::start().await;
    let limit = ["--max-connections-per-user", "2"];
    let a = w.replica(&redis.url(), &limit).await;
    let b = w.replica(&redis.url(), &limit).await;
    let mut alice = jar(&w.cognito.sign_in(USERNAME));
    let _one = open(&a, &mut alice).await;
    let _two = open(&a, &mut alice).await;
    assert_eq!(upgrade(&b, &mut alice).await.err(), Some(429));
    redis.stop();
    redis.start_again().await;
    // Both feeds notice, reconnect and resynchronise (well within the 10 s
    // between two lease renewals).
    tokio::time::sleep(Duration::from_secs(3)).await;
    for r in [&a, &b] {
        wait_up(r).await;
    }
    assert_eq!(
        upgrade(&b, &mut alice).await.err(),
        Some(429),
        "the limit was bypassed after Redis came back empty"
    );
}

/// A replica that waited on another's refresh lock never calls Cognito
/// with that refresh token itself when the holder leaves no result (it
/// died, its lock expired): the holder may have rotated it, and with a
/// zero grace period the call would end the session. Before the fix: the
/// waiter took the expired lock and called Cognito.
#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_waiter_never_calls_cognito_after_a_silent_holder() {
    let redis = Redis::start().await;
    let w = World::start().await;
    let key = w.key_file();
    let b = w
        .replica(&redis.url(), &["--session-key-file", key.as_str()])
        .await;
    let session = w.cognito.sign_in(USERNAME);
    // A holder on another replica took the lock, then died.
    let lock = format!(
        "appsync-relay:refresh:lock:{}",
        appsync_relay::cluster::hex::hex(&appsync_relay::verify::token_hash(&session.refresh))
    );
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(&lock)
        .arg("a-dead-holders-fence")
        .arg("PX")
        .arg(1500)
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut browser = expired(&session);
    let started = Instant::now();
    let outcome = upgrade(&b, &mut browser).await;
    assert_eq!(
        w.cognito.total_calls(),
        0,
        "the waiter called Cognito with a token the holder may have rotated"
    );
    assert_eq!(outcome.err(), Some(503), "unavailable for now");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Sixty sign-outs with junk refresh tokens beside a leaked access token
/// spend that user's budget of announced sign-outs, but the user's own
/// sign-out — its refresh token known to be the sign-in's — is still
/// announced: the other replica refuses the signed-out cookies. Before the
/// fix: the genuine sign-out was not announced, and the other replica
/// asked Cognito with the old refresh token and let the cookies back in.
#[tokio::test(flavor = "multi_thread")]
async fn forged_sign_outs_cannot_mute_the_genuine_one() {
    let redis = Redis::start().await;
    let w = World::start().await;
    let a = w.replica(&redis.url(), &[]).await;
    let b = w.replica(&redis.url(), &[]).await;
    let session = w.cognito.sign_in(USERNAME);
    // A renewal on A shows the relay this refresh token is the sign-in's.
    let mut victim = expired(&session);
    drop(open(&a, &mut victim).await);
    for i in 0..60 {
        let mut forged = victim.clone();
        forged.insert("refreshToken", format!("rt-junk-{i}"));
        sign_out(&a, &forged).await;
    }
    sign_out(&a, &victim).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The browser's old cookies, replayed on B with its access token
    // expired (so B must renew: Cognito would still grant it here).
    let mut replay = victim.clone();
    replay.insert("accessToken", expired_copy(&victim["accessToken"]));
    assert_eq!(
        upgrade(&b, &mut replay).await.err(),
        Some(401),
        "signed-out cookies opened a socket on the other replica"
    );
}

/// An operator's end drops what waits for the user's browsers: a renewal
/// an open socket left (which the app proxy would hand out) and the
/// refresh results the replicas share. Before the fix: both survived, and
/// the next request to the app got the ended user's fresh cookies.
#[tokio::test(flavor = "multi_thread")]
async fn an_operator_end_leaves_nothing_to_hand_out() {
    let redis = Redis::start().await;
    let w = World::start().await;
    let key = w.key_file();
    let a = w
        .replica(&redis.url(), &["--session-key-file", key.as_str()])
        .await;
    // Tokens due 2 s after they are issued: the open socket renews in place.
    w.cognito.issued_ago.store(3600 - 62, Ordering::SeqCst);
    let mut browser = jar(&w.cognito.sign_in(USERNAME));
    let _socket = open(&a, &mut browser).await;
    // Its renewal's tokens are fresh: one renewal only.
    w.cognito.issued_ago.store(0, Ordering::SeqCst);
    wait_metric(
        a.admin_addr,
        "appsync_relay_token_refreshes_total{phase=\"connection\",result=\"ok\"} 1",
        Duration::from_secs(10),
    )
    .await;
    let results = || async {
        redis
            .dump()
            .await
            .into_iter()
            .filter(|(k, _)| k.starts_with("appsync-relay:refresh:result:"))
            .count()
    };
    assert_eq!(results().await, 1, "the renewal's result is shared");
    let answer = end(&a, json!({ "sub": SUB })).await;
    assert_eq!(answer["reach"], "cluster");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        results().await,
        0,
        "a shared result of the ended user survived"
    );
    let (_, headers, _) = roundtrip(
        a.public_addr,
        "GET",
        "/echo",
        &[("cookie", &cookie(&browser))],
        "",
    )
    .await;
    // (The app sets a cookie of its own.) Names only in the message.
    let set: Vec<&str> = headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .filter(|c| c.starts_with(appsync_relay::session::COOKIE_PREFIX))
        .map(|c| c.split('=').next().unwrap_or(""))
        .collect();
    assert!(
        set.is_empty(),
        "the ended user's waiting renewal was handed out: {set:?}"
    );
}
