//! What the replicas of one deployment agree on, through Redis
//! (`--redis-url`): which users' sessions an operator ended, so that the
//! end reaches every replica's open sockets within a second and their next
//! handshake anywhere is refused until they sign in again.
//!
//! Without `--redis-url` the same calls work on this replica alone (one
//! process is a cluster of one). With it, Redis being down is a
//! degradation, never an outage: every call falls back to this replica's
//! own memory ([`ends::Ends`]), `/readyz` says so in its body (and stays
//! 200), `appsync_relay_redis_up` is 0, and when Redis returns the feed
//! resynchronises in both directions ([`feed`]).
//!
//! - [`ends`]: this replica's memory of ended subjects.
//! - [`link`]: the keys and commands in Redis, and the link's health;
//!   [`hex`]: hashes as Redis holds them.
//! - [`feed`]: following the other replicas, resynchronising on reconnect.
//! - [`leases`]: `--max-connections-per-user` across the replicas.
//! - [`flight`]: one Cognito call per refresh token across the replicas
//!   (with `--session-key-file`), the token sets sealed by [`seal`].

pub mod ends;
pub mod feed;
pub mod flight;
pub mod hex;
pub mod leases;
pub mod link;
pub mod seal;

use crate::metrics::Metrics;
use ends::Ends;
pub use ends::Heard;
use link::Health;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Most ended subjects remembered.
const CAPACITY: usize = 100_000;

/// `--redis-url` and what goes with it.
#[derive(Clone)]
pub struct ClusterConfig {
    /// `redis://` or `rediss://` (TLS); may carry credentials.
    pub url: String,
    /// From `--redis-password-file`, overriding the URL's.
    pub password: Option<String>,
    /// `--session-key-file`: with it, refreshes are single across replicas.
    pub session_keys: Option<Arc<seal::SessionKeys>>,
    /// `--cluster-lease-ttl`: how long a connection's lease lasts unrenewed.
    pub lease_ttl: Duration,
}

impl fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("url", &redact_url(&self.url))
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("session_keys", &self.session_keys)
            .field("lease_ttl", &self.lease_ttl)
            .finish()
    }
}

/// The URL without its credentials, for logs and errors.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("redacted"));
            }
            u.to_string()
        }
        Err(_) => "<unparsable URL>".into(),
    }
}

impl ClusterConfig {
    /// The Redis client the URL and password describe.
    pub fn client(&self) -> Result<redis::Client, String> {
        use redis::IntoConnectionInfo as _;
        let mut info = self
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| format!("--redis-url {}: {e}", redact_url(&self.url)))?;
        if let Some(pw) = &self.password {
            let settings = info.redis_settings().clone().set_password(pw);
            info = info.set_redis_settings(settings);
        }
        redis::Client::open(info).map_err(|e| format!("--redis-url {}: {e}", redact_url(&self.url)))
    }
}

struct Link {
    conn: ConnectionManager,
    health: Arc<Health>,
    replica: String,
}

/// How an end was spread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// No `--redis-url`: this replica is the whole deployment.
    Local,
    /// Stored and announced in Redis: every replica follows within a second.
    Cluster,
    /// Redis did not take it: this replica only, until Redis returns (its
    /// resynchronisation then writes it there).
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

pub struct Cluster {
    ends: Arc<Ends>,
    ttl: Duration,
    link: Option<Link>,
    tx: broadcast::Sender<Heard>,
    flight: Option<Arc<flight::ClusterRefresh>>,
    leases: Option<leases::Leases>,
}

impl Cluster {
    /// This replica alone.
    pub fn local(ttl: Duration) -> Cluster {
        Cluster {
            ends: Arc::new(Ends::new(CAPACITY, ttl)),
            ttl,
            link: None,
            tx: broadcast::channel(1024).0,
            flight: None,
            leases: None,
        }
    }

    /// Coordinated through Redis; the feed runs until `shutdown`. Never
    /// fails for want of Redis: it connects lazily and keeps trying.
    /// `refresh_timeout` is Cognito's: a refresh lock outlives it.
    pub fn start(
        cfg: &ClusterConfig,
        ttl: Duration,
        refresh_timeout: Duration,
        metrics: &Metrics,
        shutdown: CancellationToken,
    ) -> Result<Cluster, String> {
        let client = cfg.client()?;
        let manager_cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(link::OP_TIMEOUT * 4))
            .set_response_timeout(Some(link::OP_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager_cfg)
            .map_err(|e| format!("--redis-url {}: {e}", redact_url(&cfg.url)))?;
        let mut cluster = Cluster::local(ttl);
        let health = Arc::new(Health::new(metrics));
        let replica = format!("{:016x}", rand::random::<u64>());
        let feed = feed::Feed {
            client,
            conn: conn.clone(),
            ends: cluster.ends.clone(),
            health: health.clone(),
            replica: replica.clone(),
            tx: cluster.tx.clone(),
        };
        cluster.leases = Some(leases::Leases::start(
            conn.clone(),
            health.clone(),
            replica.clone(),
            cfg.lease_ttl,
            shutdown.clone(),
        ));
        tokio::spawn(feed.run(shutdown));
        cluster.flight = cfg.session_keys.as_ref().map(|keys| {
            Arc::new(flight::ClusterRefresh {
                conn: conn.clone(),
                health: health.clone(),
                keys: keys.clone(),
                lock_ttl: refresh_timeout + Duration::from_secs(5),
            })
        });
        cluster.link = Some(Link {
            conn,
            health,
            replica,
        });
        Ok(cluster)
    }

    /// The replicas' refresh single flight, when `--session-key-file` is set.
    pub fn refresh_flight(&self) -> Option<Arc<dyn crate::refresh::SharedRefresh>> {
        self.flight
            .clone()
            .map(|f| f as Arc<dyn crate::refresh::SharedRefresh>)
    }

    /// Admits one more socket of the user whose `sub` subject is `subject`
    /// against `max` (0: no limit) across the replicas: its lease, `None`
    /// without Redis, `Err` when the user holds `max` already.
    pub async fn admit(&self, subject: &[u8; 32], max: usize) -> Result<Option<leases::Lease>, ()> {
        match &self.leases {
            Some(l) if max > 0 => match l.admit(subject, max).await {
                leases::Admission::Admitted(lease) => Ok(Some(lease)),
                leases::Admission::Full => Err(()),
            },
            _ => Ok(None),
        }
    }

    /// Tells the other replicas (in the background: nothing waits for
    /// Redis); without Redis, or while it is down, they do not hear it.
    pub fn announce(&self, heard: Heard) {
        let Some(link) = &self.link else { return };
        let (conn, health, replica) =
            (link.conn.clone(), link.health.clone(), link.replica.clone());
        tokio::spawn(async move {
            if let Err(e) = link::announce(&conn, &replica, &heard).await {
                health.failed("announce", &e);
            }
        });
    }

    /// What the other replicas said, as it arrives.
    pub fn subscribe(&self) -> broadcast::Receiver<Heard> {
        self.tx.subscribe()
    }

    /// The sign-ins of `subject` made at or before `at` are over, here and
    /// (with Redis) everywhere. The caller closes this replica's sockets.
    pub async fn end(&self, subject: [u8; 32], at: u64) -> Reach {
        self.ends.insert(subject, at);
        let Some(link) = &self.link else {
            return Reach::Local;
        };
        match link::publish_end(&link.conn, &link.replica, &subject, at, self.ttl).await {
            Ok(()) => Reach::Cluster,
            Err(e) => {
                link.health.failed("end", &e);
                Reach::Degraded
            }
        }
    }

    /// Whether a sign-in made at `signed_in_at`, answering to `subjects`,
    /// was ended. This replica's memory decides, without a Redis round
    /// trip: the feed fills it with every marker when it connects and with
    /// every end as it is said. A handshake slipping in between an end and
    /// its arrival here (about a millisecond) registers its socket first, so
    /// the arrival closes it.
    pub fn is_ended(&self, subjects: &[[u8; 32]], signed_in_at: u64) -> bool {
        self.ends.covers(subjects, signed_in_at)
    }

    /// For `/readyz`'s body: the coordination's state, when there is one.
    pub fn readiness_note(&self) -> Option<&'static str> {
        let link = self.link.as_ref()?;
        Some(if link.health.is_up() {
            "redis: connected\n"
        } else {
            "degraded: redis unreachable; ends of sessions reach this replica only until it returns\n"
        })
    }
}
