//! Cognito JWT verification: the JWKS cache and the checks a token must pass
//! before the relay will act for its holder.
//!
//! Rules, in the order they are applied: size cap; header parses; `alg` is
//! exactly RS256 (so `none`, HS256-with-the-public-key and every other
//! algorithm are refused before any key is looked at); `kid` names a key in
//! the JWKS (refetched on an unknown `kid` at most once per
//! `jwks_refetch_interval`); signature; `iss` exact; `exp`/`nbf` with
//! `leeway`; `token_use`; `client_id` (access) or `aud` (id).
//! Header fields such as `jku`/`x5u`/`jwk` are never followed: keys come
//! only from the configured JWKS URL.
//!
//! Verified tokens are cached by SHA-256 of the token until their `exp`, so
//! repeated handshakes skip RSA. This module never logs or returns a token.

mod jose;
mod jwks;

pub use jose::{unverified_times, MAX_TOKEN_BYTES};
pub use jwks::JwksError;

use crate::clock::now_secs;
use crate::http_client::HttpClient;
use dashmap::DashMap;
use jose::HeaderError;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use jwks::KeyStore;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Which Cognito token the relay forwards and therefore verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TokenUse {
    /// The access token (what Amplify sends; `client_id` claim).
    Access,
    /// The ID token (`aud` claim).
    Id,
}

impl TokenUse {
    pub fn claim(self) -> &'static str {
        match self {
            TokenUse::Access => "access",
            TokenUse::Id => "id",
        }
    }
}

#[derive(Debug, Clone)]
pub struct VerifierConfig {
    /// Exact `iss` the tokens must carry.
    pub issuer: String,
    /// Where the signing keys are published.
    pub jwks_url: String,
    /// The app client the tokens must be issued to.
    pub client_id: String,
    pub token_use: TokenUse,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// Minimum time between two JWKS fetches triggered by unknown `kid`s.
    pub jwks_refetch_interval: Duration,
    /// Deadline for one JWKS fetch.
    pub fetch_timeout: Duration,
    /// Most verified tokens remembered at once.
    pub cache_capacity: usize,
}

/// Why a token was refused. `reason()` is a bounded label for metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("token is larger than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    #[error("token is not a well-formed JWT")]
    Malformed,
    #[error("token algorithm is not RS256")]
    Algorithm,
    #[error("token has no kid")]
    MissingKid,
    #[error("token kid is not in the JWKS")]
    UnknownKid,
    #[error("token signature is invalid")]
    Signature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token issuer does not match")]
    Issuer,
    #[error("token_use does not match")]
    TokenUse,
    #[error("token was issued to another client")]
    Audience,
    #[error("signing keys are not available")]
    JwksUnavailable,
}

impl VerifyError {
    pub fn reason(&self) -> &'static str {
        match self {
            VerifyError::TooLarge => "token_too_large",
            VerifyError::Malformed => "token_malformed",
            VerifyError::Algorithm => "token_algorithm",
            VerifyError::MissingKid => "token_missing_kid",
            VerifyError::UnknownKid => "token_unknown_kid",
            VerifyError::Signature => "token_signature",
            VerifyError::Expired => "token_expired",
            VerifyError::NotYetValid => "token_not_yet_valid",
            VerifyError::Issuer => "token_issuer",
            VerifyError::TokenUse => "token_use",
            VerifyError::Audience => "token_audience",
            VerifyError::JwksUnavailable => "jwks_unavailable",
        }
    }
}

impl From<HeaderError> for VerifyError {
    fn from(e: HeaderError) -> VerifyError {
        match e {
            HeaderError::Malformed => VerifyError::Malformed,
            HeaderError::Algorithm => VerifyError::Algorithm,
            HeaderError::MissingKid => VerifyError::MissingKid,
        }
    }
}

/// The claims the relay uses. Cognito tokens carry more; they are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub iss: String,
    pub exp: u64,
    #[serde(default)]
    pub nbf: Option<u64>,
    #[serde(default)]
    pub iat: Option<u64>,
    #[serde(default)]
    pub token_use: Option<String>,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub aud: Option<Value>,
    /// Access tokens carry `username`; ID tokens `cognito:username`.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default, rename = "cognito:username")]
    pub cognito_username: Option<String>,
}

impl Claims {
    pub fn username(&self) -> Option<&str> {
        self.username
            .as_deref()
            .or(self.cognito_username.as_deref())
    }
}

struct CachedToken {
    claims: Arc<Claims>,
}

pub struct Verifier {
    cfg: VerifierConfig,
    http: HttpClient,
    keys: RwLock<Arc<KeyStore>>,
    ready: AtomicBool,
    /// Single-flight gate for JWKS fetches; holds when the last one started.
    fetch_gate: tokio::sync::Mutex<Option<Instant>>,
    cache: DashMap<[u8; 32], CachedToken>,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuer", &self.cfg.issuer)
            .field("jwks_url", &self.cfg.jwks_url)
            .field("ready", &self.is_ready())
            .finish_non_exhaustive()
    }
}

/// SHA-256 of a token: the cache key, so the cache never holds a token.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Verifier {
    pub fn new(cfg: VerifierConfig, http: HttpClient) -> Arc<Verifier> {
        let mut validation = Validation::new(Algorithm::RS256);
        validation.algorithms = vec![Algorithm::RS256];
        validation.set_issuer(&[cfg.issuer.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.leeway = cfg.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // Access tokens have no `aud`; audience is checked by hand below
        // against `client_id` or `aud` depending on `token_use`.
        validation.validate_aud = false;
        Arc::new(Verifier {
            cfg,
            http,
            keys: RwLock::new(Arc::new(KeyStore::default())),
            ready: AtomicBool::new(false),
            fetch_gate: tokio::sync::Mutex::new(None),
            cache: DashMap::new(),
            validation,
        })
    }

    pub fn config(&self) -> &VerifierConfig {
        &self.cfg
    }

    /// True once a JWKS with at least one usable key has been loaded.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn current_keys(&self) -> Arc<KeyStore> {
        match self.keys.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Fetches the JWKS now and replaces the key set on success. On failure
    /// the previous keys stay in force.
    /// Does not count against the unknown-`kid` refetch budget: keys rotated
    /// just after start-up are still picked up.
    pub async fn load_jwks(&self) -> Result<usize, JwksError> {
        let _gate = self.fetch_gate.lock().await;
        self.fetch_and_store().await
    }

    async fn fetch_and_store(&self) -> Result<usize, JwksError> {
        let store = jwks::fetch(&self.http, &self.cfg.jwks_url, self.cfg.fetch_timeout).await?;
        let count = store.keys.len();
        match self.keys.write() {
            Ok(mut guard) => *guard = Arc::new(store),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(store),
        }
        self.ready.store(true, Ordering::Release);
        Ok(count)
    }

    /// Verifies `token` and returns its claims.
    pub async fn verify(&self, token: &str) -> Result<Arc<Claims>, VerifyError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(VerifyError::TooLarge);
        }
        let hash = token_hash(token);
        if let Some(hit) = self.cache.get(&hash) {
            let claims = hit.claims.clone();
            drop(hit);
            self.check_time(&claims)?;
            return Ok(claims);
        }
        let claims = Arc::new(self.decode(token, &self.validation).await?);
        self.remember(hash, claims.clone());
        Ok(claims)
    }

    /// Verifies everything but expiry: used to decide whether an expired
    /// token's session may be refreshed (its signature must still be good).
    pub async fn verify_ignoring_expiry(&self, token: &str) -> Result<Claims, VerifyError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(VerifyError::TooLarge);
        }
        let mut validation = self.validation.clone();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        self.decode(token, &validation).await
    }

    /// Header gate, key lookup, signature and claims under `validation`,
    /// then the audience rule: every check but the cache and the size cap.
    async fn decode(&self, token: &str, validation: &Validation) -> Result<Claims, VerifyError> {
        let kid = jose::check_header(token)?;
        let key = self.key_for(&kid).await?;
        let data = jsonwebtoken::decode::<Claims>(token, &key, validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::ExpiredSignature => VerifyError::Expired,
                K::ImmatureSignature => VerifyError::NotYetValid,
                K::InvalidIssuer => VerifyError::Issuer,
                K::InvalidSignature => VerifyError::Signature,
                K::InvalidAlgorithm | K::InvalidAlgorithmName => VerifyError::Algorithm,
                _ => VerifyError::Malformed,
            }
        })?;
        self.check_audience(&data.claims)?;
        Ok(data.claims)
    }

    fn check_time(&self, claims: &Claims) -> Result<(), VerifyError> {
        let now = now_secs();
        let leeway = self.cfg.leeway.as_secs();
        if claims.exp.saturating_add(leeway) <= now {
            return Err(VerifyError::Expired);
        }
        if claims
            .nbf
            .is_some_and(|nbf| nbf > now.saturating_add(leeway))
        {
            return Err(VerifyError::NotYetValid);
        }
        Ok(())
    }

    fn check_audience(&self, claims: &Claims) -> Result<(), VerifyError> {
        if claims.token_use.as_deref() != Some(self.cfg.token_use.claim()) {
            return Err(VerifyError::TokenUse);
        }
        let ok = match self.cfg.token_use {
            TokenUse::Access => claims.client_id.as_deref() == Some(self.cfg.client_id.as_str()),
            TokenUse::Id => match &claims.aud {
                Some(Value::String(aud)) => *aud == self.cfg.client_id,
                Some(Value::Array(auds)) => {
                    auds.iter().any(|a| a.as_str() == Some(&self.cfg.client_id))
                }
                _ => false,
            },
        };
        if ok {
            Ok(())
        } else {
            Err(VerifyError::Audience)
        }
    }

    fn remember(&self, hash: [u8; 32], claims: Arc<Claims>) {
        if self.cache.len() >= self.cfg.cache_capacity {
            let now = now_secs();
            self.cache.retain(|_, v| v.claims.exp > now);
            if self.cache.len() >= self.cfg.cache_capacity {
                // Still full of live tokens: forget them all rather than grow;
                // the cost is one RSA check per token on its next use.
                self.cache.clear();
            }
        }
        self.cache.insert(hash, CachedToken { claims });
    }

    async fn key_for(&self, kid: &str) -> Result<DecodingKey, VerifyError> {
        if let Some(key) = self.current_keys().keys.get(kid) {
            return Ok(key.clone());
        }
        // Unknown kid: maybe the pool rotated keys. Refetch, single flight,
        // at most once per interval; keep the old keys if it fails.
        let mut gate = self.fetch_gate.lock().await;
        if let Some(key) = self.current_keys().keys.get(kid) {
            return Ok(key.clone());
        }
        let due = gate.is_none_or(|last| last.elapsed() >= self.cfg.jwks_refetch_interval);
        if due {
            *gate = Some(Instant::now());
            if let Err(e) = self.fetch_and_store().await {
                tracing::warn!(error = %e, "JWKS refetch failed; keeping cached keys");
            }
        }
        drop(gate);
        match self.current_keys().keys.get(kid) {
            Some(key) => Ok(key.clone()),
            None if !self.is_ready() => Err(VerifyError::JwksUnavailable),
            None => Err(VerifyError::UnknownKid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_hash_is_stable_and_not_the_token() {
        let h = token_hash("abc");
        assert_eq!(h, token_hash("abc"));
        assert_ne!(h, token_hash("abd"));
    }
}
