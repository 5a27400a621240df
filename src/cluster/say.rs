//! Saying an end to the other replicas so that it is not lost: its marker
//! stored and the end announced on the stream, said again with backoff
//! until Redis takes it. Beyond `RETRY_FOR`, the next resynchronisation
//! of the feed writes it back (this replica's memory keeps it): an end said
//! during an outage reaches the others when Redis returns, whatever kind
//! it is — an operator's, a sign-in's, a browser's sign-out.

use super::ends::Heard;
use super::link::{self, Health};
use redis::aio::ConnectionManager;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How an end was spread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// No `--redis-url`: this replica is the whole deployment.
    Local,
    /// Stored and announced in Redis: every replica follows within a second.
    Cluster,
    /// Redis did not take it: this replica only for now; it is said again
    /// until Redis takes it (and every resynchronisation writes it back).
    Degraded,
}

impl Reach {
    pub fn as_str(self) -> &'static str {
        match self {
            Reach::Local => "local",
            Reach::Cluster => "cluster",
            Reach::Degraded => "degraded",
        }
    }
}

/// How long an end Redis did not take is said again before only the next
/// resynchronisation would say it.
const RETRY_FOR: Duration = Duration::from_secs(600);

pub struct Speaker {
    pub conn: ConnectionManager,
    pub health: Arc<Health>,
    pub replica: String,
    /// How long markers live (the refresh-token lifetime).
    pub ttl: Duration,
}

impl Speaker {
    /// Says `heard` once now; when Redis does not take it, goes on saying
    /// it in the background. How far the first attempt reached.
    pub async fn say(self, heard: Heard) -> Reach {
        match link::publish(&self.conn, &self.replica, &heard, self.ttl).await {
            Ok(()) => Reach::Cluster,
            Err(e) => {
                self.health.failed("end", &e);
                tokio::spawn(self.say_again(heard));
                Reach::Degraded
            }
        }
    }

    async fn say_again(self, heard: Heard) {
        let mut wait = Duration::from_millis(500);
        let give_up = Instant::now() + RETRY_FOR;
        while Instant::now() < give_up {
            tokio::time::sleep(wait).await;
            match link::publish(&self.conn, &self.replica, &heard, self.ttl).await {
                Ok(()) => return,
                Err(e) => self.health.failed("end", &e),
            }
            wait = (wait * 2).min(Duration::from_secs(10));
        }
    }
}
