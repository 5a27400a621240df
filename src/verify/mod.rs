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
//! repeated handshakes skip RSA; a cached verification is void once the key
//! that made it leaves the JWKS, which is fetched again every
//! `jwks_refresh_interval` (and on an unknown `kid`). This module never logs
//! or returns a token.

mod claims;
mod error;
mod jose;
mod jwks;

pub use claims::{ClaimRef, Claims, TokenUse};
pub use error::VerifyError;
pub use jose::{unverified_claims, unverified_sub, unverified_times, MAX_TOKEN_BYTES};
pub use jwks::{parse as parse_jwks, JwksError};

use crate::clock::now_secs;
use crate::http_client::HttpClient;
use dashmap::DashMap;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use jwks::KeyStore;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

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
    /// How old the key set may get before it is fetched again (in the
    /// background, on the next verification): a key withdrawn from the
    /// JWKS stops verifying within about this long.
    pub jwks_refresh_interval: Duration,
    /// Most verified tokens remembered at once.
    pub cache_capacity: usize,
}

struct CachedToken {
    claims: Arc<Claims>,
    /// The key that verified it: the entry is void once that key leaves the
    /// JWKS (or its `kid` names other key material).
    kid: String,
    fingerprint: [u8; 32],
}

pub struct Verifier {
    cfg: VerifierConfig,
    http: HttpClient,
    keys: RwLock<Arc<KeyStore>>,
    ready: AtomicBool,
    /// Single-flight gate for JWKS fetches; holds when the last one started.
    fetch_gate: tokio::sync::Mutex<Option<Instant>>,
    /// When the key set is due to be fetched again.
    next_refresh: std::sync::Mutex<Instant>,
    /// For the background refresh, which must outlive the call that starts it.
    this: std::sync::Weak<Verifier>,
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
        Arc::new_cyclic(|this| Verifier {
            next_refresh: std::sync::Mutex::new(Instant::now() + cfg.jwks_refresh_interval),
            this: this.clone(),
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
        self.schedule_refresh(self.cfg.jwks_refresh_interval);
        Ok(count)
    }

    fn schedule_refresh(&self, after: Duration) {
        let mut next = match self.next_refresh.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *next = Instant::now() + after;
    }

    /// Starts a background refetch when the key set is older than
    /// `jwks_refresh_interval`; verification goes on with the current keys
    /// meanwhile. A failed refetch is retried after at most 30 s.
    fn refresh_if_stale(&self) {
        if !self.is_ready() {
            return;
        }
        {
            let mut next = match self.next_refresh.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            if Instant::now() < *next {
                return;
            }
            // Claimed: no other caller starts one until this one is done.
            *next = Instant::now() + self.cfg.jwks_refresh_interval.min(Duration::from_secs(30));
        }
        let Some(this) = self.this.upgrade() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let _gate = this.fetch_gate.lock().await;
            if let Err(e) = this.fetch_and_store().await {
                tracing::warn!(error = %e, "periodic JWKS refresh failed; keeping cached keys");
            }
        });
    }

    /// Verifies `token` and returns its claims.
    pub async fn verify(&self, token: &str) -> Result<Arc<Claims>, VerifyError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(VerifyError::TooLarge);
        }
        self.refresh_if_stale();
        let hash = token_hash(token);
        if let Some(hit) = self.cache.get(&hash) {
            let (claims, kid, fingerprint) = (hit.claims.clone(), hit.kid.clone(), hit.fingerprint);
            drop(hit);
            if self.current_keys().fingerprint(&kid) == Some(fingerprint) {
                self.check_time(&claims)?;
                return Ok(claims);
            }
            // Its key was withdrawn: verify again from scratch.
            self.cache.remove(&hash);
        }
        let (claims, (kid, fingerprint)) = self.decode(token, &self.validation).await?;
        let claims = Arc::new(claims);
        self.remember(hash, claims.clone(), kid, fingerprint);
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
        self.refresh_if_stale();
        self.decode(token, &validation)
            .await
            .map(|(claims, _)| claims)
    }

    /// Header gate, key lookup, signature and claims under `validation`,
    /// then the audience rule: every check but the cache and the size cap.
    async fn decode(
        &self,
        token: &str,
        validation: &Validation,
    ) -> Result<(Claims, (String, [u8; 32])), VerifyError> {
        let kid = jose::check_header(token)?;
        let (key, fingerprint) = self.key_for(&kid).await?;
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
        Ok((data.claims, (kid, fingerprint)))
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

    fn remember(&self, hash: [u8; 32], claims: Arc<Claims>, kid: String, fingerprint: [u8; 32]) {
        if self.cache.len() >= self.cfg.cache_capacity {
            let now = now_secs();
            self.cache.retain(|_, v| v.claims.exp > now);
            if self.cache.len() >= self.cfg.cache_capacity {
                // Still full of live tokens: forget them all rather than grow;
                // the cost is one RSA check per token on its next use.
                self.cache.clear();
            }
        }
        self.cache.insert(
            hash,
            CachedToken {
                claims,
                kid,
                fingerprint,
            },
        );
    }

    async fn key_for(&self, kid: &str) -> Result<(DecodingKey, [u8; 32]), VerifyError> {
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
