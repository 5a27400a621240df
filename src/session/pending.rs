//! Renewals that still have to reach a browser. A refresh on an open socket
//! has no HTTP response to carry cookies, yet the browser's cookies are now
//! stale: its access token expires soon, and when Cognito rotated the
//! refresh token, the one in its cookie dies after a grace period. So the
//! new tokens are kept here, keyed by SHA-256 of the refresh token the
//! browser still holds, for that session's next request through the relay
//! (a handshake, an HTTP publish, or a request to the app, which then reads
//! a live session instead of refreshing on its own).
//!
//! The rules that make this safe (docs/ARCHITECTURE.md, "Session
//! integrity"):
//! - an entry is handed only to a request that proves the same session
//!   ([`SessionProof`]): a refresh token alone buys nothing;
//! - it is removed when handed out, when its sign-in ends (its newest
//!   refresh token refused, sign-out seen), when the token it carries is
//!   refused, and after its time to live; it is
//!   never handed out once its access token has expired (a request after
//!   that renews with the newest refresh token instead, found through the
//!   rotation chain the refresher keeps);
//! - recording again for the same browser replaces it: the newest live
//!   refresh token is the one kept.
//!
//! The store is bounded; no key is a token.

use super::proof::SessionProof;
use super::tokens::TokenSet;
use crate::bounded::make_room;
use crate::clock::now_secs;
use crate::verify::{token_hash, unverified_times};
use dashmap::DashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A renewal waiting for its browser.
#[derive(Clone)]
pub struct Pending {
    /// The cookie username the tokens are written under.
    pub username: String,
    /// The newest token set, with the refresh token now valid.
    pub tokens: Arc<TokenSet>,
    /// What the browser's own token must match.
    pub proof: SessionProof,
    created: Instant,
    /// `exp` of its access token (unix seconds); 0 when unreadable.
    expires_at: u64,
    /// Every refresh-token hash it was filed under (filled when taken).
    keys: Vec<[u8; 32]>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("username", &self.username)
            .field("sub", &self.proof.sub)
            .finish_non_exhaustive()
    }
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
    /// refresh token), once it proves `proof`.
    pub fn record(
        &self,
        browser_refresh: [u8; 32],
        username: &str,
        tokens: Arc<TokenSet>,
        proof: SessionProof,
    ) {
        if self.entries.len() >= self.capacity {
            // Dead renewals first, then the oldest until an eighth is free:
            // every socket renewal records here, so a full store must not
            // cost a scan per insert.
            self.entries.retain(|_, p| self.live(p));
            make_room(&self.entries, self.capacity, self.ttl, |p| p.created);
        }
        self.entries.insert(
            browser_refresh,
            Pending {
                username: username.to_string(),
                expires_at: unverified_times(&tokens.access_token).map_or(0, |(exp, _)| exp),
                tokens,
                proof,
                created: Instant::now(),
                keys: Vec::new(),
            },
        );
    }

    /// Whether a renewal may be waiting for `refresh_token` (cheap: lets a
    /// caller skip verifying a token when there is nothing to prove).
    pub fn has(&self, refresh_token: &str) -> bool {
        self.entries.contains_key(&token_hash(refresh_token))
    }

    /// Hands out, and removes, the renewal waiting for the browser holding
    /// `refresh_token` — only if `shown` (from that browser's own verified
    /// token) proves the session it was made for.
    pub fn take(&self, refresh_token: &str, shown: &SessionProof) -> Option<Pending> {
        let key = token_hash(refresh_token);
        let (_, mut entry) = self
            .entries
            .remove_if(&key, |_, p| !self.live(p) || p.proof.matches(shown))?;
        if !self.live(&entry) {
            return None;
        }
        // The same renewal may wait under the browser's older refresh
        // tokens too: it is delivered once, so those go with it.
        let mut keys = vec![key];
        self.entries.retain(|k, p| {
            let sibling = Arc::ptr_eq(&p.tokens, &entry.tokens);
            if sibling {
                keys.push(*k);
            }
            !sibling
        });
        entry.keys = keys;
        Some(entry)
    }

    /// Puts back a renewal [`PendingRenewals::take`] handed out that could
    /// not be used after all (Cognito was unavailable), under every key it
    /// was filed under.
    pub fn restore(&self, pending: Pending) {
        for key in &pending.keys {
            // A socket may have left a newer renewal meanwhile: keep that.
            if self.entries.contains_key(key) {
                continue;
            }
            self.record(
                *key,
                &pending.username,
                pending.tokens.clone(),
                pending.proof.clone(),
            );
        }
    }

    /// Forgets whatever waits for the browser holding `refresh_token` (its
    /// session was signed out).
    pub fn forget(&self, refresh_token: &str) {
        self.entries.remove(&token_hash(refresh_token));
    }

    /// [`PendingRenewals::forget`] by the token's hash (another replica saw
    /// its browser sign out).
    pub fn forget_hashed(&self, refresh_hash: &[u8; 32]) {
        self.entries.remove(refresh_hash);
    }

    /// Forgets every renewal that carries `refresh_token` (Cognito refused
    /// it). Renewals filed *under* it stay: they carry a newer token.
    pub fn forget_refresh_token(&self, refresh_token: &str) {
        self.entries
            .retain(|_, p| p.tokens.refresh_token.as_deref() != Some(refresh_token));
    }

    /// Forgets every renewal of the sign-in `proof` stands for (it ended).
    pub fn end_session(&self, proof: &SessionProof) {
        self.entries.retain(|_, p| !p.proof.matches(proof));
    }

    /// Forgets every renewal of a sign-in answering to the subject hashed
    /// as `subject` made at or before `at` (an operator ended them).
    pub fn end_subject(&self, subject: &[u8; 32], at: u64) {
        self.entries.retain(|_, p| {
            let Some(claims) = crate::verify::unverified_claims(&p.tokens.access_token) else {
                return true;
            };
            let covered = super::subject::signed_in_at(&claims) <= at
                && super::subject::subjects_of(&claims).contains(subject);
            !covered
        });
    }

    /// [`PendingRenewals::end_session`] for a sign-in known by its
    /// [`SessionProof::lineage_hash`] (ended on another replica).
    pub fn end_session_hashed(&self, lineage: &[u8; 32]) {
        self.entries
            .retain(|_, p| p.proof.lineage_hash() != *lineage);
    }

    /// The refresh token a renewal waiting for `refresh_token` carries,
    /// without handing it out: for the session model test's invariants.
    #[doc(hidden)]
    pub fn waiting_refresh_token(&self, refresh_token: &str) -> Option<String> {
        let entry = self.entries.get(&token_hash(refresh_token))?;
        self.live(&entry)
            .then(|| entry.tokens.refresh_token.clone())
            .flatten()
    }

    /// Within its time to live and its access token not expired.
    fn live(&self, p: &Pending) -> bool {
        p.created.elapsed() < self.ttl && now_secs() < p.expires_at
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A JWT-shaped access token expiring at `exp` (only `exp` is read).
    fn access(exp: u64) -> String {
        use base64::Engine as _;
        let claims = format!(r#"{{"exp":{exp}}}"#);
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims);
        format!("e30.{b64}.sig")
    }

    fn tokens(rotated: bool) -> TokenSet {
        TokenSet {
            access_token: access(now_secs() + 3600),
            id_token: Some("idt".into()),
            refresh_token: rotated.then(|| "newref".into()),
        }
    }

    fn proof(sub: &str) -> SessionProof {
        SessionProof {
            sub: sub.into(),
            client_id: Some("c".into()),
            origin_jti: Some("j".into()),
            event_id: None,
        }
    }

    #[test]
    fn pending_renewals_are_bounded_and_keyed_by_hash() {
        let store = PendingRenewals::new(2, Duration::from_secs(60));
        for rt in ["r1", "r2", "r3"] {
            store.record(token_hash(rt), "u", Arc::new(tokens(true)), proof("u"));
        }
        assert_eq!(store.len(), 2);
        assert!(store.take("r3", &proof("u")).is_some());
        assert!(store.take("unknown", &proof("u")).is_none());
        let expired = PendingRenewals::new(2, Duration::from_millis(0));
        expired.record(token_hash("r"), "u", Arc::new(tokens(true)), proof("u"));
        assert!(expired.take("r", &proof("u")).is_none());
    }

    #[test]
    fn a_renewal_dies_with_its_access_token() {
        let store = PendingRenewals::new(4, Duration::from_secs(3600));
        let dead = TokenSet {
            access_token: access(now_secs().saturating_sub(1)),
            ..tokens(true)
        };
        store.record(token_hash("r"), "u", Arc::new(dead), proof("u"));
        assert!(store.waiting_refresh_token("r").is_none());
        assert!(store.take("r", &proof("u")).is_none());
        let unreadable = TokenSet {
            access_token: "not-a-jwt".into(),
            ..tokens(true)
        };
        store.record(token_hash("r"), "u", Arc::new(unreadable), proof("u"));
        assert!(store.take("r", &proof("u")).is_none());
        store.record(token_hash("r"), "u", Arc::new(tokens(true)), proof("u"));
        assert!(store.take("r", &proof("u")).is_some());
    }

    #[test]
    fn a_refresh_token_alone_buys_nothing_and_delivery_is_once() {
        let store = PendingRenewals::new(10, Duration::from_secs(60));
        store.record(
            token_hash("rt0"),
            "u",
            Arc::new(tokens(true)),
            proof("alice"),
        );
        assert!(store.take("rt0", &proof("mallory")).is_none());
        assert!(store.take("rt0", &proof("alice")).is_some());
        assert!(
            store.take("rt0", &proof("alice")).is_none(),
            "handed out once"
        );
        store.record(
            token_hash("rt0"),
            "u",
            Arc::new(tokens(true)),
            proof("alice"),
        );
        store.end_session(&proof("alice"));
        assert!(store.take("rt0", &proof("alice")).is_none());
    }
}
