//! The classifier's vocabulary: names of functions and relations as a
//! query writes them, why a query must run on the primary, and the
//! session state a query changes.

use std::fmt;

/// A function called by name, as written (folded to lower case unless
/// quoted); `schema` only when the call names one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FuncName {
    pub schema: Option<String>,
    pub name: String,
}

/// A relation a statement reads, as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelName {
    pub schema: Option<String>,
    pub name: String,
}

impl RelName {
    /// In a `pg_temp` schema (the session's own, or one named
    /// `pg_temp_N`): only the primary has it.
    pub fn in_temp_schema(&self) -> bool {
        self.schema
            .as_deref()
            .is_some_and(|s| s.starts_with("pg_temp"))
    }
}

/// Why a statement must run on the primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The grammar rejects it (the server will too).
    DoesNotParse,
    /// The parse tree nests deeper than the protobuf decoder between
    /// libpg_query and Rust allows (100 messages: about 47 chained binary
    /// operators, `a || b || ...`), which bounds the walk's recursion.
    TooDeep,
    /// Starts with the `/*NO LOAD BALANCE*/` hint (as Pgpool-II).
    NoLoadBalanceHint,
    /// INSERT, UPDATE, DELETE, MERGE.
    Dml,
    /// Schema changes and every other utility command that is not listed
    /// here (GRANT, VACUUM, CHECKPOINT, REFRESH MATERIALIZED VIEW, ...).
    Ddl,
    /// LOCK TABLE.
    Lock,
    /// LISTEN or UNLISTEN: notifications are delivered by the primary.
    Listen,
    /// NOTIFY.
    Notify,
    /// COPY ... FROM.
    CopyFrom,
    /// SET transaction_read_only, SET TRANSACTION READ ONLY / READ WRITE.
    SetTransactionReadOnly,
    /// Calls a function `pg_proc` marks volatile.
    VolatileFunction(FuncName),
    /// Calls a function the catalog does not know (counted as volatile).
    UnknownFunction(FuncName),
    /// Reads a temporary relation (only the primary session has it).
    TempTable(RelName),
    /// Reads an unlogged relation, which a standby cannot read.
    Unlogged(RelName),
    /// SELECT ... INTO, CREATE TABLE ... AS.
    SelectInto,
    /// FOR UPDATE / NO KEY UPDATE / SHARE / KEY SHARE.
    LockingClause,
    /// A WITH query holding INSERT, UPDATE, DELETE or MERGE.
    WritableCte,
    /// BEGIN / START TRANSACTION not READ ONLY, PREPARE TRANSACTION,
    /// COMMIT PREPARED, ROLLBACK PREPARED.
    Transaction,
    /// DECLARE ... WITH HOLD: the cursor outlives the transaction.
    HoldCursor,
    /// PREPARE, EXECUTE, DEALLOCATE (SQL-level prepared statements).
    PreparedStatement,
    /// CALL and DO: procedure code may write.
    Procedure,
    /// It is not known whether the server reads string literals with
    /// backslash escapes (`standard_conforming_strings`), the query has a
    /// backslash, and the two readings differ.
    BackslashStrings,
}

/// What `SET pgwarden.route` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteOverride {
    /// Every statement goes to the primary.
    Primary,
    /// Read-only statements go to a standby, others still to the primary.
    Standby,
    /// No preference: the classifier decides (as without the setting).
    Any,
}

/// The name of the session setting that overrides routing.
pub const ROUTE_SETTING: &str = "pgwarden.route";

/// State a statement leaves in the session that the router must follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEffect {
    /// CREATE TEMP TABLE / VIEW / SEQUENCE, SELECT INTO TEMP: the
    /// relation's unqualified name.
    CreatesTemp(String),
    /// DROP TABLE / VIEW / SEQUENCE ... of these (unqualified) names: one
    /// of them may have been temporary.
    Drops(Vec<String>),
    /// pg_advisory_lock, pg_advisory_lock_shared, pg_try_advisory_lock,
    /// pg_try_advisory_lock_shared (not the `_xact` ones): held until
    /// unlocked or the session ends.
    SessionAdvisoryLock,
    /// pg_advisory_unlock_all().
    AdvisoryUnlockAll,
    /// DECLARE name ... WITH HOLD.
    HoldCursor(String),
    /// CLOSE name; `None` for CLOSE ALL.
    CloseCursor(Option<String>),
    /// DISCARD ALL: temporary tables, advisory locks, cursors and
    /// settings are gone (`SET pgwarden.route` too).
    DiscardAll,
    /// DISCARD TEMP.
    DiscardTemp,
    /// BEGIN / START TRANSACTION; `read_only` when it says READ ONLY
    /// (`Some(true)`) or READ WRITE (`Some(false)`).
    Begin { read_only: Option<bool> },
    /// COMMIT, ROLLBACK, END, ABORT, PREPARE TRANSACTION.
    End,
    /// SET / RESET pgwarden.route (`None`: back to the default); RESET ALL
    /// gives `None` too.
    Route(Option<RouteOverride>),
}

impl fmt::Display for FuncName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}()", self.name),
            None => write!(f, "{}()", self.name),
        }
    }
}

impl fmt::Display for RelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

impl fmt::Display for Reason {
    /// Completes "goes to the primary: ...".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::DoesNotParse => f.write_str("does not parse"),
            Reason::TooDeep => f.write_str("nests too deep to read"),
            Reason::NoLoadBalanceHint => f.write_str("the NO LOAD BALANCE hint"),
            Reason::Dml => f.write_str("writes (INSERT, UPDATE, DELETE, MERGE)"),
            Reason::Ddl => f.write_str("DDL or a utility command"),
            Reason::Lock => f.write_str("LOCK"),
            Reason::Listen => f.write_str("LISTEN/UNLISTEN"),
            Reason::Notify => f.write_str("NOTIFY"),
            Reason::CopyFrom => f.write_str("COPY FROM"),
            Reason::SetTransactionReadOnly => f.write_str("sets transaction_read_only"),
            Reason::VolatileFunction(func) => write!(f, "calls volatile {func}"),
            Reason::UnknownFunction(func) => write!(f, "calls {func}, not in pg_proc"),
            Reason::TempTable(rel) => write!(f, "reads temporary {rel}"),
            Reason::Unlogged(rel) => write!(f, "reads unlogged {rel}"),
            Reason::SelectInto => f.write_str("SELECT INTO / CREATE TABLE AS"),
            Reason::LockingClause => f.write_str("FOR UPDATE/SHARE"),
            Reason::WritableCte => f.write_str("a WITH query that writes"),
            Reason::Transaction => f.write_str("a transaction that may write"),
            Reason::HoldCursor => f.write_str("a cursor WITH HOLD"),
            Reason::PreparedStatement => f.write_str("PREPARE/EXECUTE/DEALLOCATE"),
            Reason::Procedure => f.write_str("CALL/DO"),
            Reason::BackslashStrings => {
                f.write_str("a backslash read differently by standard_conforming_strings")
            }
        }
    }
}
