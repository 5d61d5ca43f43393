//! The HA loop's actions: what each [`ha::Action`] does to this node and
//! the DCS.
use std::time::Duration;

use dcs::{Dcs, Key};
use ha::{Action, ClusterConfig, Member};

use crate::driver::{first_line, Agent, AgentError};
use crate::node::Status;
use crate::traits::{Fencing, NodeOps};

impl<D: Dcs, N: NodeOps, F: Fencing> Agent<D, N, F> {
    pub(crate) fn member_of<'m>(
        members: &'m [Member],
        name: &str,
    ) -> Result<&'m Member, AgentError> {
        members
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| AgentError::Other(format!("leader {name} has published no address")))
    }

    pub(crate) async fn act(
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
                // never wait on a leader that does not answer
                match self.node.checkpoint_on(&host, port).await {
                    Ok((false, _)) => {}
                    Ok((true, _)) => {
                        return Ok(format!("{from} is not primary yet: cloning later"))
                    }
                    Err(e) => {
                        return Err(AgentError::Other(format!(
                            "{from} does not answer ({e}): not cloning from it"
                        )))
                    }
                }
                self.node.clone_from(&host, port).await?;
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
                if self.take(ttl).await?.is_some() {
                    self.start_primary(cc).await?;
                    self.keep_lease_or_stop(ttl, "starting").await?;
                    Ok("took the lease and started as primary".into())
                } else {
                    self.start_replica(None, cc).await?;
                    Ok("lease taken by another node: started as a standby".into())
                }
            }
            Action::RestartPrimary => {
                self.crash_restarts += 1;
                // keep the lease while restarting
                if !self.renew(ttl).await? {
                    self.unproved();
                    return Ok("lost the lease before restarting".into());
                }
                self.start_primary(cc).await?;
                self.keep_lease_or_stop(ttl, "restarting").await?;
                Ok("PostgreSQL is back as primary".into())
            }
            Action::ReleaseLease => {
                self.dcs.release_leader(&name).await?;
                self.unproved();
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
                let renewed = match self.renew(ttl).await {
                    Ok(r) => r,
                    Err(e) => return Ok(self.dcs_unavailable(e).await),
                };
                if !renewed {
                    // Never two writable primaries: stop at once.
                    self.last_renew = None;
                    self.node.stop("fast").await?;
                    self.unproved();
                    return Ok("could not renew the lease: stopped PostgreSQL".into());
                }
                // a crash loop is a crash within seconds of the restart
                if self
                    .running_since
                    .is_some_and(|t| t.elapsed() > Duration::from_secs(10))
                {
                    self.crash_restarts = 0;
                }
                self.leader_upkeep(members, cc, status).await
            }
            Action::TakeLease => match self.take(ttl).await? {
                Some(_) => {
                    self.leader_upkeep(members, cc, status).await?;
                    Ok("took the lease".into())
                }
                None => {
                    // someone else holds it now: no writes here meanwhile
                    self.node.stop("fast").await?;
                    self.unproved();
                    Ok("another node took the lease first: stopped PostgreSQL".into())
                }
            },
            Action::TakeLeaseAndPromote => match self.take(ttl).await? {
                Some(l) => {
                    self.slots_for(members).await;
                    if let Err(e) = self.promote(cc, ttl).await {
                        return Err(self.promotion_failed(e).await);
                    }
                    self.record_history(l.epoch, status).await;
                    self.leader_upkeep(members, cc, None).await?;
                    Ok(format!("promoted (epoch {})", l.epoch))
                }
                None => Ok("another node took the lease first".into()),
            },
            Action::Promote => {
                if !self.renew(ttl).await? {
                    return Ok("lost the lease before promoting".into());
                }
                self.slots_for(members).await;
                if let Err(e) = self.promote(cc, ttl).await {
                    return Err(self.promotion_failed(e).await);
                }
                Ok("promoted".into())
            }
            Action::Demote { leader } => {
                // the fence stays armed until PostgreSQL is down
                self.last_renew = None;
                self.node.stop("fast").await?;
                self.unproved();
                let m = Self::member_of(members, leader)?;
                let (host, port) = (m.host.clone(), m.port);
                let how = self.rewind_or_reclone(&host, port).await?;
                self.start_replica(Some((&host, port)), cc).await?;
                Ok(format!("stopped; {how}; following {leader}"))
            }
            Action::Switchover(step) => {
                Box::pin(self.switchover_act(step, members, cc, status)).await
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

    pub(crate) async fn bootstrap(
        &mut self,
        cc: &ClusterConfig,
        ttl: Duration,
    ) -> Result<(), AgentError> {
        // initdb refused (a full disk, a bad locale) is for the operator:
        // the cluster's initialize key is given back and the agent stops.
        self.node
            .initdb()
            .await
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
        if self.take(ttl).await?.is_none() {
            return Err(AgentError::Other(
                "the lease was taken during bootstrap".into(),
            ));
        }
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

    /// After a step that can outlast the lease (a start, a promotion, a
    /// checkpoint): renew it, and if it is lost, stop PostgreSQL at once;
    /// another node may already be primary.
    pub(crate) async fn keep_lease_or_stop(
        &mut self,
        ttl: Duration,
        step: &str,
    ) -> Result<(), AgentError> {
        let kept = self.renew(ttl).await;
        if matches!(kept, Ok(true)) {
            return Ok(());
        }
        self.last_renew = None;
        let _ = self.node.stop("immediate").await;
        self.unproved();
        Err(AgentError::Other(format!(
            "the lease could not be renewed after {step} ({}): stopped PostgreSQL",
            match kept {
                Err(e) => e.to_string(),
                _ => "another node holds it".into(),
            }
        )))
    }

    /// A promotion that failed (it did not finish in time, PostgreSQL
    /// crashed in it, the lease was lost): PostgreSQL is stopped, since a
    /// promotion still under way could end later without the lease, and
    /// the lease is given up, so that another candidate may try rather
    /// than this node holding it through attempt after attempt.
    async fn promotion_failed(&mut self, e: AgentError) -> AgentError {
        self.last_renew = None;
        let stopped = self.node.stop("immediate").await;
        self.unproved();
        let released = self.dcs.release_leader(&self.cfg.name).await;
        AgentError::Other(format!(
            "{e}; stopped PostgreSQL{} and released the lease{}",
            stopped
                .err()
                .map(|e| format!(" (failed: {e})"))
                .unwrap_or_default(),
            released
                .err()
                .map(|e| format!(" (failed: {e})"))
                .unwrap_or_default(),
        ))
    }

    /// Slots for the other members before a promotion: they stream from
    /// the new primary as soon as it is one (each walreceiver that finds
    /// no slot waits wal_retrieve_retry_interval before it tries again).
    /// A standby can create them; a failure only delays the standbys.
    async fn slots_for(&mut self, members: &[Member]) {
        let names: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
        if let Err(e) = self.node.ensure_slots(&names).await {
            tracing::warn!(error = %e, "replication slots before promotion");
        }
    }

    /// Promotes this standby, holding the lease: renewed between the
    /// steps, since each can take seconds.
    async fn promote(&mut self, cc: &ClusterConfig, ttl: Duration) -> Result<(), AgentError> {
        self.node.request_promotion().await?;
        let promoted = self.node.until_promoted(Duration::from_secs(60));
        self.renewing(ttl, promoted).await??;
        self.node.set_standby(false)?;
        self.keep_lease_or_stop(ttl, "promoting").await?;
        self.node
            .write_conf(None, strict_names(cc), &cc.parameters)?;
        self.node.reload().await?;
        let checkpoint = self.node.checkpoint();
        self.renewing(ttl, checkpoint).await?;
        self.keep_lease_or_stop(ttl, "the checkpoint after promotion")
            .await
    }

    /// Waits for `step` (the end of a promotion, a checkpoint: either can
    /// outlast the TTL under load) while renewing the lease every
    /// loop_wait; without that the fence would stop PostgreSQL in the
    /// middle of it. A renewal that fails stops PostgreSQL and ends the
    /// wait.
    pub(crate) async fn renewing<T>(
        &mut self,
        ttl: Duration,
        step: impl std::future::Future<Output = T>,
    ) -> Result<T, AgentError> {
        tokio::pin!(step);
        loop {
            tokio::select! {
                r = &mut step => return Ok(r),
                _ = tokio::time::sleep(self.cfg.loop_wait) => {
                    self.keep_lease_or_stop(ttl, "a step that outlasted a pass").await?;
                }
            }
        }
    }

    pub(crate) async fn start_primary(&mut self, cc: &ClusterConfig) -> Result<(), AgentError> {
        // Data a standby left (killed during its promotion): started
        // without standby.signal it would open on the old timeline, beside
        // the old primary's history. It starts as a standby, and the next
        // pass, holding the lease, promotes it.
        let standby_data = matches!(
            self.node.cluster_state().await.as_deref(),
            Some("in archive recovery" | "shut down in recovery")
        );
        self.node.set_standby(standby_data)?;
        self.node
            .write_conf(None, strict_names(cc), &cc.parameters)?;
        self.node.start(Duration::from_secs(60)).await?;
        Ok(())
    }

    pub(crate) async fn start_replica(
        &mut self,
        leader: Option<(&str, u16)>,
        cc: &ClusterConfig,
    ) -> Result<(), AgentError> {
        let ci = leader.map(|(h, p)| self.node.conninfo(h, p));
        self.node.write_conf(ci.as_deref(), None, &cc.parameters)?;
        self.node.set_standby(true)?;
        self.not_streaming_loops = 0;
        // A standby may need WAL from the leader before it accepts
        // connections (after a rewind, through a replication slot the
        // leader creates once this member is published again): the loop
        // does not wait for that; passes go on (and publish), and one that
        // stays starting is rewound or re-cloned (see local_pg).
        match self.node.start(REPLICA_START_WAIT).await {
            Err(e) if !self.node.is_running() => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// pg_rewind against the leader, or a fresh clone when rewinding fails.
    /// The leader must answer and run as primary; for a former primary its
    /// checkpoint must also show a newer timeline than this node's, that
    /// is, its promotion must be over: pg_rewind against a leader still on
    /// the old timeline answers "no rewind required" and leaves a node that
    /// can never stream. Until then this node stays stopped and the next
    /// pass tries again. A former primary for which pg_rewind still finds
    /// the same timeline is re-cloned.
    pub(crate) async fn rewind_or_reclone(
        &mut self,
        host: &str,
        port: u16,
    ) -> Result<String, AgentError> {
        let former_primary = !self.node.is_standby_dir();
        let (in_recovery, leader_tl) = self.node.checkpoint_on(host, port).await.map_err(|e| {
            AgentError::Other(format!(
                "the leader at {host}:{port} does not answer ({e}): not rewinding or cloning from it"
            ))
        })?;
        if in_recovery {
            return Err(AgentError::Other(
                "the leader has not finished its promotion: rewinding later".into(),
            ));
        }
        self.node.stop("fast").await?;
        if self.node.cluster_state().await.as_deref() == Some("in production") {
            if let Err(e) = self.node.recover_single_user().await {
                tracing::warn!(error = %e, "crash recovery before pg_rewind failed");
            }
        }
        let mine = self.node.checkpoint_timeline().await;
        if let Some(mine) = mine.filter(|m| former_primary && leader_tl <= *m) {
            return Err(AgentError::Other(format!(
                "the leader's checkpoint is on timeline {leader_tl}, not newer than this node's \
                 ({mine}): waiting for its promotion to finish before rewinding"
            )));
        }
        let why = match self.node.rewind(host, port).await {
            Ok(out) if former_primary && out.contains("same timeline") => {
                "pg_rewind found this former primary on the leader's timeline".to_owned()
            }
            Ok(_) => return Ok("rewound with pg_rewind".into()),
            Err(e) => format!("pg_rewind failed ({})", first_line(&e.to_string())),
        };
        tracing::warn!("{why}: re-cloning");
        self.node.clone_from(host, port).await?;
        Ok(format!("{why}; re-cloned with pg_basebackup"))
    }
}

/// How long starting a standby waits for it to accept connections before
/// the loop goes on.
const REPLICA_START_WAIT: Duration = Duration::from_secs(10);

/// A new primary in strict synchronous mode keeps commits waiting for a
/// standby (any, until the leader's upkeep names one) instead of taking
/// asynchronous commits in the meantime.
fn strict_names(cc: &ClusterConfig) -> Option<&'static str> {
    (cc.synchronous_mode.is_on() && cc.synchronous_mode_strict).then_some("*")
}
