//! Stopping a running statement, whatever its operators are doing.
//!
//! Dropping a plan's stream aborts its tasks, but tokio aborts a task only when it yields, and
//! an operator whose input is always ready (a cross join counting `range × range`) never does:
//! its threads would go on at full speed after Ctrl-C. So every node of a statement's plans
//! checks the statement's [`Stop`] each time it is polled (`governed::ScopedStream`), and a
//! set stop ends the poll with a "cancelled" error that every operator passes up.
//!
//! ```text
//!   a dropped result (`| head`, a dropped future) ──► Running::drop ──┐
//!   Session::cancel / Stops::stop_all (Ctrl-C, a server's cancel) ──┴─► Stop::set
//!                                                      └──► the next poll of any node fails
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use datafusion::error::DataFusionError;
use parking_lot::Mutex;

use crate::error::GobiError;

/// One statement's stop flag, shared by every node of the plans it runs.
#[derive(Clone, Debug, Default)]
pub(crate) struct Stop(Arc<AtomicBool>);

impl Stop {
    pub(crate) fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// The error a stopped node returns; `None` while the statement may go on.
    pub(crate) fn check(&self) -> Option<DataFusionError> {
        self.0.load(Ordering::Relaxed).then(|| DataFusionError::External(Box::new(GobiError::cancelled())))
    }
}

/// A session's running statements (a script's statement and those its functions or `let`s
/// start), held weakly so an ended statement's flag goes with it.
#[derive(Clone, Debug, Default)]
pub struct Stops(Arc<Mutex<Vec<Weak<AtomicBool>>>>);

impl Stops {
    /// `stop` belongs to a statement that starts running in this session.
    pub(crate) fn running(&self, stop: &Stop) {
        let mut stops = self.0.lock();
        stops.retain(|s| s.strong_count() > 0);
        stops.push(Arc::downgrade(&stop.0));
    }

    /// Stops every statement the session runs; true if there was one.
    pub fn stop_all(&self) -> bool {
        let mut stops = self.0.lock();
        stops.retain(|s| s.strong_count() > 0);
        stops.iter().filter_map(Weak::upgrade).for_each(|flag| flag.store(true, Ordering::Relaxed));
        !stops.is_empty()
    }
}
