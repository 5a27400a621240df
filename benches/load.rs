//! Load harness: the relay against two baselines in the same run.
//!
//! `cargo bench --bench load` starts, on loopback only: a JWKS (in this
//! process), the AppSync Events emulator (`appsync-relay emulate`, Cognito
//! mode), the relay (`appsync-relay serve`, limits lifted) and nginx (a plain
//! WebSocket reverse proxy in front of the same emulator, when `nginx` is on
//! PATH). It then drives the same load through three targets, alternating
//! and repeated, and prints medians and ratios:
//!
//! - `direct`: clients talk to the emulator themselves (the floor);
//! - `nginx`: clients → nginx → emulator;
//! - `relay`: clients (cookie + Origin, as a browser) → relay → emulator.
//!
//! Scenarios: idle memory and handshake rate at 1k/5k/10k connections,
//! a handshake burst, publish → data latency at 5 000 msg/s with one
//! subscriber, fan-out to 1 000 subscribers at 50 000 deliveries/s, and the
//! highest fan-out delivery rate sustained without loss.
//!
//! Latency is end-to-end publish → `data` with the clock of this process on
//! both ends. Publishes are sent on a fixed schedule by a dedicated thread
//! and stamped with the time they were *due*, not the time they went out,
//! so a stalled target cannot slow the sender down and hide its stall (no
//! coordinated omission). The clients share the machine with the targets:
//! they run on one async thread plus the publisher thread, with
//! pre-built frames, and cost the same in every column.
//!
//! `cargo bench --bench load -- --help` lists the flags; `--quick` is the CI
//! smoke run; `--target wss://…` runs a custom scenario against any
//! deployment. See benches/README.md.

#[path = "common/mod.rs"]
mod common;

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The relay binary `cargo bench` builds alongside this bench.
const RELAY_BIN: &str = env!("CARGO_BIN_EXE_appsync-relay");
const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");
const USERNAME: &str = "bench-user";
const ORIGIN_HEADER: &str = "http://127.0.0.1";
/// Handshakes in flight at once while opening many connections.
const HANDSHAKE_CONCURRENCY: usize = 64;
/// Every wait on a peer is bounded by this.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// A fan-out step counts as sustained only with no loss and p99 below this.
const SUSTAINED_P99: Duration = Duration::from_millis(50);
/// A run during which other processes used more CPU than this (% of one
/// core) is flagged: on 2 cores its latencies say more about them.
const NOISY_OTHERS_PCT: f64 = 10.0;

// === clock ===

static CLOCK: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds on this process's monotonic clock (shared by all threads).
fn now_ns() -> u64 {
    CLOCK.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

fn instant_at(ns: u64) -> tokio::time::Instant {
    (*CLOCK.get_or_init(Instant::now) + Duration::from_nanos(ns)).into()
}

fn histogram() -> Histogram<u64> {
    // 1 ns .. 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}

// === flags ===

#[derive(Debug, Default, Clone)]
struct Args {
    quick: bool,
    target: Option<String>,
    cookie: Option<String>,
    origin: Option<String>,
    token: Option<String>,
    host: Option<String>,
    channel: Option<String>,
    connections: Option<usize>,
    rate: Option<u64>,
    duration: Option<f64>,
    reps: Option<usize>,
    pid: Option<u32>,
    scenarios: Option<Vec<String>>,
    no_nginx: bool,
}

const HELP: &str = "\
cargo bench --bench load [-- FLAGS]

Without flags: the standard scenarios against direct, nginx and the relay
(~7 min on 2 cores). FLAGS:
  --quick               seconds-long smoke run with tiny numbers (CI)
  --scenarios LIST      comma-separated subset of memory,handshake,latency,fanout,fanmax
  --reps N              repetitions of the alternating runs (default 3)
  --no-nginx            skip the nginx baseline
Custom scenario (local stack, with baselines, unless --target is given):
  --connections N       subscribers (default 1)
  --rate N              publishes/s (default 1000; 0 = as fast as possible,
                        64 in flight, latency then from the actual send)
  --duration SECS       measured seconds (default 10, after 1 s warm-up)
Against your own deployment (only these talk to a non-loopback address):
  --target URL          ws:// or wss:// real-time URL, e.g. wss://app.example.com/event/realtime
  --cookie STR          Cookie header (Amplify's session cookies)
  --origin STR          Origin header
  --channel CH          channel to use (default /default/loadtest)
  --token JWT --host H  talk to AppSync itself: header- subprotocol and in-message auth
  --pid PID             a local process to report RSS/CPU for (the relay)
";

fn parse_args() -> Result<Args, String> {
    let mut a = Args::default();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match flag.as_str() {
            // `cargo bench` passes this to every harness = false bench.
            "--bench" => {}
            "--quick" => a.quick = true,
            "--no-nginx" => a.no_nginx = true,
            "--target" => a.target = Some(value("--target")?),
            "--cookie" => a.cookie = Some(value("--cookie")?),
            "--origin" => a.origin = Some(value("--origin")?),
            "--token" => a.token = Some(value("--token")?),
            "--host" => a.host = Some(value("--host")?),
            "--channel" => a.channel = Some(value("--channel")?),
            "--connections" => a.connections = Some(num(&value("--connections")?)?),
            "--rate" => a.rate = Some(num(&value("--rate")?)?),
            "--duration" => a.duration = Some(num(&value("--duration")?)?),
            "--reps" => a.reps = Some(num(&value("--reps")?)?),
            "--pid" => a.pid = Some(num(&value("--pid")?)?),
            "--scenarios" => {
                a.scenarios = Some(
                    value("--scenarios")?
                        .split(',')
                        .map(|s| s.trim().to_string())
                        .collect(),
                )
            }
            "-h" | "--help" => {
                print!("{HELP}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown flag {other} (see --help)")),
        }
    }
    Ok(a)
}

fn num<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("'{s}' is not a number"))
}

// === endpoints and client protocol ===

/// How clients reach one target: URL, upgrade headers, and the
/// `authorization` object every subscribe/publish carries.
#[derive(Clone, Debug)]
struct Endpoint {
    url: String,
    headers: Vec<(&'static str, String)>,
    /// JSON object text.
    auth: String,
    /// Given by the user with `--target`: may be a non-loopback address.
    explicit: bool,
    /// Client source addresses to rotate through (empty: the kernel picks).
    sources: Arc<Vec<Ipv4Addr>>,
}

/// AppSync's own way in: the token in the `header-` subprotocol and in
/// every message (what the direct and nginx clients send).
fn appsync_endpoint(url: String, token: &str, host: &str) -> Endpoint {
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
    }
}

/// A browser's way in through the relay: session cookies, Origin, and
/// Amplify's placeholder API key (which the relay replaces).
fn browser_endpoint(url: String, cookie: String, origin: Option<String>) -> Endpoint {
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
    }
}

fn client_ws_config() -> WebSocketConfig {
    // Lean clients: 10k of them live in this process.
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
}

/// Opens one WebSocket (TCP + upgrade) to `ep`.
async fn open(ep: &Endpoint, n: usize) -> Result<Ws, String> {
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
            None,
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

async fn expect_reply(ws: &mut Ws, frame: String, wanted: &str) -> Result<(), String> {
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
struct PublishTemplate {
    head: String,
    tail: String,
}

impl PublishTemplate {
    fn new(channel: &str, auth: &str) -> Self {
        PublishTemplate {
            head: format!(
                r#"{{"type":"publish","id":"p1","channel":"{channel}","events":["{{\"t\":"#
            ),
            tail: format!(
                r#",\"pad\":\"0123456789abcdef0123456789\"}}"],"authorization":{auth}}}"#
            ),
        }
    }

    fn frame(&self, stamp: u64) -> String {
        let mut s = String::with_capacity(self.head.len() + self.tail.len() + 20);
        s.push_str(&self.head);
        let _ = write!(s, "{stamp}");
        s.push_str(&self.tail);
        s
    }
}

/// The stamp inside a `data` frame's event (`"event":"{\"t\":123,…}"`).
fn stamp_of(text: &str) -> Option<u64> {
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
async fn open_many(
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

async fn subscribe_all(conns: &mut [Ws], ep: &Endpoint, channel: &str) -> Result<(), String> {
    let mut pending = futures_util::stream::iter(conns.iter_mut())
        .map(|ws| init_and_subscribe(ws, ep, channel))
        .buffer_unordered(256);
    while let Some(r) = pending.next().await {
        r?;
    }
    Ok(())
}

// === processes ===

/// Child pids for the watchdog, which must be able to stop them even if the
/// main thread is stuck.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn terminate(pid: u32, signal: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
}

/// A process this harness started; stopped with SIGTERM (then SIGKILL) on drop.
struct Proc {
    name: &'static str,
    child: std::process::Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, mut cmd: Command, dir: &Path) -> Result<Proc, String> {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        // Whatever APPSYNC_* the caller's shell has must not change the bench.
        for (k, _) in std::env::vars() {
            if k.starts_with("APPSYNC_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().map_err(|e| e.to_string())?)
            .stderr(file)
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        CHILDREN
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(child.id());
        Ok(Proc { name, child, log })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "{} exited ({status}):\n{}",
                self.name,
                self.log_tail()
            )),
            Err(e) => Err(e.to_string()),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        terminate(self.pid(), nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// RSS, CPU time and open files of a set of processes, from /proc.
#[derive(Clone, Debug)]
struct Monitor {
    pids: Vec<u32>,
}

/// USER_HZ: /proc reports CPU times in 1/100 s on Linux.
const TICKS_PER_SEC: f64 = 100.0;

impl Monitor {
    fn rss_kib(&self) -> u64 {
        self.pids
            .iter()
            .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
            .filter_map(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<u64>().ok())
            })
            .sum()
    }

    /// CPU time used so far, in seconds: the sum of every live thread's
    /// on-CPU nanoseconds (`/proc/<pid>/task/*/schedstat`), which resolves
    /// far finer than the 10 ms ticks of `/proc/<pid>/stat` utime+stime
    /// (the fallback). The proxies' threads live as long as they do.
    fn cpu_secs(&self) -> f64 {
        self.pids
            .iter()
            .map(|pid| Self::schedstat_secs(*pid).unwrap_or_else(|| Self::stat_secs(*pid)))
            .sum()
    }

    fn schedstat_secs(pid: u32) -> Option<f64> {
        let mut ns = 0u64;
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))
            .ok()?
            .flatten()
        {
            let s = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            ns += s.split_whitespace().next()?.parse::<u64>().ok()?;
        }
        Some(ns as f64 / 1e9)
    }

    /// utime + stime, in seconds.
    fn stat_secs(pid: u32) -> f64 {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                // Fields after the `(comm)`, which may contain spaces.
                let rest = &s[s.rfind(')')? + 2..];
                let f: Vec<&str> = rest.split_whitespace().collect();
                Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
            })
            .unwrap_or(0.0)
            / TICKS_PER_SEC
    }

    fn open_files(&self) -> usize {
        self.pids
            .iter()
            .filter_map(|pid| std::fs::read_dir(format!("/proc/{pid}/fd")).ok())
            .map(|d| d.count())
            .sum()
    }
}

/// Busy CPU seconds of the whole machine (all cores) from /proc/stat.
fn machine_busy_secs() -> f64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().next()?;
            let f: Vec<f64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal
            Some(f.iter().take(8).sum::<f64>() - f.get(3)? - f.get(4)?)
        })
        .unwrap_or(0.0)
        / TICKS_PER_SEC
}

/// Every process of the bench: this one, the children and theirs (nginx
/// workers). What the machine spends beyond them is someone else's load.
fn bench_processes() -> Monitor {
    let mut pids = vec![std::process::id()];
    for pid in CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        pids.push(*pid);
        pids.extend(children_of(*pid));
    }
    Monitor { pids }
}

fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn wait_for(what: &str, proc_: &mut Proc, mut ready: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        proc_.check_alive()?;
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("{what} not ready in 20 s:\n{}", proc_.log_tail()))
}

fn tcp_open(addr: SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nhost: {addr}\r\n\r\n").ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    std::str::from_utf8(&buf[..n])
        .ok()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Makes sure the relay binary exists and is not older than the sources
/// (`cargo bench` builds it with the bench; a bench binary run by hand may
/// find it missing or stale).
fn ensure_relay_binary() -> Result<(), String> {
    fn newest(dir: &Path) -> std::time::SystemTime {
        let mut t = std::time::UNIX_EPOCH;
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            let m = if p.is_dir() {
                newest(&p)
            } else {
                e.metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH)
            };
            t = t.max(m);
        }
        t
    }
    let built = std::fs::metadata(RELAY_BIN).and_then(|m| m.modified()).ok();
    let sources = newest(&Path::new(MANIFEST_DIR).join("src"));
    if built.is_some_and(|b| b >= sources) {
        return Ok(());
    }
    eprintln!("building {RELAY_BIN} (missing or older than src/)");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--bin", "appsync-relay"])
        .current_dir(MANIFEST_DIR)
        .status()
        .map_err(|e| format!("cargo build: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("cargo build --release failed ({status})"))
    }
}

/// A scratch directory for configs and logs, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir, String> {
        let p = std::env::temp_dir().join(format!("appsync-relay-load-{}", std::process::id()));
        std::fs::create_dir_all(p.join("nginx-tmp")).map_err(|e| e.to_string())?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The local stack: JWKS, emulator, relay and (if installed) nginx.
struct Stack {
    token: String,
    emu_host: String,
    emulator: Proc,
    relay: Proc,
    relay_addr: SocketAddr,
    nginx: Option<(Proc, SocketAddr)>,
    _idp: common::Idp,
    // Last, so the processes are stopped before their directory goes.
    _dir: TempDir,
}

impl Stack {
    fn start(with_nginx: bool) -> Result<Stack, String> {
        ensure_relay_binary()?;
        let dir = TempDir::new()?;
        let idp = common::Idp::start();
        // Long-lived, so no renewal happens during the run; one user, so
        // every handshake after the first hits the relay's token cache.
        let token = idp.access_token(USERNAME, Duration::from_secs(6 * 3600));

        let emu_port = free_port();
        let emu_host = format!("127.0.0.1:{emu_port}");
        let mut cmd = Command::new(RELAY_BIN);
        cmd.args(["emulate", "--listen", &emu_host])
            .args(["--cognito-issuer", &idp.issuer()])
            .args(["--cognito-jwks-url", &idp.jwks_url()])
            .args(["--cognito-client-id", common::CLIENT_ID])
            .args(["--http-host", &emu_host])
            .env("APPSYNC_RELAY_LOG", "warn");
        let mut emulator = Proc::spawn("emulator", cmd, &dir.0)?;
        let emu_addr: SocketAddr = emu_host.parse().map_err(|_| "emulator address")?;
        wait_for("emulator", &mut emulator, || tcp_open(emu_addr))?;

        let relay_addr: SocketAddr = format!("127.0.0.1:{}", free_port())
            .parse()
            .map_err(|_| "relay address")?;
        let admin_addr: SocketAddr = format!("127.0.0.1:{}", free_port())
            .parse()
            .map_err(|_| "admin address")?;
        let mut cmd = Command::new(RELAY_BIN);
        cmd.arg("serve")
            .args(["--listen", &relay_addr.to_string()])
            .args(["--admin-listen", &admin_addr.to_string()])
            .args([
                "--appsync-http-endpoint",
                &format!("http://{emu_host}/event"),
            ])
            .args(["--cognito-user-pool-id", common::POOL_ID])
            .args(["--cognito-client-id", common::CLIENT_ID])
            .args(["--cognito-issuer", &idp.issuer()])
            .args(["--cognito-jwks-url", &idp.jwks_url()])
            // Never contacted (tokens outlive the run); never AWS either.
            .args(["--cognito-endpoint", "http://127.0.0.1:9/"])
            .args(["--allowed-origin", ORIGIN_HEADER])
            .args(["--max-connections", "0"])
            .args(["--max-connections-per-user", "0"])
            .args(["--max-connections-per-ip", "0"])
            .args(["--publish-rate", "0"])
            .args(["--max-subscriptions", "100000"])
            .args(["--drain-delay", "0", "--drain-timeout", "2"])
            .args(["--log-format", "json"])
            .env("APPSYNC_RELAY_LOG", "warn");
        // Profiling hook, e.g. LOAD_BENCH_RELAY_WRAPPER="valgrind --tool=dhat
        // --dhat-out-file=/tmp/relay.dhat" (see benches/README.md).
        if let Ok(wrapper) = std::env::var("LOAD_BENCH_RELAY_WRAPPER") {
            let mut words = wrapper.split_whitespace();
            if let Some(program) = words.next() {
                let mut wrapped = Command::new(program);
                wrapped.args(words).arg(RELAY_BIN).args(cmd.get_args());
                for (k, v) in cmd.get_envs() {
                    if let Some(v) = v {
                        wrapped.env(k, v);
                    }
                }
                cmd = wrapped;
            }
        }
        let mut relay = Proc::spawn("relay", cmd, &dir.0)?;
        wait_for("relay", &mut relay, || {
            http_status(admin_addr, "/readyz") == Some(200)
        })?;

        let nginx = if with_nginx {
            match which("nginx") {
                Some(bin) => Some(start_nginx(&bin, &dir.0, &emu_host)?),
                None => {
                    println!(
                        "nginx not found on PATH: skipping the nginx baseline (apt-get install nginx-light)"
                    );
                    None
                }
            }
        } else {
            None
        };
        Ok(Stack {
            token,
            emu_host,
            emulator,
            relay,
            relay_addr,
            nginx,
            _idp: idp,
            _dir: dir,
        })
    }

    fn cookie(&self) -> String {
        use appsync_relay::session::{cookie_name, last_auth_user_cookie};
        format!(
            "{}={USERNAME}; {}={}",
            last_auth_user_cookie(common::CLIENT_ID),
            cookie_name(common::CLIENT_ID, USERNAME, "accessToken"),
            self.token
        )
    }

    fn targets(&self, sources: &Arc<Vec<Ipv4Addr>>) -> Vec<Target> {
        let mut out = Vec::new();
        let mut direct = appsync_endpoint(
            format!("ws://{}/event/realtime", self.emu_host),
            &self.token,
            &self.emu_host,
        );
        direct.sources = sources.clone();
        out.push(Target {
            kind: Kind::Direct,
            ep: direct,
            proxy: None,
        });
        if let Some((nginx, addr)) = &self.nginx {
            let mut ep = appsync_endpoint(
                format!("ws://{addr}/event/realtime"),
                &self.token,
                &self.emu_host,
            );
            ep.sources = sources.clone();
            let mut pids = vec![nginx.pid()];
            pids.extend(children_of(nginx.pid()));
            out.push(Target {
                kind: Kind::Nginx,
                ep,
                proxy: Some(Monitor { pids }),
            });
        }
        let mut ep = browser_endpoint(
            format!("ws://{}/event/realtime", self.relay_addr),
            self.cookie(),
            Some(ORIGIN_HEADER.into()),
        );
        ep.sources = sources.clone();
        out.push(Target {
            kind: Kind::Relay,
            ep,
            proxy: Some(Monitor {
                pids: vec![self.relay.pid()],
            }),
        });
        out
    }

    fn emulator_monitor(&self) -> Monitor {
        Monitor {
            pids: vec![self.emulator.pid()],
        }
    }

    fn check_alive(&mut self) -> Result<(), String> {
        self.emulator.check_alive()?;
        self.relay.check_alive()?;
        if let Some((n, _)) = &mut self.nginx {
            n.check_alive()?;
        }
        Ok(())
    }
}

fn which(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

/// nginx as the plainest WebSocket reverse proxy. `worker_processes auto`
/// (one per core, 2 here): the relay's runtime also uses every core, so
/// both proxies get the same CPU.
fn start_nginx(bin: &Path, dir: &Path, emu_host: &str) -> Result<(Proc, SocketAddr), String> {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .map_err(|_| "nginx address")?;
    let d = dir.display();
    let conf = format!(
        r#"worker_processes auto;
worker_rlimit_nofile 65536;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{
    worker_connections 32768;
}}
http {{
    access_log off;
    client_body_temp_path {d}/nginx-tmp/body;
    proxy_temp_path {d}/nginx-tmp/proxy;
    server {{
        listen {addr} backlog=4096;
        location / {{
            proxy_pass http://{emu_host};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }}
    }}
}}
"#
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(bin);
    cmd.arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf_path)
        .arg("-e")
        .arg(dir.join("nginx-error.log"))
        .args(["-g", "daemon off;"]);
    let mut proc_ = Proc::spawn("nginx", cmd, dir)?;
    wait_for("nginx", &mut proc_, || tcp_open(addr))?;
    // Workers fork right after the listener opens.
    let deadline = Instant::now() + Duration::from_secs(5);
    while children_of(proc_.pid()).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((proc_, addr))
}

// === targets and measurements ===

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Direct,
    Nginx,
    Relay,
    Custom,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Nginx => "nginx",
            Kind::Relay => "relay",
            Kind::Custom => "target",
        }
    }
}

#[derive(Clone, Debug)]
struct Target {
    kind: Kind,
    ep: Endpoint,
    /// The proxy's own processes (none for direct).
    proxy: Option<Monitor>,
}

/// What one run of one scenario on one target measured.
type Measure = Vec<(&'static str, f64)>;

/// Waits until the processes hold no more files than `baseline` (+ slack):
/// the previous scenario's connections are gone on both legs.
async fn settle(mons: &[&Monitor], baseline: usize) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let open: usize = mons.iter().map(|m| m.open_files()).sum();
        if open <= baseline + 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the allocator and the kernel catch up with the frees.
    tokio::time::sleep(Duration::from_millis(200)).await;
}

struct LoadSpec {
    subscribers: usize,
    /// Publishes per second; 0 = as fast as possible with a window.
    rate: u64,
    warmup: Duration,
    measure: Duration,
    channel: String,
}

struct PubStats {
    in_window: u64,
    acked: u64,
    errors: u64,
    lag: Histogram<u64>,
}

/// The publisher: its own thread and runtime, sleeping (with 1 ns timer
/// slack) until each publish is due, so pacing does not depend on the
/// subscribers' runtime being idle.
fn spawn_publisher(
    ep: Endpoint,
    channel: String,
    rate: u64,
    ready: tokio::sync::oneshot::Sender<Result<(), String>>,
    start: std::sync::mpsc::Receiver<(u64, u64, u64)>,
    done: tokio::sync::oneshot::Sender<Result<PubStats, String>>,
) {
    let body = move || {
        let _ = nix::sys::prctl::set_timerslack(1);
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = ready.send(Err(e.to_string()));
                return;
            }
        };
        let result = rt.block_on(async move {
            let setup = async {
                let mut ws = open(&ep, 0).await?;
                expect_reply(
                    &mut ws,
                    r#"{"type":"connection_init"}"#.into(),
                    "connection_ack",
                )
                .await?;
                Ok::<_, String>(ws)
            }
            .await;
            let ws = match setup {
                Ok(ws) => {
                    let _ = ready.send(Ok(()));
                    ws
                }
                Err(e) => {
                    let _ = ready.send(Err(e.clone()));
                    return Err(e);
                }
            };
            let (t0, w_start, w_end) = start.recv().map_err(|_| "no start signal")?;
            let (mut sink, mut stream) = ws.split();
            let acked = Arc::new(AtomicU64::new(0));
            let errors = Arc::new(AtomicU64::new(0));
            let progress = Arc::new(tokio::sync::Notify::new());
            let reader = {
                let (acked, errors, progress) = (acked.clone(), errors.clone(), progress.clone());
                tokio::spawn(async move {
                    while let Some(Ok(msg)) = stream.next().await {
                        if let Message::Text(t) = msg {
                            if t.as_str().contains("publish_success") {
                                acked.fetch_add(1, Ordering::Relaxed);
                            } else if t.as_str().contains("error") {
                                errors.fetch_add(1, Ordering::Relaxed);
                                acked.fetch_add(1, Ordering::Relaxed);
                            }
                            progress.notify_one();
                        }
                    }
                    progress.notify_one();
                })
            };
            let template = PublishTemplate::new(&channel, &ep.auth);
            let mut lag = histogram();
            let (mut sent, mut in_window) = (0u64, 0u64);
            if rate > 0 {
                let period = 1e9 / rate as f64;
                for k in 0u64.. {
                    let due = t0 + (k as f64 * period) as u64;
                    if due >= w_end {
                        break;
                    }
                    let now = now_ns();
                    if due > now {
                        std::thread::sleep(Duration::from_nanos(due - now));
                    }
                    lag.saturating_record(now_ns().saturating_sub(due).max(1));
                    sink.send(Message::Text(template.frame(due).into()))
                        .await
                        .map_err(|e| format!("publish: {e}"))?;
                    sent += 1;
                    if due >= w_start {
                        in_window += 1;
                    }
                    // Let the reader drain acknowledgements.
                    tokio::task::yield_now().await;
                }
            } else {
                const WINDOW: u64 = 64;
                tokio::time::sleep_until(instant_at(t0)).await;
                while now_ns() < w_end {
                    if sent - acked.load(Ordering::Relaxed) >= WINDOW {
                        let _ = tokio::time::timeout(IO_TIMEOUT, progress.notified()).await;
                        continue;
                    }
                    let now = now_ns();
                    sink.send(Message::Text(template.frame(now).into()))
                        .await
                        .map_err(|e| format!("publish: {e}"))?;
                    sent += 1;
                    if now >= w_start {
                        in_window += 1;
                    }
                }
            }
            // Everything sent is acknowledged (so fanned out) before the
            // socket closes: closing earlier could drop queued publishes.
            let deadline = Instant::now() + Duration::from_secs(5);
            while acked.load(Ordering::Relaxed) < sent && Instant::now() < deadline {
                let _ = tokio::time::timeout(Duration::from_millis(50), progress.notified()).await;
            }
            let _ = sink.close().await;
            reader.abort();
            Ok(PubStats {
                in_window,
                acked: acked.load(Ordering::Relaxed),
                errors: errors.load(Ordering::Relaxed),
                lag,
            })
        });
        let _ = done.send(result);
    };
    std::thread::Builder::new()
        .name("publisher".into())
        .spawn(body)
        .expect("publisher thread");
}

/// One load run: subscribers, a paced publisher, latency of every delivery
/// in the measured window, loss, and the processes' CPU.
async fn run_load(
    target: &Target,
    spec: &LoadSpec,
    emulator: Option<&Monitor>,
) -> Result<Measure, String> {
    let (mut subs, hs_rate, _) = open_many(&target.ep, spec.subscribers, 1).await?;
    subscribe_all(&mut subs, &target.ep, &spec.channel).await?;

    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (start_tx, start_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    spawn_publisher(
        target.ep.clone(),
        spec.channel.clone(),
        spec.rate,
        ready_tx,
        start_rx,
        done_tx,
    );
    ready_rx.await.map_err(|_| "publisher thread died")??;

    let t0 = now_ns() + 20_000_000;
    let w_start = t0 + spec.warmup.as_nanos() as u64;
    let w_end = w_start + spec.measure.as_nanos() as u64;
    let hist = Rc::new(RefCell::new(histogram()));
    let received = Rc::new(Cell::new(0u64));
    let closed = Rc::new(Cell::new(0u64));
    let cancel = CancellationToken::new();
    let mut tasks = Vec::with_capacity(subs.len());
    let n_subs = subs.len() as u64;
    for mut ws in subs {
        let (hist, received, closed, cancel) = (
            hist.clone(),
            received.clone(),
            closed.clone(),
            cancel.clone(),
        );
        tasks.push(tokio::task::spawn_local(async move {
            loop {
                tokio::select! {
                    biased;
                    msg = ws.next() => match msg {
                        Some(Ok(Message::Text(t))) => {
                            if let Some(stamp) = stamp_of(t.as_str()) {
                                let now = now_ns();
                                if stamp >= w_start && stamp < w_end {
                                    hist.borrow_mut().saturating_record(now.saturating_sub(stamp).max(1));
                                    received.set(received.get() + 1);
                                }
                            }
                        }
                        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                            closed.set(closed.get() + 1);
                            break;
                        }
                        Some(Ok(_)) => {}
                    },
                    () = cancel.cancelled() => break,
                }
            }
        }));
    }
    start_tx
        .send((t0, w_start, w_end))
        .map_err(|_| "publisher thread died")?;

    let mons: Vec<(&'static str, Monitor)> = [
        target.proxy.clone().map(|m| ("proxy", m)),
        emulator.cloned().map(|m| ("emulator", m)),
        Some((
            "client",
            Monitor {
                pids: vec![std::process::id()],
            },
        )),
    ]
    .into_iter()
    .flatten()
    .collect();
    let everything = bench_processes();
    tokio::time::sleep_until(instant_at(w_start)).await;
    let cpu0: Vec<f64> = mons.iter().map(|(_, m)| m.cpu_secs()).collect();
    let (busy0, ours0) = (machine_busy_secs(), everything.cpu_secs());
    let wall0 = Instant::now();
    tokio::time::sleep_until(instant_at(w_end)).await;
    let cpu1: Vec<f64> = mons.iter().map(|(_, m)| m.cpu_secs()).collect();
    let (busy1, ours1) = (machine_busy_secs(), everything.cpu_secs());
    let wall = wall0.elapsed().as_secs_f64();
    let rss = target.proxy.as_ref().map(|m| m.rss_kib());

    let stats = done_rx.await.map_err(|_| "publisher thread died")??;
    let expected = stats.in_window * n_subs;
    let deadline = Instant::now() + Duration::from_secs(3);
    while received.get() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cancel.cancel();
    for t in tasks {
        let _ = t.await;
    }

    let h = hist.borrow();
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let got = received.get();
    let mut m: Measure = vec![
        ("p50_us", us(0.5)),
        ("p90_us", us(0.9)),
        ("p99_us", us(0.99)),
        ("p999_us", us(0.999)),
        ("max_us", h.max() as f64 / 1000.0),
        ("delivered_per_s", got as f64 / spec.measure.as_secs_f64()),
        ("expected", expected as f64),
        ("lost", expected.saturating_sub(got) as f64),
        ("closed", closed.get() as f64),
        ("publish_errors", stats.errors as f64),
        (
            "unacked",
            (stats.in_window.saturating_sub(stats.acked)) as f64,
        ),
        (
            "send_lag_p99_us",
            stats.lag.value_at_quantile(0.99) as f64 / 1000.0,
        ),
    ];
    if spec.subscribers >= 10 {
        m.push(("sub_handshakes_per_s", hs_rate));
    }
    for (i, (name, _)) in mons.iter().enumerate() {
        let pct = (cpu1[i] - cpu0[i]) / wall * 100.0;
        m.push((
            match *name {
                "proxy" => "proxy_cpu_pct",
                "emulator" => "emulator_cpu_pct",
                _ => "client_cpu_pct",
            },
            pct,
        ));
        if *name == "proxy" && got > 0 {
            m.push((
                "proxy_cpu_us_per_delivery",
                (cpu1[i] - cpu0[i]) * 1e6 / got as f64,
            ));
        }
    }
    if let Some(rss) = rss {
        m.push(("proxy_rss_mib", rss as f64 / 1024.0));
    }
    // Approximate (kernel work on loopback is booked either way): a high
    // value means another job shared the machine during this run.
    m.push((
        "others_cpu_pct",
        ((busy1 - busy0) - (ours1 - ours0)).max(0.0) / wall * 100.0,
    ));
    Ok(m)
}

/// Opens `levels` connections in stages (each subscribed once, then idle)
/// and reports the proxy's RSS growth per connection and the handshake rate.
async fn memory_ramp(
    target: &Target,
    levels: &[usize],
    emulator: &Monitor,
) -> Result<Measure, String> {
    let proxy = target.proxy.as_ref();
    let rss0 = proxy.map(|m| m.rss_kib());
    let emu0 = emulator.rss_kib();
    let mut conns: Vec<Ws> = Vec::new();
    let mut m: Measure = Vec::new();
    let mut prev: Option<(usize, u64)> = rss0.map(|r| (0, r));
    for &level in levels {
        let add = level.saturating_sub(conns.len());
        let (mut new, rate, hist) = open_many(&target.ep, add, conns.len()).await?;
        subscribe_all(&mut new, &target.ep, "/bench/idle").await?;
        conns.extend(new);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let key =
            |what: &str| -> &'static str { Box::leak(format!("{what}@{level}").into_boxed_str()) };
        m.push((key("handshakes_per_s"), rate));
        m.push((
            key("handshake_p99_ms"),
            hist.value_at_quantile(0.99) as f64 / 1e6,
        ));
        m.push((key("emulator_rss_mib"), emulator.rss_kib() as f64 / 1024.0));
        m.push((
            key("emulator_kib_per_conn"),
            (emulator.rss_kib().saturating_sub(emu0)) as f64 / level as f64,
        ));
        if let (Some(p), Some(r0)) = (proxy, rss0) {
            let rss = p.rss_kib();
            m.push((key("proxy_rss_mib"), rss as f64 / 1024.0));
            m.push((
                key("proxy_kib_per_conn"),
                rss.saturating_sub(r0) as f64 / level as f64,
            ));
            if let Some((pl, pr)) = prev {
                m.push((
                    key("proxy_kib_per_conn_marginal"),
                    (rss as f64 - pr as f64) / (level - pl) as f64,
                ));
            }
            prev = Some((level, rss));
        }
    }
    if let Some(r0) = rss0 {
        m.push(("proxy_rss_idle_mib", r0 as f64 / 1024.0));
    }
    drop(conns);
    Ok(m)
}

async fn handshake_burst(target: &Target, n: usize) -> Result<Measure, String> {
    let cpu = target.proxy.as_ref().map(|m| m.cpu_secs());
    let started = Instant::now();
    let (conns, rate, hist) = open_many(&target.ep, n, 0).await?;
    let wall = started.elapsed().as_secs_f64();
    let mut m: Measure = vec![
        ("handshakes_per_s", rate),
        ("handshake_p50_ms", hist.value_at_quantile(0.5) as f64 / 1e6),
        (
            "handshake_p99_ms",
            hist.value_at_quantile(0.99) as f64 / 1e6,
        ),
    ];
    if let (Some(mon), Some(c0)) = (&target.proxy, cpu) {
        m.push(("proxy_cpu_pct", (mon.cpu_secs() - c0) / wall * 100.0));
        m.push((
            "proxy_cpu_us_per_handshake",
            (mon.cpu_secs() - c0) * 1e6 / n as f64,
        ));
    }
    drop(conns);
    Ok(m)
}

// === results ===

#[derive(Default)]
struct Results {
    /// (scenario, metric, target) → one value per repetition.
    values: HashMap<(String, &'static str, Kind), Vec<f64>>,
    order: Vec<(String, &'static str)>,
}

impl Results {
    fn add(&mut self, scenario: &str, kind: Kind, m: &Measure) {
        for (metric, v) in m {
            let key = (scenario.to_string(), *metric);
            if !self.order.contains(&key) {
                self.order.push(key.clone());
            }
            self.values
                .entry((scenario.to_string(), metric, kind))
                .or_default()
                .push(*v);
        }
    }

    fn median(&self, scenario: &str, metric: &str, kind: Kind) -> Option<f64> {
        let v = self
            .values
            .iter()
            .find(|((s, m, k), _)| s == scenario && *m == metric && *k == kind)
            .map(|(_, v)| v.clone())?;
        median(v)
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn fmt(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if v.abs() >= 1000.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 100.0 => format!("{v:.1}"),
        Some(v) if v.abs() >= 1.0 => format!("{v:.2}"),
        Some(v) => format!("{v:.3}"),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b.abs() > 1e-9 => format!("{:.2}×", a / b),
        _ => "–".into(),
    }
}

fn print_table(results: &Results, scenario: &str, kinds: &[Kind], title: &str) {
    let metrics: Vec<&'static str> = results
        .order
        .iter()
        .filter(|(s, _)| s == scenario)
        .map(|(_, m)| *m)
        .collect();
    if metrics.is_empty() {
        return;
    }
    println!("\n### {title}\n");
    let mut head = "| metric |".to_string();
    let mut rule = "|---|".to_string();
    for k in kinds {
        let _ = write!(head, " {} |", k.name());
        rule.push_str("---:|");
    }
    let with_ratio = kinds.contains(&Kind::Relay) && kinds.contains(&Kind::Nginx);
    if with_ratio {
        head.push_str(" relay/nginx |");
        rule.push_str("---:|");
    }
    println!("{head}\n{rule}");
    for metric in metrics {
        let mut row = format!("| {metric} |");
        for k in kinds {
            let _ = write!(row, " {} |", fmt(results.median(scenario, metric, *k)));
        }
        if with_ratio {
            let _ = write!(
                row,
                " {} |",
                ratio(
                    results.median(scenario, metric, Kind::Relay),
                    results.median(scenario, metric, Kind::Nginx)
                )
            );
        }
        println!("{row}");
    }
    // Latency over the floor: what each proxy adds to a direct connection.
    if kinds.contains(&Kind::Direct) {
        for q in ["p50_us", "p99_us"] {
            let direct = results.median(scenario, q, Kind::Direct);
            let Some(direct) = direct else { continue };
            let mut row = format!("| added {q} (over direct) |");
            let mut added = HashMap::new();
            for k in kinds {
                let v = results.median(scenario, q, *k).map(|v| v - direct);
                added.insert(*k, v);
                let _ = write!(row, " {} |", fmt(v));
            }
            if with_ratio {
                let _ = write!(
                    row,
                    " {} |",
                    ratio(added[&Kind::Relay], added[&Kind::Nginx])
                );
            }
            println!("{row}");
        }
    }
}

// === scenarios ===

struct Plan {
    reps: usize,
    levels: Vec<usize>,
    burst: usize,
    latency: LoadSpec,
    fanout: LoadSpec,
    fanmax_subs: usize,
    fanmax_rates: Vec<u64>,
    fanmax_measure: Duration,
}

fn plan(args: &Args) -> Plan {
    let s = |ch: &str| ch.to_string();
    if args.quick {
        Plan {
            reps: args.reps.unwrap_or(1),
            levels: vec![100, 200],
            burst: 100,
            latency: LoadSpec {
                subscribers: 1,
                rate: 1000,
                warmup: Duration::from_millis(300),
                measure: Duration::from_secs(1),
                channel: s("lat"),
            },
            fanout: LoadSpec {
                subscribers: 20,
                rate: 20,
                warmup: Duration::from_millis(300),
                measure: Duration::from_secs(1),
                channel: s("fan"),
            },
            fanmax_subs: 20,
            fanmax_rates: vec![50, 100],
            fanmax_measure: Duration::from_secs(1),
        }
    } else {
        Plan {
            reps: args.reps.unwrap_or(3),
            levels: vec![1000, 5000, 10_000],
            burst: 2000,
            latency: LoadSpec {
                subscribers: 1,
                rate: 5000,
                warmup: Duration::from_secs(1),
                measure: Duration::from_secs(10),
                channel: s("lat"),
            },
            fanout: LoadSpec {
                subscribers: 1000,
                rate: 50,
                warmup: Duration::from_secs(1),
                measure: Duration::from_secs(10),
                channel: s("fan"),
            },
            fanmax_subs: 1000,
            fanmax_rates: vec![50, 75, 100, 150, 200, 300, 400],
            fanmax_measure: Duration::from_millis(2500),
        }
    }
}

fn want(args: &Args, scenario: &str) -> bool {
    args.scenarios
        .as_ref()
        .is_none_or(|s| s.iter().any(|x| x == scenario))
}

fn log_run(scenario: &str, rep: usize, kind: Kind, m: &Result<Measure, String>) {
    match m {
        Ok(m) => {
            let pick: Vec<String> = m
                .iter()
                .filter(|(k, _)| {
                    matches!(
                        *k,
                        "p50_us"
                            | "p99_us"
                            | "delivered_per_s"
                            | "lost"
                            | "closed"
                            | "handshakes_per_s"
                            | "proxy_cpu_pct"
                    ) || k.starts_with("proxy_kib_per_conn@")
                        || k.starts_with("emulator_kib_per_conn@")
                })
                .map(|(k, v)| format!("{k}={}", fmt(Some(*v))))
                .collect();
            let others = m
                .iter()
                .find(|(k, _)| *k == "others_cpu_pct")
                .map_or(0.0, |(_, v)| *v);
            let noisy = if others > NOISY_OTHERS_PCT {
                format!("  (NOISY: other processes used {others:.0}% CPU)")
            } else {
                String::new()
            };
            println!(
                "  [{scenario} rep {rep}] {:<6} {}{noisy}",
                kind.name(),
                pick.join(" ")
            );
        }
        Err(e) => println!("  [{scenario} rep {rep}] {:<6} FAILED: {e}", kind.name()),
    }
}

/// Raises the open-files limit (children inherit it): 10k relayed
/// connections are 20k sockets in the relay and 10k here.
fn raise_nofile(want: u64) -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if soft >= want {
        return soft;
    }
    if setrlimit(Resource::RLIMIT_NOFILE, want, want.max(hard)).is_ok() {
        return want;
    }
    let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    hard.max(soft)
}

/// Client source addresses: one is enough unless the ephemeral port range
/// cannot hold both legs of `conns` connections.
fn client_sources(conns: usize) -> Vec<Ipv4Addr> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let v: Vec<u64> = s
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            Some(v.get(1)? - v.first()? + 1)
        })
        .unwrap_or(28_232);
    if range as usize >= 2 * conns + 4000 {
        Vec::new()
    } else {
        println!(
            "ephemeral port range holds {range} ports: clients use 127.0.0.2-127.0.0.9 as sources"
        );
        (2..10).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect()
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let rustc = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let nginx = which("nginx")
        .and_then(|b| Command::new(b).arg("-v").output().ok())
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
        .unwrap_or_else(|| "nginx: not installed".into());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "{} cores, {cpu}, Linux {}, {rustc}, {nginx}; load average at the end: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel.trim(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}

async fn standard(args: &Args, stack: &mut Stack, nofile: u64) -> Result<(), String> {
    let mut p = plan(args);
    // The relay holds two sockets per connection, in a process that
    // inherits our open-files limit: stay below it rather than fail.
    let fit = (nofile.saturating_sub(200) / 2) as usize / 100 * 100;
    if p.levels.iter().any(|&l| l > fit) {
        println!(
            "open-files limit {nofile} (hard; raising it needs CAP_SYS_RESOURCE): the relay can hold \
             {fit} connections (2 sockets each), so the top memory level is {fit}"
        );
        for l in &mut p.levels {
            *l = (*l).min(fit);
        }
        p.levels.dedup();
    }
    let max_conns = p
        .levels
        .iter()
        .copied()
        .max()
        .unwrap_or(0)
        .max(p.fanmax_subs);
    let sources = Arc::new(client_sources(max_conns));
    let targets = stack.targets(&sources);
    let kinds: Vec<Kind> = targets.iter().map(|t| t.kind).collect();
    let emu = stack.emulator_monitor();
    let all_mons = |t: &Target| -> Vec<Monitor> {
        let mut v = vec![emu.clone()];
        v.extend(t.proxy.clone());
        v
    };
    let mut results = Results::default();

    // Fresh processes first: per-connection memory is measured before any
    // other scenario has grown (and freed) the proxies' heaps.
    if want(args, "memory") {
        println!(
            "\n== idle connections: memory and handshake rate ({:?}) ==",
            p.levels
        );
        for t in &targets {
            let mons = all_mons(t);
            let refs: Vec<&Monitor> = mons.iter().collect();
            let base: usize = refs.iter().map(|m| m.open_files()).sum();
            let m = memory_ramp(t, &p.levels, &emu).await;
            log_run("memory", 0, t.kind, &m);
            if let Ok(m) = &m {
                results.add("memory", t.kind, m);
            }
            settle(&refs, base).await;
            stack.check_alive()?;
        }
    }

    for rep in 0..p.reps {
        // Alternate which target goes first.
        let mut order: Vec<&Target> = targets.iter().collect();
        order.rotate_left(rep % targets.len());
        for t in order {
            let mons = all_mons(t);
            let refs: Vec<&Monitor> = mons.iter().collect();
            let base: usize = refs.iter().map(|m| m.open_files()).sum();
            if want(args, "handshake") {
                let m = handshake_burst(t, p.burst).await;
                log_run("handshake", rep, t.kind, &m);
                if let Ok(m) = &m {
                    results.add("handshake", t.kind, m);
                }
                settle(&refs, base).await;
            }
            for (name, spec) in [("latency", &p.latency), ("fanout", &p.fanout)] {
                if !want(args, name) {
                    continue;
                }
                let spec = LoadSpec {
                    channel: format!("/bench/{}-{}-{rep}", spec.channel, t.kind.name()),
                    subscribers: spec.subscribers,
                    rate: spec.rate,
                    warmup: spec.warmup,
                    measure: spec.measure,
                };
                let m = run_load(t, &spec, Some(&emu)).await;
                log_run(name, rep, t.kind, &m);
                if let Ok(m) = &m {
                    results.add(name, t.kind, m);
                }
                settle(&refs, base).await;
            }
            stack.check_alive()?;
        }
    }

    if want(args, "fanmax") {
        println!(
            "\n== fan-out: highest delivery rate with no loss and p99 < {} ms ({} subscribers) ==",
            SUSTAINED_P99.as_millis(),
            p.fanmax_subs
        );
        for t in &targets {
            let mons = all_mons(t);
            let refs: Vec<&Monitor> = mons.iter().collect();
            let base: usize = refs.iter().map(|m| m.open_files()).sum();
            let mut best = 0.0f64;
            for (i, &rate) in p.fanmax_rates.iter().enumerate() {
                let spec = LoadSpec {
                    subscribers: p.fanmax_subs,
                    rate,
                    warmup: Duration::from_millis(500),
                    measure: p.fanmax_measure,
                    channel: format!("/bench/max-{}-{i}", t.kind.name()),
                };
                let m = run_load(t, &spec, Some(&emu)).await;
                settle(&refs, base).await;
                let ok = match &m {
                    Ok(m) => {
                        let get =
                            |k: &str| m.iter().find(|(n, _)| *n == k).map_or(0.0, |(_, v)| *v);
                        let pass = get("lost") == 0.0
                            && get("closed") == 0.0
                            && get("p99_us") <= SUSTAINED_P99.as_micros() as f64;
                        println!(
                            "  [fanmax] {:<6} {:>7} deliveries/s offered: delivered/s={} lost={} p99={} ms proxy_cpu={}% others_cpu={}% -> {}",
                            t.kind.name(),
                            rate * p.fanmax_subs as u64,
                            fmt(Some(get("delivered_per_s"))),
                            get("lost"),
                            fmt(Some(get("p99_us") / 1000.0)),
                            fmt(Some(get("proxy_cpu_pct"))),
                            fmt(Some(get("others_cpu_pct"))),
                            if pass { "sustained" } else { "not sustained" }
                        );
                        if pass {
                            best = get("delivered_per_s");
                        }
                        pass
                    }
                    Err(e) => {
                        println!("  [fanmax] {:<6} rate {rate}: FAILED: {e}", t.kind.name());
                        false
                    }
                };
                stack.check_alive()?;
                if !ok {
                    break;
                }
            }
            results.add(
                "fanmax",
                t.kind,
                &vec![("sustained_deliveries_per_s", best)],
            );
        }
    }

    println!(
        "\n## Results (medians of {} repetitions; memory and fanmax: one run)",
        p.reps
    );
    println!("\nMachine: {}", machine());
    println!(
        "\nLatency: publish due time → `data` received, µs; CPU: % of one core over the measured window."
    );
    print_table(
        &results,
        "memory",
        &kinds,
        "Idle connections (each: connection_init + 1 subscription)",
    );
    print_table(
        &results,
        "handshake",
        &kinds,
        &format!(
            "Handshake burst ({} connections, {HANDSHAKE_CONCURRENCY} in flight)",
            p.burst
        ),
    );
    print_table(
        &results,
        "latency",
        &kinds,
        &format!("Latency: 1 subscriber, {} publishes/s", p.latency.rate),
    );
    print_table(
        &results,
        "fanout",
        &kinds,
        &format!(
            "Fan-out: {} subscribers, {} publishes/s = {} deliveries/s",
            p.fanout.subscribers,
            p.fanout.rate,
            p.fanout.rate * p.fanout.subscribers as u64
        ),
    );
    print_table(
        &results,
        "fanmax",
        &kinds,
        "Fan-out: highest sustained delivery rate",
    );
    verdicts(&results, &p);
    Ok(())
}

fn verdicts(r: &Results, p: &Plan) {
    println!("\n### Targets\n");
    let noisy: usize = r
        .values
        .iter()
        .filter(|((_, m, _), _)| *m == "others_cpu_pct")
        .map(|(_, v)| v.iter().filter(|x| **x > NOISY_OTHERS_PCT).count())
        .sum();
    if noisy > 0 {
        println!(
            "NOTE: in {noisy} load run(s) other processes used more than {NOISY_OTHERS_PCT:.0}% CPU \
             (others_cpu_pct): latency ratios from a shared machine are unreliable; rerun on a quiet one.\n"
        );
    }
    let med = |s: &str, m: &str, k: Kind| r.median(s, m, k);
    let added = |q: &str, k: Kind| Some(med("latency", q, k)? - med("latency", q, Kind::Direct)?);
    let line = |name: &str, value: String, ok: Option<bool>| {
        let verdict = match ok {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "not measured",
        };
        println!("- {name}: {value} → {verdict}");
    };
    let cmp = |a: Option<f64>, b: Option<f64>, limit: f64| -> (String, Option<bool>) {
        match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => (format!("{:.2}× nginx", a / b), Some(a / b <= limit)),
            (Some(a), Some(b)) => (
                format!("relay {a:.1}, nginx {b:.1} (nginx adds nothing measurable)"),
                Some(a <= b.max(0.0) + 1.0),
            ),
            _ => ("–".into(), None),
        }
    };
    let (v, ok) = cmp(
        added("p50_us", Kind::Relay),
        added("p50_us", Kind::Nginx),
        1.0,
    );
    line(
        &format!("latency @ {}/s: added p50 ≤ 1.0× nginx's", p.latency.rate),
        v,
        ok,
    );
    let (v, ok) = cmp(
        added("p99_us", Kind::Relay),
        added("p99_us", Kind::Nginx),
        1.2,
    );
    line(
        &format!("latency @ {}/s: added p99 ≤ 1.2× nginx's", p.latency.rate),
        v,
        ok,
    );
    let lost = med("fanout", "lost", Kind::Relay).zip(med("fanout", "closed", Kind::Relay));
    line(
        "fan-out: nothing lost",
        lost.map_or("–".into(), |(l, c)| {
            format!("{l} lost, {c} closed (median)")
        }),
        lost.map(|(l, c)| l == 0.0 && c == 0.0),
    );
    let (v, ok) = cmp(
        med("fanout", "p99_us", Kind::Relay),
        med("fanout", "p99_us", Kind::Nginx),
        1.2,
    );
    line("fan-out: p99 ≤ 1.2× nginx's", v, ok);
    let (v, _) = cmp(
        med("fanmax", "sustained_deliveries_per_s", Kind::Relay),
        med("fanmax", "sustained_deliveries_per_s", Kind::Nginx),
        f64::INFINITY,
    );
    println!(
        "- fan-out: highest sustained delivery rate, relay vs nginx: {v} (reported, no target)"
    );
    let top = p.levels.iter().copied().max().unwrap_or(0);
    let per = med(
        "memory",
        Box::leak(format!("proxy_kib_per_conn@{top}").into_boxed_str()),
        Kind::Relay,
    );
    line(
        &format!("memory: ≤ 8 KiB RSS per idle relayed connection at {top}"),
        per.map_or("–".into(), |v| format!("{v:.1} KiB")),
        per.map(|v| v <= 8.0),
    );
    let hs = med("handshake", "handshakes_per_s", Kind::Relay);
    line(
        "handshakes: ≥ 2 000 new authenticated connections/s (cached verification)",
        hs.map_or("–".into(), |v| format!("{v:.0}/s")),
        hs.map(|v| v >= 2000.0),
    );
}

/// `--connections/--rate/--duration`: one load spec, on the local stack
/// (with baselines) or on `--target`.
async fn custom(args: &Args, stack: Option<&mut Stack>) -> Result<(), String> {
    let spec = LoadSpec {
        subscribers: args.connections.unwrap_or(1),
        rate: args.rate.unwrap_or(1000),
        warmup: Duration::from_secs(1),
        measure: Duration::from_secs_f64(args.duration.unwrap_or(10.0)),
        channel: args
            .channel
            .clone()
            .unwrap_or_else(|| "/default/loadtest".into()),
    };
    let sources = Arc::new(client_sources(spec.subscribers));
    let (targets, emu): (Vec<Target>, Option<Monitor>) = match stack {
        Some(stack) => (stack.targets(&sources), Some(stack.emulator_monitor())),
        None => {
            let url = args.target.clone().ok_or("no target")?;
            let mut ep = match (&args.token, &args.host) {
                (Some(token), Some(host)) => appsync_endpoint(url, token, host),
                (None, None) => browser_endpoint(
                    url,
                    args.cookie.clone().unwrap_or_default(),
                    args.origin.clone(),
                ),
                _ => return Err("--token and --host go together".into()),
            };
            ep.explicit = true;
            let proxy = args.pid.map(|pid| Monitor { pids: vec![pid] });
            (
                vec![Target {
                    kind: Kind::Custom,
                    ep,
                    proxy,
                }],
                None,
            )
        }
    };
    let kinds: Vec<Kind> = targets.iter().map(|t| t.kind).collect();
    let reps = if args.target.is_some() {
        1
    } else {
        args.reps.unwrap_or(1)
    };
    let mut results = Results::default();
    for rep in 0..reps {
        let mut order: Vec<&Target> = targets.iter().collect();
        order.rotate_left(rep % targets.len());
        for t in order {
            let spec = LoadSpec {
                channel: if args.target.is_some() {
                    spec.channel.clone()
                } else {
                    format!("/bench/custom-{}-{rep}", t.kind.name())
                },
                ..spec_clone(&spec)
            };
            let m = run_load(t, &spec, emu.as_ref()).await;
            log_run("custom", rep, t.kind, &m);
            match m {
                Ok(m) => results.add("custom", t.kind, &m),
                Err(e) if args.target.is_some() => return Err(e),
                Err(_) => {}
            }
            if let Some(mon) = &t.proxy {
                let mut mons = vec![mon];
                if let Some(e) = &emu {
                    mons.push(e);
                }
                settle(&mons, 0).await;
            }
        }
    }
    println!("\nMachine (client side): {}", machine());
    print_table(
        &results,
        "custom",
        &kinds,
        &format!(
            "{} subscriber(s), {} publishes/s, {} s",
            spec.subscribers,
            if spec.rate == 0 {
                "max".to_string()
            } else {
                spec.rate.to_string()
            },
            spec.measure.as_secs_f64()
        ),
    );
    Ok(())
}

fn spec_clone(s: &LoadSpec) -> LoadSpec {
    LoadSpec {
        subscribers: s.subscribers,
        rate: s.rate,
        warmup: s.warmup,
        measure: s.measure,
        channel: s.channel.clone(),
    }
}

/// Stops everything if the run overstays its budget: the harness must end
/// on its own even if a peer hangs.
fn watchdog(limit: Duration) {
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            std::thread::sleep(limit);
            eprintln!("load bench: over its {limit:?} budget, stopping");
            let pids = CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).clone();
            for pid in &pids {
                terminate(*pid, nix::sys::signal::Signal::SIGTERM);
            }
            std::thread::sleep(Duration::from_secs(3));
            for pid in &pids {
                terminate(*pid, nix::sys::signal::Signal::SIGKILL);
            }
            std::process::exit(3);
        })
        .expect("watchdog thread");
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    now_ns();
    watchdog(if args.quick {
        Duration::from_secs(180)
    } else {
        Duration::from_secs(30 * 60)
    });
    let limit = raise_nofile(65_536);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let local = tokio::task::LocalSet::new();
    let outcome = local.block_on(&rt, async {
        if args.target.is_some() {
            return custom(&args, None).await;
        }
        let mut stack = Stack::start(!args.no_nginx)?;
        println!(
            "stack: emulator {} · relay {}{} · open-files limit {limit}",
            stack.emu_host,
            stack.relay_addr,
            stack
                .nginx
                .as_ref()
                .map(|(_, a)| format!(" · nginx {a}"))
                .unwrap_or_default()
        );
        if args.connections.is_some() || args.rate.is_some() || args.duration.is_some() {
            custom(&args, Some(&mut stack)).await
        } else {
            standard(&args, &mut stack, limit).await
        }
    });
    if let Err(e) = outcome {
        eprintln!("load bench failed: {e}");
        std::process::exit(1);
    }
}
