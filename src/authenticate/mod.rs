//! From a request's cookies to a verified token the relay can act with,
//! renewing the session first when its token has expired or is about to;
//! and [`renew`], the one renewal path used both here and by open sockets.
//!
//! Two steps, so a caller can apply its admission limits in between —
//! before any Cognito call is spent on a request that would be refused:
//!
//! 1. [`identify`]: read the session cookies, verify the browser's token
//!    (an expired one must still be genuine: signature, issuer, client), and
//!    take the renewal an open socket left for this session, if the token
//!    proves the same session ([`crate::session::SessionProof`]).
//! 2. [`complete`]: use that renewal (or renew with its refresh token, the
//!    newest the relay knows, when its access token is due); else verify or
//!    renew the browser's own, within the refresh-token lifetime and the
//!    per-IP and per-user refresh budgets. The answer carries the
//!    `Set-Cookie`s the browser needs, which the caller must send whatever
//!    it answers.
//!
//! A renewal never changes the identity: new tokens whose `sub` or
//! `client_id` differ from the session's are refused, and the session ends.
//! Nothing here logs a token; `SessionState`'s `Debug` redacts it.

mod renew;

pub use renew::{forwarded_token, renew, Phase, RenewError, Renewed};

use crate::clock::{is_due, now_secs};
use crate::error::RelayError;
use crate::refresh::{Holder, RefreshError};
use crate::session::{self, Pending, Session, SessionError, SessionProof, TokenSet};
use crate::state::RelayState;
use crate::verify::{token_hash, Claims, VerifyError};
use hyper::header::{HeaderMap, HeaderValue};
use std::net::IpAddr;
use std::sync::Arc;

/// The session as the relay carries it for the life of a connection.
#[derive(Clone)]
pub struct SessionState {
    /// The cookie username (`LastAuthUser`): what cookies are written under.
    pub username: String,
    /// Cognito's username (the token's `username` claim), for
    /// `SECRET_HASH`; it can differ from the cookie's.
    pub cognito_username: String,
    /// The refresh token now valid for this session (rotations applied).
    pub refresh_token: Option<String>,
    /// Hash of the refresh token the browser's cookie holds (after any
    /// `Set-Cookie` this response carries): where pending renewals go.
    pub browser_refresh: Option<[u8; 32]>,
    /// The identity of the token the browser holds: what a renewal left for
    /// it must be claimed with, and what every renewal must keep.
    pub proof: SessionProof,
}

impl std::fmt::Debug for SessionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionState")
            .field("username", &self.username)
            .field("sub", &self.proof.sub)
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

pub struct Authenticated {
    /// The token to forward (access or ID, per `--token-use`).
    pub token: String,
    pub claims: Arc<Claims>,
    pub session: SessionState,
    /// Renewed cookies for the response (empty when nothing was renewed).
    pub set_cookies: Vec<HeaderValue>,
    /// Whether a refresh happened during this request.
    pub refreshed: bool,
}

// === Step 1: who is asking ===

/// A request's session, identified but not yet renewed.
pub struct Identified {
    session: Session,
    /// The browser's own token and its strict verification.
    token: String,
    verified: Result<Arc<Claims>, VerifyError>,
    /// Its claims with expiry ignored: genuine, possibly expired.
    genuine: Arc<Claims>,
    /// A renewal an open socket of this session left for it, now taken.
    pending: Option<Pending>,
    /// The sign-in was marked ended ([`RelayState::session_ended`]) or the
    /// token retired by a sign-out ([`RelayState::token_retired`]).
    ended: bool,
}

impl Identified {
    /// The user this request is for (from a genuine token; it may be expired).
    pub fn sub(&self) -> &str {
        &self.genuine.sub
    }

    /// The `Set-Cookie`s a response must carry even when the request fails
    /// before [`complete`]: the taken renewal, since nobody else will
    /// deliver it.
    pub fn undelivered_cookies(&self, state: &RelayState, secure: bool) -> Vec<HeaderValue> {
        let Some(p) = &self.pending else {
            return Vec::new();
        };
        state
            .config
            .cookies
            .set_cookies(&state.config.client_id, &p.username, &p.tokens, secure)
    }
}

/// Reads and verifies the browser's session; takes a renewal left for it.
pub async fn identify(state: &RelayState, headers: &HeaderMap) -> Result<Identified, RelayError> {
    let cfg = &state.config;
    let session = session::from_headers(headers, &cfg.client_id)?;
    let token = session
        .token(cfg.token_use)
        .ok_or(RelayError::Session(SessionError::Missing))?
        .to_string();
    let verified = state.verifier.verify(&token).await;
    let genuine = match &verified {
        Ok(claims) => claims.clone(),
        Err(VerifyError::Expired) => Arc::new(state.verifier.verify_ignoring_expiry(&token).await?),
        Err(e) => return Err(RelayError::Token(e.clone())),
    };
    let proof = SessionProof::of(&genuine);
    // An operator ended this user's sessions (here or on another replica)
    // after this sign-in: refused whatever the token or Cognito would say,
    // until the user signs in again.
    if state.cluster.is_ended(&genuine) {
        return Err(RelayError::Refresh(RefreshError::Rejected(
            "session ended by an operator".into(),
        )));
    }
    if let Some(rt) = &session.refresh_token {
        // The browser shows it received this token: the ones it replaced
        // stop following the rotation chain for browsers.
        state.refresher.shown(rt, &proof.lineage());
    }
    // A sign-in the relay saw end, or a token whose browser signed out:
    // nothing waiting is handed out, and the token is not taken on its word
    // (`complete` asks Cognito).
    let ended = state.session_ended(&proof) || state.token_retired(&token_hash(&token));
    let pending = session
        .refresh_token
        .as_deref()
        .filter(|rt| !ended && state.pending.has(rt))
        .and_then(|rt| {
            let mut p = state.pending.take(rt, &proof)?;
            // Another socket may have rotated it since it was left.
            state.freshen(&mut p);
            Some(p)
        });
    Ok(Identified {
        session,
        token,
        verified,
        genuine,
        pending,
        ended,
    })
}

// === Step 2: a token to act with ===

/// Finishes authenticating `id` for a response that can carry cookies
/// (`secure` decides their `Secure` attribute); `client_ip` is charged for
/// any Cognito call.
pub async fn complete(
    state: &RelayState,
    id: Identified,
    secure: bool,
    client_ip: IpAddr,
) -> Result<Authenticated, RelayError> {
    let cfg = &state.config;
    let proof = SessionProof::of(&id.genuine);
    if let Some(pending) = id.pending {
        return from_pending(state, pending, &id.session, &id.genuine, secure, client_ip).await;
    }
    let needs_refresh = match &id.verified {
        _ if id.ended => true,
        Ok(claims) => is_due(claims.exp, claims.iat, cfg.refresh_before),
        Err(_) => true,
    };
    let refresh_token = id
        .session
        .refresh_token
        .as_deref()
        .filter(|_| needs_refresh);
    // An ended sign-in's token is never used as sent: only a renewal
    // Cognito grants revives it.
    let still_valid = id.verified.as_ref().ok().cloned().filter(|_| !id.ended);
    let Some(refresh_token) = refresh_token else {
        if id.ended {
            return Err(RelayError::Refresh(RefreshError::Rejected(
                "session ended".into(),
            )));
        }
        let claims = id.verified?;
        return Ok(as_sent(&id.token, claims, &id.session, proof));
    };
    // A refresh is only worth asking for when it could succeed and the
    // budgets allow it; otherwise a still-valid token carries on as sent.
    let refusal = refresh_refusal(state, &id.genuine, refresh_token, client_ip);
    let attempt = match refusal {
        Some(e) => Err(e),
        None => {
            // SECRET_HASH wants Cognito's username (the `username` claim),
            // which can differ from the cookie's LastAuthUser.
            let username = id.genuine.username().unwrap_or(&id.session.username);
            renew(state, refresh_token, username, &proof, Phase::Handshake)
                .await
                .map_err(RelayError::from)
        }
    };
    match attempt {
        Ok(r) => Ok(renewed(
            state,
            id.session.username.clone(),
            &id.session,
            &r.tokens,
            (r.token, r.claims),
            secure,
        )),
        Err(e) => {
            // (A refusal was reported by `renew`; it decides what ends.)
            match still_valid {
                // Still valid for a little while: use it, the next request retries.
                Some(claims) => {
                    tracing::warn!(
                        reason = e.reason(),
                        "session refresh failed; token still valid, using it"
                    );
                    Ok(as_sent(&id.token, claims, &id.session, proof))
                }
                None => Err(e),
            }
        }
    }
}

/// Why a refresh must not even be tried: the session is older than a
/// refresh token lives, Cognito already refused this refresh token, or a
/// refresh budget is spent.
fn refresh_refusal(
    state: &RelayState,
    genuine: &Claims,
    refresh_token: &str,
    client_ip: IpAddr,
) -> Option<RelayError> {
    // The sign-in's age: `auth_time` (when the user signed in, kept by every
    // refresh), else the token's own `iat` (a lower bound).
    let signed_in = genuine.auth_time.or(genuine.iat).unwrap_or(genuine.exp);
    let validity = state.config.refresh_token_validity.as_secs();
    if now_secs() > signed_in.saturating_add(validity) {
        return Some(RelayError::Token(VerifyError::Expired));
    }
    // What a renewal would use (see `renew`): judge that, not a rotated-out
    // token a stale tab still holds.
    let lineage = SessionProof::of(genuine).lineage();
    let newest = state
        .refresher
        .newest(refresh_token, &lineage, Holder::Browser);
    let refresh_token = newest.as_str();
    if state.refresher.is_rejected(&token_hash(refresh_token)) {
        return Some(RelayError::Refresh(RefreshError::Rejected(
            "remembered".into(),
        )));
    }
    // The budgets count Cognito calls: joining a flight in progress is free.
    if state.refresher.has_flight(refresh_token) {
        return None;
    }
    // The user's budget is charged only for a refresh token the relay knows
    // to be of this sign-in: junk refresh tokens shown next to someone's
    // leaked access token must not spend that person's budget (the
    // address's budget still bounds them).
    let user = state
        .refresher
        .belongs(refresh_token, &lineage)
        .then_some(genuine.sub.as_str());
    if let Err(hit) = state.rates.refresh(client_ip, user) {
        state
            .metrics
            .limits_hit
            .with_label_values(&[hit.reason()])
            .inc();
        return Some(RelayError::Limit(hit));
    }
    None
}

/// Uses a renewal an open socket left: as it is while its access token is
/// not due, else renewed with its refresh token (the newest known). The
/// browser gets the cookies either way: the entry was taken.
async fn from_pending(
    state: &RelayState,
    pending: Pending,
    session: &Session,
    genuine: &Claims,
    secure: bool,
    client_ip: IpAddr,
) -> Result<Authenticated, RelayError> {
    let cfg = &state.config;
    let tokens = pending.tokens.clone();
    let verified = match forwarded_token(&tokens, cfg.token_use) {
        Some(token) => state
            .verifier
            .verify(token)
            .await
            .ok()
            .map(|claims| (token.to_string(), claims)),
        None => None,
    };
    let due = verified
        .as_ref()
        .is_none_or(|(_, c)| is_due(c.exp, c.iat, cfg.refresh_before));
    // The waiting set delivered as it is, with its (still valid) token.
    let as_waiting = |fresh| {
        renewed(
            state,
            pending.username.clone(),
            session,
            &tokens,
            fresh,
            secure,
        )
    };
    let newest = tokens.refresh_token.clone();
    let (Some(newest), true) = (newest, due) else {
        // Not due (or nothing to renew with).
        return verified
            .map(as_waiting)
            .ok_or(RelayError::Token(VerifyError::Expired));
    };
    let attempt = match refresh_refusal(state, genuine, &newest, client_ip) {
        Some(e) => Err(e),
        None => {
            let username = genuine.username().unwrap_or(&pending.username).to_string();
            renew(state, &newest, &username, &pending.proof, Phase::Handshake)
                .await
                .map_err(RelayError::from)
        }
    };
    match attempt {
        Ok(r) => {
            // Cognito may or may not have rotated again: the browser must
            // end up with the newest refresh token either way.
            let merged = TokenSet {
                access_token: r.tokens.access_token.clone(),
                id_token: r.tokens.id_token.clone(),
                refresh_token: r.tokens.refresh_token.clone().or(Some(newest)),
            };
            Ok(renewed(
                state,
                pending.username.clone(),
                session,
                &merged,
                (r.token, r.claims),
                secure,
            ))
        }
        // Refused (reported by `renew`): nothing to deliver.
        Err(e @ RelayError::Refresh(RefreshError::Rejected(_))) => Err(e),
        // Another identity's tokens for a renewal the relay made itself:
        // Cognito misbehaved; keep the renewal for the next request.
        Err(e @ RelayError::IdentityChanged) => {
            state.pending.restore(pending);
            Err(e)
        }
        Err(e) => match verified {
            // Cognito could not be asked (or a budget is spent), but the
            // waiting token is still valid: deliver it, the next request
            // renews.
            Some(fresh) => Ok(as_waiting(fresh)),
            // Put the renewal back for the next request rather than lose
            // the newest refresh token.
            None => {
                state.pending.restore(pending);
                Err(e)
            }
        },
    }
}

/// The browser's own token, nothing renewed.
fn as_sent(
    token: &str,
    claims: Arc<Claims>,
    session: &Session,
    proof: SessionProof,
) -> Authenticated {
    Authenticated {
        token: token.to_string(),
        session: SessionState {
            cognito_username: claims.username().unwrap_or(&session.username).to_string(),
            username: session.username.clone(),
            refresh_token: session.refresh_token.clone(),
            browser_refresh: session.refresh_token.as_deref().map(token_hash),
            proof,
        },
        claims,
        set_cookies: Vec::new(),
        refreshed: false,
    }
}

/// Renewed `tokens` for `username`, written back as cookies.
fn renewed(
    state: &RelayState,
    username: String,
    session: &Session,
    tokens: &TokenSet,
    (token, claims): (String, Arc<Claims>),
    secure: bool,
) -> Authenticated {
    let cfg = &state.config;
    // After this response the browser holds the rotated refresh token, if
    // there was one, else the one it sent.
    let refresh_token = tokens
        .refresh_token
        .clone()
        .or(session.refresh_token.clone());
    Authenticated {
        set_cookies: cfg
            .cookies
            .set_cookies(&cfg.client_id, &username, tokens, secure),
        session: SessionState {
            cognito_username: claims.username().unwrap_or(&username).to_string(),
            browser_refresh: refresh_token.as_deref().map(token_hash),
            refresh_token,
            username,
            proof: SessionProof::of(&claims),
        },
        token,
        claims,
        refreshed: true,
    }
}
