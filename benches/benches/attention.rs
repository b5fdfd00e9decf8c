//! Paged attention alone at Qwen2.5-Coder-1.5B's shapes (12 query heads, 2 KV heads, head
//! dimension 128, f32 cache in blocks of 16): one sequence whose last 1, 5 or 8 positions are
//! the step's queries (a decode, a speculative verification of 4 and of 7 proposals), over 500
//! and 2,000 keys, for 28 layers (each with its own cache, so that the keys stream from memory
//! as in a step). Run on a compute team of every core, as the engine's worker runs.
//!
//! Run: `cargo bench -p wick-benches --bench attention`. Throughput is in key-query pairs per
//! second (criterion's elements/s: `layers * heads * keys * rows`); comparing two commits means
//! running this at each.

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::Duration;
use wick_backend::ops::{AttentionMeta, PagedAttention};
use wick_backend::team;

const HEADS: usize = 12;
const KV_HEADS: usize = 2;
const DIM: usize = 128;
const BLOCK: usize = 16;
const LAYERS: usize = 28;

fn bench_attention(c: &mut Criterion) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let dev = Device::Cpu;
    let mut group = c.benchmark_group("attention");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    for keys in [500usize, 2000] {
        let blocks = keys.div_ceil(BLOCK);
        let cache = || Tensor::randn(0f32, 1.0, (blocks, KV_HEADS, BLOCK, DIM), &dev).unwrap();
        let caches: Vec<(Tensor, Tensor)> = (0..LAYERS).map(|_| (cache(), cache())).collect();
        for rows in [1usize, 5, 8] {
            let meta = AttentionMeta {
                positions: (keys - rows..keys).collect(),
                token_table: vec![0; rows],
                tables: vec![(0..blocks as u32).collect()],
                slots: (keys - rows..keys).collect(),
                block_size: BLOCK,
            };
            let q = Tensor::randn(0f32, 1.0, (rows, HEADS, DIM), &dev).unwrap();
            let op = PagedAttention {
                meta: &meta,
                scale: 1.0 / (DIM as f32).sqrt(),
                window: None,
            };
            group.throughput(Throughput::Elements((LAYERS * HEADS * keys * rows) as u64));
            let id = BenchmarkId::new(format!("keys_{keys}"), format!("rows_{rows}"));
            group.bench_with_input(id, &q, |b, q| {
                team::install(threads, || {
                    b.iter(|| {
                        for (k, v) in &caches {
                            q.apply_op3_no_bwd(k, v, &op).unwrap();
                        }
                    })
                })
                .unwrap()
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_attention);
criterion_main!(benches);
