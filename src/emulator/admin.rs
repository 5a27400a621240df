//! The emulator's admin listener (`appsync-relay emulate --admin-listen`):
//! `GET /metrics` serves the operations meter as Prometheus text, and
//! `POST /close-all?code=N` closes every WebSocket with that close code (a
//! test's way to make AppSync drop its clients, as `EmulatorHandle::close_all`
//! does in process). Nothing else is routed; it never serves the API itself,
//! so a scrape can never be mistaken for traffic.

use super::shared::{error_response, Shared};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Serves the admin routes on `listener` until the emulator shuts down.
pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "emulator: admin listening");
    }
    loop {
        let accepted = tokio::select! {
            () = shared.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _peer)) = accepted else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(route(&shared, &req)) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn route(shared: &Shared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() == "/close-all" {
        return close_all(shared, req);
    }
    if req.uri().path() != "/metrics" {
        return error_response(StatusCode::NOT_FOUND, "NotFoundException", "no such route");
    }
    if req.method() != Method::GET {
        return error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "BadRequestException",
            "GET only",
        );
    }
    let mut response = Response::new(Full::new(Bytes::from(shared.registry.meter().render())));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}

/// `POST /close-all?code=N`: a close frame with `N` to every connection.
/// `N` must be a code a close frame may carry
/// ([`crate::protocol::is_sendable_close_code`]); anything else is 400.
fn close_all(shared: &Shared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::POST {
        return error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "BadRequestException",
            "POST only",
        );
    }
    let code = req
        .uri()
        .query()
        .and_then(|q| q.strip_prefix("code="))
        .and_then(|n| n.parse::<u16>().ok())
        .filter(|c| crate::protocol::is_sendable_close_code(*c));
    let Some(code) = code else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "BadRequestException",
            "want ?code= with a close code a frame may carry",
        );
    };
    shared.registry.close_all(super::registry::CloseCmd::Frame {
        code,
        reason: String::new(),
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}
