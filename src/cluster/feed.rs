//! Following the other replicas' ends of sessions, on a connection of its
//! own (`XREAD BLOCK` holds it).
//!
//! Each time it (re)connects it resynchronises before following: it reads
//! every marker in Redis into this replica's memory (ending the local
//! sockets they cover: an end said while this replica could not hear it),
//! writes back and announces the ends this replica remembers and Redis
//! lacks — operators' ends, ended sign-ins and sign-outs alike (said while
//! it could not reach Redis, or lost by a Redis that came back empty: the
//! other replicas hear them, no ended session revives) — writes back this
//! replica's connection leases (a Redis that restarted lost them), and
//! then follows the stream from the last entry it saw, so what was said
//! while it was away still arrives. A replica that starts reads the stream
//! from its beginning (it is capped): it learns the sign-ins and sign-outs
//! ended before it started, as well as the operators' ends in the markers.

use super::ends::{Ends, Heard};
use super::link::{self, Health};
use redis::aio::ConnectionManager;
use redis::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long one `XREAD` waits for an entry before asking again.
const BLOCK: Duration = Duration::from_secs(2);
/// Most markers read in a resynchronisation.
const MAX_MARKERS: usize = 200_000;

pub struct Feed {
    pub client: redis::Client,
    pub conn: ConnectionManager,
    pub ends: Arc<Ends>,
    pub health: Arc<Health>,
    pub replica: String,
    /// To this replica's applier; bounded, so a burst (a resync, the
    /// stream read at start) waits for it instead of being dropped.
    pub tx: mpsc::Sender<Heard>,
    /// Set once the first resynchronisation is done.
    pub synced: Arc<AtomicBool>,
    /// Most seconds an `at` may lie ahead of this replica's clock.
    pub max_ahead: u64,
    /// This replica's leases, written back on every resynchronisation.
    pub leases: Option<super::leases::Leases>,
}

impl Feed {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut last: Option<String> = None;
        let mut backoff = Duration::from_millis(200);
        loop {
            let round = async {
                let cfg = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(link::OP_TIMEOUT * 4))
                    .set_response_timeout(None);
                let mut reader = self
                    .client
                    .get_multiplexed_async_connection_with_config(&cfg)
                    .await
                    .map_err(|e| e.to_string())?;
                self.resync().await?;
                self.synced.store(true, Ordering::Release);
                self.health.set_up(true);
                loop {
                    let from = last.clone().unwrap_or_else(|| "0-0".into());
                    let reply: Value = tokio::time::timeout(
                        BLOCK * 2,
                        redis::cmd("XREAD")
                            .arg("BLOCK")
                            .arg(BLOCK.as_millis() as u64)
                            .arg("COUNT")
                            .arg(256)
                            .arg("STREAMS")
                            .arg(link::STREAM)
                            .arg(&from)
                            .query_async(&mut reader),
                    )
                    .await
                    .map_err(|_| "XREAD did not return".to_string())?
                    .map_err(|e| e.to_string())?;
                    for (id, fields) in link::read_entries(&reply) {
                        self.apply(&fields).await;
                        last = Some(id);
                    }
                    backoff = Duration::from_millis(200);
                }
                #[allow(unreachable_code)]
                Ok::<(), String>(())
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = round => {
                    if let Err(e) = r {
                        // The feed's connection is the link's health: one
                        // failed command elsewhere is not an outage.
                        self.health.failed("feed", &e);
                        self.health.set_up(false);
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn apply(&self, fields: &[(String, String)]) {
        let said_here = fields.iter().any(|(k, v)| k == "r" && *v == self.replica);
        if said_here {
            return; // applied when it was said
        }
        let Some(heard) = Heard::parse(fields) else {
            return;
        };
        let heard = self.clamp(heard);
        // Remembered before it is applied: a handshake checking the memory
        // after this point is refused, one that registered before it is
        // closed by the applier.
        self.ends.insert(&heard);
        let _ = self.tx.send(heard).await;
    }

    /// An end cannot lie in the future: a value far ahead (written into
    /// Redis by someone who should not) would lock a user out for the
    /// marker's lifetime. It is cut to now plus the allowed skew.
    fn clamp(&self, heard: Heard) -> Heard {
        match heard {
            Heard::Subject { subject, at } => Heard::Subject {
                subject,
                at: at.min(crate::clock::now_secs() + self.max_ahead),
            },
            other => other,
        }
    }

    async fn resync(&self) -> Result<(), String> {
        let markers = link::all_markers(&self.conn, MAX_MARKERS)
            .await
            .inspect_err(|e| self.health.failed("resync", e))?;
        let in_redis: std::collections::HashSet<Heard> = markers.iter().copied().collect();
        for heard in markers {
            let heard = self.clamp(heard);
            if self.ends.insert(&heard) {
                let _ = self.tx.send(heard).await;
            }
        }
        // What this replica said (or heard) while Redis could not take it:
        // stored and announced again, so the replicas that stayed connected
        // hear it too, and a Redis that came back empty holds it again.
        for (heard, left) in self.ends.entries() {
            if !in_redis.contains(&heard) {
                link::publish(&self.conn, &self.replica, &heard, left)
                    .await
                    .inspect_err(|e| self.health.failed("resync", e))?;
            }
        }
        // A Redis that restarted lost every lease too: this replica's
        // sockets count again at once, not at the next renewal.
        if let Some(leases) = &self.leases {
            leases.write_back().await;
        }
        Ok(())
    }
}
