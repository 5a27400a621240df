//! The validated relay configuration: every `serve` flag checked once, at
//! start-up, into a [`Config`] the rest of the relay reads and never
//! second-guesses. Every bad value is reported (not just the first) and the
//! process exits with code 2. Values derived from others (the real-time
//! endpoint, the issuer, the JWKS URL, the parsed app target) are worked out
//! here so the rest of the code never guesses.
//!
//! - `mod.rs`: [`Config`] and [`Config::from_args`].
//! - [`endpoints`]: URL derivation (real-time endpoint, AppSync `host`,
//!   pool region).
//! - [`app`]: the SSR app target (`--app-upstream`), parsed once.
//! - [`ranges`]: the accepted range of every number.
//! - [`cluster`]: `--redis-url`, `--redis-password-file`.

pub mod app;
pub mod cluster;
pub mod endpoints;
pub mod ranges;
pub mod shared;

pub use app::{AppTarget, AppUpstream};

use crate::cli::{LogFormat, OnOff, ServeArgs};
use crate::forwarded::{IpNet, TrustedProxies};
use crate::limits::Limits;
use crate::origin::OriginPolicy;
use crate::refresh::RefreshConfig;
use crate::session::CookiePolicy;
use crate::tls::{certified_key, TlsSource};
use crate::verify::TokenUse;
use endpoints::{derive_realtime, host_with_port, parse_http_url, pool_region};
use std::net::SocketAddr;
use std::time::Duration;

/// A fully validated relay configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub http_endpoint: url::Url,
    pub realtime_endpoint: url::Url,
    /// Where AppSync connections go instead of resolving the endpoints.
    pub appsync_address: Option<std::net::IpAddr>,
    /// Client TLS for every outbound connection: the public roots, plus
    /// `--upstream-ca-file`'s.
    pub upstream_tls: std::sync::Arc<rustls::ClientConfig>,
    /// `host[:port]` of the HTTP endpoint, for the authorization objects.
    pub http_host: String,
    pub client_id: String,
    pub issuer: String,
    pub jwks_url: String,
    pub token_use: TokenUse,
    pub origins: OriginPolicy,
    pub events_path: String,
    pub realtime_path: String,
    pub jwt_leeway: Duration,
    pub jwks_refetch_interval: Duration,
    /// Age after which the key set is fetched again.
    pub jwks_refresh_interval: Duration,
    /// Refresh tokens live this long: a session whose token was issued
    /// longer ago cannot be refreshed and is refused without a Cognito call.
    pub refresh_token_validity: Duration,
    /// How long an HTTP publish body may take to arrive.
    pub body_timeout: Duration,
    pub upstream_timeout: Duration,
    pub max_message_bytes: usize,
    pub token_cache_size: usize,
    pub drain_timeout: Duration,
    /// TLS on the public listener; plain HTTP when `None` (behind a TLS
    /// terminating ingress, or local use).
    pub tls: Option<TlsSource>,
    pub refresh: RefreshConfig,
    pub refresh_before: Duration,
    pub mid_connection_refresh: bool,
    pub cookies: CookiePolicy,
    pub trust_forwarded: TrustedProxies,
    pub max_session_age: Option<Duration>,
    pub upstream_redial_attempts: u32,
    pub app_upstream: Option<AppUpstream>,
    pub drain_delay: Duration,
    pub log_format: LogFormat,
    pub limits: Limits,
    /// How long one frame may take to be written to either side.
    pub send_timeout: Duration,
    /// `--public-origin` is https: browsers reach us over TLS terminated in
    /// front, so cookies are `Secure`.
    pub public_https: bool,
    /// `--shared-channel*`; no patterns means no shared channels.
    pub shared: crate::fanout::SharedConfig,
    /// `--redis-url`: coordination between replicas; `None`, this process alone.
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// `--channel-policy`: the file and the policy read from it at start-up.
    pub channel_policy: Option<(std::path::PathBuf, std::sync::Arc<crate::policy::Policy>)>,
}

impl Config {
    /// Validates every flag of `serve`; returns all problems at once.
    pub fn from_args(args: &ServeArgs) -> Result<Config, Vec<String>> {
        let mut errors = Vec::new();
        ranges::check(args, &mut errors);
        let http_endpoint = parse_http_url(
            "appsync-http-endpoint",
            &args.appsync_http_endpoint,
            &mut errors,
        );
        let realtime_endpoint = match (&args.appsync_realtime_endpoint, &http_endpoint) {
            (Some(rt), _) => match url::Url::parse(rt) {
                Ok(u) if matches!(u.scheme(), "ws" | "wss") && u.host_str().is_some() => Some(u),
                _ => {
                    errors.push(format!("--appsync-realtime-endpoint: '{rt}' must be a ws:// or wss:// URL with a host"));
                    None
                }
            },
            (None, Some(http)) => {
                match derive_realtime(http) {
                    Ok(u) => Some(u),
                    Err(e) => {
                        errors.push(format!("--appsync-realtime-endpoint: cannot derive from the HTTP endpoint: {e}"));
                        None
                    }
                }
            }
            (None, None) => None,
        };
        let region = pool_region(&args.cognito_user_pool_id);
        if region.is_none() {
            errors.push(format!(
                "--cognito-user-pool-id: '{}' is not <region>_<id> (e.g. eu-west-1_AbC123)",
                args.cognito_user_pool_id
            ));
        }
        if args.cognito_client_id.is_empty()
            || !args
                .cognito_client_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            errors.push(
                "--cognito-client-id: must be a non-empty app client id ([A-Za-z0-9_-])"
                    .to_string(),
            );
        }
        let issuer = match (&args.cognito_issuer, region) {
            (Some(iss), _) => {
                parse_http_url("cognito-issuer", iss, &mut errors);
                iss.trim_end_matches('/').to_string()
            }
            (None, Some(region)) => format!(
                "https://cognito-idp.{region}.amazonaws.com/{}",
                args.cognito_user_pool_id
            ),
            (None, None) => String::new(),
        };
        let jwks_url = match &args.cognito_jwks_url {
            Some(u) => {
                parse_http_url("cognito-jwks-url", u, &mut errors);
                u.clone()
            }
            None => format!("{issuer}/.well-known/jwks.json"),
        };
        let origins = match OriginPolicy::new(&args.allowed_origins, args.allow_missing_origin) {
            Ok(p) => Some(p),
            Err(e) => {
                errors.push(format!("--allowed-origin: {e}"));
                None
            }
        };
        let events_path = args.events_path.trim_end_matches('/').to_string();
        if !events_path.starts_with('/') || events_path.contains(['?', '#', ' ']) {
            errors.push(format!(
                "--events-path: '{}' must be an absolute path such as /event",
                args.events_path
            ));
        }
        let upstream_tls = match &args.upstream_ca_file {
            None => crate::http_client::tls_client_config(),
            Some(path) => match crate::http_client::load_ca_file(path) {
                Ok(certs) => crate::http_client::tls_client_config_with(&certs),
                Err(e) => {
                    errors.push(format!("--upstream-ca-file: {e}"));
                    crate::http_client::tls_client_config()
                }
            },
        };
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => {
                let loaded = std::fs::read(cert)
                    .map_err(|e| format!("--tls-cert: cannot read {}: {e}", cert.display()))
                    .and_then(|c| {
                        std::fs::read(key)
                            .map_err(|e| format!("--tls-key: cannot read {}: {e}", key.display()))
                            .map(|k| (c, k))
                    })
                    .and_then(|(c, k)| {
                        certified_key(&c, &k).map_err(|e| format!("--tls-cert/--tls-key: {e}"))
                    });
                if let Err(e) = loaded {
                    errors.push(e);
                }
                Some(TlsSource::Files {
                    cert: cert.clone(),
                    key: key.clone(),
                    reload_interval: Duration::from_secs(args.tls_reload_interval.max(1)),
                })
            }
            _ => None,
        };
        let cognito_endpoint = match (&args.cognito_endpoint, region) {
            (Some(e), _) => {
                parse_http_url("cognito-endpoint", e, &mut errors);
                e.clone()
            }
            (None, Some(region)) => format!("https://cognito-idp.{region}.amazonaws.com/"),
            (None, None) => String::new(),
        };
        let trust_forwarded = args
            .trust_forwarded
            .iter()
            .filter_map(|t| match IpNet::parse(t) {
                Ok(n) => Some(n),
                Err(e) => {
                    errors.push(format!("--trust-forwarded: {e}"));
                    None
                }
            })
            .collect::<Vec<_>>();
        let trust_forwarded = TrustedProxies::new(trust_forwarded);
        if let Some(domain) = &args.cookie_domain {
            if domain.is_empty()
                || !domain
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            {
                errors.push(format!("--cookie-domain: '{domain}' is not a domain name"));
            }
        }
        let strip_headers = app::strip_headers(&args.strip_request_headers, &mut errors);
        let public_https = match &args.public_origin {
            None => false,
            Some(o) => match crate::origin::normalize(o) {
                Ok(o) => o.starts_with("https://"),
                Err(e) => {
                    errors.push(format!("--public-origin: {e}"));
                    false
                }
            },
        };
        let app_upstream = args.app_upstream.as_ref().and_then(|u| {
            let url = parse_http_url("app-upstream", u, &mut errors)?;
            let target = match AppTarget::parse(&url) {
                Ok(t) => t,
                Err(e) => {
                    errors.push(format!("--app-upstream: {e}"));
                    return None;
                }
            };
            Some(AppUpstream {
                strip_headers: strip_headers.clone(),
                target,
                connect_timeout: Duration::from_secs(args.app_connect_timeout.max(1)),
                response_timeout: Duration::from_secs(args.app_timeout.max(1)),
            })
        });
        let http_host = http_endpoint.as_ref().and_then(host_with_port);
        let shared = shared::parse(args, http_host.as_deref(), &mut errors);
        if args.shared_channel_check == crate::cli::SharedCheck::Policy
            && args.channel_policy.is_none()
        {
            errors.push(
                "--shared-channel-check policy lets --channel-policy's grant stand in for AppSync's check: add --channel-policy FILE, or keep the check (subscribe)"
                    .into(),
            );
        }
        let channel_policy =
            args.channel_policy
                .as_ref()
                .and_then(|path| match crate::policy::Policy::load(path) {
                    Ok(p) => Some((path.clone(), std::sync::Arc::new(p))),
                    Err(e) => {
                        errors.push(format!("--channel-policy {}: {e}", path.display()));
                        None
                    }
                });
        let cluster = cluster::parse(args, &mut errors);
        match (
            errors.is_empty(),
            http_endpoint,
            realtime_endpoint,
            origins,
            http_host,
        ) {
            (
                true,
                Some(http_endpoint),
                Some(realtime_endpoint),
                Some(origins),
                Some(http_host),
            ) => Ok(Config {
                listen: args.listen,
                admin_listen: args.admin_listen,
                http_endpoint,
                realtime_endpoint,
                appsync_address: args.appsync_address,
                upstream_tls,
                http_host,
                client_id: args.cognito_client_id.clone(),
                issuer,
                jwks_url,
                token_use: args.token_use,
                origins,
                realtime_path: format!("{events_path}/realtime"),
                events_path,
                jwt_leeway: Duration::from_secs(args.jwt_leeway),
                jwks_refetch_interval: Duration::from_secs(args.jwks_refetch_interval),
                jwks_refresh_interval: Duration::from_secs(args.jwks_refresh_interval),
                refresh_token_validity: Duration::from_secs(args.refresh_token_validity),
                body_timeout: Duration::from_secs(args.body_timeout),
                upstream_timeout: Duration::from_secs(args.upstream_timeout),
                max_message_bytes: args.max_message_bytes,
                token_cache_size: args.token_cache_size,
                drain_timeout: Duration::from_secs(args.drain_timeout),
                tls,
                refresh: RefreshConfig {
                    endpoint: cognito_endpoint,
                    client_id: args.cognito_client_id.clone(),
                    client_secret: args.cognito_client_secret.clone(),
                    api: args.refresh_api,
                    timeout: Duration::from_secs(args.upstream_timeout),
                    capacity: args.token_cache_size,
                    refresh_before: Duration::from_secs(args.refresh_before),
                },
                refresh_before: Duration::from_secs(args.refresh_before),
                mid_connection_refresh: args.mid_connection_refresh == OnOff::On,
                cookies: CookiePolicy {
                    same_site: args.cookie_same_site,
                    max_age: args.cookie_max_age,
                    domain: args.cookie_domain.clone(),
                },
                trust_forwarded,
                max_session_age: (args.max_session_age > 0)
                    .then(|| Duration::from_secs(args.max_session_age)),
                upstream_redial_attempts: args.upstream_redial_attempts,
                app_upstream,
                drain_delay: Duration::from_secs(args.drain_delay),
                log_format: args.log_format,
                send_timeout: Duration::from_secs(args.send_timeout),
                public_https,
                shared,
                channel_policy,
                cluster,
                limits: Limits {
                    max_connections: args.max_connections,
                    max_connections_per_user: args.max_connections_per_user,
                    max_connections_per_ip: args.max_connections_per_ip,
                    handshake_timeout: Duration::from_secs(args.handshake_timeout),
                    max_header_bytes: args.max_header_bytes,
                    max_subscriptions: args.max_subscriptions,
                    publish_rate: args.publish_rate,
                    refresh_rate_per_ip: args.refresh_rate_per_ip,
                    refresh_rate_per_user: args.refresh_rate_per_user,
                    idle_timeout: (args.idle_timeout > 0)
                        .then(|| Duration::from_secs(args.idle_timeout)),
                },
            }),
            _ => Err(errors),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn args(extra: &[&str]) -> ServeArgs {
        let mut argv = vec![
            "appsync-relay",
            "serve",
            "--appsync-http-endpoint",
            "https://abc.appsync-api.eu-west-1.amazonaws.com/event",
            "--cognito-user-pool-id",
            "eu-west-1_AbC123",
            "--cognito-client-id",
            "client1",
            "--allowed-origin",
            "https://app.example.com",
        ];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Serve(a) => *a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn derives_realtime_issuer_and_jwks() {
        let c = Config::from_args(&args(&[])).unwrap();
        assert_eq!(
            c.realtime_endpoint.as_str(),
            "wss://abc.appsync-realtime-api.eu-west-1.amazonaws.com/event/realtime"
        );
        assert_eq!(c.http_host, "abc.appsync-api.eu-west-1.amazonaws.com");
        assert_eq!(
            c.issuer,
            "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbC123"
        );
        assert_eq!(
            c.jwks_url,
            "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbC123/.well-known/jwks.json"
        );
        assert_eq!(c.realtime_path, "/event/realtime");
    }

    #[test]
    fn custom_domain_and_local_endpoints() {
        let c = Config::from_args(&args(&[
            "--appsync-http-endpoint",
            "http://127.0.0.1:4010/event",
        ]))
        .unwrap();
        assert_eq!(
            c.realtime_endpoint.as_str(),
            "ws://127.0.0.1:4010/event/realtime"
        );
        assert_eq!(c.http_host, "127.0.0.1:4010");
        let c = Config::from_args(&args(&[
            "--appsync-http-endpoint",
            "https://api.example.com/event",
        ]))
        .unwrap();
        assert_eq!(
            c.realtime_endpoint.as_str(),
            "wss://api.example.com/event/realtime"
        );
    }

    #[test]
    fn refresh_defaults_follow_the_pool_region() {
        let c = Config::from_args(&args(&[])).unwrap();
        assert_eq!(
            c.refresh.endpoint,
            "https://cognito-idp.eu-west-1.amazonaws.com/"
        );
        assert_eq!(c.refresh.api, crate::refresh::RefreshApi::GetTokens);
        assert!(c.mid_connection_refresh);
        assert_eq!(c.refresh_before, Duration::from_secs(60));
    }

    #[test]
    fn reports_every_bad_value() {
        let errs = Config::from_args(&args(&[
            "--cognito-user-pool-id",
            "nope",
            "--allowed-origin",
            "https://x.test/path",
            "--events-path",
            "event",
            "--appsync-http-endpoint",
            "ftp://x",
        ]))
        .unwrap_err();
        assert!(
            errs.iter().any(|e| e.starts_with("--cognito-user-pool-id")),
            "{errs:?}"
        );
        assert!(
            errs.iter().any(|e| e.starts_with("--allowed-origin")),
            "{errs:?}"
        );
        assert!(
            errs.iter().any(|e| e.starts_with("--events-path")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with("--appsync-http-endpoint")),
            "{errs:?}"
        );
    }

    #[test]
    fn the_shared_api_key_file_is_read_checked_and_never_echoed() {
        let dir = std::env::temp_dir().join(format!("relay-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p.to_string_lossy().into_owned()
        };
        let good = file("good", "da2-SECRETKEY\n");
        let shared = ["--shared-channel", "/prices/*", "--shared-api-key-file"];
        let with = |path: &str| {
            let mut a = shared.to_vec();
            a.push(path);
            Config::from_args(&args(&a))
        };
        let c = with(&good).unwrap();
        let key = c.shared.api_key.expect("key read");
        assert_eq!(
            key.as_map()["x-api-key"],
            "da2-SECRETKEY",
            "trimmed, sent as x-api-key"
        );
        assert_eq!(key.host(), "abc.appsync-api.eu-west-1.amazonaws.com");
        assert!(!format!("{key:?}").contains("SECRETKEY"));

        let bom = file("bom", "\u{feff}da2-SECRETKEY\r\n");
        let c = with(&bom).unwrap();
        assert_eq!(
            c.shared.api_key.unwrap().as_map()["x-api-key"],
            "da2-SECRETKEY"
        );
        for bad in [
            file("empty", " \n"),
            file("two", "da2-SECRETKEY other\n"),
            file("zwsp", "da2-SECRETKEY\u{200b}\n"),
        ] {
            let errs = with(&bad).unwrap_err();
            assert!(
                errs.iter().any(|e| e.contains("expected one API key")),
                "{errs:?}"
            );
            assert!(!errs.iter().any(|e| e.contains("SECRETKEY")), "{errs:?}");
        }
        let errs = with(&dir.join("missing").to_string_lossy()).unwrap_err();
        assert!(
            errs.iter().any(|e| e.starts_with("--shared-api-key-file")),
            "{errs:?}"
        );
        // Without the check, the key would authorise every signed-in user.
        let errs = Config::from_args(&args(&[
            "--shared-channel",
            "/prices/*",
            "--shared-channel-check",
            "none",
            "--shared-api-key-file",
            &good,
        ]))
        .unwrap_err();
        assert!(errs.iter().any(|e| e.contains("check none")), "{errs:?}");
        // Without shared channels the key would be used by nothing.
        let errs = Config::from_args(&args(&["--shared-api-key-file", &good])).unwrap_err();
        assert!(
            errs.iter().any(|e| e.contains("add --shared-channel")),
            "{errs:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
