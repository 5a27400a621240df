//! Renewals that still have to reach a browser. A refresh on an open socket
//! has no HTTP response to carry cookies. When Cognito rotated the refresh
//! token, the browser's cookie holds one that dies after a grace period, so
//! the new tokens are kept here, keyed by SHA-256 of the refresh token the
//! browser still holds, and handed out as `Set-Cookie` on that session's
//! next request through the relay (a handshake, an HTTP publish, or a
//! request to the app).
//!
//! The store is bounded and entries expire; it never holds a key that is a
//! token.

use super::tokens::TokenSet;
use crate::verify::token_hash;
use dashmap::DashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Pending {
    username: String,
    tokens: Arc<TokenSet>,
    created: Instant,
}

/// Renewals waiting for their browser (see the module docs).
pub struct PendingRenewals {
    entries: DashMap<[u8; 32], Pending>,
    capacity: usize,
    ttl: Duration,
}

impl std::fmt::Debug for PendingRenewals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingRenewals")
            .field("len", &self.entries.len())
            .finish()
    }
}

impl PendingRenewals {
    pub fn new(capacity: usize, ttl: Duration) -> PendingRenewals {
        PendingRenewals {
            entries: DashMap::new(),
            capacity,
            ttl,
        }
    }

    /// Remembers that the browser holding the refresh token hashed as
    /// `browser_refresh` should now get `tokens` (which carry the current
    /// refresh token).
    pub fn record(&self, browser_refresh: [u8; 32], username: &str, tokens: Arc<TokenSet>) {
        if self.entries.len() >= self.capacity {
            self.entries.retain(|_, p| p.created.elapsed() < self.ttl);
            if self.entries.len() >= self.capacity {
                // Full of live renewals: drop the oldest rather than grow.
                let oldest = self
                    .entries
                    .iter()
                    .min_by_key(|e| e.created)
                    .map(|e| *e.key());
                if let Some(k) = oldest {
                    self.entries.remove(&k);
                }
            }
        }
        self.entries.insert(
            browser_refresh,
            Pending {
                username: username.to_string(),
                tokens,
                created: Instant::now(),
            },
        );
    }

    /// The renewal for a browser holding `refresh_token`, if one is waiting.
    /// Entries stay until they expire: the browser may send several requests
    /// with the old cookies before the first `Set-Cookie` reaches it.
    pub fn lookup(&self, refresh_token: &str) -> Option<(String, Arc<TokenSet>)> {
        let key = token_hash(refresh_token);
        let entry = self.entries.get(&key)?;
        if entry.created.elapsed() >= self.ttl {
            drop(entry);
            self.entries.remove(&key);
            return None;
        }
        Some((entry.username.clone(), entry.tokens.clone()))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(rotated: bool) -> TokenSet {
        TokenSet {
            access_token: "acc".into(),
            id_token: Some("idt".into()),
            refresh_token: rotated.then(|| "newref".into()),
        }
    }

    #[test]
    fn pending_renewals_are_bounded_and_keyed_by_hash() {
        let store = PendingRenewals::new(2, Duration::from_secs(60));
        for rt in ["r1", "r2", "r3"] {
            store.record(token_hash(rt), "u", Arc::new(tokens(true)));
        }
        assert_eq!(store.len(), 2);
        assert!(store.lookup("r3").is_some());
        assert!(store.lookup("unknown").is_none());
        let expired = PendingRenewals::new(2, Duration::from_millis(0));
        expired.record(token_hash("r"), "u", Arc::new(tokens(true)));
        assert!(expired.lookup("r").is_none());
    }
}
