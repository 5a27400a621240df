//! The life of one relayed connection after both handshakes: pumping frames
//! both ways, keeping the session's token fresh, re-dialling AppSync when
//! the upstream connection drops, and closing both legs with the right code.
//!
//! One task per connection owns both sockets and waits, in one `select!`,
//! for a browser frame, an upstream frame, or its next deadline (token
//! renewal, max age, idle):
//! - a **browser frame** is validated and stripped of any auth it carries
//!   ([`rewrite::prepare_client_frame`]); the *current* token is injected as
//!   it is sent; bad frames are answered locally;
//! - an **upstream frame** is forwarded to the browser as the same bytes it
//!   arrived in (no parse, no copy); acknowledgements of replayed
//!   subscriptions are swallowed;
//! - on an upstream drop the task re-dials with jittered backoff, replays
//!   `connection_init` and every tracked subscription (id → channel), and
//!   keeps the browser's socket open.
//!
//! While a frame is being written to one side, neither side is read: each
//! peer's TCP window is the only buffer, so a slow peer slows its own
//! traffic instead of growing the relay's memory (measured: dropping the
//! per-connection channel and stream split took idle cost from 21.8 to
//! 16.5 KiB and removed the split lock from the hot path). Cold paths
//! (re-dial, renewal, closing) are boxed so they do not enlarge every idle
//! connection's task. Pings are answered by tungstenite on each leg. When
//! the connection ends, each leg still open
//! gets a close frame with the code DESIGN.md §3 assigns, each bounded by a
//! short timeout. This module never logs frame contents or tokens.

use crate::authenticate::{forwarded_token, now_secs, SessionState};
use crate::limits::TokenBucket;
use crate::metrics::frame_type_label;
use crate::refresh::{RefreshError, RefreshedTokens};
use crate::rewrite::{
    prepare_client_frame, render, subscribe_frame, FrameKind, Prepared, UpstreamAuth,
};
use crate::server::RelayState;
use crate::upstream::{self, UpstreamError, UpstreamSocket};
use futures_util::{SinkExt, StreamExt};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

/// Close codes the relay sends to the browser (DESIGN.md §3).
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const UNSUPPORTED_DATA: u16 = 1003;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
    pub const UPSTREAM_UNAVAILABLE: u16 = 1013;
    pub const REAUTHENTICATE: u16 = 4000;
    pub const SESSION_ENDED: u16 = 4401;
}

/// How long a closing handshake may take on each leg.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a re-dialled upstream may take to acknowledge `connection_init`.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(10);
/// Retry interval for a refresh that failed for a transient reason.
const REFRESH_RETRY: Duration = Duration::from_secs(5);

/// Why the relay ended, and which close each leg gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The browser sent a close frame with this code.
    ClientClosed(u16),
    /// The browser's socket ended without a close frame, or errored.
    ClientGone,
    ClientBinary,
    ClientTooBig,
    ClientProtocol,
    /// A text frame that is not UTF-8.
    ClientBadData,
    /// Upstream sent a close frame with this code and it was not re-dialled.
    UpstreamClosed(u16),
    /// Upstream went away and could not be re-dialled.
    UpstreamGone,
    /// The relay is shutting down.
    Draining,
    /// The session cannot go on (refresh refused, no refresh token, max age).
    SessionEnded(&'static str),
    /// The client must reconnect so the handshake can renew and write cookies.
    Reauthenticate,
    /// Nothing but keep-alives for `--idle-timeout`.
    Idle,
}

impl Ending {
    /// `(code to the browser, code to upstream)`; `None` when that leg is
    /// already gone and there is nobody to tell.
    pub fn close_codes(&self) -> (Option<u16>, Option<u16>) {
        match self {
            // Echo a browser's close upstream; tungstenite answers the browser.
            Ending::ClientClosed(code) => (None, Some(sendable(*code).unwrap_or(close::NORMAL))),
            Ending::ClientGone => (None, Some(close::GOING_AWAY)),
            Ending::ClientBinary => (Some(close::UNSUPPORTED_DATA), Some(close::NORMAL)),
            Ending::ClientTooBig => (Some(close::TOO_BIG), Some(close::NORMAL)),
            Ending::ClientProtocol => (Some(close::PROTOCOL_ERROR), Some(close::NORMAL)),
            Ending::ClientBadData => (Some(close::INVALID_PAYLOAD), Some(close::NORMAL)),
            Ending::UpstreamClosed(code) => (Some(map_upstream_close(*code)), None),
            Ending::UpstreamGone => (Some(close::UPSTREAM_UNAVAILABLE), None),
            Ending::Draining => (Some(close::GOING_AWAY), Some(close::GOING_AWAY)),
            Ending::SessionEnded(_) => (Some(close::SESSION_ENDED), Some(close::NORMAL)),
            Ending::Reauthenticate => (Some(close::REAUTHENTICATE), Some(close::NORMAL)),
            Ending::Idle => (Some(close::NORMAL), Some(close::NORMAL)),
        }
    }
}

/// Codes that may appear in a close frame on the wire (RFC 6455 §7.4).
fn sendable(code: u16) -> Option<u16> {
    match code {
        1000..=1003 | 1007..=1014 | 3000..=4999 => Some(code),
        _ => None,
    }
}

/// An upstream close becomes the browser's: a normal end stays normal,
/// application codes pass through, and anything that means "AppSync went
/// away" becomes 1013 so the client retries later.
fn map_upstream_close(code: u16) -> u16 {
    match code {
        close::NORMAL => close::NORMAL,
        1003 | 1007 | 1008 | 1009 | 1011 | 3000..=4999 => code,
        _ => close::UPSTREAM_UNAVAILABLE,
    }
}

/// Whether an upstream close is worth re-dialling: yes for going-away,
/// restarts, normal ends (AppSync's 24 h cap) and abnormal drops; no for
/// codes that say this connection's traffic itself was refused.
fn redialable(code: u16) -> bool {
    !matches!(code, 1003 | 1007 | 1008 | 1009 | 3000..=4999)
}

fn reason_for(code: u16) -> &'static str {
    match code {
        close::GOING_AWAY => "going away",
        close::UNSUPPORTED_DATA => "binary frames are not supported",
        close::INVALID_PAYLOAD => "text frame is not UTF-8",
        close::TOO_BIG => "message too big",
        close::UPSTREAM_UNAVAILABLE => "upstream unavailable",
        close::REAUTHENTICATE => "reauthenticate",
        close::SESSION_ENDED => "session ended",
        _ => "",
    }
}

fn close_frame(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }))
}

/// Per-connection cache of `frames_total` handles: labels come from a small
/// fixed set, so a short linear scan beats the
/// registry's hash-and-lock lookup on every frame.
#[derive(Default)]
struct FrameCounters(Vec<(&'static str, &'static str, prometheus::IntCounter)>);

impl FrameCounters {
    fn get(
        &mut self,
        metrics: &crate::metrics::Metrics,
        direction: &'static str,
        label: &'static str,
    ) -> &prometheus::IntCounter {
        let found = self
            .0
            .iter()
            .position(|(d, l, _)| *d == direction && *l == label);
        let i = match found {
            Some(i) => i,
            None => {
                let c = metrics.frames.with_label_values(&[direction, label]);
                self.0.push((direction, label, c));
                self.0.len() - 1
            }
        };
        &self.0[i].2
    }
}

/// Counts what one relay moved, for the connection's closing log line.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub frames_to_upstream: u64,
    pub frames_to_client: u64,
    pub local_replies: u64,
    pub bytes_to_upstream: u64,
    pub bytes_to_client: u64,
    pub refreshes: u64,
    pub redials: u64,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub ending: Ending,
    /// Close code sent to the browser (or echoed to its close).
    pub client_close: Option<u16>,
    pub stats: Stats,
}

/// Everything the relay needs about the user besides the sockets.
pub struct ConnectionContext {
    pub state: Arc<RelayState>,
    /// The token (and AppSync host) upstream was opened with.
    pub auth: UpstreamAuth,
    /// `exp` and `iat` of that token.
    pub expires_at: u64,
    pub issued_at: Option<u64>,
    pub session: SessionState,
}

/// When to renew a token: `refresh_before` ahead of expiry, but never
/// earlier than half-way through its life (short-lived tokens would
/// otherwise be renewed in a loop).
pub fn refresh_due_at(expires_at: u64, issued_at: Option<u64>, refresh_before: Duration) -> u64 {
    let before = refresh_before.as_secs();
    let half_life = issued_at
        .map(|iat| expires_at.saturating_sub(iat) / 2)
        .unwrap_or(before);
    expires_at.saturating_sub(before.min(half_life))
}

/// The monotonic instant at which the wall clock reads `unix_secs`.
fn instant_at(unix_secs: u64) -> Instant {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Instant::now() + Duration::from_secs(unix_secs).saturating_sub(now)
}

/// Relays until either side ends or the relay drains, then closes both legs.
pub async fn run<C>(
    client: WebSocketStream<C>,
    upstream: UpstreamSocket,
    ctx: ConnectionContext,
) -> Outcome
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let mut client = client;
    let shutdown = ctx.state.shutdown.clone();
    let publish_rate = ctx.state.config.limits.publish_rate;
    let max_age_at = ctx
        .state
        .config
        .max_session_age
        .map(|age| Instant::now() + age);
    let mut side = UpstreamSide {
        due: instant_at(refresh_due_at(
            ctx.expires_at,
            ctx.issued_at,
            ctx.state.config.refresh_before,
        )),
        state: ctx.state,
        auth: ctx.auth,
        expires_at: ctx.expires_at,
        session: ctx.session,
        rotated: false,
        upstream,
        subscriptions: HashMap::new(),
        replaying: HashSet::new(),
        init_seen: false,
        max_age_at,
        publish_bucket: TokenBucket::new(publish_rate),
        last_activity: Instant::now(),
        stats: Stats::default(),
    };

    let ending = {
        let pump = side.pump(&mut client);
        // Shutdown is polled last: it fires once per process, the pump on
        // every frame.
        tokio::select! {
            biased;
            e = pump => e,
            _ = shutdown.cancelled() => Ending::Draining,
        }
    };

    if let Ending::SessionEnded(reason) = &ending {
        side.state
            .metrics
            .sessions_ended
            .with_label_values(&[reason])
            .inc();
    }
    if ending == Ending::Reauthenticate {
        side.state
            .metrics
            .sessions_ended
            .with_label_values(&["reauthenticate"])
            .inc();
    }
    let (to_client, to_upstream) = ending.close_codes();
    // Boxed: closing is a cold path, and inlined it would enlarge every
    // idle connection's task.
    Box::pin(close_legs(
        &ending,
        to_client,
        to_upstream,
        &mut client,
        &mut side,
    ))
    .await;

    Outcome {
        client_close: to_client.or(match ending {
            Ending::ClientClosed(code) => Some(code),
            _ => None,
        }),
        ending,
        stats: side.stats,
    }
}

/// Sends each leg still open its close frame (see [`Ending::close_codes`]),
/// each bounded by [`CLOSE_TIMEOUT`].
async fn close_legs<C>(
    ending: &Ending,
    to_client: Option<u16>,
    mut to_upstream: Option<u16>,
    client: &mut WebSocketStream<C>,
    side: &mut UpstreamSide,
) where
    C: AsyncRead + AsyncWrite + Unpin,
{
    if *ending == Ending::Draining {
        // Close upstream first and pass on whatever it still sends until its
        // close arrives: data AppSync already accepted for this browser is
        // delivered before the browser's 1001.
        let upstream = &mut side.upstream;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            if upstream
                .send(close_frame(close::GOING_AWAY, ""))
                .await
                .is_err()
            {
                return;
            }
            while let Some(Ok(msg)) = upstream.next().await {
                match msg {
                    Message::Text(_) | Message::Binary(_) => {
                        side.stats.frames_to_client += 1;
                        if client.send(msg).await.is_err() {
                            return;
                        }
                    }
                    Message::Close(_) => return,
                    _ => {}
                }
            }
        })
        .await;
        to_upstream = None;
    }
    let closing_client = async {
        match to_client {
            Some(code) => {
                let _ = client.send(close_frame(code, reason_for(code))).await;
            }
            // Flushes tungstenite's automatic reply to the browser's close.
            None => {
                let _ = SinkExt::close(client).await;
            }
        }
    };
    let upstream = &mut side.upstream;
    let closing_upstream = async {
        if let Some(code) = to_upstream {
            let _ = upstream.send(close_frame(code, "")).await;
        }
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        tokio::join!(closing_client, closing_upstream)
    })
    .await;
}

fn client_error(e: &WsError) -> Ending {
    match e {
        WsError::Capacity(_) => Ending::ClientTooBig,
        WsError::Utf8(_) => Ending::ClientBadData,
        WsError::Protocol(_) => Ending::ClientProtocol,
        _ => Ending::ClientGone,
    }
}

/// The upstream half of a connection (see the module docs).
struct UpstreamSide {
    state: Arc<RelayState>,
    auth: UpstreamAuth,
    expires_at: u64,
    session: SessionState,
    /// Cognito rotated the refresh token since the browser's cookie was set.
    rotated: bool,
    upstream: UpstreamSocket,
    /// Active subscriptions, for replay after a re-dial.
    subscriptions: HashMap<String, String>,
    /// Replayed subscription ids whose `subscribe_success` the browser must not see twice.
    replaying: HashSet<String>,
    init_seen: bool,
    /// Next token renewal (or retry).
    due: Instant,
    max_age_at: Option<Instant>,
    /// Publishes allowed per second on this connection.
    publish_bucket: Option<TokenBucket>,
    /// Last frame other than a keep-alive, either way (for `--idle-timeout`).
    last_activity: Instant,
    stats: Stats,
}

impl UpstreamSide {
    async fn pump<C>(&mut self, client: &mut WebSocketStream<C>) -> Ending
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let metrics = self.state.metrics.clone();
        let bytes_down = metrics.bytes.with_label_values(&["upstream_to_client"]);
        let bytes_up = metrics.bytes.with_label_values(&["client_to_upstream"]);
        let mut frame_counters = FrameCounters::default();
        // One timer for the connection, moved only when the deadline does
        // (a fresh timer per frame costs a timer-wheel insert and removal).
        let sleep = tokio::time::sleep_until(self.due);
        tokio::pin!(sleep);
        loop {
            let idle_at = self
                .state
                .config
                .limits
                .idle_timeout
                .map(|t| self.last_activity + t);
            let deadline = [Some(self.due), self.max_age_at, idle_at]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(self.due);
            if sleep.deadline() != deadline {
                sleep.as_mut().reset(deadline);
            }
            tokio::select! {
                biased;
                msg = client.next() => {
                    let msg = match msg {
                        None => return Ending::ClientGone,
                        Some(Err(e)) => return client_error(&e),
                        Some(Ok(msg)) => msg,
                    };
                    let original = match msg {
                        Message::Text(text) => text,
                        Message::Binary(_) => return Ending::ClientBinary,
                        Message::Close(frame) => {
                            return Ending::ClientClosed(frame.map(|f| u16::from(f.code)).unwrap_or(close::NORMAL))
                        }
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                    };
                    self.last_activity = Instant::now();
                    let (kind, body) = match prepare_client_frame(&original) {
                        Prepared::Reply(reply) => {
                            self.stats.local_replies += 1;
                            frame_counters.get(&metrics, "local_reply", frame_type_label(&reply)).inc();
                            if client.send(Message::Text(reply.into())).await.is_err() {
                                return Ending::ClientGone;
                            }
                            continue;
                        }
                        Prepared::Forward { kind, body } => (kind, body),
                    };
                    let label = match &kind {
                        FrameKind::ConnectionInit => "connection_init",
                        FrameKind::Subscribe { .. } => "subscribe",
                        FrameKind::Unsubscribe { .. } => "unsubscribe",
                        FrameKind::Publish { .. } => "publish",
                        FrameKind::Other => frame_type_label(&original),
                    };
                    if let Some(reply) = self.track(&kind) {
                        if client.send(Message::Text(reply.into())).await.is_err() {
                            return Ending::ClientGone;
                        }
                        continue;
                    }
                    let text: Utf8Bytes = render(body, &self.auth).map(Into::into).unwrap_or(original);
                    let len = text.len() as u64;
                    if self.upstream.send(Message::Text(text.clone())).await.is_err() {
                        if let Err(e) = Box::pin(self.redial(Ending::UpstreamGone)).await {
                            return e;
                        }
                        // Subscriptions were replayed; anything else is sent again once.
                        if !matches!(kind, FrameKind::Subscribe { .. } | FrameKind::ConnectionInit)
                            && self.upstream.send(Message::Text(text)).await.is_err()
                        {
                            return Ending::UpstreamGone;
                        }
                    }
                    self.stats.frames_to_upstream += 1;
                    self.stats.bytes_to_upstream += len;
                    frame_counters.get(&metrics, "client_to_upstream", label).inc();
                    bytes_up.inc_by(len);
                }
                msg = self.upstream.next() => {
                    let msg = match msg {
                        None | Some(Err(_)) => {
                            if let Err(e) = Box::pin(self.redial(Ending::UpstreamGone)).await { return e; }
                            continue;
                        }
                        Some(Ok(msg)) => msg,
                    };
                    let (len, label) = match &msg {
                        Message::Text(t) => {
                            let label = frame_type_label(t);
                            if self.swallow(label, t) {
                                continue;
                            }
                            if label != "ka" {
                                self.last_activity = Instant::now();
                            }
                            (t.len() as u64, label)
                        }
                        Message::Binary(b) => (b.len() as u64, "binary"),
                        Message::Close(frame) => {
                            let code = frame.as_ref().map(|f| u16::from(f.code)).unwrap_or(close::NORMAL);
                            if !redialable(code) {
                                return Ending::UpstreamClosed(code);
                            }
                            if let Err(e) = Box::pin(self.redial(Ending::UpstreamClosed(code))).await { return e; }
                            continue;
                        }
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                    };
                    // Forwarded as received: the same bytes, no re-serialisation.
                    if client.send(msg).await.is_err() {
                        return Ending::ClientGone;
                    }
                    self.stats.frames_to_client += 1;
                    self.stats.bytes_to_client += len;
                    frame_counters.get(&metrics, "upstream_to_client", label).inc();
                    bytes_down.inc_by(len);
                }
                _ = &mut sleep => {
                    let now = Instant::now();
                    if self.max_age_at.is_some_and(|max| now >= max) {
                        return Ending::SessionEnded("max_session_age");
                    }
                    if idle_at.is_some_and(|idle| now >= idle) {
                        metrics.limits_hit.with_label_values(&["idle_timeout"]).inc();
                        return Ending::Idle;
                    }
                    if now >= self.due {
                        if let Err(e) = Box::pin(self.renew()).await {
                            return e;
                        }
                    }
                }
            }
        }
    }

    /// Bookkeeping for a frame about to go upstream. Returns a local reply
    /// instead when the frame must not go.
    fn track(&mut self, kind: &FrameKind) -> Option<String> {
        match kind {
            FrameKind::ConnectionInit => self.init_seen = true,
            FrameKind::Subscribe { id, channel } => {
                // A second subscribe with a live id would be refused upstream,
                // and that refusal would make the relay forget the first one
                // (no replay after a re-dial). Refuse it here instead.
                if self.subscriptions.contains_key(id) {
                    return Some(crate::protocol::error_frame(
                        "subscribe_error",
                        Some(id),
                        crate::protocol::error_type::BAD_REQUEST,
                        "A subscription with this id is already active on this connection",
                    ));
                }
                let max = self.state.config.limits.max_subscriptions;
                if self.subscriptions.len() >= max {
                    self.state
                        .metrics
                        .limits_hit
                        .with_label_values(&["max_subscriptions"])
                        .inc();
                    return Some(crate::protocol::error_frame(
                        "subscribe_error",
                        Some(id),
                        crate::protocol::error_type::BAD_REQUEST,
                        "Too many subscriptions on this connection",
                    ));
                }
                self.subscriptions.insert(id.clone(), channel.clone());
            }
            FrameKind::Unsubscribe { id } => {
                self.subscriptions.remove(id);
            }
            FrameKind::Publish { id } => {
                if let Some(bucket) = &mut self.publish_bucket {
                    if !bucket.try_take() {
                        self.state
                            .metrics
                            .limits_hit
                            .with_label_values(&["publish_rate"])
                            .inc();
                        return Some(crate::protocol::error_frame(
                            "publish_error",
                            Some(id),
                            crate::protocol::error_type::BAD_REQUEST,
                            "Publish rate exceeded; retry later",
                        ));
                    }
                }
            }
            FrameKind::Other => {}
        }
        None
    }

    /// Upstream frames the browser must not see (acknowledgements of
    /// replayed subscriptions), and subscription bookkeeping. Parses only
    /// `subscribe_*` frames, and only their `id`.
    fn swallow(&mut self, label: &str, text: &str) -> bool {
        if !matches!(label, "subscribe_success" | "subscribe_error") {
            return false;
        }
        #[derive(serde::Deserialize)]
        struct Ack {
            id: Option<String>,
        }
        let Some(id) = serde_json::from_str::<Ack>(text).ok().and_then(|a| a.id) else {
            return false;
        };
        if label == "subscribe_error" {
            self.subscriptions.remove(&id);
            self.replaying.remove(&id);
            return false;
        }
        self.replaying.remove(&id)
    }

    /// Renews the token (or ends the session) when it is due.
    async fn renew(&mut self) -> Result<(), Ending> {
        let cfg = &self.state.config;
        if !cfg.mid_connection_refresh {
            return Err(Ending::Reauthenticate);
        }
        let Some(refresh_token) = self.session.refresh_token.clone() else {
            // Nothing to renew with: the connection ends with the token.
            if now_secs() + 1 >= self.expires_at {
                return Err(Ending::SessionEnded("no_refresh_token"));
            }
            self.due = instant_at(self.expires_at);
            return Ok(());
        };
        let outcome = self
            .state
            .refresher
            .refresh(&refresh_token, &self.session.username)
            .await;
        let result = outcome
            .as_ref()
            .map(|_| "ok")
            .unwrap_or_else(RefreshError::reason);
        self.state
            .metrics
            .token_refreshes
            .with_label_values(&["connection", result])
            .inc();
        let tokens = match outcome {
            Ok(tokens) => tokens,
            Err(RefreshError::Rejected(_)) => return Err(Ending::SessionEnded("refresh_rejected")),
            Err(RefreshError::Unavailable(_)) => return self.retry_later(),
        };
        let Some(token) = forwarded_token(&tokens, cfg.token_use) else {
            return self.retry_later();
        };
        let claims = match self.state.verifier.verify(token).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(reason = e.reason(), "refreshed token does not verify");
                return self.retry_later();
            }
        };
        self.auth = UpstreamAuth::new(token, self.auth.host());
        self.expires_at = claims.exp;
        self.due = instant_at(refresh_due_at(claims.exp, claims.iat, cfg.refresh_before));
        self.stats.refreshes += 1;
        if let Some(rotated) = &tokens.refresh_token {
            self.session.refresh_token = Some(rotated.clone());
            self.rotated = true;
        }
        // The browser's refresh token cookie is stale after a rotation: keep
        // the current set for its next request through the relay.
        if self.rotated {
            if let Some(browser) = self.session.browser_refresh {
                let latest = RefreshedTokens {
                    access_token: tokens.access_token.clone(),
                    id_token: tokens.id_token.clone(),
                    refresh_token: self.session.refresh_token.clone(),
                };
                self.state
                    .pending
                    .record(browser, &self.session.username, Arc::new(latest));
            }
        }
        Ok(())
    }

    fn retry_later(&mut self) -> Result<(), Ending> {
        if now_secs() >= self.expires_at {
            // Expired and Cognito unreachable: let the client reconnect; its
            // handshake tries again and answers precisely.
            return Err(Ending::Reauthenticate);
        }
        self.due = Instant::now() + REFRESH_RETRY;
        Ok(())
    }

    /// Replaces a dropped upstream, keeping the browser's socket open.
    async fn redial(&mut self, cause: Ending) -> Result<(), Ending> {
        let attempts = self.state.config.upstream_redial_attempts;
        if attempts == 0 {
            return Err(cause);
        }
        let metrics = self.state.metrics.clone();
        for attempt in 1..=attempts {
            tokio::time::sleep(backoff(attempt)).await;
            if now_secs() + 1 >= self.expires_at {
                Box::pin(self.renew()).await?;
            }
            match upstream::connect(&self.state.upstream, &self.auth).await {
                Ok(socket) => {
                    self.upstream = socket;
                    match self.replay().await {
                        Ok(()) => {
                            self.stats.redials += 1;
                            metrics.upstream_redials.with_label_values(&["ok"]).inc();
                            tracing::info!(
                                attempt,
                                subscriptions = self.subscriptions.len(),
                                "upstream re-dialled"
                            );
                            return Ok(());
                        }
                        Err(e) => tracing::info!(attempt, error = %e, "upstream replay failed"),
                    }
                }
                Err(UpstreamError::Unauthorized(_)) => {
                    // AppSync refuses the token we hold: renew before the next try.
                    Box::pin(self.renew()).await?;
                }
                Err(e) => tracing::info!(attempt, reason = e.reason(), "upstream re-dial failed"),
            }
        }
        metrics
            .upstream_redials
            .with_label_values(&["gave_up"])
            .inc();
        Err(Ending::UpstreamGone)
    }

    /// Re-sends `connection_init` (waiting for the ack, which the browser
    /// already had) and every subscription on a new upstream.
    async fn replay(&mut self) -> Result<(), String> {
        if self.init_seen {
            self.upstream
                .send(Message::Text(r#"{"type":"connection_init"}"#.into()))
                .await
                .map_err(|e| e.to_string())?;
            let ack = tokio::time::timeout(REPLAY_TIMEOUT, async {
                loop {
                    match self.upstream.next().await {
                        Some(Ok(Message::Text(t))) => match frame_type_label(&t) {
                            "connection_ack" => return Ok(()),
                            "ka" => continue,
                            other => return Err(format!("expected connection_ack, got {other}")),
                        },
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                            return Err("upstream closed during replay".to_string())
                        }
                        Some(Ok(_)) => continue,
                    }
                }
            })
            .await;
            ack.map_err(|_| "no connection_ack".to_string())??;
        }
        self.replaying.clear();
        for (id, channel) in &self.subscriptions {
            let frame = subscribe_frame(id, channel, &self.auth);
            self.upstream
                .send(Message::Text(frame.into()))
                .await
                .map_err(|e| e.to_string())?;
            self.replaying.insert(id.clone());
        }
        Ok(())
    }
}

/// 100 ms, 200 ms, 400 ms … capped at 5 s, each ±50 % so a fleet of relays
/// does not re-dial in lock-step after an AppSync blip.
fn backoff(attempt: u32) -> Duration {
    let base = 100u64
        .saturating_mul(1 << attempt.saturating_sub(1).min(6))
        .min(5_000);
    let jitter = rand::random::<f64>() + 0.5;
    Duration::from_millis((base as f64 * jitter) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_match_the_contract() {
        assert_eq!(Ending::ClientBinary.close_codes(), (Some(1003), Some(1000)));
        assert_eq!(Ending::ClientTooBig.close_codes(), (Some(1009), Some(1000)));
        assert_eq!(Ending::UpstreamGone.close_codes(), (Some(1013), None));
        assert_eq!(
            Ending::UpstreamClosed(1000).close_codes(),
            (Some(1000), None)
        );
        assert_eq!(
            Ending::UpstreamClosed(1001).close_codes(),
            (Some(1013), None)
        );
        assert_eq!(
            Ending::UpstreamClosed(4003).close_codes(),
            (Some(4003), None)
        );
        assert_eq!(Ending::ClientClosed(1000).close_codes(), (None, Some(1000)));
        assert_eq!(Ending::ClientClosed(1005).close_codes(), (None, Some(1000)));
        assert_eq!(Ending::ClientGone.close_codes(), (None, Some(1001)));
        assert_eq!(Ending::Draining.close_codes(), (Some(1001), Some(1001)));
        assert_eq!(
            Ending::SessionEnded("x").close_codes(),
            (Some(4401), Some(1000))
        );
        assert_eq!(
            Ending::Reauthenticate.close_codes(),
            (Some(4000), Some(1000))
        );
    }

    #[test]
    fn redial_only_on_codes_that_mean_going_away() {
        for code in [1000, 1001, 1006, 1011, 1012, 1013, 1014] {
            assert!(redialable(code), "{code}");
        }
        for code in [1003, 1007, 1008, 1009, 4000, 4401] {
            assert!(!redialable(code), "{code}");
        }
    }

    #[test]
    fn refresh_is_due_before_expiry_but_not_before_half_life() {
        let before = Duration::from_secs(60);
        assert_eq!(refresh_due_at(10_000, Some(6_400), before), 9_940);
        // A 10 s token is renewed at half-life, not 60 s before (= at once).
        assert_eq!(refresh_due_at(1_010, Some(1_000), before), 1_005);
        assert_eq!(refresh_due_at(1_000, None, before), 940);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(1) <= Duration::from_millis(150));
        assert!(backoff(20) <= Duration::from_millis(7_500));
        assert!(backoff(20) >= Duration::from_millis(2_500));
    }
}
