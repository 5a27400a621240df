//! One real-time session per connection, after the handshake (`handshake`):
//! answers `connection_init`, `subscribe`, `publish` and `unsubscribe`,
//! sends `ka` frames, and writes fanned-out `data` frames.
//!
//! A session must never panic on a client's frame and must never close a
//! socket without a close frame unless told to simulate a crash.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Map, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{interval_at, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::auth::AuthFailure;
use super::publish::{parse_publish_channel, successful, validate_events};
use super::registry::{CloseCmd, ConnId, Registration};
use super::shared::Shared;
use crate::protocol::{error_frame, error_type, is_valid_id, Channel, CONNECTION_TIMEOUT_MS};

/// How long to wait for the client's close frame after sending ours.
pub(crate) const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);

// === session ===

/// How a session ends.
enum End {
    /// Send a close frame, then wait briefly for the client's.
    Close(u16, String),
    /// Drop the socket without a close frame.
    Abort,
    /// The client closed or the socket failed; nothing more to send.
    Gone,
}

/// Removes the connection from the registry however the session ends.
struct Deregister {
    shared: Arc<Shared>,
    id: ConnId,
}

impl Drop for Deregister {
    fn drop(&mut self) {
        self.shared.registry.deregister(self.id);
    }
}

pub(crate) async fn run_session<S>(shared: Arc<Shared>, mut ws: WebSocketStream<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Registration {
        id,
        mut rx,
        mut control,
    } = shared.registry.register(shared.cfg.outbound_queue);
    let _deregister = Deregister {
        shared: shared.clone(),
        id,
    };
    tracing::debug!(conn = id, "emulator: connection open");
    let mut session = Session {
        shared: shared.clone(),
        conn: id,
        acked: false,
    };
    let ka_period = shared.cfg.ka_interval.max(Duration::from_millis(1));
    let mut ka = interval_at(Instant::now() + ka_period, ka_period);
    ka.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let lifetime = tokio::time::sleep(shared.cfg.max_connection_duration);
    tokio::pin!(lifetime);

    let end = loop {
        tokio::select! {
            biased;
            () = shared.shutdown.cancelled() => {
                break End::Close(1001, "emulator shutting down".into());
            }
            changed = control.changed() => {
                let cmd = control.borrow_and_update().clone();
                match (changed, cmd) {
                    (_, Some(CloseCmd::Frame { code, reason })) => break End::Close(code, reason),
                    (_, Some(CloseCmd::Abort)) | (Err(_), None) => break End::Abort,
                    (Ok(()), None) => {}
                }
            }
            frame = rx.recv() => {
                let Some(frame) = frame else {
                    // Only the registry drops the sender, and it signals
                    // `control` first; this is a fallback.
                    break End::Close(1011, "connection dropped".into());
                };
                if ws.send(Message::Text(frame.into())).await.is_err() {
                    break End::Gone;
                }
            }
            _ = ka.tick(), if session.acked => {
                if ws.send(Message::Text(r#"{"type":"ka"}"#.into())).await.is_err() {
                    break End::Gone;
                }
                shared.registry.meter().count("keepalive", 1);
            }
            () = &mut lifetime => {
                break End::Close(1000, "maximum connection duration reached".into());
            }
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    let was_acked = session.acked;
                    let reply = session.on_text(text.as_str()).await;
                    if session.acked && !was_acked {
                        ka.reset();
                    }
                    if ws.send(Message::Text(reply.into())).await.is_err() {
                        break End::Gone;
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    break End::Close(1003, "binary frames are not supported".into());
                }
                Some(Ok(Message::Close(_))) => {
                    // tungstenite queued the reply close frame; push it out.
                    let _ = ws.flush().await;
                    break End::Gone;
                }
                // tungstenite answers pings itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Err(WsError::Capacity(_))) => {
                    break End::Close(1009, "message too big".into());
                }
                Some(Err(error)) => {
                    tracing::debug!(conn = id, %error, "emulator: read failed");
                    break End::Gone;
                }
                None => break End::Gone,
            },
        }
    };

    match end {
        End::Close(code, reason) => {
            tracing::debug!(conn = id, code, "emulator: closing connection");
            let frame = CloseFrame {
                code: CloseCode::from(code),
                reason: reason.into(),
            };
            if ws.send(Message::Close(Some(frame))).await.is_ok() {
                // Read until the client's close frame completes the handshake.
                let _ = tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, async {
                    while let Some(Ok(_)) = ws.next().await {}
                })
                .await;
            }
        }
        End::Abort => tracing::debug!(conn = id, "emulator: aborting connection"),
        End::Gone => tracing::debug!(conn = id, "emulator: connection closed"),
    }
}

/// Per-connection protocol state.
struct Session {
    shared: Arc<Shared>,
    conn: ConnId,
    /// `connection_ack` was sent, so `ka` frames are due.
    acked: bool,
}

// === impl Session ===

impl Session {
    /// Answers one client text frame with exactly one reply frame.
    async fn on_text(&mut self, text: &str) -> String {
        let message = match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(message)) => message,
            Ok(_) => {
                return error_frame(
                    "error",
                    None,
                    error_type::MESSAGE_PROCESSING,
                    "message must be a JSON object",
                )
            }
            Err(_) => {
                return error_frame(
                    "error",
                    None,
                    error_type::MESSAGE_PROCESSING,
                    "message is not valid JSON",
                )
            }
        };
        match message.get("type").and_then(Value::as_str) {
            Some("connection_init") => {
                self.acked = true;
                json!({"type": "connection_ack", "connectionTimeoutMs": CONNECTION_TIMEOUT_MS})
                    .to_string()
            }
            Some("subscribe") => self.subscribe(&message).await,
            Some("publish") => self.publish(&message).await,
            Some("unsubscribe") => self.unsubscribe(&message),
            Some(_) => error_frame(
                "error",
                echo_id(&message),
                error_type::UNKNOWN_OPERATION,
                "unknown operation type",
            ),
            None => error_frame(
                "error",
                echo_id(&message),
                error_type::MESSAGE_PROCESSING,
                "message has no type",
            ),
        }
    }

    async fn subscribe(&self, message: &Map<String, Value>) -> String {
        const ERR: &str = "subscribe_error";
        let id = match required_id(message, ERR) {
            Ok(id) => id,
            Err(frame) => return frame,
        };
        let channel = match message.get("channel").and_then(Value::as_str) {
            Some(raw) => match Channel::parse(raw, true) {
                Ok(channel) => channel,
                Err(error) => {
                    return error_frame(
                        ERR,
                        Some(id),
                        error_type::BAD_REQUEST,
                        &format!("invalid channel: {error}"),
                    )
                }
            },
            None => {
                return error_frame(
                    ERR,
                    Some(id),
                    error_type::BAD_REQUEST,
                    "channel is required and must be a string",
                )
            }
        };
        if let Err(failure) = self.authorize(message).await {
            return error_frame(
                ERR,
                Some(id),
                error_type::UNAUTHORIZED,
                &failure.to_string(),
            );
        }
        if let Some(frame) = self.undefined_namespace(ERR, id, &channel) {
            return frame;
        }
        if self.shared.refuses_subscribe(message, &channel) {
            return error_frame(
                ERR,
                Some(id),
                error_type::UNAUTHORIZED,
                "the namespace's onSubscribe handler refused this subscription",
            );
        }
        match self.shared.registry.subscribe(self.conn, id, channel) {
            Ok(()) => json!({"type": "subscribe_success", "id": id}).to_string(),
            Err(_) => error_frame(
                ERR,
                Some(id),
                error_type::BAD_REQUEST,
                "a subscription with this id is already active on this connection",
            ),
        }
    }

    async fn publish(&self, message: &Map<String, Value>) -> String {
        const ERR: &str = "publish_error";
        let id = match required_id(message, ERR) {
            Ok(id) => id,
            Err(frame) => return frame,
        };
        let channel = match parse_publish_channel(message.get("channel")) {
            Ok(channel) => channel,
            Err(reason) => return error_frame(ERR, Some(id), error_type::BAD_REQUEST, &reason),
        };
        if let Err(failure) = self.authorize(message).await {
            return error_frame(
                ERR,
                Some(id),
                error_type::UNAUTHORIZED,
                &failure.to_string(),
            );
        }
        if let Some(frame) = self.undefined_namespace(ERR, id, &channel) {
            return frame;
        }
        if self.shared.refuses_publish(message, &channel) {
            return error_frame(
                ERR,
                Some(id),
                error_type::UNAUTHORIZED,
                "the namespace's onPublish handler refused this publish",
            );
        }
        let events = match validate_events(message.get("events")) {
            Ok(events) => events,
            Err(reason) => return error_frame(ERR, Some(id), error_type::BAD_REQUEST, &reason),
        };
        self.shared.registry.publish(&channel, &events);
        json!({
            "type": "publish_success",
            "id": id,
            "successful": successful(events.len()),
            "failed": [],
        })
        .to_string()
    }

    fn unsubscribe(&self, message: &Map<String, Value>) -> String {
        const ERR: &str = "unsubscribe_error";
        let id = match required_id(message, ERR) {
            Ok(id) => id,
            Err(frame) => return frame,
        };
        if self.shared.registry.unsubscribe(self.conn, id) {
            json!({"type": "unsubscribe_success", "id": id}).to_string()
        } else {
            error_frame(
                ERR,
                Some(id),
                error_type::BAD_REQUEST,
                "no active subscription has this id",
            )
        }
    }

    /// The error frame for a channel outside every defined namespace, which
    /// AppSync refuses as unauthorized.
    fn undefined_namespace(&self, err: &str, id: &str, channel: &Channel) -> Option<String> {
        (!self.shared.cfg.defines(channel)).then(|| {
            error_frame(
                err,
                Some(id),
                error_type::UNAUTHORIZED,
                &format!("no channel namespace matches '{}'", channel.path()),
            )
        })
    }

    /// Checks the message's own `authorization` object (top level only;
    /// Amplify's `payload.extensions.authorization` copy is not consulted).
    async fn authorize(&self, message: &Map<String, Value>) -> Result<(), AuthFailure> {
        match message.get("authorization") {
            Some(Value::Object(auth)) => self.shared.authorize(auth).await,
            _ => Err(AuthFailure::MissingAuthorization),
        }
    }
}

/// The message's `id` if it follows AppSync's rule; otherwise the error
/// frame to send (echoing the id when it is at least a string, so the
/// client can tell which request failed).
fn required_id<'m>(message: &'m Map<String, Value>, err_type: &str) -> Result<&'m str, String> {
    match message.get("id") {
        Some(Value::String(id)) if is_valid_id(id) => Ok(id),
        Some(Value::String(id)) => Err(error_frame(
            err_type,
            Some(id),
            error_type::BAD_REQUEST,
            "id must match ^[a-zA-Z0-9-_+]{1,128}$",
        )),
        _ => Err(error_frame(
            err_type,
            None,
            error_type::BAD_REQUEST,
            "id is required and must be a string",
        )),
    }
}

fn echo_id(message: &Map<String, Value>) -> Option<&str> {
    message
        .get("id")
        .and_then(Value::as_str)
        .filter(|id| is_valid_id(id))
}
