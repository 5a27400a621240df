//! One Cognito call per refresh token across every replica.
//!
//! For the refresh token hashed as `h`:
//! - `appsync-relay:refresh:result:<h>`: the outcome of the last call,
//!   sealed ([`super::seal`]), kept [`RESULT_TTL`] (as this process keeps
//!   its own: for the other tabs of a reconnect storm);
//! - `appsync-relay:refresh:lock:<h>` = a random fencing token, set only if
//!   absent, expiring after the Cognito timeout plus a margin: whoever sets
//!   it calls Cognito;
//! - `appsync-relay:refresh:sign-in:<lineage hash>`: the results of one
//!   sign-in, dropped together when it ends (a result kept for 5 s must not
//!   revive a session Cognito or the app just ended).
//!
//! A caller, in one script, takes the result if there is one, else the
//! lock if it is free, and then calls; else it waits (polling every
//! [`POLL`]) for the holder's result. The holder
//! stores its result only while the lock still holds its fencing token (a
//! holder that outlived its lock cannot overwrite a newer call's answer).
//! A refusal is shared too, so waiters do not spend Cognito calls on a dead
//! token; an unavailable Cognito is not (the next caller retries).
//!
//! When coordination fails before anyone called — Redis down or slow — the
//! caller calls Cognito itself, as one process alone would. When another
//! replica may have called already — a result that does not open, a holder
//! that never answered — it does not (the token may be rotated out): the
//! refresh is unavailable for now and retried.

use super::link::{self, Health};
use super::seal::SessionKeys;
use crate::refresh::{CallOutcome, RefreshError, SharedRefresh, RESULT_TTL};
use crate::session::TokenSet;
use futures_util::future::{BoxFuture, FutureExt};
use redis::aio::ConnectionManager;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a waiter looks for the holder's result.
const POLL: Duration = Duration::from_millis(20);
/// `{1, sealed result}` if there is one; else, when the caller may lock
/// (`ARGV[3]` is `1`), `{2, ""}` with the lock taken (holding the caller's
/// fencing token, `ARGV[1]`); else `{0, ""}` while someone holds the lock,
/// `{3, ""}` when nobody does.
const TAKE: &str = "\
local r = redis.call('GET', KEYS[2]) \
if r then return {1, r} end \
if ARGV[3] ~= '1' then \
  if redis.call('EXISTS', KEYS[1]) == 1 then return {0, ''} end \
  return {3, ''} \
end \
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2, ''} end \
return {0, ''}";

/// How far a sealed result's time may lie from this replica's clock before
/// it is refused (replicas' clocks differ a little; a replay is older).
const RESULT_SKEW: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct ClusterRefresh {
    pub conn: ConnectionManager,
    pub health: Arc<Health>,
    pub keys: Arc<SessionKeys>,
    /// The Cognito timeout plus a margin.
    pub lock_ttl: Duration,
}

fn lock_key(h: &[u8; 32]) -> String {
    format!("appsync-relay:refresh:lock:{}", link::hex(h))
}

fn result_key(h: &[u8; 32]) -> String {
    format!("appsync-relay:refresh:result:{}", link::hex(h))
}

/// The outcome as sealed, with the moment (unix milliseconds) it was
/// stored: sealed with it, so a result copied back into its slot later by
/// someone who can write Redis is refused as stale.
fn encode(outcome: &CallOutcome, at_ms: u64) -> Option<Value> {
    match outcome {
        Ok(t) => Some(
            json!({"access": t.access_token, "id": t.id_token, "refresh": t.refresh_token, "at": at_ms}),
        ),
        Err(RefreshError::Rejected(why)) => Some(json!({"rejected": why, "at": at_ms})),
        Err(RefreshError::Unavailable(_)) => None,
    }
}

/// Whether a result sealed at `at_ms` may still be used at `now_ms`.
fn fresh(at_ms: u64, now_ms: u64) -> bool {
    let skew = RESULT_SKEW.as_millis() as u64;
    at_ms <= now_ms + skew && now_ms <= at_ms + RESULT_TTL.as_millis() as u64 + skew
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn decode(v: &Value, now_ms: u64) -> Option<CallOutcome> {
    if !fresh(v["at"].as_u64()?, now_ms) {
        return None;
    }
    if let Some(why) = v["rejected"].as_str() {
        return Some(Err(RefreshError::Rejected(why.to_string())));
    }
    Some(Ok(TokenSet {
        access_token: v["access"].as_str()?.to_string(),
        id_token: v["id"].as_str().map(str::to_string),
        refresh_token: v["refresh"].as_str().map(str::to_string),
    }))
}

impl SharedRefresh for ClusterRefresh {
    fn follow(&self, key: [u8; 32]) -> BoxFuture<'static, Option<CallOutcome>> {
        let this = self.clone();
        async move { this.peek(&key).await }.boxed()
    }

    fn run(
        &self,
        key: [u8; 32],
        call: BoxFuture<'static, CallOutcome>,
    ) -> BoxFuture<'static, CallOutcome> {
        let this = self.clone();
        async move {
            let mut call = Some(call);
            match this.coordinate(&key, &mut call).await {
                Some(outcome) => outcome,
                // Not run yet: coordination failed before the call.
                None => match call.take() {
                    Some(call) => call.await,
                    None => Err(RefreshError::Unavailable("refresh call lost".into())),
                },
            }
        }
        .boxed()
    }
}

impl ClusterRefresh {
    /// The outcome, from Redis or from running `call` under the lock;
    /// `None` when it could not coordinate (then `call` was not run).
    async fn coordinate(
        &self,
        key: &[u8; 32],
        call: &mut Option<BoxFuture<'static, CallOutcome>>,
    ) -> Option<CallOutcome> {
        if !self.health.is_up() {
            return None;
        }
        let (lock, result) = (lock_key(key), result_key(key));
        let mut conn = self.conn.clone();
        let give_up = Instant::now() + self.lock_ttl + Duration::from_secs(1);
        let script = redis::Script::new(TAKE);
        // Random, not a counter: a Redis that restarted empty restarts a
        // counter, and a stale holder could then match a new lock.
        let fence = format!("{:032x}", rand::random::<u128>());
        // Once this caller has waited on another's lock it never calls
        // Cognito for this token: the holder may have rotated it already.
        let mut waited = false;
        loop {
            // One step: the result if there is one, else the lock if free.
            // (Reading, then locking, let a holder finish in between and a
            // second caller spend the rotated-out token: seen in the test.)
            let step = self
                .take(&mut conn, &script, (&lock, &result), &fence, !waited)
                .await;
            match step {
                Ok(Ok((1, sealed))) => return Some(self.open(&sealed, &result)),
                Ok(Ok((2, _))) => {
                    let outcome = call.take()?.await;
                    let sets = index_sets(&outcome);
                    // Twice at most: waiters otherwise wait out the lock.
                    let mut stored = Err(String::new());
                    for _ in 0..2 {
                        stored = self
                            .finish(&mut conn, &lock, &result, &sets, &fence, &outcome)
                            .await;
                        if stored.is_ok() {
                            break;
                        }
                    }
                    if let Err(e) = stored {
                        self.health.failed("refresh", &e);
                    }
                    return Some(outcome);
                }
                Ok(Ok((3, _))) => return Some(self.never_answered()),
                Ok(Ok(_)) => waited = true,
                Ok(Err(e)) => {
                    self.health.failed("refresh", &e);
                    return None;
                }
                Err(_) => {
                    self.health.failed("refresh", &"no answer in time");
                    return None;
                }
            }
            if Instant::now() > give_up {
                return Some(self.never_answered());
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// One step of [`TAKE`]: the result, or the lock (when `may_lock`).
    async fn take(
        &self,
        conn: &mut ConnectionManager,
        script: &redis::Script,
        (lock, result): (&str, &str),
        fence: &str,
        may_lock: bool,
    ) -> Result<redis::RedisResult<(i64, String)>, tokio::time::error::Elapsed> {
        let mut invocation = script.key(lock);
        invocation
            .key(result)
            .arg(fence)
            .arg(self.lock_ttl.as_millis() as u64)
            .arg(if may_lock { "1" } else { "0" });
        tokio::time::timeout(
            link::OP_TIMEOUT * 2,
            invocation.invoke_async::<(i64, String)>(conn),
        )
        .await
    }

    /// The result for `key` if there is one, or once the call holding its
    /// lock stores it; `None` when nobody called (or Redis cannot say).
    /// Never takes the lock.
    async fn peek(&self, key: &[u8; 32]) -> Option<CallOutcome> {
        if !self.health.is_up() {
            return None;
        }
        let (lock, result) = (lock_key(key), result_key(key));
        let mut conn = self.conn.clone();
        let give_up = Instant::now() + self.lock_ttl + Duration::from_secs(1);
        let script = redis::Script::new(TAKE);
        loop {
            let step = self
                .take(&mut conn, &script, (&lock, &result), "", false)
                .await;
            match step {
                Ok(Ok((1, sealed))) => return Some(self.open(&sealed, &result)),
                Ok(Ok((0, _))) if Instant::now() < give_up => {}
                Ok(Ok(_)) => return None,
                Ok(Err(e)) => {
                    self.health.failed("refresh", &e);
                    return None;
                }
                Err(_) => {
                    self.health.failed("refresh", &"no answer in time");
                    return None;
                }
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The holder of the lock this caller waited on left no result (it
    /// died, or its lock expired): its token may be rotated out already,
    /// so calling with it could end the session. Retry later (a
    /// still-valid token carries on meanwhile).
    fn never_answered(&self) -> CallOutcome {
        self.health.failed("refresh", &"the holder never answered");
        Err(RefreshError::Unavailable(
            "another replica's refresh never answered".into(),
        ))
    }

    /// A stored result, opened. One that does not open (another
    /// deployment's key, a key rotated in the wrong order, tampering) is
    /// not used, and neither is Cognito called with a token another
    /// replica may have rotated out: the caller retries later.
    fn open(&self, sealed: &str, result: &str) -> CallOutcome {
        let opened = self
            .keys
            .open(sealed, result)
            .and_then(|plain| serde_json::from_slice::<Value>(&plain).ok())
            .and_then(|v| decode(&v, now_ms()));
        opened.unwrap_or_else(|| {
            self.health.failed("refresh", &"a shared result did not open");
            tracing::warn!(
                "a refresh result in Redis does not open with --session-key-file's keys: are all replicas given the same keys?"
            );
            Err(RefreshError::Unavailable("shared refresh result unreadable".into()))
        })
    }

    /// Stores the outcome and releases the lock, both only while the lock
    /// still holds `fence`; a success is also filed under its sign-in's
    /// and its subjects' sets (`sets`), so ending the sign-in or the user
    /// drops it ([`forget_set`]).
    async fn finish(
        &self,
        conn: &mut ConnectionManager,
        lock: &str,
        result: &str,
        sets: &[String],
        fence: &str,
        outcome: &CallOutcome,
    ) -> Result<(), String> {
        let sealed = encode(outcome, now_ms())
            .map(|v| self.keys.seal(v.to_string().as_bytes(), result))
            .unwrap_or_default();
        let script = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then \
               if ARGV[2] ~= '' then redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3]) \
                 for i = 3, #KEYS do \
                   redis.call('SADD', KEYS[i], KEYS[2]) redis.call('PEXPIRE', KEYS[i], ARGV[3]) end \
               end \
               redis.call('DEL', KEYS[1]) \
             end return 1",
        );
        let mut invocation = script.prepare_invoke();
        invocation.key(lock).key(result);
        for set in sets {
            invocation.key(set);
        }
        invocation
            .arg(fence)
            .arg(sealed)
            .arg(RESULT_TTL.as_millis() as u64);
        match tokio::time::timeout(link::OP_TIMEOUT, invocation.invoke_async::<i64>(conn)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer in time".into()),
        }
    }
}

/// The sets that file a success's result: its sign-in's and each of its
/// subjects' (`sub`, username).
fn index_sets(outcome: &CallOutcome) -> Vec<String> {
    let Some(claims) = outcome
        .as_ref()
        .ok()
        .and_then(|t| crate::verify::unverified_claims(&t.access_token))
    else {
        return Vec::new();
    };
    let lineage = crate::session::SessionProof::of(&claims).lineage_hash();
    let mut sets = vec![sign_in_key(&lineage)];
    sets.extend(crate::session::subjects_of(&claims).iter().map(subject_key));
    sets
}

pub fn sign_in_key(lineage: &[u8; 32]) -> String {
    format!("appsync-relay:refresh:sign-in:{}", link::hex(lineage))
}

pub fn subject_key(subject: &[u8; 32]) -> String {
    format!("appsync-relay:refresh:subject:{}", link::hex(subject))
}

/// Drops every shared refresh result filed under `set` (a sign-in's or a
/// subject's: it ended, and a result kept for the next seconds would
/// revive it).
pub async fn forget_set(conn: &ConnectionManager, set: String) -> Result<(), String> {
    let mut conn = conn.clone();
    let script = redis::Script::new(
        "local m = redis.call('SMEMBERS', KEYS[1]) \
         for i = 1, #m do redis.call('DEL', m[i]) end \
         redis.call('DEL', KEYS[1]) return #m",
    );
    let invocation = script.key(set);
    match tokio::time::timeout(link::OP_TIMEOUT, invocation.invoke_async::<i64>(&mut conn)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer in time".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_round_trip_except_unavailable() {
        let t = TokenSet {
            access_token: "a".into(),
            id_token: None,
            refresh_token: Some("r".into()),
        };
        let now = now_ms();
        let v = encode(&Ok(t.clone()), now).unwrap();
        assert!(matches!(decode(&v, now), Some(Ok(got)) if got == t));
        let v = encode(&Err(RefreshError::Rejected("NotAuthorized".into())), now).unwrap();
        assert!(
            matches!(decode(&v, now), Some(Err(RefreshError::Rejected(w))) if w == "NotAuthorized")
        );
        assert!(encode(&Err(RefreshError::Unavailable("x".into())), now).is_none());
        assert!(decode(&json!({}), now).is_none());
    }

    #[test]
    fn a_result_replayed_later_or_from_the_future_is_refused() {
        let t = TokenSet {
            access_token: "a".into(),
            id_token: None,
            refresh_token: Some("r".into()),
        };
        let now = now_ms();
        let v = encode(&Ok(t), now).unwrap();
        let ttl = RESULT_TTL.as_millis() as u64;
        assert!(decode(&v, now + ttl).is_some(), "within its reuse");
        assert!(decode(&v, now + ttl + 3_000).is_none(), "replayed later");
        assert!(decode(&v, now - 3_000).is_none(), "from the future");
        let untimed = json!({"access": "a", "refresh": "r"});
        assert!(decode(&untimed, now).is_none(), "no time: refused");
    }
}
