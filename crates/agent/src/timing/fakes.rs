//! Fakes for the loop's timing tests: a DCS in memory whose leases expire
//! by tokio's (paused) clock and whose calls can be slowed or failed, a
//! PostgreSQL whose promotion and checkpoint take as long as the test
//! says, and a fence that records what it was told.
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dcs::{Dcs, DcsError, Key, Leader, Snapshot};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::node::{NodeError, Status};
use crate::traits::{Fencing, NodeOps};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Default)]
pub struct DcsState {
    pub leader: Option<(String, u64, Instant)>,
    pub members: BTreeMap<String, String>,
    pub values: BTreeMap<&'static str, String>,
    pub epoch: u64,
    /// Each renewal: when it was sent, and whether it kept the lease.
    pub renewals: Vec<(Instant, bool)>,
    /// Knobs.
    pub renew_delay: Duration,
    /// Renewals from this one on (counting from 0) are refused, as if
    /// another node held the lease.
    pub refuse_from: Option<usize>,
    pub unavailable: bool,
}

#[derive(Clone)]
pub struct FakeDcs {
    pub state: Arc<Mutex<DcsState>>,
    leader_tx: Arc<watch::Sender<Option<Leader>>>,
}

impl FakeDcs {
    pub fn new() -> FakeDcs {
        FakeDcs {
            state: Arc::default(),
            leader_tx: Arc::new(watch::channel(None).0),
        }
    }
    pub fn with<T>(&self, f: impl FnOnce(&mut DcsState) -> T) -> T {
        f(&mut lock(&self.state))
    }
    /// The unexpired lease holder now.
    pub fn holder(&self) -> Option<String> {
        self.with(|s| {
            s.leader
                .clone()
                .filter(|(_, _, exp)| *exp > Instant::now())
                .map(|(n, _, _)| n)
        })
    }
    fn check(&self) -> Result<(), DcsError> {
        if self.with(|s| s.unavailable) {
            return Err(DcsError::Unavailable("the fake DCS is down".into()));
        }
        Ok(())
    }
}

impl Dcs for FakeDcs {
    async fn snapshot(&self) -> Result<Snapshot, DcsError> {
        self.check()?;
        let now = Instant::now();
        Ok(self.with(|s| Snapshot {
            initialize: Some("a".into()),
            leader: s
                .leader
                .clone()
                .filter(|(_, _, exp)| *exp > now)
                .map(|(name, epoch, _)| Leader { name, epoch }),
            members: s.members.clone(),
            values: s.values.clone(),
            ..Snapshot::default()
        }))
    }
    async fn initialize(&self, _: &str) -> Result<bool, DcsError> {
        Ok(false)
    }
    async fn cancel_initialize(&self, _: &str) -> Result<(), DcsError> {
        Ok(())
    }
    async fn take_leader(&self, name: &str, ttl: Duration) -> Result<Option<Leader>, DcsError> {
        self.check()?;
        let now = Instant::now();
        Ok(self.with(|s| {
            if s.leader.as_ref().is_some_and(|(_, _, exp)| *exp > now) {
                return None;
            }
            s.epoch += 1;
            s.leader = Some((name.to_owned(), s.epoch, now + ttl));
            Some(Leader {
                name: name.to_owned(),
                epoch: s.epoch,
            })
        }))
    }
    async fn renew_leader(&self, name: &str, ttl: Duration) -> Result<bool, DcsError> {
        let sent = Instant::now();
        let delay = self.with(|s| s.renew_delay);
        tokio::time::sleep(delay).await;
        self.check()?;
        // the DCS counts the TTL from when the request arrives
        let now = Instant::now();
        Ok(self.with(|s| {
            let refused = s.refuse_from.is_some_and(|n| s.renewals.len() >= n);
            let ours = !refused
                && s.leader
                    .as_ref()
                    .is_some_and(|(n, _, exp)| n == name && *exp > now);
            if ours {
                if let Some(l) = s.leader.as_mut() {
                    l.2 = now + ttl;
                }
            }
            s.renewals.push((sent, ours));
            ours
        }))
    }
    async fn release_leader(&self, name: &str) -> Result<(), DcsError> {
        self.with(|s| {
            if s.leader.as_ref().is_some_and(|(n, _, _)| n == name) {
                s.leader = None;
            }
        });
        Ok(())
    }
    async fn put_member(&self, name: &str, value: &str, _: Duration) -> Result<(), DcsError> {
        self.check()?;
        self.with(|s| s.members.insert(name.to_owned(), value.to_owned()));
        Ok(())
    }
    async fn delete_member(&self, name: &str) -> Result<(), DcsError> {
        self.with(|s| s.members.remove(name));
        Ok(())
    }
    // The agent's loop uses no named leases nor proxy keys.
    async fn take_lease(&self, _: &str, _: &str, _: Duration) -> Result<Option<Leader>, DcsError> {
        Err(DcsError::Unavailable(
            "the fake DCS has no named leases".into(),
        ))
    }
    async fn renew_lease(&self, _: &str, _: &str, _: Duration) -> Result<bool, DcsError> {
        Err(DcsError::Unavailable(
            "the fake DCS has no named leases".into(),
        ))
    }
    async fn release_lease(&self, _: &str, _: &str) -> Result<(), DcsError> {
        Ok(())
    }
    async fn put_proxy(&self, _: &str, _: &str, _: Duration) -> Result<(), DcsError> {
        Ok(())
    }
    async fn delete_proxy(&self, _: &str) -> Result<(), DcsError> {
        Ok(())
    }
    async fn put(&self, key: Key, value: Option<&str>) -> Result<(), DcsError> {
        self.check()?;
        self.with(|s| match value {
            Some(v) => s.values.insert(key.name(), v.to_owned()),
            None => s.values.remove(key.name()),
        });
        Ok(())
    }
    async fn compare_and_set(
        &self,
        key: Key,
        expected: Option<&str>,
        value: &str,
    ) -> Result<bool, DcsError> {
        self.check()?;
        Ok(self.with(|s| {
            if s.values.get(key.name()).map(String::as_str) != expected {
                return false;
            }
            s.values.insert(key.name(), value.to_owned());
            true
        }))
    }
    fn watch_leader(&self) -> watch::Receiver<Option<Leader>> {
        self.leader_tx.subscribe()
    }
}

#[derive(Default)]
pub struct PgState {
    pub running: bool,
    pub in_recovery: bool,
    pub lsn: u64,
    /// When a requested promotion ends.
    pub promoted_at: Option<Instant>,
    /// Knobs: how long a promotion and the checkpoint after it take.
    pub promote_takes: Duration,
    pub checkpoint_takes: Duration,
    /// What happened, and when.
    pub stops: Vec<Instant>,
}

#[derive(Clone, Default)]
pub struct FakeNode {
    pub state: Arc<Mutex<PgState>>,
    exited: Arc<Notify>,
}

impl FakeNode {
    pub fn with<T>(&self, f: impl FnOnce(&mut PgState) -> T) -> T {
        f(&mut lock(&self.state))
    }
    pub fn is_running_now(&self) -> bool {
        self.with(|s| s.running)
    }
    /// Writable now: running and out of recovery.
    pub fn writable(&self) -> bool {
        self.with(|s| {
            s.running && !s.in_recovery && s.promoted_at.is_none_or(|t| t <= Instant::now())
        })
    }
}

impl NodeOps for FakeNode {
    fn has_data(&self) -> bool {
        true
    }
    fn is_running(&self) -> bool {
        self.with(|s| s.running)
    }
    fn is_standby_dir(&self) -> bool {
        self.with(|s| s.in_recovery)
    }
    fn postmaster(&self) -> Option<u32> {
        self.is_running().then_some(4242)
    }
    fn crashed(&self) -> bool {
        false
    }
    fn exited(&self) -> Arc<Notify> {
        self.exited.clone()
    }
    async fn cluster_state(&self) -> Option<String> {
        Some("shut down".into())
    }
    async fn checkpoint_timeline(&self) -> Option<u32> {
        Some(1)
    }
    async fn checkpoint_lsn(&self) -> Option<u64> {
        Some(self.with(|s| s.lsn))
    }
    fn write_conf(
        &self,
        _: Option<&str>,
        _: Option<&str>,
        _: &BTreeMap<String, String>,
    ) -> Result<bool, NodeError> {
        Ok(false)
    }
    fn conninfo(&self, host: &str, port: u16) -> String {
        format!("host={host} port={port}")
    }
    fn set_standby(&self, on: bool) -> Result<(), NodeError> {
        self.with(|s| s.in_recovery = on);
        Ok(())
    }
    async fn initdb(&self) -> Result<(), NodeError> {
        Ok(())
    }
    fn wipe(&self) -> Result<(), NodeError> {
        Ok(())
    }
    async fn clone_from(&self, _: &str, _: u16) -> Result<(), NodeError> {
        Ok(())
    }
    async fn start(&mut self, _: Duration) -> Result<(), NodeError> {
        self.with(|s| s.running = true);
        Ok(())
    }
    async fn stop(&mut self, _: &str) -> Result<(), NodeError> {
        // as the real one: stopping a stopped PostgreSQL does nothing
        self.with(|s| {
            if s.running {
                s.running = false;
                s.stops.push(Instant::now());
            }
        });
        Ok(())
    }
    fn kill(&mut self) -> usize {
        self.with(|s| s.running = false);
        1
    }
    async fn execute(&mut self, _: &str) -> Result<(), NodeError> {
        Ok(())
    }
    async fn status(&mut self) -> Result<Status, NodeError> {
        let writable = self.writable();
        self.with(|s| {
            if !s.running {
                return Err(NodeError::Sql("not running".into()));
            }
            Ok(Status {
                in_recovery: !writable,
                lsn: s.lsn,
                replayed_lsn: s.lsn,
                timeline: 1,
                streaming: false,
                following: None,
                pending_restart: false,
            })
        })
    }
    async fn reload(&mut self) -> Result<(), NodeError> {
        Ok(())
    }
    async fn replication(&mut self) -> Result<Vec<ha::quorum::Streaming>, NodeError> {
        Ok(Vec::new())
    }
    async fn ensure_slots(&mut self, _: &[String]) -> Result<(), NodeError> {
        Ok(())
    }
    async fn open_transactions(&mut self) -> Result<u64, NodeError> {
        Ok(0)
    }
    async fn request_promotion(&mut self) -> Result<(), NodeError> {
        self.with(|s| {
            s.in_recovery = false;
            s.promoted_at = Some(Instant::now() + s.promote_takes);
        });
        Ok(())
    }
    fn until_promoted(
        &self,
        limit: Duration,
    ) -> impl Future<Output = Result<(), NodeError>> + Send + 'static {
        let at = self.with(|s| s.promoted_at);
        async move {
            let Some(at) = at else { return Ok(()) };
            tokio::time::timeout(limit, tokio::time::sleep_until(at))
                .await
                .map_err(|_| NodeError::Other("the promotion did not finish".into()))
        }
    }
    fn checkpoint(&self) -> impl Future<Output = ()> + Send + 'static {
        let takes = self.with(|s| s.checkpoint_takes);
        tokio::time::sleep(takes)
    }
    async fn checkpoint_on(&self, _: &str, _: u16) -> Result<(bool, u32), NodeError> {
        Ok((false, 2))
    }
    async fn recover_single_user(&self) -> Result<(), NodeError> {
        Ok(())
    }
    async fn rewind(&self, _: &str, _: u16) -> Result<String, NodeError> {
        Ok(String::new())
    }
}

/// What the fence was told: each arm as (when, the moment it would stop
/// PostgreSQL), and disarms.
#[derive(Clone, Default)]
pub struct FakeFence {
    pub arms: Arc<Mutex<Vec<(Instant, Instant)>>>,
    pub disarms: Arc<Mutex<Vec<Instant>>>,
}

impl Fencing for FakeFence {
    fn arm(&self, _: u32, valid: Duration, sent_ago: Duration) -> std::io::Result<()> {
        let now = Instant::now();
        let deadline = now + valid.saturating_sub(crate::fence::MARGIN) - sent_ago;
        lock(&self.arms).push((now, deadline));
        Ok(())
    }
    fn disarm(&self) {
        lock(&self.disarms).push(Instant::now());
    }
}
