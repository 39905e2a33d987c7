//! Strided row-major matrix views: the currency of kernels and adapter hooks.
//!
//! A view is a pointer, a row count, a column count and a row stride, like a BLAS matrix
//! argument. Strides let a producer write straight into its slice of a concatenation
//! (so `concat` costs nothing) and let threads own disjoint row or column blocks of one
//! buffer. Because two mutable views may cover interleaved memory (column blocks of the
//! same rows), a view never materializes a slice wider than one row's `cols` elements.

use core::marker::PhantomData;
use core::ops::Range;

/// Read-only strided view of an f32 matrix.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    ptr: *const f32,
    rows: usize,
    cols: usize,
    stride: usize,
    _life: PhantomData<&'a [f32]>,
}

// SAFETY: a MatRef is a shared borrow of f32 data, like `&[f32]`, which is Send + Sync.
unsafe impl Send for MatRef<'_> {}
// SAFETY: as above; it only reads.
unsafe impl Sync for MatRef<'_> {}

/// Mutable strided view of an f32 matrix.
#[derive(Debug)]
pub struct MatMut<'a> {
    ptr: *mut f32,
    rows: usize,
    cols: usize,
    stride: usize,
    _life: PhantomData<&'a mut [f32]>,
}

// SAFETY: a MatMut is an exclusive borrow of the elements it covers, like `&mut [f32]`,
// which is Send. It is not Sync: `row_mut` needs `&mut self`.
unsafe impl Send for MatMut<'_> {}

fn required_len(rows: usize, cols: usize, stride: usize) -> usize {
    if rows == 0 { 0 } else { (rows - 1) * stride + cols }
}

impl<'a> MatRef<'a> {
    /// Views `data` as `rows × cols` with row stride `stride`.
    ///
    /// # Panics
    /// If `cols > stride` or `data` is too short. Callers pass shapes they validated.
    pub fn new(data: &'a [f32], rows: usize, cols: usize, stride: usize) -> MatRef<'a> {
        assert!(cols <= stride || rows <= 1, "cols {cols} > stride {stride}");
        assert!(data.len() >= required_len(rows, cols, stride), "view out of bounds");
        MatRef { ptr: data.as_ptr(), rows, cols, stride, _life: PhantomData }
    }

    /// A dense `rows × cols` view of a contiguous slice.
    pub fn dense(data: &'a [f32], cols: usize) -> MatRef<'a> {
        let rows = data.len().checked_div(cols).unwrap_or(0);
        MatRef::new(data, rows, cols, cols)
    }

    /// Builds a view from raw parts.
    ///
    /// # Safety
    /// For `'a`, every element `ptr + r·stride + c` (`r < rows`, `c < cols`) must be
    /// readable and not written through any other reference.
    pub unsafe fn from_raw_parts(ptr: *const f32, rows: usize, cols: usize, stride: usize) -> MatRef<'a> {
        MatRef { ptr, rows, cols, stride, _life: PhantomData }
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Distance between row starts, in elements.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Pointer to element (0, 0).
    pub fn as_ptr(&self) -> *const f32 {
        self.ptr
    }

    /// Row `i` as a slice of `cols` elements.
    ///
    /// # Panics
    /// If `i >= rows`.
    #[inline]
    pub fn row(&self, i: usize) -> &'a [f32] {
        assert!(i < self.rows, "row {i} of {}", self.rows);
        // SAFETY: `i < rows`, so the row lies within the view, which the constructor
        // guarantees is readable for 'a.
        unsafe { core::slice::from_raw_parts(self.ptr.add(i * self.stride), self.cols) }
    }

    /// The sub-view of rows `r`.
    pub fn rows_range(&self, r: Range<usize>) -> MatRef<'a> {
        assert!(r.start <= r.end && r.end <= self.rows, "rows {r:?} of {}", self.rows);
        MatRef {
            // SAFETY: r.start <= rows, so the offset stays within (or one past) the view.
            ptr: unsafe { self.ptr.add(r.start * self.stride) },
            rows: r.end - r.start,
            cols: self.cols,
            stride: self.stride,
            _life: PhantomData,
        }
    }

    /// The sub-view of columns `c`.
    pub fn cols_range(&self, c: Range<usize>) -> MatRef<'a> {
        assert!(c.start <= c.end && c.end <= self.cols, "cols {c:?} of {}", self.cols);
        MatRef {
            // SAFETY: c.start <= cols <= stride, so the offset stays within the first row.
            ptr: unsafe { self.ptr.add(c.start) },
            rows: self.rows,
            cols: c.end - c.start,
            stride: self.stride,
            _life: PhantomData,
        }
    }

    /// Whether rows are adjacent (`stride == cols`), so the view is one slice.
    pub fn is_contiguous(&self) -> bool {
        self.stride == self.cols || self.rows <= 1
    }

    /// The whole view as one slice, if contiguous.
    pub fn as_slice(&self) -> Option<&'a [f32]> {
        // SAFETY: contiguous views cover exactly rows·cols readable elements.
        self.is_contiguous().then(|| unsafe { core::slice::from_raw_parts(self.ptr, self.rows * self.cols) })
    }
}

impl<'a> MatMut<'a> {
    /// Views `data` mutably as `rows × cols` with row stride `stride`.
    ///
    /// # Panics
    /// If `cols > stride` or `data` is too short.
    pub fn new(data: &'a mut [f32], rows: usize, cols: usize, stride: usize) -> MatMut<'a> {
        assert!(cols <= stride || rows <= 1, "cols {cols} > stride {stride}");
        assert!(data.len() >= required_len(rows, cols, stride), "view out of bounds");
        MatMut { ptr: data.as_mut_ptr(), rows, cols, stride, _life: PhantomData }
    }

    /// A dense `rows × cols` mutable view of a contiguous slice.
    pub fn dense(data: &'a mut [f32], cols: usize) -> MatMut<'a> {
        let rows = data.len().checked_div(cols).unwrap_or(0);
        MatMut::new(data, rows, cols, cols)
    }

    /// Builds a mutable view from raw parts.
    ///
    /// # Safety
    /// For `'a`, every element `ptr + r·stride + c` (`r < rows`, `c < cols`) must be
    /// valid for reads and writes and not accessed through any other reference.
    pub unsafe fn from_raw_parts(ptr: *mut f32, rows: usize, cols: usize, stride: usize) -> MatMut<'a> {
        MatMut { ptr, rows, cols, stride, _life: PhantomData }
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Distance between row starts, in elements.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Pointer to element (0, 0).
    pub fn as_mut_ptr(&mut self) -> *mut f32 {
        self.ptr
    }

    /// Row `i` as a mutable slice of `cols` elements.
    ///
    /// # Panics
    /// If `i >= rows`.
    #[inline]
    pub fn row_mut(&mut self, i: usize) -> &mut [f32] {
        assert!(i < self.rows, "row {i} of {}", self.rows);
        // SAFETY: `i < rows`; the row's `cols` elements are exclusively ours (constructor
        // contract), and `&mut self` prevents a second live row slice.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.add(i * self.stride), self.cols) }
    }

    /// A read-only view of the same elements.
    pub fn as_ref(&self) -> MatRef<'_> {
        MatRef { ptr: self.ptr, rows: self.rows, cols: self.cols, stride: self.stride, _life: PhantomData }
    }

    /// Reborrows for a shorter lifetime.
    pub fn reborrow(&mut self) -> MatMut<'_> {
        MatMut { ptr: self.ptr, rows: self.rows, cols: self.cols, stride: self.stride, _life: PhantomData }
    }

    /// Consumes the view, returning rows `r`.
    pub fn into_rows_range(self, r: Range<usize>) -> MatMut<'a> {
        assert!(r.start <= r.end && r.end <= self.rows, "rows {r:?} of {}", self.rows);
        MatMut {
            // SAFETY: r.start <= rows keeps the pointer within (or one past) the view.
            ptr: unsafe { self.ptr.add(r.start * self.stride) },
            rows: r.end - r.start,
            cols: self.cols,
            stride: self.stride,
            _life: PhantomData,
        }
    }

    /// Consumes the view, returning columns `c`.
    pub fn into_cols_range(self, c: Range<usize>) -> MatMut<'a> {
        assert!(c.start <= c.end && c.end <= self.cols, "cols {c:?} of {}", self.cols);
        MatMut {
            // SAFETY: c.start <= cols <= stride keeps the pointer within the first row.
            ptr: unsafe { self.ptr.add(c.start) },
            rows: self.rows,
            cols: c.end - c.start,
            stride: self.stride,
            _life: PhantomData,
        }
    }

    /// Splits into disjoint row blocks `[0, at)` and `[at, rows)`.
    pub fn split_rows(self, at: usize) -> (MatMut<'a>, MatMut<'a>) {
        assert!(at <= self.rows, "split at {at} of {}", self.rows);
        let (ptr, rows, cols, stride) = (self.ptr, self.rows, self.cols, self.stride);
        // SAFETY: the two halves cover disjoint rows of the elements `self` owned.
        unsafe {
            (
                MatMut::from_raw_parts(ptr, at, cols, stride),
                MatMut::from_raw_parts(ptr.add(at * stride), rows - at, cols, stride),
            )
        }
    }

    /// Splits into disjoint column blocks `[0, at)` and `[at, cols)`.
    pub fn split_cols(self, at: usize) -> (MatMut<'a>, MatMut<'a>) {
        assert!(at <= self.cols, "split at {at} of {}", self.cols);
        let (ptr, rows, cols, stride) = (self.ptr, self.rows, self.cols, self.stride);
        // SAFETY: the two halves cover disjoint columns of the elements `self` owned, and
        // neither ever forms a slice wider than its own columns.
        unsafe {
            (
                MatMut::from_raw_parts(ptr, rows, at, stride),
                MatMut::from_raw_parts(ptr.add(at), rows, cols - at, stride),
            )
        }
    }

    /// Whether rows are adjacent.
    pub fn is_contiguous(&self) -> bool {
        self.stride == self.cols || self.rows <= 1
    }

    /// Applies `f` to every row.
    pub fn for_each_row(&mut self, mut f: impl FnMut(usize, &mut [f32])) {
        for i in 0..self.rows {
            f(i, self.row_mut(i));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_splits_write_disjoint_elements() {
        let mut data = [0.0f32; 12];
        let m = MatMut::new(&mut data, 3, 4, 4);
        let (mut a, mut b) = m.split_cols(1);
        a.for_each_row(|i, r| r.fill(i as f32));
        b.for_each_row(|_, r| r.fill(9.0));
        assert_eq!(data, [0.0, 9.0, 9.0, 9.0, 1.0, 9.0, 9.0, 9.0, 2.0, 9.0, 9.0, 9.0]);
    }

    #[test]
    fn strided_rows_read_back() {
        let data: [f32; 10] = core::array::from_fn(|i| i as f32);
        let m = MatRef::new(&data, 2, 3, 5);
        assert_eq!(m.row(1), &[5.0, 6.0, 7.0]);
        assert_eq!(m.cols_range(1..3).row(0), &[1.0, 2.0]);
        assert!(m.as_slice().is_none());
    }
}
