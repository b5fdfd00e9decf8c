//! Hugging Face directory loading on a tiny model this test writes itself (random weights, a
//! byte-level BPE tokenizer built in code), checked against a naive reference forward pass written
//! here independently of the engine (plain loops, whole sequence, no cache). And the acceptance
//! rule of draft-model speculation with sampling: over many seeds, the first token verified after
//! a tiny draft model's proposals follows the target's distribution (a chi-square test).

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};
use wick_backend::{load_engine, BackendConfig, Engine, KvDType};
use wick_proto::{SamplingParams, Step, StepEntry};

const HIDDEN: usize = 32;
const INTER: usize = 48;
const LAYERS: usize = 2;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 8;
const THETA: f32 = 10_000.0;
const EPS: f32 = 1e-5;

/// Deterministic pseudo-random weights in [-0.5, 0.5).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }
}

fn tokenizer() -> Tokenizer {
    let mut vocab: Vec<String> = ByteLevel::alphabet()
        .into_iter()
        .map(String::from)
        .collect();
    vocab.sort();
    let merges = vec![
        ("h".to_string(), "e".to_string()),
        ("l".to_string(), "l".to_string()),
        ("he".to_string(), "ll".to_string()),
        ("Ġ".to_string(), "w".to_string()),
    ];
    for (a, b) in &merges {
        vocab.push(format!("{a}{b}"));
    }
    let vocab: tokenizers::models::bpe::Vocab = vocab
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .unwrap();
    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, false, true)));
    tok.with_decoder(Some(ByteLevel::default()));
    tok.add_special_tokens(vec![
        AddedToken::from("<s>", true),
        AddedToken::from("</s>", true),
    ])
    .unwrap();
    tok
}

/// Named tensors: shape and row-major data.
struct Weights(HashMap<String, (Vec<usize>, Vec<f32>)>);

impl Weights {
    fn random(vocab: usize, bias: bool, seed: u64) -> Self {
        let mut rng = Lcg(seed);
        let mut w = HashMap::new();
        let mut put = |name: String, shape: Vec<usize>, scale: f32| {
            let data = rng.vec(shape.iter().product(), scale);
            w.insert(name, (shape, data));
        };
        let (q, kv) = (HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM);
        put("model.embed_tokens.weight".into(), vec![vocab, HIDDEN], 2.0);
        put("lm_head.weight".into(), vec![vocab, HIDDEN], 1.0);
        for l in 0..LAYERS {
            let p = |s: &str| format!("model.layers.{l}.{s}");
            put(p("self_attn.q_proj.weight"), vec![q, HIDDEN], 0.6);
            put(p("self_attn.k_proj.weight"), vec![kv, HIDDEN], 0.6);
            put(p("self_attn.v_proj.weight"), vec![kv, HIDDEN], 0.6);
            put(p("self_attn.o_proj.weight"), vec![HIDDEN, q], 0.6);
            put(p("mlp.gate_proj.weight"), vec![INTER, HIDDEN], 0.6);
            put(p("mlp.up_proj.weight"), vec![INTER, HIDDEN], 0.6);
            put(p("mlp.down_proj.weight"), vec![HIDDEN, INTER], 0.6);
            if bias {
                put(p("self_attn.q_proj.bias"), vec![q], 0.5);
                put(p("self_attn.k_proj.bias"), vec![kv], 0.5);
                put(p("self_attn.v_proj.bias"), vec![kv], 0.5);
            }
        }
        let norm: Vec<f32> = (0..HIDDEN).map(|i| 1.0 + 0.01 * i as f32).collect();
        for l in 0..LAYERS {
            for n in ["input_layernorm", "post_attention_layernorm"] {
                let name = format!("model.layers.{l}.{n}.weight");
                w.insert(name, (vec![HIDDEN], norm.clone()));
            }
        }
        w.insert(
            "model.norm.weight".into(),
            (vec![HIDDEN], vec![0.9; HIDDEN]),
        );
        Weights(w)
    }

    fn get(&self, name: &str) -> &[f32] {
        &self.0[name].1
    }

    fn save(&self, path: &Path, dtype: DType) {
        let tensors: HashMap<String, Tensor> = self
            .0
            .iter()
            .map(|(name, (shape, data))| {
                let t = Tensor::from_vec(data.clone(), shape.clone(), &Device::Cpu)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                (name.clone(), t)
            })
            .collect();
        candle_core::safetensors::save(&tensors, path).unwrap();
    }
}

fn write_model(dir: &Path, arch: &str, bias: bool, dtype: DType) -> (Weights, Tokenizer) {
    std::fs::create_dir_all(dir).unwrap();
    let tok = tokenizer();
    let vocab = tok.get_vocab_size(true);
    tok.save(dir.join("tokenizer.json"), false).unwrap();
    let config = serde_json::json!({
        "architectures": [arch],
        "hidden_size": HIDDEN, "intermediate_size": INTER, "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
        "rope_theta": THETA, "rms_norm_eps": EPS, "max_position_embeddings": 128,
        "vocab_size": vocab, "tie_word_embeddings": false,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let tok_cfg = serde_json::json!({
        "bos_token": "<s>", "eos_token": "</s>",
        "chat_template": "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}",
    });
    std::fs::write(dir.join("tokenizer_config.json"), tok_cfg.to_string()).unwrap();
    let weights = Weights::random(vocab, bias, 7);
    weights.save(&dir.join("model.safetensors"), dtype);
    (weights, tok)
}

fn matvec(w: &[f32], x: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let k = x.len();
    (0..w.len() / k)
        .map(|r| {
            let dot: f32 = (0..k).map(|i| w[r * k + i] * x[i]).sum();
            dot + bias.map_or(0.0, |b| b[r])
        })
        .collect()
}

fn rms_norm(x: &[f32], w: &[f32]) -> Vec<f32> {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (ms + EPS).sqrt();
    x.iter().zip(w).map(|(v, g)| v * inv * g).collect()
}

/// Hugging Face RoPE: rotate the two halves of each head.
fn rope(x: &mut [f32], heads: usize, pos: usize) {
    let half = HEAD_DIM / 2;
    for h in 0..heads {
        let v = &mut x[h * HEAD_DIM..(h + 1) * HEAD_DIM];
        for i in 0..half {
            let freq = 1.0 / THETA.powf((2 * i) as f32 / HEAD_DIM as f32);
            let (s, c) = (pos as f32 * freq).sin_cos();
            let (a, b) = (v[i], v[i + half]);
            v[i] = a * c - b * s;
            v[i + half] = b * c + a * s;
        }
    }
}

/// Logits at the last position of `tokens`, computed naively over the whole sequence.
fn reference_logits(w: &Weights, tokens: &[u32], bias: bool) -> Vec<f32> {
    let mut xs: Vec<Vec<f32>> = tokens
        .iter()
        .map(|&t| w.get("model.embed_tokens.weight")[t as usize * HIDDEN..][..HIDDEN].to_vec())
        .collect();
    for l in 0..LAYERS {
        let p = |s: &str| format!("model.layers.{l}.{s}");
        let b = |s: &str| bias.then(|| w.get(&p(s)));
        let (mut qs, mut ks, mut vs) = (Vec::new(), Vec::new(), Vec::new());
        for (pos, x) in xs.iter().enumerate() {
            let xn = rms_norm(x, w.get(&p("input_layernorm.weight")));
            let mut q = matvec(
                w.get(&p("self_attn.q_proj.weight")),
                &xn,
                b("self_attn.q_proj.bias"),
            );
            let mut k = matvec(
                w.get(&p("self_attn.k_proj.weight")),
                &xn,
                b("self_attn.k_proj.bias"),
            );
            rope(&mut q, HEADS, pos);
            rope(&mut k, KV_HEADS, pos);
            qs.push(q);
            ks.push(k);
            vs.push(matvec(
                w.get(&p("self_attn.v_proj.weight")),
                &xn,
                b("self_attn.v_proj.bias"),
            ));
        }
        for (pos, x) in xs.iter_mut().enumerate() {
            let mut attn = vec![0f32; HEADS * HEAD_DIM];
            for h in 0..HEADS {
                let kvh = h / (HEADS / KV_HEADS);
                let q = &qs[pos][h * HEAD_DIM..(h + 1) * HEAD_DIM];
                let scores: Vec<f32> = (0..=pos)
                    .map(|j| {
                        let k = &ks[j][kvh * HEAD_DIM..(kvh + 1) * HEAD_DIM];
                        q.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() / (HEAD_DIM as f32).sqrt()
                    })
                    .collect();
                let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let exps: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
                let z: f32 = exps.iter().sum();
                for (j, e) in exps.iter().enumerate() {
                    for d in 0..HEAD_DIM {
                        attn[h * HEAD_DIM + d] += e / z * vs[j][kvh * HEAD_DIM + d];
                    }
                }
            }
            let o = matvec(w.get(&p("self_attn.o_proj.weight")), &attn, None);
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            let xn = rms_norm(x, w.get(&p("post_attention_layernorm.weight")));
            let g = matvec(w.get(&p("mlp.gate_proj.weight")), &xn, None);
            let u = matvec(w.get(&p("mlp.up_proj.weight")), &xn, None);
            let act: Vec<f32> = g
                .iter()
                .zip(&u)
                .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                .collect();
            let d = matvec(w.get(&p("mlp.down_proj.weight")), &act, None);
            x.iter_mut().zip(&d).for_each(|(a, b)| *a += b);
        }
    }
    let last = rms_norm(xs.last().unwrap(), w.get("model.norm.weight"));
    matvec(w.get("lm_head.weight"), &last, None)
}

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("wick-tiny-{name}-{}", std::process::id()))
}

/// An engine with an f32 KV cache, so that its logits are the f32 reference forward's up to
/// the order of summation.
fn engine(dir: &Path) -> Engine {
    let cfg = BackendConfig {
        kv_cache_bytes: 1 << 20,
        block_size: 4,
        kv_dtype: KvDType::F32,
        ..BackendConfig::new(dir)
    };
    load_engine(&cfg).unwrap().0
}

/// Engine logits after each prefix of `tokens`: first the whole prompt, then one token at a time.
fn engine_logits(engine: &mut Engine, prompt: &[u32], more: &[u32]) -> Vec<Vec<f32>> {
    let blocks: Vec<u32> = (0..16).collect();
    let mut out = Vec::new();
    let mut pos = 0;
    let mut input = prompt.to_vec();
    for k in 0..=more.len() {
        let step = Step {
            entries: vec![StepEntry {
                seq: 0,
                tokens: input.clone(),
                start_pos: pos,
                blocks: blocks.clone(),
                sample: Some(SamplingParams::default()),
                draft: 0,
                propose: 0,
                context: Vec::new(),
            }],
        };
        out.push(engine.logits(&step).unwrap().remove(0));
        pos += input.len();
        if k < more.len() {
            input = vec![more[k]];
        }
    }
    out
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn check_against_reference(arch: &str, bias: bool) {
    let dir = tmp(arch);
    let (weights, tok) = write_model(&dir, arch, bias, DType::F32);
    let mut engine = engine(&dir);
    let prompt = tok.encode("hello world", false).unwrap().get_ids().to_vec();
    let more = [5u32, 77, 130];
    let got = engine_logits(&mut engine, &prompt, &more);
    for (k, logits) in got.iter().enumerate() {
        let mut seq = prompt.clone();
        seq.extend(&more[..k]);
        let want = reference_logits(&weights, &seq, bias);
        let diff = max_diff(logits, &want);
        assert!(diff < 1e-3, "{arch} step {k}: max difference {diff}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn llama_directory_matches_the_reference_forward() {
    check_against_reference("LlamaForCausalLM", false);
}

#[test]
fn qwen2_directory_with_qkv_biases_matches_the_reference_forward() {
    check_against_reference("Qwen2ForCausalLM", true);
}

#[test]
fn bf16_weights_load_and_stay_close_to_f32() {
    let dir32 = tmp("f32");
    let dir16 = tmp("bf16");
    let (_, tok) = write_model(&dir32, "LlamaForCausalLM", false, DType::F32);
    write_model(&dir16, "LlamaForCausalLM", false, DType::BF16);
    let (e16, info) = load_engine(&BackendConfig {
        kv_cache_bytes: 1 << 20,
        block_size: 4,
        ..BackendConfig::new(&dir16)
    })
    .unwrap();
    assert_eq!(info.dtype, "bf16");
    let mut e16 = e16;
    let prompt = tok.encode("hello", false).unwrap().get_ids().to_vec();
    let a = engine_logits(&mut engine(&dir32), &prompt, &[])[0].clone();
    let b = engine_logits(&mut e16, &prompt, &[])[0].clone();
    let scale = a.iter().map(|x| x.abs()).fold(0.0, f32::max);
    assert!(max_diff(&a, &b) < 0.05 * scale, "bf16 drifted too far");
    std::fs::remove_dir_all(&dir32).unwrap();
    std::fs::remove_dir_all(&dir16).unwrap();
}

#[test]
fn tokenizer_config_supplies_template_and_special_tokens() {
    let dir = tmp("tokcfg");
    write_model(&dir, "LlamaForCausalLM", false, DType::F32);
    let info = wick_backend::tokenizer::load_tokenizer(&dir).unwrap();
    let eos = info.tokenizer.token_to_id("</s>").unwrap();
    assert_eq!(info.eos_token_ids, vec![eos]);
    assert_eq!(info.bos_token().as_deref(), Some("<s>"));
    assert!(info.chat_template.unwrap().contains("m['role']"));
    let ids = info
        .tokenizer
        .encode("<s>hello", false)
        .unwrap()
        .get_ids()
        .to_vec();
    assert_eq!(ids[0], info.bos_token_id.unwrap());
    assert_eq!(info.tokenizer.decode(&ids, false).unwrap(), "<s>hello");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_block_tables_tokens_and_contexts_are_typed_errors_and_leave_the_engine_usable() {
    use wick_backend::BackendError;
    let dir = tmp("errors");
    let (_, tok) = write_model(&dir, "LlamaForCausalLM", false, DType::F32);
    let mut engine = engine(&dir);
    let nb = engine.kv().num_blocks() as u32;
    let entry = |tokens: Vec<u32>, blocks: Vec<u32>| Step {
        entries: vec![StepEntry {
            seq: 3,
            tokens,
            start_pos: 0,
            blocks,
            sample: Some(SamplingParams::default()),
            draft: 0,
            propose: 0,
            context: Vec::new(),
        }],
    };
    let err = engine.step(&entry(vec![1, 2], vec![nb])).unwrap_err();
    assert!(
        matches!(err, BackendError::BlockOutOfRange { block, .. } if block == nb),
        "{err}"
    );
    let err = engine.step(&entry(vec![1; 9], vec![0, 1])).unwrap_err();
    assert!(
        matches!(
            err,
            BackendError::BlockTableTooShort {
                needed: 9,
                covered: 8,
                ..
            }
        ),
        "{err}"
    );
    let err = engine.step(&entry(vec![100_000], vec![0])).unwrap_err();
    assert!(matches!(err, BackendError::TokenOutOfRange { .. }), "{err}");
    let err = engine.step(&entry(vec![], vec![0])).unwrap_err();
    assert!(matches!(err, BackendError::EmptyEntry { .. }), "{err}");
    // A context must be the tokens before `start_pos`, all of them, in the vocabulary.
    let mut bad = entry(vec![1], vec![0, 1]);
    bad.entries[0].start_pos = 2;
    bad.entries[0].context = vec![1];
    let err = engine.step(&bad).unwrap_err();
    assert!(
        matches!(
            err,
            BackendError::BadContext {
                context: 1,
                start_pos: 2,
                ..
            }
        ),
        "{err}"
    );
    bad.entries[0].context = vec![1, 100_000];
    let err = engine.step(&bad).unwrap_err();
    assert!(
        matches!(err, BackendError::TokenOutOfRange { token: 100_000, .. }),
        "{err}"
    );
    let prompt = tok.encode("hello", false).unwrap().get_ids().to_vec();
    let out = engine.step(&entry(prompt, vec![0, 1])).unwrap();
    assert_eq!(out.generations.len(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Pearson's chi-square of `counts` against probabilities `p` (bins expecting fewer than 5
/// samples lumped into one), and its degrees of freedom.
fn chi_square(counts: &[usize], p: &[f64]) -> (f64, usize) {
    let n: usize = counts.iter().sum();
    let (mut chi, mut bins, mut rest) = (0.0, 0, (0.0, 0.0));
    for (&c, &p) in counts.iter().zip(p) {
        let expected = p * n as f64;
        if expected >= 5.0 {
            chi += (c as f64 - expected).powi(2) / expected;
            bins += 1;
        } else {
            rest = (rest.0 + c as f64, rest.1 + expected);
        }
    }
    if rest.1 > 0.0 {
        chi += (rest.0 - rest.1).powi(2) / rest.1;
        bins += 1;
    }
    (chi, bins - 1)
}

/// The chi-square value a correct sampler exceeds with probability 0.001 (Wilson-Hilferty).
fn chi_square_critical(df: usize) -> f64 {
    let (df, z) = (df as f64, 3.09);
    let a = 2.0 / (9.0 * df);
    df * (1.0 - a + z * a.sqrt()).powi(3)
}

fn softmax(logits: &[f32], temperature: f32) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f64> = (logits.iter())
        .map(|&l| (((l - max) / temperature) as f64).exp())
        .collect();
    let z: f64 = e.iter().sum();
    e.iter().map(|x| x / z).collect()
}

#[test]
fn sampled_tokens_verified_after_a_draft_models_proposals_follow_the_targets_distribution() {
    let (dir, draft) = (tmp("chi-target"), tmp("chi-draft"));
    let (_, tok) = write_model(&dir, "LlamaForCausalLM", false, DType::F32);
    // The draft: the same model in bf16, close to the target but not the same.
    write_model(&draft, "LlamaForCausalLM", false, DType::BF16);
    let cfg = BackendConfig {
        kv_cache_bytes: 1 << 20,
        block_size: 4,
        draft_model: Some(draft.clone()),
        ..BackendConfig::new(&dir)
    };
    let mut engine = load_engine(&cfg).unwrap().0;
    let prompt = tok.encode("hello", false).unwrap().get_ids().to_vec();
    const TEMPERATURE: f32 = 0.5;
    let params = |seed| SamplingParams {
        temperature: TEMPERATURE,
        seed,
        ..SamplingParams::default()
    };
    let entry = |seq: u64, propose| StepEntry {
        seq,
        tokens: prompt.clone(),
        start_pos: 0,
        blocks: (0..4).collect(),
        sample: Some(params(seq)),
        draft: 0,
        propose,
        context: Vec::new(),
    };
    let logits = engine
        .logits(&Step {
            entries: vec![entry(0, 0)],
        })
        .unwrap()
        .remove(0);
    let target = softmax(&logits, TEMPERATURE);
    const SEEDS: u64 = 4000;
    let mut counts = vec![0; target.len()];
    let mut accepted = 0;
    for seed in 1..=SEEDS {
        let out = engine
            .step(&Step {
                entries: vec![entry(seed, 3)],
            })
            .unwrap();
        counts[out.generations[0].token as usize] += 1;
        accepted += out.generations.len() - 1;
        engine.release(seed);
    }
    let (chi, df) = chi_square(&counts, &target);
    let critical = chi_square_critical(df);
    println!("chi-square {chi:.1} on {df} degrees of freedom (critical {critical:.1}); {accepted} proposals accepted");
    assert!(chi < critical, "{chi} >= {critical}");
    assert!(
        accepted > 0,
        "no proposal was accepted: the rule was not exercised"
    );
    // The test can fail: the same samples are far from a distribution only a little off.
    let off = softmax(&logits, TEMPERATURE * 1.15);
    let (chi_off, df_off) = chi_square(&counts, &off);
    assert!(chi_off > chi_square_critical(df_off), "{chi_off}");
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&draft).unwrap();
}
