//! `--max-connections-per-user` across replicas sharing a real Redis: the
//! limit is the same with one replica or several (without Redis each
//! replica allows it again), a closed socket frees its place at once, and a
//! replica killed without a word (SIGKILL) stops counting after
//! `--cluster-lease-ttl`.

mod support;

use appsync_relay::server::RelayHandle;
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::redis_server::Redis;
use support::replicas::wait_metric;
use support::*;

const LIMIT: &str = "3";

async fn wait_redis_up(admin: std::net::SocketAddr) {
    wait_metric(admin, "appsync_relay_redis_up 1", Duration::from_secs(15)).await
}

fn url(relay: &RelayHandle) -> String {
    format!("ws://{}/event/realtime", relay.public_addr)
}

async fn attempt(url: &str, cookies: &str) -> Result<Ws, u16> {
    match try_connect(url, &Upgrade::browser(cookies)).await {
        Attempt::Open(ws, _) => Ok(*ws),
        Attempt::Refused(status, _) => Err(status),
        Attempt::Failed(e) => panic!("{e}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_per_user_limit_is_the_same_with_one_replica_or_three() {
    let redis = Redis::start().await;
    let jwks = JwksServer::start(json!({"keys": [signing_key().jwk()]})).await;
    let emulator = start_emulator(&jwks, CLIENT_ID).await;
    let cookies = amplify_cookies(
        Some(&sign(&access_claims(&jwks.issuer()), signing_key())),
        None,
    );
    for coordinated in [false, true] {
        let redis_url = redis.url();
        let mut extra = vec!["--max-connections-per-user", LIMIT];
        if coordinated {
            extra.extend(["--redis-url", redis_url.as_str()]);
        }
        let mut relays = Vec::new();
        for _ in 0..3 {
            let relay = start_relay(relay_config(&emulator.http_endpoint(), &jwks, &extra)).await;
            if coordinated {
                wait_redis_up(relay.admin_addr).await;
            }
            relays.push(relay);
        }
        let mut open = Vec::new();
        for i in 0..9 {
            if let Ok(ws) = attempt(&url(&relays[i % 3]), &cookies).await {
                open.push((i % 3, ws));
            }
        }
        if !coordinated {
            assert_eq!(
                open.len(),
                9,
                "without Redis each replica allows the limit again"
            );
            continue;
        }
        assert_eq!(open.len(), 3, "the limit across replicas");
        for relay in &relays {
            assert_eq!(attempt(&url(relay), &cookies).await.err(), Some(429));
        }
        // A socket that closes frees its place for any replica.
        let (on, mut ws) = open.pop().unwrap();
        ws.close(None).await.unwrap();
        let other = &relays[(on + 1) % 3];
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match attempt(&url(other), &cookies).await {
                Ok(ws) => {
                    open.push((on, ws));
                    break;
                }
                Err(429) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(s) => panic!("the freed place never came back: {s}"),
            }
        }
        // No user name or token in Redis, only the hash-named count.
        let dump = format!("{:?}", redis.dump().await);
        assert!(dump.contains("appsync-relay:conns:"), "{dump}");
        assert!(!dump.contains(SUB) && !dump.contains(USERNAME), "{dump}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_replicas_connections_stop_counting_after_the_lease_ttl() {
    let redis = Redis::start().await;
    let jwks = JwksServer::start(json!({"keys": [signing_key().jwk()]})).await;
    let emulator = start_emulator(&jwks, CLIENT_ID).await;
    let cookies = amplify_cookies(
        Some(&sign(&access_claims(&jwks.issuer()), signing_key())),
        None,
    );
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (public, admin) = (free(), free());
    let (issuer, jwks_url, endpoint, redis_url) = (
        jwks.issuer(),
        jwks.jwks_url(),
        emulator.http_endpoint(),
        redis.url(),
    );
    let (public_s, admin_s) = (public.to_string(), admin.to_string());
    let mut child = Command::new(env!("CARGO_BIN_EXE_appsync-relay"))
        .args(["serve", "--appsync-http-endpoint", &endpoint])
        .args([
            "--cognito-user-pool-id",
            POOL_ID,
            "--cognito-client-id",
            CLIENT_ID,
        ])
        .args(["--cognito-issuer", &issuer, "--cognito-jwks-url", &jwks_url])
        .args([
            "--allowed-origin",
            ORIGIN,
            "--cognito-endpoint",
            "http://127.0.0.1:9/",
        ])
        .args(["--listen", &public_s, "--admin-listen", &admin_s])
        .args(["--redis-url", &redis_url, "--cluster-lease-ttl", "3"])
        .args(["--max-connections-per-user", LIMIT])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_redis_up(admin).await;
    let child_url = format!("ws://{public}/event/realtime");
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            attempt(&child_url, &cookies)
                .await
                .expect("the child admits the limit"),
        );
    }
    let extra = [
        "--max-connections-per-user",
        LIMIT,
        "--redis-url",
        redis_url.as_str(),
        "--cluster-lease-ttl",
        "3",
    ];
    let survivor = start_relay(relay_config(&endpoint, &jwks, &extra)).await;
    wait_redis_up(survivor.admin_addr).await;
    assert_eq!(attempt(&url(&survivor), &cookies).await.err(), Some(429));
    // A live replica renews its leases: past the TTL they still count.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        attempt(&url(&survivor), &cookies).await.err(),
        Some(429),
        "leases not renewed"
    );
    child.kill().unwrap();
    let killed = Instant::now();
    child.wait().unwrap();
    // Still counted until the leases run out ...
    assert_eq!(attempt(&url(&survivor), &cookies).await.err(), Some(429));
    // ... then the user's place is free.
    loop {
        match attempt(&url(&survivor), &cookies).await {
            Ok(_) => break,
            Err(429) if killed.elapsed() < Duration::from_secs(6) => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(s) => panic!("a dead replica's leases never expired ({s})"),
        }
    }
    let freed = killed.elapsed();
    eprintln!("a killed replica's connections stopped counting after {freed:?} (lease TTL 3 s)");
    assert!(
        freed >= Duration::from_secs(1),
        "freed before the leases could expire: {freed:?}"
    );
    drop(held);
}
