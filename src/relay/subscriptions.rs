//! The subscriptions one browser holds, as far as the relay must know them:
//! id → channel (to replay after a re-dial), whether `connection_init` was
//! sent (to replay it too), and which replayed ids' acknowledgements the
//! browser must not see a second time.
//!
//! It parses only `subscribe_*` frames from upstream, and only their `id`.

use crate::rewrite::{subscribe_frame, UpstreamAuth};
use std::collections::{HashMap, HashSet};

/// Why a subscribe is refused locally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The id is already live on this connection: AppSync would refuse the
    /// second one, and that refusal would make the relay forget the first
    /// (no replay after a re-dial).
    DuplicateId,
    /// `--max-subscriptions` reached.
    TooMany,
}

impl Refusal {
    pub fn message(self) -> &'static str {
        match self {
            Refusal::DuplicateId => {
                "A subscription with this id is already active on this connection"
            }
            Refusal::TooMany => "Too many subscriptions on this connection",
        }
    }
}

#[derive(Debug, Default)]
pub struct Subscriptions {
    /// Active subscriptions, for replay after a re-dial.
    active: HashMap<String, String>,
    /// Replayed subscription ids whose `subscribe_success` the browser must
    /// not see twice.
    replaying: HashSet<String>,
    init_seen: bool,
}

impl Subscriptions {
    pub fn saw_init(&mut self) {
        self.init_seen = true;
    }

    pub fn init_seen(&self) -> bool {
        self.init_seen
    }

    pub fn len(&self) -> usize {
        self.active.len()
    }

    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    /// Records a subscribe about to go upstream, unless it must be refused.
    pub fn add(&mut self, id: &str, channel: &str, max: usize) -> Result<(), Refusal> {
        if self.active.contains_key(id) {
            return Err(Refusal::DuplicateId);
        }
        if self.active.len() >= max {
            return Err(Refusal::TooMany);
        }
        self.active.insert(id.to_string(), channel.to_string());
        Ok(())
    }

    pub fn remove(&mut self, id: &str) {
        self.active.remove(id);
    }

    /// Bookkeeping for an upstream frame of type `label`; returns whether the
    /// browser must not see it (the acknowledgement of a replay).
    pub fn on_upstream(&mut self, label: &str, text: &str) -> bool {
        if !matches!(label, "subscribe_success" | "subscribe_error") {
            return false;
        }
        #[derive(serde::Deserialize)]
        struct Ack {
            id: Option<String>,
        }
        let Some(id) = serde_json::from_str::<Ack>(text).ok().and_then(|a| a.id) else {
            return false;
        };
        if label == "subscribe_error" {
            self.active.remove(&id);
            self.replaying.remove(&id);
            return false;
        }
        self.replaying.remove(&id)
    }

    /// Subscribe frames that re-create every active subscription on a new
    /// upstream, each marked as replaying.
    pub fn replay_frames(&mut self, auth: &UpstreamAuth) -> Vec<String> {
        self.replaying.clear();
        self.active
            .iter()
            .map(|(id, channel)| {
                self.replaying.insert(id.clone());
                subscribe_frame(id, channel, auth)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replayed_acks_are_swallowed_once_and_errors_forget_the_id() {
        let mut subs = Subscriptions::default();
        subs.add("a", "/d/a", 10).unwrap();
        subs.add("b", "/d/b", 10).unwrap();
        assert_eq!(subs.add("a", "/d/x", 10), Err(Refusal::DuplicateId));
        assert_eq!(subs.add("c", "/d/c", 2), Err(Refusal::TooMany));
        let frames = subs.replay_frames(&UpstreamAuth::new("T", "h"));
        assert_eq!(frames.len(), 2);
        let ok = r#"{"type":"subscribe_success","id":"a"}"#;
        assert!(subs.on_upstream("subscribe_success", ok));
        assert!(!subs.on_upstream("subscribe_success", ok), "only once");
        let err = r#"{"type":"subscribe_error","id":"b"}"#;
        assert!(!subs.on_upstream("subscribe_error", err));
        assert_eq!(subs.len(), 1);
    }
}
