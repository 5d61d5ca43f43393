//! The typed values of the DCS keys the leader writes besides the lease:
//! its last position (Status key), and the failover history (History key).
use serde::{Deserialize, Serialize};

/// The Status key: the leader's last published position, for candidates'
/// lag checks, and who published it (the last known leader).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderStatus {
    pub lsn: u64,
    #[serde(default)]
    pub timeline: u32,
    #[serde(default)]
    pub leader: String,
}

/// One change of leader, as the History key lists them (oldest first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The lease epoch the new leader took.
    pub epoch: u64,
    pub new_leader: String,
    /// Its position and timeline when it took over, when known.
    #[serde(default)]
    pub lsn: Option<u64>,
    #[serde(default)]
    pub timeline: Option<u32>,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
}

impl LeaderStatus {
    pub fn parse(s: &str) -> Option<LeaderStatus> {
        serde_json::from_str(s).ok()
    }
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("serializable")
    }
}

/// The History key's list; a value that does not parse reads as empty
/// (the next entry starts it again).
pub fn parse_history(s: &str) -> Vec<HistoryEntry> {
    serde_json::from_str(s).unwrap_or_default()
}

pub fn history_json(list: &[HistoryEntry]) -> String {
    serde_json::to_string(list).expect("serializable")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_values_read_back_and_old_history_entries_parse() {
        let st = LeaderStatus {
            lsn: 7,
            timeline: 2,
            leader: "a".into(),
        };
        assert_eq!(LeaderStatus::parse(&st.to_json()), Some(st));
        let old = r#"[{"epoch":3,"new_leader":"b","lsn":null,"timeline":null,"at_ms":5}]"#;
        let h = parse_history(old);
        assert_eq!(h[0].new_leader, "b");
        assert_eq!(parse_history(&history_json(&h)), h);
        assert!(parse_history("not json").is_empty());
    }
}
