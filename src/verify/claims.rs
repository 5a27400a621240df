//! The claims of a Cognito token the relay reads, and which token it
//! forwards. Cognito tokens carry more claims; they are ignored.

use serde::Deserialize;
use serde_json::{Map, Value};

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
    /// Every other claim (`cognito:groups`, `scope`, what a
    /// pre-token-generation trigger adds, `custom:*` in ID tokens), for the
    /// channel policy. Kept per verified token (in the verifier's cache),
    /// not per socket.
    #[serde(flatten)]
    other: Map<String, Value>,
}

/// A claim's value as a channel policy reads it: one string, the string
/// elements of an array, or nothing (absent, a number, an object…).
#[derive(Debug, Clone, Copy)]
pub enum ClaimRef<'a> {
    Absent,
    One(&'a str),
    Many(&'a [Value]),
}

impl<'a> ClaimRef<'a> {
    /// Every string the claim holds (an array's non-string elements are
    /// skipped, never stringified).
    pub fn strings(self) -> impl Iterator<Item = &'a str> {
        let (one, many): (Option<&'a str>, &'a [Value]) = match self {
            ClaimRef::Absent => (None, &[]),
            ClaimRef::One(s) => (Some(s), &[]),
            ClaimRef::Many(values) => (None, values),
        };
        one.into_iter().chain(many.iter().filter_map(Value::as_str))
    }

    /// Equal to `wanted` (a string claim) or holding it as one element (an
    /// array claim): never a substring.
    pub fn holds(self, wanted: &str) -> bool {
        self.strings().any(|s| s == wanted)
    }
}

impl Claims {
    pub fn username(&self) -> Option<&str> {
        self.username
            .as_deref()
            .or(self.cognito_username.as_deref())
    }

    /// The claim called `name`, as the token carries it.
    pub fn claim(&self, name: &str) -> ClaimRef<'_> {
        let known = match name {
            "sub" => Some(self.sub.as_str()),
            "iss" => Some(self.iss.as_str()),
            "token_use" => self.token_use.as_deref(),
            "client_id" => self.client_id.as_deref(),
            "username" => self.username.as_deref(),
            "cognito:username" => self.cognito_username.as_deref(),
            "origin_jti" => self.origin_jti.as_deref(),
            "event_id" => self.event_id.as_deref(),
            "aud" => return value_ref(self.aud.as_ref()),
            // Numbers: never a channel segment nor a group.
            "exp" | "nbf" | "iat" | "auth_time" => return ClaimRef::Absent,
            _ => return value_ref(self.other.get(name)),
        };
        known.map_or(ClaimRef::Absent, ClaimRef::One)
    }
}

fn value_ref(value: Option<&Value>) -> ClaimRef<'_> {
    match value {
        Some(Value::String(s)) => ClaimRef::One(s),
        Some(Value::Array(values)) => ClaimRef::Many(values),
        _ => ClaimRef::Absent,
    }
}
