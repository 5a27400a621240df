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
/// ring provider, webpki roots, TLS 1.2 and 1.3.
pub fn tls_client_config() -> Arc<rustls::ClientConfig> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth());
    match config {
        Ok(c) => Arc::new(c),
        // The ring provider always supports the default versions; this arm
        // exists only so a future rustls change fails loudly, not silently.
        Err(e) => panic!("rustls ring provider rejected default protocol versions: {e}"),
    }
}

/// A connector for `http://` and `https://` URIs (HTTP/1.1, no Nagle),
/// giving up on TCP connect after `connect_timeout`.
pub fn https_connector(connect_timeout: Duration) -> HttpsConnector<HttpConnector<Resolver>> {
    https_connector_with(connect_timeout, Resolver::default())
}

fn https_connector_with(
    connect_timeout: Duration,
    resolver: Resolver,
) -> HttpsConnector<HttpConnector<Resolver>> {
    let mut http = HttpConnector::new_with_resolver(resolver);
    // The HTTPS wrapper decides per scheme; the inner connector must let
    // `https://` URIs through to it.
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*tls_client_config()).clone())
        .https_or_http()
        .enable_http1()
        .wrap_connector(http)
}

pub fn build(connect_timeout: Duration) -> HttpClient {
    build_with(connect_timeout, Resolver::default())
}

/// A client whose every connection goes to `resolver`'s answer.
pub fn build_with(connect_timeout: Duration, resolver: Resolver) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(32)
        .build(https_connector_with(connect_timeout, resolver))
}
