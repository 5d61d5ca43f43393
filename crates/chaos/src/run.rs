//! One run of the suite: starts etcd (if asked) and the cluster, the
//! workloads and the probe, then for each scheduled fault waits for
//! convergence, injects, heals, waits for convergence again and checks
//! for lost writes and the bank total; stops everything it started, by
//! PID, and removes its directory. Every wait is bounded by the profile's
//! deadline.
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::cluster::{Cluster, StartOptions};
use crate::etcd::Etcd;
use crate::faults::{self, Kind};
use crate::opts::{DcsKind, Opts, Plan};
use crate::probe::{self, Probe};
use crate::report::{FaultResult, Outcome};
use crate::schedule;
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
    let root = temp_root()?;
    println!(
        "pgwarden-chaos: {} profile, seed {seed}, {} faults planned, deadline {} s; in {}",
        format!("{:?}", opts.profile).to_lowercase(),
        plan.faults,
        plan.deadline.as_secs(),
        root.display()
    );
    let r = with_etcd(&opts, &plan, seed, &pgwarden, &root, started).await;
    if opts.keep {
        println!("pgwarden-chaos: kept {}", root.display());
    } else if let Err(e) = std::fs::remove_dir_all(&root) {
        eprintln!("pgwarden-chaos: cannot remove {}: {e}", root.display());
    }
    r
}

async fn with_etcd(
    opts: &Opts,
    plan: &Plan,
    seed: u64,
    pgwarden: &std::path::Path,
    root: &std::path::Path,
    started: Instant,
) -> anyhow::Result<Outcome> {
    let mut etcd = match opts.dcs {
        DcsKind::Etcd => Some(Etcd::start(root).await?),
        DcsKind::Local => None,
    };
    let r = async {
        let mut cluster = Cluster::start(StartOptions {
            pgwarden,
            root,
            nodes: opts.nodes,
            dcs: etcd.as_ref().map(Etcd::url),
            sync: opts.sync,
        })
        .await?;
        println!(
            "pgwarden-chaos: cluster up after {:.1} s (proxy port {})",
            started.elapsed().as_secs_f64(),
            cluster.port
        );
        let mut outcome = Outcome::new(opts, plan.faults, seed);
        let mut live = Live {
            stats: Arc::new(Stats::default()),
            probe: Arc::new(Probe::default()),
            tasks: Vec::new(),
            missing: HashSet::new(),
        };
        let ctx = Ctx {
            cluster: &cluster,
            etcd: etcd.as_ref(),
            plan,
            deadline: started + plan.deadline,
        };
        // The safety net under the deadline: every wait inside is bounded
        // already, and a fault cancelled here is healed as it is dropped.
        let r = tokio::time::timeout(
            ctx.left(END_RESERVE),
            exercise(&ctx, seed, &opts.kinds, &mut live, &mut outcome),
        )
        .await
        .unwrap_or_else(|_| {
            outcome
                .notes
                .push("the hard deadline was reached: the faults were cut short".into());
            Ok(())
        });
        let finished = tokio::time::timeout(
            ctx.left(STOP_RESERVE),
            finish(&ctx, &mut live, &mut outcome),
        )
        .await;
        if finished.is_err() {
            outcome
                .notes
                .push("the hard deadline was reached: the final checks were cut short".into());
        }
        let stopped = cluster.stop(ctx.left(Duration::ZERO)).await;
        r?;
        if let Err(e) = stopped {
            outcome.notes.push(format!("stop: {e:#}"));
        }
        outcome.elapsed = started.elapsed();
        anyhow::Ok(outcome)
    }
    .await;
    if let Some(e) = etcd.as_mut() {
        e.stop().await;
    }
    r
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
    cluster: &'a Cluster,
    etcd: Option<&'a Etcd>,
    plan: &'a Plan,
    deadline: Instant,
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
    opts_kinds: &[Kind],
    live: &mut Live,
    outcome: &mut Outcome,
) -> anyhow::Result<()> {
    let (cluster, etcd, plan, deadline) = (ctx.cluster, ctx.etcd, ctx.plan, ctx.deadline);
    workload::setup(cluster.port).await?;
    let stats = live.stats.clone();
    let nodes: Vec<(String, u16)> = cluster
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.pg_port))
        .collect();
    live.tasks = vec![
        tokio::spawn(workload::log_writer(cluster.port, stats.clone())),
        tokio::spawn(workload::bank(cluster.port, stats.clone())),
        tokio::spawn(probe::run(nodes, live.probe.clone())),
    ];
    let kinds: Vec<Kind> = Kind::ALL
        .into_iter()
        .filter(|k| opts_kinds.is_empty() || opts_kinds.contains(k))
        .filter(|k| *k != Kind::DcsOutage || etcd.is_some())
        .collect();
    anyhow::ensure!(
        !kinds.is_empty(),
        "no fault kind to inject (dcs-outage needs --dcs etcd)"
    );
    let steps = schedule::make(seed, &kinds, plan.faults);
    let missing = &mut live.missing;
    // A fault whose checks wait for the next convergence.
    let mut unchecked = false;
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
        let primary = match cluster.wait_converged(within).await {
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
        tokio::time::sleep(GAP).await;
        let mut f = match faults::inject(step.kind, cluster, etcd, primary, step.pick) {
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
        faults::heal(&mut f);
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
    let (cluster, plan) = (ctx.cluster, ctx.plan);
    let (stats, probe) = (live.stats.clone(), live.probe.clone());
    stats.stop.store(true, Ordering::Relaxed);
    probe.stop.store(true, Ordering::Relaxed);
    for t in live.tasks.drain(..) {
        // Every client call is bounded by 5 s.
        let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
    }
    let acks = stats.acks();
    outcome.acknowledged = acks.len() as u64;
    outcome.transfers = stats.transfers.load(Ordering::Relaxed);
    outcome.probe_rounds = probe.rounds();
    outcome.moments = probe.moments();
    outcome.log_errors = stats.log_errors.load(Ordering::Relaxed);
    outcome.bank_errors = stats.bank_errors.load(Ordering::Relaxed);
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
        match workload::logged_ids(cluster.nodes[p].pg_port).await {
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
    let port = cluster.nodes[primary].pg_port;
    // Acknowledged before the read began: committed, so visible to it.
    let acks = stats.acks();
    match workload::logged_ids(port).await {
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
    match workload::check_bank(port).await {
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
