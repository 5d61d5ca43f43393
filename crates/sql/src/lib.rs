//! SQL knowledge the proxy needs, without I/O: PostgreSQL's lexical rules
//! (`lexer`: where statements end, words, names, string modes) and the
//! read/write classifier for read/write splitting (`classify`), which
//! reads queries with PostgreSQL's own grammar (`pg_query`, libpg_query)
//! and keeps what it read in a cache by query text (`cache`).
//!
//! ```text
//! query text ──> Cache ──(miss: pg_query parse + walk)──> Analysis (cached)
//!                                                            │
//!    pg_proc snapshot (FunctionVolatility) + session ──> decide ──> Class
//! ```
#![forbid(unsafe_code)]

mod analysis;
mod cache;
mod classify;
pub mod lexer;
mod model;
mod session;
mod volatility;
mod walk;

pub use cache::{Cache, CacheStats};
pub use classify::{classify, Class, Route, SessionView};
pub use lexer::Strings;
pub use model::{FuncName, Reason, RelName, RouteOverride, SessionEffect, ROUTE_SETTING};
pub use session::SessionState;
pub use volatility::{FunctionVolatility, ProcCatalog, Volatility, PG_PROC_QUERY};

#[cfg(test)]
mod tests;
