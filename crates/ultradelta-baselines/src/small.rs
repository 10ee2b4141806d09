//! The small dense factorizations of [`crate::top_singular`], in plain sequential f64 loops: an orthonormal basis
//! of a tall matrix's columns and the SVD of a matrix with few columns. Every sum runs in a fixed order with no
//! fused multiply-add, and the only functions used are IEEE-exact (`sqrt`, division), so the results are the same
//! bits on every CPU, OpenBLAS kernel, libm and thread count. The matrices are at most a few dozen columns wide
//! (the sketch's width), so this costs microseconds to milliseconds beside the products with Δ.

use ndarray::{Array1, Array2, ArrayView2, Axis};

/// Dot product of two equal-length slices, summed in index order.
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut s = 0.0;
    for (x, y) in a.iter().zip(b) {
        s += x * y;
    }
    s
}

/// Columns of `a` (`m × n`) as `n` contiguous vectors of `m` entries.
fn columns(a: ArrayView2<'_, f64>) -> Vec<Vec<f64>> {
    a.axis_iter(Axis(1)).map(|c| c.to_vec()).collect()
}

/// `n` column vectors of `m` entries back into an `m × n` matrix.
fn from_columns(cols: &[Vec<f64>], m: usize) -> Array2<f64> {
    Array2::from_shape_fn((m, cols.len()), |(i, j)| cols[j][i])
}

/// An orthonormal basis of the column space of `y` (`m × n`, `n ≤ m`): modified Gram–Schmidt applied twice
/// ("twice is enough": the second pass removes what rounding left of the first), columns in order. A column that
/// the earlier ones already span (its norm falls below 1e-12 of what it was) becomes zero, so the result has
/// orthonormal or zero columns and spans the same space; the range finder only needs the space.
pub(crate) fn orthonormal_columns(y: ArrayView2<'_, f64>) -> Array2<f64> {
    let m = y.nrows();
    let mut q = columns(y);
    for j in 0..q.len() {
        let (done, rest) = q.split_at_mut(j);
        let col = &mut rest[0];
        let before = dot(col, col).sqrt();
        for _pass in 0..2 {
            for prev in done.iter() {
                // col −= c·prev (adding −c·prev is the same bits).
                let c = dot(prev, col);
                super::axpy(col, -c, prev);
            }
        }
        let norm = dot(col, col).sqrt();
        if norm > 0.0 && norm > 1e-12 * before {
            col.iter_mut().for_each(|x| *x /= norm);
        } else {
            col.iter_mut().for_each(|x| *x = 0.0);
        }
    }
    from_columns(&q, m)
}

/// `a · b` (`m × k` times `k × n`), each entry summed over k in order.
pub(crate) fn product(a: ArrayView2<'_, f64>, b: ArrayView2<'_, f64>) -> Array2<f64> {
    debug_assert_eq!(a.ncols(), b.nrows());
    Array2::from_shape_fn((a.nrows(), b.ncols()), |(i, j)| {
        let mut s = 0.0;
        for t in 0..a.ncols() {
            s += a[[i, t]] * b[[t, j]];
        }
        s
    })
}

/// Thin SVD of `a` (`m × n`, `n ≤ m`): an orthonormal basis `Q` of the columns ([`orthonormal_columns`]), the
/// `n × n` matrix `R = Qᵀ·a`, whose SVD by one-sided Jacobi rotations (Hestenes) is cheap, and `u = Q·u_R`. Jacobi
/// rotates the columns in pairs until every pair is orthogonal to working precision; the singular values are then
/// the columns' norms. Returns `(u, s, vt)` with `u` `m × n`, `s` decreasing, `vt` `n × n`, and each pair's sign
/// fixed so that the largest-magnitude entry of its right vector is positive (the first such entry on a tie): the
/// result does not depend on how the rotations happened to leave the signs. A zero singular value gets a zero left
/// vector.
pub(crate) fn thin_svd(a: ArrayView2<'_, f64>) -> (Array2<f64>, Array1<f64>, Array2<f64>) {
    let q = orthonormal_columns(a);
    let r = product(q.t(), a);
    let (ur, s, vt) = jacobi_svd(r.view());
    (product(q.view(), ur.view()), s, vt)
}

/// One-sided Jacobi SVD of `a` (`m × n`, `n ≤ m`), as [`thin_svd`] describes; costs O(sweeps · n² · m), so
/// [`thin_svd`] gives it the square `R`.
fn jacobi_svd(a: ArrayView2<'_, f64>) -> (Array2<f64>, Array1<f64>, Array2<f64>) {
    let (m, n) = a.dim();
    debug_assert!(n <= m, "jacobi_svd wants at most as many columns as rows");
    let mut w = columns(a);
    // v's columns, one vector each, start as the identity.
    let mut v: Vec<Vec<f64>> = (0..n)
        .map(|j| (0..n).map(|i| if i == j { 1.0 } else { 0.0 }).collect())
        .collect();
    const MAX_SWEEPS: usize = 80;
    for _sweep in 0..MAX_SWEEPS {
        let mut rotated = false;
        for p in 0..n {
            for q in p + 1..n {
                let alpha = dot(&w[p], &w[p]);
                let beta = dot(&w[q], &w[q]);
                let gamma = dot(&w[p], &w[q]);
                if gamma == 0.0 || gamma.abs() <= f64::EPSILON * (alpha * beta).sqrt() {
                    continue;
                }
                rotated = true;
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                rotate(&mut w, p, q, c, s);
                rotate(&mut v, p, q, c, s);
            }
        }
        if !rotated {
            break;
        }
    }
    let norms: Vec<f64> = w.iter().map(|c| dot(c, c).sqrt()).collect();
    let mut order: Vec<usize> = (0..n).collect();
    // Decreasing, ties in column order (a stable sort on the exact values).
    order.sort_by(|&i, &j| norms[j].total_cmp(&norms[i]));
    let mut u = Array2::zeros((m, n));
    let mut vt = Array2::zeros((n, n));
    let mut s = Array1::zeros(n);
    for (k, &j) in order.iter().enumerate() {
        let big = v[j]
            .iter()
            .enumerate()
            .fold((0, 0.0f64), |(bi, bv), (i, &x)| {
                if x.abs() > bv {
                    (i, x.abs())
                } else {
                    (bi, bv)
                }
            })
            .0;
        let sign = if v[j][big] < 0.0 { -1.0 } else { 1.0 };
        s[k] = norms[j];
        for i in 0..n {
            vt[[k, i]] = sign * v[j][i];
        }
        if norms[j] > 0.0 {
            for i in 0..m {
                u[[i, k]] = sign * w[j][i] / norms[j];
            }
        }
    }
    (u, s, vt)
}

/// Rotates columns `p` and `q` of `cols`: `(p, q) ← (c·p − s·q, s·p + c·q)`.
fn rotate(cols: &mut [Vec<f64>], p: usize, q: usize, c: f64, s: f64) {
    let (lo, hi) = cols.split_at_mut(q);
    for (x, y) in lo[p].iter_mut().zip(hi[0].iter_mut()) {
        let (a, b) = (*x, *y);
        *x = c * a - s * b;
        *y = s * a + c * b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pseudo-random entries in [−1, 1) (a hash of the position and `salt`), full rank in practice.
    fn matrix(m: usize, n: usize, salt: u64) -> Array2<f64> {
        Array2::from_shape_fn((m, n), |(i, j)| {
            let mut h = (i as u64) << 32 ^ (j as u64) ^ salt << 56;
            for _ in 0..3 {
                h = (h ^ (h >> 31)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            }
            (h >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        })
    }

    fn max_abs(a: &Array2<f64>) -> f64 {
        a.iter().fold(0.0f64, |m, &x| m.max(x.abs()))
    }

    #[test]
    fn orthonormal_columns_span_the_input_and_are_orthonormal() {
        let y = matrix(200, 12, 1);
        let q = orthonormal_columns(y.view());
        let gram = q.t().dot(&q);
        let off = max_abs(&(gram - Array2::<f64>::eye(12)));
        assert!(off < 1e-13, "{off}");
        // Projecting y onto the basis gives y back.
        let back = q.dot(&q.t().dot(&y));
        assert!(max_abs(&(back - &y)) < 1e-12 * max_abs(&y));
    }

    #[test]
    fn orthonormal_columns_zero_a_dependent_column() {
        let mut y = matrix(50, 4, 2);
        let c = &y.column(0) * 2.0 - y.column(1);
        y.column_mut(2).assign(&c);
        let q = orthonormal_columns(y.view());
        assert!(q.column(2).iter().all(|&x| x == 0.0));
        let gram = q.t().dot(&q);
        for (i, j) in [(0, 0), (1, 1), (3, 3)] {
            assert!((gram[[i, j]] - 1.0).abs() < 1e-13);
        }
        assert!((gram[[0, 3]]).abs() < 1e-13);
    }

    #[test]
    fn thin_svd_rebuilds_the_matrix_with_orthonormal_factors_and_fixed_signs() {
        for (m, n) in [(40, 7), (24, 24), (300, 24), (5, 1)] {
            let a = matrix(m, n, 3);
            let (u, s, vt) = thin_svd(a.view());
            assert!(
                s.windows(2).into_iter().all(|w| w[0] >= w[1]),
                "{m}x{n}: decreasing"
            );
            let back = u.dot(&Array2::from_diag(&s)).dot(&vt);
            assert!(max_abs(&(back - &a)) < 1e-12 * s[0], "{m}x{n}: rebuilds");
            assert!(
                max_abs(&(u.t().dot(&u) - Array2::<f64>::eye(n))) < 1e-12,
                "{m}x{n}: u"
            );
            assert!(
                max_abs(&(vt.dot(&vt.t()) - Array2::<f64>::eye(n))) < 1e-12,
                "{m}x{n}: v"
            );
            for row in vt.rows() {
                let big = row
                    .iter()
                    .fold(0.0f64, |b, &x| if x.abs() > b.abs() { x } else { b });
                assert!(big > 0.0, "{m}x{n}: sign");
            }
            // The signs do not depend on the input's: negating a column of a negates only that entry of v.
            let mut flipped = a.clone();
            flipped.column_mut(0).mapv_inplace(|x| -x);
            let (u2, s2, _) = thin_svd(flipped.view());
            assert_eq!(s.len(), s2.len());
            for (x, y) in s.iter().zip(&s2) {
                assert!((x - y).abs() <= 1e-12 * s[0]);
            }
            assert!(max_abs(&(u2.mapv(f64::abs) - u.mapv(f64::abs))) < 1e-9);
        }
    }

    #[test]
    fn thin_svd_of_a_rank_deficient_matrix_has_zero_values_and_zero_vectors() {
        let col = Array2::from_shape_fn((30, 1), |(i, _)| (i as f64 * 0.3).cos());
        let row = Array2::from_shape_fn((1, 5), |(_, j)| 1.0 + j as f64);
        let a = col.dot(&row);
        let (u, s, vt) = thin_svd(a.view());
        assert!(s[0] > 1.0);
        assert!(s.iter().skip(1).all(|&x| x < 1e-12 * s[0]));
        let back = u.dot(&Array2::from_diag(&s)).dot(&vt);
        assert!(max_abs(&(back - &a)) < 1e-12 * s[0]);
    }
}
