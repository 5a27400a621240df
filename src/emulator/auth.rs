//! Authorization as AppSync Events checks it: one JSON object of headers
//! (`host` plus `x-api-key` or `Authorization`) that arrives in the
//! handshake's `header-` subprotocol, in every `subscribe`/`publish`
//! message's `authorization` field, and as real HTTP headers on
//! `POST /event`. This module decides yes or no for such an object.
//!
//! It must never put a credential into an error message or a log line: the
//! messages it produces go back to the client and into test output.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::{Map, Value};

/// Key of the API key in an authorization object (AppSync's header name).
pub const API_KEY_FIELD: &str = "x-api-key";
/// Key of the JWT in an authorization object (raw token, no `Bearer`).
pub const JWT_FIELD: &str = "Authorization";
/// Key of the HTTP endpoint host in an authorization object.
pub const HOST_FIELD: &str = "host";

/// A future returned by [`TokenVerifier::verify_token`].
pub type VerifyFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// Checks a Cognito JWT. The relay's `verify::Verifier` implements it; tests
/// may plug in a fake. A trait object keeps the emulator independent of how
/// verification is configured.
pub trait TokenVerifier: Send + Sync + 'static {
    /// `Ok` if the token is acceptable. The error is shown to the client, so
    /// it must describe the failure without echoing the token.
    fn verify_token<'a>(&'a self, token: &'a str) -> VerifyFuture<'a>;
}

impl TokenVerifier for crate::verify::Verifier {
    fn verify_token<'a>(&'a self, token: &'a str) -> VerifyFuture<'a> {
        Box::pin(async move {
            match self.verify(token).await {
                Ok(_) => Ok(()),
                // AppSync's own wording, which clients (and users) match on.
                Err(crate::verify::VerifyError::Expired) => Err("Token has expired.".into()),
                Err(error) => Err(error.to_string()),
            }
        })
    }
}

/// The auth modes the emulated API accepts on connect, subscribe and
/// publish. Real AppSync allows several per API; the emulator allows one,
/// or the pair a relay with `--shared-api-key-file` needs (users' tokens
/// and the API key). Accepting no more than configured is what catches
/// leaks such as a browser's placeholder API key reaching upstream.
#[derive(Clone)]
pub enum EmulatorAuth {
    /// `x-api-key` must equal this key.
    ApiKey(String),
    /// `Authorization` must hold a JWT this verifier accepts.
    Cognito(Arc<dyn TokenVerifier>),
    /// Either mode, one per request: an object carrying both credentials is
    /// refused (AWS documents no precedence, so the emulator takes none).
    CognitoOrApiKey(Arc<dyn TokenVerifier>, String),
}

impl fmt::Debug for EmulatorAuth {
    // The API key is a secret even in an emulator: test logs get shared.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EmulatorAuth::ApiKey(_) => f.write_str("ApiKey(<redacted>)"),
            EmulatorAuth::Cognito(_) => f.write_str("Cognito(..)"),
            EmulatorAuth::CognitoOrApiKey(..) => f.write_str("CognitoOrApiKey(.., <redacted>)"),
        }
    }
}

/// Why an authorization object was refused. Every variant maps to AppSync's
/// `UnauthorizedException` (HTTP 401); the text is safe to send to clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    #[error("authorization is missing or is not a JSON object")]
    MissingAuthorization,
    #[error("authorization has no {0} value")]
    MissingCredential(&'static str),
    #[error("the API key is not valid for this API")]
    WrongApiKey,
    #[error("{0}")]
    InvalidToken(String),
    #[error("authorization has no host")]
    MissingHost,
    #[error("authorization host does not match this API's HTTP endpoint host")]
    WrongHost,
    #[error("authorization carries both x-api-key and Authorization")]
    TwoCredentials,
}

// === impl EmulatorAuth ===

impl EmulatorAuth {
    /// Decides whether `auth` grants access. When `http_host` is configured
    /// the object's `host` must equal it (ASCII case-insensitively, as host
    /// names are), because AppSync routes on it and rejects a foreign host.
    pub async fn authorize(
        &self,
        auth: &Map<String, Value>,
        http_host: Option<&str>,
    ) -> Result<(), AuthFailure> {
        if let Some(expected) = http_host {
            match auth.get(HOST_FIELD) {
                None | Some(Value::Null) => return Err(AuthFailure::MissingHost),
                Some(Value::String(h)) if h.eq_ignore_ascii_case(expected) => {}
                Some(_) => return Err(AuthFailure::WrongHost),
            }
        }
        match self {
            EmulatorAuth::ApiKey(key) => check_key(auth, key),
            EmulatorAuth::Cognito(verifier) => check_jwt(auth, verifier.as_ref()).await,
            EmulatorAuth::CognitoOrApiKey(verifier, key) => {
                match (auth.get(JWT_FIELD), auth.get(API_KEY_FIELD)) {
                    (Some(_), Some(_)) => Err(AuthFailure::TwoCredentials),
                    (None, Some(_)) => check_key(auth, key),
                    _ => check_jwt(auth, verifier.as_ref()).await,
                }
            }
        }
    }
}

fn check_key(auth: &Map<String, Value>, key: &str) -> Result<(), AuthFailure> {
    match auth.get(API_KEY_FIELD) {
        Some(Value::String(given)) if given == key => Ok(()),
        Some(Value::String(_)) => Err(AuthFailure::WrongApiKey),
        _ => Err(AuthFailure::MissingCredential(API_KEY_FIELD)),
    }
}

async fn check_jwt(
    auth: &Map<String, Value>,
    verifier: &dyn TokenVerifier,
) -> Result<(), AuthFailure> {
    match auth.get(JWT_FIELD) {
        Some(Value::String(token)) if !token.is_empty() => verifier
            .verify_token(token)
            .await
            .map_err(AuthFailure::InvalidToken),
        _ => Err(AuthFailure::MissingCredential(JWT_FIELD)),
    }
}

/// The credential values (API key or JWT) present in an authorization
/// object, in field order, whatever the configured mode: tests assert on
/// what reached "AWS", including credentials that should have been stripped.
pub fn credentials(auth: &Map<String, Value>) -> impl Iterator<Item = &str> {
    [JWT_FIELD, API_KEY_FIELD]
        .into_iter()
        .filter_map(|k| auth.get(k).and_then(Value::as_str))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    struct AcceptOnly(&'static str);
    impl TokenVerifier for AcceptOnly {
        fn verify_token<'a>(&'a self, token: &'a str) -> VerifyFuture<'a> {
            let ok = token == self.0;
            Box::pin(async move {
                if ok {
                    Ok(())
                } else {
                    Err("Token has expired.".to_string())
                }
            })
        }
    }

    #[tokio::test]
    async fn api_key_must_match_and_host_is_checked_when_configured() {
        let auth = EmulatorAuth::ApiKey("k1".into());
        let good = obj(json!({"host": "API.example.com", "x-api-key": "k1"}));
        assert_eq!(auth.authorize(&good, Some("api.example.com")).await, Ok(()));
        assert_eq!(auth.authorize(&good, None).await, Ok(()));
        let wrong = obj(json!({"host": "api.example.com", "x-api-key": "k2"}));
        assert_eq!(
            auth.authorize(&wrong, None).await,
            Err(AuthFailure::WrongApiKey)
        );
        let no_host = obj(json!({"x-api-key": "k1"}));
        assert_eq!(
            auth.authorize(&no_host, Some("api.example.com")).await,
            Err(AuthFailure::MissingHost)
        );
        let other_host = obj(json!({"host": "evil.example.com", "x-api-key": "k1"}));
        assert_eq!(
            auth.authorize(&other_host, Some("api.example.com")).await,
            Err(AuthFailure::WrongHost)
        );
        let jwt_only = obj(json!({"Authorization": "eyJ"}));
        assert_eq!(
            auth.authorize(&jwt_only, None).await,
            Err(AuthFailure::MissingCredential(API_KEY_FIELD))
        );
    }

    #[tokio::test]
    async fn cognito_passes_the_raw_token_to_the_verifier() {
        let auth = EmulatorAuth::Cognito(Arc::new(AcceptOnly("good.jwt.sig")));
        let good = obj(json!({"Authorization": "good.jwt.sig"}));
        assert_eq!(auth.authorize(&good, None).await, Ok(()));
        let bad = obj(json!({"Authorization": "old.jwt.sig"}));
        assert_eq!(
            auth.authorize(&bad, None).await,
            Err(AuthFailure::InvalidToken("Token has expired.".into()))
        );
        let key = obj(json!({"x-api-key": "k1"}));
        assert_eq!(
            auth.authorize(&key, None).await,
            Err(AuthFailure::MissingCredential(JWT_FIELD))
        );
        assert!(!format!("{auth:?}").contains("good"));
    }

    #[tokio::test]
    async fn both_modes_take_one_credential_each_and_refuse_two() {
        let auth = EmulatorAuth::CognitoOrApiKey(Arc::new(AcceptOnly("good.jwt.sig")), "k1".into());
        let ok = |v: Value| obj(v);
        assert_eq!(
            auth.authorize(&ok(json!({"x-api-key": "k1"})), None).await,
            Ok(())
        );
        assert_eq!(
            auth.authorize(&ok(json!({"Authorization": "good.jwt.sig"})), None)
                .await,
            Ok(())
        );
        assert_eq!(
            auth.authorize(&ok(json!({"x-api-key": "k2"})), None).await,
            Err(AuthFailure::WrongApiKey)
        );
        assert_eq!(
            auth.authorize(&ok(json!({"Authorization": "old.jwt.sig"})), None)
                .await,
            Err(AuthFailure::InvalidToken("Token has expired.".into()))
        );
        // A valid token does not carry a placeholder key along, nor the
        // other way round.
        let both = ok(json!({"Authorization": "good.jwt.sig", "x-api-key": "k1"}));
        assert_eq!(
            auth.authorize(&both, None).await,
            Err(AuthFailure::TwoCredentials)
        );
        assert_eq!(
            auth.authorize(&ok(json!({"host": "h"})), None).await,
            Err(AuthFailure::MissingCredential(JWT_FIELD))
        );
        assert!(!format!("{auth:?}").contains("k1"));
    }

    #[test]
    fn credentials_lists_every_secret_present() {
        let m = obj(json!({"host": "h", "x-api-key": "k", "Authorization": "j"}));
        assert_eq!(credentials(&m).collect::<Vec<_>>(), vec!["j", "k"]);
        assert!(format!("{:?}", EmulatorAuth::ApiKey("s3cret".into())).contains("redacted"));
    }
}
