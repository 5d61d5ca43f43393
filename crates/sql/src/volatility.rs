//! Function volatility, as `pg_proc` records it: the classifier sends a
//! statement that calls a volatile (or unknown) function to the primary.
//! The proxy reads the catalog with [`PG_PROC_QUERY`] (periodically and
//! after DDL) and builds a [`ProcCatalog`] from the rows.

use std::collections::HashMap;

/// `pg_proc.provolatile`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Volatility {
    Immutable,
    Stable,
    Volatile,
}

impl Volatility {
    /// From `provolatile` (`i`, `s`, `v`); anything else counts as volatile.
    pub fn from_provolatile(code: &str) -> Volatility {
        match code {
            "i" => Volatility::Immutable,
            "s" => Volatility::Stable,
            _ => Volatility::Volatile,
        }
    }
}

/// Where the classifier looks functions up.
pub trait FunctionVolatility {
    /// The volatility of the function `name` in `schema`; for an
    /// unqualified name (`schema` is `None`), of the function the session
    /// would find. `None`: no such function (the classifier then treats the
    /// call as volatile).
    fn volatility(&self, schema: Option<&str>, name: &str) -> Option<Volatility>;

    /// Whether the relation `name` (in `schema`, or found by an
    /// unqualified name) is unlogged: a standby cannot read it.
    fn unlogged(&self, _schema: Option<&str>, _name: &str) -> bool {
        false
    }
}

/// The query whose rows ([`ProcCatalog::from_rows`]) make a catalog: every
/// function's schema, name and volatility.
/// Unlogged relations come too, with the code `U`.
pub const PG_PROC_QUERY: &str = "SELECT n.nspname, p.proname, p.provolatile::text \
     FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
     UNION ALL SELECT n.nspname, c.relname, 'U' \
     FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relpersistence = 'u'";

/// Schemas an unqualified name is looked up in, in order: an approximation
/// of the default `search_path` (`pg_catalog` is always searched first;
/// `"$user"` schemas and a changed `search_path` are not followed).
const SEARCH_PATH: [&str; 2] = ["pg_catalog", "public"];

/// A snapshot of `pg_proc`: (schema, name) to the most volatile of its
/// overloads (a call's argument types are not known before planning).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcCatalog {
    by_name: HashMap<String, HashMap<String, Volatility>>,
    /// Unlogged relations: name -> schemas.
    unlogged: HashMap<String, Vec<String>>,
}

impl ProcCatalog {
    /// From rows of [`PG_PROC_QUERY`]: `(nspname, proname, provolatile)`.
    pub fn from_rows<S: AsRef<str>>(rows: impl IntoIterator<Item = (S, S, S)>) -> ProcCatalog {
        let mut catalog = ProcCatalog::default();
        for (schema, name, code) in rows {
            if code.as_ref() == "U" {
                catalog
                    .unlogged
                    .entry(name.as_ref().to_owned())
                    .or_default()
                    .push(schema.as_ref().to_owned());
                continue;
            }
            catalog.insert(
                schema.as_ref(),
                name.as_ref(),
                Volatility::from_provolatile(code.as_ref()),
            );
        }
        catalog
    }

    /// Adds one function (one overload).
    pub fn insert(&mut self, schema: &str, name: &str, volatility: Volatility) {
        let slot = self
            .by_name
            .entry(name.to_owned())
            .or_default()
            .entry(schema.to_owned())
            .or_insert(volatility);
        *slot = (*slot).max(volatility);
    }

    /// How many distinct (schema, name) pairs it holds.
    pub fn len(&self) -> usize {
        self.by_name.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

impl FunctionVolatility for ProcCatalog {
    fn volatility(&self, schema: Option<&str>, name: &str) -> Option<Volatility> {
        let schemas = self.by_name.get(name)?;
        match schema {
            Some(s) => schemas.get(s).copied(),
            None => SEARCH_PATH.iter().find_map(|s| schemas.get(*s).copied()),
        }
    }

    fn unlogged(&self, schema: Option<&str>, name: &str) -> bool {
        // an unqualified name: unlogged in any schema counts (the search
        // path is not followed)
        self.unlogged
            .get(name)
            .is_some_and(|schemas| schema.is_none_or(|s| schemas.iter().any(|x| x == s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overloads_and_search_path() {
        let c = ProcCatalog::from_rows([
            ("pg_catalog", "now", "s"),
            ("pg_catalog", "lower", "i"),
            ("public", "f", "i"),
            ("public", "f", "v"),
            ("app", "g", "s"),
            ("public", "lower", "v"),
        ]);
        assert_eq!(c.volatility(None, "now"), Some(Volatility::Stable));
        assert_eq!(
            c.volatility(Some("pg_catalog"), "now"),
            Some(Volatility::Stable)
        );
        // one volatile overload makes the name volatile
        assert_eq!(c.volatility(None, "f"), Some(Volatility::Volatile));
        // not on the approximated search_path
        assert_eq!(c.volatility(None, "g"), None);
        assert_eq!(c.volatility(Some("app"), "g"), Some(Volatility::Stable));
        // pg_catalog comes first
        assert_eq!(c.volatility(None, "lower"), Some(Volatility::Immutable));
        assert_eq!(
            c.volatility(Some("public"), "lower"),
            Some(Volatility::Volatile)
        );
        assert_eq!(c.volatility(None, "nope"), None);
        assert_eq!(c.len(), 5);
    }
}
