//! Refusing an upgrade in band, so that "this session is over" reaches the
//! app. Amplify (aws-amplify 6.22.1) retries an HTTP refusal of the upgrade
//! forever — six quick tries, then one a minute, logged at debug level —
//! while a `connection_error` carrying `UnauthorizedException` in answer to
//! its `connection_init` is a non-retryable error: the subscription's
//! `error` callback fires and the retrying stops (`_establishConnection`,
//! `NON_RETRYABLE_ERROR_TYPES`). AppSync refuses bad credentials that way
//! too.
//!
//! So an upgrade refused with 401 (no session, a token that does not
//! verify and cannot be renewed, a session ended or signed out, another
//! identity, AppSync refusing the token), when it is otherwise a valid
//! upgrade from an allowed Origin, is answered with the 101 — carrying any
//! renewed cookies, and the refusal in `x-appsync-relay-refused: <status>
//! <reason>` for clients that read headers (`check`, tests) — then, once the
//! client's first frame arrives (or after [`WAIT`]), a `connection_error`
//! whose message is the reason label, and a close with 4401. No upstream
//! connection is made. Other refusals (400, 403, 429, 503) stay HTTP
//! answers: they are retryable, or not the user's session. At most
//! `IN_BAND_REFUSALS` are held at once; beyond, a plain 401.

use crate::gate::Refused;
use crate::protocol::{self, error_frame, error_type};
use crate::relay::close::SESSION_ENDED;
use crate::response::{empty, Body};
use crate::state::RelayState;
use crate::ws::{Limits, Role, WsSocket};
use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_PROTOCOL, SET_COOKIE, UPGRADE,
};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::time::Duration;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// The header naming an in-band refusal: `<status> <reason label>`.
pub const REFUSED_HEADER: &str = "x-appsync-relay-refused";
/// How long the refused socket waits for the client's first frame.
const WAIT: Duration = Duration::from_secs(5);
/// How long its closing handshake may take.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// The largest frame a refused socket reads: `connection_init` is 26 bytes.
/// Not the browser leg's limit (twice `--max-message-bytes`): a client with
/// no session must not make the relay hold megabytes, on up to 1 024 such
/// sockets; a larger frame ends the socket at once.
const REFUSED_FRAME_BYTES: usize = 4 * 1024;

/// The 101 that refuses `refused` in band, or `refused` back when it must
/// stay an HTTP answer.
pub(super) fn in_band(
    state: &RelayState,
    refused: Refused,
    req: &mut Request<Incoming>,
) -> Result<Response<Body>, Refused> {
    if refused.error.status() != StatusCode::UNAUTHORIZED {
        return Err(refused);
    }
    let Some(key) = refused.accept_key.clone() else {
        return Err(refused);
    };
    let Some(slot) = state.in_band_refusal() else {
        return Err(refused);
    };
    let reason = refused.error.reason();
    let Ok(named) = HeaderValue::from_str(&format!("401 {reason}")) else {
        return Err(refused);
    };
    let on_upgrade = hyper::upgrade::on(req);
    state.tracker().spawn(async move {
        let _slot = slot;
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws = WsSocket::new(
            TokioIo::new(upgraded),
            Role::Server,
            Limits::of(REFUSED_FRAME_BYTES),
            &[],
        );
        // Amplify sends `connection_init` the moment the socket opens and
        // reads the answer to it; a frame sent before could beat its
        // handler.
        if let Ok(None | Some(Err(_))) = tokio::time::timeout(WAIT, ws.next()).await {
            // Gone, or a frame over the limit (refused from its header,
            // before its payload is read): nothing to answer.
            return;
        }
        let frame = error_frame("connection_error", None, error_type::UNAUTHORIZED, reason);
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            ws.send(Message::text(frame)).await?;
            ws.send(Message::Close(Some(CloseFrame {
                code: CloseCode::from(SESSION_ENDED),
                reason: reason.into(),
            })))
            .await?;
            // The client's close answer, then the end.
            while let Some(Ok(_)) = ws.next().await {}
            Ok::<(), tokio_tungstenite::tungstenite::Error>(())
        })
        .await;
    });
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(SEC_WEBSOCKET_ACCEPT, key);
    h.insert(
        SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(protocol::SUBPROTOCOL),
    );
    h.insert(REFUSED_HEADER, named);
    for cookie in refused.set_cookies {
        h.append(SET_COOKIE, cookie);
    }
    Ok(resp)
}
