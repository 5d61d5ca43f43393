use super::*;
use crate::member::Role;

fn standby(name: &str) -> Member {
    Member {
        name: name.into(),
        host: "127.0.0.1".into(),
        port: 5000,
        api_url: String::new(),
        role: Role::Replica,
        running: true,
        timeline: 1,
        lsn: 0,
        replayed_lsn: 0,
        streaming: true,
        lag: None,
        nofailover: false,
        priority: 0,
        pending_restart: false,
        last_action: String::new(),
    }
}

fn s(name: &str, state: &str, flush: u64) -> Streaming {
    Streaming {
        name: name.into(),
        sync_state: state.into(),
        flush_lsn: flush,
    }
}

fn k(leader: &str, voters: &[&str], quorum: u32) -> SyncKey {
    SyncKey {
        leader: leader.into(),
        sync_standby: None,
        voters: voters.iter().map(|v| v.to_string()).collect(),
        quorum,
    }
}

/// Whether a key stays true while PostgreSQL runs `(s, kk)`: every set of
/// `kk` members of `s` meets every `|V| - q + 1` members of `V`.
fn key_holds_under(key: &SyncKey, s: &[&str], kk: u32) -> bool {
    if key.quorum == 0 {
        return true; // nobody may be promoted: trivially safe
    }
    let outside = s
        .iter()
        .filter(|n| !key.voters.iter().any(|v| v == *n))
        .count() as i64;
    kk as i64 - outside >= key.quorum as i64
}

#[test]
fn names_list_the_voters_under_any() {
    assert_eq!(
        names_for(&["b".into(), "c".into()], 1),
        "ANY 1 (\"b\", \"c\")"
    );
    assert_eq!(names_for(&[], 1), "");
    assert_eq!(names_for(&["b".into()], 0), "");
}

#[test]
fn a_first_pass_writes_an_empty_quorum_first_then_the_voters_once_caught_up() {
    let ms = [standby("b"), standby("c")];
    let st = [s("b", "async", 10), s("c", "async", 10)];
    let p = plan("a", None, &st, &ms, 1, false);
    assert_eq!(
        p.key_first,
        Some(k("a", &["b", "c"], 0)),
        "voters listed, nobody promotable yet"
    );
    assert_eq!(p.names, "ANY 1 (\"b\", \"c\")");
    assert_eq!(p.target, k("a", &["b", "c"], 1));
    assert!(key_holds_under(
        p.key_first.as_ref().unwrap(),
        &["b", "c"],
        1
    ));
}

#[test]
fn a_steady_quorum_changes_nothing() {
    let ms = [standby("b"), standby("c")];
    let st = [s("b", "quorum", 10), s("c", "quorum", 10)];
    let cur = k("a", &["b", "c"], 1);
    let p = plan("a", Some(&cur), &st, &ms, 1, false);
    assert_eq!(p.key_first, None);
    assert_eq!(p.target, cur);
}

#[test]
fn a_new_standby_is_added_to_the_key_before_postgresql_waits_for_it() {
    let ms = [standby("b"), standby("c"), standby("d")];
    let st = [
        s("b", "quorum", 10),
        s("c", "quorum", 10),
        s("d", "async", 5),
    ];
    let cur = k("a", &["b", "c"], 1);
    let p = plan("a", Some(&cur), &st, &ms, 2, false);
    let first = p.key_first.clone().expect("widened first");
    assert_eq!(first, k("a", &["b", "c", "d"], 1));
    // true under the old setting, and under the new one
    assert!(key_holds_under(&first, &["b", "c"], 1));
    assert!(key_holds_under(&first, &["b", "c", "d"], 2));
    assert_eq!(p.names, "ANY 2 (\"b\", \"c\", \"d\")");
    assert_eq!(p.target, k("a", &["b", "c", "d"], 2));
}

#[test]
fn a_departed_standby_leaves_the_key_only_after_postgresql_stopped_waiting_for_it() {
    // c stopped streaming: PostgreSQL's setting drops it first, the key
    // keeps it (and a smaller quorum) until the survivors caught up
    let ms = [standby("b"), standby("c")];
    let st = [s("b", "quorum", 10)];
    let cur = k("a", &["b", "c"], 2);
    let p = plan("a", Some(&cur), &st, &ms, 2, false);
    let first = p.key_first.clone().expect("quorum lowered first");
    assert_eq!(first, k("a", &["b", "c"], 1));
    assert!(key_holds_under(&first, &["b", "c"], 2), "old setting");
    assert!(key_holds_under(&first, &["b"], 1), "new setting");
    assert_eq!(p.names, "ANY 1 (\"b\")");
    assert_eq!(p.target, k("a", &["b"], 1));
    assert!(key_holds_under(&p.target, &["b"], 1));
}

#[test]
fn every_step_of_every_change_keeps_the_key_true() {
    let all = ["b", "c", "d"];
    let sets: Vec<Vec<&str>> = (1u32..8)
        .map(|mask| {
            all.iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, n)| *n)
                .collect()
        })
        .collect();
    for from in &sets {
        for to in &sets {
            for kk in 1..=3u32 {
                for kk2 in 1..=3u32 {
                    let k_from = kk.min(from.len() as u32);
                    let cur = k("a", from, k_from);
                    let ms: Vec<Member> = all.iter().map(|n| standby(n)).collect();
                    let st: Vec<Streaming> = to.iter().map(|n| s(n, "quorum", 1)).collect();
                    let p = plan("a", Some(&cur), &st, &ms, kk2, false);
                    let k_to = kk2.min(to.len() as u32);
                    let first = p.key_first.clone().unwrap_or(cur.clone());
                    assert!(
                        key_holds_under(&first, from, k_from),
                        "{from:?}/{k_from} -> {to:?}/{k_to}: step 1 vs old"
                    );
                    assert!(
                        key_holds_under(&first, to, k_to),
                        "{from:?}/{k_from} -> {to:?}/{k_to}: step 1 vs new"
                    );
                    assert_eq!(
                        p.names,
                        names_for(&to.iter().map(|x| x.to_string()).collect::<Vec<_>>(), k_to)
                    );
                    assert!(key_holds_under(&p.target, to, k_to), "step 3 vs new");
                }
            }
        }
    }
}

#[test]
fn a_key_of_another_leader_promises_nothing_and_is_replaced_first() {
    let ms = [standby("a"), standby("c")];
    let st = [s("c", "async", 10)];
    let old = k("a", &["b", "c"], 1);
    let p = plan("b", Some(&old), &st, &ms, 1, false);
    assert_eq!(p.key_first, Some(k("b", &["c"], 0)));
    assert_eq!(p.target, k("b", &["c"], 1));
}

#[test]
fn without_standbys_non_strict_falls_back_to_asynchronous() {
    let ms = [standby("b")];
    let cur = k("a", &["b"], 1);
    let p = plan("a", Some(&cur), &[], &ms, 1, false);
    assert_eq!(
        p.key_first,
        Some(k("a", &["b"], 0)),
        "nobody promotable before commits stop waiting"
    );
    assert_eq!(p.names, "");
    assert_eq!(p.target, k("a", &[], 0));
}

#[test]
fn without_standbys_strict_keeps_commits_waiting() {
    let ms = [standby("b")];
    let cur = k("a", &["b"], 1);
    let p = plan("a", Some(&cur), &[], &ms, 1, true);
    assert_eq!(p.key_first, None);
    assert_eq!(p.names, "ANY 1 (\"b\")");
    assert_eq!(p.target, cur);
    let fresh = plan("a", None, &[], &ms, 1, true);
    assert_eq!(fresh.names, "ANY 1 (*)");
    assert_eq!(fresh.key_first, Some(k("a", &[], 0)));
}

#[test]
fn nofailover_standbys_are_not_voters() {
    let mut c = standby("c");
    c.nofailover = true;
    let ms = [standby("b"), c];
    let st = [s("b", "quorum", 1), s("c", "async", 1)];
    let p = plan("a", Some(&k("a", &["b"], 1)), &st, &ms, 1, false);
    assert_eq!(p.target, k("a", &["b"], 1));
    assert_eq!(p.key_first, None);
}

#[test]
fn the_key_narrows_once_enough_voters_flushed_past_the_switch() {
    let target = k("a", &["b", "c"], 2);
    assert!(!caught_up(
        &target,
        &[s("b", "quorum", 100), s("c", "quorum", 99)],
        100
    ));
    assert!(caught_up(
        &target,
        &[s("b", "quorum", 100), s("c", "quorum", 120)],
        100
    ));
    assert!(
        !caught_up(&target, &[s("b", "quorum", 100), s("c", "async", 120)], 100),
        "c not yet listed under ANY"
    );
    assert!(caught_up(&k("a", &[], 0), &[], 100));
}

#[test]
fn a_voter_with_the_wal_of_enough_voters_may_be_promoted() {
    let key = k("a", &["b", "c", "d"], 2); // need 3 - 2 + 1 = 2 voters
    assert_eq!(may_promote("b", 100, &key, &[("c".into(), 90)]), Ok(()));
    assert!(may_promote("b", 100, &key, &[])
        .unwrap_err()
        .contains("1 of the 2"));
    assert!(may_promote("b", 100, &key, &[("d".into(), 101)])
        .unwrap_err()
        .contains("voter d has more WAL"));
    assert!(may_promote("e", 100, &key, &[])
        .unwrap_err()
        .contains("not among the voters"));
    assert!(may_promote("b", 100, &k("a", &["b", "c"], 0), &[("c".into(), 1)]).is_err());
    // all voters acknowledge (q = |V|): any voter alone has every commit
    assert_eq!(may_promote("b", 5, &k("a", &["b", "c"], 2), &[]), Ok(()));
}
