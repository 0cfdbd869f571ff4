//! Kernels: the loops candle would otherwise run on one core (attention per text and head,
//! bias + residual + layer norm, bias + GELU), and the fast `exp` and `erf` they use. Each is
//! written so the compiler vectorises it, and compiled again for AVX2/FMA and for AVX-512
//! ([`simd_kernel!`]), picked at run time; attention's matrix products have AVX-512 and AVX2
//! kernels of their own.

use crate::bert::LayerNorm;

/// Defines a function whose body is compiled three times: for the baseline CPU, with AVX2 and
/// FMA, and with AVX-512; the widest the CPU has is picked at run time. The crate is built for
/// plain x86-64 (SSE2, no fused multiply-add), which would leave these loops 2-4x slower; the
/// AVX-512 build added 3-8% to int8 embedding on 2 cores (fp32 within noise), where these loops
/// are a larger share. The loops are written so that the compiler vectorises them (no
/// cross-iteration dependencies; the helpers they call are `#[inline(always)]` so they are
/// compiled with the same features).
macro_rules! simd_kernel {
    (
        $(#[$doc:meta])*
        $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block
    ) => {
        $(#[$doc])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn portable($($arg: $ty),*) $body

            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                fn avx512($($arg: $ty),*) {
                    portable($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2_fma($($arg: $ty),*) {
                    portable($($arg),*)
                }
                if std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512vl")
                    && std::is_x86_feature_detected!("avx2")
                    && std::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU supports the features `avx512` was compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU supports the features `avx2_fma` was compiled for.
                    return unsafe { avx2_fma($($arg),*) };
                }
            }
            portable($($arg),*)
        }
    };
}

/// One attention head over one text.
pub(crate) struct AttentionJob<'a> {
    pub head: usize,
    /// First row of the text in the packed batch.
    pub start: usize,
    pub len: usize,
    /// `(len, head_dim)` output block.
    pub out: &'a mut [f32],
}

/// Register tile of the attention kernel: `TILE_ROWS` queries against `TILE_COLS` keys (or value
/// columns) at a time: 16 AVX-512 registers of accumulators, or four 4×16 passes of 8 AVX2
/// ones. Tiles let one load feed several multiply-adds; multiply-adds into a row held in memory
/// would stall on loads and stores.
const TILE_ROWS: usize = 8;
const TILE_COLS: usize = 32;

simd_kernel! {
    /// softmax(q k^T / sqrt(d)) v for one head of one text, reading the projections out of the
    /// packed `(tokens, 3 * hidden)` qkv matrix and adding their biases on the way.
    pub(crate) fn attend_one(
        qkv: &[f32],
        bias: &[f32],
        hidden: usize,
        head_dim: usize,
        job: AttentionJob<'_>,
    ) {
        let AttentionJob { head, start, len, out } = job;
        // Sizes rounded up to whole tiles; the padding is zeros and never reaches `out`.
        let rows = len.next_multiple_of(TILE_ROWS);
        let cols = len.next_multiple_of(TILE_COLS);
        let dims = head_dim.next_multiple_of(TILE_COLS);
        let scale = 1.0 / (head_dim as f32).sqrt();
        // Where this head's query, key and value columns start in a row of `qkv`.
        let q_at = head * head_dim;
        let (k_at, v_at) = (hidden + q_at, 2 * hidden + q_at);

        // Queries (pre-scaled) as (rows, head_dim); keys transposed to (head_dim, cols) so a tile
        // of scores reads contiguous keys; values as (cols, dims).
        let mut queries = vec![0.0f32; rows * head_dim];
        let mut keys_t = vec![0.0f32; head_dim * cols];
        let mut values = vec![0.0f32; cols * dims];
        for t in 0..len {
            let row = &qkv[(start + t) * 3 * hidden..(start + t + 1) * 3 * hidden];
            let part = |at: usize| row[at..at + head_dim].iter().zip(&bias[at..at + head_dim]);
            let query = &mut queries[t * head_dim..(t + 1) * head_dim];
            for (q, (&x, &b)) in query.iter_mut().zip(part(q_at)) {
                *q = (x + b) * scale;
            }
            let value = &mut values[t * dims..t * dims + head_dim];
            for (v, (&x, &b)) in value.iter_mut().zip(part(v_at)) {
                *v = x + b;
            }
            for (d, (&x, &b)) in part(k_at).enumerate() {
                keys_t[d * cols + t] = x + b;
            }
        }

        // Scores: (rows, cols) = queries · keys_t, tile by tile.
        let mut scores = vec![0.0f32; rows * cols];
        for i in (0..rows).step_by(TILE_ROWS) {
            for j in (0..cols).step_by(TILE_COLS) {
                let queries = &queries[i * head_dim..];
                let tile = product_tile(queries, head_dim, &keys_t[j..], cols, head_dim);
                for (r, tile_row) in tile.iter().enumerate() {
                    scores[(i + r) * cols + j..][..TILE_COLS].copy_from_slice(tile_row);
                }
            }
        }
        // Probabilities over the real keys; padding columns become 0 and so drop out below.
        for row in scores.chunks_exact_mut(cols) {
            let (real, padding) = row.split_at_mut(len);
            softmax_in_place(real);
            padding.fill(0.0);
        }

        // Context: (rows, dims) = probabilities · values, tile by tile; real rows go to `out`.
        for i in (0..rows).step_by(TILE_ROWS) {
            for c in (0..dims).step_by(TILE_COLS) {
                let tile = product_tile(&scores[i * cols..], cols, &values[c..], dims, len);
                let width = TILE_COLS.min(head_dim - c);
                for (r, tile_row) in tile.iter().enumerate().take(len.saturating_sub(i)) {
                    out[(i + r) * head_dim + c..][..width].copy_from_slice(&tile_row[..width]);
                }
            }
        }
    }
}

simd_kernel! {
    /// `x = layer_norm(x + bias + residual)` for whole rows of `bias.len()` values, in place.
    pub(crate) fn add_and_norm_rows(
        x: &mut [f32],
        bias: &[f32],
        residual: &[f32],
        norm: &LayerNorm,
    ) {
        let width = bias.len();
        for (out, residual) in x.chunks_exact_mut(width).zip(residual.chunks_exact(width)) {
            for ((o, &b), &r) in out.iter_mut().zip(bias).zip(residual) {
                *o = *o + b + r;
            }
            let mean = sum(out) / width as f32;
            out.iter_mut().for_each(|o| *o -= mean);
            let variance = sum_of_squares(out) / width as f32;
            let inv_std = 1.0 / (variance + norm.eps).sqrt();
            for ((o, &g), &b) in out.iter_mut().zip(&norm.gamma).zip(&norm.beta) {
                *o = (*o * inv_std).mul_add(g, b);
            }
        }
    }
}

simd_kernel! {
    /// `x = gelu(x + bias)` with the exact (erf) GELU that BERT uses, in place.
    pub(crate) fn bias_gelu_rows(x: &mut [f32], bias: &[f32]) {
        for out in x.chunks_exact_mut(bias.len()) {
            for (o, &b) in out.iter_mut().zip(bias) {
                let v = *o + b;
                *o = 0.5 * v * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2));
            }
        }
    }
}

type Tile = [[f32; TILE_COLS]; TILE_ROWS];

/// One tile of a matrix product: `tile[r][c] = Σ_d a[r * a_stride + d] * b[d * b_stride + c]`
/// for `d < depth`. Written with explicit vector instructions where available, because the
/// compiler does not keep a tile of accumulators in registers on its own.
#[inline(always)]
fn product_tile(a: &[f32], a_stride: usize, b: &[f32], b_stride: usize, depth: usize) -> Tile {
    if depth == 0 {
        return [[0.0; TILE_COLS]; TILE_ROWS];
    }
    // These bounds make every read below valid, including the unchecked ones in `avx512` and
    // `avx2`.
    assert!(a.len() >= (TILE_ROWS - 1) * a_stride + depth);
    assert!(b.len() >= (depth - 1) * b_stride + TILE_COLS);
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512 F; the slices are long enough (asserted above).
            return unsafe { avx512::product_tile(a, a_stride, b, b_stride, depth) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            let mut tile = [[0.0f32; TILE_COLS]; TILE_ROWS];
            for (r, rows) in tile.chunks_exact_mut(avx2::ROWS).enumerate() {
                for c in 0..TILE_COLS / avx2::COLS {
                    let (a, b) = (&a[r * avx2::ROWS * a_stride..], &b[c * avx2::COLS..]);
                    // SAFETY: the CPU has AVX2 and FMA; the sub-tile's reads lie inside the
                    // tile's (asserted above).
                    let part = unsafe { avx2::product_tile(a, a_stride, b, b_stride, depth) };
                    for (row, part) in rows.iter_mut().zip(&part) {
                        row[c * avx2::COLS..][..avx2::COLS].copy_from_slice(part);
                    }
                }
            }
            return tile;
        }
    }
    let mut tile = [[0.0f32; TILE_COLS]; TILE_ROWS];
    for d in 0..depth {
        let b_row = &b[d * b_stride..][..TILE_COLS];
        for (r, tile_row) in tile.iter_mut().enumerate() {
            let x = a[r * a_stride + d];
            for (acc, &y) in tile_row.iter_mut().zip(b_row) {
                *acc = x.mul_add(y, *acc);
            }
        }
    }
    tile
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Tile, TILE_COLS, TILE_ROWS};
    use std::arch::x86_64::*;

    /// [`super::product_tile`] in AVX-512: the 8x32 tile lives in sixteen 16-lane registers;
    /// each step of `d` loads one row of `b` (two registers) and broadcasts eight values of `a`.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, and the slices must be as long as
    /// [`super::product_tile`] asserts.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn product_tile(
        a: &[f32],
        a_stride: usize,
        b: &[f32],
        b_stride: usize,
        depth: usize,
    ) -> Tile {
        const _: () = assert!(TILE_ROWS == 8 && TILE_COLS == 32);
        let (a, b) = (a.as_ptr(), b.as_ptr());
        let mut acc = [[_mm512_setzero_ps(); 2]; TILE_ROWS];
        for d in 0..depth {
            // SAFETY (all reads): within the bounds the caller asserted.
            let b_row = unsafe { b.add(d * b_stride) };
            let (b_lo, b_hi) = unsafe { (_mm512_loadu_ps(b_row), _mm512_loadu_ps(b_row.add(16))) };
            for (r, acc_row) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(unsafe { *a.add(r * a_stride + d) });
                acc_row[0] = _mm512_fmadd_ps(x, b_lo, acc_row[0]);
                acc_row[1] = _mm512_fmadd_ps(x, b_hi, acc_row[1]);
            }
        }
        let mut tile = [[0.0f32; TILE_COLS]; TILE_ROWS];
        for (row, acc_row) in tile.iter_mut().zip(&acc) {
            // SAFETY: each row has 32 floats.
            unsafe {
                _mm512_storeu_ps(row.as_mut_ptr(), acc_row[0]);
                _mm512_storeu_ps(row.as_mut_ptr().add(16), acc_row[1]);
            }
        }
        tile
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// The sub-tile this kernel computes; [`super::product_tile`] runs it four times per tile.
    pub(super) const ROWS: usize = 4;
    pub(super) const COLS: usize = 16;

    /// A 4x16 block of [`super::product_tile`] in AVX2: it lives in eight 8-lane registers;
    /// each step of `d` loads one row of `b` (two registers) and broadcasts four values of `a`.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA, and the slices must hold 4 rows of `a` and `depth`
    /// rows of 16 values of `b`, as [`super::product_tile`] asserts for the whole tile.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn product_tile(
        a: &[f32],
        a_stride: usize,
        b: &[f32],
        b_stride: usize,
        depth: usize,
    ) -> [[f32; COLS]; ROWS] {
        let (a, b) = (a.as_ptr(), b.as_ptr());
        let mut acc = [[_mm256_setzero_ps(); 2]; ROWS];
        for d in 0..depth {
            // SAFETY (all reads): within the bounds the caller asserted.
            let b_row = unsafe { b.add(d * b_stride) };
            let (b_lo, b_hi) = unsafe { (_mm256_loadu_ps(b_row), _mm256_loadu_ps(b_row.add(8))) };
            for (r, acc_row) in acc.iter_mut().enumerate() {
                let x = _mm256_set1_ps(unsafe { *a.add(r * a_stride + d) });
                acc_row[0] = _mm256_fmadd_ps(x, b_lo, acc_row[0]);
                acc_row[1] = _mm256_fmadd_ps(x, b_hi, acc_row[1]);
            }
        }
        let mut tile = [[0.0f32; COLS]; ROWS];
        for (row, acc_row) in tile.iter_mut().zip(&acc) {
            // SAFETY: each row has 16 floats.
            unsafe {
                _mm256_storeu_ps(row.as_mut_ptr(), acc_row[0]);
                _mm256_storeu_ps(row.as_mut_ptr().add(8), acc_row[1]);
            }
        }
        tile
    }
}

/// Softmax over `x`, in place.
#[inline(always)]
fn softmax_in_place(x: &mut [f32]) {
    let max = max(x);
    x.iter_mut().for_each(|v| *v = exp(*v - max));
    let inv = 1.0 / sum(x);
    x.iter_mut().for_each(|v| *v *= inv);
}

/// Sum with eight running partial sums, which the compiler can keep in one vector register
/// (a single running sum would force it to add one number at a time).
#[inline(always)]
fn sum(x: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for chunk in &mut chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += v;
        }
    }
    lanes.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

/// Largest value, vectorised like [`sum`].
#[inline(always)]
fn max(x: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut chunks = x.chunks_exact(8);
    for chunk in &mut chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = if v > *lane { v } else { *lane };
        }
    }
    let rest = chunks.remainder().iter().copied();
    lanes
        .into_iter()
        .chain(rest)
        .fold(f32::NEG_INFINITY, f32::max)
}

/// Sum of squares, vectorised like [`sum`].
#[inline(always)]
fn sum_of_squares(x: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for chunk in &mut chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = v.mul_add(v, *lane);
        }
    }
    lanes.iter().sum::<f32>() + chunks.remainder().iter().map(|v| v * v).sum::<f32>()
}

/// `e^x` to within 2 ulp for x ≤ 88, without branches so the compiler can vectorise loops that
/// call it (the standard library's `exp` is a scalar libm call). Tiny results flush towards
/// 1e-38 instead of 0, which is immaterial next to the 1 every softmax row contains.
#[inline(always)]
fn exp(x: f32) -> f32 {
    // e^x = 2^n * e^r with n = round(x / ln 2) and |r| <= ln(2) / 2.
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    // ln 2 split in two so that n * LN2_HI is exact (Cody and Waite).
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, x));
    // Taylor series of e^r to r^7/7!: relative error below 2e-8 on |r| <= 0.35.
    let mut p: f32 = 1.0 / 5040.0;
    p = p.mul_add(r, 1.0 / 720.0);
    p = p.mul_add(r, 1.0 / 120.0);
    p = p.mul_add(r, 1.0 / 24.0);
    p = p.mul_add(r, 1.0 / 6.0);
    p = p.mul_add(r, 0.5);
    p = p.mul_add(r, 1.0);
    p = p.mul_add(r, 1.0);
    // 2^n, built from its exponent bits: adding 2^23 puts the integer n + 127 (1..=254 after
    // clamping) in the low mantissa bits, and the shift moves it into the exponent. (`n as i32`
    // would do, but its saturating conversion does not vectorise.)
    let biased = (n + (127.0 + 8_388_608.0)).to_bits();
    p * f32::from_bits(biased << 23)
}

/// The error function to within 1.5e-7 (Abramowitz and Stegun 7.1.26), branch-free like [`exp`].
#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / 0.327_591_1f32.mul_add(a, 1.0);
    let mut p = 1.061_405_4f32;
    p = p.mul_add(t, -1.453_152);
    p = p.mul_add(t, 1.421_413_8);
    p = p.mul_add(t, -0.284_496_72);
    p = p.mul_add(t, 0.254_829_6);
    let y = 1.0 - p * t * exp(-a * a);
    y.copysign(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each vector kernel of `product_tile` against plain arithmetic, on odd strides and depths.
    #[test]
    fn product_tile_kernels_agree() {
        let (a_stride, b_stride, depth) = (41, 47, 37);
        let value = |i: usize| ((i * 7919) % 113) as f32 / 56.0 - 1.0;
        let a: Vec<f32> = (0..TILE_ROWS * a_stride).map(value).collect();
        let b: Vec<f32> = (0..depth * b_stride).map(|i| value(i + 5)).collect();
        let mut expected = [[0.0f32; TILE_COLS]; TILE_ROWS];
        for (r, row) in expected.iter_mut().enumerate() {
            for (c, e) in row.iter_mut().enumerate() {
                *e = (0..depth)
                    .map(|d| a[r * a_stride + d] * b[d * b_stride + c])
                    .sum();
            }
        }
        let close = |tile: &Tile, kernel: &str| {
            for (got, want) in tile.iter().flatten().zip(expected.iter().flatten()) {
                assert!((got - want).abs() < 1e-4, "{kernel}: {got} vs {want}");
            }
        };
        close(
            &product_tile(&a, a_stride, &b, b_stride, depth),
            "dispatched",
        );
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512 F; the slices are those asserted above.
                close(
                    &unsafe { avx512::product_tile(&a, a_stride, &b, b_stride, depth) },
                    "avx512",
                );
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU has AVX2 and FMA; the sub-tile at (1, 1) lies inside `a`, `b`.
                let part = unsafe {
                    avx2::product_tile(
                        &a[avx2::ROWS * a_stride..],
                        a_stride,
                        &b[avx2::COLS..],
                        b_stride,
                        depth,
                    )
                };
                for (r, row) in part.iter().enumerate() {
                    let want = &expected[avx2::ROWS + r][avx2::COLS..];
                    for (got, want) in row.iter().zip(want) {
                        assert!((got - want).abs() < 1e-4, "avx2: {got} vs {want}");
                    }
                }
            }
        }
    }

    #[test]
    fn fast_math_is_accurate() {
        for i in -2000..=2000 {
            let x = i as f32 * 0.01;
            let exp_error = (exp(x) - x.exp()).abs() / x.exp();
            assert!(exp_error < 3e-7, "exp({x}) off by {exp_error}");
        }
        // Reference erf values (from mpmath).
        let known = [
            (0.5f32, 0.520_499_9f32),
            (1.0, 0.842_700_8),
            (-2.0, -0.995_322_3),
        ];
        for (x, expected) in known {
            assert!((erf(x) - expected).abs() < 3e-7, "erf({x})");
        }
        assert!(erf(0.0).abs() < 2e-7);
    }
}
