//! What the REST API and the HA loop share beyond the member state: the
//! last DCS snapshot and pass, and the operations an operator asks of this
//! node (restart, reload, reinitialize). Those are carried out by the loop
//! between two passes, never beside one of its actions.
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dcs::{Dcs, Key, Snapshot};
use tokio::sync::{oneshot, Notify};

use crate::driver::{Agent, AgentError};
use crate::traits::{Fencing, NodeOps};

/// An operation on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Stop and start PostgreSQL in its role (a leader keeps its lease).
    Restart,
    /// pg_reload_conf().
    Reload,
    /// A standby: a fresh copy of the leader (pg_basebackup), then follow it.
    Reinit,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Restart => "restart",
            Op::Reload => "reload",
            Op::Reinit => "reinitialization",
        }
    }
}

type Reply = oneshot::Sender<Result<String, String>>;

/// Shared by the loop and the API (a field of [`crate::driver::Shared`]).
#[derive(Default)]
pub struct Ops {
    queue: Mutex<Option<(Op, Reply)>>,
    /// Wakes the loop when an operation is queued.
    pub(crate) wake: Arc<Notify>,
    seen: Mutex<Option<Snapshot>>,
    last_pass: Mutex<Option<Instant>>,
    /// The last reinitialization's outcome (its sentence, or why it failed).
    last_reinit: Mutex<Option<Result<String, String>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

impl Ops {
    /// Queues `op`; the answer comes when the loop has done it. Err when
    /// another operation waits already.
    pub fn submit(&self, op: Op) -> Result<oneshot::Receiver<Result<String, String>>, String> {
        let mut q = lock(&self.queue);
        if let Some((other, _)) = q.as_ref() {
            return Err(format!(
                "a {} of this node is already under way",
                other.name()
            ));
        }
        let (tx, rx) = oneshot::channel();
        *q = Some((op, tx));
        drop(q);
        self.wake.notify_one();
        Ok(rx)
    }
    /// Whether a reinitialization waits or runs, and how the last ended.
    pub fn reinit_state(&self) -> (bool, Option<Result<String, String>>) {
        let queued = lock(&self.queue)
            .as_ref()
            .is_some_and(|(op, _)| *op == Op::Reinit);
        (queued, lock(&self.last_reinit).clone())
    }
    /// The DCS as the loop last read it.
    pub fn snapshot(&self) -> Option<Snapshot> {
        lock(&self.seen).clone()
    }
    /// When the loop last started a pass.
    pub fn last_pass(&self) -> Option<Instant> {
        *lock(&self.last_pass)
    }
    pub(crate) fn saw(&self, snap: &Snapshot) {
        *lock(&self.seen) = Some(snap.clone());
    }
}

/// The request in the DCS Failover key, if its time has come and it has
/// not expired.
pub(crate) fn due_switchover(snap: &Snapshot) -> Option<ha::switchover::Switchover> {
    let now = now_ms();
    snap.get(Key::Failover)
        .and_then(ha::switchover::Switchover::parse)
        .filter(|r| r.due(now) && !r.expired(now))
}

impl<D: Dcs, N: NodeOps, F: Fencing> Agent<D, N, F> {
    /// Before each pass: drops an expired switchover request (the leader
    /// does), then carries out a queued operation; its sentence goes
    /// before the pass's (the pass always follows: a leader renews its
    /// lease however many operations are asked).
    pub(crate) async fn run_op(&mut self) -> Option<String> {
        *lock(&self.shared.ops.last_pass) = Some(Instant::now());
        self.drop_expired_request().await;
        let (op, reply) = lock(&self.shared.ops.queue).take()?;
        let r = match op {
            Op::Restart => self.restart_op().await,
            Op::Reload => self
                .node
                .reload()
                .await
                .map(|()| "reloaded PostgreSQL's configuration (requested)".to_owned())
                .map_err(AgentError::from),
            Op::Reinit => {
                *lock(&self.shared.ops.last_reinit) = None;
                self.reinit_op().await
            }
        };
        let r = r.map_err(|e| format!("{} failed: {e}", op.name()));
        if op == Op::Reinit {
            *lock(&self.shared.ops.last_reinit) = Some(r.clone());
        }
        let sentence = match &r {
            Ok(s) | Err(s) => s.clone(),
        };
        if r.is_ok() && op != Op::Reload {
            let kind = match op {
                Op::Reinit => ha::history::Kind::Reinit,
                _ => ha::history::Kind::Restart,
            };
            self.record_op(kind).await;
        }
        let _ = reply.send(r);
        Some(sentence)
    }

    fn leads(&self) -> bool {
        lock(&self.shared.leader).as_deref() == Some(self.cfg.name.as_str())
    }

    async fn drop_expired_request(&mut self) {
        let Some(snap) = self.shared.ops.snapshot() else {
            return;
        };
        let expired = snap
            .get(Key::Failover)
            .and_then(ha::switchover::Switchover::parse)
            .is_some_and(|r| r.expired(now_ms()));
        if expired && self.leads() {
            tracing::warn!("a switchover/failover request expired: removed");
            let _ = self.dcs.put(Key::Failover, None).await;
        }
    }

    /// Stops and starts PostgreSQL in its role; a leader renews its lease
    /// before and after, so it stays the leader throughout.
    async fn restart_op(&mut self) -> Result<String, AgentError> {
        if !self.node.has_data() {
            return Err(AgentError::Other("this node has no data yet".into()));
        }
        let snap = self.shared.ops.snapshot().unwrap_or_default();
        let cc = self.cluster_config(&snap);
        let ttl = Duration::from_millis(cc.ttl_ms.max(1000));
        if self.leads() {
            if !self.renew(ttl).await? {
                return Err(AgentError::Other(
                    "this node lost the lease: not restarting".into(),
                ));
            }
            self.node.stop("fast").await?;
            self.start_primary(&cc).await?;
            self.keep_lease_or_stop(ttl, "the restart").await?;
            return Ok("restarted PostgreSQL as primary (requested); kept the lease".into());
        }
        let leader = lock(&self.shared.leader).clone();
        let members = lock(&self.shared.members).clone();
        let target = leader
            .as_deref()
            .and_then(|l| members.iter().find(|m| m.name == l))
            .map(|m| (m.host.clone(), m.port));
        self.node.stop("fast").await?;
        self.start_replica(target.as_ref().map(|(h, p)| (h.as_str(), *p)), &cc)
            .await?;
        Ok("restarted PostgreSQL as a standby (requested)".into())
    }

    /// A fresh copy of the leader. The data directory is replaced only
    /// once the copy is complete.
    async fn reinit_op(&mut self) -> Result<String, AgentError> {
        if self.leads() {
            return Err(AgentError::Other(
                "this node is the leader: switch over first".into(),
            ));
        }
        // The DCS as it is now: the last pass's reading can be a loop
        // old, from before a new leader published itself as primary
        // (a reinit asked right after a switchover).
        let fresh = tokio::time::timeout(Duration::from_secs(5), self.dcs.snapshot()).await;
        let (leader, members) = match fresh {
            Ok(Ok(snap)) => (
                snap.leader.as_ref().map(|l| l.name.clone()),
                snap.members
                    .values()
                    .filter_map(|v| ha::Member::from_json(v))
                    .collect(),
            ),
            _ => (
                lock(&self.shared.leader).clone(),
                lock(&self.shared.members).clone(),
            ),
        };
        let Some(l) = leader
            .as_deref()
            .and_then(|l| members.iter().find(|m| m.name == l))
            .filter(|m| m.running && m.role == ha::Role::Primary)
            .cloned()
        else {
            return Err(AgentError::Other("no running leader to copy from".into()));
        };
        let snap = self.shared.ops.snapshot().unwrap_or_default();
        let cc = self.cluster_config(&snap);
        self.node.stop("fast").await?;
        self.node.clone_from(&l.host, l.port).await?;
        self.start_replica(Some((&l.host, l.port)), &cc).await?;
        Ok(format!(
            "reinitialized from {} with pg_basebackup (requested); started as its standby",
            l.name
        ))
    }

    async fn record_op(&self, kind: ha::history::Kind) {
        let e = ha::history::Entry {
            kind,
            at_ms: now_ms(),
            epoch: None,
            from: None,
            new_leader: None,
            member: Some(self.cfg.name.clone()),
            reason: Some("requested through the REST API".into()),
            lsn: None,
            timeline: None,
        };
        self.append_history(e).await;
    }

    /// Appends to the History key (compare-and-set, a few tries).
    pub(crate) async fn append_history(&self, e: ha::history::Entry) {
        for _ in 0..5 {
            let Ok(snap) = self.dcs.snapshot().await else {
                return;
            };
            let old = snap.get(Key::History).map(str::to_owned);
            let new = ha::history::append(old.as_deref(), e.clone());
            if self
                .dcs
                .compare_and_set(Key::History, old.as_deref(), &new)
                .await
                .unwrap_or(false)
            {
                return;
            }
        }
    }
}
