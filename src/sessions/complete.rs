//! Step 2 of authenticating a request: a token to act with. Use the
//! renewal an open socket left (or renew with its refresh token, the newest
//! the relay knows, when its access token is due); else verify or renew the
//! browser's own, within the refresh-token lifetime and the per-IP and
//! per-user refresh budgets. The answer carries the `Set-Cookie`s the
//! browser needs, which the caller must send whatever it answers.
//!
//! A renewal never changes the identity: new tokens whose `sub` or
//! `client_id` differ from the session's are refused. Nothing here logs a
//! token; `SessionState`'s `Debug` redacts it.

use super::identify::Identified;
use super::renew::{forwarded_token, renew, Phase};
use super::shared::Shared;
use crate::clock::{is_due, now_secs};
use crate::error::RelayError;
use crate::refresh::{Holder, RefreshError};
use crate::session::{Pending, Registration, Session, SessionProof, TokenSet};
use crate::verify::{token_hash, Claims, VerifyError};
use hyper::header::HeaderValue;
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
    /// The request's place among the user's live sockets (see
    /// [`super::identify`]): a socket keeps it for its whole life.
    pub registration: Option<Registration>,
}

impl Authenticated {
    /// Whether an end reached this request since it was identified.
    pub fn is_ended(&self) -> bool {
        self.registration
            .as_ref()
            .is_some_and(|r| r.ended().is_cancelled())
    }
}

/// What a request showed, for completing with a renewal left for it.
struct From<'a> {
    session: &'a Session,
    genuine: &'a Claims,
}

/// Finishes authenticating `id` for a response that can carry cookies
/// (`secure` decides their `Secure` attribute); `client_ip` is charged for
/// any Cognito call.
pub(super) async fn complete(
    sh: &Shared,
    id: Identified,
    secure: bool,
    client_ip: IpAddr,
) -> Result<Authenticated, RelayError> {
    let Identified {
        session,
        token,
        verified,
        genuine,
        pending,
        ended,
        registration,
        ..
    } = id;
    let mut authenticated = match pending {
        Some(pending) => {
            let from = From {
                session: &session,
                genuine: &genuine,
            };
            from_pending(sh, pending, from, secure, client_ip).await?
        }
        None => {
            let id = Decided {
                session: &session,
                token: &token,
                verified,
                genuine: &genuine,
                ended,
            };
            from_own(sh, id, secure, client_ip).await?
        }
    };
    // Renewed: the browser now holds another refresh token, by which a
    // sign-out finds this socket too.
    if let Some(hash) = authenticated.session.browser_refresh {
        registration.also_browser_refresh(hash);
    }
    authenticated.registration = Some(registration);
    Ok(authenticated)
}

/// What the request showed, for the two ways to complete it.
struct Decided<'a> {
    session: &'a Session,
    token: &'a str,
    verified: Result<Arc<Claims>, VerifyError>,
    genuine: &'a Arc<Claims>,
    ended: bool,
}

/// The browser's own token: as sent, or renewed with its refresh token.
async fn from_own(
    sh: &Shared,
    id: Decided<'_>,
    secure: bool,
    client_ip: IpAddr,
) -> Result<Authenticated, RelayError> {
    let cfg = &sh.cfg;
    let proof = SessionProof::of(id.genuine);
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
        return Ok(as_sent(id.token, claims, id.session, proof));
    };
    // A refresh token its browser signed out with buys nothing, not even
    // by following its rotation chain to a live successor (a socket of the
    // sign-in may hold one): the signed-out cookies must not come back.
    if sh.cluster.refresh_signed_out(&token_hash(refresh_token)) {
        return Err(RelayError::Refresh(RefreshError::Rejected(
            "signed out".into(),
        )));
    }
    // A refresh is only worth asking for when it could succeed and the
    // budgets allow it; otherwise a still-valid token carries on as sent.
    let refusal = refresh_refusal(sh, id.genuine, refresh_token, client_ip);
    let attempt = match refusal {
        Some(e) => Err(e),
        None => {
            // SECRET_HASH wants Cognito's username (the `username` claim),
            // which can differ from the cookie's LastAuthUser.
            let username = id.genuine.username().unwrap_or(&id.session.username);
            renew(sh, refresh_token, username, &proof, None, Phase::Handshake)
                .await
                .map_err(RelayError::from)
        }
    };
    match attempt {
        Ok(r) => Ok(renewed(
            sh,
            id.session.username.clone(),
            id.session,
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
                    Ok(as_sent(id.token, claims, id.session, proof))
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
    sh: &Shared,
    genuine: &Claims,
    refresh_token: &str,
    client_ip: IpAddr,
) -> Option<RelayError> {
    // The sign-in's age: `auth_time` (when the user signed in, kept by every
    // refresh), else the token's own `iat` (a lower bound).
    let signed_in = genuine.auth_time.or(genuine.iat).unwrap_or(genuine.exp);
    let validity = sh.cfg.refresh_token_validity.as_secs();
    if now_secs() > signed_in.saturating_add(validity) {
        return Some(RelayError::Token(VerifyError::Expired));
    }
    // What a renewal would use (see `renew`): judge that, not a rotated-out
    // token a stale tab still holds.
    let lineage = SessionProof::of(genuine).lineage();
    let newest = sh
        .refresher
        .newest(refresh_token, &lineage, Holder::Browser);
    let refresh_token = newest.as_str();
    if sh.refresher.is_rejected(&token_hash(refresh_token)) {
        return Some(RelayError::Refresh(RefreshError::Rejected(
            "remembered".into(),
        )));
    }
    // The budgets count Cognito calls: joining a flight in progress is free.
    if sh.refresher.has_flight(refresh_token) {
        return None;
    }
    // The user's budget is charged only for a refresh token the relay knows
    // to be of this sign-in: junk refresh tokens shown next to someone's
    // leaked access token must not spend that person's budget (the
    // address's budget still bounds them).
    let user = sh
        .refresher
        .belongs(refresh_token, &lineage)
        .then_some(genuine.sub.as_str());
    if let Err(hit) = sh.rates.refresh(client_ip, user) {
        sh.metrics
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
    sh: &Shared,
    pending: Pending,
    from: From<'_>,
    secure: bool,
    client_ip: IpAddr,
) -> Result<Authenticated, RelayError> {
    let From { session, genuine } = from;
    let cfg = &sh.cfg;
    let tokens = pending.tokens.clone();
    let verified = match forwarded_token(&tokens, cfg.token_use) {
        Some(token) => sh
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
            sh,
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
    let attempt = match refresh_refusal(sh, genuine, &newest, client_ip) {
        Some(e) => Err(e),
        None => {
            let username = genuine.username().unwrap_or(&pending.username).to_string();
            renew(
                sh,
                &newest,
                &username,
                &pending.proof,
                None,
                Phase::Handshake,
            )
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
                sh,
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
            sh.pending.restore(pending);
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
                sh.pending.restore(pending);
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
        registration: None,
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
    sh: &Shared,
    username: String,
    session: &Session,
    tokens: &TokenSet,
    (token, claims): (String, Arc<Claims>),
    secure: bool,
) -> Authenticated {
    let cfg = &sh.cfg;
    // After this response the browser holds the rotated refresh token, if
    // there was one, else the one it sent.
    let refresh_token = tokens
        .refresh_token
        .clone()
        .or(session.refresh_token.clone());
    Authenticated {
        registration: None,
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
