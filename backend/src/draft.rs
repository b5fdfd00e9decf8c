//! Draft-model speculation: a second, smaller model with the target's vocabulary that proposes
//! the tokens an entry asks for ([`wick_proto::StepEntry::propose`]), greedily, before the target
//! verifies them in its own pass (the engine turns them into `draft` proposals).
//!
//! The draft's K/V live in a cache of its own with the target's block size and block ids, so a
//! sequence's block table serves both. What each draft block holds is recorded (the chain hash
//! of the sequence's tokens before the block, and the tokens written into it), so for any
//! sequence the drafter knows up to which position its cache is right, instead of assuming it:
//! blocks shared through the prefix cache, proposals the target rejected, blocks freed and given
//! to another sequence are all checked. From that position on it runs a proposing entry's tokens
//! itself, lazily: a sequence that never proposes costs the draft nothing, and one that does
//! catches up on its prompt (in chunks of [`CATCH_UP`] tokens a step, proposing once level) and
//! on the tokens decoded since it last proposed.
//!
//! Per step: one draft forward over the catch-up rows of every proposing entry, whose last row
//! gives each its first proposal, then one single-row round per further proposal over the
//! entries that want it. Checking the records costs a hash per block of each drafted sequence.

use crate::error::BackendError;
use crate::kv::KvCache;
use crate::model::{Model, PackedBatch};
use crate::sampling::argmax;
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Instant;
use wick_proto::{SeqId, Step, StepEntry};

/// The draft's first pass in a step: its rows and wall time.
#[derive(Debug, Clone, Copy, Default)]
pub struct CatchUp {
    pub rows: usize,
    pub micros: u64,
}

pub struct Drafter {
    /// Its vocabulary is no larger than the target's (checked at load), so its proposals are
    /// the target's tokens.
    model: Model,
    kv: KvCache,
    records: Records,
}

/// What each block of the draft cache holds, by block id.
#[derive(Debug)]
struct Records {
    block_size: usize,
    blocks: Vec<Record>,
}

/// The contents of one draft cache block.
#[derive(Debug, Clone, Default)]
struct Record {
    /// Chain hash of the sequence's tokens before the block.
    parent: u64,
    /// Tokens whose K/V the block holds, from its first slot.
    tokens: Vec<u32>,
}

/// The chain hash before a sequence's first block.
const ROOT: u64 = 0x9e37_79b9_7f4a_7c15;

/// The chain hash after a block of `tokens` (std's SipHash with fixed keys: the same in every
/// run).
fn chain(parent: u64, tokens: &[u32]) -> u64 {
    let mut h = DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

/// Most tokens the draft catches up on for one sequence in one step. A sequence further behind
/// (a prompt the draft has not seen) catches up in chunks of this size and proposes once level,
/// so that no step holds the batch up for a long draft prefill.
pub const CATCH_UP: usize = 256;

impl Records {
    /// The first position of a sequence's `tokens`, laid out in `blocks`, whose K/V the draft
    /// cache does not hold.
    fn valid(&self, tokens: &[u32], blocks: &[u32]) -> usize {
        let mut parent = ROOT;
        for (i, (chunk, &b)) in tokens.chunks(self.block_size).zip(blocks).enumerate() {
            let start = i * self.block_size;
            let rec = &self.blocks[b as usize];
            if rec.parent != parent {
                return start;
            }
            let same = (rec.tokens.iter().zip(chunk))
                .take_while(|(a, b)| a == b)
                .count();
            if same < chunk.len() {
                return start + same;
            }
            parent = chain(parent, chunk);
        }
        tokens.len()
    }

    /// Records that the K/V of positions `from..` of a sequence's `tokens` were written through
    /// `blocks` (those before `from` were already right).
    fn record(&mut self, tokens: &[u32], blocks: &[u32], from: usize) {
        let bs = self.block_size;
        let first = from / bs;
        let mut parent = tokens[..first * bs].chunks(bs).fold(ROOT, chain);
        for (i, chunk) in tokens.chunks(bs).enumerate().skip(first) {
            let rec = &mut self.blocks[blocks[i] as usize];
            let keep = from.saturating_sub(i * bs);
            if keep == 0 {
                rec.parent = parent;
            }
            rec.tokens.truncate(keep);
            rec.tokens.extend_from_slice(&chunk[keep..]);
            parent = chain(parent, chunk);
        }
    }
}

impl Drafter {
    /// A drafter over `model` (of a vocabulary no larger than the target's) and its cache (of
    /// the target's block size and block count).
    pub(crate) fn new(model: Model, kv: KvCache) -> Self {
        let records = Records {
            block_size: kv.block_size(),
            blocks: vec![Record::default(); kv.num_blocks()],
        };
        Drafter { model, kv, records }
    }

    /// Runs the draft over what `step`'s entries need and returns each entry's proposals (empty
    /// where it asks for none) and its first pass's rows and time. `history` holds every
    /// sequence's tokens, this step's included.
    pub fn propose(
        &mut self,
        step: &Step,
        history: &HashMap<SeqId, Vec<u32>>,
    ) -> Result<(Vec<Vec<u32>>, CatchUp), BackendError> {
        let mut proposals = vec![Vec::new(); step.entries.len()];
        let seq_tokens = |e: &StepEntry| &history[&e.seq][..e.start_pos + e.tokens.len()];

        // Catch-up: every proposing entry from the first position the draft cache lacks (its
        // last row is run even when cached, for its logits); one too far behind only catches up.
        let mut batch = PackedBatch::new(self.kv.block_size());
        let (mut ran, mut proposing) = (Vec::new(), Vec::new());
        for (i, e) in step
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.propose > 0)
        {
            let tokens = seq_tokens(e);
            let from = self.records.valid(tokens, &e.blocks).min(tokens.len() - 1);
            let behind = tokens.len() - from > CATCH_UP + 1;
            let to = if behind {
                from + CATCH_UP
            } else {
                tokens.len()
            };
            batch.push(&tokens[from..to], from, &e.blocks, usize::from(!behind));
            ran.push((i, from, to));
            if !behind {
                proposing.push(i);
            }
        }
        if ran.is_empty() {
            return Ok((proposals, CatchUp::default()));
        }
        let started = Instant::now();
        let logits = self.forward(&batch)?;
        let catch_up = CatchUp {
            rows: batch.tokens.len(),
            micros: started.elapsed().as_micros() as u64,
        };
        for &(i, from, to) in &ran {
            let e = &step.entries[i];
            self.records.record(&seq_tokens(e)[..to], &e.blocks, from);
        }
        for (&i, token) in proposing.iter().zip(logits) {
            proposals[i].push(token);
        }

        // One round per further proposal, over the entries that want it.
        let rounds = proposing.iter().map(|&i| step.entries[i].propose).max();
        for round in 1..rounds.unwrap_or(0) {
            let mut batch = PackedBatch::new(self.kv.block_size());
            let active: Vec<usize> = (proposing.iter().copied())
                .filter(|&i| step.entries[i].propose > round)
                .collect();
            for &i in &active {
                let e = &step.entries[i];
                let pos = e.start_pos + e.tokens.len() + round - 1;
                batch.push(&[proposals[i][round - 1]], pos, &e.blocks, 1);
            }
            for (&i, token) in active.iter().zip(self.forward(&batch)?) {
                proposals[i].push(token);
            }
        }
        // The proposals run (all but the last) are in the draft cache now.
        for &i in &proposing {
            let e = &step.entries[i];
            let mut tokens = seq_tokens(e).to_vec();
            let end = tokens.len();
            tokens.extend(&proposals[i][..e.propose - 1]);
            self.records.record(&tokens, &e.blocks, end);
        }
        Ok((proposals, catch_up))
    }

    /// The draft's greedy token for each sampled row of `batch`.
    fn forward(&mut self, batch: &PackedBatch) -> Result<Vec<u32>, BackendError> {
        let logits: Vec<Vec<f32>> = self.model.forward(batch, &mut self.kv)?.to_vec2()?;
        Ok(logits.iter().map(|row| argmax(row)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(blocks: usize) -> Records {
        Records {
            block_size: 4,
            blocks: vec![Record::default(); blocks],
        }
    }

    #[test]
    fn an_empty_cache_holds_nothing_and_a_written_sequence_all_it_wrote() {
        let mut r = records(8);
        let seq: Vec<u32> = (10..20).collect();
        assert_eq!(r.valid(&seq, &[3, 5, 1]), 0);
        r.record(&seq[..6], &[3, 5, 1], 0);
        assert_eq!(r.valid(&seq, &[3, 5, 1]), 6);
        r.record(&seq, &[3, 5, 1], 6);
        assert_eq!(r.valid(&seq, &[3, 5, 1]), 10);
        // The same blocks in another order hold other positions: nothing is right.
        assert_eq!(r.valid(&seq, &[5, 3, 1]), 0);
    }

    #[test]
    fn a_rewind_a_shared_prefix_and_a_reused_block_are_checked() {
        let mut r = records(8);
        let seq: Vec<u32> = (10..20).collect();
        r.record(&seq, &[0, 1, 2], 0);
        // Rejected proposals: the sequence went on differently from position 7.
        let mut other = seq[..7].to_vec();
        other.extend([99, 98, 97]);
        assert_eq!(r.valid(&other, &[0, 1, 2]), 7);
        r.record(&other, &[0, 1, 2], 7);
        assert_eq!(r.valid(&other, &[0, 1, 2]), 10);
        assert_eq!(r.valid(&seq, &[0, 1, 2]), 7);
        // A second sequence on the same first two blocks (a prefix-cache hit) and its own third.
        let mut shared = other[..8].to_vec();
        shared.extend([5, 5]);
        assert_eq!(r.valid(&shared, &[0, 1, 6]), 8);
        // Block 1 given to a sequence with another beginning: its parent differs, so even the
        // same tokens in it are not right.
        let mut fresh: Vec<u32> = vec![1, 2, 3, 4];
        fresh.extend(&other[4..8]);
        assert_eq!(r.valid(&fresh, &[4, 1]), 0);
        r.record(&fresh, &[4, 1], 0);
        assert_eq!(r.valid(&fresh, &[4, 1]), 8);
        assert_eq!(
            r.valid(&other, &[0, 1, 2]),
            4,
            "block 1 now holds the other sequence"
        );
    }

    #[test]
    fn chain_hashes_differ_by_parent_and_tokens() {
        let a = chain(ROOT, &[1, 2, 3, 4]);
        assert_eq!(a, chain(ROOT, &[1, 2, 3, 4]), "deterministic");
        assert_ne!(a, chain(ROOT, &[1, 2, 3, 5]));
        assert_ne!(chain(a, &[1]), chain(ROOT, &[1]));
    }
}
