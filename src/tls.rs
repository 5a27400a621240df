//! TLS for the public listener: a PEM certificate chain and key read from
//! disk and re-read when either file changes (a sidecar gets rotated
//! certificates without a restart), or an in-memory pair (the demo's
//! self-signed certificate).
//!
//! A reload that fails (half-written file, key not matching the
//! certificate) keeps the previous certificate in service and logs why;
//! it never takes the listener down. Private key material is never logged.

use rustls::client::{ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::ServerName;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::NamedGroup;
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

/// The one crypto provider of every TLS connection the relay accepts or
/// makes (the listener, AppSync, Cognito, the app, Redis): aws-lc-rs, which
/// `jsonwebtoken` already uses for token signatures, so one library does
/// all the cryptography (and ring is no longer built).
///
/// The cipher suites are in browsers' order (Chrome's and Firefox's:
/// AES-128-GCM with SHA-256 first). The listener honours the client's
/// order, so a browser gets what it asked for; towards AppSync and Cognito
/// the relay asks for AES-128-GCM first too. Its SHA-256 key schedule runs
/// on the CPU's SHA extensions, where the SHA-384 of TLS_AES_256_GCM_SHA384
/// (rustls's default first) runs in portable code on CPUs without SHA-512
/// instructions, as measured here (12 % of the relay's CPU in a TLS
/// handshake burst).
///
/// The key-exchange groups are listed here rather than left to the
/// provider's default, which has changed between rustls releases (a
/// `cargo update` must not move a leg to another group unnoticed):
/// X25519 first (what browsers and AWS endpoints offer, the cheapest),
/// then P-256 and P-384, and the post-quantum hybrid X25519MLKEM768 last,
/// for a peer that offers nothing else. A client that sends an X25519 key
/// share beside the hybrid (as browsers do) gets X25519 — as from the
/// OpenSSL 3.0 of an nginx in front — and no HelloRetryRequest.
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::aws_lc_rs::cipher_suite as cs;
    use rustls::crypto::aws_lc_rs::{default_provider, kx_group};
    let mut provider = default_provider();
    provider.cipher_suites = vec![
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    provider.kx_groups = vec![
        kx_group::X25519,
        kx_group::SECP256R1,
        kx_group::SECP384R1,
        kx_group::X25519MLKEM768,
    ];
    Arc::new(provider)
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

/// TLS sessions the listener remembers for resumption (a few hundred bytes
/// each, only for clients that completed a handshake recently).
const SERVER_SESSIONS: usize = 4096;

/// The server configuration for the public listener (HTTP/1.1 only: the
/// relay's routes are WebSocket upgrades and small POSTs).
pub fn server_config(store: Arc<CertStore>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::KeyMismatch(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Resumption for browsers that come back (a reconnect, a reload):
    // rustls's session cache, larger than its default 256, which a few
    // hundred browsers reconnecting at once would overflow. Not stateless
    // tickets (`Ticketer`): measured in the bench, OpenSSL clients (nginx
    // in front of a rustls server) failed to resume with them and made a
    // full handshake every time (benches/README.md, "TLS").
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(SERVER_SESSIONS);
    Ok(Arc::new(config))
}

/// TLS 1.3 tickets the relay keeps per server it connects to.
const TICKETS_PER_SERVER: usize = 256;
/// Servers it keeps tickets for (AppSync's two hosts, Cognito, the app).
const TICKET_SERVERS: usize = 64;

/// The client side's resumption store: rustls's in-memory store keeps at
/// most 8 TLS 1.3 tickets per server, and each ticket resumes one
/// connection, so a burst of reconnects to AppSync's one host resumed 8
/// and made the rest full handshakes. This one keeps up to
/// [`TICKETS_PER_SERVER`] (newest used first), for up to
/// [`TICKET_SERVERS`] servers.
#[derive(Debug, Default)]
pub struct ClientTickets {
    servers: std::sync::Mutex<std::collections::HashMap<ServerName<'static>, Tickets>>,
}

#[derive(Debug, Default)]
struct Tickets {
    kx_hint: Option<NamedGroup>,
    tls12: Option<Tls12ClientSessionValue>,
    tls13: std::collections::VecDeque<Tls13ClientSessionValue>,
}

impl ClientTickets {
    fn with<R>(&self, server: &ServerName<'_>, f: impl FnOnce(&mut Tickets) -> R) -> Option<R> {
        let mut servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        servers.get_mut(&server.to_owned()).map(f)
    }

    fn entry<R>(&self, server: ServerName<'static>, f: impl FnOnce(&mut Tickets) -> R) -> R {
        let mut servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        if servers.len() >= TICKET_SERVERS && !servers.contains_key(&server) {
            // Forget some server: a full handshake is the only cost.
            if let Some(any) = servers.keys().next().cloned() {
                servers.remove(&any);
            }
        }
        f(servers.entry(server).or_default())
    }
}

impl ClientSessionStore for ClientTickets {
    fn set_kx_hint(&self, server: ServerName<'static>, group: NamedGroup) {
        self.entry(server, |t| t.kx_hint = Some(group));
    }

    fn kx_hint(&self, server: &ServerName<'_>) -> Option<NamedGroup> {
        self.with(server, |t| t.kx_hint).flatten()
    }

    fn set_tls12_session(&self, server: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.entry(server, |t| t.tls12 = Some(value));
    }

    fn tls12_session(&self, server: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.with(server, |t| t.tls12.clone()).flatten()
    }

    fn remove_tls12_session(&self, server: &ServerName<'static>) {
        self.with(server, |t| t.tls12 = None);
    }

    fn insert_tls13_ticket(&self, server: ServerName<'static>, value: Tls13ClientSessionValue) {
        self.entry(server, |t| {
            if t.tls13.len() >= TICKETS_PER_SERVER {
                t.tls13.pop_front();
            }
            t.tls13.push_back(value);
        });
    }

    fn take_tls13_ticket(&self, server: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        self.with(server, |t| t.tls13.pop_back()).flatten()
    }
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

    /// A burst of connections to one server resumes with the tickets
    /// earlier ones left, not just 8 of them (rustls's own store's cap).
    #[tokio::test]
    async fn a_burst_of_client_connections_resumes_beyond_eight_tickets() {
        use rustls::pki_types::pem::PemObject as _;
        let (cert_pem, key_pem) = self_signed(&["localhost"]).unwrap();
        let store = CertStore::load(TlsSource::InMemory {
            cert_pem: cert_pem.clone(),
            key_pem,
        })
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(server_config(store).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    use tokio::io::AsyncWriteExt as _;
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        // Tickets go out after the handshake: flush them.
                        let _ = tls.write_all(b"x").await;
                        let _ = tls.flush().await;
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    }
                });
            }
        });
        let roots: Vec<_> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        let connector =
            tokio_rustls::TlsConnector::from(crate::http_client::tls_client_config_with(&roots));
        let connect = || async {
            use tokio::io::AsyncReadExt as _;
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            let mut tls = connector.connect(name, tcp).await.unwrap();
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await.unwrap();
            tls.get_ref().1.handshake_kind()
        };
        // Each connection leaves the server's tickets (2) behind.
        for _ in 0..12 {
            connect().await;
        }
        let burst = futures_util::future::join_all((0..12).map(|_| connect())).await;
        let resumed = burst
            .iter()
            .filter(|k| **k == Some(rustls::HandshakeKind::Resumed))
            .count();
        assert_eq!(resumed, 12, "{burst:?}");
    }

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
