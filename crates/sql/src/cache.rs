//! Analyses by query text, so that a repeated query costs no parse: by
//! the exact text, or, for a single SELECT / WITH / TABLE / VALUES, by its
//! shape with literals blanked ([`literal_shape`]), so that queries with
//! inlined values share an entry. What is kept does not depend on the
//! function catalog or the session (those are applied after the lookup),
//! so a catalog refresh needs no invalidation. Shared by every client: a lookup holds a lock for a hash
//! probe, never for a parse.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use lru::LruCache;

use crate::analysis::{analyze, single_dml, Analysis, Base};
use crate::classify::{classify_with, Class, SessionView};
use crate::lexer::literal_shape;
use crate::model::Reason;
use crate::volatility::FunctionVolatility;

/// A bounded LRU cache of analyses keyed by query text or shape.
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
        // the text itself (prepared statements: `$1`, no literals), then
        // its shape (literals inlined: `WHERE aid = 42`)
        if let Some(hit) = self.lookup(sql) {
            return hit;
        }
        let shape = literal_shape(sql);
        if let Some(hit) = shape.as_deref().and_then(|k| self.lookup(k)) {
            return hit;
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let analysis = Arc::new(analyze(sql, false));
        let key = shape.unwrap_or_else(|| sql.to_owned());
        if key.len() <= self.max_text {
            self.lock().put(key.into_boxed_str(), Arc::clone(&analysis));
        }
        analysis
    }

    fn lookup(&self, key: &str) -> Option<Arc<Analysis>> {
        let hit = self.lock().get(key).map(Arc::clone)?;
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(hit)
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
