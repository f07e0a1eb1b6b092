//! The memory manager as tables: `gobi_memory_pools()`, `gobi_memory_consumers()`,
//! `gobi_memory_leaks()`, `gobi_memory_process()` and `gobi_result_cache()`, usable in
//! any query (`SELECT * FROM gobi_memory_pools() WHERE reserved_bytes > 0`), and the rows of
//! `SHOW MEMORY`. Each call is a snapshot taken when the query is planned.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanArray, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::{MemTable, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{plan_err, Result};
use gobi_memory::{ConsumerStats, LeakStats, MemoryManager, PoolStats};

use crate::result_cache::ResultCache;

/// One row per pool: limit, reserved, peak and the counters.
pub fn pools_batch(memory: &MemoryManager) -> Result<RecordBatch> {
    let stats = memory.stats();
    let number = |f: &dyn Fn(&PoolStats) -> u64| Arc::new(UInt64Array::from(stats.iter().map(f).collect::<Vec<_>>())) as ArrayRef;
    let schema = Arc::new(Schema::new(vec![
        Field::new("pool", DataType::Utf8, false),
        Field::new("limit_bytes", DataType::UInt64, false),
        Field::new("reserved_bytes", DataType::UInt64, false),
        Field::new("peak_bytes", DataType::UInt64, false),
        Field::new("allocations", DataType::UInt64, false),
        Field::new("deallocations", DataType::UInt64, false),
        Field::new("rejected", DataType::UInt64, false),
        Field::new("overruns", DataType::UInt64, false),
    ]));
    Ok(RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(stats.iter().map(|s| s.kind.name()).collect::<Vec<_>>())),
            number(&|s| s.limit as u64),
            number(&|s| s.reserved as u64),
            number(&|s| s.peak as u64),
            number(&|s| s.allocations),
            number(&|s| s.deallocations),
            number(&|s| s.rejected),
            number(&|s| s.overruns),
        ],
    )?)
}

/// One row per operator holding (or registered to hold) memory in a running statement, and
/// per reservation kept between statements (no query id).
pub fn consumers_batch(memory: &MemoryManager) -> Result<RecordBatch> {
    let consumers = memory.consumers();
    let number = |f: &dyn Fn(&ConsumerStats) -> u64| Arc::new(UInt64Array::from(consumers.iter().map(f).collect::<Vec<_>>())) as ArrayRef;
    let schema = Arc::new(Schema::new(vec![
        Field::new("pool", DataType::Utf8, false),
        Field::new("query_id", DataType::UInt64, true),
        Field::new("consumer", DataType::Utf8, false),
        Field::new("can_spill", DataType::Boolean, false),
        Field::new("reserved_bytes", DataType::UInt64, false),
        Field::new("peak_bytes", DataType::UInt64, false),
        Field::new("age_ms", DataType::UInt64, false),
    ]));
    Ok(RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(consumers.iter().map(|c| c.pool.name()).collect::<Vec<_>>())),
            Arc::new(UInt64Array::from(consumers.iter().map(|c| c.query).collect::<Vec<_>>())),
            Arc::new(StringArray::from(consumers.iter().map(|c| c.name.as_str()).collect::<Vec<_>>())),
            Arc::new(BooleanArray::from(consumers.iter().map(|c| c.can_spill).collect::<Vec<_>>())),
            number(&|c| c.reserved as u64),
            number(&|c| c.peak as u64),
            number(&|c| c.age.as_millis() as u64),
        ],
    )?)
}

/// One row per consumer holding memory after its statement ended, or longer than
/// `memory.leak_threshold`.
pub fn leaks_batch(memory: &MemoryManager) -> Result<RecordBatch> {
    let leaks = memory.leaks(memory.leak_threshold());
    let number = |f: &dyn Fn(&LeakStats) -> u64| Arc::new(UInt64Array::from(leaks.iter().map(f).collect::<Vec<_>>())) as ArrayRef;
    let schema = Arc::new(Schema::new(vec![
        Field::new("pool", DataType::Utf8, false),
        Field::new("query_id", DataType::UInt64, false),
        Field::new("consumer", DataType::Utf8, false),
        Field::new("statement", DataType::Utf8, false),
        Field::new("statement_ended", DataType::Boolean, false),
        Field::new("reserved_bytes", DataType::UInt64, false),
        Field::new("age_ms", DataType::UInt64, false),
    ]));
    Ok(RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(leaks.iter().map(|l| l.consumer.pool.name()).collect::<Vec<_>>())),
            Arc::new(UInt64Array::from(leaks.iter().map(|l| l.consumer.query).collect::<Vec<_>>())),
            Arc::new(StringArray::from(leaks.iter().map(|l| l.consumer.name.as_str()).collect::<Vec<_>>())),
            Arc::new(StringArray::from(leaks.iter().map(|l| l.text.as_str()).collect::<Vec<_>>())),
            Arc::new(BooleanArray::from(leaks.iter().map(|l| l.ended).collect::<Vec<_>>())),
            number(&|l| l.consumer.reserved as u64),
            number(&|l| l.consumer.age.as_millis() as u64),
        ],
    )?)
}

/// One row: what the process holds by the allocator's and the OS's count, what the pools have
/// reserved, and the difference (memory no pool knows of).
pub fn process_batch(memory: &MemoryManager) -> Result<RecordBatch> {
    let process = gobi_memory::ProcessMemory::now();
    let reserved: usize = gobi_memory::PoolKind::ALL.iter().map(|&kind| memory.pool(kind).reserved()).sum();
    let allocator = if gobi_memory::allocator::counting() { "jemalloc (counted)" } else { "system (not counted)" };
    one_row(
        Some(("allocator", allocator)),
        &[
            ("allocated_bytes", process.allocated as u64),
            ("resident_bytes", process.resident as u64),
            ("rss_bytes", process.rss as u64),
            ("reserved_bytes", reserved as u64),
            ("untracked_bytes", process.allocated.saturating_sub(reserved) as u64),
        ],
    )
}

/// One row with the result cache's entries, bytes and counters.
pub fn result_cache_batch(cache: &ResultCache) -> Result<RecordBatch> {
    let stats = cache.stats();
    one_row(
        None,
        &[
            ("entries", stats.entries as u64),
            ("bytes", stats.bytes as u64),
            ("borrowed_bytes", stats.borrowed_bytes as u64),
            ("hits", stats.hits),
            ("misses", stats.misses),
            ("evictions", stats.evictions),
            ("invalidations", stats.invalidations),
        ],
    )
}

/// A one-row batch: an optional text column first, then named counts.
fn one_row(text: Option<(&str, &str)>, numbers: &[(&str, u64)]) -> Result<RecordBatch> {
    let mut fields = vec![];
    let mut columns: Vec<ArrayRef> = vec![];
    if let Some((name, value)) = text {
        fields.push(Field::new(name, DataType::Utf8, false));
        columns.push(Arc::new(StringArray::from(vec![value])));
    }
    for (name, value) in numbers {
        fields.push(Field::new(*name, DataType::UInt64, false));
        columns.push(Arc::new(UInt64Array::from(vec![*value])));
    }
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?)
}

type Snapshot = Box<dyn Fn() -> Result<RecordBatch> + Send + Sync>;

/// A table function that snapshots one of the batches above when a query is planned.
pub struct MemoryTable {
    name: &'static str,
    snapshot: Snapshot,
}

impl std::fmt::Debug for MemoryTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryTable").field("name", &self.name).finish()
    }
}

impl MemoryTable {
    /// Every memory table function, by the name queries call it with.
    pub fn all(memory: &Arc<MemoryManager>, cache: &Arc<ResultCache>) -> Vec<Arc<MemoryTable>> {
        let of_manager = |batch: fn(&MemoryManager) -> Result<RecordBatch>| -> Snapshot {
            let memory = Arc::clone(memory);
            Box::new(move || batch(&memory))
        };
        let cache = Arc::clone(cache);
        [
            ("gobi_memory_pools", of_manager(pools_batch)),
            ("gobi_memory_consumers", of_manager(consumers_batch)),
            ("gobi_memory_leaks", of_manager(leaks_batch)),
            ("gobi_memory_process", of_manager(process_batch)),
            ("gobi_result_cache", Box::new(move || result_cache_batch(&cache))),
        ]
        .into_iter()
        .map(|(name, snapshot)| Arc::new(MemoryTable { name, snapshot }))
        .collect()
    }

    pub fn name(&self) -> &'static str {
        self.name
    }
}

impl TableFunctionImpl for MemoryTable {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        if !args.exprs().is_empty() {
            return plan_err!("{}() takes no arguments", self.name);
        }
        let batch = (self.snapshot)()?;
        Ok(Arc::new(MemTable::try_new(batch.schema(), vec![vec![batch]])?))
    }
}
