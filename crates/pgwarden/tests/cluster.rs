//! Whole clusters: agents and the proxy as separate `pgwarden` processes
//! over real PostgreSQL servers, on the local DCS or a real etcd; faults by
//! kill -9.
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dcs::Dcs;
use testkit::{free_port, Etcd, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_pgwarden");

struct Cluster {
    dir: TempDir,
    dcs_url: String,
    agents: Vec<Option<Child>>,
    pg_ports: Vec<u16>,
    proxy: Option<Child>,
    proxy_port: u16,
    /// Data directories that are loop-mounted file systems of their own.
    disks: Vec<PathBuf>,
}

impl Cluster {
    fn start(n: usize, dcs_url: Option<String>, extra: &[&str]) -> Cluster {
        Cluster::start_in(TempDir::new("cluster"), Vec::new(), n, dcs_url, extra)
    }

    /// As [`Cluster::start`], each data directory a small ext4 file system
    /// of its own (a loop device), so a test can freeze one node's disk.
    fn start_on_disks(n: usize, extra: &[&str]) -> Cluster {
        let dir = TempDir::new("cluster");
        let mut disks = Vec::new();
        for i in 0..n {
            let img = dir.path().join(format!("n{i}.img"));
            let mnt = dir.path().join(format!("n{i}"));
            std::fs::create_dir_all(&mnt).unwrap();
            let sh = format!(
                "truncate -s 512M {img} && mkfs.ext4 -q -F {img} && mount -o loop {img} {mnt} \
                 && rmdir {mnt}/lost+found && chown postgres:postgres {mnt} && chmod 700 {mnt}",
                img = img.display(),
                mnt = mnt.display()
            );
            let ok = Command::new("sh")
                .args(["-c", &sh])
                .status()
                .unwrap()
                .success();
            assert!(ok, "cannot make a loop-mounted disk: {sh}");
            disks.push(mnt);
        }
        Cluster::start_in(dir, disks, n, None, extra)
    }

    fn start_in(
        dir: TempDir,
        disks: Vec<PathBuf>,
        n: usize,
        dcs_url: Option<String>,
        extra: &[&str],
    ) -> Cluster {
        let dcs_url =
            dcs_url.unwrap_or_else(|| format!("local://{}", dir.path().join("dcs").display()));
        let pg_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        for (i, pg_port) in pg_ports.iter().enumerate() {
            let conf = format!(
                "[agent]\nname = \"n{i}\"\ncluster = \"t\"\ndcs = \"{dcs_url}\"\ndata_dir = \"{}\"\nrun_dir = \"{}\"\n\
                 pg_port = {}\napi_listen = \"127.0.0.1:{}\"\n{}\n",
                data_dir(dir.path(), &disks, i).display(),
                dir.path().join(format!("n{i}.run")).display(),
                pg_port,
                free_port(),
                extra.get(i).copied().unwrap_or("")
            );
            std::fs::write(dir.path().join(format!("n{i}.toml")), conf).unwrap();
        }
        let proxy_port = free_port();
        std::fs::write(
            dir.path().join("proxy.toml"),
            format!(
                "[proxy]\nlisten = \"127.0.0.1:{proxy_port}\"\nhba = [\"host all all 127.0.0.1/32 trust\"]\n\
                 admin_users = [\"postgres\"]\nquery_wait_timeout = \"20s\"\ndcs = \"{dcs_url}\"\ncluster = \"t\"\n"
            ),
        )
        .unwrap();
        let mut c = Cluster {
            dir,
            dcs_url,
            agents: Vec::new(),
            pg_ports,
            proxy: None,
            proxy_port,
            disks,
        };
        for i in 0..n {
            let a = c.spawn_agent(i);
            c.agents.push(Some(a));
        }
        c.proxy = Some(
            Command::new(BIN)
                .args(["proxy", "--config"])
                .arg(c.dir.path().join("proxy.toml"))
                .stdout(Stdio::null())
                .stderr(c.log("proxy"))
                .spawn()
                .unwrap(),
        );
        c
    }

    /// The last `n` lines of every agent's and PostgreSQL's log.
    fn logs(&self, n: usize) -> String {
        (0..self.agents.len())
            .map(|i| {
                let pg = self
                    .dir
                    .path()
                    .join(format!("n{i}.run"))
                    .join("postgresql.log");
                format!(
                    "--- agent{i}\n{}\n--- postgresql n{i}\n{}\n",
                    testkit_tail(&self.dir.path().join(format!("agent{i}.log")), n),
                    testkit_tail(&pg, n)
                )
            })
            .collect()
    }

    fn log(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{name}.log")))
            .unwrap()
    }

    fn spawn_agent(&self, i: usize) -> Child {
        Command::new(BIN)
            .args(["agent", "--config"])
            .arg(self.dir.path().join(format!("n{i}.toml")))
            .stdout(Stdio::null())
            .stderr(self.log(&format!("agent{i}")))
            .spawn()
            .unwrap()
    }

    fn data(&self, i: usize) -> PathBuf {
        data_dir(self.dir.path(), &self.disks, i)
    }

    async fn snapshot(&self) -> Option<(Option<String>, Vec<ha::Member>)> {
        let d = dcs::open(&self.dcs_url, "t").await.ok()?;
        let s = d.snapshot().await.ok()?;
        let members = s
            .members
            .values()
            .filter_map(|v| ha::Member::from_json(v))
            .collect();
        Some((s.leader.map(|l| l.name), members))
    }

    /// Waits until `n` members run: one primary holding the lease and
    /// the others streaming on its timeline. Returns the leader's index.
    async fn wait_healthy(&self, n: usize, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        loop {
            if let Some((Some(leader), members)) = self.snapshot().await {
                let lead = members
                    .iter()
                    .find(|m| m.name == leader && m.running && m.role == ha::Role::Primary);
                if let Some(l) = lead {
                    let ok = members
                        .iter()
                        .filter(|m| {
                            m.name != leader && m.running && m.streaming && m.timeline == l.timeline
                        })
                        .count();
                    if ok + 1 >= n {
                        return leader[1..].parse().unwrap();
                    }
                }
            }
            if Instant::now() > deadline {
                let logs = self.logs(15);
                panic!(
                    "cluster not healthy with {n} members after {limit:?}: {:?}\n{logs}",
                    self.snapshot().await
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn psql(&self, port: u16, sql: &str) -> Result<String, String> {
        let (ok, out, err) = testkit::psql(port, "postgres", sql);
        if ok {
            Ok(out.trim().to_owned())
        } else {
            Err(err)
        }
    }

    /// Retries a write through the proxy until it succeeds.
    fn write_via_proxy(&self, sql: &str, limit: Duration) -> Duration {
        let start = Instant::now();
        loop {
            match self.psql(self.proxy_port, sql) {
                Ok(_) => return start.elapsed(),
                Err(e) if start.elapsed() > limit => {
                    panic!("no successful write through the proxy within {limit:?}: {e}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn postmaster_pid(&self, i: usize) -> u32 {
        std::fs::read_to_string(self.data(i).join("postmaster.pid"))
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    fn kill_postmaster(&self, i: usize) {
        Command::new("kill")
            .args(["-9", &self.postmaster_pid(i).to_string()])
            .status()
            .unwrap();
    }

    fn kill_agent(&mut self, i: usize) {
        if let Some(mut a) = self.agents[i].take() {
            let _ = a.kill();
            let _ = a.wait();
        }
    }

    fn restart_agent(&mut self, i: usize) {
        let a = self.spawn_agent(i);
        self.agents[i] = Some(a);
    }
}

/// Node `i`'s data directory: in the cluster's directory, or on its own
/// disk (not the mount point itself: a clone renames its copy into place).
fn data_dir(dir: &std::path::Path, disks: &[PathBuf], i: usize) -> PathBuf {
    match disks.get(i) {
        Some(d) => d.join("data"),
        None => dir.join(format!("n{i}")),
    }
}

fn testkit_tail(p: &std::path::Path, n: usize) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let l: Vec<&str> = s.lines().collect();
    l[l.len().saturating_sub(n)..].join("\n")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // a frozen disk would hold every stop below forever
        for d in &self.disks {
            let _ = Command::new("fsfreeze")
                .arg("-u")
                .arg(d)
                .stderr(Stdio::null())
                .status();
        }
        if let Some(mut p) = self.proxy.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
        for a in self.agents.iter_mut().flatten() {
            let _ = Command::new("kill")
                .args(["-TERM", &a.id().to_string()])
                .status();
        }
        for a in self.agents.iter_mut().flatten() {
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline && matches!(a.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = a.kill();
        }
        // anything still running (a killed agent's postmaster) goes too
        for i in 0..self.pg_ports.len() {
            if let Ok(s) = std::fs::read_to_string(self.data(i).join("postmaster.pid")) {
                if let Some(pid) = s.lines().next() {
                    let _ = Command::new("kill").args(["-9", pid.trim()]).status();
                }
            }
        }
        for d in &self.disks {
            let _ = Command::new("umount").arg("-l").arg(d).status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_replicates_to_every_standby() {
    let c = Cluster::start(3, None, &[]);
    let leader = c.wait_healthy(3, Duration::from_secs(90)).await;
    c.write_via_proxy(
        "CREATE TABLE r (id int); INSERT INTO r VALUES (42)",
        Duration::from_secs(20),
    );
    // the write went to the lease holder
    assert_eq!(
        c.psql(c.pg_ports[leader], "select id from r").unwrap(),
        "42"
    );
    for i in (0..3).filter(|&i| i != leader) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match c.psql(
                c.pg_ports[i],
                "select pg_is_in_recovery(), (select id from r)",
            ) {
                Ok(s) if s == "t|42" => break,
                r if Instant::now() > deadline => panic!("standby n{i}: {r:?}"),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postmaster_crash_brings_writes_back_quickly() {
    let c = Cluster::start(3, None, &[]);
    let leader = c.wait_healthy(3, Duration::from_secs(90)).await;
    c.write_via_proxy("CREATE TABLE w (id int)", Duration::from_secs(20));
    c.kill_postmaster(leader);
    let took = c.write_via_proxy("INSERT INTO w VALUES (1)", Duration::from_secs(30));
    eprintln!("writes back {took:?} after kill -9 of the primary's postmaster");
    // back to three healthy members
    c.wait_healthy(3, Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_loss_fails_over_and_the_old_primary_rejoins_by_rewind() {
    let mut c = Cluster::start(3, None, &[]);
    let old = c.wait_healthy(3, Duration::from_secs(90)).await;
    c.write_via_proxy(
        "CREATE TABLE n (id int); INSERT INTO n VALUES (1)",
        Duration::from_secs(20),
    );
    // agent and postmaster of the primary die together
    c.lose_node(old);
    let took = c.write_via_proxy("INSERT INTO n VALUES (2)", Duration::from_secs(30));
    eprintln!("writes back {took:?} after losing the primary's node");
    let (leader, _) = c.snapshot().await.unwrap();
    let new = leader.expect("a new leader")[1..].parse::<usize>().unwrap();
    assert_ne!(new, old);
    // the node comes back: pg_rewind, then a standby of the new primary
    c.restart_agent(old);
    c.wait_healthy(3, Duration::from_secs(90)).await;
    assert_eq!(
        c.psql(
            c.pg_ports[old],
            "select pg_is_in_recovery(), count(*) from n"
        )
        .unwrap(),
        "t|2"
    );
    let log = std::fs::read_to_string(c.dir.path().join(format!("agent{old}.log"))).unwrap();
    assert!(
        log.contains("rewound with pg_rewind") || log.contains("re-cloned"),
        "{}",
        testkit_tail(&c.dir.path().join(format!("agent{old}.log")), 20)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_killed_and_restarted_catches_up() {
    let mut c = Cluster::start(2, None, &[]);
    let leader = c.wait_healthy(2, Duration::from_secs(90)).await;
    let standby = 1 - leader;
    c.write_via_proxy("CREATE TABLE s (id int)", Duration::from_secs(20));
    c.lose_node(standby);
    c.write_via_proxy(
        "INSERT INTO s SELECT generate_series(1, 1000)",
        Duration::from_secs(20),
    );
    c.restart_agent(standby);
    c.wait_healthy(2, Duration::from_secs(60)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while c
        .psql(c.pg_ports[standby], "select count(*) from s")
        .ok()
        .as_deref()
        != Some("1000")
    {
        assert!(Instant::now() < deadline, "standby did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nofailover_standby_is_never_promoted() {
    let mut c = Cluster::start(2, None, &["", "nofailover = true"]);
    // n0 is the only candidate; wait until it leads (n1 cannot bootstrap-lead? it can: force n0 first)
    let leader = c.wait_healthy(2, Duration::from_secs(90)).await;
    if leader == 1 {
        // n1 bootstrapped: lose it once so that n0 (eligible) takes over, then check the reverse
        c.lose_node(1);
        c.write_via_proxy("SELECT 1", Duration::from_secs(30));
        c.restart_agent(1);
        assert_eq!(c.wait_healthy(2, Duration::from_secs(90)).await, 0);
    }
    c.lose_node(0);
    tokio::time::sleep(Duration::from_secs(9)).await;
    let (leader, members) = c.snapshot().await.unwrap();
    assert_eq!(
        leader, None,
        "nofailover member took the lease: {members:?}"
    );
    assert_eq!(
        c.psql(c.pg_ports[1], "select pg_is_in_recovery()").unwrap(),
        "t"
    );
    let n1 = members.iter().find(|m| m.name == "n1").unwrap();
    assert!(n1.last_action.contains("nofailover"), "{}", n1.last_action);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_cluster_fails_over_and_a_primary_cut_off_from_etcd_demotes() {
    let etcd = Etcd::start();
    let mut c = Cluster::start(2, Some(etcd.url()), &[]);
    let leader = c.wait_healthy(2, Duration::from_secs(90)).await;
    c.write_via_proxy(
        "CREATE TABLE e (id int); INSERT INTO e VALUES (1)",
        Duration::from_secs(20),
    );
    // node loss on etcd
    c.lose_node(leader);
    c.write_via_proxy("INSERT INTO e VALUES (2)", Duration::from_secs(30));
    let new = 1 - leader;
    c.restart_agent(leader);
    assert_eq!(c.wait_healthy(2, Duration::from_secs(90)).await, new);
    // etcd goes away: the primary cannot renew and stops accepting writes
    drop(etcd);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = c.psql(c.pg_ports[new], "select pg_is_in_recovery()");
        if r.is_err() || r.as_deref() == Ok("t") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "primary kept accepting writes without the DCS: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synchronous_mode_loses_no_acknowledged_write() {
    let sync = "synchronous_mode = true";
    let mut c = Cluster::start(3, None, &[sync, sync, sync]);
    let leader = c.wait_healthy(3, Duration::from_secs(90)).await;
    c.wait_sync_standby(|_| true).await;
    c.write_via_proxy(
        "CREATE TABLE acked (seq int primary key)",
        Duration::from_secs(20),
    );
    let w = Writer::start(c.proxy_port);
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.lose_node(leader);
    c.write_via_proxy("SELECT 1", Duration::from_secs(30));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let acked = w.stop();
    assert!(acked.len() > 20, "too few writes: {}", acked.len());
    let lost = c.lost_writes(&acked).await;
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
}

/// The synchronous standby changes under a write loop (it is lost, the
/// leader makes the other standby synchronous), then the leader is lost:
/// the new synchronous standby is promoted with every acknowledged write.
/// The DCS key must never name the old standby once commits are
/// acknowledged by the new one only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synchronous_standby_change_under_writes_loses_nothing() {
    let sync = "synchronous_mode = true";
    let mut c = Cluster::start(3, None, &[sync, sync, sync]);
    let leader = c.wait_healthy(3, Duration::from_secs(90)).await;
    let first = c.wait_sync_standby(|_| true).await;
    c.write_via_proxy(
        "CREATE TABLE acked (seq int primary key)",
        Duration::from_secs(20),
    );
    let w = Writer::start(c.proxy_port);
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.lose_node(first);
    let second = c.wait_sync_standby(|s| s != first).await;
    assert_ne!(second, leader);
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.lose_node(leader);
    c.write_via_proxy("SELECT 1", Duration::from_secs(30));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let acked = w.stop();
    assert!(acked.len() > 20, "too few writes: {}", acked.len());
    let (leader_now, _) = c.snapshot().await.unwrap();
    assert_eq!(
        leader_now,
        Some(format!("n{second}")),
        "the synchronous standby took over"
    );
    let lost = c.lost_writes(&acked).await;
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
}

/// Quorum commit (`ANY 1` of both standbys): a standby is lost under a
/// write loop, the key narrows to the survivor (and never names a voter
/// set that could miss an acknowledged write), then the leader is lost:
/// the survivor, the one voter left, is promoted with every acknowledged
/// write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_mode_survives_a_standby_then_the_leader_lost_under_writes() {
    let q = "synchronous_mode = \"quorum\"\nsynchronous_node_count = 1";
    let mut c = Cluster::start(3, None, &[q, q, q]);
    let leader = c.wait_healthy(3, Duration::from_secs(90)).await;
    let both = c.wait_quorum(|v, q| v.len() == 2 && q == 1).await;
    assert!(!both.contains(&leader), "the leader is not its own voter");
    let names = c
        .psql(c.pg_ports[leader], "SHOW synchronous_standby_names")
        .unwrap();
    assert!(names.starts_with("ANY 1 ("), "{names}");
    c.write_via_proxy(
        "CREATE TABLE acked (seq int primary key)",
        Duration::from_secs(20),
    );
    let w = Writer::start(c.proxy_port);
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.lose_node(both[0]);
    let left = c.wait_quorum(|v, q| v.len() == 1 && q == 1).await;
    assert_eq!(left, vec![both[1]]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.lose_node(leader);
    c.write_via_proxy("SELECT 1", Duration::from_secs(30));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let acked = w.stop();
    assert!(acked.len() > 20, "too few writes: {}", acked.len());
    let (leader_now, _) = c.snapshot().await.unwrap();
    assert_eq!(
        leader_now,
        Some(format!("n{}", both[1])),
        "the last voter took over"
    );
    let lost = c.lost_writes(&acked).await;
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
}

/// A writer through the proxy, a fresh connection per write, that keeps
/// the sequence numbers whose INSERT was acknowledged.
struct Writer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<i64>>,
}

impl Writer {
    fn start(port: u16) -> Writer {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut acked = Vec::new();
            let mut seq = 0i64;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                seq += 1;
                let (ok, out, _) = testkit::psql(
                    port,
                    "postgres",
                    &format!("INSERT INTO acked VALUES ({seq}) RETURNING seq"),
                );
                if ok && out.trim() == seq.to_string() {
                    acked.push(seq);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            acked
        });
        Writer { stop, thread }
    }

    fn stop(self) -> Vec<i64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

impl Cluster {
    /// Waits until the DCS Sync key names a standby that `ok` accepts;
    /// returns its index.
    async fn wait_sync_standby(&self, ok: impl Fn(usize) -> bool) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let d = dcs::open(&self.dcs_url, "t").await.unwrap();
            let named = d
                .snapshot()
                .await
                .ok()
                .and_then(|s| s.get(dcs::Key::Sync).and_then(ha::sync::SyncKey::parse))
                .and_then(|k| k.sync_standby)
                .and_then(|n| n[1..].parse::<usize>().ok());
            if let Some(i) = named.filter(|i| ok(*i)) {
                return i;
            }
            assert!(
                Instant::now() < deadline,
                "no synchronous standby published: {named:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the quorum-mode Sync key has voters and a quorum that
    /// `ok` accepts; returns the voters' indexes.
    async fn wait_quorum(&self, ok: impl Fn(&[usize], u32) -> bool) -> Vec<usize> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let d = dcs::open(&self.dcs_url, "t").await.unwrap();
            let key = d
                .snapshot()
                .await
                .ok()
                .and_then(|s| s.get(dcs::Key::Sync).and_then(ha::sync::SyncKey::parse));
            if let Some(k) = &key {
                let voters: Vec<usize> = k
                    .voters
                    .iter()
                    .filter_map(|n| n[1..].parse().ok())
                    .collect();
                if ok(&voters, k.quorum) {
                    return voters;
                }
            }
            assert!(
                Instant::now() < deadline,
                "quorum key never as expected: {key:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Acknowledged writes missing on the leader now.
    async fn lost_writes(&self, acked: &[i64]) -> Vec<i64> {
        let (leader_now, _) = self.snapshot().await.unwrap();
        let new: usize = leader_now.unwrap()[1..].parse().unwrap();
        let present: std::collections::HashSet<i64> = self
            .psql(self.pg_ports[new], "select seq from acked")
            .unwrap()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        acked
            .iter()
            .copied()
            .filter(|s| !present.contains(s))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failsafe_mode_keeps_the_primary_when_only_etcd_is_gone() {
    let etcd = Etcd::start();
    let fs = "failsafe_mode = true";
    let c = Cluster::start(2, Some(etcd.url()), &[fs, fs]);
    let leader = c.wait_healthy(2, Duration::from_secs(90)).await;
    c.psql(c.pg_ports[leader], "CREATE TABLE f (id int)")
        .unwrap();
    // failsafe is in force once the leader lists its standby in the DCS
    let standby = format!("n{}", 1 - leader);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let d = dcs::open(&c.dcs_url, "t").await.unwrap();
        let key = d.snapshot().await.ok().and_then(|s| {
            s.get(dcs::Key::Failsafe)
                .and_then(ha::failsafe::FailsafeKey::parse)
        });
        if key.is_some_and(|k| k.lists(&standby)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no failsafe key listing {standby}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(etcd);
    // well past the 5 s TTL, the primary still takes writes: its standby confirms it follows it
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < Duration::from_secs(12) {
        c.psql(c.pg_ports[leader], "INSERT INTO f VALUES (1)")
            .unwrap_or_else(|e| panic!("write refused after {:?}: {e}", start.elapsed()));
        n += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(n > 20);
    assert_eq!(
        c.psql(c.pg_ports[leader], "select pg_is_in_recovery()")
            .unwrap(),
        "f"
    );
    assert_eq!(
        c.psql(c.pg_ports[1 - leader], "select pg_is_in_recovery()")
            .unwrap(),
        "t"
    );
}

impl Cluster {
    /// kill -9 of the agent and postmaster of node `i` (node loss).
    fn lose_node(&mut self, i: usize) {
        let pm = self.postmaster_pid(i);
        self.kill_agent(i);
        Command::new("kill")
            .args(["-9", &pm.to_string()])
            .status()
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_failovers_in_a_row_converge() {
    let mut c = Cluster::start(3, None, &[]);
    let mut leader = c.wait_healthy(3, Duration::from_secs(90)).await;
    c.write_via_proxy("CREATE TABLE ff (round int)", Duration::from_secs(20));
    for round in 1..=5 {
        c.lose_node(leader);
        // the lease moves first (a write may still land on a backend of
        // the killed postmaster that has not noticed yet; an agent back
        // within the TTL would rightly restart its primary in place)
        let deadline = Instant::now() + Duration::from_secs(30);
        while c.snapshot().await.and_then(|(l, _)| l) == Some(format!("n{leader}"))
            || c.snapshot().await.and_then(|(l, _)| l).is_none()
        {
            assert!(
                Instant::now() < deadline,
                "round {round}: no failover within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        c.write_via_proxy(
            &format!("INSERT INTO ff VALUES ({round})"),
            Duration::from_secs(30),
        );
        c.restart_agent(leader);
        let new = c.wait_healthy(3, Duration::from_secs(120)).await;
        assert_ne!(
            new, leader,
            "round {round}: the lost node is still the leader"
        );
        leader = new;
    }
    for i in 0..3 {
        let deadline = Instant::now() + Duration::from_secs(10);
        while c
            .psql(
                c.pg_ports[i],
                "select string_agg(round::text, ',' order by round) from ff",
            )
            .ok()
            .as_deref()
            != Some("1,2,3,4,5")
        {
            assert!(Instant::now() < deadline, "node n{i} misses rounds");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_cannot_be_rewound_is_recloned() {
    let mut c = Cluster::start(2, None, &[]);
    let old = c.wait_healthy(2, Duration::from_secs(90)).await;
    c.write_via_proxy(
        "CREATE TABLE rc (id int); INSERT INTO rc VALUES (1)",
        Duration::from_secs(20),
    );
    c.lose_node(old);
    c.write_via_proxy("INSERT INTO rc VALUES (2)", Duration::from_secs(30));
    // the old primary's WAL is gone: neither crash recovery nor pg_rewind can work
    let wal = c.data(old).join("pg_wal");
    for e in std::fs::read_dir(&wal).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::remove_file(p).unwrap();
        }
    }
    c.restart_agent(old);
    c.wait_healthy(2, Duration::from_secs(120)).await;
    assert_eq!(
        c.psql(
            c.pg_ports[old],
            "select pg_is_in_recovery(), count(*) from rc"
        )
        .unwrap(),
        "t|2"
    );
    let log = std::fs::read_to_string(c.dir.path().join(format!("agent{old}.log"))).unwrap();
    assert!(
        log.contains("re-cloned with pg_basebackup"),
        "{}",
        testkit_tail(&c.dir.path().join(format!("agent{old}.log")), 20)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_failover_when_every_candidate_lags_too_far() {
    let mut c = Cluster::start(3, None, &[]);
    let leader = c.wait_healthy(3, Duration::from_secs(90)).await;
    let lp = c.pg_ports[leader];
    c.psql(lp, "CREATE TABLE lag (v text)").unwrap();
    // cut replication off, then write well beyond maximum_lag_on_failover (1 MB)
    c.psql(lp, "ALTER ROLE replicator NOLOGIN").unwrap();
    c.psql(
        lp,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_replication",
    )
    .unwrap();
    c.psql(
        lp,
        "INSERT INTO lag SELECT repeat('x', 1000) FROM generate_series(1, 8000)",
    )
    .unwrap();
    // the leader publishes its position on its next loops
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.lose_node(leader);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (now, members) = c.snapshot().await.unwrap();
    assert_eq!(now, None, "a lagging standby was promoted: {members:?}");
    for m in members.iter().filter(|m| m.running) {
        assert!(
            m.last_action.contains("maximum_lag_on_failover"),
            "{}: {}",
            m.name,
            m.last_action
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postmaster_kill_without_restart_in_place_fails_over_and_rewinds() {
    let no_restart = "max_crash_restarts = 0";
    let c = Cluster::start(3, None, &[no_restart, no_restart, no_restart]);
    let old = c.wait_healthy(3, Duration::from_secs(90)).await;
    c.write_via_proxy(
        "CREATE TABLE k (id int); INSERT INTO k VALUES (1)",
        Duration::from_secs(20),
    );
    c.kill_postmaster(old);
    let took = c.write_via_proxy("INSERT INTO k VALUES (2)", Duration::from_secs(30));
    eprintln!("writes back {took:?} after kill -9 of the postmaster, with failover");
    let new = c.wait_healthy(3, Duration::from_secs(90)).await;
    assert_ne!(new, old, "the crashed primary was restarted in place");
    assert_eq!(
        c.psql(
            c.pg_ports[old],
            "select pg_is_in_recovery(), count(*) from k"
        )
        .unwrap(),
        "t|2"
    );
    let log = std::fs::read_to_string(c.dir.path().join(format!("agent{old}.log"))).unwrap();
    assert!(
        log.contains("rewound with pg_rewind"),
        "{}",
        testkit_tail(&c.dir.path().join(format!("agent{old}.log")), 20)
    );
    // the bootstrap created the replication and admin roles
    assert_eq!(c.psql(c.pg_ports[new], "select string_agg(rolname, ',' order by rolname) from pg_roles where rolname in ('replicator', 'pgwarden_admin')").unwrap(), "pgwarden_admin,replicator");
}

/// Sends `sig` to `pid` and to all its children (a postmaster and its
/// backends: `kill -STOP` of the whole PostgreSQL).
fn signal_tree(pid: u32, sig: &str) {
    let mut pids: Vec<String> = agent::fence::children_of(pid)
        .iter()
        .map(u32::to_string)
        .collect();
    pids.push(pid.to_string());
    Command::new("kill").arg(sig).args(&pids).status().unwrap();
}

/// Whether the PostgreSQL on `port` takes writes now: `Some(true)` when it
/// answers as a primary, `Some(false)` as a standby, `None` when it does
/// not answer within a second (stopped, dead).
async fn writable(port: u16) -> Option<bool> {
    let url = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=1");
    let work = async {
        let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .ok()?;
        tokio::spawn(conn);
        let r: bool = c
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .ok()?
            .get(0);
        Some(!r)
    };
    tokio::time::timeout(Duration::from_secs(1), work)
        .await
        .ok()
        .flatten()
}

/// `kill -STOP` of the primary's postmaster and all its backends, its agent
/// running on: the agent finds no answer, the node is fenced (SIGKILL) and
/// gives up the lease, a standby takes over, and when the stopped
/// processes would resume (SIGCONT) the old primary never takes a write;
/// it comes back as a standby by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_primary_is_fenced_and_replaced() {
    let c = Cluster::start(3, None, &[]);
    let old = c.wait_healthy(3, Duration::from_secs(90)).await;
    c.write_via_proxy("CREATE TABLE h (id int)", Duration::from_secs(20));
    let pm = c.postmaster_pid(old);
    signal_tree(pm, "-STOP");
    let took = c.write_via_proxy("INSERT INTO h VALUES (1)", Duration::from_secs(30));
    eprintln!("writes back {took:?} after kill -STOP of the primary's PostgreSQL");
    let (leader, _) = c.snapshot().await.unwrap();
    assert_ne!(
        leader.as_deref(),
        Some(format!("n{old}").as_str()),
        "a standby took over\n{}",
        c.logs(40)
    );
    signal_tree(pm, "-CONT");
    for _ in 0..20 {
        assert_ne!(
            writable(c.pg_ports[old]).await,
            Some(true),
            "the old primary takes writes after SIGCONT: two primaries"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.wait_healthy(3, Duration::from_secs(90)).await;
    assert_eq!(
        c.psql(
            c.pg_ports[old],
            "select pg_is_in_recovery(), count(*) from h"
        )
        .unwrap(),
        "t|1"
    );
}

/// `kill -STOP` of the primary's agent alone: its fence stops PostgreSQL
/// before the lease can expire (TTL 5 s), so there is no moment with two
/// writable primaries; when the agent resumes, the node rejoins as a
/// standby.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_agent_cannot_leave_its_primary_writable() {
    let c = Cluster::start(3, None, &[]);
    let old = c.wait_healthy(3, Duration::from_secs(90)).await;
    c.write_via_proxy("CREATE TABLE f (id int)", Duration::from_secs(20));
    let agent = c.agents[old].as_ref().unwrap().id();
    Command::new("kill")
        .args(["-STOP", &agent.to_string()])
        .status()
        .unwrap();
    let frozen = Instant::now();
    // the lease (TTL 5 s) may expire from 5 s on: from then the old
    // primary must never answer as a primary
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut other_primary_seen = false;
    while frozen.elapsed() < Duration::from_secs(15) {
        let old_writable = writable(c.pg_ports[old]).await;
        assert_ne!(
            old_writable,
            Some(true),
            "{:?} after its agent froze, the old primary still takes writes",
            frozen.elapsed()
        );
        for (i, p) in c.pg_ports.iter().enumerate() {
            if i != old && writable(*p).await == Some(true) {
                other_primary_seen = true;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(other_primary_seen, "a standby took over");
    c.write_via_proxy("INSERT INTO f VALUES (1)", Duration::from_secs(30));
    Command::new("kill")
        .args(["-CONT", &agent.to_string()])
        .status()
        .unwrap();
    c.wait_healthy(3, Duration::from_secs(90)).await;
    assert_eq!(
        c.psql(
            c.pg_ports[old],
            "select pg_is_in_recovery(), count(*) from f"
        )
        .unwrap(),
        "t|1"
    );
}

/// The primary's disk freezes (`fsfreeze`: every write blocks, reads from
/// memory still answer), as a stalled disk or I/O path would. Its agent's
/// write check finds commits hanging; the node is fenced and a standby
/// takes over; no acknowledged write is lost (synchronous mode); once the
/// disk thaws the old primary rejoins as a standby.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_whose_disk_freezes_is_replaced() {
    let sync = "synchronous_mode = true";
    let c = Cluster::start_on_disks(3, &[sync, sync, sync]);
    let leader = c.wait_healthy(3, Duration::from_secs(90)).await;
    c.wait_sync_standby(|_| true).await;
    c.write_via_proxy(
        "CREATE TABLE acked (seq int primary key)",
        Duration::from_secs(20),
    );
    let w = Writer::start(c.proxy_port);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let disk = c.disks[leader].clone();
    let frozen = Command::new("fsfreeze")
        .arg("-f")
        .arg(&disk)
        .status()
        .unwrap();
    assert!(frozen.success(), "fsfreeze -f {}", disk.display());
    // never left frozen: thawed after 30 s whatever happens here
    let thaw = {
        let disk = disk.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(30));
            let _ = Command::new("fsfreeze").arg("-u").arg(&disk).status();
        })
    };
    // each try within 3 s: a write routed to the frozen primary hangs
    let t0 = Instant::now();
    loop {
        let port = c.proxy_port.to_string();
        let ok = Command::new("timeout")
            .args([
                "3",
                "psql",
                "-X",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
            ])
            .args(["-d", "postgres", "-c", "INSERT INTO acked VALUES (-1)"])
            .env("PGCONNECT_TIMEOUT", "2")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        if ok {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(25),
            "no write through the proxy within 25 s\n{}",
            c.logs(25)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "writes back {:.1} s after the freeze",
        t0.elapsed().as_secs_f64()
    );
    if std::env::var_os("PGWARDEN_TEST_LOGS").is_some() {
        eprintln!("{}", c.logs(30));
    }
    let (leader_now, _) = c.snapshot().await.unwrap();
    assert_ne!(
        leader_now,
        Some(format!("n{leader}")),
        "a standby took over"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let acked = w.stop();
    let lost = c.lost_writes(&acked).await;
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    let _ = Command::new("fsfreeze").arg("-u").arg(&disk).status();
    thaw.join().unwrap();
    let new_leader = c.wait_healthy(3, Duration::from_secs(120)).await;
    assert_ne!(new_leader, leader, "the old primary came back as a standby");
}
