//! Row-wise int8 quantization ([`crate::RowFormat::Int8`]): each row's bytes, scale and
//! bias, computed so that no finite row overflows or decodes to NaN.

/// Quantizes one row to bytes, four to a word of `out`, and returns its (scale, bias):
/// `bias` the row's minimum, `scale` its range / 255 rounded *up* to an f32 (so that
/// `255 * scale` covers the range even where the scale is subnormal and has few bits),
/// `q = round((x - bias) / scale)`. See [`crate::RowLayout::encode_rows`] for the rows where that
/// stops being exact: a range past what `q * scale` can hold saturates, a constant row keeps
/// the sign of a zero, a row with a non-finite value gets a NaN scale and bias (and zero
/// bytes). The common case is written to vectorise: eight running minima and maxima, then
/// one multiply, add and truncation per value.
pub(super) fn quantize_row(src: &[f32], out: &mut [u32]) -> (f32, f32) {
    let (mut lo, mut hi) = ([f32::INFINITY; 8], [f32::NEG_INFINITY; 8]);
    let mut finite = true;
    let mut chunks = src.chunks_exact(8);
    for c in &mut chunks {
        for k in 0..8 {
            lo[k] = if c[k] < lo[k] { c[k] } else { lo[k] };
            hi[k] = if c[k] > hi[k] { c[k] } else { hi[k] };
        }
    }
    for (k, &v) in chunks.remainder().iter().enumerate() {
        lo[k] = if v < lo[k] { v } else { lo[k] };
        hi[k] = if v > hi[k] { v } else { hi[k] };
    }
    for &v in src {
        finite &= v.is_finite();
    }
    let lo = lo.iter().fold(f32::INFINITY, |a, &b| a.min(b));
    let hi = hi.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    if !finite || src.is_empty() {
        out.fill(0);
        return (f32::NAN, f32::NAN);
    }
    let scale = int8_scale(lo, hi);
    if scale == 0.0 {
        // A constant row: every q = 0 gives it exactly. A scale of -0.0 keeps a -0.0 row
        // negative (q * -0.0 + -0.0 is -0.0, where +0.0 + -0.0 would be +0.0).
        out.fill(0);
        return (if lo.is_sign_negative() { -0.0 } else { 0.0 }, lo);
    }
    let inv = 1.0 / scale;
    if !inv.is_finite() || !(hi - lo).is_finite() {
        // A scale too small for a finite reciprocal, or a range past f32::MAX (whose
        // differences need f64): value by value, in f64.
        let q = |v: f32| int8_code((f64::from(v) - f64::from(lo)) / f64::from(scale));
        quantize_with(src, out, q);
        return (scale, lo);
    }
    // f32::max / min return the other operand for NaN (clamp would pass NaN on), so `t` is
    // in 0..=255 whatever (v - lo) * inv is, and the cast truncates it to round-to-nearest.
    #[allow(clippy::manual_clamp)]
    quantize_with(src, out, |v| {
        ((v - lo) * inv + 0.5).max(0.0).min(255.0) as u32
    });
    (scale, lo)
}

/// The int8 scale of a finite row spanning `lo..=hi`: `(hi - lo) / 255` rounded up to an
/// f32, at most the largest scale whose `255 * scale` is finite (a wider range saturates).
fn int8_scale(lo: f32, hi: f32) -> f32 {
    // The largest f32 s with 255 * s <= f32::MAX in f32 arithmetic: the decoded top code
    // must not overflow. (255 * s is exact in f64: 8 + 24 bits.)
    let mut cap = (f64::from(f32::MAX) / 255.0) as f32;
    while f64::from(cap) * 255.0 > f64::from(f32::MAX) {
        cap = cap.next_down();
    }
    // In f64 the range of two finite f32s is finite and /255 loses at most half an f64 ulp.
    let exact = (f64::from(hi) - f64::from(lo)) / 255.0;
    let mut scale = exact as f32;
    if f64::from(scale) < exact {
        scale = scale.next_up();
    }
    scale = scale.min(cap);
    // The top code decodes to bias + 255 * scale: rounded up, that can pass f32::MAX for a
    // row whose maximum is near it. Shrink the scale by ulps until it does not (the top
    // values then lose an ulp or so, inside the bound).
    while scale > 0.0 && f64::from(lo) + 255.0 * f64::from(scale) > f64::from(f32::MAX) {
        scale = scale.next_down();
    }
    scale
}

/// `round(t)` as an int8 code: NaN and everything below 0 give 0, everything above 255
/// gives 255 (a saturated row's top).
#[allow(clippy::manual_clamp)]
fn int8_code(t: f64) -> u32 {
    // f64::max / min return the other operand for NaN (clamp would pass NaN on), so the
    // cast sees 0..=255.
    (t + 0.5).max(0.0).min(255.0) as u32
}

/// Writes `q(v)` for every value of `src` into the bytes of `out`, four to a word.
fn quantize_with(src: &[f32], out: &mut [u32], q: impl Fn(f32) -> u32) {
    let mut quads = src.chunks_exact(4);
    for (d, c) in out.iter_mut().zip(&mut quads) {
        *d = q(c[0]) | q(c[1]) << 8 | q(c[2]) << 16 | q(c[3]) << 24;
    }
    if let Some(d) = out.get_mut(src.len() / 4) {
        *d = quads
            .remainder()
            .iter()
            .enumerate()
            .fold(0, |w, (b, &v)| w | q(v) << (8 * b));
    }
}

#[cfg(test)]
mod tests {
    use crate::gpu::{RowFormat, RowLayout};

    /// Encodes and decodes one int8 row; returns the decoded values and the row's scale.
    fn int8_round_trip(row: &[f32]) -> (Vec<f32>, f32, f32) {
        let l = RowLayout::new(row.len(), RowFormat::Int8).unwrap();
        let mut words = vec![0u32; l.words_per_row()];
        l.encode_rows(row, &mut words);
        let mut back = vec![0f32; row.len()];
        l.decode_rows(&words, &mut back);
        let n = words.len();
        (
            back,
            f32::from_bits(words[n - 2]),
            f32::from_bits(words[n - 1]),
        )
    }

    /// The documented bound: half a step plus the rounding of the f32 multiply-add.
    fn assert_within_half_step(row: &[f32]) {
        let (back, scale, bias) = int8_round_trip(row);
        assert!(scale.is_finite() && scale >= 0.0, "{row:?}: scale {scale}");
        for (&x, &d) in row.iter().zip(&back) {
            let ulps = 2.0 * f64::from(f32::EPSILON) * f64::from(x.abs().max(bias.abs()));
            let tol = f64::from(scale) / 2.0 + ulps + f64::from(f32::from_bits(1));
            let err = (f64::from(x) - f64::from(d)).abs();
            assert!(
                d.is_finite() && err <= tol,
                "{row:?}: {x:e} decoded {d:e} (error {err:e}, bound {tol:e}, scale {scale:e})"
            );
        }
    }

    /// A small deterministic generator (the shared test one lives outside the library).
    fn next(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn int8_rows_at_the_ends_of_f32_neither_overflow_nor_turn_nan() {
        let max = f32::MAX;
        let cases: &[&[f32]] = &[
            &[-3e38, 3e38],
            &[-max, max],
            &[max, -max, 0.0, 1.0],
            &[-max, 1e38, -1e-45, 3.0],
            &[1e38, -3e38, 2e38],
        ];
        for row in cases {
            let (back, scale, bias) = int8_round_trip(row);
            assert!(scale.is_finite() && bias.is_finite(), "{row:?}");
            assert!(
                (255.0 * scale).is_finite(),
                "{row:?}: the top code overflows"
            );
            let top = 255.0 * scale + bias;
            assert!(top.is_finite(), "{row:?}: the top code decodes to {top}");
            for (&x, &d) in row.iter().zip(&back) {
                assert!(d.is_finite(), "{row:?}: {x:e} decoded {d:e}");
                // Saturated rows: values past the top decode to the top; the rest as usual.
                let want = x.min(top);
                let tol = f64::from(scale) / 2.0 + 2.0 * f64::from(f32::EPSILON) * f64::from(max);
                let err = (f64::from(want) - f64::from(d)).abs();
                assert!(err <= tol, "{row:?}: {x:e} decoded {d:e}, top {top:e}");
            }
        }
        // Ranges up to f32::MAX are not saturated.
        for row in [
            [0.0, max],
            [-max, 0.0],
            [-1.5e38, 1.5e38],
            [max, max / 2.0],
            [max, 1e38],
            [3e38, max],
        ] {
            assert_within_half_step(&row);
        }
    }

    #[test]
    fn int8_rows_with_infinities_or_nan_decode_as_nan() {
        for row in [
            [1.0, f32::INFINITY, 2.0],
            [f32::NEG_INFINITY, 0.0, 0.0],
            [f32::NAN, 1.0, -1.0],
            [f32::INFINITY, f32::NEG_INFINITY, f32::NAN],
        ] {
            let (back, scale, bias) = int8_round_trip(&row);
            assert!(scale.is_nan() && bias.is_nan(), "{row:?}");
            assert!(back.iter().all(|v| v.is_nan()), "{row:?} -> {back:?}");
        }
    }

    #[test]
    fn int8_subnormal_rows_stay_within_half_a_step() {
        let tiny = f32::from_bits(1);
        let cases: Vec<Vec<f32>> = vec![
            vec![0.0, tiny, 2.0 * tiny],
            vec![-tiny, tiny],
            vec![0.0, 71.0 * tiny, 3.0 * tiny, 40.0 * tiny],
            vec![f32::MIN_POSITIVE, -f32::MIN_POSITIVE, 0.0],
            vec![3e-39, 1e-40, 2.5e-39, -1e-39],
            vec![1e-38, 1.2e-38, 1.1e-38],
        ];
        for row in &cases {
            assert_within_half_step(row);
        }
        // Random rows whose values and ranges are subnormal or just above.
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            let dim = 1 + (next(&mut s) % 19) as usize;
            let top = 1 + (next(&mut s) % 0x00ff_ffff) as u32; // bits of the largest magnitude
            let row: Vec<f32> = (0..dim)
                .map(|_| {
                    let bits = (next(&mut s) as u32) % top;
                    let v = f32::from_bits(bits);
                    if next(&mut s) & 1 == 0 {
                        -v
                    } else {
                        v
                    }
                })
                .collect();
            assert_within_half_step(&row);
        }
    }

    #[test]
    fn int8_rows_of_any_magnitude_stay_within_half_a_step() {
        let mut s = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..5000 {
            let dim = 1 + (next(&mut s) % 37) as usize;
            // A random exponent for the row, then values of mixed sign around it: ranges
            // from subnormal to about f32::MAX / 2.
            let e = (next(&mut s) % 250) as i32 - 148;
            let row: Vec<f32> = (0..dim)
                .map(|_| {
                    let m = (next(&mut s) % 2_000_001) as f64 / 1_000_000.0 - 1.0;
                    (m * 2f64.powi(e).min(f64::from(f32::MAX) / 2.0)) as f32
                })
                .collect();
            assert_within_half_step(&row);
        }
    }

    #[test]
    fn int8_constant_rows_decode_exactly_with_their_sign() {
        for v in [
            0.0f32,
            -0.0,
            1.5,
            -7.25,
            f32::MAX,
            -f32::MAX,
            f32::from_bits(1),
        ] {
            let (back, _, _) = int8_round_trip(&[v; 5]);
            for d in back {
                assert_eq!(d.to_bits(), v.to_bits(), "constant row of {v:e}");
            }
        }
    }
}
