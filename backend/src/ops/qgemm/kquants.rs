//! Q4_K, Q5_K and Q6_K (the bulk of every Q4_K_M and Q5_K_M GGUF) in group layouts that reuse the
//! 32-element kernels' loads: one stored superblock of 256 elements is eight 32-element
//! sub-blocks, each laid out as Q4_0's nibbles (Q4_K; Q5_K with Q5_0's fifth bits beside them,
//! Q6_K with two high bits per value), with the sub-block scales of the eight rows side by side.
//!
//! Numerics (the same in every kernel, so all give the scalar kernel's bits), per activation
//! block `j` (its own 8-bit scale `x.d`):
//! - Q4_K and Q5_K: value `d * sc_j * q - dmin * m_j` with `q` in 0..16 (0..32). The integer
//!   dot `sumi` of the values with the activation bytes, then
//!   `((sumi * (d * sc_j)) - (isum * (dmin * m_j))) * x.d` in f32 (`d * sc_j` and `dmin * m_j`
//!   are exact: an f16 times a 6-bit integer).
//! - Q6_K: value `d * sc_h * (q - 32)` with one signed scale per 16 elements: the integer dots
//!   of the two halves (`q` unsigned, then `32 * ` the half's activation sum subtracted), combined
//!   exactly as `lo * sc_2j + hi * sc_2j+1`, then `sumi * d * x.d`.
//!
//! These are Wick's own formulas (candle and llama.cpp quantize the activations per 256 instead),
//! so the results differ from theirs in the last bits and are within the bound that 8-bit
//! activations allow of a dequantize-then-f64 reference (`tests`). Sizes: Q4_K 148 bytes per row
//! superblock (stored: 144), Q5_K 180 (176), Q6_K 210 (as stored).

use super::{arch, interleave_nibbles, raw, row_nibbles, unraw, ActBlock, Format, Kernel};
use super::{kernel_fns, Packed, PackedRef, GROUP};
use candle_core::quantized::k_quants::{BlockQ4K, BlockQ5K, BlockQ6K};
use half::f16;

/// Elements per superblock.
const QK: usize = 256;
/// 32-element sub-blocks per superblock.
pub const SUBS: usize = QK / 32;

#[repr(C)]
#[derive(Clone, Copy)]
struct RawQ4K {
    d: f16,
    dmin: f16,
    scales: [u8; 12],
    qs: [u8; 128],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct RawQ5K {
    d: f16,
    dmin: f16,
    scales: [u8; 12],
    qh: [u8; 32],
    qs: [u8; 128],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct RawQ6K {
    ql: [u8; 128],
    qh: [u8; 64],
    scales: [i8; 16],
    d: f16,
}
const _: () = assert!(std::mem::size_of::<RawQ4K>() == std::mem::size_of::<BlockQ4K>());
const _: () = assert!(std::mem::size_of::<RawQ6K>() == std::mem::size_of::<BlockQ6K>());
const _: () = assert!(std::mem::size_of::<RawQ5K>() == std::mem::size_of::<BlockQ5K>());
const _: () = assert!(std::mem::size_of::<Q5_Kx8>() == 1440);
const _: () =
    assert!(std::mem::size_of::<Q4_Kx8>() == 1184 && std::mem::size_of::<Q6_Kx8>() == 1696);

/// The scales of eight Q4_K or Q5_K rows of one superblock, in front of their values so that a
/// kernel reads the superblock front to back (160 bytes: the values start 32-byte aligned).
#[repr(C)]
pub struct KScales {
    pub d: [f16; GROUP],
    pub dmin: [f16; GROUP],
    /// `sc[j][r]`, `m[j][r]`: sub-block `j`'s 6-bit scale and minimum in row `r`.
    pub sc: [[u8; GROUP]; SUBS],
    pub m: [[u8; GROUP]; SUBS],
}

impl KScales {
    /// From each row's `d`, `dmin` and packed 6-bit scales as the GGUF stores them (a missing
    /// row: zeros).
    fn pack(rows: [Option<(f16, f16, &[u8; 12])>; GROUP]) -> Self {
        let mut s = KScales {
            d: [f16::ZERO; GROUP],
            dmin: [f16::ZERO; GROUP],
            sc: [[0; GROUP]; SUBS],
            m: [[0; GROUP]; SUBS],
        };
        for (r, row) in rows.iter().enumerate() {
            let Some((d, dmin, packed)) = row else {
                continue;
            };
            (s.d[r], s.dmin[r]) = (*d, *dmin);
            for j in 0..SUBS {
                (s.sc[j][r], s.m[j][r]) = scale_min(j, packed);
            }
        }
        s
    }

    /// Row `r`'s `d`, `dmin` and packed scales, as the GGUF stores them.
    fn row(&self, r: usize) -> (f16, f16, [u8; 12]) {
        let packed = pack_scale_min(self.sc.map(|s| s[r]), self.m.map(|s| s[r]));
        (self.d[r], self.dmin[r], packed)
    }
}

/// Eight Q4_K rows of one superblock: values `d * sc * q - dmin * m`; every 32-byte load is
/// aligned (1,184 bytes, the values at 160).
#[repr(C, align(32))]
pub struct Q4_Kx8 {
    pub scales: KScales,
    /// Sub-block `j`'s nibbles, in Q4_0's group layout.
    pub qs: [[u8; 128]; SUBS],
}

/// Eight Q5_K rows of one superblock: Q4_K's with a fifth bit per value, laid out per
/// sub-block as Q5_0's ([`super::Q5_0x8`]), each sub-block's bytes together.
#[repr(C, align(32))]
pub struct Q5_Kx8 {
    pub scales: KScales,
    pub subs: [Q5Sub; SUBS],
}

/// One 32-element sub-block of eight Q5_K rows.
#[repr(C)]
pub struct Q5Sub {
    /// The low four bits, in Q4_0's group layout.
    pub qs: [u8; 128],
    /// The fifth bits, as [`super::Q5_0x8::qh`] lays them out.
    pub qh: [u32; 8],
}

/// What the kernels read of a 4- or 5-bit K-quant group (Q4_K, Q5_K) alike.
pub trait KNibbles {
    fn scales(&self) -> &KScales;
    fn qs(&self, j: usize) -> &[u8; 128];
    /// Sub-block `j`'s fifth bits (Q5_K), `None` for Q4_K.
    fn qh(&self, j: usize) -> Option<&[u32; 8]>;
}

impl KNibbles for Q4_Kx8 {
    #[inline(always)]
    fn scales(&self) -> &KScales {
        &self.scales
    }
    #[inline(always)]
    fn qs(&self, j: usize) -> &[u8; 128] {
        &self.qs[j]
    }
    #[inline(always)]
    fn qh(&self, _: usize) -> Option<&[u32; 8]> {
        None
    }
}

impl KNibbles for Q5_Kx8 {
    #[inline(always)]
    fn scales(&self) -> &KScales {
        &self.scales
    }
    #[inline(always)]
    fn qs(&self, j: usize) -> &[u8; 128] {
        &self.subs[j].qs
    }
    #[inline(always)]
    fn qh(&self, j: usize) -> Option<&[u32; 8]> {
        Some(&self.subs[j].qh)
    }
}

/// Eight Q6_K rows of one superblock: values `d * sc * (q - 32)`, `q` in 0..64 stored as its low
/// four bits in Q4_0's nibble layout and its high two bits beside them, 6.6 bits per value as in
/// the GGUF.
/// Every 32-byte load is aligned (1,696 bytes, the sub-blocks at 160).
#[repr(C, align(32))]
pub struct Q6_Kx8 {
    pub d: [f16; GROUP],
    _pad: [u8; 16],
    /// `sc[h][r]`: the scale of 16-element half `h` (0..16) of the superblock in row `r`.
    pub sc: [[i8; GROUP]; 2 * SUBS],
    /// The sub-blocks, each read front to back.
    pub subs: [Q6Sub; SUBS],
}

/// One 32-element sub-block of eight Q6_K rows.
#[repr(C)]
pub struct Q6Sub {
    /// The low four bits, in Q4_0's group layout: load `l`'s low nibbles are elements
    /// `4 l..4 l + 4` of each row (the first half), its high nibbles `16 + 4 l..`.
    pub ql: [u8; 128],
    /// The high two bits: nibble vector `n = 2 l + h` (load `l`, `h` 0 for its low nibbles, 1 for
    /// its high ones) has its 32 values' high bits at bits `2 (n % 4)` of the 32 bytes
    /// `qh[n / 4]`, byte for byte.
    pub qh: [[u8; 32]; 2],
}

/// Q4_K's packed 6-bit scale and minimum of sub-block `j` (llama.cpp's `get_scale_min_k4`).
fn scale_min(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The inverse of [`scale_min`] over all eight sub-blocks.
fn pack_scale_min(sc: [u8; SUBS], m: [u8; SUBS]) -> [u8; 12] {
    let mut q = [0u8; 12];
    for j in 0..4 {
        q[j] = (sc[j] & 63) | ((sc[j + 4] >> 4) << 6);
        q[j + 4] = (m[j] & 63) | ((m[j + 4] >> 4) << 6);
        q[j + 8] = (sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4);
    }
    q
}

/// Sub-block `j`'s 32 nibbles as Q4_0 stores them (byte `i`: element `i` low, `16 + i` high).
fn q4k_sub_nibbles(qs: &[u8; 128], j: usize) -> [u8; 16] {
    let src = &qs[32 * (j / 2)..32 * (j / 2) + 32];
    let value = |l: usize| {
        if j.is_multiple_of(2) {
            src[l] & 0xF
        } else {
            src[l] >> 4
        }
    };
    std::array::from_fn(|i| value(i) | (value(16 + i) << 4))
}

impl Format for Q4_Kx8 {
    const SUB: usize = SUBS;
    type Src = BlockQ4K;

    fn erase(p: &Packed<Self>) -> PackedRef<'_> {
        PackedRef::Q4K(p)
    }

    fn pack(rows: [Option<&BlockQ4K>; GROUP]) -> Self {
        let raws: [Option<RawQ4K>; GROUP] = rows.map(|b| b.map(raw));
        Q4_Kx8 {
            scales: KScales::pack(std::array::from_fn(|r| {
                raws[r].as_ref().map(|b| (b.d, b.dmin, &b.scales))
            })),
            qs: std::array::from_fn(|j| {
                interleave_nibbles(raws.map(|b| b.map(|b| q4k_sub_nibbles(&b.qs, j))))
            }),
        }
    }

    fn unpack(&self, r: usize) -> BlockQ4K {
        let mut qs = [0u8; 128];
        for j in 0..SUBS {
            let nib = row_nibbles(&self.qs[j], r);
            let dst = &mut qs[32 * (j / 2)..32 * (j / 2) + 32];
            for (i, &byte) in nib.iter().enumerate() {
                for (l, v) in [(i, byte & 0xF), (16 + i, byte >> 4)] {
                    dst[l] |= if j.is_multiple_of(2) { v } else { v << 4 };
                }
            }
        }
        let (d, dmin, scales) = self.scales.row(r);
        unraw(RawQ4K {
            d,
            dmin,
            scales,
            qs,
        })
    }

    kernel_fns!(q4_k, q4_k_pair);
}

/// Sub-block `j`'s low nibbles of each row of a group, in the Q4_0 byte order (element `i` in
/// the low nibble, `16 + i` in the high one), from each row's 5- or 6-bit `value`s.
fn low_nibbles<B>(
    raws: &[Option<B>; GROUP],
    j: usize,
    value: fn(&B, usize) -> u8,
) -> [Option<[u8; 16]>; GROUP] {
    std::array::from_fn(|r| {
        raws[r].as_ref().map(|b| {
            std::array::from_fn(|i| {
                let v = |k: usize| value(b, 32 * j + k) & 0xF;
                v(i) | (v(16 + i) << 4)
            })
        })
    })
}

/// Element `e` (0..256) of a Q5_K block: `q`, 0..32.
fn q5k_value(b: &RawQ5K, e: usize) -> u8 {
    let (j, l) = (e / 32, e % 32);
    let byte = b.qs[32 * (j / 2) + l];
    let low = if j.is_multiple_of(2) {
        byte & 0xF
    } else {
        byte >> 4
    };
    low | (((b.qh[l] >> j) & 1) << 4)
}

impl Format for Q5_Kx8 {
    const SUB: usize = SUBS;
    type Src = BlockQ5K;

    fn erase(p: &Packed<Self>) -> PackedRef<'_> {
        PackedRef::Q5K(p)
    }

    fn pack(rows: [Option<&BlockQ5K>; GROUP]) -> Self {
        let raws: [Option<RawQ5K>; GROUP] = rows.map(|b| b.map(raw));
        let mut qh = [[0u32; 8]; SUBS];
        for (r, b) in raws.iter().enumerate() {
            let Some(b) = b else { continue };
            for (j, qh) in qh.iter_mut().enumerate() {
                for l in 0..4 {
                    for i in 0..4 {
                        let lane = 4 * r + i;
                        let fifth = |k: usize| (q5k_value(b, 32 * j + k) >> 4) as u32;
                        qh[2 * l] |= fifth(4 * l + i) << lane;
                        qh[2 * l + 1] |= fifth(16 + 4 * l + i) << lane;
                    }
                }
            }
        }
        Q5_Kx8 {
            scales: KScales::pack(std::array::from_fn(|r| {
                raws[r].as_ref().map(|b| (b.d, b.dmin, &b.scales))
            })),
            subs: std::array::from_fn(|j| Q5Sub {
                qs: interleave_nibbles(low_nibbles(&raws, j, q5k_value)),
                qh: qh[j],
            }),
        }
    }

    fn unpack(&self, r: usize) -> BlockQ5K {
        let (d, dmin, scales) = self.scales.row(r);
        let mut b = RawQ5K {
            d,
            dmin,
            scales,
            qh: [0; 32],
            qs: [0; 128],
        };
        for (j, sub) in self.subs.iter().enumerate() {
            let nib = row_nibbles(&sub.qs, r);
            for k in 0..32 {
                let (half, within) = (k / 16, k % 16);
                let (l, i) = (within / 4, within % 4);
                let low = if half == 0 {
                    nib[within] & 0xF
                } else {
                    nib[within] >> 4
                };
                let fifth = (sub.qh[2 * l + half] >> (4 * r + i)) & 1;
                let q = low | ((fifth as u8) << 4);
                let byte = &mut b.qs[32 * (j / 2) + k];
                *byte |= if j.is_multiple_of(2) {
                    q & 0xF
                } else {
                    (q & 0xF) << 4
                };
                b.qh[k] |= (q >> 4) << j;
            }
        }
        unraw(b)
    }

    kernel_fns!(q5_k, q5_k_pair);
}

/// Element `e` (0..256) of a Q6_K block: `q`, 0..64.
fn q6k_value(b: &RawQ6K, e: usize) -> u8 {
    let (half, within) = (e / 128, e % 128);
    let (part, l) = (within / 32, within % 32);
    let ql = b.ql[64 * half + l + 32 * (part % 2)];
    let low = if part < 2 { ql & 0xF } else { ql >> 4 };
    let high = (b.qh[32 * half + l] >> (2 * part)) & 3;
    low | (high << 4)
}

/// For element `k` (0..32) of a sub-block in row `r`: its nibble vector `n` and byte `b` there.
fn q6k_slot(r: usize, k: usize) -> (usize, usize) {
    let (h, within) = (k / 16, k % 16);
    (2 * (within / 4) + h, 4 * r + within % 4)
}

impl Format for Q6_Kx8 {
    const SUB: usize = SUBS;
    type Src = BlockQ6K;

    fn erase(p: &Packed<Self>) -> PackedRef<'_> {
        PackedRef::Q6K(p)
    }

    fn pack(rows: [Option<&BlockQ6K>; GROUP]) -> Self {
        let raws: [Option<RawQ6K>; GROUP] = rows.map(|b| b.map(raw));
        let mut qh = [[[0u8; 32]; 2]; SUBS];
        let mut sc = [[0i8; GROUP]; 2 * SUBS];
        for (r, b) in raws.iter().enumerate() {
            let Some(b) = b else { continue };
            for (j, bits) in qh.iter_mut().enumerate() {
                for k in 0..32 {
                    let (n, byte) = q6k_slot(r, k);
                    bits[n / 4][byte] |= (q6k_value(b, 32 * j + k) >> 4) << (2 * (n % 4));
                }
            }
            for (h, s) in sc.iter_mut().enumerate() {
                s[r] = b.scales[h];
            }
        }
        Q6_Kx8 {
            d: raws.map(|b| b.map_or(f16::ZERO, |b| b.d)),
            _pad: [0; 16],
            sc,
            subs: std::array::from_fn(|j| Q6Sub {
                ql: interleave_nibbles(low_nibbles(&raws, j, q6k_value)),
                qh: qh[j],
            }),
        }
    }

    fn unpack(&self, r: usize) -> BlockQ6K {
        let mut b = RawQ6K {
            ql: [0; 128],
            qh: [0; 64],
            scales: self.sc.map(|s| s[r]),
            d: self.d[r],
        };
        for e in 0..QK {
            let (j, k) = (e / 32, e % 32);
            let (n, byte) = q6k_slot(r, k);
            let sub = &self.subs[j];
            let nib = sub.ql[32 * (n / 2) + byte];
            let low = if n % 2 == 0 { nib & 0xF } else { nib >> 4 };
            let q = low | (((sub.qh[n / 4][byte] >> (2 * (n % 4))) & 3) << 4);
            let (half, within) = (e / 128, e % 128);
            let (part, l) = (within / 32, within % 32);
            let low = q & 0xF;
            b.ql[64 * half + l + 32 * (part % 2)] |= if part < 2 { low } else { low << 4 };
            b.qh[32 * half + l] |= (q >> 4) << (2 * part);
        }
        unraw(b)
    }

    kernel_fns!(q6_k, q6_k_pair);
}
