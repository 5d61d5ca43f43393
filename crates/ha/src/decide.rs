//! The decision tree. Ordered like an operator would reason: is there a
//! cluster at all, do I have data, is my PostgreSQL running, and then what
//! my role must be given who holds the leader lease.
use crate::member::{Member, Role, SyncMode};

/// The cluster as read from the DCS this pass.
#[derive(Debug, Clone)]
pub struct View<'a> {
    pub initialized: bool,
    /// The unexpired leader lease holder.
    pub leader: Option<&'a str>,
    /// Members whose keys have not expired (this node's included, if any).
    pub members: &'a [Member],
    pub paused: bool,
    /// The leader's last published WAL position.
    pub last_leader_lsn: Option<u64>,
    /// In synchronous mode: the standby that may be promoted.
    pub sync_standby: Option<&'a str>,
    /// In quorum mode: the Sync key (voters and quorum)...
    pub quorum: Option<&'a crate::sync::SyncKey>,
    /// ...and the WAL positions the other voters reported this pass.
    pub voter_lsns: &'a [(String, u64)],
    /// Failsafe: the old leader asked this node within the TTL whether it
    /// still follows it (it is still running as primary without the DCS).
    pub failsafe_leader: Option<&'a str>,
    /// Failsafe mode: the members the last leader listed as able to confirm
    /// it; while the key is there, only they may take over.
    pub failsafe: Option<&'a crate::failsafe::FailsafeKey>,
    /// Who last published the leader's position (the last known leader).
    pub last_leader: Option<&'a str>,
    /// A switchover or failover request whose time has come
    /// ([`crate::switchover`]).
    pub switchover: Option<&'a crate::switchover::Switchover>,
}

impl View<'_> {
    fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }
}

/// This node's PostgreSQL as the driver sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pg {
    /// No initialized data directory.
    NoData,
    /// Not running, shut down cleanly.
    Stopped { was_primary: bool },
    /// The postmaster died (or the agent found it dead).
    Crashed { was_primary: bool },
    Running {
        primary: bool,
        lsn: u64,
        timeline: u32,
        following: Option<String>,
        streaming: bool,
    },
}

#[derive(Debug, Clone)]
pub struct Local {
    pub name: String,
    pub pg: Pg,
    pub nofailover: bool,
    pub priority: i32,
    /// Crash restarts already tried while holding the lease.
    pub crash_restarts: u32,
    /// Loops a replica has spent not streaming from its leader.
    pub not_streaming_loops: u32,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub maximum_lag_on_failover: u64,
    pub synchronous_mode: crate::SyncMode,
    /// Crash restarts in place before the lease is released instead.
    pub max_crash_restarts: u32,
    /// Loops without streaming before a replica is rewound.
    pub rewind_after_loops: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Take the initialize key; the winner runs initdb and starts as primary.
    Bootstrap,
    /// Clone the leader with pg_basebackup.
    Clone {
        from: String,
    },
    /// Start as a standby of `leader` (or of nobody yet).
    StartReplica {
        leader: Option<String>,
    },
    /// Take the lease if free, then start as primary; else start as a standby.
    StartPrimaryIfFree,
    /// Crashed or stopped while holding the lease: start again as primary.
    RestartPrimary,
    /// Give the lease up so the best standby takes over at once.
    ReleaseLease,
    /// A former primary joins `leader`: pg_rewind (or re-clone), then follow.
    Rewind {
        leader: String,
    },
    RenewLease,
    /// A primary without a lease holder: take the lease back.
    TakeLease,
    /// Take the lease and promote this standby.
    TakeLeaseAndPromote,
    /// Holding the lease as a standby: finish the promotion.
    Promote,
    /// Another node holds the lease: stop being primary, follow it.
    Demote {
        leader: String,
    },
    /// Stream from `leader` (repoint if needed).
    Follow {
        leader: String,
    },
    /// Nothing to do.
    Wait,
    /// A step of a requested switchover or failover.
    Switchover(crate::switchover::Step),
}

/// An action with the sentence the loop reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    pub reason: String,
}

fn d(action: Action, reason: impl Into<String>) -> Decision {
    Decision {
        action,
        reason: reason.into(),
    }
}

pub fn decide(view: &View<'_>, local: &Local, s: &Settings) -> Decision {
    if let Some(d) = crate::switchover::step(view, local, s) {
        return d;
    }
    let me = local.name.as_str();
    let leader = view.leader;
    let i_lead = leader == Some(me);
    let other_leader = leader.filter(|l| *l != me);

    match &local.pg {
        Pg::NoData => {
            if !view.initialized {
                return d(Action::Bootstrap, "no cluster yet: trying to bootstrap it");
            }
            match other_leader {
                Some(l)
                    if view
                        .member(l)
                        .is_some_and(|m| m.running && m.role == Role::Primary) =>
                {
                    d(
                        Action::Clone { from: l.to_owned() },
                        format!("no data: cloning leader {l}"),
                    )
                }
                Some(l) => d(
                    Action::Wait,
                    format!("no data: waiting for leader {l} to be running"),
                ),
                None if i_lead => d(
                    Action::ReleaseLease,
                    "holding the lease without data: releasing it",
                ),
                None => d(Action::Wait, "no data and no leader to clone from: waiting"),
            }
        }
        Pg::Crashed { was_primary } | Pg::Stopped { was_primary } => {
            let crashed = matches!(local.pg, Pg::Crashed { .. });
            if i_lead {
                if !crashed || local.crash_restarts < s.max_crash_restarts {
                    return d(
                        Action::RestartPrimary,
                        if crashed {
                            "PostgreSQL crashed while this node holds the lease: restarting it in place"
                        } else {
                            "this node holds the lease: starting PostgreSQL as primary"
                        },
                    );
                }
                return d(
                    Action::ReleaseLease,
                    "PostgreSQL keeps crashing: releasing the lease for a failover",
                );
            }
            match (other_leader, was_primary) {
                (Some(l), true) => d(
                    Action::Rewind {
                        leader: l.to_owned(),
                    },
                    format!("former primary rejoining: rewinding to follow {l}"),
                ),
                (Some(l), false) if local.not_streaming_loops >= s.rewind_after_loops * 3 => d(
                    Action::Rewind {
                        leader: l.to_owned(),
                    },
                    format!("standby keeps failing to start or stream from {l}: rewinding"),
                ),
                (Some(l), false) => d(
                    Action::StartReplica {
                        leader: Some(l.to_owned()),
                    },
                    format!("starting as a standby of {l}"),
                ),
                // Another node led after this one: its data is newer than ours.
                (None, true) if view.last_leader.is_some_and(|l| l != me) => d(
                    Action::StartReplica { leader: None },
                    "former primary, but another node led since: waiting as a standby",
                ),
                // After a crash, an eligible running standby takes over; this
                // node rewinds once it does. With none (or the whole cluster
                // restarting) the former primary comes back itself.
                (None, true)
                    if crashed
                        && view
                            .members
                            .iter()
                            .any(|m| m.name != me && eligible(view, m, s)) =>
                {
                    d(
                        Action::Wait,
                        "crashed former primary: waiting for a standby to take over",
                    )
                }
                (None, true) if !view.paused => d(
                    Action::StartPrimaryIfFree,
                    "former primary and no leader: taking the lease if free",
                ),
                (None, _) => d(
                    Action::StartReplica { leader: None },
                    "no leader: starting as a standby and waiting",
                ),
            }
        }
        Pg::Running { primary: true, .. } => match other_leader {
            _ if i_lead => d(Action::RenewLease, "primary holding the lease: renewed it"),
            Some(l) => d(
                Action::Demote {
                    leader: l.to_owned(),
                },
                format!("{l} holds the lease: demoting to follow it"),
            ),
            None => d(
                Action::TakeLease,
                "primary and nobody holds the lease: taking it",
            ),
        },
        Pg::Running {
            primary: false,
            lsn,
            streaming,
            timeline,
            ..
        } => {
            if i_lead {
                return d(Action::Promote, "holding the lease as a standby: promoting");
            }
            if let Some(l) = other_leader {
                // Not streaming for a while from a leader on a newer timeline:
                // this node's history diverged. (Same timeline: a network or
                // authentication problem, which a rewind would not fix.)
                // Whatever the cause, a standby that has not streamed for much
                // longer is rewound (or re-cloned) too: that is safe even when
                // the leader cannot be reached, since nothing is removed
                // before a new copy is complete.
                let newer = view.member(l).is_some_and(|m| m.timeline > *timeline);
                let stuck = local.not_streaming_loops >= s.rewind_after_loops * 3;
                if !streaming
                    && (newer && local.not_streaming_loops >= s.rewind_after_loops || stuck)
                {
                    return d(
                        Action::Rewind {
                            leader: l.to_owned(),
                        },
                        format!("not streaming from {l}: rewinding"),
                    );
                }
                return d(
                    Action::Follow {
                        leader: l.to_owned(),
                    },
                    format!("following leader {l}"),
                );
            }
            if view.paused {
                return d(Action::Wait, "no leader, failover paused: waiting");
            }
            if let Some(l) = view.failsafe_leader {
                return d(Action::Wait, format!("no leader in the DCS, but {l} runs in failsafe mode and this node follows it"));
            }
            if local.nofailover {
                return d(
                    Action::Wait,
                    "no leader; tagged nofailover: not a candidate",
                );
            }
            if let Some(k) = view.failsafe.filter(|k| !k.lists(&local.name)) {
                return d(
                    Action::Wait,
                    format!(
                        "no leader; failsafe mode: only the members {} listed may take over",
                        k.leader
                    ),
                );
            }
            match best_candidate(view, local, *lsn, s) {
                Ok(()) => d(
                    Action::TakeLeaseAndPromote,
                    "no leader and this node is the best candidate: taking over",
                ),
                Err(why) => d(Action::Wait, format!("no leader: {why}")),
            }
        }
    }
}

/// Whether this standby should take over: within the lag limit, and no
/// healthy eligible member is ahead of it (ties: priority, then name).
fn best_candidate(view: &View<'_>, local: &Local, my_lsn: u64, s: &Settings) -> Result<(), String> {
    if s.synchronous_mode == SyncMode::Quorum {
        // the voters' positions are read this pass, not the published ones
        return match view.quorum {
            Some(k) => crate::quorum::may_promote(&local.name, my_lsn, k, view.voter_lsns),
            None => Err("quorum mode: no Sync key yet".into()),
        };
    }
    if s.synchronous_mode == SyncMode::On {
        // Only the synchronous standby has every acknowledged commit; an
        // asynchronous one may have received more WAL, but not promised it.
        return if view.sync_standby == Some(local.name.as_str()) {
            Ok(())
        } else {
            Err("synchronous mode: only the synchronous standby may be promoted".into())
        };
    }
    if let Some(last) = view.last_leader_lsn {
        let lag = last.saturating_sub(my_lsn);
        if lag > s.maximum_lag_on_failover {
            return Err(format!(
                "{lag} bytes behind the old leader (maximum_lag_on_failover {})",
                s.maximum_lag_on_failover
            ));
        }
    }
    for m in view.members {
        if m.name == local.name || !eligible(view, m, s) {
            continue;
        }
        let better = (m.lsn, m.priority, std::cmp::Reverse(&m.name))
            > (my_lsn, local.priority, std::cmp::Reverse(&local.name));
        if better {
            return Err(format!("{} is a better candidate", m.name));
        }
    }
    Ok(())
}

/// Whether member `m` could be promoted: a running standby, not tagged
/// nofailover, within the lag limit, and in synchronous mode the
/// synchronous standby.
pub(crate) fn eligible(view: &View<'_>, m: &Member, s: &Settings) -> bool {
    let lag_ok = view
        .last_leader_lsn
        .is_none_or(|last| last.saturating_sub(m.lsn) <= s.maximum_lag_on_failover);
    let sync_ok = match s.synchronous_mode {
        SyncMode::Off => true,
        SyncMode::On => view.sync_standby == Some(m.name.as_str()),
        SyncMode::Quorum => view
            .quorum
            .is_some_and(|k| k.quorum > 0 && k.voters.contains(&m.name)),
    };
    let failsafe_ok = view.failsafe.is_none_or(|k| k.lists(&m.name));
    m.running && m.role == Role::Replica && !m.nofailover && lag_ok && sync_ok && failsafe_ok
}

#[cfg(test)]
mod tests;
