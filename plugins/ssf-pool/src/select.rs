//! FedIns entry selection: cosine similarity of a row's query with every pool key, then
//! the `k` best entries. Pure functions over slices, so the hook stays allocation-free and
//! the rules are unit-tested on their own.
//!
//! Numerics follow torch `F.normalize` then a dot product (the fixture's reference): both
//! vectors are normalized to f32 first, `v / max(‖v‖₂, eps)`, then dotted. The *reference*
//! similarity accumulates norms and dots in f64 and rounds to f32 once ([`dot`]). That is
//! at least as accurate as torch's f32 path and, unlike the host's SIMD kernels, gives the
//! same bits on every instruction set. Exact ties (the zero query, keys whose normalized
//! entries are powers of two) stay exact, and the selection breaks them by the lower index.
//!
//! The hook does not pay for f64 on every row: f32 SIMD similarities with an exact f64
//! fallback for rows whose ranking is within the f32 error bound. The host's f32 GEMM
//! gives every similarity of a call at once; [`certified_top_k`] accepts a row's ranking
//! only when every adjacent gap among its best `k + 1` similarities exceeds twice
//! [`similarity_error_bound`], a rigorous bound on how far a GEMM similarity can lie from
//! the reference one whatever the kernel's summation order, FMA use or flush-to-zero
//! mode. Such a ranking (entries *and* order) is then the reference's ranking; any other
//! row (near ties, exact ties, NaN) is recomputed with the reference. The selection is
//! therefore identical on every machine and identical to the f64 reference.

/// Lanes of the f64 accumulations: independent partial sums in a fixed order, so the
/// result is the same on every machine while the compiler may still vectorize the lanes.
const LANES: usize = 8;

/// `Σ a_i b_i` in f64 over [`LANES`] fixed partial sums, combined in a fixed order.
fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    let mut acc = [0.0f64; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += f64::from(x[l]) * f64::from(y[l]);
        }
    }
    for (l, (&x, &y)) in ta.iter().zip(tb).enumerate() {
        acc[l] += f64::from(x) * f64::from(y);
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// Writes `v / max(‖v‖₂, eps)` into `out` (`out.len() == v.len()`).
///
/// A query with NaN or an infinity normalizes to a vector with NaN entries, whose
/// similarities are then all NaN.
pub(crate) fn normalize_into(v: &[f32], eps: f64, out: &mut [f32]) {
    let norm = dot_f64(v, v).sqrt();
    // `f64::max` would drop a NaN norm in favour of eps; keep it so the row stays NaN.
    let denom = if norm.is_nan() { norm } else { norm.max(eps) };
    // One division per row: multiplying by the f64 reciprocal differs from dividing by at
    // most an f64 ulp before the rounding to f32, far below what the f32 result keeps.
    let scale = 1.0 / denom;
    for (o, &x) in out.iter_mut().zip(v) {
        *o = (f64::from(x) * scale) as f32;
    }
}

/// `a · b`, accumulated in f64, rounded to f32.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_f64(a, b) as f32
}

/// f32 unit roundoff, 2⁻²⁴.
const U32: f64 = 1.0 / (1u64 << 24) as f64;

/// f64 unit roundoff, 2⁻⁵³.
const U64: f64 = 1.0 / (1u64 << 53) as f64;

/// The smallest normal f32, 2⁻¹²⁶: what one product or partial sum can lose to underflow
/// or to a kernel running with flush-to-zero / denormals-are-zero.
const F32_MIN_NORMAL: f64 = f32::MIN_POSITIVE as f64;

/// An upper bound on `‖v̂‖₂` for any `v̂` written by [`normalize_into`] with fewer than
/// 2²³ entries. The divisor is at least the computed norm `n̂ ≥ ‖v‖·√(1 − γ₆₄(len))·(1 − 2⁻⁵³)`
/// (a sum of squares in f64 cannot underflow or overflow for f32 inputs), and each
/// quotient is rounded to f64 then to f32, so `‖v̂‖ ≤ (1 + 2⁻²⁴)(1 + 2⁻⁵²)/√(1 − γ₆₄(len))`,
/// below `1 + 2⁻²⁴ + 2⁻²⁹`. Quotients that round into the f32 subnormal range move by at
/// most 2⁻¹⁵⁰ each, which the absolute terms of [`similarity_error_bound`] cover.
const NORMALIZED_NORM_BOUND: f64 = 1.0 + 1e-6;

/// `γ_n = n·u / (1 − n·u)`, the classic bound on the relative error of an `n`-term
/// floating-point sum of products (any order, with or without FMA); infinite once
/// `n·u ≥ 1/2`, where it stops being useful.
fn gamma(n: usize, u: f64) -> f64 {
    let nu = n as f64 * u;
    if nu >= 0.5 { f64::INFINITY } else { nu / (1.0 - nu) }
}

/// A bound on `|g − t|` for one row and key of width `d`, where `g` is the host's f32
/// GEMM similarity of the normalized vectors and `t` the reference [`dot`] of the same
/// vectors. Both lie near the exact real dot `s`:
///
/// - `|g − s| ≤ γ₃₂(d + 1)·Σ|q̂ᵢk̂ᵢ| + 3d·2⁻¹²⁶`: `d` products summed in any order onto the
///   zeroed output (`+ 1`), plus what underflow, flush-to-zero or denormals-are-zero can
///   drop per product and per partial sum (`α = 1` is exact);
/// - `|t − s| ≤ γ₆₄(d)·Σ|q̂ᵢk̂ᵢ| + 2⁻²⁴|fl₆₄(s)| + 2⁻¹⁵⁰`: the f64 dot, then the rounding
///   to f32 (which can turn two distinct values into a tie);
///
/// with `Σ|q̂ᵢk̂ᵢ| ≤ ‖q̂‖‖k̂‖ ≤ NORMALIZED_NORM_BOUND²`. The sum is padded by 2⁻¹⁰ of itself
/// so that the f64 arithmetic of the bound and of the gap tests cannot eat the margin.
/// Infinite from widths of about 2²³ on (`γ₃₂` stops being meaningful): every row then
/// takes the fallback.
pub(crate) fn similarity_error_bound(d: usize) -> f64 {
    let n2 = NORMALIZED_NORM_BOUND * NORMALIZED_NORM_BOUND;
    let gemm = gamma(d.saturating_add(1), U32) * n2 + 3.0 * d as f64 * F32_MIN_NORMAL;
    let reference = gamma(d, U64) * n2 + U32 * n2 * (1.0 + gamma(d, U64)) + F32_MIN_NORMAL;
    (gemm + reference) * (1.0 + 1.0 / 1024.0)
}

/// Ranks one row's f32 GEMM similarities into `rank` (`min(k + 1, P)` slots, indices as
/// f32, best first) and returns whether that ranking provably equals the reference's:
/// no similarity is NaN and every adjacent gap among the `rank.len()` best exceeds
/// `2·bound` (`bound` from [`similarity_error_bound`]). Then, the reference similarities
/// being within `bound` of these, `rank[..k]` is exactly the reference's top-k (entries
/// and order): each ranked entry outranks the next strictly, and every entry outside
/// `rank` is at most the last ranked one. With `k == P`, `rank` holds every entry and
/// only their order is checked.
pub(crate) fn certified_top_k(sims: &[f32], bound: f64, rank: &mut [f32]) -> bool {
    if rank.is_empty() || rank.len() > sims.len() || sims.iter().any(|s| s.is_nan()) {
        return false;
    }
    top_k(sims, rank);
    let min_gap = 2.0 * bound;
    rank.windows(2).all(|w| {
        let (a, b) = (sims[w[0] as usize], sims[w[1] as usize]);
        f64::from(a) - f64::from(b) > min_gap
    })
}

/// Whether similarity `a` ranks strictly above `b`: larger first, NaN below every number.
fn outranks(a: f32, b: f32) -> bool {
    !a.is_nan() && (b.is_nan() || a > b)
}

/// Writes the indices of the `out.len()` highest-ranked entries of `sims` into `out`, best
/// first, as f32 (exact below 2²⁴). Equal similarities (including `0.0` and `-0.0`, and
/// NaN with NaN) keep the lower index first, so the result is deterministic. Needs
/// `out.len() <= sims.len()`; extra slots are left as they are.
pub(crate) fn top_k(sims: &[f32], out: &mut [f32]) {
    let k = out.len().min(sims.len());
    if k == 0 {
        return;
    }
    let mut filled = 0;
    for (p, &s) in sims.iter().enumerate() {
        // Entries arrive in index order, so stopping at an equal similarity puts the
        // newcomer after the lower indices it ties with.
        let mut pos = filled;
        while pos > 0 && outranks(s, sims[out[pos - 1] as usize]) {
            pos -= 1;
        }
        if pos >= k {
            continue;
        }
        let end = filled.min(k - 1);
        out.copy_within(pos..end, pos + 1);
        out[pos] = p as f32;
        filled = (filled + 1).min(k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference: a full sort on (rank, index).
    fn reference(sims: &[f32], k: usize) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..sims.len()).collect();
        idx.sort_by(|&a, &b| {
            let (x, y) = (sims[a], sims[b]);
            let ord = match (x.is_nan(), y.is_nan()) {
                (true, true) => core::cmp::Ordering::Equal,
                (true, false) => core::cmp::Ordering::Greater,
                (false, true) => core::cmp::Ordering::Less,
                // Equal for 0.0 vs -0.0, as `>` treats them.
                (false, false) => y.partial_cmp(&x).unwrap_or(core::cmp::Ordering::Equal),
            };
            ord.then(a.cmp(&b))
        });
        idx.truncate(k);
        idx
    }

    fn run(sims: &[f32], k: usize) -> Vec<usize> {
        let mut out = vec![-1.0f32; k];
        top_k(sims, &mut out);
        out.iter().map(|&v| v as usize).collect()
    }

    #[test]
    fn worked_example() {
        // algorithms.md §2.4: keys [[1,0],[0,1],[1,1],[-1,0.5]], q = [2,1].
        let keys = [[1.0f32, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.5]];
        let mut q = [0f32; 2];
        normalize_into(&[2.0, 1.0], 1e-12, &mut q);
        let sims: Vec<f32> = keys
            .iter()
            .map(|k| {
                let mut kh = [0f32; 2];
                normalize_into(k, 1e-12, &mut kh);
                dot(&q, &kh)
            })
            .collect();
        for (s, want) in sims.iter().zip([0.894427, 0.447214, 0.948683, -0.6]) {
            assert!((s - want).abs() < 1e-6, "{sims:?}");
        }
        assert_eq!(run(&sims, 2), [2, 0]);
    }

    #[test]
    fn ties_take_the_lower_index_and_nan_ranks_last() {
        assert_eq!(run(&[0.0; 6], 2), [0, 1]);
        assert_eq!(run(&[0.0, -0.0, 0.0], 3), [0, 1, 2]);
        assert_eq!(run(&[0.1, 0.25, 0.2, 0.1, 0.25], 2), [1, 4]);
        assert_eq!(run(&[0.1, 0.25, 0.2, 0.1, 0.25, 0.3], 2), [5, 1]);
        assert_eq!(run(&[f32::NAN, 0.5, f32::NAN, -1.0], 4), [1, 3, 0, 2]);
        assert_eq!(run(&[f32::NAN; 4], 2), [0, 1]);
        assert_eq!(run(&[f32::NEG_INFINITY, f32::NAN, -1.0], 3), [2, 0, 1]);
        assert_eq!(run(&[0.3, 0.2, 0.1], 3), [0, 1, 2]);
        assert_eq!(run(&[0.1, 0.2, 0.3], 1), [2]);
    }

    #[test]
    fn matches_a_full_sort() {
        // A fixed LCG: values from a small set so that ties are frequent, plus NaNs.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) as u32
        };
        for _ in 0..2000 {
            let p = 1 + (next() % 12) as usize;
            let k = 1 + (next() % p as u32) as usize;
            let sims: Vec<f32> = (0..p)
                .map(|_| match next() % 9 {
                    0 => f32::NAN,
                    1 => -0.0,
                    v => (v as f32 - 4.0) / 4.0,
                })
                .collect();
            assert_eq!(run(&sims, k), reference(&sims, k), "{sims:?} k={k}");
        }
    }

    #[test]
    fn normalize_edge_cases() {
        let mut out = [9f32; 3];
        normalize_into(&[0.0, 0.0, 0.0], 1e-12, &mut out);
        assert_eq!(out, [0.0; 3]);
        // Below eps the vector is divided by eps, as torch does.
        normalize_into(&[1e-13, 0.0, 0.0], 1e-12, &mut out);
        assert!((out[0] - 0.1).abs() < 1e-7);
        // Huge entries do not overflow the f64 norm.
        normalize_into(&[f32::MAX, f32::MAX, 0.0], 1e-12, &mut out);
        assert!((out[0] - core::f32::consts::FRAC_1_SQRT_2).abs() < 1e-7);
        normalize_into(&[f32::NAN, 1.0, 0.0], 1e-12, &mut out);
        assert!(out.iter().all(|v| v.is_nan()));
        normalize_into(&[f32::INFINITY, 1.0, 0.0], 1e-12, &mut out);
        assert!(out[0].is_nan());
        // Entries of ±2⁻⁵ (norm 2⁻⁴) and ±1 (norm 2) normalize to exactly ±0.5, so the
        // fixture's tie similarities are exact multiples of 0.25.
        let (mut key, mut row) = ([0f32; 5], [0f32; 5]);
        normalize_into(&[0.03125, -0.03125, 0.0, 0.03125, 0.03125], 1e-12, &mut key);
        normalize_into(&[1.0, 1.0, -1.0, 0.0, 1.0], 1e-12, &mut row);
        assert_eq!(key, [0.5, -0.5, 0.0, 0.5, 0.5]);
        assert_eq!(row, [0.5, 0.5, -0.5, 0.0, 0.5]);
        assert_eq!(dot(&key, &row), 0.25);
    }

    fn certify(sims: &[f32], bound: f64, k: usize) -> Option<Vec<usize>> {
        let mut rank = vec![-1.0f32; (k + 1).min(sims.len())];
        certified_top_k(sims, bound, &mut rank).then(|| rank[..k].iter().map(|&v| v as usize).collect())
    }

    #[test]
    fn certification_needs_clear_gaps_down_to_the_runner_up() {
        let b = 1e-3;
        // Clear: both gaps (1st–2nd, 2nd–runner-up) exceed 2·bound.
        assert_eq!(certify(&[0.9, 0.1, 0.5, -0.3], b, 2), Some(vec![0, 2]));
        assert_eq!(certify(&[0.5, 0.5 - 0.0021, 0.0], b, 1), Some(vec![0]));
        // A gap of at most 2·bound anywhere in the best k + 1 is refused.
        assert_eq!(certify(&[0.5, 0.5 - 0.0019, 0.0], b, 1), None);
        assert_eq!(certify(&[0.5, 0.5 + 1e-5, 0.1], b, 2), None, "near tie for first place");
        assert_eq!(certify(&[0.9, 0.5, 0.5 - 1e-5], b, 2), None, "the runner-up is within reach");
        assert_eq!(certify(&[0.25, 0.25, 0.9], b, 1), Some(vec![2]), "ties behind the runner-up do not matter");
        assert_eq!(certify(&[0.9, 0.5, 0.1, 0.1 + 1e-6], b, 2), Some(vec![0, 1]));
        assert_eq!(certify(&[0.0; 4], b, 2), None, "exact ties (the zero query)");
        assert_eq!(certify(&[0.0, -0.0, 0.5], b, 2), None);
        // k == P: there is no runner-up, only the order is checked.
        assert_eq!(certify(&[0.1, 0.9], b, 2), Some(vec![1, 0]));
        assert_eq!(certify(&[0.5, 0.5], b, 2), None);
        // Any NaN refuses, even far below the best.
        assert_eq!(certify(&[0.9, 0.5, 0.1, f32::NAN], b, 2), None);
        assert_eq!(certify(&[f32::NAN; 3], b, 1), None);
        // An infinite bound (too wide a query) certifies nothing.
        assert_eq!(certify(&[0.9, -0.9], f64::INFINITY, 1), None);
        assert_eq!(certify(&[0.9, -0.9], 0.0, 1), Some(vec![0]));
    }

    #[test]
    fn error_bound_values() {
        // γ₃₂(D + 1) dominates: ≈ (D + 1)·2⁻²⁴, plus 2⁻²⁴ for rounding the reference.
        let b = similarity_error_bound(1728);
        let approx = 1730.0 / (1u64 << 24) as f64;
        assert!(b > approx && b < approx * 1.01, "{b} vs {approx}");
        assert!(similarity_error_bound(12) < 1e-6);
        assert!(similarity_error_bound(1) > 2.0 * U32, "the f32 rounding of the reference always counts");
        let mut last = 0.0;
        for d in [1, 2, 100, 10_000, 1 << 20, (1 << 23) - 3] {
            let b = similarity_error_bound(d);
            assert!(b.is_finite() && b > last, "d = {d}: {b}");
            last = b;
        }
        assert_eq!(similarity_error_bound(1 << 23), f64::INFINITY);
        assert_eq!(similarity_error_bound(usize::MAX), f64::INFINITY);
    }

    /// f32 dot products in the orders real kernels use: sequential, 8 FMA lanes,
    /// pairwise (blocked), reversed.
    fn f32_dots(a: &[f32], b: &[f32]) -> [f32; 4] {
        let sequential = a.iter().zip(b).fold(0f32, |s, (x, y)| s + x * y);
        let mut lanes = [0f32; 8];
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            lanes[i % 8] = x.mul_add(*y, lanes[i % 8]);
        }
        let fma8 = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
        fn pairwise(a: &[f32], b: &[f32]) -> f32 {
            if a.len() <= 4 {
                return a.iter().zip(b).map(|(x, y)| x * y).sum();
            }
            let h = a.len() / 2;
            pairwise(&a[..h], &b[..h]) + pairwise(&a[h..], &b[h..])
        }
        let reversed = a.iter().zip(b).rev().fold(0f32, |s, (x, y)| s + x * y);
        [sequential, fma8, pairwise(a, b), reversed]
    }

    #[test]
    fn certified_rankings_match_the_reference() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut uniform = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f64 + 0.5) / (1u64 << 24) as f64
        };
        let mut normal = move || {
            let (u1, u2) = (uniform(), uniform());
            ((-2.0 * u1.ln()).sqrt() * (core::f64::consts::TAU * u2).cos()) as f32
        };
        let (mut certified, mut total, mut worst) = (0, 0, 0f64);
        for (d, p, k, rows) in [(1728, 16, 2, 40usize), (64, 8, 3, 300), (5, 6, 6, 300)] {
            let bound = similarity_error_bound(d);
            let mut keys = vec![0f32; p * d];
            for key in keys.chunks_exact_mut(d) {
                let raw: Vec<f32> = (0..d).map(|_| normal()).collect();
                normalize_into(&raw, 1e-12, key);
            }
            for r in 0..rows {
                let raw: Vec<f32> = (0..d).map(|_| normal()).collect();
                let mut q = vec![0f32; d];
                normalize_into(&raw, 1e-12, &mut q);
                // Every third row is pulled towards keys 0 and 1 equally, leaving them gaps
                // from far above the bound to far below it.
                if r % 3 == 0 {
                    let noise = 0.1f32.powi((r / 3 % 6) as i32);
                    for (i, v) in q.iter_mut().enumerate() {
                        *v = noise * *v + keys[i] + keys[d + i];
                    }
                    let raw = q.clone();
                    normalize_into(&raw, 1e-12, &mut q);
                }
                let reference: Vec<f32> = keys.chunks_exact(d).map(|key| dot(&q, key)).collect();
                let mut want = vec![0f32; k];
                top_k(&reference, &mut want);
                let gemm: Vec<[f32; 4]> = keys.chunks_exact(d).map(|key| f32_dots(&q, key)).collect();
                for order in 0..4 {
                    let sims: Vec<f32> = gemm.iter().map(|g| g[order]).collect();
                    for (g, t) in sims.iter().zip(&reference) {
                        let err = f64::from(*g) - f64::from(*t);
                        assert!(err.abs() <= bound, "d = {d}: |{g} − {t}| > {bound}");
                        worst = worst.max(err.abs() / bound);
                    }
                    let mut rank = vec![0f32; (k + 1).min(p)];
                    total += 1;
                    if certified_top_k(&sims, bound, &mut rank) {
                        certified += 1;
                        assert_eq!(rank[..k], want[..], "d = {d}, row {r}, order {order}: {sims:?}");
                    }
                }
            }
        }
        // Most rows certify, and the near-tie rows keep some out.
        assert!(certified > total / 2 && certified < total, "{certified}/{total}");
        // The bound is a worst case: typical errors are far below it.
        assert!(worst < 0.5, "{worst}");
    }
}
