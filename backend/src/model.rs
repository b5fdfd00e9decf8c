//! The model the engine runs: [`Model`], one of two forward paths built from the same
//! [`Weights`]: Wick's CPU kernels on plain buffers ([`CpuModel`], below, the default on CPU), or
//! the device-generic candle path ([`DeviceModel`], CUDA, or the CPU when asked).
//!
//! [`CpuModel::forward`] runs many sequences at once, each contributing any number of new tokens
//! at its own absolute positions: embedding, then per layer RMSNorm, Q/K/V projections, RoPE, K/V
//! written into the paged cache, paged attention, output projection, RMSNorm and a gated MLP;
//! finally the norm and LM head on the rows that sample only. What an architecture adds (biases,
//! head and post norms, scaled embeddings, the activation, sliding windows with their own RoPE
//! base) is read from its [`Features`](crate::config::Features) and [`ModelConfig`]. Weights are
//! immutable (`&self`); the KV cache is passed in (`&mut KvCache`), so one model serves every
//! sequence.

use crate::config::{Activation, ModelConfig};
use crate::generic::DeviceModel;
use crate::kv::KvCache;
use crate::ops::{fused, AttentionMeta, KvWrite, PagedAttention, QWeight};
use crate::weights::Weights;
use candle_core::{Device, Tensor};

/// A batch in the form the forward pass takes: packed tokens, attention metadata, and the rows
/// whose logits are wanted.
pub struct PackedBatch {
    pub tokens: Vec<u32>,
    pub meta: AttentionMeta,
    pub sample_rows: Vec<usize>,
}

impl PackedBatch {
    pub fn new(block_size: usize) -> Self {
        PackedBatch {
            tokens: Vec::new(),
            meta: AttentionMeta {
                block_size,
                ..Default::default()
            },
            sample_rows: Vec::new(),
        }
    }

    /// Appends one sequence: `tokens` at the positions from `start_pos`, their K/V written
    /// through `blocks`; the logits of the last `samples` of them are wanted.
    pub fn push(&mut self, tokens: &[u32], start_pos: usize, blocks: &[u32], samples: usize) {
        let bs = self.meta.block_size;
        let table = self.meta.tables.len();
        for (j, &tok) in tokens.iter().enumerate() {
            let pos = start_pos + j;
            self.tokens.push(tok);
            self.meta.positions.push(pos);
            self.meta.token_table.push(table);
            (self.meta.slots).push(blocks[pos / bs] as usize * bs + pos % bs);
        }
        self.meta.tables.push(blocks.to_vec());
        let end = self.tokens.len();
        self.sample_rows
            .extend(end - samples.min(tokens.len())..end);
    }
}

/// The forward path the engine runs.
pub enum Model {
    Cpu(CpuModel),
    Generic(DeviceModel),
}

impl Model {
    /// Builds the path for `weights`: the device-generic one on `device` when `generic` (the
    /// weights are then dequantized onto the device and the host copy freed), else the CPU one.
    pub fn new(weights: Weights, generic: bool, device: &Device) -> candle_core::Result<Self> {
        Ok(if generic {
            Model::Generic(DeviceModel::new(weights, device)?)
        } else {
            Model::Cpu(CpuModel { w: weights })
        })
    }

    pub fn cfg(&self) -> &ModelConfig {
        match self {
            Model::Cpu(m) => &m.w.cfg,
            Model::Generic(m) => m.cfg(),
        }
    }

    /// Where the forward pass runs: `cpu-kernels` (Wick's CPU kernels) or `generic` (candle ops).
    pub fn path_name(&self) -> &'static str {
        match self {
            Model::Cpu(_) => "cpu-kernels",
            Model::Generic(_) => "generic",
        }
    }

    /// The dominant weight type as loaded, for reporting (`q4_1`, `f32`, ...).
    pub fn dtype_name(&self) -> &'static str {
        match self {
            Model::Cpu(m) => m.w.dtype_name(),
            Model::Generic(m) => m.source_dtype(),
        }
    }

    /// Runs the batch, writing its K/V into `kv`, and returns `(sample_rows, vocab)` logits.
    pub fn forward(&self, batch: &PackedBatch, kv: &mut KvCache) -> candle_core::Result<Tensor> {
        match self {
            Model::Cpu(m) => m.forward(batch, kv),
            Model::Generic(m) => m.forward(batch, kv),
        }
    }
}

/// The forward pass on Wick's CPU kernels.
pub struct CpuModel {
    w: Weights,
}

impl CpuModel {
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
        let h = self.w.cfg.hidden_size;
        let mut x = vec![0f32; tokens.len() * h];
        for (row, &t) in x.chunks_exact_mut(h).zip(tokens) {
            self.w.embed.row_to_f32(t as usize, row);
        }
        if self.w.cfg.architecture.features().embed_scale {
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
        let cfg = &self.w.cfg;
        let features = cfg.architecture.features();
        let (t, h, d) = (batch.tokens.len(), cfg.hidden_size, cfg.head_dim);
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
        let eps = cfg.rms_eps as f32;
        let rope = &self.w.rope;
        let global = Self::rope_tables(&rope.global, &batch.meta.positions);
        let local = rope
            .local
            .as_ref()
            .map(|f| Self::rope_tables(f, &batch.meta.positions));
        let dev = &Device::Cpu;
        let mut x = self.embed_tokens(&batch.tokens);
        let mut xn = vec![0f32; t * h];
        let (mut q, mut k, mut v) = (vec![0f32; t * qd], vec![0f32; t * kvd], vec![0f32; t * kvd]);
        let mut o = vec![0f32; t * h];
        let ff = cfg.intermediate_size;
        let (mut gate, mut up) = (vec![0f32; t * ff], vec![0f32; t * ff]);
        let mut scratch = Vec::new();
        for (li, layer) in self.w.layers.iter().enumerate() {
            fused::rms_norm(&x, &layer.attn_norm, eps, &mut xn);
            QWeight::matmul_many(
                &[&layer.q, &layer.k, &layer.v],
                &xn,
                &mut [&mut q, &mut k, &mut v],
            );
            if let Some(biases) = &layer.qkv_bias {
                for (out, b) in [&mut q, &mut k, &mut v].into_iter().zip(biases) {
                    out.chunks_exact_mut(b.len())
                        .for_each(|row| fused::add(row, b));
                }
            }
            if let Some([qn, kn]) = &layer.head_norms {
                norm_in_place(&mut q, qn, eps, &mut scratch);
                norm_in_place(&mut k, kn, eps, &mut scratch);
            }
            let window = cfg.layer_window(li);
            let (cos, sin) = match (&local, rope.uses_local(cfg, li)) {
                (Some(local), true) => local,
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
            if let Some([post_attn, _]) = &layer.post_norms {
                norm_in_place(&mut o, post_attn, eps, &mut scratch);
            }
            fused::add(&mut x, &o);

            fused::rms_norm(&x, &layer.ffn_norm, eps, &mut xn);
            QWeight::matmul_many(&[&layer.gate, &layer.up], &xn, &mut [&mut gate, &mut up]);
            match features.activation {
                Activation::Silu => fused::silu_mul(&mut gate, &up),
                Activation::GeluTanh => fused::gelu_mul(&mut gate, &up),
            }
            layer.down.matmul(&gate, &mut o);
            if let Some([_, post_ffn]) = &layer.post_norms {
                norm_in_place(&mut o, post_ffn, eps, &mut scratch);
            }
            fused::add(&mut x, &o);
        }
        let rows = batch.sample_rows.len();
        let mut last = vec![0f32; rows * h];
        for (dst, &r) in last.chunks_exact_mut(h).zip(&batch.sample_rows) {
            dst.copy_from_slice(&x[r * h..(r + 1) * h]);
        }
        let mut normed = vec![0f32; rows * h];
        fused::rms_norm(&last, &self.w.norm, eps, &mut normed);
        let mut logits = vec![0f32; rows * cfg.vocab_size];
        self.w.head().matmul(&normed, &mut logits);
        Tensor::from_vec(logits, (rows, cfg.vocab_size), dev)
    }
}

/// RMSNorm of each `weight.len()`-wide row of `x`, in place (`scratch` holds the input).
fn norm_in_place(x: &mut [f32], weight: &[f32], eps: f32, scratch: &mut Vec<f32>) {
    scratch.clear();
    scratch.extend_from_slice(x);
    fused::rms_norm(scratch, weight, eps, x);
}
