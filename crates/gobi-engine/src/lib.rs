//! gobi-engine: plans and runs statements over a lakehouse.
//!
//! ```text
//!  gobi-lang (statements) ──► Session ──► statements/ ──► runner (governed) ──► DataFusion
//!                               │                           │                  └─ catalog.rs
//!                               │                           └─► writes.rs ──► delta-rs
//!                               └── Engine (shared: tables, memory, result cache, logs, spill)
//! ```
//!
//! The engine owns the meaning of names (catalog), the lakehouse folder (lakehouse), the
//! write paths (writes) and the user-facing error type (error). It does not parse text
//! (gobi-lang does) and does not print anything (the CLI does).

mod cancel;
mod catalog;
mod copy;
mod delta_scan;
mod engine;
mod error;
mod footer_cache;
mod functions;
mod governed;
mod join;
mod keys;
mod lakehouse;
mod logs;
mod maintenance;
mod memo;
mod memory_tables;
mod output;
mod plan_report;
mod read_files;
mod result_cache;
mod rewrite;
mod runner;
mod scan;
mod semi_join;
mod session;
mod settings;
mod sort;
mod statements;
mod stored_types;
mod task_context;
mod topk;
mod variables;
mod writes;

pub use cancel::Stops;
pub use engine::{CleanupReport, Engine};
pub use error::{ErrorKind, GobiError, Result};
pub use lakehouse::{Config, Lakehouse, CONFIG_FILE};
pub use output::{Collected, Output, Progress, ResultStream};
pub use plan_report::{Actual, Estimate, Holds, JoinReport, JoinRun, PlanNode};
pub use session::{Session, VariableSummary};
pub use settings::{Owner, Setting, SETTINGS};
