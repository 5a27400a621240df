//! The connection to Redis and what is stored there.
//!
//! - A marker per end, expiring with the refresh-token lifetime: what a
//!   replica that starts, or comes back after losing Redis, learns every
//!   end from (the stream is capped). `appsync-relay:end:<subject hash>` =
//!   the unix second an operator ended the subject's sign-ins;
//!   `appsync-relay:end-sign-in:<lineage hash>` = 1, a sign-in that ended;
//!   `appsync-relay:end-browser:<refresh-token hash>` = `<sub subject
//!   hash>.<access-token hash>.<sign-in hash>`, a browser the app signed
//!   out.
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

use super::ends::Heard;
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
const SUBJECT_PREFIX: &str = "appsync-relay:end:";
const SIGN_IN_PREFIX: &str = "appsync-relay:end-sign-in:";
const BROWSER_PREFIX: &str = "appsync-relay:end-browser:";

/// The marker key of an end, and the value it holds.
pub fn marker(heard: &Heard) -> (String, String) {
    match heard {
        Heard::Subject { subject, at } => {
            (format!("{SUBJECT_PREFIX}{}", hex(subject)), at.to_string())
        }
        Heard::SignIn { lineage } => (format!("{SIGN_IN_PREFIX}{}", hex(lineage)), "1".into()),
        Heard::Browser {
            sub,
            refresh,
            token,
            lineage,
        } => (
            format!("{BROWSER_PREFIX}{}", hex(refresh)),
            match lineage {
                Some(l) => format!("{}.{}.{}", hex(sub), hex(token), hex(l)),
                None => format!("{}.{}", hex(sub), hex(token)),
            },
        ),
    }
}

/// What a marker key and its value say; `None` for anything else (the
/// stream's own key matches the scan's pattern too).
pub fn parse_marker(key: &str, value: &str) -> Option<Heard> {
    if let Some(h) = key.strip_prefix(SUBJECT_PREFIX) {
        return Some(Heard::Subject {
            subject: unhex(h)?,
            at: value.parse().ok()?,
        });
    }
    if let Some(h) = key.strip_prefix(SIGN_IN_PREFIX) {
        return Some(Heard::SignIn { lineage: unhex(h)? });
    }
    let refresh = unhex(key.strip_prefix(BROWSER_PREFIX)?)?;
    let mut parts = value.split('.');
    let (sub, token) = (unhex(parts.next()?)?, unhex(parts.next()?)?);
    let lineage = match parts.next() {
        Some(l) => Some(unhex(l)?),
        None => None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some(Heard::Browser {
        sub,
        refresh,
        token,
        lineage,
    })
}

/// Every marker key matches it.
fn marker_pattern() -> &'static str {
    "appsync-relay:end*"
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
        for op in ["end", "feed", "resync", "refresh", "lease", "chain"] {
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

/// Stores the end's marker (a subject's never narrowed by an earlier
/// one), expiring after `ttl`, and appends the end to the stream.
pub async fn publish(
    conn: &ConnectionManager,
    replica: &str,
    heard: &Heard,
    ttl: Duration,
) -> Result<(), String> {
    let mut conn = conn.clone();
    let (key, value) = marker(heard);
    // SET only when absent or not later, in one step.
    let script = redis::Script::new(
        "local v = redis.call('GET', KEYS[1]) \
         if ARGV[3] == 'max' and v and tonumber(v) and tonumber(v) > tonumber(ARGV[1]) then return 0 end \
         redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) \
         return 1",
    );
    let ttl = ttl.as_secs().max(1);
    let mode = match heard {
        Heard::Subject { .. } => "max",
        _ => "set",
    };
    bounded(
        script
            .key(&key)
            .arg(value)
            .arg(ttl)
            .arg(mode)
            .invoke_async::<i64>(&mut conn),
    )
    .await?;
    announce(&conn, replica, heard).await
}

/// Appends what this replica says to the stream, naming itself (`r`).
pub async fn announce(
    conn: &ConnectionManager,
    replica: &str,
    heard: &Heard,
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

/// Every end whose marker Redis holds.
pub async fn all_markers(conn: &ConnectionManager, limit: usize) -> Result<Vec<Heard>, String> {
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
        keys.extend(batch.into_iter().filter(|k| k != STREAM));
        cursor = next;
        if cursor == 0 || keys.len() >= limit {
            break;
        }
    }
    let mut out = Vec::new();
    for chunk in keys.chunks(500) {
        let values: Vec<Option<String>> = bounded(conn.mget(chunk)).await?;
        for (k, v) in chunk.iter().zip(values) {
            if let Some(heard) = v.and_then(|v| parse_marker(k, &v)) {
                out.push(heard);
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
    fn markers_round_trip_and_junk_is_refused() {
        for heard in [
            Heard::Subject {
                subject: [0xab; 32],
                at: 7,
            },
            Heard::SignIn { lineage: [1; 32] },
            Heard::Browser {
                sub: [2; 32],
                refresh: [3; 32],
                token: [4; 32],
                lineage: Some([5; 32]),
            },
        ] {
            let (k, v) = marker(&heard);
            assert!(k.starts_with("appsync-relay:end"));
            assert_eq!(parse_marker(&k, &v), Some(heard));
        }
        assert_eq!(parse_marker("appsync-relay:end:zz", "1"), None);
        assert_eq!(parse_marker(STREAM, "x"), None);
        assert_eq!(parse_marker("other:abc", "1"), None);
        let (k, _) = marker(&Heard::Browser {
            sub: [2; 32],
            refresh: [3; 32],
            token: [4; 32],
            lineage: Some([5; 32]),
        });
        assert_eq!(parse_marker(&k, "nodot"), None);
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
