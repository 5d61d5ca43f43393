//! Which node serves a read: the candidates (standbys that may serve reads
//! now, and the primary when `primary_serves_reads`) and the strategy that
//! chooses among them by weight. Pure: the caller brings the nodes and the
//! connections each has in use.
use std::collections::HashSet;

use config::{Balance, Strategy};

use crate::topology::{Node, NodeStatus, Replication, Role};

/// A node that may serve a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Index in the topology's nodes.
    pub node: usize,
    pub addr: String,
    pub weight: u32,
    pub primary: bool,
}

/// The nodes that may serve reads now. A standby must be up, streaming,
/// reported by its agent as a streaming standby when the proxy follows a
/// DCS, and not lagging: one further behind than `max_replica_lag` is left
/// out, and stays out until it is back within half of it (`lagging`
/// remembers which), so that a standby near the limit does not flap.
pub fn candidates(
    nodes: &[Node],
    primary: Option<&str>,
    bal: &Balance,
    lagging: &mut HashSet<String>,
) -> Vec<Candidate> {
    let mut out = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let addr = n.addr();
        let weight = bal.weight(&n.name, &addr);
        if Some(addr.as_str()) == primary {
            if bal.primary_serves_reads && n.status == NodeStatus::Up {
                out.push(Candidate {
                    node: i,
                    addr,
                    weight,
                    primary: true,
                });
            }
            continue;
        }
        let lag = n.replication_delay.max(n.member.map_or(0, |(_, l)| l));
        let limit = if lagging.contains(&addr) {
            bal.max_replica_lag / 2
        } else {
            bal.max_replica_lag
        };
        if lag <= limit {
            lagging.remove(&addr);
        } else {
            lagging.insert(addr.clone());
            continue;
        }
        let streaming =
            matches!(&n.replication, Replication::Receiver { status, .. } if status == "streaming");
        let agent_ok = n.member.is_none_or(|(ok, _)| ok);
        if n.status == NodeStatus::Up && n.role == Role::Standby && streaming && agent_ok {
            out.push(Candidate {
                node: i,
                addr,
                weight,
                primary: false,
            });
        }
    }
    out.retain(|c| c.weight > 0);
    out
}

/// Chooses among `cands` (not empty, weights above 0). `turn` is a counter
/// that grows by one per choice; `in_use(c)` the server connections a
/// candidate has in use (least-connections).
pub fn choose(
    cands: &[Candidate],
    strategy: Strategy,
    turn: u64,
    in_use: impl Fn(&Candidate) -> usize,
) -> Option<&Candidate> {
    let total: u64 = cands.iter().map(|c| u64::from(c.weight)).sum();
    if total == 0 {
        return None;
    }
    let by_weight = |mut k: u64| {
        cands.iter().find(|c| {
            let w = u64::from(c.weight);
            if k < w {
                return true;
            }
            k -= w;
            false
        })
    };
    match strategy {
        Strategy::RoundRobin => by_weight(turn % total),
        Strategy::WeightedRandom => by_weight(splitmix(turn) % total),
        Strategy::LeastConnections => {
            // fewest in use per unit of weight; ties taken in turn
            let n = cands.len();
            let start = (turn % n as u64) as usize;
            (0..n).map(|i| &cands[(start + i) % n]).min_by(|a, b| {
                let (la, lb) = (in_use(a) as u64, in_use(b) as u64);
                (la * u64::from(b.weight)).cmp(&(lb * u64::from(a.weight)))
            })
        }
    }
}

/// A well-mixed number from a counter (SplitMix64).
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn cand(node: usize, weight: u32) -> Candidate {
        Candidate {
            node,
            addr: format!("h:{node}"),
            weight,
            primary: false,
        }
    }

    fn shares(strategy: Strategy, cands: &[Candidate]) -> HashMap<usize, u32> {
        let mut seen = HashMap::new();
        for turn in 0..6000 {
            let c = choose(cands, strategy, turn, |_| 0).unwrap();
            *seen.entry(c.node).or_insert(0) += 1;
        }
        seen
    }

    #[test]
    fn weights_set_the_shares() {
        let cands = [cand(0, 1), cand(1, 2), cand(2, 3)];
        let rr = shares(Strategy::RoundRobin, &cands);
        assert_eq!((rr[&0], rr[&1], rr[&2]), (1000, 2000, 3000));
        let random = shares(Strategy::WeightedRandom, &cands);
        for (node, want) in [(0, 1000), (1, 2000), (2, 3000)] {
            let got = random[&node] as i64;
            assert!(
                (got - want).abs() < 250,
                "node {node}: {got} of 6000, want ~{want}"
            );
        }
    }

    #[test]
    fn least_connections_takes_the_least_loaded_per_weight() {
        let cands = [cand(0, 1), cand(1, 1), cand(2, 2)];
        let load = |c: &Candidate| [3, 1, 3][c.node];
        for turn in 0..10 {
            // 1 in use of weight 1 beats 3 of weight 2 (1.5 each)
            assert_eq!(
                choose(&cands, Strategy::LeastConnections, turn, load)
                    .unwrap()
                    .node,
                1
            );
        }
        // ties go in turn
        let even: HashSet<usize> = (0..3)
            .map(|t| {
                choose(&cands[..2], Strategy::LeastConnections, t, |_| 0)
                    .unwrap()
                    .node
            })
            .collect();
        assert_eq!(even.len(), 2);
    }

    fn balance(max_replica_lag: u64) -> Balance {
        let cfg = config::parse(
            &format!("[proxy]\nlisten = \"127.0.0.1:0\"\nmax_replica_lag = {max_replica_lag}\n[[backends]]\nhost = \"h\"\nport = 1\n"),
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        cfg.proxy.balance
    }

    fn standby(delay: u64) -> Node {
        let b = config::Backend {
            name: "s".into(),
            host: "h".into(),
            port: 2,
        };
        let mut n = crate::topology::Topology::new(&[b]).nodes().remove(0);
        n.status = NodeStatus::Up;
        n.role = Role::Standby;
        n.replication = Replication::Receiver {
            status: "streaming".into(),
            name: None,
        };
        n.replication_delay = delay;
        n
    }

    #[test]
    fn a_lagging_standby_returns_under_half_the_limit() {
        let bal = balance(1000);
        let mut lagging = HashSet::new();
        let mut at =
            |delay| !candidates(&[standby(delay)], Some("p:1"), &bal, &mut lagging).is_empty();
        assert!(at(1000));
        assert!(!at(1001), "over the limit");
        assert!(!at(900), "still above half of it");
        assert!(at(500), "back under half");
        assert!(at(900), "in again until over the limit");
    }

    #[test]
    fn the_agent_s_word_and_the_primary_flag_count() {
        let mut bal = balance(1000);
        let mut lagging = HashSet::new();
        let mut n = standby(0);
        n.member = Some((false, 0));
        assert!(
            candidates(&[n.clone()], None, &bal, &mut lagging).is_empty(),
            "agent: not streaming"
        );
        n.member = Some((true, 5000));
        assert!(
            candidates(&[n.clone()], None, &bal, &mut lagging).is_empty(),
            "agent: lagging"
        );
        let mut p = standby(0);
        p.role = Role::Primary;
        assert!(candidates(&[p.clone()], Some("h:2"), &bal, &mut lagging).is_empty());
        bal.primary_serves_reads = true;
        let c = candidates(&[p], Some("h:2"), &bal, &mut lagging);
        assert!(c.len() == 1 && c[0].primary);
    }

    #[test]
    fn no_weight_no_choice() {
        assert!(choose(&[], Strategy::RoundRobin, 0, |_| 0).is_none());
    }
}
