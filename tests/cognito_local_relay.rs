//! The relay against a Cognito implementation we did not write: tokens are
//! issued by the real `cognito-local` (npm), the relay verifies them against
//! its JWKS, and the emulator (as AppSync) verifies them again.

#[path = "support/cognito_local.rs"]
mod cognito_local;
mod support;

use appsync_relay::cli::{Cli, Command};
use appsync_relay::config::Config;
use appsync_relay::emulator::{self, EmulatorAuth, EmulatorConfig, EmulatorHandle};
use appsync_relay::server::RelayHandle;
use appsync_relay::session;
use appsync_relay::verify::{TokenUse, Verifier, VerifierConfig};
use clap::Parser;
use cognito_local::CognitoLocal;
use serde_json::{json, Value};
use std::time::Duration;
use support::*;
use tokio::net::TcpListener;

const USER: &str = "alice+test@example.com";
const PASSWORD: &str = "Passw0rd!";

fn cookies_for(client_id: &str, username: &str, access: &str) -> String {
    format!(
        "{}={}; {}={access}",
        session::last_auth_user_cookie(client_id),
        session::encode_username(username),
        session::cookie_name(client_id, username, "accessToken"),
    )
}

/// The emulator (as AppSync, trusting cognito-local's pool) and a relay in
/// front of it configured through the real flags, plus `extra` flags.
async fn stack_for(cognito: &CognitoLocal, extra: &[&str]) -> (EmulatorHandle, RelayHandle) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let verifier = Verifier::new(
        VerifierConfig {
            issuer: cognito.issuer.clone(),
            jwks_url: cognito.jwks_url.clone(),
            client_id: cognito.client_id.clone(),
            token_use: TokenUse::Access,
            leeway: Duration::from_secs(0),
            jwks_refetch_interval: Duration::from_secs(10),
            fetch_timeout: Duration::from_secs(5),
            jwks_refresh_interval: Duration::from_secs(600),
            cache_capacity: 100,
        },
        appsync_relay::http_client::build(Duration::from_secs(5)),
    );
    let mut cfg = EmulatorConfig::new(EmulatorAuth::Cognito(verifier));
    cfg.http_host = Some(host);
    let emulator = emulator::spawn(listener, cfg).await;
    let http_endpoint = emulator.http_endpoint();
    let mut argv = vec![
        "appsync-relay",
        "serve",
        "--appsync-http-endpoint",
        &http_endpoint,
        "--cognito-user-pool-id",
        &cognito.user_pool_id,
        "--cognito-client-id",
        &cognito.client_id,
        "--cognito-issuer",
        &cognito.issuer,
        "--cognito-jwks-url",
        &cognito.jwks_url,
        "--allowed-origin",
        ORIGIN,
    ];
    argv.extend_from_slice(extra);
    let config = match Cli::try_parse_from(argv).unwrap().command {
        Command::Serve(args) => Config::from_args(&args).unwrap(),
        _ => unreachable!(),
    };
    (emulator, start_relay(config).await)
}

#[tokio::test]
async fn relays_with_tokens_issued_by_cognito_local() {
    let cognito = CognitoLocal::start().await;
    cognito.create_user(USER, PASSWORD).await;
    let tokens = cognito.sign_in(USER, PASSWORD).await;

    let (emulator, relay) = stack_for(&cognito, &[]).await;
    let url = format!("ws://{}/event/realtime", relay.public_addr);

    // The username has '@' and '+': the cookie name carries it encoded the
    // way Amplify writes it, and the relay must still find the session.
    let cookies = cookies_for(&cognito.client_id, USER, &tokens.access_token);
    assert!(cookies.contains("alice+test%40example.com.accessToken"));
    let mut ws = connect(&url, &cookies).await;
    init(&mut ws).await;
    send_json(&mut ws, amplify_subscribe("s1", "/default/cognito")).await;
    assert_eq!(recv_json(&mut ws).await["type"], "subscribe_success");
    let (status, _, body) = http(
        relay.public_addr,
        "POST",
        "/event",
        &[
            ("origin", ORIGIN),
            ("cookie", &cookies),
            ("content-type", "application/json"),
        ],
        &json!({"channel": "/default/cognito", "events": ["{\"hello\":\"cognito\"}"]}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let data = recv_json(&mut ws).await;
    assert_eq!(data["type"], "data");
    assert_eq!(
        serde_json::from_str::<Value>(data["event"].as_str().unwrap()).unwrap(),
        json!({"hello": "cognito"})
    );
    assert!(emulator
        .seen_authorizations()
        .iter()
        .all(|a| *a == tokens.access_token));

    // The ID token is not accepted in access mode.
    let id_cookies = cookies_for(&cognito.client_id, USER, &tokens.id_token);
    match try_connect(&url, &Upgrade::browser(&id_cookies)).await {
        Attempt::Refused(401, body) => assert!(body.contains("token_use"), "{body}"),
        _ => panic!("ID token accepted as access token"),
    }

    // A token cognito-local issued to another app client of the same pool
    // is refused, even when the cookies are named for our client.
    let other_client = cognito
        .create_app_client("other-app", &Default::default())
        .await
        .unwrap();
    let other = cognito
        .try_sign_in_with_client(&other_client, USER, PASSWORD)
        .await
        .unwrap();
    let forged = cookies_for(&cognito.client_id, USER, &other.access_token);
    match try_connect(&url, &Upgrade::browser(&forged)).await {
        Attempt::Refused(401, body) => assert!(body.contains("token_audience"), "{body}"),
        _ => panic!("token of another app client accepted"),
    }
}

#[tokio::test]
async fn refuses_expired_cognito_local_tokens() {
    let cognito = CognitoLocal::start_with(cognito_local::ClientOptions {
        access_token_validity: Some(Duration::from_secs(1)),
        ..Default::default()
    })
    .await;
    cognito.create_user(USER, PASSWORD).await;
    let tokens = cognito.sign_in(USER, PASSWORD).await;
    let (_emulator, relay) = stack_for(&cognito, &["--jwt-leeway", "0"]).await;
    let url = format!("ws://{}/event/realtime", relay.public_addr);
    let claims = cognito_local::jwt_claims(&tokens.access_token);
    let exp = claims["exp"].as_u64().unwrap();
    // Wait (bounded) until the token is past its exp, by the clock the
    // relay uses.
    while now() <= exp {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cookies = cookies_for(&cognito.client_id, USER, &tokens.access_token);
    match try_connect(&url, &Upgrade::browser(&cookies)).await {
        Attempt::Refused(401, body) => assert!(body.contains("token_expired"), "{body}"),
        _ => panic!("expired token accepted"),
    }
}

/// The lifecycle against a Cognito we did not write: cognito-local issues
/// 4-second tokens and renews them with `REFRESH_TOKEN_AUTH`; `RevokeToken`
/// ends the session.
#[tokio::test]
async fn cognito_local_sessions_are_renewed_and_end_on_revocation() {
    let cognito = CognitoLocal::start_with(cognito_local::ClientOptions {
        access_token_validity: Some(Duration::from_secs(4)),
        id_token_validity: Some(Duration::from_secs(4)),
        ..Default::default()
    })
    .await;
    cognito.create_user(USER, PASSWORD).await;
    let tokens = cognito.sign_in(USER, PASSWORD).await;

    let endpoint = format!("{}/", cognito.base_url);
    let (_emulator, relay) = stack_for(
        &cognito,
        &[
            "--jwt-leeway",
            "0",
            "--cognito-endpoint",
            &endpoint,
            "--refresh-api",
            "initiate-auth",
            "--refresh-before",
            "2",
        ],
    )
    .await;
    let url = format!("ws://{}/event/realtime", relay.public_addr);

    // Let the access token expire, then connect: the handshake renews it
    // with cognito-local and writes the new cookies on the 101.
    let exp = cognito_local::jwt_claims(&tokens.access_token)["exp"]
        .as_u64()
        .unwrap();
    while now() <= exp {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cookies = format!(
        "{}; {}={}",
        cookies_for(&cognito.client_id, USER, &tokens.access_token),
        session::cookie_name(&cognito.client_id, USER, "refreshToken"),
        tokens.refresh_token
    );
    let mut ws = match try_connect(&url, &Upgrade::browser(&cookies)).await {
        Attempt::Open(ws, headers) => {
            let renewed = headers
                .get_all("set-cookie")
                .iter()
                .any(|c| c.to_str().unwrap().contains(".accessToken=eyJ"));
            assert!(renewed, "no renewed access token cookie: {headers:?}");
            *ws
        }
        Attempt::Refused(s, b) => panic!("refused {s} {b}"),
        Attempt::Failed(e) => panic!("failed {e}"),
    };
    init(&mut ws).await;
    send_json(&mut ws, amplify_subscribe("s1", "/default/life")).await;
    assert_eq!(recv_json(&mut ws).await["type"], "subscribe_success");

    // Past the renewed token's lifetime, a subscribe still succeeds: the
    // relay renewed it in place (the emulator checks with zero leeway).
    tokio::time::sleep(Duration::from_secs(5)).await;
    send_json(&mut ws, amplify_subscribe("s2", "/default/life2")).await;
    let v = recv_json(&mut ws).await;
    assert_eq!(v["type"], "subscribe_success", "{v}");

    // Revoke the refresh token: the next renewal is refused, 4401.
    cognito.revoke(&tokens.refresh_token).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    let code = loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, futures_util::StreamExt::next(&mut ws))
            .await
            .expect("no close within one token lifetime")
        {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(f))) => {
                break f.map(|f| u16::from(f.code))
            }
            Some(Ok(_)) => continue,
            other => panic!("ended without close: {other:?}"),
        }
    };
    assert_eq!(code, Some(4401));
}
