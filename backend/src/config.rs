//! Architecture hyper-parameters of a llama-family model, read from GGUF metadata or from a
//! Hugging Face `config.json`, and checked once into [`ModelConfig`].
//!
//! Invariants after construction: heads divide evenly into KV groups, `head_dim * heads` is the
//! attention width, and RoPE rotates the whole head (partial rotary embeddings are rejected).
//! Gemma 3 (GGUF only) adds [`LocalAttention`]: most layers attend within a sliding window with
//! their own RoPE base, every `global_every`-th layer sees the whole context.

use crate::error::LoadError;
use candle_core::quantized::gguf_file;
use serde_json::Value as Json;

/// The llama-family variants Wick runs. They share one forward pass; the differences are flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    /// Llama with a sliding attention window (handled by capping the context at the window).
    Mistral,
    /// Llama with biases on the Q, K and V projections.
    Qwen2,
    /// Gemma 3: embeddings scaled by `sqrt(hidden)`, RMSNorm on each head's queries and keys,
    /// norms after attention and after the feed-forward too, a GELU-gated feed-forward, and
    /// sliding-window layers interleaved with global ones ([`LocalAttention`]). GGUF only: its
    /// converter stores the norms with Gemma's `1 + w` already applied.
    Gemma3,
}

impl Architecture {
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Mistral => "mistral",
            Architecture::Qwen2 => "qwen2",
            Architecture::Gemma3 => "gemma3",
        }
    }

    fn parse(name: &str) -> Result<Self, LoadError> {
        match name {
            "llama" | "LlamaForCausalLM" => Ok(Architecture::Llama),
            "mistral" | "MistralForCausalLM" => Ok(Architecture::Mistral),
            "qwen2" | "Qwen2ForCausalLM" => Ok(Architecture::Qwen2),
            "gemma3" => Ok(Architecture::Gemma3),
            other => Err(LoadError::UnsupportedArchitecture {
                architecture: other.to_string(),
            }),
        }
    }

    /// What this architecture adds to the shared layer: its one description, read by the loader
    /// (which tensors to expect) and by both forward paths. A new llama-family architecture is
    /// a name in `parse` and an arm here.
    pub fn features(self) -> Features {
        let llama = Features {
            qkv_bias: false,
            head_norms: false,
            post_norms: false,
            embed_scale: false,
            activation: Activation::Silu,
            interleaved_rope: true,
        };
        match self {
            Architecture::Llama | Architecture::Mistral => llama,
            Architecture::Qwen2 => Features {
                qkv_bias: true,
                interleaved_rope: false,
                ..llama
            },
            Architecture::Gemma3 => Features {
                head_norms: true,
                post_norms: true,
                embed_scale: true,
                activation: Activation::GeluTanh,
                interleaved_rope: false,
                ..llama
            },
        }
    }
}

/// The gate's activation in the feed-forward (`act(gate) * up`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// GELU with the tanh approximation (Gemma).
    GeluTanh,
}

/// The parts an architecture adds to the llama layer (embedding, RMSNorm, attention with RoPE,
/// RMSNorm, gated feed-forward).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// Biases on the Q, K and V projections (Qwen 2).
    pub qkv_bias: bool,
    /// RMSNorm on each head's queries and keys, before RoPE (Gemma 3).
    pub head_norms: bool,
    /// RMSNorm on the attention output and on the feed-forward output, before each residual add
    /// (Gemma 3).
    pub post_norms: bool,
    /// Embeddings scaled by `sqrt(hidden)` (Gemma).
    pub embed_scale: bool,
    pub activation: Activation,
    /// llama.cpp stores the Q and K rows interleaved for its "normal" RoPE (Llama, Mistral);
    /// they are put back in half-split order at load. Qwen 2 and Gemma 3 are half-split already.
    pub interleaved_rope: bool,
}

/// Sliding-window attention on all layers but every `global_every`-th (Gemma 3: 5 of each 6).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LocalAttention {
    /// Keys visible to a query at position `p`: positions `p + 1 - window ..= p`.
    pub window: usize,
    pub global_every: usize,
    /// RoPE base of the windowed layers.
    pub rope_theta: f32,
}

/// Checked hyper-parameters of one model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub num_layers: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f32,
    pub rms_eps: f64,
    /// Factor on the query-key dot products (`1 / sqrt(head_dim)` unless the model says else).
    pub attention_scale: f32,
    pub local_attention: Option<LocalAttention>,
    /// Longest sequence the model was trained for (capped by a sliding window, if any).
    pub max_context: usize,
    pub vocab_size: usize,
}

impl ModelConfig {
    /// Reads the `{arch}.*` keys of a GGUF file.
    pub fn from_gguf(ct: &gguf_file::Content, vocab_len: usize) -> Result<Self, LoadError> {
        let arch_name = gguf_str(ct, "general.architecture")?;
        let architecture = Architecture::parse(&arch_name)?;
        refuse_unimplemented(ct, &arch_name)?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let num_heads = gguf_usize(ct, &key("attention.head_count"))?;
        let hidden_size = gguf_usize(ct, &key("embedding_length"))?;
        let head_dim = match gguf_usize(ct, &key("attention.key_length")) {
            Ok(d) => d,
            Err(_) => hidden_size / num_heads.max(1),
        };
        let rope_dim = gguf_usize(ct, &key("rope.dimension_count")).unwrap_or(head_dim);
        let mut max_context = gguf_usize(ct, &key("context_length"))?;
        let window = gguf_usize(ct, &key("attention.sliding_window")).ok();
        let mut local_attention = None;
        if architecture == Architecture::Gemma3 {
            // llama.cpp's Gemma 3 constants: 5 windowed layers then a global one, base 10,000.
            local_attention = Some(LocalAttention {
                window: window.ok_or_else(|| LoadError::MissingKey {
                    key: key("attention.sliding_window"),
                })?,
                global_every: gguf_usize(ct, &key("attention.sliding_window_pattern")).unwrap_or(6),
                rope_theta: 10_000.0,
            });
        } else if let Some(window) = window {
            max_context = max_context.min(window);
        }
        let cfg = ModelConfig {
            architecture,
            num_layers: gguf_usize(ct, &key("block_count"))?,
            hidden_size,
            intermediate_size: gguf_usize(ct, &key("feed_forward_length"))?,
            num_heads,
            num_kv_heads: gguf_usize(ct, &key("attention.head_count_kv")).unwrap_or(num_heads),
            head_dim,
            rope_theta: gguf_f32(ct, &key("rope.freq_base")).unwrap_or(10_000.0),
            rms_eps: gguf_f32(ct, &key("attention.layer_norm_rms_epsilon"))? as f64,
            // llama.cpp's rule: Gemma 3 27B (62 layers) scales by its hidden size per head.
            attention_scale: match gguf_usize(ct, &key("block_count"))? {
                62 if architecture == Architecture::Gemma3 => {
                    1.0 / ((hidden_size / num_heads.max(1)) as f32).sqrt()
                }
                _ => 1.0 / (head_dim as f32).sqrt(),
            },
            local_attention,
            max_context,
            vocab_size: gguf_usize(ct, &key("vocab_size")).unwrap_or(vocab_len),
        };
        cfg.check(rope_dim)?;
        Ok(cfg)
    }

    /// Reads a Hugging Face `config.json`.
    pub fn from_hf_json(json: &Json) -> Result<Self, LoadError> {
        let arch_name = json
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(Json::as_str)
            .or_else(|| json.get("model_type").and_then(Json::as_str))
            .ok_or_else(|| LoadError::MissingKey {
                key: "architectures".into(),
            })?;
        let architecture = Architecture::parse(arch_name)?;
        if let Some(scaling) = json.get("rope_scaling").filter(|v| !v.is_null()) {
            return Err(LoadError::invalid(
                "rope_scaling",
                format!("RoPE scaling is not supported yet (found {scaling})"),
            ));
        }
        let num_heads = json_usize(json, "num_attention_heads")?;
        let hidden_size = json_usize(json, "hidden_size")?;
        let head_dim = json_usize(json, "head_dim").unwrap_or(hidden_size / num_heads.max(1));
        let mut max_context = json_usize(json, "max_position_embeddings")?;
        if let Ok(window) = json_usize(json, "sliding_window") {
            max_context = max_context.min(window);
        }
        let cfg = ModelConfig {
            architecture,
            num_layers: json_usize(json, "num_hidden_layers")?,
            hidden_size,
            intermediate_size: json_usize(json, "intermediate_size")?,
            num_heads,
            num_kv_heads: json_usize(json, "num_key_value_heads").unwrap_or(num_heads),
            head_dim,
            rope_theta: json_f64(json, "rope_theta").unwrap_or(10_000.0) as f32,
            rms_eps: json_f64(json, "rms_norm_eps")?,
            attention_scale: 1.0 / (head_dim as f32).sqrt(),
            local_attention: None,
            max_context,
            vocab_size: json_usize(json, "vocab_size")?,
        };
        cfg.check(head_dim)?;
        Ok(cfg)
    }

    fn check(&self, rope_dim: usize) -> Result<(), LoadError> {
        if self.num_heads == 0
            || self.num_kv_heads == 0
            || !self.num_heads.is_multiple_of(self.num_kv_heads)
        {
            return Err(LoadError::invalid(
                "num_key_value_heads",
                format!(
                    "{} attention heads cannot be grouped over {} KV heads",
                    self.num_heads, self.num_kv_heads
                ),
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return Err(LoadError::invalid(
                "head_dim",
                format!("must be even and positive, got {}", self.head_dim),
            ));
        }
        if rope_dim != self.head_dim {
            return Err(LoadError::invalid(
                "rope.dimension_count",
                format!(
                    "partial rotary embeddings are not supported: rope dimension {rope_dim}, head dimension {}",
                    self.head_dim
                ),
            ));
        }
        if let Some(local) = self.local_attention {
            if local.window == 0 || local.global_every == 0 {
                return Err(LoadError::invalid(
                    "attention.sliding_window",
                    "the window and the layer pattern must be positive",
                ));
            }
        }
        if self.num_layers == 0 || self.hidden_size == 0 || self.vocab_size == 0 {
            return Err(LoadError::invalid(
                "num_hidden_layers",
                "layers, hidden size and vocabulary must all be positive",
            ));
        }
        Ok(())
    }

    /// The sliding window of layer `layer`, if it has one.
    pub fn layer_window(&self, layer: usize) -> Option<usize> {
        let local = self.local_attention?;
        (!(layer + 1).is_multiple_of(local.global_every)).then_some(local.window)
    }

    /// `1 / theta^(2i / head_dim)` for each pair that RoPE rotates.
    pub fn inv_freq(&self, theta: f32) -> Vec<f32> {
        let d = self.head_dim;
        (0..d / 2)
            .map(|i| 1.0 / theta.powf((2 * i) as f32 / d as f32))
            .collect()
    }

    /// Width of the query projection.
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    /// Width of each of the key and value projections.
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
}

/// Refuses a GGUF whose metadata or tensors ask for computation Wick does not implement, so
/// that it fails at load with the key named instead of answering wrongly: RoPE scaling (the
/// `rope.scaling.*` keys other than `none` or a factor of 1, `rope.freq_scale`, Llama 3.1's
/// `rope_freqs` tensor), logit soft-capping, and mixtures of experts.
fn refuse_unimplemented(ct: &gguf_file::Content, arch: &str) -> Result<(), LoadError> {
    let key = |k: &str| format!("{arch}.{k}");
    let unsupported = |k: String, what: String| Err(LoadError::invalid(k, what));
    let scaling = gguf_str(ct, &key("rope.scaling.type")).ok();
    if let Some(kind) = scaling.as_deref().filter(|&k| k != "none") {
        return unsupported(
            key("rope.scaling.type"),
            format!("RoPE scaling `{kind}` is not supported"),
        );
    }
    let scaling_off = scaling.is_some();
    for k in ["rope.scaling.factor", "rope.freq_scale"] {
        if let Ok(f) = gguf_f32(ct, &key(k)) {
            if f != 0.0 && f != 1.0 && !scaling_off {
                return unsupported(key(k), format!("RoPE scaling by {f} is not supported"));
            }
        }
    }
    if ct.tensor_infos.contains_key("rope_freqs.weight") {
        return unsupported(
            "rope_freqs.weight".into(),
            "per-frequency RoPE factors (Llama 3.1 scaling) are not supported".into(),
        );
    }
    for k in ["attn_logit_softcapping", "final_logit_softcapping"] {
        if gguf_f32(ct, &key(k)).is_ok_and(|v| v != 0.0) {
            return unsupported(key(k), "logit soft-capping is not supported".into());
        }
    }
    if gguf_usize(ct, &key("expert_count")).is_ok_and(|n| n > 0) {
        return unsupported(
            key("expert_count"),
            "mixture-of-experts models are not supported".into(),
        );
    }
    Ok(())
}

pub(crate) fn gguf_value<'a>(
    ct: &'a gguf_file::Content,
    key: &str,
) -> Result<&'a gguf_file::Value, LoadError> {
    ct.metadata.get(key).ok_or_else(|| LoadError::MissingKey {
        key: key.to_string(),
    })
}

pub(crate) fn gguf_str(ct: &gguf_file::Content, key: &str) -> Result<String, LoadError> {
    gguf_value(ct, key)?
        .to_string()
        .map(|s| s.to_string())
        .map_err(|e| LoadError::invalid(key, e.to_string()))
}

pub(crate) fn gguf_usize(ct: &gguf_file::Content, key: &str) -> Result<usize, LoadError> {
    use gguf_file::Value::*;
    let v = gguf_value(ct, key)?;
    let n: i128 = match v {
        U8(v) => *v as i128,
        I8(v) => *v as i128,
        U16(v) => *v as i128,
        I16(v) => *v as i128,
        U32(v) => *v as i128,
        I32(v) => *v as i128,
        U64(v) => *v as i128,
        I64(v) => *v as i128,
        other => {
            return Err(LoadError::invalid(
                key,
                format!("expected an integer, got {other:?}"),
            ))
        }
    };
    usize::try_from(n).map_err(|_| LoadError::invalid(key, format!("out of range: {n}")))
}

pub(crate) fn gguf_f32(ct: &gguf_file::Content, key: &str) -> Result<f32, LoadError> {
    use gguf_file::Value::*;
    match gguf_value(ct, key)? {
        F32(v) => Ok(*v),
        F64(v) => Ok(*v as f32),
        other => Err(LoadError::invalid(
            key,
            format!("expected a float, got {other:?}"),
        )),
    }
}

fn json_usize(json: &Json, key: &str) -> Result<usize, LoadError> {
    match json.get(key) {
        None | Some(Json::Null) => Err(LoadError::MissingKey { key: key.into() }),
        Some(v) => v
            .as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| LoadError::invalid(key, format!("expected an integer, got {v}"))),
    }
}

fn json_f64(json: &Json, key: &str) -> Result<f64, LoadError> {
    match json.get(key) {
        None | Some(Json::Null) => Err(LoadError::MissingKey { key: key.into() }),
        Some(v) => v
            .as_f64()
            .ok_or_else(|| LoadError::invalid(key, format!("expected a number, got {v}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm_like() -> Json {
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
            "num_attention_heads": 9, "num_key_value_heads": 3, "rope_theta": 100000.0,
            "rms_norm_eps": 1e-5, "max_position_embeddings": 8192, "vocab_size": 49152,
            "rope_scaling": null
        })
    }

    /// A GGUF header with string and f32 keys.
    fn gguf(strings: &[(&str, &str)], floats: &[(&str, f32)]) -> gguf_file::Content {
        gguf_with_ints(strings, floats, &[])
    }

    /// A GGUF header with string, f32 and u32 keys.
    fn gguf_with_ints(
        strings: &[(&str, &str)],
        floats: &[(&str, f32)],
        ints: &[(&str, u32)],
    ) -> gguf_file::Content {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        b.extend(((strings.len() + floats.len() + ints.len()) as u64).to_le_bytes());
        let key = |b: &mut Vec<u8>, k: &str, ty: u32| {
            b.extend((k.len() as u64).to_le_bytes());
            b.extend(k.as_bytes());
            b.extend(ty.to_le_bytes());
        };
        for (k, v) in strings {
            key(&mut b, k, 8);
            b.extend((v.len() as u64).to_le_bytes());
            b.extend(v.as_bytes());
        }
        for (k, v) in floats {
            key(&mut b, k, 6);
            b.extend(v.to_le_bytes());
        }
        for (k, v) in ints {
            key(&mut b, k, 4);
            b.extend(v.to_le_bytes());
        }
        crate::gguf::read_content(&mut std::io::Cursor::new(b), "t.gguf").unwrap()
    }

    #[test]
    fn gguf_computation_wick_lacks_is_a_load_error_naming_the_key() {
        let arch = ("general.architecture", "llama");
        let cases = [
            gguf(&[arch, ("llama.rope.scaling.type", "yarn")], &[]),
            gguf(&[arch], &[("llama.rope.scaling.factor", 4.0)]),
            gguf(&[arch], &[("llama.final_logit_softcapping", 30.0)]),
        ];
        for (ct, key) in cases.iter().zip([
            "llama.rope.scaling.type",
            "llama.rope.scaling.factor",
            "llama.final_logit_softcapping",
        ]) {
            let err = ModelConfig::from_gguf(ct, 10).unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
        // `none`, or a factor of 1, changes nothing: the next missing key is what fails.
        let ct = gguf(
            &[arch, ("llama.rope.scaling.type", "none")],
            &[("llama.rope.scaling.factor", 4.0)],
        );
        let err = ModelConfig::from_gguf(&ct, 10).unwrap_err().to_string();
        assert!(!err.contains("scaling"), "{err}");
    }

    #[test]
    fn gemma3_gguf_keys_give_windowed_layers_without_capping_the_context() {
        let mut ints = vec![
            ("gemma3.context_length", 32768),
            ("gemma3.embedding_length", 640),
            ("gemma3.block_count", 18),
            ("gemma3.feed_forward_length", 2048),
            ("gemma3.attention.head_count", 4),
            ("gemma3.attention.head_count_kv", 1),
            ("gemma3.attention.key_length", 256),
        ];
        let strings = [("general.architecture", "gemma3")];
        let floats = [
            ("gemma3.attention.layer_norm_rms_epsilon", 1e-6),
            ("gemma3.rope.freq_base", 1e6),
        ];
        let missing = ModelConfig::from_gguf(&gguf_with_ints(&strings, &floats, &ints), 10);
        let err = missing.unwrap_err().to_string();
        assert!(err.contains("gemma3.attention.sliding_window"), "{err}");

        ints.push(("gemma3.attention.sliding_window", 512));
        let cfg = ModelConfig::from_gguf(&gguf_with_ints(&strings, &floats, &ints), 10).unwrap();
        assert_eq!(cfg.architecture, Architecture::Gemma3);
        assert_eq!(cfg.max_context, 32768);
        assert_eq!(cfg.head_dim, 256);
        assert_eq!(cfg.attention_scale, 1.0 / 16.0);
        assert_eq!(
            cfg.local_attention,
            Some(LocalAttention {
                window: 512,
                global_every: 6,
                rope_theta: 10_000.0
            })
        );
        assert_eq!(cfg.layer_window(4), Some(512));
        assert_eq!(cfg.layer_window(5), None);
    }

    #[test]
    fn hf_config_reads_llama_fields() {
        let cfg = ModelConfig::from_hf_json(&smollm_like()).unwrap();
        assert_eq!(cfg.architecture, Architecture::Llama);
        assert_eq!(cfg.head_dim, 64);
        assert_eq!(cfg.kv_dim(), 192);
        assert_eq!(cfg.rope_theta, 100000.0);
    }

    #[test]
    fn hf_config_rejects_uneven_kv_groups() {
        let mut json = smollm_like();
        json["num_key_value_heads"] = 4.into();
        let err = ModelConfig::from_hf_json(&json).unwrap_err().to_string();
        assert!(
            err.contains("9 attention heads cannot be grouped over 4 KV heads"),
            "{err}"
        );
    }

    #[test]
    fn hf_config_rejects_rope_scaling_and_unknown_architectures() {
        let mut json = smollm_like();
        json["rope_scaling"] = serde_json::json!({"type": "llama3"});
        assert!(ModelConfig::from_hf_json(&json)
            .unwrap_err()
            .to_string()
            .contains("rope_scaling"));
        let mut json = smollm_like();
        json["architectures"] = serde_json::json!(["GPT2LMHeadModel"]);
        assert!(matches!(
            ModelConfig::from_hf_json(&json),
            Err(LoadError::UnsupportedArchitecture { .. })
        ));
    }

    #[test]
    fn gemma_layers_alternate_five_windowed_and_one_global() {
        let mut cfg = ModelConfig::from_hf_json(&smollm_like()).unwrap();
        cfg.local_attention = Some(LocalAttention {
            window: 512,
            global_every: 6,
            rope_theta: 10_000.0,
        });
        let windows: Vec<_> = (0..12).map(|l| cfg.layer_window(l)).collect();
        assert_eq!(
            windows[..6],
            [Some(512); 5]
                .iter()
                .chain(&[None])
                .copied()
                .collect::<Vec<_>>()
        );
        assert_eq!(windows[6..], windows[..6]);
        assert_eq!(
            cfg.max_context, 8192,
            "Gemma's window does not cap the context"
        );
    }

    #[test]
    fn sliding_window_caps_the_context() {
        let mut json = smollm_like();
        json["architectures"] = serde_json::json!(["MistralForCausalLM"]);
        json["sliding_window"] = 4096.into();
        let cfg = ModelConfig::from_hf_json(&json).unwrap();
        assert_eq!(cfg.max_context, 4096);
    }
}
