//! The policy file: TOML, a list of `[[rule]]` tables, validated as a whole.
//! Anything unknown or impossible is an error naming the rule (1-based) and
//! what is wrong: an unknown key, an unknown operation, a pattern AppSync
//! could never deliver (a bad literal segment, more than five segments, `*`
//! anywhere but last or as the namespace). A file with an error is never
//! half applied.

use super::rules::{Pattern, Rule, Segment};
use crate::protocol::is_valid_segment;
use serde::Deserialize;
use std::collections::BTreeMap;

/// AppSync's most segments in a channel, `*` included.
const MAX_SEGMENTS: usize = 5;
/// Most rules, patterns per rule and conditions per rule: a policy is read
/// on every subscribe and publish.
const MAX_RULES: usize = 1_000;
const MAX_PER_RULE: usize = 64;
const MAX_CLAIM_NAME: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read the policy file: {0}")]
    Read(String),
    #[error("the policy file is not valid: {0}")]
    Syntax(String),
    #[error("rule {rule}: {message}")]
    Rule { rule: usize, message: String },
    #[error("more than {MAX_RULES} rules")]
    TooManyRules,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    rule: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    channels: OneOrMany,
    allow: OneOrMany,
    #[serde(default)]
    when: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

pub(super) fn rules(text: &str) -> Result<Vec<Rule>, PolicyError> {
    let file: File = toml::from_str(text).map_err(|e| PolicyError::Syntax(one_line(&e)))?;
    if file.rule.len() > MAX_RULES {
        return Err(PolicyError::TooManyRules);
    }
    file.rule
        .into_iter()
        .enumerate()
        .map(|(i, raw)| {
            rule(raw).map_err(|message| PolicyError::Rule {
                rule: i + 1,
                message,
            })
        })
        .collect()
}

/// toml's errors span several lines (the source line, a caret); a log line
/// and an exit message want one.
fn one_line(e: &toml::de::Error) -> String {
    let place = e
        .span()
        .map(|s| format!(" (at byte {})", s.start))
        .unwrap_or_default();
    format!("{}{place}", e.message().trim())
}

fn rule(raw: RawRule) -> Result<Rule, String> {
    let channels = raw.channels.into_vec();
    let allow = raw.allow.into_vec();
    if channels.is_empty() {
        return Err("`channels` is empty".into());
    }
    if allow.is_empty() {
        return Err("`allow` is empty".into());
    }
    if channels.len() > MAX_PER_RULE || raw.when.len() > MAX_PER_RULE {
        return Err(format!(
            "more than {MAX_PER_RULE} patterns or conditions in one rule"
        ));
    }
    let mut subscribe = false;
    let mut publish = false;
    for op in &allow {
        match op.as_str() {
            "subscribe" => subscribe = true,
            "publish" => publish = true,
            other => {
                return Err(format!(
                    "unknown operation {other:?} in `allow` (subscribe, publish)"
                ))
            }
        }
    }
    let patterns = channels
        .iter()
        .map(|c| pattern(c).map_err(|m| format!("channel pattern {c:?}: {m}")))
        .collect::<Result<Vec<_>, _>>()?;
    let mut when = Vec::with_capacity(raw.when.len());
    for (name, value) in raw.when {
        check_claim_name(&name).map_err(|m| format!("`when` key {name:?}: {m}"))?;
        if value.is_empty() {
            return Err(format!("`when` {name:?}: the value is empty"));
        }
        when.push((name, value));
    }
    Ok(Rule {
        patterns,
        subscribe,
        publish,
        when,
    })
}

fn pattern(text: &str) -> Result<Pattern, String> {
    let Some(rest) = text.strip_prefix('/') else {
        return Err("must start with '/'".into());
    };
    let parts: Vec<&str> = rest.split('/').collect();
    if parts.len() > MAX_SEGMENTS {
        return Err(format!(
            "more than {MAX_SEGMENTS} segments: AppSync has no such channel"
        ));
    }
    let last = parts.len() - 1;
    let mut fixed = Vec::with_capacity(parts.len());
    let mut tail = false;
    for (i, part) in parts.iter().enumerate() {
        if *part == "*" {
            if i != last {
                return Err("'*' may only be the last segment".into());
            }
            if i == 0 {
                return Err(
                    "'*' cannot be the namespace (AppSync has no such channel): name it".into(),
                );
            }
            tail = true;
        } else if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            check_claim_name(name)?;
            fixed.push(Segment::Claim(name.to_string()));
        } else if is_valid_segment(part) {
            fixed.push(Segment::Literal(part.to_string()));
        } else if part.is_empty() {
            return Err("has an empty segment".into());
        } else {
            return Err(format!(
                "segment {part:?} is neither a channel segment (1-50 of A-Z a-z 0-9, '-' inside), \
                 a whole {{claim}}, nor a final '*'"
            ));
        }
    }
    Ok(Pattern { fixed, tail })
}

fn check_claim_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_CLAIM_NAME {
        return Err(format!("a claim name has 1 to {MAX_CLAIM_NAME} characters"));
    }
    if name
        .chars()
        .any(|c| c.is_control() || matches!(c, '{' | '}' | '/' | '*'))
    {
        return Err("a claim name has no '{', '}', '/', '*' or control character".into());
    }
    Ok(())
}
