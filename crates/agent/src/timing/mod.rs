//! The loop's timing, with fakes and tokio's paused clock: a promotion
//! longer than the TTL, a renewal refused in the middle of one, a slow
//! DCS, a DCS that stops answering. What must hold in each: PostgreSQL is
//! never writable on a lease this node cannot prove, and the fence would
//! stop it before the lease can expire.
mod fakes;

use std::path::Path;
use std::time::Duration;

use ha::{Member, Role};
use tokio::time::Instant;

use crate::driver::Agent;
use fakes::{FakeDcs, FakeFence, FakeNode};

const TTL: Duration = Duration::from_secs(5);

fn cfg() -> config::AgentConfig {
    let text = "[agent]\nname = \"a\"\ndata_dir = \"/nonexistent/a\"\npg_port = 5999\nttl = \"5s\"\nloop_wait = \"1s\"\n";
    config::parse(text, Path::new("a.toml"))
        .expect("valid")
        .agent
        .expect("agent section")
}

fn member(name: &str, role: Role, lsn: u64) -> String {
    Member {
        name: name.into(),
        host: "127.0.0.1".into(),
        port: 5999,
        api_url: String::new(),
        role,
        running: true,
        timeline: 1,
        lsn,
        replayed_lsn: lsn,
        streaming: false,
        lag: None,
        nofailover: false,
        priority: 0,
        pending_restart: false,
        last_action: String::new(),
    }
    .to_json()
}

struct Parts {
    dcs: FakeDcs,
    node: FakeNode,
    fence: FakeFence,
    agent: Agent<FakeDcs, FakeNode, FakeFence>,
}

fn parts() -> Parts {
    let (dcs, node, fence) = (FakeDcs::new(), FakeNode::default(), FakeFence::default());
    let agent = Agent::with_parts(cfg(), dcs.clone(), node.clone(), fence.clone());
    Parts {
        dcs,
        node,
        fence,
        agent,
    }
}

/// A standby with no leader in the DCS: the next pass takes the lease
/// and promotes it.
fn lone_standby(p: &Parts, promote_takes: Duration, checkpoint_takes: Duration) {
    p.node.with(|s| {
        s.running = true;
        s.in_recovery = true;
        s.lsn = 100;
        s.promote_takes = promote_takes;
        s.checkpoint_takes = checkpoint_takes;
    });
    p.dcs.with(|s| {
        s.members
            .insert("a".into(), member("a", Role::Replica, 100))
    });
}

/// A primary holding a lease it took at `Instant::now()`.
fn leading_primary(p: &Parts) {
    p.node.with(|s| {
        s.running = true;
        s.in_recovery = false;
        s.lsn = 100;
    });
    p.dcs.with(|s| {
        s.epoch = 1;
        s.leader = Some(("a".into(), 1, Instant::now() + TTL));
        s.members
            .insert("a".into(), member("a", Role::Primary, 100));
    });
}

/// Every arm of the fence came before the previous deadline (no gap), and
/// every deadline is before the lease proved by a renewal sent before the
/// arm can expire.
fn fence_fed_without_gap_within_the_lease(fence: &FakeFence, dcs: &FakeDcs) {
    let arms = fence.arms.lock().unwrap().clone();
    let renewals = dcs.with(|s| s.renewals.clone());
    assert!(!arms.is_empty(), "the fence was never armed");
    for w in arms.windows(2) {
        assert!(w[1].0 < w[0].1, "the fence went unfed: {w:?}");
    }
    for (at, deadline) in &arms[1..] {
        let proof = renewals
            .iter()
            .filter(|(sent, ok)| *ok && sent <= at)
            .map(|(sent, _)| *sent)
            .max()
            .expect("armed after a kept renewal");
        assert!(
            *deadline < proof + TTL,
            "the fence would fire after the lease expired"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_promotion_longer_than_the_ttl_keeps_the_lease_and_the_fence_fed() {
    let mut p = parts();
    lone_standby(&p, Duration::from_secs(12), Duration::from_secs(7));
    let t0 = Instant::now();
    let sentence = p.agent.run_once().await;
    assert!(sentence.contains("promoted"), "{sentence}");
    assert!(
        t0.elapsed() >= Duration::from_secs(19),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(
        p.dcs.holder().as_deref(),
        Some("a"),
        "the lease outlived the promotion"
    );
    assert!(p.node.writable());
    assert!(p.node.with(|s| s.stops.is_empty()), "never stopped");
    let renewals = p.dcs.with(|s| s.renewals.clone());
    assert!(
        renewals.len() >= 18,
        "renewed every loop_wait: {}",
        renewals.len()
    );
    for w in renewals.windows(2) {
        assert!(
            w[1].0 - w[0].0 <= Duration::from_millis(1100),
            "a gap in the renewals"
        );
    }
    fence_fed_without_gap_within_the_lease(&p.fence, &p.dcs);
}

#[tokio::test(start_paused = true)]
async fn a_renewal_refused_during_a_promotion_stops_postgresql_before_the_lease_can_expire() {
    let mut p = parts();
    lone_standby(&p, Duration::from_secs(30), Duration::ZERO);
    p.dcs.with(|s| s.refuse_from = Some(3));
    let sentence = p.agent.run_once().await;
    assert!(sentence.contains("could not be renewed"), "{sentence}");
    let stops = p.node.with(|s| s.stops.clone());
    let last_kept = p
        .dcs
        .with(|s| {
            s.renewals
                .iter()
                .filter(|(_, ok)| *ok)
                .map(|(t, _)| *t)
                .max()
        })
        .expect("kept renewals before the refusal");
    assert_eq!(stops.len(), 1, "stopped once");
    assert!(
        stops[0] < last_kept + TTL,
        "stopped before the lease could expire"
    );
    assert!(!p.node.writable());
    assert!(
        !p.fence.disarms.lock().unwrap().is_empty(),
        "fence disarmed once stopped"
    );
}

#[tokio::test(start_paused = true)]
async fn a_slow_renewal_proves_the_lease_from_when_it_was_sent() {
    let mut p = parts();
    leading_primary(&p);
    p.dcs.with(|s| s.renew_delay = Duration::from_secs(3));
    let t0 = Instant::now();
    let sentence = p.agent.run_once().await;
    assert!(sentence.contains("renewed"), "{sentence}");
    let arms = p.fence.arms.lock().unwrap().clone();
    let (at, deadline) = arms[0];
    assert!(
        at - t0 >= Duration::from_secs(3),
        "armed when the answer came"
    );
    assert!(
        deadline - t0 <= TTL - crate::fence::MARGIN,
        "counted from the request, not the answer: {:?}",
        deadline - t0
    );
}

#[tokio::test(start_paused = true)]
async fn a_primary_that_loses_the_dcs_stops_before_its_lease_can_expire() {
    let mut p = parts();
    leading_primary(&p);
    let sentence = p.agent.run_once().await;
    assert!(sentence.contains("renewed"), "{sentence}");
    let t0 = p.dcs.with(|s| s.renewals[0].0);
    p.dcs.with(|s| s.unavailable = true);
    let mut passes = 0;
    while p.node.is_running_now() && passes < 20 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let s = p.agent.run_once().await;
        assert!(s.contains("DCS unavailable"), "{s}");
        passes += 1;
    }
    let stops = p.node.with(|s| s.stops.clone());
    assert_eq!(stops.len(), 1, "stopped once");
    assert!(
        stops[0] < t0 + TTL,
        "stopped {:?} after the last renewal",
        stops[0] - t0
    );
    assert!(
        stops[0] - t0 >= Duration::from_secs(2),
        "not at the first failed read"
    );
}

#[tokio::test(start_paused = true)]
async fn a_promotion_that_never_ends_gives_the_lease_up_and_stops_postgresql() {
    let mut p = parts();
    lone_standby(&p, Duration::from_secs(3600), Duration::ZERO);
    let sentence = p.agent.run_once().await;
    assert!(sentence.contains("released the lease"), "{sentence}");
    assert_eq!(p.dcs.holder(), None, "another candidate may try");
    assert_eq!(
        p.node.with(|s| s.stops.len()),
        1,
        "stopped: it must not end the promotion later"
    );
    assert!(!p.node.writable());
}
