//! Policy file + claims + channels → `policy::Policy::from_toml` and
//! `Policy::decide`.
//!
//! Input: `<policy TOML> NUL <claims JSON object> NUL <channel>\n<channel>…`.
//! - parsing never panics, and an error is one line;
//! - for every channel that parses (`Channel::parse`, wildcard allowed),
//!   `decide` never panics, for subscribe and publish;
//! - a `Permitted { rule }` is checked against an independent reading: that
//!   rule allows the operation, its `when` conditions hold on the claims
//!   JSON (equal string or array element), and one of its patterns (as
//!   written back by `Rule::patterns`) covers the channel by the documented
//!   rules, a `{claim}` segment matching only a claim value that is one
//!   valid segment, byte for byte;
//! - `Denied` is checked too: no rule passes that reading;
//! - an allowed wildcard subscription `P/*` allows the concrete `P/<x>` for
//!   a segment `x` no pattern or claim names (when AppSync's depth allows).
#![no_main]

use appsync_relay::policy::{Decision, Op, Policy};
use appsync_relay::protocol::{is_valid_segment, Channel};
use appsync_relay::verify::Claims;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |b| *b == 0);
    let (Some(toml), Some(claims), Some(channels)) = (parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    let Ok(toml) = std::str::from_utf8(toml) else {
        return;
    };
    let policy = match Policy::from_toml(toml) {
        Ok(p) => p,
        Err(e) => {
            assert!(!e.to_string().contains('\n'), "multi-line error: {e}");
            return;
        }
    };
    let Ok(Value::Object(mut raw)) = serde_json::from_slice::<Value>(claims) else {
        return;
    };
    raw.entry("sub").or_insert(Value::String("s1".into()));
    raw.entry("iss").or_insert(Value::String("https://idp".into()));
    raw.entry("exp").or_insert(Value::from(1u64));
    let raw = Value::Object(raw);
    let Ok(claims) = serde_json::from_value::<Claims>(raw.clone()) else {
        return;
    };
    let Ok(channels) = std::str::from_utf8(channels) else {
        return;
    };
    for line in channels.split('\n').take(16) {
        let Ok(channel) = Channel::parse(line, true) else {
            continue;
        };
        for op in [Op::Subscribe, Op::Publish] {
            if op == Op::Publish && channel.is_wildcard() {
                continue;
            }
            let decision = policy.decide(op, &channel, &claims);
            let first = policy
                .rules()
                .iter()
                .position(|r| oracle_allows(r, op, &channel, &raw));
            match (decision, first) {
                (Decision::Permitted { rule }, Some(i)) => assert_eq!(rule, i, "{line}"),
                (Decision::Denied, None) => {}
                (d, o) => panic!("{op:?} {line}: decided {d:?}, independent reading {o:?}"),
            }
            if op == Op::Subscribe && channel.is_wildcard() && decision.is_permitted() {
                let depth = channel.path().matches('/').count();
                if depth < 5 {
                    let below = format!("{}/zq9fresh", channel.path());
                    let concrete = Channel::parse(&below, false).expect("valid");
                    assert!(
                        policy.decide(op, &concrete, &claims).is_permitted(),
                        "{line} allowed but not {below}"
                    );
                }
            }
        }
    }
});

fn claim_strings<'a>(raw: &'a Value, name: &str) -> Vec<&'a str> {
    // Numeric registered claims match nothing, whatever their JSON.
    if matches!(name, "exp" | "nbf" | "iat" | "auth_time") {
        return Vec::new();
    }
    match raw.get(name) {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

fn oracle_allows(rule: &appsync_relay::policy::Rule, op: Op, channel: &Channel, raw: &Value) -> bool {
    if !rule.allows(op) {
        return false;
    }
    if !rule
        .conditions()
        .iter()
        .all(|(name, wanted)| claim_strings(raw, name).contains(&wanted.as_str()))
    {
        return false;
    }
    let segs: Vec<&str> = channel.path().split('/').skip(1).collect();
    rule.patterns().iter().any(|p| {
        let mut parts: Vec<&str> = p.split('/').skip(1).collect();
        let tail = parts.last() == Some(&"*");
        if tail {
            parts.pop();
        }
        let shape = if channel.is_wildcard() {
            tail && parts.len() <= segs.len()
        } else if tail {
            segs.len() > parts.len()
        } else {
            segs.len() == parts.len()
        };
        shape
            && parts.iter().zip(&segs).all(|(p, s)| {
                match p.strip_prefix('{').and_then(|x| x.strip_suffix('}')) {
                    Some(name) => claim_strings(raw, name)
                        .iter()
                        .any(|v| v == s && is_valid_segment(v)),
                    None => p == s,
                }
            })
    })
}
