//! Keeps costly grammars from holding back the batch. Grammar masks are computed inside the
//! shared step, after the forward pass, so a sequence whose grammar needs milliseconds of mask
//! work per token (thousands of literals in one lexeme, say) would slow every other sequence's
//! next token by that much. [`MaskBudget`] bounds the mask work of one step to half the forward
//! pass it follows (never less than [`MIN_BUDGET_US`]): costly constrained sequences take turns,
//! longest-waiting first, and the others sit the step out (held: no decode this step). At least
//! one runs every step, so every sequence progresses; the cost of a heavy grammar falls on the
//! request that sent it.
//!
//! Sequences whose masks cost under [`CHEAP_US`] are never held: ordinary JSON schemas and
//! regexes run every step as before. Costs are exponentially weighted averages of what the
//! engine measured (`Generation::mask_us`). A plain synchronous struct; the scheduler task calls
//! it. Cost per step: O(costly sequences * log).

use std::collections::{HashMap, HashSet};
use wick_proto::SeqId;

/// Mask work per step allowed whatever the forward pass costs, in microseconds.
pub const MIN_BUDGET_US: u64 = 2_000;
/// A mask cheaper than this never holds a sequence back, in microseconds.
pub const CHEAP_US: u64 = 500;

#[derive(Debug, Default)]
struct Costly {
    /// Average mask cost, in microseconds.
    cost_us: u64,
    /// The step it last ran in.
    last_ran: u64,
}

#[derive(Debug, Default)]
pub struct MaskBudget {
    /// Average forward-pass time, in microseconds.
    forward_us: u64,
    costly: HashMap<SeqId, Costly>,
    step: u64,
}

fn average(old: u64, new: u64) -> u64 {
    if old == 0 {
        new
    } else {
        (old * 3 + new) / 4
    }
}

impl MaskBudget {
    /// Records a step's forward time and each sampled sequence's mask time.
    pub fn observe(&mut self, forward_us: u64, masks: impl IntoIterator<Item = (SeqId, u64)>) {
        self.step += 1;
        self.forward_us = average(self.forward_us, forward_us);
        for (seq, us) in masks {
            let known = self.costly.contains_key(&seq);
            if us < CHEAP_US && !known {
                continue;
            }
            let c = self.costly.entry(seq).or_default();
            c.cost_us = average(c.cost_us, us);
            c.last_ran = self.step;
        }
    }

    /// The sequences to hold out of the next step.
    pub fn held(&self) -> HashSet<SeqId> {
        let budget = (self.forward_us / 2).max(MIN_BUDGET_US);
        let mut turn: Vec<(&SeqId, &Costly)> = self
            .costly
            .iter()
            .filter(|(_, c)| c.cost_us >= CHEAP_US)
            .collect();
        // Longest waiting first; ties by id, so the order is fixed.
        turn.sort_by_key(|(seq, c)| (c.last_ran, **seq));
        let mut spent = 0;
        let mut held = HashSet::new();
        for (i, (&seq, c)) in turn.into_iter().enumerate() {
            if i == 0 || spent + c.cost_us <= budget {
                spent += c.cost_us;
            } else {
                held.insert(seq);
            }
        }
        held
    }

    /// Forgets a finished sequence.
    pub fn forget(&mut self, seq: SeqId) {
        self.costly.remove(&seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cheap_grammars_are_never_held() {
        let mut b = MaskBudget::default();
        b.observe(8_000, (1..=16).map(|s| (s, 300)));
        assert!(b.held().is_empty());
    }

    #[test]
    fn costly_grammars_take_turns_within_half_the_forward_pass() {
        let mut b = MaskBudget::default();
        // Forward 8 ms: 4 ms of masks per step, so one 3.5 ms sequence at a time.
        b.observe(8_000, (1..=4).map(|s| (s, 3_500)));
        let held = b.held();
        assert_eq!(held.len(), 3);
        let ran: Vec<SeqId> = (1..=4).filter(|s| !held.contains(s)).collect();
        assert_eq!(ran, vec![1]);
        // The one that ran goes to the back of the line.
        b.observe(8_000, [(1, 3_500)]);
        assert!(!b.held().contains(&2));
        assert!(b.held().contains(&1));
    }

    #[test]
    fn one_costly_sequence_always_runs() {
        let mut b = MaskBudget::default();
        b.observe(1_000, [(7, 50_000)]);
        assert!(b.held().is_empty());
        b.forget(7);
        b.observe(1_000, [(8, 50_000), (9, 50_000)]);
        assert_eq!(b.held().len(), 1);
    }

    #[test]
    fn a_small_forward_pass_still_allows_the_minimum_budget() {
        let mut b = MaskBudget::default();
        b.observe(500, (1..=3).map(|s| (s, 900)));
        // 2 ms of budget: two of the three 0.9 ms masks.
        assert_eq!(b.held().len(), 1);
    }
}
