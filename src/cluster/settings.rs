//! `--redis-url` and what goes with it, as the cluster link uses them:
//! the Redis client they describe, and the URL without its credentials for
//! logs and errors.

use super::seal;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// `--redis-url` and what goes with it.
#[derive(Clone)]
pub struct ClusterConfig {
    /// `redis://` or `rediss://` (TLS); may carry credentials.
    pub url: String,
    /// From `--redis-password-file`, overriding the URL's.
    pub password: Option<String>,
    /// `--session-key-file`: with it, refreshes are single across replicas.
    pub session_keys: Option<Arc<seal::SessionKeys>>,
    /// `--cluster-lease-ttl`: how long a connection's lease lasts unrenewed.
    pub lease_ttl: Duration,
    /// `--redis-ca-file`'s PEM: for `rediss://`, the CA trusted instead of
    /// the system's roots (a private CA).
    pub ca_pem: Option<Vec<u8>>,
}

impl fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("url", &redact_url(&self.url))
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("session_keys", &self.session_keys)
            .field("lease_ttl", &self.lease_ttl)
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// The URL without its credentials, for logs and errors.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("redacted"));
            }
            u.to_string()
        }
        Err(_) => "<unparsable URL>".into(),
    }
}

impl ClusterConfig {
    /// The Redis client the URL and password describe.
    pub fn client(&self) -> Result<redis::Client, String> {
        use redis::IntoConnectionInfo as _;
        let mut info = self
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| format!("--redis-url {}: {e}", redact_url(&self.url)))?;
        if let Some(pw) = &self.password {
            let settings = info.redis_settings().clone().set_password(pw);
            info = info.set_redis_settings(settings);
        }
        let client = match &self.ca_pem {
            None => redis::Client::open(info),
            Some(pem) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                },
            ),
        };
        client.map_err(|e| format!("--redis-url {}: {e}", redact_url(&self.url)))
    }
}
