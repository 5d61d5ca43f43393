//! Periodic health checks of every backend: one persistent connection per
//! backend, `pg_is_in_recovery()` and replay lag, reported to the topology.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use crate::server::{ConnectOptions, ServerConn, ServerCredential};
use crate::state::State;
use crate::topology::Probe;

const QUERY: &str = "SELECT pg_is_in_recovery(), \
    COALESCE(pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), 0)::bigint";

pub async fn run(state: Arc<State>) {
    let mut conns: HashMap<String, ServerConn> = HashMap::new();
    let mut shutdown = state.shutdown.subscribe();
    loop {
        let cfg = state.config();
        let p = &cfg.proxy;
        let cred = p
            .health_check_password
            .as_deref()
            .map(|s| crate::auth::Secret::parse(s).server_credential())
            .unwrap_or(ServerCredential::None);
        let mut set = JoinSet::new();
        for (i, node) in state.topology.nodes().into_iter().enumerate() {
            let addr = node.addr();
            let conn = conns.remove(&addr);
            let (user, db, cred, tls, timeout) = (
                p.health_check_user.clone(),
                p.health_check_database.clone(),
                cred.clone(),
                p.server_tls,
                p.health_check_timeout,
            );
            set.spawn(async move {
                let (probe, conn) = probe(conn, &addr, &user, &db, &cred, tls, timeout).await;
                (i, addr, probe, conn)
            });
        }
        while let Some(r) = set.join_next().await {
            if let Ok((i, addr, probe, conn)) = r {
                if let Probe::Down(e) = &probe {
                    tracing::debug!(node = i, %addr, error = %e, "health check failed");
                }
                state.topology.report(i, probe);
                if let Some(c) = conn {
                    conns.insert(addr, c);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(p.health_check_period) => {}
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
        }
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
) -> (Probe, Option<ServerConn>) {
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
            Err(e) => return (Probe::Down(e.to_string()), None),
        },
    };
    match tokio::time::timeout(timeout, conn.simple_query(QUERY)).await {
        Ok(Ok(rows)) => {
            let row = rows.first();
            let in_recovery = row.and_then(|r| r.first()).and_then(|v| v.as_deref()) == Some("t");
            let delay = row
                .and_then(|r| r.get(1))
                .and_then(|v| v.as_deref())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            (
                Probe::Up {
                    in_recovery,
                    replication_delay: delay,
                },
                Some(conn),
            )
        }
        Ok(Err(e)) => (Probe::Down(e.to_string()), None),
        Err(_) => (Probe::Down(format!("no answer within {timeout:?}")), None),
    }
}
