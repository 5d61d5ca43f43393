//! One test suite every backend must pass: the contract of [`Dcs`].
//! Each check takes a fresh, empty store from `make`.
use std::time::Duration;

use crate::{Dcs, Key};

const TTL: Duration = Duration::from_secs(2);

/// Runs every check; panics with the name of the first one that fails.
pub async fn run<D: Dcs, F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = D>,
{
    initialize_once(make().await).await;
    leader_lease(make().await).await;
    leader_expires(make().await).await;
    release_lets_others_in_at_once(make().await).await;
    members_expire(make().await).await;
    keys_and_compare_and_set(make().await).await;
    watch_sees_changes(make().await).await;
    named_leases_stand_apart(make().await).await;
    named_lease_expires(make().await).await;
    proxies_expire(make().await).await;
}

async fn initialize_once<D: Dcs>(d: D) {
    assert!(
        d.initialize("a").await.unwrap(),
        "initialize: first caller wins"
    );
    assert!(
        !d.initialize("b").await.unwrap(),
        "initialize: second caller loses"
    );
    assert_eq!(d.snapshot().await.unwrap().initialize.as_deref(), Some("a"));
    d.cancel_initialize("b").await.unwrap();
    assert_eq!(
        d.snapshot().await.unwrap().initialize.as_deref(),
        Some("a"),
        "cancel by a non-owner is ignored"
    );
    d.cancel_initialize("a").await.unwrap();
    assert!(d.snapshot().await.unwrap().initialize.is_none());
    assert!(d.initialize("b").await.unwrap());
}

async fn leader_lease<D: Dcs>(d: D) {
    let l = d.take_leader("n1", TTL).await.unwrap().expect("lease free");
    assert_eq!(l.name, "n1");
    assert!(
        d.take_leader("n2", TTL).await.unwrap().is_none(),
        "lease held by n1"
    );
    assert!(d.renew_leader("n1", TTL).await.unwrap());
    assert!(
        !d.renew_leader("n2", TTL).await.unwrap(),
        "only the holder renews"
    );
    let again = d
        .take_leader("n1", TTL)
        .await
        .unwrap()
        .expect("holder may take again");
    assert_eq!(again.epoch, l.epoch, "same holder, same epoch");
    assert_eq!(d.snapshot().await.unwrap().leader, Some(l));
}

async fn leader_expires<D: Dcs>(d: D) {
    let l1 = d
        .take_leader("n1", Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2600)).await;
    assert!(
        d.snapshot().await.unwrap().leader.is_none(),
        "lease expired"
    );
    assert!(
        !d.renew_leader("n1", TTL).await.unwrap(),
        "an expired lease cannot be renewed"
    );
    let l2 = d
        .take_leader("n2", TTL)
        .await
        .unwrap()
        .expect("expired lease is free");
    assert!(l2.epoch > l1.epoch, "epoch grows with each holder");
}

async fn release_lets_others_in_at_once<D: Dcs>(d: D) {
    let l1 = d.take_leader("n1", TTL).await.unwrap().unwrap();
    d.release_leader("n2").await.unwrap();
    assert!(
        d.snapshot().await.unwrap().leader.is_some(),
        "release by a non-holder is ignored"
    );
    d.release_leader("n1").await.unwrap();
    let l2 = d
        .take_leader("n2", TTL)
        .await
        .unwrap()
        .expect("released lease is free at once");
    assert!(l2.epoch > l1.epoch);
    d.release_leader("n2").await.unwrap();
    let l3 = d.take_leader("n1", TTL).await.unwrap().unwrap();
    assert!(
        l3.epoch > l2.epoch,
        "epochs never go back, even for an earlier holder"
    );
}

async fn members_expire<D: Dcs>(d: D) {
    d.put_member("n1", "{\"a\":1}", Duration::from_secs(1))
        .await
        .unwrap();
    d.put_member("n2", "{\"b\":2}", Duration::from_secs(30))
        .await
        .unwrap();
    let s = d.snapshot().await.unwrap();
    assert_eq!(s.members.get("n1").map(String::as_str), Some("{\"a\":1}"));
    assert_eq!(s.members.len(), 2);
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let s = d.snapshot().await.unwrap();
    assert!(!s.members.contains_key("n1"), "member key expired");
    assert!(s.members.contains_key("n2"));
    d.delete_member("n2").await.unwrap();
    assert!(d.snapshot().await.unwrap().members.is_empty());
}

async fn keys_and_compare_and_set<D: Dcs>(d: D) {
    d.put(Key::Config, Some("v1")).await.unwrap();
    assert_eq!(d.snapshot().await.unwrap().get(Key::Config), Some("v1"));
    assert!(!d
        .compare_and_set(Key::Config, Some("old"), "v2")
        .await
        .unwrap());
    assert!(d
        .compare_and_set(Key::Config, Some("v1"), "v2")
        .await
        .unwrap());
    assert_eq!(d.snapshot().await.unwrap().get(Key::Config), Some("v2"));
    assert!(
        d.compare_and_set(Key::History, None, "[]").await.unwrap(),
        "absent expected"
    );
    assert!(!d.compare_and_set(Key::History, None, "[1]").await.unwrap());
    d.put(Key::Pause, Some("true")).await.unwrap();
    d.put(Key::Pause, None).await.unwrap();
    assert_eq!(d.snapshot().await.unwrap().get(Key::Pause), None);
}

async fn watch_sees_changes<D: Dcs>(d: D) {
    let mut w = d.watch_leader();
    let l = d.take_leader("n1", TTL).await.unwrap().unwrap();
    tokio::time::timeout(
        Duration::from_secs(2),
        w.wait_for(|v| v.as_ref() == Some(&l)),
    )
    .await
    .expect("watch saw the new leader")
    .unwrap();
    d.release_leader("n1").await.unwrap();
    tokio::time::timeout(Duration::from_secs(2), w.wait_for(|v| v.is_none()))
        .await
        .expect("watch saw the release")
        .unwrap();
}

async fn named_leases_stand_apart<D: Dcs>(d: D) {
    let leader = d.take_leader("n1", TTL).await.unwrap().unwrap();
    let vip = d
        .take_lease("vip", "p1", TTL)
        .await
        .unwrap()
        .expect("a named lease is not the leader's");
    assert_eq!(vip.name, "p1");
    assert!(
        d.take_lease("vip", "p2", TTL).await.unwrap().is_none(),
        "named lease held by p1"
    );
    assert!(
        d.take_lease("other", "p2", TTL).await.unwrap().is_some(),
        "each name is a lease of its own"
    );
    assert!(d.renew_lease("vip", "p1", TTL).await.unwrap());
    assert!(
        !d.renew_lease("vip", "p2", TTL).await.unwrap(),
        "only the holder renews a named lease"
    );
    let s = d.snapshot().await.unwrap();
    assert_eq!(s.leases.get("vip"), Some(&vip));
    assert_eq!(s.leader, Some(leader.clone()), "the leader is untouched");
    d.release_lease("vip", "p2").await.unwrap();
    assert!(d.snapshot().await.unwrap().leases.contains_key("vip"));
    d.release_lease("vip", "p1").await.unwrap();
    let s = d.snapshot().await.unwrap();
    assert!(!s.leases.contains_key("vip"), "released");
    assert_eq!(
        s.leader,
        Some(leader),
        "releasing a named lease keeps the leader"
    );
    let v2 = d
        .take_lease("vip", "p2", TTL)
        .await
        .unwrap()
        .expect("released named lease is free at once");
    assert!(v2.epoch > vip.epoch, "a named lease's epoch grows");
    assert!(
        d.take_lease("bad/name", "p1", TTL).await.is_err(),
        "lease names are checked"
    );
}

async fn named_lease_expires<D: Dcs>(d: D) {
    d.take_lease("vip", "p1", Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2600)).await;
    assert!(
        !d.snapshot().await.unwrap().leases.contains_key("vip"),
        "named lease expired"
    );
    assert!(!d.renew_lease("vip", "p1", TTL).await.unwrap());
    assert!(d.take_lease("vip", "p2", TTL).await.unwrap().is_some());
}

async fn proxies_expire<D: Dcs>(d: D) {
    d.put_proxy("p1", "{\"a\":1}", Duration::from_secs(1))
        .await
        .unwrap();
    d.put_proxy("p2", "{\"b\":2}", Duration::from_secs(30))
        .await
        .unwrap();
    d.put_member("p1", "member", Duration::from_secs(30))
        .await
        .unwrap();
    let s = d.snapshot().await.unwrap();
    assert_eq!(s.proxies.get("p1").map(String::as_str), Some("{\"a\":1}"));
    assert_eq!(s.proxies.len(), 2);
    assert_eq!(
        s.members.get("p1").map(String::as_str),
        Some("member"),
        "proxies and members are apart"
    );
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let s = d.snapshot().await.unwrap();
    assert!(!s.proxies.contains_key("p1"), "proxy key expired");
    assert!(s.proxies.contains_key("p2"));
    d.delete_proxy("p2").await.unwrap();
    assert!(d.snapshot().await.unwrap().proxies.is_empty());
}
