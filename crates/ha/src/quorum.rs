//! Quorum commit, as Patroni 4's `synchronous_mode: quorum`: PostgreSQL
//! waits for `k` of the listed standbys (`ANY k (b, c, ...)`), and the DCS
//! Sync key names the voters `V` and the quorum `q` such that every
//! acknowledged commit is on at least `q` of `V`. A voter may then be
//! promoted when it holds at least the WAL of `|V| - q + 1` voters,
//! itself included: any `q` voters that acknowledged a commit meet that
//! set, so the candidate has the commit.
//!
//! The key must stay true while PostgreSQL's setting changes from `(S, k)`
//! to `(S', k')`. A commit acknowledged under `(S, k)` is on `k` members of
//! `S`, so a key `(V, q)` stays true while `k - |S \ V| >= q`. The leader
//! therefore (1) widens the key to `(S ∪ S', min(k, k'))`, (2) sets
//! PostgreSQL to `(S', k')`, and (3) narrows the key to `(S', k')` only
//! once `k'` members of `S'` have flushed past a WAL position taken after
//! the new setting was in force: older commits are then on them too.
use std::collections::BTreeSet;

use crate::member::Member;
use crate::sync::SyncKey;

/// A standby streaming from the leader, as `pg_stat_replication` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Streaming {
    pub name: String,
    /// `sync_state`: "quorum" for the standbys listed under `ANY`.
    pub sync_state: String,
    pub flush_lsn: u64,
}

/// One pass of the leader's quorum upkeep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumPlan {
    /// Write this key first (step 1), before PostgreSQL's setting changes.
    pub key_first: Option<SyncKey>,
    /// `synchronous_standby_names` to set (step 2).
    pub names: String,
    /// The key to write once [`caught_up`] (step 3); equal to the key in
    /// force when nothing changes.
    pub target: SyncKey,
}

/// `ANY k ("b", "c")`, or empty (asynchronous) with no voters.
pub fn names_for(voters: &[String], k: u32) -> String {
    if voters.is_empty() || k == 0 {
        return String::new();
    }
    let list: Vec<String> = voters
        .iter()
        .map(|v| format!("\"{}\"", v.replace('"', "")))
        .collect();
    format!("ANY {k} ({})", list.join(", "))
}

fn key(me: &str, voters: Vec<String>, quorum: u32) -> SyncKey {
    SyncKey {
        leader: me.to_owned(),
        sync_standby: None,
        voters,
        quorum,
    }
}

/// What the leader `me` does this pass, from the key in the DCS, the
/// standbys streaming from it, the members, `synchronous_node_count` and
/// strict mode. The voters are every streaming member that may be
/// promoted (not tagged nofailover).
pub fn plan(
    me: &str,
    dcs_key: Option<&SyncKey>,
    streaming: &[Streaming],
    members: &[Member],
    node_count: u32,
    strict: bool,
) -> QuorumPlan {
    let target: Vec<String> = members
        .iter()
        .filter(|m| m.name != me && !m.nofailover)
        .filter(|m| streaming.iter().any(|s| s.name == m.name))
        .map(|m| m.name.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let k_new = node_count.max(1).min(target.len() as u32);
    // a key another leader wrote (or none) promises nothing about this
    // leader's commits: start from the empty key
    let mine = dcs_key.filter(|k| k.leader == me && k.sync_standby.is_none());
    let (cur_v, cur_q) = mine.map_or((Vec::new(), 0), |k| (k.voters.clone(), k.quorum));
    if target.is_empty() && strict {
        // never fall back to asynchronous: commits keep waiting for the
        // voters in the key (or for any standby when there are none)
        let names = if cur_v.is_empty() {
            "ANY 1 (*)".to_owned()
        } else {
            names_for(&cur_v, cur_q.max(1))
        };
        let kept = key(me, cur_v, cur_q);
        return QuorumPlan {
            key_first: (mine.is_none()).then(|| kept.clone()),
            names,
            target: kept,
        };
    }
    let union: Vec<String> = cur_v
        .iter()
        .chain(&target)
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let widened = key(me, union, cur_q.min(k_new));
    let in_force = mine.cloned();
    QuorumPlan {
        key_first: (in_force.as_ref() != Some(&widened)).then_some(widened),
        names: names_for(&target, k_new),
        target: key(me, target, k_new),
    }
}

/// Step 3's condition: PostgreSQL lists every voter of `target` as
/// `quorum`, and `target.quorum` of them have flushed past `since` (a WAL
/// position read after the new setting was in force).
pub fn caught_up(target: &SyncKey, streaming: &[Streaming], since: u64) -> bool {
    if target.quorum == 0 {
        return true;
    }
    let listed = target.voters.iter().all(|v| {
        streaming
            .iter()
            .any(|s| &s.name == v && s.sync_state == "quorum")
    });
    let past = streaming
        .iter()
        .filter(|s| target.voters.contains(&s.name) && s.flush_lsn >= since)
        .count();
    listed && past >= target.quorum as usize
}

/// Whether `me`, a standby at `my_lsn`, may be promoted under `key`, with
/// `fresh` the WAL positions the other voters reported just now (a voter
/// that did not answer is absent).
pub fn may_promote(
    me: &str,
    my_lsn: u64,
    key: &SyncKey,
    fresh: &[(String, u64)],
) -> Result<(), String> {
    if !key.voters.iter().any(|v| v == me) {
        return Err(format!(
            "quorum mode: not among the voters ({})",
            key.voters.join(", ")
        ));
    }
    if key.quorum == 0 {
        return Err("quorum mode: no commit quorum is in force yet".into());
    }
    let need = key.voters.len() + 1 - key.quorum as usize;
    let mut behind_me = 1;
    for v in key.voters.iter().filter(|v| *v != me) {
        match fresh.iter().find(|(n, _)| n == v) {
            Some((_, lsn)) if *lsn > my_lsn => {
                return Err(format!("quorum mode: voter {v} has more WAL"))
            }
            Some(_) => behind_me += 1,
            None => {}
        }
    }
    if behind_me < need {
        return Err(format!(
            "quorum mode: {behind_me} of the {need} voters needed to prove every acknowledged commit answered"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
