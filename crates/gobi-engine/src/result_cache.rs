//! The query result cache, held in the **cache** pool.
//!
//! A result is kept under the text of the statement's logical plan together with the Delta
//! id and version of every table its scans read (taken from the scans themselves, so the key
//! is exactly the snapshot the result came from); a write moves a table to a new version, and
//! a table dropped and created again has a new id, so the next lookup finds them changed,
//! drops the entry and runs the query again. Only plans
//! that read nothing but lakehouse Delta tables and call only immutable functions are cached
//! (`now()`, `random()`, files and `gobi_*()` tables change without a version).
//!
//! ```text
//!   lookup(plan text, versions) ─► hit: the batches (no query runs)
//!                                └► miss ─► run ─► insert: reserve from the cache pool,
//!                                            evicting least recently used entries; while no
//!                                            query holds memory, borrow the query pool's
//!                                            free space instead (given back on demand)
//! ```
//!
//! Every cached byte is reserved ([`Reservation`]); the cache is a [`Reclaim`]er, so a query
//! short of memory evicts entries before it spills or fails (see `QueryMemory::borrow`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use gobi_memory::{MemoryManager, PoolKind, Reclaim, Reservation};

use crate::delta_scan::TableVersion;
use lru::LruCache;
use parking_lot::Mutex;

/// Tables a plan reads (by name), each with the Delta id and version its scan read.
pub type Versions = Vec<(String, TableVersion)>;

#[derive(Debug)]
struct Entry {
    versions: Versions,
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    reservation: Reservation,
}

#[derive(Debug)]
pub struct ResultCache {
    memory: Arc<MemoryManager>,
    entries: Mutex<LruCache<String, Entry>>,
    /// Bytes held per pool (cache, borrowed from query), readable without the lock.
    in_cache_pool: AtomicUsize,
    in_query_pool: AtomicUsize,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    invalidations: AtomicU64,
}

/// The cache's counters, as `gobi_result_cache()` lists them.
#[derive(Debug, Clone, Copy)]
pub struct CacheStats {
    pub entries: usize,
    pub bytes: usize,
    pub borrowed_bytes: usize,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub invalidations: u64,
}

impl ResultCache {
    pub fn new(memory: Arc<MemoryManager>) -> Arc<Self> {
        let cache = Arc::new(Self {
            memory: Arc::clone(&memory),
            entries: Mutex::new(LruCache::unbounded()),
            in_cache_pool: AtomicUsize::new(0),
            in_query_pool: AtomicUsize::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
        });
        let weak: std::sync::Weak<dyn Reclaim> = Arc::downgrade(&cache) as _;
        memory.register_reclaimer(weak);
        cache
    }

    /// The cached result of `key`, if its tables are still at `versions`.
    pub fn get(&self, key: &str, versions: &Versions) -> Option<(SchemaRef, Vec<RecordBatch>)> {
        let mut entries = self.entries.lock();
        let found = match entries.get(key) {
            Some(entry) if &entry.versions == versions => Some((Arc::clone(&entry.schema), entry.batches.clone())),
            Some(_) => {
                if let Some(stale) = entries.pop(key) {
                    self.forget(&stale);
                }
                self.invalidations.fetch_add(1, Ordering::Relaxed);
                None
            }
            None => None,
        };
        let counter = if found.is_some() { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// The largest result kept: a quarter of the cache pool (a bigger one would push out
    /// everything else, and streams uncached).
    pub fn entry_limit(&self) -> usize {
        self.memory.pool(PoolKind::Cache).limit() / 4
    }

    /// Keeps a result, if it fits an entry; when the pool is full the least recently used
    /// entries go.
    pub fn insert(&self, key: String, versions: Versions, schema: SchemaRef, batches: Vec<RecordBatch>) {
        let bytes: usize = batches.iter().map(RecordBatch::get_array_memory_size).sum::<usize>() + key.len();
        if bytes > self.entry_limit() {
            return;
        }
        let mut entries = self.entries.lock();
        if let Some(old) = entries.pop(&key) {
            self.forget(&old);
        }
        let reservation = loop {
            if let Ok(reservation) = self.memory.reserve(PoolKind::Cache, bytes, "a cached result") {
                break reservation;
            }
            // Borrowing stops short of `high` pressure, so a new query is never kept waiting by
            // cached results.
            let query_pool = self.memory.pool(PoolKind::Query);
            if self.memory.queries_idle() && query_pool.reserved() + bytes <= query_pool.limit() / 100 * gobi_memory::HIGH_PRESSURE_PERCENT {
                if let Ok(reservation) = self.memory.reserve(PoolKind::Query, bytes, "a cached result") {
                    break reservation;
                }
            }
            match entries.pop_lru() {
                Some((_, evicted)) => {
                    self.forget(&evicted);
                    self.evictions.fetch_add(1, Ordering::Relaxed);
                }
                None => return,
            }
        };
        self.held(reservation.pool()).fetch_add(bytes, Ordering::Relaxed);
        entries.put(key, Entry { versions, schema, batches, reservation });
    }

    /// Drops every entry whose tables moved on (`gobi memory cleanup`): (entries, bytes).
    pub fn drop_stale(&self, current: impl Fn(&Versions) -> bool) -> (usize, u64) {
        let mut entries = self.entries.lock();
        let stale: Vec<String> = entries.iter().filter(|(_, e)| !current(&e.versions)).map(|(k, _)| k.clone()).collect();
        let mut freed = 0;
        for key in &stale {
            if let Some(entry) = entries.pop(key) {
                freed += entry.reservation.bytes() as u64;
                self.forget(&entry);
            }
        }
        (stale.len(), freed)
    }

    /// The tables and versions of every entry, to check which are stale.
    pub fn versions(&self) -> Vec<Versions> {
        self.entries.lock().iter().map(|(_, e)| e.versions.clone()).collect()
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            entries: self.entries.lock().len(),
            bytes: self.in_cache_pool.load(Ordering::Relaxed) + self.in_query_pool.load(Ordering::Relaxed),
            borrowed_bytes: self.in_query_pool.load(Ordering::Relaxed),
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            invalidations: self.invalidations.load(Ordering::Relaxed),
        }
    }

    fn held(&self, kind: PoolKind) -> &AtomicUsize {
        match kind {
            PoolKind::Query => &self.in_query_pool,
            _ => &self.in_cache_pool,
        }
    }

    /// Accounts for an entry leaving; its reservation is released when the entry drops.
    fn forget(&self, entry: &Entry) {
        self.held(entry.reservation.pool()).fetch_sub(entry.reservation.bytes(), Ordering::Relaxed);
    }
}

impl Reclaim for ResultCache {
    fn reclaim(&self, kind: PoolKind, bytes: usize) -> usize {
        let mut entries = self.entries.lock();
        let victims: Vec<String> = entries
            .iter()
            .rev()
            .filter(|(_, e)| e.reservation.pool() == kind)
            .scan(0, |freed, (key, e)| {
                (*freed < bytes).then(|| {
                    *freed += e.reservation.bytes();
                    key.clone()
                })
            })
            .collect();
        let mut freed = 0;
        for key in victims {
            if let Some(entry) = entries.pop(&key) {
                freed += entry.reservation.bytes();
                self.forget(&entry);
                self.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
        freed
    }

    fn reclaimable(&self, kind: PoolKind) -> usize {
        self.held(kind).load(Ordering::Relaxed)
    }
}
