//! From a request's cookies to a verified token the relay can act with,
//! renewing the session first when its token has expired or is about to;
//! and [`renew`], the one renewal path used both here and by open sockets.
//!
//! Order: read the session cookies; if a renewal made on an open socket is
//! waiting for this browser (see [`crate::session::pending`]), use it; else
//! verify the token; if it expires within `--refresh-before` (or already
//! has, but is otherwise valid — signature, issuer, client) and a refresh
//! token is present, renew (single flight), and return the new token with
//! the `Set-Cookie` headers the browser needs. A refresh that fails while
//! the old token is still valid is not fatal.
//!
//! Nothing here logs a token; `SessionState`'s `Debug` redacts it.

use crate::clock::is_due;
use crate::error::RelayError;
use crate::refresh::RefreshError;
use crate::session::{self, Session, SessionError, TokenSet};
use crate::state::RelayState;
use crate::verify::{token_hash, Claims, TokenUse, VerifyError};
use hyper::header::{HeaderMap, HeaderValue};
use std::sync::Arc;

/// The session as the relay carries it for the life of a connection.
#[derive(Clone)]
pub struct SessionState {
    pub username: String,
    /// The refresh token now valid for this session (rotations applied).
    pub refresh_token: Option<String>,
    /// Hash of the refresh token the browser's cookie holds (after any
    /// `Set-Cookie` this response carries): where pending renewals go.
    pub browser_refresh: Option<[u8; 32]>,
}

impl std::fmt::Debug for SessionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionState")
            .field("username", &self.username)
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

/// Picks the token `--token-use` forwards out of a token set.
pub fn forwarded_token(tokens: &TokenSet, token_use: TokenUse) -> Option<&str> {
    match token_use {
        TokenUse::Access => Some(tokens.access_token.as_str()),
        TokenUse::Id => tokens.id_token.as_deref(),
    }
}

// === Renewal ===

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
}

/// Renews a session with its refresh token (single flight across every
/// caller with the same token), counts it, and verifies the result.
/// `username` is Cognito's, for `SECRET_HASH`.
pub async fn renew(
    state: &RelayState,
    refresh_token: &str,
    username: &str,
    phase: Phase,
) -> Result<Renewed, RenewError> {
    let outcome = state.refresher.refresh(refresh_token, username).await;
    let result = outcome
        .as_ref()
        .map(|_| "ok")
        .unwrap_or_else(RefreshError::reason);
    state
        .metrics
        .token_refreshes
        .with_label_values(&[phase.label(), result])
        .inc();
    let tokens = outcome.map_err(RenewError::Refresh)?;
    let token = forwarded_token(&tokens, state.config.token_use)
        .ok_or(RenewError::NoToken)?
        .to_string();
    let claims = state
        .verifier
        .verify(&token)
        .await
        .map_err(RenewError::Verify)?;
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
        }
    }
}

// === Authentication of a request ===

impl Authenticated {
    /// The browser's own token, nothing renewed.
    fn as_sent(token: &str, claims: Arc<Claims>, session: &Session) -> Authenticated {
        Authenticated {
            token: token.to_string(),
            claims,
            session: SessionState {
                username: session.username.clone(),
                refresh_token: session.refresh_token.clone(),
                browser_refresh: session.refresh_token.as_deref().map(token_hash),
            },
            set_cookies: Vec::new(),
            refreshed: false,
        }
    }

    /// Renewed `tokens` for `username`, written back as cookies.
    fn renewed(
        cfg: &crate::config::Config,
        username: String,
        session: &Session,
        tokens: &TokenSet,
        (token, claims): (String, Arc<Claims>),
        secure: bool,
    ) -> Authenticated {
        // After this response the browser holds the rotated refresh token,
        // if there was one, else the one it sent.
        let refresh_token = tokens
            .refresh_token
            .clone()
            .or(session.refresh_token.clone());
        Authenticated {
            set_cookies: cfg
                .cookies
                .set_cookies(&cfg.client_id, &username, tokens, secure),
            token,
            claims,
            session: SessionState {
                browser_refresh: refresh_token.as_deref().map(token_hash),
                refresh_token,
                username,
            },
            refreshed: true,
        }
    }
}

/// Whether a verified token should be renewed now.
fn due(claims: &Claims, refresh_before: std::time::Duration) -> bool {
    is_due(claims.exp, claims.iat, refresh_before)
}

/// Authenticates a request whose response can carry cookies (`secure`
/// decides their `Secure` attribute).
pub async fn authenticate(
    state: &RelayState,
    headers: &HeaderMap,
    secure: bool,
) -> Result<Authenticated, RelayError> {
    let cfg = &state.config;
    let session = session::from_headers(headers, &cfg.client_id)?;

    // A renewal made on an open socket of this session, not yet delivered.
    if let Some((username, tokens)) = session
        .refresh_token
        .as_deref()
        .and_then(|rt| state.pending.lookup(rt))
    {
        if let Some(token) = forwarded_token(&tokens, cfg.token_use) {
            if let Ok(claims) = state.verifier.verify(token).await {
                if !due(&claims, cfg.refresh_before) {
                    let token = token.to_string();
                    return Ok(Authenticated::renewed(
                        cfg,
                        username,
                        &session,
                        &tokens,
                        (token, claims),
                        secure,
                    ));
                }
            }
        }
    }

    let token = session
        .token(cfg.token_use)
        .ok_or(RelayError::Session(SessionError::Missing))?;
    let verified = state.verifier.verify(token).await;
    let needs_refresh = match &verified {
        Ok(claims) => due(claims, cfg.refresh_before),
        Err(VerifyError::Expired) => true,
        Err(_) => false,
    };
    let Some(refresh_token) = session.refresh_token.as_deref().filter(|_| needs_refresh) else {
        return Ok(Authenticated::as_sent(token, verified?, &session));
    };

    // Expired or about to: renew, but only for a token that is otherwise
    // genuine (signed by the pool, for this client). SECRET_HASH wants
    // Cognito's username (the `username` claim), which can differ from the
    // cookie's LastAuthUser (e.g. email aliases).
    let genuine = state.verifier.verify_ignoring_expiry(token).await?;
    let username = genuine.username().unwrap_or(&session.username);
    match renew(state, refresh_token, username, Phase::Handshake).await {
        Ok(r) => Ok(Authenticated::renewed(
            cfg,
            session.username.clone(),
            &session,
            &r.tokens,
            (r.token, r.claims),
            secure,
        )),
        // Still valid for a little while: use it, the next request retries.
        Err(e) if verified.is_ok() => {
            let e = RelayError::from(e);
            tracing::warn!(
                reason = e.reason(),
                "session refresh failed; token still valid, using it"
            );
            Ok(Authenticated::as_sent(token, verified?, &session))
        }
        Err(e) => Err(e.into()),
    }
}
