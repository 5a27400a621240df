//! Step 1 of authenticating a request: who is asking. Read the session
//! cookies, verify the browser's token (an expired one must still be
//! genuine: signature, issuer, client), **register the request among the
//! user's live sockets before any end is checked**, then check the ends
//! and take the renewal an open socket left for this session, if the token
//! proves the same session ([`SessionProof`]).
//!
//! Registering first is what makes an end said at any instant effective:
//! an end that lands before the registration is in the memory the checks
//! read (ends are remembered before they close anything), and one that
//! lands after it cancels the registration, which the handshake checks
//! before its 101 and the relay task waits on after it.

use super::shared::Shared;
use crate::error::RelayError;
use crate::refresh::RefreshError;
use crate::session::{self, Pending, Registration, Session, SessionError, SessionProof, Who};
use crate::verify::{token_hash, Claims, VerifyError};
use hyper::header::{HeaderMap, HeaderValue};
use std::sync::Arc;

/// A request's session, identified but not yet renewed.
pub struct Identified {
    pub(super) session: Session,
    /// The browser's own token and its strict verification.
    pub(super) token: String,
    pub(super) verified: Result<Arc<Claims>, VerifyError>,
    /// Its claims with expiry ignored: genuine, possibly expired.
    pub(super) genuine: Arc<Claims>,
    /// A renewal an open socket of this session left for it, now taken.
    pub(super) pending: Option<Pending>,
    /// The sign-in was marked ended, or the token retired by a sign-out:
    /// not taken on its word (Cognito settles it).
    pub(super) ended: bool,
    /// This request's place among the user's live sockets, from before
    /// the first check: an end from then on cancels it.
    pub(super) registration: Registration,
}

impl Identified {
    /// The user this request is for (from a genuine token; it may be expired).
    pub fn sub(&self) -> &str {
        &self.genuine.sub
    }

    /// Whether an end reached this request since it was registered.
    pub fn is_ended(&self) -> bool {
        self.registration.ended().is_cancelled()
    }

    /// The `Set-Cookie`s a response must carry even when the request fails
    /// before it is completed: the taken renewal, since nobody else will
    /// deliver it.
    pub(super) fn undelivered_cookies(&self, sh: &Shared, secure: bool) -> Vec<HeaderValue> {
        let Some(p) = &self.pending else {
            return Vec::new();
        };
        sh.cfg
            .cookies
            .set_cookies(&sh.cfg.client_id, &p.username, &p.tokens, secure)
    }
}

/// Reads and verifies the browser's session, registers it, checks the
/// ends, and takes a renewal left for it.
pub(super) async fn identify(sh: &Shared, headers: &HeaderMap) -> Result<Identified, RelayError> {
    let cfg = &sh.cfg;
    let session = session::from_headers(headers, &cfg.client_id)?;
    let token = session
        .token(cfg.token_use)
        .ok_or(RelayError::Session(SessionError::Missing))?
        .to_string();
    let verified = sh.verifier.verify(&token).await;
    let genuine = match &verified {
        Ok(claims) => claims.clone(),
        Err(VerifyError::Expired) => Arc::new(sh.verifier.verify_ignoring_expiry(&token).await?),
        Err(e) => return Err(RelayError::Token(e.clone())),
    };
    let proof = SessionProof::of(&genuine);
    let who = Who::of(&genuine);
    // Before the first check (see the module docs).
    let registration = sh.sockets.register(
        &proof,
        session.refresh_token.as_deref().map(token_hash),
        who,
    );
    // An operator ended this user's sessions (here or on another replica)
    // after this sign-in: refused whatever the token or Cognito would say,
    // until the user signs in again.
    if sh.cluster.subject_ended(&who) {
        return Err(RelayError::Refresh(RefreshError::Rejected(
            "session ended by an operator".into(),
        )));
    }
    if let Some(rt) = &session.refresh_token {
        // The browser shows it received this token: the ones it replaced
        // stop following the rotation chain for browsers.
        sh.refresher.shown(rt, &proof.lineage());
    }
    // A sign-in seen to end, or a token whose browser signed out: nothing
    // waiting is handed out, and the token is not taken on its word
    // (`complete` asks Cognito).
    let ended = sh.cluster.sign_in_ended(&proof.lineage_hash())
        || sh.cluster.token_retired(&token_hash(&token));
    let pending = session
        .refresh_token
        .as_deref()
        .filter(|rt| !ended && sh.pending.has(rt))
        .and_then(|rt| {
            let mut p = sh.pending.take(rt, &proof)?;
            // Another socket may have rotated it since it was left.
            super::ends::freshen(sh, &mut p);
            Some(p)
        });
    Ok(Identified {
        session,
        token,
        verified,
        genuine,
        pending,
        ended,
        registration,
    })
}
