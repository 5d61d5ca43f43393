use super::*;
use crate::member::SyncMode;

fn member(name: &str, role: Role, running: bool, lsn: u64) -> Member {
    Member {
        name: name.into(),
        host: "127.0.0.1".into(),
        port: 5000,
        api_url: String::new(),
        role,
        running,
        timeline: 1,
        lsn,
        replayed_lsn: lsn,
        streaming: role == Role::Replica,
        lag: None,
        nofailover: false,
        priority: 0,
        pending_restart: false,
        last_action: String::new(),
    }
}

fn settings() -> Settings {
    Settings {
        maximum_lag_on_failover: 1000,
        synchronous_mode: SyncMode::Off,
        max_crash_restarts: 2,
        rewind_after_loops: 5,
    }
}

fn local(name: &str, pg: Pg) -> Local {
    Local {
        name: name.into(),
        pg,
        nofailover: false,
        priority: 0,
        crash_restarts: 0,
        not_streaming_loops: 0,
    }
}

fn replica(lsn: u64) -> Pg {
    Pg::Running {
        primary: false,
        lsn,
        timeline: 1,
        following: None,
        streaming: true,
    }
}

fn primary() -> Pg {
    Pg::Running {
        primary: true,
        lsn: 100,
        timeline: 1,
        following: None,
        streaming: false,
    }
}

fn view<'a>(leader: Option<&'a str>, members: &'a [Member]) -> View<'a> {
    View {
        initialized: true,
        leader,
        members,
        paused: false,
        last_leader_lsn: None,
        sync_standby: None,
        quorum: None,
        voter_lsns: &[],
        failsafe_leader: None,
        failsafe: None,
        last_leader: None,
        switchover: None,
    }
}

#[test]
fn bootstrap_and_clone() {
    let v = View {
        initialized: false,
        ..view(None, &[])
    };
    assert_eq!(
        decide(&v, &local("a", Pg::NoData), &settings()).action,
        Action::Bootstrap
    );
    let ms = [member("a", Role::Primary, true, 10)];
    assert_eq!(
        decide(&view(Some("a"), &ms), &local("b", Pg::NoData), &settings()).action,
        Action::Clone { from: "a".into() }
    );
    // the leader is not up yet
    let ms = [member("a", Role::Primary, false, 10)];
    assert_eq!(
        decide(&view(Some("a"), &ms), &local("b", Pg::NoData), &settings()).action,
        Action::Wait
    );
    assert_eq!(
        decide(&view(None, &[]), &local("b", Pg::NoData), &settings()).action,
        Action::Wait
    );
}

#[test]
fn primary_renews_retakes_or_demotes() {
    let ms = [
        member("a", Role::Primary, true, 10),
        member("b", Role::Replica, true, 10),
    ];
    assert_eq!(
        decide(&view(Some("a"), &ms), &local("a", primary()), &settings()).action,
        Action::RenewLease
    );
    assert_eq!(
        decide(&view(None, &ms), &local("a", primary()), &settings()).action,
        Action::TakeLease
    );
    assert_eq!(
        decide(&view(Some("b"), &ms), &local("a", primary()), &settings()).action,
        Action::Demote { leader: "b".into() }
    );
}

#[test]
fn crash_of_the_leader_restarts_in_place_then_gives_up() {
    let ms = [member("a", Role::Primary, false, 10)];
    let mut l = local("a", Pg::Crashed { was_primary: true });
    assert_eq!(
        decide(&view(Some("a"), &ms), &l, &settings()).action,
        Action::RestartPrimary
    );
    l.crash_restarts = 2;
    assert_eq!(
        decide(&view(Some("a"), &ms), &l, &settings()).action,
        Action::ReleaseLease
    );
}

#[test]
fn former_primary_rewinds_to_the_new_leader() {
    let ms = [member("b", Role::Primary, true, 10)];
    let l = local("a", Pg::Crashed { was_primary: true });
    assert_eq!(
        decide(&view(Some("b"), &ms), &l, &settings()).action,
        Action::Rewind { leader: "b".into() }
    );
    let l = local("c", Pg::Stopped { was_primary: false });
    assert_eq!(
        decide(&view(Some("b"), &ms), &l, &settings()).action,
        Action::StartReplica {
            leader: Some("b".into())
        }
    );
    // a whole-cluster restart: the old primary comes back first
    let l = local("a", Pg::Stopped { was_primary: true });
    assert_eq!(
        decide(&view(None, &[]), &l, &settings()).action,
        Action::StartPrimaryIfFree
    );
    // after a crash with the lease released, a running standby goes first
    let ms = [member("b", Role::Replica, true, 10)];
    let l = local("a", Pg::Crashed { was_primary: true });
    assert_eq!(
        decide(&view(None, &ms), &l, &settings()).action,
        Action::Wait
    );
    // with restarts in place disabled, a crash releases the lease at once
    let s0 = Settings {
        max_crash_restarts: 0,
        ..settings()
    };
    assert_eq!(
        decide(&view(Some("a"), &ms), &l, &s0).action,
        Action::ReleaseLease
    );
}

#[test]
fn failover_goes_to_the_most_advanced_eligible_standby() {
    let ms = [
        member("b", Role::Replica, true, 50),
        member("c", Role::Replica, true, 40),
    ];
    let v = view(None, &ms);
    assert_eq!(
        decide(&v, &local("b", replica(50)), &settings()).action,
        Action::TakeLeaseAndPromote
    );
    assert_eq!(
        decide(&v, &local("c", replica(40)), &settings()).action,
        Action::Wait
    );
    // a tie goes to priority, then to the name
    let mut ms2 = [
        member("b", Role::Replica, true, 50),
        member("c", Role::Replica, true, 50),
    ];
    assert_eq!(
        decide(&view(None, &ms2), &local("b", replica(50)), &settings()).action,
        Action::TakeLeaseAndPromote
    );
    assert_eq!(
        decide(&view(None, &ms2), &local("c", replica(50)), &settings()).action,
        Action::Wait
    );
    ms2[1].priority = 5;
    let mut c = local("c", replica(50));
    c.priority = 5;
    assert_eq!(
        decide(&view(None, &ms2), &c, &settings()).action,
        Action::TakeLeaseAndPromote
    );
    assert_eq!(
        decide(&view(None, &ms2), &local("b", replica(50)), &settings()).action,
        Action::Wait
    );
}

#[test]
fn nofailover_and_lag_are_respected() {
    let ms = [member("b", Role::Replica, true, 50)];
    let mut l = local("b", replica(50));
    l.nofailover = true;
    assert_eq!(
        decide(&view(None, &ms), &l, &settings()).action,
        Action::Wait
    );
    // a nofailover member ahead does not block others
    let mut ms = [
        member("b", Role::Replica, true, 90),
        member("c", Role::Replica, true, 50),
    ];
    ms[0].nofailover = true;
    assert_eq!(
        decide(&view(None, &ms), &local("c", replica(50)), &settings()).action,
        Action::TakeLeaseAndPromote
    );
    // every candidate lags beyond the maximum: no failover
    let ms = [
        member("b", Role::Replica, true, 10),
        member("c", Role::Replica, true, 20),
    ];
    let v = View {
        last_leader_lsn: Some(10_000),
        ..view(None, &ms)
    };
    for n in ["b", "c"] {
        let dd = decide(
            &v,
            &local(n, replica(if n == "b" { 10 } else { 20 })),
            &settings(),
        );
        assert_eq!(dd.action, Action::Wait, "{n}");
        assert!(
            dd.reason.contains("maximum_lag_on_failover"),
            "{}",
            dd.reason
        );
    }
    // a lagging member ahead does not block one within the limit
    let ms = [
        member("b", Role::Replica, true, 9_500),
        member("c", Role::Replica, true, 5_000),
    ];
    let v = View {
        last_leader_lsn: Some(9_800),
        ..view(None, &ms)
    };
    assert_eq!(
        decide(&v, &local("b", replica(9_500)), &settings()).action,
        Action::TakeLeaseAndPromote
    );
    assert_eq!(
        decide(&v, &local("c", replica(5_000)), &settings()).action,
        Action::Wait
    );
}

#[test]
fn synchronous_mode_promotes_only_the_sync_standby() {
    let ms = [
        member("b", Role::Replica, true, 50),
        member("c", Role::Replica, true, 40),
    ];
    let s = Settings {
        synchronous_mode: SyncMode::On,
        ..settings()
    };
    let v = View {
        sync_standby: Some("c"),
        ..view(None, &ms)
    };
    assert_eq!(
        decide(&v, &local("b", replica(50)), &s).action,
        Action::Wait
    );
    // c is behind b, but only c holds every acknowledged commit
    assert_eq!(
        decide(&v, &local("c", replica(40)), &s).action,
        Action::TakeLeaseAndPromote
    );
    // no synchronous standby known: nobody is promoted
    let v = View {
        sync_standby: None,
        ..view(None, &ms)
    };
    assert_eq!(
        decide(&v, &local("b", replica(50)), &s).action,
        Action::Wait
    );
}

#[test]
fn quorum_mode_promotes_a_voter_that_proves_it_has_every_acknowledged_commit() {
    let ms = [
        member("b", Role::Replica, true, 50),
        member("c", Role::Replica, true, 40),
        member("d", Role::Replica, true, 40),
    ];
    let s = Settings {
        synchronous_mode: SyncMode::Quorum,
        ..settings()
    };
    let key = crate::sync::SyncKey {
        leader: "a".into(),
        sync_standby: None,
        voters: vec!["b".into(), "c".into(), "d".into()],
        quorum: 2,
    };
    // b's published position is stale: c reports more WAL just now
    let fresh = [("c".to_string(), 60), ("d".to_string(), 40)];
    let v = View {
        quorum: Some(&key),
        voter_lsns: &fresh,
        ..view(None, &ms)
    };
    assert_eq!(
        decide(&v, &local("b", replica(50)), &s).action,
        Action::Wait
    );
    let fresh = [("b".to_string(), 50), ("d".to_string(), 40)];
    let v = View {
        voter_lsns: &fresh,
        ..v
    };
    assert_eq!(
        decide(&v, &local("c", replica(60)), &s).action,
        Action::TakeLeaseAndPromote
    );
    // one voter of the two needed answered (itself): not proved
    let v = View {
        voter_lsns: &[],
        ..v
    };
    let d = decide(&v, &local("c", replica(60)), &s);
    assert_eq!(d.action, Action::Wait);
    assert!(d.reason.contains("1 of the 2"), "{}", d.reason);
    // no key: nobody
    let v = View { quorum: None, ..v };
    assert_eq!(
        decide(&v, &local("c", replica(60)), &s).action,
        Action::Wait
    );
}

#[test]
fn paused_means_no_failover() {
    let ms = [member("b", Role::Replica, true, 50)];
    let v = View {
        paused: true,
        ..view(None, &ms)
    };
    assert_eq!(
        decide(&v, &local("b", replica(50)), &settings()).action,
        Action::Wait
    );
}

#[test]
fn standby_follows_and_rewinds_when_stuck() {
    let mut ms = [
        member("a", Role::Primary, true, 100),
        member("b", Role::Replica, true, 50),
    ];
    let mut l = local(
        "b",
        Pg::Running {
            primary: false,
            lsn: 50,
            timeline: 1,
            following: Some("127.0.0.1:5000".into()),
            streaming: false,
        },
    );
    assert_eq!(
        decide(&view(Some("a"), &ms), &l, &settings()).action,
        Action::Follow { leader: "a".into() }
    );
    l.not_streaming_loops = 5;
    // same timeline: not a divergence (network, authentication): no rewind
    assert_eq!(
        decide(&view(Some("a"), &ms), &l, &settings()).action,
        Action::Follow { leader: "a".into() }
    );
    // ... unless it lasts much longer
    l.not_streaming_loops = 15;
    assert_eq!(
        decide(&view(Some("a"), &ms), &l, &settings()).action,
        Action::Rewind { leader: "a".into() }
    );
    l.not_streaming_loops = 5;
    ms[0].timeline = 2;
    assert_eq!(
        decide(&view(Some("a"), &ms), &l, &settings()).action,
        Action::Rewind { leader: "a".into() }
    );
    // holding the lease as a standby (promotion interrupted): promote
    assert_eq!(
        decide(&view(Some("b"), &ms), &l, &settings()).action,
        Action::Promote
    );
}

#[test]
fn a_leader_in_failsafe_mode_is_not_replaced() {
    let ms = [member("b", Role::Replica, true, 50)];
    let v = View {
        failsafe_leader: Some("a"),
        ..view(None, &ms)
    };
    let dd = decide(&v, &local("b", replica(50)), &settings());
    assert_eq!(dd.action, Action::Wait);
    assert!(dd.reason.contains("failsafe"), "{}", dd.reason);
}

#[test]
fn a_stale_former_primary_does_not_take_over() {
    // a led, b led after it; b is gone: a must not come back as primary
    let l = local("a", Pg::Stopped { was_primary: true });
    let v = View {
        last_leader: Some("b"),
        ..view(None, &[])
    };
    assert_eq!(
        decide(&v, &l, &settings()).action,
        Action::StartReplica { leader: None }
    );
    let v = View {
        last_leader: Some("a"),
        ..view(None, &[])
    };
    assert_eq!(
        decide(&v, &l, &settings()).action,
        Action::StartPrimaryIfFree
    );
}

#[test]
fn a_crashed_primary_does_not_wait_for_standbys_that_cannot_be_promoted() {
    let mut ms = [member("b", Role::Replica, true, 10)];
    ms[0].nofailover = true;
    let l = local("a", Pg::Crashed { was_primary: true });
    let v = View {
        last_leader: Some("a"),
        ..view(None, &ms)
    };
    assert_eq!(
        decide(&v, &l, &settings()).action,
        Action::StartPrimaryIfFree
    );
    ms[0].nofailover = false;
    let v = View {
        last_leader: Some("a"),
        ..view(None, &ms)
    };
    assert_eq!(decide(&v, &l, &settings()).action, Action::Wait);
}

/// A standby that keeps failing to start (crash loop) or stays starting
/// is rewound (or re-cloned), not restarted forever.
#[test]
fn a_standby_that_keeps_failing_to_start_is_rewound() {
    let ms = vec![
        member("a", Role::Primary, true, 100),
        member("b", Role::Replica, true, 90),
    ];
    let mut l = local("b", Pg::Crashed { was_primary: false });
    assert_eq!(
        decide(&view(Some("a"), &ms), &l, &settings()).action,
        Action::StartReplica {
            leader: Some("a".into())
        }
    );
    l.not_streaming_loops = 15;
    assert_eq!(
        decide(&view(Some("a"), &ms), &l, &settings()).action,
        Action::Rewind { leader: "a".into() }
    );
}

/// Failsafe mode: with the key there, a member the last leader did not
/// list (it was not streaming from it) may not take over; a listed one may.
#[test]
fn failsafe_lets_only_listed_members_take_over() {
    let ms = vec![
        member("b", Role::Replica, true, 100),
        member("c", Role::Replica, true, 90),
    ];
    let key = crate::failsafe::FailsafeKey::of("a", &ms[1..]);
    let mut v = view(None, &ms);
    v.failsafe = Some(&key);
    let b = local(
        "b",
        Pg::Running {
            primary: false,
            lsn: 100,
            timeline: 1,
            following: None,
            streaming: false,
        },
    );
    assert_eq!(decide(&v, &b, &settings()).action, Action::Wait);
    let c = local(
        "c",
        Pg::Running {
            primary: false,
            lsn: 100,
            timeline: 1,
            following: None,
            streaming: false,
        },
    );
    assert_eq!(
        decide(&v, &c, &settings()).action,
        Action::TakeLeaseAndPromote
    );
}
