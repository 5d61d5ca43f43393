//! Local PostgreSQL control. PostgreSQL refuses to run as root, so when
//! pgwarden runs as root every PostgreSQL program runs as an unprivileged
//! OS user (default `postgres`), as Debian's pg_ctlcluster does, and the
//! directories it writes are owned by that user.
#![forbid(unsafe_code)]

pub mod command;
pub mod copy;
mod instance;
pub mod preflight;
mod user;

pub use copy::{CopyProgress, CopyState};
pub use instance::{pid_alive, postmaster_pid, tail, Instance, InstanceConfig};
pub use user::{make_dir, OsUser};

use std::path::PathBuf;
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        program: String,
        status: String,
        stderr: String,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("OS user {0:?} does not exist")]
    NoSuchUser(String),
    #[error("PostgreSQL server binaries not found: {0}")]
    NoBinaries(String),
    #[error("{0}")]
    Other(String),
}

/// Where the server binaries are: `$PGWARDEN_PG_BINDIR`, else
/// `pg_config --bindir`, else Debian's PostgreSQL 15 location.
pub fn bindir() -> Result<PathBuf, PgError> {
    if let Ok(d) = std::env::var("PGWARDEN_PG_BINDIR") {
        return Ok(PathBuf::from(d));
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if d.join("initdb").exists() {
                return Ok(d);
            }
        }
    }
    for v in ["17", "16", "15", "14"] {
        let d = PathBuf::from(format!("/usr/lib/postgresql/{v}/bin"));
        if d.join("initdb").exists() {
            return Ok(d);
        }
    }
    Err(PgError::NoBinaries(
        "set PGWARDEN_PG_BINDIR or put pg_config on PATH".into(),
    ))
}

/// Runs a command to completion within [`command::DEFAULT_LIMIT`]; an
/// unsuccessful exit is an error with its standard error.
pub fn run(cmd: Command) -> Result<String, PgError> {
    command::run_watched(cmd, command::DEFAULT_LIMIT, None)
}
