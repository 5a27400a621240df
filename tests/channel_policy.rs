//! Channel policy (`--channel-policy`) end to end, against the emulator,
//! whose operations meter shows what reached "AppSync": a denied subscribe
//! or publish must never get there.

mod support;

use appsync_relay::cli::{Cli, Command};
use appsync_relay::config::Config;
use clap::Parser;
use serde_json::{json, Value};
use support::*;

const POLICY: &str = r#"
[[rule]]
channels = ["/ns/users/{sub}", "/ns/users/{sub}/*"]
allow = ["subscribe", "publish"]

[[rule]]
channels = "/ns/teams/{cognito:groups}/*"
allow = ["subscribe"]

[[rule]]
channels = "/default/*"
allow = ["subscribe"]

[[rule]]
channels = "/default/*"
allow = ["publish"]
when = { "cognito:groups" = "admins" }
"#;

const ALICE: &str = "5f1c6a2e-0000-4000-8000-000000000001";

/// A directory of this test's own, removed when dropped.
struct Dir(std::path::PathBuf);

impl Dir {
    fn new() -> Dir {
        let d = std::env::temp_dir().join(format!(
            "appsync-relay-policy-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Policied {
    stack: Stack,
    dir: Dir,
}

impl Policied {
    /// Rewrites the policy file (atomically, as a ConfigMap update would).
    fn write_policy(&self, text: &str) {
        let tmp = self.dir.path().join("policy.toml.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.dir.path().join("policy.toml")).unwrap();
    }
}

async fn start() -> Policied {
    start_with_lifetime(3600, &[]).await
}

/// Tokens living `lifetime` seconds, and more relay flags.
async fn start_with_lifetime(lifetime: u64, extra: &[&str]) -> Policied {
    let dir = Dir::new();
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, POLICY).unwrap();
    let mut args = vec!["--channel-policy", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    let stack = Stack::start_with_lifetime(&args, lifetime).await;
    Policied { stack, dir }
}

/// The cookies of a sign-in at the fake Cognito (so the relay can renew).
fn session_cookies(s: &fake_cognito::Session) -> String {
    use appsync_relay::session::{cookie_name, last_auth_user_cookie};
    format!(
        "{}={USERNAME}; {}={}; {}={}; {}={}",
        last_auth_user_cookie(CLIENT_ID),
        cookie_name(CLIENT_ID, USERNAME, "accessToken"),
        s.access,
        cookie_name(CLIENT_ID, USERNAME, "idToken"),
        s.id,
        cookie_name(CLIENT_ID, USERNAME, "refreshToken"),
        s.refresh,
    )
}

/// Cookies for Alice with `groups` in `cognito:groups` (none: no claim).
fn cookies(stack: &Stack, groups: Option<Value>) -> String {
    let mut claims = access_claims(&stack.jwks.issuer());
    if let Some(g) = groups {
        claims["cognito:groups"] = g;
    }
    amplify_cookies(Some(&sign(&claims, signing_key())), None)
}

async fn browser(stack: &Stack, cookie: &str) -> Ws {
    let mut ws = connect(&stack.realtime_url(), cookie).await;
    init(&mut ws).await;
    ws
}

fn assert_unauthorized(frame: &Value, kind: &str, id: &str) {
    assert_eq!(frame["type"], kind, "{frame}");
    assert_eq!(frame["id"], id, "{frame}");
    assert_eq!(
        frame["errors"][0]["errorType"], "UnauthorizedException",
        "{frame}"
    );
}

#[tokio::test]
async fn owner_channels_pass_and_everything_else_is_denied_before_appsync() {
    let p = start().await;
    let s = &p.stack;
    let mut ws = browser(s, &cookies(s, None)).await;
    let subs = s.emulator.operations("subscribe");
    let pubs = s.emulator.operations("publish");

    let own = format!("/ns/users/{ALICE}");
    send_json(&mut ws, amplify_subscribe("mine", &format!("{own}/*"))).await;
    assert_eq!(
        recv_json(&mut ws).await,
        json!({"type": "subscribe_success", "id": "mine"})
    );
    for (id, channel) in [
        ("other", "/ns/users/someone-else".to_string()),
        ("all-users", "/ns/users/*".to_string()),
        ("team", "/ns/teams/red/chat".to_string()),
        ("elsewhere", "/elsewhere/x".to_string()),
    ] {
        send_json(&mut ws, amplify_subscribe(id, &channel)).await;
        assert_unauthorized(&recv_json(&mut ws).await, "subscribe_error", id);
    }
    assert_eq!(
        s.emulator.operations("subscribe") - subs,
        1,
        "denied ones reached AppSync"
    );

    // A publish on the owner's channel is delivered; one on a broadcast
    // channel without the admins group is not sent at all.
    send_json(
        &mut ws,
        amplify_publish("p1", &format!("{own}/inbox"), &[json!({"n": 1})]),
    )
    .await;
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(recv_json(&mut ws).await);
    }
    assert!(
        seen.iter().any(|f| f["type"] == "publish_success"),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|f| f["type"] == "data" && f["id"] == "mine"),
        "{seen:?}"
    );
    send_json(
        &mut ws,
        amplify_publish("p2", "/default/news", &[json!({"n": 2})]),
    )
    .await;
    assert_unauthorized(&recv_json(&mut ws).await, "publish_error", "p2");
    send_json(
        &mut ws,
        amplify_publish("p3", "/ns/users/someone-else", &[json!(3)]),
    )
    .await;
    assert_unauthorized(&recv_json(&mut ws).await, "publish_error", "p3");
    assert_eq!(
        s.emulator.operations("publish") - pubs,
        1,
        "denied ones reached AppSync"
    );

    let metrics = scrape(s).await;
    assert!(
        metrics
            .contains(r#"appsync_relay_policy_decisions_total{op="subscribe",result="denied"} 4"#),
        "{metrics}"
    );
    assert!(
        metrics
            .contains(r#"appsync_relay_policy_decisions_total{op="publish",result="permitted"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn groups_open_their_channels_and_a_wildcard_only_when_all_of_it_is_allowed() {
    let p = start().await;
    let s = &p.stack;
    let mut ws = browser(s, &cookies(s, Some(json!(["red", "admins"])))).await;
    for (id, channel, ok) in [
        ("r1", "/ns/teams/red/chat", true),
        ("r2", "/ns/teams/red/*", true),
        ("b1", "/ns/teams/blue/chat", false),
        ("all", "/ns/teams/*", false),
        ("news", "/default/*", true),
    ] {
        send_json(&mut ws, amplify_subscribe(id, channel)).await;
        let answer = recv_json(&mut ws).await;
        if ok {
            assert_eq!(answer, json!({"type": "subscribe_success", "id": id}));
        } else {
            assert_unauthorized(&answer, "subscribe_error", id);
        }
    }
    // Subscribe only: a team member may not publish to the team.
    send_json(
        &mut ws,
        amplify_publish("p1", "/ns/teams/red/chat", &[json!(1)]),
    )
    .await;
    assert_unauthorized(&recv_json(&mut ws).await, "publish_error", "p1");
    // An admin may publish a broadcast.
    send_json(&mut ws, amplify_publish("p2", "/default/news", &[json!(2)])).await;
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(recv_json(&mut ws).await);
    }
    assert!(
        seen.iter()
            .any(|f| f["type"] == "publish_success" && f["id"] == "p2"),
        "{seen:?}"
    );
}

#[tokio::test]
async fn http_publish_is_decided_on_the_channel_appsync_would_read() {
    let p = start().await;
    let s = &p.stack;
    let pubs = s.emulator.operations("publish");
    let post = |cookie: String, body: String| async move {
        http(
            s.relay.public_addr,
            "POST",
            "/event",
            &[
                ("origin", ORIGIN),
                ("cookie", &cookie),
                ("content-type", "application/json"),
            ],
            &body,
        )
        .await
    };
    let event = json!({"n": 1}).to_string();
    let admin = cookies(s, Some(json!(["admins"])));
    let member = cookies(s, Some(json!(["red"])));

    let (status, _, _) = post(
        admin.clone(),
        json!({"channel": "/default/news", "events": [event]}).to_string(),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, body) = post(
        member.clone(),
        json!({"channel": "/default/news", "events": [event]}).to_string(),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"], "forbidden");
    assert_eq!(body["reason"], "channel_policy");
    // Two "channel" keys: the relay must not read one and AppSync the other.
    let own = format!("/ns/users/{ALICE}");
    let twice = format!(r#"{{"channel":"{own}","channel":"/default/news","events":["{{}}"]}}"#);
    let (status, _, _) = post(member.clone(), twice).await;
    assert_eq!(status, 403);
    // No channel the relay can read: denied, never waved through.
    for body in [
        "not json",
        r#"{"events":["{}"]}"#,
        r#"{"channel":"/default/*","events":["{}"]}"#,
    ] {
        let (status, _, _) = post(member.clone(), body.to_string()).await;
        assert_eq!(status, 403, "{body}");
    }
    assert_eq!(
        s.emulator.operations("publish") - pubs,
        1,
        "only the allowed publish reached AppSync"
    );
    // The owner's own channel passes for anyone.
    let (status, _, body) = post(
        member,
        json!({"channel": own, "events": [event]}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_renewal_that_drops_a_group_ends_that_groups_subscriptions() {
    // 4 s tokens renewed 2 s before expiry: the first renewal within ~2 s.
    let p = start_with_lifetime(4, &["--refresh-before", "2"]).await;
    let s = &p.stack;
    *s.cognito.groups.lock().unwrap() = Some(json!(["red", "blue"]));
    let signed_in = s.cognito.sign_in(USERNAME);
    let mut ws = browser(s, &session_cookies(&signed_in)).await;
    for (id, channel) in [("red", "/ns/teams/red/*"), ("blue", "/ns/teams/blue/chat")] {
        send_json(&mut ws, amplify_subscribe(id, channel)).await;
        assert_eq!(
            recv_json(&mut ws).await,
            json!({"type": "subscribe_success", "id": id})
        );
    }
    let subscribed = s.emulator.subscription_count();
    // Red is taken away at Cognito; the next token says so.
    *s.cognito.groups.lock().unwrap() = Some(json!(["blue"]));
    let ended = tokio::time::timeout(std::time::Duration::from_secs(8), recv_json(&mut ws))
        .await
        .expect("no subscribe_error within two renewals");
    assert_unauthorized(&ended, "subscribe_error", "red");
    // Upstream, the red subscription is gone; blue stays.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while s.emulator.subscription_count() != subscribed - 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "red still subscribed upstream"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // An event on red no longer reaches the browser, one on blue does; the
    // browser never sees AppSync's answer to the relay's unsubscribe.
    let event = json!({"n": 1}).to_string();
    for channel in ["/ns/teams/red/chat", "/ns/teams/blue/chat"] {
        let (status, _, body) = http(
            s.emulator.local_addr(),
            "POST",
            "/event",
            &[
                ("authorization", &s.good_token()),
                ("content-type", "application/json"),
            ],
            &json!({"channel": channel, "events": [event]}).to_string(),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let next = recv_json(&mut ws).await;
    assert_eq!(next["type"], "data", "{next}");
    assert_eq!(next["id"], "blue", "{next}");
    // AppSync confirmed the unsubscribe (before blue's event, on the same
    // connection): the id is free again, and red is refused by the policy.
    send_json(&mut ws, amplify_subscribe("red", "/ns/teams/red/chat")).await;
    assert_unauthorized(&recv_json(&mut ws).await, "subscribe_error", "red");
}

#[tokio::test]
async fn a_redial_that_renews_decides_the_replayed_subscriptions_again() {
    let p = start().await;
    let s = &p.stack;
    *s.cognito.groups.lock().unwrap() = Some(json!(["red", "blue"]));
    let signed_in = s.cognito.sign_in(USERNAME);
    let mut ws = browser(s, &session_cookies(&signed_in)).await;
    for (id, channel) in [("red", "/ns/teams/red/*"), ("blue", "/ns/teams/blue/chat")] {
        send_json(&mut ws, amplify_subscribe(id, channel)).await;
        assert_eq!(
            recv_json(&mut ws).await,
            json!({"type": "subscribe_success", "id": id})
        );
    }
    // Red is taken away; AppSync then refuses the token in use and the
    // upstream drops: the re-dial renews (the token is hours from due).
    *s.cognito.groups.lock().unwrap() = Some(json!(["blue"]));
    s.emulator.revoke_credential(&signed_in.access);
    s.emulator.abort_all();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), recv_json(&mut ws))
        .await
        .expect("no subscribe_error after the re-dial");
    assert_unauthorized(&ended, "subscribe_error", "red");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while s.emulator.subscription_count() != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "red still subscribed upstream"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(s.cognito.calls("GetTokensFromRefreshToken"), 1);
}

/// An HTTP endpoint that records each body and answers `{}`.
async fn capture() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = bodies.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            seen.lock()
                                .unwrap()
                                .push(String::from_utf8_lossy(&body).into_owned());
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from_static(b"{}")),
                            ))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, bodies)
}

#[tokio::test]
async fn an_http_publish_is_forwarded_as_decided_not_as_sent() {
    let (addr, bodies) = capture().await;
    let jwks = JwksServer::start(json!({"keys": [signing_key().jwk()]})).await;
    let dir = Dir::new();
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, POLICY).unwrap();
    let relay = start_relay(relay_config(
        &format!("http://{addr}/event"),
        &jwks,
        &["--channel-policy", path.to_str().unwrap()],
    ))
    .await;
    let cookie = amplify_cookies(
        Some(&sign(&access_claims(&jwks.issuer()), signing_key())),
        None,
    );
    // Another spelling of the owner's channel, a case variant naming a
    // channel the user may not publish on, and a field AppSync might read.
    let sent = format!(
        r#"{{"channel":"ns/users/{ALICE}/","Channel":"/default/news","extra":{{"channel":"/default/x"}},"events":["{{\"n\":1}}"]}}"#
    );
    let (status, _, body) = http(
        relay.public_addr,
        "POST",
        "/event",
        &[
            ("origin", ORIGIN),
            ("cookie", &cookie),
            ("content-type", "application/json"),
        ],
        &sent,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let got = bodies.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    let forwarded: Value = serde_json::from_str(&got[0]).unwrap();
    assert_eq!(
        forwarded,
        json!({"channel": format!("/ns/users/{ALICE}"), "events": ["{\"n\":1}"]})
    );
}

#[tokio::test]
async fn a_reloaded_policy_applies_to_open_subscriptions_and_a_broken_one_is_ignored() {
    let p = start().await;
    let s = &p.stack;
    let mut ws = browser(s, &cookies(s, None)).await;
    send_json(&mut ws, amplify_subscribe("news", "/default/news")).await;
    assert_eq!(
        recv_json(&mut ws).await,
        json!({"type": "subscribe_success", "id": "news"})
    );
    let own = format!("/ns/users/{ALICE}/inbox");
    send_json(&mut ws, amplify_subscribe("mine", &own)).await;
    assert_eq!(
        recv_json(&mut ws).await,
        json!({"type": "subscribe_success", "id": "mine"})
    );

    // The broadcast rule goes: the open subscription ends within seconds.
    let without_news = POLICY
        .split("[[rule]]\nchannels = \"/default/*\"")
        .next()
        .unwrap();
    assert!(!without_news.contains("/default/"), "{without_news}");
    p.write_policy(without_news);
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), recv_json(&mut ws))
        .await
        .expect("no subscribe_error within 10 s of the change");
    assert_unauthorized(&ended, "subscribe_error", "news");
    send_json(&mut ws, amplify_subscribe("news2", "/default/news")).await;
    assert_unauthorized(&recv_json(&mut ws).await, "subscribe_error", "news2");

    // A broken file: logged, counted, and the policy in force stays.
    p.write_policy("[[rule]]\nchannels = \"/default/*\"\nallow = \"everything\"\n");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !scrape(s)
        .await
        .contains(r#"appsync_relay_policy_reloads_total{result="error"} 1"#)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the broken file was never read"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    send_json(&mut ws, amplify_subscribe("news3", "/default/news")).await;
    assert_unauthorized(&recv_json(&mut ws).await, "subscribe_error", "news3");
    send_json(
        &mut ws,
        amplify_subscribe("mine2", &format!("/ns/users/{ALICE}/x")),
    )
    .await;
    assert_eq!(
        recv_json(&mut ws).await,
        json!({"type": "subscribe_success", "id": "mine2"})
    );

    // A valid file again: the broadcasts are back for new subscriptions.
    p.write_policy(POLICY);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        send_json(&mut ws, amplify_subscribe("news4", "/default/news")).await;
        let answer = recv_json(&mut ws).await;
        if answer["type"] == "subscribe_success" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never reloaded: {answer}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let metrics = scrape(s).await;
    assert!(
        metrics.contains(r#"appsync_relay_policy_reloads_total{result="ok"} 2"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn with_shared_channel_check_policy_joining_costs_appsync_nothing_per_browser() {
    let p = start_with_lifetime(
        3600,
        &[
            "--shared-channel",
            "/ns/teams/*",
            "--shared-channel-check",
            "policy",
        ],
    )
    .await;
    let s = &p.stack;
    let subs = s.emulator.operations("subscribe");
    let red = cookies(s, Some(json!(["red"])));
    let mut browsers = Vec::new();
    for i in 0..3 {
        let mut ws = browser(s, &red).await;
        let id = format!("r{i}");
        send_json(&mut ws, amplify_subscribe(&id, "/ns/teams/red/room")).await;
        assert_eq!(
            recv_json(&mut ws).await,
            json!({"type": "subscribe_success", "id": id})
        );
        browsers.push((ws, id));
    }
    // A member of another team: refused by the policy, before any routing.
    let mut blue = browser(s, &cookies(s, Some(json!(["blue"])))).await;
    send_json(&mut blue, amplify_subscribe("b", "/ns/teams/red/room")).await;
    assert_unauthorized(&recv_json(&mut blue).await, "subscribe_error", "b");
    // One subscription upstream for three browsers, and no probe.
    assert_eq!(s.emulator.operations("subscribe") - subs, 1);

    let event = json!({"n": 1}).to_string();
    let (status, _, body) = http(
        s.emulator.local_addr(),
        "POST",
        "/event",
        &[
            ("authorization", &s.good_token()),
            ("content-type", "application/json"),
        ],
        &json!({"channel": "/ns/teams/red/room", "events": [event]}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for (ws, id) in &mut browsers {
        let data = recv_json(ws).await;
        assert_eq!(data["type"], "data", "{data}");
        assert_eq!(data["id"], id.as_str());
    }
    let metrics = scrape(s).await;
    assert!(
        metrics.contains(r#"appsync_relay_shared_probes_total{outcome="skipped"} 3"#),
        "{metrics}"
    );
}

#[test]
fn a_broken_policy_is_a_start_up_error_that_names_the_rule() {
    let dir = Dir::new();
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, "[[rule]]\nchannels = \"/a\"\nallow = \"read\"\n").unwrap();
    let errors = serve_config(&["--channel-policy", path.to_str().unwrap()]).unwrap_err();
    assert!(
        errors.iter().any(|e| e.contains("--channel-policy")
            && e.contains("rule 1")
            && e.contains("\"read\"")),
        "{errors:?}"
    );
    // A missing file too.
    let missing = dir.path().join("absent.toml");
    assert!(serve_config(&["--channel-policy", missing.to_str().unwrap()]).is_err());
    // --shared-channel-check policy without a policy.
    let errors = serve_config(&[
        "--shared-channel",
        "/ns/*",
        "--shared-channel-check",
        "policy",
    ])
    .unwrap_err();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("--shared-channel-check policy")),
        "{errors:?}"
    );
}

/// `serve`'s configuration from a minimal command line plus `extra`.
fn serve_config(extra: &[&str]) -> Result<Config, Vec<String>> {
    let mut argv = vec![
        "appsync-relay",
        "serve",
        "--appsync-http-endpoint",
        "https://example.appsync-api.eu-west-1.amazonaws.com/event",
        "--cognito-user-pool-id",
        POOL_ID,
        "--cognito-client-id",
        CLIENT_ID,
        "--allowed-origin",
        ORIGIN,
    ];
    argv.extend_from_slice(extra);
    let Command::Serve(args) = Cli::try_parse_from(argv).unwrap().command else {
        unreachable!()
    };
    Config::from_args(&args)
}

async fn scrape(s: &Stack) -> String {
    let (_, _, body) = http(s.relay.admin_addr, "GET", "/metrics", &[], "").await;
    body
}
