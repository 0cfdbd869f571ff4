//! Int8 linear layers, for [`Precision::Int8`](crate::Precision): weights quantised once at
//! load, one scale per output column; activations quantised on every pass, one scale per row
//! (token); the products by AVX-512 VNNI's `vpdpbusd`, which does 64 byte multiply-adds per
//! instruction where an fp32 FMA does 16, and accumulates them exactly in i32.
//!
//! Weights are symmetric: `w ≈ s_col · q_w`, `q_w` in -127..=127. Activations are asymmetric,
//! as `vpdpbusd` wants them, unsigned: `x ≈ min_row + s_row · q_x`, `q_x` in 0..=255, which
//! spends all 256 steps on the row's actual range (GELU's outputs, for one, are almost all
//! positive). Then `x · w ≈ s_col · (s_row · Σ_k q_x[k] q_w[k] + min_row · Σ_k q_w[k])`: one
//! exact integer sum per output, and a per-column sum of the weights computed at load.

use rayon::prelude::*;

/// Output columns per panel: four 16-lane registers of accumulators per row.
const PANEL: usize = 64;
/// Rows per register tile: 4 rows × 4 registers = 16 accumulators, plus 4 for a row of weights
/// and 1 for the broadcast activations. 6 rows (24 accumulators) would fit AVX-512's 32
/// registers on paper, but the compiler then spilled accumulators to the stack: 4 ran faster.
const TILE_ROWS: usize = 4;
/// Input values per `vpdpbusd` lane.
const GROUP: usize = 4;

/// A linear layer `x W^T` (no bias: the loop that reads the product adds it) with int8 weights.
pub(crate) struct Int8Dense {
    inputs: usize,
    /// `inputs` rounded up to whole groups of 4; the padding weights are 0.
    depth: usize,
    outputs: usize,
    /// Weights by panel: `[outputs / 64][depth / 4][64 columns][4 inputs]`, so one step of the
    /// kernel reads 256 consecutive bytes (four registers).
    packed: Vec<i8>,
    /// Per output column: its scale, and `Σ_k q_w[k]`.
    scales: Vec<f32>,
    weight_sums: Vec<f32>,
    /// Per input channel, `1 / s_k` (see [`Int8Dense::new`]), applied while quantising.
    input_factors: Vec<f32>,
}

impl Int8Dense {
    /// Whether this CPU can run the int8 kernels.
    pub(crate) fn supported() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512vnni")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// Whether a layer of `outputs` columns fits the kernel (whole panels).
    pub(crate) fn fits(outputs: usize) -> bool {
        outputs > 0 && outputs.is_multiple_of(PANEL)
    }

    /// Quantises `weight_t`, the `(inputs, outputs)` row-major transpose of the layer's weights.
    ///
    /// `channel_max` is the largest magnitude each input channel reached in calibration. Input
    /// channel `k` is divided by `s_k = sqrt(channel_max[k] / max_n |w[k][n]|)` and its weights
    /// multiplied by it (SmoothQuant, α = ½): the product is unchanged, but an outlier channel
    /// no longer sets every token's scale alone; the weights, quantised per column, take some
    /// of its range.
    pub(crate) fn new(
        weight_t: &[f32],
        inputs: usize,
        outputs: usize,
        channel_max: &[f32],
    ) -> Int8Dense {
        assert!(Self::fits(outputs) && weight_t.len() == inputs * outputs);
        assert_eq!(channel_max.len(), inputs);
        let depth = inputs.next_multiple_of(GROUP);
        let smoothing: Vec<f32> = (0..inputs)
            .map(|k| {
                let row = &weight_t[k * outputs..(k + 1) * outputs];
                let weight_max = row.iter().fold(0.0f32, |m, w| m.max(w.abs()));
                let s = (channel_max[k] / weight_max).sqrt();
                // A channel never seen (or all-zero weights) keeps its values as they are.
                if s.is_finite() && s > 0.0 {
                    s.clamp(1e-3, 1e3)
                } else {
                    1.0
                }
            })
            .collect();
        let smoothed = |k: usize, n: usize| weight_t[k * outputs + n] * smoothing[k];
        let scales: Vec<f32> = (0..outputs)
            .map(|n| {
                let max = (0..inputs).fold(0.0f32, |m, k| m.max(smoothed(k, n).abs()));
                if max > 0.0 {
                    max / 127.0
                } else {
                    1.0
                }
            })
            .collect();
        let quantised = |k: usize, n: usize| -> i8 {
            if k >= inputs {
                return 0;
            }
            (smoothed(k, n) / scales[n]).round().clamp(-127.0, 127.0) as i8
        };
        let mut packed = Vec::with_capacity(depth * outputs);
        for panel in 0..outputs / PANEL {
            for group in 0..depth / GROUP {
                for column in 0..PANEL {
                    for j in 0..GROUP {
                        packed.push(quantised(group * GROUP + j, panel * PANEL + column));
                    }
                }
            }
        }
        let weight_sums = (0..outputs)
            .map(|n| (0..inputs).map(|k| quantised(k, n) as i32).sum::<i32>() as f32)
            .collect();
        Int8Dense {
            inputs,
            depth,
            outputs,
            packed,
            scales,
            weight_sums,
            input_factors: smoothing.iter().map(|s| 1.0 / s).collect(),
        }
    }

    /// `x W^T` for `x` of `rows × inputs` values, row-major; returns `rows × outputs`.
    #[cfg(test)]
    pub(crate) fn forward(&self, x: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0f32; x.len() / self.inputs * self.outputs];
        self.forward_into(x, &mut out);
        out
    }

    /// `out = x W^T` for `x` of `rows × inputs` values, row-major, and `out` of `rows ×
    /// outputs`. Every value of `out` is written, so a buffer kept from an earlier step needs
    /// no zeroing (a fresh one per product cost 6% of int8's time in `memset`).
    pub(crate) fn forward_into(&self, x: &[f32], out: &mut [f32]) {
        assert_eq!(x.len() % self.inputs, 0);
        let rows = x.len() / self.inputs;
        assert_eq!(out.len(), rows * self.outputs);
        // Blocks of whole tiles, a few per thread; each block quantises its own rows.
        let tiles = rows.div_ceil(TILE_ROWS);
        let threads = crate::pool::threads();
        if threads == 1 {
            self.forward_block(x, rows, out);
            return;
        }
        let tiles_per_block = tiles.div_ceil(threads * 4).max(1);
        let block_rows = tiles_per_block * TILE_ROWS;
        out.par_chunks_mut(block_rows * self.outputs)
            .enumerate()
            .for_each(|(block, out)| {
                let first = block * block_rows;
                let count = out.len() / self.outputs;
                let x = &x[first * self.inputs..(first + count) * self.inputs];
                self.forward_block(x, count, out);
            });
    }

    fn forward_block(&self, x: &[f32], rows: usize, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            let mut quantised = vec![0u8; rows * self.depth];
            let mut row_scales = vec![(0.0f32, 0.0f32); rows];
            for ((x, q), scale) in x
                .chunks_exact(self.inputs)
                .zip(quantised.chunks_exact_mut(self.depth))
                .zip(&mut row_scales)
            {
                // SAFETY: `supported()` was checked before the layer was built (Embedder::load).
                *scale = unsafe { vnni::quantise_row(x, &self.input_factors, q) };
            }
            // SAFETY: as above; the buffers have the sizes the kernel reads (asserted there).
            unsafe { vnni::product(self, &quantised, &row_scales, out) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (x, rows, out);
            unreachable!("Int8Dense is only built where supported() holds");
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use super::{Int8Dense, GROUP, PANEL, TILE_ROWS};
    use std::arch::x86_64::*;

    /// Quantises one row, each value times its channel's factor, into `q` (the padding stays 0,
    /// which meets zero weights) and returns the row's `(scale, min)`. In AVX-512 because the
    /// compiler leaves the rounding to a libm call per value: 17% of the int8 model's time.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F and BW.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn quantise_row(x: &[f32], factors: &[f32], q: &mut [u8]) -> (f32, f32) {
        assert!(factors.len() == x.len() && q.len() >= x.len());
        let lanes = |start: usize| -> __mmask16 {
            let left = (x.len() - start).min(16);
            ((1u32 << left) - 1) as __mmask16
        };
        // SAFETY (all loads and stores): masked to the slices' lengths.
        let scaled = |start: usize| unsafe {
            let mask = lanes(start);
            let v = _mm512_maskz_loadu_ps(mask, x.as_ptr().add(start));
            let f = _mm512_maskz_loadu_ps(mask, factors.as_ptr().add(start));
            (mask, _mm512_mul_ps(v, f))
        };
        let (mut lo, mut hi) = (
            _mm512_set1_ps(f32::INFINITY),
            _mm512_set1_ps(f32::NEG_INFINITY),
        );
        for start in (0..x.len()).step_by(16) {
            let (mask, v) = scaled(start);
            lo = _mm512_mask_min_ps(lo, mask, lo, v);
            hi = _mm512_mask_max_ps(hi, mask, hi, v);
        }
        let (min, max) = (_mm512_reduce_min_ps(lo), _mm512_reduce_max_ps(hi));
        let scale = if max > min { (max - min) / 255.0 } else { 1.0 };
        let (min_v, inverse) = (_mm512_set1_ps(min), _mm512_set1_ps(1.0 / scale));
        for start in (0..x.len()).step_by(16) {
            let (mask, v) = scaled(start);
            // v ≥ min exactly, so the steps are ≥ 0; rounding to nearest may reach 256, which
            // the unsigned saturating narrowing turns into 255.
            let steps = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_sub_ps(v, min_v), inverse));
            unsafe {
                _mm512_mask_cvtusepi32_storeu_epi8(q.as_mut_ptr().add(start).cast(), mask, steps)
            };
        }
        (scale, min)
    }

    /// `out = rows × outputs` products of the quantised rows with every panel of weights.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW and VNNI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn product(
        layer: &Int8Dense,
        quantised: &[u8],
        row_scales: &[(f32, f32)],
        out: &mut [f32],
    ) {
        let rows = row_scales.len();
        assert!(quantised.len() == rows * layer.depth && out.len() == rows * layer.outputs);
        assert!(layer.packed.len() == layer.depth * layer.outputs);
        for panel in 0..layer.outputs / PANEL {
            let weights = &layer.packed[panel * layer.depth * PANEL..][..layer.depth * PANEL];
            let mut first = 0;
            while first < rows {
                let count = TILE_ROWS.min(rows - first);
                let tile = Tile {
                    layer,
                    quantised: &quantised[first * layer.depth..],
                    weights,
                    row_scales: &row_scales[first..],
                    column: panel * PANEL,
                    out: &mut out[first * layer.outputs..],
                };
                // SAFETY (all): the CPU features are those of this function; `tile` holds at
                // least `count` rows of each buffer (asserted above).
                unsafe {
                    match count {
                        4 => tile.run::<4>(),
                        3 => tile.run::<3>(),
                        2 => tile.run::<2>(),
                        _ => tile.run::<1>(),
                    }
                }
                first += count;
            }
        }
    }

    /// Up to `TILE_ROWS` rows against one panel of 64 columns.
    struct Tile<'a> {
        layer: &'a Int8Dense,
        /// From the tile's first row on.
        quantised: &'a [u8],
        weights: &'a [i8],
        /// Each row's `(scale, min)`.
        row_scales: &'a [(f32, f32)],
        /// The panel's first output column.
        column: usize,
        out: &'a mut [f32],
    }

    impl Tile<'_> {
        /// # Safety
        /// AVX-512 F, BW and VNNI; `R` rows of `quantised`, `row_scales` and `out`.
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
        #[inline]
        unsafe fn run<const R: usize>(self) {
            const { assert!(R <= TILE_ROWS) };
            let Tile {
                layer,
                quantised,
                weights,
                row_scales,
                column,
                out,
            } = self;
            let depth = layer.depth;
            assert!(quantised.len() >= R * depth && row_scales.len() >= R);
            assert!(out.len() >= (R - 1) * layer.outputs + column + PANEL);
            let (a, b) = (quantised.as_ptr(), weights.as_ptr());
            let mut acc = [[_mm512_setzero_si512(); 4]; R];
            for group in 0..depth / GROUP {
                // SAFETY (reads): `weights` holds depth / 4 steps of 256 bytes, and each row
                // of `quantised` `depth` bytes.
                let step = unsafe { b.add(group * GROUP * PANEL) };
                let w = unsafe {
                    [
                        _mm512_loadu_si512(step.cast()),
                        _mm512_loadu_si512(step.add(64).cast()),
                        _mm512_loadu_si512(step.add(128).cast()),
                        _mm512_loadu_si512(step.add(192).cast()),
                    ]
                };
                for (r, acc) in acc.iter_mut().enumerate() {
                    let four = unsafe { a.add(r * depth + group * GROUP).cast::<i32>() };
                    let x = _mm512_set1_epi32(unsafe { four.read_unaligned() });
                    for (acc, &w) in acc.iter_mut().zip(&w) {
                        *acc = _mm512_dpbusd_epi32(*acc, x, w);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                let (row_scale, row_min) = row_scales[r];
                let (row_scale, row_min) = (_mm512_set1_ps(row_scale), _mm512_set1_ps(row_min));
                for (i, &acc) in acc.iter().enumerate() {
                    let n = column + i * 16;
                    // SAFETY: each panel column range lies inside `weight_sums`, `scales` and
                    // the row of `out` (asserted above).
                    unsafe {
                        let sums = _mm512_loadu_ps(layer.weight_sums[n..].as_ptr());
                        let scale = _mm512_loadu_ps(layer.scales[n..].as_ptr());
                        // s_col · (s_row · Σ q_x q_w + min_row · Σ q_w)
                        let offset = _mm512_mul_ps(row_min, sums);
                        let sum = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), row_scale, offset);
                        let value = _mm512_mul_ps(sum, scale);
                        _mm512_storeu_ps(out[r * layer.outputs + n..].as_mut_ptr(), value);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random matrix in -1..1.
    fn matrix(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Largest magnitude per column of a row-major matrix `width` wide.
    fn column_max(x: &[f32], width: usize) -> Vec<f32> {
        let mut max = vec![0.0f32; width];
        for row in x.chunks_exact(width) {
            for (m, v) in max.iter_mut().zip(row) {
                *m = m.max(v.abs());
            }
        }
        max
    }

    /// One input channel 30 times larger than the rest, as channel 99 is in all-MiniLM-L6-v2:
    /// smoothing keeps the other channels' products accurate.
    #[test]
    fn an_outlier_channel_does_not_drown_the_others() {
        if !Int8Dense::supported() {
            eprintln!("*** SKIPPED: this CPU lacks AVX-512 VNNI ***");
            return;
        }
        let (rows, inputs, outputs) = (32, 384, 64);
        let mut x = matrix(rows * inputs, 5);
        for row in x.chunks_exact_mut(inputs) {
            row[99] *= 30.0;
        }
        let w_t = matrix(inputs * outputs, 6);
        let exact = |x: &[f32]| -> Vec<f32> {
            let mut out = vec![0.0f32; rows * outputs];
            for (r, row) in x.chunks_exact(inputs).enumerate() {
                for n in 0..outputs {
                    out[r * outputs + n] = (0..inputs).map(|k| row[k] * w_t[k * outputs + n]).sum();
                }
            }
            out
        };
        let error = |channel_max: &[f32]| -> f32 {
            let got = Int8Dense::new(&w_t, inputs, outputs, channel_max).forward(&x);
            let want = exact(&x);
            let diff: f32 = got.iter().zip(&want).map(|(g, w)| (g - w) * (g - w)).sum();
            (diff / want.iter().map(|w| w * w).sum::<f32>()).sqrt()
        };
        let smoothed = error(&column_max(&x, inputs));
        let plain = error(&[0.0; 384]);
        assert!(
            smoothed < plain / 2.0,
            "relative error {smoothed} smoothed, {plain} plain"
        );
        assert!(smoothed < 0.02, "relative error {smoothed}");
    }

    #[test]
    fn products_match_fp32_to_quantisation_error() {
        if !Int8Dense::supported() {
            eprintln!("*** SKIPPED: this CPU lacks AVX-512 VNNI ***");
            return;
        }
        // Inputs not a multiple of 4 and row counts that leave partial tiles and blocks.
        for (rows, inputs, outputs) in [(1, 7, 64), (13, 384, 128), (100, 130, 192)] {
            let x = matrix(rows * inputs, 1);
            let w_t = matrix(inputs * outputs, 2);
            let channel_max = column_max(&x, inputs);
            let layer = Int8Dense::new(&w_t, inputs, outputs, &channel_max);
            let got = layer.forward(&x);
            // Into a buffer left over from another step: every value is written.
            let mut reused = vec![f32::NAN; rows * outputs];
            layer.forward_into(&x, &mut reused);
            assert_eq!(reused, got, "{rows} rows into a reused buffer");
            for r in 0..rows {
                let row = &x[r * inputs..(r + 1) * inputs];
                let exact: Vec<f32> = (0..outputs)
                    .map(|n| (0..inputs).map(|k| row[k] * w_t[k * outputs + n]).sum())
                    .collect();
                let got = &got[r * outputs..(r + 1) * outputs];
                // Each factor is off by at most half a step of 1/127 of its row's or column's
                // largest value (≤ 1 here): the error of a sum of `inputs` products is far below
                // this bound in practice, and a wrong index would miss it by orders of magnitude.
                let bound = inputs as f32 * (1.0 / 127.0);
                for (n, (&g, &e)) in got.iter().zip(&exact).enumerate() {
                    assert!((g - e).abs() <= bound, "row {r} column {n}: {g} vs {e}");
                }
                let dot: f32 = got.iter().zip(&exact).map(|(a, b)| a * b).sum();
                let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
                let cosine = dot / (norm(got) * norm(&exact));
                assert!(cosine > 0.999, "{rows}x{inputs}x{outputs}: cosine {cosine}");
            }
        }
    }

    #[test]
    fn zero_rows_and_columns_stay_zero() {
        if !Int8Dense::supported() {
            eprintln!("*** SKIPPED: this CPU lacks AVX-512 VNNI ***");
            return;
        }
        let w_t = vec![0.0f32; 8 * 64];
        let x = matrix(3 * 8, 3);
        let layer = Int8Dense::new(&w_t, 8, 64, &column_max(&x, 8));
        assert!(layer.forward(&x).iter().all(|&v| v == 0.0));
        let w_t = matrix(8 * 64, 4);
        let x = vec![0.0f32; 3 * 8];
        let layer = Int8Dense::new(&w_t, 8, 64, &[0.0; 8]);
        assert!(layer.forward(&x).iter().all(|&v| v == 0.0));
    }
}
