//! A real Redis (Debian's `redis-server`) on a loopback port, nothing
//! persisted; stopped on drop. `stop` and `start_again` (same port, empty)
//! are how the tests take it away and bring it back.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
    /// TLS only (`rediss://`), with this self-signed certificate (PEM).
    pub tls_cert: Option<String>,
}

fn bin() -> PathBuf {
    let p = std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "/usr/bin/redis-server".into());
    let p = PathBuf::from(p);
    assert!(
        p.exists(),
        "redis-server is not installed at {}: run `bash tests/run.sh --install-only` (as root: \
         apt-get install redis-server), or set REDIS_SERVER_BIN",
        p.display()
    );
    p
}

impl Redis {
    pub async fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("relay-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = Redis {
            port,
            child: None,
            dir,
            tls_cert: None,
        };
        r.start_again().await;
        r
    }

    /// Speaking TLS only, with a self-signed certificate for 127.0.0.1.
    pub async fn start_tls() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir =
            std::env::temp_dir().join(format!("relay-redis-tls-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = appsync_relay::tls::self_signed(&["127.0.0.1"]).unwrap();
        std::fs::write(dir.join("cert.pem"), &cert).unwrap();
        std::fs::write(dir.join("key.pem"), &key).unwrap();
        let mut r = Redis {
            port,
            child: None,
            dir,
            tls_cert: Some(cert),
        };
        r.start_again().await;
        r
    }

    pub fn url(&self) -> String {
        match self.tls_cert {
            Some(_) => format!("rediss://127.0.0.1:{}/", self.port),
            None => format!("redis://127.0.0.1:{}/", self.port),
        }
    }

    /// The certificate file a client must trust (TLS only).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    fn client(&self) -> redis::Client {
        match &self.tls_cert {
            None => redis::Client::open(self.url()).unwrap(),
            Some(cert) => redis::Client::build_with_tls(
                self.url(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(cert.clone().into_bytes()),
                },
            )
            .unwrap(),
        }
    }

    /// (Re)starts the server on the same port, empty.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "already running");
        let port = self.port.to_string();
        let mut cmd = Command::new(bin());
        match &self.tls_cert {
            None => cmd.args(["--port", &port]),
            Some(_) => cmd
                .args([
                    "--port",
                    "0",
                    "--tls-port",
                    &port,
                    "--tls-auth-clients",
                    "no",
                ])
                .arg("--tls-cert-file")
                .arg(self.dir.join("cert.pem"))
                .arg("--tls-key-file")
                .arg(self.dir.join("key.pem")),
        };
        let child = cmd
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.ping().await {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the server (as a crash would: nothing saved).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    async fn ping(&self) -> bool {
        let client = self.client();
        let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
            return false;
        };
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .is_ok()
    }

    /// Every key with its value as text (strings, and stream entries'
    /// fields), for looking for secrets.
    pub async fn dump(&self) -> Vec<(String, String)> {
        let mut conn = self
            .client()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut conn)
            .await
            .unwrap();
        let mut out = Vec::new();
        for k in keys {
            let kind: String = redis::cmd("TYPE")
                .arg(&k)
                .query_async(&mut conn)
                .await
                .unwrap();
            let value = match kind.as_str() {
                // (A key may expire between TYPE and GET: then it is gone.)
                "string" => match redis::cmd("GET")
                    .arg(&k)
                    .query_async::<Option<String>>(&mut conn)
                    .await
                    .unwrap()
                {
                    Some(v) => v,
                    None => continue,
                },
                "stream" => {
                    let v: redis::Value = redis::cmd("XRANGE")
                        .arg(&k)
                        .arg("-")
                        .arg("+")
                        .query_async(&mut conn)
                        .await
                        .unwrap();
                    format!("{v:?}")
                }
                "hash" | "set" | "zset" => {
                    let cmd = match kind.as_str() {
                        "hash" => "HGETALL",
                        "set" => "SMEMBERS",
                        _ => "ZRANGE",
                    };
                    let mut c = redis::cmd(cmd);
                    c.arg(&k);
                    if kind == "zset" {
                        c.arg(0).arg(-1);
                    }
                    let v: redis::Value = c.query_async(&mut conn).await.unwrap();
                    format!("{v:?}")
                }
                "none" => continue,
                other => format!("<{other}>"),
            };
            out.push((k, value));
        }
        out
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP path to Redis that a test can cut (every connection dropped, new
/// ones refused) and heal: a network partition of one replica only.
pub struct Cuttable {
    pub port: u16,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    generation: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
}

impl Cuttable {
    pub async fn start(to_port: u16) -> Cuttable {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (gen_tx, _) = tokio::sync::watch::channel(0u64);
        let generation = std::sync::Arc::new(gen_tx);
        let (o, g) = (open.clone(), generation.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !o.load(Ordering::SeqCst) {
                    continue; // dropped at once
                }
                let mut cut = g.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", to_port)).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Cuttable {
            port,
            open,
            generation,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn heal(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
