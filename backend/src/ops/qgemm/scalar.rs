//! The portable kernels: plain loops over the interleaved group layout, the reference the SIMD
//! kernels must match bit for bit. Each block's float step is candle's `vec_dot_unopt` expression.

use super::{ActBlock, Q4_0x8, Q4_1x8, Q5_0x8, Q8_0x8, GROUP};

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

/// Integer dot product of group row `r`'s Q5_0 values (nibbles with their fifth bits ORed in,
/// unsigned) with an activation block.
fn five_bit_dot(w: &Q5_0x8, r: usize, x: &ActBlock) -> i32 {
    let mut sum = 0i32;
    for l in 0..4 {
        for j in 0..4 {
            let lane = 4 * r + j;
            let byte = w.qs[32 * l + lane];
            let lo = (byte & 0x0F) as i32 | (((w.qh[2 * l] >> lane) & 1) << 4) as i32;
            let hi = (byte >> 4) as i32 | (((w.qh[2 * l + 1] >> lane) & 1) << 4) as i32;
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
                let sumi = five_bit_dot(wb, r, xb) - 16 * xb.isum;
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
