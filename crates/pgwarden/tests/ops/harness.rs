//! A whole cluster for the operations tests: agents and the proxy as
//! separate `pgwarden` processes over real PostgreSQL servers on the local
//! DCS, every agent with the API token; helpers to reach their APIs.
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dcs::Dcs;
use testkit::{free_port, TempDir};

pub const BIN: &str = env!("CARGO_BIN_EXE_pgwarden");
pub const TOKEN: &str = "test-token-0123456789abcdef";

pub struct Cluster {
    pub dir: TempDir,
    pub dcs_url: String,
    pub agents: Vec<Option<Child>>,
    pub pg_ports: Vec<u16>,
    pub api_ports: Vec<u16>,
    pub proxy: Option<Child>,
    pub proxy_port: u16,
}

impl Cluster {
    pub fn start(n: usize, extra: &str) -> Cluster {
        let dir = TempDir::new("ops");
        let dcs_url = format!("local://{}", dir.path().join("dcs").display());
        let pg_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let api_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        for i in 0..n {
            let conf = format!(
                "[agent]\nname = \"n{i}\"\ncluster = \"t\"\ndcs = \"{dcs_url}\"\ndata_dir = \"{}\"\nrun_dir = \"{}\"\n\
                 pg_port = {}\napi_listen = \"127.0.0.1:{}\"\napi_token = \"{TOKEN}\"\n{extra}\n",
                dir.path().join(format!("n{i}")).display(),
                dir.path().join(format!("n{i}.run")).display(),
                pg_ports[i],
                api_ports[i],
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
            api_ports,
            proxy: None,
            proxy_port,
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

    pub fn log(&self, name: &str) -> std::fs::File {
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

    pub fn data(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("n{i}"))
    }

    /// The REST API of node `i`, with the token.
    pub fn api(&self, i: usize) -> ctl::Client {
        ctl::Client::new(
            &format!("127.0.0.1:{}", self.api_ports[i]),
            Some(TOKEN.into()),
            Duration::from_secs(100),
        )
    }

    /// The same, without a token.
    pub fn api_anonymous(&self, i: usize) -> ctl::Client {
        ctl::Client::new(
            &format!("127.0.0.1:{}", self.api_ports[i]),
            None,
            Duration::from_secs(10),
        )
    }

    pub async fn snapshot(&self) -> Option<(Option<String>, Vec<ha::Member>)> {
        let d = dcs::open(&self.dcs_url, "t").await.ok()?;
        let s = d.snapshot().await.ok()?;
        let members = s
            .members
            .values()
            .filter_map(|v| ha::Member::from_json(v))
            .collect();
        Some((s.leader.map(|l| l.name), members))
    }

    pub async fn dcs_key(&self, k: dcs::Key) -> Option<String> {
        let d = dcs::open(&self.dcs_url, "t").await.ok()?;
        d.snapshot().await.ok()?.get(k).map(str::to_owned)
    }

    /// Waits until `n` members run: one primary holding the lease and the
    /// others streaming on its timeline. Returns the leader's index.
    pub async fn wait_healthy(&self, n: usize, limit: Duration) -> usize {
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
                panic!(
                    "cluster not healthy with {n} members after {limit:?}: {:?}\n{}",
                    self.snapshot().await,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn logs(&self) -> String {
        (0..self.agents.len())
            .map(|i| {
                format!(
                    "--- agent{i}\n{}\n",
                    tail(&self.dir.path().join(format!("agent{i}.log")), 25),
                )
            })
            .collect()
    }

    pub fn psql(&self, port: u16, sql: &str) -> Result<String, String> {
        let (ok, out, err) = testkit::psql(port, "postgres", sql);
        if ok {
            Ok(out.trim().to_owned())
        } else {
            Err(err)
        }
    }

    /// Retries a statement through `port` until it succeeds.
    pub fn sql_retry(&self, port: u16, sql: &str, limit: Duration) -> String {
        let start = Instant::now();
        loop {
            match self.psql(port, sql) {
                Ok(out) => return out,
                Err(e) if start.elapsed() > limit => {
                    panic!("{sql:?} through port {port} failed for {limit:?}: {e}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn postmaster_pid(&self, i: usize) -> Option<u32> {
        std::fs::read_to_string(self.data(i).join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// kill -9 of the agent and postmaster of node `i` (node loss).
    pub fn lose_node(&mut self, i: usize) {
        let pm = self.postmaster_pid(i);
        if let Some(mut a) = self.agents[i].take() {
            let _ = a.kill();
            let _ = a.wait();
        }
        if let Some(pm) = pm {
            let _ = Command::new("kill").args(["-9", &pm.to_string()]).status();
        }
    }
}

pub fn tail(p: &std::path::Path, n: usize) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let l: Vec<&str> = s.lines().collect();
    l[l.len().saturating_sub(n)..].join("\n")
}

impl Drop for Cluster {
    fn drop(&mut self) {
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
        for i in 0..self.pg_ports.len() {
            if let Some(pid) = self.postmaster_pid(i) {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
    }
}

/// A real haproxy (Debian's package) with a configuration written for
/// Patroni: a primary port checked with `OPTIONS /primary` and a replica
/// port checked with `OPTIONS /replica`. Stopped on drop.
pub struct Haproxy {
    child: Child,
    pub primary_port: u16,
    pub replica_port: u16,
}

impl Haproxy {
    pub fn start(c: &Cluster) -> Haproxy {
        let (primary_port, replica_port) = (free_port(), free_port());
        let servers = |check_path: &str| {
            let mut s = format!(
                "  option httpchk OPTIONS {check_path}\n  http-check expect status 200\n  \
                 default-server inter 1s fall 2 rise 1 on-marked-down shutdown-sessions\n"
            );
            for (i, (pg, api)) in c.pg_ports.iter().zip(&c.api_ports).enumerate() {
                s.push_str(&format!(
                    "  server n{i} 127.0.0.1:{pg} maxconn 100 check port {api}\n"
                ));
            }
            s
        };
        let cfg = format!(
            "global\n  maxconn 200\ndefaults\n  mode tcp\n  retries 2\n  timeout client 30m\n  \
             timeout connect 4s\n  timeout server 30m\n  timeout check 5s\n\
             listen primary\n  bind 127.0.0.1:{primary_port}\n{}\
             listen replicas\n  bind 127.0.0.1:{replica_port}\n  balance roundrobin\n{}",
            servers("/primary"),
            servers("/replica")
        );
        let path = c.dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let check = Command::new("haproxy")
            .arg("-c")
            .arg("-f")
            .arg(&path)
            .output()
            .expect("haproxy is installed (apt-get install haproxy)");
        assert!(
            check.status.success(),
            "haproxy -c: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(c.log("haproxy"))
            .spawn()
            .unwrap();
        Haproxy {
            child,
            primary_port,
            replica_port,
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
