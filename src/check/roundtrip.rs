//! The real round trip, made as a browser makes it: a relay started in
//! this process with the flags given (on a loopback port, without the
//! public listener's TLS), a WebSocket to it carrying the sign-in's cookies
//! and an allowed Origin, then subscribe to `--check-channel`, publish,
//! receive, publish over HTTP, receive, unsubscribe. Every step goes through
//! the code `serve` runs, to the real Cognito and AppSync.
//!
//! If the sign-in's token is due, the relay renews it as it would for a
//! browser; the renewed cookies are dropped with the check (with refresh
//! token rotation the browser the cookies came from must sign in again).

use super::browser::{connect, http_publish, send, wait_for, StepError};
use super::report::{peer_text, Report};
use crate::config::Config;
use crate::origin::normalize;
use crate::server;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::net::TcpListener;

/// The steps, in order; a failed one skips the rest.
const STEPS: [&str; 6] = [
    "round_trip.connect",
    "round_trip.subscribe",
    "round_trip.publish",
    "round_trip.receive",
    "round_trip.http_publish",
    "round_trip.unsubscribe",
];

const SUBSCRIPTION: &str = "appsync-relay-check";

/// `origin` is the first `--allowed-origin`, sent as the browser's Origin.
pub async fn run(
    config: &Config,
    origin: Option<String>,
    cookie: &str,
    channel: &str,
    report: &mut Report,
) {
    let origin = origin.and_then(|o| normalize(&o).ok());
    let mut done = 0;
    let result = steps(
        config,
        origin.as_deref(),
        cookie,
        channel,
        report,
        &mut done,
    )
    .await;
    if let Err((detail, fix)) = result {
        report.fail(STEPS[done], detail, fix);
        for step in &STEPS[done + 1..] {
            report.skip(step, format!("not run: {} failed", STEPS[done]));
        }
    }
}

async fn steps(
    config: &Config,
    origin: Option<&str>,
    cookie: &str,
    channel: &str,
    report: &mut Report,
    done: &mut usize,
) -> Result<(), StepError> {
    let bind = || async {
        TcpListener::bind("127.0.0.1:0").await.map_err(|e| {
            (
                format!("cannot bind a loopback port: {e}"),
                "free a port".to_string(),
            )
        })
    };
    let (public, admin) = (bind().await?, bind().await?);
    let mut cfg = config.clone();
    cfg.tls = None;
    let relay = server::spawn(cfg, public, admin).map_err(|e| {
        (
            format!("the relay did not start: {e}"),
            "see the flags check".to_string(),
        )
    })?;
    let addr = relay.public_addr;
    let wait = config.upstream_timeout + Duration::from_secs(2);
    let outcome = async {
        if !relay.wait_ready(wait).await {
            return Err((
                "the relay did not become ready (signing keys not loaded, or AppSync's host not resolvable)".to_string(),
                "see the jwks and appsync_realtime checks".to_string(),
            ));
        }
        exchange(config, addr, origin, cookie, channel, report, done).await
    }
    .await;
    relay.shutdown(Duration::ZERO, Duration::from_secs(1)).await;
    outcome
}

async fn exchange(
    config: &Config,
    addr: std::net::SocketAddr,
    origin: Option<&str>,
    cookie: &str,
    channel: &str,
    report: &mut Report,
    done: &mut usize,
) -> Result<(), StepError> {
    let timeout = config.upstream_timeout + Duration::from_secs(2);
    // The cookies as the browser holds them after the upgrade's answer.
    let (mut ws, cookie) = connect(config, addr, cookie, origin, timeout).await?;
    let cookie = cookie.as_str();
    report.pass(
        STEPS[0],
        format!(
            "the relay accepted the sign-in and AppSync acknowledged the connection (via {addr})"
        ),
    );
    *done = 1;

    let sub = json!({"type": "subscribe", "id": SUBSCRIPTION, "channel": channel});
    send(&mut ws, &sub).await?;
    let v = wait_for(&mut ws, timeout, |v| {
        v["id"] == SUBSCRIPTION && v["type"] != "data"
    })
    .await?;
    if v["type"] != "subscribe_success" {
        return Err((
            format!("subscribing to {channel} was refused: {}", peer_text(&v["errors"].to_string())),
            "the channel's namespace must exist on the API and allow this user to subscribe (Cognito user pools auth)".into(),
        ));
    }
    report.pass(STEPS[1], format!("subscribed to {channel}"));
    *done = 2;

    let nonce = format!("{:016x}", rand::random::<u64>());
    let event = json!({"appsyncRelayCheck": nonce, "via": "websocket"}).to_string();
    let publish = json!({"type": "publish", "id": "appsync-relay-check-publish", "channel": channel, "events": [event]});
    send(&mut ws, &publish).await?;
    let mut received = false;
    let v = wait_for(&mut ws, timeout, |v| {
        received |= carries(v, &nonce);
        v["id"] == "appsync-relay-check-publish" && v["type"] != "data"
    })
    .await?;
    if v["type"] != "publish_success" {
        return Err((
            format!(
                "publishing to {channel} was refused: {}",
                peer_text(&v["errors"].to_string())
            ),
            "the channel's namespace must allow this user to publish (Cognito user pools auth)"
                .into(),
        ));
    }
    report.pass(STEPS[2], "published one event over the WebSocket");
    *done = 3;

    if !received {
        wait_for(&mut ws, timeout, |v| carries(v, &nonce)).await.map_err(|(d, _)| {
            (d, "AppSync accepted the event but did not deliver it to the subscription: check the namespace's handlers".to_string())
        })?;
    }
    report.pass(STEPS[3], "the subscription received it");
    *done = 4;

    let nonce = format!("{:016x}", rand::random::<u64>());
    let event = json!({"appsyncRelayCheck": nonce, "via": "http"}).to_string();
    http_publish(config, addr, cookie, origin, channel, &event, timeout).await?;
    wait_for(&mut ws, timeout, |v| carries(v, &nonce))
        .await
        .map_err(|(d, _)| {
            (
                d,
                "the HTTP publish was accepted but not delivered: check the namespace's handlers"
                    .to_string(),
            )
        })?;
    report.pass(
        STEPS[4],
        "published one event over HTTP; the subscription received it",
    );
    *done = 5;

    send(&mut ws, &json!({"type": "unsubscribe", "id": SUBSCRIPTION})).await?;
    let v = wait_for(&mut ws, timeout, |v| {
        v["id"] == SUBSCRIPTION && v["type"] != "data"
    })
    .await?;
    if v["type"] != "unsubscribe_success" {
        return Err((
            format!("unsubscribe answered {}", peer_text(&v.to_string())),
            "see the relay's log".into(),
        ));
    }
    report.pass(STEPS[5], "unsubscribed");
    let _ = ws.close(None).await;
    Ok(())
}

fn carries(v: &Value, nonce: &str) -> bool {
    v["type"] == "data"
        && v["id"] == SUBSCRIPTION
        && v["event"].as_str().is_some_and(|e| e.contains(nonce))
}
