//! The client side of every target: how to reach it (`Endpoint`: URL,
//! upgrade headers, in-message authorization), opening WebSockets (one or
//! many, bounded concurrency), the AppSync Events handshake and subscribe,
//! and pre-built publish frames whose stamp is read back from `data`.

use crate::clock::histogram;
use crate::{HANDSHAKE_CONCURRENCY, IO_TIMEOUT};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How clients reach one target: URL, upgrade headers, and the
/// `authorization` object every subscribe/publish carries.
#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    url: String,
    headers: Vec<(&'static str, String)>,
    /// JSON object text.
    pub(crate) auth: String,
    /// Given by the user with `--target`: may be a non-loopback address.
    pub(crate) explicit: bool,
    /// Client source addresses to rotate through (empty: the kernel picks).
    pub(crate) sources: Arc<Vec<Ipv4Addr>>,
    /// For `wss://` to the local stack: trusts its generated certificate
    /// (None: the public roots, for `--target`).
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
}

/// AppSync's own way in: the token in the `header-` subprotocol and in
/// every message (what the direct and nginx clients send).
pub(crate) fn appsync_endpoint(url: String, token: &str, host: &str) -> Endpoint {
    let mut auth = serde_json::Map::new();
    auth.insert("host".into(), host.into());
    auth.insert("Authorization".into(), token.into());
    let header = appsync_relay::protocol::encode_header_subprotocol(&auth);
    Endpoint {
        url,
        headers: vec![(
            "sec-websocket-protocol",
            format!("aws-appsync-event-ws, {header}"),
        )],
        auth: serde_json::Value::Object(auth).to_string(),
        explicit: false,
        sources: Arc::new(Vec::new()),
        tls: None,
    }
}

/// A browser's way in through the relay: session cookies, Origin, and
/// Amplify's placeholder API key (which the relay replaces).
pub(crate) fn browser_endpoint(url: String, cookie: String, origin: Option<String>) -> Endpoint {
    let mut placeholder = serde_json::Map::new();
    placeholder.insert("host".into(), "127.0.0.1".into());
    placeholder.insert("x-api-key".into(), "placeholder".into());
    let header = appsync_relay::protocol::encode_header_subprotocol(&placeholder);
    let mut headers = vec![
        (
            "sec-websocket-protocol",
            format!("aws-appsync-event-ws, {header}"),
        ),
        ("cookie", cookie),
    ];
    if let Some(o) = origin {
        headers.push(("origin", o));
    }
    Endpoint {
        url,
        headers,
        auth: serde_json::Value::Object(placeholder).to_string(),
        explicit: false,
        sources: Arc::new(Vec::new()),
        tls: None,
    }
}

fn client_ws_config() -> WebSocketConfig {
    // Lean clients: 10k of them live in this process.
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
}

/// Opens one WebSocket (TCP + upgrade) to `ep`.
pub(crate) async fn open(ep: &Endpoint, n: usize) -> Result<Ws, String> {
    let url = url::Url::parse(&ep.url).map_err(|e| format!("{}: {e}", ep.url))?;
    let host = url.host_str().ok_or("target URL has no host")?.to_string();
    let port = url
        .port_or_known_default()
        .ok_or("target URL has no port")?;
    let addr = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| format!("resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} did not resolve"))?;
    if !ep.explicit && !addr.ip().is_loopback() {
        return Err(format!(
            "refusing {addr}: built-in scenarios only talk to loopback"
        ));
    }
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| e.to_string())?;
    if !ep.sources.is_empty() && addr.is_ipv4() {
        let src = ep.sources[n % ep.sources.len()];
        socket
            .bind(SocketAddr::new(IpAddr::V4(src), 0))
            .map_err(|e| format!("bind {src}: {e}"))?;
    }
    let attempt = async {
        let stream = socket
            .connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let mut req = ep
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| e.to_string())?;
        for (name, value) in &ep.headers {
            let value = value
                .parse()
                .map_err(|_| format!("header {name} is not a valid header value"))?;
            req.headers_mut().insert(*name, value);
        }
        let (ws, _) = tokio_tungstenite::client_async_tls_with_config(
            req,
            stream,
            Some(client_ws_config()),
            ep.tls.clone().map(tokio_tungstenite::Connector::Rustls),
        )
        .await
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(resp) => format!(
                "upgrade refused: HTTP {} {}",
                resp.status(),
                resp.body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default()
            ),
            other => format!("upgrade failed: {other}"),
        })?;
        Ok(ws)
    };
    tokio::time::timeout(IO_TIMEOUT, attempt)
        .await
        .map_err(|_| "handshake timed out".to_string())?
}

/// The next text frame that is not a keep-alive.
async fn next_text(ws: &mut Ws) -> Result<String, String> {
    loop {
        let msg = tokio::time::timeout(IO_TIMEOUT, ws.next())
            .await
            .map_err(|_| "no answer in time".to_string())?;
        match msg {
            Some(Ok(Message::Text(t))) if t.as_str() != r#"{"type":"ka"}"# => {
                return Ok(t.as_str().to_owned())
            }
            Some(Ok(Message::Close(f))) => return Err(format!("closed: {f:?}")),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("socket ended".into()),
        }
    }
}

pub(crate) async fn expect_reply(ws: &mut Ws, frame: String, wanted: &str) -> Result<(), String> {
    ws.send(Message::Text(frame.into()))
        .await
        .map_err(|e| e.to_string())?;
    let reply = next_text(ws).await?;
    if reply.contains(wanted) {
        Ok(())
    } else {
        Err(format!("expected {wanted}, got {reply}"))
    }
}

/// `connection_init`, then one subscription to `channel`.
async fn init_and_subscribe(ws: &mut Ws, ep: &Endpoint, channel: &str) -> Result<(), String> {
    expect_reply(ws, r#"{"type":"connection_init"}"#.into(), "connection_ack").await?;
    let sub = format!(
        r#"{{"type":"subscribe","id":"s1","channel":"{channel}","authorization":{}}}"#,
        ep.auth
    );
    expect_reply(ws, sub, "subscribe_success").await
}

/// A publish frame with one small event carrying its due time: built by
/// concatenation, no serializer on the hot path.
pub(crate) struct PublishTemplate {
    head: String,
    tail: String,
}

impl PublishTemplate {
    pub(crate) fn new(channel: &str, auth: &str) -> Self {
        PublishTemplate {
            head: format!(
                r#"{{"type":"publish","id":"p1","channel":"{channel}","events":["{{\"t\":"#
            ),
            tail: format!(
                r#",\"pad\":\"0123456789abcdef0123456789\"}}"],"authorization":{auth}}}"#
            ),
        }
    }

    pub(crate) fn frame(&self, stamp: u64) -> String {
        let mut s = String::with_capacity(self.head.len() + self.tail.len() + 20);
        s.push_str(&self.head);
        let _ = write!(s, "{stamp}");
        s.push_str(&self.tail);
        s
    }
}

/// The stamp inside a `data` frame's event (`"event":"{\"t\":123,…}"`).
pub(crate) fn stamp_of(text: &str) -> Option<u64> {
    const KEY: &str = r#"\"t\":"#;
    let start = text.find(KEY)? + KEY.len();
    let digits = &text[start..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// Opens `count` connections (64 at a time) and returns them with the
/// handshake rate and per-handshake latency.
pub(crate) async fn open_many(
    ep: &Endpoint,
    count: usize,
    first: usize,
) -> Result<(Vec<Ws>, f64, Histogram<u64>), String> {
    let started = Instant::now();
    let mut hist = histogram();
    let mut conns = Vec::with_capacity(count);
    let mut results = futures_util::stream::iter(first..first + count)
        .map(|n| async move {
            let t = Instant::now();
            open(ep, n).await.map(|ws| (ws, t.elapsed()))
        })
        .buffer_unordered(HANDSHAKE_CONCURRENCY);
    while let Some(r) = results.next().await {
        let (ws, took) = r?;
        hist.saturating_record(took.as_nanos() as u64);
        conns.push(ws);
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    Ok((conns, rate, hist))
}

pub(crate) async fn subscribe_all(
    conns: &mut [Ws],
    ep: &Endpoint,
    channel: &str,
) -> Result<(), String> {
    let mut pending = futures_util::stream::iter(conns.iter_mut())
        .map(|ws| init_and_subscribe(ws, ep, channel))
        .buffer_unordered(256);
    while let Some(r) = pending.next().await {
        r?;
    }
    Ok(())
}
