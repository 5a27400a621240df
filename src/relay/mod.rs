//! The life of one relayed connection after both handshakes: pumping frames
//! both ways, keeping the session's token fresh, re-dialling AppSync when
//! the upstream connection drops, and closing both legs with the right code.
//!
//! # Layout
//!
//! - `mod.rs`: [`Relay`], which owns the connection from the 101 to the
//!   closing log line's figures.
//! - [`pump`]: the `select!` loop and the per-frame limits.
//! - [`subscriptions`]: what the browser subscribed to, for replay.
//! - [`token`]: the token in use and its renewal.
//! - [`slot`]: the one frame in flight per direction, and its send timeout.
//! - [`redial`]: a new upstream with everything replayed.
//! - [`close`]: endings, close codes, the closing handshake.
//! - [`counters`]: per-connection figures and metric handles.
//! - `admit`: the channel policy and per-frame limits for each browser
//!   frame, and routing shared-channel subscriptions.
//! - `reauthorise`: renewal, re-dial, and a reloaded policy: the
//!   subscriptions decided again.
//! - [`membership`]: this browser's shared-channel subscriptions.

mod admit;
pub mod close;
pub mod counters;
pub mod membership;
pub mod pump;
mod reauthorise;
pub mod redial;
pub mod slot;
pub mod subscriptions;
pub mod token;

use crate::rewrite::UpstreamAuth;
use crate::session::Registration;
use crate::sessions::SessionState;
use crate::state::RelayState;
use crate::upstream::UpstreamSocket;
use crate::verify::Claims;
use crate::ws::WsSocket;
use close::{close_legs, Ending};
use counters::Stats;
use pump::Connection;
use std::sync::Arc;
use token::TokenState;
use tokio::io::{AsyncRead, AsyncWrite};

/// How a relayed connection ended, for its closing log line and metrics.
#[derive(Debug, Clone)]
pub struct RelayOutcome {
    pub ending: Ending,
    /// Close code sent to the browser (or echoed to its close).
    pub client_close: Option<u16>,
    /// Close code sent to upstream, or the one upstream closed with.
    pub upstream_close: Option<u16>,
    pub stats: Stats,
}

/// Everything the relay needs about the user besides the sockets.
pub struct ConnectionContext {
    pub state: Arc<RelayState>,
    /// This socket's place among the user's open sockets: cancelled when
    /// its session is ended elsewhere (a sign-out, an operator's end, on
    /// this replica or another).
    pub registration: Option<Registration>,
    /// The token (and AppSync host) upstream was opened with.
    pub auth: UpstreamAuth,
    /// The claims of that token (its `exp` and `iat`; the channel policy
    /// reads the rest).
    pub claims: Arc<Claims>,
    pub session: SessionState,
}

/// One relayed connection: built (synchronously) as soon as the upstream is
/// open, then [`Relay::run`] with the browser's socket once hyper hands it
/// over.
///
/// Why a struct and a `&mut self` method rather than one async fn taking
/// everything by value: an async fn keeps its arguments in its state machine
/// for its whole life, and moving them into locals (the connection, the
/// token) stores them a second time; the spawned task holding that future
/// stored them a third time. Measured with `-Zprint-type-sizes`, the task of
/// an idle connection was 7 456 bytes, the upstream socket in it three
/// times. Built here and borrowed by `run`, each part is held once.
pub struct Relay {
    conn: Connection,
    registration: Option<Registration>,
}

impl Relay {
    pub fn new(upstream: UpstreamSocket, ctx: ConnectionContext) -> Relay {
        let token = TokenState::new(
            ctx.auth,
            ctx.claims,
            ctx.session,
            ctx.state.sessions().refresh_before(),
        );
        Relay {
            conn: Connection::new(ctx.state, upstream, token),
            registration: ctx.registration,
        }
    }

    /// Relays until either side ends or the relay drains, then closes both
    /// legs.
    pub async fn run<C>(&mut self, client: &mut WsSocket<C>) -> RelayOutcome
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let conn = &mut self.conn;
        let state = conn.state().clone();
        let registration = &self.registration;
        let ended_elsewhere = async move {
            match registration {
                Some(r) => r.ended().cancelled().await,
                None => std::future::pending().await,
            }
        };
        let ending = {
            let pump = conn.pump(client);
            // Shutdown is polled last: it fires once per process, the pump
            // on every frame.
            tokio::select! {
                biased;
                e = pump => e,
                _ = ended_elsewhere => Ending::SessionEnded("signed_out"),
                _ = state.shutdown().cancelled() => Ending::Draining,
            }
        };

        let ended_session = match &ending {
            Ending::SessionEnded(reason) => Some(*reason),
            Ending::Reauthenticate => Some("reauthenticate"),
            _ => None,
        };
        if let Some(reason) = ended_session {
            state
                .metrics()
                .sessions_ended
                .with_label_values(&[reason])
                .inc();
        }
        // (Not at --max-session-age: the session goes on, a reconnect with
        // live cookies is accepted, so Amplify must keep retrying.)
        if let Ending::SessionEnded(
            reason @ ("signed_out" | "refresh_rejected" | "session_ended" | "identity_changed"
            | "no_refresh_token"),
        ) = &ending
        {
            let mut ids: Vec<String> = conn.subs.ids().map(str::to_string).collect();
            if let Some(m) = &conn.shared {
                ids.extend(m.ids());
            }
            Box::pin(close::tell_subscriptions(client, &ids, reason)).await;
        }
        let (to_client, to_upstream) = ending.close_codes();
        // Boxed: closing is a cold path, and inlined it would enlarge every
        // idle connection's task.
        Box::pin(close_legs(
            &ending,
            to_client,
            to_upstream,
            client,
            &mut conn.upstream,
            &mut conn.stats,
        ))
        .await;

        RelayOutcome {
            client_close: to_client.or(match ending {
                Ending::ClientClosed(code) => Some(code),
                _ => None,
            }),
            upstream_close: to_upstream.or(match ending {
                Ending::UpstreamClosed(code) => Some(code),
                _ => None,
            }),
            ending,
            stats: std::mem::take(&mut conn.stats),
        }
    }
}
