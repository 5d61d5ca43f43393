//! PostgreSQL's lexical rules, as far as the proxy needs them: where a
//! statement ends (string literals with and without backslash escapes,
//! quoted identifiers, dollar quotes, nested comments), words and names as
//! the server folds them, and string literals rewritten so that they read
//! the same whatever `standard_conforming_strings` is. Byte-level and
//! allocation-light: run on queries the classifier never sees (SET
//! tracking in the relay).

/// How the server reads string literals: `standard_conforming_strings`
/// on (a backslash is a character) or off (it escapes, as in `E''`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strings {
    #[default]
    Standard,
    Backslash,
    /// Not known (a value not understood).
    Either,
}

impl Strings {
    /// The mode a `standard_conforming_strings` value (as the server
    /// reports it: `on` or `off`) sets.
    pub fn of_setting(value: &str) -> Strings {
        match value.trim_matches(SQL_SPACE).to_ascii_lowercase().as_str() {
            "on" | "true" | "yes" | "1" => Strings::Standard,
            "off" | "false" | "no" | "0" => Strings::Backslash,
            _ => Strings::Either,
        }
    }
}

/// A piece of a query as PostgreSQL's lexer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Piece {
    /// A string literal: `'...'` (with its continuations on later lines),
    /// `E'...'`, `$tag$...$tag$` (its prefix letter, if any, was the byte
    /// before it).
    Literal,
    /// `"..."`.
    QuotedIdent,
    /// `-- ...` up to the end of the line, or a nested `/* */`.
    Comment,
    Semicolon,
    /// Any other single byte.
    Other,
}

/// Calls `piece` with each piece of `b` and its byte range, in order: not
/// inside string literals (`E'...'` with backslash escapes), quoted
/// identifiers, dollar-quoted strings (`$$...$$`, `$tag$...$tag$`:
/// function bodies and DO blocks) or comments (`--`, nested `/* */`). An
/// unterminated quote or comment runs to the end (the server will reject
/// the query). `backslash`: every string literal takes backslash escapes,
/// as with `standard_conforming_strings = off`.
pub(crate) fn scan(b: &[u8], backslash: bool, mut piece: impl FnMut(Piece, usize, usize)) {
    let mut i = 0;
    while i < b.len() {
        let after_ident = i > 0 && is_ident_byte(b[i - 1]);
        let (kind, end) = match b[i] {
            b'\'' => {
                // E'...' takes backslash escapes; so does a plain literal
                // with `backslash` (not B'' or X'' bit strings, nor U&'')
                let escapes = string_escapes(b, i) || (backslash && !no_escapes_ever(b, i));
                let mut end = quoted_end(b, i, b'\'', escapes);
                // 'a'<newline>'b' is one string, in the same mode
                while let Some(next) = string_continues(b, end) {
                    end = quoted_end(b, next, b'\'', escapes);
                }
                (Piece::Literal, end)
            }
            b'"' => (Piece::QuotedIdent, quoted_end(b, i, b'"', false)),
            // $1 is a parameter, a$b$ an identifier: neither opens a string
            b'$' if !after_ident => match dollar_tag(&b[i..]) {
                Some(tag) => (Piece::Literal, dollar_end(b, i, tag)),
                None => (Piece::Other, i + 1),
            },
            b'-' if b.get(i + 1) == Some(&b'-') => {
                let line = b[i..].iter().position(|&c| c == b'\n' || c == b'\r');
                (Piece::Comment, line.map_or(b.len(), |n| i + n))
            }
            b'/' if b.get(i + 1) == Some(&b'*') => (Piece::Comment, comment_end(b, i)),
            b';' => (Piece::Semicolon, i + 1),
            _ => (Piece::Other, i + 1),
        };
        piece(kind, i, end);
        i = end;
    }
}

/// Splits on ';' as PostgreSQL's lexer does (see [`scan`]); comments are
/// dropped. `backslash`: every string literal takes backslash escapes, as
/// with `standard_conforming_strings = off`.
pub fn split_statements(sql: &str, backslash: bool) -> Vec<String> {
    let b = sql.as_bytes();
    let (mut out, mut cur) = (Vec::new(), Vec::new());
    scan(b, backslash, |kind, start, end| match kind {
        Piece::Comment => cur.push(b' '),
        Piece::Semicolon => out.push(std::mem::take(&mut cur)),
        _ => cur.extend_from_slice(&b[start..end]),
    });
    out.push(cur);
    out.into_iter()
        .map(|v| {
            String::from_utf8_lossy(&v)
                .trim_matches(SQL_SPACE)
                .to_owned()
        })
        .filter(|s| !s.is_empty())
        .collect()
}

/// The shape of a query that is one SELECT, WITH, TABLE or VALUES
/// statement: its text with each string literal and each number replaced
/// by a NUL byte (which no query text holds, so a shape is never taken
/// for another query's text). `None` for other queries, several
/// statements, and a query whose shape is its text (nothing replaced).
/// Such a statement reads or writes the same whatever its literals say,
/// so it is classified once per shape: queries with inlined values
/// (`WHERE aid = 42`) share one cache entry. Statements whose literals
/// matter (`SET pgwarden.route = 'primary'`, `EXPLAIN (ANALYZE 0)`) start
/// with other words. Read with standard strings.
pub fn literal_shape(sql: &str) -> Option<String> {
    let (first, _) = word(sql);
    let read = ["SELECT", "WITH", "TABLE", "VALUES"]
        .iter()
        .any(|w| first.eq_ignore_ascii_case(w));
    if !read {
        return None;
    }
    let b = sql.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let (mut replaced, mut ended, mut more, mut number) = (false, false, false, false);
    scan(b, false, |kind, start, end| {
        let bytes = &b[start..end];
        match kind {
            Piece::Semicolon => ended = true,
            Piece::Comment => {}
            _ if ended && !(kind == Piece::Other && bytes[0].is_ascii_whitespace()) => more = true,
            _ => {}
        }
        let digit = kind == Piece::Other && bytes[0].is_ascii_digit();
        if digit && number {
            // the rest of a number: its NUL stands for it
        } else if kind == Piece::Literal || (digit && !(start > 0 && is_ident_byte(b[start - 1]))) {
            out.push(0);
            replaced = true;
            number = digit;
        } else {
            out.extend_from_slice(bytes);
            number = false;
        }
    });
    if more || !replaced {
        return None;
    }
    String::from_utf8(out).ok()
}

/// Where a string literal that ended at `end` goes on: PostgreSQL joins
/// two literals separated by whitespace that holds a newline, `--`
/// comments included (not `/* */` ones).
fn string_continues(b: &[u8], end: usize) -> Option<usize> {
    let mut newline = false;
    let mut i = end;
    while i < b.len() {
        match b[i] {
            b' ' | b'\t' | b'\x0c' | b'\x0b' => i += 1,
            b'\n' | b'\r' => {
                newline = true;
                i += 1;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' && b[i] != b'\r' {
                    i += 1;
                }
            }
            _ => break,
        }
    }
    (newline && b.get(i) == Some(&b'\'')).then_some(i)
}

/// Bytes that continue an identifier or keyword (PostgreSQL's ident_cont,
/// with any non-ASCII byte).
fn is_ident_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

/// The end (exclusive) of the quoted token opened by `b[start] == q`. A
/// doubled quote stands for itself; with `escapes`, a backslash escapes the
/// byte after it.
fn quoted_end(b: &[u8], start: usize, q: u8, escapes: bool) -> usize {
    let mut i = start + 1;
    while i < b.len() {
        if escapes && b[i] == b'\\' {
            i += 2;
        } else if b[i] == q {
            if b.get(i + 1) == Some(&q) {
                i += 2;
            } else {
                return i + 1;
            }
        } else {
            i += 1;
        }
    }
    b.len()
}

/// The opening `$tag$` at the start of `b`, if it is one: `$$`, or `$`, a
/// letter or `_` (or non-ASCII), identifier bytes other than `$`, and `$`.
fn dollar_tag(b: &[u8]) -> Option<&[u8]> {
    let first = *b.get(1)?;
    if first == b'$' {
        return Some(&b[..2]);
    }
    if !(first.is_ascii_alphabetic() || first == b'_' || first >= 0x80) {
        return None;
    }
    let len = b[1..]
        .iter()
        .position(|&c| !is_ident_byte(c) || c == b'$')?;
    (b[1 + len] == b'$').then(|| &b[..len + 2])
}

/// The end (exclusive) of the dollar-quoted string opened by `tag` at `start`.
fn dollar_end(b: &[u8], start: usize, tag: &[u8]) -> usize {
    let body = start + tag.len();
    match memchr::memmem::find(&b[body..], tag) {
        Some(at) => body + at + tag.len(),
        None => b.len(),
    }
}

/// The end (exclusive) of the block comment opened at `start`; block
/// comments nest.
pub(crate) fn comment_end(b: &[u8], start: usize) -> usize {
    let (mut depth, mut i) = (0usize, start);
    while i + 1 < b.len() {
        match (b[i], b[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return i;
                }
            }
            _ => i += 1,
        }
    }
    b.len()
}

/// What PostgreSQL's lexer takes for white space (not U+2003 and the like:
/// those are part of an identifier).
pub const SQL_SPACE: [char; 6] = [' ', '\t', '\n', '\r', '\x0c', '\x0b'];

/// Splits off the first word: a quoted identifier, or up to whitespace,
/// `=` or a quote (`SET search_path TO'x'`, `SET"x" = 1` are valid SQL).
pub fn word(s: &str) -> (&str, &str) {
    let s = s.trim_start_matches(SQL_SPACE);
    let end = if s.starts_with('"') {
        quoted_end(s.as_bytes(), 0, b'"', false)
    } else {
        s.find(|c: char| SQL_SPACE.contains(&c) || matches!(c, '=' | '\'' | '"'))
            .unwrap_or(s.len())
    };
    (&s[..end], s[end..].trim_start_matches(SQL_SPACE))
}

pub fn normalize_name(name: &str) -> String {
    if name.len() >= 2 && name.starts_with('"') && name.ends_with('"') {
        name[1..name.len() - 1].replace("\"\"", "\"")
    } else {
        name.to_ascii_lowercase()
    }
}

/// A SET value (SQL text) that means the same whatever the server's
/// `standard_conforming_strings`: it is replayed on other connections, in
/// one query with other SETs, where it is read in the mode of that moment.
/// A plain string literal with a backslash becomes an `E''` literal: read
/// with backslash escapes (`backslash`) it already was one; read as
/// standard, its backslashes are doubled. Other tokens stay as they are.
pub fn portable_value(value: &str, backslash: bool) -> Option<String> {
    let b = value.as_bytes();
    if b.iter().any(|&c| c == b'\n' || c == b'\r') {
        // perhaps a literal continued on the next line ('a'<newline>'b'),
        // which cannot simply become E'..'
        return None;
    }
    let mut out = Vec::with_capacity(b.len() + 8);
    let mut i = 0;
    while i < b.len() {
        let after_ident = i > 0 && is_ident_byte(b[i - 1]);
        let end = match b[i] {
            b'\'' => {
                let e = string_escapes(b, i);
                let plain = !e && !no_escapes_ever(b, i);
                let end = quoted_end(b, i, b'\'', e || (plain && backslash));
                let body = &b[(i + 1).min(end)..end.saturating_sub(1).max(i + 1)];
                if plain && body.contains(&b'\\') {
                    // nor can `text'..'`
                    if after_ident {
                        return None;
                    }
                    out.push(b'E');
                    if backslash {
                        out.extend_from_slice(&b[i..end]);
                    } else {
                        out.push(b'\'');
                        for &c in body {
                            if c == b'\\' {
                                out.push(b'\\');
                            }
                            out.push(c);
                        }
                        out.push(b'\'');
                    }
                    i = end;
                    continue;
                }
                if prefixed(b, i, b"u&") && body.contains(&b'\\') {
                    // U&'\0041' is refused where strings take escapes
                    return None;
                }
                end
            }
            b'"' => quoted_end(b, i, b'"', false),
            b'$' if !after_ident => match dollar_tag(&b[i..]) {
                Some(tag) => dollar_end(b, i, tag),
                None => i + 1,
            },
            _ => i + 1,
        };
        out.extend_from_slice(&b[i..end]);
        i = end;
    }
    String::from_utf8(out).ok()
}

/// Whether the string literal opened at `b[i] == '\''` is an `E''` one
/// (the E starts a token: it does not end a word like "type").
fn string_escapes(b: &[u8], i: usize) -> bool {
    prefixed(b, i, b"e")
}

/// A bit string (`B''`, `X''`) or a `U&''` string: these never take
/// backslash escapes. (After any other word, `text'...'` or `TO'...'`,
/// the literal is a plain one.)
fn no_escapes_ever(b: &[u8], i: usize) -> bool {
    prefixed(b, i, b"b") || prefixed(b, i, b"x") || prefixed(b, i, b"u&")
}

/// Whether the token before `b[i]` is exactly `prefix` (ASCII, any case).
fn prefixed(b: &[u8], i: usize, prefix: &[u8]) -> bool {
    let n = prefix.len();
    i >= n && b[i - n..i].eq_ignore_ascii_case(prefix) && !(i > n && is_ident_byte(b[i - n - 1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_as_the_server_lexer() {
        assert_eq!(
            split_statements(
                "SELECT ';' ; DO $b$ BEGIN; END $b$; /* ; /* ; */ */ SELECT E'\\';' -- ;\n",
                false
            ),
            vec!["SELECT ';'", "DO $b$ BEGIN; END $b$", "SELECT E'\\';'"]
        );
        // standard_conforming_strings off: a backslash escapes in '' too
        assert_eq!(
            split_statements("SELECT 'a\\'; b'; SELECT 2", true),
            vec!["SELECT 'a\\'; b'", "SELECT 2"]
        );
        assert_eq!(
            split_statements("SELECT 'a\\'; b'; SELECT 2", false),
            vec!["SELECT 'a\\'", "b'; SELECT 2"]
        );
        assert!(split_statements(" ; -- x", false).is_empty());
        // a literal goes on after a newline, `--` comments and all, in its
        // own mode (here E'': the backslash escapes the quote)
        assert_eq!(
            split_statements("SELECT E'a' -- c\n '\\'; SET x = 1; --'", false),
            vec!["SELECT E'a' -- c\n '\\'; SET x = 1; --'"]
        );
        assert_eq!(
            split_statements("SELECT 'a' /* c */\n'b'; SELECT 2", false),
            vec!["SELECT 'a'  \n'b'", "SELECT 2"]
        );
    }

    #[test]
    fn literal_shapes() {
        let shape = |s: &str| literal_shape(s).map(|k| k.replace('\0', "?"));
        assert_eq!(
            shape("SELECT abalance FROM pgbench_accounts WHERE aid = 4711;").as_deref(),
            Some("SELECT abalance FROM pgbench_accounts WHERE aid = ?;")
        );
        assert_eq!(
            shape("select a1, $1, 'x''y', E'\\'', $q$ ' $q$, 1.5e3 from t2 -- 7 '\n").as_deref(),
            Some("select a1, $1, ?, E?, ?, ?.?e3 from t2 -- 7 '\n")
        );
        assert_eq!(
            shape("WITH x AS (SELECT 'a') TABLE x").as_deref(),
            Some("WITH x AS (SELECT ?) TABLE x")
        );
        // nothing replaced, several statements, other verbs
        assert_eq!(shape("SELECT a FROM t WHERE b = $1"), None);
        assert_eq!(shape("SELECT 1; SET pgwarden.route = 'primary'"), None);
        assert_eq!(
            shape("SELECT 1; /* c */ ;"),
            Some("SELECT ?; /* c */ ;".into())
        );
        assert_eq!(shape("SET pgwarden.route = 'primary'"), None);
        assert_eq!(shape("EXPLAIN (ANALYZE 0) SELECT 1"), None);
        assert_eq!(shape("/* c */ SELECT 1"), None);
    }

    #[test]
    fn words_and_names() {
        assert_eq!(word("  SET\"x\" = 1"), ("SET", "\"x\" = 1"));
        assert_eq!(word("\"a b\" c"), ("\"a b\"", "c"));
        assert_eq!(normalize_name("\"My\"\"X\""), "My\"X");
        assert_eq!(normalize_name("MyX"), "myx");
        assert_eq!(comment_end(b"/* a /* b */ c */ d", 0), 17);
        assert_eq!(Strings::of_setting(" off "), Strings::Backslash);
    }
}
