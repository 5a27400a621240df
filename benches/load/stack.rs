//! The local stack: a JWKS (in this process), the emulator and the relay
//! (as `appsync-relay` child processes, the binary rebuilt if stale) and
//! nginx, and the targets (direct, nginx, relay, and the relay's shared
//! channels) they offer clients.

use crate::clients::{appsync_endpoint, browser_endpoint, Endpoint};
use crate::common;
use crate::measure::{Kind, Target};
use crate::monitor::{children_of, Monitor};
use crate::nginx::start_nginx;
use crate::processes::{
    free_port, http_get, http_status, tcp_open, wait_for, which, Proc, TempDir,
};
use crate::tls::TlsFiles;
use crate::{MANIFEST_DIR, ORIGIN_HEADER, RELAY_BIN, USERNAME};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

/// Channels below this are shared by the relay (`--shared-channel`).
pub(crate) const SHARED_PREFIX: &str = "/bench/shared";
const SHARED_PREFIX_PATTERN: &str = "/bench/shared/*";

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

/// Which legs are TLS: `Plain` is `ws://` everywhere; `Tls` is what a
/// deployment that terminates TLS at the relay runs: `wss://` from the
/// clients to the proxy and from the proxy to the emulator (as to AppSync),
/// for nginx exactly as for the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Legs {
    Plain,
    Tls,
}

impl Legs {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Legs::Plain => "plain legs",
            Legs::Tls => "TLS on both legs",
        }
    }
}

/// The local stack: JWKS, emulator, relay and (if installed) nginx.
pub(crate) struct Stack {
    pub(crate) legs: Legs,
    tls: Option<TlsFiles>,
    token: String,
    pub(crate) emu_host: String,
    /// The emulator's admin listener: its AppSync operations meter.
    emu_admin: SocketAddr,
    emulator: Proc,
    relay: Proc,
    pub(crate) relay_addr: SocketAddr,
    pub(crate) nginx: Option<(Proc, SocketAddr)>,
    idp: common::Idp,
    // Last, so the processes are stopped before their directory goes.
    _dir: TempDir,
}

impl Stack {
    pub(crate) fn start(with_nginx: bool, legs: Legs) -> Result<Stack, String> {
        ensure_relay_binary()?;
        let dir = TempDir::new()?;
        let tls = match legs {
            Legs::Plain => None,
            Legs::Tls => Some(TlsFiles::write(&dir.0)?),
        };
        let http = if tls.is_some() { "https" } else { "http" };
        let idp = common::Idp::start();
        // Long-lived, so no renewal happens during the run; one user, so
        // every handshake after the first hits the relay's token cache.
        let token = idp.access_token(USERNAME, Duration::from_secs(6 * 3600));

        let emu_port = free_port();
        let emu_host = format!("127.0.0.1:{emu_port}");
        let emu_admin: SocketAddr = format!("127.0.0.1:{}", free_port())
            .parse()
            .map_err(|_| "emulator admin address")?;
        let mut cmd = Command::new(RELAY_BIN);
        cmd.args(["emulate", "--listen", &emu_host])
            .args(["--admin-listen", &emu_admin.to_string()])
            .args(["--cognito-issuer", &idp.issuer()])
            .args(["--cognito-jwks-url", &idp.jwks_url()])
            .args(["--cognito-client-id", common::CLIENT_ID])
            .args(["--http-host", &emu_host])
            .args(["--namespace", "default", "--namespace", "bench"])
            .env("APPSYNC_RELAY_LOG", "warn");
        if let Some(f) = &tls {
            cmd.arg("--tls-cert")
                .arg(&f.cert)
                .arg("--tls-key")
                .arg(&f.key);
        }
        let mut emulator = Proc::spawn("emulator", cmd, &dir.0)?;
        let emu_addr: SocketAddr = emu_host.parse().map_err(|_| "emulator address")?;
        wait_for("emulator", &mut emulator, || {
            tcp_open(emu_addr) && tcp_open(emu_admin)
        })?;

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
                &format!("{http}://{emu_host}/event"),
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
            // Only channels under it are shared: every other scenario's
            // channels relay exactly as without the flag.
            .args(["--shared-channel", SHARED_PREFIX_PATTERN])
            .args(["--drain-delay", "0", "--drain-timeout", "2"])
            .args(["--log-format", "json"])
            .env("APPSYNC_RELAY_LOG", "warn");
        if let Some(f) = &tls {
            cmd.arg("--tls-cert")
                .arg(&f.cert)
                .arg("--tls-key")
                .arg(&f.key);
            cmd.arg("--upstream-ca-file").arg(&f.cert);
        }
        // More relay flags, after the bench's own (later ones win), e.g.
        // LOAD_BENCH_RELAY_ARGS="--redis-url redis://127.0.0.1:6390/
        // --max-connections-per-user 1000000" to measure the replicas'
        // coordination on the handshake path (see benches/README.md).
        if let Ok(extra) = std::env::var("LOAD_BENCH_RELAY_ARGS") {
            cmd.args(extra.split_whitespace());
        }
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
                Some(bin) => Some(start_nginx(&bin, &dir.0, &emu_host, tls.as_ref())?),
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
            legs,
            tls,
            token,
            emu_host,
            emu_admin,
            emulator,
            relay,
            relay_addr,
            nginx,
            idp,
            _dir: dir,
        })
    }

    fn ws_scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "wss"
        } else {
            "ws"
        }
    }

    /// How a client with `username`'s `token` reaches the target `kind`:
    /// AppSync's own way for direct and nginx, a browser's (session
    /// cookies, Origin, placeholder key) for the relay.
    pub(crate) fn endpoint(
        &self,
        kind: Kind,
        username: &str,
        token: &str,
        sources: &Arc<Vec<Ipv4Addr>>,
    ) -> Option<Endpoint> {
        use appsync_relay::session::{cookie_name, last_auth_user_cookie};
        let ws = self.ws_scheme();
        let url = |addr: &dyn std::fmt::Display| format!("{ws}://{addr}/event/realtime");
        let mut ep = match kind {
            Kind::Direct => appsync_endpoint(url(&self.emu_host), token, &self.emu_host),
            Kind::Nginx => appsync_endpoint(url(&self.nginx.as_ref()?.1), token, &self.emu_host),
            Kind::Relay | Kind::Shared => browser_endpoint(
                url(&self.relay_addr),
                format!(
                    "{}={username}; {}={token}",
                    last_auth_user_cookie(common::CLIENT_ID),
                    cookie_name(common::CLIENT_ID, username, "accessToken"),
                ),
                Some(ORIGIN_HEADER.into()),
            ),
            Kind::Custom => return None,
        };
        ep.sources = sources.clone();
        ep.tls = self.tls.as_ref().map(TlsFiles::client);
        Some(ep)
    }

    /// `n` users, each with a freshly signed token no process has seen:
    /// what a reconnect storm after a deploy looks like to the verifiers.
    pub(crate) fn mint_users(&self, n: usize) -> Vec<(String, String)> {
        let idp = &self.idp;
        let lifetime = Duration::from_secs(3600);
        std::thread::scope(|s| {
            let per = n.div_ceil(2);
            let halves: Vec<_> = (0..2)
                .map(|h| {
                    s.spawn(move || {
                        (h * per..((h + 1) * per).min(n))
                            .map(|i| {
                                let user = format!("storm-{i}-{:08x}", rand::random::<u32>());
                                let token = idp.access_token(&user, lifetime);
                                (user, token)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            halves
                .into_iter()
                .flat_map(|h| h.join().expect("minting thread"))
                .collect()
        })
    }

    pub(crate) fn targets(&self, sources: &Arc<Vec<Ipv4Addr>>) -> Vec<Target> {
        let mut out = Vec::new();
        for kind in [Kind::Direct, Kind::Nginx, Kind::Relay] {
            let Some(ep) = self.endpoint(kind, USERNAME, &self.token, sources) else {
                continue;
            };
            let proxy = match kind {
                Kind::Nginx => self.nginx.as_ref().map(|(nginx, _)| {
                    let mut pids = vec![nginx.pid()];
                    pids.extend(children_of(nginx.pid()));
                    Monitor { pids }
                }),
                Kind::Relay => Some(Monitor {
                    pids: vec![self.relay.pid()],
                }),
                _ => None,
            };
            out.push(Target { kind, ep, proxy });
        }
        out
    }

    /// The relay again, as the target of channels it shares (under
    /// [`SHARED_PREFIX`]): same process, same endpoint.
    pub(crate) fn shared_target(&self, sources: &Arc<Vec<Ipv4Addr>>) -> Option<Target> {
        Some(Target {
            kind: Kind::Shared,
            ep: self.endpoint(Kind::Shared, USERNAME, &self.token, sources)?,
            proxy: Some(Monitor {
                pids: vec![self.relay.pid()],
            }),
        })
    }

    /// The emulator's AppSync operations so far, by kind (`delivery`,
    /// `publish`, `subscribe`, ...), read from its meter.
    pub(crate) fn emulator_operations(&self) -> Result<HashMap<String, f64>, String> {
        let body =
            http_get(self.emu_admin, "/metrics").ok_or("the emulator's meter did not answer")?;
        let mut ops = HashMap::new();
        for line in body.lines() {
            let Some(rest) = line.strip_prefix("appsync_emulator_operations_total{kind=\"") else {
                continue;
            };
            let Some((kind, value)) = rest.split_once("\"} ") else {
                continue;
            };
            if let Ok(v) = value.trim().parse::<f64>() {
                ops.insert(kind.to_owned(), v);
            }
        }
        Ok(ops)
    }

    pub(crate) fn emulator_monitor(&self) -> Monitor {
        Monitor {
            pids: vec![self.emulator.pid()],
        }
    }

    pub(crate) fn check_alive(&mut self) -> Result<(), String> {
        self.emulator.check_alive()?;
        self.relay.check_alive()?;
        if let Some((n, _)) = &mut self.nginx {
            n.check_alive()?;
        }
        Ok(())
    }
}
