//! Shared fixtures for the relay's integration tests: a real RSA key pair
//! and an in-process JWKS server, token minting (good and forged), the
//! emulator as upstream, a relay on ephemeral ports, and a browser-like
//! WebSocket client that sends cookies and an Origin.
#![allow(dead_code)]

pub mod app;
pub mod fake_cognito;
pub mod haproxy;
pub mod jar;
pub mod ministack;
pub mod redis_server;
pub mod replicas;

use appsync_relay::cli::{Cli, Command};
use appsync_relay::config::Config;
use appsync_relay::emulator::{self, EmulatorAuth, EmulatorConfig, EmulatorHandle};
use appsync_relay::server::{self, RelayHandle};
use appsync_relay::session;
use appsync_relay::verify::{TokenUse, Verifier, VerifierConfig};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::RsaPrivateKey;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const CLIENT_ID: &str = "relayclient1";
pub const POOL_ID: &str = "eu-west-1_TestPool1";
pub const ORIGIN: &str = "https://app.example.com";
pub const USERNAME: &str = "alice@example.com";
/// What Amplify in the browser sends as its (placeholder) API key.
pub const PLACEHOLDER_KEY: &str = "da2-placeholder-browser-key";

/// One RSA key pair, as PEMs for signing and JWK components for the JWKS.
pub struct KeyPair {
    pub kid: String,
    pub private_pem: String,
    pub public_pem: String,
    pub n: String,
    pub e: String,
}

impl KeyPair {
    pub fn generate(kid: &str) -> KeyPair {
        let mut rng = rand::thread_rng();
        let key = RsaPrivateKey::new(&mut rng, 2048).expect("RSA key generation");
        let public = key.to_public_key();
        KeyPair {
            kid: kid.to_string(),
            private_pem: key.to_pkcs1_pem(LineEnding::LF).expect("pem").to_string(),
            public_pem: public.to_public_key_pem(LineEnding::LF).expect("pem"),
            n: URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            e: URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
        }
    }

    pub fn jwk(&self) -> Value {
        json!({"kty": "RSA", "kid": self.kid, "alg": "RS256", "use": "sig", "n": self.n, "e": self.e})
    }
}

/// Key generation is slow; every test in a binary shares these.
pub fn keys() -> &'static (KeyPair, KeyPair) {
    static KEYS: OnceLock<(KeyPair, KeyPair)> = OnceLock::new();
    KEYS.get_or_init(|| (KeyPair::generate("key-1"), KeyPair::generate("key-1")))
}

/// The signing key the JWKS publishes.
pub fn signing_key() -> &'static KeyPair {
    &keys().0
}

/// A different key that claims the same `kid` (a forger's key).
pub fn forger_key() -> &'static KeyPair {
    &keys().1
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A JWKS endpoint serving `jwks`, counting fetches.
pub struct JwksServer {
    pub addr: SocketAddr,
    pub fetches: Arc<AtomicUsize>,
    pub jwks: Arc<Mutex<Value>>,
    /// The OpenID configuration served beside the keys, as Cognito serves
    /// it; `None` serves the one that matches this server.
    pub openid: Arc<Mutex<Option<Value>>>,
}

impl JwksServer {
    pub async fn start(jwks: Value) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fetches = Arc::new(AtomicUsize::new(0));
        let jwks = Arc::new(Mutex::new(jwks));
        let openid = Arc::new(Mutex::new(None::<Value>));
        let (f, j, o) = (fetches.clone(), jwks.clone(), openid.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (f, j, o) = (f.clone(), j.clone(), o.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (f, j, o) = (f.clone(), j.clone(), o.clone());
                        async move {
                            let path = req.uri().path();
                            let resp = if path == format!("/{POOL_ID}/.well-known/jwks.json") {
                                f.fetch_add(1, Ordering::SeqCst);
                                let body = j.lock().unwrap().to_string();
                                Response::new(Full::new(Bytes::from(body)))
                            } else if path == format!("/{POOL_ID}/.well-known/openid-configuration")
                            {
                                let issuer = format!("http://{addr}/{POOL_ID}");
                                let doc = o.lock().unwrap().clone().unwrap_or_else(|| {
                                    json!({
                                        "issuer": issuer,
                                        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
                                        "id_token_signing_alg_values_supported": ["RS256"],
                                    })
                                });
                                Response::new(Full::new(Bytes::from(doc.to_string())))
                            } else {
                                let mut r = Response::new(Full::new(Bytes::new()));
                                *r.status_mut() = StatusCode::NOT_FOUND;
                                r
                            };
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        JwksServer {
            addr,
            fetches,
            jwks,
            openid,
        }
    }

    pub fn issuer(&self) -> String {
        format!("http://{}/{POOL_ID}", self.addr)
    }

    pub fn jwks_url(&self) -> String {
        format!("{}/.well-known/jwks.json", self.issuer())
    }

    pub fn fetch_count(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// The `sub` of every token minted for `USERNAME`.
pub const SUB: &str = "5f1c6a2e-0000-4000-8000-000000000001";

/// The session identity of tokens minted by [`access_claims`], as a
/// pending renewal for them is recorded.
pub fn session_proof() -> appsync_relay::session::SessionProof {
    appsync_relay::session::SessionProof {
        sub: SUB.into(),
        client_id: Some(CLIENT_ID.into()),
        origin_jti: None,
        event_id: None,
    }
}

/// Claims of a well-formed Cognito access token for `USERNAME`.
pub fn access_claims(issuer: &str) -> Value {
    let now = now();
    json!({
        "sub": "5f1c6a2e-0000-4000-8000-000000000001",
        "iss": issuer,
        "client_id": CLIENT_ID,
        "token_use": "access",
        "scope": "aws.cognito.signin.user.admin",
        "username": USERNAME,
        "auth_time": now,
        "iat": now,
        "exp": now + 3600,
        "jti": format!("jti-{}", rand::random::<u64>()),
    })
}

pub fn id_claims(issuer: &str) -> Value {
    let now = now();
    json!({
        "sub": "5f1c6a2e-0000-4000-8000-000000000001",
        "iss": issuer,
        "aud": CLIENT_ID,
        "token_use": "id",
        "cognito:username": USERNAME,
        "iat": now,
        "exp": now + 3600,
    })
}

/// Signs `claims` with RS256 and `key`.
pub fn sign(claims: &Value, key: &KeyPair) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(key.kid.clone());
    let enc = EncodingKey::from_rsa_pem(key.private_pem.as_bytes()).unwrap();
    jsonwebtoken::encode(&header, claims, &enc).unwrap()
}

/// A token with a hand-written header and no valid signature machinery.
pub fn raw_token(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

/// HS256 signed with the RSA *public* key as the HMAC secret: the classic
/// algorithm-confusion forgery.
pub fn hs256_with_public_key(claims: &Value, key: &KeyPair) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_secret(key.public_pem.as_bytes()),
    )
    .unwrap()
}

/// Amplify's cookies for a session holding these tokens.
pub fn amplify_cookies(access: Option<&str>, id: Option<&str>) -> String {
    let mut parts = vec![format!(
        "{}={}",
        session::last_auth_user_cookie(CLIENT_ID),
        USERNAME
    )];
    if let Some(a) = access {
        parts.push(format!(
            "{}={a}",
            session::cookie_name(CLIENT_ID, USERNAME, "accessToken")
        ));
    }
    if let Some(i) = id {
        parts.push(format!(
            "{}={i}",
            session::cookie_name(CLIENT_ID, USERNAME, "idToken")
        ));
    }
    parts.push(format!(
        "{}=opaque-refresh-token",
        session::cookie_name(CLIENT_ID, USERNAME, "refreshToken")
    ));
    parts.join("; ")
}

/// A verifier for the emulator: it checks every token the relay forwards,
/// independently of the relay's own instance.
pub fn emulator_verifier(jwks: &JwksServer, client_id: &str) -> Arc<Verifier> {
    Verifier::new(
        VerifierConfig {
            issuer: jwks.issuer(),
            jwks_url: jwks.jwks_url(),
            client_id: client_id.to_string(),
            token_use: TokenUse::Access,
            leeway: Duration::from_secs(0),
            jwks_refetch_interval: Duration::from_secs(10),
            fetch_timeout: Duration::from_secs(5),
            jwks_refresh_interval: Duration::from_secs(600),
            cache_capacity: 1000,
        },
        appsync_relay::http_client::build(Duration::from_secs(5)),
    )
}

/// The channel namespaces the tests' emulated API defines (AppSync refuses
/// channels of any other).
pub const NAMESPACES: [&str; 5] = ["default", "ns", "a", "d", "elsewhere"];

pub async fn start_emulator(jwks: &JwksServer, client_id: &str) -> EmulatorHandle {
    start_emulator_with_key(jwks, client_id, None).await
}

/// An emulated API taking users' tokens and, when `api_key` is given, that
/// API key too (AppSync's two auth modes on one API).
pub async fn start_emulator_with_key(
    jwks: &JwksServer,
    client_id: &str,
    api_key: Option<&str>,
) -> EmulatorHandle {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let verifier = emulator_verifier(jwks, client_id);
    let auth = match api_key {
        Some(key) => EmulatorAuth::CognitoOrApiKey(verifier, key.to_owned()),
        None => EmulatorAuth::Cognito(verifier),
    };
    let mut cfg = EmulatorConfig::new(auth).with_namespaces(NAMESPACES);
    cfg.http_host = Some(host);
    emulator::spawn(listener, cfg).await
}

/// Builds a relay `Config` through the real flag parser.
pub fn relay_config(http_endpoint: &str, jwks: &JwksServer, extra: &[&str]) -> Config {
    let issuer = jwks.issuer();
    let jwks_url = jwks.jwks_url();
    let mut argv: Vec<&str> = vec![
        "appsync-relay",
        "serve",
        "--appsync-http-endpoint",
        http_endpoint,
        "--cognito-user-pool-id",
        POOL_ID,
        "--cognito-client-id",
        CLIENT_ID,
        "--cognito-issuer",
        &issuer,
        "--cognito-jwks-url",
        &jwks_url,
        "--allowed-origin",
        ORIGIN,
        "--jwt-leeway",
        "0",
        "--upstream-timeout",
        "2",
        // Never the real AWS endpoint from a test: port 9 refuses at once.
        // Stacks override this with their fake Cognito.
        "--cognito-endpoint",
        "http://127.0.0.1:9/",
    ];
    argv.extend_from_slice(extra);
    match Cli::try_parse_from(argv).expect("valid flags").command {
        Command::Serve(args) => Config::from_args(&args).expect("valid config"),
        _ => unreachable!(),
    }
}

pub async fn start_relay(config: Config) -> RelayHandle {
    let public = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let handle = server::spawn(config, public, admin).unwrap();
    assert!(
        handle.wait_ready(Duration::from_secs(10)).await,
        "relay never became ready"
    );
    handle
}

/// Everything most tests need: JWKS, emulator, a fake Cognito for
/// refreshes, and the relay.
pub struct Stack {
    pub jwks: JwksServer,
    pub emulator: EmulatorHandle,
    pub cognito: fake_cognito::FakeCognito,
    pub relay: RelayHandle,
}

impl Stack {
    pub async fn start() -> Stack {
        Stack::start_with(&[]).await
    }

    pub async fn start_with(extra: &[&str]) -> Stack {
        Stack::start_with_lifetime(extra, 3600).await
    }

    /// A stack whose fake Cognito issues tokens living `lifetime` seconds.
    pub async fn start_with_lifetime(extra: &[&str], lifetime: u64) -> Stack {
        Stack::start_full(extra, lifetime, None).await
    }

    /// A stack whose emulated API also accepts `api_key`.
    pub async fn start_with_api_key(extra: &[&str], api_key: &str) -> Stack {
        Stack::start_full(extra, 3600, Some(api_key)).await
    }

    async fn start_full(extra: &[&str], lifetime: u64, api_key: Option<&str>) -> Stack {
        let jwks = JwksServer::start(json!({"keys": [signing_key().jwk()]})).await;
        let emulator = start_emulator_with_key(&jwks, CLIENT_ID, api_key).await;
        let cognito = fake_cognito::FakeCognito::start(jwks.issuer(), lifetime).await;
        let endpoint = cognito.endpoint();
        let mut args = vec!["--cognito-endpoint", endpoint.as_str()];
        args.extend_from_slice(extra);
        let relay = start_relay(relay_config(&emulator.http_endpoint(), &jwks, &args)).await;
        Stack {
            jwks,
            emulator,
            cognito,
            relay,
        }
    }

    pub fn good_token(&self) -> String {
        sign(&access_claims(&self.jwks.issuer()), signing_key())
    }

    pub fn good_cookies(&self) -> String {
        amplify_cookies(Some(&self.good_token()), None)
    }

    pub fn realtime_url(&self) -> String {
        format!("ws://{}/event/realtime", self.relay.public_addr)
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The `header-` subprotocol Amplify builds from the browser's config: the
/// relay must ignore it.
pub fn placeholder_header_protocol() -> String {
    let mut m = serde_json::Map::new();
    m.insert("host".into(), "app.example.com".into());
    m.insert("x-api-key".into(), PLACEHOLDER_KEY.into());
    appsync_relay::protocol::encode_header_subprotocol(&m)
}

/// What a browser running Amplify sends on the upgrade.
pub struct Upgrade {
    pub origin: Option<String>,
    pub cookie: Option<String>,
    pub protocols: Option<String>,
    /// Any other request headers (e.g. `X-Forwarded-For`).
    pub headers: Vec<(&'static str, String)>,
}

impl Upgrade {
    pub fn browser(cookie: &str) -> Upgrade {
        Upgrade {
            origin: Some(ORIGIN.into()),
            cookie: Some(cookie.into()),
            protocols: Some(format!(
                "aws-appsync-event-ws, {}",
                placeholder_header_protocol()
            )),
            headers: Vec::new(),
        }
    }
}

/// Result of an upgrade attempt: a socket, or the HTTP refusal.
pub enum Attempt {
    Open(Box<Ws>, hyper::HeaderMap),
    Refused(u16, String),
    /// The transport failed before any HTTP answer (TLS, reset, ...).
    Failed(String),
}

impl std::fmt::Debug for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Attempt::Open(..) => write!(f, "Open"),
            Attempt::Refused(status, body) => write!(f, "Refused({status}, {body})"),
            Attempt::Failed(e) => write!(f, "Failed({e})"),
        }
    }
}

pub async fn try_connect(url: &str, up: &Upgrade) -> Attempt {
    try_connect_with(url, up, None).await
}

/// A rustls client that trusts exactly `cert_pem` (a self-signed server).
pub fn tls_client(cert_pem: &str) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(appsync_relay::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

pub async fn try_connect_with(
    url: &str,
    up: &Upgrade,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Attempt {
    let mut req = url.into_client_request().unwrap();
    let h = req.headers_mut();
    if let Some(o) = &up.origin {
        h.insert("origin", o.parse().unwrap());
    }
    if let Some(c) = &up.cookie {
        h.insert("cookie", c.parse().unwrap());
    }
    if let Some(p) = &up.protocols {
        h.insert("sec-websocket-protocol", p.parse().unwrap());
    }
    for (name, value) in &up.headers {
        h.insert(*name, value.parse().unwrap());
    }
    let connector = tls.map(tokio_tungstenite::Connector::Rustls);
    let attempt = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async_tls_with_config(req, None, false, connector),
    )
    .await
    .expect("handshake did not finish in time");
    match attempt {
        Ok((ws, resp)) => match resp.headers().get("x-appsync-relay-refused") {
            // Refused in band: a 101, then `connection_error` and 4401.
            Some(named) => {
                let named = named.to_str().unwrap().to_string();
                let status = named.split(' ').next().unwrap().parse().unwrap();
                Attempt::Refused(status, refused_in_band(ws, &named).await)
            }
            None => Attempt::Open(Box::new(ws), resp.headers().clone()),
        },
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let status = resp.status().as_u16();
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Attempt::Refused(status, body)
        }
        Err(e) => Attempt::Failed(e.to_string()),
    }
}

/// What a socket refused in band says (`named`: its refusal header): the
/// `connection_error` answering `connection_init`, whose message is the
/// reason, then a close with 4401. Returned as the refusal's body.
async fn refused_in_band(mut ws: Ws, named: &str) -> String {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let reason = named.split_once(' ').map(|(_, r)| r).unwrap_or("");
    ws.send(Message::text(r#"{"type":"connection_init"}"#))
        .await
        .unwrap();
    let mut said = None;
    let mut code = None;
    let done = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(msg)) = ws.next().await {
            match msg {
                Message::Text(t) => said = Some(t.to_string()),
                Message::Close(f) => code = f.map(|f| u16::from(f.code)),
                _ => {}
            }
        }
    })
    .await;
    assert!(done.is_ok(), "a socket refused in band was not closed");
    let said = said.expect("no connection_error on a socket refused in band");
    let v: Value = serde_json::from_str(&said).unwrap();
    assert_eq!(v["type"], "connection_error", "{said}");
    assert_eq!(
        v["errors"][0]["errorType"], "UnauthorizedException",
        "{said}"
    );
    assert_eq!(v["errors"][0]["message"], reason, "{said}");
    assert_eq!(code, Some(4401), "{said}");
    serde_json::json!({"reason": reason, "connection_error": v}).to_string()
}

pub async fn connect(url: &str, cookie: &str) -> Ws {
    connect_as(url, &Upgrade::browser(cookie)).await
}

/// Opens a socket with this upgrade, or panics with the refusal.
pub async fn connect_as(url: &str, up: &Upgrade) -> Ws {
    match try_connect(url, up).await {
        Attempt::Open(ws, _) => *ws,
        Attempt::Refused(status, body) => panic!("handshake refused: {status} {body}"),
        Attempt::Failed(e) => panic!("handshake failed: {e}"),
    }
}

pub async fn send_json(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// Next JSON text frame, skipping `ka`; panics after 5 s.
pub async fn recv_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("no frame within 5s")
            .expect("socket ended")
            .expect("socket error");
        match msg {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).expect("JSON frame");
                if v["type"] != "ka" {
                    return v;
                }
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame: {other:?}"),
        }
    }
}

/// Waits for the socket to close and returns the close code it got.
pub async fn recv_close(ws: &mut Ws) -> Option<u16> {
    loop {
        let next = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("no close within 5s");
        match next {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

/// connection_init → connection_ack.
pub async fn init(ws: &mut Ws) -> Value {
    send_json(ws, json!({"type": "connection_init"})).await;
    let ack = recv_json(ws).await;
    assert_eq!(ack["type"], "connection_ack", "{ack}");
    ack
}

/// A subscribe as Amplify sends it: placeholder auth in both places.
pub fn amplify_subscribe(id: &str, channel: &str) -> Value {
    let auth = json!({"x-api-key": PLACEHOLDER_KEY, "host": "app.example.com"});
    json!({
        "type": "subscribe", "id": id, "channel": channel, "authorization": auth,
        "payload": {"channel": channel, "extensions": {"authorization": auth}}
    })
}

pub fn amplify_publish(id: &str, channel: &str, events: &[Value]) -> Value {
    let auth = json!({"x-api-key": PLACEHOLDER_KEY, "host": "app.example.com"});
    let events: Vec<String> = events.iter().map(Value::to_string).collect();
    json!({
        "type": "publish", "id": id, "channel": channel, "events": events, "authorization": auth,
        "payload": {"channel": channel, "events": events, "extensions": {"authorization": auth}}
    })
}

/// A plain HTTP/1.1 request over loopback; returns status, headers and body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, hyper::HeaderMap, String) {
    let stream = TcpStream::connect(addr).await.unwrap();
    request_on(stream, addr, method, path, headers, body).await
}

/// The same over TLS to `localhost`, trusting `tls`.
pub async fn https(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, hyper::HeaderMap, String) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, stream)
        .await
        .unwrap();
    request_on(stream, addr, method, path, headers, body).await
}

async fn request_on<S>(
    stream: S,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, hyper::HeaderMap, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::from(body.to_string()))).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}
