//! The dashboard in a real headless chromium against a real 3-node
//! cluster (the page follows a failover live and runs a switchover), and
//! the agents' /metrics checked against the cluster's state (and by
//! promtool, when installed).
#[path = "dashboard/cdp.rs"]
mod cdp;
#[path = "ops/harness.rs"]
#[allow(dead_code)] // shared with ops.rs, which uses all of it
mod harness;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use harness::{Cluster, TOKEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Where the screenshots go (kept after the test: target/tmp).
fn shots() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn postmaster_pid(c: &Cluster, i: usize) -> Option<u32> {
    std::fs::read_to_string(c.data(i).join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

async fn leader_in_dcs(c: &Cluster) -> Option<String> {
    c.snapshot().await.and_then(|(l, _)| l)
}

/// The page's view: member -> role, as its table shows it.
const ROLES_JS: &str =
    "JSON.stringify(Object.fromEntries([...document.querySelectorAll('#member-rows tr')]\
    .map(r => [r.dataset.member, r.dataset.role])))";

async fn page_roles(b: &cdp::Browser) -> serde_json::Value {
    let s = b.eval(ROLES_JS).await;
    serde_json::from_str(s.as_str().unwrap_or("{}")).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_follows_a_failover_live_and_runs_a_switchover() {
    let Some(program) = cdp::chromium() else {
        panic!("chromium is not installed: ./x test installs it (apt-get install chromium)");
    };
    // a postmaster crash releases the lease at once (no restart in place)
    let c = Cluster::start(3, "max_crash_restarts = 0");
    let leader = c.wait_healthy(3, Duration::from_secs(90)).await;
    let viewer = (leader + 1) % 3; // an agent that stays up throughout
    let b = cdp::Browser::launch(program).await;
    b.goto(&format!(
        "http://127.0.0.1:{}/dashboard",
        c.api_ports[viewer]
    ))
    .await;

    // three members with the right roles
    let want_leader = format!("n{leader}");
    b.wait_for(
        &format!(
            "document.querySelectorAll('#member-rows tr').length === 3 && \
             document.querySelector('#member-rows tr[data-member=\"{want_leader}\"]')?.dataset.role === 'leader' && \
             document.querySelectorAll('#member-rows tr[data-role=\"replica\"]').length === 2"
        ),
        Duration::from_secs(15),
        "three members, the leader and two replicas",
    )
    .await;
    assert_eq!(
        b.eval("document.getElementById('lease-holder').textContent")
            .await,
        want_leader
    );
    assert_eq!(
        b.eval("document.getElementById('conn').dataset.state")
            .await,
        "live"
    );
    // disk figures and the lease's expiry arrive from the agents' /node
    b.wait_for(
        "!!document.querySelector('#member-rows tr td:nth-child(10)')?.textContent.includes('/') && \
         /\\d s/.test(document.getElementById('lease-expiry').textContent)",
        Duration::from_secs(10),
        "disk sizes and the lease's time to expiry",
    )
    .await;
    // the proxy registered itself in the DCS: its row, the primary it
    // reaches, and its transactions per second once it has served some
    for _ in 0..20 {
        c.psql(c.proxy_port, "SELECT 1")
            .expect("a query through the proxy");
    }
    let leader_port = c.pg_ports[leader];
    b.wait_for(
        &format!(
            "document.querySelectorAll('#proxy-rows tr').length === 1 && \
             document.querySelector('#proxy-rows tr')?.dataset.state === 'serving' && \
             document.querySelector('#proxy-rows tr td:nth-child(7)')?.textContent === '127.0.0.1:{leader_port}' && \
             /^\\d+$/.test(document.querySelector('#proxy-rows tr td:nth-child(8)')?.textContent)"
        ),
        Duration::from_secs(10),
        "the proxy's row: serving, reaching the leader, with a rate",
    )
    .await;
    assert!(
        b.errors.lock().unwrap().is_empty(),
        "console errors on load: {:?}",
        b.errors.lock().unwrap()
    );
    let dir = shots();
    b.screenshot(&dir.join("1-healthy-light.png")).await;
    b.color_scheme(true).await;
    b.screenshot(&dir.join("1-healthy-dark.png")).await;
    b.color_scheme(false).await;
    // a mark that a reload would wipe
    b.eval("window.__noReload = true").await;

    // kill -9 of the primary's postmaster: the page shows the new leader
    let pm = postmaster_pid(&c, leader).expect("the leader's postmaster.pid");
    assert!(Command::new("kill")
        .args(["-9", &pm.to_string()])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(45);
    let mut dcs_changed: Option<(Instant, String)> = None;
    let new_leader = loop {
        let now = Instant::now();
        if dcs_changed.is_none() {
            if let Some(l) = leader_in_dcs(&c).await.filter(|l| *l != want_leader) {
                dcs_changed = Some((now, l));
            }
        }
        let shown = b.eval("document.body.dataset.leader").await;
        if let Some((at, l)) = &dcs_changed {
            if shown.as_str() == Some(l.as_str()) {
                let late = at.elapsed();
                eprintln!("the page showed the new leader {l} {late:?} after the DCS did");
                assert!(
                    late < Duration::from_secs(1),
                    "the page showed the new leader {late:?} after the DCS"
                );
                break l.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no new leader on the page; DCS: {dcs_changed:?}, page: {shown}\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(b.eval("window.__noReload === true").await, true);
    // its row says leader once it has promoted and published it
    b.wait_for(
        &format!(
            "document.querySelector('#member-rows tr[data-member=\"{new_leader}\"]')?.dataset.role === 'leader' && \
             document.getElementById('lease-holder').textContent === '{new_leader}'"
        ),
        Duration::from_secs(30),
        "the new leader's row",
    )
    .await;
    let roles = page_roles(&b).await;
    assert_eq!(roles[&new_leader], "leader", "{roles}");
    b.screenshot(&dir.join("2-after-failover.png")).await;

    // the old primary comes back as a standby; the history shows the failover
    let leader = c.wait_healthy(3, Duration::from_secs(90)).await;
    assert_eq!(format!("n{leader}"), new_leader);
    b.wait_for(
        "!!document.querySelector('#history-rows tr[data-kind=\"failover\"]') && \
         document.querySelectorAll('#member-rows tr[data-role=\"replica\"]').length === 2 && \
         document.getElementById('candidate').options.length === 2",
        Duration::from_secs(15),
        "the failover in the history, two streaming replicas to switch over to",
    )
    .await;

    // a switchover from the page, by keyboard: token, candidate, button, confirm
    b.eval(&format!(
        "document.getElementById('token').value = '{TOKEN}'; \
         document.getElementById('token-form').requestSubmit(); true"
    ))
    .await;
    // maintenance mode on and off from the page
    for (button, shown, in_dcs) in [("pause", "ON", true), ("resume", "off", false)] {
        b.eval(&format!(
            "document.getElementById('{button}').click(); true"
        ))
        .await;
        b.wait_for(
            "document.getElementById('confirm').open",
            Duration::from_secs(5),
            "the confirmation dialog",
        )
        .await;
        b.eval("document.getElementById('result').dataset.ok = 'waiting'; document.getElementById('confirm-yes').click(); true")
            .await;
        b.wait_for(
            &format!(
                "document.getElementById('result').dataset.ok === 'true' && \
                 document.getElementById('paused').textContent.startsWith('{shown}')"
            ),
            Duration::from_secs(10),
            &format!("{button} done and shown"),
        )
        .await;
        assert_eq!(
            c.dcs_key(dcs::Key::Pause).await.is_some(),
            in_dcs,
            "{button}"
        );
    }

    let target = b
        .eval("document.getElementById('candidate').options[1].value")
        .await
        .as_str()
        .unwrap()
        .to_owned();
    b.eval(&format!(
        "document.getElementById('candidate').value = '{target}'; \
         document.getElementById('switchover').focus(); true"
    ))
    .await;
    b.press("Enter", 13).await;
    b.wait_for(
        "document.getElementById('confirm').open && document.activeElement.id === 'confirm-no'",
        Duration::from_secs(5),
        "the confirmation dialog, Cancel focused",
    )
    .await;
    b.screenshot(&dir.join("3-confirm-switchover.png")).await;
    b.press("Tab", 9).await;
    assert_eq!(b.eval("document.activeElement.id").await, "confirm-yes");
    b.eval("document.getElementById('result').dataset.ok = 'waiting'; true")
        .await;
    b.press("Enter", 13).await;
    b.wait_for(
        "document.getElementById('result').dataset.ok === 'true'",
        Duration::from_secs(30),
        "the switchover's answer shown",
    )
    .await;
    let answer = b
        .eval("document.getElementById('result').textContent")
        .await;
    eprintln!("switchover answer on the page: {answer}");
    b.wait_for(
        &format!(
            "document.body.dataset.leader === '{target}' && \
             document.querySelector('#member-rows tr[data-member=\"{target}\"]')?.dataset.role === 'leader' && \
             !!document.querySelector('#history-rows tr[data-kind=\"switchover\"]')"
        ),
        Duration::from_secs(60),
        "the switchover completed on the page",
    )
    .await;
    assert_eq!(leader_in_dcs(&c).await.as_deref(), Some(target.as_str()));
    assert_eq!(b.eval("window.__noReload === true").await, true);
    b.screenshot(&dir.join("4-after-switchover.png")).await;

    // a standby rebuilt from the page (the request goes through the viewing agent)
    c.wait_healthy(3, Duration::from_secs(90)).await;
    let standby = (0..3)
        .map(|i| format!("n{i}"))
        .find(|n| *n != target)
        .unwrap();
    b.eval(&format!(
        "document.querySelector('#member-rows tr[data-member=\"{standby}\"] button:nth-of-type(2)').click(); true"
    ))
    .await;
    b.wait_for(
        "document.getElementById('confirm').open",
        Duration::from_secs(5),
        "the confirmation dialog",
    )
    .await;
    b.eval("document.getElementById('result').dataset.ok = 'waiting'; document.getElementById('confirm-yes').click(); true")
        .await;
    b.wait_for(
        "document.getElementById('result').dataset.ok === 'true' && \
         !!document.querySelector('#history-rows tr[data-kind=\"reinit\"]')",
        Duration::from_secs(60),
        "the reinit's answer and its history entry",
    )
    .await;
    eprintln!(
        "reinit answer on the page: {}",
        b.eval("document.getElementById('result').textContent")
            .await
    );
    c.wait_healthy(3, Duration::from_secs(90)).await;

    // a setting that needs a restart: the page shows it pending, and its
    // button restarts that member
    let r = c
        .api(0)
        .send(
            "PATCH",
            "/config",
            Some(&serde_json::json!({"parameters": {"max_connections": 120}})),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    let row = format!("#member-rows tr[data-member=\"{standby}\"]");
    b.wait_for(
        &format!(
            "document.querySelector('{row} td:nth-child(8)')?.textContent === 'yes' && \
             !document.querySelector('{row} button').disabled"
        ),
        Duration::from_secs(30),
        "the pending restart shown, its button enabled",
    )
    .await;
    b.eval(&format!(
        "document.querySelector('{row} button').click(); true"
    ))
    .await;
    b.wait_for(
        "document.getElementById('confirm').open",
        Duration::from_secs(5),
        "the confirmation dialog",
    )
    .await;
    b.eval("document.getElementById('result').dataset.ok = 'waiting'; document.getElementById('confirm-yes').click(); true")
        .await;
    b.wait_for(
        &format!(
            "document.getElementById('result').dataset.ok === 'true' && \
             document.getElementById('result').textContent.includes('restart') && \
             document.querySelector('{row} td:nth-child(8)')?.textContent === 'no'"
        ),
        Duration::from_secs(60),
        "the restart done and no longer pending",
    )
    .await;
    eprintln!(
        "restart answer on the page: {}",
        b.eval("document.getElementById('result').textContent")
            .await
    );

    let errors = b.errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "console errors: {errors:?}");
    b.close().await;
}

/// GET `path` from 127.0.0.1:`port`: status and body (the first `limit`
/// bytes of a stream), within 10 s.
async fn http_get(port: u16, path: &str, limit: usize) -> (u16, String) {
    let work = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        while buf.len() < limit {
            let n = s.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        buf
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .expect("answer within 10 s");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_owned())
}

/// The value of one sample (name with its labels, as written).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l[series.len() + 1..].trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_events_tell_the_cluster_as_it_is() {
    let c = Cluster::start(3, "");
    let leader = c.wait_healthy(3, Duration::from_secs(90)).await;
    let (_, members) = c.snapshot().await.unwrap();
    let tl = members
        .iter()
        .find(|m| m.name == format!("n{leader}"))
        .unwrap()
        .timeline;

    let scrape = |i: usize| {
        let port = c.api_ports[i];
        async move {
            let (status, body) = http_get(port, "/metrics", usize::MAX).await;
            assert_eq!(status, 200, "{body}");
            body
        }
    };
    for i in 0..3 {
        let m = format!("cluster=\"t\",member=\"n{i}\"");
        // a standby's lag is known once the leader has published its position
        let deadline = Instant::now() + Duration::from_secs(20);
        let t = loop {
            let t = scrape(i).await;
            if t.contains(&format!("pgwarden_replication_lag_bytes{{{m}}}")) {
                break t;
            }
            assert!(Instant::now() < deadline, "no lag on n{i}:\n{t}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let is_leader = i == leader;
        let role = if is_leader { "leader" } else { "replica" };
        assert_eq!(
            sample(&t, &format!("pgwarden_member_role{{{m},role=\"{role}\"}}")),
            Some(1.0),
            "{t}"
        );
        assert_eq!(
            sample(&t, &format!("pgwarden_is_leader{{{m}}}")),
            Some(f64::from(u8::from(is_leader)))
        );
        assert_eq!(
            sample(&t, &format!("pgwarden_timeline{{{m}}}")),
            Some(f64::from(tl))
        );
        assert_eq!(
            sample(
                &t,
                &format!("pgwarden_lease_holder{{cluster=\"t\",holder=\"n{leader}\"}}")
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(&t, &format!("pgwarden_pending_restart{{{m}}}")),
            Some(0.0)
        );
        assert_eq!(sample(&t, r#"pgwarden_paused{cluster="t"}"#), Some(0.0));
        assert_eq!(sample(&t, r#"pgwarden_members{cluster="t"}"#), Some(3.0));
        assert_eq!(
            sample(&t, r#"pgwarden_switchovers_total{cluster="t"}"#),
            Some(0.0)
        );
        let lag = sample(&t, &format!("pgwarden_replication_lag_bytes{{{m}}}"))
            .unwrap_or_else(|| panic!("lag bytes on n{i}:\n{t}"));
        assert!(lag < 16.0 * 1024.0 * 1024.0, "lag {lag}");
        let lag_s =
            sample(&t, &format!("pgwarden_replication_lag_seconds{{{m}}}")).expect("lag seconds");
        assert!((0.0..60.0).contains(&lag_s), "lag {lag_s} s");
        let remaining = sample(&t, &format!("pgwarden_lease_remaining_seconds{{{m}}}"));
        if is_leader {
            let r = remaining.expect("the holder tells its lease's time left");
            assert!(r > 0.0 && r <= 30.0, "remaining {r}");
            assert_eq!(lag, 0.0);
        } else {
            assert_eq!(remaining, None, "only the holder knows its lease");
            assert_eq!(sample(&t, &format!("pgwarden_streaming{{{m}}}")), Some(1.0));
        }
        let passes = sample(&t, &format!("pgwarden_loop_duration_seconds_count{{{m}}}")).unwrap();
        assert!(passes >= 1.0);
        assert_eq!(
            sample(
                &t,
                &format!("pgwarden_loop_duration_seconds_bucket{{{m},le=\"+Inf\"}}")
            ),
            Some(passes)
        );
        let data =
            sample(&t, &format!("pgwarden_data_directory_bytes{{{m}}}")).expect("data dir size");
        let wal = sample(&t, &format!("pgwarden_wal_directory_bytes{{{m}}}")).expect("pg_wal size");
        let free =
            sample(&t, &format!("pgwarden_filesystem_free_bytes{{{m}}}")).expect("free disk");
        // a fresh cluster: some MB of catalog, at least one 16 MB segment
        assert!(
            data > 10e6 && wal >= 16.0 * 1024.0 * 1024.0 && wal < data,
            "{data} {wal}"
        );
        assert!(free > 0.0);
        if let Some(promtool) = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
        {
            let (ok, out) = Command::new(promtool)
                .args(["check", "metrics"])
                .stdin(std::process::Stdio::piped())
                .output_with(t.as_bytes());
            assert!(
                ok && out.trim().is_empty(),
                "promtool check metrics on n{i}: {out}"
            );
        } else {
            eprintln!("promtool not installed: ./x test installs it (package prometheus)");
        }
    }

    // /events: the first event is the view with the three members
    let (status, body) = http_get(c.api_ports[0], "/events", 2000).await;
    assert_eq!(status, 200);
    let data = body
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .expect("an event's data");
    let v: serde_json::Value = serde_json::from_str(data).unwrap();
    assert_eq!(v["cluster"]["leader"], format!("n{leader}"));
    assert_eq!(v["cluster"]["members"].as_array().unwrap().len(), 3);

    // an operation on one member asked of another agent is passed on, with the token only
    let other = (leader + 1) % 3;
    let path = format!("/members/n{other}/restart");
    let body = serde_json::json!({"restart_pending": true});
    let r = c
        .api_anonymous(leader)
        .send("POST", &path, Some(&body))
        .await
        .unwrap();
    assert_eq!(r.status, 401, "{:?}", r.body);
    let r = c
        .api(leader)
        .send("POST", &path, Some(&body))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("no restart pending"),
        "{:?}",
        r.body
    );
    let r = c
        .api(leader)
        .send("POST", "/members/nope/reload", None)
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.body["field"].as_str()),
        (400, Some("name")),
        "{:?}",
        r.body
    );
    let r = c
        .api(leader)
        .send("POST", &format!("/members/n{other}/drop"), None)
        .await
        .unwrap();
    assert_eq!(r.status, 404, "{:?}", r.body);

    // a switchover counts on every agent
    let target = (leader + 1) % 3;
    let r = c
        .api(leader)
        .send(
            "POST",
            "/switchover",
            Some(&serde_json::json!({"leader": format!("n{leader}"), "candidate": format!("n{target}")})),
        )
        .await
        .unwrap();
    assert!(r.status < 300, "{:?}", r.body);
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..3 {
        loop {
            let t = scrape(i).await;
            if sample(&t, r#"pgwarden_switchovers_total{cluster="t"}"#) == Some(1.0)
                && sample(
                    &t,
                    &format!("pgwarden_lease_holder{{cluster=\"t\",holder=\"n{target}\"}}"),
                ) == Some(1.0)
            {
                break;
            }
            assert!(Instant::now() < deadline, "n{i} after the switchover:\n{t}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // the dashboard's page and assets are served, with a policy that
    // allows nothing from elsewhere
    for path in ["/dashboard", "/dashboard/app.js", "/dashboard/style.css"] {
        let (status, body) = http_get(c.api_ports[0], path, usize::MAX).await;
        assert_eq!(status, 200, "{path}");
        assert!(
            !body.contains("http://") || path == "/dashboard/app.js",
            "{path} links elsewhere"
        );
        assert!(!body.contains("https://"), "{path} links elsewhere");
    }
}

trait OutputWith {
    fn output_with(&mut self, stdin: &[u8]) -> (bool, String);
}

impl OutputWith for Command {
    /// Runs with `stdin` fed, within 30 s: success and stdout+stderr.
    fn output_with(&mut self, stdin: &[u8]) -> (bool, String) {
        use std::io::Write;
        let mut child = self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while matches!(child.try_wait(), Ok(None)) {
            if Instant::now() > deadline {
                let _ = child.kill();
                return (false, "promtool did not finish in 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
}
