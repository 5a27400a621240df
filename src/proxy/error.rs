//! Why a request could not be answered by the app, tagged by side, and the
//! one place those become a status, a metric label and a fixed body.

use crate::response::{full, Body};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use std::time::Duration;

/// Why a request could not be answered by the app; the side is in `side()`.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    // --- downstream ---
    #[error("CONNECT is not supported")]
    Connect,
    #[error("request target is not origin-form")]
    BadTarget,
    // --- upstream: the app ---
    #[error("app unreachable: {0}")]
    Unreachable(hyper_util::client::legacy::Error),
    #[error("app failed: {0}")]
    Failed(hyper_util::client::legacy::Error),
    #[error("app sent no response head within {0:?}")]
    Timeout(Duration),
    #[error("app switched protocols without being asked")]
    UnexpectedUpgrade,
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Connect => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::BadTarget => StatusCode::BAD_REQUEST,
            ProxyError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Unreachable(_) | ProxyError::Failed(_) | ProxyError::UnexpectedUpgrade => {
                StatusCode::BAD_GATEWAY
            }
        }
    }

    /// Metric label (the status classes of the proxy's `outcome_label`, plus the failures).
    pub fn label(&self) -> &'static str {
        match self {
            ProxyError::Connect | ProxyError::BadTarget => "4xx",
            ProxyError::Unreachable(_) => "unreachable",
            ProxyError::Failed(_) | ProxyError::UnexpectedUpgrade => "upstream_error",
            ProxyError::Timeout(_) => "timeout",
        }
    }

    pub fn side(&self) -> &'static str {
        match self {
            ProxyError::Connect | ProxyError::BadTarget => "downstream",
            _ => "upstream",
        }
    }

    /// A fixed plain-text body: never anything from the request.
    fn body(&self) -> &'static str {
        match self {
            ProxyError::Connect => "method not allowed\n",
            ProxyError::BadTarget => "bad request\n",
            ProxyError::Unreachable(_) => "bad gateway: app upstream unreachable\n",
            ProxyError::Failed(_) | ProxyError::UnexpectedUpgrade => {
                "bad gateway: app upstream failed\n"
            }
            ProxyError::Timeout(_) => "gateway timeout: app upstream did not answer in time\n",
        }
    }

    pub fn into_response(self) -> Response<Body> {
        let mut resp = Response::new(full(self.body()));
        *resp.status_mut() = self.status();
        resp.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp.headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }
}
