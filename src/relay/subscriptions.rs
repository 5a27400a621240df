//! What one browser asked for and is still owed, as far as the relay must
//! know it: subscriptions id → channel (to replay after a re-dial) and
//! whether AppSync acknowledged each, whether `connection_init` was sent
//! and acknowledged, and the publishes and unsubscribes awaiting their
//! answer.
//!
//! **Every browser request gets exactly one answer.** After a re-dial:
//! acknowledged subscriptions are replayed and their second acknowledgement
//! swallowed; unacknowledged ones are replayed and their acknowledgement
//! forwarded (the browser is still waiting for it); a `connection_init`
//! still unanswered gets its `connection_ack`; publishes sent into the
//! dying upstream get a `publish_error` (they may or may not have been
//! delivered: the client decides whether to send again); unsubscribes get
//! `unsubscribe_success` (the subscription is not replayed).
//!
//! It parses only acknowledgement frames from upstream, and only their `id`.

use crate::protocol::{error_frame, error_type, CONNECTION_TIMEOUT_MS};
use crate::rewrite::{subscribe_frame, UpstreamAuth};
use std::collections::{HashMap, HashSet, VecDeque};

/// Publishes awaiting their answer, at most; beyond it new ones are refused
/// locally (an upstream that never answers cannot grow the relay's memory).
pub const MAX_IN_FLIGHT_PUBLISHES: usize = 4096;

/// Why a request is refused locally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The id is already live on this connection: AppSync would refuse the
    /// second one, and that refusal would make the relay forget the first
    /// (no replay after a re-dial).
    DuplicateId,
    /// `--max-subscriptions` reached.
    TooMany,
    /// [`MAX_IN_FLIGHT_PUBLISHES`] publishes are still unanswered.
    TooManyInFlight,
}

impl Refusal {
    pub fn message(self) -> &'static str {
        match self {
            Refusal::DuplicateId => {
                "A subscription with this id is already active on this connection"
            }
            Refusal::TooMany => "Too many subscriptions on this connection",
            Refusal::TooManyInFlight => "Too many publishes awaiting acknowledgement",
        }
    }
}

#[derive(Debug)]
struct Sub {
    channel: String,
    acked: bool,
}

#[derive(Debug, Default)]
pub struct Subscriptions {
    /// Active subscriptions, for replay after a re-dial.
    active: HashMap<String, Sub>,
    /// Replayed subscription ids whose `subscribe_success` the browser must
    /// not see twice.
    replaying: HashSet<String>,
    init_seen: bool,
    init_acked: bool,
    publishes: HashSet<String>,
    unsubscribes: HashSet<String>,
    /// Subscriptions the channel policy no longer allows: unsubscribed
    /// upstream; until AppSync answers that, their events and answers are
    /// dropped and their ids stay taken.
    revoked: HashSet<String>,
    /// Frames owed to upstream (those unsubscribes), for its write slot.
    outbox: VecDeque<String>,
}

/// What an upstream frame means for the bookkeeping.
fn ack_id(text: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Ack {
        id: Option<String>,
    }
    serde_json::from_str::<Ack>(text).ok().and_then(|a| a.id)
}

impl Subscriptions {
    pub fn saw_init(&mut self) {
        self.init_seen = true;
    }

    pub fn init_seen(&self) -> bool {
        self.init_seen
    }

    /// The ids of every subscription the browser holds or awaits.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.active.keys().map(String::as_str)
    }

    pub fn has(&self, id: &str) -> bool {
        self.active.contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.active.len()
    }

    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    /// Records a subscribe about to go upstream, unless it must be refused.
    pub fn add(&mut self, id: &str, channel: &str, max: usize) -> Result<(), Refusal> {
        if self.active.contains_key(id) || self.revoked.contains(id) {
            return Err(Refusal::DuplicateId);
        }
        if self.active.len() >= max {
            return Err(Refusal::TooMany);
        }
        self.active.insert(
            id.to_string(),
            Sub {
                channel: channel.to_string(),
                acked: false,
            },
        );
        Ok(())
    }

    pub fn remove(&mut self, id: &str) {
        self.active.remove(id);
        self.replaying.remove(id);
        self.unsubscribes.insert(id.to_string());
    }

    /// Every active subscription: id and channel as subscribed.
    pub fn channels(&self) -> impl Iterator<Item = (&str, &str)> {
        self.active
            .iter()
            .map(|(id, sub)| (id.as_str(), sub.channel.as_str()))
    }

    /// Ends subscription `id` on the relay's side (the channel policy no
    /// longer allows it): an unsubscribe is owed upstream, and nothing of
    /// it reaches the browser from now on.
    pub fn revoke(&mut self, id: &str) -> bool {
        if self.active.remove(id).is_none() {
            return false;
        }
        self.replaying.remove(id);
        self.revoked.insert(id.to_string());
        self.outbox
            .push_back(serde_json::json!({"type": "unsubscribe", "id": id}).to_string());
        true
    }

    /// The next frame owed upstream.
    pub fn next_upstream(&mut self) -> Option<String> {
        self.outbox.pop_front()
    }

    /// Records a publish about to go upstream, unless too many are unanswered.
    pub fn publish(&mut self, id: &str) -> Result<(), Refusal> {
        if self.publishes.len() >= MAX_IN_FLIGHT_PUBLISHES && !self.publishes.contains(id) {
            return Err(Refusal::TooManyInFlight);
        }
        self.publishes.insert(id.to_string());
        Ok(())
    }

    /// Bookkeeping for an upstream frame of type `label`; returns whether the
    /// browser must not see it (the second acknowledgement of a replay).
    pub fn on_upstream(&mut self, label: &str, text: &str) -> bool {
        if !self.revoked.is_empty() && self.of_revoked(label, text) {
            return true;
        }
        match label {
            "connection_ack" => {
                self.init_acked = true;
                false
            }
            "subscribe_success" | "subscribe_error" => {
                let Some(id) = ack_id(text) else {
                    return false;
                };
                if label == "subscribe_error" {
                    self.active.remove(&id);
                    self.replaying.remove(&id);
                    return false;
                }
                if let Some(sub) = self.active.get_mut(&id) {
                    sub.acked = true;
                }
                self.replaying.remove(&id)
            }
            "publish_success" | "publish_error" => {
                if let Some(id) = ack_id(text) {
                    self.publishes.remove(&id);
                }
                false
            }
            "unsubscribe_success" | "unsubscribe_error" => {
                if let Some(id) = ack_id(text) {
                    self.unsubscribes.remove(&id);
                }
                false
            }
            _ => false,
        }
    }

    /// Whether an upstream frame belongs to a revoked subscription (and is
    /// dropped); its unsubscribe's answer frees the id. Parsed only while
    /// a revocation is pending.
    fn of_revoked(&mut self, label: &str, text: &str) -> bool {
        let done = matches!(label, "unsubscribe_success" | "unsubscribe_error");
        if !done && !matches!(label, "data" | "subscribe_success" | "subscribe_error") {
            return false;
        }
        let Some(id) = ack_id(text) else {
            return false;
        };
        if done {
            self.revoked.remove(&id)
        } else {
            self.revoked.contains(&id)
        }
    }

    /// Subscribe frames that re-create every active subscription on a new
    /// upstream; the acknowledged ones are marked as replaying. (Revoked
    /// ones are not replayed: the new upstream never had them.)
    pub fn replay_frames(&mut self, auth: &UpstreamAuth) -> Vec<String> {
        self.replaying.clear();
        self.revoked.clear();
        self.outbox.clear();
        self.active
            .iter()
            .map(|(id, sub)| {
                if sub.acked {
                    self.replaying.insert(id.clone());
                }
                subscribe_frame(id, &sub.channel, auth)
            })
            .collect()
    }

    /// The answers the relay owes the browser for what was in flight when
    /// the upstream it went to was lost (see the module docs).
    pub fn answers_after_redial(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        if self.init_seen && !self.init_acked {
            self.init_acked = true;
            out.push(format!(
                r#"{{"type":"connection_ack","connectionTimeoutMs":{CONNECTION_TIMEOUT_MS}}}"#
            ));
        }
        for id in self.publishes.drain() {
            out.push(error_frame(
                "publish_error",
                Some(&id),
                error_type::MESSAGE_PROCESSING,
                "The connection to AppSync was interrupted; the publish may not have been delivered",
            ));
        }
        for id in self.unsubscribes.drain() {
            out.push(format!(
                r#"{{"type":"unsubscribe_success","id":{}}}"#,
                serde_json::Value::from(id)
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revoked_subscription_sends_nothing_more_and_frees_its_id_when_appsync_confirms() {
        let mut subs = Subscriptions::default();
        subs.add("red", "/ns/teams/red/*", 10).unwrap();
        subs.add("blue", "/ns/teams/blue/x", 10).unwrap();
        assert!(subs.revoke("red"));
        assert!(!subs.revoke("red"), "once");
        assert_eq!(
            subs.next_upstream().as_deref(),
            Some(r#"{"id":"red","type":"unsubscribe"}"#)
        );
        assert_eq!(subs.next_upstream(), None);
        assert_eq!(subs.channels().count(), 1);
        let data = |id: &str| format!(r#"{{"type":"data","id":"{id}","event":"{{}}"}}"#);
        assert!(
            subs.on_upstream("data", &data("red")),
            "red's event dropped"
        );
        assert!(!subs.on_upstream("data", &data("blue")), "blue's passes");
        // A late acknowledgement of red's subscribe is not the browser's
        // either (it was told subscribe_error).
        let ack = r#"{"type":"subscribe_success","id":"red"}"#;
        assert!(subs.on_upstream("subscribe_success", ack));
        assert_eq!(subs.add("red", "/ns/x", 10), Err(Refusal::DuplicateId));
        let done = r#"{"type":"unsubscribe_success","id":"red"}"#;
        assert!(subs.on_upstream("unsubscribe_success", done), "swallowed");
        assert!(!subs.on_upstream("data", &data("red")), "no longer special");
        subs.add("red", "/ns/x", 10).unwrap();
        // Not replayed after a re-dial.
        subs.revoke("blue");
        let frames = subs.replay_frames(&UpstreamAuth::new("T", "h"));
        assert_eq!(frames.len(), 1);
        assert!(frames[0].contains("/ns/x"));
        assert_eq!(subs.next_upstream(), None);
    }

    #[test]
    fn replayed_acks_are_swallowed_once_and_errors_forget_the_id() {
        let mut subs = Subscriptions::default();
        subs.add("a", "/d/a", 10).unwrap();
        subs.add("b", "/d/b", 10).unwrap();
        assert_eq!(subs.add("a", "/d/x", 10), Err(Refusal::DuplicateId));
        assert_eq!(subs.add("c", "/d/c", 2), Err(Refusal::TooMany));
        let ok = r#"{"type":"subscribe_success","id":"a"}"#;
        assert!(
            !subs.on_upstream("subscribe_success", ok),
            "first ack forwarded"
        );
        let frames = subs.replay_frames(&UpstreamAuth::new("T", "h"));
        assert_eq!(frames.len(), 2);
        assert!(
            subs.on_upstream("subscribe_success", ok),
            "replayed ack swallowed"
        );
        assert!(!subs.on_upstream("subscribe_success", ok), "only once");
        let err = r#"{"type":"subscribe_error","id":"b"}"#;
        assert!(!subs.on_upstream("subscribe_error", err));
        assert_eq!(subs.len(), 1);
    }

    #[test]
    fn every_request_in_flight_gets_one_answer_after_a_redial() {
        let mut subs = Subscriptions::default();
        subs.saw_init();
        subs.add("pending", "/d/a", 10).unwrap();
        subs.publish("p1").unwrap();
        subs.publish("p2").unwrap();
        assert!(!subs.on_upstream("publish_success", r#"{"type":"publish_success","id":"p2"}"#));
        subs.remove("gone");
        let _ = subs.replay_frames(&UpstreamAuth::new("T", "h"));
        // The unacknowledged subscribe's ack comes from the replay: forwarded.
        assert!(!subs.on_upstream(
            "subscribe_success",
            r#"{"type":"subscribe_success","id":"pending"}"#
        ));
        let answers = subs.answers_after_redial();
        assert_eq!(answers.len(), 3, "{answers:?}");
        assert!(answers[0].contains("connection_ack"));
        assert!(answers[1].contains("publish_error") && answers[1].contains("p1"));
        assert!(answers[2].contains("unsubscribe_success") && answers[2].contains("gone"));
        assert!(subs.answers_after_redial().is_empty(), "answered once");
    }
}
