//! One run of the suite: creates the namespaces (`--net netns`), etcd (if
//! asked), the WAL tmpfs mounts (`wal-full`) and the cluster, the
//! workloads and the probe, then for each scheduled fault waits for
//! convergence, injects, heals, waits for convergence again and checks
//! for lost writes and the bank total; stops everything it started, by
//! PID, unmounts and removes what it created (also on an error and on
//! SIGINT/SIGTERM), and removes its directory unless the run failed.
//! Every wait is bounded by the profile's deadline.
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::watch;

use crate::cluster::{Cluster, StartOptions};
use crate::conn::Target;
use crate::etcd::Etcd;
use crate::faults::{self, Kind};
use crate::netns::{self, Net};
use crate::opts::{DcsKind, Opts, Plan, Selection};
use crate::probe::{self, Probe};
use crate::report::{FaultResult, Outcome};
use crate::schedule;
use crate::walfs::{self, WalFs};
use crate::workload::{self, Ack, Stats};

/// Kept free at the end of the deadline for the final checks and the stop.
const END_RESERVE: Duration = Duration::from_secs(60);
/// Kept free at the end of the deadline for stopping the cluster.
const STOP_RESERVE: Duration = Duration::from_secs(20);
/// Kept free after the final wait for convergence, for the final reads.
const READS_RESERVE: Duration = Duration::from_secs(25);
/// Steady state between two faults.
const GAP: Duration = Duration::from_secs(1);
/// After convergence, how much longer a first write may take to come back.
const WRITES_GRACE: Duration = Duration::from_secs(10);

pub async fn run(opts: Opts) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let plan = opts.plan();
    let sel = opts.select()?;
    let seed = opts.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    });
    let pgwarden = match &opts.pgwarden {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory of this binary")?
            .join("pgwarden"),
    };
    anyhow::ensure!(
        pgwarden.is_file(),
        "{} not found (build it: cargo build --release -p pgwarden, or give --pgwarden)",
        pgwarden.display()
    );
    for l in netns::clean_leftovers()
        .into_iter()
        .chain(walfs::clean_leftovers())
    {
        println!("pgwarden-chaos: removed {l}, left by an earlier run that is gone");
    }
    let interrupt = interrupt_watch()?;
    let root = temp_root()?;
    let kinds: Vec<&str> = sel.kinds.iter().map(|k| k.name()).collect();
    println!(
        "pgwarden-chaos: {} profile, seed {seed}, {} faults planned, deadline {} s; in {}\n\
         pgwarden-chaos: nodes {}; kinds: {}",
        format!("{:?}", opts.profile).to_lowercase(),
        plan.faults,
        plan.deadline.as_secs(),
        root.display(),
        if sel.netns {
            "in network namespaces (--net netns)"
        } else {
            "on the loopback (`pgwarden up`)"
        },
        kinds.join(", ")
    );
    let mut outcome = Outcome::new(&opts, plan.faults, seed);
    outcome.left_out = sel.left_out.clone();
    let mut res = Resources::default();
    let a = Args {
        opts: &opts,
        plan: &plan,
        sel: &sel,
        seed,
        pgwarden: &pgwarden,
        root: &root,
        started,
        deadline: started + plan.deadline,
    };
    let r = {
        let body = body(&a, &mut res, &mut outcome);
        let mut interrupt = interrupt.clone();
        tokio::select! {
            r = body => r,
            _ = interrupt.wait_for(|i| *i) => Ok(()),
        }
    };
    if *interrupt.borrow() {
        outcome.notes.push(
            "interrupted (SIGINT/SIGTERM): the fault in place was healed, the run cut short".into(),
        );
    }
    teardown(&a, &mut res, &mut outcome).await;
    outcome.elapsed = started.elapsed();
    // A failed run keeps its logs: what the agents did is the evidence.
    let failed = r.is_ok() && !outcome.failures().is_empty();
    if opts.keep || failed {
        println!(
            "pgwarden-chaos: kept {}{}",
            root.display(),
            if opts.keep { "" } else { " (the run failed)" }
        );
    } else if let Err(e) = std::fs::remove_dir_all(&root) {
        eprintln!("pgwarden-chaos: cannot remove {}: {e}", root.display());
    }
    r.map(|()| outcome)
}

/// A first SIGINT or SIGTERM cuts the run short: the fault in place is
/// healed, the cluster stopped, namespaces and mounts removed.
fn interrupt_watch() -> anyhow::Result<watch::Receiver<bool>> {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = watch::channel(false);
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
        eprintln!(
            "pgwarden-chaos: interrupted: healing, stopping the cluster, removing namespaces \
             and mounts (at most a few minutes)"
        );
        let _ = tx.send(true);
    });
    Ok(rx)
}

struct Args<'a> {
    opts: &'a Opts,
    plan: &'a Plan,
    sel: &'a Selection,
    seed: u64,
    pgwarden: &'a std::path::Path,
    root: &'a std::path::Path,
    started: Instant,
    deadline: Instant,
}

impl Args<'_> {
    /// The time left before the deadline less `reserve` (at least 5 s).
    fn left(&self, reserve: Duration) -> Duration {
        self.deadline
            .saturating_duration_since(Instant::now())
            .saturating_sub(reserve)
            .max(Duration::from_secs(5))
    }
}

/// What a run creates, released by [`teardown`] whatever happened.
#[derive(Default)]
struct Resources {
    net: Option<Net>,
    etcd: Option<Etcd>,
    walfs: Option<WalFs>,
    cluster: Option<Cluster>,
    live: Option<Live>,
}

/// Creates the network, etcd, the WAL mounts and the cluster, then runs
/// the faults and the final checks.
async fn body(a: &Args<'_>, res: &mut Resources, outcome: &mut Outcome) -> anyhow::Result<()> {
    let nodes = usize::from(a.opts.nodes);
    if a.sel.netns {
        res.net = Some(Net::create(nodes)?);
    }
    if a.opts.dcs == DcsKind::Etcd {
        let host = match &res.net {
            Some(n) => n.dcs_host(),
            None => "127.0.0.1".to_owned(),
        };
        res.etcd = Some(Etcd::start(a.root, &host).await?);
    }
    if a.sel.kinds.contains(&Kind::WalFull) {
        // Before the agents start: `ip netns exec` gives each its own
        // copy of the mount table.
        res.walfs = Some(WalFs::mount(a.root, nodes, "postgres")?);
    }
    res.cluster = Some(
        Cluster::launch(StartOptions {
            pgwarden: a.pgwarden,
            root: a.root,
            nodes: a.opts.nodes,
            dcs: res.etcd.as_ref().map(Etcd::url),
            sync: a.opts.sync,
            net: res.net.as_ref(),
        })
        .await?,
    );
    let Some(cluster) = res.cluster.as_mut() else {
        anyhow::bail!("no cluster");
    };
    cluster.wait_up().await?;
    let cluster = &*cluster;
    println!(
        "pgwarden-chaos: cluster up after {:.1} s (proxy port {})",
        a.started.elapsed().as_secs_f64(),
        cluster.port
    );
    if let Some(w) = &res.walfs {
        let (p, _) = cluster
            .wait_converged(a.plan.converge_within)
            .await
            .map_err(|why| anyhow::anyhow!("not converged before moving pg_wal: {why}"))?;
        w.prepare(cluster, p, a.plan.converge_within).await?;
        println!(
            "pgwarden-chaos: every node's pg_wal is on its {} MB tmpfs",
            walfs::SIZE_MB
        );
    }
    let ctx = Ctx {
        env: faults::Env {
            cluster,
            etcd: res.etcd.as_ref(),
            net: res.net.as_ref(),
            walfs: res.walfs.as_ref(),
        },
        plan: a.plan,
        deadline: a.deadline,
        netns: a.sel.netns,
    };
    let live = res.live.insert(Live {
        stats: Arc::new(Stats::default()),
        probe: Arc::new(Probe::default()),
        tasks: Vec::new(),
        missing: HashSet::new(),
    });
    // The safety net under the deadline: every wait inside is bounded
    // already, and a fault cancelled here is healed as it is dropped.
    let r = tokio::time::timeout(
        ctx.left(END_RESERVE),
        exercise(&ctx, a.seed, &a.sel.kinds, live, outcome),
    )
    .await
    .unwrap_or_else(|_| {
        outcome
            .notes
            .push("the hard deadline was reached: the faults were cut short".into());
        Ok(())
    });
    let finished = tokio::time::timeout(ctx.left(STOP_RESERVE), finish(&ctx, live, outcome)).await;
    if finished.is_err() {
        outcome
            .notes
            .push("the hard deadline was reached: the final checks were cut short".into());
    }
    r
}

/// Stops the workloads, the cluster and etcd, unmounts the WAL tmpfs
/// mounts and removes the namespaces, each step bounded.
async fn teardown(a: &Args<'_>, res: &mut Resources, outcome: &mut Outcome) {
    if let Some(live) = res.live.take() {
        live.stats.stop.store(true, Ordering::Relaxed);
        live.probe.stop.store(true, Ordering::Relaxed);
        // Cut short (interrupted, an error): the counts so far, so that a
        // moment with two primaries is still reported.
        if !live.tasks.is_empty() {
            counts(&live, outcome);
        }
        for t in live.tasks {
            t.abort();
        }
    }
    if let Some(c) = res.cluster.as_mut() {
        if let Err(e) = c.stop(a.left(Duration::ZERO)).await {
            outcome.notes.push(format!("stop: {e:#}"));
        }
    }
    if let Some(e) = res.etcd.as_mut() {
        e.stop().await;
    }
    if let Some(w) = res.walfs.as_mut() {
        w.unmount();
    }
    if let Some(n) = res.net.as_mut() {
        n.destroy();
    }
}

/// `/tmp/pgwarden-chaos-<pid>-<nanos>`, mode 0755: PostgreSQL runs as
/// another OS user and must reach its data directory below it.
fn temp_root() -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let root = std::env::temp_dir().join(format!("pgwarden-chaos-{}-{nanos}", std::process::id()));
    std::fs::create_dir(&root).with_context(|| format!("cannot create {}", root.display()))?;
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))?;
    Ok(root)
}

/// What runs beside the faults: the workloads, the probe, and the
/// acknowledged ids found missing so far.
struct Live {
    stats: Arc<Stats>,
    probe: Arc<Probe>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    missing: HashSet<i64>,
}

struct Ctx<'a> {
    env: faults::Env<'a>,
    plan: &'a Plan,
    deadline: Instant,
    /// The probe reaches nodes by their Unix sockets (a partition does
    /// not hide a node from it).
    netns: bool,
}

impl Ctx<'_> {
    /// The time left before the deadline less `reserve` (at least 5 s).
    fn left(&self, reserve: Duration) -> Duration {
        self.deadline
            .saturating_duration_since(Instant::now())
            .saturating_sub(reserve)
            .max(Duration::from_secs(5))
    }
}

/// Starts the workloads and the probe, then runs the schedule.
async fn exercise(
    ctx: &Ctx<'_>,
    seed: u64,
    kinds: &[Kind],
    live: &mut Live,
    outcome: &mut Outcome,
) -> anyhow::Result<()> {
    let (cluster, plan, deadline) = (ctx.env.cluster, ctx.plan, ctx.deadline);
    workload::setup(cluster.port).await?;
    let stats = live.stats.clone();
    let nodes: Vec<(String, Target, std::path::PathBuf)> = cluster
        .nodes
        .iter()
        .map(|n| {
            let to = if ctx.netns { &n.socket } else { &n.pg };
            (n.name.clone(), to.clone(), n.data_dir.clone())
        })
        .collect();
    live.tasks = vec![
        tokio::spawn(workload::log_writer(cluster.port, stats.clone())),
        tokio::spawn(workload::bank(cluster.port, stats.clone())),
        tokio::spawn(probe::run(nodes, live.probe.clone())),
    ];
    anyhow::ensure!(!kinds.is_empty(), "no fault kind to inject");
    let steps = schedule::make(seed, kinds, plan.faults);
    let missing = &mut live.missing;
    // A fault whose checks wait for the next convergence.
    let mut unchecked = false;
    let mut crowded_said = false;
    for (n, step) in steps.iter().enumerate() {
        let hold = step.kind.hold(plan);
        let left = deadline.saturating_duration_since(Instant::now());
        if left < hold + plan.converge_within + END_RESERVE {
            outcome.notes.push(format!(
                "deadline: stopped after {n} faults ({} s left)",
                left.as_secs()
            ));
            break;
        }
        // A fault that did not converge in time gets as long again here:
        // the run goes on if the cluster comes back at all.
        let within = (plan.converge_within * 2).min(left - hold - END_RESERVE);
        let mut primary = match cluster.wait_converged(within).await {
            Ok((p, _)) => p,
            Err(why) => {
                outcome.notes.push(format!(
                    "the cluster did not converge within {} s before fault {}: {why}",
                    within.as_secs(),
                    n + 1
                ));
                break;
            }
        };
        if unchecked {
            check(cluster, primary, &stats, missing, outcome).await;
            unchecked = false;
        }
        if let (Kind::WalFull, Some(w)) = (step.kind, ctx.env.walfs) {
            // A node re-cloned since has a plain pg_wal again.
            match w.prepare(cluster, primary, plan.converge_within).await {
                Ok(p) => primary = p,
                Err(e) => {
                    outcome
                        .notes
                        .push(format!("fault {} (wal-full) not injected: {e:#}", n + 1));
                    continue;
                }
            }
        }
        tokio::time::sleep(GAP).await;
        let mut f = match faults::inject(step.kind, &ctx.env, primary, step.pick).await {
            Ok(f) => f,
            Err(e) => {
                outcome.notes.push(format!(
                    "fault {} ({}) not injected: {e:#}",
                    n + 1,
                    step.kind.name()
                ));
                continue;
            }
        };
        tokio::time::sleep(hold).await;
        for e in faults::heal(&mut f) {
            outcome.notes.push(format!(
                "fault {} ({}): healing: {e}",
                n + 1,
                step.kind.name()
            ));
        }
        let healed = Instant::now();
        let conv = cluster.wait_converged(plan.converge_within).await;
        let mut r = FaultResult::new(n + 1, &f, &cluster.nodes[f.node].name);
        match &conv {
            Ok((p, at)) => {
                r.converged = Ok(at.duration_since(healed));
                r.primary_after = Some(cluster.nodes[*p].name.clone());
            }
            Err(why) => {
                r.converged = Err(why.clone());
                r.log_tail = (0..cluster.nodes.len())
                    .flat_map(|i| {
                        let name = cluster.nodes[i].name.clone();
                        cluster
                            .log_tail(i, 3)
                            .into_iter()
                            .map(move |l| format!("{name}: {l}"))
                    })
                    .collect();
            }
        }
        if let Some(c) = ctx.env.walfs.and_then(|w| w.crowded()) {
            if !crowded_said {
                println!("  {c}");
                outcome.notes.push(format!("after fault {}: {c}", n + 1));
                crowded_said = true;
            }
        }
        r.writes_back = writes_back(&stats, f.at, WRITES_GRACE).await;
        r.longest_gap = longest_gap(&stats.acks(), f.at, Instant::now());
        println!("{}", r.line(n + 1, steps.len()));
        outcome.faults.push(r);
        match conv {
            Ok((p, _)) => check(cluster, p, &stats, missing, outcome).await,
            Err(_) => match cluster.sole_primary().await {
                Some(p) => check(cluster, p, &stats, missing, outcome).await,
                None => unchecked = true,
            },
        }
    }
    Ok(())
}

/// Stops the workloads and the probe, collects their counts, and checks
/// the final state on the converged primary.
async fn finish(ctx: &Ctx<'_>, live: &mut Live, outcome: &mut Outcome) {
    let (cluster, plan) = (ctx.env.cluster, ctx.plan);
    let (stats, probe) = (live.stats.clone(), live.probe.clone());
    stats.stop.store(true, Ordering::Relaxed);
    probe.stop.store(true, Ordering::Relaxed);
    for t in live.tasks.drain(..) {
        // Every client call is bounded by 5 s.
        let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
    }
    counts(live, outcome);
    let acks = stats.acks();
    // The final state: every acknowledged id against the final primary.
    let within = plan
        .converge_within
        .min(ctx.left(STOP_RESERVE + READS_RESERVE));
    let primary = match cluster.wait_converged(within).await {
        Ok((p, _)) => Some(p),
        Err(why) => {
            let p = cluster.sole_primary().await;
            outcome.notes.push(format!(
                "not converged at the end ({why}); final checks {}",
                match p {
                    Some(p) => format!("on the only primary, {}", cluster.nodes[p].name),
                    None => "not run: no single primary".into(),
                }
            ));
            p
        }
    };
    if let Some(p) = primary {
        check(cluster, p, &stats, &mut live.missing, outcome).await;
        match workload::logged_ids(&cluster.nodes[p].pg).await {
            Ok(ids) => {
                outcome.lost_final =
                    Some(acks.iter().filter(|a| !ids.contains(&a.id)).count() as u64)
            }
            Err(e) => outcome
                .notes
                .push(format!("final read of chaos_log: {e:#}")),
        }
    }
}

/// The workloads' and the probe's counts so far.
fn counts(live: &Live, outcome: &mut Outcome) {
    let (stats, probe) = (&live.stats, &live.probe);
    outcome.acknowledged = stats.acks().len() as u64;
    outcome.transfers = stats.transfers.load(Ordering::Relaxed);
    outcome.probe_rounds = probe.rounds();
    outcome.moments = probe.moments();
    let foreign = probe.foreign.lock().map(|f| *f).unwrap_or(0);
    let note = format!(
        "another cluster's server answered on a node's port {foreign} times (another run took the port while the node was down); not counted as primaries"
    );
    if foreign > 0 && !outcome.notes.contains(&note) {
        outcome.notes.push(note);
    }
    outcome.log_errors = stats.log_errors.load(Ordering::Relaxed);
    outcome.bank_errors = stats.bank_errors.load(Ordering::Relaxed);
}

/// The time from the fault to the first write sent after it and
/// acknowledged; waits up to `grace` more for it.
async fn writes_back(stats: &Stats, at: Instant, grace: Duration) -> Option<Duration> {
    let until = Instant::now() + grace;
    loop {
        let first = stats.acks.lock().ok().and_then(|a| {
            // Sent times increase along the list.
            let i = a.partition_point(|x| x.sent < at);
            a.get(i).map(|x| x.acked.duration_since(at))
        });
        if first.is_some() || Instant::now() >= until {
            return first;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The longest time in `from..to` without an acknowledged write.
fn longest_gap(acks: &[Ack], from: Instant, to: Instant) -> Duration {
    let mut last = from;
    let mut longest = Duration::ZERO;
    for a in acks.iter().filter(|a| a.acked > from && a.acked <= to) {
        longest = longest.max(a.acked.duration_since(last));
        last = a.acked;
    }
    longest.max(to.saturating_duration_since(last))
}

/// On the converged primary: acknowledged ids missing from the log (the
/// new ones are the last fault's), and the bank's total.
async fn check(
    cluster: &Cluster,
    primary: usize,
    stats: &Stats,
    missing: &mut HashSet<i64>,
    outcome: &mut Outcome,
) {
    let to = &cluster.nodes[primary].pg;
    // Acknowledged before the read began: committed, so visible to it.
    let acks = stats.acks();
    match workload::logged_ids(to).await {
        Ok(ids) => {
            let new: Vec<i64> = acks
                .iter()
                .filter(|a| !ids.contains(&a.id) && !missing.contains(&a.id))
                .map(|a| a.id)
                .collect();
            if let Some(f) = outcome.faults.last_mut() {
                f.lost += new.len() as u64;
            } else {
                outcome.lost_before_faults += new.len() as u64;
            }
            if !new.is_empty() {
                println!(
                    "  lost: {} acknowledged ids missing on {} (e.g. {:?})",
                    new.len(),
                    cluster.nodes[primary].name,
                    &new[..new.len().min(5)]
                );
            }
            missing.extend(new);
        }
        Err(e) => outcome.notes.push(format!("reading chaos_log: {e:#}")),
    }
    outcome.bank_checks += 1;
    match workload::check_bank(to).await {
        Ok(Ok(())) => {}
        Ok(Err(v)) => {
            println!("  bank violated: {v}");
            outcome.bank_violations.push(v);
        }
        Err(e) => outcome.notes.push(format!("reading chaos_bank: {e:#}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_gap_counts_from_the_fault_and_to_its_end() {
        let t = Instant::now();
        let s = |n: u64| t + Duration::from_millis(n);
        let ack = |n: u64| Ack {
            id: n as i64,
            sent: s(n),
            acked: s(n),
        };
        let acks = [ack(50), ack(100), ack(400), ack(450)];
        assert_eq!(longest_gap(&acks, s(0), s(500)), Duration::from_millis(300));
        assert_eq!(
            longest_gap(&acks, s(0), s(1500)),
            Duration::from_millis(1050)
        );
        assert_eq!(longest_gap(&[], s(0), s(200)), Duration::from_millis(200));
    }
}
