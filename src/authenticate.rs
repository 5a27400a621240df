//! From a request's cookies to a verified token the relay can act with,
//! renewing the session first when its token has expired or is about to.
//!
//! Order: read the session cookies; if a renewal made on an open socket is
//! waiting for this browser (see [`crate::cookies`]), use it; else verify
//! the token; if it expires within `--refresh-before` (or already has, but
//! is otherwise valid — signature, issuer, client) and a refresh token is
//! present, ask Cognito for new tokens (single flight), verify those, and
//! return them with the `Set-Cookie` headers the browser needs. A refresh
//! that fails while the old token is still valid is not fatal.

use crate::error::RelayError;
use crate::refresh::{RefreshError, RefreshedTokens};
use crate::server::RelayState;
use crate::session::{self, Session, SessionError};
use crate::verify::{token_hash, Claims, TokenUse, VerifyError};
use hyper::header::{HeaderMap, HeaderValue};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

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

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Whether a token should be renewed now.
fn due(claims: &Claims, refresh_before: std::time::Duration) -> bool {
    now_secs() >= crate::relay::refresh_due_at(claims.exp, claims.iat, refresh_before)
}

/// Picks the token `--token-use` forwards out of a refresh answer.
pub fn forwarded_token(tokens: &RefreshedTokens, token_use: TokenUse) -> Option<&str> {
    match token_use {
        TokenUse::Access => Some(tokens.access_token.as_str()),
        TokenUse::Id => tokens.id_token.as_deref(),
    }
}

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
        tokens: &RefreshedTokens,
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
    if !needs_refresh || session.refresh_token.is_none() {
        return Ok(Authenticated::as_sent(token, verified?, &session));
    }

    // Expired or about to: renew, but only for a token that is otherwise
    // genuine (signed by the pool, for this client).
    let genuine = state.verifier.verify_ignoring_expiry(token).await?;
    match refresh(state, &session, &genuine).await {
        Ok((tokens, renewed)) => Ok(Authenticated::renewed(
            cfg,
            session.username.clone(),
            &session,
            &tokens,
            renewed,
            secure,
        )),
        // Still valid for a little while: use it, the next request retries.
        Err(e) if verified.is_ok() => {
            tracing::warn!(
                reason = e.reason(),
                "session refresh failed; token still valid, using it"
            );
            Ok(Authenticated::as_sent(token, verified?, &session))
        }
        Err(e) => Err(e),
    }
}

/// A renewal, and the token to forward from it with its verified claims.
type Renewal = (Arc<RefreshedTokens>, (String, Arc<Claims>));

async fn refresh(
    state: &RelayState,
    session: &Session,
    genuine: &Claims,
) -> Result<Renewal, RelayError> {
    let Some(rt) = session.refresh_token.as_deref() else {
        return Err(RelayError::Token(VerifyError::Expired));
    };
    // SECRET_HASH wants Cognito's username (the `username` claim), which
    // can differ from the cookie's LastAuthUser (e.g. email aliases).
    let username = genuine.username().unwrap_or(&session.username);
    let outcome = state.refresher.refresh(rt, username).await;
    state
        .metrics
        .token_refreshes
        .with_label_values(&[
            "handshake",
            outcome
                .as_ref()
                .map(|_| "ok")
                .unwrap_or_else(RefreshError::reason),
        ])
        .inc();
    let tokens = outcome.map_err(RelayError::Refresh)?;
    let token = forwarded_token(&tokens, state.config.token_use)
        .ok_or(RelayError::Refresh(RefreshError::Unavailable(
            "no token of the configured use".into(),
        )))?
        .to_string();
    let claims = state.verifier.verify(&token).await?;
    Ok((tokens, (token, claims)))
}
