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
//!   follow a rotation only until a response has handed the replacement to
//!   that browser (plus [`HANDOVER_GRACE`] for tabs racing that response).
//!   After that, the old token in a cookie is a copy (a stale backup, a
//!   stolen jar) and buys nothing: Cognito alone judges it.
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
/// How long after a browser was handed a replacement its old token still
/// follows the rotation (other tabs racing the response's `Set-Cookie`).
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
    created: Instant,
    /// When a response handed `next` (or its own successor) to a browser.
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
        self.insert(used, rotated.map(str::to_string), lineage);
        if let Some(next) = rotated {
            if !self.links.contains_key(&token_hash(next)) {
                self.insert(next, None, lineage);
            }
        }
        if !self.latest.contains_key(lineage) {
            make_room(&self.latest, self.capacity, LINK_TTL, |l| l.1);
        }
        let newest = token_hash(rotated.unwrap_or(used));
        self.latest
            .insert(lineage.to_string(), (newest, Instant::now()));
    }

    fn insert(&self, token: &str, next: Option<String>, lineage: &str) {
        let key = token_hash(token);
        if !self.links.contains_key(&key) {
            make_room(&self.links, self.capacity, LINK_TTL, |l| l.created);
        }
        self.links.insert(
            key,
            Link {
                lineage: lineage.to_string(),
                next,
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

    /// A response is giving the browser that showed `refresh_token` the
    /// newest token of its chain: from now on (after the grace) that
    /// browser's old tokens no longer follow the chain.
    pub(super) fn handed_over(&self, refresh_token: &str, lineage: &str) {
        let mut current = refresh_token.to_string();
        for _ in 0..MAX_CHAIN {
            let Some(mut link) = self.links.get_mut(&token_hash(&current)) else {
                return;
            };
            if link.lineage != lineage {
                return;
            }
            link.handed_over.get_or_insert_with(Instant::now);
            match link.next.clone() {
                Some(next) => current = next,
                None => return,
            }
        }
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
        l.handed_over("rt0", "L");
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
    fn a_cycle_or_a_long_chain_is_bounded() {
        let l = Lineages::new(1024);
        l.insert("a", Some("b".into()), "L");
        l.insert("b", Some("a".into()), "L");
        assert_eq!(l.chain("a", "L", Holder::Socket).len(), MAX_CHAIN);
    }
}
