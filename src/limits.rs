//! Admission and rate limits: how many relayed WebSockets in total, per user
//! (`sub`) and per client IP; the publish token bucket (per connection, and
//! per user for HTTP publish); Cognito refreshes per client IP and per user.
//! IPv6 clients are counted per /64 (one host usually holds a whole /64, so
//! per-address limits would not limit it).
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
    /// Cognito refresh calls per minute per client IP / per user (0 = none).
    pub refresh_rate_per_ip: u32,
    pub refresh_rate_per_user: u32,
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
    #[error("too many session refreshes from this address")]
    RefreshPerIp,
    #[error("too many session refreshes for this user")]
    RefreshPerUser,
    #[error("too many publishes for this user")]
    PublishRate,
}

impl LimitHit {
    pub fn reason(&self) -> &'static str {
        match self {
            LimitHit::Total => "max_connections",
            LimitHit::PerUser => "max_connections_per_user",
            LimitHit::PerIp => "max_connections_per_ip",
            LimitHit::RefreshPerIp => "refresh_rate_per_ip",
            LimitHit::RefreshPerUser => "refresh_rate_per_user",
            LimitHit::PublishRate => "publish_rate",
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
        let ip = ip_bucket(ip);
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

/// The key a client IP is limited under: IPv4 (and v4-mapped IPv6) as is,
/// other IPv6 addresses by their /64.
pub fn ip_bucket(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & (u128::MAX << 64);
            IpAddr::V6(std::net::Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

/// Token buckets by key, bounded: when the table is full, keys whose
/// bucket has refilled (idle for a whole period) are dropped first.
#[derive(Debug)]
pub struct KeyedRate<K: std::hash::Hash + Eq> {
    per_period: u32,
    period: Duration,
    capacity: usize,
    buckets: DashMap<K, TokenBucket>,
}

impl<K: std::hash::Hash + Eq + Clone> KeyedRate<K> {
    /// `per_period` events per `period` per key, burst of the same size;
    /// `None` when `per_period` is 0 (unlimited).
    pub fn new(per_period: u32, period: Duration, capacity: usize) -> Option<KeyedRate<K>> {
        (per_period > 0).then(|| KeyedRate {
            per_period,
            period,
            capacity: capacity.max(1),
            buckets: DashMap::new(),
        })
    }

    pub fn try_take(&self, key: &K) -> bool {
        if !self.buckets.contains_key(key) {
            // Full of active keys: the least recently used go, never all
            // (that would hand every key a fresh budget).
            crate::bounded::make_room(&self.buckets, self.capacity, self.period, |b| b.last);
        }
        let mut bucket = self
            .buckets
            .entry(key.clone())
            .or_insert_with(|| TokenBucket::per(self.per_period, self.period));
        bucket.try_take()
    }
}

/// The request-rate limits that need the user or address: Cognito
/// refreshes per client IP and per user (per minute), HTTP publishes per
/// user (per second, the `--publish-rate` a socket has).
#[derive(Debug)]
pub struct SessionRates {
    refresh_per_ip: Option<KeyedRate<IpAddr>>,
    refresh_per_user: Option<KeyedRate<String>>,
    publish_per_user: Option<KeyedRate<String>>,
}

impl SessionRates {
    pub fn new(cfg: &Limits, capacity: usize) -> SessionRates {
        let minute = Duration::from_secs(60);
        SessionRates {
            refresh_per_ip: KeyedRate::new(cfg.refresh_rate_per_ip, minute, capacity),
            refresh_per_user: KeyedRate::new(cfg.refresh_rate_per_user, minute, capacity),
            publish_per_user: KeyedRate::new(cfg.publish_rate, Duration::from_secs(1), capacity),
        }
    }

    /// One Cognito refresh from `ip`, charged to `sub` too when given, if
    /// the budgets allow.
    pub fn refresh(&self, ip: IpAddr, sub: Option<&str>) -> Result<(), LimitHit> {
        if let Some(r) = &self.refresh_per_ip {
            if !r.try_take(&ip_bucket(ip)) {
                return Err(LimitHit::RefreshPerIp);
            }
        }
        if let (Some(r), Some(sub)) = (&self.refresh_per_user, sub) {
            if !r.try_take(&sub.to_string()) {
                return Err(LimitHit::RefreshPerUser);
            }
        }
        Ok(())
    }

    /// One HTTP publish by `sub`.
    pub fn http_publish(&self, sub: &str) -> Result<(), LimitHit> {
        match &self.publish_per_user {
            Some(r) if !r.try_take(&sub.to_string()) => Err(LimitHit::PublishRate),
            _ => Ok(()),
        }
    }
}

/// A token bucket: `rate` tokens per second, holding at most `rate`.
#[derive(Debug)]
pub struct TokenBucket {
    /// Tokens per second.
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// `None` when `rate` is 0 (unlimited).
    pub fn new(rate: u32) -> Option<TokenBucket> {
        (rate > 0).then(|| TokenBucket::per(rate, Duration::from_secs(1)))
    }

    /// `n` tokens per `period`, holding at most `n`.
    fn per(n: u32, period: Duration) -> TokenBucket {
        TokenBucket {
            rate: f64::from(n) / period.as_secs_f64().max(1e-9),
            burst: f64::from(n),
            tokens: f64::from(n),
            last: Instant::now(),
        }
    }

    pub fn try_take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
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
            refresh_rate_per_ip: 0,
            refresh_rate_per_user: 0,
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

    #[test]
    fn ipv6_clients_share_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ip_bucket(a), ip_bucket(b));
        assert_ne!(ip_bucket(a), ip_bucket(other));
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(ip_bucket("::ffff:10.0.0.1".parse().unwrap()), v4);
        let l = limits(0, 0, 1);
        let _held = l.try_acquire("alice", a).unwrap();
        assert_eq!(l.try_acquire("bob", b).unwrap_err(), LimitHit::PerIp);
    }

    #[test]
    fn keyed_rates_are_per_key() {
        let r = KeyedRate::new(2, Duration::from_secs(60), 10).unwrap();
        assert!(r.try_take(&"a") && r.try_take(&"a"));
        assert!(!r.try_take(&"a"));
        assert!(r.try_take(&"b"));
        assert!(KeyedRate::<&str>::new(0, Duration::from_secs(1), 1).is_none());
    }
}
