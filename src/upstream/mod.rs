//! Opening the upstream AppSync Events real-time connection for one browser
//! socket, with the user's token in the `header-` subprotocol.
//!
//! Errors say which way the upstream failed so the handshake can answer the
//! browser precisely: AppSync refusing the token (401), unreachable or
//! misbehaving (502), too slow (504). Nothing here logs or returns the token:
//! handshake errors describe the response, never the request headers.

mod io;

use crate::protocol;
use crate::rewrite::UpstreamAuth;
use crate::ws::{self, HandshakeError, WsSocket};
use hyper::header::HeaderValue;
use rustls::pki_types::ServerName;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

pub use io::UpstreamIo;

pub type UpstreamSocket = WsSocket<UpstreamIo>;

#[derive(Clone)]
pub struct UpstreamConfig {
    /// `wss://…/event/realtime` (or `ws://` for a local emulator).
    pub realtime_url: String,
    /// Host (with port when not the default) of the HTTP endpoint: AppSync
    /// wants this in every authorization object, even on the socket.
    pub http_host: String,
    pub connect_timeout: Duration,
    /// What AppSync may send in one frame and one message.
    pub limits: ws::Limits,
    pub tls: Arc<rustls::ClientConfig>,
    /// Connect here instead of resolving the URL's host (`--appsync-address`).
    pub address: Option<std::net::IpAddr>,
}

impl std::fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("realtime_url", &self.realtime_url)
            .field("http_host", &self.http_host)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream refused the credentials (HTTP {0})")]
    Unauthorized(u16),
    #[error("upstream answered the upgrade with HTTP {0}")]
    Rejected(u16),
    #[error("upstream unreachable: {0}")]
    Unreachable(String),
    #[error("upstream did not answer within {0:?}")]
    Timeout(Duration),
    #[error("upstream spoke an unexpected protocol: {0}")]
    Protocol(String),
}

impl UpstreamError {
    pub fn reason(&self) -> &'static str {
        match self {
            UpstreamError::Unauthorized(_) => "upstream_unauthorized",
            UpstreamError::Rejected(_) => "upstream_rejected",
            UpstreamError::Unreachable(_) => "upstream_unreachable",
            UpstreamError::Timeout(_) => "upstream_timeout",
            UpstreamError::Protocol(_) => "upstream_protocol",
        }
    }
}

/// The TCP connection (to `--appsync-address` when set, else the URL's
/// host), and TLS over it for `wss://`: the name stays the URL's host for
/// SNI and the certificate either way.
async fn open(cfg: &UpstreamConfig, uri: &hyper::Uri) -> Result<UpstreamIo, UpstreamError> {
    let tls = match uri.scheme_str() {
        Some("wss") => true,
        Some("ws") => false,
        _ => {
            return Err(UpstreamError::Unreachable(
                "not a ws:// or wss:// URL".into(),
            ))
        }
    };
    let host = uri
        .host()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
        .ok_or_else(|| UpstreamError::Unreachable("URL without a host".into()))?;
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let tcp = match cfg.address {
        Some(ip) => TcpStream::connect((ip, port)).await,
        None => TcpStream::connect((host, port)).await,
    }
    .map_err(|e| UpstreamError::Unreachable(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    if !tls {
        return Ok(UpstreamIo::Plain(tcp));
    }
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| UpstreamError::Unreachable(format!("TLS: {e}")))?;
    let stream = TlsConnector::from(cfg.tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| UpstreamError::Unreachable(format!("TLS: {e}")))?;
    Ok(UpstreamIo::Tls(Box::new(stream)))
}

fn classify(e: HandshakeError) -> UpstreamError {
    match e {
        HandshakeError::Status(s @ (401 | 403)) => UpstreamError::Unauthorized(s),
        HandshakeError::Status(s) => UpstreamError::Rejected(s),
        HandshakeError::Io(e) => UpstreamError::Unreachable(e.to_string()),
        HandshakeError::Protocol(what) => UpstreamError::Protocol(what.into()),
    }
}

/// Connects to AppSync Events as the user `auth` stands for.
pub async fn connect(
    cfg: &UpstreamConfig,
    auth: &UpstreamAuth,
) -> Result<UpstreamSocket, UpstreamError> {
    let uri: hyper::Uri = cfg
        .realtime_url
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| UpstreamError::Unreachable(e.to_string()))?;
    let offered = format!(
        "{}, {}",
        protocol::SUBPROTOCOL,
        protocol::encode_header_subprotocol(&auth.as_map())
    );
    if HeaderValue::from_str(&offered).is_err() {
        return Err(UpstreamError::Protocol("token is not header-safe".into()));
    }
    let attempt = async {
        let io = open(cfg, &uri).await?;
        ws::client_handshake(io, &uri, &offered, cfg.limits)
            .await
            .map_err(classify)
    };
    let (socket, selected) = tokio::time::timeout(cfg.connect_timeout, attempt)
        .await
        .map_err(|_| UpstreamError::Timeout(cfg.connect_timeout))??;
    if selected.as_deref() != Some(protocol::SUBPROTOCOL) {
        return Err(UpstreamError::Protocol(
            "upstream did not select aws-appsync-event-ws".into(),
        ));
    }
    Ok(socket)
}
