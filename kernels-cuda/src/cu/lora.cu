// Many adapters in one batch: LoRA (BGMV / SGMV shrink and expand) and SSF scale-shift.
//
// Every adapter a of a launch is described by device arrays indexed by a: `a_ptrs[a]`
// (LoRA A, [rank, in] f32), `b_ptrs[a]` (LoRA B, [out, rank] f32), `ranks[a]`,
// `scales[a]`. Ranks may differ per adapter; the intermediate t is [M, ldt] with
// ldt >= the largest rank. Each batch row m names its adapter in idx[m]; -1 means none
// (the row is left untouched). `row_scale` (may be NULL) multiplies a row's delta, for
// scaled stacks of adapters.
//
// BGMV (gather): rows in any order.
//   shrink: t[m, r] = sum_k x[m, k] * A[idx[m]][r, k]   one warp per (m, r)
//   expand: y[m, o] += scale * sum_r t[m, r] * B[o, r]  one thread per (m, o)
// SGMV (segmented): rows grouped by adapter. `perm` lists batch rows so that segment s
// is perm[seg[s] .. seg[s + 1]], all using adapter seg_adapter[s]. Shrink stages a
// chunk of A's row r in shared memory once per segment and every warp reuses it for its
// rows; expand keeps B's row o for the segment in registers (r < SGMV_MAX_RANK) and
// streams the rows' t through it. Ranks above SGMV_MAX_RANK must use BGMV.

#define SGMV_MAX_RANK 64
#define SGMV_CHUNK 1024

extern "C" __global__ void __launch_bounds__(128) bgmv_shrink(const float* __restrict__ x, int ldx,
                                                              const int* __restrict__ idx,
                                                              const u64* __restrict__ a_ptrs,
                                                              const int* __restrict__ ranks, int K,
                                                              float* __restrict__ t, int ldt, int M) {
    int m = blockIdx.x;
    int r = blockIdx.y * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (m >= M) return;
    int a = idx[m];
    if (a < 0 || r >= ranks[a]) return;
    const float* arow = (const float*)a_ptrs[a] + (size_t)r * K;
    const float* xr = x + (size_t)m * ldx;
    float s = 0.0f;
    for (int k = lane; k < K; k += 32) s += xr[k] * arow[k];
    s = warp_sum(s);
    if (lane == 0) t[(size_t)m * ldt + r] = s;
}

extern "C" __global__ void __launch_bounds__(128) bgmv_expand(const float* __restrict__ t, int ldt,
                                                              const int* __restrict__ idx,
                                                              const u64* __restrict__ b_ptrs,
                                                              const int* __restrict__ ranks,
                                                              const float* __restrict__ scales,
                                                              const float* __restrict__ row_scale,
                                                              float* __restrict__ y, int ldy, int N, int M) {
    int o = blockIdx.x * blockDim.x + threadIdx.x, m = blockIdx.y;
    if (o >= N || m >= M) return;
    int a = idx[m];
    if (a < 0) return;
    int rank = ranks[a];
    const float* brow = (const float*)b_ptrs[a] + (size_t)o * rank;
    const float* tr = t + (size_t)m * ldt;
    float s = 0.0f;
    for (int r = 0; r < rank; r++) s += tr[r] * brow[r];
    float scale = scales[a] * (row_scale ? row_scale[m] : 1.0f);
    y[(size_t)m * ldy + o] += scale * s;
}

extern "C" __global__ void __launch_bounds__(256) sgmv_shrink(const float* __restrict__ x, int ldx,
                                                              const int* __restrict__ perm,
                                                              const int* __restrict__ seg,
                                                              const int* __restrict__ seg_adapter,
                                                              const u64* __restrict__ a_ptrs,
                                                              const int* __restrict__ ranks, int K,
                                                              float* __restrict__ t, int ldt) {
    __shared__ float arow_s[SGMV_CHUNK];
    int s = blockIdx.x, r = blockIdx.y;
    int a = seg_adapter[s];
    if (a < 0 || r >= ranks[a]) return;  // uniform per block: no barrier is skipped by part of it
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    int begin = seg[s], end = seg[s + 1];
    const float* arow = (const float*)a_ptrs[a] + (size_t)r * K;
    // Each warp owns rows begin + warp, + warps, ...; partial sums live in `acc` per
    // owned row slot across K chunks, so rows are processed in groups of 8 per warp.
    for (int base = begin; base < end; base += warps * 8) {
        float acc[8];
#pragma unroll
        for (int i = 0; i < 8; i++) acc[i] = 0.0f;
        for (int k0 = 0; k0 < K; k0 += SGMV_CHUNK) {
            int len = min(SGMV_CHUNK, K - k0);
            __syncthreads();
            for (int k = threadIdx.x; k < len; k += blockDim.x) arow_s[k] = arow[k0 + k];
            __syncthreads();
#pragma unroll
            for (int i = 0; i < 8; i++) {
                int p = base + warp + i * warps;
                if (p >= end) break;
                const float* xr = x + (size_t)perm[p] * ldx + k0;
                float part = 0.0f;
                for (int k = lane; k < len; k += 32) part += xr[k] * arow_s[k];
                acc[i] += part;
            }
        }
#pragma unroll
        for (int i = 0; i < 8; i++) {
            int p = base + warp + i * warps;
            float v = warp_sum(acc[i]);
            if (lane == 0 && p < end) t[(size_t)perm[p] * ldt + r] = v;
        }
    }
}

extern "C" __global__ void __launch_bounds__(128) sgmv_expand(const float* __restrict__ t, int ldt,
                                                              const int* __restrict__ perm,
                                                              const int* __restrict__ seg,
                                                              const int* __restrict__ seg_adapter,
                                                              const u64* __restrict__ b_ptrs,
                                                              const int* __restrict__ ranks,
                                                              const float* __restrict__ scales,
                                                              const float* __restrict__ row_scale,
                                                              float* __restrict__ y, int ldy, int N) {
    int s = blockIdx.y;
    int o = blockIdx.x * blockDim.x + threadIdx.x;
    int a = seg_adapter[s];
    if (a < 0 || o >= N) return;
    int rank = ranks[a];
    if (rank > SGMV_MAX_RANK) return;  // the host routes such adapters to BGMV
    const float* brow = (const float*)b_ptrs[a] + (size_t)o * rank;
    float breg[SGMV_MAX_RANK];
#pragma unroll
    for (int r = 0; r < SGMV_MAX_RANK; r++) breg[r] = r < rank ? brow[r] : 0.0f;
    for (int p = seg[s]; p < seg[s + 1]; p++) {
        int m = perm[p];
        const float* tr = t + (size_t)m * ldt;
        float acc = 0.0f;
#pragma unroll
        for (int r = 0; r < SGMV_MAX_RANK; r++)
            if (r < rank) acc += tr[r] * breg[r];
        float scale = scales[a] * (row_scale ? row_scale[m] : 1.0f);
        y[(size_t)m * ldy + o] += scale * acc;
    }
}

// SSF: y[m, o] = g'[o] * y[m, o] + b'[o] for a = idx[m] (-1: untouched), with the per-row
// multiplier m = row_scale[m] (1 when row_scale is NULL): g' = 1 + m (g - 1), b' = m b
// (m = 1: exactly g * y + b; m = 0: untouched), as the ssf-pool kind computes on the CPU.
// `scale_ptrs[a]` / `shift_ptrs[a]` point at N floats (shift may be 0 = none).
extern "C" __global__ void ssf_f32(float* y, int ldy, const int* __restrict__ idx, const u64* __restrict__ scale_ptrs,
                                   const u64* __restrict__ shift_ptrs, const float* __restrict__ row_scale, int N,
                                   int M) {
    int o = blockIdx.x * blockDim.x + threadIdx.x, m = blockIdx.y;
    if (o >= N || m >= M) return;
    int a = idx[m];
    if (a < 0) return;
    float mult = row_scale ? row_scale[m] : 1.0f;
    if (mult == 0.0f) return;
    float* p = y + (size_t)m * ldy + o;
    float g = ((const float*)scale_ptrs[a])[o];
    float b = shift_ptrs[a] ? ((const float*)shift_ptrs[a])[o] : 0.0f;
    if (mult == 1.0f) {
        *p = __fadd_rn(__fmul_rn(g, *p), b);
    } else {
        float gp = __fadd_rn(1.0f, __fmul_rn(mult, __fsub_rn(g, 1.0f)));
        *p = __fadd_rn(__fmul_rn(gp, *p), __fmul_rn(mult, b));
    }
}
