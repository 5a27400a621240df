//! The one way a session is renewed, at a handshake or on an open socket:
//! check no end covers it (an open socket's renewal asks again: an end may
//! have been said since its handshake), ask Cognito (single flight), count
//! it, verify what came back, and check it is still the same user of the
//! same app client.
//!
//! Nothing here logs a token.

use super::shared::Shared;
use crate::error::RelayError;
use crate::refresh::{Holder, RefreshError};
use crate::session::{SessionProof, TokenSet, Who};
use crate::verify::{Claims, TokenUse, VerifyError};
use std::sync::Arc;

/// Most reused answers followed in one renewal (each is a rotation someone
/// made in the last seconds).
const MAX_FOLLOW: usize = 4;

/// Picks the token `--token-use` forwards out of a token set.
pub fn forwarded_token(tokens: &TokenSet, token_use: TokenUse) -> Option<&str> {
    match token_use {
        TokenUse::Access => Some(tokens.access_token.as_str()),
        TokenUse::Id => tokens.id_token.as_deref(),
    }
}

/// Where a renewal happens: the `phase` label of `token_refreshes_total`,
/// and who holds the refresh token ([`Holder`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// A handshake or HTTP publish (the response can carry cookies).
    Handshake,
    /// An open socket (the renewal waits in the pending store).
    Connection,
}

impl Phase {
    fn holder(self) -> Holder {
        match self {
            Phase::Handshake => Holder::Browser,
            Phase::Connection => Holder::Socket,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Phase::Handshake => "handshake",
            Phase::Connection => "connection",
        }
    }
}

/// A renewal: the new token set, and the token to forward from it with its
/// verified claims.
pub struct Renewed {
    pub tokens: Arc<TokenSet>,
    pub token: String,
    pub claims: Arc<Claims>,
}

/// Why a renewal produced no usable token.
#[derive(Debug)]
pub enum RenewError {
    /// Cognito refused (the session is over) or could not be asked.
    Refresh(RefreshError),
    /// Cognito answered without a token of the configured `--token-use`.
    NoToken,
    /// The token Cognito issued does not verify.
    Verify(VerifyError),
    /// The token Cognito issued is someone else's (`sub` or `client_id`).
    IdentityChanged,
}

/// Renews a session with its refresh token — or the newest one a rotation
/// the relay saw replaced it with, as far as the holder may follow
/// ([`crate::refresh::Refresher::newest`]) — with single flight across
/// every caller with the same token; counts it, verifies the result and
/// checks it is still `proof`'s user. `username` is Cognito's, for
/// `SECRET_HASH`. Callers have proven the sign-in with a genuine token of
/// it; Cognito decides whether the newest token is alive.
///
/// A refusal is reported to [`super::ends::refused`] (which ends the
/// sign-in only when the refused token was its newest); another identity's
/// tokens end nothing but this renewal.
pub(super) async fn renew(
    sh: &Shared,
    refresh_token: &str,
    username: &str,
    proof: &SessionProof,
    current: Option<&str>,
    phase: Phase,
) -> Result<Renewed, RenewError> {
    // An operator's end said after the socket opened (its handshake checked
    // the ends already, and the end closes the socket): no Cognito call
    // buys it anything. Judged from the token in use (`current`), whose
    // `auth_time` every refresh keeps.
    let ended = current
        .and_then(crate::verify::unverified_claims)
        .is_some_and(|c| sh.cluster.subject_ended(&Who::of(&c)));
    if ended {
        return Err(RenewError::Refresh(RefreshError::Rejected(
            "session ended by an operator".into(),
        )));
    }
    // Another socket or tab of this session may have rotated it already;
    // with a zero grace period the old one is dead.
    // (A call already made for the caller's own token is joined instead:
    // its answer is the newest.)
    let lineage = proof.lineage();
    let newest = match sh.refresher.has_flight(refresh_token) {
        true => refresh_token.to_string(),
        false => sh.refresher.newest(refresh_token, &lineage, phase.holder()),
    };
    let outcome = sh.refresher.refresh(&newest, username).await;
    if let Err(RefreshError::Rejected(_)) = &outcome {
        super::ends::refused(sh, &newest, proof).await;
    }
    let result = outcome
        .as_ref()
        .map(|_| "ok")
        .unwrap_or_else(RefreshError::reason);
    sh.metrics
        .token_refreshes
        .with_label_values(&[phase.label(), result])
        .inc();
    let mut tokens = outcome.map_err(RenewError::Refresh)?;
    // The answer may have been reused (from this replica's last seconds, or
    // another replica's shared result): its refresh token may have been
    // rotated since — by a sibling here, or on another replica — and with
    // a zero grace period handing it out would lose the session. Follow
    // every rotation someone already asked for (never a call of our own).
    for _ in 0..MAX_FOLLOW {
        let Some(next) = tokens.refresh_token.clone().filter(|rt| *rt != newest) else {
            break;
        };
        match sh.refresher.follow(&next).await {
            Some(Ok(later)) => {
                tokens = Arc::new(TokenSet {
                    refresh_token: later.refresh_token.clone().or(Some(next)),
                    ..(*later).clone()
                });
            }
            _ => break,
        }
    }
    // The refresh token the caller must end up with: the answer's (or, not
    // rotated this time, the one used) — and if that answer was reused from
    // seconds ago, whatever a sibling has rotated it into since.
    let answered = tokens.refresh_token.clone().unwrap_or(newest);
    let current = sh.refresher.newest(&answered, &lineage, Holder::Socket);
    if tokens.refresh_token.as_deref() != Some(current.as_str()) && current != refresh_token {
        tokens = Arc::new(TokenSet {
            refresh_token: Some(current),
            ..(*tokens).clone()
        });
    }
    let token = forwarded_token(&tokens, sh.cfg.token_use)
        .ok_or(RenewError::NoToken)?
        .to_string();
    let claims = sh
        .verifier
        .verify(&token)
        .await
        .map_err(RenewError::Verify)?;
    if claims.sub != proof.sub || claims.client_id != proof.client_id {
        // The refresh token is not this sign-in's (shown next to someone
        // else's genuine token): refuse, and end nothing of either user.
        tracing::warn!(
            sub = %proof.sub,
            "Cognito answered a refresh with another identity's tokens; refusing it"
        );
        return Err(RenewError::IdentityChanged);
    }
    // A sign-in marked ended is alive after all: Cognito just renewed it —
    // if the tokens are of that very sign-in (a live refresh token of
    // another sign-in of the user must not clear it).
    if SessionProof::of(&claims).lineage() == lineage {
        sh.cluster.revive(&proof.lineage_hash());
    }
    Ok(Renewed {
        tokens,
        token,
        claims,
    })
}

impl From<RenewError> for RelayError {
    fn from(e: RenewError) -> RelayError {
        match e {
            RenewError::Refresh(e) => RelayError::Refresh(e),
            RenewError::NoToken => RelayError::Refresh(RefreshError::Unavailable(
                "no token of the configured use".into(),
            )),
            RenewError::Verify(e) => RelayError::Token(e),
            RenewError::IdentityChanged => RelayError::IdentityChanged,
        }
    }
}
