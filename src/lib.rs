//! appsync-relay library crate.
pub mod http_client;
pub mod origin;
pub mod protocol;
pub mod rewrite;
pub mod session;
pub mod upgrade;
pub mod verify;
