//! The AppSync Events real-time wire protocol: constants, the rules AppSync
//! enforces on subscription ids and channel paths, the `header-` subprotocol
//! encoding, and builders for the error frames AppSync sends.
//!
//! Both the relay (to answer bad client frames locally) and the emulator (to
//! reject what AWS would reject) use these rules, so they live in one place.
//! This module never sees a socket and never logs: it is pure functions.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Map, Value};

/// The subprotocol every AppSync Events client offers and the server selects.
pub const SUBPROTOCOL: &str = "aws-appsync-event-ws";
/// Prefix of the subprotocol that carries the base64url JSON auth header.
pub const HEADER_SUBPROTOCOL_PREFIX: &str = "header-";
/// At most this many events in one publish (WebSocket or HTTP).
pub const MAX_EVENTS_PER_PUBLISH: usize = 5;
/// Largest single event AppSync accepts (240 KB).
pub const MAX_EVENT_BYTES: usize = 240 * 1024;
/// The largest publish of legal events, as AppSync receives it (one copy of
/// the events): five of [`MAX_EVENT_BYTES`], each a JSON document written
/// once more as a JSON string, which at worst doubles it (every `"` and `\`
/// gains a `\`), plus 64 KiB for the rest of the frame or body. AWS
/// documents no frame or body limit of its own; this is the worst legal case.
pub const MAX_LEGAL_PUBLISH_BYTES: usize = MAX_EVENTS_PER_PUBLISH * MAX_EVENT_BYTES * 2 + 64 * 1024;
/// `connectionTimeoutMs` AppSync announces in `connection_ack`.
pub const CONNECTION_TIMEOUT_MS: u64 = 300_000;

const MAX_ID_LEN: usize = 128;
const MAX_SEGMENTS: usize = 5;
const MAX_SEGMENT_LEN: usize = 50;

/// Error types AppSync uses in `errors[].errorType`.
pub mod error_type {
    pub const UNAUTHORIZED: &str = "UnauthorizedException";
    pub const BAD_REQUEST: &str = "BadRequestException";
    pub const SUBSCRIPTION_PROCESSING: &str = "SubscriptionProcessingError";
    pub const MESSAGE_PROCESSING: &str = "MessageProcessingError";
    pub const UNKNOWN_OPERATION: &str = "UnknownOperationError";
}

/// `^[a-zA-Z0-9-_+]{1,128}$`: the id of a subscription or publish request.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'+')
}

/// Whether a close frame may carry `code` on the wire (RFC 6455 §7.4):
/// 1005, 1006 and 1015 are for reporting only, and 1004 and 1016–2999 are
/// reserved.
pub fn is_sendable_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Why a channel path breaks AppSync's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("channel is empty")]
    Empty,
    #[error("channel has more than {MAX_SEGMENTS} segments")]
    TooManySegments,
    #[error("channel segment is empty, longer than {MAX_SEGMENT_LEN} characters, or has characters other than A-Z a-z 0-9 and inner '-'")]
    BadSegment,
    #[error("wildcard '*' is only allowed as the last segment of a subscription")]
    WildcardNotAllowed,
}

/// A channel path that passed validation, in canonical form (leading `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    /// Canonical path with a leading `/` and without the trailing `/*`.
    path: String,
    /// The path ended in `/*`: matches the prefix and everything below it.
    wildcard: bool,
}

impl Channel {
    /// Parses a channel path. The leading `/` is optional, and so is one
    /// trailing `/`; there are 1 to 5 segments (a trailing `*` counts as
    /// one, and may not be the namespace), each 1–50 of `[A-Za-z0-9]` with
    /// `-` allowed inside but not at either end. That is AWS's documented
    /// pattern (`^\/?[A-Za-z0-9](?:[A-Za-z0-9-]{0,48}[A-Za-z0-9])?(?:\/…){0,4}\/?$`,
    /// event-api-websocket-protocol) plus the final `/*` of a subscription,
    /// which that pattern leaves out; `/*/` is refused, as no source shows
    /// it. A trailing `/` names the same channel as none (`path` drops it).
    /// `allow_wildcard` is true for subscribe and false for publish, where
    /// AppSync answers `BadRequestException`.
    pub fn parse(raw: &str, allow_wildcard: bool) -> Result<Channel, ChannelError> {
        let trimmed = raw.strip_prefix('/').unwrap_or(raw);
        let (trimmed, slash_after) = match trimmed.strip_suffix('/') {
            Some(rest) => (rest, true),
            None => (trimmed, false),
        };
        if trimmed.is_empty() {
            return Err(ChannelError::Empty);
        }
        if slash_after && trimmed.ends_with('*') {
            return Err(ChannelError::WildcardNotAllowed);
        }
        let segments: Vec<&str> = trimmed.split('/').collect();
        if segments.len() > MAX_SEGMENTS {
            return Err(ChannelError::TooManySegments);
        }
        let last = segments.len() - 1;
        let mut wildcard = false;
        for (i, segment) in segments.iter().enumerate() {
            if *segment == "*" {
                if i != last || i == 0 || !allow_wildcard {
                    return Err(ChannelError::WildcardNotAllowed);
                }
                wildcard = true;
                continue;
            }
            if !is_valid_segment(segment) {
                return Err(ChannelError::BadSegment);
            }
        }
        let kept = if wildcard {
            &segments[..last]
        } else {
            &segments[..]
        };
        let mut path = String::with_capacity(trimmed.len() + 1);
        for segment in kept {
            path.push('/');
            path.push_str(segment);
        }
        Ok(Channel { path, wildcard })
    }

    /// Canonical path (leading `/`, no trailing `/*`).
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }

    /// The channel as a subscription names it: the path, with `/*` for a
    /// wildcard (`/ns/a`, `/ns/*`).
    pub fn as_subscribed(&self) -> String {
        if self.wildcard {
            format!("{}/*", self.path)
        } else {
            self.path.clone()
        }
    }

    /// The channel namespace: the first segment.
    pub fn namespace(&self) -> &str {
        let rest = &self.path[1..];
        rest.split('/').next().unwrap_or(rest)
    }

    /// Whether an event published to `published` (a non-wildcard channel)
    /// reaches a subscription on `self`. A wildcard matches every channel
    /// strictly below its prefix, at any depth.
    pub fn matches(&self, published: &Channel) -> bool {
        if !self.wildcard {
            return self.path == published.path;
        }
        published
            .path
            .strip_prefix(self.path.as_str())
            .is_some_and(|rest| rest.starts_with('/'))
    }
}

/// One channel segment as AWS allows it: 1–50 of `[A-Za-z0-9]`, `-` inside.
pub fn is_valid_segment(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_SEGMENT_LEN
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
}

/// Builds the `header-<base64url(JSON)>` subprotocol from an auth object
/// such as `{"host": …, "Authorization": …}`.
pub fn encode_header_subprotocol(auth: &Map<String, Value>) -> String {
    let json = Value::Object(auth.clone()).to_string();
    let mut out = String::with_capacity(HEADER_SUBPROTOCOL_PREFIX.len() + json.len() * 4 / 3 + 4);
    out.push_str(HEADER_SUBPROTOCOL_PREFIX);
    URL_SAFE_NO_PAD.encode_string(json.as_bytes(), &mut out);
    out
}

/// Decodes a `header-…` subprotocol back into its JSON object. Accepts
/// padded and unpadded base64url, as AWS does. `None` if it is not one.
pub fn decode_header_subprotocol(protocol: &str) -> Option<Map<String, Value>> {
    let encoded = protocol.strip_prefix(HEADER_SUBPROTOCOL_PREFIX)?;
    let bytes = URL_SAFE_NO_PAD.decode(encoded.trim_end_matches('=')).ok()?;
    match serde_json::from_slice::<Value>(&bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

/// Splits a `Sec-WebSocket-Protocol` header value (comma separated, possibly
/// repeated headers already joined by the caller) into trimmed tokens.
pub fn split_protocols(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|p| !p.is_empty())
}

/// An `errors` array with one entry.
pub fn errors(error_type: &str, message: &str) -> Value {
    json!([{ "errorType": error_type, "message": message }])
}

/// A server → client error frame such as `subscribe_error` or `publish_error`.
/// `id` is echoed when the client gave a usable one.
pub fn error_frame(frame_type: &str, id: Option<&str>, error_type: &str, message: &str) -> String {
    let mut frame = Map::with_capacity(3);
    frame.insert("type".into(), Value::from(frame_type));
    if let Some(id) = id {
        frame.insert("id".into(), Value::from(id));
    }
    frame.insert("errors".into(), errors(error_type, message));
    Value::Object(frame).to_string()
}

/// The error frame type that answers a client message of `client_type`.
pub fn error_type_for(client_type: &str) -> &'static str {
    match client_type {
        "subscribe" => "subscribe_error",
        "publish" => "publish_error",
        "unsubscribe" => "unsubscribe_error",
        _ => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_appsync_pattern() {
        assert!(is_valid_id("abc-DEF_1+2"));
        assert!(is_valid_id(&"a".repeat(128)));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id(&"a".repeat(129)));
        assert!(!is_valid_id("a b"));
        assert!(!is_valid_id("a/b"));
        assert!(!is_valid_id("ünï"));
    }

    #[test]
    fn channels_follow_appsync_rules() {
        let c = Channel::parse("default/room-1", false).unwrap();
        assert_eq!(c.path(), "/default/room-1");
        assert!(!c.is_wildcard());
        assert!(Channel::parse("/a/b/c/d/e", false).is_ok());
        assert_eq!(
            Channel::parse("/a/b/c/d/e/f", false),
            Err(ChannelError::TooManySegments)
        );
        assert_eq!(Channel::parse("/", false), Err(ChannelError::Empty));
        assert_eq!(Channel::parse("", false), Err(ChannelError::Empty));
        assert_eq!(
            Channel::parse("/a//b", false),
            Err(ChannelError::BadSegment)
        );
        assert_eq!(
            Channel::parse("/a/-b", false),
            Err(ChannelError::BadSegment)
        );
        assert_eq!(
            Channel::parse("/a/b-", false),
            Err(ChannelError::BadSegment)
        );
        assert_eq!(
            Channel::parse("/a/b_c", false),
            Err(ChannelError::BadSegment)
        );
        // AWS's pattern allows one trailing `/`, not two; it names the
        // channel without it.
        assert_eq!(Channel::parse("/a/b/", false).unwrap().path(), "/a/b");
        assert_eq!(Channel::parse("a/", false).unwrap().path(), "/a");
        assert_eq!(Channel::parse("/a//", false), Err(ChannelError::BadSegment));
        assert_eq!(Channel::parse("//", false), Err(ChannelError::Empty));
        assert_eq!(
            Channel::parse("/a/b/c/d/e/", false).unwrap().path(),
            "/a/b/c/d/e"
        );
        assert_eq!(
            Channel::parse("/a/*/", true),
            Err(ChannelError::WildcardNotAllowed)
        );
        assert!(Channel::parse(&format!("/a/{}", "x".repeat(50)), false).is_ok());
        assert_eq!(
            Channel::parse(&format!("/a/{}", "x".repeat(51)), false),
            Err(ChannelError::BadSegment)
        );
    }

    #[test]
    fn wildcards_only_at_the_end_of_subscriptions() {
        let w = Channel::parse("/default/*", true).unwrap();
        assert!(w.is_wildcard());
        assert_eq!(w.path(), "/default");
        assert_eq!(
            Channel::parse("/default/*", false),
            Err(ChannelError::WildcardNotAllowed)
        );
        assert_eq!(
            Channel::parse("/*", true),
            Err(ChannelError::WildcardNotAllowed)
        );
        assert_eq!(
            Channel::parse("/a/*/b", true),
            Err(ChannelError::WildcardNotAllowed)
        );
    }

    #[test]
    fn wildcard_matches_everything_below_prefix() {
        let w = Channel::parse("/default/*", true).unwrap();
        let exact = Channel::parse("/default/a", true).unwrap();
        let p = |s| Channel::parse(s, false).unwrap();
        assert!(w.matches(&p("/default/a")));
        assert!(w.matches(&p("/default/a/b")));
        assert!(!w.matches(&p("/default")));
        assert!(!w.matches(&p("/defaults/a")));
        assert!(exact.matches(&p("default/a")));
        assert!(!exact.matches(&p("/default/a/b")));
    }

    #[test]
    fn header_subprotocol_round_trips() {
        let mut auth = Map::new();
        auth.insert("host".into(), "example.com".into());
        auth.insert("Authorization".into(), "eyJ.x.y".into());
        let p = encode_header_subprotocol(&auth);
        assert!(p.starts_with("header-"));
        assert!(!p.contains('='));
        assert_eq!(decode_header_subprotocol(&p), Some(auth));
        assert_eq!(decode_header_subprotocol("header-!!"), None);
        assert_eq!(decode_header_subprotocol("aws-appsync-event-ws"), None);
    }

    #[test]
    fn error_frames_are_appsync_shaped() {
        let f: Value = serde_json::from_str(&error_frame(
            "subscribe_error",
            Some("1"),
            "BadRequestException",
            "x",
        ))
        .unwrap();
        assert_eq!(f["type"], "subscribe_error");
        assert_eq!(f["id"], "1");
        assert_eq!(f["errors"][0]["errorType"], "BadRequestException");
    }
}
