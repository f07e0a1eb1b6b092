//! The cost of gobi's query pool on the reservation hot path, beside DataFusion's own pools.
//!
//! Each iteration is one operator's life in miniature: 64 growths, then one shrink back to
//! zero. Two growth sizes: `small` (1 KiB, an aggregation's table growing by a few groups per
//! batch: gobi's blocks absorb most of them) and `batch` (64 KiB, a sort or repartition taking
//! a batch: every growth reaches the shared pool). `gobi` is a statement's `QueryMemory`
//! (consumer blocks, per-query and per-node counters, the shared pool's CAS, fair shares,
//! fault-injection check); `greedy` and `fair_spill` are DataFusion's `GreedyMemoryPool` and
//! `FairSpillPool`. All three have room for everything, so no request is refused.
//!
//! `threads_1` runs one consumer; `threads_2` runs two threads at once, each with its own
//! consumer in the same pool, timing both (the contended case). Run with
//! `cargo bench -p gobi-bench --bench memory_pool`; `bench/memory.sh` prints the ratios.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use datafusion::execution::memory_pool::{FairSpillPool, GreedyMemoryPool, MemoryConsumer, MemoryPool};
use gobi_memory::{ByteSize, MemoryManager, PoolLimits, StatementLimits};

const GROWTHS: usize = 64;
const STEPS: [(&str, usize); 2] = [("small", 1 << 10), ("batch", 64 << 10)];
const LIMIT: usize = 1 << 30;

fn pools() -> Vec<(&'static str, Arc<dyn MemoryPool>)> {
    let manager = MemoryManager::new(PoolLimits { query: ByteSize(LIMIT as u64), ..PoolLimits::default() });
    let gobi: Arc<dyn MemoryPool> = manager.begin_query("bench", StatementLimits::default());
    vec![("gobi", gobi), ("greedy", Arc::new(GreedyMemoryPool::new(LIMIT))), ("fair_spill", Arc::new(FairSpillPool::new(LIMIT)))]
}

/// `iterations` rounds of 64 growths of `step` bytes and one shrink on a fresh consumer of `pool`.
fn rounds(pool: &Arc<dyn MemoryPool>, name: &str, step: usize, iterations: u64) {
    let reservation = MemoryConsumer::new(name.to_string()).with_can_spill(true).register(pool);
    for _ in 0..iterations {
        for _ in 0..GROWTHS {
            reservation.try_grow(step).expect("the pool has room");
        }
        reservation.free();
    }
}

fn reserve_release(c: &mut Criterion) {
    for (size, step) in STEPS {
        threads_1(c, size, step);
        threads_2(c, size, step);
    }
}

fn threads_1(c: &mut Criterion, size: &str, step: usize) {
    let mut one = c.benchmark_group(format!("reserve_release_{size}_threads_1"));
    for (name, pool) in pools() {
        one.bench_function(name, |b| {
            b.iter_custom(|iterations| {
                let started = Instant::now();
                rounds(&pool, "ExternalSorter[0]", step, iterations);
                started.elapsed()
            })
        });
    }
    one.finish();
}

fn threads_2(c: &mut Criterion, size: &str, step: usize) {
    let mut two = c.benchmark_group(format!("reserve_release_{size}_threads_2"));
    for (name, pool) in pools() {
        two.bench_function(name, |b| {
            b.iter_custom(|iterations| {
                let barrier = Arc::new(Barrier::new(2));
                let workers: Vec<_> = (0..2)
                    .map(|t| {
                        let (pool, barrier) = (Arc::clone(&pool), Arc::clone(&barrier));
                        std::thread::spawn(move || {
                            barrier.wait();
                            let started = Instant::now();
                            rounds(&pool, &format!("ExternalSorter[{t}]"), step, iterations);
                            started.elapsed()
                        })
                    })
                    .collect();
                workers.into_iter().map(|w| w.join().unwrap()).max().unwrap_or(Duration::ZERO)
            })
        });
    }
    two.finish();
}

criterion_group!(benches, reserve_release);
criterion_main!(benches);
