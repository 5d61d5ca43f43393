//! The leader's chores on every pass: replication slots, its position for
//! the candidates' lag checks, synchronous standbys, history.
use dcs::{Dcs, Key};
use ha::{ClusterConfig, Member};

use crate::driver::{Agent, AgentError};
use crate::node::Status;
use crate::traits::{Fencing, NodeOps};

impl<D: Dcs, N: NodeOps, F: Fencing> Agent<D, N, F> {
    /// The leader's chores: slots for every member, its position for
    /// candidates' lag checks, its configuration.
    pub(crate) async fn leader_upkeep(
        &mut self,
        members: &[Member],
        cc: &ClusterConfig,
        status: Option<&Status>,
    ) -> Result<String, AgentError> {
        let names: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
        self.node.ensure_slots(&names).await?;
        if let Some(st) = status {
            let v = ha::records::LeaderStatus {
                lsn: st.lsn,
                timeline: st.timeline,
                leader: self.cfg.name.clone(),
            };
            let _ = self.dcs.put(Key::Status, Some(&v.to_json())).await;
        }
        let sync_names = match cc.synchronous_mode {
            ha::SyncMode::On => self.manage_sync(members, cc).await?,
            ha::SyncMode::Quorum => Some(self.manage_quorum(members, cc, status).await?),
            ha::SyncMode::Off => None,
        };
        let failsafe = cc
            .failsafe_mode
            .then(|| ha::failsafe::FailsafeKey::of(&self.cfg.name, members));
        if failsafe != self.failsafe_key {
            let v = failsafe.as_ref().map(|k| k.to_json());
            self.dcs.put(Key::Failsafe, v.as_deref()).await?;
            self.failsafe_key = failsafe;
        }
        if !cc.synchronous_mode.is_on() && self.sync_key.take().is_some() {
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

    /// Synchronous mode, in the order of [`ha::sync`]: the key loses a
    /// standby before PostgreSQL stops waiting for it, and names the new
    /// one only once PostgreSQL reports it `sync`. Returns
    /// synchronous_standby_names.
    pub(crate) async fn manage_sync(
        &mut self,
        members: &[Member],
        cc: &ClusterConfig,
    ) -> Result<Option<String>, AgentError> {
        let repl: Vec<(String, String)> = self
            .node
            .replication()
            .await?
            .into_iter()
            .map(|s| (s.name, s.sync_state))
            .collect();
        let me = self.cfg.name.clone();
        let plan = ha::sync::plan(
            &me,
            self.sync_key.as_ref(),
            &repl,
            members,
            cc.synchronous_mode_strict,
        );
        if let Some(k) = plan.key_first {
            // in the DCS before PostgreSQL waits for another standby
            self.dcs.put(Key::Sync, Some(&k.to_json())).await?;
            self.sync_key = Some(k);
        }
        if self
            .node
            .write_conf(None, Some(&plan.names), &cc.parameters)?
        {
            self.node.reload().await?;
        }
        if let Some(c) = plan.publish_when_sync {
            let is_sync = self
                .node
                .replication()
                .await?
                .iter()
                .any(|s| s.name == c && s.sync_state == "sync");
            if is_sync {
                let k = ha::sync::SyncKey {
                    leader: me,
                    sync_standby: Some(c),
                    voters: Vec::new(),
                    quorum: 0,
                };
                self.dcs.put(Key::Sync, Some(&k.to_json())).await?;
                self.sync_key = Some(k);
            }
        }
        Ok(Some(plan.names))
    }

    /// Quorum mode, in the three steps of [`ha::quorum`]: widen the key,
    /// change `synchronous_standby_names`, and narrow the key once enough
    /// voters have flushed past a position read a pass after the change
    /// (the setting is in force by then). Returns the setting.
    pub(crate) async fn manage_quorum(
        &mut self,
        members: &[Member],
        cc: &ClusterConfig,
        status: Option<&Status>,
    ) -> Result<String, AgentError> {
        let repl = self.node.replication().await?;
        let me = self.cfg.name.clone();
        let plan = ha::quorum::plan(
            &me,
            self.sync_key.as_ref(),
            &repl,
            members,
            cc.synchronous_node_count,
            cc.synchronous_mode_strict,
        );
        if let Some(k) = plan.key_first {
            self.dcs.put(Key::Sync, Some(&k.to_json())).await?;
            self.sync_key = Some(k);
        }
        if self
            .node
            .write_conf(None, Some(&plan.names), &cc.parameters)?
        {
            self.node.reload().await?;
            self.quorum_since = None;
            return Ok(plan.names);
        }
        if self.sync_key.as_ref() == Some(&plan.target) {
            return Ok(plan.names);
        }
        let since = match (&self.quorum_since, status) {
            (Some((names, lsn)), _) if *names == plan.names => *lsn,
            // this pass's position, read after the last pass's reload
            (_, Some(st)) => {
                self.quorum_since = Some((plan.names.clone(), st.lsn));
                st.lsn
            }
            (_, None) => return Ok(plan.names),
        };
        if ha::quorum::caught_up(&plan.target, &repl, since) {
            self.dcs
                .put(Key::Sync, Some(&plan.target.to_json()))
                .await?;
            self.sync_key = Some(plan.target);
        }
        Ok(plan.names)
    }

    pub(crate) async fn record_history(&self, epoch: u64, status: Option<&Status>) {
        for _ in 0..5 {
            let snap = match self.dcs.snapshot().await {
                Ok(s) => s,
                Err(_) => return,
            };
            let old = snap.get(Key::History).map(str::to_owned);
            let entry = ha::history::Entry {
                epoch: Some(epoch),
                new_leader: Some(self.cfg.name.clone()),
                lsn: status.map(|s| s.lsn),
                timeline: status.map(|s| s.timeline),
                at_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis() as u64,
                ..Default::default()
            };
            let new = ha::history::append(old.as_deref(), entry);
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
