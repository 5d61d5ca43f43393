//! A proxy as it registers itself in the DCS (`proxies/<name>`, expiring
//! unless refreshed) and as `SHOW WATCHDOG`, `GET /cluster`, `pgwarden ctl
//! list` and the dashboard show it.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The name of the proxies' virtual IP lease in the DCS.
pub const VIP_LEASE: &str = "proxy-vip";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyState {
    /// Serving, with no virtual IP configured.
    Serving,
    /// Holds the virtual IP lease (and the address).
    Holder,
    /// Ready to take the virtual IP.
    Standby,
    /// Cannot reach the primary while other proxies can: does not compete
    /// for the virtual IP.
    DataPathDown,
    /// Shutting down.
    Stopping,
}

impl std::fmt::Display for ProxyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProxyState::Serving => "serving",
            ProxyState::Holder => "holder",
            ProxyState::Standby => "standby",
            ProxyState::DataPathDown => "data path down",
            ProxyState::Stopping => "stopping",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyRecord {
    pub name: String,
    /// What this process writes as the holder of the virtual IP lease:
    /// the name and a number drawn at start, so that a restarted proxy, or
    /// another given the same name by mistake, is not taken for it.
    #[serde(default)]
    pub holder_id: String,
    /// Where clients connect to this proxy directly.
    pub listen: String,
    /// `http://host:port/metrics`, when it serves metrics.
    #[serde(default)]
    pub metrics_url: Option<String>,
    pub state: ProxyState,
    /// The virtual IP it competes for (`address/prefix`), if any.
    #[serde(default)]
    pub vip: Option<String>,
    pub clients: u64,
    pub pools: u64,
    /// Transactions served since the proxy started.
    pub transactions: u64,
    /// Where writes go now, and whether its last health check reached it.
    #[serde(default)]
    pub primary: Option<String>,
    pub primary_reachable: bool,
    /// Read-only transactions served per backend (`host:port`) since start.
    #[serde(default)]
    pub reads: BTreeMap<String, u64>,
    /// Transactions served per backend since start.
    #[serde(default)]
    pub node_transactions: BTreeMap<String, u64>,
}

impl ProxyRecord {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("ProxyRecord serializes")
    }
    pub fn from_json(s: &str) -> Option<ProxyRecord> {
        serde_json::from_str(s).ok()
    }
}

/// The proxies of a cluster and who holds the virtual IP lease.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proxies {
    pub vip_holder: Option<String>,
    pub proxies: Vec<ProxyRecord>,
}

impl Proxies {
    /// From a DCS snapshot's proxy keys and named leases (values that do
    /// not parse are left out).
    pub fn of(proxies: &BTreeMap<String, String>, vip_holder: Option<&str>) -> Proxies {
        let proxies: Vec<ProxyRecord> = proxies
            .values()
            .filter_map(|v| ProxyRecord::from_json(v))
            .collect();
        // the holder by its name, when a registered proxy wrote it
        let vip_holder = vip_holder.map(|h| {
            proxies
                .iter()
                .find(|p| p.holder_id == h)
                .map(|p| p.name.clone())
                .unwrap_or_else(|| h.to_owned())
        });
        Proxies {
            vip_holder,
            proxies,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_bad_values_are_left_out() {
        let r = ProxyRecord {
            name: "p1".into(),
            holder_id: "p1.7f".into(),
            listen: "10.0.0.2:6432".into(),
            metrics_url: None,
            state: ProxyState::Holder,
            vip: Some("10.0.0.100/24".into()),
            clients: 3,
            pools: 1,
            transactions: 9,
            primary: Some("10.0.0.5:5432".into()),
            primary_reachable: true,
            reads: BTreeMap::from([("10.0.0.6:5432".into(), 4)]),
            node_transactions: BTreeMap::from([("10.0.0.5:5432".into(), 5)]),
        };
        let mut m = BTreeMap::new();
        m.insert("p1".to_owned(), r.to_json());
        m.insert("p2".to_owned(), "not json".to_owned());
        let p = Proxies::of(&m, Some("p1.7f"));
        assert_eq!(p.proxies, vec![r]);
        assert_eq!(
            p.vip_holder.as_deref(),
            Some("p1"),
            "the holder by its name"
        );
        let p = Proxies::of(&m, Some("p9.1"));
        assert_eq!(
            p.vip_holder.as_deref(),
            Some("p9.1"),
            "unregistered: as written"
        );
    }
}
