//! Channel policy (`--channel-policy FILE`): which channels a user may
//! subscribe to and publish on, decided from the claims of the token the
//! relay verified for the socket or request, before AppSync sees the frame.
//!
//! With a policy, **every subscribe and publish is denied unless a rule
//! allows it**. A rule allows an operation on a channel when it lists the
//! operation, one of its patterns covers the channel, and all its `when`
//! conditions hold ([`Policy::decide`]). Patterns are channel paths whose
//! segments are literals, `{claim}` (one whole segment equal to the claim's
//! value, or to one element of an array claim such as `cognito:groups`), or
//! a final `*` (one or more further segments, at any depth).
//!
//! A policy mistake must never widen access, so: a claim that is absent, not
//! a string (or array of strings), or whose value is not one valid channel
//! segment matches nothing (claims such as `custom:*` attributes are written
//! by users themselves; a value is only ever one literal segment, compared
//! byte for byte); a wildcard subscription is allowed only when every
//! channel it can receive is ([`Policy::decide`] says why that test is
//! exact); a file that does not parse is refused as a whole ([`parse`]).
//!
//! This module is pure: no I/O besides reading the file, no logging. The
//! relay calls it from one place for subscribes (before shared-channel
//! routing) and one for publishes (WebSocket and HTTP).

mod parse;
mod rules;
#[cfg(test)]
mod tests;

use crate::protocol::Channel;
use crate::verify::Claims;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use tokio_util::sync::CancellationToken;

pub use parse::PolicyError;
pub use rules::{Op, Rule};

/// Largest policy file read.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// The policy's answer for one operation on one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Allowed by the rule at this index (0-based, in file order).
    Permitted { rule: usize },
    /// No rule allows it.
    Denied,
}

impl Decision {
    pub fn is_permitted(self) -> bool {
        matches!(self, Decision::Permitted { .. })
    }

    /// `permitted` or `denied`: the metric label.
    pub fn label(self) -> &'static str {
        match self {
            Decision::Permitted { .. } => "permitted",
            Decision::Denied => "denied",
        }
    }
}

/// A parsed, validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<Rule>,
}

impl Policy {
    /// Parses and validates a policy file's text.
    pub fn from_toml(text: &str) -> Result<Policy, PolicyError> {
        Ok(Policy {
            rules: parse::rules(text)?,
        })
    }

    /// Reads ([`read_file`]) and parses the file at `path`.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        Policy::from_toml(&read_file(path)?)
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Whether `claims` may perform `op` on `channel`: the first rule (in
    /// file order) that allows it, or `Denied`.
    ///
    /// A concrete channel is covered by a pattern whose fixed segments match
    /// its first segments and which either has exactly as many segments, or
    /// ends in `*` and is shorter. A wildcard subscription `P/*` may receive
    /// any channel `P/x…`; it is allowed only when a pattern ending in `*`
    /// has fixed segments matching a prefix of `P` (at most all of it). That
    /// test is exact: such a pattern covers every channel under `P`; and
    /// without one, the channel `P/x` with a segment `x` that no rule
    /// names and no claim holds is covered by no pattern (a pattern reaching
    /// past `P` needs a literal or claim equal to `x`), and AppSync's depth
    /// limit leaves room for `P/x` (a wildcard subscription has at most four
    /// segments before its `*`).
    pub fn decide(&self, op: Op, channel: &Channel, claims: &Claims) -> Decision {
        let segments: Vec<&str> = channel.path().split('/').skip(1).collect();
        let wildcard = channel.is_wildcard();
        self.rules
            .iter()
            .position(|rule| {
                rule.allows(op)
                    && rule
                        .patterns
                        .iter()
                        .any(|p| p.covers(&segments, wildcard, claims))
                    && rule.conditions_hold(claims)
            })
            .map_or(Decision::Denied, |rule| Decision::Permitted { rule })
    }
}

/// A policy file's text: at most 1 MiB is read (a flag pointed at a
/// device or a huge file must not exhaust memory), and it must be UTF-8.
pub fn read_file(path: &Path) -> Result<String, PolicyError> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| PolicyError::Read(e.to_string()))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(PolicyError::Read("larger than 1 MiB".into()));
    }
    String::from_utf8(bytes).map_err(|_| PolicyError::Read("not UTF-8".into()))
}

/// The policy in force: read on every subscribe and publish, replaced
/// whole when the file changes (a reader sees the old or the new policy,
/// never a mix). Each replacement fires the token [`LivePolicy::changes`]
/// handed out before it, so open connections decide their subscriptions
/// again.
#[derive(Debug)]
pub struct LivePolicy {
    current: RwLock<Arc<Policy>>,
    changed: Mutex<CancellationToken>,
}

impl LivePolicy {
    pub fn new(policy: Arc<Policy>) -> LivePolicy {
        LivePolicy {
            current: RwLock::new(policy),
            changed: Mutex::new(CancellationToken::new()),
        }
    }

    /// The policy now.
    pub fn get(&self) -> Arc<Policy> {
        // A poisoned lock still holds a whole policy (a replace is one
        // assignment).
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Fires at the next replacement.
    pub fn changes(&self) -> CancellationToken {
        self.changed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Puts `policy` in force for every later decision, then tells whoever
    /// waits on [`LivePolicy::changes`].
    pub fn replace(&self, policy: Policy) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(policy);
        let fired = std::mem::replace(
            &mut *self.changed.lock().unwrap_or_else(|e| e.into_inner()),
            CancellationToken::new(),
        );
        fired.cancel();
    }
}
