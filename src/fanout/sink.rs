//! A browser connection's end of the hub: its bounded queue of
//! [`Delivery`]s, its lag signal, and the token carriers may borrow, and
//! [`offer`], the one way anything is queued for it (never waiting).

use crate::metrics::Metrics;
use crate::rewrite::UpstreamAuth;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What a browser's connection receives from the hub. `member` is the
/// membership it was queued for ([`MemberKey::number`]): one queued before
/// the browser unsubscribed (and perhaps reused the id) is recognised as
/// stale and dropped.
#[derive(Debug)]
pub enum Delivery {
    /// An event, already carrying the browser's subscription id.
    Frame { member: u64, frame: String },
    /// The shared subscription is active: answer `subscribe_success`.
    Joined { member: u64, id: String },
    /// AppSync refused the shared subscription: this frame (a
    /// `subscribe_error` with the browser's id) is the answer.
    Refused { member: u64, frame: String },
}

/// One browser connection's end of the hub: its queue, its lag signal, and
/// the token the carriers may use while it is a member.
pub struct Sink {
    tx: mpsc::Sender<Delivery>,
    lagged: CancellationToken,
    auth: Mutex<UpstreamAuth>,
}

impl Sink {
    pub fn new(auth: UpstreamAuth, queue: usize) -> (Arc<Sink>, mpsc::Receiver<Delivery>) {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let sink = Sink {
            tx,
            lagged: CancellationToken::new(),
            auth: Mutex::new(auth),
        };
        (Arc::new(sink), rx)
    }

    pub fn lagged(&self) -> &CancellationToken {
        &self.lagged
    }

    /// The connection renewed its token: carriers use the new one from now.
    pub fn set_auth(&self, auth: &UpstreamAuth) {
        *self.auth.lock().unwrap_or_else(|e| e.into_inner()) = auth.clone();
    }

    pub(crate) fn auth(&self) -> UpstreamAuth {
        self.auth.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Queues `delivery` for one browser without waiting; a full queue marks
/// the browser lagging (its connection then closes). `true` when queued.
pub(crate) fn offer(sink: &Sink, delivery: Delivery, metrics: &Metrics) -> bool {
    if sink.lagged.is_cancelled() {
        return false;
    }
    match sink.tx.try_send(delivery) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            sink.lagged.cancel();
            metrics.limits_hit.with_label_values(&["shared_lag"]).inc();
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}
