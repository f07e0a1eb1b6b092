//! Parquet scans reserve what they read.
//!
//! A Parquet scan fetches the column chunks of one row group at a time, decodes batches from
//! them, and drops them when it moves on to the next row group. Every Parquet scan of a
//! statement (Delta tables and plain files alike) reads through a [`ReservedReaderFactory`]
//! wrapped around the reader factory it had (delta-rs's or DataFusion's), and each file's
//! [`ReservedReader`] holds one reservation, sized at every fetch to what that row group
//! costs: the fetched bytes and an estimate of what decoding them holds (each chunk's
//! dictionary and current page decompressed, a batch decoded and the one made of it above:
//! [`decoding_bytes`]). A local file's chunks are not fetched but read mapped
//! ([`MappedFile`]): they cost the heap nothing, so only their decoding is reserved.
//!
//! ```text
//!  DataSourceExec (parquet)
//!    ParquetSource ── ReservedReaderFactory ── the factory the source had
//!                        │ one ReservedReader per file, one reservation each
//!                        ▼
//!    get_byte_ranges(row group's chunks) ─► reservation := fetched (unless mapped) + decoding them
//!                                           (the row group before is done by then)
//! ```
//!
//! The reservation cannot spill, so the pool counts it before the statement's spilling
//! operators: their fair shares shrink and they spill at their next growth. A scan takes the
//! statement's room only while half of what it can hold (with what it may borrow from the
//! cache pool) stays free for the operators that come later; past the half it reads the row
//! group unreserved, as every scan did before scans reserved (untracked memory, and the first
//! such read of a scan is an event, so it is never silent): with the scans free to take the
//! whole pool, a sort's next batch after a spill or a merge was refused and ten sorts at once
//! under a 4 MiB pool failed (ARCHITECTURE.md, "Not yet true"). When the pool
//! refuses, the statement's spillable operators are made to spill first (`QueryMemory`'s wait
//! for room); still short, the scan waits, up to `memory.admission_wait`, for room held where
//! it comes back without this scan's rows — other statements, and the parts of its own that do
//! not read its batches (another partition of the scan, a branch beside it) — and fails the
//! query cleanly, naming the largest holders, if it does not come. It never waits for the
//! operators that read its batches: they give their room back only once they finish or spill,
//! and they may need this scan's rows for that (`QueryMemory::wait_for_room`). When the room
//! would come only if they spilled (a sort taking its input spills at its next growth, after
//! this scan's rows) it reads the row group unreserved, with an event; when it would not come
//! even then (a held join build, a sort merging what it took), the query fails at once.
//!
//! Not reserved here: footers and page indexes, read whole by the inner factory and kept in the
//! footer cache, reserved from the cache pool (`footer_cache.rs`); one the cache has no room
//! for lives, unreserved, while its file is read. A second fetch for the same row group (with
//! filters pushed into the reader, the filter's columns come first) replaces the first in the
//! count.

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::{DefaultParquetFileReaderFactory, ParquetFileReaderFactory};
use datafusion::datasource::physical_plan::ParquetSource;
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool, MemoryReservation};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::object_store::local::LocalFileSystem;
use datafusion::parquet::arrow::arrow_reader::ArrowReaderOptions;
use datafusion::parquet::arrow::async_reader::AsyncFileReader;
use datafusion::parquet::basic::Type as PhysicalType;
use datafusion::parquet::errors::ParquetError;
use datafusion::parquet::file::metadata::{ColumnChunkMetaData, ParquetMetaData};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::metrics::{Count, ExecutionPlanMetricsSet, MetricBuilder};
use datafusion::physical_plan::ExecutionPlan;
use futures::future::BoxFuture;
use futures::FutureExt;
use gobi_memory::{ByteSize, QueryMemory, RoomWait};
use memmap2::Mmap;

use crate::settings;

/// The physical optimizer rule that makes every Parquet scan read through a
/// [`ReservedReaderFactory`] reserving from the statement's pool.
pub(crate) struct ReservedScans {
    runtime: Arc<RuntimeEnv>,
    statement: Arc<QueryMemory>,
    /// How long a scan waits for other statements to give back the room it lacks
    /// (`memory.admission_wait`).
    wait: Duration,
}

impl ReservedScans {
    /// Scans planned with this rule reserve from `statement` (`runtime`'s memory pool), wait
    /// up to `wait` for other statements when they hold the room, and, when their source brings
    /// no reader factory, read through `runtime`'s object stores.
    pub(crate) fn new(runtime: Arc<RuntimeEnv>, statement: Arc<QueryMemory>, wait: Duration) -> Self {
        ReservedScans { runtime, statement, wait }
    }
}

impl fmt::Debug for ReservedScans {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReservedScans")
    }
}

impl PhysicalOptimizerRule for ReservedScans {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        let batch_size = config.execution.batch_size.into();
        plan.transform_up(|node| {
            let Some(exec) = node.downcast_ref::<DataSourceExec>() else { return Ok(Transformed::no(node)) };
            let Some((scan, parquet)) = exec.downcast_to_file_source::<ParquetSource>() else { return Ok(Transformed::no(node)) };
            let inner = match parquet.parquet_file_reader_factory() {
                Some(factory) => Arc::clone(factory),
                None => Arc::new(DefaultParquetFileReaderFactory::new(self.runtime.object_store(&scan.object_store_url)?)) as _,
            };
            let factory = ReservedReaderFactory {
                inner,
                local: scan.object_store_url == ObjectStoreUrl::local_filesystem(),
                statement: Arc::clone(&self.statement),
                wait: self.wait,
                reserved_up_to: self.statement.holdable() / 2,
                read_unreserved: Arc::default(),
                batch_size,
                metadata: Arc::default(),
            };
            let mut scan = scan.clone();
            scan.file_source = Arc::new(parquet.clone().with_parquet_file_reader_factory(Arc::new(factory)));
            Ok(Transformed::yes(Arc::new(exec.clone().with_data_source(Arc::new(scan))) as _))
        })
        .data()
    }

    fn name(&self) -> &str {
        "gobi_reserved_scans"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Makes each file's reader through `inner`, wrapped in a [`ReservedReader`] on `pool`.
#[derive(Debug)]
struct ReservedReaderFactory {
    inner: Arc<dyn ParquetFileReaderFactory>,
    /// Whether the scan's files are on the local file system (read mapped).
    local: bool,
    statement: Arc<QueryMemory>,
    wait: Duration,
    /// What the statement may hold, its scans included, before a scan reads a row group
    /// unreserved: half of what it can hold.
    reserved_up_to: usize,
    /// Set once one of the scan's readers read a row group unreserved (an event says so once).
    read_unreserved: Arc<AtomicBool>,
    /// Rows per decoded batch, for the decoded share of a fetch.
    batch_size: usize,
    /// Each file's metadata, once one of its readers has read it: DataFusion reads it with one
    /// reader and, when it checks bloom filters, decodes the rows with another. Not kept alive
    /// here: the footer cache or the file's open reader keeps it (see the module's doc).
    metadata: Arc<FileMetadata>,
}

/// The metadata of the files a scan has opened, by path.
type FileMetadata = parking_lot::Mutex<std::collections::HashMap<String, Weak<ParquetMetaData>>>;

impl ParquetFileReaderFactory for ReservedReaderFactory {
    fn create_reader(
        &self,
        partition_index: usize,
        file: PartitionedFile,
        metadata_size_hint: Option<usize>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> Result<Box<dyn AsyncFileReader + Send>> {
        let path = file.object_meta.location.to_string();
        let mapped = match self.local {
            true => LocalFileSystem::new().path_to_filesystem(&file.object_meta.location).ok().map(|path| {
                // Beside the inner reader's own (which counts what it fetches): progress reads the sum.
                let scanned = MetricBuilder::new(metrics).with_new_label("filename", path.display().to_string()).counter("bytes_scanned", partition_index);
                MappedFile { path, map: None, fetched: Vec::new(), scanned }
            }),
            false => None,
        };
        let inner = self.inner.create_reader(partition_index, file, metadata_size_hint, metrics)?;
        let pool: Arc<dyn MemoryPool> = Arc::clone(&self.statement) as _;
        let reservation = MemoryConsumer::new(format!("ParquetScan[{partition_index}]")).register(&pool);
        Ok(Box::new(ReservedReader {
            inner,
            mapped,
            reservation,
            statement: Arc::clone(&self.statement),
            wait: self.wait,
            reserved_up_to: self.reserved_up_to,
            read_unreserved: Arc::clone(&self.read_unreserved),
            path,
            files: Arc::clone(&self.metadata),
            batch_size: self.batch_size,
        }))
    }
}

/// One file's reader: what its current row group costs stays reserved until the next fetch or
/// the end of the file.
struct ReservedReader {
    inner: Box<dyn AsyncFileReader + Send>,
    /// The file on the local disk, whose column chunks are read mapped, not through `inner`.
    mapped: Option<MappedFile>,
    reservation: MemoryReservation,
    /// The statement, for the room its other holders leave and to wait for other statements.
    statement: Arc<QueryMemory>,
    wait: Duration,
    reserved_up_to: usize,
    read_unreserved: Arc<AtomicBool>,
    path: String,
    /// The scan's files' metadata, where this file's is once this reader or another of the
    /// scan's has read it: where each column chunk lies and what it decodes to.
    files: Arc<FileMetadata>,
    batch_size: usize,
}

/// The least a decoded value is counted at: a string view or a decimal takes 16 bytes, and a
/// dictionary-encoded column's chunk says far less than what it decodes to.
const MIN_DECODED_WIDTH: f64 = 16.0;

/// Rows in a data page as the usual writers cut them (arrow-rs's `data_page_row_count_limit`,
/// which DataFusion and delta-rs keep; gobi's tables are written so), unless [`PAGE_BYTES`]
/// come first.
const PAGE_ROWS: f64 = 20_000.0;

/// Bytes in a data page as the same writers cut them (`data_page_size_limit`), unless
/// [`PAGE_ROWS`] come first.
const PAGE_BYTES: f64 = 1024.0 * 1024.0;

/// What decoding one column chunk of a row group of `rows` holds besides the fetched bytes:
///
/// ```text
///   the dictionary, decoded, kept for the whole chunk        its page's uncompressed size when
///                                                            its header can be read (a mapped
///                                                            file), else the compressed page ×
///                                                            (uncompressed ÷ compressed) of the chunk
/// + the data page being decoded, decompressed                min(uncompressed × PAGE_ROWS ÷ rows, PAGE_BYTES)
///   (strings and binaries: and the page before, which the    × 2
///   last batch's views still point into)
/// + a batch of values decoded from it, and the one the       2 × max(uncompressed ÷ rows, 16 B) × batch rows
///   operators above make of it before the next is decoded
///   (the Delta scan's casts, a filter's output)
/// ```
///
/// The second batch: with one, a scan under a filter and a small aggregate (TPC-H q6, q19)
/// reserved 0.79–0.86 of its allocator bytes; with two, 0.91–0.96.
///
/// A dictionary page's values are typically less compressible than the chunk's data pages
/// (distinct values beside their run-length encoded indexes): a column of 100,003 distinct
/// integers decodes a dictionary of 800 KB that the chunk's ratio put at 536 KB. String and
/// binary values are decoded as views into the decompressed pages (DataFusion reads them as
/// `Utf8View`), so a batch keeps the pages its rows came from.
fn decoding_bytes(chunk: &ColumnChunkMetaData, rows: f64, batch_size: usize, dictionary_page: Option<usize>) -> f64 {
    let uncompressed = chunk.uncompressed_size().max(0) as f64;
    let expansion = uncompressed / chunk.compressed_size().max(1) as f64;
    let dictionary = match dictionary_page {
        Some(bytes) => bytes as f64,
        None => chunk.dictionary_page_offset().map_or(0.0, |at| (chunk.data_page_offset() - at).max(0) as f64 * expansion).min(uncompressed),
    };
    let pages = match chunk.column_type() {
        PhysicalType::BYTE_ARRAY | PhysicalType::FIXED_LEN_BYTE_ARRAY => 2.0,
        _ => 1.0,
    };
    let page = pages * (uncompressed * (PAGE_ROWS / rows).min(1.0)).min(PAGE_BYTES);
    let batch = (uncompressed / rows).max(MIN_DECODED_WIDTH) * rows.min(batch_size as f64);
    dictionary + page + 2.0 * batch
}

/// The uncompressed size of the dictionary page whose header starts `header`, if it is one.
///
/// A Parquet page header is a Thrift struct in the compact protocol whose first two fields are
/// the page's type and its uncompressed size, both `i32`: a field header byte (the field id's
/// delta from the last, 1, and the type `i32`, 5) and a zigzag varint each. The parquet crate
/// reads headers only while decoding pages; this reads those two fields and nothing else.
fn dictionary_page_size(header: &[u8]) -> Option<usize> {
    const DICTIONARY_PAGE: i64 = 2;
    let mut bytes = header.iter().copied();
    let mut i32_field = || {
        (bytes.next()? == 0x15).then_some(())?;
        let mut value = 0u64;
        for shift in (0..35).step_by(7) {
            let byte = bytes.next()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some((value >> 1) as i64 ^ -((value & 1) as i64));
            }
        }
        None
    };
    let page_type = i32_field()?;
    let size = i32_field()?;
    (page_type == DICTIONARY_PAGE).then(|| usize::try_from(size).ok()).flatten()
}

impl ReservedReader {
    /// What fetching `ranges` costs: their bytes unless they are read from the `mapped` file,
    /// and for each column chunk they lie in what decoding it holds ([`decoding_bytes`]).
    fn cost(&self, ranges: &[Range<u64>], mapped: Option<&[u8]>) -> usize {
        let fetched: u64 = match mapped {
            Some(_) => 0,
            None => ranges.iter().map(|r| r.end - r.start).sum(),
        };
        let mut decoded = 0.0;
        let metadata = self.files.lock().get(&self.path).and_then(Weak::upgrade);
        if let Some(metadata) = metadata.as_deref() {
            let mut chunks = std::collections::HashSet::new();
            for range in ranges {
                let found = metadata.row_groups().iter().enumerate().find_map(|(g, group)| {
                    let (c, chunk) = group.columns().iter().enumerate().find(|(_, c)| {
                        let (start, length) = c.byte_range();
                        range.start >= start && range.start < start + length
                    })?;
                    Some(((g, c), group.num_rows().max(1) as f64, chunk))
                });
                // A chunk fetched in several ranges (pages) is decoded once all the same.
                if let Some((_, rows, chunk)) = found.filter(|(at, ..)| chunks.insert(*at)) {
                    let header = chunk.dictionary_page_offset().and_then(|at| mapped?.get(usize::try_from(at).ok()?..));
                    decoded += decoding_bytes(chunk, rows, self.batch_size, header.and_then(dictionary_page_size));
                }
            }
        }
        usize::try_from(fetched).unwrap_or(usize::MAX).saturating_add(decoded as usize)
    }
}

/// A local file read mapped: the column chunks fetched from it are the kernel's page cache,
/// shared and dropped under pressure, not the process's heap (the anonymous memory a budget
/// governs), so they cost a scan only what decoding them holds.
///
/// A file is mapped whole at its first fetch and unmapped when its reader and every batch
/// still pointing into it are dropped; the pages of a row group are dropped from the process's
/// resident set at the next fetch (a later read of them faults them in again from the page
/// cache), so its RSS holds one row group's chunks at a time, as it did with fetched copies.
///
/// A file another process truncates while it is mapped ends the process (`SIGBUS`) where a
/// read would fail the query: Delta tables never rewrite a data file, and gobi writes no
/// Parquet file in place (`COPY … TO 'file'` goes through the object store, which writes a
/// staged file and renames it over).
struct MappedFile {
    path: std::path::PathBuf,
    map: Option<Arc<Mmap>>,
    /// The ranges of the last fetch, dropped from the resident set at the next.
    fetched: Vec<Range<usize>>,
    scanned: Count,
}

impl MappedFile {
    /// The bytes of `ranges`, pointing into the mapped file; an error (the file gone, or
    /// shorter than a range) leaves the fetch to the inner reader, which says what is wrong.
    fn ranges(&mut self, ranges: &[Range<u64>]) -> std::io::Result<Vec<Bytes>> {
        self.drop_fetched_pages();
        let map = match &self.map {
            Some(map) => Arc::clone(map),
            None => {
                let file = std::fs::File::open(&self.path)?;
                // SAFETY: the mapping is read only, and a file a scan reads is not written in
                // place (see the type's doc).
                let map = Arc::new(unsafe { Mmap::map(&file)? });
                self.map = Some(Arc::clone(&map));
                map
            }
        };
        let spans = ranges
            .iter()
            .map(|range| match (usize::try_from(range.start), usize::try_from(range.end)) {
                (Ok(start), Ok(end)) if start <= end && end <= map.len() => Ok(start..end),
                _ => Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "a range past the end of the file")),
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        let bytes = spans.iter().map(|span| Bytes::from_owner(MappedRange { map: Arc::clone(&map), range: span.clone() })).collect();
        self.scanned.add(spans.iter().map(ExactSizeIterator::len).sum());
        self.fetched = spans;
        Ok(bytes)
    }

    /// The whole file, once mapped.
    fn contents(&self) -> Option<&[u8]> {
        self.map.as_deref().map(|map| &map[..])
    }

    /// Drops the last fetch's pages from the resident set (where the system can).
    fn drop_fetched_pages(&mut self) {
        let fetched = std::mem::take(&mut self.fetched);
        #[cfg(unix)]
        if let Some(map) = &self.map {
            for span in fetched {
                // SAFETY: the mapping is shared and read only: pages dropped are read again
                // from the file at the next access, with the same bytes (nothing was written).
                let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, span.start, span.len()) };
            }
        }
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        self.drop_fetched_pages();
    }
}

/// A range of a mapped file, owned by the `Bytes` pointing into it.
struct MappedRange {
    map: Arc<Mmap>,
    range: Range<usize>,
}

impl AsRef<[u8]> for MappedRange {
    fn as_ref(&self) -> &[u8] {
        &self.map[self.range.clone()]
    }
}

impl ReservedReader {
    /// Reserves `cost` for the row group (the statement's spillable consumers spill for it),
    /// waiting for room held where it comes back without this scan's rows. Not reserved when
    /// only the spilling of the operators reading its rows would make the room (they spill at
    /// their next growth, after these rows); else an error that fails the query: what it
    /// needed, why it did not come, and who holds the pool.
    async fn reserve(&mut self, cost: usize) -> datafusion::parquet::errors::Result<Reserved> {
        let deadline = Instant::now() + self.wait;
        loop {
            let Err(refused) = self.reservation.try_resize(cost) else { return Ok(Reserved::Yes) };
            let more = cost.saturating_sub(self.reservation.size());
            let left = deadline.saturating_duration_since(Instant::now());
            let why = match self.statement.wait_for_room(&self.reservation, more, left).await {
                RoomWait::Room if !left.is_zero() => continue,
                RoomWait::AfterReadersSpill => {
                    return Ok(Reserved::No("the operators reading its rows hold the room and spill only at their next growth, after these rows"))
                }
                RoomWait::Room => String::new(),
                RoomWait::WouldNotCome { readers: 0 } => ": the statement's memory cannot hold it".to_string(),
                RoomWait::WouldNotCome { readers } => format!(
                    ": the operators reading its rows hold {} of the room and give it back only once they finish, which may need these rows",
                    ByteSize(readers as u64)
                ),
                RoomWait::HeldOn => format!(
                    ": it waited {} for other statements and the parts of its own that do not read its rows to give room back; \
                     they held on (SET memory.admission_wait to wait longer)",
                    settings::format_duration(self.wait)
                ),
            };
            let refused = match refused {
                DataFusionError::ResourcesExhausted(message) => message,
                other => other.to_string(),
            };
            let message = format!(
                "{} (query {}) could not reserve {} to read a row group of {}{why}. {refused}",
                self.reservation.consumer().name(),
                self.statement.id(),
                ByteSize(cost as u64),
                self.path,
            );
            return Err(ParquetError::External(Box::new(DataFusionError::ResourcesExhausted(message))));
        }
    }
}

/// Whether a row group was read reserved, and if not, why.
enum Reserved {
    Yes,
    No(&'static str),
}

impl AsyncFileReader for ReservedReader {
    /// Single reads are the footer's and the page index's (see the module's "not reserved here").
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, datafusion::parquet::errors::Result<Bytes>> {
        self.inner.get_bytes(range)
    }

    fn get_byte_ranges(&mut self, ranges: Vec<Range<u64>>) -> BoxFuture<'_, datafusion::parquet::errors::Result<Vec<Bytes>>> {
        let mapped = self.mapped.as_mut().and_then(|file| file.ranges(&ranges).ok());
        let cost = self.cost(&ranges, mapped.as_ref().and(self.mapped.as_ref()).and_then(MappedFile::contents));
        async move {
            let others = self.statement.reserved_bytes().saturating_sub(self.reservation.size());
            let reserved = match others + cost <= self.reserved_up_to {
                true => self.reserve(cost).await,
                false => Ok(Reserved::No("it would take more than half of what the statement can hold")),
            };
            // Unreserved (see the module's doc), and said so: never silently.
            if let Reserved::No(why) = reserved? {
                self.reservation.free();
                if !self.read_unreserved.swap(true, Ordering::Relaxed) {
                    self.statement.record_event(format!(
                        "{} of query {} read a row group of {} unreserved: {why} (counted as untracked; said once per scan)",
                        self.reservation.consumer().name(),
                        self.statement.id(),
                        ByteSize(cost as u64)
                    ));
                }
            }
            if let Some(mapped) = mapped {
                return Ok(mapped);
            }
            let fetched = self.inner.get_byte_ranges(ranges).await?;
            // Read on a thread of no statement (the object store's blocking pool), freed here.
            gobi_memory::allocator::adopt(fetched.iter().map(Bytes::len).sum());
            Ok(fetched)
        }
        .boxed()
    }

    fn get_metadata<'a>(&'a mut self, options: Option<&'a ArrowReaderOptions>) -> BoxFuture<'a, datafusion::parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let metadata = self.inner.get_metadata(options).await?;
            self.files.lock().insert(self.path.clone(), Arc::downgrade(&metadata));
            Ok(metadata)
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    use datafusion::execution::session_state::SessionStateBuilder;
    use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
    use futures::StreamExt;
    use gobi_memory::{MemoryManager, PoolLimits, StatementLimits};

    use super::*;

    /// A context whose Parquet scans reserve from a statement of a `pool`-byte pool (and the
    /// manager, for its events), with `t`: a file of 200,000 rows in row groups of 50,000.
    async fn context(dir: &std::path::Path, pool_size: usize) -> (SessionContext, Arc<QueryMemory>, Arc<MemoryManager>) {
        let file = dir.join("t.parquet");
        if !file.exists() {
            let writer = SessionContext::new();
            let sql = format!(
                "COPY (SELECT value AS id, md5(CAST(value AS STRING)) AS s FROM range(0, 200000)) TO '{}' \
                 STORED AS PARQUET OPTIONS ('format.max_row_group_size' 50000)",
                file.display()
            );
            writer.sql(&sql).await.unwrap().collect().await.unwrap();
        }
        let limits = PoolLimits { query: ByteSize(pool_size as u64), cache: ByteSize(0), temp: ByteSize(0) };
        let memory = MemoryManager::new(limits);
        let statement = memory.begin_query("scan", StatementLimits::default());
        let runtime = RuntimeEnvBuilder::new().with_memory_pool(Arc::clone(&statement) as _).build_arc().unwrap();
        let state = SessionStateBuilder::new()
            .with_default_features()
            .with_config(SessionConfig::new().with_target_partitions(1).with_batch_size(4096))
            .with_runtime_env(Arc::clone(&runtime))
            .with_physical_optimizer_rule(Arc::new(ReservedScans::new(runtime, Arc::clone(&statement), Duration::ZERO)))
            .build();
        let ctx = SessionContext::new_with_state(state);
        ctx.register_parquet("t", file.to_str().unwrap(), ParquetReadOptions::default()).await.unwrap();
        (ctx, statement, memory)
    }

    /// While a scan is inside a row group, what it fetched and what decoding it holds are
    /// reserved (about the row group's compressed bytes, 1.4 MB here); once it is done, nothing.
    #[tokio::test]
    async fn a_scan_holds_its_row_group_reserved_and_releases_it_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, pool, _) = context(dir.path(), 1 << 30).await;
        let mut stream = ctx.sql("SELECT id, s FROM t").await.unwrap().execute_stream().await.unwrap();
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(first.num_rows(), 4096);
        let held = pool.reserved();
        assert!((1 << 20..8 << 20).contains(&held), "one row group's fetch and a decoded batch reserved: {held}");
        let mut rows = first.num_rows();
        while let Some(batch) = stream.next().await {
            rows += batch.unwrap().num_rows();
            assert!(pool.reserved() <= 2 * held, "one row group at a time: {}", pool.reserved());
        }
        assert_eq!(rows, 200_000);
        drop(stream);
        assert_eq!(pool.reserved(), 0);
    }

    /// With a predicate, DataFusion reads a file's metadata with one reader (checking bloom
    /// filters) and decodes with another: the second still reserves the decoded share, as a
    /// scan without a predicate does.
    #[tokio::test]
    async fn a_scan_with_a_predicate_reserves_what_its_rows_decode_to_as_well() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, pool, _) = context(dir.path(), 1 << 30).await;
        let mut held = vec![];
        for query in ["SELECT id, s FROM t", "SELECT id, s FROM t WHERE id >= 0"] {
            let mut stream = ctx.sql(query).await.unwrap().execute_stream().await.unwrap();
            stream.next().await.unwrap().unwrap();
            held.push(pool.reserved());
        }
        assert!(held[1] >= held[0] * 19 / 20, "reserved without a predicate and with one: {held:?}");
    }

    /// The dictionary page sizes read from the headers are the parquet crate's own, for every
    /// chunk of a file with dictionaries of integers and of strings; a data page is no
    /// dictionary.
    #[tokio::test]
    async fn a_dictionary_page_header_gives_the_size_the_page_decompresses_to() {
        use datafusion::parquet::column::page::Page;
        use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};

        let dir = tempfile::tempdir().unwrap();
        context(dir.path(), 1 << 30).await;
        let bytes = Bytes::from(std::fs::read(dir.path().join("t.parquet")).unwrap());
        let reader = SerializedFileReader::new(bytes.clone()).unwrap();
        let mut dictionaries = 0;
        for (g, group) in reader.metadata().row_groups().iter().enumerate() {
            for (c, chunk) in group.columns().iter().enumerate() {
                let at = chunk.dictionary_page_offset().unwrap() as usize;
                let Some(Page::DictionaryPage { buf, .. }) = reader.get_row_group(g).unwrap().get_column_page_reader(c).unwrap().get_next_page().unwrap()
                else {
                    panic!("chunk {g}/{c} starts with its dictionary")
                };
                assert_eq!(dictionary_page_size(&bytes[at..]), Some(buf.len()), "chunk {g}/{c}");
                assert_eq!(dictionary_page_size(&bytes[chunk.data_page_offset() as usize..]), None);
                dictionaries += 1;
            }
        }
        assert_eq!(dictionaries, 8, "four row groups of two columns");
    }

    /// Two scans of one statement hold at most half its memory together: in a pool of three
    /// row groups' cost, the two sides of a union never hold more than one and a half between
    /// them, and the answer is whole.
    #[tokio::test]
    async fn the_scans_of_a_statement_hold_at_most_half_of_it_together() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, pool, _) = context(dir.path(), 1 << 30).await;
        let mut stream = ctx.sql("SELECT id, s FROM t").await.unwrap().execute_stream().await.unwrap();
        stream.next().await.unwrap().unwrap();
        let row_group = pool.reserved();
        drop(stream);

        let (ctx, statement, _) = context(dir.path(), 3 * row_group).await;
        let union = "SELECT sum(length(s)) AS n FROM (SELECT s FROM t UNION ALL SELECT s FROM t WHERE id >= 0)";
        let counted = ctx.sql(union).await.unwrap().collect().await.unwrap();
        assert_eq!(counted[0].column(0).as_any().downcast_ref::<datafusion::arrow::array::Int64Array>().unwrap().value(0), 12_800_000);
        // The scans' reservations, in whole blocks, and the count's.
        let peak = statement.peak();
        assert!((row_group..=3 * row_group / 2 + (1 << 20)).contains(&peak), "peak {peak}, a row group {row_group}");
        assert_eq!(statement.reserved(), 0);
    }

    /// A pool whose half is smaller than one row group's fetch: the scan reads it
    /// unreserved and finishes, holding nothing of the pool, and an event says so once.
    #[tokio::test]
    async fn a_scan_refused_its_row_group_reads_it_unreserved() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, pool, memory) = context(dir.path(), 256 << 10).await;
        let mut stream = ctx.sql("SELECT id, s FROM t").await.unwrap().execute_stream().await.unwrap();
        let mut rows = 0;
        while let Some(batch) = stream.next().await {
            rows += batch.unwrap().num_rows();
            assert_eq!(pool.reserved(), 0, "nothing reserved for a refused row group");
        }
        assert_eq!(rows, 200_000);
        let said: Vec<_> = memory.take_events().into_iter().map(|e| e.action).filter(|a| a.contains("unreserved")).collect();
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(said[0].starts_with("ParquetScan[0] of query 1 read a row group of") && said[0].contains("more than half"), "{}", said[0]);
    }
}
