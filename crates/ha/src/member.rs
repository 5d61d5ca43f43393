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
    pub synchronous_mode: SyncMode,
    pub synchronous_mode_strict: bool,
    /// Quorum mode: how many standbys must acknowledge a commit.
    pub synchronous_node_count: u32,
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
            synchronous_mode: SyncMode::Off,
            synchronous_mode_strict: false,
            synchronous_node_count: 1,
            failsafe_mode: false,
            parameters: BTreeMap::new(),
        }
    }
}

/// Synchronous replication, as Patroni's `synchronous_mode`: off, on (one
/// synchronous standby, `FIRST 1 (...)`, named in the Sync key), or
/// quorum (`ANY k (...)`: a commit waits for k of the listed standbys).
/// Written in JSON and TOML as `false`/`true`/`"off"`/`"on"`/`"quorum"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "SyncModeRaw", into = "SyncModeRaw")]
pub enum SyncMode {
    #[default]
    Off,
    On,
    Quorum,
}

impl SyncMode {
    /// Any synchronous replication at all.
    pub fn is_on(self) -> bool {
        self != SyncMode::Off
    }
    pub fn parse(s: &str) -> Option<SyncMode> {
        match s {
            "off" | "false" => Some(SyncMode::Off),
            "on" | "true" => Some(SyncMode::On),
            "quorum" => Some(SyncMode::Quorum),
            _ => None,
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum SyncModeRaw {
    Bool(bool),
    Word(String),
}

impl TryFrom<SyncModeRaw> for SyncMode {
    type Error = String;
    fn try_from(r: SyncModeRaw) -> Result<SyncMode, String> {
        match r {
            SyncModeRaw::Bool(b) => Ok(if b { SyncMode::On } else { SyncMode::Off }),
            SyncModeRaw::Word(w) => SyncMode::parse(&w).ok_or_else(|| {
                format!(
                    "synchronous_mode {w:?}: expected true, false, \"on\", \"off\" or \"quorum\""
                )
            }),
        }
    }
}

impl From<SyncMode> for SyncModeRaw {
    fn from(m: SyncMode) -> SyncModeRaw {
        match m {
            SyncMode::Off => SyncModeRaw::Bool(false),
            SyncMode::On => SyncModeRaw::Bool(true),
            SyncMode::Quorum => SyncModeRaw::Word("quorum".into()),
        }
    }
}
