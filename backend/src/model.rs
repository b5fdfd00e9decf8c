//! The llama-family forward pass over a packed batch.
//!
//! One call runs many sequences at once, each contributing any number of new tokens at its own
//! absolute positions: embedding, then per layer RMSNorm, Q/K/V projections, RoPE, K/V written into
//! the paged cache, paged attention, output projection, RMSNorm and a SwiGLU MLP; finally the norm
//! and LM head on the rows that sample only. Gemma 3 adds, as flags of the same pass: scaled
//! embeddings, per-head Q/K norms, norms after attention and after the MLP, GELU instead of SiLU,
//! and per-layer sliding windows with their own RoPE base ([`ModelConfig::layer_window`]). Weights are immutable (`&self`); the KV cache is
//! passed in (`&mut KvCache`), so one model serves every sequence.
//!
//! Two paths: Wick's CPU kernels on plain buffers (below, the default on CPU), or the
//! device-generic candle path of [`crate::generic`] (CUDA, or the CPU when asked).

use crate::config::ModelConfig;
use crate::generic::DeviceModel;
use crate::kv::KvCache;
use crate::ops::{fused, AttentionMeta, KvWrite, PagedAttention, QWeight};
use candle_core::{Device, Tensor};

/// One decoder layer's weights.
pub struct Layer {
    pub attn_norm: Tensor,
    pub q: QWeight,
    pub k: QWeight,
    pub v: QWeight,
    /// Q, K, V biases (Qwen2).
    pub qkv_bias: Option<[Tensor; 3]>,
    /// Gemma's extra norms.
    pub gemma: Option<GemmaNorms>,
    pub o: QWeight,
    pub ffn_norm: Tensor,
    pub gate: QWeight,
    pub up: QWeight,
    pub down: QWeight,
}

/// Gemma's extra RMSNorm weights of one layer (with Gemma's `1 + w` applied, as GGUFs store them).
pub struct GemmaNorms {
    /// On each head's queries and keys (`head_dim` wide), before RoPE.
    pub q: Tensor,
    pub k: Tensor,
    /// On the attention output and on the MLP output, before each residual add.
    pub post_attn: Tensor,
    pub post_ffn: Tensor,
}

/// The LM head: its own matrix, or the embedding matrix when the model ties them.
pub enum LmHead {
    Separate(QWeight),
    Tied,
}

pub struct Model {
    pub cfg: ModelConfig,
    pub embed: QWeight,
    pub layers: Vec<Layer>,
    pub norm: Tensor,
    pub lm_head: LmHead,
    pub device: Device,
    /// `1 / theta^(2i / head_dim)` for each rotated pair.
    inv_freq: Vec<f32>,
    /// The same for the sliding-window layers' RoPE base, when they have their own.
    inv_freq_local: Option<Vec<f32>>,
    /// When set, [`Model::forward`] runs the device-generic path on its device.
    generic: Option<DeviceModel>,
}

/// A batch in the form the forward pass takes: packed tokens, attention metadata, and the rows
/// whose logits are wanted.
pub struct PackedBatch {
    pub tokens: Vec<u32>,
    pub meta: AttentionMeta,
    pub sample_rows: Vec<usize>,
}

impl Model {
    pub fn new(
        cfg: ModelConfig,
        embed: QWeight,
        layers: Vec<Layer>,
        norm: Tensor,
        lm_head: LmHead,
        device: Device,
    ) -> Self {
        let inv_freq = cfg.inv_freq(cfg.rope_theta);
        let inv_freq_local = cfg.local_attention.map(|l| cfg.inv_freq(l.rope_theta));
        Model {
            cfg,
            embed,
            layers,
            norm,
            lm_head,
            device,
            inv_freq,
            inv_freq_local,
            generic: None,
        }
    }

    /// Runs every later forward pass through the device-generic path (candle ops) on `device`:
    /// weights copied there dequantized; the KV cache must live there too.
    pub fn use_generic_path(&mut self, device: &Device) -> candle_core::Result<()> {
        self.generic = Some(DeviceModel::new(self, device)?);
        Ok(())
    }

    /// Where the forward pass runs: `cpu-kernels` (Wick's CPU kernels) or `generic` (candle ops).
    pub fn path_name(&self) -> &'static str {
        if self.generic.is_some() {
            "generic"
        } else {
            "cpu-kernels"
        }
    }

    /// The dominant weight type, for reporting (`q4_1`, `f32`, ...).
    pub fn dtype_name(&self) -> &'static str {
        self.layers
            .first()
            .map(|l| l.gate.dtype_name())
            .unwrap_or_else(|| self.embed.dtype_name())
    }

    /// Every matrix dequantized to f32 (for reference runs and conversion checks).
    pub fn dequantize(&mut self) {
        for l in &mut self.layers {
            for w in [
                &mut l.q,
                &mut l.k,
                &mut l.v,
                &mut l.o,
                &mut l.gate,
                &mut l.up,
                &mut l.down,
            ] {
                *w = w.dequantized();
            }
        }
        self.embed = self.embed.dequantized();
        if let LmHead::Separate(w) = &mut self.lm_head {
            *w = w.dequantized();
        }
    }

    /// RoPE cos and sin tables `(tokens, head_dim / 2)` for the given positions.
    fn rope_tables(inv_freq: &[f32], positions: &[usize]) -> (Vec<f32>, Vec<f32>) {
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            for &f in inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        (cos, sin)
    }

    fn embed_tokens(&self, tokens: &[u32]) -> Vec<f32> {
        let h = self.cfg.hidden_size;
        let mut x = vec![0f32; tokens.len() * h];
        for (row, &t) in x.chunks_exact_mut(h).zip(tokens) {
            self.embed.row_to_f32(t as usize, row);
        }
        if self.cfg.architecture.gemma() {
            let scale = (h as f32).sqrt();
            x.iter_mut().for_each(|v| *v *= scale);
        }
        x
    }

    /// Runs the batch, writing its K/V into `kv`, and returns `(sample_rows, vocab)` logits.
    ///
    /// The hidden state lives in a plain buffer; the per-token ops are [`fused`]'s, the matmuls
    /// [`QWeight`]'s, and only the paged-cache ops go through candle tensors.
    pub fn forward(&self, batch: &PackedBatch, kv: &mut KvCache) -> candle_core::Result<Tensor> {
        if let Some(generic) = &self.generic {
            return generic.forward(self, batch, kv);
        }
        let cfg = &self.cfg;
        let (t, h, d) = (batch.tokens.len(), cfg.hidden_size, cfg.head_dim);
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
        let eps = cfg.rms_eps as f32;
        let global = Self::rope_tables(&self.inv_freq, &batch.meta.positions);
        let local = self
            .inv_freq_local
            .as_ref()
            .map(|f| Self::rope_tables(f, &batch.meta.positions));
        let dev = &self.device;
        let mut x = self.embed_tokens(&batch.tokens);
        let mut xn = vec![0f32; t * h];
        let (mut q, mut k, mut v) = (vec![0f32; t * qd], vec![0f32; t * kvd], vec![0f32; t * kvd]);
        let mut o = vec![0f32; t * h];
        let ff = cfg.intermediate_size;
        let (mut gate, mut up) = (vec![0f32; t * ff], vec![0f32; t * ff]);
        for (li, layer) in self.layers.iter().enumerate() {
            fused::rms_norm(&x, &layer.attn_norm.to_vec1::<f32>()?, eps, &mut xn);
            QWeight::matmul_many(
                &[&layer.q, &layer.k, &layer.v],
                &xn,
                &mut [&mut q, &mut k, &mut v],
            );
            if let Some(biases) = &layer.qkv_bias {
                for (out, b) in [&mut q, &mut k, &mut v].into_iter().zip(biases) {
                    let b = b.to_vec1::<f32>()?;
                    out.chunks_exact_mut(b.len())
                        .for_each(|row| fused::add(row, &b));
                }
            }
            if let Some(g) = &layer.gemma {
                norm_in_place(&mut q, &g.q, eps)?;
                norm_in_place(&mut k, &g.k, eps)?;
            }
            let window = cfg.layer_window(li);
            let (cos, sin) = match (&local, window) {
                (Some(local), Some(_)) => local,
                _ => &global,
            };
            fused::rope(&mut q, cfg.num_heads, d, cos, sin);
            fused::rope(&mut k, cfg.num_kv_heads, d, cos, sin);
            let kt = Tensor::from_slice(&k, (t, cfg.num_kv_heads, d), dev)?;
            let vt = Tensor::from_slice(&v, (t, cfg.num_kv_heads, d), dev)?;
            kv.k[li].inplace_op2(&kt, &KvWrite(&batch.meta))?;
            kv.v[li].inplace_op2(&vt, &KvWrite(&batch.meta))?;
            let qt = Tensor::from_slice(&q, (t, cfg.num_heads, d), dev)?;
            let attention = PagedAttention {
                meta: &batch.meta,
                scale: cfg.attention_scale,
                window,
            };
            let attn = qt.apply_op3_no_bwd(&kv.k[li], &kv.v[li], &attention)?;
            layer
                .o
                .matmul(&attn.flatten_all()?.to_vec1::<f32>()?, &mut o);
            if let Some(g) = &layer.gemma {
                norm_in_place(&mut o, &g.post_attn, eps)?;
            }
            fused::add(&mut x, &o);

            fused::rms_norm(&x, &layer.ffn_norm.to_vec1::<f32>()?, eps, &mut xn);
            QWeight::matmul_many(&[&layer.gate, &layer.up], &xn, &mut [&mut gate, &mut up]);
            if layer.gemma.is_some() {
                fused::gelu_mul(&mut gate, &up);
            } else {
                fused::silu_mul(&mut gate, &up);
            }
            layer.down.matmul(&gate, &mut o);
            if let Some(g) = &layer.gemma {
                norm_in_place(&mut o, &g.post_ffn, eps)?;
            }
            fused::add(&mut x, &o);
        }
        let rows = batch.sample_rows.len();
        let mut last = vec![0f32; rows * h];
        for (dst, &r) in last.chunks_exact_mut(h).zip(&batch.sample_rows) {
            dst.copy_from_slice(&x[r * h..(r + 1) * h]);
        }
        let mut normed = vec![0f32; rows * h];
        fused::rms_norm(&last, &self.norm.to_vec1::<f32>()?, eps, &mut normed);
        let head = match &self.lm_head {
            LmHead::Separate(w) => w,
            LmHead::Tied => &self.embed,
        };
        let mut logits = vec![0f32; rows * cfg.vocab_size];
        head.matmul(&normed, &mut logits);
        Tensor::from_vec(logits, (rows, cfg.vocab_size), dev)
    }
}

/// RMSNorm of each `weight.len()`-wide row of `x`, in place.
fn norm_in_place(x: &mut [f32], weight: &Tensor, eps: f32) -> candle_core::Result<()> {
    let src = x.to_vec();
    fused::rms_norm(&src, &weight.to_vec1::<f32>()?, eps, x);
    Ok(())
}
