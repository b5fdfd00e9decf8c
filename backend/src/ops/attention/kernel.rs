//! The attention kernel: online-softmax attention of a group of queries that share one KV head,
//! one sequence and one first key (a GQA group's query heads at the tokens of one sequence in a
//! step), reading each tile of keys and values once for all of them.
//!
//! The numerics of one query, whatever the group it is computed in (`reference`, built for the
//! tests, is the plain statement, and the tests hold the kernel to its bits): tiles of
//! [`KEY_TILE`] keys counted from the query's first key; a key's score is [`dot`] times the
//! scale; per tile, the maximum score, one rescale of the accumulator when it rises (`exp` of
//! the standard library), the weights by [`exp`](crate::ops::math::exp), then the denominator
//! and the weighted values summed key by key in position order.
//! [`dot`] multiplies and adds in eight fixed lanes (no fused multiply-add) and sums the lanes
//! in one fixed tree; the AVX2 bodies do the same operations on 256-bit registers, so they give
//! the portable code's bits (x86-64-v3, the build's baseline, has AVX2 and F16C; other targets
//! run the portable code). An f16 cache's rows are widened to f32 where they are loaded, or,
//! for a group of [`WIDEN_AT`] queries or more, once per tile into buffers (the portable code
//! widens each row into a buffer): the same values either way.

use crate::ops::math::exp;

/// Keys per online-softmax tile. Tiles start every this many keys from a query's first key,
/// whatever the cache's block size.
pub(super) const KEY_TILE: usize = 32;

/// One query of a group: its vector, how many keys it sees from the group's first key, and
/// where its output goes.
pub(super) struct Query<'a> {
    pub q: &'a [f32],
    pub keys: usize,
    pub out: &'a mut [f32],
}

/// The running state of one query.
struct State {
    max: f32,
    denom: f32,
}

/// Queries in a group from which a narrow (f16) cache's tiles are widened once into f32
/// buffers for all of them, instead of in every query's loads (a prefill chunk's group; a
/// decode's few queries were measured faster widening in their loads). Not tuned between 3
/// (SmolLM2's decode group) and a prefill chunk's hundreds.
const WIDEN_AT: usize = 8;

/// Attention of `queries` (all of head dimension `dim`) over the keys whose cache rows in `k`
/// and `v` are `rows` plus `head` (from the group's first key, in position order; `head` is
/// where the KV head's rows start). Each key and value row is read once per tile for the whole
/// group; f16 rows are widened to f32 (exactly) as they are loaded, or, for [`WIDEN_AT`]
/// queries or more, once per tile.
pub(super) fn attend_group<T: super::KvElem>(
    queries: &mut [Query],
    rows: &[usize],
    head: usize,
    k: &[T],
    v: &[T],
    scale: f32,
) {
    let Some(dim) = queries.first().map(|q| q.q.len()) else {
        return;
    };
    let n = queries.iter().map(|q| q.keys).max().unwrap_or(0);
    let mut acc = vec![0f32; queries.len() * dim];
    let mut states: Vec<State> = queries
        .iter()
        .map(|_| State {
            max: f32::NEG_INFINITY,
            denom: 0.0,
        })
        .collect();
    // Every query's weights for the tile: the keys pass once for all scores, then the values
    // once for all accumulations, so that only one of the two tiles need stay in cache.
    let mut w = vec![0f32; queries.len() * KEY_TILE];
    let widen = T::NARROW && queries.len() >= WIDEN_AT;
    let (mut kb, mut vb) = match widen {
        true => (vec![0f32; KEY_TILE * dim], vec![0f32; KEY_TILE * dim]),
        false => (Vec::new(), Vec::new()),
    };
    for t0 in (0..n).step_by(KEY_TILE) {
        let tile = &rows[t0..(t0 + KEY_TILE).min(n)];
        // The next tile's rows load while this one is computed.
        let next = &rows[(t0 + KEY_TILE).min(n)..(t0 + 2 * KEY_TILE).min(n)];
        prefetch_rows(k, next, head, dim);
        prefetch_rows(v, next, head, dim);
        let mut group = Group {
            queries,
            states: &mut states,
            acc: &mut acc,
            w: &mut w,
            t0,
            len: tile.len(),
            scale,
        };
        if widen {
            let kr = widened_rows(k, tile, head, dim, &mut kb);
            let vr = widened_rows(v, tile, head, dim, &mut vb);
            group.tile(&kr, &vr);
        } else {
            group.tile(
                &tile_rows(k, tile, head, dim),
                &tile_rows(v, tile, head, dim),
            );
        }
    }
    for ((query, acc), st) in queries.iter_mut().zip(acc.chunks(dim)).zip(&states) {
        let inv = 1.0 / st.denom;
        for (o, a) in query.out.iter_mut().zip(acc) {
            *o = a * inv;
        }
    }
}

/// Asks for the cache lines of the rows `rows` plus `head` ahead of their use (a hint: no
/// effect on any result). SmolLM2 decode steps at 300 and 1,000 tokens of context and at batch
/// 16 were 2-4% faster with it (the KV cache is read from memory in every step).
#[inline]
fn prefetch_rows<T>(data: &[T], rows: &[usize], head: usize, dim: usize) {
    #[cfg(target_arch = "x86_64")]
    for &row in rows {
        let Some(row) = data.get((row + head) * dim..(row + head + 1) * dim) else {
            continue;
        };
        let bytes = std::mem::size_of_val(row);
        for line in (0..bytes).step_by(64) {
            // SAFETY: `line` is within the row; a prefetch reads nothing and writes nothing.
            unsafe {
                use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                _mm_prefetch::<_MM_HINT_T0>(row.as_ptr().cast::<i8>().add(line));
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (data, rows, head, dim);
}

/// A group's running state, and the tile at key `t0` of `len` keys.
struct Group<'a, 'q> {
    queries: &'a [Query<'q>],
    states: &'a mut [State],
    acc: &'a mut [f32],
    w: &'a mut [f32],
    t0: usize,
    len: usize,
    scale: f32,
}

impl Group<'_, '_> {
    /// One tile of keys `kr` and values `vr` for every query of the group: all scores first,
    /// then each query's softmax step and weighted values.
    fn tile<R: super::KvElem>(&mut self, kr: &[&[R]; KEY_TILE], vr: &[&[R]; KEY_TILE]) {
        let dim = self.acc.len() / self.queries.len();
        let (t0, tile_len) = (self.t0, self.len);
        let len = move |query: &Query| query.keys.saturating_sub(t0).min(tile_len);
        for (query, w) in self.queries.iter().zip(self.w.chunks_mut(KEY_TILE)) {
            let n = len(query);
            scores(query.q, &kr[..n], self.scale, &mut w[..n]);
        }
        let per_query = self.w.chunks_mut(KEY_TILE).zip(self.acc.chunks_mut(dim));
        for (query, ((w, acc), st)) in self
            .queries
            .iter()
            .zip(per_query.zip(self.states.iter_mut()))
        {
            let n = len(query);
            if n == 0 {
                continue;
            }
            let w = &mut w[..n];
            let tile_max = max_of(w);
            if tile_max > st.max {
                let rescale = (st.max - tile_max).exp();
                st.denom *= rescale;
                acc.iter_mut().for_each(|o| *o *= rescale);
                st.max = tile_max;
            }
            for s in w.iter_mut() {
                *s = exp(*s - st.max);
            }
            for &wj in w.iter() {
                st.denom += wj;
            }
            accumulate(acc, w, &vr[..n]);
        }
    }
}

/// The largest of `w` (NaNs ignored; `-inf` for none), in eight lanes so that it vectorises
/// (a fold of `f32::max` is one serial chain): the same value as the fold, up to the sign of a
/// zero maximum, which no weight or rescale can tell (`exp(s - ±0)` is the same).
#[inline]
fn max_of(w: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let (w8, tail) = w.as_chunks::<8>();
    for c in w8 {
        for l in 0..8 {
            lanes[l] = if c[l] > lanes[l] { c[l] } else { lanes[l] };
        }
    }
    lanes
        .iter()
        .chain(tail)
        .fold(f32::NEG_INFINITY, |m, &s| m.max(s))
}

/// The rows of a tile of keys (or values), `head` rows on, widened to f32 into `buf`.
fn widened_rows<'a, T: super::KvElem>(
    data: &[T],
    tile: &[usize],
    head: usize,
    dim: usize,
    buf: &'a mut [f32],
) -> [&'a [f32]; KEY_TILE] {
    for (slot, &row) in buf.chunks_mut(dim).zip(tile) {
        let widened = T::row(data, (row + head) * dim, dim, slot);
        // f32 rows come borrowed, not copied (only narrow caches are widened).
        debug_assert!(std::ptr::eq(widened.as_ptr(), slot.as_ptr()));
    }
    let mut out: [&[f32]; KEY_TILE] = [&[]; KEY_TILE];
    for (slot, row) in out.iter_mut().zip(buf.chunks(dim)).take(tile.len()) {
        *slot = row;
    }
    out
}

/// The rows of a tile of keys (or values), `head` rows on, in the cache's element type.
fn tile_rows<'a, T>(data: &'a [T], tile: &[usize], head: usize, dim: usize) -> [&'a [T]; KEY_TILE] {
    let mut out: [&[T]; KEY_TILE] = [&[]; KEY_TILE];
    for (slot, &row) in out.iter_mut().zip(tile) {
        let off = (row + head) * dim;
        *slot = &data[off..off + dim];
    }
    out
}

/// `w[j] = dot(q, keys[j]) * scale`.
#[inline]
fn scores<T: super::KvElem>(q: &[f32], keys: &[&[T]], scale: f32, w: &mut [f32]) {
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "f16c"
    ))]
    if q.len().is_multiple_of(8) {
        // SAFETY: the build enables AVX2 and F16C (checked by the cfg); every key row has
        // `q.len()` elements (cache rows of the head dimension).
        unsafe { avx2::scores(q, keys, scale, w) };
        return;
    }
    let mut buf = vec![0f32; q.len()];
    for (s, key) in w.iter_mut().zip(keys) {
        *s = dot(q, T::row(key, 0, q.len(), &mut buf)) * scale;
    }
}

/// `acc += w[j] * values[j]` for each `j` in order.
#[inline]
fn accumulate<T: super::KvElem>(acc: &mut [f32], w: &[f32], values: &[&[T]]) {
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "f16c"
    ))]
    if acc.len().is_multiple_of(8) {
        // SAFETY: as in `scores`; value rows have `acc.len()` elements.
        unsafe { avx2::accumulate(acc, w, values) };
        return;
    }
    let mut buf = vec![0f32; acc.len()];
    for (&wj, row) in w.iter().zip(values) {
        accumulate_portable(acc, &[wj], &[T::row(row, 0, acc.len(), &mut buf)]);
    }
}

fn accumulate_portable(acc: &mut [f32], w: &[f32], values: &[&[f32]]) {
    for (&wj, row) in w.iter().zip(values) {
        for (o, &x) in acc.iter_mut().zip(row.iter()) {
            *o += wj * x;
        }
    }
}

/// The dot product of `a` and `b` (`b` at least as long): eight lanes, lane `l` summing
/// `a[8 c + l] * b[8 c + l]` over `c` in order, then
/// `((l0 + l4) + (l1 + l5)) + ((l2 + l6) + (l3 + l7))`, then the tail past the last eight.
#[inline]
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (a8, a_tail) = a.as_chunks::<8>();
    let (b8, _) = b[..a.len()].as_chunks::<8>();
    for (x, y) in a8.iter().zip(b8) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0f32;
    for (x, y) in a_tail.iter().zip(&b[a8.len() * 8..]) {
        tail += x * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "f16c"
))]
mod avx2 {
    //! [`super::dot`] and the value accumulation on 256-bit registers: the same lanes, the same
    //! separate multiplies and adds, the same reduction tree. Rows are read through
    //! [`KvElem::load8`], which widens f16 to f32 in the load.
    use super::super::KvElem;
    use std::arch::x86_64::*;

    /// Keys scored at once (independent accumulator chains).
    const KEYS: usize = 8;

    /// `w[j] = dot(q, keys[j]) * scale`; `q.len()` a multiple of 8.
    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn scores<T: KvElem>(q: &[f32], keys: &[&[T]], scale: f32, w: &mut [f32]) {
        let mut j = 0;
        while j + KEYS <= keys.len() {
            let acc = lanes::<T, KEYS>(q, std::array::from_fn(|i| keys[j + i]));
            let sums = _mm256_add_ps(reduce8(acc), _mm256_setzero_ps());
            let scaled = _mm256_mul_ps(sums, _mm256_set1_ps(scale));
            _mm256_storeu_ps(w[j..j + KEYS].as_mut_ptr(), scaled);
            j += KEYS;
        }
        while j < keys.len() {
            let [acc] = lanes::<T, 1>(q, [keys[j]]);
            w[j] = reduce(acc) * scale;
            j += 1;
        }
    }

    /// Each key's eight lane sums of [`super::dot`], before the reduction.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn lanes<T: KvElem, const N: usize>(q: &[f32], keys: [&[T]; N]) -> [__m256; N] {
        let mut acc = [_mm256_setzero_ps(); N];
        for c in (0..q.len()).step_by(8) {
            let x = _mm256_loadu_ps(q.as_ptr().add(c));
            for i in 0..N {
                let y = T::load8(keys[i].as_ptr().add(c));
                acc[i] = _mm256_add_ps(acc[i], _mm256_mul_ps(x, y));
            }
        }
        acc
    }

    /// [`reduce`] of eight keys' lanes at once, key `i` in lane `i` (without the final `+ 0`):
    /// the same additions of the same operands, `l + l'` four apart first (each 128-bit half of
    /// two keys at a time), then neighbours, then the two pair sums.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn reduce8(a: [__m256; 8]) -> __m256 {
        let halves = |x: __m256, y: __m256| {
            let lo = _mm256_permute2f128_ps(x, y, 0x20);
            let hi = _mm256_permute2f128_ps(x, y, 0x31);
            _mm256_add_ps(lo, hi)
        };
        let (s01, s23) = (halves(a[0], a[1]), halves(a[2], a[3]));
        let (s45, s67) = (halves(a[4], a[5]), halves(a[6], a[7]));
        let pairs = _mm256_hadd_ps(_mm256_hadd_ps(s01, s23), _mm256_hadd_ps(s45, s67));
        // Lanes hold keys 0, 2, 4, 6, 1, 3, 5, 7.
        _mm256_permutevar8x32_ps(pairs, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
    }

    /// `((l0 + l4) + (l1 + l5)) + ((l2 + l6) + (l3 + l7)) + 0`.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn reduce(a: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        let pairs = _mm_add_ps(s, _mm_movehdup_ps(s));
        let total = _mm_add_ss(pairs, _mm_movehl_ps(pairs, pairs));
        _mm_cvtss_f32(total) + 0.0
    }

    /// `acc += w[j] * values[j]` for each `j` in order; `acc.len()` a multiple of 8. The
    /// accumulator is held in registers 64 elements at a time (then 8 at a time) while every
    /// value row passes.
    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn accumulate<T: KvElem>(acc: &mut [f32], w: &[f32], values: &[&[T]]) {
        let mut c0 = 0;
        while c0 + 64 <= acc.len() {
            accumulate_block::<T, 8>(acc, c0, w, values);
            c0 += 64;
        }
        while c0 < acc.len() {
            accumulate_block::<T, 1>(acc, c0, w, values);
            c0 += 8;
        }
    }

    /// Elements `c0..c0 + 8 * REGS` of [`accumulate`].
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn accumulate_block<T: KvElem, const REGS: usize>(
        acc: &mut [f32],
        c0: usize,
        w: &[f32],
        values: &[&[T]],
    ) {
        let base = acc.as_mut_ptr().add(c0);
        let mut a: [__m256; REGS] = std::array::from_fn(|r| _mm256_loadu_ps(base.add(8 * r)));
        for (&wj, row) in w.iter().zip(values) {
            let wb = _mm256_set1_ps(wj);
            let x = row.as_ptr().add(c0);
            for (r, a) in a.iter_mut().enumerate() {
                *a = _mm256_add_ps(*a, _mm256_mul_ps(wb, T::load8(x.add(8 * r))));
            }
        }
        for (r, a) in a.iter().enumerate() {
            _mm256_storeu_ps(base.add(8 * r), *a);
        }
    }
}

/// One query alone, key by key, with the portable [`dot`] and accumulation: the statement of
/// the numerics that [`attend_group`] must reproduce bit for bit.
#[cfg(test)]
pub(super) fn reference<T: super::KvElem>(
    q: &[f32],
    rows: &[usize],
    head: usize,
    k: &[T],
    v: &[T],
    scale: f32,
    out: &mut [f32],
) {
    let dim = q.len();
    let mut acc = vec![0f32; dim];
    let (mut max, mut denom) = (f32::NEG_INFINITY, 0f32);
    let (mut kb, mut vb) = (vec![0f32; dim], vec![0f32; dim]);
    for tile in rows.chunks(KEY_TILE) {
        let mut w: Vec<f32> = tile
            .iter()
            .map(|&row| dot(q, T::row(k, (row + head) * dim, dim, &mut kb)) * scale)
            .collect();
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
            let x = T::row(v, (row + head) * dim, dim, &mut vb);
            accumulate_portable(&mut acc, &[wj], &[x]);
        }
    }
    for (o, a) in out.iter_mut().zip(&acc) {
        *o = a * (1.0 / denom);
    }
}

#[cfg(test)]
mod tests;
