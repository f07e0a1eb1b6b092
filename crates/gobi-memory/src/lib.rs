//! gobi-memory: the bottom layer of gobi. It depends on no other gobi crate (only on
//! DataFusion's execution crate, whose `MemoryPool` it implements, jemalloc, and Tokio's
//! `Notify` to wait for memory without polling).
//!
//! It owns gobi's governed memory: the three named pools (**query**, **cache**, **temp**),
//! their limits and the byte sizes users write in `gobi.toml` (`"50MiB"`), each statement's
//! accounting, and the counting allocator that says what each statement really holds.
//!
//! ```text
//!   manager ──► query ─────────► budget ──► pool ──► wait        A ──► B: A imports B
//!      │                           ▲
//!      └──────► reservation ───────┘
//! ```
//!
//! A module may also import any module further right (`query` waits with `wait`, `manager`
//! names `pool`'s types); `byte_size` and `allocator` import nothing of the crate. The budget
//! reaches the registry of statements only through a trait the manager implements, to name
//! the largest holders when a request is refused.
//!
//! What each module owns, from the bottom up; no module imports one above it:
//! - `wait` — waiting for a condition on counters without polling (a waiter count checked
//!   by releases, then Tokio's `Notify`).
//! - `pool` — [`Pool`]: one pool's limit, reserved bytes and counters, all atomics; its
//!   [`Pressure`] and the thresholds ([`HIGH_PRESSURE_PERCENT`], [`CRITICAL_PRESSURE_PERCENT`]);
//!   waiting for the pressure to fall.
//! - `budget` — what the manager and every statement share: the three pools ([`PoolLimits`]),
//!   the fair share of spillable operators, elastic borrowing between the query and cache
//!   pools, the [`Reclaim`]ers, faults on purpose, the [`MemoryEvent`]s, the listing of
//!   reservations kept between statements, and the engine-wide settings (leak threshold, fault
//!   probability).
//! - `reservation` — [`Reservation`]: bytes of one pool kept between statements (a `let`
//!   value, a cached result, a memo), in whole blocks.
//! - `query` — [`QueryMemory`]: one statement's accounting, DataFusion's `MemoryPool` for its
//!   plan, held to its [`StatementLimits`] (`memory.query_limit`, `memory.actual_margin`).
//! - `manager` — [`MemoryManager`]: the registry of statements (begin, leaks, cleanup, the
//!   consumer listing); everything else it delegates to the budget.
//! - [`allocator`] — the counting allocator and the process's memory; `byte_size` — [`ByteSize`].

pub mod allocator;
mod budget;
mod byte_size;
mod manager;
mod pool;
mod query;
mod reservation;
mod wait;

pub use allocator::{AllocScope, GobiAllocator, ProcessMemory};
pub use budget::{ConsumerStats, MemoryEvent, PoolLimits, QueryId, Reclaim, DEFAULT_LEAK_THRESHOLD};
pub use byte_size::{ByteSize, ByteSizeError};
pub use manager::{LeakStats, MemoryManager, Released};
pub use pool::{Pool, PoolKind, PoolStats, Pressure, CRITICAL_PRESSURE_PERCENT, HIGH_PRESSURE_PERCENT};
pub use query::{registered_for, registering_for, Margin, NodeMemory, QueryMemory, RoomWait, StatementLimits, DEFAULT_ACTUAL_MARGIN};
pub use reservation::{PoolFull, Reservation};
