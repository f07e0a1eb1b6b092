//! gobi's criterion benchmarks live in `benches/`; this crate exists to keep criterion out of
//! the default build (see `Cargo.toml`). Run them with `bench/pl_grizzly.sh`.
