//! The token set Cognito hands out on a refresh, as the relay carries it
//! between Cognito, open sockets and the browser's cookies.
//!
//! `Debug` never prints a token.

use std::fmt;

/// New tokens from Cognito.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenSet {
    pub access_token: String,
    pub id_token: Option<String>,
    /// Present only when Cognito rotated the refresh token.
    pub refresh_token: Option<String>,
}

impl fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSet")
            .field("rotated", &self.refresh_token.is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_tokens() {
        let t = TokenSet {
            access_token: "AAA".into(),
            id_token: Some("III".into()),
            refresh_token: Some("RRR".into()),
        };
        let s = format!("{t:?}");
        assert!(!s.contains("AAA") && !s.contains("RRR") && !s.contains("III"));
    }
}
