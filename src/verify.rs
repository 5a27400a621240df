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

use crate::http_client::HttpClient;
use bytes::Bytes;
use dashmap::DashMap;
use http_body_util::{BodyExt, Full, Limited};
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Tokens longer than this are refused before any parsing (Cognito tokens
/// are 1–2 KB; a huge one is an attack on the parser or the cache).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// JWKS documents larger than this are refused.
const MAX_JWKS_BYTES: usize = 256 * 1024;

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

/// Why fetching the JWKS failed (never fatal once keys are cached).
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("JWKS request failed: {0}")]
    Request(String),
    #[error("JWKS endpoint answered HTTP {0}")]
    Status(u16),
    #[error("JWKS fetch timed out")]
    Timeout,
    #[error("JWKS document is invalid: {0}")]
    Invalid(String),
    #[error("JWKS has no usable RS256 signing key")]
    NoKeys,
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

#[derive(Default)]
struct KeyStore {
    keys: HashMap<String, DecodingKey>,
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

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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
        let store = self.fetch().await?;
        let count = store.keys.len();
        match self.keys.write() {
            Ok(mut guard) => *guard = Arc::new(store),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(store),
        }
        self.ready.store(true, Ordering::Release);
        Ok(count)
    }

    async fn fetch(&self) -> Result<KeyStore, JwksError> {
        let req = hyper::Request::get(&self.cfg.jwks_url)
            .header(hyper::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|e| JwksError::Request(e.to_string()))?;
        let fut = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| JwksError::Request(e.to_string()))?;
            if !resp.status().is_success() {
                return Err(JwksError::Status(resp.status().as_u16()));
            }
            Limited::new(resp.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .map_err(|e| JwksError::Request(e.to_string()))
        };
        let body = tokio::time::timeout(self.cfg.fetch_timeout, fut)
            .await
            .map_err(|_| JwksError::Timeout)??;
        parse_jwks(&body)
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
        let kid = check_header(token)?;
        let key = self.key_for(&kid).await?;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &self.validation).map_err(|e| {
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
        let claims = data.claims;
        self.check_audience(&claims)?;
        let claims = Arc::new(claims);
        self.remember(hash, claims.clone());
        Ok(claims)
    }

    /// Verifies everything but expiry: used to decide whether an expired
    /// token's session may be refreshed (its signature must still be good).
    pub async fn verify_ignoring_expiry(&self, token: &str) -> Result<Claims, VerifyError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(VerifyError::TooLarge);
        }
        let kid = check_header(token)?;
        let key = self.key_for(&kid).await?;
        let mut validation = self.validation.clone();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::InvalidIssuer => VerifyError::Issuer,
                K::InvalidSignature => VerifyError::Signature,
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

/// `exp` and `iat` of a JWT *without verifying it*: only for deciding how
/// long to remember something about a token we already trust.
pub fn unverified_times(token: &str) -> Option<(u64, Option<u64>)> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    #[derive(Deserialize)]
    struct Times {
        exp: u64,
        iat: Option<u64>,
    }
    let t: Times = serde_json::from_slice(&bytes).ok()?;
    Some((t.exp, t.iat))
}

/// Reads the JOSE header ourselves, before jsonwebtoken sees the token, so
/// that `alg` is checked against exactly `"RS256"` (not a parser's notion
/// of known algorithms: `none`, `None`, `HS256`, `RS256 ` are all refused)
/// and the `kid` is returned. No other header field is ever used.
fn check_header(token: &str) -> Result<String, VerifyError> {
    use base64::Engine as _;
    let (header_b64, rest) = token.split_once('.').ok_or(VerifyError::Malformed)?;
    if rest.split('.').count() != 2 {
        return Err(VerifyError::Malformed);
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header_b64)
        .map_err(|_| VerifyError::Malformed)?;
    // A struct (not a map): serde refuses a duplicate `alg` or `kid`, so
    // `{"alg":"none","alg":"RS256"}` cannot pass this gate on its last value.
    #[derive(Deserialize)]
    struct JoseHeader {
        #[serde(default)]
        alg: Option<Value>,
        #[serde(default)]
        kid: Option<Value>,
    }
    // And a JSON object that is valid UTF-8 throughout (the struct parse
    // alone would take an array, and skips ignored fields unchecked).
    if !matches!(
        serde_json::from_slice::<Value>(&bytes),
        Ok(Value::Object(_))
    ) {
        return Err(VerifyError::Malformed);
    }
    let header: JoseHeader = serde_json::from_slice(&bytes).map_err(|_| VerifyError::Malformed)?;
    if header.alg.as_ref().and_then(Value::as_str) != Some("RS256") {
        return Err(VerifyError::Algorithm);
    }
    match header.kid {
        Some(Value::String(kid)) if !kid.is_empty() => Ok(kid),
        _ => Err(VerifyError::MissingKid),
    }
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<Value>,
}

/// Keeps only RSA keys meant for RS256 signatures; skips anything else
/// rather than failing the whole document.
fn parse_jwks(body: &[u8]) -> Result<KeyStore, JwksError> {
    let raw: RawJwks =
        serde_json::from_slice(body).map_err(|e| JwksError::Invalid(e.to_string()))?;
    let mut keys = HashMap::new();
    for value in raw.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        if !matches!(jwk.algorithm, AlgorithmParameters::RSA(_)) {
            continue;
        }
        if jwk
            .common
            .key_algorithm
            .is_some_and(|a| a != KeyAlgorithm::RS256)
        {
            continue;
        }
        if jwk
            .common
            .public_key_use
            .as_ref()
            .is_some_and(|u| *u != jsonwebtoken::jwk::PublicKeyUse::Signature)
        {
            continue;
        }
        if let Ok(key) = DecodingKey::from_jwk(&jwk) {
            keys.insert(kid, key);
        }
    }
    if keys.is_empty() {
        return Err(JwksError::NoKeys);
    }
    Ok(KeyStore { keys })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwks_parser_keeps_only_rs256_rsa_signing_keys() {
        let doc = serde_json::json!({"keys": [
            {"kty":"RSA","kid":"a","alg":"RS256","use":"sig","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"},
            {"kty":"RSA","kid":"enc","use":"enc","n":"sXch","e":"AQAB"},
            {"kty":"RSA","kid":"ps","alg":"PS256","n":"sXch","e":"AQAB"},
            {"kty":"oct","kid":"h","k":"c2VjcmV0"},
            {"kty":"weird"}
        ]});
        let store = parse_jwks(doc.to_string().as_bytes()).unwrap();
        assert_eq!(store.keys.keys().collect::<Vec<_>>(), vec!["a"]);
    }

    #[test]
    fn jwks_without_usable_keys_is_an_error() {
        assert!(matches!(
            parse_jwks(br#"{"keys":[]}"#),
            Err(JwksError::NoKeys)
        ));
        assert!(matches!(parse_jwks(b"nope"), Err(JwksError::Invalid(_))));
    }

    #[test]
    fn duplicate_header_fields_are_malformed() {
        use base64::Engine as _;
        let enc = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let token = format!(
            "{}.{}.sig",
            enc(r#"{"alg":"none","alg":"RS256","kid":"k"}"#),
            enc("{}")
        );
        assert_eq!(check_header(&token), Err(VerifyError::Malformed));
        let token = format!(
            "{}.{}.sig",
            enc(r#"{"alg":"RS256","kid":"a","kid":"b"}"#),
            enc("{}")
        );
        assert_eq!(check_header(&token), Err(VerifyError::Malformed));
        let token = format!("{}.{}.sig", enc(r#"["RS256","k"]"#), enc("{}"));
        assert_eq!(check_header(&token), Err(VerifyError::Malformed));
        let token = format!(
            "{}.{}.sig",
            enc(r#"{"alg":"RS256","kid":"k","typ":"JWT"}"#),
            enc("{}")
        );
        assert_eq!(check_header(&token), Ok("k".to_string()));
    }

    #[test]
    fn token_hash_is_stable_and_not_the_token() {
        let h = token_hash("abc");
        assert_eq!(h, token_hash("abc"));
        assert_ne!(h, token_hash("abd"));
    }
}
