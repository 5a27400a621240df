//! The state every emulator connection shares (configuration, subscription
//! registry, credential log, shutdown), and the AppSync-shaped HTTP error
//! responses both endpoints answer with. Children of the emulator import
//! this, never `mod.rs`.

use super::auth::{self, AuthFailure};
use super::config::EmulatorConfig;
use super::registry::{AuthLog, Registry};
use crate::protocol::Channel;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde_json::{json, Map, Value};
use std::collections::HashSet;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// State shared by the accept loop, every connection and the handle.
pub(crate) struct Shared {
    pub(crate) cfg: EmulatorConfig,
    pub(crate) registry: Registry,
    pub(crate) auth_log: AuthLog,
    /// Cancelled once to stop accepting and close every connection (1001).
    pub(crate) shutdown: CancellationToken,
    /// Every HTTP connection and WebSocket session, so shutdown can wait.
    pub(crate) tracker: TaskTracker,
    /// Credentials refused whatever they are (a token revoked at AppSync).
    pub(crate) revoked: Mutex<HashSet<String>>,
    /// Refuse a bad handshake after the 101 (`connection_error`, close
    /// 4401) instead of with HTTP 401.
    pub(crate) refuse_after_upgrade: AtomicBool,
    /// `(sub, channel prefix)`: subscriptions this user may not make, as a
    /// namespace's `onSubscribe` handler would refuse them.
    pub(crate) subscribe_rules: Mutex<Vec<(String, String)>>,
    /// The same for WebSocket publishes (a namespace's `onPublish`).
    pub(crate) publish_rules: Mutex<Vec<(String, String)>>,
}

// === impl Shared ===

impl Shared {
    pub(crate) fn new(cfg: EmulatorConfig) -> Arc<Self> {
        Arc::new(Shared {
            auth_log: AuthLog::new(cfg.auth_log_capacity),
            registry: Registry::default(),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            revoked: Mutex::new(HashSet::new()),
            refuse_after_upgrade: AtomicBool::new(false),
            subscribe_rules: Mutex::new(Vec::new()),
            publish_rules: Mutex::new(Vec::new()),
            cfg,
        })
    }

    /// Records the credentials in `auth`, then decides on it.
    pub(crate) async fn authorize(&self, auth: &Map<String, Value>) -> Result<(), AuthFailure> {
        let mut revoked = false;
        for credential in auth::credentials(auth) {
            self.auth_log.record(credential);
            revoked |= self
                .revoked
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(credential);
        }
        if revoked {
            return Err(AuthFailure::InvalidToken(
                "the token has been revoked".into(),
            ));
        }
        let result = self
            .cfg
            .auth
            .authorize(auth, self.cfg.http_host.as_deref())
            .await;
        if let Err(failure) = &result {
            tracing::debug!(%failure, "emulator: authorization refused");
        }
        result
    }
}

impl Shared {
    /// Whether a rule refuses this (already authorized) subscribe: the
    /// `sub` of its token is named with a prefix of the channel.
    pub(crate) fn refuses_subscribe(
        &self,
        message: &Map<String, Value>,
        channel: &Channel,
    ) -> bool {
        refused_by(&self.subscribe_rules, message, channel)
    }

    /// The same for a publish.
    pub(crate) fn refuses_publish(&self, message: &Map<String, Value>, channel: &Channel) -> bool {
        refused_by(&self.publish_rules, message, channel)
    }
}

fn refused_by(
    rules: &Mutex<Vec<(String, String)>>,
    message: &Map<String, Value>,
    channel: &Channel,
) -> bool {
    let rules = rules.lock().unwrap_or_else(|e| e.into_inner());
    if rules.is_empty() {
        return false;
    }
    let sub = message
        .get("authorization")
        .and_then(|a| a.get(auth::JWT_FIELD))
        .and_then(Value::as_str)
        .and_then(crate::verify::unverified_sub);
    let Some(sub) = sub else { return false };
    let path = channel.path();
    rules.iter().any(|(who, prefix)| {
        *who == sub
            && (path == prefix
                || path
                    .strip_prefix(prefix.as_str())
                    .is_some_and(|rest| rest.starts_with('/')))
    })
}

/// An AppSync-shaped HTTP error: `{"errors":[{"errorType","message"}]}`.
pub(crate) fn error_response(
    status: StatusCode,
    error_type: &str,
    message: &str,
) -> Response<Full<Bytes>> {
    json_response(
        status,
        &json!({"errors": crate::protocol::errors(error_type, message)}),
    )
}

pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
