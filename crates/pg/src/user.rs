//! The OS user PostgreSQL runs as.
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use crate::PgError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OsUser {
    pub uid: u32,
    pub gid: u32,
}

impl OsUser {
    /// The user to run PostgreSQL as: `name` when running as root, else
    /// the current user (no switch needed).
    pub fn for_postgres(name: &str) -> Result<Option<OsUser>, PgError> {
        if current_uid()? != 0 {
            return Ok(None);
        }
        Self::lookup(name).map(Some)
    }

    pub fn lookup(name: &str) -> Result<OsUser, PgError> {
        let passwd = std::fs::read_to_string("/etc/passwd")?;
        passwd
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 4 && f[0] == name).then(|| {
                    Some(OsUser {
                        uid: f[2].parse().ok()?,
                        gid: f[3].parse().ok()?,
                    })
                })
            })
            .flatten()
            .next()
            .ok_or_else(|| PgError::NoSuchUser(name.to_owned()))
    }

    /// Makes `cmd` run as this user.
    pub fn apply(&self, cmd: &mut Command) {
        cmd.uid(self.uid).gid(self.gid);
    }

    /// Gives `path` (not recursively) to this user.
    pub fn chown(&self, path: &Path) -> Result<(), PgError> {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))?;
        Ok(())
    }
}

fn current_uid() -> Result<u32, PgError> {
    use std::os::unix::fs::MetadataExt;
    // /proc/self is owned by the process's effective user.
    Ok(std::fs::metadata("/proc/self")?.uid())
}

/// Creates `path` (and parents) and gives it to `user`, if any.
pub fn make_dir(path: &Path, user: Option<OsUser>) -> Result<(), PgError> {
    std::fs::create_dir_all(path)?;
    if let Some(u) = user {
        u.chown(path)?;
    }
    Ok(())
}
