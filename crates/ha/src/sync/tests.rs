use super::*;
use crate::member::Role;

fn standby(name: &str, lsn: u64) -> Member {
    Member {
        name: name.into(),
        host: "127.0.0.1".into(),
        port: 5000,
        api_url: String::new(),
        role: Role::Replica,
        running: true,
        timeline: 1,
        lsn,
        replayed_lsn: lsn,
        streaming: true,
        lag: None,
        nofailover: false,
        priority: 0,
        pending_restart: false,
        last_action: String::new(),
    }
}

fn key(leader: &str, standby: Option<&str>) -> SyncKey {
    SyncKey {
        leader: leader.into(),
        sync_standby: standby.map(Into::into),
        voters: Vec::new(),
        quorum: 0,
    }
}

fn repl(names: &[(&str, &str)]) -> Vec<(String, String)> {
    names
        .iter()
        .map(|(a, s)| (a.to_string(), s.to_string()))
        .collect()
}

#[test]
fn a_first_standby_is_named_in_postgresql_then_in_the_key_once_sync() {
    let ms = [standby("b", 10), standby("c", 20)];
    let p = plan(
        "a",
        None,
        &repl(&[("b", "async"), ("c", "async")]),
        &ms,
        false,
    );
    assert_eq!(p.key_first, None, "no key: nothing to clear");
    assert_eq!(p.names, "FIRST 1 (\"c\")", "the most advanced standby");
    assert_eq!(p.publish_when_sync.as_deref(), Some("c"));
}

#[test]
fn a_steady_synchronous_standby_changes_nothing() {
    let ms = [standby("b", 10), standby("c", 20)];
    let k = key("a", Some("b"));
    let p = plan(
        "a",
        Some(&k),
        &repl(&[("b", "sync"), ("c", "async")]),
        &ms,
        false,
    );
    assert_eq!(p.key_first, None);
    assert_eq!(p.names, "FIRST 1 (\"b\")", "kept though c is further ahead");
    assert_eq!(p.publish_when_sync, None);
}

/// The defect: PostgreSQL was switched to the new standby while the key
/// still named the old one, which could then be promoted without commits
/// only the new one acknowledged.
#[test]
fn a_change_of_standby_clears_the_key_before_postgresql_changes() {
    let ms = [standby("b", 10), standby("c", 20)];
    let k = key("a", Some("b"));
    // b stopped streaming
    let p = plan("a", Some(&k), &repl(&[("c", "async")]), &ms, false);
    assert_eq!(p.key_first, Some(key("a", None)), "b leaves the key first");
    assert_eq!(p.names, "FIRST 1 (\"c\")");
    assert_eq!(p.publish_when_sync.as_deref(), Some("c"));
}

#[test]
fn without_standbys_the_key_goes_before_postgresql_stops_waiting() {
    let k = key("a", Some("b"));
    let p = plan("a", Some(&k), &[], &[standby("b", 10)], false);
    assert_eq!(p.key_first, Some(key("a", None)));
    assert_eq!(p.names, "");
}

#[test]
fn strict_mode_never_stops_waiting() {
    let k = key("a", Some("b"));
    let p = plan("a", Some(&k), &[], &[standby("b", 10)], true);
    assert_eq!(p.key_first, None, "b keeps every acknowledged commit");
    assert_eq!(p.names, "FIRST 1 (\"b\")", "commits wait for b");
    let p = plan("a", None, &[], &[], true);
    assert_eq!(p.names, "*", "no standby yet: commits wait for any");
}

/// After a failover the key was written by the old leader (and names this
/// node); after an agent restart it is read back from the DCS, not from
/// memory.
#[test]
fn a_key_of_another_leader_is_replaced_first() {
    let ms = [standby("b", 10)];
    let k = key("old", Some("a"));
    let p = plan("a", Some(&k), &repl(&[("b", "async")]), &ms, false);
    assert_eq!(p.key_first, Some(key("a", None)));
    assert_eq!(p.names, "FIRST 1 (\"b\")");
    assert_eq!(p.publish_when_sync.as_deref(), Some("b"));
    let p = plan("a", Some(&k), &[], &[], true);
    assert_eq!(p.key_first, Some(key("a", None)));
    assert_eq!(p.names, "*");
}

#[test]
fn nofailover_standbys_are_never_synchronous() {
    let mut b = standby("b", 10);
    b.nofailover = true;
    let p = plan("a", None, &repl(&[("b", "async")]), &[b], false);
    assert_eq!(p.names, "");
    assert_eq!(p.publish_when_sync, None);
}

#[test]
fn the_key_reads_back() {
    let k = key("a", Some("b"));
    assert_eq!(SyncKey::parse(&k.to_json()), Some(k));
    assert_eq!(
        SyncKey::parse(r#"{"leader":"a","sync_standby":null}"#),
        Some(key("a", None))
    );
    assert_eq!(SyncKey::parse("nonsense"), None);
}

#[test]
fn a_synchronous_standby_whose_member_key_expired_is_replaced() {
    // b is cut off: PostgreSQL still lists it as streaming (until
    // wal_sender_timeout), but its member key has expired
    let ms = [standby("c", 20)];
    let k = key("a", Some("b"));
    let p = plan(
        "a",
        Some(&k),
        &repl(&[("b", "sync"), ("c", "async")]),
        &ms,
        false,
    );
    assert_eq!(p.key_first, Some(key("a", None)), "b leaves the key first");
    assert_eq!(p.names, "FIRST 1 (\"c\")");
    assert_eq!(p.publish_when_sync.as_deref(), Some("c"));
}
