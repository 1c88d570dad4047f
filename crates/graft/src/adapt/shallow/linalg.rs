//! The dense linear algebra of the classic methods: the symmetric and generalised symmetric
//! eigenproblems (Householder tridiagonalisation and the implicit QL algorithm of EISPACK's
//! `tql2`), Cholesky, SVD (one-sided Jacobi for the small matrices of GFK; the Gram
//! matrix's eigenvectors for PCA directions), PCA bases and matrix square roots. Matrices are
//! [`Mat`] with one sample per row.

use rayon::prelude::*;

use super::dense::{Mat, MatRef};
use crate::{GraftError, Result};

fn failed(what: &str, reason: impl std::fmt::Display) -> GraftError {
    GraftError::Data { path: "adapt".into(), reason: format!("{what} failed: {reason}") }
}

/// `n × d` row-major values → a matrix.
pub fn from_rows(x: &[f64], n: usize, d: usize) -> Mat<f64> {
    Mat::from_fn(n, d, |i, j| x[i * d + j])
}

/// Column means of `x` (one per feature).
pub fn col_means(x: MatRef<'_, f64>) -> Vec<f64> {
    let n = x.nrows().max(1) as f64;
    let mut m = vec![0.0; x.ncols()];
    for i in 0..x.nrows() {
        for (acc, v) in m.iter_mut().zip(x.row(i)) {
            *acc += v;
        }
    }
    m.iter_mut().for_each(|v| *v /= n);
    m
}

/// `x` with every column's mean subtracted.
pub fn centred(x: MatRef<'_, f64>) -> Mat<f64> {
    let m = col_means(x);
    Mat::from_fn(x.nrows(), x.ncols(), |i, j| x[(i, j)] - m[j])
}

/// Symmetric eigendecomposition: eigenvalues in decreasing order and their eigenvectors (as
/// columns, same order). `a` must be symmetric (both triangles are read).
pub fn sym_eigen(a: MatRef<'_, f64>) -> Result<(Vec<f64>, Mat<f64>)> {
    sym_eigen_top(a, a.nrows())
}

/// The `k` largest eigenvalues of the symmetric `a`, decreasing, and their eigenvectors as
/// columns. Householder tridiagonalisation (Golub & Van Loan, alg. 8.3.1), the implicit QL
/// algorithm on the tridiagonal matrix (EISPACK `tql2`), then the `k` wanted vectors mapped back
/// through the reflectors. Row-contiguous loops, split over threads for large matrices.
pub fn sym_eigen_top(a: MatRef<'_, f64>, k: usize) -> Result<(Vec<f64>, Mat<f64>)> {
    let n = a.nrows();
    if n != a.ncols() {
        return Err(failed("symmetric eigendecomposition", format!("the matrix is {}×{}, not square", n, a.ncols())));
    }
    let k = k.min(n);
    if n == 0 {
        return Ok((Vec::new(), Mat::zeros(0, 0)));
    }
    if (0..n).any(|i| a.row(i).iter().any(|v| !v.is_finite())) {
        return Err(failed("symmetric eigendecomposition", "the matrix has non-finite entries"));
    }
    let mut m: Vec<f64> = (0..n).flat_map(|i| a.row(i).iter().copied()).collect();
    let (mut d, mut e, reflectors) = tridiagonalize(&mut m, n);
    drop(m);
    // Rows of the tridiagonal matrix's eigenvectors, in decreasing order of their values.
    let (values, rows): (Vec<f64>, Vec<Vec<f64>>) = if k * 4 < n && n >= INVERSE_ITERATION_FROM {
        // A few of many: the values alone by QL (O(n²)), then each wanted vector by inverse
        // iteration on the tridiagonal matrix (O(n) each), instead of rotating all n vectors.
        let (d0, e0) = (d.clone(), e.clone());
        tql2(None, &mut d, &mut e)?;
        let mut values = d;
        values.sort_by(|x, y| y.total_cmp(x));
        values.truncate(k);
        let rows = tridiagonal_vectors(&d0, &e0, &values);
        (values, rows)
    } else {
        // w = Zᵀ: row r is the r-th eigenvector of the tridiagonal matrix.
        let mut w = vec![0.0; n * n];
        (0..n).for_each(|i| w[i * n + i] = 1.0);
        tql2(Some(&mut w), &mut d, &mut e)?;
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&x, &y| d[y].total_cmp(&d[x]));
        order.truncate(k);
        (order.iter().map(|&r| d[r]).collect(), order.iter().map(|&r| w[r * n..(r + 1) * n].to_vec()).collect())
    };
    // v = Q z with Q = H₀ H₁ ⋯: the last reflector first.
    let vectors: Vec<Vec<f64>> = rows
        .into_par_iter()
        .map(|mut z| {
            for (start, v, beta) in reflectors.iter().rev() {
                let tail = &mut z[*start..];
                let s = beta * v.iter().zip(tail.iter()).map(|(a, b)| a * b).sum::<f64>();
                tail.iter_mut().zip(v).for_each(|(t, vj)| *t -= s * vj);
            }
            z
        })
        .collect();
    Ok((values, Mat::from_fn(n, k, |i, j| vectors[j][i])))
}

/// Matrices from this size on get their few wanted vectors by inverse iteration.
const INVERSE_ITERATION_FROM: usize = 400;

/// Eigenvectors of the symmetric tridiagonal matrix (diagonal `d`, `e[i]` coupling `i − 1` and
/// `i`) for the eigenvalues `values` (decreasing), by inverse iteration with a pivoted LU of
/// `T − λI` (as LAPACK's `dstein`): four solves from a fixed start vector, each vector
/// orthogonalised against the earlier ones of its cluster (values closer than 10⁻³‖T‖).
fn tridiagonal_vectors(d: &[f64], e: &[f64], values: &[f64]) -> Vec<Vec<f64>> {
    let n = d.len();
    let norm = (0..n).map(|i| d[i].abs() + e[i].abs() + e.get(i + 1).map_or(0.0, |x| x.abs())).fold(0.0, f64::max).max(f64::MIN_POSITIVE);
    let tiny = f64::EPSILON * norm;
    let mut out: Vec<Vec<f64>> = Vec::with_capacity(values.len());
    let mut cluster_start = 0;
    for (j, &lambda) in values.iter().enumerate() {
        if j > 0 && values[j - 1] - lambda > 1e-3 * norm {
            cluster_start = j;
        }
        let lu = TridiagonalLu::new(d, e, lambda, tiny);
        let mut x: Vec<f64> = (0..n).map(|i| (crate::zoo::seeded::splitmix64((j * n + i) as u64) >> 11) as f64 / (1u64 << 53) as f64 - 0.5).collect();
        for _ in 0..4 {
            lu.solve(&mut x);
            for _ in 0..2 {
                for prev in &out[cluster_start..j] {
                    let dot: f64 = prev.iter().zip(&x).map(|(a, b)| a * b).sum();
                    x.iter_mut().zip(prev).for_each(|(xi, p)| *xi -= dot * p);
                }
            }
            let len = x.iter().map(|v| v * v).sum::<f64>().sqrt();
            if len > 0.0 && len.is_finite() {
                x.iter_mut().for_each(|v| *v /= len);
            }
        }
        out.push(x);
    }
    out
}

/// `T − σI = P L U` for a symmetric tridiagonal `T`, partial pivoting (U has two
/// super-diagonals); pivots smaller than `tiny` are raised to it.
struct TridiagonalLu {
    u0: Vec<f64>,
    u1: Vec<f64>,
    u2: Vec<f64>,
    l: Vec<f64>,
    swap: Vec<bool>,
}

impl TridiagonalLu {
    fn new(d: &[f64], e: &[f64], sigma: f64, tiny: f64) -> Self {
        let n = d.len();
        let mut u0: Vec<f64> = d.iter().map(|x| x - sigma).collect();
        let mut u1: Vec<f64> = (0..n).map(|i| if i + 1 < n { e[i + 1] } else { 0.0 }).collect();
        let mut u2 = vec![0.0; n];
        let mut l = vec![0.0; n];
        let mut swap = vec![false; n];
        let raise = |x: f64| if x.abs() < tiny { if x < 0.0 { -tiny } else { tiny } } else { x };
        for i in 0..n.saturating_sub(1) {
            let sub = e[i + 1];
            if u0[i].abs() >= sub.abs() {
                u0[i] = raise(u0[i]);
                let m = sub / u0[i];
                l[i] = m;
                u0[i + 1] -= m * u1[i];
            } else {
                // Rows i and i + 1 trade places.
                let m = u0[i] / sub;
                l[i] = m;
                swap[i] = true;
                let (r1, r2) = (u0[i + 1], u1[i + 1]);
                let old1 = u1[i];
                u0[i] = sub;
                u1[i] = r1;
                u2[i] = r2;
                u0[i + 1] = old1 - m * r1;
                u1[i + 1] = -m * r2;
            }
        }
        if n > 0 {
            u0[n - 1] = raise(u0[n - 1]);
        }
        Self { u0, u1, u2, l, swap }
    }

    /// `x ← (T − σI)⁻¹ x`.
    fn solve(&self, x: &mut [f64]) {
        let n = x.len();
        for i in 0..n.saturating_sub(1) {
            if self.swap[i] {
                x.swap(i, i + 1);
            }
            x[i + 1] -= self.l[i] * x[i];
        }
        for i in (0..n).rev() {
            let mut v = x[i];
            if i + 1 < n {
                v -= self.u1[i] * x[i + 1];
            }
            if i + 2 < n {
                v -= self.u2[i] * x[i + 2];
            }
            x[i] = v / self.u0[i];
        }
    }
}

/// Rows of at least this length have their updates split over threads.
const PARALLEL_ROWS: usize = 192;

/// Householder tridiagonalisation of the symmetric `n × n` row-major `m` (overwritten): the
/// diagonal, the sub-diagonal (`e[i]` couples `i − 1` and `i`; `e[0] = 0`) and the reflectors
/// `(start, v, β)`, `H = I − β v vᵀ` acting on indices `start..`.
fn tridiagonalize(m: &mut [f64], n: usize) -> (Vec<f64>, Vec<f64>, Vec<(usize, Vec<f64>, f64)>) {
    let mut e = vec![0.0; n];
    let mut reflectors = Vec::with_capacity(n.saturating_sub(2));
    for k in 0..n.saturating_sub(2) {
        let start = k + 1;
        let len = n - start;
        // x = the column below the diagonal = row k right of it (symmetry).
        let mut v = m[k * n + start..(k + 1) * n].to_vec();
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm == 0.0 {
            e[start] = 0.0;
            continue;
        }
        let alpha = if v[0] > 0.0 { -norm } else { norm };
        v[0] -= alpha;
        let vv: f64 = v.iter().map(|x| x * x).sum();
        e[start] = alpha;
        if vv == 0.0 {
            continue;
        }
        let beta = 2.0 / vv;
        // p = β A₂₂ v, then w = p − (β pᵀv / 2) v, then A₂₂ −= v wᵀ + w vᵀ.
        let sub_row = |row: &[f64]| -> f64 { row[start..].iter().zip(&v).map(|(a, b)| a * b).sum::<f64>() * beta };
        let rows = &mut m[start * n..];
        let p: Vec<f64> = if len >= PARALLEL_ROWS { rows.par_chunks(n).map(sub_row).collect() } else { rows.chunks(n).map(sub_row).collect() };
        let half = 0.5 * beta * p.iter().zip(&v).map(|(a, b)| a * b).sum::<f64>();
        let w: Vec<f64> = p.iter().zip(&v).map(|(pi, vi)| pi - half * vi).collect();
        let update = |(i, row): (usize, &mut [f64])| {
            let (vi, wi) = (v[i], w[i]);
            row[start..].iter_mut().zip(w.iter().zip(&v)).for_each(|(a, (wj, vj))| *a -= vi * wj + wi * vj);
        };
        if len >= PARALLEL_ROWS {
            rows.par_chunks_mut(n).enumerate().for_each(update);
        } else {
            rows.chunks_mut(n).enumerate().for_each(update);
        }
        // Row and column k now hold α at (k, k+1) and zeros beyond.
        m[k * n + start..(k + 1) * n].iter_mut().for_each(|x| *x = 0.0);
        m[k * n + start] = alpha;
        reflectors.push((start, v, beta));
    }
    if n >= 2 {
        e[n - 1] = m[(n - 1) * n + n - 2];
    }
    let d = (0..n).map(|i| m[i * n + i]).collect();
    (d, e, reflectors)
}

/// Eigenvalues (`d`) and eigenvectors of the symmetric tridiagonal matrix (diagonal `d`,
/// sub-diagonal `e[1..]`) by the implicit QL method (EISPACK `tql2`). `w`, when given, is `n × n`
/// row-major and holds the transformation transposed: each Givens rotation of an iteration is recorded,
/// then applied to two rows of `w` (split by columns over threads when the rows are long).
fn tql2(mut w: Option<&mut [f64]>, d: &mut [f64], e: &mut [f64]) -> Result<()> {
    let n = d.len();
    for i in 1..n {
        e[i - 1] = e[i];
    }
    e[n - 1] = 0.0;
    let mut f = 0.0;
    let mut tst1: f64 = 0.0;
    let eps = f64::EPSILON;
    let mut rotations: Vec<(usize, f64, f64)> = Vec::with_capacity(n);
    for l in 0..n {
        tst1 = tst1.max(d[l].abs() + e[l].abs());
        let mut m = l;
        while m < n - 1 && e[m].abs() > eps * tst1 {
            m += 1;
        }
        if m > l {
            let mut iterations = 0;
            loop {
                iterations += 1;
                if iterations > 100 {
                    return Err(failed("symmetric eigendecomposition", "the QL iteration did not converge"));
                }
                let g = d[l];
                let mut p = (d[l + 1] - g) / (2.0 * e[l]);
                let mut r = p.hypot(1.0);
                if p < 0.0 {
                    r = -r;
                }
                d[l] = e[l] / (p + r);
                d[l + 1] = e[l] * (p + r);
                let dl1 = d[l + 1];
                let h = g - d[l];
                for x in d[l + 2..].iter_mut() {
                    *x -= h;
                }
                f += h;
                p = d[m];
                let (mut c, mut c2, mut c3) = (1.0, 1.0, 1.0);
                let el1 = e[l + 1];
                let (mut s, mut s2) = (0.0, 0.0);
                rotations.clear();
                for i in (l..m).rev() {
                    c3 = c2;
                    c2 = c;
                    s2 = s;
                    let g = c * e[i];
                    let h = c * p;
                    r = p.hypot(e[i]);
                    e[i + 1] = s * r;
                    s = e[i] / r;
                    c = p / r;
                    p = c * d[i] - s * g;
                    d[i + 1] = h + s * (c * g + s * d[i]);
                    rotations.push((i, c, s));
                }
                if let Some(w) = w.as_deref_mut() {
                    rotate_rows(w, n, &rotations);
                }
                p = -s * s2 * c3 * el1 * e[l] / dl1;
                e[l] = s * p;
                d[l] = c * p;
                if e[l].abs() <= eps * tst1 {
                    break;
                }
            }
        }
        d[l] += f;
        e[l] = 0.0;
    }
    Ok(())
}

/// Applies the rotations `(i, c, s)` in order to rows `i` and `i + 1` of the `n`-wide `w`:
/// `(a, b) ← (c a − s b, s a + c b)`.
fn rotate_rows(w: &mut [f64], n: usize, rotations: &[(usize, f64, f64)]) {
    let apply = |rows: &mut [&mut [f64]]| {
        for &(i, c, s) in rotations {
            let (lo, hi) = rows.split_at_mut(i + 1);
            for (a, b) in lo[i].iter_mut().zip(hi[0].iter_mut()) {
                let h = *b;
                *b = s * *a + c * h;
                *a = c * *a - s * h;
            }
        }
    };
    let threads = rayon::current_num_threads().max(1);
    if n < PARALLEL_ROWS || threads == 1 || rotations.len() * n < 1 << 16 {
        let mut rows: Vec<&mut [f64]> = w.chunks_mut(n).collect();
        apply(&mut rows);
        return;
    }
    // Every thread takes a band of columns of every row and applies all the rotations to it.
    let width = n.div_ceil(threads);
    let mut bands: Vec<Vec<&mut [f64]>> = (0..threads).map(|_| Vec::with_capacity(n)).collect();
    for row in w.chunks_mut(n) {
        for (band, piece) in bands.iter_mut().zip(row.chunks_mut(width)) {
            band.push(piece);
        }
    }
    bands.into_par_iter().for_each(|mut rows| apply(&mut rows));
}

/// The lower Cholesky factor `L` of the symmetric positive definite `a` (`a = L Lᵀ`).
pub fn cholesky(a: MatRef<'_, f64>) -> Result<Mat<f64>> {
    let n = a.nrows();
    let mut l = Mat::zeros(n, n);
    for j in 0..n {
        let diag = a[(j, j)] - l.row(j)[..j].iter().map(|x| x * x).sum::<f64>();
        if !(diag > 0.0) || !diag.is_finite() {
            return Err(failed("Cholesky factorisation (is μ > 0?)", format!("the matrix is not positive definite (pivot {j} is {diag:e})")));
        }
        let dj = diag.sqrt();
        l[(j, j)] = dj;
        // Column j below the diagonal: L[i][j] = (a[i][j] − L[i][..j]·L[j][..j]) / L[j][j].
        let lj = l.row(j)[..j].to_vec();
        let column = |i: usize, row: &[f64]| (a[(i, j)] - row[..j].iter().zip(&lj).map(|(x, y)| x * y).sum::<f64>()) / dj;
        let below: Vec<f64> = if (n - j) * j >= 1 << 16 {
            (j + 1..n).into_par_iter().map(|i| column(i, l.row(i))).collect()
        } else {
            (j + 1..n).map(|i| column(i, l.row(i))).collect()
        };
        for (i, v) in (j + 1..n).zip(below) {
            l[(i, j)] = v;
        }
    }
    Ok(l)
}

/// Replaces every row `x` of `rows` by `L⁻¹ x` (`lower`) or `U⁻¹ x` (upper), for the
/// triangular `t` (forward or backward substitution; rows in parallel).
fn solve_rows(t: &Mat<f64>, rows: &mut Mat<f64>, lower: bool) {
    let n = t.nrows();
    let solve = |x: &mut [f64]| {
        if lower {
            for i in 0..n {
                let s: f64 = t.row(i)[..i].iter().zip(&x[..i]).map(|(a, b)| a * b).sum();
                x[i] = (x[i] - s) / t[(i, i)];
            }
        } else {
            for i in (0..n).rev() {
                let s: f64 = t.row(i)[i + 1..].iter().zip(&x[i + 1..]).map(|(a, b)| a * b).sum();
                x[i] = (x[i] - s) / t[(i, i)];
            }
        }
    };
    rows.par_rows_mut().for_each(solve);
}

/// The `k` leading eigenvectors of the generalised problem `b v = λ a v` (`a` symmetric
/// positive definite, `b` symmetric), largest λ first: with `a = L Lᵀ` (Cholesky), the
/// symmetric problem `L⁻¹ b L⁻ᵀ w = λ w`, then `v = L⁻ᵀ w`. Each returned vector has unit
/// Euclidean norm (as `scipy.linalg.eig` returns them). Also returns the λ.
pub fn generalized_top(b: MatRef<'_, f64>, a: MatRef<'_, f64>, k: usize) -> Result<(Vec<f64>, Mat<f64>)> {
    let n = a.nrows();
    let l = cholesky(a)?;
    // Rows of b are its columns (b symmetric): y = (L⁻¹ b)ᵀ = b L⁻ᵀ row by row, then the
    // columns of y solved again: c = L⁻¹ b L⁻ᵀ, whose rows are its columns (c symmetric).
    let mut y = b.to_owned();
    solve_rows(&l, &mut y, true);
    let mut c = y.transpose();
    solve_rows(&l, &mut c, true);
    // Symmetrise what rounding broke.
    let c = Mat::from_fn(n, n, |i, j| 0.5 * (c[(i, j)] + c[(j, i)]));
    let (values, w) = sym_eigen_top(c.as_ref(), k)?;
    // v = L⁻ᵀ w: each column of w solved against the upper-triangular Lᵀ.
    let mut vt = w.transpose();
    solve_rows(&l.transpose(), &mut vt, false);
    let mut v = vt.transpose();
    normalise_columns(&mut v);
    Ok((values, v))
}

/// The singular value decomposition `a = U diag(s) Vᵀ` of a small matrix by one-sided Jacobi
/// rotations (accurate to rounding for every singular value): `U` is `m × r`, `V` is `n × r`,
/// `r = min(m, n)`, singular values in decreasing order.
pub fn svd(a: MatRef<'_, f64>) -> Result<(Mat<f64>, Vec<f64>, Mat<f64>)> {
    if a.nrows() < a.ncols() {
        let (u, s, v) = svd(a.transpose().as_ref())?;
        return Ok((v, s, u));
    }
    let (m, n) = (a.nrows(), a.ncols());
    // Columns of a as rows of ut, so rotations touch contiguous memory.
    let mut ut = a.transpose();
    let mut vt = Mat::<f64>::identity(n, n);
    let mut converged = false;
    for _sweep in 0..60 {
        let mut rotated = false;
        for p in 0..n {
            for q in p + 1..n {
                let (alpha, beta, gamma) = {
                    let (up, uq) = (ut.row(p), ut.row(q));
                    let mut acc = (0.0, 0.0, 0.0);
                    for (x, y) in up.iter().zip(uq) {
                        acc.0 += x * x;
                        acc.1 += y * y;
                        acc.2 += x * y;
                    }
                    acc
                };
                if gamma == 0.0 || gamma.abs() <= f64::EPSILON * (alpha * beta).sqrt() {
                    continue;
                }
                rotated = true;
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                for mat in [&mut ut, &mut vt] {
                    let rp = mat.row(p).to_vec();
                    let rq = mat.row(q).to_vec();
                    mat.row_mut(p).iter_mut().zip(rp.iter().zip(&rq)).for_each(|(o, (x, y))| *o = c * x - s * y);
                    mat.row_mut(q).iter_mut().zip(rp.iter().zip(&rq)).for_each(|(o, (x, y))| *o = s * x + c * y);
                }
            }
        }
        if !rotated {
            converged = true;
            break;
        }
    }
    if !converged {
        return Err(failed("SVD", "the Jacobi rotations did not converge"));
    }
    let norms: Vec<f64> = (0..n).map(|j| ut.row(j).iter().map(|x| x * x).sum::<f64>().sqrt()).collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&x, &y| norms[y].total_cmp(&norms[x]));
    let s: Vec<f64> = order.iter().map(|&j| norms[j]).collect();
    let u = Mat::from_fn(m, n, |i, c| {
        let j = order[c];
        if norms[j] > 0.0 { ut[(j, i)] / norms[j] } else { 0.0 }
    });
    let v = Mat::from_fn(n, n, |i, c| vt[(order[c], i)]);
    Ok((u, s, v))
}

/// The `k` leading right singular vectors of `x` (`rows × features`) and their singular values,
/// largest first, at most `min(rows, features)` of them: from the eigenvectors of the smaller
/// Gram matrix (xᵀx, or x xᵀ mapped back through xᵀ), only the `k` wanted ones computed.
/// Directions of (numerically) zero singular value come back as zero columns.
pub fn right_singular(x: MatRef<'_, f64>, k: usize) -> Result<(Vec<f64>, Mat<f64>)> {
    let (n, d) = (x.nrows(), x.ncols());
    let r = n.min(d).min(k);
    if d <= n {
        let (values, v) = sym_eigen_top((x.transpose() * x).as_ref(), r)?;
        Ok((values.iter().map(|l| l.max(0.0).sqrt()).collect(), v))
    } else {
        let (values, u) = sym_eigen_top((x * x.transpose()).as_ref(), r)?;
        let s: Vec<f64> = values.iter().map(|l| l.max(0.0).sqrt()).collect();
        let mut v = x.transpose() * &u; // d × n: column j is σⱼ vⱼ
        let tiny = s.first().copied().unwrap_or(0.0) * f64::EPSILON * (n.max(d) as f64);
        for j in 0..r {
            for i in 0..d {
                v[(i, j)] = if s[j] > tiny { v[(i, j)] / s[j] } else { 0.0 };
            }
        }
        Ok((s, v))
    }
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
    let (_, v) = right_singular(c.as_ref(), d)?;
    Ok(v)
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
        // b v = λ a v for a random SPD a and symmetric b; 250 takes the threaded paths.
        for n in [6, 250] {
            let r = Mat::from_fn(n, n, |i, j| ((i * 7 + j * 3) % 11) as f64 / 11.0 - 0.4);
            let a = &r * r.transpose() + Mat::<f64>::identity(n, n);
            let s = Mat::from_fn(n, n, |i, j| ((i + j) % 5) as f64 - 2.0);
            let (lambda, v) = generalized_top(s.as_ref(), a.as_ref(), 3).unwrap();
            assert_eq!((lambda.len(), v.nrows(), v.ncols()), (3, n, 3));
            assert!(lambda[0] >= lambda[1] && lambda[1] >= lambda[2]);
            let (lhs, rhs) = (&s * &v, &a * &v);
            for k in 0..3 {
                for i in 0..n {
                    assert!((lhs[(i, k)] - lambda[k] * rhs[(i, k)]).abs() < 1e-8 * (1.0 + lambda[k].abs()), "n = {n}, column {k}, row {i}");
                }
                let norm: f64 = (0..n).map(|i| v[(i, k)] * v[(i, k)]).sum();
                assert!((norm - 1.0).abs() < 1e-10);
            }
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

    fn random_symmetric(n: usize, seed: u64) -> Mat<f64> {
        let r = Mat::from_fn(n, n, |i, j| {
            let h = crate::zoo::seeded::splitmix64(seed.wrapping_mul(1_000_003).wrapping_add((i * n + j) as u64));
            (h >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        });
        Mat::from_fn(n, n, |i, j| r[(i, j)] + r[(j, i)])
    }

    #[test]
    fn symmetric_eigendecomposition_rebuilds_the_matrix() {
        for (n, seed) in [(1, 1), (2, 2), (7, 3), (60, 4), (300, 5)] {
            let a = random_symmetric(n, seed);
            let (values, v) = sym_eigen(a.as_ref()).unwrap();
            assert!(values.windows(2).all(|w| w[0] >= w[1]), "n = {n}: not decreasing");
            let vtv = v.transpose() * &v;
            let scaled = Mat::from_fn(n, n, |i, j| v[(i, j)] * values[j]);
            let back = &scaled * v.transpose();
            for i in 0..n {
                for j in 0..n {
                    let eye = if i == j { 1.0 } else { 0.0 };
                    assert!((vtv[(i, j)] - eye).abs() < 1e-10, "n = {n}: VᵀV at ({i}, {j}) is {}", vtv[(i, j)]);
                    assert!((back[(i, j)] - a[(i, j)]).abs() < 1e-10, "n = {n}: V Λ Vᵀ at ({i}, {j})");
                }
            }
        }
        // Repeated eigenvalues (an identity block) and a zero matrix.
        let mut a = Mat::<f64>::identity(5, 5);
        a[(4, 4)] = 3.0;
        let (values, _) = sym_eigen(a.as_ref()).unwrap();
        assert_eq!(values.iter().map(|v| (v * 1e9).round() / 1e9).collect::<Vec<_>>(), vec![3.0, 1.0, 1.0, 1.0, 1.0]);
        let (values, v) = sym_eigen(Mat::<f64>::zeros(3, 3).as_ref()).unwrap();
        assert_eq!(values, vec![0.0; 3]);
        assert_eq!(v, Mat::<f64>::identity(3, 3));
        let mut bad = Mat::<f64>::identity(2, 2);
        bad[(0, 1)] = f64::NAN;
        assert!(sym_eigen(bad.as_ref()).is_err());
    }

    /// ‖A V − V Λ‖ and ‖VᵀV − I‖, largest entry.
    fn eigen_errors(a: &Mat<f64>, values: &[f64], v: &Mat<f64>) -> (f64, f64) {
        let av = a * v;
        let (n, k) = (v.nrows(), v.ncols());
        let residual = (0..n).flat_map(|i| (0..k).map(move |j| (i, j))).map(|(i, j)| (av[(i, j)] - v[(i, j)] * values[j]).abs()).fold(0.0, f64::max);
        let vtv = v.transpose() * v;
        let ortho = (0..k).flat_map(|i| (0..k).map(move |j| (i, j))).map(|(i, j)| (vtv[(i, j)] - if i == j { 1.0 } else { 0.0 }).abs()).fold(0.0, f64::max);
        (residual, ortho)
    }

    #[test]
    fn a_few_leading_eigenvectors_by_inverse_iteration() {
        let n = 600;
        let a = random_symmetric(n, 9);
        let (all, _) = sym_eigen(a.as_ref()).unwrap();
        let (values, v) = sym_eigen_top(a.as_ref(), 20).unwrap();
        assert_eq!((values.len(), v.nrows(), v.ncols()), (20, n, 20));
        for j in 0..20 {
            assert!((values[j] - all[j]).abs() < 1e-10, "λ{j}: {} against {}", values[j], all[j]);
        }
        let (residual, ortho) = eigen_errors(&a, &values, &v);
        assert!(residual < 1e-9 && ortho < 1e-9, "residual {residual:e}, orthogonality {ortho:e}");
        // A cluster: eigenvalue 2 four times, then 1.9, 1.5, …, in a rotated basis H D H.
        let u: Vec<f64> = (0..n).map(|i| ((i * 37 % 101) as f64 - 50.0) / 50.0).collect();
        let uu: f64 = u.iter().map(|x| x * x).sum();
        let h = Mat::from_fn(n, n, |i, j| if i == j { 1.0 } else { 0.0 } - 2.0 * u[i] * u[j] / uu);
        let diag: Vec<f64> = (0..n).map(|i| if i < 4 { 2.0 } else { 1.9 - i as f64 * 1e-3 }).collect();
        let a = &Mat::from_fn(n, n, |i, j| h[(i, j)] * diag[j]) * &h;
        let a = Mat::from_fn(n, n, |i, j| 0.5 * (a[(i, j)] + a[(j, i)]));
        let (values, v) = sym_eigen_top(a.as_ref(), 8).unwrap();
        for (j, want) in [2.0, 2.0, 2.0, 2.0, 1.896, 1.895, 1.894, 1.893].iter().enumerate() {
            assert!((values[j] - want).abs() < 1e-9, "λ{j} = {}", values[j]);
        }
        let (residual, ortho) = eigen_errors(&a, &values, &v);
        assert!(residual < 1e-9 && ortho < 1e-9, "cluster: residual {residual:e}, orthogonality {ortho:e}");
    }

    #[test]
    fn svd_rebuilds_the_matrix_with_orthonormal_factors() {
        for (m, n) in [(5, 5), (8, 3), (3, 8), (20, 20)] {
            let a = Mat::from_fn(m, n, |i, j| ((i * 13 + j * 7) % 17) as f64 / 17.0 - 0.5 + if i == j { 1.0 } else { 0.0 });
            let (u, s, v) = svd(a.as_ref()).unwrap();
            let r = m.min(n);
            assert_eq!((u.nrows(), u.ncols(), v.nrows(), v.ncols(), s.len()), (m, r, n, r, r));
            assert!(s.windows(2).all(|w| w[0] >= w[1]));
            let back = Mat::from_fn(m, r, |i, j| u[(i, j)] * s[j]) * v.transpose();
            for i in 0..m {
                for j in 0..n {
                    assert!((back[(i, j)] - a[(i, j)]).abs() < 1e-12, "{m}×{n} at ({i}, {j})");
                }
            }
            let (utu, vtv) = (u.transpose() * &u, v.transpose() * &v);
            for i in 0..r {
                for j in 0..r {
                    let eye = if i == j { 1.0 } else { 0.0 };
                    assert!((utu[(i, j)] - eye).abs() < 1e-12 && (vtv[(i, j)] - eye).abs() < 1e-12);
                }
            }
            // The Gram route gives the same singular values and spans.
            let (s2, v2) = right_singular(a.as_ref(), r).unwrap();
            // Only the leading ones asked for: the same values, as many as asked.
            let (s3, _) = right_singular(a.as_ref(), 2).unwrap();
            assert_eq!(s3.len(), r.min(2));
            assert!(s3.iter().zip(&s2).all(|(x, y)| (x - y).abs() < 1e-9 * s[0]));
            for j in 0..r {
                assert!((s2[j] - s[j]).abs() < 1e-9 * s[0], "{m}×{n}: σ{j} {} against {}", s2[j], s[j]);
                // Vectors are only defined up to sign where σ is well apart from its neighbours.
                let apart = |i: usize, k: usize| (s[i] - s[k]).abs() > 1e-3 * s[0];
                if s[j] > 1e-3 * s[0] && (j + 1 == r || apart(j, j + 1)) && (j == 0 || apart(j, j - 1)) {
                    let dot: f64 = (0..n).map(|i| v[(i, j)] * v2[(i, j)]).sum();
                    assert!((dot.abs() - 1.0).abs() < 1e-8, "{m}×{n}: v{j} differs ({dot})");
                }
            }
        }
    }
}
