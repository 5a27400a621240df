//! The open sockets of each user, so that a session ending somewhere else —
//! a sign-out the app performed, seen by the app proxy — reaches them at
//! once instead of at their next renewal.
//!
//! Each request that may become a relayed socket registers as soon as its
//! token is verified — before any end is checked — and a socket holds its
//! [`Registration`] until it closes; dropping it unregisters. Ending is a
//! cancellation the socket's task is waiting on: it closes with 4401 within
//! the time it takes to write a close frame.
//!
//! Who may end which socket is the caller's rule (see
//! `proxy::signed_out`): this table only finds sockets by the sign-in they
//! belong to ([`SessionProof::lineage`]) or by the refresh token the
//! browser held when the socket opened (its hash: nothing here is a usable
//! token).

use super::proof::SessionProof;
use dashmap::DashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use super::subject::Who;

/// What a socket is found by.
struct Entry {
    id: u64,
    /// SHA-256 of its [`SessionProof::lineage`] (how replicas name the
    /// sign-in; no string kept per socket).
    lineage_hash: [u8; 32],
    who: Who,
    /// Hashes of the refresh tokens the browser's cookie held: the one its
    /// request showed, and the one the handshake's answer (any
    /// `Set-Cookie` it carried) gave it. Inline: every open socket has one.
    browser_refresh: [[u8; 32]; 2],
    ended: CancellationToken,
}

/// No hash (SHA-256 never yields all zeroes in practice).
const NONE: [u8; 32] = [0; 32];

impl Entry {
    /// Whether the browser held the refresh token hashed as `hash`.
    fn holds(&self, hash: &[u8; 32]) -> bool {
        *hash != NONE && self.browser_refresh.contains(hash)
    }
}

/// The open sockets, by user (`sub`).
#[derive(Default)]
pub struct LiveSockets {
    by_sub: Arc<DashMap<String, Vec<Entry>>>,
    next_id: AtomicU64,
}

/// One socket's place in [`LiveSockets`]; unregisters on drop.
pub struct Registration {
    table: Arc<DashMap<String, Vec<Entry>>>,
    sub: String,
    id: u64,
    ended: CancellationToken,
}

impl Registration {
    /// Resolves when the socket's session was ended from elsewhere.
    pub fn ended(&self) -> &CancellationToken {
        &self.ended
    }

    /// The browser now holds the refresh token hashed as `hash` too (the
    /// handshake renewed it): a sign-out showing it finds this socket.
    pub fn also_browser_refresh(&self, hash: [u8; 32]) {
        if let Some(mut entries) = self.table.get_mut(&self.sub) {
            if let Some(e) = entries.iter_mut().find(|e| e.id == self.id) {
                if !e.holds(&hash) {
                    e.browser_refresh[1] = hash;
                }
            }
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // Removing the user's entry happens under the shard's write lock,
        // so a concurrent register for the same user cannot be lost.
        self.table.remove_if_mut(&self.sub, |_, entries| {
            // Order carries no meaning here; swap_remove moves one entry,
            // where retain moved every later one (a user with thousands of
            // sockets paid that on each close: 1 % of a TLS handshake burst).
            if let Some(i) = entries.iter().position(|e| e.id == self.id) {
                entries.swap_remove(i);
            }
            entries.is_empty()
        });
    }
}

impl LiveSockets {
    /// Registers a socket of the sign-in `proof`, whose browser holds the
    /// refresh token hashed as `browser_refresh`.
    pub fn register(
        &self,
        proof: &SessionProof,
        browser_refresh: Option<[u8; 32]>,
        who: Who,
    ) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let ended = CancellationToken::new();
        self.by_sub
            .entry(proof.sub.clone())
            .or_default()
            .push(Entry {
                id,
                lineage_hash: proof.lineage_hash(),
                who,
                browser_refresh: [browser_refresh.unwrap_or(NONE), NONE],
                ended: ended.clone(),
            });
        Registration {
            table: self.by_sub.clone(),
            sub: proof.sub.clone(),
            id,
            ended,
        }
    }

    /// Ends every open socket of the sign-in `proof` belongs to. Returns
    /// how many were told to close.
    pub fn end_sign_in(&self, proof: &SessionProof) -> usize {
        let lineage = proof.lineage_hash();
        self.end_where(&proof.sub, |e| e.lineage_hash == lineage)
    }

    /// Ends the open sockets of `sub` whose browser held the refresh token
    /// hashed as `refresh_hash` when they opened: the sockets of one
    /// browser's session, whoever else shares the user's lineage claims.
    pub fn end_browser(&self, sub: &str, refresh_hash: &[u8; 32]) -> usize {
        self.end_where(sub, |e| e.holds(refresh_hash))
    }

    /// Ends every open socket answering to the subject hashed as `subject`
    /// whose sign-in happened at or before `at` (unix seconds): an
    /// operator's end of a user's sessions. Looks through every user's
    /// sockets (the subject may be a username): rare, and linear.
    pub fn end_subject(&self, subject: &[u8; 32], at: u64) -> usize {
        self.end_anywhere(|e| e.who.signed_in_at <= at && e.who.answers_to(subject))
    }

    /// [`LiveSockets::end_sign_in`] for a sign-in known by its lineage's
    /// hash (ended on another replica). Linear, and rare.
    pub fn end_sign_in_hashed(&self, lineage: &[u8; 32]) -> usize {
        self.end_anywhere(|e| e.lineage_hash == *lineage)
    }

    /// [`LiveSockets::end_browser`] for a user known by the hash of its
    /// `sub` subject (a sign-out seen on another replica).
    pub fn end_browser_hashed(&self, sub: &[u8; 32], refresh_hash: &[u8; 32]) -> usize {
        self.end_anywhere(|e| e.holds(refresh_hash) && e.who.sub() == sub)
    }

    fn end_anywhere(&self, pick: impl Fn(&Entry) -> bool) -> usize {
        let mut n = 0;
        for entries in self.by_sub.iter() {
            for e in entries.iter().filter(|e| pick(e)) {
                e.ended.cancel();
                n += 1;
            }
        }
        n
    }

    fn end_where(&self, sub: &str, pick: impl Fn(&Entry) -> bool) -> usize {
        let Some(entries) = self.by_sub.get(sub) else {
            return 0;
        };
        let mut n = 0;
        for e in entries.iter().filter(|e| pick(e)) {
            e.ended.cancel();
            n += 1;
        }
        n
    }

    /// Open sockets registered (for tests and metrics).
    pub fn len(&self) -> usize {
        self.by_sub.iter().map(|e| e.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proof(sub: &str, jti: &str) -> SessionProof {
        SessionProof {
            sub: sub.into(),
            client_id: Some("c".into()),
            origin_jti: Some(jti.into()),
            event_id: None,
        }
    }

    #[test]
    fn ends_only_the_sign_in_or_browser_asked_for() {
        let live = LiveSockets::default();
        let a1 = live.register(&proof("alice", "j1"), Some([1; 32]), Who::default());
        let a2 = live.register(&proof("alice", "j2"), Some([2; 32]), Who::default());
        let b1 = live.register(&proof("bob", "j1"), Some([1; 32]), Who::default());
        assert_eq!(live.end_sign_in(&proof("alice", "j1")), 1);
        assert!(a1.ended().is_cancelled());
        assert!(!a2.ended().is_cancelled() && !b1.ended().is_cancelled());

        assert_eq!(live.end_browser("alice", &[2; 32]), 1);
        assert!(a2.ended().is_cancelled());
        // Same hash, another user: untouched.
        assert!(!b1.ended().is_cancelled());
    }

    #[test]
    fn an_end_of_a_subject_reaches_only_its_sign_ins_made_before() {
        let live = LiveSockets::default();
        let who = |s: u8, at| Who::new([s; 32], Some([s + 100; 32]), at);
        let old = live.register(&proof("alice", "j1"), None, who(1, 100));
        let new = live.register(&proof("alice", "j2"), None, who(1, 300));
        let bob = live.register(&proof("bob", "j3"), None, who(2, 100));
        // By the username's hash, at 200: the sign-in of 300 is newer.
        assert_eq!(live.end_subject(&[101; 32], 200), 1);
        assert!(old.ended().is_cancelled());
        assert!(!new.ended().is_cancelled() && !bob.ended().is_cancelled());
        assert_eq!(live.end_subject(&[1; 32], 300), 2);
        assert!(new.ended().is_cancelled() && !bob.ended().is_cancelled());
    }

    #[test]
    fn a_closed_socket_leaves_the_table() {
        let live = LiveSockets::default();
        let a = live.register(&proof("alice", "j1"), None, Who::default());
        let b = live.register(&proof("alice", "j1"), None, Who::default());
        assert_eq!(live.len(), 2);
        drop(a);
        assert_eq!(live.len(), 1);
        drop(b);
        assert!(live.is_empty());
        assert!(live.by_sub.is_empty(), "no empty user entry is left behind");
        assert_eq!(live.end_sign_in(&proof("alice", "j1")), 0);
    }
}
