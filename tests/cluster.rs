//! Several relay replicas sharing one real Redis (`redis-server`, started
//! here): `POST /sessions/end` on one replica closes the user's sockets on
//! the others with 4401 within a second and refuses their handshakes
//! everywhere until they sign in again; other users are untouched; Redis
//! going away is a degradation (relaying goes on, `/readyz` says so and
//! stays 200, `redis_up` is 0) and its return, even empty, resynchronises
//! without reviving an ended session; nothing in Redis is a secret.

mod support;

use appsync_relay::server::RelayHandle;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::redis_server::Redis;
use support::replicas::end_sessions;
use support::*;

struct Replicas {
    jwks: JwksServer,
    _emulator: appsync_relay::emulator::EmulatorHandle,
    relays: Vec<RelayHandle>,
}

async fn replicas(n: usize, redis: Option<&Redis>) -> Replicas {
    let jwks = JwksServer::start(json!({"keys": [signing_key().jwk()]})).await;
    let emulator = start_emulator(&jwks, CLIENT_ID).await;
    let url = redis.map(|r| r.url());
    let mut extra = vec![];
    if let Some(u) = &url {
        extra.extend(["--redis-url", u.as_str()]);
    }
    let mut relays = Vec::new();
    for _ in 0..n {
        relays.push(start_relay(relay_config(&emulator.http_endpoint(), &jwks, &extra)).await);
    }
    let r = Replicas {
        jwks,
        _emulator: emulator,
        relays,
    };
    if redis.is_some() {
        for relay in &r.relays {
            wait_metric(relay, "appsync_relay_redis_up 1").await;
        }
    }
    r
}

impl Replicas {
    fn cookies(&self, name: &str, signed_in_at: u64) -> String {
        support::replicas::cookies_for(&self.jwks, name, signed_in_at)
    }

    async fn open(&self, i: usize, cookies: &str) -> Ws {
        let mut ws = connect(
            &format!("ws://{}/event/realtime", self.relays[i].public_addr),
            cookies,
        )
        .await;
        init(&mut ws).await;
        ws
    }

    async fn refused(&self, i: usize, cookies: &str) -> Option<u16> {
        let url = format!("ws://{}/event/realtime", self.relays[i].public_addr);
        match try_connect(&url, &Upgrade::browser(cookies)).await {
            Attempt::Refused(status, _) => Some(status),
            _ => None,
        }
    }
}

async fn end(relay: &RelayHandle, body: &str) -> (u16, Value) {
    end_sessions(relay.admin_addr, body).await
}

async fn wait_metric(relay: &RelayHandle, line: &str) {
    support::replicas::wait_metric(relay.admin_addr, line, Duration::from_secs(15)).await
}

async fn scrape(relay: &RelayHandle) -> String {
    http(relay.admin_addr, "GET", "/metrics", &[], "").await.2
}

/// Still open: a subscribe is answered.
async fn alive(ws: &mut Ws) -> bool {
    send_json(
        ws,
        amplify_subscribe(&format!("s{}", rand::random::<u32>()), "/default/alive"),
    )
    .await;
    recv_json(ws).await["type"] == "subscribe_success"
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread")]
async fn an_end_on_one_replica_closes_the_users_sockets_on_the_others_within_a_second() {
    let redis = Redis::start().await;
    let r = replicas(3, Some(&redis)).await;
    let then = now() - 60;
    let mut bob = r.open(1, &r.cookies("bob", then)).await;
    let mut latencies = Vec::new();
    let mut tokens_used = Vec::new();
    for round in 0..100 {
        let name = format!("alice{round}");
        let cookies = r.cookies(&name, then);
        tokens_used.push(cookies.rsplit('=').next().unwrap().to_string());
        let mut on_b = r.open(1, &cookies).await;
        let mut on_c = r.open(2, &cookies).await;
        let sent = Instant::now();
        let by = if round % 2 == 0 {
            json!({"sub": format!("sub-{name}")})
        } else {
            json!({"username": name})
        };
        let (status, answer) = end(&r.relays[0], &by.to_string()).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["reach"], "cluster");
        assert_eq!(recv_close(&mut on_b).await, Some(4401));
        let first = sent.elapsed();
        assert_eq!(recv_close(&mut on_c).await, Some(4401));
        latencies.push(first.max(sent.elapsed()));
        // Refused on every replica, the one that said it included.
        for i in 0..3 {
            assert_eq!(
                r.refused(i, &cookies).await,
                Some(401),
                "replica {i}, {name}"
            );
        }
        // Signing in again is a new session.
        let mut again = r.open(1, &r.cookies(&name, now() + 1)).await;
        assert!(alive(&mut again).await);
    }
    assert!(alive(&mut bob).await, "another user was affected");
    // A replica started afterwards learns every end from Redis.
    let late = start_relay(relay_config(
        &r._emulator.http_endpoint(),
        &r.jwks,
        &["--redis-url", &redis.url()],
    ))
    .await;
    wait_metric(&late, "appsync_relay_redis_up 1").await;
    let url = format!("ws://{}/event/realtime", late.public_addr);
    match try_connect(&url, &Upgrade::browser(&r.cookies("alice7", then))).await {
        Attempt::Refused(401, _) => {}
        other => panic!("a late replica let an ended user in: {other:?}"),
    }
    latencies.sort();
    let (p50, p99, max) = (
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1],
    );
    eprintln!(
        "end across replicas, {} runs: p50 {p50:?}, p99 {p99:?}, max {max:?}",
        latencies.len()
    );
    assert!(max < Duration::from_secs(1), "an end took {max:?}");

    // Nothing in Redis names a user or holds a token.
    let dump = redis.dump().await;
    assert!(!dump.is_empty());
    let text = format!("{dump:?}");
    for secret in ["alice0", "sub-alice", "bob"] {
        assert!(!text.contains(secret), "{secret} in Redis: {text}");
    }
    for token in &tokens_used {
        assert!(!text.contains(token.as_str()), "a user's token in Redis");
        assert!(
            !text.contains(token.split('.').nth(2).unwrap()),
            "a token's signature in Redis"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_redis_or_with_redis_down_an_end_still_holds_on_the_replica_that_heard_it() {
    // Alone: the same endpoint, this replica only.
    let alone = replicas(1, None).await;
    let then = now() - 60;
    let cookies = alone.cookies("carol", then);
    let mut ws = alone.open(0, &cookies).await;
    let (status, answer) = end(&alone.relays[0], r#"{"sub": "sub-carol"}"#).await;
    assert_eq!(
        (status, &answer["reach"]),
        (200, &json!("local")),
        "{answer}"
    );
    assert_eq!(answer["closed_here"], 1);
    assert_eq!(recv_close(&mut ws).await, Some(4401));
    assert_eq!(alone.refused(0, &cookies).await, Some(401));
    assert!(
        !scrape(&alone.relays[0]).await.contains("redis_up"),
        "no Redis metrics without --redis-url"
    );

    // Redis goes away mid-run.
    let mut redis = Redis::start().await;
    let r = replicas(2, Some(&redis)).await;
    let dave = r.cookies("dave", then);
    let mut dave_a = r.open(0, &dave).await;
    let mut dave_b = r.open(1, &dave).await;
    redis.stop();
    wait_metric(&r.relays[0], "appsync_relay_redis_up 0").await;
    wait_metric(&r.relays[1], "appsync_relay_redis_up 0").await;
    // Relaying goes on, and new sockets open.
    assert!(alive(&mut dave_b).await);
    let mut erin = r.open(1, &r.cookies("erin", then)).await;
    assert!(alive(&mut erin).await);
    let (status, _, body) = http(r.relays[0].admin_addr, "GET", "/readyz", &[], "").await;
    assert_eq!(status, 200, "Redis down must not take the replica out");
    assert!(body.contains("degraded"), "{body}");
    // An end now reaches only the replica that heard it ...
    let (status, answer) = end(&r.relays[0], r#"{"username": "dave"}"#).await;
    assert_eq!(
        (status, &answer["reach"]),
        (200, &json!("degraded")),
        "{answer}"
    );
    assert_eq!(recv_close(&mut dave_a).await, Some(4401));
    assert!(alive(&mut dave_b).await);
    assert!(scrape(&r.relays[0])
        .await
        .contains("appsync_relay_redis_errors_total{op=\"end\"} 1"));

    // ... until Redis returns, empty: the replica that heard it writes the
    // end back, the other catches up, closes the socket and refuses dave.
    redis.start_again().await;
    wait_metric(&r.relays[1], "appsync_relay_redis_up 1").await;
    assert_eq!(recv_close(&mut dave_b).await, Some(4401));
    for i in 0..2 {
        assert_eq!(
            r.refused(i, &dave).await,
            Some(401),
            "replica {i} revived dave"
        );
    }
    assert!(alive(&mut erin).await);
    let (_, _, body) = http(r.relays[1].admin_addr, "GET", "/readyz", &[], "").await;
    assert!(body.contains("redis: connected"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_end_endpoint_takes_exactly_one_subject_and_only_on_the_admin_listener() {
    let r = replicas(1, None).await;
    let relay = &r.relays[0];
    for body in [
        "",
        "{}",
        r#"{"sub": "a", "username": "b"}"#,
        r#"{"sub": ""}"#,
        r#"{"sub": 5}"#,
        r#"{"sub": "a", "sub": "b"}"#,
        r#"{"user": "a"}"#,
        "not json",
    ] {
        assert_eq!(end(relay, body).await.0, 400, "{body:?}");
    }
    let long = json!({"sub": "x".repeat(300)}).to_string();
    assert_eq!(end(relay, &long).await.0, 400);
    let (status, _, _) = http(relay.admin_addr, "GET", "/sessions/end", &[], "").await;
    assert_eq!(status, 405);
    let (status, _, _) = http(
        relay.public_addr,
        "POST",
        "/sessions/end",
        &[("content-type", "application/json"), ("origin", ORIGIN)],
        r#"{"sub": "sub-x"}"#,
    )
    .await;
    assert_eq!(status, 404, "the public listener must not end sessions");
}

/// 20 tabs of one user spread over 3 replicas, all renewing an expired
/// access token at once against a Cognito that rotates refresh tokens with
/// a zero grace period. Without Redis each replica calls Cognito with the
/// same refresh token, and every replica but the first loses its tabs'
/// session; with Redis (and --session-key-file) there is exactly one call
/// and no tab is lost, whether the tabs reach the replicas directly or
/// through haproxy. The token sets in Redis are sealed.
#[tokio::test(flavor = "multi_thread")]
async fn twenty_tabs_on_three_replicas_renew_with_one_cognito_call_through_redis() {
    let redis = Redis::start().await;
    let key_file = std::env::temp_dir().join(format!("relay-session-key-{}", std::process::id()));
    std::fs::write(&key_file, format!("# test key\n{}\n", "ab".repeat(32))).unwrap();
    let key_file = key_file.to_str().unwrap().to_string();
    for (coordinated, via_haproxy) in [(false, false), (true, false), (true, true)] {
        let jwks = JwksServer::start(json!({"keys": [signing_key().jwk()]})).await;
        let emulator = start_emulator(&jwks, CLIENT_ID).await;
        let cognito = support::fake_cognito::FakeCognito::start(jwks.issuer(), 3600).await;
        cognito
            .rotate
            .store(true, std::sync::atomic::Ordering::SeqCst);
        cognito
            .invalidate_rotated
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // Slow enough that the three replicas' calls overlap.
        cognito
            .delay_ms
            .store(150, std::sync::atomic::Ordering::SeqCst);
        let endpoint = cognito.endpoint();
        let mut extra = vec!["--cognito-endpoint", endpoint.as_str()];
        let url = redis.url();
        if coordinated {
            extra.extend([
                "--redis-url",
                url.as_str(),
                "--session-key-file",
                key_file.as_str(),
            ]);
        }
        let mut relays = Vec::new();
        for _ in 0..3 {
            relays.push(start_relay(relay_config(&emulator.http_endpoint(), &jwks, &extra)).await);
        }
        if coordinated {
            for relay in &relays {
                wait_metric(relay, "appsync_relay_redis_up 1").await;
            }
        }
        let mut session = cognito.sign_in(USERNAME);
        session.access = support::fake_cognito::expired_access(&jwks.issuer(), USERNAME, 60);
        let headers = support::jar::header_for(&support::jar::jar(&session));
        let cookies = headers.get("cookie").unwrap().to_str().unwrap().to_string();
        let lb = match via_haproxy {
            true => {
                let backends: Vec<_> = relays.iter().map(|r| r.public_addr).collect();
                Some(support::haproxy::Haproxy::start(&backends).await)
            }
            false => None,
        };
        let tabs = (0..20).map(|i| {
            let to = lb
                .as_ref()
                .map(|l| l.addr)
                .unwrap_or(relays[i % 3].public_addr);
            let url = format!("ws://{to}/event/realtime");
            let cookies = cookies.clone();
            async move { try_connect(&url, &Upgrade::browser(&cookies)).await }
        });
        let results = futures_util::future::join_all(tabs).await;
        let open = results
            .iter()
            .filter(|a| matches!(a, Attempt::Open(..)))
            .count();
        let calls = cognito.calls("GetTokensFromRefreshToken");
        eprintln!(
            "coordinated={coordinated} via_haproxy={via_haproxy}: {calls} Cognito call(s), {open}/20 tabs kept their session"
        );
        if via_haproxy {
            // The balancer spread them over every replica.
            for relay in &relays {
                let m = scrape(relay).await;
                assert!(
                    !m.lines().any(|l| l == "appsync_relay_connections_active 0"),
                    "a replica got no tab through haproxy"
                );
            }
        }
        if coordinated {
            assert_eq!(calls, 1, "one refresh token, one call, across replicas");
            assert_eq!(open, 20, "{results:?}");
            let dump = format!("{:?}", redis.dump().await);
            assert!(dump.contains("appsync-relay:refresh:result:"), "{dump}");
            for secret in [&session.refresh, &session.access, &session.id] {
                assert!(
                    !dump.contains(secret.as_str()),
                    "a token in Redis in the clear"
                );
            }
            // (Not a bare "eyJ": the sealed values are random base64, which
            // holds those three letters now and then.)
            assert!(!has_jwt(&dump), "a JWT in Redis in the clear: {dump}");
        } else {
            assert!(calls >= 2, "the replicas were not racing: {calls} call(s)");
            assert!(
                open < 20,
                "the loss this coordination prevents did not show"
            );
        }
    }
}

/// `rediss://` with a private CA (`--redis-ca-file`): coordinated; without
/// the CA the certificate is not trusted and the replica stays on its own
/// (degraded), never falling back to plain text.
#[tokio::test(flavor = "multi_thread")]
async fn a_tls_redis_is_used_only_with_a_trusted_certificate() {
    let redis = Redis::start_tls().await;
    let jwks = JwksServer::start(json!({"keys": [signing_key().jwk()]})).await;
    let emulator = start_emulator(&jwks, CLIENT_ID).await;
    let (url, ca) = (redis.url(), redis.ca_file());
    let ca = ca.to_str().unwrap();
    let trusted = start_relay(relay_config(
        &emulator.http_endpoint(),
        &jwks,
        &["--redis-url", &url, "--redis-ca-file", ca],
    ))
    .await;
    wait_metric(&trusted, "appsync_relay_redis_up 1").await;
    let (status, answer) = end(&trusted, r#"{"sub": "sub-ivy"}"#).await;
    assert_eq!(
        (status, &answer["reach"]),
        (200, &json!("cluster")),
        "{answer}"
    );
    let untrusted = start_relay(relay_config(
        &emulator.http_endpoint(),
        &jwks,
        &["--redis-url", &url],
    ))
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(scrape(&untrusted)
        .await
        .lines()
        .any(|l| l == "appsync_relay_redis_up 0"));
    let (status, answer) = end(&untrusted, r#"{"sub": "sub-ivy"}"#).await;
    assert_eq!(
        (status, &answer["reach"]),
        (200, &json!("degraded")),
        "{answer}"
    );
}

/// Whether `text` holds something shaped like a JWT: `eyJ` and base64url,
/// a dot, base64url, a dot.
fn has_jwt(text: &str) -> bool {
    let url = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    text.match_indices("eyJ").any(|(i, _)| {
        let mut parts = text[i..].splitn(3, '.');
        let (Some(head), Some(body), Some(_)) = (parts.next(), parts.next(), parts.next()) else {
            return false;
        };
        head.len() >= 10 && head.chars().all(url) && body.len() >= 10 && body.chars().all(url)
    })
}

#[test]
fn has_jwt_finds_tokens_not_base64_that_happens_to_hold_ey_j() {
    // A real signed token, made here (no token literal in the tree).
    let token = sign(&json!({"sub": "abc"}), signing_key());
    assert!(has_jwt(&format!("x {token} y")));
    assert!(!has_jwt(
        "v1.9a2db2e2.xj+YNROzlMn0e+ha1ET7eyJwtTDsVjolAXm54z/lGK9p"
    ));
}
