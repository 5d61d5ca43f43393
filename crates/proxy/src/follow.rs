//! Following the cluster: the primary is the DCS leader lease holder, at
//! the address its agent publishes. The proxy watches the leader key, so a
//! change of leader reaches it at once (no polling of PostgreSQL), and
//! re-reads the members (and a switchover in progress) every 50 ms.
use std::sync::Arc;
use std::time::Duration;

use dcs::Dcs;

use crate::state::State;

/// How often the DCS is read besides the leader watch: a switchover's
/// step-down is seen within this.
const POLL: Duration = Duration::from_millis(50);

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
                // A leader stepping down for a switchover: new transactions
                // wait (up to query_wait_timeout) for the successor rather
                // than reach a server about to shut down; those under way
                // finish on it (the leader waits for them).
                let stepping_down = snap
                    .get(dcs::Key::Failover)
                    .and_then(ha::switchover::Switchover::parse)
                    .and_then(|r| r.chosen)
                    .is_some_and(|c| snap.leader.as_ref().is_some_and(|l| l.name != c));
                if state
                    .topology
                    .nodes()
                    .iter()
                    .map(|n| (&n.host, n.port))
                    .ne(backends.iter().map(|b| (&b.host, b.port)))
                {
                    state.topology.set_backends(&backends);
                }
                // The new primary first, then the release: held
                // transactions go to it.
                state.topology.set_external_primary(primary.as_deref());
                state.topology.set_held(stepping_down);
                // Reads go only to members their agents report as running
                // standbys that stream from the leader (not down,
                // rebuilding or paused).
                let readable: Vec<(String, bool, u64)> = members
                    .iter()
                    .map(|m| {
                        let ok = m.role == ha::Role::Replica && m.running && m.streaming;
                        (m.addr(), ok, m.lag.unwrap_or(0))
                    })
                    .collect();
                state.topology.set_members(&readable);
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the DCS"),
        }
        tokio::select! {
            r = leader.changed() => { if r.is_err() { tokio::time::sleep(Duration::from_secs(1)).await; } }
            _ = tokio::time::sleep(POLL) => {}
            _ = shutdown.changed() => return,
        }
    }
}
