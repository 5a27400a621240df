//! How a relayed connection ends: the [`Ending`]s, the close code each leg
//! gets for each (the table in docs/ARCHITECTURE.md, "Close codes"), which
//! upstream closes are worth a re-dial, and the closing handshake itself.
//!
//! Every close is bounded by [`CLOSE_TIMEOUT`]: a peer that never answers
//! cannot hold a task open.

use super::counters::Stats;
use crate::upstream::UpstreamSocket;
use crate::ws::WsSocket;
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

pub const NORMAL: u16 = 1000;
pub const GOING_AWAY: u16 = 1001;
pub const PROTOCOL_ERROR: u16 = 1002;
pub const UNSUPPORTED_DATA: u16 = 1003;
pub const INVALID_PAYLOAD: u16 = 1007;
pub const POLICY: u16 = 1008;
pub const TOO_BIG: u16 = 1009;
pub const UPSTREAM_UNAVAILABLE: u16 = 1013;
pub const REAUTHENTICATE: u16 = 4000;
pub const SESSION_ENDED: u16 = 4401;

/// How long a closing handshake may take on each leg.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

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
    /// Fell more than `--shared-queue` events behind on a shared channel.
    Lagging,
}

impl Ending {
    /// A stable name for the log line of a connection that ended.
    pub fn reason(&self) -> &'static str {
        match self {
            Ending::ClientClosed(_) => "client_closed",
            Ending::ClientGone => "client_gone",
            Ending::ClientBinary => "client_binary",
            Ending::ClientTooBig => "client_too_big",
            Ending::ClientProtocol => "client_protocol",
            Ending::ClientBadData => "client_bad_data",
            Ending::UpstreamClosed(_) => "upstream_closed",
            Ending::UpstreamGone => "upstream_gone",
            Ending::Draining => "draining",
            Ending::SessionEnded(reason) => reason,
            Ending::Reauthenticate => "reauthenticate",
            Ending::Idle => "idle",
            Ending::Lagging => "lagging",
        }
    }

    /// `(code to the browser, code to upstream)`; `None` when that leg is
    /// already gone and there is nobody to tell.
    pub fn close_codes(&self) -> (Option<u16>, Option<u16>) {
        match self {
            // Echo a browser's close upstream; the socket answers the browser.
            Ending::ClientClosed(code) => (None, Some(sendable(*code).unwrap_or(NORMAL))),
            Ending::ClientGone => (None, Some(GOING_AWAY)),
            Ending::ClientBinary => (Some(UNSUPPORTED_DATA), Some(NORMAL)),
            Ending::ClientTooBig => (Some(TOO_BIG), Some(NORMAL)),
            Ending::ClientProtocol => (Some(PROTOCOL_ERROR), Some(NORMAL)),
            Ending::ClientBadData => (Some(INVALID_PAYLOAD), Some(NORMAL)),
            Ending::UpstreamClosed(code) => (Some(map_upstream_close(*code)), None),
            Ending::UpstreamGone => (Some(UPSTREAM_UNAVAILABLE), None),
            Ending::Draining => (Some(GOING_AWAY), Some(GOING_AWAY)),
            Ending::SessionEnded(_) => (Some(SESSION_ENDED), Some(NORMAL)),
            Ending::Reauthenticate => (Some(REAUTHENTICATE), Some(NORMAL)),
            Ending::Idle => (Some(NORMAL), Some(NORMAL)),
            Ending::Lagging => (Some(POLICY), Some(NORMAL)),
        }
    }
}

/// The ending a browser-side read error means.
pub fn client_error(e: &WsError) -> Ending {
    match e {
        WsError::Capacity(_) => Ending::ClientTooBig,
        WsError::Utf8(_) => Ending::ClientBadData,
        WsError::Protocol(_) => Ending::ClientProtocol,
        _ => Ending::ClientGone,
    }
}

/// `code`, if a close frame may carry it on the wire.
fn sendable(code: u16) -> Option<u16> {
    crate::protocol::is_sendable_close_code(code).then_some(code)
}

/// An upstream close becomes the browser's: a normal end stays normal,
/// application codes pass through, and anything that means "AppSync went
/// away" becomes 1013 so the client retries later.
fn map_upstream_close(code: u16) -> u16 {
    match code {
        NORMAL => NORMAL,
        1003 | 1007 | 1008 | 1009 | 1011 | 3000..=4999 => code,
        _ => UPSTREAM_UNAVAILABLE,
    }
}

/// Whether an upstream close is worth re-dialling: yes for going-away,
/// restarts, normal ends (AppSync's 24 h cap) and abnormal drops; no for
/// codes that say this connection's traffic itself was refused.
pub fn redialable(code: u16) -> bool {
    !matches!(code, 1003 | 1007 | 1008 | 1009 | 3000..=4999)
}

fn reason_for(code: u16) -> &'static str {
    match code {
        GOING_AWAY => "going away",
        UNSUPPORTED_DATA => "binary frames are not supported",
        INVALID_PAYLOAD => "text frame is not UTF-8",
        TOO_BIG => "message too big",
        POLICY => "too far behind",
        UPSTREAM_UNAVAILABLE => "upstream unavailable",
        REAUTHENTICATE => "reauthenticate",
        SESSION_ENDED => "session ended",
        _ => "",
    }
}

fn close_frame(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }))
}

/// The session is over: before its 4401, every subscription the browser
/// holds hears `subscribe_error` (`UnauthorizedException`, the reason label
/// as message). Amplify never reads close codes and reconnects after any
/// close; a `subscribe_error` ends the subscription it names for good (its
/// `error` callback, and no re-subscription), so an app learns its session
/// ended instead of retrying forever. Bounded by [`CLOSE_TIMEOUT`].
pub async fn tell_subscriptions<C>(client: &mut WsSocket<C>, ids: &[String], reason: &str)
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        for id in ids {
            let frame = crate::protocol::error_frame(
                "subscribe_error",
                Some(id),
                crate::protocol::error_type::UNAUTHORIZED,
                reason,
            );
            if client.send(Message::text(frame)).await.is_err() {
                return;
            }
        }
    })
    .await;
}

/// Sends each leg still open its close frame (see [`Ending::close_codes`]),
/// each bounded by [`CLOSE_TIMEOUT`].
pub async fn close_legs<C>(
    ending: &Ending,
    to_client: Option<u16>,
    mut to_upstream: Option<u16>,
    client: &mut WsSocket<C>,
    upstream: &mut UpstreamSocket,
    stats: &mut Stats,
) where
    C: AsyncRead + AsyncWrite + Unpin,
{
    if *ending == Ending::Draining {
        // Close upstream first and pass on whatever it still sends until its
        // close arrives: data AppSync already accepted for this browser is
        // delivered before the browser's 1001.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            if upstream.send(close_frame(GOING_AWAY, "")).await.is_err() {
                return;
            }
            while let Some(Ok(msg)) = upstream.next().await {
                match msg {
                    Message::Text(_) | Message::Binary(_) => {
                        stats.frames_to_client += 1;
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
            // Flushes the socket's automatic reply to the browser's close.
            None => {
                let _ = SinkExt::close(client).await;
            }
        }
    };
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
}
