//! Admission and rate limits: how many relayed WebSockets in total, per user
//! (`sub`) and per client IP, and the per-connection publish token bucket.
//!
//! A connection holds a [`ConnectionPermit`] for its whole life; dropping it
//! (however the connection ends, or if the upgrade never completes) gives
//! the slot back, so counts cannot leak. Per-user and per-IP maps only hold
//! keys with live connections. Nothing here logs or stores a token.

use dashmap::DashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Configured limits (0 / `None` = unlimited).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_user: usize,
    pub max_connections_per_ip: usize,
    pub handshake_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_subscriptions: usize,
    pub publish_rate: u32,
    pub idle_timeout: Option<Duration>,
}

/// Which limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitHit {
    #[error("too many connections")]
    Total,
    #[error("too many connections for this user")]
    PerUser,
    #[error("too many connections from this address")]
    PerIp,
}

impl LimitHit {
    pub fn reason(&self) -> &'static str {
        match self {
            LimitHit::Total => "max_connections",
            LimitHit::PerUser => "max_connections_per_user",
            LimitHit::PerIp => "max_connections_per_ip",
        }
    }
}

#[derive(Debug)]
pub struct ConnectionLimits {
    cfg: Limits,
    total: AtomicUsize,
    per_user: DashMap<String, usize>,
    per_ip: DashMap<IpAddr, usize>,
}

/// A slot in every limit; released on drop.
#[derive(Debug)]
pub struct ConnectionPermit {
    limits: Arc<ConnectionLimits>,
    user: String,
    ip: IpAddr,
}

fn release<K: std::hash::Hash + Eq>(map: &DashMap<K, usize>, key: &K) {
    // Decrement, and drop the key at zero so the map stays small.
    map.remove_if_mut(key, |_, n| {
        *n = n.saturating_sub(1);
        *n == 0
    });
}

impl ConnectionLimits {
    pub fn new(cfg: Limits) -> Arc<ConnectionLimits> {
        Arc::new(ConnectionLimits {
            cfg,
            total: AtomicUsize::new(0),
            per_user: DashMap::new(),
            per_ip: DashMap::new(),
        })
    }

    pub fn active(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    /// Cheap early check, before any verification work is spent.
    pub fn total_full(&self) -> bool {
        self.cfg.max_connections > 0 && self.active() >= self.cfg.max_connections
    }

    /// Takes a slot in every limit, or none.
    pub fn try_acquire(
        self: &Arc<Self>,
        user: &str,
        ip: IpAddr,
    ) -> Result<ConnectionPermit, LimitHit> {
        let max = self.cfg.max_connections;
        let admitted = self
            .total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (max == 0 || n < max).then_some(n + 1)
            });
        if admitted.is_err() {
            return Err(LimitHit::Total);
        }
        let undo_total = || {
            self.total.fetch_sub(1, Ordering::AcqRel);
        };
        let per_user = self.cfg.max_connections_per_user;
        {
            let mut n = self.per_user.entry(user.to_string()).or_insert(0);
            // Refusing means the count is at the limit (>= 1): the key already
            // existed, so there is nothing to undo in the map.
            if per_user > 0 && *n >= per_user {
                drop(n);
                undo_total();
                return Err(LimitHit::PerUser);
            }
            *n += 1;
        }
        let per_ip = self.cfg.max_connections_per_ip;
        {
            let mut n = self.per_ip.entry(ip).or_insert(0);
            if per_ip > 0 && *n >= per_ip {
                drop(n);
                // Undo this attempt's per-user slot.
                release(&self.per_user, &user.to_string());
                undo_total();
                return Err(LimitHit::PerIp);
            }
            *n += 1;
        }
        Ok(ConnectionPermit {
            limits: self.clone(),
            user: user.to_string(),
            ip,
        })
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.limits.total.fetch_sub(1, Ordering::AcqRel);
        release(&self.limits.per_user, &self.user);
        release(&self.limits.per_ip, &self.ip);
    }
}

/// A token bucket: `rate` tokens per second, holding at most `rate`.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// `None` when `rate` is 0 (unlimited).
    pub fn new(rate: u32) -> Option<TokenBucket> {
        (rate > 0).then(|| TokenBucket {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            last: Instant::now(),
        })
    }

    pub fn try_take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.rate);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, user: usize, ip: usize) -> Arc<ConnectionLimits> {
        ConnectionLimits::new(Limits {
            max_connections: total,
            max_connections_per_user: user,
            max_connections_per_ip: ip,
            handshake_timeout: Duration::from_secs(1),
            max_header_bytes: 8192,
            max_subscriptions: 1,
            publish_rate: 0,
            idle_timeout: None,
        })
    }

    #[test]
    fn permits_are_counted_and_released() {
        let l = limits(3, 2, 10);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let a = l.try_acquire("alice", ip).unwrap();
        let b = l.try_acquire("alice", ip).unwrap();
        assert_eq!(l.try_acquire("alice", ip).unwrap_err(), LimitHit::PerUser);
        let c = l.try_acquire("bob", ip).unwrap();
        assert_eq!(l.try_acquire("carol", ip).unwrap_err(), LimitHit::Total);
        assert!(l.total_full());
        drop((a, b, c));
        assert_eq!(l.active(), 0);
        assert!(
            l.per_user.is_empty() && l.per_ip.is_empty(),
            "maps shrink back to empty"
        );
    }

    #[test]
    fn per_ip_limit_and_failed_acquire_leaves_no_trace() {
        let l = limits(0, 0, 1);
        let ip: IpAddr = "10.0.0.2".parse().unwrap();
        let a = l.try_acquire("alice", ip).unwrap();
        assert_eq!(l.try_acquire("bob", ip).unwrap_err(), LimitHit::PerIp);
        assert_eq!(l.active(), 1);
        assert!(!l.per_user.contains_key("bob"));
        drop(a);
        assert!(l.try_acquire("bob", ip).is_ok());
    }

    #[test]
    fn token_bucket_allows_a_burst_then_the_rate() {
        let mut b = TokenBucket::new(5).unwrap();
        assert!((0..5).all(|_| b.try_take()));
        assert!(!b.try_take());
        b.last -= Duration::from_millis(400);
        assert!(b.try_take() && b.try_take());
        assert!(!b.try_take());
        assert!(TokenBucket::new(0).is_none());
    }
}
