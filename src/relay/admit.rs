//! What the relay decides about a browser frame before anything goes
//! upstream: the channel policy ([`Connection::permitted`], first, so a
//! shared channel is no way around it), the per-connection limits and
//! bookkeeping ([`Connection::admit`]) and the routing of shared-channel
//! subscriptions to the hub ([`Connection::route_shared`]), which are
//! answered here and never forwarded as they are.

use super::membership::Membership;
use super::pump::Connection;
use super::subscriptions::Refusal;
use crate::fanout::Delivery;
use crate::policy::Op;
use crate::protocol::{error_frame, error_type, Channel};
use crate::rewrite::{FrameKind, Outgoing};

/// What a browser is told when the channel policy denies it: AppSync's
/// own error type for an operation it may not make.
pub(super) const POLICY_DENIED: &str = "Not authorized by the channel policy";

impl Connection {
    /// The channel policy's answer to a subscribe or publish (`--channel-policy`):
    /// `None` when it may go on, the refusal for the browser otherwise.
    /// Decided on the frame as it will be sent upstream (so what is decided
    /// is what AppSync reads), with the claims of the token in use now
    /// (replaced at renewal).
    pub(super) fn permitted(&self, body: &Outgoing) -> Option<String> {
        let (op, id, raw, reply) = match body {
            Outgoing::Subscribe { id, channel } => (Op::Subscribe, id, channel, "subscribe_error"),
            Outgoing::Publish { id, channel, .. } => (Op::Publish, id, channel, "publish_error"),
            _ => return None,
        };
        // `prepare_client_frame` parsed it already; a channel that no longer
        // parses is denied, never waved through.
        self.state.live_policy()?;
        let decision = match Channel::parse(raw, op == Op::Subscribe) {
            Ok(channel) => self
                .state
                .policy_decision(op, &channel, &self.token.claims)?,
            Err(_) => crate::policy::Decision::Denied,
        };
        if decision.is_permitted() {
            return None;
        }
        // Per frame, so debug: `policy_decisions_total` is what to watch.
        tracing::debug!(op = op.name(), result = "denied", "channel policy");
        Some(error_frame(
            reply,
            Some(id),
            error_type::UNAUTHORIZED,
            POLICY_DENIED,
        ))
    }

    /// Bookkeeping and limits for a frame about to go upstream. Returns a
    /// local reply instead when the frame must not go.
    pub(super) fn admit(&mut self, kind: &FrameKind) -> Option<String> {
        match kind {
            FrameKind::ConnectionInit => self.subs.saw_init(),
            FrameKind::Subscribe { id, channel } => {
                // Shared subscriptions count against the same limit.
                let shared = self.shared.as_ref().map_or(0, |m| m.len());
                let max = self
                    .state
                    .config()
                    .limits
                    .max_subscriptions
                    .saturating_sub(shared);
                if let Err(refusal) = self.subs.add(id, channel, max) {
                    if refusal == Refusal::TooMany {
                        self.limit_hit("max_subscriptions");
                    }
                    return Some(error_frame(
                        "subscribe_error",
                        Some(id),
                        error_type::BAD_REQUEST,
                        refusal.message(),
                    ));
                }
            }
            FrameKind::Unsubscribe { id } => self.subs.remove(id),
            FrameKind::Publish { id } => {
                if let Some(bucket) = &mut self.publish_bucket {
                    if !bucket.try_take() {
                        self.limit_hit("publish_rate");
                        return Some(error_frame(
                            "publish_error",
                            Some(id),
                            error_type::BAD_REQUEST,
                            "Publish rate exceeded; retry later",
                        ));
                    }
                }
                if let Err(refusal) = self.subs.publish(id) {
                    return Some(error_frame(
                        "publish_error",
                        Some(id),
                        error_type::BAD_REQUEST,
                        refusal.message(),
                    ));
                }
            }
        }
        None
    }

    pub(super) fn limit_hit(&self, limit: &str) {
        self.state
            .metrics()
            .limits_hit
            .with_label_values(&[limit])
            .inc();
    }

    /// A subscribe to a shared channel, or an unsubscribe of one: handled
    /// here (`Some`, with the local reply if there is one). `None` for
    /// everything else, which takes the usual path.
    pub(super) fn route_shared(&mut self, kind: &FrameKind) -> Option<Option<String>> {
        let hub = self.state.fanout()?;
        match kind {
            FrameKind::Subscribe { id, channel } => {
                let in_use = self.shared.as_ref().is_some_and(|m| m.uses(id));
                let key = hub.config().key_for(channel);
                let full = key.as_ref().is_some_and(|k| !hub.admits(k));
                if full && !in_use {
                    // As many shared channels as allowed: this one is
                    // served as if it matched no pattern.
                    self.limit_hit("shared_channels");
                }
                let Some(key) = key.filter(|_| !full) else {
                    // Not shared; but an id of a shared subscription is
                    // still taken.
                    return in_use.then(|| Some(duplicate(id)));
                };
                if in_use || self.subs.has(id) {
                    return Some(Some(duplicate(id)));
                }
                let held = self.subs.len() + self.shared.as_ref().map_or(0, |m| m.len());
                if held >= self.state.config().limits.max_subscriptions {
                    self.limit_hit("max_subscriptions");
                    return Some(Some(subscribe_refused(id, Refusal::TooMany)));
                }
                let check = hub.config().check;
                let auth = &self.token.auth;
                let membership = self
                    .shared
                    .get_or_insert_with(|| Box::new(Membership::new(hub.clone(), auth)));
                let subs = &self.subs;
                membership.subscribe(id, &key, auth, check, |probe| subs.has(probe));
                Some(None)
            }
            FrameKind::Unsubscribe { id } => {
                let membership = self.shared.as_mut()?;
                membership.unsubscribe(id, &mut self.replies).then(|| {
                    Some(serde_json::json!({"type": "unsubscribe_success", "id": id}).to_string())
                })
            }
            _ => None,
        }
    }

    /// The frame a hub delivery becomes for the browser; `None` for one
    /// queued for a membership that has ended since (the browser
    /// unsubscribed, perhaps reusing the id): it must not see an event, a
    /// `subscribe_success` or a refusal for a subscription it has ended.
    pub(super) fn shared_frame(&mut self, delivery: Delivery) -> Option<String> {
        let membership = self.shared.as_mut()?;
        match delivery {
            Delivery::Frame { member, frame } => membership.current(member).map(|_| frame),
            Delivery::Joined { member, id } => membership
                .current(member)
                .map(|_| serde_json::json!({"type": "subscribe_success", "id": id}).to_string()),
            Delivery::Refused { member, frame } => {
                let id = membership.current(member)?.to_owned();
                membership.forget(&id);
                Some(frame)
            }
        }
    }
}

fn subscribe_refused(id: &str, refusal: Refusal) -> String {
    error_frame(
        "subscribe_error",
        Some(id),
        error_type::BAD_REQUEST,
        refusal.message(),
    )
}

fn duplicate(id: &str) -> String {
    subscribe_refused(id, Refusal::DuplicateId)
}
