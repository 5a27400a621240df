//! One frame in flight towards one peer: the write slot each direction of
//! a relayed connection has (the pump's module docs say why there is exactly
//! one). It drives the socket's sink by hand — ready, send, flush — so the
//! pump can keep reading the other side while a write waits, and it knows
//! when the frame was queued, for `--send-timeout`.

use futures_util::Sink;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::Message;

struct Outgoing {
    /// `None` once handed to the socket (which copied it into its write
    /// buffer): only the flush is left, and the message is not held twice.
    msg: Option<Message>,
    since: Instant,
}

#[derive(Default)]
pub struct WriteSlot(Option<Outgoing>);

impl WriteSlot {
    pub fn is_busy(&self) -> bool {
        self.0.is_some()
    }

    /// Queues `msg`; the slot must be free.
    pub fn put(&mut self, msg: Message) {
        debug_assert!(self.0.is_none(), "one frame in flight per direction");
        self.0 = Some(Outgoing {
            msg: Some(msg),
            since: Instant::now(),
        });
    }

    /// When the queued frame's `--send-timeout` runs out.
    pub fn deadline(&self, send_timeout: Duration) -> Option<Instant> {
        self.0.as_ref()?.since.checked_add(send_timeout)
    }

    pub fn overdue(&self, now: Instant, send_timeout: Duration) -> bool {
        self.0
            .as_ref()
            .is_some_and(|o| now.saturating_duration_since(o.since) >= send_timeout)
    }

    /// Drops the frame (its socket is gone; a re-dial replays or answers
    /// what it stood for).
    pub fn clear(&mut self) {
        self.0 = None;
    }

    /// Drives the queued frame into `sink`. `Ready(true)` once written (the
    /// slot is free again), `Ready(false)` when the sink failed, `Pending`
    /// when empty or waiting.
    pub fn drive<S>(&mut self, sink: &mut S, cx: &mut Context<'_>) -> Poll<bool>
    where
        S: Sink<Message, Error = WsError> + Unpin,
    {
        let Some(out) = &mut self.0 else {
            return Poll::Pending;
        };
        if out.msg.is_some() {
            match Pin::new(&mut *sink).poll_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(false),
                Poll::Ready(Ok(())) => {}
            }
            if let Some(msg) = out.msg.take() {
                if Pin::new(&mut *sink).start_send(msg).is_err() {
                    return Poll::Ready(false);
                }
            }
        }
        match Pin::new(&mut *sink).poll_flush(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(result) => {
                self.0 = None;
                Poll::Ready(result.is_ok())
            }
        }
    }
}
