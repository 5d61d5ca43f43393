//! The HA driver: the I/O around [`ha::decide`]. One pass reads the DCS
//! and PostgreSQL, decides, acts, and publishes this member.
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use config::AgentConfig;
use dcs::{AnyDcs, Dcs, Key, Snapshot};
use ha::{Action, ClusterConfig, Local, Member, Pg, Role, Settings, View};
use tokio::sync::watch;

use crate::node::{Node, NodeError, Status};

/// What the REST API shows: this member and the cluster as last seen.
#[derive(Default)]
pub struct Shared {
    pub member: Mutex<Option<Member>>,
    pub leader: Mutex<Option<String>>,
    pub members: Mutex<Vec<Member>>,
    /// Failsafe: the last leader that asked us to confirm we follow it.
    pub failsafe_ping: Mutex<Option<(String, Instant)>>,
}

pub struct Agent {
    cfg: AgentConfig,
    dcs: AnyDcs,
    node: Node,
    pub shared: Arc<Shared>,
    crash_restarts: u32,
    not_streaming_loops: u32,
    /// When this node last renewed (or took) the lease.
    last_renew: Option<Instant>,
    running_since: Option<Instant>,
    /// Synchronous mode: the standby this leader published as synchronous.
    sync_standby: Option<String>,
    /// Failsafe mode, from the cluster config last read.
    failsafe: bool,
    /// The leader's last published WAL position.
    last_leader_lsn: Option<u64>,
    /// The lease TTL of the cluster config last read.
    lease_ttl: Duration,
    /// A failure that no further pass can mend (initdb refused): the loop
    /// ends with it.
    fatal: Option<String>,
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
        Ok(Agent {
            cfg,
            dcs,
            node,
            shared: Arc::new(Shared::default()),
            crash_restarts: 0,
            not_streaming_loops: 0,
            last_renew: None,
            running_since: None,
            sync_standby: None,
            failsafe: false,
            last_leader_lsn: None,
            lease_ttl: Duration::ZERO,
            fatal: None,
        })
    }

    /// Runs the HA loop until `shutdown` turns true; then stops PostgreSQL
    /// (a primary gives its lease up first) and returns.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), AgentError> {
        let api = crate::api::serve(self.cfg.api_listen, self.shared.clone())
            .await
            .map_err(|e| AgentError::Other(format!("REST API on {}: {e}", self.cfg.api_listen)))?;
        let mut leader_rx = self.dcs.watch_leader();
        let mut log = crate::sentences::SentenceLog::default();
        loop {
            let sentence = self.run_once().await;
            if let Some(line) = log.line(&sentence, Instant::now()) {
                tracing::info!(node = %self.cfg.name, "{line}");
            }
            self.publish(&sentence).await;
            if let Some(f) = self.fatal.take() {
                api.abort();
                let _ = self.dcs.delete_member(&self.cfg.name).await;
                return Err(AgentError::Fatal(f));
            }
            let loop_wait = self.cfg.loop_wait;
            let exited = self.node.exited.clone();
            tokio::select! {
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
        let _ = self.dcs.release_leader(&self.cfg.name).await;
        let _ = self.dcs.delete_member(&self.cfg.name).await;
        r.map_err(Into::into)
    }

    fn settings(&self, cc: &ClusterConfig) -> Settings {
        Settings {
            maximum_lag_on_failover: cc.maximum_lag_on_failover,
            synchronous_mode: cc.synchronous_mode,
            max_crash_restarts: self.cfg.max_crash_restarts,
            rewind_after_loops: 5,
        }
    }

    fn cluster_config(&self, snap: &Snapshot) -> ClusterConfig {
        snap.get(Key::Config)
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_else(|| self.bootstrap_config())
    }

    fn bootstrap_config(&self) -> ClusterConfig {
        let c = &self.cfg;
        ClusterConfig {
            ttl_ms: c.ttl.as_millis() as u64,
            loop_wait_ms: c.loop_wait.as_millis() as u64,
            maximum_lag_on_failover: c.maximum_lag_on_failover,
            synchronous_mode: c.synchronous_mode,
            synchronous_mode_strict: c.synchronous_mode_strict,
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
        let members: Vec<Member> = snap
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

        let (pg, status) = match self.local_pg().await {
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
        let last_leader_lsn = snap
            .get(Key::Status)
            .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
            .and_then(|v| v["lsn"].as_u64());
        self.last_leader_lsn = last_leader_lsn;
        let last_leader = snap
            .get(Key::Status)
            .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
            .and_then(|v| v["leader"].as_str().map(str::to_owned));
        let sync_standby = snap
            .get(Key::Sync)
            .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
            .and_then(|v| v["sync_standby"].as_str().map(str::to_owned));
        let failsafe_leader = self
            .shared
            .failsafe_ping
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .filter(|(_, t)| t.elapsed() < self.cfg.ttl)
            .map(|(l, _)| l);
        let view = View {
            failsafe_leader: failsafe_leader.as_deref(),
            last_leader: last_leader.as_deref(),
            initialized: snap.initialize.is_some(),
            leader: snap.leader.as_ref().map(|l| l.name.as_str()),
            members: &members,
            paused: snap.get(Key::Pause).is_some(),
            last_leader_lsn,
            sync_standby: sync_standby.as_deref(),
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
            Err(e) => format!("{} — failed: {e}", decision.reason),
        }
    }

    /// The DCS cannot be read. A primary that can no longer be sure it
    /// holds the lease stops accepting writes before the lease expires.
    /// The DCS cannot be read (or a renewal failed). A primary that can no
    /// longer be sure it holds the lease stops accepting writes before the
    /// lease can expire: its last renewal plus the lease TTL, less a margin
    /// for DCS timeouts and the stop itself. Unknown (no renewal seen by this
    /// agent, e.g. just restarted) counts as expiring.
    async fn dcs_unavailable(&mut self, e: dcs::DcsError) -> String {
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
            // Failsafe: stay primary while every other member confirms it
            // still follows this node.
            let others: Vec<Member> = self
                .shared
                .members
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .filter(|m| m.name != self.cfg.name)
                .cloned()
                .collect();
            let mut confirmed = 0;
            for m in &others {
                if crate::api::failsafe_confirm(&m.api_url, &self.cfg.name).await {
                    confirmed += 1;
                }
            }
            if confirmed == others.len() {
                // keep going until the next check
                self.last_renew = Some(Instant::now() - ttl + margin + self.cfg.loop_wait);
                return format!(
                    "DCS unavailable ({e}); failsafe mode: all {confirmed} other members confirmed they follow this primary, staying primary"
                );
            }
            tracing::warn!(
                confirmed,
                members = others.len(),
                "failsafe: not every member confirmed"
            );
        }
        self.last_renew = None;
        let r = self.node.stop("fast").await;
        format!(
            "DCS unavailable ({e}) and the lease may expire: demoted (stopped PostgreSQL){}",
            r.err()
                .map(|e| format!(", stop failed: {e}"))
                .unwrap_or_default()
        )
    }

    async fn local_pg(&mut self) -> Result<(Pg, Option<Status>), String> {
        if !self.node.has_data() {
            self.running_since = None;
            return Ok((Pg::NoData, None));
        }
        if self.node.is_running() {
            return match self.node.status().await {
                Ok(st) => {
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
                Err(e) => Err(format!("PostgreSQL is running but not answering yet ({e})")),
            };
        }
        self.running_since = None;
        let state = self.node.cluster_state().unwrap_or_default();
        let was_primary =
            !self.node.is_standby_dir() && (state == "in production" || state == "shut down");
        let crashed = self.node.crashed.load(std::sync::atomic::Ordering::Acquire)
            || state == "in production"
            || state == "in archive recovery";
        Ok((
            if crashed {
                Pg::Crashed { was_primary }
            } else {
                Pg::Stopped { was_primary }
            },
            None,
        ))
    }

    fn member_of<'m>(members: &'m [Member], name: &str) -> Result<&'m Member, AgentError> {
        members
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| AgentError::Other(format!("leader {name} has published no address")))
    }

    async fn act(
        &mut self,
        action: &Action,
        members: &[Member],
        cc: &ClusterConfig,
        status: Option<&Status>,
    ) -> Result<String, AgentError> {
        let name = self.cfg.name.clone();
        let ttl = Duration::from_millis(cc.ttl_ms.max(1000));
        match action {
            Action::Wait => Ok(String::new()),
            Action::Bootstrap => {
                if !self.dcs.initialize(&name).await? {
                    return Ok("another node is bootstrapping".into());
                }
                match self.bootstrap(cc, ttl).await {
                    Ok(()) => Ok("bootstrapped the cluster as its primary".into()),
                    Err(e) => {
                        let _ = self.node.stop("immediate").await;
                        let _ = self.node.wipe();
                        let _ = self.dcs.release_leader(&name).await;
                        let _ = self.dcs.cancel_initialize(&name).await;
                        Err(e)
                    }
                }
            }
            Action::Clone { from } => {
                let m = Self::member_of(members, from)?;
                let (host, port) = (m.host.clone(), m.port);
                self.node.clone_from(&host, port)?;
                self.start_replica(Some((&host, port)), cc).await?;
                Ok(format!("cloned from {from} and started as its standby"))
            }
            Action::StartReplica { leader } => {
                let target = match leader {
                    Some(l) => Some(Self::member_of(members, l).map(|m| (m.host.clone(), m.port))?),
                    None => None,
                };
                self.start_replica(target.as_ref().map(|(h, p)| (h.as_str(), *p)), cc)
                    .await?;
                Ok("started".into())
            }
            Action::StartPrimaryIfFree => {
                if self.dcs.take_leader(&name, ttl).await?.is_some() {
                    self.last_renew = Some(Instant::now());
                    self.start_primary(cc).await?;
                    Ok("took the lease and started as primary".into())
                } else {
                    self.start_replica(None, cc).await?;
                    Ok("lease taken by another node: started as a standby".into())
                }
            }
            Action::RestartPrimary => {
                self.crash_restarts += 1;
                // keep the lease while restarting
                if !self.dcs.renew_leader(&name, ttl).await? {
                    return Ok("lost the lease before restarting".into());
                }
                self.last_renew = Some(Instant::now());
                self.start_primary(cc).await?;
                self.dcs.renew_leader(&name, ttl).await?;
                self.last_renew = Some(Instant::now());
                Ok("PostgreSQL is back as primary".into())
            }
            Action::ReleaseLease => {
                self.dcs.release_leader(&name).await?;
                self.last_renew = None;
                Ok("lease released".into())
            }
            Action::Rewind { leader } => {
                let m = Self::member_of(members, leader)?;
                let (host, port) = (m.host.clone(), m.port);
                let how = self.rewind_or_reclone(&host, port).await?;
                self.start_replica(Some((&host, port)), cc).await?;
                Ok(format!("{how}; started as a standby of {leader}"))
            }
            Action::RenewLease => {
                let renewed = match self.dcs.renew_leader(&name, ttl).await {
                    Ok(r) => r,
                    Err(e) => return Ok(self.dcs_unavailable(e).await),
                };
                if !renewed {
                    // Never two writable primaries: stop at once.
                    self.last_renew = None;
                    self.node.stop("fast").await?;
                    return Ok("could not renew the lease: stopped PostgreSQL".into());
                }
                self.last_renew = Some(Instant::now());
                // a crash loop is a crash within seconds of the restart
                if self
                    .running_since
                    .is_some_and(|t| t.elapsed() > Duration::from_secs(10))
                {
                    self.crash_restarts = 0;
                }
                self.leader_upkeep(members, cc, status).await
            }
            Action::TakeLease => match self.dcs.take_leader(&name, ttl).await? {
                Some(_) => {
                    self.last_renew = Some(Instant::now());
                    self.leader_upkeep(members, cc, status).await?;
                    Ok("took the lease".into())
                }
                None => {
                    // someone else holds it now: no writes here meanwhile
                    self.node.stop("fast").await?;
                    Ok("another node took the lease first: stopped PostgreSQL".into())
                }
            },
            Action::TakeLeaseAndPromote => match self.dcs.take_leader(&name, ttl).await? {
                Some(l) => {
                    self.last_renew = Some(Instant::now());
                    self.node.promote().await?;
                    self.node.write_conf(None, None, &cc.parameters)?;
                    self.node.reload().await?;
                    self.record_history(l.epoch, status).await;
                    self.leader_upkeep(members, cc, None).await?;
                    Ok(format!("promoted (epoch {})", l.epoch))
                }
                None => Ok("another node took the lease first".into()),
            },
            Action::Promote => {
                self.node.promote().await?;
                self.node.write_conf(None, None, &cc.parameters)?;
                self.node.reload().await?;
                Ok("promoted".into())
            }
            Action::Demote { leader } => {
                self.last_renew = None;
                self.node.stop("fast").await?;
                let m = Self::member_of(members, leader)?;
                let (host, port) = (m.host.clone(), m.port);
                let how = self.rewind_or_reclone(&host, port).await?;
                self.start_replica(Some((&host, port)), cc).await?;
                Ok(format!("stopped; {how}; following {leader}"))
            }
            Action::Follow { leader } => {
                let m = Self::member_of(members, leader)?;
                let ci = self.node.conninfo(&m.host, m.port);
                if self.node.write_conf(Some(&ci), None, &cc.parameters)? {
                    self.node.reload().await?;
                    return Ok(format!("pointed replication at {leader}"));
                }
                Ok(String::new())
            }
        }
    }

    async fn bootstrap(&mut self, cc: &ClusterConfig, ttl: Duration) -> Result<(), AgentError> {
        // initdb refused (a full disk, a bad locale) is for the operator:
        // the cluster's initialize key is given back and the agent stops.
        self.node
            .initdb()
            .map_err(|e| AgentError::Fatal(format!("initdb failed: {e}")))?;
        self.node.write_conf(None, None, &cc.parameters)?;
        self.node.start(Duration::from_secs(60)).await?;
        let q = |n: &str| format!("\"{}\"", n.replace('"', "\"\""));
        let (repl, admin) = (
            self.cfg.replication_user.clone(),
            self.cfg.admin_user.clone(),
        );
        if repl != self.cfg.superuser {
            self.node
                .execute(&format!("CREATE ROLE {} WITH REPLICATION LOGIN", q(&repl)))
                .await?;
        }
        if !admin.is_empty() && admin != self.cfg.superuser && admin != repl {
            self.node
                .execute(&format!(
                    "CREATE ROLE {} WITH LOGIN CREATEDB CREATEROLE",
                    q(&admin)
                ))
                .await?;
        }
        if self.dcs.take_leader(&self.cfg.name, ttl).await?.is_none() {
            return Err(AgentError::Other(
                "the lease was taken during bootstrap".into(),
            ));
        }
        self.last_renew = Some(Instant::now());
        let _ = self
            .dcs
            .compare_and_set(
                Key::Config,
                None,
                &serde_json::to_string(cc).expect("serializable"),
            )
            .await?;
        Ok(())
    }

    async fn start_primary(&mut self, cc: &ClusterConfig) -> Result<(), AgentError> {
        self.node.set_standby(false)?;
        self.node.write_conf(None, None, &cc.parameters)?;
        self.node.start(Duration::from_secs(60)).await?;
        Ok(())
    }

    async fn start_replica(
        &mut self,
        leader: Option<(&str, u16)>,
        cc: &ClusterConfig,
    ) -> Result<(), AgentError> {
        let ci = leader.map(|(h, p)| self.node.conninfo(h, p));
        self.node.write_conf(ci.as_deref(), None, &cc.parameters)?;
        self.node.set_standby(true)?;
        self.node.start(Duration::from_secs(120)).await?;
        self.not_streaming_loops = 0;
        Ok(())
    }

    /// pg_rewind against the leader, or a fresh clone when rewinding fails.
    async fn rewind_or_reclone(&mut self, host: &str, port: u16) -> Result<String, AgentError> {
        self.node.stop("fast").await?;
        if self.node.cluster_state().as_deref() == Some("in production") {
            if let Err(e) = self.node.recover_single_user().await {
                tracing::warn!(error = %e, "crash recovery before pg_rewind failed");
            }
        }
        if let Err(e) = self.node.checkpoint_on(host, port).await {
            tracing::warn!(error = %e, "checkpoint on the leader before pg_rewind failed");
        }
        match self.node.rewind(host, port).await {
            Ok(()) => Ok("rewound with pg_rewind".into()),
            Err(e) => {
                tracing::warn!(error = %e, "pg_rewind failed: re-cloning");
                self.node.clone_from(host, port)?;
                Ok(format!(
                    "pg_rewind failed ({}); re-cloned with pg_basebackup",
                    first_line(&e.to_string())
                ))
            }
        }
    }

    /// The leader's chores: slots for every member, its position for
    /// candidates' lag checks, its configuration.
    async fn leader_upkeep(
        &mut self,
        members: &[Member],
        cc: &ClusterConfig,
        status: Option<&Status>,
    ) -> Result<String, AgentError> {
        let names: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
        self.node.ensure_slots(&names).await?;
        if let Some(st) = status {
            let _ = self
                .dcs
                .put(
                    Key::Status,
                    Some(&format!(
                        "{{\"lsn\":{},\"timeline\":{},\"leader\":\"{}\"}}",
                        st.lsn, st.timeline, self.cfg.name
                    )),
                )
                .await;
        }
        let sync_names = if cc.synchronous_mode {
            self.manage_sync(members, cc).await?
        } else {
            None
        };
        if !cc.synchronous_mode && self.sync_standby.take().is_some() {
            let _ = self.dcs.put(Key::Sync, None).await;
        }
        if self
            .node
            .write_conf(None, sync_names.as_deref(), &cc.parameters)?
        {
            self.node.reload().await?;
        }
        Ok(String::new())
    }

    /// Synchronous mode: keeps one streaming standby synchronous and
    /// publishes it in the Sync key only once PostgreSQL reports it as
    /// `sync`, so that the key never names a standby that may lack an
    /// acknowledged commit. Returns synchronous_standby_names.
    async fn manage_sync(
        &mut self,
        members: &[Member],
        cc: &ClusterConfig,
    ) -> Result<Option<String>, AgentError> {
        let repl = self.node.replication().await?;
        let streaming = |n: &str| repl.iter().any(|(a, _)| a == n);
        let eligible: Vec<&Member> = members
            .iter()
            .filter(|m| m.name != self.cfg.name && !m.nofailover && streaming(&m.name))
            .collect();
        let current = self.sync_standby.clone().filter(|c| streaming(c));
        let candidate = current.or_else(|| {
            eligible
                .iter()
                .max_by_key(|m| (m.lsn, m.priority))
                .map(|m| m.name.clone())
        });
        match candidate {
            Some(cand) => {
                let names = format!("FIRST 1 (\"{}\")", cand.replace('"', ""));
                // PostgreSQL first, then the key.
                if self.node.write_conf(None, Some(&names), &cc.parameters)? {
                    self.node.reload().await?;
                }
                let is_sync = self
                    .node
                    .replication()
                    .await?
                    .iter()
                    .any(|(a, st)| *a == cand && st == "sync");
                if is_sync && self.sync_standby.as_deref() != Some(cand.as_str()) {
                    let v = serde_json::json!({ "leader": self.cfg.name, "sync_standby": cand })
                        .to_string();
                    self.dcs.put(Key::Sync, Some(&v)).await?;
                    self.sync_standby = Some(cand.clone());
                }
                Ok(Some(names))
            }
            None if cc.synchronous_mode_strict => {
                // never fall back to asynchronous: commits wait for a standby
                Ok(Some(
                    self.sync_standby
                        .as_ref()
                        .map(|c| format!("FIRST 1 (\"{c}\")"))
                        .unwrap_or_else(|| "*".into()),
                ))
            }
            None => {
                // no standby at all: the key goes first, then PostgreSQL
                if self.sync_standby.take().is_some() {
                    let v = serde_json::json!({ "leader": self.cfg.name, "sync_standby": null })
                        .to_string();
                    self.dcs.put(Key::Sync, Some(&v)).await?;
                }
                Ok(None)
            }
        }
    }

    async fn record_history(&self, epoch: u64, status: Option<&Status>) {
        for _ in 0..5 {
            let snap = match self.dcs.snapshot().await {
                Ok(s) => s,
                Err(_) => return,
            };
            let old = snap.get(Key::History).map(str::to_owned);
            let mut list: Vec<serde_json::Value> = old
                .as_deref()
                .and_then(|s| serde_json::from_str(s).ok())
                .unwrap_or_default();
            list.push(serde_json::json!({
                "epoch": epoch,
                "new_leader": self.cfg.name,
                "lsn": status.map(|s| s.lsn),
                "timeline": status.map(|s| s.timeline),
                "at_ms": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64,
            }));
            if self
                .dcs
                .compare_and_set(
                    Key::History,
                    old.as_deref(),
                    &serde_json::Value::Array(list).to_string(),
                )
                .await
                .unwrap_or(false)
            {
                return;
            }
        }
    }

    async fn publish(&mut self, sentence: &str) {
        let running = self.node.is_running();
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
            api_url: format!("http://{}", self.cfg.api_listen),
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

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}
