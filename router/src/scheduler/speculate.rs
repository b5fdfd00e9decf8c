//! Speculative decoding's policy: which tokens a decoding sequence proposes for the next step,
//! and how many. A plain synchronous struct the batcher asks while it plans.
//!
//! Proposals come from n-gram (prompt) lookup ([`Proposer::Ngram`]): the tokens after the place
//! the sequence is copying from, or else after the latest earlier occurrence of its longest
//! suffix (of `ngram_max` down to `ngram_min` tokens), with the edits it was seen to make
//! applied ([`super::ngram`]), are proposed ([`wick_proto::StepEntry::draft`]); or from the
//! backend's draft model
//! ([`Proposer::DraftModel`]), which is only told how many ([`wick_proto::StepEntry::propose`]).
//! The backend verifies them in one forward pass and keeps exactly the tokens plain decoding
//! would have given, so proposals cost only their rows of the step (and the draft model's
//! time), never a changed output.
//!
//! How many, by cost: a decode step's time is fitted as `fixed + per_row * rows` over the
//! decode steps seen (steps without prefill chunks, whose many rows cost less each; the
//! [`StepCost`]). With `B` sequences decoding, a token costs `(fixed + per_row * B) / B` and a
//! proposal row `per_row`, so the `i`-th proposal pays when the chance that it and those before
//! it are accepted, `p^i`, exceeds `(per_row + d) * B / (fixed + per_row * B)` by a margin of
//! [`MARGIN`] (see there), where `d` is the draft model's time per proposal (0 for n-gram
//! lookup; measured over decode steps as the backend reports it, less the part of the draft's
//! first pass that caught a sequence up on tokens decoded without it: [`draft_charge`]). `p` is
//! the sequence's per-token acceptance, estimated from its verifications (accepted proposals
//! are successes, a rejection a failure; older ones count less). Until the fit is trusted (the
//! row cost's standard error under half of it), a row is taken to cost as much as the fixed
//! part: a single stream then speculates when `p > 0.6`, a batch of 16 never. A sequence the
//! estimate rules out still probes one proposal after sitting out 8, 16, 32 ... (at most 64)
//! decode steps, so its estimate (and, with at most 4 sequences decoding, the fit) can learn;
//! not where a proposal must be accepted more than 80% of the time to pay: no probe could show
//! that; and with a draft model, not after [`DRAFT_PROBES`] probes left it ruled out (each
//! makes the draft catch up on the tokens decoded since the last). A step's proposals are
//! capped at `step_budget`, first come first served. Cost per proposal: a check of the tokens
//! written since the last one, else a backward scan of the sequence's tokens per n-gram
//! length, O(`ngram_max` * tokens).

use super::ngram::Copier;
use std::collections::HashMap;
use wick_proto::SeqId;

/// Where proposals come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proposer {
    /// `--speculate ngram`: looked up in the sequence's own tokens, here.
    Ngram,
    /// `--draft-model`: the backend's draft model makes them.
    DraftModel,
}

/// Speculation's source and limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecConfig {
    pub proposer: Proposer,
    /// Most proposals per sequence and step.
    pub max_draft: usize,
    /// Longest suffix matched.
    pub ngram_max: usize,
    /// Shortest suffix matched.
    pub ngram_min: usize,
    /// Most proposals in one step, across the batch.
    pub step_budget: usize,
}

/// A step's time as `fixed + per_row * rows`: a least-squares fit over the recent steps.
#[derive(Debug, Clone, Default)]
pub struct StepCost {
    /// Decayed sums of 1, x, y, x*x, x*y and y*y (x: rows, y: microseconds).
    n: f64,
    sx: f64,
    sy: f64,
    sxx: f64,
    sxy: f64,
    syy: f64,
}

/// Weight of the previous steps against a new one: about the last 20 count, so the fit follows
/// the batch size of the moment (a row's cost differs between memory- and compute-bound steps).
const STEP_DECAY: f64 = 0.95;

impl StepCost {
    pub fn observe(&mut self, rows: usize, micros: u64) {
        let (x, y) = (rows as f64, micros as f64);
        self.n = self.n * STEP_DECAY + 1.0;
        self.sx = self.sx * STEP_DECAY + x;
        self.sy = self.sy * STEP_DECAY + y;
        self.sxx = self.sxx * STEP_DECAY + x * x;
        self.sxy = self.sxy * STEP_DECAY + x * y;
        self.syy = self.syy * STEP_DECAY + y * y;
    }

    /// `(fixed, per_row)` in microseconds, both positive; `None` while the row cost is not
    /// known to within half of itself (its standard error, from the steps' scatter around the
    /// line and how much their sizes vary): a machine whose step times are noisy needs more
    /// steps of other sizes before the fit is trusted.
    pub fn fit(&self) -> Option<(f64, f64)> {
        if self.n < 3.0 {
            return None;
        }
        let sxx = self.sxx - self.sx * self.sx / self.n;
        let sxy = self.sxy - self.sx * self.sy / self.n;
        let syy = self.syy - self.sy * self.sy / self.n;
        if sxx < 1e-6 {
            return None;
        }
        let per_row = sxy / sxx;
        let fixed = (self.sy - per_row * self.sx) / self.n;
        let residual = (syy - per_row * sxy).max(0.0) / (self.n - 2.0);
        let se = (residual / sxx).sqrt();
        (per_row > 0.0 && fixed > 0.0 && se < per_row / 2.0).then_some((fixed, per_row))
    }

    /// What stands in for an untrusted fit: a row costing as much as the fixed part, at the
    /// mean step time seen (1 each before any step).
    pub fn even(&self) -> (f64, f64) {
        let even = match self.n > 1e-9 {
            true => (self.sy / self.n / (1.0 + self.sx / self.n)).max(1e-9),
            false => 1.0,
        };
        (even, even)
    }
}

/// Proposals and their outcomes, per sequence.
#[derive(Debug)]
pub struct Speculator {
    cfg: SpecConfig,
    seqs: HashMap<SeqId, SeqSpec>,
    /// Each n-gram-speculating sequence's place in what it copies, and its edits.
    copiers: HashMap<SeqId, Copier>,
    cost: StepCost,
    /// The draft model's time per proposal, in microseconds (decayed average; 0 without one).
    draft_cost: f64,
    /// For the step being planned: the acceptance a proposal row needs to pay.
    threshold: f64,
    /// Proposals left for the step being planned.
    budget: usize,
    /// Whether a ruled-out sequence may probe in the step being planned.
    probe: bool,
}

/// One sequence's speculation state.
#[derive(Debug, Clone, Copy, Default)]
struct SeqSpec {
    /// Decayed counts of accepted proposals and of rejections.
    accepted: f64,
    rejected: f64,
    /// Probes in a row that accepted nothing.
    misses: u32,
    /// Decode steps it still sits out before probing (while ruled out).
    wait: u32,
    /// Whether its last proposal was a probe, not yet verified.
    probing: bool,
    /// Probes after which it was still ruled out.
    fruitless: u32,
}

impl SeqSpec {
    /// The estimated chance that a proposal is accepted (a prior of one each way).
    fn p(&self) -> f64 {
        (self.accepted + 1.0) / (self.accepted + self.rejected + 2.0)
    }
}

/// Weight of a sequence's earlier verifications against a new one.
const ACCEPT_DECAY: f64 = 0.9;
/// Decode steps a ruled-out sequence sits out before its first probe, doubled after each
/// probe that accepted nothing (a probe's row then costs a few percent of the steps between).
const PROBE_WAIT: u32 = 8;
/// Most decode steps a sequence sits out between probes.
const MAX_WAIT: u32 = 64;
/// No probes where a proposal would need to be accepted more often than this to pay (a large
/// batch): a probe could not show it.
const MAX_PROBE_THRESHOLD: f64 = 0.8;
/// Fruitless probes after which a draft-model sequence stops probing. A draft model's probe
/// costs more than its row: the draft first catches up on every token decoded since the
/// sequence last proposed (about a fifth of a target step per token for a 0.5B draft of a 1.5B
/// target), so probing all along makes it run over nearly the whole output. Measured on free
/// chat (63-68% of proposals accepted, below what pays), one run each: 0.95x no speculation
/// with unlimited probes, 0.96x with this limit; most of the draft's proposals there are short
/// runs where its estimate crossed the threshold, not probes.
const DRAFT_PROBES: u32 = 4;

/// How much more a proposal must be expected to gain than it costs. At the break-even a
/// proposal gains nothing on average, and the estimates are biased toward proposing there: a
/// sequence's acceptance is estimated from its last few verifications, so it crosses the
/// threshold when a run of luck has overestimated it, and the costs leave out the sampling of
/// the extra rows. Measured: a 0.5B draft for a 1.5B target on free chat, accepted about 70% of
/// the time against a threshold near 0.7, broke even at best and ran 17% slower in one
/// benchmark; with the margin it sits such stretches out and keeps the 99% of code editing.
const MARGIN: f64 = 1.2;

/// Rows of the draft's first pass that a sequence proposing every step needs: the last
/// proposal kept and the token after it.
const STEADY_CATCH_UP: usize = 2;

/// The draft time a step's proposals cost, of `total_us`: its one-row rounds, and of its first
/// pass (`catch_up_us` over `catch_up_rows`) the share of the rows that the `proposing`
/// sequences would need had they proposed in the step before. Rows beyond that caught a
/// sequence up on tokens decoded without the draft (a prompt, steps sat out): a cost of
/// starting to propose, paid once, which charged to one proposal would rule out the next.
pub fn draft_charge(
    total_us: u64,
    catch_up_us: u64,
    catch_up_rows: usize,
    proposing: usize,
) -> u64 {
    let steady = (STEADY_CATCH_UP * proposing) as f64 / catch_up_rows.max(1) as f64;
    let rounds = total_us.saturating_sub(catch_up_us);
    rounds + (catch_up_us as f64 * steady.min(1.0)) as u64
}

/// How many proposals pay at acceptance `p`: the most `k` with `p^k` above `threshold`.
fn worth(p: f64, threshold: f64, max: usize) -> usize {
    if p <= threshold {
        return 0;
    }
    let k = if p >= 1.0 {
        max
    } else {
        (threshold.ln() / p.ln()).floor() as usize
    };
    k.clamp(1, max)
}

impl Speculator {
    pub fn new(cfg: SpecConfig) -> Self {
        Speculator {
            cfg,
            seqs: HashMap::new(),
            copiers: HashMap::new(),
            cost: StepCost::default(),
            draft_cost: 0.0,
            threshold: 0.5,
            budget: cfg.step_budget,
            probe: true,
        }
    }

    /// A step ran `rows` tokens in `micros`.
    pub fn observe_step(&mut self, rows: usize, micros: u64) {
        self.cost.observe(rows, micros);
    }

    /// A decode step's draft model ran `proposals` proposals in `micros`.
    pub fn observe_draft(&mut self, proposals: usize, micros: u64) {
        if proposals > 0 {
            let per = micros as f64 / proposals as f64;
            self.draft_cost = match self.draft_cost {
                0.0 => per,
                d => d * STEP_DECAY + per * (1.0 - STEP_DECAY),
            };
        }
    }

    /// A new step is being planned with `decoding` sequences decoding.
    pub fn begin_step(&mut self, decoding: usize) {
        let fit = self.cost.fit();
        let (fixed, per_row) = fit.unwrap_or_else(|| self.cost.even());
        let b = decoding.max(1) as f64;
        let threshold = (per_row + self.draft_cost) * b / (fixed + per_row * b);
        self.threshold = threshold * MARGIN;
        self.budget = self.cfg.step_budget;
        // Where the fit does not know a row's cost yet, probes teach it, unless the batch is
        // large enough that rows could not pay even at half a step (the draft's time aside).
        self.probe = match fit {
            Some(_) => threshold <= MAX_PROBE_THRESHOLD,
            None => b / (1.0 + b) <= MAX_PROBE_THRESHOLD,
        };
    }

    pub fn proposer(&self) -> Proposer {
        self.cfg.proposer
    }

    /// The proposals for the token after `tokens` by n-gram lookup (empty: none), at most
    /// `room` of them; taken from the step's budget.
    pub fn propose(&mut self, seq: SeqId, tokens: &[u32], room: usize) -> Vec<u32> {
        let (k, probe) = self.count(seq, room);
        if k == 0 {
            return Vec::new();
        }
        let copier = self.copiers.entry(seq).or_default();
        let proposal = copier.propose(tokens, self.cfg.ngram_min, self.cfg.ngram_max, k);
        // A probe the lookup had nothing for taught nothing: the next step may probe again.
        if probe && !proposal.is_empty() {
            self.probed(seq);
        }
        self.budget -= proposal.len();
        proposal
    }

    /// How many proposals the draft model makes for `seq` (0: none), at most `room`; taken
    /// from the step's budget.
    pub fn propose_count(&mut self, seq: SeqId, room: usize) -> usize {
        let (k, probe) = self.count(seq, room);
        if probe && k > 0 {
            self.probed(seq);
        }
        self.budget -= k;
        k
    }

    /// How many proposals pay for `seq` now, within `room` and the step's budget (not taken),
    /// and whether that is a probe (one proposal the estimate does not ask for).
    fn count(&mut self, seq: SeqId, room: usize) -> (usize, bool) {
        let threshold = self.threshold;
        let st = self.seqs.entry(seq).or_default();
        let k = worth(st.p(), threshold, self.cfg.max_draft);
        if k > 0 {
            return (k.min(room).min(self.budget), false);
        }
        // Not worth it by the estimate: sit out, then probe with one, where a probe's success
        // could make it worth it (with a draft model, until probes have kept failing to).
        let given_up = self.cfg.proposer == Proposer::DraftModel && st.fruitless >= DRAFT_PROBES;
        if st.wait > 0 || !self.probe || given_up {
            st.wait = st.wait.saturating_sub(1);
            return (0, false);
        }
        (1.min(room).min(self.budget), true)
    }

    /// `seq` made a probe: it sits out the next ones, longer after each that accepted nothing.
    fn probed(&mut self, seq: SeqId) {
        if let Some(st) = self.seqs.get_mut(&seq) {
            st.wait = (PROBE_WAIT << st.misses.min(4)).min(MAX_WAIT);
            st.probing = true;
        }
    }

    /// What a verification gave: `accepted` of `proposed` proposals were kept, then the
    /// sequence wrote `next`. An n-gram sequence's copier learns from it where its copy is and
    /// the edits it makes (a draft model's sequences have none).
    pub fn observe(&mut self, seq: SeqId, proposed: usize, accepted: usize, next: Option<u32>) {
        if let Some(c) = self.copiers.get_mut(&seq) {
            c.verified(accepted, next);
        }
        let Some(st) = self.seqs.get_mut(&seq) else {
            return;
        };
        st.accepted = st.accepted * ACCEPT_DECAY + accepted as f64;
        st.rejected = st.rejected * ACCEPT_DECAY + f64::from(u8::from(accepted < proposed));
        match accepted {
            0 => st.misses += 1,
            _ => st.misses = 0,
        }
        if std::mem::take(&mut st.probing) && worth(st.p(), self.threshold, 1) == 0 {
            st.fruitless += 1;
        }
    }

    /// Forgets a finished sequence.
    pub fn forget(&mut self, seq: SeqId) {
        self.seqs.remove(&seq);
        self.copiers.remove(&seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_draft_is_charged_its_rounds_and_a_steady_share_of_its_catch_up() {
        // Steady: two rows per proposing sequence, all charged.
        assert_eq!(draft_charge(50_000, 20_000, 4, 2), 50_000);
        assert_eq!(draft_charge(50_000, 20_000, 3, 2), 50_000);
        // Catching up on 100 rows for one sequence: 2% of that pass.
        assert_eq!(draft_charge(50_000, 20_000, 100, 1), 30_400);
        // Nothing proposed: only the rounds (none).
        assert_eq!(draft_charge(20_000, 20_000, 256, 0), 0);
    }

    #[test]
    fn the_step_cost_fit_finds_the_fixed_part_and_the_row_cost() {
        let mut c = StepCost::default();
        assert_eq!(c.fit(), None);
        assert_eq!(
            c.even(),
            (1.0, 1.0),
            "nothing seen: a row costs the fixed part"
        );
        c.observe(1, 32_000);
        c.observe(1, 32_000);
        assert_eq!(c.fit(), None);
        let (fixed, per_row) = c.even();
        assert!(
            (fixed - 16_000.0).abs() < 1.0 && fixed == per_row,
            "one size seen: half each"
        );
        let mut c = StepCost::default();
        for rows in [1, 2, 5, 9, 1, 3, 16, 1] {
            c.observe(rows, 22_000 + 25_000 * rows as u64);
        }
        let (fixed, per_row) = c.fit().unwrap();
        assert!((fixed - 22_000.0).abs() < 1.0 && (per_row - 25_000.0).abs() < 1.0);
    }

    #[test]
    fn a_row_cost_lost_in_the_noise_is_not_trusted() {
        // Steps of 250 ms +- 12 ms, one in twenty a row larger costing 13 ms more: the slope
        // is not known to within half of itself.
        let mut c = StepCost::default();
        for i in 0..40u64 {
            let noise = [0, 30_000, 10_000, 25_000, 5_000][i as usize % 5];
            let rows = if i % 20 == 7 { 17 } else { 16 };
            c.observe(rows, 42_000 + 13_000 * rows as u64 + noise);
        }
        assert_eq!(c.fit(), None);
        // The same machine quiet: trusted.
        let mut c = StepCost::default();
        for i in 0..40u64 {
            let rows = if i % 20 == 7 { 17 } else { 16 };
            c.observe(rows, 42_000 + 13_000 * rows as u64 + i % 2 * 300);
        }
        let (_, per_row) = c.fit().expect("a quiet machine's fit");
        assert!((per_row - 13_000.0).abs() < 1_000.0, "{per_row}");
    }

    /// A speculator whose steps cost `fixed + per_row * rows`.
    fn costed(max_draft: usize, fixed: u64, per_row: u64) -> Speculator {
        let cfg = SpecConfig {
            proposer: Proposer::Ngram,
            max_draft,
            ngram_max: 2,
            ngram_min: 1,
            step_budget: 32,
        };
        let mut s = Speculator::new(cfg);
        for rows in [1, 4, 1, 8, 2] {
            s.observe_step(rows, fixed + per_row * rows as u64);
        }
        s
    }

    #[test]
    fn proposals_follow_acceptance_and_batch_size() {
        // A row costs half a single-stream step: a sequence accepting 90% proposes 4 alone
        // (0.9^4 > 0.64 > 0.9^5: the fit's 0.53 with the margin), 1 in a batch of 2, none in 16.
        let mut s = costed(8, 22_000, 25_000);
        let run: Vec<u32> = [1, 2, 3, 4, 5, 6].repeat(4);
        for _ in 0..20 {
            s.seqs.entry(1).or_default();
            s.observe(1, 10, 9, None);
        }
        let p = s.seqs[&1].p();
        assert!(p > 0.85, "{p}");
        s.begin_step(1);
        let alone = s.propose(1, &run, 100).len();
        s.begin_step(2);
        let pair = s.propose(1, &run, 100).len();
        s.begin_step(16);
        let crowd = s.propose(1, &run, 100).len();
        assert!(alone >= 3 && pair >= 1 && pair < alone, "{alone} {pair}");
        assert_eq!(crowd, 0, "ruled out, and no probe in a crowd");
        s.begin_step(1);
        assert_eq!(s.propose(1, &run, 1).len(), 1, "room caps it");
    }

    #[test]
    fn a_proposal_that_only_breaks_even_is_not_made() {
        // A row costs 25 of a 47 ms step: a proposal pays above 0.53. A sequence accepting
        // 60% is past that but not past the margin, and only probes; at 90% it proposes.
        let mut s = costed(8, 22_000, 25_000);
        for i in 0..30 {
            s.seqs.entry(1).or_default();
            s.seqs.entry(2).or_default();
            // Runs of 1 and 2 accepted, each ended by a rejection: 3 of 5.
            s.observe(1, 3, 1 + i % 2, None);
            s.observe(2, 10, 9, None);
        }
        s.seqs.get_mut(&1).unwrap().wait = 8;
        assert!((0.55..0.65).contains(&s.seqs[&1].p()));
        let run: Vec<u32> = [1, 2, 3].repeat(4);
        s.begin_step(1);
        assert!(s.propose(1, &run, 100).is_empty(), "break-even: sits out");
        assert!(!s.propose(2, &run, 100).is_empty());
    }

    #[test]
    fn a_sequence_ruled_out_probes_after_longer_and_longer_waits() {
        let mut s = costed(8, 22_000, 25_000);
        let run: Vec<u32> = [1, 2, 3].repeat(4);
        let mut waits = Vec::new();
        for _ in 0..3 {
            s.begin_step(1);
            let proposed = s.propose(7, &run, 100).len();
            assert!(proposed > 0);
            s.observe(7, proposed, 0, None);
            let mut sat_out = 0;
            loop {
                s.begin_step(1);
                if s.seqs[&7].wait == 0 {
                    break;
                }
                assert!(s.propose(7, &run, 100).is_empty());
                sat_out += 1;
            }
            waits.push(sat_out);
        }
        assert_eq!(waits, [8, 16, 32]);
        // An accepted proposal resets the back-off.
        s.observe(7, 1, 1, None);
        assert_eq!(s.seqs[&7].misses, 0);
    }

    #[test]
    fn a_draft_model_sequence_stops_probing_after_fruitless_probes() {
        // Probes that half the time are accepted keep a sequence under the threshold: with a
        // draft model it gives up after DRAFT_PROBES of them; with n-gram lookup it goes on.
        for proposer in [Proposer::DraftModel, Proposer::Ngram] {
            let mut s = costed(8, 22_000, 25_000);
            s.cfg.proposer = proposer;
            let run: Vec<u32> = [1, 2, 3].repeat(4);
            let (mut made, mut last) = (0, 0);
            for step in 0..1000 {
                s.begin_step(1);
                let k = match proposer {
                    Proposer::DraftModel => s.propose_count(7, 100),
                    Proposer::Ngram => s.propose(7, &run, 100).len(),
                };
                if k > 0 {
                    assert_eq!(k, 1, "at most one: never far above the threshold");
                    made += 1;
                    last = step;
                    s.observe(7, 1, made % 2, None);
                }
            }
            let fruitless = s.seqs[&7].fruitless;
            match proposer {
                Proposer::DraftModel => {
                    assert_eq!(fruitless, DRAFT_PROBES);
                    assert!(made < 12 && last < 300, "{made} {last}");
                }
                Proposer::Ngram => assert!(fruitless > DRAFT_PROBES && last > 900, "{last}"),
            }
        }
    }

    #[test]
    fn a_probe_the_lookup_has_nothing_for_is_not_spent() {
        let mut s = costed(8, 22_000, 25_000);
        // Nothing repeats yet: the probe finds no proposal, and the next step probes again
        // instead of sitting out 8 (a short answer would otherwise end before it speculates).
        s.begin_step(1);
        assert!(s.propose(7, &[1, 2, 3, 4], 100).is_empty());
        assert_eq!(s.seqs[&7].wait, 0);
        s.begin_step(1);
        assert_eq!(s.propose(7, &[1, 2, 3, 4, 1, 2], 100), [3]);
        assert_eq!(s.seqs[&7].wait, 8, "a probe made waits");
    }

    #[test]
    fn the_draft_models_time_raises_what_a_proposal_must_be_accepted_at() {
        let cfg = SpecConfig {
            proposer: Proposer::DraftModel,
            max_draft: 8,
            ngram_max: 2,
            ngram_min: 1,
            step_budget: 32,
        };
        let mut s = Speculator::new(cfg);
        for rows in [1, 4, 1, 8, 2] {
            s.observe_step(rows, 40_000 + 10_000 * rows as u64);
        }
        for _ in 0..20 {
            s.seqs.entry(1).or_default();
            s.observe(1, 10, 9, None);
        }
        s.begin_step(1);
        let free = s.propose_count(1, 100);
        // A draft proposal that costs as much as a verifying row: fewer pay.
        s.observe_draft(4, 40_000);
        s.begin_step(1);
        let costly = s.propose_count(1, 100);
        assert!(free > costly && costly >= 1, "{free} {costly}");
        assert_eq!(s.budget, 32 - costly, "taken from the step's budget");
    }
}
