//! The transforms: PCA, TCA, JDA, GFK, SA and CORAL, each fitted on the (normalised) rows of
//! a labelled source and an unlabelled target, then applied to any rows of either domain.

use super::dense::{Mat, MatRef};

use super::linalg::{covariance, from_rows, generalized_top, normalise_rows, pca_basis, sym_power};
use crate::Result;

/// Which domain rows come from: SA and CORAL map the two differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainSide {
    Source,
    Target,
}

/// The kernel of TCA and JDA.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kernel {
    /// The problem in feature space (`features × features`; the JDA code's `primal`).
    Linear,
    /// k(x, y) = exp(−γ‖x − y‖²): the problem over the training rows (`n × n`).
    Rbf { gamma: f64 },
}

/// A fitted transform.
#[derive(Debug, Clone)]
pub enum Fitted {
    /// Rows as they are.
    Identity,
    /// z = φ(x) A, then each row scaled to unit norm (the JDA code's last step); φ(x) is x
    /// (linear) or the kernel against the training rows `train`.
    Projection { a: Mat<f64>, kernel: Kernel, train: Option<Mat<f64>> },
    /// GFK: z = x G^½, so that Euclidean distances are those of the geodesic flow kernel G.
    Gfk { sqrt_g: Mat<f64> },
    /// SA: source rows x Ps M (M = Psᵀ Pt), target rows x Pt.
    Sa { source: Mat<f64>, target: Mat<f64> },
    /// CORAL: source rows x Cs^−½ Ct^½; target rows as they are.
    Coral { source: Mat<f64> },
}

impl Fitted {
    pub fn apply(&self, x: MatRef<'_, f64>, side: DomainSide) -> Mat<f64> {
        match self {
            Fitted::Identity => x.to_owned(),
            Fitted::Projection { a, kernel, train } => {
                let phi = match (kernel, train) {
                    (Kernel::Rbf { gamma }, Some(t)) => rbf(x, t.as_ref(), *gamma),
                    _ => x.to_owned(),
                };
                let mut z = &phi * a;
                normalise_rows(&mut z);
                z
            }
            Fitted::Gfk { sqrt_g } => x * sqrt_g,
            Fitted::Sa { source, target } => match side {
                DomainSide::Source => x * source,
                DomainSide::Target => x * target,
            },
            Fitted::Coral { source } => match side {
                DomainSide::Source => x * source,
                DomainSide::Target => x.to_owned(),
            },
        }
    }
}

/// Squared Euclidean distances between the rows of `x` and of `y`.
pub fn sq_distances(x: MatRef<'_, f64>, y: MatRef<'_, f64>) -> Mat<f64> {
    let xx: Vec<f64> = (0..x.nrows()).map(|i| (0..x.ncols()).map(|j| x[(i, j)].powi(2)).sum()).collect();
    let yy: Vec<f64> = (0..y.nrows()).map(|i| (0..y.ncols()).map(|j| y[(i, j)].powi(2)).sum()).collect();
    let xy = x * y.transpose();
    Mat::from_fn(x.nrows(), y.nrows(), |i, j| (xx[i] + yy[j] - 2.0 * xy[(i, j)]).max(0.0))
}

/// The RBF kernel between the rows of `x` and of `y`.
pub fn rbf(x: MatRef<'_, f64>, y: MatRef<'_, f64>, gamma: f64) -> Mat<f64> {
    let d = sq_distances(x, y);
    Mat::from_fn(d.nrows(), d.ncols(), |i, j| (-gamma * d[(i, j)]).exp())
}

/// γ = 1 / (mean squared distance between the rows of `x`): the default of `--gamma`.
pub fn default_gamma(x: MatRef<'_, f64>) -> f64 {
    let d = sq_distances(x, x);
    let n = x.nrows();
    let mean = (0..n).flat_map(|i| (0..n).map(move |j| (i, j))).map(|(i, j)| d[(i, j)]).sum::<f64>() / ((n * n).saturating_sub(n).max(1)) as f64;
    if mean > 0.0 { 1.0 / mean } else { 1.0 }
}

/// The empirical MMD² with a linear kernel: ‖mean(xs) − mean(xt)‖².
pub fn linear_mmd2(xs: MatRef<'_, f64>, xt: MatRef<'_, f64>) -> f64 {
    let ms = super::linalg::col_means(xs);
    let mt = super::linalg::col_means(xt);
    ms.iter().zip(&mt).map(|(a, b)| (a - b).powi(2)).sum()
}

/// Rows of both domains stacked, source first.
fn stack(xs: MatRef<'_, f64>, xt: MatRef<'_, f64>) -> Mat<f64> {
    let ns = xs.nrows();
    Mat::from_fn(ns + xt.nrows(), xs.ncols(), |i, j| if i < ns { xs[(i, j)] } else { xt[(i - ns, j)] })
}

/// PCA on both domains together (the JDA paper's PCA baseline): the `k` leading directions,
/// rows then scaled to unit norm as for TCA.
pub fn pca(xs: MatRef<'_, f64>, xt: MatRef<'_, f64>, k: usize) -> Result<Fitted> {
    let x = stack(xs, xt);
    Ok(Fitted::Projection { a: pca_basis(x.as_ref(), k)?, kernel: Kernel::Linear, train: None })
}

/// One solve of TCA / JDA (Long et al. 2013, eq. 7 with the JDA code's normalisation): with
/// φ the rows (linear) or the kernel matrix over both domains (rbf), M = Σ wᵢ eᵢeᵢᵀ / ‖Σ wᵢ eᵢeᵢᵀ‖_F
/// the MMD matrix (e₀ the marginal term, weighted by the number of classes when conditional
/// terms follow, one eᶜ per class present in the pseudo-labels), H the centring matrix: the
/// `k` smallest eigenvectors of (φᵀMφ + μI) A = φᵀHφ A Φ, i.e. the largest of the pencil
/// (φᵀHφ, φᵀMφ + μI).
fn solve_mmd(phi: MatRef<'_, f64>, ns: usize, ys: &[usize], pseudo: Option<&[usize]>, classes: usize, k: usize, mu: f64) -> Result<Mat<f64>> {
    let n = phi.nrows();
    let nt = n - ns;
    let mut es: Vec<(Vec<f64>, f64)> = Vec::new();
    let mut e0 = vec![0.0; n];
    e0[..ns].iter_mut().for_each(|v| *v = 1.0 / ns as f64);
    e0[ns..].iter_mut().for_each(|v| *v = -1.0 / nt as f64);
    es.push((e0, if pseudo.is_some() { classes as f64 } else { 1.0 }));
    if let Some(yt) = pseudo {
        for c in 0..classes {
            let cs = ys.iter().filter(|&&y| y == c).count();
            let ct = yt.iter().filter(|&&y| y == c).count();
            if cs == 0 && ct == 0 {
                continue;
            }
            let mut e = vec![0.0; n];
            for (i, &y) in ys.iter().enumerate() {
                if y == c {
                    e[i] = 1.0 / cs as f64;
                }
            }
            for (i, &y) in yt.iter().enumerate() {
                if y == c {
                    e[ns + i] = -1.0 / ct as f64;
                }
            }
            es.push((e, 1.0));
        }
    }
    // ‖Σ wᵢ eᵢeᵢᵀ‖²_F = Σᵢⱼ wᵢwⱼ (eᵢ·eⱼ)².
    let fro2: f64 = es.iter().flat_map(|(a, wa)| es.iter().map(move |(b, wb)| wa * wb * a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>().powi(2))).sum();
    let fro = fro2.sqrt().max(f64::MIN_POSITIVE);
    let e = Mat::from_fn(n, es.len(), |i, j| es[j].0[i]);
    let p = phi.transpose() * &e; // width × terms
    let width = phi.ncols();
    let mut a = Mat::from_fn(width, width, |i, j| if i == j { mu } else { 0.0 });
    for (t, (_, w)) in es.iter().enumerate() {
        for j in 0..width {
            let pj = p[(j, t)] * w / fro;
            for i in 0..width {
                a[(i, j)] += p[(i, t)] * pj;
            }
        }
    }
    let hc = super::linalg::centred(phi);
    let b = hc.transpose() * &hc;
    Ok(generalized_top(b.as_ref(), a.as_ref(), k)?.1)
}

/// Settings of TCA and JDA.
#[derive(Debug, Clone, Copy)]
pub struct MmdOptions {
    pub k: usize,
    pub mu: f64,
    pub kernel: Kernel,
    pub classes: usize,
}

/// TCA (Pan et al. 2011): the marginal MMD only.
pub fn tca(xs: MatRef<'_, f64>, ys: &[usize], xt: MatRef<'_, f64>, o: &MmdOptions) -> Result<Fitted> {
    let (phi, train) = features(xs, xt, o.kernel);
    let a = solve_mmd(phi.as_ref(), xs.nrows(), ys, None, o.classes, o.k, o.mu)?;
    Ok(Fitted::Projection { a, kernel: o.kernel, train })
}

fn features(xs: MatRef<'_, f64>, xt: MatRef<'_, f64>, kernel: Kernel) -> (Mat<f64>, Option<Mat<f64>>) {
    let x = stack(xs, xt);
    match kernel {
        Kernel::Linear => (x, None),
        Kernel::Rbf { gamma } => (rbf(x.as_ref(), x.as_ref(), gamma), Some(x)),
    }
}

/// JDA (Long et al. 2013): `iterations` solves, the first with the marginal term only (TCA),
/// each later one adding the class-conditional terms of the target's pseudo-labels, which
/// `classify(source rows, source labels, target rows)` gives after every solve. Calls
/// `each(iteration, transform, pseudo-labels)` after every solve. Returns the last transform
/// and the last pseudo-labels.
pub fn jda(
    xs: MatRef<'_, f64>,
    ys: &[usize],
    xt: MatRef<'_, f64>,
    o: &MmdOptions,
    iterations: usize,
    classify: &mut dyn FnMut(MatRef<'_, f64>, &[usize], MatRef<'_, f64>) -> Result<Vec<usize>>,
    each: &mut dyn FnMut(usize, &Fitted, &[usize]) -> Result<()>,
) -> Result<(Fitted, Vec<usize>)> {
    let (phi, train) = features(xs, xt, o.kernel);
    let mut pseudo: Option<Vec<usize>> = None;
    let mut last = None;
    for it in 0..iterations.max(1) {
        let a = solve_mmd(phi.as_ref(), xs.nrows(), ys, pseudo.as_deref(), o.classes, o.k, o.mu)?;
        let fitted = Fitted::Projection { a, kernel: o.kernel, train: train.clone() };
        let zs = fitted.apply(xs, DomainSide::Source);
        let zt = fitted.apply(xt, DomainSide::Target);
        let labels = classify(zs.as_ref(), ys, zt.as_ref())?;
        each(it + 1, &fitted, &labels)?;
        pseudo = Some(labels);
        last = Some(fitted);
    }
    Ok((last.expect("at least one iteration"), pseudo.unwrap_or_default()))
}

/// The geodesic flow kernel (Gong et al. 2012, closed form) between the subspaces spanned by
/// the orthonormal columns of `ps` and `pt` (`features × d` each), as in the authors' code:
/// G = ∫₀¹ Φ(t)Φ(t)ᵀ dt along the geodesic Φ from Ps to Pt. With Psᵀ Pt = U₁ Γ Vᵀ, θ = arccos Γ the principal angles and
/// Rs Rsᵀ = I − Ps Psᵀ, Ω₁ = Ps U₁ and Ω₂ = −(I − Ps Psᵀ) Pt V / sin θ,
/// G = [Ω₁ Ω₂] [[Λ₁ Λ₂] [Λ₂ Λ₃]] [Ω₁ Ω₂]ᵀ with Λ₁ = ½(1 + sin 2θ / 2θ), Λ₂ = ½(cos 2θ − 1) / 2θ,
/// Λ₃ = ½(1 − sin 2θ / 2θ).
pub fn gfk_kernel(ps: MatRef<'_, f64>, pt: MatRef<'_, f64>) -> Result<Mat<f64>> {
    let d = ps.ncols().min(pt.ncols());
    let dim = ps.nrows();
    let ps = &ps.subcols(0, d);
    let pt = &pt.subcols(0, d);
    let (u1, gamma, v) = super::linalg::svd((ps.transpose() * pt).as_ref())?;
    let theta: Vec<f64> = (0..d).map(|i| gamma[i].clamp(-1.0, 1.0).acos()).collect();
    let o1 = ps * &u1;
    let resid = pt - ps * (ps.transpose() * pt);
    let mut o2 = resid * &v;
    for (j, &t) in theta.iter().enumerate() {
        let s = t.sin();
        for i in 0..dim {
            o2[(i, j)] = if s > 1e-10 { -o2[(i, j)] / s } else { 0.0 };
        }
    }
    // sin 2θ / 2θ → 1 and (cos 2θ − 1) / 2θ → 0 as θ → 0 (a shared direction); the authors'
    // code divides by max(θ, 1e-20) instead, which gives ½ for an exactly shared direction.
    let sinc = |t: f64| if t < 1e-8 { 1.0 } else { (2.0 * t).sin() / (2.0 * t) };
    let cosc = |t: f64| if t < 1e-8 { 0.0 } else { ((2.0 * t).cos() - 1.0) / (2.0 * t) };
    let l1: Vec<f64> = theta.iter().map(|&t| 0.5 * (1.0 + sinc(t))).collect();
    let l2: Vec<f64> = theta.iter().map(|&t| 0.5 * cosc(t)).collect();
    let l3: Vec<f64> = theta.iter().map(|&t| 0.5 * (1.0 - sinc(t))).collect();
    // G = Ω₁Λ₁Ω₁ᵀ + Ω₁Λ₂Ω₂ᵀ + Ω₂Λ₂Ω₁ᵀ + Ω₂Λ₃Ω₂ᵀ.
    let scale = |m: &Mat<f64>, w: &[f64]| Mat::from_fn(m.nrows(), m.ncols(), |i, j| m[(i, j)] * w[j]);
    let g = scale(&o1, &l1) * o1.transpose() + scale(&o1, &l2) * o2.transpose() + scale(&o2, &l2) * o1.transpose() + scale(&o2, &l3) * o2.transpose();
    Ok(Mat::from_fn(dim, dim, |i, j| 0.5 * (g[(i, j)] + g[(j, i)])))
}

/// GFK with `d`-dimensional PCA subspaces of each domain.
pub fn gfk(xs: MatRef<'_, f64>, xt: MatRef<'_, f64>, d: usize) -> Result<Fitted> {
    let g = gfk_kernel(pca_basis(xs, d)?.as_ref(), pca_basis(xt, d)?.as_ref())?;
    Ok(Fitted::Gfk { sqrt_g: sym_power(g.as_ref(), 0.5, 0.0)? })
}

/// Subspace alignment (Fernando et al. 2013): the source's `d` PCA directions aligned to the
/// target's, M = Psᵀ Pt.
pub fn sa(xs: MatRef<'_, f64>, xt: MatRef<'_, f64>, d: usize) -> Result<Fitted> {
    let ps = pca_basis(xs, d)?;
    let pt = pca_basis(xt, d)?;
    let m = ps.transpose() * &pt;
    Ok(Fitted::Sa { source: &ps * &m, target: pt })
}

/// CORAL (Sun et al. 2016): whiten the source with (Cs + I)^−½, recolour it with (Ct + I)^½.
pub fn coral(xs: MatRef<'_, f64>, xt: MatRef<'_, f64>) -> Result<Fitted> {
    let dim = xs.ncols();
    let eye = Mat::<f64>::identity(dim, dim);
    let cs = covariance(xs) + &eye;
    let ct = covariance(xt) + &eye;
    let a = sym_power(cs.as_ref(), -0.5, 1e-12)? * sym_power(ct.as_ref(), 0.5, 0.0)?;
    Ok(Fitted::Coral { source: a })
}

/// 1-nearest-neighbour labels of the rows of `test` among the rows of `train` (Euclidean; the
/// first of equally near rows).
pub fn nearest_neighbour(train: MatRef<'_, f64>, labels: &[usize], test: MatRef<'_, f64>) -> Vec<usize> {
    let d = sq_distances(test, train);
    (0..test.nrows())
        .map(|i| {
            let mut best = (f64::INFINITY, 0);
            for j in 0..train.nrows() {
                if d[(i, j)] < best.0 {
                    best = (d[(i, j)], labels[j]);
                }
            }
            best.1
        })
        .collect()
}

/// `n × d` row-major f32 values → a matrix (f64).
pub fn matrix_f32(x: &[f32], n: usize, d: usize) -> Mat<f64> {
    from_rows(&x.iter().map(|&v| v as f64).collect::<Vec<_>>(), n, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Two domains of `classes` Gaussian blobs in `dim` dimensions; the target's are moved by
    /// a large common shift plus a random shift per class, and its features rescaled.
    fn shifted_pair(n: usize, dim: usize, classes: usize, seed: u64) -> (Mat<f64>, Vec<usize>, Mat<f64>, Vec<usize>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let centres: Vec<Vec<f64>> = (0..classes).map(|_| (0..dim).map(|_| rng.random_range(-2.0..2.0)).collect()).collect();
        let shift: Vec<f64> = (0..dim).map(|j| if j % 3 == 0 { 3.0 } else { 0.0 }).collect();
        let gauss = |rng: &mut rand::rngs::StdRng| -> f64 {
            // Box–Muller.
            let u: f64 = rng.random_range(1e-12..1.0);
            let v: f64 = rng.random_range(0.0..1.0);
            (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
        };
        let per_class: Vec<Vec<f64>> = (0..classes).map(|_| (0..dim).map(|_| 1.5 * gauss(&mut rng)).collect()).collect();
        let make = |target: bool, rng: &mut rand::rngs::StdRng| {
            let mut x = Vec::with_capacity(n * dim);
            let mut y = Vec::with_capacity(n);
            for i in 0..n {
                let c = i % classes;
                y.push(c);
                for j in 0..dim {
                    let mut v = centres[c][j] + gauss(rng);
                    if target {
                        v = v * (1.0 + 0.5 * ((j % 4) as f64 - 1.5) / 1.5) + shift[j] + per_class[c][j];
                    }
                    x.push(v);
                }
            }
            (from_rows(&x, n, dim), y)
        };
        let (xs, ys) = make(false, &mut rng);
        let (xt, yt) = make(true, &mut rng);
        (xs, ys, xt, yt)
    }

    fn normalised(x: &Mat<f64>) -> Mat<f64> {
        let mut z = x.clone();
        normalise_rows(&mut z);
        z
    }

    #[test]
    fn tca_reduces_the_mmd_between_the_domains() {
        let (xs, ys, xt, _) = shifted_pair(120, 12, 3, 7);
        let (xs, xt) = (normalised(&xs), normalised(&xt));
        let before = linear_mmd2(xs.as_ref(), xt.as_ref());
        for kernel in [Kernel::Linear, Kernel::Rbf { gamma: default_gamma(stack(xs.as_ref(), xt.as_ref()).as_ref()) }] {
            let o = MmdOptions { k: 4, mu: 1.0, kernel, classes: 3 };
            let f = tca(xs.as_ref(), &ys, xt.as_ref(), &o).unwrap();
            let zs = f.apply(xs.as_ref(), DomainSide::Source);
            let zt = f.apply(xt.as_ref(), DomainSide::Target);
            // Both sides compared on unit-norm rows: no shrinking of the scale can pass as
            // alignment.
            let after = linear_mmd2(zs.as_ref(), zt.as_ref());
            assert!(after < 0.25 * before, "{kernel:?}: MMD² {before:.4} before, {after:.4} after");
            // PCA (no MMD term) keeps most of the gap: the reduction is TCA's doing.
            let p = pca(xs.as_ref(), xt.as_ref(), 4).unwrap();
            let pca_mmd = linear_mmd2(p.apply(xs.as_ref(), DomainSide::Source).as_ref(), p.apply(xt.as_ref(), DomainSide::Target).as_ref());
            assert!(after < 0.25 * pca_mmd, "{kernel:?}: TCA {after:.4} against PCA {pca_mmd:.4}");
        }
    }

    #[test]
    fn gfk_kernel_is_symmetric_positive_semi_definite() {
        let (xs, _, xt, _) = shifted_pair(80, 15, 4, 3);
        for d in [1, 3, 6, 15] {
            let ps = pca_basis(xs.as_ref(), d).unwrap();
            let pt = pca_basis(xt.as_ref(), d).unwrap();
            let g = gfk_kernel(ps.as_ref(), pt.as_ref()).unwrap();
            let raw = {
                // The same kernel before the final symmetrisation: symmetric by construction.
                let mut worst: f64 = 0.0;
                for i in 0..15 {
                    for j in 0..15 {
                        worst = worst.max((g[(i, j)] - g[(j, i)]).abs());
                    }
                }
                worst
            };
            assert!(raw < 1e-12);
            let (values, _) = super::super::linalg::sym_eigen(g.as_ref()).unwrap();
            let min = values.iter().cloned().fold(f64::INFINITY, f64::min);
            assert!(min >= -1e-6, "d = {d}: smallest eigenvalue {min}");
            assert!(values[0] > 0.1, "d = {d}: the kernel is not trivial ({})", values[0]);
        }
        // Identical subspaces: θ = 0, Λ₁ = 1, G = Ps Psᵀ, the projector onto the subspace.
        let ps = pca_basis(xs.as_ref(), 4).unwrap();
        let g = gfk_kernel(ps.as_ref(), ps.as_ref()).unwrap();
        let proj = &ps * ps.transpose();
        for i in 0..15 {
            for j in 0..15 {
                assert!((g[(i, j)] - proj[(i, j)]).abs() < 1e-9, "({i}, {j}): {} against {}", g[(i, j)], proj[(i, j)]);
            }
        }
    }

    #[test]
    fn gfk_matches_the_integral_of_the_geodesic() {
        // G = ∫₀¹ Φ(t)Φ(t)ᵀ dt with Φ(t) = Ps U₁ cos(tθ) − Rs U₂ sin(tθ),
        // checked by the midpoint rule on the geodesic built from the same SVD.
        let (xs, _, xt, _) = shifted_pair(60, 6, 2, 11);
        let ps = pca_basis(xs.as_ref(), 2).unwrap();
        let pt = pca_basis(xt.as_ref(), 2).unwrap();
        let g = gfk_kernel(ps.as_ref(), pt.as_ref()).unwrap();
        let (u1, gamma, v) = super::super::linalg::svd((ps.transpose() * &pt).as_ref()).unwrap();
        let theta: Vec<f64> = (0..2).map(|i| gamma[i].clamp(-1.0, 1.0).acos()).collect();
        let o1 = &ps * &u1;
        let resid = &pt - &ps * (ps.transpose() * &pt);
        let r = &resid * &v; // = −Rs U₂ sin θ
        let steps = 2000;
        let mut acc = Mat::<f64>::zeros(6, 6);
        for s in 0..steps {
            let t = (s as f64 + 0.5) / steps as f64;
            let phi = Mat::from_fn(6, 2, |i, j| o1[(i, j)] * (t * theta[j]).cos() + r[(i, j)] / theta[j].sin() * (t * theta[j]).sin());
            acc = acc + &phi * phi.transpose();
        }
        for i in 0..6 {
            for j in 0..6 {
                let want = acc[(i, j)] / steps as f64;
                assert!((g[(i, j)] - want).abs() < 1e-5, "({i}, {j}): {} against {want}", g[(i, j)]);
            }
        }
    }

    #[test]
    fn jda_pseudo_labels_improve_or_hold_over_iterations() {
        // Five classes, each moved by its own random shift in the target: the marginal term
        // alone (TCA, the first iteration) cannot align them, the class-conditional terms can.
        let (mut firsts, mut lasts) = (0.0, 0.0);
        let seeds = [1u64, 2, 3, 4];
        for seed in seeds {
            let (xs, ys, xt, yt) = shifted_pair(200, 20, 5, seed);
            let (xs, xt) = (normalised(&xs), normalised(&xt));
            let o = MmdOptions { k: 10, mu: 1.0, kernel: Kernel::Linear, classes: 5 };
            let mut accs = Vec::new();
            let mut classify = |zs: MatRef<'_, f64>, ys: &[usize], zt: MatRef<'_, f64>| Ok(nearest_neighbour(zs, ys, zt));
            let mut each = |_: usize, _: &Fitted, labels: &[usize]| {
                accs.push(labels.iter().zip(&yt).filter(|(a, b)| a == b).count() as f64 / yt.len() as f64);
                Ok(())
            };
            jda(xs.as_ref(), &ys, xt.as_ref(), &o, 6, &mut classify, &mut each).unwrap();
            assert_eq!(accs.len(), 6);
            let (first, last) = (accs[0], accs[5]);
            // Holds: never more than 5 points below where it started.
            assert!(last >= first - 0.05, "seed {seed}: pseudo-label accuracy fell: {accs:?}");
            // The case is not solved without adaptation.
            let nn = nearest_neighbour(xs.as_ref(), &ys, xt.as_ref());
            let nn_acc = nn.iter().zip(&yt).filter(|(a, b)| a == b).count() as f64 / yt.len() as f64;
            assert!(nn_acc < 0.9, "seed {seed}: no-transform accuracy {nn_acc}: the shift is too small to test anything");
            firsts += first;
            lasts += last;
        }
        let n = seeds.len() as f64;
        // Improves: on average the iterations gain at least 5 points over TCA.
        assert!(lasts / n >= firsts / n + 0.05, "mean pseudo-label accuracy {:.3} after the first solve, {:.3} after the last", firsts / n, lasts / n);
    }

    #[test]
    fn coral_gives_the_source_the_target_covariance() {
        let (xs, _, xt, _) = shifted_pair(200, 5, 2, 9);
        let f = coral(xs.as_ref(), xt.as_ref()).unwrap();
        let zs = f.apply(xs.as_ref(), DomainSide::Source);
        // cov(zs) + … : Aᵀ (Cs) A with A = (Cs+I)^−½ (Ct+I)^½ gives Aᵀ(Cs + I)A = Ct + I.
        let eye = Mat::<f64>::identity(5, 5);
        let a = match &f {
            Fitted::Coral { source } => source.clone(),
            _ => unreachable!(),
        };
        let lhs = a.transpose() * (covariance(xs.as_ref()) + &eye) * &a;
        let rhs = covariance(xt.as_ref()) + &eye;
        for i in 0..5 {
            for j in 0..5 {
                assert!((lhs[(i, j)] - rhs[(i, j)]).abs() < 1e-8);
            }
        }
        assert!(zs.nrows() == 200);
    }

    #[test]
    fn nearest_neighbour_picks_the_closest_row() {
        let train = from_rows(&[0.0, 0.0, 10.0, 0.0, 0.0, 10.0], 3, 2);
        let test = from_rows(&[9.0, 1.0, 1.0, 8.0, -1.0, -1.0], 3, 2);
        assert_eq!(nearest_neighbour(train.as_ref(), &[4, 5, 6], test.as_ref()), vec![5, 6, 4]);
    }
}
