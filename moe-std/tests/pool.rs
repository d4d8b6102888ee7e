//! The thread pool: coverage of every index exactly once, bit-exact parallel matrix ×
//! vector against the serial kernel, panic propagation, many tiny calls, no allocation per
//! call on the calling thread, and shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use moe_core::TensorType;
use moe_core::kernels::Kernels;
use moe_core::parallel::Parallel;
use moe_core::quant::quantize_row;
use moe_std::pool::{ThreadPool, matvec_parallel};

mod counting;

use counting::allocations_in;

const THREADS: [usize; 4] = [1, 2, 3, 4];

fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 56) as u8
        })
        .collect()
}

/// Random blocks with the f16 scale(s) set to 1/64 so that every value is finite.
fn weights(ty: TensorType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    let bb = ty.block_bytes();
    let mut w = bytes(rows * cols / ty.block_len() * bb, seed);
    let scale = 0x2400u16.to_le_bytes();
    let offsets: &[usize] = match ty {
        TensorType::Q4_K => &[0, 2],
        TensorType::Q6_K => &[208],
        _ => &[0],
    };
    for block in w.chunks_exact_mut(bb) {
        for &o in offsets {
            block[o..o + 2].copy_from_slice(&scale);
        }
    }
    w
}

fn activations(ty: TensorType, cols: usize) -> Vec<u8> {
    let act = ty.activation_type().unwrap();
    let x: Vec<f32> = bytes(cols, 3)
        .into_iter()
        .map(|b| (f32::from(b) - 127.5) / 64.0)
        .collect();
    let mut a = vec![0u8; cols / act.block_len() * act.block_bytes()];
    quantize_row(act, &x, &mut a).unwrap();
    a
}

#[test]
fn every_index_is_covered_exactly_once() {
    for threads in THREADS {
        let pool = ThreadPool::new(threads);
        assert_eq!(pool.threads(), threads);
        for n in [0usize, 1, 2, 3, 4, 5, 7, 16, 17, 100, 1000, 4099] {
            for min_chunk in [0usize, 1, 3, 64] {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                let calls = AtomicUsize::new(0);
                pool.for_each_range(n, min_chunk, |r| {
                    assert!(!r.is_empty() && r.end <= n, "range {r:?} of {n}");
                    calls.fetch_add(1, Ordering::Relaxed);
                    for i in r {
                        hits[i].fetch_add(1, Ordering::Relaxed);
                    }
                });
                for (i, h) in hits.iter().enumerate() {
                    assert_eq!(
                        h.load(Ordering::Relaxed),
                        1,
                        "index {i}, n {n}, {threads} threads"
                    );
                }
                let chunk = pool.chunk_len(n, min_chunk);
                assert_eq!(calls.load(Ordering::Relaxed), n.div_ceil(chunk));
                assert!(n.div_ceil(chunk) <= threads);
            }
        }
    }
}

#[test]
fn chunks_mut_are_disjoint_and_cover_the_slice() {
    for threads in THREADS {
        let pool = ThreadPool::new(threads);
        for n in [0usize, 1, 2, 3, 5, 33, 1000] {
            let mut data = vec![0usize; n];
            pool.for_each_chunk_mut(&mut data, 1, |offset, chunk| {
                for (j, v) in chunk.iter_mut().enumerate() {
                    *v += offset + j + 1;
                }
            });
            let want: Vec<usize> = (1..=n).collect();
            assert_eq!(data, want, "n {n}, {threads} threads");
        }
    }
}

#[test]
fn row_pieces_cover_every_row_once_at_their_first_row() {
    // The core's `Parallel` entry points, even and uneven: every whole row (and a
    // trailing partial one) is in exactly one piece, which starts at the row it names;
    // a job's error comes back.
    for threads in THREADS {
        let pool = ThreadPool::new(threads);
        for (rows, row_bytes) in [
            (0usize, 4usize),
            (1, 4),
            (5, 3),
            (64, 8),
            (129, 4),
            (1000, 1),
        ] {
            for uneven in [false, true] {
                let mut data = vec![0u8; rows * row_bytes + 1];
                let job = |first: usize, piece: &mut [u8]| {
                    for (j, b) in piece.iter_mut().enumerate() {
                        *b = b.wrapping_add(((first * row_bytes + j) % 251) as u8 + 1);
                    }
                    Ok(())
                };
                let result = if uneven {
                    pool.for_each_uneven_rows(&mut data, row_bytes, &job)
                } else {
                    pool.for_each_rows(&mut data, row_bytes, 3, &job)
                };
                result.unwrap();
                let want: Vec<u8> = (0..data.len()).map(|i| (i % 251) as u8 + 1).collect();
                assert_eq!(
                    data, want,
                    "{rows} rows, {threads} threads, uneven {uneven}"
                );
                let failing = |first: usize, _: &mut [u8]| {
                    if first == 0 {
                        Err(moe_core::Error::CannotSample { reason: "test" })
                    } else {
                        Ok(())
                    }
                };
                let err = if uneven {
                    pool.for_each_uneven_rows(&mut data, row_bytes, &failing)
                } else {
                    pool.for_each_rows(&mut data, row_bytes, 3, &failing)
                };
                assert!(err.is_err());
            }
        }
    }
}

#[test]
fn matvec_parallel_equals_the_serial_kernel_bit_for_bit() {
    let tables = [Kernels::scalar(), moe_std::kernels::detect()];
    let types = [
        TensorType::Q4_0,
        TensorType::Q8_0,
        TensorType::Q4_K,
        TensorType::Q6_K,
    ];
    for threads in THREADS {
        let pool = ThreadPool::new(threads);
        for ty in types {
            let cols = 512;
            for rows in [0usize, 1, 2, 3, 5, 17, 64, 100, 257] {
                let w = weights(ty, rows, cols, rows as u64 + 11);
                let a = activations(ty, cols);
                for k in &tables {
                    let mut serial = vec![f32::NAN; rows];
                    k.matvec(ty, &w, &a, &mut serial).unwrap();
                    let mut parallel = vec![f32::NAN; rows];
                    matvec_parallel(&pool, k, ty, &w, &a, &mut parallel).unwrap();
                    let s: Vec<u32> = serial.iter().map(|v| v.to_bits()).collect();
                    let p: Vec<u32> = parallel.iter().map(|v| v.to_bits()).collect();
                    assert_eq!(p, s, "{ty} {rows}x{cols}, {threads} threads, {k:?}");
                }
            }
        }
    }
}

#[test]
fn matvec_parallel_reports_the_serial_errors() {
    let pool = ThreadPool::new(3);
    let k = Kernels::scalar();
    let ty = TensorType::Q8_0;
    let w = weights(ty, 40, 256, 1);
    let a = activations(ty, 256);
    // Weights one byte short, activations one block short, activations not whole blocks,
    // a type without kernels.
    let cases: [(TensorType, &[u8], &[u8]); 4] = [
        (ty, &w[..w.len() - 1], &a),
        (ty, &w, &a[..a.len() - 34]),
        (ty, &w, &a[..a.len() - 1]),
        (TensorType::Q8_1, &w, &a),
    ];
    for (ty, w, a) in cases {
        let mut serial = vec![0f32; 40];
        let mut parallel = vec![0f32; 40];
        let want = k.matvec(ty, w, a, &mut serial).unwrap_err();
        let got = matvec_parallel(&pool, &k, ty, w, a, &mut parallel).unwrap_err();
        assert_eq!(format!("{got:?}"), format!("{want:?}"));
        assert_eq!(parallel, serial);
    }
}

#[test]
fn a_worker_panic_reaches_the_caller_and_the_pool_stays_usable() {
    for threads in [2usize, 3, 4] {
        let pool = ThreadPool::new(threads);
        let caller = std::thread::current().id();
        for round in 0..20 {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                pool.for_each_range(threads * 100, 1, |r| {
                    // Panic on a worker (or, if the caller ran every chunk, on it).
                    if std::thread::current().id() != caller || r.start == 0 {
                        std::thread::sleep(Duration::from_micros(50));
                        panic!("chunk {r:?} failed in round {round}");
                    }
                });
            }));
            let payload = result.expect_err("the panic must reach the caller");
            let msg = payload
                .downcast_ref::<String>()
                .expect("the panic's own message");
            assert!(msg.contains("failed in round"), "{msg}");
            // The pool still runs jobs afterwards.
            let sum = AtomicUsize::new(0);
            pool.for_each_range(1000, 1, |r| {
                sum.fetch_add(r.len(), Ordering::Relaxed);
            });
            assert_eq!(sum.load(Ordering::Relaxed), 1000);
        }
    }
}

#[test]
fn thousands_of_tiny_calls_do_not_deadlock() {
    for threads in THREADS {
        for spin in [Duration::ZERO, Duration::from_micros(100)] {
            let pool = ThreadPool::with_spin(threads, spin);
            let total = AtomicUsize::new(0);
            for i in 0..5000 {
                pool.for_each_range(threads + i % 3, 1, |r| {
                    total.fetch_add(r.len(), Ordering::Relaxed);
                });
            }
            let want: usize = (0..5000).map(|i| threads + i % 3).sum();
            assert_eq!(total.load(Ordering::Relaxed), want);
        }
    }
}

#[test]
fn calls_from_several_threads_and_nested_calls_are_serialised() {
    let pool = Arc::new(ThreadPool::new(3));
    let total = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (pool, total) = (Arc::clone(&pool), Arc::clone(&total));
            std::thread::spawn(move || {
                for _ in 0..500 {
                    pool.for_each_range(8, 1, |r| {
                        // A nested call runs inline on the current thread.
                        pool.for_each_range(r.len(), 1, |inner| {
                            total.fetch_add(inner.len(), Ordering::Relaxed);
                        });
                    });
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(total.load(Ordering::Relaxed), 4 * 500 * 8);
}

#[test]
fn a_call_allocates_nothing_on_the_calling_thread() {
    let pool = ThreadPool::new(3);
    let k = moe_std::kernels::detect();
    let ty = TensorType::Q4_0;
    let w = weights(ty, 96, 256, 5);
    let a = activations(ty, 256);
    let mut out = vec![0f32; 96];
    // Warm-up: thread-locals and lazily initialised statics.
    matvec_parallel(&pool, &k, ty, &w, &a, &mut out).unwrap();
    let (n, ()) = allocations_in(|| {
        for _ in 0..100 {
            pool.for_each_range(300, 1, |r| {
                std::hint::black_box(r);
            });
            matvec_parallel(&pool, &k, ty, &w, &a, &mut out).unwrap();
        }
    });
    assert_eq!(n, 0, "{n} allocations in 200 calls");
}

/// Counts its drop; one lives in each worker's thread-local storage, so its drop marks
/// the worker thread's exit.
struct ExitMarker(Arc<AtomicUsize>);

impl Drop for ExitMarker {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

thread_local! {
    static MARKER: std::cell::RefCell<Option<ExitMarker>> = const { std::cell::RefCell::new(None) };
}

#[test]
fn drop_joins_every_worker() {
    for threads in THREADS {
        let installed = AtomicUsize::new(0);
        let exited = Arc::new(AtomicUsize::new(0));
        let caller = std::thread::current().id();
        let pool = ThreadPool::with_spin(threads, Duration::ZERO);
        for _ in 0..20 {
            pool.for_each_range(threads, 1, |_| {
                if std::thread::current().id() != caller {
                    MARKER.with(|m| {
                        let mut m = m.borrow_mut();
                        if m.is_none() {
                            *m = Some(ExitMarker(Arc::clone(&exited)));
                            installed.fetch_add(1, Ordering::SeqCst);
                        }
                    });
                }
                std::thread::sleep(Duration::from_millis(1));
            });
        }
        let installed = installed.load(Ordering::SeqCst);
        assert!(installed < threads);
        if threads > 1 {
            assert!(installed >= 1, "no worker ever ran a chunk");
        }
        assert_eq!(exited.load(Ordering::SeqCst), 0, "workers exited early");
        drop(pool);
        // Thread-local destructors run before a thread finishes, and drop joined them all.
        assert_eq!(
            exited.load(Ordering::SeqCst),
            installed,
            "{threads} threads"
        );
    }
}
