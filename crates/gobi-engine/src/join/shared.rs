//! One build shared by every partition of the probe (the join's `Layout::SharedBuild`): read
//! once, by whichever partition comes first, while the others wait for it.
//!
//! ```text
//!   build (one partition) ──► held ──(fit)──► one DataFusion CollectLeft join ◄── probe 0..n
//!                               │                (each partition its own stream; the last to end
//!                               │                 outputs the build rows a left join owes)
//!                               └─(outgrew)──► buckets ◄── each probe partition scatters its own
//!                                              rows, then
//!         inner, right joins: each partition joins its buckets with the build's
//!         left, full joins (build rows output by what no probe row of any partition matched):
//!           the last partition to finish scattering joins every partition's buckets; the
//!           others output nothing (as DataFusion's join leaves the unmatched rows to its last)
//! ```

use std::future::Future;
use std::sync::Arc;

use datafusion::common::{internal_err, DataFusionError, Result};

use super::bucket_pool::BucketPool;
use super::buckets::Scattered;
use super::spec::{SharedJoin, Unasked};

/// A shared build, read.
pub(super) enum SharedBuild {
    /// It fit: DataFusion's join over it, one table for every probe partition, on `pool`
    /// (which settles once the table is built, as `partition::settling` says, to what the join
    /// was granted and `unasked`).
    Held { join: SharedJoin, pool: Arc<BucketPool>, unasked: Unasked },
    /// It did not: its buckets, joined with the probe's (see the module's diagram).
    Scattered { builds: Scattered, probes: GatheredProbes },
}

/// The probe's buckets from every partition, for a join whose output depends on all of them:
/// the last partition to hand in its buckets takes everyone's. No partition waits for another.
pub(super) struct GatheredProbes {
    state: parking_lot::Mutex<Gathering>,
}

struct Gathering {
    /// Partitions that have not handed in their buckets yet.
    waiting: usize,
    parts: Vec<Scattered>,
}

impl GatheredProbes {
    pub fn new(partitions: usize) -> Self {
        Self { state: parking_lot::Mutex::new(Gathering { waiting: partitions, parts: vec![] }) }
    }

    /// Hands in one partition's buckets: every partition's, gathered, if this was the last.
    pub fn hand_in(&self, probes: Scattered) -> Option<Scattered> {
        let mut state = self.state.lock();
        state.parts.push(probes);
        state.waiting = state.waiting.saturating_sub(1);
        (state.waiting == 0).then(|| Scattered::gathered(std::mem::take(&mut state.parts)))
    }
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
