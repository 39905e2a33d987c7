//! A CUDA device with every module loaded, device memory owners, and one launch wrapper
//! per kernel family.
//!
//! Wrappers take raw device addresses (`u64`), strides and shapes because the caller
//! (graft's GPU executor) addresses places inside one arena allocation and inside
//! shared weight buffers; they are `unsafe fn`s whose contract is "every address is a
//! live device allocation large enough for the shape and strides given". Launches are
//! asynchronous on the stream passed in.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::sys::{self, CUdevice_attribute};
use cudarc::driver::{CudaContext, CudaFunction, CudaStream, LaunchConfig, PushKernelArg};

use crate::cache::PtxCache;
use crate::{Act, BinOp, CudaError, Module, Result, WeightFormat};

/// Batch rows above which linears use the tiled GEMM instead of the GEMV.
pub const GEMM_MIN_ROWS: usize = 16;
/// Largest rank the SGMV expand kernel keeps in registers (`SGMV_MAX_RANK` in lora.cu).
pub const SGMV_MAX_RANK: usize = 64;

/// A device with its context and every kernel loaded.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    ordinal: usize,
    arch: String,
    name: String,
    integrated: bool,
    functions: HashMap<String, CudaFunction>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("ordinal", &self.ordinal)
            .field("name", &self.name)
            .field("arch", &self.arch)
            .field("integrated", &self.integrated)
            .finish()
    }
}

impl Gpu {
    /// Opens device `ordinal`: checks that the driver library and the device exist,
    /// creates (retains) its primary context, compiles or loads from the cache every
    /// module for the device's arch, and resolves every kernel. Every failure that
    /// means "CUDA cannot be used here" is [`CudaError::Unavailable`].
    pub fn new(ordinal: usize, cache: &PtxCache) -> Result<Gpu> {
        if !crate::driver_available() {
            return Err(CudaError::Unavailable("the CUDA driver library (libcuda.so.1) was not found".into()));
        }
        let count = catch(CudaContext::device_count)?
            .map_err(|e| CudaError::Unavailable(format!("the CUDA driver did not initialise: {e:?}")))?;
        if ordinal >= count.max(0) as usize {
            return Err(CudaError::Unavailable(format!("no CUDA device with ordinal {ordinal} ({count} present)")));
        }
        let ctx = catch(|| CudaContext::new(ordinal))?
            .map_err(|e| CudaError::Unavailable(format!("cannot create a context on device {ordinal}: {e:?}")))?;
        let (major, minor) = ctx.compute_capability()?;
        let arch = format!("compute_{major}{minor}");
        let name = ctx.name().unwrap_or_else(|_| "CUDA device".into());
        let integrated = ctx.attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_INTEGRATED)? == 1;
        let mut functions = HashMap::new();
        for m in Module::ALL {
            let ptx = catch(|| cache.get_or_compile(m, &arch))??;
            let module = ctx.load_module(cudarc::nvrtc::Ptx::from_src(ptx))?;
            for k in m.kernels() {
                let f = module.load_function(&k)?;
                functions.insert(k, f);
            }
        }
        Ok(Gpu { ctx, ordinal, arch, name, integrated, functions })
    }

    /// The device ordinal.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The virtual arch the modules were compiled for (`compute_90`).
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the device shares physical memory with the CPU (Jetson).
    pub fn integrated(&self) -> bool {
        self.integrated
    }

    /// The context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// A new stream on this device.
    pub fn new_stream(&self) -> Result<Arc<CudaStream>> {
        Ok(self.ctx.new_stream()?)
    }

    pub(crate) fn function(&self, name: &str) -> Result<&CudaFunction> {
        self.functions.get(name).ok_or_else(|| CudaError::Invalid(format!("kernel {name} is not loaded")))
    }

    /// `y = act(x · Wᵀ + bias)` for `m` rows: `x` is `[m, k]` (row stride `ldx` floats),
    /// `w` is `[n, k]` in format `fmt` (`scales`: `n` f32 for q8, else 0), `bias` `n`
    /// floats or 0, `y` `[m, n]` (stride `ldy`).
    ///
    /// # Safety
    /// Every non-zero address must be a live device allocation of this context holding
    /// at least what the shapes and strides above address; `y` must not overlap `x`,
    /// `w` or `bias`.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn linear(
        &self,
        stream: &CudaStream,
        fmt: WeightFormat,
        x: u64,
        ldx: usize,
        w: u64,
        scales: u64,
        bias: u64,
        act: Act,
        y: u64,
        ldy: usize,
        (m, n, k): (usize, usize, usize),
    ) -> Result<()> {
        if m == 0 || n == 0 {
            return Ok(());
        }
        let (ldx, ldy, mi, ni, ki) = (int(ldx)?, int(ldy)?, int(m)?, int(n)?, int(k)?);
        let act = act as i32;
        let (kind, cfg) = if m > GEMM_MIN_ROWS {
            (
                "gemm",
                LaunchConfig {
                    grid_dim: (blocks(n, 64)?, ydim(m, 64)?, 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                },
            )
        } else {
            (
                "gemv",
                LaunchConfig { grid_dim: (blocks(n, 4)?, ydim(m, 8)?, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 },
            )
        };
        let f = self.function(&format!("{kind}_{}", fmt.name()))?;
        let mut b = stream.launch_builder(f);
        b.arg(&x).arg(&ldx).arg(&w).arg(&scales).arg(&bias).arg(&act).arg(&y).arg(&ldy).arg(&mi).arg(&ni).arg(&ki);
        // SAFETY: the argument list matches the kernel's signature (linear.cu); the
        // addresses are valid for the shapes by this function's contract.
        unsafe { b.launch(cfg) }?;
        Ok(())
    }

    /// Embedding bags into `out` (`[m, cols]`, stride `ldo`). Padded ids when `offsets`
    /// is 0 (`m · slots` i64 at `ids`), else `n_indices` flat ids and `m` offsets.
    ///
    /// # Safety
    /// As [`Gpu::linear`]; additionally every id must be below the table's row count
    /// and the offsets must be valid torch-style offsets (checked on the host).
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn bag(
        &self,
        stream: &CudaStream,
        fmt: WeightFormat,
        table: u64,
        scales: u64,
        cols: usize,
        ids: u64,
        offsets: u64,
        slots: usize,
        n_indices: usize,
        mean: bool,
        out: u64,
        ldo: usize,
        m: usize,
    ) -> Result<()> {
        if m == 0 {
            return Ok(());
        }
        let (ci, si, ni, mi, li, mean) =
            (int(cols)?, int(slots)?, int(n_indices)?, int(m)?, int(ldo)?, i32::from(mean));
        let f = self.function(&format!("bag_{}", fmt.name()))?;
        let threads = (cols.clamp(32, 256).div_ceil(32) * 32) as u32;
        let cfg = LaunchConfig { grid_dim: (blocks(m, 1)?, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
        let mut b = stream.launch_builder(f);
        b.arg(&table)
            .arg(&scales)
            .arg(&ci)
            .arg(&ids)
            .arg(&offsets)
            .arg(&si)
            .arg(&ni)
            .arg(&mean)
            .arg(&out)
            .arg(&li)
            .arg(&mi);
        // SAFETY: matches embedding.cu's signature; addresses valid by contract.
        unsafe { b.launch(cfg) }?;
        Ok(())
    }

    /// `y = act(x)` (`x == y` allowed: then the in-place kernel runs).
    ///
    /// # Safety
    /// As [`Gpu::linear`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn activation(
        &self,
        stream: &CudaStream,
        act: Act,
        x: u64,
        ldx: usize,
        y: u64,
        ldy: usize,
        m: usize,
        n: usize,
    ) -> Result<()> {
        if m == 0 || n == 0 {
            return Ok(());
        }
        let (ldx, ldy, mi, ni, a) = (int(ldx)?, int(ldy)?, int(m)?, int(n)?, act as i32);
        let cfg = grid2d(m, n)?;
        if x == y && ldx == ldy {
            let mut b = stream.launch_builder(self.function("act_inplace_f32")?);
            b.arg(&y).arg(&ldy).arg(&mi).arg(&ni).arg(&a);
            // SAFETY: matches elementwise.cu; addresses valid by contract.
            unsafe { b.launch(cfg) }?;
        } else {
            let mut b = stream.launch_builder(self.function("act_f32")?);
            b.arg(&x).arg(&ldx).arg(&y).arg(&ldy).arg(&mi).arg(&ni).arg(&a);
            // SAFETY: as above.
            unsafe { b.launch(cfg) }?;
        }
        Ok(())
    }

    /// `y = a op b`; `ldb == 0` broadcasts one row of `b`.
    ///
    /// # Safety
    /// As [`Gpu::linear`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn binary(
        &self,
        stream: &CudaStream,
        op: BinOp,
        a: u64,
        lda: usize,
        b: u64,
        ldb: usize,
        y: u64,
        ldy: usize,
        m: usize,
        n: usize,
    ) -> Result<()> {
        if m == 0 || n == 0 {
            return Ok(());
        }
        let (lda, ldb, ldy, mi, ni, op) = (int(lda)?, int(ldb)?, int(ldy)?, int(m)?, int(n)?, op as i32);
        let mut l = stream.launch_builder(self.function("binary_f32")?);
        l.arg(&a).arg(&lda).arg(&b).arg(&ldb).arg(&y).arg(&ldy).arg(&mi).arg(&ni).arg(&op);
        // SAFETY: matches elementwise.cu; addresses valid by contract.
        unsafe { l.launch(grid2d(m, n)?) }?;
        Ok(())
    }

    /// Strided copy of an `[m, n]` block.
    ///
    /// # Safety
    /// As [`Gpu::linear`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn copy(
        &self,
        stream: &CudaStream,
        x: u64,
        ldx: usize,
        y: u64,
        ldy: usize,
        m: usize,
        n: usize,
    ) -> Result<()> {
        if m == 0 || n == 0 {
            return Ok(());
        }
        let (ldx, ldy, mi, ni) = (int(ldx)?, int(ldy)?, int(m)?, int(n)?);
        let mut l = stream.launch_builder(self.function("copy_f32")?);
        l.arg(&x).arg(&ldx).arg(&y).arg(&ldy).arg(&mi).arg(&ni);
        // SAFETY: matches elementwise.cu; addresses valid by contract.
        unsafe { l.launch(grid2d(m, n)?) }?;
        Ok(())
    }

    /// DCN-v2 cross epilogue: `y = x0 · y + xl`.
    ///
    /// # Safety
    /// As [`Gpu::linear`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn cross(
        &self,
        stream: &CudaStream,
        x0: u64,
        ld0: usize,
        xl: u64,
        ldl: usize,
        y: u64,
        ldy: usize,
        m: usize,
        n: usize,
    ) -> Result<()> {
        if m == 0 || n == 0 {
            return Ok(());
        }
        let (ld0, ldl, ldy, mi, ni) = (int(ld0)?, int(ldl)?, int(ldy)?, int(m)?, int(n)?);
        let mut l = stream.launch_builder(self.function("cross_f32")?);
        l.arg(&x0).arg(&ld0).arg(&xl).arg(&ldl).arg(&y).arg(&ldy).arg(&mi).arg(&ni);
        // SAFETY: matches elementwise.cu; addresses valid by contract.
        unsafe { l.launch(grid2d(m, n)?) }?;
        Ok(())
    }

    /// Layer norm of each row (`beta` may be 0).
    ///
    /// # Safety
    /// As [`Gpu::linear`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn layer_norm(
        &self,
        stream: &CudaStream,
        x: u64,
        ldx: usize,
        gamma: u64,
        beta: u64,
        eps: f32,
        y: u64,
        ldy: usize,
        m: usize,
        n: usize,
    ) -> Result<()> {
        if m == 0 || n == 0 {
            return Ok(());
        }
        let (ldx, ldy, mi, ni) = (int(ldx)?, int(ldy)?, int(m)?, int(n)?);
        let mut l = stream.launch_builder(self.function("layer_norm_f32")?);
        l.arg(&x).arg(&ldx).arg(&gamma).arg(&beta).arg(&eps).arg(&y).arg(&ldy).arg(&mi).arg(&ni);
        let cfg = LaunchConfig { grid_dim: (blocks(m, 1)?, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: matches elementwise.cu; addresses valid by contract.
        unsafe { l.launch(cfg) }?;
        Ok(())
    }

    /// DLRM dot interaction over `f` inputs of width `d`; `ins` / `lds` are device
    /// arrays of `f` u64 addresses and `f` i32 strides.
    ///
    /// # Safety
    /// As [`Gpu::linear`], for every address in `ins` too.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn dot_interaction(
        &self,
        stream: &CudaStream,
        ins: u64,
        lds: u64,
        f: usize,
        d: usize,
        self_interaction: bool,
        y: u64,
        ldy: usize,
        m: usize,
    ) -> Result<()> {
        if m == 0 || f == 0 {
            return Ok(());
        }
        let (fi, di, si, ldy, mi) = (int(f)?, int(d)?, i32::from(self_interaction), int(ldy)?, int(m)?);
        let mut l = stream.launch_builder(self.function("dot_interaction_f32")?);
        l.arg(&ins).arg(&lds).arg(&fi).arg(&di).arg(&si).arg(&y).arg(&ldy).arg(&mi);
        let cfg = LaunchConfig { grid_dim: (blocks(m, 1)?, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: matches elementwise.cu; addresses valid by contract.
        unsafe { l.launch(cfg) }?;
        Ok(())
    }

    /// FM second-order term over `f` inputs of width `d` into column 0 of `y`.
    ///
    /// # Safety
    /// As [`Gpu::dot_interaction`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn fm(
        &self,
        stream: &CudaStream,
        ins: u64,
        lds: u64,
        f: usize,
        d: usize,
        y: u64,
        ldy: usize,
        m: usize,
    ) -> Result<()> {
        if m == 0 {
            return Ok(());
        }
        let (fi, di, ldy, mi) = (int(f)?, int(d)?, int(ldy)?, int(m)?);
        let mut l = stream.launch_builder(self.function("fm_f32")?);
        l.arg(&ins).arg(&lds).arg(&fi).arg(&di).arg(&y).arg(&ldy).arg(&mi);
        let cfg = LaunchConfig { grid_dim: (blocks(m, 1)?, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: matches elementwise.cu; addresses valid by contract.
        unsafe { l.launch(cfg) }?;
        Ok(())
    }

    /// LoRA for a batch: `y[m] += scale[a] · row_scale[m] · B[a] (A[a] x[m])` with
    /// `a = idx[m]` (−1: untouched). Uses SGMV when `lora.segments` is given (rows
    /// grouped by adapter, every rank ≤ [`SGMV_MAX_RANK`]), else BGMV.
    ///
    /// # Safety
    /// As [`Gpu::linear`]; the tables in `lora` must describe live device arrays and
    /// `t` must hold `m · max_rank` floats.
    pub unsafe fn lora(&self, stream: &CudaStream, lora: &LoraLaunch) -> Result<()> {
        let l = lora;
        if l.m == 0 || l.max_rank == 0 {
            return Ok(());
        }
        let (ldx, ldy, ldt, ki, ni, mi) = (int(l.ldx)?, int(l.ldy)?, int(l.max_rank)?, int(l.k)?, int(l.n)?, int(l.m)?);
        match l.segments {
            Some((perm, seg, seg_adapter, n_seg)) => {
                if l.max_rank > SGMV_MAX_RANK {
                    return Err(CudaError::Invalid(format!(
                        "SGMV supports ranks up to {SGMV_MAX_RANK}, not {}",
                        l.max_rank
                    )));
                }
                let mut b = stream.launch_builder(self.function("sgmv_shrink")?);
                b.arg(&l.x)
                    .arg(&ldx)
                    .arg(&perm)
                    .arg(&seg)
                    .arg(&seg_adapter)
                    .arg(&l.a_ptrs)
                    .arg(&l.ranks)
                    .arg(&ki)
                    .arg(&l.t)
                    .arg(&ldt);
                let cfg = LaunchConfig {
                    grid_dim: (blocks(n_seg, 1)?, ydim(l.max_rank, 1)?, 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                };
                // SAFETY: matches lora.cu; addresses valid by contract.
                unsafe { b.launch(cfg) }?;
                let mut b = stream.launch_builder(self.function("sgmv_expand")?);
                b.arg(&l.t)
                    .arg(&ldt)
                    .arg(&perm)
                    .arg(&seg)
                    .arg(&seg_adapter)
                    .arg(&l.b_ptrs)
                    .arg(&l.ranks)
                    .arg(&l.scales)
                    .arg(&l.row_scale)
                    .arg(&l.y)
                    .arg(&ldy)
                    .arg(&ni);
                let cfg = LaunchConfig {
                    grid_dim: (blocks(l.n, 128)?, ydim(n_seg, 1)?, 1),
                    block_dim: (128, 1, 1),
                    shared_mem_bytes: 0,
                };
                // SAFETY: as above.
                unsafe { b.launch(cfg) }?;
            }
            None => {
                let mut b = stream.launch_builder(self.function("bgmv_shrink")?);
                b.arg(&l.x).arg(&ldx).arg(&l.idx).arg(&l.a_ptrs).arg(&l.ranks).arg(&ki).arg(&l.t).arg(&ldt).arg(&mi);
                let cfg = LaunchConfig {
                    grid_dim: (blocks(l.m, 1)?, ydim(l.max_rank, 4)?, 1),
                    block_dim: (128, 1, 1),
                    shared_mem_bytes: 0,
                };
                // SAFETY: matches lora.cu; addresses valid by contract.
                unsafe { b.launch(cfg) }?;
                let mut b = stream.launch_builder(self.function("bgmv_expand")?);
                b.arg(&l.t)
                    .arg(&ldt)
                    .arg(&l.idx)
                    .arg(&l.b_ptrs)
                    .arg(&l.ranks)
                    .arg(&l.scales)
                    .arg(&l.row_scale)
                    .arg(&l.y)
                    .arg(&ldy)
                    .arg(&ni)
                    .arg(&mi);
                let cfg = LaunchConfig {
                    grid_dim: (blocks(l.n, 128)?, ydim(l.m, 1)?, 1),
                    block_dim: (128, 1, 1),
                    shared_mem_bytes: 0,
                };
                // SAFETY: as above.
                unsafe { b.launch(cfg) }?;
            }
        }
        Ok(())
    }

    /// SSF: `y[m] = γ'·y[m] + β'` with `a = idx[m]` (−1: untouched), `γ' = 1 + s(γ_a − 1)`,
    /// `β' = s·β_a`, `s = row_scale[m]` (1 when `row_scale` is 0); `scale_ptrs` /
    /// `shift_ptrs` are device arrays of addresses (shift entries may be 0).
    ///
    /// # Safety
    /// As [`Gpu::linear`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn ssf(
        &self,
        stream: &CudaStream,
        y: u64,
        ldy: usize,
        idx: u64,
        scale_ptrs: u64,
        shift_ptrs: u64,
        row_scale: u64,
        n: usize,
        m: usize,
    ) -> Result<()> {
        if m == 0 || n == 0 {
            return Ok(());
        }
        let (ldy, ni, mi) = (int(ldy)?, int(n)?, int(m)?);
        let mut b = stream.launch_builder(self.function("ssf_f32")?);
        b.arg(&y).arg(&ldy).arg(&idx).arg(&scale_ptrs).arg(&shift_ptrs).arg(&row_scale).arg(&ni).arg(&mi);
        // SAFETY: matches lora.cu; addresses valid by contract.
        unsafe { b.launch(grid2d(m, n)?) }?;
        Ok(())
    }

    /// Asynchronous host → device copy.
    ///
    /// # Safety
    /// `dst` must hold `src.len()` bytes; `src` must stay alive and unmodified until the
    /// stream has been synchronized (use pinned memory for a truly asynchronous copy).
    pub unsafe fn upload_async(&self, stream: &CudaStream, dst: u64, src: &[u8]) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        // SAFETY: forwarded from the caller.
        unsafe { cudarc::driver::result::memcpy_htod_async(dst, src, stream.cu_stream()) }?;
        Ok(())
    }

    /// Asynchronous device → host copy.
    ///
    /// # Safety
    /// `src` must hold `dst.len()` bytes; `dst` must not be read or moved until the
    /// stream has been synchronized.
    pub unsafe fn download_async(&self, stream: &CudaStream, dst: &mut [u8], src: u64) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        // SAFETY: forwarded from the caller.
        unsafe { cudarc::driver::result::memcpy_dtoh_async(dst, src, stream.cu_stream()) }?;
        Ok(())
    }

    /// Asynchronous device → device copy of `bytes`.
    ///
    /// # Safety
    /// Both ranges must be live device memory of this context and not overlap.
    pub unsafe fn copy_device_async(&self, stream: &CudaStream, dst: u64, src: u64, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        // SAFETY: forwarded from the caller.
        unsafe { cudarc::driver::result::memcpy_dtod_async(dst, src, bytes, stream.cu_stream()) }?;
        Ok(())
    }
}

/// One LoRA launch (see [`Gpu::lora`]). Addresses are device addresses; `row_scale` may
/// be 0.
#[derive(Clone, Copy, Debug)]
pub struct LoraLaunch {
    /// Input `[m, k]`, stride `ldx`.
    pub x: u64,
    /// Row stride of `x` in floats.
    pub ldx: usize,
    /// Output `[m, n]`, accumulated into, stride `ldy`.
    pub y: u64,
    /// Row stride of `y` in floats.
    pub ldy: usize,
    /// Intermediate `[m, max_rank]`.
    pub t: u64,
    /// Per-row adapter index (i32, −1 = none), for BGMV.
    pub idx: u64,
    /// Per-adapter A addresses (u64).
    pub a_ptrs: u64,
    /// Per-adapter B addresses (u64).
    pub b_ptrs: u64,
    /// Per-adapter ranks (i32).
    pub ranks: u64,
    /// Per-adapter scales (f32).
    pub scales: u64,
    /// Per-row extra scales (f32) or 0.
    pub row_scale: u64,
    /// SGMV segments: (perm, seg bounds, seg adapter, segment count), or `None` for BGMV.
    pub segments: Option<(u64, u64, u64, usize)>,
    /// Rows, input width, output width, largest rank.
    pub m: usize,
    /// Input width.
    pub k: usize,
    /// Output width.
    pub n: usize,
    /// Largest rank of the launch's adapters.
    pub max_rank: usize,
}

/// Device memory owned by this value (freed on drop).
pub struct DeviceBuffer {
    ptr: u64,
    bytes: usize,
    ctx: Arc<CudaContext>,
}

impl std::fmt::Debug for DeviceBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceBuffer({:#x}, {} bytes)", self.ptr, self.bytes)
    }
}

impl DeviceBuffer {
    /// `bytes` of zeroed device memory (at least 1 byte is allocated).
    pub fn zeroed(gpu: &Gpu, bytes: usize) -> Result<DeviceBuffer> {
        gpu.ctx.bind_to_thread()?;
        // SAFETY: the context is current; the allocation is owned by the returned value.
        let ptr = unsafe { cudarc::driver::result::malloc_sync(bytes.max(1)) }?;
        let buf = DeviceBuffer { ptr, bytes, ctx: gpu.ctx.clone() };
        // SAFETY: `ptr` holds bytes.max(1) bytes.
        unsafe { cudarc::driver::result::memset_d8_sync(ptr, 0, bytes.max(1)) }?;
        Ok(buf)
    }

    /// A device copy of `data` (synchronous).
    pub fn upload(gpu: &Gpu, data: &[u8]) -> Result<DeviceBuffer> {
        let buf = DeviceBuffer::zeroed(gpu, data.len())?;
        if !data.is_empty() {
            // SAFETY: `buf` holds data.len() bytes; the copy is synchronous.
            unsafe { cudarc::driver::result::memcpy_htod_sync(buf.ptr, data) }?;
        }
        Ok(buf)
    }

    /// The device address.
    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.bytes
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: `ptr` came from malloc_sync in this context and is freed once; every
            // user synchronizes its stream before dropping the buffers it launched on.
            let _ = unsafe { cudarc::driver::result::free_sync(self.ptr) };
        }
    }
}

// SAFETY: a device address is plain data; the context is thread-safe (cudarc's
// CudaContext is Send + Sync) and frees happen through it.
unsafe impl Send for DeviceBuffer {}
// SAFETY: &DeviceBuffer only exposes the address.
unsafe impl Sync for DeviceBuffer {}

/// Page-locked host memory (the staging area for asynchronous copies).
pub struct PinnedBuffer {
    ptr: *mut u8,
    bytes: usize,
    ctx: Arc<CudaContext>,
}

impl std::fmt::Debug for PinnedBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PinnedBuffer({} bytes)", self.bytes)
    }
}

impl PinnedBuffer {
    /// `bytes` of zeroed pinned memory.
    pub fn zeroed(gpu: &Gpu, bytes: usize) -> Result<PinnedBuffer> {
        gpu.ctx.bind_to_thread()?;
        // SAFETY: the context is current; the allocation is owned by the returned value.
        let ptr = unsafe { cudarc::driver::result::malloc_host(bytes.max(1), 0) }?.cast::<u8>();
        // SAFETY: ptr holds bytes.max(1) writable bytes.
        unsafe { std::ptr::write_bytes(ptr, 0, bytes.max(1)) };
        Ok(PinnedBuffer { ptr, bytes, ctx: gpu.ctx.clone() })
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr holds `bytes` initialised bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.bytes) }
    }

    /// The bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self is exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.bytes) }
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.bytes
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }
}

impl Drop for PinnedBuffer {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: ptr came from malloc_host and is freed once.
            let _ = unsafe { cudarc::driver::result::free_host(self.ptr.cast::<c_void>()) };
        }
    }
}

// SAFETY: the buffer is owned memory like a Box<[u8]>.
unsafe impl Send for PinnedBuffer {}
// SAFETY: shared access is read-only through &self.
unsafe impl Sync for PinnedBuffer {}

/// A host range registered with the device (read-only, device-mapped): on integrated
/// GPUs the kernels read the memory-mapped weights in place through [`HostRegistration::device_ptr`].
pub struct HostRegistration {
    host: *mut c_void,
    device: u64,
    ctx: Arc<CudaContext>,
}

impl std::fmt::Debug for HostRegistration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostRegistration({:#x})", self.device)
    }
}

impl HostRegistration {
    /// Registers `len` bytes at `host` read-only and returns the device address that maps them.
    ///
    /// # Safety
    /// The range must stay mapped and unmodified for the life of the registration (a
    /// read-only file mapping owned by a model that outlives it).
    pub unsafe fn register(gpu: &Gpu, host: *const u8, len: usize) -> Result<HostRegistration> {
        gpu.ctx.bind_to_thread()?;
        let flags = sys::CU_MEMHOSTREGISTER_READ_ONLY | sys::CU_MEMHOSTREGISTER_DEVICEMAP;
        let host = host.cast_mut().cast::<c_void>();
        // SAFETY: the range is mapped for the registration's life by the caller's contract.
        unsafe { sys::cuMemHostRegister_v2(host, len, flags) }.result()?;
        let mut device = 0u64;
        // SAFETY: host was registered just above with DEVICEMAP.
        let got = unsafe { sys::cuMemHostGetDevicePointer_v2(&mut device, host, 0) }.result();
        if let Err(e) = got {
            // SAFETY: undo the registration made above.
            let _ = unsafe { sys::cuMemHostUnregister(host) };
            return Err(e.into());
        }
        Ok(HostRegistration { host, device, ctx: gpu.ctx.clone() })
    }

    /// The device address of the registered range's first byte.
    pub fn device_ptr(&self) -> u64 {
        self.device
    }
}

impl Drop for HostRegistration {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: registered in `register`, unregistered once.
            let _ = unsafe { sys::cuMemHostUnregister(self.host) };
        }
    }
}

// SAFETY: the registration is an address pair; unregistering goes through the context.
unsafe impl Send for HostRegistration {}
// SAFETY: &HostRegistration exposes only the device address.
unsafe impl Sync for HostRegistration {}

/// Runs a cudarc call that may panic (missing library) and turns the panic into an error.
fn catch<T>(f: impl FnOnce() -> T) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .map_err(|_| CudaError::Unavailable("a CUDA library could not be loaded".into()))
}

pub(crate) fn int(v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| CudaError::Invalid(format!("{v} does not fit a kernel's int argument")))
}

pub(crate) fn blocks(n: usize, per: usize) -> Result<u32> {
    u32::try_from(n.div_ceil(per).max(1)).map_err(|_| CudaError::Invalid(format!("grid of {n} / {per} is too large")))
}

/// A grid y extent: at most 65535 blocks.
fn ydim(n: usize, per: usize) -> Result<u32> {
    let b = blocks(n, per)?;
    if b > 65_535 {
        return Err(CudaError::Invalid(format!("{n} rows need {b} blocks in grid y (at most 65535)")));
    }
    Ok(b)
}

fn grid2d(m: usize, n: usize) -> Result<LaunchConfig> {
    Ok(LaunchConfig { grid_dim: (blocks(n, 128)?, ydim(m, 1)?, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 })
}
