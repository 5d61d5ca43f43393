//! Which backend is the primary, and the state of every backend.
//!
//! The primary comes either from the proxy's own health checks
//! (pg_is_in_recovery on every backend) or from an external source such as
//! the DCS leader key. Each change of primary bumps an epoch: server
//! connections carry the epoch they were opened in, so none opened to an old
//! primary is used again (fencing by epoch, not by polling alone).
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeStatus {
    Unknown,
    Up,
    Down,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Unknown,
    Primary,
    Standby,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub status: NodeStatus,
    pub role: Role,
    pub last_status_change: SystemTime,
    /// When this node was last seen turning primary (a promotion).
    pub primary_since: Option<Instant>,
    pub select_cnt: u64,
    pub replication_delay: u64,
    pub last_error: Option<String>,
}

impl Node {
    fn new(b: &config::Backend) -> Node {
        Node {
            name: b.name.clone(),
            host: b.host.clone(),
            port: b.port,
            status: NodeStatus::Unknown,
            role: Role::Unknown,
            last_status_change: SystemTime::now(),
            primary_since: None,
            select_cnt: 0,
            replication_delay: 0,
            last_error: None,
        }
    }

    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Where writes go now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub node: usize,
    pub addr: Arc<str>,
    pub epoch: u64,
}

/// Result of one health check.
#[derive(Debug, Clone)]
pub enum Probe {
    Up {
        in_recovery: bool,
        replication_delay: u64,
    },
    Down(String),
}

pub struct Topology {
    nodes: Mutex<Vec<Node>>,
    tx: watch::Sender<Option<Arc<Target>>>,
    epoch: AtomicU64,
    /// When set, the primary is decided by an external source (the DCS),
    /// and health checks only report state.
    external: std::sync::atomic::AtomicBool,
}

impl Topology {
    pub fn new(backends: &[config::Backend]) -> Arc<Self> {
        let nodes = backends.iter().map(Node::new).collect();
        Arc::new(Topology {
            nodes: Mutex::new(nodes),
            tx: watch::channel(None).0,
            epoch: AtomicU64::new(0),
            external: false.into(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Node>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn primary(&self) -> Option<Arc<Target>> {
        self.tx.borrow().clone()
    }

    pub fn current_epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Target>>> {
        self.tx.subscribe()
    }

    pub fn nodes(&self) -> Vec<Node> {
        self.lock().clone()
    }

    pub fn node_count(&self) -> usize {
        self.lock().len()
    }

    pub fn count_select(&self, node: usize) {
        if let Some(n) = self.lock().get_mut(node) {
            n.select_cnt += 1;
        }
    }

    /// Replaces the backend list (config reload), keeping the state of
    /// backends that stay.
    pub fn set_backends(&self, backends: &[config::Backend]) {
        let mut nodes = self.lock();
        let old = std::mem::take(&mut *nodes);
        for b in backends {
            let kept = old
                .iter()
                .find(|n| n.host == b.host && n.port == b.port)
                .cloned();
            nodes.push(kept.unwrap_or_else(|| Node::new(b)));
        }
        if !self.external.load(Ordering::Acquire) {
            let choice = choose_primary(&nodes);
            drop(nodes);
            self.publish(choice);
        }
    }

    /// Records a health check result and re-decides the primary.
    pub fn report(&self, node: usize, probe: Probe) {
        let mut nodes = self.lock();
        let Some(n) = nodes.get_mut(node) else { return };
        let (status, role) = match &probe {
            Probe::Up { in_recovery, .. } => (
                NodeStatus::Up,
                if *in_recovery {
                    Role::Standby
                } else {
                    Role::Primary
                },
            ),
            Probe::Down(_) => (NodeStatus::Down, n.role),
        };
        if status != n.status {
            n.last_status_change = SystemTime::now();
        }
        if role == Role::Primary && (n.role != Role::Primary || n.status != NodeStatus::Up) {
            n.primary_since = Some(Instant::now());
        }
        n.status = status;
        n.role = role;
        match probe {
            Probe::Up {
                replication_delay, ..
            } => {
                n.replication_delay = replication_delay;
                n.last_error = None;
            }
            Probe::Down(e) => n.last_error = Some(e),
        }
        if self.external.load(Ordering::Acquire) {
            return;
        }
        let choice = choose_primary(&nodes);
        drop(nodes);
        self.publish(choice);
    }

    /// Sets the primary from an external authority (the DCS leader), by
    /// address. From then on health checks no longer decide it.
    pub fn set_external_primary(&self, addr: Option<&str>) {
        self.external.store(true, Ordering::Release);
        let choice = addr.and_then(|a| {
            let nodes = self.lock();
            nodes
                .iter()
                .position(|n| n.addr() == a)
                .map(|i| (i, a.to_owned()))
        });
        let choice = match (choice, addr) {
            (Some(c), _) => Some(c),
            // a leader that is not in the backend list is still the leader
            (None, Some(a)) => Some((usize::MAX, a.to_owned())),
            (None, None) => None,
        };
        self.publish(choice);
    }

    fn publish(&self, choice: Option<(usize, String)>) {
        let current = self.tx.borrow().clone();
        let same = match (&current, &choice) {
            (Some(t), Some((i, a))) => t.node == *i && &*t.addr == a.as_str(),
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        match &choice {
            Some((_, a)) => tracing::info!(primary = %a, epoch, "new primary"),
            None => tracing::warn!(epoch, "no primary available"),
        }
        self.tx.send_replace(choice.map(|(node, addr)| {
            Arc::new(Target {
                node,
                addr: addr.into(),
                epoch,
            })
        }));
    }
}

/// The primary among healthy nodes that report not being in recovery; when
/// several do (a standby was promoted while the old primary still runs),
/// the most recently promoted one.
pub fn choose_primary(nodes: &[Node]) -> Option<(usize, String)> {
    nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.status == NodeStatus::Up && n.role == Role::Primary)
        .max_by_key(|(_, n)| n.primary_since)
        .map(|(i, n)| (i, n.addr()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(n: u16) -> Vec<config::Backend> {
        (0..n)
            .map(|i| config::Backend {
                name: format!("n{i}"),
                host: "127.0.0.1".into(),
                port: 5000 + i,
            })
            .collect()
    }

    #[test]
    fn follows_promotion_and_bumps_epoch() {
        let t = Topology::new(&backends(2));
        assert!(t.primary().is_none());
        t.report(
            0,
            Probe::Up {
                in_recovery: false,
                replication_delay: 0,
            },
        );
        t.report(
            1,
            Probe::Up {
                in_recovery: true,
                replication_delay: 0,
            },
        );
        let p = t.primary().unwrap();
        assert_eq!((p.node, &*p.addr), (0, "127.0.0.1:5000"));
        let e = p.epoch;
        // node 1 promoted while node 0 still answers: the newer primary wins
        std::thread::sleep(std::time::Duration::from_millis(2));
        t.report(
            1,
            Probe::Up {
                in_recovery: false,
                replication_delay: 0,
            },
        );
        let p = t.primary().unwrap();
        assert_eq!(p.node, 1);
        assert!(p.epoch > e);
        t.report(0, Probe::Down("refused".into()));
        assert_eq!(t.primary().unwrap().node, 1);
        t.report(1, Probe::Down("refused".into()));
        assert!(t.primary().is_none());
    }

    #[test]
    fn external_authority_overrides_health_checks() {
        let t = Topology::new(&backends(2));
        t.set_external_primary(Some("127.0.0.1:5001"));
        t.report(
            0,
            Probe::Up {
                in_recovery: false,
                replication_delay: 0,
            },
        );
        assert_eq!(t.primary().unwrap().node, 1);
        t.set_external_primary(None);
        assert!(t.primary().is_none());
    }
}
