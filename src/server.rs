//! Listeners and routing: the public listener (relay routes), the admin
//! listener (`/healthz`, `/readyz`, `/metrics`), the JWKS loader, and the
//! handle that shuts it all down.
//!
//! The public listener never serves admin routes and vice versa. Listeners
//! are passed in already bound, so tests bind `127.0.0.1:0` and `main`
//! binds the configured addresses.

use crate::config::Config;
use crate::cookies::PendingCookies;
use crate::error::{full, json_error, Body, RelayError};
use crate::http_client::{self, HttpClient};
use crate::limits::ConnectionLimits;
use crate::metrics::Metrics;
use crate::refresh::Refresher;
use crate::tls::{self, CertStore};
use crate::upgrade;
use crate::upstream::UpstreamConfig;
use crate::verify::{Verifier, VerifierConfig};
use crate::{handshake, publish};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a renewal made on an open socket waits for its browser: as long
/// as a connection can live upstream (AppSync closes at 24 h).
const PENDING_TTL: Duration = Duration::from_secs(24 * 3600);

/// What serves requests outside `<events-path>` on the public listener
/// (the demo pages; later the SSR app proxy). Without one they get 404.
pub trait App: Send + Sync + 'static {
    /// Serves `req`; `state` gives access to the relay's configuration,
    /// metrics and pending session renewals (to write them on responses).
    fn handle<'a>(
        &'a self,
        state: &'a Arc<RelayState>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<Body>> + Send + 'a>>;
}

/// Everything a request handler needs, shared by all connections.
pub struct RelayState {
    pub config: Config,
    pub verifier: Arc<Verifier>,
    pub refresher: Arc<Refresher>,
    /// Renewals made on open sockets, waiting for their browser.
    pub pending: PendingCookies,
    pub upstream: UpstreamConfig,
    pub http: HttpClient,
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
    /// The AppSync real-time host resolved at the last check.
    pub upstream_resolvable: std::sync::atomic::AtomicBool,
}

impl RelayState {
    pub fn new(config: Config, app: Option<Arc<dyn App>>) -> Arc<RelayState> {
        let http = http_client::build(config.upstream_timeout);
        let verifier = Verifier::new(
            VerifierConfig {
                issuer: config.issuer.clone(),
                jwks_url: config.jwks_url.clone(),
                client_id: config.client_id.clone(),
                token_use: config.token_use,
                leeway: config.jwt_leeway,
                jwks_refetch_interval: config.jwks_refetch_interval,
                fetch_timeout: config.upstream_timeout,
                cache_capacity: config.token_cache_size,
            },
            http.clone(),
        );
        let refresher = Refresher::new(config.refresh.clone(), http.clone());
        let pending = PendingCookies::new(config.token_cache_size, PENDING_TTL);
        let ws_config = upgrade::ws_config(config.max_message_bytes);
        let upstream = UpstreamConfig {
            realtime_url: config.realtime_endpoint.to_string(),
            http_host: config.http_host.clone(),
            connect_timeout: config.upstream_timeout,
            ws_config,
            tls: http_client::tls_client_config(),
        };
        Arc::new(RelayState {
            verifier,
            refresher,
            pending,
            upstream,
            http,
            metrics: Arc::new(Metrics::new()),
            ws_config,
            draining: CancellationToken::new(),
            stop_accepting: CancellationToken::new(),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            limits: ConnectionLimits::new(config.limits.clone()),
            upstream_resolvable: std::sync::atomic::AtomicBool::new(false),
            app,
            config,
        })
    }

    /// Whether the request reached the browser over HTTPS, which decides the
    /// `Secure` attribute of cookies written back: our own TLS, an allowed
    /// `https://` Origin (the page is on https), or `X-Forwarded-Proto:
    /// https` from a peer in `--trust-forwarded`.
    pub fn is_secure(&self, headers: &hyper::HeaderMap, peer: SocketAddr) -> bool {
        if self.config.tls.is_some() {
            return true;
        }
        let https_origin = headers
            .get(hyper::header::ORIGIN)
            .and_then(|o| o.to_str().ok())
            .is_some_and(|o| o.starts_with("https://"));
        let forwarded_https = self
            .config
            .trust_forwarded
            .iter()
            .any(|n| n.contains(peer.ip()))
            && headers
                .get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| {
                    v.split(',')
                        .next()
                        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
                });
        https_origin || forwarded_https
    }

    /// The client's IP: the TCP peer, or — when the peer is a trusted proxy
    /// (`--trust-forwarded`) — the rightmost `X-Forwarded-For` entry that is
    /// not itself trusted (entries further left are client-controlled).
    pub fn client_ip(&self, headers: &hyper::HeaderMap, peer: SocketAddr) -> std::net::IpAddr {
        let trusted =
            |ip: std::net::IpAddr| self.config.trust_forwarded.iter().any(|n| n.contains(ip));
        if !trusted(peer.ip()) {
            return peer.ip();
        }
        let chain: Vec<std::net::IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|ip| ip.trim().parse().ok())
            .collect();
        chain
            .into_iter()
            .rev()
            .find(|ip| !trusted(*ip))
            .unwrap_or(peer.ip())
    }

    /// Ready to take traffic: signing keys loaded and not shutting down.
    pub fn is_ready(&self) -> bool {
        self.verifier.is_ready()
            && self
                .upstream_resolvable
                .load(std::sync::atomic::Ordering::Acquire)
            && !self.draining.is_cancelled()
    }
}

/// A running relay.
pub struct RelayHandle {
    pub state: Arc<RelayState>,
    pub public_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    tasks: TaskTracker,
}

impl RelayHandle {
    /// Waits until the first JWKS load succeeded (or `timeout` passes).
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.state.is_ready() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            // Readiness flips inside the loader task; a short poll is simpler
            // than plumbing a notifier and costs nothing at start-up.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops accepting, closes every relayed socket with 1001 once
    /// `drain_timeout` has passed, and waits for all tasks to end.
    pub async fn shutdown(self, drain_delay: Duration, drain_timeout: Duration) {
        let state = self.state.clone();
        // Readiness drops at once; the listeners keep serving for the drain
        // delay so load balancers see the 503 and stop sending new clients.
        state.draining.cancel();
        tracing::info!(
            drain_delay_ms = drain_delay.as_millis() as u64,
            "draining: /readyz is 503"
        );
        tokio::time::sleep(drain_delay).await;
        state.stop_accepting.cancel();
        state.tracker.close();
        self.tasks.close();
        let relays = state.tracker.clone();
        if tokio::time::timeout(drain_timeout, relays.wait())
            .await
            .is_err()
        {
            tracing::info!("drain timeout reached; closing open relays with 1001");
        }
        state.shutdown.cancel();
        relays.wait().await;
        self.tasks.wait().await;
    }
}

/// Starts the relay on already-bound listeners.
pub fn spawn(
    config: Config,
    public: TcpListener,
    admin: TcpListener,
) -> std::io::Result<RelayHandle> {
    spawn_with_app(config, public, admin, None)
}

/// Starts the relay with `app` serving every non-relay route.
pub fn spawn_with_app(
    config: Config,
    public: TcpListener,
    admin: TcpListener,
    app: Option<Arc<dyn App>>,
) -> std::io::Result<RelayHandle> {
    let public_addr = public.local_addr()?;
    let admin_addr = admin.local_addr()?;
    // `--app-upstream` makes the relay front the SSR app.
    let app = app.or_else(|| {
        config.app_upstream.as_ref().map(|u| {
            let mut proxy = crate::proxy::ProxyConfig::new(u.url.clone());
            proxy.connect_timeout = u.connect_timeout;
            proxy.response_timeout = u.response_timeout;
            Arc::new(crate::proxy::AppProxy::new(proxy)) as Arc<dyn App>
        })
    });
    let tls = match &config.tls {
        Some(source) => {
            let store = CertStore::load(source.clone()).map_err(std::io::Error::other)?;
            let acceptor = TlsAcceptor::from(
                tls::server_config(store.clone()).map_err(std::io::Error::other)?,
            );
            Some((store, acceptor))
        }
        None => None,
    };
    let state = RelayState::new(config, app);
    let tasks = TaskTracker::new();
    tasks.spawn(load_jwks(state.clone()));
    tasks.spawn(watch_upstream_dns(state.clone()));
    let acceptor = match tls {
        Some((store, acceptor)) => {
            tasks.spawn(store.watch(state.draining.clone()));
            Some(acceptor)
        }
        None => None,
    };
    tasks.spawn(accept_loop(
        public,
        state.clone(),
        Listener::Public,
        acceptor,
    ));
    tasks.spawn(accept_loop(admin, state.clone(), Listener::Admin, None));
    Ok(RelayHandle {
        state,
        public_addr,
        admin_addr,
        tasks,
    })
}

/// Resolves the AppSync real-time host now and every 10 s: readiness
/// follows it, so a pod whose DNS is broken takes no new traffic.
async fn watch_upstream_dns(state: Arc<RelayState>) {
    let url = &state.config.realtime_endpoint;
    let host = url.host_str().unwrap_or_default().to_string();
    let port = url.port_or_known_default().unwrap_or(443);
    loop {
        let lookup = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::lookup_host((host.as_str(), port)),
        )
        .await;
        let ok = match lookup {
            Ok(Ok(mut addrs)) => addrs.next().is_some(),
            _ => false,
        };
        let was = state
            .upstream_resolvable
            .swap(ok, std::sync::atomic::Ordering::AcqRel);
        if was != ok {
            if ok {
                tracing::info!(%host, "upstream host resolves");
            } else {
                tracing::warn!(%host, "upstream host does not resolve; not ready");
            }
        }
        tokio::select! {
            _ = state.draining.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
    }
}

/// Loads the JWKS until it succeeds, backing off; readiness waits for it.
async fn load_jwks(state: Arc<RelayState>) {
    let mut delay = Duration::from_millis(250);
    loop {
        let attempt = tokio::select! {
            _ = state.draining.cancelled() => return,
            r = state.verifier.load_jwks() => r,
        };
        match attempt {
            Ok(keys) => {
                state.metrics.jwks_fetches.with_label_values(&["ok"]).inc();
                tracing::info!(keys, jwks_url = %state.config.jwks_url, "signing keys loaded");
                return;
            }
            Err(e) => {
                state
                    .metrics
                    .jwks_fetches
                    .with_label_values(&["error"])
                    .inc();
                tracing::warn!(error = %e, jwks_url = %state.config.jwks_url, retry_in_ms = delay.as_millis() as u64, "JWKS not loaded yet; not ready");
            }
        }
        tokio::select! {
            _ = state.draining.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Listener {
    Public,
    Admin,
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<RelayState>,
    kind: Listener,
    tls: Option<TlsAcceptor>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = state.stop_accepting.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, state, kind, peer).await,
                Some(acceptor) => {
                    // The TLS handshake shares the request-head deadline:
                    // a client that stalls in either is dropped.
                    let deadline = state.config.limits.handshake_timeout;
                    match tokio::time::timeout(deadline, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => serve_connection(tls_stream, state, kind, peer).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

/// Serves HTTP/1.1 (with upgrades) on one accepted connection.
async fn serve_connection<S>(io: S, state: Arc<RelayState>, kind: Listener, peer: SocketAddr)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (handshake_timeout, max_header_bytes) = (
        state.config.limits.handshake_timeout,
        state.config.limits.max_header_bytes,
    );
    let service = service_fn(move |req| {
        let state = state.clone();
        async move {
            Ok::<_, Infallible>(match kind {
                Listener::Public => route(state, req, peer).await,
                Listener::Admin => admin(&state, &req),
            })
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(handshake_timeout)
        .max_buf_size(max_header_bytes);
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

async fn route(state: Arc<RelayState>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let path = req.uri().path();
    if path == state.config.realtime_path {
        if req.method() == Method::GET {
            return handshake::handle(state, req, peer).await;
        }
        return RelayError::MethodNotAllowed.into_response();
    }
    if path == state.config.events_path {
        if req.method() == Method::POST {
            return publish::handle(state, req, peer).await;
        }
        return RelayError::MethodNotAllowed.into_response();
    }
    match &state.app {
        Some(app) => app.handle(&state, req, peer).await,
        None => RelayError::NotFound.into_response(),
    }
}

/// The admin listener: `/healthz` (alive), `/readyz` (keys loaded, not
/// draining), `/metrics` (Prometheus text).
fn admin(state: &RelayState, req: &Request<Incoming>) -> Response<Body> {
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if state.is_ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        "/metrics" => {
            let mut resp = text(StatusCode::OK, state.metrics.render());
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            resp
        }
        _ => json_error(StatusCode::NOT_FOUND, "not_found", "not_found"),
    }
}

fn text(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
