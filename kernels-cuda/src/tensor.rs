//! Launch wrappers for `tensor.cu`: the per-row tensor ops of graph format v2.
//!
//! Shapes travel as a [`Strided`] walk (row-major extents plus up to three stride sets,
//! in elements), built on the host by [`Strided::new`], which drops extent-1 axes and
//! merges contiguous neighbours exactly like the CPU planner's walks. Every wrapper takes
//! `rows` (the batch) and per-operand row strides `ld` in elements (0: a constant, the
//! same row for every example).

use cudarc::driver::{CudaStream, DeviceRepr, LaunchConfig, PushKernelArg};

use crate::device::{blocks, int};
use crate::{CudaError, Gpu, ReduceCode, Result, TensorBinOp, UnaryCode, WeightFormat};

/// Axes a [`Strided`] walk holds (`TS_DIMS` in `tensor.cu`).
pub const TS_DIMS: usize = 8;

/// A row-major walk over at most [`TS_DIMS`] axes with four stride sets, laid out as
/// `struct Strided` in `tensor.cu` (passed to kernels by value).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Strided {
    /// Axes in use.
    pub rank: i32,
    /// Extents, the last fastest.
    pub dims: [i32; TS_DIMS],
    /// Per operand set, one stride per axis (elements; 0 broadcasts).
    pub st: [[i32; TS_DIMS]; 4],
}

// SAFETY: `Strided` is `repr(C)`, plain i32 data with the layout of `struct Strided` in
// tensor.cu (4 + 32 + 128 bytes, 4-byte aligned); it is copied into the kernel's
// parameter space by value.
unsafe impl DeviceRepr for Strided {}

impl Strided {
    /// The walk over `dims` with one stride list per operand set (at most 4, each as long
    /// as `dims`). Extent-1 axes are dropped and an axis is merged into its outer
    /// neighbour when every set is contiguous across both. `None` when more than
    /// [`TS_DIMS`] axes remain or an element count or offset does not fit an `i32`.
    pub fn new(dims: &[usize], sets: &[&[usize]]) -> Option<Strided> {
        if sets.len() > 4 || sets.iter().any(|s| s.len() != dims.len()) {
            return None;
        }
        let mut w = Strided::default();
        if dims.contains(&0) {
            w.rank = 1;
            return Some(w); // dims[0] == 0: no elements
        }
        let mut rank = 0usize;
        let mut d_all = [0usize; TS_DIMS];
        let mut s_all = [[0usize; TS_DIMS]; 4];
        for (i, &d) in dims.iter().enumerate() {
            if d == 1 {
                continue;
            }
            if rank > 0 && sets.iter().enumerate().all(|(k, s)| Some(s_all[k][rank - 1]) == s[i].checked_mul(d)) {
                d_all[rank - 1] = d_all[rank - 1].checked_mul(d)?;
                for (k, s) in sets.iter().enumerate() {
                    s_all[k][rank - 1] = s[i];
                }
                continue;
            }
            if rank == TS_DIMS {
                return None;
            }
            d_all[rank] = d;
            for (k, s) in sets.iter().enumerate() {
                s_all[k][rank] = s[i];
            }
            rank += 1;
        }
        let mut total = 1usize;
        for &d in &d_all[..rank] {
            total = total.checked_mul(d)?;
        }
        if total > i32::MAX as usize {
            return None;
        }
        for set in s_all.iter().take(sets.len()) {
            let mut max = 0usize;
            for (d, st) in d_all[..rank].iter().zip(set) {
                max = max.checked_add((d - 1).checked_mul(*st)?)?;
            }
            if max > i32::MAX as usize {
                return None;
            }
        }
        w.rank = rank as i32;
        for (a, d) in d_all[..rank].iter().enumerate() {
            w.dims[a] = *d as i32;
            for (ws, set) in w.st.iter_mut().zip(&s_all) {
                ws[a] = set[a] as i32;
            }
        }
        Some(w)
    }

    /// Elements of the walk.
    pub fn total(&self) -> usize {
        self.dims[..self.rank.clamp(0, TS_DIMS as i32) as usize].iter().map(|&d| d.max(0) as usize).product()
    }

    /// Offsets of element `e` in each set (the kernels' `ts_offsets`; for tests).
    pub fn offsets(&self, mut e: usize) -> [usize; 4] {
        let mut off = [0usize; 4];
        for i in (0..self.rank.clamp(0, TS_DIMS as i32) as usize).rev() {
            let d = self.dims[i].max(1) as usize;
            let c = e % d;
            e /= d;
            for (k, o) in off.iter_mut().enumerate() {
                *o += c * self.st[k][i] as usize;
            }
        }
        off
    }
}

/// Blocks of 256 threads: x over `units` per row (`per` units a block, at most 4096
/// blocks, the kernels stride), y over rows (at most 65535, likewise).
fn grid(rows: usize, units: usize, per: usize) -> Result<LaunchConfig> {
    let x = blocks(units, per)?.min(4096);
    let y = u32::try_from(rows.clamp(1, 65_535)).map_err(|_| CudaError::Invalid("rows".into()))?;
    Ok(LaunchConfig { grid_dim: (x, y, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 })
}

impl Gpu {
    /// `y[r, 0..n) = bits` as 32-bit words (a pad's fill value).
    ///
    /// # Safety
    /// `y` must be a live device allocation of this context holding `rows` rows of
    /// stride `ldy` words with at least `n` words each.
    pub unsafe fn fill_u32(
        &self,
        stream: &CudaStream,
        y: u64,
        ldy: usize,
        rows: usize,
        n: usize,
        bits: u32,
    ) -> Result<()> {
        if rows == 0 || n == 0 {
            return Ok(());
        }
        let (ldy, ri, ni) = (int(ldy)?, int(rows)?, int(n)?);
        let mut l = stream.launch_builder(self.function("fill_u32")?);
        l.arg(&y).arg(&ldy).arg(&ri).arg(&ni).arg(&bits);
        // SAFETY: matches tensor.cu; the range is valid by contract.
        unsafe { l.launch(grid(rows, n, 256)?) }?;
        Ok(())
    }

    /// `y[r, ybase + off0(e)] = x[r, xbase + off1(e)]` over the 32-bit words of walk `s`.
    ///
    /// # Safety
    /// Every address the walk, bases and row strides reach for `rows` rows must be live
    /// device memory of this context; `y`'s range must not overlap `x`'s.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn strided_copy(
        &self,
        stream: &CudaStream,
        x: u64,
        ldx: usize,
        xbase: usize,
        y: u64,
        ldy: usize,
        ybase: usize,
        rows: usize,
        s: &Strided,
    ) -> Result<()> {
        let total = s.total();
        if rows == 0 || total == 0 {
            return Ok(());
        }
        let (ldx, xb, ldy, yb, ri, ti) = (int(ldx)?, int(xbase)?, int(ldy)?, int(ybase)?, int(rows)?, int(total)?);
        let mut l = stream.launch_builder(self.function("strided_copy_u32")?);
        l.arg(&x).arg(&ldx).arg(&xb).arg(&y).arg(&ldy).arg(&yb).arg(&ri).arg(&ti).arg(s);
        // SAFETY: matches tensor.cu; addresses valid by contract.
        unsafe { l.launch(grid(rows, total, 256)?) }?;
        Ok(())
    }

    /// `y[r, off0(e)] = a[r, off1(e)] op b[r, off2(e)]` over walk `s` (f32).
    ///
    /// # Safety
    /// As [`Gpu::strided_copy`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn binary_strided(
        &self,
        stream: &CudaStream,
        op: TensorBinOp,
        a: u64,
        lda: usize,
        b: u64,
        ldb: usize,
        y: u64,
        ldy: usize,
        rows: usize,
        s: &Strided,
    ) -> Result<()> {
        // SAFETY: forwarded from the caller.
        unsafe { self.binary_kernel("binary_strided_f32", stream, op, (a, lda), (b, ldb), (y, ldy), rows, s) }
    }

    /// The i64 form of [`Gpu::binary_strided`]: add, sub, mul (wrapping), min and max
    /// write i64, comparisons f32 masks; `lda` / `ldb` / `ldy` in elements of their types.
    /// Other ops are [`CudaError::Invalid`].
    ///
    /// # Safety
    /// As [`Gpu::strided_copy`]; `a`, `b` (and `y` for i64 results) 8-byte aligned.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn binary_strided_i64(
        &self,
        stream: &CudaStream,
        op: TensorBinOp,
        a: u64,
        lda: usize,
        b: u64,
        ldb: usize,
        y: u64,
        ldy: usize,
        rows: usize,
        s: &Strided,
    ) -> Result<()> {
        if !op.has_i64_kernel() {
            return Err(CudaError::Invalid(format!("i64 {op:?} has no kernel")));
        }
        // SAFETY: forwarded from the caller.
        unsafe { self.binary_kernel("binary_strided_i64", stream, op, (a, lda), (b, ldb), (y, ldy), rows, s) }
    }

    /// Launches one of the two broadcast binary kernels (they share their signature).
    ///
    /// # Safety
    /// As [`Gpu::binary_strided`].
    #[allow(clippy::too_many_arguments)]
    unsafe fn binary_kernel(
        &self,
        kernel: &str,
        stream: &CudaStream,
        op: TensorBinOp,
        (a, lda): (u64, usize),
        (b, ldb): (u64, usize),
        (y, ldy): (u64, usize),
        rows: usize,
        s: &Strided,
    ) -> Result<()> {
        let total = s.total();
        if rows == 0 || total == 0 {
            return Ok(());
        }
        let (lda, ldb, ldy, ri, ti, op) = (int(lda)?, int(ldb)?, int(ldy)?, int(rows)?, int(total)?, op as i32);
        let mut l = stream.launch_builder(self.function(kernel)?);
        l.arg(&a).arg(&lda).arg(&b).arg(&ldb).arg(&y).arg(&ldy).arg(&ri).arg(&ti).arg(s).arg(&op);
        // SAFETY: matches tensor.cu; addresses valid by contract.
        unsafe { l.launch(grid(rows, total, 256)?) }?;
        Ok(())
    }

    /// `y[r, off0(e)] = c[r, off1(e)] != 0 ? a[r, off2(e)] : b[r, off3(e)]` over walk
    /// `s`: `c` an f32 mask, `a` / `b` / `y` f32 or, with `wide`, i64 (offsets and row
    /// strides of `a`, `b`, `y` in 32-bit words per element pair: `ld` in words).
    ///
    /// # Safety
    /// As [`Gpu::strided_copy`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn select(
        &self,
        stream: &CudaStream,
        (c, ldc): (u64, usize),
        (a, lda): (u64, usize),
        (b, ldb): (u64, usize),
        (y, ldy): (u64, usize),
        rows: usize,
        s: &Strided,
        wide: bool,
    ) -> Result<()> {
        let total = s.total();
        if rows == 0 || total == 0 {
            return Ok(());
        }
        let (ldc, lda, ldb, ldy) = (int(ldc)?, int(lda)?, int(ldb)?, int(ldy)?);
        let (ri, ti, wi) = (int(rows)?, int(total)?, i32::from(wide));
        let mut l = stream.launch_builder(self.function("where_u32")?);
        l.arg(&c).arg(&ldc).arg(&a).arg(&lda).arg(&b).arg(&ldb).arg(&y).arg(&ldy).arg(&ri).arg(&ti).arg(s).arg(&wi);
        // SAFETY: matches tensor.cu; addresses valid by contract.
        unsafe { l.launch(grid(rows, total, 256)?) }?;
        Ok(())
    }

    /// `y[r, e] = op(x[r, e])` for `e < n`; `p0`, `p1` are the op's parameters.
    ///
    /// # Safety
    /// As [`Gpu::strided_copy`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn unary(
        &self,
        stream: &CudaStream,
        op: UnaryCode,
        (p0, p1): (f32, f32),
        x: u64,
        ldx: usize,
        y: u64,
        ldy: usize,
        rows: usize,
        n: usize,
    ) -> Result<()> {
        if rows == 0 || n == 0 {
            return Ok(());
        }
        let (ldx, ldy, ri, ni, code) = (int(ldx)?, int(ldy)?, int(rows)?, int(n)?, op.code());
        let mut l = stream.launch_builder(self.function("unary_f32")?);
        l.arg(&x).arg(&ldx).arg(&y).arg(&ldy).arg(&ri).arg(&ni).arg(&code).arg(&p0).arg(&p1);
        // SAFETY: matches tensor.cu; addresses valid by contract.
        unsafe { l.launch(grid(rows, n, 256)?) }?;
        Ok(())
    }

    /// `y[r, j] = reduce(x[r, outer(j) + inner(i)] for i < len)` for every lane `j` of
    /// `outer` (set 0 of both walks: input offsets).
    ///
    /// # Safety
    /// As [`Gpu::strided_copy`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn reduce(
        &self,
        stream: &CudaStream,
        op: ReduceCode,
        x: u64,
        ldx: usize,
        y: u64,
        ldy: usize,
        rows: usize,
        outer: &Strided,
        inner: &Strided,
    ) -> Result<()> {
        let (nout, len) = (outer.total(), inner.total());
        if rows == 0 || nout == 0 {
            return Ok(());
        }
        let (ldx, ldy, ri, no, li, op) = (int(ldx)?, int(ldy)?, int(rows)?, int(nout)?, int(len)?, op as i32);
        let mut l = stream.launch_builder(self.function("reduce_f32")?);
        l.arg(&x).arg(&ldx).arg(&y).arg(&ldy).arg(&ri).arg(&no).arg(&li).arg(outer).arg(inner).arg(&op);
        // SAFETY: matches tensor.cu; addresses valid by contract.
        unsafe { l.launch(grid(rows, nout, 8)?) }?;
        Ok(())
    }

    /// Softmax (or log-softmax) along lanes of `n` elements at `stride`, one lane per
    /// offset of `outer` (set 0); `x` and `y` rows have the same layout.
    ///
    /// # Safety
    /// As [`Gpu::strided_copy`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn softmax(
        &self,
        stream: &CudaStream,
        log: bool,
        x: u64,
        ldx: usize,
        y: u64,
        ldy: usize,
        rows: usize,
        outer: &Strided,
        n: usize,
        stride: usize,
    ) -> Result<()> {
        let lanes = outer.total();
        if rows == 0 || lanes == 0 || n == 0 {
            return Ok(());
        }
        let (ldx, ldy, ri, li, ni, si, lg) =
            (int(ldx)?, int(ldy)?, int(rows)?, int(lanes)?, int(n)?, int(stride)?, i32::from(log));
        let mut l = stream.launch_builder(self.function("softmax_f32")?);
        l.arg(&x).arg(&ldx).arg(&y).arg(&ldy).arg(&ri).arg(&li).arg(&ni).arg(&si).arg(outer).arg(&lg);
        // SAFETY: matches tensor.cu; addresses valid by contract.
        unsafe { l.launch(grid(rows, lanes, 8)?) }?;
        Ok(())
    }

    /// Embedding lookup: `y[r, j·cols..] = table[ids[r, j]]` for `j < nids`, the table
    /// `[trows, cols]` in format `fmt` (`scales`: q8 row scales, else 0), ids i64 with row
    /// stride `ldids` (elements; 0: constant). Out-of-range ids are not read: their
    /// output is zeroed and the smallest bad position `r·nids + j` is atomically
    /// min-ed into the u64 at `err` (set it to `u64::MAX` first).
    ///
    /// # Safety
    /// As [`Gpu::strided_copy`]; `ids` must be 8-byte aligned, `err` a live u64.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn lookup(
        &self,
        stream: &CudaStream,
        fmt: WeightFormat,
        (table, scales, trows, cols): (u64, u64, usize, usize),
        ids: u64,
        ldids: usize,
        nids: usize,
        y: u64,
        ldy: usize,
        rows: usize,
        err: u64,
    ) -> Result<()> {
        if rows == 0 || nids == 0 {
            return Ok(());
        }
        let trows = i64::try_from(trows).map_err(|_| CudaError::Invalid("table rows".into()))?;
        let (ci, ldi, ni, ldy, ri) = (int(cols)?, int(ldids)?, int(nids)?, int(ldy)?, int(rows)?);
        let mut l = stream.launch_builder(self.function(&format!("lookup_{}", fmt.name()))?);
        l.arg(&table).arg(&scales).arg(&trows).arg(&ci).arg(&ids).arg(&ldi).arg(&ni).arg(&y).arg(&ldy).arg(&ri);
        l.arg(&err);
        // SAFETY: matches tensor.cu; addresses valid by contract.
        unsafe { l.launch(grid(rows, nids, 8)?) }?;
        Ok(())
    }

    /// Gather of 32-bit words along an axis of `x` viewed as `[pre, d, post]` by the
    /// i64 indices at `idx` (`n` a row, row stride `ldidx` elements, 0: constant;
    /// negative counts from the end once) into `y` (`[pre, n, post]` a row). Bad indices
    /// are not read: their outputs are zeroed and the smallest bad position `r·n + j` is
    /// atomically min-ed into the u64 at `err` (set it to `u64::MAX` first).
    ///
    /// # Safety
    /// As [`Gpu::strided_copy`]; `idx` must be 8-byte aligned, `err` a live u64.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gather(
        &self,
        stream: &CudaStream,
        x: u64,
        ldx: usize,
        idx: u64,
        ldidx: usize,
        y: u64,
        ldy: usize,
        rows: usize,
        (pre, d, post, n): (usize, usize, usize, usize),
        err: u64,
    ) -> Result<()> {
        let total = pre.checked_mul(n).and_then(|t| t.checked_mul(post));
        let total =
            total.filter(|&t| t <= i32::MAX as usize).ok_or_else(|| CudaError::Invalid("gather size".into()))?;
        if rows == 0 || total == 0 {
            return Ok(());
        }
        let (ldx, ldi, ldy, ri) = (int(ldx)?, int(ldidx)?, int(ldy)?, int(rows)?);
        let (pi, di, qi, ni) = (int(pre)?, int(d)?, int(post)?, int(n)?);
        let mut l = stream.launch_builder(self.function("gather_u32")?);
        l.arg(&x).arg(&ldx).arg(&idx).arg(&ldi).arg(&y).arg(&ldy).arg(&ri).arg(&pi).arg(&di).arg(&qi).arg(&ni);
        l.arg(&err);
        // SAFETY: matches tensor.cu; addresses valid by contract.
        unsafe { l.launch(grid(rows, total, 256)?) }?;
        Ok(())
    }

    /// Copies `rows × slots` i64 ids (row stride `ldids` elements) densely to `out`,
    /// replacing ids outside `[0, trows)` by 0 and atomically min-ing their smallest
    /// position `r·slots + s` into the u64 at `err` (set it to `u64::MAX` first): computed
    /// ids made safe for [`Gpu::bag`].
    ///
    /// # Safety
    /// As [`Gpu::strided_copy`]; `ids` and `out` 8-byte aligned, `out` holding
    /// `rows · slots` i64, `err` a live u64.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn sanitize_ids(
        &self,
        stream: &CudaStream,
        ids: u64,
        ldids: usize,
        slots: usize,
        rows: usize,
        trows: usize,
        out: u64,
        err: u64,
    ) -> Result<()> {
        if rows == 0 || slots == 0 {
            return Ok(());
        }
        let trows = i64::try_from(trows).map_err(|_| CudaError::Invalid("table rows".into()))?;
        let (ldi, si, ri) = (int(ldids)?, int(slots)?, int(rows)?);
        let mut l = stream.launch_builder(self.function("sanitize_ids_i64")?);
        l.arg(&ids).arg(&ldi).arg(&si).arg(&ri).arg(&trows).arg(&out).arg(&err);
        // SAFETY: matches tensor.cu; addresses valid by contract.
        unsafe { l.launch(grid(rows, slots, 256)?) }?;
        Ok(())
    }

    /// Batched `Y[m, n] = A[m, k] · B[k, n]` for every row and every leading index of
    /// `lead` (sets 0, 1, 2: output, a, b offsets in elements).
    ///
    /// # Safety
    /// As [`Gpu::strided_copy`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn matmul(
        &self,
        stream: &CudaStream,
        a: u64,
        lda: usize,
        b: u64,
        ldb: usize,
        y: u64,
        ldy: usize,
        rows: usize,
        lead: &Strided,
        (m, k, n): (usize, usize, usize),
    ) -> Result<()> {
        let nlead = lead.total();
        if rows == 0 || nlead == 0 || m == 0 || n == 0 {
            return Ok(());
        }
        let batches = rows.checked_mul(nlead).filter(|&b| b <= i32::MAX as usize);
        let batches = batches.ok_or_else(|| CudaError::Invalid("matmul batch too large".into()))?;
        let (lda, ldb, ldy, ri, nl) = (int(lda)?, int(ldb)?, int(ldy)?, int(rows)?, int(nlead)?);
        let (mi, ki, ni) = (int(m)?, int(k)?, int(n)?);
        let tiles = m.div_ceil(16) * n.div_ceil(16);
        let mut l = stream.launch_builder(self.function("matmul_f32")?);
        l.arg(&a).arg(&lda).arg(&b).arg(&ldb).arg(&y).arg(&ldy).arg(&ri).arg(&nl).arg(lead).arg(&mi).arg(&ki).arg(&ni);
        let cfg = grid(batches, tiles, 1)?;
        // SAFETY: matches tensor.cu; addresses valid by contract.
        unsafe { l.launch(cfg) }?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn walks_drop_unit_axes_and_merge_contiguous_ones() {
        // A contiguous [2, 3, 4] copy is one run of 24.
        let s = Strided::new(&[2, 1, 3, 4], &[&[12, 12, 4, 1], &[12, 12, 4, 1]]).unwrap();
        assert_eq!((s.rank, s.dims[0], s.st[0][0], s.st[1][0]), (1, 24, 1, 1));
        // Transpose [2, 3] -> [3, 2]: output strides (2, 1), source (1, 3).
        let t = Strided::new(&[3, 2], &[&[2, 1], &[1, 3]]).unwrap();
        assert_eq!(t.rank, 2);
        assert_eq!(t.offsets(3), [3, 4, 0, 0]);
        assert_eq!(t.total(), 6);
        // Broadcast: a zero stride stays a separate axis.
        let b = Strided::new(&[4, 5], &[&[5, 1], &[0, 1], &[5, 1]]).unwrap();
        assert_eq!((b.rank, b.total()), (2, 20));
        assert_eq!(Strided::new(&[3, 0], &[&[1, 1]]).unwrap().total(), 0);
        assert!(Strided::new(&[2; 9], &[&[0, 1, 0, 1, 0, 1, 0, 1, 0]]).is_none());
        assert!(Strided::new(&[1 << 20, 1 << 12], &[&[1 << 12, 1]]).is_none());
        assert_eq!(std::mem::size_of::<Strided>(), 164);
    }
}
