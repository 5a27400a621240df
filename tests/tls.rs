//! TLS on the public listener: certificates from PEM files, picked up again
//! when the files change, a bad rotation never taking the listener down.

mod support;

use appsync_relay::tls::self_signed;
use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;
use support::*;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "appsync-relay-{name}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_pair(dir: &std::path::Path) -> String {
    let (cert, key) = self_signed(&["localhost"]).unwrap();
    // Key first, then certificate: the order a careless rotation might use.
    std::fs::write(dir.join("tls.key"), key).unwrap();
    std::fs::write(dir.join("tls.crt"), &cert).unwrap();
    cert
}

/// `serve` with the minimum required flags plus `extra`, through the real
/// parser and validation.
fn serve_config(extra: &[&str]) -> Result<appsync_relay::config::Config, Vec<String>> {
    let mut argv = vec![
        "appsync-relay",
        "serve",
        "--appsync-http-endpoint",
        "https://x.example/event",
        "--cognito-user-pool-id",
        "eu-west-1_abc",
        "--cognito-client-id",
        "c",
        "--allowed-origin",
        "https://app.example.com",
    ];
    argv.extend_from_slice(extra);
    match appsync_relay::cli::Cli::try_parse_from(argv)
        .unwrap()
        .command
    {
        appsync_relay::cli::Command::Serve(a) => appsync_relay::config::Config::from_args(&a),
        _ => unreachable!(),
    }
}

async fn subscribes_over(stack: &Stack, tls: std::sync::Arc<rustls::ClientConfig>) -> bool {
    let url = format!(
        "wss://localhost:{}/event/realtime",
        stack.relay.public_addr.port()
    );
    match try_connect_with(&url, &Upgrade::browser(&stack.good_cookies()), Some(tls)).await {
        Attempt::Open(ws, _) => {
            let mut ws = *ws;
            init(&mut ws).await;
            send_json(&mut ws, amplify_subscribe("s", "/default/tls")).await;
            recv_json(&mut ws).await["type"] == "subscribe_success"
        }
        _ => false,
    }
}

#[tokio::test]
async fn serves_tls_and_reloads_rotated_certificates() {
    let dir = temp_dir("tls");
    let first = write_pair(&dir);
    let cert = dir.join("tls.crt").display().to_string();
    let key = dir.join("tls.key").display().to_string();
    let stack = Stack::start_with(&[
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--tls-reload-interval",
        "1",
    ])
    .await;
    assert!(
        subscribes_over(&stack, tls_client(&first)).await,
        "first certificate not served"
    );

    // Rotate: the new certificate is served without a restart.
    let second = write_pair(&dir);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !subscribes_over(&stack, tls_client(&second)).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "rotated certificate never served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !subscribes_over(&stack, tls_client(&first)).await,
        "old certificate still served"
    );

    // A broken rotation (garbage certificate) keeps the last good one.
    std::fs::write(
        dir.join("tls.crt"),
        "-----BEGIN CERTIFICATE-----\nnot base64\n",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        subscribes_over(&stack, tls_client(&second)).await,
        "listener lost its certificate"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn mismatched_or_missing_tls_files_are_start_up_errors() {
    let dir = temp_dir("tls-bad");
    write_pair(&dir);
    let (_, other_key) = self_signed(&["localhost"]).unwrap();
    std::fs::write(dir.join("other.key"), other_key).unwrap();
    let cert = dir.join("tls.crt").display().to_string();
    let parse = |key: &str| serve_config(&["--tls-cert", &cert, "--tls-key", key]);
    let errs = parse(&dir.join("other.key").display().to_string()).unwrap_err();
    assert!(
        errs.iter().any(|e| e.contains("does not match")),
        "{errs:?}"
    );
    let errs = parse("/nonexistent/key.pem").unwrap_err();
    assert!(
        errs.iter().any(|e| e.starts_with("--tls-key: cannot read")),
        "{errs:?}"
    );
    assert!(parse(&dir.join("tls.key").display().to_string()).is_ok());
    // --tls-cert without --tls-key is refused by the parser itself.
    let lone = appsync_relay::cli::Cli::try_parse_from([
        "appsync-relay",
        "serve",
        "--appsync-http-endpoint",
        "https://x.example/event",
        "--cognito-user-pool-id",
        "eu-west-1_abc",
        "--cognito-client-id",
        "c",
        "--allowed-origin",
        "https://app.example.com",
        "--tls-cert",
        &cert,
    ]);
    assert!(lone.is_err());
    let _ = std::fs::remove_dir_all(dir);
}

/// The emulator behind TLS with its own self-signed certificate, as AppSync
/// is behind TLS: the relay reaches it only when `--upstream-ca-file` names
/// that certificate; without it the handshake fails (502), never falls back
/// to plain text or skips the check.
#[tokio::test]
async fn the_upstream_leg_trusts_a_private_ca_only_when_told() {
    use appsync_relay::emulator::{self, EmulatorAuth, EmulatorConfig};
    use appsync_relay::tls::{server_config, CertStore, TlsSource};
    let dir = temp_dir("upstream-ca");
    let (cert_pem, key_pem) = self_signed(&["127.0.0.1"]).unwrap();
    let ca = dir.join("upstream-ca.pem");
    std::fs::write(&ca, &cert_pem).unwrap();
    let ca = ca.display().to_string();

    let jwks = JwksServer::start(serde_json::json!({"keys": [signing_key().jwk()]})).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut cfg = EmulatorConfig::new(EmulatorAuth::Cognito(emulator_verifier(&jwks, CLIENT_ID)));
    cfg.http_host = Some(listener.local_addr().unwrap().to_string());
    let store = CertStore::load(TlsSource::InMemory { cert_pem, key_pem }).unwrap();
    cfg.tls = Some(server_config(store).unwrap());
    let emu = emulator::spawn(listener, cfg).await;
    assert!(emu.realtime_endpoint().starts_with("wss://"));

    let cookies = amplify_cookies(
        Some(&sign(&access_claims(&jwks.issuer()), signing_key())),
        None,
    );
    let open = |extra: Vec<String>| {
        let (jwks, emu, cookies) = (&jwks, &emu, cookies.clone());
        async move {
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            let relay = start_relay(relay_config(&emu.http_endpoint(), jwks, &extra)).await;
            let url = format!("ws://{}/event/realtime", relay.public_addr);
            match try_connect(&url, &Upgrade::browser(&cookies)).await {
                Attempt::Open(ws, _) => {
                    let mut ws = *ws;
                    init(&mut ws).await;
                    send_json(&mut ws, amplify_subscribe("s", "/default/tls")).await;
                    let ok = recv_json(&mut ws).await["type"] == "subscribe_success";
                    Ok(ok)
                }
                Attempt::Refused(status, _) => Err(status),
                Attempt::Failed(e) => panic!("{e}"),
            }
        }
    };
    assert_eq!(
        open(vec![]).await,
        Err(502),
        "an untrusted upstream certificate was accepted"
    );
    assert_eq!(
        open(vec!["--upstream-ca-file".into(), ca.clone()]).await,
        Ok(true)
    );
    // A file without a certificate is a start-up error, not an empty trust set.
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let errs = serve_config(&["--upstream-ca-file", &empty.display().to_string()]).unwrap_err();
    assert!(
        errs.iter().any(|e| e.contains("no certificate")),
        "{errs:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
