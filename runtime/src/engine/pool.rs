//! A session-private worker pool that runs `n` tasks of a borrowed closure without
//! allocating.
//!
//! `run` publishes a pointer to the caller's closure, workers (and the caller) claim task
//! indices from an atomic counter, and `run` returns only after every task finished and
//! every worker has let go of the pointer — so the closure may borrow the caller's stack.
//! Workers spin for [`SPIN_TIME`] between jobs (the ops of one request, and the requests
//! of a busy server, follow each other within microseconds, while waking a parked thread
//! costs tens of microseconds on a VM) and then park on a condition variable. The counter
//! that spinning workers watch and the counters every task updates live on separate cache
//! lines, so claiming and finishing tasks does not keep stealing the line the spinners
//! read. A panic in a task is caught, the job is drained, and the panic is resumed on the
//! caller.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

/// How long an idle worker spins before it parks. A time rather than an iteration count:
/// `pause` takes from ~10 to ~140 cycles depending on the CPU, so a fixed count spun
/// anywhere from 50 µs to 1 ms.
const SPIN_TIME: std::time::Duration = std::time::Duration::from_micros(250);
/// Spin iterations between clock reads.
const SPIN_CHECK: usize = 64;

/// A value alone on its cache line (128 bytes: adjacent-line prefetchers pair lines).
#[repr(align(128))]
struct Padded<T>(T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

type Task<'a> = dyn Fn(usize) + Sync + 'a;

/// The lifetime-erased job a worker executes.
#[derive(Clone, Copy)]
struct Job {
    task: *const Task<'static>,
    tasks: usize,
}

// SAFETY: the pointer is only dereferenced while `Pool::run` keeps the referent alive and
// `Sync` (it is a `&(dyn Fn + Sync)`); see the protocol in `Pool::run`.
unsafe impl Send for Job {}

struct State {
    epoch: u64,
    job: Option<Job>,
    parked: usize,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// Mirrors `State::epoch` so spinning workers can watch it without the lock.
    epoch: Padded<AtomicUsize>,
    next: Padded<AtomicUsize>,
    done: Padded<AtomicUsize>,
    /// Workers between picking up the current job and releasing it.
    active: Padded<AtomicUsize>,
    panicked: AtomicBool,
    payload: Mutex<Option<Box<dyn std::any::Any + Send>>>,
    /// Serializes `run` callers (a pool belongs to one session, but be safe).
    running: Mutex<()>,
    /// Workers that finished starting up.
    ready: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A fixed set of worker threads; the thread calling [`Pool::run`] works too.
pub(crate) struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("threads", &self.threads()).finish()
    }
}

impl Pool {
    /// A pool where `threads` threads (including the caller) execute tasks.
    pub fn new(threads: usize) -> std::io::Result<Pool> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State { epoch: 0, job: None, parked: 0, shutdown: false }),
            wake: Condvar::new(),
            epoch: Padded(AtomicUsize::new(0)),
            next: Padded(AtomicUsize::new(0)),
            done: Padded(AtomicUsize::new(0)),
            active: Padded(AtomicUsize::new(0)),
            panicked: AtomicBool::new(false),
            payload: Mutex::new(None),
            running: Mutex::new(()),
            ready: AtomicUsize::new(0),
        });
        let mut workers = Vec::new();
        workers.try_reserve_exact(threads.saturating_sub(1)).map_err(std::io::Error::other)?;
        let mut pool = Pool { shared, workers };
        for i in 1..threads.max(1) {
            let s = Arc::clone(&pool.shared);
            // On failure `pool` drops here: the workers already started are shut down and
            // joined, so a refused session leaves no thread behind.
            let handle = std::thread::Builder::new().name(format!("graft-worker-{i}")).spawn(move || worker(&s))?;
            pool.workers.push(handle);
        }
        let Pool { shared, workers } = &pool;
        // Thread start-up allocates (name, thread-locals): finish it here, not in `run`.
        while shared.ready.load(Ordering::Acquire) < workers.len() {
            std::thread::yield_now();
        }
        Ok(pool)
    }

    /// Threads that execute tasks, the caller included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `task(0..tasks)` across the pool and returns when all are done.
    pub fn run(&self, tasks: usize, task: &Task<'_>) {
        if tasks == 0 {
            return;
        }
        if self.workers.is_empty() || tasks == 1 {
            (0..tasks).for_each(task);
            return;
        }
        let s = &*self.shared;
        let _serial = lock(&s.running);
        // SAFETY: lifetime erasure only; the pointer is published below and withdrawn before
        // this function returns; workers only call it between incrementing and
        // decrementing `active`, and we wait for `active == 0` after withdrawing it.
        let erased: *const Task<'static> =
            unsafe { std::mem::transmute::<*const Task<'_>, *const Task<'static>>(task) };
        {
            let mut st = lock(&s.state);
            s.next.store(0, Ordering::Relaxed);
            s.done.store(0, Ordering::Relaxed);
            st.job = Some(Job { task: erased, tasks });
            st.epoch += 1;
            s.epoch.store(st.epoch as usize, Ordering::Release);
            if st.parked > 0 {
                s.wake.notify_all();
            }
        }
        claim_tasks(s, task, tasks);
        while s.done.load(Ordering::Acquire) < tasks {
            std::hint::spin_loop();
        }
        lock(&s.state).job = None;
        while s.active.load(Ordering::Acquire) > 0 {
            std::hint::spin_loop();
        }
        if s.panicked.swap(false, Ordering::AcqRel) {
            let payload = lock(&s.payload).take();
            resume_unwind(payload.unwrap_or_else(|| Box::new("graft worker panicked")));
        }
    }
}

/// Claims and runs tasks until none are left; panics are recorded, not propagated.
fn claim_tasks(s: &Shared, task: &Task<'_>, tasks: usize) {
    loop {
        let t = s.next.fetch_add(1, Ordering::Relaxed);
        if t >= tasks {
            return;
        }
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| task(t))) {
            s.panicked.store(true, Ordering::Release);
            *lock(&s.payload) = Some(payload);
        }
        s.done.fetch_add(1, Ordering::Release);
    }
}

fn worker(s: &Shared) {
    let _ = std::thread::current();
    s.ready.fetch_add(1, Ordering::Release);
    let mut seen = 0u64;
    loop {
        let started = std::time::Instant::now();
        'spin: loop {
            for _ in 0..SPIN_CHECK {
                if s.epoch.load(Ordering::Acquire) as u64 != seen {
                    break 'spin;
                }
                std::hint::spin_loop();
            }
            if started.elapsed() >= SPIN_TIME {
                break;
            }
        }
        let mut st = lock(&s.state);
        while st.epoch == seen && !st.shutdown {
            st.parked += 1;
            st = s.wake.wait(st).unwrap_or_else(PoisonError::into_inner);
            st.parked -= 1;
        }
        if st.shutdown {
            return;
        }
        seen = st.epoch;
        let Some(job) = st.job else { continue };
        s.active.fetch_add(1, Ordering::AcqRel);
        drop(st);
        // SAFETY: `job` was published by `Pool::run`, which keeps the closure alive until
        // `active` returns to zero; we incremented `active` while the job was published.
        let task = unsafe { &*job.task };
        claim_tasks(s, task, job.tasks);
        s.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        lock(&self.shared.state).shutdown = true;
        self.shared.wake.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_across_many_jobs() {
        let pool = Pool::new(3).expect("spawn");
        for round in 0..2000 {
            let n = 1 + round % 7;
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            pool.run(n, &|t| {
                hits[t].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "round {round}");
        }
    }

    #[test]
    fn a_panicking_task_reaches_the_caller_and_the_pool_survives() {
        let pool = Pool::new(2).expect("spawn");
        let r = catch_unwind(AssertUnwindSafe(|| pool.run(4, &|t| assert!(t != 2, "task two"))));
        assert!(r.is_err());
        let count = AtomicUsize::new(0);
        pool.run(4, &|_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 4);
    }
}
