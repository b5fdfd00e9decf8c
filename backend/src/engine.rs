//! The synchronous engine: a model, its KV cache and the per-sequence token history that sampling
//! penalties need. [`Engine::step`] checks a [`Step`], packs it, runs the forward pass and samples.
//! The worker thread owns one `Engine`; tests and benchmarks may drive one directly. The history
//! is what the entries ran, by position, plus an admitting entry's `context` (the tokens of the
//! cached blocks it starts on, which it does not run).
//!
//! Constrained sequences: a [`Constraint`] registered with [`Engine::constrain`] gives a token
//! mask before each of its sequence's samplings (computed for all constrained entries of a step
//! in parallel, after the forward pass, each timed into `Generation::mask_us`) and is advanced
//! with the sampled token. Sequences without one pay nothing.
//!
//! Entries that sample one row without a grammar are sampled across the compute team (each is
//! a function of its row, parameters, history and position only); the others in turn after them.
//!
//! Speculative entries (`StepEntry::draft > 0`): the logits of the last `draft + 1` rows are
//! sampled in turn, each exactly as a single decode step at that position would sample it (the
//! history up to it, its grammar mask after the accepted proposals, the (seed, position)
//! random stream), until a sample differs from the next proposal. The engine's kernels give
//! every row the logits it gets alone, so the tokens are those of decoding without speculation.
//!
//! Proposing entries (`StepEntry::propose > 0`, with a draft model, [`Drafter`]): the draft model
//! proposes that many tokens first, and they are verified as speculative entries' are.
//!
//! Invariants: a step is checked whole before anything runs, so a bad entry (unknown block, short
//! block table, token outside the vocabulary, context overflow) fails the step with a typed error
//! and leaves the cache untouched.

use crate::draft::{CatchUp, Drafter};
use crate::error::BackendError;
use crate::grammar::{Constraint, TokenMask};
use crate::kv::KvCache;
use crate::model::{Model, PackedBatch};
use crate::sampling;
use std::collections::{HashMap, HashSet};
use std::time::Instant;
use wick_proto::{Generation, SamplingParams, SeqId, Step, StepOutput};

pub struct Engine {
    model: Model,
    kv: KvCache,
    /// Tokens seen so far by each sequence, by position (for penalties). Dropped on release.
    history: HashMap<SeqId, Vec<u32>>,
    /// Grammar state of constrained sequences. Dropped on release.
    constraints: HashMap<SeqId, Constraint>,
    /// The draft model, with draft-model speculation.
    drafter: Option<Drafter>,
}

impl Engine {
    pub fn new(model: Model, kv: KvCache) -> Self {
        Engine {
            model,
            kv,
            history: HashMap::new(),
            constraints: HashMap::new(),
            drafter: None,
        }
    }

    /// The engine with a draft model for the entries that ask for proposals.
    pub fn with_drafter(mut self, drafter: Drafter) -> Self {
        self.drafter = Some(drafter);
        self
    }

    pub fn drafter(&self) -> Option<&Drafter> {
        self.drafter.as_ref()
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn kv(&self) -> &KvCache {
        &self.kv
    }

    /// Forgets a finished sequence's history and grammar state.
    pub fn release(&mut self, seq: SeqId) {
        self.history.remove(&seq);
        self.constraints.remove(&seq);
    }

    /// Constrains every later sampling of `seq` to what `constraint` allows.
    pub fn constrain(&mut self, seq: SeqId, constraint: Constraint) {
        self.constraints.insert(seq, constraint);
    }

    /// The masks of the constrained sequences that sample in `step`, computed in parallel.
    fn masks(&mut self, step: &Step) -> HashMap<SeqId, (Result<TokenMask, String>, u64)> {
        if self.constraints.is_empty() {
            return HashMap::new();
        }
        let sampling: HashSet<SeqId> = step
            .entries
            .iter()
            .filter(|e| e.sample.is_some())
            .map(|e| e.seq)
            .collect();
        type Masked = Option<(Result<TokenMask, String>, u64)>;
        let mut work: Vec<(SeqId, &mut _, Masked)> = self
            .constraints
            .iter_mut()
            .filter(|(seq, _)| sampling.contains(seq))
            .map(|(&seq, c)| (seq, c, None))
            .collect();
        crate::team::for_each_chunk_mut(&mut work, 1, |_, one| {
            let (_, c, masked) = &mut one[0];
            let t = Instant::now();
            let mask = c.mask().map_err(|e| e.to_string());
            *masked = Some((mask, t.elapsed().as_micros() as u64));
        });
        work.into_iter()
            .filter_map(|(seq, _, masked)| Some((seq, masked?)))
            .collect()
    }

    fn check(&self, step: &Step) -> Result<(), BackendError> {
        let (bs, nb) = (self.kv.block_size(), self.kv.num_blocks());
        let vocab = self.model.cfg().vocab_size;
        let max_context = self.model.cfg().max_context;
        let mut seen = HashSet::new();
        for e in &step.entries {
            let seq = e.seq;
            if !seen.insert(seq) {
                return Err(BackendError::DuplicateSequence { seq });
            }
            if e.tokens.is_empty() {
                return Err(BackendError::EmptyEntry { seq });
            }
            if e.draft > 0 && (e.draft >= e.tokens.len() || e.sample.is_none()) {
                return Err(BackendError::BadDraft {
                    seq,
                    draft: e.draft,
                    tokens: e.tokens.len(),
                });
            }
            if !e.context.is_empty() && e.context.len() != e.start_pos {
                return Err(BackendError::BadContext {
                    seq,
                    context: e.context.len(),
                    start_pos: e.start_pos,
                });
            }
            if e.propose > 0 && (e.draft > 0 || e.sample.is_none() || self.drafter.is_none()) {
                return Err(BackendError::BadPropose {
                    seq,
                    propose: e.propose,
                    drafter: self.drafter.is_some(),
                });
            }
            // Proposals take positions (and cache slots) after the entry's tokens.
            let end = e.start_pos + e.tokens.len() + e.propose;
            if end > max_context {
                return Err(BackendError::ContextOverflow {
                    seq,
                    end,
                    max_context,
                });
            }
            if e.blocks.len() * bs < end {
                return Err(BackendError::BlockTableTooShort {
                    seq,
                    blocks: e.blocks.len(),
                    covered: e.blocks.len() * bs,
                    needed: end,
                });
            }
            if let Some(&block) = e.blocks.iter().find(|&&b| b as usize >= nb) {
                return Err(BackendError::BlockOutOfRange {
                    seq,
                    block,
                    num_blocks: nb,
                });
            }
            let all = e.context.iter().chain(&e.tokens);
            if let Some(&token) = all.into_iter().find(|&&t| t as usize >= vocab) {
                return Err(BackendError::TokenOutOfRange {
                    seq,
                    token,
                    vocab_size: vocab,
                });
            }
        }
        Ok(())
    }

    fn pack(&self, step: &Step) -> PackedBatch {
        let mut batch = PackedBatch::new(self.kv.block_size());
        for e in &step.entries {
            let samples = if e.sample.is_some() { e.draft + 1 } else { 0 };
            batch.push(&e.tokens, e.start_pos, &e.blocks, samples);
        }
        batch
    }

    /// Runs one step: every entry's tokens go through the model, the sampling entries get a token.
    pub fn step(&mut self, step: &Step) -> Result<StepOutput, BackendError> {
        self.check(step)?;
        for e in &step.entries {
            let h = self.history.entry(e.seq).or_default();
            if !e.context.is_empty() {
                h.clone_from(&e.context);
            }
            h.truncate(e.start_pos);
            h.extend(&e.tokens);
        }
        if step.entries.is_empty() {
            return Ok(StepOutput::default());
        }
        let t0 = Instant::now();
        let (drafted, catch_up) = self.draft(step)?;
        // Entries still asking (the rewritten step clears what it gave proposals to).
        let not_proposed: Vec<SeqId> = (drafted.as_ref().unwrap_or(step).entries.iter())
            .filter(|e| e.propose > 0)
            .map(|e| e.seq)
            .collect();
        let draft_us = t0.elapsed().as_micros() as u64;
        let step = drafted.as_ref().unwrap_or(step);
        let batch = self.pack(step);
        let t0 = Instant::now();
        let logits = self.model.forward(&batch, &mut self.kv)?;
        let logits: Vec<Vec<f32>> = logits.to_vec2()?;
        let forward_us = t0.elapsed().as_micros() as u64;
        let mut masks = self.masks(step);
        let mut plain = self.sample_plain(step, &logits);
        let mut rows = logits.iter();
        let mut generations = Vec::with_capacity(logits.len());
        for (e, plain) in step.entries.iter().zip(&mut plain) {
            let Some(params) = &e.sample else {
                continue;
            };
            if let Some(g) = plain.take() {
                rows.next();
                generations.push(g);
                continue;
            }
            let entry_rows: Vec<&Vec<f32>> = rows.by_ref().take(e.draft + 1).collect();
            // Position of the first sample; the proposals follow the token before it.
            let first = e.start_pos + e.tokens.len() - e.draft;
            let proposals = &e.tokens[e.tokens.len() - e.draft..];
            let mut mask = masks.remove(&e.seq);
            for (r, row) in entry_rows.into_iter().enumerate() {
                let pos = first + r;
                let g = self.sample_one(e.seq, row, params, pos, mask.take());
                let go_on = g.constraint_error.is_none() && proposals.get(r) == Some(&g.token);
                generations.push(g);
                if !go_on {
                    break;
                }
                // The next row samples after an accepted proposal: its own mask.
                if let Some(c) = self.constraints.get_mut(&e.seq) {
                    let t = Instant::now();
                    let m = c.mask().map_err(|e| e.to_string());
                    mask = Some((m, t.elapsed().as_micros() as u64));
                }
            }
        }
        Ok(StepOutput {
            generations,
            forward_us,
            draft_us,
            draft_catch_up_us: catch_up.micros,
            draft_catch_up_rows: catch_up.rows,
            not_proposed,
        })
    }

    /// With a draft model: runs it over the step (see [`Drafter::propose`]) and returns the
    /// step with each proposing entry's proposals appended as `draft` tokens (and in the
    /// history), `None` when the step is left as it is; and the draft's first pass.
    fn draft(&mut self, step: &Step) -> Result<(Option<Step>, CatchUp), BackendError> {
        let Some(drafter) = &mut self.drafter else {
            return Ok((None, CatchUp::default()));
        };
        let (proposals, catch_up) = drafter.propose(step, &self.history)?;
        if proposals.iter().all(Vec::is_empty) {
            return Ok((None, catch_up));
        }
        let mut step = step.clone();
        for (e, p) in step.entries.iter_mut().zip(proposals) {
            if p.is_empty() {
                continue;
            }
            self.history.get_mut(&e.seq).expect("seq ran").extend(&p);
            e.tokens.extend(&p);
            e.draft = p.len();
            e.propose = 0;
        }
        Ok((Some(step), catch_up))
    }

    /// The generations of the entries that sample one row without a grammar (no proposals to
    /// verify), by entry, sampled across the compute team: each depends on its own row,
    /// parameters and history only, so the order they run in changes nothing. `None` for the
    /// other entries, which [`Engine::step`] samples in turn.
    fn sample_plain(&self, step: &Step, logits: &[Vec<f32>]) -> Vec<Option<Generation>> {
        let mut jobs = Vec::new();
        let mut row = 0;
        for (i, e) in step.entries.iter().enumerate() {
            let Some(params) = &e.sample else {
                continue;
            };
            if e.draft == 0 && !self.constraints.contains_key(&e.seq) {
                jobs.push((i, row, params));
            }
            row += e.draft + 1;
        }
        let history = &self.history;
        let mut done: Vec<Option<Generation>> = jobs.iter().map(|_| None).collect();
        crate::team::for_each_chunk_mut(&mut done, 1, |j, slot| {
            let (i, row, params) = jobs[j];
            let e = &step.entries[i];
            let pos = e.start_pos + e.tokens.len();
            let h = history_before(history, e.seq, pos);
            slot[0] = Some(sampling::sample(e.seq, &logits[row], params, h, pos, None));
        });
        let mut out: Vec<Option<Generation>> = step.entries.iter().map(|_| None).collect();
        for (&(i, _, _), g) in jobs.iter().zip(done) {
            out[i] = g;
        }
        out
    }

    /// Samples `seq`'s token at `pos` from `row`, with the history before `pos` and the mask
    /// (`None` for an unconstrained sequence), and advances its grammar with it.
    fn sample_one(
        &mut self,
        seq: SeqId,
        row: &[f32],
        params: &SamplingParams,
        pos: usize,
        mask: Option<(Result<TokenMask, String>, u64)>,
    ) -> Generation {
        let history = history_before(&self.history, seq, pos);
        // A failed mask leaves the token meaningless: the router ends the sequence with the
        // error.
        let (mask, error, mask_us) = match &mask {
            None => (None, None, 0),
            Some((Ok(mask), us)) => (Some(mask.as_slice()), None, *us),
            Some((Err(err), us)) => (None, Some(err.clone()), *us),
        };
        let mut g = sampling::sample(seq, row, params, history, pos, mask);
        g.constraint_error = error;
        g.mask_us = mask_us;
        if g.constraint_error.is_none() {
            if let Some(c) = self.constraints.get_mut(&seq) {
                if let Err(err) = c.advance(g.token) {
                    g.constraint_error = Some(err.to_string());
                }
            }
        }
        g
    }

    /// Runs the tokens of one step and returns the logits of every sampling entry, without
    /// sampling (for agreement and invariance checks).
    pub fn logits(&mut self, step: &Step) -> Result<Vec<Vec<f32>>, BackendError> {
        self.check(step)?;
        if step.entries.is_empty() {
            return Ok(Vec::new());
        }
        let batch = self.pack(step);
        Ok(self.model.forward(&batch, &mut self.kv)?.to_vec2()?)
    }
}

/// The tokens `seq` ran before position `pos` (what sampling penalties see).
fn history_before(history: &HashMap<SeqId, Vec<u32>>, seq: SeqId, pos: usize) -> &[u32] {
    let h = history.get(&seq).map(Vec::as_slice).unwrap_or(&[]);
    &h[..pos.min(h.len())]
}
