//! Bytes from a peer → the relay's own WebSocket framing
//! (`appsync_relay::ws::WsSocket`), as the browser's leg (server role) or
//! the upstream leg (client role), read in chunks of a size the input
//! chooses. tungstenite, an independent implementation, reads the same
//! bytes with the same limits and is the oracle.
//!
//! Input: byte 0 picks the role (bit 0) and the limits (bits 1–2); byte 1
//! the read size (1..=1 148 bytes); the rest is what the peer sent.
//!
//! Invariants:
//! - never panics, and every read completes (the peer's bytes are all
//!   there: a `Pending` would be a hang);
//! - the messages yielded are tungstenite's, in order, up to and including
//!   the first close (after a close neither reads on);
//! - the stream fails exactly when tungstenite's does, unless a close came
//!   first.
#![no_main]

use appsync_relay::ws::{Limits, Role, WsSocket};
use futures_util::{FutureExt, StreamExt};
use libfuzzer_sys::fuzz_target;
use std::io::{self, Cursor, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::{Role as TRole, WebSocket, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error, Message};

/// The peer's bytes, at most `chunk` per read; writes are accepted and
/// dropped.
struct Peer<'a> {
    input: &'a [u8],
    chunk: usize,
}

impl AsyncRead for Peer<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.chunk.min(self.input.len()).min(buf.remaining());
        buf.put_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Peer<'_> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The same for tungstenite's blocking API.
struct SyncPeer<'a>(Cursor<&'a [u8]>);

impl Read for SyncPeer<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for SyncPeer<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[derive(Debug, PartialEq)]
enum End {
    /// A close was read (what follows it is not compared), or the stream
    /// ended cleanly.
    Closed,
    Failed,
}

fn ours(input: &[u8], role: Role, chunk: usize, limits: Limits) -> (Vec<Message>, End) {
    let mut ws = WsSocket::new(Peer { input, chunk }, role, limits, &[]);
    let mut seen = Vec::new();
    loop {
        let next = ws.next().now_or_never().expect("a read with every byte there hung");
        match next {
            None => return (seen, End::Closed),
            Some(Err(_)) => return (seen, End::Failed),
            Some(Ok(msg)) => {
                let close = matches!(msg, Message::Close(_));
                seen.push(msg);
                if close {
                    return (seen, End::Closed);
                }
            }
        }
    }
}

fn theirs(input: &[u8], role: TRole, limits: Limits) -> (Vec<Message>, End) {
    let config = WebSocketConfig::default()
        .max_frame_size(Some(limits.max_frame))
        .max_message_size(Some(limits.max_message));
    let mut ws = WebSocket::from_raw_socket(SyncPeer(Cursor::new(input)), role, Some(config));
    let mut seen = Vec::new();
    loop {
        match ws.read() {
            Ok(msg) => {
                let close = matches!(msg, Message::Close(_));
                seen.push(msg);
                if close {
                    return (seen, End::Closed);
                }
            }
            Err(Error::ConnectionClosed | Error::AlreadyClosed) => return (seen, End::Closed),
            Err(_) => return (seen, End::Failed),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, size, input @ ..] = data else {
        return;
    };
    let (role, trole) = if mode & 1 == 0 {
        (Role::Server, TRole::Server)
    } else {
        (Role::Client, TRole::Client)
    };
    let limits = match (mode >> 1) & 3 {
        0 => Limits::of(1 << 20),
        1 => Limits::of(200),
        2 => Limits {
            max_frame: 64,
            max_message: 300,
        },
        _ => Limits::of(0),
    };
    let chunk = 1 + usize::from(*size % 32) * 37;
    let (got, end) = ours(input, role, chunk, limits);
    let (want, want_end) = theirs(input, trole, limits);
    assert_eq!(got, want, "messages differ from tungstenite's");
    assert_eq!(end, want_end, "ended differently from tungstenite");
});
