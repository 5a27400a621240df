//! This replica's memory of ended subjects: the subject's hash and the
//! moment its sessions were ended (sign-ins made at or before it are over).
//! Kept for the refresh-token lifetime (no sign-in of before can be renewed
//! after that), bounded in size, and the source from which a Redis that
//! came back empty is filled again.

use crate::bounded::make_room;
use dashmap::DashMap;
use std::time::{Duration, Instant};

/// An end heard from another replica (or found in Redis on resync): the
/// sockets it covers here must close.
#[derive(Debug, Clone, Copy)]
pub struct Ended {
    pub subject: [u8; 32],
    pub at: u64,
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
    fn entries_expire() {
        let ends = Ends::new(10, Duration::ZERO);
        ends.insert([1; 32], 100);
        assert!(!ends.covers(&[[1; 32]], 0));
        assert!(ends.entries().is_empty());
    }
}
