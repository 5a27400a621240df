//! The socket itself: its state, the write side (frames committed whole,
//! one in flight, the buffer freed once written), and the `Stream`/`Sink`
//! faces the pump drives. The read side is in `read.rs`.

use super::frame::{self, Header, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT};
use bytes::BytesMut;
use futures_util::{Sink, Stream};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::error::{Error, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// Bytes read at once onto the stack when nothing is buffered: one read
/// holds a typical AppSync frame, and nothing stays allocated after it.
pub(super) const STACK_READ: usize = 8 * 1024;

/// The most one read adds to a partial frame's buffer: a peer that
/// announces a 5 MiB frame and sends a byte at a time makes the relay hold
/// what it sent, not what it announced.
pub const MAX_READ: usize = 64 * 1024;

/// Which end of the socket the relay is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The browser's leg: frames arrive masked and go out unmasked.
    Server,
    /// The upstream leg: frames arrive unmasked and go out masked.
    Client,
}

/// What one socket accepts from its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest single frame's payload.
    pub max_frame: usize,
    /// Largest message, all of its fragments together.
    pub max_message: usize,
}

impl Limits {
    /// The same limit for a frame and a message.
    pub fn of(max: usize) -> Limits {
        Limits {
            max_frame: max,
            max_message: max,
        }
    }
}

/// A message being reassembled from fragments.
pub(super) struct Partial {
    pub(super) text: bool,
    pub(super) data: BytesMut,
    /// How much of a text message's `data` is known to be UTF-8 (the
    /// rest is at most an unfinished character).
    pub(super) checked: usize,
}

/// A WebSocket over `S` after its handshake; see the module docs.
pub struct WsSocket<S> {
    pub(super) io: S,
    pub(super) role: Role,
    pub(super) limits: Limits,
    /// Bytes read and not yet a frame; no allocation while empty.
    pub(super) rd: BytesMut,
    /// The header of the frame `rd` is collecting, once read and checked.
    pub(super) header: Option<Header>,
    pub(super) fragments: Option<Box<Partial>>,
    /// Frames committed for writing, in order, and how much went out.
    pub(super) wr: Vec<u8>,
    pub(super) written: usize,
    /// An automatic answer (pong, close reply) waiting for `wr` to empty.
    pub(super) reply: Option<Vec<u8>>,
    pub(super) close_sent: bool,
    pub(super) close_received: bool,
    /// An error was returned or the closing handshake ended: reads end.
    pub(super) ended: bool,
}

impl<S> WsSocket<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// A socket whose handshake is done; `already_read` holds bytes that
    /// arrived after the handshake's response.
    pub fn new(io: S, role: Role, limits: Limits, already_read: &[u8]) -> WsSocket<S> {
        WsSocket {
            io,
            role,
            limits,
            rd: BytesMut::from(already_read),
            header: None,
            fragments: None,
            wr: Vec::new(),
            written: 0,
            reply: None,
            close_sent: false,
            close_received: false,
            ended: false,
        }
    }

    /// Sends a close frame (`None`: without a code) and flushes it.
    pub async fn close(&mut self, frame: Option<CloseFrame>) -> Result<(), Error> {
        futures_util::SinkExt::send(self, Message::Close(frame)).await
    }

    /// Writes what is committed, then any automatic answer. `Ready(Ok)`
    /// when nothing is left; the write buffer is freed then.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        loop {
            if self.written == self.wr.len() {
                match self.reply.take() {
                    Some(reply) => {
                        self.wr = reply;
                        self.written = 0;
                    }
                    None => {
                        self.wr = Vec::new();
                        self.written = 0;
                        return Poll::Ready(Ok(()));
                    }
                }
            }
            let n =
                std::task::ready!(Pin::new(&mut self.io).poll_write(cx, &self.wr[self.written..]))
                    .map_err(Error::Io)?;
            if n == 0 {
                return Poll::Ready(Err(Error::Io(io::ErrorKind::WriteZero.into())));
            }
            self.written += n;
        }
    }

    fn poll_write_and_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        std::task::ready!(self.poll_write_out(cx))?;
        Pin::new(&mut self.io).poll_flush(cx).map_err(Error::Io)
    }

    /// Appends one whole frame to the write buffer (masked on the client
    /// leg).
    fn commit(&mut self, opcode: u8, payload: &[u8]) {
        encode(&mut self.wr, self.role, opcode, payload);
    }
}

pub(super) fn close_payload(frame: Option<&CloseFrame>) -> Vec<u8> {
    let Some(frame) = frame else {
        return Vec::new();
    };
    let mut payload = u16::from(frame.code).to_be_bytes().to_vec();
    payload.extend_from_slice(frame.reason.as_bytes());
    payload
}

/// Appends one final frame; the client leg masks with a fresh key.
pub(super) fn encode(out: &mut Vec<u8>, role: Role, opcode: u8, payload: &[u8]) {
    let mask = (role == Role::Client).then(rand::random::<[u8; 4]>);
    out.reserve(frame::MAX_HEADER + payload.len());
    frame::write_header(out, opcode, payload.len(), mask);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(key) = mask {
        frame::apply_mask(&mut out[start..], key);
    }
}

impl<S> Stream for WsSocket<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    type Item = Result<Message, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        // An answer owed to the peer (pong, close reply) goes out first; a
        // peer that does not read does not stop us reading.
        if this.reply.is_some() || this.written < this.wr.len() {
            match this.poll_write_and_flush(cx) {
                Poll::Ready(Err(e)) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(e)));
                }
                // The answer to the peer's close is the last thing to do:
                // the stream ends once it is out.
                Poll::Pending if this.close_received => return Poll::Pending,
                _ => {}
            }
        }
        if this.ended || (this.close_received && this.close_sent) {
            // Both closes seen: no message may follow.
            this.ended = true;
            return Poll::Ready(None);
        }
        match std::task::ready!(this.poll_message(cx)) {
            Ok(Some(msg)) => Poll::Ready(Some(Ok(msg))),
            Ok(None) => {
                this.ended = true;
                Poll::Ready(None)
            }
            Err(e) => {
                this.ended = true;
                this.rd = BytesMut::new();
                this.fragments = None;
                Poll::Ready(Some(Err(e)))
            }
        }
    }
}

impl<S> Sink<Message> for WsSocket<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    type Error = Error;

    /// Ready once everything sent before has gone to the socket: one frame
    /// in flight.
    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.get_mut().poll_write_out(cx)
    }

    fn start_send(self: Pin<&mut Self>, msg: Message) -> Result<(), Error> {
        let this = self.get_mut();
        if this.close_sent {
            // A close after the peer's (already answered) is a no-op, as
            // in tungstenite; anything else is a caller's mistake.
            return match msg {
                Message::Close(_) => Ok(()),
                _ => Err(Error::Protocol(ProtocolError::SendAfterClosing)),
            };
        }
        match msg {
            Message::Text(t) => this.commit(OP_TEXT, t.as_bytes()),
            Message::Binary(b) => this.commit(OP_BINARY, &b),
            Message::Ping(p) => this.commit(OP_PING, &p),
            Message::Pong(p) => this.commit(OP_PONG, &p),
            Message::Close(frame) => {
                this.commit(OP_CLOSE, &close_payload(frame.as_ref()));
                this.close_sent = true;
                // A pending pong is not sent after our close.
                this.reply = None;
            }
            Message::Frame(_) => {
                return Err(Error::Protocol(ProtocolError::InvalidOpcode(0)));
            }
        }
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.get_mut().poll_write_and_flush(cx)
    }

    /// Sends a close (code-less) unless one was sent or answered, and
    /// flushes; the peer's answer is read by whoever reads next.
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = self.get_mut();
        if !this.close_sent {
            this.commit(OP_CLOSE, &[]);
            this.close_sent = true;
            this.reply = None;
        }
        this.poll_write_and_flush(cx)
    }
}
