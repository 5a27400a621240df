//! The shapes of a policy: rules, their patterns and segments, and how
//! one pattern covers one channel (`mod.rs` decides over all of them;
//! `parse` builds them).

use crate::protocol::is_valid_segment;
use crate::verify::Claims;

/// What a rule may allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Subscribe,
    Publish,
}

impl Op {
    /// The operation's name, as rules and metrics write it.
    pub fn name(self) -> &'static str {
        match self {
            Op::Subscribe => "subscribe",
            Op::Publish => "publish",
        }
    }
}

/// One segment of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Segment {
    Literal(String),
    Claim(String),
}

/// A channel pattern: fixed segments, then perhaps `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Pattern {
    pub(super) fixed: Vec<Segment>,
    /// Ends in `*`: covers one or more further segments, at any depth.
    pub(super) tail: bool,
}

/// One `[[rule]]` of the file.
#[derive(Debug, Clone)]
pub struct Rule {
    pub(super) patterns: Vec<Pattern>,
    pub(super) subscribe: bool,
    pub(super) publish: bool,
    /// Claim name → the value it must equal or hold.
    pub(super) when: Vec<(String, String)>,
}

impl Rule {
    /// Whether the rule lists `op`.
    pub fn allows(&self, op: Op) -> bool {
        match op {
            Op::Subscribe => self.subscribe,
            Op::Publish => self.publish,
        }
    }

    pub(super) fn conditions_hold(&self, claims: &Claims) -> bool {
        self.when
            .iter()
            .all(|(name, wanted)| claims.claim(name).holds(wanted))
    }

    /// The `when` conditions: claim name and the value it must equal or
    /// hold.
    pub fn conditions(&self) -> &[(String, String)] {
        &self.when
    }

    /// The rule's patterns as written (for `check`).
    pub fn patterns(&self) -> Vec<String> {
        self.patterns.iter().map(Pattern::to_string).collect()
    }

    /// A pattern `/ns/*` in a rule without conditions: a whole namespace
    /// for every signed-in user (`check` warns about it).
    pub fn whole_namespace(&self) -> Option<String> {
        self.patterns
            .iter()
            .find(|p| p.tail && p.fixed.len() == 1 && self.when.is_empty())
            .map(Pattern::to_string)
    }
}

impl Pattern {
    pub(super) fn covers(&self, segments: &[&str], wildcard: bool, claims: &Claims) -> bool {
        let n = self.fixed.len();
        let shape = if wildcard {
            self.tail && n <= segments.len()
        } else if self.tail {
            segments.len() > n
        } else {
            segments.len() == n
        };
        shape
            && self
                .fixed
                .iter()
                .zip(segments)
                .all(|(p, s)| p.matches(s, claims))
    }
}

impl Segment {
    fn matches(&self, segment: &str, claims: &Claims) -> bool {
        match self {
            Segment::Literal(l) => l == segment,
            // The channel's segment is valid already; checking the claim's
            // value too keeps the rule stated where it matters.
            Segment::Claim(name) => claims
                .claim(name)
                .strings()
                .any(|v| v == segment && is_valid_segment(v)),
        }
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for s in &self.fixed {
            match s {
                Segment::Literal(l) => write!(f, "/{l}")?,
                Segment::Claim(c) => write!(f, "/{{{c}}}")?,
            }
        }
        if self.tail {
            f.write_str("/*")?;
        }
        Ok(())
    }
}
