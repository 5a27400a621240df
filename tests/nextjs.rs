//! The Next.js example (`examples/nextjs`: App Router, Amplify's server-side
//! auth with HTTP-only cookies, Cognito managed login, aws-amplify `events`)
//! behind the relay, against MiniStack, in Debian's headless Chromium:
//! `node --test tests/node/nextjs.test.mjs` (what it proves is listed there).
//!
//! Needs the example installed and built (`bash tests/run.sh --install-only`
//! runs `npm ci` and `next build` in examples/nextjs when they are stale),
//! MiniStack in `target/ministack-venv` (or `MINISTACK_BIN`),
//! `/usr/bin/chromium`, `node`/`npm` and `openssl`. Missing pieces fail the
//! test with the command that installs them; nothing is skipped.

#[path = "support/node.rs"]
mod node;

use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn nextjs_example_behind_the_relay_against_ministack_in_headless_chromium() {
    node::run_node_test("tests/node/nextjs.test.mjs", &[], Duration::from_secs(260)).await;
}
