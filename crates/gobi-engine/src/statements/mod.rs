//! What each kind of statement does, as `impl Session` blocks, one concern a file:
//! - `query.rs`: SQL statements — dispatch, then a query's governed, streaming execution;
//! - `write.rs`: changes to tables (Delta writes through the governed path, in-memory tables
//!   without a lakehouse, COPY from a file, ALTER TABLE);
//! - `define.rs`: `let` variables and user functions;
//! - `show.rs`: SHOW TABLES, SHOW MEMORY, SHOW SETTINGS and SET memory.*;
//! - `failure.rs`: a failed statement's error, pointed at the value it could not convert;
//! - `plan.rs`: `gobi plan`, a query's physical plan with estimates (and actuals, analyzed).

mod define;
mod failure;
mod plan;
mod query;
mod show;
mod write;
