//! Renewing a session with Cognito, once per refresh token however many
//! connections ask at the same moment.
//!
//! Two Cognito APIs are supported (docs/PROTOCOL.md, "Cognito"):
//! - `GetTokensFromRefreshToken` (current Amplify): may rotate, returning a
//!   new refresh token; the old one dies after a grace period.
//! - `InitiateAuth` with `REFRESH_TOKEN_AUTH` (older clients): never rotates.
//!
//! **Single flight.** A rotated refresh token used twice can end the
//! session, so concurrent callers with the same refresh token share one
//! call, however long it takes, and its result is remembered for
//! [`RESULT_TTL`] after it arrives so a reconnect storm right after it
//! reuses the answer instead of calling again. Every map is keyed by
//! SHA-256 of the refresh token, never the token, and is bounded.
//!
//! **Lineage** (`lineage`): which sign-in each refresh token belongs to
//! and which token replaced it, so siblings renew with the newest and a
//! refusal can tell the newest token of a sign-in from a stale copy.
//!
//! Errors are split by what the caller should do: [`RefreshError::Rejected`]
//! means the session is over (revoked, expired, user disabled or gone: the
//! exception types Cognito documents for those, and nothing else);
//! [`RefreshError::Unavailable`] means try again later (throttling, quota,
//! Lambda trigger failures, 5xx, anything unrecognised). A rejected refresh
//! token is remembered (by hash) so a replay costs no Cognito call.
//!
//! Single flight never turns itself off: when the table of flights is full
//! of calls in progress, a new caller is told to retry (`Unavailable`)
//! rather than sent to Cognito uncoordinated. Nothing here logs a
//! token; Cognito's error *messages* are not logged either (they can echo
//! input), only its error type.

mod cognito;
mod lineage;

pub use cognito::{secret_hash, RefreshApi, RefreshConfig, RefreshError};
pub use lineage::{Holder, HANDOVER_GRACE};

use crate::bounded::make_room;
use crate::clock::{now_secs, refresh_due_at};
use crate::http_client::HttpClient;
use crate::session::{SessionProof, TokenSet};
use crate::verify::{token_hash, unverified_claims, unverified_times};
use cognito::Cognito;
use dashmap::DashMap;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use lineage::Lineages;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a finished refresh is reused for the same refresh token, from
/// the moment Cognito answered: long enough for the other tabs of a
/// reconnect storm, racing the first response's `Set-Cookie`, to get the
/// same answer instead of calling with a token Cognito just rotated out;
/// short, because for that long the old refresh token (with a genuine token
/// of the same user) still obtains the answer. A call still in flight is
/// joined however long it takes (it is bounded by the Cognito timeout).
pub const RESULT_TTL: Duration = Duration::from_secs(5);
/// How long a rejected refresh token is remembered. It never becomes valid
/// again; the bound only keeps the table small.
const REJECTED_TTL: Duration = Duration::from_secs(24 * 3600);

/// What one refresh produced, shared by every caller of the same flight.
pub type RefreshOutcome = Result<Arc<TokenSet>, RefreshError>;

/// A finished flight: its outcome, the sign-in its tokens belong to, and
/// when Cognito gave it.
#[derive(Clone)]
struct Answer {
    outcome: RefreshOutcome,
    lineage: Option<String>,
    at: Instant,
}

/// One Cognito call in flight or finished. It runs as its own task, so a
/// caller that goes away (a browser hanging up mid-handshake) neither
/// cancels it nor loses its answer: the rotation is filed either way, and
/// the next caller gets it instead of calling again with a dead token.
type Flight = Shared<BoxFuture<'static, Answer>>;

struct Slot {
    flight: Flight,
}

/// A refresh coordinated beyond this process: the replicas' single
/// flight through Redis (`cluster`). This module only knows it as this.
pub trait SharedRefresh: Send + Sync {
    /// Runs `call` — the Cognito call for the refresh token hashed as
    /// `key` — at most once across the replicas, or hands back the outcome
    /// another replica's call produced. Runs `call` itself whenever it
    /// cannot coordinate (Redis down): never worse than one process alone.
    fn run(
        &self,
        key: [u8; 32],
        call: BoxFuture<'static, CallOutcome>,
    ) -> BoxFuture<'static, CallOutcome>;

    /// The outcome another replica's call for the refresh token hashed as
    /// `key` produced, or is producing (waited for), if any — never a call.
    fn follow(&self, key: [u8; 32]) -> BoxFuture<'static, Option<CallOutcome>>;
}

/// One Cognito call's outcome, before it is shared inside this process.
pub type CallOutcome = Result<TokenSet, RefreshError>;

/// The rotation chain shared beyond this process (`cluster`, by hashes
/// only): every answer is filed there too, so that which refresh token is
/// a sign-in's newest is the replicas' common answer.
pub trait SharedChain: Send + Sync {
    /// Cognito answered a refresh of the token hashed as `used` for the
    /// sign-in hashed as `lineage`, rotating it into `next` when it did.
    fn answered(&self, lineage: [u8; 32], used: [u8; 32], next: Option<[u8; 32]>);
}

pub struct Refresher {
    cognito: Arc<Cognito>,
    /// The replicas' single flight, with `--redis-url` and `--session-key-file`.
    shared: Option<Arc<dyn SharedRefresh>>,
    /// The replicas' rotation chains, with `--redis-url`.
    chain: Option<Arc<dyn SharedChain>>,
    slots: DashMap<[u8; 32], Slot>,
    /// Refresh tokens Cognito refused, by hash, with when.
    rejected: Arc<DashMap<[u8; 32], Instant>>,
    /// Which sign-in each refresh token belongs to and what replaced it.
    lineages: Arc<Lineages>,
}

impl fmt::Debug for Refresher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Refresher")
            .field("cfg", &self.cognito.cfg)
            .finish_non_exhaustive()
    }
}

impl Refresher {
    pub fn new(cfg: RefreshConfig, http: HttpClient) -> Arc<Refresher> {
        Refresher::with_shared(cfg, http, None, None)
    }

    /// A refresher whose flights are also single across replicas, and
    /// whose answers are filed in the replicas' rotation chains.
    pub fn with_shared(
        cfg: RefreshConfig,
        http: HttpClient,
        shared: Option<Arc<dyn SharedRefresh>>,
        chain: Option<Arc<dyn SharedChain>>,
    ) -> Arc<Refresher> {
        Arc::new(Refresher {
            shared,
            chain,
            lineages: Arc::new(Lineages::new(cfg.capacity)),
            cognito: Arc::new(Cognito { cfg, http }),
            slots: DashMap::new(),
            rejected: Arc::new(DashMap::new()),
        })
    }

    pub fn config(&self) -> &RefreshConfig {
        &self.cognito.cfg
    }

    /// New tokens for `refresh_token` (whose user is `username`, needed for
    /// `SECRET_HASH`). Concurrent and recent callers share one Cognito call.
    pub async fn refresh(&self, refresh_token: &str, username: &str) -> RefreshOutcome {
        let key = token_hash(refresh_token);
        if self.is_rejected(&key) {
            return Err(RefreshError::Rejected("remembered".into()));
        }
        let flight = self.slot(key, refresh_token, username)?;
        let answer = flight.clone().await;
        if let Err(RefreshError::Unavailable(_)) = &answer.outcome {
            // A transient failure must not be remembered: the next caller retries.
            self.slots
                .remove_if(&key, |_, slot| slot.flight.ptr_eq(&flight));
        }
        answer.outcome
    }

    /// Starts the Cognito call for `refresh_token` as its own task, which
    /// also files what the answer teaches (a refusal, a rotation) exactly
    /// once, whoever is still waiting.
    fn start_flight(&self, key: [u8; 32], refresh_token: &str, username: &str) -> Flight {
        let cognito = self.cognito.clone();
        let rejected = self.rejected.clone();
        let lineages = self.lineages.clone();
        let shared = self.shared.clone();
        let chain = self.chain.clone();
        let (refresh_token, username) = (refresh_token.to_string(), username.to_string());
        let task = tokio::spawn(async move {
            let call = {
                let (cognito, rt, user) = (cognito.clone(), refresh_token.clone(), username);
                async move { cognito.call(&rt, &user).await }.boxed()
            };
            let outcome = match shared {
                Some(shared) => shared.run(key, call).await,
                None => call.await,
            }
            .map(Arc::new);
            let lineage = outcome.as_ref().ok().and_then(|t| answer_lineage(t));
            match (&outcome, &lineage) {
                (Err(RefreshError::Rejected(_)), _) => {
                    // A forgotten token costs one Cognito call to be refused again.
                    make_room(&rejected, cognito.cfg.capacity, REJECTED_TTL, |at| *at);
                    rejected.insert(key, Instant::now());
                }
                (Ok(tokens), Some(lineage)) => {
                    let rotated = tokens.refresh_token.as_deref();
                    lineages.answered(&refresh_token, rotated, lineage);
                    if let Some(chain) = &chain {
                        chain.answered(token_hash(lineage), key, rotated.map(token_hash));
                    }
                }
                _ => {}
            }
            Answer {
                outcome,
                lineage,
                at: Instant::now(),
            }
        });
        async move {
            task.await.unwrap_or_else(|_| Answer {
                outcome: Err(RefreshError::Unavailable("refresh task failed".into())),
                lineage: None,
                at: Instant::now(),
            })
        }
        .boxed()
        .shared()
    }

    /// The answer to a refresh with `refresh_token` that someone already
    /// asked for, here (in flight, or answered in the last seconds) or on
    /// another replica (its shared result, or its call in progress) — never
    /// a Cognito call of its own. A renewal whose answer was reused follows
    /// it: the refresh token in that answer may have been rotated since.
    pub async fn follow(&self, refresh_token: &str) -> Option<RefreshOutcome> {
        let key = token_hash(refresh_token);
        let local = self
            .slots
            .get(&key)
            .filter(|slot| self.usable(slot))
            .map(|slot| slot.flight.clone());
        if let Some(flight) = local {
            return Some(flight.await.outcome);
        }
        let outcome = self.shared.as_ref()?.follow(key).await?.map(Arc::new);
        if let Ok(tokens) = &outcome {
            // What another replica rotated, this one knows from now on.
            if let Some(lineage) = answer_lineage(tokens) {
                self.lineages
                    .answered(refresh_token, tokens.refresh_token.as_deref(), &lineage);
            }
        }
        Some(outcome)
    }

    /// The newest refresh token the relay has seen replace `refresh_token`
    /// by rotation within the sign-in `lineage` (itself when none did), as
    /// far as `holder` may follow ([`Holder`]). Several sockets and tabs of
    /// one browser share a refresh token; once one of them rotated it, the
    /// others must renew with the replacement — with a zero grace period
    /// the old one is already dead, and using it would end a live session.
    /// Callers have proven the sign-in with a genuine token of it; Cognito
    /// still decides whether the newest is alive.
    pub fn newest(&self, refresh_token: &str, lineage: &str, holder: Holder) -> String {
        let mut chain = self.chain(refresh_token, lineage, holder);
        chain.pop().unwrap_or_else(|| refresh_token.to_string())
    }

    /// `refresh_token` and every refresh token that replaced it in turn,
    /// oldest first (see [`Refresher::newest`]).
    pub fn chain(&self, refresh_token: &str, lineage: &str, holder: Holder) -> Vec<String> {
        self.lineages.chain(refresh_token, lineage, holder)
    }

    /// A browser request showed `refresh_token` for the sign-in `lineage`:
    /// proof it received it (see [`Holder::Browser`]).
    pub fn shown(&self, refresh_token: &str, lineage: &str) {
        self.lineages.shown(refresh_token, lineage);
    }

    /// Whether showing `refresh_token` could prove receipt of a rotation.
    pub fn replaced_something(&self, refresh_token: &str) -> bool {
        self.lineages.replaced_something(refresh_token)
    }

    /// Whether the relay saw Cognito issue or accept `refresh_token` for
    /// the sign-in `lineage`.
    pub fn belongs(&self, refresh_token: &str, lineage: &str) -> bool {
        self.lineages.belongs(refresh_token, lineage)
    }

    /// [`Refresher::belongs`] by hashes (a sign-out another replica said).
    pub fn belongs_hashed(&self, refresh: &[u8; 32], lineage: &[u8; 32]) -> bool {
        self.lineages.belongs_hashed(refresh, lineage)
    }

    /// Whether `refresh_token` is the newest the relay knows for the sign-in
    /// `lineage` (Cognito issued or accepted it for that sign-in, and
    /// nothing replaced it): only then does its refusal end the sign-in.
    pub fn is_newest(&self, refresh_token: &str, lineage: &str) -> bool {
        self.lineages.is_newest(refresh_token, lineage)
    }

    /// Whether a call for this refresh token is in flight or its result is
    /// still reused: a caller would join it, not call Cognito.
    pub fn has_flight(&self, refresh_token: &str) -> bool {
        self.slots
            .get(&token_hash(refresh_token))
            .is_some_and(|slot| self.usable(&slot))
    }

    /// Forgets every remembered answer that issued tokens to the sign-in
    /// `lineage` (an answer reused for the next seconds would revive it).
    /// Its rotation chain stays: it leads to the refused token, so sibling
    /// sockets end without asking Cognito again.
    pub fn forget_answers(&self, lineage: &str) {
        self.slots.retain(|_, slot| match slot.flight.peek() {
            Some(answer) => answer.lineage.as_deref() != Some(lineage),
            None => true,
        });
    }

    /// [`Refresher::forget_answers`] for a sign-in known by the hash of its
    /// lineage (ended on another replica).
    pub fn forget_answers_hashed(&self, lineage: &[u8; 32]) {
        self.slots.retain(|_, slot| match slot.flight.peek() {
            Some(answer) => answer.lineage.as_deref().map(token_hash).as_ref() != Some(lineage),
            None => true,
        });
    }

    /// Forgets every remembered answer that issued tokens to a sign-in
    /// answering to the subject hashed as `subject` made at or before `at`
    /// (an operator ended them).
    pub fn forget_answers_of_subject(&self, subject: &[u8; 32], at: u64) {
        use crate::session::{signed_in_at, subjects_of};
        self.slots.retain(|_, slot| match slot.flight.peek() {
            Some(Answer {
                outcome: Ok(tokens),
                ..
            }) => match unverified_claims(&tokens.access_token) {
                Some(c) => !(signed_in_at(&c) <= at && subjects_of(&c).contains(subject)),
                None => true,
            },
            _ => true,
        });
    }

    /// Drops every finished answer kept for reuse, as [`RESULT_TTL`] passing
    /// would: for the session model test, which cannot wait seconds per step.
    #[doc(hidden)]
    pub fn forget_recent_answers(&self) {
        self.slots.retain(|_, slot| slot.flight.peek().is_none());
    }

    /// The browser holding `refresh_token` signed out: from now on it is
    /// refused as if Cognito had refused it (a sign-out revokes it there
    /// too, but a replay must not cost a Cognito call to find out).
    pub fn retire(&self, refresh_token: &str) {
        self.retire_hashed(token_hash(refresh_token));
    }

    /// [`Refresher::retire`] by the token's hash (a sign-out seen on another
    /// replica).
    pub fn retire_hashed(&self, key: [u8; 32]) {
        make_room(
            &self.rejected,
            self.cognito.cfg.capacity,
            REJECTED_TTL,
            |at| *at,
        );
        self.rejected.insert(key, Instant::now());
        // An answer kept for reuse would still hand out its tokens.
        self.slots.remove(&key);
    }

    /// Whether Cognito already refused this refresh token.
    pub fn is_rejected(&self, key: &[u8; 32]) -> bool {
        self.rejected
            .get(key)
            .is_some_and(|at| at.elapsed() < REJECTED_TTL)
    }

    /// Whether a remembered slot may still be handed out.
    fn usable(&self, slot: &Slot) -> bool {
        let Some(answer) = slot.flight.peek() else {
            // In flight: join it, however long Cognito takes.
            return true;
        };
        if answer.at.elapsed() >= RESULT_TTL {
            return false;
        }
        match &answer.outcome {
            Err(_) => true,
            Ok(tokens) => match unverified_times(&tokens.access_token) {
                Some((exp, iat)) => {
                    now_secs() < refresh_due_at(exp, iat, self.cognito.cfg.refresh_before)
                }
                None => false,
            },
        }
    }

    fn slot(
        &self,
        key: [u8; 32],
        refresh_token: &str,
        username: &str,
    ) -> Result<Flight, RefreshError> {
        if let Some(slot) = self.slots.get(&key) {
            if self.usable(&slot) {
                return Ok(slot.flight.clone());
            }
        }
        if self.slots.len() >= self.cognito.cfg.capacity {
            // Answers past their reuse are only a cache: drop them first.
            self.slots.retain(|_, s| self.usable(s));
        }
        if self.slots.len() >= self.cognito.cfg.capacity && !self.slots.contains_key(&key) {
            // Full of calls in progress and fresh answers: refuse rather
            // than call Cognito outside single flight.
            tracing::warn!(
                in_flight = self.slots.len(),
                "refresh table full of calls in progress; asking the client to retry"
            );
            return Err(RefreshError::Unavailable(
                "too many refreshes in flight".into(),
            ));
        }
        let mut entry = self.slots.entry(key).or_insert_with(|| Slot {
            flight: self.start_flight(key, refresh_token, username),
        });
        if !self.usable(&entry) {
            *entry = Slot {
                flight: self.start_flight(key, refresh_token, username),
            };
        }
        Ok(entry.flight.clone())
    }
}

/// The sign-in an answer's tokens belong to (read without verifying: only
/// used to file the answer; its token is verified before anyone uses it).
fn answer_lineage(tokens: &TokenSet) -> Option<String> {
    unverified_claims(&tokens.access_token).map(|c| SessionProof::of(&c).lineage())
}
