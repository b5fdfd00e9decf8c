//! The batcher's unit tests: chunking, admission, preemption, prefix caching, speculation
//! proposals and priorities (admission takes the most urgent waiting sequence, preemption
//! evicts the least urgent running one whatever their arrival order, and an urgent sequence
//! with no slot or blocks to start preempts less urgent ones, never equals), on its public and
//! private API.

use super::super::step_time::MIN_CHUNK;
use super::*;

/// The tests' configuration: 4-token blocks, 64 tokens a step, 8 running, no caching.
fn config() -> BatchConfig {
    BatchConfig {
        max_batch_tokens: 64,
        max_running: 8,
        block_size: 4,
        prefix_caching: false,
        max_context: 1 << 20,
        speculate: None,
        target_step: None,
    }
}

fn batcher(max_batch_tokens: usize, blocks: usize) -> Batcher {
    let cfg = BatchConfig {
        max_batch_tokens,
        ..config()
    };
    Batcher::new(cfg, blocks)
}

fn caching_batcher(blocks: usize) -> Batcher {
    let cfg = BatchConfig {
        prefix_caching: true,
        ..config()
    };
    Batcher::new(cfg, blocks)
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

/// A batcher with a 40 ms step target whose model has been taught that a step costs 4 ms plus
/// 1 ms a token (and nothing per context token).
fn timed_batcher(max_batch_tokens: usize) -> Batcher {
    let cfg = BatchConfig {
        max_batch_tokens,
        max_running: 64,
        target_step: Some(Duration::from_millis(40)),
        ..config()
    };
    let mut b = Batcher::new(cfg, 1000);
    let clock = b.clock().expect("a target");
    for tokens in [1, 2, 8, 32, 64] {
        let ms = 4 + tokens as u64;
        let work = Work {
            tokens,
            pairs: 0,
            samples: 0,
        };
        clock.anchor(work, Duration::from_millis(ms));
    }
    b
}

#[test]
fn with_a_time_target_prefill_chunks_fit_beside_the_decodes() {
    let mut b = timed_batcher(256);
    // Alone, a prompt takes the token budget: no stream waits on the step.
    b.add(1, vec![0; 300], SamplingParams::default(), 0);
    assert_eq!(lens(&run(&mut b)), vec![(1, 256, false)]);
    assert_eq!(lens(&run(&mut b)), vec![(1, 44, true)]);
    // Beside its decode, the next prompt gets 40 - 4 - 1 = 35 tokens a step.
    b.add(2, vec![0; 100], SamplingParams::default(), 0);
    assert_eq!(lens(&run(&mut b)), vec![(1, 1, true), (2, 35, false)]);
    // The next waits while nothing is left: only a step's first chunk may pass the target.
    b.add(3, vec![0; 100], SamplingParams::default(), 0);
    assert_eq!(lens(&run(&mut b)), vec![(1, 1, true), (2, 35, false)]);
    assert_eq!(b.waiting(), 1);
    // When 2 is gone, 3 takes its room and 4 waits.
    b.remove(2);
    b.add(4, vec![0; 100], SamplingParams::default(), 0);
    let plan = run(&mut b);
    assert_eq!(lens(&plan), vec![(1, 1, true), (3, 35, false)]);
}

#[test]
fn with_a_time_target_a_full_batch_still_moves_a_prompt() {
    let mut b = timed_batcher(256);
    for id in 1..=4 {
        b.add(id, vec![0; 2], SamplingParams::default(), 0);
    }
    run(&mut b);
    // 40 decodes would take 44 ms alone: the prompt still gets its 16 tokens.
    for id in 5..=40 {
        b.add(id, vec![0; 2], SamplingParams::default(), 0);
    }
    // One prompt a step passes the target beside the decodes: all are in within 36 steps.
    for _ in 0..36 {
        run(&mut b);
    }
    assert_eq!((b.waiting(), b.running()), (0, 40));
    b.add(99, vec![0; 100], SamplingParams::default(), 0);
    let plan = run(&mut b);
    assert_eq!(plan.step.entries.len(), 41);
    assert_eq!(lens(&plan).last(), Some(&(99, MIN_CHUNK, false)));
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
            max_running: 2,
            ..config()
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
    let mut b = caching_batcher(3);
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

fn seqs(plan: &Plan) -> Vec<SeqId> {
    plan.step.entries.iter().map(|e| e.seq).collect()
}

#[test]
fn an_urgent_request_is_admitted_before_ten_that_came_first() {
    let mut b = Batcher::new(
        BatchConfig {
            max_running: 1,
            ..config()
        },
        100,
    );
    for id in 0..10 {
        b.add(id, vec![1; 3], SamplingParams::default(), 5);
    }
    assert_eq!(seqs(&run(&mut b)), [0]);
    // Equals wait for the running one.
    b.add(12, vec![1; 3], SamplingParams::default(), 5);
    assert_eq!(seqs(&run(&mut b)), [0]);
    b.add(10, vec![1; 3], SamplingParams::default(), -1);
    // A request of the default priority goes behind the urgent one, ahead of the others.
    b.add(11, vec![1; 3], SamplingParams::default(), 0);
    // The urgent one takes the only slot at once; the one it preempted goes back first among
    // its priority, behind the default one.
    let plan = run(&mut b);
    assert_eq!((plan.preempted.clone(), seqs(&plan)), (vec![0], vec![10]));
    let mut order = vec![10];
    for _ in 0..3 {
        b.remove(*order.last().unwrap());
        order.push(seqs(&run(&mut b))[0]);
    }
    assert_eq!(order, [10, 11, 0, 1]);
}

#[test]
fn preemption_evicts_the_least_urgent_not_the_newest() {
    // Two blocks of four tokens: both sequences need a second block at position 4.
    let mut b = batcher(64, 2);
    b.add(1, vec![1; 4], SamplingParams::default(), 3);
    b.add(2, vec![1; 4], SamplingParams::default(), 0);
    assert_eq!(seqs(&run(&mut b)), [2, 1], "the urgent one runs first");
    let plan = run(&mut b);
    assert_eq!(plan.preempted, [1], "the older but less urgent one goes");
    assert_eq!(seqs(&plan), [2]);
}

#[test]
fn an_urgent_prompt_without_blocks_preempts_a_less_urgent_sequence() {
    // Three blocks: sequence 1 holds two; the urgent one needs two for its 8 tokens.
    let mut b = batcher(64, 3);
    b.add(1, vec![1; 6], SamplingParams::default(), 0);
    run(&mut b);
    b.add(2, vec![1; 8], SamplingParams::default(), -5);
    let plan = run(&mut b);
    assert_eq!(plan.preempted, [1]);
    // The urgent prompt runs whole; the preempted one restarts on the block left.
    assert_eq!(plan.step.entries[0].seq, 2);
    assert_eq!(plan.step.entries[0].tokens.len(), 8);
}
