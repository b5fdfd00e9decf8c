//! The quantized matmul alone at SmolLM2-135M's shapes and at Qwen2.5-Coder-1.5B's feed-forward
//! shapes (its Q4_K and Q6_K matrices), batch 1, 4, 16 and 64: Wick's kernels (each one this CPU
//! has) against candle 0.11's `QMatMul` on the same weights, in one run.
//!
//! Run: `cargo bench -p wick-benches --bench matmul`. Throughput is in weight-row dot products
//! per second (criterion's elements/s: `rows * batch`); the ratio of medians is what
//! `docs/benchmarks.md` reports.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::Duration;
use wick_backend::ops::qgemm::{self, Kernel};
use wick_backend::ops::QWeight;

/// (name, output rows, input width, stored type) of the model's matrices.
const SHAPES: [(&str, usize, usize, GgmlDType); 7] = [
    ("q_o_576x576", 576, 576, GgmlDType::Q4_1),
    ("kv_192x576", 192, 576, GgmlDType::Q4_1),
    ("gate_up_1536x576", 1536, 576, GgmlDType::Q4_1),
    ("down_576x1536", 576, 1536, GgmlDType::Q4_1),
    ("lm_head_49152x576", 49152, 576, GgmlDType::Q8_0),
    ("qwen_gate_8960x1536", 8960, 1536, GgmlDType::Q4K),
    ("qwen_down_1536x8960", 1536, 8960, GgmlDType::Q6K),
];
const BATCHES: [usize; 4] = [1, 4, 16, 64];

fn bench_matmul(c: &mut Criterion) {
    let dev = Device::Cpu;
    for (name, rows, cols, dtype) in SHAPES {
        let w = Tensor::randn(0f32, 0.05, (rows, cols), &dev).unwrap();
        let qt = QTensor::quantize(&w, dtype).unwrap();
        let ours = QWeight::from_qtensor(name, &qt).unwrap();
        let theirs = QMatMul::from_qtensor(qt).unwrap();
        let mut group = c.benchmark_group(format!("matmul_{name}"));
        group.sample_size(10);
        group.warm_up_time(Duration::from_millis(500));
        group.measurement_time(Duration::from_secs(2));
        for m in BATCHES {
            let x = Tensor::randn(0f32, 1.0, (m, cols), &dev).unwrap();
            group.throughput(Throughput::Elements((rows * m) as u64));
            group.bench_with_input(BenchmarkId::new("candle", m), &x, |b, x| {
                b.iter(|| theirs.forward(x).unwrap())
            });
            for kernel in Kernel::ALL.into_iter().filter(|k| k.available()) {
                qgemm::select(kernel).unwrap();
                group.bench_with_input(BenchmarkId::new(kernel.name(), m), &x, |b, x| {
                    b.iter(|| ours.forward(x).unwrap())
                });
            }
        }
        group.finish();
    }
}

criterion_group!(benches, bench_matmul);
criterion_main!(benches);
