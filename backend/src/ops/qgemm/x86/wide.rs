//! The [`Kernel::Avx512Wide`](super::super::Kernel) bodies: AVX-512 VNNI on 512-bit registers,
//! two weight groups at once. Lanes 0-7 of every register are the first group's eight rows and
//! lanes 8-15 the second's, so one broadcast of four activation bytes and one `vpdpbusd` serve
//! sixteen rows, and every float step runs on sixteen rows' lanes. Each lane does exactly what
//! the 256-bit bodies do for its row (the same integer sums, the same float operations in the
//! same order), so the bits are theirs. On an Intel Xeon with two 512-bit units this does twice
//! the work per instruction; on CPUs that split a 512-bit operation in two it halves the
//! instructions. A task's odd last group runs on the 256-bit VNNI body.
//!
//! Needs AVX-512BW besides AVX-512 VNNI (byte masks; 16-bit shifts on 512-bit registers).

use super::super::kquants::{KNibbles, SUBS};
use super::super::{
    ActBlock, Format, Kernel, Q4_0x8, Q4_1x8, Q4_Kx8, Q5_0x8, Q5_Kx8, Q6_Kx8, Q8_0x8, GROUP,
};
use super::Nibbles;
use half::f16;
use std::arch::x86_64::*;

/// Independent accumulator chains per row and half for narrow tiles (fewer than four rows),
/// where one chain would wait on `vpdpbusd`'s latency.
const CHAINS: usize = 2;

/// Two groups' results for `MR` activation rows: `out[i][h][r]`, group `h`, row `r`.
pub(in super::super) type Pair<const MR: usize> = [[[f32; GROUP]; 2]; MR];

/// Dispatches two groups' tile to the bodies below; `None` for the kernels that run one group
/// at a time.
macro_rules! dispatch_pair {
    ($name:ident, $fmt:ty, $body:path) => {
        #[inline(always)]
        pub(in super::super) fn $name<const MR: usize>(
            kernel: Kernel,
            w: [&[$fmt]; 2],
            x: [&[ActBlock]; MR],
        ) -> Option<Pair<MR>> {
            if kernel != Kernel::Avx512Wide {
                return None;
            }
            for row in &x {
                for g in &w {
                    assert_eq!(
                        row.len(),
                        g.len() * <$fmt as Format>::SUB,
                        "activation and weight blocks differ"
                    );
                }
            }
            // SAFETY: `matmul_many` replaces a kernel the CPU lacks by the scalar one, so the
            // 512-bit kernel runs only where `available`; lengths are checked above.
            Some(unsafe { $body(w, x) })
        }
    };
}

dispatch_pair!(q4_0_pair, Q4_0x8, nibbles);
dispatch_pair!(q4_1_pair, Q4_1x8, nibbles);
dispatch_pair!(q5_0_pair, Q5_0x8, nibbles);
dispatch_pair!(q8_0_pair, Q8_0x8, q8_0);
dispatch_pair!(q4_k_pair, Q4_Kx8, k_nibbles);
dispatch_pair!(q5_k_pair, Q5_Kx8, k_nibbles);
dispatch_pair!(q6_k_pair, Q6_Kx8, q6_k);

pub(super) fn available() -> bool {
    super::vnni_available() && is_x86_feature_detected!("avx512bw")
}

/// The same-offset 32 bytes of two groups' blocks, the first group's in the low half.
#[inline(always)]
unsafe fn pair256(a: *const u8, b: *const u8) -> __m512i {
    let lo = _mm512_castsi256_si512(_mm256_loadu_si256(a.cast()));
    _mm512_inserti64x4::<1>(lo, _mm256_loadu_si256(b.cast()))
}

/// Two groups' eight f16 values (scales, minimums) as sixteen f32 lanes.
#[inline(always)]
unsafe fn scales2(a: &[f16; GROUP], b: &[f16; GROUP]) -> __m512 {
    let lo = _mm256_castsi128_si256(_mm_loadu_si128(a.as_ptr().cast()));
    _mm512_cvtph_ps(_mm256_inserti128_si256::<1>(
        lo,
        _mm_loadu_si128(b.as_ptr().cast()),
    ))
}

/// Two groups' eight bytes as sixteen 32-bit lanes.
#[inline(always)]
unsafe fn bytes2(a: &[u8; GROUP], b: &[u8; GROUP]) -> __m128i {
    _mm_unpacklo_epi64(
        _mm_loadl_epi64(a.as_ptr().cast()),
        _mm_loadl_epi64(b.as_ptr().cast()),
    )
}

/// Four activation bytes at `p`, repeated in every lane.
#[inline(always)]
unsafe fn bcast(p: *const i8) -> __m512i {
    _mm512_set1_epi32(std::ptr::read_unaligned(p as *const i32))
}

/// Prefetches both groups' block `b` [`super::PREFETCH`] bytes ahead.
#[inline(always)]
unsafe fn ahead<W>(w: [&[W]; 2], b: usize) {
    for g in w {
        let p = g.as_ptr().wrapping_add(b).cast::<i8>();
        let p = p.wrapping_add(super::PREFETCH);
        for o in (0..std::mem::size_of::<W>()).step_by(64) {
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(o));
        }
    }
}

/// Block `b` of each activation row.
#[inline(always)]
unsafe fn blocks_at<const MR: usize>(x: &[&[ActBlock]; MR], b: usize) -> [&'static ActBlock; MR] {
    // SAFETY (caller): every row has more than `b` blocks. The 'static lifetime never escapes
    // the kernel, which borrows `x` for its whole run.
    std::array::from_fn(|i| &*x[i].as_ptr().add(b))
}

#[inline(always)]
unsafe fn finish<const MR: usize>(acc: [__m512; MR]) -> Pair<MR> {
    let mut out = [[[0f32; GROUP]; 2]; MR];
    for i in 0..MR {
        let mut all = [0f32; 2 * GROUP];
        _mm512_storeu_ps(all.as_mut_ptr(), acc[i]);
        out[i][0].copy_from_slice(&all[..GROUP]);
        out[i][1].copy_from_slice(&all[GROUP..]);
    }
    out
}

/// Two groups' fifth bits (one `u32` each) as bytes, `0x10` where the bit is set: the 256-bit
/// `fifth_bits` of each group in its half.
#[inline(always)]
unsafe fn fifth_bits2(a: u32, b: u32) -> __m512i {
    let v = _mm512_inserti64x4::<1>(_mm512_set1_epi32(a as i32), _mm256_set1_epi32(b as i32));
    let pick = _mm512_broadcast_i64x4(_mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3,
        3, 3,
    ));
    let bytes = _mm512_shuffle_epi8(v, pick);
    let set = _mm512_test_epi8_mask(bytes, _mm512_set1_epi64(0x8040_2010_0804_0201u64 as i64));
    _mm512_maskz_mov_epi8(set, _mm512_set1_epi8(0x10))
}

/// The high two bits of nibble vector `n` moved to bits 4 and 5 of each byte (the 256-bit
/// `high_bits` on both halves).
#[inline(always)]
unsafe fn high_bits2(qh: __m512i, n: usize) -> __m512i {
    let moved = match n % 4 {
        0 => _mm512_slli_epi16::<4>(qh),
        1 => _mm512_slli_epi16::<2>(qh),
        2 => qh,
        _ => _mm512_srli_epi16::<2>(qh),
    };
    _mm512_and_si512(moved, _mm512_set1_epi8(0x30))
}

/// What a nibble block of two groups carries above its low four bits.
#[derive(Clone, Copy)]
enum High2<'a> {
    None,
    Fifth(&'a [u32; 8], &'a [u32; 8]),
    Two(&'a [[u8; 32]; 2], &'a [[u8; 32]; 2]),
}

impl<'a> High2<'a> {
    /// Both groups' fifth bits (Q5_0, Q5_K), or none (the 4-bit types).
    fn fifth(a: Option<&'a [u32; 8]>, b: Option<&'a [u32; 8]>) -> Self {
        match (a, b) {
            (Some(a), Some(b)) => High2::Fifth(a, b),
            _ => High2::None,
        }
    }
}

/// One 32-element block of two groups in Q4_0's nibble layout against `MR` activation blocks:
/// per row, the integer dots of the low and of the high nibbles (the 256-bit `nibble_dots`
/// without merging, on sixteen rows).
#[inline(always)]
unsafe fn nibble_dots2<const MR: usize>(
    qs: [&[u8; 128]; 2],
    high: High2,
    xs: &[&ActBlock; MR],
) -> ([__m512i; MR], [__m512i; MR]) {
    let mask = _mm512_set1_epi8(0x0F);
    let two = match high {
        High2::Two(a, b) => [
            pair256(a[0].as_ptr(), b[0].as_ptr()),
            pair256(a[1].as_ptr(), b[1].as_ptr()),
        ],
        _ => [_mm512_setzero_si512(); 2],
    };
    let mut lo = [[_mm512_setzero_si512(); MR]; CHAINS];
    let mut hi = [[_mm512_setzero_si512(); MR]; CHAINS];
    for l in 0..4 {
        let v = pair256(qs[0].as_ptr().add(32 * l), qs[1].as_ptr().add(32 * l));
        let mut vlo = _mm512_and_si512(v, mask);
        let mut vhi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), mask);
        match high {
            High2::None => {}
            High2::Fifth(a, b) => {
                vlo = _mm512_or_si512(vlo, fifth_bits2(a[2 * l], b[2 * l]));
                vhi = _mm512_or_si512(vhi, fifth_bits2(a[2 * l + 1], b[2 * l + 1]));
            }
            High2::Two(..) => {
                let (n0, n1) = (2 * l, 2 * l + 1);
                vlo = _mm512_or_si512(vlo, high_bits2(two[n0 / 4], n0));
                vhi = _mm512_or_si512(vhi, high_bits2(two[n1 / 4], n1));
            }
        }
        let c = if MR >= 4 { 0 } else { l % CHAINS };
        for i in 0..MR {
            let q = xs[i].qs.as_ptr();
            lo[c][i] = _mm512_dpbusd_epi32(lo[c][i], vlo, bcast(q.add(4 * l)));
            hi[c][i] = _mm512_dpbusd_epi32(hi[c][i], vhi, bcast(q.add(16 + 4 * l)));
        }
    }
    let mut lo_sum = lo[0];
    let mut hi_sum = hi[0];
    for c in 1..CHAINS {
        for i in 0..MR {
            lo_sum[i] = _mm512_add_epi32(lo_sum[i], lo[c][i]);
            hi_sum[i] = _mm512_add_epi32(hi_sum[i], hi[c][i]);
        }
    }
    (lo_sum, hi_sum)
}

/// Q4_0, Q4_1 and Q5_0 (the 256-bit `nibbles`).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
unsafe fn nibbles<W: Nibbles, const MR: usize>(w: [&[W]; 2], x: [&[ActBlock]; MR]) -> Pair<MR> {
    let mut acc = [_mm512_setzero_ps(); MR];
    for b in 0..w[0].len() {
        ahead(w, b);
        let (wa, wb) = (&w[0][b], &w[1][b]);
        let xs = blocks_at(&x, b);
        let high = High2::fifth(wa.qh(), wb.qh());
        let (lo, hi) = nibble_dots2([wa.qs(), wb.qs()], high, &xs);
        let dw = scales2(wa.d(), wb.d());
        let mins = match (wa.m(), wb.m()) {
            (Some(a), Some(b)) => Some(scales2(a, b)),
            _ => None,
        };
        for i in 0..MR {
            let sumi = _mm512_add_epi32(lo[i], hi[i]);
            if let Some(m) = mins {
                let t = _mm512_mul_ps(_mm512_cvtepi32_ps(sumi), dw);
                let t = _mm512_mul_ps(t, _mm512_set1_ps(xs[i].d));
                let ms = _mm512_mul_ps(m, _mm512_set1_ps(xs[i].s));
                acc[i] = _mm512_add_ps(acc[i], _mm512_add_ps(t, ms));
            } else {
                let offset = _mm512_set1_epi32(W::OFFSET * xs[i].isum);
                let sumi = _mm512_sub_epi32(sumi, offset);
                let t = _mm512_mul_ps(_mm512_cvtepi32_ps(sumi), dw);
                let t = _mm512_mul_ps(t, _mm512_set1_ps(xs[i].d));
                acc[i] = _mm512_add_ps(acc[i], t);
            }
        }
    }
    finish(acc)
}

/// Q4_K and Q5_K (the 256-bit `k_nibbles`).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
unsafe fn k_nibbles<W: KNibbles, const MR: usize>(w: [&[W]; 2], x: [&[ActBlock]; MR]) -> Pair<MR> {
    let mut acc = [_mm512_setzero_ps(); MR];
    for b in 0..w[0].len() {
        ahead(w, b);
        let (wa, wb) = (&w[0][b], &w[1][b]);
        let (ka, kb) = (wa.scales(), wb.scales());
        let (d, dmin) = (scales2(&ka.d, &kb.d), scales2(&ka.dmin, &kb.dmin));
        for j in 0..SUBS {
            let xs = blocks_at(&x, SUBS * b + j);
            let high = High2::fifth(wa.qh(j), wb.qh(j));
            let (lo, hi) = nibble_dots2([wa.qs(j), wb.qs(j)], high, &xs);
            let sc = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes2(&ka.sc[j], &kb.sc[j])));
            let m = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes2(&ka.m[j], &kb.m[j])));
            let (scale, min) = (_mm512_mul_ps(d, sc), _mm512_mul_ps(dmin, m));
            for i in 0..MR {
                let sumi = _mm512_add_epi32(lo[i], hi[i]);
                let a = _mm512_mul_ps(_mm512_cvtepi32_ps(sumi), scale);
                let m = _mm512_mul_ps(_mm512_set1_ps(xs[i].fsum), min);
                let t = _mm512_mul_ps(_mm512_sub_ps(a, m), _mm512_set1_ps(xs[i].d));
                acc[i] = _mm512_add_ps(acc[i], t);
            }
        }
    }
    finish(acc)
}

/// Q6_K (the 256-bit `q6_k`).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
unsafe fn q6_k<const MR: usize>(w: [&[Q6_Kx8]; 2], x: [&[ActBlock]; MR]) -> Pair<MR> {
    let mut acc = [_mm512_setzero_ps(); MR];
    for b in 0..w[0].len() {
        ahead(w, b);
        let (wa, wb) = (&w[0][b], &w[1][b]);
        let d = scales2(&wa.d, &wb.d);
        for j in 0..SUBS {
            let xs = blocks_at(&x, SUBS * b + j);
            let (sa, sb) = (&wa.subs[j], &wb.subs[j]);
            let (lo, hi) = nibble_dots2([&sa.ql, &sb.ql], High2::Two(&sa.qh, &sb.qh), &xs);
            let sc = |h: usize| {
                let pair = bytes2(&wa.sc[h].map(|s| s as u8), &wb.sc[h].map(|s| s as u8));
                _mm512_cvtepi8_epi32(pair)
            };
            let (s0, s1) = (sc(2 * j), sc(2 * j + 1));
            for i in 0..MR {
                let l0 = _mm512_sub_epi32(lo[i], _mm512_set1_epi32(xs[i].hsum32[0]));
                let h0 = _mm512_sub_epi32(hi[i], _mm512_set1_epi32(xs[i].hsum32[1]));
                let sumi = _mm512_add_epi32(_mm512_mullo_epi32(l0, s0), _mm512_mullo_epi32(h0, s1));
                let t = _mm512_mul_ps(_mm512_cvtepi32_ps(sumi), d);
                let t = _mm512_mul_ps(t, _mm512_set1_ps(xs[i].d));
                acc[i] = _mm512_add_ps(acc[i], t);
            }
        }
    }
    finish(acc)
}

/// Q8_0 (the 256-bit `q8_0`): the weights' signs moved onto the activations with a byte mask
/// (AVX-512 has no `vpsignb`; a zero weight's product is zero either way).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
unsafe fn q8_0<const MR: usize>(w: [&[Q8_0x8]; 2], x: [&[ActBlock]; MR]) -> Pair<MR> {
    let mut acc = [_mm512_setzero_ps(); MR];
    for b in 0..w[0].len() {
        ahead(w, b);
        let (wa, wb) = (&w[0][b], &w[1][b]);
        let xs = blocks_at(&x, b);
        let mut chains = [[_mm512_setzero_si512(); MR]; 2 * CHAINS];
        for l in 0..8 {
            let v = pair256(
                wa.qs.as_ptr().add(32 * l).cast(),
                wb.qs.as_ptr().add(32 * l).cast(),
            );
            let u = _mm512_abs_epi8(v);
            let negative = _mm512_movepi8_mask(v);
            let c = if MR >= 4 { 0 } else { l % (2 * CHAINS) };
            for i in 0..MR {
                let s = bcast(xs[i].qs.as_ptr().add(4 * l));
                let s = _mm512_mask_sub_epi8(s, negative, _mm512_setzero_si512(), s);
                chains[c][i] = _mm512_dpbusd_epi32(chains[c][i], u, s);
            }
        }
        let dw = scales2(&wa.d, &wb.d);
        for i in 0..MR {
            let mut sum = chains[0][i];
            for chain in &chains[1..] {
                sum = _mm512_add_epi32(sum, chain[i]);
            }
            let t = _mm512_mul_ps(_mm512_cvtepi32_ps(sum), dw);
            let t = _mm512_mul_ps(t, _mm512_set1_ps(xs[i].d));
            acc[i] = _mm512_add_ps(acc[i], t);
        }
    }
    finish(acc)
}
