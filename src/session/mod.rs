//! The user's session as Amplify's server-side auth keeps it: HTTP-only
//! cookies holding the Cognito tokens. This layer reads them ([`read`]),
//! writes renewed ones back ([`write`]), and holds renewals made on open
//! sockets until a request can carry them ([`pending`]).
//!
//! It never logs, and every `Debug` it implements redacts tokens.
//!
//! # Layout
//!
//! - [`names`]: the cookie names and the username encoding inside them.
//! - [`tokens`]: [`TokenSet`], the tokens a refresh hands out.
//! - [`read`]: `Cookie` → [`Session`] (refusing ambiguous sessions).
//! - [`write`]: [`CookiePolicy`] for `Set-Cookie`, and the `Cookie` rewrite
//!   for requests proxied to the app.
//! - [`proof`]: [`SessionProof`], what a request shows to get a renewal.
//! - [`pending`]: [`PendingRenewals`], keyed by refresh-token hash.
//! - [`sockets`]: [`LiveSockets`], the open sockets of each user, so a
//!   session ended elsewhere closes them at once.
//! - [`subject`]: [`Subject`], whom "end this user's sessions" names.

pub mod names;
pub mod pending;
pub mod proof;
pub mod read;
pub mod sockets;
pub mod subject;
pub mod tokens;
pub mod write;

pub use names::{cookie_name, encode_username, last_auth_user_cookie, COOKIE_PREFIX};
pub use pending::{Pending, PendingRenewals};
pub use proof::SessionProof;
pub use read::{from_headers, Session, SessionError, MAX_COOKIE_HEADER_BYTES};
pub use sockets::{LiveSockets, Registration};
pub use subject::{signed_in_at, subjects_of, Subject, Who};
pub use tokens::TokenSet;
pub use write::{rewrite_cookie_header, CookiePolicy, SameSite};
