//! Failsafe mode's DCS key, as Patroni's `/failsafe`: the leader lists the
//! members that may confirm it while the DCS is unreachable (those that
//! stream from it). While the DCS is down it stays primary only if every
//! listed member confirms, and a primary with no such member does not stay
//! up on failsafe. Once the leader key is gone, only a listed member may
//! take over: the others may lack what the leader's followers confirmed.
use serde::{Deserialize, Serialize};

use crate::member::{Member, Role};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailsafeMember {
    pub name: String,
    pub api_url: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailsafeKey {
    pub leader: String,
    pub members: Vec<FailsafeMember>,
}

impl FailsafeKey {
    /// The key leader `me` publishes: the running, streaming standbys.
    pub fn of(me: &str, members: &[Member]) -> FailsafeKey {
        let mut list: Vec<FailsafeMember> = members
            .iter()
            .filter(|m| m.name != me && m.running && m.role == Role::Replica && m.streaming)
            .map(|m| FailsafeMember {
                name: m.name.clone(),
                api_url: m.api_url.clone(),
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        FailsafeKey {
            leader: me.to_owned(),
            members: list,
        }
    }
    pub fn parse(s: &str) -> Option<FailsafeKey> {
        serde_json::from_str(s).ok()
    }
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("serializable")
    }
    pub fn lists(&self, name: &str) -> bool {
        self.members.iter().any(|m| m.name == name)
    }
    /// Whether the leader may stay primary, `confirmed` members having
    /// confirmed: all of them, and at least one.
    pub fn holds(&self, confirmed: usize) -> bool {
        !self.members.is_empty() && confirmed == self.members.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, role: Role, streaming: bool) -> Member {
        Member {
            name: name.into(),
            host: "127.0.0.1".into(),
            port: 5000,
            api_url: format!("http://{name}"),
            role,
            running: true,
            timeline: 1,
            lsn: 1,
            replayed_lsn: 1,
            streaming,
            lag: None,
            nofailover: false,
            priority: 0,
            pending_restart: false,
            last_action: String::new(),
        }
    }

    #[test]
    fn the_key_lists_streaming_standbys_only() {
        let ms = [
            m("a", Role::Primary, false),
            m("c", Role::Replica, true),
            m("b", Role::Replica, true),
            m("d", Role::Replica, false),
        ];
        let k = FailsafeKey::of("a", &ms);
        let names: Vec<&str> = k.members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["b", "c"]);
        assert!(k.lists("b") && !k.lists("d") && !k.lists("a"));
        assert_eq!(FailsafeKey::parse(&k.to_json()), Some(k));
    }

    /// The defect: with no other member, "all of them confirmed" held.
    #[test]
    fn a_primary_alone_does_not_stay_up_on_failsafe() {
        let alone = FailsafeKey::of("a", &[m("a", Role::Primary, false)]);
        assert!(!alone.holds(0));
        let two = FailsafeKey::of(
            "a",
            &[m("b", Role::Replica, true), m("c", Role::Replica, true)],
        );
        assert!(!two.holds(1));
        assert!(two.holds(2));
    }
}
