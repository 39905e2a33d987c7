//! Borrowed tensor views that cross the boundary: strided row-major f32 matrices and
//! weight matrices in a storage format. They carry a lifetime, so safe code on either
//! side cannot keep one past the call that lent it.

use core::marker::PhantomData;

use abi_stable::StableAbi;

use crate::{ErrorCode, PluginError};

/// A read-only `rows × cols` f32 matrix whose row `i` starts at `ptr + i · stride`.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct MatView<'a> {
    ptr: *const f32,
    rows: usize,
    cols: usize,
    stride: usize,
    _borrow: PhantomData<&'a f32>,
}

// SAFETY: a MatView is a shared borrow of f32 data, which is Send + Sync.
unsafe impl Send for MatView<'_> {}
// SAFETY: as above.
unsafe impl Sync for MatView<'_> {}

/// Whether `rows` rows of `cols` values `stride` apart fit in `len` values.
fn fits(len: usize, rows: usize, cols: usize, stride: usize) -> bool {
    if rows == 0 {
        return true;
    }
    cols <= stride && (rows - 1).checked_mul(stride).and_then(|n| n.checked_add(cols)).is_some_and(|n| n <= len)
}

impl<'a> MatView<'a> {
    /// A view of `data`, or `None` if the rows do not fit in it or `cols > stride`.
    pub fn new(data: &'a [f32], rows: usize, cols: usize, stride: usize) -> Option<MatView<'a>> {
        fits(data.len(), rows, cols, stride).then_some(MatView {
            ptr: data.as_ptr(),
            rows,
            cols,
            stride,
            _borrow: PhantomData,
        })
    }

    /// `rows` rows of no columns (an adapter without run state).
    pub fn empty(rows: usize) -> MatView<'static> {
        MatView { ptr: core::ptr::NonNull::dangling().as_ptr(), rows, cols: 0, stride: 0, _borrow: PhantomData }
    }

    /// A view from raw parts.
    ///
    /// # Safety
    /// Rows `0..rows`, each `cols` floats starting `stride` apart from `ptr`, must be
    /// readable and not written through any other path for `'a`.
    pub unsafe fn from_raw_parts(ptr: *const f32, rows: usize, cols: usize, stride: usize) -> MatView<'a> {
        MatView { ptr, rows, cols, stride, _borrow: PhantomData }
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Distance between row starts, in floats.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// The first element.
    pub fn as_ptr(&self) -> *const f32 {
        self.ptr
    }

    /// Row `i`.
    ///
    /// # Panics
    /// If `i >= rows`.
    pub fn row(&self, i: usize) -> &'a [f32] {
        assert!(i < self.rows, "row {i} of {}", self.rows);
        // SAFETY: the constructor's contract covers every row below `rows`.
        unsafe { core::slice::from_raw_parts(self.ptr.add(i * self.stride), self.cols) }
    }

    /// Rows `start..start + n` as a view of their own, or `None` if out of range.
    pub fn rows_range(&self, start: usize, n: usize) -> Option<MatView<'a>> {
        if start.checked_add(n)? > self.rows {
            return None;
        }
        // SAFETY: a sub-range of rows of a valid view (start <= rows, so the pointer
        // stays inside or one past the allocation).
        Some(unsafe { MatView::from_raw_parts(self.ptr.add(start * self.stride), n, self.cols, self.stride) })
    }
}

/// A writable `rows × cols` f32 matrix whose row `i` starts at `ptr + i · stride`.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct MatViewMut<'a> {
    ptr: *mut f32,
    rows: usize,
    cols: usize,
    stride: usize,
    _borrow: PhantomData<&'a mut f32>,
}

// SAFETY: a MatViewMut is an exclusive borrow of f32 data, which is Send.
unsafe impl Send for MatViewMut<'_> {}

impl<'a> MatViewMut<'a> {
    /// A view of `data`, or `None` if the rows do not fit in it or `cols > stride`.
    pub fn new(data: &'a mut [f32], rows: usize, cols: usize, stride: usize) -> Option<MatViewMut<'a>> {
        fits(data.len(), rows, cols, stride).then_some(MatViewMut {
            ptr: data.as_mut_ptr(),
            rows,
            cols,
            stride,
            _borrow: PhantomData,
        })
    }

    /// A view from raw parts.
    ///
    /// # Safety
    /// Rows `0..rows`, each `cols` floats starting `stride` apart from `ptr`, must be
    /// writable and not accessed through any other path for `'a`; rows must not overlap
    /// (`cols <= stride` or `rows <= 1`).
    pub unsafe fn from_raw_parts(ptr: *mut f32, rows: usize, cols: usize, stride: usize) -> MatViewMut<'a> {
        MatViewMut { ptr, rows, cols, stride, _borrow: PhantomData }
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Distance between row starts, in floats.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// The first element.
    pub fn as_mut_ptr(&mut self) -> *mut f32 {
        self.ptr
    }

    /// Row `i`.
    ///
    /// # Panics
    /// If `i >= rows`.
    pub fn row(&self, i: usize) -> &[f32] {
        assert!(i < self.rows, "row {i} of {}", self.rows);
        // SAFETY: the constructor's contract covers every row below `rows`.
        unsafe { core::slice::from_raw_parts(self.ptr.add(i * self.stride), self.cols) }
    }

    /// Row `i`, writable.
    ///
    /// # Panics
    /// If `i >= rows`.
    pub fn row_mut(&mut self, i: usize) -> &mut [f32] {
        assert!(i < self.rows, "row {i} of {}", self.rows);
        // SAFETY: the constructor's contract covers every row below `rows`, exclusively.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.add(i * self.stride), self.cols) }
    }

    /// A shorter-lived exclusive view of the same rows.
    pub fn reborrow(&mut self) -> MatViewMut<'_> {
        MatViewMut { ptr: self.ptr, rows: self.rows, cols: self.cols, stride: self.stride, _borrow: PhantomData }
    }

    /// A read-only view of the same rows.
    pub fn as_view(&self) -> MatView<'_> {
        // SAFETY: shared access to rows this view owns, for as long as `self` is borrowed.
        unsafe { MatView::from_raw_parts(self.ptr, self.rows, self.cols, self.stride) }
    }
}

/// Element storage of a [`WeightView`].
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElemFormat {
    /// Little-endian f32.
    F32 = 0,
    /// IEEE half, as `u16` bit patterns.
    F16 = 1,
    /// bfloat16, as `u16` bit patterns.
    Bf16 = 2,
}

impl ElemFormat {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            ElemFormat::F32 => 4,
            ElemFormat::F16 | ElemFormat::Bf16 => 2,
        }
    }

    /// The lowercase name (`f32`, `f16`, `bf16`).
    pub fn name(self) -> &'static str {
        match self {
            ElemFormat::F32 => "f32",
            ElemFormat::F16 => "f16",
            ElemFormat::Bf16 => "bf16",
        }
    }
}

/// A dense `rows × cols` weight matrix, row-major, in `format`. Adapters pass their own
/// parameters (often still inside a mapped file) to host kernels this way.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct WeightView<'a> {
    ptr: *const u8,
    format: ElemFormat,
    rows: usize,
    cols: usize,
    _borrow: PhantomData<&'a u8>,
}

// SAFETY: a WeightView is a shared borrow of plain bytes.
unsafe impl Send for WeightView<'_> {}
// SAFETY: as above.
unsafe impl Sync for WeightView<'_> {}

impl<'a> WeightView<'a> {
    /// An f32 matrix, or `None` if `data` is not `rows · cols` long.
    pub fn f32(data: &'a [f32], rows: usize, cols: usize) -> Option<WeightView<'a>> {
        (rows.checked_mul(cols)? == data.len()).then_some(WeightView {
            ptr: data.as_ptr().cast(),
            format: ElemFormat::F32,
            rows,
            cols,
            _borrow: PhantomData,
        })
    }

    /// An f16 or bf16 matrix of bit patterns, or `None` on a length mismatch or an f32
    /// format.
    pub fn half(data: &'a [u16], format: ElemFormat, rows: usize, cols: usize) -> Option<WeightView<'a>> {
        (format != ElemFormat::F32 && rows.checked_mul(cols)? == data.len()).then_some(WeightView {
            ptr: data.as_ptr().cast(),
            format,
            rows,
            cols,
            _borrow: PhantomData,
        })
    }

    /// Rows (`out` for a linear weight).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (`in` for a linear weight).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Storage format.
    pub fn format(&self) -> ElemFormat {
        self.format
    }

    /// The f32 values, if that is the format.
    pub fn as_f32(&self) -> Option<&'a [f32]> {
        // SAFETY: constructed from a `&'a [f32]` of rows·cols values when F32.
        (self.format == ElemFormat::F32)
            .then(|| unsafe { core::slice::from_raw_parts(self.ptr.cast::<f32>(), self.rows * self.cols) })
    }

    /// The 16-bit patterns, if the format is f16 or bf16.
    pub fn as_u16(&self) -> Option<&'a [u16]> {
        // SAFETY: constructed from a `&'a [u16]` of rows·cols values when not F32.
        (self.format != ElemFormat::F32)
            .then(|| unsafe { core::slice::from_raw_parts(self.ptr.cast::<u16>(), self.rows * self.cols) })
    }
}

/// A host kernel's answer. Values are never reused.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelStatus(pub u32);

impl KernelStatus {
    /// Done.
    pub const OK: KernelStatus = KernelStatus(0);
    /// `x`, `w` and `y` do not agree.
    pub const SHAPE_MISMATCH: KernelStatus = KernelStatus(1);
    /// Less scratch than `scratch_floats` asked for.
    pub const SCRATCH_TOO_SMALL: KernelStatus = KernelStatus(2);

    /// Whether the call succeeded.
    pub fn is_ok(self) -> bool {
        self == KernelStatus::OK
    }

    /// `Ok` for [`OK`](Self::OK), else an [`ErrorCode::KERNEL`] error about `field` saying
    /// that the kernel refused `what` (the product, such as `x·Aᵀ`).
    pub fn check(self, field: &str, what: impl core::fmt::Display) -> Result<(), PluginError> {
        if self.is_ok() {
            Ok(())
        } else {
            Err(PluginError::new(ErrorCode::KERNEL, field, format!("host kernel refused {what}: status {}", self.0)))
        }
    }
}
