//! The fault kinds, how each is injected into the running cluster and how
//! it is healed. Kills need no healing (`up` restarts a killed agent, an
//! agent restarts or replaces its PostgreSQL); a SIGSTOP is healed by
//! SIGCONT to exactly the processes stopped.
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::cluster::Cluster;
use crate::etcd::Etcd;
use crate::opts::Plan;
use crate::procs::{self, Signal};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// kill -9 of the primary's postmaster.
    PostmasterKill,
    /// kill -9 of the primary's agent (`up` restarts it).
    AgentKill,
    /// kill -9 of the primary's agent, postmaster and its children.
    NodeLoss,
    /// SIGSTOP of the primary's postmaster and children, then SIGCONT.
    PgHang,
    /// SIGSTOP of the primary's agent, then SIGCONT.
    AgentFreeze,
    /// SIGSTOP of etcd, then SIGCONT.
    DcsOutage,
    /// kill -9 of a standby's postmaster.
    StandbyKill,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::PostmasterKill,
        Kind::AgentKill,
        Kind::NodeLoss,
        Kind::PgHang,
        Kind::AgentFreeze,
        Kind::DcsOutage,
        Kind::StandbyKill,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::PostmasterKill => "postmaster-kill",
            Kind::AgentKill => "agent-kill",
            Kind::NodeLoss => "node-loss",
            Kind::PgHang => "pg-hang",
            Kind::AgentFreeze => "agent-freeze",
            Kind::DcsOutage => "dcs-outage",
            Kind::StandbyKill => "standby-kill",
        }
    }

    /// How long the fault lasts before it is healed.
    pub fn hold(self, plan: &Plan) -> Duration {
        match self {
            Kind::PgHang => plan.hang,
            Kind::AgentFreeze => plan.freeze,
            Kind::DcsOutage => plan.dcs_outage,
            _ => Duration::ZERO,
        }
    }
}

/// A fault in place.
pub struct Injected {
    pub kind: Kind,
    pub at: Instant,
    /// The node it hit (for a DCS outage: the primary at that time).
    pub node: usize,
    /// Processes SIGSTOPped, to be SIGCONTed.
    pub stopped: Vec<u32>,
    /// What was done, e.g. "kill -9 1234 (postmaster of node1)".
    pub what: String,
}

/// Injects `kind` into the converged cluster whose primary is `primary`;
/// `pick` chooses among standbys.
pub fn inject(
    kind: Kind,
    cluster: &Cluster,
    etcd: Option<&Etcd>,
    primary: usize,
    pick: usize,
) -> anyhow::Result<Injected> {
    let name = |i: usize| cluster.nodes[i].name.clone();
    let agent = |i: usize| {
        cluster
            .agent_pid(i)
            .with_context(|| format!("the agent of {} is not found", name(i)))
    };
    let postmaster = |i: usize| {
        cluster
            .postmaster_pid(i)
            .with_context(|| format!("the postmaster of {} is not running", name(i)))
    };
    let mut node = primary;
    let mut stopped = Vec::new();
    let what = match kind {
        Kind::PostmasterKill => {
            let pm = postmaster(primary)?;
            procs::signal(pm, Signal::Kill)?;
            format!("kill -9 {pm} (postmaster of {})", name(primary))
        }
        Kind::AgentKill => {
            let a = agent(primary)?;
            procs::signal(a, Signal::Kill)?;
            format!("kill -9 {a} (agent of {})", name(primary))
        }
        Kind::NodeLoss => {
            let a = agent(primary)?;
            let pm = postmaster(primary)?;
            let kids = procs::children(pm);
            for p in [a, pm].into_iter().chain(kids.iter().copied()) {
                // A child may have exited in between; the others still go.
                let _ = procs::signal(p, Signal::Kill);
            }
            format!(
                "kill -9 {a} (agent of {n}), {pm} (postmaster of {n}) and its {} children",
                kids.len(),
                n = name(primary)
            )
        }
        Kind::PgHang => {
            let pm = postmaster(primary)?;
            // The postmaster first: stopped, it forks no new children.
            procs::signal(pm, Signal::Stop)?;
            stopped.push(pm);
            for k in procs::children(pm) {
                if procs::signal(k, Signal::Stop).is_ok() {
                    stopped.push(k);
                }
            }
            format!(
                "kill -STOP {pm} (postmaster of {}) and its {} children",
                name(primary),
                stopped.len() - 1
            )
        }
        Kind::AgentFreeze => {
            let a = agent(primary)?;
            procs::signal(a, Signal::Stop)?;
            stopped.push(a);
            format!("kill -STOP {a} (agent of {})", name(primary))
        }
        Kind::DcsOutage => {
            let e = etcd.context("dcs-outage needs --dcs etcd")?;
            procs::signal(e.pid, Signal::Stop)?;
            stopped.push(e.pid);
            format!("kill -STOP {} (etcd)", e.pid)
        }
        Kind::StandbyKill => {
            let standbys: Vec<usize> = (0..cluster.nodes.len()).filter(|i| *i != primary).collect();
            node = *standbys
                .get(pick % standbys.len().max(1))
                .context("no standby")?;
            let pm = postmaster(node)?;
            procs::signal(pm, Signal::Kill)?;
            format!("kill -9 {pm} (postmaster of {})", name(node))
        }
    };
    Ok(Injected {
        kind,
        at: Instant::now(),
        node,
        stopped,
        what,
    })
}

/// A fault dropped unhealed (the run's deadline cancelled it) is healed:
/// nothing this suite stopped stays stopped.
impl Drop for Injected {
    fn drop(&mut self) {
        heal(self);
    }
}

/// SIGCONT to every process the fault stopped that still exists.
pub fn heal(f: &mut Injected) {
    for p in f.stopped.drain(..) {
        if procs::state(p).is_some() {
            let _ = procs::signal(p, Signal::Cont);
        }
    }
}
