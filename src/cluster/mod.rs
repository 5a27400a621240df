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

pub mod chain;
pub mod ends;
pub mod feed;
pub mod flight;
pub mod hex;
pub mod leases;
pub mod link;
pub mod say;
pub mod seal;
pub mod settings;

use crate::metrics::Metrics;
use ends::Ends;
pub use ends::Heard;
use link::Health;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
pub use say::Reach;
pub use settings::{redact_url, ClusterConfig};
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
/// Sign-outs of one user announced to the other replicas per minute.
const SIGN_OUTS_PER_MINUTE: u32 = 60;
/// How long a starting replica waits for its first resynchronisation
/// before it takes traffic anyway.
pub const SYNC_WAIT: Duration = Duration::from_secs(10);

struct Link {
    conn: ConnectionManager,
    health: Arc<Health>,
    replica: String,
}

/// What a sign-out names, by hashes.
pub struct SignedOut {
    pub refresh: [u8; 32],
    pub token: [u8; 32],
    pub lineage: [u8; 32],
}

/// The replicas' shared memory of ends, their connection leases and their
/// refresh single flight; this replica's own memory alone without Redis.
/// Only the session authority (`sessions`) holds one.
pub struct Cluster {
    ends: Arc<Ends>,
    ttl: Duration,
    link: Option<Link>,
    tx: mpsc::Sender<Heard>,
    /// The applier's end of `tx`, until it takes it.
    rx: std::sync::Mutex<Option<mpsc::Receiver<Heard>>>,
    flight: Option<Arc<flight::ClusterRefresh>>,
    chains: Option<chain::Chains>,
    leases: Option<leases::Leases>,
    /// The feed's first resynchronisation is done (readiness waits for it).
    synced: Arc<AtomicBool>,
    started: Instant,
    /// Sign-outs announced per user (by `sub` subject) whose refresh token
    /// nobody knows to be the sign-in's: a genuine token shown with ever
    /// new junk refresh tokens must not flood the stream (pushing real ends
    /// out of its window) or every replica's sockets.
    sign_out_rate: Option<crate::limits::KeyedRate<[u8; 32]>>,
    /// Sign-outs beyond that budget: retired here only, never written
    /// back to Redis.
    retired_here: Arc<Ends>,
}

impl Cluster {
    /// This replica alone.
    pub fn local(ttl: Duration) -> Cluster {
        let (tx, rx) = mpsc::channel(1024);
        Cluster {
            ends: Arc::new(Ends::new(CAPACITY, ttl)),
            retired_here: Arc::new(Ends::new(CAPACITY, ttl)),
            ttl,
            link: None,
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
            flight: None,
            chains: None,
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
        let leases = leases::Leases::start(
            conn.clone(),
            health.clone(),
            replica.clone(),
            cfg.lease_ttl,
            shutdown.clone(),
        );
        let feed = feed::Feed {
            client,
            conn: conn.clone(),
            ends: cluster.ends.clone(),
            health: health.clone(),
            replica: replica.clone(),
            tx: cluster.tx.clone(),
            synced: cluster.synced.clone(),
            max_ahead: MAX_AHEAD.as_secs(),
            leases: Some(leases.clone()),
        };
        cluster.leases = Some(leases);
        tokio::spawn(feed.run(shutdown));
        cluster.flight = cfg.session_keys.as_ref().map(|keys| {
            Arc::new(flight::ClusterRefresh {
                conn: conn.clone(),
                health: health.clone(),
                keys: keys.clone(),
                lock_ttl: refresh_timeout + Duration::from_secs(5),
            })
        });
        cluster.chains = Some(chain::Chains {
            conn: conn.clone(),
            health: health.clone(),
            ttl,
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

    /// The replicas' rotation chains, with `--redis-url`.
    pub fn shared_chain(&self) -> Option<Arc<dyn crate::refresh::SharedChain>> {
        self.chains
            .clone()
            .map(|c| Arc::new(c) as Arc<dyn crate::refresh::SharedChain>)
    }

    /// The newest refresh token of the sign-in `lineage` as the replicas
    /// filed it ([`chain::View`]).
    pub async fn newest(&self, lineage: &[u8; 32]) -> chain::View {
        match &self.chains {
            Some(c) => c.newest(lineage).await,
            None => chain::View::Local,
        }
    }

    /// Whether some replica saw Cognito issue or accept the refresh token
    /// hashed as `refresh` for the sign-in `lineage`: `false` without
    /// Redis or when it cannot be asked.
    pub async fn belongs(&self, lineage: &[u8; 32], refresh: &[u8; 32]) -> bool {
        match &self.chains {
            Some(c) => c.belongs(lineage, refresh).await == Some(true),
            None => false,
        }
    }

    /// Admits one more socket of the user `sub` against `max` (0: no
    /// limit) across the replicas: its lease, `None` without Redis, `Err`
    /// when the user holds `max` already.
    pub async fn lease(&self, sub: &str, max: usize) -> Result<Option<leases::Lease>, ()> {
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

    /// Remembers an end and says it to the other replicas: stored in Redis
    /// as a marker and announced on the stream, said again with backoff
    /// until Redis takes it (and written back by every resynchronisation
    /// after that). Remembered before anything else, so a handshake that
    /// checks after this call is refused. How far it reached at first.
    pub async fn say(&self, heard: Heard) -> Reach {
        self.ends.insert(&heard);
        let Some(link) = &self.link else {
            return Reach::Local;
        };
        let speaker = say::Speaker {
            conn: link.conn.clone(),
            health: link.health.clone(),
            replica: link.replica.clone(),
            ttl: self.ttl,
        };
        speaker.say(heard).await
    }

    /// [`Cluster::say`] without waiting for Redis.
    pub fn say_in_background(&self, heard: Heard) {
        self.ends.insert(&heard);
        let Some(link) = &self.link else { return };
        let speaker = say::Speaker {
            conn: link.conn.clone(),
            health: link.health.clone(),
            replica: link.replica.clone(),
            ttl: self.ttl,
        };
        tokio::spawn(async move { speaker.say(heard).await });
    }

    /// The app signed a browser out (the user `sub`; hashes of its refresh
    /// and access tokens, and of its sign-in's lineage). `known`: its
    /// refresh token is known to be the sign-in's, and it is always said.
    /// Otherwise it is said only within that user's budget of such
    /// sign-outs, and retired here alone beyond it.
    pub fn sign_out(&self, sub: &str, browser: SignedOut, known: bool) {
        let sub = crate::session::Subject::Sub(sub.to_string()).hash();
        let heard = Heard::Browser {
            sub,
            refresh: browser.refresh,
            token: browser.token,
            lineage: Some(browser.lineage),
        };
        let within_budget = known || self.sign_out_rate.as_ref().is_none_or(|r| r.try_take(&sub));
        if !within_budget {
            tracing::warn!(
                "sign-outs of one user with refresh tokens no replica knows, beyond 60 a minute, are not announced to the other replicas"
            );
            self.retired_here.insert(&heard);
            return;
        }
        self.say_in_background(heard);
    }

    /// A sign-in ended: the refresh results the replicas share for it are
    /// dropped (in the background), so none revives it in the next seconds.
    pub fn forget_sign_in(&self, lineage: [u8; 32]) {
        self.forget_results(flight::sign_in_key(&lineage));
    }

    /// An operator ended a subject: the refresh results the replicas share
    /// for its tokens are dropped (in the background).
    pub fn forget_subject(&self, subject: [u8; 32]) {
        self.forget_results(flight::subject_key(&subject));
    }

    fn forget_results(&self, set: String) {
        let Some(link) = &self.link else { return };
        if self.flight.is_none() {
            return;
        }
        let (conn, health) = (link.conn.clone(), link.health.clone());
        tokio::spawn(async move {
            if let Err(e) = flight::forget_set(&conn, set).await {
                health.failed("refresh", &e);
            }
        });
    }

    /// Remembers an end here, before it is applied or said.
    pub fn remember(&self, heard: &Heard) {
        self.ends.insert(heard);
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

    /// Whether a sign-in made at `signed_in_at`, answering to `subjects`,
    /// was ended by an operator. This replica's memory decides, without a
    /// Redis round trip: the feed fills it with every marker when it
    /// connects and with every end as it is said.
    pub fn subject_ended(&self, who: &crate::session::Who) -> bool {
        !self.ends.is_empty() && self.ends.covers(&who.subjects(), who.signed_in_at)
    }

    /// Whether some subject was ended at all (lets a caller skip hashing).
    pub fn any_subject_ended(&self) -> bool {
        !self.ends.is_empty()
    }

    /// Whether the sign-in hashed as `lineage` ended, here or elsewhere.
    pub fn sign_in_ended(&self, lineage: &[u8; 32]) -> bool {
        self.ends.sign_in_ended(lineage)
    }

    /// Cognito renewed a sign-in marked ended: alive after all (here).
    pub fn revive(&self, lineage: &[u8; 32]) {
        self.ends.revive(lineage);
    }

    /// Whether the access token hashed as `token` was retired by a sign-out.
    pub fn token_retired(&self, token: &[u8; 32]) -> bool {
        self.ends.token_retired(token) || self.retired_here.token_retired(token)
    }

    /// Whether the refresh token hashed as `refresh` was shown by a browser
    /// that signed out: it buys nothing any more, not even the tokens that
    /// replaced it.
    pub fn refresh_signed_out(&self, refresh: &[u8; 32]) -> bool {
        self.ends.refresh_signed_out(refresh) || self.retired_here.refresh_signed_out(refresh)
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
