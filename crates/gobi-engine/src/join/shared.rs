//! One build shared by every partition of the probe (the join's `Layout::SharedBuild`): read
//! once, by whichever partition comes first, while the others wait for it.
//!
//! ```text
//!   build (one partition) ──► held ──(fit)──► one DataFusion CollectLeft join ◄── probe 0..n
//!                               │                                (each partition its own stream)
//!                               └─(outgrew)──► buckets ◄── each probe partition scatters its own
//!                                              rows and joins them bucket by bucket
//! ```

use std::future::Future;
use std::sync::Arc;

use datafusion::common::{internal_err, DataFusionError, Result};

use super::buckets::Scattered;
use super::exec::SharedJoin;

/// A shared build, read.
pub(super) enum SharedBuild {
    /// It fit: DataFusion's join over it, one table for every probe partition.
    Held(SharedJoin),
    /// It did not: its buckets, which each probe partition joins with its own.
    Scattered(Scattered),
}

/// Where the join's partitions find the shared build. It is let go once every partition has
/// taken it, so its memory goes when the last partition's join ends, not with the plan.
pub(super) struct SharedSlot {
    partitions: usize,
    state: tokio::sync::Mutex<State>,
}

enum State {
    Unread,
    Read {
        build: std::result::Result<Arc<SharedBuild>, Arc<DataFusionError>>,
        /// Partitions that have not taken it yet.
        waiting: usize,
    },
    Gone,
}

impl std::fmt::Debug for SharedSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedSlot({} partitions)", self.partitions)
    }
}

impl SharedSlot {
    /// A slot for a join of `partitions` output partitions.
    pub fn new(partitions: usize) -> Self {
        Self { partitions, state: tokio::sync::Mutex::new(State::Unread) }
    }

    /// The build, read by `read` (given the number of partitions that share it) if no partition
    /// has read it yet; the others wait meanwhile. A failure to read it is every partition's.
    pub async fn take<F, R>(&self, read: F) -> Result<Arc<SharedBuild>>
    where
        F: FnOnce(usize) -> R,
        R: Future<Output = Result<SharedBuild>>,
    {
        let mut state = self.state.lock().await;
        if matches!(*state, State::Unread) {
            let build = read(self.partitions).await.map(Arc::new).map_err(Arc::new);
            *state = State::Read { build, waiting: self.partitions };
        }
        let State::Read { build, waiting } = &mut *state else {
            return internal_err!("the spilling join's shared build was asked for by more than its {} partitions", self.partitions);
        };
        let taken = build.clone().map_err(DataFusionError::Shared);
        *waiting -= 1;
        if *waiting == 0 {
            *state = State::Gone;
        }
        taken
    }
}
