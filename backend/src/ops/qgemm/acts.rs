//! Activations quantized for the kernels: each 32-element block of an input row to 8 bits with
//! candle's Q8_1 quantization ([`ActBlock`]), once per matmul input and shared by every matrix
//! that reads it ([`QActs`]).

use half::f16;

/// One 32-element block of a quantized activation row: candle's Q8_0/Q8_1 quantization (the two
/// give the same values and scale), with the scale, the scaled sum and the integer sum kept as
/// the kernels need them.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
pub struct ActBlock {
    pub qs: [i8; 32],
    /// The scale, as stored in f16 by candle (exact in f32).
    pub d: f32,
    /// Q8_1's `s`: f16 of the sum times the f16 scale, rounded to f16 (exact in f32).
    pub s: f32,
    /// The sum of `qs`.
    pub isum: i32,
    /// `isum` as f32 (exact: at most 4,096 in magnitude), so that the kernels broadcast it
    /// from memory instead of converting and broadcasting a register in their inner loops.
    pub fsum: f32,
    /// 32 times the sums of `qs[..16]` and `qs[16..]`: Q6_K's offsets (its halves have their
    /// own scales), kept multiplied for the same reason as `fsum`.
    pub hsum32: [i32; 2],
}

// One block to a cache line.
const _: () = assert!(std::mem::size_of::<ActBlock>() == 64);

/// A batch of activation rows quantized for the kernels: `rows * kb` blocks.
pub struct QActs {
    pub rows: usize,
    pub kb: usize,
    pub blocks: Vec<ActBlock>,
}

/// Rows per parallel task when quantizing activations.
const QUANT_ROWS_PER_TASK: usize = 16;

impl QActs {
    /// Quantizes `x` (rows of `k` values, `k` a multiple of 32) block by block, in parallel
    /// over rows when there are many.
    pub fn quantize(x: &[f32], k: usize) -> QActs {
        debug_assert_eq!(k % 32, 0);
        let kb = k / 32;
        let rows = x.len().checked_div(k).unwrap_or(0);
        let empty = ActBlock {
            qs: [0; 32],
            d: 0.0,
            s: 0.0,
            isum: 0,
            fsum: 0.0,
            hsum32: [0; 2],
        };
        let mut blocks = vec![empty; rows * kb];
        let quantize_rows = |xs: &[f32], out: &mut [ActBlock]| {
            let (chunks, _) = xs.as_chunks::<32>();
            for (chunk, b) in chunks.iter().zip(out.iter_mut()) {
                *b = quantize_block(chunk);
            }
        };
        if rows > QUANT_ROWS_PER_TASK {
            let per_task = k * QUANT_ROWS_PER_TASK;
            crate::team::for_each_chunk_mut(&mut blocks, kb * QUANT_ROWS_PER_TASK, |i, out| {
                quantize_rows(&x[i * per_task..((i + 1) * per_task).min(x.len())], out)
            });
        } else {
            quantize_rows(x, &mut blocks);
        }
        QActs { rows, kb, blocks }
    }

    pub(super) fn row(&self, r: usize) -> &[ActBlock] {
        &self.blocks[r * self.kb..(r + 1) * self.kb]
    }
}

/// Candle's Q8_1 quantization of one block (`BlockQ8_1::from_float`: the same results for every
/// input, so the same bits), written over fixed-size arrays so that it vectorises: the largest
/// magnitude over eight lanes, then across them (a maximum is exact in any order; one running
/// maximum is a serial chain of 32), by comparisons (`f32::max` ignores a NaN operand, and so
/// does `v > m` false); then each rounded value is clamped the way `as i8` clamps (NaN to 0,
/// saturating at -128 and 127) before an unchecked conversion.
fn quantize_block(x: &[f32; 32]) -> ActBlock {
    let max = |a: f32, b: f32| if a > b { a } else { b };
    let c = x.as_chunks::<8>().0;
    let lanes: [f32; 8] = std::array::from_fn(|j| {
        let (a, b) = (
            max(c[0][j].abs(), c[1][j].abs()),
            max(c[2][j].abs(), c[3][j].abs()),
        );
        max(a, b)
    });
    let amax = lanes.into_iter().fold(0f32, max);
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0i8; 32];
    for (q, &v) in qs.iter_mut().zip(x) {
        let r = (v * id).round();
        let r = if r.is_nan() { 0.0 } else { r };
        let r = if r > 127.0 { 127.0 } else { r };
        let r = if r < -128.0 { -128.0 } else { r };
        // SAFETY: `r` is a whole number within i8's range (NaN and infinities replaced above).
        *q = unsafe { r.to_int_unchecked::<i32>() } as i8;
    }
    let half = |h: usize| {
        qs[16 * h..16 * h + 16]
            .iter()
            .map(|&q| q as i32)
            .sum::<i32>()
    };
    let hsum = [half(0), half(1)];
    let isum = hsum[0] + hsum[1];
    let d = f16::from_f32(d);
    let s = f16::from_f32(f16::from_f32(isum as f32).to_f32() * d.to_f32());
    ActBlock {
        qs,
        d: d.to_f32(),
        s: s.to_f32(),
        isum,
        fsum: isum as f32,
        hsum32: hsum.map(|h| 32 * h),
    }
}
