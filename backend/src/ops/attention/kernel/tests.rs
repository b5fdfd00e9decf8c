use super::*;
use half::f16;

/// One query over `rows` with the group kernel (a group of one).
fn alone(q: &[f32], rows: &[usize], k: &[f32], v: &[f32], scale: f32) -> Vec<f32> {
    let mut out = vec![0f32; q.len()];
    let mut queries = [Query {
        q,
        keys: rows.len(),
        out: &mut out,
    }];
    attend_group(&mut queries, rows, 0, k, v, scale);
    out
}

#[test]
fn attention_over_one_key_returns_its_value() {
    assert_eq!(
        alone(&[1.0, 0.0], &[0], &[0.5, 0.5], &[3.0, -2.0], 1.0),
        [3.0, -2.0]
    );
}

#[test]
fn attention_weights_follow_softmax_of_scores() {
    // Scores 0 and ln(3): weights 1/4 and 3/4.
    let out = alone(&[1.0], &[0, 1], &[0.0, 3f32.ln()], &[4.0, 8.0], 1.0);
    assert!((out[0] - 7.0).abs() < 1e-5, "{}", out[0]);
}

#[test]
fn tiles_give_a_softmax_over_all_keys() {
    // 70 keys span three tiles; compare with a direct softmax in f64.
    let dim = 8;
    let k: Vec<f32> = (0..70 * dim)
        .map(|i| ((i * 7 % 13) as f32 - 6.0) / 3.0)
        .collect();
    let v: Vec<f32> = (0..70 * dim)
        .map(|i| ((i * 5 % 11) as f32 - 5.0) / 2.0)
        .collect();
    let q: Vec<f32> = (0..dim).map(|i| i as f32 / 4.0 - 1.0).collect();
    let rows: Vec<usize> = (0..70).collect();
    let out = alone(&q, &rows, &k, &v, 0.5);
    let scores: Vec<f64> = (0..70)
        .map(|p| {
            (0..dim)
                .map(|d| (q[d] * k[p * dim + d]) as f64)
                .sum::<f64>()
                * 0.5
        })
        .collect();
    let m = scores.iter().cloned().fold(f64::MIN, f64::max);
    let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
    for d in 0..dim {
        let want: f64 = (0..70)
            .map(|p| (scores[p] - m).exp() / z * v[p * dim + d] as f64)
            .sum();
        assert!(
            (out[d] as f64 - want).abs() < 1e-4,
            "{d}: {} vs {want}",
            out[d]
        );
    }
}

/// A deterministic pseudo-random stream in [-1, 1).
fn noise(n: usize, salt: u64) -> Vec<f32> {
    let mut x = salt.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Groups of queries with different key counts (partial last tiles, one key, several tiles),
/// in a cache of two KV heads with scattered rows: every query's output has the bits of the
/// reference computing it alone, for each head dimension (the SIMD path and the tail path) and
/// group size (a narrow cache widened in the loads, and once per tile from `WIDEN_AT`).
fn group_matches_reference<T: super::super::KvElem>(convert: fn(f32) -> T) {
    let all = [130usize, 1, 31, 32, 33, 64, 100, 7, 129, 2];
    assert!(all.len() >= WIDEN_AT && 3 < WIDEN_AT);
    for (dim, counts) in [8usize, 64, 128, 12]
        .into_iter()
        .flat_map(|d| [(d, &all[..]), (d, &all[..3])])
    {
        let kv_heads = 2;
        let slots = 150;
        let k: Vec<T> = noise(slots * kv_heads * dim, 1)
            .into_iter()
            .map(convert)
            .collect();
        let v: Vec<T> = noise(slots * kv_heads * dim, 2)
            .into_iter()
            .map(convert)
            .collect();
        // Key positions map to scattered cache rows (slot * kv_heads, each head one row on: any
        // layout the caller's rows and head offset describe).
        let rows: Vec<usize> = (0..130).map(|p| ((p * 37) % slots) * kv_heads).collect();
        let qs = noise(counts.len() * dim, 3);
        let scale = 3.0 / (dim as f32).sqrt();
        for kvh in 0..kv_heads {
            let mut outs = vec![vec![0f32; dim]; counts.len()];
            let mut queries: Vec<Query> = outs
                .iter_mut()
                .enumerate()
                .map(|(i, out)| Query {
                    q: &qs[i * dim..(i + 1) * dim],
                    keys: counts[i],
                    out,
                })
                .collect();
            attend_group(&mut queries, &rows, kvh, &k, &v, scale);
            for (i, &n) in counts.iter().enumerate() {
                let mut want = vec![0f32; dim];
                let q = &qs[i * dim..(i + 1) * dim];
                reference(q, &rows[..n], kvh, &k, &v, scale, &mut want);
                let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&outs[i]),
                    bits(&want),
                    "dim {dim}, head {kvh}, {n} keys, {} queries",
                    counts.len()
                );
            }
        }
    }
}

#[test]
fn a_group_gives_each_query_the_bits_of_the_reference_with_an_f32_cache() {
    group_matches_reference::<f32>(|x| x);
}

#[test]
fn a_group_gives_each_query_the_bits_of_the_reference_with_an_f16_cache() {
    group_matches_reference::<f16>(f16::from_f32);
}

#[test]
fn dot_handles_tails() {
    let a: Vec<f32> = (0..11).map(|i| i as f32).collect();
    assert_eq!(dot(&a, &a), (0..11).map(|i| (i * i) as f32).sum::<f32>());
}

/// The SIMD scores and accumulation against the portable ones directly, on rows long enough
/// to use every register block (and a remainder block).
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "f16c"
))]
#[test]
fn the_avx2_bodies_give_the_portable_bits() {
    for dim in [8usize, 64, 72, 128, 256] {
        let q = noise(dim, 10);
        let rows: Vec<Vec<f32>> = (0..13).map(|j| noise(dim, 20 + j)).collect();
        let keys: Vec<&[f32]> = rows.iter().map(|r| r.as_slice()).collect();
        let mut w = vec![0f32; keys.len()];
        // SAFETY: the cfg guarantees AVX2 and F16C; rows have `dim` elements, a multiple of 8.
        unsafe { avx2::scores(&q, &keys, 0.3, &mut w) };
        for (j, key) in keys.iter().enumerate() {
            assert_eq!(
                w[j].to_bits(),
                (dot(&q, key) * 0.3).to_bits(),
                "dim {dim} key {j}"
            );
        }
        let mut fast = noise(dim, 30);
        let mut slow = fast.clone();
        // SAFETY: as above.
        unsafe { avx2::accumulate(&mut fast, &w, &keys) };
        accumulate_portable(&mut slow, &w, &keys);
        assert_eq!(
            fast.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            slow.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            "dim {dim}"
        );
    }
}
