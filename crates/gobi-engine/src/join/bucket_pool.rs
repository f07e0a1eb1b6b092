//! The memory pool DataFusion's hash join runs on inside the spilling join.

use std::sync::Arc;

use datafusion::common::Result;
use datafusion::execution::memory_pool::{MemoryPool, MemoryReservation};
use parking_lot::Mutex;

/// A pool for DataFusion's in-memory hash join over one build (a bucket, a chunk, or the whole
/// build when it fits): it grants from bytes the spilling join reserved from the statement
/// before it started that join, and asks the statement only for what goes past them. So a
/// join that was promised its memory is not refused half-way because another operator took
/// it in between.
///
/// ```text
///   statement scope ──► reservation "SpillingHashJoin[p]" ──► BucketPool ──► HashJoinInput, …
///                       (held until the join's stream is dropped)            (DataFusion's)
/// ```
#[derive(Debug)]
pub(super) struct BucketPool {
    held: Mutex<Held>,
}

#[derive(Debug)]
struct Held {
    reservation: MemoryReservation,
    granted: usize,
}

impl BucketPool {
    pub(super) fn new(reservation: MemoryReservation) -> Arc<Self> {
        Arc::new(Self { held: Mutex::new(Held { reservation, granted: 0 }) })
    }

    /// Holds what the join was granted and `unreserved`, memory it holds or makes without
    /// asking: gives the rest back (once its table is built: the reservation covered the copy
    /// it concatenates the build into, and the batches are gone now), or asks the statement
    /// for what is missing (before it makes its output at its end). Refused, that output is
    /// made unreserved, as it was before it was asked for.
    pub(super) fn settle(&self, unreserved: usize) {
        let held = self.held.lock();
        let keep = held.granted.saturating_add(unreserved);
        let size = held.reservation.size();
        if size > keep {
            held.reservation.shrink(size - keep);
        } else {
            let _ = held.reservation.try_grow(keep - size);
        }
    }
}

impl std::fmt::Display for BucketPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("gobi_bucket_pool")
    }
}

impl MemoryPool for BucketPool {
    fn name(&self) -> &str {
        "gobi_bucket_pool"
    }

    fn grow(&self, _reservation: &MemoryReservation, additional: usize) {
        let mut held = self.held.lock();
        held.granted += additional;
        let short = held.granted.saturating_sub(held.reservation.size());
        held.reservation.grow(short);
    }

    fn shrink(&self, _reservation: &MemoryReservation, shrink: usize) {
        let mut held = self.held.lock();
        held.granted = held.granted.saturating_sub(shrink);
    }

    fn try_grow(&self, _reservation: &MemoryReservation, additional: usize) -> Result<()> {
        let mut held = self.held.lock();
        let granted = held.granted + additional;
        let short = granted.saturating_sub(held.reservation.size());
        if short > 0 {
            held.reservation.try_grow(short)?;
        }
        held.granted = granted;
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.held.lock().granted
    }
}

#[cfg(test)]
mod tests {
    use datafusion::execution::memory_pool::{GreedyMemoryPool, MemoryConsumer};

    use super::*;

    /// A held build reserved twice its data; once the join has its table, settling keeps what
    /// the join was granted and what it holds without asking, and gives the rest back; before
    /// its output at its end, it asks for what that output will take.
    #[test]
    fn settling_holds_what_the_join_was_granted_and_what_it_holds_unasked() {
        let statement: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(1000));
        let held = MemoryConsumer::new("SpillingHashJoinBuild[0]").register(&statement);
        held.try_grow(600).unwrap();
        let pool = BucketPool::new(held);
        let join: Arc<dyn MemoryPool> = Arc::clone(&pool) as _;
        let table = MemoryConsumer::new("HashJoinInput").register(&join);
        table.try_grow(350).unwrap();
        assert_eq!(statement.reserved(), 600, "granted from what was held");
        pool.settle(50);
        assert_eq!(statement.reserved(), 400, "the join's 350 and 50 it holds unasked");
        table.try_grow(100).unwrap();
        assert_eq!(statement.reserved(), 450, "past the held bytes, the statement is asked");
        pool.settle(0);
        assert_eq!(statement.reserved(), 450, "never below what was granted");
        pool.settle(500);
        assert_eq!(statement.reserved(), 950, "what it will make unasked, asked for");
        pool.settle(600);
        assert_eq!(statement.reserved(), 950, "refused: held as it was");
    }
}
