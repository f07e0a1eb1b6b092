//! gobi-engine: plans and runs statements over a lakehouse.
//!
//! ```text
//!  gobi-lang (statements) ──► Session ──► DataFusion (plan, optimize, execute)
//!                                │             │
//!                                │             └── LakehouseSchema / FileTableFactory (catalog.rs)
//!                                └── writes.rs ──► delta-rs ──► tables/<name>/ (one commit per write)
//! ```
//!
//! The engine owns the meaning of names (catalog), the lakehouse folder (lakehouse), the
//! write paths (writes) and the user-facing error type (error). It does not parse text
//! (gobi-lang does) and does not print anything (the CLI does).

mod catalog;
mod copy;
mod delta_scan;
mod error;
mod functions;
mod governed;
mod lakehouse;
mod memo;
mod memory_tables;
mod logs;
mod result_cache;
mod rewrite;
mod session;
mod variables;
mod writes;

pub use error::{classify, classify_delta, is_duplicate_output_name, spill_budget_exceeded, unknown_table_name, ErrorKind, GobiError, Result};
pub use lakehouse::{Config, Lakehouse, CONFIG_FILE};
pub use session::{CleanupReport, Output, Session, VariableSummary};
