//! Command-line flags (each with an `APPSYNC_RELAY_*` environment variable)
//! and their validation into a [`Config`].
//!
//! Everything is checked here, once, at start-up: every bad value is
//! reported (not just the first) and the process exits with code 2. Values
//! derived from others (the real-time endpoint, the issuer, the JWKS URL)
//! are worked out here so the rest of the code never guesses.

use crate::origin::OriginPolicy;
use crate::verify::TokenUse;
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "appsync-relay",
    version,
    about = "Relay browser WebSockets to AWS AppSync Events with the Cognito token from HTTP-only cookies"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay.
    Serve(Box<ServeArgs>),
    /// Run the built-in strict AppSync Events emulator (for local development and tests).
    Emulate(EmulateArgs),
    /// Run everything locally: relay, emulator and a development identity provider, with a demo page.
    Demo(crate::demo::DemoArgs),
}

#[derive(Debug, Clone, Args)]
#[command(args_override_self = true)]
pub struct ServeArgs {
    /// Public listener (browser traffic).
    #[arg(long, env = "APPSYNC_RELAY_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Admin listener: /healthz, /readyz, /metrics. Keep it off the public network.
    #[arg(
        long,
        env = "APPSYNC_RELAY_ADMIN_LISTEN",
        default_value = "127.0.0.1:9090"
    )]
    pub admin_listen: SocketAddr,
    /// AppSync Events HTTP endpoint, e.g. https://<id>.appsync-api.<region>.amazonaws.com/event
    #[arg(long, env = "APPSYNC_RELAY_APPSYNC_HTTP_ENDPOINT")]
    pub appsync_http_endpoint: String,
    /// Real-time endpoint; derived from the HTTP endpoint when omitted
    /// (appsync-api → appsync-realtime-api, https → wss, + /realtime).
    #[arg(long, env = "APPSYNC_RELAY_APPSYNC_REALTIME_ENDPOINT")]
    pub appsync_realtime_endpoint: Option<String>,
    /// Cognito user pool id, e.g. eu-west-1_AbCdEf123.
    #[arg(long, env = "APPSYNC_RELAY_COGNITO_USER_POOL_ID")]
    pub cognito_user_pool_id: String,
    /// Cognito app client id whose cookies and tokens are accepted.
    #[arg(long, env = "APPSYNC_RELAY_COGNITO_CLIENT_ID")]
    pub cognito_client_id: String,
    /// Expected `iss`; defaults to https://cognito-idp.<region>.amazonaws.com/<pool id>.
    #[arg(long, env = "APPSYNC_RELAY_COGNITO_ISSUER")]
    pub cognito_issuer: Option<String>,
    /// JWKS URL; defaults to <issuer>/.well-known/jwks.json.
    #[arg(long, env = "APPSYNC_RELAY_COGNITO_JWKS_URL")]
    pub cognito_jwks_url: Option<String>,
    /// Which Cognito token to verify and forward.
    #[arg(
        long,
        env = "APPSYNC_RELAY_TOKEN_USE",
        value_enum,
        default_value = "access"
    )]
    pub token_use: TokenUse,
    /// Origin allowed to open the WebSocket or publish (scheme://host[:port]); repeatable.
    #[arg(
        long = "allowed-origin",
        env = "APPSYNC_RELAY_ALLOWED_ORIGINS",
        value_delimiter = ',',
        required = true
    )]
    pub allowed_origins: Vec<String>,
    /// Accept requests with no Origin header (non-browser clients).
    #[arg(long, env = "APPSYNC_RELAY_ALLOW_MISSING_ORIGIN")]
    pub allow_missing_origin: bool,
    /// Path prefix of the relayed routes: <path>/realtime (WebSocket) and <path> (POST publish).
    #[arg(long, env = "APPSYNC_RELAY_EVENTS_PATH", default_value = "/event")]
    pub events_path: String,
    /// Clock skew tolerated on exp/nbf, in seconds.
    #[arg(long, env = "APPSYNC_RELAY_JWT_LEEWAY", default_value_t = 10)]
    pub jwt_leeway: u64,
    /// Minimum seconds between JWKS refetches triggered by an unknown kid.
    #[arg(
        long,
        env = "APPSYNC_RELAY_JWKS_REFETCH_INTERVAL",
        default_value_t = 10
    )]
    pub jwks_refetch_interval: u64,
    /// Upstream connect (TCP + TLS + WebSocket handshake) deadline, seconds; beyond it the browser gets 504.
    #[arg(long, env = "APPSYNC_RELAY_UPSTREAM_TIMEOUT", default_value_t = 10)]
    pub upstream_timeout: u64,
    /// Largest WebSocket message or HTTP publish body accepted, in bytes (AppSync: 5 events × 240 KB).
    #[arg(
        long,
        env = "APPSYNC_RELAY_MAX_MESSAGE_BYTES",
        default_value_t = 1_310_720
    )]
    pub max_message_bytes: usize,
    /// Most verified tokens cached (by hash) to skip repeated RSA checks.
    #[arg(
        long,
        env = "APPSYNC_RELAY_TOKEN_CACHE_SIZE",
        default_value_t = 100_000
    )]
    pub token_cache_size: usize,
    /// Seconds open relays get to finish after shutdown starts before they are closed with 1001.
    #[arg(long, env = "APPSYNC_RELAY_DRAIN_TIMEOUT", default_value_t = 30)]
    pub drain_timeout: u64,
    /// PEM certificate chain for TLS on the public listener (with --tls-key). Reloaded when it changes.
    #[arg(long, env = "APPSYNC_RELAY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for --tls-cert.
    #[arg(long, env = "APPSYNC_RELAY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Seconds between checks of the certificate files for changes.
    #[arg(long, env = "APPSYNC_RELAY_TLS_RELOAD_INTERVAL", default_value_t = 10)]
    pub tls_reload_interval: u64,
    /// Cognito IdP endpoint for refreshes; defaults to https://cognito-idp.<region>.amazonaws.com/.
    #[arg(long, env = "APPSYNC_RELAY_COGNITO_ENDPOINT")]
    pub cognito_endpoint: Option<String>,
    /// App client secret, for app clients that have one (SECRET_HASH / ClientSecret).
    #[arg(
        long,
        env = "APPSYNC_RELAY_COGNITO_CLIENT_SECRET",
        hide_env_values = true
    )]
    pub cognito_client_secret: Option<String>,
    /// Cognito API used to refresh sessions.
    #[arg(
        long,
        env = "APPSYNC_RELAY_REFRESH_API",
        value_enum,
        default_value = "get-tokens"
    )]
    pub refresh_api: crate::refresh::RefreshApi,
    /// Refresh a token this many seconds before it expires (at the handshake and on open sockets).
    #[arg(long, env = "APPSYNC_RELAY_REFRESH_BEFORE", default_value_t = 60)]
    pub refresh_before: u64,
    /// On open sockets, refresh tokens in place (on), or close with 4000 "reauthenticate" before expiry so the client reconnects and the handshake writes the cookies (off).
    #[arg(
        long,
        env = "APPSYNC_RELAY_MID_CONNECTION_REFRESH",
        value_enum,
        default_value = "on"
    )]
    pub mid_connection_refresh: OnOff,
    /// SameSite attribute of the cookies the relay writes.
    #[arg(
        long,
        env = "APPSYNC_RELAY_COOKIE_SAME_SITE",
        value_enum,
        default_value = "strict"
    )]
    pub cookie_same_site: crate::cookies::SameSite,
    /// Max-Age (seconds) of the cookies the relay writes.
    #[arg(
        long,
        env = "APPSYNC_RELAY_COOKIE_MAX_AGE",
        default_value_t = 31_536_000
    )]
    pub cookie_max_age: u64,
    /// Domain attribute of the cookies the relay writes (host-only when omitted, as Amplify by default).
    #[arg(long, env = "APPSYNC_RELAY_COOKIE_DOMAIN")]
    pub cookie_domain: Option<String>,
    /// Peers (IP or CIDR; repeatable) whose X-Forwarded-Proto is believed.
    #[arg(
        long = "trust-forwarded",
        env = "APPSYNC_RELAY_TRUST_FORWARDED",
        value_delimiter = ','
    )]
    pub trust_forwarded: Vec<String>,
    /// Close relayed connections this many seconds after they opened with 4401 (0 = no limit; AppSync's own cap is 24 h).
    #[arg(long, env = "APPSYNC_RELAY_MAX_SESSION_AGE", default_value_t = 0)]
    pub max_session_age: u64,
    /// Times the relay re-dials AppSync when the upstream connection drops, keeping the browser's socket open (0 = never).
    #[arg(
        long,
        env = "APPSYNC_RELAY_UPSTREAM_REDIAL_ATTEMPTS",
        default_value_t = 5
    )]
    pub upstream_redial_attempts: u32,
    /// The SSR app to front: every request outside the events path is proxied there (http://host:port).
    #[arg(long, env = "APPSYNC_RELAY_APP_UPSTREAM")]
    pub app_upstream: Option<String>,
    /// Seconds to connect to the app upstream before answering 502.
    #[arg(long, env = "APPSYNC_RELAY_APP_CONNECT_TIMEOUT", default_value_t = 5)]
    pub app_connect_timeout: u64,
    /// Seconds to wait for the app's response headers before answering 504.
    #[arg(long, env = "APPSYNC_RELAY_APP_TIMEOUT", default_value_t = 60)]
    pub app_timeout: u64,
    /// Seconds the listener keeps serving after SIGTERM while /readyz reports 503, so load balancers stop routing here first.
    #[arg(long, env = "APPSYNC_RELAY_DRAIN_DELAY", default_value_t = 5)]
    pub drain_delay: u64,
    /// Log output: human-readable text or one JSON object per line.
    #[arg(
        long,
        env = "APPSYNC_RELAY_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// Most relayed WebSockets at once (0 = no limit); beyond it handshakes get 429.
    #[arg(long, env = "APPSYNC_RELAY_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Most relayed WebSockets per user (`sub`) at once (0 = no limit); beyond it 429.
    #[arg(
        long,
        env = "APPSYNC_RELAY_MAX_CONNECTIONS_PER_USER",
        default_value_t = 20
    )]
    pub max_connections_per_user: usize,
    /// Most relayed WebSockets per client IP at once (0 = no limit); beyond it 429.
    #[arg(
        long,
        env = "APPSYNC_RELAY_MAX_CONNECTIONS_PER_IP",
        default_value_t = 200
    )]
    pub max_connections_per_ip: usize,
    /// Seconds a client gets to complete TLS and send its request head (slow-loris guard).
    #[arg(long, env = "APPSYNC_RELAY_HANDSHAKE_TIMEOUT", default_value_t = 10)]
    pub handshake_timeout: u64,
    /// Largest request head (request line + headers) accepted, in bytes (at least 8192).
    #[arg(long, env = "APPSYNC_RELAY_MAX_HEADER_BYTES", default_value_t = 65_536)]
    pub max_header_bytes: usize,
    /// Most subscriptions per WebSocket; beyond it subscribe gets subscribe_error.
    #[arg(long, env = "APPSYNC_RELAY_MAX_SUBSCRIPTIONS", default_value_t = 200)]
    pub max_subscriptions: usize,
    /// Publishes per second per WebSocket (token bucket, burst of the same size; 0 = no limit); beyond it publish gets publish_error.
    #[arg(long, env = "APPSYNC_RELAY_PUBLISH_RATE", default_value_t = 50)]
    pub publish_rate: u32,
    /// Close WebSockets after this many seconds without a frame other than keep-alives either way (0 = never).
    #[arg(long, env = "APPSYNC_RELAY_IDLE_TIMEOUT", default_value_t = 0)]
    pub idle_timeout: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Configured limits (0 / `None` = unlimited).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_user: usize,
    pub max_connections_per_ip: usize,
    pub handshake_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_subscriptions: usize,
    pub publish_rate: u32,
    pub idle_timeout: Option<Duration>,
}

/// Where the SSR app is, when the relay fronts it.
#[derive(Debug, Clone)]
pub struct AppUpstream {
    pub url: url::Url,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

/// An IP network (`10.0.0.0/8`, `::1/128`, or a bare address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: std::net::IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn parse(s: &str) -> Result<IpNet, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: std::net::IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("'{s}' is not an IP address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("'{s}' has an invalid prefix length"))?,
            None => max,
        };
        Ok(IpNet { addr, prefix })
    }

    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (std::net::IpAddr::V4(net), std::net::IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (std::net::IpAddr::V6(net), std::net::IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct EmulateArgs {
    /// Listener for the emulated AppSync Events API (/event and /event/realtime).
    #[arg(
        long,
        env = "APPSYNC_EMULATOR_LISTEN",
        default_value = "127.0.0.1:8081"
    )]
    pub listen: SocketAddr,
    /// Accept this API key (x-api-key). Either this or the Cognito settings.
    #[arg(long, env = "APPSYNC_EMULATOR_API_KEY")]
    pub api_key: Option<String>,
    /// Expected token issuer (Cognito mode).
    #[arg(long, env = "APPSYNC_EMULATOR_COGNITO_ISSUER")]
    pub cognito_issuer: Option<String>,
    /// JWKS URL (Cognito mode); defaults to <issuer>/.well-known/jwks.json.
    #[arg(long, env = "APPSYNC_EMULATOR_COGNITO_JWKS_URL")]
    pub cognito_jwks_url: Option<String>,
    /// App client id the tokens must be issued to (Cognito mode).
    #[arg(long, env = "APPSYNC_EMULATOR_COGNITO_CLIENT_ID")]
    pub cognito_client_id: Option<String>,
    #[arg(
        long,
        env = "APPSYNC_EMULATOR_TOKEN_USE",
        value_enum,
        default_value = "access"
    )]
    pub token_use: TokenUse,
    /// Host that every authorization object must name (the HTTP endpoint's host); unchecked when omitted.
    #[arg(long, env = "APPSYNC_EMULATOR_HTTP_HOST")]
    pub http_host: Option<String>,
    /// Seconds between keep-alive (ka) messages.
    #[arg(long, env = "APPSYNC_EMULATOR_KA_INTERVAL", default_value_t = 60)]
    pub ka_interval: u64,
}

/// A fully validated relay configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub http_endpoint: url::Url,
    pub realtime_endpoint: url::Url,
    /// `host[:port]` of the HTTP endpoint, for the authorization objects.
    pub http_host: String,
    pub user_pool_id: String,
    pub client_id: String,
    pub issuer: String,
    pub jwks_url: String,
    pub token_use: TokenUse,
    pub origins: OriginPolicy,
    pub events_path: String,
    pub realtime_path: String,
    pub jwt_leeway: Duration,
    pub jwks_refetch_interval: Duration,
    pub upstream_timeout: Duration,
    pub max_message_bytes: usize,
    pub token_cache_size: usize,
    pub drain_timeout: Duration,
    /// TLS on the public listener; plain HTTP when `None` (behind a TLS
    /// terminating ingress, or local use).
    pub tls: Option<crate::tls::TlsSource>,
    pub refresh: crate::refresh::RefreshConfig,
    pub refresh_before: Duration,
    pub mid_connection_refresh: bool,
    pub cookies: crate::cookies::CookiePolicy,
    pub trust_forwarded: Vec<IpNet>,
    pub max_session_age: Option<Duration>,
    pub upstream_redial_attempts: u32,
    pub app_upstream: Option<AppUpstream>,
    pub drain_delay: Duration,
    pub log_format: LogFormat,
    pub limits: Limits,
}

/// `host[:port]` as AppSync expects it in `host`: the port only when it is
/// not the scheme's default.
pub fn host_with_port(url: &url::Url) -> Option<String> {
    let host = url.host_str()?;
    Some(match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    })
}

/// The real-time URL AppSync serves for an HTTP endpoint.
pub fn derive_realtime(http: &url::Url) -> Result<url::Url, String> {
    let mut rt = http.clone();
    let scheme = match http.scheme() {
        "https" => "wss",
        "http" => "ws",
        other => return Err(format!("unsupported scheme '{other}'")),
    };
    rt.set_scheme(scheme)
        .map_err(|_| "cannot derive a WebSocket scheme".to_string())?;
    if let Some(host) = http.host_str() {
        if host.contains(".appsync-api.") {
            let rt_host = host.replacen(".appsync-api.", ".appsync-realtime-api.", 1);
            rt.set_host(Some(&rt_host)).map_err(|e| e.to_string())?;
        }
    }
    let path = format!("{}/realtime", http.path().trim_end_matches('/'));
    rt.set_path(&path);
    Ok(rt)
}

/// The AWS region encoded in a user pool id (`<region>_<id>`).
pub fn pool_region(pool_id: &str) -> Option<&str> {
    let (region, rest) = pool_id.split_once('_')?;
    let ok = !region.is_empty()
        && !rest.is_empty()
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && rest.bytes().all(|b| b.is_ascii_alphanumeric());
    ok.then_some(region)
}

fn parse_http_url(flag: &str, value: &str, errors: &mut Vec<String>) -> Option<url::Url> {
    match url::Url::parse(value) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Some(u),
        Ok(_) => {
            errors.push(format!(
                "--{flag}: '{value}' must be an http:// or https:// URL with a host"
            ));
            None
        }
        Err(e) => {
            errors.push(format!("--{flag}: '{value}' is not a URL: {e}"));
            None
        }
    }
}

impl ServeArgs {
    /// Validates every flag; returns all problems at once.
    pub fn validate(&self) -> Result<Config, Vec<String>> {
        let mut errors = Vec::new();
        let http_endpoint = parse_http_url(
            "appsync-http-endpoint",
            &self.appsync_http_endpoint,
            &mut errors,
        );
        let realtime_endpoint = match (&self.appsync_realtime_endpoint, &http_endpoint) {
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
        let region = pool_region(&self.cognito_user_pool_id);
        if region.is_none() {
            errors.push(format!(
                "--cognito-user-pool-id: '{}' is not <region>_<id> (e.g. eu-west-1_AbC123)",
                self.cognito_user_pool_id
            ));
        }
        if self.cognito_client_id.is_empty()
            || !self
                .cognito_client_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            errors.push(
                "--cognito-client-id: must be a non-empty app client id ([A-Za-z0-9_-])"
                    .to_string(),
            );
        }
        let issuer = match (&self.cognito_issuer, region) {
            (Some(iss), _) => {
                parse_http_url("cognito-issuer", iss, &mut errors);
                iss.trim_end_matches('/').to_string()
            }
            (None, Some(region)) => format!(
                "https://cognito-idp.{region}.amazonaws.com/{}",
                self.cognito_user_pool_id
            ),
            (None, None) => String::new(),
        };
        let jwks_url = match &self.cognito_jwks_url {
            Some(u) => {
                parse_http_url("cognito-jwks-url", u, &mut errors);
                u.clone()
            }
            None => format!("{issuer}/.well-known/jwks.json"),
        };
        let origins = match OriginPolicy::new(&self.allowed_origins, self.allow_missing_origin) {
            Ok(p) => Some(p),
            Err(e) => {
                errors.push(format!("--allowed-origin: {e}"));
                None
            }
        };
        let events_path = self.events_path.trim_end_matches('/').to_string();
        if !events_path.starts_with('/') || events_path.contains(['?', '#', ' ']) {
            errors.push(format!(
                "--events-path: '{}' must be an absolute path such as /event",
                self.events_path
            ));
        }
        if self.max_message_bytes < 1024 || self.max_message_bytes > 64 * 1024 * 1024 {
            errors.push("--max-message-bytes: must be between 1024 and 67108864".to_string());
        }
        if self.upstream_timeout == 0 {
            errors.push("--upstream-timeout: must be at least 1 second".to_string());
        }
        if self.token_cache_size == 0 {
            errors.push("--token-cache-size: must be at least 1".to_string());
        }
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                let loaded = std::fs::read(cert)
                    .map_err(|e| format!("--tls-cert: cannot read {}: {e}", cert.display()))
                    .and_then(|c| {
                        std::fs::read(key)
                            .map_err(|e| format!("--tls-key: cannot read {}: {e}", key.display()))
                            .map(|k| (c, k))
                    })
                    .and_then(|(c, k)| {
                        crate::tls::certified_key(&c, &k)
                            .map_err(|e| format!("--tls-cert/--tls-key: {e}"))
                    });
                if let Err(e) = loaded {
                    errors.push(e);
                }
                Some(crate::tls::TlsSource::Files {
                    cert: cert.clone(),
                    key: key.clone(),
                    reload_interval: Duration::from_secs(self.tls_reload_interval.max(1)),
                })
            }
            _ => None,
        };
        let cognito_endpoint = match (&self.cognito_endpoint, region) {
            (Some(e), _) => {
                parse_http_url("cognito-endpoint", e, &mut errors);
                e.clone()
            }
            (None, Some(region)) => format!("https://cognito-idp.{region}.amazonaws.com/"),
            (None, None) => String::new(),
        };
        let trust_forwarded = self
            .trust_forwarded
            .iter()
            .filter_map(|t| match IpNet::parse(t) {
                Ok(n) => Some(n),
                Err(e) => {
                    errors.push(format!("--trust-forwarded: {e}"));
                    None
                }
            })
            .collect();
        if let Some(domain) = &self.cookie_domain {
            if domain.is_empty()
                || !domain
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            {
                errors.push(format!("--cookie-domain: '{domain}' is not a domain name"));
            }
        }
        let app_upstream = self.app_upstream.as_ref().and_then(|u| {
            let url = parse_http_url("app-upstream", u, &mut errors)?;
            if let Err(e) = crate::proxy::check_upstream(&url) {
                errors.push(format!("--app-upstream: {e}"));
                return None;
            }
            Some(AppUpstream {
                url,
                connect_timeout: Duration::from_secs(self.app_connect_timeout.max(1)),
                response_timeout: Duration::from_secs(self.app_timeout.max(1)),
            })
        });
        if self.max_header_bytes < 8192 {
            errors.push("--max-header-bytes: must be at least 8192".to_string());
        }
        if self.handshake_timeout == 0 {
            errors.push("--handshake-timeout: must be at least 1 second".to_string());
        }
        if self.max_subscriptions == 0 {
            errors.push("--max-subscriptions: must be at least 1".to_string());
        }
        let http_host = http_endpoint.as_ref().and_then(host_with_port);
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
                listen: self.listen,
                admin_listen: self.admin_listen,
                http_endpoint,
                realtime_endpoint,
                http_host,
                user_pool_id: self.cognito_user_pool_id.clone(),
                client_id: self.cognito_client_id.clone(),
                issuer,
                jwks_url,
                token_use: self.token_use,
                origins,
                realtime_path: format!("{events_path}/realtime"),
                events_path,
                jwt_leeway: Duration::from_secs(self.jwt_leeway),
                jwks_refetch_interval: Duration::from_secs(self.jwks_refetch_interval),
                upstream_timeout: Duration::from_secs(self.upstream_timeout),
                max_message_bytes: self.max_message_bytes,
                token_cache_size: self.token_cache_size,
                drain_timeout: Duration::from_secs(self.drain_timeout),
                tls,
                refresh: crate::refresh::RefreshConfig {
                    endpoint: cognito_endpoint,
                    client_id: self.cognito_client_id.clone(),
                    client_secret: self.cognito_client_secret.clone(),
                    api: self.refresh_api,
                    timeout: Duration::from_secs(self.upstream_timeout),
                    capacity: self.token_cache_size,
                    refresh_before: Duration::from_secs(self.refresh_before),
                },
                refresh_before: Duration::from_secs(self.refresh_before),
                mid_connection_refresh: self.mid_connection_refresh == OnOff::On,
                cookies: crate::cookies::CookiePolicy {
                    same_site: self.cookie_same_site,
                    max_age: self.cookie_max_age,
                    domain: self.cookie_domain.clone(),
                },
                trust_forwarded,
                max_session_age: (self.max_session_age > 0)
                    .then(|| Duration::from_secs(self.max_session_age)),
                upstream_redial_attempts: self.upstream_redial_attempts,
                app_upstream,
                drain_delay: Duration::from_secs(self.drain_delay),
                log_format: self.log_format,
                limits: Limits {
                    max_connections: self.max_connections,
                    max_connections_per_user: self.max_connections_per_user,
                    max_connections_per_ip: self.max_connections_per_ip,
                    handshake_timeout: Duration::from_secs(self.handshake_timeout),
                    max_header_bytes: self.max_header_bytes,
                    max_subscriptions: self.max_subscriptions,
                    publish_rate: self.publish_rate,
                    idle_timeout: (self.idle_timeout > 0)
                        .then(|| Duration::from_secs(self.idle_timeout)),
                },
            }),
            _ => Err(errors),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let c = args(&[]).validate().unwrap();
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
        let c = args(&["--appsync-http-endpoint", "http://127.0.0.1:4010/event"])
            .validate()
            .unwrap();
        assert_eq!(
            c.realtime_endpoint.as_str(),
            "ws://127.0.0.1:4010/event/realtime"
        );
        assert_eq!(c.http_host, "127.0.0.1:4010");
        let c = args(&["--appsync-http-endpoint", "https://api.example.com/event"])
            .validate()
            .unwrap();
        assert_eq!(
            c.realtime_endpoint.as_str(),
            "wss://api.example.com/event/realtime"
        );
    }

    #[test]
    fn ip_networks() {
        let n = IpNet::parse("10.0.0.0/8").unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(IpNet::parse("127.0.0.1")
            .unwrap()
            .contains("127.0.0.1".parse().unwrap()));
        assert!(IpNet::parse("::1")
            .unwrap()
            .contains("::1".parse().unwrap()));
        assert!(IpNet::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(IpNet::parse("10.0.0.0/33").is_err());
        assert!(IpNet::parse("nope").is_err());
    }

    #[test]
    fn refresh_defaults_follow_the_pool_region() {
        let c = args(&[]).validate().unwrap();
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
        let errs = args(&[
            "--cognito-user-pool-id",
            "nope",
            "--allowed-origin",
            "https://x.test/path",
            "--events-path",
            "event",
            "--appsync-http-endpoint",
            "ftp://x",
        ])
        .validate()
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
}
