//! Running the kernels on every core. The work goes to rayon's global pool, the same threads
//! candle's matrix multiplications (gemm) run on: no thread is started per call, and the
//! kernels and the multiplications never compete for the cores with extra threads. Callers on
//! other threads (tokio's blocking pool, say) wait while the pool works.
//!
//! A forward pass either splits every loop between the pool's threads, or runs [`alone`] on
//! one of them while the others run passes of their own, handed out by [`stream`] (see
//! `Embedder::embed`).

use std::cell::Cell;
use std::panic::AssertUnwindSafe;

use rayon::prelude::*;

thread_local! {
    /// Whether the loops started on this thread stay on it (inside [`alone`]).
    static ALONE: Cell<bool> = const { Cell::new(false) };
}

/// Starts rayon's global pool with its threads named `model-0`, `model-1`, … (what `top -H`,
/// `perf` and a debugger show), unless something in the process started it already.
pub(crate) fn start() {
    // Only the first caller in a process can build the global pool; the others (a second
    // embedder, or a pool rayon already started on first use) keep the one there is.
    let _ = rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("model-{i}"))
        .build_global();
}

/// Runs `work` with every loop it starts (these helpers, the int8 and gemm products) on the
/// calling thread only.
pub(crate) fn alone<R>(work: impl FnOnce() -> R) -> R {
    /// Restores the flag however `work` ends.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            ALONE.set(self.0);
        }
    }
    let _restore = Restore(ALONE.replace(true));
    work()
}

/// Threads a loop started here may use: rayon's pool, or 1 inside [`alone`].
pub(crate) fn threads() -> usize {
    if ALONE.get() {
        1
    } else {
        rayon::current_num_threads()
    }
}

/// `work(item)` for every item, each whole on one of the pool's threads, in order; the results
/// in the order of `items`.
///
/// Items are handed to the pool one at a time, as its threads free up, rather than all at
/// once: each is queued behind whatever else waits for the pool (a query's embedding, say),
/// which then waits for one item at most, not for all of them. And there is no step at which
/// a thread waits for the others: a thread that loses time to another process (a broker, the
/// gateway) only delays its own items, while the others go on with the rest.
pub(crate) fn stream<T: Sync, R: Send>(items: &[T], work: impl Fn(&T) -> R + Sync) -> Vec<R> {
    // On one of the pool's threads, waiting for items to come back could leave no thread to
    // run them: split them between the threads as usual.
    if rayon::current_thread_index().is_some() {
        return items.par_iter().with_max_len(1).map(&work).collect();
    }
    let mut results: Vec<Option<R>> = items.iter().map(|_| None).collect();
    let mut panic = None;
    let (done, finished) = std::sync::mpsc::channel();
    rayon::in_place_scope(|scope| {
        // From a thread outside the pool, `spawn` queues the item behind what already waits.
        let start = |i: usize| {
            let (done, work) = (done.clone(), &work);
            scope.spawn(move |_| {
                let result = std::panic::catch_unwind(AssertUnwindSafe(|| work(&items[i])));
                let _ = done.send((i, result));
            });
        };
        let mut started = items.len().min(rayon::current_num_threads());
        (0..started).for_each(&start);
        let mut received = 0;
        while received < started {
            let (i, result) = finished
                .recv()
                .expect("every item started sends its result");
            received += 1;
            match result {
                Ok(result) => results[i] = Some(result),
                Err(payload) => panic = Some(payload),
            }
            // After a panic nothing more starts; the items already started still report.
            if started < items.len() && panic.is_none() {
                start(started);
                started += 1;
            }
        }
    });
    if let Some(payload) = panic {
        std::panic::resume_unwind(payload);
    }
    results
        .into_iter()
        .map(|result| result.expect("every item ran"))
        .collect()
}

/// Runs `work` once for every item, in parallel. Items are split one at a time, so unequal
/// items still balance (callers put the longest first).
pub(crate) fn for_each_parallel<T: Send>(items: Vec<T>, work: impl Fn(T) + Sync + Send) {
    if items.len() <= 1 || threads() == 1 {
        items.into_iter().for_each(work);
        return;
    }
    items.into_par_iter().with_max_len(1).for_each(work);
}

/// Splits `out` into blocks of whole rows (`width` values each) and runs
/// `work(first_row, block)` on every block, in parallel.
pub(crate) fn for_each_row_block(
    out: &mut [f32],
    width: usize,
    work: impl Fn(usize, &mut [f32]) + Sync + Send,
) {
    let threads = threads();
    if threads == 1 {
        work(0, out);
        return;
    }
    let rows = out.len() / width.max(1);
    // A few blocks per thread evens out scheduling noise; at least 8 rows keeps the overhead low.
    let rows_per_block = rows.div_ceil(threads * 4).max(8);
    out.par_chunks_mut(rows_per_block * width.max(1))
        .enumerate()
        .for_each(|(i, block)| work(i * rows_per_block, block));
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn streamed_items_run_once_each_and_come_back_in_order() {
        let runs = AtomicUsize::new(0);
        let items: Vec<usize> = (0..50).collect();
        let work = |&n: &usize| {
            runs.fetch_add(1, Ordering::Relaxed);
            // Uneven items finish out of order.
            std::thread::sleep(std::time::Duration::from_micros((50 - n as u64) * 20));
            (n * 2, rayon::current_thread_index().is_some())
        };
        let results = stream(&items, work);
        assert_eq!(runs.load(Ordering::Relaxed), 50);
        for (n, (doubled, on_pool)) in results.into_iter().enumerate() {
            assert_eq!(doubled, n * 2);
            assert!(on_pool, "item {n} ran outside the pool");
        }
        // From one of the pool's own threads, too.
        let inside = rayon::scope(|_| stream(&items, |&n| n + 1));
        assert_eq!(inside, (1..=50).collect::<Vec<_>>());
        assert!(stream(&[] as &[usize], |&n| n).is_empty());
    }

    #[test]
    fn a_panicking_item_panics_the_call_after_the_others_end() {
        let items: Vec<usize> = (0..20).collect();
        let finished = AtomicUsize::new(0);
        let call = std::panic::catch_unwind(AssertUnwindSafe(|| {
            stream(&items, |&n| {
                assert_ne!(n, 3, "item 3 fails");
                finished.fetch_add(1, Ordering::Relaxed);
            })
        }));
        assert!(call.is_err(), "the panic reaches the caller");
        // Nothing is left running: the call returned after every started item ended.
        let seen = finished.load(Ordering::Relaxed);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(finished.load(Ordering::Relaxed), seen);
        assert!(seen < 20);
    }
}
