//! `serve`'s flags (also `check`'s: it takes exactly what `serve` takes),
//! and the small value enums they use.

use crate::refresh::RefreshApi;
use crate::session::SameSite;
use crate::verify::TokenUse;
use clap::Args;
use std::net::SocketAddr;

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
    /// Connect to this IP address for both AppSync endpoints instead of
    /// resolving their host names (which still go in Host, TLS SNI and the
    /// certificate check): for an emulator that routes on virtual host names,
    /// or to pin a private endpoint.
    #[arg(long, env = "APPSYNC_RELAY_APPSYNC_ADDRESS")]
    pub appsync_address: Option<std::net::IpAddr>,
    /// PEM file of CA certificates trusted beside the public roots for every
    /// outbound TLS connection (AppSync, Cognito, JWKS): a corporate TLS
    /// proxy's CA, or an emulator's.
    #[arg(long, env = "APPSYNC_RELAY_UPSTREAM_CA_FILE")]
    pub upstream_ca_file: Option<std::path::PathBuf>,
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
    /// Largest publish forwarded to AppSync (over the WebSocket: the frame with one copy of its events; over HTTP: the body), in bytes; larger is answered with publish_error / 413. A browser's frame may be twice this plus 64 KiB (Amplify sends each publish's events twice); beyond that, close 1009. Default: five 240 KiB events, each escaped once more (the worst legal case), plus 64 KiB.
    #[arg(
        long,
        env = "APPSYNC_RELAY_MAX_MESSAGE_BYTES",
        default_value_t = crate::protocol::MAX_LEGAL_PUBLISH_BYTES
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
    pub refresh_api: RefreshApi,
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
    pub cookie_same_site: SameSite,
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
    /// Threads of the async runtime that serves everything (0 = one per core). Fewer threads cost less CPU per relayed frame while they keep up (one thread: -23 % on a 5 000 msg/s stream, benches/README.md), but use at most that many cores.
    #[arg(long, env = "APPSYNC_RELAY_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,
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
    /// Request header never passed from the browser to the app (repeatable; replaces the default list: Next.js's x-middleware-subrequest and its other internal x-middleware-* / x-invoke-* headers; give "none" to strip nothing).
    #[arg(
        long = "strip-request-header",
        env = "APPSYNC_RELAY_STRIP_REQUEST_HEADERS",
        value_delimiter = ','
    )]
    pub strip_request_headers: Vec<String>,
    /// The origin browsers use (scheme://host[:port]) when a proxy in front terminates TLS without sending X-Forwarded-Proto: https here makes the cookies the relay writes Secure.
    #[arg(long, env = "APPSYNC_RELAY_PUBLIC_ORIGIN")]
    pub public_origin: Option<String>,
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
    /// Close WebSockets (1000) after this many seconds without a frame other than keep-alives either way (0 = never). Amplify reconnects ~5 s later and re-subscribes, so on a quiet channel it cycles.
    #[arg(long, env = "APPSYNC_RELAY_IDLE_TIMEOUT", default_value_t = 0)]
    pub idle_timeout: u64,
    /// Seconds the signing keys are kept before the JWKS is fetched again (a key withdrawn from it stops verifying within about this long).
    #[arg(
        long,
        env = "APPSYNC_RELAY_JWKS_REFRESH_INTERVAL",
        default_value_t = 600
    )]
    pub jwks_refresh_interval: u64,
    /// Lifetime of the app client's refresh tokens, seconds (Cognito's default: 30 days): a token issued longer ago than this is refused without asking Cognito.
    #[arg(
        long,
        env = "APPSYNC_RELAY_REFRESH_TOKEN_VALIDITY",
        default_value_t = 2_592_000
    )]
    pub refresh_token_validity: u64,
    /// Cognito refresh calls per minute per client IP (burst of the same size; 0 = no limit); over it the request gets 429.
    #[arg(long, env = "APPSYNC_RELAY_REFRESH_RATE_PER_IP", default_value_t = 60)]
    pub refresh_rate_per_ip: u32,
    /// Cognito refresh calls per minute per user (`sub`; burst of the same size; 0 = no limit); over it 429.
    #[arg(
        long,
        env = "APPSYNC_RELAY_REFRESH_RATE_PER_USER",
        default_value_t = 10
    )]
    pub refresh_rate_per_user: u32,
    /// Seconds an HTTP publish body may take to arrive; beyond it 408.
    #[arg(long, env = "APPSYNC_RELAY_BODY_TIMEOUT", default_value_t = 10)]
    pub body_timeout: u64,
    /// Seconds one frame may take to be written to either side; a browser that stops reading is disconnected, an upstream that stops reading is re-dialled.
    #[arg(long, env = "APPSYNC_RELAY_SEND_TIMEOUT", default_value_t = 30)]
    pub send_timeout: u64,
    /// Serve subscriptions to channels matching PATTERN (a channel, or `/ns/prefix/*` for everything below it) from one upstream subscription per channel per relay, fanned out here (repeatable). Only for channels whose events every authorised viewer sees alike: see the README, "Shared channels".
    #[arg(
        long = "shared-channel",
        env = "APPSYNC_RELAY_SHARED_CHANNELS",
        value_delimiter = ','
    )]
    pub shared_channels: Vec<String>,
    /// Before a browser joins a shared channel, ask AppSync with the user's own token (subscribe), let --channel-policy's grant stand in for that (policy: AppSync sees no per-browser subscribe), or trust every signed-in user (none: only for namespaces that admit all of them).
    #[arg(
        long,
        env = "APPSYNC_RELAY_SHARED_CHANNEL_CHECK",
        value_enum,
        default_value = "subscribe"
    )]
    pub shared_channel_check: SharedCheck,
    /// Seconds a shared subscription outlives its last browser (so page reloads do not churn AppSync).
    #[arg(long, env = "APPSYNC_RELAY_SHARED_LINGER", default_value_t = 5)]
    pub shared_linger: u64,
    /// Events of shared channels that may wait for one browser; a browser further behind is closed with 1008 (the others are not slowed).
    #[arg(long, env = "APPSYNC_RELAY_SHARED_QUEUE", default_value_t = 256)]
    pub shared_queue: usize,
    /// Bytes of shared-channel events that may wait for one browser (a few of AppSync's largest events); a browser further behind is closed with 1008. One event larger than this still reaches a browser with nothing waiting.
    #[arg(
        long,
        env = "APPSYNC_RELAY_SHARED_QUEUE_BYTES",
        default_value_t = 1_048_576
    )]
    pub shared_queue_bytes: usize,
    /// Shared channels one relay holds at most (lingering ones included); a subscription that would open one more is served unshared, as without --shared-channel (0: no cap).
    #[arg(
        long,
        env = "APPSYNC_RELAY_SHARED_MAX_CHANNELS",
        default_value_t = 10_000
    )]
    pub shared_max_channels: usize,
    /// File holding an AppSync API key for the relay's own shared-channel connections (the API must allow API-key auth). Without it they use the token of a browser on the channel. Users are still checked with their own tokens.
    #[arg(long, env = "APPSYNC_RELAY_SHARED_API_KEY_FILE")]
    pub shared_api_key_file: Option<std::path::PathBuf>,
    /// TOML file of channel rules: with it, every subscribe and publish (WebSocket and HTTP) is denied unless a rule allows it for the user's verified claims; nothing denied reaches AppSync. Reloaded when it changes (open subscriptions are decided again; a broken change is logged and the previous policy stays); a broken file at start-up is an error. See the README, "Channel policy".
    #[arg(long, env = "APPSYNC_RELAY_CHANNEL_POLICY")]
    pub channel_policy: Option<std::path::PathBuf>,
    /// Redis shared by the replicas (redis://host:6379 or rediss:// for
    /// TLS; credentials in the URL or --redis-password-file): ends of
    /// sessions reach every replica. Unset: this process alone.
    #[arg(long, env = "APPSYNC_RELAY_REDIS_URL")]
    pub redis_url: Option<String>,
    /// File holding the Redis password (overrides one in the URL).
    #[arg(
        long,
        env = "APPSYNC_RELAY_REDIS_PASSWORD_FILE",
        requires = "redis_url"
    )]
    pub redis_password_file: Option<std::path::PathBuf>,
    /// PEM CA certificate(s) a rediss:// server's certificate must chain
    /// to, instead of the system's roots (a private CA).
    #[arg(long, env = "APPSYNC_RELAY_REDIS_CA_FILE", requires = "redis_url")]
    pub redis_ca_file: Option<std::path::PathBuf>,
    /// File of 32-byte keys (64 hex digits or base64, one per line; the
    /// first seals, all open) for the token sets replicas share through
    /// Redis: with it, one Cognito call per refresh token across replicas.
    #[arg(long, env = "APPSYNC_RELAY_SESSION_KEY_FILE", requires = "redis_url")]
    pub session_key_file: Option<std::path::PathBuf>,
    /// With --redis-url: seconds a connection's lease (what
    /// --max-connections-per-user counts across replicas) lasts without
    /// renewal; a crashed replica's connections stop counting after this.
    #[arg(long, env = "APPSYNC_RELAY_CLUSTER_LEASE_TTL", default_value_t = 30)]
    pub cluster_lease_ttl: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SharedCheck {
    /// Ask AppSync with the user's own token before the browser joins.
    Subscribe,
    /// Let the channel policy's grant stand in for AppSync's per-user check
    /// (needs --channel-policy): joining costs AppSync nothing per browser.
    Policy,
    /// Trust every signed-in user.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}
