//! gobi's integration tests: one binary (each test binary links the whole engine), one
//! module per area. They drive the real `gobi` binary on real lakehouse folders.

mod cli;
mod concurrency;
mod conformance;
mod docs;
mod engine;
mod errors;
mod files;
mod fuzz;
mod interop;
mod joins;
mod maintenance;
mod memory;
mod pl_grizzly;
mod plan;
mod repl;
mod support;
mod tables;
