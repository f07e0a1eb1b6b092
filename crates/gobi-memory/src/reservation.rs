//! Memory kept between statements: a `let` table, a cached result, a table's metadata, a
//! function memo. Each is a [`Reservation`] of one pool, held in whole blocks until dropped,
//! and listed by name among the consumers.
//!
//! ```text
//!   Reservation ("a cached result", cache pool)
//!     try_grow(n) ── inside its blocks? ──► bytes += n
//!          │ short
//!          ▼
//!     fault on purpose? ──► PoolFull
//!     pool.try_reserve_between(short, whole blocks) ── full ──► PoolFull "SET memory.cache_pool = …"
//!     shrink(n) ──► two spare blocks or more: all but one go back;  drop ──► all go back
//! ```

use std::sync::Arc;

use crate::budget::{Budget, Kept};
use crate::byte_size::ByteSize;
use crate::pool::{surplus, PoolKind};

/// A request that did not fit its pool, with the message users see.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct PoolFull(pub String);

/// Bytes held from one pool (a `let` table, a cached result, a table's metadata, a function
/// memo) until dropped. The pool holds whole blocks ([`PoolKind::block`]): a reservation that
/// grows a little at a time goes to the pool once per block.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<Budget>,
    kind: PoolKind,
    /// What the owner asked for.
    bytes: usize,
    /// What the pool holds for it: `bytes` rounded up to blocks, plus at most one spare block.
    granted: usize,
    /// What the consumer listing shows of it.
    kept: Arc<Kept>,
}

impl Reservation {
    /// A reservation of pool `kind` for `what`, holding nothing yet, to grow and shrink.
    pub(crate) fn empty(budget: &Arc<Budget>, kind: PoolKind, what: &str) -> Self {
        Self { budget: Arc::clone(budget), kind, bytes: 0, granted: 0, kept: budget.keep(kind, what) }
    }

    /// Holds `bytes` of pool `kind` for `what` until the reservation drops.
    pub(crate) fn new(budget: &Arc<Budget>, kind: PoolKind, bytes: usize, what: &str) -> Result<Self, PoolFull> {
        let mut reservation = Self::empty(budget, kind, what);
        reservation.try_grow(bytes)?;
        Ok(reservation)
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn pool(&self) -> PoolKind {
        self.kind
    }

    /// Grows by `bytes`, reserving whole blocks when the ones held are short (or just the
    /// bytes short, when the pool has less than a block left).
    pub fn try_grow(&mut self, bytes: usize) -> Result<(), PoolFull> {
        let short = (self.bytes + bytes).saturating_sub(self.granted);
        if short > 0 {
            let (budget, kind, what) = (&self.budget, self.kind, self.kept.name());
            if let Some(probability) = budget.inject_fault() {
                return Err(PoolFull(format!("injected fault (memory.fault_probability = {probability}): {what} was refused {}", ByteSize(bytes as u64))));
            }
            let pool = budget.pool(kind);
            let granted = pool.try_reserve_between(short, short.next_multiple_of(kind.block())).map_err(|available| {
                let limit = pool.limit();
                let needed = (limit + short - available).div_ceil(1 << 20);
                PoolFull(format!(
                    "the {kind} pool is full: {what} needs {} with {} of the {} limit reserved. Raise the limit: SET memory.{kind}_pool = '{needed}MiB'",
                    ByteSize(bytes as u64),
                    ByteSize((limit - available) as u64),
                    ByteSize(limit as u64),
                ))
            })?;
            self.granted += granted;
        }
        self.bytes += bytes;
        self.kept.show(self.granted);
        Ok(())
    }

    /// Shrinks by `bytes`, giving spare blocks back (all of them once nothing is held).
    pub fn shrink(&mut self, bytes: usize) {
        self.bytes -= bytes;
        let spare = if self.bytes == 0 { self.granted } else { surplus((self.granted - self.bytes) as isize, self.kind.block(), self.kind.block()) };
        self.budget.pool(self.kind).release(spare);
        self.granted -= spare;
        self.kept.show(self.granted);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.pool(self.kind).release(self.granted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::PoolLimits;

    #[test]
    fn a_reservation_holds_its_pool_until_dropped() {
        let budget = Arc::new(Budget::new(PoolLimits { temp: ByteSize(1 << 20), ..PoolLimits::default() }));
        let held = Reservation::new(&budget, PoolKind::Temp, 800 << 10, "let a").unwrap();
        let error = Reservation::new(&budget, PoolKind::Temp, 300 << 10, "let b").unwrap_err().to_string();
        assert!(error.contains("the temp pool is full: let b needs 300KiB") && error.contains("SET memory.temp_pool = '2MiB'"), "{error}");
        drop(held);
        assert_eq!(budget.pool(PoolKind::Temp).reserved(), 0);
    }

    #[test]
    fn it_grows_in_whole_blocks_and_keeps_one_spare_when_it_shrinks() {
        let budget = Arc::new(Budget::new(PoolLimits::default()));
        let mut memo = Reservation::empty(&budget, PoolKind::Cache, "a function memo");
        let (pool, block) = (budget.pool(PoolKind::Cache), PoolKind::Cache.block());
        memo.try_grow(100).unwrap();
        memo.try_grow(100).unwrap();
        assert_eq!((memo.bytes(), pool.reserved(), pool.stats().allocations), (200, block, 1));
        memo.try_grow(3 * block).unwrap();
        assert_eq!(pool.reserved(), 4 * block);
        memo.shrink(3 * block);
        assert_eq!(pool.reserved(), 2 * block, "the block holding 200 bytes and one spare");
        assert_eq!(budget.kept_consumers()[0].reserved, 2 * block, "listed with what the pool holds for it");
        memo.shrink(200);
        assert_eq!(pool.reserved(), 0, "holding nothing, it holds no block");
    }
}
