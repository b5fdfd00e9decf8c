//! Draft-model speculation on the real models: Qwen2.5-Coder-1.5B-Instruct with 0.5B drafting
//! (both fetched by `scripts/fetch-model.sh`). Proposing entries give exactly the generations of
//! decoding one token per step, greedy and seeded, for a sequence of its own and for one that
//! starts on another's blocks (a prefix-cache hit: the draft cache's records show what it holds)
//! and for a prompt the draft catches up on over several steps; a draft with another tokenizer
//! is refused at load.

use std::path::PathBuf;
use wick_backend::draft::CATCH_UP;
use wick_backend::{load_engine, BackendConfig, Engine, LoadError};
use wick_proto::{Generation, SamplingParams, Step, StepEntry};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn qwen(size: &str) -> PathBuf {
    let path = root().join(format!("models/qwen2.5-coder-{size}-instruct-q4_k_m.gguf"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-model.sh qwen2.5-coder-{size}",
        path.display()
    );
    path
}

fn config() -> BackendConfig {
    BackendConfig {
        kv_cache_bytes: 64 << 20,
        draft_model: Some(qwen("0.5b")),
        ..BackendConfig::new(qwen("1.5b"))
    }
}

fn entry(
    seq: u64,
    tokens: &[u32],
    start_pos: usize,
    blocks: &[u32],
    params: &SamplingParams,
) -> StepEntry {
    StepEntry {
        seq,
        tokens: tokens.to_vec(),
        start_pos,
        blocks: blocks.to_vec(),
        sample: Some(params.clone()),
        draft: 0,
        propose: 0,
        context: Vec::new(),
    }
}

/// `steps` tokens decoded one per step after `prompt` (run whole from `start`, with `context`
/// before it): with `propose` proposals per step from the draft model, or none.
fn decode(
    engine: &mut Engine,
    seq: u64,
    (context, prompt): (&[u32], &[u32]),
    blocks: &[u32],
    params: &SamplingParams,
    propose: usize,
    steps: usize,
) -> (Vec<Generation>, usize) {
    let mut first = entry(seq, prompt, context.len(), blocks, params);
    first.context = context.to_vec();
    first.propose = propose;
    let mut got = engine
        .step(&Step {
            entries: vec![first],
        })
        .unwrap()
        .generations;
    let mut verify_steps = 1;
    while got.len() < steps {
        let pos = context.len() + prompt.len() + got.len() - 1;
        let last = got.last().unwrap().token;
        let mut e = entry(seq, &[last], pos, blocks, params);
        e.propose = propose.min(steps - got.len());
        let out = engine.step(&Step { entries: vec![e] }).unwrap().generations;
        assert!(
            !out.is_empty() && out.len() <= propose + 1,
            "{} generations",
            out.len()
        );
        got.extend(out);
        verify_steps += 1;
    }
    got.truncate(steps);
    engine.release(seq);
    (got, verify_steps)
}

fn same(a: &[Generation], b: &[Generation], what: &str) {
    for (i, (a, b)) in a.iter().zip(b).enumerate() {
        assert_eq!(a.token, b.token, "{what}: token {i}");
        assert_eq!(
            a.logprob.to_bits(),
            b.logprob.to_bits(),
            "{what}: logprob {i}"
        );
        assert_eq!(a.top_logprobs, b.top_logprobs, "{what}: top {i}");
    }
}

#[test]
fn draft_model_proposals_give_the_generations_of_plain_decoding() {
    let (mut engine, info) = load_engine(&config()).unwrap();
    assert!(engine.drafter().is_some());
    let bs = info.kv_block_size;
    let tok = wick_backend::tokenizer::load_tokenizer(&qwen("1.5b")).unwrap();
    let text = "<|im_start|>user\nRewrite this with `count` renamed to `quantity`:\n\
                def total(items):\n    result = 0\n    for item in items:\n        \
                result += item.price * item.count\n    return result\n<|im_end|>\n\
                <|im_start|>assistant\n";
    let prompt = tok
        .tokenizer
        .encode(text, false)
        .unwrap()
        .get_ids()
        .to_vec();
    assert!(prompt.len() > 2 * bs, "{}", prompt.len());
    let table = |seq: u32| -> Vec<u32> { (0..8).map(|b| seq * 8 + b).collect() };
    const STEPS: usize = 24;
    for (i, temperature) in [0.0f32, 0.8].into_iter().enumerate() {
        let params = SamplingParams {
            temperature,
            seed: 7,
            top_logprobs: 2,
            ..SamplingParams::default()
        };
        let base = 3 * i as u64;
        let run = |engine: &mut Engine, seq: u64, parts, blocks: &[u32], propose| {
            decode(engine, seq, parts, blocks, &params, propose, STEPS)
        };
        let (plain, _) = run(&mut engine, base, (&[], &prompt), &table(base as u32), 0);
        let (drafted, verify_steps) = run(
            &mut engine,
            base + 1,
            (&[], &prompt),
            &table(base as u32 + 1),
            4,
        );
        same(&plain, &drafted, &format!("temperature {temperature}"));
        println!("temperature {temperature}: {STEPS} tokens in {verify_steps} steps");
        if temperature == 0.0 {
            assert!(
                verify_steps < STEPS / 2,
                "{verify_steps} steps: proposals were not accepted"
            );
        }
        // A sequence on the drafted one's first two blocks (a prefix-cache hit): its draft
        // cache blocks hold that prompt, the rest it drafts itself.
        let mut blocks = table(base as u32 + 1)[..2].to_vec();
        blocks.extend(&table(base as u32 + 2)[2..]);
        let cached = 2 * bs;
        let parts = (&prompt[..cached], &prompt[cached..]);
        let (shared, _) = run(&mut engine, base + 2, parts, &blocks, 3);
        same(
            &plain,
            &shared,
            &format!("temperature {temperature}, shared blocks"),
        );
    }
}

/// A prompt longer than the draft catches up on in one step: the first steps run as plain
/// decodes and say so (`not_proposed`), proposals start once the draft is level, and the tokens
/// are those of plain decoding.
#[test]
fn a_long_prompt_is_drafted_in_chunks_before_proposals_start() {
    let (mut engine, _) = load_engine(&config()).unwrap();
    let tok = wick_backend::tokenizer::load_tokenizer(&qwen("1.5b")).unwrap();
    let text = "def total(items):\n    return sum(item.price for item in items)\n".repeat(24);
    let prompt = tok
        .tokenizer
        .encode(text.as_str(), false)
        .unwrap()
        .get_ids()
        .to_vec();
    assert!(prompt.len() > CATCH_UP + 16, "{}", prompt.len());
    let params = SamplingParams::default();
    let blocks: Vec<u32> = (0..48).collect();
    let (plain, _) = decode(&mut engine, 1, (&[], &prompt), &blocks, &params, 0, 6);
    let mut first = entry(2, &prompt, 0, &blocks, &params);
    first.propose = 3;
    let out = engine
        .step(&Step {
            entries: vec![first],
        })
        .unwrap();
    assert_eq!(
        out.not_proposed,
        [2],
        "the draft is {} tokens behind",
        prompt.len()
    );
    assert_eq!(out.generations.len(), 1);
    let mut got = out.generations;
    let mut caught_up = false;
    while got.len() < 6 {
        let pos = prompt.len() + got.len() - 1;
        let mut e = entry(2, &[got.last().unwrap().token], pos, &blocks, &params);
        e.propose = 3;
        let out = engine.step(&Step { entries: vec![e] }).unwrap();
        caught_up |= out.not_proposed.is_empty();
        got.extend(out.generations);
    }
    assert!(caught_up, "proposals never started");
    same(&plain, &got[..6], "long prompt");
}

#[test]
fn a_draft_model_with_another_tokenizer_is_refused() {
    let cfg = BackendConfig {
        draft_model: Some(root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf")),
        ..config()
    };
    let err = load_engine(&cfg).err().expect("must be refused");
    assert!(matches!(err, LoadError::DraftModel { .. }), "{err}");
    assert!(err.to_string().contains("tokenizer"), "{err}");
}
