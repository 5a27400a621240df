//! Replacing a dropped upstream while the browser's socket stays open:
//! re-dial with jittered backoff, replay `connection_init` (waiting for the
//! ack the browser already had) and every tracked subscription.
//!
//! The acknowledgements of replayed subscriptions are swallowed by
//! [`super::subscriptions::Subscriptions::on_upstream`]; the browser sees
//! nothing of a successful re-dial.

use super::close::Ending;
use super::counters::Stats;
use super::subscriptions::Subscriptions;
use super::token::TokenState;
use crate::metrics::frame_type_label;
use crate::state::RelayState;
use crate::upstream::{self, UpstreamError, UpstreamSocket};
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// How long a re-dialled upstream may take to acknowledge `connection_init`.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(10);

/// A new upstream for the connection, with its subscriptions replayed, or
/// the ending when `--upstream-redial-attempts` are used up (`cause` when
/// re-dialling is off).
pub async fn redial(
    state: &RelayState,
    token: &mut TokenState,
    subs: &mut Subscriptions,
    stats: &mut Stats,
    cause: Ending,
) -> Result<UpstreamSocket, Ending> {
    let attempts = state.config().upstream_redial_attempts;
    if attempts == 0 {
        return Err(cause);
    }
    let metrics = state.metrics();
    for attempt in 1..=attempts {
        tokio::time::sleep(backoff(attempt)).await;
        if token.expiring() && Box::pin(token.renew(state.sessions())).await? {
            stats.refreshes += 1;
        }
        let refused = match upstream::connect(state.upstream(), &token.auth).await {
            Ok(mut socket) => match replay(&mut socket, subs, token).await {
                Ok(()) => {
                    stats.redials += 1;
                    metrics.upstream_redials.with_label_values(&["ok"]).inc();
                    tracing::info!(attempt, subscriptions = subs.len(), "upstream re-dialled");
                    return Ok(socket);
                }
                Err(ReplayError::Unauthorized) => true,
                Err(ReplayError::Failed(e)) => {
                    tracing::info!(attempt, error = %e, "upstream replay failed");
                    false
                }
            },
            Err(UpstreamError::Unauthorized(_)) => true,
            Err(e) => {
                tracing::info!(attempt, reason = e.reason(), "upstream re-dial failed");
                false
            }
        };
        if refused {
            // AppSync refuses the token we hold — on the upgrade (HTTP
            // 401/403) or after it (`connection_error`, close 4401): renew
            // before the next try.
            tracing::info!(attempt, "upstream refused the token; renewing");
            if Box::pin(token.renew(state.sessions())).await? {
                stats.refreshes += 1;
            }
        }
    }
    metrics
        .upstream_redials
        .with_label_values(&["gave_up"])
        .inc();
    Err(Ending::UpstreamGone)
}

/// Why a replay did not complete.
enum ReplayError {
    /// AppSync accepted the upgrade, then refused the token
    /// (`connection_error` with `UnauthorizedException`, or close 4401/4403).
    Unauthorized,
    Failed(String),
}

impl From<tokio_tungstenite::tungstenite::Error> for ReplayError {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> ReplayError {
        ReplayError::Failed(e.to_string())
    }
}

/// Re-sends `connection_init` (waiting for the ack, which the browser
/// already had) and every subscription on a new upstream.
async fn replay(
    upstream: &mut UpstreamSocket,
    subs: &mut Subscriptions,
    token: &TokenState,
) -> Result<(), ReplayError> {
    if subs.init_seen() {
        upstream
            .send(Message::Text(r#"{"type":"connection_init"}"#.into()))
            .await?;
        let ack = tokio::time::timeout(REPLAY_TIMEOUT, async {
            loop {
                match upstream.next().await {
                    Some(Ok(Message::Text(t))) => match frame_type_label(&t) {
                        "connection_ack" => return Ok(()),
                        "ka" => continue,
                        "connection_error" if is_unauthorized(&t) => {
                            return Err(ReplayError::Unauthorized)
                        }
                        other => {
                            return Err(ReplayError::Failed(format!(
                                "expected connection_ack, got {other}"
                            )))
                        }
                    },
                    Some(Ok(Message::Close(Some(f))))
                        if matches!(u16::from(f.code), 4401 | 4403) =>
                    {
                        return Err(ReplayError::Unauthorized)
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                        return Err(ReplayError::Failed(
                            "upstream closed during replay".to_string(),
                        ))
                    }
                    Some(Ok(_)) => continue,
                }
            }
        })
        .await;
        ack.map_err(|_| ReplayError::Failed("no connection_ack".to_string()))??;
    }
    for frame in subs.replay_frames(&token.auth) {
        upstream.send(Message::Text(frame.into())).await?;
    }
    Ok(())
}

/// Whether a `connection_error` says the credentials were refused.
fn is_unauthorized(frame: &str) -> bool {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(frame) else {
        return false;
    };
    v["errors"].as_array().is_some_and(|errors| {
        errors.iter().any(|e| {
            e["errorType"]
                .as_str()
                .is_some_and(|t| t.contains("Unauthorized"))
        })
    })
}

/// 100 ms, 200 ms, 400 ms … capped at 5 s, each ±50 % so a fleet of relays
/// does not re-dial in lock-step after an AppSync blip.
fn backoff(attempt: u32) -> Duration {
    let base = 100u64
        .saturating_mul(1 << attempt.saturating_sub(1).min(6))
        .min(5_000);
    let jitter = rand::random::<f64>() + 0.5;
    Duration::from_millis((base as f64 * jitter) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_unauthorized_connection_error_is_a_refusal() {
        assert!(is_unauthorized(
            r#"{"type":"connection_error","errors":[{"errorType":"UnauthorizedException","message":"x"}]}"#
        ));
        assert!(!is_unauthorized(
            r#"{"type":"connection_error","errors":[{"errorType":"BadRequestException"}]}"#
        ));
        assert!(!is_unauthorized(r#"{"type":"connection_error"}"#));
        assert!(!is_unauthorized("not json"));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(1) <= Duration::from_millis(150));
        assert!(backoff(20) <= Duration::from_millis(7_500));
        assert!(backoff(20) >= Duration::from_millis(2_500));
    }
}
