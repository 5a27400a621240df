//! Browser text frame → `rewrite::prepare_client_frame` / `rewrite_client_frame`.
//!
//! Invariants:
//! - never panics; `rewrite_client_frame` == `render(prepare_client_frame)`;
//! - a `Forward` is a JSON object holding only `type`, `id`, `channel`,
//!   `events` and `authorization`; for subscribe/publish its `authorization`
//!   is exactly the injected `{"Authorization", "host"}` and the token
//!   appears exactly once; no other `authorization` key is left anywhere;
//! - a frame with duplicate keys is never forwarded (counted with a parser
//!   that keeps duplicates); FUZZ_ALLOW_DUPLICATE_KEYS=1 skips that part;
//! - a `Reply` is a JSON error frame and never contains the token;
//! - forwarded subscribe/publish frames satisfy AppSync's rules.
#![no_main]

use appsync_relay::protocol::{is_valid_id, Channel};
use appsync_relay::rewrite::{
    check_events, prepare_client_frame, render, rewrite_client_frame, ClientAction, FrameKind,
    Prepared, UpstreamAuth,
};
use fuzz_support::{auth_key_paths, auth_key_paths_value, RawJson};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use std::sync::OnceLock;

const TOKEN: &str = "eyJraWQiOiJrMSJ9.eyJzdWIiOiJmdXp6In0.SIGNATURE_zq9X";
const HOST: &str = "abc123.appsync-api.eu-west-1.amazonaws.com";

fn allow_dup_keys() -> bool {
    static V: OnceLock<bool> = OnceLock::new();
    *V.get_or_init(|| std::env::var_os("FUZZ_ALLOW_DUPLICATE_KEYS").is_some_and(|v| v == "1"))
}

fuzz_target!(|data: &[u8]| {
    // WebSocket text frames are UTF-8 by definition.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let auth = UpstreamAuth::new(TOKEN, HOST);
    let input_has_token = text.contains(TOKEN);
    assert!(!format!("{auth:?}").contains(TOKEN));

    let prepared = prepare_client_frame(text);
    let action = rewrite_client_frame(text, &auth);
    // The one-step API is the two-step API.
    let (kind, expected) = match prepared {
        Prepared::Reply(r) => (None, ClientAction::Reply(r)),
        Prepared::Forward { kind, body } => (Some(kind), ClientAction::Forward(render(body, &auth))),
    };
    assert_eq!(action, expected, "rewrite_client_frame != render(prepare)");

    match (&kind, &action) {
        (_, ClientAction::Reply(r)) => {
            let v: Value = serde_json::from_str(r).expect("reply is not JSON");
            let t = v["type"].as_str().expect("reply has no type");
            assert!(
                matches!(
                    t,
                    "error" | "subscribe_error" | "publish_error" | "unsubscribe_error"
                ),
                "unexpected reply type {t}"
            );
            assert!(v["errors"].is_array());
            if !input_has_token {
                assert!(!r.contains(TOKEN), "reply contains the token");
            }
        }
        (Some(kind), ClientAction::Forward(s)) => {
            // A frame with a duplicate key anywhere is never forwarded.
            if !allow_dup_keys() {
                let raw: RawJson = serde_json::from_str(text).expect("RawJson parse");
                let all = auth_key_paths(&raw);
                let last_wins = auth_key_paths_value(&serde_json::from_str(text).unwrap());
                assert_eq!(all.len(), last_wins.len(), "forwarded a frame with duplicate keys");
            }
            let v: Value = serde_json::from_str(s).expect("forwarded frame is not JSON");
            let obj = v.as_object().expect("forwarded frame is not an object");
            // Only the fields AppSync reads.
            for key in obj.keys() {
                assert!(
                    matches!(key.as_str(), "type" | "id" | "channel" | "events" | "authorization"),
                    "forwarded an unknown field {key}"
                );
            }
            let needs_auth = matches!(
                kind,
                FrameKind::Subscribe { .. } | FrameKind::Publish { .. }
            );
            let paths = auth_key_paths_value(&v);
            if needs_auth {
                assert_eq!(
                    obj.get("authorization"),
                    Some(&Value::Object(auth.as_map())),
                    "injected authorization missing or altered"
                );
                assert_eq!(
                    paths,
                    vec!["authorization".to_string()],
                    "client authorization left in a forwarded frame"
                );
                if !input_has_token {
                    assert_eq!(s.matches(TOKEN).count(), 1, "token not exactly once");
                }
                let id = obj["id"].as_str().expect("forwarded id");
                assert!(is_valid_id(id));
                let publish = matches!(kind, FrameKind::Publish { .. });
                let ch = obj["channel"].as_str().expect("forwarded channel");
                let parsed = Channel::parse(ch, !publish).expect("forwarded bad channel");
                if publish {
                    assert!(!parsed.is_wildcard());
                    check_events(obj.get("events")).expect("forwarded bad events");
                }
                match kind {
                    FrameKind::Subscribe { id: kid, channel } => {
                        assert_eq!(kid, id);
                        assert_eq!(channel, ch);
                    }
                    FrameKind::Publish { id: kid } => assert_eq!(kid, id),
                    _ => unreachable!(),
                }
            } else {
                assert!(paths.is_empty(), "authorization left in {paths:?}");
                if !input_has_token {
                    assert!(!s.contains(TOKEN), "token injected into a non-auth frame");
                }
            }
        }
        (None, _) => unreachable!(),
    }
});
