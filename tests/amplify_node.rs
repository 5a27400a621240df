//! Wire compatibility with the real `aws-amplify` v6 `events` client: runs
//! `node --test tests/node/amplify-node.test.mjs` (Amplify under Node with a
//! browser-like cookie/Origin WebSocket shim, against `appsync-relay serve` in
//! front of `appsync-relay emulate`, with cognito-local tokens) and requires
//! it to pass, once with the relay on plain HTTP (the shim rewrites Amplify's
//! `wss://` to `ws://`) and once over TLS (`--tls-cert/--tls-key`, Amplify's
//! `wss://` unchanged). The Node file starts and kills its own processes.
//!
//! Needs `node` (>= 20) and `npm` on `PATH`, and `openssl` for the TLS run.

#[path = "support/node.rs"]
mod node;

use std::time::Duration;

/// Whole `node --test` run, including cognito-local start-up and a relay
/// restart with Amplify's ~5 s reconnect delay.
const DEADLINE: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread")]
async fn real_amplify_client_under_node_talks_to_the_relay_over_http() {
    node::run_node_test("tests/node/amplify-node.test.mjs", &[], DEADLINE).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn real_amplify_client_under_node_talks_to_the_relay_over_tls() {
    node::run_node_test(
        "tests/node/amplify-node.test.mjs",
        &[("APPSYNC_RELAY_TEST_TLS", "1")],
        DEADLINE,
    )
    .await;
}
