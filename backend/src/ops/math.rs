//! Elementary functions shared by the kernels and the sampler, written so that loops over them
//! vectorise and give the same bits wherever they run.

/// `e^x` (softmax weights, SwiGLU's sigmoid), branch-free so that a loop over a tile
/// vectorises: Cephes' single-precision polynomial after a reduction by `ln 2`, about 1e-7
/// relative error; results below about `e^-87.5` (under f32's normal range) are zero, and `x`
/// above 88 gives `e^88`.
#[inline]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-88.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * (r * r) + r + 1.0;
    // `n as i32` (`n` is a whole number in -127..=127) without the saturating conversion, which
    // does not vectorise: `n + 1.5 * 2^23` is exact and holds `n` in its low mantissa bits.
    let n = (n + 12_582_912.0).to_bits() as i32 - 0x4B40_0000;
    y * f32::from_bits(((n + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_the_standard_library() {
        for i in 0..=2000 {
            let x = -(i as f32) * 0.05;
            let (got, want) = (exp(x), x.exp());
            assert!(
                (got - want).abs() <= want * 2e-7 + 1e-37,
                "{x}: {got} vs {want}"
            );
        }
        for i in 0..=1760 {
            let x = i as f32 * 0.05;
            let (got, want) = (exp(x), x.exp());
            assert!((got - want).abs() <= want * 2e-7, "{x}: {got} vs {want}");
        }
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-1000.0), 0.0);
        assert!(exp(f32::NAN).is_nan());
    }
}
