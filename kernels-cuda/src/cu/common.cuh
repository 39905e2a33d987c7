// graft CUDA kernels: definitions shared by every module.
//
// This text is prepended to each module's source before NVRTC compiles it (NVRTC has
// no include path here, and the modules must not depend on the CUDA toolkit headers,
// which the nvrtc wheel does not ship). Numerics follow runtime/src/quant.rs and the
// CPU scalar reference exactly: dequantization uses explicitly rounded f32 operations
// (__fmul_rn / __fadd_rn) so no multiply-add is contracted into an FMA; reductions
// accumulate in f32 (their order differs from the CPU's sequential loop, so linear and
// dot results agree to rounding, not bit for bit).

typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef long long i64;
typedef unsigned long long u64;

// Weight storage formats; the numbering is `graft_kernels_cuda::WeightFormat`.
#define FMT_F32 0
#define FMT_F16 1
#define FMT_BF16 2
#define FMT_Q8 3
#define FMT_Q8_ROWWISE 4
#define FMT_Q4 5

// Activations; the numbering is `graft_kernels_cuda::Act`.
#define ACT_NONE 0
#define ACT_RELU 1
#define ACT_GELU 2
#define ACT_GELU_TANH 3
#define ACT_SILU 4
#define ACT_SIGMOID 5
#define ACT_TANH 6

__device__ __forceinline__ float f16_bits_to_f32(u16 h) {
#ifdef GRAFT_CUDA_HOST_EMU
    return emu_f16_to_f32(h);  // tests/emu: the kernels compiled as host C++
#else
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#endif
}

__device__ __forceinline__ float bf16_bits_to_f32(u16 h) { return __int_as_float(((u32)h) << 16); }

// A little-endian f32 at any byte address (q8_rowwise trailers are not aligned).
__device__ __forceinline__ float ld_f32_le(const u8* p) {
    u32 v = (u32)p[0] | ((u32)p[1] << 8) | ((u32)p[2] << 16) | ((u32)p[3] << 24);
    return __int_as_float((int)v);
}

// Bytes of one q4 row of `cols` logical columns: ceil(cols / 32) blocks of 18 bytes.
__device__ __forceinline__ size_t q4_row_bytes(int cols) { return (size_t)((cols + 31) / 32) * 18; }

// Element (row, col) of a [rows, cols] weight, dequantized as runtime/src/quant.rs does.
// `scales` is only read for FMT_Q8 (one f32 per row).
template <int FMT>
__device__ __forceinline__ float wload(const u8* __restrict__ w, const float* __restrict__ scales, int row, int col,
                                       int cols) {
    size_t i = (size_t)row * (size_t)cols + (size_t)col;
    if (FMT == FMT_F32) {
        return ((const float*)w)[i];
    } else if (FMT == FMT_F16) {
        return f16_bits_to_f32(((const u16*)w)[i]);
    } else if (FMT == FMT_BF16) {
        return bf16_bits_to_f32(((const u16*)w)[i]);
    } else if (FMT == FMT_Q8) {
        return __fmul_rn((float)((const i8*)w)[i], scales[row]);
    } else if (FMT == FMT_Q8_ROWWISE) {
        const u8* r = w + (size_t)row * (size_t)(cols + 8);
        return __fadd_rn(__fmul_rn((float)r[col], ld_f32_le(r + cols)), ld_f32_le(r + cols + 4));
    } else {
        const u8* blk = w + (size_t)row * q4_row_bytes(cols) + (size_t)(col / 32) * 18;
        float d = f16_bits_to_f32((u16)(blk[0] | (blk[1] << 8)));
        int j = col % 32;
        u8 byte = blk[2 + (j % 16)];
        int code = j < 16 ? (byte & 0x0f) : (byte >> 4);
        return __fmul_rn((float)(code - 8), d);
    }
}

// runtime/src/kernels/mod.rs `activation::apply`.
__device__ __forceinline__ float act_apply(int act, float x) {
    switch (act) {
        case ACT_RELU: return x < 0.0f ? 0.0f : x;  // keeps NaN, like the CPU
        case ACT_GELU: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
        case ACT_GELU_TANH: return 0.5f * x * (1.0f + tanhf(0.7978846f * (x + 0.044715f * x * x * x)));
        case ACT_SILU: return x / (1.0f + expf(-x));
        case ACT_SIGMOID: return 1.0f / (1.0f + expf(-x));
        case ACT_TANH: return tanhf(x);
        default: return x;
    }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum over a block of `blockDim.x` threads (a multiple of 32, at most 1024); every thread
// gets the result. `shared` holds 32 floats. Ends with a barrier so it can be reused.
__device__ __forceinline__ float block_sum(float v, float* shared) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    float t = lane < warps ? shared[lane] : 0.0f;
    t = warp_sum(t);
    __syncthreads();
    return t;
}
