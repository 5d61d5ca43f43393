//! The operations surface against real clusters: the agents' REST API
//! (health endpoints behind a real haproxy, state, operations and their
//! refusals), switchover under writes, and `pgwarden ctl`.
#[path = "ops/harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use harness::{Cluster, Haproxy};

/// `select pg_is_in_recovery(), current_setting('port')` through `port`.
fn where_am_i(c: &Cluster, port: u16) -> Result<(bool, u16), String> {
    let out = c.psql(port, "select pg_is_in_recovery(), current_setting('port')")?;
    let (r, p) = out.split_once('|').ok_or(out.clone())?;
    Ok((r == "t", p.parse().map_err(|_| out.clone())?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_with_a_patroni_config_follows_the_primary_through_a_failover() {
    let mut c = Cluster::start(3, "");
    let leader = c.wait_healthy(3, Duration::from_secs(90)).await;
    let hap = Haproxy::start(&c);

    // the health endpoints' codes on the leader and a standby
    let standby = (leader + 1) % 3;
    for (path, on_leader, on_standby) in [
        ("/primary", 200, 503),
        ("/leader", 200, 503),
        ("/replica", 503, 200),
        ("/replica?lag=1MB", 503, 200),
        ("/read-only", 200, 200),
        ("/async", 503, 200),
        ("/sync", 503, 503),
        ("/health", 200, 200),
        ("/liveness", 200, 200),
        ("/readiness", 200, 200),
    ] {
        for (i, want) in [(leader, on_leader), (standby, on_standby)] {
            for method in ["GET", "OPTIONS", "HEAD"] {
                let r = c.api_anonymous(i).send(method, path, None).await.unwrap();
                assert_eq!(r.status, want, "{method} {path} on n{i}: {:?}", r.body);
            }
        }
    }
    // a malformed lag is the caller's mistake, named
    let r = c
        .api_anonymous(standby)
        .send("GET", "/replica?lag=3parsecs", None)
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert_eq!(r.body["field"], "lag");
    let r = c
        .api_anonymous(standby)
        .send("GET", "/nope", None)
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    assert!(r.body["error"].as_str().unwrap().contains("/nope"));

    // through haproxy: the primary port lands on the leader, the replica port on a standby
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match where_am_i(&c, hap.primary_port) {
            Ok((false, p)) if p == c.pg_ports[leader] => break,
            r => assert!(Instant::now() < deadline, "primary port: {r:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // (haproxy counts servers up until their checks fail twice)
    let mut in_a_row = 0;
    while in_a_row < 6 {
        match where_am_i(&c, hap.replica_port) {
            Ok((true, p)) if p != c.pg_ports[leader] => in_a_row += 1,
            r => {
                in_a_row = 0;
                assert!(Instant::now() < deadline, "replica port: {r:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    // the primary's node is lost: haproxy moves to the new primary
    c.lose_node(leader);
    let start = Instant::now();
    let new = loop {
        if let Ok((false, p)) = where_am_i(&c, hap.primary_port) {
            if p != c.pg_ports[leader] {
                break c.pg_ports.iter().position(|x| *x == p).unwrap();
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(45),
            "haproxy did not reach a new primary\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "haproxy reached the new primary n{new} {:?} after the loss",
        start.elapsed()
    );
    let (now, _) = c.snapshot().await.unwrap();
    assert_eq!(now, Some(format!("n{new}")));
}

/// A writer through the proxy, a fresh connection per write: the sequence
/// numbers whose INSERT was acknowledged, and the errors seen.
struct Writer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(Vec<i64>, Vec<String>)>,
}

impl Writer {
    fn start(port: u16) -> Writer {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut acked, mut errors) = (Vec::new(), Vec::new());
            let mut seq = 0i64;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                seq += 1;
                let (ok, out, err) = testkit::psql(
                    port,
                    "postgres",
                    &format!("INSERT INTO acked VALUES ({seq}) RETURNING seq"),
                );
                if ok && out.trim() == seq.to_string() {
                    acked.push(seq);
                } else {
                    errors.push(err.trim().to_owned());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (acked, errors)
        });
        Writer { stop, thread }
    }

    fn stop(self) -> (Vec<i64>, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

async fn wait_leader(c: &Cluster, want: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        if let Some((Some(l), _)) = c.snapshot().await {
            if l == format!("n{want}") {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "n{want} did not become the leader\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_under_writes_hands_over_to_the_candidate() {
    let c = Cluster::start(3, "");
    let old = c.wait_healthy(3, Duration::from_secs(90)).await;
    let cand = (old + 1) % 3;
    c.sql_retry(
        c.proxy_port,
        "CREATE TABLE acked (seq int primary key)",
        Duration::from_secs(20),
    );
    let w = Writer::start(c.proxy_port);
    // A client between transactions: its session state set before the
    // switchover (a SET, a prepared statement) is there after it.
    let (kept, conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            c.proxy_port
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    kept.batch_execute("SET work_mem = '7MB'").await.unwrap();
    let port_of = kept.prepare("SELECT inet_server_port()").await.unwrap();
    let before: i32 = kept.query_one(&port_of, &[]).await.unwrap().get(0);
    assert_eq!(before as u16, c.pg_ports[old]);
    // ...and one whose transaction is under way when the proxy starts
    // holding new ones: it commits (on the old primary, before it stops)
    let (slow, conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            c.proxy_port
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    tokio::time::sleep(Duration::from_secs(2)).await;
    slow.batch_execute("BEGIN; INSERT INTO acked VALUES (-1)")
        .await
        .unwrap();
    // asked of any member (here the third one)
    let body = serde_json::json!({"leader": format!("n{old}"), "candidate": format!("n{cand}")});
    let r = c
        .api((old + 2) % 3)
        .call("POST", "/switchover", Some(&body))
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{:?}", r.body);
    let start = Instant::now();
    // the leader names its successor (proxies hold new transactions)...
    while !c
        .dcs_key(dcs::Key::Failover)
        .await
        .is_some_and(|v| v.contains("\"chosen\":\""))
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no successor named"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ...and waits for the transaction still open to end
    tokio::time::sleep(Duration::from_millis(100)).await;
    let in_flight = slow.batch_execute("COMMIT").await;
    wait_leader(&c, cand, Duration::from_secs(30)).await;
    let took = start.elapsed();
    // the old primary follows the new one by itself
    c.wait_healthy(3, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (acked, errors) = w.stop();
    eprintln!(
        "switchover took {took:?}; {} writes acknowledged, {} failed: {:?}",
        acked.len(),
        errors.len(),
        errors.iter().take(3).collect::<Vec<_>>()
    );
    assert_eq!(
        c.psql(c.pg_ports[old], "select pg_is_in_recovery()")
            .unwrap(),
        "t"
    );
    let present: std::collections::HashSet<i64> = c
        .psql(c.pg_ports[cand], "select seq from acked")
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let lost: Vec<&i64> = acked.iter().filter(|s| !present.contains(s)).collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    assert!(acked.len() > 20, "too few writes: {}", acked.len());
    // no client saw the switchover: new transactions waited for the
    // candidate, the ones under way ended before the old primary stopped
    assert!(
        errors.is_empty(),
        "writes failed during the switchover: {errors:?}"
    );
    in_flight.expect("the transaction under way at the switchover commits");
    assert!(present.contains(&-1), "the transaction under way was lost");
    let after: i32 = kept.query_one(&port_of, &[]).await.unwrap().get(0);
    assert_eq!(
        after as u16, c.pg_ports[cand],
        "the kept client reached the new primary"
    );
    let wm = kept.query_one("SHOW work_mem", &[]).await.unwrap();
    assert_eq!(wm.get::<_, String>(0), "7MB");
    // the request is gone, and the history says what happened
    assert_eq!(c.dcs_key(dcs::Key::Failover).await, None);
    let h = c.api(old).get("/history").await.unwrap();
    let last = h.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["kind"], "switchover", "{h}");
    assert_eq!(last["from"], format!("n{old}"), "{h}");
    assert_eq!(last["new_leader"], format!("n{cand}"), "{h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_refuse_with_reasons_and_change_the_configuration() {
    let c = Cluster::start(3, "");
    let leader = c.wait_healthy(3, Duration::from_secs(90)).await;
    let (s1, s2) = ((leader + 1) % 3, (leader + 2) % 3);
    let ln = format!("n{leader}");
    let api = c.api(s1);

    // authentication
    let body = serde_json::json!({"leader": ln});
    let r = c
        .api_anonymous(s1)
        .send("POST", "/switchover", Some(&body))
        .await
        .unwrap();
    assert_eq!(r.status, 401, "{:?}", r.body);
    let wrong = ctl::Client::new(
        &api.addr,
        Some("wrong-token-0123456789".into()),
        Duration::from_secs(5),
    );
    assert_eq!(
        wrong.send("POST", "/pause", None).await.unwrap().status,
        401
    );

    // refusals, each with its reason
    let refusal = |r: Result<ctl::Reply, ctl::CtlError>| match r {
        Err(ctl::CtlError::Api {
            status,
            message,
            field,
        }) => (status, message, field),
        other => panic!("not refused: {other:?}"),
    };
    let (st, m, f) = refusal(
        api.call(
            "POST",
            "/switchover",
            Some(&serde_json::json!({"leader": format!("n{s1}")})),
        )
        .await,
    );
    assert_eq!((st, f.as_deref()), (412, Some("leader")), "{m}");
    assert!(m.contains(&format!("{ln} is")), "{m}");
    let (st, m, _) = refusal(
        api.call(
            "POST",
            "/switchover",
            Some(&serde_json::json!({"leader": ln, "candidate": "nx"})),
        )
        .await,
    );
    assert_eq!(st, 412);
    assert!(m.contains("nx is not a member"), "{m}");
    let (st, m, f) = refusal(
        api.call(
            "POST",
            "/switchover",
            Some(&serde_json::json!({"leader": ln, "scheduled_at": "2001-01-01T00:00:00Z"})),
        )
        .await,
    );
    assert_eq!((st, f.as_deref()), (400, Some("scheduled_at")), "{m}");
    let (st, _, f) = refusal(
        api.call(
            "POST",
            "/switchover",
            Some(&serde_json::json!({"leader": ln, "candidat": "n1"})),
        )
        .await,
    );
    assert_eq!((st, f), (400, None));
    let (st, m, _) = refusal(c.api(leader).call("POST", "/reinitialize", None).await);
    assert_eq!(st, 412);
    assert!(m.contains("is the leader"), "{m}");

    // configuration: a bad key, a bad value (PostgreSQL's own words), a good change
    let (st, m, f) = refusal(
        api.call(
            "PATCH",
            "/config",
            Some(&serde_json::json!({"tll_ms": 9000})),
        )
        .await,
    );
    assert_eq!((st, f.as_deref()), (400, Some("tll_ms")), "{m}");
    let (st, m, f) = refusal(
        api.call(
            "PATCH",
            "/config",
            Some(&serde_json::json!({"parameters": {"work_mem": "lots"}})),
        )
        .await,
    );
    assert_eq!(
        (st, f.as_deref()),
        (400, Some("parameters.work_mem")),
        "{m}"
    );
    assert!(
        m.contains("invalid value for parameter \"work_mem\""),
        "{m}"
    );
    let r = api
        .call(
            "PATCH",
            "/config",
            Some(&serde_json::json!({"parameters": {"work_mem": "12MB"}})),
        )
        .await
        .unwrap();
    assert_eq!(r.body["parameters"]["work_mem"], "12MB");
    assert_eq!(
        c.api(s2)
            .get("/config")
            .await
            .ok()
            .map(|v| v["ttl_ms"].clone()),
        Some(serde_json::json!(5000))
    );
    for i in 0..3 {
        let deadline = Instant::now() + Duration::from_secs(20);
        while c.psql(c.pg_ports[i], "show work_mem").ok().as_deref() != Some("12MB") {
            assert!(Instant::now() < deadline, "n{i} did not get work_mem");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // a standby that lags too far is refused as a candidate, the lag named
    let lp = c.pg_ports[leader];
    c.psql(lp, "CREATE TABLE lag (v text)").unwrap();
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
    // (once the members have published their positions)
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let cl = api.get("/cluster").await.unwrap();
        let lag = cl["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == format!("n{s1}").as_str())
            .and_then(|m| m["lag"].as_u64());
        if lag.is_some_and(|l| l > 1 << 20) {
            break;
        }
        assert!(Instant::now() < deadline, "n{s1} does not lag: {cl}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let body = serde_json::json!({"leader": ln, "candidate": format!("n{s1}")});
    let (st, m, _) = refusal(api.call("POST", "/switchover", Some(&body)).await);
    assert_eq!(st, 412, "{m}");
    assert!(
        m.contains("bytes behind the leader (maximum_lag_on_failover is 1048576)"),
        "{m}"
    );
    c.psql(lp, "ALTER ROLE replicator LOGIN").unwrap();
    c.wait_healthy(3, Duration::from_secs(60)).await;

    // maintenance mode
    let r = api.call("POST", "/pause", None).await.unwrap();
    assert!(r.body["message"]
        .as_str()
        .unwrap()
        .contains("maintenance mode on"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.api(s2).get("/cluster").await.unwrap()["paused"] != true {
        assert!(Instant::now() < deadline, "not paused in /cluster");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    api.call("POST", "/resume", None).await.unwrap();
    assert_eq!(c.dcs_key(dcs::Key::Pause).await, None);

    // /replica?lag= in time: a standby whose replay is paused falls behind
    // in time (it still receives: its byte lag stays small)
    let sp = c.pg_ports[s2];
    c.psql(sp, "SELECT pg_wal_replay_pause()").unwrap();
    c.psql(lp, "INSERT INTO lag VALUES ('after the pause')")
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = |q: &'static str| {
        let a = c.api_anonymous(s2);
        async move { a.send("GET", q, None).await.unwrap().status }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while status("/replica?lag=2s").await != 503 {
        assert!(Instant::now() < deadline, "replay paused, yet within 2 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(status("/replica?lag=10min").await, 200);
    assert_eq!(status("/replica?lag=16MB").await, 200);
    assert_eq!(status("/replica?lag=2parsecs").await, 400);
    c.psql(sp, "SELECT pg_wal_replay_resume()").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while status("/replica?lag=2s").await != 200 {
        assert!(
            Instant::now() < deadline,
            "replay resumed, still not within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // /cluster: every member, the leader, and the last loop's sentence
    let cl = c.api(s2).get("/cluster").await.unwrap();
    assert_eq!(cl["leader"], ln.as_str());
    let ms = cl["members"].as_array().unwrap();
    assert_eq!(ms.len(), 3);
    for m in ms {
        assert!(
            m["last_action"].as_str().is_some_and(|s| !s.is_empty()),
            "{m}"
        );
        assert!(m["timeline"].as_u64().is_some(), "{m}");
        let want = if m["name"] == ln.as_str() {
            "leader"
        } else {
            "replica"
        };
        assert_eq!(m["role"], want, "{m}");
    }
}

/// `pgwarden ctl ARGS` against the cluster's agents (with the token file
/// unless `anonymous`): exit code, stdout, stderr.
fn ctl(c: &Cluster, args: &[&str], anonymous: bool) -> (i32, String, String) {
    let apis: Vec<String> = c
        .api_ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let token = c.dir.path().join("token");
    std::fs::write(&token, format!("{}\n", harness::TOKEN)).unwrap();
    let mut cmd = std::process::Command::new(harness::BIN);
    cmd.arg("ctl").arg("--api").arg(apis.join(","));
    if !anonymous {
        cmd.arg("--token-file").arg(&token);
    }
    let o = cmd
        .args(args)
        .env_remove("PGWARDEN_API")
        .env_remove("PGWARDEN_API_TOKEN")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn ctl_ok(c: &Cluster, args: &[&str]) -> String {
    let (code, out, err) = ctl(c, args, false);
    assert_eq!(code, 0, "ctl {args:?}: {out}{err}");
    out
}

fn ctl_json(c: &Cluster, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    serde_json::from_str(ctl_ok(c, &a).trim()).unwrap()
}

fn member_field(list: &serde_json::Value, name: &str, field: &str) -> serde_json::Value {
    list["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .map(|m| m[field].clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_drives_the_cluster() {
    let c = Cluster::start(3, "");
    let leader = c.wait_healthy(3, Duration::from_secs(90)).await;
    let (s1, s2) = ((leader + 1) % 3, (leader + 2) % 3);

    // (the agents serve the cluster as their last pass read it)
    let deadline = Instant::now() + Duration::from_secs(10);
    let out = loop {
        let out = ctl_ok(&c, &["list"]);
        if out.matches("streaming").count() == 2 {
            break out;
        }
        assert!(Instant::now() < deadline, "{out}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    for i in 0..3 {
        assert!(out.contains(&format!("| n{i} ")), "{out}");
    }
    assert!(out.contains("Leader") && out.contains("streaming"), "{out}");
    assert!(ctl_ok(&c, &["topology"]).contains(&format!("| + n{s1}")));
    let list = ctl_json(&c, &["list"]);
    assert_eq!(list["leader"], format!("n{leader}"));

    // exit codes: no token 4, unreachable 3, refused 5, usage 2
    let (code, _, err) = ctl(&c, &["pause"], true);
    assert_eq!(code, 4, "{err}");
    let o = std::process::Command::new(harness::BIN)
        .args(["ctl", "--api", "127.0.0.1:1", "list"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3));
    let (code, _, err) = ctl(&c, &["edit-config", "--set", "tll_ms=1", "--force"], false);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("tll_ms"), "{err}");
    let (code, _, err) = ctl(&c, &["reinit", &format!("n{leader}"), "--force"], false);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is the leader"), "{err}");
    let (code, _, err) = ctl(&c, &["switchover", "--to", "n9"], false);
    assert_eq!(code, 2, "{err}");

    // maintenance mode shows in list
    ctl_ok(&c, &["pause"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ctl_ok(&c, &["list"]).contains("Maintenance mode: on") {
        assert!(Instant::now() < deadline, "pause not shown");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    ctl_ok(&c, &["resume"]);

    // configuration: a change without restart, one that needs it
    ctl_ok(
        &c,
        &[
            "edit-config",
            "--set",
            "parameters.work_mem=16MB",
            "--force",
        ],
    );
    assert_eq!(
        ctl_json(&c, &["show-config"])["parameters"]["work_mem"],
        "16MB"
    );
    ctl_ok(
        &c,
        &[
            "edit-config",
            "--set",
            "parameters.max_connections=150",
            "--force",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let l = ctl_json(&c, &["list"]);
        if (0..3).all(|i| member_field(&l, &format!("n{i}"), "pending_restart") == true) {
            break;
        }
        assert!(Instant::now() < deadline, "no pending restart: {l}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(ctl_ok(&c, &["list"]).contains("| *"));
    let out = ctl_ok(&c, &["restart", "--pending", "--rolling", "--force"]);
    assert!(out.contains("switchover done"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let l = ctl_json(&c, &["list"]);
        if (0..3).all(|i| member_field(&l, &format!("n{i}"), "pending_restart") == false) {
            break;
        }
        assert!(Instant::now() < deadline, "restart still pending: {l}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        c.psql(c.pg_ports[s2], "show max_connections").unwrap(),
        "150"
    );
    // the rolling restart handed the leader role over
    let leader = c.wait_healthy(3, Duration::from_secs(60)).await;
    let (s1, s2) = ((leader + 1) % 3, (leader + 2) % 3);

    // switchover, then a manual failover back
    let out = ctl_ok(&c, &["switchover", "--to", &format!("n{s1}"), "--force"]);
    assert!(out.contains(&format!("n{s1} is the leader")), "{out}");
    c.wait_healthy(3, Duration::from_secs(60)).await;
    let out = ctl_ok(&c, &["failover", "--to", &format!("n{leader}"), "--force"]);
    assert!(out.contains(&format!("n{leader} is the leader")), "{out}");
    c.wait_healthy(3, Duration::from_secs(60)).await;

    // a standby rebuilt from the leader
    let out = ctl_ok(&c, &["reinit", &format!("n{s2}"), "--force"]);
    assert!(out.contains(&format!("n{s2}: reinitialized from")), "{out}");
    // the member reports pg_basebackup's progress: the copy ran to its end
    let p = c.api(s2).get("/reinitialize").await.unwrap();
    let (done, total) = (
        p["done_kb"].as_u64().unwrap(),
        p["total_kb"].as_u64().unwrap(),
    );
    assert!(total > 1000 && done == total, "{p}");
    assert_eq!(
        (p["copying"].as_bool(), p["last_ok"].as_bool()),
        (Some(false), Some(true)),
        "{p}"
    );
    c.wait_healthy(3, Duration::from_secs(90)).await;

    let h = ctl_ok(&c, &["history"]);
    for word in ["switchover", "manual failover", "restart", "reinit"] {
        assert!(h.contains(word), "{word} missing:\n{h}");
    }
    ctl_ok(&c, &["reload"]);
}
