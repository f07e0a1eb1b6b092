//! A bounded memo of pure-function results, keyed by the arguments' row encoding.
//!
//! Its size in bytes is known at every moment ([`Memo::bytes`]): keys, values and a fixed
//! per-entry overhead, all of it reserved from the **cache** pool (one reservation growing in the
//! pool's blocks). When an insert would pass the memo's own limit, or the cache pool is full,
//! the least recently used entries go first; a result that still does not fit is simply not
//! remembered.

use std::sync::Arc;

use datafusion::common::ScalarValue;
use gobi_memory::{MemoryManager, PoolKind, Reservation};
use lru::LruCache;

/// Bookkeeping per entry beyond key and value: the LRU node and the hash table slot.
const ENTRY_OVERHEAD: usize = 64;

#[derive(Debug)]
pub struct Memo {
    entries: LruCache<Box<[u8]>, ScalarValue>,
    limit: usize,
    reservation: Reservation,
    hits: u64,
    misses: u64,
}

impl Memo {
    pub fn new(limit: usize, memory: Arc<MemoryManager>) -> Self {
        Self { entries: LruCache::unbounded(), limit, reservation: memory.empty_reservation(PoolKind::Cache, "a function memo"), hits: 0, misses: 0 }
    }

    pub fn get(&mut self, key: &[u8]) -> Option<ScalarValue> {
        let found = self.entries.get(key).cloned();
        match found {
            Some(_) => self.hits += 1,
            None => self.misses += 1,
        }
        found
    }

    /// Stores a result, evicting the least recently used entries to stay within the limit and
    /// the cache pool. An entry bigger than the whole limit is not kept.
    pub fn insert(&mut self, key: &[u8], value: ScalarValue) {
        let size = entry_size(key, &value);
        if size > self.limit {
            return;
        }
        if let Some(old) = self.entries.pop(key) {
            self.forget(key, &old);
        }
        while self.bytes() + size > self.limit && self.evict_one() {}
        while self.reservation.try_grow(size).is_err() {
            if !self.evict_one() {
                return;
            }
        }
        self.entries.put(key.into(), value);
    }

    fn evict_one(&mut self) -> bool {
        match self.entries.pop_lru() {
            Some((key, value)) => {
                self.forget(&key, &value);
                true
            }
            None => false,
        }
    }

    fn forget(&mut self, key: &[u8], value: &ScalarValue) {
        self.reservation.shrink(entry_size(key, value));
    }

    pub fn bytes(&self) -> usize {
        self.reservation.bytes()
    }

    pub fn hits(&self) -> u64 {
        self.hits
    }

    pub fn misses(&self) -> u64 {
        self.misses
    }
}

fn entry_size(key: &[u8], value: &ScalarValue) -> usize {
    key.len() + value.size() + ENTRY_OVERHEAD
}

#[cfg(test)]
mod tests {
    use gobi_memory::{ByteSize, PoolLimits};

    use super::*;

    #[test]
    fn stays_within_its_limit_and_evicts_the_least_recently_used() {
        let one = entry_size(b"k0", &ScalarValue::Int64(Some(0)));
        let memory = MemoryManager::new(PoolLimits::default());
        let mut memo = Memo::new(3 * one, Arc::clone(&memory));
        for i in 0..3 {
            memo.insert(format!("k{i}").as_bytes(), ScalarValue::Int64(Some(i)));
        }
        assert_eq!(memo.bytes(), 3 * one);
        assert_eq!(memo.get(b"k0"), Some(ScalarValue::Int64(Some(0))));
        memo.insert(b"k3", ScalarValue::Int64(Some(3)));
        assert!(memo.bytes() <= 3 * one);
        assert_eq!(memo.get(b"k1"), None, "k1 was the least recently used");
        assert_eq!(memo.get(b"k0"), Some(ScalarValue::Int64(Some(0))));
        assert_eq!((memo.hits(), memo.misses()), (2, 1));
        memo.insert(b"k0", ScalarValue::Int64(Some(9)));
        assert!(memo.bytes() <= 3 * one);
        assert_eq!(memory.pool(PoolKind::Cache).reserved(), PoolKind::Cache.block(), "every byte is reserved from the cache pool, in whole blocks");
        drop(memo);
        assert_eq!(memory.pool(PoolKind::Cache).reserved(), 0);
    }

    #[test]
    fn a_full_cache_pool_makes_it_evict() {
        let pool = 2 * PoolKind::Cache.block();
        let memory = MemoryManager::new(PoolLimits { cache: ByteSize(pool as u64), ..PoolLimits::default() });
        let mut memo = Memo::new(1 << 20, Arc::clone(&memory));
        let key = |i: usize| format!("{i:01000}").into_bytes();
        for i in 0..20 {
            memo.insert(&key(i), ScalarValue::Int64(Some(i as i64)));
            assert!(memory.pool(PoolKind::Cache).reserved() <= pool);
        }
        assert!(memo.bytes() <= pool);
        assert_eq!(memo.get(&key(0)), None, "the oldest went first");
        assert_eq!(memo.get(&key(19)), Some(ScalarValue::Int64(Some(19))));
    }
}
