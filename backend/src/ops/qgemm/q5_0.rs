//! Q5_0 in the group layout ([`Q5_0x8`]): the low four bits of each value interleaved exactly as
//! Q4_0's nibbles, and the fifth bits re-laid so that each 256-bit nibble load has its 32 fifth
//! bits in one `u32` (bit `4 * r + j` for row `r`, element `j` of the load), which the SIMD
//! kernels expand to `0x10` bytes and OR in. A block's integer sum is
//! `sum((q5 - 16) * x) = sum(q5 * x) - 16 * sum(x)`, scaled by candle's Q5_0 expression
//! (`sumi * d_w * d_x`), so every kernel gives candle's Q5_0 bits; 22 bytes per row block, as
//! stored. The kernels are with the other types': the scalar reference in `scalar`, the SIMD
//! ones in `x86`.

use super::{arch, interleave_nibbles, raw, row_nibbles, unraw, ActBlock, Format, Kernel};
use super::{kernel_fns, Packed, PackedRef, RawQ5_0, GROUP};
use candle_core::quantized::k_quants::BlockQ5_0;
use half::f16;

/// Eight Q5_0 rows: values `(nibble | fifth << 4) - 16`, times `d[r]`.
#[repr(C)]
pub struct Q5_0x8 {
    pub qs: [u8; 128],
    /// `qh[2 * l]`: fifth bits of the low nibbles of load `l` (elements `4l..4l+4` of each row),
    /// `qh[2 * l + 1]`: of its high nibbles (elements `16 + 4l..`); bit `4 * r + j`.
    pub qh: [u32; 8],
    pub d: [f16; GROUP],
}

impl Format for Q5_0x8 {
    fn erase(p: &Packed<Self>) -> PackedRef<'_> {
        PackedRef::Q5_0(p)
    }

    type Src = BlockQ5_0;

    fn pack(rows: [Option<&BlockQ5_0>; GROUP]) -> Self {
        let raws: [Option<RawQ5_0>; GROUP] = rows.map(|b| b.map(raw));
        let mut qh = [0u32; 8];
        for (r, row) in raws.iter().enumerate() {
            let Some(src) = row else { continue };
            let bits = u32::from_le_bytes(src.qh);
            for l in 0..4 {
                for j in 0..4 {
                    let lane = 4 * r + j;
                    qh[2 * l] |= ((bits >> (4 * l + j)) & 1) << lane;
                    qh[2 * l + 1] |= ((bits >> (16 + 4 * l + j)) & 1) << lane;
                }
            }
        }
        Q5_0x8 {
            qs: interleave_nibbles(raws.map(|b| b.map(|b| b.qs))),
            qh,
            d: raws.map(|b| b.map_or(f16::ZERO, |b| b.d)),
        }
    }

    fn unpack(&self, r: usize) -> BlockQ5_0 {
        let mut bits = 0u32;
        for l in 0..4 {
            for j in 0..4 {
                let lane = 4 * r + j;
                bits |= ((self.qh[2 * l] >> lane) & 1) << (4 * l + j);
                bits |= ((self.qh[2 * l + 1] >> lane) & 1) << (16 + 4 * l + j);
            }
        }
        unraw(RawQ5_0 {
            d: self.d[r],
            qh: bits.to_le_bytes(),
            qs: row_nibbles(&self.qs, r),
        })
    }

    kernel_fns!(q5_0, q5_0_pair);
}
