//! The relay's own WebSocket framing (RFC 6455), on both legs: a
//! [`WsSocket`] is a `Stream` of tungstenite `Message`s and a `Sink` of
//! them, so the pump drives it exactly as it drove tungstenite's
//! `WebSocketStream`, with the same errors.
//!
//! **Why our own.** tungstenite allocates a read buffer per socket when the
//! socket is built, and keeps it, and keeps its write buffer at the largest
//! frame written: ~5 KiB on every idle relayed connection, with nothing in
//! flight (benches/README.md, "Memory"). Here an idle socket holds no
//! buffer at all:
//! - a read goes first into a buffer on the poll function's stack; only
//!   bytes that arrived go to the heap, and a frame that arrived whole is
//!   handed on as those bytes (no second copy);
//! - a frame that is still partial keeps a heap buffer that grows only as
//!   its bytes arrive (at most [`MAX_READ`] per read), never to the length
//!   the peer announced;
//! - a written frame's buffer is freed once the peer's socket took it.
//!
//! **What is checked**, before a payload byte is read where the header
//! allows: reserved bits (no extension is negotiated), masking by role
//! (a browser must mask, AppSync must not), known opcodes, control frames
//! final and ≤ 125 bytes, continuation order, the frame and message limits
//! of [`Limits`]; then UTF-8 for text and close reasons, and close codes.
//! Pings are answered (the latest one, if the peer sends faster than it
//! reads); a close is answered with the same code. Errors are tungstenite's
//! `Error` values, so `relay::close` maps them to close codes unchanged.
//!
//! Fragmented messages are reassembled (browsers do not fragment, but may);
//! the relay itself always sends whole frames.

pub mod frame;
mod handshake;

pub use handshake::{client_handshake, HandshakeError};

use bytes::{Buf, BytesMut};
use frame::{Header, OP_BINARY, OP_CLOSE, OP_CONTINUE, OP_PING, OP_PONG, OP_TEXT};
use futures_util::{Sink, Stream};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Bytes read at once onto the stack when nothing is buffered: one read
/// holds a typical AppSync frame, and nothing stays allocated after it.
const STACK_READ: usize = 8 * 1024;

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
struct Partial {
    text: bool,
    data: BytesMut,
}

/// A WebSocket over `S` after its handshake; see the module docs.
pub struct WsSocket<S> {
    io: S,
    role: Role,
    limits: Limits,
    /// Bytes read and not yet a frame; no allocation while empty.
    rd: BytesMut,
    /// The header of the frame `rd` is collecting, once read and checked.
    header: Option<Header>,
    fragments: Option<Box<Partial>>,
    /// Frames committed for writing, in order, and how much went out.
    wr: Vec<u8>,
    written: usize,
    /// An automatic answer (pong, close reply) waiting for `wr` to empty.
    reply: Option<Vec<u8>>,
    close_sent: bool,
    close_received: bool,
    /// An error was returned or the closing handshake ended: reads end.
    ended: bool,
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

    pub fn get_ref(&self) -> &S {
        &self.io
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

    /// Reads until one message is complete.
    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Message>, Error>> {
        loop {
            if let Some(msg) = self.next_frame()? {
                return Poll::Ready(Ok(Some(msg)));
            }
            if self.ended {
                return Poll::Ready(Ok(None));
            }
            match std::task::ready!(self.poll_fill(cx)) {
                Ok(0) => {
                    let clean = self.close_received && self.rd.is_empty();
                    return Poll::Ready(if clean {
                        Ok(None)
                    } else {
                        Err(Error::Protocol(ProtocolError::ResetWithoutClosingHandshake))
                    });
                }
                Ok(_) => {}
                Err(e) if self.close_received && e.kind() == io::ErrorKind::ConnectionReset => {
                    return Poll::Ready(Ok(None))
                }
                Err(e) => return Poll::Ready(Err(Error::Io(e))),
            }
        }
    }

    /// Reads more bytes: onto the stack when nothing is buffered (nothing
    /// is allocated unless bytes arrive), else into the partial frame's
    /// buffer, growing it by at most what that frame still lacks.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.rd.is_empty() {
            let mut stack = [MaybeUninit::<u8>::uninit(); STACK_READ];
            let mut buf = ReadBuf::uninit(&mut stack);
            std::task::ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
            let got = buf.filled();
            if !got.is_empty() {
                self.rd = BytesMut::from(got);
            }
            return Poll::Ready(Ok(got.len()));
        }
        let wanted = match &self.header {
            // Bounded by the limit check that admitted the header.
            Some(h) => (h.header_len as u64 + h.len).saturating_sub(self.rd.len() as u64),
            None => frame::MAX_HEADER as u64,
        };
        let room = usize::try_from(wanted)
            .unwrap_or(MAX_READ)
            .clamp(1, MAX_READ);
        self.rd.reserve(room);
        let before = self.rd.len();
        std::task::ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.rd
        ))?;
        Poll::Ready(Ok(self.rd.len() - before))
    }

    /// Takes the next frame out of `rd` if it is whole: `Some` when it
    /// completes a message for the caller.
    fn next_frame(&mut self) -> Result<Option<Message>, Error> {
        loop {
            let header = match self.header {
                Some(h) => h,
                None => {
                    let Some(h) = frame::parse(&self.rd) else {
                        return Ok(None);
                    };
                    self.check(&h)?;
                    self.header = Some(h);
                    h
                }
            };
            let total = header.header_len as u64 + header.len;
            if (self.rd.len() as u64) < total {
                return Ok(None);
            }
            self.header = None;
            self.rd.advance(header.header_len);
            // `len` ≤ a limit that is a usize (checked in `check`).
            let mut payload = self.rd.split_to(header.len as usize);
            if self.rd.is_empty() {
                // Let go of the read allocation: the payload keeps the part
                // it needs, and an idle socket keeps none.
                self.rd = BytesMut::new();
            }
            if let Some(key) = header.mask {
                frame::apply_mask(&mut payload, key);
            }
            if let Some(msg) = self.on_frame(&header, payload)? {
                return Ok(Some(msg));
            }
        }
    }

    /// What a header may say on this leg, checked before its payload is
    /// read.
    fn check(&self, h: &Header) -> Result<(), Error> {
        let protocol = |e| Err(Error::Protocol(e));
        if h.rsv != 0 {
            return protocol(ProtocolError::NonZeroReservedBits);
        }
        match (self.role, h.mask.is_some()) {
            (Role::Server, false) => return protocol(ProtocolError::UnmaskedFrameFromClient),
            (Role::Client, true) => return protocol(ProtocolError::MaskedFrameFromServer),
            _ => {}
        }
        if h.is_control() {
            if !matches!(h.opcode, OP_CLOSE | OP_PING | OP_PONG) {
                return protocol(ProtocolError::UnknownControlFrameType(h.opcode));
            }
            if !h.fin {
                return protocol(ProtocolError::FragmentedControlFrame);
            }
            if h.len > frame::MAX_CONTROL_PAYLOAD {
                return protocol(ProtocolError::ControlFrameTooBig);
            }
            return Ok(());
        }
        match (h.opcode, &self.fragments) {
            (OP_CONTINUE, None) => return protocol(ProtocolError::UnexpectedContinueFrame),
            (OP_TEXT, Some(_)) => return protocol(ProtocolError::ExpectedFragment(Data::Text)),
            (OP_BINARY, Some(_)) => return protocol(ProtocolError::ExpectedFragment(Data::Binary)),
            (OP_CONTINUE | OP_TEXT | OP_BINARY, _) => {}
            (other, _) => return protocol(ProtocolError::UnknownDataFrameType(other)),
        }
        let so_far = self.fragments.as_ref().map_or(0, |p| p.data.len()) as u64;
        let too_long = |size: u64, max_size: usize| {
            Err(Error::Capacity(CapacityError::MessageTooLong {
                size: usize::try_from(size).unwrap_or(usize::MAX),
                max_size,
            }))
        };
        if h.len > self.limits.max_frame as u64 {
            return too_long(h.len, self.limits.max_frame);
        }
        if so_far.saturating_add(h.len) > self.limits.max_message as u64 {
            return too_long(so_far.saturating_add(h.len), self.limits.max_message);
        }
        Ok(())
    }

    /// One whole, checked, unmasked frame.
    fn on_frame(&mut self, h: &Header, payload: BytesMut) -> Result<Option<Message>, Error> {
        match h.opcode {
            OP_PING => {
                if !self.close_sent && !self.close_received {
                    // Only the latest ping is answered if they pile up.
                    let mut pong = Vec::with_capacity(payload.len() + frame::MAX_HEADER);
                    encode(&mut pong, self.role, OP_PONG, &payload);
                    self.reply = Some(pong);
                }
                Ok(Some(Message::Ping(payload.freeze())))
            }
            OP_PONG => Ok(Some(Message::Pong(payload.freeze()))),
            OP_CLOSE => self.on_close(&payload).map(|f| Some(Message::Close(f))),
            _ => {
                let text = match self.fragments.take() {
                    None => h.opcode == OP_TEXT,
                    Some(mut partial) => {
                        partial.data.extend_from_slice(&payload);
                        if !h.fin {
                            self.fragments = Some(partial);
                            return Ok(None);
                        }
                        return message(partial.text, partial.data).map(Some);
                    }
                };
                if h.fin {
                    return message(text, payload).map(Some);
                }
                self.fragments = Some(Box::new(Partial {
                    text,
                    data: payload,
                }));
                Ok(None)
            }
        }
    }

    fn on_close(&mut self, payload: &[u8]) -> Result<Option<CloseFrame>, Error> {
        let frame = match payload {
            [] => None,
            [_] => return Err(Error::Protocol(ProtocolError::InvalidCloseSequence)),
            [hi, lo, reason @ ..] => {
                let reason = std::str::from_utf8(reason)?;
                let code = CloseCode::from(u16::from_be_bytes([*hi, *lo]));
                Some(if code.is_allowed() {
                    CloseFrame {
                        code,
                        reason: reason.into(),
                    }
                } else {
                    CloseFrame {
                        code: CloseCode::Protocol,
                        reason: Utf8Bytes::from_static("Protocol violation"),
                    }
                })
            }
        };
        if self.close_received {
            return Ok(frame);
        }
        self.close_received = true;
        if !self.close_sent {
            // Answer with the same close; it goes out before anything else
            // this socket is asked to send (and nothing else may follow).
            let mut answer = Vec::new();
            encode(
                &mut answer,
                self.role,
                OP_CLOSE,
                &close_payload(frame.as_ref()),
            );
            self.reply = Some(answer);
            self.close_sent = true;
        } else {
            // Our close was answered: the handshake is over.
            self.ended = true;
        }
        Ok(frame)
    }
}

/// A whole message's payload as the caller's `Message`.
fn message(text: bool, payload: BytesMut) -> Result<Message, Error> {
    if text {
        Ok(Message::Text(Utf8Bytes::try_from(payload.freeze())?))
    } else {
        Ok(Message::Binary(payload.freeze()))
    }
}

fn close_payload(frame: Option<&CloseFrame>) -> Vec<u8> {
    let Some(frame) = frame else {
        return Vec::new();
    };
    let mut payload = u16::from(frame.code).to_be_bytes().to_vec();
    payload.extend_from_slice(frame.reason.as_bytes());
    payload
}

/// Appends one final frame; the client leg masks with a fresh key.
fn encode(out: &mut Vec<u8>, role: Role, opcode: u8, payload: &[u8]) {
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

#[cfg(test)]
mod tests;
