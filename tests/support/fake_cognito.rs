//! An in-process stand-in for the two Cognito refresh APIs, for what
//! cognito-local cannot do: `GetTokensFromRefreshToken` with refresh-token
//! rotation, counting calls, slow answers, and revocation on demand.
//!
//! It is strict about what it accepts: the `X-Amz-Target`, the client id,
//! a known and unrevoked refresh token, and (when configured) the client
//! secret / `SECRET_HASH`. Tokens are signed with the test key the JWKS
//! serves, so the relay and the emulator verify them for real.

use super::{access_claims, id_claims, now, sign, signing_key, CLIENT_ID};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

#[derive(Default)]
struct Inner {
    /// refresh token → (username, revoked)
    refresh_tokens: HashMap<String, (String, bool)>,
    /// refresh token → `origin_jti` of its sign-in (kept across refreshes,
    /// as Cognito keeps it).
    lineage: HashMap<String, String>,
}

/// Everything the fake's handler reads; shared with the test through
/// [`FakeCognito`]'s `Deref`.
#[derive(Default)]
pub struct Shared {
    issuer: String,
    inner: Mutex<Inner>,
    /// Calls per X-Amz-Target action.
    calls: Mutex<HashMap<String, u64>>,
    /// Refresh calls per refresh token (past any injected failure).
    calls_per_token: Mutex<HashMap<String, u64>>,
    pub token_lifetime: AtomicU64,
    pub rotate: AtomicBool,
    /// With rotation, kill the old refresh token at once (a 0 s grace period).
    pub invalidate_rotated: AtomicBool,
    /// Delay before answering, to make concurrent callers overlap.
    pub delay_ms: AtomicU64,
    pub client_secret: Mutex<Option<String>>,
    /// Errors to answer the next calls with, in order: `(HTTP status, __type)`.
    pub fail_next: Mutex<std::collections::VecDeque<(u16, String)>>,
    /// A hostile Cognito: answer refreshes with tokens of this other `sub`.
    pub answer_as_sub: Mutex<Option<String>>,
    /// Issue tokens as if this many seconds ago (so they are due at once).
    pub issued_ago: AtomicU64,
    /// `cognito:groups` of every access token issued from now on (none:
    /// no such claim).
    pub groups: Mutex<Option<Value>>,
}

pub struct FakeCognito {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl std::ops::Deref for FakeCognito {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.shared
    }
}

#[derive(Clone)]
pub struct Session {
    pub access: String,
    pub id: String,
    pub refresh: String,
}

fn mint(
    issuer: &str,
    username: &str,
    lifetime: u64,
    ago: u64,
    jti: &str,
    groups: Option<Value>,
) -> (String, String) {
    mint_as(issuer, username, lifetime, None, ago, jti, groups)
}

fn mint_as(
    issuer: &str,
    username: &str,
    lifetime: u64,
    sub: Option<&str>,
    ago: u64,
    origin_jti: &str,
    groups: Option<Value>,
) -> (String, String) {
    let now = now() - ago;
    let mut access = access_claims(issuer);
    if let Some(groups) = groups {
        access["cognito:groups"] = groups;
    }
    if let Some(sub) = sub {
        access["sub"] = json!(sub);
    }
    access["username"] = json!(username);
    access["origin_jti"] = json!(origin_jti);
    access["iat"] = json!(now);
    access["exp"] = json!(now + lifetime);
    let mut id = id_claims(issuer);
    id["cognito:username"] = json!(username);
    id["iat"] = json!(now);
    id["exp"] = json!(now + lifetime);
    (sign(&access, signing_key()), sign(&id, signing_key()))
}

fn error(kind: &str, message: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(
        json!({"__type": kind, "message": message}).to_string(),
    )));
    *r.status_mut() = hyper::StatusCode::BAD_REQUEST;
    r
}

impl Shared {
    async fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let target = req
            .headers()
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let action = target.rsplit('.').next().unwrap_or("").to_string();
        *self
            .calls
            .lock()
            .unwrap()
            .entry(action.clone())
            .or_default() += 1;
        let ms = self.delay_ms.load(Ordering::SeqCst);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let failure = self.fail_next.lock().unwrap().pop_front();
        if let Some((status, kind)) = failure {
            let mut r = error(&kind, "injected by the test");
            *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
            return r;
        }
        if !target.starts_with("AWSCognitoIdentityProviderService.") {
            return error("UnknownOperationException", "bad target");
        }
        if body["ClientId"] != CLIENT_ID {
            return error("ResourceNotFoundException", "unknown client");
        }
        let (rt, given_secret) = match action.as_str() {
            "GetTokensFromRefreshToken" => (
                body["RefreshToken"].as_str().unwrap_or("").to_string(),
                body["ClientSecret"].as_str().map(str::to_string),
            ),
            "InitiateAuth" if body["AuthFlow"] == "REFRESH_TOKEN_AUTH" => (
                body["AuthParameters"]["REFRESH_TOKEN"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                body["AuthParameters"]["SECRET_HASH"]
                    .as_str()
                    .map(str::to_string),
            ),
            _ => return error("InvalidParameterException", "unsupported"),
        };
        *self
            .calls_per_token
            .lock()
            .unwrap()
            .entry(rt.clone())
            .or_default() += 1;
        // A client with a secret refuses a call without one before it looks
        // at the refresh token, and GetTokensFromRefreshToken (which takes
        // the secret itself) a wrong one too: client first, as OAuth token
        // endpoints authenticate. An assumption about Cognito's order (AWS
        // does not document it); `appsync-relay check` claims nothing from
        // a pass either way.
        if let Some(expected) = self.client_secret.lock().unwrap().clone() {
            match &given_secret {
                None => {
                    return error(
                        "NotAuthorizedException",
                        "Client is configured for secret but secret was not received",
                    )
                }
                Some(given) if action == "GetTokensFromRefreshToken" && *given != expected => {
                    return error(
                        "NotAuthorizedException",
                        "Unable to verify secret hash for client",
                    );
                }
                Some(_) => {}
            }
        }
        let username = match self.inner.lock().unwrap().refresh_tokens.get(&rt) {
            Some((u, false)) => u.clone(),
            _ => return error("NotAuthorizedException", "Invalid Refresh Token"),
        };
        if let Some(expected) = self.client_secret.lock().unwrap().clone() {
            let wanted = match action.as_str() {
                "GetTokensFromRefreshToken" => expected,
                _ => appsync_relay::refresh::secret_hash(&expected, &username, CLIENT_ID),
            };
            if given_secret.as_deref() != Some(wanted.as_str()) {
                return error("NotAuthorizedException", "Unable to verify secret hash");
            }
        }
        let lifetime = self.token_lifetime.load(Ordering::SeqCst);
        let impostor = self.answer_as_sub.lock().unwrap().clone();
        let ago = self.issued_ago.load(Ordering::SeqCst);
        let jti = self
            .inner
            .lock()
            .unwrap()
            .lineage
            .get(&rt)
            .cloned()
            .unwrap_or_default();
        let (access, id) = mint_as(
            &self.issuer,
            &username,
            lifetime,
            impostor.as_deref(),
            ago,
            &jti,
            self.groups.lock().unwrap().clone(),
        );
        let mut result = json!({"AccessToken": access, "IdToken": id, "ExpiresIn": lifetime, "TokenType": "Bearer"});
        if action == "GetTokensFromRefreshToken" && self.rotate.load(Ordering::SeqCst) {
            let new_rt = format!("rt-{}", rand::random::<u64>());
            let mut inner = self.inner.lock().unwrap();
            inner
                .refresh_tokens
                .insert(new_rt.clone(), (username, false));
            inner.lineage.insert(new_rt.clone(), jti.clone());
            if self.invalidate_rotated.load(Ordering::SeqCst) {
                if let Some(old) = inner.refresh_tokens.get_mut(&rt) {
                    old.1 = true;
                }
            }
            result["RefreshToken"] = json!(new_rt);
        }
        Response::new(Full::new(Bytes::from(
            json!({"AuthenticationResult": result}).to_string(),
        )))
    }
}

impl FakeCognito {
    pub async fn start(issuer: String, token_lifetime: u64) -> FakeCognito {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            issuer,
            token_lifetime: AtomicU64::new(token_lifetime),
            ..Default::default()
        });
        let serving = shared.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let shared = serving.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(shared.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        FakeCognito { addr, shared }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Signs a user in: tokens valid for `token_lifetime` and a refresh token.
    pub fn sign_in(&self, username: &str) -> Session {
        let jti = format!("jti-{}", rand::random::<u64>());
        let (access, id) = mint(
            &self.issuer,
            username,
            self.token_lifetime.load(Ordering::SeqCst),
            self.issued_ago.load(Ordering::SeqCst),
            &jti,
            self.groups.lock().unwrap().clone(),
        );
        let refresh = format!("rt-{}", rand::random::<u64>());
        let mut inner = self.inner.lock().unwrap();
        inner
            .refresh_tokens
            .insert(refresh.clone(), (username.to_string(), false));
        inner.lineage.insert(refresh.clone(), jti);
        drop(inner);
        Session {
            access,
            id,
            refresh,
        }
    }

    /// Revokes a refresh token (and, as Cognito does, every token rotated from it is unaffected).
    pub fn revoke(&self, refresh: &str) {
        if let Some(e) = self.inner.lock().unwrap().refresh_tokens.get_mut(refresh) {
            e.1 = true;
        }
    }

    /// Revokes every refresh token of `username`.
    pub fn revoke_user(&self, username: &str) {
        for (u, revoked) in self.inner.lock().unwrap().refresh_tokens.values_mut() {
            if u == username {
                *revoked = true;
            }
        }
    }

    /// Whether Cognito would still accept `refresh`.
    pub fn is_live(&self, refresh: &str) -> bool {
        matches!(
            self.inner.lock().unwrap().refresh_tokens.get(refresh),
            Some((_, false))
        )
    }

    /// Whether any refresh token of `username` is still accepted.
    pub fn any_live(&self, username: &str) -> bool {
        self.inner
            .lock()
            .unwrap()
            .refresh_tokens
            .values()
            .any(|(u, revoked)| u == username && !revoked)
    }

    /// A refresh the relay does not see (the SSR app's own Amplify, another
    /// replica): Cognito's answer as `(access, id, refresh)` — `refresh` is
    /// the token sent when Cognito did not rotate — or `None` if refused.
    #[allow(dead_code)] // not every test binary refreshes behind the relay
    pub async fn refresh_outside(&self, refresh: &str) -> Option<(String, String, String)> {
        let client = appsync_relay::http_client::build(Duration::from_secs(5));
        let body = json!({"ClientId": CLIENT_ID, "RefreshToken": refresh}).to_string();
        let req = hyper::Request::post(self.endpoint())
            .header("content-type", "application/x-amz-json-1.1")
            .header(
                "x-amz-target",
                "AWSCognitoIdentityProviderService.GetTokensFromRefreshToken",
            )
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = client.request(req).await.ok()?;
        let bytes = resp.into_body().collect().await.ok()?.to_bytes();
        let v: Value = serde_json::from_slice(&bytes).ok()?;
        let r = &v["AuthenticationResult"];
        let s = |k: &str| r[k].as_str().map(str::to_string);
        Some((
            s("AccessToken")?,
            s("IdToken")?,
            s("RefreshToken").unwrap_or_else(|| refresh.to_string()),
        ))
    }

    pub fn calls(&self, action: &str) -> u64 {
        self.calls.lock().unwrap().get(action).copied().unwrap_or(0)
    }

    pub fn total_calls(&self) -> u64 {
        self.calls.lock().unwrap().values().sum()
    }

    /// Refresh calls made with each refresh token so far.
    #[allow(dead_code)] // not every test binary counts them
    pub fn calls_per_token(&self) -> HashMap<String, u64> {
        self.calls_per_token.lock().unwrap().clone()
    }
}

/// A token that expired `ago` seconds ago but is otherwise genuine.
pub fn expired_access(issuer: &str, username: &str, ago: u64) -> String {
    let mut claims = access_claims(issuer);
    claims["username"] = json!(username);
    claims["iat"] = json!(now() - 3600 - ago);
    claims["auth_time"] = json!(now() - 3600 - ago);
    claims["exp"] = json!(now() - ago);
    sign(&claims, signing_key())
}
