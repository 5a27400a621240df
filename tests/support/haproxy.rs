//! A real load balancer (Debian's `haproxy`) in front of relay replicas:
//! round robin per connection, WebSockets tunnelled. Stopped on drop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Haproxy {
    pub addr: SocketAddr,
    child: Child,
    dir: PathBuf,
}

impl Haproxy {
    pub async fn start(backends: &[SocketAddr]) -> Haproxy {
        let bin = std::env::var("HAPROXY_BIN").unwrap_or_else(|_| "/usr/sbin/haproxy".into());
        assert!(
            std::path::Path::new(&bin).exists(),
            "haproxy is not installed at {bin}: run `bash tests/run.sh --install-only` (as root: \
             apt-get install haproxy), or set HAPROXY_BIN"
        );
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let dir = std::env::temp_dir().join(format!(
            "relay-haproxy-{}-{}",
            std::process::id(),
            addr.port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let servers: String = backends
            .iter()
            .enumerate()
            .map(|(i, b)| format!("  server r{i} {b}\n"))
            .collect();
        let cfg = format!(
            "global\n  maxconn 4096\n\
             defaults\n  mode http\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n  timeout tunnel 120s\n\
             frontend fe\n  bind {addr}\n  default_backend relays\n\
             backend relays\n  balance roundrobin\n{servers}"
        );
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let child = Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting haproxy");
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(Instant::now() < deadline, "haproxy did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Haproxy { addr, child, dir }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
