//! Periodic health checks of every backend: one checker task and one
//! persistent connection per backend, `pg_is_in_recovery()`, replay lag
//! and streaming replication, reported to the topology.
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::{AbortHandle, JoinSet};

use crate::server::{ConnectOptions, ServerConn, ServerCredential};
use crate::state::State;
use crate::topology::{Probe, Replication, Sender};

/// What one probe found: the node's answer, or how it failed.
enum Outcome {
    Answered(Probe),
    Failed(Failure),
}

enum Failure {
    /// The connection could not be made or broke.
    Broken(String),
    /// No answer within `health_check_timeout`.
    Silent(String),
}

impl From<Failure> for String {
    fn from(f: Failure) -> String {
        match f {
            Failure::Broken(e) | Failure::Silent(e) => e,
        }
    }
}

/// In recovery?, replay lag in bytes, and a primary's timeline (from the
/// name of the WAL file it writes: it changes with a promotion at once,
/// where the checkpoint's timeline waits for the next checkpoint).
/// A standby also reports its WAL receiver's status and the application
/// name it streams under (what the primary's pg_stat_replication shows).
/// Both views show these only to superusers and members of
/// pg_read_all_stats: for another health-check user the replication
/// columns of SHOW POOL_NODES stay empty.
const QUERY: &str = "SELECT pg_is_in_recovery(), \
    COALESCE(pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), 0)::bigint, \
    CASE WHEN pg_is_in_recovery() THEN 0 \
    ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint END, \
    (SELECT status FROM pg_stat_wal_receiver), \
    (SELECT COALESCE(substring(conninfo from '(?:^| )application_name=([^ ]+)'), \
        substring(conninfo from 'fallback_application_name=([^ ]+)')) FROM pg_stat_wal_receiver)";

/// A primary's WAL senders.
const SENDERS: &str =
    "SELECT application_name, state, sync_state FROM pg_stat_replication ORDER BY pid";

/// Keeps one checker running per backend: started for a backend that
/// appears (config reload), stopped for one that goes. Each checker has its
/// own rhythm, so a backend that does not answer delays no other's checks.
pub async fn run(state: Arc<State>) {
    let mut checkers: HashMap<String, AbortHandle> = HashMap::new();
    let mut tasks = JoinSet::new();
    let mut shutdown = state.shutdown_signal();
    loop {
        let addrs: HashSet<String> = state.topology.nodes().iter().map(|n| n.addr()).collect();
        // (a checker that ended, which only a panic does, is started again)
        checkers.retain(|addr, task| {
            let keep = addrs.contains(addr);
            if !keep {
                task.abort();
            }
            keep && !task.is_finished()
        });
        for addr in addrs {
            if let Entry::Vacant(v) = checkers.entry(addr) {
                let addr = v.key().clone();
                v.insert(tasks.spawn(check(state.clone(), addr)));
            }
        }
        while tasks.try_join_next().is_some() {}
        let period = state.config().proxy.health_check_period;
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
        }
    }
}

/// Checks one backend every `health_check_period` on a kept connection and
/// reports each result to the topology.
async fn check(state: Arc<State>, addr: String) {
    let mut conn: Option<ServerConn> = None;
    loop {
        let cfg = state.config();
        let p = &cfg.proxy;
        let cred = p
            .health_check_password
            .as_deref()
            .map(|s| crate::auth::Secret::parse(s).server_credential())
            .unwrap_or(ServerCredential::None);
        let (user, db) = (&p.health_check_user, &p.health_check_database);
        let (tls, timeout) = (p.server_tls, p.health_check_timeout);
        let reused = conn.is_some();
        let started = crate::clock::now_ms();
        let (mut result, mut kept) = probe(conn.take(), &addr, user, db, &cred, tls, timeout).await;
        if reused && matches!(result, Outcome::Failed(Failure::Broken(_))) {
            // The kept connection may be what failed (terminated,
            // idle_session_timeout): ask again on a new one. Not after a
            // timeout: a node that does not answer would take twice as
            // long to be noticed. (A kept connection dropped silently on
            // the way counts one failure; the next check opens a new one.)
            (result, kept) = probe(None, &addr, user, db, &cred, tls, timeout).await;
        }
        let retries = p.health_check_max_retries;
        match result {
            // On a saturated machine the scheduler can keep the check's
            // backend waiting for over a second while the node serves its
            // clients: a node the data path hears from is slow, not down.
            Outcome::Failed(Failure::Silent(e)) if state.topology.heard_since(&addr, started) => {
                tracing::debug!(%addr, error = %e, "health check unanswered while clients are served: not counted");
            }
            Outcome::Failed(f) => {
                let e: String = f.into();
                tracing::debug!(%addr, error = %e, "health check failed");
                state.topology.report(&addr, Probe::Down(e), retries);
            }
            Outcome::Answered(up) => state.topology.report(&addr, up, retries),
        }
        conn = kept;
        let period = p.health_check_period;
        drop(cfg);
        tokio::time::sleep(period).await;
    }
}

async fn probe(
    conn: Option<ServerConn>,
    addr: &str,
    user: &str,
    db: &str,
    cred: &ServerCredential,
    tls: config::ServerTls,
    timeout: Duration,
) -> (Outcome, Option<ServerConn>) {
    let mut conn = match conn {
        Some(c) => c,
        None => match ServerConn::connect(ConnectOptions {
            addr,
            user,
            database: db,
            credential: cred,
            tls,
            timeout,
            epoch: 0,
            extra_params: &[("application_name", "pgwarden health check")],
        })
        .await
        {
            Ok(c) => c,
            // no answer to the connection attempt in time: silence, as a
            // query's (a refused or broken connection is not)
            Err(e @ crate::server::ServerError::Timeout(_)) => {
                return (Outcome::Failed(Failure::Silent(e.to_string())), None)
            }
            Err(e) => return (Outcome::Failed(Failure::Broken(e.to_string())), None),
        },
    };
    let asked = tokio::time::timeout(timeout, async {
        let rows = conn.simple_query(QUERY).await?;
        let row = rows.first();
        let text = |i: usize| row.and_then(|r| r.get(i)).and_then(|v| v.clone());
        let number = |i: usize| text(i).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
        let in_recovery = text(0).as_deref() == Some("t");
        let replication = if in_recovery {
            match text(3) {
                Some(status) => Replication::Receiver {
                    status,
                    name: text(4),
                },
                None => Replication::Unknown,
            }
        } else {
            Replication::Senders(
                conn.simple_query(SENDERS)
                    .await?
                    .into_iter()
                    .map(|r| {
                        let col = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
                        Sender {
                            application_name: col(0),
                            state: col(1),
                            sync_state: col(2),
                        }
                    })
                    .collect(),
            )
        };
        Ok::<_, crate::server::ServerError>(Probe::Up {
            in_recovery,
            replication_delay: u64::try_from(number(1)).unwrap_or(0),
            timeline: u32::try_from(number(2)).unwrap_or(0),
            replication,
        })
    })
    .await;
    match asked {
        Ok(Ok(up)) => (Outcome::Answered(up), Some(conn)),
        Ok(Err(e)) => (Outcome::Failed(Failure::Broken(e.to_string())), None),
        Err(_) => (
            Outcome::Failed(Failure::Silent(format!("no answer within {timeout:?}"))),
            None,
        ),
    }
}
