//! The relay against MiniStack, an AWS emulator written by others: its
//! Cognito user pool issues the tokens (RS256, AWS-shaped `iss`), refreshes
//! them (`GetTokensFromRefreshToken`) and revokes them; its AppSync Events
//! API serves the real-time WebSocket and HTTP publish. Nothing of this
//! project is in the loop but the relay, and a passive tap that records
//! what the relay sends upstream: MiniStack accepts any `Authorization` on
//! AppSync, so the tests check that the relay sent each user's own token,
//! not only that MiniStack answered.

mod support;

use appsync_relay::session::{cookie_name, last_auth_user_cookie};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::ministack::{EventApi, MiniStack, Pool, Tokens};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// Forwards TCP to MiniStack, keeping a copy of what the relay sent (the
/// request heads are readable; WebSocket frames are masked).
struct Tap {
    port: u16,
    sent: Arc<Mutex<Vec<u8>>>,
}

impl Tap {
    async fn start(to: String) -> Tap {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let log = sent.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let to = to.clone();
                let log = log.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(&to).await else {
                        return;
                    };
                    let (mut ri, mut wi) = inbound.split();
                    let (mut ro, mut wo) = tokio::io::split(outbound);
                    let up = async {
                        let mut buf = [0u8; 8192];
                        loop {
                            let n = match ri.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            {
                                let mut l = log.lock().unwrap();
                                if l.len() < 4 << 20 {
                                    l.extend_from_slice(&buf[..n]);
                                }
                            }
                            if wo.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = wo.shutdown().await;
                    };
                    let down = async {
                        let _ = tokio::io::copy(&mut ro, &mut wi).await;
                        let _ = wi.shutdown().await;
                    };
                    tokio::join!(up, down);
                });
            }
        });
        Tap { port, sent }
    }

    fn sent(&self) -> String {
        String::from_utf8_lossy(&self.sent.lock().unwrap()).into_owned()
    }
}

/// The `Authorization` values of every `header-` subprotocol the relay
/// offered upstream.
fn upgrade_authorizations(sent: &str) -> Vec<String> {
    sent.lines()
        .filter(|l| {
            l.to_ascii_lowercase()
                .starts_with("sec-websocket-protocol:")
        })
        .flat_map(|l| l.split([',', ':']).map(str::trim).collect::<Vec<_>>())
        .filter_map(|p| p.strip_prefix("header-"))
        .filter_map(|b64| {
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(b64)
                .ok()?;
            let v: Value = serde_json::from_slice(&bytes).ok()?;
            v["Authorization"].as_str().map(str::to_string)
        })
        .collect()
}

struct Setup {
    ms: MiniStack,
    pool: Pool,
    _api: EventApi,
    tap: Tap,
    relay: appsync_relay::server::RelayHandle,
}

async fn setup(access_seconds: u64) -> Setup {
    setup_with(access_seconds, &[]).await
}

/// [`setup`] with more relay flags.
async fn setup_with(access_seconds: u64, extra: &[&str]) -> Setup {
    let ms = MiniStack::start().await;
    let pool = ms.pool(access_seconds).await;
    let api = ms.event_api(&pool).await;
    let tap = Tap::start(ms.addr()).await;
    // The endpoints keep MiniStack's virtual host names (it routes on the
    // Host header) with the tap's port; --appsync-address makes the relay
    // connect to 127.0.0.1 instead of resolving them.
    let host = |h: &str| format!("{}:{}", h.rsplit_once(':').unwrap().0, tap.port);
    let http_endpoint = format!("http://{}/event", host(&api.http_host));
    let realtime = format!("ws://{}/event/realtime", host(&api.realtime_host));
    let issuer = ms.issuer(&pool);
    let jwks = ms.jwks_url(&pool);
    let cognito = ms.cognito_endpoint();
    let argv = vec![
        "appsync-relay",
        "serve",
        "--appsync-http-endpoint",
        &http_endpoint,
        "--appsync-realtime-endpoint",
        &realtime,
        "--appsync-address",
        "127.0.0.1",
        "--cognito-user-pool-id",
        &pool.id,
        "--cognito-client-id",
        &pool.client_id,
        "--cognito-issuer",
        &issuer,
        "--cognito-jwks-url",
        &jwks,
        "--cognito-endpoint",
        &cognito,
        "--allowed-origin",
        ORIGIN,
        "--jwt-leeway",
        "0",
    ];
    let mut argv = argv;
    argv.extend_from_slice(extra);
    use clap::Parser as _;
    let config = match appsync_relay::cli::Cli::try_parse_from(argv)
        .expect("valid flags")
        .command
    {
        appsync_relay::cli::Command::Serve(args) => {
            appsync_relay::config::Config::from_args(&args).expect("valid config")
        }
        _ => unreachable!(),
    };
    let relay = start_relay(config).await;
    Setup {
        ms,
        pool,
        _api: api,
        tap,
        relay,
    }
}

fn cookies(pool: &Pool, username: &str, t: &Tokens) -> String {
    let name = |suffix| cookie_name(&pool.client_id, username, suffix);
    format!(
        "{}={}; {}={}; {}={}; {}={}",
        last_auth_user_cookie(&pool.client_id),
        appsync_relay::session::encode_username(username),
        name("accessToken"),
        t.access,
        name("idToken"),
        t.id,
        name("refreshToken"),
        t.refresh,
    )
}

fn realtime_url(s: &Setup) -> String {
    format!("ws://{}/event/realtime", s.relay.public_addr)
}

async fn next_data(ws: &mut Ws) -> Value {
    loop {
        let v = recv_json(ws).await;
        match v["type"].as_str() {
            Some("ka") => continue,
            _ => return v,
        }
    }
}

#[tokio::test]
async fn two_users_exchange_events_through_the_relay_with_their_own_tokens() {
    let s = setup(3600).await;
    let alice = s.ms.sign_up_and_in(&s.pool, "alice").await;
    let bob = s.ms.sign_up_and_in(&s.pool, "bob").await;
    let mut a = connect(&realtime_url(&s), &cookies(&s.pool, "alice", &alice)).await;
    let mut b = connect(&realtime_url(&s), &cookies(&s.pool, "bob", &bob)).await;
    init(&mut a).await;
    init(&mut b).await;
    // Alice on the exact channel, Bob on a one-level wildcard.
    send_json(&mut a, amplify_subscribe("a1", "/default/board/room1")).await;
    assert_eq!(next_data(&mut a).await["type"], "subscribe_success");
    send_json(&mut b, amplify_subscribe("b1", "/default/board/*")).await;
    assert_eq!(next_data(&mut b).await["type"], "subscribe_success");

    // Bob publishes over the WebSocket: both receive it.
    send_json(
        &mut b,
        amplify_publish("p1", "/default/board/room1", &[json!({"card": "from-bob"})]),
    )
    .await;
    let mut got_ack = false;
    let mut got_own = false;
    while !(got_ack && got_own) {
        let v = next_data(&mut b).await;
        match v["type"].as_str() {
            Some("publish_success") => got_ack = true,
            Some("data") => {
                assert_eq!(v["id"], "b1");
                got_own = v["event"].as_str().unwrap().contains("from-bob");
            }
            other => panic!("bob saw {other:?}: {v}"),
        }
    }
    let v = next_data(&mut a).await;
    assert_eq!(
        (v["type"].as_str(), v["id"].as_str()),
        (Some("data"), Some("a1"))
    );
    assert!(v["event"].as_str().unwrap().contains("from-bob"));

    // Alice publishes over HTTP through the relay: Bob receives it.
    let cookie = cookies(&s.pool, "alice", &alice);
    let (status, _, body) = http(
        s.relay.public_addr,
        "POST",
        "/event",
        &[("origin", ORIGIN), ("cookie", &cookie), ("content-type", "application/json")],
        &json!({"channel": "/default/board/room2", "events": [json!({"card": "from-alice"}).to_string()]}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v = next_data(&mut b).await;
    assert!(v["event"].as_str().unwrap().contains("from-alice"), "{v}");

    // What the relay sent upstream: each socket with its own user's token,
    // the HTTP publish with Alice's, and no cookie anywhere.
    let sent = s.tap.sent();
    let auths = upgrade_authorizations(&sent);
    assert!(
        auths.contains(&alice.access) && auths.contains(&bob.access),
        "{auths:?}"
    );
    assert_eq!(auths.len(), 2);
    assert!(
        sent.contains(&format!("authorization: {}\r\n", alice.access)),
        "HTTP publish did not carry Alice's token"
    );
    assert!(
        !sent.to_ascii_lowercase().contains("cookie:"),
        "a cookie went upstream"
    );
    assert!(!sent.contains(&alice.refresh) && !sent.contains(&bob.refresh));
}

#[tokio::test]
async fn what_the_relay_refuses_never_reaches_ministack_and_ministacks_refusals_reach_the_browser()
{
    let s = setup(3600).await;
    let alice = s.ms.sign_up_and_in(&s.pool, "alice").await;
    let url = realtime_url(&s);
    // No session, another origin, a token MiniStack would have accepted.
    match try_connect(&url, &Upgrade::browser("theme=dark")).await {
        Attempt::Refused(401, _) => {}
        other => panic!("no session: {other:?}"),
    }
    let mut foreign = Upgrade::browser(&cookies(&s.pool, "alice", &alice));
    foreign.origin = Some("https://evil.example".into());
    match try_connect(&url, &foreign).await {
        Attempt::Refused(403, _) => {}
        other => panic!("foreign origin: {other:?}"),
    }
    let forged = Tokens {
        access: sign(&access_claims(&s.ms.issuer(&s.pool)), signing_key()),
        ..alice.clone()
    };
    match try_connect(&url, &Upgrade::browser(&cookies(&s.pool, "alice", &forged))).await {
        Attempt::Refused(401, _) => {}
        other => panic!("forged token: {other:?}"),
    }
    assert!(
        upgrade_authorizations(&s.tap.sent()).is_empty(),
        "a refused handshake went upstream"
    );

    // MiniStack refuses a namespace that does not exist: the browser sees it.
    let mut a = connect(&url, &cookies(&s.pool, "alice", &alice)).await;
    init(&mut a).await;
    send_json(&mut a, amplify_subscribe("x1", "/nowhere/room")).await;
    let v = next_data(&mut a).await;
    assert_eq!(v["type"], "subscribe_error", "{v}");
    assert_eq!(v["id"], "x1");
}

#[tokio::test]
async fn an_expired_session_is_renewed_by_ministack_and_a_revoked_one_ends() {
    let s = setup(3).await;
    let alice = s.ms.sign_up_and_in(&s.pool, "alice").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Expired: the handshake renews with GetTokensFromRefreshToken.
    let url = realtime_url(&s);
    let mut ws =
        match try_connect(&url, &Upgrade::browser(&cookies(&s.pool, "alice", &alice))).await {
            Attempt::Open(ws, headers) => {
                let set: Vec<_> = headers.get_all("set-cookie").iter().collect();
                assert!(
                    set.iter()
                        .any(|v| v.to_str().unwrap().contains(".accessToken=")),
                    "no renewed access token written: {set:?}"
                );
                *ws
            }
            other => panic!("expired session refused: {other:?}"),
        };
    init(&mut ws).await;
    send_json(&mut ws, amplify_subscribe("s1", "/default/renewed")).await;
    assert_eq!(next_data(&mut ws).await["type"], "subscribe_success");
    let auths = upgrade_authorizations(&s.tap.sent());
    assert_eq!(auths.len(), 1);
    assert_ne!(auths[0], alice.access, "the expired token went upstream");

    // Revoked at Cognito: the socket's next renewal (at half its 3 s life)
    // is refused and the socket ends with 4401.
    s.ms.revoke(&s.pool, &alice.refresh).await;
    let code = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Close(f) = m {
                return f.map(|f| u16::from(f.code));
            }
        }
        None
    })
    .await
    .expect("the revoked session's socket stayed open");
    assert_eq!(code, Some(4401));
    match try_connect(&url, &Upgrade::browser(&cookies(&s.pool, "alice", &alice))).await {
        Attempt::Refused(401, _) => {}
        other => panic!("revoked session reconnected: {other:?}"),
    }
}

/// `appsync-relay check` against MiniStack's Cognito and AppSync Events,
/// with the cookies of a real sign-in there: every check passes, the round
/// trip included (with the user's own token reaching MiniStack); a wrong
/// app client id is named by the sign-in (its cookies are another client's)
/// and by MiniStack's Cognito.
#[tokio::test]
async fn check_passes_against_ministack_and_names_a_wrong_client() {
    let ms = MiniStack::start().await;
    let pool = ms.pool(3600).await;
    let api = ms.event_api(&pool).await;
    let tap = Tap::start(ms.addr()).await;
    let host = |h: &str| format!("{}:{}", h.rsplit_once(':').unwrap().0, tap.port);
    let http_endpoint = format!("http://{}/event", host(&api.http_host));
    let realtime = format!("ws://{}/event/realtime", host(&api.realtime_host));
    let tokens = ms.sign_up_and_in(&pool, "carol").await;
    let cookie_file = std::env::temp_dir().join(format!("ministack-check-{}", std::process::id()));
    std::fs::write(&cookie_file, cookies(&pool, "carol", &tokens)).unwrap();
    let (issuer, jwks, cognito) = (ms.issuer(&pool), ms.jwks_url(&pool), ms.cognito_endpoint());
    let argv = |client_id: &str| -> Vec<String> {
        [
            "appsync-relay",
            "check",
            "--appsync-http-endpoint",
            &http_endpoint,
            "--appsync-realtime-endpoint",
            &realtime,
            "--appsync-address",
            "127.0.0.1",
            "--cognito-user-pool-id",
            &pool.id,
            "--cognito-client-id",
            client_id,
            "--cognito-issuer",
            &issuer,
            "--cognito-jwks-url",
            &jwks,
            "--cognito-endpoint",
            &cognito,
            "--allowed-origin",
            ORIGIN,
            "--cookie-file",
            cookie_file.to_str().unwrap(),
            "--check-channel",
            "/default/relay-check",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    use appsync_relay::check::Status;
    use clap::Parser as _;
    let run = |argv: Vec<String>| async move {
        match appsync_relay::cli::Cli::try_parse_from(argv)
            .unwrap()
            .command
        {
            appsync_relay::cli::Command::Check(args) => appsync_relay::check::run(&args).await,
            _ => unreachable!(),
        }
    };
    let report = run(argv(&pool.client_id)).await;
    eprintln!("{}", report.text());
    assert!(report.ok, "{}", report.text());
    for check in [
        "openid_configuration",
        "jwks",
        "token",
        "cognito",
        "round_trip.http_publish",
        "round_trip.unsubscribe",
    ] {
        assert!(
            report
                .checks
                .iter()
                .any(|l| l.check == check && l.status == Status::Pass),
            "{check}: {}",
            report.text()
        );
    }
    // MiniStack accepts any Authorization: what the relay sent is checked.
    let sent = tap.sent();
    assert!(
        upgrade_authorizations(&sent).contains(&tokens.access),
        "the check's socket did not carry carol's token"
    );
    assert!(!report.json().contains(&tokens.access) && !report.json().contains(&tokens.refresh));

    let report = run(argv("wrongclient123")).await;
    let failed = report.failures();
    assert!(
        failed.contains(&"cognito") && failed.contains(&"sign_in"),
        "{}",
        report.text()
    );
    let _ = std::fs::remove_file(&cookie_file);
}

#[tokio::test]
async fn a_channel_policy_decides_on_ministacks_own_tokens() {
    let dir = std::env::temp_dir().join(format!("ministack-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("policy.toml");
    std::fs::write(
        &policy,
        "[[rule]]\nchannels = [\"/default/users/{sub}\", \"/default/users/{sub}/*\"]\nallow = [\"subscribe\", \"publish\"]\n\
         [[rule]]\nchannels = \"/default/teams/{cognito:groups}/*\"\nallow = \"subscribe\"\n",
    )
    .unwrap();
    let s = setup_with(3600, &["--channel-policy", policy.to_str().unwrap()]).await;
    // Alice signs up (her tokens of now are not used: she joins a group
    // first).
    s.ms.sign_up_and_in(&s.pool, "alice").await;
    // Alice joins MiniStack's group "red"; her next sign-in's access token
    // carries `cognito:groups` as Cognito writes it.
    s.ms.cognito(
        "CreateGroup",
        json!({"UserPoolId": s.pool.id, "GroupName": "red"}),
    )
    .await;
    s.ms.cognito(
        "AdminAddUserToGroup",
        json!({"UserPoolId": s.pool.id, "Username": "alice", "GroupName": "red"}),
    )
    .await;
    let again =
        s.ms.cognito(
            "InitiateAuth",
            json!({
                "AuthFlow": "USER_PASSWORD_AUTH",
                "ClientId": s.pool.client_id,
                "AuthParameters": {"USERNAME": "alice", "PASSWORD": "Passw0rd!relay"},
            }),
        )
        .await;
    let r = &again["AuthenticationResult"];
    let alice = Tokens {
        access: r["AccessToken"].as_str().unwrap().to_string(),
        id: r["IdToken"].as_str().unwrap().to_string(),
        refresh: r["RefreshToken"].as_str().unwrap().to_string(),
    };
    let bob = s.ms.sign_up_and_in(&s.pool, "bob").await;
    let sub_of = |t: &Tokens| {
        use base64::Engine as _;
        let payload = t.access.split('.').nth(1).unwrap();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        serde_json::from_slice::<Value>(&bytes).unwrap()["sub"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (alice_sub, bob_sub) = (sub_of(&alice), sub_of(&bob));
    assert_ne!(alice_sub, bob_sub);
    let url = realtime_url(&s);
    let mut a = connect(&url, &cookies(&s.pool, "alice", &alice)).await;
    init(&mut a).await;
    // Her own channel: MiniStack's sub in MiniStack's token opens it.
    let own = format!("/default/users/{alice_sub}/inbox");
    send_json(&mut a, amplify_subscribe("own", &own)).await;
    assert_eq!(
        next_data(&mut a).await,
        json!({"type": "subscribe_success", "id": "own"})
    );
    // Bob's: refused by the relay itself, in AppSync's words.
    send_json(
        &mut a,
        amplify_subscribe("bobs", &format!("/default/users/{bob_sub}/inbox")),
    )
    .await;
    let v = next_data(&mut a).await;
    assert_eq!(v["type"], "subscribe_error", "{v}");
    assert_eq!(v["errors"][0]["errorType"], "UnauthorizedException", "{v}");
    assert_eq!(
        v["errors"][0]["message"], "Not authorized by the channel policy",
        "{v}"
    );
    // Her group's channels, and not another group's.
    send_json(&mut a, amplify_subscribe("red", "/default/teams/red/*")).await;
    assert_eq!(
        next_data(&mut a).await,
        json!({"type": "subscribe_success", "id": "red"})
    );
    send_json(&mut a, amplify_subscribe("blue", "/default/teams/blue/*")).await;
    let v = next_data(&mut a).await;
    assert_eq!(v["type"], "subscribe_error", "{v}");
    assert_eq!(
        v["errors"][0]["message"], "Not authorized by the channel policy",
        "{v}"
    );
    // A publish on her channel goes through MiniStack and back.
    send_json(&mut a, amplify_publish("p1", &own, &[json!({"n": 1})])).await;
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(next_data(&mut a).await);
    }
    assert!(
        seen.iter().any(|f| f["type"] == "publish_success"),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|f| f["type"] == "data" && f["id"] == "own"),
        "{seen:?}"
    );
    // An HTTP publish to Bob's channel: 403, and nothing of it upstream.
    let (status, _, body) = http(
        s.relay.public_addr,
        "POST",
        "/event",
        &[
            ("origin", ORIGIN),
            ("cookie", &cookies(&s.pool, "alice", &alice)),
            ("content-type", "application/json"),
        ],
        &json!({"channel": format!("/default/users/{bob_sub}"), "events": ["{}"]}).to_string(),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        !s.tap.sent().contains(&bob_sub),
        "Bob's channel reached MiniStack"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
