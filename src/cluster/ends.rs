//! This replica's memory of every end of a session, said here or heard
//! from another replica, by hashes only: ended subjects (an operator's end:
//! the subject's hash and the moment, sign-ins made at or before it are
//! over), ended sign-ins (by lineage hash) and signed-out browsers (by
//! access-token hash). Kept for the refresh-token lifetime (no sign-in of
//! before can be renewed after that), bounded in size, and the source from
//! which a Redis that came back empty is filled again.

use crate::bounded::make_room;
use dashmap::DashMap;
use std::time::{Duration, Instant};

/// What another replica said (or a resync found in Redis), for this
/// replica to apply to its own sockets and memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Heard {
    /// An operator ended the sign-ins of a subject made until `at`.
    Subject { subject: [u8; 32], at: u64 },
    /// A sign-in ended (its newest refresh token was refused, or the app
    /// signed it out), named by its lineage's hash.
    SignIn { lineage: [u8; 32] },
    /// The app signed one browser out: its refresh token (`refresh`) and
    /// access token (`token`) are retired, its sockets (of the user whose
    /// `sub` subject is `sub`) closed, and its whole sign-in (`lineage`)
    /// ended wherever the refresh token is known to be that sign-in's.
    /// All four are hashes; `lineage` is absent from what replicas of
    /// before it said.
    Browser {
        sub: [u8; 32],
        refresh: [u8; 32],
        token: [u8; 32],
        lineage: Option<[u8; 32]>,
    },
}

impl Heard {
    /// As a stream entry's fields.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        use super::hex::hex;
        match self {
            Heard::Subject { subject, at } => {
                vec![
                    ("k", "subject".into()),
                    ("h", hex(subject)),
                    ("at", at.to_string()),
                ]
            }
            Heard::SignIn { lineage } => vec![("k", "sign_in".into()), ("l", hex(lineage))],
            Heard::Browser {
                sub,
                refresh,
                token,
                lineage,
            } => {
                let mut f = vec![
                    ("k", "browser".into()),
                    ("s", hex(sub)),
                    ("b", hex(refresh)),
                    ("t", hex(token)),
                ];
                if let Some(l) = lineage {
                    f.push(("l", hex(l)));
                }
                f
            }
        }
    }

    /// From a stream entry's fields; `None` for anything malformed.
    pub fn parse(fields: &[(String, String)]) -> Option<Heard> {
        use super::hex::unhex;
        let get = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.as_str());
        match get("k").unwrap_or("subject") {
            "subject" => Some(Heard::Subject {
                subject: unhex(get("h")?)?,
                at: get("at")?.parse().ok()?,
            }),
            "sign_in" => Some(Heard::SignIn {
                lineage: unhex(get("l")?)?,
            }),
            "browser" => Some(Heard::Browser {
                sub: unhex(get("s")?)?,
                refresh: unhex(get("b")?)?,
                token: unhex(get("t")?)?,
                lineage: match get("l") {
                    Some(l) => Some(unhex(l)?),
                    None => None,
                },
            }),
            _ => None,
        }
    }
}

/// A signed-out browser: its `sub` subject, access-token hash and sign-in.
type Browser = ([u8; 32], [u8; 32], Option<[u8; 32]>);

/// One remembered end, with when it was learnt.
#[derive(Clone, Copy)]
struct Mark<T: Copy> {
    value: T,
    seen: Instant,
}

/// This replica's memory of every end it said or heard, by hashes: what a
/// handshake anywhere is checked against without a Redis round trip, and
/// what a resynchronisation writes back into a Redis that lacks it.
pub struct Ends {
    /// Ended subjects: the sign-ins made up to `at` are over.
    subjects: DashMap<[u8; 32], Mark<u64>>,
    /// Ended sign-ins, by lineage hash.
    sign_ins: DashMap<[u8; 32], Mark<()>>,
    /// Browsers signed out, by the hash of their refresh token: its `sub`
    /// subject and access-token hash.
    browsers: DashMap<[u8; 32], Mark<Browser>>,
    /// The access tokens of those browsers, by hash.
    retired_tokens: DashMap<[u8; 32], Instant>,
    capacity: usize,
    ttl: Duration,
}

impl Ends {
    pub fn new(capacity: usize, ttl: Duration) -> Ends {
        Ends {
            subjects: DashMap::new(),
            sign_ins: DashMap::new(),
            browsers: DashMap::new(),
            retired_tokens: DashMap::new(),
            capacity: capacity.max(1),
            ttl,
        }
    }

    /// Remembers what was said; whether it taught this replica anything
    /// (a later `at` for a subject widens it, an earlier one changes
    /// nothing; a sign-in or browser already known is not new).
    pub fn insert(&self, heard: &Heard) -> bool {
        let now = Instant::now();
        match *heard {
            Heard::Subject { subject, at } => {
                make_room(&self.subjects, self.capacity, self.ttl, |m| m.seen);
                let mut widened = false;
                self.subjects
                    .entry(subject)
                    .and_modify(|m| {
                        if at > m.value {
                            *m = Mark {
                                value: at,
                                seen: now,
                            };
                            widened = true;
                        }
                    })
                    .or_insert_with(|| {
                        widened = true;
                        Mark {
                            value: at,
                            seen: now,
                        }
                    });
                widened
            }
            Heard::SignIn { lineage } => {
                if self.sign_in_ended(&lineage) {
                    return false;
                }
                make_room(&self.sign_ins, self.capacity, self.ttl, |m| m.seen);
                self.sign_ins.insert(
                    lineage,
                    Mark {
                        value: (),
                        seen: now,
                    },
                );
                true
            }
            Heard::Browser {
                sub,
                refresh,
                token,
                lineage,
            } => {
                make_room(&self.retired_tokens, self.capacity, self.ttl, |at| *at);
                self.retired_tokens.insert(token, now);
                if self
                    .browsers
                    .get(&refresh)
                    .is_some_and(|m| m.value.1 == token)
                {
                    return false;
                }
                make_room(&self.browsers, self.capacity, self.ttl, |m| m.seen);
                self.browsers.insert(
                    refresh,
                    Mark {
                        value: (sub, token, lineage),
                        seen: now,
                    },
                );
                true
            }
        }
    }

    /// No subject was ended (the common case: no hashing needed to tell).
    pub fn is_empty(&self) -> bool {
        self.subjects.is_empty()
    }

    /// Whether a sign-in made at `signed_in_at`, answering to `subjects`,
    /// is over.
    pub fn covers(&self, subjects: &[[u8; 32]], signed_in_at: u64) -> bool {
        subjects.iter().any(|s| {
            self.subjects
                .get(s)
                .is_some_and(|m| m.seen.elapsed() < self.ttl && signed_in_at <= m.value)
        })
    }

    /// Whether the sign-in hashed as `lineage` ended.
    pub fn sign_in_ended(&self, lineage: &[u8; 32]) -> bool {
        !self.sign_ins.is_empty()
            && self
                .sign_ins
                .get(lineage)
                .is_some_and(|m| m.seen.elapsed() < self.ttl)
    }

    /// Cognito renewed a sign-in marked ended: it lives after all (the
    /// refused token had been rotated by someone the relay did not see).
    /// Here only: a replica that still holds the mark asks Cognito once.
    pub fn revive(&self, lineage: &[u8; 32]) {
        if !self.sign_ins.is_empty() {
            self.sign_ins.remove(lineage);
        }
    }

    /// Whether the access token hashed as `token` belongs to a browser
    /// that signed out.
    pub fn token_retired(&self, token: &[u8; 32]) -> bool {
        !self.retired_tokens.is_empty()
            && self
                .retired_tokens
                .get(token)
                .is_some_and(|at| at.elapsed() < self.ttl)
    }

    /// Whether the browser holding the refresh token hashed as `refresh`
    /// signed out.
    pub fn refresh_signed_out(&self, refresh: &[u8; 32]) -> bool {
        !self.browsers.is_empty()
            && self
                .browsers
                .get(refresh)
                .is_some_and(|m| m.seen.elapsed() < self.ttl)
    }

    /// Every live entry with the time it has left.
    pub fn entries(&self) -> Vec<(Heard, Duration)> {
        let left = |seen: Instant| self.ttl.checked_sub(seen.elapsed());
        let subjects = self.subjects.iter().filter_map(|e| {
            let m = *e.value();
            Some((
                Heard::Subject {
                    subject: *e.key(),
                    at: m.value,
                },
                left(m.seen)?,
            ))
        });
        let sign_ins = self
            .sign_ins
            .iter()
            .filter_map(|e| Some((Heard::SignIn { lineage: *e.key() }, left(e.value().seen)?)));
        let browsers = self.browsers.iter().filter_map(|e| {
            let m = *e.value();
            Some((
                Heard::Browser {
                    sub: m.value.0,
                    refresh: *e.key(),
                    token: m.value.1,
                    lineage: m.value.2,
                },
                left(m.seen)?,
            ))
        });
        subjects.chain(sign_ins).chain(browsers).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covers_sign_ins_up_to_the_latest_end_only() {
        let ends = Ends::new(10, Duration::from_secs(60));
        let end = |at| Heard::Subject {
            subject: [1; 32],
            at,
        };
        assert!(ends.insert(&end(100)));
        assert!(ends.covers(&[[9; 32], [1; 32]], 100));
        assert!(!ends.covers(&[[1; 32]], 101), "a later sign-in is new");
        assert!(!ends.insert(&end(50)), "an earlier end narrows nothing");
        assert!(ends.covers(&[[1; 32]], 100));
        assert!(ends.insert(&end(200)));
        assert!(ends.covers(&[[1; 32]], 150));
        assert!(!ends.covers(&[[2; 32]], 0));
        assert_eq!(ends.entries().len(), 1);
    }

    #[test]
    fn what_is_heard_round_trips_through_stream_fields() {
        for h in [
            Heard::Subject {
                subject: [1; 32],
                at: 7,
            },
            Heard::SignIn { lineage: [2; 32] },
            Heard::Browser {
                sub: [3; 32],
                refresh: [4; 32],
                token: [5; 32],
                lineage: Some([6; 32]),
            },
            Heard::Browser {
                sub: [3; 32],
                refresh: [4; 32],
                token: [5; 32],
                lineage: None,
            },
        ] {
            let fields: Vec<(String, String)> = h
                .fields()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            assert_eq!(Heard::parse(&fields), Some(h));
        }
        let junk = vec![
            ("k".to_string(), "browser".to_string()),
            ("s".into(), "zz".into()),
        ];
        assert_eq!(Heard::parse(&junk), None);
    }

    #[test]
    fn entries_expire() {
        let ends = Ends::new(10, Duration::ZERO);
        ends.insert(&Heard::Subject {
            subject: [1; 32],
            at: 100,
        });
        ends.insert(&Heard::SignIn { lineage: [2; 32] });
        assert!(!ends.covers(&[[1; 32]], 0));
        assert!(!ends.sign_in_ended(&[2; 32]));
        assert!(ends.entries().is_empty());
    }

    #[test]
    fn sign_ins_and_browsers_are_remembered_once_and_revived_here() {
        let ends = Ends::new(10, Duration::from_secs(60));
        assert!(ends.insert(&Heard::SignIn { lineage: [2; 32] }));
        assert!(!ends.insert(&Heard::SignIn { lineage: [2; 32] }));
        assert!(ends.sign_in_ended(&[2; 32]) && !ends.sign_in_ended(&[3; 32]));
        let browser = Heard::Browser {
            sub: [4; 32],
            refresh: [5; 32],
            token: [6; 32],
            lineage: None,
        };
        assert!(ends.insert(&browser) && !ends.insert(&browser));
        assert!(ends.token_retired(&[6; 32]) && !ends.token_retired(&[5; 32]));
        // The same access token signed out again with another refresh
        // token: both are remembered (and written back).
        let again = Heard::Browser {
            sub: [4; 32],
            refresh: [7; 32],
            token: [6; 32],
            lineage: None,
        };
        assert!(ends.insert(&again));
        assert_eq!(ends.entries().len(), 3);
        ends.revive(&[2; 32]);
        assert!(!ends.sign_in_ended(&[2; 32]));
    }
}
