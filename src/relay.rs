//! The pump between an accepted browser socket and its upstream AppSync
//! socket, once both handshakes are done.
//!
//! One task per connection drives both directions concurrently (`select!`
//! over two futures), so a slow reader on one side only backs up its own
//! direction. Browser frames go through [`rewrite`](crate::rewrite); local
//! replies reach the browser through a small bounded queue owned by the
//! upstream→browser direction, the only writer of the browser socket.
//! Upstream frames are forwarded as the same `Utf8Bytes` they arrived in:
//! no parse, no copy. Pings are answered by tungstenite on each leg.
//!
//! When either side ends, the other gets a close frame with the matching
//! code (DESIGN.md §3), each close bounded by a short timeout so a stuck
//! peer cannot hold the task. This module never logs frame contents.

use crate::metrics::{frame_type_label, Metrics};
use crate::rewrite::{rewrite_client_frame, ClientAction, UpstreamAuth};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

/// Close codes the relay sends to the browser (DESIGN.md §3).
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const UNSUPPORTED_DATA: u16 = 1003;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
    pub const UPSTREAM_UNAVAILABLE: u16 = 1013;
    pub const REAUTHENTICATE: u16 = 4000;
    pub const SESSION_ENDED: u16 = 4401;
}

/// How long a closing handshake may take on each leg.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Local replies waiting for the browser. Small: they are rare, and when the
/// browser stops reading, the client→upstream direction should stall too.
const REPLY_QUEUE: usize = 8;

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
    /// Upstream sent a close frame with this code.
    UpstreamClosed(u16),
    /// Upstream's socket ended without a close frame, or errored.
    UpstreamGone,
    /// The relay is shutting down.
    Draining,
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
            Ending::UpstreamClosed(code) => (Some(map_upstream_close(*code)), None),
            Ending::UpstreamGone => (Some(close::UPSTREAM_UNAVAILABLE), None),
            Ending::Draining => (Some(close::GOING_AWAY), Some(close::GOING_AWAY)),
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

/// Counts what one relay moved, for the connection's closing log line.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub frames_to_upstream: u64,
    pub frames_to_client: u64,
    pub local_replies: u64,
    pub bytes_to_upstream: u64,
    pub bytes_to_client: u64,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub ending: Ending,
    /// Close code sent to the browser, if the relay sent one.
    pub client_close: Option<u16>,
    pub stats: Stats,
}

fn close_frame(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }))
}

fn reason_for(code: u16) -> &'static str {
    match code {
        close::GOING_AWAY => "going away",
        close::UNSUPPORTED_DATA => "binary frames are not supported",
        close::TOO_BIG => "message too big",
        close::UPSTREAM_UNAVAILABLE => "upstream unavailable",
        close::REAUTHENTICATE => "reauthenticate",
        close::SESSION_ENDED => "session ended",
        _ => "",
    }
}

/// Relays until either side ends or `shutdown` fires, then closes both.
pub async fn run<C, U>(
    client: WebSocketStream<C>,
    upstream: WebSocketStream<U>,
    auth: UpstreamAuth,
    metrics: &Metrics,
    shutdown: CancellationToken,
) -> Outcome
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut c_tx, mut c_rx) = client.split();
    let (mut u_tx, mut u_rx) = upstream.split();
    let (reply_tx, mut reply_rx) = mpsc::channel::<String>(REPLY_QUEUE);
    let mut up_stats = Stats::default();
    let mut down_stats = Stats::default();

    let ending = {
        let c2u = client_to_upstream(
            &mut c_rx,
            &mut u_tx,
            &reply_tx,
            &auth,
            metrics,
            &mut up_stats,
        );
        let u2c = upstream_to_client(
            &mut u_rx,
            &mut c_tx,
            &mut reply_rx,
            metrics,
            &mut down_stats,
        );
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => Ending::Draining,
            e = c2u => e,
            e = u2c => e,
        }
    };

    let (to_client, to_upstream) = ending.close_codes();
    let closing_client = async {
        match to_client {
            Some(code) => {
                let _ = c_tx.send(close_frame(code, reason_for(code))).await;
            }
            // Flushes tungstenite's automatic reply to the browser's close.
            None => {
                let _ = c_tx.close().await;
            }
        }
    };
    let closing_upstream = async {
        if let Some(code) = to_upstream {
            let _ = u_tx.send(close_frame(code, "")).await;
        }
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        tokio::join!(closing_client, closing_upstream)
    })
    .await;

    Outcome {
        client_close: to_client.or(match ending {
            Ending::ClientClosed(code) => Some(code),
            _ => None,
        }),
        ending,
        stats: Stats {
            frames_to_upstream: up_stats.frames_to_upstream,
            local_replies: up_stats.local_replies,
            bytes_to_upstream: up_stats.bytes_to_upstream,
            frames_to_client: down_stats.frames_to_client,
            bytes_to_client: down_stats.bytes_to_client,
        },
    }
}

fn client_error(e: &WsError) -> Ending {
    match e {
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => Ending::ClientTooBig,
        WsError::Capacity(_) => Ending::ClientTooBig,
        WsError::Protocol(_) | WsError::Utf8(_) => Ending::ClientProtocol,
        _ => Ending::ClientGone,
    }
}

async fn client_to_upstream<C, U>(
    c_rx: &mut SplitStream<WebSocketStream<C>>,
    u_tx: &mut SplitSink<WebSocketStream<U>, Message>,
    replies: &mpsc::Sender<String>,
    auth: &UpstreamAuth,
    metrics: &Metrics,
    stats: &mut Stats,
) -> Ending
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let bytes_up = metrics.bytes.with_label_values(&["client_to_upstream"]);
    loop {
        let msg = match c_rx.next().await {
            None => return Ending::ClientGone,
            Some(Err(e)) => return client_error(&e),
            Some(Ok(msg)) => msg,
        };
        let text = match msg {
            Message::Text(text) => text,
            Message::Binary(_) => return Ending::ClientBinary,
            Message::Close(frame) => {
                return Ending::ClientClosed(
                    frame.map(|f| u16::from(f.code)).unwrap_or(close::NORMAL),
                )
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
        };
        let label = frame_type_label(&text);
        let outgoing = match rewrite_client_frame(&text, auth) {
            ClientAction::ForwardOriginal => text,
            ClientAction::Forward(rewritten) => rewritten.into(),
            ClientAction::Reply(reply) => {
                stats.local_replies += 1;
                metrics
                    .frames
                    .with_label_values(&["local_reply", label])
                    .inc();
                if replies.send(reply).await.is_err() {
                    return Ending::ClientGone;
                }
                continue;
            }
        };
        let len = outgoing.len() as u64;
        if u_tx.send(Message::Text(outgoing)).await.is_err() {
            return Ending::UpstreamGone;
        }
        stats.frames_to_upstream += 1;
        stats.bytes_to_upstream += len;
        metrics
            .frames
            .with_label_values(&["client_to_upstream", label])
            .inc();
        bytes_up.inc_by(len);
    }
}

async fn upstream_to_client<C, U>(
    u_rx: &mut SplitStream<WebSocketStream<U>>,
    c_tx: &mut SplitSink<WebSocketStream<C>, Message>,
    replies: &mut mpsc::Receiver<String>,
    metrics: &Metrics,
    stats: &mut Stats,
) -> Ending
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let bytes_down = metrics.bytes.with_label_values(&["upstream_to_client"]);
    loop {
        tokio::select! {
            biased;
            reply = replies.recv() => {
                let Some(reply) = reply else { continue };
                if c_tx.send(Message::Text(reply.into())).await.is_err() {
                    return Ending::ClientGone;
                }
            }
            msg = u_rx.next() => {
                let msg = match msg {
                    None | Some(Err(_)) => return Ending::UpstreamGone,
                    Some(Ok(msg)) => msg,
                };
                let (len, label) = match &msg {
                    Message::Text(t) => (t.len() as u64, frame_type_label(t)),
                    Message::Binary(b) => (b.len() as u64, "binary"),
                    Message::Close(frame) => {
                        return Ending::UpstreamClosed(frame.as_ref().map(|f| u16::from(f.code)).unwrap_or(close::NORMAL))
                    }
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                };
                // Forwarded as received: the same bytes, no re-serialisation.
                if c_tx.send(msg).await.is_err() {
                    return Ending::ClientGone;
                }
                stats.frames_to_client += 1;
                stats.bytes_to_client += len;
                metrics.frames.with_label_values(&["upstream_to_client", label]).inc();
                bytes_down.inc_by(len);
            }
        }
    }
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
    }
}
