//! A small dense `f64` matrix, row-major, for the classic methods: products through `gemm` (the
//! matrix-product crate burn-flex already builds), sums, transposes and column slices. The
//! decompositions are in `linalg`. Written here instead of taking a linear-algebra crate: the
//! one graft used (faer) cost about 85 s of a cold build for six decompositions.

use std::ops::{Add, Index, IndexMut, Mul, Sub};

/// A `rows × cols` matrix, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Mat<T = f64> {
    rows: usize,
    cols: usize,
    data: Vec<T>,
}

/// A borrowed matrix (what functions take).
pub type MatRef<'a, T> = &'a Mat<T>;

impl Mat<f64> {
    pub fn from_fn(rows: usize, cols: usize, f: impl Fn(usize, usize) -> f64) -> Self {
        let mut data = Vec::with_capacity(rows * cols);
        for i in 0..rows {
            for j in 0..cols {
                data.push(f(i, j));
            }
        }
        Self { rows, cols, data }
    }

    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self { rows, cols, data: vec![0.0; rows * cols] }
    }

    pub fn identity(rows: usize, cols: usize) -> Self {
        Self::from_fn(rows, cols, |i, j| if i == j { 1.0 } else { 0.0 })
    }

    pub fn nrows(&self) -> usize {
        self.rows
    }

    pub fn ncols(&self) -> usize {
        self.cols
    }

    /// The matrix borrowed (as the functions of this module take it).
    pub fn as_ref(&self) -> &Self {
        self
    }

    pub fn to_owned(&self) -> Self {
        self.clone()
    }

    /// Row `i` as a slice.
    pub fn row(&self, i: usize) -> &[f64] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    pub fn row_mut(&mut self, i: usize) -> &mut [f64] {
        &mut self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// Every row, mutably, as a parallel iterator.
    pub fn par_rows_mut(&mut self) -> rayon::slice::ChunksMut<'_, f64> {
        use rayon::slice::ParallelSliceMut;
        self.data.par_chunks_mut(self.cols.max(1))
    }

    /// Column `j`, copied.
    pub fn col(&self, j: usize) -> Vec<f64> {
        (0..self.rows).map(|i| self.data[i * self.cols + j]).collect()
    }

    pub fn transpose(&self) -> Self {
        let mut t = Self::zeros(self.cols, self.rows);
        for i in 0..self.rows {
            for j in 0..self.cols {
                t.data[j * self.rows + i] = self.data[i * self.cols + j];
            }
        }
        t
    }

    /// Columns `start .. start + count`, copied.
    pub fn subcols(&self, start: usize, count: usize) -> Self {
        Self::from_fn(self.rows, count, |i, j| self.data[i * self.cols + start + j])
    }

    /// `self · rhs`.
    pub fn matmul(&self, rhs: &Self) -> Self {
        assert_eq!(self.cols, rhs.rows, "matrix product of {}×{} and {}×{}", self.rows, self.cols, rhs.rows, rhs.cols);
        let mut out = Self::zeros(self.rows, rhs.cols);
        if self.rows == 0 || rhs.cols == 0 || self.cols == 0 {
            return out;
        }
        let parallelism = if self.rows * rhs.cols * self.cols >= 128 * 128 * 128 { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
        // SAFETY: the three pointers cover `rows × cols` elements of their own row-major
        // buffers (column stride 1, row stride `cols`), and `out` is ours.
        unsafe {
            gemm::gemm(
                self.rows,
                rhs.cols,
                self.cols,
                out.data.as_mut_ptr(),
                1,
                rhs.cols as isize,
                false,
                self.data.as_ptr(),
                1,
                self.cols as isize,
                rhs.data.as_ptr(),
                1,
                rhs.cols as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            );
        }
        out
    }

    fn zip_with(&self, rhs: &Self, f: impl Fn(f64, f64) -> f64) -> Self {
        assert_eq!((self.rows, self.cols), (rhs.rows, rhs.cols), "element-wise operation on different shapes");
        Self { rows: self.rows, cols: self.cols, data: self.data.iter().zip(&rhs.data).map(|(&a, &b)| f(a, b)).collect() }
    }
}

impl Index<(usize, usize)> for Mat<f64> {
    type Output = f64;
    fn index(&self, (i, j): (usize, usize)) -> &f64 {
        debug_assert!(i < self.rows && j < self.cols);
        &self.data[i * self.cols + j]
    }
}

impl IndexMut<(usize, usize)> for Mat<f64> {
    fn index_mut(&mut self, (i, j): (usize, usize)) -> &mut f64 {
        debug_assert!(i < self.rows && j < self.cols);
        &mut self.data[i * self.cols + j]
    }
}

/// `Mat ∘ Mat`, `Mat ∘ &Mat`, `&Mat ∘ Mat`, `&Mat ∘ &Mat` for one operator.
macro_rules! binary {
    ($trait:ident, $method:ident, |$a:ident, $b:ident| $body:expr) => {
        impl $trait<&Mat<f64>> for &Mat<f64> {
            type Output = Mat<f64>;
            fn $method(self, rhs: &Mat<f64>) -> Mat<f64> {
                let ($a, $b) = (self, rhs);
                $body
            }
        }
        impl $trait<Mat<f64>> for &Mat<f64> {
            type Output = Mat<f64>;
            fn $method(self, rhs: Mat<f64>) -> Mat<f64> {
                self.$method(&rhs)
            }
        }
        impl $trait<&Mat<f64>> for Mat<f64> {
            type Output = Mat<f64>;
            fn $method(self, rhs: &Mat<f64>) -> Mat<f64> {
                (&self).$method(rhs)
            }
        }
        impl $trait<Mat<f64>> for Mat<f64> {
            type Output = Mat<f64>;
            fn $method(self, rhs: Mat<f64>) -> Mat<f64> {
                (&self).$method(&rhs)
            }
        }
    };
}

binary!(Mul, mul, |a, b| a.matmul(b));
binary!(Add, add, |a, b| a.zip_with(b, |x, y| x + y));
binary!(Sub, sub, |a, b| a.zip_with(b, |x, y| x - y));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_match_the_definition() {
        for (n, k, m) in [(3, 4, 5), (1, 7, 1), (130, 140, 150)] {
            let a = Mat::from_fn(n, k, |i, j| ((i * 31 + j * 17) % 13) as f64 - 6.0);
            let b = Mat::from_fn(k, m, |i, j| ((i * 7 + j * 11) % 9) as f64 * 0.5 - 2.0);
            let c = &a * &b;
            for i in 0..n {
                for j in 0..m {
                    let want: f64 = (0..k).map(|t| a[(i, t)] * b[(t, j)]).sum();
                    assert!((c[(i, j)] - want).abs() < 1e-9, "{n}×{k}·{k}×{m} at ({i}, {j})");
                }
            }
            let t = a.transpose();
            assert_eq!((t.nrows(), t.ncols()), (k, n));
            assert_eq!(t[(k - 1, 0)], a[(0, k - 1)]);
        }
        let a = Mat::from_fn(2, 3, |i, j| (i + j) as f64);
        assert_eq!((&a + &a)[(1, 2)], 6.0);
        assert_eq!((&a - &a)[(1, 2)], 0.0);
        assert_eq!(a.subcols(1, 2)[(1, 0)], 2.0);
    }
}
