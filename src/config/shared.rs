//! `--shared-channel*`: which subscriptions are served from a shared
//! upstream subscription (see `fanout`), checked like every other flag.

use crate::cli::{ServeArgs, SharedCheck};
use crate::fanout::SharedConfig;
use crate::protocol::Channel;
use crate::rewrite::UpstreamAuth;
use std::time::Duration;

/// `http_host` is the AppSync HTTP host the API key is presented for.
pub fn parse(args: &ServeArgs, http_host: Option<&str>, errors: &mut Vec<String>) -> SharedConfig {
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
    let api_key = args.shared_api_key_file.as_ref().and_then(|path| {
        if patterns.is_empty() {
            errors.push(
                "--shared-api-key-file is only used by shared channels: add --shared-channel, or drop it"
                    .into(),
            );
            return None;
        }
        if args.shared_channel_check == SharedCheck::None {
            // No user's token would reach AppSync for a shared channel at
            // all: the key would stand in for everyone's authorisation.
            errors.push(
                "--shared-api-key-file with --shared-channel-check none would let the API key authorise every signed-in user: keep the check (subscribe), or drop the key"
                    .into(),
            );
            return None;
        }
        // Never echo the file's contents: it is a secret.
        match read_small(path) {
            Ok(text) => {
                let key = text.trim_start_matches('\u{feff}').trim();
                if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
                    errors.push(format!(
                        "--shared-api-key-file {}: expected one API key (such as da2-...) and nothing else",
                        path.display()
                    ));
                    return None;
                }
                Some(UpstreamAuth::api_key(key, http_host.unwrap_or_default()))
            }
            Err(e) => {
                errors.push(format!("--shared-api-key-file {}: {e}", path.display()));
                None
            }
        }
    });
    SharedConfig {
        patterns,
        api_key,
        check: args.shared_channel_check == SharedCheck::Subscribe,
        linger: Duration::from_secs(args.shared_linger),
        max_channels: args.shared_max_channels,
        queue: args.shared_queue,
        queue_bytes: args.shared_queue_bytes,
    }
}

/// A key file's text: at most 4 KiB (an API key is ~40 characters; a
/// flag pointed at a large file or a device must not exhaust memory).
pub fn read_small(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(4096)
        .read_to_string(&mut text)?;
    Ok(text)
}
