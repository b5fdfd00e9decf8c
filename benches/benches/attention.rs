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
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::{Duration, Instant};
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

/// SmolLM2's attention shape.
const DECODE_HEADS: usize = 9;
const DECODE_KV_HEADS: usize = 3;
const DECODE_DIM: usize = 64;
const DECODE_LAYERS: usize = 30;

fn bench_decode(c: &mut Criterion) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let dev = Device::Cpu;
    let mut group = c.benchmark_group("attention_decode");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    // Written between cold iterations: far more than the L2 caches.
    let mut flush = vec![1u8; 64 << 20];
    for keys in [130usize, 500] {
        let blocks = keys.div_ceil(BLOCK);
        let cache = || {
            Tensor::randn(
                0f32,
                1.0,
                (blocks, DECODE_KV_HEADS, BLOCK, DECODE_DIM),
                &dev,
            )
            .and_then(|t| t.to_dtype(DType::F16))
            .unwrap()
        };
        let caches: Vec<(Tensor, Tensor)> =
            (0..DECODE_LAYERS).map(|_| (cache(), cache())).collect();
        let meta = AttentionMeta {
            positions: vec![keys - 1],
            token_table: vec![0],
            tables: vec![(0..blocks as u32).collect()],
            slots: vec![keys - 1],
            block_size: BLOCK,
        };
        let q = Tensor::randn(0f32, 1.0, (1, DECODE_HEADS, DECODE_DIM), &dev).unwrap();
        let op = PagedAttention {
            meta: &meta,
            scale: 1.0 / (DECODE_DIM as f32).sqrt(),
            window: None,
        };
        group.throughput(Throughput::Elements(
            (DECODE_LAYERS * DECODE_HEADS * keys) as u64,
        ));
        for cold in [false, true] {
            let id = BenchmarkId::new(format!("keys_{keys}"), if cold { "cold" } else { "hot" });
            group.bench_function(id, |b| {
                team::install(threads, || {
                    b.iter_custom(|iters| {
                        let mut took = Duration::ZERO;
                        for i in 0..iters {
                            if cold {
                                for byte in flush.iter_mut().step_by(64) {
                                    *byte = byte.wrapping_add(i as u8);
                                }
                            }
                            let start = Instant::now();
                            for (k, v) in &caches {
                                q.apply_op3_no_bwd(k, v, &op).unwrap();
                            }
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
