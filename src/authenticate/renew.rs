//! The one way a session is renewed, at a handshake or on an open socket:
//! ask Cognito (single flight), count it, verify what came back, and check
//! it is still the same user of the same app client.
//!
//! Nothing here logs a token.

use crate::error::RelayError;
use crate::refresh::RefreshError;
use crate::session::{SessionProof, TokenSet};
use crate::state::RelayState;
use crate::verify::{Claims, TokenUse, VerifyError};
use std::sync::Arc;

/// Picks the token `--token-use` forwards out of a token set.
pub fn forwarded_token(tokens: &TokenSet, token_use: TokenUse) -> Option<&str> {
    match token_use {
        TokenUse::Access => Some(tokens.access_token.as_str()),
        TokenUse::Id => tokens.id_token.as_deref(),
    }
}

/// Where a renewal happens: the `phase` label of `token_refreshes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// A handshake or HTTP publish (the response can carry cookies).
    Handshake,
    /// An open socket (the renewal waits in the pending store).
    Connection,
}

impl Phase {
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
/// the relay saw replaced it with ([`crate::refresh::Refresher::newest`]) —
/// with single flight across every caller with the same token; counts it,
/// verifies the result and checks it is still `proof`'s user. `username` is
/// Cognito's, for `SECRET_HASH`. Callers have proven the session with a
/// genuine token of it; Cognito decides whether the newest token is alive.
pub async fn renew(
    state: &RelayState,
    refresh_token: &str,
    username: &str,
    proof: &SessionProof,
    phase: Phase,
) -> Result<Renewed, RenewError> {
    // Another socket or tab of this session may have rotated it already;
    // with a zero grace period the old one is dead.
    // (A call already made for the caller's own token is joined instead:
    // its answer is the newest.)
    let newest = match state.refresher.has_flight(refresh_token) {
        true => refresh_token.to_string(),
        false => state.refresher.newest(refresh_token, &proof.sub),
    };
    let outcome = state.refresher.refresh(&newest, username).await;
    let result = outcome
        .as_ref()
        .map(|_| "ok")
        .unwrap_or_else(RefreshError::reason);
    state
        .metrics
        .token_refreshes
        .with_label_values(&[phase.label(), result])
        .inc();
    let mut tokens = outcome.map_err(RenewError::Refresh)?;
    if tokens.refresh_token.is_none() && newest != refresh_token {
        // Not rotated this time, but the caller's token was: it must end up
        // with the one that is alive.
        tokens = Arc::new(TokenSet {
            refresh_token: Some(newest),
            ..(*tokens).clone()
        });
    }
    let token = forwarded_token(&tokens, state.config.token_use)
        .ok_or(RenewError::NoToken)?
        .to_string();
    let claims = state
        .verifier
        .verify(&token)
        .await
        .map_err(RenewError::Verify)?;
    if claims.sub != proof.sub || claims.client_id != proof.client_id {
        tracing::warn!(
            sub = %proof.sub,
            "Cognito answered a refresh with another identity's tokens; ending the session"
        );
        state.end_session(proof);
        return Err(RenewError::IdentityChanged);
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
            RenewError::IdentityChanged => {
                RelayError::Refresh(RefreshError::Rejected("identity changed".into()))
            }
        }
    }
}
