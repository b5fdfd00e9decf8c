//! The device-generic forward pass: the llama-family computation of [`Model::forward`] in candle
//! ops only, so that it runs wherever candle does (CUDA, and the CPU for tests). The CPU fast
//! path (`crate::ops`) stays behind its own module; nothing here calls it.
//!
//! - Weights: every matrix dequantized once, at load, into a dense f32 tensor on the device
//!   (cuBLAS matmuls; 4 bytes per weight, so about 0.6 GB for a 135M model).
//! - KV cache: the same paged tensors as the CPU path, written with `scatter_set` at each token's
//!   slot.
//! - Attention: per sequence, its cached K/V rows are gathered through its block table
//!   (`index_select` on the slots of positions `0..end`), then causal softmax attention with
//!   grouped-query heads repeated. Correct for any batch mix; a paged-attention kernel that reads
//!   blocks in place is the next step.
//! - Only the sampled rows' logits leave the device.

use crate::kv::KvCache;
use crate::model::{LmHead, Model, PackedBatch};
use candle_core::{DType, Device, Tensor};

struct DenseLayer {
    attn_norm: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    qkv_bias: Option<[Tensor; 3]>,
    o: Tensor,
    ffn_norm: Tensor,
    gate: Tensor,
    up: Tensor,
    down: Tensor,
}

/// The model's weights as dense device tensors, and the forward pass over them.
pub struct DeviceModel {
    embed: Tensor,
    layers: Vec<DenseLayer>,
    norm: Tensor,
    /// `(vocab, hidden)`; the embedding matrix when tied.
    lm_head: Tensor,
    inv_freq: Tensor,
    device: Device,
}

impl DeviceModel {
    /// Copies `model`'s weights to `device`, dequantized.
    pub fn new(model: &Model, device: &Device) -> candle_core::Result<Self> {
        let vec = |t: &Tensor| t.to_dtype(DType::F32)?.to_device(device);
        let layers = model
            .layers
            .iter()
            .map(|l| {
                Ok(DenseLayer {
                    attn_norm: vec(&l.attn_norm)?,
                    q: l.q.to_tensor(device)?,
                    k: l.k.to_tensor(device)?,
                    v: l.v.to_tensor(device)?,
                    qkv_bias: match &l.qkv_bias {
                        Some([a, b, c]) => Some([vec(a)?, vec(b)?, vec(c)?]),
                        None => None,
                    },
                    o: l.o.to_tensor(device)?,
                    ffn_norm: vec(&l.ffn_norm)?,
                    gate: l.gate.to_tensor(device)?,
                    up: l.up.to_tensor(device)?,
                    down: l.down.to_tensor(device)?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let embed = model.embed.to_tensor(device)?;
        let lm_head = match &model.lm_head {
            LmHead::Separate(w) => w.to_tensor(device)?,
            LmHead::Tied => embed.clone(),
        };
        let d = model.cfg.head_dim;
        let inv_freq: Vec<f32> = (0..d / 2)
            .map(|i| 1.0 / model.cfg.rope_theta.powf((2 * i) as f32 / d as f32))
            .collect();
        Ok(DeviceModel {
            embed,
            layers,
            norm: vec(&model.norm)?,
            lm_head,
            inv_freq: Tensor::new(inv_freq, device)?,
            device: device.clone(),
        })
    }

    /// Runs the batch, writing its K/V into `kv` (on this model's device), and returns the
    /// `(sample_rows, vocab)` logits.
    pub fn forward(
        &self,
        model: &Model,
        batch: &PackedBatch,
        kv: &mut KvCache,
    ) -> candle_core::Result<Tensor> {
        let cfg = &model.cfg;
        let dev = &self.device;
        let t = batch.tokens.len();
        let (heads, kv_heads, d) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let eps = cfg.rms_eps as f32;
        let meta = &batch.meta;

        let tokens = Tensor::from_slice(&batch.tokens, t, dev)?;
        let positions: Vec<f32> = meta.positions.iter().map(|&p| p as f32).collect();
        let angles = Tensor::from_vec(positions, (t, 1), dev)?
            .broadcast_mul(&self.inv_freq.unsqueeze(0)?)?;
        let (cos, sin) = (angles.cos()?, angles.sin()?);
        let slots: Vec<u32> = meta.slots.iter().map(|&s| s as u32).collect();
        let slots = Tensor::from_vec(slots, (t, 1), dev)?
            .broadcast_as((t, kv_heads * d))?
            .contiguous()?;
        let spans = sequence_spans(meta);
        let gathers = spans
            .iter()
            .map(|s| context_slots(meta, s, dev))
            .collect::<candle_core::Result<Vec<_>>>()?;

        let mut x = self.embed.index_select(&tokens, 0)?;
        for (li, l) in self.layers.iter().enumerate() {
            let xn = candle_nn::ops::rms_norm(&x, &l.attn_norm, eps)?;
            let mut q = xn.matmul(&l.q.t()?)?;
            let mut k = xn.matmul(&l.k.t()?)?;
            let mut v = xn.matmul(&l.v.t()?)?;
            if let Some([bq, bk, bv]) = &l.qkv_bias {
                q = q.broadcast_add(bq)?;
                k = k.broadcast_add(bk)?;
                v = v.broadcast_add(bv)?;
            }
            let q = rope(&q, heads, d, &cos, &sin)?;
            let k = rope(&k, kv_heads, d, &cos, &sin)?;
            let (kc, vc) = (&kv.k[li], &kv.v[li]);
            let flat = |c: &Tensor| c.reshape(((), kv_heads * d));
            let (kflat, vflat) = (flat(kc)?, flat(vc)?);
            kflat.scatter_set(&slots, &k.to_dtype(kc.dtype())?, 0)?;
            vflat.scatter_set(&slots, &v.to_dtype(vc.dtype())?, 0)?;

            let mut outs = Vec::with_capacity(spans.len());
            for (span, (ctx, mask)) in spans.iter().zip(&gathers) {
                let qs = q.narrow(0, span.row, span.len)?;
                let ks = kflat.index_select(ctx, 0)?.to_dtype(DType::F32)?;
                let vs = vflat.index_select(ctx, 0)?.to_dtype(DType::F32)?;
                outs.push(attend(&qs, &ks, &vs, mask, heads, kv_heads, d)?);
            }
            let attn = Tensor::cat(&outs, 0)?;
            x = (x + attn.matmul(&l.o.t()?)?)?;

            let xn = candle_nn::ops::rms_norm(&x, &l.ffn_norm, eps)?;
            let gate = candle_nn::ops::silu(&xn.matmul(&l.gate.t()?)?)?;
            let up = xn.matmul(&l.up.t()?)?;
            x = (x + (gate * up)?.matmul(&l.down.t()?)?)?;
        }
        let rows: Vec<u32> = batch.sample_rows.iter().map(|&r| r as u32).collect();
        let rows = Tensor::from_vec(rows, batch.sample_rows.len(), dev)?;
        let last = x.index_select(&rows, 0)?;
        let normed = candle_nn::ops::rms_norm(&last, &self.norm, eps)?;
        normed.matmul(&self.lm_head.t()?)
    }
}

/// RoPE in the rotate-half layout (the loader's row order) on `(t, heads * d)` rows.
fn rope(
    x: &Tensor,
    heads: usize,
    d: usize,
    cos: &Tensor,
    sin: &Tensor,
) -> candle_core::Result<Tensor> {
    let t = x.dim(0)?;
    // candle's kernel takes (batch, heads, tokens, d) with tables (tokens, d / 2).
    let x = x
        .reshape((t, heads, d))?
        .transpose(0, 1)?
        .unsqueeze(0)?
        .contiguous()?;
    let y = candle_nn::rotary_emb::rope(&x, cos, sin)?;
    y.squeeze(0)?.transpose(0, 1)?.reshape((t, heads * d))
}

/// One sequence's rows in the packed batch.
struct Span {
    /// Index of its block table.
    table: usize,
    /// First packed row.
    row: usize,
    len: usize,
    /// Absolute position of the first row.
    start: usize,
}

fn sequence_spans(meta: &crate::ops::AttentionMeta) -> Vec<Span> {
    let mut spans: Vec<Span> = Vec::new();
    for (row, (&table, &pos)) in meta.token_table.iter().zip(&meta.positions).enumerate() {
        match spans.last_mut() {
            Some(s) if s.table == table => s.len += 1,
            _ => spans.push(Span {
                table,
                row,
                len: 1,
                start: pos,
            }),
        }
    }
    spans
}

/// The cache slots of positions `0..end` of a sequence, and its causal mask `(len, end)`.
fn context_slots(
    meta: &crate::ops::AttentionMeta,
    s: &Span,
    dev: &Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let bs = meta.block_size;
    let end = s.start + s.len;
    let table = &meta.tables[s.table];
    let slots: Vec<u32> = (0..end)
        .map(|p| table[p / bs] * bs as u32 + (p % bs) as u32)
        .collect();
    let mask: Vec<f32> = (0..s.len)
        .flat_map(|i| {
            (0..end).map(move |p| {
                if p > s.start + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Ok((
        Tensor::from_vec(slots, end, dev)?,
        Tensor::from_vec(mask, (s.len, end), dev)?,
    ))
}

/// Causal attention of `q` `(n, heads * d)` over `k`, `v` `(end, kv_heads * d)`.
fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    heads: usize,
    kv_heads: usize,
    d: usize,
) -> candle_core::Result<Tensor> {
    let (n, end) = (q.dim(0)?, k.dim(0)?);
    let group = heads / kv_heads;
    let q = q.reshape((n, heads, d))?.transpose(0, 1)?.contiguous()?;
    // Each K/V head serves `group` query heads.
    let expand = |x: &Tensor| -> candle_core::Result<Tensor> {
        x.reshape((end, kv_heads, 1, d))?
            .broadcast_as((end, kv_heads, group, d))?
            .reshape((end, heads, d))?
            .transpose(0, 1)?
            .contiguous()
    };
    let (k, v) = (expand(k)?, expand(v)?);
    let scores = (q.matmul(&k.transpose(1, 2)?.contiguous()?)? * (1.0 / (d as f64).sqrt()))?;
    let scores = scores.broadcast_add(&mask.unsqueeze(0)?)?;
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    probs.matmul(&v)?.transpose(0, 1)?.reshape((n, heads * d))
}
