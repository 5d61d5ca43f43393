//! Test helpers: start real PostgreSQL servers (as OS user `postgres` when
//! running as root) on free loopback ports in temporary directories that
//! are removed afterwards, clone standbys, promote, kill.
#![forbid(unsafe_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

pub use pg::{Instance, InstanceConfig, OsUser};

static NEXT: AtomicU32 = AtomicU32::new(0);
static PORTS: Mutex<Vec<u16>> = Mutex::new(Vec::new());

/// A loopback port nobody listens on, not handed out before in this process.
pub fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind to a free port");
        let mut used = PORTS.lock().unwrap_or_else(|e| e.into_inner());
        if !used.contains(&port) {
            used.push(port);
            return port;
        }
    }
}

/// A directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "pgwarden-test-{}-{}-{tag}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        // PostgreSQL (as user postgres) must be able to enter it.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
            .expect("chmod temp dir");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("PGWARDEN_KEEP_TEST_DIRS").is_some() {
            eprintln!("keeping {}", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// pg_hba rules used by test servers: everything trusted on loopback except
/// the users `md5user` and `scramuser`, who need their passwords.
pub const TEST_HBA: &str = "local all all trust\n\
host all md5user 127.0.0.1/32 md5\n\
host all scramuser 127.0.0.1/32 scram-sha-256\n\
host all all 127.0.0.1/32 trust\n\
local replication all trust\n\
host replication all 127.0.0.1/32 trust\n";

/// A running PostgreSQL server, stopped and deleted on drop.
pub struct PgServer {
    pub inst: Instance,
    pub port: u16,
    dir: TempDir,
}

impl PgServer {
    fn config(dir: &TempDir, port: u16) -> InstanceConfig {
        InstanceConfig {
            data_dir: dir.path().join("data"),
            run_dir: dir.path().join("run"),
            port,
            listen: "127.0.0.1".into(),
            user: OsUser::for_postgres("postgres").expect("OS user postgres"),
            superuser: "postgres".into(),
        }
    }

    /// initdb and start a primary; creates database `app` and the users
    /// `md5user` (password `md5pass`) and `scramuser` (password `scrampass`).
    pub fn primary() -> PgServer {
        Self::primary_with("")
    }

    /// A primary with extra postgresql.conf lines.
    pub fn primary_with(extra_conf: &str) -> PgServer {
        let dir = TempDir::new("pg");
        let port = free_port();
        let inst = Instance::new(Self::config(&dir, port)).expect("PostgreSQL binaries");
        inst.initdb().expect("initdb");
        inst.append_conf(&format!("{}\n{extra_conf}", inst.base_conf()))
            .expect("conf");
        inst.write_hba(TEST_HBA).expect("hba");
        inst.start().expect("start PostgreSQL");
        let s = PgServer { inst, port, dir };
        s.sql("postgres", "SET password_encryption = 'md5'; CREATE ROLE md5user LOGIN PASSWORD 'md5pass'; \
             SET password_encryption = 'scram-sha-256'; CREATE ROLE scramuser LOGIN PASSWORD 'scrampass'");
        s.sql("postgres", "CREATE DATABASE app");
        s.sql(
            "postgres",
            "GRANT ALL ON DATABASE app TO md5user, scramuser",
        );
        s.sql("app", "GRANT ALL ON SCHEMA public TO PUBLIC");
        s
    }

    /// A hot standby cloned from `primary` with pg_basebackup.
    pub fn standby_of(primary: &PgServer) -> PgServer {
        let dir = TempDir::new("pg");
        let port = free_port();
        let inst = Instance::new(Self::config(&dir, port)).expect("PostgreSQL binaries");
        inst.basebackup("127.0.0.1", primary.port, "postgres", None, None)
            .expect("pg_basebackup");
        inst.append_conf(&format!(
            "port = {port}\nunix_socket_directories = '{}'",
            inst.cfg.run_dir.display()
        ))
        .expect("conf");
        inst.start().expect("start standby");
        PgServer { inst, port, dir }
    }

    /// Runs SQL as the superuser; panics with the server's error on failure.
    pub fn sql(&self, db: &str, sql: &str) -> String {
        self.inst
            .psql(db, sql)
            .unwrap_or_else(|e| panic!("SQL failed on port {}: {sql}: {e}", self.port))
    }

    pub fn try_sql(&self, db: &str, sql: &str) -> Result<String, String> {
        self.inst.psql(db, sql).map_err(|e| e.to_string())
    }

    pub fn promote(&self) {
        self.inst.promote().expect("pg_ctl promote");
    }

    pub fn stop(&self) {
        let _ = self.inst.stop("fast");
    }

    pub fn start(&self) {
        self.inst.start().expect("start PostgreSQL");
    }

    /// kill -9 of the postmaster.
    pub fn kill9(&self) {
        if let Some(pid) = self.inst.postmaster_pid() {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// SIGSTOP to the postmaster and every process it started: the
    /// kernel still accepts connections, but nothing answers (a hung
    /// node). Undone by `thaw`, and on drop.
    pub fn freeze(&self) {
        self.signal_all("-STOP");
    }

    pub fn thaw(&self) {
        self.signal_all("-CONT");
    }

    fn signal_all(&self, signal: &str) {
        let Some(pm) = self.inst.postmaster_pid() else {
            return;
        };
        // The postmaster first: a stopped postmaster starts no new child
        // between the scan below and the signal.
        let _ = std::process::Command::new("kill")
            .arg(signal)
            .arg(pm.to_string())
            .status();
        let mut pids = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            // pid (comm) state ppid ...
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(pm) {
                pids.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        if !pids.is_empty() {
            let _ = std::process::Command::new("kill")
                .arg(signal)
                .args(&pids)
                .status();
        }
    }

    /// Waits until the standby has replayed everything the primary had
    /// written when this was called.
    pub fn wait_caught_up(&self, primary: &PgServer) {
        let lsn = primary.sql("postgres", "select pg_current_wal_lsn()");
        for _ in 0..200 {
            let ok = self
                .try_sql(
                    "postgres",
                    &format!("select pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn"),
                )
                .unwrap_or_default();
            if ok == "t" {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("standby on port {} did not catch up", self.port);
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.thaw();
        let _ = self.inst.stop("immediate");
    }
}

/// Runs an external client program (psql, pgbench) and returns its exit
/// status, standard output and standard error.
pub fn run_client(program: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let bin = pg::bindir()
        .map(|d| d.join(program))
        .unwrap_or_else(|_| PathBuf::from(program));
    let mut c = std::process::Command::new(bin);
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("run client program");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs one SQL command with psql as user `postgres` on 127.0.0.1:`port`
/// (unaligned, tuples only, fields split by `|`, quiet; 3 s to connect).
pub fn psql(port: u16, db: &str, sql: &str) -> (bool, String, String) {
    run_client(
        "psql",
        &[
            "-X",
            "-A",
            "-t",
            "-q",
            "-F",
            "|",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-d",
            db,
            "-c",
            sql,
        ],
        &[("PGCONNECT_TIMEOUT", "3")],
    )
}

/// A real etcd server (Debian's etcd-server) on free loopback ports,
/// killed and deleted on drop.
pub struct Etcd {
    pub host: String,
    pub port: u16,
    child: std::process::Child,
    _dir: TempDir,
}

impl Etcd {
    pub fn start() -> Etcd {
        Self::start_on("127.0.0.1")
    }

    /// etcd listening on `host` (an address of this machine, such as a
    /// bridge's for network namespaces).
    pub fn start_on(host: &str) -> Etcd {
        let dir = TempDir::new("etcd");
        let (port, peer) = (free_port(), free_port());
        let child = std::process::Command::new("etcd")
            .args([
                "--name",
                "test",
                "--data-dir",
                &dir.path().join("data").to_string_lossy(),
                "--listen-client-urls",
                &format!("http://{host}:{port}"),
                "--advertise-client-urls",
                &format!("http://{host}:{port}"),
                "--listen-peer-urls",
                &format!("http://{host}:{peer}"),
                "--initial-advertise-peer-urls",
                &format!("http://{host}:{peer}"),
                "--initial-cluster",
                &format!("test=http://{host}:{peer}"),
                "--log-level",
                "error",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start etcd (Debian package etcd-server)");
        let e = Etcd {
            host: host.to_owned(),
            port,
            child,
            _dir: dir,
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect((host, port)).is_ok() {
                return e;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("etcd did not start on port {port}");
    }

    pub fn url(&self) -> String {
        format!("etcd://{}:{}", self.host, self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
