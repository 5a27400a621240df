//! Outbound HTTP: hyper's pooled client over rustls with the webpki roots,
//! speaking `http://` too so local emulators work. Used for JWKS fetches,
//! Cognito refreshes and HTTP publish to AppSync; the app proxy builds its
//! own pool on the same connector.
//!
//! It owns transport only; callers set their own timeouts per request.
//!
//! Names resolve through the system resolver, or — for the AppSync client
//! when `--appsync-address` is set — to one fixed IP address, the name still
//! going into `Host`, TLS SNI and the certificate check.

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

pub type HttpClient = Client<HttpsConnector<HttpConnector<Resolver>>, Full<Bytes>>;

/// The system resolver, or one pinned address for every name.
#[derive(Clone, Debug)]
pub struct Resolver {
    pinned: Option<IpAddr>,
    system: GaiResolver,
}

impl Default for Resolver {
    fn default() -> Resolver {
        Resolver {
            pinned: None,
            system: GaiResolver::new(),
        }
    }
}

impl Resolver {
    /// Every name resolves to `ip` (the port comes from the URL).
    pub fn pinned(ip: IpAddr) -> Resolver {
        Resolver {
            pinned: Some(ip),
            system: GaiResolver::new(),
        }
    }
}

type Resolving =
    Pin<Box<dyn Future<Output = Result<std::vec::IntoIter<SocketAddr>, std::io::Error>> + Send>>;

impl tower_service::Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Resolving;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        if let Some(ip) = self.pinned {
            // Port 0: the connector puts the URL's (or the scheme's) in.
            return Box::pin(std::future::ready(Ok(
                vec![SocketAddr::new(ip, 0)].into_iter()
            )));
        }
        let lookup = self.system.call(name);
        Box::pin(async move { Ok(lookup.await?.collect::<Vec<_>>().into_iter()) })
    }
}

/// The rustls client configuration shared by every outbound TLS connection:
/// [`crate::tls::provider`], webpki roots, TLS 1.2 and 1.3.
pub fn tls_client_config() -> Arc<rustls::ClientConfig> {
    tls_client_config_with(&[])
}

/// The CA certificates in a PEM file, for `--upstream-ca-file`: a private
/// CA (a corporate TLS proxy, an emulator with its own certificate) trusted
/// beside the public roots. An unreadable file or one without a certificate
/// is an error, never an empty trust set.
pub fn load_ca_file(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(certs)
}

/// [`tls_client_config`] trusting `extra` CA certificates too. A
/// certificate rustls cannot use as a root is skipped (it would fail every
/// handshake it is meant for, which the caller's checks report).
pub fn tls_client_config_with(extra: &[CertificateDer<'static>]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let (_added, _ignored) = roots.add_parsable_certificates(extra.iter().cloned());
    let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth());
    match config {
        Ok(mut c) => {
            c.resumption =
                rustls::client::Resumption::store(Arc::new(crate::tls::ClientTickets::default()));
            Arc::new(c)
        }
        // The provider always supports the default versions; this arm
        // exists only so a future rustls change fails loudly, not silently.
        Err(e) => panic!("the rustls provider rejected default protocol versions: {e}"),
    }
}

/// A connector for `http://` and `https://` URIs (HTTP/1.1, no Nagle),
/// giving up on TCP connect after `connect_timeout`.
pub fn https_connector(connect_timeout: Duration) -> HttpsConnector<HttpConnector<Resolver>> {
    https_connector_with(connect_timeout, Resolver::default(), tls_client_config())
}

fn https_connector_with(
    connect_timeout: Duration,
    resolver: Resolver,
    tls: Arc<rustls::ClientConfig>,
) -> HttpsConnector<HttpConnector<Resolver>> {
    let mut http = HttpConnector::new_with_resolver(resolver);
    // The HTTPS wrapper decides per scheme; the inner connector must let
    // `https://` URIs through to it.
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*tls).clone())
        .https_or_http()
        .enable_http1()
        .wrap_connector(http)
}

pub fn build(connect_timeout: Duration) -> HttpClient {
    build_with(connect_timeout, Resolver::default())
}

/// A client whose every connection goes to `resolver`'s answer.
pub fn build_with(connect_timeout: Duration, resolver: Resolver) -> HttpClient {
    build_tls(connect_timeout, resolver, tls_client_config())
}

/// A client trusting `tls`'s roots (see [`tls_client_config_with`]).
pub fn build_tls(
    connect_timeout: Duration,
    resolver: Resolver,
    tls: Arc<rustls::ClientConfig>,
) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(32)
        .build(https_connector_with(connect_timeout, resolver, tls))
}
