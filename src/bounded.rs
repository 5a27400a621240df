//! Keeping a `DashMap` under its capacity without forgetting everything at
//! once. Tables that remember something for a while (rates, rotations,
//! refusals, ended sign-ins) must not grow without bound from what peers
//! send, but wiping one when it is full lets whoever filled it erase what
//! it held about everyone else. [`make_room`] first drops what has aged
//! out, then the oldest, until an eighth is free: whoever fills the table
//! only evicts its oldest entries, and a full table is scanned once per
//! eighth of its size in inserts.

use dashmap::DashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Makes room for one more entry in `map` when it holds `capacity` or
/// more: entries older than `ttl` go first, then the oldest, until an
/// eighth of the capacity is free — so a table kept full costs one scan
/// per eighth of its size in inserts, never one per insert. `born` says
/// when an entry was made.
pub fn make_room<K, V>(map: &DashMap<K, V>, capacity: usize, ttl: Duration, born: fn(&V) -> Instant)
where
    K: Hash + Eq + Clone,
{
    if map.len() < capacity {
        return;
    }
    let target = capacity.saturating_sub((capacity / 8).max(1));
    map.retain(|_, v| born(v).elapsed() < ttl);
    if map.len() <= target {
        return;
    }
    let mut ages: Vec<Instant> = map.iter().map(|e| born(e.value())).collect();
    let evict = ages.len() - target;
    let (_, cutoff, _) = ages.select_nth_unstable(evict - 1);
    let cutoff = *cutoff;
    map.retain(|_, v| born(v) > cutoff);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_oldest_not_everything() {
        let map: DashMap<u32, Instant> = DashMap::new();
        let start = Instant::now();
        for i in 0..64u32 {
            map.insert(i, start + Duration::from_millis(u64::from(i)));
        }
        make_room(&map, 64, Duration::from_secs(3600), |v| *v);
        assert_eq!(map.len(), 56, "one eighth evicted");
        assert!((0..8).all(|i| !map.contains_key(&i)), "the oldest went");
        assert!((8..64).all(|i| map.contains_key(&i)));
        // Below capacity: untouched.
        make_room(&map, 64, Duration::from_secs(3600), |v| *v);
        assert_eq!(map.len(), 56);
    }

    #[test]
    fn aged_out_entries_go_first_and_one_entry_tables_work() {
        let map: DashMap<u32, Instant> = DashMap::new();
        let old = Instant::now() - Duration::from_secs(10);
        map.insert(1, old);
        map.insert(2, Instant::now());
        make_room(&map, 2, Duration::from_secs(5), |v| *v);
        assert!(!map.contains_key(&1), "aged out");
        assert!(map.len() <= 1, "an eighth (at least one) is free");
        make_room(&map, 1, Duration::from_secs(5), |v| *v);
        assert!(map.is_empty());
    }
}
