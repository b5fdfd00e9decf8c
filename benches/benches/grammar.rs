//! The per-step cost of constrained decoding on the real model (SmolLM2-135M-Instruct Q4_1,
//! 49152-token vocabulary), at batch 1 and 16:
//!
//! - `masks_<grammar>_batch_B`: llguidance computing the token masks of B sequences (in parallel,
//!   as the engine does), each at a different point of a realistic output;
//! - `decode_free_batch_B`: one engine decode step without constraints (the baseline);
//! - `decode_<grammar>_batch_B`: the same step with every sequence constrained, so the
//!   difference is everything constraints add (masks, masking the logits, advancing the matcher).
//!
//! Grammars: a tool call (`{"name": ..., "arguments": {...}}` against two tools' schemas) and a
//! nested order schema (arrays of objects, enums, bounded numbers). Each sequence's grammar state
//! is a snapshot taken along a valid output, staggered across the batch and moved on every step.
//!
//! Run: `cargo bench -p wick-benches --bench grammar` (after `scripts/fetch-model.sh`).

use criterion::{criterion_group, criterion_main, Criterion};
use rayon::prelude::*;
use serde_json::json;
use std::time::{Duration, Instant};
use wick_backend::grammar::{Constraint, GrammarSpec, Grammars};
use wick_backend::tokenizer::load_tokenizer;
use wick_backend::{load_engine, BackendConfig, Engine};
use wick_benches::model_path;
use wick_proto::{SamplingParams, Step, StepEntry};

const CONTEXT: usize = 64;
const BLOCK: usize = 16;

/// A grammar and an output that follows it.
fn cases() -> Vec<(&'static str, GrammarSpec, &'static str)> {
    let weather = json!({"type": "object", "properties": {
        "name": {"const": "get_weather"},
        "arguments": {"type": "object", "properties": {
            "city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"]}},
        "required": ["name", "arguments"]});
    let add = json!({"type": "object", "properties": {
        "name": {"const": "add"},
        "arguments": {"type": "object", "properties": {
            "a": {"type": "number"}, "b": {"type": "number"}}, "required": ["a", "b"]}},
        "required": ["name", "arguments"]});
    let order = json!({"type": "object", "properties": {
        "customer": {"type": "object", "properties": {
            "name": {"type": "string", "maxLength": 40},
            "tier": {"enum": ["free", "pro", "enterprise"]}}, "required": ["name", "tier"]},
        "items": {"type": "array", "maxItems": 5, "items": {"type": "object", "properties": {
            "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
            "qty": {"type": "integer", "minimum": 1, "maximum": 99},
            "price": {"type": "number", "minimum": 0}}, "required": ["sku", "qty", "price"]}},
        "note": {"type": "string"}},
        "required": ["customer", "items"]});
    vec![
        (
            "tool_call",
            GrammarSpec::JsonSchema {
                schema: json!({"anyOf": [weather, add]}),
                strict: true,
            },
            r#"{"name": "get_weather", "arguments": {"city": "San Francisco", "unit": "celsius"}}"#,
        ),
        (
            "order",
            GrammarSpec::JsonSchema {
                schema: order,
                strict: true,
            },
            r#"{"customer": {"name": "Ada Lovelace", "tier": "pro"}, "items": [{"sku": "ABC-1234", "qty": 2, "price": 9.5}, {"sku": "XYZ-0042", "qty": 10, "price": 120}], "note": "leave at the door"}"#,
        ),
    ]
}

/// The grammar state after each prefix of `output` (the last one is complete).
fn snapshots(grammars: &Grammars, spec: &GrammarSpec, ids: &[u32]) -> Vec<Constraint> {
    let mut c = grammars.compile(spec).expect("the bench grammars compile");
    let mut out = vec![c.clone()];
    for &t in ids {
        c.advance(t)
            .expect("the bench outputs follow their grammars");
        out.push(c.clone());
    }
    out.pop();
    out
}

/// The states of `batch` sequences at step `step`: staggered along the output.
fn states(snaps: &[Constraint], batch: usize, step: usize) -> Vec<Constraint> {
    (0..batch)
        .map(|j| snaps[(step + j * 7) % snaps.len()].clone())
        .collect()
}

fn decode_step(batch: usize) -> Step {
    Step {
        entries: (0..batch)
            .map(|s| StepEntry {
                seq: s as u64,
                tokens: vec![42],
                start_pos: CONTEXT,
                blocks: (0..(CONTEXT + 1).div_ceil(BLOCK))
                    .map(|b| (s * 8 + b) as u32)
                    .collect(),
                sample: Some(SamplingParams::default()),
                draft: 0,
                propose: 0,
                context: Vec::new(),
            })
            .collect(),
    }
}

fn prefilled(batch: usize) -> Engine {
    let cfg = BackendConfig {
        kv_cache_bytes: 256 << 20,
        block_size: BLOCK,
        ..BackendConfig::new(model_path())
    };
    let mut engine = load_engine(&cfg)
        .expect("run scripts/fetch-model.sh first")
        .0;
    let mut prefill = decode_step(batch);
    for e in &mut prefill.entries {
        e.tokens = (0..CONTEXT as u32).map(|i| (i * 7919) % 49_000).collect();
        e.start_pos = 0;
    }
    engine.step(&prefill).unwrap();
    engine
}

fn bench_grammar(c: &mut Criterion) {
    let path = model_path();
    let tok = load_tokenizer(&path).expect("run scripts/fetch-model.sh first");
    let mut engine = prefilled(16);
    let vocab = engine.model().cfg().vocab_size;
    let grammars = Grammars::new(
        &tok.tokenizer,
        vocab,
        &tok.eos_token_ids,
        Default::default(),
    )
    .unwrap();
    let cases: Vec<_> = cases()
        .into_iter()
        .map(|(name, spec, output)| {
            let ids = tok
                .tokenizer
                .encode(output, false)
                .unwrap()
                .get_ids()
                .to_vec();
            (name, snapshots(&grammars, &spec, &ids))
        })
        .collect();

    let mut group = c.benchmark_group("grammar");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(4));
    group.warm_up_time(Duration::from_secs(1));
    for batch in [1usize, 16] {
        for (name, snaps) in &cases {
            group.bench_function(format!("masks_{name}_batch_{batch}"), |b| {
                b.iter_custom(|iters| {
                    let mut spent = Duration::ZERO;
                    for step in 0..iters as usize {
                        let mut seqs = states(snaps, batch, step);
                        let t = Instant::now();
                        let masks: Vec<_> = seqs.par_iter_mut().map(|c| c.mask()).collect();
                        spent += t.elapsed();
                        assert!(masks.iter().all(Result::is_ok));
                    }
                    spent
                })
            });
        }
        let decode = decode_step(batch);
        group.bench_function(format!("decode_free_batch_{batch}"), |b| {
            b.iter(|| engine.step(&decode).unwrap())
        });
        for (name, snaps) in &cases {
            group.bench_function(format!("decode_{name}_batch_{batch}"), |b| {
                b.iter_custom(|iters| {
                    let mut spent = Duration::ZERO;
                    for step in 0..iters as usize {
                        for (j, c) in states(snaps, batch, step).into_iter().enumerate() {
                            engine.constrain(j as u64, c);
                        }
                        let t = Instant::now();
                        engine.step(&decode).unwrap();
                        spent += t.elapsed();
                    }
                    spent
                })
            });
        }
        for seq in 0..batch as u64 {
            engine.release(seq);
        }
    }
    group.finish();
}

criterion_group!(benches, bench_grammar);
criterion_main!(benches);
