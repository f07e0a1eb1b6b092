//! gobi-memory: the bottom layer of gobi. It depends on no other gobi crate.
//!
//! Today it owns the vocabulary of gobi's governed memory: the three named pools
//! (**query**, **cache**, **temp**), their configured limits, and the byte sizes users write
//! in `gobi.toml` (`"50MiB"`). The pools themselves — reservations, spilling, accounting
//! against the allocator — are not built yet; until they are, these limits are read,
//! validated and shown, but not enforced.

mod byte_size;

pub use byte_size::{ByteSize, ByteSizeError};

use serde::{Deserialize, Serialize};

/// The configured limit of each pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolLimits {
    /// Execution memory of running queries: hash tables, sort buffers, aggregation state.
    pub query: ByteSize,
    /// What gobi keeps for reuse between queries: results, Parquet metadata, function memos.
    pub cache: ByteSize,
    /// Session-scoped values: `let` tables and other intermediate results.
    pub temp: ByteSize,
}

impl Default for PoolLimits {
    fn default() -> Self {
        Self {
            query: ByteSize::mib(50),
            cache: ByteSize::mib(100),
            temp: ByteSize::mib(25),
        }
    }
}
