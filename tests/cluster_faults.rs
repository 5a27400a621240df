//! The coordination through Redis under faults (found by an attacker's
//! review, each test failing before its fix): a single slow Redis command
//! does not switch the coordination off, and the end it carried still
//! reaches the other replicas; a partition of one replica only ends, on
//! healing, with the others hearing what it said meanwhile; a refresh
//! result kept in Redis does not revive a sign-in that just ended; a
//! replica takes traffic only once it knows the ends said before it
//! started; an ended user's HTTP publish is refused too.

mod support;

use appsync_relay::server::RelayHandle;
use serde_json::{json, Value};
use std::time::Duration;
use support::redis_server::{Cuttable, Redis};
use support::replicas::{closed_within, cookies_for, end_sessions, expired_copy, wait_metric};
use support::*;

async fn metrics(relay: &RelayHandle) -> String {
    http(relay.admin_addr, "GET", "/metrics", &[], "").await.2
}

async fn wait_for(relay: &RelayHandle, line: &str, within: Duration) {
    wait_metric(relay.admin_addr, line, within).await
}

async fn end(relay: &RelayHandle, body: Value) -> Value {
    let (status, answer) = end_sessions(relay.admin_addr, &body.to_string()).await;
    assert_eq!(status, 200, "{answer}");
    answer
}

async fn open(relay: &RelayHandle, cookies: &str) -> Ws {
    let mut ws = connect(
        &format!("ws://{}/event/realtime", relay.public_addr),
        cookies,
    )
    .await;
    init(&mut ws).await;
    ws
}

async fn redis_cmd(redis: &Redis, args: &[&str]) -> redis::Value {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(&mut conn).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_command_neither_switches_coordination_off_nor_loses_its_end() {
    let redis = Redis::start().await;
    let jwks = JwksServer::start(json!({"keys": [signing_key().jwk()]})).await;
    let emulator = start_emulator(&jwks, CLIENT_ID).await;
    let url = redis.url();
    let extra = ["--redis-url", url.as_str()];
    let a = start_relay(relay_config(&emulator.http_endpoint(), &jwks, &extra)).await;
    let b = start_relay(relay_config(&emulator.http_endpoint(), &jwks, &extra)).await;
    for r in [&a, &b] {
        wait_for(r, "appsync_relay_redis_up 1", Duration::from_secs(10)).await;
    }
    let frank = cookies_for(&jwks, "frank", now() - 60);
    let mut on_b = open(&b, &frank).await;
    // Writes stall for a second: the end's commands time out on A.
    redis_cmd(&redis, &["CLIENT", "PAUSE", "1000", "WRITE"]).await;
    let answer = end(&a, json!({"sub": "sub-frank"})).await;
    assert_eq!(answer["reach"], "degraded", "{answer}");
    // Still coordinating (before: redis_up stayed 0 until the feed's own
    // connection broke, which it never did) ...
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(metrics(&a)
        .await
        .lines()
        .any(|l| l == "appsync_relay_redis_up 1"));
    // ... and the end is said again once Redis takes writes: B hears it.
    assert_eq!(
        closed_within(&mut on_b, Duration::from_secs(4)).await,
        Some(4401)
    );
    let again = end(&a, json!({"sub": "sub-other"})).await;
    assert_eq!(again["reach"], "cluster");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partitioned_replicas_ends_reach_the_others_when_it_heals() {
    let redis = Redis::start().await;
    let path_a = Cuttable::start(redis.port).await;
    let jwks = JwksServer::start(json!({"keys": [signing_key().jwk()]})).await;
    let emulator = start_emulator(&jwks, CLIENT_ID).await;
    let (url_a, url_b) = (path_a.url(), redis.url());
    let a = start_relay(relay_config(
        &emulator.http_endpoint(),
        &jwks,
        &["--redis-url", &url_a],
    ))
    .await;
    let b = start_relay(relay_config(
        &emulator.http_endpoint(),
        &jwks,
        &["--redis-url", &url_b],
    ))
    .await;
    for r in [&a, &b] {
        wait_for(r, "appsync_relay_redis_up 1", Duration::from_secs(10)).await;
    }
    let gina = cookies_for(&jwks, "gina", now() - 60);
    let mut on_a = open(&a, &gina).await;
    let mut on_b = open(&b, &gina).await;
    path_a.cut();
    wait_for(&a, "appsync_relay_redis_up 0", Duration::from_secs(10)).await;
    let answer = end(&a, json!({"username": "gina"})).await;
    assert_eq!(answer["reach"], "degraded");
    assert_eq!(
        closed_within(&mut on_a, Duration::from_secs(1)).await,
        Some(4401)
    );
    assert_eq!(
        closed_within(&mut on_b, Duration::from_millis(500)).await,
        None,
        "B cannot know yet"
    );
    // B never lost Redis, so it never resynchronises: only A saying it
    // again on healing reaches B (before: A wrote the marker back silently).
    path_a.heal();
    assert_eq!(
        closed_within(&mut on_b, Duration::from_secs(10)).await,
        Some(4401)
    );
    match try_connect(
        &format!("ws://{}/event/realtime", b.public_addr),
        &Upgrade::browser(&gina),
    )
    .await
    {
        Attempt::Refused(401, _) => {}
        other => panic!("B let an ended user in: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_result_kept_in_redis_does_not_revive_a_sign_in_that_ended() {
    let redis = Redis::start().await;
    let jwks = JwksServer::start(json!({"keys": [signing_key().jwk()]})).await;
    let emulator = start_emulator(&jwks, CLIENT_ID).await;
    let cognito = support::fake_cognito::FakeCognito::start(jwks.issuer(), 3600).await;
    cognito
        .rotate
        .store(true, std::sync::atomic::Ordering::SeqCst);
    // The old refresh token dies when rotated (as the whole family does
    // when Cognito revokes one of it): only a kept result could revive it.
    cognito
        .invalidate_rotated
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let key = std::env::temp_dir().join(format!("relay-faults-key-{}", std::process::id()));
    std::fs::write(&key, "cd".repeat(32)).unwrap();
    let (endpoint, url, key) = (
        cognito.endpoint(),
        redis.url(),
        key.to_str().unwrap().to_string(),
    );
    let extra = [
        "--cognito-endpoint",
        &endpoint,
        "--redis-url",
        &url,
        "--session-key-file",
        &key,
    ];
    let a = start_relay(relay_config(&emulator.http_endpoint(), &jwks, &extra)).await;
    let b = start_relay(relay_config(&emulator.http_endpoint(), &jwks, &extra)).await;
    for r in [&a, &b] {
        wait_for(r, "appsync_relay_redis_up 1", Duration::from_secs(10)).await;
    }
    let s = cognito.sign_in(USERNAME);
    let old = support::fake_cognito::Session {
        access: expired_copy(&s.access),
        ..s.clone()
    };
    // A renews with the old refresh token: Cognito rotates it, and the
    // result is kept in Redis for the other tabs (5 s).
    let old_cookies = support::jar::header_for(&support::jar::jar(&old))["cookie"]
        .to_str()
        .unwrap()
        .to_string();
    let (ws, headers) = match try_connect(
        &format!("ws://{}/event/realtime", a.public_addr),
        &Upgrade::browser(&old_cookies),
    )
    .await
    {
        Attempt::Open(ws, h) => (ws, h),
        other => panic!("{other:?}"),
    };
    drop(ws);
    let mut jar = support::jar::jar(&old);
    let set: Vec<_> = headers.get_all("set-cookie").iter().cloned().collect();
    support::jar::apply(&mut jar, &set);
    let new_refresh = jar["refreshToken"].clone();
    assert_ne!(new_refresh, old.refresh, "Cognito rotated");
    // Cognito revokes the new one; A learns it renewing with it: the
    // sign-in is over.
    cognito.revoke(&new_refresh);
    a.state.sessions().forget_recent_answers();
    let mut expired_new = jar.clone();
    expired_new.insert("accessToken", expired_copy(&jar["accessToken"]));
    let new_cookies = support::jar::header_for(&expired_new)["cookie"]
        .to_str()
        .unwrap()
        .to_string();
    match try_connect(
        &format!("ws://{}/event/realtime", a.public_addr),
        &Upgrade::browser(&new_cookies),
    )
    .await
    {
        Attempt::Refused(401, _) => {}
        other => panic!("a revoked refresh token renewed: {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A tab on B still holding the old cookies: the result A kept for the
    // old refresh token would hand it fresh tokens (before the fix: Open).
    match try_connect(
        &format!("ws://{}/event/realtime", b.public_addr),
        &Upgrade::browser(&old_cookies),
    )
    .await
    {
        Attempt::Refused(401, _) => {}
        other => panic!("an ended sign-in was revived from Redis: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_replica_is_ready_only_knowing_earlier_ends_and_http_publish_is_refused_too() {
    let mut redis = Redis::start().await;
    let jwks = JwksServer::start(json!({"keys": [signing_key().jwk()]})).await;
    let emulator = start_emulator(&jwks, CLIENT_ID).await;
    let url = redis.url();
    let extra = ["--redis-url", url.as_str()];
    let a = start_relay(relay_config(&emulator.http_endpoint(), &jwks, &extra)).await;
    wait_for(&a, "appsync_relay_redis_up 1", Duration::from_secs(10)).await;
    assert_eq!(
        end(&a, json!({"sub": "sub-hana"})).await["reach"],
        "cluster"
    );
    let hana = cookies_for(&jwks, "hana", now() - 60);
    let refused_by = |relay: &RelayHandle| {
        let url = format!("ws://{}/event/realtime", relay.public_addr);
        let hana = hana.clone();
        async move {
            match try_connect(&url, &Upgrade::browser(&hana)).await {
                Attempt::Refused(401, body) => assert!(body.contains("session_ended"), "{body}"),
                other => panic!("a fresh replica let an ended user in: {other:?}"),
            }
        }
    };
    // Redis answers slowly while a replica starts: ready means it knows
    // (before: ready as soon as its keys loaded, and hana got in).
    redis_cmd(&redis, &["CLIENT", "PAUSE", "1500", "ALL"]).await;
    let late = start_relay(relay_config(&emulator.http_endpoint(), &jwks, &extra)).await;
    refused_by(&late).await;
    // Redis comes back empty: the replicas write the end back, so one
    // started afterwards still knows it.
    redis.stop();
    wait_for(&a, "appsync_relay_redis_up 0", Duration::from_secs(10)).await;
    redis.start_again().await;
    wait_for(&a, "appsync_relay_redis_up 1", Duration::from_secs(10)).await;
    let later = start_relay(relay_config(&emulator.http_endpoint(), &jwks, &extra)).await;
    refused_by(&later).await;
    for relay in [&a, &late, &later] {
        let (status, _, body) = http(
            relay.public_addr,
            "POST",
            "/event",
            &[
                ("content-type", "application/json"),
                ("origin", ORIGIN),
                ("cookie", &hana),
            ],
            &json!({"channel": "/default/x", "events": ["{}"]}).to_string(),
        )
        .await;
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("session_ended"), "{body}");
    }
}
