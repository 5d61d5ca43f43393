//! What a query is, read with PostgreSQL's own grammar (`pg_query`):
//! the facts the classifier needs that do not depend on the session or on
//! the function catalog, so that they can be cached by query text.

use pg_query::protobuf::{
    self, node::Node as N, DiscardMode, ObjectType, TransactionStmtKind, VariableSetKind,
};

use crate::model::{FuncName, Reason, RelName, RouteOverride, SessionEffect, ROUTE_SETTING};
use crate::walk::{walk, Facts};

/// Where a statement may run, before functions and temporary tables are
/// looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Base {
    /// Reads only: a standby may run it.
    ReadOnly,
    /// Changes the session or the transaction only (SET, RESET, SAVEPOINT,
    /// COMMIT, FETCH, ...): runs wherever the session's transaction is.
    AnyNode,
    Primary(Reason),
}

/// The facts of one query: every statement's, merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    pub(crate) base: Base,
    pub(crate) functions: Vec<FuncName>,
    pub(crate) relations: Vec<RelName>,
    pub(crate) effects: Vec<SessionEffect>,
}

/// Reads `sql` (one or more statements); `backslash`: string literals
/// take backslash escapes, as with `standard_conforming_strings = off`.
pub(crate) fn analyze(sql: &str, backslash: bool) -> Analysis {
    let mut a = Analysis::new(Base::AnyNode);
    if single_dml(sql) {
        a.base = Base::Primary(Reason::Dml);
        return a;
    }
    let options = if backslash {
        pg_query::ParserOptions::DISABLE_STANDARD_CONFORMING_STRINGS
    } else {
        pg_query::ParserOptions::DEFAULT
    };
    // pg_query's own summary of the tree (built on every parse) indexes
    // lists it expects to be non-empty: a panic there is a query that
    // does not parse, not a crash of the proxy.
    let parsed = match std::panic::catch_unwind(|| pg_query::parse(sql, options)) {
        Ok(Ok(parsed)) => parsed,
        Ok(Err(pg_query::Error::Decode(_))) => {
            a.base = Base::Primary(Reason::TooDeep);
            return a;
        }
        _ => {
            a.base = Base::Primary(Reason::DoesNotParse);
            return a;
        }
    };
    for raw in &parsed.protobuf.stmts {
        let Some(node) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) else {
            continue;
        };
        let base = statement(node, &mut a);
        a.base = merge(std::mem::replace(&mut a.base, Base::AnyNode), base);
    }
    if no_load_balance_hint(sql) {
        a.base = Base::Primary(Reason::NoLoadBalanceHint);
    }
    a.functions.sort();
    a.functions.dedup();
    a.relations.sort();
    a.relations.dedup();
    a
}

/// One INSERT, UPDATE, DELETE or MERGE, known by its first word: no
/// other statement starts with one, and a single one has no session
/// effects, so it need not be parsed (bulk writes are long and seldom
/// repeated; a malformed one is then reported as DML, not as
/// [`Reason::DoesNotParse`]: the primary rejects it either way). A `;`
/// followed by more text, even inside a literal, sends it to the parser.
pub(crate) fn single_dml(sql: &str) -> bool {
    let (first, _) = crate::lexer::word(sql);
    let dml = ["INSERT", "UPDATE", "DELETE", "MERGE"]
        .iter()
        .any(|w| first.eq_ignore_ascii_case(w));
    dml && match memchr::memchr(b';', sql.as_bytes()) {
        None => true,
        Some(i) => sql[i + 1..]
            .trim_matches(|c| crate::lexer::SQL_SPACE.contains(&c) || c == ';')
            .is_empty(),
    }
}

/// The route of statements run together: the first reason for the
/// primary wins, then read-only (one statement that reads makes the
/// query one that reads).
fn merge(a: Base, b: Base) -> Base {
    match (a, b) {
        (p @ Base::Primary(_), _) | (_, p @ Base::Primary(_)) => p,
        (Base::ReadOnly, _) | (_, Base::ReadOnly) => Base::ReadOnly,
        _ => Base::AnyNode,
    }
}

/// `/*NO LOAD BALANCE*/` (any case, any spacing inside) before the first
/// token.
fn no_load_balance_hint(sql: &str) -> bool {
    let t = sql.trim_start_matches(crate::lexer::SQL_SPACE);
    if !t.starts_with("/*") {
        return false;
    }
    let end = crate::lexer::comment_end(t.as_bytes(), 0);
    let body = t[2..end.max(4) - 2].split_ascii_whitespace();
    body.map(str::to_ascii_uppercase)
        .eq(["NO", "LOAD", "BALANCE"].map(String::from))
}

/// The base route of one statement; its functions, relations and effects
/// go into `a`.
fn statement(node: &N, a: &mut Analysis) -> Base {
    match node {
        N::SelectStmt(s) => {
            let facts = walk(node);
            a.absorb(&facts);
            if s.into_clause.is_some() {
                if let Some(name) = s
                    .into_clause
                    .as_ref()
                    .and_then(|i| temp_target(i.rel.as_ref()))
                {
                    a.effects.push(SessionEffect::CreatesTemp(name));
                }
                Base::Primary(Reason::SelectInto)
            } else if facts.dml {
                Base::Primary(Reason::WritableCte)
            } else if facts.locking {
                Base::Primary(Reason::LockingClause)
            } else {
                Base::ReadOnly
            }
        }
        N::InsertStmt(_) | N::UpdateStmt(_) | N::DeleteStmt(_) | N::MergeStmt(_) => {
            Base::Primary(Reason::Dml)
        }
        N::ExplainStmt(e) => {
            let inner = e.query.as_ref().and_then(|q| q.node.as_ref());
            match inner {
                Some(q) if explain_analyze(&e.options) => statement(q, a),
                Some(q) => {
                    // not run: only the relations it plans against matter
                    a.relations.extend(walk(q).relations);
                    Base::ReadOnly
                }
                None => Base::ReadOnly,
            }
        }
        N::VariableShowStmt(_) => Base::ReadOnly,
        N::VariableSetStmt(s) => set(s, a),
        N::TransactionStmt(t) => transaction(t, a),
        N::DeclareCursorStmt(d) => {
            let inner = d.query.as_ref().and_then(|q| q.node.as_ref());
            let base = inner.map_or(Base::ReadOnly, |q| statement(q, a));
            if d.options & CURSOR_OPT_HOLD != 0 {
                a.effects
                    .push(SessionEffect::HoldCursor(d.portalname.clone()));
                return merge(base, Base::Primary(Reason::HoldCursor));
            }
            base
        }
        N::FetchStmt(_) => Base::AnyNode,
        N::ClosePortalStmt(c) => {
            let name = (!c.portalname.is_empty()).then(|| c.portalname.clone());
            a.effects.push(SessionEffect::CloseCursor(name));
            Base::AnyNode
        }
        N::DiscardStmt(d) => {
            match DiscardMode::try_from(d.target) {
                Ok(DiscardMode::DiscardAll) => a.effects.push(SessionEffect::DiscardAll),
                Ok(DiscardMode::DiscardTemp) => a.effects.push(SessionEffect::DiscardTemp),
                _ => {}
            }
            Base::AnyNode
        }
        N::CopyStmt(c) if c.is_from => Base::Primary(Reason::CopyFrom),
        N::CopyStmt(c) => {
            if let Some(rel) = &c.relation {
                a.relations.push(rel_name(rel));
            }
            match c.query.as_ref().and_then(|q| q.node.as_ref()) {
                Some(q) => statement(q, a),
                None => Base::ReadOnly,
            }
        }
        N::ListenStmt(_) | N::UnlistenStmt(_) => Base::Primary(Reason::Listen),
        N::NotifyStmt(_) => Base::Primary(Reason::Notify),
        N::LockStmt(_) => Base::Primary(Reason::Lock),
        N::CreateStmt(c) => {
            a.created(temp_target(c.relation.as_ref()));
            Base::Primary(Reason::Ddl)
        }
        N::CreateTableAsStmt(c) => {
            a.created(c.into.as_ref().and_then(|i| temp_target(i.rel.as_ref())));
            Base::Primary(if c.is_select_into {
                Reason::SelectInto
            } else {
                Reason::Ddl
            })
        }
        N::ViewStmt(v) => {
            a.created(temp_target(v.view.as_ref()));
            Base::Primary(Reason::Ddl)
        }
        N::CreateSeqStmt(s) => {
            a.created(temp_target(s.sequence.as_ref()));
            Base::Primary(Reason::Ddl)
        }
        N::DropStmt(d) => {
            let names = dropped_relations(d);
            if !names.is_empty() {
                a.effects.push(SessionEffect::Drops(names));
            }
            Base::Primary(Reason::Ddl)
        }
        N::PrepareStmt(_) | N::ExecuteStmt(_) | N::DeallocateStmt(_) => {
            Base::Primary(Reason::PreparedStatement)
        }
        N::CallStmt(_) | N::DoStmt(_) => Base::Primary(Reason::Procedure),
        _ => Base::Primary(Reason::Ddl),
    }
}

/// `DeclareCursorStmt.options`: WITH HOLD.
const CURSOR_OPT_HOLD: i32 = 0x0020;

/// EXPLAIN (ANALYZE ...) or EXPLAIN ANALYZE: the statement runs. An
/// option value not plainly false counts as true.
fn explain_analyze(options: &[protobuf::Node]) -> bool {
    options.iter().any(|o| match &o.node {
        Some(N::DefElem(d)) if d.defname == "analyze" => !d
            .arg
            .as_ref()
            .and_then(|a| a.node.as_ref())
            .is_some_and(is_false),
        _ => false,
    })
}

/// A constant that reads as boolean false (`false`, `off`, `no`, `0`).
fn is_false(n: &N) -> bool {
    use protobuf::a_const::Val;
    let word = |s: &str| {
        matches!(
            s.to_ascii_lowercase().as_str(),
            "false" | "off" | "no" | "0" | "f" | "n"
        )
    };
    match n {
        N::AConst(c) => match &c.val {
            Some(Val::Boolval(b)) => !b.boolval,
            Some(Val::Ival(i)) => i.ival == 0,
            Some(Val::Sval(s)) => word(&s.sval),
            _ => false,
        },
        N::String(s) => word(&s.sval),
        N::Boolean(b) => !b.boolval,
        N::Integer(i) => i.ival == 0,
        _ => false,
    }
}

fn set(s: &protobuf::VariableSetStmt, a: &mut Analysis) -> Base {
    let kind = VariableSetKind::try_from(s.kind).unwrap_or(VariableSetKind::Undefined);
    let name = s.name.as_str();
    if kind == VariableSetKind::VarResetAll {
        a.effects.push(SessionEffect::Route(None));
        return Base::AnyNode;
    }
    if name == "transaction_read_only" {
        return Base::Primary(Reason::SetTransactionReadOnly);
    }
    if name == "TRANSACTION" || name == "SESSION CHARACTERISTICS" {
        // SET TRANSACTION ...: options as DefElems
        let read_only = s.args.iter().any(
            |o| matches!(&o.node, Some(N::DefElem(d)) if d.defname == "transaction_read_only"),
        );
        if read_only && name == "TRANSACTION" {
            return Base::Primary(Reason::SetTransactionReadOnly);
        }
        return Base::AnyNode;
    }
    if name == ROUTE_SETTING {
        let value = match kind {
            VariableSetKind::VarSetValue => {
                s.args
                    .first()
                    .and_then(|v| v.node.as_ref())
                    .and_then(|v| match v {
                        N::AConst(c) => match &c.val {
                            Some(protobuf::a_const::Val::Sval(s)) => {
                                Some(s.sval.to_ascii_lowercase())
                            }
                            _ => None,
                        },
                        _ => None,
                    })
            }
            _ => None,
        };
        let route = match value.as_deref() {
            Some("primary") => Some(RouteOverride::Primary),
            Some("standby") => Some(RouteOverride::Standby),
            Some("any") => Some(RouteOverride::Any),
            // SET TO DEFAULT, RESET; an unknown value counts as none
            _ => None,
        };
        a.effects.push(SessionEffect::Route(route));
    }
    Base::AnyNode
}

fn transaction(t: &protobuf::TransactionStmt, a: &mut Analysis) -> Base {
    use TransactionStmtKind as K;
    match K::try_from(t.kind).unwrap_or(K::Undefined) {
        K::TransStmtBegin | K::TransStmtStart => {
            // the last mode given counts, as in PostgreSQL
            let read_only = t.options.iter().rev().find_map(|o| match &o.node {
                Some(N::DefElem(d)) if d.defname == "transaction_read_only" => Some(
                    !d.arg
                        .as_ref()
                        .and_then(|a| a.node.as_ref())
                        .is_some_and(is_false),
                ),
                _ => None,
            });
            a.effects.push(SessionEffect::Begin { read_only });
            if read_only == Some(true) {
                Base::ReadOnly
            } else {
                Base::Primary(Reason::Transaction)
            }
        }
        K::TransStmtCommit | K::TransStmtRollback => {
            a.effects.push(SessionEffect::End);
            Base::AnyNode
        }
        K::TransStmtPrepare => {
            a.effects.push(SessionEffect::End);
            Base::Primary(Reason::Transaction)
        }
        K::TransStmtCommitPrepared | K::TransStmtRollbackPrepared | K::Undefined => {
            Base::Primary(Reason::Transaction)
        }
        K::TransStmtSavepoint | K::TransStmtRelease | K::TransStmtRollbackTo => Base::AnyNode,
    }
}

fn rel_name(r: &protobuf::RangeVar) -> RelName {
    RelName {
        schema: (!r.schemaname.is_empty()).then(|| r.schemaname.clone()),
        name: r.relname.clone(),
    }
}

/// The name of a relation a CREATE makes temporary (TEMP, or created in
/// `pg_temp`).
fn temp_target(r: Option<&protobuf::RangeVar>) -> Option<String> {
    let r = r?;
    (r.relpersistence == "t" || rel_name(r).in_temp_schema()).then(|| r.relname.clone())
}

/// The unqualified names of the tables, views and sequences DROP removes.
fn dropped_relations(d: &protobuf::DropStmt) -> Vec<String> {
    use ObjectType as O;
    let relation = matches!(
        O::try_from(d.remove_type),
        Ok(O::ObjectTable
            | O::ObjectView
            | O::ObjectSequence
            | O::ObjectMatview
            | O::ObjectForeignTable)
    );
    if !relation {
        return Vec::new();
    }
    d.objects
        .iter()
        .filter_map(|o| match &o.node {
            Some(N::List(l)) => l.items.last().and_then(|i| match &i.node {
                Some(N::String(s)) => Some(s.sval.clone()),
                _ => None,
            }),
            _ => None,
        })
        .collect()
}

impl Analysis {
    pub(crate) fn new(base: Base) -> Analysis {
        Analysis {
            base,
            functions: Vec::new(),
            relations: Vec::new(),
            effects: Vec::new(),
        }
    }

    fn created(&mut self, temp: Option<String>) {
        if let Some(name) = temp {
            self.effects.push(SessionEffect::CreatesTemp(name));
        }
    }

    fn absorb(&mut self, facts: &Facts) {
        for f in &facts.functions {
            let builtin = f.schema.as_deref().is_none_or(|s| s == "pg_catalog");
            if builtin {
                match f.name.as_str() {
                    "pg_advisory_lock"
                    | "pg_advisory_lock_shared"
                    | "pg_try_advisory_lock"
                    | "pg_try_advisory_lock_shared" => {
                        self.effects.push(SessionEffect::SessionAdvisoryLock)
                    }
                    "pg_advisory_unlock_all" => self.effects.push(SessionEffect::AdvisoryUnlockAll),
                    _ => {}
                }
            }
        }
        self.functions.extend(facts.functions.iter().cloned());
        self.relations.extend(facts.relations.iter().cloned());
    }
}
