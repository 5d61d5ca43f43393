//! The cluster as the REST API shows it (`GET /cluster`) and `pgwarden
//! ctl` reads it: every member with its role, state, position and tags,
//! the leader, maintenance mode and a pending switchover.
use serde::{Deserialize, Serialize};

use crate::member::{Member, Role};
use crate::switchover::Switchover;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberRole {
    /// Holds the leader lease.
    Leader,
    /// A standby the leader's commits wait for.
    SyncStandby,
    Replica,
    /// Runs as primary without the lease (demoting).
    Primary,
    Stopped,
    Uninitialized,
}

impl std::fmt::Display for MemberRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MemberRole::Leader => "Leader",
            MemberRole::SyncStandby => "Sync Standby",
            MemberRole::Replica => "Replica",
            MemberRole::Primary => "Primary (no lease)",
            MemberRole::Stopped => "Stopped",
            MemberRole::Uninitialized => "Uninitialized",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Running,
    Streaming,
    Stopped,
    Uninitialized,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            State::Running => "running",
            State::Streaming => "streaming",
            State::Stopped => "stopped",
            State::Uninitialized => "uninitialized",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tags {
    pub nofailover: bool,
    pub priority: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub api_url: String,
    pub role: MemberRole,
    pub state: State,
    pub timeline: u32,
    /// Primary: current WAL position; standby: last received.
    pub lsn: u64,
    pub replayed_lsn: u64,
    /// Standby: bytes behind the leader's last published position.
    pub lag: Option<u64>,
    pub tags: Tags,
    pub pending_restart: bool,
    /// The sentence of the member's last loop.
    pub last_action: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub leader: Option<String>,
    /// The lease epoch (changes with every new leader).
    pub epoch: Option<u64>,
    /// Maintenance mode: no automatic failover.
    pub paused: bool,
    pub members: Vec<MemberStatus>,
    /// A switchover or failover waiting to be carried out.
    pub pending: Option<Switchover>,
    /// The registered proxies and the virtual IP's holder.
    #[serde(default)]
    pub proxies: crate::proxy::Proxies,
}

/// The standbys a Sync key value names: the synchronous standby, or in
/// quorum mode the voters of a quorum in force.
pub fn sync_names(v: &str) -> Vec<String> {
    let Some(k) = crate::sync::SyncKey::parse(v) else {
        return Vec::new();
    };
    let mut out: Vec<String> = k.sync_standby.into_iter().collect();
    if k.quorum > 0 {
        out.extend(k.voters);
    }
    out
}

impl MemberStatus {
    pub fn of(m: &Member, leader: Option<&str>, sync: &[String]) -> MemberStatus {
        let role = match m.role {
            Role::Primary if leader == Some(m.name.as_str()) && m.running => MemberRole::Leader,
            Role::Primary => MemberRole::Primary,
            Role::Replica if sync.contains(&m.name) => MemberRole::SyncStandby,
            Role::Replica => MemberRole::Replica,
            Role::Stopped => MemberRole::Stopped,
            Role::Uninitialized => MemberRole::Uninitialized,
        };
        let state = match (m.role, m.running) {
            (Role::Uninitialized, _) => State::Uninitialized,
            (_, false) => State::Stopped,
            (Role::Replica, true) if m.streaming => State::Streaming,
            _ => State::Running,
        };
        MemberStatus {
            name: m.name.clone(),
            host: m.host.clone(),
            port: m.port,
            api_url: m.api_url.clone(),
            role,
            state,
            timeline: m.timeline,
            lsn: m.lsn,
            replayed_lsn: m.replayed_lsn,
            lag: m.lag,
            tags: Tags {
                nofailover: m.nofailover,
                priority: m.priority,
            },
            pending_restart: m.pending_restart,
            last_action: m.last_action.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_key_names_one_or_many() {
        assert_eq!(
            sync_names(r#"{"leader":"a","sync_standby":"b"}"#),
            vec!["b".to_owned()]
        );
        assert!(sync_names(r#"{"leader":"a","sync_standby":null}"#).is_empty());
        assert_eq!(
            sync_names(r#"{"leader":"a","sync_standby":null,"voters":["c","b"],"quorum":1}"#),
            vec!["c".to_owned(), "b".to_owned()]
        );
        // voters listed while the quorum is being changed are not (yet)
        // synchronous
        assert!(sync_names(r#"{"leader":"a","sync_standby":null,"voters":["c"]}"#).is_empty());
        assert!(sync_names("garbage").is_empty());
    }
}
