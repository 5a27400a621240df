//! Putting a browser's own subscription id into a frame that arrived for a
//! shared subscription, without re-serialising the event: the relay finds
//! where the top-level `"id"` value sits once per upstream frame, then each
//! browser's copy is the bytes before it, its id, and the bytes after it.
//!
//! The span comes from serde_json's own parser (a `RawValue` per top-level
//! member), so a `"id"` inside the event payload, nested objects, escapes
//! and whitespace cannot fool it. Ids are the relay's and the browsers'
//! (checked by `protocol::is_valid_id`: `[A-Za-z0-9_+-]`, nothing to
//! escape), and a frame whose id is not such a string is not spliced.

use crate::protocol::is_valid_id;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::ops::Range;

/// A frame and where its top-level id's value (a JSON string, quotes
/// included) lies in it.
#[derive(Debug, Clone)]
pub struct IdSpan {
    span: Range<usize>,
}

impl IdSpan {
    /// Finds the top-level `"id"` of `frame`; `None` when the frame is not a
    /// JSON object or its id is not a valid id string.
    pub fn find(frame: &str) -> Option<IdSpan> {
        let members: HashMap<std::borrow::Cow<'_, str>, &RawValue> =
            serde_json::from_str(frame).ok()?;
        let raw = members.get("id")?.get();
        // The raw value borrows from `frame`: its offset is the distance
        // between the two addresses.
        let start = (raw.as_ptr() as usize).checked_sub(frame.as_ptr() as usize)?;
        let span = start..start.checked_add(raw.len())?;
        let value = frame.get(span.clone())?;
        let id = value.strip_prefix('"')?.strip_suffix('"')?;
        is_valid_id(id).then_some(IdSpan { span })
    }

    /// The id as it stands in the frame (without quotes).
    pub fn id<'f>(&self, frame: &'f str) -> &'f str {
        &frame[self.span.start + 1..self.span.end - 1]
    }

    /// `frame` with its id replaced by `id` (a valid id: nothing to escape).
    pub fn with_id(&self, frame: &str, id: &str) -> String {
        debug_assert!(is_valid_id(id));
        let mut out = String::with_capacity(frame.len() - self.span.len() + id.len() + 2);
        out.push_str(&frame[..self.span.start]);
        out.push('"');
        out.push_str(id);
        out.push('"');
        out.push_str(&frame[self.span.end..]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    #[test]
    fn replaces_only_the_top_level_id() {
        let frame = r#"{"type":"data","event":"{\"id\":\"s1\"}","id":"s1","x":{"id":"s1"}}"#;
        let span = IdSpan::find(frame).unwrap();
        assert_eq!(span.id(frame), "s1");
        let out: Value = serde_json::from_str(&span.with_id(frame, "mine-2")).unwrap();
        assert_eq!(out["id"], "mine-2");
        assert_eq!(out["event"], r#"{"id":"s1"}"#);
        assert_eq!(out["x"]["id"], "s1");
    }

    #[test]
    fn keeps_whitespace_and_order_around_it() {
        let frame = "{ \"id\" :  \"abc\" ,\n \"type\": \"data\", \"event\": \"1\" }";
        let span = IdSpan::find(frame).unwrap();
        assert_eq!(
            span.with_id(frame, "b"),
            "{ \"id\" :  \"b\" ,\n \"type\": \"data\", \"event\": \"1\" }"
        );
    }

    #[test]
    fn refuses_what_it_cannot_splice_safely() {
        for frame in [
            r#"{"type":"data"}"#,
            r#"{"id":7}"#,
            r#"{"id":"has space"}"#,
            r#"{"id":"a\"b"}"#,
            r#"{"id":""}"#,
            r#"["id","x"]"#,
            "not json",
            r#"{"id":"x""#,
        ] {
            assert!(IdSpan::find(frame).is_none(), "{frame}");
        }
    }

    fn id() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_+-]{1,40}"
    }

    proptest! {
        /// Any event, any ids: the spliced frame parses, carries the new id
        /// and everything else exactly as before.
        #[test]
        fn a_spliced_frame_differs_only_in_its_id(
            event in any::<String>(),
            extra in prop::collection::vec((id(), any::<String>()), 0..4),
            old in id(),
            new in id(),
            id_first in any::<bool>(),
        ) {
            let mut object = serde_json::Map::new();
            if id_first { object.insert("id".into(), json!(old)); }
            object.insert("type".into(), json!("data"));
            object.insert("event".into(), json!(event));
            for (k, v) in &extra {
                if k != "id" { object.insert(k.clone(), json!(v)); }
            }
            if !id_first { object.insert("id".into(), json!(old)); }
            let frame = Value::Object(object.clone()).to_string();
            let span = IdSpan::find(&frame).unwrap();
            prop_assert_eq!(span.id(&frame), old.as_str());
            let out: Value = serde_json::from_str(&span.with_id(&frame, &new)).unwrap();
            object.insert("id".into(), json!(new));
            prop_assert_eq!(out, Value::Object(object));
        }
    }
}
