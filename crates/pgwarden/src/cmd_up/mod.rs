//! `pgwarden up`: a highly available cluster on this machine with no
//! external service: N PostgreSQL nodes, each with its own agent process,
//! on the embedded local DCS (or etcd with `--dcs`), and the proxy in front
//! following the leader. Run again on the same directory, it resumes.
mod agents;
mod layout;

use std::time::{Duration, Instant};

use anyhow::Context;
use dcs::Dcs;

use crate::cli::UpArgs;
use agents::Agent;
use layout::Layout;

/// How often `pgwarden up` restarts an agent that keeps exiting.
const AGENT_RESTART_EVERY: Duration = Duration::from_secs(5);
/// How long the cluster may take to come up.
const READY_WITHIN: Duration = Duration::from_secs(180);
/// A node whose loop keeps failing the same way this long is reported.
const REPORT_FAILING_AFTER: Duration = Duration::from_secs(5);

pub fn run(args: UpArgs) -> anyhow::Result<()> {
    let (l, notes) = layout::prepare(&args)?;
    for n in &notes {
        println!("pgwarden: {n}");
    }
    let proxy_cfg = config::load(&l.proxy_conf())?;
    let (dcs_url, cluster) = proxy_cfg
        .proxy_dcs
        .clone()
        .context("proxy.toml has no dcs")?;
    let rt = crate::runtime::build(proxy_cfg.proxy.workers)?;
    let port = proxy_cfg.proxy.listen.port();
    let mut agents: Vec<Agent> = Vec::new();
    let r = rt.block_on(async {
        // The proxy's port first: in use, nothing else is started.
        let p = proxy::Proxy::bind(proxy_cfg, Some(l.proxy_conf()))
            .await
            .map_err(|e| anyhow::anyhow!("{e} (choose another --port)"))?;
        let state = p.state.clone();
        crate::cmd_proxy::spawn_signal_handlers(state.clone())?;
        // the proxy registers in the DCS (ctl list, the dashboard)
        let watchdog = crate::cmd_proxy::spawn_watchdog(&p)?;
        let proxy_task = tokio::spawn(p.run());
        let r = async {
            for i in 0..l.nodes {
                agents.push(agents::spawn(&l, i)?);
            }
            let store = dcs::open(&dcs_url, &cluster).await?;
            println!(
                "pgwarden: starting {} nodes in {} (logs in {})",
                l.nodes,
                l.dir.display(),
                l.dir.join("logs").display()
            );
            wait_ready(&store, &l, &state, &mut agents)
                .await
                .context("the cluster did not come up")?;
            print_banner(&l, port, &store).await;
            if !args.until_ready {
                status_loop(&store, &state, &l, &mut agents).await;
            }
            anyhow::Ok(())
        }
        .await;
        state.begin_shutdown();
        let _ = proxy_task.await;
        if let Some(w) = watchdog {
            let _ = tokio::time::timeout(Duration::from_secs(5), w).await;
        }
        r
    });
    if !agents.is_empty() {
        agents::stop_all(&mut agents);
        agents::stop_orphans(&l);
        eprintln!("pgwarden: stopped");
    }
    r
}

/// Waits until every node runs (the primary, streaming standbys) and the
/// proxy knows the primary. Fails at once when an agent exits (with its
/// cause), and reports a node whose loop keeps failing the same way.
async fn wait_ready(
    store: &dcs::AnyDcs,
    l: &Layout,
    state: &proxy::State,
    agents: &mut [Agent],
) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_WITHIN;
    let mut failing: Vec<Option<(String, Instant, bool)>> = vec![None; agents.len()];
    loop {
        for (i, a) in agents.iter_mut().enumerate() {
            if let Some(st) = a.child.try_wait()? {
                anyhow::bail!(
                    "the agent of node{i} exited ({st}): {}\n  see {}",
                    agents::exit_cause(l, i, a),
                    l.log(i).display()
                );
            }
        }
        let mut waiting_for = Vec::new();
        if let Ok(s) = store.snapshot().await {
            let members: Vec<ha::Member> = s
                .members
                .values()
                .filter_map(|v| ha::Member::from_json(v))
                .collect();
            for (i, f) in failing.iter_mut().enumerate() {
                let name = format!("node{i}");
                let m = members.iter().find(|m| m.name == name);
                let up =
                    m.is_some_and(|m| m.running && (m.role == ha::Role::Primary || m.streaming));
                if !up {
                    waiting_for.push(match m {
                        Some(m) => format!("{name}: {}", m.last_action),
                        None => format!("{name}: not registered"),
                    });
                }
                let sentence = m
                    .map(|m| m.last_action.clone())
                    .filter(|a| a.contains(" failed: "));
                match (sentence, f.as_mut()) {
                    (None, _) => *f = None,
                    (Some(s), Some((last, since, told))) if *last == s => {
                        if !*told && since.elapsed() >= REPORT_FAILING_AFTER {
                            *told = true;
                            println!(
                                "pgwarden: {name} keeps failing: {s}\n  see {}",
                                l.log(i).display()
                            );
                        }
                    }
                    (Some(s), _) => *f = Some((s, Instant::now(), false)),
                }
            }
            if s.leader.is_some() && waiting_for.is_empty() && state.topology.primary().is_some() {
                return Ok(());
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "not all {} nodes were running after {} s:\n  {}",
            l.nodes,
            READY_WITHIN.as_secs(),
            waiting_for.join("\n  ")
        );
        if state.is_shutting_down() {
            anyhow::bail!("interrupted");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The first node's REST API (any agent serves the dashboard).
fn first_api(l: &Layout) -> Option<String> {
    let a = config::load(&l.node_conf(0)).ok()?.agent?;
    let scheme = if a.api_tls.is_some() { "https" } else { "http" };
    Some(format!("{scheme}://{}", a.api_listen))
}

async fn print_banner(l: &Layout, port: u16, store: &dcs::AnyDcs) {
    let dir = &l.dir;
    println!("\npgwarden is up: {}\n", status_line(store).await);
    println!("  connect:  psql -h 127.0.0.1 -p {port} -U postgres postgres");
    println!("  admin:    psql -h 127.0.0.1 -p {port} -U postgres pgwarden    (SHOW POOL_NODES; SHOW POOLS;)");
    println!(
        "  configs:  {}/node*.toml, {}/proxy.toml",
        dir.display(),
        dir.display()
    );
    println!("  data:     {}/node*", l.data_root.display());
    if let Some(api) = first_api(l) {
        println!(
            "  dashboard: {api}/dashboard    (every agent serves it; the token for operations: {}/api-token)",
            dir.display()
        );
        println!("  metrics:  {api}/metrics    (Prometheus, on every agent)");
    }
    println!("\nCtrl-C stops the proxy, the agents and PostgreSQL; run again to resume.\n");
}

async fn status_line(store: &dcs::AnyDcs) -> String {
    match store.snapshot().await {
        Ok(s) => {
            let leader = s
                .leader
                .as_ref()
                .map(|l| l.name.clone())
                .unwrap_or_else(|| "none".into());
            let members: Vec<String> = s
                .members
                .values()
                .filter_map(|v| ha::Member::from_json(v))
                .map(|m| {
                    let role = match (m.running, m.role) {
                        (false, _) => "down".to_owned(),
                        (true, ha::Role::Primary) => "primary".to_owned(),
                        (true, _) if m.streaming => "streaming".to_owned(),
                        (true, _) => "replica".to_owned(),
                    };
                    format!("{} {role} tl{}", m.name, m.timeline)
                })
                .collect();
            format!("leader {leader} | {}", members.join(" | "))
        }
        Err(e) => format!("DCS unavailable: {e}"),
    }
}

/// Until Ctrl-C: prints the cluster's state when it changes, and restarts
/// an agent that exited (the new one adopts its PostgreSQL if that still
/// runs), at most once every few seconds per node.
async fn status_loop(store: &dcs::AnyDcs, state: &proxy::State, l: &Layout, agents: &mut [Agent]) {
    use std::io::Write;
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut last = String::new();
    let mut restarted: Vec<Option<Instant>> = vec![None; agents.len()];
    while !state.is_shutting_down() {
        for (i, a) in agents.iter_mut().enumerate() {
            let Ok(Some(st)) = a.child.try_wait() else {
                continue;
            };
            if restarted[i].is_some_and(|t| t.elapsed() < AGENT_RESTART_EVERY) {
                continue;
            }
            if tty {
                println!();
            }
            println!("pgwarden: the agent of node{i} exited ({st}); restarting it");
            restarted[i] = Some(Instant::now());
            match agents::spawn(l, i) {
                Ok(c) => *a = c,
                Err(e) => println!("pgwarden: {e:#}"),
            }
        }
        let line = format!(
            "{} | clients {}",
            status_line(store).await,
            state
                .client_count
                .load(std::sync::atomic::Ordering::Relaxed)
        );
        if tty {
            print!("\r\x1b[2K{line}");
            let _ = std::io::stdout().flush();
        } else if line != last {
            println!("{line}");
        }
        last = line;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if tty {
        println!();
    }
}
