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
//! Layers, bottom to top; a module imports only modules of lower layers (and,
//! inside a folder, its own children). `docs/ARCHITECTURE.md` has the rules,
//! the handshake walk and where new code goes; `tests/architecture.rs`
//! checks them.
//!
//! 1. Leaves: [`bounded`], [`clock`], [`protocol`], [`response`], [`strict_json`],
//!    [`forwarded`], [`origin`], [`limits`], [`metrics`], [`tls`],
//!    [`http_client`].
//! 2. Wire and tokens: [`ws`] (RFC 6455 framing, both legs), [`upgrade`],
//!    [`verify`], [`policy`] (who may subscribe and publish where),
//!    [`rewrite`], [`upstream`].
//! 3. Session: [`session`] (reads and writes Amplify's cookies, pending
//!    renewals), [`refresh`] (Cognito, single flight), and the strict
//!    AppSync stand-in [`emulator`]; [`fanout`] (shared channels),
//!    [`cluster`] (replicas agreeing on ended sessions, through Redis).
//! 4. Configuration: [`cli`] (the flags), [`config`] (validated, once).
//! 5. The session authority: [`error`], [`sessions`] (who is asking, a
//!    token to act with, renewals, ends across replicas: the one owner of
//!    every session table).
//! 6. Shared state: [`state`] (wiring, private fields).
//! 7. [`relay`]: one connection's pump, subscriptions, token, re-dial, close.
//! 8. Request handlers: [`gate`] (the phases the upgrade and the HTTP
//!    publish share), [`handshake`], [`publish`], [`proxy`], [`admin`].
//! 9. [`server`]: listeners, routing, shutdown.
//! 10. Tools: [`demo`] (relay + emulator + development identity provider),
//!     [`check`] (a deployment's settings verified, then a real round trip).
#![forbid(unsafe_code)]

pub mod bounded;
pub mod clock;
pub mod forwarded;
pub mod http_client;
pub mod limits;
pub mod metrics;
pub mod origin;
pub mod protocol;
pub mod response;
pub mod strict_json;
pub mod tls;

pub mod policy;
pub mod rewrite;
pub mod upgrade;
pub mod upstream;
pub mod verify;
pub mod ws;

pub mod cluster;
pub mod emulator;
pub mod fanout;
pub mod refresh;
pub mod session;

pub mod cli;
pub mod config;

pub mod error;
pub mod sessions;

pub mod state;

pub mod relay;

pub mod admin;
pub mod gate;
pub mod handshake;
pub mod proxy;
pub mod publish;

pub mod server;

pub mod check;
pub mod demo;
