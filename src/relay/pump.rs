//! The per-connection loop: one task owns both sockets and waits for the
//! next event — a browser frame, an upstream frame, a write completing, or a
//! deadline (token renewal, max age, idle, a write that takes too long).
//!
//! - a **browser frame** is validated and stripped of any auth it carries
//!   ([`crate::rewrite::prepare_client_frame`]), checked against the
//!   connection's limits, and queued for upstream with the *current* token
//!   injected; bad frames are answered locally;
//! - an **upstream frame** is queued for the browser as the same bytes it
//!   arrived in (no parse, no copy), except acknowledgements of replayed
//!   subscriptions;
//! - on an upstream drop the connection re-dials ([`super::redial`]).
//!
//! **Full duplex, one frame in flight per direction.** Each direction has
//! one write slot. While the slot towards upstream is busy, the browser is
//! not read (its TCP window is the buffer, so a slow AppSync slows that
//! browser's publishes instead of growing the relay's memory); frames from
//! upstream keep flowing to the browser meanwhile, and the other way round.
//! A relay that stopped reading both sides while one write was pending
//! could deadlock with any peer that also writes before it reads: each
//! side's buffer full, each waiting for the other (the stall
//! `tests/stall.rs` reproduces). Local replies wait in a short queue for the
//! browser's slot; when it is full the browser is not read either.
//!
//! Every write is bounded by `--send-timeout`: a browser that stops reading
//! is disconnected, an upstream that stops reading is re-dialled, and the
//! connection's timers keep running either way. Cold paths (re-dial,
//! renewal) are boxed so they do not enlarge every idle connection's task.
//! Pings are answered by the framing layer ([`crate::ws`]) on each leg. This module never logs
//! frame contents or tokens.

use super::close::{self, client_error, redialable, Ending};
use super::counters::{FrameCounters, Stats};
use super::membership::Membership;
use super::slot::WriteSlot;
use super::subscriptions::Subscriptions;
use super::token::TokenState;
use crate::fanout::Delivery;
use crate::limits::TokenBucket;
use crate::metrics::frame_type_label;
use crate::rewrite::{prepare_client_frame, render, FrameKind, Prepared};
use crate::state::RelayState;
use crate::upstream::UpstreamSocket;
use crate::ws::WsSocket;
use futures_util::Stream;
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::WaitForCancellationFutureOwned;

/// Local replies (errors for refused frames) that may wait for the
/// browser's write slot before the browser is no longer read.
const MAX_QUEUED_REPLIES: usize = 16;

/// What woke the loop.
enum Event {
    Client(Option<Result<Message, WsError>>),
    Upstream(Option<Result<Message, WsError>>),
    ClientWriteFailed,
    UpstreamWriteFailed,
    Timer,
    Shared(Delivery),
    Lagged,
    PolicyChanged,
}

/// Everything one relayed connection owns besides the browser's socket.
pub struct Connection {
    pub(super) state: Arc<RelayState>,
    pub(super) token: TokenState,
    pub(super) subs: Subscriptions,
    pub upstream: UpstreamSocket,
    pub(super) to_upstream: WriteSlot,
    to_client: WriteSlot,
    pub(super) replies: VecDeque<String>,
    max_age_at: Option<Instant>,
    /// Publishes allowed per second on this connection.
    pub(super) publish_bucket: Option<TokenBucket>,
    /// Shared-channel subscriptions; boxed and made on the first one, so a
    /// connection without any pays one pointer.
    pub(super) shared: Option<Box<Membership>>,
    /// Last frame other than a keep-alive, either way (for `--idle-timeout`).
    last_activity: Instant,
    /// With `--channel-policy`: fires when the file is reloaded (boxed:
    /// without a policy a connection pays one pointer).
    policy_changed: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    pub stats: Stats,
}

impl Connection {
    pub fn new(state: Arc<RelayState>, upstream: UpstreamSocket, token: TokenState) -> Connection {
        let now = Instant::now();
        let policy_changed = policy_changes(&state);
        Connection {
            policy_changed,
            max_age_at: state
                .config()
                .max_session_age
                .and_then(|age| now.checked_add(age)),
            publish_bucket: TokenBucket::new(state.config().limits.publish_rate),
            state,
            token,
            subs: Subscriptions::default(),
            upstream,
            to_upstream: WriteSlot::default(),
            to_client: WriteSlot::default(),
            replies: VecDeque::new(),
            shared: None,
            last_activity: now,
            stats: Stats::default(),
        }
    }

    pub fn state(&self) -> &Arc<RelayState> {
        &self.state
    }

    /// Relays until either side ends; returns why.
    pub async fn pump<C>(&mut self, client: &mut WsSocket<C>) -> Ending
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let metrics = self.state.metrics().clone();
        let bytes_down = metrics.bytes.with_label_values(&["upstream_to_client"]);
        let bytes_up = metrics.bytes.with_label_values(&["client_to_upstream"]);
        let mut frame_counters = FrameCounters::default();
        // One timer for the connection, moved only when the deadline does
        // (a fresh timer per frame costs a timer-wheel insert and removal).
        let sleep = tokio::time::sleep_until(self.token.due);
        tokio::pin!(sleep);
        loop {
            let deadline = self.next_deadline();
            if sleep.deadline() != deadline {
                sleep.as_mut().reset(deadline);
            }
            let event = poll_fn(|cx| self.poll_event(client, sleep.as_mut(), cx)).await;
            match event {
                Event::Client(msg) => {
                    let msg = match msg {
                        None => return Ending::ClientGone,
                        Some(Err(e)) => return client_error(&e),
                        Some(Ok(msg)) => msg,
                    };
                    let original = match msg {
                        Message::Text(text) => text,
                        Message::Binary(_) => return Ending::ClientBinary,
                        Message::Close(frame) => {
                            return Ending::ClientClosed(
                                frame.map(|f| u16::from(f.code)).unwrap_or(close::NORMAL),
                            )
                        }
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                    };
                    self.last_activity = Instant::now();
                    let (kind, body) = match prepare_client_frame(&original) {
                        Prepared::Reply(reply) => {
                            self.stats.local_replies += 1;
                            frame_counters
                                .get(&metrics, "local_reply", frame_type_label(&reply))
                                .inc();
                            self.replies.push_back(reply);
                            continue;
                        }
                        Prepared::Forward { kind, body } => (kind, body),
                    };
                    if let Some(reply) = self.permitted(&body) {
                        self.replies.push_back(reply);
                        continue;
                    }
                    if let Some(reply) = self.route_shared(&kind) {
                        self.replies.extend(reply);
                        continue;
                    }
                    let label = match &kind {
                        FrameKind::ConnectionInit => "connection_init",
                        FrameKind::Subscribe { .. } => "subscribe",
                        FrameKind::Unsubscribe { .. } => "unsubscribe",
                        FrameKind::Publish { .. } => "publish",
                    };
                    let text: Utf8Bytes = render(body, &self.token.auth).into();
                    // What AppSync would get (one copy of the events, where
                    // Amplify sent two), measured: too large is answered,
                    // not a reason to close the socket.
                    if let FrameKind::Publish { id } = &kind {
                        if text.len() > self.state.config().max_message_bytes {
                            self.replies.push_back(crate::protocol::error_frame(
                                "publish_error",
                                Some(id),
                                crate::protocol::error_type::BAD_REQUEST,
                                "publish is larger than --max-message-bytes",
                            ));
                            continue;
                        }
                    }
                    if let Some(reply) = self.admit(&kind) {
                        self.replies.push_back(reply);
                        continue;
                    }
                    let len = text.len() as u64;
                    self.to_upstream.put(Message::Text(text));
                    self.stats.frames_to_upstream += 1;
                    self.stats.bytes_to_upstream += len;
                    frame_counters
                        .get(&metrics, "client_to_upstream", label)
                        .inc();
                    bytes_up.inc_by(len);
                }
                Event::Upstream(msg) => {
                    let msg = match msg {
                        None | Some(Err(_)) => {
                            if let Err(e) = Box::pin(self.redial(Ending::UpstreamGone)).await {
                                return e;
                            }
                            continue;
                        }
                        Some(Ok(msg)) => msg,
                    };
                    let (len, label) = match &msg {
                        Message::Text(t) => {
                            let label = frame_type_label(t);
                            let probe = self.shared.as_mut();
                            if probe.is_some_and(|m| m.on_upstream(label, t, &mut self.replies)) {
                                continue;
                            }
                            if self.subs.on_upstream(label, t) {
                                continue;
                            }
                            if label != "ka" {
                                self.last_activity = Instant::now();
                            }
                            (t.len() as u64, label)
                        }
                        Message::Binary(b) => (b.len() as u64, "binary"),
                        Message::Close(frame) => {
                            let code = frame
                                .as_ref()
                                .map(|f| u16::from(f.code))
                                .unwrap_or(close::NORMAL);
                            if !redialable(code) {
                                return Ending::UpstreamClosed(code);
                            }
                            if let Err(e) =
                                Box::pin(self.redial(Ending::UpstreamClosed(code))).await
                            {
                                return e;
                            }
                            continue;
                        }
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                    };
                    // Forwarded as received: the same bytes, no re-serialisation.
                    self.to_client.put(msg);
                    self.stats.frames_to_client += 1;
                    self.stats.bytes_to_client += len;
                    frame_counters
                        .get(&metrics, "upstream_to_client", label)
                        .inc();
                    bytes_down.inc_by(len);
                }
                Event::Shared(delivery) => {
                    let Some(frame) = self.shared_frame(delivery) else {
                        continue;
                    };
                    self.last_activity = Instant::now();
                    self.stats.frames_to_client += 1;
                    self.stats.bytes_to_client += frame.len() as u64;
                    bytes_down.inc_by(frame.len() as u64);
                    self.to_client.put(Message::Text(frame.into()));
                }
                Event::Lagged => return Ending::Lagging,
                // A reloaded policy: decide every subscription again.
                Event::PolicyChanged => self.revoke_denied(),
                Event::ClientWriteFailed => return Ending::ClientGone,
                Event::UpstreamWriteFailed => {
                    if let Err(e) = Box::pin(self.redial(Ending::UpstreamGone)).await {
                        return e;
                    }
                }
                Event::Timer => {
                    if let Some(ending) = self.on_timer().await {
                        return ending;
                    }
                }
            }
        }
    }

    /// The earliest of every deadline the connection has.
    fn next_deadline(&self) -> Instant {
        let send_timeout = self.state.config().send_timeout;
        let idle_at = self
            .state
            .config()
            .limits
            .idle_timeout
            .and_then(|t| self.last_activity.checked_add(t));
        let writes = [&self.to_client, &self.to_upstream]
            .into_iter()
            .filter_map(|slot| slot.deadline(send_timeout));
        [Some(self.token.due), self.max_age_at, idle_at]
            .into_iter()
            .flatten()
            .chain(writes)
            .min()
            .unwrap_or(self.token.due)
    }

    /// Writes first (they free slots), then reads where a slot is free,
    /// then the timer.
    fn poll_event<C>(
        &mut self,
        client: &mut WsSocket<C>,
        sleep: Pin<&mut Sleep>,
        cx: &mut Context<'_>,
    ) -> Poll<Event>
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        if let Some(m) = &mut self.shared {
            if m.poll_lagged(cx).is_ready() {
                return Poll::Ready(Event::Lagged);
            }
        }
        if let Some(changed) = &mut self.policy_changed {
            if changed.as_mut().poll(cx).is_ready() {
                self.policy_changed = policy_changes(&self.state);
                return Poll::Ready(Event::PolicyChanged);
            }
        }
        loop {
            if !self.to_client.is_busy() {
                if let Some(reply) = self.replies.pop_front() {
                    self.to_client.put(Message::Text(reply.into()));
                }
            }
            if !self.to_upstream.is_busy() {
                let owed = match self.subs.next_upstream() {
                    Some(frame) => Some(frame),
                    None => self.shared.as_mut().and_then(|m| m.next_upstream()),
                };
                if let Some(frame) = owed {
                    self.to_upstream.put(Message::Text(frame.into()));
                }
            }
            let mut progressed = false;
            if self.to_client.is_busy() {
                match self.to_client.drive(client, cx) {
                    Poll::Ready(true) => progressed = true,
                    Poll::Ready(false) => return Poll::Ready(Event::ClientWriteFailed),
                    Poll::Pending => {}
                }
            }
            if self.to_upstream.is_busy() {
                match self.to_upstream.drive(&mut self.upstream, cx) {
                    Poll::Ready(true) => progressed = true,
                    Poll::Ready(false) => return Poll::Ready(Event::UpstreamWriteFailed),
                    Poll::Pending => {}
                }
            }
            if !progressed {
                break;
            }
        }
        if !self.to_upstream.is_busy() && self.replies.len() < MAX_QUEUED_REPLIES {
            if let Poll::Ready(msg) = Pin::new(&mut *client).poll_next(cx) {
                return Poll::Ready(Event::Client(msg));
            }
        }
        if !self.to_client.is_busy() {
            // Shared events first: the browser's own upstream can wait in
            // its TCP window, a shared queue that fills closes the browser.
            if let Some(m) = &mut self.shared {
                if let Poll::Ready(Some(delivery)) = m.poll_delivery(cx) {
                    return Poll::Ready(Event::Shared(delivery));
                }
            }
            if let Poll::Ready(msg) = Pin::new(&mut self.upstream).poll_next(cx) {
                return Poll::Ready(Event::Upstream(msg));
            }
        }
        sleep.poll(cx).map(|()| Event::Timer)
    }

    /// Whichever deadline passed: a write that takes too long, max age,
    /// idle, or the token's renewal.
    async fn on_timer(&mut self) -> Option<Ending> {
        let now = Instant::now();
        let send_timeout = self.state.config().send_timeout;
        if self.to_client.overdue(now, send_timeout) {
            self.limit_hit("send_timeout");
            return Some(Ending::ClientGone);
        }
        if self.to_upstream.overdue(now, send_timeout) {
            self.limit_hit("send_timeout");
            if let Err(e) = Box::pin(self.redial(Ending::UpstreamGone)).await {
                return Some(e);
            }
            return None;
        }
        if self.max_age_at.is_some_and(|max| now >= max) {
            return Some(Ending::SessionEnded("max_session_age"));
        }
        let idle_timeout = self.state.config().limits.idle_timeout;
        let idle_at = idle_timeout.and_then(|t| self.last_activity.checked_add(t));
        if idle_at.is_some_and(|idle| now >= idle) {
            self.limit_hit("idle_timeout");
            return Some(Ending::Idle);
        }
        if now >= self.token.due {
            if let Err(e) = Box::pin(self.renew()).await {
                return Some(e);
            }
        }
        None
    }
}

/// The next reload of the channel policy, if there is one.
fn policy_changes(state: &RelayState) -> Option<Pin<Box<WaitForCancellationFutureOwned>>> {
    let live = state.live_policy()?;
    Some(Box::pin(live.changes().cancelled_owned()))
}
