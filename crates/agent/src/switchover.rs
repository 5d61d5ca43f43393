//! The agent's side of a requested switchover or failover
//! ([`ha::switchover`]): the leader steps down cleanly, the new leader
//! removes the request and records it in the history.
use std::time::{Duration, Instant};

use dcs::{Dcs, Key};
use ha::switchover::{Step, Switchover};
use ha::{Action, ClusterConfig, Member};

use crate::driver::{Agent, AgentError};
use crate::node::Status;
use crate::traits::{Fencing, NodeOps};

/// Proxies read the DCS every 50 ms (`proxy::follow`): a leader stepping
/// down waits this long after naming its successor, so that every proxy
/// holds new transactions before it looks for the ones under way...
const PROXY_SEES: Duration = Duration::from_millis(200);
/// ...and at most this long in all for those to end, before it shuts
/// PostgreSQL down (cutting the ones still open).
const DRAIN_LIMIT: Duration = Duration::from_millis(1500);

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

    /// Checkpoints (so that the shutdown checkpoint has little to write),
    /// records the chosen candidate in the request (proxies then hold new
    /// transactions), waits for the transactions under way to end, shuts
    /// PostgreSQL down cleanly (its standbys receive all of its WAL before
    /// it exits), publishes where its WAL ends and releases the lease. The
    /// loop then waits as a stopped former primary until the candidate
    /// leads, and rewinds to follow it.
    async fn step_down(
        &mut self,
        req: Option<Switchover>,
        candidate: &str,
    ) -> Result<String, AgentError> {
        let name = self.cfg.name.clone();
        let ttl = self.lease_ttl;
        let checkpoint = self.node.checkpoint();
        self.renewing(ttl, checkpoint).await?;
        self.keep_lease_or_stop(ttl, "the checkpoint before stepping down")
            .await?;
        // the request as it is now (it may have been cancelled meanwhile)
        let snap = self.dcs.snapshot().await?;
        let Some(mut req) = snap
            .get(Key::Failover)
            .and_then(Switchover::parse)
            .filter(|r| Some(r) == req.as_ref())
        else {
            return Ok("the request is gone or changed: not stepping down".into());
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
        let open = self.drain(ttl).await?;
        // the fence stays armed until PostgreSQL is down
        self.last_renew = None;
        let stopped = self.node.stop("fast").await;
        self.unproved();
        if let Err(e) = stopped {
            // still ours: the next pass renews or fences as usual
            return Err(e.into());
        }
        let (lsn, tl) = tokio::join!(self.node.checkpoint_lsn(), self.node.checkpoint_timeline());
        if let Some(lsn) = lsn {
            let tl = tl.unwrap_or(0);
            let v = ha::records::LeaderStatus {
                lsn,
                timeline: tl,
                leader: name.clone(),
            };
            self.dcs.put(Key::Status, Some(&v.to_json())).await?;
        }
        self.dcs.release_leader(&name).await?;
        let cut = match open {
            Some(0) => String::new(),
            Some(n) => format!(" ({n} transactions still open at the drain limit were cut)"),
            None => " (without waiting for open transactions: they could not be counted)".into(),
        };
        Ok(format!(
            "shut PostgreSQL down cleanly and released the lease for {candidate}{cut}"
        ))
    }

    /// Waits, renewing the lease, until no other session has a transaction
    /// open (but at least [`PROXY_SEES`], at most [`DRAIN_LIMIT`]). The
    /// transactions still open then, or None if they could not be counted.
    async fn drain(&mut self, ttl: Duration) -> Result<Option<u64>, AgentError> {
        let start = Instant::now();
        let mut renewed = Instant::now();
        tokio::time::sleep(PROXY_SEES).await;
        loop {
            let open = self.node.open_transactions().await.ok();
            if open.is_none_or(|n| n == 0) || start.elapsed() >= DRAIN_LIMIT {
                return Ok(open);
            }
            if renewed.elapsed() >= self.cfg.loop_wait {
                self.keep_lease_or_stop(ttl, "draining before stepping down")
                    .await?;
                renewed = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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
