//! `--max-connections-per-user` across replicas: each relayed socket holds
//! a lease in Redis, `appsync-relay:conns:<hex of the user's sub subject>`
//! (a sorted set of `<replica>:<n>` members scored by their expiry in the
//! Redis server's clock, so replicas' clocks do not matter). Admission is
//! one script: drop the expired leases, refuse at the limit, else add one.
//! Each replica renews its leases every third of `--cluster-lease-ttl` and
//! drops them when their sockets close; a replica that dies stops renewing
//! and its leases stop counting after the TTL.
//!
//! Redis down: admission is this replica's own (its local limit still
//! holds). Every renewal writes the leases whether Redis still had them or
//! not, and the feed writes them all back each time it reconnects, so
//! after an outage — or a Redis that restarted empty between two renewals
//! — the counts come back at once (a user over the limit then keeps the
//! sockets they have, and opens no more until under it).

use super::link::{hex, Health, OP_TIMEOUT};
use dashmap::DashMap;
use redis::aio::ConnectionManager;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const ADMIT: &str = "\
local t = redis.call('TIME') \
local now = t[1] * 1000 + math.floor(t[2] / 1000) \
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now) \
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end \
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3]) \
redis.call('PEXPIRE', KEYS[1], ARGV[2]) \
return 1";

/// Renews (or re-creates: a Redis that restarted between two renewals
/// lost them) this replica's live leases of one user.
const RENEW: &str = "\
local t = redis.call('TIME') \
local now = t[1] * 1000 + math.floor(t[2] / 1000) \
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[i]) end \
redis.call('PEXPIRE', KEYS[1], ARGV[1]) \
return 1";

struct Shared {
    conn: ConnectionManager,
    health: Arc<Health>,
    replica: String,
    ttl: Duration,
    /// Live leases: member → the user's key.
    live: DashMap<String, String>,
    next: AtomicU64,
}

#[derive(Clone)]
pub struct Leases {
    shared: Arc<Shared>,
}

/// One socket's lease; released on drop.
pub struct Lease {
    shared: Arc<Shared>,
    member: String,
    key: String,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.shared.live.remove(&self.member);
        if !self.shared.health.is_up() {
            return; // it expires; nothing to wait for
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return; // no runtime to send it with: it expires
        }
        let (shared, key, member) = (self.shared.clone(), self.key.clone(), self.member.clone());
        tokio::spawn(async move {
            let mut conn = shared.conn.clone();
            let mut zrem = redis::cmd("ZREM");
            zrem.arg(&key).arg(&member);
            if let Ok(Err(e)) =
                tokio::time::timeout(OP_TIMEOUT, zrem.query_async::<i64>(&mut conn)).await
            {
                shared.health.failed("lease", &e);
            }
        });
    }
}

/// The verdict of a cluster-wide admission.
pub enum Admission {
    Admitted(Lease),
    /// The user holds `max` leases across the replicas already.
    Full,
}

impl Leases {
    pub fn start(
        conn: ConnectionManager,
        health: Arc<Health>,
        replica: String,
        ttl: Duration,
        shutdown: CancellationToken,
    ) -> Leases {
        let leases = Leases {
            shared: Arc::new(Shared {
                conn,
                health,
                replica,
                ttl: ttl.max(Duration::from_secs(1)),
                live: DashMap::new(),
                next: AtomicU64::new(0),
            }),
        };
        tokio::spawn(leases.clone().renew_until(shutdown));
        leases
    }

    /// A lease for one more socket of the user whose `sub` subject is
    /// `subject`, unless they hold `max` across the replicas. Decided here
    /// alone (admitted) while Redis is unreachable.
    pub async fn admit(&self, subject: &[u8; 32], max: usize) -> Admission {
        let s = &self.shared;
        let key = format!("appsync-relay:conns:{}", hex(subject));
        let member = format!("{}:{}", s.replica, s.next.fetch_add(1, Ordering::Relaxed));
        if s.health.is_up() {
            let mut conn = s.conn.clone();
            let script = redis::Script::new(ADMIT);
            let verdict = tokio::time::timeout(
                OP_TIMEOUT,
                script
                    .key(&key)
                    .arg(max)
                    .arg(s.ttl.as_millis() as u64)
                    .arg(&member)
                    .invoke_async::<i64>(&mut conn),
            )
            .await;
            match verdict {
                Ok(Ok(0)) => return Admission::Full,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => s.health.failed("lease", &e),
                Err(_) => s.health.failed("lease", &"no answer in time"),
            }
        }
        s.live.insert(member.clone(), key.clone());
        Admission::Admitted(Lease {
            shared: s.clone(),
            member,
            key,
        })
    }

    async fn renew_until(self, shutdown: CancellationToken) {
        let period = self.shared.ttl / 3;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
            }
            if self.shared.health.is_up() {
                self.renew().await;
            }
        }
    }

    /// Writes every live lease into Redis now (the feed calls it on each
    /// reconnect: Redis may have come back empty).
    pub async fn write_back(&self) {
        self.renew().await;
    }

    /// Renews every live lease, re-creating those Redis lost, then takes
    /// out again any whose socket closed while the renewal ran (its own
    /// removal may have reached Redis first). Every user is tried; how
    /// many failed.
    async fn renew(&self) -> usize {
        let mut by_key: std::collections::HashMap<String, Vec<String>> = Default::default();
        for e in self.shared.live.iter() {
            by_key
                .entry(e.value().clone())
                .or_default()
                .push(e.key().clone());
        }
        let mut conn = self.shared.conn.clone();
        let script = redis::Script::new(RENEW);
        let mut failures = 0;
        for (key, members) in by_key {
            let mut invocation = script.key(&key);
            invocation.arg(self.shared.ttl.as_millis() as u64);
            for m in &members {
                invocation.arg(m);
            }
            let done =
                tokio::time::timeout(OP_TIMEOUT, invocation.invoke_async::<i64>(&mut conn)).await;
            match done {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    failures += 1;
                    self.shared.health.failed("lease", &e);
                }
                Err(_) => {
                    failures += 1;
                    self.shared.health.failed("lease", &"no answer in time");
                }
            }
            let closed: Vec<&String> = members
                .iter()
                .filter(|m| !self.shared.live.contains_key(*m))
                .collect();
            if !closed.is_empty() {
                let mut zrem = redis::cmd("ZREM");
                zrem.arg(&key).arg(closed);
                if let Ok(Err(e)) =
                    tokio::time::timeout(OP_TIMEOUT, zrem.query_async::<i64>(&mut conn)).await
                {
                    self.shared.health.failed("lease", &e);
                }
            }
        }
        failures
    }
}
