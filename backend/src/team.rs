//! The compute team: the engine's thread and `threads - 1` helper threads that run the parallel
//! parts of a step (the matmuls' weight groups, attention's tasks, quantization and element-wise
//! chunks, grammar masks) as numbered tasks.
//!
//! Why not rayon's fork-join: a decode step is some 150 parallel operations of 10-50 us each. A
//! rayon worker with nothing to steal yields and then sleeps, and waking it goes through the
//! kernel: on two cores the second one idled about a fifth of a SmolLM2 decode step. A helper here
//! spins (on one atomic load) for [`SPIN`] after its last job, which covers the gaps inside a
//! step, and parks after that, so an idle server uses no CPU. Each thread gets a contiguous
//! share of a job's tasks (neighbouring weight rows, as rayon's halving gave it, which the
//! hardware prefetchers follow) and takes the others' last tasks when it is done with its own;
//! claiming a task is one uncontended compare-and-swap on the thread's own cache line.
//!
//! Which thread runs a task never changes a result: tasks write disjoint outputs (one chunk each
//! through [`for_each_chunk_mut`], or scattered parts of a buffer through [`SharedMut`]), each
//! computed the same way wherever it runs. [`for_each`] and [`for_each_chunk_mut`] use the team
//! installed on the calling thread ([`install`]), and rayon's pool elsewhere (tests and
//! benchmarks that call the kernels directly), with the same tasks.

use rayon::prelude::*;
use std::any::Any;
use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

/// How long a helper spins without a job before it parks.
const SPIN: Duration = Duration::from_millis(2);
/// How long of that it spins without yielding its core.
const SPIN_HOT: Duration = Duration::from_micros(100);

/// Runs `f(i)` for every `i` in `0..n`, on the calling thread's team if it has one.
pub fn for_each<F: Fn(usize) + Sync>(n: usize, f: F) {
    match n {
        0 => {}
        1 => f(0),
        _ => match current() {
            Some(team) if !team.busy.get() => team.run(n, &f),
            // A task that runs parallel work of its own runs it itself.
            Some(_) => (0..n).for_each(f),
            None if IS_HELPER.get() => (0..n).for_each(f),
            None => (0..n).into_par_iter().for_each(&f),
        },
    }
}

/// Runs `f(i, chunk)` for each `chunk_len`-element chunk of `data` (the last may be shorter),
/// as [`for_each`] does.
pub fn for_each_chunk_mut<T: Send, F: Fn(usize, &mut [T]) + Sync>(
    data: &mut [T],
    chunk_len: usize,
    f: F,
) {
    let len = data.len();
    let shared = SharedMut::new(data);
    for_each(len.div_ceil(chunk_len), |i| {
        let start = i * chunk_len;
        let end = (start + chunk_len).min(len);
        // SAFETY: chunk `i` is `start..end` of `data`, which is borrowed mutably for the whole
        // call; each index runs once, so no two live slices overlap.
        let chunk = unsafe { shared.slice(start, end - start) };
        f(i, chunk);
    });
}

/// Runs `body` with a team of `threads` (the calling thread and `threads - 1` helpers)
/// installed on the calling thread; the helpers stop when it returns. Fails when a helper
/// thread cannot be started.
pub fn install<R>(threads: usize, body: impl FnOnce() -> R) -> std::io::Result<R> {
    let team = Rc::new(Team::new(threads.max(1) - 1)?);
    let previous = TEAM.with(|t| t.replace(Some(team)));
    let result = catch_unwind(AssertUnwindSafe(body));
    TEAM.with(|t| t.replace(previous));
    match result {
        Ok(r) => Ok(r),
        Err(panic) => resume_unwind(panic),
    }
}

/// How many threads [`for_each`] runs its tasks on from this thread: its team's, else rayon's
/// pool's (1 inside a team's task, which runs its parallel work itself).
pub fn threads() -> usize {
    match current() {
        Some(team) if !team.busy.get() => team.helpers.len() + 1,
        Some(_) => 1,
        None if IS_HELPER.get() => 1,
        None => rayon::current_num_threads(),
    }
}

thread_local! {
    static TEAM: RefCell<Option<Rc<Team>>> = const { RefCell::new(None) };
    /// This thread is a team's helper (parallel work inside its tasks runs in place).
    static IS_HELPER: Cell<bool> = const { Cell::new(false) };
}

fn current() -> Option<Rc<Team>> {
    TEAM.with(|t| t.borrow().clone())
}

struct Team {
    shared: Arc<Shared>,
    helpers: Vec<(Thread, JoinHandle<()>)>,
    /// A job is running (a task that calls [`for_each`] runs its work itself).
    busy: Cell<bool>,
}

/// The current job's task function, its lifetime erased: valid while [`Team::run`] runs.
#[derive(Clone, Copy)]
struct Job(*const (dyn Fn(usize) + Sync + 'static));

struct Shared {
    /// Bumped once per job (after `job` is written) and once to stop.
    epoch: AtomicUsize,
    job: Mutex<Option<Job>>,
    /// Each thread's tasks (the caller's first): contiguous ranges, so that a thread streams
    /// through neighbouring weights as rayon's halving would give it.
    ranges: Vec<Range>,
    /// Helpers still in the current job.
    pending: AtomicUsize,
    stop: AtomicBool,
    /// One flag per helper: parked, or about to park (see [`helper`]).
    parked: Vec<AtomicBool>,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

// SAFETY: `Job` points at a `Sync` closure that outlives every use (`Team::run` returns only
// after every helper is done with the job).
unsafe impl Send for Job {}

impl Team {
    fn new(helpers: usize) -> std::io::Result<Team> {
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            job: Mutex::new(None),
            ranges: (0..=helpers).map(|_| Range::default()).collect(),
            pending: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            parked: (0..helpers).map(|_| AtomicBool::new(false)).collect(),
            panic: Mutex::new(None),
        });
        let mut team = Team {
            shared: shared.clone(),
            helpers: Vec::new(),
            busy: Cell::new(false),
        };
        for i in 0..helpers {
            let shared = shared.clone();
            // On failure, dropping `team` stops the helpers already started.
            let handle = thread::Builder::new()
                .name(format!("wick-team-{}", i + 1))
                .spawn(move || helper(&shared, i))?;
            team.helpers.push((handle.thread().clone(), handle));
        }
        Ok(team)
    }

    fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        let s = &*self.shared;
        // SAFETY: the lifetime is erased only for the duration of this call: the helpers drop
        // their copy of the pointer before `pending` reaches zero, which this call waits for.
        let f: *const (dyn Fn(usize) + Sync + 'static) = unsafe { std::mem::transmute(f) };
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(Job(f));
        let threads = s.ranges.len();
        for (t, range) in s.ranges.iter().enumerate() {
            range.set(t * n / threads, (t + 1) * n / threads);
        }
        s.pending.store(self.helpers.len(), Ordering::Relaxed);
        self.busy.set(true);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        for ((thread, _), parked) in self.helpers.iter().zip(&s.parked) {
            if parked.load(Ordering::SeqCst) {
                thread.unpark();
            }
        }
        claim(s, Job(f), 0);
        while s.pending.load(Ordering::Acquire) != 0 {
            std::hint::spin_loop();
        }
        self.busy.set(false);
        if let Some(panic) = s.panic.lock().unwrap_or_else(|e| e.into_inner()).take() {
            resume_unwind(panic);
        }
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        let s = &*self.shared;
        s.stop.store(true, Ordering::SeqCst);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        for (thread, handle) in self.helpers.drain(..) {
            thread.unpark();
            let _finished = handle.join();
        }
    }
}

/// Runs thread `me`'s tasks of `job` from the front of its range, then takes the others' from
/// the back of theirs until none is left; a panic is kept for the caller of [`Team::run`] and
/// ends the job's remaining tasks.
fn claim(s: &Shared, job: Job, me: usize) {
    // SAFETY: see `Team::run`: the closure lives until every thread has left the job.
    let f = unsafe { &*job.0 };
    let others = (1..s.ranges.len()).map(|d| &s.ranges[(me + d) % s.ranges.len()]);
    let result = catch_unwind(AssertUnwindSafe(|| {
        while let Some(i) = s.ranges[me].take(false) {
            f(i);
        }
        for range in others {
            while let Some(i) = range.take(true) {
                f(i);
            }
        }
    }));
    if let Err(panic) = result {
        s.ranges.iter().for_each(|r| r.set(0, 0));
        s.panic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(panic);
    }
}

/// A helper's life: wait for the next epoch (spinning, then parked), run its share of the job,
/// report, repeat until stopped.
fn helper(s: &Shared, index: usize) {
    IS_HELPER.set(true);
    let mut seen = 0;
    loop {
        let epoch = wait_for_epoch(s, index, seen);
        seen = epoch;
        if s.stop.load(Ordering::SeqCst) {
            return;
        }
        let job = *s.job.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(job) = job {
            claim(s, job, index + 1);
        }
        s.pending.fetch_sub(1, Ordering::Release);
    }
}

/// Waits until the epoch differs from `seen`: spins for [`SPIN_HOT`], then spins yielding the
/// core to any other runnable thread (the server's own) until [`SPIN`], then parks. A helper
/// marks itself parked before its last look at the epoch, and [`Team::run`] bumps the epoch
/// before it reads the mark, so one of the two always sees the other.
fn wait_for_epoch(s: &Shared, index: usize, seen: usize) -> usize {
    let start = Instant::now();
    let mut spins = 0u32;
    loop {
        let epoch = s.epoch.load(Ordering::Acquire);
        if epoch != seen {
            return epoch;
        }
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(64) {
            let waited = start.elapsed();
            if waited > SPIN {
                break;
            }
            if waited > SPIN_HOT {
                thread::yield_now();
            }
        }
        std::hint::spin_loop();
    }
    s.parked[index].store(true, Ordering::SeqCst);
    loop {
        let epoch = s.epoch.load(Ordering::SeqCst);
        if epoch != seen {
            s.parked[index].store(false, Ordering::SeqCst);
            return epoch;
        }
        thread::park();
    }
}

/// A range of task indices `lo..hi` in one atomic word (its own cache line): its owner takes
/// from the front, others from the back.
#[derive(Default)]
#[repr(align(128))]
struct Range(AtomicU64);

impl Range {
    fn set(&self, lo: usize, hi: usize) {
        self.0
            .store(lo as u64 | ((hi as u64) << 32), Ordering::Relaxed);
    }

    fn take(&self, from_back: bool) -> Option<usize> {
        let mut word = self.0.load(Ordering::Relaxed);
        loop {
            let (lo, hi) = (word & 0xFFFF_FFFF, word >> 32);
            if lo >= hi {
                return None;
            }
            let (next, task) = if from_back {
                (lo | ((hi - 1) << 32), hi - 1)
            } else {
                ((lo + 1) | (hi << 32), lo)
            };
            match self
                .0
                .compare_exchange_weak(word, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Some(task as usize),
                Err(now) => word = now,
            }
        }
    }
}

/// An output buffer shared by a job's tasks, each of which writes elements no other task
/// touches (which ones is the caller's to guarantee, at each [`SharedMut::slice`]).
pub(crate) struct SharedMut<T>(*mut T);
// SAFETY: tasks reach the buffer only through `slice`, whose callers promise disjoint elements.
unsafe impl<T: Send> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// Shares `data` for as long as the borrow lasts (the pointer must not outlive it).
    pub(crate) fn new(data: &mut [T]) -> SharedMut<T> {
        SharedMut(data.as_mut_ptr())
    }

    /// `len` elements from element `start`.
    ///
    /// # Safety
    /// They lie inside the buffer, which is still borrowed, and no other live slice overlaps
    /// them.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice<'a>(&self, start: usize, len: usize) -> &'a mut [T] {
        std::slice::from_raw_parts_mut(self.0.add(start), len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_with_and_without_a_team() {
        let check = || {
            for n in [0usize, 1, 2, 3, 100, 1000] {
                let hits: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
                for_each(n, |i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "{n}");
            }
        };
        check();
        for threads in [1, 2, 4] {
            install(threads, check).unwrap();
        }
    }

    #[test]
    fn chunks_cover_the_slice_once() {
        install(3, || {
            let mut data = vec![0u32; 1001];
            for_each_chunk_mut(&mut data, 10, |i, chunk| {
                assert!(chunk.len() == 10 || (i == 100 && chunk.len() == 1));
                chunk.iter_mut().for_each(|x| *x += i as u32 + 1);
            });
            assert!(data
                .iter()
                .enumerate()
                .all(|(j, &x)| x == j as u32 / 10 + 1));
        })
        .unwrap();
    }

    #[test]
    fn helpers_that_parked_wake_for_the_next_job() {
        install(2, || {
            let total = AtomicU64::new(0);
            for round in 0..3 {
                if round > 0 {
                    thread::sleep(SPIN * 3);
                }
                for_each(64, |i| {
                    total.fetch_add(i as u64, Ordering::Relaxed);
                });
            }
            assert_eq!(total.load(Ordering::Relaxed), 3 * (63 * 64 / 2));
        })
        .unwrap();
    }

    #[test]
    fn nested_work_runs_on_the_task_thread() {
        install(2, || {
            let total = AtomicU64::new(0);
            for_each(8, |_| {
                for_each(8, |j| {
                    total.fetch_add(j as u64, Ordering::Relaxed);
                });
            });
            assert_eq!(total.load(Ordering::Relaxed), 8 * 28);
        })
        .unwrap();
    }

    #[test]
    fn a_panicking_task_reaches_the_caller_and_the_team_goes_on() {
        install(2, || {
            let caught = catch_unwind(AssertUnwindSafe(|| {
                for_each(100, |i| assert!(i != 57, "task 57"));
            }));
            assert!(caught.is_err());
            let total = AtomicU64::new(0);
            for_each(10, |i| {
                total.fetch_add(i as u64, Ordering::Relaxed);
            });
            assert_eq!(total.load(Ordering::Relaxed), 45);
        })
        .unwrap();
    }
}
