// Runs graft's CUDA kernels under tests/emu/cuda_emu.h against plain reference loops
// written from runtime/src/quant.rs and the CPU scalar kernels. Odd shapes on purpose:
// partial warps, tiles and chunks, empty bags, rows without an adapter, mixed ranks.
// Prints one line per check and exits nonzero on the first mismatch.
#define GRAFT_CUDA_HOST_EMU 1
#include "cuda_emu.h"
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>

#include "../../src/cu/common.cuh"
#include "../../src/cu/linear.cu"
#include "../../src/cu/embedding.cu"
#include "../../src/cu/lora.cu"
#include "../../src/cu/elementwise.cu"
#include "../../src/cu/tensor.cu"

static std::mt19937 rng(12345);
static float uni(float a = -1, float b = 1) { return std::uniform_real_distribution<float>(a, b)(rng); }
static int irand(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); }
static unsigned cdiv(unsigned a, unsigned b) { return (a + b - 1) / b; }
static int failures = 0;

static void check(const std::string& what, const std::vector<float>& got, const std::vector<float>& want, float tol) {
    if (got.size() != want.size()) {
        std::printf("FAIL %s: %zu values, expected %zu\n", what.c_str(), got.size(), want.size());
        failures++;
        return;
    }
    for (size_t i = 0; i < got.size(); i++) {
        float g = got[i], w = want[i];
        if (!(std::fabs(g - w) <= tol * (1 + std::fabs(w)))) {
            std::printf("FAIL %s [%zu]: got %g, expected %g\n", what.c_str(), i, g, w);
            failures++;
            return;
        }
    }
    std::printf("ok   %s (%zu values)\n", what.c_str(), got.size());
}

static float ref_act(int act, float x) {
    switch (act) {
        case ACT_RELU: return x < 0 ? 0 : x;
        case ACT_GELU: return 0.5f * x * (1 + std::erf(x * 0.70710678f));
        case ACT_SIGMOID: return 1 / (1 + std::exp(-x));
        case ACT_TANH: return std::tanh(x);
        default: return x;
    }
}

// A [rows, cols] weight in `fmt`: bytes + q8 scales, and its reference dequantization.
struct Weight {
    int fmt, rows, cols;
    std::vector<unsigned char> bytes;
    std::vector<float> scales;
    float at(int r, int c) const {
        if (fmt == FMT_F32) { float v; std::memcpy(&v, &bytes[((size_t)r * cols + c) * 4], 4); return v; }
        if (fmt == FMT_F16 || fmt == FMT_BF16) {
            unsigned short h; std::memcpy(&h, &bytes[((size_t)r * cols + c) * 2], 2);
            if (fmt == FMT_F16) return emu_f16_to_f32(h);
            unsigned u = (unsigned)h << 16; float v; std::memcpy(&v, &u, 4); return v;
        }
        if (fmt == FMT_Q8) return (float)(signed char)bytes[(size_t)r * cols + c] * scales[r];
        if (fmt == FMT_Q8_ROWWISE) {
            const unsigned char* row = &bytes[(size_t)r * (cols + 8)];
            float s, b; std::memcpy(&s, row + cols, 4); std::memcpy(&b, row + cols + 4, 4);
            return (float)row[c] * s + b;
        }
        size_t rb = (size_t)((cols + 31) / 32) * 18;
        const unsigned char* blk = &bytes[r * rb + (c / 32) * 18];
        unsigned short h = blk[0] | (blk[1] << 8);
        int j = c % 32; unsigned char byte = blk[2 + j % 16];
        int code = j < 16 ? (byte & 15) : (byte >> 4);
        return (float)(code - 8) * emu_f16_to_f32(h);
    }
};

static unsigned short rand_f16() { return (unsigned short)((irand(0, 1) << 15) | (irand(11, 16) << 10) | irand(0, 1023)); }

static Weight make_weight(int fmt, int rows, int cols) {
    Weight w{fmt, rows, cols, {}, {}};
    auto push = [&](const void* p, size_t n) { auto b = (const unsigned char*)p; w.bytes.insert(w.bytes.end(), b, b + n); };
    for (int r = 0; r < rows; r++) {
        if (fmt == FMT_Q8_ROWWISE) {
            for (int c = 0; c < cols; c++) w.bytes.push_back((unsigned char)irand(0, 255));
            float s = uni(0.001f, 0.01f), b = uni(-1, 0); push(&s, 4); push(&b, 4);
        } else if (fmt == FMT_Q4) {
            for (int blk = 0; blk < (cols + 31) / 32; blk++) {
                unsigned short h = (unsigned short)((6 << 10) | irand(0, 1023)) | (irand(0, 1) << 15);
                push(&h, 2);
                for (int i = 0; i < 16; i++) w.bytes.push_back((unsigned char)irand(0, 255));
            }
        } else {
            for (int c = 0; c < cols; c++) {
                if (fmt == FMT_F32) { float v = uni(); push(&v, 4); }
                else if (fmt == FMT_F16) { unsigned short h = rand_f16(); push(&h, 2); }
                else if (fmt == FMT_BF16) { float v = uni(); unsigned u; std::memcpy(&u, &v, 4); unsigned short h = u >> 16; push(&h, 2); }
                else w.bytes.push_back((unsigned char)(signed char)irand(-127, 127));
            }
        }
        w.scales.push_back(uni(0.001f, 0.02f));
    }
    return w;
}

static void test_linear(int fmt, int m, int n, int k, int act, bool use_bias, int ldx_pad, int ldy_pad) {
    Weight w = make_weight(fmt, n, k);
    int ldx = k + ldx_pad, ldy = n + ldy_pad;
    std::vector<float> x((size_t)m * ldx), bias(n), y((size_t)m * ldy, 7.0f), want((size_t)m * ldy, 7.0f);
    for (auto& v : x) v = uni();
    for (auto& v : bias) v = uni();
    for (int r = 0; r < m; r++)
        for (int o = 0; o < n; o++) {
            double acc = 0;
            for (int c = 0; c < k; c++) acc += (double)x[(size_t)r * ldx + c] * w.at(o, c);
            want[(size_t)r * ldy + o] = ref_act(act, (float)acc + (use_bias ? bias[o] : 0));
        }
    const float* bp = use_bias ? bias.data() : nullptr;
    const float* sp = fmt == FMT_Q8 ? w.scales.data() : nullptr;
    // The same dispatch as Gpu::linear: GEMV up to 16 rows, GEMM above.
    bool gemm_path = m > 16;
    auto run = [&] {
        const unsigned char* wp = w.bytes.data();
#define CALL(name) (gemm_path ? gemm_##name : gemv_##name)(x.data(), ldx, wp, sp, bp, act, y.data(), ldy, m, n, k)
        switch (fmt) {
            case FMT_F32: CALL(f32); break;
            case FMT_F16: CALL(f16); break;
            case FMT_BF16: CALL(bf16); break;
            case FMT_Q8: CALL(q8); break;
            case FMT_Q8_ROWWISE: CALL(q8_rowwise); break;
            default: CALL(q4); break;
        }
#undef CALL
    };
    if (gemm_path) emu_launch({cdiv(n, 64), cdiv(m, 64), 1}, {256, 1, 1}, run);
    else emu_launch({cdiv(n, 4), cdiv(m, 8), 1}, {128, 1, 1}, run);
    check(std::string(gemm_path ? "gemm" : "gemv") + " fmt " + std::to_string(fmt) + " " + std::to_string(m) + "x" +
              std::to_string(n) + "x" + std::to_string(k),
          y, want, 2e-4f);
}

static void test_bag(int fmt, bool offsets, bool mean) {
    int vocab = 37, cols = 45, m = 6, slots = 3;
    Weight t = make_weight(fmt, vocab, cols);
    std::vector<long long> ids, offs;
    if (offsets) {
        for (int r = 0; r < m; r++) {
            offs.push_back((long long)ids.size());
            int nb = r == 2 ? 0 : irand(1, 4);  // row 2: an empty bag
            for (int i = 0; i < nb; i++) ids.push_back(irand(0, vocab - 1));
        }
    } else {
        for (int i = 0; i < m * slots; i++) ids.push_back(irand(0, vocab - 1));
    }
    int ldo = cols + 3;
    std::vector<float> out((size_t)m * ldo, 5.0f), want((size_t)m * ldo, 5.0f);
    for (int r = 0; r < m; r++) {
        size_t s = offsets ? offs[r] : (size_t)r * slots;
        size_t e = offsets ? (r + 1 < m ? offs[r + 1] : ids.size()) : s + slots;
        for (int c = 0; c < cols; c++) {
            float acc = 0;
            for (size_t i = s; i < e; i++) acc += t.at((int)ids[i], c);
            if (mean && e > s) acc /= (float)(e - s);
            want[(size_t)r * ldo + c] = acc;
        }
    }
    const float* sp = fmt == FMT_Q8 ? t.scales.data() : nullptr;
    unsigned threads = (unsigned)((std::clamp(cols, 32, 256) + 31) / 32 * 32);
    emu_launch({(unsigned)m, 1, 1}, {threads, 1, 1}, [&] {
        auto f = fmt == FMT_Q8_ROWWISE ? bag_q8_rowwise
                 : fmt == FMT_Q8       ? bag_q8
                 : fmt == FMT_Q4       ? bag_q4
                 : fmt == FMT_F16      ? bag_f16
                 : fmt == FMT_BF16     ? bag_bf16
                                       : bag_f32;
        f(t.bytes.data(), sp, cols, ids.data(), offsets ? offs.data() : nullptr, slots, (int)ids.size(), mean, out.data(), ldo, m);
    });
    // Same summation order as the CPU: exact.
    check("bag fmt " + std::to_string(fmt) + (offsets ? " offsets" : " padded") + (mean ? " mean" : " sum"), out, want, 0);
}

// LoRA over m rows: adapters with mixed ranks; idx -1 rows untouched; BGMV and SGMV.
static void test_lora(bool sgmv) {
    int m = 23, k = 37, n = 29;
    std::vector<int> ranks = {4, 16, 7};
    std::vector<std::vector<float>> A, B;
    for (int rk : ranks) {
        A.emplace_back((size_t)rk * k); B.emplace_back((size_t)n * rk);
        for (auto& v : A.back()) v = uni(); for (auto& v : B.back()) v = uni();
    }
    std::vector<float> scales = {0.5f, 2.0f, 1.25f}, row_scale(m);
    std::vector<int> idx(m);
    for (int r = 0; r < m; r++) { idx[r] = r % 4 == 3 ? -1 : r % 3; row_scale[r] = uni(0.5f, 1.5f); }
    int ldx = k + 2, ldy = n + 1, max_rank = 16;
    std::vector<float> x((size_t)m * ldx), y((size_t)m * ldy), t((size_t)m * max_rank);
    for (auto& v : x) v = uni();
    for (auto& v : y) v = uni();
    std::vector<float> want = y;
    for (int r = 0; r < m; r++) {
        int a = idx[r];
        if (a < 0) continue;
        std::vector<double> tt(ranks[a]);
        for (int q = 0; q < ranks[a]; q++) for (int c = 0; c < k; c++) tt[q] += (double)x[(size_t)r * ldx + c] * A[a][(size_t)q * k + c];
        for (int o = 0; o < n; o++) {
            double s = 0;
            for (int q = 0; q < ranks[a]; q++) s += tt[q] * B[a][(size_t)o * ranks[a] + q];
            want[(size_t)r * ldy + o] += (float)(scales[a] * row_scale[r] * s);
        }
    }
    std::vector<unsigned long long> ap, bp;
    for (size_t a = 0; a < ranks.size(); a++) { ap.push_back((unsigned long long)A[a].data()); bp.push_back((unsigned long long)B[a].data()); }
    if (!sgmv) {
        emu_launch({(unsigned)m, cdiv(max_rank, 4), 1}, {128, 1, 1}, [&] {
            bgmv_shrink(x.data(), ldx, idx.data(), ap.data(), ranks.data(), k, t.data(), max_rank, m);
        });
        emu_launch({cdiv(n, 128), (unsigned)m, 1}, {128, 1, 1}, [&] {
            bgmv_expand(t.data(), max_rank, idx.data(), bp.data(), ranks.data(), scales.data(), row_scale.data(), y.data(), ldy, n, m);
        });
    } else {
        // Rows grouped by adapter (as the executor builds from row groups).
        std::vector<int> perm, seg = {0}, seg_adapter;
        for (int a = 0; a < 3; a++) {
            for (int r = 0; r < m; r++) if (idx[r] == a) perm.push_back(r);
            seg.push_back((int)perm.size());
            seg_adapter.push_back(a);
        }
        int n_seg = 3;
        emu_launch({(unsigned)n_seg, (unsigned)max_rank, 1}, {256, 1, 1}, [&] {
            sgmv_shrink(x.data(), ldx, perm.data(), seg.data(), seg_adapter.data(), ap.data(), ranks.data(), k, t.data(), max_rank);
        });
        emu_launch({cdiv(n, 128), (unsigned)n_seg, 1}, {128, 1, 1}, [&] {
            sgmv_expand(t.data(), max_rank, perm.data(), seg.data(), seg_adapter.data(), bp.data(), ranks.data(), scales.data(), row_scale.data(), y.data(), ldy, n);
        });
    }
    check(sgmv ? "sgmv mixed ranks" : "bgmv mixed ranks", y, want, 1e-4f);
}

static void test_ssf() {
    int m = 9, n = 150, ldy = n + 2;
    std::vector<float> g0(n), b0(n), g1(n), row_scale(m), y((size_t)m * ldy);
    for (int i = 0; i < n; i++) { g0[i] = uni(0.5f, 1.5f); b0[i] = uni(); g1[i] = uni(0.5f, 1.5f); }
    for (auto& v : y) v = uni();
    std::vector<int> idx(m);
    for (int r = 0; r < m; r++) { idx[r] = r % 3 == 2 ? -1 : r % 3; row_scale[r] = r % 4 == 0 ? 1.0f : (r % 4 == 1 ? 0.0f : uni(0.2f, 2)); }
    std::vector<unsigned long long> gp = {(unsigned long long)g0.data(), (unsigned long long)g1.data()}, bp = {(unsigned long long)b0.data(), 0};
    std::vector<float> want = y;
    for (int r = 0; r < m; r++) {
        if (idx[r] < 0 || row_scale[r] == 0) continue;
        const float* g = idx[r] ? g1.data() : g0.data();
        for (int o = 0; o < n; o++) {
            float b = idx[r] ? 0 : b0[o], s = row_scale[r], v = want[(size_t)r * ldy + o];
            want[(size_t)r * ldy + o] = s == 1 ? g[o] * v + b : (1 + s * (g[o] - 1)) * v + s * b;
        }
    }
    emu_launch({cdiv(n, 128), (unsigned)m, 1}, {128, 1, 1}, [&] { ssf_f32(y.data(), ldy, idx.data(), gp.data(), bp.data(), row_scale.data(), n, m); });
    check("ssf with per-row multipliers", y, want, 0);
}

static void test_rows() {
    int m = 5, d = 70, F = 4;
    std::vector<std::vector<float>> ins(F, std::vector<float>((size_t)m * (d + 1)));
    for (auto& v : ins) for (auto& e : v) e = uni();
    std::vector<unsigned long long> ptrs;
    std::vector<int> lds(F, d + 1);
    for (auto& v : ins) ptrs.push_back((unsigned long long)v.data());
    for (int self = 0; self < 2; self++) {
        int pairs = self ? F * (F + 1) / 2 : F * (F - 1) / 2, w = d + pairs, ldy = w + 3;
        std::vector<float> y((size_t)m * ldy), want((size_t)m * ldy);
        for (int r = 0; r < m; r++) {
            for (int c = 0; c < d; c++) want[(size_t)r * ldy + c] = ins[0][(size_t)r * (d + 1) + c];
            int kk = d;
            for (int i = 0; i < F; i++)
                for (int j = 0; j < i + self; j++) {
                    double s = 0;
                    for (int c = 0; c < d; c++) s += (double)ins[i][(size_t)r * (d + 1) + c] * ins[j][(size_t)r * (d + 1) + c];
                    want[(size_t)r * ldy + kk++] = (float)s;
                }
        }
        emu_launch({(unsigned)m, 1, 1}, {256, 1, 1}, [&] { dot_interaction_f32(ptrs.data(), lds.data(), F, d, self, y.data(), ldy, m); });
        check(self ? "dot interaction (self)" : "dot interaction", y, want, 1e-5f);
    }
    std::vector<float> y((size_t)m * 2), want((size_t)m * 2);
    for (int r = 0; r < m; r++) {
        double acc = 0;
        for (int c = 0; c < d; c++) {
            double s = 0, q = 0;
            for (int f = 0; f < F; f++) { double v = ins[f][(size_t)r * (d + 1) + c]; s += v; q += v * v; }
            acc += s * s - q;
        }
        want[(size_t)r * 2] = (float)(0.5 * acc);
    }
    emu_launch({(unsigned)m, 1, 1}, {256, 1, 1}, [&] { fm_f32(ptrs.data(), lds.data(), F, d, y.data(), 2, m); });
    check("fm", y, want, 1e-4f);
    // Layer norm with beta, strided.
    int n = 300, ld = n + 5;
    std::vector<float> x((size_t)m * ld), gam(n), bet(n), out((size_t)m * ld), ref((size_t)m * ld);
    for (auto& v : x) v = uni(-3, 3);
    for (int i = 0; i < n; i++) { gam[i] = uni(); bet[i] = uni(); }
    for (int r = 0; r < m; r++) {
        double mean = 0, var = 0;
        for (int c = 0; c < n; c++) mean += x[(size_t)r * ld + c];
        mean /= n;
        for (int c = 0; c < n; c++) var += (x[(size_t)r * ld + c] - mean) * (x[(size_t)r * ld + c] - mean);
        var /= n;
        for (int c = 0; c < n; c++) ref[(size_t)r * ld + c] = (float)((x[(size_t)r * ld + c] - mean) / std::sqrt(var + 1e-5) * gam[c] + bet[c]);
    }
    emu_launch({(unsigned)m, 1, 1}, {256, 1, 1}, [&] { layer_norm_f32(x.data(), ld, gam.data(), bet.data(), 1e-5f, out.data(), ld, m, n); });
    check("layer norm", out, ref, 1e-4f);
    // Element-wise: cross epilogue, broadcast add, activation in place, copy.
    int ew = 133;
    std::vector<float> a((size_t)m * ew), b(ew), c2((size_t)m * ew), o2((size_t)m * ew), r2((size_t)m * ew);
    for (auto& v : a) v = uni();
    for (auto& v : b) v = uni();
    for (auto& v : c2) v = uni();
    for (size_t i = 0; i < o2.size(); i++) r2[i] = a[i] + b[i % ew];
    emu_launch({cdiv(ew, 128), (unsigned)m, 1}, {128, 1, 1}, [&] { binary_f32(a.data(), ew, b.data(), 0, o2.data(), ew, m, ew, 0); });
    check("broadcast add", o2, r2, 0);
    for (size_t i = 0; i < o2.size(); i++) r2[i] = a[i] * r2[i] + c2[i];
    emu_launch({cdiv(ew, 128), (unsigned)m, 1}, {128, 1, 1}, [&] { cross_f32(a.data(), ew, c2.data(), ew, o2.data(), ew, m, ew); });
    check("cross epilogue", o2, r2, 0);
    for (size_t i = 0; i < o2.size(); i++) r2[i] = ref_act(ACT_SIGMOID, o2[i]);
    emu_launch({cdiv(ew, 128), (unsigned)m, 1}, {128, 1, 1}, [&] { act_inplace_f32(o2.data(), ew, m, ew, ACT_SIGMOID); });
    check("sigmoid in place", o2, r2, 1e-6f);
}

#include "tensor_checks.h"

int main() {
    std::setvbuf(stdout, nullptr, _IOLBF, 0);  // keep the lines before a crash
    if (emu_f16_to_f32(0x3C00) != 1.0f || emu_f16_to_f32(0xC000) != -2.0f || emu_f16_to_f32(0x0001) != std::ldexp(1.0f, -24)) {
        std::printf("FAIL f16 conversion\n");
        return 1;
    }
    for (int fmt : {FMT_F32, FMT_F16, FMT_BF16, FMT_Q8, FMT_Q8_ROWWISE, FMT_Q4}) {
        test_linear(fmt, 1, 37, 70, ACT_NONE, true, 0, 0);       // GEMV, one row, K not a multiple of 32
        test_linear(fmt, 11, 9, 64, ACT_RELU, true, 3, 2);        // GEMV, two row chunks, strided
        test_linear(fmt, 70, 67, 45, ACT_GELU, false, 1, 5);      // GEMM, partial tiles, K tail
    }
    test_linear(FMT_Q8, 3, 20, 96, ACT_NONE, true, 0, 0);         // q8 vector path (K % 16 == 0)
    for (int fmt : {FMT_F32, FMT_F16, FMT_BF16, FMT_Q8, FMT_Q8_ROWWISE, FMT_Q4})
        for (int off = 0; off < 2; off++)
            for (int mean = 0; mean < 2; mean++) test_bag(fmt, off, mean);
    test_lora(false);
    test_lora(true);
    test_ssf();
    test_rows();
    test_tensor();
    std::printf("%s\n", failures ? "FAILED" : "all kernels agree with the references");
    return failures ? 1 : 0;
}
