//! The relay never stops relaying because a peer is slow in the other
//! direction, and a peer that stops reading cannot hold a connection (and
//! its timers) hostage.
//!
//! - Both legs writing at once while neither reads: an upstream that, like
//!   the project's emulator, writes its replies before it reads again, and
//!   a browser flooding publishes. A relay that stops reading both sides
//!   while one write is pending deadlocks with such an upstream.
//! - A browser that stops reading: disconnected after `--send-timeout`.
//! - A mass disconnect: hundreds of sockets cut at once clear promptly and
//!   a new session is served meanwhile.

mod support;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::*;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::Message;

/// An AppSync-shaped upstream that answers each `publish` with
/// `publish_success` and `fanout` `data` frames of 8 KB, written before it
/// reads the next frame (half duplex, as a simple server loop is). Its
/// receive buffer is small (a tiny send buffer would pace it at one
/// delayed ACK per chunk); the relay's own buffers (autotuned, megabytes on
/// loopback) still have to fill, so the load is sized to overflow them.
async fn half_duplex_upstream(fanout: usize) -> std::net::SocketAddr {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(64).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_half_duplex(stream, fanout));
        }
    });
    addr
}

/// Selects `aws-appsync-event-ws`, as AppSync does (auth is not checked here).
#[allow(clippy::result_large_err)] // tungstenite's callback signature
fn select(_: &Request, mut resp: Response) -> Result<Response, ErrorResponse> {
    resp.headers_mut().insert(
        "sec-websocket-protocol",
        "aws-appsync-event-ws".parse().unwrap(),
    );
    Ok(resp)
}

async fn serve_half_duplex(stream: TcpStream, fanout: usize) {
    // Small writes into tiny buffers: without this, Nagle and delayed ACKs
    // pace every round trip at 40 ms.
    let _ = stream.set_nodelay(true);
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, select).await else {
        return;
    };
    let mut sub_id = String::new();
    while let Some(Ok(msg)) = ws.next().await {
        let Message::Text(text) = msg else { continue };
        let frame: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let id = frame["id"].as_str().unwrap_or("").to_string();
        let replies: Vec<String> = match frame["type"].as_str() {
            Some("connection_init") => {
                vec![json!({"type":"connection_ack","connectionTimeoutMs":300000}).to_string()]
            }
            Some("subscribe") => {
                sub_id = id.clone();
                vec![json!({"type":"subscribe_success","id":id}).to_string()]
            }
            Some("publish") => {
                let mut r = vec![
                    json!({"type":"publish_success","id":id,"successful":[],"failed":[]})
                        .to_string(),
                ];
                let pad = "x".repeat(8 * 1024);
                for i in 0..fanout {
                    let event = json!({"n": i, "pad": pad}).to_string();
                    r.push(json!({"type":"data","id":sub_id,"event":event}).to_string());
                }
                r
            }
            _ => vec![],
        };
        for r in replies {
            if ws.send(Message::Text(r.into())).await.is_err() {
                return;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_legs_writing_at_once_while_neither_reads_keep_flowing() {
    let jwks = JwksServer::start(json!({"keys": [signing_key().jwk()]})).await;
    let upstream = half_duplex_upstream(4).await;
    let endpoint = format!("http://{upstream}/event");
    let relay = start_relay(relay_config(&endpoint, &jwks, &["--publish-rate", "0"])).await;
    let url = format!("ws://{}/event/realtime", relay.public_addr);
    let token = sign(&access_claims(&jwks.issuer()), signing_key());
    let ws = connect(&url, &amplify_cookies(Some(&token), None)).await;
    if let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = ws.get_ref() {
        tcp.set_nodelay(true).unwrap();
    }
    let (mut tx, mut rx) = ws.split();
    tx.send(Message::Text(
        json!({"type":"connection_init"}).to_string().into(),
    ))
    .await
    .unwrap();
    tx.send(Message::Text(
        amplify_subscribe("s1", "/default/flood").to_string().into(),
    ))
    .await
    .unwrap();

    // The browser writes as fast as it can and reads on another task, as a
    // browser's event loop does.
    const PUBLISHES: usize = 3000;
    let pad = "y".repeat(2048);
    let writer = tokio::spawn(async move {
        for i in 0..PUBLISHES {
            let event = json!({"i": i, "pad": pad});
            let frame = amplify_publish(&format!("p{i}"), "/default/flood", &[event]);
            if tx
                .send(Message::Text(frame.to_string().into()))
                .await
                .is_err()
            {
                return i;
            }
        }
        PUBLISHES
    });
    let (mut acks, mut data) = (0usize, 0usize);
    let deadline = Instant::now() + Duration::from_secs(30);
    while acks < PUBLISHES || data < PUBLISHES * 4 {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                match v["type"].as_str() {
                    Some("publish_success") => acks += 1,
                    Some("data") => data += 1,
                    _ => {}
                }
            }
            Ok(Some(Ok(_))) => {}
            other => panic!(
                "relay stopped relaying after {acks} acks and {data} data frames of {PUBLISHES}: {other:?}"
            ),
        }
    }
    assert_eq!(writer.await.unwrap(), PUBLISHES);
}

async fn metric(relay: &appsync_relay::server::RelayHandle, line_prefix: &str) -> f64 {
    let body = http(relay.admin_addr, "GET", "/metrics", &[], "").await.2;
    body.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_that_stops_reading_is_disconnected_after_the_send_timeout() {
    let stack = Stack::start_with(&["--send-timeout", "2", "--publish-rate", "0"]).await;
    let url = stack.realtime_url();
    let cookies = stack.good_cookies();
    // The stalled browser: subscribes, then never reads again.
    let mut stalled = connect(&url, &cookies).await;
    init(&mut stalled).await;
    send_json(&mut stalled, amplify_subscribe("s", "/default/big")).await;
    assert_eq!(recv_json(&mut stalled).await["type"], "subscribe_success");

    let mut publisher = connect(&url, &cookies).await;
    init(&mut publisher).await;
    let event = json!({"pad": "x".repeat(200_000)});
    let started = Instant::now();
    let mut ended = false;
    for i in 0..200 {
        send_json(
            &mut publisher,
            amplify_publish(
                &format!("p{i}"),
                "/default/big",
                std::slice::from_ref(&event),
            ),
        )
        .await;
        let _ = recv_json(&mut publisher).await;
        if metric(
            &stack.relay,
            "appsync_relay_limits_hit_total{limit=\"send_timeout\"}",
        )
        .await
            >= 1.0
        {
            ended = true;
            break;
        }
        if started.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    assert!(
        ended,
        "a browser that stopped reading still held its connection after {:?}",
        started.elapsed()
    );
    // The publisher's own connection is unaffected.
    send_json(
        &mut publisher,
        amplify_publish("after", "/default/other", &[json!(1)]),
    )
    .await;
    assert_eq!(recv_json(&mut publisher).await["type"], "publish_success");
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mass_disconnect_clears_promptly_and_new_sessions_are_served_meanwhile() {
    let stack = Stack::start_with(&[
        "--max-connections-per-user",
        "0",
        "--max-connections-per-ip",
        "0",
    ])
    .await;
    let url = stack.realtime_url();
    let cookies = stack.good_cookies();
    const N: usize = 300;
    let mut sockets = Vec::with_capacity(N);
    for i in 0..N {
        let mut ws = connect(&url, &cookies).await;
        init(&mut ws).await;
        send_json(
            &mut ws,
            amplify_subscribe(&format!("s{i}"), "/default/blip"),
        )
        .await;
        assert_eq!(recv_json(&mut ws).await["type"], "subscribe_success");
        sockets.push(ws);
    }
    // A network blip: every socket reset at once, no close frames.
    for ws in sockets.drain(..) {
        if let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = ws.get_ref() {
            // Linger 0: the drop sends RST at once (it does not block).
            #[allow(deprecated)]
            let _ = tcp.set_linger(Some(Duration::ZERO));
        }
        drop(ws);
    }
    let cut = Instant::now();
    // A new session is served while the old ones are torn down.
    let mut fresh = connect(&url, &cookies).await;
    init(&mut fresh).await;
    send_json(&mut fresh, amplify_subscribe("n", "/default/after")).await;
    assert_eq!(recv_json(&mut fresh).await["type"], "subscribe_success");
    send_json(
        &mut fresh,
        amplify_publish("p", "/default/after", &[json!(1)]),
    )
    .await;
    let mut got_data = false;
    for _ in 0..2 {
        if recv_json(&mut fresh).await["type"] == "data" {
            got_data = true;
        }
    }
    assert!(got_data, "the new session got no data");
    let served = cut.elapsed();
    // Every cut socket is gone within a few seconds.
    while metric(&stack.relay, "appsync_relay_connections_active").await > 1.0 {
        assert!(
            cut.elapsed() < Duration::from_secs(10),
            "{} connections still active {:?} after the blip",
            metric(&stack.relay, "appsync_relay_connections_active").await,
            cut.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "mass disconnect of {N}: new session served after {served:?}, all cleared after {:?}",
        cut.elapsed()
    );
}

/// The relay binary with its stderr on a pipe that nobody reads after the
/// start-up line, as under a supervisor that stopped draining it. Logging
/// must drop lines rather than block the threads that relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_pipe_nobody_reads_does_not_stall_the_relay() {
    use std::io::BufRead;
    let jwks = JwksServer::start(json!({"keys": [signing_key().jwk()]})).await;
    let emulator = start_emulator(&jwks, CLIENT_ID).await;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_appsync-relay"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--appsync-http-endpoint",
            &emulator.http_endpoint(),
            "--cognito-user-pool-id",
            POOL_ID,
            "--cognito-client-id",
            CLIENT_ID,
            "--cognito-issuer",
            &jwks.issuer(),
            "--cognito-jwks-url",
            &jwks.jwks_url(),
            "--allowed-origin",
            ORIGIN,
            "--cognito-endpoint",
            "http://127.0.0.1:9/",
            "--log-format",
            "json",
        ])
        .env("APPSYNC_RELAY_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop_std();
    let stderr = child.0.stderr.take().unwrap();
    let mut lines = std::io::BufReader::new(stderr).lines();
    let public = loop {
        let line = lines.next().expect("a log line").unwrap();
        let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        if v["message"] == "appsync-relay listening" {
            break v["public"].as_str().expect("public address").to_string();
        }
    };
    // From here on the pipe is never read; it holds 64 KiB.
    let public: std::net::SocketAddr = public.parse().unwrap();
    let url = format!("ws://{public}/event/realtime");
    let wait_ready = Instant::now();
    loop {
        if let Attempt::Open(..) = try_connect(
            &url,
            &Upgrade::browser(&amplify_cookies(
                Some(&sign(&access_claims(&jwks.issuer()), signing_key())),
                None,
            )),
        )
        .await
        {
            break;
        }
        assert!(
            wait_ready.elapsed() < Duration::from_secs(10),
            "relay never ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ~2 000 refused handshakes: one info line each, far more than the pipe holds.
    for _ in 0..2000 {
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            http(public, "GET", "/event/realtime", &[], ""),
        )
        .await;
        assert!(
            r.is_ok(),
            "a refused handshake hung: the relay is blocked on its log pipe"
        );
    }
    let token = sign(&access_claims(&jwks.issuer()), signing_key());
    let served = tokio::time::timeout(Duration::from_secs(5), async {
        let mut ws = connect(&url, &amplify_cookies(Some(&token), None)).await;
        init(&mut ws).await;
        send_json(&mut ws, amplify_subscribe("s", "/default/logs")).await;
        recv_json(&mut ws).await
    })
    .await
    .expect("a new session hung: the relay is blocked on its log pipe");
    assert_eq!(served["type"], "subscribe_success");
    drop(lines);
}

/// Kills the child when the test ends, whichever way.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

trait KillOnDropExt {
    fn kill_on_drop_std(&mut self) -> KillOnDrop;
}

impl KillOnDropExt for std::process::Command {
    fn kill_on_drop_std(&mut self) -> KillOnDrop {
        KillOnDrop(self.spawn().expect("spawn the relay"))
    }
}

/// An upstream whose first connection acknowledges `connection_init`, then
/// swallows everything and drops the TCP connection on the first publish;
/// later connections answer everything.
async fn forgetful_upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((stream, _)) = listener.accept().await {
            let mute = std::mem::replace(&mut first, false);
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, select).await else {
                    return;
                };
                while let Some(Ok(Message::Text(text))) = ws.next().await {
                    let frame: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    let id = frame["id"].clone();
                    let reply = match frame["type"].as_str() {
                        Some("connection_init") => {
                            json!({"type":"connection_ack","connectionTimeoutMs":300000})
                        }
                        Some("publish") if mute => return, // dropped, unanswered
                        _ if mute => continue,
                        Some("subscribe") => json!({"type":"subscribe_success","id":id}),
                        Some("publish") => {
                            json!({"type":"publish_success","id":id,"successful":[],"failed":[]})
                        }
                        _ => continue,
                    };
                    if ws
                        .send(Message::Text(reply.to_string().into()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn requests_in_flight_when_upstream_drops_get_exactly_one_answer() {
    let jwks = JwksServer::start(json!({"keys": [signing_key().jwk()]})).await;
    let upstream = forgetful_upstream().await;
    let endpoint = format!("http://{upstream}/event");
    let relay = start_relay(relay_config(&endpoint, &jwks, &[])).await;
    let url = format!("ws://{}/event/realtime", relay.public_addr);
    let token = sign(&access_claims(&jwks.issuer()), signing_key());
    let mut ws = connect(&url, &amplify_cookies(Some(&token), None)).await;
    init(&mut ws).await;
    send_json(&mut ws, amplify_subscribe("s1", "/default/x")).await;
    send_json(&mut ws, amplify_publish("p1", "/default/x", &[json!(1)])).await;
    // The upstream dropped with both unanswered; the relay re-dials.
    let mut answers: Vec<(String, String)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while answers.len() < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] != "ka" {
                    answers.push((
                        v["type"].as_str().unwrap_or("").into(),
                        v["id"].as_str().unwrap_or("").into(),
                    ));
                }
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("no answer for requests in flight, got {answers:?} then {other:?}"),
        }
    }
    answers.sort();
    assert_eq!(
        answers,
        [
            ("publish_error".to_string(), "p1".to_string()),
            ("subscribe_success".to_string(), "s1".to_string()),
        ]
    );
    // Exactly one each: nothing more arrives, and the socket works.
    send_json(&mut ws, amplify_publish("p2", "/default/x", &[json!(2)])).await;
    let v = recv_json(&mut ws).await;
    assert_eq!(
        (v["type"].as_str(), v["id"].as_str()),
        (Some("publish_success"), Some("p2"))
    );
}
