//! A SIMD kernel for Q4_1 weights against Q8_1 activations (the type of most of SmolLM2's
//! matrices): AVX2 integer dot products, several activation rows per weight block so that each
//! block is unpacked once per tile of rows.
//!
//! Numerics: the integer part of every block product is computed exactly with SIMD (4-bit x 8-bit
//! products summed in 16 then 32 bits cannot overflow), then scaled and accumulated in scalar f32 in
//! exactly the order of candle's portable `vec_dot`, so results are bit for bit those of the
//! portable path (and the model's outputs do not change with the CPU). Each row's operations are
//! the same whatever the tile it sits in, so a row's result does not depend on the batch.
//! Availability: x86-64 with AVX2 and FMA, detected at run time; other machines use the portable
//! path in [`super::linear`].

use candle_core::quantized::k_quants::{BlockQ4_1, BlockQ8_1};
use half::f16;
use std::sync::atomic::{AtomicBool, Ordering};

/// The layout of candle's `BlockQ4_1` (its fields are private): scale, minimum, 32 nibbles.
#[repr(C)]
struct Q4_1 {
    d: f16,
    m: f16,
    qs: [u8; 16],
}

/// The layout of candle's `BlockQ8_1`: scale, scale times the sum of the values, 32 values.
#[repr(C)]
struct Q8_1 {
    d: f16,
    s: f16,
    qs: [i8; 32],
}

const _: () = assert!(std::mem::size_of::<Q4_1>() == std::mem::size_of::<BlockQ4_1>());
const _: () = assert!(std::mem::size_of::<Q8_1>() == std::mem::size_of::<BlockQ8_1>());

fn as_q4_1(w: &[BlockQ4_1]) -> &[Q4_1] {
    // SAFETY: both types are `repr(C)` with the same fields in the same order (sizes asserted).
    unsafe { std::slice::from_raw_parts(w.as_ptr() as *const Q4_1, w.len()) }
}

fn as_q8_1(x: &[BlockQ8_1]) -> &[Q8_1] {
    // SAFETY: as above.
    unsafe { std::slice::from_raw_parts(x.as_ptr() as *const Q8_1, x.len()) }
}

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the kernel off (or back on) for the whole process, to compare against the portable path
/// in benchmarks. Results are the same bits either way.
pub fn set_enabled(enabled: bool) {
    ENABLED.store(enabled, Ordering::Relaxed);
}

/// Whether this machine can run the kernel (and it is enabled).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        ENABLED.load(Ordering::Relaxed)
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Rows of activations handled together against one weight block.
const TILE: usize = 4;

/// `out[c * m + r] = dot(W[c], x[r])` for the columns of `w` (`kb` blocks each) and the `m` rows
/// of `xq` (quantized activations), column-major. Call only when [`available`] is true.
pub fn matmul_columns(w: &[BlockQ4_1], kb: usize, xq: &[BlockQ8_1], m: usize, out: &mut [f32]) {
    debug_assert!(available());
    let (w, xq) = (as_q4_1(w), as_q8_1(xq));
    let row = |r: usize| &xq[r * kb..(r + 1) * kb];
    for (c, col_out) in out.chunks_exact_mut(m).enumerate() {
        let wrow = &w[c * kb..(c + 1) * kb];
        let mut r = 0;
        while r + TILE <= m {
            let tile: [&[Q8_1]; TILE] = std::array::from_fn(|i| row(r + i));
            // SAFETY: `available()` checked the CPU features.
            let dots = unsafe { x86::dot_tile(wrow, tile) };
            col_out[r..r + TILE].copy_from_slice(&dots);
            r += TILE;
        }
        for (i, o) in col_out[r..].iter_mut().enumerate() {
            // SAFETY: as above.
            *o = unsafe { x86::dot_tile(wrow, [row(r + i)]) }[0];
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Q4_1, Q8_1};
    use std::arch::x86_64::*;

    /// Sum of eight 32-bit lanes (exact integer arithmetic).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum_i32(v: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
        _mm_cvtsi128_si32(s)
    }

    /// Dot products of one weight row with `R` activation rows.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_tile<const R: usize>(w: &[Q4_1], xs: [&[Q8_1]; R]) -> [f32; R] {
        let mut sums = [0f32; R];
        let low = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        for (b, wb) in w.iter().enumerate() {
            let packed = _mm_loadu_si128(wb.qs.as_ptr() as *const __m128i);
            // Elements 0..16 are the low nibbles, 16..32 the high ones.
            let both = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed);
            let qw = _mm256_and_si256(both, low);
            let (dw, mw) = (wb.d.to_f32(), wb.m.to_f32());
            for r in 0..R {
                let xb = &xs[r][b];
                let qx = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
                let pairs = _mm256_maddubs_epi16(qw, qx);
                let sumi = hsum_i32(_mm256_madd_epi16(pairs, ones));
                // The portable path's expression, in its order (no fused multiply-add).
                sums[r] += sumi as f32 * dw * xb.d.to_f32() + mw * xb.s.to_f32();
            }
        }
        sums
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod x86 {
    use super::{Q4_1, Q8_1};

    pub(super) unsafe fn dot_tile<const R: usize>(_: &[Q4_1], _: [&[Q8_1]; R]) -> [f32; R] {
        unreachable!("available() is false off x86-64")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::k_quants::GgmlType;

    fn blocks(n: usize, seed: u32) -> (Vec<BlockQ4_1>, Vec<f32>) {
        let x: Vec<f32> = (0..n * 32)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        let mut w: Vec<BlockQ4_1> = (0..n).map(|_| BlockQ4_1::zeros()).collect();
        BlockQ4_1::from_float(&x, &mut w);
        (w, x)
    }

    fn quantize(x: &[f32]) -> Vec<BlockQ8_1> {
        let mut q: Vec<BlockQ8_1> = (0..x.len() / 32).map(|_| BlockQ8_1::zeros()).collect();
        BlockQ8_1::from_float(x, &mut q);
        q
    }

    #[test]
    fn matches_the_portable_dot_product_bit_for_bit() {
        if !available() {
            return;
        }
        let kb = 18;
        let (w, _) = blocks(kb * 3, 1);
        let (_, x) = blocks(kb * 6, 2);
        let xq = quantize(&x);
        let mut out = vec![0f32; 3 * 6];
        matmul_columns(&w, kb, &xq, 6, &mut out);
        for c in 0..3 {
            for r in 0..6 {
                let want = BlockQ4_1::vec_dot(
                    kb * 32,
                    &w[c * kb..(c + 1) * kb],
                    &xq[r * kb..(r + 1) * kb],
                );
                let got = out[c * 6 + r];
                assert_eq!(got.to_bits(), want.to_bits(), "{got} vs {want}");
            }
        }
    }

    #[test]
    fn a_row_gives_the_same_bits_alone_and_in_a_tile() {
        if !available() {
            return;
        }
        let kb = 18;
        let (w, _) = blocks(kb * 2, 3);
        let (_, x) = blocks(kb * 7, 4);
        let xq = quantize(&x);
        let mut all = vec![0f32; 2 * 7];
        matmul_columns(&w, kb, &xq, 7, &mut all);
        for r in 0..7 {
            let mut one = vec![0f32; 2];
            matmul_columns(&w, kb, &xq[r * kb..(r + 1) * kb], 1, &mut one);
            assert_eq!(one[0].to_bits(), all[r].to_bits(), "row {r}");
            assert_eq!(one[1].to_bits(), all[7 + r].to_bits(), "row {r}");
        }
    }
}
