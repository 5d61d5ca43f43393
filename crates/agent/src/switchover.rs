//! The agent's side of a requested switchover or failover
//! ([`ha::switchover`]): the leader steps down cleanly, the new leader
//! removes the request and records it in the history.
use dcs::{Dcs, Key};
use ha::switchover::{Step, Switchover};
use ha::{Action, ClusterConfig, Member};

use crate::driver::{Agent, AgentError};
use crate::node::Status;
use crate::traits::{Fencing, NodeOps};

/// How long a leader stepping down waits, after naming its successor,
/// before it shuts PostgreSQL down: proxies read the DCS every 250 ms
/// (`proxy::follow`), then let the transactions under way end.
const PROXY_DRAIN: std::time::Duration = std::time::Duration::from_millis(1500);

impl<D: Dcs, N: NodeOps, F: Fencing> Agent<D, N, F> {
    pub(crate) async fn switchover_act(
        &mut self,
        step: &Step,
        members: &[Member],
        cc: &ClusterConfig,
        status: Option<&Status>,
    ) -> Result<String, AgentError> {
        let snap = self.shared.ops.snapshot().unwrap_or_default();
        let req = snap.get(Key::Failover).and_then(Switchover::parse);
        match step {
            Step::Demote { candidate } => self.step_down(req, candidate).await,
            Step::Done | Step::Cancel => {
                let renewed = Box::pin(self.act(&Action::RenewLease, members, cc, status)).await?;
                self.dcs.put(Key::Failover, None).await?;
                if let (Step::Done, Some(r)) = (step, req) {
                    self.mark_history(&r).await;
                }
                Ok(renewed)
            }
        }
    }

    /// Records the chosen candidate in the request, shuts PostgreSQL down
    /// cleanly (its standbys receive all of its WAL before it exits),
    /// publishes where its WAL ends and releases the lease. The loop then
    /// waits as a stopped former primary until the candidate leads, and
    /// rewinds to follow it.
    async fn step_down(
        &mut self,
        req: Option<Switchover>,
        candidate: &str,
    ) -> Result<String, AgentError> {
        let name = self.cfg.name.clone();
        let Some(mut req) = req else {
            return Ok("the request is gone: not stepping down".into());
        };
        let old = req.to_json();
        req.chosen = Some(candidate.to_owned());
        if !self
            .dcs
            .compare_and_set(Key::Failover, Some(&old), &req.to_json())
            .await?
        {
            return Ok("the request changed meanwhile: not stepping down".into());
        }
        // The proxies, seeing the chosen candidate, hold new transactions
        // until it leads; the ones under way finish here meanwhile, so
        // that the clean shutdown below cuts none of them.
        let ttl = self.lease_ttl;
        self.renewing(ttl, tokio::time::sleep(PROXY_DRAIN)).await?;
        // the fence stays armed until PostgreSQL is down
        self.last_renew = None;
        let stopped = self.node.stop("fast").await;
        self.unproved();
        if let Err(e) = stopped {
            // still ours: the next pass renews or fences as usual
            return Err(e.into());
        }
        if let Some(lsn) = self.node.checkpoint_lsn().await {
            let tl = self.node.checkpoint_timeline().await.unwrap_or(0);
            let v = ha::records::LeaderStatus {
                lsn,
                timeline: tl,
                leader: name.clone(),
            };
            self.dcs.put(Key::Status, Some(&v.to_json())).await?;
        }
        self.dcs.release_leader(&name).await?;
        Ok(format!(
            "shut PostgreSQL down cleanly and released the lease for {candidate}"
        ))
    }

    async fn mark_history(&self, req: &Switchover) {
        let kind = if req.leader.is_some() {
            ha::history::Kind::Switchover
        } else {
            ha::history::Kind::ManualFailover
        };
        let reason = match req.candidate {
            Some(_) => format!("{} requested through the REST API", req.kind()),
            None => format!(
                "{} requested through the REST API; the leader chose this member",
                req.kind()
            ),
        };
        for _ in 0..5 {
            let Ok(snap) = self.dcs.snapshot().await else {
                return;
            };
            let Some(old) = snap.get(Key::History) else {
                return;
            };
            let Some(new) = ha::history::mark_leader_change(
                old,
                &self.cfg.name,
                kind,
                req.leader.as_deref(),
                &reason,
            ) else {
                return;
            };
            if self
                .dcs
                .compare_and_set(Key::History, Some(old), &new)
                .await
                .unwrap_or(false)
            {
                return;
            }
        }
    }
}
