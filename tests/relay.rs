//! End-to-end behaviour of the relay: a real JWKS with real RSA keys, the
//! strict emulator as AppSync (checking every token it is given), and
//! WebSocket clients that behave like Amplify in a browser.

mod support;

use futures_util::SinkExt;
use serde_json::{json, Value};
use std::time::Duration;
use support::*;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn relays_subscribe_publish_and_data_with_the_real_token() {
    let stack = Stack::start().await;
    let token = stack.good_token();
    let cookies = amplify_cookies(Some(&token), None);

    let mut sub = connect(&stack.realtime_url(), &cookies).await;
    let ack = init(&mut sub).await;
    assert_eq!(ack["connectionTimeoutMs"], 300000);
    send_json(&mut sub, amplify_subscribe("sub-1", "/default/room")).await;
    let ok = recv_json(&mut sub).await;
    assert_eq!(ok, json!({"type": "subscribe_success", "id": "sub-1"}));

    // Publish over a second browser socket.
    let mut publisher = connect(&stack.realtime_url(), &cookies).await;
    init(&mut publisher).await;
    send_json(
        &mut publisher,
        amplify_publish("pub-1", "/default/room", &[json!({"n": 1})]),
    )
    .await;
    let ack = recv_json(&mut publisher).await;
    assert_eq!(ack["type"], "publish_success", "{ack}");
    assert_eq!(ack["id"], "pub-1");

    let data = recv_json(&mut sub).await;
    assert_eq!(data["type"], "data");
    assert_eq!(data["id"], "sub-1");
    assert_eq!(
        serde_json::from_str::<Value>(data["event"].as_str().unwrap()).unwrap(),
        json!({"n": 1})
    );

    // And over HTTP publish.
    let (status, _, body) = http(
        stack.relay.public_addr,
        "POST",
        "/event",
        &[
            ("origin", ORIGIN),
            ("cookie", &cookies),
            ("content-type", "application/json"),
            ("x-api-key", PLACEHOLDER_KEY),
        ],
        &json!({"channel": "/default/room", "events": [json!({"n": 2}).to_string()]}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["successful"].as_array().unwrap().len(), 1);
    let data = recv_json(&mut sub).await;
    assert_eq!(
        serde_json::from_str::<Value>(data["event"].as_str().unwrap()).unwrap(),
        json!({"n": 2})
    );

    // Upstream saw the user's token — on connect, subscribe, publish and
    // HTTP publish — and never the browser's placeholder.
    let seen = stack.emulator.seen_authorizations();
    assert!(seen.len() >= 5, "{seen:?}");
    assert!(
        seen.iter().all(|a| *a == token),
        "upstream saw something other than the user's token"
    );
    assert!(!seen.iter().any(|a| a.contains(PLACEHOLDER_KEY)));
}

#[tokio::test]
async fn client_supplied_authorization_never_reaches_upstream() {
    let stack = Stack::start().await;
    let mut ws = connect(&stack.realtime_url(), &stack.good_cookies()).await;
    init(&mut ws).await;
    let stolen = sign(&access_claims(&stack.jwks.issuer()), signing_key());
    let frame = json!({
        "type": "subscribe", "id": "s", "channel": "/default/x",
        "authorization": {"Authorization": "attacker-token", "host": "evil"},
        "AUTHORIZATION": {"Authorization": stolen},
        "payload": {"extensions": {"Authorization": {"Authorization": "attacker-token-2"}}}
    });
    send_json(&mut ws, frame).await;
    assert_eq!(recv_json(&mut ws).await["type"], "subscribe_success");
    let seen = stack.emulator.seen_authorizations();
    assert!(
        !seen
            .iter()
            .any(|a| a.contains("attacker-token") || *a == stolen),
        "{seen:?}"
    );
}

#[tokio::test]
async fn selects_the_appsync_subprotocol_and_sets_no_cookie() {
    let stack = Stack::start().await;
    match try_connect(
        &stack.realtime_url(),
        &Upgrade::browser(&stack.good_cookies()),
    )
    .await
    {
        Attempt::Open(_, headers) => {
            assert_eq!(headers["sec-websocket-protocol"], "aws-appsync-event-ws");
            assert!(headers.get("set-cookie").is_none());
        }
        Attempt::Refused(s, b) => panic!("refused {s} {b}"),
        Attempt::Failed(e) => panic!("transport failure: {e}"),
    }
}

/// Every way a handshake must fail, with the status the contract requires.
#[tokio::test]
async fn refuses_bad_handshakes_with_the_contract_status() {
    let stack = Stack::start().await;
    let iss = stack.jwks.issuer();
    let good = stack.good_token();
    let mut expired = access_claims(&iss);
    expired["exp"] = json!(now() - 60);
    expired["iat"] = json!(now() - 3660);
    let mut future = access_claims(&iss);
    future["nbf"] = json!(now() + 600);
    let mut wrong_iss = access_claims(&iss);
    wrong_iss["iss"] = json!("https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_OtherPool");
    let mut wrong_client = access_claims(&iss);
    wrong_client["client_id"] = json!("someotherclient");
    let mut unknown_kid = KeyPair::generate("not-in-jwks");
    unknown_kid.private_pem = signing_key().private_pem.clone();
    let header_none = json!({"alg": "none", "typ": "JWT", "kid": "key-1"});
    let header_none_caps = json!({"alg": "None", "kid": "key-1"});
    let mut no_kid_claims = access_claims(&iss);
    no_kid_claims["jti"] = json!("nokid");
    let no_kid = {
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        let enc =
            jsonwebtoken::EncodingKey::from_rsa_pem(signing_key().private_pem.as_bytes()).unwrap();
        jsonwebtoken::encode(&header, &no_kid_claims, &enc).unwrap()
    };
    let tampered = {
        let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
        let mut claims = access_claims(&iss);
        claims["username"] = json!("mallory");
        parts[1] = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            claims.to_string(),
        );
        parts.join(".")
    };

    let cookie = |t: &str| amplify_cookies(Some(t), None);
    let no_refresh = |c: &str| {
        c.split("; ")
            .filter(|p| !p.contains(".refreshToken="))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let cases: Vec<(&str, Upgrade, u16, &str)> = vec![
        (
            "no cookie",
            Upgrade {
                cookie: None,
                ..Upgrade::browser("")
            },
            401,
            "no_session",
        ),
        (
            "foreign origin",
            Upgrade {
                origin: Some("https://evil.example".into()),
                ..Upgrade::browser(&cookie(&good))
            },
            403,
            "origin_forbidden",
        ),
        (
            "suffix origin",
            Upgrade {
                origin: Some("https://app.example.com.evil.test".into()),
                ..Upgrade::browser(&cookie(&good))
            },
            403,
            "origin_forbidden",
        ),
        (
            "http origin",
            Upgrade {
                origin: Some("http://app.example.com".into()),
                ..Upgrade::browser(&cookie(&good))
            },
            403,
            "origin_forbidden",
        ),
        (
            "null origin",
            Upgrade {
                origin: Some("null".into()),
                ..Upgrade::browser(&cookie(&good))
            },
            403,
            "origin_forbidden",
        ),
        (
            "missing origin",
            Upgrade {
                origin: None,
                ..Upgrade::browser(&cookie(&good))
            },
            403,
            "origin_missing",
        ),
        (
            "no subprotocol",
            Upgrade {
                protocols: None,
                ..Upgrade::browser(&cookie(&good))
            },
            400,
            "no_subprotocol",
        ),
        (
            "only header- subprotocol",
            Upgrade {
                protocols: Some(placeholder_header_protocol()),
                ..Upgrade::browser(&cookie(&good))
            },
            400,
            "no_subprotocol",
        ),
        (
            "forged signature (other key, same kid)",
            Upgrade::browser(&cookie(&sign(&access_claims(&iss), forger_key()))),
            401,
            "token_signature",
        ),
        (
            "tampered payload",
            Upgrade::browser(&cookie(&tampered)),
            401,
            "token_signature",
        ),
        (
            "alg none",
            Upgrade::browser(&cookie(&raw_token(&header_none, &access_claims(&iss), b""))),
            401,
            "token_algorithm",
        ),
        (
            "alg None",
            Upgrade::browser(&cookie(&raw_token(
                &header_none_caps,
                &access_claims(&iss),
                b"",
            ))),
            401,
            "token_algorithm",
        ),
        (
            "HS256 with the public key",
            Upgrade::browser(&cookie(&hs256_with_public_key(
                &access_claims(&iss),
                signing_key(),
            ))),
            401,
            "token_algorithm",
        ),
        (
            "unknown kid",
            Upgrade::browser(&cookie(&sign(&access_claims(&iss), &unknown_kid))),
            401,
            "token_unknown_kid",
        ),
        (
            "unknown kid again (refetch is rate-limited)",
            Upgrade::browser(&cookie(&sign(&access_claims(&iss), &unknown_kid))),
            401,
            "token_unknown_kid",
        ),
        (
            "no kid",
            Upgrade::browser(&cookie(&no_kid)),
            401,
            "token_missing_kid",
        ),
        (
            "wrong issuer",
            Upgrade::browser(&cookie(&sign(&wrong_iss, signing_key()))),
            401,
            "token_issuer",
        ),
        (
            "wrong client id",
            Upgrade::browser(&cookie(&sign(&wrong_client, signing_key()))),
            401,
            "token_audience",
        ),
        (
            "ID token where access expected",
            Upgrade::browser(&cookie(&sign(&id_claims(&iss), signing_key()))),
            401,
            "token_use",
        ),
        (
            "expired, refresh token unknown to Cognito",
            Upgrade::browser(&cookie(&sign(&expired, signing_key()))),
            401,
            "session_ended",
        ),
        (
            "expired, no refresh token",
            Upgrade::browser(&no_refresh(&cookie(&sign(&expired, signing_key())))),
            401,
            "token_expired",
        ),
        (
            "not yet valid",
            Upgrade::browser(&cookie(&sign(&future, signing_key()))),
            401,
            "token_not_yet_valid",
        ),
        (
            "garbage token",
            Upgrade::browser(&cookie("not.a.jwt")),
            401,
            "token_malformed",
        ),
        (
            "oversized token",
            Upgrade::browser(&cookie(&"a".repeat(20_000))),
            401,
            "token_too_large",
        ),
        (
            "cookie for another app client",
            Upgrade::browser(&cookie(&good).replace(CLIENT_ID, "otherclient")),
            401,
            "no_session",
        ),
    ];
    for (name, upgrade, status, reason) in cases {
        match try_connect(&stack.realtime_url(), &upgrade).await {
            Attempt::Open(..) => panic!("{name}: got a 101"),
            Attempt::Failed(e) => panic!("transport failure: {e}"),
            Attempt::Refused(got, body) => {
                assert_eq!(got, status, "{name}: {body}");
                let body: Value = serde_json::from_str(&body)
                    .unwrap_or_else(|_| panic!("{name}: body is not JSON: {body}"));
                assert_eq!(body["reason"], reason, "{name}");
                assert!(
                    !body.to_string().contains("eyJ"),
                    "{name}: body leaks a token"
                );
            }
        }
    }
    // None of those reached upstream.
    assert_eq!(stack.emulator.seen_authorizations(), Vec::<String>::new());
    // The unknown kid triggered exactly one refetch (rate-limited): the
    // initial load plus one.
    assert_eq!(stack.jwks.fetch_count(), 2);
    // The admin metrics counted the refusals by reason, and leak nothing.
    let (status, _, metrics) = http(stack.relay.admin_addr, "GET", "/metrics", &[], "").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("appsync_relay_handshakes_total{outcome=\"token_signature\"} 2"),
        "{metrics}"
    );
    assert!(!metrics.contains("eyJ"));
}

#[tokio::test]
async fn refuses_non_upgrade_requests_on_the_realtime_path() {
    let stack = Stack::start().await;
    let (status, _, body) = http(
        stack.relay.public_addr,
        "GET",
        "/event/realtime",
        &[("origin", ORIGIN)],
        "",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, _, _) = http(stack.relay.public_addr, "GET", "/elsewhere", &[], "").await;
    assert_eq!(status, 404);
    let (status, _, _) = http(stack.relay.public_addr, "GET", "/metrics", &[], "").await;
    assert_eq!(
        status, 404,
        "admin routes must not be on the public listener"
    );
}

#[tokio::test]
async fn id_token_mode_forwards_the_id_token() {
    let jwks = JwksServer::start(json!({"keys": [signing_key().jwk()]})).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let verifier = appsync_relay::verify::Verifier::new(
        appsync_relay::verify::VerifierConfig {
            token_use: appsync_relay::verify::TokenUse::Id,
            ..emulator_verifier(&jwks, CLIENT_ID).config().clone()
        },
        appsync_relay::http_client::build(Duration::from_secs(5)),
    );
    let mut cfg = appsync_relay::emulator::EmulatorConfig::new(
        appsync_relay::emulator::EmulatorAuth::Cognito(verifier),
    );
    cfg.http_host = Some(host);
    let emulator = appsync_relay::emulator::spawn(listener, cfg).await;
    let relay = start_relay(relay_config(
        &emulator.http_endpoint(),
        &jwks,
        &["--token-use", "id"],
    ))
    .await;
    let iss = jwks.issuer();
    let id = sign(&id_claims(&iss), signing_key());
    let access = sign(&access_claims(&iss), signing_key());
    let url = format!("ws://{}/event/realtime", relay.public_addr);
    let mut ws = connect(&url, &amplify_cookies(Some(&access), Some(&id))).await;
    init(&mut ws).await;
    send_json(&mut ws, amplify_subscribe("s", "/default/x")).await;
    assert_eq!(recv_json(&mut ws).await["type"], "subscribe_success");
    assert!(emulator.seen_authorizations().iter().all(|a| *a == id));
    // Access token offered where an ID token is expected: refused.
    match try_connect(
        &url,
        &Upgrade::browser(&amplify_cookies(Some(&access), Some(&access))),
    )
    .await
    {
        Attempt::Refused(401, body) => assert!(body.contains("token_use"), "{body}"),
        _ => panic!("access token accepted in id mode"),
    }
}

#[tokio::test]
async fn answers_bad_frames_locally_without_reaching_upstream() {
    let stack = Stack::start().await;
    let mut ws = connect(&stack.realtime_url(), &stack.good_cookies()).await;
    init(&mut ws).await;
    let before = stack.emulator.seen_authorizations().len();
    ws.send(Message::Text("{not json".into())).await.unwrap();
    let err = recv_json(&mut ws).await;
    assert_eq!(err["type"], "error");
    send_json(&mut ws, amplify_subscribe("bad id!", "/default/x")).await;
    assert_eq!(recv_json(&mut ws).await["type"], "subscribe_error");
    send_json(&mut ws, amplify_subscribe("s1", "/default/bad_channel")).await;
    let e = recv_json(&mut ws).await;
    assert_eq!(
        (e["type"].as_str(), e["id"].as_str()),
        (Some("subscribe_error"), Some("s1"))
    );
    let six: Vec<Value> = (0..6).map(|i| json!(i)).collect();
    send_json(&mut ws, amplify_publish("p1", "/default/x", &six)).await;
    assert_eq!(recv_json(&mut ws).await["type"], "publish_error");
    send_json(&mut ws, amplify_publish("p2", "/default/*", &[json!(1)])).await;
    let e = recv_json(&mut ws).await;
    assert_eq!(e["type"], "publish_error");
    assert_eq!(e["errors"][0]["errorType"], "BadRequestException");
    // None of it was forwarded (each forwarded subscribe/publish is an auth check).
    assert_eq!(stack.emulator.seen_authorizations().len(), before);
    assert_eq!(stack.emulator.subscription_count(), 0);
    // The socket is still usable.
    send_json(&mut ws, amplify_subscribe("s2", "/default/x")).await;
    assert_eq!(recv_json(&mut ws).await["type"], "subscribe_success");
}

/// AWS's documented channel pattern ends in an optional `/`
/// (event-api-websocket-protocol); the relay passes such channels on.
/// Before: the relay answered subscribe_error / publish_error itself.
#[tokio::test]
async fn a_channel_with_one_trailing_slash_is_aws_legal_and_passes() {
    let stack = Stack::start().await;
    let mut ws = connect(&stack.realtime_url(), &stack.good_cookies()).await;
    init(&mut ws).await;
    send_json(&mut ws, amplify_subscribe("s1", "/default/room/")).await;
    let ack = recv_json(&mut ws).await;
    assert_eq!(ack["type"], "subscribe_success", "{ack}");
    send_json(
        &mut ws,
        amplify_publish("p1", "default/room/", &[json!({"n": 1})]),
    )
    .await;
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(
            recv_json(&mut ws).await["type"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    got.sort();
    assert_eq!(got, ["data", "publish_success"]);
    // Two are not.
    send_json(
        &mut ws,
        amplify_publish("p2", "/default/room//", &[json!(1)]),
    )
    .await;
    assert_eq!(recv_json(&mut ws).await["type"], "publish_error");
}

#[tokio::test]
async fn binary_frames_close_with_1003() {
    let stack = Stack::start().await;
    let mut ws = connect(&stack.realtime_url(), &stack.good_cookies()).await;
    init(&mut ws).await;
    ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(recv_close(&mut ws).await, Some(1003));
}

#[tokio::test]
async fn oversized_messages_close_with_1009() {
    // A browser's frame may be 2 × 4096 + 64 KiB (Amplify sends the events
    // twice); past that it cannot even be read.
    let stack = Stack::start_with(&["--max-message-bytes", "4096"]).await;
    let mut ws = connect(&stack.realtime_url(), &stack.good_cookies()).await;
    init(&mut ws).await;
    let big = json!({"n": "x".repeat(80_000)});
    send_json(&mut ws, amplify_publish("p", "/default/x", &[big])).await;
    assert_eq!(recv_close(&mut ws).await, Some(1009));
}

/// A publish the relay can read but would forward larger than
/// `--max-message-bytes` is answered with publish_error; the socket stays.
/// Before: any frame over the limit closed the socket with 1009, also one
/// that was only large because Amplify sends each event twice.
#[tokio::test]
async fn a_publish_too_large_to_forward_is_answered_not_closed() {
    let stack = Stack::start_with(&["--max-message-bytes", "4096"]).await;
    let mut ws = connect(&stack.realtime_url(), &stack.good_cookies()).await;
    init(&mut ws).await;
    let big = json!({"n": "x".repeat(5000)});
    send_json(&mut ws, amplify_publish("p", "/default/x", &[big])).await;
    let answer = recv_json(&mut ws).await;
    assert_eq!(answer["type"], "publish_error", "{answer}");
    assert_eq!(answer["id"], "p");
    assert_eq!(answer["errors"][0]["errorType"], "BadRequestException");
    // Amplify's two copies of a 3 kB event (forwarded once: under 4096).
    let fits = json!({"n": "x".repeat(3000)});
    send_json(&mut ws, amplify_publish("q", "/default/x", &[fits])).await;
    assert_eq!(recv_json(&mut ws).await["type"], "publish_success");
}

async fn wait_for(mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within 5s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn browser_close_closes_upstream() {
    let stack = Stack::start().await;
    let mut ws = connect(&stack.realtime_url(), &stack.good_cookies()).await;
    init(&mut ws).await;
    assert_eq!(stack.emulator.connection_count(), 1);
    ws.close(None).await.unwrap();
    wait_for(|| stack.emulator.connection_count() == 0).await;
}

#[tokio::test]
async fn browser_vanishing_closes_upstream() {
    let stack = Stack::start().await;
    let mut ws = connect(&stack.realtime_url(), &stack.good_cookies()).await;
    init(&mut ws).await;
    drop(ws);
    wait_for(|| stack.emulator.connection_count() == 0).await;
}

#[tokio::test]
async fn upstream_close_passes_through_when_redial_is_off() {
    let stack = Stack::start_with(&["--upstream-redial-attempts", "0"]).await;
    let mut a = connect(&stack.realtime_url(), &stack.good_cookies()).await;
    init(&mut a).await;
    stack.emulator.close_all(4003);
    assert_eq!(recv_close(&mut a).await, Some(4003));

    let mut b = connect(&stack.realtime_url(), &stack.good_cookies()).await;
    init(&mut b).await;
    stack.emulator.close_all(1000);
    assert_eq!(recv_close(&mut b).await, Some(1000));

    let mut c = connect(&stack.realtime_url(), &stack.good_cookies()).await;
    init(&mut c).await;
    stack.emulator.abort_all();
    assert_eq!(
        recv_close(&mut c).await,
        Some(1013),
        "upstream dropping must tell the browser to retry later"
    );
}

/// Publishes from a fresh socket until `sub` receives it (the re-dialled
/// subscription may take a moment to be in place upstream).
async fn publish_until_received(stack: &Stack, sub: &mut Ws, channel: &str, marker: &str) {
    let mut publisher = connect(&stack.realtime_url(), &stack.good_cookies()).await;
    init(&mut publisher).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for n in 0.. {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{marker} never delivered"
        );
        send_json(
            &mut publisher,
            amplify_publish(&format!("p{n}"), channel, &[json!({"m": marker})]),
        )
        .await;
        assert_eq!(recv_json(&mut publisher).await["type"], "publish_success");
        if let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout(
            Duration::from_millis(300),
            futures_util::StreamExt::next(sub),
        )
        .await
        {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] == "data" && v["event"].as_str().unwrap().contains(marker) {
                assert_eq!(v["id"], "sub-1");
                return;
            }
            assert!(v["type"] == "data" || v["type"] == "ka", "browser saw {v}");
        }
    }
}

#[tokio::test]
async fn upstream_drop_is_redialled_without_closing_the_browser() {
    let stack = Stack::start().await;
    let mut sub = connect(&stack.realtime_url(), &stack.good_cookies()).await;
    init(&mut sub).await;
    send_json(&mut sub, amplify_subscribe("sub-1", "/default/redial")).await;
    assert_eq!(recv_json(&mut sub).await["type"], "subscribe_success");

    // AppSync ends the connection normally (as at its 24 h cap) ...
    stack.emulator.close_all(1000);
    publish_until_received(&stack, &mut sub, "/default/redial", "after-close").await;
    // ... or the network drops it without a close frame.
    stack.emulator.abort_all();
    publish_until_received(&stack, &mut sub, "/default/redial", "after-abort").await;

    // The subscriber never saw a second subscribe_success or connection_ack
    // (3 acks: the subscriber's and the two publishers').
    let (_, _, metrics) = http(stack.relay.admin_addr, "GET", "/metrics", &[], "").await;
    assert!(
        metrics.contains("appsync_relay_upstream_redials_total{result=\"ok\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("appsync_relay_frames_total{direction=\"upstream_to_client\",type=\"subscribe_success\"} 1"), "{metrics}");
    assert!(metrics.contains("appsync_relay_frames_total{direction=\"upstream_to_client\",type=\"connection_ack\"} 3"), "{metrics}");

    // A policy close from upstream is not re-dialled: it reaches the browser.
    stack.emulator.close_all(4003);
    assert_eq!(recv_close(&mut sub).await, Some(4003));
}

/// AppSync refusing the relay's token on a re-dial — whether on the
/// upgrade (HTTP 401, this project's emulator) or after it
/// (`connection_error` + close 4401, as MiniStack does) — makes the relay
/// renew the token and dial again; the browser's socket stays open and its
/// subscription keeps working. Before the post-upgrade style was handled
/// (`after_upgrade`), the relay re-dialled with the refused token until its
/// attempts ran out and closed the browser with 1013.
#[tokio::test]
async fn a_token_refused_on_redial_is_renewed_in_either_refusal_style() {
    for after_upgrade in [false, true] {
        let stack = Stack::start_with(&["--upstream-redial-attempts", "3"]).await;
        let s = stack.cognito.sign_in(USERNAME);
        let cookie = format!(
            "{}={USERNAME}; {}={}; {}={}",
            appsync_relay::session::last_auth_user_cookie(CLIENT_ID),
            appsync_relay::session::cookie_name(CLIENT_ID, USERNAME, "accessToken"),
            s.access,
            appsync_relay::session::cookie_name(CLIENT_ID, USERNAME, "refreshToken"),
            s.refresh,
        );
        let mut sub = connect(&stack.realtime_url(), &cookie).await;
        init(&mut sub).await;
        send_json(&mut sub, amplify_subscribe("sub-1", "/default/refused")).await;
        assert_eq!(recv_json(&mut sub).await["type"], "subscribe_success");

        stack.emulator.refuse_after_upgrade(after_upgrade);
        stack.emulator.revoke_credential(&s.access);
        stack.emulator.abort_all();
        publish_until_received(&stack, &mut sub, "/default/refused", "after-refusal").await;

        let (_, _, metrics) = http(stack.relay.admin_addr, "GET", "/metrics", &[], "").await;
        assert!(
            metrics.contains(
                "appsync_relay_token_refreshes_total{phase=\"connection\",result=\"ok\"} 1"
            ),
            "after_upgrade={after_upgrade}: {metrics}"
        );
        assert!(
            metrics.contains("appsync_relay_upstream_redials_total{result=\"ok\"} 1"),
            "after_upgrade={after_upgrade}: {metrics}"
        );
    }
}

#[tokio::test]
async fn upstream_gone_for_good_closes_the_browser_with_1013() {
    let stack = Stack::start_with(&["--upstream-redial-attempts", "2"]).await;
    let mut ws = connect(&stack.realtime_url(), &stack.good_cookies()).await;
    init(&mut ws).await;
    let Stack {
        emulator, relay, ..
    } = stack;
    emulator.shutdown().await;
    assert_eq!(recv_close(&mut ws).await, Some(1013));
    let (_, _, metrics) = http(relay.admin_addr, "GET", "/metrics", &[], "").await;
    assert!(
        metrics.contains("appsync_relay_upstream_redials_total{result=\"gave_up\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn upstream_down_is_502() {
    let jwks = JwksServer::start(json!({"keys": [signing_key().jwk()]})).await;
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let relay = start_relay(relay_config(&format!("http://{addr}/event"), &jwks, &[])).await;
    let cookies = amplify_cookies(
        Some(&sign(&access_claims(&jwks.issuer()), signing_key())),
        None,
    );
    let url = format!("ws://{}/event/realtime", relay.public_addr);
    match try_connect(&url, &Upgrade::browser(&cookies)).await {
        Attempt::Refused(status, body) => {
            assert_eq!(status, 502, "{body}");
            assert!(body.contains("upstream_unreachable"));
        }
        Attempt::Open(..) => panic!("101 with no upstream"),
        Attempt::Failed(e) => panic!("transport failure: {e}"),
    }
    let (status, _, body) = http(
        relay.public_addr,
        "POST",
        "/event",
        &[
            ("origin", ORIGIN),
            ("cookie", &cookies),
            ("content-type", "application/json"),
        ],
        r#"{"channel":"/default/x","events":["1"]}"#,
    )
    .await;
    assert_eq!(status, 502, "{body}");
}

#[tokio::test]
async fn upstream_too_slow_is_504() {
    let jwks = JwksServer::start(json!({"keys": [signing_key().jwk()]})).await;
    // Accepts TCP, never answers the upgrade.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let relay = start_relay(relay_config(
        &format!("http://{addr}/event"),
        &jwks,
        &["--upstream-timeout", "1"],
    ))
    .await;
    let cookies = amplify_cookies(
        Some(&sign(&access_claims(&jwks.issuer()), signing_key())),
        None,
    );
    let url = format!("ws://{}/event/realtime", relay.public_addr);
    match try_connect(&url, &Upgrade::browser(&cookies)).await {
        Attempt::Refused(status, body) => assert_eq!(status, 504, "{body}"),
        Attempt::Open(..) => panic!("101 with a silent upstream"),
        Attempt::Failed(e) => panic!("transport failure: {e}"),
    }
}

#[tokio::test]
async fn upstream_refusing_the_token_is_401() {
    // The emulator expects tokens for another app client, so it refuses the
    // (relay-valid) token on the upgrade, as AppSync would for a token its
    // API is not configured to accept.
    let jwks = JwksServer::start(json!({"keys": [signing_key().jwk()]})).await;
    let emulator = start_emulator(&jwks, "anotherclient").await;
    let relay = start_relay(relay_config(&emulator.http_endpoint(), &jwks, &[])).await;
    let cookies = amplify_cookies(
        Some(&sign(&access_claims(&jwks.issuer()), signing_key())),
        None,
    );
    let url = format!("ws://{}/event/realtime", relay.public_addr);
    match try_connect(&url, &Upgrade::browser(&cookies)).await {
        Attempt::Refused(status, body) => {
            assert_eq!(status, 401, "{body}");
            assert!(body.contains("upstream_unauthorized"), "{body}");
        }
        Attempt::Open(..) => panic!("101 although upstream refused"),
        Attempt::Failed(e) => panic!("transport failure: {e}"),
    }
    let (status, _, body) = http(
        relay.public_addr,
        "POST",
        "/event",
        &[
            ("origin", ORIGIN),
            ("cookie", &cookies),
            ("content-type", "application/json"),
        ],
        r#"{"channel":"/default/x","events":["1"]}"#,
    )
    .await;
    assert_eq!(status, 401, "upstream's own refusal is relayed: {body}");
}

#[tokio::test]
async fn http_publish_checks_origin_and_session() {
    let stack = Stack::start().await;
    let body = r#"{"channel":"/default/x","events":["1"]}"#;
    let good = stack.good_cookies();
    let cases: Vec<(Vec<(&str, &str)>, u16)> = vec![
        (
            vec![("cookie", &good), ("content-type", "application/json")],
            403,
        ),
        (
            vec![("origin", "https://evil.example"), ("cookie", &good)],
            403,
        ),
        (vec![("origin", ORIGIN)], 401),
        (
            vec![
                ("origin", ORIGIN),
                ("cookie", &good),
                ("authorization", "attacker"),
            ],
            200,
        ),
    ];
    for (headers, status) in cases {
        let (got, _, resp) = http(stack.relay.public_addr, "POST", "/event", &headers, body).await;
        assert_eq!(got, status, "{headers:?}: {resp}");
    }
    // Only the accepted publish reached upstream, carrying the cookie's token.
    let good_token = good
        .split("accessToken=")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap();
    assert_eq!(
        stack.emulator.seen_authorizations(),
        vec![good_token.to_string()]
    );
    assert!(!stack
        .emulator
        .seen_authorizations()
        .iter()
        .any(|a| a == "attacker"));
    let (got, _, _) = http(
        stack.relay.public_addr,
        "GET",
        "/event",
        &[("origin", ORIGIN)],
        "",
    )
    .await;
    assert_eq!(got, 405);
}

#[tokio::test]
async fn admin_endpoints_report_health_readiness_and_metrics() {
    let stack = Stack::start().await;
    let admin = stack.relay.admin_addr;
    assert_eq!(http(admin, "GET", "/healthz", &[], "").await.0, 200);
    assert_eq!(http(admin, "GET", "/readyz", &[], "").await.0, 200);
    let mut ws = connect(&stack.realtime_url(), &stack.good_cookies()).await;
    init(&mut ws).await;
    let (_, _, metrics) = http(admin, "GET", "/metrics", &[], "").await;
    assert!(
        metrics.contains("appsync_relay_connections_active 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("appsync_relay_handshakes_total{outcome=\"accepted\"} 1"),
        "{metrics}"
    );
    assert!(!metrics.contains(&stack.good_token()));
}

#[tokio::test]
async fn not_ready_until_jwks_loads_and_verification_is_cached() {
    let jwks = JwksServer::start(json!({"keys": []})).await;
    let emulator_jwks = JwksServer::start(json!({"keys": [signing_key().jwk()]})).await;
    let emulator = start_emulator(&emulator_jwks, CLIENT_ID).await;
    let public = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = relay_config(&emulator.http_endpoint(), &jwks, &[]);
    // Tokens are issued by the emulator's JWKS issuer in this test.
    config.issuer = emulator_jwks.issuer();
    let relay = appsync_relay::server::spawn(config, public, admin).unwrap();
    assert!(
        !relay.wait_ready(Duration::from_millis(300)).await,
        "ready without keys"
    );
    assert_eq!(
        http(relay.admin_addr, "GET", "/readyz", &[], "").await.0,
        503
    );
    *jwks.jwks.lock().unwrap() = json!({"keys": [signing_key().jwk()]});
    assert!(
        relay.wait_ready(Duration::from_secs(10)).await,
        "never became ready after keys appeared"
    );

    let cookies = amplify_cookies(
        Some(&sign(
            &access_claims(&emulator_jwks.issuer()),
            signing_key(),
        )),
        None,
    );
    let url = format!("ws://{}/event/realtime", relay.public_addr);
    let fetches = jwks.fetch_count();
    for _ in 0..3 {
        let mut ws = connect(&url, &cookies).await;
        init(&mut ws).await;
    }
    assert_eq!(
        jwks.fetch_count(),
        fetches,
        "known kid must not refetch the JWKS"
    );
}

#[tokio::test]
async fn drain_closes_open_sockets_with_1001() {
    let stack = Stack::start().await;
    let mut ws = connect(&stack.realtime_url(), &stack.good_cookies()).await;
    init(&mut ws).await;
    let Stack {
        relay, emulator, ..
    } = stack;
    let admin = relay.admin_addr;
    let state = relay.state.clone();
    let shutdown = tokio::spawn(relay.shutdown(Duration::ZERO, Duration::from_millis(200)));
    assert_eq!(recv_close(&mut ws).await, Some(1001));
    shutdown.await.unwrap();
    assert!(!state.is_ready());
    wait_for(|| emulator.connection_count() == 0).await;
    assert!(
        tokio::net::TcpStream::connect(admin).await.is_err(),
        "listeners must be closed after shutdown"
    );
}

#[tokio::test]
async fn browser_pings_are_answered_by_the_relay() {
    let stack = Stack::start().await;
    let mut ws = connect(&stack.realtime_url(), &stack.good_cookies()).await;
    init(&mut ws).await;
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    let pong = loop {
        match tokio::time::timeout(
            Duration::from_secs(5),
            futures_util::StreamExt::next(&mut ws),
        )
        .await
        .expect("no pong within 5s")
        {
            Some(Ok(Message::Pong(p))) => break p,
            Some(Ok(Message::Text(_))) => continue,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(&pong[..], b"are you there");
    // The ping was not relayed upstream as a frame: the socket still works.
    send_json(&mut ws, amplify_subscribe("s", "/default/x")).await;
    assert_eq!(recv_json(&mut ws).await["type"], "subscribe_success");
}
