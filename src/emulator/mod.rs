//! A strict, in-process stand-in for an AWS AppSync Events API: the
//! real-time WebSocket endpoint (`GET /event/realtime`) and the HTTP publish
//! endpoint (`POST /event`), written from the facts in docs/PROTOCOL.md. Every test and
//! benchmark talks to this instead of AWS, so it must reject whatever AWS
//! rejects: it checks authorization on the handshake and on every message,
//! enforces id and channel rules and publish limits, and fans published
//! events out to matching (including wildcard) subscriptions.
//!
//! It owns its listener, its connections and its subscription registry. It
//! must never log or echo a credential, never `unwrap` on what a peer sends,
//! and never let a slow subscriber stall a publisher.
//!
//! # Layout
//!
//! - `mod.rs`: configuration, the accept loop, routing, and the
//!   [`EmulatorHandle`] tests use to inspect and disturb the emulator.
//! - `config`: [`EmulatorConfig`] and its defaults.
//! - `shared`: the state every connection shares, and AppSync-shaped error
//!   responses.
//! - [`auth`]: the yes/no decision on an authorization object.
//! - `handshake`: the WebSocket handshake and its two refusal styles.
//! - `realtime`: the per-connection message loop.
//! - `publish`: `POST /event` and the event-list rules shared with WebSocket
//!   publish.
//! - `registry`: connections, subscriptions, fan-out, the credential ring.
//! - [`meter`]: the operations meter (what AWS would bill), served as
//!   Prometheus text on `--admin-listen`.
//!
//! # Behaviour choices where AWS documents nothing
//!
//! - `connection_init` is optional (as in AppSync's GraphQL real-time
//!   protocol); `ka` frames start only after `connection_ack`.
//! - Subscribe/publish use the top-level `channel`/`events`/`authorization`
//!   fields only; Amplify's duplicate `payload` object is ignored.
//! - A subscriber whose outbound queue is full is closed with 1008 rather
//!   than slowing the publisher down.
//! - After [`EmulatorConfig::max_connection_duration`] (24 h, AppSync's
//!   limit) a connection is closed with 1000.
//! - A handshake with bad authorization gets HTTP 401 on the upgrade;
//!   [`EmulatorHandle::refuse_after_upgrade`] switches to the other style
//!   seen in the wild (101, then `connection_error` and close 4401).

mod admin;
pub mod auth;
mod config;
mod handshake;
pub mod meter;
mod publish;
mod realtime;
mod registry;
mod shared;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub use auth::{AuthFailure, EmulatorAuth, TokenVerifier, VerifyFuture};
pub use config::{
    EmulatorConfig, DEFAULT_AUTH_LOG_CAPACITY, DEFAULT_DRAIN_TIMEOUT, DEFAULT_KA_INTERVAL,
    DEFAULT_MAX_CONNECTION_DURATION, DEFAULT_MAX_HTTP_BODY_BYTES, DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_OUTBOUND_QUEUE,
};
pub use registry::SLOW_CONSUMER_CLOSE_CODE;

use registry::CloseCmd;
use shared::{error_response, Shared};

/// Path of the real-time WebSocket endpoint.
pub const REALTIME_PATH: &str = "/event/realtime";
/// Path of the HTTP publish endpoint.
pub const PUBLISH_PATH: &str = "/event";

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop
/// does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Control of a running emulator, for tests. Dropping it shuts the emulator
/// down (without waiting); [`EmulatorHandle::shutdown`] also waits.
pub struct EmulatorHandle {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

// === impl EmulatorHandle ===

impl EmulatorHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http://ADDR/event` (`https://` with TLS), the emulated HTTP endpoint.
    pub fn http_endpoint(&self) -> String {
        let scheme = if self.shared.cfg.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}{}", self.local_addr, PUBLISH_PATH)
    }

    /// `ws://ADDR/event/realtime` (`wss://` with TLS), the emulated
    /// real-time endpoint.
    pub fn realtime_endpoint(&self) -> String {
        let scheme = if self.shared.cfg.tls.is_some() {
            "wss"
        } else {
            "ws"
        };
        format!("{scheme}://{}{}", self.local_addr, REALTIME_PATH)
    }

    /// Every credential value (API key or JWT) the emulator was asked to
    /// check, oldest first, from handshakes, messages and HTTP publishes,
    /// whether or not it was accepted. Bounded by
    /// [`EmulatorConfig::auth_log_capacity`].
    pub fn seen_authorizations(&self) -> Vec<String> {
        self.shared.auth_log.snapshot()
    }

    pub fn clear_seen_authorizations(&self) {
        self.shared.auth_log.clear();
    }

    /// Refuses `credential` from now on wherever it is shown, as AppSync
    /// does with a token revoked behind the relay's back.
    pub fn revoke_credential(&self, credential: &str) {
        self.shared
            .revoked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(credential.to_string());
    }

    /// Chooses how a handshake with bad authorization is refused: HTTP 401
    /// on the upgrade (the default), or — as MiniStack does — a 101
    /// followed by `connection_error` (`UnauthorizedException`) and close
    /// 4401. AWS documents neither; the relay must handle both.
    pub fn refuse_after_upgrade(&self, on: bool) {
        self.shared
            .refuse_after_upgrade
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Refuses subscriptions by the user `sub` (the token's claim) to
    /// `channel_prefix` and everything below it, as a namespace's
    /// `onSubscribe` handler can: `subscribe_error` with
    /// `UnauthorizedException`, after the authorization itself passed.
    pub fn refuse_subscriptions(&self, sub: &str, channel_prefix: &str) {
        self.shared
            .subscribe_rules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((sub.to_owned(), channel_prefix.to_owned()));
    }

    /// Refuses WebSocket publishes by `sub` to `channel_prefix` and below,
    /// as a namespace's `onPublish` handler can: `publish_error` with
    /// `UnauthorizedException`.
    pub fn refuse_publishes(&self, sub: &str, channel_prefix: &str) {
        self.shared
            .publish_rules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((sub.to_owned(), channel_prefix.to_owned()));
    }

    /// Open WebSocket connections.
    pub fn connection_count(&self) -> usize {
        self.shared.registry.connection_count()
    }

    /// Active subscriptions over all connections.
    pub fn subscription_count(&self) -> usize {
        self.shared.registry.subscription_count()
    }

    /// The operations meter as Prometheus text, as `GET /metrics` on the
    /// admin listener serves it.
    pub fn metrics_text(&self) -> String {
        self.shared.registry.meter().render()
    }

    /// Operations of one `kind` so far (the kinds are in [`meter::KINDS`]).
    pub fn operations(&self, kind: &str) -> u64 {
        self.shared.registry.meter().operations(kind)
    }

    /// Serves `GET /metrics` on `listener` until the emulator shuts down.
    pub fn serve_admin(&self, listener: TcpListener) {
        tokio::spawn(admin::serve(self.shared.clone(), listener));
    }

    /// Closes every WebSocket connection with a close frame carrying `code`.
    pub fn close_all(&self, code: u16) {
        self.shared.registry.close_all(CloseCmd::Frame {
            code,
            reason: String::new(),
        });
    }

    /// Drops every WebSocket connection's TCP stream without a close frame,
    /// as a crash or network cut would.
    pub fn abort_all(&self) {
        self.shared.registry.close_all(CloseCmd::Abort);
    }

    /// Stops accepting, closes every connection with 1001 and waits (up to
    /// [`EmulatorConfig::drain_timeout`]) for them to finish.
    pub async fn shutdown(mut self) {
        self.shared.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for EmulatorHandle {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}

/// Starts the emulator on `listener` in a background task. Tests bind
/// `127.0.0.1:0` and pass the listener in, so the port is known and ready
/// before this returns.
pub async fn spawn(listener: TcpListener, cfg: EmulatorConfig) -> EmulatorHandle {
    let local_addr = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let shared = Shared::new(cfg);
    let task = tokio::spawn(serve(shared.clone(), listener));
    EmulatorHandle {
        local_addr,
        shared,
        task: Some(task),
    }
}

/// Runs the emulator on `listener` until `shutdown` completes, then closes
/// every connection (1001) and returns once they are done or
/// [`EmulatorConfig::drain_timeout`] has passed. For `appsync-relay emulate`.
/// With `admin`, `GET /metrics` there serves the operations meter.
pub async fn run(
    listener: TcpListener,
    admin: Option<TcpListener>,
    cfg: EmulatorConfig,
    shutdown: impl Future<Output = ()>,
) {
    let shared = Shared::new(cfg);
    if let Some(admin) = admin {
        tokio::spawn(admin::serve(shared.clone(), admin));
    }
    let token = shared.shutdown.clone();
    let serving = serve(shared, listener);
    tokio::pin!(serving);
    tokio::select! {
        () = &mut serving => {}
        () = shutdown => {
            token.cancel();
            serving.await;
        }
    }
}

/// The accept loop. Returns after shutdown once connections have drained.
async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "emulator: listening");
    }
    loop {
        let accepted = tokio::select! {
            () = shared.shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _peer)) => {
                // Frames are small and latency matters (benchmarks run against this).
                let _ = stream.set_nodelay(true);
                match shared.cfg.tls.clone() {
                    None => {
                        shared.tracker.spawn(serve_http(shared.clone(), stream));
                    }
                    Some(tls) => {
                        shared.tracker.spawn(serve_tls(shared.clone(), stream, tls));
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, "emulator: accept failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
        }
    }
    drop(listener);
    shared.tracker.close();
    if tokio::time::timeout(shared.cfg.drain_timeout, shared.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("emulator: connections still open after the drain timeout");
    }
}

/// The TLS handshake (bounded like a request head), then HTTP.
async fn serve_tls(shared: Arc<Shared>, stream: TcpStream, tls: Arc<rustls::ServerConfig>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => serve_http(shared, stream).await,
        Ok(Err(error)) => tracing::debug!(%error, "emulator: TLS handshake failed"),
        Err(_) => tracing::debug!("emulator: TLS handshake timed out"),
    }
}

/// Serves HTTP/1.1 on one connection; a WebSocket upgrade continues in its
/// own task (see `realtime`).
async fn serve_http<S>(shared: Arc<Shared>, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let shutdown = shared.shutdown.clone();
    let service = service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(route(shared, req).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let conn = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "emulator: HTTP connection ended with an error");
    }
}

async fn route(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        REALTIME_PATH => handshake::handshake(shared, req).await,
        PUBLISH_PATH => publish::respond(shared, req).await,
        _ => error_response(StatusCode::NOT_FOUND, "NotFoundException", "no such route"),
    }
}
