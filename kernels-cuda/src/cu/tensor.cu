// Per-row tensor ops of graph format v2 (runtime/src/engine/tensor.rs): every op is "the
// same op on each example", applied to each row of `[rows, width]` views of the session
// arena (a row stride `ld` of 0 reads a constant: the same row every time).
//
// Element positions inside a row come from a `Strided` walk: up to TS_DIMS row-major
// extents (the last fastest) and, per operand, one stride per axis (in elements; 0 =
// broadcast). Element `e` of the walk has coordinates e = (c0 … c_{rank-1}) and operand k
// sits at Σ c_i · st[k][i]. The host drops extent-1 axes and merges contiguous
// neighbours, so most walks are rank 1 or 2. The struct is passed by value (param
// space); the unrolled loops below index it with constants only, so it never moves to
// local memory.
//
// Grids: x strides over a row's elements (or lanes, warps, tiles), y strides over rows;
// every loop is grid-stride, so any launch size is correct. Numerics follow the CPU
// reference (runtime/src/kernels/scalar.rs): separate f32 multiplies and adds where the
// CPU has them (__fmul_rn / __fadd_rn, so --fmad=true contracts nothing), max-subtracted
// softmax, NaN-propagating min / max; reductions and softmax sums are warp trees, so
// they agree with the CPU's sequential sums to rounding, not bit for bit.

#define TS_DIMS 8

struct Strided {
    int rank;              // axes in use, 0..TS_DIMS (0: one element)
    int dims[TS_DIMS];     // extents, row-major
    int st[4][TS_DIMS];    // strides per operand set
};

// Offsets of element `e` in the first N stride sets.
template <int N>
__device__ __forceinline__ void ts_offsets(const Strided& s, int e, int (&off)[N]) {
#pragma unroll
    for (int k = 0; k < N; k++) off[k] = 0;
#pragma unroll
    for (int i = TS_DIMS - 1; i >= 0; i--) {
        if (i < s.rank) {
            int d = s.dims[i];
            int q = e / d;
            int c = e - q * d;
            e = q;
#pragma unroll
            for (int k = 0; k < N; k++) off[k] += c * s.st[k][i];
        }
    }
}

__device__ __forceinline__ bool ts_isnan(float v) { return v != v; }
__device__ __forceinline__ float ts_nan() { return __int_as_float(0x7fc00000); }
__device__ __forceinline__ float ts_inf() { return __int_as_float(0x7f800000); }

// ---- copies ------------------------------------------------------------------------

// y[r, 0..n) = v (bit pattern): the fill of a pad before its copy.
extern "C" __global__ void __launch_bounds__(256) fill_u32(u32* __restrict__ y, int ldy, int rows, int n, u32 v) {
    for (int r = blockIdx.y; r < rows; r += gridDim.y)
        for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < n; e += gridDim.x * blockDim.x)
            y[(size_t)r * ldy + e] = v;
}

// y[r, ybase + off0(e)] = x[r, xbase + off1(e)] for the `total` elements of walk `s`
// (set 0: destination, set 1: source). 32-bit words, so f32 bits travel unchanged and
// i64 values are copied as word pairs (the host doubles the walk). Covers reshape
// copies, transpose, slice, tile / broadcast, pad and axis-concat parts.
extern "C" __global__ void __launch_bounds__(256) strided_copy_u32(const u32* __restrict__ x, int ldx, int xbase,
                                                                   u32* __restrict__ y, int ldy, int ybase, int rows,
                                                                   int total, Strided s) {
    for (int r = blockIdx.y; r < rows; r += gridDim.y) {
        const u32* xr = x + (size_t)r * ldx + xbase;
        u32* yr = y + (size_t)r * ldy + ybase;
        for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < total; e += gridDim.x * blockDim.x) {
            int off[2];
            ts_offsets<2>(s, e, off);
            yr[off[0]] = xr[off[1]];
        }
    }
}

// ---- broadcast binary --------------------------------------------------------------

// Binary ops; the numbering is `graft_kernels_cuda::TensorBinOp` (graph BinaryOp order).
#define TB_ADD 0
#define TB_SUB 1
#define TB_MUL 2
#define TB_DIV 3
#define TB_POW 4
#define TB_MIN 5
#define TB_MAX 6
#define TB_EQ 7
#define TB_LT 8
#define TB_LE 9
#define TB_GT 10
#define TB_GE 11
#define TB_AND 12
#define TB_OR 13
#define TB_XOR 14
#define TB_PRELU 15

__device__ __forceinline__ float tb_apply(int op, float a, float b) {
    switch (op) {
        case TB_ADD: return __fadd_rn(a, b);
        case TB_SUB: return __fsub_rn(a, b);
        case TB_MUL: return __fmul_rn(a, b);
        case TB_DIV: return __fdiv_rn(a, b);
        case TB_POW: return powf(a, b);
        case TB_MIN: return ts_isnan(a) || ts_isnan(b) ? ts_nan() : fminf(a, b);
        case TB_MAX: return ts_isnan(a) || ts_isnan(b) ? ts_nan() : fmaxf(a, b);
        case TB_EQ: return a == b ? 1.0f : 0.0f;
        case TB_LT: return a < b ? 1.0f : 0.0f;
        case TB_LE: return a <= b ? 1.0f : 0.0f;
        case TB_GT: return a > b ? 1.0f : 0.0f;
        case TB_GE: return a >= b ? 1.0f : 0.0f;
        case TB_AND: return (a != 0.0f && b != 0.0f) ? 1.0f : 0.0f;
        case TB_OR: return (a != 0.0f || b != 0.0f) ? 1.0f : 0.0f;
        case TB_XOR: return ((a != 0.0f) != (b != 0.0f)) ? 1.0f : 0.0f;
        default: return a >= 0.0f ? a : __fmul_rn(a, b);  // TB_PRELU
    }
}

// y[r, off0(e)] = a[r, off1(e)] op b[r, off2(e)]: numpy broadcasting through zero strides
// (set 0: output, 1: a, 2: b); lda / ldb 0 for constants. Comparisons give 0/1 masks.
extern "C" __global__ void __launch_bounds__(256) binary_strided_f32(const float* __restrict__ a, int lda,
                                                                     const float* __restrict__ b, int ldb,
                                                                     float* __restrict__ y, int ldy, int rows,
                                                                     int total, Strided s, int op) {
    for (int r = blockIdx.y; r < rows; r += gridDim.y) {
        const float* ar = a + (size_t)r * lda;
        const float* br = b + (size_t)r * ldb;
        float* yr = y + (size_t)r * ldy;
        for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < total; e += gridDim.x * blockDim.x) {
            int off[3];
            ts_offsets<3>(s, e, off);
            yr[off[0]] = tb_apply(op, ar[off[1]], br[off[2]]);
        }
    }
}

// The same walk over i64 operands (row strides in elements): add, sub, mul (wrapping, as
// the CPU's i64::wrapping_*), min, max give i64; comparisons give f32 0/1 masks; `y` is
// i64 or f32 accordingly, `ldy` in its elements. Division (an error on zero) stays on
// the CPU.
__device__ __forceinline__ i64 tb_apply_i64(int op, i64 a, i64 b) {
    switch (op) {
        case TB_ADD: return (i64)((u64)a + (u64)b);
        case TB_SUB: return (i64)((u64)a - (u64)b);
        case TB_MUL: return (i64)((u64)a * (u64)b);
        case TB_MIN: return a < b ? a : b;
        default: return a > b ? a : b;  // TB_MAX
    }
}

extern "C" __global__ void __launch_bounds__(256) binary_strided_i64(const i64* __restrict__ a, int lda,
                                                                     const i64* __restrict__ b, int ldb,
                                                                     u8* __restrict__ y, int ldy, int rows,
                                                                     int total, Strided s, int op) {
    bool mask = op >= TB_EQ && op <= TB_GE;
    for (int r = blockIdx.y; r < rows; r += gridDim.y) {
        const i64* ar = a + (size_t)r * lda;
        const i64* br = b + (size_t)r * ldb;
        for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < total; e += gridDim.x * blockDim.x) {
            int off[3];
            ts_offsets<3>(s, e, off);
            i64 u = ar[off[1]], v = br[off[2]];
            if (mask) {
                bool c = op == TB_EQ ? u == v : op == TB_LT ? u < v : op == TB_LE ? u <= v : op == TB_GT ? u > v : u >= v;
                ((float*)y)[(size_t)r * ldy + off[0]] = c ? 1.0f : 0.0f;
            } else {
                ((i64*)y)[(size_t)r * ldy + off[0]] = tb_apply_i64(op, u, v);
            }
        }
    }
}

// ---- select ------------------------------------------------------------------------

// y[r, off0(e)] = c[r, off1(e)] != 0 ? a[r, off2(e)] : b[r, off3(e)] (numpy broadcasting
// through zero strides; c is an f32 mask, a / b / y are f32, or i64 when `wide` = 1:
// their offsets count i64 elements and two words move).
extern "C" __global__ void __launch_bounds__(256) where_u32(const float* __restrict__ c, int ldc,
                                                            const u32* __restrict__ a, int lda,
                                                            const u32* __restrict__ b, int ldb,
                                                            u32* __restrict__ y, int ldy, int rows, int total,
                                                            Strided s, int wide) {
    int w = wide ? 2 : 1;
    for (int r = blockIdx.y; r < rows; r += gridDim.y) {
        for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < total; e += gridDim.x * blockDim.x) {
            int off[4];
            ts_offsets<4>(s, e, off);
            bool pick_a = c[(size_t)r * ldc + off[1]] != 0.0f;
            const u32* src = pick_a ? a + (size_t)r * lda + (size_t)off[2] * w : b + (size_t)r * ldb + (size_t)off[3] * w;
            u32* dst = y + (size_t)r * ldy + (size_t)off[0] * w;
            dst[0] = src[0];
            if (wide) dst[1] = src[1];
        }
    }
}

// ---- unary -------------------------------------------------------------------------

// Unary ops; the numbering is `graft_kernels_cuda::UnaryCode` (graph UnaryOp order),
// then the activations at TU_ACT + ACT_*.
#define TU_NEG 0
#define TU_ABS 1
#define TU_EXP 2
#define TU_LOG 3
#define TU_SQRT 4
#define TU_RSQRT 5
#define TU_RECIPROCAL 6
#define TU_ERF 7
#define TU_FLOOR 8
#define TU_CEIL 9
#define TU_ROUND 10
#define TU_SIGN 11
#define TU_NOT 12
#define TU_SOFTPLUS 13
#define TU_SIN 14
#define TU_COS 15
#define TU_LEAKY_RELU 16
#define TU_CLIP 17
#define TU_HARD_SIGMOID 18
#define TU_ELU 19
#define TU_POW_CONST 20
#define TU_ACT 32

// runtime/src/kernels/scalar.rs `unary`; p0 / p1 are the op's parameters.
__device__ __forceinline__ float tu_apply(int op, float x, float p0, float p1) {
    switch (op) {
        case TU_NEG: return -x;
        case TU_ABS: return fabsf(x);
        case TU_EXP: return expf(x);
        case TU_LOG: return logf(x);
        case TU_SQRT: return sqrtf(x);
        case TU_RSQRT: return __fdiv_rn(1.0f, sqrtf(x));
        case TU_RECIPROCAL: return __fdiv_rn(1.0f, x);
        case TU_ERF: return erff(x);
        case TU_FLOOR: return floorf(x);
        case TU_CEIL: return ceilf(x);
        case TU_ROUND: return rintf(x);
        case TU_SIGN: return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : x);
        case TU_NOT: return x == 0.0f ? 1.0f : 0.0f;
        case TU_SOFTPLUS: return x > 20.0f ? __fadd_rn(x, log1pf(expf(-x))) : log1pf(expf(x));
        case TU_SIN: return sinf(x);
        case TU_COS: return cosf(x);
        case TU_LEAKY_RELU: return x >= 0.0f ? x : __fmul_rn(p0, x);
        case TU_CLIP: return ts_isnan(x) ? x : fminf(fmaxf(x, p0), p1);
        case TU_HARD_SIGMOID: {
            float v = __fadd_rn(__fmul_rn(p0, x), p1);
            return ts_isnan(v) ? v : fminf(fmaxf(v, 0.0f), 1.0f);
        }
        case TU_ELU: return x >= 0.0f ? x : __fmul_rn(p0, __fsub_rn(expf(x), 1.0f));
        case TU_POW_CONST: return powf(x, p0);
        default: return act_apply(op - TU_ACT, x);
    }
}

// y[r, e] = op(x[r, e]) for e < n (whole rows, any strides; ldx 0 for a constant).
extern "C" __global__ void __launch_bounds__(256) unary_f32(const float* __restrict__ x, int ldx,
                                                            float* __restrict__ y, int ldy, int rows, int n, int op,
                                                            float p0, float p1) {
    for (int r = blockIdx.y; r < rows; r += gridDim.y)
        for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < n; e += gridDim.x * blockDim.x)
            y[(size_t)r * ldy + e] = tu_apply(op, x[(size_t)r * ldx + e], p0, p1);
}

// ---- reductions and softmax --------------------------------------------------------

// Reductions; the numbering is `graft_kernels_cuda::ReduceCode` (graph ReduceOp order).
#define TR_SUM 0
#define TR_MEAN 1
#define TR_MAX 2
#define TR_MIN 3
#define TR_PROD 4
#define TR_L2 5
#define TR_L1 6
#define TR_SUM_SQUARE 7
#define TR_MEAN_SQUARE 8
#define TR_LOG_SUM_EXP 9

__device__ __forceinline__ float tr_combine(int op, float a, float b) {
    switch (op) {
        case TR_MAX: return ts_isnan(a) || ts_isnan(b) ? ts_nan() : fmaxf(a, b);
        case TR_MIN: return ts_isnan(a) || ts_isnan(b) ? ts_nan() : fminf(a, b);
        case TR_PROD: return __fmul_rn(a, b);
        default: return __fadd_rn(a, b);
    }
}

__device__ __forceinline__ float tr_warp(int op, float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = tr_combine(op, v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// f32::max as the CPU's softmax uses it: a NaN operand is ignored.
__device__ __forceinline__ float warp_fmax(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// y[r, j] = reduce over the `len` elements of lane j: lane j starts at outer offset j
// (set 0 of `outer`, `nout` lanes in output order) and walks `inner` (set 0). One warp
// per lane; every lane of the warp takes the same trip count, so the shuffles are full.
extern "C" __global__ void __launch_bounds__(256) reduce_f32(const float* __restrict__ x, int ldx,
                                                             float* __restrict__ y, int ldy, int rows, int nout,
                                                             int len, Strided outer, Strided inner, int op) {
    int lane = threadIdx.x & 31;
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, warps = (gridDim.x * blockDim.x) >> 5;
    for (int r = blockIdx.y; r < rows; r += gridDim.y) {
        const float* xr = x + (size_t)r * ldx;
        for (int j = warp; j < nout; j += warps) {
            int base[1];
            ts_offsets<1>(outer, j, base);
            float shift = 0.0f;
            bool lse_plain = false;
            if (op == TR_LOG_SUM_EXP) {
                float m = -ts_inf();
                for (int i = lane; i < len; i += 32) {
                    int o[1];
                    ts_offsets<1>(inner, i, o);
                    m = fmaxf(m, xr[base[0] + o[0]]);
                }
                m = warp_fmax(m);
                // The CPU falls back to ln Σ eˣ when the max is not finite.
                lse_plain = !(m > -ts_inf() && m < ts_inf());
                shift = lse_plain ? 0.0f : m;
            }
            float init = op == TR_MAX ? -ts_inf() : (op == TR_MIN ? ts_inf() : (op == TR_PROD ? 1.0f : 0.0f));
            float acc = init;
            for (int i = lane; i < len; i += 32) {
                int o[1];
                ts_offsets<1>(inner, i, o);
                float v = xr[base[0] + o[0]];
                switch (op) {
                    case TR_L2:
                    case TR_SUM_SQUARE:
                    case TR_MEAN_SQUARE: v = __fmul_rn(v, v); break;
                    case TR_L1: v = fabsf(v); break;
                    case TR_LOG_SUM_EXP: v = expf(__fsub_rn(v, shift)); break;
                    default: break;
                }
                acc = tr_combine(op, acc, v);
            }
            acc = tr_warp(op, acc);
            if (lane == 0) {
                switch (op) {
                    case TR_MEAN:
                    case TR_MEAN_SQUARE: acc = __fdiv_rn(acc, (float)len); break;
                    case TR_L2: acc = sqrtf(acc); break;
                    case TR_LOG_SUM_EXP: acc = lse_plain ? logf(acc) : __fadd_rn(shift, logf(acc)); break;
                    default: break;
                }
                y[(size_t)r * ldy + j] = acc;
            }
        }
    }
}

// Softmax (log = 0) or log-softmax (log = 1) along lanes of `n` elements at `stride`,
// one lane per offset of `outer` (set 0, `lanes` of them); input and output rows have the
// same layout. Like the CPU: max (NaN ignored), Σ e^(x - max), then e · (1 / Σ) or
// x - (max + ln Σ). One warp per lane.
extern "C" __global__ void __launch_bounds__(256) softmax_f32(const float* __restrict__ x, int ldx,
                                                              float* __restrict__ y, int ldy, int rows, int lanes,
                                                              int n, int stride, Strided outer, int log) {
    int lane = threadIdx.x & 31;
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, warps = (gridDim.x * blockDim.x) >> 5;
    for (int r = blockIdx.y; r < rows; r += gridDim.y) {
        for (int j = warp; j < lanes; j += warps) {
            int base[1];
            ts_offsets<1>(outer, j, base);
            const float* xl = x + (size_t)r * ldx + base[0];
            float* yl = y + (size_t)r * ldy + base[0];
            float m = -ts_inf();
            for (int i = lane; i < n; i += 32) m = fmaxf(m, xl[(size_t)i * stride]);
            m = warp_fmax(m);
            float sum = 0.0f;
            for (int i = lane; i < n; i += 32) sum += expf(__fsub_rn(xl[(size_t)i * stride], m));
            sum = warp_sum(sum);
            if (log) {
                float sh = __fadd_rn(m, logf(sum));
                for (int i = lane; i < n; i += 32) yl[(size_t)i * stride] = __fsub_rn(xl[(size_t)i * stride], sh);
            } else {
                float inv = __fdiv_rn(1.0f, sum);
                for (int i = lane; i < n; i += 32)
                    yl[(size_t)i * stride] = __fmul_rn(expf(__fsub_rn(xl[(size_t)i * stride], m)), inv);
            }
        }
    }
}

// ---- embedding lookup --------------------------------------------------------------

// y[r, j·cols .. (j+1)·cols) = table row ids[r, j], dequantized (common.cuh `wload`, the
// bag kernels' rules), for j < nids; ids are i64 with row stride `ldids` (0: constant
// ids). An id outside [0, trows) is not read: its output is zeroed and the smallest bad
// position r·nids + j is recorded with atomicMin in `*err` (the host sets it to
// u64::MAX before the run and turns anything else into a typed error). One warp per id.
template <int FMT>
__device__ __forceinline__ void lookup(const u8* __restrict__ table, const float* __restrict__ scales, i64 trows,
                                       int cols, const i64* __restrict__ ids, int ldids, int nids,
                                       float* __restrict__ y, int ldy, int rows, u64* __restrict__ err) {
    int lane = threadIdx.x & 31;
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, warps = (gridDim.x * blockDim.x) >> 5;
    for (int r = blockIdx.y; r < rows; r += gridDim.y) {
        for (int j = warp; j < nids; j += warps) {
            i64 id = ids[(size_t)r * ldids + j];
            float* o = y + (size_t)r * ldy + (size_t)j * cols;
            if (id < 0 || id >= trows) {
                if (lane == 0) atomicMin(err, (u64)r * (u64)nids + (u64)j);
                for (int c = lane; c < cols; c += 32) o[c] = 0.0f;
                continue;
            }
            for (int c = lane; c < cols; c += 32) o[c] = wload<FMT>(table, scales, (int)id, c, cols);
        }
    }
}

#define LOOKUP_KERNEL(name, FMT)                                                                                 \
    extern "C" __global__ void __launch_bounds__(256) lookup_##name(                                            \
        const u8* __restrict__ table, const float* __restrict__ scales, i64 trows, int cols,                   \
        const i64* __restrict__ ids, int ldids, int nids, float* __restrict__ y, int ldy, int rows,            \
        u64* __restrict__ err) {                                                                                \
        lookup<FMT>(table, scales, trows, cols, ids, ldids, nids, y, ldy, rows, err);                           \
    }

LOOKUP_KERNEL(f32, FMT_F32)
LOOKUP_KERNEL(f16, FMT_F16)
LOOKUP_KERNEL(bf16, FMT_BF16)
LOOKUP_KERNEL(q8, FMT_Q8)
LOOKUP_KERNEL(q8_rowwise, FMT_Q8_ROWWISE)
LOOKUP_KERNEL(q4, FMT_Q4)

// ---- gather ------------------------------------------------------------------------

// Gather along an axis of data viewed as [pre, d, post] (32-bit words; the host doubles
// `post` for i64 data): y[r, (p·n + j)·post + q] = x[r, (p·d + i)·post + q] with
// i = idx[r, j] (i64, row stride `ldidx` elements, 0: constant; negative counts from the
// end once). An index outside [-d, d) is not read: those output words are zeroed and the
// smallest bad position r·n + j is atomically min-ed into `*err` (the host resets it to
// u64::MAX and turns anything else into a typed error).
extern "C" __global__ void __launch_bounds__(256) gather_u32(const u32* __restrict__ x, int ldx,
                                                             const i64* __restrict__ idx, int ldidx,
                                                             u32* __restrict__ y, int ldy, int rows, int pre, int d,
                                                             int post, int n, u64* __restrict__ err) {
    int total = pre * n * post;
    for (int r = blockIdx.y; r < rows; r += gridDim.y) {
        for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < total; e += gridDim.x * blockDim.x) {
            int q = e % post, t = e / post;
            int j = t % n, p = t / n;
            i64 i = idx[(size_t)r * ldidx + j];
            if (i < 0) i += d;
            u32* o = y + (size_t)r * ldy + e;
            if (i < 0 || i >= d) {
                if (p == 0 && q == 0) atomicMin(err, (u64)r * (u64)n + (u64)j);
                *o = 0u;
                continue;
            }
            *o = x[(size_t)r * ldx + ((size_t)p * d + (size_t)i) * post + q];
        }
    }
}

// Ids computed by the graph for an embedding bag (one bag of `slots` ids per row, row
// stride `ldids` elements): copied densely into out[r·slots + s] for the bag kernel, an id
// outside [0, trows) replaced by 0 (never read by the bag) and its position r·slots + s
// atomically min-ed into `*err` (reset to u64::MAX by the host).
extern "C" __global__ void __launch_bounds__(256) sanitize_ids_i64(const i64* __restrict__ ids, int ldids,
                                                                   int slots, int rows, i64 trows,
                                                                   i64* __restrict__ out, u64* __restrict__ err) {
    for (int r = blockIdx.y; r < rows; r += gridDim.y) {
        for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < slots; e += gridDim.x * blockDim.x) {
            i64 id = ids[(size_t)r * ldids + e];
            bool bad = id < 0 || id >= trows;
            if (bad) atomicMin(err, (u64)r * (u64)slots + (u64)e);
            out[(size_t)r * slots + e] = bad ? 0 : id;
        }
    }
}

// ---- batched matmul ----------------------------------------------------------------

#define MM_TILE 16

// For every row r and leading index l (nlead of them; `lead` sets 0, 1, 2 give the
// output, a and b offsets, zero strides broadcasting): Y[m, n] = A[m, k] · B[k, n], each
// matrix row-major and contiguous inside the row. 16×16 output tiles, one per block of
// 256 threads, staged through shared memory 16 columns of k at a time; each output
// accumulates over k in order with separate multiplies and adds, exactly the CPU scalar
// loop. x of the grid strides over tiles, y over (row, l) pairs.
extern "C" __global__ void __launch_bounds__(256) matmul_f32(const float* __restrict__ a, int lda,
                                                             const float* __restrict__ b, int ldb,
                                                             float* __restrict__ y, int ldy, int rows, int nlead,
                                                             Strided lead, int m, int k, int n) {
    __shared__ float As[MM_TILE][MM_TILE + 1];
    __shared__ float Bs[MM_TILE][MM_TILE + 1];
    int tx = threadIdx.x & (MM_TILE - 1), ty = threadIdx.x / MM_TILE;
    int tiles_n = (n + MM_TILE - 1) / MM_TILE, tiles = ((m + MM_TILE - 1) / MM_TILE) * tiles_n;
    int batches = rows * nlead;
    for (int bt = blockIdx.y; bt < batches; bt += gridDim.y) {
        int r = bt / nlead, l = bt - r * nlead;
        int off[3];
        ts_offsets<3>(lead, l, off);
        const float* A = a + (size_t)r * lda + off[1];
        const float* B = b + (size_t)r * ldb + off[2];
        float* Y = y + (size_t)r * ldy + off[0];
        for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
            int i0 = (t / tiles_n) * MM_TILE, j0 = (t % tiles_n) * MM_TILE;
            int i = i0 + ty, j = j0 + tx;
            float acc = 0.0f;
            for (int p0 = 0; p0 < k; p0 += MM_TILE) {
                As[ty][tx] = (i < m && p0 + tx < k) ? A[(size_t)i * k + p0 + tx] : 0.0f;
                Bs[ty][tx] = (p0 + ty < k && j < n) ? B[(size_t)(p0 + ty) * n + j] : 0.0f;
                __syncthreads();
                int kk = min(MM_TILE, k - p0);
                for (int q = 0; q < kk; q++) acc = __fadd_rn(acc, __fmul_rn(As[ty][q], Bs[q][tx]));
                __syncthreads();
            }
            if (i < m && j < n) Y[(size_t)i * n + j] = acc;
        }
    }
}
