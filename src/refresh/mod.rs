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
//! call, and its result is remembered for [`RESULT_TTL`] so a reconnect
//! storm right after it reuses the answer instead of calling again. Both
//! maps are keyed by SHA-256 of the refresh token, never the token, and are
//! bounded.
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

pub use cognito::{secret_hash, RefreshApi, RefreshConfig, RefreshError};

use crate::clock::{now_secs, refresh_due_at};
use crate::http_client::HttpClient;
use crate::session::TokenSet;
use crate::verify::{token_hash, unverified_times};
use cognito::Cognito;
use dashmap::DashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

/// How long a finished refresh is reused for the same refresh token: long
/// enough for the other tabs of a reconnect storm, racing the first
/// response's `Set-Cookie`, to get the same answer instead of calling with
/// a token Cognito just rotated out; short, because for that long the old
/// refresh token (with a genuine token of the same user) still obtains the
/// answer.
pub const RESULT_TTL: Duration = Duration::from_secs(5);
/// How long a rotation is remembered for [`Refresher::newest`]: as long as
/// an open socket can live upstream.
const SUCCESSOR_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long a rejected refresh token is remembered. It never becomes valid
/// again; the bound only keeps the table small.
const REJECTED_TTL: Duration = Duration::from_secs(24 * 3600);
/// What one refresh produced, shared by every caller of the same flight.
pub type RefreshOutcome = Result<Arc<TokenSet>, RefreshError>;

struct Slot {
    cell: Arc<OnceCell<RefreshOutcome>>,
    created: Instant,
}

pub struct Refresher {
    cognito: Cognito,
    slots: DashMap<[u8; 32], Slot>,
    /// Refresh tokens Cognito refused, by hash, with when.
    rejected: DashMap<[u8; 32], Instant>,
    /// Rotations seen: hash of a rotated-out refresh token → the one that
    /// replaced it and the `sub` it belongs to (see [`Refresher::newest`]).
    successors: DashMap<[u8; 32], Successor>,
}

struct Successor {
    refresh_token: String,
    sub: String,
    created: Instant,
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
            cognito: Cognito { cfg, http },
            slots: DashMap::new(),
            rejected: DashMap::new(),
            successors: DashMap::new(),
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
        let outcome = cell
            .get_or_init(|| async {
                self.cognito
                    .call(refresh_token, username)
                    .await
                    .map(Arc::new)
            })
            .await
            .clone();
        match &outcome {
            // A transient failure must not be remembered: the next caller retries.
            Err(RefreshError::Unavailable(_)) => {
                self.slots
                    .remove_if(&key, |_, slot| Arc::ptr_eq(&slot.cell, &cell));
            }
            Err(RefreshError::Rejected(_)) => self.remember_rejected(key),
            Ok(tokens) => {
                if let (Some(next), Some(sub)) =
                    (&tokens.refresh_token, token_sub(&tokens.access_token))
                {
                    self.remember_successor(key, next, sub);
                }
            }
        }
        outcome
    }

    /// The newest refresh token the relay has seen replace `refresh_token`
    /// by rotation, for the user `sub` (itself when none did). Several
    /// sockets and tabs of one browser share a refresh token; once one of
    /// them rotated it, the others must renew with the replacement — with a
    /// zero grace period the old one is already dead, and using it would
    /// end a live session. Callers have proven the session with a genuine
    /// token of `sub`; Cognito still decides whether the newest is alive.
    pub fn newest(&self, refresh_token: &str, sub: &str) -> String {
        let mut chain = self.chain(refresh_token, sub);
        chain.pop().unwrap_or_else(|| refresh_token.to_string())
    }

    /// `refresh_token` and every refresh token that replaced it in turn,
    /// oldest first (see [`Refresher::newest`]).
    pub fn chain(&self, refresh_token: &str, sub: &str) -> Vec<String> {
        let mut chain = vec![refresh_token.to_string()];
        // Bounded: a chain is one link per rotation, a few a day.
        for _ in 0..64 {
            let Some(current) = chain.last() else { break };
            let next = match self.successors.get(&token_hash(current)) {
                Some(s) if s.sub == sub && s.created.elapsed() < SUCCESSOR_TTL => {
                    s.refresh_token.clone()
                }
                _ => break,
            };
            chain.push(next);
        }
        chain
    }

    fn remember_successor(&self, key: [u8; 32], next: &str, sub: String) {
        if self.successors.len() >= self.cognito.cfg.capacity {
            self.successors
                .retain(|_, s| s.created.elapsed() < SUCCESSOR_TTL);
            if self.successors.len() >= self.cognito.cfg.capacity {
                self.successors.clear();
            }
        }
        self.successors.insert(
            key,
            Successor {
                refresh_token: next.to_string(),
                sub,
                created: Instant::now(),
            },
        );
    }

    /// Whether a call for this refresh token is in flight or its result is
    /// still reused: a caller would join it, not call Cognito.
    pub fn has_flight(&self, refresh_token: &str) -> bool {
        self.slots
            .get(&token_hash(refresh_token))
            .is_some_and(|slot| self.usable(&slot))
    }

    /// Forgets every remembered answer that issued tokens to `sub`: its
    /// session ended, and an answer reused for the next seconds would revive it.
    pub fn forget_answers_for(&self, sub: &str) {
        self.slots.retain(|_, slot| match slot.cell.get() {
            Some(Ok(tokens)) => token_sub(&tokens.access_token).as_deref() != Some(sub),
            _ => true,
        });
        self.successors.retain(|_, s| s.sub != sub);
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
        if self.rejected.len() >= self.cognito.cfg.capacity {
            self.rejected.retain(|_, at| at.elapsed() < REJECTED_TTL);
            if self.rejected.len() >= self.cognito.cfg.capacity {
                // Still full: forget the oldest half's worth at once rather
                // than scan on every insert. A forgotten token costs one
                // Cognito call to be refused again.
                self.rejected.clear();
            }
        }
        self.rejected.insert(key, Instant::now());
    }

    /// Whether a remembered slot may still be handed out.
    fn usable(&self, slot: &Slot) -> bool {
        if slot.created.elapsed() >= RESULT_TTL {
            return false;
        }
        match slot.cell.get() {
            // In flight: join it.
            None => true,
            Some(Err(_)) => true,
            Some(Ok(tokens)) => match unverified_times(&tokens.access_token) {
                Some((exp, iat)) => {
                    now_secs() < refresh_due_at(exp, iat, self.cognito.cfg.refresh_before)
                }
                None => false,
            },
        }
    }

    fn slot(&self, key: [u8; 32]) -> Result<Arc<OnceCell<RefreshOutcome>>, RefreshError> {
        if let Some(slot) = self.slots.get(&key) {
            if self.usable(&slot) {
                return Ok(slot.cell.clone());
            }
        }
        if self.slots.len() >= self.cognito.cfg.capacity {
            // Finished results are only a cache: drop them first.
            self.slots
                .retain(|_, s| s.created.elapsed() < RESULT_TTL && s.cell.get().is_none());
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

/// The `sub` of a token Cognito just issued (not verified here: only used
/// to file the answer under its user).
fn token_sub(token: &str) -> Option<String> {
    crate::verify::unverified_sub(token)
}
