//! A thread pool for the core's independent ranges (rows of a matrix, experts of a layer).
//!
//! `moe-core` stays single-threaded and states its work as ranges; this pool runs those
//! ranges on persistent workers plus the calling thread:
//!
//! - [`ThreadPool::for_each_range`] splits `0..n` into at most `threads` chunks (never
//!   shorter than `min_chunk`) and calls a closure once per chunk, each index exactly once.
//!   The closure may borrow from the caller's stack: the call returns only after every
//!   chunk has run.
//! - [`ThreadPool::for_each_chunk_mut`] hands out disjoint `&mut` chunks of a slice.
//! - [`matvec_parallel`] splits a matrix × vector's output rows across the pool.
//! - As a [`Parallel`] runner (`MoeLayer::with_parallel`) it splits each expert's matrix
//!   rows in a forward pass.
//!
//! Per call: no heap allocation (the job is a borrowed closure in a slot of the pool), one
//! generation bump, and a wake-up only for workers that went to sleep. Workers spin for a
//! short while after each job ([`ThreadPool::with_spin`]) so that back-to-back decode calls,
//! a few microseconds each, find them awake; after that they sleep on a condition variable
//! and use no CPU. A panic in the closure, on any thread, is caught, the call waits for the
//! other chunks, and the panic is resumed on the calling thread; the pool stays usable.
//! Calls from inside a job (nested) run inline on the current thread.

use std::any::Any;
use std::cell::Cell;
use std::num::NonZeroUsize;
use std::ops::Range;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use moe_core::TensorType;
use moe_core::kernels::Kernels;
use moe_core::parallel::{Parallel, RowsJob};

/// How long an idle worker spins before it sleeps, by default.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(100);

/// The job's closure, with its lifetime erased (see the `SAFETY` argument in
/// [`ThreadPool::for_each_range`]).
type ErasedFn = dyn Fn(Range<usize>) + Sync + 'static;

#[derive(Clone, Copy)]
struct Job {
    f: *const ErasedFn,
    n: usize,
    chunk: usize,
}

// SAFETY: `Job` is only a pointer to a `Sync` closure; it is dereferenced by workers only
// while the call that published it is blocked waiting for them (see `for_each_range`).
#[allow(unsafe_code)]
unsafe impl Send for Job {}

struct Shared {
    /// Bumped once per job (and once at shutdown); workers wait for it to change.
    generation: AtomicU64,
    shutdown: AtomicBool,
    /// The current job, written by the caller before `generation` is bumped.
    job: Mutex<Option<Job>>,
    /// Next chunk index to claim.
    next: AtomicUsize,
    /// Workers that have not finished the current generation.
    pending: AtomicUsize,
    /// The first panic payload of the current job.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    /// Number of workers asleep on `wake`.
    sleepers: Mutex<usize>,
    wake: Condvar,
    /// Whether the caller sleeps on `done`.
    caller_asleep: Mutex<bool>,
    done: Condvar,
    spin: Duration,
}

thread_local! {
    /// Set while this thread runs a pool job: nested calls then run inline.
    static IN_JOB: Cell<bool> = const { Cell::new(false) };
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Closures run under `catch_unwind`, never while these locks are held, so poisoning
    // only comes from a panic that already reached the caller; the data stays consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Claims and runs chunks until none is left; panics are stored, not propagated.
    fn run_chunks(&self, job: Job, f: &(dyn Fn(Range<usize>) + Sync)) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            let start = i.saturating_mul(job.chunk);
            if start >= job.n {
                return;
            }
            let end = start.saturating_add(job.chunk).min(job.n);
            if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| f(start..end))) {
                // Stop the others from claiming more chunks; the job has failed.
                self.next.store(usize::MAX / 2, Ordering::Relaxed);
                let mut slot = lock(&self.panic);
                if slot.is_none() {
                    *slot = Some(payload);
                }
            }
        }
    }

    fn worker(&self) {
        IN_JOB.with(|c| c.set(true));
        let mut seen = 0u64;
        loop {
            seen = self.wait_for_generation(seen);
            if self.shutdown.load(Ordering::Acquire) {
                return;
            }
            let job = *lock(&self.job);
            if let Some(job) = job {
                // SAFETY: the caller that published `job` is blocked in `for_each_range`
                // until `pending` reaches zero, which this worker's decrement below is
                // needed for; until then the closure behind `job.f` is alive and borrowed
                // shared (it is `Sync`).
                #[allow(unsafe_code)]
                let f = unsafe { &*job.f };
                self.run_chunks(job, f);
            }
            if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
                let asleep = lock(&self.caller_asleep);
                if *asleep {
                    self.done.notify_one();
                }
            }
        }
    }

    /// Spins, then sleeps, until `generation` differs from `seen`; returns the new value.
    fn wait_for_generation(&self, seen: u64) -> u64 {
        let deadline = Instant::now() + self.spin;
        let mut spins = 0u32;
        loop {
            let g = self.generation.load(Ordering::Acquire);
            if g != seen {
                return g;
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) {
                if Instant::now() >= deadline {
                    break;
                }
                // Let a descheduled caller run when there are more threads than cores.
                thread::yield_now();
            }
            std::hint::spin_loop();
        }
        let mut sleepers = lock(&self.sleepers);
        loop {
            let g = self.generation.load(Ordering::Acquire);
            if g != seen {
                return g;
            }
            *sleepers += 1;
            sleepers = self
                .wake
                .wait(sleepers)
                .unwrap_or_else(PoisonError::into_inner);
            *sleepers -= 1;
        }
    }

    /// Publishes a new generation and wakes sleeping workers.
    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        // A worker checks `generation` under the `sleepers` lock before it waits, so after
        // taking the lock here it has either seen the new value or is waiting.
        let sleepers = lock(&self.sleepers);
        if *sleepers > 0 {
            self.wake.notify_all();
        }
    }

    /// Waits until every worker has finished the current generation.
    fn wait_done(&self) {
        let deadline = Instant::now() + self.spin;
        let mut spins = 0u32;
        while self.pending.load(Ordering::Acquire) != 0 {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) && Instant::now() >= deadline {
                let mut asleep = lock(&self.caller_asleep);
                *asleep = true;
                // The last worker takes this lock after its decrement, so it either sees
                // `asleep` or we see `pending == 0` here.
                while self.pending.load(Ordering::Acquire) != 0 {
                    asleep = self
                        .done
                        .wait(asleep)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                *asleep = false;
                return;
            }
            if spins.is_multiple_of(64) {
                // Let descheduled workers run when there are more threads than cores.
                thread::yield_now();
            }
            std::hint::spin_loop();
        }
    }
}

/// Persistent worker threads plus the calling thread; see the [module](self) docs.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Serialises calls from different threads (the job slot is single).
    call: Mutex<()>,
}

impl ThreadPool {
    /// A pool in which `threads` threads share each job: `threads - 1` workers plus the
    /// calling thread (`0` is taken as `1`: no workers, everything inline).
    pub fn new(threads: usize) -> Self {
        Self::with_spin(threads, DEFAULT_SPIN)
    }

    /// As [`new`](Self::new), with workers (and a waiting caller) spinning for `spin` before
    /// they sleep. Longer spins lower the latency of calls that follow each other closely
    /// at the cost of CPU time burnt between them.
    pub fn with_spin(threads: usize, spin: Duration) -> Self {
        let n_workers = threads.max(1) - 1;
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            shutdown: AtomicBool::new(false),
            job: Mutex::new(None),
            next: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            panic: Mutex::new(None),
            sleepers: Mutex::new(0),
            wake: Condvar::new(),
            caller_asleep: Mutex::new(false),
            done: Condvar::new(),
            spin,
        });
        let workers = (0..n_workers)
            .map(|i| {
                let shared = Arc::clone(&shared);
                thread::Builder::new()
                    .name(format!("moe-pool-{i}"))
                    .spawn(move || shared.worker())
                    .expect("spawning a pool worker thread")
            })
            .collect();
        ThreadPool {
            shared,
            workers,
            call: Mutex::new(()),
        }
    }

    /// A pool with one thread per CPU ([`thread::available_parallelism`], 1 if unknown).
    pub fn with_default_threads() -> Self {
        Self::new(thread::available_parallelism().map_or(1, NonZeroUsize::get))
    }

    /// Threads that share a job: the workers plus the calling thread.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// The chunk length [`for_each_range`](Self::for_each_range) uses for `n` items.
    pub fn chunk_len(&self, n: usize, min_chunk: usize) -> usize {
        n.div_ceil(self.threads()).max(min_chunk).max(1)
    }

    /// Calls `f` on disjoint ranges that cover `0..n` exactly once, in parallel on the
    /// workers and the calling thread, and returns when all have run.
    ///
    /// The ranges are `chunk_len(n, min_chunk)` long (the last may be shorter), so there are
    /// at most `threads()` of them, and none shorter than `min_chunk` except the last.
    /// `n == 0` calls nothing; a single chunk runs inline without waking anyone. If `f`
    /// panics (on any thread), chunks not yet started are skipped, the call waits for the
    /// running ones and then resumes the first panic here.
    pub fn for_each_range<F>(&self, n: usize, min_chunk: usize, f: F)
    where
        F: Fn(Range<usize>) + Sync,
    {
        if n == 0 {
            return;
        }
        let chunk = self.chunk_len(n, min_chunk);
        if chunk >= n || self.workers.is_empty() || IN_JOB.with(Cell::get) {
            let mut start = 0;
            while start < n {
                let end = start.saturating_add(chunk).min(n);
                f(start..end);
                start = end;
            }
            return;
        }
        let _call = lock(&self.call);
        let shared = &*self.shared;
        let f: &(dyn Fn(Range<usize>) + Sync + '_) = &f;
        // SAFETY: only the lifetime bound of the trait object changes (same layout). The
        // erased pointer is stored in `shared.job` and dereferenced by workers only between
        // the `bump` below and their `pending` decrement; this function does not return, or
        // unwind, before `wait_done` has seen every decrement (the caller's own chunks run
        // under `catch_unwind`), and the slot is cleared before returning. So every use of
        // the pointer happens while `f` is alive.
        #[allow(unsafe_code)]
        let erased: *const ErasedFn = unsafe {
            std::mem::transmute::<&(dyn Fn(Range<usize>) + Sync + '_), &'static ErasedFn>(f)
        };
        let job = Job {
            f: erased,
            n,
            chunk,
        };
        *lock(&shared.job) = Some(job);
        shared.next.store(0, Ordering::Relaxed);
        shared.pending.store(self.workers.len(), Ordering::Relaxed);
        shared.bump();

        IN_JOB.with(|c| c.set(true));
        shared.run_chunks(job, f);
        IN_JOB.with(|c| c.set(false));
        shared.wait_done();
        *lock(&shared.job) = None;

        let payload = lock(&shared.panic).take();
        if let Some(payload) = payload {
            drop(_call);
            panic::resume_unwind(payload);
        }
    }

    /// Calls `f(offset, chunk)` on disjoint chunks of `data` that cover it exactly once
    /// (`offset` is the chunk's first index in `data`), split as
    /// [`for_each_range`](Self::for_each_range) splits `0..data.len()`.
    pub fn for_each_chunk_mut<T, F>(&self, data: &mut [T], min_chunk: usize, f: F)
    where
        T: Send,
        F: Fn(usize, &mut [T]) + Sync,
    {
        let n = data.len();
        if n == 0 {
            return;
        }
        let chunk = self.chunk_len(n, min_chunk);
        // The chunks are handed out through a shared iterator: each claim takes the next
        // `&mut` chunk (disjoint by construction), without `unsafe` or allocation.
        let chunks = Mutex::new(data.chunks_mut(chunk).enumerate());
        self.for_each_range(n.div_ceil(chunk), 1, |claims| {
            for _ in claims {
                let next = lock(&chunks).next();
                if let Some((i, c)) = next {
                    f(i * chunk, c);
                }
            }
        });
    }
}

impl Default for ThreadPool {
    fn default() -> Self {
        Self::with_default_threads()
    }
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPool")
            .field("threads", &self.threads())
            .field("spin", &self.shared.spin)
            .finish()
    }
}

impl Drop for ThreadPool {
    /// Stops and joins every worker.
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        self.shared.bump();
        for w in self.workers.drain(..) {
            // Workers catch the closures' panics, so they exit normally.
            let _ = w.join();
        }
    }
}

/// The core's row pieces (`MoeLayer::with_parallel`) on this pool: `data`'s whole rows
/// are split as [`ThreadPool::for_each_range`] splits the row count, one contiguous piece
/// per thread (uneven rows: eight pieces per thread, each thread taking the next unclaimed
/// one in turn, so every thread's share spreads over the whole range), and the first error
/// any piece returns is returned.
impl Parallel for ThreadPool {
    fn for_each_rows(
        &self,
        data: &mut [u8],
        row_bytes: usize,
        min_rows: usize,
        job: RowsJob<'_>,
    ) -> moe_core::Result<()> {
        let rows = data.len().checked_div(row_bytes).unwrap_or(0);
        self.run_pieces(data, row_bytes, self.chunk_len(rows, min_rows), job)
    }

    fn for_each_uneven_rows(
        &self,
        data: &mut [u8],
        row_bytes: usize,
        job: RowsJob<'_>,
    ) -> moe_core::Result<()> {
        let rows = data.len().checked_div(row_bytes).unwrap_or(0);
        let pieces = self.threads() * UNEVEN_PIECES_PER_THREAD;
        self.run_pieces(data, row_bytes, rows.div_ceil(pieces).max(1), job)
    }
}

/// Pieces per thread of [`Parallel::for_each_uneven_rows`]: enough that the last piece
/// handed out is a small part of any thread's share.
const UNEVEN_PIECES_PER_THREAD: usize = 8;

impl ThreadPool {
    /// `job` on `data` cut into pieces of `chunk_rows` whole rows, each claimed by the
    /// next free thread.
    fn run_pieces(
        &self,
        data: &mut [u8],
        row_bytes: usize,
        chunk_rows: usize,
        job: RowsJob<'_>,
    ) -> moe_core::Result<()> {
        if row_bytes == 0 {
            return job(0, data);
        }
        let pieces = (data.len() / row_bytes).div_ceil(chunk_rows).max(1);
        // Pieces not yet claimed: the next one's index and the bytes from its start; the
        // last piece takes everything left (a trailing partial row included).
        let rest = Mutex::new((0usize, data));
        let first_error = FirstError::default();
        self.for_each_range(pieces, 1, |claims| {
            for _ in claims {
                let next = {
                    let mut rest = lock(&rest);
                    let (i, bytes) = &mut *rest;
                    let len = if *i + 1 == pieces {
                        bytes.len()
                    } else {
                        (chunk_rows * row_bytes).min(bytes.len())
                    };
                    let (piece, tail) = std::mem::take(bytes).split_at_mut(len);
                    *bytes = tail;
                    *i += 1;
                    (*i - 1, piece)
                };
                first_error.record(job(next.0 * chunk_rows, next.1));
            }
        });
        first_error.into_result()
    }
}

/// The first error any thread of a job reported.
#[derive(Default)]
struct FirstError(Mutex<Option<moe_core::Error>>);

impl FirstError {
    /// Keeps `result`'s error unless one is already kept.
    fn record(&self, result: moe_core::Result<()>) {
        if let Err(e) = result {
            lock(&self.0).get_or_insert(e);
        }
    }

    /// The kept error, or `Ok`.
    fn into_result(self) -> moe_core::Result<()> {
        match self.0.into_inner().unwrap_or_else(PoisonError::into_inner) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Minimum rows per chunk of [`matvec_parallel`]: below this, waking a thread costs more
/// than the rows it would compute.
pub const MATVEC_MIN_ROWS: usize = 16;

/// [`Kernels::matvec`] with the output rows split across `pool`: each thread computes a
/// disjoint range of `out` from the matching rows of `weights`. The results are those of
/// `kernels.matvec` bit for bit (each row is one dot product either way), and so are the
/// errors (shapes are checked first, on the whole matrix).
pub fn matvec_parallel(
    pool: &ThreadPool,
    kernels: &Kernels,
    weight_type: TensorType,
    weights: &[u8],
    activations: &[u8],
    out: &mut [f32],
) -> moe_core::Result<()> {
    let rows = out.len();
    // The whole matrix's shape, as `Kernels::matvec` checks it; on any mismatch the serial
    // call reports the same error (it checks shapes before computing anything).
    let row_bytes = weight_type.activation_type().and_then(|act| {
        if activations.len().is_multiple_of(act.block_bytes()) {
            (activations.len() / act.block_bytes()).checked_mul(weight_type.block_bytes())
        } else {
            None
        }
    });
    let row_bytes = match row_bytes {
        Some(rb) if rows > 0 && rb.checked_mul(rows) == Some(weights.len()) => rb,
        _ => return kernels.matvec(weight_type, weights, activations, out),
    };
    let first_error = FirstError::default();
    pool.for_each_chunk_mut(out, MATVEC_MIN_ROWS, |start, chunk| {
        let w = &weights[start * row_bytes..(start + chunk.len()) * row_bytes];
        first_error.record(kernels.matvec(weight_type, w, activations, chunk));
    });
    first_error.into_result()
}
