//! The one gate the WebSocket upgrade (`GET <events-path>/realtime`) and the
//! HTTP publish (`POST <events-path>`) pass before the relay acts for the
//! user: named phases in the contract's order, run over one per-request
//! context, with one [`Refused`] type and one map from a refusal to its
//! answer ([`Refused::into_response`]).
//!
//! 1. [`Gate::filter_request`]: listeners still accepting (upgrade: 503),
//!    a valid RFC 6455 upgrade (400), the Origin allowlist (403), the relay
//!    not full (upgrade: 429), `aws-appsync-event-ws` offered (upgrade: 400);
//! 2. [`Gate::identify`]: the session cookie present and its token genuine
//!    (401), registered among the user's live sockets before any end is
//!    checked ([`crate::sessions::identify`]);
//! 3. [`Gate::admit`]: upgrade — admission per user and per client IP,
//!    then the user's lease across replicas (429); publish — the user's
//!    publish budget (429). Before any Cognito call: a refused request
//!    spends none;
//! 4. [`Gate::authenticate`]: the token renewed if due, within the refresh
//!    budgets (401 / 429 / 503);
//! 5. then the route's own step (upstream connect; the body forwarded),
//!    and [`Gate::still_live`] just before the relay commits: an end said
//!    since phase 2 refuses it (401).
//!
//! Once the session was renewed, or a waiting renewal taken, every answer
//! carries the new cookies, the refusals too.

use crate::cluster::leases::Lease;
use crate::error::RelayError;
use crate::limits::{ConnectionPermit, LimitHit};
use crate::protocol;
use crate::refresh::RefreshError;
use crate::response::Body;
use crate::sessions::{Authenticated, Identified};
use crate::state::RelayState;
use crate::upgrade;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, SET_COOKIE};
use hyper::{Request, Response};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

/// Which route is passing the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET <events-path>/realtime`.
    Upgrade,
    /// `POST <events-path>`.
    Publish,
}

/// A refusal, with the renewed session cookies it must still carry when
/// the session was renewed (or a waiting renewal taken) before the phase
/// that failed: Cognito may already have rotated the refresh token.
#[derive(Debug)]
pub struct Refused {
    pub error: RelayError,
    pub set_cookies: Vec<HeaderValue>,
    /// `Sec-WebSocket-Accept` of an upgrade refused after phase 1 (a valid
    /// upgrade from an allowed Origin): one the handshake may answer in
    /// band, with a 101 and a `connection_error` (`handshake::respond`).
    pub accept_key: Option<HeaderValue>,
}

impl<E> From<E> for Refused
where
    RelayError: From<E>,
{
    fn from(error: E) -> Refused {
        Refused {
            error: error.into(),
            set_cookies: Vec::new(),
            accept_key: None,
        }
    }
}

impl Refused {
    pub fn with_cookies(error: RelayError, set_cookies: Vec<HeaderValue>) -> Refused {
        Refused {
            error,
            set_cookies,
            accept_key: None,
        }
    }

    /// The same refusal, answerable in band with this accept key.
    pub fn in_band(mut self, accept_key: Option<HeaderValue>) -> Refused {
        self.accept_key = accept_key;
        self
    }

    /// The answer to a refused request: the error's status and JSON body
    /// (bounded labels only), the cookies it must carry, and for an
    /// upgrade `Connection: close` (a refused upgrade's connection is not
    /// kept alive to hold memory).
    pub fn into_response(self, route: Route) -> Response<Body> {
        let mut resp = self.error.into_response();
        let h = resp.headers_mut();
        if route == Route::Upgrade {
            h.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        for cookie in self.set_cookies {
            h.append(SET_COOKIE, cookie);
        }
        resp
    }
}

/// What passing the gate produced.
pub struct Passed {
    /// `Sec-WebSocket-Accept` (upgrade only).
    pub accept_key: Option<HeaderValue>,
    pub authenticated: Authenticated,
    /// This connection's slot in the admission limits (upgrade only).
    pub permit: Option<ConnectionPermit>,
    /// The socket's lease in the per-user count across replicas.
    pub lease: Option<Lease>,
    pub client_ip: IpAddr,
}

/// The per-request context carried through the phases.
pub struct Gate<'a> {
    state: &'a RelayState,
    route: Route,
    peer: SocketAddr,
    /// Whether cookies written back are `Secure`.
    secure: bool,
    client_ip: IpAddr,
    accept_key: Option<HeaderValue>,
}

impl<'a> Gate<'a> {
    /// Runs every phase in order for `req` on `route`.
    pub async fn pass(
        state: &'a RelayState,
        route: Route,
        req: &Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Passed, Refused> {
        let mut gate = Gate {
            state,
            route,
            peer,
            secure: false,
            client_ip: peer.ip(),
            accept_key: None,
        };
        gate.filter_request(req)?;
        let key = gate.accept_key.clone();
        let identified = gate
            .timed("verify", gate.identify(req))
            .await
            .map_err(|e| Refused::from(e).in_band(key.clone()))?;
        let (permit, lease) = gate
            .admit(&identified)
            .await
            .map_err(|r| r.in_band(key.clone()))?;
        let authenticated = gate
            .timed("renew", gate.authenticate(identified))
            .await
            .map_err(|e| Refused::from(e).in_band(key))?;
        Ok(Passed {
            accept_key: gate.accept_key,
            authenticated,
            permit,
            lease,
            client_ip: gate.client_ip,
        })
    }

    /// Phase 1: what the request itself must be, before any verification
    /// work is spent on it.
    fn filter_request(&mut self, req: &Request<Incoming>) -> Result<(), Refused> {
        let state = self.state;
        if self.route == Route::Upgrade {
            if state.stop_accepting().is_cancelled() {
                return Err(RelayError::Draining.into());
            }
            self.accept_key = Some(upgrade::check_upgrade(req)?);
        }
        state.config().origins.check(req.headers())?;
        if self.route == Route::Upgrade {
            // Full already? Refuse before spending any verification work.
            if state.limits().total_full() {
                return Err(self.limit_hit(LimitHit::Total).into());
            }
            // Any `header-…` the browser offered holds a placeholder at
            // best; it is never looked at or forwarded.
            if !upgrade::offered_protocols(req.headers()).contains(&protocol::SUBPROTOCOL) {
                return Err(RelayError::NoSubprotocol.into());
            }
        }
        self.secure = state.is_secure(req.headers(), self.peer);
        self.client_ip = state.client_ip(req.headers(), self.peer);
        Ok(())
    }

    /// Phase 2: who is asking.
    async fn identify(&self, req: &Request<Incoming>) -> Result<Identified, RelayError> {
        self.state.sessions().identify(req.headers()).await
    }

    /// Phase 3: admission, before any Cognito call.
    async fn admit(
        &self,
        id: &Identified,
    ) -> Result<(Option<ConnectionPermit>, Option<Lease>), Refused> {
        let state = self.state;
        let refuse = |hit| {
            Refused::with_cookies(
                self.limit_hit(hit),
                state.sessions().undelivered_cookies(id, self.secure),
            )
        };
        if self.route == Route::Publish {
            state.rates().http_publish(id.sub()).map_err(refuse)?;
            return Ok((None, None));
        }
        let permit = state
            .limits()
            .try_acquire(id.sub(), self.client_ip)
            .map_err(refuse)?;
        // The same user's limit across replicas (with --redis-url).
        match state.sessions().lease(id.sub()).await {
            Ok(lease) => Ok((Some(permit), lease)),
            Err(()) => Err(refuse(LimitHit::PerUser)),
        }
    }

    /// Phase 4: a token to act with, renewed if due.
    async fn authenticate(&self, id: Identified) -> Result<Authenticated, RelayError> {
        self.state
            .sessions()
            .complete(id, self.secure, self.client_ip)
            .await
    }

    /// Phase 5, after the route's own step: an end said since the request
    /// was identified refuses it, rather than let a socket or a publish of
    /// an ended session through.
    pub fn still_live(authenticated: &Authenticated) -> Result<(), Refused> {
        if !authenticated.is_ended() {
            return Ok(());
        }
        Err(Refused::with_cookies(
            RelayError::Refresh(RefreshError::Rejected("session ended".into())),
            authenticated.set_cookies.clone(),
        ))
    }

    /// Runs a phase, observing its duration in `handshake_seconds{phase}`
    /// for an upgrade when it succeeds.
    async fn timed<T, E>(
        &self,
        phase: &'static str,
        fut: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let started = Instant::now();
        let result = fut.await?;
        if self.route == Route::Upgrade {
            self.state
                .metrics()
                .handshake_seconds
                .with_label_values(&[phase])
                .observe(started.elapsed().as_secs_f64());
        }
        Ok(result)
    }

    fn limit_hit(&self, hit: LimitHit) -> RelayError {
        limit_hit(self.state, hit)
    }
}

/// Counts a limit hit and turns it into the refusal.
pub fn limit_hit(state: &RelayState, hit: LimitHit) -> RelayError {
    state
        .metrics()
        .limits_hit
        .with_label_values(&[hit.reason()])
        .inc();
    RelayError::Limit(hit)
}
