//! One call to Cognito's token endpoint and what its answer means
//! (docs/PROTOCOL.md, "Cognito"). Single flight and the memory of past
//! answers live in the parent module; this file only speaks the API.

use crate::http_client::HttpClient;
use crate::session::TokenSet;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{json, Value};
use sha2::Sha256;
use std::fmt;
use std::time::Duration;

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

/// `SECRET_HASH` = Base64(HMAC-SHA256(client secret, username + client id)).
pub fn secret_hash(secret: &str, username: &str, client_id: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(username.as_bytes());
    mac.update(client_id.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// Speaks to Cognito for one app client.
pub(super) struct Cognito {
    pub(super) cfg: RefreshConfig,
    pub(super) http: HttpClient,
}

impl Cognito {
    /// Exchanges `refresh_token` (of `username`, for `SECRET_HASH`) for new
    /// tokens. One HTTP request, bounded by the configured timeout.
    pub(super) async fn call(
        &self,
        refresh_token: &str,
        username: &str,
    ) -> Result<TokenSet, RefreshError> {
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
    fn debug_redacts_the_client_secret() {
        // (TokenSet's own redaction is tested in session::tokens.)
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
