//! What the `Sessions` handle holds: the
//! configuration slice it decides with and every table of the session path.
//! Its fields are visible to the `sessions` module alone; nothing outside
//! it reads or writes them.

use crate::cluster::Cluster;
use crate::config::Config;
use crate::limits::SessionRates;
use crate::metrics::Metrics;
use crate::refresh::Refresher;
use crate::session::{CookiePolicy, LiveSockets, PendingRenewals};
use crate::verify::{TokenUse, Verifier};
use std::sync::Arc;
use std::time::Duration;

/// The part of the configuration the session path decides with.
#[derive(Debug, Clone)]
pub struct SessionsConfig {
    pub client_id: String,
    /// Which token is forwarded (`--token-use`).
    pub token_use: TokenUse,
    /// How long before expiry a token is renewed (`--refresh-before`).
    pub refresh_before: Duration,
    /// How long refresh tokens live: older sign-ins are refused unasked.
    pub refresh_token_validity: Duration,
    /// Clock skew allowed between Cognito and this replica.
    pub jwt_leeway: Duration,
    pub cookies: CookiePolicy,
    /// `--mid-connection-refresh`: whether open sockets renew in place.
    pub mid_connection_refresh: bool,
    /// Bound of every remembering table.
    pub token_cache_size: usize,
    /// `--max-connections-per-user`, counted across the replicas.
    pub max_connections_per_user: usize,
}

impl SessionsConfig {
    pub fn of(config: &Config) -> SessionsConfig {
        SessionsConfig {
            client_id: config.client_id.clone(),
            token_use: config.token_use,
            refresh_before: config.refresh_before,
            refresh_token_validity: config.refresh_token_validity,
            jwt_leeway: config.jwt_leeway,
            cookies: config.cookies.clone(),
            mid_connection_refresh: config.mid_connection_refresh,
            token_cache_size: config.token_cache_size,
            max_connections_per_user: config.limits.max_connections_per_user,
        }
    }
}

pub(super) struct Shared {
    pub(super) cfg: SessionsConfig,
    pub(super) verifier: Arc<Verifier>,
    pub(super) refresher: Arc<Refresher>,
    /// Renewals made on open sockets, waiting for their browser.
    pub(super) pending: PendingRenewals,
    /// Every open socket (and handshake in progress), by user.
    pub(super) sockets: LiveSockets,
    /// Ends, sign-outs, leases and single flight across the replicas (this
    /// replica alone without Redis).
    pub(super) cluster: Cluster,
    /// The refresh budgets per IP and per user.
    pub(super) rates: Arc<SessionRates>,
    pub(super) metrics: Arc<Metrics>,
}
