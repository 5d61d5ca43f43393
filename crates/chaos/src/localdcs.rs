//! The outage of the local DCS (`local-dcs-outage`): the store is a
//! directory every agent (and the proxy in `pgwarden up`) opens by path
//! for each operation, as root, so permissions cannot keep them out, and
//! an empty directory in its place would read as "no leader" rather than
//! as an outage. Instead the directory is exchanged atomically
//! (renameat2 RENAME_EXCHANGE) with a regular file: every path under the
//! store then fails with ENOTDIR, which the store reports as unavailable,
//! and no reader ever sees the path missing. The exchange is made while
//! holding the store's own lock, so no locked operation is cut in half.
//! Healing exchanges them back: the same directory, untouched, returns.
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use rustix::fs::{renameat_with, RenameFlags, CWD};

/// How long to wait for the store's lock before exchanging anyway.
const LOCK_WITHIN: Duration = Duration::from_secs(2);

/// A store made unreachable; restored by [`Blocked::restore`] or on drop.
pub struct Blocked {
    dir: PathBuf,
    aside: PathBuf,
    restored: bool,
}

fn exchange(a: &Path, b: &Path) -> anyhow::Result<()> {
    renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE)
        .with_context(|| format!("cannot exchange {} and {}", a.display(), b.display()))
}

/// Makes the store at `dir` unreachable.
pub fn block(dir: &Path) -> anyhow::Result<Blocked> {
    anyhow::ensure!(dir.is_dir(), "{} is not a directory", dir.display());
    let aside = dir.with_extension("chaos-outage");
    std::fs::write(
        &aside,
        "pgwarden-chaos: the local DCS is unreachable (local-dcs-outage); \
         the store is exchanged back when the fault ends\n",
    )
    .with_context(|| format!("cannot write {}", aside.display()))?;
    let lock = File::open(dir.join("lock")).ok();
    if let Some(l) = &lock {
        let deadline = Instant::now() + LOCK_WITHIN;
        while l.try_lock().is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let r = exchange(&aside, dir);
    // Closing the file releases the lock (it also held, if taken).
    drop(lock);
    if let Err(e) = r {
        let _ = std::fs::remove_file(&aside);
        return Err(e);
    }
    Ok(Blocked {
        dir: dir.to_path_buf(),
        aside,
        restored: false,
    })
}

impl Blocked {
    /// Puts the directory back and removes the file.
    pub fn restore(&mut self) -> anyhow::Result<()> {
        if self.restored {
            return Ok(());
        }
        exchange(&self.aside, &self.dir)?;
        self.restored = true;
        anyhow::ensure!(self.dir.is_dir(), "{} was not restored", self.dir.display());
        std::fs::remove_file(&self.aside)
            .with_context(|| format!("cannot remove {}", self.aside.display()))
    }
}

impl Drop for Blocked {
    fn drop(&mut self) {
        if let Err(e) = self.restore() {
            eprintln!("pgwarden-chaos: restoring the local DCS: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_fails_with_not_a_directory_and_comes_back_unchanged() {
        let root = std::env::temp_dir().join(format!("chaos-localdcs-{}", std::process::id()));
        let dir = root.join("dcs");
        std::fs::create_dir_all(dir.join("members")).unwrap();
        std::fs::write(dir.join("leader"), "x").unwrap();
        std::fs::write(dir.join("lock"), "").unwrap();
        let mut b = block(&dir).unwrap();
        let e = std::fs::read_to_string(dir.join("leader")).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotADirectory);
        b.restore().unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("leader")).unwrap(), "x");
        assert!(!dir.with_extension("chaos-outage").exists());
        drop(b);
        assert!(block(&root.join("none")).is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
