//! Every kernel against the scalar one (bit for bit), the scalar one against candle's
//! `vec_dot_unopt` (bit for bit), and all against a dequantize-then-f64 reference within the
//! bound that 8-bit activation quantization allows, on odd shapes and batches of 1 to 64.

use super::kquants::KNibbles;
use super::*;

/// Deterministic values in [-1, 1) with a few larger outliers, as activations have.
fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let h = (i as u32).wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(40_503);
            let v = (h % 20_001) as f32 / 10_000.0 - 1.0;
            if h.is_multiple_of(97) {
                v * 6.0
            } else {
                v
            }
        })
        .collect()
}

fn quantize_weight<T: GgmlType>(rows: usize, k: usize, seed: u32) -> Vec<T> {
    let w = values(rows * k, seed);
    let mut q: Vec<T> = (0..rows * k / T::BLCK_SIZE).map(|_| T::zeros()).collect();
    T::from_float(&w, &mut q);
    q
}

/// The largest error 8-bit activations can cause in `dot(w, x)`: per block, rounding to the
/// f16-stored scale moves each value by at most 0.57 of the scale; Q4_1's `m * s` term carries
/// two f16 roundings of the scaled sum. Plus float slack for the summation.
fn bound(w: &[f32], x: &[f32], xq: &[ActBlock], mins: &[f32]) -> f64 {
    let mut b = 1e-5;
    for (blk, xb) in xq.iter().enumerate() {
        let range = blk * 32..(blk + 1) * 32;
        let wabs: f64 = w[range.clone()].iter().map(|v| v.abs() as f64).sum();
        let prod: f64 = range.map(|i| (w[i] * x[i]).abs() as f64).sum();
        b += 0.57 * xb.d as f64 * wabs + prod * 1e-5;
        if let Some(m) = mins.get(blk) {
            b += (m.abs() * xb.s.abs()) as f64 / 512.0;
        }
    }
    b
}

/// Runs one weight type through every check; `mins(block)` gives Q4_1's per-block minimum.
fn check<F: Format>(
    rows: usize,
    k: usize,
    batch: usize,
    seed: u32,
    mins: impl Fn(&[F::Src]) -> Vec<f32>,
) {
    let kb = k / F::Src::BLCK_SIZE;
    let src = quantize_weight::<F::Src>(rows, k, seed);
    let packed = Packed::<F>::pack(&src, rows, kb);
    assert_eq!(packed.unpack().len(), src.len());
    let x = values(batch * k, seed + 1);
    let acts = QActs::quantize(&x, k);
    let mut wf = vec![0f32; rows * k];
    F::Src::to_float(&src, &mut wf);

    let mut want = vec![0f32; batch * rows];
    packed.matmul(Kernel::Scalar, &acts, &mut want);
    for kernel in Kernel::ALL.into_iter().filter(|k| k.available()) {
        let mut got = vec![0f32; batch * rows];
        packed.matmul(kernel, &acts, &mut got);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "{kernel:?} {rows}x{k} batch {batch} at {i}: {g} vs {w}"
            );
        }
    }

    let mut xq: Vec<<F::Src as GgmlType>::VecDotType> =
        (0..batch * kb).map(|_| GgmlType::zeros()).collect();
    GgmlType::from_float(&x, &mut xq);
    for i in 0..batch {
        for c in 0..rows {
            let wrow = &src[c * kb..(c + 1) * kb];
            let ours = want[i * rows + c];
            // candle's Q4_1 dot product asserts an even number of blocks; the K-quants' formulas
            // are Wick's own (activations quantized per 32, not per 256).
            if kb.is_multiple_of(2) && F::SUB == 1 {
                let candle = F::Src::vec_dot_unopt(k, wrow, &xq[i * kb..(i + 1) * kb]);
                assert_eq!(
                    ours.to_bits(),
                    candle.to_bits(),
                    "scalar vs candle at ({i}, {c})"
                );
            }

            let (wr, xr) = (&wf[c * k..(c + 1) * k], &x[i * k..(i + 1) * k]);
            let reference: f64 = wr.iter().zip(xr).map(|(a, b)| *a as f64 * *b as f64).sum();
            let limit = bound(wr, xr, acts.row(i), &mins(wrow));
            assert!(
                (ours as f64 - reference).abs() <= limit,
                "({i}, {c}) of {rows}x{k}: {ours} vs reference {reference}, bound {limit}"
            );
        }
    }
}

fn no_mins<T>(_: &[T]) -> Vec<f32> {
    Vec::new()
}

fn q4_1_mins(blocks: &[BlockQ4_1]) -> Vec<f32> {
    blocks
        .iter()
        .map(|b| raw::<_, RawQ4_1>(b).m.to_f32())
        .collect()
}

/// Shapes: rows not a multiple of the group, widths of 1, 3, 18 (576) and 48 blocks.
const SHAPES: [(usize, usize); 5] = [(1, 32), (13, 96), (24, 576), (37, 576), (9, 1536)];
const BATCHES: [usize; 10] = [1, 2, 3, 4, 5, 7, 9, 13, 16, 64];

#[test]
fn q4_0_kernels_agree_and_match_the_reference() {
    for (s, (rows, k)) in SHAPES.into_iter().enumerate() {
        for m in BATCHES {
            check::<Q4_0x8>(rows, k, m, s as u32, no_mins);
        }
    }
}

#[test]
fn q4_1_kernels_agree_and_match_the_reference() {
    for (s, (rows, k)) in SHAPES.into_iter().enumerate() {
        for m in BATCHES {
            check::<Q4_1x8>(rows, k, m, 10 + s as u32, q4_1_mins);
        }
    }
}

#[test]
fn q8_0_kernels_agree_and_match_the_reference() {
    for (s, (rows, k)) in SHAPES.into_iter().enumerate() {
        for m in BATCHES {
            check::<Q8_0x8>(rows, k, m, 20 + s as u32, no_mins);
        }
    }
}

#[test]
fn a_row_gives_the_same_bits_alone_and_in_any_batch() {
    let (rows, k) = (40, 576);
    let src = quantize_weight::<BlockQ4_1>(rows, k, 5);
    let packed = Packed::<Q4_1x8>::pack(&src, rows, k / 32);
    let x = values(64 * k, 6);
    for kernel in Kernel::ALL.into_iter().filter(|k| k.available()) {
        let mut all = vec![0f32; 64 * rows];
        packed.matmul(kernel, &QActs::quantize(&x, k), &mut all);
        for i in [0, 3, 5, 62, 63] {
            let mut one = vec![0f32; rows];
            let acts = QActs::quantize(&x[i * k..(i + 1) * k], k);
            packed.matmul(kernel, &acts, &mut one);
            assert_eq!(one, all[i * rows..(i + 1) * rows], "{kernel:?} row {i}");
        }
    }
}

#[test]
fn packing_round_trips_every_row() {
    let (rows, k) = (11, 64);
    let src = quantize_weight::<BlockQ8_0>(rows, k, 7);
    let packed = Packed::<Q8_0x8>::pack(&src, rows, k / 32);
    let mut a = vec![0f32; rows * k];
    let mut b = vec![0f32; rows * k];
    BlockQ8_0::to_float(&src, &mut a);
    BlockQ8_0::to_float(&packed.unpack(), &mut b);
    assert_eq!(a, b);
}

#[test]
fn activation_quantization_is_candles_bit_for_bit() {
    use candle_core::quantized::k_quants::BlockQ8_1;
    #[repr(C)]
    struct RawQ8_1 {
        d: f16,
        s: f16,
        qs: [i8; 32],
    }
    // Random rows, a zero block, and a block of exact half-way values (amax 127: scale 1).
    let mut x = values(32 * 40, 9);
    x.extend(std::iter::repeat_n(0.0, 32));
    x.extend((0..32).map(|i| if i == 0 { 127.0 } else { i as f32 - 16.5 }));
    // Blocks with a NaN, infinities, a huge value, subnormals and negative zeros among ordinary
    // values: the vectorised form must clamp and convert as `as i8` does.
    let special = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        3e38,
        1e-40,
        -0.0,
    ];
    for (n, &v) in special.iter().enumerate() {
        x.extend((0..32).map(|i| {
            if i % 7 == n {
                v
            } else {
                (i as f32 - 15.0) * 0.3
            }
        }));
    }
    x.extend(std::iter::repeat_n(1e-40, 32));
    let ours = QActs::quantize(&x, 32);
    let mut theirs: Vec<BlockQ8_1> = (0..x.len() / 32).map(|_| BlockQ8_1::zeros()).collect();
    BlockQ8_1::from_float(&x, &mut theirs);
    for (a, b) in ours.blocks.iter().zip(&theirs) {
        // SAFETY: `RawQ8_1` mirrors candle's `repr(C)` block.
        let b = unsafe { &*(b as *const BlockQ8_1 as *const RawQ8_1) };
        assert_eq!(a.qs, b.qs);
        assert_eq!(a.d.to_bits(), b.d.to_f32().to_bits());
        assert_eq!(a.s.to_bits(), b.s.to_f32().to_bits());
        assert_eq!(a.isum, b.qs.iter().map(|&q| q as i32).sum::<i32>());
        assert_eq!(a.fsum, a.isum as f32);
        let half = |h: usize| {
            b.qs[16 * h..16 * h + 16]
                .iter()
                .map(|&q| q as i32)
                .sum::<i32>()
        };
        assert_eq!(a.hsum32, [32 * half(0), 32 * half(1)]);
    }
}

#[test]
fn kernel_names_round_trip_and_scalar_is_always_there() {
    for k in Kernel::ALL {
        assert_eq!(Kernel::from_name(k.name()), Some(k));
    }
    assert!(Kernel::Scalar.available());
    assert!(Kernel::best().available());
    assert_eq!(Kernel::from_name("sse"), None);
}

/// Q5_0 in its own group layout: every kernel against the scalar one and candle's Q5_0 dot
/// product, on odd shapes and Qwen2.5-0.5B's widths (896, 4864).
#[test]
fn q5_0_kernels_agree_and_match_the_reference() {
    let shapes = SHAPES.into_iter().chain([(9, 896), (17, 4864)]);
    for (s, (rows, k)) in shapes.enumerate() {
        for m in BATCHES {
            check::<Q5_0x8>(rows, k, m, 30 + s as u32, no_mins);
        }
    }
}

#[test]
fn q5_0_packing_round_trips_every_row() {
    use candle_core::quantized::k_quants::BlockQ5_0;
    let (rows, k) = (11, 64);
    let src = quantize_weight::<BlockQ5_0>(rows, k, 8);
    let packed = Packed::<Q5_0x8>::pack(&src, rows, k / 32);
    let (mut a, mut b) = (vec![0f32; rows * k], vec![0f32; rows * k]);
    BlockQ5_0::to_float(&src, &mut a);
    BlockQ5_0::to_float(&packed.unpack(), &mut b);
    assert_eq!(a, b);
}

/// K-quant shapes: widths of 1 to 19 superblocks (Qwen2.5-1.5B's 1,536 and 8,960 are 6 and 35,
/// Gemma 3's 1,024 and 2,048 are 4 and 8).
const K_SHAPES: [(usize, usize); 5] = [(1, 256), (13, 512), (24, 1536), (37, 1024), (9, 4864)];

/// A Q4_K or Q5_K row's minimum per 32-element block, `dmin * m`.
fn k_mins<F: Format + KNibbles>(blocks: &[F::Src]) -> Vec<f32> {
    let packed = Packed::<F>::pack(blocks, 1, blocks.len());
    packed
        .groups
        .iter()
        .flat_map(|g| {
            let s = g.scales();
            (0..8).map(move |j| s.dmin[0].to_f32() * s.m[j][0] as f32)
        })
        .collect()
}

#[test]
fn q4_k_kernels_agree_and_match_the_reference() {
    for (s, (rows, k)) in K_SHAPES.into_iter().enumerate() {
        for m in BATCHES {
            check::<Q4_Kx8>(rows, k, m, 40 + s as u32, k_mins::<Q4_Kx8>);
        }
    }
}

#[test]
fn q6_k_kernels_agree_and_match_the_reference() {
    for (s, (rows, k)) in K_SHAPES.into_iter().enumerate() {
        for m in BATCHES {
            check::<Q6_Kx8>(rows, k, m, 50 + s as u32, no_mins);
        }
    }
}

#[test]
fn k_quant_packing_round_trips_every_row_bit_for_bit() {
    use candle_core::quantized::k_quants::{BlockQ4K, BlockQ6K};
    fn bytes<T>(v: &[T]) -> &[u8] {
        // SAFETY: candle's blocks are plain-old-data `repr(C)` structs.
        unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
    }
    let (rows, k) = (11, 512);
    let q4 = quantize_weight::<BlockQ4K>(rows, k, 60);
    assert_eq!(
        bytes(&Packed::<Q4_Kx8>::pack(&q4, rows, 2).unpack()),
        bytes(&q4)
    );
    let q6 = quantize_weight::<BlockQ6K>(rows, k, 61);
    assert_eq!(
        bytes(&Packed::<Q6_Kx8>::pack(&q6, rows, 2).unpack()),
        bytes(&q6)
    );
}

#[test]
fn q5_k_kernels_agree_and_match_the_reference() {
    for (s, (rows, k)) in K_SHAPES.into_iter().enumerate() {
        for m in BATCHES {
            check::<Q5_Kx8>(rows, k, m, 70 + s as u32, k_mins::<Q5_Kx8>);
        }
    }
}

/// `n` blocks whose bytes are all `0xFF` (every quantized value at its largest, every scale
/// byte set) except the f16 fields at `halves` (byte offsets), which hold 1.0.
fn saturated<T: GgmlType>(n: usize, halves: &[usize]) -> Vec<T> {
    let mut v: Vec<T> = (0..n).map(|_| T::zeros()).collect();
    let size = std::mem::size_of::<T>();
    // SAFETY: candle's blocks are plain-old-data `repr(C)` structs of bytes, u8/i8 arrays and
    // f16s; any bit pattern is a valid value of each.
    let bytes = unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, n * size) };
    bytes.fill(0xFF);
    for block in bytes.chunks_exact_mut(size) {
        for &at in halves {
            block[at..at + 2].copy_from_slice(&f16::ONE.to_le_bytes());
        }
    }
    v
}

/// The widest integer sums a kernel can meet: every weight at its largest value against every
/// activation at +127, then at -127, in tiles of each size. The SIMD kernels keep partial sums
/// in 16-bit lanes for a few steps; an overflow there would show here as different bits.
fn check_saturated<F: Format>(src: &[F::Src], rows: usize, kb: usize) {
    let packed = Packed::<F>::pack(src, rows, kb);
    let k = kb * F::Src::BLCK_SIZE;
    for sign in [1.0f32, -1.0] {
        for batch in [1, 3, 4, 8, 9] {
            let acts = QActs::quantize(&vec![sign; batch * k], k);
            assert!(acts
                .row(0)
                .iter()
                .all(|b| b.qs.iter().all(|&q| q == 127 * sign as i8)));
            let mut want = vec![0f32; batch * rows];
            packed.matmul(Kernel::Scalar, &acts, &mut want);
            for kernel in Kernel::ALL.into_iter().filter(|k| k.available()) {
                let mut got = vec![0f32; batch * rows];
                packed.matmul(kernel, &acts, &mut got);
                let same = got
                    .iter()
                    .zip(&want)
                    .all(|(g, w)| g.to_bits() == w.to_bits());
                assert!(
                    same,
                    "{kernel:?}, {sign} x 127, batch {batch}: {got:?} vs {want:?}"
                );
            }
        }
    }
}

#[test]
fn the_largest_integer_sums_give_the_same_bits_in_every_kernel() {
    use candle_core::quantized::k_quants::{BlockQ4K, BlockQ5K, BlockQ6K};
    let (rows, kb) = (9, 2);
    let n = rows * kb;
    check_saturated::<Q4_0x8>(&saturated::<BlockQ4_0>(n, &[0]), rows, kb);
    check_saturated::<Q4_1x8>(&saturated::<BlockQ4_1>(n, &[0, 2]), rows, kb);
    check_saturated::<Q5_0x8>(&saturated::<BlockQ5_0>(n, &[0]), rows, kb);
    check_saturated::<Q4_Kx8>(&saturated::<BlockQ4K>(n, &[0, 2]), rows, kb);
    check_saturated::<Q5_Kx8>(&saturated::<BlockQ5K>(n, &[0, 2]), rows, kb);
    // Q6_K's f16 scale is its last field; its sub-block scales are then -1.
    let q6_d = std::mem::size_of::<BlockQ6K>() - 2;
    check_saturated::<Q6_Kx8>(&saturated::<BlockQ6K>(n, &[q6_d]), rows, kb);
}
