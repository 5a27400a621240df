//! The client side of the opening handshake (RFC 6455 §4.1), for the
//! upstream leg: one `GET` with the key and the offered subprotocols, one
//! response read and checked, and any bytes after it kept for the socket.
//!
//! The request carries the user's token (in the `header-` subprotocol), so
//! nothing here logs or returns the request; errors describe the response.

use super::socket::{Limits, Role, WsSocket};
use base64::Engine;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// The most a response head may take: AppSync's is a few hundred bytes.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The server answered, but not with 101.
    #[error("HTTP {0}")]
    Status(u16),
    #[error("{0}")]
    Protocol(&'static str),
}

/// Opens a WebSocket over `io` to `uri` (whose scheme the caller has
/// dealt with) offering `protocols`; returns the socket and the
/// subprotocol the server selected.
pub async fn client_handshake<S>(
    mut io: S,
    uri: &hyper::Uri,
    protocols: &str,
    limits: Limits,
) -> Result<(WsSocket<S>, Option<String>), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let host = uri
        .authority()
        .map(|a| a.as_str().rsplit('@').next().unwrap_or_default())
        .ok_or(HandshakeError::Protocol("URL without a host"))?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    if protocols.bytes().any(|b| b == b'\r' || b == b'\n') {
        return Err(HandshakeError::Protocol("subprotocol is not header-safe"));
    }
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\
         Sec-WebSocket-Protocol: {protocols}\r\n\r\n"
    );
    io.write_all(request.as_bytes()).await?;
    io.flush().await?;
    drop(request);

    let mut head = Vec::with_capacity(1024);
    loop {
        let mut chunk = [0u8; 2048];
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Err(HandshakeError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        head.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        let used = match response.parse(&head) {
            Ok(httparse::Status::Complete(used)) => used,
            Ok(httparse::Status::Partial) if head.len() < MAX_RESPONSE_HEAD => continue,
            Ok(httparse::Status::Partial) => {
                return Err(HandshakeError::Protocol("response head too large"))
            }
            Err(_) => return Err(HandshakeError::Protocol("malformed HTTP response")),
        };
        let status = response.code.unwrap_or(0);
        if status != 101 {
            return Err(HandshakeError::Status(status));
        }
        let header = |name: &str| {
            response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)
        };
        let upgrade = header("upgrade").unwrap_or_default();
        if !upgrade.eq_ignore_ascii_case(b"websocket") {
            return Err(HandshakeError::Protocol("no Upgrade: websocket"));
        }
        let connection = header("connection").unwrap_or_default();
        let upgrades = connection
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"));
        if !upgrades {
            return Err(HandshakeError::Protocol("no Connection: upgrade"));
        }
        if header("sec-websocket-accept") != Some(derive_accept_key(key.as_bytes()).as_bytes()) {
            return Err(HandshakeError::Protocol("wrong Sec-WebSocket-Accept"));
        }
        let selected = header("sec-websocket-protocol")
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(|v| v.trim().to_owned());
        let socket = WsSocket::new(io, Role::Client, limits, &head[used..]);
        return Ok((socket, selected));
    }
}
