// A minimal CUDA emulator: compiles graft's .cu kernels as host C++ and runs each block
// with one OS thread per CUDA thread, so index arithmetic, bounds, barriers and warp
// reductions are exercised without a GPU. Only what graft's kernels use is provided:
// 1-D blocks (a multiple of 32 threads), __syncthreads, __shfl_xor_sync over full warps,
// __shared__ (function-scope statics; blocks run one after another), atomicMin on u64, the
// _rn intrinsics
// (plain f32 operations; build with -ffp-contract=off) and the f32 math functions.
// It says nothing about performance, memory coalescing or the real compiler's codegen.
#pragma once
#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__ static

struct EmuDim {
    unsigned x = 0, y = 0, z = 0;
};
inline thread_local EmuDim threadIdx, blockIdx;
inline EmuDim blockDim, gridDim;
struct uint4 {
    unsigned x, y, z, w;
};

inline thread_local std::barrier<>* emu_block_barrier = nullptr;
inline thread_local std::barrier<>* emu_warp_barrier = nullptr;
inline thread_local float* emu_warp_buf = nullptr;

inline void __syncthreads() { emu_block_barrier->arrive_and_wait(); }
inline float __shfl_xor_sync(unsigned, float v, int o) {
    int lane = threadIdx.x & 31;
    emu_warp_buf[lane] = v;
    emu_warp_barrier->arrive_and_wait();
    float r = emu_warp_buf[lane ^ o];
    emu_warp_barrier->arrive_and_wait();
    return r;
}
// Real atomics: the emulated threads of a block run concurrently.
inline unsigned long long atomicMin(unsigned long long* p, unsigned long long v) {
    std::atomic_ref<unsigned long long> a(*p);
    unsigned long long old = a.load();
    while (v < old && !a.compare_exchange_weak(old, v)) {
    }
    return old;
}
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}
using std::min;

inline float emu_f16_to_f32(unsigned short h) {
    unsigned sign = (h >> 15) & 1, exp = (h >> 10) & 31, man = h & 1023;
    float v;
    if (exp == 0) v = std::ldexp((float)man, -24);
    else if (exp == 31) v = man ? NAN : INFINITY;
    else v = std::ldexp((float)(man | 1024), (int)exp - 25);
    return sign ? -v : v;
}

// Runs `kernel` over grid × block (block.x threads, a multiple of 32).
inline void emu_launch(EmuDim grid, EmuDim block, const std::function<void()>& kernel) {
    gridDim = grid;
    blockDim = block;
    unsigned n = block.x, warps = (n + 31) / 32;
    for (unsigned bz = 0; bz < std::max(grid.z, 1u); bz++)
        for (unsigned by = 0; by < std::max(grid.y, 1u); by++)
            for (unsigned bx = 0; bx < grid.x; bx++) {
                std::barrier<> block_bar(n);
                std::vector<std::unique_ptr<std::barrier<>>> warp_bars;
                std::vector<float> bufs(warps * 32);
                for (unsigned w = 0; w < warps; w++) warp_bars.push_back(std::make_unique<std::barrier<>>(32));
                std::vector<std::thread> threads;
                for (unsigned t = 0; t < n; t++) {
                    threads.emplace_back([&, t] {
                        threadIdx = {t, 0, 0};
                        blockIdx = {bx, by, bz};
                        emu_block_barrier = &block_bar;
                        emu_warp_barrier = warp_bars[t / 32].get();
                        emu_warp_buf = &bufs[(t / 32) * 32];
                        kernel();
                    });
                }
                for (auto& th : threads) th.join();
            }
}
