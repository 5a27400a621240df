//! # appsync-relay
//!
//! An edge proxy that lets a browser use AWS AppSync Events real-time
//! WebSockets while its Cognito tokens stay in HTTP-only cookies. The browser
//! opens a same-origin WebSocket; the relay checks the Origin, reads and
//! verifies the session from the cookies, opens the upstream AppSync
//! connection with the token injected, rewrites every subscribe/publish to
//! carry it, and relays frames both ways. `POST <events-path>` is relayed the
//! same way. The browser never sees a token.
//!
//! # Layout
//!
//! Follows a request from accept to relay:
//!
//! - [`server`]: listeners, routing, admin endpoints, JWKS loader, shutdown.
//!   - [`tls`]: the public listener's certificate, reloaded when it changes.
//! - [`handshake`]: the upgrade phases in contract order, then the relay task.
//!   - [`upgrade`]: what a valid RFC 6455 upgrade is; socket buffer config.
//!   - [`origin`]: the Origin allowlist (CSWSH defence).
//!   - [`authenticate`]: cookies → a verified token, renewing it if due.
//!     - [`session`]: Amplify's cookies → the user's tokens.
//!     - [`verify`]: Cognito JWT verification and the JWKS cache.
//!     - [`refresh`]: Cognito refresh, single flight.
//!     - [`cookies`]: `Set-Cookie` for renewed tokens; renewals pending delivery.
//!   - [`upstream`]: the AppSync connection with the `header-` subprotocol.
//! - [`relay`]: the two-way pump and close-code mapping.
//!   - [`rewrite`]: client frame policy and auth injection.
//! - [`publish`]: HTTP publish.
//! - [`proxy`]: everything else, to the SSR app (`--app-upstream`).
//! - [`limits`]: admission limits and the publish token bucket.
//! - [`protocol`]: AppSync Events rules shared with the [`emulator`], the
//!   strict stand-in for AWS used by tests and local development.
//! - [`demo`]: `appsync-relay demo`, relay + emulator + dev identity provider.
//! - [`config`], [`error`], [`metrics`], [`http_client`]: plumbing.
#![forbid(unsafe_code)]

pub mod authenticate;
pub mod config;
pub mod cookies;
pub mod demo;
pub mod emulator;
pub mod error;
pub mod handshake;
pub mod http_client;
pub mod limits;
pub mod metrics;
pub mod origin;
pub mod protocol;
pub mod proxy;
pub mod publish;
pub mod refresh;
pub mod relay;
pub mod rewrite;
pub mod server;
pub mod session;
pub mod tls;
pub mod upgrade;
pub mod upstream;
pub mod verify;
