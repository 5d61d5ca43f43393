//! The fault kinds, how each is injected into the running cluster and how
//! it is healed. Kills need no healing (`up`, or the supervisor of
//! `--net netns`, restarts a killed agent; an agent restarts or replaces
//! its PostgreSQL); every other fault records what undoes it (SIGCONT to
//! exactly the processes stopped, links set up again, the filler file
//! removed, the local store exchanged back), done when healed or dropped.
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::cluster::Cluster;
use crate::conn::Conn;
use crate::etcd::Etcd;
use crate::localdcs;
use crate::netns::{self, Net, Side};
use crate::opts::Plan;
use crate::procs::{self, Signal};
use crate::walfs::{self, WalFs};

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
    /// The primary's link to the dcs network down: cut from etcd, still
    /// reachable by the standbys and the proxy.
    PartitionPrimaryDcs,
    /// Both of the primary's links down: cut from etcd, the standbys and
    /// the proxy (which reaches nodes on the data network).
    PartitionPrimaryAll,
    /// Both links of one standby down.
    PartitionStandby,
    /// The primary's WAL tmpfs filled by a file, then the file removed.
    WalFull,
    /// The local DCS's directory exchanged with a file, then back.
    LocalDcsOutage,
}

impl Kind {
    pub const ALL: [Kind; 12] = [
        Kind::PostmasterKill,
        Kind::AgentKill,
        Kind::NodeLoss,
        Kind::PgHang,
        Kind::AgentFreeze,
        Kind::DcsOutage,
        Kind::StandbyKill,
        Kind::PartitionPrimaryDcs,
        Kind::PartitionPrimaryAll,
        Kind::PartitionStandby,
        Kind::WalFull,
        Kind::LocalDcsOutage,
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
            Kind::PartitionPrimaryDcs => "partition-primary-dcs",
            Kind::PartitionPrimaryAll => "partition-primary-all",
            Kind::PartitionStandby => "partition-standby",
            Kind::WalFull => "wal-full",
            Kind::LocalDcsOutage => "local-dcs-outage",
        }
    }

    pub fn needs_netns(self) -> bool {
        matches!(
            self,
            Kind::PartitionPrimaryDcs | Kind::PartitionPrimaryAll | Kind::PartitionStandby
        )
    }

    /// In the short profile (CI, local DCS, at most 8 minutes).
    pub fn in_short_profile(self) -> bool {
        !self.needs_netns() && self != Kind::WalFull
    }

    /// Why this kind cannot run with this DCS and network, if it cannot.
    pub fn unavailable(self, etcd: bool, netns: bool, root: bool) -> Option<&'static str> {
        match self {
            Kind::DcsOutage if !etcd => Some("needs --dcs etcd (it pauses etcd)"),
            Kind::LocalDcsOutage if etcd => Some("needs the local DCS (without --dcs etcd)"),
            k if k.needs_netns() && !etcd => Some(
                "needs --dcs etcd (the local DCS is a directory on this machine: no network \
                 between it and the nodes to cut)",
            ),
            k if k.needs_netns() && !netns => Some("needs --net netns (or auto)"),
            k if k.needs_netns() && !root => Some("needs root (network namespaces)"),
            Kind::WalFull if !root => Some("needs root (tmpfs mounts)"),
            _ => None,
        }
    }

    /// How long the fault lasts before it is healed.
    pub fn hold(self, plan: &Plan) -> Duration {
        match self {
            Kind::PgHang => plan.hang,
            Kind::AgentFreeze => plan.freeze,
            Kind::DcsOutage | Kind::LocalDcsOutage => plan.dcs_outage,
            k if k.needs_netns() => plan.partition,
            Kind::WalFull => plan.wal_full,
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
    /// What heals it, done in this order.
    undo: Vec<Undo>,
    /// What was done, e.g. "kill -9 1234 (postmaster of node1)".
    pub what: String,
}

enum Undo {
    Cont(u32),
    LinkUp(String),
    Remove(PathBuf),
    Store(localdcs::Blocked),
}

/// What a fault may need besides the cluster.
pub struct Env<'a> {
    pub cluster: &'a Cluster,
    pub etcd: Option<&'a Etcd>,
    pub net: Option<&'a Net>,
    pub walfs: Option<&'a WalFs>,
}

/// Injects `kind` into the converged cluster whose primary is `primary`;
/// `pick` chooses among standbys.
pub async fn inject(
    kind: Kind,
    env: &Env<'_>,
    primary: usize,
    pick: usize,
) -> anyhow::Result<Injected> {
    let (cluster, etcd) = (env.cluster, env.etcd);
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
    let standby = || {
        let standbys: Vec<usize> = (0..cluster.nodes.len()).filter(|i| *i != primary).collect();
        standbys
            .get(pick % standbys.len().max(1))
            .copied()
            .context("no standby")
    };
    let net = || env.net.context("partitions need --net netns");
    // Built first: a fault that fails half-way is healed as it is dropped.
    let mut f = Injected {
        kind,
        at: Instant::now(),
        node: primary,
        undo: Vec::new(),
        what: String::new(),
    };
    let mut at = None;
    f.what = match kind {
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
            f.undo.push(Undo::Cont(pm));
            let mut kids = 0;
            for k in procs::children(pm) {
                if procs::signal(k, Signal::Stop).is_ok() {
                    f.undo.push(Undo::Cont(k));
                    kids += 1;
                }
            }
            format!(
                "kill -STOP {pm} (postmaster of {}) and its {kids} children",
                name(primary),
            )
        }
        Kind::AgentFreeze => {
            let a = agent(primary)?;
            procs::signal(a, Signal::Stop)?;
            f.undo.push(Undo::Cont(a));
            format!("kill -STOP {a} (agent of {})", name(primary))
        }
        Kind::DcsOutage => {
            let e = etcd.context("dcs-outage needs --dcs etcd")?;
            procs::signal(e.pid, Signal::Stop)?;
            f.undo.push(Undo::Cont(e.pid));
            format!("kill -STOP {} (etcd)", e.pid)
        }
        Kind::StandbyKill => {
            f.node = standby()?;
            let pm = postmaster(f.node)?;
            procs::signal(pm, Signal::Kill)?;
            format!("kill -9 {pm} (postmaster of {})", name(f.node))
        }
        Kind::PartitionPrimaryDcs | Kind::PartitionPrimaryAll | Kind::PartitionStandby => {
            let net = net()?;
            let sides: &[Side] = match kind {
                Kind::PartitionPrimaryDcs => &[Side::Dcs],
                _ => &[Side::Dcs, Side::Data],
            };
            if kind == Kind::PartitionStandby {
                f.node = standby()?;
            }
            let mut links = Vec::new();
            for side in sides {
                let l = net.veth(f.node, *side);
                // Undone even if setting it down failed half-way.
                f.undo.push(Undo::LinkUp(l.clone()));
                netns::set_link(&l, false)?;
                links.push(l);
            }
            format!(
                "ip link set {} down ({} cut from {})",
                links.join(", "),
                name(f.node),
                if sides.len() == 1 {
                    "the dcs network"
                } else {
                    "the dcs and data networks"
                }
            )
        }
        Kind::WalFull => {
            let w = env.walfs.context("wal-full needs the WAL tmpfs")?;
            anyhow::ensure!(
                w.on_tmpfs(cluster, primary),
                "the pg_wal of {} is not on its tmpfs",
                name(primary)
            );
            let (file, bytes) = w.fill(primary)?;
            f.undo.push(Undo::Remove(file));
            at = Some(Instant::now());
            let switches = switch_wal(&cluster.nodes[primary].pg).await;
            format!(
                "filled {}'s WAL tmpfs ({} MB) with {} MB; then {switches}",
                name(primary),
                walfs::SIZE_MB,
                bytes >> 20
            )
        }
        Kind::LocalDcsOutage => {
            let dir = cluster
                .local_dcs
                .as_deref()
                .context("local-dcs-outage needs the local DCS")?;
            f.undo.push(Undo::Store(localdcs::block(dir)?));
            format!("{} exchanged with a file (ENOTDIR)", dir.display())
        }
    };
    f.at = at.unwrap_or_else(Instant::now);
    Ok(f)
}

/// Up to 20 `pg_switch_wal()` on the primary, within 5 s, as a busy
/// primary that needs new WAL segments: with its tmpfs full, one of them
/// must fail. Says how many went through and how the first failed.
async fn switch_wal(primary: &crate::conn::Target) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut n = 0;
    let why = loop {
        if n == 20 || Instant::now() >= deadline {
            break "no error".to_owned();
        }
        let c = match Conn::connect(primary, Duration::from_secs(2)).await {
            Ok(c) => c,
            Err(e) => break format!("{:#}", e.root_cause()),
        };
        if let Err(e) = c.query("SELECT pg_switch_wal()").await {
            break format!("{:#}", e.root_cause());
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let why: String = why.split_whitespace().collect::<Vec<_>>().join(" ");
    format!("{n} pg_switch_wal() ({why})")
}

/// A fault dropped unhealed (the run's deadline cancelled it) is healed:
/// nothing this suite stopped, cut or filled stays so.
impl Drop for Injected {
    fn drop(&mut self) {
        for e in heal(self) {
            eprintln!("pgwarden-chaos: healing {}: {e}", self.kind.name());
        }
    }
}

/// Undoes the fault: SIGCONT to every process it stopped that still
/// exists, links up, the filler removed, the store back. Returns what
/// could not be undone.
pub fn heal(f: &mut Injected) -> Vec<String> {
    let mut errors = Vec::new();
    for u in f.undo.drain(..) {
        let r = match u {
            Undo::Cont(p) if procs::state(p).is_some() => procs::signal(p, Signal::Cont),
            Undo::Cont(_) => Ok(()),
            Undo::LinkUp(l) => netns::set_link(&l, true),
            Undo::Remove(p) => match std::fs::remove_file(&p) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(anyhow::anyhow!(
                    "{} was already gone (something in the cluster removed it during the fault)",
                    p.display()
                )),
                r => r.with_context(|| format!("cannot remove {}", p.display())),
            },
            Undo::Store(mut b) => b.restore(),
        };
        if let Err(e) = r {
            errors.push(format!("{e:#}"));
        }
    }
    errors
}
