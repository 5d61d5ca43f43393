//! Running PostgreSQL's programs with a deadline: nothing the agent runs
//! may wait forever on a peer that does not answer (a hung leader, a
//! stalled disk). A command past its limit, or one that makes no progress
//! for the given stall time, is killed and reported.
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::PgError;

/// The limit of a command run with [`crate::run`].
pub const DEFAULT_LIMIT: Duration = Duration::from_secs(120);

/// Takes one line of a command's standard error; true: taken (not kept).
pub type LineSink = std::sync::Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// How a long command shows that it moves (e.g. the size of the directory
/// it fills), and how long it may stand still.
pub struct Progress<'a> {
    pub measure: &'a dyn Fn() -> u64,
    pub stall: Duration,
    /// Each line of standard error as it comes (lines end at `\n` or
    /// `\r`); a line it takes (returns true for) is not kept for the
    /// error message.
    pub lines: Option<LineSink>,
}

/// Runs `cmd` to completion within `limit` (and, with `progress`, while it
/// moves); an unsuccessful exit is an error with its standard error.
/// Returns its standard output.
pub fn run_watched(
    cmd: Command,
    limit: Duration,
    progress: Option<Progress<'_>>,
) -> Result<String, PgError> {
    run_output(cmd, limit, progress).map(|(out, _)| out)
}

/// As [`run_watched`], returning standard output and standard error.
pub fn run_output(
    mut cmd: Command,
    limit: Duration,
    progress: Option<Progress<'_>>,
) -> Result<(String, String), PgError> {
    let program = format!("{:?}", cmd.get_program());
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| PgError::Spawn {
            program: program.clone(),
            source,
        })?;
    // drained by threads, so a chatty program never blocks on a full pipe
    let drain = |r: Option<Box<dyn Read + Send>>| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            let _ = tx.send(buf);
        });
        rx
    };
    let out = drain(child.stdout.take().map(|r| Box::new(r) as _));
    let err = match progress.as_ref().and_then(|p| p.lines.clone()) {
        None => drain(child.stderr.take().map(|r| Box::new(r) as _)),
        Some(sink) => drain_lines(child.stderr.take().map(|r| Box::new(r) as _), sink),
    };
    let start = Instant::now();
    let (mut last, mut moved) = (progress.as_ref().map(|p| (p.measure)()), Instant::now());
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        let stalled = progress.as_ref().is_some_and(|p| {
            let now = (p.measure)();
            if Some(now) != last {
                last = Some(now);
                moved = Instant::now();
            }
            moved.elapsed() > p.stall
        });
        if stalled || start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(PgError::Other(if stalled {
                format!(
                    "{program} made no progress for {:?} (its peer does not answer?): stopped",
                    progress.map(|p| p.stall).unwrap_or_default()
                )
            } else {
                format!("{program} did not finish within {limit:?}: stopped")
            }));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // a server the command started may hold the pipes open: what came
    // before that is enough
    let stdout = out.recv_timeout(Duration::from_secs(1)).unwrap_or_default();
    let stderr = err.recv_timeout(Duration::from_secs(1)).unwrap_or_default();
    if !status.success() {
        return Err(PgError::Failed {
            program,
            status: status.to_string(),
            stderr: String::from_utf8_lossy(&stderr).trim().to_owned(),
        });
    }
    Ok((
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    ))
}

/// Reads `r` to its end in a thread, handing each line to `sink`; the
/// lines it does not take are sent back at the end.
fn drain_lines(
    r: Option<Box<dyn Read + Send>>,
    sink: LineSink,
) -> std::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut line = Vec::new();
        let mut take = |line: &mut Vec<u8>, end: u8| {
            if !line.is_empty() && !sink(&String::from_utf8_lossy(line)) {
                kept.extend_from_slice(line);
                kept.push(end);
            }
            line.clear();
        };
        if let Some(r) = r {
            for b in std::io::BufReader::new(r).bytes() {
                match b {
                    Ok(c @ (b'\n' | b'\r')) => take(&mut line, c),
                    Ok(c) => line.push(c),
                    Err(_) => break,
                }
            }
        }
        take(&mut line, b'\n');
        let _ = tx.send(kept);
    });
    rx
}

/// The bytes of the files under `dir` (a clone's progress).
pub fn dir_size(dir: &std::path::Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_past_its_limit_is_stopped() {
        let mut c = Command::new("sleep");
        c.arg("30");
        let t = Instant::now();
        let e = run_watched(c, Duration::from_millis(300), None).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(e.to_string().contains("did not finish within"), "{e}");
    }

    #[test]
    fn a_command_that_stands_still_is_stopped() {
        let mut c = Command::new("sleep");
        c.arg("30");
        let e = run_watched(
            c,
            Duration::from_secs(30),
            Some(Progress {
                measure: &|| 7,
                stall: Duration::from_millis(300),
                lines: None,
            }),
        )
        .unwrap_err();
        assert!(e.to_string().contains("made no progress"), "{e}");
    }

    #[test]
    fn output_and_errors_come_back() {
        let mut c = Command::new("sh");
        c.args(["-c", "echo out; echo err >&2"]);
        assert_eq!(run_watched(c, DEFAULT_LIMIT, None).unwrap(), "out\n");
        let mut c = Command::new("sh");
        c.args(["-c", "echo bad >&2; exit 3"]);
        let e = run_watched(c, DEFAULT_LIMIT, None).unwrap_err().to_string();
        assert!(e.contains("bad") && e.contains("3"), "{e}");
    }
}
