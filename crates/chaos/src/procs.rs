//! Processes by PID through /proc: parent, command line, children, and
//! signals sent with kill(1) to one PID at a time (never by name).
use std::path::Path;

use crate::sh;

/// The parent PID from /proc/<pid>/stat; None when the process is gone.
pub fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The state letter from /proc/<pid>/stat (R, S, T, Z, ...).
pub fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().next()?.chars().next()
}

/// Alive: present and not a zombie.
pub fn alive(pid: u32) -> bool {
    state(pid).is_some_and(|s| s != 'Z' && s != 'X')
}

pub fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

pub fn children(parent: u32) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|p| ppid(*p) == Some(parent))
        .collect()
}

/// The postmaster's PID from the first line of `<data_dir>/postmaster.pid`,
/// if that process is alive.
pub fn postmaster(data_dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let pid: u32 = text.lines().next()?.trim().parse().ok()?;
    alive(pid).then_some(pid)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Kill,
    Stop,
    Cont,
    Int,
    Term,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Kill => "KILL",
            Signal::Stop => "STOP",
            Signal::Cont => "CONT",
            Signal::Int => "INT",
            Signal::Term => "TERM",
        }
    }
}

/// Sends `sig` to the one process `pid`.
pub fn signal(pid: u32, sig: Signal) -> anyhow::Result<()> {
    sh::run(
        "kill",
        &[&format!("-{}", sig.name()), &pid.to_string()],
        sh::QUICK,
    )
    .map_err(|e| anyhow::anyhow!("kill -{} {pid} failed: {e}", sig.name()))?;
    Ok(())
}

/// The processes whose command line mentions `needle` (a path of this
/// run), except this one.
pub fn with_arg_containing(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    all_pids()
        .into_iter()
        .filter(|p| *p != me && cmdline(*p).iter().any(|a| a.contains(needle)))
        .collect()
}

/// Whether `pid` is a live pgwarden-chaos (a run that owns its resources).
pub fn is_chaos_run(pid: u32) -> bool {
    alive(pid)
        && cmdline(pid)
            .first()
            .is_some_and(|a| a.ends_with("pgwarden-chaos"))
}
