//! The AppSync hosts, reached as the relay reaches them: the name resolved
//! (or `--appsync-address` used instead), a TCP connection, and for
//! `https`/`wss` a TLS handshake that checks the certificate against the
//! same roots (public, plus `--upstream-ca-file`) with the host name as SNI.

use super::report::{peer_text, Report};
use crate::config::Config;
use crate::rewrite::UpstreamAuth;
use crate::upstream::{self, UpstreamConfig};
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;

pub async fn appsync_hosts(config: &Config, report: &mut Report) {
    reach("appsync_http", &config.http_endpoint, config, report).await;
    reach(
        "appsync_realtime",
        &config.realtime_endpoint,
        config,
        report,
    )
    .await;
}

async fn reach(check: &'static str, url: &url::Url, config: &Config, report: &mut Report) {
    let tls = matches!(url.scheme(), "https" | "wss");
    let Some(host) = url
        .host_str()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
    else {
        return report.fail(check, format!("{url} has no host"), "give a full URL");
    };
    let port = url.port().unwrap_or(if tls { 443 } else { 80 });
    let timeout = config.upstream_timeout;
    let addrs: Vec<SocketAddr> = match config.appsync_address {
        Some(ip) => vec![SocketAddr::new(ip, port)],
        None => match tokio::time::timeout(timeout, tokio::net::lookup_host((host, port))).await {
            Ok(Ok(a)) => a.collect(),
            Ok(Err(e)) => {
                return report.fail(
                    check,
                    format!("{host} does not resolve: {e}"),
                    "check the API id and region in the endpoint (the AppSync console's Settings lists both endpoints), and this host's DNS",
                )
            }
            Err(_) => {
                return report.fail(check, format!("resolving {host} took over {}s", timeout.as_secs()), "check this host's DNS")
            }
        },
    };
    if addrs.is_empty() {
        return report.fail(
            check,
            format!("{host} resolves to no address"),
            "check the endpoint's host name",
        );
    }
    // Every address in turn, as the relay's connector tries them.
    let mut last = String::new();
    let mut connected = None;
    for addr in &addrs {
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                connected = Some((s, *addr));
                break;
            }
            Ok(Err(e)) => last = format!("{host} ({addr}) refuses connections: {e}"),
            Err(_) => {
                last = format!(
                    "{host} ({addr}) did not accept a connection within {}s",
                    timeout.as_secs()
                )
            }
        }
    }
    let Some((tcp, addr)) = connected else {
        return report.fail(
            check,
            last,
            "check the endpoint's port, and any firewall, network policy or egress proxy between this host and AppSync",
        );
    };
    if !tls {
        return report.pass(
            check,
            format!("{host} reached at {addr} (plain, no TLS to check)"),
        );
    }
    let name = match ServerName::try_from(host.to_owned()) {
        Ok(n) => n,
        Err(e) => return report.fail(check, format!("{host}: {e}"), "give a valid host name"),
    };
    let handshake = TlsConnector::from(config.upstream_tls.clone()).connect(name, tcp);
    match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(_)) => report.pass(check, format!("{host} reached at {addr}, TLS certificate valid for it")),
        Ok(Err(e)) => report.fail(
            check,
            format!("TLS with {host} failed: {e}"),
            "a TLS-intercepting proxy needs its CA in --upstream-ca-file; otherwise the endpoint's host name is wrong",
        ),
        Err(_) => report.fail(
            check,
            format!("TLS with {host} did not complete within {}s", timeout.as_secs()),
            "check egress from this host to AppSync",
        ),
    }
}

/// The relay-owned shared-channel connections' API key
/// (`--shared-api-key-file`): AppSync acknowledges a connection made with it.
pub async fn shared_api_key(upstream: &UpstreamConfig, key: &UpstreamAuth, report: &mut Report) {
    const CHECK: &str = "shared_api_key";
    let fix = "--shared-api-key-file must hold an API key of this AppSync API (the console's Settings lists them), not expired, with API key among the API's auth modes";
    let mut ws = match upstream::connect(upstream, key).await {
        Ok(ws) => ws,
        Err(e) => {
            return report.fail(
                CHECK,
                format!("AppSync refused a connection with the key: {e}"),
                fix,
            )
        }
    };
    let init = ws
        .send(Message::Text(r#"{"type":"connection_init"}"#.into()))
        .await;
    let answer = async {
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Text(t) = msg {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap_or_default();
                if v["type"] != "ka" {
                    return v["type"].as_str().map(peer_text);
                }
            }
        }
        None
    };
    let answer = match init {
        Ok(()) => tokio::time::timeout(upstream.connect_timeout, answer)
            .await
            .ok()
            .flatten(),
        Err(_) => None,
    };
    let _ = ws.close(None).await;
    match answer.as_deref() {
        Some("connection_ack") => report.pass(
            CHECK,
            "AppSync acknowledged a connection made with the shared-channel API key",
        ),
        Some(other) => report.fail(
            CHECK,
            format!("AppSync answered the key's connection_init with {other}"),
            fix,
        ),
        None => report.fail(
            CHECK,
            "AppSync did not acknowledge the key's connection",
            fix,
        ),
    }
}

/// `--redis-url`: Redis answers a PING with the configured credentials.
pub async fn redis(cfg: &crate::cluster::ClusterConfig, report: &mut Report) {
    const CHECK: &str = "redis";
    let shown = crate::cluster::redact_url(&cfg.url);
    let fix = "check --redis-url (host, port, rediss:// for TLS), the password (in the URL or --redis-password-file), and the network policy between this host and Redis";
    let client = match cfg.client() {
        Ok(c) => c,
        Err(e) => return report.fail(CHECK, e, fix),
    };
    let ping = async {
        let conn_cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(std::time::Duration::from_secs(2)))
            .set_response_timeout(Some(std::time::Duration::from_secs(2)));
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&conn_cfg)
            .await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    match tokio::time::timeout(std::time::Duration::from_secs(5), ping).await {
        Ok(Ok(_)) => {
            let refresh = if cfg.session_keys.is_some() {
                "refreshes are single across replicas"
            } else {
                "refreshes are NOT coordinated across replicas (no --session-key-file)"
            };
            report.pass(
                CHECK,
                format!(
                    "{shown} answers; ends of sessions and per-user limits are shared; {refresh}"
                ),
            )
        }
        Ok(Err(e)) => {
            let mut e = e.to_string();
            if let Some(pw) = cfg.password.as_deref().filter(|p| !p.is_empty()) {
                e = e.replace(pw, "<redacted>");
            }
            report.fail(CHECK, format!("{shown}: {}", peer_text(&e)), fix)
        }
        Err(_) => report.fail(CHECK, format!("{shown} did not answer within 5s"), fix),
    }
}
