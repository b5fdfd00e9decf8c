//! Loading a model's [`Weights`] from a GGUF file or a Hugging Face directory, and writing a GGUF
//! model out as a Hugging Face directory ([`export_hf_dir`], dequantized to f32). Which tensors a
//! layer has follows from its architecture's [`Features`](crate::config::Features).
//!
//! GGUF files from llama.cpp store the Q and K projections of `llama` models with the rows of each
//! head interleaved for its "normal" RoPE; they are put back in Hugging Face order at load time (a
//! permutation of whole rows, so quantized blocks move unchanged) and every model then uses the
//! same half-split RoPE.

use crate::config::{Architecture, ModelConfig};
use crate::error::LoadError;
use crate::ops::QWeight;
use crate::tokenizer::{self, TokenizerInfo};
use crate::weights::{Layer, LmHead, Rope, Weights};
use candle_core::quantized::gguf_file;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value as Json};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Loads weights from `path`: a `.gguf` file or a directory with `config.json`.
pub fn load_weights(path: &Path) -> Result<Weights, LoadError> {
    if path.is_dir() {
        load_hf_dir(path)
    } else if path.is_file() {
        load_gguf(path)
    } else {
        Err(LoadError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        ))
    }
}

/// For row `r` of a head in Hugging Face order, the GGUF row it is stored in.
fn unpermute_rows(heads: usize, head_dim: usize) -> Vec<usize> {
    let half = head_dim / 2;
    (0..heads * head_dim)
        .map(|r| {
            let (h, within) = (r / head_dim, r % head_dim);
            let (j, i) = (within / half, within % half);
            h * head_dim + 2 * i + j
        })
        .collect()
}

fn check_shape(name: &str, w: &QWeight, rows: usize, cols: usize) -> Result<(), LoadError> {
    if (w.rows(), w.cols()) != (rows, cols) {
        return Err(LoadError::TensorShape {
            name: name.into(),
            found: vec![w.rows(), w.cols()],
            expected: vec![rows, cols],
        });
    }
    Ok(())
}

/// How one weight source names and yields tensors.
trait TensorSource {
    fn has(&self, name: &str) -> bool;
    fn matrix(&mut self, name: &str) -> Result<QWeight, LoadError>;
    /// A one-dimensional tensor (norm weight, bias) as f32.
    fn vector(&mut self, name: &str) -> Result<Vec<f32>, LoadError>;
}

struct GgufSource {
    file: std::fs::File,
    content: gguf_file::Content,
}

impl TensorSource for GgufSource {
    fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }
    fn matrix(&mut self, name: &str) -> Result<QWeight, LoadError> {
        if !self.has(name) {
            return Err(LoadError::MissingTensor { name: name.into() });
        }
        let qt = self.content.tensor(&mut self.file, name, &Device::Cpu)?;
        QWeight::from_qtensor(name, &qt)
    }
    fn vector(&mut self, name: &str) -> Result<Vec<f32>, LoadError> {
        if !self.has(name) {
            return Err(LoadError::MissingTensor { name: name.into() });
        }
        let qt = self.content.tensor(&mut self.file, name, &Device::Cpu)?;
        Ok(qt.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1()?)
    }
}

struct SafetensorsSource(MmapedSafetensors, std::collections::HashSet<String>);

impl TensorSource for SafetensorsSource {
    fn has(&self, name: &str) -> bool {
        self.1.contains(name)
    }
    fn matrix(&mut self, name: &str) -> Result<QWeight, LoadError> {
        if !self.has(name) {
            return Err(LoadError::MissingTensor { name: name.into() });
        }
        QWeight::from_dense(name, &self.0.load(name, &Device::Cpu)?)
    }
    fn vector(&mut self, name: &str) -> Result<Vec<f32>, LoadError> {
        if !self.has(name) {
            return Err(LoadError::MissingTensor { name: name.into() });
        }
        let t = self.0.load(name, &Device::Cpu)?.to_dtype(DType::F32)?;
        Ok(t.flatten_all()?.to_vec1()?)
    }
}

/// Tensor names of one format.
struct Names {
    /// Whether this format stores the Q and K rows of `interleaved_rope` architectures
    /// interleaved (llama.cpp's GGUFs do; Hugging Face's half-split order is Wick's own).
    interleaved: bool,
    embed: &'static str,
    norm: &'static str,
    lm_head: &'static str,
    layer: fn(usize, &str) -> String,
}

const GGUF_NAMES: Names = Names {
    interleaved: true,
    embed: "token_embd.weight",
    norm: "output_norm.weight",
    lm_head: "output.weight",
    layer: |i, part| {
        let gguf = match part {
            "attn_norm" => "attn_norm.weight",
            "q" => "attn_q.weight",
            "k" => "attn_k.weight",
            "v" => "attn_v.weight",
            "q_bias" => "attn_q.bias",
            "k_bias" => "attn_k.bias",
            "v_bias" => "attn_v.bias",
            "o" => "attn_output.weight",
            "ffn_norm" => "ffn_norm.weight",
            "q_norm" => "attn_q_norm.weight",
            "k_norm" => "attn_k_norm.weight",
            "post_attn_norm" => "post_attention_norm.weight",
            "post_ffn_norm" => "post_ffw_norm.weight",
            "gate" => "ffn_gate.weight",
            "up" => "ffn_up.weight",
            _ => "ffn_down.weight",
        };
        format!("blk.{i}.{gguf}")
    },
};

const HF_NAMES: Names = Names {
    interleaved: false,
    embed: "model.embed_tokens.weight",
    norm: "model.norm.weight",
    lm_head: "lm_head.weight",
    layer: |i, part| {
        let hf = match part {
            "attn_norm" => "input_layernorm.weight",
            "q" => "self_attn.q_proj.weight",
            "k" => "self_attn.k_proj.weight",
            "v" => "self_attn.v_proj.weight",
            "q_bias" => "self_attn.q_proj.bias",
            "k_bias" => "self_attn.k_proj.bias",
            "v_bias" => "self_attn.v_proj.bias",
            "o" => "self_attn.o_proj.weight",
            "ffn_norm" => "post_attention_layernorm.weight",
            "gate" => "mlp.gate_proj.weight",
            "up" => "mlp.up_proj.weight",
            _ => "mlp.down_proj.weight",
        };
        format!("model.layers.{i}.{hf}")
    },
};

fn build_weights(
    cfg: ModelConfig,
    src: &mut dyn TensorSource,
    names: &Names,
) -> Result<Weights, LoadError> {
    let (h, ff) = (cfg.hidden_size, cfg.intermediate_size);
    let features = cfg.architecture.features();
    let mut matrix = |name: String, rows: usize, cols: usize| -> Result<QWeight, LoadError> {
        let w = src.matrix(&name)?;
        check_shape(&name, &w, rows, cols)?;
        Ok(w)
    };
    let embed = matrix(names.embed.into(), cfg.vocab_size, h)?;
    let mut matrices = Vec::with_capacity(cfg.num_layers);
    for i in 0..cfg.num_layers {
        let n = |part: &str| (names.layer)(i, part);
        let mut q = matrix(n("q"), cfg.q_dim(), h)?;
        let mut k = matrix(n("k"), cfg.kv_dim(), h)?;
        if features.interleaved_rope && names.interleaved {
            q = q.permute_rows(&unpermute_rows(cfg.num_heads, cfg.head_dim));
            k = k.permute_rows(&unpermute_rows(cfg.num_kv_heads, cfg.head_dim));
        }
        let v = matrix(n("v"), cfg.kv_dim(), h)?;
        let o = matrix(n("o"), h, cfg.q_dim())?;
        let gate = matrix(n("gate"), ff, h)?;
        let up = matrix(n("up"), ff, h)?;
        let down = matrix(n("down"), h, ff)?;
        matrices.push([q, k, v, o, gate, up, down]);
    }
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for (i, [q, k, v, o, gate, up, down]) in matrices.into_iter().enumerate() {
        let n = |part: &str| (names.layer)(i, part);
        let mut vector = |part: &str| src.vector(&n(part));
        layers.push(Layer {
            attn_norm: vector("attn_norm")?,
            q,
            k,
            v,
            qkv_bias: match features.qkv_bias {
                true => Some([vector("q_bias")?, vector("k_bias")?, vector("v_bias")?]),
                false => None,
            },
            head_norms: match features.head_norms {
                true => Some([vector("q_norm")?, vector("k_norm")?]),
                false => None,
            },
            o,
            post_norms: match features.post_norms {
                true => Some([vector("post_attn_norm")?, vector("post_ffn_norm")?]),
                false => None,
            },
            ffn_norm: vector("ffn_norm")?,
            gate,
            up,
            down,
        });
    }
    let norm = src.vector(names.norm)?;
    let lm_head = if src.has(names.lm_head) {
        let w = src.matrix(names.lm_head)?;
        check_shape(names.lm_head, &w, cfg.vocab_size, h)?;
        LmHead::Separate(w)
    } else {
        LmHead::Tied
    };
    Ok(Weights {
        rope: Rope::new(&cfg),
        cfg,
        embed,
        layers,
        norm,
        lm_head,
    })
}

/// Loads a GGUF file, keeping every matrix in its stored type.
pub fn load_gguf(path: &Path) -> Result<Weights, LoadError> {
    let mut file = std::fs::File::open(path).map_err(|e| LoadError::io(path, e))?;
    let content = crate::gguf::read_content(&mut file, &path.display().to_string())?;
    let vocab_len = content
        .metadata
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.to_vec().ok())
        .map(|v| v.len())
        .unwrap_or(0);
    let cfg = ModelConfig::from_gguf(&content, vocab_len)?;
    let mut src = GgufSource { file, content };
    build_weights(cfg, &mut src, &GGUF_NAMES)
}

fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| LoadError::io(&index, e))?;
        let json: Json = serde_json::from_str(&text)
            .map_err(|e| LoadError::invalid("model.safetensors.index.json", e.to_string()))?;
        let map = json
            .get("weight_map")
            .and_then(Json::as_object)
            .ok_or_else(|| LoadError::MissingKey {
                key: "weight_map".into(),
            })?;
        let mut files: Vec<PathBuf> = map
            .values()
            .filter_map(Json::as_str)
            .map(|f| dir.join(f))
            .collect();
        files.sort();
        files.dedup();
        return Ok(files);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| LoadError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(LoadError::MissingTensor {
            name: format!("{}/*.safetensors", dir.display()),
        });
    }
    Ok(files)
}

/// Loads a Hugging Face directory: `config.json` and one or several safetensors files.
pub fn load_hf_dir(dir: &Path) -> Result<Weights, LoadError> {
    let cfg_path = dir.join("config.json");
    if !cfg_path.exists() {
        return Err(LoadError::UnknownFormat { path: dir.into() });
    }
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| LoadError::io(&cfg_path, e))?;
    let json: Json = serde_json::from_str(&text)
        .map_err(|e| LoadError::invalid("config.json", e.to_string()))?;
    let cfg = ModelConfig::from_hf_json(&json)?;
    let files = safetensors_files(dir)?;
    // SAFETY: the files are memory-mapped read-only; modifying them while loading is undefined,
    // as for every mmap-based loader.
    let st = unsafe { MmapedSafetensors::multi(&files)? };
    let names = st.tensors().into_iter().map(|(n, _)| n).collect();
    let mut src = SafetensorsSource(st, names);
    build_weights(cfg, &mut src, &HF_NAMES)
}

/// Writes a GGUF model as a Hugging Face directory: `config.json`, the weights dequantized to f32
/// in `shards` safetensors files (with an index when more than one), `tokenizer.json`,
/// `tokenizer_config.json` and `generation_config.json`.
pub fn export_hf_dir(gguf: &Path, out: &Path, shards: usize) -> Result<(), LoadError> {
    let model = load_gguf(gguf)?;
    let features = model.cfg.architecture.features();
    if features.head_norms || features.post_norms {
        // Hugging Face's Gemma stores `w` where the GGUF has `1 + w`, names its norms otherwise,
        // and Wick reads no Gemma config.json: an export could not be loaded back.
        return Err(LoadError::UnsupportedArchitecture {
            architecture: format!("{} (export)", model.cfg.architecture.name()),
        });
    }
    let tok = tokenizer::load_tokenizer(gguf)?;
    std::fs::create_dir_all(out).map_err(|e| LoadError::io(out, e))?;
    let mut tensors: Vec<(String, Tensor)> = vec![
        (HF_NAMES.embed.into(), model.embed.to_tensor(&Device::Cpu)?),
        (HF_NAMES.norm.into(), vector(&model.norm)?),
    ];
    if let LmHead::Separate(w) = &model.lm_head {
        tensors.push((HF_NAMES.lm_head.into(), w.to_tensor(&Device::Cpu)?));
    }
    for (i, l) in model.layers.iter().enumerate() {
        let n = |part: &str| (HF_NAMES.layer)(i, part);
        for (part, w) in [
            ("q", &l.q),
            ("k", &l.k),
            ("v", &l.v),
            ("o", &l.o),
            ("gate", &l.gate),
            ("up", &l.up),
            ("down", &l.down),
        ] {
            tensors.push((n(part), w.to_tensor(&Device::Cpu)?));
        }
        tensors.push((n("attn_norm"), vector(&l.attn_norm)?));
        tensors.push((n("ffn_norm"), vector(&l.ffn_norm)?));
        if let Some([bq, bk, bv]) = &l.qkv_bias {
            tensors.push((n("q_bias"), vector(bq)?));
            tensors.push((n("k_bias"), vector(bk)?));
            tensors.push((n("v_bias"), vector(bv)?));
        }
    }
    write_safetensors(out, tensors, shards.max(1))?;
    write_json(out, "config.json", &hf_config(&model))?;
    tok.tokenizer
        .save(out.join("tokenizer.json"), false)
        .map_err(|e| LoadError::Tokenizer {
            reason: e.to_string(),
        })?;
    write_json(out, "tokenizer_config.json", &tokenizer_config(&tok))?;
    write_json(
        out,
        "generation_config.json",
        &json!({"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_ids}),
    )
}

/// A one-dimensional f32 tensor on the CPU.
fn vector(v: &[f32]) -> candle_core::Result<Tensor> {
    Tensor::new(v, &Device::Cpu)
}

fn hf_config(model: &Weights) -> Json {
    let c = &model.cfg;
    let arch = match c.architecture {
        Architecture::Llama => "LlamaForCausalLM",
        Architecture::Mistral => "MistralForCausalLM",
        Architecture::Qwen2 => "Qwen2ForCausalLM",
        Architecture::Gemma3 => "Gemma3ForCausalLM",
    };
    json!({
        "architectures": [arch],
        "model_type": c.architecture.name(),
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "rope_theta": c.rope_theta,
        "rms_norm_eps": c.rms_eps,
        "max_position_embeddings": c.max_context,
        "vocab_size": c.vocab_size,
        "tie_word_embeddings": matches!(model.lm_head, LmHead::Tied),
        "torch_dtype": "float32",
    })
}

fn tokenizer_config(tok: &TokenizerInfo) -> Json {
    json!({
        "chat_template": tok.chat_template,
        "bos_token": tok.bos_token(),
        "eos_token": tok.eos_token(),
        "add_bos_token": tok.add_bos_token,
    })
}

fn write_json(dir: &Path, name: &str, value: &Json) -> Result<(), LoadError> {
    let path = dir.join(name);
    let text = serde_json::to_string_pretty(value).expect("JSON values always serialize");
    std::fs::write(&path, text).map_err(|e| LoadError::io(path, e))
}

fn write_safetensors(
    dir: &Path,
    tensors: Vec<(String, Tensor)>,
    shards: usize,
) -> Result<(), LoadError> {
    if shards == 1 {
        let map: HashMap<String, Tensor> = tensors.into_iter().collect();
        let path = dir.join("model.safetensors");
        return Ok(candle_core::safetensors::save(&map, path)?);
    }
    let per_shard = tensors.len().div_ceil(shards);
    let mut weight_map = BTreeMap::new();
    let mut total_size = 0usize;
    let mut iter = tensors.into_iter().peekable();
    let mut index = 0;
    while iter.peek().is_some() {
        index += 1;
        let file = format!("model-{index:05}-of-{shards:05}.safetensors");
        let shard: HashMap<String, Tensor> = iter.by_ref().take(per_shard).collect();
        for (name, t) in &shard {
            total_size += t.elem_count() * t.dtype().size_in_bytes();
            weight_map.insert(name.clone(), file.clone());
        }
        candle_core::safetensors::save(&shard, dir.join(&file))?;
    }
    write_json(
        dir,
        "model.safetensors.index.json",
        &json!({"metadata": {"total_size": total_size}, "weight_map": weight_map}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_restores_hf_row_order() {
        // llama.cpp stores HF rows (h, j, i) at (h, i, j): for head_dim 4, HF rows 0,1,2,3 are
        // GGUF rows 0,2,1,3.
        assert_eq!(unpermute_rows(2, 4), vec![0, 2, 1, 3, 4, 6, 5, 7]);
    }
}
