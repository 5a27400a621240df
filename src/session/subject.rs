//! Whom an operator's "end this user's sessions now" names: a `sub` or a
//! Cognito username, and which sign-ins it covers (those made at or before
//! the moment it was said; a later sign-in is a new session).
//!
//! Subjects travel (to Redis, between replicas) only as SHA-256 hashes:
//! usernames are often e-mail addresses.

use crate::verify::Claims;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    Sub(String),
    Username(String),
}

impl Subject {
    /// SHA-256 of the kind and the value: what is stored and compared.
    pub fn hash(&self) -> [u8; 32] {
        let (kind, value) = match self {
            Subject::Sub(v) => ("sub", v),
            Subject::Username(v) => ("username", v),
        };
        let mut h = Sha256::new();
        h.update(kind.as_bytes());
        h.update([0]);
        h.update(value.as_bytes());
        h.finalize().into()
    }
}

/// The subjects a token answers to: its `sub`, and its Cognito username
/// when it carries one.
pub fn subjects_of(claims: &Claims) -> Vec<[u8; 32]> {
    let mut out = vec![Subject::Sub(claims.sub.clone()).hash()];
    if let Some(u) = claims.username() {
        out.push(Subject::Username(u.to_string()).hash());
    }
    out
}

/// Whom an operator's end of a user's sessions is matched against: the
/// subjects a token answers to, and when its sign-in happened. Inline
/// (no allocation): every open socket holds one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Who {
    /// The `sub` subject's hash.
    sub: [u8; 32],
    /// The Cognito username subject's hash, when the token carries one
    /// (all zeroes when not: inline, and SHA-256 never yields it).
    username: [u8; 32],
    /// When its sign-in happened ([`signed_in_at`]).
    pub signed_in_at: u64,
}

impl Who {
    pub fn new(sub: [u8; 32], username: Option<[u8; 32]>, signed_in_at: u64) -> Who {
        Who {
            sub,
            username: username.unwrap_or([0; 32]),
            signed_in_at,
        }
    }

    /// Who the token `claims` belongs to.
    pub fn of(claims: &Claims) -> Who {
        Who {
            sub: Subject::Sub(claims.sub.clone()).hash(),
            username: claims
                .username()
                .map_or([0; 32], |u| Subject::Username(u.to_string()).hash()),
            signed_in_at: signed_in_at(claims),
        }
    }

    /// The `sub` subject's hash.
    pub fn sub(&self) -> &[u8; 32] {
        &self.sub
    }

    /// Whether it answers to the subject hashed as `subject`.
    pub fn answers_to(&self, subject: &[u8; 32]) -> bool {
        self.sub == *subject || (self.username != [0; 32] && self.username == *subject)
    }

    /// Every subject hash it answers to, `sub`'s first.
    pub fn subjects(&self) -> Vec<[u8; 32]> {
        std::iter::once(self.sub)
            .chain((self.username != [0; 32]).then_some(self.username))
            .collect()
    }
}

/// When the sign-in a token belongs to happened: `auth_time` (kept by
/// every refresh of that sign-in), else `iat`.
pub fn signed_in_at(claims: &Claims) -> u64 {
    claims.auth_time.or(claims.iat).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_do_not_collide() {
        assert_ne!(
            Subject::Sub("alice".into()).hash(),
            Subject::Username("alice".into()).hash()
        );
        assert_eq!(
            Subject::Sub("a".into()).hash(),
            Subject::Sub("a".into()).hash()
        );
    }
}
