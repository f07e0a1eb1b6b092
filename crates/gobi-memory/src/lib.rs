//! gobi-memory: the bottom layer of gobi. It depends on no other gobi crate (only on
//! DataFusion's execution crate, whose `MemoryPool` it implements, and jemalloc).
//!
//! It owns gobi's governed memory: the three named pools (**query**, **cache**, **temp**,
//! [`Pool`]), their limits and the byte sizes users write in `gobi.toml` (`"50MiB"`), the
//! [`MemoryManager`] that holds the pools and accounts for each statement ([`QueryMemory`],
//! the `MemoryPool` DataFusion's operators reserve from; elastic borrowing between the query
//! and cache pools; events, leaks, cleanup), and the counting allocator ([`allocator`]) that
//! says what each statement really holds. See `manager.rs` and `allocator.rs` for the pictures.

pub mod allocator;
mod byte_size;
mod manager;
mod pool;
mod query;

pub use byte_size::{ByteSize, ByteSizeError};
pub use allocator::{AllocScope, GobiAllocator, ProcessMemory};
pub use manager::{ConsumerStats, LeakStats, Margin, MemoryEvent, Reclaim, Released, DEFAULT_ACTUAL_MARGIN, DEFAULT_LEAK_THRESHOLD, HIGH_PRESSURE_PERCENT, CRITICAL_PRESSURE_PERCENT, MemoryManager, PoolFull, QueryId, Reservation, StatementLimits};
pub use query::{registering_for, NodeMemory, QueryMemory};
pub use pool::{Pool, PoolKind, PoolStats, Pressure};

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
