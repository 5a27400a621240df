//! One relay-owned upstream connection carrying shared subscriptions.
//!
//! A carrier connects only when it has subscriptions to carry, with the
//! token of a browser currently on one of them; each subscribe carries the
//! token of a member of that subscription's own channel (the joiner's, or
//! at a replay one of its current members'). When the
//! connection drops it re-dials (backing off up to [`MAX_BACKOFF`]) with
//! whichever member's token is current then, and replays every shared
//! subscription it carries: browsers keep their sockets and see no second
//! `subscribe_success`. When it carries nothing any more it closes and waits
//! for the next subscribe. A `connection_error`, or silence longer than
//! AppSync's `connectionTimeoutMs`, counts as a lost connection.
//!
//! It never logs a token or an event; what it reads from AppSync it parses
//! only as far as the frame's type and top-level id.

use super::splice::IdSpan;
use crate::metrics::{frame_type_label, Metrics};
use crate::rewrite::{subscribe_frame, UpstreamAuth};
use crate::upstream::{self, UpstreamConfig, UpstreamSocket};
use futures_util::{SinkExt, StreamExt};
use std::collections::HashSet;
use std::sync::Weak;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// Longest wait between two re-dials.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// A connection that lasted this long resets the backoff when it is lost.
const STABLE: Duration = Duration::from_secs(10);
/// A write to AppSync that takes longer is a dead connection.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Nothing at all from AppSync for this long (it promises a `ka` within
/// `connectionTimeoutMs`, 300 s) is a dead connection.
const SILENCE: Duration = Duration::from_secs(300);

/// What a carrier needs from the hub that owns it: a trait, so that the
/// carrier does not depend on the hub (which spawns carriers).
pub(crate) trait Owner: Send + Sync + 'static {
    /// An event for the upstream subscription `span.id(frame)`; returns
    /// how many browsers it was queued for.
    fn deliver(&self, frame: &str, span: &IdSpan) -> usize;
    /// AppSync acknowledged the upstream subscription `sid`.
    fn on_subscribed(&self, sid: &str);
    /// AppSync refused the upstream subscription `span.id(frame)`.
    fn on_refused(&self, frame: &str, span: &IdSpan);
    /// AppSync refused the API key this carrier connected with.
    fn on_key_refused(&self, carrier: usize);
    /// Whether the upstream subscription `sid` still exists (a queued
    /// subscribe for one the hub has ended since is not sent).
    fn holds(&self, sid: &str) -> bool;
    /// `(sid, channel, token)` of every subscription carrier `carrier`
    /// holds, the token that of one of the channel's current members
    /// (none while it lingers without any, or all of them lag).
    fn subscriptions_on(&self, carrier: usize) -> Vec<(String, String, Option<UpstreamAuth>)>;
    fn upstream(&self) -> &UpstreamConfig;
    fn metrics(&self) -> &Metrics;
}

pub(crate) enum Command {
    Subscribe {
        sid: String,
        channel: String,
        auth: UpstreamAuth,
    },
    Unsubscribe {
        sid: String,
    },
}

/// The hub's end of a carrier: its command queue and how many shared
/// channels it holds.
pub(crate) struct Handle {
    tx: mpsc::UnboundedSender<Command>,
    pub(crate) channels: usize,
}

impl Handle {
    pub(crate) fn subscribe(&self, sid: &str, channel: &str, auth: UpstreamAuth) {
        let _ = self.tx.send(Command::Subscribe {
            sid: sid.to_owned(),
            channel: channel.to_owned(),
            auth,
        });
    }

    pub(crate) fn unsubscribe(&self, sid: &str) {
        let _ = self.tx.send(Command::Unsubscribe {
            sid: sid.to_owned(),
        });
    }
}

pub(crate) fn spawn(hub: Weak<dyn Owner>, index: usize, shutdown: CancellationToken) -> Handle {
    // Unbounded but fed only by joins and lingers expiring, each bounded by
    // the channels a carrier may hold.
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(hub, index, rx, shutdown));
    Handle { tx, channels: 0 }
}

async fn run(
    hub: Weak<dyn Owner>,
    index: usize,
    mut rx: mpsc::UnboundedReceiver<Command>,
    shutdown: CancellationToken,
) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let Some(h) = hub.upgrade() else { return };
        let auth = h
            .subscriptions_on(index)
            .into_iter()
            .find_map(|(_, _, auth)| auth);
        drop(h);
        let Some(auth) = auth else {
            // Nothing to carry, or nobody left whose token could carry it
            // (the last members left and the linger runs, or all of them
            // lag): wait until the hub tells us something changed. Never
            // loop without waiting.
            tokio::select! {
                () = shutdown.cancelled() => return,
                cmd = rx.recv() => if cmd.is_none() { return },
            }
            continue;
        };
        let Some(h) = hub.upgrade() else { return };
        let connected = tokio::select! {
            () = shutdown.cancelled() => return,
            c = upstream::connect(h.upstream(), &auth) => c,
        };
        let label = if connected.is_ok() { "ok" } else { "failed" };
        h.metrics()
            .upstream_connects
            .with_label_values(&[label])
            .inc();
        let mut socket = match connected {
            Ok(socket) => socket,
            Err(e) => {
                tracing::warn!(carrier = index, error = %e, "shared channels: upstream connect failed");
                if auth.is_api_key() && matches!(e, upstream::UpstreamError::Unauthorized(_)) {
                    h.on_key_refused(index);
                }
                drop(h);
                if !pause(&shutdown, &mut backoff).await {
                    return;
                }
                continue;
            }
        };
        // Everything this carrier holds, each with a token of one of that
        // channel's own members (a lingering channel, with none, with the
        // connection's).
        let mut frames = vec![r#"{"type":"connection_init"}"#.to_owned()];
        let mut sent = HashSet::new();
        for (sid, channel, member_auth) in h.subscriptions_on(index) {
            frames.push(subscribe_frame(
                &sid,
                &channel,
                member_auth.as_ref().unwrap_or(&auth),
            ));
            sent.insert(sid);
        }
        drop(h);
        let connected_at = Instant::now();
        let mut ok = true;
        for frame in frames {
            ok &= send(&mut socket, frame).await;
        }
        if ok {
            match carry(&hub, &mut socket, &mut rx, &mut sent, &shutdown).await {
                Carried::Refused if auth.is_api_key() => {
                    if let Some(h) = hub.upgrade() {
                        h.on_key_refused(index);
                    }
                }
                Carried::Refused => {}
                Carried::Stop => {
                    let _ = socket.close(None).await;
                    return;
                }
                Carried::Idle => {
                    let _ = tokio::time::timeout(SEND_TIMEOUT, socket.close(None)).await;
                    backoff = MIN_BACKOFF;
                    continue;
                }
                Carried::Lost => {}
            }
        }
        tracing::info!(
            carrier = index,
            "shared channels: upstream lost, re-dialling"
        );
        // A connection that lasted is a blip: re-dial at once. One lost
        // soon after it opened (AppSync refusing the token after the
        // upgrade, say) backs off like a failed connect.
        if connected_at.elapsed() >= STABLE {
            backoff = MIN_BACKOFF;
        } else if !pause(&shutdown, &mut backoff).await {
            return;
        }
    }
}

/// Sleeps `backoff` (doubling it up to [`MAX_BACKOFF`]); `false` on shutdown.
async fn pause(shutdown: &CancellationToken, backoff: &mut Duration) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => return false,
        () = tokio::time::sleep(*backoff) => {}
    }
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    true
}

async fn send(socket: &mut UpstreamSocket, frame: String) -> bool {
    matches!(
        tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Text(frame.into()))).await,
        Ok(Ok(()))
    )
}

/// Relays one connection's life; `false` when the carrier is to stop
/// (shutdown, or the hub is gone), `true` to re-dial. `sent` holds the
/// subscriptions this connection already carries: a queued subscribe for
/// one of them (replayed at connect) is not sent twice, which AppSync would
/// refuse as a duplicate id.
async fn carry(
    hub: &Weak<dyn Owner>,
    socket: &mut UpstreamSocket,
    rx: &mut mpsc::UnboundedReceiver<Command>,
    sent: &mut HashSet<String>,
    shutdown: &CancellationToken,
) -> Carried {
    // AppSync sends `ka` about every minute and promises one within
    // `connectionTimeoutMs` (300 s): silence that long is a dead connection.
    let silence = tokio::time::sleep(SILENCE);
    tokio::pin!(silence);
    let mut acked = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Carried::Stop,
            () = &mut silence => return Carried::Lost,
            cmd = rx.recv() => {
                let frame = match cmd {
                    None => return Carried::Stop,
                    Some(Command::Subscribe { sid, channel, auth }) => {
                        let Some(hub) = hub.upgrade() else { return Carried::Stop };
                        if !hub.holds(&sid) || !sent.insert(sid.clone()) {
                            continue;
                        }
                        subscribe_frame(&sid, &channel, &auth)
                    }
                    Some(Command::Unsubscribe { sid }) => {
                        if !sent.remove(&sid) {
                            continue;
                        }
                        serde_json::json!({"type": "unsubscribe", "id": sid}).to_string()
                    }
                };
                if !send(socket, frame).await {
                    return Carried::Lost;
                }
                if sent.is_empty() {
                    // Nothing left to carry: close rather than hold an idle
                    // connection on a departed user's token.
                    return Carried::Idle;
                }
            }
            msg = socket.next() => {
                let text = match msg {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Carried::Lost,
                    Some(Ok(_)) => continue,
                };
                silence.as_mut().reset(tokio::time::Instant::now() + SILENCE);
                match frame_type_label(text.as_str()) {
                    "connection_ack" => acked = true,
                    // Refused before it was acknowledged: the credentials
                    // (MiniStack's way of refusing them after the upgrade).
                    "connection_error" if !acked => return Carried::Refused,
                    // AppSync gave up on this connection: a fresh one,
                    // after the backoff.
                    "connection_error" | "error" => return Carried::Lost,
                    _ => {}
                }
                let Some(hub) = hub.upgrade() else { return Carried::Stop };
                if let Some(refused) = on_frame(hub.as_ref(), text.as_str()) {
                    // AppSync created nothing for it: it is not carried, and
                    // a carrier left with nothing goes idle.
                    sent.remove(&refused);
                    if sent.is_empty() {
                        return Carried::Idle;
                    }
                }
            }
        }
    }
}

/// How one connection's life ended.
enum Carried {
    /// Shutdown, or the hub is gone: the carrier ends.
    Stop,
    /// The connection failed: re-dial.
    Lost,
    /// It carries nothing any more: close it and wait for work.
    Idle,
    /// AppSync refused the connection's credentials after the upgrade.
    Refused,
}

/// Hands a frame from AppSync to the hub; the id of a subscription AppSync
/// refused, if it was that.
fn on_frame(hub: &dyn Owner, text: &str) -> Option<String> {
    let label = frame_type_label(text);
    if !matches!(label, "data" | "subscribe_success" | "subscribe_error") {
        return None;
    }
    let span = IdSpan::find(text)?;
    match label {
        "data" => {
            hub.deliver(text, &span);
            None
        }
        "subscribe_success" => {
            hub.on_subscribed(span.id(text));
            None
        }
        _ => {
            hub.on_refused(text, &span);
            Some(span.id(text).to_string())
        }
    }
}
