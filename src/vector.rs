//! Unit vectors: L2 normalisation and the dot product, the one place both
//! are written. Verify (two embeddings), identify (a query against the
//! index) and the index's own scan all score with [`similarity`], so the
//! same pair of faces gets the same number, bit for bit, whichever way it
//! is compared.
//!
//! - [`normalised`] accumulates the norm in `f64` and leaves a vector that
//!   is already of unit length (within a few `f32` ulps) untouched, so
//!   normalising twice (the model's output, then the index's insert)
//!   changes nothing.
//! - [`dot`] keeps sixteen independent partial sums, which lets the
//!   compiler vectorise it without reordering any one sum: the result
//!   depends only on the two slices, never on where they live.
//! - [`similarity`] is the dot product clamped to [-1, 1].

/// Why a vector cannot be normalised.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("vector cannot be normalised: norm is {norm}")]
pub struct NormError {
    /// The vector's norm (NaN, infinite, or about zero).
    pub norm: f64,
}

/// Norms within this of 1 are taken as unit already.
const UNIT_SLACK: f64 = 4.0 * f32::EPSILON as f64;

/// Smallest norm that can be normalised.
const MIN_NORM: f64 = 1e-12;

/// The L2 norm of `v`, accumulated in `f64`.
pub fn norm(v: &[f32]) -> f64 {
    v.iter()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt()
}

/// Scales `v` to unit length in place (unchanged when it is of unit length
/// already); an error for NaN, infinite or zero vectors.
pub fn normalise(v: &mut [f32]) -> Result<(), NormError> {
    let n = norm(v);
    if !n.is_finite() || n < MIN_NORM {
        return Err(NormError { norm: n });
    }
    if (n - 1.0).abs() <= UNIT_SLACK {
        return Ok(());
    }
    v.iter_mut().for_each(|x| *x = (f64::from(*x) / n) as f32);
    Ok(())
}

/// A copy of `v` scaled to unit length (see [`normalise`]).
pub fn normalised(v: &[f32]) -> Result<Vec<f32>, NormError> {
    let mut out = v.to_vec();
    normalise(&mut out)?;
    Ok(out)
}

/// Dot product of two equally long slices (the shorter length if not).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 16];
    let (xa, xb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = xa
        .remainder()
        .iter()
        .zip(xb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in xa.zip(xb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Cosine similarity of two unit vectors: their dot product, clamped to
/// [-1, 1].
#[inline]
pub fn similarity(a: &[f32], b: &[f32]) -> f32 {
    dot(a, b).clamp(-1.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalising_twice_changes_nothing() {
        let mut v: Vec<f32> = (0..512).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        normalise(&mut v).unwrap();
        let once = v.clone();
        normalise(&mut v).unwrap();
        assert_eq!(v, once, "a unit vector is left as it is");
        assert!((norm(&v) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn bad_vectors_are_refused() {
        for v in [vec![0.0f32; 4], vec![f32::NAN, 1.0], vec![f32::INFINITY, 0.0]] {
            assert!(normalised(&v).is_err(), "{v:?}");
        }
        // Tiny but representable: still a direction.
        assert!(normalised(&[1e-9, 0.0]).is_ok());
    }

    #[test]
    fn dot_is_symmetric_and_matches_a_plain_sum() {
        let a: Vec<f32> = (0..515).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..515).map(|i| (i as f32 * 0.11).cos()).collect();
        assert_eq!(dot(&a, &b).to_bits(), dot(&b, &a).to_bits());
        let plain: f64 = a.iter().zip(&b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
        assert!((f64::from(dot(&a, &b)) - plain).abs() < 1e-3);
    }

    #[test]
    fn similarity_is_clamped() {
        let a = [1.0f32 + 1e-6, 0.0];
        assert_eq!(similarity(&a, &a), 1.0);
        let b = [-1.0f32 - 1e-6, 0.0];
        assert_eq!(similarity(&a, &b), -1.0);
    }
}
