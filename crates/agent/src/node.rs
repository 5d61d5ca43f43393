//! This node's PostgreSQL: data directory, configuration files the agent
//! owns, the postmaster as a child process the agent watches, and the
//! operations the HA loop needs (initdb, clone, start, stop, promote,
//! rewind, status).
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use config::AgentConfig;
use pg::pid_alive;
use tokio::sync::Notify;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Pg(#[from] pg::PgError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("PostgreSQL: {0}")]
    Sql(String),
    /// PostgreSQL did not answer within the check's deadline (hung,
    /// stopped, or its I/O stalled): not an error it reported.
    #[error("PostgreSQL did not answer within {0:?}")]
    NoAnswer(Duration),
    #[error("{0}")]
    Other(String),
}

/// What a running PostgreSQL reports.
#[derive(Debug, Clone)]
pub struct Status {
    pub in_recovery: bool,
    pub lsn: u64,
    pub replayed_lsn: u64,
    pub timeline: u32,
    pub streaming: bool,
    /// `host:port` the WAL receiver connects to.
    pub following: Option<String>,
    pub pending_restart: bool,
}

pub struct Node {
    pub cfg: AgentConfig,
    inst: pg::Instance,
    /// The postmaster's PID, when one runs (ours or adopted).
    pid: Arc<AtomicU32>,
    /// Set when the postmaster exits without the agent asking.
    pub crashed: Arc<AtomicBool>,
    /// Woken when the postmaster exits.
    pub exited: Arc<Notify>,
    stopping: Arc<AtomicBool>,
    client: Option<tokio_postgres::Client>,
    /// How far a copy of the leader has come (the API shows it).
    pub copy: Arc<pg::CopyProgress>,
}

const CONF_FILE: &str = "pgwarden.conf";

impl Node {
    pub fn new(cfg: AgentConfig) -> Result<Node, NodeError> {
        let user = pg::OsUser::for_postgres(&cfg.os_user)?;
        let inst = pg::Instance::new(pg::InstanceConfig {
            data_dir: cfg.data_dir.clone(),
            run_dir: cfg.run_dir.clone(),
            port: cfg.pg_port,
            listen: cfg.host.clone(),
            user,
            superuser: cfg.superuser.clone(),
        })?;
        let node = Node {
            cfg,
            inst,
            pid: Arc::new(AtomicU32::new(0)),
            crashed: Arc::new(AtomicBool::new(false)),
            exited: Arc::new(Notify::new()),
            stopping: Arc::new(AtomicBool::new(false)),
            client: None,
            copy: Arc::default(),
        };
        // A postmaster left running by an earlier agent is adopted.
        if let Some(pid) = node.inst.postmaster_pid().filter(|p| pid_alive(*p)) {
            node.pid.store(pid, Ordering::Release);
        }
        Ok(node)
    }

    pub fn data_dir(&self) -> &Path {
        &self.cfg.data_dir
    }

    pub fn has_data(&self) -> bool {
        self.inst.is_initialized()
    }

    pub fn is_running(&self) -> bool {
        let pid = self.pid.load(Ordering::Acquire);
        pid != 0 && pid_alive(pid)
    }

    /// "in production", "shut down", "shut down in recovery", "in archive recovery", ...
    pub async fn cluster_state(&self) -> Option<String> {
        self.controldata("Database cluster state:").await
    }

    /// One field of pg_controldata, run off the loop's thread.
    async fn controldata(&self, field: &'static str) -> Option<String> {
        let mut c = self.inst.command("pg_controldata");
        c.arg("-D").arg(self.data_dir()).env("LC_ALL", "C");
        let out = tokio::task::spawn_blocking(move || {
            pg::command::run_watched(c, Duration::from_secs(10), None)
        })
        .await
        .ok()?
        .ok()?;
        out.lines()
            .find_map(|l| l.strip_prefix(field).map(|v| v.trim().to_owned()))
    }

    pub fn is_standby_dir(&self) -> bool {
        self.data_dir().join("standby.signal").exists()
    }

    /// The agent's own settings file, included from postgresql.conf.
    pub fn write_conf(
        &self,
        primary_conninfo: Option<&str>,
        sync_names: Option<&str>,
        cluster_params: &std::collections::BTreeMap<String, String>,
    ) -> Result<bool, NodeError> {
        let c = &self.cfg;
        let mut s = format!(
            "# written by the pgwarden agent; edit the cluster config instead\n\
             listen_addresses = '{}'\nport = {}\nunix_socket_directories = '{}'\n\
             wal_level = replica\nhot_standby = on\nmax_wal_senders = 10\nmax_replication_slots = 10\n\
             wal_log_hints = on\nwal_keep_size = '128MB'\nhot_standby_feedback = on\n\
             recovery_target_timeline = 'latest'\nwal_retrieve_retry_interval = '1s'\nlogging_collector = off\n",
            c.host,
            c.pg_port,
            c.run_dir.display()
        );
        match primary_conninfo {
            Some(ci) => {
                s.push_str(&format!(
                    "primary_conninfo = '{}'\n",
                    ci.replace('\'', "''")
                ));
                s.push_str(&format!("primary_slot_name = '{}'\n", slot_name(&c.name)));
            }
            None => s.push_str("primary_conninfo = ''\nprimary_slot_name = ''\n"),
        }
        s.push_str(&format!(
            "synchronous_standby_names = '{}'\n",
            sync_names.unwrap_or("").replace('\'', "''")
        ));
        for (k, v) in cluster_params.iter().chain(c.parameters.iter()) {
            s.push_str(&format!("{k} = '{}'\n", v.replace('\'', "''")));
        }
        let path = self.data_dir().join(CONF_FILE);
        if std::fs::read_to_string(&path).ok().as_deref() == Some(s.as_str()) {
            return Ok(false);
        }
        std::fs::write(&path, s)?;
        self.chown(&path)?;
        Ok(true)
    }

    fn chown(&self, p: &Path) -> Result<(), NodeError> {
        if let Some(u) = pg::OsUser::for_postgres(&self.cfg.os_user)? {
            u.chown(p)?;
        }
        Ok(())
    }

    fn write_hba(&self) -> Result<(), NodeError> {
        self.inst.write_hba(&(self.cfg.pg_hba.join("\n") + "\n"))?;
        Ok(())
    }

    fn ensure_include(&self) -> Result<(), NodeError> {
        let p = self.data_dir().join("postgresql.conf");
        let cur = std::fs::read_to_string(&p)?;
        if !cur.contains(&format!("include_if_exists = '{CONF_FILE}'")) {
            std::fs::write(&p, format!("{cur}\ninclude_if_exists = '{CONF_FILE}'\n"))?;
        }
        // -R and earlier tools write primary_conninfo here; the agent's file decides
        let auto = self.data_dir().join("postgresql.auto.conf");
        if let Ok(a) = std::fs::read_to_string(&auto) {
            let kept: Vec<&str> = a
                .lines()
                .filter(|l| {
                    !l.starts_with("primary_conninfo") && !l.starts_with("primary_slot_name")
                })
                .collect();
            std::fs::write(&auto, kept.join("\n") + "\n")?;
        }
        Ok(())
    }

    pub async fn initdb(&self) -> Result<(), NodeError> {
        let inst = self.inst.clone();
        tokio::task::spawn_blocking(move || inst.initdb())
            .await
            .map_err(|e| NodeError::Other(e.to_string()))??;
        self.ensure_include()?;
        self.write_hba()?;
        Ok(())
    }

    /// pg_basebackup from the leader into an empty data directory.
    /// The copy goes to a side directory and replaces the data directory
    /// only once complete: a leader that cannot be reached costs no data.
    pub async fn clone_from(&self, host: &str, port: u16) -> Result<(), NodeError> {
        let side = self.data_dir().with_extension("clone");
        let _ = std::fs::remove_dir_all(&side);
        let mut cfg = self.inst.cfg.clone();
        cfg.data_dir = side.clone();
        let tmp = pg::Instance::new(cfg)?;
        let (host, user) = (host.to_owned(), self.cfg.replication_user.clone());
        // off the loop's thread: the API and the leader watch go on
        let copy = self.copy.clone();
        let r = tokio::task::spawn_blocking(move || {
            tmp.basebackup(&host, port, &user, None, Some(copy))
        })
        .await
        .map_err(|e| NodeError::Other(e.to_string()))?;
        if let Err(e) = r {
            let _ = std::fs::remove_dir_all(&side);
            return Err(e.into());
        }
        self.wipe()?;
        std::fs::rename(&side, self.data_dir())?;
        self.ensure_include()?;
        self.write_hba()?;
        Ok(())
    }

    /// Removes the data directory (a failed clone, a re-clone).
    pub fn wipe(&self) -> Result<(), NodeError> {
        match std::fs::remove_dir_all(self.data_dir()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    pub fn set_standby(&self, on: bool) -> Result<(), NodeError> {
        let p = self.data_dir().join("standby.signal");
        if on {
            std::fs::write(&p, "")?;
            self.chown(&p)?;
        } else if p.exists() {
            std::fs::remove_file(&p)?;
        }
        Ok(())
    }

    /// Starts the postmaster as a child of the agent, and waits until it
    /// accepts connections (or `timeout`).
    pub async fn start(&mut self, timeout: Duration) -> Result<(), NodeError> {
        if self.is_running() {
            return Ok(());
        }
        self.ensure_include()?;
        self.write_hba()?;
        pg::make_dir(
            &self.cfg.run_dir,
            pg::OsUser::for_postgres(&self.cfg.os_user)?,
        )?;
        let deadline = Instant::now() + timeout;
        loop {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.inst.log_file())?;
            let mut cmd = tokio::process::Command::new(self.inst.bin("postgres"));
            cmd.arg("-D")
                .arg(self.data_dir())
                .stdin(std::process::Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            if let Some(u) = pg::OsUser::for_postgres(&self.cfg.os_user)? {
                cmd.uid(u.uid).gid(u.gid);
            }
            // its own process group: a Ctrl-C meant for the agent is not PostgreSQL's
            cmd.process_group(0).kill_on_drop(false);
            let mut child = cmd.spawn()?;
            let pid = child.id().unwrap_or(0);
            self.pid.store(pid, Ordering::Release);
            self.crashed.store(false, Ordering::Release);
            self.stopping.store(false, Ordering::Release);
            let (pid_slot, crashed, exited, stopping) = (
                self.pid.clone(),
                self.crashed.clone(),
                self.exited.clone(),
                self.stopping.clone(),
            );
            tokio::spawn(async move {
                let st = child.wait().await;
                let _ = pid_slot.compare_exchange(pid, 0, Ordering::AcqRel, Ordering::Acquire);
                if !stopping.load(Ordering::Acquire) {
                    tracing::warn!(pid, status = ?st, "postmaster exited");
                    crashed.store(true, Ordering::Release);
                }
                exited.notify_one();
            });
            // ready, or exited: respawned only when old backends still
            // hold the shared memory (they go soon); any other exit is
            // reported with the log
            loop {
                if self.query_ok().await {
                    return Ok(());
                }
                if !self.is_running() {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(NodeError::Other(format!(
                        "PostgreSQL did not accept connections within {timeout:?}; log:\n{}",
                        pg::tail(&self.inst.log_file(), 10)
                    )));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let log = pg::tail(&self.inst.log_file(), 10);
            if Instant::now() > deadline || !log.contains("pre-existing shared memory block") {
                return Err(NodeError::Other(format!(
                    "PostgreSQL did not start; log:\n{log}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// pg_ctl stop with `mode` (fast or immediate).
    pub async fn stop(&mut self, mode: &str) -> Result<(), NodeError> {
        self.client = None;
        if !self.is_running() {
            return Ok(());
        }
        self.stopping.store(true, Ordering::Release);
        // Our own child: signalled here and watched exiting, without
        // pg_ctl's 100 ms polling (a switchover waits on it).
        let own = self.pid.load(Ordering::Acquire);
        let signal = match mode {
            "smart" => Some("-TERM"),
            "fast" => Some("-INT"),
            "immediate" => Some("-QUIT"),
            _ => None,
        };
        if let (true, Some(sig)) = (own != 0, signal) {
            let sent = tokio::process::Command::new("kill")
                .arg(sig)
                .arg(own.to_string())
                .stderr(std::process::Stdio::null())
                .status();
            let sent = tokio::time::timeout(Duration::from_secs(5), sent).await;
            if matches!(sent, Ok(Ok(st)) if st.success()) {
                let deadline = Instant::now() + Duration::from_secs(60);
                while self.pid.load(Ordering::Acquire) == own {
                    if Instant::now() > deadline {
                        return Err(NodeError::Other(format!(
                            "PostgreSQL did not stop within 60 s ({mode} shutdown)"
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                return Ok(());
            }
        }
        let inst = self.inst.clone();
        let mode = mode.to_owned();
        tokio::task::spawn_blocking(move || inst.stop(&mode))
            .await
            .map_err(|e| NodeError::Other(e.to_string()))??;
        self.pid.store(0, Ordering::Release);
        Ok(())
    }

    async fn connect(&mut self) -> Result<&tokio_postgres::Client, NodeError> {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.client = None;
        }
        if self.client.is_none() {
            let mut c = self.local_config();
            c.connect_timeout(self.cfg.pg_check_timeout);
            let limit = self.cfg.pg_check_timeout;
            let (client, conn) = tokio::time::timeout(limit, c.connect(tokio_postgres::NoTls))
                .await
                .map_err(|_| NodeError::NoAnswer(limit))?
                .map_err(|e| NodeError::Sql(e.to_string()))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.client = Some(client);
        }
        Ok(self.client.as_ref().expect("just connected"))
    }

    async fn query_ok(&mut self) -> bool {
        match self.connect().await {
            Ok(c) => c.simple_query("SELECT 1").await.is_ok(),
            Err(_) => false,
        }
    }

    /// Runs SQL (several statements allowed) as the superuser.
    pub async fn execute(&mut self, sql: &str) -> Result<(), NodeError> {
        let c = self.connect().await?;
        tokio::time::timeout(Duration::from_secs(10), c.batch_execute(sql))
            .await
            .map_err(|_| NodeError::Sql("query timed out".into()))?
            .map_err(|e| {
                NodeError::Sql(
                    e.as_db_error()
                        .map(|d| d.message().to_owned())
                        .unwrap_or_else(|| e.to_string()),
                )
            })
    }

    pub async fn status(&mut self) -> Result<Status, NodeError> {
        const Q: &str = "SELECT pg_is_in_recovery(), \
            pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN COALESCE(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) ELSE pg_current_wal_lsn() END, '0/0')::bigint, \
            COALESCE(pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::bigint, 0), \
            CASE WHEN pg_is_in_recovery() THEN COALESCE((SELECT received_tli FROM pg_stat_wal_receiver), (SELECT timeline_id FROM pg_control_checkpoint())) \
                 ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END, \
            COALESCE((SELECT status = 'streaming' FROM pg_stat_wal_receiver), false), \
            (SELECT sender_host || ':' || sender_port FROM pg_stat_wal_receiver), \
            (SELECT count(*) > 0 FROM pg_settings WHERE pending_restart)";
        let limit = self.cfg.pg_check_timeout;
        let c = self.connect().await?;
        let row = match tokio::time::timeout(limit, c.query_one(Q, &[])).await {
            Ok(r) => r,
            Err(_) => {
                self.client = None;
                return Err(NodeError::NoAnswer(limit));
            }
        };
        let row = match row {
            Ok(r) => r,
            Err(e) => {
                self.client = None;
                return Err(NodeError::Sql(e.to_string()));
            }
        };
        let in_recovery: bool = row.get(0);
        if !in_recovery {
            // a primary must also commit: a stalled disk (or WAL that
            // cannot be written) answers reads from memory but hangs here
            self.write_check(limit).await?;
        }
        Ok(Status {
            in_recovery: row.get(0),
            lsn: row.get::<_, i64>(1) as u64,
            replayed_lsn: row.get::<_, i64>(2) as u64,
            timeline: row.get::<_, i32>(3) as u32,
            streaming: row.get(4),
            following: row.get(5),
            pending_restart: row.get(6),
        })
    }

    /// A commit of one transaction id, flushed locally (not waiting for a
    /// synchronous standby, whose own trouble is not this node's), within
    /// `limit`: no answer is a miss like an unanswered status query.
    async fn write_check(&mut self, limit: Duration) -> Result<(), NodeError> {
        // The transaction must write WAL of its own and hold an xid, or
        // PostgreSQL commits it without flushing (an xid alone writes no
        // WAL): a transactional logical message does both, and leaves no
        // row anywhere.
        const Q: &str = "BEGIN; SET LOCAL synchronous_commit = local; \
            SELECT pg_logical_emit_message(true, 'pgwarden', 'write check'); COMMIT";
        let c = self.connect().await?;
        match tokio::time::timeout(limit, c.batch_execute(Q)).await {
            Ok(Ok(())) => Ok(()),
            // refused by PostgreSQL (a read-only setting): an answer, not
            // a hang
            Ok(Err(e)) if e.as_db_error().is_some() => {
                tracing::debug!(error = %e, "write check refused");
                Ok(())
            }
            // the connection broke (the fence stopped PostgreSQL in the
            // middle of the check): no answer, and not a sign of health
            Ok(Err(e)) => {
                self.client = None;
                Err(NodeError::Sql(format!("write check: {e}")))
            }
            Err(_) => {
                self.client = None;
                Err(NodeError::NoAnswer(limit))
            }
        }
    }

    /// Asks for a promotion and returns at once: its end is awaited with
    /// [`Node::until_promoted`] while the lease is renewed.
    pub async fn request_promotion(&mut self) -> Result<(), NodeError> {
        self.execute("SELECT pg_promote(false)").await
    }

    /// A connection to this node's PostgreSQL over its Unix socket.
    fn local_config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host_path(&self.cfg.run_dir)
            .port(self.cfg.pg_port)
            .user(&self.cfg.superuser)
            .dbname("postgres")
            .application_name("pgwarden agent")
            .connect_timeout(Duration::from_secs(2));
        c
    }

    /// Runs `sql` on a connection of its own within `limit`; returns the
    /// first column of the first row, if any. Owns what it needs, so the
    /// agent can renew its lease while it runs.
    fn query_owned(
        &self,
        sql: &'static str,
        limit: Duration,
    ) -> impl std::future::Future<Output = Result<Option<bool>, NodeError>> + 'static {
        let cfg = self.local_config();
        async move {
            let work = async {
                let (c, conn) = cfg.connect(tokio_postgres::NoTls).await?;
                tokio::spawn(conn);
                let rows = c.simple_query(sql).await?;
                Ok::<_, tokio_postgres::Error>(rows.iter().find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(|v| v == "t"),
                    _ => None,
                }))
            };
            tokio::time::timeout(limit, work)
                .await
                .map_err(|_| NodeError::NoAnswer(limit))?
                .map_err(|e| NodeError::Sql(e.to_string()))
        }
    }

    /// Waits (up to `limit`) until the promotion is over: PostgreSQL is
    /// out of recovery.
    pub fn until_promoted(
        &self,
        limit: Duration,
    ) -> impl std::future::Future<Output = Result<(), NodeError>> + 'static {
        let check = {
            let cfg = self.local_config();
            move || {
                let cfg = cfg.clone();
                async move {
                    let (c, conn) = cfg.connect(tokio_postgres::NoTls).await.ok()?;
                    tokio::spawn(conn);
                    let row = c.query_one("SELECT pg_is_in_recovery()", &[]).await.ok()?;
                    Some(row.get::<_, bool>(0))
                }
            }
        };
        async move {
            let deadline = Instant::now() + limit;
            loop {
                let r = tokio::time::timeout(Duration::from_secs(2), check()).await;
                if matches!(r, Ok(Some(false))) {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    return Err(NodeError::Other(format!(
                        "the promotion did not finish within {limit:?}"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// A checkpoint (the control file shows a new timeline only after one;
    /// pg_rewind on the old primary reads it from there), on a connection
    /// of its own.
    pub fn checkpoint(&self) -> impl std::future::Future<Output = ()> + 'static {
        let q = self.query_owned("CHECKPOINT", Duration::from_secs(60));
        async move {
            if let Err(e) = q.await {
                tracing::warn!(error = %e, "checkpoint failed");
            }
        }
    }

    /// The postmaster's PID, when it runs.
    pub fn postmaster(&self) -> Option<u32> {
        let pid = self.pid.load(Ordering::Acquire);
        (pid != 0 && pid_alive(pid)).then_some(pid)
    }

    /// SIGKILL to the postmaster and every child: the fence for a
    /// PostgreSQL that does not answer (a stopped process dies as well, so
    /// it cannot take a write when it would have resumed). Returns how many
    /// processes were signalled.
    pub fn kill(&mut self) -> usize {
        self.client = None;
        self.postmaster().map(crate::fence::kill_tree).unwrap_or(0)
    }

    /// Asks the leader for a checkpoint, so that its control file shows
    /// its current timeline before pg_rewind compares against it, and
    /// returns what it then says: (in recovery, checkpoint timeline).
    pub async fn checkpoint_on(&self, host: &str, port: u16) -> Result<(bool, u32), NodeError> {
        let mut c = tokio_postgres::Config::new();
        c.host(host)
            .port(port)
            .user(&self.cfg.superuser)
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(3));
        let (client, conn) =
            tokio::time::timeout(Duration::from_secs(5), c.connect(tokio_postgres::NoTls))
                .await
                .map_err(|_| NodeError::NoAnswer(Duration::from_secs(5)))?
                .map_err(|e| NodeError::Sql(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let q = "SELECT pg_is_in_recovery(), (SELECT timeline_id FROM pg_control_checkpoint())";
        let work = async {
            let in_recovery: bool = client
                .query_one("SELECT pg_is_in_recovery()", &[])
                .await?
                .get(0);
            if !in_recovery {
                client.batch_execute("CHECKPOINT").await?;
            }
            client.query_one(q, &[]).await
        };
        let row = tokio::time::timeout(Duration::from_secs(30), work)
            .await
            .map_err(|_| NodeError::NoAnswer(Duration::from_secs(30)))?
            .map_err(|e| NodeError::Sql(e.to_string()))?;
        Ok((row.get(0), row.get::<_, i32>(1) as u32))
    }

    /// The timeline of this node's last checkpoint (pg_controldata).
    pub async fn checkpoint_timeline(&self) -> Option<u32> {
        self.controldata("Latest checkpoint's TimeLineID:")
            .await?
            .parse()
            .ok()
    }

    /// Where this node's last checkpoint record starts (pg_controldata):
    /// after a clean shutdown, the end of its WAL.
    pub async fn checkpoint_lsn(&self) -> Option<u64> {
        let v = self.controldata("Latest checkpoint location:").await?;
        let (hi, lo) = v.split_once('/')?;
        Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
    }

    pub async fn reload(&mut self) -> Result<(), NodeError> {
        self.execute("SELECT pg_reload_conf()").await
    }

    /// Standbys streaming from this primary.
    pub async fn replication(&mut self) -> Result<Vec<ha::quorum::Streaming>, NodeError> {
        let c = self.connect().await?;
        let rows = tokio::time::timeout(
            Duration::from_secs(3),
            c.query("SELECT application_name, sync_state, COALESCE(pg_wal_lsn_diff(flush_lsn, '0/0'), 0)::bigint FROM pg_stat_replication WHERE state = 'streaming'", &[]),
        )
        .await
        .map_err(|_| NodeError::Sql("query timed out".into()))?
        .map_err(|e| NodeError::Sql(e.to_string()))?;
        Ok(rows
            .iter()
            .map(|r| ha::quorum::Streaming {
                name: r.get(0),
                sync_state: r.get(1),
                flush_lsn: r.get::<_, i64>(2) as u64,
            })
            .collect())
    }

    /// Client sessions other than this one with a transaction open: a
    /// leader stepping down waits for them to end.
    pub async fn open_transactions(&mut self) -> Result<u64, NodeError> {
        const Q: &str = "SELECT count(*) FROM pg_stat_activity \
            WHERE backend_type = 'client backend' AND xact_start IS NOT NULL \
            AND pid <> pg_backend_pid()";
        let c = self.connect().await?;
        let row = tokio::time::timeout(Duration::from_secs(1), c.query_one(Q, &[]))
            .await
            .map_err(|_| NodeError::Sql("query timed out".into()))?
            .map_err(|e| NodeError::Sql(e.to_string()))?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    /// Replication slots for the other members (on the primary, and on a
    /// standby about to be promoted, so that they stream from it at once).
    pub async fn ensure_slots(&mut self, members: &[String]) -> Result<(), NodeError> {
        let mut sql = String::new();
        for m in members.iter().filter(|m| **m != self.cfg.name) {
            let s = slot_name(m);
            sql.push_str(&format!(
                "SELECT pg_create_physical_replication_slot('{s}') WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = '{s}');"
            ));
        }
        if sql.is_empty() {
            return Ok(());
        }
        self.execute(&sql).await
    }

    /// Finishes crash recovery without accepting connections (single-user
    /// mode), so pg_rewind gets a cleanly shut down target.
    pub async fn recover_single_user(&self) -> Result<(), NodeError> {
        let mut c = self.inst.command("postgres");
        c.arg("--single").arg("-D").arg(self.data_dir()).args([
            "-c",
            "archive_mode=off",
            "postgres",
        ]);
        c.stdin(std::process::Stdio::null());
        let limit = Duration::from_secs(600);
        tokio::task::spawn_blocking(move || pg::command::run_watched(c, limit, None))
            .await
            .map_err(|e| NodeError::Other(e.to_string()))??;
        Ok(())
    }

    /// pg_rewind against the leader; returns what it printed.
    pub async fn rewind(&self, host: &str, port: u16) -> Result<String, NodeError> {
        let mut c = self.inst.command("pg_rewind");
        c.arg("-D").arg(self.data_dir()).arg(format!(
            "--source-server=host={host} port={port} user={} dbname=postgres connect_timeout=5",
            self.cfg.superuser
        ));
        let limit = Duration::from_secs(600);
        let (out, err) =
            tokio::task::spawn_blocking(move || pg::command::run_output(c, limit, None))
                .await
                .map_err(|e| NodeError::Other(e.to_string()))?
                .map_err(|e| NodeError::Other(format!("pg_rewind failed: {e}")))?;
        // pg_rewind reports on standard error
        let out = format!("{out}{err}");
        tracing::info!(output = %out.trim(), "pg_rewind finished");
        self.ensure_include()?;
        self.write_hba()?;
        Ok(out)
    }

    pub fn conninfo(&self, host: &str, port: u16) -> String {
        format!(
            "host={host} port={port} user={} application_name={} connect_timeout=2",
            self.cfg.replication_user, self.cfg.name
        )
    }

    pub fn log_file(&self) -> PathBuf {
        self.inst.log_file()
    }
}

pub fn slot_name(member: &str) -> String {
    format!("pgw_{}", member.replace('-', "_").to_lowercase())
}
