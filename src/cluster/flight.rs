//! One Cognito call per refresh token across every replica.
//!
//! For the refresh token hashed as `h`:
//! - `appsync-relay:refresh:result:<h>`: the outcome of the last call,
//!   sealed ([`super::seal`]), kept [`RESULT_TTL`] (as this process keeps
//!   its own: for the other tabs of a reconnect storm);
//! - `appsync-relay:refresh:lock:<h>` = a fencing token from
//!   `appsync-relay:refresh:fence`, set only if absent, expiring after the
//!   Cognito timeout plus a margin: whoever sets it calls Cognito.
//!
//! A caller, in one script, takes the result if there is one, else the
//! lock if it is free, and then calls; else it waits (polling every
//! [`POLL`]) for the holder's result. The holder
//! stores its result only while the lock still holds its fencing token (a
//! holder that outlived its lock cannot overwrite a newer call's answer).
//! A refusal is shared too, so waiters do not spend Cognito calls on a dead
//! token; an unavailable Cognito is not (the next caller retries).
//!
//! Whenever coordination fails — Redis down or slow, a result that does not
//! open — the caller calls Cognito itself, as one process alone would: the
//! worst case is today's, never a session held hostage by Redis.

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
const FENCE: &str = "appsync-relay:refresh:fence";

/// `{1, sealed result}` if there is one; else `{2, fence}` with the lock
/// taken; else `{0, ""}` (someone holds it).
const TAKE: &str = "\
local r = redis.call('GET', KEYS[2]) \
if r then return {1, r} end \
local fence = redis.call('INCR', KEYS[3]) \
if redis.call('SET', KEYS[1], fence, 'NX', 'PX', ARGV[1]) then return {2, tostring(fence)} end \
return {0, ''}";

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

fn encode(outcome: &CallOutcome) -> Option<Value> {
    match outcome {
        Ok(t) => {
            Some(json!({"access": t.access_token, "id": t.id_token, "refresh": t.refresh_token}))
        }
        Err(RefreshError::Rejected(why)) => Some(json!({"rejected": why})),
        Err(RefreshError::Unavailable(_)) => None,
    }
}

fn decode(v: &Value) -> Option<CallOutcome> {
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
        loop {
            // One step: the result if there is one, else the lock if free.
            // (Reading, then locking, let a holder finish in between and a
            // second caller spend the rotated-out token: seen in the test.)
            let mut invocation = script.key(&lock);
            invocation
                .key(&result)
                .key(FENCE)
                .arg(self.lock_ttl.as_millis() as u64);
            let step = tokio::time::timeout(
                link::OP_TIMEOUT * 2,
                invocation.invoke_async::<(i64, String)>(&mut conn),
            )
            .await;
            match step {
                // A value that does not open (another deployment's key,
                // tampering) is no answer: coordination gives up.
                Ok(Ok((1, sealed))) => return self.open(&sealed, &result),
                Ok(Ok((2, fence))) => {
                    let fence = fence.parse::<u64>().ok()?;
                    let outcome = call.take()?.await;
                    if let Err(e) = self
                        .finish(&mut conn, &lock, &result, fence, &outcome)
                        .await
                    {
                        self.health.failed("refresh", &e);
                    }
                    return Some(outcome);
                }
                Ok(Ok(_)) => {}
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
                // A holder that never answers and a lock that never
                // expires: not ours to wait for any longer.
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn open(&self, sealed: &str, result: &str) -> Option<CallOutcome> {
        let plain = self.keys.open(sealed, result)?;
        decode(&serde_json::from_slice::<Value>(&plain).ok()?)
    }

    /// Stores the outcome and releases the lock, both only while the lock
    /// still holds `fence`.
    async fn finish(
        &self,
        conn: &mut ConnectionManager,
        lock: &str,
        result: &str,
        fence: u64,
        outcome: &CallOutcome,
    ) -> Result<(), String> {
        let sealed = encode(outcome)
            .map(|v| self.keys.seal(v.to_string().as_bytes(), result))
            .unwrap_or_default();
        let script = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then \
               if ARGV[2] ~= '' then redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3]) end \
               redis.call('DEL', KEYS[1]) \
             end return 1",
        );
        let mut invocation = script.prepare_invoke();
        invocation
            .key(lock)
            .key(result)
            .arg(fence.to_string())
            .arg(sealed)
            .arg(RESULT_TTL.as_millis() as u64);
        match tokio::time::timeout(link::OP_TIMEOUT, invocation.invoke_async::<i64>(conn)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer in time".into()),
        }
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
        let v = encode(&Ok(t.clone())).unwrap();
        assert!(matches!(decode(&v), Some(Ok(got)) if got == t));
        let v = encode(&Err(RefreshError::Rejected("NotAuthorized".into()))).unwrap();
        assert!(matches!(decode(&v), Some(Err(RefreshError::Rejected(w))) if w == "NotAuthorized"));
        assert!(encode(&Err(RefreshError::Unavailable("x".into()))).is_none());
        assert!(decode(&json!({})).is_none());
    }
}
