//! The read side of a [`WsSocket`]: bytes in, headers checked before
//! their payload is read, frames unmasked, messages reassembled, control
//! frames answered.

use super::frame::{self, Header, OP_BINARY, OP_CLOSE, OP_CONTINUE, OP_PING, OP_PONG, OP_TEXT};
use super::socket::{close_payload, encode, Partial, Role, WsSocket, MAX_READ, STACK_READ};
use bytes::{Buf, BufMut, BytesMut};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

impl<S> WsSocket<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// Reads until one message is complete.
    pub(super) fn poll_message(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Message>, Error>> {
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
    /// buffer, at most [`MAX_READ`] and never past the frame's end. So a
    /// frame that arrives in pieces ends exactly at its buffer's end, and
    /// the buffer goes with its payload: no leftover byte of a next frame
    /// keeps a large allocation alive.
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
        // The frame's whole length once its header is read (bounded by the
        // limit check that admitted it), else a header's.
        let end = match &self.header {
            Some(h) => h.header_len.saturating_add(h.len as usize),
            None => self.rd.len() + frame::MAX_HEADER,
        };
        let room = end.saturating_sub(self.rd.len()).clamp(1, MAX_READ);
        let need = self.rd.len() + room;
        if self.rd.capacity() < need {
            // Grow by doubling (amortised copies), but never past the
            // frame's end: not `reserve`, which may double past it.
            let target = need
                .max(self.rd.capacity().saturating_mul(2))
                .min(end.max(need));
            let mut grown = BytesMut::with_capacity(target);
            grown.extend_from_slice(&self.rd);
            self.rd = grown;
        }
        let before = self.rd.len();
        std::task::ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut (&mut self.rd).limit(room)
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
        let too_long = |size: u64, max_size: usize| {
            Err(Error::Capacity(CapacityError::MessageTooLong {
                size: usize::try_from(size).unwrap_or(usize::MAX),
                max_size,
            }))
        };
        // Every frame, control frames included, and first (as tungstenite
        // does: an oversized frame is 1009 whatever else is wrong with it).
        if h.len > self.limits.max_frame as u64 {
            return too_long(h.len, self.limits.max_frame);
        }
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
                let mut partial = match self.fragments.take() {
                    Some(mut partial) => {
                        partial.data.extend_from_slice(&payload);
                        partial
                    }
                    None if h.fin => return message(h.opcode == OP_TEXT, payload).map(Some),
                    // Its own buffer: the first fragment may share a read
                    // buffer with other frames, which it must not pin.
                    None => Box::new(Partial {
                        text: h.opcode == OP_TEXT,
                        data: BytesMut::from(&payload[..]),
                        checked: 0,
                    }),
                };
                if h.fin {
                    return message(partial.text, partial.data).map(Some);
                }
                if partial.text {
                    // Fail as soon as the text cannot be UTF-8, not at its
                    // last fragment.
                    partial.checked = utf8_prefix(&partial.data, partial.checked)?;
                }
                self.fragments = Some(partial);
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

/// How much of `data` is whole UTF-8 characters, given that `data[..from]`
/// is; an unfinished character at the end is not an error (its next
/// fragment may finish it).
fn utf8_prefix(data: &[u8], from: usize) -> Result<usize, Error> {
    match std::str::from_utf8(&data[from..]) {
        Ok(_) => Ok(data.len()),
        Err(e) if e.error_len().is_none() => Ok(from + e.valid_up_to()),
        Err(e) => Err(Error::Utf8(e.to_string())),
    }
}
