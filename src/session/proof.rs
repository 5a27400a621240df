//! What a request must show to receive a renewal made for its session: the
//! identity and lineage claims of a genuinely signed token of that session
//! (expired or not), as recorded when the renewal was made.
//!
//! A refresh token alone proves nothing: it may be a dead one, rotated out
//! or revoked, replayed by someone who copied it.

use crate::verify::{token_hash, Claims};

/// The identity of a session, from one of its verified tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionProof {
    pub sub: String,
    pub client_id: Option<String>,
    /// Cognito's revocation lineage (shared by the tokens of one sign-in).
    pub origin_jti: Option<String>,
    pub event_id: Option<String>,
}

impl SessionProof {
    pub fn of(claims: &Claims) -> SessionProof {
        SessionProof {
            sub: claims.sub.clone(),
            client_id: claims.client_id.clone(),
            origin_jti: claims.origin_jti.clone(),
            event_id: claims.event_id.clone(),
        }
    }

    /// A key for the sign-in this proof belongs to: the user and, where the
    /// token carries one, its lineage (`origin_jti`, else `event_id`).
    /// Tokens without lineage claims share one key per user.
    pub fn lineage(&self) -> String {
        let line = self
            .origin_jti
            .as_deref()
            .or(self.event_id.as_deref())
            .unwrap_or("");
        format!("{}\u{0}{line}", self.sub)
    }

    /// SHA-256 of [`SessionProof::lineage`]: how a sign-in is named beyond
    /// this process (to the other replicas, through Redis).
    pub fn lineage_hash(&self) -> [u8; 32] {
        token_hash(&self.lineage())
    }

    /// The same user of the same app client, and — where both tokens carry
    /// them — the same sign-in lineage.
    pub fn matches(&self, other: &SessionProof) -> bool {
        let same_where_present = |a: &Option<String>, b: &Option<String>| match (a, b) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        self.sub == other.sub
            && self.client_id == other.client_id
            && same_where_present(&self.origin_jti, &other.origin_jti)
            && same_where_present(&self.event_id, &other.event_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proof(sub: &str, jti: Option<&str>) -> SessionProof {
        SessionProof {
            sub: sub.into(),
            client_id: Some("c".into()),
            origin_jti: jti.map(Into::into),
            event_id: None,
        }
    }

    #[test]
    fn another_user_or_another_sign_in_does_not_match() {
        assert!(proof("a", Some("j1")).matches(&proof("a", Some("j1"))));
        assert!(!proof("a", Some("j1")).matches(&proof("b", Some("j1"))));
        assert!(!proof("a", Some("j1")).matches(&proof("a", Some("j2"))));
        assert!(proof("a", None).matches(&proof("a", Some("j2"))));
        let mut other_client = proof("a", Some("j1"));
        other_client.client_id = Some("d".into());
        assert!(!proof("a", Some("j1")).matches(&other_client));
    }
}
