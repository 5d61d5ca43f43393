//! The session state a standby does not have, followed from the effects
//! the classifier reports: a router keeps one per client session, applies
//! each query's effects once the server has run it, and sends everything
//! to the primary while the session holds such state.

use std::collections::HashSet;

use crate::classify::SessionView;
use crate::lexer::Strings;
use crate::model::{RouteOverride, SessionEffect};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionState {
    temp_relations: HashSet<String>,
    advisory_lock: bool,
    hold_cursors: HashSet<String>,
    route: Option<RouteOverride>,
}

impl SessionState {
    /// Follows a query's effects, in order. A statement that failed may
    /// be applied too: the state then pins the session to the primary for
    /// nothing, never the other way round.
    pub fn apply(&mut self, effects: &[SessionEffect]) {
        for effect in effects {
            match effect {
                SessionEffect::CreatesTemp(name) => {
                    self.temp_relations.insert(name.clone());
                }
                SessionEffect::Drops(names) => {
                    // a temporary relation hides a permanent one of that name
                    names.iter().for_each(|n| {
                        self.temp_relations.remove(n);
                    });
                }
                // pg_advisory_unlock of one key may leave others held
                SessionEffect::SessionAdvisoryLock => self.advisory_lock = true,
                SessionEffect::AdvisoryUnlockAll => self.advisory_lock = false,
                SessionEffect::HoldCursor(name) => {
                    self.hold_cursors.insert(name.clone());
                }
                SessionEffect::CloseCursor(Some(name)) => {
                    self.hold_cursors.remove(name);
                }
                SessionEffect::CloseCursor(None) => self.hold_cursors.clear(),
                SessionEffect::DiscardAll => *self = SessionState::default(),
                SessionEffect::DiscardTemp => self.temp_relations.clear(),
                SessionEffect::Route(route) => self.route = *route,
                SessionEffect::Begin { .. } | SessionEffect::End => {}
            }
        }
    }

    /// Holds a temporary relation, a session advisory lock or a cursor
    /// WITH HOLD, which only the primary's session has.
    pub fn pinned_to_primary(&self) -> bool {
        !self.temp_relations.is_empty() || self.advisory_lock || !self.hold_cursors.is_empty()
    }

    /// What `SET pgwarden.route` asked for, if anything.
    pub fn route_override(&self) -> Option<RouteOverride> {
        self.route
    }

    /// What the classifier needs to know of this session.
    pub fn view(&self, strings: Strings) -> SessionView<'_> {
        SessionView {
            temp_relations: Some(&self.temp_relations),
            strings,
        }
    }
}
