//! Against real servers and a real `pg_proc`: what the classifier lets a
//! standby run, a hot standby runs; the writes it keeps for the primary,
//! a standby refuses.

use sql::{classify, ProcCatalog, Reason, Route, SessionView, PG_PROC_QUERY};
use testkit::PgServer;

const SETUP: &str = "\
CREATE TABLE t (id int PRIMARY KEY, a int);
INSERT INTO t SELECT g, g FROM generate_series(1, 10) g;
CREATE TABLE u (id int PRIMARY KEY);
CREATE SEQUENCE s;
CREATE TABLE pgbench_accounts (aid int PRIMARY KEY, bid int, abalance int, filler char(84));
INSERT INTO pgbench_accounts SELECT g, 1, 0, '' FROM generate_series(1, 100) g;
CREATE FUNCTION my_func_that_inserts() RETURNS int LANGUAGE sql
    AS 'INSERT INTO u VALUES (1) RETURNING id';
CREATE FUNCTION stable_f() RETURNS int LANGUAGE sql STABLE AS 'SELECT count(*)::int FROM t';";

const READS: &[&str] = &[
    "SELECT abalance FROM pgbench_accounts WHERE aid = 42;",
    "SELECT now(), lower('A'), upper(a::text), md5('x'), count(*) FROM t GROUP BY a",
    "SELECT to_char(now(), 'YYYY'), current_setting('search_path'), version()",
    "SELECT array_agg(id ORDER BY id), json_build_object('a', 1), string_agg(a::text, ',') FROM t",
    "SELECT * FROM generate_series(1, 3) g(i) JOIN t ON t.id = g.i",
    "WITH x AS (SELECT * FROM t) SELECT count(*) FROM x",
    "SELECT stable_f()",
    "TABLE t",
    "VALUES (1, 'a')",
    "SHOW search_path",
    "EXPLAIN SELECT * FROM t",
    "EXPLAIN ANALYZE SELECT * FROM t",
    "EXPLAIN INSERT INTO t VALUES (11, 11)",
    "COPY t TO STDOUT",
    "COPY (SELECT id FROM t) TO STDOUT",
    "BEGIN READ ONLY; SELECT 1; COMMIT",
    "SELECT 1; SELECT 2",
    "SELECT coalesce(a, 0), greatest(a, 1), a IN (1, 2), EXISTS (SELECT 1 FROM u) FROM t",
];

/// Writes a standby refuses, with the classifier's reason for each.
fn writes() -> Vec<(&'static str, Reason)> {
    use Reason::*;
    vec![
        ("INSERT INTO t VALUES (100, 1)", Dml),
        ("UPDATE t SET a = 1", Dml),
        ("DELETE FROM t WHERE id = 0", Dml),
        (
            "MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN DELETE",
            Dml,
        ),
        ("EXPLAIN ANALYZE DELETE FROM t WHERE id = 0", Dml),
        ("CREATE TABLE z (a int)", Ddl),
        ("CREATE TEMP TABLE x (a int)", Ddl),
        ("SELECT * INTO t3 FROM t", SelectInto),
        ("SELECT * FROM t FOR UPDATE", LockingClause),
        (
            "WITH d AS (DELETE FROM t WHERE id = 0 RETURNING *) SELECT * FROM d",
            WritableCte,
        ),
        ("LOCK TABLE t", Lock),
        ("LISTEN ch", Listen),
        ("NOTIFY ch", Notify),
        ("SET transaction_read_only = off", SetTransactionReadOnly),
    ]
}

#[test]
fn a_standby_runs_what_the_classifier_sends_it() {
    let primary = PgServer::primary();
    primary.sql("app", SETUP);
    let standby = PgServer::standby_of(&primary);
    standby.wait_caught_up(&primary);

    let rows = primary.sql("app", PG_PROC_QUERY);
    let catalog = ProcCatalog::from_rows(rows.lines().filter_map(|l| {
        let mut p = l.split('|');
        Some((p.next()?, p.next()?, p.next()?))
    }));
    assert!(catalog.len() > 2000, "{} functions", catalog.len());
    let view = SessionView::default();
    let route = |sql: &str| classify(sql, &catalog, &view).route;

    for sql in READS {
        assert_eq!(route(sql), Route::Standby, "{sql}");
        if let Err(e) = standby.try_sql("app", sql) {
            panic!("{sql}: the standby refused it: {e}");
        }
    }
    let volatile = |name: &str| {
        Reason::VolatileFunction(sql::FuncName {
            schema: None,
            name: name.into(),
        })
    };
    let mut writes = writes();
    writes.extend([
        ("SELECT nextval('s')", volatile("nextval")),
        (
            "SELECT my_func_that_inserts()",
            volatile("my_func_that_inserts"),
        ),
        (
            "SELECT id FROM t WHERE a = nextval('s')",
            volatile("nextval"),
        ),
    ]);
    for (sql, reason) in writes {
        assert_eq!(route(sql), Route::Primary(reason), "{sql}");
        assert!(
            standby.try_sql("app", sql).is_err(),
            "{sql}: the standby ran it"
        );
    }
    // volatile, though a standby runs them: the primary all the same
    for sql in [
        "SELECT random()",
        "SELECT pg_advisory_lock(1)",
        "SELECT clock_timestamp()",
    ] {
        assert!(
            matches!(route(sql), Route::Primary(Reason::VolatileFunction(_))),
            "{sql}"
        );
    }
}
