//! The stack's TLS material: one self-signed certificate, written for the
//! servers (emulator, relay, nginx), and the client configuration that
//! trusts it.

use std::path::Path;
use std::sync::Arc;

/// The stack's one certificate (self-signed, for `localhost` and
/// `127.0.0.1`): served by the emulator, the relay and nginx, and the only
/// trust anchor of every client of them.
pub(crate) struct TlsFiles {
    pub(crate) cert: std::path::PathBuf,
    pub(crate) key: std::path::PathBuf,
    client: Arc<rustls::ClientConfig>,
}

impl TlsFiles {
    pub(crate) fn write(dir: &Path) -> Result<TlsFiles, String> {
        use rustls::pki_types::pem::PemObject as _;
        let (cert_pem, key_pem) = appsync_relay::tls::self_signed(&["localhost", "127.0.0.1"])
            .map_err(|e| format!("certificate: {e}"))?;
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::write(&cert, &cert_pem).map_err(|e| e.to_string())?;
        std::fs::write(&key, &key_pem).map_err(|e| e.to_string())?;
        let mut roots = rustls::RootCertStore::empty();
        for der in rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes()) {
            roots
                .add(der.map_err(|e| format!("certificate PEM: {e}"))?)
                .map_err(|e| format!("trust anchor: {e}"))?;
        }
        // The relay's own provider: X25519 first and AES-128-GCM first, as
        // browsers offer them (the nginx column's clients use it too).
        let client = rustls::ClientConfig::builder_with_provider(appsync_relay::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsFiles {
            cert,
            key,
            client: Arc::new(client),
        })
    }
}

impl TlsFiles {
    /// The client configuration every bench client uses against the stack.
    pub(crate) fn client(&self) -> Arc<rustls::ClientConfig> {
        self.client.clone()
    }
}
