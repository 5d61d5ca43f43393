//! The leader's chores on every pass: replication slots, its position for
//! the candidates' lag checks, synchronous standbys, history.
use dcs::{Dcs, Key};
use ha::{ClusterConfig, Member};

use crate::driver::{Agent, AgentError};
use crate::node::Status;

impl Agent {
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
    pub(crate) async fn manage_sync(
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

    pub(crate) async fn record_history(&self, epoch: u64, status: Option<&Status>) {
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
}
