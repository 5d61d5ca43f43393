//! The fence: a small supervisor process that stops a primary's PostgreSQL
//! (SIGKILL to the postmaster and every child) when the agent has not
//! proved, in time, that it still holds the leader lease. It is Patroni's
//! kernel watchdog without the device: an agent that dies, freezes
//! (SIGSTOP, a VM pause of the agent alone) or hangs in a slow action stops
//! feeding it, and PostgreSQL is stopped before the lease can expire and
//! another node be promoted.
//!
//! The agent feeds it through a file in the run directory: `PID DEADLINE`,
//! the postmaster to stop and a time on the machine's boot clock
//! (`/proc/uptime`, which neither process's own clock can move), written
//! after every renewal as the time the renewal request was sent plus the
//! lease TTL less a margin. The supervisor runs in a process group of its
//! own, so a signal to the agent's group does not reach it; a restarted
//! agent feeds the same one. It exits when the file is removed (the agent
//! demoted or stopped PostgreSQL) or the postmaster is gone.
//!
//! What it cannot do: fence a whole machine that freezes (the supervisor
//! freezes with it; when the machine resumes the supervisor acts at once,
//! since its deadline has passed, but a client may already have written);
//! stop a process in uninterruptible I/O until the I/O returns.
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often the supervisor looks at the file and the clock.
pub const TICK: Duration = Duration::from_millis(50);
/// The deadline is this much before the lease can expire: the
/// supervisor's tick and the SIGKILL must fit in it.
pub const MARGIN: Duration = Duration::from_millis(500);

/// Milliseconds since boot (CLOCK_BOOTTIME, as /proc/uptime shows it).
pub fn boot_ms() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/uptime").ok()?;
    let secs: f64 = s.split_whitespace().next()?.parse().ok()?;
    Some((secs * 1000.0) as u64)
}

/// What the file says: stop `pid` at `deadline_ms` (boot clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Armed {
    pub pid: u32,
    pub deadline_ms: u64,
}

impl Armed {
    fn parse(s: &str) -> Option<Armed> {
        let mut it = s.split_whitespace();
        let pid = it.next()?.parse().ok()?;
        let deadline_ms = it.next()?.parse().ok()?;
        Some(Armed { pid, deadline_ms })
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Wait,
    Kill(u32),
    Exit,
}

/// The supervisor's decision on one tick.
pub fn verdict(armed: Option<Armed>, now_ms: u64, pid_alive: impl Fn(u32) -> bool) -> Verdict {
    match armed {
        None => Verdict::Exit,
        Some(a) if !pid_alive(a.pid) => Verdict::Exit,
        Some(a) if now_ms >= a.deadline_ms => Verdict::Kill(a.pid),
        Some(_) => Verdict::Wait,
    }
}

/// The agent's side: the file, and the supervisor it starts.
pub struct Fence {
    file: PathBuf,
}

impl Fence {
    pub fn new(run_dir: &Path) -> Fence {
        Fence {
            file: run_dir.join("pgwarden.fence"),
        }
    }

    fn pid_file(&self) -> PathBuf {
        self.file.with_extension("fence.pid")
    }

    /// Stop postmaster `pid` unless fed again within `valid` of `sent_ago`
    /// ago (when the renewal that proved the lease was sent). Starts the
    /// supervisor if none runs.
    pub fn arm(&self, pid: u32, valid: Duration, sent_ago: Duration) -> std::io::Result<()> {
        let now = boot_ms().ok_or_else(|| std::io::Error::other("cannot read /proc/uptime"))?;
        let deadline = (now + valid.saturating_sub(MARGIN).as_millis() as u64)
            .saturating_sub(sent_ago.as_millis() as u64);
        let tmp = self.file.with_extension("fence.tmp");
        std::fs::write(&tmp, format!("{pid} {deadline}\n"))?;
        std::fs::rename(&tmp, &self.file)?;
        if !self.supervisor_runs() {
            self.spawn_supervisor()?;
        }
        Ok(())
    }

    /// No fence needed: PostgreSQL is stopped or not primary. The
    /// supervisor exits by itself.
    pub fn disarm(&self) {
        let _ = std::fs::remove_file(&self.file);
    }

    fn supervisor_runs(&self) -> bool {
        std::fs::read_to_string(self.pid_file())
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .is_some_and(|pid| {
                pg::pid_alive(pid)
                    && std::fs::read(format!("/proc/{pid}/cmdline"))
                        .is_ok_and(|c| String::from_utf8_lossy(&c).contains("fence"))
            })
    }

    fn spawn_supervisor(&self) -> std::io::Result<()> {
        use std::os::unix::process::CommandExt;
        let child = std::process::Command::new(std::env::current_exe()?)
            .arg("fence")
            .arg("--file")
            .arg(&self.file)
            .stdin(std::process::Stdio::null())
            .process_group(0)
            .spawn()?;
        std::fs::write(self.pid_file(), child.id().to_string())?;
        // it outlives a dead agent on purpose; while the agent lives, a
        // thread reaps it when it exits
        std::thread::spawn(move || {
            let mut child = child;
            let _ = child.wait();
        });
        Ok(())
    }
}

/// SIGKILL to `pid` and all its children (a stopped process dies too).
/// The children are listed first: once the postmaster is gone they are
/// no longer its children.
pub fn kill_tree(pid: u32) -> usize {
    let mut pids = children_of(pid);
    pids.insert(0, pid);
    let args: Vec<String> = pids.iter().map(u32::to_string).collect();
    let _ = std::process::Command::new("kill")
        .arg("-KILL")
        .args(&args)
        .stderr(std::process::Stdio::null())
        .status();
    pids.len()
}

/// The processes whose parent is `pid` (from /proc).
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')?
                        .1
                        .split_whitespace()
                        .nth(1)?
                        .parse::<u32>()
                        .ok()
                })
                == Some(pid)
        })
        .collect()
}

/// The supervisor process (`pgwarden fence --file F`): until the file is
/// removed or its postmaster is gone, stops the postmaster when the
/// deadline passes.
pub fn supervise(file: &Path) -> std::io::Result<()> {
    loop {
        let armed = std::fs::read_to_string(file)
            .ok()
            .and_then(|s| Armed::parse(&s));
        let now = boot_ms().ok_or_else(|| std::io::Error::other("cannot read /proc/uptime"))?;
        match verdict(armed, now, pg::pid_alive) {
            Verdict::Wait => std::thread::sleep(TICK),
            Verdict::Exit => return Ok(()),
            Verdict::Kill(pid) => {
                let n = kill_tree(pid);
                eprintln!(
                    "pgwarden fence: the agent did not prove the leader lease in time: \
                     stopped PostgreSQL (postmaster {pid} and {} children) with SIGKILL",
                    n - 1
                );
                let _ = std::fs::remove_file(file);
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_supervisor_kills_at_the_deadline_and_only_then() {
        let a = Some(Armed {
            pid: 42,
            deadline_ms: 10_000,
        });
        assert_eq!(verdict(a, 9_999, |_| true), Verdict::Wait);
        assert_eq!(verdict(a, 10_000, |_| true), Verdict::Kill(42));
        assert_eq!(
            verdict(a, 10_000, |_| false),
            Verdict::Exit,
            "postmaster gone"
        );
        assert_eq!(verdict(None, 10_000, |_| true), Verdict::Exit, "disarmed");
    }

    #[test]
    fn the_file_is_read_back() {
        assert_eq!(
            Armed::parse("123 456\n"),
            Some(Armed {
                pid: 123,
                deadline_ms: 456
            })
        );
        assert_eq!(Armed::parse("garbage"), None);
        assert_eq!(Armed::parse(""), None);
    }

    #[test]
    fn the_boot_clock_moves_forward() {
        let a = boot_ms().unwrap();
        std::thread::sleep(Duration::from_millis(30));
        assert!(boot_ms().unwrap() >= a + 20);
    }
}
