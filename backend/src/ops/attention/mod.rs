//! Paged attention on the CPU: writing new K/V rows into the block-structured cache, and causal
//! grouped-query attention that reads keys and values in place through each sequence's block table.
//!
//! Work is split into tasks of one sequence's tokens (up to [`TOKENS_PER_TASK`]) and one KV head:
//! the query heads of its GQA group at those tokens run together in [`kernel::attend_group`],
//! which reads each tile of keys and values once for all of them (those with the same first key:
//! all of them without a sliding window). A step with fewer such tasks than threads (a decode of
//! a model with one or two KV heads) splits each group's query heads among more tasks.
//!
//! Batch invariance: a query's output is an online softmax over its keys in position order (all
//! earlier positions, or the last `window` of them), in tiles counted from its first key, with
//! fixed-order dot products ([`kernel`] states the numerics); nothing depends on the KV block
//! size, on the other queries it is computed with, on the other sequences in the batch, or on how
//! the prompt was chunked. Cost: `tokens * heads * context * head_dim` multiply-adds; no gather
//! copies, grouped heads read their shared KV head directly. The cache is laid out
//! `[blocks, kv_heads, block_size, head_dim]` ([`crate::kv`]): a task's keys are runs of
//! `block_size` contiguous rows.

use crate::kv::CacheRows;
use crate::team::SharedMut;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, InplaceOp2, Layout, Shape};
use half::f16;
use half::slice::HalfFloatSliceExt;
use kernel::Query;

mod kernel;

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

/// An element type of the KV cache: f32, or f16 (half the memory, widened to f32 on read;
/// the widening is exact).
pub trait KvElem: Copy + Send + Sync + 'static {
    /// Stored narrower than f32 (widened when read).
    const NARROW: bool;
    fn from_f32(v: f32) -> Self;
    /// `dst[i] = from_f32(src[i])` for each element (the same values, converted several at a
    /// time).
    fn store_row(dst: &mut [Self], src: &[f32]);
    /// `data[off..off + dim]` as f32: borrowed when already f32, else converted into `buf`.
    fn row<'a>(data: &'a [Self], off: usize, dim: usize, buf: &'a mut [f32]) -> &'a [f32];
    /// The eight elements at `p`, as f32.
    ///
    /// # Safety
    /// `p` points at eight readable elements, and the CPU has AVX2 and F16C.
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "f16c"
    ))]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
}

impl KvElem for f32 {
    const NARROW: bool = false;
    fn from_f32(v: f32) -> Self {
        v
    }
    fn store_row(dst: &mut [f32], src: &[f32]) {
        dst.copy_from_slice(src);
    }
    #[inline]
    fn row<'a>(data: &'a [f32], off: usize, dim: usize, _: &'a mut [f32]) -> &'a [f32] {
        &data[off..off + dim]
    }
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "f16c"
    ))]
    #[inline]
    unsafe fn load8(p: *const f32) -> std::arch::x86_64::__m256 {
        std::arch::x86_64::_mm256_loadu_ps(p)
    }
}

impl KvElem for f16 {
    const NARROW: bool = true;
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
    fn store_row(dst: &mut [f16], src: &[f32]) {
        dst.convert_from_f32_slice(src);
    }
    #[inline]
    fn row<'a>(data: &'a [f16], off: usize, dim: usize, buf: &'a mut [f32]) -> &'a [f32] {
        let buf = &mut buf[..dim];
        data[off..off + dim].convert_to_f32_slice(buf);
        buf
    }
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "f16c"
    ))]
    #[inline]
    unsafe fn load8(p: *const f16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
    }
}

/// Writes `(tokens, kv_heads, head_dim)` rows into a `(blocks, kv_heads, block_size, head_dim)`
/// cache at the slots of [`AttentionMeta::slots`] (each head's row where [`CacheRows`] puts it).
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
        fn write<T: KvElem>(
            cache: &mut [T],
            start: usize,
            (layout, dim): (CacheRows, usize),
            src: &[f32],
            slots: &[usize],
        ) {
            // Source row `i` is token `i / kv_heads`'s head `i % kv_heads`, as `of_slot` goes.
            let rows = slots.iter().flat_map(|&slot| layout.of_slot(slot));
            for (i, row) in rows.enumerate() {
                let dst = start + row * dim;
                T::store_row(&mut cache[dst..dst + dim], &src[i * dim..(i + 1) * dim]);
            }
        }
        let (_, kv_heads, block_size, dim) = cl.shape().dims4()?;
        if block_size != self.0.block_size {
            candle_core::bail!(
                "paged attention: a cache of blocks of {block_size}, the step's are {}",
                self.0.block_size
            );
        }
        let src = f32_slice(src, sl, "new K/V")?;
        let layout = CacheRows {
            block_size,
            kv_heads,
        };
        let (start, shape) = (cl.start_offset(), (layout, dim));
        match cache {
            CpuStorage::F32(c) => write(c, start, shape, src, &self.0.slots),
            CpuStorage::F16(c) => write(c, start, shape, src, &self.0.slots),
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
        let (_, kv_heads, block_size, kdim) = kl.shape().dims4()?;
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
        let layout = CacheRows {
            block_size,
            kv_heads,
        };
        let rows = key_rows(meta, layout)?;
        let window = self.window.unwrap_or(usize::MAX);
        let mut out = vec![0f32; tokens * heads * dim];
        let shared_out = SharedMut::new(&mut out);
        let tasks = tasks(meta, kv_heads, group, crate::team::threads());
        crate::team::for_each(tasks.len(), |i| {
            let task = &tasks[i];
            let first = |t: usize| (meta.positions[t] + 1).saturating_sub(window);
            // Runs of tokens that share a first key (all of them without a window) share tiles.
            for run in task.tokens.chunk_by(|&a, &b| first(a) == first(b)) {
                let from = first(run[0]);
                let mut queries: Vec<Query> = run
                    .iter()
                    .flat_map(|&t| task.heads.clone().map(move |g| (t, task.kvh * group + g)))
                    .map(|(t, h)| {
                        let i = (t * heads + h) * dim;
                        Query {
                            q: &q[i..i + dim],
                            keys: meta.positions[t] + 1 - from,
                            // SAFETY: `out` holds `tokens * heads * dim` floats; query (t, h)'s
                            // row belongs to one task (its token's sequence and its head's KV
                            // head), and `out` outlives the tasks.
                            out: unsafe { shared_out.slice(i, dim) },
                        }
                    })
                    .collect();
                let keys = &rows[meta.token_table[run[0]]][from..];
                // Where the KV head's rows start from head 0's, in every block.
                let head = layout.row(0, task.kvh, 0);
                kernel::attend_group(&mut queries, keys, head, k, v, self.scale);
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((tokens, heads * dim))))
    }
}

/// Largest head dimension served.
const MAX_HEAD_DIM: usize = 256;

/// Tokens of one sequence per parallel task (times the GQA group's heads, the queries that
/// share each tile of keys and values).
const TOKENS_PER_TASK: usize = 8;

/// One parallel task: some tokens of one sequence (in batch order), one KV head, and some of
/// its GQA group's query heads (`heads`, numbered within the group: all of them unless the step
/// has fewer tasks than threads).
struct Task {
    tokens: Vec<usize>,
    kvh: usize,
    heads: std::ops::Range<usize>,
}

/// The step's attention work: each sequence's tokens, in chunks, times each KV head; where that
/// leaves some of the `threads` idle (a decode of a model with few KV heads), each group's query
/// heads split into as many parts as keep them busy (each part reads the group's keys and
/// values itself; a query's result does not depend on the others it is computed with).
fn tasks(meta: &AttentionMeta, kv_heads: usize, group: usize, threads: usize) -> Vec<Task> {
    let mut by_seq = vec![Vec::new(); meta.tables.len()];
    for (t, &table) in meta.token_table.iter().enumerate() {
        by_seq[table].push(t);
    }
    let chunks: Vec<&[usize]> = by_seq
        .iter()
        .flat_map(|toks: &Vec<usize>| toks.chunks(TOKENS_PER_TASK))
        .collect();
    let whole = chunks.len() * kv_heads;
    let parts = match whole {
        0 => 1,
        n => threads.div_ceil(n).clamp(1, group.max(1)),
    };
    let mut tasks = Vec::with_capacity(whole * parts);
    for chunk in chunks {
        for kvh in 0..kv_heads {
            for p in 0..parts {
                tasks.push(Task {
                    tokens: chunk.to_vec(),
                    kvh,
                    heads: p * group / parts..(p + 1) * group / parts,
                });
            }
        }
    }
    tasks
}

/// For each sequence of the batch, KV head 0's cache row ([`CacheRows`]) of each of its key
/// positions, as far as its furthest query in this batch looks; computed once per call (block
/// by block, without a division per key) so that the inner loops do no division.
fn key_rows(meta: &AttentionMeta, layout: CacheRows) -> candle_core::Result<Vec<Vec<usize>>> {
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
            Ok(table
                .iter()
                .flat_map(|&b| (0..bs).map(move |o| layout.row(b as usize, 0, o)))
                .take(n)
                .collect())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_rows_are_stored_as_each_value_converts() {
        // Ordinary values, both sides of f16's range and its subnormals, values halfway between
        // two f16s (rounded to even), infinities and NaN; more than a vector's worth, and a tail.
        let mut src: Vec<f32> = (0..1000)
            .map(|i| ((i as f32) - 500.0) * 0.37 * (1.0 + (i % 7) as f32))
            .collect();
        src.extend([
            65504.0, 65520.0, 1e6, -1e6, 6e-8, 3e-8, 1e-9, -6.1e-5, 0.0, -0.0,
        ]);
        src.extend([
            1.0 + 1.0 / 2048.0,
            1.0 + 3.0 / 2048.0,
            f32::INFINITY,
            f32::NAN,
        ]);
        let mut got = vec![f16::ZERO; src.len()];
        f16::store_row(&mut got, &src);
        for (g, &s) in got.iter().zip(&src) {
            assert_eq!(g.to_bits(), f16::from_f32(s).to_bits(), "{s}");
        }
    }

    #[test]
    fn tasks_split_a_group_only_to_fill_the_threads() {
        let meta = |tokens: usize, seqs: usize| AttentionMeta {
            positions: (0..tokens).collect(),
            token_table: (0..tokens).map(|t| t % seqs).collect(),
            tables: vec![Vec::new(); seqs],
            slots: Vec::new(),
            block_size: 16,
        };
        let split = |m: &AttentionMeta, kv_heads, group, threads| {
            tasks(m, kv_heads, group, threads)
                .iter()
                .map(|t| (t.tokens.len(), t.kvh, t.heads.clone()))
                .collect::<Vec<_>>()
        };
        // One decode, one KV head of four query heads: as many parts as threads.
        assert_eq!(split(&meta(1, 1), 1, 4, 1), [(1, 0, 0..4)]);
        assert_eq!(split(&meta(1, 1), 1, 4, 2), [(1, 0, 0..2), (1, 0, 2..4)]);
        assert_eq!(
            split(&meta(1, 1), 1, 4, 3),
            [(1, 0, 0..1), (1, 0, 1..2), (1, 0, 2..4)]
        );
        // Never more parts than query heads.
        assert_eq!(split(&meta(1, 1), 1, 2, 8).len(), 2);
        // As many tasks as threads already: whole groups.
        assert_eq!(split(&meta(1, 1), 2, 6, 2), [(1, 0, 0..6), (1, 1, 0..6)]);
        assert_eq!(split(&meta(20, 1), 1, 3, 2).len(), 3);
        assert!(split(&meta(2, 2), 3, 3, 2).iter().all(|t| t.2 == (0..3)));
    }

    #[test]
    fn split_groups_give_the_bits_of_whole_ones() {
        use candle_core::{DType, Device, Tensor};
        // A decode at position 40 of one sequence, one KV head of four query heads (Gemma 3's
        // shape), on one thread (one task) and on three (the group in three parts).
        let (kv_heads, heads, dim, bs, n) = (1usize, 4usize, 16usize, 4usize, 41usize);
        let dev = Device::Cpu;
        let meta = AttentionMeta {
            positions: vec![n - 1],
            token_table: vec![0],
            tables: vec![(0..n.div_ceil(bs) as u32).rev().collect()],
            slots: vec![0],
            block_size: bs,
        };
        let blocks = n.div_ceil(bs);
        let cache = |seed: u64| {
            Tensor::rand(-1f32, 1.0, (blocks, kv_heads, bs, dim), &dev)
                .and_then(|t| (t + seed as f64 * 0.01)?.to_dtype(DType::F16))
                .unwrap()
        };
        let (kc, vc) = (cache(1), cache(2));
        let q = Tensor::rand(-1f32, 1.0, (1, heads, dim), &dev).unwrap();
        let op = PagedAttention {
            meta: &meta,
            scale: 0.25,
            window: None,
        };
        let on = |threads: usize| {
            crate::team::install(threads, || {
                assert_eq!(crate::team::threads(), threads);
                q.apply_op3_no_bwd(&kc, &vc, &op).unwrap()
            })
            .unwrap()
        };
        let bits = |t: Tensor| -> Vec<u32> {
            let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            v.iter().map(|x| x.to_bits()).collect()
        };
        assert_eq!(bits(on(1)), bits(on(3)));
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
            Tensor::zeros((3, 1, bs, 2), DType::F32, &dev).unwrap(),
            Tensor::zeros((3, 1, bs, 2), DType::F32, &dev).unwrap(),
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
}
