//! The AppSync hosts, reached as the relay reaches them: the name resolved
//! (or `--appsync-address` used instead), a TCP connection, and for
//! `https`/`wss` a TLS handshake that checks the certificate against the
//! same roots (public, plus `--upstream-ca-file`) with the host name as SNI.

use super::report::Report;
use crate::config::Config;
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

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
    let Some(addr) = addrs.first().copied() else {
        return report.fail(
            check,
            format!("{host} resolves to no address"),
            "check the endpoint's host name",
        );
    };
    let tcp = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return report.fail(
                check,
                format!("{host} ({addr}) refuses connections: {e}"),
                "check the endpoint's port, and any firewall or egress policy between this host and AppSync",
            )
        }
        Err(_) => {
            return report.fail(
                check,
                format!("{host} ({addr}) did not accept a connection within {}s", timeout.as_secs()),
                "check egress (network policy, NAT, proxy) from this host to AppSync",
            )
        }
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
