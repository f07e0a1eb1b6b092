//! A bounded memo of pure-function results, keyed by the arguments' row encoding.
//!
//! Its size in bytes is known at every moment ([`Memo::bytes`]): keys, values and a fixed
//! per-entry overhead. When an insert would pass the limit, the least recently used entries
//! go first. The memory manager will hand the limit out of the cache pool.

use datafusion::common::ScalarValue;
use lru::LruCache;

/// Bookkeeping per entry beyond key and value: the LRU node and the hash table slot.
const ENTRY_OVERHEAD: usize = 64;

#[derive(Debug)]
pub struct Memo {
    entries: LruCache<Box<[u8]>, ScalarValue>,
    limit: usize,
    bytes: usize,
    hits: u64,
    misses: u64,
}

impl Memo {
    pub fn new(limit: usize) -> Self {
        Self { entries: LruCache::unbounded(), limit, bytes: 0, hits: 0, misses: 0 }
    }

    pub fn get(&mut self, key: &[u8]) -> Option<ScalarValue> {
        let found = self.entries.get(key).cloned();
        match found {
            Some(_) => self.hits += 1,
            None => self.misses += 1,
        }
        found
    }

    /// Stores a result, evicting the least recently used entries to stay within the limit.
    /// An entry bigger than the whole limit is not kept.
    pub fn insert(&mut self, key: &[u8], value: ScalarValue) {
        let size = entry_size(key, &value);
        if size > self.limit {
            return;
        }
        if let Some(old) = self.entries.put(key.into(), value) {
            self.bytes -= entry_size(key, &old);
        }
        self.bytes += size;
        while self.bytes > self.limit {
            let Some((key, value)) = self.entries.pop_lru() else { break };
            self.bytes -= entry_size(&key, &value);
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
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
    use super::*;

    #[test]
    fn stays_within_its_limit_and_evicts_the_least_recently_used() {
        let one = entry_size(b"k0", &ScalarValue::Int64(Some(0)));
        let mut memo = Memo::new(3 * one);
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
    }
}
