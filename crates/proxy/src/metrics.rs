//! Prometheus metrics (`GET /metrics` on `metrics_listen`): clients,
//! server connections and waits per pool, transactions, logins, backends
//! and the reads each serves, and read balancing's routing and
//! classifier cache. [`render`] reads the proxy's state and writes the
//! text exposition format; [`serve`] is the HTTP side (axum).
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::pool::Pool;
use crate::state::{ClientState, State};
use crate::topology::{NodeStatus, Role};

/// Serves `GET /metrics` until the proxy shuts down.
pub async fn serve(state: Arc<State>, listener: TcpListener) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get({
            let state = state.clone();
            move || {
                let state = state.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        render(&state),
                    )
                }
            }
        }),
    );
    let mut shutdown = state.shutdown_signal();
    let stop = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::warn!(error = %e, "metrics server stopped");
    }
}

/// One metric family: its HELP and TYPE lines, then its samples.
struct Family<'a> {
    out: &'a mut String,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &str, kind: &str, help: &str) -> Self {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        Family { out }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// A label value as the exposition format writes it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A family with a sample (or several, told apart by one more label) per
/// pool, labelled with its database, user and node.
type PoolSamples = Vec<(Option<(&'static str, &'static str)>, f64)>;

fn per_pool(
    o: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    pools: &[(Arc<Pool>, String)],
    samples: impl Fn(&Pool) -> PoolSamples,
) {
    let mut f = Family::new(o, name, kind, help);
    for (p, node) in pools {
        for (extra, v) in samples(p) {
            let mut labels = vec![
                ("database", &*p.key.database),
                ("user", &*p.key.user),
                ("node", node.as_str()),
            ];
            labels.extend(extra);
            f.sample(name, &labels, v);
        }
    }
}

/// The proxy's metrics now, in Prometheus' text format.
pub fn render(state: &State) -> String {
    let mut out = String::with_capacity(4096);
    let o = &mut out;

    let (mut active, mut waiting, mut idle) = (0u64, 0u64, 0u64);
    for c in state.clients() {
        match c.state() {
            ClientState::Active => active += 1,
            ClientState::Waiting => waiting += 1,
            ClientState::Idle => idle += 1,
        }
    }
    let name = "pgwarden_proxy_clients";
    let mut f = Family::new(
        o,
        name,
        "gauge",
        "Client connections by state (waiting: for a server connection).",
    );
    for (s, n) in [("active", active), ("waiting", waiting), ("idle", idle)] {
        f.sample(name, &[("state", s)], n);
    }

    // per pool: the primary's and each standby's
    let pools: Vec<_> = state
        .pools
        .all()
        .into_iter()
        .flat_map(|p| std::iter::once(p.clone()).chain(p.replicas()))
        .collect();
    let primary = state
        .topology
        .primary()
        .map(|t| t.addr.to_string())
        .unwrap_or_default();
    let pools: Vec<(Arc<Pool>, String)> = pools
        .into_iter()
        .map(|p| {
            let node = p.fixed().map_or_else(|| primary.clone(), str::to_owned);
            (p, node)
        })
        .collect();
    per_pool(
        o,
        "pgwarden_proxy_server_connections",
        "gauge",
        "Server connections per pool (database, user, node) by state.",
        &pools,
        |p| {
            vec![
                (
                    Some(("state", "active")),
                    p.active.load(Ordering::Relaxed) as f64,
                ),
                (Some(("state", "idle")), p.idle_count() as f64),
            ]
        },
    );
    per_pool(
        o,
        "pgwarden_proxy_waiting_clients",
        "gauge",
        "Clients waiting for a server connection of a pool.",
        &pools,
        |p| vec![(None, p.waiting.load(Ordering::Relaxed) as f64)],
    );
    per_pool(
        o,
        "pgwarden_proxy_wait_seconds_total",
        "counter",
        "Time clients spent waiting for a server connection of a pool.",
        &pools,
        |p| vec![(None, p.wait_us.load(Ordering::Relaxed) as f64 / 1e6)],
    );

    for (name, help, v) in [
        (
            "pgwarden_proxy_transactions_total",
            "Transactions (transaction pool mode) that ended.",
            &state.stats.xacts,
        ),
        (
            "pgwarden_proxy_logins_total",
            "Client logins accepted.",
            &state.stats.logins,
        ),
        (
            "pgwarden_proxy_login_failures_total",
            "Client logins refused.",
            &state.stats.login_failures,
        ),
        (
            "pgwarden_proxy_server_errors_total",
            "Server connections that failed or were lost.",
            &state.stats.server_errors,
        ),
    ] {
        Family::new(o, name, "counter", help).sample(name, &[], v.load(Ordering::Relaxed));
    }

    let nodes = state.topology.nodes();
    let name = "pgwarden_proxy_backend_up";
    let mut f = Family::new(
        o,
        name,
        "gauge",
        "1 when the health checks see the backend up.",
    );
    for n in &nodes {
        let role = match (n.status, n.role) {
            (NodeStatus::Up, Role::Primary) => "primary",
            (NodeStatus::Up, Role::Standby) => "standby",
            _ => "unknown",
        };
        let addr = n.addr();
        f.sample(
            name,
            &[("node", &addr), ("name", &n.name), ("role", role)],
            u8::from(n.status == NodeStatus::Up),
        );
    }
    let name = "pgwarden_proxy_reads_total";
    let mut f = Family::new(
        o,
        name,
        "counter",
        "Read-only transactions each backend served (read balancing).",
    );
    for n in &nodes {
        f.sample(name, &[("node", &n.addr())], n.select_cnt);
    }
    let name = "pgwarden_proxy_backend_transactions_total";
    let mut f = Family::new(
        o,
        name,
        "counter",
        "Transactions each backend served through the proxy (transaction mode).",
    );
    for n in &nodes {
        f.sample(
            name,
            &[("node", &n.addr())],
            n.cells.xacts.load(Ordering::Relaxed),
        );
    }
    let name = "pgwarden_proxy_errors_total";
    let mut f = Family::new(
        o,
        name,
        "counter",
        "Errors the servers sent clients through the proxy, by SQLSTATE class.",
    );
    let classes = state
        .stats
        .error_classes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    for (class, n) in classes {
        f.sample(name, &[("class", &String::from_utf8_lossy(&class))], n);
    }
    let name = "pgwarden_proxy_replication_delay_bytes";
    let mut f = Family::new(
        o,
        name,
        "gauge",
        "WAL a standby received but has not replayed, by the health checks.",
    );
    for n in nodes.iter().filter(|n| n.role == Role::Standby) {
        f.sample(name, &[("node", &n.addr())], n.replication_delay);
    }

    let r = &state.router.stats;
    let name = "pgwarden_proxy_routed_transactions_total";
    let mut f = Family::new(
        o,
        name,
        "counter",
        "Transactions read balancing sent to a standby or to the primary.",
    );
    f.sample(
        name,
        &[("to", "standby")],
        r.to_standby.load(Ordering::Relaxed),
    );
    f.sample(
        name,
        &[("to", "primary")],
        r.to_primary.load(Ordering::Relaxed),
    );
    let name = "pgwarden_proxy_read_your_writes_fallbacks_total";
    Family::new(
        o,
        name,
        "counter",
        "Reads after a write that found no standby caught up in time and went to the primary.",
    )
    .sample(name, &[], r.ryw_fallbacks.load(Ordering::Relaxed));
    let name = "pgwarden_proxy_standby_read_retries_total";
    Family::new(
        o,
        name,
        "counter",
        "Reads whose standby connection was lost before it answered, run again on the primary.",
    )
    .sample(name, &[], r.standby_retries.load(Ordering::Relaxed));
    let cache = state.router.cache_stats();
    let name = "pgwarden_proxy_classifier_cache_lookups_total";
    let mut f = Family::new(
        o,
        name,
        "counter",
        "Statement classifications by cache outcome.",
    );
    f.sample(name, &[("result", "hit")], cache.hits);
    f.sample(name, &[("result", "miss")], cache.misses);
    out
}
