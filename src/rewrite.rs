//! Client → upstream frame policy: what the browser may send, and how its
//! `subscribe`/`publish` messages are rewritten to carry the real token.
//!
//! The browser holds no token, so whatever auth it sends (Amplify sends a
//! placeholder API key, top-level and again in `payload.extensions`) is
//! removed wherever it appears, in any letter case, and the relay's own
//! `{"Authorization": <JWT>, "host": <HTTP host>}` is set as the top-level
//! `authorization`. Frames that break AppSync's rules are answered here with
//! the matching `*_error` and never reach upstream. Frames of other types are
//! forwarded byte for byte unless they carried auth that had to be removed.
//!
//! This module never logs; `UpstreamAuth`'s `Debug` redacts the token.

use crate::protocol::{self, error_type, Channel};
use serde_json::{Map, Value};
use std::fmt;

/// The credentials the relay injects upstream for one connection.
#[derive(Clone)]
pub struct UpstreamAuth {
    token: String,
    host: String,
}

impl fmt::Debug for UpstreamAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamAuth")
            .field("token", &"<redacted>")
            .field("host", &self.host)
            .finish()
    }
}

impl UpstreamAuth {
    pub fn new(token: impl Into<String>, host: impl Into<String>) -> Self {
        UpstreamAuth {
            token: token.into(),
            host: host.into(),
        }
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// `{"Authorization": <JWT>, "host": <host>}`, the shape AppSync expects
    /// both in the `header-` subprotocol and in each message.
    pub fn as_map(&self) -> Map<String, Value> {
        let mut m = Map::with_capacity(2);
        m.insert("Authorization".into(), Value::from(self.token.as_str()));
        m.insert("host".into(), Value::from(self.host.as_str()));
        m
    }
}

/// What to do with one text frame from the browser, in one step: the
/// shape tests, benches and fuzz targets check. The relay itself uses
/// [`prepare_client_frame`] and [`render`], so the token is injected only
/// when the frame is sent.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientAction {
    /// Forward the frame exactly as received.
    ForwardOriginal,
    /// Forward this rewritten frame instead.
    Forward(String),
    /// Answer the browser with this frame; send nothing upstream.
    Reply(String),
}

/// Removes every key named `authorization` (any case) from `map`.
/// Returns whether anything was removed.
fn strip_auth(map: &mut Map<String, Value>) -> bool {
    let before = map.len();
    map.retain(|k, _| !k.eq_ignore_ascii_case("authorization"));
    before != map.len()
}

/// Strips client auth from the top level, `payload`, and
/// `payload.extensions` (the places Amplify and the AWS docs put it).
fn strip_all_auth(msg: &mut Map<String, Value>) -> bool {
    let mut removed = strip_auth(msg);
    for (key, payload) in msg.iter_mut() {
        if !key.eq_ignore_ascii_case("payload") {
            continue;
        }
        if let Value::Object(payload) = payload {
            removed |= strip_auth(payload);
            for (k, ext) in payload.iter_mut() {
                if k.eq_ignore_ascii_case("extensions") {
                    if let Value::Object(ext) = ext {
                        removed |= strip_auth(ext);
                    }
                }
            }
        }
    }
    removed
}

/// What a browser frame is, as far as the relay's bookkeeping cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameKind {
    ConnectionInit,
    /// A subscription the relay must remember (to replay on re-dial).
    Subscribe {
        id: String,
        channel: String,
    },
    Unsubscribe {
        id: String,
    },
    Publish {
        id: String,
    },
    Other,
}

/// The bytes to send upstream, before the current token is known.
#[derive(Debug, PartialEq, Eq)]
pub enum Outgoing {
    /// Send the frame exactly as received.
    Original,
    /// Send this object (client auth was stripped from it).
    Stripped(Map<String, Value>),
    /// Send this object with the relay's `authorization` set on it.
    NeedsAuth(Map<String, Value>),
}

/// The decision for one browser frame, split from the final rendering so
/// that the token is injected at the moment the frame is sent upstream (a
/// frame queued across a token refresh carries the new token).
#[derive(Debug, PartialEq, Eq)]
pub enum Prepared {
    Forward { kind: FrameKind, body: Outgoing },
    Reply(String),
}

fn reject(client_type: &str, id: Option<&str>, message: &str) -> Prepared {
    Prepared::Reply(protocol::error_frame(
        protocol::error_type_for(client_type),
        id,
        error_type::BAD_REQUEST,
        message,
    ))
}

/// Validates a browser frame and strips any auth it carries.
pub fn prepare_client_frame(text: &str) -> Prepared {
    let mut msg: Map<String, Value> = match serde_json::from_str(text) {
        Ok(Value::Object(m)) => m,
        _ => return reject("", None, "Message is not a JSON object"),
    };
    let msg_type = match msg.get("type") {
        Some(Value::String(t)) => t.clone(),
        _ => return reject("", None, "Message has no type"),
    };
    match msg_type.as_str() {
        "subscribe" | "publish" => {
            let publish = msg_type == "publish";
            let id = match msg.get("id") {
                Some(Value::String(id)) if protocol::is_valid_id(id) => id.clone(),
                _ => return reject(&msg_type, None, "Invalid id"),
            };
            let channel = match msg.get("channel") {
                Some(Value::String(c)) => match Channel::parse(c, !publish) {
                    Ok(_) => c.clone(),
                    Err(e) => return reject(&msg_type, Some(&id), &e.to_string()),
                },
                _ => return reject(&msg_type, Some(&id), "Missing channel"),
            };
            if publish {
                if let Err(message) = check_events(msg.get("events")) {
                    return reject(&msg_type, Some(&id), message);
                }
            }
            strip_all_auth(&mut msg);
            let kind = if publish {
                FrameKind::Publish { id }
            } else {
                FrameKind::Subscribe { id, channel }
            };
            Prepared::Forward {
                kind,
                body: Outgoing::NeedsAuth(msg),
            }
        }
        "unsubscribe" => {
            let id = match msg.get("id") {
                Some(Value::String(id)) if protocol::is_valid_id(id) => id.clone(),
                _ => return reject(&msg_type, None, "Invalid id"),
            };
            forward_stripped(FrameKind::Unsubscribe { id }, text, msg)
        }
        "connection_init" => forward_stripped(FrameKind::ConnectionInit, text, msg),
        _ => forward_stripped(FrameKind::Other, text, msg),
    }
}

fn forward_stripped(kind: FrameKind, text: &str, mut msg: Map<String, Value>) -> Prepared {
    let stripped = strip_all_auth(&mut msg);
    // The original bytes go upstream only when they provably carry no auth:
    // the parsed map keeps the *last* of duplicate keys, so a shadowed
    // `payload` (or a key spelled with `\u` escapes) could hide one that
    // AppSync's parser might read. Otherwise the cleaned map is re-serialised.
    let body = if stripped || text.contains('\\') || contains_ignore_ascii_case(text, "authoriz") {
        Outgoing::Stripped(msg)
    } else {
        Outgoing::Original
    };
    Prepared::Forward { kind, body }
}

fn contains_ignore_ascii_case(haystack: &str, needle: &str) -> bool {
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// The text to send upstream for `body`: `None` means the original frame.
pub fn render(body: Outgoing, auth: &UpstreamAuth) -> Option<String> {
    match body {
        Outgoing::Original => None,
        Outgoing::Stripped(msg) => Some(Value::Object(msg).to_string()),
        Outgoing::NeedsAuth(mut msg) => {
            msg.insert("authorization".into(), Value::Object(auth.as_map()));
            Some(Value::Object(msg).to_string())
        }
    }
}

/// A subscribe frame for replaying subscription `id` on a new upstream.
pub fn subscribe_frame(id: &str, channel: &str, auth: &UpstreamAuth) -> String {
    serde_json::json!({
        "type": "subscribe",
        "id": id,
        "channel": channel,
        "authorization": Value::Object(auth.as_map()),
    })
    .to_string()
}

/// Decides what to do with a text frame from the browser, in one step
/// (prepare, then render with `auth`): for tests, benches and fuzz targets.
pub fn rewrite_client_frame(text: &str, auth: &UpstreamAuth) -> ClientAction {
    match prepare_client_frame(text) {
        Prepared::Reply(r) => ClientAction::Reply(r),
        Prepared::Forward { body, .. } => match render(body, auth) {
            None => ClientAction::ForwardOriginal,
            Some(s) => ClientAction::Forward(s),
        },
    }
}

/// `events`: 1 to 5 strings, each ≤ 240 KB and itself valid JSON.
pub fn check_events(events: Option<&Value>) -> Result<(), &'static str> {
    let Some(Value::Array(events)) = events else {
        return Err("events must be an array of JSON strings");
    };
    if events.is_empty() {
        return Err("events must not be empty");
    }
    if events.len() > protocol::MAX_EVENTS_PER_PUBLISH {
        return Err("At most 5 events may be published at once");
    }
    for event in events {
        let Value::String(s) = event else {
            return Err("each event must be a JSON-encoded string");
        };
        if s.len() > protocol::MAX_EVENT_BYTES {
            return Err("event is larger than 240 KB");
        }
        if serde_json::from_str::<serde::de::IgnoredAny>(s).is_err() {
            return Err("each event must be a valid JSON document");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn auth() -> UpstreamAuth {
        UpstreamAuth::new("REAL.JWT.TOKEN", "api.example.com")
    }

    fn forwarded(action: ClientAction) -> Value {
        match action {
            ClientAction::Forward(s) => serde_json::from_str(&s).unwrap(),
            other => panic!("expected Forward, got {other:?}"),
        }
    }

    fn replied(action: ClientAction) -> Value {
        match action {
            ClientAction::Reply(s) => serde_json::from_str(&s).unwrap(),
            other => panic!("expected Reply, got {other:?}"),
        }
    }

    #[test]
    fn subscribe_gets_real_auth_and_loses_amplify_placeholders() {
        let frame = json!({
            "type": "subscribe", "id": "s1", "channel": "/default/room",
            "authorization": {"x-api-key": "placeholder", "host": "app.example.com"},
            "Authorization": "forged",
            "payload": {"channel": "/default/room", "extensions": {"authorization": {"x-api-key": "p"}, "AUTHORIZATION": "x"}}
        });
        let out = forwarded(rewrite_client_frame(&frame.to_string(), &auth()));
        assert_eq!(
            out["authorization"],
            json!({"Authorization": "REAL.JWT.TOKEN", "host": "api.example.com"})
        );
        assert!(out.get("Authorization").is_none());
        assert_eq!(out["payload"]["extensions"], json!({}));
        assert_eq!(out["payload"]["channel"], "/default/room");
        assert!(!out.to_string().contains("placeholder"));
    }

    #[test]
    fn publish_rules_are_enforced_locally() {
        let bad = [
            (
                json!({"type":"publish","id":"p","channel":"/d/*","events":["1"]}),
                "publish_error",
            ),
            (
                json!({"type":"publish","id":"p","channel":"/d/a","events":["1","2","3","4","5","6"]}),
                "publish_error",
            ),
            (
                json!({"type":"publish","id":"p","channel":"/d/a","events":[]}),
                "publish_error",
            ),
            (
                json!({"type":"publish","id":"p","channel":"/d/a","events":[1]}),
                "publish_error",
            ),
            (
                json!({"type":"publish","id":"p","channel":"/d/a","events":["{not json"]}),
                "publish_error",
            ),
            (
                json!({"type":"publish","id":"bad id","channel":"/d/a","events":["1"]}),
                "publish_error",
            ),
            (
                json!({"type":"subscribe","id":"s","channel":"/d/a_b"}),
                "subscribe_error",
            ),
            (json!({"type":"subscribe","id":"s"}), "subscribe_error"),
            (
                json!({"type":"subscribe","id":"","channel":"/d/a"}),
                "subscribe_error",
            ),
            (json!({"type":"unsubscribe","id":7}), "unsubscribe_error"),
        ];
        for (frame, expected) in bad {
            let out = replied(rewrite_client_frame(&frame.to_string(), &auth()));
            assert_eq!(out["type"], expected, "{frame}");
            assert_eq!(out["errors"][0]["errorType"], "BadRequestException");
            assert!(!out.to_string().contains("REAL.JWT"));
        }
        let ok = json!({"type":"publish","id":"p","channel":"/d/a","events":["{\"a\":1}","2"]});
        let out = forwarded(rewrite_client_frame(&ok.to_string(), &auth()));
        assert_eq!(out["events"], json!(["{\"a\":1}", "2"]));
        assert_eq!(out["authorization"]["Authorization"], "REAL.JWT.TOKEN");
    }

    #[test]
    fn malformed_frames_get_error() {
        for text in ["not json", "[1,2]", "{\"id\":\"x\"}", "{\"type\":5}"] {
            let out = replied(rewrite_client_frame(text, &auth()));
            assert_eq!(out["type"], "error", "{text}");
        }
    }

    #[test]
    fn other_frames_pass_unchanged_unless_they_carry_auth() {
        let init = r#"{"type":"connection_init"}"#;
        assert_eq!(
            rewrite_client_frame(init, &auth()),
            ClientAction::ForwardOriginal
        );
        let unsub = r#"{"type":"unsubscribe","id":"s1"}"#;
        assert_eq!(
            rewrite_client_frame(unsub, &auth()),
            ClientAction::ForwardOriginal
        );
        let sneaky = r#"{"type":"connection_init","authorization":{"Authorization":"stolen"}}"#;
        let out = forwarded(rewrite_client_frame(sneaky, &auth()));
        assert_eq!(out, json!({"type":"connection_init"}));
    }

    #[test]
    fn shadowed_duplicate_keys_cannot_smuggle_auth_upstream() {
        for text in [
            r#"{"type":"connection_init","payload":{"authorization":{"x-api-key":"k"}},"payload":1}"#,
            r#"{"type":"unsubscribe","id":"s1","payload":{"extensions":{"authorization":{"Authorization":"X"}}},"payload":{}}"#,
            r#"{"type":"connection_init","payload":{"\u0061uthorization":"X"},"payload":1}"#,
        ] {
            let out = forwarded(rewrite_client_frame(text, &auth()));
            let s = out.to_string();
            assert!(
                !s.to_ascii_lowercase().contains("authoriz")
                    && !s.contains("\"X\"")
                    && !s.contains("\"k\""),
                "{s}"
            );
        }
    }

    #[test]
    fn debug_redacts_token() {
        assert!(!format!("{:?}", auth()).contains("REAL"));
    }
}
