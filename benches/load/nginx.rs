//! The nginx baseline: a minimal WebSocket reverse-proxy configuration in
//! front of the emulator, started as a child process.

use crate::monitor::children_of;
use crate::processes::{free_port, tcp_open, wait_for, Proc};
use crate::tls::TlsFiles;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// nginx as the plainest WebSocket reverse proxy. `worker_processes auto`
/// (one per core, 2 here): the relay's runtime also uses every core, so
/// both proxies get the same CPU. With `tls`, configured as the relay is:
/// TLS to the browser with the stack's certificate, and TLS to the
/// emulator verified against that same certificate as the only trust
/// anchor (nginx checks DNS names only, hence `proxy_ssl_name localhost`),
/// upstream sessions resumed (nginx's default, as rustls's).
pub(crate) fn start_nginx(
    bin: &Path,
    dir: &Path,
    emu_host: &str,
    tls: Option<&TlsFiles>,
) -> Result<(Proc, SocketAddr), String> {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .map_err(|_| "nginx address")?;
    let d = dir.display();
    let (listen_tls, scheme, upstream_tls) = match tls {
        None => (String::new(), "http", String::new()),
        Some(f) => (
            format!(
                " ssl;\n        ssl_certificate {};\n        ssl_certificate_key {}",
                f.cert.display(),
                f.key.display()
            ),
            "https",
            format!(
                "\n            proxy_ssl_verify on;\n            proxy_ssl_trusted_certificate {};\n            proxy_ssl_name localhost;\n            proxy_ssl_server_name on;",
                f.cert.display()
            ),
        ),
    };
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
        listen {addr} backlog=4096{listen_tls};
        location / {{
            proxy_pass {scheme}://{emu_host};{upstream_tls}
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
