//! Shared state of the emulated API: which WebSocket connections are open,
//! which subscriptions each holds, fan-out of published events, and the ring
//! of credentials the emulator has seen (for tests).
//!
//! Locks here are `std::sync::Mutex` held only for map operations and
//! non-blocking `try_send`s; this module must never `.await` while holding
//! one, and a publisher must never wait for a slow subscriber: a subscriber
//! whose outbound queue is full is disconnected instead (close 1008), the
//! way a real service sheds a consumer it cannot keep up with.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use serde_json::json;
use tokio::sync::{mpsc, watch};

use super::meter::Meter;
use crate::protocol::Channel;

/// Identifies one WebSocket connection inside the emulator.
pub(crate) type ConnId = u64;

/// Close code sent to a subscriber dropped because its queue was full.
pub const SLOW_CONSUMER_CLOSE_CODE: u16 = 1008;

/// An instruction to end a connection, delivered out of band so it works
/// even when the connection's data queue is full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CloseCmd {
    /// Send a close frame with this code and reason, then end.
    Frame { code: u16, reason: String },
    /// Drop the TCP connection without a close frame (a crash or network
    /// cut, as seen by the client).
    Abort,
}

struct Conn {
    /// Bounded queue of text frames (`data`) for this connection's writer.
    tx: mpsc::Sender<String>,
    control: watch::Sender<Option<CloseCmd>>,
    /// Active subscriptions by client-chosen id.
    subs: HashMap<String, Channel>,
}

/// What a new connection receives from [`Registry::register`].
pub(crate) struct Registration {
    pub id: ConnId,
    pub rx: mpsc::Receiver<String>,
    pub control: watch::Receiver<Option<CloseCmd>>,
}

#[derive(Default)]
pub(crate) struct Registry {
    conns: Mutex<HashMap<ConnId, Conn>>,
    next_id: AtomicU64,
    /// Kept here, beside the maps, so every way a connection or a
    /// subscription goes away also moves the gauges.
    meter: Meter,
}

/// A subscription id already active on the connection.
#[derive(Debug)]
pub(crate) struct DuplicateId;

// === impl Registry ===

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<ConnId, Conn>> {
        // A panic while holding the lock leaves only plain maps behind, which
        // are still consistent enough for an emulator: keep serving.
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn register(&self, queue: usize) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(queue.max(1));
        let (control_tx, control) = watch::channel(None);
        self.lock().insert(
            id,
            Conn {
                tx,
                control: control_tx,
                subs: HashMap::new(),
            },
        );
        self.meter.connection_opened();
        Registration { id, rx, control }
    }

    pub fn meter(&self) -> &Meter {
        &self.meter
    }

    pub fn deregister(&self, id: ConnId) {
        if let Some(conn) = self.lock().remove(&id) {
            self.forget(&conn);
        }
    }

    /// The gauges of a connection removed from the map.
    fn forget(&self, conn: &Conn) {
        self.meter.connection_closed();
        for channel in conn.subs.values() {
            self.meter.subscription_removed(&channel.as_subscribed());
        }
    }

    /// Adds a subscription, refusing an id already active on `conn`.
    pub fn subscribe(
        &self,
        conn: ConnId,
        sub_id: &str,
        channel: Channel,
    ) -> Result<(), DuplicateId> {
        let mut conns = self.lock();
        let Some(c) = conns.get_mut(&conn) else {
            // The connection was just dropped (slow consumer / close_all);
            // its task is about to notice, so the answer no longer matters.
            return Ok(());
        };
        if c.subs.contains_key(sub_id) {
            return Err(DuplicateId);
        }
        self.meter.subscription_added(&channel.as_subscribed());
        self.meter.count("subscribe", 1);
        c.subs.insert(sub_id.to_owned(), channel);
        Ok(())
    }

    /// Removes a subscription; `false` if `sub_id` was not active.
    pub fn unsubscribe(&self, conn: ConnId, sub_id: &str) -> bool {
        let removed = self
            .lock()
            .get_mut(&conn)
            .and_then(|c| c.subs.remove(sub_id));
        match removed {
            Some(channel) => {
                self.meter.subscription_removed(&channel.as_subscribed());
                self.meter.count("unsubscribe", 1);
                true
            }
            None => false,
        }
    }

    /// Queues one `data` frame per event for every subscription matching
    /// `channel`, on every connection. Connections whose queue is full are
    /// removed and told to close; the publisher never waits.
    pub fn publish(&self, channel: &Channel, events: &[String]) {
        for event in events {
            self.meter.count_message("publish", event.len());
        }
        let mut conns = self.lock();
        let mut slow = Vec::new();
        'conns: for (id, conn) in conns.iter() {
            for (sub_id, sub) in &conn.subs {
                if !sub.matches(channel) {
                    continue;
                }
                for event in events {
                    let frame = json!({"type": "data", "id": sub_id, "event": event}).to_string();
                    let bytes = frame.len();
                    match conn.tx.try_send(frame) {
                        Ok(()) => self.meter.count_message("delivery", bytes),
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            slow.push(*id);
                            continue 'conns;
                        }
                        // The connection task has ended and will deregister.
                        Err(mpsc::error::TrySendError::Closed(_)) => continue 'conns,
                    }
                }
            }
        }
        for id in slow {
            if let Some(conn) = conns.remove(&id) {
                self.forget(&conn);
                tracing::warn!(
                    conn = id,
                    "emulator: dropping subscriber whose queue is full"
                );
                conn.control.send_replace(Some(CloseCmd::Frame {
                    code: SLOW_CONSUMER_CLOSE_CODE,
                    reason: "subscriber too slow".into(),
                }));
            }
        }
    }

    /// Tells every connection to end; they deregister themselves.
    pub fn close_all(&self, cmd: CloseCmd) {
        for conn in self.lock().values() {
            conn.control.send_replace(Some(cmd.clone()));
        }
    }

    pub fn connection_count(&self) -> usize {
        self.lock().len()
    }

    pub fn subscription_count(&self) -> usize {
        self.lock().values().map(|c| c.subs.len()).sum()
    }
}

/// Bounded ring of credential values the emulator checked, oldest first.
pub(crate) struct AuthLog {
    seen: Mutex<VecDeque<String>>,
    capacity: usize,
}

// === impl AuthLog ===

impl AuthLog {
    pub fn new(capacity: usize) -> Self {
        AuthLog {
            seen: Mutex::new(VecDeque::with_capacity(capacity.min(1024))),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<String>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn record(&self, value: &str) {
        if self.capacity == 0 {
            return;
        }
        let mut seen = self.lock();
        while seen.len() >= self.capacity {
            seen.pop_front();
        }
        seen.push_back(value.to_owned());
    }

    pub fn snapshot(&self) -> Vec<String> {
        self.lock().iter().cloned().collect()
    }

    pub fn clear(&self) {
        self.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(s: &str, wildcard: bool) -> Channel {
        Channel::parse(s, wildcard).unwrap()
    }

    #[test]
    fn fans_out_to_matching_subscriptions_only() {
        let r = Registry::default();
        let mut a = r.register(8);
        let mut b = r.register(8);
        r.subscribe(a.id, "w", ch("/ns/*", true)).unwrap();
        r.subscribe(b.id, "x", ch("/ns/other", false)).unwrap();
        assert!(r.subscribe(a.id, "w", ch("/ns/a", false)).is_err());
        r.publish(&ch("/ns/a/b", false), &["1".into(), "2".into()]);
        let f: serde_json::Value = serde_json::from_str(&a.rx.try_recv().unwrap()).unwrap();
        assert_eq!(f, json!({"type":"data","id":"w","event":"1"}));
        assert!(a.rx.try_recv().is_ok());
        assert!(b.rx.try_recv().is_err());
        assert!(r.unsubscribe(a.id, "w"));
        assert!(!r.unsubscribe(a.id, "w"));
    }

    #[test]
    fn drops_a_subscriber_whose_queue_is_full() {
        let r = Registry::default();
        let a = r.register(1);
        r.subscribe(a.id, "s", ch("/ns/a", false)).unwrap();
        r.publish(&ch("/ns/a", false), &["1".into(), "2".into()]);
        assert_eq!(r.connection_count(), 0);
        assert!(matches!(
            a.control.borrow().clone(),
            Some(CloseCmd::Frame { code: 1008, .. })
        ));
    }

    #[test]
    fn auth_log_keeps_the_newest_values() {
        let log = AuthLog::new(2);
        for v in ["a", "b", "c"] {
            log.record(v);
        }
        assert_eq!(log.snapshot(), vec!["b", "c"]);
    }
}
