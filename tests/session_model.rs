//! A stateful property test of the session lifecycle: random sequences of
//! handshakes (from an up-to-date tab or a stale one), sockets renewing in
//! place, rotation with and without a grace period, revocation, sign-in
//! again, transient and fatal Cognito errors, a hostile Cognito and the
//! app's own Amplify refreshing behind the relay's back, run
//! against the relay's real session code (`authenticate::identify` /
//! `complete`, `relay::token::TokenState::renew`, the pending store, the
//! refresher) and the fake Cognito as the model of truth.
//!
//! Invariants, checked after every step:
//! 1. once the relay has seen a refusal when Cognito holds no live refresh
//!    token for the user any more, it issues no tokens for the session (no
//!    `Set-Cookie` until the user signs in again);
//! 2. while Cognito still holds a live refresh token for the session (and
//!    nothing ended it), the browser can get one: the refresh token in its
//!    cookie jar is live, or a renewal waiting for it carries a live one;
//!    and the relay has not marked the sign-in ended unless the jar's own
//!    token is live (then its next request asks Cognito, which revives it);
//! 3. an open socket's token always belongs to the user it opened for.
//!
//! `cargo test --test session_model` runs a fixed seed and 48 cases (CI);
//! `SESSION_MODEL_CASES=2000 SESSION_MODEL_SEED=<n> cargo test --release
//! --test session_model -- --nocapture` for a longer run.

mod support;

use appsync_relay::relay::token::TokenState;
use appsync_relay::rewrite::UpstreamAuth;
use appsync_relay::state::RelayState;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use support::fake_cognito::FakeCognito;
use support::jar::{apply, header_for, jar, Jar};
use support::*;

#[derive(Debug, Clone)]
enum Op {
    /// A request through the relay; `stale` uses the cookies the browser
    /// had before its last `Set-Cookie` (a tab racing another).
    Handshake {
        stale: bool,
        open_socket: bool,
    },
    /// Socket `n` (modulo the open ones) renews in place now.
    Renew(usize),
    Close(usize),
    Rotation(bool),
    ZeroGrace(bool),
    /// Tokens issued from now on are already due for renewal.
    Due(bool),
    RevokeAll,
    SignInAgain,
    /// The next Cognito call fails: transient (throttling) or fatal.
    FailNext {
        transient: bool,
    },
    /// The next refresh answers with another user's tokens.
    Hostile,
    /// Seconds pass: answers kept for reuse by the refresher expire.
    Later,
    /// The app's own server-side Amplify refreshes the browser's session
    /// behind the relay's back (rotating it) and writes the new cookies.
    RefreshOutside,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (any::<bool>(), any::<bool>()).prop_map(|(stale, open_socket)| Op::Handshake { stale, open_socket }),
        6 => (0usize..4).prop_map(Op::Renew),
        1 => (0usize..4).prop_map(Op::Close),
        1 => any::<bool>().prop_map(Op::Rotation),
        1 => any::<bool>().prop_map(Op::ZeroGrace),
        2 => any::<bool>().prop_map(Op::Due),
        1 => Just(Op::RevokeAll),
        1 => Just(Op::SignInAgain),
        1 => any::<bool>().prop_map(|transient| Op::FailNext { transient }),
        1 => Just(Op::Hostile),
        4 => Just(Op::Later),
        1 => Just(Op::RefreshOutside),
    ]
}

struct Harness {
    state: Arc<RelayState>,
    cognito: FakeCognito,
    jar: Jar,
    prev_jar: Jar,
    sockets: Vec<TokenState>,
    /// Cognito no longer holds a live token for this session on purpose
    /// (revoked, a fatal error, a hostile answer): invariant 2 is off.
    ended: bool,
    /// The relay saw this session's refresh refused: invariant 1 is on.
    relay_knows: bool,
    _jwks: JwksServer,
}

/// The session identity of the access token in the jar.
fn jar_proof(jar: &Jar) -> appsync_relay::session::SessionProof {
    use base64::Engine as _;
    let payload = jar["accessToken"].split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let claims: appsync_relay::verify::Claims = serde_json::from_slice(&bytes).unwrap();
    appsync_relay::session::SessionProof::of(&claims)
}

impl Harness {
    async fn start() -> Harness {
        let jwks = JwksServer::start(json!({"keys": [signing_key().jwk()]})).await;
        let cognito = FakeCognito::start(jwks.issuer(), 3600).await;
        // The hostile default: rotation with no grace period.
        cognito.rotate.store(true, Ordering::SeqCst);
        cognito.invalidate_rotated.store(true, Ordering::SeqCst);
        // Tokens already due: most requests renew.
        cognito.issued_ago.store(3550, Ordering::SeqCst);
        let endpoint = cognito.endpoint();
        let config = relay_config(
            "http://127.0.0.1:9/event",
            &jwks,
            &[
                "--cognito-endpoint",
                &endpoint,
                "--refresh-rate-per-ip",
                "0",
                "--refresh-rate-per-user",
                "0",
            ],
        );
        let state = RelayState::new(config, None);
        state.sessions().verifier().load_jwks().await.unwrap();
        let mut h = Harness {
            state,
            cognito,
            jar: Jar::new(),
            prev_jar: Jar::new(),
            sockets: Vec::new(),
            ended: false,
            relay_knows: false,
            _jwks: jwks,
        };
        h.sign_in();
        h
    }

    fn sign_in(&mut self) {
        // Injected failures were meant for the session that ends here.
        self.cognito.fail_next.lock().unwrap().clear();
        self.jar = jar(&self.cognito.sign_in(USERNAME));
        self.prev_jar = self.jar.clone();
        self.sockets.clear();
        self.ended = false;
        self.relay_knows = false;
    }

    /// Runs one step; returns whether it wrote cookies.
    async fn step(&mut self, op: &Op) -> bool {
        match op {
            Op::Handshake { stale, open_socket } => {
                let cookies = if *stale { &self.prev_jar } else { &self.jar };
                let headers = header_for(cookies);
                let Ok(id) = self.state.sessions().identify(&headers).await else {
                    return false;
                };
                let ip = "10.0.0.1".parse().unwrap();
                match self.state.sessions().complete(id, true, ip).await {
                    Ok(a) => {
                        let wrote = !a.set_cookies.is_empty();
                        if wrote {
                            self.prev_jar = self.jar.clone();
                            apply(&mut self.jar, &a.set_cookies);
                        }
                        if *open_socket && self.sockets.len() < 4 {
                            self.sockets.push(TokenState::new(
                                UpstreamAuth::new(a.token.clone(), "h"),
                                a.claims.clone(),
                                a.session,
                                Duration::from_secs(60),
                            ));
                        }
                        wrote
                    }
                    Err(e) => {
                        // A refusal of a token Cognito rotated away (the app
                        // refreshed behind the relay) says nothing; one made
                        // when no live token is left does.
                        if e.reason() == "session_ended"
                            && !*stale
                            && !self.cognito.any_live(USERNAME)
                        {
                            self.relay_knows = true;
                        }
                        false
                    }
                }
            }
            Op::Renew(n) => {
                if self.sockets.is_empty() {
                    return false;
                }
                let i = n % self.sockets.len();
                if let Err(ending) = self.sockets[i].renew(self.state.sessions()).await {
                    let reason = format!("{ending:?}");
                    if reason.contains("refresh_rejected") && !self.cognito.any_live(USERNAME) {
                        self.relay_knows = true;
                    }
                    self.sockets.remove(i);
                }
                false
            }
            Op::Close(n) => {
                if !self.sockets.is_empty() {
                    let i = n % self.sockets.len();
                    self.sockets.remove(i);
                }
                false
            }
            Op::Rotation(on) => {
                self.cognito.rotate.store(*on, Ordering::SeqCst);
                false
            }
            Op::ZeroGrace(on) => {
                self.cognito.invalidate_rotated.store(*on, Ordering::SeqCst);
                false
            }
            Op::Due(on) => {
                self.cognito
                    .issued_ago
                    .store(if *on { 3550 } else { 0 }, Ordering::SeqCst);
                false
            }
            Op::RevokeAll => {
                self.cognito.revoke_user(USERNAME);
                self.ended = true;
                false
            }
            Op::SignInAgain => {
                self.sign_in();
                false
            }
            Op::FailNext { transient } => {
                let kind = if *transient {
                    "TooManyRequestsException"
                } else {
                    // A refusal for a live token ends the session by design.
                    self.ended = true;
                    "NotAuthorizedException"
                };
                self.cognito
                    .fail_next
                    .lock()
                    .unwrap()
                    .push_back((400, kind.to_string()));
                false
            }
            Op::Later => {
                self.state.sessions().forget_recent_answers();
                false
            }
            Op::RefreshOutside => {
                let rt = self.jar["refreshToken"].clone();
                // A hostile answer is meant for the relay's next call.
                let hostile = self.cognito.answer_as_sub.lock().unwrap().take();
                let answer = self.cognito.refresh_outside(&rt).await;
                *self.cognito.answer_as_sub.lock().unwrap() = hostile;
                if let Some((access, id, refresh)) = answer {
                    self.prev_jar = self.jar.clone();
                    self.jar.insert("accessToken", access);
                    self.jar.insert("idToken", id);
                    self.jar.insert("refreshToken", refresh);
                }
                false
            }
            Op::Hostile => {
                *self.cognito.answer_as_sub.lock().unwrap() = Some("someone-else".into());
                // Only until the next call answers.
                self.ended = true;
                false
            }
        }
    }

    fn check(&self, op: &Op, wrote: bool, history: &[Op]) -> Result<(), String> {
        let ctx = || format!("after {op:?}, steps {history:?}");
        if self.relay_knows && wrote {
            return Err(format!("tokens issued for a refused session {}", ctx()));
        }
        if !self.ended && self.cognito.any_live(USERNAME) {
            let rt = &self.jar["refreshToken"];
            let waiting = self.state.sessions().waiting_refresh_token(rt);
            let recoverable = self.cognito.is_live(rt)
                || waiting.as_deref().is_some_and(|w| self.cognito.is_live(w));
            if !recoverable {
                return Err(format!("the newest live refresh token was lost {}", ctx()));
            }
            // A sign-in marked ended is not lost while the browser's own
            // refresh token is alive: its next request asks Cognito, which
            // revives it. Otherwise the marker would lose it.
            if self.state.sessions().sign_in_ended(&jar_proof(&self.jar))
                && !self.cognito.is_live(rt)
            {
                return Err(format!("a live session was ended {}", ctx()));
            }
        }
        for s in &self.sockets {
            if s.token_sub().as_deref() != Some(SUB) {
                return Err(format!("a socket changed identity {}", ctx()));
            }
        }
        Ok(())
    }
}

#[test]
fn the_session_only_moves_forward() {
    let cases: u32 = std::env::var("SESSION_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48);
    let seed: u64 = std::env::var("SESSION_MODEL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5e55_10e1);
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config {
        cases,
        failure_persistence: None,
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
    let result = runner.run(&proptest::collection::vec(op(), 1..28), |ops| {
        runtime.block_on(async {
            let mut h = Harness::start().await;
            for (i, op) in ops.iter().enumerate() {
                // A hostile answer lasts one call.
                let wrote = h.step(op).await;
                if !matches!(op, Op::Hostile) {
                    *h.cognito.answer_as_sub.lock().unwrap() = None;
                }
                h.check(op, wrote, &ops[..=i])
                    .map_err(TestCaseError::fail)?;
            }
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    eprintln!("session model: {cases} cases, seed {seed}: invariants held");
}
