//! What the relay learned about refresh tokens from Cognito's answers: which
//! sign-in each belongs to, and which token replaced it when Cognito rotated
//! it. Keyed by SHA-256 of the refresh token; the replacement itself is
//! held (it is what a sibling socket must renew with), never logged.
//!
//! Two kinds of holder follow a rotation differently:
//! - an open **socket** holds its refresh token inside the relay; when a
//!   sibling socket or tab of the same sign-in rotated it, the socket must
//!   renew with the replacement (with a zero grace period the old one is
//!   dead) — always;
//! - a **browser** request shows the refresh token of its cookie; it may
//!   follow a rotation until the browser has shown that it *received* the
//!   replacement — a request carrying it (plus [`HANDOVER_GRACE`] for tabs
//!   racing that request). After that, the old token in a cookie is a copy
//!   (a stale backup, a stolen jar) and buys nothing: Cognito alone judges
//!   it. Receipt, not sending, is what counts: a response the browser never
//!   got (an aborted fetch, a dropped 101) must not cost it the session.
//!
//! A link is followed only within one sign-in (`sub` plus `origin_jti` or
//! `event_id`, as [`crate::session::SessionProof::lineage`] renders it).

use crate::bounded::make_room;
use crate::verify::token_hash;
use dashmap::DashMap;
use std::time::{Duration, Instant};

/// How long a rotation is remembered: as long as an open socket can live
/// upstream.
const LINK_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long after a browser showed it holds a replacement its old token
/// still follows the rotation (other tabs racing that request).
pub const HANDOVER_GRACE: Duration = Duration::from_secs(5);
/// Longest chain followed (one link per rotation: a few a day).
const MAX_CHAIN: usize = 64;

/// Who shows a refresh token (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    Socket,
    Browser,
}

struct Link {
    lineage: String,
    /// The token Cognito returned in its place, if it rotated.
    next: Option<String>,
    /// The token this one replaced.
    prev: Option<[u8; 32]>,
    created: Instant,
    /// When a browser first showed a token that replaced this one.
    handed_over: Option<Instant>,
}

/// The links (see the module docs), bounded.
pub(super) struct Lineages {
    links: DashMap<[u8; 32], Link>,
    /// Per sign-in, the hash of the refresh token Cognito last issued or
    /// accepted for it, with when.
    latest: DashMap<String, ([u8; 32], Instant)>,
    capacity: usize,
}

impl Lineages {
    pub(super) fn new(capacity: usize) -> Lineages {
        Lineages {
            links: DashMap::new(),
            latest: DashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// Cognito answered a refresh of `used` for `lineage`, returning
    /// `rotated` when it rotated.
    pub(super) fn answered(&self, used: &str, rotated: Option<&str>, lineage: &str) {
        let used_key = token_hash(used);
        // Known: only learn its successor (what a browser already showed of
        // it stays). The shard guard must be gone before `insert` takes it.
        let known = match self.links.get_mut(&used_key) {
            Some(mut link) if link.lineage == lineage => {
                if rotated.is_some() {
                    link.next = rotated.map(str::to_string);
                }
                true
            }
            _ => false,
        };
        if !known {
            self.insert(used_key, rotated.map(str::to_string), None, lineage);
        }
        if let Some(next) = rotated {
            let key = token_hash(next);
            if !self.links.contains_key(&key) {
                self.insert(key, None, Some(used_key), lineage);
            }
        }
        if !self.latest.contains_key(lineage) {
            make_room(&self.latest, self.capacity, LINK_TTL, |l| l.1);
        }
        let newest = token_hash(rotated.unwrap_or(used));
        self.latest
            .insert(lineage.to_string(), (newest, Instant::now()));
    }

    fn insert(&self, key: [u8; 32], next: Option<String>, prev: Option<[u8; 32]>, lineage: &str) {
        if !self.links.contains_key(&key) {
            make_room(&self.links, self.capacity, LINK_TTL, |l| l.created);
        }
        self.links.insert(
            key,
            Link {
                lineage: lineage.to_string(),
                next,
                prev,
                created: Instant::now(),
                handed_over: None,
            },
        );
    }

    /// `refresh_token` and each token that replaced it in turn within
    /// `lineage`, oldest first, as far as `holder` may follow.
    pub(super) fn chain(&self, refresh_token: &str, lineage: &str, holder: Holder) -> Vec<String> {
        let mut chain = vec![refresh_token.to_string()];
        while chain.len() < MAX_CHAIN {
            let Some(current) = chain.last() else { break };
            let next = match self.links.get(&token_hash(current)) {
                Some(l) if l.lineage == lineage && l.created.elapsed() < LINK_TTL => {
                    let followable = match (holder, l.handed_over) {
                        (Holder::Socket, _) | (Holder::Browser, None) => true,
                        (Holder::Browser, Some(at)) => at.elapsed() < HANDOVER_GRACE,
                    };
                    match (&l.next, followable) {
                        (Some(next), true) => next.clone(),
                        _ => break,
                    }
                }
                _ => break,
            };
            chain.push(next);
        }
        chain
    }

    /// A browser request showed `refresh_token` for `lineage`: the browser
    /// has received it, so (after the grace) the tokens it replaced no
    /// longer follow the chain for a browser.
    pub(super) fn shown(&self, refresh_token: &str, lineage: &str) {
        let mut prev = match self.links.get(&token_hash(refresh_token)) {
            Some(l) if l.lineage == lineage => l.prev,
            _ => return,
        };
        for _ in 0..MAX_CHAIN {
            let Some(key) = prev else { return };
            let Some(mut link) = self.links.get_mut(&key) else {
                return;
            };
            if link.lineage != lineage || link.handed_over.is_some() {
                // Already marked: so is everything before it.
                return;
            }
            link.handed_over = Some(Instant::now());
            prev = link.prev;
        }
    }

    /// Whether the relay saw Cognito issue or accept `refresh_token` for
    /// the sign-in `lineage`.
    pub(super) fn belongs(&self, refresh_token: &str, lineage: &str) -> bool {
        self.links
            .get(&token_hash(refresh_token))
            .is_some_and(|l| l.lineage == lineage)
    }

    /// [`Lineages::belongs`] by hashes: the refresh token's and the
    /// lineage's (a sign-out said on another replica).
    pub(super) fn belongs_hashed(&self, refresh: &[u8; 32], lineage: &[u8; 32]) -> bool {
        self.links
            .get(refresh)
            .is_some_and(|l| token_hash(&l.lineage) == *lineage)
    }

    /// Whether a browser showing `refresh_token` could be proving receipt
    /// of a rotation (cheap: lets a caller skip verifying a token).
    pub(super) fn replaced_something(&self, refresh_token: &str) -> bool {
        self.links
            .get(&token_hash(refresh_token))
            .is_some_and(|l| l.prev.is_some())
    }

    /// Whether `refresh_token` is, as far as the relay saw, the newest of
    /// `lineage`: the last one Cognito issued or accepted for that sign-in.
    /// A token of a branch the sign-in has moved past (rotated by the app
    /// behind the relay's back, then renewed again) is not.
    pub(super) fn is_newest(&self, refresh_token: &str, lineage: &str) -> bool {
        self.latest
            .get(lineage)
            .is_some_and(|l| l.0 == token_hash(refresh_token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_follow_always_browsers_until_handed_over() {
        let l = Lineages::new(16);
        l.answered("rt0", Some("rt1"), "L");
        l.answered("rt1", Some("rt2"), "L");
        assert_eq!(l.chain("rt0", "L", Holder::Browser), ["rt0", "rt1", "rt2"]);
        assert_eq!(l.chain("rt0", "other", Holder::Socket), ["rt0"], "lineage");
        assert!(l.is_newest("rt2", "L") && !l.is_newest("rt1", "L"));
        assert!(!l.is_newest("rt2", "other") && !l.is_newest("unknown", "L"));
        l.shown("rt2", "L");
        // Within the grace: still followed.
        assert_eq!(l.chain("rt0", "L", Holder::Browser).len(), 3);
        for link in l.links.iter_mut() {
            let mut link = link;
            link.handed_over = Some(Instant::now() - HANDOVER_GRACE);
        }
        assert_eq!(l.chain("rt0", "L", Holder::Browser), ["rt0"]);
        assert_eq!(l.chain("rt1", "L", Holder::Browser), ["rt1"]);
        assert_eq!(l.chain("rt0", "L", Holder::Socket), ["rt0", "rt1", "rt2"]);
    }

    #[test]
    fn a_token_filed_again_under_another_sign_in_is_refiled() {
        // (This once deadlocked: the shard guard outlived the match.)
        let l = Lineages::new(16);
        l.answered("rt0", None, "L");
        l.answered("rt0", Some("rt1"), "M");
        assert!(l.belongs("rt0", "M") && !l.belongs("rt0", "L"));
        assert_eq!(l.chain("rt0", "M", Holder::Socket), ["rt0", "rt1"]);
    }

    #[test]
    fn a_cycle_or_a_long_chain_is_bounded() {
        let l = Lineages::new(1024);
        l.insert(token_hash("a"), Some("b".into()), None, "L");
        l.insert(token_hash("b"), Some("a".into()), None, "L");
        assert_eq!(l.chain("a", "L", Holder::Socket).len(), MAX_CHAIN);
    }
}
