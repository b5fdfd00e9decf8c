//! Choosing the next token from one row of logits: logit bias, repetition/frequency/presence
//! penalties, then greedy argmax or temperature sampling through top-k, min-p and top-p, plus the
//! log-probabilities of the chosen token and the top alternatives.
//!
//! Randomness: one uniform number per sampled position, derived from `(seed, position)` alone
//! (SplitMix64). A seeded request therefore gives the same tokens however it is batched, chunked
//! or preempted. Ties are broken towards the lower token id. Cost: `O(vocab log vocab)` per
//! sampled row when sampling with temperature, `O(vocab)` when greedy.

use crate::ops::math::exp;
use std::collections::HashMap;
use wick_proto::{Generation, SamplingParams, SeqId, TokenLogprob};

/// SplitMix64 finaliser: a well-mixed 64-bit value from any input.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The uniform number in `[0, 1)` used to sample position `pos` of a stream seeded with `seed`.
pub fn uniform(seed: u64, pos: usize) -> f64 {
    let bits = splitmix64(seed ^ splitmix64(pos as u64));
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// The log of the softmax normaliser of `logits`, `max + ln(sum e^(l - max))`: the terms by
/// [`exp`] (f32, about 1e-7 relative error), summed in f64 in eight lanes (a loop that
/// vectorises) in a fixed order, so a token's log-probability `l - log_z` is good to about 1e-7
/// and the same bits wherever it is computed. One pass of the vocabulary without a libm call per
/// token: this runs for every sampled row.
fn log_normaliser(logits: &[f32]) -> f64 {
    let (rows, tail) = logits.as_chunks::<8>();
    // The largest logit, over eight lanes (a maximum is exact in any order; NaNs are skipped,
    // as `f32::max` skips them).
    let mut top = [f32::NEG_INFINITY; 8];
    for row in rows {
        for (m, &l) in top.iter_mut().zip(row) {
            *m = if l > *m { l } else { *m };
        }
    }
    let max = top
        .into_iter()
        .chain(tail.iter().copied())
        .fold(f32::NEG_INFINITY, f32::max);
    // The terms a block at a time (a plain loop over a slice, which vectorises), each added to
    // lane `index % 8`; the last `len % 8` summed apart.
    let mut lanes = [0f64; 8];
    let mut terms = [0f32; 512];
    let mut rest = 0f64;
    for block in logits.chunks(terms.len()) {
        let terms = &mut terms[..block.len()];
        for (t, &l) in terms.iter_mut().zip(block) {
            *t = exp(l - max);
        }
        let (rows, tail) = terms.as_chunks::<8>();
        for row in rows {
            for (lane, &t) in lanes.iter_mut().zip(row) {
                *lane += t as f64;
            }
        }
        rest += tail.iter().map(|&t| t as f64).sum::<f64>();
    }
    let sum = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5]))
        + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]))
        + rest;
    max as f64 + sum.ln()
}

/// The log-probability of a token of logit `l` under the normaliser `log_z`.
fn logprob(l: f32, log_z: f64) -> f32 {
    (l as f64 - log_z) as f32
}

/// Orders (logit, id) best first, lower id first on ties.
fn better(a: (f32, u32), b: (f32, u32)) -> std::cmp::Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

/// Sorts (logit, id) pairs into [`better`]'s order through one integer key each (the logit's
/// place in `total_cmp`'s order, reversed, above the id): the same order, as keys are distinct
/// where ids are, in less time than comparing pairs (the sort fell from 9.3% to 5.3% of a
/// SmolLM2 decode profile at temperature 1).
fn sort_best_first(cands: &mut [(f32, u32)]) {
    let key = |(l, id): (f32, u32)| {
        let rank = (order_key(l) as u32) ^ 0x8000_0000;
        (u64::from(!rank) << 32) | u64::from(id)
    };
    let mut keys: Vec<u64> = cands.iter().map(|&c| key(c)).collect();
    keys.sort_unstable();
    for (c, k) in cands.iter_mut().zip(keys) {
        let rank = !((k >> 32) as u32) ^ 0x8000_0000;
        let bits = rank as i32;
        *c = (f32::from_bits(unorder_key(bits) as u32), k as u32);
    }
}

/// The inverse of [`order_key`] (the same flip undoes itself).
fn unorder_key(key: i32) -> i32 {
    key ^ (((key >> 31) as u32) >> 1) as i32
}

/// Applies bias and penalties to `logits` in place. `history` holds the sequence's tokens by
/// position; those at positions `>= params.prompt_len` count as output.
pub fn apply_penalties(logits: &mut [f32], params: &SamplingParams, history: &[u32]) {
    for &(tok, bias) in &params.logit_bias {
        if let Some(l) = logits.get_mut(tok as usize) {
            *l += bias;
        }
    }
    if !params.uses_history() {
        return;
    }
    let mut output_counts: HashMap<u32, u32> = HashMap::new();
    for &t in history.get(params.prompt_len..).unwrap_or(&[]) {
        *output_counts.entry(t).or_default() += 1;
    }
    if params.repetition_penalty != 1.0 {
        let mut seen: Vec<u32> = history.to_vec();
        seen.sort_unstable();
        seen.dedup();
        for t in seen {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = if *l > 0.0 {
                    *l / params.repetition_penalty
                } else {
                    *l * params.repetition_penalty
                };
            }
        }
    }
    for (&t, &count) in &output_counts {
        if let Some(l) = logits.get_mut(t as usize) {
            *l -= params.frequency_penalty * count as f32 + params.presence_penalty;
        }
    }
}

/// Sets the logit of every token `mask` does not allow to minus infinity.
pub fn apply_mask(logits: &mut [f32], mask: &[u32]) {
    for (i, chunk) in logits.chunks_mut(32).enumerate() {
        let word = mask.get(i).copied().unwrap_or(0);
        for (bit, l) in chunk.iter_mut().enumerate() {
            if word >> bit & 1 == 0 {
                *l = f32::NEG_INFINITY;
            }
        }
    }
}

/// Greedy choice: the highest logit, the lowest id among equals (the order of [`better`]: by
/// `total_cmp`). Two passes that vectorise: the largest [`order_key`] in eight lanes, then the
/// first logit with that key.
pub fn argmax(logits: &[f32]) -> u32 {
    let (rows, tail) = logits.as_chunks::<8>();
    let mut lanes = [i32::MIN; 8];
    for row in rows {
        for (m, &l) in lanes.iter_mut().zip(row) {
            *m = (*m).max(order_key(l));
        }
    }
    let best = tail.iter().map(|&l| order_key(l)).chain(lanes).max();
    let best = best.unwrap_or(i32::MIN);
    logits
        .iter()
        .position(|&l| order_key(l) == best)
        .unwrap_or(0) as u32
}

/// `x`'s place in `f32::total_cmp`'s order as an integer: `order_key(a).cmp(&order_key(b))` is
/// `a.total_cmp(&b)` (negative values' magnitude bits flipped).
fn order_key(x: f32) -> i32 {
    let bits = x.to_bits() as i32;
    bits ^ (((bits >> 31) as u32) >> 1) as i32
}

/// Tempered logit distance below the best token past which a token is never sampled.
const NEGLIGIBLE: f32 = 30.0;

/// Samples from processed logits with temperature, top-k, min-p and top-p, using `u` in `[0, 1)`.
fn sample_filtered(logits: &[f32], params: &SamplingParams, u: f64) -> u32 {
    let mut cands: Vec<(f32, u32)> = logits
        .iter()
        .enumerate()
        .filter(|(_, l)| l.is_finite())
        .map(|(i, &l)| (l, i as u32))
        .collect();
    if cands.is_empty() {
        return argmax(logits);
    }
    if params.top_k > 0 && params.top_k < cands.len() {
        cands.select_nth_unstable_by(params.top_k - 1, |a, b| better(*a, *b));
        cands.truncate(params.top_k);
    }
    // Tokens over NEGLIGIBLE logits (divided by the temperature) below the best have a
    // probability under e^-30 of its: drop them before sorting (together under 1e-8 of the mass
    // for any vocabulary below 100 million), which spares sorting the whole vocabulary each step.
    let top = cands.iter().map(|c| c.0).fold(f32::NEG_INFINITY, f32::max);
    let floor = top - NEGLIGIBLE * params.temperature;
    if floor.is_finite() && floor < top {
        cands.retain(|c| c.0 >= floor);
    }
    sort_best_first(&mut cands);
    let inv_t = 1.0 / params.temperature as f64;
    let top = cands[0].0 as f64;
    let mut probs: Vec<f64> = cands
        .iter()
        .map(|&(l, _)| ((l as f64 - top) * inv_t).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    // min-p: drop tokens less likely than min_p times the most likely one.
    if params.min_p > 0.0 {
        let floor = params.min_p as f64 * probs[0];
        let keep = probs.iter().take_while(|&&p| p >= floor).count().max(1);
        probs.truncate(keep);
    }
    // top-p: the smallest prefix whose mass reaches top_p.
    if params.top_p < 1.0 {
        let target = params.top_p as f64 * probs.iter().sum::<f64>();
        let mut acc = 0.0;
        let mut keep = probs.len();
        for (i, p) in probs.iter().enumerate() {
            acc += p;
            if acc >= target {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
    }
    let mass: f64 = probs.iter().sum();
    let mut r = u * mass;
    for (i, p) in probs.iter().enumerate() {
        if r < *p {
            return cands[i].1;
        }
        r -= p;
    }
    cands[probs.len() - 1].1
}

/// Chooses the token for `seq` at `pos` from its raw `logits`; with a `mask` (a grammar's
/// allowed tokens, see [`crate::grammar::TokenMask`]) only among the tokens it allows.
pub fn sample(
    seq: SeqId,
    logits: &[f32],
    params: &SamplingParams,
    history: &[u32],
    pos: usize,
    mask: Option<&[u32]>,
) -> Generation {
    let log_z = log_normaliser(logits);
    let mut processed = logits.to_vec();
    apply_penalties(&mut processed, params, history);
    if let Some(mask) = mask {
        apply_mask(&mut processed, mask);
    }
    let token = if params.temperature <= 0.0 {
        argmax(&processed)
    } else {
        sample_filtered(&processed, params, uniform(params.seed, pos))
    };
    let top_logprobs = if params.top_logprobs > 0 {
        let mut all: Vec<(f32, u32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (logprob(l, log_z), i as u32))
            .collect();
        let n = params.top_logprobs.min(all.len());
        all.select_nth_unstable_by(n - 1, |a, b| better(*a, *b));
        let top = &mut all[..n];
        top.sort_unstable_by(|a, b| better(*a, *b));
        // A fresh allocation of `n` entries: collecting from `all` itself would reuse its
        // vocabulary-sized buffer, and the router holds one of these per generated token.
        top.iter()
            .map(|&(logprob, token)| TokenLogprob { token, logprob })
            .collect()
    } else {
        Vec::new()
    };
    Generation {
        seq,
        token,
        logprob: logprob(logits[token as usize], log_z),
        top_logprobs,
        constraint_error: None,
        mask_us: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorting_by_keys_gives_the_pairs_order() {
        // Ties, both zeros, negatives, large and tiny magnitudes, ids out of order.
        let mut state = 12_345u64;
        let mut cands: Vec<(f32, u32)> = (0..5_000u32)
            .map(|id| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1);
                let r = (state >> 40) as u32;
                let l = match r % 7 {
                    0 => 0.0,
                    1 => -0.0,
                    2 => (r % 13) as f32 - 6.0,
                    3 => f32::MAX / (1 + r % 5) as f32,
                    4 => -1e-30 * (r % 3) as f32,
                    _ => (r as f32 / 1e4).sin() * 40.0,
                };
                (l, (id * 7_919) % 5_003)
            })
            .collect();
        let mut want = cands.clone();
        want.sort_unstable_by(|a, b| better(*a, *b));
        sort_best_first(&mut cands);
        let bits = |v: &[(f32, u32)]| v.iter().map(|(l, i)| (l.to_bits(), *i)).collect::<Vec<_>>();
        assert_eq!(bits(&cands), bits(&want));
    }

    fn params() -> SamplingParams {
        SamplingParams::default()
    }

    #[test]
    fn greedy_takes_the_highest_logit_and_lowest_id_on_ties() {
        assert_eq!(argmax(&[0.1, 2.0, 2.0, -1.0]), 1);
    }

    #[test]
    fn a_mask_limits_the_choice_but_not_the_reported_logprobs() {
        // Tokens 1 and 33 allowed, in a vocabulary spanning two mask words.
        let mut logits = vec![0.0f32; 40];
        logits[0] = 9.0;
        logits[1] = 1.0;
        logits[33] = 2.0;
        let mask = [1u32 << 1, 1u32 << 1];
        let g = sample(0, &logits, &params(), &[], 0, Some(&mask));
        assert_eq!(g.token, 33);
        let mut p = params();
        p.temperature = 1.0;
        for pos in 0..50 {
            let t = sample(0, &logits, &p, &[], pos, Some(&mask)).token;
            assert!(t == 1 || t == 33, "{t}");
        }
        // Log-probabilities stay the model's: token 33 is far below token 0.
        assert!(g.logprob < -6.0);
    }

    #[test]
    fn logit_bias_can_force_a_token() {
        let mut p = params();
        p.logit_bias = vec![(3, 100.0)];
        let g = sample(0, &[5.0, 1.0, 0.0, 0.0], &p, &[], 0, None);
        assert_eq!(g.token, 3);
        // The reported log-probability is the model's, before the bias.
        assert!(g.logprob < -4.0);
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_logits() {
        let mut p = params();
        p.repetition_penalty = 2.0;
        let mut l = vec![4.0, -1.0, 3.0];
        apply_penalties(&mut l, &p, &[0, 1, 1]);
        assert_eq!(l, vec![2.0, -2.0, 3.0]);
    }

    #[test]
    fn frequency_and_presence_penalties_count_only_output_tokens() {
        let mut p = params();
        p.frequency_penalty = 0.5;
        p.presence_penalty = 1.0;
        p.prompt_len = 2;
        let mut l = vec![0.0; 4];
        // Token 0 is only in the prompt; token 2 appears twice in the output, token 3 once.
        apply_penalties(&mut l, &p, &[0, 2, 2, 2, 3]);
        assert_eq!(l, vec![0.0, 0.0, -2.0, -1.5]);
    }

    #[test]
    fn top_k_one_is_greedy_whatever_the_seed() {
        let mut p = params();
        p.temperature = 1.0;
        p.top_k = 1;
        for seed in 0..20 {
            p.seed = seed;
            assert_eq!(sample(0, &[0.0, 1.0, 0.5], &p, &[], 3, None).token, 1);
        }
    }

    #[test]
    fn min_p_and_top_p_cut_the_tail() {
        let mut p = params();
        p.temperature = 1.0;
        p.min_p = 0.5;
        // Token 1 has e^-3 of token 0's mass: never kept.
        for seed in 0..50 {
            p.seed = seed;
            assert_eq!(sample(0, &[3.0, 0.0], &p, &[], 0, None).token, 0);
        }
        let mut p = params();
        p.temperature = 1.0;
        p.top_p = 0.5;
        for seed in 0..50 {
            p.seed = seed;
            assert_eq!(sample(0, &[3.0, 0.0, 0.0], &p, &[], 0, None).token, 0);
        }
    }

    #[test]
    fn seeded_sampling_repeats_and_seeds_differ() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let mut p = params();
        p.temperature = 1.0;
        let run = |seed: u64| -> Vec<u32> {
            let mut p = p.clone();
            p.seed = seed;
            (0..40)
                .map(|pos| sample(0, &logits, &p, &[], pos, None).token)
                .collect()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn top_logprobs_hold_only_the_entries_asked_for() {
        let mut p = params();
        p.top_logprobs = 3;
        let logits: Vec<f32> = (0..50_000).map(|i| (i % 97) as f32 * 0.01).collect();
        let g = sample(1, &logits, &p, &[], 0, None);
        assert_eq!(g.top_logprobs.len(), 3);
        assert!(
            g.top_logprobs.capacity() <= 3,
            "{}",
            g.top_logprobs.capacity()
        );
    }

    #[test]
    fn argmax_is_the_best_by_total_order_and_lowest_id() {
        // The definition, one comparison at a time.
        let slow = |l: &[f32]| {
            (0..l.len() as u32)
                .min_by(|&a, &b| better((l[a as usize], a), (l[b as usize], b)))
                .unwrap()
        };
        let special = [
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            3.5,
        ];
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for len in [1usize, 7, 8, 9, 64, 1000] {
            for _ in 0..50 {
                let row: Vec<f32> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        match x % 10 {
                            0 => special[(x >> 8) as usize % special.len()],
                            _ => ((x >> 20) % 9) as f32 - 4.0,
                        }
                    })
                    .collect();
                assert_eq!(argmax(&row), slow(&row), "{row:?}");
            }
        }
    }

    #[test]
    fn the_normaliser_matches_an_f64_log_sum_exp() {
        // A vocabulary-sized row with a wide spread (and a tail past the last eight).
        let logits: Vec<f32> = (0..49_157u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) % 4001) as f32 / 100.0 - 25.0)
            .collect();
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let want = max
            + logits
                .iter()
                .map(|&l| (l as f64 - max).exp())
                .sum::<f64>()
                .ln();
        let got = log_normaliser(&logits);
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        assert_eq!(log_normaliser(&[3.0]), 3.0);
    }

    #[test]
    fn top_logprobs_are_sorted_and_normalised() {
        let mut p = params();
        p.top_logprobs = 2;
        let g = sample(0, &[0.0, 2.0, 1.0], &p, &[], 0, None);
        let toks: Vec<u32> = g.top_logprobs.iter().map(|t| t.token).collect();
        assert_eq!(toks, vec![1, 2]);
        let z: f32 = [0.0f32, 2.0, 1.0].iter().map(|l| l.exp()).sum();
        assert!((g.top_logprobs[0].logprob - (2.0 - z.ln())).abs() < 1e-6);
        assert_eq!(g.logprob, g.top_logprobs[0].logprob);
    }

    #[test]
    fn uniform_is_in_range_and_varies_with_position() {
        let a: Vec<f64> = (0..100).map(|i| uniform(42, i)).collect();
        assert!(a.iter().all(|&u| (0.0..1.0).contains(&u)));
        assert_ne!(a[0], a[1]);
    }
}
