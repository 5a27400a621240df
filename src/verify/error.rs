//! Why a token was refused, with a bounded label for metrics and logs.

use super::jose::{HeaderError, MAX_TOKEN_BYTES};

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
