//! Paged attention on the CPU: writing new K/V rows into the block-structured cache, and causal
//! grouped-query attention that reads keys and values in place through each sequence's block table.
//!
//! Batch invariance: a query's output is an online softmax over its keys taken one by one in
//! position order, with fixed-order dot products; nothing depends on the block size, on the other
//! sequences in the batch, or on how the prompt was chunked. Cost: `tokens * heads * context *
//! head_dim` multiply-adds; no gather copies, grouped heads read their shared KV head directly.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, InplaceOp2, Layout, Shape};
use rayon::prelude::*;

/// Where each packed token's attention looks: its absolute position and its sequence's table.
#[derive(Debug, Default)]
pub struct AttentionMeta {
    /// Absolute position of each packed token.
    pub positions: Vec<usize>,
    /// Index into `tables` of each packed token's sequence.
    pub token_table: Vec<usize>,
    /// Block table of each sequence in the batch.
    pub tables: Vec<Vec<u32>>,
    /// Cache slot (`block * block_size + offset`) that each packed token's K/V goes to.
    pub slots: Vec<usize>,
    pub block_size: usize,
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("paged attention: {what} must be f32, got {:?}", s.dtype());
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("paged attention: {what} must be contiguous");
    };
    Ok(&v[a..b])
}

/// Writes `(tokens, kv_heads, head_dim)` rows into a `(blocks, block_size, kv_heads, head_dim)`
/// cache at the slots of [`AttentionMeta::slots`].
pub struct KvWrite<'a>(pub &'a AttentionMeta);

impl InplaceOp2 for KvWrite<'_> {
    fn name(&self) -> &'static str {
        "wick-kv-write"
    }

    fn cpu_fwd(
        &self,
        cache: &mut CpuStorage,
        cl: &Layout,
        src: &CpuStorage,
        sl: &Layout,
    ) -> candle_core::Result<()> {
        let src = f32_slice(src, sl, "new K/V")?;
        let CpuStorage::F32(cache) = cache else {
            candle_core::bail!("paged attention: the cache must be f32");
        };
        let row = cl.shape().dims()[2..].iter().product::<usize>();
        let start = cl.start_offset();
        for (t, &slot) in self.0.slots.iter().enumerate() {
            let dst = start + slot * row;
            cache[dst..dst + row].copy_from_slice(&src[t * row..(t + 1) * row]);
        }
        Ok(())
    }
}

/// Causal attention of `(tokens, heads, head_dim)` queries over the paged K and V caches, giving
/// `(tokens, heads * head_dim)`.
pub struct PagedAttention<'a> {
    pub meta: &'a AttentionMeta,
    pub scale: f32,
}

impl CustomOp3 for PagedAttention<'_> {
    fn name(&self) -> &'static str {
        "wick-paged-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let q = f32_slice(qs, ql, "queries")?;
        let k = f32_slice(ks, kl, "key cache")?;
        let v = f32_slice(vs, vl, "value cache")?;
        let (tokens, heads, dim) = ql.shape().dims3()?;
        let (_, block_size, kv_heads, kdim) = kl.shape().dims4()?;
        if kdim != dim || heads % kv_heads != 0 || block_size != self.meta.block_size {
            candle_core::bail!(
                "paged attention: queries {:?} do not fit the cache {:?}",
                ql.shape(),
                kl.shape()
            );
        }
        let group = heads / kv_heads;
        let meta = self.meta;
        let mut out = vec![0f32; tokens * heads * dim];
        out.par_chunks_mut(dim).enumerate().for_each(|(i, o)| {
            let (t, h) = (i / heads, i % heads);
            let table = &meta.tables[meta.token_table[t]];
            let slot_of = |p: usize| table[p / block_size] as usize * block_size + p % block_size;
            let kvh = h / group;
            attend_one(
                &q[i * dim..(i + 1) * dim],
                (0..=meta.positions[t]).map(|p| (slot_of(p) * kv_heads + kvh) * dim),
                k,
                v,
                self.scale,
                o,
            );
        });
        Ok((CpuStorage::F32(out), Shape::from((tokens, heads * dim))))
    }
}

/// Online-softmax attention of one query over the K/V rows starting at `offsets`, in order.
fn attend_one(
    q: &[f32],
    offsets: impl Iterator<Item = usize>,
    k: &[f32],
    v: &[f32],
    scale: f32,
    out: &mut [f32],
) {
    let dim = q.len();
    let mut max = f32::NEG_INFINITY;
    let mut denom = 0f32;
    out.fill(0.0);
    for off in offsets {
        let s = dot(q, &k[off..off + dim]) * scale;
        if s > max {
            let rescale = (max - s).exp();
            denom *= rescale;
            out.iter_mut().for_each(|o| *o *= rescale);
            max = s;
        }
        let w = (s - max).exp();
        denom += w;
        for (o, &x) in out.iter_mut().zip(&v[off..off + dim]) {
            *o += w * x;
        }
    }
    let inv = 1.0 / denom;
    out.iter_mut().for_each(|o| *o *= inv);
}

/// Dot product with eight fixed accumulator lanes: vectorisable and always summed in one order.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut tail = 0f32;
    for i in chunks * 8..a.len() {
        tail += a[i] * b[i];
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_over_one_key_returns_its_value() {
        let q = [1.0, 0.0];
        let k = [0.5, 0.5];
        let v = [3.0, -2.0];
        let mut out = [0f32; 2];
        attend_one(&q, std::iter::once(0), &k, &v, 1.0, &mut out);
        assert_eq!(out, [3.0, -2.0]);
    }

    #[test]
    fn attention_weights_follow_softmax_of_scores() {
        // Scores 0 and ln(3): weights 1/4 and 3/4.
        let q = [1.0];
        let k = [0.0, 3f32.ln()];
        let v = [4.0, 8.0];
        let mut out = [0f32; 1];
        attend_one(&q, [0usize, 1].into_iter(), &k, &v, 1.0, &mut out);
        assert!((out[0] - 7.0).abs() < 1e-5, "{}", out[0]);
    }

    #[test]
    fn dot_handles_tails() {
        let a: Vec<f32> = (0..11).map(|i| i as f32).collect();
        assert_eq!(dot(&a, &a), (0..11).map(|i| (i * i) as f32).sum::<f32>());
    }
}
