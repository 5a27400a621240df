//! This replica's memory of ended subjects: the subject's hash and the
//! moment its sessions were ended (sign-ins made at or before it are over).
//! Kept for the refresh-token lifetime (no sign-in of before can be renewed
//! after that), bounded in size, and the source from which a Redis that
//! came back empty is filled again.

use crate::bounded::make_room;
use dashmap::DashMap;
use std::time::{Duration, Instant};

/// What another replica said (or a resync found in Redis), for this
/// replica to apply to its own sockets and memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// An operator ended the sign-ins of a subject made until `at`.
    Subject { subject: [u8; 32], at: u64 },
    /// A sign-in ended (its newest refresh token was refused, or the app
    /// signed it out), named by its lineage's hash.
    SignIn { lineage: [u8; 32] },
    /// The app signed one browser out: its refresh token (`refresh`) and
    /// access token (`token`) are retired, its sockets (of the user whose
    /// `sub` subject is `sub`) closed. All three are hashes.
    Browser {
        sub: [u8; 32],
        refresh: [u8; 32],
        token: [u8; 32],
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
            } => vec![
                ("k", "browser".into()),
                ("s", hex(sub)),
                ("b", hex(refresh)),
                ("t", hex(token)),
            ],
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
            }),
            _ => None,
        }
    }
}

pub struct Ends {
    table: DashMap<[u8; 32], (u64, Instant)>,
    capacity: usize,
    ttl: Duration,
}

impl Ends {
    pub fn new(capacity: usize, ttl: Duration) -> Ends {
        Ends {
            table: DashMap::new(),
            capacity: capacity.max(1),
            ttl,
        }
    }

    /// Remembers that `subject`'s sign-ins up to `at` are over; a later
    /// `at` for the same subject widens it, an earlier one changes nothing.
    /// Returns whether this widened what was known.
    pub fn insert(&self, subject: [u8; 32], at: u64) -> bool {
        make_room(&self.table, self.capacity, self.ttl, |(_, seen)| *seen);
        let mut widened = false;
        self.table
            .entry(subject)
            .and_modify(|(known, seen)| {
                if at > *known {
                    *known = at;
                    *seen = Instant::now();
                    widened = true;
                }
            })
            .or_insert_with(|| {
                widened = true;
                (at, Instant::now())
            });
        widened
    }

    /// Nothing was ended (the common case: no hashing needed to tell).
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Whether a sign-in made at `signed_in_at`, answering to `subjects`,
    /// is over.
    pub fn covers(&self, subjects: &[[u8; 32]], signed_in_at: u64) -> bool {
        subjects.iter().any(|s| {
            self.table
                .get(s)
                .is_some_and(|e| e.1.elapsed() < self.ttl && signed_in_at <= e.0)
        })
    }

    /// Every live entry with the time it has left.
    pub fn entries(&self) -> Vec<([u8; 32], u64, Duration)> {
        self.table
            .iter()
            .filter_map(|e| {
                let (at, seen) = *e.value();
                let left = self.ttl.checked_sub(seen.elapsed())?;
                Some((*e.key(), at, left))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covers_sign_ins_up_to_the_latest_end_only() {
        let ends = Ends::new(10, Duration::from_secs(60));
        assert!(ends.insert([1; 32], 100));
        assert!(ends.covers(&[[9; 32], [1; 32]], 100));
        assert!(!ends.covers(&[[1; 32]], 101), "a later sign-in is new");
        assert!(!ends.insert([1; 32], 50), "an earlier end narrows nothing");
        assert!(ends.covers(&[[1; 32]], 100));
        assert!(ends.insert([1; 32], 200));
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
        ends.insert([1; 32], 100);
        assert!(!ends.covers(&[[1; 32]], 0));
        assert!(ends.entries().is_empty());
    }
}
