//! Which browser subscriptions are shared: `--shared-channel` patterns and
//! the other `--shared-channel*` settings.

use crate::protocol::Channel;
use crate::rewrite::UpstreamAuth;
use std::time::Duration;

/// What `--shared-channel*` configure.
#[derive(Debug, Clone)]
pub struct SharedConfig {
    /// Subscriptions to channels these match are shared.
    pub patterns: Vec<Channel>,
    /// `--shared-api-key-file`: what the carriers authenticate with instead
    /// of a member's token (its `Debug` redacts the key).
    pub api_key: Option<UpstreamAuth>,
    /// Ask AppSync with the user's token before a browser joins
    /// (`--shared-channel-check subscribe`, the default).
    pub check: bool,
    /// How long a shared subscription outlives its last browser.
    pub linger: Duration,
    /// Events that may wait for one browser before it counts as lagging.
    pub queue: usize,
    /// Bytes of events that may wait for one browser, likewise.
    pub queue_bytes: usize,
    /// Shared channels held at most (0: no cap); beyond it, unshared.
    pub max_channels: usize,
}

impl SharedConfig {
    /// The shared channel a subscription to `raw` joins (its canonical
    /// form: `/ns/a`, or `/ns/*` for a wildcard), if a pattern covers it.
    pub fn key_for(&self, raw: &str) -> Option<String> {
        let channel = Channel::parse(raw, true).ok()?;
        self.patterns
            .iter()
            .any(|p| covers(p, &channel))
            .then(|| channel.as_subscribed())
    }
}

/// Whether pattern `p` covers the subscription `c`: the same channel, or
/// for a `/*` pattern anything below its prefix (a wildcard subscription
/// included, when its own prefix is at or below it).
fn covers(p: &Channel, c: &Channel) -> bool {
    if !p.is_wildcard() {
        return !c.is_wildcard() && p.path() == c.path();
    }
    // As AppSync reads `/*`: strictly below the prefix (so `/prices/*`
    // does not cover `/prices` itself), or a wildcard subscription of the
    // same prefix.
    let prefix = p.path();
    (c.is_wildcard() && c.path() == prefix)
        || c.path()
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(patterns: &[&str]) -> SharedConfig {
        SharedConfig {
            api_key: None,
            patterns: patterns
                .iter()
                .map(|p| Channel::parse(p, true).unwrap())
                .collect(),
            check: true,
            linger: Duration::from_secs(1),
            max_channels: 0,
            queue: 4,
            queue_bytes: 1 << 20,
        }
    }

    #[test]
    fn patterns_cover_their_channel_or_everything_below_it() {
        let c = cfg(&["/prices/*", "/rooms/lobby"]);
        assert_eq!(c.key_for("/prices/eur").as_deref(), Some("/prices/eur"));
        assert_eq!(
            c.key_for("prices/eur/usd").as_deref(),
            Some("/prices/eur/usd")
        );
        assert_eq!(c.key_for("/prices/*").as_deref(), Some("/prices/*"));
        assert_eq!(c.key_for("/prices/eur/*").as_deref(), Some("/prices/eur/*"));
        assert_eq!(c.key_for("/rooms/lobby").as_deref(), Some("/rooms/lobby"));
        for not_shared in [
            "/pricesx/eur",
            "/rooms/lobby2",
            "/rooms/*",
            "/rooms/lobby/*",
            "/other/a",
            "bad channel",
        ] {
            assert_eq!(c.key_for(not_shared), None, "{not_shared}");
        }
    }
}
