//! Renewing a session with Cognito, once per refresh token however many
//! connections ask at the same moment.
//!
//! Two Cognito APIs are supported (docs/PROTOCOL.md, "Cognito"):
//! - `GetTokensFromRefreshToken` (current Amplify): may rotate, returning a
//!   new refresh token; the old one dies after a grace period.
//! - `InitiateAuth` with `REFRESH_TOKEN_AUTH` (older clients): never rotates.
//!
//! **Single flight.** A rotated refresh token used twice can end the
//! session, so concurrent callers with the same refresh token share one
//! call, and its result is remembered for [`RESULT_TTL`] so a reconnect
//! storm right after it reuses the answer instead of calling again. Both
//! maps are keyed by SHA-256 of the refresh token, never the token, and are
//! bounded.
//!
//! Errors are split by what the caller should do: [`RefreshError::Rejected`]
//! means the session is over (revoked, expired, user disabled or gone: the
//! exception types Cognito documents for those, and nothing else);
//! [`RefreshError::Unavailable`] means try again later (throttling, quota,
//! Lambda trigger failures, 5xx, anything unrecognised). A rejected refresh
//! token is remembered (by hash) so a replay costs no Cognito call.
//!
//! Single flight never turns itself off: when the table of flights is full
//! of calls in progress, a new caller is told to retry (`Unavailable`)
//! rather than sent to Cognito uncoordinated. Nothing here logs a
//! token; Cognito's error *messages* are not logged either (they can echo
//! input), only its error type.

use crate::clock::{now_secs, refresh_due_at};
use crate::http_client::HttpClient;
use crate::session::TokenSet;
use crate::verify::{token_hash, unverified_times};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use dashmap::DashMap;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{json, Value};
use sha2::Sha256;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

/// How long a finished refresh is reused for the same refresh token: long
/// enough for the other tabs of a reconnect storm, racing the first
/// response's `Set-Cookie`, to get the same answer instead of calling with
/// a token Cognito just rotated out; short, because for that long the old
/// refresh token (with a genuine token of the same user) still obtains the
/// answer.
pub const RESULT_TTL: Duration = Duration::from_secs(5);
/// How long a rejected refresh token is remembered. It never becomes valid
/// again; the bound only keeps the table small.
const REJECTED_TTL: Duration = Duration::from_secs(24 * 3600);
/// Largest Cognito answer read.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RefreshApi {
    /// `GetTokensFromRefreshToken` (refresh-token rotation aware).
    GetTokens,
    /// `InitiateAuth` with `REFRESH_TOKEN_AUTH`.
    InitiateAuth,
}

#[derive(Clone)]
pub struct RefreshConfig {
    /// Cognito IdP endpoint, e.g. `https://cognito-idp.eu-west-1.amazonaws.com/`.
    pub endpoint: String,
    pub client_id: String,
    pub client_secret: Option<String>,
    pub api: RefreshApi,
    pub timeout: Duration,
    /// Most refresh results / in-flight calls remembered.
    pub capacity: usize,
    /// A remembered result is reused only until its token is due for
    /// renewal itself (see [`crate::clock::refresh_due_at`]).
    pub refresh_before: Duration,
}

impl fmt::Debug for RefreshConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshConfig")
            .field("endpoint", &self.endpoint)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("api", &self.api)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefreshError {
    /// Cognito refused the refresh token: the session is over.
    #[error("Cognito refused the refresh token ({0})")]
    Rejected(String),
    /// Cognito could not be asked, or failed: retry later.
    #[error("Cognito unavailable: {0}")]
    Unavailable(String),
}

impl RefreshError {
    pub fn reason(&self) -> &'static str {
        match self {
            RefreshError::Rejected(_) => "rejected",
            RefreshError::Unavailable(_) => "unavailable",
        }
    }
}

/// What one refresh produced, shared by every caller of the same flight.
pub type RefreshOutcome = Result<Arc<TokenSet>, RefreshError>;

struct Slot {
    cell: Arc<OnceCell<RefreshOutcome>>,
    created: Instant,
}

pub struct Refresher {
    cfg: RefreshConfig,
    http: HttpClient,
    slots: DashMap<[u8; 32], Slot>,
    /// Refresh tokens Cognito refused, by hash, with when.
    rejected: DashMap<[u8; 32], Instant>,
}

impl fmt::Debug for Refresher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Refresher")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// `SECRET_HASH` = Base64(HMAC-SHA256(client secret, username + client id)).
pub fn secret_hash(secret: &str, username: &str, client_id: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(username.as_bytes());
    mac.update(client_id.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

impl Refresher {
    pub fn new(cfg: RefreshConfig, http: HttpClient) -> Arc<Refresher> {
        Arc::new(Refresher {
            cfg,
            http,
            slots: DashMap::new(),
            rejected: DashMap::new(),
        })
    }

    pub fn config(&self) -> &RefreshConfig {
        &self.cfg
    }

    /// New tokens for `refresh_token` (whose user is `username`, needed for
    /// `SECRET_HASH`). Concurrent and recent callers share one Cognito call.
    pub async fn refresh(&self, refresh_token: &str, username: &str) -> RefreshOutcome {
        let key = token_hash(refresh_token);
        if self.is_rejected(&key) {
            return Err(RefreshError::Rejected("remembered".into()));
        }
        let cell = self.slot(key)?;
        let outcome = cell
            .get_or_init(|| async { self.call(refresh_token, username).await.map(Arc::new) })
            .await
            .clone();
        match &outcome {
            // A transient failure must not be remembered: the next caller retries.
            Err(RefreshError::Unavailable(_)) => {
                self.slots
                    .remove_if(&key, |_, slot| Arc::ptr_eq(&slot.cell, &cell));
            }
            Err(RefreshError::Rejected(_)) => self.remember_rejected(key),
            Ok(_) => {}
        }
        outcome
    }

    /// Whether a call for this refresh token is in flight or its result is
    /// still reused: a caller would join it, not call Cognito.
    pub fn has_flight(&self, refresh_token: &str) -> bool {
        self.slots
            .get(&token_hash(refresh_token))
            .is_some_and(|slot| self.usable(&slot))
    }

    /// Forgets every remembered answer that issued tokens to `sub`: its
    /// session ended, and an answer reused for the next seconds would revive it.
    pub fn forget_answers_for(&self, sub: &str) {
        #[derive(serde::Deserialize)]
        struct Sub {
            sub: Option<String>,
        }
        let of = |token: &str| -> Option<String> {
            use base64::engine::general_purpose::URL_SAFE_NO_PAD;
            let payload = token.split('.').nth(1)?;
            let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
            serde_json::from_slice::<Sub>(&bytes).ok()?.sub
        };
        self.slots.retain(|_, slot| match slot.cell.get() {
            Some(Ok(tokens)) => of(&tokens.access_token).as_deref() != Some(sub),
            _ => true,
        });
    }

    /// Whether Cognito already refused this refresh token.
    pub fn is_rejected(&self, key: &[u8; 32]) -> bool {
        self.rejected
            .get(key)
            .is_some_and(|at| at.elapsed() < REJECTED_TTL)
    }

    fn remember_rejected(&self, key: [u8; 32]) {
        if self.rejected.len() >= self.cfg.capacity {
            self.rejected.retain(|_, at| at.elapsed() < REJECTED_TTL);
            if self.rejected.len() >= self.cfg.capacity {
                // Still full: forget the oldest half's worth at once rather
                // than scan on every insert. A forgotten token costs one
                // Cognito call to be refused again.
                self.rejected.clear();
            }
        }
        self.rejected.insert(key, Instant::now());
    }

    /// Whether a remembered slot may still be handed out.
    fn usable(&self, slot: &Slot) -> bool {
        if slot.created.elapsed() >= RESULT_TTL {
            return false;
        }
        match slot.cell.get() {
            // In flight: join it.
            None => true,
            Some(Err(_)) => true,
            Some(Ok(tokens)) => match unverified_times(&tokens.access_token) {
                Some((exp, iat)) => now_secs() < refresh_due_at(exp, iat, self.cfg.refresh_before),
                None => false,
            },
        }
    }

    fn slot(&self, key: [u8; 32]) -> Result<Arc<OnceCell<RefreshOutcome>>, RefreshError> {
        if let Some(slot) = self.slots.get(&key) {
            if self.usable(&slot) {
                return Ok(slot.cell.clone());
            }
        }
        if self.slots.len() >= self.cfg.capacity {
            // Finished results are only a cache: drop them first.
            self.slots
                .retain(|_, s| s.created.elapsed() < RESULT_TTL && s.cell.get().is_none());
        }
        if self.slots.len() >= self.cfg.capacity && !self.slots.contains_key(&key) {
            // Full of calls in progress: refuse rather than call Cognito
            // outside single flight.
            tracing::warn!(
                in_flight = self.slots.len(),
                "refresh table full of calls in progress; asking the client to retry"
            );
            return Err(RefreshError::Unavailable(
                "too many refreshes in flight".into(),
            ));
        }
        let mut entry = self.slots.entry(key).or_insert_with(|| Slot {
            cell: Arc::new(OnceCell::new()),
            created: Instant::now(),
        });
        if !self.usable(&entry) {
            *entry = Slot {
                cell: Arc::new(OnceCell::new()),
                created: Instant::now(),
            };
        }
        Ok(entry.cell.clone())
    }

    async fn call(&self, refresh_token: &str, username: &str) -> Result<TokenSet, RefreshError> {
        let (target, body) = match self.cfg.api {
            RefreshApi::GetTokens => {
                let mut body =
                    json!({ "ClientId": self.cfg.client_id, "RefreshToken": refresh_token });
                if let Some(secret) = &self.cfg.client_secret {
                    body["ClientSecret"] = json!(secret);
                }
                (
                    "AWSCognitoIdentityProviderService.GetTokensFromRefreshToken",
                    body,
                )
            }
            RefreshApi::InitiateAuth => {
                let mut params = json!({ "REFRESH_TOKEN": refresh_token });
                if let Some(secret) = &self.cfg.client_secret {
                    params["SECRET_HASH"] =
                        json!(secret_hash(secret, username, &self.cfg.client_id));
                }
                let body = json!({ "AuthFlow": "REFRESH_TOKEN_AUTH", "ClientId": self.cfg.client_id, "AuthParameters": params });
                ("AWSCognitoIdentityProviderService.InitiateAuth", body)
            }
        };
        let req = hyper::Request::post(&self.cfg.endpoint)
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amz-target", target)
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| RefreshError::Unavailable(format!("bad Cognito endpoint: {e}")))?;
        let exchange = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| RefreshError::Unavailable(e.to_string()))?;
            let status = resp.status().as_u16();
            let bytes = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| RefreshError::Unavailable(e.to_string()))?
                .to_bytes();
            Ok::<_, RefreshError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(self.cfg.timeout, exchange)
            .await
            .map_err(|_| RefreshError::Unavailable("timed out".into()))??;
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status != 200 {
            // `__type` may be "NotAuthorizedException" or
            // "com.amazonaws...#NotAuthorizedException".
            let kind = body["__type"]
                .as_str()
                .unwrap_or("")
                .rsplit('#')
                .next()
                .unwrap_or("")
                .to_string();
            return Err(classify(status, kind));
        }
        let result = &body["AuthenticationResult"];
        let access_token = result["AccessToken"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| RefreshError::Unavailable("answer has no AccessToken".into()))?
            .to_string();
        Ok(TokenSet {
            access_token,
            id_token: result["IdToken"].as_str().map(str::to_string),
            refresh_token: result["RefreshToken"]
                .as_str()
                .filter(|t| !t.is_empty() && *t != refresh_token)
                .map(str::to_string),
        })
    }
}

/// What a Cognito error means for the session. Only the exceptions that
/// say the refresh token or its user is no longer good end it (Cognito API
/// reference, `GetTokensFromRefreshToken` / `InitiateAuth` errors):
/// `NotAuthorizedException` (invalid, expired or revoked token; user
/// disabled), `UserNotFoundException`, `UserNotConfirmedException`,
/// `PasswordResetRequiredException`, `RefreshTokenReuseException`. Every
/// other answer — throttling (`TooManyRequestsException`,
/// `LimitExceededException`), Lambda trigger failures, `InternalErrorException`,
/// 5xx, configuration errors, anything unrecognised — is not the session's
/// fault and is retried.
fn classify(status: u16, kind: String) -> RefreshError {
    match kind.as_str() {
        "NotAuthorizedException"
        | "UserNotFoundException"
        | "UserNotConfirmedException"
        | "PasswordResetRequiredException"
        | "RefreshTokenReuseException" => RefreshError::Rejected(kind),
        "" => RefreshError::Unavailable(format!("HTTP {status}")),
        _ => RefreshError::Unavailable(format!("HTTP {status} {kind}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_dead_tokens_and_users_end_a_session() {
        for kind in [
            "NotAuthorizedException",
            "UserNotFoundException",
            "RefreshTokenReuseException",
        ] {
            assert!(
                matches!(classify(400, kind.into()), RefreshError::Rejected(_)),
                "{kind}"
            );
        }
        for kind in [
            "TooManyRequestsException",
            "LimitExceededException",
            "UnexpectedLambdaException",
            "UserLambdaValidationException",
            "InvalidLambdaResponseException",
            "InternalErrorException",
            "ResourceNotFoundException",
            "InvalidParameterException",
            "SomethingNewException",
            "",
        ] {
            assert!(
                matches!(classify(400, kind.into()), RefreshError::Unavailable(_)),
                "{kind}"
            );
        }
    }

    #[test]
    fn secret_hash_matches_aws_reference() {
        // echo -n "usernameclientid" | openssl dgst -sha256 -hmac secret -binary | base64
        assert_eq!(
            secret_hash("secret", "username", "clientid"),
            "nHX60UMb/IiDNDmIUm5R+B7D6ufsjd4QNse0tO7D9w8="
        );
    }

    #[test]
    fn debug_redacts_tokens_and_secret() {
        let t = TokenSet {
            access_token: "AAA".into(),
            id_token: Some("III".into()),
            refresh_token: Some("RRR".into()),
        };
        let s = format!("{t:?}");
        assert!(!s.contains("AAA") && !s.contains("RRR") && !s.contains("III"));
        let c = RefreshConfig {
            endpoint: "x".into(),
            client_id: "c".into(),
            client_secret: Some("SSS".into()),
            api: RefreshApi::GetTokens,
            timeout: Duration::from_secs(1),
            capacity: 1,
            refresh_before: Duration::from_secs(60),
        };
        assert!(!format!("{c:?}").contains("SSS"));
    }
}
