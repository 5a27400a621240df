//! Test harness around the real [`cognito-local`] emulator (npm package, pinned
//! in `tests/node/package.json`), so integration tests can get genuine
//! Cognito-shaped RS256 tokens and a JWKS endpoint to verify them against.
//!
//! Include it from an integration test with
//!
//! ```ignore
//! #[path = "support/cognito_local.rs"]
//! mod cognito_local;
//! ```
//!
//! and then:
//!
//! ```ignore
//! let cognito = cognito_local::CognitoLocal::start().await;
//! cognito.create_user("alice+test@example.com", "Passw0rd!").await;
//! let tokens = cognito.sign_in("alice+test@example.com", "Passw0rd!").await;
//! // verify tokens.access_token against cognito.jwks_url / cognito.issuer
//! ```
//!
//! Requirements: `node` (>= 20) and `npm` on `PATH`. The first use runs
//! `npm ci` in `tests/node` if `node_modules` is missing or holds a different
//! version of any package pinned in `package.json` (see [`ensure_node_deps`]).
//!
//! Facts about cognito-local 5.3.0 this harness relies on (verified by reading
//! `node_modules/cognito-local/lib` and by `tests/cognito_local_smoke.rs`):
//!
//! * Listen address comes from env `PORT` (default 9229) and `HOST` (default
//!   `localhost`), overridable by `ServerConfig.{port,hostname}` in
//!   `.cognito/config.json`. `PORT=0` works for the listener, but the token
//!   issuer is derived from the *configured* port (`TokenConfig.IssuerDomain`
//!   defaults to `http://$HOST:$PORT`), so with port 0 the issuer would be
//!   `http://127.0.0.1:0/...`. We therefore pick a free port ourselves (bind
//!   `127.0.0.1:0`, release it) and retry with a new one if cognito-local then
//!   fails to bind it.
//! * Data lives in `.cognito/` below the process cwd (`config.json` and
//!   `db/*.json`); every instance gets a fresh temporary directory.
//! * Issuer: `http://127.0.0.1:<port>/<userPoolId>`, pool ids look like
//!   `local_XXXXXXXX`. JWKS: `<issuer>/.well-known/jwks.json` (any pool id is
//!   accepted there; it always serves the single built-in key with
//!   `kid: "CognitoLocal"`, `alg: RS256`). NB: the
//!   `/.well-known/openid-configuration` document hard-codes
//!   `http://localhost:9229` and is wrong on any other port; don't use it.
//! * Token lifetimes come from the app client's `AccessTokenValidity`,
//!   `IdTokenValidity`, `RefreshTokenValidity` + `TokenValidityUnits`
//!   (`seconds|minutes|hours|days`, no minimum enforced, so 1-second tokens
//!   work). Without them: access 24h, id 24h, refresh 7d. Careful: if
//!   `IdTokenValidity` is given without `TokenValidityUnits.IdToken`, the unit
//!   defaults to *minutes*. [`ClientOptions`] always sends explicit units.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};
use tokio::process::{Child, ChildStdin, Command};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Overall deadline for the emulator to come up (excluding `npm ci`).
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);
/// Per-request timeout for calls to the emulator.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How many times to retry when the port we picked was taken in the meantime.
const PORT_ATTEMPTS: usize = 5;
/// Child output lines kept for error messages.
const MAX_LOG_LINES: usize = 400;
/// Set to anything to echo the emulator's stdout/stderr to the test's stderr.
pub const LOG_ENV: &str = "COGNITO_LOCAL_LOG";
/// Password used by [`CognitoLocal::create_user`] callers that don't care.
pub const DEFAULT_PASSWORD: &str = "Passw0rd!";

/// Tokens returned by `InitiateAuth`.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub access_token: String,
    pub id_token: String,
    /// For `USER_PASSWORD_AUTH` this is the newly issued refresh token. For
    /// [`CognitoLocal::refresh`] cognito-local (like Cognito without rotation)
    /// returns no new refresh token, so this is the one that was passed in.
    pub refresh_token: String,
}

/// Lifetimes of tokens issued to an app client. `None` = cognito-local's
/// default (access 24h, id 24h, refresh 7d). Sent to cognito-local as
/// `*TokenValidity` in seconds; it does not enforce Cognito's minimums.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    pub access_token_validity: Option<Duration>,
    pub id_token_validity: Option<Duration>,
    pub refresh_token_validity: Option<Duration>,
}

/// Error response from the cognito-local JSON API.
#[derive(Debug)]
pub struct ApiError {
    pub action: String,
    pub status: u16,
    /// `__type`, e.g. `NotAuthorizedException` or `CognitoLocal#Unsupported`.
    pub error_type: String,
    pub message: String,
    pub body: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cognito-local {} failed with HTTP {}: {} ({}); body: {}",
            self.action, self.status, self.error_type, self.message, self.body
        )
    }
}

impl std::error::Error for ApiError {}

type HttpClient = Client<HttpConnector, Full<Bytes>>;
type LogBuf = Arc<Mutex<Vec<String>>>;

/// A running cognito-local with one user pool and one app client (no secret,
/// `USER_PASSWORD_AUTH` + `REFRESH_TOKEN_AUTH`). The child process is killed
/// and its data directory removed on drop.
pub struct CognitoLocal {
    /// `http://127.0.0.1:<port>`
    pub base_url: String,
    pub port: u16,
    /// e.g. `local_2Zp1xY9q`
    pub user_pool_id: String,
    /// Client id of the default app client.
    pub client_id: String,
    /// Exact `iss` of the tokens: `http://127.0.0.1:<port>/<user_pool_id>`.
    pub issuer: String,
    /// `<base_url>/<user_pool_id>/.well-known/jwks.json`
    pub jwks_url: String,
    data_dir: PathBuf,
    child: Option<Child>,
    /// Our end of the child's stdin; closing it makes the wrapper exit. Kept
    /// outside `child` because `Child::wait` would close it.
    child_stdin: Option<ChildStdin>,
    logs: LogBuf,
    http: HttpClient,
}

impl CognitoLocal {
    /// Starts cognito-local and provisions a pool and a client with default
    /// token lifetimes. Panics with context (including the emulator's output)
    /// on failure.
    pub async fn start() -> Self {
        Self::start_with(ClientOptions::default()).await
    }

    /// Like [`start`](Self::start) but with custom lifetimes for the default
    /// app client.
    pub async fn start_with(options: ClientOptions) -> Self {
        match Self::try_start_with(options).await {
            Ok(c) => c,
            Err(e) => panic!("failed to start cognito-local: {e}"),
        }
    }

    pub async fn try_start_with(options: ClientOptions) -> Result<Self, BoxError> {
        let bin = tokio::task::spawn_blocking(ensure_node_deps)
            .await
            .map_err(|e| format!("npm install task panicked: {e}"))??;
        let mut last_err: Option<BoxError> = None;
        for _ in 0..PORT_ATTEMPTS {
            match Self::launch(&bin).await {
                Ok(mut me) => {
                    if let Err(e) = me.provision(&options).await {
                        return Err(
                            format!("{e}\n--- cognito-local output ---\n{}", me.logs()).into()
                        );
                    }
                    return Ok(me);
                }
                Err(LaunchError::PortTaken(e)) => last_err = Some(e),
                Err(LaunchError::Fatal(e)) => return Err(e),
            }
        }
        Err(format!(
            "cognito-local could not bind a free port after {PORT_ATTEMPTS} attempts; last error: {}",
            last_err.map(|e| e.to_string()).unwrap_or_default()
        )
        .into())
    }

    /// Spawns the emulator on a fresh port in a fresh data dir and waits until
    /// it is listening.
    async fn launch(bin: &Path) -> Result<Self, LaunchError> {
        let port = pick_free_port().map_err(LaunchError::Fatal)?;
        let base_url = format!("http://127.0.0.1:{port}");
        let data_dir = new_temp_dir().map_err(LaunchError::Fatal)?;
        let config = json!({
            "UserPoolDefaults": { "UsernameAttributes": [] },
            "TokenConfig": { "IssuerDomain": base_url },
            "ServerConfig": { "port": port, "hostname": "127.0.0.1" },
        });
        let cognito_dir = data_dir.join(".cognito");
        std::fs::create_dir_all(&cognito_dir)
            .and_then(|()| std::fs::write(cognito_dir.join("config.json"), config.to_string()))
            .map_err(|e| {
                LaunchError::Fatal(format!("writing {}: {e}", cognito_dir.display()).into())
            })?;

        // Run the bin script through a tiny wrapper that exits when our end of
        // its stdin closes, so the emulator never outlives the test process
        // (even if it is SIGKILLed and no destructor runs).
        let wrapper = "process.stdin.on('close', () => process.exit(0)).resume(); \
                       require(process.argv[1]);";
        let mut cmd = Command::new("node");
        cmd.arg("-e")
            .arg(wrapper)
            .arg(bin)
            .current_dir(&data_dir)
            .env("PORT", port.to_string())
            .env("HOST", "127.0.0.1")
            .env("NODE_NO_WARNINGS", "1")
            .env_remove("COGNITO_LOCAL_DEVMODE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&data_dir);
                return Err(LaunchError::Fatal(
                    format!("spawning `node` (is Node.js on PATH?): {e}").into(),
                ));
            }
        };

        let child_stdin = child.stdin.take();
        let logs: LogBuf = Arc::new(Mutex::new(Vec::new()));
        let echo = std::env::var_os(LOG_ENV).is_some();
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let mut pumps = Vec::new();
        if let Some(out) = child.stdout.take() {
            pumps.push(tokio::spawn(pump_lines(
                out,
                "stdout",
                logs.clone(),
                echo,
                Some(ready_tx),
            )));
        }
        if let Some(err) = child.stderr.take() {
            pumps.push(tokio::spawn(pump_lines(
                err,
                "stderr",
                logs.clone(),
                echo,
                None,
            )));
        }

        // `child` stays a local (killed on drop) until startup succeeded; `me`
        // owns the data dir and removes it if we bail out.
        let mut me = CognitoLocal {
            jwks_url: String::new(),
            issuer: String::new(),
            user_pool_id: String::new(),
            client_id: String::new(),
            base_url,
            port,
            data_dir,
            child: None,
            child_stdin,
            logs,
            http: Client::builder(TokioExecutor::new()).build_http(),
        };

        let deadline = tokio::time::Instant::now() + STARTUP_DEADLINE;
        let mut poll = tokio::time::interval(Duration::from_millis(50));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        enum Event {
            Ready(String),
            Exited(String),
            Tick,
            Deadline,
        }
        loop {
            let event = tokio::select! {
                // Normal path: the "Cognito Local running on http://HOST:PORT"
                // log line, printed from the server's listen callback.
                Some(url) = ready_rx.recv() => Event::Ready(url),
                status = child.wait() => Event::Exited(
                    status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string())
                ),
                // Fallback in case the log line format changes: probe /health.
                _ = poll.tick() => Event::Tick,
                _ = tokio::time::sleep_until(deadline) => Event::Deadline,
            };
            match event {
                Event::Ready(url) => {
                    let expected = format!("127.0.0.1:{port}");
                    if !url.ends_with(&expected) {
                        return Err(LaunchError::Fatal(
                            format!(
                                "cognito-local is listening on {url}, expected {expected}\n--- output ---\n{}",
                                me.logs()
                            )
                            .into(),
                        ));
                    }
                    break;
                }
                Event::Exited(status) => {
                    // Let the pumps drain the last lines before reporting.
                    for pump in pumps {
                        let _ = tokio::time::timeout(Duration::from_secs(2), pump).await;
                    }
                    let logs = me.logs();
                    let msg = format!(
                        "cognito-local exited during startup ({status}) on port {port}\n--- output ---\n{logs}"
                    );
                    return Err(if logs.contains("EADDRINUSE") {
                        LaunchError::PortTaken(msg.into())
                    } else {
                        LaunchError::Fatal(msg.into())
                    });
                }
                Event::Tick => {
                    if me.health().await {
                        break;
                    }
                }
                Event::Deadline => {
                    return Err(LaunchError::Fatal(
                        format!(
                            "cognito-local did not become ready within {STARTUP_DEADLINE:?} on port {port}\n--- output ---\n{}",
                            me.logs()
                        )
                        .into(),
                    ));
                }
            }
        }
        me.child = Some(child);
        if !me.health().await {
            return Err(LaunchError::Fatal(
                format!(
                    "cognito-local reported ready but GET /health failed\n--- output ---\n{}",
                    me.logs()
                )
                .into(),
            ));
        }
        Ok(me)
    }

    async fn provision(&mut self, options: &ClientOptions) -> Result<(), BoxError> {
        let pool = self
            .call(
                "CreateUserPool",
                json!({ "PoolName": "appsync-relay-test", "UsernameAttributes": [] }),
            )
            .await?;
        self.user_pool_id = str_at(&pool, "/UserPool/Id")?;
        self.client_id = self
            .create_app_client("appsync-relay-test", options)
            .await?;
        self.issuer = format!("{}/{}", self.base_url, self.user_pool_id);
        self.jwks_url = format!("{}/.well-known/jwks.json", self.issuer);
        Ok(())
    }

    /// Creates another app client in the pool (no secret, `USER_PASSWORD_AUTH`
    /// and `REFRESH_TOKEN_AUTH`) and returns its client id.
    pub async fn create_app_client(
        &self,
        name: &str,
        options: &ClientOptions,
    ) -> Result<String, BoxError> {
        let mut req = json!({
            "UserPoolId": self.user_pool_id,
            "ClientName": name,
            "GenerateSecret": false,
            "ExplicitAuthFlows": ["ALLOW_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"],
            "TokenValidityUnits": { "AccessToken": "seconds", "IdToken": "seconds", "RefreshToken": "seconds" },
        });
        for (field, validity) in [
            ("AccessTokenValidity", options.access_token_validity),
            ("IdTokenValidity", options.id_token_validity),
            ("RefreshTokenValidity", options.refresh_token_validity),
        ] {
            if let Some(d) = validity {
                let secs = d.as_secs();
                if secs == 0 {
                    return Err(format!("{field} must be at least one second").into());
                }
                req[field] = json!(secs);
            }
        }
        let resp = self.call("CreateUserPoolClient", req).await?;
        str_at(&resp, "/UserPoolClient/ClientId")
    }

    /// `AdminCreateUser` (welcome message suppressed) followed by
    /// `AdminSetUserPassword` with `Permanent: true`, so the user can sign in
    /// directly. Returns the user's `sub`. Panics on failure.
    pub async fn create_user(&self, username: &str, password: &str) -> String {
        self.try_create_user(username, password)
            .await
            .unwrap_or_else(|e| panic!("creating cognito-local user {username:?}: {e}"))
    }

    pub async fn try_create_user(
        &self,
        username: &str,
        password: &str,
    ) -> Result<String, BoxError> {
        let created = self
            .call(
                "AdminCreateUser",
                json!({
                    "UserPoolId": self.user_pool_id,
                    "Username": username,
                    "MessageAction": "SUPPRESS",
                    "TemporaryPassword": password,
                }),
            )
            .await?;
        let sub = created
            .pointer("/User/Attributes")
            .and_then(Value::as_array)
            .and_then(|attrs| attrs.iter().find(|a| a["Name"] == "sub"))
            .and_then(|a| a["Value"].as_str())
            .ok_or_else(|| format!("AdminCreateUser response has no sub attribute: {created}"))?
            .to_owned();
        self.call(
            "AdminSetUserPassword",
            json!({
                "UserPoolId": self.user_pool_id,
                "Username": username,
                "Password": password,
                "Permanent": true,
            }),
        )
        .await?;
        Ok(sub)
    }

    /// `InitiateAuth` with `USER_PASSWORD_AUTH` on the default client.
    /// Panics on failure.
    pub async fn sign_in(&self, username: &str, password: &str) -> Tokens {
        self.try_sign_in_with_client(&self.client_id, username, password)
            .await
            .unwrap_or_else(|e| panic!("signing in {username:?} to cognito-local: {e}"))
    }

    pub async fn try_sign_in(&self, username: &str, password: &str) -> Result<Tokens, BoxError> {
        self.try_sign_in_with_client(&self.client_id, username, password)
            .await
    }

    pub async fn try_sign_in_with_client(
        &self,
        client_id: &str,
        username: &str,
        password: &str,
    ) -> Result<Tokens, BoxError> {
        let resp = self
            .call(
                "InitiateAuth",
                json!({
                    "ClientId": client_id,
                    "AuthFlow": "USER_PASSWORD_AUTH",
                    "AuthParameters": { "USERNAME": username, "PASSWORD": password },
                }),
            )
            .await?;
        if let Some(challenge) = resp.get("ChallengeName").and_then(Value::as_str) {
            return Err(format!(
                "InitiateAuth returned challenge {challenge} instead of tokens: {resp}"
            )
            .into());
        }
        Ok(Tokens {
            access_token: str_at(&resp, "/AuthenticationResult/AccessToken")?,
            id_token: str_at(&resp, "/AuthenticationResult/IdToken")?,
            refresh_token: str_at(&resp, "/AuthenticationResult/RefreshToken")?,
        })
    }

    /// `InitiateAuth` with `REFRESH_TOKEN_AUTH` on the default client: new
    /// access and ID tokens (cognito-local does not rotate refresh tokens;
    /// the returned `refresh_token` is the input). Fails with
    /// `NotAuthorizedException` after [`revoke`](Self::revoke).
    pub async fn refresh(&self, refresh_token: &str) -> Result<Tokens, BoxError> {
        self.refresh_with_client(&self.client_id, refresh_token)
            .await
    }

    pub async fn refresh_with_client(
        &self,
        client_id: &str,
        refresh_token: &str,
    ) -> Result<Tokens, BoxError> {
        let resp = self
            .call(
                "InitiateAuth",
                json!({
                    "ClientId": client_id,
                    "AuthFlow": "REFRESH_TOKEN_AUTH",
                    "AuthParameters": { "REFRESH_TOKEN": refresh_token },
                }),
            )
            .await?;
        Ok(Tokens {
            access_token: str_at(&resp, "/AuthenticationResult/AccessToken")?,
            id_token: str_at(&resp, "/AuthenticationResult/IdToken")?,
            refresh_token: resp
                .pointer("/AuthenticationResult/RefreshToken")
                .and_then(Value::as_str)
                .unwrap_or(refresh_token)
                .to_owned(),
        })
    }

    /// `RevokeToken` for a refresh token of the default client. Only affects
    /// later refreshes; already issued access/ID tokens stay valid (there is
    /// no revocation list for them in cognito-local).
    pub async fn revoke(&self, refresh_token: &str) -> Result<(), BoxError> {
        self.call(
            "RevokeToken",
            json!({ "ClientId": self.client_id, "Token": refresh_token }),
        )
        .await
        .map(|_| ())
    }

    /// Fetches and parses the JWKS document.
    pub async fn jwks(&self) -> Result<Value, BoxError> {
        let (status, body) = self
            .request(hyper::Method::GET, &self.jwks_url, None)
            .await?;
        if status != 200 {
            return Err(format!(
                "GET {} returned HTTP {status}: {}",
                self.jwks_url,
                String::from_utf8_lossy(&body)
            )
            .into());
        }
        Ok(serde_json::from_slice(&body)?)
    }

    /// Calls `AWSCognitoIdentityProviderService.<action>` on the JSON API.
    /// Non-200 responses become an [`ApiError`] (downcast the box to inspect).
    pub async fn call(&self, action: &str, body: Value) -> Result<Value, BoxError> {
        let (status, bytes) = self
            .request(
                hyper::Method::POST,
                &format!("{}/", self.base_url),
                Some((action, body)),
            )
            .await?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if status != 200 {
            let parsed: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            return Err(Box::new(ApiError {
                action: action.to_owned(),
                status,
                error_type: parsed["__type"].as_str().unwrap_or("").to_owned(),
                message: parsed["message"].as_str().unwrap_or("").to_owned(),
                body: text,
            }));
        }
        serde_json::from_str(&text)
            .map_err(|e| format!("{action}: response is not JSON ({e}): {text}").into())
    }

    async fn request(
        &self,
        method: hyper::Method,
        url: &str,
        amz: Option<(&str, Value)>,
    ) -> Result<(u16, Bytes), BoxError> {
        let mut builder = hyper::Request::builder().method(method).uri(url);
        let body = match amz {
            Some((action, json)) => {
                builder = builder
                    .header(
                        "X-Amz-Target",
                        format!("AWSCognitoIdentityProviderService.{action}"),
                    )
                    .header("Content-Type", "application/x-amz-json-1.1");
                Bytes::from(json.to_string())
            }
            None => Bytes::new(),
        };
        let req = builder.body(Full::new(body))?;
        let fut = async {
            let resp = self.http.request(req).await?;
            let status = resp.status().as_u16();
            let bytes = resp.into_body().collect().await?.to_bytes();
            Ok::<_, BoxError>((status, bytes))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, fut)
            .await
            .map_err(|_| format!("request to {url} timed out after {REQUEST_TIMEOUT:?}"))?
    }

    async fn health(&self) -> bool {
        let url = format!("{}/health", self.base_url);
        matches!(
            tokio::time::timeout(
                Duration::from_secs(2),
                self.request(hyper::Method::GET, &url, None)
            )
            .await,
            Ok(Ok((200, _)))
        )
    }

    /// The emulator's captured stdout/stderr (ANSI colours stripped).
    pub fn logs(&self) -> String {
        self.logs.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// Temporary working directory of the emulator (holds `.cognito/`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}

impl Drop for CognitoLocal {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            drop(self.child_stdin.take());
            // Reap it so the data dir isn't in use while we delete it. SIGKILL
            // is immediate, so this is short; bounded anyway.
            let until = Instant::now() + Duration::from_secs(2);
            while Instant::now() < until {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

enum LaunchError {
    PortTaken(BoxError),
    Fatal(BoxError),
}

// ---------------------------------------------------------------------------
// JWT helpers (decode only, no verification)

/// Decodes one base64url JSON segment of a JWT (0 = header, 1 = payload).
pub fn jwt_segment(token: &str, index: usize) -> Result<Value, BoxError> {
    let seg = token
        .split('.')
        .nth(index)
        .ok_or_else(|| format!("JWT has no segment {index}"))?;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(seg)?;
    Ok(serde_json::from_slice(&raw)?)
}

/// JWT header as JSON; panics on malformed input.
pub fn jwt_header(token: &str) -> Value {
    jwt_segment(token, 0).unwrap_or_else(|e| panic!("bad JWT header in {token:?}: {e}"))
}

/// JWT payload (claims) as JSON; panics on malformed input.
pub fn jwt_claims(token: &str) -> Value {
    jwt_segment(token, 1).unwrap_or_else(|e| panic!("bad JWT payload in {token:?}: {e}"))
}

// ---------------------------------------------------------------------------
// node_modules installation

fn node_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("node")
}

/// Makes sure `tests/node/node_modules` holds every package pinned in
/// `tests/node/package.json` (`dependencies` and `devDependencies`, at the
/// pinned versions) and returns the path of cognito-local's start script.
/// Runs once per test process; parallel callers block on the `OnceLock`.
/// Across processes (e.g. nextest) a lock directory in the temp dir
/// serialises `npm ci`.
pub fn ensure_node_deps() -> Result<PathBuf, BoxError> {
    static DEPS: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DEPS.get_or_init(|| install_node_deps().map_err(|e| e.to_string()))
        .clone()
        .map_err(Into::into)
}

fn install_node_deps() -> Result<PathBuf, BoxError> {
    let dir = node_dir();
    let bin = dir.join("node_modules").join(".bin").join("cognito-local");
    let pkg_path = dir.join("package.json");
    let pkg: Value = {
        let text = std::fs::read_to_string(&pkg_path)
            .map_err(|e| format!("reading {}: {e}", pkg_path.display()))?;
        serde_json::from_str(&text)?
    };
    if pkg.pointer("/dependencies/cognito-local").is_none() {
        return Err(format!("{} does not pin cognito-local", pkg_path.display()).into());
    }
    // (name, pinned version) for every dependency; pins are exact versions.
    let pinned: Vec<(String, String)> = ["dependencies", "devDependencies"]
        .iter()
        .filter_map(|section| pkg.get(*section).and_then(Value::as_object))
        .flat_map(|deps| deps.iter())
        .map(|(name, version)| (name.clone(), version.as_str().unwrap_or("").to_owned()))
        .collect();
    let installed_ok = || -> bool {
        bin.exists()
            && pinned.iter().all(|(name, version)| {
                let pkg = dir.join("node_modules").join(name).join("package.json");
                std::fs::read_to_string(pkg)
                    .ok()
                    .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                    .is_some_and(|v| v["version"].as_str() == Some(version.as_str()))
            })
    };

    if !installed_ok() {
        let _guard = DirLock::acquire(Duration::from_secs(300))?;
        if !installed_ok() {
            eprintln!("cognito_local: running `npm ci` in {} ...", dir.display());
            let out = std::process::Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&dir)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| {
                    format!(
                        "running `npm ci` in {} (is npm on PATH?): {e}",
                        dir.display()
                    )
                })?;
            if !out.status.success() {
                return Err(format!(
                    "`npm ci` in {} failed ({}):\n{}\n{}",
                    dir.display(),
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                )
                .into());
            }
            if !installed_ok() {
                return Err(format!(
                    "`npm ci` succeeded but {} or a package pinned in {} is missing",
                    bin.display(),
                    pkg_path.display()
                )
                .into());
            }
        }
    }
    // `.bin/cognito-local` is a symlink to the package's start script; we run
    // that script with `node` through a wrapper (see `launch`).
    std::fs::canonicalize(&bin).map_err(|e| format!("resolving {}: {e}", bin.display()).into())
}

/// Cross-process mutex: an exclusive directory in the temp dir. A lock older
/// than the timeout is considered stale (crashed holder) and broken.
struct DirLock(PathBuf);

impl DirLock {
    fn acquire(timeout: Duration) -> Result<Self, BoxError> {
        let tag: String = env!("CARGO_MANIFEST_DIR")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let path = std::env::temp_dir().join(format!("cognito-local-npm-ci-{tag}.lock"));
        let start = Instant::now();
        loop {
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(DirLock(path)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let age = std::fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .unwrap_or_default();
                    if age > timeout {
                        let _ = std::fs::remove_dir(&path);
                        continue;
                    }
                    if start.elapsed() > timeout {
                        return Err(format!("timed out waiting for lock {}", path.display()).into());
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(format!("creating lock {}: {e}", path.display()).into()),
            }
        }
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

// ---------------------------------------------------------------------------
// misc

fn pick_free_port() -> Result<u16, BoxError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn new_temp_dir() -> Result<PathBuf, BoxError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "cognito-local-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    Ok(dir)
}

fn str_at(v: &Value, pointer: &str) -> Result<String, BoxError> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| format!("missing string at {pointer} in {v}").into())
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // CSI: parameters until a final byte in '@'..='~'.
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

async fn pump_lines<R: AsyncRead + Unpin>(
    reader: R,
    stream: &'static str,
    logs: LogBuf,
    echo: bool,
    ready: Option<tokio::sync::mpsc::UnboundedSender<String>>,
) {
    const MARKER: &str = "Cognito Local running on ";
    let mut lines = BufReader::new(reader).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let line = strip_ansi(&line);
        if echo {
            eprintln!("[cognito-local {stream}] {line}");
        }
        if let (Some(tx), Some(idx)) = (&ready, line.find(MARKER)) {
            let url = line[idx + MARKER.len()..].trim().to_owned();
            let _ = tx.send(url);
        }
        if let Ok(mut l) = logs.lock() {
            if l.len() >= MAX_LOG_LINES {
                l.remove(0);
            }
            l.push(format!("[{stream}] {line}"));
        }
    }
}
