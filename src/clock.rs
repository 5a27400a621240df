//! Time: the wall clock tokens are stamped with, the monotonic clock timers
//! run on, and the one policy that mixes them — when a token is due for
//! renewal.
//!
//! It owns no state and never fails: a clock before 1970 reads as 0.

use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// Seconds since the Unix epoch, as JWT `exp`/`iat` count them.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The monotonic instant at which the wall clock reads `unix_secs` (now, if
/// that is in the past).
pub fn instant_at(unix_secs: u64) -> Instant {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Instant::now() + Duration::from_secs(unix_secs).saturating_sub(now)
}

/// When to renew a token: `refresh_before` ahead of expiry, but never
/// earlier than half-way through its life (short-lived tokens would
/// otherwise be renewed in a loop).
pub fn refresh_due_at(expires_at: u64, issued_at: Option<u64>, refresh_before: Duration) -> u64 {
    let before = refresh_before.as_secs();
    let half_life = issued_at
        .map(|iat| expires_at.saturating_sub(iat) / 2)
        .unwrap_or(before);
    expires_at.saturating_sub(before.min(half_life))
}

/// Whether a token with these times should be renewed now.
pub fn is_due(expires_at: u64, issued_at: Option<u64>, refresh_before: Duration) -> bool {
    now_secs() >= refresh_due_at(expires_at, issued_at, refresh_before)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_is_due_before_expiry_but_not_before_half_life() {
        let before = Duration::from_secs(60);
        assert_eq!(refresh_due_at(10_000, Some(6_400), before), 9_940);
        // A 10 s token is renewed at half-life, not 60 s before (= at once).
        assert_eq!(refresh_due_at(1_010, Some(1_000), before), 1_005);
        assert_eq!(refresh_due_at(1_000, None, before), 940);
    }

    #[test]
    fn past_instants_are_now() {
        let before = Instant::now();
        assert!(instant_at(0) >= before);
        assert!(instant_at(0) <= Instant::now());
    }
}
