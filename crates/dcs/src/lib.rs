//! The distributed configuration store (DCS): the single source of truth
//! for who is primary. One contract ([`Dcs`]), two backends: [`etcd`] for
//! clusters spanning machines, [`local`] (a directory: file locks, atomic
//! renames, expiry by the clock) for a cluster on one machine. Values other
//! than the leader are opaque strings (JSON written by the agent): this
//! crate knows keys, leases and revisions, not what members mean.
#![forbid(unsafe_code)]

pub mod conformance;
pub mod etcd;
pub mod local;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum DcsError {
    #[error("DCS unavailable: {0}")]
    Unavailable(String),
    #[error("DCS data is corrupt: {0}")]
    Corrupt(String),
}

/// The leader lease holder. `epoch` changes every time the lease changes
/// hands (and never goes back): the proxy fences old primaries by it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    pub name: String,
    pub epoch: u64,
}

/// Keys holding one opaque value each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// The cluster's dynamic configuration.
    Config,
    /// The failover history.
    History,
    /// Synchronous replication state (who may be promoted).
    Sync,
    /// The leader's last reported position, for candidates' lag checks.
    Status,
    /// A requested switchover or failover.
    Failover,
    /// Present: automatic failover is paused.
    Pause,
    /// Failsafe mode: the members that may confirm the leader.
    Failsafe,
}

impl Key {
    pub fn name(self) -> &'static str {
        match self {
            Key::Config => "config",
            Key::History => "history",
            Key::Sync => "sync",
            Key::Status => "status",
            Key::Failover => "failover",
            Key::Pause => "pause",
            Key::Failsafe => "failsafe",
        }
    }
    pub const ALL: [Key; 7] = [
        Key::Config,
        Key::History,
        Key::Sync,
        Key::Status,
        Key::Failover,
        Key::Pause,
        Key::Failsafe,
    ];
}

/// Everything the HA loop reads, read at once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Who initialized the cluster (set once).
    pub initialize: Option<String>,
    /// The unexpired leader lease.
    pub leader: Option<Leader>,
    /// Members whose keys have not expired: name -> value.
    pub members: BTreeMap<String, String>,
    pub values: BTreeMap<&'static str, String>,
    /// Registered proxies whose keys have not expired: name -> value.
    pub proxies: BTreeMap<String, String>,
    /// Unexpired named leases (apart from the leader's): lease -> holder.
    pub leases: BTreeMap<String, Leader>,
}

impl Snapshot {
    pub fn get(&self, k: Key) -> Option<&str> {
        self.values.get(k.name()).map(String::as_str)
    }
}

/// The contract every backend fulfils (checked by [`conformance`]).
pub trait Dcs: Send + Sync + 'static {
    fn snapshot(&self) -> impl Future<Output = Result<Snapshot, DcsError>> + Send;
    /// Sets the initialize key if nobody has; true when this call set it.
    fn initialize(&self, value: &str) -> impl Future<Output = Result<bool, DcsError>> + Send;
    /// Removes the initialize key if it holds `value` (a bootstrap failed).
    fn cancel_initialize(&self, value: &str) -> impl Future<Output = Result<(), DcsError>> + Send;
    /// Takes the leader lease if nobody holds it (or it expired). Returns
    /// the new lease, or `None` when someone else holds it.
    fn take_leader(
        &self,
        name: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<Option<Leader>, DcsError>> + Send;
    /// Extends the lease if `name` still holds it; false when it does not.
    fn renew_leader(
        &self,
        name: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, DcsError>> + Send;
    /// Gives the lease up if `name` holds it, so others can take it at once.
    fn release_leader(&self, name: &str) -> impl Future<Output = Result<(), DcsError>> + Send;
    /// Publishes a member's state, expiring after `ttl` unless refreshed.
    fn put_member(
        &self,
        name: &str,
        value: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), DcsError>> + Send;
    fn delete_member(&self, name: &str) -> impl Future<Output = Result<(), DcsError>> + Send;
    /// Takes the named lease `lease` (one of several, apart from the
    /// leader's: the proxies' virtual IP, ...) for `holder` if it is free
    /// or expired; as [`Dcs::take_leader`], with an epoch of its own.
    fn take_lease(
        &self,
        lease: &str,
        holder: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<Option<Leader>, DcsError>> + Send;
    /// Extends the named lease if `holder` still holds it.
    fn renew_lease(
        &self,
        lease: &str,
        holder: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, DcsError>> + Send;
    /// Gives the named lease up if `holder` holds it.
    fn release_lease(
        &self,
        lease: &str,
        holder: &str,
    ) -> impl Future<Output = Result<(), DcsError>> + Send;
    /// Publishes a proxy's state, expiring after `ttl` unless refreshed.
    fn put_proxy(
        &self,
        name: &str,
        value: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), DcsError>> + Send;
    fn delete_proxy(&self, name: &str) -> impl Future<Output = Result<(), DcsError>> + Send;
    /// Sets (or with `None` deletes) a key.
    fn put(
        &self,
        key: Key,
        value: Option<&str>,
    ) -> impl Future<Output = Result<(), DcsError>> + Send;
    /// Sets a key only if it currently holds `expected` (`None`: absent).
    fn compare_and_set(
        &self,
        key: Key,
        expected: Option<&str>,
        value: &str,
    ) -> impl Future<Output = Result<bool, DcsError>> + Send;
    /// The leader as it changes (an expired lease shows as `None`).
    fn watch_leader(&self) -> watch::Receiver<Option<Leader>>;
}

/// A DCS chosen at run time.
pub enum AnyDcs {
    Local(local::LocalDcs),
    Etcd(Box<etcd::EtcdDcs>),
}

macro_rules! delegate {
    ($self:ident, $d:ident => $e:expr) => {
        match $self {
            AnyDcs::Local($d) => $e,
            AnyDcs::Etcd($d) => $e,
        }
    };
}

impl Dcs for AnyDcs {
    async fn snapshot(&self) -> Result<Snapshot, DcsError> {
        delegate!(self, d => d.snapshot().await)
    }
    async fn initialize(&self, value: &str) -> Result<bool, DcsError> {
        delegate!(self, d => d.initialize(value).await)
    }
    async fn cancel_initialize(&self, value: &str) -> Result<(), DcsError> {
        delegate!(self, d => d.cancel_initialize(value).await)
    }
    async fn take_leader(&self, name: &str, ttl: Duration) -> Result<Option<Leader>, DcsError> {
        delegate!(self, d => d.take_leader(name, ttl).await)
    }
    async fn renew_leader(&self, name: &str, ttl: Duration) -> Result<bool, DcsError> {
        delegate!(self, d => d.renew_leader(name, ttl).await)
    }
    async fn release_leader(&self, name: &str) -> Result<(), DcsError> {
        delegate!(self, d => d.release_leader(name).await)
    }
    async fn put_member(&self, name: &str, value: &str, ttl: Duration) -> Result<(), DcsError> {
        delegate!(self, d => d.put_member(name, value, ttl).await)
    }
    async fn delete_member(&self, name: &str) -> Result<(), DcsError> {
        delegate!(self, d => d.delete_member(name).await)
    }
    async fn take_lease(
        &self,
        lease: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Leader>, DcsError> {
        delegate!(self, d => d.take_lease(lease, holder, ttl).await)
    }
    async fn renew_lease(
        &self,
        lease: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, DcsError> {
        delegate!(self, d => d.renew_lease(lease, holder, ttl).await)
    }
    async fn release_lease(&self, lease: &str, holder: &str) -> Result<(), DcsError> {
        delegate!(self, d => d.release_lease(lease, holder).await)
    }
    async fn put_proxy(&self, name: &str, value: &str, ttl: Duration) -> Result<(), DcsError> {
        delegate!(self, d => d.put_proxy(name, value, ttl).await)
    }
    async fn delete_proxy(&self, name: &str) -> Result<(), DcsError> {
        delegate!(self, d => d.delete_proxy(name).await)
    }
    async fn put(&self, key: Key, value: Option<&str>) -> Result<(), DcsError> {
        delegate!(self, d => d.put(key, value).await)
    }
    async fn compare_and_set(
        &self,
        key: Key,
        expected: Option<&str>,
        value: &str,
    ) -> Result<bool, DcsError> {
        delegate!(self, d => d.compare_and_set(key, expected, value).await)
    }
    fn watch_leader(&self) -> watch::Receiver<Option<Leader>> {
        delegate!(self, d => d.watch_leader())
    }
}

/// Opens a DCS from a URL: `etcd://host:port[,host:port]/cluster` or
/// `local:///path/to/dir` (or a plain path).
pub async fn open(url: &str, cluster: &str) -> Result<AnyDcs, DcsError> {
    if let Some(rest) = url.strip_prefix("etcd://") {
        let endpoints: Vec<String> = rest
            .trim_end_matches('/')
            .split(',')
            .map(|e| format!("http://{e}"))
            .collect();
        return Ok(AnyDcs::Etcd(Box::new(
            etcd::EtcdDcs::connect(&endpoints, cluster).await?,
        )));
    }
    let path = url.strip_prefix("local://").unwrap_or(url);
    Ok(AnyDcs::Local(local::LocalDcs::open(
        std::path::Path::new(path).join(cluster),
    )?))
}
