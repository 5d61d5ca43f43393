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
    /// When this node was last seen turning from a running standby into a
    /// primary (a promotion seen by the health checks).
    pub primary_since: Option<Instant>,
    /// The timeline a primary writes on (0: not known).
    pub timeline: u32,
    /// Failed health checks in a row.
    pub failures: u32,
    pub select_cnt: u64,
    pub replication_delay: u64,
    /// What the last health check saw of streaming replication.
    pub replication: Replication,
    pub last_error: Option<String>,
    /// What the data path notes of this backend without the topology's
    /// lock: shared with its pooled server connections.
    pub cells: Arc<NodeCells>,
    /// Following a DCS: whether the member's agent reports it as a
    /// running standby streaming from the leader, and its lag behind the
    /// leader in bytes (None: no DCS, or no member key for this node).
    pub member: Option<(bool, u64)>,
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
            timeline: 0,
            failures: 0,
            select_cnt: 0,
            replication_delay: 0,
            replication: Replication::Unknown,
            last_error: None,
            cells: Arc::default(),
            member: None,
        }
    }

    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// A backend's counters the data path updates lock-free.
#[derive(Debug, Default)]
pub struct NodeCells {
    /// When the data path last read bytes from the backend (coarse clock
    /// ms, [`crate::clock`]).
    pub heard: AtomicU64,
    /// Transactions (or, in session mode, sessions) its server
    /// connections have served.
    pub xacts: AtomicU64,
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
        /// A primary's current timeline (0: not known).
        timeline: u32,
        replication: Replication,
    },
    Down(String),
}

/// Streaming replication as one node sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Replication {
    #[default]
    Unknown,
    /// A primary's WAL senders (pg_stat_replication).
    Senders(Vec<Sender>),
    /// A standby's WAL receiver (pg_stat_wal_receiver): its status, and
    /// the application name it streams under when the server shows it.
    Receiver {
        status: String,
        name: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sender {
    pub application_name: String,
    /// `streaming`, `catchup`, ...
    pub state: String,
    /// `async`, `sync`, `quorum`, `potential`
    pub sync_state: String,
}

/// A standby's (replication_state, replication_sync_state) for SHOW
/// POOL_NODES: from the primary's WAL sender that streams to it (matched
/// by application name, as Pgpool-II does), else the standby's own
/// receiver status and no sync state; empty for a primary or when unknown.
pub fn replication_columns(standby: &Replication, primary: &Replication) -> (String, String) {
    let Replication::Receiver { status, name } = standby else {
        return (String::new(), String::new());
    };
    if let (Some(name), Replication::Senders(senders)) = (name, primary) {
        // the primary shows application names cut to NAMEDATALEN - 1 bytes
        let mut cut = name.len().min(63);
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        let name = &name[..cut];
        let mut matching = senders.iter().filter(|s| s.application_name == name);
        if let (Some(s), None) = (matching.next(), matching.next()) {
            return (s.state.clone(), s.sync_state.clone());
        }
    }
    (status.clone(), String::new())
}

pub struct Topology {
    nodes: Mutex<Vec<Node>>,
    tx: watch::Sender<Option<Arc<Target>>>,
    epoch: AtomicU64,
    /// When set, the primary is decided by an external source (the DCS),
    /// and health checks only report state.
    external: std::sync::atomic::AtomicBool,
    /// A switchover's drain: while true, no transaction starts (checkouts
    /// wait), and those under way keep their server connections.
    held: watch::Sender<bool>,
    /// The same, read on every checkout without a lock.
    held_now: std::sync::atomic::AtomicBool,
}

impl Topology {
    pub fn new(backends: &[config::Backend]) -> Arc<Self> {
        let nodes = backends.iter().map(Node::new).collect();
        Arc::new(Topology {
            nodes: Mutex::new(nodes),
            tx: watch::channel(None).0,
            epoch: AtomicU64::new(0),
            external: false.into(),
            held: watch::channel(false).0,
            held_now: false.into(),
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

    /// Holds new transactions (a switchover's drain) or lets them go.
    /// Unlike a change of primary, a hold ends no transaction under way.
    pub fn set_held(&self, held: bool) {
        self.held.send_if_modified(|h| {
            if *h == held {
                return false;
            }
            *h = held;
            self.held_now.store(held, Ordering::Release);
            tracing::info!(
                held,
                "new transactions {}",
                if held {
                    "held: the primary is stepping down"
                } else {
                    "released"
                }
            );
            true
        });
    }

    pub fn held(&self) -> bool {
        self.held_now.load(Ordering::Acquire)
    }

    /// Waits up to `wait` for the hold to end; false if it did not.
    pub async fn until_released(&self, wait: std::time::Duration) -> bool {
        let mut rx = self.held.subscribe();
        tokio::time::timeout(wait, rx.wait_for(|h| !*h))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    pub fn nodes(&self) -> Vec<Node> {
        self.lock().clone()
    }

    /// Reads the nodes without copying them.
    pub fn with_nodes<R>(&self, f: impl FnOnce(&[Node]) -> R) -> R {
        f(&self.lock())
    }

    /// What the DCS members say of each node (by address): a running,
    /// streaming standby?, and its lag in bytes.
    pub fn set_members(&self, members: &[(String, bool, u64)]) {
        for n in self.lock().iter_mut() {
            let addr = n.addr();
            n.member = members
                .iter()
                .find(|(a, ..)| *a == addr)
                .map(|(_, ok, lag)| (*ok, *lag));
        }
    }

    /// Where the data path notes what it reads from backend `addr`.
    pub fn cells(&self, addr: &str) -> Option<Arc<NodeCells>> {
        self.lock()
            .iter()
            .find(|n| n.addr() == addr)
            .map(|n| n.cells.clone())
    }

    /// Whether the data path read from backend `addr` at or after coarse
    /// clock time `since_ms`.
    pub fn heard_since(&self, addr: &str, since_ms: u64) -> bool {
        self.cells(addr).is_some_and(|c| {
            let heard = c.heard.load(Ordering::Relaxed);
            heard != 0 && heard >= since_ms
        })
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
            let current = self.tx.borrow().as_ref().map(|t| t.addr.clone());
            let choice = choose_primary(&nodes, current.as_deref());
            drop(nodes);
            self.publish(choice);
        }
    }

    /// Records a health check result of the backend at `addr` and
    /// re-decides the primary. A backend that was up is marked down only
    /// after more than `max_retries` failed checks in a row.
    pub fn report(&self, addr: &str, probe: Probe, max_retries: u32) {
        let mut nodes = self.lock();
        let Some(n) = nodes.iter_mut().find(|n| n.addr() == addr) else {
            return;
        };
        let (status, role) = match &probe {
            Probe::Up { in_recovery, .. } => (
                NodeStatus::Up,
                if *in_recovery {
                    Role::Standby
                } else {
                    Role::Primary
                },
            ),
            Probe::Down(_) => {
                n.failures = n.failures.saturating_add(1);
                if n.status == NodeStatus::Up && n.failures <= max_retries {
                    (NodeStatus::Up, n.role)
                } else {
                    (NodeStatus::Down, n.role)
                }
            }
        };
        if status != n.status {
            n.last_status_change = SystemTime::now();
        }
        // A promotion is a running standby turning primary; a primary
        // coming back from down is not one (it may be a stale old primary).
        if role == Role::Primary && n.role == Role::Standby && n.status == NodeStatus::Up {
            n.primary_since = Some(Instant::now());
        }
        n.status = status;
        n.role = role;
        match probe {
            Probe::Up {
                replication_delay,
                timeline,
                replication,
                ..
            } => {
                n.failures = 0;
                n.replication_delay = replication_delay;
                n.timeline = timeline;
                n.replication = replication;
                n.last_error = None;
            }
            Probe::Down(e) => {
                n.replication = Replication::Unknown;
                n.last_error = Some(e);
            }
        }
        if self.external.load(Ordering::Acquire) {
            return;
        }
        let current = self.tx.borrow().as_ref().map(|t| t.addr.clone());
        let choice = choose_primary(&nodes, current.as_deref());
        drop(nodes);
        self.publish(choice);
    }

    /// Whether the primary comes from an external authority (the DCS).
    pub fn follows_external(&self) -> bool {
        self.external.load(Ordering::Acquire)
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
        match (&current, &choice) {
            (None, None) => return,
            // The same server: connections to it stay good (the epoch
            // stays); only its place in the backend list may have moved.
            (Some(t), Some((i, a))) if &*t.addr == a.as_str() => {
                if t.node != *i {
                    self.tx.send_replace(Some(Arc::new(Target {
                        node: *i,
                        addr: t.addr.clone(),
                        epoch: t.epoch,
                    })));
                }
                return;
            }
            _ => {}
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

/// The primary among healthy nodes that report not being in recovery.
/// When several do (a standby was promoted while the old primary still
/// runs, or an old primary was restarted as a primary), the one on the
/// newest timeline; among those the `current` one stays, else the one
/// seen promoted last.
pub fn choose_primary(nodes: &[Node], current: Option<&str>) -> Option<(usize, String)> {
    let up = || {
        nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.status == NodeStatus::Up && n.role == Role::Primary)
    };
    let newest = up().map(|(_, n)| n.timeline).max()?;
    let candidates = || up().filter(|(_, n)| n.timeline == newest);
    candidates()
        .find(|(_, n)| current.is_some_and(|c| n.addr() == c))
        .or_else(|| {
            // latest promotion; on a tie the first in the backend list
            candidates()
                .max_by(|(i, a), (j, b)| a.primary_since.cmp(&b.primary_since).then(j.cmp(i)))
        })
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

    fn up(in_recovery: bool, timeline: u32) -> Probe {
        Probe::Up {
            in_recovery,
            replication_delay: 0,
            timeline,
            replication: Replication::Unknown,
        }
    }

    #[test]
    fn standbys_are_matched_to_the_primary_s_senders_by_name() {
        let sender = |n: &str, sync: &str| Sender {
            application_name: n.into(),
            state: "streaming".into(),
            sync_state: sync.into(),
        };
        let primary = Replication::Senders(vec![sender("n1", "sync"), sender("n2", "async")]);
        let receiver = |name: Option<&str>| Replication::Receiver {
            status: "streaming".into(),
            name: name.map(Into::into),
        };
        let cols = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        let long = "n".repeat(70);
        let cut = Replication::Senders(vec![sender(&long[..63], "sync")]);
        assert_eq!(
            replication_columns(&receiver(Some(&long)), &cut),
            cols("streaming", "sync")
        );
        assert_eq!(
            replication_columns(&receiver(Some("n1")), &primary),
            cols("streaming", "sync")
        );
        assert_eq!(
            replication_columns(&receiver(Some("n2")), &primary),
            cols("streaming", "async")
        );
        // not found, not shown or not unique: the standby's own status only
        assert_eq!(
            replication_columns(&receiver(Some("n3")), &primary),
            cols("streaming", "")
        );
        assert_eq!(
            replication_columns(&receiver(None), &primary),
            cols("streaming", "")
        );
        let twins = Replication::Senders(vec![sender("w", "async"), sender("w", "sync")]);
        assert_eq!(
            replication_columns(&receiver(Some("w")), &twins),
            cols("streaming", "")
        );
        // a primary has none
        assert_eq!(replication_columns(&primary, &primary), cols("", ""));
        assert_eq!(
            replication_columns(&receiver(Some("n1")), &Replication::Unknown),
            cols("streaming", "")
        );
    }

    const A: &str = "127.0.0.1:5000";
    const B: &str = "127.0.0.1:5001";

    #[test]
    fn follows_promotion_and_bumps_epoch() {
        let t = Topology::new(&backends(2));
        assert!(t.primary().is_none());
        t.report(A, up(false, 1), 0);
        t.report(B, up(true, 0), 0);
        let p = t.primary().unwrap();
        assert_eq!((p.node, &*p.addr), (0, A));
        let e = p.epoch;
        // node 1 promoted while node 0 still answers: the newer timeline wins
        t.report(B, up(false, 2), 0);
        let p = t.primary().unwrap();
        assert_eq!(p.node, 1);
        assert!(p.epoch > e);
        t.report(A, Probe::Down("refused".into()), 0);
        assert_eq!(t.primary().unwrap().node, 1);
        t.report(B, Probe::Down("refused".into()), 0);
        assert!(t.primary().is_none());
    }

    #[test]
    fn a_restarted_old_primary_does_not_take_writes_back() {
        let t = Topology::new(&backends(2));
        t.report(A, up(false, 1), 0);
        t.report(B, up(true, 0), 0);
        t.report(A, Probe::Down("refused".into()), 0);
        t.report(B, up(false, 2), 0);
        assert_eq!(&*t.primary().unwrap().addr, B);
        let e = t.current_epoch();
        // A comes back as a primary on its old timeline
        t.report(A, up(false, 1), 0);
        assert_eq!(&*t.primary().unwrap().addr, B);
        assert_eq!(t.current_epoch(), e);
        // with the timeline unknown, the current primary stays
        t.report(A, up(false, 0), 0);
        t.report(B, up(false, 0), 0);
        assert_eq!(&*t.primary().unwrap().addr, B);
        assert_eq!(t.current_epoch(), e);
    }

    #[test]
    fn a_backend_is_down_only_after_the_retries() {
        let t = Topology::new(&backends(1));
        t.report(A, up(false, 1), 2);
        let e = t.current_epoch();
        t.report(A, Probe::Down("timeout".into()), 2);
        t.report(A, Probe::Down("timeout".into()), 2);
        assert_eq!(t.nodes()[0].status, NodeStatus::Up);
        assert_eq!(t.current_epoch(), e, "no change of primary yet");
        t.report(A, up(false, 1), 2);
        // the count starts again after a good check
        t.report(A, Probe::Down("timeout".into()), 2);
        t.report(A, Probe::Down("timeout".into()), 2);
        assert_eq!(t.nodes()[0].status, NodeStatus::Up);
        t.report(A, Probe::Down("timeout".into()), 2);
        assert_eq!(t.nodes()[0].status, NodeStatus::Down);
        assert!(t.primary().is_none());
        // a backend never seen up is down at its first failure
        let t = Topology::new(&backends(1));
        t.report(A, Probe::Down("refused".into()), 2);
        assert_eq!(t.nodes()[0].status, NodeStatus::Down);
    }

    #[test]
    fn reordering_backends_keeps_the_primary_and_its_connections() {
        let t = Topology::new(&backends(2));
        t.report(B, up(false, 1), 0);
        let p = t.primary().unwrap();
        assert_eq!(p.node, 1);
        let mut reordered = backends(2);
        reordered.reverse();
        t.set_backends(&reordered);
        let q = t.primary().unwrap();
        assert_eq!((q.node, &*q.addr, q.epoch), (0, B, p.epoch));
    }

    #[test]
    fn external_authority_overrides_health_checks() {
        let t = Topology::new(&backends(2));
        t.set_external_primary(Some(B));
        t.report(A, up(false, 1), 0);
        assert_eq!(t.primary().unwrap().node, 1);
        t.set_external_primary(None);
        assert!(t.primary().is_none());
    }
}
