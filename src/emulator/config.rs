//! What shapes an emulated AppSync Events API, with AppSync's own figures
//! as defaults.

use super::auth::EmulatorAuth;
use std::time::Duration;

/// Keep-alive interval AppSync uses (~60 s).
pub const DEFAULT_KA_INTERVAL: Duration = Duration::from_secs(60);
/// Largest WebSocket message accepted: a publish of five maximal events,
/// each escaped once more in the frame (the worst legal case).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = crate::protocol::MAX_LEGAL_PUBLISH_BYTES;
/// Frames queued per connection before it counts as a slow consumer.
pub const DEFAULT_OUTBOUND_QUEUE: usize = 1024;
/// Largest `POST /event` body accepted: as for a WebSocket publish.
pub const DEFAULT_MAX_HTTP_BODY_BYTES: usize = crate::protocol::MAX_LEGAL_PUBLISH_BYTES;
/// AppSync closes connections after 24 hours.
pub const DEFAULT_MAX_CONNECTION_DURATION: Duration = Duration::from_secs(24 * 60 * 60);
/// Credential values remembered for `EmulatorHandle::seen_authorizations`.
pub const DEFAULT_AUTH_LOG_CAPACITY: usize = 10_000;
/// The namespace AWS creates with every new Event API.
pub const DEFAULT_NAMESPACE: &str = "default";
/// How long shutdown waits for connections to finish their close handshake.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Everything that shapes the emulated API. Build with
/// [`EmulatorConfig::new`] and adjust fields.
#[derive(Clone, Debug)]
pub struct EmulatorConfig {
    /// Host of the emulated HTTP endpoint. When set, every authorization
    /// object's `host` (and the `Host` header of `POST /event`) must equal
    /// it, as AppSync requires; `None` skips the check.
    pub http_host: Option<String>,
    /// The auth mode every connect, subscribe and publish must satisfy.
    pub auth: EmulatorAuth,
    /// Interval between `ka` frames after `connection_ack`.
    pub ka_interval: Duration,
    /// Largest WebSocket message (and frame) accepted; bigger ones get 1009.
    pub max_message_bytes: usize,
    /// Outbound frames queued per connection before it is dropped as slow.
    pub outbound_queue: usize,
    /// Largest `POST /event` body accepted; bigger ones get 413.
    pub max_http_body_bytes: usize,
    /// Connections are closed (1000) after this long.
    pub max_connection_duration: Duration,
    /// Size of the ring behind `EmulatorHandle::seen_authorizations`.
    pub auth_log_capacity: usize,
    /// How long shutdown waits for open connections to close.
    pub drain_timeout: Duration,
    /// The channel namespaces defined on the API. AppSync only lets clients
    /// publish and subscribe to channels of a defined namespace; anything
    /// else is `UnauthorizedException`.
    pub namespaces: Vec<String>,
    /// Serve HTTPS and `wss://` with this configuration (AppSync is only
    /// reachable over TLS); plain HTTP when `None`.
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
}

impl EmulatorConfig {
    pub fn new(auth: EmulatorAuth) -> Self {
        EmulatorConfig {
            http_host: None,
            auth,
            ka_interval: DEFAULT_KA_INTERVAL,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            outbound_queue: DEFAULT_OUTBOUND_QUEUE,
            max_http_body_bytes: DEFAULT_MAX_HTTP_BODY_BYTES,
            max_connection_duration: DEFAULT_MAX_CONNECTION_DURATION,
            auth_log_capacity: DEFAULT_AUTH_LOG_CAPACITY,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            namespaces: vec![DEFAULT_NAMESPACE.to_string()],
            tls: None,
        }
    }

    /// Defines the namespaces `names` (replacing the default one).
    pub fn with_namespaces<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.namespaces = names.into_iter().map(Into::into).collect();
        self
    }

    /// Whether `channel` belongs to a defined namespace.
    pub fn defines(&self, channel: &crate::protocol::Channel) -> bool {
        self.namespaces.iter().any(|n| n == channel.namespace())
    }
}
