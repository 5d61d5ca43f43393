//! The classifier's shapes: each read shape may use a standby, each write
//! shape goes to the primary for the right reason.

use std::collections::HashSet;

use proptest::prelude::*;

use crate::*;

fn catalog() -> ProcCatalog {
    ProcCatalog::from_rows([
        ("pg_catalog", "now", "s"),
        ("pg_catalog", "lower", "i"),
        ("pg_catalog", "count", "i"),
        ("pg_catalog", "sum", "i"),
        ("pg_catalog", "generate_series", "i"),
        ("pg_catalog", "current_setting", "s"),
        ("pg_catalog", "json_build_object", "s"),
        ("pg_catalog", "nextval", "v"),
        ("pg_catalog", "random", "v"),
        ("pg_catalog", "pg_advisory_lock", "v"),
        ("pg_catalog", "pg_try_advisory_lock", "v"),
        ("pg_catalog", "pg_advisory_xact_lock", "v"),
        ("pg_catalog", "pg_advisory_unlock_all", "v"),
        ("public", "my_func_that_inserts", "v"),
        ("public", "stable_f", "s"),
        ("public", "ul", "U"),
        ("app", "f", "i"),
        ("app", "g", "v"),
    ])
}

fn class(sql: &str) -> Class {
    classify(sql, &catalog(), &SessionView::default())
}

fn route(sql: &str) -> Route {
    class(sql).route
}

fn primary(sql: &str) -> Reason {
    match route(sql) {
        Route::Primary(r) => r,
        r => panic!("{sql}: {r:?}, not the primary"),
    }
}

fn func(schema: Option<&str>, name: &str) -> FuncName {
    FuncName {
        schema: schema.map(str::to_owned),
        name: name.to_owned(),
    }
}

#[test]
fn read_shapes_may_use_a_standby() {
    for sql in [
        "SELECT 1",
        "select abalance from pgbench_accounts where aid = 42;",
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
        "TABLE t",
        "VALUES (1, 'a'), (2, 'b')",
        "SHOW search_path",
        "SHOW ALL",
        "EXPLAIN SELECT * FROM t",
        "EXPLAIN (ANALYZE) SELECT * FROM t",
        "EXPLAIN ANALYZE SELECT count(*) FROM t",
        "EXPLAIN (ANALYZE false) DELETE FROM t",
        // EXPLAIN without ANALYZE does not run what it plans
        "EXPLAIN INSERT INTO t VALUES (1)",
        "EXPLAIN SELECT nextval('s')",
        "WITH x AS (SELECT * FROM t) SELECT * FROM x JOIN u USING (id)",
        "SELECT lower(name), now(), count(*) FROM t GROUP BY 1, 2",
        "SELECT pg_catalog.lower('A')",
        "SELECT app.f(1)",
        "SELECT stable_f()",
        "SELECT * FROM generate_series(1, 10) g(i)",
        "SELECT CURRENT_TIMESTAMP, current_user, COALESCE(a, b) FROM t",
        "SELECT * FROM t WHERE id IN (SELECT id FROM u WHERE v > 1)",
        "SELECT 1 UNION ALL SELECT 2 EXCEPT SELECT 3",
        "COPY t TO STDOUT",
        "COPY (SELECT * FROM t) TO STDOUT WITH (FORMAT csv)",
        "BEGIN READ ONLY",
        "START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
        "DECLARE c CURSOR FOR SELECT * FROM t",
        "SELECT 1; SELECT 2;",
        "SELECT ';' AS semi; SELECT $$ DELETE FROM t $$",
        "/* app:web */ SELECT 1 -- trailing DELETE",
        "SELECT 'x' /* nested /* DELETE FROM t; */ comment */",
        "SELECT 1; SET search_path = app",
    ] {
        assert_eq!(route(sql), Route::Standby, "{sql}");
    }
}

#[test]
fn session_and_transaction_statements_run_anywhere() {
    for sql in [
        "SET search_path = app, public",
        "SET LOCAL work_mem = '64MB'",
        "SET TIME ZONE 'UTC'",
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "RESET ALL",
        "RESET statement_timeout",
        "COMMIT",
        "ROLLBACK",
        "END",
        "SAVEPOINT a",
        "RELEASE SAVEPOINT a",
        "ROLLBACK TO SAVEPOINT a",
        "FETCH 10 FROM c",
        "CLOSE c",
        "DISCARD ALL",
        "",
        "  ;  ",
        "-- only a comment",
    ] {
        assert_eq!(route(sql), Route::AnyNode, "{sql}");
    }
}

#[test]
fn write_shapes_go_to_the_primary() {
    use Reason::*;
    let cases: &[(&str, Reason)] = &[
        ("INSERT INTO t VALUES (1)", Dml),
        ("UPDATE t SET a = 1 WHERE id = 2", Dml),
        ("DELETE FROM t", Dml),
        (
            "MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN DELETE",
            Dml,
        ),
        ("INSERT INTO t SELECT * FROM u RETURNING *", Dml),
        // known by the first word, without a parse
        ("  insert into t values (1);  ", Dml),
        ("INSERT INTO t VALUES ('a;b')", Dml),
        ("Update t SET a = 1", Dml),
        ("INSERT garbage", Dml),
        ("EXPLAIN ANALYZE DELETE FROM t", Dml),
        ("EXPLAIN (ANALYZE, BUFFERS) UPDATE t SET a = 1", Dml),
        ("EXPLAIN (ANALYZE on) INSERT INTO t VALUES (1)", Dml),
        ("CREATE TABLE t (a int)", Ddl),
        ("ALTER TABLE t ADD COLUMN b int", Ddl),
        ("DROP TABLE t", Ddl),
        ("CREATE INDEX ON t (a)", Ddl),
        ("GRANT SELECT ON t TO bob", Ddl),
        ("VACUUM t", Ddl),
        ("CHECKPOINT", Ddl),
        ("REFRESH MATERIALIZED VIEW v", Ddl),
        ("TRUNCATE t", Ddl),
        ("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", Lock),
        ("LISTEN ch", Listen),
        ("UNLISTEN *", Listen),
        ("NOTIFY ch, 'x'", Notify),
        ("COPY t FROM STDIN", CopyFrom),
        ("COPY t (a, b) FROM STDIN WITH (FORMAT csv)", CopyFrom),
        ("SET transaction_read_only = off", SetTransactionReadOnly),
        (
            "SET SESSION transaction_read_only TO on",
            SetTransactionReadOnly,
        ),
        ("SET TRANSACTION READ WRITE", SetTransactionReadOnly),
        ("SELECT * INTO t2 FROM t", SelectInto),
        ("CREATE TABLE t2 AS SELECT * FROM t", Ddl),
        ("SELECT * FROM t FOR UPDATE", LockingClause),
        (
            "SELECT * FROM t FOR NO KEY UPDATE SKIP LOCKED",
            LockingClause,
        ),
        ("SELECT * FROM t FOR SHARE OF t", LockingClause),
        (
            "SELECT * FROM (SELECT * FROM t FOR KEY SHARE) s",
            LockingClause,
        ),
        ("SELECT EXISTS (SELECT 1 FROM t FOR UPDATE)", LockingClause),
        (
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
            WritableCte,
        ),
        (
            "WITH i AS (INSERT INTO t VALUES (1) RETURNING id) SELECT id FROM i",
            WritableCte,
        ),
        (
            "WITH u AS (UPDATE t SET a = 1 RETURNING *) SELECT 1",
            WritableCte,
        ),
        ("BEGIN", Transaction),
        ("START TRANSACTION", Transaction),
        ("BEGIN READ WRITE", Transaction),
        ("BEGIN ISOLATION LEVEL SERIALIZABLE", Transaction),
        ("PREPARE TRANSACTION 'x'", Transaction),
        ("COMMIT PREPARED 'x'", Transaction),
        ("DECLARE c CURSOR WITH HOLD FOR SELECT * FROM t", HoldCursor),
        ("PREPARE p AS SELECT 1", PreparedStatement),
        ("EXECUTE p", PreparedStatement),
        ("DEALLOCATE p", PreparedStatement),
        ("CALL proc()", Procedure),
        ("DO $$ BEGIN PERFORM 1; END $$", Procedure),
        ("SELEC 1", DoesNotParse),
        ("SELECT 'unterminated", DoesNotParse),
        ("SELECT (1", DoesNotParse),
        // a write anywhere in a multi-statement string
        ("SELECT 1; DELETE FROM t", Dml),
        ("SELECT 1; SELECT 2; CREATE TABLE x ()", Ddl),
        ("SET a = 1; LISTEN ch; SELECT 1", Listen),
        // the hint
        ("/*NO LOAD BALANCE*/ SELECT 1", NoLoadBalanceHint),
        ("  /* no load balance */ SELECT * FROM t", NoLoadBalanceHint),
    ];
    for (sql, reason) in cases {
        assert_eq!(primary(sql), *reason, "{sql}");
    }
    // the hint must come first
    assert_eq!(route("SELECT 1 /*NO LOAD BALANCE*/"), Route::Standby);
    assert_eq!(route("/* NO LOAD */ SELECT 1"), Route::Standby);
}

#[test]
fn functions_are_looked_up() {
    use Reason::*;
    assert_eq!(
        primary("SELECT nextval('s')"),
        VolatileFunction(func(None, "nextval"))
    );
    assert_eq!(
        primary("SELECT my_func_that_inserts()"),
        VolatileFunction(func(None, "my_func_that_inserts"))
    );
    assert_eq!(
        primary("SELECT pg_advisory_lock(1)"),
        VolatileFunction(func(None, "pg_advisory_lock"))
    );
    assert_eq!(
        primary("SELECT app.g()"),
        VolatileFunction(func(Some("app"), "g"))
    );
    // not on the approximated search_path (pg_catalog, public)
    assert_eq!(primary("SELECT f(1)"), UnknownFunction(func(None, "f")));
    assert_eq!(
        primary("SELECT no_such()"),
        UnknownFunction(func(None, "no_such"))
    );
    // wherever the call stands
    for sql in [
        "SELECT * FROM t WHERE id = nextval('s')",
        "SELECT * FROM t ORDER BY random()",
        "SELECT * FROM t LIMIT nextval('s')",
        "SELECT * FROM t OFFSET (SELECT nextval('s'))",
        "SELECT * FROM nextval('s')",
        "SELECT CASE WHEN a THEN random() END FROM t",
        "SELECT sum(a) FILTER (WHERE random() > 0.5) FROM t",
        "SELECT ARRAY[random()]",
        "SELECT (random()).x",
        "SELECT * FROM t WHERE EXISTS (SELECT random())",
        "WITH x AS (SELECT random()) SELECT * FROM x",
        "VALUES (random())",
        "SELECT count(*) OVER (PARTITION BY random()) FROM t",
        "SELECT * FROM t JOIN u ON t.a = random()",
        "SELECT DISTINCT ON (random()) a FROM t",
        "SELECT a FROM t GROUP BY ROLLUP (random())",
        "SELECT json_build_object('a', random())",
        "COPY (SELECT random()) TO STDOUT",
        "DECLARE c CURSOR FOR SELECT random()",
        "EXPLAIN ANALYZE SELECT random()",
    ] {
        assert!(
            matches!(route(sql), Route::Primary(VolatileFunction(_))),
            "{sql}: {:?}",
            route(sql)
        );
    }
    assert_eq!(
        class("SELECT lower(a), app.f(1) FROM t").functions(),
        &[func(None, "lower"), func(Some("app"), "f")]
    );
    assert_eq!(
        primary("SELECT app.g()").to_string(),
        "calls volatile app.g()"
    );
    // nothing known yet (before the first catalog read): the primary
    let empty = ProcCatalog::default();
    assert!(matches!(
        classify("SELECT now()", &empty, &SessionView::default()).route,
        Route::Primary(UnknownFunction(_))
    ));
}

#[test]
fn temporary_tables() {
    let temps: HashSet<String> = ["scratch".to_owned()].into();
    let session = SessionView {
        temp_relations: Some(&temps),
        ..SessionView::default()
    };
    let c = |sql: &str| classify(sql, &catalog(), &session).route;
    let temp = |schema: Option<&str>, name: &str| {
        Route::Primary(Reason::TempTable(RelName {
            schema: schema.map(str::to_owned),
            name: name.to_owned(),
        }))
    };
    assert_eq!(c("SELECT * FROM scratch"), temp(None, "scratch"));
    assert_eq!(
        c("SELECT * FROM t WHERE id IN (SELECT id FROM scratch)"),
        temp(None, "scratch")
    );
    assert_eq!(c("EXPLAIN SELECT * FROM scratch"), temp(None, "scratch"));
    assert_eq!(c("SELECT * FROM pg_temp.x"), temp(Some("pg_temp"), "x"));
    assert_eq!(c("TABLE pg_temp_3.x"), temp(Some("pg_temp_3"), "x"));
    assert_eq!(c("COPY scratch TO STDOUT"), temp(None, "scratch"));
    // qualified with another schema: not the temporary one
    assert_eq!(c("SELECT * FROM public.scratch"), Route::Standby);
    assert_eq!(c("SELECT * FROM other"), Route::Standby);
    assert_eq!(route("SELECT * FROM scratch"), Route::Standby);
}

#[test]
fn session_effects() {
    use SessionEffect::*;
    let effects = |sql: &str| class(sql).effects().to_vec();
    assert_eq!(
        effects("CREATE TEMP TABLE x (a int)"),
        vec![CreatesTemp("x".into())]
    );
    assert_eq!(
        effects("CREATE TEMPORARY TABLE IF NOT EXISTS y AS SELECT 1"),
        vec![CreatesTemp("y".into())]
    );
    assert_eq!(
        effects("CREATE TABLE pg_temp.z (a int)"),
        vec![CreatesTemp("z".into())]
    );
    assert_eq!(
        effects("SELECT 1 INTO TEMP w"),
        vec![CreatesTemp("w".into())]
    );
    assert_eq!(
        effects("CREATE TEMP VIEW v AS SELECT 1"),
        vec![CreatesTemp("v".into())]
    );
    assert_eq!(
        effects("CREATE TEMP SEQUENCE s"),
        vec![CreatesTemp("s".into())]
    );
    assert_eq!(effects("CREATE TABLE x (a int)"), vec![]);
    assert_eq!(
        effects("DROP TABLE x, app.y"),
        vec![Drops(vec!["x".into(), "y".into()])]
    );
    assert_eq!(
        effects("SELECT pg_advisory_lock(1)"),
        vec![SessionAdvisoryLock]
    );
    assert_eq!(
        effects("SELECT pg_catalog.pg_try_advisory_lock(1, 2)"),
        vec![SessionAdvisoryLock]
    );
    assert_eq!(effects("SELECT pg_advisory_xact_lock(1)"), vec![]);
    assert_eq!(
        effects("SELECT pg_advisory_unlock_all()"),
        vec![AdvisoryUnlockAll]
    );
    assert_eq!(
        effects("DECLARE c CURSOR WITH HOLD FOR SELECT 1"),
        vec![HoldCursor("c".into())]
    );
    assert_eq!(effects("DECLARE c CURSOR FOR SELECT 1"), vec![]);
    assert_eq!(effects("CLOSE c"), vec![CloseCursor(Some("c".into()))]);
    assert_eq!(effects("CLOSE ALL"), vec![CloseCursor(None)]);
    assert_eq!(effects("DISCARD ALL"), vec![DiscardAll,]);
    assert_eq!(effects("DISCARD TEMP"), vec![DiscardTemp]);
    assert_eq!(effects("DISCARD PLANS"), vec![]);
    assert_eq!(effects("BEGIN"), vec![Begin { read_only: None }]);
    assert_eq!(
        effects("BEGIN READ ONLY"),
        vec![Begin {
            read_only: Some(true)
        }]
    );
    assert_eq!(
        effects("START TRANSACTION READ WRITE"),
        vec![Begin {
            read_only: Some(false)
        }]
    );
    assert_eq!(effects("COMMIT; ROLLBACK; ABORT"), vec![End, End, End]);
    assert_eq!(effects("PREPARE TRANSACTION 'g'"), vec![End]);
    // PRIMARY and ANY are reserved words: quoted, as the server wants them
    assert_eq!(
        effects("SET pgwarden.route = 'primary'"),
        vec![Route(Some(RouteOverride::Primary))]
    );
    assert_eq!(
        effects("SET pgwarden.route TO standby"),
        vec![Route(Some(RouteOverride::Standby))]
    );
    assert_eq!(
        effects("set pgwarden.route = 'ANY'"),
        vec![Route(Some(RouteOverride::Any))]
    );
    assert_eq!(
        route("SET pgwarden.route = primary"),
        crate::Route::Primary(Reason::DoesNotParse)
    );
    assert_eq!(
        effects("SET pgwarden.route = 'sideways'"),
        vec![Route(None)]
    );
    assert_eq!(effects("RESET pgwarden.route"), vec![Route(None)]);
    assert_eq!(effects("SET pgwarden.route TO DEFAULT"), vec![Route(None)]);
    assert_eq!(effects("RESET ALL"), vec![Route(None)]);
    assert_eq!(
        route("SET pgwarden.route = 'primary'"),
        crate::Route::AnyNode
    );
    // in order, across statements
    assert_eq!(
        effects("BEGIN READ ONLY; SELECT pg_advisory_lock(7); COMMIT"),
        vec![
            Begin {
                read_only: Some(true)
            },
            SessionAdvisoryLock,
            End
        ]
    );
    // a write first does not hide what follows
    assert_eq!(
        effects("DELETE FROM t; CREATE TEMP TABLE x ()"),
        vec![CreatesTemp("x".into())]
    );
    // a hinted statement still reports what it does
    assert_eq!(
        effects("/*NO LOAD BALANCE*/ CREATE TEMP TABLE x ()"),
        vec![CreatesTemp("x".into())]
    );
}

#[test]
fn session_state_follows_the_effects() {
    let mut s = SessionState::default();
    let mut run = |sql: &str| {
        let c = classify(sql, &catalog(), &s.view(Strings::Standard));
        s.apply(c.effects());
        (c.route, s.pinned_to_primary())
    };
    assert_eq!(run("SELECT * FROM scratch"), (Route::Standby, false));
    assert!(run("CREATE TEMP TABLE scratch (a int)").1);
    assert!(matches!(
        run("SELECT * FROM scratch"),
        (Route::Primary(Reason::TempTable(_)), true)
    ));
    assert_eq!(
        run("DROP TABLE scratch"),
        (Route::Primary(Reason::Ddl), false)
    );
    assert!(run("SELECT pg_advisory_lock(1)").1);
    assert!(!run("SELECT pg_advisory_unlock_all()").1);
    assert!(run("DECLARE c CURSOR WITH HOLD FOR SELECT 1").1);
    assert!(!run("CLOSE c").1);
    run("CREATE TEMP TABLE a (); SELECT pg_advisory_lock(1)");
    assert_eq!(run("DISCARD TEMP"), (Route::AnyNode, true));
    assert_eq!(run("DISCARD ALL"), (Route::AnyNode, false));
    run("SET pgwarden.route = 'primary'");
    assert_eq!(s.route_override(), Some(RouteOverride::Primary));
    s.apply(&[SessionEffect::DiscardAll]);
    assert_eq!(s, SessionState::default());
}

#[test]
fn strings_are_read_as_the_server_reads_them() {
    // with standard_conforming_strings off the server reads 'x\'' as x'
    // and then runs the DELETE
    let sql = "SELECT 'x\\'';DELETE FROM t;--'";
    let with = |strings| {
        let session = SessionView {
            strings,
            ..SessionView::default()
        };
        classify(sql, &catalog(), &session).route
    };
    assert_eq!(with(Strings::Standard), Route::Standby);
    assert_eq!(with(Strings::Backslash), Route::Primary(Reason::Dml));
    assert_eq!(
        with(Strings::Either),
        Route::Primary(Reason::BackslashStrings)
    );
    // readings that agree
    let session = SessionView {
        strings: Strings::Either,
        ..SessionView::default()
    };
    assert_eq!(
        classify("SELECT E'a\\\\b'", &catalog(), &session).route,
        Route::Standby
    );
}

#[test]
fn cache_counts_hits_and_needs_no_invalidation() {
    let cache = Cache::default();
    let sql = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";
    let view = SessionView::default();
    assert_eq!(cache.classify(sql, &catalog(), &view).route, Route::Standby);
    assert_eq!(cache.classify(sql, &catalog(), &view).route, Route::Standby);
    assert_eq!(
        cache.stats(),
        CacheStats {
            hits: 1,
            misses: 1,
            entries: 1
        }
    );
    // a newer catalog applies to cached queries at once
    let mut newer = catalog();
    newer.insert("public", "stable_f", Volatility::Volatile);
    let q = "SELECT stable_f()";
    assert_eq!(cache.classify(q, &catalog(), &view).route, Route::Standby);
    assert!(matches!(
        cache.classify(q, &newer, &view).route,
        Route::Primary(Reason::VolatileFunction(_))
    ));
    // bounded: the least recently used query goes
    let small = Cache::new(std::num::NonZeroUsize::new(2).unwrap(), 100);
    for q in ["SELECT a", "SELECT b", "SELECT c", "SELECT a"] {
        small.classify(q, &catalog(), &view);
    }
    let s = small.stats();
    assert_eq!((s.hits, s.misses, s.entries), (0, 4, 2));
    // inlined values: one entry per shape
    let cache = Cache::default();
    for aid in [1, 22, 333] {
        let q = format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid};");
        assert_eq!(cache.classify(&q, &catalog(), &view).route, Route::Standby);
    }
    let q = "SELECT nextval('a'), x FROM t WHERE y = 'b'";
    assert!(!cache.classify(q, &catalog(), &view).may_use_standby());
    let q = "SELECT nextval('c'), x FROM t WHERE y = 'd'";
    assert!(!cache.classify(q, &catalog(), &view).may_use_standby());
    let s = cache.stats();
    assert_eq!((s.hits, s.misses, s.entries), (3, 2, 2));
    // several statements are kept by their text
    assert_eq!(
        cache
            .classify("SELECT 1; SELECT 2", &catalog(), &view)
            .route,
        Route::Standby
    );
    assert_eq!(
        cache
            .classify("SELECT 1; DELETE FROM t", &catalog(), &view)
            .route,
        Route::Primary(Reason::Dml)
    );
    // too long to keep
    let long = format!("SELECT {}", "1 + ".repeat(50) + "1");
    small.classify(&long, &catalog(), &view);
    small.classify(&long, &catalog(), &view);
    assert_eq!(small.stats().hits, 0);
}

#[test]
fn deep_and_long_queries() {
    // nesting beyond the protobuf decoder's recursion limit does not parse
    for depth in [10, 50, 90, 200, 1000] {
        let parens = format!("SELECT {}random(){}", "(".repeat(depth), ")".repeat(depth));
        let subselects = format!("{}random(){}", "SELECT (".repeat(depth), ")".repeat(depth));
        for sql in [parens, subselects] {
            let r = route(&sql);
            assert!(matches!(r, Route::Primary(_)), "depth {depth}: {r:?}");
        }
    }
    // a chain of operators nests as deep (left-deep): from about 47 on
    for n in [10, 45] {
        let chain = format!("SELECT {}1", "a || ".repeat(n));
        assert_eq!(route(&chain), Route::Standby, "{n}");
    }
    for n in [48, 1_000] {
        let chain = format!("SELECT {}1", "a || ".repeat(n));
        assert_eq!(route(&chain), Route::Primary(Reason::TooDeep), "{n}");
    }
    let wide = format!("SELECT {}1 FROM t", "a, lower(b), ".repeat(50_000));
    assert_eq!(route(&wide), Route::Standby);
}

/// Pieces of SELECTs whose literals change: `#` stands for a number,
/// `@` for a string literal's text.
fn shaped_pieces() -> impl Strategy<Value = Vec<&'static str>> {
    proptest::collection::vec(
        prop_oneof![
            Just("x"),
            Just("FROM t"),
            Just("WHERE"),
            Just("="),
            Just("#"),
            Just("'@'"),
            Just("nextval('@')"),
            Just("lower('@')"),
            Just("FOR UPDATE"),
            Just(","),
            Just("("),
            Just(")"),
            Just("--"),
            Just("\n"),
            Just("/*"),
            Just("*/"),
            Just("$$"),
            Just("E'@'"),
            Just("'"),
            Just("\\"),
            Just(";"),
            Just("DELETE FROM t"),
            Just("random()"),
            Just("a#"),
            Just("$1"),
            Just("\""),
            Just("$q$@$q$"),
            Just("1.#e#"),
            Just("@"),
            Just("'@"),
            Just("@'"),
        ],
        0..14,
    )
}

/// Where a piece ends, and what it is: `L`iteral, `C`omment or `;`.
type Ending = (usize, char);

/// Where the lexer's literals, comments and semicolons end, and where the
/// server's own scanner (libpg_query's copy) says they end; `None` when
/// the server's scanner rejects the text (an unterminated literal).
fn lexer_and_server(sql: &str) -> Option<(Vec<Ending>, Vec<Ending>)> {
    use crate::lexer::{scan, Piece};
    use pg_query::protobuf::Token;
    let theirs = pg_query::scan(sql).ok()?;
    let theirs = theirs
        .tokens
        .iter()
        .filter_map(|t| {
            let kind = match Token::try_from(t.token).ok()? {
                Token::Sconst | Token::Usconst | Token::Bconst | Token::Xconst => 'L',
                Token::SqlComment | Token::CComment => 'C',
                Token::Ascii59 => ';',
                _ => return None,
            };
            Some((usize::try_from(t.end).ok()?, kind))
        })
        .collect();
    let mut ours = Vec::new();
    scan(sql.as_bytes(), false, |kind, _, end| match kind {
        Piece::Literal => ours.push((end, 'L')),
        Piece::Comment => ours.push((end, 'C')),
        Piece::Semicolon => ours.push((end, ';')),
        Piece::QuotedIdent | Piece::Other => {}
    });
    Some((ours, theirs))
}

/// Pieces of SELECTs, many of which the grammar accepts.
fn lexer_pieces() -> impl Strategy<Value = Vec<&'static str>> {
    proptest::collection::vec(
        prop_oneof![
            Just("'a'"),
            Just("'it''s;'"),
            Just("E'\\';'"),
            Just("E'a'"),
            Just("$$;$$"),
            Just("$a$'$$$a$"),
            Just("-- ';\n"),
            Just("--"),
            Just("/* '; /* $$ */ */"),
            Just("U&'x'"),
            Just("B'1'"),
            Just("X'f'"),
            Just("\n"),
            Just("'"),
            Just("\\"),
            Just(","),
            Just("1"),
            Just("x"),
            Just("e"),
            Just("; SELECT "),
            Just("\"q;\""),
            Just("$1"),
            Just(" "),
        ],
        0..16,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// In a query the server's grammar accepts, the lexer (statement
    /// splitting, literal shapes) ends literals, comments and statements
    /// where the server's scanner does. (In rejected ones they may
    /// differ: `B'1''0'`, `1$$x$$`; nothing runs either way.)
    #[test]
    fn the_lexer_agrees_with_the_server_scanner(pieces in lexer_pieces()) {
        let sql = format!("SELECT {}", pieces.concat());
        if pg_query::parse(&sql, 0).is_ok() {
            let (ours, theirs) = lexer_and_server(&sql).expect("scans");
            prop_assert_eq!(ours, theirs, "{:?}", sql);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// A query classified by the shape of another (same text but for its
    /// literals) gets the class its own text gets, or one of the two does
    /// not parse (the server rejects it wherever it goes).
    #[test]
    fn a_shape_classifies_as_its_text(
        pieces in shaped_pieces(),
        one in prop_oneof![Just(("1", "a")), Just(("42", "b c")), Just(("007", "--"))],
        // text that is code wherever it is not inside a literal
        two in prop_oneof![
            Just(("3", ";")), Just(("99", "/*")), Just(("5", "$$")), Just(("0", "x'y")),
            Just(("8", "random()")), Just(("9", "*/ random()")), Just(("6", "\n, random()")),
        ],
    ) {
        let template = format!("SELECT {}", pieces.join(" "));
        let fill = |(n, s): (&str, &str)| template.replace('#', n).replace('@', s);
        let (first, second) = (fill(one), fill(two));
        let view = SessionView::default();
        let cache = Cache::default();
        cache.classify(&first, &catalog(), &view);
        let cached = cache.classify(&second, &catalog(), &view).route;
        let own = classify(&second, &catalog(), &view).route;
        let unparsed = Route::Primary(Reason::DoesNotParse);
        prop_assert!(
            cached == own || cached == unparsed || own == unparsed,
            "{first:?} then {second:?}: {cached:?}, its own {own:?}"
        );
    }

    #[test]
    fn arbitrary_text_never_panics(sql in "\\PC{0,200}") {
        let _ = classify(&sql, &catalog(), &SessionView::default());
    }

    #[test]
    fn sql_like_text_never_panics(
        parts in proptest::collection::vec(
            prop_oneof![
                Just("SELECT"), Just("INSERT INTO t"), Just("FROM"), Just("WHERE"),
                Just("("), Just(")"), Just(";"), Just("'"), Just("$$"), Just("/*"),
                Just("*/"), Just("--"), Just("\n"), Just("FOR UPDATE"), Just("WITH"),
                Just("x AS"), Just("random()"), Just("EXPLAIN"), Just("ANALYZE"),
                Just("SET"), Just("pgwarden.route"), Just("="), Just("1"), Just(","),
                Just("DECLARE c CURSOR WITH HOLD FOR"), Just("BEGIN"), Just("\\"),
                Just("E'"), Just("\""), Just("pg_temp.t"), Just("DROP TABLE"),
            ],
            0..24,
        )
    ) {
        let sql = parts.join(" ");
        let c = classify(&sql, &catalog(), &SessionView::default());
        // nothing with a write verb outside quotes may reach a standby;
        // checked loosely: a query that parses and has INSERT first
        if sql.trim_start().starts_with("INSERT INTO t") {
            prop_assert!(!c.may_use_standby(), "{sql}: {c:?}");
        }
    }
}

/// The cost of a classification, for the record (no timed assertion):
/// `cargo test --release -p sql -- --ignored --nocapture classify_cost`.
#[test]
#[ignore]
fn classify_cost() {
    use std::time::{Duration, Instant};
    let catalog = catalog();
    let view = SessionView::default();
    let n = 20_000u32;
    let mean = |f: &mut dyn FnMut(u32)| -> Duration {
        let t = Instant::now();
        (0..n).for_each(&mut *f);
        t.elapsed() / n
    };
    // pgbench -S: the extended protocol's text (-M extended, prepared),
    // and the simple protocol's, with the literal inlined (-M simple)
    let prepared = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;";
    let simple: Vec<String> = (0..n)
        .map(|i| format!("SELECT abalance FROM pgbench_accounts WHERE aid = {i};"))
        .collect();
    // a miss of the cache: as many shapes as queries
    let shapes: Vec<String> = (0..n)
        .map(|i| format!("SELECT abalance FROM pgbench_accounts_{i} WHERE aid = $1;"))
        .collect();

    let cache = Cache::default();
    cache.classify(prepared, &catalog, &view);
    let hit = mean(&mut |_| assert!(cache.classify(prepared, &catalog, &view).may_use_standby()));
    let shape_hit = mean(&mut |i| {
        assert!(cache
            .classify(&simple[i as usize], &catalog, &view)
            .may_use_standby())
    });
    let miss = mean(&mut |i| {
        assert!(cache
            .classify(&shapes[i as usize], &catalog, &view)
            .may_use_standby())
    });
    let uncached =
        mean(&mut |i| assert!(classify(&simple[i as usize], &catalog, &view).may_use_standby()));
    let parse = mean(&mut |i| assert!(pg_query::parse(&simple[i as usize], 0).is_ok()));
    println!(
        "classify, pgbench -S statement: cache hit {hit:?} (by text), {shape_hit:?} (by shape, \
         literal inlined); miss {miss:?}; without a cache {uncached:?} (pg_query::parse alone {parse:?})"
    );
    let s = cache.stats();
    assert_eq!((s.hits, s.misses), (2 * u64::from(n) - 1, u64::from(n) + 2));
    // p99 per call, each timed on its own (the clock adds some 20 ns)
    let p99 = |f: &mut dyn FnMut(u32)| -> Duration {
        let mut t: Vec<Duration> = (0..n)
            .map(|i| {
                let s = Instant::now();
                f(i);
                s.elapsed()
            })
            .collect();
        t.sort();
        t[t.len() * 99 / 100]
    };
    let hit99 = p99(&mut |_| assert!(cache.classify(prepared, &catalog, &view).may_use_standby()));
    let shape99 = p99(&mut |i| {
        assert!(cache
            .classify(&simple[i as usize], &catalog, &view)
            .may_use_standby())
    });
    println!("classify p99: cache hit {hit99:?} (by text), {shape99:?} (by shape)");
}

#[test]
fn unlogged_tables_are_read_on_the_primary() {
    let rel = |schema: Option<&str>| RelName {
        schema: schema.map(Into::into),
        name: "ul".into(),
    };
    assert_eq!(primary("SELECT * FROM ul"), Reason::Unlogged(rel(None)));
    assert_eq!(
        primary("SELECT * FROM public.ul"),
        Reason::Unlogged(rel(Some("public")))
    );
    assert_eq!(route("SELECT * FROM other.ul"), Route::Standby);
    assert_eq!(route("SELECT * FROM t"), Route::Standby);
}
