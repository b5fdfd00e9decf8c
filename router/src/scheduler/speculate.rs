//! Speculative decoding's policy: which tokens a decoding sequence proposes for the next step,
//! and how many. A plain synchronous struct the batcher asks while it plans.
//!
//! Proposals come from n-gram (prompt) lookup: the longest suffix of the sequence's tokens, of
//! `ngram_max` down to `ngram_min` tokens, that occurred earlier is looked up (the latest
//! occurrence), and the tokens that followed it are proposed. The backend verifies them in one
//! forward pass ([`wick_proto::StepEntry::draft`]) and keeps exactly the tokens plain decoding
//! would have given, so proposals cost only their rows of the step, never a changed output.
//!
//! How many: each sequence has its own `k` (at most `max_draft`): after a step that accepted
//! every proposal it grows by one, otherwise it becomes what was accepted plus one. A step's
//! proposals across the batch are capped at `step_budget`, first come first served, so a full
//! batch (already compute-bound) does not pay for rejected proposals. Cost per proposal: a
//! backward scan of the sequence's tokens per n-gram length, O(`ngram_max` * tokens).

use std::collections::HashMap;
use wick_proto::SeqId;

/// `--speculate ngram` and its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecConfig {
    /// Most proposals per sequence and step.
    pub max_draft: usize,
    /// Longest suffix matched.
    pub ngram_max: usize,
    /// Shortest suffix matched.
    pub ngram_min: usize,
    /// Most proposals in one step, across the batch.
    pub step_budget: usize,
}

impl Default for SpecConfig {
    fn default() -> Self {
        SpecConfig {
            max_draft: 8,
            ngram_max: 4,
            ngram_min: 2,
            step_budget: 32,
        }
    }
}

/// Proposals and their outcomes, per sequence.
#[derive(Debug)]
pub struct Speculator {
    cfg: SpecConfig,
    /// Each sequence's current `k`.
    k: HashMap<SeqId, usize>,
    /// Proposals left for the step being planned.
    budget: usize,
}

impl Speculator {
    pub fn new(cfg: SpecConfig) -> Self {
        Speculator {
            cfg,
            k: HashMap::new(),
            budget: cfg.step_budget,
        }
    }

    /// A new step is being planned: the batch's budget is whole again.
    pub fn begin_step(&mut self) {
        self.budget = self.cfg.step_budget;
    }

    /// The proposals for the token after `tokens` (empty: none), at most `room` of them; taken
    /// from the step's budget.
    pub fn propose(&mut self, seq: SeqId, tokens: &[u32], room: usize) -> Vec<u32> {
        let k = (*self.k.entry(seq).or_insert(self.cfg.max_draft))
            .min(room)
            .min(self.budget);
        if k == 0 {
            return Vec::new();
        }
        let proposal = ngram_lookup(tokens, self.cfg.ngram_min, self.cfg.ngram_max, k);
        self.budget -= proposal.len();
        proposal
    }

    /// What a verification gave: `accepted` of `proposed` proposals were kept.
    pub fn observe(&mut self, seq: SeqId, proposed: usize, accepted: usize) {
        let k = self.k.entry(seq).or_insert(self.cfg.max_draft);
        *k = match accepted >= proposed {
            true => (*k + 1).min(self.cfg.max_draft),
            false => (accepted + 1).min(self.cfg.max_draft),
        };
    }

    /// Forgets a finished sequence.
    pub fn forget(&mut self, seq: SeqId) {
        self.k.remove(&seq);
    }
}

/// Up to `k` tokens that followed the latest earlier occurrence of the longest suffix of
/// `tokens` (of `max` down to `min` tokens) that occurred before.
pub fn ngram_lookup(tokens: &[u32], min: usize, max: usize, k: usize) -> Vec<u32> {
    let len = tokens.len();
    for n in (min.max(1)..=max).rev() {
        if n >= len {
            continue;
        }
        let suffix = &tokens[len - n..];
        // Latest start `i` of an earlier occurrence (it may overlap the suffix, not be it).
        let found = (0..len - n).rev().find(|&i| &tokens[i..i + n] == suffix);
        if let Some(i) = found {
            let from = i + n;
            return tokens[from..(from + k).min(len)].to_vec();
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_suffix_seen_before_proposes_what_followed_it() {
        // "a b c d x a b c" -> after "a b c" came "d x".
        let t = [1, 2, 3, 4, 9, 1, 2, 3];
        assert_eq!(ngram_lookup(&t, 1, 3, 2), [4, 9]);
        // The proposal stops at the end of the tokens.
        assert_eq!(ngram_lookup(&t, 1, 3, 10), [4, 9, 1, 2, 3]);
        // The latest occurrence wins.
        let t = [5, 6, 1, 5, 7, 5];
        assert_eq!(ngram_lookup(&t, 1, 2, 1), [7]);
        // No suffix occurred before: nothing.
        assert!(ngram_lookup(&[1, 2, 3], 1, 3, 4).is_empty());
        assert!(ngram_lookup(&[1, 2, 3, 1, 2], 3, 3, 4).is_empty());
        // A run proposes more of itself.
        assert_eq!(ngram_lookup(&[7, 7, 7], 1, 2, 3), [7]);
    }

    #[test]
    fn k_follows_acceptance_and_the_step_budget_caps_the_batch() {
        let cfg = SpecConfig {
            max_draft: 4,
            ngram_max: 2,
            ngram_min: 1,
            step_budget: 6,
        };
        let mut s = Speculator::new(cfg);
        let run: Vec<u32> = [1, 2, 3, 4, 5, 6].repeat(3);
        s.begin_step();
        assert_eq!(s.propose(1, &run, 100).len(), 4);
        assert_eq!(s.propose(2, &run, 100).len(), 2, "the budget's rest");
        assert!(s.propose(3, &run, 100).is_empty());
        s.observe(1, 4, 1);
        s.begin_step();
        assert_eq!(s.propose(1, &run, 100).len(), 2, "k = accepted + 1");
        s.observe(1, 2, 2);
        s.begin_step();
        assert_eq!(s.propose(1, &run, 100).len(), 3, "all accepted: k grows");
        assert_eq!(s.propose(4, &run, 1).len(), 1, "room caps it");
    }
}
