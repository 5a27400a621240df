//! The emulator's message handling and the AppSync protocol rules.
//!
//! The emulator's per-message entry point (`realtime::Session::on_text`) is
//! private and lives behind a WebSocket, so this target drives it the only
//! way the public API allows: it starts the emulator once on 127.0.0.1
//! (`emulator::spawn`, a fake `TokenVerifier` accepting one token) and keeps
//! one WebSocket open to it. Each input is sent as a text frame:
//!
//! 1. as is: the emulator must answer with exactly one AppSync-shaped frame
//!    (within 5 s) and keep the connection open — a panic in its session
//!    task drops the socket, which fails here;
//! 2. through the relay (`rewrite::prepare_client_frame` + `render` with the
//!    accepted token): a subscribe/publish the relay forwards must be
//!    accepted by the emulator (relay laxer than AppSync = a frame the relay
//!    lets through and AWS refuses), and one the relay answers itself must
//!    be refused by the emulator too when sent with valid authorization
//!    (relay stricter than AppSync = a client frame wrongly refused).
//!
//! In-process, on the same input: `Channel::parse` (canonical form is
//! idempotent, wildcard rules), `decode_header_subprotocol` (round-trips via
//! `encode_header_subprotocol`), `split_protocols`, `rewrite::check_events`.
#![no_main]

use appsync_relay::emulator::{self, EmulatorAuth, EmulatorConfig, TokenVerifier, VerifyFuture};
use appsync_relay::protocol::{
    decode_header_subprotocol, encode_header_subprotocol, is_valid_id, split_protocols, Channel,
    SUBPROTOCOL,
};
use appsync_relay::rewrite::{
    check_events, prepare_client_frame, render, FrameKind, Prepared, UpstreamAuth,
};
use futures_util::{SinkExt, StreamExt};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const TOKEN: &str = "eyJraWQiOiJrMSJ9.eyJzdWIiOiJmdXp6In0.SIGNATURE_zq9X";
const HOST: &str = "fuzz.appsync-api.eu-west-1.amazonaws.com";
/// Reconnect after this many inputs so subscriptions do not pile up.
const INPUTS_PER_CONNECTION: u32 = 2000;

struct OneToken;
impl TokenVerifier for OneToken {
    fn verify_token<'a>(&'a self, token: &'a str) -> VerifyFuture<'a> {
        Box::pin(async move {
            if token == TOKEN {
                Ok(())
            } else {
                Err("token refused".into())
            }
        })
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct Fixture {
    rt: tokio::runtime::Runtime,
    url: String,
    conn: Mutex<Option<(Ws, u32)>>,
    _emulator: emulator::EmulatorHandle,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let handle = rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let mut cfg = EmulatorConfig::new(EmulatorAuth::Cognito(Arc::new(OneToken)));
            cfg.http_host = Some(HOST.into());
            emulator::spawn(listener, cfg).await
        });
        Fixture {
            rt,
            url: handle.realtime_endpoint(),
            conn: Mutex::new(None),
            _emulator: handle,
        }
    })
}

fn auth() -> UpstreamAuth {
    UpstreamAuth::new(TOKEN, HOST)
}

async fn connect(url: &str) -> Ws {
    let mut req = url.into_client_request().expect("request");
    let proto = format!(
        "{SUBPROTOCOL}, {}",
        encode_header_subprotocol(&auth().as_map())
    );
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(&proto).expect("header"),
    );
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("emulator handshake");
    ws
}

/// Sends one text frame and returns the emulator's reply (skipping fan-out
/// `data` frames and `ka`).
async fn round_trip(ws: &mut Ws, text: &str) -> Value {
    ws.send(Message::Text(text.into()))
        .await
        .expect("send to emulator");
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("emulator did not answer within 5 s");
        match msg {
            Some(Ok(Message::Text(t))) => {
                let v: Value =
                    serde_json::from_str(t.as_str()).expect("emulator reply is not JSON");
                let ty = v["type"]
                    .as_str()
                    .expect("emulator reply has no type")
                    .to_owned();
                if ty == "data" || ty == "ka" {
                    continue;
                }
                if !text.contains(TOKEN) {
                    assert!(!t.as_str().contains(TOKEN), "emulator echoed the token");
                }
                assert!(
                    matches!(
                        ty.as_str(),
                        "connection_ack"
                            | "subscribe_success"
                            | "subscribe_error"
                            | "publish_success"
                            | "publish_error"
                            | "unsubscribe_success"
                            | "unsubscribe_error"
                            | "error"
                    ),
                    "unexpected reply type {ty}"
                );
                return v;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            other => panic!("emulator connection ended: {other:?}"),
        }
    }
}

fn is_duplicate_subscription(v: &Value) -> bool {
    v["type"] == "subscribe_error"
        && v["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("already active"))
}

/// The emulator refuses channels outside its defined namespaces, as AppSync
/// does. The relay cannot know an API's namespaces and passes such frames
/// on by design (AppSync answers them), so this refusal is not the relay
/// being laxer than AppSync.
fn is_undefined_namespace(v: &Value) -> bool {
    matches!(v["type"].as_str(), Some("subscribe_error" | "publish_error"))
        && v["errors"][0]["errorType"] == "UnauthorizedException"
        && v["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("no channel namespace matches"))
}

fn protocol_invariants(s: &str) {
    for allow_wildcard in [false, true] {
        if let Ok(c) = Channel::parse(s, allow_wildcard) {
            assert!(c.path().starts_with('/'));
            assert!(c
                .path()
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'/'));
            assert!(c.path().split('/').count() - 1 <= 5);
            if c.is_wildcard() {
                assert!(allow_wildcard);
                let again =
                    Channel::parse(&format!("{}/*", c.path()), true).expect("canonical wildcard");
                assert_eq!(again, c);
            } else {
                let again = Channel::parse(c.path(), false).expect("canonical path");
                assert_eq!(again, c);
                assert!(c.matches(&again));
            }
            if !allow_wildcard {
                assert_eq!(Channel::parse(s, true).as_ref(), Ok(&c));
            }
        }
    }
    for candidate in [s.to_owned(), format!("header-{s}")] {
        if let Some(map) = decode_header_subprotocol(&candidate) {
            let enc = encode_header_subprotocol(&map);
            assert_eq!(decode_header_subprotocol(&enc), Some(map));
        }
    }
    for p in split_protocols(s) {
        assert!(!p.is_empty() && !p.contains(',') && p.trim() == p);
    }
    if let Ok(v) = serde_json::from_str::<Value>(s) {
        let _ = check_events(Some(&v));
        if let Some(o) = v.as_object() {
            let _ = check_events(o.get("events"));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    protocol_invariants(text);

    let f = fixture();
    let mut guard = f.conn.lock().unwrap_or_else(|p| p.into_inner());
    f.rt.block_on(async {
        let reuse = matches!(&*guard, Some((_, n)) if *n < INPUTS_PER_CONNECTION);
        if !reuse {
            if let Some((mut old, _)) = guard.take() {
                let _ = old.close(None).await;
            }
            *guard = Some((connect(&f.url).await, 0));
        }
        let (ws, count) = guard.as_mut().expect("connection");
        *count += 1;

        // 1. The raw frame.
        let _ = round_trip(ws, text).await;

        // 2. The same frame through the relay's policy.
        let msg_type = serde_json::from_str::<Value>(text)
            .ok()
            .and_then(|v| v.get("type").and_then(Value::as_str).map(str::to_owned));
        match prepare_client_frame(text) {
            Prepared::Forward { kind, body } => {
                let publish = matches!(kind, FrameKind::Publish { .. });
                if !(publish || matches!(kind, FrameKind::Subscribe { .. })) {
                    return;
                }
                let out = render(body, &auth());
                let v = round_trip(ws, &out).await;
                let ok = is_undefined_namespace(&v)
                    || if publish {
                        v["type"] == "publish_success"
                    } else {
                        v["type"] == "subscribe_success" || is_duplicate_subscription(&v)
                    };
                assert!(ok, "relay forwarded a frame the emulator refused: {out} -> {v}");
            }
            Prepared::Reply(reply) => {
                if !matches!(msg_type.as_deref(), Some("subscribe" | "publish")) {
                    return;
                }
                // A duplicate key is refused by the relay on purpose (two
                // parsers picking different duplicates would read different
                // frames); re-serialising the frame for the emulator below
                // would drop the duplicate, so there is nothing to compare.
                if appsync_relay::strict_json::parse(text).is_err() {
                    return;
                }
                let Ok(Value::Object(mut m)) = serde_json::from_str::<Value>(text) else {
                    return;
                };
                m.insert("authorization".into(), Value::Object(auth().as_map()));
                let with_auth = Value::Object(m).to_string();
                let v = round_trip(ws, &with_auth).await;
                let ty = v["type"].as_str().unwrap_or_default();
                assert!(
                    ty.ends_with("_error") || ty == "error",
                    "relay refused a frame the emulator accepts: {text} -> relay {reply}, emulator {v}"
                );
                // Ids the relay echoes are valid ids.
                let r: Value = serde_json::from_str(&reply).expect("reply JSON");
                if let Some(id) = r.get("id").and_then(Value::as_str) {
                    assert!(is_valid_id(id));
                }
                let _ = Map::<String, Value>::new();
            }
        }
    });
});
