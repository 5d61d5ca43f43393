//! Synchronous mode, as Patroni orders it: the DCS Sync key names the
//! standby that may be promoted (it has every acknowledged commit), and
//! PostgreSQL's `synchronous_standby_names` says whose acknowledgement a
//! commit waits for. When the synchronous standby changes, the old one is
//! first removed from the key, then `synchronous_standby_names` changes,
//! and the new one is added to the key only once PostgreSQL reports it
//! `sync`: at no moment does the key name a standby that may lack a commit
//! the new one acknowledged.
use serde::{Deserialize, Serialize};

use crate::member::Member;

/// The DCS Sync key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncKey {
    /// The leader that wrote it.
    pub leader: String,
    /// The standby that may be promoted, if any.
    pub sync_standby: Option<String>,
    /// Quorum mode: every acknowledged commit is on at least `quorum` of
    /// these standbys (see [`crate::quorum`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub voters: Vec<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub quorum: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl SyncKey {
    pub fn parse(s: &str) -> Option<SyncKey> {
        serde_json::from_str(s).ok()
    }
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("serializable")
    }
}

/// One pass of the leader's synchronous-standby upkeep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncPlan {
    /// Write this key first (before PostgreSQL's setting changes).
    pub key_first: Option<SyncKey>,
    /// `synchronous_standby_names` to set.
    pub names: String,
    /// Once PostgreSQL reports this standby `sync`, name it in the key.
    pub publish_when_sync: Option<String>,
}

fn names_for(standby: &str) -> String {
    format!("FIRST 1 (\"{}\")", standby.replace('"', ""))
}

/// What the leader `me` does this pass, from the key as it is in the DCS,
/// the standbys streaming from it (application name, sync state), the
/// members that may become synchronous, and strict mode.
pub fn plan(
    me: &str,
    key: Option<&SyncKey>,
    streaming: &[(String, String)],
    members: &[Member],
    strict: bool,
) -> SyncPlan {
    // Streaming by PostgreSQL's word, and a member now: a standby cut off
    // from everything stays "streaming" in pg_stat_replication until
    // wal_sender_timeout (60 s) while every commit waits for it; its
    // member key expires within the TTL, and then another one is chosen.
    let is_streaming =
        |n: &str| streaming.iter().any(|(a, _)| a == n) && members.iter().any(|m| m.name == n);
    // a key another leader wrote names this node or an old standby of
    // that leader: it is replaced before anything else
    let mine = key.filter(|k| k.leader == me);
    let current = mine
        .and_then(|k| k.sync_standby.as_deref())
        .filter(|c| is_streaming(c));
    let candidate = current.map(str::to_owned).or_else(|| {
        members
            .iter()
            .filter(|m| m.name != me && !m.nofailover && is_streaming(&m.name))
            .max_by_key(|m| (m.lsn, m.priority))
            .map(|m| m.name.clone())
    });
    let named = key.and_then(|k| k.sync_standby.as_deref());
    let cleared = SyncKey {
        leader: me.to_owned(),
        sync_standby: None,
        voters: Vec::new(),
        quorum: 0,
    };
    // the key must not go on naming a standby other than the one commits
    // will wait for
    let key_first = match (&candidate, named) {
        _ if key.is_some_and(|k| k.leader != me) => Some(cleared.clone()),
        (Some(c), Some(n)) if c != n => Some(cleared.clone()),
        (None, Some(_)) if !strict => Some(cleared.clone()),
        _ => None,
    };
    match candidate {
        Some(c) => SyncPlan {
            names: names_for(&c),
            publish_when_sync: (named != Some(c.as_str()) || key_first.is_some()).then_some(c),
            key_first,
        },
        None if strict => SyncPlan {
            // never fall back to asynchronous: commits wait for a standby
            key_first: key_first.filter(|_| key.is_some_and(|k| k.leader != me)),
            names: named
                .filter(|_| mine.is_some())
                .map(names_for)
                .unwrap_or_else(|| "*".into()),
            publish_when_sync: None,
        },
        None => SyncPlan {
            key_first,
            names: String::new(),
            publish_when_sync: None,
        },
    }
}

#[cfg(test)]
mod tests;
