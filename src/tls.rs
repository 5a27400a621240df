//! TLS for the public listener: a PEM certificate chain and key read from
//! disk and re-read when either file changes (a sidecar gets rotated
//! certificates without a restart), or an in-memory pair (the demo's
//! self-signed certificate).
//!
//! A reload that fails (half-written file, key not matching the
//! certificate) keeps the previous certificate in service and logs why;
//! it never takes the listener down. Private key material is never logged.

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// Where the public listener's certificate comes from.
#[derive(Clone)]
pub enum TlsSource {
    /// PEM files, watched for changes.
    Files {
        cert: PathBuf,
        key: PathBuf,
        reload_interval: Duration,
    },
    /// PEM text held in memory (the demo's generated certificate).
    InMemory { cert_pem: String, key_pem: String },
}

impl fmt::Debug for TlsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsSource::Files {
                cert,
                key,
                reload_interval,
            } => f
                .debug_struct("Files")
                .field("cert", cert)
                .field("key", key)
                .field("reload_interval", reload_interval)
                .finish(),
            TlsSource::InMemory { .. } => f.write_str("InMemory(<redacted>)"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("no PEM certificate found")]
    NoCertificate,
    #[error("certificate PEM is invalid: {0}")]
    BadCertificate(String),
    #[error("no usable PEM private key found (PKCS#8, PKCS#1 or SEC1)")]
    NoKey,
    #[error("private key does not match the certificate, or is unsupported: {0}")]
    KeyMismatch(String),
    #[error("cannot generate a self-signed certificate: {0}")]
    SelfSigned(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses a PEM chain and key into a key rustls can serve, checking that
/// they belong together.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, TlsError> {
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertificate(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| TlsError::NoKey)?;
    CertifiedKey::from_der(certs, key, &provider())
        .map_err(|e| TlsError::KeyMismatch(e.to_string()))
}

fn read(path: &PathBuf) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn modified(path: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Serves the current certificate; [`CertStore::watch`] swaps it when the
/// files change.
pub struct CertStore {
    current: RwLock<Arc<CertifiedKey>>,
    source: TlsSource,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("source", &self.source)
            .finish()
    }
}

impl CertStore {
    /// Loads the certificate once; a failure here is a start-up error.
    pub fn load(source: TlsSource) -> Result<Arc<CertStore>, TlsError> {
        let key = match &source {
            TlsSource::Files { cert, key, .. } => certified_key(&read(cert)?, &read(key)?)?,
            TlsSource::InMemory { cert_pem, key_pem } => {
                certified_key(cert_pem.as_bytes(), key_pem.as_bytes())?
            }
        };
        Ok(Arc::new(CertStore {
            current: RwLock::new(Arc::new(key)),
            source,
        }))
    }

    fn current(&self) -> Arc<CertifiedKey> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn replace(&self, key: CertifiedKey) {
        match self.current.write() {
            Ok(mut g) => *g = Arc::new(key),
            Err(p) => *p.into_inner() = Arc::new(key),
        }
    }

    /// Polls the files' modification times and reloads on change, until
    /// `cancel` fires. Does nothing for in-memory certificates.
    pub async fn watch(self: Arc<Self>, cancel: CancellationToken) {
        let TlsSource::Files {
            cert,
            key,
            reload_interval,
        } = self.source.clone()
        else {
            return;
        };
        let mut seen = (modified(&cert), modified(&key));
        let mut tick = tokio::time::interval(reload_interval.max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = (modified(&cert), modified(&key));
            if now == seen {
                continue;
            }
            let (c, k) = (cert.clone(), key.clone());
            let loaded =
                tokio::task::spawn_blocking(move || certified_key(&read(&c)?, &read(&k)?)).await;
            match loaded {
                Ok(Ok(new_key)) => {
                    self.replace(new_key);
                    seen = now;
                    tracing::info!(cert = %cert.display(), "TLS certificate reloaded");
                }
                // Leave `seen` alone so the next tick retries: the files may
                // be mid-rotation (certificate written, key not yet).
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "TLS certificate changed but cannot be loaded; keeping the previous one")
                }
                Err(e) => tracing::warn!(error = %e, "TLS reload task failed"),
            }
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The server configuration for the public listener (HTTP/1.1 only: the
/// relay's routes are WebSocket upgrades and small POSTs).
pub fn server_config(store: Arc<CertStore>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::KeyMismatch(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A self-signed certificate and key (PEM) for `hosts` (DNS names or IPs).
pub fn self_signed(hosts: &[&str]) -> Result<(String, String), TlsError> {
    let names: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
    let generated = rcgen::generate_simple_self_signed(names)
        .map_err(|e| TlsError::SelfSigned(e.to_string()))?;
    Ok((generated.cert.pem(), generated.signing_key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_pair_loads() {
        let (cert, key) = self_signed(&["localhost", "127.0.0.1"]).unwrap();
        assert!(certified_key(cert.as_bytes(), key.as_bytes()).is_ok());
    }

    #[test]
    fn mismatched_key_is_refused() {
        let (cert, _) = self_signed(&["localhost"]).unwrap();
        let (_, other_key) = self_signed(&["localhost"]).unwrap();
        assert!(matches!(
            certified_key(cert.as_bytes(), other_key.as_bytes()),
            Err(TlsError::KeyMismatch(_))
        ));
        assert!(matches!(
            certified_key(b"", other_key.as_bytes()),
            Err(TlsError::NoCertificate)
        ));
        assert!(matches!(
            certified_key(cert.as_bytes(), b"nope"),
            Err(TlsError::NoKey)
        ));
    }

    #[test]
    fn debug_never_prints_key_material() {
        let (cert_pem, key_pem) = self_signed(&["localhost"]).unwrap();
        let s = format!("{:?}", TlsSource::InMemory { cert_pem, key_pem });
        assert!(!s.contains("PRIVATE KEY"));
    }
}
