//! The one authority on whether a session lives, on this replica and — with
//! `--redis-url` — across every replica of the deployment.
//!
//! [`Sessions`] is a cheap clonable handle over private state: the token
//! verifier, the Cognito refresher and its single flight, the renewals
//! waiting for their browser, the live-socket registry, the memory of ended
//! sign-ins, subjects and signed-out browsers, and the cluster link. Nothing
//! else reads or writes those tables: handlers ask it a few questions —
//! [`Sessions::identify`] and [`Sessions::complete`] (who is asking, and a
//! token to act with), [`Sessions::lease`] (one more socket of the user
//! across replicas), [`Sessions::renew_socket`] (an open socket's renewal),
//! [`Sessions::end_subject`] (an operator's end), [`Sessions::signed_out`]
//! (the app's sign-out), [`Sessions::heard`] (what another replica said).
//!
//! The rules it keeps are in docs/ARCHITECTURE.md, "Session integrity".
//! It never logs a token, a cookie or a refresh token.
//!
//! # Layout
//!
//! - `mod.rs`: [`Sessions`], the handle and its questions.
//! - `shared`: [`SessionsConfig`] (the configuration slice it decides with)
//!   and the private state behind the handle.
//! - [`identify`]: step 1, who is asking (registered before any check).
//! - [`complete`]: step 2, a token to act with, renewed if due.
//! - [`renew`]: the one renewal path, for handshakes and open sockets.
//! - `ends`: refusals, operators' ends, what other replicas said.
//! - [`app`]: the SSR app proxy's view (renewals, receipt, sign-out).

pub mod app;
pub mod complete;
mod ends;
pub mod identify;
pub mod renew;
mod shared;

pub use app::AppSession;
pub use complete::{Authenticated, SessionState};
pub use identify::Identified;
pub use renew::{forwarded_token, Phase, RenewError, Renewed};
pub use shared::SessionsConfig;

use crate::cluster::leases::Lease;
use crate::cluster::{Cluster, Heard, Reach};
use crate::config::Config;
use crate::error::RelayError;
use crate::http_client::HttpClient;
use crate::limits::SessionRates;
use crate::metrics::Metrics;
use crate::refresh::{Holder, Refresher};
use crate::session::{Pending, PendingRenewals, SessionProof, Subject, TokenSet};
use crate::verify::{Verifier, VerifierConfig};
use hyper::header::{HeaderMap, HeaderValue};
use shared::Shared;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a renewal made on an open socket waits for its browser: as long
/// as a connection can live upstream (AppSync closes at 24 h).
const PENDING_TTL: Duration = Duration::from_secs(24 * 3600);

/// The session authority (see the module docs). Clones share everything.
#[derive(Clone)]
pub struct Sessions {
    shared: Arc<Shared>,
}

impl Sessions {
    /// Builds the verifier, the refresher, the tables and the cluster link
    /// (`--redis-url`; its background tasks stop with `shutdown`).
    pub fn new(
        config: &Config,
        http: HttpClient,
        metrics: Arc<Metrics>,
        rates: Arc<SessionRates>,
        shutdown: CancellationToken,
    ) -> Sessions {
        let verifier = Verifier::new(
            VerifierConfig {
                issuer: config.issuer.clone(),
                jwks_url: config.jwks_url.clone(),
                client_id: config.client_id.clone(),
                token_use: config.token_use,
                leeway: config.jwt_leeway,
                jwks_refetch_interval: config.jwks_refetch_interval,
                fetch_timeout: config.upstream_timeout,
                jwks_refresh_interval: config.jwks_refresh_interval,
                cache_capacity: config.token_cache_size,
            },
            http.clone(),
        );
        let cluster = match &config.cluster {
            Some(c) => Cluster::start(
                c,
                config.refresh_token_validity,
                config.refresh.timeout,
                &metrics,
                shutdown,
            )
            .unwrap_or_else(|e| {
                // Config::from_args built this client already.
                tracing::error!(error = %e, "redis: cannot start; this replica coordinates alone");
                Cluster::local(config.refresh_token_validity)
            }),
            None => Cluster::local(config.refresh_token_validity),
        };
        let refresher = Refresher::with_shared(
            config.refresh.clone(),
            http,
            cluster.refresh_flight(),
            cluster.shared_chain(),
        );
        let pending = PendingRenewals::new(
            config.token_cache_size,
            PENDING_TTL.min(config.refresh_token_validity),
        );
        Sessions {
            shared: Arc::new(Shared {
                cfg: SessionsConfig::of(config),
                verifier,
                refresher,
                pending,
                sockets: Default::default(),
                cluster,
                rates,
                metrics,
            }),
        }
    }

    // === Requests: handshakes and HTTP publishes ===

    /// Step 1: reads and verifies the request's session, registers it
    /// among the user's live sockets, checks the ends, and takes a renewal
    /// left for it ([`identify`]).
    pub async fn identify(&self, headers: &HeaderMap) -> Result<Identified, RelayError> {
        identify::identify(&self.shared, headers).await
    }

    /// Step 2: a token to act with, renewed if due ([`complete`]).
    pub async fn complete(
        &self,
        id: Identified,
        secure: bool,
        client_ip: IpAddr,
    ) -> Result<Authenticated, RelayError> {
        complete::complete(&self.shared, id, secure, client_ip).await
    }

    /// The `Set-Cookie`s a refusal of `id` must carry: the renewal it took.
    pub fn undelivered_cookies(&self, id: &Identified, secure: bool) -> Vec<HeaderValue> {
        id.undelivered_cookies(&self.shared, secure)
    }

    /// One more socket of the user `sub` across the replicas (with Redis):
    /// its lease, or `Err` when the user holds `--max-connections-per-user`.
    pub async fn lease(&self, sub: &str) -> Result<Option<Lease>, ()> {
        let max = self.shared.cfg.max_connections_per_user;
        self.shared.cluster.lease(sub, max).await
    }

    // === Open sockets ===

    /// Whether open sockets renew in place (`--mid-connection-refresh`).
    pub fn mid_connection_refresh(&self) -> bool {
        self.shared.cfg.mid_connection_refresh
    }

    /// How long before expiry a token is renewed.
    pub fn refresh_before(&self) -> Duration {
        self.shared.cfg.refresh_before
    }

    /// The refresh token an open socket holding `refresh_token` must renew
    /// with, and every one on the way (another socket or tab of the same
    /// sign-in may have rotated it), oldest first.
    pub fn socket_chain(&self, refresh_token: &str, proof: &SessionProof) -> Vec<String> {
        self.shared
            .refresher
            .chain(refresh_token, &proof.lineage(), Holder::Socket)
    }

    /// Renews an open socket's session ([`renew`]), after checking the
    /// ends again against `current`, the token it relays with.
    pub async fn renew_socket(
        &self,
        refresh_token: &str,
        session: &SessionState,
        current: Option<&str>,
    ) -> Result<Renewed, RenewError> {
        renew::renew(
            &self.shared,
            refresh_token,
            &session.cognito_username,
            &session.proof,
            current,
            Phase::Connection,
        )
        .await
    }

    /// Leaves `tokens`, renewed on an open socket, for the browser's next
    /// request, under every refresh-token hash that browser may hold.
    pub fn leave_for_browser(&self, keys: &[[u8; 32]], session: &SessionState, tokens: TokenSet) {
        let tokens = Arc::new(tokens);
        for key in keys {
            self.shared.pending.record(
                *key,
                &session.username,
                tokens.clone(),
                session.proof.clone(),
            );
        }
    }

    // === The SSR app ===

    /// The session cookies of a request to the app, if it has any.
    pub fn app_session(&self, headers: &HeaderMap) -> Option<AppSession> {
        app::session_of(&self.shared, headers)
    }

    /// The renewal waiting for the app request's session, taken ([`app`]).
    pub async fn renewal_for(&self, app: &AppSession) -> Option<Pending> {
        app::renewal_for(&self.shared, app).await
    }

    /// The `Set-Cookie`s that deliver `pending`.
    pub fn set_cookies(&self, pending: &Pending, secure: bool) -> Vec<HeaderValue> {
        let cfg = &self.shared.cfg;
        cfg.cookies
            .set_cookies(&cfg.client_id, &pending.username, &pending.tokens, secure)
    }

    /// The app's answer signed the browser of `app` out ([`app`]).
    pub async fn signed_out(&self, app: &AppSession) {
        app::signed_out(&self.shared, app).await
    }

    // === Ends across replicas ===

    /// An operator's end of `subject`'s sessions: how many sockets and
    /// handshakes in progress closed on this replica, and how far it
    /// reached.
    pub async fn end_subject(&self, subject: &Subject) -> (usize, Reach) {
        ends::end_subject(&self.shared, subject).await
    }

    /// Applies what another replica said (already in the cluster memory):
    /// how many sockets closed here.
    pub async fn heard(&self, heard: Heard) -> usize {
        ends::apply(&self.shared, heard).await
    }

    /// Applies what the other replicas say, as it arrives, until `shutdown`.
    pub async fn follow_replicas(self, shutdown: CancellationToken) {
        let Some(mut heard) = self.shared.cluster.take_heard() else {
            return;
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                next = heard.recv() => match next {
                    Some(h) => {
                        let closed = self.heard(h).await;
                        if closed > 0 {
                            tracing::info!(closed, "sockets closed: their session ended on another replica");
                        }
                    }
                    None => return,
                }
            }
        }
    }

    // === Readiness ===

    /// The token verifier (its keys, for readiness and `check`).
    pub fn verifier(&self) -> &Arc<Verifier> {
        &self.shared.verifier
    }

    /// Ready as far as sessions go: signing keys loaded, and the ends said
    /// on other replicas known (with `--redis-url`, bounded by
    /// `cluster::SYNC_WAIT`).
    pub fn is_ready(&self) -> bool {
        self.shared.verifier.is_ready() && self.shared.cluster.is_synced()
    }

    /// For `/readyz`'s body: the coordination's state, when there is one.
    pub fn readiness_note(&self) -> Option<&'static str> {
        self.shared.cluster.readiness_note()
    }

    // === For the tests' invariants ===

    /// Drops every finished refresh answer kept for reuse, as
    /// `refresh::RESULT_TTL` passing would.
    #[doc(hidden)]
    pub fn forget_recent_answers(&self) {
        self.shared.refresher.forget_recent_answers();
    }

    /// The refresh token a renewal waiting for `refresh_token` carries.
    #[doc(hidden)]
    pub fn waiting_refresh_token(&self, refresh_token: &str) -> Option<String> {
        self.shared.pending.waiting_refresh_token(refresh_token)
    }

    /// Whether the sign-in `proof` belongs to is marked ended.
    #[doc(hidden)]
    pub fn sign_in_ended(&self, proof: &SessionProof) -> bool {
        self.shared.cluster.sign_in_ended(&proof.lineage_hash())
    }

    /// Sockets (and handshakes in progress) registered here.
    #[doc(hidden)]
    pub fn registered(&self) -> usize {
        self.shared.sockets.len()
    }

    /// Leaves a renewal for the browser holding the refresh token hashed
    /// as `key`, as an open socket would.
    #[doc(hidden)]
    pub fn leave_renewal(
        &self,
        key: [u8; 32],
        username: &str,
        tokens: TokenSet,
        proof: SessionProof,
    ) {
        let session = SessionState {
            username: username.to_string(),
            cognito_username: username.to_string(),
            refresh_token: tokens.refresh_token.clone(),
            browser_refresh: Some(key),
            proof,
        };
        self.leave_for_browser(&[key], &session, tokens);
    }
}
