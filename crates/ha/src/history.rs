//! The cluster's history (the DCS History key, a JSON list): every change
//! of leader, and every restart and reinitialization an operator asked
//! for, with its time, from, to and reason. Entries written before kinds
//! existed (`{"epoch", "new_leader", "lsn", "timeline", "at_ms"}`) read as
//! failovers.
use serde::{Deserialize, Serialize};

/// At most this many entries are kept (the oldest go first).
pub const KEEP: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A new leader took over without being asked.
    #[default]
    Failover,
    Switchover,
    /// A failover an operator asked for.
    ManualFailover,
    Restart,
    Reinit,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Failover => "failover",
            Kind::Switchover => "switchover",
            Kind::ManualFailover => "manual failover",
            Kind::Restart => "restart",
            Kind::Reinit => "reinit",
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    #[serde(default)]
    pub kind: Kind,
    /// Milliseconds since the Unix epoch.
    #[serde(default)]
    pub at_ms: u64,
    /// The lease epoch of a new leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// The previous leader (leader changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The new leader (leader changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_leader: Option<String>,
    /// The member restarted or reinitialized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsn: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
}

/// Reads the key; what cannot be read is skipped, never an error.
pub fn parse(s: &str) -> Vec<Entry> {
    let values: Vec<serde_json::Value> = serde_json::from_str(s).unwrap_or_default();
    let mut list: Vec<Entry> = values
        .into_iter()
        .filter_map(|v| serde_json::from_value(v).ok())
        .collect();
    // leader changes recorded without their previous leader get it from
    // the entry before
    let mut last: Option<String> = None;
    for e in &mut list {
        if let Some(l) = e.new_leader.clone() {
            if e.from.is_none() {
                e.from = last.clone();
            }
            last = Some(l);
        }
    }
    list
}

pub fn to_json(list: &[Entry]) -> String {
    let start = list.len().saturating_sub(KEEP);
    serde_json::to_string(&list[start..]).expect("serializable")
}

/// `old` (the key's value) with `e` appended.
pub fn append(old: Option<&str>, e: Entry) -> String {
    let mut list = old.map(parse).unwrap_or_default();
    list.push(e);
    to_json(&list)
}

/// `old` with the last change of leader to `leader` marked as `kind`
/// (a switchover or a manual failover), with its previous leader and
/// reason; None when there is no such entry.
pub fn mark_leader_change(
    old: &str,
    leader: &str,
    kind: Kind,
    from: Option<&str>,
    reason: &str,
) -> Option<String> {
    let mut list = parse(old);
    let e = list
        .iter_mut()
        .rev()
        .find(|e| e.new_leader.as_deref() == Some(leader))?;
    if e.kind == kind {
        return None;
    }
    e.kind = kind;
    if let Some(f) = from {
        e.from = Some(f.to_owned());
    }
    e.reason = Some(reason.to_owned());
    Some(to_json(&list))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_entries_read_as_failovers_with_their_previous_leader() {
        let old = r#"[{"epoch":1,"new_leader":"a","lsn":5,"timeline":1,"at_ms":10},
                      {"epoch":4,"new_leader":"b","lsn":9,"timeline":2,"at_ms":20}, 7]"#;
        let l = parse(old);
        assert_eq!(l.len(), 2);
        assert_eq!(l[1].kind, Kind::Failover);
        assert_eq!(l[1].from.as_deref(), Some("a"));
        assert_eq!(l[0].from, None);
        assert!(parse("not json").is_empty());
    }

    #[test]
    fn a_switchover_marks_the_last_change_to_its_leader() {
        let old =
            r#"[{"epoch":1,"new_leader":"a","at_ms":1},{"epoch":2,"new_leader":"b","at_ms":2}]"#;
        let new = mark_leader_change(old, "b", Kind::Switchover, Some("a"), "asked").unwrap();
        let l = parse(&new);
        assert_eq!(l[1].kind, Kind::Switchover);
        assert_eq!(l[1].reason.as_deref(), Some("asked"));
        assert_eq!(
            mark_leader_change(&new, "b", Kind::Switchover, None, "x"),
            None
        );
        assert_eq!(
            mark_leader_change(old, "c", Kind::Switchover, None, "x"),
            None
        );
    }

    #[test]
    fn append_keeps_the_newest() {
        let mut s: Option<String> = None;
        for i in 0..(KEEP as u64 + 5) {
            let e = Entry {
                kind: Kind::Restart,
                at_ms: i,
                epoch: None,
                from: None,
                new_leader: None,
                member: Some("a".into()),
                reason: None,
                lsn: None,
                timeline: None,
            };
            s = Some(append(s.as_deref(), e));
        }
        let l = parse(s.as_deref().unwrap());
        assert_eq!(l.len(), KEEP);
        assert_eq!(l.last().unwrap().at_ms, KEEP as u64 + 4);
    }
}
