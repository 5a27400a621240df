//! What every request handler shares: the validated configuration and the
//! long-lived parts built from it — the [`Sessions`] authority, the
//! upstream clients, metrics, admission limits, shutdown signals — and the
//! [`App`] seam for everything that is not a relay route.
//!
//! It is wiring: it builds and holds, behind private fields, and decides
//! nothing about a session (that is [`Sessions`]'s alone) nor about a
//! request beyond the two questions every handler asks the same way (is
//! this browser on HTTPS, which IP is it).

use crate::config::Config;
use crate::fanout::Hub;
use crate::http_client::{self, HttpClient, Resolver};
use crate::limits::{ConnectionLimits, SessionRates};
use crate::metrics::Metrics;
use crate::policy::{Decision, LivePolicy, Op};
use crate::protocol::Channel;
use crate::response::Body;
use crate::sessions::Sessions;
use crate::upgrade;
use crate::upstream::UpstreamConfig;
use crate::verify::Claims;
use hyper::body::Incoming;
use hyper::{Request, Response};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What serves requests outside `<events-path>` on the public listener
/// (the demo pages, or the SSR app proxy). Without one they get 404.
pub trait App: Send + Sync + 'static {
    /// Answers `req`; `state` gives access to the relay's configuration,
    /// metrics and the session authority (to deliver renewals on
    /// responses, and to learn of sign-outs).
    fn respond<'a>(
        &'a self,
        state: &'a Arc<RelayState>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = Response<Body>> + Send + 'a>>;
}

/// Everything a request handler needs, shared by all connections.
pub struct RelayState {
    config: Config,
    /// The one authority on sessions.
    sessions: Sessions,
    upstream: UpstreamConfig,
    http: HttpClient,
    /// The client for AppSync's HTTP endpoint (pinned by `--appsync-address`).
    appsync_http: HttpClient,
    metrics: Arc<Metrics>,
    /// The browser leg's: frames up to `upgrade::max_client_frame`.
    client_limits: crate::ws::Limits,
    /// Fires when shutdown starts: readiness drops to 503.
    draining: CancellationToken,
    /// Fires after the drain delay: listeners stop accepting.
    stop_accepting: CancellationToken,
    /// Fires when open relays must close (1001 to the browser).
    shutdown: CancellationToken,
    /// Every relayed connection, so shutdown can wait for them.
    tracker: TaskTracker,
    /// Serves everything that is not a relay route.
    app: Option<Arc<dyn App>>,
    /// Connection admission limits.
    limits: Arc<ConnectionLimits>,
    /// Refresh and HTTP publish rates per user and per client IP.
    rates: Arc<SessionRates>,
    /// The AppSync real-time host resolved at the last check.
    upstream_resolvable: AtomicBool,
    /// Shared channels (`--shared-channel`); `None` when none are set.
    fanout: Option<Arc<Hub>>,
    /// Peers sending `X-Forwarded-For` without being trusted to.
    untrusted_forwarders: crate::forwarded::UntrustedForwarders,
    /// Upgrades refused in band (a 101, then `connection_error`) at once.
    in_band_refusals: Arc<tokio::sync::Semaphore>,
    /// `--channel-policy`; `None` when not set.
    policy: Option<LivePolicy>,
}

/// Most upgrades refused in band at once (each holds a socket for a few
/// seconds at most); beyond it a refusal is a plain HTTP 401.
const IN_BAND_REFUSALS: usize = 1024;

impl RelayState {
    pub fn new(config: Config, app: Option<Arc<dyn App>>) -> Arc<RelayState> {
        let http = http_client::build_tls(
            config.upstream_timeout,
            Resolver::default(),
            config.upstream_tls.clone(),
        );
        let metrics = Arc::new(Metrics::new());
        let shutdown = CancellationToken::new();
        let rates = Arc::new(SessionRates::new(&config.limits, config.token_cache_size));
        let sessions = Sessions::new(
            &config,
            http.clone(),
            metrics.clone(),
            rates.clone(),
            shutdown.clone(),
        );
        let client_limits =
            crate::ws::Limits::of(upgrade::max_client_frame(config.max_message_bytes));
        let upstream = UpstreamConfig {
            realtime_url: config.realtime_endpoint.to_string(),
            http_host: config.http_host.clone(),
            connect_timeout: config.upstream_timeout,
            limits: crate::ws::Limits::of(config.max_message_bytes),
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
        let policy = config
            .channel_policy
            .as_ref()
            .map(|(_, p)| LivePolicy::new(p.clone()));
        Arc::new(RelayState {
            policy,
            sessions,
            fanout,
            untrusted_forwarders: Default::default(),
            upstream,
            appsync_http,
            http,
            metrics,
            client_limits,
            draining: CancellationToken::new(),
            stop_accepting: CancellationToken::new(),
            shutdown,
            tracker: TaskTracker::new(),
            limits: ConnectionLimits::new(config.limits.clone()),
            rates,
            upstream_resolvable: AtomicBool::new(false),
            in_band_refusals: Arc::new(tokio::sync::Semaphore::new(IN_BAND_REFUSALS)),
            app,
            config,
        })
    }

    // === The parts, for the handlers that use them ===

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The session authority.
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// How AppSync's real-time endpoint is reached.
    pub fn upstream(&self) -> &UpstreamConfig {
        &self.upstream
    }

    /// The outbound HTTPS client (JWKS, Cognito).
    pub fn http(&self) -> &HttpClient {
        &self.http
    }

    /// The client for AppSync's HTTP endpoint.
    pub fn appsync_http(&self) -> &HttpClient {
        &self.appsync_http
    }

    /// What a browser's socket accepts: frames up to twice
    /// `--max-message-bytes` (see [`upgrade::max_client_frame`]).
    pub fn client_limits(&self) -> crate::ws::Limits {
        self.client_limits
    }

    /// Connection admission: total, per user, per IP.
    pub fn limits(&self) -> &Arc<ConnectionLimits> {
        &self.limits
    }

    /// Refresh and HTTP publish budgets.
    pub fn rates(&self) -> &SessionRates {
        &self.rates
    }

    /// Shared channels, when `--shared-channel` is set.
    pub fn fanout(&self) -> Option<&Arc<Hub>> {
        self.fanout.as_ref()
    }

    /// The channel policy's decision on `op` for `channel`, counted in
    /// `policy_decisions_total`; `None` without `--channel-policy`
    /// (everything goes to AppSync, as before).
    pub fn policy_decision(&self, op: Op, channel: &Channel, claims: &Claims) -> Option<Decision> {
        let live = self.policy.as_ref()?;
        let decision = live.get().decide(op, channel, claims);
        self.metrics
            .policy_decisions
            .with_label_values(&[op.name(), decision.label()])
            .inc();
        Some(decision)
    }

    /// The policy in force, to re-read or replace (reload, `check`).
    pub fn live_policy(&self) -> Option<&LivePolicy> {
        self.policy.as_ref()
    }

    /// What serves requests outside the relay's routes.
    pub fn app(&self) -> Option<&Arc<dyn App>> {
        self.app.as_ref()
    }

    /// Every relayed connection and tunnel, so a drain waits for them.
    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// Fires when shutdown starts (readiness drops).
    pub fn draining(&self) -> &CancellationToken {
        &self.draining
    }

    /// Fires after the drain delay: listeners stop accepting.
    pub fn stop_accepting(&self) -> &CancellationToken {
        &self.stop_accepting
    }

    /// Fires when open relays must close.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// A place for one more upgrade refused in band, if there is one.
    pub fn in_band_refusal(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.in_band_refusals.clone().try_acquire_owned().ok()
    }

    /// The upstream DNS watcher's verdict.
    pub fn set_upstream_resolvable(&self, ok: bool) -> bool {
        self.upstream_resolvable.swap(ok, Ordering::AcqRel)
    }

    // === What every handler asks the same way ===

    /// Whether the browser reached us over HTTPS, which decides the
    /// `Secure` attribute of cookies written back: our own TLS, an https
    /// `--public-origin`, every `--allowed-origin` being https (then every
    /// page that may use the relay was loaded over TLS, even when the hop
    /// in front of us is plain and sends no `X-Forwarded-Proto`), or
    /// `X-Forwarded-Proto: https` from a peer in `--trust-forwarded`.
    /// Never a header any client can send (such as `Origin`).
    pub fn is_secure(&self, headers: &hyper::HeaderMap, peer: SocketAddr) -> bool {
        self.config.tls.is_some()
            || self.config.public_https
            || self.config.origins.all_https()
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
        let cluster = self.sessions.readiness_note().unwrap_or_default();
        cluster.to_string() + &match self.untrusted_forwarders.recent(Instant::now()) {
            Some(ip) => format!(
                "warning: requests carrying X-Forwarded-For arrived from {ip}, which --trust-forwarded does not list: \
                 every client behind it shares its address for --max-connections-per-ip ({})\n",
                self.config.limits.max_connections_per_ip
            ),
            None => String::new(),
        }
    }

    /// Ready to take traffic: signing keys loaded and the ends said on
    /// other replicas known ([`Sessions::is_ready`]), upstream resolvable,
    /// and not shutting down.
    pub fn is_ready(&self) -> bool {
        self.sessions.is_ready()
            && self.upstream_resolvable.load(Ordering::Acquire)
            && !self.draining.is_cancelled()
    }
}
