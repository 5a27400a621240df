//! The AppSync Events emulator, driven over real sockets with
//! tokio-tungstenite as the client. Every test binds 127.0.0.1:0 and bounds
//! each await with a timeout.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use appsync_relay::emulator::{
    spawn, EmulatorAuth, EmulatorConfig, EmulatorHandle, TokenVerifier, VerifyFuture,
};
use appsync_relay::protocol::encode_header_subprotocol;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::SEC_WEBSOCKET_PROTOCOL;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const KEY: &str = "emulator-test-key";
const HOST: &str = "api.example.test";
const WAIT: Duration = Duration::from_secs(5);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn within<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .expect("timed out waiting")
}

async fn start() -> EmulatorHandle {
    start_with(|_| {}).await
}

async fn start_with(adjust: impl FnOnce(&mut EmulatorConfig)) -> EmulatorHandle {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut cfg = EmulatorConfig::new(EmulatorAuth::ApiKey(KEY.into())).with_namespaces([
        "ns",
        "a",
        "elsewhere",
    ]);
    cfg.http_host = Some(HOST.into());
    adjust(&mut cfg);
    spawn(listener, cfg).await
}

fn api_key_auth(key: &str) -> Map<String, Value> {
    let Value::Object(auth) = json!({"host": HOST, "x-api-key": key}) else {
        unreachable!()
    };
    auth
}

fn header_protocol(key: &str) -> String {
    encode_header_subprotocol(&api_key_auth(key))
}

/// Opens a WebSocket offering exactly `protocols` (if any).
async fn connect_with(emu: &EmulatorHandle, protocols: Option<&str>) -> Result<Ws, WsError> {
    let mut req = emu.realtime_endpoint().into_client_request().unwrap();
    if let Some(protocols) = protocols {
        req.headers_mut().insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_str(protocols).unwrap(),
        );
    }
    within(tokio_tungstenite::connect_async(req))
        .await
        .map(|(ws, _)| ws)
}

/// Connects with a valid API key and completes connection_init/ack.
async fn connect(emu: &EmulatorHandle) -> Ws {
    let protocols = format!("aws-appsync-event-ws, {}", header_protocol(KEY));
    let mut ws = connect_with(emu, Some(&protocols)).await.unwrap();
    send(&mut ws, json!({"type": "connection_init"})).await;
    assert_eq!(recv(&mut ws).await["type"], "connection_ack");
    ws
}

async fn send(ws: &mut Ws, frame: Value) {
    within(ws.send(Message::Text(frame.to_string().into())))
        .await
        .unwrap();
}

async fn recv_message(ws: &mut Ws) -> Message {
    within(ws.next())
        .await
        .expect("stream ended")
        .expect("read failed")
}

/// The next JSON frame, skipping `ka`.
async fn recv(ws: &mut Ws) -> Value {
    loop {
        match recv_message(ws).await {
            Message::Text(text) => {
                let v: Value = serde_json::from_str(text.as_str()).unwrap();
                if v["type"] != "ka" {
                    return v;
                }
            }
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Reads until a close frame, then keeps reading so tungstenite sends our
/// reply and the close handshake completes; returns the code.
async fn recv_close_code(ws: &mut Ws) -> u16 {
    let code = loop {
        match recv_message(ws).await {
            Message::Close(Some(frame)) => break u16::from(frame.code),
            Message::Close(None) => panic!("close frame without a code"),
            _ => {}
        }
    };
    within(async { while let Some(Ok(_)) = ws.next().await {} }).await;
    code
}

async fn subscribe(ws: &mut Ws, id: &str, channel: &str) -> Value {
    send(
        ws,
        json!({"type": "subscribe", "id": id, "channel": channel, "authorization": api_key_auth(KEY)}),
    )
    .await;
    recv(ws).await
}

async fn publish(ws: &mut Ws, id: &str, channel: &str, events: Value) -> Value {
    send(
        ws,
        json!({"type": "publish", "id": id, "channel": channel, "events": events, "authorization": api_key_auth(KEY)}),
    )
    .await;
    recv(ws).await
}

fn error_type(frame: &Value) -> &str {
    frame["errors"][0]["errorType"].as_str().unwrap_or_default()
}

/// A minimal HTTP/1.1 exchange; returns status and JSON body.
async fn http(emu: &EmulatorHandle, head: &str, body: &str) -> (u16, Value) {
    let mut stream = within(TcpStream::connect(emu.local_addr())).await.unwrap();
    let request = format!(
        "{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    within(stream.write_all(request.as_bytes())).await.unwrap();
    let mut response = Vec::new();
    within(stream.read_to_end(&mut response)).await.unwrap();
    let response = String::from_utf8(response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

async fn http_publish(emu: &EmulatorHandle, key: &str, body: &Value) -> (u16, Value) {
    let head = format!(
        "POST /event HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\nx-api-key: {key}"
    );
    http(emu, &head, &body.to_string()).await
}

fn http_status(result: Result<Ws, WsError>) -> (u16, Value) {
    match result {
        Err(WsError::Http(response)) => {
            let body = response
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            (response.status().as_u16(), body)
        }
        Err(other) => panic!("expected an HTTP rejection, got {other:?}"),
        Ok(_) => panic!("expected an HTTP rejection, got a 101"),
    }
}

/// Waits for a condition the emulator reaches asynchronously (a session
/// task deregistering after its socket closed).
async fn eventually(mut condition: impl FnMut() -> bool) {
    within(async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

// === handshake ===

#[tokio::test]
async fn handshake_without_event_subprotocol_is_400() {
    let emu = start().await;
    let (status, body) = http_status(connect_with(&emu, Some(&header_protocol(KEY))).await);
    assert_eq!(status, 400);
    assert_eq!(body["errors"][0]["errorType"], "BadRequestException");
    assert_eq!(emu.connection_count(), 0);
}

#[tokio::test]
async fn handshake_without_or_with_bad_header_is_401() {
    let emu = start().await;
    let cases = [
        "aws-appsync-event-ws".to_string(),
        "aws-appsync-event-ws, header-!!notbase64".to_string(),
        format!("aws-appsync-event-ws, {}", header_protocol("wrong-key")),
        format!(
            "aws-appsync-event-ws, {}",
            encode_header_subprotocol(
                json!({"host": "evil.example", "x-api-key": KEY})
                    .as_object()
                    .unwrap()
            )
        ),
    ];
    for protocols in cases {
        let (status, body) = http_status(connect_with(&emu, Some(&protocols)).await);
        assert_eq!(status, 401, "{protocols}");
        assert_eq!(body["errors"][0]["errorType"], "UnauthorizedException");
    }
    assert_eq!(emu.connection_count(), 0);
}

#[tokio::test]
async fn plain_get_is_400_and_other_paths_are_404() {
    let emu = start().await;
    let (status, _) = http(&emu, "GET /event/realtime HTTP/1.1\r\nHost: x", "").await;
    assert_eq!(status, 400);
    let (status, _) = http(&emu, "GET /graphql HTTP/1.1\r\nHost: x", "").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn connection_init_is_acked_with_appsync_timeout() {
    let emu = start().await;
    let protocols = format!("aws-appsync-event-ws, {}", header_protocol(KEY));
    let mut ws = connect_with(&emu, Some(&protocols)).await.unwrap();
    send(&mut ws, json!({"type": "connection_init"})).await;
    assert_eq!(
        recv(&mut ws).await,
        json!({"type": "connection_ack", "connectionTimeoutMs": 300000})
    );
    assert_eq!(emu.connection_count(), 1);
}

#[tokio::test]
async fn keepalives_follow_the_ack() {
    let emu = start_with(|c| c.ka_interval = Duration::from_millis(20)).await;
    let mut ws = connect(&emu).await;
    for _ in 0..2 {
        let Message::Text(text) = recv_message(&mut ws).await else {
            panic!("expected ka")
        };
        assert_eq!(text.as_str(), r#"{"type":"ka"}"#);
    }
}

// === subscribe / publish ===

#[tokio::test]
async fn publish_fans_out_to_wildcard_subscriber_on_another_connection() {
    let emu = start().await;
    let mut sub = connect(&emu).await;
    let mut other = connect(&emu).await;
    let mut publisher = connect(&emu).await;

    // Amplify-shaped: a duplicate `payload` object rides along.
    send(
        &mut sub,
        json!({"type": "subscribe", "id": "s-1", "channel": "/ns/*",
               "authorization": api_key_auth(KEY),
               "payload": {"channel": "/ns/*", "extensions": {"authorization": api_key_auth(KEY)}}}),
    )
    .await;
    assert_eq!(
        recv(&mut sub).await,
        json!({"type": "subscribe_success", "id": "s-1"})
    );
    assert_eq!(
        subscribe(&mut other, "o-1", "/elsewhere/x").await["type"],
        "subscribe_success"
    );
    assert_eq!(emu.subscription_count(), 2);

    let ack = publish(&mut publisher, "p-1", "/ns/a/b", json!(["{\"n\":1}", "2"])).await;
    assert_eq!(ack["type"], "publish_success");
    assert_eq!(ack["id"], "p-1");
    assert_eq!(ack["failed"], json!([]));
    let successful = ack["successful"].as_array().unwrap();
    assert_eq!(successful.len(), 2);
    assert_eq!(successful[1]["index"], 1);
    assert_eq!(successful[0]["identifier"].as_str().unwrap().len(), 36);

    assert_eq!(
        recv(&mut sub).await,
        json!({"type": "data", "id": "s-1", "event": "{\"n\":1}"})
    );
    assert_eq!(
        recv(&mut sub).await,
        json!({"type": "data", "id": "s-1", "event": "2"})
    );

    // The non-matching subscriber got nothing: its next data frame is the
    // one published to its own channel.
    publish(&mut publisher, "p-2", "/elsewhere/x", json!(["3"])).await;
    assert_eq!(
        recv(&mut other).await,
        json!({"type": "data", "id": "o-1", "event": "3"})
    );
}

#[tokio::test]
async fn http_publish_fans_out_to_websocket_subscribers() {
    let emu = start().await;
    let mut sub = connect(&emu).await;
    subscribe(&mut sub, "s1", "/ns/a").await;

    let (status, body) = http_publish(
        &emu,
        KEY,
        &json!({"channel": "/ns/a", "events": ["{\"x\":true}"]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["failed"], json!([]));
    assert_eq!(body["successful"][0]["index"], 0);
    assert_eq!(
        recv(&mut sub).await,
        json!({"type": "data", "id": "s1", "event": "{\"x\":true}"})
    );
}

/// AWS's own tutorial (create-event-api-tutorial, step 3) subscribes to
/// `/default/*` and receives an event published to
/// `/default/greetings/tutorial`: a wildcard covers every depth below it,
/// not just one more segment; it does not cover its own prefix.
#[tokio::test]
async fn a_wildcard_receives_events_at_any_depth_below_it() {
    let emu = start_with(|c| c.namespaces = vec!["default".into()]).await;
    let mut sub = connect(&emu).await;
    let mut publisher = connect(&emu).await;
    assert_eq!(
        subscribe(&mut sub, "s1", "/default/*").await["type"],
        "subscribe_success"
    );
    for (i, channel) in [
        "/default/greetings",
        "/default/greetings/tutorial",
        "/default/a/b/c/d",
    ]
    .into_iter()
    .enumerate()
    {
        let event = format!("{i}");
        let ack = publish(&mut publisher, &format!("p{i}"), channel, json!([event])).await;
        assert_eq!(ack["type"], "publish_success", "{channel}: {ack}");
        assert_eq!(
            recv(&mut sub).await,
            json!({"type": "data", "id": "s1", "event": event}),
            "{channel}"
        );
    }
    // `/default/greetings/*` does not cover `/default/greetings` itself.
    let mut narrow = connect(&emu).await;
    subscribe(&mut narrow, "n1", "/default/greetings/*").await;
    publish(
        &mut publisher,
        "q1",
        "/default/greetings",
        json!(["\"top\""]),
    )
    .await;
    publish(
        &mut publisher,
        "q2",
        "/default/greetings/x",
        json!(["\"below\""]),
    )
    .await;
    assert_eq!(
        recv(&mut narrow).await,
        json!({"type": "data", "id": "n1", "event": "\"below\""})
    );
}

/// Five events of 240 KiB whose JSON doubles when written once more as a
/// string (a string of escaped backslashes) are a legal publish: accepted
/// over the WebSocket and over HTTP at the emulator's defaults.
#[tokio::test]
async fn five_maximal_events_escaped_at_worst_are_a_legal_publish() {
    use appsync_relay::protocol::{MAX_EVENTS_PER_PUBLISH, MAX_EVENT_BYTES};
    let emu = start().await;
    let event = format!("\"{}\"", "\\\\".repeat((MAX_EVENT_BYTES - 2) / 2));
    assert!(event.len() <= MAX_EVENT_BYTES);
    let events = json!(vec![event; MAX_EVENTS_PER_PUBLISH]);
    let frame_len = events.to_string().len();
    assert!(
        frame_len > 2 * MAX_EVENTS_PER_PUBLISH * (MAX_EVENT_BYTES - 2),
        "{frame_len}"
    );
    let mut ws = connect(&emu).await;
    let ack = publish(&mut ws, "p", "/ns/a", events.clone()).await;
    assert_eq!(
        ack["type"],
        "publish_success",
        "{}",
        &ack.to_string()[..200.min(ack.to_string().len())]
    );
    let (status, body) =
        http_publish(&emu, KEY, &json!({"channel": "/ns/a", "events": events})).await;
    assert_eq!(status, 200, "{body}");
    // One event over 240 KiB is not.
    let over = format!("\"{}\"", "x".repeat(MAX_EVENT_BYTES));
    let ack = publish(&mut ws, "q", "/ns/a", json!([over])).await;
    assert_eq!(ack["type"], "publish_error");
}

#[tokio::test]
async fn http_publish_rejects_bad_auth_and_bad_bodies() {
    let emu = start().await;
    let good = json!({"channel": "/ns/a", "events": ["1"]});
    let (status, body) = http_publish(&emu, "wrong", &good).await;
    assert_eq!(status, 401);
    assert_eq!(body["errors"][0]["errorType"], "UnauthorizedException");

    for bad in [
        json!({"channel": "/ns/*", "events": ["1"]}),
        json!({"channel": "/ns/a", "events": ["1", "2", "3", "4", "5", "6"]}),
        json!({"channel": "/ns/a", "events": [{"not": "a string"}]}),
        json!({"channel": "/ns/a", "events": ["not json"]}),
        json!({"channel": "no spaces allowed", "events": ["1"]}),
        json!({"events": ["1"]}),
    ] {
        let (status, body) = http_publish(&emu, KEY, &bad).await;
        assert_eq!(status, 400, "{bad}");
        assert_eq!(body["errors"][0]["errorType"], "BadRequestException");
    }

    let (status, _) = http(
        &emu,
        &format!(
            "POST /event HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: text/plain\r\nx-api-key: {KEY}"
        ),
        &good.to_string(),
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn publish_to_wildcard_or_too_many_events_is_publish_error() {
    let emu = start().await;
    let mut ws = connect(&emu).await;
    let reply = publish(&mut ws, "p1", "/ns/*", json!(["1"])).await;
    assert_eq!(reply["type"], "publish_error");
    assert_eq!(reply["id"], "p1");
    assert_eq!(error_type(&reply), "BadRequestException");

    let reply = publish(
        &mut ws,
        "p2",
        "/ns/a",
        json!(["1", "2", "3", "4", "5", "6"]),
    )
    .await;
    assert_eq!(reply["type"], "publish_error");
    assert_eq!(error_type(&reply), "BadRequestException");

    let reply = publish(&mut ws, "p3", "/ns/a", json!([])).await;
    assert_eq!(reply["type"], "publish_error");

    let reply = publish(&mut ws, "p4", "/ns/a", json!(["1", "2", "3", "4", "5"])).await;
    assert_eq!(reply["type"], "publish_success");
}

#[tokio::test]
async fn bad_duplicate_or_malformed_subscriptions_are_subscribe_error() {
    let emu = start().await;
    let mut ws = connect(&emu).await;

    let reply = subscribe(&mut ws, "has space", "/ns/a").await;
    assert_eq!(reply["type"], "subscribe_error");
    assert_eq!(error_type(&reply), "BadRequestException");

    let reply = subscribe(&mut ws, &"x".repeat(129), "/ns/a").await;
    assert_eq!(reply["type"], "subscribe_error");

    for channel in ["/ns/*/a", "/*", "/a/b/c/d/e/f", "/ns/bad_seg", "/ns/-a", ""] {
        let reply = subscribe(&mut ws, "c1", channel).await;
        assert_eq!(reply["type"], "subscribe_error", "{channel}");
        assert_eq!(reply["id"], "c1");
        assert_eq!(error_type(&reply), "BadRequestException");
    }

    assert_eq!(
        subscribe(&mut ws, "dup", "/ns/a").await["type"],
        "subscribe_success"
    );
    let reply = subscribe(&mut ws, "dup", "/ns/b").await;
    assert_eq!(reply["type"], "subscribe_error");
    assert_eq!(reply["id"], "dup");
    assert_eq!(emu.subscription_count(), 1);
}

#[tokio::test]
async fn message_authorization_is_checked_on_every_subscribe_and_publish() {
    let emu = start().await;
    let mut ws = connect(&emu).await;

    send(
        &mut ws,
        json!({"type": "subscribe", "id": "s1", "channel": "/ns/a", "authorization": api_key_auth("wrong")}),
    )
    .await;
    let reply = recv(&mut ws).await;
    assert_eq!(reply["type"], "subscribe_error");
    assert_eq!(error_type(&reply), "UnauthorizedException");

    // Only the top-level authorization counts, not Amplify's payload copy.
    send(
        &mut ws,
        json!({"type": "subscribe", "id": "s2", "channel": "/ns/a",
               "payload": {"extensions": {"authorization": api_key_auth(KEY)}}}),
    )
    .await;
    assert_eq!(error_type(&recv(&mut ws).await), "UnauthorizedException");

    send(
        &mut ws,
        json!({"type": "publish", "id": "p1", "channel": "/ns/a", "events": ["1"],
               "authorization": {"x-api-key": KEY}}),
    )
    .await;
    let reply = recv(&mut ws).await;
    assert_eq!(reply["type"], "publish_error");
    assert_eq!(
        error_type(&reply),
        "UnauthorizedException",
        "host is required"
    );
    assert_eq!(emu.subscription_count(), 0);
}

/// AppSync only serves channels of a namespace defined on the API: the
/// others are unauthorized for subscribe and publish, over WebSocket and
/// HTTP. Before the fix the emulator accepted any namespace.
#[tokio::test]
async fn channels_outside_every_defined_namespace_are_unauthorized() {
    let emu = start().await;
    let mut ws = connect(&emu).await;
    let frame = subscribe(&mut ws, "s1", "/undefined/room").await;
    assert_eq!(frame["type"], "subscribe_error");
    assert_eq!(error_type(&frame), "UnauthorizedException");
    let frame = subscribe(&mut ws, "s2", "/undefined/*").await;
    assert_eq!(error_type(&frame), "UnauthorizedException");
    let frame = publish(&mut ws, "p1", "/undefined/room", json!(["{}"])).await;
    assert_eq!(frame["type"], "publish_error");
    assert_eq!(error_type(&frame), "UnauthorizedException");
    let (status, body) = http_publish(
        &emu,
        KEY,
        &json!({"channel": "/undefined/room", "events": ["{}"]}),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(body["errors"][0]["errorType"], "UnauthorizedException");
    // The API's own namespaces still work, and `default` is not implied
    // once the namespaces are given.
    assert_eq!(
        subscribe(&mut ws, "s3", "/ns/room").await["type"],
        "subscribe_success"
    );
    let frame = subscribe(&mut ws, "s4", "/default/room").await;
    assert_eq!(error_type(&frame), "UnauthorizedException");
}

#[tokio::test]
async fn unsubscribe_known_and_unknown_ids() {
    let emu = start().await;
    let mut ws = connect(&emu).await;
    subscribe(&mut ws, "s1", "/ns/a").await;
    send(&mut ws, json!({"type": "unsubscribe", "id": "s1"})).await;
    assert_eq!(
        recv(&mut ws).await,
        json!({"type": "unsubscribe_success", "id": "s1"})
    );
    send(&mut ws, json!({"type": "unsubscribe", "id": "s1"})).await;
    let reply = recv(&mut ws).await;
    assert_eq!(reply["type"], "unsubscribe_error");
    assert_eq!(reply["id"], "s1");
    assert!(reply["errors"].is_array());

    // The id is free again once unsubscribed.
    assert_eq!(
        subscribe(&mut ws, "s1", "/ns/a").await["type"],
        "subscribe_success"
    );
}

#[tokio::test]
async fn unknown_types_and_malformed_json_get_error_frames() {
    let emu = start().await;
    let mut ws = connect(&emu).await;
    send(&mut ws, json!({"type": "start", "id": "x"})).await;
    let reply = recv(&mut ws).await;
    assert_eq!(reply["type"], "error");
    assert_eq!(error_type(&reply), "UnknownOperationError");

    within(ws.send(Message::Text("{not json".into())))
        .await
        .unwrap();
    let reply = recv(&mut ws).await;
    assert_eq!(reply["type"], "error");
    assert!(reply["errors"][0]["errorType"].is_string());

    send(&mut ws, json!(["an", "array"])).await;
    assert_eq!(recv(&mut ws).await["type"], "error");

    // The connection is still usable.
    assert_eq!(
        subscribe(&mut ws, "s1", "/ns/a").await["type"],
        "subscribe_success"
    );
}

// === closing ===

#[tokio::test]
async fn binary_frame_closes_with_1003() {
    let emu = start().await;
    let mut ws = connect(&emu).await;
    within(ws.send(Message::Binary(vec![1, 2, 3].into())))
        .await
        .unwrap();
    assert_eq!(recv_close_code(&mut ws).await, 1003);
    eventually(|| emu.connection_count() == 0).await;
}

#[tokio::test]
async fn oversized_message_closes_with_1009() {
    let emu = start_with(|c| c.max_message_bytes = 1024).await;
    let mut ws = connect(&emu).await;
    let events = json!([format!("\"{}\"", "x".repeat(2000))]);
    send(
        &mut ws,
        json!({"type": "publish", "id": "p", "channel": "/ns/a", "events": events, "authorization": api_key_auth(KEY)}),
    )
    .await;
    assert_eq!(recv_close_code(&mut ws).await, 1009);
}

#[tokio::test]
async fn close_all_sends_the_given_code_and_abort_all_sends_none() {
    let emu = start().await;
    let mut a = connect(&emu).await;
    let mut b = connect(&emu).await;
    assert_eq!(emu.connection_count(), 2);
    emu.close_all(4000);
    assert_eq!(recv_close_code(&mut a).await, 4000);
    assert_eq!(recv_close_code(&mut b).await, 4000);
    eventually(|| emu.connection_count() == 0).await;

    let mut c = connect(&emu).await;
    emu.abort_all();
    match within(c.next()).await {
        None | Some(Err(_)) => {}
        Some(Ok(Message::Close(frame))) => panic!("abort sent a close frame: {frame:?}"),
        Some(Ok(other)) => panic!("unexpected frame {other:?}"),
    }
    eventually(|| emu.connection_count() == 0).await;
}

#[tokio::test]
async fn slow_subscriber_is_dropped_instead_of_blocking_the_publisher() {
    let emu = start_with(|c| c.outbound_queue = 1).await;
    let mut slow = connect(&emu).await;
    subscribe(&mut slow, "s", "/ns/a").await;
    let mut publisher = connect(&emu).await;
    let ack = publish(
        &mut publisher,
        "p",
        "/ns/a",
        json!(["1", "2", "3", "4", "5"]),
    )
    .await;
    assert_eq!(ack["type"], "publish_success");
    assert_eq!(
        recv_close_code(&mut slow).await,
        appsync_relay::emulator::SLOW_CONSUMER_CLOSE_CODE
    );
}

#[tokio::test]
async fn shutdown_closes_connections_with_1001() {
    let emu = start().await;
    let mut ws = connect(&emu).await;
    let reader = tokio::spawn(async move { recv_close_code(&mut ws).await });
    within(emu.shutdown()).await;
    assert_eq!(within(reader).await.unwrap(), u16::from(CloseCode::Away));
}

// === introspection ===

#[tokio::test]
async fn seen_authorizations_records_every_credential_checked() {
    let emu = start().await;
    let mut ws = connect(&emu).await;
    subscribe(&mut ws, "s1", "/ns/a").await;
    send(
        &mut ws,
        json!({"type": "publish", "id": "p1", "channel": "/ns/a", "events": ["1"],
               "authorization": {"host": HOST, "x-api-key": "placeholder", "Authorization": "eyJ.fake"}}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "publish_error");
    http_publish(&emu, KEY, &json!({"channel": "/ns/a", "events": ["1"]})).await;
    assert_eq!(
        emu.seen_authorizations(),
        vec![KEY, KEY, "eyJ.fake", "placeholder", KEY]
    );
    emu.clear_seen_authorizations();
    assert!(emu.seen_authorizations().is_empty());
}

// === Cognito mode (with a fake verifier; the relay's tests cover real JWTs) ===

struct FakeVerifier;

impl TokenVerifier for FakeVerifier {
    fn verify_token<'a>(&'a self, token: &'a str) -> VerifyFuture<'a> {
        Box::pin(async move {
            if token == "good.jwt.sig" {
                Ok(())
            } else {
                Err("Token has expired.".into())
            }
        })
    }
}

#[tokio::test]
async fn cognito_mode_wants_the_jwt_in_authorization() {
    let emu = start_with(|c| c.auth = EmulatorAuth::Cognito(Arc::new(FakeVerifier))).await;
    let jwt_header = |token: &str| {
        let auth = json!({"host": HOST, "Authorization": token});
        encode_header_subprotocol(auth.as_object().unwrap())
    };
    let ok = format!("aws-appsync-event-ws, {}", jwt_header("good.jwt.sig"));
    let mut ws = connect_with(&emu, Some(&ok)).await.unwrap();

    let expired = format!("aws-appsync-event-ws, {}", jwt_header("old.jwt.sig"));
    let (status, body) = http_status(connect_with(&emu, Some(&expired)).await);
    assert_eq!(status, 401);
    assert_eq!(body["errors"][0]["message"], "Token has expired.");

    // An API key is not accepted when the API wants Cognito.
    let reply = subscribe(&mut ws, "s1", "/ns/a").await;
    assert_eq!(error_type(&reply), "UnauthorizedException");
    send(
        &mut ws,
        json!({"type": "subscribe", "id": "s2", "channel": "/ns/a",
               "authorization": {"host": HOST, "Authorization": "good.jwt.sig"}}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "subscribe_success");
}

// === operations meter ===

/// `GET /metrics` on the emulator's admin listener.
async fn scrape(admin: std::net::SocketAddr) -> String {
    let mut stream = within(TcpStream::connect(admin)).await.unwrap();
    within(stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
        .await
        .unwrap();
    let mut response = Vec::new();
    within(stream.read_to_end(&mut response)).await.unwrap();
    let response = String::from_utf8(response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn the_meter_counts_operations_as_aws_bills_them() {
    let emu = start().await;
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    emu.serve_admin(admin);
    let before = scrape(admin_addr).await;
    for kind in [
        "connect",
        "subscribe",
        "unsubscribe",
        "publish",
        "delivery",
        "keepalive",
    ] {
        let series = format!("appsync_emulator_operations_total{{kind=\"{kind}\"}}");
        assert_eq!(
            sample(&before, &series),
            Some(0.0),
            "{kind} missing at start"
        );
    }

    // Refused work is not billed: a handshake with a bad key, a subscribe
    // with bad authorization.
    let refused = connect_with(
        &emu,
        Some(&format!(
            "aws-appsync-event-ws, {}",
            header_protocol("wrong")
        )),
    )
    .await;
    assert!(refused.is_err());
    let mut a = connect(&emu).await;
    let mut b = connect(&emu).await;
    send(
        &mut a,
        json!({"type": "subscribe", "id": "x", "channel": "/ns/a", "authorization": api_key_auth("wrong")}),
    )
    .await;
    assert_eq!(recv(&mut a).await["type"], "subscribe_error");
    assert_eq!(emu.operations("connect"), 2);
    assert_eq!(emu.operations("subscribe"), 0);

    assert_eq!(
        subscribe(&mut a, "s1", "/ns/a").await["type"],
        "subscribe_success"
    );
    assert_eq!(
        subscribe(&mut b, "s2", "/ns/a").await["type"],
        "subscribe_success"
    );
    assert_eq!(
        subscribe(&mut b, "w", "/ns/*").await["type"],
        "subscribe_success"
    );

    // One small event: one publish, one delivery per matching subscription.
    let ack = publish(&mut a, "p1", "/ns/a", json!(["\"hi\""])).await;
    assert_eq!(ack["type"], "publish_success");
    assert_eq!(recv(&mut a).await["type"], "data");
    for _ in 0..2 {
        assert_eq!(recv(&mut b).await["type"], "data");
    }
    assert_eq!(emu.operations("publish"), 1);
    assert_eq!(emu.operations("delivery"), 3);

    // An event over 5 KB is two of each.
    let big = Value::String(format!("\"{}\"", "x".repeat(6000)));
    let (status, _) = http_publish(
        &emu,
        KEY,
        &json!({"channel": "/ns/a", "events": [big.as_str().unwrap()]}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(recv(&mut a).await["type"], "data");
    for _ in 0..2 {
        assert_eq!(recv(&mut b).await["type"], "data");
    }
    assert_eq!(emu.operations("publish"), 1 + 2);
    assert_eq!(emu.operations("delivery"), 3 + 6);

    send(&mut b, json!({"type": "unsubscribe", "id": "s2"})).await;
    assert_eq!(recv(&mut b).await["type"], "unsubscribe_success");
    assert_eq!(emu.operations("unsubscribe"), 1);

    let text = scrape(admin_addr).await;
    assert_eq!(
        sample(&text, "appsync_emulator_connections_active"),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &text,
            "appsync_emulator_subscriptions_active{channel=\"/ns/a\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "appsync_emulator_subscriptions_active{channel=\"/ns/*\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "appsync_emulator_operations_total{kind=\"delivery\"}"
        ),
        Some(9.0)
    );
    assert!(!text.contains(KEY), "a credential reached the metrics");

    // A connection that goes away takes its subscriptions off the gauges
    // (and its series, once a channel has none).
    drop(b);
    eventually(|| emu.connection_count() == 1).await;
    let text = scrape(admin_addr).await;
    assert_eq!(
        sample(&text, "appsync_emulator_connections_active"),
        Some(1.0)
    );
    assert!(!text.contains("channel=\"/ns/*\""), "{text}");
    assert_eq!(
        sample(
            &text,
            "appsync_emulator_subscriptions_active{channel=\"/ns/a\"}"
        ),
        Some(1.0)
    );
    drop(a);
}

#[tokio::test]
async fn keepalives_are_metered() {
    let emu = start_with(|c| c.ka_interval = Duration::from_millis(20)).await;
    let mut ws = connect(&emu).await;
    for _ in 0..3 {
        let Message::Text(text) = recv_message(&mut ws).await else {
            panic!("expected ka")
        };
        assert_eq!(text.as_str(), r#"{"type":"ka"}"#);
    }
    assert!(emu.operations("keepalive") >= 3);
    assert!(emu
        .metrics_text()
        .contains("appsync_emulator_operations_total{kind=\"keepalive\"}"));
}

/// `POST /close-all?code=N` on the admin listener closes every socket with
/// `N`; a code no close frame may carry, or a GET, is refused.
#[tokio::test]
async fn the_admin_listener_closes_every_socket_with_a_given_code() {
    let emu = start().await;
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    emu.serve_admin(admin);
    let status = |head: &'static str| async move {
        let mut stream = within(TcpStream::connect(admin_addr)).await.unwrap();
        let request =
            format!("{head}\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        within(stream.write_all(request.as_bytes())).await.unwrap();
        let mut response = Vec::new();
        within(stream.read_to_end(&mut response)).await.unwrap();
        String::from_utf8(response).unwrap()[9..12].to_string()
    };
    let mut ws = connect(&emu).await;
    for refused in [
        "POST /close-all?code=1005 HTTP/1.1",
        "POST /close-all?code=70000 HTTP/1.1",
        "POST /close-all HTTP/1.1",
    ] {
        assert_eq!(status(refused).await, "400", "{refused}");
    }
    assert_eq!(status("GET /close-all?code=4000 HTTP/1.1").await, "405");
    assert_eq!(emu.connection_count(), 1);
    assert_eq!(status("POST /close-all?code=4000 HTTP/1.1").await, "204");
    assert_eq!(recv_close_code(&mut ws).await, 4000);
}
