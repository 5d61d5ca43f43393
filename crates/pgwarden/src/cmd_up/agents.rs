//! The agent processes `pgwarden up` runs, one per node: started, watched
//! (an exit during start-up is reported with its cause from the agent's
//! log), restarted, stopped.
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::layout::Layout;

pub struct Agent {
    pub child: Child,
    /// Where this process's output starts in the log (the log is appended
    /// to across runs).
    log_from: u64,
}

pub fn spawn(l: &Layout, i: usize) -> anyhow::Result<Agent> {
    let path = l.log(i);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let log_from = log.metadata().map(|m| m.len()).unwrap_or(0);
    let exe = std::env::current_exe()?;
    let child = Command::new(exe)
        .args(["agent", "--config"])
        .arg(l.node_conf(i))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start the agent of node{i}"))?;
    Ok(Agent { child, log_from })
}

/// Why the agent of node `i` exited, from what it wrote to its log: its
/// last error line (`pgwarden: ...`, as `main` reports an error), else the
/// last lines.
pub fn exit_cause(l: &Layout, i: usize, a: &Agent) -> String {
    let text = std::fs::read(l.log(i)).unwrap_or_default();
    let from = (a.log_from as usize).min(text.len());
    let text = String::from_utf8_lossy(&text[from..]);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    match lines.iter().rev().find(|l| l.starts_with("pgwarden: ")) {
        Some(l) => l.trim_start_matches("pgwarden: ").to_owned(),
        None => lines[lines.len().saturating_sub(5)..].join("\n  "),
    }
}

/// SIGTERM to every agent (each stops its PostgreSQL), then waits for
/// them, up to a minute in all.
pub fn stop_all(agents: &mut [Agent]) {
    for a in agents.iter() {
        let _ = Command::new("kill")
            .args(["-TERM", &a.child.id().to_string()])
            .status();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for a in agents.iter_mut() {
        while Instant::now() < deadline {
            if let Ok(Some(_)) = a.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = a.child.kill();
        let _ = a.child.wait();
    }
}

/// Stops (fast shutdown) a PostgreSQL still running once its agent is gone:
/// one whose agent died and could not be restarted.
pub fn stop_orphans(l: &Layout) {
    for i in 0..l.nodes {
        let data = l.data_dir(i);
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
