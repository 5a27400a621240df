//! The demo's development identity provider: a Cognito look-alike that
//! signs access and ID tokens with an RSA key generated at start-up and
//! publishes the public half as a JWKS at
//! `http://127.0.0.1:<port>/<pool id>/.well-known/jwks.json`.
//!
//! It also answers Cognito's `GetTokensFromRefreshToken` on `POST /`, with
//! rotation (the old refresh token dies at once, the strictest Cognito
//! setting), so a demo session lives past its token lifetime the way a real
//! one does.
//!
//! The key and the refresh tokens live only in this process's memory and
//! die with it. This type is reachable only from `appsync-relay demo`.

use crate::clock::now_secs;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::RngCore;
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use rsa::RsaPrivateKey;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Tokens for one sign-in.
pub struct IssuedTokens {
    pub access_token: String,
    pub id_token: String,
    pub refresh_token: String,
}

impl fmt::Debug for IssuedTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IssuedTokens(<redacted>)")
    }
}

/// What a refresh token stands for: whose sign-in, and its lineage claims
/// (kept across refreshes, as Cognito keeps `origin_jti`).
#[derive(Clone)]
struct Grant {
    username: String,
    origin_jti: String,
    event_id: String,
}

pub struct DevIdentityProvider {
    encoding_key: EncodingKey,
    /// Live refresh tokens. A refresh rotates: the old token dies at once.
    grants: std::sync::Mutex<std::collections::HashMap<String, Grant>>,
    kid: String,
    issuer: String,
    client_id: String,
    lifetime: Duration,
    jwks: Value,
}

impl fmt::Debug for DevIdentityProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevIdentityProvider")
            .field("issuer", &self.issuer)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A Cognito-shaped error answer.
fn cognito_error(kind: &str) -> Response<Full<Bytes>> {
    let body = json!({"__type": kind, "message": kind}).to_string();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = StatusCode::BAD_REQUEST;
    resp
}

impl DevIdentityProvider {
    /// Generates a key and serves its JWKS on `listener`.
    pub async fn start(
        listener: TcpListener,
        pool_id: &str,
        client_id: &str,
        lifetime: Duration,
    ) -> std::io::Result<Arc<DevIdentityProvider>> {
        let addr = listener.local_addr()?;
        // 2048-bit RSA generation takes ~0.1–1 s; keep it off the reactor.
        let key = tokio::task::spawn_blocking(|| RsaPrivateKey::new(&mut rand::thread_rng(), 2048))
            .await
            .map_err(std::io::Error::other)?
            .map_err(std::io::Error::other)?;
        let der = key.to_pkcs1_der().map_err(std::io::Error::other)?;
        let kid = format!("demo-{}", random_hex(8));
        let public = key.to_public_key();
        let jwks = json!({"keys": [{
            "kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid,
            "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
        }]});
        let idp = Arc::new(DevIdentityProvider {
            encoding_key: EncodingKey::from_rsa_der(der.as_bytes()),
            grants: std::sync::Mutex::new(std::collections::HashMap::new()),
            kid,
            issuer: format!("http://{addr}/{pool_id}"),
            client_id: client_id.to_string(),
            lifetime,
            jwks,
        });
        let jwks_path = format!("/{pool_id}/.well-known/jwks.json");
        let serving = idp.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (jwks_path, idp) = (jwks_path.clone(), serving.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (jwks_path, idp) = (jwks_path.clone(), idp.clone());
                        async move { Ok::<_, Infallible>(idp.respond(req, &jwks_path).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(idp)
    }

    /// `GET <jwks path>` and the OpenID configuration beside it, and `POST /` with
    /// `X-Amz-Target: AWSCognitoIdentityProviderService.GetTokensFromRefreshToken`
    /// (JSON `{"ClientId", "RefreshToken"}`), answered as Cognito does, with
    /// rotation.
    async fn respond(
        &self,
        req: hyper::Request<hyper::body::Incoming>,
        jwks_path: &str,
    ) -> Response<Full<Bytes>> {
        let document = if req.uri().path() == jwks_path {
            Some(self.jwks.to_string())
        } else if req.uri().path() == jwks_path.replace("jwks.json", "openid-configuration") {
            // As Cognito serves it (what `appsync-relay check` reads).
            Some(
                serde_json::json!({
                    "issuer": self.issuer,
                    "jwks_uri": self.jwks_url(),
                    "id_token_signing_alg_values_supported": ["RS256"],
                })
                .to_string(),
            )
        } else {
            None
        };
        if let Some(document) = document {
            let mut resp = Response::new(Full::new(Bytes::from(document)));
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            return resp;
        }
        let target = req
            .headers()
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if req.method() != hyper::Method::POST
            || target != "AWSCognitoIdentityProviderService.GetTokensFromRefreshToken"
        {
            let mut resp = Response::new(Full::new(Bytes::new()));
            *resp.status_mut() = StatusCode::NOT_FOUND;
            return resp;
        }
        let body = match http_body_util::Limited::new(req.into_body(), 16 * 1024)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(_) => return cognito_error("InvalidParameterException"),
        };
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if body["ClientId"] != self.client_id.as_str() {
            return cognito_error("ResourceNotFoundException");
        }
        let rt = body["RefreshToken"].as_str().unwrap_or("");
        let grant = match self.grants.lock() {
            Ok(mut g) => g.remove(rt),
            Err(p) => p.into_inner().remove(rt),
        };
        let Some(grant) = grant else {
            return cognito_error("NotAuthorizedException");
        };
        let tokens = self.mint(grant);
        let answer = json!({"AuthenticationResult": {
            "AccessToken": tokens.access_token, "IdToken": tokens.id_token,
            "RefreshToken": tokens.refresh_token, "ExpiresIn": self.lifetime.as_secs(),
            "TokenType": "Bearer",
        }});
        let mut resp = Response::new(Full::new(Bytes::from(answer.to_string())));
        resp.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-amz-json-1.1"),
        );
        resp
    }

    /// The Cognito IdP endpoint for refreshes.
    pub fn endpoint(&self) -> String {
        let base = self
            .issuer
            .rsplit_once('/')
            .map_or(self.issuer.as_str(), |(b, _)| b);
        format!("{base}/")
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn jwks_url(&self) -> String {
        format!("{}/.well-known/jwks.json", self.issuer)
    }

    /// Signs Cognito-shaped access and ID tokens for `username`, plus an
    /// opaque refresh token (as Cognito's are): a new sign-in.
    pub fn issue(&self, username: &str) -> IssuedTokens {
        self.mint(Grant {
            username: username.to_string(),
            origin_jti: random_hex(16),
            event_id: random_hex(16),
        })
    }

    fn mint(&self, grant: Grant) -> IssuedTokens {
        let username = grant.username.as_str();
        let now = now_secs();
        let exp = now + self.lifetime.as_secs();
        // A stable pseudo-`sub` per username, UUID-shaped like Cognito's.
        let digest = sha2::Digest::finalize(sha2::Digest::chain_update(
            <sha2::Sha256 as sha2::Digest>::new(),
            format!("{}:{username}", self.issuer),
        ));
        let h: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
        let sub = format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        );
        let access = json!({
            "sub": sub, "iss": self.issuer, "client_id": self.client_id, "origin_jti": grant.origin_jti,
            "event_id": grant.event_id, "token_use": "access", "scope": "aws.cognito.signin.user.admin",
            "auth_time": now, "exp": exp, "iat": now, "jti": random_hex(16), "username": username,
        });
        let id = json!({
            "sub": sub, "iss": self.issuer, "aud": self.client_id, "cognito:username": username,
            "origin_jti": grant.origin_jti, "event_id": grant.event_id, "token_use": "id",
            "auth_time": now, "exp": exp, "iat": now, "jti": random_hex(16),
        });
        let refresh_token = random_hex(48);
        match self.grants.lock() {
            Ok(mut g) => g.insert(refresh_token.clone(), grant),
            Err(p) => p.into_inner().insert(refresh_token.clone(), grant),
        };
        IssuedTokens {
            access_token: self.sign(&access),
            id_token: self.sign(&id),
            refresh_token,
        }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        // Signing with a key we just generated cannot fail short of a bug in
        // the crypto library; an empty token would then be refused as malformed.
        jsonwebtoken::encode(&header, claims, &self.encoding_key).unwrap_or_default()
    }
}
