use super::*;
use crate::decide::decide;
use crate::member::Member;

fn member(name: &str, role: Role, lsn: u64) -> Member {
    Member {
        name: name.into(),
        host: "127.0.0.1".into(),
        port: 5000,
        api_url: String::new(),
        role,
        running: true,
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
        synchronous_mode: crate::SyncMode::Off,
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

fn running(primary: bool, lsn: u64) -> Pg {
    Pg::Running {
        primary,
        lsn,
        timeline: 1,
        following: None,
        streaming: !primary,
    }
}

fn view<'a>(leader: Option<&'a str>, members: &'a [Member], req: &'a Switchover) -> View<'a> {
    View {
        initialized: true,
        leader,
        members,
        paused: false,
        last_leader_lsn: Some(5000),
        sync_standby: None,
        quorum: None,
        voter_lsns: &[],
        failsafe_leader: None,
        failsafe: None,
        last_leader: Some("a"),
        switchover: Some(req),
    }
}

fn req(leader: Option<&str>, candidate: Option<&str>) -> Switchover {
    Switchover {
        leader: leader.map(Into::into),
        candidate: candidate.map(Into::into),
        scheduled_at_ms: None,
        requested_at_ms: 1,
        chosen: None,
    }
}

fn cluster() -> [Member; 3] {
    [
        member("a", Role::Primary, 5000),
        member("b", Role::Replica, 4900),
        member("c", Role::Replica, 5000),
    ]
}

#[test]
fn the_leader_steps_down_for_a_streaming_caught_up_candidate() {
    let ms = cluster();
    let r = req(Some("a"), Some("b"));
    let dec = decide(
        &view(Some("a"), &ms, &r),
        &local("a", running(true, 5000)),
        &settings(),
    );
    assert_eq!(
        dec.action,
        Action::Switchover(Step::Demote {
            candidate: "b".into()
        })
    );
    assert!(dec.reason.contains("switchover to b"), "{}", dec.reason);
}

#[test]
fn without_a_candidate_the_leader_picks_the_most_advanced_standby() {
    let ms = cluster();
    let r = req(Some("a"), None);
    let dec = decide(
        &view(Some("a"), &ms, &r),
        &local("a", running(true, 5000)),
        &settings(),
    );
    assert_eq!(
        dec.action,
        Action::Switchover(Step::Demote {
            candidate: "c".into()
        })
    );
}

#[test]
fn the_leader_waits_for_a_candidate_that_lags_or_does_not_stream() {
    let mut ms = cluster();
    let r = req(Some("a"), Some("b"));
    let dec = decide(
        &view(Some("a"), &ms, &r),
        &local("a", running(true, 9000)),
        &settings(),
    );
    assert_eq!(dec.action, Action::RenewLease);
    assert!(dec.reason.contains("b lags 4100 bytes"), "{}", dec.reason);
    ms[1].streaming = false;
    let dec = decide(
        &view(Some("a"), &ms, &r),
        &local("a", running(true, 5000)),
        &settings(),
    );
    assert_eq!(dec.action, Action::RenewLease);
    assert!(dec.reason.contains("not streaming"), "{}", dec.reason);
    let r = req(Some("a"), Some("zz"));
    let dec = decide(
        &view(Some("a"), &ms, &r),
        &local("a", running(true, 5000)),
        &settings(),
    );
    assert!(dec.reason.contains("zz is not a member"), "{}", dec.reason);
    ms[1].nofailover = true;
    ms[2].streaming = false;
    let r = req(Some("a"), None);
    let dec = decide(
        &view(Some("a"), &ms, &r),
        &local("a", running(true, 5000)),
        &settings(),
    );
    assert_eq!(dec.action, Action::RenewLease);
    assert!(dec.reason.contains("no standby"), "{}", dec.reason);
}

#[test]
fn in_synchronous_mode_only_the_synchronous_standby_may_take_over() {
    let ms = cluster();
    let r = req(Some("a"), Some("c"));
    let s = Settings {
        synchronous_mode: crate::SyncMode::On,
        ..settings()
    };
    let v = View {
        sync_standby: Some("b"),
        ..view(Some("a"), &ms, &r)
    };
    let dec = decide(&v, &local("a", running(true, 5000)), &s);
    assert_eq!(dec.action, Action::RenewLease);
    assert!(dec.reason.contains("may not be promoted"), "{}", dec.reason);
}

#[test]
fn after_the_leader_stepped_down_only_the_chosen_member_takes_over() {
    let ms = cluster();
    let mut r = req(Some("a"), None);
    r.chosen = Some("c".into());
    let v = view(None, &ms, &r);
    assert_eq!(
        decide(&v, &local("c", running(false, 5000)), &settings()).action,
        Action::TakeLeaseAndPromote
    );
    // b would be a candidate by the usual rules, but waits
    let dec = decide(&v, &local("b", running(false, 5000)), &settings());
    assert_eq!(dec.action, Action::Wait);
    assert!(dec.reason.contains("switchover to c"), "{}", dec.reason);
    // the old leader, stopped, does not take its lease back
    let dec = decide(
        &v,
        &local("a", Pg::Stopped { was_primary: true }),
        &settings(),
    );
    assert_eq!(dec.action, Action::Wait);
    // also in maintenance mode
    let paused = View {
        paused: true,
        ..view(None, &ms, &r)
    };
    assert_eq!(
        decide(&paused, &local("c", running(false, 5000)), &settings()).action,
        Action::TakeLeaseAndPromote
    );
}

#[test]
fn the_candidate_needs_the_old_leaders_last_position_in_a_switchover() {
    let ms = cluster();
    let mut r = req(Some("a"), Some("b"));
    r.chosen = Some("b".into());
    let dec = decide(
        &view(None, &ms, &r),
        &local("b", running(false, 4990)),
        &settings(),
    );
    assert_eq!(dec.action, Action::Wait);
    assert!(dec.reason.contains("10 bytes"), "{}", dec.reason);
    // a failover accepts maximum_lag_on_failover
    let r = req(None, Some("b"));
    assert_eq!(
        decide(
            &view(None, &ms, &r),
            &local("b", running(false, 4990)),
            &settings()
        )
        .action,
        Action::TakeLeaseAndPromote
    );
}

#[test]
fn a_candidate_that_is_gone_leaves_the_usual_rules() {
    let mut ms = cluster();
    ms[2].running = false;
    let mut r = req(Some("a"), None);
    r.chosen = Some("c".into());
    // b is the best remaining candidate by the usual rules
    let dec = decide(
        &view(None, &ms, &r),
        &local("b", running(false, 5000)),
        &settings(),
    );
    assert_eq!(dec.action, Action::TakeLeaseAndPromote);
    assert!(!dec.reason.contains("switchover"), "{}", dec.reason);
}

#[test]
fn the_new_leader_completes_the_request_and_a_stale_one_is_dropped() {
    let ms = cluster();
    let mut r = req(Some("a"), Some("b"));
    r.chosen = Some("b".into());
    assert_eq!(
        decide(
            &view(Some("b"), &ms, &r),
            &local("b", running(true, 5000)),
            &settings()
        )
        .action,
        Action::Switchover(Step::Done)
    );
    // the old leader follows the new one as usual
    assert_eq!(
        decide(
            &view(Some("b"), &ms, &r),
            &local("a", Pg::Stopped { was_primary: true }),
            &settings()
        )
        .action,
        Action::Rewind { leader: "b".into() }
    );
    // a switchover from a member that does not lead
    let r = req(Some("x"), Some("b"));
    assert_eq!(
        decide(
            &view(Some("a"), &ms, &r),
            &local("a", running(true, 5000)),
            &settings()
        )
        .action,
        Action::Switchover(Step::Cancel)
    );
}

#[test]
fn a_failover_with_a_running_leader_is_carried_out_like_a_switchover() {
    let ms = cluster();
    let r = req(None, Some("c"));
    assert_eq!(
        decide(
            &view(Some("a"), &ms, &r),
            &local("a", running(true, 5000)),
            &settings()
        )
        .action,
        Action::Switchover(Step::Demote {
            candidate: "c".into()
        })
    );
}

#[test]
fn schedule_and_expiry() {
    let mut r = req(Some("a"), None);
    r.requested_at_ms = 1_000;
    r.scheduled_at_ms = Some(10_000);
    assert!(!r.due(9_999));
    assert!(r.due(10_000));
    assert!(!r.expired(10_000 + EXPIRES_MS));
    assert!(r.expired(10_001 + EXPIRES_MS));
    assert_eq!(Switchover::parse(&r.to_json()), Some(r));
    assert_eq!(Switchover::parse("{\"requested_at_ms\":1,\"x\":2}"), None);
}
