//! The scheduler task against a scripted worker: admission (prefill, then one decode per step),
//! cancellation by a dropped receiver, preemption by recompute, drain (`abort_all`), queue
//! deadlines and backend failures. The worker runs a step only when the test lets it (one
//! permit per step), and its token at position `p` is a function of `p` alone, as a real model's
//! greedy output is of the tokens before it, so a recomputed sequence must come out the same.
//! It verifies speculative entries as the real engine does (its token at each position, up to
//! the first that differs from the proposal), so speculation must not change the output.

use super::batcher::BatchConfig;
use super::*;
use crate::validation::tests::validator;
use crate::validation::{GenerationInput, PromptInput};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Semaphore;
use wick_proto::Generation;

/// What the fake worker saw.
#[derive(Default)]
struct Log {
    /// Each step's entries as `(seq, start_pos, tokens, samples)`.
    steps: Vec<Vec<(SeqId, usize, usize, bool)>>,
    released: Vec<SeqId>,
}

#[derive(Clone)]
struct FakeWorker {
    log: Arc<Mutex<Log>>,
    /// One permit per step the test allows.
    gate: Arc<Semaphore>,
    fail: bool,
}

impl FakeWorker {
    fn new(fail: bool) -> Self {
        FakeWorker {
            log: Arc::default(),
            gate: Arc::new(Semaphore::new(0)),
            fail,
        }
    }

    fn steps(&self) -> Vec<Vec<(SeqId, usize, usize, bool)>> {
        self.log.lock().unwrap().steps.clone()
    }

    fn released(&self) -> Vec<SeqId> {
        self.log.lock().unwrap().released.clone()
    }
}

/// The token after position `p`: `a`, `b` or `c` (ids 3 to 5), never end-of-sequence.
fn token_at(p: usize) -> u32 {
    3 + (p % 3) as u32
}

impl Worker for FakeWorker {
    fn step(&self, step: Step) -> impl Future<Output = Result<StepOutput, BackendError>> + Send {
        let this = self.clone();
        async move {
            this.gate.acquire().await.expect("open").forget();
            let seen = step
                .entries
                .iter()
                .map(|e| (e.seq, e.start_pos, e.tokens.len(), e.sample.is_some()))
                .collect();
            this.log.lock().unwrap().steps.push(seen);
            if this.fail {
                return Err(BackendError::WorkerGone);
            }
            let mut generations = Vec::new();
            for e in step.entries.iter().filter(|e| e.sample.is_some()) {
                let first = e.start_pos + e.tokens.len() - e.draft;
                let proposals = &e.tokens[e.tokens.len() - e.draft..];
                for r in 0..=e.draft {
                    let token = token_at(first + r);
                    generations.push(Generation {
                        seq: e.seq,
                        token,
                        logprob: -0.5,
                        top_logprobs: Vec::new(),
                        constraint_error: None,
                        mask_us: 0,
                    });
                    if proposals.get(r) != Some(&token) {
                        break;
                    }
                }
            }
            Ok(StepOutput {
                generations,
                forward_us: 100,
                draft_us: 0,
                draft_catch_up_us: 0,
                draft_catch_up_rows: 0,
                not_proposed: Vec::new(),
            })
        }
    }

    async fn constrain(&self, _: SeqId, _: Constraint) -> Result<(), BackendError> {
        Ok(())
    }

    fn release(&self, seq: SeqId) -> impl Future<Output = Result<(), BackendError>> + Send {
        self.log.lock().unwrap().released.push(seq);
        async { Ok(()) }
    }
}

fn start(worker: &FakeWorker, num_blocks: usize) -> Scheduler {
    start_with(worker, num_blocks, None)
}

fn config() -> BatchConfig {
    BatchConfig {
        max_batch_tokens: 64,
        max_running: 8,
        block_size: 2,
        prefix_caching: false,
        max_context: 1 << 20,
        speculate: None,
        target_step: None,
    }
}

fn start_with(
    worker: &FakeWorker,
    num_blocks: usize,
    speculate: Option<speculate::SpecConfig>,
) -> Scheduler {
    start_config(
        worker,
        num_blocks,
        BatchConfig {
            speculate,
            ..config()
        },
    )
}

fn start_config(worker: &FakeWorker, num_blocks: usize, cfg: BatchConfig) -> Scheduler {
    Scheduler::start(
        worker.clone(),
        validator().tokenizer().clone(),
        cfg,
        num_blocks,
    )
}

/// "a b c" (with BOS: 4 tokens), `max_tokens` to generate.
async fn submit(
    s: &Scheduler,
    max_tokens: u64,
    deadline: Option<Instant>,
) -> mpsc::Receiver<Event> {
    let g = GenerationInput {
        max_tokens: Some(max_tokens),
        ..Default::default()
    };
    let request = validator()
        .validate(&PromptInput::text("prompt", "a b c"), g)
        .unwrap();
    let sub = Submission {
        request,
        request_id: "test".into(),
        account: None,
        span: tracing::Span::none(),
        arrived: Instant::now(),
        deadline,
        queue_permit: None,
    };
    s.submit(sub).await.unwrap()
}

async fn next(rx: &mut mpsc::Receiver<Event>) -> Event {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("an event within 10 s")
        .expect("the channel open")
}

/// Events until the request's choice 0 finishes or fails.
async fn run_to_end(rx: &mut mpsc::Receiver<Event>) -> (Vec<u32>, Event) {
    let mut tokens = Vec::new();
    loop {
        match next(rx).await {
            Event::Token { token, .. } => tokens.push(token),
            end => return (tokens, end),
        }
    }
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn a_request_is_prefilled_once_then_decoded_one_token_per_step() {
    let worker = FakeWorker::new(false);
    let s = start(&worker, 16);
    let mut rx = submit(&s, 3, None).await;
    worker.gate.add_permits(100);
    let (tokens, end) = run_to_end(&mut rx).await;
    assert_eq!(tokens, vec![token_at(4), token_at(5), token_at(6)]);
    let Event::Finished {
        reason,
        prompt_tokens,
        completion_tokens,
        ..
    } = end
    else {
        panic!("{end:?}")
    };
    assert_eq!(
        (reason, prompt_tokens, completion_tokens),
        (FinishReason::Length, 4, 3)
    );
    assert_eq!(
        worker.steps(),
        vec![
            vec![(1, 0, 4, true)],
            vec![(1, 4, 1, true)],
            vec![(1, 5, 1, true)]
        ]
    );
    until("the release", || worker.released() == vec![1]).await;
}

#[tokio::test]
async fn a_time_target_first_times_scratch_steps_then_frees_them() {
    let worker = FakeWorker::new(false);
    let cfg = BatchConfig {
        target_step: Some(Duration::from_millis(50)),
        ..config()
    };
    // 400 blocks of 2 tokens: the long-context steps run at 400 tokens (half the cache).
    let s = start_config(&worker, 400, cfg);
    worker.gate.add_permits(100);
    let mut rx = submit(&s, 2, None).await;
    let (tokens, _) = run_to_end(&mut rx).await;
    assert_eq!(tokens, vec![token_at(4), token_at(5)]);
    let timing: Vec<_> = (step_time::calibration(400).into_iter())
        .map(|(start, len, sample)| vec![(0, start, len, sample)])
        .collect();
    let steps = worker.steps();
    assert_eq!(steps[..timing.len()], timing[..]);
    assert_eq!(
        steps[timing.len()..],
        [vec![(1, 0, 4, true)], vec![(1, 4, 1, true)]]
    );
    until("both releases", || worker.released() == vec![0, 1]).await;
}

#[tokio::test]
async fn the_scheduler_serves_after_its_start_up_steps() {
    let wait = |s: &Scheduler, ms: u64| {
        let s = s.clone();
        async move { tokio::time::timeout(Duration::from_millis(ms), s.serving()).await }
    };
    // Without a time target: at once, before any step.
    let worker = FakeWorker::new(false);
    assert!(wait(&start(&worker, 16), 5000).await.is_ok());
    // With one: not while the timing steps wait on the worker, then once they have run.
    let worker = FakeWorker::new(false);
    let cfg = BatchConfig {
        target_step: Some(Duration::from_millis(50)),
        ..config()
    };
    let s = start_config(&worker, 400, cfg);
    assert!(wait(&s, 200).await.is_err());
    worker.gate.add_permits(step_time::calibration(400).len());
    assert!(wait(&s, 5000).await.is_ok());
    assert_eq!(worker.steps().len(), step_time::calibration(400).len());
}

#[tokio::test]
async fn speculation_gives_the_same_tokens_in_fewer_steps() {
    let worker = FakeWorker::new(false);
    let cfg = speculate::SpecConfig {
        proposer: speculate::Proposer::Ngram,
        max_draft: 4,
        ngram_max: 2,
        ngram_min: 1,
        step_budget: 32,
    };
    let s = start_with(&worker, 16, Some(cfg));
    let mut rx = submit(&s, 8, None).await;
    worker.gate.add_permits(100);
    let (tokens, end) = run_to_end(&mut rx).await;
    let plain: Vec<u32> = (4..12).map(token_at).collect();
    assert_eq!(tokens, plain);
    let Event::Finished {
        reason,
        completion_tokens,
        ..
    } = end
    else {
        panic!("{end:?}")
    };
    assert_eq!((reason, completion_tokens), (FinishReason::Length, 8));
    let steps = worker.steps();
    // Some decodes verified proposals (more than one token), and fewer steps ran than tokens.
    assert!(steps
        .iter()
        .flatten()
        .any(|&(_, start, len, _)| start >= 4 && len > 1));
    assert!(steps.len() < 1 + 8, "{steps:?}");
    until("the release", || worker.released() == vec![1]).await;
}

#[tokio::test]
async fn a_dropped_receiver_cancels_the_sequence_and_releases_it() {
    let worker = FakeWorker::new(false);
    let s = start(&worker, 16);
    let mut rx = submit(&s, 8, None).await;
    worker.gate.add_permits(1);
    assert!(matches!(next(&mut rx).await, Event::Token { .. }));
    drop(rx);
    worker.gate.add_permits(100);
    until("the release", || worker.released() == vec![1]).await;
    // At most the step already under way when the receiver went: never all 8.
    assert!(worker.steps().len() <= 2, "{:?}", worker.steps());
}

#[tokio::test]
async fn a_preempted_sequence_is_recomputed_and_its_output_is_whole() {
    let worker = FakeWorker::new(false);
    // 4 + 6 positions need 5 blocks of 2 each; 7 blocks cannot hold both sequences.
    let s = start(&worker, 7);
    let mut first = submit(&s, 6, None).await;
    let mut second = submit(&s, 6, None).await;
    worker.gate.add_permits(1000);
    let (a, end_a) = run_to_end(&mut first).await;
    let (b, end_b) = run_to_end(&mut second).await;
    let want: Vec<u32> = (4..10).map(token_at).collect();
    assert_eq!((a, b), (want.clone(), want));
    for end in [end_a, end_b] {
        assert!(
            matches!(
                end,
                Event::Finished {
                    reason: FinishReason::Length,
                    completion_tokens: 6,
                    ..
                }
            ),
            "{end:?}"
        );
    }
    // Some sequence started over from position 0 after it had run: a preemption.
    let starts = worker
        .steps()
        .iter()
        .flatten()
        .filter(|(_, start, _, _)| *start == 0)
        .count();
    assert!(starts > 2, "no recompute in {:?}", worker.steps());
}

#[tokio::test]
async fn abort_all_ends_every_live_request_as_shutting_down() {
    let worker = FakeWorker::new(false);
    let s = start(&worker, 16);
    let mut first = submit(&s, 4, None).await;
    let mut second = submit(&s, 4, None).await;
    s.abort_all().await;
    worker.gate.add_permits(100);
    for rx in [&mut first, &mut second] {
        let (_, end) = run_to_end(rx).await;
        assert!(
            matches!(
                end,
                Event::Error {
                    failure: Failure::ShuttingDown,
                    ..
                }
            ),
            "{end:?}"
        );
    }
    until("both releases", || worker.released().len() == 2).await;
}

#[tokio::test]
async fn a_request_past_its_queue_deadline_times_out_unrun() {
    let worker = FakeWorker::new(false);
    let s = start(&worker, 16);
    let mut rx = submit(&s, 4, Some(Instant::now())).await;
    let end = next(&mut rx).await;
    assert!(
        matches!(
            end,
            Event::Error {
                failure: Failure::QueueTimeout,
                ..
            }
        ),
        "{end:?}"
    );
    assert!(worker.steps().is_empty());
}

#[tokio::test]
async fn a_failed_step_fails_its_sequences_with_the_backends_message() {
    let worker = FakeWorker::new(true);
    let s = start(&worker, 16);
    let mut rx = submit(&s, 4, None).await;
    worker.gate.add_permits(10);
    let Event::Error {
        failure, message, ..
    } = next(&mut rx).await
    else {
        panic!("an error event")
    };
    assert_eq!(failure, Failure::Backend);
    assert_eq!(message, BackendError::WorkerGone.to_string());
    until("the release", || worker.released() == vec![1]).await;
}
