// Embedding bags: out[m, :] = sum (or mean) of the dequantized table rows whose ids form
// bag m, for every storage format (q8_rowwise, the FBGEMM-style embedding format, is the
// common one).
//
// One block per bag; threads own columns (c = threadIdx.x + i * blockDim.x), so each
// thread reads one column of every row in the bag and adds in id order: exactly the
// CPU reference's per-column sequential sum (bit-identical results). Ids were checked
// against the table on the host before the launch. Bags come either padded
// (`ids[m * slots + s]`, offsets == NULL) or as flat indices plus torch-style offsets
// (bag m is indices[offsets[m] .. offsets[m + 1]], the last ends at n_indices).

template <int FMT>
__device__ __forceinline__ void bag(const u8* __restrict__ table, const float* __restrict__ scales, int cols,
                                    const i64* __restrict__ ids, const i64* __restrict__ offsets, int slots,
                                    int n_indices, int mean, float* __restrict__ out, int ldo, int M) {
    int m = blockIdx.x;
    if (m >= M) return;
    i64 start, end;
    if (offsets) {
        start = offsets[m];
        end = m + 1 < M ? offsets[m + 1] : (i64)n_indices;
    } else {
        start = (i64)m * slots;
        end = start + slots;
    }
    float* o = out + (size_t)m * ldo;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float acc = 0.0f;
        for (i64 s = start; s < end; s++) acc = __fadd_rn(acc, wload<FMT>(table, scales, (int)ids[s], c, cols));
        if (mean && end > start) acc = __fdiv_rn(acc, (float)(end - start));
        o[c] = acc;
    }
}

#define BAG_KERNEL(name, FMT)                                                                                   \
    extern "C" __global__ void __launch_bounds__(256) bag_##name(                                              \
        const u8* __restrict__ table, const float* __restrict__ scales, int cols, const i64* __restrict__ ids,  \
        const i64* __restrict__ offsets, int slots, int n_indices, int mean, float* __restrict__ out, int ldo,   \
        int M) {                                                                                                \
        bag<FMT>(table, scales, cols, ids, offsets, slots, n_indices, mean, out, ldo, M);                        \
    }

BAG_KERNEL(f32, FMT_F32)
BAG_KERNEL(f16, FMT_F16)
BAG_KERNEL(bf16, FMT_BF16)
BAG_KERNEL(q8, FMT_Q8)
BAG_KERNEL(q8_rowwise, FMT_Q8_ROWWISE)
BAG_KERNEL(q4, FMT_Q4)
