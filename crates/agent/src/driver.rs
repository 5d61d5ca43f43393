//! The HA driver: the I/O around [`ha::decide`]. One pass reads the DCS
//! and PostgreSQL, decides, acts, and publishes this member.
use std::sync::{Arc, Mutex};
use std::time::Duration;

// tokio's clock: the same as std's, except in the timing tests, where
// it is paused and advanced by the test
use tokio::time::Instant;

use config::AgentConfig;
use dcs::{AnyDcs, Dcs, Key, Snapshot};
use ha::{Action, ClusterConfig, Local, Member, Pg, Role, Settings, View};
use tokio::sync::watch;

use crate::node::{Node, NodeError, Status};
use crate::traits::{Fencing, NodeOps};

/// Passes in a row a standby may fail to start, stay starting, or not
/// stream before it is rewound or re-cloned.
const STUCK_PASSES: u32 = 15;

/// What the REST API shows: this member and the cluster as last seen.
#[derive(Default)]
pub struct Shared {
    pub member: Mutex<Option<Member>>,
    pub leader: Mutex<Option<String>>,
    pub members: Mutex<Vec<Member>>,
    /// Failsafe: the last leader that asked us to confirm we follow it.
    pub failsafe_ping: Mutex<Option<(String, std::time::Instant)>>,
    /// Operations asked through the API; the last snapshot and pass.
    pub ops: crate::ops::Ops,
    /// A copy of the leader under way (reinit, re-clone): its progress.
    pub copy: Arc<pg::CopyProgress>,
    /// Pass durations and the lease's proof, for /metrics and /node.
    pub telemetry: crate::telemetry::Telemetry,
}

/// The agent of one node: its DCS, its PostgreSQL and its fence, real
/// ones in production ([`Agent::new`]), fakes in the loop's timing tests.
pub struct Agent<D = AnyDcs, N = Node, F = crate::fence::Fence> {
    pub(crate) cfg: AgentConfig,
    pub(crate) dcs: D,
    pub(crate) node: N,
    pub shared: Arc<Shared>,
    pub(crate) crash_restarts: u32,
    pub(crate) not_streaming_loops: u32,
    /// When this node last renewed (or took) the lease.
    pub(crate) last_renew: Option<Instant>,
    pub(crate) running_since: Option<Instant>,
    /// Failsafe mode: the DCS Failsafe key as last read.
    pub(crate) failsafe_key: Option<ha::failsafe::FailsafeKey>,
    /// Synchronous mode: the DCS Sync key as this pass read it.
    pub(crate) sync_key: Option<ha::sync::SyncKey>,
    /// Quorum mode: `synchronous_standby_names` in force, and the WAL
    /// position read after it was (see [`ha::quorum`]).
    pub(crate) quorum_since: Option<(String, u64)>,
    /// Failsafe mode, from the cluster config last read.
    pub(crate) failsafe: bool,
    /// The leader's last published WAL position.
    pub(crate) last_leader_lsn: Option<u64>,
    /// The lease TTL of the cluster config last read.
    pub(crate) lease_ttl: Duration,
    /// A failure that no further pass can mend (initdb refused): the loop
    /// ends with it.
    pub(crate) fatal: Option<String>,
    /// Checks of the local PostgreSQL in a row that got no answer.
    pub(crate) unanswered: u32,
    /// Stops PostgreSQL when the lease is not proved in time.
    pub(crate) fence: F,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Dcs(#[from] dcs::DcsError),
    #[error("{0}")]
    Other(String),
    /// Permanent: the agent stops with it (see [`crate::preflight`]).
    #[error("{0}")]
    Fatal(String),
}

impl Agent {
    /// Checks the machine first ([`crate::preflight`]): a permanent problem
    /// is an error that names its cause.
    pub async fn new(cfg: AgentConfig) -> Result<Agent, AgentError> {
        crate::preflight::check(&cfg).map_err(AgentError::Fatal)?;
        let dcs = dcs::open(&cfg.dcs, &cfg.cluster).await?;
        let node = Node::new(cfg.clone())?;
        let fence = crate::fence::Fence::new(&cfg.run_dir);
        let copy = node.copy.clone();
        let mut agent = Agent::with_parts(cfg, dcs, node, fence);
        if let Some(s) = Arc::get_mut(&mut agent.shared) {
            s.copy = copy;
        }
        Ok(agent)
    }
}

impl<D: Dcs, N: NodeOps, F: Fencing> Agent<D, N, F> {
    /// An agent of these parts, without the machine checks of [`Agent::new`].
    pub fn with_parts(cfg: AgentConfig, dcs: D, node: N, fence: F) -> Self {
        Agent {
            cfg,
            dcs,
            node,
            shared: Arc::new(Shared::default()),
            crash_restarts: 0,
            not_streaming_loops: 0,
            last_renew: None,
            running_since: None,
            sync_key: None,
            quorum_since: None,
            failsafe_key: None,
            failsafe: false,
            last_leader_lsn: None,
            lease_ttl: Duration::ZERO,
            fatal: None,
            unanswered: 0,
            fence,
        }
    }

    /// Runs the HA loop until `shutdown` turns true; then stops PostgreSQL
    /// (a primary gives its lease up first) and returns.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), AgentError> {
        let api = crate::api::serve(&self.cfg, self.shared.clone())
            .await
            .map_err(|e| AgentError::Other(format!("REST API on {}: {e}", self.cfg.api_listen)))?;
        let mut leader_rx = self.dcs.watch_leader();
        let mut log = crate::sentences::SentenceLog::default();
        loop {
            let started = std::time::Instant::now();
            let op = self.run_op().await;
            let sentence = self.run_once().await;
            let sentence = op.map(|o| format!("{o}; {sentence}")).unwrap_or(sentence);
            for line in log.lines(&sentence, std::time::Instant::now()) {
                tracing::info!(node = %self.cfg.name, "{line}");
            }
            self.publish(&sentence).await;
            self.shared.telemetry.record_pass(started.elapsed());
            if let Some(f) = self.fatal.take() {
                api.abort();
                let _ = self.dcs.delete_member(&self.cfg.name).await;
                return Err(AgentError::Fatal(f));
            }
            let loop_wait = self.cfg.loop_wait;
            let exited = self.node.exited();
            let op = self.shared.ops.wake.clone();
            tokio::select! {
                _ = op.notified() => {}
                _ = tokio::time::sleep(loop_wait) => {}
                _ = exited.notified() => tracing::info!(node = %self.cfg.name, "postmaster exited: acting at once"),
                r = leader_rx.changed() => { if r.is_err() { tokio::time::sleep(loop_wait).await; } }
                _ = shutdown.wait_for(|s| *s) => break,
            }
        }
        api.abort();
        tracing::info!(node = %self.cfg.name, "agent stopping: shutting PostgreSQL down");
        // Stop first: a clean shutdown sends all WAL to the standbys, and
        // only then may one of them take over.
        let r = self.node.stop("fast").await;
        self.fence.disarm();
        let _ = self.dcs.release_leader(&self.cfg.name).await;
        let _ = self.dcs.delete_member(&self.cfg.name).await;
        r.map_err(Into::into)
    }

    pub(crate) fn settings(&self, cc: &ClusterConfig) -> Settings {
        Settings {
            maximum_lag_on_failover: cc.maximum_lag_on_failover,
            synchronous_mode: cc.synchronous_mode,
            max_crash_restarts: self.cfg.max_crash_restarts,
            rewind_after_loops: STUCK_PASSES / 3,
        }
    }

    pub(crate) fn cluster_config(&self, snap: &Snapshot) -> ClusterConfig {
        snap.get(Key::Config)
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_else(|| self.bootstrap_config())
    }

    pub(crate) fn bootstrap_config(&self) -> ClusterConfig {
        let c = &self.cfg;
        ClusterConfig {
            ttl_ms: c.ttl.as_millis() as u64,
            loop_wait_ms: c.loop_wait.as_millis() as u64,
            maximum_lag_on_failover: c.maximum_lag_on_failover,
            synchronous_mode: match c.synchronous_mode {
                config::SyncMode::Off => ha::SyncMode::Off,
                config::SyncMode::On => ha::SyncMode::On,
                config::SyncMode::Quorum => ha::SyncMode::Quorum,
            },
            synchronous_mode_strict: c.synchronous_mode_strict,
            synchronous_node_count: c.synchronous_node_count,
            failsafe_mode: c.failsafe_mode,
            parameters: Default::default(),
        }
    }

    /// One pass of the HA loop; returns its sentence.
    pub async fn run_once(&mut self) -> String {
        let snap = match self.dcs.snapshot().await {
            Ok(s) => s,
            Err(e) => return self.dcs_unavailable(e).await,
        };
        self.shared.ops.saw(&snap);
        let mut members: Vec<Member> = snap
            .members
            .values()
            .filter_map(|v| Member::from_json(v))
            .collect();
        *self.shared.leader.lock().unwrap_or_else(|e| e.into_inner()) =
            snap.leader.as_ref().map(|l| l.name.clone());
        *self
            .shared
            .members
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = members.clone();
        let cc = self.cluster_config(&snap);
        self.lease_ttl = Duration::from_millis(cc.ttl_ms.max(1000));
        self.failsafe = cc.failsafe_mode;

        let leader = snap.leader.as_ref().map(|l| l.name.clone());
        let (pg, status) = match self.local_pg(leader.as_deref()).await {
            Ok(x) => x,
            Err(sentence) => return sentence,
        };
        let local = Local {
            name: self.cfg.name.clone(),
            pg,
            nofailover: self.cfg.nofailover,
            priority: self.cfg.priority,
            crash_restarts: self.crash_restarts,
            not_streaming_loops: self.not_streaming_loops,
        };
        let leader_status = snap
            .get(Key::Status)
            .and_then(ha::records::LeaderStatus::parse);
        let last_leader_lsn = leader_status.as_ref().map(|s| s.lsn);
        self.last_leader_lsn = last_leader_lsn;
        let last_leader = leader_status.map(|s| s.leader).filter(|l| !l.is_empty());
        self.failsafe_key = snap
            .get(Key::Failsafe)
            .and_then(ha::failsafe::FailsafeKey::parse)
            .filter(|_| cc.failsafe_mode);
        // read from the DCS every pass (also right after a restart)
        self.sync_key = snap.get(Key::Sync).and_then(ha::sync::SyncKey::parse);
        let sync_standby = self.sync_key.as_ref().and_then(|k| k.sync_standby.clone());
        let quorum_key = self
            .sync_key
            .clone()
            .filter(|k| k.sync_standby.is_none() && cc.synchronous_mode == ha::SyncMode::Quorum);
        let voter_lsns = match (&quorum_key, &local.pg) {
            // a candidate asks the other voters now: their published
            // positions may be a loop old
            (Some(k), Pg::Running { primary: false, .. })
                if snap.leader.is_none() && k.voters.contains(&self.cfg.name) =>
            {
                let voters: Vec<&Member> = members
                    .iter()
                    .filter(|m| m.name != self.cfg.name && k.voters.contains(&m.name))
                    .collect();
                crate::peers::flushed_lsns(&self.cfg.superuser, &voters).await
            }
            _ => Vec::new(),
        };
        let failsafe_leader = self
            .shared
            .failsafe_ping
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .filter(|(_, t)| t.elapsed() < self.cfg.ttl)
            .map(|(l, _)| l);
        let switchover = crate::ops::due_switchover(&snap);
        if switchover.is_some() && matches!(local.pg, Pg::Running { primary: true, .. }) {
            // A leader choosing a successor compares its own position with
            // its standbys' as it sees them now: the ones they published
            // are up to a pass old, megabytes behind under load.
            if let Ok(rows) = self.node.replication().await {
                for m in members.iter_mut() {
                    if let Some(r) = rows.iter().find(|r| r.name == m.name) {
                        m.lsn = m.lsn.max(r.flush_lsn);
                    }
                }
            }
        }
        let view = View {
            switchover: switchover.as_ref(),
            failsafe_leader: failsafe_leader.as_deref(),
            failsafe: self.failsafe_key.as_ref().filter(|_| snap.leader.is_none()),
            last_leader: last_leader.as_deref(),
            initialized: snap.initialize.is_some(),
            leader: snap.leader.as_ref().map(|l| l.name.as_str()),
            members: &members,
            paused: snap.get(Key::Pause).is_some(),
            last_leader_lsn,
            sync_standby: sync_standby.as_deref(),
            quorum: quorum_key.as_ref(),
            voter_lsns: &voter_lsns,
        };
        let decision = ha::decide(&view, &local, &self.settings(&cc));
        match self
            .act(&decision.action, &members, &cc, status.as_ref())
            .await
        {
            Ok(extra) if extra.is_empty() => decision.reason,
            Ok(extra) => format!("{}; {extra}", decision.reason),
            Err(AgentError::Fatal(e)) => {
                self.fatal = Some(e.clone());
                format!("{} — failed: {e}", decision.reason)
            }
            Err(e) => {
                if matches!(decision.action, Action::StartReplica { .. }) {
                    self.not_streaming_loops += 1;
                }
                format!("{} — failed: {e}", decision.reason)
            }
        }
    }

    /// The DCS cannot be read. A primary that can no longer be sure it
    /// holds the lease stops accepting writes before the lease expires.
    /// The DCS cannot be read (or a renewal failed). A primary that can no
    /// longer be sure it holds the lease stops accepting writes before the
    /// lease can expire: its last renewal plus the lease TTL, less a margin
    /// for DCS timeouts and the stop itself. Unknown (no renewal seen by this
    /// agent, e.g. just restarted) counts as expiring.
    pub(crate) async fn dcs_unavailable(&mut self, e: dcs::DcsError) -> String {
        let ttl = self.lease_ttl;
        let margin = self.cfg.loop_wait * 2;
        let expiring = self.last_renew.is_none_or(|t| t.elapsed() + margin >= ttl);
        if !expiring || !self.node.is_running() {
            return format!("DCS unavailable: {e}");
        }
        // Primary by its own word, or, when it does not answer, by the
        // absence of standby.signal.
        let primary = match self.node.status().await {
            Ok(st) => !st.in_recovery,
            Err(_) => !self.node.is_standby_dir(),
        };
        if !primary {
            return format!("DCS unavailable: {e}");
        }
        if self.failsafe && self.last_renew.is_some() {
            // Failsafe: stay primary while every member this leader listed
            // in the DCS (and at least one) confirms it still follows it.
            let key = self
                .failsafe_key
                .clone()
                .filter(|k| k.leader == self.cfg.name);
            let listed = key.as_ref().map(|k| k.members.len()).unwrap_or(0);
            let mut confirmed = 0;
            for m in key.iter().flat_map(|k| k.members.iter()) {
                if crate::api::failsafe_confirm(&self.cfg, &m.api_url, &self.cfg.name).await {
                    confirmed += 1;
                }
            }
            if key.is_some_and(|k| k.holds(confirmed)) {
                // keep going until the next check
                self.proved(Instant::now() - ttl + margin + self.cfg.loop_wait);
                return format!(
                    "DCS unavailable ({e}); failsafe mode: all {confirmed} listed members confirmed they follow this primary, staying primary"
                );
            }
            tracing::warn!(
                confirmed,
                members = listed,
                "failsafe: not every member confirmed"
            );
        }
        self.last_renew = None;
        let r = self.node.stop("fast").await;
        self.unproved();
        format!(
            "DCS unavailable ({e}) and the lease may expire: demoted (stopped PostgreSQL){}",
            r.err()
                .map(|e| format!(", stop failed: {e}"))
                .unwrap_or_default()
        )
    }

    pub(crate) async fn local_pg(
        &mut self,
        leader: Option<&str>,
    ) -> Result<(Pg, Option<Status>), String> {
        if !self.node.has_data() {
            self.running_since = None;
            return Ok((Pg::NoData, None));
        }
        if self.node.is_running() {
            return match self.node.status().await {
                Ok(st) => {
                    self.unanswered = 0;
                    self.running_since.get_or_insert_with(Instant::now);
                    if st.in_recovery && !st.streaming {
                        self.not_streaming_loops += 1;
                    } else {
                        self.not_streaming_loops = 0;
                    }
                    Ok((
                        Pg::Running {
                            primary: !st.in_recovery,
                            lsn: st.lsn,
                            timeline: st.timeline,
                            following: st.following.clone(),
                            streaming: st.streaming,
                        },
                        Some(st),
                    ))
                }
                Err(e @ NodeError::NoAnswer(_)) => {
                    self.unanswered += 1;
                    if self.unanswered >= self.cfg.pg_check_misses {
                        let killed = self.node.kill();
                        let why = format!(
                            "PostgreSQL is hung ({e}, {} checks in a row): stopped it with SIGKILL ({killed} processes)",
                            self.unanswered
                        );
                        return Err(self.fenced(leader, why).await);
                    }
                    Err(format!(
                        "PostgreSQL did not answer ({e}; {} of {} misses before it is fenced)",
                        self.unanswered, self.cfg.pg_check_misses
                    ))
                }
                Err(e) => {
                    // an error is an answer, but not a sign of health: a
                    // count of misses stands until a check succeeds
                    let starting = e.to_string().contains("starting up");
                    if starting && leader.is_some_and(|l| l != self.cfg.name) {
                        // a standby that stays starting is stopped, then
                        // rewound or re-cloned (ha::decide)
                        self.not_streaming_loops += 1;
                        if self.not_streaming_loops >= STUCK_PASSES {
                            let _ = self.node.stop("fast").await;
                            return Err(format!(
                                "PostgreSQL stayed starting up for {} passes: stopped it to rewind or re-clone",
                                self.not_streaming_loops
                            ));
                        }
                    }
                    Err(format!("PostgreSQL is running but not answering yet ({e})"))
                }
            };
        }
        self.running_since = None;
        if self.unanswered > 0 {
            // it exited while hung: the fence stopped it
            let why =
                "PostgreSQL hung and the fence stopped it before the lease could expire".into();
            return Err(self.fenced(leader, why).await);
        }
        let state = self.node.cluster_state().await.unwrap_or_default();
        let was_primary =
            !self.node.is_standby_dir() && (state == "in production" || state == "shut down");
        let crashed =
            self.node.crashed() || state == "in production" || state == "in archive recovery";
        Ok((
            if crashed {
                Pg::Crashed { was_primary }
            } else {
                Pg::Stopped { was_primary }
            },
            None,
        ))
    }

    /// PostgreSQL hung (it missed `pg_check_misses` checks in a row, or
    /// the fence stopped it meanwhile) and is now stopped with SIGKILL, so
    /// it can never take a write when it would have resumed. A leader gives
    /// the lease up so that a standby takes over at once rather than after
    /// the TTL, and does not restart in place where it just hung; the loop
    /// then brings the node back as a standby of the new leader (or as
    /// primary again when no standby can take over).
    pub(crate) async fn fenced(&mut self, leader: Option<&str>, why: String) -> String {
        self.fence.disarm();
        self.unanswered = 0;
        let mut s = why;
        if leader == Some(self.cfg.name.as_str()) {
            self.last_renew = None;
            match self.dcs.release_leader(&self.cfg.name).await {
                Ok(_) => s.push_str("; released the lease for a failover"),
                Err(e) => s.push_str(&format!("; releasing the lease failed ({e}): it expires")),
            }
        }
        s
    }

    /// The lease was proved by a request sent at `sent`: the loop and the
    /// fence both count from then (the DCS counts from when it got it,
    /// later).
    pub(crate) fn proved(&mut self, sent: Instant) {
        self.last_renew = Some(sent);
        self.shared
            .telemetry
            .lease_proved(sent.into_std(), self.lease_ttl);
        if let Some(pid) = self.node.postmaster() {
            if let Err(e) = self.fence.arm(pid, self.lease_ttl, sent.elapsed()) {
                tracing::warn!(error = %e, "cannot feed the fence");
            }
        }
    }

    /// The lease is not ours (any more): nothing to prove.
    pub(crate) fn unproved(&mut self) {
        self.last_renew = None;
        self.shared.telemetry.lease_dropped();
        self.fence.disarm();
    }

    /// Renews the lease; a success proves it.
    pub(crate) async fn renew(&mut self, ttl: Duration) -> Result<bool, dcs::DcsError> {
        let sent = Instant::now();
        let ok = self.dcs.renew_leader(&self.cfg.name, ttl).await?;
        if ok {
            self.proved(sent);
        }
        Ok(ok)
    }

    /// Takes the lease if free; a success proves it.
    pub(crate) async fn take(
        &mut self,
        ttl: Duration,
    ) -> Result<Option<dcs::Leader>, dcs::DcsError> {
        let sent = Instant::now();
        let l = self.dcs.take_leader(&self.cfg.name, ttl).await?;
        if l.is_some() {
            self.proved(sent);
        }
        Ok(l)
    }

    pub(crate) async fn publish(&mut self, sentence: &str) {
        let running = self.node.is_running() && self.unanswered == 0;
        let st = if running {
            self.node.status().await.ok()
        } else {
            None
        };
        let role = match (&st, self.node.has_data()) {
            (_, false) => Role::Uninitialized,
            (Some(s), _) if !s.in_recovery => Role::Primary,
            (Some(_), _) => Role::Replica,
            (None, _) => Role::Stopped,
        };
        let m = Member {
            name: self.cfg.name.clone(),
            host: self.cfg.host.clone(),
            port: self.cfg.pg_port,
            api_url: format!(
                "{}://{}",
                if self.cfg.api_tls.is_some() {
                    "https"
                } else {
                    "http"
                },
                self.cfg.api_listen
            ),
            role,
            running: st.is_some(),
            timeline: st.as_ref().map(|s| s.timeline).unwrap_or(0),
            lsn: st.as_ref().map(|s| s.lsn).unwrap_or(0),
            replayed_lsn: st.as_ref().map(|s| s.replayed_lsn).unwrap_or(0),
            streaming: st.as_ref().is_some_and(|s| s.streaming),
            lag: match (&st, self.last_leader_lsn) {
                (Some(s), Some(l)) if s.in_recovery => Some(l.saturating_sub(s.lsn)),
                _ => None,
            },
            nofailover: self.cfg.nofailover,
            priority: self.cfg.priority,
            pending_restart: st.as_ref().is_some_and(|s| s.pending_restart),
            last_action: sentence.to_owned(),
        };
        if let Err(e) = self
            .dcs
            .put_member(&self.cfg.name, &m.to_json(), self.cfg.ttl)
            .await
        {
            tracing::warn!(error = %e, "cannot publish member state");
        }
        *self.shared.member.lock().unwrap_or_else(|e| e.into_inner()) = Some(m);
    }
}

pub(crate) fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}
