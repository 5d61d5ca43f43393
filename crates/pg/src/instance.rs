//! One PostgreSQL instance on this machine: its data directory, port and
//! socket directory, and the programs that act on it.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::user::make_dir;
use crate::{bindir, run, OsUser, PgError};

/// A clone that copies nothing for this long is stopped: its source does
/// not answer (a hung leader), and waiting on it would block the node.
pub const BASEBACKUP_STALL: Duration = Duration::from_secs(30);
/// And none may run longer than this, however it moves.
pub const BASEBACKUP_LIMIT: Duration = Duration::from_secs(6 * 3600);

#[derive(Debug, Clone)]
pub struct InstanceConfig {
    pub data_dir: PathBuf,
    /// Unix socket directory and log file live here.
    pub run_dir: PathBuf,
    pub port: u16,
    pub listen: String,
    pub user: Option<OsUser>,
    /// The superuser initdb creates.
    pub superuser: String,
}

#[derive(Debug, Clone)]
pub struct Instance {
    pub cfg: InstanceConfig,
    bin: PathBuf,
}

impl Instance {
    pub fn new(cfg: InstanceConfig) -> Result<Self, PgError> {
        Ok(Instance {
            cfg,
            bin: bindir()?,
        })
    }

    pub fn bin(&self, program: &str) -> PathBuf {
        self.bin.join(program)
    }

    /// A command for a PostgreSQL program, run as the instance's OS user.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(self.bin(program));
        if let Some(u) = self.cfg.user {
            u.apply(&mut c);
        }
        c.env_remove("PGDATA")
            .env("PGHOST", &self.cfg.run_dir)
            .current_dir("/");
        c
    }

    pub fn log_file(&self) -> PathBuf {
        self.cfg.run_dir.join("postgresql.log")
    }

    pub fn is_initialized(&self) -> bool {
        self.cfg.data_dir.join("PG_VERSION").exists()
    }

    fn prepare_dirs(&self) -> Result<(), PgError> {
        make_dir(&self.cfg.run_dir, self.cfg.user)?;
        if let Some(parent) = self.cfg.data_dir.parent() {
            std::fs::create_dir_all(parent)?;
        }
        Ok(())
    }

    /// initdb with trust for local connections (pg_hba is replaced by the
    /// caller's rules with [`Instance::write_hba`]).
    pub fn initdb(&self) -> Result<(), PgError> {
        self.prepare_dirs()?;
        make_dir(&self.cfg.data_dir, self.cfg.user)?;
        let mut c = self.command("initdb");
        c.arg("-D").arg(&self.cfg.data_dir).args([
            "-U",
            &self.cfg.superuser,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-instructions",
            "--locale=C",
        ]);
        run(c)?;
        Ok(())
    }

    /// Appends settings to postgresql.conf (later lines win).
    pub fn append_conf(&self, lines: &str) -> Result<(), PgError> {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.cfg.data_dir.join("postgresql.conf"))?;
        writeln!(f, "\n{lines}")?;
        Ok(())
    }

    /// The settings every instance of pgwarden gets.
    pub fn base_conf(&self) -> String {
        format!(
            "listen_addresses = '{}'\nport = {}\nunix_socket_directories = '{}'\nmax_connections = 200\n\
             wal_level = replica\nhot_standby = on\nmax_wal_senders = 10\nmax_replication_slots = 10\n\
             wal_log_hints = on\nwal_keep_size = 256MB\nlogging_collector = off\nfsync = on\n",
            self.cfg.listen,
            self.cfg.port,
            self.cfg.run_dir.display()
        )
    }

    pub fn write_hba(&self, rules: &str) -> Result<(), PgError> {
        let p = self.cfg.data_dir.join("pg_hba.conf");
        std::fs::write(&p, rules)?;
        if let Some(u) = self.cfg.user {
            u.chown(&p)?;
        }
        Ok(())
    }

    /// pg_ctl start, waiting until it accepts connections.
    pub fn start(&self) -> Result<(), PgError> {
        self.prepare_dirs()?;
        let log = self.log_file();
        if !log.exists() {
            std::fs::write(&log, "")?;
            if let Some(u) = self.cfg.user {
                u.chown(&log)?;
            }
        }
        let mut c = self.command("pg_ctl");
        c.arg("-D")
            .arg(&self.cfg.data_dir)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "start"]);
        // the server must not hold our pipes open
        c.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        run(c).map_err(|e| PgError::Other(format!("{e}; log tail:\n{}", tail(&log, 15))))?;
        Ok(())
    }

    /// pg_ctl stop with the given mode (smart, fast, immediate).
    pub fn stop(&self, mode: &str) -> Result<(), PgError> {
        let mut c = self.command("pg_ctl");
        c.arg("-D")
            .arg(&self.cfg.data_dir)
            .args(["-m", mode, "-w", "-t", "60", "stop"]);
        run(c)?;
        Ok(())
    }

    pub fn promote(&self) -> Result<(), PgError> {
        let mut c = self.command("pg_ctl");
        c.arg("-D")
            .arg(&self.cfg.data_dir)
            .args(["-w", "-t", "60", "promote"]);
        run(c)?;
        Ok(())
    }

    /// The postmaster's PID from postmaster.pid, if the file is there.
    pub fn postmaster_pid(&self) -> Option<u32> {
        postmaster_pid(&self.cfg.data_dir)
    }

    pub fn is_running(&self) -> bool {
        let mut c = self.command("pg_ctl");
        c.arg("-D").arg(&self.cfg.data_dir).arg("status");
        run(c).is_ok()
    }

    /// Clones `source` (host, port, user) into this instance's empty data
    /// directory with pg_basebackup, as a standby (-R writes
    /// primary_conninfo and standby.signal).
    pub fn basebackup(
        &self,
        host: &str,
        port: u16,
        user: &str,
        slot: Option<&str>,
        copy: Option<std::sync::Arc<crate::CopyProgress>>,
    ) -> Result<(), PgError> {
        self.prepare_dirs()?;
        make_dir(&self.cfg.data_dir, self.cfg.user)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&self.cfg.data_dir, std::fs::Permissions::from_mode(0o700))?;
        let mut c = self.command("pg_basebackup");
        c.arg("-D").arg(&self.cfg.data_dir).args([
            "-h",
            host,
            "-p",
            &port.to_string(),
            "-U",
            user,
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
        ]);
        if let Some(s) = slot {
            c.args(["-S", s]);
        }
        let lines = copy.clone().map(|p| {
            c.arg("--progress");
            p.start();
            std::sync::Arc::new(move |l: &str| p.line(l)) as _
        });
        let dir = self.cfg.data_dir.clone();
        let measure = move || crate::command::dir_size(&dir);
        let progress = crate::command::Progress {
            measure: &measure,
            stall: BASEBACKUP_STALL,
            lines,
        };
        let r = crate::command::run_watched(c, BASEBACKUP_LIMIT, Some(progress));
        if let Some(p) = copy {
            p.finish();
        }
        r.map(|_| ())
    }

    /// Runs SQL with psql over the Unix socket as the superuser and returns
    /// unaligned, tuples-only output.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, PgError> {
        let mut c = self.command("psql");
        c.args([
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-p",
            &self.cfg.port.to_string(),
            "-U",
            &self.cfg.superuser,
            "-d",
            db,
            "-c",
            sql,
        ]);
        c.arg("-h").arg(&self.cfg.run_dir);
        Ok(run(c)?.trim().to_owned())
    }

    /// Waits until `psql` can connect.
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), PgError> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match self.psql("postgres", "select 1") {
                Ok(_) => return Ok(()),
                Err(e) if std::time::Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

/// The last `n` lines of a file, for error reports.
pub fn tail(path: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The PID in `data_dir`'s postmaster.pid, if the file is there.
pub fn postmaster_pid(data_dir: &Path) -> Option<u32> {
    let s = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    s.lines().next()?.trim().parse().ok()
}

/// Whether process `pid` runs (a zombie, exited but not yet reaped, does
/// not count).
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(')')
            .map(|(_, r)| r.trim_start().starts_with('Z'))
            .unwrap_or(true),
        Err(_) => false,
    }
}
