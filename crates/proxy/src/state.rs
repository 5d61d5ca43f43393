//! State shared by every task of one proxy: configuration, pools,
//! topology, connected clients, lifecycle flags. Passed around as
//! `Arc<State>`; there are no globals.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime};

use tokio::sync::watch;

use crate::pool::{Pool, PoolKey, PoolSettings, Pools};
use crate::relay::Registry;
use crate::server::ServerCredential;
use crate::topology::Topology;

/// What a client is doing, for SHOW CLIENTS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ClientState {
    Idle = 0,
    Waiting = 1,
    Active = 2,
}

/// The server connection a client holds: where to send its cancel
/// requests, and what SHOW SERVERS lists. Made once per server connection
/// and shared with each client that holds it.
#[derive(Debug)]
pub struct ServerRef {
    pub addr: Arc<str>,
    pub pid: i32,
    pub secret: i32,
    pub id: u64,
}

/// Events for one client session, delivered without locks: the proxy sets
/// bits and wakes the session's task; the session polls this in the same
/// `select!` as its sockets.
#[derive(Default)]
pub struct Control {
    flags: AtomicU8,
    waker: futures_util::task::AtomicWaker,
}

impl Control {
    pub const PRIMARY_CHANGED: u8 = 1;
    pub const SHUTDOWN: u8 = 2;
    /// The shutdown deadline passed: end now, even inside a transaction.
    pub const TERMINATE: u8 = 4;
    /// Idle (holding no server) longer than `client_idle_timeout`.
    pub const IDLE_TIMEOUT: u8 = 8;

    pub fn signal(&self, bits: u8) {
        self.flags.fetch_or(bits, Ordering::AcqRel);
        self.waker.wake();
    }

    /// Ready with the pending bits (which stay set until cleared).
    pub fn poll(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<u8> {
        let f = self.flags.load(Ordering::Acquire);
        if f != 0 {
            return std::task::Poll::Ready(f);
        }
        self.waker.register(cx.waker());
        match self.flags.load(Ordering::Acquire) {
            0 => std::task::Poll::Pending,
            f => std::task::Poll::Ready(f),
        }
    }

    pub fn clear(&self, bits: u8) {
        self.flags.fetch_and(!bits, Ordering::AcqRel);
    }
}

/// A connected client as other tasks see it (admin console, cancel).
pub struct ClientInfo {
    /// Numbered from 1 at each start of the proxy (wraps after 2^32).
    pub id: u32,
    pub key: (i32, i32),
    /// The client's address (kept as its parts: 12 bytes less than a
    /// SocketAddr in every client).
    ip: std::net::IpAddr,
    port: u16,
    /// Database and user, shared with the pool.
    pub names: Arc<PoolKey>,
    pub tls: bool,
    /// Seconds since the Unix epoch (4 bytes, not a SystemTime's 16).
    connected_unix: u32,
    /// The state (low 2 bits) and when it last changed (the rest: the
    /// coarse clock in tenths of a second), in one word so ClientInfo stays
    /// within 96 bytes.
    state: AtomicU32,
    /// The server connection the client holds, if any.
    pub server: Mutex<Option<Arc<ServerRef>>>,
    pub control: Control,
}

impl ClientInfo {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }
    pub fn connected_at(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(self.connected_unix.into())
    }
    pub fn user(&self) -> &str {
        &self.names.user
    }
    pub fn database(&self) -> &str {
        &self.names.database
    }
    pub fn set_state(&self, s: ClientState) {
        self.state
            .store(tenths_now() << 2 | s as u32, Ordering::Relaxed);
    }
    /// How long the client has been in its state (by the coarse clock).
    pub fn state_age(&self) -> std::time::Duration {
        let since = self.state.load(Ordering::Relaxed) >> 2;
        let tenths = tenths_now().wrapping_sub(since) & (u32::MAX >> 2);
        std::time::Duration::from_millis(u64::from(tenths) * 100)
    }
    pub fn state(&self) -> ClientState {
        match self.state.load(Ordering::Relaxed) & 3 {
            1 => ClientState::Waiting,
            2 => ClientState::Active,
            _ => ClientState::Idle,
        }
    }
}

/// The coarse clock in tenths of a second (kept to 30 bits: wraps after
/// 3 years, and ages are taken modulo that).
fn tenths_now() -> u32 {
    (crate::clock::now_ms() / 100) as u32 & (u32::MAX >> 2)
}

#[derive(Default)]
pub struct Stats {
    pub xacts: AtomicU64,
    pub logins: AtomicU64,
    pub login_failures: AtomicU64,
    pub server_errors: AtomicU64,
    /// ErrorResponses the servers sent clients, by SQLSTATE class.
    pub error_classes: Mutex<std::collections::BTreeMap<[u8; 2], u64>>,
}

impl Stats {
    pub fn count_error(&self, class: [u8; 2]) {
        *self
            .error_classes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(class)
            .or_default() += 1;
    }
}

/// Hashes the pid half of a cancel key with a multiplication and a
/// rotation (as rustc-hash does). The proxy picks these numbers, so the map
/// needs no defence against chosen keys, and SipHash would cost more than
/// the rest of a login's map operations.
pub type PidHash = std::hash::BuildHasherDefault<PidHasher>;

#[derive(Default)]
pub struct PidHasher(u64);

impl std::hash::Hasher for PidHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_i32(&mut self, i: i32) {
        self.write_u64(u64::from(i as u32));
    }

    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0 ^ i).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        // The map takes the bucket from the low bits, which a product
        // draws from the low bits of the key alone: bring middle bits,
        // mixed from all of them, down there.
        self.0.rotate_left(26)
    }
}

pub struct State {
    config: RwLock<Arc<config::Config>>,
    pub config_path: Option<PathBuf>,
    pub pools: Pools,
    pub topology: Arc<Topology>,
    pub registry: Registry,
    /// Read/write splitting: the classifier, its cache, standby choice.
    pub router: crate::route::Router,
    pub verifiers: crate::auth::Verifiers,
    /// The other proxies, as the watchdog last saw them.
    pub peers: crate::peers::Peers,
    pub clients: Mutex<HashMap<i32, Arc<ClientInfo>, PidHash>>,
    pub tls: RwLock<Option<Arc<rustls::ServerConfig>>>,
    shutdown: watch::Sender<bool>,
    /// Mirrors `shutdown` for the data path's lock-free check.
    shutdown_flag: std::sync::atomic::AtomicBool,
    paused: watch::Sender<bool>,
    /// Mirrors `paused` for the data path's lock-free check.
    paused_flag: std::sync::atomic::AtomicBool,
    /// `query_wait_timeout` in ms, read per checkout without a lock.
    query_wait_ms: AtomicU64,
    pub client_count: AtomicUsize,
    pub stats: Stats,
    pub started: Instant,
    next_client: AtomicU64,
}

impl State {
    pub fn new(cfg: config::Config, config_path: Option<PathBuf>) -> Result<Arc<Self>, String> {
        let tls = load_tls(&cfg)?;
        Ok(Arc::new(State {
            query_wait_ms: AtomicU64::new(cfg.proxy.query_wait_timeout.as_millis() as u64),
            topology: Topology::new(&cfg.backends),
            config: RwLock::new(Arc::new(cfg)),
            config_path,
            pools: Pools::default(),
            registry: Registry::default(),
            router: crate::route::Router::default(),
            verifiers: Default::default(),
            peers: Default::default(),
            clients: Mutex::new(HashMap::default()),
            tls: RwLock::new(tls),
            shutdown: watch::channel(false).0,
            shutdown_flag: false.into(),
            paused: watch::channel(false).0,
            paused_flag: false.into(),
            client_count: AtomicUsize::new(0),
            stats: Stats::default(),
            started: Instant::now(),
            next_client: AtomicU64::new(1),
        }))
    }

    pub fn config(&self) -> Arc<config::Config> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn tls(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.tls.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// PAUSE / RESUME: new transactions wait while paused.
    pub fn set_paused(&self, paused: bool) {
        self.paused_flag.store(paused, Ordering::SeqCst);
        self.paused.send_replace(paused);
    }

    /// How long a client may wait for a server connection.
    pub fn query_wait(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.query_wait_ms.load(Ordering::Relaxed))
    }

    pub fn is_paused(&self) -> bool {
        self.paused_flag.load(Ordering::SeqCst)
    }

    /// Resolves once the proxy is not paused.
    pub async fn wait_resumed(&self) {
        let mut rx = self.paused.subscribe();
        let _ = rx.wait_for(|p| !p).await;
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutdown_flag.load(Ordering::Acquire)
    }

    /// SIGTERM: stop accepting, let transactions finish, then close.
    pub fn begin_shutdown(&self) {
        self.shutdown_flag.store(true, Ordering::Release);
        self.shutdown.send_replace(true);
    }

    /// Changes to [`State::is_shutting_down`], for tasks that wait on it.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    fn pool_settings(cfg: &config::Config, user: &str) -> PoolSettings {
        let u = cfg.user(user);
        let p = &cfg.proxy;
        PoolSettings {
            size: u
                .and_then(|u| u.pool_size)
                .unwrap_or(p.default_pool_size)
                .max(1),
            min_idle: p.min_pool_size,
            mode: u.and_then(|u| u.pool_mode).unwrap_or(p.pool_mode),
            idle_timeout: p.server_idle_timeout,
            lifetime: p.server_lifetime,
            connect_timeout: p.server_connect_timeout,
            tls: p.server_tls,
        }
    }

    pub fn pool(&self, key: &PoolKey, cred: ServerCredential) -> Arc<Pool> {
        let cfg = self.config();
        let pool = self.pools.get_or_create(key, || {
            Pool::new(
                key.clone(),
                Self::pool_settings(&cfg, &key.user),
                cred.clone(),
                self.topology.clone(),
            )
        });
        // The newest credential from a successful login is the best one.
        if !matches!(cred, ServerCredential::None) {
            pool.set_credential(cred);
        }
        pool
    }

    pub fn register_client(
        &self,
        addr: SocketAddr,
        names: Arc<PoolKey>,
        tls: bool,
        server_pid: Option<i32>,
    ) -> Arc<ClientInfo> {
        let id = self.next_client.fetch_add(1, Ordering::Relaxed);
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        // The cancel key's pid half is unique among connected clients. A
        // client that keeps one server connection for its session (session
        // mode) is given that server's pid where no other client has it:
        // `pg_backend_pid()`, `pg_terminate_backend()` and notifications
        // name the process the client sees.
        let mut pid = server_pid
            .filter(|p| *p > 0 && !clients.contains_key(p))
            .unwrap_or((id as i32) & i32::MAX);
        while pid == 0 || clients.contains_key(&pid) {
            pid = rand::random::<i32>() & i32::MAX;
        }
        let info = Arc::new(ClientInfo {
            id: id as u32,
            key: (pid, rand::random()),
            ip: addr.ip(),
            port: addr.port(),
            names,
            tls,
            connected_unix: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as u32),
            state: AtomicU32::new(tenths_now() << 2),
            server: Mutex::new(None),
            control: Control::default(),
        });
        if self.is_shutting_down() {
            info.control.signal(Control::SHUTDOWN);
        }
        clients.insert(pid, info.clone());
        info
    }

    pub fn unregister_client(&self, info: &ClientInfo) {
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&info.key.0);
    }

    /// Tells every session about a change of primary or a shutdown.
    pub fn signal_all(&self, bits: u8) {
        for c in self
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            c.control.signal(bits);
        }
    }

    pub fn clients(&self) -> Vec<Arc<ClientInfo>> {
        let mut v: Vec<_> = self
            .clients
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        v.sort_by_key(|c| c.id);
        v
    }

    /// Re-reads the configuration file and applies it without dropping
    /// clients. On error nothing changes.
    pub fn reload(&self) -> Result<(), String> {
        let Some(path) = &self.config_path else {
            return Err("the proxy was not started from a config file".into());
        };
        let new = config::load(path).map_err(|e| e.to_string())?;
        self.apply(new)
    }

    pub fn apply(&self, new: config::Config) -> Result<(), String> {
        let tls = load_tls(&new)?;
        let old = self.config();
        if new.proxy.listen != old.proxy.listen {
            tracing::warn!(old = %old.proxy.listen, new = %new.proxy.listen, "listen address changes need a restart");
        }
        if new.backends != old.backends {
            self.topology.set_backends(&new.backends);
        }
        for pool in self.pools.all() {
            pool.update_settings(Self::pool_settings(&new, &pool.key.user));
            if let Some(sec) = new.user(&pool.key.user).and_then(|u| u.secret.as_deref()) {
                let c = crate::auth::Secret::parse(sec).server_credential();
                if !matches!(c, ServerCredential::None) {
                    pool.set_credential(c);
                }
            }
        }
        *self.tls.write().unwrap_or_else(|e| e.into_inner()) = tls;
        self.query_wait_ms.store(
            new.proxy.query_wait_timeout.as_millis() as u64,
            Ordering::Relaxed,
        );
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
        tracing::info!("configuration reloaded");
        Ok(())
    }
}

fn load_tls(cfg: &config::Config) -> Result<Option<Arc<rustls::ServerConfig>>, String> {
    match (&cfg.proxy.tls_cert_file, &cfg.proxy.tls_key_file) {
        (Some(c), Some(k)) => tls::server_config(c, k).map(Some),
        _ => Ok(None),
    }
}
