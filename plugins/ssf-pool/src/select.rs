//! FedIns entry selection: cosine similarity of a row's query with every pool key, then
//! the `k` best entries. Pure functions over slices, so the hook stays allocation-free and
//! the rules are unit-tested on their own.
//!
//! Numerics follow torch `F.normalize` then a dot product (the fixture's reference): both
//! vectors are normalized to f32 first, `v / max(‖v‖₂, eps)`, then dotted. Norms and dots
//! accumulate in f64 and round to f32 once. That is at least as accurate as torch's f32
//! path, and, unlike the host's SIMD kernels, gives the same bits on every instruction set,
//! so a row selects the same entries on every machine. Exact ties (the zero query, keys
//! whose normalized entries are powers of two) stay exact, and the selection breaks them
//! by the lower index.

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
    for (o, &x) in out.iter_mut().zip(v) {
        *o = (f64::from(x) / denom) as f32;
    }
}

/// `a · b`, accumulated in f64, rounded to f32.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_f64(a, b) as f32
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
}
