//! `GET /event/realtime`: the WebSocket handshake — upgrade, subprotocols,
//! `header-` authorization — then the session (`realtime`).
//!
//! A failed handshake is an HTTP error response, never a 101, unless the
//! handle chose the other refusal style (101, `connection_error`, 4401).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_PROTOCOL, UPGRADE,
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::realtime::{run_session, CLOSE_HANDSHAKE_TIMEOUT};
use super::shared::{error_response, Shared};
use crate::protocol::{
    decode_header_subprotocol, error_type, HEADER_SUBPROTOCOL_PREFIX, SUBPROTOCOL,
};
use crate::upgrade::{check_upgrade, offered_protocols, ws_config};

/// Validates the upgrade request and, if it passes, answers 101 and starts
/// the session once hyper hands the connection over.
pub(crate) async fn handshake(
    shared: Arc<Shared>,
    mut req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            error_type::BAD_REQUEST,
            "the real-time endpoint only accepts WebSocket upgrades",
        );
    }
    let accept = match check_upgrade(&req) {
        Ok(accept) => accept,
        Err(error) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                error_type::BAD_REQUEST,
                &error.to_string(),
            )
        }
    };
    let offered = offered_protocols(req.headers());
    if !offered.contains(&SUBPROTOCOL) {
        return error_response(
            StatusCode::BAD_REQUEST,
            error_type::BAD_REQUEST,
            "the aws-appsync-event-ws subprotocol is required",
        );
    }
    let auth = offered
        .iter()
        .find(|p| p.starts_with(HEADER_SUBPROTOCOL_PREFIX))
        .map(|p| decode_header_subprotocol(p));
    let auth = match auth {
        Some(Some(auth)) => auth,
        Some(None) => return unauthorized("the header subprotocol is not base64url JSON"),
        None => return unauthorized("the header subprotocol is missing"),
    };
    let refusal = match shared.authorize(&auth).await {
        Ok(()) => None,
        Err(failure) if !shared.refuse_after_upgrade.load(Ordering::Relaxed) => {
            return unauthorized(&failure.to_string())
        }
        Err(failure) => Some(failure.to_string()),
    };

    let on_upgrade = hyper::upgrade::on(&mut req);
    let session_shared = shared.clone();
    shared.tracker.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let config = ws_config(session_shared.cfg.max_message_bytes);
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                match refusal {
                    None => run_session(session_shared, ws).await,
                    Some(message) => refuse_open_socket(ws, &message).await,
                }
            }
            Err(error) => tracing::debug!(%error, "emulator: upgrade did not complete"),
        }
    });

    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(
        SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(SUBPROTOCOL),
    );
    headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
    response
}

/// The other refusal style (MiniStack's; see `EmulatorHandle::refuse_after_upgrade`):
/// the upgrade succeeds, then a `connection_error` and close 4401.
async fn refuse_open_socket<S>(mut ws: WebSocketStream<S>, message: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = json!({
        "type": "connection_error",
        "errors": crate::protocol::errors(error_type::UNAUTHORIZED, message),
    });
    let _ = ws.send(Message::Text(frame.to_string().into())).await;
    let _ = ws
        .close(Some(CloseFrame {
            code: CloseCode::from(4401),
            reason: "Unauthorized".into(),
        }))
        .await;
    let _ = tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

fn unauthorized(message: &str) -> Response<Full<Bytes>> {
    error_response(StatusCode::UNAUTHORIZED, error_type::UNAUTHORIZED, message)
}
