//! The session path across replicas, as a stateful property test: two or
//! three relays (their real session authority, in-process) share a real
//! `redis-server` through paths a test can cut, and random sequences of
//! handshakes (fresh or stale cookies, on any replica), reconnect storms
//! hitting every replica at once, sockets renewing in place, operators'
//! ends, app sign-outs, revocations, rotations with and without a grace
//! period run against the fake Cognito — with faults between them: Redis
//! restarted empty, one replica partitioned from Redis, Redis pausing its
//! writes.
//!
//! Invariants, checked after every step:
//! 1. an end (an operator's, or the app's sign-out) has closed every
//!    socket of that sign-in open when it was said, on every replica,
//!    within 1 s of the end reaching Redis (said again with backoff, or
//!    written back when a cut-off replica returns) with every replica
//!    connected; and no later handshake succeeds, on any replica, of a
//!    sign-in an operator ended or with cookies the app signed out (a
//!    newer token of a signed-out sign-in, renewed where the sign-out was
//!    not yet heard, is Cognito's to judge, as on one replica);
//! 2. no socket of a sign-in nobody ended, and that Cognito still holds a
//!    live token for, is closed by an end: no sign-in ends because one
//!    replica's view was stale;
//! 3. while Cognito still holds a live refresh token for the session, the
//!    browser can get one (its cookie's, or a renewal waiting for it on
//!    some replica);
//! 4. in a reconnect storm across the replicas, while Redis is reachable,
//!    Cognito is asked at most once per refresh token;
//! 5. at the end of a case, once every fault healed and one lease TTL
//!    passed, the per-user count is back at its limit on every replica;
//!    and nothing in Redis is a token, the `sub` or the username in the
//!    clear.
//!
//! `cargo test --test replicas_model` runs a fixed seed and a small budget
//! (CI); `REPLICAS_MODEL_CASES=<n> REPLICAS_MODEL_SEED=<n> cargo test
//! --release --test replicas_model -- --nocapture` for a longer run.

mod support;

use appsync_relay::cluster::leases::Lease;
use appsync_relay::cluster::Heard;
use appsync_relay::relay::token::TokenState;
use appsync_relay::rewrite::UpstreamAuth;
use appsync_relay::session::{Registration, Subject};
use appsync_relay::state::RelayState;
use appsync_relay::verify::token_hash;
use hyper::header::HeaderMap;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::json;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::fake_cognito::FakeCognito;
use support::jar::{apply, header_for, jar, Jar};
use support::redis_server::{Cuttable, Redis};
use support::*;
use tokio_util::sync::CancellationToken;

/// The key of the marker an end leaves in Redis.
fn marker_key(heard: Heard) -> String {
    appsync_relay::cluster::link::marker(&heard).0
}

const REPLICAS: usize = 3;
const LIMIT: usize = 2;
const LEASE_TTL: Duration = Duration::from_secs(3);

#[derive(Debug, Clone)]
enum Op {
    Handshake {
        on: usize,
        stale: bool,
        open: bool,
    },
    /// Every replica renews the same (due) cookies at once.
    Storm,
    Renew(usize),
    Close(usize),
    OperatorEnd {
        on: usize,
    },
    SignOut {
        on: usize,
    },
    Revoke,
    SignInAgain,
    Rotation(bool),
    ZeroGrace(bool),
    /// An hour passes for the browser: its access tokens expire (the next
    /// handshake renews). Cognito's answers are never born due here: with
    /// tokens that are due the moment they are issued every request
    /// rotates, and two replicas answering the same browser at once (one
    /// renewing a renewal its socket left, one reusing an answer of
    /// seconds ago) hand it different refresh tokens — a configuration
    /// (`--refresh-before` at or above the token lifetime) the relay
    /// cannot make safe across replicas, and does not try to.
    Age,
    /// Seconds pass: answers kept for reuse expire.
    Later,
    Partition(usize),
    Heal,
    RedisRestart,
    SlowRedis,
}

fn op() -> impl Strategy<Value = Op> {
    let on = 0..REPLICAS;
    prop_oneof![
        8 => (on.clone(), any::<bool>(), any::<bool>())
            .prop_map(|(on, stale, open)| Op::Handshake { on, stale, open }),
        2 => Just(Op::Storm),
        5 => (0usize..4).prop_map(Op::Renew),
        1 => (0usize..4).prop_map(Op::Close),
        1 => on.clone().prop_map(|on| Op::OperatorEnd { on }),
        1 => on.clone().prop_map(|on| Op::SignOut { on }),
        1 => Just(Op::Revoke),
        2 => Just(Op::SignInAgain),
        1 => any::<bool>().prop_map(Op::Rotation),
        1 => any::<bool>().prop_map(Op::ZeroGrace),
        2 => Just(Op::Age),
        3 => Just(Op::Later),
        1 => on.prop_map(Op::Partition),
        2 => Just(Op::Heal),
        1 => Just(Op::RedisRestart),
        1 => Just(Op::SlowRedis),
    ]
}

struct Replica {
    state: Arc<RelayState>,
    path: Cuttable,
}

struct Sock {
    on: usize,
    token: TokenState,
    registration: Registration,
    _lease: Option<Lease>,
    /// The sign-in it belongs to (the model's count of sign-ins).
    sign_in: u64,
    /// An end of its sign-in was said while it was open: it must close.
    /// (One opened after a sign-out, with a token the sign-out did not
    /// show, may be a sign-in Cognito revived: not required to.)
    doomed: bool,
}

struct Harness {
    redis: Redis,
    cognito: FakeCognito,
    replicas: Vec<Replica>,
    stop: CancellationToken,
    jar: Jar,
    prev_jar: Jar,
    sign_in: u64,
    sockets: Vec<Sock>,
    /// Sign-ins ended on purpose: by an end said (operator, sign-out) …
    ended_by_end: HashSet<u64>,
    /// … of which an operator ended these: nothing of them opens again
    /// (a sign-out ends its browser's cookies; a newer token of the
    /// sign-in, renewed by a replica that had not heard yet, is Cognito's
    /// to judge, as on one replica).
    hard_ended: HashSet<u64>,
    /// The refresh tokens of cookies the app signed out.
    signed_out: HashSet<String>,
    /// … or by Cognito (revoked): the model expects nothing of them.
    ended_by_cognito: HashSet<u64>,
    /// The end of the current sign-in reached every replica (checked).
    end_everywhere: bool,
    /// The Redis markers of ends said and not yet seen in Redis.
    said: Vec<String>,
    partitioned: Option<usize>,
    /// Second of the last operator's end: a sign-in in it is covered.
    last_end_second: u64,
    /// Every token and refresh token the browser held, to look for in Redis.
    secrets: HashSet<String>,
    _jwks: JwksServer,
    _emulator: appsync_relay::emulator::EmulatorHandle,
    _key: std::path::PathBuf,
}

impl Harness {
    async fn start() -> Harness {
        let redis = Redis::start().await;
        let jwks = JwksServer::start(json!({"keys": [signing_key().jwk()]})).await;
        let cognito = FakeCognito::start(jwks.issuer(), 3600).await;
        cognito.rotate.store(true, Ordering::SeqCst);
        cognito.invalidate_rotated.store(true, Ordering::SeqCst);
        let emulator = start_emulator(&jwks, CLIENT_ID).await;
        let key = std::env::temp_dir().join(format!(
            "relay-model-key-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::write(&key, format!("{:064x}\n", rand::random::<u128>())).unwrap();
        let stop = CancellationToken::new();
        let mut replicas = Vec::new();
        for _ in 0..REPLICAS {
            let path = Cuttable::start(redis.port).await;
            let (endpoint, url) = (cognito.endpoint(), path.url());
            let limit = LIMIT.to_string();
            let ttl = LEASE_TTL.as_secs().to_string();
            let config = relay_config(
                &emulator.http_endpoint(),
                &jwks,
                &[
                    "--cognito-endpoint",
                    &endpoint,
                    "--redis-url",
                    &url,
                    "--session-key-file",
                    key.to_str().unwrap(),
                    "--max-connections-per-user",
                    &limit,
                    "--cluster-lease-ttl",
                    &ttl,
                    "--refresh-rate-per-ip",
                    "0",
                    "--refresh-rate-per-user",
                    "0",
                ],
            );
            let state = RelayState::new(config, None);
            state.sessions().verifier().load_jwks().await.unwrap();
            tokio::spawn(state.sessions().clone().follow_replicas(stop.clone()));
            replicas.push(Replica { state, path });
        }
        let mut h = Harness {
            redis,
            cognito,
            replicas,
            stop,
            jar: Jar::new(),
            prev_jar: Jar::new(),
            sign_in: 0,
            sockets: Vec::new(),
            ended_by_end: HashSet::new(),
            hard_ended: HashSet::new(),
            signed_out: HashSet::new(),
            ended_by_cognito: HashSet::new(),
            end_everywhere: false,
            said: Vec::new(),
            partitioned: None,
            last_end_second: 0,
            secrets: HashSet::new(),
            _jwks: jwks,
            _emulator: emulator,
            _key: key,
        };
        h.wait_connected(Duration::from_secs(10)).await;
        h.new_sign_in().await;
        h
    }

    fn new_sign_in_jar(&mut self) {
        self.sign_in += 1;
        self.jar = jar(&self.cognito.sign_in(USERNAME));
        self.prev_jar = self.jar.clone();
        self.end_everywhere = false;
        self.remember_secrets();
    }

    async fn new_sign_in(&mut self) {
        // A sign-in in the second of an operator's end is covered by it.
        while now() <= self.last_end_second {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.cognito.fail_next.lock().unwrap().clear();
        self.new_sign_in_jar();
    }

    fn remember_secrets(&mut self) {
        for v in self.jar.values() {
            self.secrets.insert(v.clone());
        }
    }

    fn ended(&self) -> bool {
        self.ended_by_end.contains(&self.sign_in) || self.ended_by_cognito.contains(&self.sign_in)
    }

    fn connected(&self, r: &Replica) -> bool {
        r.state.readiness_notes().contains("redis: connected")
    }

    /// Waits until every replica reaches Redis again; whether they did.
    async fn wait_connected(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.replicas.iter().all(|r| self.connected(r)) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    fn headers(&self, stale: bool) -> HeaderMap {
        header_for(if stale { &self.prev_jar } else { &self.jar })
    }

    /// One handshake on replica `on`; whether it succeeded.
    async fn handshake(&mut self, on: usize, stale: bool, open: bool) -> Result<bool, String> {
        let shown = if stale { &self.prev_jar } else { &self.jar };
        let ended_before = self.end_everywhere
            && (self.hard_ended.contains(&self.sign_in)
                || self.signed_out.contains(&shown["refreshToken"]));
        let state = self.replicas[on].state.clone();
        let sessions = state.sessions();
        let Ok(id) = sessions.identify(&self.headers(stale)).await else {
            return Ok(false);
        };
        let lease = if open {
            match sessions.lease(id.sub()).await {
                Ok(lease) => lease,
                Err(()) => {
                    // The 429 carries a renewal the request took, as the
                    // gate's refusal does.
                    let set = sessions.undelivered_cookies(&id, true);
                    if !set.is_empty() {
                        self.prev_jar = self.jar.clone();
                        apply(&mut self.jar, &set);
                        self.remember_secrets();
                    }
                    return Ok(false);
                }
            }
        } else {
            None
        };
        let Ok(a) = sessions
            .complete(id, true, "10.0.0.1".parse().unwrap())
            .await
        else {
            return Ok(false);
        };
        if ended_before {
            return Err(format!(
                "a handshake of an ended sign-in succeeded on replica {on}"
            ));
        }
        if !a.set_cookies.is_empty() {
            self.prev_jar = self.jar.clone();
            apply(&mut self.jar, &a.set_cookies);
            self.remember_secrets();
        }
        if open && self.sockets.len() < 4 {
            if let Some(registration) = a.registration {
                self.sockets.push(Sock {
                    on,
                    token: TokenState::new(
                        UpstreamAuth::new(a.token.clone(), "h"),
                        a.claims.clone(),
                        a.session,
                        Duration::from_secs(60),
                    ),
                    registration,
                    _lease: lease,
                    sign_in: self.sign_in,
                    doomed: false,
                });
            }
        }
        Ok(true)
    }

    /// Runs one step. `Err` names a broken invariant that the step itself
    /// showed.
    async fn step(&mut self, op: &Op) -> Result<(), String> {
        match op {
            Op::Handshake { on, stale, open } => {
                self.handshake(*on, *stale, *open).await?;
            }
            Op::Storm => self.storm().await?,
            Op::Renew(n) => {
                if !self.sockets.is_empty() {
                    let i = n % self.sockets.len();
                    let sessions = self.replicas[self.sockets[i].on].state.sessions().clone();
                    if self.sockets[i].token.renew(&sessions).await.is_err() {
                        self.sockets.remove(i);
                    }
                }
            }
            Op::Close(n) => {
                if !self.sockets.is_empty() {
                    let i = n % self.sockets.len();
                    self.sockets.remove(i);
                }
            }
            Op::OperatorEnd { on } => {
                let sessions = self.replicas[*on].state.sessions().clone();
                let subject = Subject::Sub(SUB.into());
                sessions.end_subject(&subject).await;
                self.last_end_second = now();
                self.said.push(marker_key(Heard::Subject {
                    subject: subject.hash(),
                    at: 0,
                }));
                // Every sign-in until now: the model's current one and all
                // before it.
                for s in 1..=self.sign_in {
                    self.ended_by_end.insert(s);
                    self.hard_ended.insert(s);
                }
                for s in &mut self.sockets {
                    s.doomed = true;
                }
                self.end_everywhere = false;
            }
            Op::SignOut { on } => {
                let sessions = self.replicas[*on].state.sessions().clone();
                if let Some(app) = sessions.app_session(&self.headers(false)) {
                    sessions.signed_out(&app).await;
                    self.signed_out.insert(self.jar["refreshToken"].clone());
                    let sign_in = self.sign_in;
                    for s in self.sockets.iter_mut().filter(|s| s.sign_in == sign_in) {
                        s.doomed = true;
                    }
                    self.said.push(marker_key(Heard::Browser {
                        sub: [0; 32],
                        refresh: token_hash(&self.jar["refreshToken"]),
                        token: [0; 32],
                        lineage: None,
                    }));
                    self.ended_by_end.insert(self.sign_in);
                    self.end_everywhere = false;
                }
            }
            Op::Revoke => {
                self.cognito.revoke_user(USERNAME);
                for s in 1..=self.sign_in {
                    self.ended_by_cognito.insert(s);
                }
            }
            Op::SignInAgain => self.new_sign_in().await,
            Op::Rotation(on) => self.cognito.rotate.store(*on, Ordering::SeqCst),
            Op::ZeroGrace(on) => self.cognito.invalidate_rotated.store(*on, Ordering::SeqCst),
            Op::Age => {
                for jar in [&mut self.jar, &mut self.prev_jar] {
                    let old = jar["accessToken"].clone();
                    jar.insert("accessToken", support::replicas::expired_copy(&old));
                }
            }
            Op::Later => {
                for r in &self.replicas {
                    r.state.sessions().forget_recent_answers();
                }
                // (And the shared results in Redis, 5 s old by now.)
                self.del_shared_results().await;
            }
            Op::Partition(on) => {
                if self.partitioned.is_none() {
                    self.replicas[*on].path.cut();
                    self.partitioned = Some(*on);
                }
            }
            Op::Heal => {
                if let Some(on) = self.partitioned.take() {
                    self.replicas[on].path.heal();
                }
            }
            Op::RedisRestart => {
                self.redis.stop();
                self.redis.start_again().await;
                // The feeds notice, reconnect and resynchronise.
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Op::SlowRedis => {
                self.redis_cmd(&["CLIENT", "PAUSE", "300", "WRITE"]).await;
            }
        }
        Ok(())
    }

    /// Every replica renews the same cookies at once; while Redis is
    /// reachable, Cognito is asked at most once per refresh token.
    async fn storm(&mut self) -> Result<(), String> {
        let before = self.cognito.calls_per_token();
        let coordinated = self.partitioned.is_none() && self.wait_connected(Duration::ZERO).await;
        let headers = self.headers(false);
        let mut tasks = Vec::new();
        for r in &self.replicas {
            let (state, headers) = (r.state.clone(), headers.clone());
            tasks.push(tokio::spawn(async move {
                let sessions = state.sessions();
                let id = sessions.identify(&headers).await.ok()?;
                let a = sessions
                    .complete(id, true, "10.0.0.2".parse().unwrap())
                    .await
                    .ok()?;
                Some(a.set_cookies)
            }));
        }
        let mut answers = Vec::new();
        for t in tasks {
            if let Ok(Some(set)) = t.await {
                answers.push(set);
            }
        }
        if let Some(set) = answers.into_iter().find(|s| !s.is_empty()) {
            self.prev_jar = self.jar.clone();
            apply(&mut self.jar, &set);
            self.remember_secrets();
        }
        if coordinated {
            let after = self.cognito.calls_per_token();
            for (rt, n) in &after {
                let was = before.get(rt).copied().unwrap_or(0);
                if n - was > 1 {
                    return Err(format!(
                        "{} Cognito calls with one refresh token in a storm across replicas",
                        n - was
                    ));
                }
            }
        }
        Ok(())
    }

    async fn redis_cmd(&self, args: &[&str]) {
        let client = redis::Client::open(self.redis.url()).unwrap();
        if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
            let mut cmd = redis::cmd(args[0]);
            for a in &args[1..] {
                cmd.arg(*a);
            }
            let _: redis::RedisResult<redis::Value> = cmd.query_async(&mut conn).await;
        }
    }

    async fn del_shared_results(&self) {
        let client = redis::Client::open(self.redis.url()).unwrap();
        let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("appsync-relay:refresh:result:*")
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        for k in keys {
            let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(k).query_async(&mut conn).await;
        }
    }

    /// Invariants 1–3 (see the module docs).
    async fn check(&mut self) -> Result<(), String> {
        // 1. An end reaches every replica's sockets of that sign-in.
        let ended_sockets = |h: &Harness| {
            h.sockets
                .iter()
                .filter(|s| s.doomed && !s.registration.ended().is_cancelled())
                .count()
        };
        let pending_end = ended_sockets(self) > 0
            || (self.ended_by_end.contains(&self.sign_in) && !self.end_everywhere);
        if pending_end
            && self.partitioned.is_none()
            && self.wait_connected(Duration::from_secs(12)).await
        {
            // From the moment the end reached Redis (said again with
            // backoff, or written back by a resynchronisation, when it
            // could not at first).
            let deadline = Instant::now() + Duration::from_secs(12);
            while !self.said.is_empty() {
                let keys: HashSet<String> = self
                    .redis
                    .dump()
                    .await
                    .into_iter()
                    .map(|(k, _)| k)
                    .collect();
                self.said.retain(|k| !keys.contains(k));
                if Instant::now() > deadline {
                    return Err(format!("ends never reached Redis: {:?}", self.said));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let deadline = Instant::now() + Duration::from_secs(1);
            while ended_sockets(self) > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if ended_sockets(self) > 0 {
                let on: Vec<usize> = self
                    .sockets
                    .iter()
                    .filter(|s| s.doomed && !s.registration.ended().is_cancelled())
                    .map(|s| s.on)
                    .collect();
                return Err(format!(
                    "an end did not close the sign-in's sockets on replicas {on:?} within 1 s"
                ));
            }
            if self.ended_by_end.contains(&self.sign_in) && !self.end_everywhere {
                // Well within the second the invariant allows (the stream
                // carries an end to the others in ~2 ms), later handshakes
                // of the sign-in must be refused everywhere.
                tokio::time::sleep(Duration::from_millis(300)).await;
                self.end_everywhere = true;
            }
        }
        // 2. Nothing nobody ended is closed by an end.
        if self.cognito.any_live(USERNAME) {
            for s in &self.sockets {
                let ended_on_purpose = self.ended_by_end.contains(&s.sign_in)
                    || self.ended_by_cognito.contains(&s.sign_in);
                if s.registration.ended().is_cancelled() && !ended_on_purpose {
                    return Err(format!(
                        "a live sign-in's socket on replica {} was closed by an end nobody said",
                        s.on
                    ));
                }
            }
        }
        // 3. The newest live refresh token stays within the browser's reach.
        if !self.ended() && self.cognito.any_live(USERNAME) {
            let rt = &self.jar["refreshToken"];
            let waiting = self.replicas.iter().any(|r| {
                r.state
                    .sessions()
                    .waiting_refresh_token(rt)
                    .is_some_and(|w| self.cognito.is_live(&w))
            });
            if !self.cognito.is_live(rt) && !waiting {
                return Err("the newest live refresh token was lost".into());
            }
        }
        // Sockets an end closed leave the model (their relay task would).
        self.sockets
            .retain(|s| !s.registration.ended().is_cancelled());
        Ok(())
    }

    /// Invariant 5, once at the end of a case.
    async fn check_at_rest(&mut self) -> Result<(), String> {
        if let Some(on) = self.partitioned.take() {
            self.replicas[on].path.heal();
        }
        if !self.wait_connected(Duration::from_secs(12)).await {
            return Err("a replica never reached Redis again".into());
        }
        tokio::time::sleep(LEASE_TTL + Duration::from_millis(500)).await;
        let live = self.sockets.len();
        for (i, r) in self.replicas.iter().enumerate() {
            let admitted = r.state.sessions().lease(SUB).await;
            if live >= LIMIT && admitted.is_ok() {
                return Err(format!(
                    "{live} sockets open, yet replica {i} admitted one more (limit {LIMIT})"
                ));
            }
        }
        let dump = self.redis.dump().await;
        for (k, v) in &dump {
            for needle in self
                .secrets
                .iter()
                .map(String::as_str)
                .chain([SUB, USERNAME])
            {
                if k.contains(needle) || v.contains(needle) {
                    return Err(format!("Redis holds a secret in the clear under {k}"));
                }
            }
        }
        Ok(())
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.cancel();
        for r in &self.replicas {
            r.state.shutdown().cancel();
        }
    }
}

#[test]
fn the_session_path_holds_across_replicas() {
    let cases: u32 = std::env::var("REPLICAS_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let seed: u64 = std::env::var("REPLICAS_MODEL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x2e91_1ca5);
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config {
        cases,
        failure_persistence: None,
        // Each case starts Redis and three replicas: shrinking is costly,
        // and the failing sequence is printed in full anyway.
        max_shrink_iters: 16,
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(
        config,
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let result = runner.run(&proptest::collection::vec(op(), 1..24), |ops| {
        runtime.block_on(async {
            let mut h = Harness::start().await;
            for (i, op) in ops.iter().enumerate() {
                let ctx = |e: String| format!("{e}, after {op:?}, steps {:?}", &ops[..=i]);
                h.step(op).await.map_err(|e| TestCaseError::fail(ctx(e)))?;
                h.check().await.map_err(|e| TestCaseError::fail(ctx(e)))?;
            }
            h.check_at_rest()
                .await
                .map_err(|e| TestCaseError::fail(format!("{e}, at rest after {ops:?}")))?;
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    eprintln!(
        "replicas model: {cases} cases, seed {seed}: invariants held ({:?})",
        started.elapsed()
    );
}

/// Replica B rotated rt0 → rt1 for its socket; replica A, reached by the
/// browser holding rt1, rotated rt1 → rt2. B's socket then renews with rt1
/// and Cognito (zero grace period) refuses it: that ends B's socket only —
/// the cluster's newest is rt2 — not the sign-in, and not A's healthy
/// socket. Before the fix (each replica's own view of "the newest"): B
/// ended the sign-in and said so, and A's socket was closed.
#[tokio::test(flavor = "multi_thread")]
async fn a_stale_view_of_the_newest_refresh_token_ends_nothing_elsewhere() {
    let mut h = Harness::start().await;
    h.step(&Op::Age).await.unwrap();
    assert!(h.handshake(1, false, true).await.unwrap(), "B: rt0 -> rt1");
    h.step(&Op::Age).await.unwrap();
    assert!(h.handshake(0, false, true).await.unwrap(), "A: rt1 -> rt2");
    let (on_b, on_a) = (&h.sockets[0], &h.sockets[1]);
    assert_eq!((on_b.on, on_a.on), (1, 0));
    // The answers are filed in Redis in the background. Seconds pass: A's
    // answer for rt1, shared for 5 s, is gone.
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.step(&Op::Later).await.unwrap();
    let sessions_b = h.replicas[1].state.sessions().clone();
    assert!(
        h.sockets[0].token.renew(&sessions_b).await.is_err(),
        "B's socket renews with rt1, which A rotated away"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !h.sockets[1].registration.ended().is_cancelled(),
        "A's healthy socket was closed because B's view was stale"
    );
    let sessions_a = h.replicas[0].state.sessions().clone();
    assert!(
        h.sockets[1].token.renew(&sessions_a).await.unwrap(),
        "A's socket renews with rt2: the sign-in lives"
    );
}

/// An answer reused from another replica is followed before it is handed
/// out. A's socket rotated rt0 → rt1 → rt2 in the last seconds (both
/// answers shared in Redis); the browser, still holding rt0, reaches B,
/// which reuses the answer shared for rt0 — whose refresh token, rt1, is
/// already dead (zero grace period). B must hand out rt2. Before the fix:
/// B handed out rt1, and the browser's session was lost.
#[tokio::test(flavor = "multi_thread")]
async fn a_reused_answer_is_followed_to_the_newest_refresh_token() {
    let mut h = Harness::start().await;
    assert!(
        h.handshake(0, false, true).await.unwrap(),
        "A: a socket on rt0"
    );
    let sessions_a = h.replicas[0].state.sessions().clone();
    assert!(
        h.sockets[0].token.renew(&sessions_a).await.unwrap(),
        "rt0 -> rt1"
    );
    assert!(
        h.sockets[0].token.renew(&sessions_a).await.unwrap(),
        "rt1 -> rt2"
    );
    let rt0 = h.jar["refreshToken"].clone();
    h.step(&Op::Age).await.unwrap();
    assert!(h.handshake(1, false, false).await.unwrap(), "B renews rt0");
    let handed = &h.jar["refreshToken"];
    assert_ne!(handed, &rt0);
    assert!(
        h.cognito.is_live(handed),
        "B handed out a refresh token A had already rotated away"
    );
    assert_eq!(h.cognito.calls_per_token().get(&rt0), Some(&1));
}

/// Cookies the app signed out buy nothing, not even by following their
/// refresh token's rotation chain to the live token a socket of the
/// sign-in rotated it into. Found by the model (seed 7): a socket on C
/// rotated rt0 → rt1, the app signed the browser out through B, and the
/// signed-out cookies (rt0) on C followed the chain to rt1, which Cognito
/// still accepted: the signed-out session came back. Before the fix: C
/// answered with fresh cookies.
#[tokio::test(flavor = "multi_thread")]
async fn signed_out_cookies_do_not_follow_the_chain_to_a_live_token() {
    let mut h = Harness::start().await;
    assert!(
        h.handshake(2, false, true).await.unwrap(),
        "C: a socket on rt0"
    );
    let sessions_c = h.replicas[2].state.sessions().clone();
    assert!(
        h.sockets[0].token.renew(&sessions_c).await.unwrap(),
        "rt0 -> rt1"
    );
    h.step(&Op::SignOut { on: 1 }).await.unwrap();
    h.check().await.unwrap();
    h.step(&Op::Age).await.unwrap();
    let headers = h.headers(false);
    let refused = match sessions_c.identify(&headers).await {
        Err(_) => true,
        Ok(id) => sessions_c
            .complete(id, true, "10.0.0.3".parse().unwrap())
            .await
            .is_err(),
    };
    assert!(refused, "signed-out cookies renewed through the chain");
}

/// A sign-out said by a replica cut off from Redis (which therefore could
/// not tell whether the refresh token was the sign-in's) ends the whole
/// sign-in everywhere once it is heard: a replica that knows the token
/// judges it again and says so. Found by the model (seed 7): meanwhile a
/// racing tab renewed on A (rt0 → rt1) and opened a socket on C with rt1,
/// and Redis restarted empty (the shared chain with it); after healing
/// only A, which remembered rt0, ended the sign-in. Before the fix: C's
/// socket stayed open.
#[tokio::test(flavor = "multi_thread")]
async fn a_sign_out_said_while_cut_off_ends_the_sign_in_everywhere_once_heard() {
    let mut h = Harness::start().await;
    h.step(&Op::Partition(1)).await.unwrap();
    let signed_out = h.jar.clone();
    h.step(&Op::SignOut { on: 1 }).await.unwrap();
    h.step(&Op::Age).await.unwrap();
    assert!(
        h.handshake(0, false, false).await.unwrap(),
        "A has not heard yet: it renews rt0 -> rt1"
    );
    assert!(
        h.handshake(2, false, true).await.unwrap(),
        "C: a socket on rt1"
    );
    // Redis restarts empty: the shared chain is gone, only A remembers
    // that rt0 was the sign-in's.
    h.step(&Op::RedisRestart).await.unwrap();
    h.step(&Op::Heal).await.unwrap();
    h.check().await.unwrap();
    // C's socket (rt1, opened before C heard anything) closes.
    let deadline = Instant::now() + Duration::from_secs(1);
    while h
        .sockets
        .first()
        .is_some_and(|s| !s.registration.ended().is_cancelled())
    {
        assert!(
            Instant::now() < deadline,
            "C's socket of the signed-out sign-in stayed open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.jar = signed_out;
    for on in 0..REPLICAS {
        assert_eq!(
            h.handshake(on, false, false).await,
            Ok(false),
            "replica {on} let the signed-out cookies in"
        );
    }
}
