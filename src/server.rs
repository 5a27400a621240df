//! Listeners and routing: the public listener (relay routes, then the app),
//! the admin listener ([`crate::admin`]), TLS on accept, and the handle
//! that shuts it all down.
//!
//! The public listener never serves admin routes and vice versa. Listeners
//! are passed in already bound, so tests bind `127.0.0.1:0` and `main`
//! binds the configured addresses.

use crate::config::Config;
use crate::error::RelayError;
use crate::proxy::{AppProxy, ProxyConfig};
use crate::response::Body;
use crate::state::{App, RelayState};
use crate::tls::{self, CertStore};
use crate::{admin, handshake, publish};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

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
        state.draining().cancel();
        state.metrics().draining.set(1);
        tracing::info!(
            drain_delay_ms = drain_delay.as_millis() as u64,
            "draining: /readyz is 503"
        );
        tokio::time::sleep(drain_delay).await;
        state.stop_accepting().cancel();
        state.tracker().close();
        self.tasks.close();
        let relays = state.tracker().clone();
        if tokio::time::timeout(drain_timeout, relays.wait())
            .await
            .is_err()
        {
            tracing::info!("drain timeout reached; closing open relays with 1001");
        }
        state.shutdown().cancel();
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
            let mut proxy = ProxyConfig::new(u.target.clone());
            proxy.connect_timeout = u.connect_timeout;
            proxy.response_timeout = u.response_timeout;
            proxy.strip_headers = u.strip_headers.clone();
            Arc::new(AppProxy::new(proxy)) as Arc<dyn App>
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
    tasks.spawn(admin::load_jwks(state.clone()));
    tasks.spawn(admin::watch_upstream_dns(state.clone()));
    tasks.spawn(admin::watch_channel_policy(state.clone()));
    tasks.spawn(admin::apply_remote_ends(state.clone()));
    let acceptor = match tls {
        Some((store, acceptor)) => {
            tasks.spawn(store.watch(state.draining().clone()));
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
            _ = state.stop_accepting().cancelled() => return,
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
                    let deadline = state.config().limits.handshake_timeout;
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
        state.config().limits.handshake_timeout,
        state.config().limits.max_header_bytes,
    );
    let service = service_fn(move |req| {
        let state = state.clone();
        async move {
            Ok::<_, Infallible>(match kind {
                Listener::Public => route(state, req, peer).await,
                Listener::Admin => admin::respond(&state, req).await,
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
    if path == state.config().realtime_path {
        if req.method() == Method::GET {
            return handshake::respond(state, req, peer).await;
        }
        return RelayError::MethodNotAllowed.into_response();
    }
    if path == state.config().events_path {
        if req.method() == Method::POST {
            return publish::respond(state, req, peer).await;
        }
        return RelayError::MethodNotAllowed.into_response();
    }
    match &state.app() {
        Some(app) => app.respond(&state, req, peer).await,
        None => RelayError::NotFound.into_response(),
    }
}
