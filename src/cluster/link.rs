//! The connection to Redis and what is stored there.
//!
//! - A marker per ended subject, `appsync-relay:end:<hex hash>` = the unix
//!   second its sign-ins ended, expiring with the refresh-token lifetime:
//!   what a handshake on any replica is checked against.
//! - A stream, `appsync-relay:ends`, one entry per end (an operator's of a
//!   subject, a sign-in's, a browser's sign-out: `super::ends::Heard`, by
//!   hashes only; `r` the replica that said it), capped near [`STREAM_LEN`]: how the
//!   other replicas learn of it within a second, and catch up after they
//!   lost Redis for a while (a Redis stream is pub/sub with a memory: a
//!   reader resumes from the last entry it saw, which plain PUBLISH cannot).
//!
//! Nothing here is a credential: subjects are SHA-256 hashes.
//!
//! Every command has a deadline ([`OP_TIMEOUT`]) and its failure only
//! marks the link down: this replica's own memory goes on deciding.

pub use super::hex::{hex, unhex};
use crate::metrics::Metrics;
use prometheus::{IntCounterVec, IntGauge, Opts};
use redis::aio::ConnectionManager;
use redis::{AsyncCommands as _, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Deadline of one Redis command (the feed's blocking read aside).
pub const OP_TIMEOUT: Duration = Duration::from_millis(250);
/// Entries the stream keeps (approximately): the catch-up window.
pub const STREAM_LEN: usize = 10_000;
pub const STREAM: &str = "appsync-relay:ends";
const MARKER_PREFIX: &str = "appsync-relay:end:";

pub fn marker_key(subject: &[u8; 32]) -> String {
    format!("{MARKER_PREFIX}{}", hex(subject))
}

pub fn marker_pattern() -> String {
    format!("{MARKER_PREFIX}*")
}

/// The subject hash a marker key names.
pub fn subject_of_key(key: &str) -> Option<[u8; 32]> {
    unhex(key.strip_prefix(MARKER_PREFIX)?)
}

/// The link's health, as `/readyz` and `/metrics` show it.
pub struct Health {
    up: AtomicBool,
    gauge: IntGauge,
    errors: IntCounterVec,
}

impl Health {
    pub fn new(metrics: &Metrics) -> Health {
        let gauge = IntGauge::new(
            "redis_up",
            "1 while this replica reaches Redis (--redis-url); 0 while it coordinates from its own memory only",
        )
        .expect("static metric definition is valid");
        let errors = IntCounterVec::new(
            Opts::new(
                "redis_errors_total",
                "Redis commands that failed or timed out, by operation",
            ),
            &["op"],
        )
        .expect("static metric definition is valid");
        metrics.register(Box::new(gauge.clone()));
        metrics.register(Box::new(errors.clone()));
        for op in ["end", "announce", "feed", "resync", "refresh", "lease"] {
            errors.with_label_values(&[op]);
        }
        Health {
            up: AtomicBool::new(false),
            gauge,
            errors,
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub fn set_up(&self, up: bool) {
        let was = self.up.swap(up, Ordering::AcqRel);
        self.gauge.set(up as i64);
        if was != up {
            if up {
                tracing::info!("redis reachable: coordinating with the other replicas");
            } else {
                tracing::warn!(
                    "redis unreachable: ends of sessions, per-user limits and refreshes are this replica's own until it returns"
                );
            }
        }
    }

    /// Counts a failed command. The link stays up: only the feed's own
    /// connection decides that (a single timeout must not switch off the
    /// coordination while Redis answers everything else).
    pub fn failed(&self, op: &str, e: &dyn std::fmt::Display) {
        self.errors.with_label_values(&[op]).inc();
        tracing::debug!(op, error = %e, "redis command failed");
    }
}

/// The result of one command within [`OP_TIMEOUT`].
async fn bounded<T>(
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {OP_TIMEOUT:?}")),
    }
}

/// Stores the marker (never narrowing a later one) and appends the end to
/// the stream.
pub async fn publish_end(
    conn: &ConnectionManager,
    replica: &str,
    subject: &[u8; 32],
    at: u64,
    ttl: Duration,
) -> Result<(), String> {
    let mut conn = conn.clone();
    let key = marker_key(subject);
    // SET only when absent or earlier, in one step.
    let script = redis::Script::new(
        "local v = tonumber(redis.call('GET', KEYS[1]) or '0') \
         if tonumber(ARGV[1]) >= v then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) end \
         return 1",
    );
    let ttl = ttl.as_secs().max(1);
    bounded(
        script
            .key(&key)
            .arg(at)
            .arg(ttl)
            .invoke_async::<i64>(&mut conn),
    )
    .await?;
    let heard = super::ends::Heard::Subject {
        subject: *subject,
        at,
    };
    announce(&conn, replica, &heard).await
}

/// Appends what this replica says to the stream, naming itself (`r`).
pub async fn announce(
    conn: &ConnectionManager,
    replica: &str,
    heard: &super::ends::Heard,
) -> Result<(), String> {
    let mut conn = conn.clone();
    let mut fields = heard.fields();
    fields.push(("r", replica.to_string()));
    bounded(conn.xadd_maxlen::<_, _, _, _, String>(
        STREAM,
        redis::streams::StreamMaxlen::Approx(STREAM_LEN),
        "*",
        &fields,
    ))
    .await?;
    Ok(())
}

/// Every marker in Redis: `(subject, at)`.
pub async fn all_markers(
    conn: &ConnectionManager,
    limit: usize,
) -> Result<Vec<([u8; 32], u64)>, String> {
    let mut conn = conn.clone();
    let mut cursor: u64 = 0;
    let mut keys = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = bounded(
            redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(marker_pattern())
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn),
        )
        .await?;
        keys.extend(batch);
        cursor = next;
        if cursor == 0 || keys.len() >= limit {
            break;
        }
    }
    let mut out = Vec::new();
    for chunk in keys.chunks(500) {
        let values: Vec<Option<String>> = bounded(conn.mget(chunk)).await?;
        for (k, v) in chunk.iter().zip(values) {
            if let (Some(s), Some(at)) = (subject_of_key(k), v.and_then(|v| v.parse().ok())) {
                out.push((s, at));
            }
        }
    }
    Ok(out)
}

/// One stream entry: id and fields.
pub type Entry = (String, Vec<(String, String)>);

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// The entries of an `XRANGE`/`XREVRANGE` reply (`[[id, [f, v, …]], …]`).
pub fn entries(v: &Value) -> Vec<Entry> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let Value::Array(pair) = item else {
                return None;
            };
            let id = text(pair.first()?)?;
            let Value::Array(kv) = pair.get(1)? else {
                return None;
            };
            let fields = kv
                .chunks(2)
                .filter_map(|c| Some((text(c.first()?)?, text(c.get(1)?)?)))
                .collect();
            Some((id, fields))
        })
        .collect()
}

/// The entries of an `XREAD` reply for one stream (nil on timeout;
/// `[[name, entries]]` in RESP2, `{name: entries}` in RESP3).
pub fn read_entries(v: &Value) -> Vec<Entry> {
    match v {
        Value::Array(streams) => streams
            .iter()
            .filter_map(|s| match s {
                Value::Array(pair) => pair.get(1).map(entries),
                _ => None,
            })
            .flatten()
            .collect(),
        Value::Map(m) => m.iter().flat_map(|(_, e)| entries(e)).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_junk_is_refused() {
        let s = [0xab; 32];
        assert_eq!(subject_of_key(&marker_key(&s)), Some(s));
        assert_eq!(subject_of_key("appsync-relay:end:zz"), None);
        assert_eq!(subject_of_key("other:abc"), None);
    }

    #[test]
    fn stream_replies_are_read_in_both_protocols() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let entry = Value::Array(vec![
            bulk("1-0"),
            Value::Array(vec![bulk("h"), bulk("x"), bulk("at"), bulk("5")]),
        ]);
        let resp2 = Value::Array(vec![Value::Array(vec![
            bulk(STREAM),
            Value::Array(vec![entry.clone()]),
        ])]);
        let got = read_entries(&resp2);
        assert_eq!(
            got,
            vec![(
                "1-0".to_string(),
                vec![("h".into(), "x".into()), ("at".into(), "5".into())]
            )]
        );
        let resp3 = Value::Map(vec![(bulk(STREAM), Value::Array(vec![entry]))]);
        assert_eq!(read_entries(&resp3), got);
        assert!(read_entries(&Value::Nil).is_empty());
    }
}
