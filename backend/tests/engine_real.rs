//! The engine on the real SmolLM2-135M-Instruct Q4_1 GGUF (fetched by `scripts/fetch-model.sh`):
//! its control tokens (its ids against llama.cpp are in `router/tests/tokenizers.rs`),
//! teacher-forced agreement with llama.cpp's greedy output, batch, chunking and block-size
//! invariance, the worker's typed errors, and the GGUF-to-safetensors round trip.
//! `WICK_TEST_MODEL` and `WICK_TEST_CHAT_FIXTURE` point the fixture tests (teacher forcing,
//! batching and block sizes) at another model and its llama.cpp outputs. Prompts are the
//! fixtures' `prompt_ids` (llama.cpp's tokenization of the templated prompt); that the router
//! renders the same ids is `router/tests/chat_prompts.rs`'s test.

mod fixtures;

use fixtures::{chat_fixture, config, fixture, ids, model_path};
use serde_json::Value;
use wick_backend::sampling::argmax;
use wick_backend::tokenizer::load_tokenizer;
use wick_backend::{load_engine, Backend, BackendConfig, Engine, KvDType};
use wick_proto::{SamplingParams, Step, StepEntry};

/// A fixture case's prompt, as llama.cpp tokenized it.
fn case_prompt(case: &Value) -> Vec<u32> {
    ids(&case["prompt_ids"])
}

/// Blocks reserved for sequence `seq` in these tests: 48 blocks of its own.
fn blocks(seq: u64, block_size: usize) -> Vec<u32> {
    let per_seq = 768 / block_size;
    (0..per_seq as u32)
        .map(|b| seq as u32 * per_seq as u32 + b)
        .collect()
}

fn entry(seq: u64, tokens: &[u32], start_pos: usize, bs: usize, sample: bool) -> StepEntry {
    StepEntry {
        seq,
        tokens: tokens.to_vec(),
        start_pos,
        blocks: blocks(seq, bs),
        sample: sample.then(SamplingParams::default),
        draft: 0,
        propose: 0,
        context: Vec::new(),
    }
}

/// Greedy decoding of one sequence alone, the prompt fed at once: the logits of every step.
fn run_alone(engine: &mut Engine, seq: u64, prompt: &[u32], steps: usize) -> Vec<Vec<f32>> {
    let bs = engine.kv().block_size();
    let mut all = Vec::new();
    let mut pos = 0;
    let mut input = prompt.to_vec();
    for _ in 0..steps {
        let step = Step {
            entries: vec![entry(seq, &input, pos, bs, true)],
        };
        let logits = engine.logits(&step).unwrap().remove(0);
        pos += input.len();
        input = vec![argmax(&logits)];
        all.push(logits);
    }
    all
}

/// The logits before each token of `reference` when the prompt and the reference's earlier
/// tokens are the context, in one step: the reference's tokens (but its last) go in as
/// speculative proposals after the prompt, so the step gives the logits after the prompt and
/// after each of them, as one step per token would (bit for bit on Wick's CPU kernels, whose
/// invariance `batching_and_chunking_do_not_change_logits` checks).
fn teacher_forced_logits(
    engine: &mut Engine,
    seq: u64,
    prompt: &[u32],
    reference: &[u32],
) -> Vec<Vec<f32>> {
    let bs = engine.kv().block_size();
    let mut tokens = prompt.to_vec();
    tokens.extend(&reference[..reference.len() - 1]);
    let step = Step {
        entries: vec![StepEntry {
            draft: reference.len() - 1,
            ..entry(seq, &tokens, 0, bs, true)
        }],
    };
    let logits = engine.logits(&step).unwrap();
    assert_eq!(logits.len(), reference.len());
    logits
}

/// Ids and round trips against llama.cpp are checked for every catalogue model in
/// `tests/tokenizers.rs`; this pins SmolLM2's control tokens.
#[test]
fn tokenizer_has_smollm2s_control_tokens() {
    let tok = load_tokenizer(&model_path()).unwrap();
    assert_eq!(tok.eos_token_ids, vec![2]);
    assert_eq!(tok.special_tokens.get("<|im_start|>"), Some(&1));
}

#[test]
fn teacher_forced_logits_agree_with_llama_cpp() {
    teacher_forced(KvDType::F32, false);
}

#[test]
fn teacher_forced_logits_agree_with_llama_cpp_with_an_f16_kv_cache() {
    teacher_forced(KvDType::F16, false);
}

/// The candle-ops path that CUDA runs, here on the CPU.
#[test]
fn teacher_forced_logits_agree_with_llama_cpp_on_the_device_generic_path() {
    teacher_forced(KvDType::F32, true);
    teacher_forced(KvDType::F16, true);
}

fn teacher_forced(kv_dtype: KvDType, generic: bool) {
    let cfg = BackendConfig {
        kv_dtype,
        generic,
        ..config(16)
    };
    let (mut engine, _) = load_engine(&cfg).unwrap();
    assert_eq!(
        engine.model().path_name(),
        if generic { "generic" } else { "cpu-kernels" }
    );
    for (seq, case) in fixture(&chat_fixture())["cases"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let seq = seq as u64;
        let prompt = case_prompt(case);
        let reference = ids(&case["ids"]);
        let mut worst = 0f32;
        let logits = teacher_forced_logits(&mut engine, seq, &prompt, &reference);
        for (k, (logits, &want)) in logits.iter().zip(&reference).enumerate() {
            let best = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let gap = best - logits[want as usize];
            worst = worst.max(gap);
            assert!(
                gap <= 0.5,
                "{}: at output token {k} the reference token {want} is {gap} below our best",
                case["prompt"]
            );
        }
        // Free-running greedy decoding, for the record (on Wick's CPU kernels only: the
        // generic path's dense f32 matmuls make it the slowest part of the suite).
        let free = if generic {
            "not run on the generic path".to_string()
        } else {
            let free = run_alone(&mut engine, seq, &prompt, reference.len());
            let same = free
                .iter()
                .zip(&reference)
                .take_while(|(l, &r)| argmax(l) == r)
                .count();
            format!("reproduces {same} of {} tokens", reference.len())
        };
        let shown: String = case["prompt"].as_str().unwrap().chars().take(60).collect();
        eprintln!(
            "{} path, {kv_dtype} KV, {shown:?} ({} prompt tokens): largest gap {worst:.3}; free-running greedy {free}",
            engine.model().path_name(),
            prompt.len(),
        );
    }
}

#[test]
fn batching_and_chunking_do_not_change_logits() {
    let (mut engine, info) = load_engine(&config(16)).unwrap();
    let bs = info.kv_block_size;
    let prompts: Vec<Vec<u32>> = fixture(&chat_fixture())["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(case_prompt)
        .collect();
    const STEPS: usize = 8;
    let alone: Vec<Vec<Vec<f32>>> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| run_alone(&mut engine, i as u64, p, STEPS))
        .collect();

    // All together: sequence i starts at step 6*i and prefills in chunks of 4 + i tokens, so
    // prefill chunks of one sequence share steps with decode tokens of another.
    struct Seq {
        prompt: Vec<u32>,
        pos: usize,
        next: Vec<u32>,
        logits: Vec<Vec<f32>>,
    }
    let mut seqs: Vec<Seq> = prompts
        .iter()
        .map(|p| Seq {
            prompt: p.clone(),
            pos: 0,
            next: Vec::new(),
            logits: Vec::new(),
        })
        .collect();
    let mut step_no = 0;
    let mut mixed_steps = 0;
    while seqs.iter().any(|s| s.logits.len() < STEPS) {
        let mut entries = Vec::new();
        for (i, s) in seqs.iter().enumerate() {
            if step_no < 6 * i || s.logits.len() >= STEPS {
                continue;
            }
            let (tokens, sample) = if s.pos < s.prompt.len() {
                let end = (s.pos + 4 + i).min(s.prompt.len());
                (s.prompt[s.pos..end].to_vec(), end == s.prompt.len())
            } else {
                (s.next.clone(), true)
            };
            entries.push(entry(i as u64, &tokens, s.pos, bs, sample));
        }
        let prefills = entries.iter().filter(|e| e.tokens.len() > 1).count();
        if prefills > 0 && prefills < entries.len() {
            mixed_steps += 1;
        }
        let step = Step { entries };
        let mut logits = engine.logits(&step).unwrap().into_iter();
        for e in &step.entries {
            let s = &mut seqs[e.seq as usize];
            s.pos += e.tokens.len();
            if e.sample.is_some() {
                let l = logits.next().unwrap();
                s.next = vec![argmax(&l)];
                s.logits.push(l);
            }
        }
        step_no += 1;
    }
    assert!(mixed_steps > 3, "the schedule must mix prefill and decode");
    for (i, s) in seqs.iter().enumerate() {
        for (k, (a, b)) in alone[i].iter().zip(&s.logits).enumerate() {
            assert!(
                a == b,
                "sequence {i}, step {k}: logits differ between alone and batched"
            );
        }
    }
}

#[test]
fn block_sizes_give_bit_identical_logits() {
    for kv_dtype in [KvDType::F32, KvDType::F16] {
        let mut runs = Vec::new();
        for bs in [1, 16, 64] {
            let cfg = BackendConfig {
                kv_dtype,
                ..config(bs)
            };
            let (mut engine, _) = load_engine(&cfg).unwrap();
            // The fixture's last case: the longest prompt of a base model's fixture.
            let case = fixture(&chat_fixture())["cases"]
                .as_array()
                .unwrap()
                .clone();
            let prompt = case_prompt(case.last().unwrap());
            runs.push(run_alone(&mut engine, 0, &prompt, 6));
        }
        assert!(runs[0] == runs[1], "{kv_dtype}: block size 1 and 16 differ");
        assert!(
            runs[1] == runs[2],
            "{kv_dtype}: block size 16 and 64 differ"
        );
    }
}

#[test]
fn safetensors_export_matches_dequantized_gguf() {
    let dir = std::env::temp_dir().join(format!("wick-export-{}", std::process::id()));
    wick_backend::loader::export_hf_dir(&model_path(), &dir, 2).unwrap();
    assert!(dir.join("model.safetensors.index.json").exists());
    let tok_gguf = load_tokenizer(&model_path()).unwrap();
    let tok_hf = load_tokenizer(&dir).unwrap();
    let (mut gguf, info) = load_engine(&BackendConfig {
        dequantize: true,
        ..config(16)
    })
    .unwrap();
    let (mut hf, hf_info) = load_engine(&BackendConfig {
        model_path: dir.clone(),
        ..config(16)
    })
    .unwrap();
    assert_eq!(tok_hf.chat_template, tok_gguf.chat_template);
    assert_eq!(tok_hf.eos_token_ids, tok_gguf.eos_token_ids);
    assert_eq!(
        (info.dtype.as_str(), hf_info.dtype.as_str()),
        ("f32", "f32")
    );
    let case = &fixture("chat-ref.json")["cases"][2];
    let text = "<|im_start|>user\nWhat is 12 plus 30?<|im_end|>\n";
    let encode = |t: &wick_backend::tokenizer::TokenizerInfo| {
        t.tokenizer.encode(text, false).unwrap().get_ids().to_vec()
    };
    assert_eq!(encode(&tok_hf), encode(&tok_gguf));
    let prompt = case_prompt(case);
    let a = run_alone(&mut gguf, 0, &prompt, 6);
    let b = run_alone(&mut hf, 0, &prompt, 6);
    for (k, (x, y)) in a.iter().zip(&b).enumerate() {
        let diff = x
            .iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-3, "step {k}: logits differ by {diff}");
        assert_eq!(argmax(x), argmax(y), "step {k}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn worker_reports_bad_steps_as_typed_errors_and_keeps_serving() {
    let (backend, info) = Backend::spawn(config(16)).unwrap();
    let bad = Step {
        entries: vec![StepEntry {
            seq: 2,
            tokens: vec![1, 2, 3],
            start_pos: 0,
            blocks: vec![info.num_kv_blocks as u32 + 5],
            sample: Some(SamplingParams::default()),
            draft: 0,
            propose: 0,
            context: Vec::new(),
        }],
    };
    let err = backend.step(bad).unwrap_err();
    assert!(
        matches!(err, wick_backend::BackendError::BlockOutOfRange { .. }),
        "{err}"
    );
    let ok = Step {
        entries: vec![entry(2, &[1, 2, 3], 0, info.kv_block_size, true)],
    };
    assert_eq!(backend.step(ok).unwrap().generations.len(), 1);
    backend.release(2).unwrap();
    backend.shutdown();
    assert!(matches!(
        backend.step(Step::default()),
        Err(wick_backend::BackendError::WorkerGone)
    ));
}

/// Speculative entries: proposals verified in one pass give exactly the generations (tokens,
/// log-probabilities, top alternatives) of decoding one token per step, greedy and seeded,
/// whether the proposals are right, partly right or wrong; and the step never gives more than
/// the accepted proposals and one token.
#[test]
fn speculative_entries_give_the_generations_of_plain_decoding() {
    let (mut engine, info) = load_engine(&config(16)).unwrap();
    let bs = info.kv_block_size;
    let prompt = case_prompt(&fixture(&chat_fixture())["cases"][0]);
    const STEPS: usize = 14;
    for (seq, temperature) in [(0u64, 0.0f32), (2, 0.8)] {
        let params = SamplingParams {
            temperature,
            seed: 7,
            top_logprobs: 2,
            ..SamplingParams::default()
        };
        let with = |tokens: &[u32], start_pos: usize, draft: usize, seq: u64| StepEntry {
            sample: Some(params.clone()),
            draft,
            ..entry(seq, tokens, start_pos, bs, true)
        };
        // One token per step.
        let mut plain = Vec::new();
        let (mut input, mut pos) = (prompt.clone(), 0);
        while plain.len() < STEPS {
            let step = Step {
                entries: vec![with(&input, pos, 0, seq)],
            };
            let g = engine.step(&step).unwrap().generations.remove(0);
            pos += input.len();
            input = vec![g.token];
            plain.push(g);
        }
        let truth: Vec<u32> = plain.iter().map(|g| g.token).collect();
        // Speculative: prompt, then proposals of 3 to 5 tokens, every third one wrong.
        let other = seq + 1;
        let step = Step {
            entries: vec![with(&prompt, 0, 0, other)],
        };
        let mut got = engine.step(&step).unwrap().generations;
        let mut verify_steps = 0;
        while got.len() < STEPS {
            let done = got.len();
            let k = (3 + verify_steps % 3).min(STEPS - done);
            let mut proposals: Vec<u32> = truth[done..(done + k).min(STEPS)].to_vec();
            if verify_steps % 3 == 1 {
                let wrong = proposals.len() / 2;
                proposals[wrong] = (proposals[wrong] + 1) % info.vocab_size as u32;
            }
            let mut tokens = vec![got[done - 1].token];
            tokens.extend(&proposals);
            let start = prompt.len() + done - 1;
            let step = Step {
                entries: vec![with(&tokens, start, proposals.len(), other)],
            };
            let out = engine.step(&step).unwrap().generations;
            assert!(!out.is_empty() && out.len() <= proposals.len() + 1);
            let accepted = out.len() - 1;
            assert!(proposals[..accepted] == truth[done..done + accepted]);
            got.extend(out);
            verify_steps += 1;
        }
        got.truncate(STEPS);
        for (i, (a, b)) in plain.iter().zip(&got).enumerate() {
            assert_eq!(a.token, b.token, "temperature {temperature}, token {i}");
            assert_eq!(a.logprob.to_bits(), b.logprob.to_bits(), "logprob {i}");
            assert_eq!(a.top_logprobs, b.top_logprobs, "top {i}");
        }
        assert!(verify_steps < STEPS - 1, "{verify_steps} verifying steps");
    }
}

/// A step's samplings run across the compute team (those without a grammar or proposals): each
/// entry still gets the generation it gets alone, whatever its parameters, seed and history.
#[test]
fn a_batch_sampled_on_a_team_gives_each_entry_its_generation_alone() {
    let params = |i: u64| SamplingParams {
        temperature: [0.0, 0.7, 1.3][i as usize % 3],
        top_k: [0, 40, 0][i as usize % 3],
        repetition_penalty: [1.0, 1.0, 1.2][i as usize % 3],
        seed: 11 + i,
        top_logprobs: 2,
        ..SamplingParams::default()
    };
    let prompts: Vec<Vec<u32>> = (0..5u32)
        .map(|i| (0..10 + 3 * i).map(|j| 100 + 37 * j + i).collect())
        .collect();
    let run = |batched: bool| {
        wick_backend::team::install(2, || {
            let (mut engine, _) = load_engine(&config(16)).unwrap();
            let bs = engine.kv().block_size();
            let mut last: Vec<(u32, usize)> = Vec::new();
            let mut out = Vec::new();
            for (s, p) in prompts.iter().enumerate() {
                let step = Step {
                    entries: vec![StepEntry {
                        sample: Some(params(s as u64)),
                        ..entry(s as u64, p, 0, bs, true)
                    }],
                };
                let g = engine.step(&step).unwrap().generations.remove(0);
                last.push((g.token, p.len()));
                out.push(g);
            }
            for _ in 0..4 {
                let entries: Vec<StepEntry> = (0..prompts.len())
                    .map(|s| StepEntry {
                        sample: Some(params(s as u64)),
                        ..entry(s as u64, &[last[s].0], last[s].1, bs, true)
                    })
                    .collect();
                let gens = if batched {
                    engine.step(&Step { entries }).unwrap().generations
                } else {
                    (entries.into_iter())
                        .map(|e| engine.step(&Step { entries: vec![e] }).unwrap())
                        .map(|mut o| o.generations.remove(0))
                        .collect()
                };
                for (s, g) in gens.into_iter().enumerate() {
                    last[s] = (g.token, last[s].1 + 1);
                    out.push(g);
                }
            }
            out
        })
        .unwrap()
    };
    assert_eq!(run(true), run(false));
}
