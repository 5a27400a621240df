//! The claims of a Cognito token the relay reads, and which token it
//! forwards. Cognito tokens carry more claims; they are ignored.

use serde::Deserialize;
use serde_json::Value;

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
    /// When the user signed in (kept by every refresh of that sign-in).
    #[serde(default)]
    pub auth_time: Option<u64>,
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
    /// Cognito's revocation lineage: shared by the tokens of one sign-in.
    #[serde(default)]
    pub origin_jti: Option<String>,
    /// The authentication event the token descends from.
    #[serde(default)]
    pub event_id: Option<String>,
}

impl Claims {
    pub fn username(&self) -> Option<&str> {
        self.username
            .as_deref()
            .or(self.cognito_username.as_deref())
    }
}
