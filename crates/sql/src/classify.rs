//! The read/write decision: a query's cached [`Analysis`] with the
//! function catalog and the session's temporary tables applied. Applying
//! them costs a hash probe per function and relation, so the analysis can
//! be cached however often the catalog is refreshed.

use std::collections::HashSet;
use std::sync::Arc;

use crate::analysis::{analyze, Analysis, Base};
use crate::lexer::Strings;
use crate::model::{FuncName, Reason, SessionEffect};
use crate::volatility::{FunctionVolatility, Volatility};

/// Where a query may run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Writes nothing and reads nothing a standby lacks: a standby may run
    /// it (SELECT, TABLE, VALUES, SHOW, EXPLAIN without ANALYZE, COPY TO,
    /// BEGIN READ ONLY, with only immutable or stable functions).
    Standby,
    /// Changes only the session's settings or its transaction (SET other
    /// than `transaction_read_only`, RESET, SAVEPOINT, COMMIT, FETCH,
    /// DISCARD, ...): it runs on whichever node the session's transaction
    /// is on; the proxy replays SET parameters on every server connection
    /// it gives the client.
    AnyNode,
    /// Only the primary may run it.
    Primary(Reason),
}

/// What the session knows that a standby does not.
#[derive(Debug, Clone, Default)]
pub struct SessionView<'a> {
    /// Temporary relations the session created (unqualified names).
    pub temp_relations: Option<&'a HashSet<String>>,
    /// How the server reads string literals.
    pub strings: Strings,
}

/// The class of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Class {
    pub route: Route,
    analysis: Arc<Analysis>,
}

impl Class {
    /// The functions the query calls, schema-qualified where it names a
    /// schema, so that a caller can check them again against a newer
    /// catalog.
    pub fn functions(&self) -> &[FuncName] {
        &self.analysis.functions
    }

    /// Session state its statements change, in order.
    pub fn effects(&self) -> &[SessionEffect] {
        &self.analysis.effects
    }

    pub fn may_use_standby(&self) -> bool {
        self.route == Route::Standby
    }
}

/// Classifies `sql` without a cache (see [`crate::Cache::classify`]).
pub fn classify(
    sql: &str,
    volatility: &impl FunctionVolatility,
    session: &SessionView<'_>,
) -> Class {
    classify_with(sql, volatility, session, |sql| {
        Arc::new(analyze(sql, false))
    })
}

/// `standard`: the analysis of `sql` read with standard strings (from a
/// cache or not). A query with a backslash on a server that reads strings
/// otherwise, or may, is read again that way (not cached: rare).
pub(crate) fn classify_with(
    sql: &str,
    volatility: &impl FunctionVolatility,
    session: &SessionView<'_>,
    standard: impl FnOnce(&str) -> Arc<Analysis>,
) -> Class {
    let analysis = match session.strings {
        _ if memchr::memchr(b'\\', sql.as_bytes()).is_none() => standard(sql),
        Strings::Standard => standard(sql),
        Strings::Backslash => Arc::new(analyze(sql, true)),
        Strings::Either => {
            let (a, b) = (standard(sql), analyze(sql, true));
            if *a == b {
                a
            } else {
                // the effects are the standard reading's
                Arc::new(Analysis {
                    base: Base::Primary(Reason::BackslashStrings),
                    ..(*a).clone()
                })
            }
        }
    };
    let route = route(&analysis, volatility, session);
    Class { route, analysis }
}

fn route(a: &Analysis, volatility: &impl FunctionVolatility, session: &SessionView<'_>) -> Route {
    if let Base::Primary(reason) = &a.base {
        return Route::Primary(reason.clone());
    }
    let temps = session.temp_relations;
    if let Some(rel) = a.relations.iter().find(|r| {
        r.in_temp_schema() || (r.schema.is_none() && temps.is_some_and(|t| t.contains(&r.name)))
    }) {
        return Route::Primary(Reason::TempTable(rel.clone()));
    }
    if let Some(rel) = a
        .relations
        .iter()
        .find(|r| volatility.unlogged(r.schema.as_deref(), &r.name))
    {
        return Route::Primary(Reason::Unlogged(rel.clone()));
    }
    for f in &a.functions {
        match volatility.volatility(f.schema.as_deref(), &f.name) {
            Some(Volatility::Immutable | Volatility::Stable) => {}
            Some(Volatility::Volatile) => {
                return Route::Primary(Reason::VolatileFunction(f.clone()))
            }
            None => return Route::Primary(Reason::UnknownFunction(f.clone())),
        }
    }
    match a.base {
        Base::ReadOnly => Route::Standby,
        _ => Route::AnyNode,
    }
}
