// Checks of tensor.cu (included by harness.cpp after its helpers). The references index
// full-rank row-major tensors directly from shapes (coordinates → offsets), independently
// of the kernels' Strided walks; the kernels get unsimplified walks (unit axes included),
// so the walk decomposition is exercised at rank up to 8. Rows are strided with padding
// that must stay untouched, constants use a row stride of 0, and shapes have tails.
#pragma once

static std::vector<int> row_strides(const std::vector<int>& shape) {
    std::vector<int> s(shape.size(), 1);
    for (int i = (int)shape.size() - 2; i >= 0; i--) s[i] = s[i + 1] * shape[i + 1];
    return s;
}
static int numel(const std::vector<int>& shape) {
    int n = 1;
    for (int d : shape) n *= d;
    return n;
}
// Coordinates of flat index e in `shape`.
static std::vector<int> coords(int e, const std::vector<int>& shape) {
    std::vector<int> c(shape.size());
    for (int i = (int)shape.size() - 1; i >= 0; i--) { c[i] = e % shape[i]; e /= shape[i]; }
    return c;
}
static Strided walk(const std::vector<int>& dims, const std::vector<std::vector<int>>& sets) {
    Strided s{};
    s.rank = (int)dims.size();
    for (size_t i = 0; i < dims.size(); i++) {
        s.dims[i] = dims[i];
        for (size_t k = 0; k < sets.size(); k++) s.st[k][i] = sets[k][i];
    }
    return s;
}
// Like check(), but NaN matches NaN (min / max / pow / log of negatives).
static void check_nan(const std::string& what, const std::vector<float>& got, const std::vector<float>& want, float tol) {
    for (size_t i = 0; i < got.size(); i++) {
        float g = got[i], w = want[i];
        bool ok = (std::isnan(g) && std::isnan(w)) || g == w || std::fabs(g - w) <= tol * (1 + std::fabs(w));
        if (!ok) {
            std::printf("FAIL %s [%zu]: got %g, expected %g\n", what.c_str(), i, g, w);
            failures++;
            return;
        }
    }
    std::printf("ok   %s (%zu values)\n", what.c_str(), got.size());
}
static const unsigned T_BLOCK = 256;

// Transpose, slice with a step, tile, pad (fill + copy at an offset), an axis-concat part.
static void test_tensor_copies() {
    int rows = 3;
    std::vector<int> in = {3, 5, 7};
    int isz = numel(in), ldx = isz + 4;
    std::vector<float> x((size_t)rows * ldx);
    for (auto& v : x) v = uni();
    auto run_copy = [&](const char* what, const std::vector<int>& out, const Strided& s, int xbase, int ybase,
                        bool fill, float fv, const std::function<float(int, const std::vector<int>&)>& ref) {
        int osz = numel(out), ldy = osz + 3;
        std::vector<float> y((size_t)rows * ldy, 9.0f), want((size_t)rows * ldy, 9.0f);
        for (int r = 0; r < rows; r++)
            for (int e = 0; e < osz; e++) want[(size_t)r * ldy + e] = ref(r, coords(e, out));
        if (fill) {
            unsigned bits;
            std::memcpy(&bits, &fv, 4);
            emu_launch({2, (unsigned)rows, 1}, {T_BLOCK, 1, 1}, [&] { fill_u32((u32*)y.data(), ldy, rows, osz, bits); });
        }
        int total = 1;
        for (int i = 0; i < s.rank; i++) total *= s.dims[i];
        emu_launch({2, 2, 1}, {T_BLOCK, 1, 1}, [&] {
            strided_copy_u32((const u32*)x.data(), ldx, xbase, (u32*)y.data(), ldy, ybase, rows, total, s);
        });
        check(what, y, want, 0);
    };
    auto ist = row_strides(in);
    auto at = [&](int r, int a, int b, int c) { return x[(size_t)r * ldx + a * ist[0] + b * ist[1] + c * ist[2]]; };
    // Transpose perm (2, 0, 1): out[i, j, k] = in[j, k, i].
    {
        std::vector<int> out = {7, 3, 5};
        auto ost = row_strides(out);
        Strided s = walk({7, 1, 3, 5}, {{ost[0], 0, ost[1], ost[2]}, {ist[2], 0, ist[0], ist[1]}});
        run_copy("tensor transpose", out, s, 0, 0, false, 0,
                 [&](int r, const std::vector<int>& c) { return at(r, c[1], c[2], c[0]); });
    }
    // Slice axis 2, start 1, step 3 (7 -> 2 values): out[a, b, j] = in[a, b, 1 + 3 j].
    {
        std::vector<int> out = {3, 5, 2};
        auto ost = row_strides(out);
        Strided s = walk(out, {ost, {ist[0], ist[1], 3 * ist[2]}});
        run_copy("tensor slice (step 3)", out, s, 1 * ist[2], 0, false, 0,
                 [&](int r, const std::vector<int>& c) { return at(r, c[0], c[1], 1 + 3 * c[2]); });
    }
    // Tile by (2, 1, 3): six axes (repeat, extent) like the CPU planner's.
    {
        std::vector<int> out = {6, 5, 21};
        auto ost = row_strides(out);
        std::vector<int> dims, dst, src;
        int reps[3] = {2, 1, 3};
        for (int i = 0; i < 3; i++) {
            dims.push_back(reps[i]);
            dims.push_back(in[i]);
            dst.push_back(in[i] * ost[i]);
            dst.push_back(ost[i]);
            src.push_back(0);
            src.push_back(ist[i]);
        }
        run_copy("tensor tile (rank 6 walk)", out, walk(dims, {dst, src}), 0, 0, false, 0,
                 [&](int r, const std::vector<int>& c) { return at(r, c[0] % 3, c[1] % 5, c[2] % 7); });
    }
    // Pad (1, 0) on axis 0, (2, 1) on axis 2 with -1.5.
    {
        std::vector<int> out = {4, 5, 10};
        auto ost = row_strides(out);
        int base = 1 * ost[0] + 2 * ost[2];
        run_copy("tensor pad (fill + copy)", out, walk(in, {ost, ist}), 0, base, true, -1.5f,
                 [&](int r, const std::vector<int>& c) {
                     bool inside = c[0] >= 1 && c[2] >= 2 && c[2] < 9;
                     return inside ? at(r, c[0] - 1, c[1], c[2] - 2) : -1.5f;
                 });
    }
}

// Every binary op with broadcasting on both sides: a [3, 1, 7] and b [4, 1] (a constant:
// row stride 0) into [3, 4, 7].
static float ref_binary(int op, float a, float b) {
    switch (op) {
        case TB_ADD: return a + b;
        case TB_SUB: return a - b;
        case TB_MUL: return a * b;
        case TB_DIV: return a / b;
        case TB_POW: return std::pow(a, b);
        case TB_MIN: return (std::isnan(a) || std::isnan(b)) ? NAN : std::min(a, b);
        case TB_MAX: return (std::isnan(a) || std::isnan(b)) ? NAN : std::max(a, b);
        case TB_EQ: return a == b;
        case TB_LT: return a < b;
        case TB_LE: return a <= b;
        case TB_GT: return a > b;
        case TB_GE: return a >= b;
        case TB_AND: return a != 0 && b != 0;
        case TB_OR: return a != 0 || b != 0;
        case TB_XOR: return (a != 0) != (b != 0);
        default: return a >= 0 ? a : a * b;
    }
}
static void test_tensor_binary() {
    int rows = 4;
    std::vector<int> out = {3, 4, 7};
    int osz = numel(out), lda = 3 * 7 + 2, ldy = osz + 5;
    std::vector<float> a((size_t)rows * lda), b(4);
    for (auto& v : a) v = irand(0, 5) == 0 ? 0.0f : (irand(0, 5) == 0 ? 0.5f : uni(-2, 2));
    for (auto& v : b) v = irand(0, 3) == 0 ? 0.5f : uni(-2, 2);
    b[1] = 0.0f;
    a[5] = NAN;
    auto ost = row_strides(out);
    // Broadcast strides: a [3, 1, 7] -> (7, 0, 1); b [4, 1] -> (0, 1, 0).
    Strided s = walk({3, 4, 1, 7}, {{ost[0], ost[1], 0, ost[2]}, {7, 0, 0, 1}, {0, 1, 0, 0}});
    for (int op = TB_ADD; op <= TB_PRELU; op++) {
        std::vector<float> y((size_t)rows * ldy, 3.0f), want((size_t)rows * ldy, 3.0f);
        for (int r = 0; r < rows; r++)
            for (int e = 0; e < osz; e++) {
                auto c = coords(e, out);
                want[(size_t)r * ldy + e] = ref_binary(op, a[(size_t)r * lda + c[0] * 7 + c[2]], b[c[1]]);
            }
        emu_launch({1, 3, 1}, {T_BLOCK, 1, 1}, [&] {
            binary_strided_f32(a.data(), lda, b.data(), 0, y.data(), ldy, rows, osz, s, op);
        });
        check_nan("tensor binary op " + std::to_string(op) + " (broadcast, const b)", y, want, 1e-6f);
    }
}

static float ref_unary(int op, float x, float p0, float p1) {
    switch (op) {
        case TU_NEG: return -x;
        case TU_ABS: return std::fabs(x);
        case TU_EXP: return std::exp(x);
        case TU_LOG: return std::log(x);
        case TU_SQRT: return std::sqrt(x);
        case TU_RSQRT: return 1 / std::sqrt(x);
        case TU_RECIPROCAL: return 1 / x;
        case TU_ERF: return std::erf(x);
        case TU_FLOOR: return std::floor(x);
        case TU_CEIL: return std::ceil(x);
        case TU_ROUND: return std::nearbyint(x);
        case TU_SIGN: return x > 0 ? 1 : (x < 0 ? -1 : x);
        case TU_NOT: return x == 0 ? 1 : 0;
        case TU_SOFTPLUS: return (float)std::log1p(std::exp((double)x));
        case TU_SIN: return std::sin(x);
        case TU_COS: return std::cos(x);
        case TU_LEAKY_RELU: return x >= 0 ? x : p0 * x;
        case TU_CLIP: return std::isnan(x) ? x : std::min(std::max(x, p0), p1);
        case TU_HARD_SIGMOID: return std::clamp(p0 * x + p1, 0.0f, 1.0f);
        case TU_ELU: return x >= 0 ? x : p0 * (std::exp(x) - 1);
        case TU_POW_CONST: return std::pow(x, p0);
        default: return ref_act(op - TU_ACT, x);
    }
}
// i64 ops: a [3, 1, 5] and b [4, 1] (constant) into [3, 4, 5]; wrapping at the extremes.
static void test_tensor_binary_i64() {
    int rows = 2, osz = 60, lda = 15 + 1, ldy = osz + 3;
    std::vector<long long> a((size_t)rows * lda), b(4);
    for (auto& v : a) v = irand(-4, 4);
    for (auto& v : b) v = irand(-4, 4);
    a[2] = INT64_MAX;
    b[0] = INT64_MAX;
    b[3] = INT64_MIN;
    Strided s = walk({3, 4, 5}, {{20, 5, 1}, {5, 0, 1}, {0, 1, 0}});
    for (int op : {TB_ADD, TB_SUB, TB_MUL, TB_MIN, TB_MAX, TB_EQ, TB_LT, TB_LE, TB_GT, TB_GE}) {
        bool mask = op >= TB_EQ;
        std::vector<long long> yi((size_t)rows * ldy, 5), wi((size_t)rows * ldy, 5);
        std::vector<float> yf((size_t)rows * ldy, 5.0f), wf((size_t)rows * ldy, 5.0f);
        for (int r = 0; r < rows; r++)
            for (int e = 0; e < osz; e++) {
                auto c = coords(e, {3, 4, 5});
                long long u = a[(size_t)r * lda + c[0] * 5 + c[2]], v = b[c[1]];
                unsigned long long uu = (unsigned long long)u, vv = (unsigned long long)v;
                size_t o = (size_t)r * ldy + e;
                switch (op) {
                    case TB_ADD: wi[o] = (long long)(uu + vv); break;
                    case TB_SUB: wi[o] = (long long)(uu - vv); break;
                    case TB_MUL: wi[o] = (long long)(uu * vv); break;
                    case TB_MIN: wi[o] = std::min(u, v); break;
                    case TB_MAX: wi[o] = std::max(u, v); break;
                    case TB_EQ: wf[o] = u == v; break;
                    case TB_LT: wf[o] = u < v; break;
                    case TB_LE: wf[o] = u <= v; break;
                    case TB_GT: wf[o] = u > v; break;
                    default: wf[o] = u >= v; break;
                }
            }
        u8* yp = mask ? (u8*)yf.data() : (u8*)yi.data();
        emu_launch({1, 2, 1}, {T_BLOCK, 1, 1}, [&] { binary_strided_i64(a.data(), lda, b.data(), 0, yp, ldy, rows, osz, s, op); });
        std::string what = "tensor i64 binary op " + std::to_string(op);
        if (mask) {
            check(what, yf, wf, 0);
        } else if (yi != wi) {
            std::printf("FAIL %s\n", what.c_str());
            failures++;
        } else {
            std::printf("ok   %s (%zu values)\n", what.c_str(), yi.size());
        }
    }
}

// Select: c [3, 1] (a mask), a [4] (a constant), b [3, 4] into [3, 4]; f32 and i64.
static void test_tensor_where() {
    int rows = 3, ldc = 3 + 1, ldb = 12 + 2, ldy = 12 + 3;
    std::vector<float> c((size_t)rows * ldc);
    for (auto& v : c) v = irand(0, 1) ? 1.0f : 0.0f;
    Strided s = walk({3, 4}, {{4, 1}, {1, 0}, {0, 1}, {4, 1}});
    for (int wide = 0; wide < 2; wide++) {
        int w = wide ? 2 : 1;
        std::vector<u32> a(4 * w), b((size_t)rows * ldb * w), y((size_t)rows * ldy * w, 9), want((size_t)rows * ldy * w, 9);
        for (auto& v : a) v = (u32)irand(0, 1 << 30);
        for (auto& v : b) v = (u32)irand(0, 1 << 30);
        for (int r = 0; r < rows; r++)
            for (int i = 0; i < 3; i++)
                for (int j = 0; j < 4; j++)
                    for (int k = 0; k < w; k++)
                        want[((size_t)r * ldy + i * 4 + j) * w + k] =
                            c[(size_t)r * ldc + i] != 0 ? a[j * w + k] : b[((size_t)r * ldb + i * 4 + j) * w + k];
        emu_launch({1, 2, 1}, {T_BLOCK, 1, 1}, [&] {
            where_u32(c.data(), ldc, a.data(), 0, b.data(), ldb * w, y.data(), ldy * w, rows, 12, s, wide);
        });
        std::string what = wide ? "tensor where (i64)" : "tensor where (f32)";
        if (y != want) {
            std::printf("FAIL %s\n", what.c_str());
            failures++;
        } else {
            std::printf("ok   %s (%zu values)\n", what.c_str(), y.size());
        }
    }
}

static void test_tensor_unary() {
    int rows = 3, n = 301, ldx = n + 2, ldy = n + 7;
    std::vector<float> x((size_t)rows * ldx);
    for (auto& v : x) v = irand(0, 9) == 0 ? 2.5f : uni(-4, 4);
    x[3] = 0.0f;
    x[4] = -0.0f;
    x[6] = 30.0f;  // softplus' large branch
    std::vector<int> ops;
    for (int op = TU_NEG; op <= TU_POW_CONST; op++) ops.push_back(op);
    for (int act : {ACT_RELU, ACT_GELU, ACT_SIGMOID, ACT_TANH}) ops.push_back(TU_ACT + act);
    for (int op : ops) {
        float p0 = op == TU_CLIP ? -0.5f : (op == TU_POW_CONST ? 2.0f : 0.2f), p1 = op == TU_CLIP ? 1.5f : 0.5f;
        std::vector<float> y((size_t)rows * ldy, 8.0f), want((size_t)rows * ldy, 8.0f);
        for (int r = 0; r < rows; r++)
            for (int e = 0; e < n; e++) want[(size_t)r * ldy + e] = ref_unary(op, x[(size_t)r * ldx + e], p0, p1);
        emu_launch({1, 2, 1}, {T_BLOCK, 1, 1}, [&] { unary_f32(x.data(), ldx, y.data(), ldy, rows, n, op, p0, p1); });
        check_nan("tensor unary op " + std::to_string(op), y, want, 2e-6f);
    }
}

// Reductions over axis 1 and over axes (0, 2) of [5, 37, 3] (lanes with non-unit strides
// and a tail), every op.
static float ref_reduce(int op, const std::vector<float>& v) {
    double s = 0, p = 1, mx = -INFINITY, mn = INFINITY;
    bool nan = false;
    for (float f : v) {
        nan |= std::isnan(f);
        if (op == TR_SUM || op == TR_MEAN) s += f;
        if (op == TR_L2 || op == TR_SUM_SQUARE || op == TR_MEAN_SQUARE) s += (double)f * f;
        if (op == TR_L1) s += std::fabs(f);
        p *= f;
        mx = std::max(mx, (double)f);
        mn = std::min(mn, (double)f);
    }
    switch (op) {
        case TR_MEAN:
        case TR_MEAN_SQUARE: return (float)(s / v.size());
        case TR_MAX: return nan ? NAN : (float)mx;
        case TR_MIN: return nan ? NAN : (float)mn;
        case TR_PROD: return (float)p;
        case TR_L2: return (float)std::sqrt(s);
        case TR_LOG_SUM_EXP: {
            double e = 0;
            for (float f : v) e += std::exp((double)f - mx);
            return (float)(mx + std::log(e));
        }
        default: return (float)s;
    }
}
static void test_tensor_reduce() {
    int rows = 3;
    std::vector<int> in = {5, 37, 3};
    auto ist = row_strides(in);
    int isz = numel(in), ldx = isz + 1;
    std::vector<float> x((size_t)rows * ldx);
    for (auto& v : x) v = uni(0.5f, 1.5f) * (irand(0, 1) ? 1 : -1);
    for (int axes = 0; axes < 2; axes++) {
        // axes 0: reduce axis 1 (out [5, 3]); axes 1: reduce 0 and 2 (out [37]).
        std::vector<int> kd = axes == 0 ? std::vector<int>{5, 3} : std::vector<int>{37};
        std::vector<int> ks = axes == 0 ? std::vector<int>{ist[0], ist[2]} : std::vector<int>{ist[1]};
        std::vector<int> rd = axes == 0 ? std::vector<int>{37} : std::vector<int>{5, 3};
        std::vector<int> rs = axes == 0 ? std::vector<int>{ist[1]} : std::vector<int>{ist[0], ist[2]};
        int nout = numel(kd), len = numel(rd), ldy = nout + 2;
        Strided outer = walk(kd, {ks}), inner = walk(rd, {rs});
        for (int op = TR_SUM; op <= TR_LOG_SUM_EXP; op++) {
            std::vector<float> y((size_t)rows * ldy, 4.0f), want((size_t)rows * ldy, 4.0f);
            for (int r = 0; r < rows; r++)
                for (int j = 0; j < nout; j++) {
                    auto kc = coords(j, kd);
                    std::vector<float> lane;
                    for (int i = 0; i < len; i++) {
                        auto rc = coords(i, rd);
                        int off = 0;
                        for (size_t a = 0; a < kc.size(); a++) off += kc[a] * ks[a];
                        for (size_t a = 0; a < rc.size(); a++) off += rc[a] * rs[a];
                        lane.push_back(x[(size_t)r * ldx + off]);
                    }
                    want[(size_t)r * ldy + j] = ref_reduce(op, lane);
                }
            emu_launch({1, 2, 1}, {T_BLOCK, 1, 1}, [&] {
                reduce_f32(x.data(), ldx, y.data(), ldy, rows, nout, len, outer, inner, op);
            });
            check_nan("tensor reduce op " + std::to_string(op) + (axes ? " axes (0, 2)" : " axis 1"), y, want, 2e-5f);
        }
    }
}

// Softmax and log-softmax along axis 1 (stride 3) and axis 2 (contiguous) of [4, 45, 3].
static void test_tensor_softmax() {
    int rows = 2;
    std::vector<int> in = {4, 45, 3};
    auto ist = row_strides(in);
    int isz = numel(in), ldx = isz + 3, ldy = isz + 1;
    std::vector<float> x((size_t)rows * ldx);
    for (auto& v : x) v = uni(-6, 6);
    for (int axis : {1, 2})
        for (int log = 0; log < 2; log++) {
            std::vector<int> d = in, st = ist;
            d[axis] = 1;
            st[axis] = 0;
            int n = in[axis], stride = ist[axis], lanes = numel(d);
            std::vector<float> y((size_t)rows * ldy, 6.0f), want((size_t)rows * ldy, 6.0f);
            for (int r = 0; r < rows; r++)
                for (int j = 0; j < lanes; j++) {
                    auto c = coords(j, d);
                    int base = c[0] * ist[0] + c[1] * ist[1] + c[2] * ist[2];
                    double mx = -INFINITY, s = 0;
                    for (int i = 0; i < n; i++) mx = std::max(mx, (double)x[(size_t)r * ldx + base + i * stride]);
                    for (int i = 0; i < n; i++) s += std::exp(x[(size_t)r * ldx + base + i * stride] - mx);
                    for (int i = 0; i < n; i++) {
                        double v = x[(size_t)r * ldx + base + i * stride];
                        want[(size_t)r * ldy + base + i * stride] = (float)(log ? v - mx - std::log(s) : std::exp(v - mx) / s);
                    }
                }
            emu_launch({1, 2, 1}, {T_BLOCK, 1, 1}, [&] {
                softmax_f32(x.data(), ldx, y.data(), ldy, rows, lanes, n, stride, walk(d, {st}), log);
            });
            check(std::string(log ? "tensor log_softmax" : "tensor softmax") + " axis " + std::to_string(axis), y, want, 1e-5f);
        }
}

// Embedding lookup, every format: 2 rows × 5 ids, strided ids and output; then one bad id
// (row 1, slot 3) and one negative: outputs zeroed, the smallest bad position reported.
static void test_tensor_lookup(int fmt) {
    int vocab = 29, cols = 37, rows = 3, nids = 5, ldids = nids + 2, ldy = nids * cols + 4;
    Weight t = make_weight(fmt, vocab, cols);
    std::vector<long long> ids((size_t)rows * ldids, 999);
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < nids; j++) ids[(size_t)r * ldids + j] = irand(0, vocab - 1);
    const float* sp = fmt == FMT_Q8 ? t.scales.data() : nullptr;
    auto f = fmt == FMT_Q8_ROWWISE ? lookup_q8_rowwise
             : fmt == FMT_Q8       ? lookup_q8
             : fmt == FMT_Q4       ? lookup_q4
             : fmt == FMT_F16      ? lookup_f16
             : fmt == FMT_BF16     ? lookup_bf16
                                   : lookup_f32;
    for (int bad = 0; bad < 2; bad++) {
        if (bad) {
            ids[(size_t)2 * ldids + 0] = -1;
            ids[(size_t)1 * ldids + 3] = vocab;
        }
        std::vector<float> y((size_t)rows * ldy, 2.0f), want((size_t)rows * ldy, 2.0f);
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < nids; j++) {
                long long id = ids[(size_t)r * ldids + j];
                for (int c = 0; c < cols; c++)
                    want[(size_t)r * ldy + j * cols + c] = (id >= 0 && id < vocab) ? t.at((int)id, c) : 0.0f;
            }
        unsigned long long err = ~0ull;
        emu_launch({1, 2, 1}, {T_BLOCK, 1, 1}, [&] {
            f(t.bytes.data(), sp, vocab, cols, ids.data(), ldids, nids, y.data(), ldy, rows, &err);
        });
        std::string what = "tensor lookup fmt " + std::to_string(fmt) + (bad ? " (bad ids)" : "");
        unsigned long long want_err = bad ? 1ull * nids + 3 : ~0ull;
        if (err != want_err) {
            std::printf("FAIL %s: error word %llu, expected %llu\n", what.c_str(), err, want_err);
            failures++;
        }
        check(what, y, want, 0);
    }
}

// Batched matmul with broadcast leading dims: a [2, 1, 17, 19], b [1, 3, 19, 21] (a
// constant) -> [2, 3, 17, 21]; partial tiles in m, k and n; exact (same order as the CPU).
static void test_tensor_matmul() {
    int rows = 2, m = 17, k = 19, n = 21;
    int asz = 2 * m * k, bsz = 3 * k * n, osz = 6 * m * n, lda = asz + 3, ldy = osz + 2;
    std::vector<float> a((size_t)rows * lda), b(bsz), y((size_t)rows * ldy, 1.0f), want((size_t)rows * ldy, 1.0f);
    for (auto& v : a) v = uni();
    for (auto& v : b) v = uni();
    for (int r = 0; r < rows; r++)
        for (int i0 = 0; i0 < 2; i0++)
            for (int i1 = 0; i1 < 3; i1++)
                for (int i = 0; i < m; i++)
                    for (int j = 0; j < n; j++) {
                        float acc = 0;
                        for (int p = 0; p < k; p++)
                            acc += a[(size_t)r * lda + i0 * m * k + i * k + p] * b[i1 * k * n + p * n + j];
                        want[(size_t)r * ldy + (i0 * 3 + i1) * m * n + i * n + j] = acc;
                    }
    Strided lead = walk({2, 3}, {{3 * m * n, m * n}, {m * k, 0}, {0, k * n}});
    emu_launch({2, 5, 1}, {T_BLOCK, 1, 1}, [&] {
        matmul_f32(a.data(), lda, b.data(), 0, y.data(), ldy, rows, 6, lead, m, k, n);
    });
    check("tensor matmul (broadcast lead dims, const b)", y, want, 0);
}

// Gather along axis 1 of [2, 5, 3] by 4 per-row indices (negative ones included), f32
// words; then a bad index (row 1, slot 2): zeroed outputs and the smallest bad position.
static void test_tensor_gather() {
    int rows = 3, pre = 2, d = 5, post = 3, n = 4, ldx = pre * d * post + 1, ldidx = n + 1, ldy = pre * n * post + 2;
    std::vector<float> x((size_t)rows * ldx);
    for (auto& v : x) v = uni();
    std::vector<long long> idx((size_t)rows * ldidx, 77);
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < n; j++) idx[(size_t)r * ldidx + j] = irand(-d, d - 1);
    for (int bad = 0; bad < 2; bad++) {
        if (bad) {
            idx[(size_t)2 * ldidx + 0] = d;
            idx[(size_t)1 * ldidx + 2] = -d - 1;
        }
        std::vector<float> y((size_t)rows * ldy, 4.0f), want((size_t)rows * ldy, 4.0f);
        for (int r = 0; r < rows; r++)
            for (int p = 0; p < pre; p++)
                for (int j = 0; j < n; j++) {
                    long long i = idx[(size_t)r * ldidx + j];
                    bool ok = i >= -d && i < d;
                    if (i < 0) i += d;
                    for (int q = 0; q < post; q++)
                        want[(size_t)r * ldy + (p * n + j) * post + q] = ok ? x[(size_t)r * ldx + (p * d + i) * post + q] : 0.0f;
                }
        unsigned long long err = ~0ull;
        emu_launch({1, 2, 1}, {T_BLOCK, 1, 1}, [&] {
            gather_u32((const u32*)x.data(), ldx, idx.data(), ldidx, (u32*)y.data(), ldy, rows, pre, d, post, n, &err);
        });
        std::string what = std::string("tensor gather") + (bad ? " (bad indices)" : "");
        unsigned long long want_err = bad ? 1ull * n + 2 : ~0ull;
        if (err != want_err) {
            std::printf("FAIL %s: error word %llu, expected %llu\n", what.c_str(), err, want_err);
            failures++;
        }
        check(what, y, want, 0);
    }
}

// Computed bag ids: strided rows copied densely, bad ids zeroed and reported.
static void test_tensor_sanitize() {
    int rows = 3, slots = 37, ldids = slots + 3, trows = 11;
    std::vector<long long> ids((size_t)rows * ldids, 99), out((size_t)rows * slots, -5), want((size_t)rows * slots);
    for (int r = 0; r < rows; r++)
        for (int s = 0; s < slots; s++) ids[(size_t)r * ldids + s] = irand(0, trows - 1);
    ids[(size_t)2 * ldids + 1] = trows;
    ids[(size_t)1 * ldids + 30] = -1;
    for (int r = 0; r < rows; r++)
        for (int s = 0; s < slots; s++) {
            long long id = ids[(size_t)r * ldids + s];
            want[(size_t)r * slots + s] = id < 0 || id >= trows ? 0 : id;
        }
    unsigned long long err = ~0ull;
    emu_launch({1, 2, 1}, {T_BLOCK, 1, 1}, [&] { sanitize_ids_i64(ids.data(), ldids, slots, rows, trows, out.data(), &err); });
    if (out != want || err != 1ull * slots + 30) {
        std::printf("FAIL tensor sanitize ids (error word %llu)\n", err);
        failures++;
    } else {
        std::printf("ok   tensor sanitize ids (%zu values)\n", out.size());
    }
}

static void test_tensor() {
    test_tensor_sanitize();
    test_tensor_gather();
    test_tensor_copies();
    test_tensor_binary();
    test_tensor_binary_i64();
    test_tensor_where();
    test_tensor_unary();
    test_tensor_reduce();
    test_tensor_softmax();
    for (int fmt : {FMT_F32, FMT_F16, FMT_BF16, FMT_Q8, FMT_Q8_ROWWISE, FMT_Q4}) test_tensor_lookup(fmt);
    test_tensor_matmul();
}
