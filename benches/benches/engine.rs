//! Engine step costs on the real model (SmolLM2-135M-Instruct Q4_1): one decode step at batch 1,
//! 8 and 32 (each sequence with 64 tokens of context), and a 512-token prefill.
//!
//! Each is measured once per matmul kernel this CPU has, in one run: the portable scalar kernel
//! (the baseline), AVX2 and AVX-512 VNNI (all give the same bits).
//!
//! Run: `cargo bench -p wick-benches --bench engine` (after `scripts/fetch-model.sh`).
//! Throughput is reported in tokens per second (criterion's elements/s).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::Duration;
use wick_backend::ops::qgemm::{self, Kernel};
use wick_backend::{load_engine, team, BackendConfig, Engine};
use wick_benches::model_path;
use wick_proto::{SamplingParams, Step, StepEntry};

const CONTEXT: usize = 64;
const BLOCK: usize = 16;

fn tokens(n: usize, salt: usize) -> Vec<u32> {
    (0..n)
        .map(|i| ((i * 7919 + salt * 104_729) % 49_000) as u32)
        .collect()
}

/// Blocks `seq * per_seq ..` for a sequence of up to `len` positions.
fn blocks(seq: usize, len: usize) -> Vec<u32> {
    let per_seq = len.div_ceil(BLOCK);
    (0..per_seq).map(|b| (seq * per_seq + b) as u32).collect()
}

fn entry(seq: usize, toks: Vec<u32>, start_pos: usize, len: usize) -> StepEntry {
    StepEntry {
        seq: seq as u64,
        tokens: toks,
        start_pos,
        blocks: blocks(seq, len),
        sample: Some(SamplingParams::default()),
        draft: 0,
        propose: 0,
        context: Vec::new(),
    }
}

fn engine() -> Engine {
    let cfg = BackendConfig {
        kv_cache_bytes: 256 << 20,
        block_size: BLOCK,
        ..BackendConfig::new(model_path())
    };
    load_engine(&cfg)
        .expect("run scripts/fetch-model.sh first")
        .0
}

fn bench_engine(c: &mut Criterion) {
    // The scalar kernel first (the baseline), then the SIMD ones, in the same run; each on a
    // compute team of every core, as the server's worker runs.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    for kernel in Kernel::ALL.into_iter().filter(|k| k.available()) {
        qgemm::select(kernel).unwrap();
        team::install(threads, || bench_steps(c, kernel.name())).unwrap();
    }
}

fn bench_steps(c: &mut Criterion, kernels: &str) {
    let mut engine = engine();
    let mut group = c.benchmark_group(format!("engine_{kernels}"));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    group.warm_up_time(Duration::from_secs(1));

    for batch in [1usize, 8, 32] {
        let len = CONTEXT + 1;
        let prefill = Step {
            entries: (0..batch)
                .map(|s| entry(s, tokens(CONTEXT, s), 0, len))
                .collect(),
        };
        engine.step(&prefill).unwrap();
        let decode = Step {
            entries: (0..batch)
                .map(|s| entry(s, vec![42], CONTEXT, len))
                .collect(),
        };
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(format!("decode_batch_{batch}"), |b| {
            b.iter(|| engine.step(&decode).unwrap())
        });
    }

    let prefill = Step {
        entries: vec![entry(0, tokens(512, 0), 0, 512)],
    };
    group.throughput(Throughput::Elements(512));
    group.bench_function("prefill_512", |b| b.iter(|| engine.step(&prefill).unwrap()));
    group.finish();
}

criterion_group!(benches, bench_engine);
criterion_main!(benches);
