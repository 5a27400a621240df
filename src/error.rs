//! Every way a request can be refused, tagged by the side that failed, and
//! the one place those become an HTTP status and a JSON body.
//!
//! Bodies are `{"error": <category>, "reason": <label>}`: both bounded
//! strings from this file, so an error body can never echo a token, a cookie
//! or anything else the client or upstream sent.

use crate::limits::LimitHit;
use crate::origin::OriginError;
use crate::refresh::RefreshError;
use crate::response::{json_error, Body};
use crate::session::SessionError;
use crate::upgrade::UpgradeError;
use crate::upstream::UpstreamError;
use crate::verify::VerifyError;
use hyper::{Response, StatusCode};

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    // --- downstream: the browser's request is not acceptable ---
    #[error("not a WebSocket upgrade: {0}")]
    Upgrade(#[from] UpgradeError),
    #[error("origin refused: {0}")]
    Origin(#[from] OriginError),
    #[error("client did not offer the aws-appsync-event-ws subprotocol")]
    NoSubprotocol,
    #[error("no usable session: {0}")]
    Session(#[from] SessionError),
    #[error("session token refused: {0}")]
    Token(#[from] VerifyError),
    #[error("request body is too large")]
    BodyTooLarge,
    #[error("could not read the request body")]
    BodyRead,
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("not found")]
    NotFound,
    #[error("the relay is shutting down")]
    Draining,
    /// `--channel-policy` allows this user no publish on that channel (or
    /// the body names no channel the relay can read).
    #[error("the channel policy does not allow this publish")]
    ChannelPolicy,
    #[error("limit reached: {0}")]
    Limit(#[from] LimitHit),
    #[error("session could not be renewed: {0}")]
    Refresh(RefreshError),
    /// Cognito answered the refresh with another identity's tokens: the
    /// refresh token shown is not this session's.
    #[error("the refresh token belongs to another identity")]
    IdentityChanged,
    // --- upstream: AppSync failed or refused ---
    #[error("{0}")]
    Upstream(#[from] UpstreamError),
    // --- internal ---
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl RelayError {
    pub fn status(&self) -> StatusCode {
        match self {
            RelayError::Upgrade(_) | RelayError::NoSubprotocol => StatusCode::BAD_REQUEST,
            RelayError::Origin(_) | RelayError::ChannelPolicy => StatusCode::FORBIDDEN,
            RelayError::Session(SessionError::TooLarge) => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            RelayError::Session(_) => StatusCode::UNAUTHORIZED,
            RelayError::Limit(_) => StatusCode::TOO_MANY_REQUESTS,
            RelayError::Draining => StatusCode::SERVICE_UNAVAILABLE,
            RelayError::Token(VerifyError::JwksUnavailable) => StatusCode::SERVICE_UNAVAILABLE,
            RelayError::Token(_) => StatusCode::UNAUTHORIZED,
            RelayError::Refresh(RefreshError::Rejected(_)) => StatusCode::UNAUTHORIZED,
            RelayError::Refresh(_) => StatusCode::SERVICE_UNAVAILABLE,
            RelayError::IdentityChanged => StatusCode::UNAUTHORIZED,
            RelayError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            RelayError::BodyRead => StatusCode::BAD_REQUEST,
            RelayError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            RelayError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            RelayError::NotFound => StatusCode::NOT_FOUND,
            RelayError::Upstream(UpstreamError::Unauthorized(_)) => StatusCode::UNAUTHORIZED,
            RelayError::Upstream(UpstreamError::Timeout(_)) => StatusCode::GATEWAY_TIMEOUT,
            RelayError::Upstream(_) => StatusCode::BAD_GATEWAY,
            RelayError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Bounded label for metrics, logs and the `reason` field.
    pub fn reason(&self) -> &'static str {
        match self {
            RelayError::Upgrade(_) => "bad_upgrade",
            RelayError::Origin(e) => e.reason(),
            RelayError::NoSubprotocol => "no_subprotocol",
            RelayError::Session(e) => e.reason(),
            RelayError::Token(e) => e.reason(),
            RelayError::Limit(hit) => hit.reason(),
            RelayError::Draining => "draining",
            RelayError::ChannelPolicy => "channel_policy",
            RelayError::Refresh(RefreshError::Rejected(_)) => "session_ended",
            RelayError::Refresh(_) => "refresh_unavailable",
            RelayError::IdentityChanged => "identity_changed",
            RelayError::BodyTooLarge => "body_too_large",
            RelayError::BodyRead => "body_unreadable",
            RelayError::BodyTimeout => "body_timeout",
            RelayError::MethodNotAllowed => "method_not_allowed",
            RelayError::NotFound => "not_found",
            RelayError::Upstream(e) => e.reason(),
            RelayError::Internal(_) => "internal",
        }
    }

    /// Which side failed, for logs.
    pub fn side(&self) -> &'static str {
        match self {
            RelayError::Upstream(_) => "upstream",
            RelayError::Refresh(_) | RelayError::IdentityChanged => "cognito",
            RelayError::Internal(_) => "internal",
            _ => "downstream",
        }
    }

    fn category(&self) -> &'static str {
        match self.status() {
            StatusCode::BAD_REQUEST => "bad_request",
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::REQUEST_TIMEOUT => "request_timeout",
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "headers_too_large",
            StatusCode::BAD_GATEWAY => "bad_gateway",
            StatusCode::GATEWAY_TIMEOUT => "gateway_timeout",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            StatusCode::TOO_MANY_REQUESTS => "too_many_requests",
            _ => "internal",
        }
    }

    pub fn into_response(self) -> Response<Body> {
        json_error(self.status(), self.category(), self.reason())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_contract() {
        assert_eq!(RelayError::Upgrade(UpgradeError::BadKey).status(), 400);
        assert_eq!(RelayError::Origin(OriginError::Missing).status(), 403);
        assert_eq!(RelayError::NoSubprotocol.status(), 400);
        assert_eq!(RelayError::Session(SessionError::Missing).status(), 401);
        assert_eq!(RelayError::Token(VerifyError::Expired).status(), 401);
        assert_eq!(
            RelayError::Upstream(UpstreamError::Unauthorized(401)).status(),
            401
        );
        assert_eq!(
            RelayError::Upstream(UpstreamError::Unreachable("x".into())).status(),
            502
        );
        assert_eq!(
            RelayError::Upstream(UpstreamError::Timeout(std::time::Duration::from_secs(1)))
                .status(),
            504
        );
    }
}
