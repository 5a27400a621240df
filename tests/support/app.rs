//! The app side of `tests/proxy.rs`: a small hyper "app" that records every
//! request it gets (echo, upload/download, streaming, slow and hop-by-hop
//! routes, a WebSocket echo), a relay started with `AppProxy` in front of
//! it, and a browser-side HTTP/1.1 client to talk to that relay.

use super::{relay_config, signing_key, start_emulator, JwksServer, CLIENT_ID, USERNAME};
use appsync_relay::config::AppTarget;
use appsync_relay::proxy::{AppProxy, ProxyConfig};
use appsync_relay::server::{self, RelayHandle};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::HeaderMap;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub const MIB: usize = 1024 * 1024;
pub const CHUNK: usize = 64 * 1024;
/// Bound on every wait in these tests: a hang is a failure, not a timeout.
pub const WAIT: Duration = Duration::from_secs(10);

pub type AppBody = BoxBody<Bytes, Infallible>;

// === The app ===

/// One request as the app saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
}

/// What the test and the app share.
#[derive(Default)]
pub struct AppShared {
    pub seen: Mutex<Vec<Seen>>,
    /// TCP connections the app accepted.
    pub connections: AtomicUsize,
    /// `/stream-request`: the app got the first body chunk.
    pub first_chunk_arrived: Notify,
    /// `/stream-response`: the test saw the first chunk; send the last.
    pub release_last_chunk: Notify,
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub shared: Arc<AppShared>,
}

impl TestApp {
    pub async fn start() -> TestApp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(AppShared::default());
        let s = shared.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                s.connections.fetch_add(1, Ordering::SeqCst);
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(app(s, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        TestApp { addr, shared }
    }

    pub fn url(&self) -> url::Url {
        format!("http://{}", self.addr).parse().unwrap()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.seen().pop().expect("the app got no request")
    }

    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }
}

pub fn body(bytes: impl Into<Bytes>) -> AppBody {
    Full::new(bytes.into()).boxed()
}

/// A body fed chunk by chunk from a channel.
pub fn channel_body(rx: mpsc::Receiver<Bytes>) -> AppBody {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    BodyExt::boxed(StreamBody::new(stream))
}

/// Deterministic bytes for the download route: byte `i` is `i * 31 % 251`.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

async fn app(shared: Arc<AppShared>, mut req: Request<Incoming>) -> Response<AppBody> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    shared.seen.lock().unwrap().push(Seen {
        method: req.method().clone(),
        path: path.clone(),
        headers: req.headers().clone(),
    });
    let route = req.uri().path().to_string();
    match route.as_str() {
        "/_next/webpack-hmr" => websocket_echo(&mut req),
        // Never answers: for the response timeout.
        "/slow" => std::future::pending().await,
        // A response the app marks as cacheable by anyone.
        "/cached" => Response::builder()
            .header("cache-control", "public, max-age=31536000, immutable")
            .body(body_text("static"))
            .unwrap(),
        // Amplify's sign-out: the session cookies expired.
        "/signout" => Response::builder()
            .header(
                "set-cookie",
                format!(
                    "{}=; Path=/; Max-Age=0",
                    appsync_relay::session::cookie_name(CLIENT_ID, USERNAME, "refreshToken")
                ),
            )
            .body(body_text("bye"))
            .unwrap(),
        "/upload" => {
            let mut hasher = Sha256::new();
            let mut len = 0usize;
            let mut body = req.into_body();
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.unwrap().into_data() {
                    len += data.len();
                    hasher.update(&data);
                }
            }
            let digest = hasher.finalize();
            Response::new(body_text(format!("{len} {digest:x}")))
        }
        "/download" => {
            let data = Bytes::from(pattern(8 * MIB));
            let chunks: Vec<Result<Frame<Bytes>, Infallible>> = (0..data.len())
                .step_by(CHUNK)
                .map(|i| Ok(Frame::data(data.slice(i..(i + CHUNK).min(data.len())))))
                .collect();
            Response::new(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(
                chunks,
            ))))
        }
        "/stream-request" => {
            let mut body = req.into_body();
            let mut len = 0usize;
            let mut first = true;
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.unwrap().into_data() {
                    len += data.len();
                    if first && !data.is_empty() {
                        first = false;
                        shared.first_chunk_arrived.notify_one();
                    }
                }
            }
            Response::new(body_text(len.to_string()))
        }
        "/stream-response" => {
            let (tx, rx) = mpsc::channel(1);
            let s = shared.clone();
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from_static(b"first chunk;")).await;
                s.release_last_chunk.notified().await;
                let _ = tx.send(Bytes::from_static(b"last chunk")).await;
            });
            Response::new(channel_body(rx))
        }
        "/hop" => Response::builder()
            .header("connection", "X-App-Hop")
            .header("x-app-hop", "secret")
            .header("keep-alive", "timeout=5")
            .header("proxy-authenticate", "Basic realm=app")
            .header("trailer", "x-foo")
            .header("upgrade", "foo/1")
            .header("x-app-e2e", "kept")
            .body(body("hop"))
            .unwrap(),
        "/echo" => {
            let method = req.method().clone();
            let status = req
                .headers()
                .get("x-want-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u16>().ok())
                .unwrap_or(200);
            let content_type = req.headers().get("content-type").cloned();
            let got = req.into_body().collect().await.unwrap().to_bytes();
            let mut resp = Response::builder()
                .status(status)
                .header("x-app", "yes")
                .header("content-type", "text/plain")
                .header("set-cookie", "app=1; Path=/");
            if let Some(ct) = content_type {
                resp = resp.header("x-echo-content-type", ct);
            }
            let text = format!("{method} {path} {}", String::from_utf8_lossy(&got));
            resp.body(body_text(text)).unwrap()
        }
        _ => Response::new(body_text("app")),
    }
}

fn body_text(s: impl Into<String>) -> AppBody {
    body(Bytes::from(s.into()))
}

/// The app's WebSocket (Next.js HMR stands in): 101, then greets and echoes.
fn websocket_echo(req: &mut Request<Incoming>) -> Response<AppBody> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .body(body("no key"))
            .unwrap();
    };
    let offered = req.headers().get("sec-websocket-protocol").cloned();
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        if ws
            .send(Message::Text("hello from app".into()))
            .await
            .is_err()
        {
            return;
        }
        while let Some(Ok(msg)) = ws.next().await {
            let reply = match msg {
                Message::Text(t) => Message::Text(format!("echo:{t}").into()),
                Message::Binary(b) => Message::Binary(b),
                Message::Close(_) => break,
                _ => continue,
            };
            if ws.send(reply).await.is_err() {
                return;
            }
        }
    });
    let mut resp = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", derive_accept_key(key.as_bytes()));
    // Like Next.js HMR: pick the subprotocol only when one is offered.
    if let Some(offered) = offered {
        resp = resp.header("sec-websocket-protocol", offered);
    }
    resp.body(body(Bytes::new())).unwrap()
}

// === The relay in front of it ===

pub struct Proxied {
    pub relay: RelayHandle,
    pub _jwks: JwksServer,
    pub _emulator: appsync_relay::emulator::EmulatorHandle,
}

impl Proxied {
    pub fn addr(&self) -> SocketAddr {
        self.relay.public_addr
    }
}

pub fn proxy_config(upstream: url::Url) -> ProxyConfig {
    ProxyConfig {
        target: AppTarget::parse(&upstream).expect("usable app upstream"),
        connect_timeout: Duration::from_secs(2),
        response_timeout: Duration::from_secs(10),
        idle_pool_timeout: Duration::from_secs(30),
        max_idle_per_host: 8,
        ..ProxyConfig::new(AppTarget::parse(&upstream).expect("usable app upstream"))
    }
}

pub async fn start_proxied(cfg: ProxyConfig, extra: &[&str]) -> Proxied {
    start_proxied_tls(cfg, extra, None).await
}

/// The relay in front of the app, terminating TLS itself when `tls` is set.
pub async fn start_proxied_tls(
    cfg: ProxyConfig,
    extra: &[&str],
    tls: Option<appsync_relay::tls::TlsSource>,
) -> Proxied {
    let jwks = JwksServer::start(serde_json::json!({"keys": [signing_key().jwk()]})).await;
    let emulator = start_emulator(&jwks, CLIENT_ID).await;
    let mut config = relay_config(&emulator.http_endpoint(), &jwks, extra);
    config.tls = tls;
    let public = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay =
        server::spawn_with_app(config, public, admin, Some(Arc::new(AppProxy::new(cfg)))).unwrap();
    assert!(relay.wait_ready(WAIT).await, "relay never became ready");
    Proxied {
        relay,
        _jwks: jwks,
        _emulator: emulator,
    }
}

// === A browser-side HTTP/1.1 client ===

/// One keep-alive connection to the relay.
pub struct Conn {
    pub sender: hyper::client::conn::http1::SendRequest<AppBody>,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Conn { sender }
    }

    pub async fn send(&mut self, req: Request<AppBody>) -> Response<Incoming> {
        self.sender.ready().await.unwrap();
        tokio::time::timeout(WAIT, self.sender.send_request(req))
            .await
            .expect("no response head in time")
            .unwrap()
    }
}

/// A request with `Host: app.example.com` (the public host) and `headers`.
pub fn request(method: &str, path: &str, headers: &[(&str, &str)], b: AppBody) -> Request<AppBody> {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "app.example.com");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(b).unwrap()
}

pub async fn text(resp: Response<Incoming>) -> String {
    let bytes = tokio::time::timeout(WAIT, resp.into_body().collect())
        .await
        .expect("body did not end in time")
        .unwrap()
        .to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

pub async fn roundtrip(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    b: &str,
) -> (StatusCode, HeaderMap, String) {
    let mut conn = Conn::open(addr).await;
    let resp = conn
        .send(request(method, path, headers, body_text(b.to_string())))
        .await;
    let status = resp.status();
    let headers = resp.headers().clone();
    (status, headers, text(resp).await)
}

pub async fn next_frame<S>(ws: &mut WebSocketStream<S>) -> Message
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("no frame in time")
        .expect("tunnel closed")
        .expect("tunnel error")
}

pub fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).map(|v| v.to_str().unwrap())
}
