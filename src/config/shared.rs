//! `--shared-channel*`: which subscriptions are served from a shared
//! upstream subscription (see `fanout`), checked like every other flag.

use crate::cli::{ServeArgs, SharedCheck};
use crate::fanout::SharedConfig;
use crate::protocol::Channel;
use std::time::Duration;

pub fn parse(args: &ServeArgs, errors: &mut Vec<String>) -> SharedConfig {
    let mut patterns = Vec::new();
    for raw in args
        .shared_channels
        .iter()
        .map(|p| p.trim())
        .filter(|p| !p.is_empty())
    {
        match Channel::parse(raw, true) {
            Ok(channel) => patterns.push(channel),
            Err(e) => errors.push(format!(
                "--shared-channel {raw:?}: {e} (a channel such as /prices/eur, or /prices/* for everything below /prices)"
            )),
        }
    }
    SharedConfig {
        patterns,
        check: args.shared_channel_check == SharedCheck::Subscribe,
        linger: Duration::from_secs(args.shared_linger),
        queue: args.shared_queue,
    }
}
