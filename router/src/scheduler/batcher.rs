//! Continuous-batching policy: which sequences run in the next step, with how many tokens, and
//! which blocks they hold. A plain synchronous struct; the scheduler task calls it.
//!
//! Sequences have a priority (lower is more urgent, as vLLM's `priority`; 0 by default): the
//! waiting queue and the running set are kept in (priority, arrival) order, so admission takes
//! the most urgent first and preemption the least urgent, newest first; a waiting sequence more
//! urgent than running ones that has no slot or blocks to start preempts them.
//!
//! Each step: every running sequence that is decoding (and not held) gets its one token
//! (allocating a block when it crosses a block boundary, preempting the last running sequence
//! by recompute when none is free), plus, with speculation, the proposals of its
//! [`Speculator`] when their blocks are free (the backend keeps the accepted ones, and
//! [`Batcher::accept`] counts them in); the rest of the token budget goes to prefill chunks,
//! first to running sequences still prefilling, then to waiting sequences admitted in queue
//! order while blocks last. With time-budgeted steps ([`StepClock`]) and decodes in the step,
//! each chunk is cut to what keeps the step's predicted time within the target. A preempted
//! sequence frees its blocks and goes back to the front of its priority in the queue with its
//! generated tokens, to be recomputed. With prefix caching, an admitted sequence first takes the
//! cached blocks its tokens start with and prefills only the rest; every block that fills up is
//! registered in the cache (prompt and generated tokens alike); the entry that admits a sequence
//! carries the tokens before its first computed one (the backend's penalties read them). Cost
//! per plan: O(running + admitted * prompt blocks).

use super::blocks::{chain_hash, BlockPool};
use super::speculate::{Proposer, SpecConfig, Speculator};
use super::step_time::{StepClock, Work, MIN_CHUNK};
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;
use wick_proto::{BlockId, SamplingParams, SeqId, Step, StepEntry};

#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    /// Most tokens (decode plus prefill) in one step.
    pub max_batch_tokens: usize,
    /// Most sequences in the running set.
    pub max_running: usize,
    pub block_size: usize,
    /// Reuse cached KV blocks of shared prefixes.
    pub prefix_caching: bool,
    /// Longest sequence the model takes (proposals stop short of it).
    pub max_context: usize,
    /// Speculative decoding (n-gram lookup or the backend's draft model), when on.
    pub speculate: Option<SpecConfig>,
    /// Time-budgeted steps (`--target-inter-token-ms`): the most a step with decodes in it
    /// should take; prefill chunks shrink to fit ([`StepClock`]).
    pub target_step: Option<Duration>,
}

#[derive(Debug)]
struct Seq {
    /// Prompt and generated tokens.
    tokens: Vec<u32>,
    /// Tokens whose K/V are in the cache.
    computed: usize,
    blocks: Vec<BlockId>,
    /// Chain hashes of the leading full blocks registered in the cache.
    hashes: Vec<u64>,
    params: SamplingParams,
    /// Set at first admission: prompt tokens found in the prefix cache.
    cached_tokens: Option<usize>,
    /// Proposals in the step being run, not yet the sequence's.
    draft: Vec<u32>,
    /// Proposals the draft model makes in the step being run.
    propose: usize,
    /// Lower is more urgent (as vLLM's `priority`); 0 by default.
    priority: i32,
}

impl Seq {
    /// Whether its next step is a decode: one token left to compute, the last sampled.
    fn decoding(&self) -> bool {
        self.tokens.len() - self.computed == 1
    }
}

/// The outcome of planning one step.
#[derive(Debug, Default)]
pub struct Plan {
    pub step: Step,
    /// Sequences preempted while planning (their blocks are free; they wait again).
    pub preempted: Vec<SeqId>,
    /// Sequences admitted for the first time.
    pub admitted: Vec<Admitted>,
}

/// A sequence's first admission and what the prefix cache gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    pub seq: SeqId,
    /// Prompt tokens looked up in the prefix cache.
    pub looked_up: usize,
    /// Of those, the tokens found cached.
    pub cached: usize,
}

#[derive(Debug)]
pub struct Batcher {
    cfg: BatchConfig,
    pool: BlockPool,
    waiting: VecDeque<SeqId>,
    /// In (priority, admission) order: the last is the least urgent, newest.
    running: Vec<SeqId>,
    seqs: HashMap<SeqId, Seq>,
    /// Running sequences that sit out the next steps' decodes (see `mask_budget`).
    held: HashSet<SeqId>,
    speculator: Option<Speculator>,
    /// The step-time model, with a target.
    clock: Option<StepClock>,
}

impl Batcher {
    pub fn new(cfg: BatchConfig, num_blocks: usize) -> Self {
        Batcher {
            cfg,
            pool: BlockPool::new(num_blocks, cfg.block_size, cfg.prefix_caching),
            waiting: VecDeque::new(),
            running: Vec::new(),
            seqs: HashMap::new(),
            held: HashSet::new(),
            speculator: cfg.speculate.map(Speculator::new),
            clock: cfg.target_step.map(StepClock::new),
        }
    }

    /// Queues a new sequence behind the others of its priority and ahead of those of a higher
    /// value.
    pub fn add(&mut self, id: SeqId, prompt: Vec<u32>, params: SamplingParams, priority: i32) {
        self.seqs.insert(
            id,
            Seq {
                tokens: prompt,
                computed: 0,
                blocks: Vec::new(),
                hashes: Vec::new(),
                params,
                cached_tokens: None,
                draft: Vec::new(),
                propose: 0,
                priority,
            },
        );
        let at = self.slot(&self.waiting, priority, false);
        self.waiting.insert(at, id);
    }

    /// Where a sequence of `priority` goes in `order` (the waiting queue or the running set,
    /// both kept in priority order): behind those of its priority, or ahead of them when
    /// `first`.
    fn slot<'a>(
        &self,
        order: impl IntoIterator<Item = &'a SeqId>,
        priority: i32,
        first: bool,
    ) -> usize {
        (order.into_iter())
            .take_while(|s| {
                let p = self.seqs[*s].priority;
                p < priority || (p == priority && !first)
            })
            .count()
    }

    /// Forgets a sequence (finished or cancelled) and frees its blocks.
    pub fn remove(&mut self, id: SeqId) {
        if let Some(seq) = self.seqs.remove(&id) {
            self.pool.release(&seq.blocks);
        }
        if let Some(s) = &mut self.speculator {
            s.forget(id);
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

    /// Blocks free or evictable.
    pub fn free_blocks(&self) -> usize {
        self.pool.available()
    }

    pub fn prefix_caching(&self) -> bool {
        self.cfg.prefix_caching
    }

    pub fn kv_usage(&self) -> f64 {
        self.pool.usage()
    }

    /// Prompt tokens `id` found in the prefix cache at its first admission (0 before it).
    pub fn cached_tokens(&self, id: SeqId) -> usize {
        self.seqs
            .get(&id)
            .and_then(|s| s.cached_tokens)
            .unwrap_or(0)
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
        match self.pool.allocate(need) {
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
        seq.hashes.clear();
        seq.draft.clear();
        seq.propose = 0;
        let blocks = std::mem::take(&mut seq.blocks);
        self.pool.release(&blocks);
        // First of its priority: it was admitted before every waiting one of it.
        let priority = seq.priority;
        let at = self.slot(&self.waiting, priority, true);
        self.waiting.insert(at, id);
    }

    fn entry(&self, id: SeqId, len: usize) -> StepEntry {
        let seq = &self.seqs[&id];
        let end = seq.computed + len;
        let mut tokens = seq.tokens[seq.computed..end].to_vec();
        tokens.extend(&seq.draft);
        StepEntry {
            seq: id,
            tokens,
            start_pos: seq.computed,
            blocks: seq.blocks.clone(),
            sample: (end == seq.tokens.len()).then(|| seq.params.clone()),
            draft: seq.draft.len(),
            propose: seq.propose,
            context: Vec::new(),
        }
    }

    /// A decoding sequence's proposals for this step (none without speculation), at most
    /// `room`, when their blocks can be had; kept in `draft` (or counted in `propose`) for the
    /// entry.
    fn speculate(&mut self, id: SeqId, room: usize) {
        let Some(spec) = &mut self.speculator else {
            return;
        };
        let seq = &self.seqs[&id];
        let room = room.min(self.cfg.max_context.saturating_sub(seq.tokens.len()));
        let (draft, propose) = match spec.proposer() {
            Proposer::Ngram => (spec.propose(id, &seq.tokens, room), 0),
            Proposer::DraftModel => (Vec::new(), spec.propose_count(id, room)),
        };
        let k = draft.len() + propose;
        if k > 0 && self.grow(id, seq.computed + 1 + k) {
            let seq = self.seqs.get_mut(&id).expect("seq exists");
            (seq.draft, seq.propose) = (draft, propose);
        }
    }

    /// A decode step of `rows` tokens ran in `micros`, its draft model's `proposals` in
    /// `draft_micros` (the speculation's cost model).
    pub fn observe_step(&mut self, rows: usize, micros: u64, proposals: usize, draft_micros: u64) {
        if let Some(s) = &mut self.speculator {
            s.observe_step(rows, micros);
            s.observe_draft(proposals, draft_micros);
        }
    }

    /// A step that computed `work` took `took`, from sending it to its samples (the step-time
    /// model's data).
    pub fn observe_work(&mut self, work: Work, took: Duration) {
        if let Some(c) = &mut self.clock {
            c.observe(work, took);
        }
    }

    /// The step-time model, with time-budgeted steps.
    pub fn clock(&mut self) -> Option<&mut StepClock> {
        self.clock.as_mut()
    }

    /// Blocks for `positions` positions of a scratch sequence outside the batch (the step-time
    /// model's start-up steps), if free; give them back with [`Batcher::free_scratch`].
    pub fn scratch(&mut self, positions: usize) -> Option<Vec<BlockId>> {
        self.pool.allocate(self.blocks_needed(positions))
    }

    /// The context of the step-time model's long-context start-up steps: 2,048 tokens where
    /// the model and half the free blocks allow.
    pub fn calibration_context(&self) -> usize {
        let half = self.pool.available() * self.cfg.block_size / 2;
        2048.min(self.cfg.max_context).min(half)
    }

    pub fn free_scratch(&mut self, blocks: &[BlockId]) {
        self.pool.release(blocks);
    }

    /// The prefill tokens, of `want`, a chunk at `start` may take in a step already holding
    /// `planned`: with time-budgeted steps and decodes in the step, what keeps it within the
    /// target (at least [`MIN_CHUNK`] for the step's `first` chunk); otherwise all.
    fn allowance(
        &self,
        planned: Work,
        decodes: bool,
        first: bool,
        start: usize,
        want: usize,
    ) -> usize {
        let floor = if first { MIN_CHUNK } else { 0 };
        match &self.clock {
            Some(c) if decodes => c.allowance(planned, start, want, floor),
            _ => want,
        }
    }

    /// After a step: `accepted` of the `proposed` proposals `id` got were kept (their K/V are
    /// in the cache and the tokens already pushed), and `next` is the token generated after
    /// them; full blocks among them are registered. A draft model still catching up proposes
    /// none of those planned.
    pub fn accept(&mut self, id: SeqId, proposed: usize, accepted: usize, next: Option<u32>) {
        let Some(seq) = self.seqs.get_mut(&id) else {
            return;
        };
        let planned = std::mem::take(&mut seq.draft).len() + std::mem::take(&mut seq.propose);
        if planned == 0 {
            return;
        }
        seq.computed += accepted.min(proposed).min(planned);
        self.register(id);
        if let Some(s) = (proposed > 0).then_some(()).and(self.speculator.as_mut()) {
            s.observe(id, proposed, accepted, next);
        }
    }

    /// Sequences whose decodes wait out the next plans (until set again).
    pub fn hold(&mut self, held: HashSet<SeqId>) {
        self.held = held;
    }

    /// Chooses the next step's work and reserves its blocks.
    pub fn plan(&mut self) -> Plan {
        let mut plan = Plan::default();
        let mut budget = self.cfg.max_batch_tokens;
        if let Some(s) = &mut self.speculator {
            let decoding = (self.running.iter())
                .filter(|id| self.seqs[id].decoding())
                .count();
            s.begin_step(decoding);
        }

        // 0. An urgent waiting sequence takes the place of less urgent running ones.
        self.make_room_for_urgent(&mut plan);

        // 1. Decodes: one token each, in running order; preempt the last when blocks run out.
        let mut blocks_short = false;
        let mut i = 0;
        while i < self.running.len() {
            let id = self.running[i];
            let seq = &self.seqs[&id];
            if !seq.decoding() || self.held.contains(&id) {
                i += 1;
                continue;
            }
            let positions = seq.computed + 1;
            let mut scheduled = true;
            while !self.grow(id, positions) {
                let victim = *self.running.last().expect("id is running");
                self.preempt(victim);
                plan.preempted.push(victim);
                blocks_short = true;
                if victim == id {
                    scheduled = false;
                    break;
                }
            }
            if scheduled {
                self.speculate(id, budget.saturating_sub(1));
                let entry = self.entry(id, 1);
                budget = budget.saturating_sub(entry.tokens.len());
                plan.step.entries.push(entry);
                i += 1;
            }
        }

        // 2. Prefill chunks of running sequences, then admission of waiting ones; with
        // decodes in the step and a time target, each chunk as long as the target allows.
        let decodes = !plan.step.entries.is_empty();
        let mut planned = Work::of(&plan.step.entries);
        let mut first = true;
        for id in self.running.clone() {
            let seq = &self.seqs[&id];
            let (start, remaining) = (seq.computed, seq.tokens.len() - seq.computed);
            // One token left is a decode, already planned above.
            if remaining <= 1 || budget == 0 {
                continue;
            }
            let want = self.allowance(planned, decodes, first, start, remaining.min(budget));
            if let Some(len) = self.reserve_chunk(id, want) {
                (planned, first) = (planned.plus(Work::chunk(start, len)), false);
                plan.step.entries.push(self.entry(id, len));
                budget -= len;
            }
        }
        // No admission in a step whose decodes had to preempt: blocks are short.
        while budget > 0 && self.running.len() < self.cfg.max_running && !blocks_short {
            let Some(&id) = self.waiting.front() else {
                break;
            };
            let cached = self.take_cached_prefix(id);
            let seq = &self.seqs[&id];
            let (start, remaining) = (seq.computed, seq.tokens.len() - seq.computed);
            let want = self.allowance(planned, decodes, first, start, remaining.min(budget));
            let Some(len) = self.reserve_chunk(id, want) else {
                self.drop_cached_prefix(id);
                break;
            };
            (planned, first) = (planned.plus(Work::chunk(start, len)), false);
            self.waiting.pop_front();
            // Behind every running sequence of its priority: the last is the one preemption takes.
            let at = self.slot(&self.running, self.seqs[&id].priority, false);
            self.running.insert(at, id);
            let seq = self.seqs.get_mut(&id).expect("seq exists");
            if seq.cached_tokens.is_none() {
                seq.cached_tokens = Some(cached);
                plan.admitted.push(Admitted {
                    seq: id,
                    looked_up: seq.tokens.len(),
                    cached,
                });
            }
            // The backend has not seen the cached tokens: they come with the entry.
            let mut entry = self.entry(id, len);
            entry.context = self.seqs[&id].tokens[..entry.start_pos].to_vec();
            plan.step.entries.push(entry);
            budget -= len;
        }
        plan
    }

    /// Preempts the least urgent running sequences while the most urgent waiting one is more
    /// urgent than they are and could not be admitted otherwise: every running slot taken, or
    /// too few free blocks for its first chunk (cached blocks not counted: it may preempt one
    /// more than needed).
    fn make_room_for_urgent(&mut self, plan: &mut Plan) {
        while let (Some(&w), Some(&r)) = (self.waiting.front(), self.running.last()) {
            let (ws, rs) = (&self.seqs[&w], &self.seqs[&r]);
            if ws.priority >= rs.priority {
                break;
            }
            let chunk = (ws.tokens.len() - ws.computed).min(self.cfg.max_batch_tokens);
            let full = self.running.len() >= self.cfg.max_running;
            if !full && self.blocks_needed(chunk) <= self.pool.available() {
                break;
            }
            self.preempt(r);
            plan.preempted.push(r);
        }
    }

    /// Starts a waiting sequence on the cached blocks its tokens begin with; returns the tokens
    /// it need not compute. At least the last token is always computed (its logits are needed);
    /// when every block is cached, that token's K/V are rewritten, bit for bit, into the shared
    /// last block.
    fn take_cached_prefix(&mut self, id: SeqId) -> usize {
        let seq = self.seqs.get_mut(&id).expect("seq exists");
        let (blocks, hashes) = self.pool.lookup(&seq.tokens);
        let cached = (blocks.len() * self.cfg.block_size).min(seq.tokens.len() - 1);
        seq.blocks = blocks;
        seq.hashes = hashes;
        seq.computed = cached;
        cached
    }

    /// Undoes [`Batcher::take_cached_prefix`] for a sequence that could not be admitted.
    fn drop_cached_prefix(&mut self, id: SeqId) {
        let seq = self.seqs.get_mut(&id).expect("seq exists");
        let blocks = std::mem::take(&mut seq.blocks);
        seq.hashes.clear();
        seq.computed = 0;
        self.pool.release(&blocks);
    }

    /// Reserves blocks for up to `want` more tokens of `id`, shrinking the chunk to the blocks
    /// that can be had; `None` when not even one token fits.
    fn reserve_chunk(&mut self, id: SeqId, want: usize) -> Option<usize> {
        let seq = &self.seqs[&id];
        let held = seq.blocks.len() * self.cfg.block_size - seq.computed;
        let can = held + self.pool.available() * self.cfg.block_size;
        let len = want.min(can);
        if len == 0 {
            return None;
        }
        let positions = seq.computed + len;
        self.grow(id, positions).then_some(len)
    }

    /// Records that a planned step ran: its tokens are now in the cache (proposals only once
    /// accepted), and blocks it filled are registered for reuse.
    pub fn commit(&mut self, step: &Step) {
        for e in &step.entries {
            let Some(seq) = self.seqs.get_mut(&e.seq) else {
                continue;
            };
            seq.computed = e.start_pos + e.tokens.len() - e.draft;
            self.register(e.seq);
        }
    }

    /// Registers `id`'s blocks that its computed tokens filled.
    fn register(&mut self, id: SeqId) {
        let bs = self.cfg.block_size;
        if let Some(seq) = self.seqs.get_mut(&id) {
            while seq.hashes.len() < seq.computed / bs {
                let i = seq.hashes.len();
                let parent = if i == 0 { 0 } else { seq.hashes[i - 1] };
                let tokens = &seq.tokens[i * bs..(i + 1) * bs];
                let hash = chain_hash(parent, tokens);
                self.pool.register(seq.blocks[i], parent, hash, tokens);
                seq.hashes.push(hash);
            }
        }
    }
}

#[cfg(test)]
#[path = "batcher_tests.rs"]
mod tests;
