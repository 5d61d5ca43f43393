//! `pgwarden up`, the README's main job: a local cluster (agents, the
//! embedded DCS, PostgreSQL) with the proxy in front, run as the binary.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testkit::TempDir;

/// The `up` process, stopped (SIGINT, as Ctrl-C) and reaped on drop.
struct Up(Child);

impl Drop for Up {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_until(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// PIDs of the agent processes `up` started for `node_conf`.
fn agents_of(up: u32, node_conf: &Path) -> Vec<u32> {
    let conf = node_conf.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            ppid == Some(up) && cmd.contains(" agent ") && cmd.contains(&conf)
        })
        .collect()
}

/// The agent's REST health check answers 200.
fn agent_healthy(api: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(api) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200")
}

fn api_listen(node_conf: &Path) -> String {
    let text = std::fs::read_to_string(node_conf).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("api_listen = "))
        .expect("api_listen in the node's config")
        .trim_matches('"')
        .to_owned()
}

/// Starts `pgwarden up` with two nodes in `tmp` and waits for it to be up:
/// (the process, the cluster's directory, the proxy's port, its output file).
fn start_up(tmp: &TempDir) -> (Up, std::path::PathBuf, u16, std::path::PathBuf) {
    start_up_in(&tmp.path().join("cluster"), 2, &tmp.path().join("up.out"))
}

/// Starts `pgwarden up --nodes N --dir DIR`, its output in `log`, and waits
/// for it to be up.
fn start_up_in(
    dir: &Path,
    nodes: usize,
    log: &Path,
) -> (Up, std::path::PathBuf, u16, std::path::PathBuf) {
    let (dir, log) = (dir.to_path_buf(), log.to_path_buf());
    let port = testkit::free_port();
    let out = std::fs::File::create(&log).unwrap();
    let up = Up(Command::new(env!("CARGO_BIN_EXE_pgwarden"))
        .args([
            "up",
            "--nodes",
            &nodes.to_string(),
            "--port",
            &port.to_string(),
            "--dir",
        ])
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap());
    wait_until(Duration::from_secs(180), "cluster up", || {
        let out = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(!out.contains("did not come up"), "{out}");
        out.contains("pgwarden is up")
    });
    (up, dir, port, log)
}

/// `pgwarden up` brings up a cluster that takes writes through the proxy;
/// an agent that dies is restarted and its node is managed again; Ctrl-C
/// stops everything, a PostgreSQL whose agent could not be restarted too.
/// (One test: two `up`s at once would pick the same free ports.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_serves_through_the_proxy_and_restarts_a_dead_agent() {
    let tmp = TempDir::new("up");
    let (up, dir, port, log) = start_up(&tmp);
    let output = || std::fs::read_to_string(&log).unwrap_or_default();

    let url = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect through the proxy: {e}\n{}", output()));
    tokio::spawn(conn);
    c.batch_execute("CREATE TABLE up_t (id int)").await.unwrap();
    // (pg_is_in_recovery() is volatile: a query calling it goes to the
    // primary; inet_server_port() is stable)
    let primary: i32 = c
        .query_one(
            "INSERT INTO up_t VALUES (1) RETURNING inet_server_port()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let in_recovery: bool = c
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!in_recovery, "writes go to the primary");
    // reads are balanced (`up` turns it on, scope `cluster`): a read on
    // another connection, on a standby, sees the write
    let (c2, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let row = c2
            .query_one("SELECT count(*), inet_server_port() FROM up_t", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, i64>(0), 1, "a read sees the write before it");
        if row.get::<_, i32>(1) != primary {
            break;
        }
        // (the standbys get reads once the agents report them streaming)
        assert!(
            std::time::Instant::now() < deadline,
            "no read reached a standby\n{}",
            output()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // the banner names the dashboard, and it is served there
    wait_until(Duration::from_secs(10), "the dashboard's address", || {
        output().contains("dashboard: http://")
    });
    let out = output();
    let url = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("dashboard: http://"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_owned();
    let (addr, path) = url.split_once('/').unwrap();
    let page = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET /{path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut page = String::new();
        s.read_to_string(&mut page).unwrap();
        page
    };
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("<title>pgwarden</title>"), "{page}");

    // `pgwarden ctl` finds the agents and the token in the `up` directory
    // (as the current directory, or given with --dir)
    let ctl = |args: &[&str], cwd: &Path| {
        let o = Command::new(env!("CARGO_BIN_EXE_pgwarden"))
            .arg("ctl")
            .args(args)
            .current_dir(cwd)
            .env_remove("PGWARDEN_API")
            .env_remove("PGWARDEN_API_TOKEN")
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
        )
    };
    let (code, out) = ctl(&["list"], &dir);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("node0") && out.contains("Leader"), "{out}");
    // the proxy `up` runs registers itself in the DCS
    wait_until(Duration::from_secs(10), "the proxy in `ctl list`", || {
        let out = ctl(&["list"], &dir).1;
        out.contains("Proxies") && out.contains("serving")
    });
    let d = dir.to_string_lossy().into_owned();
    let (code, out) = ctl(&["--dir", &d, "pause"], tmp.path());
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = ctl(&["--dir", &d, "resume"], tmp.path());
    assert_eq!(code, Some(0), "{out}");

    // kill -9 the agent of node1: `up` starts a new one, which manages the
    // node again
    let conf = dir.join("node1.toml");
    let api = api_listen(&conf);
    let old = agents_of(up.0.id(), &conf);
    assert_eq!(old.len(), 1, "one agent for node1: {old:?}");
    assert!(agent_healthy(&api), "node1's agent answers before the kill");
    Command::new("kill")
        .args(["-KILL", &old[0].to_string()])
        .status()
        .unwrap();
    wait_until(Duration::from_secs(30), "agent restarted", || {
        let now = agents_of(up.0.id(), &conf);
        now.len() == 1 && now[0] != old[0] && agent_healthy(&api)
    });
    assert!(
        output().contains("the agent of node1 exited"),
        "{}",
        output()
    );
    c.batch_execute("INSERT INTO up_t VALUES (2)")
        .await
        .unwrap();
    assert_eq!(
        c.query_one("SELECT count(*) FROM up_t", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        2
    );
    drop(c);

    // an agent that cannot be restarted (its config broken) leaves its
    // PostgreSQL running, until Ctrl-C stops it with the rest
    let restarts = output().matches("the agent of node1 exited").count();
    std::fs::write(&conf, "this is not toml").unwrap();
    let now = agents_of(up.0.id(), &conf);
    Command::new("kill")
        .args(["-KILL", &now[0].to_string()])
        .status()
        .unwrap();
    wait_until(Duration::from_secs(30), "restart tried", || {
        output().matches("the agent of node1 exited").count() > restarts
    });
    let pidfile = dir.join("node1").join("postmaster.pid");
    assert!(
        pidfile.exists(),
        "node1's PostgreSQL runs on without its agent"
    );

    // Ctrl-C: `up` exits, and with it the agents and PostgreSQL
    let pid = up.0.id();
    drop(up);
    assert!(
        agents_of(pid, &dir.join("node0.toml")).is_empty() && agents_of(pid, &conf).is_empty(),
        "agents left running"
    );
    // (a primary left without its agent is stopped by its fence with
    // SIGKILL, which leaves postmaster.pid behind: the process counts)
    for node in ["node0", "node1"] {
        let pid = pg::postmaster_pid(&dir.join(node));
        assert!(
            !pid.is_some_and(pg::pid_alive),
            "{node}'s PostgreSQL still runs"
        );
    }
}

/// Runs `pgwarden up ARGS` to its end (at most `limit`): its exit status,
/// its output, and how long it took.
fn up_to_the_end(args: &[&str], limit: Duration) -> (std::process::ExitStatus, String, Duration) {
    let t = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgwarden"))
        .arg("up")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "`up {args:?}` still running after {limit:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = t.elapsed();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, text, took)
}

/// The node's data directory, from the node file `up` wrote.
fn data_dir_of(node_conf: &Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(node_conf).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("data_dir = "))
        .expect("data_dir in the node's config")
        .trim_matches('"')
        .into()
}

/// Removes a directory `up` put outside the test's temp dir, on drop.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A checkout in root's home: `--dir` below a 0700 directory of root's,
/// which the OS user `postgres` cannot enter. `up` keeps PostgreSQL's data
/// under /var/lib/pgwarden instead, changes no permission, and a query
/// through the proxy works. Options given again on the resumed directory
/// are refused with the reason, or applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_works_below_a_directory_postgres_cannot_enter() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = TempDir::new("up-home");
    let home = tmp.path().join("home");
    std::fs::create_dir(&home).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    let dir = home.join("pgwarden").join(".pgwarden");
    let log = tmp.path().join("up.out");
    let (up, dir, port, log) = start_up_in(&dir, 1, &log);
    let output = || std::fs::read_to_string(&log).unwrap_or_default();
    let data = data_dir_of(&dir.join("node0.toml"));
    let _cleanup = RemoveOnDrop(data.parent().unwrap().to_path_buf());
    let root =
        std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0);
    if root.unwrap_or(false) {
        assert!(
            data.starts_with("/var/lib/pgwarden/"),
            "data kept where postgres can reach it: {}",
            data.display()
        );
        assert!(output().contains("cannot enter"), "{}", output());
    }
    assert!(data.join("PG_VERSION").exists(), "{}", data.display());

    let url = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect through the proxy: {e}\n{}", output()));
    tokio::spawn(conn);
    c.batch_execute("CREATE TABLE home_t (id int)")
        .await
        .unwrap();
    let on_standby: bool = c
        .query_one(
            "INSERT INTO home_t VALUES (7) RETURNING pg_is_in_recovery()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!on_standby, "the write ran on the primary");
    let row = c.query_one("SELECT id FROM home_t", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 7);
    drop(c);
    drop(up);
    let mode = std::fs::metadata(&home).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o700, "the home directory's mode is unchanged");

    // resumed: options that cannot apply are refused at once, with the reason
    let d = dir.to_str().unwrap();
    for (args, why) in [
        (
            vec!["--os-user", "nobody"],
            "its data directories belong to that user",
        ),
        (
            vec!["--dcs", "etcd://127.0.0.1:1"],
            "its state lives in that DCS",
        ),
        (vec!["--nodes", "0"], "--nodes must be between 1 and 9"),
    ] {
        let mut a = vec!["--dir", d];
        a.extend(&args);
        let (st, out, _) = up_to_the_end(&a, Duration::from_secs(10));
        assert!(!st.success() && out.contains(why), "{args:?}: {out}");
    }
    // the same values are accepted; a new --port is applied (and, taken
    // here by another program, then refused before any agent starts)
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let new_port = taken.local_addr().unwrap().port().to_string();
    let args = [
        "--dir",
        d,
        "--nodes",
        "1",
        "--os-user",
        "postgres",
        "--port",
        &new_port,
    ];
    let (st, out, _) = up_to_the_end(&args, Duration::from_secs(10));
    assert!(!st.success() && out.contains("in use"), "{out}");
    assert!(
        out.contains(&format!("now listens on port {new_port}")),
        "--port is applied: {out}"
    );
    let proxy_conf = std::fs::read_to_string(dir.join("proxy.toml")).unwrap();
    assert!(
        proxy_conf.contains(&format!("listen = \"127.0.0.1:{new_port}\"")),
        "{proxy_conf}"
    );
}

/// A port in use is reported within seconds, with the port and the log
/// to read: the proxy's before any agent starts, a node's by its agent.
#[test]
fn a_port_in_use_is_reported_at_once() {
    let tmp = TempDir::new("up-port");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();

    let dir = tmp.path().join("proxy-port");
    let args = [
        "--nodes",
        "1",
        "--port",
        &port,
        "--dir",
        dir.to_str().unwrap(),
    ];
    let (st, out, took) = up_to_the_end(&args, Duration::from_secs(10));
    assert!(!st.success(), "{out}");
    assert!(
        out.contains(&format!(":{port}")) && out.contains("in use"),
        "{out}"
    );
    assert!(
        !dir.join("logs/agent0.log").exists(),
        "no agent was started: {out}"
    );
    eprintln!("proxy port in use reported after {took:?}");

    let dir = tmp.path().join("pg-port");
    let free = testkit::free_port().to_string();
    let args = [
        "--nodes",
        "1",
        "--port",
        &free,
        "--pg-port",
        &port,
        "--dir",
        dir.to_str().unwrap(),
    ];
    let (st, out, took) = up_to_the_end(&args, Duration::from_secs(10));
    assert!(!st.success(), "{out}");
    assert!(
        out.contains(&format!("port {port} on 127.0.0.1 is already in use")),
        "{out}"
    );
    assert!(out.contains("agent0.log"), "names the log: {out}");
    eprintln!("PostgreSQL port in use reported after {took:?}");

    // files of somebody's where a node's data would go are left alone
    let dir = tmp.path().join("taken-data");
    std::fs::create_dir_all(dir.join("node0")).unwrap();
    std::fs::write(dir.join("node0/notes.txt"), "mine").unwrap();
    let args = [
        "--nodes",
        "1",
        "--port",
        &free,
        "--dir",
        dir.to_str().unwrap(),
    ];
    let (st, out, _) = up_to_the_end(&args, Duration::from_secs(10));
    assert!(
        !st.success() && out.contains("already holds files"),
        "{out}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("node0/notes.txt")).unwrap(),
        "mine"
    );
}
