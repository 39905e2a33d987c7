// Linear layers: y[m, o] = act(sum_k x[m, k] * W[o, k] + bias[o]), W in the PyTorch
// [out, in] layout and any storage format, dequantized in registers as it is read.
//
// gemv_<fmt> (small batches, memory bound): one warp per output column o and a chunk of
// GEMV_ROWS batch rows (grid.y walks the chunks). Lanes stride over k, so a warp reads
// each weight row once, coalesced, dequantizes every weight once and multiplies it into
// GEMV_ROWS accumulators; a shuffle reduction finishes each dot product. q8 rows whose
// length is a multiple of 16 take a vector path: each lane loads 16 codes in one 16-byte
// load (the row start is then 16-byte aligned when the tensor is).
//
// gemm_<fmt> (large batches, compute bound): 64x64 output tiles, K in steps of 16. 256
// threads stage a 64x16 tile of x and a dequantized 16x64 tile of W in shared memory,
// then each thread accumulates a 4x4 register block (rows ty + 16i, cols tx + 16j, so
// neighbouring threads read neighbouring shared words). SIMT f32 FMA: the numerics stay
// f32 like the CPU reference (tensor-core TF32 would not).
//
// Both take row strides (ldx, ldy) in floats so they read and write columns of the
// session arena in place (a value inside a concat buffer).

#define GEMV_ROWS 8

template <int FMT>
__device__ __forceinline__ void gemv(const float* __restrict__ x, int ldx, const u8* __restrict__ w,
                                     const float* __restrict__ scales, const float* __restrict__ bias, int act,
                                     float* __restrict__ y, int ldy, int M, int N, int K) {
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (warp >= N) return;
    int o = warp;
    int m0 = blockIdx.y * GEMV_ROWS;
    int rows = min(GEMV_ROWS, M - m0);
    if (rows <= 0) return;
    const float* xb = x + (size_t)m0 * ldx;
    float acc[GEMV_ROWS];
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; r++) acc[r] = 0.0f;

    if (FMT == FMT_Q8 && (K % 16) == 0 && ((((u64)w) & 15) == 0)) {
        const uint4* row = (const uint4*)(w + (size_t)o * K);
        float s = scales[o];
        for (int v = lane; v < K / 16; v += 32) {
            uint4 q = row[v];
            u32 words[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
            for (int b = 0; b < 16; b++) {
                float wv = __fmul_rn((float)(i8)((words[b >> 2] >> ((b & 3) * 8)) & 0xff), s);
                int k = v * 16 + b;
#pragma unroll
                for (int r = 0; r < GEMV_ROWS; r++)
                    if (r < rows) acc[r] += xb[(size_t)r * ldx + k] * wv;
            }
        }
    } else {
        for (int k = lane; k < K; k += 32) {
            float wv = wload<FMT>(w, scales, o, k, K);
#pragma unroll
            for (int r = 0; r < GEMV_ROWS; r++)
                if (r < rows) acc[r] += xb[(size_t)r * ldx + k] * wv;
        }
    }
    float b = bias ? bias[o] : 0.0f;
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; r++) {
        float v = warp_sum(acc[r]);
        if (lane == 0 && r < rows) y[(size_t)(m0 + r) * ldy + o] = act_apply(act, v + b);
    }
}

#define TM 64
#define TN 64
#define TK 16

template <int FMT>
__device__ __forceinline__ void gemm(const float* __restrict__ x, int ldx, const u8* __restrict__ w,
                                     const float* __restrict__ scales, const float* __restrict__ bias, int act,
                                     float* __restrict__ y, int ldy, int M, int N, int K) {
    __shared__ float xs[TK][TM + 1];
    __shared__ float ws[TK][TN + 1];
    int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    int m0 = blockIdx.y * TM, n0 = blockIdx.x * TN;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = 0.0f;

    for (int k0 = 0; k0 < K; k0 += TK) {
        // Not unrolled: four inlined dequantizing loads in flight made ptxas spill
        // (gemm_q4, sm_90); the loads are latency-bound either way.
#pragma unroll 1
        for (int i = 0; i < 4; i++) {
            int e = threadIdx.x + i * 256;
            int r = e >> 4, c = e & 15;
            int m = m0 + r, n = n0 + r, k = k0 + c;
            xs[c][r] = (m < M && k < K) ? x[(size_t)m * ldx + k] : 0.0f;
            ws[c][r] = (n < N && k < K) ? wload<FMT>(w, scales, n, k, K) : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < TK; kk++) {
            float a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; i++) a[i] = xs[kk][ty + 16 * i];
#pragma unroll
            for (int j = 0; j < 4; j++) b[j] = ws[kk][tx + 16 * j];
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) acc[i][j] += a[i] * b[j];
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        int m = m0 + ty + 16 * i;
        if (m >= M) continue;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int n = n0 + tx + 16 * j;
            if (n < N) y[(size_t)m * ldy + n] = act_apply(act, acc[i][j] + (bias ? bias[n] : 0.0f));
        }
    }
}

#define LINEAR_KERNELS(name, FMT)                                                                              \
    extern "C" __global__ void __launch_bounds__(128) gemv_##name(                                              \
        const float* __restrict__ x, int ldx, const u8* __restrict__ w, const float* __restrict__ scales,        \
        const float* __restrict__ bias, int act, float* __restrict__ y, int ldy, int M, int N, int K) {         \
        gemv<FMT>(x, ldx, w, scales, bias, act, y, ldy, M, N, K);                                               \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(256) gemm_##name(                                              \
        const float* __restrict__ x, int ldx, const u8* __restrict__ w, const float* __restrict__ scales,        \
        const float* __restrict__ bias, int act, float* __restrict__ y, int ldy, int M, int N, int K) {         \
        gemm<FMT>(x, ldx, w, scales, bias, act, y, ldy, M, N, K);                                               \
    }

LINEAR_KERNELS(f32, FMT_F32)
LINEAR_KERNELS(f16, FMT_F16)
LINEAR_KERNELS(bf16, FMT_BF16)
LINEAR_KERNELS(q8, FMT_Q8)
LINEAR_KERNELS(q8_rowwise, FMT_Q8_ROWWISE)
LINEAR_KERNELS(q4, FMT_Q4)
