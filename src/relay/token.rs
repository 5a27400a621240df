//! The token an open socket relays with, and keeping it fresh: when it is
//! due, renew it in place through the session authority
//! ([`Sessions::renew_socket`], which checks the ends again first and pins the
//! identity: the socket's `sub` never changes), leave the renewed set for
//! the browser's next request, or end the session. Transient Cognito
//! failures are retried with backoff until the token itself expires; only
//! a refusal ends the session.
//!
//! Nothing here logs a token.

use super::close::Ending;
use crate::clock::{instant_at, now_secs, refresh_due_at};
use crate::refresh::RefreshError;
use crate::rewrite::UpstreamAuth;
use crate::session::TokenSet;
use crate::sessions::{RenewError, SessionState, Sessions};
use crate::verify::{token_hash, Claims};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// First retry of a refresh that failed for a transient reason; doubled on
/// each failure up to [`REFRESH_RETRY_MAX`].
const REFRESH_RETRY: Duration = Duration::from_secs(1);
const REFRESH_RETRY_MAX: Duration = Duration::from_secs(30);

pub struct TokenState {
    /// The token (and AppSync host) injected into every frame.
    pub auth: UpstreamAuth,
    /// `exp` of that token.
    pub expires_at: u64,
    /// The claims of that token, which the channel policy decides on;
    /// replaced at each renewal (a group removed since is removed here).
    pub claims: Arc<Claims>,
    /// Next renewal (or retry).
    pub due: Instant,
    session: SessionState,
    /// Transient refresh failures in a row (for the backoff).
    failures: u32,
    /// Hashes of every refresh token the browser may hold: the one it had
    /// at the handshake, and each this socket rotated out (a renewal left
    /// for it may have been delivered). A renewal is left under all of them.
    browser_keys: Vec<[u8; 32]>,
}

/// Most keys a socket leaves renewals under (one per rotation).
const MAX_BROWSER_KEYS: usize = 32;

impl TokenState {
    pub fn new(
        auth: UpstreamAuth,
        claims: Arc<Claims>,
        session: SessionState,
        refresh_before: Duration,
    ) -> TokenState {
        TokenState {
            browser_keys: session.browser_refresh.into_iter().collect(),
            due: instant_at(refresh_due_at(claims.exp, claims.iat, refresh_before)),
            auth,
            expires_at: claims.exp,
            claims,
            session,
            failures: 0,
        }
    }

    /// The `sub` of the token in use now (read from it, not from the
    /// session it started with).
    pub fn token_sub(&self) -> Option<String> {
        self.auth.subject()
    }

    /// Whether the token has at most a second left.
    pub fn expiring(&self) -> bool {
        now_secs() + 1 >= self.expires_at
    }

    /// Renews the token (or ends the session). `Ok(true)` when a new token
    /// is in place, `Ok(false)` when the next attempt was scheduled.
    pub async fn renew(&mut self, sessions: &Sessions) -> Result<bool, Ending> {
        if !sessions.mid_connection_refresh() {
            return Err(Ending::Reauthenticate);
        }
        let Some(own) = self.session.refresh_token.clone() else {
            // Nothing to renew with: the connection ends with the token.
            if self.expiring() {
                return Err(Ending::SessionEnded("no_refresh_token"));
            }
            self.due = instant_at(self.expires_at);
            return Ok(false);
        };
        // Another socket or tab of this browser may have rotated the token
        // this one holds; with a zero grace period the old one is dead.
        // (A sign-in marked ended gets no special case: the chain leads to
        // its refused token, which ends this socket without a Cognito call.)
        let chain = sessions.socket_chain(&own, &self.session.proof);
        let refresh_token = chain.last().cloned().unwrap_or_else(|| own.clone());
        let renewed = match sessions
            .renew_socket(&refresh_token, &self.session, self.auth.jwt())
            .await
        {
            Ok(r) => r,
            Err(RenewError::Refresh(RefreshError::Rejected(_))) => {
                // `renew` told the state; whether the sign-in ended is its call.
                return Err(Ending::SessionEnded("refresh_rejected"));
            }
            Err(RenewError::IdentityChanged) => {
                return Err(Ending::SessionEnded("identity_changed"));
            }
            Err(RenewError::Refresh(RefreshError::Unavailable(_)) | RenewError::NoToken) => {
                return self.retry_later()
            }
            Err(RenewError::Verify(e)) => {
                tracing::warn!(reason = e.reason(), "refreshed token does not verify");
                return self.retry_later();
            }
        };
        self.failures = 0;
        self.auth = UpstreamAuth::new(renewed.token, self.auth.host());
        self.expires_at = renewed.claims.exp;
        self.claims = renewed.claims.clone();
        self.due = instant_at(refresh_due_at(
            renewed.claims.exp,
            renewed.claims.iat,
            sessions.refresh_before(),
        ));
        let tokens = renewed.tokens;
        let newest = tokens.refresh_token.clone().unwrap_or(refresh_token);
        if newest != own {
            // Every token passed on the way may be what the browser holds
            // now (a handshake may have delivered it): leave renewals there.
            for passed in chain.iter().filter(|rt| **rt != newest) {
                let key = token_hash(passed);
                if !self.browser_keys.contains(&key) {
                    if self.browser_keys.len() >= MAX_BROWSER_KEYS {
                        self.browser_keys.remove(0);
                    }
                    self.browser_keys.push(key);
                }
            }
            self.session.refresh_token = Some(newest);
        }
        // Keep the current set for the browser's next request through the
        // relay, under every refresh token the browser may hold. After a
        // rotation its refresh-token cookie is stale; without one its
        // access-token cookie still is, and the SSR app behind the relay
        // would read an expired session (and refresh on its own, with no
        // way to store the result from a server component) until then.
        let latest = TokenSet {
            access_token: tokens.access_token.clone(),
            id_token: tokens.id_token.clone(),
            refresh_token: self.session.refresh_token.clone(),
        };
        sessions.leave_for_browser(&self.browser_keys, &self.session, latest);
        Ok(true)
    }

    fn retry_later(&mut self) -> Result<bool, Ending> {
        if now_secs() >= self.expires_at {
            // Expired and Cognito unreachable: let the client reconnect; its
            // handshake tries again and answers precisely.
            return Err(Ending::Reauthenticate);
        }
        let backoff = REFRESH_RETRY
            .saturating_mul(1 << self.failures.min(5))
            .min(REFRESH_RETRY_MAX);
        self.failures = self.failures.saturating_add(1);
        // Jittered, so a fleet of sockets does not retry in lock-step, and
        // never past the token's own expiry (then the session is decided).
        let jittered = backoff.mul_f64(0.5 + rand::random::<f64>() / 2.0);
        let now = Instant::now();
        self.due = (now + jittered)
            .min(instant_at(self.expires_at))
            .max(now + Duration::from_millis(250));
        Ok(false)
    }
}
