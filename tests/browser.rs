//! The real browser: `node --test tests/node/browser.test.mjs` drives
//! Debian's headless Chromium (playwright-core) through the demo and through
//! `serve` with cognito-local tokens, and fails if any token is reachable by
//! page JavaScript (cookies, storage, WebSocket frames, response bodies).
//!
//! Needs `/usr/bin/chromium` (`apt-get install chromium`; `.ci/run` does
//! it), `node`/`npm`, and `openssl`.

#[path = "support/node.rs"]
mod node;

use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn tokens_never_reach_page_javascript_in_headless_chromium() {
    node::run_node_test("tests/node/browser.test.mjs", &[], Duration::from_secs(180)).await;
}
