// Element-wise and small per-row ops over strided [M, N] views of the session arena:
// activation, add/mul (with a second view or a broadcast row vector), copy (concat
// parts), the DCN-v2 cross epilogue, layer norm, DLRM dot interaction and FM.
//
// Element-wise kernels use a 2-D grid: x over columns, y over rows, so any stride works
// and consecutive threads touch consecutive addresses. Row ops (layer norm, dot
// interaction, FM) use one block per row with block reductions. Products and sums that
// the CPU computes as separate f32 operations use __fmul_rn / __fadd_rn so they are not
// contracted into FMAs (the cross epilogue is then bit-identical to the CPU's).

extern "C" __global__ void act_f32(const float* __restrict__ x, int ldx, float* y, int ldy, int M, int N, int act) {
    int c = blockIdx.x * blockDim.x + threadIdx.x, m = blockIdx.y;
    if (c >= N || m >= M) return;
    y[(size_t)m * ldy + c] = act_apply(act, x[(size_t)m * ldx + c]);
}

// In place: y = act(y). Separate from act_f32 because x and y alias (no __restrict__).
extern "C" __global__ void act_inplace_f32(float* y, int ldy, int M, int N, int act) {
    int c = blockIdx.x * blockDim.x + threadIdx.x, m = blockIdx.y;
    if (c >= N || m >= M) return;
    float* p = y + (size_t)m * ldy + c;
    *p = act_apply(act, *p);
}

// op 0 = add, 1 = mul. ldb == 0 broadcasts one row of b (a tensor operand) over rows.
extern "C" __global__ void binary_f32(const float* __restrict__ a, int lda, const float* __restrict__ b, int ldb,
                                      float* __restrict__ y, int ldy, int M, int N, int op) {
    int c = blockIdx.x * blockDim.x + threadIdx.x, m = blockIdx.y;
    if (c >= N || m >= M) return;
    float u = a[(size_t)m * lda + c], v = b[(size_t)m * ldb + c];
    y[(size_t)m * ldy + c] = op == 0 ? __fadd_rn(u, v) : __fmul_rn(u, v);
}

extern "C" __global__ void copy_f32(const float* __restrict__ x, int ldx, float* __restrict__ y, int ldy, int M,
                                    int N) {
    int c = blockIdx.x * blockDim.x + threadIdx.x, m = blockIdx.y;
    if (c >= N || m >= M) return;
    y[(size_t)m * ldy + c] = x[(size_t)m * ldx + c];
}

// DCN-v2 cross layer after its linear: y = x0 * y + xl.
extern "C" __global__ void cross_f32(const float* __restrict__ x0, int ld0, const float* __restrict__ xl, int ldl,
                                     float* __restrict__ y, int ldy, int M, int N) {
    int c = blockIdx.x * blockDim.x + threadIdx.x, m = blockIdx.y;
    if (c >= N || m >= M) return;
    float* p = y + (size_t)m * ldy + c;
    *p = __fadd_rn(__fmul_rn(x0[(size_t)m * ld0 + c], *p), xl[(size_t)m * ldl + c]);
}

// Layer norm of each row (two passes like the CPU: mean, then the variance of the
// centred values); one block per row.
extern "C" __global__ void __launch_bounds__(256) layer_norm_f32(const float* __restrict__ x, int ldx,
                                                                 const float* __restrict__ gamma,
                                                                 const float* __restrict__ beta, float eps,
                                                                 float* __restrict__ y, int ldy, int M, int N) {
    __shared__ float red[32];
    int m = blockIdx.x;
    if (m >= M) return;
    const float* xr = x + (size_t)m * ldx;
    float s = 0.0f;
    for (int c = threadIdx.x; c < N; c += blockDim.x) s += xr[c];
    float mean = block_sum(s, red) / (float)N;
    float v = 0.0f;
    for (int c = threadIdx.x; c < N; c += blockDim.x) {
        float d = xr[c] - mean;
        v += d * d;
    }
    float var = block_sum(v, red) / (float)N;
    float inv = 1.0f / sqrtf(var + eps);
    for (int c = threadIdx.x; c < N; c += blockDim.x) {
        float shift = beta ? beta[c] : 0.0f;
        y[(size_t)m * ldy + c] = (xr[c] - mean) * inv * gamma[c] + shift;
    }
}

// DLRM dot interaction. `ins` / `lds` are device arrays of F input pointers and strides,
// each input D wide. Row m of y gets input 0's D values, then for i in 0..F the dots
// <v_i, v_j> for j < i (j <= i with self interaction), in that order. One block per row,
// one warp per dot.
extern "C" __global__ void __launch_bounds__(256) dot_interaction_f32(const u64* __restrict__ ins,
                                                                      const int* __restrict__ lds, int F, int D,
                                                                      int self_interaction, float* __restrict__ y,
                                                                      int ldy, int M) {
    int m = blockIdx.x;
    if (m >= M) return;
    float* out = y + (size_t)m * ldy;
    const float* first = (const float*)ins[0] + (size_t)m * lds[0];
    for (int c = threadIdx.x; c < D; c += blockDim.x) out[c] = first[c];
    int extra = self_interaction ? 1 : 0;
    int pairs = self_interaction ? F * (F + 1) / 2 : F * (F - 1) / 2;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int p = warp; p < pairs; p += warps) {
        // Row i of the pair triangle starts at i (i - 1) / 2 without self interaction and
        // at i (i + 1) / 2 with it: start(i) = i (i - 1 + 2 extra) / 2. Find i, then j.
        int i = 0;
        while ((i + 1) * (i + 2 * extra) / 2 <= p) i++;
        int j = p - i * (i - 1 + 2 * extra) / 2;
        const float* a = (const float*)ins[i] + (size_t)m * lds[i];
        const float* b = (const float*)ins[j] + (size_t)m * lds[j];
        float s = 0.0f;
        for (int c = lane; c < D; c += 32) s += a[c] * b[c];
        s = warp_sum(s);
        if (lane == 0) out[D + p] = s;
    }
}

// FM second order: y[m, 0] = 0.5 * sum_d ((sum_s v_s[d])^2 - sum_s v_s[d]^2).
extern "C" __global__ void __launch_bounds__(256) fm_f32(const u64* __restrict__ ins, const int* __restrict__ lds,
                                                         int F, int D, float* __restrict__ y, int ldy, int M) {
    __shared__ float red[32];
    int m = blockIdx.x;
    if (m >= M) return;
    float acc = 0.0f;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float sum = 0.0f, squares = 0.0f;
        for (int s = 0; s < F; s++) {
            float v = ((const float*)ins[s])[(size_t)m * lds[s] + d];
            sum += v;
            squares += v * v;
        }
        acc += sum * sum - squares;
    }
    acc = block_sum(acc, red);
    if (threadIdx.x == 0) y[(size_t)m * ldy] = 0.5f * acc;
}
