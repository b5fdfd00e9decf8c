//! Paged attention on the CPU: writing new K/V rows into the block-structured cache, and causal
//! grouped-query attention that reads keys and values in place through each sequence's block table.
//!
//! Batch invariance: a query's output is an online softmax over its keys in position order (all
//! earlier positions, or the last `window` of them), in tiles of [`KEY_TILE`] positions counted
//! from its first key (scores of a tile, one rescale per
//! tile, a vectorisable exponential, then the weighted values in order), with fixed-order dot
//! products; nothing depends on the KV block size, on the other sequences in the batch, or on how
//! the prompt was chunked. Cost: `tokens * heads * context * head_dim` multiply-adds; no gather
//! copies, grouped heads read their shared KV head directly.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, InplaceOp2, Layout, Shape};
use half::f16;
use half::slice::HalfFloatSliceExt;
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
    contiguous(v, l, what)
}

fn contiguous<'a, T>(v: &'a [T], l: &Layout, what: &str) -> candle_core::Result<&'a [T]> {
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("paged attention: {what} must be contiguous");
    };
    Ok(&v[a..b])
}

/// An element type of the KV cache: f32, or f16 (half the memory, converted on read).
pub trait KvElem: Copy + Send + Sync + 'static {
    fn from_f32(v: f32) -> Self;
    /// `data[off..off + dim]` as f32: borrowed when already f32, else converted into `buf`.
    fn row<'a>(data: &'a [Self], off: usize, dim: usize, buf: &'a mut [f32]) -> &'a [f32];
}

impl KvElem for f32 {
    fn from_f32(v: f32) -> Self {
        v
    }
    #[inline]
    fn row<'a>(data: &'a [f32], off: usize, dim: usize, _: &'a mut [f32]) -> &'a [f32] {
        &data[off..off + dim]
    }
}

impl KvElem for f16 {
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
    #[inline]
    fn row<'a>(data: &'a [f16], off: usize, dim: usize, buf: &'a mut [f32]) -> &'a [f32] {
        let buf = &mut buf[..dim];
        data[off..off + dim].convert_to_f32_slice(buf);
        buf
    }
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
        fn write<T: KvElem>(cache: &mut [T], cl: &Layout, src: &[f32], slots: &[usize]) {
            let row = cl.shape().dims()[2..].iter().product::<usize>();
            let start = cl.start_offset();
            for (t, &slot) in slots.iter().enumerate() {
                let dst = start + slot * row;
                for (d, &x) in cache[dst..dst + row].iter_mut().zip(&src[t * row..]) {
                    *d = T::from_f32(x);
                }
            }
        }
        let src = f32_slice(src, sl, "new K/V")?;
        match cache {
            CpuStorage::F32(c) => write(c, cl, src, &self.0.slots),
            CpuStorage::F16(c) => write(c, cl, src, &self.0.slots),
            other => candle_core::bail!("paged attention: a {:?} cache", other.dtype()),
        }
        Ok(())
    }
}

/// Causal attention of `(tokens, heads, head_dim)` queries over the paged K and V caches, giving
/// `(tokens, heads * head_dim)`.
pub struct PagedAttention<'a> {
    pub meta: &'a AttentionMeta,
    pub scale: f32,
    /// A sliding window: a query at position `p` sees keys `p + 1 - window ..= p` only.
    pub window: Option<usize>,
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
        match (ks, vs) {
            (CpuStorage::F32(k), CpuStorage::F32(v)) => {
                let (k, v) = (contiguous(k, kl, "keys")?, contiguous(v, vl, "values")?);
                self.run(q, ql, k, kl, v)
            }
            (CpuStorage::F16(k), CpuStorage::F16(v)) => {
                let (k, v) = (contiguous(k, kl, "keys")?, contiguous(v, vl, "values")?);
                self.run(q, ql, k, kl, v)
            }
            _ => candle_core::bail!(
                "paged attention: K/V caches of {:?} and {:?}",
                ks.dtype(),
                vs.dtype()
            ),
        }
    }
}

impl PagedAttention<'_> {
    fn run<T: KvElem>(
        &self,
        q: &[f32],
        ql: &Layout,
        k: &[T],
        kl: &Layout,
        v: &[T],
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (tokens, heads, dim) = ql.shape().dims3()?;
        let (_, block_size, kv_heads, kdim) = kl.shape().dims4()?;
        if kdim != dim || heads % kv_heads != 0 || block_size != self.meta.block_size {
            candle_core::bail!(
                "paged attention: queries {:?} do not fit the cache {:?}",
                ql.shape(),
                kl.shape()
            );
        }
        if dim > MAX_HEAD_DIM {
            candle_core::bail!("paged attention: head_dim {dim} is over {MAX_HEAD_DIM}");
        }
        let group = heads / kv_heads;
        let meta = self.meta;
        let rows = key_rows(meta, kv_heads)?;
        let window = self.window.unwrap_or(usize::MAX);
        let mut out = vec![0f32; tokens * heads * dim];
        out.par_chunks_mut(dim).enumerate().for_each(|(i, o)| {
            let (t, h) = (i / heads, i % heads);
            let end = meta.positions[t] + 1;
            let keys = &rows[meta.token_table[t]][end.saturating_sub(window)..end];
            let q = &q[i * dim..(i + 1) * dim];
            let kvh = h / group;
            match dim {
                64 => attend::<T, 64>(q, keys, kvh, k, v, self.scale, o),
                128 => attend::<T, 128>(q, keys, kvh, k, v, self.scale, o),
                256 => attend::<T, 256>(q, keys, kvh, k, v, self.scale, o),
                _ => attend::<T, 0>(q, keys, kvh, k, v, self.scale, o),
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((tokens, heads * dim))))
    }
}

/// Largest head dimension the kernel's stack buffers hold.
const MAX_HEAD_DIM: usize = 256;

/// For each sequence of the batch, the cache row (`slot * kv_heads`) of each of its key
/// positions, as far as its furthest query in this batch looks; computed once per call so that
/// the inner loops do no division.
fn key_rows(meta: &AttentionMeta, kv_heads: usize) -> candle_core::Result<Vec<Vec<usize>>> {
    let mut keys = vec![0usize; meta.tables.len()];
    for (&table, &pos) in meta.token_table.iter().zip(&meta.positions) {
        keys[table] = keys[table].max(pos + 1);
    }
    let bs = meta.block_size;
    meta.tables
        .iter()
        .zip(keys)
        .map(|(table, n)| {
            if n.div_ceil(bs) > table.len() {
                candle_core::bail!(
                    "paged attention: {n} positions need {} blocks, the table has {}",
                    n.div_ceil(bs),
                    table.len()
                );
            }
            Ok((0..n)
                .map(|p| (table[p / bs] as usize * bs + p % bs) * kv_heads)
                .collect())
        })
        .collect()
}

/// Keys per online-softmax tile. Tiles start every this many keys from a query's first key,
/// whatever the cache's block size.
const KEY_TILE: usize = 32;

/// Online-softmax attention of one query over the keys whose cache rows are `keys` (in position
/// order), reading KV head `kvh`. `D` is the head dimension when known at compile time (so that
/// the accumulator stays in registers), or 0.
fn attend<T: KvElem, const D: usize>(
    q: &[f32],
    keys: &[usize],
    kvh: usize,
    k: &[T],
    v: &[T],
    scale: f32,
    out: &mut [f32],
) {
    let dim = if D == 0 { q.len() } else { D };
    let q = &q[..dim];
    let mut acc_buf = [0f32; MAX_HEAD_DIM];
    let acc = &mut acc_buf[..dim];
    let mut max = f32::NEG_INFINITY;
    let mut denom = 0f32;
    let mut w = [0f32; KEY_TILE];
    let mut kbuf = [[0f32; MAX_HEAD_DIM]; 4];
    let mut vbuf = [0f32; MAX_HEAD_DIM];
    for tile in keys.chunks(KEY_TILE) {
        let w = &mut w[..tile.len()];
        // Four keys at a time: four independent accumulator chains (same bits as one by one).
        let mut j = 0;
        while j + 4 <= tile.len() {
            let [b0, b1, b2, b3] = &mut kbuf;
            let off = |i: usize| (tile[j + i] + kvh) * dim;
            let ks = [
                T::row(k, off(0), dim, b0),
                T::row(k, off(1), dim, b1),
                T::row(k, off(2), dim, b2),
                T::row(k, off(3), dim, b3),
            ];
            for (s, d) in w[j..j + 4].iter_mut().zip(dots(q, ks)) {
                *s = d * scale;
            }
            j += 4;
        }
        for (s, &row) in w[j..].iter_mut().zip(&tile[j..]) {
            let off = (row + kvh) * dim;
            *s = dots(q, [T::row(k, off, dim, &mut kbuf[0])])[0] * scale;
        }
        let tile_max = w.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
        if tile_max > max {
            let rescale = (max - tile_max).exp();
            denom *= rescale;
            acc.iter_mut().for_each(|o| *o *= rescale);
            max = tile_max;
        }
        for s in w.iter_mut() {
            *s = exp(*s - max);
        }
        for (&wj, &row) in w.iter().zip(tile) {
            denom += wj;
            let off = (row + kvh) * dim;
            for (o, &x) in acc.iter_mut().zip(T::row(v, off, dim, &mut vbuf)) {
                *o += wj * x;
            }
        }
    }
    let inv = 1.0 / denom;
    for (o, a) in out.iter_mut().zip(acc.iter()) {
        *o = a * inv;
    }
}

/// `e^x` for `x <= 0` (softmax weights), branch-free so that a loop over a tile vectorises:
/// Cephes' single-precision polynomial after a reduction by `ln 2`, about 1e-7 relative error;
/// results below about `e^-87.5` (under f32's normal range) are zero.
#[inline]
fn exp(x: f32) -> f32 {
    let x = x.clamp(-88.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * (r * r) + r + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// Dot products of `a` with each of `bs`, each with eight fixed accumulator lanes: vectorisable,
/// always summed in one order, and several at once so that their add chains overlap.
#[inline]
fn dots<const N: usize>(a: &[f32], bs: [&[f32]; N]) -> [f32; N] {
    let mut acc = [[0f32; 8]; N];
    let (a8, a_tail) = a.as_chunks::<8>();
    let b8: [&[[f32; 8]]; N] = std::array::from_fn(|i| bs[i][..a.len()].as_chunks::<8>().0);
    for (c, x) in a8.iter().enumerate() {
        for (acc, b) in acc.iter_mut().zip(&b8) {
            for l in 0..8 {
                acc[l] += x[l] * b[c][l];
            }
        }
    }
    std::array::from_fn(|i| {
        let acc = &acc[i];
        let mut tail = 0f32;
        for (x, y) in a_tail.iter().zip(&bs[i][a8.len() * 8..]) {
            tail += x * y;
        }
        ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
    })
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
        attend::<f32, 0>(&q, &[0], 0, &k, &v, 1.0, &mut out);
        assert_eq!(out, [3.0, -2.0]);
    }

    #[test]
    fn attention_weights_follow_softmax_of_scores() {
        // Scores 0 and ln(3): weights 1/4 and 3/4.
        let q = [1.0];
        let k = [0.0, 3f32.ln()];
        let v = [4.0, 8.0];
        let mut out = [0f32; 1];
        attend::<f32, 0>(&q, &[0, 1], 0, &k, &v, 1.0, &mut out);
        assert!((out[0] - 7.0).abs() < 1e-5, "{}", out[0]);
    }

    #[test]
    fn a_window_limits_each_query_to_its_last_keys() {
        use candle_core::{DType, Device, Tensor};
        // One sequence of 6 positions in blocks of 2 (table [2, 0, 1]), one head of dim 2.
        let (n, bs) = (6usize, 2usize);
        let table = vec![2u32, 0, 1];
        let slots = (0..n)
            .map(|p| table[p / bs] as usize * bs + p % bs)
            .collect();
        let meta = AttentionMeta {
            positions: (0..n).collect(),
            token_table: vec![0; n],
            tables: vec![table],
            slots,
            block_size: bs,
        };
        let row = |p: usize, a: f32, b: f32| [a + p as f32 * b, 1.0 - p as f32 * 0.2];
        let keys: Vec<f32> = (0..n).flat_map(|p| row(p, 0.1, 0.3)).collect();
        let vals: Vec<f32> = (0..n).flat_map(|p| [p as f32, -(p as f32) * 0.5]).collect();
        let queries: Vec<f32> = (0..n).flat_map(|p| row(p, -0.4, 0.25)).collect();
        let dev = Device::Cpu;
        let (kc, vc) = (
            Tensor::zeros((3, bs, 1, 2), DType::F32, &dev).unwrap(),
            Tensor::zeros((3, bs, 1, 2), DType::F32, &dev).unwrap(),
        );
        for (cache, rows) in [(&kc, &keys), (&vc, &vals)] {
            let src = Tensor::from_slice(rows, (n, 1, 2), &dev).unwrap();
            cache.inplace_op2(&src, &KvWrite(&meta)).unwrap();
        }
        let q = Tensor::from_slice(&queries, (n, 1, 2), &dev).unwrap();
        for window in [Some(1), Some(3), Some(6), Some(100), None] {
            let op = PagedAttention {
                meta: &meta,
                scale: 0.7,
                window,
            };
            let out = q.apply_op3_no_bwd(&kc, &vc, &op).unwrap();
            let out = out.to_vec2::<f32>().unwrap();
            for p in 0..n {
                let lo = p + 1 - window.unwrap_or(usize::MAX).min(p + 1);
                let score = |j: usize| {
                    0.7 * (queries[2 * p] * keys[2 * j] + queries[2 * p + 1] * keys[2 * j + 1])
                };
                let weights: Vec<f64> = (lo..=p).map(|j| (score(j) as f64).exp()).collect();
                let total: f64 = weights.iter().sum();
                for d in 0..2 {
                    let want: f64 = (lo..=p)
                        .zip(&weights)
                        .map(|(j, w)| w * vals[2 * j + d] as f64)
                        .sum::<f64>()
                        / total;
                    let got = out[p][d] as f64;
                    assert!(
                        (got - want).abs() < 1e-5,
                        "window {window:?}, position {p}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn exp_matches_the_standard_library() {
        for i in 0..=2000 {
            let x = -(i as f32) * 0.05;
            let (got, want) = (exp(x), x.exp());
            assert!(
                (got - want).abs() <= want * 2e-7 + 1e-37,
                "{x}: {got} vs {want}"
            );
        }
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-1000.0), 0.0);
    }

    #[test]
    fn tiles_give_the_same_result_as_one_key_at_a_time() {
        // 70 keys span three tiles; compare with a direct softmax.
        let dim = 8;
        let k: Vec<f32> = (0..70 * dim)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 3.0)
            .collect();
        let v: Vec<f32> = (0..70 * dim)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) / 2.0)
            .collect();
        let q: Vec<f32> = (0..dim).map(|i| i as f32 / 4.0 - 1.0).collect();
        let mut out = vec![0f32; dim];
        let rows: Vec<usize> = (0..70).collect();
        attend::<f32, 8>(&q, &rows, 0, &k, &v, 0.5, &mut out);
        let scores: Vec<f64> = (0..70)
            .map(|p| {
                (0..dim)
                    .map(|d| (q[d] * k[p * dim + d]) as f64)
                    .sum::<f64>()
                    * 0.5
            })
            .collect();
        let m = scores.iter().cloned().fold(f64::MIN, f64::max);
        let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
        for d in 0..dim {
            let want: f64 = (0..70)
                .map(|p| (scores[p] - m).exp() / z * v[p * dim + d] as f64)
                .sum();
            assert!(
                (out[d] as f64 - want).abs() < 1e-4,
                "{d}: {} vs {want}",
                out[d]
            );
        }
    }

    #[test]
    fn dot_handles_tails_and_groups_do_not_change_bits() {
        let a: Vec<f32> = (0..11).map(|i| i as f32).collect();
        assert_eq!(
            dots(&a, [&a])[0],
            (0..11).map(|i| (i * i) as f32).sum::<f32>()
        );
        let bs: Vec<Vec<f32>> = (0..4)
            .map(|j| {
                (0..70)
                    .map(|i| ((i * 31 + j * 7) % 13) as f32 / 3.1 - 2.0)
                    .collect()
            })
            .collect();
        let q: Vec<f32> = (0..70).map(|i| (i % 9) as f32 / 7.0 - 0.5).collect();
        let four = dots(&q, std::array::from_fn::<_, 4, _>(|j| bs[j].as_slice()));
        for j in 0..4 {
            assert_eq!(four[j].to_bits(), dots(&q, [bs[j].as_slice()])[0].to_bits());
        }
    }
}
