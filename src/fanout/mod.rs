//! Shared channels (`--shared-channel PATTERN`): one AppSync subscription
//! per distinct channel per relay, fanned out to every browser subscribed to
//! it, instead of one AppSync subscription (and delivery) per browser.
//!
//! - [`hub`]: which shared channels exist, who is on each, the
//!   linger after the last browser leaves, and fan-out of each event into
//!   every member's bounded queue. A member whose queue is full is marked
//!   lagging (its connection closes it with 1008); nobody waits for it.
//! - [`carrier`]: the relay-owned upstream connections the shared
//!   subscriptions live on (at most [`MAX_SUBSCRIPTIONS_PER_CARRIER`] each,
//!   AppSync's limit per connection), each authenticated with the token of a
//!   browser currently on one of its channels, re-dialled with everything
//!   replayed.
//! - [`sink`]: a browser connection's bounded queue and lag signal.
//! - [`patterns`]: which subscriptions are shared (`SharedConfig`).
//! - [`splice`]: each browser's copy of an event carries its own
//!   subscription id, spliced into the bytes AppSync sent.
//!
//! **Authorisation stays AppSync's, per user.** The hub never decides who
//! may join: before a browser joins, its own connection asks AppSync with
//! its own token (`relay::membership`), unless the operator chose
//! `--shared-channel-check none`. The hub holds members' tokens only to
//! authenticate carriers; it never logs them.
//!
//! Locks: one `std::sync::Mutex` over the maps, held for map operations and
//! non-blocking `try_send`s only, never across an `.await`.

pub mod carrier;
pub mod hub;
pub mod patterns;
pub mod sink;
pub mod splice;

pub use hub::{Hub, MemberKey};
pub use patterns::SharedConfig;
pub use sink::{Delivery, Sink};

pub use hub::MAX_SUBSCRIPTIONS_PER_CARRIER;
