//! `appsync-relay check` against the emulator, a JWKS/OpenID server and
//! the fake Cognito: a good deployment passes every check (the round trip
//! included), and each misconfiguration gives the ✗ it should, with a fix,
//! and no secret in the output. The run against MiniStack, an independent
//! Cognito + AppSync Events, is in tests/ministack.rs.

mod support;

use appsync_relay::check::{Report, Status};
use appsync_relay::cli::{Cli, Command};
use clap::Parser as _;
use serde_json::{json, Value};
use std::path::PathBuf;
use support::*;
use support::{fake_cognito, jar};

struct Env {
    jwks: JwksServer,
    emulator: appsync_relay::emulator::EmulatorHandle,
    cognito: fake_cognito::FakeCognito,
}

impl Env {
    async fn start() -> Env {
        let jwks = JwksServer::start(json!({"keys": [signing_key().jwk()]})).await;
        let emulator = start_emulator(&jwks, CLIENT_ID).await;
        let cognito = fake_cognito::FakeCognito::start(jwks.issuer(), 3600).await;
        Env {
            jwks,
            emulator,
            cognito,
        }
    }

    /// `check` with a good configuration, then `extra` (later flags win).
    fn argv(&self, extra: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = [
            "appsync-relay",
            "check",
            "--appsync-http-endpoint",
            &self.emulator.http_endpoint(),
            "--cognito-user-pool-id",
            POOL_ID,
            "--cognito-client-id",
            CLIENT_ID,
            "--cognito-issuer",
            &self.jwks.issuer(),
            "--allowed-origin",
            ORIGIN,
            "--cognito-endpoint",
            &self.cognito.endpoint(),
            "--upstream-timeout",
            "2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    }

    async fn check(&self, extra: &[&str]) -> Report {
        run(self.argv(extra)).await
    }

    fn good_token(&self) -> String {
        sign(&access_claims(&self.jwks.issuer()), signing_key())
    }
}

async fn run(argv: Vec<String>) -> Report {
    match Cli::try_parse_from(argv).expect("valid flags").command {
        Command::Check(args) => appsync_relay::check::run(&args).await,
        _ => unreachable!(),
    }
}

fn file(name: &str, contents: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("relay-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{}-{name}", rand::random::<u32>()));
    std::fs::write(&path, contents).unwrap();
    path
}

fn status(r: &Report, check: &str) -> Vec<Status> {
    r.checks
        .iter()
        .filter(|l| l.check == check)
        .map(|l| l.status)
        .collect()
}

/// The one failing line of `check`, which must carry a fix.
fn failure<'a>(r: &'a Report, check: &str) -> &'a appsync_relay::check::Line {
    let line = r
        .checks
        .iter()
        .find(|l| l.check == check && l.status == Status::Fail)
        .unwrap_or_else(|| panic!("no ✗ {check} in:\n{}", r.text()));
    assert!(
        line.fix.as_ref().is_some_and(|f| !f.is_empty()),
        "✗ {check} without a fix"
    );
    line
}

#[tokio::test]
async fn a_good_deployment_passes_every_check_and_the_round_trip() {
    let env = Env::start().await;
    let token = env.good_token();
    let token_file = file("token", &format!("{token}\n"));
    let report = env
        .check(&[
            "--token-file",
            token_file.to_str().unwrap(),
            "--check-channel",
            "/default/relay-check",
        ])
        .await;
    eprintln!("{}", report.text());
    assert!(report.ok, "{}", report.text());
    for check in [
        "flags",
        "origins",
        "transport",
        "sign_in",
        "openid_configuration",
        "jwks",
        "token",
        "cognito",
        "appsync_http",
        "appsync_realtime",
        "round_trip.connect",
        "round_trip.subscribe",
        "round_trip.publish",
        "round_trip.receive",
        "round_trip.http_publish",
        "round_trip.unsubscribe",
    ] {
        assert_eq!(
            status(&report, check),
            vec![Status::Pass],
            "{check}:\n{}",
            report.text()
        );
    }
    // The emulator saw the user's own token on the socket and the HTTP
    // publish: the round trip really went through the relay to AppSync.
    let seen = env.emulator.seen_authorizations();
    assert!(
        seen.iter().filter(|a| **a == token).count() >= 3,
        "{seen:?}"
    );
    // Nothing secret in either output.
    for out in [report.text(), report.json()] {
        assert!(!out.contains(&token), "token in the output");
        assert!(!out.contains(token.split('.').nth(2).unwrap()));
    }
    // Without a sign-in the round trip is skipped, not failed.
    let report = env.check(&[]).await;
    assert!(report.ok, "{}", report.text());
    assert_eq!(status(&report, "round_trip"), vec![Status::Skip]);
}

#[tokio::test]
async fn cookies_from_a_browser_work_and_a_cookie_of_another_client_is_named() {
    let env = Env::start().await;
    let cookies = amplify_cookies(Some(&env.good_token()), None);
    let cookie_file = file("cookies", &format!("Cookie: {cookies}\n"));
    let report = env
        .check(&[
            "--cookie-file",
            cookie_file.to_str().unwrap(),
            "--check-channel",
            "/default/relay-check",
        ])
        .await;
    assert!(report.ok, "{}", report.text());
    assert_eq!(
        status(&report, "round_trip.unsubscribe"),
        vec![Status::Pass]
    );

    let other = cookies.replace(CLIENT_ID, "anotherclient");
    let cookie_file = file("other", &other);
    let report = env
        .check(&[
            "--cookie-file",
            cookie_file.to_str().unwrap(),
            "--check-channel",
            "/default/x",
        ])
        .await;
    assert!(
        failure(&report, "sign_in").detail.contains("no_session"),
        "{}",
        report.text()
    );
    assert_eq!(status(&report, "round_trip"), vec![Status::Skip]);
}

#[tokio::test]
async fn bad_flag_values_and_combinations_fail_before_anything_is_asked() {
    let env = Env::start().await;
    let r = env
        .check(&["--allowed-origin", "https://app.example.com/path"])
        .await;
    assert!(
        failure(&r, "flags").detail.contains("--allowed-origin"),
        "{}",
        r.text()
    );
    assert_eq!(status(&r, "identity"), vec![Status::Skip]);
    assert!(!r.ok);

    let r = env
        .check(&["--public-origin", "https://other.example.com"])
        .await;
    assert!(failure(&r, "origins")
        .fix
        .as_ref()
        .unwrap()
        .contains("--allowed-origin https://other.example.com"));

    // The written form is shown when it differs from what browsers send.
    let r = env
        .check(&["--allowed-origin", "HTTPS://App.Example.com:443/"])
        .await;
    assert_eq!(status(&r, "origins"), vec![Status::Pass], "{}", r.text());

    let token_file = file("token", &env.good_token());
    let r = env
        .check(&["--token-file", token_file.to_str().unwrap()])
        .await;
    failure(&r, "check_channel");
    assert_eq!(status(&r, "round_trip"), vec![Status::Skip]);
    let r = env
        .check(&[
            "--token-file",
            token_file.to_str().unwrap(),
            "--check-channel",
            "/default/*",
        ])
        .await;
    failure(&r, "check_channel");

    let r = env
        .check(&["--cognito-endpoint", "http://cognito.example.com/"])
        .await;
    assert!(
        failure(&r, "transport")
            .detail
            .contains("--cognito-endpoint"),
        "{}",
        r.text()
    );
}

#[tokio::test]
async fn a_proxy_adding_forwarded_headers_without_trust_is_caught_from_a_sample() {
    let env = Env::start().await;
    let sample = file(
        "sample",
        "GET /event/realtime HTTP/1.1\r\nHost: app.example.com\r\nX-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\n\r\n",
    );
    let r = env
        .check(&["--sample-request", sample.to_str().unwrap()])
        .await;
    let line = failure(&r, "forwarded");
    assert!(line.detail.contains("x-forwarded-for"), "{}", r.text());
    assert!(line.fix.as_ref().unwrap().contains("--trust-forwarded"));

    let r = env
        .check(&[
            "--sample-request",
            sample.to_str().unwrap(),
            "--trust-forwarded",
            "10.0.0.0/8",
        ])
        .await;
    assert_eq!(status(&r, "forwarded"), vec![Status::Pass], "{}", r.text());
    let plain = file("plain", "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    let r = env
        .check(&["--sample-request", plain.to_str().unwrap()])
        .await;
    assert_eq!(status(&r, "forwarded"), vec![Status::Pass]);
    let r = env.check(&[]).await;
    assert_eq!(status(&r, "forwarded"), vec![Status::Skip]);
}

#[tokio::test]
async fn an_issuer_that_does_not_match_the_openid_configuration_is_named() {
    let env = Env::start().await;
    // The document says another issuer than the flags (a typo'd pool id).
    *env.jwks.openid.lock().unwrap() = Some(json!({
        "issuer": "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Other",
        "jwks_uri": env.jwks.jwks_url(),
    }));
    let r = env.check(&[]).await;
    let line = failure(&r, "openid_configuration");
    assert!(line.fix.as_ref().unwrap().contains("--cognito-issuer"));
    assert!(line.detail.contains("eu-west-1_Other"), "{}", r.text());

    // Keys advertised elsewhere than the relay would fetch them.
    *env.jwks.openid.lock().unwrap() = Some(json!({
        "issuer": env.jwks.issuer(),
        "jwks_uri": "https://keys.example.com/jwks.json",
    }));
    let r = env.check(&[]).await;
    assert!(failure(&r, "openid_configuration")
        .fix
        .as_ref()
        .unwrap()
        .contains("--cognito-jwks-url"));
    // ... which is fine when --cognito-jwks-url says where they really are.
    let r = env
        .check(&["--cognito-jwks-url", &env.jwks.jwks_url()])
        .await;
    assert_eq!(
        status(&r, "openid_configuration"),
        vec![Status::Pass],
        "{}",
        r.text()
    );

    // Not RS256.
    *env.jwks.openid.lock().unwrap() = Some(json!({
        "issuer": env.jwks.issuer(), "jwks_uri": env.jwks.jwks_url(),
        "id_token_signing_alg_values_supported": ["HS256"],
    }));
    failure(&env.check(&[]).await, "openid_configuration");

    // A pool that does not exist: 404 for both documents.
    let wrong = env.jwks.issuer().replace(POOL_ID, "eu-west-1_Nope");
    let r = env.check(&["--cognito-issuer", &wrong]).await;
    assert!(
        failure(&r, "openid_configuration").detail.contains("404"),
        "{}",
        r.text()
    );
    assert!(failure(&r, "jwks").detail.contains("404"));
}

#[tokio::test]
async fn a_key_set_without_usable_keys_or_with_a_shared_kid_fails() {
    let env = Env::start().await;
    *env.jwks.jwks.lock().unwrap() = json!({"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]});
    let r = env.check(&[]).await;
    assert!(failure(&r, "jwks").detail.contains("RS256"), "{}", r.text());

    let mut twin = forger_key().jwk();
    twin["kid"] = signing_key().jwk()["kid"].clone();
    *env.jwks.jwks.lock().unwrap() = json!({"keys": [signing_key().jwk(), twin]});
    let r = env.check(&[]).await;
    assert!(
        failure(&r, "jwks").detail.contains("names two keys"),
        "{}",
        r.text()
    );

    *env.jwks.jwks.lock().unwrap() = json!({"not": "a jwks"});
    assert!(failure(&env.check(&[]).await, "jwks")
        .detail
        .contains("no \"keys\""));

    let r = env
        .check(&["--cognito-jwks-url", "http://127.0.0.1:9/jwks.json"])
        .await;
    assert!(
        failure(&r, "jwks").detail.contains("cannot fetch"),
        "{}",
        r.text()
    );
}

#[tokio::test]
async fn a_token_from_another_pool_client_or_kind_is_explained() {
    let env = Env::start().await;
    let check_with = |token: String| {
        let path = file("token", &token);
        let argv = env.argv(&[
            "--token-file",
            path.to_str().unwrap(),
            "--check-channel",
            "/default/x",
        ]);
        run(argv)
    };
    let mut claims = access_claims(&env.jwks.issuer());
    claims["client_id"] = json!("someotherclient");
    let r = check_with(sign(&claims, signing_key())).await;
    let line = failure(&r, "token");
    assert!(line.detail.contains("someotherclient"), "{}", r.text());
    assert!(line.fix.as_ref().unwrap().contains("--cognito-client-id"));
    // The relay refuses it too: the round trip's connect says why.
    assert!(
        failure(&r, "round_trip.connect")
            .detail
            .contains("token_audience"),
        "{}",
        r.text()
    );
    assert_eq!(status(&r, "round_trip.subscribe"), vec![Status::Skip]);

    let mut claims = access_claims(&env.jwks.issuer());
    claims["exp"] = json!(now() - 60);
    let r = check_with(sign(&claims, signing_key())).await;
    assert!(
        failure(&r, "token").detail.contains("expired"),
        "{}",
        r.text()
    );

    let r = check_with(sign(&id_claims(&env.jwks.issuer()), signing_key())).await;
    assert!(
        failure(&r, "token")
            .fix
            .as_ref()
            .unwrap()
            .contains("--token-use"),
        "{}",
        r.text()
    );

    let mut claims = access_claims(&env.jwks.issuer());
    claims["iss"] = json!("https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Else");
    let r = check_with(sign(&claims, signing_key())).await;
    assert!(
        failure(&r, "token").detail.contains("eu-west-1_Else"),
        "{}",
        r.text()
    );

    // Signed by a key the pool does not publish, under the pool's kid.
    let r = check_with(sign(&access_claims(&env.jwks.issuer()), forger_key())).await;
    assert!(
        failure(&r, "token").detail.contains("not signed by a key"),
        "{}",
        r.text()
    );

    let r = check_with("not a token".into()).await;
    assert!(
        failure(&r, "sign_in")
            .detail
            .contains("does not hold a JWT"),
        "{}",
        r.text()
    );
}

#[tokio::test]
async fn a_cognito_endpoint_that_is_not_cognito_or_does_not_know_the_client_fails() {
    let env = Env::start().await;
    let r = env
        .check(&["--cognito-endpoint", "http://127.0.0.1:9/"])
        .await;
    assert!(
        failure(&r, "cognito").detail.contains("cannot reach"),
        "{}",
        r.text()
    );

    let r = env
        .check(&["--cognito-endpoint", &env.emulator.http_endpoint()])
        .await;
    failure(&r, "cognito");

    let r = env.check(&["--cognito-client-id", "someotherclient"]).await;
    assert!(
        failure(&r, "cognito")
            .detail
            .contains("does not know app client"),
        "{}",
        r.text()
    );

    *env.cognito.client_secret.lock().unwrap() = Some("s3cr3t-of-the-client".into());
    let r = env.check(&[]).await;
    assert!(
        failure(&r, "cognito")
            .fix
            .as_ref()
            .unwrap()
            .contains("--cognito-client-secret"),
        "{}",
        r.text()
    );
    for api in ["get-tokens", "initiate-auth"] {
        let r = env
            .check(&[
                "--cognito-client-secret",
                "s3cr3t-of-the-client",
                "--refresh-api",
                api,
            ])
            .await;
        // The fake, like Cognito, checks the refresh token first once a
        // secret is given: the dummy token's refusal is the pass.
        assert_eq!(
            status(&r, "cognito"),
            vec![Status::Pass],
            "{api}: {}",
            r.text()
        );
        assert!(!r.json().contains("s3cr3t"), "client secret in the output");
    }
}

#[tokio::test]
async fn appsync_hosts_that_do_not_resolve_or_whose_certificate_is_not_trusted_fail() {
    let env = Env::start().await;
    let r = env
        .check(&["--appsync-http-endpoint", "http://nope.invalid/event"])
        .await;
    assert!(
        failure(&r, "appsync_http")
            .detail
            .contains("does not resolve"),
        "{}",
        r.text()
    );
    failure(&r, "appsync_realtime");

    let closed = env
        .check(&["--appsync-http-endpoint", "http://127.0.0.1:9/event"])
        .await;
    assert!(
        failure(&closed, "appsync_http").detail.contains("refuses"),
        "{}",
        closed.text()
    );

    // AppSync behind TLS with a certificate from a CA the relay was not told of.
    use appsync_relay::emulator::{self, EmulatorAuth, EmulatorConfig};
    use appsync_relay::tls::{server_config, CertStore, TlsSource};
    let (cert_pem, key_pem) = appsync_relay::tls::self_signed(&["127.0.0.1"]).unwrap();
    let ca = file("ca.pem", &cert_pem);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut cfg = EmulatorConfig::new(EmulatorAuth::Cognito(emulator_verifier(
        &env.jwks, CLIENT_ID,
    )))
    .with_namespaces(NAMESPACES);
    cfg.http_host = Some(listener.local_addr().unwrap().to_string());
    cfg.tls = Some(
        server_config(CertStore::load(TlsSource::InMemory { cert_pem, key_pem }).unwrap()).unwrap(),
    );
    let tls_emulator = emulator::spawn(listener, cfg).await;
    let endpoint = tls_emulator.http_endpoint();
    let r = env.check(&["--appsync-http-endpoint", &endpoint]).await;
    assert!(
        failure(&r, "appsync_http").detail.contains("TLS"),
        "{}",
        r.text()
    );
    assert!(failure(&r, "appsync_http")
        .fix
        .as_ref()
        .unwrap()
        .contains("--upstream-ca-file"));
    failure(&r, "appsync_realtime");

    let token_file = file("token", &env.good_token());
    let r = env
        .check(&[
            "--appsync-http-endpoint",
            &endpoint,
            "--upstream-ca-file",
            ca.to_str().unwrap(),
            "--token-file",
            token_file.to_str().unwrap(),
            "--check-channel",
            "/default/relay-check",
        ])
        .await;
    assert!(r.ok, "{}", r.text());
}

#[tokio::test]
async fn a_channel_the_api_refuses_or_an_api_that_refuses_the_pool_stops_the_round_trip() {
    let env = Env::start().await;
    let token_file = file("token", &env.good_token());
    let token = token_file.to_str().unwrap();
    let r = env
        .check(&["--token-file", token, "--check-channel", "/nonamespace/x"])
        .await;
    failure(&r, "round_trip.subscribe");
    assert_eq!(status(&r, "round_trip.connect"), vec![Status::Pass]);
    for later in [
        "round_trip.publish",
        "round_trip.receive",
        "round_trip.http_publish",
        "round_trip.unsubscribe",
    ] {
        assert_eq!(status(&r, later), vec![Status::Skip], "{later}");
    }

    // A namespace handler refusing this user's publishes.
    env.emulator.refuse_publishes(SUB, "/default/readonly");
    let r = env
        .check(&[
            "--token-file",
            token,
            "--check-channel",
            "/default/readonly",
        ])
        .await;
    assert!(
        failure(&r, "round_trip.publish").detail.contains("refused"),
        "{}",
        r.text()
    );
    assert_eq!(status(&r, "round_trip.subscribe"), vec![Status::Pass]);
    assert_eq!(status(&r, "round_trip.receive"), vec![Status::Skip]);

    let jwks2 = JwksServer::start(json!({"keys": [signing_key().jwk()]})).await;
    // An API whose auth mode is another app client's: AppSync refuses the
    // user's token on the upgrade.
    let other_api = start_emulator(&jwks2, "anotherclient").await;
    let r = env
        .check(&[
            "--appsync-http-endpoint",
            &other_api.http_endpoint(),
            "--token-file",
            token,
            "--check-channel",
            "/default/x",
        ])
        .await;
    let line = failure(&r, "round_trip.connect");
    assert!(
        line.detail.contains("upstream_unauthorized"),
        "{}",
        r.text()
    );
    assert!(line.fix.as_ref().unwrap().contains("auth mode"));
}

/// The binary itself: exit codes and the JSON form.
#[tokio::test(flavor = "multi_thread")]
async fn the_binary_exits_0_or_1_and_prints_json_for_pipelines() {
    let env = Env::start().await;
    let bin = env!("CARGO_BIN_EXE_appsync-relay");
    let run_bin = |extra: &[&str]| {
        let argv = env.argv(extra);
        let out = std::process::Command::new(bin)
            .args(&argv[1..])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = tokio::task::block_in_place(|| run_bin(&["--output", "json"]));
    assert_eq!(code, Some(0), "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], true);
    assert!(v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["check"] == "jwks" && c["status"] == "pass"));

    let (code, out) =
        tokio::task::block_in_place(|| run_bin(&["--cognito-client-id", "someotherclient"]));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("✗ cognito:"), "{out}");
    assert!(out.contains("    fix: "), "{out}");
}

/// A leg without TLS to another host: nothing secret is sent on it, so the
/// Cognito probe (the client id, any secret) and the round trip (the user's
/// token) do not run. Before the fix both ran after the ✗.
#[tokio::test]
async fn after_a_plaintext_leg_neither_the_probe_nor_the_round_trip_runs() {
    let env = Env::start().await;
    let token_file = file("token", &env.good_token());
    let r = env
        .check(&[
            "--appsync-http-endpoint",
            "http://appsync.relay-check.invalid/event",
            "--token-file",
            token_file.to_str().unwrap(),
            "--check-channel",
            "/default/x",
        ])
        .await;
    failure(&r, "transport");
    assert_eq!(status(&r, "cognito"), vec![Status::Skip], "{}", r.text());
    assert_eq!(status(&r, "round_trip"), vec![Status::Skip]);
    assert_eq!(env.cognito.total_calls(), 0, "the probe went out");
    let r = env
        .check(&["--app-upstream", "http://app.internal.example:3000"])
        .await;
    assert!(
        failure(&r, "transport").detail.contains("--app-upstream"),
        "{}",
        r.text()
    );
}

/// What peers answer is printed without control characters (no terminal
/// escape reaches the operator's screen) and never as the fix.
#[tokio::test]
async fn a_hostile_peers_words_are_defanged_and_never_the_fix() {
    let env = Env::start().await;
    let evil = "https://evil.example/\u{1b}]0;pwned\u{7}\u{1b}[2J";
    *env.jwks.openid.lock().unwrap() =
        Some(json!({"issuer": evil, "jwks_uri": "x".repeat(100_000)}));
    let r = env.check(&[]).await;
    let line = failure(&r, "openid_configuration");
    assert!(!line.fix.as_ref().unwrap().contains("evil"), "{}", r.text());
    for out in [r.text(), r.json()] {
        assert!(
            !out.contains('\u{1b}') && !out.contains('\u{7}'),
            "escape in the output"
        );
        assert!(!out.contains("\\u001b"), "escape in the JSON");
    }
    assert!(line.detail.len() < 600, "{}", line.detail.len());
}

/// The cookies' refresh token is left out of the round trip unless
/// --allow-refresh: an expired token fails instead of being renewed (the
/// browser's session is not spent); with the flag the relay inside renews
/// it and the rest of the round trip uses the renewed cookies.
#[tokio::test]
async fn the_refresh_token_is_only_spent_with_allow_refresh() {
    let env = Env::start().await;
    let mut session = env.cognito.sign_in(USERNAME);
    session.access = fake_cognito::expired_access(&env.jwks.issuer(), USERNAME, 60);
    let headers = jar::header_for(&jar::jar(&session));
    let cookies = headers.get("cookie").unwrap().to_str().unwrap().to_string();
    let cookie_file = file("cookies", &cookies);
    let args = [
        "--cookie-file",
        cookie_file.to_str().unwrap(),
        "--check-channel",
        "/default/relay-check",
    ];
    let r = env.check(&args).await;
    assert!(
        failure(&r, "token")
            .fix
            .as_ref()
            .unwrap()
            .contains("--allow-refresh"),
        "{}",
        r.text()
    );
    assert!(
        failure(&r, "round_trip.connect").detail.contains("401"),
        "{}",
        r.text()
    );
    assert!(
        env.cognito.is_live(&session.refresh),
        "the refresh token was spent"
    );
    assert_eq!(
        env.cognito.calls("GetTokensFromRefreshToken"),
        1,
        "only the dummy probe"
    );

    let mut with = args.to_vec();
    with.push("--allow-refresh");
    let r = env.check(&with).await;
    assert!(r.ok, "{}", r.text());
    assert_eq!(
        env.cognito.calls("GetTokensFromRefreshToken"),
        3,
        "the probe again, and one renewal"
    );
    for out in [r.text(), r.json()] {
        for secret in [&session.refresh, &session.access, &session.id] {
            assert!(!out.contains(secret.as_str()), "a token in the output");
        }
    }
}

#[tokio::test]
async fn the_client_secret_missing_or_wrong_is_named_and_never_printed() {
    let env = Env::start().await;
    *env.cognito.client_secret.lock().unwrap() = Some("s3cr3t-of-the-client".into());
    let r = env.check(&[]).await;
    assert!(
        failure(&r, "cognito")
            .fix
            .as_ref()
            .unwrap()
            .contains("give it with"),
        "{}",
        r.text()
    );
    let r = env
        .check(&["--cognito-client-secret", "wrong-secret-value"])
        .await;
    assert!(
        failure(&r, "cognito")
            .fix
            .as_ref()
            .unwrap()
            .contains("does not match"),
        "{}",
        r.text()
    );
    assert!(!r.text().contains("wrong-secret-value") && !r.json().contains("wrong-secret-value"));
}

#[tokio::test]
async fn a_custom_events_path_and_the_shared_channel_key_are_checked() {
    let jwks = JwksServer::start(json!({"keys": [signing_key().jwk()]})).await;
    let emulator = start_emulator_with_key(&jwks, CLIENT_ID, Some("da2-relaycheckkey")).await;
    let cognito = fake_cognito::FakeCognito::start(jwks.issuer(), 3600).await;
    let env = Env {
        jwks,
        emulator,
        cognito,
    };
    let token_file = file("token", &env.good_token());
    let key = file("key", "da2-relaycheckkey\n");
    let r = env
        .check(&[
            "--events-path",
            "/realtime-events",
            "--shared-channel",
            "/default/shared/*",
            "--shared-api-key-file",
            key.to_str().unwrap(),
            "--token-file",
            token_file.to_str().unwrap(),
            "--check-channel",
            "/default/relay-check",
        ])
        .await;
    assert!(r.ok, "{}", r.text());
    assert_eq!(status(&r, "shared_api_key"), vec![Status::Pass]);
    assert!(!r.json().contains("da2-relaycheckkey"));
    let bad = file("key", "da2-notthekey\n");
    let r = env
        .check(&[
            "--shared-channel",
            "/default/shared/*",
            "--shared-api-key-file",
            bad.to_str().unwrap(),
        ])
        .await;
    failure(&r, "shared_api_key");
}

#[tokio::test]
async fn redis_is_checked_when_given_and_its_password_never_printed() {
    let env = Env::start().await;
    let redis = support::redis_server::Redis::start().await;
    let r = env.check(&["--redis-url", &redis.url()]).await;
    assert_eq!(status(&r, "redis"), vec![Status::Pass], "{}", r.text());
    assert!(r.text().contains("NOT coordinated"), "{}", r.text());
    let closed = "redis://:hunter2secret@127.0.0.1:9/0";
    let r = env.check(&["--redis-url", closed]).await;
    assert!(failure(&r, "redis")
        .fix
        .as_ref()
        .unwrap()
        .contains("--redis-url"));
    for out in [r.text(), r.json()] {
        assert!(
            !out.contains("hunter2secret"),
            "the Redis password in the output: {out}"
        );
    }
    let r = env.check(&[]).await;
    assert!(
        status(&r, "redis").is_empty(),
        "no Redis check without --redis-url"
    );
}

#[tokio::test]
async fn a_channel_policy_is_validated_and_policy_test_says_what_a_user_may_do() {
    let env = Env::start().await;
    let policy = file(
        "policy.toml",
        r#"
[[rule]]
channels = ["/default/users/{sub}", "/default/users/{sub}/*"]
allow = ["subscribe", "publish"]

[[rule]]
channels = "/default/teams/{cognito:groups}/*"
allow = "subscribe"

[[rule]]
channels = "/announcements/*"
allow = "subscribe"
"#,
    );
    let mut claims = access_claims(&env.jwks.issuer());
    claims["cognito:groups"] = json!(["red"]);
    let token_file = file("token", &sign(&claims, signing_key()));
    let report = env
        .check(&[
            "--channel-policy",
            policy.to_str().unwrap(),
            "--token-file",
            token_file.to_str().unwrap(),
            "--policy-test",
            "/default/teams/red/*,/default/teams/blue/x",
            "--policy-test",
            "/announcements/today",
            "--policy-test",
            "/default/users/5f1c6a2e-0000-4000-8000-000000000001/inbox",
        ])
        .await;
    assert!(report.ok, "{}", report.text());
    let line = |check: &str| -> Vec<String> {
        report
            .checks
            .iter()
            .filter(|l| l.check == check)
            .map(|l| l.detail.clone())
            .collect()
    };
    let rules = line("channel_policy");
    assert_eq!(rules.len(), 1, "{}", report.text());
    assert!(rules[0].starts_with("3 rule(s)"), "{rules:?}");
    assert!(
        rules[0].contains("rule 3 opens /announcements/* to every signed-in user (subscribe)"),
        "{rules:?}"
    );
    let tests = line("policy_test");
    assert_eq!(tests.len(), 4, "{}", report.text());
    assert!(
        tests[0].contains("/default/teams/red/*")
            && tests[0].contains("subscribe allowed (rule 2), publish n/a"),
        "{tests:?}"
    );
    assert!(
        tests[1].contains("subscribe denied, publish denied"),
        "{tests:?}"
    );
    assert!(
        tests[2].contains("subscribe allowed (rule 3), publish denied"),
        "{tests:?}"
    );
    assert!(
        tests[3].contains("subscribe allowed (rule 1), publish allowed (rule 1)"),
        "{tests:?}"
    );

    // A rule that can never match, a broken file, a test without a policy.
    let never = file(
        "never.toml",
        "[[rule]]\nchannels = \"/default/{exp}\"\nallow = \"subscribe\"\n",
    );
    let report = env
        .check(&["--channel-policy", never.to_str().unwrap()])
        .await;
    assert!(failure(&report, "channel_policy")
        .detail
        .contains("rule 1 names the numeric claim exp"));
    let broken = file(
        "broken.toml",
        "[[rule]]\nchannels = \"/default/*\"\nallow = \"read\"\n",
    );
    let report = env
        .check(&["--channel-policy", broken.to_str().unwrap()])
        .await;
    let flags = failure(&report, "flags");
    assert!(
        flags.detail.contains("rule 1") && flags.detail.contains("\"read\""),
        "{}",
        report.text()
    );
    let report = env.check(&["--policy-test", "/default/a"]).await;
    assert!(failure(&report, "policy_test")
        .detail
        .contains("without --channel-policy"));
}
