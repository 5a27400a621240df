//! One browser connection's shared-channel subscriptions (`fanout`): the
//! check with AppSync before each join, the joins themselves, and the events
//! the hub queues for this browser.
//!
//! **The check.** With `--shared-channel-check subscribe` (the default) a
//! browser subscribing to a shared channel is first subscribed *on its own
//! upstream connection, with its own token*, under a relay-chosen probe id:
//! AppSync's answer is the decision (a namespace's `onSubscribe` handler and
//! auth modes run for this user). `subscribe_error` goes to the browser
//! under its id, and nothing is joined; `subscribe_success` is followed by
//! an unsubscribe of the probe and the join. The probe's own frames (its
//! acknowledgement, any event that slips in before the unsubscribe, the
//! unsubscribe's answer) never reach the browser.
//!
//! **The join.** The browser hears `subscribe_success` once the shared
//! upstream subscription is active, then every event with its own id. Its
//! queue is bounded (`--shared-queue`): a browser that falls that far
//! behind is closed with 1008 and nobody else waits. Leaving (unsubscribe,
//! or the socket ending for any reason, 4401 included) takes it off the
//! hub, which never touches the shared subscription for anyone else.

use crate::fanout::splice::IdSpan;
use crate::fanout::{Delivery, Hub, MemberKey, Sink};
use crate::protocol::is_valid_id;
use crate::rewrite::{subscribe_frame, UpstreamAuth};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::mpsc;
use tokio_util::sync::WaitForCancellationFutureOwned;

struct Probe {
    id: String,
    /// The shared channel (canonical) it checks and then joins.
    key: String,
}

pub struct Membership {
    hub: Arc<Hub>,
    sink: Arc<Sink>,
    rx: mpsc::Receiver<Delivery>,
    lagged: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Browser subscription id → its place on the hub.
    joined: HashMap<String, MemberKey>,
    /// Probe id → what it checks.
    probes: HashMap<String, Probe>,
    /// Probes being undone → answers from AppSync still owed for them (and
    /// swallowed): the unsubscribe's, and the subscribe's when the browser
    /// cancelled before it came. They hold a subscription slot until then.
    closing: HashMap<String, u8>,
    /// Frames for the browser's upstream, waiting for its write slot.
    outbox: VecDeque<String>,
    next_probe: u64,
}

impl Membership {
    pub fn new(hub: Arc<Hub>, auth: &UpstreamAuth) -> Membership {
        let cfg = hub.config();
        let (sink, rx) = Sink::new(auth.clone(), cfg.queue, cfg.queue_bytes);
        let lagged = Box::pin(sink.lagged().clone().cancelled_owned());
        Membership {
            hub,
            sink,
            rx,
            lagged,
            joined: HashMap::new(),
            probes: HashMap::new(),
            closing: HashMap::new(),
            outbox: VecDeque::new(),
            next_probe: 0,
        }
    }

    /// Shared subscriptions held, being checked, or being undone upstream.
    pub fn len(&self) -> usize {
        self.joined.len() + self.probes.len() + self.closing.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `id` is one of this browser's shared subscriptions (or a
    /// probe's id: a browser may not take it while it is in use).
    /// The browser ids of its shared subscriptions (joined or being
    /// checked).
    pub fn ids(&self) -> Vec<String> {
        let probes = self.probes.values().map(|p| p.id.clone());
        self.joined.keys().cloned().chain(probes).collect()
    }

    /// The joined shared subscriptions: browser id and channel.
    pub fn joined(&self) -> impl Iterator<Item = (&str, &str)> {
        self.joined
            .iter()
            .map(|(id, member)| (id.as_str(), member.channel()))
    }

    /// Leaves the shared subscription `id` (the channel policy no longer
    /// allows it): no further event of it reaches this browser.
    pub fn revoke(&mut self, id: &str) -> bool {
        match self.joined.remove(id) {
            Some(member) => {
                self.hub.leave(&member);
                true
            }
            None => false,
        }
    }

    pub fn uses(&self, id: &str) -> bool {
        self.joined.contains_key(id)
            || self.probes.values().any(|p| p.id == id)
            || self.probes.contains_key(id)
            || self.closing.contains_key(id)
    }

    /// A browser subscription `id` to the shared channel `key`: checked
    /// first (`check`) or joined at once.
    pub fn subscribe(
        &mut self,
        id: &str,
        key: &str,
        auth: &UpstreamAuth,
        check: bool,
        taken: impl Fn(&str) -> bool,
    ) {
        if !check {
            self.hub
                .metrics()
                .shared_probes
                .with_label_values(&["skipped"])
                .inc();
            let member = self.hub.join(key, id, &self.sink);
            self.joined.insert(id.to_owned(), member);
            return;
        }
        let probe = loop {
            self.next_probe += 1;
            let candidate = format!("relay-check-{}-{}", self.next_probe, rand_suffix());
            if is_valid_id(&candidate) && !self.uses(&candidate) && !taken(&candidate) {
                break candidate;
            }
        };
        // The probe asks AppSync about the channel the browser will
        // receive: the shared key, in canonical form (`/ns/a`, not the
        // `ns/a/` AppSync's pattern also allows), so what is checked is
        // exactly what is joined, however AppSync names the variants.
        self.outbox.push_back(subscribe_frame(&probe, key, auth));
        self.probes.insert(
            probe,
            Probe {
                id: id.to_owned(),
                key: key.to_owned(),
            },
        );
    }

    /// An unsubscribe from the browser; `true` when it was a shared
    /// subscription (the relay answers it: nothing goes upstream). One
    /// still being checked gets its subscribe answered first, in `replies`
    /// (`subscribe_error`: it was never joined).
    pub fn unsubscribe(&mut self, id: &str, replies: &mut VecDeque<String>) -> bool {
        if let Some(member) = self.joined.remove(id) {
            self.hub.leave(&member);
            return true;
        }
        let probe = self
            .probes
            .iter()
            .find(|(_, p)| p.id == id)
            .map(|(probe, _)| probe.clone());
        if let Some(probe) = probe {
            // Still being checked: undo it upstream (both its answers are
            // swallowed), and answer the browser's subscribe now.
            self.probes.remove(&probe);
            self.closing.insert(probe.clone(), 2);
            self.outbox.push_back(unsubscribe_frame(&probe));
            replies.push_back(crate::protocol::error_frame(
                "subscribe_error",
                Some(id),
                crate::protocol::error_type::BAD_REQUEST,
                "Unsubscribed before the subscription was confirmed",
            ));
            return true;
        }
        false
    }

    /// Bookkeeping for a frame from the browser's own upstream; `true` when
    /// it was a probe's and the browser must not see it. A refusal is
    /// pushed to `replies` under the browser's id.
    pub fn on_upstream(&mut self, label: &str, text: &str, replies: &mut VecDeque<String>) -> bool {
        if self.probes.is_empty() && self.closing.is_empty() {
            return false;
        }
        if !matches!(
            label,
            "subscribe_success"
                | "subscribe_error"
                | "data"
                | "unsubscribe_success"
                | "unsubscribe_error"
        ) {
            return false;
        }
        let Some(span) = IdSpan::find(text) else {
            return false;
        };
        let probe_id = span.id(text);
        if let Some(owed) = self.closing.get_mut(probe_id) {
            if label != "data" {
                *owed = owed.saturating_sub(1);
                if *owed == 0 {
                    self.closing.remove(probe_id);
                }
            }
            return true;
        }
        let Some(probe) = self.probes.remove(probe_id) else {
            return false;
        };
        let metrics = self.hub.metrics();
        match label {
            "subscribe_success" => {
                metrics.shared_probes.with_label_values(&["allowed"]).inc();
                self.closing.insert(probe_id.to_owned(), 1);
                self.outbox.push_back(unsubscribe_frame(probe_id));
                let member = self.hub.join(&probe.key, &probe.id, &self.sink);
                self.joined.insert(probe.id, member);
            }
            "subscribe_error" => {
                metrics.shared_probes.with_label_values(&["refused"]).inc();
                replies.push_back(span.with_id(text, &probe.id));
            }
            // An event or an unsubscribe answer for a probe not yet
            // answered: keep waiting for its subscribe answer.
            _ => {
                self.probes.insert(probe_id.to_owned(), probe);
            }
        }
        true
    }

    /// The next frame for the browser's upstream, when its slot is free.
    pub fn next_upstream(&mut self) -> Option<String> {
        self.outbox.pop_front()
    }

    /// The browser's upstream was re-dialled: probes sent into the old one
    /// are sent again (their answers were lost with it).
    pub fn resend_probes(&mut self, auth: &UpstreamAuth) {
        self.closing.clear();
        self.outbox.clear();
        for (probe, p) in &self.probes {
            self.outbox.push_back(subscribe_frame(probe, &p.key, auth));
        }
    }

    /// The token was renewed: carriers may use the new one.
    pub fn set_auth(&self, auth: &UpstreamAuth) {
        self.sink.set_auth(auth);
    }

    pub fn poll_delivery(&mut self, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        let polled = self.rx.poll_recv(cx);
        if let Poll::Ready(Some(d)) = &polled {
            self.sink.taken(d);
        }
        polled
    }

    /// The browser id of membership `number`, if it is still one of this
    /// browser's shared subscriptions.
    pub fn current(&self, number: u64) -> Option<&str> {
        self.joined
            .iter()
            .find(|(_, key)| key.number() == number)
            .map(|(id, _)| id.as_str())
    }

    /// A refusal of a joined subscription (the hub dropped it).
    pub fn forget(&mut self, id: &str) {
        self.joined.remove(id);
    }

    /// Ready once the hub found this browser too far behind.
    pub fn poll_lagged(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.lagged.as_mut().poll(cx)
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        for member in self.joined.values() {
            self.hub.leave(member);
        }
    }
}

fn unsubscribe_frame(id: &str) -> String {
    serde_json::json!({"type": "unsubscribe", "id": id}).to_string()
}

/// Random hex digits, so a browser cannot guess a probe's id ahead.
fn rand_suffix() -> String {
    format!("{:016x}", rand::random::<u64>())
}
