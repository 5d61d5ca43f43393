//! External programs (ip, mount, umount, kill, cp) run with a deadline:
//! a program still running when its deadline passes is killed and the
//! call fails. Output is collected by threads, so a chatty program never
//! blocks on a full pipe.
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The usual deadline of one quick program (ip, kill, mount).
pub const QUICK: Duration = Duration::from_secs(10);

/// Runs `program args` within `within`; its standard output when it exits
/// with status 0, else an error with its standard error.
pub fn run(program: &str, args: &[&str], within: Duration) -> anyhow::Result<String> {
    let line = || format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {program}"))?;
    let reader = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = reader(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err = reader(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{}` did not finish within {within:?}; killed", line());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    if !status.success() {
        bail!("`{}` failed ({status}): {}", line(), err.trim());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_failure_and_deadline() {
        assert_eq!(run("echo", &["hi"], QUICK).unwrap(), "hi\n");
        let e = run("sh", &["-c", "echo nope >&2; exit 3"], QUICK).unwrap_err();
        assert!(format!("{e}").contains("nope"), "{e}");
        let t = Instant::now();
        let e = run("sleep", &["5"], Duration::from_millis(200)).unwrap_err();
        assert!(format!("{e}").contains("did not finish"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(2));
        assert!(run("/nonexistent/program", &[], QUICK).is_err());
    }
}
