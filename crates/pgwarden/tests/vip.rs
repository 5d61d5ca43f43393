//! The proxies' virtual IP in network namespaces: three proxy hosts and a
//! client host on one bridge, etcd and PostgreSQL in the root namespace.
//! The database side is one real PostgreSQL server whose member key and
//! leader lease the test publishes in etcd as its agent would; the proxies
//! are real `pgwarden proxy` processes, each in its own namespace.
//!
//! Checked throughout, from inside each proxy namespace (`ip addr`) and
//! from the client host (ARP requests for the address, counting the MACs
//! that answer): never two holders at once. Scenarios: kill -9 of the
//! holder, freeze (SIGSTOP) of the holder cut from the DCS, a holder that
//! cannot reach the primary, the holder's guard process hung up on and
//! killed, a clean shutdown of the holder.
//!
//! `vip_failover_bench` (ignored; `./x bench-vip`) prints the time from
//! the holder's death to the first query through the address.
#[path = "vip/net.rs"]
mod net;

use std::os::fd::AsRawFd;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dcs::Dcs;
use ha::proxy::{ProxyState, VIP_LEASE};
use net::Net;
use testkit::{Etcd, PgServer, TempDir};

const PROXIES: [&str; 3] = ["p1", "p2", "p3"];
const TTL: Duration = Duration::from_secs(5);

/// Runs `f` on a thread of its own inside namespace `ns`.
fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(ns);
            f()
        })
        .join()
        .expect("thread in namespace")
    })
}

/// A runtime for the calling thread (the test is synchronous; each
/// thread in a namespace runs its own).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Moves the calling thread into network namespace `ns`.
fn enter(ns: &str) {
    let f = std::fs::File::open(format!("/run/netns/{ns}")).expect("namespace file");
    // SAFETY: setns on a valid namespace descriptor affects only this thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

struct Rig {
    // dropped in this order: proxies first, the network last
    proxies: Vec<Option<Child>>,
    agent_stop: Arc<AtomicBool>,
    agent: Option<std::thread::JoinHandle<()>>,
    pg: PgServer,
    etcd: Etcd,
    dir: TempDir,
    net: Net,
    vip: String,
}

impl Rig {
    fn start() -> Rig {
        let net = Net::create(&["p1", "p2", "p3", "cl"]);
        let etcd = Etcd::start_on(&net.root_ip());
        let pg = PgServer::primary_with(&format!("listen_addresses = '127.0.0.1,{}'", net.db_ip()));
        pg.inst
            .write_hba(&format!(
                "{}host all all 10.231.0.0/16 trust\n",
                testkit::TEST_HBA
            ))
            .unwrap();
        pg.sql("postgres", "SELECT pg_reload_conf()");
        let vip = format!("10.231.{}.100", net.octet);
        let mut r = Rig {
            proxies: Vec::new(),
            agent_stop: Arc::new(AtomicBool::new(false)),
            agent: None,
            pg,
            etcd,
            dir: TempDir::new("vip"),
            net,
            vip,
        };
        r.agent = Some(r.spawn_agent());
        for p in PROXIES {
            let c = r.spawn_proxy(p);
            r.proxies.push(Some(c));
        }
        r
    }

    /// Publishes the server's member key and holds the leader lease, as
    /// its agent would.
    fn spawn_agent(&self) -> std::thread::JoinHandle<()> {
        let (url, stop) = (self.etcd.url(), self.agent_stop.clone());
        let member = ha::Member {
            name: "pg1".into(),
            host: self.net.db_ip(),
            port: self.pg.port,
            api_url: String::new(),
            role: ha::Role::Primary,
            running: true,
            timeline: 1,
            lsn: 0,
            replayed_lsn: 0,
            streaming: false,
            lag: None,
            nofailover: false,
            priority: 0,
            pending_restart: false,
            last_action: "held by the test".into(),
        };
        std::thread::spawn(move || {
            let rt = runtime();
            rt.block_on(async {
                let d = dcs::open(&url, "vip").await.expect("etcd");
                while !stop.load(Ordering::Relaxed) {
                    let ttl = Duration::from_secs(10);
                    let _ = d.put_member("pg1", &member.to_json(), ttl).await;
                    let _ = d.take_leader("pg1", ttl).await;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            })
        })
    }

    fn spawn_proxy(&self, name: &str) -> Child {
        let cfg = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[proxy]\nlisten = \"0.0.0.0:6432\"\ndcs = \"{}\"\ncluster = \"vip\"\nname = \"{name}\"\n\
                 health_check_period = \"200ms\"\nhba = [\"host all all 10.231.0.0/16 trust\"]\n\
                 admin_users = [\"postgres\"]\n\n[proxy.vip]\naddress = \"{}/24\"\ninterface = \"eth0\"\n",
                self.etcd.url(),
                self.vip
            ),
        )
        .unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{name}.log")))
            .unwrap();
        self.net
            .command(name, env!("CARGO_BIN_EXE_pgwarden"))
            .args(["--log", "info", "proxy", "-c"])
            .arg(&cfg)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start a proxy")
    }

    fn pid(&self, name: &str) -> u32 {
        self.proxies[index(name)].as_ref().expect("running").id()
    }

    /// The PID of proxy `name`'s guard process.
    fn guard_pid(&self, name: &str) -> u32 {
        self.guard_pid_opt(name)
            .unwrap_or_else(|| panic!("no guard process under {name}"))
    }

    fn guard_pid_opt(&self, name: &str) -> Option<u32> {
        let o = Command::new("pgrep")
            .args(["-P", &self.pid(name).to_string(), "-f", "vip-guard"])
            .output()
            .ok()?;
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
    }

    fn signal(&self, name: &str, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid(name).to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {name}");
    }

    /// The proxy hosts that have the address on their interface now.
    fn holders(&self) -> Vec<&'static str> {
        PROXIES
            .into_iter()
            .filter(|p| self.net.has_addr(p, &self.vip))
            .collect()
    }

    /// Waits for exactly one holder other than `not`.
    fn wait_holder(&self, not: Option<&str>, limit: Duration) -> &'static str {
        let end = Instant::now() + limit;
        loop {
            let h = self.holders();
            if h.len() == 1 && Some(h[0]) != not {
                return h[0];
            }
            assert!(
                Instant::now() < end,
                "no single new holder within {limit:?} (holders {h:?}); logs in {}",
                self.dir.path().display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One query through the virtual IP from the client host.
    fn query(&self, sql: &str) -> Result<Vec<tokio_postgres::SimpleQueryMessage>, String> {
        let conn = format!("host={} port=6432 user=postgres dbname=postgres", self.vip);
        in_ns(&self.net.ns("cl"), || {
            let rt = runtime();
            rt.block_on(async {
                let (c, conn) = tokio::time::timeout(
                    Duration::from_millis(500),
                    tokio_postgres::connect(&conn, tokio_postgres::NoTls),
                )
                .await
                .map_err(|_| "connect timed out".to_owned())?
                .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                tokio::time::timeout(Duration::from_secs(2), c.simple_query(sql))
                    .await
                    .map_err(|_| "query timed out".to_owned())?
                    .map_err(|e| e.to_string())
            })
        })
    }

    /// Retries `SELECT 1` through the address until it works.
    fn wait_query(&self, limit: Duration) -> Instant {
        let end = Instant::now() + limit;
        loop {
            match self.query("SELECT 1") {
                Ok(_) => return Instant::now(),
                Err(e) => assert!(Instant::now() < end, "no query through the VIP: {e}"),
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SHOW WATCHDOG on the admin console through the virtual IP.
    fn show_watchdog(&self) -> Vec<Vec<String>> {
        let conn = format!("host={} port=6432 user=postgres dbname=pgwarden", self.vip);
        in_ns(&self.net.ns("cl"), || {
            let rt = runtime();
            rt.block_on(async {
                let limit = Duration::from_secs(5);
                let (c, conn) = tokio::time::timeout(
                    limit,
                    tokio_postgres::connect(&conn, tokio_postgres::NoTls),
                )
                .await
                .expect("admin console through the VIP in time")
                .expect("admin console through the VIP");
                tokio::spawn(conn);
                tokio::time::timeout(limit, c.simple_query("SHOW WATCHDOG"))
                    .await
                    .expect("SHOW WATCHDOG in time")
                    .unwrap()
                    .into_iter()
                    .filter_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                            (0..row.len())
                                .map(|i| row.get(i).unwrap_or("").to_owned())
                                .collect(),
                        ),
                        _ => None,
                    })
                    .collect()
            })
        })
    }

    fn snapshot(&self) -> dcs::Snapshot {
        let url = self.etcd.url();
        let rt = runtime();
        rt.block_on(async {
            let d = dcs::open(&url, "vip").await.expect("etcd");
            d.snapshot().await.expect("snapshot")
        })
    }

    fn proxy_state(&self, name: &str) -> Option<ProxyState> {
        self.snapshot()
            .proxies
            .get(name)
            .and_then(|v| ha::proxy::ProxyRecord::from_json(v))
            .map(|r| r.state)
    }

    fn wait_state(&self, name: &str, want: ProxyState, limit: Duration) {
        let end = Instant::now() + limit;
        while self.proxy_state(name) != Some(want) {
            assert!(
                Instant::now() < end,
                "{name} not {want:?} within {limit:?}: {:?}",
                self.proxy_state(name)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn restart(&mut self, name: &str) {
        if let Some(mut c) = self.proxies[index(name)].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let c = self.spawn_proxy(name);
        self.proxies[index(name)] = Some(c);
    }

    /// Kills the holder and measures until a query through the address
    /// works again; the killed proxy is started again and stands by.
    fn kill_holder(&mut self) -> (Duration, &'static str, &'static str) {
        let old = self.wait_holder(None, Duration::from_secs(20));
        let t0 = Instant::now();
        self.signal(old, "-KILL");
        let t1 = self.wait_query(TTL * 3);
        let new = self.wait_holder(Some(old), Duration::from_secs(1));
        self.restart(old);
        self.wait_state(old, ProxyState::Standby, Duration::from_secs(15));
        (t1 - t0, old, new)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.agent_stop.store(true, Ordering::Relaxed);
        for c in self.proxies.iter_mut().flatten() {
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(a) = self.agent.take() {
            let _ = a.join();
        }
        // the guards end when their proxy does; give them a moment
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn index(name: &str) -> usize {
    PROXIES.iter().position(|p| *p == name).expect("a proxy")
}

/// Watches for two holders at once, from the namespaces and by ARP from
/// the client host, until stopped.
struct Monitor {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    samples: Arc<AtomicUsize>,
    probes: Arc<AtomicUsize>,
    double: Arc<Mutex<Vec<String>>>,
}

impl Monitor {
    fn start(r: &Rig) -> Monitor {
        let m = Monitor {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            samples: Arc::new(AtomicUsize::new(0)),
            probes: Arc::new(AtomicUsize::new(0)),
            double: Arc::new(Mutex::new(Vec::new())),
        };
        let mut threads = Vec::new();
        {
            let (stop, samples, double) = (m.stop.clone(), m.samples.clone(), m.double.clone());
            let (nss, vip) = (PROXIES.map(|p| (p, r.net.ns(p))), r.vip.clone());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let held: Vec<&str> = nss
                        .iter()
                        .filter(|(_, ns)| {
                            Command::new("ip")
                                .args(["-n", ns, "-o", "addr", "show", "dev", "eth0"])
                                .output()
                                .is_ok_and(|o| {
                                    String::from_utf8_lossy(&o.stdout)
                                        .contains(&format!("inet {vip}/"))
                                })
                        })
                        .map(|(p, _)| *p)
                        .collect();
                    samples.fetch_add(1, Ordering::Relaxed);
                    if held.len() > 1 {
                        double.lock().unwrap().push(format!("namespaces: {held:?}"));
                    }
                    std::thread::sleep(Duration::from_millis(30));
                }
            }));
        }
        {
            let (stop, probes, double) = (m.stop.clone(), m.probes.clone(), m.double.clone());
            let ns = r.net.ns("cl");
            let (ifindex, mac) = r.net.link("cl");
            let me: std::net::Ipv4Addr = r.net.ip_of("cl").parse().unwrap();
            let vip: std::net::Ipv4Addr = r.vip.parse().unwrap();
            threads.push(std::thread::spawn(move || {
                enter(&ns);
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(macs) =
                        watchdog::arp::probe(ifindex, mac, me, vip, Duration::from_millis(100))
                    {
                        probes.fetch_add(1, Ordering::Relaxed);
                        if macs.len() > 1 {
                            let macs: Vec<String> =
                                macs.iter().map(watchdog::arp::mac_string).collect();
                            double
                                .lock()
                                .unwrap()
                                .push(format!("ARP replies from {macs:?}"));
                        }
                    }
                }
            }));
        }
        Monitor { threads, ..m }
    }

    /// Stops watching; what it saw.
    fn finish(self) -> (usize, usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let d = self.double.lock().unwrap().clone();
        (
            self.samples.load(Ordering::Relaxed),
            self.probes.load(Ordering::Relaxed),
            d,
        )
    }
}

#[test]
fn one_proxy_holds_the_virtual_ip_and_it_moves_when_the_holder_fails() {
    let mut r = Rig::start();
    let first = r.wait_holder(None, Duration::from_secs(20));
    let mon = Monitor::start(&r);
    r.wait_query(Duration::from_secs(10));

    // Registered and visible: the DCS, and SHOW WATCHDOG through the VIP.
    for p in PROXIES {
        let want = if p == first {
            ProxyState::Holder
        } else {
            ProxyState::Standby
        };
        r.wait_state(p, want, Duration::from_secs(10));
    }
    let snap = r.snapshot();
    let holder = snap.leases.get(VIP_LEASE).map(|l| l.name.clone());
    assert!(
        holder
            .as_deref()
            .is_some_and(|h| h.starts_with(&format!("{first}."))),
        "the lease holder ({holder:?}, name.instance) has the address ({first})"
    );
    // The view refreshes every round (200 ms), the health checks every
    // 200 ms: the holder soon lists all three, each reaching the primary.
    let end = Instant::now() + Duration::from_secs(5);
    let rows = loop {
        let rows = r.show_watchdog();
        let ready = rows.len() == 3 && rows.iter().all(|r| r[7] == "true");
        if ready || Instant::now() > end {
            break rows;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(rows.len(), 3, "SHOW WATCHDOG lists three proxies: {rows:?}");
    for row in &rows {
        // name, listen, state, vip, holds_vip, clients, primary, reachable, this
        assert_eq!(row[4] == "true", row[0] == first, "{row:?}");
        assert_eq!(
            row[8] == "true",
            row[0] == first,
            "answered by the holder: {row:?}"
        );
        assert_eq!(row[7], "true", "{row:?}");
    }

    // 1. kill -9 of the holder: another takes the address, the killed
    // one comes back as a standby.
    let (took, old, new) = r.kill_holder();
    assert_ne!(old, new);
    eprintln!("kill -9 {old}: queries through the VIP again after {took:?}, on {new}");

    // 2. The holder frozen and cut from the DCS: its guard takes the
    // address down before its lease can expire, another proxy takes it;
    // thawed and reconnected, it stands by.
    let frozen = r.wait_holder(None, Duration::from_secs(5));
    r.net.cut(frozen, &r.net.root_ip());
    r.signal(frozen, "-STOP");
    let next = r.wait_holder(Some(frozen), TTL * 3);
    r.wait_query(Duration::from_secs(5));
    r.net.heal(frozen, &r.net.root_ip());
    r.signal(frozen, "-CONT");
    r.wait_state(frozen, ProxyState::Standby, Duration::from_secs(15));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(r.holders(), vec![next], "the thawed proxy stands by");

    // 3. The holder cannot reach the primary while the others can: it
    // gives the address up.
    let cut = next;
    r.net.cut(cut, &r.net.db_ip());
    r.wait_holder(Some(cut), TTL * 3);
    r.wait_state(cut, ProxyState::DataPathDown, Duration::from_secs(10));
    r.wait_query(Duration::from_secs(5));
    r.net.heal(cut, &r.net.db_ip());
    r.wait_state(cut, ProxyState::Standby, Duration::from_secs(10));

    // 4. The holder's guard: a hangup does not end it; killed, it leaves
    // the address on the interface, which the proxy's next guard clears
    // before the lease goes to anyone.
    let holder = r.wait_holder(None, Duration::from_secs(5));
    let guard = r.guard_pid(holder);
    assert!(Command::new("kill")
        .args(["-HUP", &guard.to_string()])
        .status()
        .unwrap()
        .success());
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        std::path::Path::new(&format!("/proc/{guard}")).exists(),
        "the guard survives SIGHUP"
    );
    assert_eq!(r.holders(), vec![holder], "and keeps the address");
    assert!(Command::new("kill")
        .args(["-KILL", &guard.to_string()])
        .status()
        .unwrap()
        .success());
    let end = Instant::now() + Duration::from_secs(10);
    while r.guard_pid_opt(holder).is_none_or(|g| g == guard) {
        assert!(Instant::now() < end, "no new guard under {holder}");
        std::thread::sleep(Duration::from_millis(50));
    }
    r.wait_holder(None, TTL * 3);
    r.wait_query(Duration::from_secs(5));

    // 5. A clean shutdown: the address moves at once, well before the
    // lease could have expired (TTL minus the guard's margin, 4 s).
    let moved = r.wait_holder(None, Duration::from_secs(5));
    let t0 = Instant::now();
    r.signal(moved, "-TERM");
    let after = r.wait_holder(Some(moved), TTL);
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "the address took {took:?} to move from {moved} to {after} after a clean shutdown"
    );
    let c = r.proxies[index(moved)].as_mut().unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    while c.try_wait().unwrap().is_none() {
        assert!(Instant::now() < end, "{moved} did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    r.wait_query(Duration::from_secs(5));

    let (samples, probes, double) = mon.finish();
    assert!(
        samples > 50 && probes > 50,
        "the monitor ran: {samples} samples, {probes} ARP probes"
    );
    assert!(double.is_empty(), "two holders at once: {double:?}");
    eprintln!("no two holders in {samples} namespace samples and {probes} ARP probes");
}

/// `./x bench-vip`: the time from kill -9 of the holder to the first
/// query through the virtual IP, over PGWARDEN_VIP_RUNS runs (default 5).
#[test]
#[ignore]
fn vip_failover_bench() {
    let runs: usize = std::env::var("PGWARDEN_VIP_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let mut r = Rig::start();
    r.wait_holder(None, Duration::from_secs(20));
    r.wait_query(Duration::from_secs(10));
    let mut times = Vec::new();
    for i in 0..runs {
        let (took, old, new) = r.kill_holder();
        println!(
            "run {}: kill -9 {old} -> first query through the VIP after {:.2} s (now on {new})",
            i + 1,
            took.as_secs_f64()
        );
        times.push(took);
    }
    times.sort();
    let median = times[times.len() / 2];
    let max = times[times.len() - 1];
    println!(
        "\nvirtual IP failover, {runs} runs, lease TTL {:.0} s: median {:.2} s, max {:.2} s (target: at most TTL + 1 s = {:.0} s)",
        TTL.as_secs_f64(),
        median.as_secs_f64(),
        max.as_secs_f64(),
        TTL.as_secs_f64() + 1.0
    );
    println!("Pgpool-II's watchdog, sample configuration: a dead peer is declared after wd_heartbeat_deadtime = 30 s");
}
