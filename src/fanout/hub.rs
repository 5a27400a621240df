//! The hub: which shared channels exist, who is on each, the linger after
//! the last browser leaves, and fan-out of each event into every member's
//! bounded queue (see the module docs of `fanout`).

use super::carrier::{self, Owner};
use super::patterns::SharedConfig;
use super::sink::{offer, Delivery, Sink};
use super::splice::IdSpan;
use crate::metrics::Metrics;
use crate::protocol::{error_frame, error_type};
use crate::rewrite::UpstreamAuth;
use crate::upstream::UpstreamConfig;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use tokio_util::sync::CancellationToken;

/// AppSync's documented limit of subscriptions per WebSocket connection.
pub const MAX_SUBSCRIPTIONS_PER_CARRIER: usize = 200;

struct Member {
    sink: Arc<Sink>,
    id: String,
}

struct Shared {
    /// The relay's subscription id upstream.
    sid: String,
    channel: String,
    carrier: usize,
    active: bool,
    members: HashMap<u64, Member>,
    /// Bumped whenever the member set changes, so a linger timer knows
    /// whether it is still the last word.
    generation: u64,
}

#[derive(Default)]
struct Inner {
    channels: HashMap<String, Shared>,
    /// Upstream subscription id → channel key.
    by_sid: HashMap<String, String>,
    carriers: Vec<carrier::Handle>,
}

/// The shared subscriptions of one relay process.
pub struct Hub {
    cfg: SharedConfig,
    upstream: UpstreamConfig,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    inner: Mutex<Inner>,
    next: AtomicU64,
    me: Weak<Hub>,
}

/// A browser's place on one shared channel, for [`Hub::leave`].
#[derive(Debug, Clone)]
pub struct MemberKey {
    key: String,
    member: u64,
}

impl MemberKey {
    /// Unique per join, in this process.
    pub fn number(&self) -> u64 {
        self.member
    }

    /// The shared channel joined (canonical path).
    pub fn channel(&self) -> &str {
        &self.key
    }
}

impl Hub {
    pub fn new(
        cfg: SharedConfig,
        upstream: UpstreamConfig,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Arc<Hub> {
        Arc::new_cyclic(|me| Hub {
            cfg,
            upstream,
            metrics,
            shutdown,
            inner: Mutex::new(Inner::default()),
            next: AtomicU64::new(1),
            me: me.clone(),
        })
    }

    pub fn config(&self) -> &SharedConfig {
        &self.cfg
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What a carrier subscribes with: the API key when configured, else
    /// the token of `sink`, a member of the channel.
    fn carrier_auth(&self, sink: &Sink) -> UpstreamAuth {
        self.cfg.api_key.clone().unwrap_or_else(|| sink.auth())
    }

    fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether a subscription to `key` may be shared: its channel exists
    /// already, or there is room for one more under `--shared-max-channels`.
    /// Soft: subscriptions still being checked are not counted, so the cap
    /// can be passed by the checks in flight (each bounded per connection
    /// by `--max-subscriptions`).
    pub fn admits(&self, key: &str) -> bool {
        let inner = self.lock();
        self.cfg.max_channels == 0
            || inner.channels.len() < self.cfg.max_channels
            || inner.channels.contains_key(key)
    }

    /// Adds the browser subscription `id` (on the connection `sink`) to the
    /// shared channel `key`, subscribing upstream if it is the first. The
    /// browser hears [`Delivery::Joined`] once the upstream subscription is
    /// active (at once when it already is).
    pub fn join(&self, key: &str, id: &str, sink: &Arc<Sink>) -> MemberKey {
        let member = self.next_id();
        let mut inner = self.lock();
        let fresh = !inner.channels.contains_key(key);
        if fresh {
            let sid = format!("relay-shared-{}", self.next_id());
            let carrier = self.carrier_with_room(&mut inner);
            inner.carriers[carrier].channels += 1;
            inner.by_sid.insert(sid.clone(), key.to_owned());
            inner.carriers[carrier].subscribe(&sid, key, self.carrier_auth(sink));
            inner.channels.insert(
                key.to_owned(),
                Shared {
                    sid,
                    channel: key.to_owned(),
                    carrier,
                    active: false,
                    members: HashMap::new(),
                    generation: 0,
                },
            );
        }
        let shared = inner.channels.get_mut(key).expect("inserted above");
        shared.generation += 1;
        shared.members.insert(
            member,
            Member {
                sink: sink.clone(),
                id: id.to_owned(),
            },
        );
        if shared.active {
            let joined = Delivery::Joined {
                member,
                id: id.to_owned(),
            };
            offer(sink, joined, &self.metrics);
        }
        MemberKey {
            key: key.to_owned(),
            member,
        }
    }

    /// Takes a browser off its shared channel; the last one out starts the
    /// linger, after which the upstream subscription is unsubscribed.
    pub fn leave(&self, member: &MemberKey) {
        let mut inner = self.lock();
        let Some(shared) = inner.channels.get_mut(&member.key) else {
            return;
        };
        if shared.members.remove(&member.member).is_none() || !shared.members.is_empty() {
            return;
        }
        shared.generation += 1;
        let generation = shared.generation;
        drop(inner);
        let hub = self.me.clone();
        let key = member.key.clone();
        let linger = self.cfg.linger;
        tokio::spawn(async move {
            tokio::time::sleep(linger).await;
            if let Some(hub) = hub.upgrade() {
                hub.expire(&key, generation);
            }
        });
    }

    /// The linger is over: unsubscribe unless someone joined meanwhile.
    fn expire(&self, key: &str, generation: u64) {
        let mut inner = self.lock();
        let still_empty = inner
            .channels
            .get(key)
            .is_some_and(|s| s.generation == generation && s.members.is_empty());
        if !still_empty {
            return;
        }
        if let Some(shared) = inner.channels.remove(key) {
            inner.by_sid.remove(&shared.sid);
            if shared.active {
                self.metrics.shared_subscriptions_active.dec();
            }
            let carrier = &mut inner.carriers[shared.carrier];
            carrier.channels = carrier.channels.saturating_sub(1);
            carrier.unsubscribe(&shared.sid);
        }
    }

    fn carrier_with_room(&self, inner: &mut Inner) -> usize {
        if let Some(i) = inner
            .carriers
            .iter()
            .position(|c| c.channels < MAX_SUBSCRIPTIONS_PER_CARRIER)
        {
            return i;
        }
        let index = inner.carriers.len();
        let owner: Weak<dyn Owner> = self.me.clone();
        inner
            .carriers
            .push(carrier::spawn(owner, index, self.shutdown.clone()));
        index
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

impl Hub {
    /// Ends the shared channel `key`: every member hears `frame(its id)`.
    fn refuse(&self, inner: &mut Inner, key: &str, frame: impl Fn(&str) -> String) {
        let Some(shared) = inner.channels.remove(key) else {
            return;
        };
        inner.by_sid.remove(&shared.sid);
        if shared.active {
            self.metrics.shared_subscriptions_active.dec();
        }
        let carrier = &mut inner.carriers[shared.carrier];
        carrier.channels = carrier.channels.saturating_sub(1);
        for (number, member) in shared.members {
            let refused = Delivery::Refused {
                member: number,
                frame: frame(&member.id),
            };
            offer(&member.sink, refused, &self.metrics);
        }
    }
}

impl Owner for Hub {
    /// An event for the upstream subscription `span.id(frame)`: one copy per
    /// member, with the member's id. Returns how many browsers got it.
    fn deliver(&self, frame: &str, span: &IdSpan) -> usize {
        let inner = self.lock();
        let Some(shared) = inner
            .by_sid
            .get(span.id(frame))
            .and_then(|key| inner.channels.get(key))
        else {
            return 0;
        };
        self.metrics
            .shared_deliveries
            .with_label_values(&["upstream"])
            .inc();
        self.metrics
            .shared_browsers
            .observe(shared.members.len() as f64);
        let mut delivered = 0;
        for (&number, member) in &shared.members {
            if member.sink.lagged().is_cancelled() {
                continue;
            }
            let copy = Delivery::Frame {
                member: number,
                frame: span.with_id(frame, &member.id),
            };
            delivered += usize::from(offer(&member.sink, copy, &self.metrics));
        }
        self.metrics
            .shared_deliveries
            .with_label_values(&["browser"])
            .inc_by(delivered as u64);
        delivered
    }

    /// AppSync acknowledged (or, after a re-dial, re-acknowledged) the
    /// upstream subscription `sid`.
    fn on_subscribed(&self, sid: &str) {
        let mut inner = self.lock();
        let Some(key) = inner.by_sid.get(sid).cloned() else {
            return;
        };
        let Some(shared) = inner.channels.get_mut(&key) else {
            return;
        };
        if shared.active {
            return;
        }
        shared.active = true;
        self.metrics.shared_subscriptions_active.inc();
        for (&number, member) in &shared.members {
            let joined = Delivery::Joined {
                member: number,
                id: member.id.clone(),
            };
            offer(&member.sink, joined, &self.metrics);
        }
    }

    /// AppSync refused the upstream subscription `sid` (`frame`, a
    /// `subscribe_error`): every member gets it under its own id, and the
    /// shared channel is gone (the next browser starts over).
    fn on_refused(&self, frame: &str, span: &IdSpan) {
        let mut inner = self.lock();
        let Some(key) = inner.by_sid.get(span.id(frame)).cloned() else {
            return;
        };
        self.refuse(&mut inner, &key, |id| span.with_id(frame, id));
    }

    /// AppSync refused the API key on `carrier`'s connection. Nothing will
    /// heal that (a member's token would be replaced when its session
    /// ends; the key is not), so rather than leave browsers waiting for an
    /// answer or for events, every channel on the carrier is refused:
    /// `subscribe_error` under each member's id, typed
    /// `SubscriptionProcessingError` — the fault is the relay's key, not the
    /// user's credentials, and an auth type would tell the app to sign the
    /// user in again. A
    /// later subscribe starts over and, with the key still refused, is
    /// refused again at its first connect.
    fn on_key_refused(&self, carrier: usize) {
        let mut inner = self.lock();
        let keys: Vec<String> = inner
            .channels
            .iter()
            .filter(|(_, s)| s.carrier == carrier)
            .map(|(k, _)| k.clone())
            .collect();
        if !keys.is_empty() {
            tracing::error!(
                carrier,
                channels = keys.len(),
                "shared channels: AppSync refused the --shared-api-key-file key; their browsers get subscribe_error"
            );
        }
        for key in keys {
            self.refuse(&mut inner, &key, |id| {
                error_frame(
                    "subscribe_error",
                    Some(id),
                    error_type::SUBSCRIPTION_PROCESSING,
                    "the relay's shared subscription was refused by AppSync (its API key)",
                )
            });
        }
    }

    fn holds(&self, sid: &str) -> bool {
        self.lock().by_sid.contains_key(sid)
    }

    /// Every upstream subscription on `carrier`, for a replay after a
    /// re-dial, each with a current (not lagging) member's token.
    fn subscriptions_on(&self, carrier: usize) -> Vec<(String, String, Option<UpstreamAuth>)> {
        let inner = self.lock();
        inner
            .channels
            .values()
            .filter(|s| s.carrier == carrier)
            .map(|s| {
                let auth = self.cfg.api_key.clone().or_else(|| {
                    s.members
                        .values()
                        .find(|m| !m.sink.lagged().is_cancelled())
                        .map(|m| m.sink.auth())
                });
                (s.sid.clone(), s.channel.clone(), auth)
            })
            .collect()
    }

    fn upstream(&self) -> &UpstreamConfig {
        &self.upstream
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}
