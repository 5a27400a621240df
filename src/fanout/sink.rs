//! A browser connection's end of the hub: its bounded queue of
//! [`Delivery`]s, its lag signal, and the token carriers may borrow, and
//! [`offer`], the one way anything is queued for it (never waiting).

use crate::metrics::Metrics;
use crate::rewrite::UpstreamAuth;
use std::sync::atomic::{AtomicUsize, Ordering};
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

impl Delivery {
    /// What it weighs against the browser's byte budget.
    pub fn size(&self) -> usize {
        match self {
            Delivery::Frame { frame, .. } | Delivery::Refused { frame, .. } => frame.len(),
            Delivery::Joined { id, .. } => id.len(),
        }
    }
}

/// One browser connection's end of the hub: its queue, its lag signal, and
/// the token the carriers may use while it is a member.
pub struct Sink {
    tx: mpsc::Sender<Delivery>,
    lagged: CancellationToken,
    auth: Mutex<UpstreamAuth>,
    /// Bytes queued and not yet taken by the browser's connection.
    queued: AtomicUsize,
    /// `--shared-queue-bytes`.
    max_bytes: usize,
}

impl Sink {
    /// A browser's end: at most `queue` deliveries and `max_bytes` bytes
    /// waiting (one delivery larger than that when nothing else waits).
    pub fn new(
        auth: UpstreamAuth,
        queue: usize,
        max_bytes: usize,
    ) -> (Arc<Sink>, mpsc::Receiver<Delivery>) {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let sink = Sink {
            tx,
            lagged: CancellationToken::new(),
            auth: Mutex::new(auth),
            queued: AtomicUsize::new(0),
            max_bytes,
        };
        (Arc::new(sink), rx)
    }

    /// The browser's connection took `delivery` off the queue.
    pub fn taken(&self, delivery: &Delivery) {
        self.queued.fetch_sub(delivery.size(), Ordering::AcqRel);
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

/// Queues `delivery` for one browser without waiting; a full queue — in
/// deliveries or in bytes — marks the browser lagging (its connection then
/// closes). `true` when queued.
pub(crate) fn offer(sink: &Sink, delivery: Delivery, metrics: &Metrics) -> bool {
    if sink.lagged.is_cancelled() {
        return false;
    }
    let size = delivery.size();
    let before = sink.queued.fetch_add(size, Ordering::AcqRel);
    let lag = |sink: &Sink| {
        sink.queued.fetch_sub(size, Ordering::AcqRel);
        sink.lagged.cancel();
        metrics.limits_hit.with_label_values(&["shared_lag"]).inc();
        false
    };
    if before > 0 && before + size > sink.max_bytes {
        return lag(sink);
    }
    match sink.tx.try_send(delivery) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => lag(sink),
        Err(mpsc::error::TrySendError::Closed(_)) => {
            sink.queued.fetch_sub(size, Ordering::AcqRel);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: usize) -> Delivery {
        Delivery::Frame {
            member: 1,
            frame: "x".repeat(n),
        }
    }

    #[test]
    fn a_browser_is_lagging_past_its_byte_budget_not_only_its_count() {
        let metrics = Metrics::new();
        let (sink, mut rx) = Sink::new(UpstreamAuth::new("t".to_string(), "h"), 256, 1000);
        // One delivery larger than the budget reaches an idle browser.
        assert!(offer(&sink, frame(1500), &metrics));
        let d = rx.try_recv().unwrap();
        sink.taken(&d);
        assert!(offer(&sink, frame(600), &metrics));
        assert!(offer(&sink, frame(400), &metrics), "exactly the budget");
        assert!(!offer(&sink, frame(1), &metrics), "past the budget");
        assert!(sink.lagged().is_cancelled());
        assert_eq!(sink.queued.load(Ordering::Acquire), 1000);
    }
}
