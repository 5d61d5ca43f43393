//! The cluster of `--net netns`, started by this suite instead of
//! `pgwarden up`: node files written here (each agent listening on, and
//! advertising, its namespace's address on the data network, etcd on the
//! dcs network), one agent per node run as `ip netns exec NS pgwarden
//! agent --config nodeN.toml` (so its PostgreSQL, which it starts, runs
//! in that namespace too), restarted when it exits as `up` restarts its
//! agents, and `pgwarden proxy` in the root namespace following etcd.
//! Stopping: SIGTERM to each agent (it stops its PostgreSQL), then
//! anything left (a postmaster, a fence process of this run) by PID.
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::watch;

use crate::netns::Net;
use crate::procs::{self, Signal};

/// PostgreSQL's port in every namespace, and the agents' API port.
pub const PG_PORT: u16 = 5432;
const API_PORT: u16 = 8008;
/// An agent that exits is started again after this...
const RESTART_AFTER: Duration = Duration::from_millis(500);
/// ...but not more often than this (as `up`).
const RESTART_EVERY: Duration = Duration::from_secs(5);
/// How long an agent may take to stop after SIGTERM.
const AGENT_STOP_WITHIN: Duration = Duration::from_secs(60);

pub struct Spawned {
    /// The running agent of each node.
    agents: Vec<Arc<Mutex<Option<u32>>>>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    proxy: Option<tokio::process::Child>,
    dir: PathBuf,
    data_dirs: Vec<PathBuf>,
}

pub struct Files {
    pub nodes: Vec<PathBuf>,
    pub proxy: PathBuf,
}

/// Writes the node files and proxy.toml into `dir`.
pub fn write_files(
    dir: &Path,
    net: &Net,
    nodes: usize,
    dcs: &str,
    proxy_port: u16,
    sync: bool,
) -> anyhow::Result<Files> {
    let cidr = net.data_cidr();
    std::fs::create_dir_all(dir.join("logs"))?;
    let mut files = Vec::new();
    for i in 0..nodes {
        let ip = net.data_ip(i);
        let f = dir.join(format!("node{i}.toml"));
        std::fs::write(
            &f,
            format!(
                "# agent for node{i}, written by pgwarden-chaos (--net netns)\n[agent]\n\
                 name = \"node{i}\"\ncluster = \"pgwarden\"\ndcs = \"{dcs}\"\n\
                 data_dir = \"{d}/node{i}\"\nrun_dir = \"{d}/node{i}.run\"\n\
                 host = \"{ip}\"\npg_port = {PG_PORT}\napi_listen = \"{ip}:{API_PORT}\"\n\
                 os_user = \"postgres\"\nsynchronous_mode = {sync}\n\
                 pg_hba = [\"local all all trust\", \"host all all 127.0.0.1/32 trust\", \
                 \"host all all {cidr} trust\", \"local replication all trust\", \
                 \"host replication all {cidr} trust\"]\n",
                d = dir.display()
            ),
        )?;
        files.push(f);
    }
    let proxy = dir.join("proxy.toml");
    std::fs::write(
        &proxy,
        format!(
            "# the proxy, written by pgwarden-chaos (--net netns): it follows the DCS leader\n\
             [proxy]\nlisten = \"127.0.0.1:{proxy_port}\"\npool_mode = \"transaction\"\n\
             default_pool_size = 20\nadmin_users = [\"postgres\"]\nshutdown_timeout = \"2s\"\n\
             hba = [\"host all all 127.0.0.1/32 trust\"]\ndcs = \"{dcs}\"\ncluster = \"pgwarden\"\n"
        ),
    )?;
    Ok(Files {
        nodes: files,
        proxy,
    })
}

fn log_file(path: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))
}

impl Spawned {
    /// Starts the proxy and one supervised agent per node.
    pub fn start(
        pgwarden: &Path,
        dir: &Path,
        net: &Net,
        files: &Files,
        data_dirs: Vec<PathBuf>,
    ) -> anyhow::Result<Spawned> {
        let (stop, _) = watch::channel(false);
        let mut s = Spawned {
            agents: Vec::new(),
            stop,
            tasks: Vec::new(),
            proxy: None,
            dir: dir.to_path_buf(),
            data_dirs,
        };
        let log = log_file(&dir.join("logs").join("proxy.log"))?;
        s.proxy = Some(
            tokio::process::Command::new(pgwarden)
                .args(["proxy", "--config"])
                .arg(&files.proxy)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .process_group(0)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("cannot run {}", pgwarden.display()))?,
        );
        for (i, conf) in files.nodes.iter().enumerate() {
            let slot = Arc::new(Mutex::new(None));
            s.agents.push(slot.clone());
            let a = AgentCmd {
                pgwarden: pgwarden.to_path_buf(),
                ns: net.ns(i),
                conf: conf.clone(),
                log: dir.join("logs").join(format!("agent{i}.log")),
            };
            s.tasks
                .push(tokio::spawn(supervise(a, slot, s.stop.subscribe())));
        }
        Ok(s)
    }

    pub fn agent_pid(&self, i: usize) -> Option<u32> {
        let p = self.agents.get(i)?.lock().ok()?.as_ref().copied()?;
        procs::alive(p).then_some(p)
    }

    /// Whether the proxy still runs.
    pub fn proxy_exited(&mut self) -> Option<String> {
        match self.proxy.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(st))) => Some(st.to_string()),
            _ => None,
        }
    }

    /// Stops the agents (each stops its PostgreSQL), then what is left of
    /// this run (postmasters, fence processes) by PID, then the proxy.
    /// Waits at most `within` (and 60 s per agent).
    pub async fn stop(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        let _ = self.stop.send(true);
        let mut notes = Vec::new();
        for t in self.tasks.drain(..) {
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, t).await.is_err() {
                notes.push("an agent did not stop in time".to_owned());
            }
        }
        // What the agents left: a postmaster whose agent could not stop it.
        for d in &self.data_dirs {
            if let Some(pm) = procs::postmaster(d) {
                notes.push(format!(
                    "PostgreSQL {} (pid {pm}) left running",
                    d.display()
                ));
                let _ = procs::signal(pm, Signal::Int);
                let until = Instant::now() + Duration::from_secs(20);
                while procs::alive(pm) && Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                if procs::alive(pm) {
                    for k in procs::children(pm) {
                        let _ = procs::signal(k, Signal::Kill);
                    }
                    let _ = procs::signal(pm, Signal::Kill);
                }
            }
        }
        let dir = self.dir.to_string_lossy().into_owned();
        for p in procs::with_arg_containing(&dir) {
            if procs::cmdline(p).iter().any(|a| a == "fence") {
                let _ = procs::signal(p, Signal::Kill);
            }
        }
        if let Some(mut proxy) = self.proxy.take() {
            if let Some(pid) = proxy.id() {
                let _ = procs::signal(pid, Signal::Term);
            }
            if tokio::time::timeout(Duration::from_secs(10), proxy.wait())
                .await
                .is_err()
            {
                notes.push("the proxy did not stop within 10 s of SIGTERM; killed".into());
                let _ = proxy.start_kill();
                let _ = proxy.wait().await;
            }
        }
        anyhow::ensure!(notes.is_empty(), "{}", notes.join("; "));
        Ok(())
    }
}

struct AgentCmd {
    pgwarden: PathBuf,
    ns: String,
    conf: PathBuf,
    log: PathBuf,
}

/// Runs one node's agent in its namespace until told to stop, starting it
/// again when it exits.
async fn supervise(a: AgentCmd, slot: Arc<Mutex<Option<u32>>>, stop: watch::Receiver<bool>) {
    let mut last_start: Option<Instant> = None;
    let note = |text: String| {
        use std::io::Write;
        if let Ok(mut f) = log_file(&a.log) {
            let _ = writeln!(f, "pgwarden-chaos: {text}");
        }
    };
    // The watch's guard is not Send: awaited inside a block that drops it.
    let stopped = |mut stop: watch::Receiver<bool>| async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    loop {
        if let Some(t) = last_start {
            let wait = RESTART_AFTER.max(RESTART_EVERY.saturating_sub(t.elapsed()));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stopped(stop.clone()) => return,
            }
        }
        if *stop.borrow() {
            return;
        }
        last_start = Some(Instant::now());
        let spawned = log_file(&a.log).and_then(|log| {
            tokio::process::Command::new("ip")
                .args(["netns", "exec", &a.ns])
                .arg(&a.pgwarden)
                .args(["agent", "--config"])
                .arg(&a.conf)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .process_group(0)
                .spawn()
                .context("cannot run ip netns exec")
        });
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                note(format!("{e:#}"));
                continue;
            }
        };
        let pid = child.id();
        if let Ok(mut s) = slot.lock() {
            *s = pid;
        }
        tokio::select! {
            st = child.wait() => {
                if let Ok(mut s) = slot.lock() {
                    *s = None;
                }
                let st = st.map_or_else(|e| e.to_string(), |s| s.to_string());
                note(format!("the agent exited ({st}); restarting it"));
            }
            _ = stopped(stop.clone()) => {
                if let Some(p) = pid {
                    // A frozen agent cannot act on SIGTERM.
                    let _ = procs::signal(p, Signal::Cont);
                    let _ = procs::signal(p, Signal::Term);
                }
                if tokio::time::timeout(AGENT_STOP_WITHIN, child.wait()).await.is_err() {
                    note(format!("the agent did not stop within {AGENT_STOP_WITHIN:?}; killed"));
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                }
                if let Ok(mut s) = slot.lock() {
                    *s = None;
                }
                return;
            }
        }
    }
}
