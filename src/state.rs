//! What every request handler shares: the validated configuration and the
//! long-lived parts built from it (verifier, refresher, pending renewals,
//! metrics, limits, shutdown signals), and the [`App`] seam for everything
//! that is not a relay route.
//!
//! It builds and holds; it decides nothing about a request beyond the two
//! questions every handler asks the same way (is this browser on HTTPS,
//! which IP is it).

use crate::bounded::make_room;
use crate::cluster::{Cluster, Heard, Reach};
use crate::config::Config;
use crate::fanout::Hub;
use crate::http_client::{self, HttpClient, Resolver};
use crate::limits::{ConnectionLimits, SessionRates};
use crate::metrics::Metrics;
use crate::refresh::{Holder, Refresher};
use crate::response::Body;
use crate::session::{LiveSockets, Pending, PendingRenewals, SessionProof, Subject, TokenSet};
use crate::upgrade;
use crate::upstream::UpstreamConfig;
use crate::verify::{Verifier, VerifierConfig};
use hyper::body::Incoming;
use hyper::{Request, Response};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a renewal made on an open socket waits for its browser: as long
/// as a connection can live upstream (AppSync closes at 24 h).
const PENDING_TTL: Duration = Duration::from_secs(24 * 3600);

/// What serves requests outside `<events-path>` on the public listener
/// (the demo pages, or the SSR app proxy). Without one they get 404.
pub trait App: Send + Sync + 'static {
    /// Answers `req`; `state` gives access to the relay's configuration,
    /// metrics and pending session renewals (to write them on responses).
    fn respond<'a>(
        &'a self,
        state: &'a Arc<RelayState>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = Response<Body>> + Send + 'a>>;
}

/// Everything a request handler needs, shared by all connections.
pub struct RelayState {
    pub config: Config,
    pub verifier: Arc<Verifier>,
    pub refresher: Arc<Refresher>,
    /// Renewals made on open sockets, waiting for their browser.
    pub pending: PendingRenewals,
    pub upstream: UpstreamConfig,
    pub http: HttpClient,
    /// The client for AppSync's HTTP endpoint (pinned by `--appsync-address`).
    pub appsync_http: HttpClient,
    pub metrics: Arc<Metrics>,
    pub ws_config: WebSocketConfig,
    /// Fires when shutdown starts: readiness drops to 503.
    pub draining: CancellationToken,
    /// Fires after the drain delay: listeners stop accepting.
    pub stop_accepting: CancellationToken,
    /// Fires when open relays must close (1001 to the browser).
    pub shutdown: CancellationToken,
    /// Every relayed connection, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Serves everything that is not a relay route.
    pub app: Option<Arc<dyn App>>,
    /// Connection admission limits.
    pub limits: Arc<ConnectionLimits>,
    /// Refresh and HTTP publish rates per user and per client IP.
    pub rates: SessionRates,
    /// The AppSync real-time host resolved at the last check.
    pub upstream_resolvable: AtomicBool,
    /// Sign-ins that ended (see [`RelayState::end_session`]), by
    /// [`SessionProof::lineage`], with when.
    ended: dashmap::DashMap<String, Instant>,
    /// Sign-ins another replica saw end, by [`SessionProof::lineage_hash`].
    ended_elsewhere: dashmap::DashMap<[u8; 32], Instant>,
    /// Access tokens of browsers that signed out, by hash, with when: not
    /// taken on their word again ([`RelayState::retire_token`]).
    retired: dashmap::DashMap<[u8; 32], Instant>,
    /// Every open relayed socket, by user, so an ended session reaches them.
    pub sockets: LiveSockets,
    /// Shared channels (`--shared-channel`); `None` when none are set.
    pub fanout: Option<Arc<Hub>>,
    /// Peers sending `X-Forwarded-For` without being trusted to.
    pub untrusted_forwarders: crate::forwarded::UntrustedForwarders,
    /// Ended users, agreed with the other replicas through Redis when
    /// `--redis-url` is set.
    pub cluster: Cluster,
}

/// How long an ended sign-in is remembered: as long as any of its sockets
/// or renewals could still be around.
const ENDED_TTL: Duration = Duration::from_secs(24 * 3600);

impl RelayState {
    pub fn new(config: Config, app: Option<Arc<dyn App>>) -> Arc<RelayState> {
        let http = http_client::build_tls(
            config.upstream_timeout,
            Resolver::default(),
            config.upstream_tls.clone(),
        );
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
        let metrics = Arc::new(Metrics::new());
        let shutdown = CancellationToken::new();
        let cluster = match &config.cluster {
            Some(c) => Cluster::start(
                c,
                config.refresh_token_validity,
                config.refresh.timeout,
                &metrics,
                shutdown.clone(),
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
            http.clone(),
            cluster.refresh_flight(),
        );
        let pending = PendingRenewals::new(
            config.token_cache_size,
            PENDING_TTL.min(config.refresh_token_validity),
        );
        let ws_config = upgrade::ws_config(config.max_message_bytes);
        let upstream = UpstreamConfig {
            realtime_url: config.realtime_endpoint.to_string(),
            http_host: config.http_host.clone(),
            connect_timeout: config.upstream_timeout,
            ws_config,
            tls: config.upstream_tls.clone(),
            address: config.appsync_address,
        };
        let appsync_http = match config.appsync_address {
            Some(ip) => http_client::build_tls(
                config.upstream_timeout,
                Resolver::pinned(ip),
                config.upstream_tls.clone(),
            ),
            None => http.clone(),
        };
        let fanout = (!config.shared.patterns.is_empty()).then(|| {
            Hub::new(
                config.shared.clone(),
                upstream.clone(),
                metrics.clone(),
                shutdown.clone(),
            )
        });
        Arc::new(RelayState {
            cluster,
            fanout,
            untrusted_forwarders: Default::default(),
            verifier,
            refresher,
            pending,
            upstream,
            appsync_http,
            http,
            metrics,
            ws_config,
            draining: CancellationToken::new(),
            stop_accepting: CancellationToken::new(),
            shutdown,
            tracker: TaskTracker::new(),
            limits: ConnectionLimits::new(config.limits.clone()),
            rates: SessionRates::new(&config.limits, config.token_cache_size),
            upstream_resolvable: AtomicBool::new(false),
            ended: dashmap::DashMap::new(),
            ended_elsewhere: dashmap::DashMap::new(),
            retired: dashmap::DashMap::new(),
            sockets: LiveSockets::default(),
            app,
            config,
        })
    }

    /// Whether the browser reached us over HTTPS, which decides the
    /// `Secure` attribute of cookies written back: our own TLS, an https
    /// `--public-origin`, or `X-Forwarded-Proto: https` from a peer in
    /// `--trust-forwarded`. Never a header any client can send (such as
    /// `Origin`).
    pub fn is_secure(&self, headers: &hyper::HeaderMap, peer: SocketAddr) -> bool {
        self.config.tls.is_some()
            || self.config.public_https
            || self.config.trust_forwarded.forwarded_https(headers, peer)
    }

    /// The client's IP (see [`crate::forwarded::TrustedProxies::client_ip`]).
    pub fn client_ip(&self, headers: &hyper::HeaderMap, peer: SocketAddr) -> IpAddr {
        self.note_forwarding(headers, peer);
        self.config.trust_forwarded.client_ip(headers, peer)
    }

    /// Counts (and now and then logs) a request carrying `X-Forwarded-For`
    /// from a peer `--trust-forwarded` does not list.
    pub fn note_forwarding(&self, headers: &hyper::HeaderMap, peer: SocketAddr) {
        let (noted, warn) = self.untrusted_forwarders.note(
            &self.config.trust_forwarded,
            headers,
            peer.ip(),
            Instant::now(),
        );
        if noted {
            self.metrics.forwarded_untrusted.inc();
        }
        if warn {
            tracing::warn!(
                peer = %peer.ip().to_canonical(),
                max_connections_per_ip = self.config.limits.max_connections_per_ip,
                "requests carrying X-Forwarded-For arrive from a peer --trust-forwarded does not list: \
                 every client behind it shares its address for the per-IP limits; if it is your \
                 ingress or load balancer, add its address range to --trust-forwarded"
            );
        }
    }

    /// What `/readyz` adds to its body: the Redis link's state (with
    /// `--redis-url`), and a warning about an untrusted forwarder seen
    /// within the hour, if any.
    pub fn readiness_notes(&self) -> String {
        let cluster = self.cluster.readiness_note().unwrap_or_default();
        cluster.to_string() + &match self.untrusted_forwarders.recent(Instant::now()) {
            Some(ip) => format!(
                "warning: requests carrying X-Forwarded-For arrived from {ip}, which --trust-forwarded does not list: \
                 every client behind it shares its address for --max-connections-per-ip ({})\n",
                self.config.limits.max_connections_per_ip
            ),
            None => String::new(),
        }
    }

    /// Cognito refused `refresh_token`, shown for the sign-in `proof`. What
    /// waits with that token is dropped; the sign-in itself ends only when
    /// the relay knows the token is that sign-in's newest (Cognito issued or
    /// accepted it for that lineage and nothing replaced it). A refusal of
    /// anything else — a junk token next to someone's genuine one, a stale
    /// token rotated out by the app or another replica — ends nothing but
    /// the request or socket that showed it.
    pub fn refresh_refused(&self, refresh_token: &str, proof: &SessionProof) {
        self.pending.forget_refresh_token(refresh_token);
        if self.refresher.is_newest(refresh_token, &proof.lineage()) {
            self.end_session(proof);
        }
    }

    /// A sign-in is over (its newest refresh token was refused, or the app
    /// signed the user out): nothing remembered may revive it — neither a
    /// renewal waiting for its browser nor a refresh answer kept for reuse —
    /// and its access tokens are no longer taken
    /// on their word: a request of that sign-in goes to Cognito with its
    /// own refresh token ([`RelayState::session_ended`]), which settles it.
    /// Other sign-ins of the user are not affected.
    ///
    /// The marker needs a lineage claim (`origin_jti` or `event_id`, which
    /// Cognito issues with token revocation on, the default): without one
    /// it would cover every sign-in of the user, on other devices too.
    pub fn end_session(&self, proof: &SessionProof) {
        if proof.origin_jti.is_none() && proof.event_id.is_none() {
            // Nothing tells this sign-in from the user's others: ending it
            // here would end theirs too. What waits with the refused token
            // was dropped already (`refresh_refused`).
            return;
        }
        self.pending.end_session(proof);
        self.refresher.forget_answers(&proof.lineage());
        self.sockets.end_sign_in(proof);
        make_room(&self.ended, self.config.token_cache_size, ENDED_TTL, |at| {
            *at
        });
        self.ended.insert(proof.lineage(), Instant::now());
        self.cluster.forget_sign_in(proof.lineage_hash());
        self.cluster.announce(Heard::SignIn {
            lineage: proof.lineage_hash(),
        });
    }

    /// Applies what another replica said: the same effects as the local
    /// ends ([`RelayState::end_session`], the app proxy's sign-out, an
    /// operator's end), by hashes, without saying it again. How many
    /// sockets closed here.
    pub fn heard(&self, heard: Heard) -> usize {
        match heard {
            Heard::Subject { subject, at } => self.sockets.end_subject(&subject, at),
            Heard::SignIn { lineage } => {
                self.pending.end_session_hashed(&lineage);
                self.refresher.forget_answers_hashed(&lineage);
                make_room(
                    &self.ended_elsewhere,
                    self.config.token_cache_size,
                    ENDED_TTL,
                    |at| *at,
                );
                self.ended_elsewhere.insert(lineage, Instant::now());
                self.sockets.end_sign_in_hashed(&lineage)
            }
            Heard::Browser {
                sub,
                refresh,
                token,
            } => {
                self.pending.forget_hashed(&refresh);
                self.refresher.retire_hashed(refresh);
                self.retire_token(&token);
                self.sockets.end_browser_hashed(&sub, &refresh)
            }
        }
    }

    /// A browser that showed the token hashed as `hash` signed out: the
    /// token still verifies until it expires, but is no longer taken on its
    /// word — a request showing it is renewed with its refresh token first,
    /// which settles whether the session is alive. Only the holder of that
    /// exact token is affected.
    pub fn retire_token(&self, hash: &[u8; 32]) {
        make_room(
            &self.retired,
            self.config.token_cache_size,
            ENDED_TTL,
            |at| *at,
        );
        self.retired.insert(*hash, Instant::now());
    }

    /// Whether the token hashed as `hash` was retired by a sign-out.
    pub fn token_retired(&self, hash: &[u8; 32]) -> bool {
        self.retired
            .get(hash)
            .is_some_and(|at| at.elapsed() < ENDED_TTL)
    }

    /// Cognito renewed a sign-in marked ended: it is alive after all (the
    /// refused token had been rotated by someone the relay did not see).
    pub fn session_alive(&self, proof: &SessionProof) {
        self.ended.remove(&proof.lineage());
        if !self.ended_elsewhere.is_empty() {
            self.ended_elsewhere.remove(&proof.lineage_hash());
        }
    }

    /// Brings a taken renewal's refresh token up to date: another socket may
    /// have rotated it since it was left, and handing out a dead one would
    /// lose the session.
    pub fn freshen(&self, pending: &mut Pending) {
        let Some(rt) = &pending.tokens.refresh_token else {
            return;
        };
        let newest = self
            .refresher
            .newest(rt, &pending.proof.lineage(), Holder::Socket);
        if &newest != rt {
            pending.tokens = Arc::new(TokenSet {
                refresh_token: Some(newest),
                ..(*pending.tokens).clone()
            });
        }
    }

    /// Whether the sign-in `proof` belongs to was ended: its tokens are not
    /// taken on their word until Cognito renews it.
    pub fn session_ended(&self, proof: &SessionProof) -> bool {
        let fresh = |at: &Instant| at.elapsed() < ENDED_TTL;
        self.ended
            .get(&proof.lineage())
            .is_some_and(|at| fresh(&at))
            || (!self.ended_elsewhere.is_empty()
                && self
                    .ended_elsewhere
                    .get(&proof.lineage_hash())
                    .is_some_and(|at| fresh(&at)))
    }

    /// An operator ended `subject`'s sessions (every sign-in made until
    /// now): this replica's sockets of it close with 4401 at once, the
    /// other replicas' through Redis, and every replica refuses its tokens
    /// of those sign-ins from now on. How many sockets closed here, and how
    /// far the end reached.
    pub async fn end_subject(&self, subject: &Subject) -> (usize, Reach) {
        // Cognito's clock sets `auth_time`; this replica's may lag it by up
        // to the leeway the relay allows tokens anyway.
        let at = crate::clock::now_secs() + self.config.jwt_leeway.as_secs();
        let hash = subject.hash();
        let closed = self.sockets.end_subject(&hash, at);
        let reach = self.cluster.end(hash, at).await;
        tracing::info!(
            closed,
            reach = reach.as_str(),
            "sessions ended by an operator"
        );
        (closed, reach)
    }

    /// Ready to take traffic: signing keys loaded, upstream resolvable, the
    /// ends said on other replicas known (with `--redis-url`, bounded by
    /// `cluster::SYNC_WAIT`), and not shutting down.
    pub fn is_ready(&self) -> bool {
        self.verifier.is_ready()
            && self.upstream_resolvable.load(Ordering::Acquire)
            && self.cluster.is_synced()
            && !self.draining.is_cancelled()
    }
}
