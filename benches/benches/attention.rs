//! Paged attention alone at Qwen2.5-Coder-1.5B's shapes (12 query heads, 2 KV heads, head
//! dimension 128, f32 cache in blocks of 16): one sequence whose last 1, 5 or 8 positions are
//! the step's queries (a decode, a speculative verification of 4 and of 7 proposals), over 500
//! and 2,000 keys, for 28 layers (each with its own cache, so that the keys stream from memory
//! as in a step). Run on a compute team of every core, as the engine's worker runs.
//!
//! A second group, `attention_decode`, is a SmolLM2 decode (9 query heads, 3 KV heads, head
//! dimension 64, f16 cache, 30 layers) at 130 and 500 keys, with every layer's cache in cache
//! (`hot`) and with a 64 MiB buffer written between iterations to push it out (`cold`, timed
//! without the flush): which of compute and memory holds a decode step's attention.
//!
//! Run: `cargo bench -p wick-benches --bench attention`. Throughput is in key-query pairs per
//! second (criterion's elements/s: `layers * heads * keys * rows`); comparing two commits means
//! running this at each.

use candle_core::{DType, Device, Tensor};
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use std::time::{Duration, Instant};
use wick_backend::ops::{AttentionMeta, PagedAttention};
use wick_backend::team;

const BLOCK: usize = 16;

/// A model's attention shape and cache type.
struct Shape {
    heads: usize,
    kv_heads: usize,
    dim: usize,
    layers: usize,
    dtype: DType,
}

/// Qwen2.5-Coder-1.5B, f32 cache.
const QWEN: Shape = Shape {
    heads: 12,
    kv_heads: 2,
    dim: 128,
    layers: 28,
    dtype: DType::F32,
};

/// SmolLM2-135M, f16 cache (the default).
const SMOLLM2: Shape = Shape {
    heads: 9,
    kv_heads: 3,
    dim: 64,
    layers: 30,
    dtype: DType::F16,
};

impl Shape {
    /// Every layer's K and V caches, `keys` positions each, random.
    fn caches(&self, keys: usize) -> Vec<(Tensor, Tensor)> {
        let shape = (keys.div_ceil(BLOCK), self.kv_heads, BLOCK, self.dim);
        let cache = || {
            Tensor::randn(0f32, 1.0, shape, &Device::Cpu)
                .and_then(|t| t.to_dtype(self.dtype))
                .unwrap()
        };
        (0..self.layers).map(|_| (cache(), cache())).collect()
    }

    /// `rows` random queries.
    fn queries(&self, rows: usize) -> Tensor {
        Tensor::randn(0f32, 1.0, (rows, self.heads, self.dim), &Device::Cpu).unwrap()
    }

    fn attention<'a>(&self, meta: &'a AttentionMeta) -> PagedAttention<'a> {
        PagedAttention {
            meta,
            scale: 1.0 / (self.dim as f32).sqrt(),
            window: None,
        }
    }

    /// Key-query pairs of a pass over every layer.
    fn pairs(&self, keys: usize, rows: usize) -> Throughput {
        Throughput::Elements((self.layers * self.heads * keys * rows) as u64)
    }
}

/// One sequence of `keys` positions in blocks `0, 1, ...`, whose last `rows` are the queries.
fn last_rows(keys: usize, rows: usize) -> AttentionMeta {
    AttentionMeta {
        positions: (keys - rows..keys).collect(),
        token_table: vec![0; rows],
        tables: vec![(0..keys.div_ceil(BLOCK) as u32).collect()],
        slots: (keys - rows..keys).collect(),
        block_size: BLOCK,
    }
}

/// A group of short runs (each pass takes milliseconds).
fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    group
}

/// Attention of `q` over every layer's caches, as a step runs it.
fn every_layer(q: &Tensor, caches: &[(Tensor, Tensor)], op: &PagedAttention) {
    for (k, v) in caches {
        q.apply_op3_no_bwd(k, v, op).unwrap();
    }
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn bench_attention(c: &mut Criterion) {
    let mut group = group(c, "attention");
    for keys in [500usize, 2000] {
        let caches = QWEN.caches(keys);
        for rows in [1usize, 5, 8] {
            let meta = last_rows(keys, rows);
            let op = QWEN.attention(&meta);
            group.throughput(QWEN.pairs(keys, rows));
            let id = BenchmarkId::new(format!("keys_{keys}"), format!("rows_{rows}"));
            group.bench_with_input(id, &QWEN.queries(rows), |b, q| {
                team::install(threads(), || b.iter(|| every_layer(q, &caches, &op))).unwrap()
            });
        }
    }
    group.finish();
}

fn bench_decode(c: &mut Criterion) {
    let mut group = group(c, "attention_decode");
    // Written between cold iterations: far more than the L2 caches.
    let mut flush = vec![1u8; 64 << 20];
    for keys in [130usize, 500] {
        let caches = SMOLLM2.caches(keys);
        let meta = last_rows(keys, 1);
        let op = SMOLLM2.attention(&meta);
        let q = SMOLLM2.queries(1);
        group.throughput(SMOLLM2.pairs(keys, 1));
        for cold in [false, true] {
            let id = BenchmarkId::new(format!("keys_{keys}"), if cold { "cold" } else { "hot" });
            group.bench_function(id, |b| {
                team::install(threads(), || {
                    b.iter_custom(|iters| {
                        let mut took = Duration::ZERO;
                        for i in 0..iters {
                            if cold {
                                for byte in flush.iter_mut().step_by(64) {
                                    *byte = byte.wrapping_add(i as u8);
                                }
                            }
                            let start = Instant::now();
                            every_layer(&q, &caches, &op);
                            took += start.elapsed();
                        }
                        took
                    })
                })
                .unwrap()
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_attention, bench_decode);
criterion_main!(benches);
