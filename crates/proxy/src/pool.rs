//! Server connection pools, one per (database, user). A pool hands out
//! server connections to the current primary as RAII [`Checkout`] guards:
//! dropping one returns the connection, or closes it when it is broken,
//! too old, or opened to a former primary.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::sync::Semaphore;

use crate::server::{ConnectOptions, ServerConn, ServerCredential, ServerError};
use crate::topology::Topology;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolKey {
    /// Shared with every client of the pool.
    pub database: Arc<str>,
    pub user: Arc<str>,
}

#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub size: usize,
    pub min_idle: usize,
    pub mode: config::PoolMode,
    pub idle_timeout: Duration,
    pub lifetime: Duration,
    pub connect_timeout: Duration,
    pub tls: config::ServerTls,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("no server connection available within query_wait_timeout ({0:?})")]
    Timeout(Duration),
    #[error("no primary server is available")]
    NoPrimary,
    #[error(transparent)]
    Server(#[from] ServerError),
}

pub struct Pool {
    pub key: Arc<PoolKey>,
    sem: Arc<Semaphore>,
    size: AtomicUsize,
    /// `settings.lifetime` in ms, read without a lock when a connection comes back.
    lifetime_ms: AtomicU64,
    // Boxed so a checkout moves a pointer, and a Checkout (held by every
    // active session) stays small.
    #[allow(clippy::vec_box)]
    idle: Mutex<Vec<Box<ServerConn>>>,
    settings: Mutex<PoolSettings>,
    credential: Mutex<ServerCredential>,
    /// ParameterStatus values of a server of this pool, for client logins.
    server_params: Mutex<Option<ServerParams>>,
    topology: Arc<Topology>,
    pub active: AtomicUsize,
    pub waiting: AtomicUsize,
    /// Total time clients waited for a server connection.
    pub wait_us: AtomicU64,
    /// Connections open or being opened, idle or not.
    pub open: AtomicUsize,
    /// A standby's pool (read balancing): connections to this address,
    /// whoever is primary. None: the primary's pool.
    fixed: Option<Arc<str>>,
    /// The primary's pool: the pools of the same (database, user) on each
    /// standby, made on first use.
    replicas: Mutex<HashMap<Arc<str>, Arc<Pool>>>,
}

/// What a server of a pool reported (ParameterStatus), shared.
pub type ServerParams = Arc<Reported>;

/// ParameterStatus (name, value) pairs a server reported, and the messages
/// that tell a client of them, encoded once per pool: a login copies them
/// instead of encoding a dozen messages.
pub struct Reported {
    pairs: Vec<(String, String)>,
    encoded: Vec<u8>,
    /// Where the message of each pair ends in `encoded`.
    ends: Vec<usize>,
    /// Bit `len % 64` is set for the length of every name: a startup
    /// parameter whose length has no bit here is not reported.
    name_lengths: u64,
}

impl Reported {
    pub fn new(pairs: Vec<(String, String)>) -> Self {
        let mut encoded = bytes::BytesMut::new();
        let mut ends = Vec::with_capacity(pairs.len());
        for (name, value) in &pairs {
            parameter_status(&mut encoded, name, value);
            ends.push(encoded.len());
        }
        let name_lengths = pairs.iter().fold(0u64, |m, (n, _)| m | 1 << (n.len() % 64));
        Reported {
            pairs,
            encoded: encoded.to_vec(),
            ends,
            name_lengths,
        }
    }

    /// Writes a ParameterStatus for every reported parameter, with the
    /// value the client asked for at startup where it asked for one (the
    /// last one, if it asked twice: the server applies them in order).
    pub fn encode_for(&self, startup: &[(String, String)], out: &mut bytes::BytesMut) {
        if !startup
            .iter()
            .any(|(k, _)| self.name_lengths & 1 << (k.len() % 64) != 0)
        {
            out.extend_from_slice(&self.encoded);
            return;
        }
        let mut from = 0;
        for (i, (name, _)) in self.pairs.iter().enumerate() {
            if let Some((_, v)) = startup
                .iter()
                .rev()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
            {
                let start = if i == 0 { 0 } else { self.ends[i - 1] };
                out.extend_from_slice(&self.encoded[from..start]);
                // the server reports an encoding by its own name
                let v = match name.as_str() {
                    "client_encoding" => crate::encoding::canonical(v).unwrap_or(v),
                    _ => v,
                };
                parameter_status(out, name, v);
                from = self.ends[i];
            }
        }
        out.extend_from_slice(&self.encoded[from..]);
    }
}

fn parameter_status(out: &mut bytes::BytesMut, name: &str, value: &str) {
    use bytes::BufMut;
    wire::frame::write_message(out, b'S', |b| {
        b.put_slice(name.as_bytes());
        b.put_u8(0);
        b.put_slice(value.as_bytes());
        b.put_u8(0);
    });
}

/// A server connection lent to one client. It holds one of the pool's
/// semaphore permits (forgotten when taken, added back on drop: a
/// Checkout is two pointers).
pub struct Checkout {
    conn: Option<Box<ServerConn>>,
    pool: Arc<Pool>,
}

impl Checkout {
    pub fn conn(&mut self) -> &mut ServerConn {
        self.conn
            .as_mut()
            .expect("a checkout holds its connection until dropped")
    }
    pub fn conn_ref(&self) -> &ServerConn {
        self.conn
            .as_ref()
            .expect("a checkout holds its connection until dropped")
    }
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        self.pool.active.fetch_sub(1, Ordering::Relaxed);
        if let Some(c) = self.conn.take() {
            self.pool.checkin(c);
        }
        self.pool.sem.add_permits(1);
    }
}

/// Idle connections older than this (coarse clock ms) are checked for a
/// close by the server before use; busier ones are not (no cost per
/// transaction).
const IDLE_CHECK_MS: u64 = 1000;

impl Pool {
    pub fn new(
        key: PoolKey,
        settings: PoolSettings,
        credential: ServerCredential,
        topology: Arc<Topology>,
    ) -> Arc<Self> {
        Arc::new(Pool {
            key: Arc::new(key),
            sem: Arc::new(Semaphore::new(settings.size)),
            size: AtomicUsize::new(settings.size),
            lifetime_ms: AtomicU64::new(settings.lifetime.as_millis() as u64),
            idle: Mutex::new(Vec::new()),
            settings: Mutex::new(settings),
            credential: Mutex::new(credential),
            server_params: Mutex::new(None),
            topology,
            active: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            wait_us: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            fixed: None,
            replicas: Mutex::new(HashMap::new()),
        })
    }

    /// The standby pools made so far.
    pub fn replicas(&self) -> Vec<Arc<Pool>> {
        let r = self.replicas.lock().unwrap_or_else(|e| e.into_inner());
        r.values().cloned().collect()
    }

    /// The pool of the same (database, user) on the standby at `addr`.
    pub fn replica(self: &Arc<Self>, addr: &str) -> Arc<Pool> {
        let mut r = self.replicas.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = r.get(addr) {
            return p.clone();
        }
        let s = self.settings();
        let p = Arc::new(Pool {
            key: self.key.clone(),
            sem: Arc::new(Semaphore::new(s.size)),
            size: AtomicUsize::new(s.size),
            lifetime_ms: AtomicU64::new(s.lifetime.as_millis() as u64),
            idle: Mutex::new(Vec::new()),
            settings: Mutex::new(s),
            credential: Mutex::new(self.credential()),
            server_params: Mutex::new(None),
            topology: self.topology.clone(),
            active: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            wait_us: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            fixed: Some(addr.into()),
            replicas: Mutex::new(HashMap::new()),
        });
        r.insert(addr.into(), p.clone());
        p
    }

    /// The standby address this pool serves, if it is a standby's.
    pub fn fixed(&self) -> Option<&str> {
        self.fixed.as_deref()
    }

    fn replica_pools(&self) -> Vec<Arc<Pool>> {
        self.replicas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn settings(&self) -> PoolSettings {
        self.settings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn mode(&self) -> config::PoolMode {
        self.settings.lock().unwrap_or_else(|e| e.into_inner()).mode
    }

    pub fn idle_count(&self) -> usize {
        self.idle.lock().map(|v| v.len()).unwrap_or(0)
    }

    /// Applies new settings (config reload); the size changes at once.
    pub fn update_settings(&self, s: PoolSettings) {
        for r in self.replica_pools() {
            r.update_settings(s.clone());
        }
        let old = self.size.swap(s.size, Ordering::AcqRel);
        if s.size > old {
            self.sem.add_permits(s.size - old);
        } else if s.size < old {
            // Take the surplus permits as they come back.
            let sem = self.sem.clone();
            let n = (old - s.size) as u32;
            tokio::spawn(async move {
                if let Ok(p) = sem.acquire_many(n).await {
                    p.forget();
                }
            });
        }
        self.lifetime_ms
            .store(s.lifetime.as_millis() as u64, Ordering::Relaxed);
        *self.settings.lock().unwrap_or_else(|e| e.into_inner()) = s;
    }

    pub fn set_credential(&self, c: ServerCredential) {
        for r in self.replica_pools() {
            r.set_credential(c.clone());
        }
        *self.credential.lock().unwrap_or_else(|e| e.into_inner()) = c;
    }

    pub fn credential(&self) -> ServerCredential {
        self.credential
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn server_params(&self) -> Option<ServerParams> {
        self.server_params
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The epoch a usable idle connection of this pool carries: the
    /// primary's current one; 0 in a standby's pool (its connections do
    /// not depend on who is primary).
    fn epoch(&self) -> u64 {
        match self.fixed {
            Some(_) => 0,
            None => self.topology.current_epoch(),
        }
    }

    /// Takes a connection to the current primary, waiting up to `wait` for
    /// one to become free.
    pub async fn checkout(self: &Arc<Self>, wait: Duration) -> Result<Checkout, CheckoutError> {
        // A switchover's drain: no transaction starts on a primary about
        // to shut down; it waits (in this bounded queue) for the next one.
        if self.fixed.is_none()
            && self.topology.held()
            && !Box::pin(self.topology.until_released(wait)).await
        {
            return Err(CheckoutError::Timeout(wait));
        }
        let permit = match self.sem.try_acquire() {
            Ok(p) => p,
            Err(_) => {
                self.waiting.fetch_add(1, Ordering::Relaxed);
                let start = Instant::now();
                // Boxed: the timer would otherwise sit in every session's task.
                let r = Box::pin(tokio::time::timeout(wait, self.sem.acquire())).await;
                self.wait_us
                    .fetch_add(start.elapsed().as_micros() as u64, Ordering::Relaxed);
                self.waiting.fetch_sub(1, Ordering::Relaxed);
                match r {
                    Ok(Ok(p)) => p,
                    _ => return Err(CheckoutError::Timeout(wait)),
                }
            }
        };
        // Every change of primary (to none as well) bumps the epoch: an idle
        // connection of the current epoch is one to the current primary.
        let epoch = self.epoch();
        let now = crate::clock::now_ms();
        loop {
            let conn = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            match conn {
                // A connection idle for a while may have been closed by the
                // server (restart, pg_terminate_backend, idle_session_timeout):
                // nothing was sent on it yet, so take another. A standby's
                // are always checked (one read syscall): a standby may be
                // killed at any time without a change of primary.
                Some(c)
                    if (self.fixed.is_some()
                        || now.saturating_sub(c.last_used_ms) >= IDLE_CHECK_MS)
                        && c.closed_while_idle() =>
                {
                    tracing::info!(server = %c.addr, pid = c.pid, "server closed an idle connection");
                    self.open.fetch_sub(1, Ordering::Relaxed);
                }
                // Lifetimes are enforced when connections come back and by maintain().
                Some(c) if c.epoch == epoch => {
                    self.active.fetch_add(1, Ordering::Relaxed);
                    permit.forget();
                    return Ok(Checkout {
                        conn: Some(c),
                        pool: self.clone(),
                    });
                }
                Some(c) => {
                    self.open.fetch_sub(1, Ordering::Relaxed);
                    tokio::spawn((*c).terminate());
                }
                None => break,
            }
        }
        let conn = match &self.fixed {
            Some(addr) => Box::new(Box::pin(self.connect(addr, 0)).await?),
            None => {
                let target = match self.topology.primary() {
                    Some(t) => t,
                    // During a failover: wait for the new primary rather than fail.
                    None => Box::pin(self.wait_for_primary(wait)).await?,
                };
                // Boxed: a rare path whose state would otherwise sit in every session.
                Box::pin(self.connect_primary(&target, wait)).await?
            }
        };
        self.active.fetch_add(1, Ordering::Relaxed);
        permit.forget();
        Ok(Checkout {
            conn: Some(conn),
            pool: self.clone(),
        })
    }

    /// A new connection to `target`. Following the DCS, the lease holder
    /// may still be finishing its promotion (a few ms to a second): while
    /// the server reports `in_hot_standby = on` the connection is closed
    /// and made again, up to `wait`, so that no write meets a read-only
    /// server.
    async fn connect_primary(
        &self,
        target: &crate::topology::Target,
        wait: Duration,
    ) -> Result<Box<ServerConn>, ServerError> {
        let deadline = Instant::now() + wait;
        loop {
            let c = Box::new(self.connect(&target.addr, target.epoch).await?);
            let standby = c
                .reported
                .iter()
                .any(|(n, v)| n == "in_hot_standby" && v == "on");
            if !standby || !self.topology.follows_external() || Instant::now() >= deadline {
                return Ok(c);
            }
            self.open.fetch_sub(1, Ordering::Relaxed);
            tokio::spawn((*c).terminate());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_for_primary(
        &self,
        wait: Duration,
    ) -> Result<Arc<crate::topology::Target>, CheckoutError> {
        let mut rx = self.topology.subscribe();
        let r = tokio::time::timeout(wait, async {
            loop {
                if let Some(t) = rx.borrow_and_update().clone() {
                    return Some(t);
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await;
        r.ok().flatten().ok_or(CheckoutError::NoPrimary)
    }

    async fn connect(&self, addr: &str, epoch: u64) -> Result<ServerConn, ServerError> {
        let s = self.settings();
        let cred = self.credential();
        self.open.fetch_add(1, Ordering::Relaxed);
        let r = ServerConn::connect(ConnectOptions {
            addr,
            user: &self.key.user,
            database: &self.key.database,
            credential: &cred,
            tls: s.tls,
            timeout: s.connect_timeout,
            epoch,
            extra_params: &[],
        })
        .await;
        match r {
            Ok(mut c) => {
                c.cells = self.topology.cells(addr);
                let mut sp = self.server_params.lock().unwrap_or_else(|e| e.into_inner());
                if sp.is_none() {
                    *sp = Some(Arc::new(Reported::new(c.reported.clone())));
                }
                Ok(c)
            }
            Err(e) => {
                self.open.fetch_sub(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    fn checkin(&self, mut c: Box<ServerConn>) {
        let now = crate::clock::now_ms();
        if c.broken
            || c.session.unknowable
            || c.epoch != self.epoch()
            || c.session.prepared.len() > crate::relay::MAX_SERVER_PREPARED
            || now.saturating_sub(c.created_ms) >= self.lifetime_ms.load(Ordering::Relaxed)
        {
            self.open.fetch_sub(1, Ordering::Relaxed);
            if let Ok(h) = tokio::runtime::Handle::try_current() {
                h.spawn((*c).terminate());
            }
            return;
        }
        c.last_used_ms = now;
        // Whatever a session left behind is not the next one's; a buffer
        // grown by a big result is not kept.
        for b in [&mut c.sout, &mut c.cout] {
            if b.capacity() > 64 * 1024 {
                *b = BytesMut::new();
            }
            b.clear();
        }
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).push(c);
    }

    /// Closes idle connections past the idle timeout (keeping `min_idle`)
    /// or past their lifetime, and opens connections up to `min_idle`.
    pub async fn maintain(self: &Arc<Self>) {
        for r in self.replica_pools() {
            Box::pin(r.maintain()).await;
        }
        let s = self.settings();
        let epoch = self.epoch();
        let now = crate::clock::tick();
        let expired: Vec<Box<ServerConn>> = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let mut keep = Vec::with_capacity(idle.len());
            let mut gone = Vec::new();
            // newest last: drop the oldest-used first
            idle.sort_by_key(|c| c.last_used_ms);
            let n = idle.len();
            for (i, c) in idle.drain(..).enumerate() {
                let surplus = n - i > s.min_idle;
                let age = |since: u64| Duration::from_millis(now.saturating_sub(since));
                if c.epoch != epoch
                    || age(c.created_ms) >= s.lifetime
                    || (surplus && age(c.last_used_ms) >= s.idle_timeout)
                {
                    gone.push(c);
                } else {
                    keep.push(c);
                }
            }
            *idle = keep;
            gone
        };
        for c in expired {
            self.open.fetch_sub(1, Ordering::Relaxed);
            (*c).terminate().await;
        }
        let Some(target) = self.topology.primary().filter(|_| self.fixed.is_none()) else {
            return;
        };
        while self.idle_count() < s.min_idle && self.open.load(Ordering::Relaxed) < s.size {
            let Ok(permit) = self.sem.clone().try_acquire_owned() else {
                break;
            };
            match self.connect(&target.addr, target.epoch).await {
                Ok(c) => {
                    drop(permit);
                    self.checkin(Box::new(c));
                }
                Err(e) => {
                    tracing::warn!(pool = ?self.key, error = %e, "cannot open min_pool_size connection");
                    break;
                }
            }
        }
    }

    /// Closes every idle connection (e.g. after a failover).
    pub fn close_idle(&self) {
        let all: Vec<Box<ServerConn>> =
            std::mem::take(&mut *self.idle.lock().unwrap_or_else(|e| e.into_inner()));
        for c in all {
            self.open.fetch_sub(1, Ordering::Relaxed);
            if let Ok(h) = tokio::runtime::Handle::try_current() {
                h.spawn((*c).terminate());
            }
        }
    }

    /// Idle connections' (id, addr, age, pid) for SHOW SERVERS.
    /// Idle connections: id, address, age, pid, and how long idle.
    pub fn idle_servers(&self) -> Vec<(u64, String, Duration, i32, Duration)> {
        let now = crate::clock::now_ms();
        self.idle
            .lock()
            .map(|v| {
                v.iter()
                    .map(|c| {
                        let idle = Duration::from_millis(now.saturating_sub(c.last_used_ms));
                        (c.id, c.addr.to_string(), c.created.elapsed(), c.pid, idle)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// All pools, created on first use.
#[derive(Default)]
pub struct Pools {
    map: Mutex<HashMap<PoolKey, Arc<Pool>>>,
}

impl Pools {
    pub fn get_or_create(&self, key: &PoolKey, make: impl FnOnce() -> Arc<Pool>) -> Arc<Pool> {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = m.get(key) {
            return p.clone();
        }
        m.entry(key.clone()).or_insert_with(make).clone()
    }

    /// Removes `pool` if it never had a working connection and nobody
    /// else holds it: a login to a database that does not exist (or a user
    /// the server refuses) leaves nothing behind.
    pub fn forget_unused(&self, pool: &Arc<Pool>) {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let unused = pool.server_params().is_none()
            && pool.open.load(Ordering::Relaxed) == 0
            && pool.active.load(Ordering::Relaxed) == 0
            // the map's reference and the caller's
            && Arc::strong_count(pool) <= 2;
        if unused && m.get(&*pool.key).is_some_and(|p| Arc::ptr_eq(p, pool)) {
            m.remove(&*pool.key);
        }
    }

    pub fn all(&self) -> Vec<Arc<Pool>> {
        let mut v: Vec<_> = self
            .map
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(pairs: &[(String, String)], startup: &[(String, String)]) -> bytes::BytesMut {
        let mut out = bytes::BytesMut::new();
        for (name, value) in pairs {
            let own = startup
                .iter()
                .rev()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v);
            parameter_status(&mut out, name, own.unwrap_or(value));
        }
        out
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    /// The pre-encoded messages, with the client's own values put in,
    /// are the messages encoded one by one.
    #[test]
    fn reported_parameters_carry_the_clients_own_values() {
        let server = pairs(&[
            ("application_name", ""),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO, MDY"),
            ("TimeZone", "UTC"),
        ]);
        let r = Reported::new(server.clone());
        for startup in [
            pairs(&[]),
            pairs(&[("user", "u"), ("database", "d")]),
            pairs(&[("application_name", "pgbench")]),
            pairs(&[("TimeZone", "Europe/Paris"), ("application_name", "a")]),
            pairs(&[("datestyle", "German"), ("DateStyle", "SQL"), ("user", "u")]),
            pairs(&[
                ("timezone", "x"),
                ("client_encoding", "LATIN1"),
                ("application_name", "z"),
                ("DATESTYLE", "y"),
            ]),
        ] {
            let mut out = bytes::BytesMut::new();
            r.encode_for(&startup, &mut out);
            assert_eq!(out, naive(&server, &startup), "startup {startup:?}");
        }
        // the last of two values counts, as on the server
        let mut out = bytes::BytesMut::new();
        r.encode_for(&pairs(&[("TimeZone", "A"), ("timezone", "B")]), &mut out);
        let mut want = bytes::BytesMut::new();
        for (n, v) in &server {
            parameter_status(&mut want, n, if n == "TimeZone" { "B" } else { v });
        }
        assert_eq!(out, want);
        // names whose lengths agree modulo 64, and a name reported twice
        let long = "x".repeat(65);
        let server = pairs(&[("a", "1"), (&long, "2"), ("b", "3"), ("a", "4")]);
        let r = Reported::new(server.clone());
        for startup in [
            pairs(&[("A", "own")]),
            pairs(&[(&long, "own")]),
            pairs(&[("c", "none"), (&"y".repeat(65), "none")]),
        ] {
            let mut out = bytes::BytesMut::new();
            r.encode_for(&startup, &mut out);
            assert_eq!(out, naive(&server, &startup), "startup {startup:?}");
        }
        let mut out = bytes::BytesMut::new();
        Reported::new(Vec::new()).encode_for(&pairs(&[("a", "b")]), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn a_startup_encoding_is_reported_by_its_postgresql_name() {
        let r = Reported::new(pairs(&[("client_encoding", "UTF8")]));
        let mut out = bytes::BytesMut::new();
        r.encode_for(&pairs(&[("client_encoding", "utf-8")]), &mut out);
        let mut want = bytes::BytesMut::new();
        parameter_status(&mut want, "client_encoding", "UTF8");
        assert_eq!(out, want);
    }
}
