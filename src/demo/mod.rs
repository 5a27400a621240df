//! `appsync-relay demo`: the whole product in one process, for a first look
//! and for local development.
//!
//! It starts, on loopback:
//! - a development identity provider that issues Cognito-shaped RS256
//!   tokens from a key generated at start-up, and serves its JWKS;
//! - the strict AppSync Events [`emulator`](crate::emulator), which verifies
//!   every token against that JWKS;
//! - the relay itself, configured exactly as `serve` would be, with a small
//!   app on the same origin: `GET /` (the demo page) and `POST /demo/login`
//!   (form field `username`; no password, it is a local demo) which sets
//!   Amplify-format `HttpOnly; Secure; SameSite=Strict` cookies.
//!
//! The public listener speaks HTTPS (the real Amplify client always dials
//! `wss://`), with a self-signed certificate for `localhost` generated at
//! start-up unless `--tls-cert/--tls-key` are given.
//!
//! The identity provider exists only here: nothing in `serve` can mint a
//! token or trust this key.

mod idp;

use crate::cli::{Cli, Command, DemoArgs};
use crate::config::Config;
use crate::emulator::{self, EmulatorAuth, EmulatorConfig};
use crate::response::{full, json_error, Body};
use crate::server::{self, RelayHandle};
use crate::session;
use crate::state::{App, RelayState};
use crate::verify::{TokenUse, Verifier, VerifierConfig};
use clap::Parser;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, LOCATION, SET_COOKIE};
use hyper::{Method, Request, Response, StatusCode};
pub use idp::DevIdentityProvider;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// The user pool id the demo pretends to be (`<region>_<id>` shaped).
pub const DEMO_POOL_ID: &str = "local_demo";
/// The app client id the demo's cookies and tokens are for.
pub const DEMO_CLIENT_ID: &str = "demoappclient";

const PAGE: &str = include_str!("index.html");
/// The real aws-amplify v6 `events` client, bundled for the page by
/// `npm run build:demo` in `tests/node` (source: `tests/node/demo-client/entry.js`).
const AMPLIFY_EVENTS_JS: &str = include_str!("amplify-events.js");

/// A running demo: relay, emulator and identity provider.
pub struct Demo {
    pub relay: RelayHandle,
    pub emulator: emulator::EmulatorHandle,
    pub idp: Arc<DevIdentityProvider>,
    /// The generated self-signed certificate (PEM), when none was given:
    /// clients that want to verify TLS trust exactly this.
    pub self_signed_cert: Option<String>,
}

impl Demo {
    /// The URL to open: `https://localhost:<port>/`.
    pub fn url(&self) -> String {
        format!("https://localhost:{}/", self.relay.public_addr.port())
    }
}

/// Starts every part of the demo on already-bound relay listeners.
pub async fn start(
    args: &DemoArgs,
    public: TcpListener,
    admin: TcpListener,
) -> std::io::Result<Demo> {
    let public_addr = public.local_addr()?;
    let idp_listener = TcpListener::bind("127.0.0.1:0").await?;
    let idp = DevIdentityProvider::start(
        idp_listener,
        DEMO_POOL_ID,
        DEMO_CLIENT_ID,
        Duration::from_secs(args.token_lifetime.max(1)),
    )
    .await?;

    let emulator_listener = TcpListener::bind("127.0.0.1:0").await?;
    let emulator_host = emulator_listener.local_addr()?.to_string();
    let verifier = Verifier::new(
        VerifierConfig {
            issuer: idp.issuer().to_string(),
            jwks_url: idp.jwks_url(),
            client_id: DEMO_CLIENT_ID.to_string(),
            token_use: TokenUse::Access,
            leeway: Duration::from_secs(5),
            jwks_refetch_interval: Duration::from_secs(10),
            fetch_timeout: Duration::from_secs(5),
            jwks_refresh_interval: Duration::from_secs(600),
            cache_capacity: 10_000,
        },
        crate::http_client::build(Duration::from_secs(5)),
    );
    let mut emulator_cfg = EmulatorConfig::new(EmulatorAuth::Cognito(verifier));
    emulator_cfg.http_host = Some(emulator_host);
    let emulator = emulator::spawn(emulator_listener, emulator_cfg).await;

    // The relay is configured through the same flags a user passes to
    // `serve`, so the demo exercises exactly the production path.
    let port = public_addr.port();
    let origins = format!("https://localhost:{port},https://127.0.0.1:{port}");
    let http_endpoint = emulator.http_endpoint();
    let issuer = idp.issuer().to_string();
    let jwks_url = idp.jwks_url();
    let cognito_endpoint = idp.endpoint();
    let mut argv: Vec<std::ffi::OsString> = [
        "appsync-relay",
        "serve",
        "--appsync-http-endpoint",
        &http_endpoint,
        "--cognito-user-pool-id",
        DEMO_POOL_ID,
        "--cognito-client-id",
        DEMO_CLIENT_ID,
        "--cognito-issuer",
        &issuer,
        "--cognito-jwks-url",
        &jwks_url,
        "--cognito-endpoint",
        &cognito_endpoint,
        "--allowed-origin",
        &origins,
    ]
    .into_iter()
    .map(Into::into)
    .collect();
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        argv.extend([
            "--tls-cert".into(),
            cert.into(),
            "--tls-key".into(),
            key.into(),
        ]);
    }
    let config = match Cli::try_parse_from(argv).map(|c| c.command) {
        Ok(Command::Serve(serve)) => {
            Config::from_args(&serve).map_err(|errors| std::io::Error::other(errors.join("; ")))?
        }
        Ok(_) => return Err(std::io::Error::other("demo built a non-serve command")),
        Err(e) => return Err(std::io::Error::other(e.to_string())),
    };
    let mut config = config;
    let mut self_signed_cert = None;
    if config.tls.is_none() {
        let (cert_pem, key_pem) =
            crate::tls::self_signed(&["localhost", "127.0.0.1"]).map_err(std::io::Error::other)?;
        self_signed_cert = Some(cert_pem.clone());
        config.tls = Some(crate::tls::TlsSource::InMemory { cert_pem, key_pem });
    }
    let app = Arc::new(DemoApp { idp: idp.clone() });
    let relay = server::spawn_with_app(config, public, admin, Some(app))?;
    Ok(Demo {
        relay,
        emulator,
        idp,
        self_signed_cert,
    })
}

struct DemoApp {
    idp: Arc<DevIdentityProvider>,
}

impl App for DemoApp {
    fn respond<'a>(
        &'a self,
        _state: &'a Arc<RelayState>,
        req: Request<Incoming>,
        _peer: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = Response<Body>> + Send + '_>> {
        Box::pin(async move {
            match (req.method(), req.uri().path()) {
                (&Method::GET, "/") => {
                    let mut resp = Response::new(full(PAGE));
                    let h = resp.headers_mut();
                    h.insert(
                        CONTENT_TYPE,
                        HeaderValue::from_static("text/html; charset=utf-8"),
                    );
                    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
                    resp
                }
                (&Method::GET, "/demo/amplify-events.js") => {
                    let mut resp = Response::new(full(AMPLIFY_EVENTS_JS));
                    let h = resp.headers_mut();
                    h.insert(
                        CONTENT_TYPE,
                        HeaderValue::from_static("text/javascript; charset=utf-8"),
                    );
                    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                    resp
                }
                (&Method::POST, "/demo/login") => self.login(req).await,
                (&Method::POST, "/demo/logout") => logout(&req),
                _ => json_error(StatusCode::NOT_FOUND, "not_found", "not_found"),
            }
        })
    }
}

/// `Set-Cookie` attributes Amplify's server-side auth uses on an https origin.
const COOKIE_ATTRS: &str = "Path=/; HttpOnly; Secure; SameSite=Strict";

impl DemoApp {
    async fn login(&self, req: Request<Incoming>) -> Response<Body> {
        let Ok(body) = Limited::new(req.into_body(), 4096).collect().await else {
            return json_error(StatusCode::BAD_REQUEST, "bad_request", "body_unreadable");
        };
        let body = body.to_bytes();
        let username = url::form_urlencoded::parse(&body)
            .find(|(k, _)| k == "username")
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default();
        let valid = !username.is_empty()
            && username.len() <= 128
            && username
                .chars()
                .all(|c| c.is_alphanumeric() || "@.+-_".contains(c));
        if !valid {
            return json_error(StatusCode::BAD_REQUEST, "bad_request", "invalid_username");
        }
        let tokens = self.idp.issue(&username);
        let max_age = 365 * 24 * 3600;
        let cookies = [
            (
                session::last_auth_user_cookie(DEMO_CLIENT_ID),
                session::encode_username(&username),
            ),
            (
                session::cookie_name(DEMO_CLIENT_ID, &username, "accessToken"),
                tokens.access_token,
            ),
            (
                session::cookie_name(DEMO_CLIENT_ID, &username, "idToken"),
                tokens.id_token,
            ),
            (
                session::cookie_name(DEMO_CLIENT_ID, &username, "refreshToken"),
                tokens.refresh_token,
            ),
        ];
        let mut resp = Response::new(full(""));
        *resp.status_mut() = StatusCode::SEE_OTHER;
        resp.headers_mut()
            .insert(LOCATION, HeaderValue::from_static("/"));
        for (name, value) in cookies {
            let header = format!("{name}={value}; {COOKIE_ATTRS}; Max-Age={max_age}");
            match HeaderValue::from_str(&header) {
                Ok(v) => {
                    resp.headers_mut().append(SET_COOKIE, v);
                }
                Err(_) => {
                    return json_error(StatusCode::BAD_REQUEST, "bad_request", "invalid_username")
                }
            }
        }
        resp
    }
}

/// Expires the session's cookies (all four when the user is known).
fn logout(req: &Request<Incoming>) -> Response<Body> {
    let mut resp = Response::new(full(""));
    *resp.status_mut() = StatusCode::SEE_OTHER;
    resp.headers_mut()
        .insert(LOCATION, HeaderValue::from_static("/"));
    let mut names = vec![session::last_auth_user_cookie(DEMO_CLIENT_ID)];
    if let Ok(s) = session::from_headers(req.headers(), DEMO_CLIENT_ID) {
        for suffix in ["accessToken", "idToken", "refreshToken"] {
            names.push(session::cookie_name(DEMO_CLIENT_ID, &s.username, suffix));
        }
    }
    for name in names {
        if let Ok(v) = HeaderValue::from_str(&format!("{name}=; {COOKIE_ATTRS}; Max-Age=0")) {
            resp.headers_mut().append(SET_COOKIE, v);
        }
    }
    resp
}
