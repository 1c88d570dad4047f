//! A small L-BFGS minimiser with a backtracking (Armijo) line search.

/// Minimises `f` from `x`: `f(x, grad)` returns the value and writes the gradient.
pub fn minimise(mut x: Vec<f64>, mut f: impl FnMut(&[f64], &mut [f64]) -> f64, max_iter: usize, tol: f64) -> Vec<f64> {
    const MEMORY: usize = 10;
    let n = x.len();
    let mut g = vec![0.0; n];
    let mut fx = f(&x, &mut g);
    let mut s_hist: Vec<Vec<f64>> = Vec::new();
    let mut y_hist: Vec<Vec<f64>> = Vec::new();
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    for _ in 0..max_iter {
        let gnorm = dot(&g, &g).sqrt();
        if gnorm < tol * (1.0 + fx.abs()) {
            break;
        }
        // Two-loop recursion: d = −H g.
        let mut q = g.clone();
        let mut alphas = Vec::with_capacity(s_hist.len());
        for (s, y) in s_hist.iter().zip(&y_hist).rev() {
            let rho = 1.0 / dot(y, s);
            let a = rho * dot(s, &q);
            q.iter_mut().zip(y).for_each(|(qi, yi)| *qi -= a * yi);
            alphas.push((a, rho));
        }
        if let (Some(s), Some(y)) = (s_hist.last(), y_hist.last()) {
            let gamma = dot(s, y) / dot(y, y);
            q.iter_mut().for_each(|v| *v *= gamma);
        }
        for ((s, y), (a, rho)) in s_hist.iter().zip(&y_hist).zip(alphas.into_iter().rev()) {
            let b = rho * dot(y, &q);
            q.iter_mut().zip(s).for_each(|(qi, si)| *qi += (a - b) * si);
        }
        let mut d: Vec<f64> = q.iter().map(|v| -v).collect();
        let mut slope = dot(&g, &d);
        if slope >= 0.0 {
            // Not a descent direction: fall back to steepest descent.
            d = g.iter().map(|v| -v).collect();
            slope = -dot(&g, &g);
            s_hist.clear();
            y_hist.clear();
        }
        let mut step = if s_hist.is_empty() { 1.0 / gnorm.max(1.0) } else { 1.0 };
        let mut g_new = vec![0.0; n];
        let mut x_new;
        let mut f_new;
        loop {
            x_new = x.iter().zip(&d).map(|(xi, di)| xi + step * di).collect::<Vec<_>>();
            f_new = f(&x_new, &mut g_new);
            if f_new <= fx + 1e-4 * step * slope || step < 1e-16 {
                break;
            }
            step *= 0.5;
        }
        let s: Vec<f64> = x_new.iter().zip(&x).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = g_new.iter().zip(&g).map(|(a, b)| a - b).collect();
        let converged = (fx - f_new).abs() < 1e-12 * (1.0 + fx.abs());
        if dot(&s, &y) > 1e-12 {
            s_hist.push(s);
            y_hist.push(y);
            if s_hist.len() > MEMORY {
                s_hist.remove(0);
                y_hist.remove(0);
            }
        }
        x = x_new;
        g = g_new.clone();
        fx = f_new;
        if converged {
            break;
        }
    }
    x
}
