//! `pgwarden up`: a highly available cluster on this machine with no
//! external service: N PostgreSQL nodes, each with its own agent process,
//! on the embedded local DCS (or etcd with `--dcs`), and the proxy in front
//! following the leader. Run again on the same directory, it resumes.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use dcs::Dcs;

use crate::cli::UpArgs;

fn free_ports(from: u16, n: usize, taken: &[u16]) -> Vec<u16> {
    (from..from.saturating_add(2000))
        .filter(|p| !taken.contains(p) && std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .take(n)
        .collect()
}

struct Layout {
    dir: PathBuf,
}

impl Layout {
    fn node_conf(&self, i: usize) -> PathBuf {
        self.dir.join(format!("node{i}.toml"))
    }
    fn proxy_conf(&self) -> PathBuf {
        self.dir.join("proxy.toml")
    }
    fn log(&self, i: usize) -> PathBuf {
        self.dir.join("logs").join(format!("agent{i}.log"))
    }
}

fn write_configs(l: &Layout, args: &UpArgs, dcs_url: &str) -> anyhow::Result<()> {
    let mut taken = vec![args.port];
    let pg_ports = if args.pg_port == 0 {
        free_ports(15432, args.nodes, &taken)
    } else {
        (0..args.nodes).map(|i| args.pg_port + i as u16).collect()
    };
    taken.extend(&pg_ports);
    let api_ports = free_ports(18008, args.nodes, &taken);
    anyhow::ensure!(
        pg_ports.len() == args.nodes && api_ports.len() == args.nodes,
        "not enough free ports"
    );
    for i in 0..args.nodes {
        let p = l.node_conf(i);
        if p.exists() {
            continue;
        }
        let data = l.dir.join(format!("node{i}"));
        std::fs::write(
            &p,
            format!(
                "# agent for node{i}, written by `pgwarden up`\n[agent]\nname = \"node{i}\"\ncluster = \"pgwarden\"\ndcs = \"{dcs_url}\"\n\
                 data_dir = \"{}\"\nrun_dir = \"{}\"\nhost = \"127.0.0.1\"\npg_port = {}\napi_listen = \"127.0.0.1:{}\"\nos_user = \"{}\"\n",
                data.display(),
                l.dir.join(format!("node{i}.run")).display(),
                pg_ports[i],
                api_ports[i],
                args.os_user
            ),
        )?;
    }
    if !l.proxy_conf().exists() {
        std::fs::write(
            l.proxy_conf(),
            format!(
                "# the proxy, written by `pgwarden up`: it follows the DCS leader\n[proxy]\nlisten = \"127.0.0.1:{}\"\n\
                 pool_mode = \"transaction\"\ndefault_pool_size = 20\nadmin_users = [\"postgres\"]\n\
                 hba = [\"host all all 127.0.0.1/32 trust\"]\ndcs = \"{dcs_url}\"\ncluster = \"pgwarden\"\n",
                args.port
            ),
        )?;
    }
    Ok(())
}

/// How often `pgwarden up` restarts an agent that keeps exiting.
const AGENT_RESTART_EVERY: Duration = Duration::from_secs(5);

fn spawn_agent(l: &Layout, i: usize) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(l.log(i))?;
    let exe = std::env::current_exe()?;
    Command::new(exe)
        .args(["agent", "--config"])
        .arg(l.node_conf(i))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start the agent of node{i}"))
}

pub fn run(args: UpArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.nodes >= 1 && args.nodes <= 9,
        "--nodes must be between 1 and 9"
    );
    std::fs::create_dir_all(args.dir.join("logs"))
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let dir = std::fs::canonicalize(&args.dir)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    }
    let l = Layout { dir: dir.clone() };
    let dcs_url = args
        .dcs
        .clone()
        .unwrap_or_else(|| format!("local://{}", dir.join("dcs").display()));
    write_configs(&l, &args, &dcs_url)?;
    let proxy_cfg = config::load(&l.proxy_conf())?;
    let (dcs_url, cluster) = proxy_cfg
        .proxy_dcs
        .clone()
        .context("proxy.toml has no dcs")?;

    let mut agents: Vec<Child> = (0..args.nodes)
        .map(|i| spawn_agent(&l, i))
        .collect::<anyhow::Result<_>>()?;
    let rt = crate::runtime::build(proxy_cfg.proxy.workers)?;
    let port = proxy_cfg.proxy.listen.port();
    let r = rt.block_on(async {
        let p = proxy::Proxy::bind(proxy_cfg, Some(l.proxy_conf()))
            .await
            .map_err(anyhow::Error::msg)?;
        let state = p.state.clone();
        crate::cmd_proxy::spawn_signal_handlers(state.clone())?;
        let proxy_task = tokio::spawn(p.run());
        let store = dcs::open(&dcs_url, &cluster).await?;
        println!(
            "pgwarden: starting {} nodes in {} (logs in {})",
            args.nodes,
            dir.display(),
            dir.join("logs").display()
        );
        let ready = wait_ready(&store, args.nodes, &state, &mut agents).await;
        match &ready {
            Ok(()) => print_banner(&dir, port, &store).await,
            Err(e) => eprintln!("pgwarden: the cluster did not come up: {e:#}"),
        }
        if args.until_ready || ready.is_err() {
            state.begin_shutdown();
        } else {
            status_loop(&store, &state, &l, &mut agents).await;
        }
        let _ = proxy_task.await;
        ready
    });
    stop_agents(&mut agents);
    stop_orphans(&l, agents.len());
    eprintln!("pgwarden: stopped");
    r
}

async fn wait_ready(
    store: &dcs::AnyDcs,
    n: usize,
    state: &proxy::State,
    agents: &mut [Child],
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        for (i, a) in agents.iter_mut().enumerate() {
            if let Some(st) = a.try_wait()? {
                anyhow::bail!("the agent of node{i} exited ({st}); see its log");
            }
        }
        if let Ok(s) = store.snapshot().await {
            let members: Vec<ha::Member> = s
                .members
                .values()
                .filter_map(|v| ha::Member::from_json(v))
                .collect();
            let running = members
                .iter()
                .filter(|m| m.running && (m.role == ha::Role::Primary || m.streaming))
                .count();
            if s.leader.is_some() && running >= n && state.topology.primary().is_some() {
                return Ok(());
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "not all {n} nodes were running after 180 s"
        );
        if state.is_shutting_down() {
            anyhow::bail!("interrupted");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn print_banner(dir: &Path, port: u16, store: &dcs::AnyDcs) {
    println!("\npgwarden is up: {}\n", status_line(store).await);
    println!("  connect:  psql -h 127.0.0.1 -p {port} -U postgres postgres");
    println!("  admin:    psql -h 127.0.0.1 -p {port} -U postgres pgwarden    (SHOW POOL_NODES; SHOW POOLS;)");
    println!(
        "  configs:  {}/node*.toml, {}/proxy.toml",
        dir.display(),
        dir.display()
    );
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
async fn status_loop(store: &dcs::AnyDcs, state: &proxy::State, l: &Layout, agents: &mut [Child]) {
    use std::io::Write;
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut last = String::new();
    let mut restarted: Vec<Option<Instant>> = vec![None; agents.len()];
    while !state.is_shutting_down() {
        for (i, a) in agents.iter_mut().enumerate() {
            let Ok(Some(st)) = a.try_wait() else {
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
            match spawn_agent(l, i) {
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

fn stop_agents(agents: &mut [Child]) {
    for a in agents.iter() {
        let _ = Command::new("kill")
            .args(["-TERM", &a.id().to_string()])
            .status();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for a in agents.iter_mut() {
        while Instant::now() < deadline {
            if let Ok(Some(_)) = a.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = a.kill();
        let _ = a.wait();
    }
}

/// Stops (fast shutdown) a PostgreSQL still running once its agent is gone:
/// one whose agent died and could not be restarted.
fn stop_orphans(l: &Layout, nodes: usize) {
    for i in 0..nodes {
        let data = l.dir.join(format!("node{i}"));
        let Some(pid) = pg::postmaster_pid(&data) else {
            continue;
        };
        let alive = || pg::pid_alive(pid) && pg::postmaster_pid(&data) == Some(pid);
        if !alive() {
            continue;
        }
        eprintln!("pgwarden: stopping node{i}'s PostgreSQL (pid {pid}), left without its agent");
        let _ = Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
