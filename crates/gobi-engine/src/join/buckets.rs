//! Rows scattered into buckets by the hash of their join key, each bucket a spill file.

use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, UInt32Array};
use datafusion::arrow::compute::BatchCoalescer;
use datafusion::common::hash_utils::{create_hashes, RandomState};
use datafusion::common::Result;
use datafusion::execution::memory_pool::MemoryReservation;
use datafusion::execution::spill_file::SpillFile;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_expr::PhysicalExprRef;
use datafusion::physical_plan::spill::SpillManager;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::EmptyRecordBatchStream;
use futures::{StreamExt, TryStreamExt};

/// The hash that places a row in a bucket at `level` (0 for the first scatter, one more for each
/// re-split). Its seeds are gobi's own: a hash the repartition before the join (seed 0) or
/// DataFusion's join table also used would put every row of a partition in the same few
/// buckets.
fn level_hash(level: usize) -> RandomState {
    RandomState::with_seed(0x6f62_695f_6a6f_696e_u64.wrapping_add((level as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)))
}

/// One bucket of one side: its rows in spill files (none when it has no rows; more than one
/// when the buckets of several probe partitions were gathered).
#[derive(Clone)]
pub(super) struct Bucket {
    files: Vec<Arc<dyn SpillFile>>,
    pub rows: usize,
    /// Split from a bucket whose rows nearly all came here: splitting again will not help.
    pub skewed: bool,
}

impl Bucket {
    /// Its rows read back, batch by batch, one file after the other.
    pub fn read(&self, spill: &Arc<SpillManager>) -> Result<SendableRecordBatchStream> {
        match self.files.as_slice() {
            [] => Ok(Box::pin(EmptyRecordBatchStream::new(Arc::clone(spill.schema())))),
            [file] => spill.read_spill_as_stream_unbuffered(Arc::clone(file), None),
            files => {
                let reader = Arc::clone(spill);
                let rows = futures::stream::iter(files.to_vec()).map(move |file| reader.read_spill_as_stream_unbuffered(file, None)).try_flatten();
                Ok(Box::pin(RecordBatchStreamAdapter::new(Arc::clone(spill.schema()), rows)))
            }
        }
    }

    /// Its rows scattered again by `scatter` (with the next level's hash).
    pub async fn split(&self, mut scatter: Scatter) -> Result<Scattered> {
        let mut rows = self.read(&scatter.spill)?;
        while let Some(batch) = rows.next().await {
            scatter.push(&batch?)?;
        }
        scatter.finish()
    }
}

/// Buckets of one side after scattering, and whether a key was NULL (what `NOT IN` needs to
/// know of its subquery's rows).
#[derive(Clone)]
pub(super) struct Scattered {
    pub buckets: Vec<Bucket>,
    pub null_key: bool,
}

impl Scattered {
    pub fn rows(&self) -> usize {
        self.buckets.iter().map(|b| b.rows).sum()
    }

    /// Buckets with a spill file.
    pub fn written(&self) -> usize {
        self.buckets.iter().filter(|b| !b.files.is_empty()).count()
    }

    /// The buckets of several partitions' rows scattered alike (the same fanout and level),
    /// as one side: bucket i of each, together.
    pub fn gathered(parts: Vec<Scattered>) -> Scattered {
        let mut parts = parts.into_iter();
        let Some(mut all) = parts.next() else { return Scattered { buckets: vec![], null_key: false } };
        for part in parts {
            all.null_key |= part.null_key;
            for (bucket, more) in all.buckets.iter_mut().zip(part.buckets) {
                bucket.files.extend(more.files);
                bucket.rows += more.rows;
            }
        }
        all
    }
}

/// Writes a spill file batch by batch: `Some(batch)` appends, `None` finishes it. (DataFusion's
/// in-progress spill file has no public name, so it is held in a closure.)
type SpillWriter = Box<dyn FnMut(Option<&RecordBatch>) -> Result<Option<Arc<dyn SpillFile>>> + Send>;

fn spill_writer(spill: &SpillManager) -> Result<SpillWriter> {
    let mut file = spill.create_in_progress_file("gobi spilling hash join bucket")?;
    Ok(Box::new(move |batch| match batch {
        Some(batch) => file.append_batch(batch).map(|_| None),
        None => file.finish(),
    }))
}

/// Scatters batches of one side into `fanout` buckets by the hash of their key. A bucket's rows
/// are gathered into batches of the session's batch size before they are written (a batch
/// scattered 16 ways leaves parts of a few rows each, and every batch in a spill file costs a
/// read and a join call of its own): at most a batch per bucket waits in memory, reserved;
/// when that reservation is refused, the waiting rows are written at once, in smaller batches.
pub(super) struct Scatter {
    spill: Arc<SpillManager>,
    keys: Vec<PhysicalExprRef>,
    hash: RandomState,
    buckets: Vec<Filling>,
    hashes: Vec<u64>,
    null_key: bool,
    /// Rows with a NULL key are dropped: in this join they can neither match nor be output.
    drop_null_keys: bool,
    /// Holds what the buckets' coalescers keep.
    waiting: MemoryReservation,
}

/// A bucket being written.
struct Filling {
    pending: BatchCoalescer,
    writer: Option<SpillWriter>,
    rows: usize,
}

impl Filling {
    /// Writes the batches the coalescer completed.
    fn write_completed(&mut self, spill: &SpillManager) -> Result<()> {
        while let Some(batch) = self.pending.next_completed_batch() {
            let writer = match &mut self.writer {
                Some(writer) => writer,
                empty => empty.insert(spill_writer(spill)?),
            };
            writer(Some(&batch))?;
        }
        Ok(())
    }
}

impl Scatter {
    pub fn new(spill: &Arc<SpillManager>, keys: &[PhysicalExprRef], fanout: usize, level: usize, batch_size: usize, waiting: MemoryReservation) -> Self {
        let filling = || Filling { pending: BatchCoalescer::new(Arc::clone(spill.schema()), batch_size), writer: None, rows: 0 };
        Self {
            spill: Arc::clone(spill),
            keys: keys.to_vec(),
            hash: level_hash(level),
            buckets: (0..fanout).map(|_| filling()).collect(),
            hashes: vec![],
            null_key: false,
            drop_null_keys: false,
            waiting,
        }
    }

    pub fn dropping_null_keys(self, drop_null_keys: bool) -> Self {
        Self { drop_null_keys, ..self }
    }

    pub fn push(&mut self, batch: &RecordBatch) -> Result<()> {
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(());
        }
        let keys = self.keys.iter().map(|key| key.evaluate(batch)?.into_array(rows)).collect::<Result<Vec<_>>>()?;
        let null_keys = keys.iter().any(|key| key.null_count() > 0);
        self.null_key |= null_keys;
        self.hashes.clear();
        self.hashes.resize(rows, 0);
        create_hashes(&keys, &self.hash, &mut self.hashes)?;
        let fanout = self.buckets.len();
        let mut indices: Vec<Vec<u32>> = vec![vec![]; fanout];
        for (row, hash) in self.hashes.iter().enumerate() {
            if self.drop_null_keys && null_keys && keys.iter().any(|key| key.is_null(row)) {
                continue;
            }
            indices[(hash % fanout as u64) as usize].push(row as u32);
        }
        for (bucket, rows) in self.buckets.iter_mut().zip(indices).filter(|(_, rows)| !rows.is_empty()) {
            bucket.rows += rows.len();
            bucket.pending.push_batch_with_indices(batch.clone(), &UInt32Array::from(rows))?;
            bucket.write_completed(&self.spill)?;
        }
        let waiting = self.buckets.iter().map(|bucket| bucket.pending.size()).sum();
        if self.waiting.try_resize(waiting).is_err() {
            self.write_waiting()?;
        }
        Ok(())
    }

    /// Writes every bucket's waiting rows.
    fn write_waiting(&mut self) -> Result<()> {
        for bucket in &mut self.buckets {
            bucket.pending.finish_buffered_batch()?;
            bucket.write_completed(&self.spill)?;
        }
        self.waiting.free();
        Ok(())
    }

    pub fn finish(mut self) -> Result<Scattered> {
        self.write_waiting()?;
        let mut buckets = Vec::with_capacity(self.buckets.len());
        for bucket in self.buckets {
            let file = match bucket.writer {
                Some(mut writer) => writer(None)?,
                None => None,
            };
            buckets.push(Bucket { files: file.into_iter().collect(), rows: bucket.rows, skewed: false });
        }
        Ok(Scattered { buckets, null_key: self.null_key })
    }
}
