//! Wick's quantized matmul for the GGUF types Q4_0, Q4_1, Q5_0 ([`q5_0`]), Q8_0, Q4_K, Q5_K and
//! Q6_K ([`kquants`], 256-element superblocks seen as eight 32-element blocks): weights repacked at
//! load into
//! groups of eight interleaved rows, activations quantized to 8 bits once per matmul input
//! ([`QActs`], shareable by every matrix that reads the same input), integer dot products, and a
//! GEMM-style tiling in which each weight block is unpacked once and applied to several activation
//! rows.
//!
//! Kernels ([`Kernel`]): a portable scalar one, AVX2, AVX-512 VNNI on 256-bit registers, and
//! AVX-512 VNNI on 512-bit registers with two groups per register (`avx512wide`, with AVX-512BW),
//! chosen at run time from what the CPU has (the build's baseline is x86-64-v3, set in
//! `.cargo/config.toml`), or forced with `WICK_KERNEL=scalar|avx2|avx512vnni|avx512wide`.
//!
//! Numerics: every (weight row, activation row) pair accumulates its blocks in order, each block's
//! integer dot product computed exactly and then scaled in f32 with one fixed formula, in its
//! order and without fused multiply-adds. So all kernels give the same bits (for the 32-element
//! types, candle's `vec_dot_unopt` bits; the K-quants' formulas are in [`kquants`]), and a row's
//! result never depends on the batch it sits in or on the tile.
//!
//! Layout of a group block (eight rows `r`, one 32-element block): for 4-bit types, byte
//! `32 * l + 4 * r + j` holds element `4 * l + j` of row `r` in its low nibble and element
//! `16 + 4 * l + j` in its high nibble; for Q8_0, byte `32 * l + 4 * r + j` is element `4 * l + j`.
//! One 256-bit load thus holds four consecutive elements of each of the eight rows, and a dot
//! product step against four broadcast activation bytes leaves one row's partial sum per lane.

mod acts;
mod choice;
pub mod kquants;
pub mod q5_0;
mod scalar;
// The SIMD kernels where they exist; `arch` names the dispatch either way.
#[cfg(not(target_arch = "x86_64"))]
mod portable;
#[cfg(target_arch = "x86_64")]
mod x86;
#[cfg(not(target_arch = "x86_64"))]
use portable as arch;
#[cfg(target_arch = "x86_64")]
use x86 as arch;

pub use acts::{ActBlock, QActs};
pub use choice::{kernel_from_env, select, selected, Kernel};
pub use kquants::{Q4_Kx8, Q5_Kx8, Q6_Kx8};
pub use q5_0::Q5_0x8;

use crate::team::SharedMut;
use candle_core::quantized::k_quants::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ8_0, GgmlType};
use half::f16;

/// Weight rows per interleaved group (eight f32 lanes of a 256-bit register).
pub const GROUP: usize = 8;

/// A [`Format`]'s `tile` and `pair`: the dispatch functions `arch::$tile` and `arch::$pair`.
macro_rules! kernel_fns {
    ($tile:ident, $pair:ident) => {
        fn tile<const MR: usize>(
            kernel: Kernel,
            w: &[Self],
            x: [&[ActBlock]; MR],
        ) -> [[f32; GROUP]; MR] {
            arch::$tile(kernel, w, x)
        }

        fn pair<const MR: usize>(
            kernel: Kernel,
            w: [&[Self]; 2],
            x: [&[ActBlock]; MR],
        ) -> Option<arch::Pair<MR>> {
            arch::$pair(kernel, w, x)
        }
    };
}
use kernel_fns;

/// A GGUF block type that Wick repacks into interleaved groups of [`GROUP`] rows.
pub trait Format: Sized + Send + Sync + 'static {
    /// 32-element activation blocks per stored block (8 for the 256-element K-quants).
    const SUB: usize = 1;
    /// Candle's block type for one row's `32 * SUB` elements.
    type Src: GgmlType + Send + Sync;
    /// Interleaves one block of each of eight rows (missing rows are all-zero blocks).
    fn pack(rows: [Option<&Self::Src>; GROUP]) -> Self;
    /// Row `r`'s block back in candle's layout.
    fn unpack(&self, r: usize) -> Self::Src;
    /// Dot products of one group (`kb` blocks) with `MR` activation rows (`kb * SUB` blocks
    /// each): `out[i][r]` for activation row `i` and group row `r`.
    fn tile<const MR: usize>(
        kernel: Kernel,
        w: &[Self],
        x: [&[ActBlock]; MR],
    ) -> [[f32; GROUP]; MR];
    /// Two groups' tiles at once (`out[i][h][r]`: group `h`, row `r`), where `kernel` runs
    /// groups in pairs ([`Kernel::Avx512Wide`]); `None` where it runs them one by one.
    fn pair<const MR: usize>(
        kernel: Kernel,
        w: [&[Self]; 2],
        x: [&[ActBlock]; MR],
    ) -> Option<arch::Pair<MR>>;
    /// The matrix as the type-erased reference [`matmul_many`] takes.
    fn erase(p: &Packed<Self>) -> PackedRef<'_>;
}

/// Eight Q4_0 rows: `d[r]` scales, values `(nibble - 8) * d`.
#[repr(C)]
pub struct Q4_0x8 {
    pub qs: [u8; 128],
    pub d: [f16; GROUP],
}

/// Eight Q4_1 rows: values `nibble * d + m`.
#[repr(C)]
pub struct Q4_1x8 {
    pub qs: [u8; 128],
    pub d: [f16; GROUP],
    pub m: [f16; GROUP],
}

/// Eight Q8_0 rows: values `q * d`.
#[repr(C)]
pub struct Q8_0x8 {
    pub qs: [i8; 256],
    pub d: [f16; GROUP],
}

/// Candle's private block layouts, mirrored (sizes asserted).
#[repr(C)]
#[derive(Clone, Copy)]
struct RawQ4_0 {
    d: f16,
    qs: [u8; 16],
}
#[repr(C)]
#[derive(Clone, Copy)]
struct RawQ4_1 {
    d: f16,
    m: f16,
    qs: [u8; 16],
}
#[repr(C)]
#[derive(Clone, Copy)]
struct RawQ8_0 {
    d: f16,
    qs: [i8; 32],
}
#[repr(C)]
#[derive(Clone, Copy)]
struct RawQ5_0 {
    d: f16,
    qh: [u8; 4],
    qs: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<RawQ5_0>() == std::mem::size_of::<BlockQ5_0>());
const _: () = assert!(std::mem::size_of::<RawQ4_0>() == std::mem::size_of::<BlockQ4_0>());
const _: () = assert!(std::mem::size_of::<RawQ4_1>() == std::mem::size_of::<BlockQ4_1>());
const _: () = assert!(std::mem::size_of::<RawQ8_0>() == std::mem::size_of::<BlockQ8_0>());

/// Reinterprets a candle block as its mirrored layout.
fn raw<S, R: Copy>(b: &S) -> R {
    debug_assert_eq!(std::mem::size_of::<S>(), std::mem::size_of::<R>());
    // SAFETY: callers pair each candle block type with its `repr(C)` mirror of the same size;
    // both are plain old data.
    unsafe { std::ptr::read_unaligned(b as *const S as *const R) }
}

/// The inverse of [`raw`].
fn unraw<R, S>(r: R) -> S {
    debug_assert_eq!(std::mem::size_of::<S>(), std::mem::size_of::<R>());
    // SAFETY: as for `raw`.
    unsafe { std::ptr::read_unaligned(&r as *const R as *const S) }
}

/// Interleaves 16 bytes of 4-bit values per row into the group layout.
fn interleave_nibbles(rows: [Option<[u8; 16]>; GROUP]) -> [u8; 128] {
    let mut qs = [0u8; 128];
    for (r, row) in rows.iter().enumerate() {
        if let Some(src) = row {
            for l in 0..4 {
                qs[32 * l + 4 * r..32 * l + 4 * r + 4].copy_from_slice(&src[4 * l..4 * l + 4]);
            }
        }
    }
    qs
}

fn row_nibbles(qs: &[u8; 128], r: usize) -> [u8; 16] {
    let mut out = [0u8; 16];
    for l in 0..4 {
        out[4 * l..4 * l + 4].copy_from_slice(&qs[32 * l + 4 * r..32 * l + 4 * r + 4]);
    }
    out
}

impl Format for Q4_0x8 {
    fn erase(p: &Packed<Self>) -> PackedRef<'_> {
        PackedRef::Q4_0(p)
    }

    type Src = BlockQ4_0;

    fn pack(rows: [Option<&BlockQ4_0>; GROUP]) -> Self {
        let raws: [Option<RawQ4_0>; GROUP] = rows.map(|b| b.map(raw));
        Q4_0x8 {
            qs: interleave_nibbles(raws.map(|b| b.map(|b| b.qs))),
            d: raws.map(|b| b.map_or(f16::ZERO, |b| b.d)),
        }
    }

    fn unpack(&self, r: usize) -> BlockQ4_0 {
        unraw(RawQ4_0 {
            d: self.d[r],
            qs: row_nibbles(&self.qs, r),
        })
    }

    kernel_fns!(q4_0, q4_0_pair);
}

impl Format for Q4_1x8 {
    fn erase(p: &Packed<Self>) -> PackedRef<'_> {
        PackedRef::Q4_1(p)
    }

    type Src = BlockQ4_1;

    fn pack(rows: [Option<&BlockQ4_1>; GROUP]) -> Self {
        let raws: [Option<RawQ4_1>; GROUP] = rows.map(|b| b.map(raw));
        Q4_1x8 {
            qs: interleave_nibbles(raws.map(|b| b.map(|b| b.qs))),
            d: raws.map(|b| b.map_or(f16::ZERO, |b| b.d)),
            m: raws.map(|b| b.map_or(f16::ZERO, |b| b.m)),
        }
    }

    fn unpack(&self, r: usize) -> BlockQ4_1 {
        unraw(RawQ4_1 {
            d: self.d[r],
            m: self.m[r],
            qs: row_nibbles(&self.qs, r),
        })
    }

    kernel_fns!(q4_1, q4_1_pair);
}

impl Format for Q8_0x8 {
    fn erase(p: &Packed<Self>) -> PackedRef<'_> {
        PackedRef::Q8_0(p)
    }

    type Src = BlockQ8_0;

    fn pack(rows: [Option<&BlockQ8_0>; GROUP]) -> Self {
        let raws: [Option<RawQ8_0>; GROUP] = rows.map(|b| b.map(raw));
        let mut qs = [0i8; 256];
        for (r, row) in raws.iter().enumerate() {
            if let Some(src) = row {
                for l in 0..8 {
                    qs[32 * l + 4 * r..32 * l + 4 * r + 4]
                        .copy_from_slice(&src.qs[4 * l..4 * l + 4]);
                }
            }
        }
        Q8_0x8 {
            qs,
            d: raws.map(|b| b.map_or(f16::ZERO, |b| b.d)),
        }
    }

    fn unpack(&self, r: usize) -> BlockQ8_0 {
        let mut qs = [0i8; 32];
        for l in 0..8 {
            qs[4 * l..4 * l + 4].copy_from_slice(&self.qs[32 * l + 4 * r..32 * l + 4 * r + 4]);
        }
        unraw(RawQ8_0 { d: self.d[r], qs })
    }

    kernel_fns!(q8_0, q8_0_pair);
}

/// A `rows x (kb * 32 * F::SUB)` matrix in groups of [`GROUP`] interleaved rows: group `g`'s
/// blocks are `groups[g * kb..(g + 1) * kb]`.
pub struct Packed<F: Format> {
    pub rows: usize,
    pub kb: usize,
    groups: Vec<F>,
}

impl<F: Format> Packed<F> {
    /// Repacks candle's row-major blocks (`rows * kb` of them).
    pub fn pack(src: &[F::Src], rows: usize, kb: usize) -> Self {
        debug_assert_eq!(src.len(), rows * kb);
        let n_groups = rows.div_ceil(GROUP);
        let mut groups: Vec<F> = Vec::with_capacity(n_groups * kb);
        crate::memory::advise_huge(groups.as_ptr().cast(), n_groups * kb * size_of::<F>());
        for g in 0..n_groups {
            for b in 0..kb {
                groups.push(F::pack(std::array::from_fn(|r| {
                    let row = g * GROUP + r;
                    (row < rows).then(|| &src[row * kb + b])
                })));
            }
        }
        Packed { rows, kb, groups }
    }

    /// Row `row`'s blocks in candle's layout.
    pub fn unpack_row(&self, row: usize) -> Vec<F::Src> {
        let (g, r) = (row / GROUP, row % GROUP);
        self.groups[g * self.kb..(g + 1) * self.kb]
            .iter()
            .map(|b| b.unpack(r))
            .collect()
    }

    /// All rows in candle's row-major layout.
    pub fn unpack(&self) -> Vec<F::Src> {
        (0..self.rows).flat_map(|r| self.unpack_row(r)).collect()
    }

    /// `out[i * rows + c] = dot(x[i], W[c])` for every activation row `i` of `x`.
    pub fn matmul(&self, kernel: Kernel, x: &QActs, out: &mut [f32]) {
        matmul_many(kernel, &[F::erase(self)], x, &mut [out]);
    }

    /// Groups `gs` against every activation row, in chunks of rows that stay in cache, in tiles
    /// of as many rows as the kernel's registers hold (AVX-512 has 32 vector registers, AVX2 16).
    fn run_groups(
        &self,
        kernel: Kernel,
        gs: std::ops::Range<usize>,
        x: &QActs,
        out: &SharedMut<f32>,
    ) {
        match kernel {
            Kernel::Avx512Vnni | Kernel::Avx512Wide => self.run_tiles::<8>(kernel, gs, x, out),
            _ => self.run_tiles::<4>(kernel, gs, x, out),
        }
    }

    fn run_tiles<const MR: usize>(
        &self,
        kernel: Kernel,
        gs: std::ops::Range<usize>,
        x: &QActs,
        out: &SharedMut<f32>,
    ) {
        for i0 in (0..x.rows).step_by(ROWS_PER_CHUNK) {
            let i1 = (i0 + ROWS_PER_CHUNK).min(x.rows);
            let mut g = gs.start;
            while g < gs.end {
                // Two groups at a time where the kernel runs them in pairs.
                let n = if kernel == Kernel::Avx512Wide && g + 1 < gs.end {
                    2
                } else {
                    1
                };
                let mut i = i0;
                while i + MR <= i1 {
                    self.tile::<MR>(kernel, g..g + n, x, i, out);
                    i += MR;
                }
                // The rest in one narrower tile: each weight block unpacked once for all of
                // them (a few rows, as a decode batch or a speculative verification has, then
                // cost little more than one).
                let gn = g..g + n;
                match i1 - i {
                    0 => {}
                    1 => self.tile::<1>(kernel, gn, x, i, out),
                    2 => self.tile::<2>(kernel, gn, x, i, out),
                    3 => self.tile::<3>(kernel, gn, x, i, out),
                    4 => self.tile::<4>(kernel, gn, x, i, out),
                    5 => self.tile::<5>(kernel, gn, x, i, out),
                    6 => self.tile::<6>(kernel, gn, x, i, out),
                    7 => self.tile::<7>(kernel, gn, x, i, out),
                    rest => unreachable!("{rest} rows left by tiles of {MR}"),
                }
                g += n;
            }
        }
    }

    /// Activation rows `i..i + N` against groups `gs` (one, or two that the kernel may run as
    /// a pair), stored.
    fn tile<const N: usize>(
        &self,
        kernel: Kernel,
        gs: std::ops::Range<usize>,
        x: &QActs,
        i: usize,
        out: &SharedMut<f32>,
    ) {
        let rows = || std::array::from_fn(|t| x.row(i + t));
        let w = |g: usize| &self.groups[g * self.kb..(g + 1) * self.kb];
        if gs.len() == 2 {
            if let Some(pair) = F::pair::<N>(kernel, [w(gs.start), w(gs.start + 1)], rows()) {
                for (t, vals) in pair.iter().enumerate() {
                    self.store(out, i + t, gs.start, &vals[0]);
                    self.store(out, i + t, gs.start + 1, &vals[1]);
                }
                return;
            }
        }
        for g in gs {
            let tile = F::tile::<N>(kernel, w(g), rows());
            for (t, vals) in tile.iter().enumerate() {
                self.store(out, i + t, g, vals);
            }
        }
    }

    /// Writes group `g`'s values for activation row `i` (dropping the padding rows).
    fn store(&self, out: &SharedMut<f32>, i: usize, g: usize, vals: &[f32; GROUP]) {
        let c0 = g * GROUP;
        let n = GROUP.min(self.rows - c0);
        // SAFETY: `out` holds `x.rows * self.rows` floats (asserted in `matmul_many`, which
        // borrows them until every task has finished); this writes row `i`'s columns
        // `c0..c0 + n`, which belong to group `g` only, and each group is run by exactly one
        // task, so no two tasks write the same element.
        unsafe { out.slice(i * self.rows + c0, n) }.copy_from_slice(&vals[..n]);
    }
}

/// A packed matrix of any of the kernels' types.
#[derive(Clone, Copy)]
pub enum PackedRef<'a> {
    Q4_0(&'a Packed<Q4_0x8>),
    Q4_1(&'a Packed<Q4_1x8>),
    Q5_0(&'a Packed<Q5_0x8>),
    Q8_0(&'a Packed<Q8_0x8>),
    Q4K(&'a Packed<Q4_Kx8>),
    Q5K(&'a Packed<Q5_Kx8>),
    Q6K(&'a Packed<Q6_Kx8>),
}

impl PackedRef<'_> {
    fn rows(self) -> usize {
        match self {
            PackedRef::Q4_0(p) => p.rows,
            PackedRef::Q4_1(p) => p.rows,
            PackedRef::Q5_0(p) => p.rows,
            PackedRef::Q8_0(p) => p.rows,
            PackedRef::Q4K(p) => p.rows,
            PackedRef::Q5K(p) => p.rows,
            PackedRef::Q6K(p) => p.rows,
        }
    }

    /// The 32-element activation blocks a row of the input must have.
    fn act_blocks(self) -> usize {
        match self {
            PackedRef::Q4_0(p) => p.kb,
            PackedRef::Q4_1(p) => p.kb,
            PackedRef::Q5_0(p) => p.kb,
            PackedRef::Q8_0(p) => p.kb,
            PackedRef::Q4K(p) => p.kb * Q4_Kx8::SUB,
            PackedRef::Q5K(p) => p.kb * Q5_Kx8::SUB,
            PackedRef::Q6K(p) => p.kb * Q6_Kx8::SUB,
        }
    }

    fn run_groups(
        self,
        kernel: Kernel,
        gs: std::ops::Range<usize>,
        x: &QActs,
        out: &SharedMut<f32>,
    ) {
        match self {
            PackedRef::Q4_0(p) => p.run_groups(kernel, gs, x, out),
            PackedRef::Q4_1(p) => p.run_groups(kernel, gs, x, out),
            PackedRef::Q5_0(p) => p.run_groups(kernel, gs, x, out),
            PackedRef::Q8_0(p) => p.run_groups(kernel, gs, x, out),
            PackedRef::Q4K(p) => p.run_groups(kernel, gs, x, out),
            PackedRef::Q5K(p) => p.run_groups(kernel, gs, x, out),
            PackedRef::Q6K(p) => p.run_groups(kernel, gs, x, out),
        }
    }
}

/// Several matrices applied to the same activations in one parallel pass (Q, K and V; gate and
/// up): `outs[j][i * rows_j + c] = dot(x[i], W_j[c])`. A kernel the CPU lacks is replaced by the
/// scalar one (same bits).
pub fn matmul_many(kernel: Kernel, ws: &[PackedRef], x: &QActs, outs: &mut [&mut [f32]]) {
    assert_eq!(ws.len(), outs.len());
    for (w, out) in ws.iter().zip(outs.iter()) {
        assert_eq!(
            w.act_blocks(),
            x.kb,
            "activation width differs from the weight's"
        );
        assert_eq!(out.len(), x.rows * w.rows(), "output size");
    }
    if x.rows == 0 {
        return;
    }
    // The SIMD kernels rely on their CPU features: never run one the CPU lacks.
    let kernel = if kernel.available() {
        kernel
    } else {
        Kernel::Scalar
    };
    let ptrs: Vec<SharedMut<f32>> = outs.iter_mut().map(|o| SharedMut::new(o)).collect();
    let mut tasks = Vec::new();
    for (j, w) in ws.iter().enumerate() {
        let n_groups = w.rows().div_ceil(GROUP);
        for g0 in (0..n_groups).step_by(GROUPS_PER_TASK) {
            tasks.push((j, g0..(g0 + GROUPS_PER_TASK).min(n_groups)));
        }
    }
    crate::team::for_each(tasks.len(), |t| {
        let (j, gs) = &tasks[t];
        ws[*j].run_groups(kernel, gs.clone(), x, &ptrs[*j]);
    });
}

/// Weight groups per parallel task.
const GROUPS_PER_TASK: usize = 4;
/// Activation rows per cache chunk: 64 rows of a 1,536-wide input are 132 KiB.
const ROWS_PER_CHUNK: usize = 64;

#[cfg(test)]
mod tests;
