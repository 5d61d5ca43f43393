//! Switchover and failover requests: a typed value in the DCS Failover key
//! (written by the REST API), and the decisions it adds to the HA loop.
//!
//! A switchover names the leader that must step down and, optionally, the
//! member to take over; a failover names only the candidate. The leader
//! steps down (a clean shutdown: its standbys receive all of its WAL, the
//! shutdown checkpoint included) once the candidate streams from it and is
//! caught up, records whom it chose in the key and releases the lease. The
//! candidate alone then takes the lease and promotes (also in maintenance
//! mode); everyone else waits for it. The new leader deletes the key. A
//! request that has not completed `EXPIRES_MS` after it became due is
//! dropped, and the usual rules apply again.
use serde::{Deserialize, Serialize};

use crate::decide::{eligible, Action, Decision, Local, Pg, Settings, View};
use crate::member::Role;

/// How long a due request may take before it is dropped.
pub const EXPIRES_MS: u64 = 60_000;

/// The DCS Failover key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Switchover {
    /// Switchover: the leader that must step down. None: a failover (to
    /// `candidate`, whoever leads).
    #[serde(default)]
    pub leader: Option<String>,
    /// The member to take over; None: the leader picks the best standby.
    #[serde(default)]
    pub candidate: Option<String>,
    /// Not before this time (milliseconds since the Unix epoch).
    #[serde(default)]
    pub scheduled_at_ms: Option<u64>,
    /// When the request was written (milliseconds since the Unix epoch).
    pub requested_at_ms: u64,
    /// Written by the leader as it steps down: the member it chose.
    #[serde(default)]
    pub chosen: Option<String>,
}

/// What the loop does for a request (see [`Action::Switchover`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The leader: record `candidate` in the key, shut PostgreSQL down
    /// cleanly, publish its last position, release the lease.
    Demote { candidate: String },
    /// The new leader: renew the lease, delete the key, record it in the
    /// history.
    Done,
    /// The leader: renew the lease and delete a request that cannot be
    /// carried out (it names another leader).
    Cancel,
}

impl Switchover {
    pub fn parse(s: &str) -> Option<Switchover> {
        serde_json::from_str(s).ok()
    }
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("serializable")
    }
    /// "switchover" or "failover".
    pub fn kind(&self) -> &'static str {
        if self.leader.is_some() {
            "switchover"
        } else {
            "failover"
        }
    }
    /// The member that is to take over, once known.
    pub fn target(&self) -> Option<&str> {
        self.chosen.as_deref().or(self.candidate.as_deref())
    }
    fn start_ms(&self) -> u64 {
        self.scheduled_at_ms.unwrap_or(0).max(self.requested_at_ms)
    }
    /// Its time has come.
    pub fn due(&self, now_ms: u64) -> bool {
        self.scheduled_at_ms.is_none_or(|t| t <= now_ms)
    }
    /// It became due more than [`EXPIRES_MS`] ago and is still there.
    pub fn expired(&self, now_ms: u64) -> bool {
        now_ms > self.start_ms().saturating_add(EXPIRES_MS)
    }
}

fn d(action: Action, reason: String) -> Option<Decision> {
    Some(Decision { action, reason })
}

/// The decision a due request imposes on this node, or None when the
/// usual rules apply. Called first by [`crate::decide`].
pub(crate) fn step(view: &View<'_>, local: &Local, s: &Settings) -> Option<Decision> {
    let req = view.switchover?;
    let me = local.name.as_str();
    let kind = req.kind();
    match &local.pg {
        Pg::Running {
            primary: true, lsn, ..
        } if view.leader == Some(me) => {
            if req.target() == Some(me) {
                if req.chosen.is_none() && req.leader.as_deref().is_some_and(|l| l != me) {
                    // asked to take over from a leader that no longer leads
                    return d(
                        Action::Switchover(Step::Cancel),
                        format!("{kind} to this node: it leads already; request dropped"),
                    );
                }
                return d(
                    Action::Switchover(Step::Done),
                    format!("{kind} complete: this node leads; request removed"),
                );
            }
            if let Some(l) = req.leader.as_deref().filter(|l| *l != me) {
                return d(
                    Action::Switchover(Step::Cancel),
                    format!("switchover from {l}, but this node leads: request dropped"),
                );
            }
            match pick(view, me, *lsn, req, s) {
                Ok(c) => d(
                    Action::Switchover(Step::Demote {
                        candidate: c.clone(),
                    }),
                    format!("{kind} to {c}: stepping down"),
                ),
                Err(why) => d(
                    Action::RenewLease,
                    format!("primary holding the lease: renewed it; {kind} waits: {why}"),
                ),
            }
        }
        // the leader stepped down: only the member it chose may take over
        Pg::Running { primary: false, .. } | Pg::Stopped { .. } | Pg::Crashed { .. }
            if view.leader.is_none() =>
        {
            let target = req.target()?;
            let alive = view
                .members
                .iter()
                .any(|m| m.name == target && m.running && m.role == Role::Replica);
            if !alive {
                return None;
            }
            match &local.pg {
                Pg::Running {
                    primary: false,
                    lsn,
                    ..
                } if target == me => {
                    // A switchover's leader shut down cleanly: its last
                    // position must be here, not just within the lag limit.
                    let lag = view
                        .last_leader_lsn
                        .map(|l| l.saturating_sub(*lsn))
                        .unwrap_or(0);
                    let limit = if req.leader.is_some() {
                        0
                    } else {
                        s.maximum_lag_on_failover
                    };
                    if lag > limit {
                        return d(
                            Action::Wait,
                            format!("{kind} to this node: {lag} bytes of the old leader's WAL still missing"),
                        );
                    }
                    d(
                        Action::TakeLeaseAndPromote,
                        format!("{kind}: this node is the requested candidate, taking over"),
                    )
                }
                _ if target == me => None,
                _ => d(
                    Action::Wait,
                    format!("{kind} to {target} in progress: waiting for it to take over"),
                ),
            }
        }
        _ => None,
    }
}

/// The leader's choice: the requested candidate if it can take over now,
/// otherwise (none requested) the most advanced eligible streaming standby.
fn pick(
    view: &View<'_>,
    me: &str,
    my_lsn: u64,
    req: &Switchover,
    s: &Settings,
) -> Result<String, String> {
    let ready = |name: &str| -> Result<(), String> {
        let m = view
            .members
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| format!("{name} is not a member"))?;
        if !(m.running && m.role == Role::Replica) {
            return Err(format!("{name} is not a running standby"));
        }
        let lag = my_lsn.saturating_sub(m.lsn);
        if lag > s.maximum_lag_on_failover {
            return Err(format!(
                "{name} lags {lag} bytes (maximum_lag_on_failover {})",
                s.maximum_lag_on_failover
            ));
        }
        if !m.streaming {
            return Err(format!("{name} is not streaming from this leader"));
        }
        if m.nofailover {
            return Err(format!("{name} is tagged nofailover"));
        }
        if !eligible(view, m, s) {
            return Err(format!(
                "{name} may not be promoted now (synchronous or failsafe mode)"
            ));
        }
        Ok(())
    };
    if let Some(c) = req.candidate.as_deref() {
        return ready(c).map(|()| c.to_owned());
    }
    let mut why = Vec::new();
    view.members
        .iter()
        .filter(|m| m.name != me)
        .filter(|m| ready(&m.name).map_err(|e| why.push(e)).is_ok())
        .max_by_key(|m| (m.lsn, m.priority, std::cmp::Reverse(m.name.clone())))
        .map(|m| m.name.clone())
        .ok_or_else(|| match why.is_empty() {
            true => "there is no standby".to_owned(),
            false => format!("no standby can take over: {}", why.join("; ")),
        })
}

#[cfg(test)]
mod tests;
