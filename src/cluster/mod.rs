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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Most ended subjects remembered.
const CAPACITY: usize = 100_000;
/// How far ahead of this replica's clock an end read from Redis may lie.
const MAX_AHEAD: Duration = Duration::from_secs(300);
/// How long an end Redis did not take is said again before only the next
/// resynchronisation would say it.
const END_RETRY_FOR: Duration = Duration::from_secs(600);
/// Sign-outs of one user announced to the other replicas per minute.
const SIGN_OUTS_PER_MINUTE: u32 = 60;
/// How long a starting replica waits for its first resynchronisation
/// before it takes traffic anyway.
pub const SYNC_WAIT: Duration = Duration::from_secs(10);

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
    /// `--redis-ca-file`'s PEM: for `rediss://`, the CA trusted instead of
    /// the system's roots (a private CA).
    pub ca_pem: Option<Vec<u8>>,
}

impl fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("url", &redact_url(&self.url))
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("session_keys", &self.session_keys)
            .field("lease_ttl", &self.lease_ttl)
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<set>"))
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
        let client = match &self.ca_pem {
            None => redis::Client::open(info),
            Some(pem) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                },
            ),
        };
        client.map_err(|e| format!("--redis-url {}: {e}", redact_url(&self.url)))
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

pub struct Cluster {
    ends: Arc<Ends>,
    ttl: Duration,
    link: Option<Link>,
    tx: mpsc::Sender<Heard>,
    /// The applier's end of `tx`, until it takes it.
    rx: std::sync::Mutex<Option<mpsc::Receiver<Heard>>>,
    flight: Option<Arc<flight::ClusterRefresh>>,
    leases: Option<leases::Leases>,
    /// The feed's first resynchronisation is done (readiness waits for it).
    synced: Arc<AtomicBool>,
    started: Instant,
    /// Sign-outs announced per user (by `sub` subject): a genuine token
    /// shown with ever new junk refresh tokens must not flood the stream
    /// (pushing real ends out of its window) or every replica's sockets.
    sign_out_rate: Option<crate::limits::KeyedRate<[u8; 32]>>,
}

impl Cluster {
    /// This replica alone.
    pub fn local(ttl: Duration) -> Cluster {
        let (tx, rx) = mpsc::channel(1024);
        Cluster {
            ends: Arc::new(Ends::new(CAPACITY, ttl)),
            ttl,
            link: None,
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
            flight: None,
            leases: None,
            synced: Arc::new(AtomicBool::new(true)),
            started: Instant::now(),
            sign_out_rate: crate::limits::KeyedRate::new(
                SIGN_OUTS_PER_MINUTE,
                Duration::from_secs(60),
                CAPACITY,
            ),
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
        cluster.synced.store(false, Ordering::Release);
        let health = Arc::new(Health::new(metrics));
        let replica = format!("{:016x}", rand::random::<u64>());
        let feed = feed::Feed {
            client,
            conn: conn.clone(),
            ends: cluster.ends.clone(),
            health: health.clone(),
            replica: replica.clone(),
            tx: cluster.tx.clone(),
            synced: cluster.synced.clone(),
            max_ahead: MAX_AHEAD.as_secs(),
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

    /// Admits one more socket of the user `sub` against `max` (0: no
    /// limit) across the replicas: its lease, `None` without Redis, `Err`
    /// when the user holds `max` already.
    pub async fn admit(&self, sub: &str, max: usize) -> Result<Option<leases::Lease>, ()> {
        match &self.leases {
            Some(l) if max > 0 => match l
                .admit(&crate::session::Subject::Sub(sub.to_string()).hash(), max)
                .await
            {
                leases::Admission::Admitted(lease) => Ok(Some(lease)),
                leases::Admission::Full => Err(()),
            },
            _ => Ok(None),
        }
    }

    /// Tells the other replicas that the app signed a browser out (the user
    /// `sub`; hashes of its refresh and access tokens), unless that user's
    /// budget of such announcements is spent.
    pub fn announce_sign_out(&self, sub: &str, refresh: [u8; 32], token: [u8; 32]) {
        let sub = crate::session::Subject::Sub(sub.to_string()).hash();
        if self
            .sign_out_rate
            .as_ref()
            .is_some_and(|r| !r.try_take(&sub))
        {
            tracing::warn!(
                "sign-outs of one user beyond 60 a minute are not announced to the other replicas"
            );
            return;
        }
        self.announce(Heard::Browser {
            sub,
            refresh,
            token,
        });
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

    /// A sign-in ended: the refresh results the replicas share for it are
    /// dropped (in the background), so none revives it in the next seconds.
    pub fn forget_sign_in(&self, lineage: [u8; 32]) {
        let Some(link) = &self.link else { return };
        if self.flight.is_none() {
            return;
        }
        let (conn, health) = (link.conn.clone(), link.health.clone());
        tokio::spawn(async move {
            if let Err(e) = flight::forget_sign_in(&conn, &lineage).await {
                health.failed("refresh", &e);
            }
        });
    }

    /// What the other replicas said, as it arrives: for the one applier
    /// (`None` once taken).
    pub fn take_heard(&self) -> Option<mpsc::Receiver<Heard>> {
        self.rx.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Ready to take traffic as far as the coordination goes: the first
    /// resynchronisation is done (this replica knows every end in Redis),
    /// or Redis could not be reached for [`SYNC_WAIT`] after start (an
    /// outage of Redis must not keep a new replica out for good).
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire) || self.started.elapsed() > SYNC_WAIT
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
                // Said again until Redis takes it (a resync after a lost
                // connection would too, but the feed may never lose it).
                let (conn, health, replica, ttl) = (
                    link.conn.clone(),
                    link.health.clone(),
                    link.replica.clone(),
                    self.ttl,
                );
                tokio::spawn(async move {
                    let mut wait = Duration::from_millis(500);
                    let give_up = Instant::now() + END_RETRY_FOR;
                    while Instant::now() < give_up {
                        tokio::time::sleep(wait).await;
                        match link::publish_end(&conn, &replica, &subject, at, ttl).await {
                            Ok(()) => return,
                            Err(e) => health.failed("end", &e),
                        }
                        wait = (wait * 2).min(Duration::from_secs(10));
                    }
                });
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
    pub fn is_ended(&self, claims: &crate::verify::Claims) -> bool {
        !self.ends.is_empty()
            && self.ends.covers(
                &crate::session::subjects_of(claims),
                crate::session::signed_in_at(claims),
            )
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
