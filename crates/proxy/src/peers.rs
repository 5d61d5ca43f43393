//! This proxy as the watchdog registers it in the DCS, and the other
//! proxies as the watchdog last saw them (for `SHOW WATCHDOG`). The
//! watchdog itself (the `watchdog` crate) runs beside the proxy; nothing
//! here depends on it.
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use ha::proxy::{Proxies, ProxyRecord, ProxyState};

use crate::state::State;
use crate::topology::NodeStatus;

/// The last view of the proxies, and this proxy's name among them.
#[derive(Default)]
pub struct Peers {
    view: Mutex<Option<(String, Proxies)>>,
}

impl Peers {
    pub fn set(&self, me: &str, view: Proxies) {
        *self.view.lock().unwrap_or_else(|e| e.into_inner()) = Some((me.to_owned(), view));
    }
    pub fn get(&self) -> Option<(String, Proxies)> {
        self.view.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl State {
    /// This proxy now: clients, pools, where writes go and whether the
    /// health checks reach it, reads per backend. `state` is the
    /// watchdog's to set.
    pub fn record(&self, name: &str) -> ProxyRecord {
        let cfg = self.config();
        let primary = self.topology.primary();
        let nodes = self.topology.nodes();
        let primary_reachable = primary
            .as_ref()
            .and_then(|p| nodes.get(p.node))
            .is_some_and(|n| n.status == NodeStatus::Up);
        ProxyRecord {
            name: name.to_owned(),
            holder_id: String::new(),
            listen: cfg.proxy.listen.to_string(),
            metrics_url: cfg
                .proxy
                .metrics_listen
                .map(|m| format!("http://{m}/metrics")),
            state: ProxyState::Serving,
            vip: None,
            clients: self.client_count.load(Ordering::Relaxed) as u64,
            pools: self.pools.all().len() as u64,
            transactions: self.stats.xacts.load(Ordering::Relaxed),
            primary: primary.map(|p| p.addr.to_string()),
            primary_reachable,
            reads: nodes.iter().map(|n| (n.addr(), n.select_cnt)).collect(),
            node_transactions: nodes
                .iter()
                .map(|n| (n.addr(), n.cells.xacts.load(Ordering::Relaxed)))
                .collect(),
        }
    }
}
