//! The other subcommands' flags: `emulate`, `demo` and `check` (whose
//! relay flags are `serve`'s, flattened in).

use crate::cli::serve::ServeArgs;
use crate::verify::TokenUse;
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Args)]
pub struct EmulateArgs {
    /// Listener for the emulated AppSync Events API (/event and /event/realtime).
    #[arg(
        long,
        env = "APPSYNC_EMULATOR_LISTEN",
        default_value = "127.0.0.1:8081"
    )]
    pub listen: SocketAddr,
    /// Admin listener of the emulator: `GET /metrics` serves its AppSync
    /// operations meter (`appsync_emulator_operations_total{kind}` and the
    /// connection and subscription gauges); `POST /close-all?code=N` closes
    /// every WebSocket with close code N. Off unless given.
    #[arg(long, env = "APPSYNC_EMULATOR_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Accept this API key (x-api-key): alone, or beside the Cognito settings for an API with both auth modes.
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
    /// A channel namespace defined on the emulated API (repeatable). As on
    /// AppSync, channels of any other namespace are refused as unauthorized.
    #[arg(
        long = "namespace",
        env = "APPSYNC_EMULATOR_NAMESPACES",
        value_delimiter = ',',
        default_value = "default"
    )]
    pub namespaces: Vec<String>,
    /// PEM certificate chain: serve HTTPS and wss:// (with --tls-key), as
    /// AppSync does.
    #[arg(long, env = "APPSYNC_EMULATOR_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "APPSYNC_EMULATOR_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Public listener (HTTPS): the demo page, the login route and the relay routes.
    #[arg(
        long,
        env = "APPSYNC_RELAY_DEMO_LISTEN",
        default_value = "127.0.0.1:8443"
    )]
    pub listen: SocketAddr,
    /// Admin listener (/healthz, /readyz, /metrics).
    #[arg(
        long,
        env = "APPSYNC_RELAY_DEMO_ADMIN_LISTEN",
        default_value = "127.0.0.1:9090"
    )]
    pub admin_listen: SocketAddr,
    /// Lifetime of the access and ID tokens the demo issues, in seconds.
    #[arg(
        long,
        env = "APPSYNC_RELAY_DEMO_TOKEN_LIFETIME",
        default_value_t = 3600
    )]
    pub token_lifetime: u64,
    /// PEM certificate to serve instead of a generated self-signed one (with --tls-key).
    #[arg(long, env = "APPSYNC_RELAY_DEMO_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "APPSYNC_RELAY_DEMO_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    /// File holding a token from a real sign-in (the --token-use kind, e.g.
    /// copied from the browser's `…accessToken` cookie): enables the round
    /// trip. The file is read, never printed.
    #[arg(
        long,
        env = "APPSYNC_RELAY_CHECK_TOKEN_FILE",
        conflicts_with = "cookie_file"
    )]
    pub token_file: Option<PathBuf>,
    /// File holding a browser's `Cookie` header after a real sign-in (the
    /// Amplify cookies): enables the round trip, exactly as a browser makes
    /// it. Its refresh token is not used unless --allow-refresh is given.
    #[arg(long, env = "APPSYNC_RELAY_CHECK_COOKIE_FILE")]
    pub cookie_file: Option<PathBuf>,
    /// Let the round trip renew an expired or due token with the cookies'
    /// refresh token. Off by default, and the refresh token is then left out:
    /// with refresh-token rotation a renewal inside `check` spends it, and the
    /// browser the cookies came from must sign in again.
    #[arg(long, env = "APPSYNC_RELAY_CHECK_ALLOW_REFRESH")]
    pub allow_refresh: bool,
    /// Channel the round trip subscribes and publishes to, e.g.
    /// /default/relay-check; required with --token-file or --cookie-file.
    /// Pick one that no real subscriber listens on.
    #[arg(long, env = "APPSYNC_RELAY_CHECK_CHANNEL")]
    pub check_channel: Option<String>,
    /// File holding the head of a request as it reaches the relay's listener
    /// (request line and headers, e.g. captured with `nc -l` behind the
    /// ingress): tells whether a proxy in front adds `X-Forwarded-*`.
    #[arg(long, env = "APPSYNC_RELAY_CHECK_SAMPLE_REQUEST")]
    pub sample_request: Option<PathBuf>,
    /// With --channel-policy and a sign-in: print what that user may do on
    /// CHANNEL (subscribe, publish) and which rule allows it (repeatable).
    #[arg(
        long = "policy-test",
        env = "APPSYNC_RELAY_CHECK_POLICY_TEST",
        value_delimiter = ','
    )]
    pub policy_test: Vec<String>,
    /// How to print the results.
    #[arg(long, value_enum, default_value = "text")]
    pub output: CheckOutput,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CheckOutput {
    /// One ✓/✗ line per check, with the fix under each ✗.
    Text,
    /// One JSON document: `{"ok": bool, "checks": [...]}`.
    Json,
}
