use super::*;
use ha::status::{MemberStatus, State, Tags};

fn member(name: &str, role: MemberRole, state: State, lag: Option<u64>) -> MemberStatus {
    MemberStatus {
        name: name.into(),
        host: "127.0.0.1".into(),
        port: 5432,
        api_url: "http://127.0.0.1:8008".into(),
        role,
        state,
        timeline: 3,
        lsn: 1000,
        replayed_lsn: 1000,
        lag,
        tags: Tags {
            nofailover: false,
            priority: 0,
        },
        pending_restart: name == "b",
        last_action: "no action".into(),
    }
}

fn cluster() -> ClusterStatus {
    ClusterStatus {
        leader: Some("a".into()),
        epoch: Some(7),
        paused: true,
        members: vec![
            member("a", MemberRole::Leader, State::Running, None),
            member("b", MemberRole::Replica, State::Streaming, Some(4096)),
        ],
        pending: None,
        proxies: Default::default(),
    }
}

fn entry(kind: Kind, at_ms: u64) -> Entry {
    Entry {
        kind,
        at_ms,
        ..Default::default()
    }
}

/// The value of the sample whose name and labels start the line.
fn value(text: &str, series: &str) -> Option<String> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .map(|l| l[series.len() + 1..].to_owned())
}

#[test]
fn history_counts_stay_monotonic_when_entries_fall_off() {
    let mut h = HistoryCounts::default();
    h.observe(&[entry(Kind::Failover, 1), entry(Kind::Switchover, 2)]);
    assert_eq!((h.failovers, h.switchovers), (1, 1));
    h.observe(&[entry(Kind::Failover, 1), entry(Kind::Switchover, 2)]);
    assert_eq!((h.failovers, h.switchovers), (1, 1));
    // the oldest fell off, two new ones came (one at the same millisecond)
    h.observe(&[
        entry(Kind::Switchover, 2),
        entry(Kind::Restart, 2),
        entry(Kind::ManualFailover, 3),
        entry(Kind::Reinit, 4),
    ]);
    assert_eq!(
        (
            h.failovers,
            h.manual_failovers,
            h.switchovers,
            h.restarts,
            h.reinits
        ),
        (1, 1, 1, 1, 1)
    );
}

#[test]
fn a_standby_and_a_leader_expose_their_state() {
    let c = cluster();
    let mut hc = HistoryCounts::default();
    hc.observe(&[entry(Kind::Failover, 1), entry(Kind::Switchover, 2)]);
    let lh = LoopHistogram {
        cumulative: vec![1; BUCKETS.len() + 1],
        sum_s: 0.004,
        count: 1,
        last_s: Some(0.004),
    };
    let node = NodeInfo {
        name: "b".into(),
        replay_delay_s: Some(1.5),
        disk: Some(crate::nodeinfo::Disk {
            data_dir_bytes: 10,
            wal_bytes: 4,
            fs_free_bytes: 100,
            fs_size_bytes: 200,
        }),
        ..Default::default()
    };
    let t = render(&Input {
        cluster_name: "t",
        name: "b",
        cluster: &c,
        history: &hc,
        loop_h: &lh,
        node: &node,
        lease_remaining: Some(Duration::from_secs(3)),
    });
    let v = |s: &str| value(&t, s);
    assert_eq!(
        v(r#"pgwarden_member_role{cluster="t",member="b",role="replica"}"#).as_deref(),
        Some("1")
    );
    assert_eq!(
        v(r#"pgwarden_member_role{cluster="t",member="b",role="leader"}"#).as_deref(),
        Some("0")
    );
    assert_eq!(
        v(r#"pgwarden_is_leader{cluster="t",member="b"}"#).as_deref(),
        Some("0")
    );
    assert_eq!(
        v(r#"pgwarden_streaming{cluster="t",member="b"}"#).as_deref(),
        Some("1")
    );
    assert_eq!(
        v(r#"pgwarden_timeline{cluster="t",member="b"}"#).as_deref(),
        Some("3")
    );
    assert_eq!(
        v(r#"pgwarden_replication_lag_bytes{cluster="t",member="b"}"#).as_deref(),
        Some("4096")
    );
    assert_eq!(
        v(r#"pgwarden_replication_lag_seconds{cluster="t",member="b"}"#).as_deref(),
        Some("1.5")
    );
    assert_eq!(
        v(r#"pgwarden_pending_restart{cluster="t",member="b"}"#).as_deref(),
        Some("1")
    );
    assert_eq!(
        v(r#"pgwarden_lease_holder{cluster="t",holder="a"}"#).as_deref(),
        Some("1")
    );
    assert_eq!(
        v(r#"pgwarden_lease_epoch{cluster="t"}"#).as_deref(),
        Some("7")
    );
    assert_eq!(v(r#"pgwarden_paused{cluster="t"}"#).as_deref(), Some("1"));
    // not the holder: no remaining time, whatever it last proved
    assert!(!t.contains("pgwarden_lease_remaining_seconds{"));
    assert_eq!(
        v(r#"pgwarden_failovers_total{cluster="t",kind="automatic"}"#).as_deref(),
        Some("1")
    );
    assert_eq!(
        v(r#"pgwarden_switchovers_total{cluster="t"}"#).as_deref(),
        Some("1")
    );
    assert_eq!(
        v(r#"pgwarden_loop_duration_seconds_bucket{cluster="t",member="b",le="+Inf"}"#).as_deref(),
        Some("1")
    );
    assert_eq!(
        v(r#"pgwarden_loop_duration_seconds_count{cluster="t",member="b"}"#).as_deref(),
        Some("1")
    );
    assert_eq!(
        v(r#"pgwarden_wal_directory_bytes{cluster="t",member="b"}"#).as_deref(),
        Some("4")
    );
    assert!(t.contains("# TYPE pgwarden_failovers_total counter"));
    assert!(t.contains("# TYPE pgwarden_loop_duration_seconds histogram"));

    let t = render(&Input {
        cluster_name: "t",
        name: "a",
        cluster: &c,
        history: &hc,
        loop_h: &lh,
        node: &NodeInfo::default(),
        lease_remaining: Some(Duration::from_millis(2500)),
    });
    assert_eq!(
        value(&t, r#"pgwarden_is_leader{cluster="t",member="a"}"#).as_deref(),
        Some("1")
    );
    assert_eq!(
        value(
            &t,
            r#"pgwarden_replication_lag_bytes{cluster="t",member="a"}"#
        )
        .as_deref(),
        Some("0")
    );
    assert_eq!(
        value(
            &t,
            r#"pgwarden_lease_remaining_seconds{cluster="t",member="a"}"#
        )
        .as_deref(),
        Some("2.5")
    );
    // every series is declared once, and its samples follow its declaration
    let mut typed = std::collections::BTreeSet::new();
    for l in t.lines().filter(|l| l.starts_with("# TYPE ")) {
        assert!(typed.insert(l.split(' ').nth(2).unwrap().to_owned()), "{l}");
    }
}

#[test]
fn label_values_are_escaped() {
    assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
}
