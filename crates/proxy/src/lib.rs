//! pgwarden's PostgreSQL wire-protocol proxy: clients connect here instead
//! of to PostgreSQL; the proxy authenticates them, pools server
//! connections per (database, user), sends work to the current primary and
//! follows it when it changes.
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
mod bufpool;
mod client;
pub mod clock;
mod encoding;
pub mod follow;
pub mod health;
mod io;
pub mod metrics;
pub mod params;
pub mod peers;
pub mod pick;
pub mod pool;
pub mod relay;
pub mod route;
pub mod server;
pub mod state;
pub mod stream;

pub mod topology;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

pub use state::State;

/// A running proxy.
pub struct Proxy {
    pub state: Arc<State>,
    listener: TcpListener,
    metrics: Option<TcpListener>,
}

impl Proxy {
    /// Binds the listen address and prepares the shared state.
    pub async fn bind(cfg: config::Config, config_path: Option<PathBuf>) -> Result<Proxy, String> {
        let addr = cfg.proxy.listen;
        let state = State::new(cfg, config_path)?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let metrics = match state.config().proxy.metrics_listen {
            Some(m) => Some(
                TcpListener::bind(m)
                    .await
                    .map_err(|e| format!("cannot listen on {m} (metrics_listen): {e}"))?,
            ),
            None => None,
        };
        Ok(Proxy {
            state,
            listener,
            metrics,
        })
    }

    /// Where `GET /metrics` is served, if it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until [`State::begin_shutdown`] is called, then stops accepting, lets
    /// transactions in flight finish up to `shutdown_timeout`, and returns.
    /// `external_primary`: the primary comes from elsewhere (the DCS), so
    /// health checks only report.
    pub async fn run(self) {
        let Proxy {
            state,
            listener,
            metrics,
        } = self;
        if let Some(m) = metrics {
            tokio::spawn(metrics::serve(state.clone(), m));
        }
        tokio::spawn(health::run(state.clone()));
        if let Some((url, cluster)) = state.config().proxy_dcs.clone() {
            tokio::spawn(follow::run(state.clone(), url, cluster));
        }
        tokio::spawn(maintain(state.clone()));
        // The coarse clock has its own task: pool upkeep may wait on
        // servers, and the clock must also run through a shutdown.
        tokio::spawn(async {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                clock::tick();
            }
        });
        tokio::spawn(dispatch_control(state.clone()));
        let mut shutdown = state.shutdown_signal();
        // Made once: re-made per accepted connection it would register
        // with the channel every time.
        let stop = async move {
            let _ = shutdown.wait_for(|s| *s).await;
        };
        tokio::pin!(stop);
        loop {
            tokio::select! {
                biased;
                _ = &mut stop => break,
                r = listener.accept() => match r {
                    Ok((tcp, peer)) => {
                        tokio::spawn(client::handle(state.clone(), tcp, peer));
                    }
                    Err(e) => {
                        // e.g. out of file descriptors: back off, keep serving
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        drop(listener);
        let deadline = state.config().proxy.shutdown_timeout;
        tracing::info!(
            clients = state.client_count.load(Ordering::Relaxed),
            ?deadline,
            "shutting down: draining clients"
        );
        // Logged-in clients: idle ones and the admin consoles end at once,
        // the others when their transaction (session, in session mode)
        // ends. Connections still logging in do not hold the shutdown up.
        if !drained(&state, deadline).await {
            // Past the deadline: the rest are told why before they go.
            state.signal_all(state::Control::TERMINATE);
            drained(&state, Duration::from_secs(1)).await;
        }
        tracing::info!(
            remaining = state.client_count.load(Ordering::Relaxed),
            "proxy stopped"
        );
    }
}

/// Waits up to `limit` for every logged-in client to be gone; whether they
/// are.
async fn drained(state: &State, limit: Duration) -> bool {
    let logged_in = || {
        !state
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    };
    tokio::time::timeout(limit, async {
        while logged_in() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .is_ok()
}

/// Passes changes of primary and the shutdown on to every session.
async fn dispatch_control(state: Arc<State>) {
    let mut topo = state.topology.subscribe();
    let mut shutdown = state.shutdown_signal();
    loop {
        tokio::select! {
            r = topo.changed() => {
                if r.is_err() { return; }
                state.signal_all(state::Control::PRIMARY_CHANGED);
            }
            r = shutdown.changed() => {
                if r.is_err() { return; }
                if *shutdown.borrow_and_update() {
                    state.signal_all(state::Control::SHUTDOWN);
                }
            }
        }
    }
}

/// Pool upkeep every second: idle timeouts, lifetimes, min_pool_size.
async fn maintain(state: Arc<State>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if state.is_shutting_down() {
            return;
        }
        for pool in state.pools.all() {
            pool.maintain().await;
        }
        end_idle_clients(&state);
    }
}

/// `client_idle_timeout`: clients that hold no server connection and have
/// sent nothing for that long are told to end (a client holding one keeps
/// its own deadline while it does).
fn end_idle_clients(state: &State) {
    let limit = state.config().proxy.client_idle_timeout;
    if limit.is_zero() {
        return;
    }
    let clients = state.clients.lock().unwrap_or_else(|e| e.into_inner());
    for c in clients.values() {
        if c.state() == state::ClientState::Idle && c.state_age() >= limit {
            c.control.signal(state::Control::IDLE_TIMEOUT);
        }
    }
}
