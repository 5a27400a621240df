//! An upstream frame → `fanout::splice::IdSpan` (the id splicing of shared
//! channels: each browser's copy of an AppSync event carries its own id).
//!
//! The input is split at the first NUL: frame, then the new id.
//!
//! Invariants:
//! - never panics, whatever the frame (the span comes from the parser, and
//!   is sliced out of the frame it was found in);
//! - a span is found for a JSON object whose top-level `id` is written as a
//!   valid id in quotes, and only for an object whose `id` is a valid id
//!   string; `id()` is that string. (An id written with escapes, such as
//!   `\u0056` for `V`, need not be found: AppSync echoes the relay's own
//!   ids, which have nothing to escape, and such a frame is not spliced);
//! - splicing a valid id gives a frame that parses to the same object with
//!   only `id` changed (duplicate keys aside, where the parser keeps the
//!   last one and so does the check).
#![no_main]

use appsync_relay::fanout::splice::IdSpan;
use appsync_relay::protocol::is_valid_id;
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use std::collections::BTreeMap;

/// A JSON object as its members' raw text: the oracle compares values as
/// written, so it never converts a number (a `serde_json::Value` cannot hold
/// `1e400`, which is valid JSON and which the splicer rightly passes on).
/// Duplicate keys: the last one wins, as in the parser.
type Members = BTreeMap<String, Box<RawValue>>;

fn members(text: &str) -> Option<Members> {
    serde_json::from_str(text).ok()
}

fn string(raw: &RawValue) -> Option<String> {
    serde_json::from_str(raw.get()).ok()
}

fuzz_target!(|data: &[u8]| {
    let (frame, new_id) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b"browser-1"[..]),
    };
    let Ok(frame) = std::str::from_utf8(frame) else {
        return;
    };
    let Some(span) = IdSpan::find(frame) else {
        // No span: then the frame is no object whose id is written as a
        // valid id in quotes (escapes and all: a valid id needs none).
        if let Some(o) = members(frame) {
            if let Some(raw) = o.get("id") {
                let written = raw.get().strip_prefix('"').and_then(|w| w.strip_suffix('"'));
                if let Some(id) = written {
                    assert!(!is_valid_id(id), "a valid id was not found in {frame:?}");
                }
            }
        }
        return;
    };
    let old = span.id(frame);
    assert!(is_valid_id(old));
    let Some(before) = members(frame) else {
        panic!("a span in something that is not a JSON object: {frame:?}");
    };
    assert_eq!(before.get("id").and_then(|raw| string(raw)).as_deref(), Some(old));
    let Ok(new_id) = std::str::from_utf8(new_id) else {
        return;
    };
    if !is_valid_id(new_id) {
        return;
    }
    let spliced = span.with_id(frame, new_id);
    let after = members(&spliced).expect("a spliced frame parses");
    assert_eq!(after.get("id").and_then(|raw| string(raw)).as_deref(), Some(new_id));
    let rest = |m: &Members| -> Vec<(String, String)> {
        m.iter()
            .filter(|(k, _)| k.as_str() != "id")
            .map(|(k, v)| (k.clone(), v.get().to_owned()))
            .collect()
    };
    assert_eq!(rest(&after), rest(&before), "splicing changed more than the id");
});
