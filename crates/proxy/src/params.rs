//! Session state a client sets with SQL, tracked so that in transaction
//! mode it can be re-applied on whichever server connection the client gets:
//! parameters (SET / RESET / startup parameters) and LISTEN channels.
//! Pure functions over query text; no I/O. The lexical rules (where a
//! statement ends, words, names) are `sql::lexer`'s.

pub use sql::lexer::Strings;
use sql::lexer::{normalize_name, portable_value, split_statements, word, SQL_SPACE};

/// Session parameters as `(lower-case name, value as SQL text)`. A server's
/// set can be `unknown` (a transaction rolled back part of what it set):
/// the next client then gets a full `RESET ALL` and its own parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParamSet(Vec<(String, String)>, bool);

impl ParamSet {
    pub const EMPTY: ParamSet = ParamSet(Vec::new(), false);

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// The real session state is not known any more.
    pub fn mark_unknown(&mut self) {
        self.0.clear();
        self.1 = true;
    }

    /// Applies a change as PostgreSQL does on a session whose startup
    /// packet set `startup` (RESET goes back to a startup value; RESET ALL
    /// keeps the role; DISCARD ALL does not).
    pub fn apply_with(&mut self, change: &ParamChange, startup: &ParamSet) {
        match change {
            ParamChange::Set { name, value } => self.put(name, value),
            ParamChange::Reset { name } => match startup.get(name) {
                Some(v) => self.put(name, v),
                None => self.0.retain(|(n, _)| n != name),
            },
            ParamChange::ResetAll | ParamChange::ResetSession => {
                let all = *change == ParamChange::ResetSession;
                self.0
                    .retain(|(n, _)| !all && SURVIVE_RESET_ALL.contains(&n.as_str()));
                for (n, v) in &startup.0 {
                    // a kept role stays what it is now
                    if all || self.get(n).is_none() || !SURVIVE_RESET_ALL.contains(&n.as_str()) {
                        self.put(n, v);
                    }
                }
            }
        }
    }

    /// Applies a change on a session without startup parameters (the
    /// proxy's own server connections).
    pub fn apply(&mut self, change: &ParamChange) {
        self.apply_with(change, &ParamSet::EMPTY)
    }

    /// What `apply` does with a SET, for values already owned.
    fn put_owned(&mut self, name: String, value: String) {
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name, value)),
        }
    }

    fn put(&mut self, name: &str, value: &str) {
        match self.0.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => value.clone_into(&mut slot.1),
            None => self.0.push((name.to_owned(), value.to_owned())),
        }
    }

    /// SQL that turns a connection whose session has `server` into one
    /// with `self`; `None` when they already agree.
    pub fn diff_sql(&self, server: &ParamSet) -> Option<String> {
        if server.1 {
            // RESET ALL leaves the role; SET SESSION AUTHORIZATION DEFAULT
            // resets it (what DISCARD ALL does, allowed for every user).
            let mut sql = String::from("SET SESSION AUTHORIZATION DEFAULT;RESET ALL;");
            for (n, v) in &self.0 {
                sql.push_str(&format!("SET {} = {};", quote_ident(n), v));
            }
            return Some(sql);
        }
        let mut sql = String::new();
        for (n, v) in &self.0 {
            if server.get(n) != Some(v.as_str()) {
                sql.push_str(&format!("SET {} = {};", quote_ident(n), v));
            }
        }
        for (n, _) in &server.0 {
            if self.get(n).is_none() {
                sql.push_str(&format!("RESET {};", quote_ident(n)));
            }
        }
        (!sql.is_empty()).then_some(sql)
    }
}

/// Parameters `RESET ALL` does not touch (GUC_NO_RESET_ALL) that clients
/// set: `SET ROLE` survives it, and only DISCARD ALL (or SET SESSION
/// AUTHORIZATION) ends it.
const SURVIVE_RESET_ALL: [&str; 1] = ["role"];

fn quote_ident(name: &str) -> String {
    if name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
    {
        name.to_owned()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamChange {
    Set {
        name: String,
        value: String,
    },
    Reset {
        name: String,
    },
    /// RESET ALL
    ResetAll,
    /// DISCARD ALL: RESET ALL and the role too.
    ResetSession,
}

/// What one statement does to session state, for statements whose command
/// tag the relay watches for (SET, RESET, LISTEN, UNLISTEN, DISCARD,
/// DEALLOCATE). `Untracked` keeps statement order aligned with command tags
/// for statements such as SET LOCAL that change nothing beyond the
/// transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Param(ParamChange),
    Listen(String),
    Unlisten(Option<String>),
    DiscardAll,
    DeallocateAll,
    /// Changes session state the proxy does not model (SET SESSION
    /// AUTHORIZATION, SET SESSION CHARACTERISTICS): the server connection
    /// must be cleaned up before another client gets it.
    Unmodelled(Verb),
    Untracked(Verb),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Set,
    Reset,
    Listen,
    Unlisten,
    Discard,
    Deallocate,
}

impl Verb {
    /// The verb of a command tag ("SET", "DISCARD ALL", ...).
    pub fn of_tag(tag: &[u8]) -> Option<Verb> {
        // Called for every CommandComplete: most tags (SELECT 1, INSERT 0
        // 1, UPDATE 1, BEGIN, COMMIT) are ruled out by their first bytes.
        let (verb, word): (Verb, &[u8]) = match (tag.first()?, tag.get(1)) {
            (b'S', Some(b'E')) => (Verb::Set, b"SET"),
            (b'R', _) => (Verb::Reset, b"RESET"),
            (b'L', _) => (Verb::Listen, b"LISTEN"),
            (b'U', Some(b'N')) => (Verb::Unlisten, b"UNLISTEN"),
            (b'D', Some(b'I')) => (Verb::Discard, b"DISCARD"),
            (b'D', Some(b'E')) => (Verb::Deallocate, b"DEALLOCATE"),
            _ => return None,
        };
        let rest = tag.strip_prefix(word)?;
        (rest.is_empty() || rest[0] == b' ').then_some(verb)
    }
}

impl Effect {
    pub fn verb(&self) -> Verb {
        match self {
            Effect::Param(ParamChange::Set { .. }) => Verb::Set,
            Effect::Param(_) => Verb::Reset,
            Effect::Listen(_) => Verb::Listen,
            Effect::Unlisten(_) => Verb::Unlisten,
            Effect::DiscardAll => Verb::Discard,
            Effect::DeallocateAll => Verb::Deallocate,
            Effect::Unmodelled(v) | Effect::Untracked(v) => *v,
        }
    }
}

/// Cheap test run on every query: can it contain a statement we track?
/// True when the query starts with a tracked verb, or when it has more than
/// one statement (a ';' followed by more text).
pub fn may_have_effects(sql: &[u8]) -> bool {
    const VERBS: [&[u8]; 6] = [
        b"SET",
        b"RESET",
        b"LISTEN",
        b"UNLISTEN",
        b"DISCARD",
        b"DEALLOCATE",
    ];
    let start = sql.iter().position(|b| !b.is_ascii_whitespace());
    let t = &sql[start.unwrap_or(sql.len())..];
    if t.starts_with(b"/*") || t.starts_with(b"--") {
        // a comment first (added by an ORM or a driver): read it all
        return true;
    }
    let verb_initial = matches!(
        t.first().map(u8::to_ascii_uppercase),
        Some(b'S' | b'R' | b'L' | b'U' | b'D')
    );
    if verb_initial
        && VERBS
            .iter()
            .any(|v| t.len() >= v.len() && t[..v.len()].eq_ignore_ascii_case(v))
    {
        return true;
    }
    match memchr::memchr(b';', t) {
        Some(i) => t[i + 1..]
            .iter()
            .any(|b| !b.is_ascii_whitespace() && *b != b';'),
        None => false,
    }
}

/// The effects of each tracked statement of a query, in order, for a
/// server that reads strings as `strings` says. SET values are kept in a
/// form that means the same in either mode ([`portable_value`]): they are
/// replayed on other server connections.
///
/// When the mode is not known and the query has a backslash, it is read
/// both ways. Where the two readings disagree, or a SET value depends on
/// the mode, the proxy cannot tell what the server did: every tracked
/// statement counts as unmodelled.
pub fn parse_effects(sql: &str, strings: Strings) -> Vec<Effect> {
    let effects = |backslash: bool| -> Vec<Effect> {
        split_statements(sql, backslash)
            .iter()
            .filter_map(|s| statement_effect(s))
            .map(|e| match e {
                Effect::Param(ParamChange::Set { name, value }) if value.contains('\\') => {
                    match portable_value(&value, backslash) {
                        Some(value) => Effect::Param(ParamChange::Set { name, value }),
                        None => Effect::Unmodelled(Verb::Set),
                    }
                }
                e => e,
            })
            .collect()
    };
    if !sql.contains('\\') {
        return effects(false);
    }
    match strings {
        Strings::Standard => effects(false),
        Strings::Backslash => effects(true),
        Strings::Either => {
            let (standard, legacy) = (effects(false), effects(true));
            if legacy == standard {
                return standard;
            }
            let mut verbs: Vec<Verb> = standard.iter().chain(&legacy).map(Effect::verb).collect();
            verbs.sort_unstable_by_key(|v| *v as u8);
            verbs.dedup();
            verbs.into_iter().map(Effect::Unmodelled).collect()
        }
    }
}

/// [`parse_effects`] for a query in the client's encoding, which need not
/// be UTF-8 (the server converts it before reading it). Text that is not
/// UTF-8 is read with replacement characters: quotes, semicolons and
/// keywords are ASCII in the encodings clients use. A name, channel or
/// value that lost bytes that way cannot be followed: unmodelled. In SJIS,
/// BIG5, GBK and the like (`multibyte_backslash`) a backslash byte can be
/// the second half of a character, even in text that is valid UTF-8: such
/// a query cannot be read at all, and any tracked statement it runs counts
/// as unmodelled.
pub fn parse_effects_bytes(sql: &[u8], strings: Strings, multibyte_backslash: bool) -> Vec<Effect> {
    if multibyte_backslash && sql.windows(2).any(|w| w[0] >= 0x80 && w[1] == b'\\') {
        return [
            Verb::Set,
            Verb::Reset,
            Verb::Listen,
            Verb::Unlisten,
            Verb::Discard,
            Verb::Deallocate,
        ]
        .into_iter()
        .map(Effect::Unmodelled)
        .collect();
    }
    let lossy = match std::str::from_utf8(sql) {
        Ok(q) => return parse_effects(q, strings),
        Err(_) => String::from_utf8_lossy(sql),
    };
    let lost = |t: &str| t.contains('\u{fffd}');
    parse_effects(&lossy, strings)
        .into_iter()
        .map(|e| {
            let garbled = match &e {
                Effect::Param(ParamChange::Set { name, value }) => lost(name) || lost(value),
                Effect::Param(ParamChange::Reset { name }) => lost(name),
                Effect::Listen(ch) | Effect::Unlisten(Some(ch)) => lost(ch),
                _ => false,
            };
            if garbled {
                Effect::Unmodelled(e.verb())
            } else {
                e
            }
        })
        .collect()
}

/// [PREPARE] name` (as PostgreSQL reads the name: folded to lower case
/// unless quoted).
pub fn deallocate_name(sql: &str) -> Option<String> {
    let stmts = split_statements(sql, false);
    let [one] = stmts.as_slice() else {
        return None;
    };
    let (verb, rest) = word(one);
    if !verb.eq_ignore_ascii_case("DEALLOCATE") {
        return None;
    }
    let (mut name, mut tail) = word(rest);
    if name.eq_ignore_ascii_case("PREPARE") {
        (name, tail) = word(tail);
    }
    if name.is_empty() || !tail.is_empty() || name.eq_ignore_ascii_case("ALL") {
        return None;
    }
    Some(normalize_name(name))
}

fn statement_effect(stmt: &str) -> Option<Effect> {
    let (verb, rest) = word(stmt);
    match verb.to_ascii_uppercase().as_str() {
        "SET" if session_level_unmodelled(rest) => Some(Effect::Unmodelled(Verb::Set)),
        // SET session_authorization TO ...: the same as SET SESSION AUTHORIZATION
        "SET"
            if parse_set(rest)
                .is_some_and(|c| change_name(&c) == Some("session_authorization")) =>
        {
            Some(Effect::Unmodelled(Verb::Set))
        }
        "SET" => Some(parse_set(rest).map(Effect::Param).unwrap_or_else(|| {
            // SET LOCAL / TRANSACTION / CONSTRAINTS end with the
            // transaction; a SET this reader does not follow may not
            let (scope, _) = word(rest);
            if ["LOCAL", "TRANSACTION", "CONSTRAINTS"]
                .iter()
                .any(|w| scope.eq_ignore_ascii_case(w))
            {
                Effect::Untracked(Verb::Set)
            } else {
                Effect::Unmodelled(Verb::Set)
            }
        })),
        "RESET" => {
            let (name, tail) = word(rest);
            if name.eq_ignore_ascii_case("SESSION") {
                // RESET SESSION AUTHORIZATION
                return Some(Effect::Unmodelled(Verb::Reset));
            }
            if name.eq_ignore_ascii_case("TIME") && tail.eq_ignore_ascii_case("ZONE") {
                return Some(Effect::Param(ParamChange::Reset {
                    name: "timezone".into(),
                }));
            }
            if name.eq_ignore_ascii_case("TRANSACTION") {
                // RESET TRANSACTION ISOLATION LEVEL: this transaction only
                return Some(Effect::Untracked(Verb::Reset));
            }
            if name.is_empty() || !tail.is_empty() {
                // a RESET this reader does not follow
                return Some(Effect::Unmodelled(Verb::Reset));
            }
            Some(Effect::Param(match name.to_ascii_uppercase().as_str() {
                "ALL" => ParamChange::ResetAll,
                _ => ParamChange::Reset {
                    name: normalize_name(name),
                },
            }))
        }
        "LISTEN" => Some(Effect::Listen(normalize_name(rest.trim_matches(SQL_SPACE)))),
        "UNLISTEN" => {
            let ch = rest.trim_matches(SQL_SPACE);
            Some(Effect::Unlisten(if ch == "*" {
                None
            } else {
                Some(normalize_name(ch))
            }))
        }
        "DISCARD" => Some(
            match rest.trim_matches(SQL_SPACE).to_ascii_uppercase().as_str() {
                "ALL" => Effect::DiscardAll,
                _ => Effect::Untracked(Verb::Discard),
            },
        ),
        "DEALLOCATE" => {
            let r = rest.trim_matches(SQL_SPACE).to_ascii_uppercase();
            let r = r
                .strip_prefix("PREPARE")
                .map(str::trim)
                .unwrap_or(&r)
                .to_owned();
            Some(if r == "ALL" {
                Effect::DeallocateAll
            } else {
                Effect::Untracked(Verb::Deallocate)
            })
        }
        _ => None,
    }
}

fn change_name(c: &ParamChange) -> Option<&str> {
    match c {
        ParamChange::Set { name, .. } | ParamChange::Reset { name } => Some(name),
        _ => None,
    }
}

/// `SET SESSION AUTHORIZATION ...`, `SET SESSION CHARACTERISTICS ...`.
fn session_level_unmodelled(rest: &str) -> bool {
    let (first, rest) = word(rest);
    let (second, _) = word(rest);
    first.eq_ignore_ascii_case("SESSION")
        && (second.eq_ignore_ascii_case("AUTHORIZATION")
            || second.eq_ignore_ascii_case("CHARACTERISTICS"))
}

/// `SET [SESSION] name {TO|=} value`, `SET TIME ZONE v`, `SET ROLE r`,
/// `SET SCHEMA s`, `SET NAMES e`. `None` for SET LOCAL, SET TRANSACTION,
/// SET CONSTRAINTS and anything unrecognised.
fn parse_set(rest: &str) -> Option<ParamChange> {
    let (mut first, mut rest) = word(rest);
    if first.eq_ignore_ascii_case("SESSION") {
        let (w, r) = word(rest);
        if w.eq_ignore_ascii_case("AUTHORIZATION") || w.eq_ignore_ascii_case("CHARACTERISTICS") {
            return None;
        }
        (first, rest) = (w, r);
    }
    let upper = first.to_ascii_uppercase();
    let (name, value) = match upper.as_str() {
        "LOCAL" | "TRANSACTION" | "CONSTRAINTS" | "" => return None,
        "TIME" => {
            let (zone, v) = word(rest);
            if !zone.eq_ignore_ascii_case("ZONE") {
                return None;
            }
            let v = v.trim_matches(SQL_SPACE);
            if v.eq_ignore_ascii_case("LOCAL") || v.eq_ignore_ascii_case("DEFAULT") {
                return Some(ParamChange::Reset {
                    name: "timezone".into(),
                });
            }
            ("timezone".to_owned(), v)
        }
        "ROLE" => ("role".to_owned(), rest.trim_matches(SQL_SPACE)),
        "SCHEMA" => ("search_path".to_owned(), rest.trim_matches(SQL_SPACE)),
        "NAMES" => ("client_encoding".to_owned(), rest.trim_matches(SQL_SPACE)),
        _ => {
            let rest = rest.trim_start_matches(SQL_SPACE);
            let v = if let Some(v) = rest.strip_prefix('=') {
                v
            } else {
                let (to, v) = word(rest);
                if !to.eq_ignore_ascii_case("TO") {
                    return None;
                }
                v
            };
            (normalize_name(first), v.trim_matches(SQL_SPACE))
        }
    };
    if value.is_empty() {
        return None;
    }
    if value.eq_ignore_ascii_case("DEFAULT")
        || (name == "role" && value.eq_ignore_ascii_case("NONE"))
    {
        return Some(ParamChange::Reset { name });
    }
    Some(ParamChange::Set {
        name,
        value: value.to_owned(),
    })
}

/// Startup parameters (and `-c name=value` in `options`) as changes to
/// apply on server connections. Connection-level keys are left out.
pub fn startup_params(params: &[(String, String)]) -> ParamSet {
    let mut set = ParamSet::default();
    for (k, v) in params {
        match k.as_str() {
            "user" | "database" | "replication" => {}
            "options" => {
                for (n, v) in parse_options(v) {
                    set.put_owned(n.to_ascii_lowercase(), crate::server::quote_literal(&v));
                }
            }
            k if k.starts_with("_pq_.") => {}
            k => set.put_owned(k.to_ascii_lowercase(), crate::server::quote_literal(v)),
        }
    }
    set
}

/// `-c a=b --c=d`, with backslash-escaped spaces as libpq writes them.
fn parse_options(s: &str) -> Vec<(String, String)> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => cur.extend(chars.next()),
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let kv = if w == "-c" {
            it.next()
        } else if let Some(rest) = w.strip_prefix("--") {
            Some(rest.to_owned())
        } else {
            w.strip_prefix("-c").map(str::to_owned)
        };
        if let Some((k, v)) = kv.as_deref().and_then(|kv| kv.split_once('=')) {
            out.push((k.replace('-', "_"), v.to_owned()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn effects(sql: &str) -> Vec<Effect> {
        parse_effects(sql, Strings::Standard)
    }

    fn set(n: &str, v: &str) -> Effect {
        Effect::Param(ParamChange::Set {
            name: n.into(),
            value: v.into(),
        })
    }

    #[test]
    fn set_forms() {
        assert_eq!(
            effects("SET search_path TO public, app"),
            vec![set("search_path", "public, app")]
        );
        assert_eq!(
            effects("set statement_timeout = '5s';"),
            vec![set("statement_timeout", "'5s'")]
        );
        assert_eq!(
            effects("SET SESSION TimeZone='UTC'"),
            vec![set("timezone", "'UTC'")]
        );
        assert_eq!(
            effects("SET TIME ZONE 'Europe/Paris'"),
            vec![set("timezone", "'Europe/Paris'")]
        );
        assert_eq!(
            effects("SET application_name TO DEFAULT"),
            vec![Effect::Param(ParamChange::Reset {
                name: "application_name".into()
            })]
        );
        assert_eq!(
            effects("SET LOCAL work_mem = '1MB'"),
            vec![Effect::Untracked(Verb::Set)]
        );
        assert_eq!(
            effects("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"),
            vec![Effect::Untracked(Verb::Set)]
        );
        assert_eq!(effects("SET \"my.Var\" = 1"), vec![set("my.Var", "1")]);
        assert_eq!(effects("SET ROLE app"), vec![set("role", "app")]);
        // words end at quotes too
        assert_eq!(
            effects("SET search_path TO'evil'"),
            vec![set("search_path", "'evil'")]
        );
        assert_eq!(
            effects("SET\"work_mem\"='1MB'"),
            vec![set("work_mem", "'1MB'")]
        );
        assert_eq!(
            effects("SET TIME ZONE'UTC'"),
            vec![set("timezone", "'UTC'")]
        );
        // a SET this reader cannot follow is not taken for a local one
        assert_eq!(
            effects("SET LOCAL work_mem = 1"),
            vec![Effect::Untracked(Verb::Set)]
        );
        assert_eq!(effects("SET work_mem"), vec![Effect::Unmodelled(Verb::Set)]);
        assert_eq!(
            deallocate_name("DEALLOCATE _pg3_1").as_deref(),
            Some("_pg3_1")
        );
        assert_eq!(
            deallocate_name(" deallocate prepare S1 ;").as_deref(),
            Some("s1")
        );
        assert_eq!(deallocate_name("DEALLOCATE \"S1\"").as_deref(), Some("S1"));
        assert_eq!(deallocate_name("DEALLOCATE ALL"), None);
        assert_eq!(deallocate_name("DEALLOCATE a; SELECT 1"), None);
        assert_eq!(
            effects("SET SESSION AUTHORIZATION bob"),
            vec![Effect::Unmodelled(Verb::Set)]
        );
        assert_eq!(
            effects("set session characteristics as transaction isolation level serializable"),
            vec![Effect::Unmodelled(Verb::Set)]
        );
        assert_eq!(
            effects("RESET SESSION AUTHORIZATION"),
            vec![Effect::Unmodelled(Verb::Reset)]
        );
        assert_eq!(
            effects("SET session_authorization TO bob"),
            vec![Effect::Unmodelled(Verb::Set)]
        );
        assert_eq!(
            effects("RESET ALL"),
            vec![Effect::Param(ParamChange::ResetAll)]
        );
        assert_eq!(
            effects("reset work_mem"),
            vec![Effect::Param(ParamChange::Reset {
                name: "work_mem".into()
            })]
        );
    }

    #[test]
    fn multi_statement_and_others() {
        assert_eq!(
            effects(
                "SELECT ';'; SET a.b = 'x;y'; LISTEN Chan; UNLISTEN *; DISCARD ALL -- ; SET x=1\n"
            ),
            vec![
                set("a.b", "'x;y'"),
                Effect::Listen("chan".into()),
                Effect::Unlisten(None),
                Effect::DiscardAll
            ]
        );
        assert!(effects("select 1").is_empty());
        assert!(!may_have_effects(b"  select 1"));
        assert!(may_have_effects(b"select 1; set x = 1"));
        assert!(may_have_effects(b"SET x = 1"));
        assert!(may_have_effects(b" \n\tset x = 1"));
        assert!(!may_have_effects(b""));
        assert!(!may_have_effects(
            b"SELECT abalance FROM pgbench_accounts WHERE aid = 1;\n"
        ));
        assert_eq!(effects("DEALLOCATE ALL"), vec![Effect::DeallocateAll]);
        assert_eq!(Verb::of_tag(b"DISCARD ALL"), Some(Verb::Discard));
        assert_eq!(Verb::of_tag(b"SET"), Some(Verb::Set));
        assert_eq!(Verb::of_tag(b"SELECT 1"), None);
        assert_eq!(Verb::of_tag(b"SETX"), None);
        assert_eq!(Verb::of_tag(b"RESET"), Some(Verb::Reset));
        assert_eq!(Verb::of_tag(b"LISTEN"), Some(Verb::Listen));
        assert_eq!(Verb::of_tag(b"UNLISTEN"), Some(Verb::Unlisten));
        assert_eq!(Verb::of_tag(b"DEALLOCATE ALL"), Some(Verb::Deallocate));
        assert_eq!(Verb::of_tag(b"DELETE 3"), None);
        assert_eq!(Verb::of_tag(b"UPDATE 1"), None);
        assert_eq!(Verb::of_tag(b""), None);
    }

    #[test]
    fn statements_split_like_the_server_lexer() {
        // a function body and a DO block hold ';' and SETs of their own
        assert_eq!(
            effects(
                "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN SET search_path = evil; END $$; \
                 DO $body$ BEGIN PERFORM 1; SET work_mem = '1GB'; END $body$; SET search_path = good"
            ),
            vec![set("search_path", "good")]
        );
        assert_eq!(
            split_statements(
                "select $1; select a$b$c; select $x$;$y$;$x$; select 'a''b;'",
                false
            ),
            vec![
                "select $1",
                "select a$b$c",
                "select $x$;$y$;$x$",
                "select 'a''b;'"
            ]
        );
        // E'' strings take backslash escapes; other strings do not
        assert_eq!(
            effects("SELECT E'it\\'s; SET a = 1'; SET b = 2"),
            vec![set("b", "2")]
        );
        assert_eq!(
            split_statements("SELECT type'\\'; SELECT 1", false),
            vec!["SELECT type'\\'", "SELECT 1"]
        );
        // standard_conforming_strings = off: every string takes backslash
        // escapes
        let q = "SELECT 'x\\'';SET a = 1;--'";
        assert_eq!(effects(q), vec![]);
        assert_eq!(parse_effects(q, Strings::Backslash), vec![set("a", "1")]);
        // not known which: where the readings differ, nothing is modelled
        assert_eq!(
            parse_effects(q, Strings::Either),
            vec![Effect::Unmodelled(Verb::Set)]
        );
        assert_eq!(
            parse_effects("SELECT 'x\\'; RESET b; SET a = 1; --'", Strings::Either),
            vec![
                Effect::Unmodelled(Verb::Set),
                Effect::Unmodelled(Verb::Reset)
            ]
        );
        // ... and where they agree, it is as it reads
        assert_eq!(
            parse_effects("SET a = 'x'; SET b = E'\\\\'", Strings::Either),
            vec![set("a", "'x'"), set("b", "E'\\\\'")]
        );
        // SET values are kept in a form read the same in both modes
        assert_eq!(
            effects("SET search_path = 'a\\b', 'c''d'"),
            vec![set("search_path", "E'a\\\\b', 'c''d'")]
        );
        assert_eq!(
            parse_effects("SET application_name = 'O\\'Brien'", Strings::Backslash),
            vec![set("application_name", "E'O\\'Brien'")]
        );
        assert_eq!(
            parse_effects("SET x.y = B'101', $$a\\b$$", Strings::Backslash),
            vec![set("x.y", "B'101', $$a\\b$$")]
        );
        // after a word (`text'..'`) a literal is a plain one and takes
        // escapes; bit strings never do
        let q = "SELECT text'\\' '; SET a = 1; --'";
        assert_eq!(parse_effects(q, Strings::Backslash), vec![set("a", "1")]);
        assert_eq!(parse_effects(q, Strings::Standard), vec![]);
        assert_eq!(
            parse_effects(
                "SELECT B'1'; SELECT x'\\'; SET a = 1; --'",
                Strings::Backslash
            ),
            vec![set("a", "1")]
        );
        assert_eq!(
            parse_effects("SELECT b'\\'; SET a = 1", Strings::Backslash),
            vec![set("a", "1")]
        );
        // values that cannot be made portable are not followed
        assert_eq!(
            parse_effects("SET application_name = U&'\\0041'", Strings::Standard),
            vec![Effect::Unmodelled(Verb::Set)]
        );
        assert_eq!(
            parse_effects("SET application_name = 'a'\n'\\'", Strings::Standard),
            vec![Effect::Unmodelled(Verb::Set)]
        );
        // queries in other encodings than UTF-8
        assert_eq!(
            parse_effects_bytes(b"SELECT '\xe9'; SET a = 1", Strings::Standard, false),
            vec![set("a", "1")]
        );
        assert_eq!(
            parse_effects_bytes(b"LISTEN \"\xe9\"; SET a = '\xe8'", Strings::Standard, false),
            vec![
                Effect::Unmodelled(Verb::Listen),
                Effect::Unmodelled(Verb::Set)
            ]
        );
        // SJIS: 0x95 0x5C is one character, not a backslash; so is 0x81
        // 0x5C, whose bytes also end a UTF-8 character (U+4E01, then \)
        for q in [
            &b"SELECT E'\x95\\'; SET a = 1; --'"[..],
            "SELECT E'\u{4e01}\\'; SET a = 1; --'".as_bytes(),
        ] {
            let e = parse_effects_bytes(q, Strings::Standard, true);
            assert!(e.contains(&Effect::Unmodelled(Verb::Set)), "{e:?}");
        }
        // in other encodings it is a backslash
        assert_eq!(
            parse_effects_bytes(
                "SELECT '\u{e9}\\'; SET a = 1".as_bytes(),
                Strings::Standard,
                false
            ),
            vec![set("a", "1")]
        );
        // RESET forms
        assert_eq!(
            effects("RESET TIME ZONE"),
            vec![Effect::Param(ParamChange::Reset {
                name: "timezone".into()
            })]
        );
        assert_eq!(
            effects("RESET TRANSACTION ISOLATION LEVEL"),
            vec![Effect::Untracked(Verb::Reset)]
        );
        assert_eq!(effects("RESET a b"), vec![Effect::Unmodelled(Verb::Reset)]);
        // only ASCII white space separates words, as in the server's lexer
        assert_eq!(
            effects("LISTEN ch\u{2003}"),
            vec![Effect::Listen("ch\u{2003}".into())]
        );
        assert_eq!(Strings::of_setting("off"), Strings::Backslash);
        assert_eq!(Strings::of_setting("on"), Strings::Standard);
        assert_eq!(Strings::of_setting("maybe"), Strings::Either);
        // block comments nest; quoted identifiers double their quotes
        assert_eq!(
            effects("/* a /* b */ ; SET x = 1 */ SET \"q\"\";\" = 3"),
            vec![set("q\";", "3")]
        );
        // -- ends at \r too; 'a'<newline>'b' is one string, E'' escapes and all
        assert_eq!(effects("SELECT 1 -- c\r; SET a = 1"), vec![set("a", "1")]);
        assert_eq!(
            effects("SELECT E'a'\n'\\''; SET b = 2"),
            vec![set("b", "2")]
        );
        assert_eq!(
            effects("SELECT E'a'\n  '\\'; SET x.y = 1; SELECT '"),
            vec![]
        );
        assert_eq!(
            split_statements("SELECT 'a' 'b'; SELECT 1", false),
            vec!["SELECT 'a' 'b'", "SELECT 1"]
        );
        // a leading comment does not hide a SET
        assert!(may_have_effects(b"/* app:web */ SET search_path = x"));
        assert!(may_have_effects(b"-- c\nSET search_path = x"));
        assert_eq!(
            effects("/* app:web */ SET search_path = x"),
            vec![set("search_path", "x")]
        );
        // unterminated: the rest belongs to the open token
        assert_eq!(
            split_statements("SELECT $$ ; SET a = 1", false),
            vec!["SELECT $$ ; SET a = 1"]
        );
        assert_eq!(
            split_statements("SELECT 1 /* ; SET a = 1", false),
            vec!["SELECT 1"]
        );
    }

    #[test]
    fn diff_and_apply() {
        let mut client = ParamSet::default();
        client.apply(&ParamChange::Set {
            name: "a".into(),
            value: "1".into(),
        });
        client.apply(&ParamChange::Set {
            name: "b".into(),
            value: "'x'".into(),
        });
        let mut server = ParamSet::default();
        server.apply(&ParamChange::Set {
            name: "b".into(),
            value: "'x'".into(),
        });
        server.apply(&ParamChange::Set {
            name: "c".into(),
            value: "2".into(),
        });
        assert_eq!(client.diff_sql(&server).unwrap(), "SET a = 1;RESET c;");
        assert_eq!(client.diff_sql(&client.clone()), None);
        client.apply(&ParamChange::ResetAll);
        assert_eq!(client, ParamSet::default());
    }

    #[test]
    fn startup_and_options() {
        let s = startup_params(&[
            ("user".into(), "u".into()),
            ("application_name".into(), "it's".into()),
            (
                "options".into(),
                "-c search_path=a\\,b --statement-timeout=5s -cwork_mem=1MB".into(),
            ),
        ]);
        assert_eq!(s.get("application_name"), Some("'it''s'"));
        assert_eq!(s.get("search_path"), Some("'a,b'"));
        assert_eq!(s.get("statement_timeout"), Some("'5s'"));
        assert_eq!(s.get("work_mem"), Some("'1MB'"));
        assert_eq!(s.get("user"), None);
    }
}
