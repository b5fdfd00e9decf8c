//! The batcher's unit tests: chunking, admission, preemption, prefix caching and speculation
//! proposals, on its public and private API.

use super::*;

fn batcher(max_batch_tokens: usize, blocks: usize) -> Batcher {
    Batcher::new(
        BatchConfig {
            max_batch_tokens,
            max_running: 8,
            block_size: 4,
            prefix_caching: false,
            max_context: 1 << 20,
            speculate: None,
        },
        blocks,
    )
}

fn caching_batcher(blocks: usize) -> Batcher {
    Batcher::new(
        BatchConfig {
            max_batch_tokens: 64,
            max_running: 8,
            block_size: 4,
            prefix_caching: true,
            max_context: 1 << 20,
            speculate: None,
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
    b.add(1, vec![0; 3], SamplingParams::default(), 0);
    assert_eq!(lens(&run(&mut b)), vec![(1, 3, true)]);
    b.add(2, vec![0; 20], SamplingParams::default(), 0);
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
    b.add(1, vec![0; 12], SamplingParams::default(), 0);
    b.add(2, vec![0; 8], SamplingParams::default(), 0);
    b.add(3, vec![0; 2], SamplingParams::default(), 0);
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
    b.add(1, vec![0; 4], SamplingParams::default(), 0);
    b.add(2, vec![0; 4], SamplingParams::default(), 0);
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
        b.add(id, vec![0; 9], SamplingParams::default(), 0);
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
            prefix_caching: false,
            max_context: 1 << 20,
            speculate: None,
        },
        100,
    );
    for id in 0..3 {
        b.add(id, vec![0; 2], SamplingParams::default(), 0);
    }
    assert_eq!(run(&mut b).step.entries.len(), 2);
    assert_eq!(b.waiting(), 1);
}

fn starts(plan: &Plan) -> Vec<(SeqId, usize, usize)> {
    plan.step
        .entries
        .iter()
        .map(|e| (e.seq, e.start_pos, e.tokens.len()))
        .collect()
}

#[test]
fn a_shared_prefix_is_prefilled_once() {
    let mut b = caching_batcher(100);
    let prompt: Vec<u32> = (0..10).collect();
    b.add(1, prompt.clone(), SamplingParams::default(), 0);
    run(&mut b);
    b.remove(1);
    // Same first 8 tokens (two full blocks), different tail: prefill starts at 8.
    let mut other = prompt[..8].to_vec();
    other.extend([99, 98, 97]);
    b.add(2, other, SamplingParams::default(), 0);
    let plan = run(&mut b);
    assert_eq!(starts(&plan), vec![(2, 8, 3)]);
    let admitted = Admitted {
        seq: 2,
        looked_up: 11,
        cached: 8,
    };
    assert_eq!(plan.admitted, vec![admitted]);
    assert_eq!(b.cached_tokens(2), 8);
}

#[test]
fn a_fully_cached_prompt_still_computes_its_last_token() {
    let mut b = caching_batcher(100);
    let prompt: Vec<u32> = (0..8).collect();
    b.add(1, prompt.clone(), SamplingParams::default(), 0);
    run(&mut b);
    b.remove(1);
    b.add(2, prompt, SamplingParams::default(), 0);
    let plan = run(&mut b);
    assert_eq!(starts(&plan), vec![(2, 7, 1)]);
    assert!(plan.step.entries[0].sample.is_some());
}

#[test]
fn generated_tokens_become_cacheable_for_the_next_turn() {
    let mut b = caching_batcher(100);
    b.add(1, vec![1, 2, 3], SamplingParams::default(), 0);
    // Prefill, then decodes until 8 tokens are computed (two full blocks).
    for _ in 0..6 {
        run(&mut b);
    }
    b.remove(1);
    // The next turn re-sends the conversation (3 prompt + 5 generated tokens of 7) and more.
    let mut next = vec![1, 2, 3, 7, 7, 7, 7, 7];
    next.extend([4, 4]);
    b.add(2, next, SamplingParams::default(), 0);
    assert_eq!(starts(&run(&mut b)), vec![(2, 8, 2)]);
}

#[test]
fn a_preempted_sequence_resumes_from_its_cached_blocks() {
    let mut b = Batcher::new(
        BatchConfig {
            max_batch_tokens: 64,
            max_running: 8,
            block_size: 4,
            prefix_caching: true,
            max_context: 1 << 20,
            speculate: None,
        },
        3,
    );
    b.add(1, vec![1; 4], SamplingParams::default(), 0);
    b.add(2, vec![2; 8], SamplingParams::default(), 0);
    assert_eq!(starts(&run(&mut b)), vec![(1, 0, 4), (2, 0, 8)]);
    // Sequence 1 needs a block for position 4: sequence 2 (newest) is preempted; its blocks
    // stay cached, and the one sequence 1 takes is its tail (tails are evicted first).
    let plan = run(&mut b);
    assert_eq!(plan.preempted, vec![2]);
    b.remove(1);
    // 2 comes back: its first block is still cached; it recomputes the rest and samples.
    let plan = run(&mut b);
    assert_eq!(starts(&plan), vec![(2, 4, 5)]);
}
