//! Running the kernels on every core. The work goes to rayon's global pool, the same threads
//! candle's matrix multiplications (gemm) run on: no thread is started per call, and the
//! kernels and the multiplications never compete for the cores with extra threads. Callers on
//! other threads (tokio's blocking pool, say) wait while the pool works.

use rayon::prelude::*;

/// Runs `work` once for every item, in parallel. Items are split one at a time, so unequal
/// items still balance (callers put the longest first).
pub(crate) fn for_each_parallel<T: Send>(items: Vec<T>, work: impl Fn(T) + Sync + Send) {
    if items.len() <= 1 {
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
    let rows = out.len() / width.max(1);
    // A few blocks per thread evens out scheduling noise; at least 8 rows keeps the overhead low.
    let rows_per_block = rows.div_ceil(rayon::current_num_threads() * 4).max(8);
    out.par_chunks_mut(rows_per_block * width.max(1))
        .enumerate()
        .for_each(|(i, block)| work(i * rows_per_block, block));
}
