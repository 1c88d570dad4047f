//! The dense linear algebra of the classic methods, through `faer`: the symmetric and
//! generalised symmetric eigenproblems, SVD, PCA bases and matrix square roots. Matrices are
//! `faer::Mat<f64>` with one sample per row.

use faer::{Mat, MatRef, Side};

use crate::{GraftError, Result};

fn failed(what: &str, reason: impl std::fmt::Debug) -> GraftError {
    GraftError::Data { path: "adapt".into(), reason: format!("{what} failed: {reason:?}") }
}

/// `n × d` row-major values → a matrix.
pub fn from_rows(x: &[f64], n: usize, d: usize) -> Mat<f64> {
    Mat::from_fn(n, d, |i, j| x[i * d + j])
}

/// Column means of `x` (one per feature).
pub fn col_means(x: MatRef<'_, f64>) -> Vec<f64> {
    let n = x.nrows().max(1) as f64;
    (0..x.ncols()).map(|j| (0..x.nrows()).map(|i| x[(i, j)]).sum::<f64>() / n).collect()
}

/// `x` with every column's mean subtracted.
pub fn centred(x: MatRef<'_, f64>) -> Mat<f64> {
    let m = col_means(x);
    Mat::from_fn(x.nrows(), x.ncols(), |i, j| x[(i, j)] - m[j])
}

/// Symmetric eigendecomposition: eigenvalues in decreasing order and their eigenvectors (as
/// columns, same order).
pub fn sym_eigen(a: MatRef<'_, f64>) -> Result<(Vec<f64>, Mat<f64>)> {
    let e = a.self_adjoint_eigen(Side::Lower).map_err(|e| failed("symmetric eigendecomposition", e))?;
    let n = a.nrows();
    let s = e.S().column_vector();
    let u = e.U();
    // faer sorts increasing; reverse.
    let values: Vec<f64> = (0..n).rev().map(|i| s[i]).collect();
    let vectors = Mat::from_fn(n, n, |i, j| u[(i, n - 1 - j)]);
    Ok((values, vectors))
}

/// The `k` leading eigenvectors of the generalised problem `b v = λ a v` (`a` symmetric
/// positive definite, `b` symmetric), largest λ first: with `a = L Lᵀ` (Cholesky), the
/// symmetric problem `L⁻¹ b L⁻ᵀ w = λ w`, then `v = L⁻ᵀ w`. Each returned vector has unit
/// Euclidean norm (as `scipy.linalg.eig` returns them). Also returns the λ.
pub fn generalized_top(b: MatRef<'_, f64>, a: MatRef<'_, f64>, k: usize) -> Result<(Vec<f64>, Mat<f64>)> {
    let n = a.nrows();
    let llt = a.llt(Side::Lower).map_err(|e| failed("Cholesky factorisation (is μ > 0?)", e))?;
    let l = llt.L();
    // c = L⁻¹ b L⁻ᵀ: solve L y = b, then L z = yᵀ (b symmetric, so (L⁻¹ b L⁻ᵀ) = L⁻¹ (L⁻¹ b)ᵀ).
    let mut y = b.to_owned();
    l.solve_lower_triangular_in_place(y.as_mut());
    let mut c = y.transpose().to_owned();
    l.solve_lower_triangular_in_place(c.as_mut());
    // Symmetrise what rounding broke.
    let c = Mat::from_fn(n, n, |i, j| 0.5 * (c[(i, j)] + c[(j, i)]));
    let (values, w) = sym_eigen(c.as_ref())?;
    let k = k.min(n);
    let mut v = w.subcols(0, k).to_owned();
    l.transpose().solve_upper_triangular_in_place(v.as_mut());
    normalise_columns(&mut v);
    Ok((values[..k].to_vec(), v))
}

/// Scales every column to unit Euclidean norm (a zero column stays zero).
pub fn normalise_columns(v: &mut Mat<f64>) {
    for j in 0..v.ncols() {
        let norm = (0..v.nrows()).map(|i| v[(i, j)] * v[(i, j)]).sum::<f64>().sqrt();
        if norm > 0.0 {
            for i in 0..v.nrows() {
                v[(i, j)] /= norm;
            }
        }
    }
}

/// Scales every row to unit Euclidean norm (a zero row stays zero).
pub fn normalise_rows(z: &mut Mat<f64>) {
    for i in 0..z.nrows() {
        let norm = (0..z.ncols()).map(|j| z[(i, j)] * z[(i, j)]).sum::<f64>().sqrt();
        if norm > 0.0 {
            for j in 0..z.ncols() {
                z[(i, j)] /= norm;
            }
        }
    }
}

/// The `d` leading principal directions of the rows of `x` (centred): a `features × d` matrix
/// with orthonormal columns, from the thin SVD of the centred data.
pub fn pca_basis(x: MatRef<'_, f64>, d: usize) -> Result<Mat<f64>> {
    let c = centred(x);
    let svd = c.thin_svd().map_err(|e| failed("SVD", e))?;
    let v = svd.V();
    let d = d.min(v.ncols());
    Ok(v.subcols(0, d).to_owned())
}

/// `a^p` for a symmetric positive semi-definite `a` (p = ½ or −½ here), through its
/// eigendecomposition; eigenvalues below `floor` are raised to it.
pub fn sym_power(a: MatRef<'_, f64>, p: f64, floor: f64) -> Result<Mat<f64>> {
    let (values, u) = sym_eigen(a)?;
    let n = a.nrows();
    let scaled = Mat::from_fn(n, n, |i, j| u[(i, j)] * values[j].max(floor).powf(p));
    Ok(&scaled * u.transpose())
}

/// Covariance of the rows of `x` (divided by n − 1).
pub fn covariance(x: MatRef<'_, f64>) -> Mat<f64> {
    let c = centred(x);
    let n = (x.nrows().max(2) - 1) as f64;
    let mut cov = c.transpose() * &c;
    for j in 0..cov.ncols() {
        for i in 0..cov.nrows() {
            cov[(i, j)] /= n;
        }
    }
    cov
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generalized_eigenvectors_solve_the_pencil() {
        // b v = λ a v for a random SPD a and symmetric b.
        let n = 6;
        let r = Mat::from_fn(n, n, |i, j| ((i * 7 + j * 3) % 11) as f64 / 11.0 - 0.4);
        let a = &r * r.transpose() + Mat::<f64>::identity(n, n);
        let s = Mat::from_fn(n, n, |i, j| ((i + j) % 5) as f64 - 2.0);
        let (lambda, v) = generalized_top(s.as_ref(), a.as_ref(), 3).unwrap();
        assert!(lambda[0] >= lambda[1] && lambda[1] >= lambda[2]);
        for k in 0..3 {
            let col = v.col(k);
            let lhs = &s * col;
            let rhs = &a * col;
            for i in 0..n {
                assert!((lhs[i] - lambda[k] * rhs[i]).abs() < 1e-8, "column {k}, row {i}");
            }
            let norm: f64 = (0..n).map(|i| col[i] * col[i]).sum();
            assert!((norm - 1.0).abs() < 1e-10);
        }
    }

    #[test]
    fn square_roots_multiply_back() {
        let r = Mat::from_fn(4, 4, |i, j| (i as f64 - j as f64).sin());
        let a = &r * r.transpose() + Mat::<f64>::identity(4, 4);
        let h = sym_power(a.as_ref(), 0.5, 0.0).unwrap();
        let hi = sym_power(a.as_ref(), -0.5, 0.0).unwrap();
        let back = &h * &h;
        let one = &h * &hi;
        for i in 0..4 {
            for j in 0..4 {
                assert!((back[(i, j)] - a[(i, j)]).abs() < 1e-9);
                assert!((one[(i, j)] - if i == j { 1.0 } else { 0.0 }).abs() < 1e-9);
            }
        }
    }
}
