//! The x86-64 kernels: one body per weight type, instantiated twice by [`kernels!`] with a
//! different integer dot-product step: AVX2 (`vpmaddubsw` + `vpmaddwd`) and AVX-512 VNNI on
//! 256-bit registers (`vpdpbusd`), on the same group layout. [`wide`] runs the AVX-512 VNNI
//! bodies on 512-bit registers, two groups at once, for [`Kernel::Avx512Wide`] (a lone group
//! there runs on the 256-bit body): the development machine's Intel Xeon issues 1.6-1.9
//! `vpdpbusd` a cycle at either width, so 512 bits do up to twice the work a cycle (Zen 4
//! splits a 512-bit operation in two; not measured there).
//!
//! Per block of a group: the eight rows' values are loaded four elements per row at a time and
//! multiplied by four broadcast activation bytes, so each 32-bit lane accumulates one row's
//! integer sum (no horizontal reductions). The float step is vectorised across the eight rows
//! with separate multiplies and adds in the scalar kernel's order, so the bits are the same.
//! Products cannot overflow: 15 x 127 (4-bit), 31 x 127 (Q5_0), 63 x 127 (Q6_K) and 128 x 127
//! (8-bit, signs moved onto the activations) summed in pairs stay within i16 for `vpmaddubsw`.
//! AVX2 adds those pair sums as 16-bit lanes over several steps (as many as stay within i16) and
//! widens them to 32 bits once per span, not once per step; integer sums are exact in any order,
//! so the bits do not change.
//! The K-quants (`kquants`) run eight 32-element sub-blocks per stored block with the same loads.
//! Compiled on x86-64 only (`portable` stands in elsewhere).

mod wide;

pub(super) use wide::{
    q4_0_pair, q4_1_pair, q4_k_pair, q5_0_pair, q5_k_pair, q6_k_pair, q8_0_pair, Pair,
};

use super::{ActBlock, Kernel, Q4_0x8, Q4_1x8, Q4_Kx8, Q5_0x8, Q5_Kx8, Q6_Kx8, Q8_0x8, GROUP};

/// How far ahead of the block being multiplied the kernels prefetch the weights, in bytes.
/// The packed matrices are read front to back, but the hardware prefetchers stop at every 4 KiB
/// page; without this a batch-1 decode step of SmolLM2 or Qwen2.5-Coder-1.5B took 8-9% longer
/// (interleaved steps in one process on an AMD EPYC Zen 3: 512 bytes gained a third to a half
/// of that, 1,024 to 4,096 about all of it, 1,024 and 1,536 the most). On an Intel Xeon
/// (family 6, model 207), whose memory is further away, the distance mattered far more:
/// 256-token SmolLM2 decodes took 1.35-1.43 s at 1,024 bytes, 1.25-1.29 at 3,072, 1.12-1.26 at
/// 8,192 to 12,288 (the 256-bit kernel alike: 1.49-1.62 -> 1.17-1.27 s); Qwen2.5-Coder-1.5B's
/// decode 2-7% faster; prefill the same. 8 KiB is where that plateau starts; Zen 3 was flat
/// from 1 to 4 KiB and is not measured at 8. A prefetch never faults, so reading past the
/// matrix's end is harmless.
const PREFETCH: usize = 8192;

pub(super) fn avx2_available() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

pub(super) fn wide_available() -> bool {
    wide::available()
}

pub(super) fn vnni_available() -> bool {
    avx2_available()
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
}

/// The nibble group layouts (Q4_0, Q4_1, Q5_0), seen alike by the kernel body.
trait Nibbles {
    /// What is subtracted from every value (Q4_0: 8, Q5_0: 16; Q4_1 has minimums instead).
    const OFFSET: i32;
    fn qs(&self) -> &[u8; 128];
    fn d(&self) -> &[half::f16; GROUP];
    /// Q4_1's minimums; `None` for the others (values offset by `OFFSET`).
    fn m(&self) -> Option<&[half::f16; GROUP]>;
    /// Q5_0's fifth bits, one `u32` per nibble half of each load; `None` for 4-bit types.
    fn qh(&self) -> Option<&[u32; 8]> {
        None
    }
}

impl Nibbles for Q5_0x8 {
    const OFFSET: i32 = 16;
    #[inline(always)]
    fn qs(&self) -> &[u8; 128] {
        &self.qs
    }
    #[inline(always)]
    fn d(&self) -> &[half::f16; GROUP] {
        &self.d
    }
    #[inline(always)]
    fn m(&self) -> Option<&[half::f16; GROUP]> {
        None
    }
    #[inline(always)]
    fn qh(&self) -> Option<&[u32; 8]> {
        Some(&self.qh)
    }
}

impl Nibbles for Q4_0x8 {
    const OFFSET: i32 = 8;
    #[inline(always)]
    fn qs(&self) -> &[u8; 128] {
        &self.qs
    }
    #[inline(always)]
    fn d(&self) -> &[half::f16; GROUP] {
        &self.d
    }
    #[inline(always)]
    fn m(&self) -> Option<&[half::f16; GROUP]> {
        None
    }
}

impl Nibbles for Q4_1x8 {
    const OFFSET: i32 = 0;
    #[inline(always)]
    fn qs(&self) -> &[u8; 128] {
        &self.qs
    }
    #[inline(always)]
    fn d(&self) -> &[half::f16; GROUP] {
        &self.d
    }
    #[inline(always)]
    fn m(&self) -> Option<&[half::f16; GROUP]> {
        Some(&self.m)
    }
}

/// Bits a nibble block's values carry above their low four: none (Q4_0, Q4_1, Q4_K), Q5_0's and
/// Q5_K's fifth bits (`u32` per nibble vector, bit `4 r + i`), or Q6_K's two high bits
/// ([`super::kquants::Q6Sub::qh`]).
#[derive(Clone, Copy)]
enum High<'a> {
    None,
    Fifth(&'a [u32; 8]),
    Two(&'a [[u8; 32]; 2]),
}

/// Dispatches one weight type's tile to the kernel family (`Scalar` included: the scalar
/// kernels are the reference the others match, bit for bit).
macro_rules! dispatch {
    ($name:ident, $fmt:ty) => {
        #[inline(always)]
        pub(super) fn $name<const MR: usize>(
            kernel: Kernel,
            w: &[$fmt],
            x: [&[ActBlock]; MR],
        ) -> [[f32; GROUP]; MR] {
            for row in &x {
                assert_eq!(
                    row.len(),
                    w.len() * <$fmt as super::Format>::SUB,
                    "activation and weight blocks differ"
                );
            }
            match kernel {
                // SAFETY: `matmul_many` replaces a kernel the CPU lacks by the scalar one, so the
                // features these functions enable are present; lengths are checked above.
                Kernel::Avx2 => unsafe { avx2::$name(w, x) },
                // A lone group of the 512-bit kernel runs on the 256-bit body (same bits).
                Kernel::Avx512Vnni | Kernel::Avx512Wide => unsafe { vnni::$name(w, x) },
                Kernel::Scalar => super::scalar::$name(w, x),
            }
        }
    };
}

dispatch!(q4_0, Q4_0x8);
dispatch!(q4_1, Q4_1x8);
dispatch!(q5_0, Q5_0x8);
dispatch!(q8_0, Q8_0x8);
dispatch!(q4_k, Q4_Kx8);
dispatch!(q5_k, Q5_Kx8);
dispatch!(q6_k, Q6_Kx8);

/// The kernel bodies for one instruction set. `$dp` defines three functions:
/// - `dp(acc, u, s)`: `acc` plus, per 32-bit lane, the sum of four products of unsigned bytes
///   `u` with signed bytes `s`;
/// - `step(part, u, s)`: the same products added to a partial sum, which may be narrower
///   (AVX2: sixteen 16-bit pair sums, so no widening instruction per step);
/// - `widen(part)`: a partial sum as 32-bit lane sums (the lane's four products added).
///
/// `$budget` is how many steps a partial sum may take of values up to a given maximum before it
/// is widened, and `$merge` whether a block's two nibble halves share one partial sum where the
/// caller adds them anyway (AVX2, whose 16-bit add has a one-cycle latency; VNNI keeps them apart,
/// as its accumulating step's latency would serialise them). `$chains` independent accumulators
/// hide the step's latency where it accumulates in place (VNNI); AVX2 needs none.
macro_rules! kernels {
    (
        $module:ident,
        $features:literal,
        $chains:literal,
        $merge:literal,
        $budget:expr,
        $($dp:item),+
        $(,)?
    ) => {
        mod $module {
            // With one chain (AVX2) `l % CHAINS` is 0 and `1..CHAINS` empty, as intended.
            #![allow(clippy::modulo_one, clippy::reversed_empty_ranges)]
            use super::super::kquants::{KNibbles, SUBS};
            use super::super::{ActBlock, Q4_0x8, Q4_1x8, Q4_Kx8, Q5_0x8, Q5_Kx8, Q6_Kx8, Q8_0x8};
            use super::super::GROUP;
            use super::{High, Nibbles};
            use std::arch::x86_64::*;

            /// Independent accumulator chains per row and nibble half.
            const CHAINS: usize = $chains;
            /// Whether the nibble halves share a partial sum where the caller adds them.
            const MERGE: bool = $merge;

            /// Steps of values up to `max` a partial sum may take.
            #[inline(always)]
            fn budget(max: i32) -> usize {
                $budget(max)
            }

            $($dp)*

            /// Prefetches the cache lines [`super::PREFETCH`] bytes past the start of block
            /// `b`, one block's size of them.
            #[inline(always)]
            unsafe fn ahead<W>(w: &[W], b: usize) {
                let p = w.as_ptr().wrapping_add(b).cast::<i8>().wrapping_add(super::PREFETCH);
                for o in (0..std::mem::size_of::<W>()).step_by(64) {
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(o));
                }
            }

            /// Four activation bytes at `p`, repeated in every lane.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn bcast(p: *const i8) -> __m256i {
                _mm256_set1_epi32(std::ptr::read_unaligned(p as *const i32))
            }

            /// Eight f16 scales as f32 lanes.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn scales(d: &[half::f16; GROUP]) -> __m256 {
                _mm256_cvtph_ps(_mm_loadu_si128(d.as_ptr() as *const __m128i))
            }

            /// Block `b` of each activation row.
            #[inline]
            unsafe fn blocks_at<const MR: usize>(
                x: &[&[ActBlock]; MR],
                b: usize,
            ) -> [&'static ActBlock; MR] {
                // SAFETY (caller): every row has more than `b` blocks. The 'static lifetime
                // never escapes the kernel, which borrows `x` for its whole run.
                std::array::from_fn(|i| &*x[i].as_ptr().add(b))
            }

            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn finish<const MR: usize>(acc: [__m256; MR]) -> [[f32; GROUP]; MR] {
                let mut out = [[0f32; GROUP]; MR];
                for i in 0..MR {
                    _mm256_storeu_ps(out[i].as_mut_ptr(), acc[i]);
                }
                out
            }

            /// 32 fifth bits as bytes: byte `b` is `0x10` when bit `b` of `h` is set.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn fifth_bits(h: u32) -> __m256i {
                let v = _mm256_set1_epi32(h as i32);
                let pick = _mm256_setr_epi8(
                    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3,
                    3, 3, 3, 3, 3, 3,
                );
                let bytes = _mm256_shuffle_epi8(v, pick);
                let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
                let set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit);
                _mm256_and_si256(set, _mm256_set1_epi8(0x10))
            }

            /// The high two bits of nibble vector `n` (`qh` holds vectors `4 (n / 4)..`) moved
            /// to bits 4 and 5 of each byte.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn high_bits(qh: __m256i, n: usize) -> __m256i {
                let moved = match n % 4 {
                    0 => _mm256_slli_epi16(qh, 4),
                    1 => _mm256_slli_epi16(qh, 2),
                    2 => qh,
                    _ => _mm256_srli_epi16(qh, 2),
                };
                _mm256_and_si256(moved, _mm256_set1_epi8(0x30))
            }

            /// One 32-element block of eight rows in Q4_0's nibble layout (`qs`, with `high`
            /// ORed in above the nibbles) against `MR` activation blocks: per row, the integer
            /// dot of its first 16 elements (the low nibbles) and of its last 16 (the high
            /// ones); with `MERGE` and not `SPLIT`, both halves' sum comes as the first and the
            /// second is zero (for callers that add them). Partial sums run in `CHAINS`
            /// independent accumulators per row and half, so that an accumulating dot-product
            /// instruction's latency does not serialise a row, and are widened every span of
            /// loads that `budget` allows.
            ///
            /// Always inlined, and so compiled with its caller's target features (it has none of
            /// its own: `inline(always)` and `target_feature` do not go together).
            #[inline(always)]
            unsafe fn nibble_dots<const MR: usize, const SPLIT: bool>(
                qs: &[u8; 128],
                high: High,
                xs: &[&ActBlock; MR],
            ) -> ([__m256i; MR], [__m256i; MR]) {
                let mask = _mm256_set1_epi8(0x0F);
                let two = match high {
                    High::Two(qh) => [
                        _mm256_loadu_si256(qh[0].as_ptr() as *const __m256i),
                        _mm256_loadu_si256(qh[1].as_ptr() as *const __m256i),
                    ],
                    _ => [_mm256_setzero_si256(); 2],
                };
                // Partial sums (`step`), widened into the totals every `span` loads. Merged, the
                // high half's steps go into the low half's sums (and `hi` stays zero).
                let max = match high {
                    High::None => 15,
                    High::Fifth(_) => 31,
                    High::Two(_) => 63,
                };
                let merged = MERGE && !SPLIT;
                let span = (budget(max) / if merged { 2 } else { 1 }).clamp(1, 4);
                let mut lo_sum = [_mm256_setzero_si256(); MR];
                let mut hi_sum = [_mm256_setzero_si256(); MR];
                let mut lo = [[_mm256_setzero_si256(); MR]; CHAINS];
                let mut hi = [[_mm256_setzero_si256(); MR]; CHAINS];
                for l in 0..4 {
                    let v = _mm256_loadu_si256(qs.as_ptr().add(32 * l) as *const __m256i);
                    let mut vlo = _mm256_and_si256(v, mask);
                    let mut vhi = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
                    match high {
                        High::None => {}
                        High::Fifth(qh) => {
                            vlo = _mm256_or_si256(vlo, fifth_bits(qh[2 * l]));
                            vhi = _mm256_or_si256(vhi, fifth_bits(qh[2 * l + 1]));
                        }
                        High::Two(_) => {
                            let (n0, n1) = (2 * l, 2 * l + 1);
                            vlo = _mm256_or_si256(vlo, high_bits(two[n0 / 4], n0));
                            vhi = _mm256_or_si256(vhi, high_bits(two[n1 / 4], n1));
                        }
                    }
                    // Four or more rows interleave enough independent work already.
                    let c = if MR >= 4 { 0 } else { l % CHAINS };
                    for i in 0..MR {
                        let q = xs[i].qs.as_ptr();
                        lo[c][i] = step(lo[c][i], vlo, bcast(q.add(4 * l)));
                        let x_hi = bcast(q.add(16 + 4 * l));
                        if merged {
                            lo[c][i] = step(lo[c][i], vhi, x_hi);
                        } else {
                            hi[c][i] = step(hi[c][i], vhi, x_hi);
                        }
                    }
                    if (l + 1) % span == 0 {
                        for c in 0..CHAINS {
                            for i in 0..MR {
                                lo_sum[i] = _mm256_add_epi32(lo_sum[i], widen(lo[c][i]));
                                lo[c][i] = _mm256_setzero_si256();
                                if !merged {
                                    hi_sum[i] = _mm256_add_epi32(hi_sum[i], widen(hi[c][i]));
                                    hi[c][i] = _mm256_setzero_si256();
                                }
                            }
                        }
                    }
                }
                (lo_sum, hi_sum)
            }

            /// The nibble types in one body: Q4_0 and Q5_0 subtract their offset per value
            /// (Q5_0 ORs its fifth bits in first), Q4_1 adds `m * s`.
            #[target_feature(enable = $features)]
            unsafe fn nibbles<W: Nibbles, const MR: usize>(
                w: &[W],
                x: [&[ActBlock]; MR],
            ) -> [[f32; GROUP]; MR] {
                let mut acc = [_mm256_setzero_ps(); MR];
                for (b, wb) in w.iter().enumerate() {
                    ahead(w, b);
                    let xs = blocks_at(&x, b);
                    let high = wb.qh().map_or(High::None, High::Fifth);
                    let (lo, hi) = nibble_dots::<MR, false>(wb.qs(), high, &xs);
                    let dw = scales(wb.d());
                    for i in 0..MR {
                        let sumi = _mm256_add_epi32(lo[i], hi[i]);
                        if let Some(m) = wb.m() {
                            let t = _mm256_mul_ps(_mm256_cvtepi32_ps(sumi), dw);
                            let t = _mm256_mul_ps(t, _mm256_set1_ps(xs[i].d));
                            let ms = _mm256_mul_ps(scales(m), _mm256_set1_ps(xs[i].s));
                            acc[i] = _mm256_add_ps(acc[i], _mm256_add_ps(t, ms));
                        } else {
                            let offset = _mm256_set1_epi32(W::OFFSET * xs[i].isum);
                            let sumi = _mm256_sub_epi32(sumi, offset);
                            let t = _mm256_mul_ps(_mm256_cvtepi32_ps(sumi), dw);
                            let t = _mm256_mul_ps(t, _mm256_set1_ps(xs[i].d));
                            acc[i] = _mm256_add_ps(acc[i], t);
                        }
                    }
                }
                finish(acc)
            }

            pub(super) unsafe fn q4_0<const MR: usize>(
                w: &[Q4_0x8],
                x: [&[ActBlock]; MR],
            ) -> [[f32; GROUP]; MR] {
                nibbles(w, x)
            }

            pub(super) unsafe fn q4_1<const MR: usize>(
                w: &[Q4_1x8],
                x: [&[ActBlock]; MR],
            ) -> [[f32; GROUP]; MR] {
                nibbles(w, x)
            }

            pub(super) unsafe fn q5_0<const MR: usize>(
                w: &[Q5_0x8],
                x: [&[ActBlock]; MR],
            ) -> [[f32; GROUP]; MR] {
                nibbles(w, x)
            }

            /// Eight per-row unsigned bytes as f32 lanes.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn bytes_f32(v: &[u8; GROUP]) -> __m256 {
                let b = _mm_loadl_epi64(v.as_ptr() as *const __m128i);
                _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b))
            }

            /// Eight per-row signed bytes as i32 lanes.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn sbytes_i32(v: &[i8; GROUP]) -> __m256i {
                _mm256_cvtepi8_epi32(_mm_loadl_epi64(v.as_ptr() as *const __m128i))
            }

            /// Q4_K and Q5_K: per sub-block, the nibble dot of Q4_1 (Q5_K ORs its fifth bits
            /// in first, as Q5_0), then `(sumi * d * sc - isum * dmin * m) * x.d`.
            #[target_feature(enable = $features)]
            unsafe fn k_nibbles<W: KNibbles, const MR: usize>(
                w: &[W],
                x: [&[ActBlock]; MR],
            ) -> [[f32; GROUP]; MR] {
                let mut acc = [_mm256_setzero_ps(); MR];
                for (b, wb) in w.iter().enumerate() {
                    ahead(w, b);
                    let ks = wb.scales();
                    let (d, dmin) = (scales(&ks.d), scales(&ks.dmin));
                    for j in 0..SUBS {
                        let xs = blocks_at(&x, SUBS * b + j);
                        let high = wb.qh(j).map_or(High::None, High::Fifth);
                        let (lo, hi) = nibble_dots::<MR, false>(wb.qs(j), high, &xs);
                        let scale = _mm256_mul_ps(d, bytes_f32(&ks.sc[j]));
                        let min = _mm256_mul_ps(dmin, bytes_f32(&ks.m[j]));
                        for i in 0..MR {
                            let sumi = _mm256_add_epi32(lo[i], hi[i]);
                            let a = _mm256_mul_ps(_mm256_cvtepi32_ps(sumi), scale);
                            let m = _mm256_mul_ps(_mm256_set1_ps(xs[i].fsum), min);
                            let t = _mm256_mul_ps(_mm256_sub_ps(a, m), _mm256_set1_ps(xs[i].d));
                            acc[i] = _mm256_add_ps(acc[i], t);
                        }
                    }
                }
                finish(acc)
            }

            pub(super) unsafe fn q4_k<const MR: usize>(
                w: &[Q4_Kx8],
                x: [&[ActBlock]; MR],
            ) -> [[f32; GROUP]; MR] {
                k_nibbles(w, x)
            }

            pub(super) unsafe fn q5_k<const MR: usize>(
                w: &[Q5_Kx8],
                x: [&[ActBlock]; MR],
            ) -> [[f32; GROUP]; MR] {
                k_nibbles(w, x)
            }

            /// Q6_K: per sub-block, Q5_0's unsigned dot with two high bits ORed in instead of
            /// one, on each 16-element half, `32 *` the half's activation sum subtracted, the
            /// halves scaled exactly in integers, then `sumi * d * x.d`.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn q6_k<const MR: usize>(
                w: &[Q6_Kx8],
                x: [&[ActBlock]; MR],
            ) -> [[f32; GROUP]; MR] {
                let mut acc = [_mm256_setzero_ps(); MR];
                for (b, wb) in w.iter().enumerate() {
                    ahead(w, b);
                    let d = scales(&wb.d);
                    for j in 0..SUBS {
                        let xs = blocks_at(&x, SUBS * b + j);
                        let sub = &wb.subs[j];
                        let (lo, hi) = nibble_dots::<MR, true>(&sub.ql, High::Two(&sub.qh), &xs);
                        let (s0, s1) = (sbytes_i32(&wb.sc[2 * j]), sbytes_i32(&wb.sc[2 * j + 1]));
                        for i in 0..MR {
                            let l0 = _mm256_sub_epi32(lo[i], _mm256_set1_epi32(xs[i].hsum32[0]));
                            let h0 = _mm256_sub_epi32(hi[i], _mm256_set1_epi32(xs[i].hsum32[1]));
                            let sumi = _mm256_add_epi32(
                                _mm256_mullo_epi32(l0, s0),
                                _mm256_mullo_epi32(h0, s1),
                            );
                            let t = _mm256_mul_ps(_mm256_cvtepi32_ps(sumi), d);
                            let t = _mm256_mul_ps(t, _mm256_set1_ps(xs[i].d));
                            acc[i] = _mm256_add_ps(acc[i], t);
                        }
                    }
                }
                finish(acc)
            }

            #[target_feature(enable = $features)]
            pub(super) unsafe fn q8_0<const MR: usize>(
                w: &[Q8_0x8],
                x: [&[ActBlock]; MR],
            ) -> [[f32; GROUP]; MR] {
                let mut acc = [_mm256_setzero_ps(); MR];
                for (b, wb) in w.iter().enumerate() {
                    ahead(w, b);
                    let xs = blocks_at(&x, b);
                    let mut chains = [[_mm256_setzero_si256(); MR]; 2 * CHAINS];
                    for l in 0..8 {
                        let v = _mm256_loadu_si256(wb.qs.as_ptr().add(32 * l) as *const __m256i);
                        let u = _mm256_abs_epi8(v);
                        let c = if MR >= 4 { 0 } else { l % (2 * CHAINS) };
                        for i in 0..MR {
                            let s = _mm256_sign_epi8(bcast(xs[i].qs.as_ptr().add(4 * l)), v);
                            chains[c][i] = dp(chains[c][i], u, s);
                        }
                    }
                    let mut sums = [_mm256_setzero_si256(); MR];
                    for i in 0..MR {
                        for chain in &chains {
                            sums[i] = _mm256_add_epi32(sums[i], chain[i]);
                        }
                    }
                    let dw = scales(&wb.d);
                    for i in 0..MR {
                        let t = _mm256_mul_ps(_mm256_cvtepi32_ps(sums[i]), dw);
                        let t = _mm256_mul_ps(t, _mm256_set1_ps(xs[i].d));
                        acc[i] = _mm256_add_ps(acc[i], t);
                    }
                }
                finish(acc)
            }
        }
    };
}

// AVX2's partial sums are 16-bit pair sums, exact while they stay within i16: a step adds at
// most 2 x max x 127 per lane (activations are within +-127), so 2 steps of 6-bit values (32,004),
// 4 of 5-bit ones (31,496) and 8 of 4-bit ones (30,480).
kernels!(
    avx2,
    "avx2,fma,f16c",
    1,
    true,
    |max: i32| (i16::MAX as i32 / (2 * max * 127)) as usize,
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dp(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        _mm256_add_epi32(acc, widen(_mm256_maddubs_epi16(u, s)))
    },
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn step(part: __m256i, u: __m256i, s: __m256i) -> __m256i {
        _mm256_add_epi16(part, _mm256_maddubs_epi16(u, s))
    },
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn widen(part: __m256i) -> __m256i {
        _mm256_madd_epi16(part, _mm256_set1_epi16(1))
    }
);

kernels!(
    vnni,
    "avx2,fma,f16c,avx512f,avx512vl,avx512vnni",
    2,
    false,
    |_max: i32| 4,
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
    unsafe fn dp(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(acc, u, s)
    },
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
    unsafe fn step(part: __m256i, u: __m256i, s: __m256i) -> __m256i {
        dp(part, u, s)
    },
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
    unsafe fn widen(part: __m256i) -> __m256i {
        part
    }
);
