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

use super::report::Report;
use crate::config::Config;
use crate::origin::normalize;
use crate::server;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

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

/// What to do about a handshake the relay refused with `reason`.
fn fix_for(reason: &str, config: &Config) -> String {
    match reason {
        "no_session" => format!(
            "the cookies hold no Amplify session of app client {}: copy them after signing in with that client, or correct --cognito-client-id",
            config.client_id
        ),
        "ambiguous_session" => "the cookies hold several users' sessions: copy them from a browser with one sign-in".into(),
        "session_ended" => "Cognito refused the refresh token: sign in again and copy fresh cookies".into(),
        "refresh_unavailable" => "the token was due and Cognito could not renew it: see the cognito check".into(),
        "upstream_unauthorized" => format!(
            "AppSync refused the user's token: the API's connection auth mode must be Amazon Cognito user pools with the pool of {}",
            config.issuer
        ),
        r if r.starts_with("upstream_") => "the relay could not open AppSync's real-time connection: see appsync_realtime".into(),
        r if r.starts_with("token_") => "see the token check".into(),
        _ => "see the relay's log line for this handshake (APPSYNC_RELAY_LOG=debug)".into(),
    }
}

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

type StepError = (String, String);

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
    let mut ws = connect(config, addr, cookie, origin, timeout).await?;
    report.pass(
        STEPS[0],
        format!(
            "the relay accepted the sign-in and AppSync acknowledged the connection (via {addr})"
        ),
    );
    *done = 1;

    let sub = json!({"type": "subscribe", "id": SUBSCRIPTION, "channel": channel});
    send(&mut ws, &sub).await?;
    let v = wait_for(&mut ws, timeout, |v| v["id"] == SUBSCRIPTION).await?;
    if v["type"] != "subscribe_success" {
        return Err((
            format!("subscribing to {channel} was refused: {}", v["errors"]),
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
            format!("publishing to {channel} was refused: {}", v["errors"]),
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
    let v = wait_for(&mut ws, timeout, |v| v["id"] == SUBSCRIPTION).await?;
    if v["type"] != "unsubscribe_success" {
        return Err((
            format!("unsubscribe answered {v}"),
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

async fn connect(
    config: &Config,
    addr: std::net::SocketAddr,
    cookie: &str,
    origin: Option<&str>,
    timeout: Duration,
) -> Result<Ws, StepError> {
    let url = format!("ws://{addr}{}", config.realtime_path);
    let mut req = url
        .into_client_request()
        .map_err(|e| (e.to_string(), String::new()))?;
    let h = req.headers_mut();
    let bad = |what: &str| {
        (
            format!("the {what} cannot be sent as a header"),
            format!("check the {what} file's contents"),
        )
    };
    h.insert("cookie", cookie.parse().map_err(|_| bad("cookie"))?);
    if let Some(o) = origin {
        h.insert("origin", o.parse().map_err(|_| bad("origin"))?);
    }
    h.insert(
        "sec-websocket-protocol",
        crate::protocol::SUBPROTOCOL
            .parse()
            .map_err(|_| bad("subprotocol"))?,
    );
    let attempt = tokio::time::timeout(timeout, tokio_tungstenite::connect_async(req)).await;
    let mut ws = match attempt {
        Err(_) => {
            return Err((
                format!("no answer to the upgrade within {}s", timeout.as_secs()),
                "see appsync_realtime".into(),
            ))
        }
        Ok(Ok((ws, _))) => ws,
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => {
            let body: Value = resp
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            let reason = body["reason"].as_str().unwrap_or("unknown").to_string();
            return Err((
                format!(
                    "the relay refused the handshake: HTTP {} ({reason})",
                    resp.status().as_u16()
                ),
                fix_for(&reason, config),
            ));
        }
        Ok(Err(e)) => {
            return Err((
                format!("the upgrade failed: {e}"),
                "see the relay's log".into(),
            ))
        }
    };
    send(&mut ws, &json!({"type": "connection_init"})).await?;
    let v = wait_for(&mut ws, timeout, |v| v["type"] != "ka").await?;
    if v["type"] != "connection_ack" {
        return Err((
            format!("AppSync answered connection_init with {v}"),
            "see the relay's log".into(),
        ));
    }
    Ok(ws)
}

async fn send(ws: &mut Ws, v: &Value) -> Result<(), StepError> {
    ws.send(Message::Text(v.to_string().into()))
        .await
        .map_err(|e| {
            (
                format!("the socket failed: {e}"),
                "see the relay's log".into(),
            )
        })
}

/// The first JSON frame `want` accepts (it sees every frame on the way).
async fn wait_for(
    ws: &mut Ws,
    timeout: Duration,
    mut want: impl FnMut(&Value) -> bool,
) -> Result<Value, StepError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let next = tokio::time::timeout_at(deadline, ws.next()).await;
        let msg = match next {
            Err(_) => {
                return Err((
                    format!("no answer within {}s", timeout.as_secs()),
                    "see the relay's log (APPSYNC_RELAY_LOG=debug)".into(),
                ))
            }
            Ok(None) => return Err(("the socket ended".into(), "see the relay's log".into())),
            Ok(Some(Err(e))) => {
                return Err((
                    format!("the socket failed: {e}"),
                    "see the relay's log".into(),
                ))
            }
            Ok(Some(Ok(m))) => m,
        };
        match msg {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                if want(&v) {
                    return Ok(v);
                }
            }
            Message::Close(frame) => {
                let (code, reason) = frame
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                return Err((
                    format!("the relay closed the socket: {code} {reason}"),
                    "see the relay's log".into(),
                ));
            }
            _ => {}
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn http_publish(
    config: &Config,
    addr: std::net::SocketAddr,
    cookie: &str,
    origin: Option<&str>,
    channel: &str,
    event: &str,
    timeout: Duration,
) -> Result<(), StepError> {
    let http = crate::http_client::build(timeout);
    let body = json!({"channel": channel, "events": [event]}).to_string();
    let mut req = hyper::Request::post(format!("http://{addr}{}", config.events_path))
        .header("content-type", "application/json")
        .header("cookie", cookie);
    if let Some(o) = origin {
        req = req.header("origin", o);
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| (e.to_string(), "check the cookie file".to_string()))?;
    let fut = async {
        let resp = http.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>((
            status,
            serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null),
        ))
    };
    let (status, v) = match tokio::time::timeout(timeout, fut).await {
        Err(_) => {
            return Err((
                format!("no answer within {}s", timeout.as_secs()),
                "see appsync_http".into(),
            ))
        }
        Ok(Err(e)) => {
            return Err((
                format!("the request failed: {e}"),
                "see the relay's log".into(),
            ))
        }
        Ok(Ok(a)) => a,
    };
    if status != 200 {
        let reason = v["reason"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string());
        return Err((
            format!("HTTP publish answered {status} ({reason})"),
            fix_for(&reason, config),
        ));
    }
    if v["successful"].as_array().is_none_or(|s| s.is_empty()) {
        return Err((
            format!("HTTP publish accepted no event: {}", v["failed"]),
            "the channel's namespace must allow this user to publish".into(),
        ));
    }
    Ok(())
}
