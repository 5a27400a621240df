//! The range of every number `serve` takes. A value outside its range is a
//! start-up error (exit code 2) with the range in the message: a duration
//! so large that `now + duration` overflows, or a zero that means nothing,
//! never reaches the code that does arithmetic with it.

use crate::cli::ServeArgs;

const DAY: u64 = 86_400;
/// `--worker-threads` at most (`main` applies it before validation, so it
/// never hands the runtime more).
pub const MAX_WORKER_THREADS: usize = 1_024;

/// `(flag, value, min, max)` for every numeric flag.
fn table(a: &ServeArgs) -> Vec<(&'static str, u64, u64, u64)> {
    let n = |v: usize| v as u64;
    vec![
        ("jwt-leeway", a.jwt_leeway, 0, 300),
        ("jwks-refetch-interval", a.jwks_refetch_interval, 1, 3_600),
        ("jwks-refresh-interval", a.jwks_refresh_interval, 1, DAY),
        ("upstream-timeout", a.upstream_timeout, 1, 300),
        ("max-message-bytes", n(a.max_message_bytes), 1_024, 64 << 20),
        ("token-cache-size", n(a.token_cache_size), 1, 10_000_000),
        ("drain-timeout", a.drain_timeout, 0, 3_600),
        (
            "worker-threads",
            n(a.worker_threads),
            0,
            MAX_WORKER_THREADS as u64,
        ),
        ("drain-delay", a.drain_delay, 0, 600),
        ("tls-reload-interval", a.tls_reload_interval, 1, DAY),
        ("refresh-before", a.refresh_before, 0, 3_600),
        // Browsers cap cookie lifetimes at 400 days.
        ("cookie-max-age", a.cookie_max_age, 1, 400 * DAY),
        ("max-session-age", a.max_session_age, 0, 365 * DAY),
        // Cognito allows refresh tokens of up to 10 years.
        (
            "refresh-token-validity",
            a.refresh_token_validity,
            60,
            3_650 * DAY,
        ),
        (
            "refresh-rate-per-ip",
            a.refresh_rate_per_ip.into(),
            0,
            100_000,
        ),
        (
            "refresh-rate-per-user",
            a.refresh_rate_per_user.into(),
            0,
            100_000,
        ),
        (
            "upstream-redial-attempts",
            a.upstream_redial_attempts.into(),
            0,
            100,
        ),
        ("app-connect-timeout", a.app_connect_timeout, 1, 300),
        ("app-timeout", a.app_timeout, 1, 3_600),
        ("max-connections", n(a.max_connections), 0, 10_000_000),
        (
            "max-connections-per-user",
            n(a.max_connections_per_user),
            0,
            1_000_000,
        ),
        (
            "max-connections-per-ip",
            n(a.max_connections_per_ip),
            0,
            1_000_000,
        ),
        ("handshake-timeout", a.handshake_timeout, 1, 300),
        ("max-header-bytes", n(a.max_header_bytes), 8_192, 1 << 20),
        ("max-subscriptions", n(a.max_subscriptions), 1, 100_000),
        ("publish-rate", a.publish_rate.into(), 0, 100_000),
        ("idle-timeout", a.idle_timeout, 0, 7 * DAY),
        ("send-timeout", a.send_timeout, 1, 3_600),
        ("body-timeout", a.body_timeout, 1, 3_600),
        ("shared-linger", a.shared_linger, 0, 3_600),
        ("shared-queue", n(a.shared_queue), 1, 1_000_000),
        (
            "shared-queue-bytes",
            n(a.shared_queue_bytes),
            65_536,
            1 << 30,
        ),
    ]
}

/// Appends one message per value out of its range.
pub fn check(args: &ServeArgs, errors: &mut Vec<String>) {
    for (flag, value, min, max) in table(args) {
        if value < min || value > max {
            errors.push(format!(
                "--{flag}: {value} is out of range (must be between {min} and {max})"
            ));
        }
    }
}
