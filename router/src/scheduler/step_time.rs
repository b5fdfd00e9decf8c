//! Time-budgeted steps (`--target-inter-token-ms`): a model of a step's wall time, and the
//! prefill allowance it gives a step that running streams wait on, so that long prompts are
//! chunked to keep every stream's inter-token time near the target, whatever the model, the
//! machine, the batch and the contexts, instead of by a fixed token count.
//!
//! The model ([`StepClock`]): `fixed + per_token * tokens + per_pair * pairs + per_sample *
//! samples`, where a step's tokens are its rows (prefill tokens, decodes, proposals), its pairs
//! the (query, key) pairs its attention scores (a token at position `p` attends to `p + 1`
//! keys: [`Work::chunk`]), so a chunk costs more the longer its context, and its samples the
//! rows whose logits are computed and sampled (a decode's row: the output layer and the
//! sampler make it cost several prefill rows). Fitted by non-negative least squares to the steps
//! the server runs, older ones weighted down ([`DECAY`]: about the last 50 count), and to the
//! steps run at start-up ([`calibration`]), which fade with them but keep a little weight
//! ([`ANCHOR_FLOOR`]): a server that has only decoded short contexts since it started has
//! taught the fit nothing about a long prompt's attention.
//!
//! The allowance ([`StepClock::allowance`]): the most prefill tokens that keep the step's
//! predicted time within the target, at most what the token budget allows; the step's first
//! chunk gets at least [`MIN_CHUNK`] (a prompt always moves, however loaded the batch), the
//! others nothing past the target. A step without decodes has no stream waiting on it and takes
//! the token budget. Plain and synchronous; the batcher asks it while it plans. Cost per step:
//! the fits on the 15 subsets of the four features (each a small elimination), and a binary
//! search per prefill chunk.

use std::time::Duration;
use wick_proto::StepEntry;

/// What a step (or a part of one) computes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Work {
    /// Rows of the forward pass.
    pub tokens: usize,
    /// (query, key) pairs of its attention.
    pub pairs: u64,
    /// Rows sampled: each also runs the output layer and the sampler (a decode's row costs
    /// more than a prefill row for it).
    pub samples: usize,
}

/// The model's features: 1, tokens, thousands of pairs, samples.
const F: usize = 4;

impl Work {
    /// `len` tokens at positions `start..start + len`.
    pub fn chunk(start: usize, len: usize) -> Work {
        let (s, n) = (start as u64, len as u64);
        Work {
            tokens: len,
            pairs: n * s + n * (n + 1) / 2,
            samples: 0,
        }
    }

    /// A decode of `rows` tokens (its token and `rows - 1` proposals) at `start`, each sampled.
    pub fn decode(start: usize, rows: usize) -> Work {
        Work {
            samples: rows,
            ..Work::chunk(start, rows)
        }
    }

    /// What a step's entries compute (a draft model's proposals take rows too).
    pub fn of(entries: &[StepEntry]) -> Work {
        let entry = |e: &StepEntry| {
            let rows = e.tokens.len() + e.propose;
            Work {
                samples: e.sample.as_ref().map_or(0, |_| e.draft + e.propose + 1),
                ..Work::chunk(e.start_pos, rows)
            }
        };
        entries.iter().map(entry).fold(Work::default(), Work::plus)
    }

    pub fn plus(self, other: Work) -> Work {
        Work {
            tokens: self.tokens + other.tokens,
            pairs: self.pairs + other.pairs,
            samples: self.samples + other.samples,
        }
    }

    /// The fit's features (thousands of pairs: in about the tokens' range).
    fn features(self) -> [f64; F] {
        let pairs = self.pairs as f64 / 1000.0;
        [1.0, self.tokens as f64, pairs, self.samples as f64]
    }
}

/// Weight of the earlier steps against a new one.
pub const DECAY: f64 = 0.98;
/// The least weight of the start-up steps against the served ones (whose decayed weights sum
/// to about 50).
pub const ANCHOR_FLOOR: f64 = 0.05;
/// Fewest tokens a prefill chunk gets in a step, whatever the prediction.
pub const MIN_CHUNK: usize = 16;

/// Decayed sums of a least-squares problem in three features.
#[derive(Debug, Clone, Default)]
struct Sums {
    xx: [[f64; F]; F],
    xy: [f64; F],
    yy: f64,
}

impl Sums {
    fn add(&mut self, x: [f64; F], y: f64) {
        for i in 0..F {
            for j in 0..F {
                self.xx[i][j] += x[i] * x[j];
            }
            self.xy[i] += x[i] * y;
        }
        self.yy += y * y;
    }

    fn scale(&mut self, f: f64) {
        self.xx.iter_mut().flatten().for_each(|v| *v *= f);
        self.xy.iter_mut().for_each(|v| *v *= f);
        self.yy *= f;
    }

    /// `self * w + o`.
    fn blend(&self, w: f64, o: &Sums) -> Sums {
        let mut s = self.clone();
        s.scale(w);
        for i in 0..F {
            for j in 0..F {
                s.xx[i][j] += o.xx[i][j];
            }
            s.xy[i] += o.xy[i];
        }
        s.yy += o.yy;
        s
    }

    /// The non-negative least-squares coefficients: the best of the unconstrained fits on
    /// each subset of the features whose coefficients are all non-negative (the constrained
    /// optimum is one of them); where two fit alike, the first in
    /// binary order (the fixed cost alone first).
    fn fit(&self) -> Option<[f64; F]> {
        let mut best: Option<([f64; F], f64)> = None;
        for subset in 1u8..(1 << F) {
            let Some(beta) = self.solve(subset) else {
                continue;
            };
            if beta.iter().any(|&b| b < 0.0) {
                continue;
            }
            let sse = self.sse(&beta);
            if best.is_none_or(|(_, s)| sse < s - 1e-9 * self.yy) {
                best = Some((beta, sse));
            }
        }
        best.map(|(beta, _)| beta)
    }

    /// The residual sum of squares of `beta`.
    fn sse(&self, beta: &[f64; F]) -> f64 {
        let mut quad = 0.0;
        for i in 0..F {
            for j in 0..F {
                quad += beta[i] * self.xx[i][j] * beta[j];
            }
        }
        let lin: f64 = (0..F).map(|i| beta[i] * self.xy[i]).sum();
        self.yy - 2.0 * lin + quad
    }

    /// The least-squares coefficients on the features in `subset` (bit `i`: feature `i`), the
    /// others 0; `None` when the system is singular.
    fn solve(&self, subset: u8) -> Option<[f64; F]> {
        let idx: Vec<usize> = (0..F).filter(|i| subset & (1 << i) != 0).collect();
        let k = idx.len();
        // Gaussian elimination with partial pivoting on [A | b].
        let mut m = [[0.0f64; F + 1]; F];
        for (r, &i) in idx.iter().enumerate() {
            for (c, &j) in idx.iter().enumerate() {
                m[r][c] = self.xx[i][j];
            }
            m[r][k] = self.xy[i];
        }
        for col in 0..k {
            let pivot = (col..k).max_by(|&a, &b| m[a][col].abs().total_cmp(&m[b][col].abs()))?;
            let scale = idx.iter().map(|&i| self.xx[i][i]).fold(0.0, f64::max);
            if m[pivot][col].abs() <= 1e-12 * scale.max(1e-300) {
                return None;
            }
            m.swap(col, pivot);
            let pivot_row = m[col];
            for (r, row) in m.iter_mut().enumerate().take(k) {
                if r != col {
                    let f = row[col] / pivot_row[col];
                    for (x, p) in row[col..=k].iter_mut().zip(&pivot_row[col..=k]) {
                        *x -= f * p;
                    }
                }
            }
        }
        let mut beta = [0.0; F];
        for (r, &i) in idx.iter().enumerate() {
            beta[i] = m[r][k] / m[r][r];
        }
        beta.iter().all(|b| b.is_finite()).then_some(beta)
    }
}

/// A step's time predicted from its [`Work`], and the prefill allowance for a target.
#[derive(Debug, Clone)]
pub struct StepClock {
    target_us: f64,
    /// The start-up steps.
    anchor: Sums,
    /// Their weight: decayed with the served steps' down to [`ANCHOR_FLOOR`], so that a
    /// machine that changed speed is followed, and the start-up steps still settle what the
    /// served ones leave open.
    anchor_weight: f64,
    /// The served steps, decayed.
    recent: Sums,
    /// Steps seen, start-up steps included: no fit before three.
    seen: usize,
    /// The fit after the last step (`[fixed, per token, per thousand pairs, per sample]`,
    /// microseconds).
    coef: Option<[f64; F]>,
}

impl StepClock {
    pub fn new(target: Duration) -> Self {
        StepClock {
            target_us: target.as_secs_f64() * 1e6,
            anchor: Sums::default(),
            anchor_weight: 1.0,
            recent: Sums::default(),
            seen: 0,
            coef: None,
        }
    }

    /// A step run at start-up to measure the machine ([`calibration`]).
    pub fn anchor(&mut self, work: Work, took: Duration) {
        self.anchor.add(work.features(), took.as_secs_f64() * 1e6);
        self.seen += 1;
        self.refit();
    }

    /// A served step.
    pub fn observe(&mut self, work: Work, took: Duration) {
        self.recent.scale(DECAY);
        self.recent.add(work.features(), took.as_secs_f64() * 1e6);
        self.anchor_weight = (self.anchor_weight * DECAY).max(ANCHOR_FLOOR);
        self.seen += 1;
        self.refit();
    }

    fn refit(&mut self) {
        if self.seen < 3 {
            return;
        }
        // A singular moment (every step alike so far) keeps the previous fit.
        if let Some(c) = self.anchor.blend(self.anchor_weight, &self.recent).fit() {
            self.coef = Some(c);
        }
    }

    /// `[fixed, per token, per thousand pairs, per sample]` in microseconds, once fitted.
    pub fn coefficients(&self) -> Option<[f64; F]> {
        self.coef
    }

    /// The predicted time of `work`, in microseconds, once fitted.
    pub fn predict(&self, work: Work) -> Option<f64> {
        let c = self.coef?;
        let x = work.features();
        Some((0..F).map(|i| c[i] * x[i]).sum())
    }

    /// The most tokens, up to `max`, of a prefill chunk at `start` that keep a step already
    /// holding `planned` within the target, but at least `floor` (or `max` if smaller); `max`
    /// before the model is fitted.
    pub fn allowance(&self, planned: Work, start: usize, max: usize, floor: usize) -> usize {
        let floor = floor.min(max);
        let fits = |n: usize| {
            let p = self.predict(planned.plus(Work::chunk(start, n)));
            p.is_none_or(|t| t <= self.target_us)
        };
        if fits(max) {
            return max;
        }
        // The largest n in [floor, max) that fits; the cost grows with n.
        let (mut lo, mut hi) = (floor, max);
        while lo + 1 < hi {
            let mid = lo + (hi - lo) / 2;
            if fits(mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

/// The steps run at start-up to seed the model, as `(start, len, sample)` chunks of one scratch
/// sequence in this order, the first a warm-up that is not measured (it touches the weights
/// for the first time). `far` is the context of the long-context steps: without them, short
/// contexts leave the attention's share of a token unknown. None where `far` is under 128 (a
/// tiny cache or context: the model then learns from the served steps alone). The positions
/// before a chunk need not have been computed: only the time is wanted.
pub fn calibration(far: usize) -> Vec<(usize, usize, bool)> {
    if far < 128 {
        return Vec::new();
    }
    vec![
        (0, 1, true),
        (0, 64, false),
        (64, 1, true),
        (65, 1, true),
        (66, 16, false),
        (far - 64, 32, false),
        (far - 32, 1, true),
        (far - 31, 1, true),
        (far - 30, 16, false),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(v: f64) -> Duration {
        Duration::from_secs_f64(v / 1e6)
    }

    /// A machine whose steps cost 5 ms + 1 ms a token + 0.02 ms per thousand pairs + 2 ms a
    /// sample.
    fn truth(w: Work) -> f64 {
        let pairs = w.pairs as f64 / 1000.0;
        5_000.0 + 1_000.0 * w.tokens as f64 + 20.0 * pairs + 2_000.0 * w.samples as f64
    }

    /// A start-up step's work, as the scheduler counts it.
    fn timed(start: usize, len: usize, sample: bool) -> Work {
        match sample {
            true => Work::decode(start, len),
            false => Work::chunk(start, len),
        }
    }

    fn calibrated(target_ms: u64) -> StepClock {
        let mut c = StepClock::new(Duration::from_millis(target_ms));
        for (start, len, sample) in calibration(2048).into_iter().skip(1) {
            let w = timed(start, len, sample);
            c.anchor(w, us(truth(w)));
        }
        c
    }

    #[test]
    fn chunk_counts_each_tokens_keys() {
        let work = |tokens, pairs, samples| Work {
            tokens,
            pairs,
            samples,
        };
        assert_eq!(Work::chunk(0, 1), work(1, 1, 0));
        assert_eq!(Work::chunk(0, 4), work(4, 10, 0));
        assert_eq!(Work::chunk(10, 2), work(2, 23, 0));
        assert_eq!(Work::decode(10, 2), work(2, 23, 2));
    }

    #[test]
    fn calibration_recovers_the_cost_model() {
        let c = calibrated(100).coefficients().expect("fitted");
        assert!((c[0] - 5_000.0).abs() < 1.0, "{c:?}");
        assert!((c[1] - 1_000.0).abs() < 0.1, "{c:?}");
        assert!((c[2] - 20.0).abs() < 0.01, "{c:?}");
        assert!((c[3] - 2_000.0).abs() < 1.0, "{c:?}");
    }

    #[test]
    fn allowance_fills_the_target_and_no_more() {
        let clock = calibrated(100);
        // 16 decodes at 500 tokens of context: 5 + 16 + 0.16 + 32 ms.
        let decodes = (0..16).fold(Work::default(), |w, _| w.plus(Work::decode(500, 1)));
        let n = clock.allowance(decodes, 0, 256, MIN_CHUNK);
        let within = |n| truth(decodes.plus(Work::chunk(0, n))) <= 100_000.0;
        assert!(within(n) && !within(n + 1), "{n}");
        // Deeper into a long prompt, its chunks cost more each.
        assert!(clock.allowance(decodes, 3_000, 256, MIN_CHUNK) < n);
        // A target the decodes alone exceed still moves the prompt.
        let full = (0..40).fold(Work::default(), |w, _| w.plus(Work::decode(500, 1)));
        assert_eq!(clock.allowance(full, 0, 256, MIN_CHUNK), MIN_CHUNK);
        assert_eq!(clock.allowance(full, 0, 5, MIN_CHUNK), 5);
        // ... but a second prompt in the same step does not.
        assert_eq!(clock.allowance(full, 0, 256, 0), 0);
        // Room for everything: the whole budget.
        assert_eq!(clock.allowance(Work::chunk(10, 1), 0, 8, 0), 8);
    }

    #[test]
    fn unfitted_clock_allows_the_token_budget() {
        let clock = StepClock::new(Duration::from_millis(1));
        assert_eq!(clock.allowance(Work::chunk(0, 100), 0, 256, 0), 256);
        assert_eq!(clock.predict(Work::chunk(0, 1)), None);
    }

    #[test]
    fn served_steps_move_the_fit_and_older_ones_fade() {
        let mut clock = calibrated(100);
        // The machine got twice as slow per token.
        for i in 0..400 {
            let w = Work::chunk(100 + i % 50, 1 + i % 40);
            clock.observe(w, us(truth(w) + 1_000.0 * w.tokens as f64));
        }
        let c = clock.coefficients().unwrap();
        assert!((c[1] - 2_000.0).abs() < 150.0, "{c:?}");
    }

    #[test]
    fn coefficients_never_go_negative() {
        let mut clock = StepClock::new(Duration::from_millis(100));
        // Noisy steps whose unconstrained fit would give attention a negative cost.
        let steps = [(1, 5_000, 9_000.0), (1, 50, 9_500.0), (64, 100, 70_000.0)];
        for (tokens, kpairs, t) in steps {
            let w = Work {
                tokens,
                pairs: kpairs * 1000,
                samples: 0,
            };
            clock.observe(w, us(t));
        }
        let c = clock.coefficients().expect("fitted");
        assert!(c.iter().all(|&v| v >= 0.0), "{c:?}");
        assert!(clock.predict(Work::chunk(0, 1)).unwrap() > 0.0);
    }

    #[test]
    fn identical_steps_alone_keep_the_last_fit() {
        let mut clock = StepClock::new(Duration::from_millis(100));
        for _ in 0..5 {
            clock.observe(Work::chunk(10, 1), us(7_000.0));
        }
        // One point repeated: only the fixed cost is determined (the other subsets are
        // singular), and it is the step's time.
        let c = clock.coefficients().expect("fitted");
        assert!(
            (c[0] - 7_000.0).abs() < 1e-6 && c[1] == 0.0 && c[2] == 0.0,
            "{c:?}"
        );
    }
}
