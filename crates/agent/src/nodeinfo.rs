//! What one agent tells about its node beyond its member key (`GET
//! /node`): the sizes of its data directory and of `pg_wal`, the free
//! space of their file system, how far replay is behind in time, its last
//! pass's duration and the time left on its lease. Walking a large data
//! directory costs, so sizes are computed off the runtime's threads,
//! under a deadline, and kept for a few seconds.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Sizes are computed again at most this often.
const DISK_EVERY: Duration = Duration::from_secs(10);
/// A walk of the data directory longer than this gives up.
const DISK_DEADLINE: Duration = Duration::from_secs(3);
/// Replay delay is asked again at most this often.
const DELAY_EVERY: Duration = Duration::from_millis(900);
const DELAY_DEADLINE: Duration = Duration::from_secs(1);

/// Replay delay of a standby: 0 when it replayed all it received (an
/// idle primary sends nothing, so the time of the last replayed commit
/// would grow without anything being behind); NULL on a primary.
pub const REPLAY_DELAY_SQL: &str = "SELECT CASE WHEN NOT pg_is_in_recovery() THEN NULL \
    WHEN pg_last_wal_receive_lsn() IS NOT NULL AND pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0::float8 \
    ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())::float8, 0) END";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Disk {
    /// The data directory without a `pg_wal` that is a link elsewhere.
    pub data_dir_bytes: u64,
    pub wal_bytes: u64,
    /// Free to an unprivileged user on the data directory's file system.
    pub fs_free_bytes: u64,
    pub fs_size_bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub disk: Option<Disk>,
    /// Why `disk` is missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_error: Option<String>,
    /// Standby: seconds its replay is behind (see [`REPLAY_DELAY_SQL`]).
    pub replay_delay_s: Option<f64>,
    pub loop_last_s: Option<f64>,
    /// Only on the lease holder: the time left on its lease.
    pub lease_remaining_ms: Option<u64>,
}

/// Bytes on disk under `root` (not following links), giving up at `deadline`.
pub fn du(root: &Path, deadline: Instant) -> Result<u64, String> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0u64;
    let mut stack: Vec<PathBuf> = vec![root.to_path_buf()];
    let mut seen = 0u64;
    while let Some(p) = stack.pop() {
        seen += 1;
        if seen.is_multiple_of(256) && Instant::now() > deadline {
            return Err(format!(
                "{} is too large to measure in time",
                root.display()
            ));
        }
        let md = match std::fs::symlink_metadata(&p) {
            Ok(m) => m,
            // files come and go under a running PostgreSQL
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("{}: {e}", p.display())),
        };
        total = total.saturating_add(md.blocks().saturating_mul(512));
        if md.is_dir() {
            let rd = match std::fs::read_dir(&p) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(format!("{}: {e}", p.display())),
            };
            stack.extend(rd.flatten().map(|e| e.path()));
        }
    }
    Ok(total)
}

/// The sizes and free space of a data directory (blocking).
pub fn measure(data_dir: &Path) -> Result<Disk, String> {
    let deadline = Instant::now() + DISK_DEADLINE;
    let data_dir_bytes = du(data_dir, deadline)?;
    let wal = data_dir.join("pg_wal");
    // pg_wal may be a link to another file system (initdb --waldir)
    let wal_target = std::fs::canonicalize(&wal).unwrap_or(wal.clone());
    let wal_bytes = du(&wal_target, deadline)?;
    let fs = rustix::fs::statvfs(data_dir).map_err(|e| format!("statvfs: {e}"))?;
    Ok(Disk {
        data_dir_bytes,
        wal_bytes,
        fs_free_bytes: fs.f_bavail.saturating_mul(fs.f_frsize),
        fs_size_bytes: fs.f_blocks.saturating_mul(fs.f_frsize),
    })
}

/// Kept values of the expensive parts, with when they were taken.
#[derive(Default)]
pub struct Cache {
    disk: Option<(Instant, Result<Disk, String>)>,
    delay: Option<(Instant, Option<f64>)>,
}

/// Refreshes what is stale in `cache` and returns the node's figures.
pub async fn collect(
    cfg: &config::AgentConfig,
    shared: &crate::driver::Shared,
    cache: &tokio::sync::Mutex<Cache>,
) -> NodeInfo {
    let mut c = cache.lock().await;
    let now = Instant::now();
    if c.disk
        .as_ref()
        .is_none_or(|(t, _)| t.elapsed() >= DISK_EVERY)
    {
        let dir = cfg.data_dir.clone();
        let r = tokio::time::timeout(
            DISK_DEADLINE + Duration::from_secs(1),
            tokio::task::spawn_blocking(move || measure(&dir)),
        )
        .await;
        let r = match r {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("measuring the data directory took too long".into()),
        };
        c.disk = Some((now, r));
    }
    if c.delay
        .as_ref()
        .is_none_or(|(t, _)| t.elapsed() >= DELAY_EVERY)
    {
        c.delay = Some((now, replay_delay(cfg).await));
    }
    let is_leader =
        shared.leader.lock().map(|l| l.clone()).unwrap_or(None) == Some(cfg.name.clone());
    let (disk, disk_error) = match c.disk.as_ref().map(|(_, r)| r.clone()) {
        Some(Ok(d)) => (Some(d), None),
        Some(Err(e)) => (None, Some(e)),
        None => (None, None),
    };
    NodeInfo {
        name: cfg.name.clone(),
        disk,
        disk_error,
        replay_delay_s: c.delay.as_ref().and_then(|(_, d)| *d),
        loop_last_s: shared.telemetry.loop_histogram().last_s,
        lease_remaining_ms: is_leader
            .then(|| shared.telemetry.lease_remaining(Instant::now()))
            .flatten()
            .map(|d| d.as_millis() as u64),
    }
}

/// This node's replay delay, asked of its PostgreSQL over the Unix socket.
async fn replay_delay(cfg: &config::AgentConfig) -> Option<f64> {
    let mut c = tokio_postgres::Config::new();
    c.host_path(&cfg.run_dir)
        .port(cfg.pg_port)
        .user(&cfg.superuser)
        .dbname("postgres")
        .application_name("pgwarden agent api")
        .connect_timeout(DELAY_DEADLINE);
    let work = async {
        let (client, conn) = c.connect(tokio_postgres::NoTls).await.ok()?;
        let conn = tokio::spawn(conn);
        let row = client.query_one(REPLAY_DELAY_SQL, &[]).await.ok();
        drop(client);
        let _ = conn.await;
        row?.get::<_, Option<f64>>(0)
    };
    tokio::time::timeout(DELAY_DEADLINE, work)
        .await
        .ok()
        .flatten()
}

/// Shared by the API's handlers.
pub type SharedCache = Arc<tokio::sync::Mutex<Cache>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn du_counts_files_not_links_and_gives_up_in_time() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("pg_wal")).unwrap();
        std::fs::write(d.path().join("pg_wal/seg"), vec![1u8; 64 * 1024]).unwrap();
        std::fs::write(d.path().join("base"), vec![1u8; 16 * 1024]).unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("big"), vec![1u8; 1024 * 1024]).unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("link")).unwrap();
        let far = Instant::now() + Duration::from_secs(60);
        let total = du(d.path(), far).unwrap();
        assert!(total >= 80 * 1024, "{total}");
        assert!(total < 1024 * 1024, "followed a link: {total}");
        let disk = measure(d.path()).unwrap();
        assert!(disk.wal_bytes >= 64 * 1024 && disk.wal_bytes < disk.data_dir_bytes);
        assert!(disk.fs_size_bytes >= disk.fs_free_bytes && disk.fs_free_bytes > 0);
        // a deadline already passed stops a walk of many entries
        for i in 0..300 {
            std::fs::write(d.path().join(format!("f{i}")), b"x").unwrap();
        }
        assert!(du(d.path(), Instant::now() - Duration::from_secs(1)).is_err());
    }
}
