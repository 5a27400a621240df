//! MiniStack (PyPI `ministack`, MIT, written by others): an AWS emulator
//! serving Cognito user pools (RS256 JWKS, AWS-shaped `iss`, `InitiateAuth`,
//! `GetTokensFromRefreshToken`, `RevokeToken`) and AppSync Events (control
//! plane, HTTP publish, the real-time WebSocket) in one process. The second,
//! independent peer the relay is proven against.
//!
//! `.ci/run` installs it (pinned) into `target/ministack-venv`; a test that
//! needs it fails, naming the command, when it is missing — never skips.
//!
//! What it does not do (docs/PROTOCOL.md, "MiniStack"): it never verifies a
//! JWT on AppSync (any non-SigV4 `Authorization` passes), so tests check
//! what the relay *sent*; it never rotates refresh tokens.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const REGION: &str = "us-east-1";
/// The pinned version `.ci/run` installs.
pub const VERSION: &str = "1.5.33";

/// A running MiniStack, killed on drop.
pub struct MiniStack {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

/// A user pool with one app client, as the relay's tests need it.
pub struct Pool {
    pub id: String,
    pub client_id: String,
}

/// An AppSync Events API with the `default` namespace, Cognito-authorized.
pub struct EventApi {
    pub id: String,
    /// `<id>.appsync-api.<region>.localhost:<port>` (routing is by Host).
    pub http_host: String,
    pub realtime_host: String,
}

/// Tokens from a sign-in or a refresh.
#[derive(Clone, Debug)]
pub struct Tokens {
    pub access: String,
    pub id: String,
    pub refresh: String,
}

fn ministack_bin() -> PathBuf {
    if let Ok(p) = std::env::var("MINISTACK_BIN") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/ministack-venv/bin/ministack")
}

impl MiniStack {
    pub async fn start() -> MiniStack {
        let bin = ministack_bin();
        assert!(
            bin.exists(),
            "MiniStack is not installed at {}: run `python3 -m venv target/ministack-venv && \
             target/ministack-venv/bin/pip install ministack=={VERSION} cryptography` \
             (what .ci/run does), or set MINISTACK_BIN",
            bin.display()
        );
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("ministack-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new(&bin)
            .env("GATEWAY_PORT", port.to_string())
            .env("BIND_HOST", "127.0.0.1")
            .env("STATE_DIR", &dir)
            .env("TMPDIR", &dir)
            .env("IOT_MTLS_ENABLED", "0")
            .env("MINISTACK_REGION", REGION)
            .env("APPSYNC_EVENTS_KA_INTERVAL_SECS", "5")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let ms = MiniStack { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, _)) = ms.get("/_ministack/health").await {
                return ms;
            }
            assert!(Instant::now() < deadline, "MiniStack did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Cognito's IdP endpoint (`X-Amz-Target` routing on `/`).
    pub fn cognito_endpoint(&self) -> String {
        format!("http://{}/", self.addr())
    }

    pub fn issuer(&self, pool: &Pool) -> String {
        format!("https://cognito-idp.{REGION}.amazonaws.com/{}", pool.id)
    }

    pub fn jwks_url(&self, pool: &Pool) -> String {
        format!("http://{}/{}/.well-known/jwks.json", self.addr(), pool.id)
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: String,
    ) -> Result<(u16, Value), String> {
        let client = appsync_relay::http_client::build(Duration::from_secs(5));
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr()));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from(body))).unwrap();
        let resp = client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    async fn get(&self, path: &str) -> Result<(u16, Value), String> {
        self.request("GET", path, &[], String::new()).await
    }

    /// A Cognito action; panics unless it answers 200.
    pub async fn cognito(&self, action: &str, body: Value) -> Value {
        let (status, v) = self.cognito_raw(action, body).await;
        assert_eq!(status, 200, "{action}: {v}");
        v
    }

    pub async fn cognito_raw(&self, action: &str, body: Value) -> (u16, Value) {
        let target = format!("AWSCognitoIdentityProviderService.{action}");
        self.request(
            "POST",
            "/",
            &[
                ("content-type", "application/x-amz-json-1.1"),
                ("x-amz-target", &target),
            ],
            body.to_string(),
        )
        .await
        .unwrap()
    }

    /// A pool whose access tokens live `access_seconds`, and a client
    /// allowing password sign-in and refresh.
    pub async fn pool(&self, access_seconds: u64) -> Pool {
        let pool = self
            .cognito("CreateUserPool", json!({"PoolName": "relay-tests"}))
            .await;
        let id = pool["UserPool"]["Id"].as_str().unwrap().to_string();
        let client = self
            .cognito(
                "CreateUserPoolClient",
                json!({
                    "UserPoolId": id,
                    "ClientName": "web",
                    "ExplicitAuthFlows": ["ALLOW_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"],
                    "AccessTokenValidity": access_seconds,
                    "IdTokenValidity": access_seconds,
                    "TokenValidityUnits": {"AccessToken": "seconds", "IdToken": "seconds"},
                    "EnableTokenRevocation": true,
                }),
            )
            .await;
        let client_id = client["UserPoolClient"]["ClientId"]
            .as_str()
            .unwrap()
            .to_string();
        Pool { id, client_id }
    }

    /// Creates `username` with a permanent password and signs in.
    pub async fn sign_up_and_in(&self, pool: &Pool, username: &str) -> Tokens {
        let password = "Passw0rd!relay";
        self.cognito(
            "AdminCreateUser",
            json!({"UserPoolId": pool.id, "Username": username, "MessageAction": "SUPPRESS"}),
        )
        .await;
        self.cognito(
            "AdminSetUserPassword",
            json!({"UserPoolId": pool.id, "Username": username, "Password": password, "Permanent": true}),
        )
        .await;
        let v = self
            .cognito(
                "InitiateAuth",
                json!({
                    "AuthFlow": "USER_PASSWORD_AUTH",
                    "ClientId": pool.client_id,
                    "AuthParameters": {"USERNAME": username, "PASSWORD": password},
                }),
            )
            .await;
        let r = &v["AuthenticationResult"];
        let s = |k: &str| r[k].as_str().unwrap().to_string();
        Tokens {
            access: s("AccessToken"),
            id: s("IdToken"),
            refresh: s("RefreshToken"),
        }
    }

    pub async fn revoke(&self, pool: &Pool, refresh: &str) {
        self.cognito(
            "RevokeToken",
            json!({"ClientId": pool.client_id, "Token": refresh}),
        )
        .await;
    }

    /// An AppSync Events API authorized by `pool`'s tokens, with the
    /// `default` namespace. The control plane is routed by a SigV4-shaped
    /// `Authorization` (not checked without `AUTH=true`).
    pub async fn event_api(&self, pool: &Pool) -> EventApi {
        let sigv4 = format!(
            "AWS4-HMAC-SHA256 Credential=test/20260101/{REGION}/appsync/aws4_request, \
             SignedHeaders=host, Signature=0"
        );
        let headers = [
            ("content-type", "application/json"),
            ("authorization", sigv4.as_str()),
        ];
        let cognito = json!({"authType": "AMAZON_COGNITO_USER_POOLS"});
        let body = json!({
            "name": "relay-tests",
            "eventConfig": {
                "authProviders": [{
                    "authType": "AMAZON_COGNITO_USER_POOLS",
                    "cognitoConfig": {"userPoolId": pool.id, "awsRegion": REGION},
                }],
                "connectionAuthModes": [cognito],
                "defaultPublishAuthModes": [cognito],
                "defaultSubscribeAuthModes": [cognito],
            },
        });
        let (status, v) = self
            .request("POST", "/v2/apis", &headers, body.to_string())
            .await
            .unwrap();
        assert_eq!(status, 200, "CreateApi: {v}");
        let api = &v["api"];
        let id = api["apiId"].as_str().unwrap().to_string();
        let (status, v) = self
            .request(
                "POST",
                &format!("/v2/apis/{id}/channelNamespaces"),
                &headers,
                json!({"name": "default"}).to_string(),
            )
            .await
            .unwrap();
        assert_eq!(status, 200, "CreateChannelNamespace: {v}");
        EventApi {
            http_host: api["dns"]["HTTP"].as_str().unwrap().to_string(),
            realtime_host: api["dns"]["REALTIME"].as_str().unwrap().to_string(),
            id,
        }
    }
}

impl Drop for MiniStack {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
