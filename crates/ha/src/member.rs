//! What each agent publishes about its node (as JSON in the DCS), and the
//! cluster-wide dynamic configuration.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Replica,
    Uninitialized,
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    /// PostgreSQL address clients and standbys connect to.
    pub host: String,
    pub port: u16,
    /// The agent's REST API, e.g. `http://127.0.0.1:8008`.
    pub api_url: String,
    pub role: Role,
    pub running: bool,
    pub timeline: u32,
    /// Primary: current WAL position; replica: last received position.
    pub lsn: u64,
    pub replayed_lsn: u64,
    /// Replica: streaming from the leader right now.
    pub streaming: bool,
    /// Replica: bytes behind the leader's last published position.
    #[serde(default)]
    pub lag: Option<u64>,
    #[serde(default)]
    pub nofailover: bool,
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub pending_restart: bool,
    /// The sentence describing what the last loop did.
    #[serde(default)]
    pub last_action: String,
}

impl Member {
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("Member serializes")
    }
    pub fn from_json(s: &str) -> Option<Member> {
        serde_json::from_str(s).ok()
    }
}

/// Cluster-wide settings kept in the DCS (written at bootstrap, editable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterConfig {
    pub ttl_ms: u64,
    pub loop_wait_ms: u64,
    /// A replica further behind than this (bytes) is never promoted.
    pub maximum_lag_on_failover: u64,
    pub synchronous_mode: bool,
    pub synchronous_mode_strict: bool,
    pub failsafe_mode: bool,
    /// PostgreSQL parameters for every node.
    pub parameters: BTreeMap<String, String>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            ttl_ms: 5_000,
            loop_wait_ms: 1_000,
            maximum_lag_on_failover: 1 << 20,
            synchronous_mode: false,
            synchronous_mode_strict: false,
            failsafe_mode: false,
            parameters: BTreeMap::new(),
        }
    }
}
