//! WAL on small tmpfs file systems (the `wal-full` fault): one tmpfs per
//! node (`ROOT/walfs/nodeN`, 1.5 GB, owned by the PostgreSQL OS user),
//! each node's `pg_wal` a symlink to its own. Neither `initdb` nor
//! `pg_basebackup` is told `--waldir` by the agent, so `pg_wal` is moved
//! onto the tmpfs of a running cluster (`relink`): the agent is frozen
//! (SIGSTOP), PostgreSQL stopped (SIGINT, fast shutdown), `pg_wal` copied
//! and replaced by the symlink, the agent resumed; it starts PostgreSQL
//! again (a standby as a standby, the primary in place). A node re-cloned
//! later has a plain `pg_wal` again and is relinked before the next
//! `wal-full`.
//!
//! The fault writes a filler file (as root) until the tmpfs is full,
//! holds, then removes it. Every mount is unmounted at the end (also when
//! dropped); mounts of a run that no longer runs are unmounted at the
//! start of the next one.
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::cluster::Cluster;
use crate::procs::{self, Signal};
use crate::sh::{self, QUICK};

/// Each node's tmpfs: more than the WAL PostgreSQL keeps in normal
/// running (max_wal_size 1 GB and wal_keep_size 128 MB), so that only the
/// filler fills it. With 256 MB a standby's pg_wal filled by itself (one
/// 16 MB segment per timeline within wal_keep_size, and WAL up to
/// max_wal_size between restartpoints), and the synchronous standby, the
/// one member that may be promoted, could then not finish its promotion.
pub const SIZE_MB: u64 = 1536;
/// A tmpfs whose WAL alone takes more than this share is said so.
const CROWDED_PERCENT: u64 = 60;
const FILLER: &str = "chaos-filler";
/// How long PostgreSQL may take to stop for a relink.
const STOP_WITHIN: Duration = Duration::from_secs(20);

pub struct WalFs {
    mounts: Vec<PathBuf>,
    uid: u32,
    gid: u32,
    gone: bool,
}

/// The uid and gid of `user` from /etc/passwd.
fn os_user(user: &str) -> anyhow::Result<(u32, u32)> {
    let text = std::fs::read_to_string("/etc/passwd").context("cannot read /etc/passwd")?;
    text.lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&user))
        .and_then(|f| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))
        .with_context(|| format!("no OS user {user:?} (PostgreSQL runs as it)"))
}

impl WalFs {
    /// Mounts one tmpfs per node under `root/walfs`; on an error,
    /// unmounts what it mounted.
    pub fn mount(root: &Path, nodes: usize, user: &str) -> anyhow::Result<WalFs> {
        let (uid, gid) = os_user(user)?;
        let mut w = WalFs {
            mounts: Vec::new(),
            uid,
            gid,
            gone: false,
        };
        for i in 0..nodes {
            let m = root.join("walfs").join(format!("node{i}"));
            std::fs::create_dir_all(&m)?;
            let opts = format!("size={SIZE_MB}m,mode=0700,uid={uid},gid={gid}");
            let r = sh::run(
                "mount",
                &[
                    "-t",
                    "tmpfs",
                    "-o",
                    &opts,
                    "pgwarden-chaos-wal",
                    &path_str(&m)?,
                ],
                QUICK,
            );
            if let Err(e) = r {
                w.unmount();
                return Err(e.context("the WAL tmpfs needs root (mount -t tmpfs)"));
            }
            w.mounts.push(m);
        }
        Ok(w)
    }

    /// Whether node `i`'s pg_wal is the symlink to its tmpfs.
    pub fn on_tmpfs(&self, cluster: &Cluster, i: usize) -> bool {
        std::fs::read_link(cluster.nodes[i].data_dir.join("pg_wal"))
            .is_ok_and(|t| t == self.mounts[i])
    }

    /// Moves node `i`'s pg_wal onto its tmpfs (see the module's comment).
    /// The agent is resumed whatever happens.
    pub async fn relink(&self, cluster: &Cluster, i: usize) -> anyhow::Result<()> {
        let name = &cluster.nodes[i].name;
        let agent = cluster
            .agent_pid(i)
            .with_context(|| format!("the agent of {name} is not found"))?;
        procs::signal(agent, Signal::Stop)?;
        let r = self.relink_frozen(cluster, i).await;
        procs::signal(agent, Signal::Cont)?;
        r.with_context(|| format!("moving {name}'s pg_wal onto its tmpfs"))
    }

    async fn relink_frozen(&self, cluster: &Cluster, i: usize) -> anyhow::Result<()> {
        let data = &cluster.nodes[i].data_dir;
        if let Some(pm) = cluster.postmaster_pid(i) {
            procs::signal(pm, Signal::Int)?;
            let deadline = Instant::now() + STOP_WITHIN;
            // The agent, frozen, does not reap it: a zombie counts as gone.
            while procs::alive(pm) {
                if Instant::now() > deadline {
                    bail!("PostgreSQL (pid {pm}) did not stop within {STOP_WITHIN:?}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let wal = data.join("pg_wal");
        let mount = &self.mounts[i];
        if std::fs::read_link(&wal).is_ok_and(|t| t == *mount) {
            return Ok(());
        }
        anyhow::ensure!(wal.is_dir(), "{} is not a directory", wal.display());
        // What an earlier pg_wal left on the tmpfs (before a re-clone).
        for e in std::fs::read_dir(mount)? {
            let p = e?.path();
            if p.is_dir() {
                std::fs::remove_dir_all(&p)?;
            } else {
                std::fs::remove_file(&p)?;
            }
        }
        let (w, m) = (path_str(&wal)?, path_str(mount)?);
        sh::run(
            "cp",
            &["-a", "--", &format!("{w}/."), &m],
            Duration::from_secs(60),
        )?;
        let old = data.join("pg_wal.chaos-old");
        std::fs::rename(&wal, &old)?;
        std::os::unix::fs::symlink(mount, &wal)?;
        std::os::unix::fs::lchown(&wal, Some(self.uid), Some(self.gid))?;
        std::fs::remove_dir_all(&old)?;
        Ok(())
    }

    /// Moves onto its tmpfs the pg_wal of every node whose pg_wal is not
    /// there, one at a time (standbys first, the primary `primary` last),
    /// waiting after each for the cluster to converge within `within`.
    /// Returns the primary then.
    pub async fn prepare(
        &self,
        cluster: &Cluster,
        primary: usize,
        within: Duration,
    ) -> anyhow::Result<usize> {
        let mut order: Vec<usize> = (0..cluster.nodes.len()).filter(|i| *i != primary).collect();
        order.push(primary);
        let mut p = primary;
        for i in order {
            if self.on_tmpfs(cluster, i) {
                continue;
            }
            self.relink(cluster, i).await?;
            p = cluster
                .wait_converged(within)
                .await
                .map_err(|why| {
                    anyhow::anyhow!(
                        "not converged within {} s after moving {}'s pg_wal: {why}",
                        within.as_secs(),
                        cluster.nodes[i].name
                    )
                })?
                .0;
        }
        Ok(p)
    }

    /// The megabytes of node `i`'s tmpfs taken by anything but the filler.
    fn wal_mb(&self, i: usize) -> u64 {
        let Ok(dir) = std::fs::read_dir(&self.mounts[i]) else {
            return 0;
        };
        let bytes: u64 = dir
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name() != FILLER)
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum();
        bytes >> 20
    }

    /// The nodes whose WAL alone fills more than CROWDED_PERCENT of their
    /// tmpfs, said in a sentence (a cluster that fills its WAL tmpfs by
    /// itself is not what `wal-full` injects).
    pub fn crowded(&self) -> Option<String> {
        let full: Vec<String> = (0..self.mounts.len())
            .map(|i| (i, self.wal_mb(i)))
            .filter(|(_, mb)| mb * 100 > SIZE_MB * CROWDED_PERCENT)
            .map(|(i, mb)| format!("node{i} {mb} MB"))
            .collect();
        (!full.is_empty()).then(|| {
            format!(
                "WAL alone takes over {CROWDED_PERCENT}% of the {SIZE_MB} MB WAL tmpfs: {}",
                full.join(", ")
            )
        })
    }

    /// Fills node `i`'s tmpfs with a file owned by root until it is full;
    /// returns the file and how many bytes it took.
    pub fn fill(&self, i: usize) -> anyhow::Result<(PathBuf, u64)> {
        let p = self.mounts[i].join(FILLER);
        let mut f =
            std::fs::File::create(&p).with_context(|| format!("cannot create {}", p.display()))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
        let chunk = vec![0u8; 1 << 20];
        let mut n = 0u64;
        // At most the size of the file system (and a little): a file
        // system that never reports full does not keep this writing.
        while n <= (SIZE_MB + 1) << 20 {
            match f.write(&chunk) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k as u64,
            }
        }
        let _ = f.sync_all();
        Ok((p, n))
    }

    /// Unmounts every tmpfs (lazily when busy). Best effort; safe to call
    /// twice.
    pub fn unmount(&mut self) {
        if self.gone {
            return;
        }
        self.gone = true;
        for m in &self.mounts {
            let Ok(p) = path_str(m) else { continue };
            if sh::run("umount", &[&p], QUICK).is_err() {
                let _ = sh::run("umount", &["-l", &p], QUICK);
            }
        }
    }
}

impl Drop for WalFs {
    fn drop(&mut self) {
        self.unmount();
    }
}

fn path_str(p: &Path) -> anyhow::Result<String> {
    p.to_str()
        .map(str::to_owned)
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

/// Unmounts the WAL tmpfs mounts of runs that no longer run (mount
/// points `.../pgwarden-chaos-<pid>-<n>/walfs/nodeN`); returns them.
pub fn clean_leftovers() -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out = Vec::new();
    for point in info.lines().filter_map(|l| l.split(' ').nth(4)) {
        let Some(pid) = run_of(point) else { continue };
        if procs::is_chaos_run(pid) {
            continue;
        }
        if sh::run("umount", &[point], QUICK).is_ok()
            || sh::run("umount", &["-l", point], QUICK).is_ok()
        {
            out.push(format!("mount {point}"));
        }
    }
    out
}

/// The PID of the run a WAL mount point belongs to.
fn run_of(point: &str) -> Option<u32> {
    let (_, rest) = point.split_once("/pgwarden-chaos-")?;
    let (pid, rest) = rest.split_once('-')?;
    rest.contains("/walfs/node").then(|| pid.parse().ok())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mount_point_names_its_run() {
        assert_eq!(run_of("/tmp/pgwarden-chaos-123-456/walfs/node0"), Some(123));
        assert_eq!(run_of("/tmp/pgwarden-chaos-123-456/up/node0"), None);
        assert_eq!(run_of("/var/lib/x"), None);
    }
}
