//! The portable kernels: plain loops over the interleaved group layout, the reference the SIMD
//! kernels must match bit for bit. Each block's float step is candle's `vec_dot_unopt` expression
//! (the K-quants': `kquants`' formulas).

use super::kquants::{KNibbles, SUBS};
use super::{ActBlock, Q4_0x8, Q4_1x8, Q4_Kx8, Q5_0x8, Q5_Kx8, Q6_Kx8, Q8_0x8, GROUP};

/// Integer dot product of group row `r`'s 4-bit values (unsigned nibbles) with an activation block.
fn nibble_dot(qs: &[u8; 128], r: usize, x: &ActBlock) -> i32 {
    let mut sum = 0i32;
    for l in 0..4 {
        for j in 0..4 {
            let byte = qs[32 * l + 4 * r + j];
            sum += (byte & 0x0F) as i32 * x.qs[4 * l + j] as i32
                + (byte >> 4) as i32 * x.qs[16 + 4 * l + j] as i32;
        }
    }
    sum
}

pub(super) fn q4_0<const MR: usize>(w: &[Q4_0x8], x: [&[ActBlock]; MR]) -> [[f32; GROUP]; MR] {
    let mut acc = [[0f32; GROUP]; MR];
    for (b, wb) in w.iter().enumerate() {
        for (xr, acc) in x.iter().zip(acc.iter_mut()) {
            let xb = &xr[b];
            for (r, a) in acc.iter_mut().enumerate() {
                let sumi = nibble_dot(&wb.qs, r, xb) - 8 * xb.isum;
                *a += sumi as f32 * wb.d[r].to_f32() * xb.d;
            }
        }
    }
    acc
}

/// Integer dot product of group row `r`'s 4-bit values (unsigned nibbles, with their fifth bits
/// ORed in when `qh` has them: Q5_0's and Q5_K's layout) with an activation block.
fn nibble_dot5(qs: &[u8; 128], qh: Option<&[u32; 8]>, r: usize, x: &ActBlock) -> i32 {
    let mut sum = 0i32;
    for l in 0..4 {
        for j in 0..4 {
            let lane = 4 * r + j;
            let byte = qs[32 * l + lane];
            let fifth = |h: usize| qh.map_or(0, |qh| ((qh[2 * l + h] >> lane) & 1) << 4) as i32;
            let lo = (byte & 0x0F) as i32 | fifth(0);
            let hi = (byte >> 4) as i32 | fifth(1);
            sum += lo * x.qs[4 * l + j] as i32 + hi * x.qs[16 + 4 * l + j] as i32;
        }
    }
    sum
}

pub(super) fn q5_0<const MR: usize>(w: &[Q5_0x8], x: [&[ActBlock]; MR]) -> [[f32; GROUP]; MR] {
    let mut acc = [[0f32; GROUP]; MR];
    for (b, wb) in w.iter().enumerate() {
        for (xr, acc) in x.iter().zip(acc.iter_mut()) {
            let xb = &xr[b];
            for (r, a) in acc.iter_mut().enumerate() {
                let sumi = nibble_dot5(&wb.qs, Some(&wb.qh), r, xb) - 16 * xb.isum;
                *a += sumi as f32 * wb.d[r].to_f32() * xb.d;
            }
        }
    }
    acc
}

pub(super) fn q4_1<const MR: usize>(w: &[Q4_1x8], x: [&[ActBlock]; MR]) -> [[f32; GROUP]; MR] {
    let mut acc = [[0f32; GROUP]; MR];
    for (b, wb) in w.iter().enumerate() {
        for (xr, acc) in x.iter().zip(acc.iter_mut()) {
            let xb = &xr[b];
            for (r, a) in acc.iter_mut().enumerate() {
                let sumi = nibble_dot(&wb.qs, r, xb);
                *a += sumi as f32 * wb.d[r].to_f32() * xb.d + wb.m[r].to_f32() * xb.s;
            }
        }
    }
    acc
}

pub(super) fn q8_0<const MR: usize>(w: &[Q8_0x8], x: [&[ActBlock]; MR]) -> [[f32; GROUP]; MR] {
    let mut acc = [[0f32; GROUP]; MR];
    for (b, wb) in w.iter().enumerate() {
        for (xr, acc) in x.iter().zip(acc.iter_mut()) {
            let xb = &xr[b];
            for (r, a) in acc.iter_mut().enumerate() {
                let mut sumi = 0i32;
                for l in 0..8 {
                    for j in 0..4 {
                        sumi += wb.qs[32 * l + 4 * r + j] as i32 * xb.qs[4 * l + j] as i32;
                    }
                }
                *a += sumi as f32 * wb.d[r].to_f32() * xb.d;
            }
        }
    }
    acc
}

/// Q4_K and Q5_K.
pub(super) fn k_nibbles<W: KNibbles, const MR: usize>(
    w: &[W],
    x: [&[ActBlock]; MR],
) -> [[f32; GROUP]; MR] {
    let mut acc = [[0f32; GROUP]; MR];
    for (b, wb) in w.iter().enumerate() {
        for j in 0..SUBS {
            for (xr, acc) in x.iter().zip(acc.iter_mut()) {
                let xb = &xr[SUBS * b + j];
                for (r, a) in acc.iter_mut().enumerate() {
                    let sumi = nibble_dot5(wb.qs(j), wb.qh(j), r, xb);
                    let s = wb.scales();
                    let scale = s.d[r].to_f32() * s.sc[j][r] as f32;
                    let min = s.dmin[r].to_f32() * s.m[j][r] as f32;
                    *a += (sumi as f32 * scale - xb.isum as f32 * min) * xb.d;
                }
            }
        }
    }
    acc
}

pub(super) fn q4_k<const MR: usize>(w: &[Q4_Kx8], x: [&[ActBlock]; MR]) -> [[f32; GROUP]; MR] {
    k_nibbles(w, x)
}

pub(super) fn q5_k<const MR: usize>(w: &[Q5_Kx8], x: [&[ActBlock]; MR]) -> [[f32; GROUP]; MR] {
    k_nibbles(w, x)
}

pub(super) fn q6_k<const MR: usize>(w: &[Q6_Kx8], x: [&[ActBlock]; MR]) -> [[f32; GROUP]; MR] {
    let mut acc = [[0f32; GROUP]; MR];
    for (b, wb) in w.iter().enumerate() {
        for j in 0..SUBS {
            for (xr, acc) in x.iter().zip(acc.iter_mut()) {
                let xb = &xr[SUBS * b + j];
                for (r, a) in acc.iter_mut().enumerate() {
                    // Half `h` holds nibble vectors `2 l + h`, elements `16 h + 4 l + i`.
                    let mut halves = [0i32; 2];
                    for (h, half) in halves.iter_mut().enumerate() {
                        for l in 0..4 {
                            let n = 2 * l + h;
                            for i in 0..4 {
                                let byte = wb.subs[j].ql[32 * l + 4 * r + i];
                                let low = if h == 0 { byte & 0xF } else { byte >> 4 };
                                let high = (wb.subs[j].qh[n / 4][4 * r + i] >> (2 * (n % 4))) & 3;
                                let q = (low | (high << 4)) as i32;
                                *half += q * xb.qs[16 * h + 4 * l + i] as i32;
                            }
                        }
                        *half -= xb.hsum32[h];
                    }
                    let sumi =
                        halves[0] * wb.sc[2 * j][r] as i32 + halves[1] * wb.sc[2 * j + 1][r] as i32;
                    *a += sumi as f32 * wb.d[r].to_f32() * xb.d;
                }
            }
        }
    }
    acc
}
