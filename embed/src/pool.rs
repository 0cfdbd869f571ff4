//! Running the kernels on every core. The work goes to rayon's global pool, the same threads
//! candle's matrix multiplications (gemm) run on: no thread is started per call, and the
//! kernels and the multiplications never compete for the cores with extra threads. Callers on
//! other threads (tokio's blocking pool, say) wait while the pool works.
//!
//! A forward pass either splits every loop between the pool's threads, or runs [`alone`] on
//! one of them while the others run passes of their own (see `Embedder::embed`).

use std::cell::Cell;

use rayon::prelude::*;

thread_local! {
    /// Whether the loops started on this thread stay on it (inside [`alone`]).
    static ALONE: Cell<bool> = const { Cell::new(false) };
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
