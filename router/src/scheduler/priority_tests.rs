//! The batcher's priorities: admission takes the most urgent waiting sequence (lowest
//! `priority`), preemption under KV pressure evicts the least urgent running one, whatever
//! their arrival order, and an urgent sequence with no slot or blocks to start preempts less
//! urgent ones (never equals).

use super::batcher::{BatchConfig, Batcher, Plan};
use wick_proto::{SamplingParams, SeqId};

fn batcher(max_running: usize, blocks: usize) -> Batcher {
    let cfg = BatchConfig {
        max_batch_tokens: 64,
        max_running,
        block_size: 4,
        prefix_caching: false,
        max_context: 1 << 20,
        speculate: None,
    };
    Batcher::new(cfg, blocks)
}

/// Plans, commits and gives each sampling entry a token.
fn run(b: &mut Batcher) -> Plan {
    let plan = b.plan();
    b.commit(&plan.step);
    for e in plan.step.entries.iter().filter(|e| e.sample.is_some()) {
        b.push_token(e.seq, 7);
    }
    plan
}

fn seqs(plan: &Plan) -> Vec<SeqId> {
    plan.step.entries.iter().map(|e| e.seq).collect()
}

#[test]
fn an_urgent_request_is_admitted_before_ten_that_came_first() {
    let mut b = batcher(1, 100);
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
    let mut b = batcher(8, 2);
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
    let mut b = batcher(8, 3);
    b.add(1, vec![1; 6], SamplingParams::default(), 0);
    run(&mut b);
    b.add(2, vec![1; 8], SamplingParams::default(), -5);
    let plan = run(&mut b);
    assert_eq!(plan.preempted, [1]);
    // The urgent prompt runs whole; the preempted one restarts on the block left.
    assert_eq!(plan.step.entries[0].seq, 2);
    assert_eq!(plan.step.entries[0].tokens.len(), 8);
}
