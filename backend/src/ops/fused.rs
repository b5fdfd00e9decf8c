//! The small per-token operations of a decoder layer on plain row-major f32 buffers, in place
//! where possible: RMSNorm, rotary embedding, SwiGLU (and Gemma's GELU-gated form), residual
//! add. Each computes exactly the expressions of candle's CPU ops (`candle_nn::ops::rms_norm`,
//! `rope_thd`, `silu` then `mul`, `add`), except that SwiGLU's `exp` is Wick's vectorised
//! [`exp`](crate::ops::math::exp) (about 1e-7 relative error; the standard library's took 6% of
//! a SmolLM2 prefill), and GELU is its sigmoid form on that `exp` (candle's `gelu` takes libm's
//! `tanh`). Unlike candle's, these split large inputs across the compute team the
//! matmuls use ([`crate::team`]; candle runs rope on one thread for a single sequence and hands
//! large element-wise ops to a second, spinning thread pool), and allocate nothing.

/// Elements below which a cheap element-wise op (residual add, rotary embedding) runs on the
/// calling thread.
const PAR_MIN: usize = 32 * 1024;
/// The same for RMSNorm, whose rows are serial chains of adds (about 1 ns an element): several
/// rows of a batch are worth a team job (a few microseconds).
const PAR_MIN_NORM: usize = 4096;
/// The same for the gated activations, with an `exp` or `tanh` per element (about 4 ns): one
/// token's SwiGLU (1,536 elements in SmolLM2) already gains from two threads.
const PAR_MIN_GATE: usize = 1024;
/// Elements per task of the gated activations.
const GATE_CHUNK: usize = 512;

/// Applies `f` to matching chunks of `rows`-aligned slices, in parallel when `out` has `min`
/// elements or more.
fn for_rows<F>(out: &mut [f32], row: usize, min: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync,
{
    if out.len() < min {
        out.chunks_mut(row).enumerate().for_each(|(i, r)| f(i, r));
    } else {
        crate::team::for_each_chunk_mut(out, row, f);
    }
}

/// `out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * alpha`, row by row.
pub fn rms_norm(x: &[f32], alpha: &[f32], eps: f32, out: &mut [f32]) {
    let n = alpha.len();
    debug_assert_eq!(x.len(), out.len());
    for_rows(out, n, PAR_MIN_NORM, |r, dst| {
        let src = &x[r * n..(r + 1) * n];
        let sum2 = src.iter().map(|&v| v * v).sum::<f32>();
        let m = (sum2 / n as f32 + eps).sqrt();
        for ((d, &s), &a) in dst.iter_mut().zip(src).zip(alpha) {
            *d = s / m * a;
        }
    });
}

/// Rotary embedding in place on `(tokens, heads, dim)` rows, rotating the pairs `(i, i + dim/2)`
/// of token `t` by the angles whose cosines and sines are `cos[t]`, `sin[t]` (`dim / 2` each).
pub fn rope(x: &mut [f32], heads: usize, dim: usize, cos: &[f32], sin: &[f32]) {
    let half = dim / 2;
    for_rows(x, heads * dim, PAR_MIN, |t, row| {
        let (c, s) = (
            &cos[t * half..(t + 1) * half],
            &sin[t * half..(t + 1) * half],
        );
        for head in row.chunks_exact_mut(dim) {
            let (a, b) = head.split_at_mut(half);
            for i in 0..half {
                let (x1, x2) = (a[i], b[i]);
                a[i] = x1 * c[i] - x2 * s[i];
                b[i] = x1 * s[i] + x2 * c[i];
            }
        }
    });
}

/// `gate = silu(gate) * up`, element-wise.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    let row = GATE_CHUNK;
    for_rows(gate, row, PAR_MIN_GATE, |i, g| {
        for (g, &u) in g.iter_mut().zip(&up[i * row..]) {
            *g = *g / (1.0 + crate::ops::math::exp(-*g)) * u;
        }
    });
}

/// `gate = gelu(gate) * up`, element-wise, with GELU's tanh form
/// `0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))` (the one Gemma and llama.cpp use),
/// computed as the equal `x / (1 + e^(-2 z))` (`z` the tanh's argument) with Wick's vectorised
/// [`exp`](crate::ops::math::exp): libm's `tanhf` per element took 15% of a Gemma 3 prefill,
/// and this form has no cancellation where `tanh` nears -1.
pub fn gelu_mul(gate: &mut [f32], up: &[f32]) {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let row = GATE_CHUNK;
    for_rows(gate, row, PAR_MIN_GATE, |i, g| {
        for (g, &u) in g.iter_mut().zip(&up[i * row..]) {
            let x = *g;
            let inner = SQRT_2_OVER_PI * x * (1.0 + 0.044_715 * x * x);
            *g = x / (1.0 + crate::ops::math::exp(-2.0 * inner)) * u;
        }
    });
}

/// `x += y`, element-wise.
pub fn add(x: &mut [f32], y: &[f32]) {
    let row = 4096;
    for_rows(x, row, PAR_MIN, |i, x| {
        for (x, &y) in x.iter_mut().zip(&y[i * row..]) {
            *x += y;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn values(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0)
            .collect()
    }

    #[test]
    fn ops_give_candles_bits() {
        let dev = Device::Cpu;
        let (t, heads, dim) = (40, 3, 8);
        let x = values(t * heads * dim);
        let xt = Tensor::from_vec(x.clone(), (t, heads * dim), &dev).unwrap();

        let alpha = values(heads * dim);
        let at = Tensor::from_vec(alpha.clone(), heads * dim, &dev).unwrap();
        let want: Vec<f32> = candle_nn::ops::rms_norm(&xt, &at, 1e-5)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let mut got = vec![0f32; x.len()];
        rms_norm(&x, &alpha, 1e-5, &mut got);
        assert_eq!(got, want);

        let cos: Vec<f32> = (0..t * dim / 2).map(|i| (i as f32 * 0.1).cos()).collect();
        let sin: Vec<f32> = (0..t * dim / 2).map(|i| (i as f32 * 0.1).sin()).collect();
        let ct = Tensor::from_vec(cos.clone(), (t, dim / 2), &dev).unwrap();
        let st = Tensor::from_vec(sin.clone(), (t, dim / 2), &dev).unwrap();
        let x4 = xt.reshape((1, t, heads, dim)).unwrap();
        let want: Vec<f32> = candle_nn::rotary_emb::rope_thd(&x4, &ct, &st)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let mut got = x.clone();
        rope(&mut got, heads, dim, &cos, &sin);
        assert_eq!(got, want);

        let up = values(x.len()).into_iter().rev().collect::<Vec<_>>();
        let ut = Tensor::from_vec(up.clone(), x.len(), &dev).unwrap();
        let g = xt.flatten_all().unwrap();
        let want: Vec<f32> = (candle_nn::ops::silu(&g).unwrap() * &ut)
            .unwrap()
            .to_vec1()
            .unwrap();
        let mut got = x.clone();
        silu_mul(&mut got, &up);
        // SwiGLU's `exp` is Wick's (about 1e-7 relative error), not the standard library's.
        for (&got, &want) in got.iter().zip(&want) {
            assert!((got - want).abs() <= 5e-7 * want.abs(), "{got} vs {want}");
        }

        let want: Vec<f32> = (g.gelu().unwrap() * &ut).unwrap().to_vec1().unwrap();
        let mut got = x.clone();
        gelu_mul(&mut got, &up);
        // GELU's sigmoid form on Wick's `exp` against candle's tanh form: within a few units
        // in the last place, and where tanh nears -1 within the tanh form's own cancellation
        // (an ulp of 1, times `x * up / 2`).
        for ((&got, &want), (&x, &u)) in got.iter().zip(&want).zip(x.iter().zip(&up)) {
            let tolerance = 5e-7 * want.abs() + 6e-8 * (x * u).abs();
            assert!((got - want).abs() <= tolerance, "{x}: {got} vs {want}");
        }

        let want: Vec<f32> = (&g + &ut).unwrap().to_vec1().unwrap();
        let mut got = x.clone();
        add(&mut got, &up);
        assert_eq!(got, want);
    }

    #[test]
    fn gelu_follows_candles_over_its_whole_range() {
        // Far into both tails (GELU of -12 is about -1e-32: the tanh form cancels there, the
        // sigmoid form does not).
        let x: Vec<f32> = (-240..=240).map(|i| i as f32 * 0.05).collect();
        let up = vec![1f32; x.len()];
        let xt = Tensor::from_vec(x.clone(), x.len(), &Device::Cpu).unwrap();
        let want: Vec<f32> = xt.gelu().unwrap().to_vec1().unwrap();
        let mut got = x.clone();
        gelu_mul(&mut got, &up);
        for ((&got, &want), &x) in got.iter().zip(&want).zip(&x) {
            let tolerance = 5e-7 * want.abs() + 6e-8 * x.abs();
            assert!((got - want).abs() <= tolerance, "{x}: {got} vs {want}");
            assert!(x >= 0.0 || (got <= 0.0 && got >= x), "{x}: {got}");
        }
    }

    #[test]
    fn large_inputs_split_without_changing_results() {
        let n = PAR_MIN * 3 + 5;
        let (x, y) = (values(n), values(n + 7)[7..].to_vec());
        let mut par = x.clone();
        add(&mut par, &y);
        let seq: Vec<f32> = x.iter().zip(&y).map(|(a, b)| a + b).collect();
        assert_eq!(par, seq);
        let mut par = x.clone();
        silu_mul(&mut par, &y);
        let seq: Vec<f32> = x
            .iter()
            .zip(&y)
            .map(|(&g, &u)| g / (1.0 + crate::ops::math::exp(-g)) * u)
            .collect();
        assert_eq!(par, seq);
    }
}
