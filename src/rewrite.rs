//! Client → upstream frame policy: what the browser may send, and how its
//! `subscribe`/`publish` messages are rewritten to carry the real token.
//!
//! The browser holds no token, so whatever auth it sends (Amplify sends a
//! placeholder API key, top-level and again in `payload.extensions`) must
//! never reach AppSync. Frames are parsed strictly (a duplicate key at any
//! depth is refused: two parsers picking different duplicates would read
//! different frames), and what goes upstream is re-rendered from only the
//! fields AppSync reads — `type`, `id`, `channel`, `events` — with the
//! relay's own `{"Authorization": <JWT>, "host": <HTTP host>}` as
//! `authorization` on subscribe and publish. Nothing else the browser sent
//! (other keys, Amplify's `payload` copy, auth hidden at any depth) is
//! forwarded. Frames that break AppSync's rules, and frames of types the
//! relay does not know, are answered here and never reach upstream.
//!
//! This module never logs; `UpstreamAuth`'s `Debug` redacts the token.

use crate::protocol::{self, error_type, Channel};
use crate::strict_json;
use serde_json::{Map, Value};
use std::fmt;

/// The credentials the relay injects upstream for one connection: a
/// user's Cognito token (every browser connection) or, for relay-owned
/// shared-channel connections only, the API's key (`--shared-api-key-file`).
#[derive(Clone)]
pub struct UpstreamAuth {
    token: String,
    host: String,
    kind: Credential,
}

/// Which AppSync header carries [`UpstreamAuth`]'s secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Credential {
    /// `Authorization: <JWT>` (Cognito user pools).
    Jwt,
    /// `x-api-key: <key>` (API key auth).
    ApiKey,
}

impl Credential {
    fn field(self) -> &'static str {
        match self {
            Credential::Jwt => "Authorization",
            Credential::ApiKey => "x-api-key",
        }
    }
}

impl fmt::Debug for UpstreamAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamAuth")
            .field("kind", &self.kind)
            .field("token", &"<redacted>")
            .field("host", &self.host)
            .finish()
    }
}

impl UpstreamAuth {
    /// A user's Cognito JWT.
    pub fn new(token: impl Into<String>, host: impl Into<String>) -> Self {
        UpstreamAuth {
            token: token.into(),
            host: host.into(),
            kind: Credential::Jwt,
        }
    }

    /// The API's key, sent as `x-api-key`.
    pub fn api_key(key: impl Into<String>, host: impl Into<String>) -> Self {
        UpstreamAuth {
            token: key.into(),
            host: host.into(),
            kind: Credential::ApiKey,
        }
    }

    /// Whether this is an API key rather than a user's token.
    pub fn is_api_key(&self) -> bool {
        self.kind == Credential::ApiKey
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// The `sub` of the token (read without verifying it: the token was
    /// verified when it was put here); none for an API key.
    /// The JWT it carries (none for an API key).
    pub fn jwt(&self) -> Option<&str> {
        match self.kind {
            Credential::Jwt => Some(&self.token),
            Credential::ApiKey => None,
        }
    }

    pub fn subject(&self) -> Option<String> {
        match self.kind {
            Credential::Jwt => crate::verify::unverified_sub(&self.token),
            Credential::ApiKey => None,
        }
    }

    /// `{"Authorization": <JWT>, "host": <host>}` (or `x-api-key` for a
    /// key), the shape AppSync expects both in the `header-` subprotocol and
    /// in each message.
    pub fn as_map(&self) -> Map<String, Value> {
        let mut m = Map::with_capacity(2);
        m.insert(self.kind.field().into(), Value::from(self.token.as_str()));
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
    /// Forward this frame (re-rendered from the fields the relay knows).
    Forward(String),
    /// Answer the browser with this frame; send nothing upstream.
    Reply(String),
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
}

/// The frame to send upstream, before the current token is known: only
/// the fields AppSync reads, nothing else the browser sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Outgoing {
    ConnectionInit,
    Unsubscribe {
        id: String,
    },
    Subscribe {
        id: String,
        channel: String,
    },
    Publish {
        id: String,
        channel: String,
        /// Each a JSON document as a string, as the browser sent it.
        events: Vec<String>,
    },
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

/// A frame id, if it is a valid one.
fn valid_id(msg: &Map<String, Value>) -> Option<String> {
    match msg.get("id") {
        Some(Value::String(id)) if protocol::is_valid_id(id) => Some(id.clone()),
        _ => None,
    }
}

/// Validates a browser frame and decides what, if anything, goes upstream.
/// The frame is parsed strictly (a duplicate key anywhere refuses it), and
/// only the fields AppSync reads are kept: any `authorization`, `payload`
/// copy or other field the browser added never leaves the relay.
pub fn prepare_client_frame(text: &str) -> Prepared {
    let msg = match strict_json::parse(text) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return reject("", None, "Message is not a JSON object"),
        Err(e) if e.to_string().starts_with("duplicate key") => {
            return reject("", None, "Message has a duplicate key")
        }
        Err(_) => return reject("", None, "Message is not a JSON object"),
    };
    let msg_type = match msg.get("type") {
        Some(Value::String(t)) => t.clone(),
        _ => return reject("", None, "Message has no type"),
    };
    match msg_type.as_str() {
        "subscribe" | "publish" => {
            let publish = msg_type == "publish";
            let Some(id) = valid_id(&msg) else {
                return reject(&msg_type, None, "Invalid id");
            };
            let channel = match msg.get("channel") {
                // Forwarded in canonical form (`ns/a/` → `/ns/a`, the same
                // channel to AppSync): what the channel policy and the
                // subscription table decide on is what AppSync reads.
                Some(Value::String(c)) => match Channel::parse(c, !publish) {
                    Ok(ch) => ch.as_subscribed(),
                    Err(e) => return reject(&msg_type, Some(&id), &e.to_string()),
                },
                _ => return reject(&msg_type, Some(&id), "Missing channel"),
            };
            if !publish {
                return Prepared::Forward {
                    kind: FrameKind::Subscribe {
                        id: id.clone(),
                        channel: channel.clone(),
                    },
                    body: Outgoing::Subscribe { id, channel },
                };
            }
            if let Err(message) = check_events(msg.get("events")) {
                return reject(&msg_type, Some(&id), message);
            }
            let events = match msg.get("events") {
                Some(Value::Array(events)) => events
                    .iter()
                    .filter_map(|e| e.as_str().map(str::to_string))
                    .collect(),
                _ => Vec::new(),
            };
            Prepared::Forward {
                kind: FrameKind::Publish { id: id.clone() },
                body: Outgoing::Publish {
                    id,
                    channel,
                    events,
                },
            }
        }
        "unsubscribe" => match valid_id(&msg) {
            Some(id) => Prepared::Forward {
                kind: FrameKind::Unsubscribe { id: id.clone() },
                body: Outgoing::Unsubscribe { id },
            },
            None => reject(&msg_type, None, "Invalid id"),
        },
        "connection_init" => Prepared::Forward {
            kind: FrameKind::ConnectionInit,
            body: Outgoing::ConnectionInit,
        },
        _ => Prepared::Reply(protocol::error_frame(
            "error",
            None,
            error_type::UNKNOWN_OPERATION,
            "Unknown message type",
        )),
    }
}

/// `{"Authorization": <JWT>, "host": <host>}` (or `{"x-api-key": ..}`) as
/// it is serialised.
#[derive(serde::Serialize)]
struct AuthOut<'a> {
    #[serde(rename = "Authorization", skip_serializing_if = "Option::is_none")]
    authorization: Option<&'a str>,
    #[serde(rename = "x-api-key", skip_serializing_if = "Option::is_none")]
    api_key: Option<&'a str>,
    host: &'a str,
}

#[derive(serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum FrameOut<'a> {
    ConnectionInit,
    Unsubscribe {
        id: &'a str,
    },
    Subscribe {
        id: &'a str,
        channel: &'a str,
        authorization: AuthOut<'a>,
    },
    Publish {
        id: &'a str,
        channel: &'a str,
        events: &'a [String],
        authorization: AuthOut<'a>,
    },
}

/// The text to send upstream for `body`, with `auth` injected where
/// AppSync reads it.
pub fn render(body: Outgoing, auth: &UpstreamAuth) -> String {
    let secret = Some(auth.token.as_str());
    let a = || AuthOut {
        authorization: secret.filter(|_| auth.kind == Credential::Jwt),
        api_key: secret.filter(|_| auth.kind == Credential::ApiKey),
        host: &auth.host,
    };
    let out = match &body {
        Outgoing::ConnectionInit => FrameOut::ConnectionInit,
        Outgoing::Unsubscribe { id } => FrameOut::Unsubscribe { id },
        Outgoing::Subscribe { id, channel } => FrameOut::Subscribe {
            id,
            channel,
            authorization: a(),
        },
        Outgoing::Publish {
            id,
            channel,
            events,
        } => FrameOut::Publish {
            id,
            channel,
            events,
            authorization: a(),
        },
    };
    // Serialising strings and a fixed shape cannot fail.
    serde_json::to_string(&out).unwrap_or_default()
}

/// A subscribe frame for replaying subscription `id` on a new upstream.
pub fn subscribe_frame(id: &str, channel: &str, auth: &UpstreamAuth) -> String {
    render(
        Outgoing::Subscribe {
            id: id.to_string(),
            channel: channel.to_string(),
        },
        auth,
    )
}

/// Decides what to do with a text frame from the browser, in one step
/// (prepare, then render with `auth`): for tests, benches and fuzz targets.
pub fn rewrite_client_frame(text: &str, auth: &UpstreamAuth) -> ClientAction {
    match prepare_client_frame(text) {
        Prepared::Reply(r) => ClientAction::Reply(r),
        Prepared::Forward { body, .. } => ClientAction::Forward(render(body, auth)),
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
            ClientAction::Reply(r) => panic!("expected Forward, got Reply({r})"),
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
        // Amplify's payload copy is not part of the protocol: not forwarded.
        assert!(out.get("payload").is_none());
        assert_eq!(out["channel"], "/default/room");
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
    fn only_the_fields_appsync_reads_are_forwarded() {
        let init = r#"{"type":"connection_init","payload":{"x":1}}"#;
        assert_eq!(
            forwarded(rewrite_client_frame(init, &auth())),
            json!({"type":"connection_init"})
        );
        let unsub = r#"{"type":"unsubscribe","id":"s1","extra":true}"#;
        assert_eq!(
            forwarded(rewrite_client_frame(unsub, &auth())),
            json!({"type":"unsubscribe","id":"s1"})
        );
        let sneaky = r#"{"type":"connection_init","authorization":{"Authorization":"stolen"}}"#;
        let out = forwarded(rewrite_client_frame(sneaky, &auth()));
        assert_eq!(out, json!({"type":"connection_init"}));
    }

    #[test]
    fn auth_hidden_at_any_depth_never_reaches_upstream() {
        for frame in [
            json!({"type":"subscribe","id":"s","channel":"/d/a","extensions":{"authorization":"X"}}),
            json!({"type":"subscribe","id":"s","channel":"/d/a","payload":[{"authorization":"X"}]}),
            json!({"type":"publish","id":"p","channel":"/d/a","events":["1"],"payload":{"data":{"authorization":"X"}}}),
            json!({"type":"publish","id":"p","channel":"/d/a","events":["1"],"AuThOrIzAtIoN":"X"}),
        ] {
            let out = forwarded(rewrite_client_frame(&frame.to_string(), &auth())).to_string();
            assert!(!out.contains("\"X\""), "{out}");
            assert_eq!(
                out.to_ascii_lowercase().matches("authorization").count(),
                2,
                "{out}"
            );
        }
    }

    #[test]
    fn duplicate_keys_and_unknown_types_are_refused_locally() {
        for text in [
            r#"{"type":"publish","type":"connection_init","id":"p","channel":"/d/a","events":["1"]}"#,
            r#"{"type":"subscribe","id":"s","channel":"/d/a","payload":{"a":1,"a":2}}"#,
            r#"{"type":"subscribe","id":"s","\u0069d":"t","channel":"/d/a"}"#,
            r#"{"type":"start","id":"s"}"#,
        ] {
            let out = replied(rewrite_client_frame(text, &auth()));
            assert_eq!(out["type"], "error", "{text}");
        }
    }

    #[test]
    fn shadowed_duplicate_keys_cannot_smuggle_auth_upstream() {
        for text in [
            r#"{"type":"connection_init","payload":{"authorization":{"x-api-key":"k"}},"payload":1}"#,
            r#"{"type":"unsubscribe","id":"s1","payload":{"extensions":{"authorization":{"Authorization":"X"}}},"payload":{}}"#,
            r#"{"type":"connection_init","payload":{"\u0061uthorization":"X"},"payload":1}"#,
        ] {
            let out = rewrite_client_frame(text, &auth());
            assert!(matches!(out, ClientAction::Reply(_)), "{text}: {out:?}");
        }
    }

    #[test]
    fn debug_redacts_token() {
        assert!(!format!("{:?}", auth()).contains("REAL"));
    }

    #[test]
    fn an_api_key_goes_out_as_x_api_key_and_a_jwt_as_authorization_never_both() {
        let key = UpstreamAuth::api_key("da2-KEY", "api.example.com");
        let sub = serde_json::from_str::<Value>(&subscribe_frame("s", "/default/a", &key)).unwrap();
        assert_eq!(
            sub["authorization"],
            json!({"x-api-key": "da2-KEY", "host": "api.example.com"})
        );
        assert_eq!(Value::Object(key.as_map()), sub["authorization"]);
        assert!(key.is_api_key() && key.subject().is_none());
        assert!(!format!("{key:?}").contains("da2-KEY"));
        let jwt =
            serde_json::from_str::<Value>(&subscribe_frame("s", "/default/a", &auth())).unwrap();
        assert_eq!(
            jwt["authorization"],
            json!({"Authorization": "REAL.JWT.TOKEN", "host": "api.example.com"})
        );
        assert_eq!(Value::Object(auth().as_map()), jwt["authorization"]);
    }
}
