//! The llama-family forward pass over a packed batch.
//!
//! One call runs many sequences at once, each contributing any number of new tokens at its own
//! absolute positions: embedding, then per layer RMSNorm, Q/K/V projections, RoPE, K/V written into
//! the paged cache, paged attention, output projection, RMSNorm and a SwiGLU MLP; finally the norm
//! and LM head on the rows that sample only. Weights are immutable (`&self`); the KV cache is
//! passed in (`&mut KvCache`), so one model serves every sequence.

use crate::config::ModelConfig;
use crate::kv::KvCache;
use crate::ops::{AttentionMeta, KvWrite, PagedAttention, QWeight};
use candle_core::{Device, Tensor};

/// One decoder layer's weights.
pub struct Layer {
    pub attn_norm: Tensor,
    pub q: QWeight,
    pub k: QWeight,
    pub v: QWeight,
    /// Q, K, V biases (Qwen2).
    pub qkv_bias: Option<[Tensor; 3]>,
    pub o: QWeight,
    pub ffn_norm: Tensor,
    pub gate: QWeight,
    pub up: QWeight,
    pub down: QWeight,
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
        let d = cfg.head_dim;
        let inv_freq = (0..d / 2)
            .map(|i| 1.0 / cfg.rope_theta.powf((2 * i) as f32 / d as f32))
            .collect();
        Model {
            cfg,
            embed,
            layers,
            norm,
            lm_head,
            device,
            inv_freq,
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
    fn rope_tables(&self, positions: &[usize]) -> candle_core::Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            for &f in &self.inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let shape = (positions.len(), half);
        Ok((
            Tensor::from_vec(cos, shape, &self.device)?,
            Tensor::from_vec(sin, shape, &self.device)?,
        ))
    }

    fn embed_tokens(&self, tokens: &[u32]) -> candle_core::Result<Tensor> {
        let h = self.cfg.hidden_size;
        let mut x = vec![0f32; tokens.len() * h];
        for (row, &t) in x.chunks_exact_mut(h).zip(tokens) {
            self.embed.row_to_f32(t as usize, row);
        }
        Tensor::from_vec(x, (tokens.len(), h), &self.device)
    }

    /// Runs the batch, writing its K/V into `kv`, and returns `(sample_rows, vocab)` logits.
    pub fn forward(&self, batch: &PackedBatch, kv: &mut KvCache) -> candle_core::Result<Tensor> {
        let cfg = &self.cfg;
        let t = batch.tokens.len();
        let eps = cfg.rms_eps as f32;
        let (cos, sin) = self.rope_tables(&batch.meta.positions)?;
        let rope = |x: Tensor, heads: usize| -> candle_core::Result<Tensor> {
            let x = x.reshape((1, t, heads, cfg.head_dim))?;
            candle_nn::rotary_emb::rope_thd(&x, &cos, &sin)?.reshape((t, heads, cfg.head_dim))
        };
        let attention = PagedAttention {
            meta: &batch.meta,
            scale: 1.0 / (cfg.head_dim as f32).sqrt(),
        };
        let mut x = self.embed_tokens(&batch.tokens)?;
        for (li, layer) in self.layers.iter().enumerate() {
            let xn = candle_nn::ops::rms_norm(&x, &layer.attn_norm, eps)?;
            let [mut q, mut k, mut v]: [Tensor; 3] =
                QWeight::forward_many(&[&layer.q, &layer.k, &layer.v], &xn)?
                    .try_into()
                    .map_err(|_| candle_core::Error::Msg("three projections".into()))?;
            if let Some([bq, bk, bv]) = &layer.qkv_bias {
                q = q.broadcast_add(bq)?;
                k = k.broadcast_add(bk)?;
                v = v.broadcast_add(bv)?;
            }
            let q = rope(q, cfg.num_heads)?;
            let k = rope(k, cfg.num_kv_heads)?;
            let v = v.reshape((t, cfg.num_kv_heads, cfg.head_dim))?;
            kv.k[li].inplace_op2(&k, &KvWrite(&batch.meta))?;
            kv.v[li].inplace_op2(&v, &KvWrite(&batch.meta))?;
            let attn = q.apply_op3_no_bwd(&kv.k[li], &kv.v[li], &attention)?;
            x = (x + layer.o.forward(&attn)?)?;

            let xn = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, eps)?;
            let [gate, up]: [Tensor; 2] = QWeight::forward_many(&[&layer.gate, &layer.up], &xn)?
                .try_into()
                .map_err(|_| candle_core::Error::Msg("two projections".into()))?;
            let gate = candle_nn::ops::silu(&gate)?;
            x = (x + layer.down.forward(&(gate * up)?)?)?;
        }
        if batch.sample_rows.is_empty() {
            return Tensor::zeros((0, cfg.vocab_size), candle_core::DType::F32, &self.device);
        }
        let rows: Vec<u32> = batch.sample_rows.iter().map(|&r| r as u32).collect();
        let rows = Tensor::from_vec(rows, batch.sample_rows.len(), &self.device)?;
        let last = candle_nn::ops::rms_norm(&x.index_select(&rows, 0)?, &self.norm, eps)?;
        match &self.lm_head {
            LmHead::Separate(w) => w.forward(&last),
            LmHead::Tied => self.embed.forward(&last),
        }
    }
}
