//! The Status key the leader writes every pass: its last position.
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

impl LeaderStatus {
    pub fn parse(s: &str) -> Option<LeaderStatus> {
        serde_json::from_str(s).ok()
    }
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("serializable")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_reads_back_also_without_its_newer_fields() {
        let st = LeaderStatus {
            lsn: 7,
            timeline: 2,
            leader: "a".into(),
        };
        assert_eq!(LeaderStatus::parse(&st.to_json()), Some(st));
        let old = LeaderStatus::parse(r#"{"lsn":9}"#).expect("an older value");
        assert_eq!(old.lsn, 9);
        assert!(old.leader.is_empty());
    }
}
