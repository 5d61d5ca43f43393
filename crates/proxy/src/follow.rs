//! Following the cluster: the primary is the DCS leader lease holder, at
//! the address its agent publishes. The proxy watches the leader key, so a
//! change of leader reaches it at once (no polling of PostgreSQL), and
//! re-reads the members every second for SHOW POOL_NODES.
use std::sync::Arc;
use std::time::Duration;

use dcs::Dcs;

use crate::state::State;

pub async fn run(state: Arc<State>, url: String, cluster: String) {
    let dcs = loop {
        match dcs::open(&url, &cluster).await {
            Ok(d) => break d,
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the DCS; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let mut leader = dcs.watch_leader();
    let mut shutdown = state.shutdown_signal();
    loop {
        match dcs.snapshot().await {
            Ok(snap) => {
                let members: Vec<ha::Member> = snap
                    .members
                    .values()
                    .filter_map(|v| ha::Member::from_json(v))
                    .collect();
                let backends: Vec<config::Backend> = members
                    .iter()
                    .map(|m| config::Backend {
                        name: m.name.clone(),
                        host: m.host.clone(),
                        port: m.port,
                    })
                    .collect();
                // The lease decides; the address comes from the leader's member key.
                let primary = snap
                    .leader
                    .as_ref()
                    .and_then(|l| members.iter().find(|m| m.name == l.name))
                    .map(|m| m.addr());
                if state
                    .topology
                    .nodes()
                    .iter()
                    .map(|n| (&n.host, n.port))
                    .ne(backends.iter().map(|b| (&b.host, b.port)))
                {
                    state.topology.set_backends(&backends);
                }
                state.topology.set_external_primary(primary.as_deref());
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the DCS"),
        }
        tokio::select! {
            r = leader.changed() => { if r.is_err() { tokio::time::sleep(Duration::from_secs(1)).await; } }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return,
        }
    }
}
