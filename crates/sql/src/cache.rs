//! Analyses by query text, so that a repeated query costs no parse. What
//! is kept does not depend on the function catalog or the session (those
//! are applied after the lookup), so a catalog refresh needs no
//! invalidation. Shared by every client: a lookup holds a lock for a hash
//! probe, never for a parse.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use lru::LruCache;

use crate::analysis::{analyze, single_dml, Analysis, Base, Reason};
use crate::classify::{classify_with, Class, SessionView};
use crate::volatility::FunctionVolatility;

/// A bounded LRU cache of analyses keyed by the exact query text.
pub struct Cache {
    entries: Mutex<LruCache<Box<str>, Arc<Analysis>>>,
    max_text: usize,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Hit and miss counts since the cache was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: usize,
}

impl Cache {
    /// Up to `capacity` queries, each of at most `max_text` bytes (longer
    /// ones are parsed every time: they would crowd the memory out, and
    /// such queries, bulk INSERTs and generated reports, are seldom
    /// repeated). Memory is bounded by about `capacity * max_text`.
    pub fn new(capacity: NonZeroUsize, max_text: usize) -> Cache {
        Cache {
            entries: Mutex::new(LruCache::new(capacity)),
            max_text,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Classifies `sql`, parsing it only when it is not cached.
    pub fn classify(
        &self,
        sql: &str,
        volatility: &impl FunctionVolatility,
        session: &SessionView<'_>,
    ) -> Class {
        classify_with(sql, volatility, session, |sql| self.analysis(sql))
    }

    fn analysis(&self, sql: &str) -> Arc<Analysis> {
        if single_dml(sql) {
            // as cheap as a lookup, and kept out of the cache: such texts
            // (literals inlined) would push out the ones that repeat
            return Arc::new(Analysis::new(Base::Primary(Reason::Dml)));
        }
        if let Some(hit) = self.lock().get(sql) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Arc::clone(hit);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let analysis = Arc::new(analyze(sql, false));
        if sql.len() <= self.max_text {
            self.lock().put(sql.into(), Arc::clone(&analysis));
        }
        analysis
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<Box<str>, Arc<Analysis>>> {
        // a panic elsewhere cannot leave the map half-changed
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: self.lock().len(),
        }
    }
}

impl Default for Cache {
    /// 10,000 queries of up to 8 kB each.
    fn default() -> Cache {
        Cache::new(NonZeroUsize::new(10_000).expect("non-zero"), 8 * 1024)
    }
}
