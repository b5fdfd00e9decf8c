//! The device-generic forward pass: the llama-family computation of
//! [`CpuModel::forward`](crate::model::CpuModel::forward) in candle ops only, so that it runs
//! wherever candle does (CUDA, and the CPU for tests). The CPU fast path (`crate::ops`) stays
//! behind its own module; nothing here calls it. Built from the same [`Weights`], which it
//! consumes: the host copy is freed once the device holds the dense tensors.
//!
//! - Weights: every matrix dequantized once, at load, into a dense f32 tensor on the device
//!   (cuBLAS matmuls; 4 bytes per weight, so about 0.6 GB for a 135M model).
//! - KV cache: the same paged tensors as the CPU path, viewed as rows of `head_dim` and written
//!   with `scatter_set` at each token's rows (one per KV head: [`CacheRows`]).
//! - Attention: per sequence, its cached K/V rows are gathered through its block table
//!   (`index_select` on the rows of positions `0..end`), then causal softmax attention with
//!   grouped-query heads repeated. Correct for any batch mix; a paged-attention kernel that reads
//!   blocks in place is the next step.
//! - Only the sampled rows' logits leave the device.
//! - Gemma 3's extra norms, GELU, scaled embeddings and sliding windows (a mask per window size)
//!   are read from the same [`Features`](crate::config::Features) as on the CPU path.

use crate::config::{Activation, ModelConfig};
use crate::kv::{CacheRows, KvCache};
use crate::model::PackedBatch;
use crate::weights::{LmHead, Weights};
use candle_core::{DType, Device, Tensor};

struct DenseLayer {
    attn_norm: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    qkv_bias: Option<[Tensor; 3]>,
    /// Per-head Q and K norms.
    head_norms: Option<[Tensor; 2]>,
    o: Tensor,
    /// Norms after attention and after the MLP.
    post_norms: Option<[Tensor; 2]>,
    ffn_norm: Tensor,
    gate: Tensor,
    up: Tensor,
    down: Tensor,
}

/// The model's weights as dense device tensors, and the forward pass over them.
pub struct DeviceModel {
    cfg: ModelConfig,
    /// The weight type the model was loaded in (reported; the device holds f32).
    source_dtype: &'static str,
    embed: Tensor,
    layers: Vec<DenseLayer>,
    norm: Tensor,
    /// `(vocab, hidden)`; the embedding matrix when tied.
    lm_head: Tensor,
    inv_freq: Tensor,
    /// The sliding-window layers' own frequencies, when they have their own RoPE base.
    inv_freq_local: Option<Tensor>,
    device: Device,
}

impl DeviceModel {
    /// Moves `weights` to `device`, dequantized.
    pub fn new(weights: Weights, device: &Device) -> candle_core::Result<Self> {
        let vec = |v: &[f32]| Tensor::new(v, device);
        let pair = |p: &Option<[Vec<f32>; 2]>| -> candle_core::Result<Option<[Tensor; 2]>> {
            p.as_ref().map(|[a, b]| Ok([vec(a)?, vec(b)?])).transpose()
        };
        let source_dtype = weights.dtype_name();
        let layers = weights
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
                    head_norms: pair(&l.head_norms)?,
                    o: l.o.to_tensor(device)?,
                    post_norms: pair(&l.post_norms)?,
                    ffn_norm: vec(&l.ffn_norm)?,
                    gate: l.gate.to_tensor(device)?,
                    up: l.up.to_tensor(device)?,
                    down: l.down.to_tensor(device)?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let embed = weights.embed.to_tensor(device)?;
        let lm_head = match &weights.lm_head {
            LmHead::Separate(w) => w.to_tensor(device)?,
            LmHead::Tied => embed.clone(),
        };
        let inv_freq_local = weights.rope.local.as_deref().map(vec).transpose()?;
        Ok(DeviceModel {
            source_dtype,
            embed,
            layers,
            norm: vec(&weights.norm)?,
            lm_head,
            inv_freq: vec(&weights.rope.global)?,
            inv_freq_local,
            device: device.clone(),
            cfg: weights.cfg,
        })
    }

    pub fn cfg(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn source_dtype(&self) -> &'static str {
        self.source_dtype
    }

    /// Runs the batch, writing its K/V into `kv` (on this model's device), and returns the
    /// `(sample_rows, vocab)` logits.
    pub fn forward(&self, batch: &PackedBatch, kv: &mut KvCache) -> candle_core::Result<Tensor> {
        let cfg = &self.cfg;
        let features = cfg.architecture.features();
        let dev = &self.device;
        let t = batch.tokens.len();
        let (heads, kv_heads, d) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let eps = cfg.rms_eps as f32;
        let meta = &batch.meta;

        let tokens = Tensor::from_slice(&batch.tokens, t, dev)?;
        let positions: Vec<f32> = meta.positions.iter().map(|&p| p as f32).collect();
        let positions = Tensor::from_vec(positions, (t, 1), dev)?;
        let tables = |inv_freq: &Tensor| -> candle_core::Result<(Tensor, Tensor)> {
            let angles = positions.broadcast_mul(&inv_freq.unsqueeze(0)?)?;
            Ok((angles.cos()?, angles.sin()?))
        };
        let global = tables(&self.inv_freq)?;
        let local = self.inv_freq_local.as_ref().map(tables).transpose()?;
        let layout = CacheRows {
            block_size: meta.block_size,
            kv_heads,
        };
        let rows: Vec<u32> = (meta.slots.iter())
            .flat_map(|&s| layout.of_slot(s).map(|r| r as u32))
            .collect();
        let token_rows = Tensor::from_vec(rows, (t * kv_heads, 1), dev)?
            .broadcast_as((t * kv_heads, d))?
            .contiguous()?;
        let spans = sequence_spans(meta);
        let window = cfg.local_attention.map(|l| l.window);
        let gathers = spans
            .iter()
            .map(|s| context_rows(meta, layout, s, window, dev))
            .collect::<candle_core::Result<Vec<_>>>()?;

        let mut x = self.embed.index_select(&tokens, 0)?;
        if features.embed_scale {
            x = (x * f64::from((cfg.hidden_size as f32).sqrt()))?;
        }
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
            if let Some([qn, kn]) = &l.head_norms {
                q = head_norm(&q, qn, d, eps)?;
                k = head_norm(&k, kn, d, eps)?;
            }
            let windowed = cfg.layer_window(li).is_some();
            let (cos, sin) = match (&local, windowed) {
                (Some(local), true) => local,
                _ => &global,
            };
            let q = rope(&q, heads, d, cos, sin)?;
            let k = rope(&k, kv_heads, d, cos, sin)?;
            let (kc, vc) = (&kv.k[li], &kv.v[li]);
            // One row per (slot, KV head): the cache's `[blocks, kv_heads, block_size, d]`.
            let flat = |c: &Tensor| c.reshape(((), d));
            let (kflat, vflat) = (flat(kc)?, flat(vc)?);
            let per_head =
                |x: &Tensor, c: &Tensor| x.reshape((t * kv_heads, d))?.to_dtype(c.dtype());
            kflat.scatter_set(&token_rows, &per_head(&k, kc)?, 0)?;
            vflat.scatter_set(&token_rows, &per_head(&v, vc)?, 0)?;

            let mut outs = Vec::with_capacity(spans.len());
            for (span, ctx) in spans.iter().zip(&gathers) {
                let qs = q.narrow(0, span.row, span.len)?;
                let gather = |flat: &Tensor| {
                    let rows = flat.index_select(&ctx.rows, 0)?;
                    rows.reshape(((), kv_heads * d))?.to_dtype(DType::F32)
                };
                let (ks, vs) = (gather(&kflat)?, gather(&vflat)?);
                let mask = match (&ctx.windowed, windowed) {
                    (Some(mask), true) => mask,
                    _ => &ctx.causal,
                };
                let shape = (heads, kv_heads, d, cfg.attention_scale);
                outs.push(attend(&qs, &ks, &vs, mask, shape)?);
            }
            let mut attn = Tensor::cat(&outs, 0)?.matmul(&l.o.t()?)?;
            if let Some([post_attn, _]) = &l.post_norms {
                attn = candle_nn::ops::rms_norm(&attn, post_attn, eps)?;
            }
            x = (x + attn)?;

            let xn = candle_nn::ops::rms_norm(&x, &l.ffn_norm, eps)?;
            let gate = xn.matmul(&l.gate.t()?)?;
            let gate = match features.activation {
                Activation::Silu => candle_nn::ops::silu(&gate)?,
                Activation::GeluTanh => gate.gelu()?,
            };
            let up = xn.matmul(&l.up.t()?)?;
            let mut mlp = (gate * up)?.matmul(&l.down.t()?)?;
            if let Some([_, post_ffn]) = &l.post_norms {
                mlp = candle_nn::ops::rms_norm(&mlp, post_ffn, eps)?;
            }
            x = (x + mlp)?;
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

/// What one sequence's attention reads: the cache rows of its positions `0..end` (position by
/// position, each position's heads together), and its masks `(len, end)`: causal, and causal
/// within the sliding window when the model has one.
struct Context {
    rows: Tensor,
    causal: Tensor,
    windowed: Option<Tensor>,
}

fn context_rows(
    meta: &crate::ops::AttentionMeta,
    layout: CacheRows,
    s: &Span,
    window: Option<usize>,
    dev: &Device,
) -> candle_core::Result<Context> {
    let bs = meta.block_size;
    let end = s.start + s.len;
    let table = &meta.tables[s.table];
    let rows: Vec<u32> = (0..end)
        .flat_map(|p| {
            layout
                .of_slot(table[p / bs] as usize * bs + p % bs)
                .map(|r| r as u32)
        })
        .collect();
    // Query `i` (at position `start + i`) sees positions `lo..=start + i`.
    let mask = |window: usize| -> candle_core::Result<Tensor> {
        let mask: Vec<f32> = (0..s.len)
            .flat_map(|i| {
                let q = s.start + i;
                (0..end).map(move |p| {
                    if p > q || q - p >= window {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
            })
            .collect();
        Tensor::from_vec(mask, (s.len, end), dev)
    };
    Ok(Context {
        rows: Tensor::from_vec(rows, end * layout.kv_heads, dev)?,
        causal: mask(usize::MAX)?,
        windowed: window.map(mask).transpose()?,
    })
}

/// RMSNorm over each `d`-wide head of `(t, heads * d)` rows.
fn head_norm(x: &Tensor, weight: &Tensor, d: usize, eps: f32) -> candle_core::Result<Tensor> {
    let (t, width) = x.dims2()?;
    candle_nn::ops::rms_norm(&x.reshape((t * width / d, d))?, weight, eps)?.reshape((t, width))
}

/// Masked attention of `q` `(n, heads * d)` over `k`, `v` `(end, kv_heads * d)`; `shape` is
/// `(heads, kv_heads, d, scale)`.
fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    (heads, kv_heads, d, scale): (usize, usize, usize, f32),
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
    let scores = (q.matmul(&k.transpose(1, 2)?.contiguous()?)? * f64::from(scale))?;
    let scores = scores.broadcast_add(&mask.unsqueeze(0)?)?;
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    probs.matmul(&v)?.transpose(0, 1)?.reshape((n, heads * d))
}
