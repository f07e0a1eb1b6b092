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

/// One row per operator holding (or registered to hold) memory in a running statement.
pub fn consumers_batch(memory: &MemoryManager) -> Result<RecordBatch> {
    let consumers = memory.consumers();
    let number = |f: &dyn Fn(&ConsumerStats) -> u64| Arc::new(UInt64Array::from(consumers.iter().map(f).collect::<Vec<_>>())) as ArrayRef;
    let schema = Arc::new(Schema::new(vec![
        Field::new("pool", DataType::Utf8, false),
        Field::new("query_id", DataType::UInt64, false),
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
            number(&|c| c.query),
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
            number(&|l| l.consumer.query),
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
    let names = ["allocated_bytes", "resident_bytes", "rss_bytes", "reserved_bytes", "untracked_bytes"];
    let values = [process.allocated, process.resident, process.rss, reserved, process.allocated.saturating_sub(reserved)];
    let mut fields = vec![Field::new("allocator", DataType::Utf8, false)];
    fields.extend(names.iter().map(|n| Field::new(*n, DataType::UInt64, false)));
    let allocator = if gobi_memory::allocator::counting() { "jemalloc (counted)" } else { "system (not counted)" };
    let mut columns: Vec<ArrayRef> = vec![Arc::new(StringArray::from(vec![allocator]))];
    columns.extend(values.iter().map(|v| Arc::new(UInt64Array::from(vec![*v as u64])) as ArrayRef));
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?)
}

/// A table function that snapshots one of the batches above.
#[derive(Debug)]
pub struct MemoryTable {
    name: &'static str,
    memory: Arc<MemoryManager>,
    snapshot: fn(&MemoryManager) -> Result<RecordBatch>,
}

impl MemoryTable {
    /// Every memory table function, by the name queries call it with.
    pub fn all(memory: &Arc<MemoryManager>) -> Vec<Arc<MemoryTable>> {
        [
            ("gobi_memory_pools", pools_batch as fn(&MemoryManager) -> Result<RecordBatch>),
            ("gobi_memory_consumers", consumers_batch),
            ("gobi_memory_leaks", leaks_batch),
            ("gobi_memory_process", process_batch),
        ]
            .into_iter()
            .map(|(name, snapshot)| Arc::new(MemoryTable { name, memory: Arc::clone(memory), snapshot }))
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
        let batch = (self.snapshot)(&self.memory)?;
        Ok(Arc::new(MemTable::try_new(batch.schema(), vec![vec![batch]])?))
    }
}

/// `gobi_result_cache()`: one row with the result cache's entries, bytes and counters.
#[derive(Debug)]
pub struct ResultCacheTable(pub Arc<crate::result_cache::ResultCache>);

impl TableFunctionImpl for ResultCacheTable {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        if !args.exprs().is_empty() {
            return plan_err!("gobi_result_cache() takes no arguments");
        }
        let stats = self.0.stats();
        let names = ["entries", "bytes", "borrowed_bytes", "hits", "misses", "evictions", "invalidations"];
        let values = [stats.entries as u64, stats.bytes as u64, stats.borrowed_bytes as u64, stats.hits, stats.misses, stats.evictions, stats.invalidations];
        let schema = Arc::new(Schema::new(names.iter().map(|n| Field::new(*n, DataType::UInt64, false)).collect::<Vec<_>>()));
        let columns: Vec<ArrayRef> = values.iter().map(|v| Arc::new(UInt64Array::from(vec![*v])) as ArrayRef).collect();
        let batch = RecordBatch::try_new(Arc::clone(&schema), columns)?;
        Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
    }
}
