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
use lineage::Lineages;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

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

/// A finished flight: its outcome and when Cognito gave it.
#[derive(Clone)]
struct Answer {
    outcome: RefreshOutcome,
    at: Instant,
}

struct Slot {
    cell: Arc<OnceCell<Answer>>,
    created: Instant,
}

pub struct Refresher {
    cognito: Cognito,
    slots: DashMap<[u8; 32], Slot>,
    /// Refresh tokens Cognito refused, by hash, with when.
    rejected: DashMap<[u8; 32], Instant>,
    /// Which sign-in each refresh token belongs to and what replaced it.
    lineages: Lineages,
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
        Arc::new(Refresher {
            lineages: Lineages::new(cfg.capacity),
            cognito: Cognito { cfg, http },
            slots: DashMap::new(),
            rejected: DashMap::new(),
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
        let cell = self.slot(key)?;
        let answer = cell
            .get_or_init(|| async {
                let outcome = self
                    .cognito
                    .call(refresh_token, username)
                    .await
                    .map(Arc::new);
                Answer {
                    outcome,
                    at: Instant::now(),
                }
            })
            .await
            .clone();
        match &answer.outcome {
            // A transient failure must not be remembered: the next caller retries.
            Err(RefreshError::Unavailable(_)) => {
                self.slots
                    .remove_if(&key, |_, slot| Arc::ptr_eq(&slot.cell, &cell));
            }
            Err(RefreshError::Rejected(_)) => self.remember_rejected(key),
            Ok(tokens) => {
                if let Some(lineage) = answer_lineage(tokens) {
                    self.lineages.answered(
                        refresh_token,
                        tokens.refresh_token.as_deref(),
                        &lineage,
                    );
                }
            }
        }
        answer.outcome
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

    /// A response is handing the browser that showed `refresh_token` the
    /// newest token of its chain (see [`Holder::Browser`]).
    pub fn handed_over(&self, refresh_token: &str, lineage: &str) {
        self.lineages.handed_over(refresh_token, lineage);
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
        self.slots.retain(|_, slot| match slot.cell.get() {
            Some(Answer {
                outcome: Ok(tokens),
                ..
            }) => answer_lineage(tokens).as_deref() != Some(lineage),
            _ => true,
        });
    }

    /// Drops every finished answer kept for reuse, as [`RESULT_TTL`] passing
    /// would: for the session model test, which cannot wait seconds per step.
    #[doc(hidden)]
    pub fn forget_recent_answers(&self) {
        self.slots.retain(|_, slot| slot.cell.get().is_none());
    }

    /// Whether Cognito already refused this refresh token.
    pub fn is_rejected(&self, key: &[u8; 32]) -> bool {
        self.rejected
            .get(key)
            .is_some_and(|at| at.elapsed() < REJECTED_TTL)
    }

    fn remember_rejected(&self, key: [u8; 32]) {
        // A forgotten token costs one Cognito call to be refused again.
        make_room(
            &self.rejected,
            self.cognito.cfg.capacity,
            REJECTED_TTL,
            |at| *at,
        );
        self.rejected.insert(key, Instant::now());
    }

    /// Whether a remembered slot may still be handed out.
    fn usable(&self, slot: &Slot) -> bool {
        let Some(answer) = slot.cell.get() else {
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

    fn slot(&self, key: [u8; 32]) -> Result<Arc<OnceCell<Answer>>, RefreshError> {
        if let Some(slot) = self.slots.get(&key) {
            if self.usable(&slot) {
                return Ok(slot.cell.clone());
            }
        }
        if self.slots.len() >= self.cognito.cfg.capacity {
            // Finished results are only a cache: drop them first, and
            // flights abandoned long past the Cognito timeout.
            let abandoned = self.cognito.cfg.timeout * 2 + RESULT_TTL;
            self.slots
                .retain(|_, s| s.cell.get().is_none() && s.created.elapsed() < abandoned);
        }
        if self.slots.len() >= self.cognito.cfg.capacity && !self.slots.contains_key(&key) {
            // Full of calls in progress: refuse rather than call Cognito
            // outside single flight.
            tracing::warn!(
                in_flight = self.slots.len(),
                "refresh table full of calls in progress; asking the client to retry"
            );
            return Err(RefreshError::Unavailable(
                "too many refreshes in flight".into(),
            ));
        }
        let mut entry = self.slots.entry(key).or_insert_with(|| Slot {
            cell: Arc::new(OnceCell::new()),
            created: Instant::now(),
        });
        if !self.usable(&entry) {
            *entry = Slot {
                cell: Arc::new(OnceCell::new()),
                created: Instant::now(),
            };
        }
        Ok(entry.cell.clone())
    }
}

/// The sign-in an answer's tokens belong to (read without verifying: only
/// used to file the answer; its token is verified before anyone uses it).
fn answer_lineage(tokens: &TokenSet) -> Option<String> {
    unverified_claims(&tokens.access_token).map(|c| SessionProof::of(&c).lineage())
}
