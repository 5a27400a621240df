//! The signing keys: fetching the JWKS document and keeping only the keys a
//! Cognito access or ID token can be signed with (RSA, RS256, `use: sig`).
//!
//! It owns parsing and transport; when to fetch is the verifier's decision.

use crate::http_client::HttpClient;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, KeyAlgorithm};
use jsonwebtoken::DecodingKey;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::time::Duration;

/// JWKS documents larger than this are refused.
const MAX_JWKS_BYTES: usize = 256 * 1024;

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

/// Usable keys by `kid`, each with a fingerprint of its material (SHA-256
/// of the JWK's modulus and exponent): a `kid` reused for a new key is a
/// different key.
#[derive(Default)]
pub struct KeyStore {
    pub keys: HashMap<String, (DecodingKey, [u8; 32])>,
}

impl KeyStore {
    pub fn fingerprint(&self, kid: &str) -> Option<[u8; 32]> {
        self.keys.get(kid).map(|(_, f)| *f)
    }
}

/// Fetches and parses the JWKS at `url` within `timeout`.
pub async fn fetch(http: &HttpClient, url: &str, timeout: Duration) -> Result<KeyStore, JwksError> {
    let req = hyper::Request::get(url)
        .header(hyper::header::ACCEPT, "application/json")
        .body(Full::new(Bytes::new()))
        .map_err(|e| JwksError::Request(e.to_string()))?;
    let fut = async {
        let resp = http
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
    let body = tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| JwksError::Timeout)??;
    parse(&body)
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<Value>,
}

/// Keeps only RSA keys meant for RS256 signatures; skips anything else
/// rather than failing the whole document.
pub fn parse(body: &[u8]) -> Result<KeyStore, JwksError> {
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
        let AlgorithmParameters::RSA(rsa) = &jwk.algorithm else {
            continue;
        };
        let fingerprint: [u8; 32] = Sha256::digest(format!("{}.{}", rsa.n, rsa.e)).into();
        if let Ok(key) = DecodingKey::from_jwk(&jwk) {
            keys.insert(kid, (key, fingerprint));
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
        let store = parse(doc.to_string().as_bytes()).unwrap();
        assert_eq!(store.keys.keys().collect::<Vec<_>>(), vec!["a"]);
    }

    #[test]
    fn jwks_without_usable_keys_is_an_error() {
        assert!(matches!(parse(br#"{"keys":[]}"#), Err(JwksError::NoKeys)));
        assert!(matches!(parse(b"nope"), Err(JwksError::Invalid(_))));
    }
}
