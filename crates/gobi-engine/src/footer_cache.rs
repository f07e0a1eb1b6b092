//! Parquet footers and page indexes, kept between scans in the **cache** pool.
//!
//! DataFusion reads a Parquet file's metadata (its footer, and its page index when a predicate
//! may prune pages) once and keeps it in the runtime's file-metadata cache, so the next scan of
//! the file skips both reads. DataFusion's own cache holds up to 50 MiB per process, reserved
//! nowhere: lineitem's ten files at scale 1 keep 0.7 MB (1.4 MB with their page indexes),
//! and a lakehouse of thousands of files would keep the whole 50 MiB outside every pool. gobi
//! gives the runtime this cache instead, whose entries are reserved from the cache pool:
//!
//! ```text
//!  scan opens a file ─► get(path) ── hit: its metadata, nothing read
//!                         └─ miss ─► the reader reads it ─► put(path, metadata)
//!                                       reserve from the cache pool, evicting the least
//!                                       recently used footers; none left: not kept
//!                                       the statement's allocator count hands it over
//!  a query short of memory ─► reclaim: footers go, least recently used first
//! ```
//!
//! A footer is allocated by the statement whose scan read it and lives on in the cache: the
//! statement's allocator count hands its bytes over when it is put ([`allocator::disown`]),
//! an evicted footer is freed outside any statement's count ([`allocator::unscoped`]), and
//! one the cache hands back to a caller (`remove`, a replaced `put`) is counted in the
//! caller's statement again ([`allocator::adopt`]).
//!
//! Not exact: a footer evicted while a scan still reads its file is freed when that scan drops
//! it, under that scan's count.

use std::sync::Arc;
use std::time::Duration;

use datafusion::common::TableReference;
use datafusion::execution::cache::cache_manager::CachedFileMetadataEntry;
use datafusion::execution::cache::{Cache, CacheEntryInfo, CacheKey, CacheValue};
use datafusion::object_store::path::Path;
use gobi_memory::{allocator, MemoryManager, PoolKind, Reclaim, Reservation};
use lru::LruCache;
use parking_lot::Mutex;

/// The runtime's file-metadata cache, every entry reserved from the cache pool.
#[derive(Debug)]
pub(crate) struct FooterCache {
    memory: Arc<MemoryManager>,
    kept: Mutex<Kept>,
}

#[derive(Debug)]
struct Kept {
    entries: LruCache<Path, CachedFileMetadataEntry>,
    /// Every entry's bytes (its path's and its metadata's), in the cache pool.
    reservation: Reservation,
}

fn bytes(path: &Path, entry: &CachedFileMetadataEntry) -> usize {
    path.size() + entry.size()
}

impl FooterCache {
    pub(crate) fn new(memory: Arc<MemoryManager>) -> Arc<Self> {
        let reservation = memory.empty_reservation(PoolKind::Cache, "Parquet footers");
        let cache = Arc::new(Self { memory: Arc::clone(&memory), kept: Mutex::new(Kept { entries: LruCache::unbounded(), reservation }) });
        let weak: std::sync::Weak<dyn Reclaim> = Arc::downgrade(&cache) as _;
        memory.register_reclaimer(weak);
        cache
    }

    /// The largest footer kept: a quarter of the cache pool, as for a cached result.
    fn entry_limit(&self) -> usize {
        self.memory.pool(PoolKind::Cache).limit() / 4
    }
}

impl Kept {
    /// Takes `path`'s entry out, its bytes no longer reserved.
    fn take(&mut self, path: &Path) -> Option<CachedFileMetadataEntry> {
        let entry = self.entries.pop(path)?;
        self.reservation.shrink(bytes(path, &entry));
        Some(entry)
    }

    /// Drops the least recently used entry, freed outside any statement's count; false when
    /// none is left.
    fn evict_one(&mut self) -> bool {
        let Some((path, entry)) = self.entries.pop_lru() else { return false };
        self.reservation.shrink(bytes(&path, &entry));
        allocator::unscoped(|| drop(entry));
        true
    }
}

/// An entry handed back to a caller, who frees it under its own statement's count.
fn handed_back(path: &Path, entry: Option<CachedFileMetadataEntry>) -> Option<CachedFileMetadataEntry> {
    if let Some(entry) = &entry {
        allocator::adopt(bytes(path, entry));
    }
    entry
}

impl Cache<Path, CachedFileMetadataEntry> for FooterCache {
    fn get(&self, key: &Path) -> Option<CachedFileMetadataEntry> {
        self.kept.lock().entries.get(key).cloned()
    }

    /// Keeps `value` if the cache pool has room for it once older footers are evicted.
    fn put(&self, key: &Path, value: CachedFileMetadataEntry) -> Option<CachedFileMetadataEntry> {
        let size = bytes(key, &value);
        let mut kept = self.kept.lock();
        let old = kept.take(key);
        if size <= self.entry_limit() {
            loop {
                if kept.reservation.try_grow(size).is_ok() {
                    allocator::disown(size);
                    kept.entries.put(key.clone(), value);
                    break;
                }
                if !kept.evict_one() {
                    break;
                }
            }
        }
        handed_back(key, old)
    }

    fn remove(&self, k: &Path) -> Option<CachedFileMetadataEntry> {
        let taken = self.kept.lock().take(k);
        handed_back(k, taken)
    }

    fn contains_key(&self, k: &Path) -> bool {
        self.kept.lock().entries.contains(k)
    }

    fn len(&self) -> usize {
        self.kept.lock().entries.len()
    }

    fn clear(&self) {
        let mut kept = self.kept.lock();
        while kept.evict_one() {}
    }

    fn name(&self) -> String {
        "gobi's Parquet footers (cache pool)".to_string()
    }

    /// The cache pool's limit: the footers share it with cached results and tables' metadata.
    fn cache_limit(&self) -> usize {
        self.memory.pool(PoolKind::Cache).limit()
    }

    /// The limit is the cache pool's (`memory.cache_pool`); DataFusion's setting is ignored.
    fn update_cache_limit(&self, _limit: usize) {}

    fn cache_ttl(&self) -> Option<Duration> {
        None
    }

    /// Entries never expire: a file whose size or modification time changed is read again
    /// (DataFusion checks both at each hit).
    fn update_cache_ttl(&self, _ttl: Option<Duration>) {}

    /// Footers are kept by path, not by table.
    fn drop_table_entries(&self, _table_ref: &TableReference) -> datafusion::common::Result<()> {
        Ok(())
    }

    fn list_entries(&self) -> datafusion::common::HashMap<Path, CacheEntryInfo<CachedFileMetadataEntry>> {
        let kept = self.kept.lock();
        kept.entries
            .iter()
            .map(|(path, entry)| (path.clone(), CacheEntryInfo { value: entry.clone(), size_bytes: bytes(path, entry), hits: 0, expires: None }))
            .collect()
    }
}

impl Reclaim for FooterCache {
    fn reclaim(&self, kind: PoolKind, bytes: usize) -> usize {
        if kind != PoolKind::Cache {
            return 0;
        }
        let mut kept = self.kept.lock();
        let before = kept.reservation.bytes();
        while before - kept.reservation.bytes() < bytes && kept.evict_one() {}
        before - kept.reservation.bytes()
    }

    fn reclaimable(&self, kind: PoolKind) -> usize {
        if kind == PoolKind::Cache {
            self.kept.lock().reservation.bytes()
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use std::any::Any;

    use datafusion::execution::cache::cache_manager::FileMetadata;
    use datafusion::object_store::ObjectMeta;
    use gobi_memory::{ByteSize, PoolLimits};

    use super::*;

    /// A file's metadata of `size` bytes.
    #[derive(Debug)]
    struct Footer(usize);

    impl FileMetadata for Footer {
        fn as_any(&self) -> &dyn Any {
            self
        }
        fn memory_size(&self) -> usize {
            self.0
        }
        fn extra_info(&self) -> datafusion::common::HashMap<String, String> {
            Default::default()
        }
    }

    fn entry(path: &Path, size: usize) -> CachedFileMetadataEntry {
        let meta = ObjectMeta { location: path.clone(), last_modified: Default::default(), size: 1, e_tag: None, version: None };
        CachedFileMetadataEntry::new(meta, Arc::new(Footer(size)))
    }

    fn cache_of(cache_pool: u64) -> (Arc<MemoryManager>, Arc<FooterCache>) {
        let memory = MemoryManager::new(PoolLimits { cache: ByteSize(cache_pool), ..PoolLimits::default() });
        let footers = FooterCache::new(Arc::clone(&memory));
        (memory, footers)
    }

    /// Every footer kept is reserved from the cache pool; one that does not fit pushes out
    /// the least recently used, and the pool never holds more than its limit.
    #[test]
    fn footers_are_reserved_from_the_cache_pool_and_the_oldest_make_room() {
        let (memory, footers) = cache_of(1 << 20);
        let paths: Vec<Path> = (0..4).map(|i| Path::from(format!("t/part-{i}.parquet"))).collect();
        footers.put(&paths[0], entry(&paths[0], 200 << 10));
        footers.put(&paths[1], entry(&paths[1], 200 << 10));
        assert!(footers.get(&paths[0]).is_some(), "kept");
        let cache = memory.pool(PoolKind::Cache);
        assert!(cache.reserved() >= 400 << 10, "{}", cache.reserved());
        // Four of 200 KiB and more do not fit 1 MiB with its blocks: the least recently used
        // (paths[1]: paths[0] was read since) goes.
        footers.put(&paths[2], entry(&paths[2], 200 << 10));
        footers.put(&paths[3], entry(&paths[3], 200 << 10));
        footers.put(&paths[1], entry(&paths[1], 200 << 10));
        assert!(cache.reserved() <= cache.limit(), "{} past {}", cache.reserved(), cache.limit());
        assert!(footers.len() < 5 && footers.contains_key(&paths[1]), "the newest is kept: {}", footers.len());
        // Bigger than a quarter of the pool: not kept at all.
        let big = Path::from("t/big.parquet");
        footers.put(&big, entry(&big, 300 << 10));
        assert!(!footers.contains_key(&big));
    }

    /// A query short of memory takes the footers' room back; removing the last leaves the
    /// pool at 0.
    #[test]
    fn reclaiming_the_cache_pool_evicts_footers() {
        let (memory, footers) = cache_of(8 << 20);
        for i in 0..4 {
            let path = Path::from(format!("t/part-{i}.parquet"));
            footers.put(&path, entry(&path, 100 << 10));
        }
        assert_eq!(footers.reclaimable(PoolKind::Cache), 4 * (100 << 10) + 4 * Path::from("t/part-0.parquet").size());
        assert!(memory.reclaim(PoolKind::Cache, 150 << 10) >= 150 << 10);
        assert_eq!(footers.len(), 2, "the two least recently used went");
        footers.clear();
        assert_eq!(memory.pool(PoolKind::Cache).reserved(), 0);
    }
}
