//! Continuous-batching policy: which sequences run in the next step, with how many tokens, and
//! which blocks they hold. A plain synchronous struct; the scheduler task calls it.
//!
//! Each step: every running sequence that is decoding gets its one token (allocating a block when
//! it crosses a block boundary, preempting the newest running sequence by recompute when none is
//! free); the rest of the token budget goes to prefill chunks, first to running sequences still
//! prefilling, then to waiting sequences admitted first come, first served while blocks last.
//! A preempted sequence frees its blocks and goes back to the front of the queue with its
//! generated tokens, to be recomputed. Cost per plan: O(running + admitted).

use super::blocks::BlockAllocator;
use std::collections::{HashMap, VecDeque};
use wick_proto::{BlockId, SamplingParams, SeqId, Step, StepEntry};

#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    /// Most tokens (decode plus prefill) in one step.
    pub max_batch_tokens: usize,
    /// Most sequences in the running set.
    pub max_running: usize,
    pub block_size: usize,
}

#[derive(Debug)]
struct Seq {
    /// Prompt and generated tokens.
    tokens: Vec<u32>,
    /// Tokens whose K/V are in the cache.
    computed: usize,
    blocks: Vec<BlockId>,
    params: SamplingParams,
}

/// The outcome of planning one step.
#[derive(Debug, Default)]
pub struct Plan {
    pub step: Step,
    /// Sequences preempted while planning (their blocks are free; they wait again).
    pub preempted: Vec<SeqId>,
}

#[derive(Debug)]
pub struct Batcher {
    cfg: BatchConfig,
    alloc: BlockAllocator,
    waiting: VecDeque<SeqId>,
    /// In admission order: the last is the newest.
    running: Vec<SeqId>,
    seqs: HashMap<SeqId, Seq>,
}

impl Batcher {
    pub fn new(cfg: BatchConfig, num_blocks: usize) -> Self {
        Batcher {
            cfg,
            alloc: BlockAllocator::new(num_blocks),
            waiting: VecDeque::new(),
            running: Vec::new(),
            seqs: HashMap::new(),
        }
    }

    /// Queues a new sequence behind the others.
    pub fn add(&mut self, id: SeqId, prompt: Vec<u32>, params: SamplingParams) {
        self.seqs.insert(
            id,
            Seq {
                tokens: prompt,
                computed: 0,
                blocks: Vec::new(),
                params,
            },
        );
        self.waiting.push_back(id);
    }

    /// Forgets a sequence (finished or cancelled) and frees its blocks.
    pub fn remove(&mut self, id: SeqId) {
        if let Some(seq) = self.seqs.remove(&id) {
            self.alloc.release(seq.blocks);
        }
        self.running.retain(|&s| s != id);
        self.waiting.retain(|&s| s != id);
    }

    /// Appends a sampled token to a sequence.
    pub fn push_token(&mut self, id: SeqId, token: u32) {
        if let Some(seq) = self.seqs.get_mut(&id) {
            seq.tokens.push(token);
        }
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn running(&self) -> usize {
        self.running.len()
    }

    pub fn free_blocks(&self) -> usize {
        self.alloc.free()
    }

    pub fn total_blocks(&self) -> usize {
        self.alloc.total()
    }

    pub fn kv_usage(&self) -> f64 {
        self.alloc.usage()
    }

    pub fn contains(&self, id: SeqId) -> bool {
        self.seqs.contains_key(&id)
    }

    fn blocks_needed(&self, positions: usize) -> usize {
        positions.div_ceil(self.cfg.block_size)
    }

    /// Grows `id`'s block table to cover `positions`; false (nothing taken) if blocks are short.
    fn grow(&mut self, id: SeqId, positions: usize) -> bool {
        let have = self.seqs[&id].blocks.len();
        let need = self.blocks_needed(positions).saturating_sub(have);
        if need == 0 {
            return true;
        }
        match self.alloc.allocate(need) {
            Some(new) => {
                self.seqs
                    .get_mut(&id)
                    .expect("seq exists")
                    .blocks
                    .extend(new);
                true
            }
            None => false,
        }
    }

    /// Frees a running sequence's blocks and puts it at the front of the queue.
    fn preempt(&mut self, id: SeqId) {
        self.running.retain(|&s| s != id);
        let seq = self.seqs.get_mut(&id).expect("seq exists");
        seq.computed = 0;
        let blocks = std::mem::take(&mut seq.blocks);
        self.alloc.release(blocks);
        self.waiting.push_front(id);
    }

    fn entry(&self, id: SeqId, len: usize) -> StepEntry {
        let seq = &self.seqs[&id];
        let end = seq.computed + len;
        StepEntry {
            seq: id,
            tokens: seq.tokens[seq.computed..end].to_vec(),
            start_pos: seq.computed,
            blocks: seq.blocks.clone(),
            sample: (end == seq.tokens.len()).then(|| seq.params.clone()),
        }
    }

    /// Chooses the next step's work and reserves its blocks.
    pub fn plan(&mut self) -> Plan {
        let mut plan = Plan::default();
        let mut budget = self.cfg.max_batch_tokens;

        // 1. Decodes: one token each, oldest first; preempt the newest when blocks run out.
        let mut i = 0;
        while i < self.running.len() {
            let id = self.running[i];
            let seq = &self.seqs[&id];
            if seq.tokens.len() - seq.computed != 1 {
                i += 1;
                continue;
            }
            let positions = seq.computed + 1;
            let mut scheduled = true;
            while !self.grow(id, positions) {
                let victim = *self.running.last().expect("id is running");
                self.preempt(victim);
                plan.preempted.push(victim);
                if victim == id {
                    scheduled = false;
                    break;
                }
            }
            if scheduled {
                plan.step.entries.push(self.entry(id, 1));
                budget = budget.saturating_sub(1);
                i += 1;
            }
        }

        // 2. Prefill chunks of running sequences, then admission of waiting ones.
        for id in self.running.clone() {
            let seq = &self.seqs[&id];
            let remaining = seq.tokens.len() - seq.computed;
            // One token left is a decode, already planned above.
            if remaining <= 1 || budget == 0 {
                continue;
            }
            if let Some(len) = self.reserve_chunk(id, remaining.min(budget)) {
                plan.step.entries.push(self.entry(id, len));
                budget -= len;
            }
        }
        // No admission in a step that had to preempt: blocks are short.
        while budget > 0 && self.running.len() < self.cfg.max_running && plan.preempted.is_empty() {
            let Some(&id) = self.waiting.front() else {
                break;
            };
            let remaining = self.seqs[&id].tokens.len();
            let Some(len) = self.reserve_chunk(id, remaining.min(budget)) else {
                break;
            };
            self.waiting.pop_front();
            self.running.push(id);
            plan.step.entries.push(self.entry(id, len));
            budget -= len;
        }
        plan
    }

    /// Reserves blocks for up to `want` more tokens of `id`, shrinking the chunk to the blocks
    /// that can be had; `None` when not even one token fits.
    fn reserve_chunk(&mut self, id: SeqId, want: usize) -> Option<usize> {
        let seq = &self.seqs[&id];
        let held = seq.blocks.len() * self.cfg.block_size - seq.computed;
        let can = held + self.alloc.free() * self.cfg.block_size;
        let len = want.min(can);
        if len == 0 {
            return None;
        }
        let positions = seq.computed + len;
        self.grow(id, positions).then_some(len)
    }

    /// Records that a planned step ran: its tokens are now in the cache.
    pub fn commit(&mut self, step: &Step) {
        for e in &step.entries {
            if let Some(seq) = self.seqs.get_mut(&e.seq) {
                seq.computed = e.start_pos + e.tokens.len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batcher(max_batch_tokens: usize, blocks: usize) -> Batcher {
        Batcher::new(
            BatchConfig {
                max_batch_tokens,
                max_running: 8,
                block_size: 4,
            },
            blocks,
        )
    }

    fn lens(plan: &Plan) -> Vec<(SeqId, usize, bool)> {
        plan.step
            .entries
            .iter()
            .map(|e| (e.seq, e.tokens.len(), e.sample.is_some()))
            .collect()
    }

    /// Plans, commits and gives each sampling entry a token.
    fn run(b: &mut Batcher) -> Plan {
        let plan = b.plan();
        b.commit(&plan.step);
        for e in &plan.step.entries {
            if e.sample.is_some() {
                b.push_token(e.seq, 7);
            }
        }
        plan
    }

    #[test]
    fn long_prompts_are_chunked_under_the_budget_and_decodes_go_first() {
        let mut b = batcher(8, 100);
        b.add(1, vec![0; 3], SamplingParams::default());
        assert_eq!(lens(&run(&mut b)), vec![(1, 3, true)]);
        b.add(2, vec![0; 20], SamplingParams::default());
        // Sequence 1 decodes, sequence 2 gets the other 7 tokens of the budget.
        assert_eq!(lens(&run(&mut b)), vec![(1, 1, true), (2, 7, false)]);
        assert_eq!(lens(&run(&mut b)), vec![(1, 1, true), (2, 7, false)]);
        assert_eq!(lens(&run(&mut b)), vec![(1, 1, true), (2, 6, true)]);
        assert_eq!(lens(&run(&mut b)), vec![(1, 1, true), (2, 1, true)]);
    }

    #[test]
    fn admission_is_fcfs_and_waits_for_blocks() {
        // 4 blocks of 4 tokens: sequence 1 takes 3, sequence 2 (8 tokens) must wait, and 3
        // (2 tokens) may not jump the queue.
        let mut b = batcher(64, 4);
        b.add(1, vec![0; 12], SamplingParams::default());
        b.add(2, vec![0; 8], SamplingParams::default());
        b.add(3, vec![0; 2], SamplingParams::default());
        let plan = run(&mut b);
        assert_eq!(lens(&plan), vec![(1, 12, true), (2, 4, false)]);
        assert_eq!(b.waiting(), 1);
        b.remove(1);
        let plan = run(&mut b);
        assert_eq!(lens(&plan), vec![(2, 4, true), (3, 2, true)]);
    }

    #[test]
    fn a_decode_without_blocks_preempts_the_newest_and_it_recomputes() {
        let mut b = batcher(64, 2);
        b.add(1, vec![0; 4], SamplingParams::default());
        b.add(2, vec![0; 4], SamplingParams::default());
        assert_eq!(lens(&run(&mut b)), vec![(1, 4, true), (2, 4, true)]);
        assert_eq!(b.free_blocks(), 0);
        // Both need a second block at position 4; sequence 2 (newest) is preempted.
        let plan = run(&mut b);
        assert_eq!(plan.preempted, vec![2]);
        assert_eq!(lens(&plan), vec![(1, 1, true)]);
        assert_eq!(b.waiting(), 1);
        // When 1 finishes, 2 recomputes its prompt and its generated token, then samples.
        b.remove(1);
        let plan = run(&mut b);
        assert_eq!(lens(&plan), vec![(2, 5, true)]);
        assert_eq!(plan.step.entries[0].start_pos, 0);
    }

    #[test]
    fn removing_sequences_returns_every_block() {
        let mut b = batcher(64, 10);
        for id in 0..3 {
            b.add(id, vec![0; 9], SamplingParams::default());
        }
        run(&mut b);
        run(&mut b);
        assert!(b.free_blocks() < 10);
        for id in 0..3 {
            b.remove(id);
        }
        assert_eq!(b.free_blocks(), 10);
        assert_eq!((b.running(), b.waiting()), (0, 0));
    }

    #[test]
    fn running_set_is_capped() {
        let mut b = Batcher::new(
            BatchConfig {
                max_batch_tokens: 64,
                max_running: 2,
                block_size: 4,
            },
            100,
        );
        for id in 0..3 {
            b.add(id, vec![0; 2], SamplingParams::default());
        }
        assert_eq!(run(&mut b).step.entries.len(), 2);
        assert_eq!(b.waiting(), 1);
    }
}
