//! The rotation chain of each sign-in, shared by the replicas, by hashes
//! only: which refresh tokens Cognito issued or accepted for the sign-in,
//! which replaced which, and the newest. "The newest" is then the cluster's
//! answer, not one replica's memory: a replica whose socket still holds a
//! token another replica rotated away knows that token's refusal ends only
//! that socket, not the sign-in everywhere.
//!
//! `appsync-relay:chain:<lineage hash>` is a Redis hash: a field per
//! refresh-token hash, whose value is the hash of the token that replaced
//! it (empty while none did), and `newest`, the end of the chain from the
//! last answer filed — so a filing that arrives late (said again after a
//! failed attempt) cannot move `newest` back. It expires with the
//! refresh-token lifetime. Nothing in it is a credential.

use super::link::{hex, unhex, Health, OP_TIMEOUT};
use redis::aio::ConnectionManager;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a filing Redis did not take is tried again.
const RETRY_FOR: Duration = Duration::from_secs(60);

/// Files `used` → `next` (ARGV[2], empty when Cognito did not rotate),
/// then walks from the answer's token to the end of the chain and records
/// it as `newest`.
const FILE: &str = "\
local used, nxt = ARGV[1], ARGV[2] \
if nxt ~= '' then \
  redis.call('HSET', KEYS[1], used, nxt) \
  if redis.call('HEXISTS', KEYS[1], nxt) == 0 then redis.call('HSET', KEYS[1], nxt, '') end \
elseif redis.call('HEXISTS', KEYS[1], used) == 0 then \
  redis.call('HSET', KEYS[1], used, '') \
end \
local cur = used \
if nxt ~= '' then cur = nxt end \
for i = 1, 64 do \
  local n = redis.call('HGET', KEYS[1], cur) \
  if not n or n == '' then break end \
  cur = n \
end \
redis.call('HSET', KEYS[1], 'newest', cur) \
redis.call('EXPIRE', KEYS[1], ARGV[3]) \
return 1";

fn key(lineage: &[u8; 32]) -> String {
    format!("appsync-relay:chain:{}", hex(lineage))
}

/// What the cluster says about a sign-in's chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// No `--redis-url`: this replica's own memory decides.
    Local,
    /// Redis could not be asked: nobody can tell.
    Unknown,
    /// Redis answered (`None`: it knows nothing of this sign-in).
    Known(Option<[u8; 32]>),
}

#[derive(Clone)]
pub struct Chains {
    pub conn: ConnectionManager,
    pub health: Arc<Health>,
    /// The refresh-token lifetime.
    pub ttl: Duration,
}

impl Chains {
    /// Files an answer in the background, said again for a while when
    /// Redis does not take it.
    pub fn file(&self, lineage: [u8; 32], used: [u8; 32], next: Option<[u8; 32]>) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut wait = Duration::from_millis(250);
            let give_up = Instant::now() + RETRY_FOR;
            loop {
                match this.file_once(&lineage, &used, next.as_ref()).await {
                    Ok(()) => return,
                    Err(e) => this.health.failed("chain", &e),
                }
                if Instant::now() > give_up {
                    return;
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        });
    }

    async fn file_once(
        &self,
        lineage: &[u8; 32],
        used: &[u8; 32],
        next: Option<&[u8; 32]>,
    ) -> Result<(), String> {
        let mut conn = self.conn.clone();
        let script = redis::Script::new(FILE);
        let mut invocation = script.key(key(lineage));
        invocation
            .arg(hex(used))
            .arg(next.map(hex).unwrap_or_default())
            .arg(self.ttl.as_secs().max(1));
        match tokio::time::timeout(OP_TIMEOUT, invocation.invoke_async::<i64>(&mut conn)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer in time".into()),
        }
    }

    /// The newest refresh token of the sign-in `lineage`, as filed.
    pub async fn newest(&self, lineage: &[u8; 32]) -> View {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("HGET");
        cmd.arg(key(lineage)).arg("newest");
        match tokio::time::timeout(OP_TIMEOUT, cmd.query_async::<Option<String>>(&mut conn)).await {
            Ok(Ok(v)) => View::Known(v.as_deref().and_then(unhex)),
            Ok(Err(e)) => {
                self.health.failed("chain", &e);
                View::Unknown
            }
            Err(_) => {
                self.health.failed("chain", &"no answer in time");
                View::Unknown
            }
        }
    }

    /// Whether some replica saw Cognito issue or accept the refresh token
    /// hashed as `refresh` for the sign-in `lineage` (`None`: cannot tell).
    pub async fn belongs(&self, lineage: &[u8; 32], refresh: &[u8; 32]) -> Option<bool> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("HEXISTS");
        cmd.arg(key(lineage)).arg(hex(refresh));
        match tokio::time::timeout(OP_TIMEOUT, cmd.query_async::<bool>(&mut conn)).await {
            Ok(Ok(known)) => Some(known),
            Ok(Err(e)) => {
                self.health.failed("chain", &e);
                None
            }
            Err(_) => {
                self.health.failed("chain", &"no answer in time");
                None
            }
        }
    }
}

impl crate::refresh::SharedChain for Chains {
    fn answered(&self, lineage: [u8; 32], used: [u8; 32], next: Option<[u8; 32]>) {
        self.file(lineage, used, next);
    }
}
