//! The memory itself: the LSH sketch (`S`, `C`, optional `Kσ` per bucket), the optional
//! ring of raw samples of the exact estimator, and the three estimators.
//!
//! # Concurrency
//! Taps read the memory on many threads while one feedback at a time writes it (writers
//! hold the adapter's writer mutex, proven here by `&mut Writer`). Readers never wait:
//! every cell is an `AtomicU32` holding f32 bits, read and written with relaxed ordering,
//! so there is no data race in the language sense, and a generation counter (a seqlock)
//! tells a reader whether an insert overlapped its read. A reader retries a few times and
//! then uses what it read. The race that remains is benign by construction: a query that
//! overlaps an insert may see one bucket's `S` updated before its `C` (or, during a
//! renormalization, some cells rescaled and others not), which skews that one estimate by
//! one sample's share; it never reads out of bounds, and the next query is exact again.
//!
//! # Decay
//! Forgetting by `ρ` per insertion step would rescale every cell on every insert. Instead
//! the `t`-th insert is added with the global weight `w = ρ^(−t)`. After `N` inserts a
//! cell holds `Σ_i ρ^(−i)·v_i = ρ^(−(N−1)) · Σ_i ρ^(N−1−i)·v_i`: the decayed value times a
//! factor common to every cell. Every estimator reads only ratios (`ΣS/ΣC`, `S/C`, `Kσ/C`),
//! which the common factor cancels, so this equals decaying every bucket by `ρ` per insert
//! (the tests compare it with that naive scheme). When `w` would exceed [`RENORM_ABOVE`]
//! every cell is divided by it and `w` restarts at 1, which keeps sums far from f32
//! overflow for every `ρ` (cells stay below `RENORM_ABOVE · min(inserts, 1/(1−ρ)) · |v|`).

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

use graft_plugin_abi::{ErrorCode, PluginError};

use crate::config::Estimate;

/// The global insert weight is renormalized to 1 when it would exceed this.
pub const RENORM_ABOVE: f64 = 1e10;
/// `normalize(v) = v / max(‖v‖, NORM_EPS)` (torch `F.normalize`'s eps).
pub const NORM_EPS: f64 = 1e-12;
/// Keys with a component larger than this are not stored (a broken model, not data):
/// with [`RENORM_ABOVE`] it keeps key sums within f32 range.
pub const KEY_LIMIT: f32 = 1e12;
/// Seqlock read attempts before a reader accepts a read that overlapped an insert.
const READ_ATTEMPTS: usize = 4;

/// A fixed array of f32 values shared between one writer and lock-free readers.
pub(crate) struct Cells(Box<[AtomicU32]>);

impl Cells {
    /// `n` zeros; an allocation failure is an error naming `field`, not an abort.
    pub fn zeroed(n: usize, field: &str) -> Result<Cells, PluginError> {
        let mut v: Vec<AtomicU32> = Vec::new();
        v.try_reserve_exact(n).map_err(|_| {
            PluginError::new(ErrorCode::CONFIG, field, format!("cannot allocate {n} cells ({} bytes)", n * 4))
        })?;
        v.extend((0..n).map(|_| AtomicU32::new(0)));
        Ok(Cells(v.into_boxed_slice()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    #[inline]
    pub fn get(&self, i: usize) -> f32 {
        f32::from_bits(self.0[i].load(Ordering::Relaxed))
    }

    #[inline]
    pub fn set(&self, i: usize, v: f32) {
        self.0[i].store(v.to_bits(), Ordering::Relaxed);
    }

    /// `cell += v`, rounded once to f32 (writer only).
    #[inline]
    fn add(&self, i: usize, v: f64) {
        self.set(i, (f64::from(self.get(i)) + v) as f32);
    }

    fn scale(&self, factor: f64) {
        for i in 0..self.len() {
            self.set(i, (f64::from(self.get(i)) * factor) as f32);
        }
    }

    pub fn to_vec(&self) -> Vec<f32> {
        (0..self.len()).map(|i| self.get(i)).collect()
    }

    pub fn load(&self, values: &[f32]) {
        for (i, &v) in values.iter().enumerate().take(self.len()) {
            self.set(i, v);
        }
    }
}

/// The last `cap` inserted `(h, e)` pairs of the exact estimator, with `‖h‖` cached.
struct ExactRing {
    cap: usize,
    keys: Cells,
    errors: Cells,
    norms: Cells,
    /// Samples ever pushed; slot of push `n` is `n % cap`.
    pushes: AtomicU64,
}

/// Writer-side state: what only the holder of the writer mutex may touch.
#[derive(Debug)]
pub(crate) struct Writer {
    /// Weight of the next insert (`ρ^(−t)` since the last renormalization).
    pub weight: f64,
    /// `ρ`.
    pub decay: f64,
    pub renormalizations: u64,
}

/// The memory of one adapter.
pub(crate) struct Sketch {
    pub tables: usize,
    /// `2^p`.
    pub buckets: usize,
    pub d: usize,
    pub estimate: Estimate,
    pub k: usize,
    pub tau: f64,
    /// `S[l, b]`, row-major `[L, 2^p]`.
    sums: Cells,
    /// `C[l, b]`.
    counts: Cells,
    /// `Kσ[l, b, :]`, `[L, 2^p, d]` (topk only).
    key_sums: Cells,
    exact: Option<ExactRing>,
    /// Seqlock generation: odd while an insert is writing.
    seq: AtomicU64,
    /// Inserts ever applied (including restored ones).
    pub inserts: AtomicU64,
}

/// Everything persistent about a sketch, as plain vectors (for saving and restoring).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SketchData {
    pub sums: Vec<f32>,
    pub counts: Vec<f32>,
    pub key_sums: Vec<f32>,
    /// Exact samples, oldest first: `n × d` keys and `n` errors.
    pub exact_keys: Vec<f32>,
    pub exact_errors: Vec<f32>,
    pub inserts: u64,
    pub weight: f64,
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt()
}

fn dot(a: &[f32], b: &Cells, start: usize) -> f64 {
    a.iter().enumerate().map(|(j, &x)| f64::from(x) * f64::from(b.get(start + j))).sum()
}

/// Softmax(`cos/τ`)-weighted mean of `err` over the `k` largest `cos` (ties: the lower
/// position). `cos` is consumed (picked entries are overwritten).
fn softmax_top_k(cos: &mut [f32], err: &[f32], k: usize, tau: f64) -> f64 {
    let (mut num, mut den, mut max) = (0.0f64, 0.0f64, None);
    for _ in 0..k.min(cos.len()) {
        let mut best = None;
        for (j, &c) in cos.iter().enumerate() {
            if c != f32::NEG_INFINITY && best.is_none_or(|b: usize| c > cos[b]) {
                best = Some(j);
            }
        }
        let Some(j) = best else { break };
        let c = f64::from(cos[j]);
        let m = *max.get_or_insert(c);
        let w = ((c - m) / tau).exp();
        num += w * f64::from(err[j]);
        den += w;
        cos[j] = f32::NEG_INFINITY;
    }
    if den > 0.0 { num / den } else { 0.0 }
}

impl Sketch {
    /// An empty memory. `d` is the key width; the ring exists for `estimate = exact`.
    pub fn new(
        tables: usize,
        bits: u32,
        d: usize,
        estimate: Estimate,
        k: usize,
        tau: f64,
        exact_capacity: usize,
    ) -> Result<Sketch, PluginError> {
        let buckets = 1usize << bits;
        let cells = tables * buckets;
        let key_cells = if estimate == Estimate::TopK { cells * d } else { 0 };
        let exact = if estimate == Estimate::Exact {
            Some(ExactRing {
                cap: exact_capacity,
                keys: Cells::zeroed(exact_capacity * d, "exact_capacity")?,
                errors: Cells::zeroed(exact_capacity, "exact_capacity")?,
                norms: Cells::zeroed(exact_capacity, "exact_capacity")?,
                pushes: AtomicU64::new(0),
            })
        } else {
            None
        };
        Ok(Sketch {
            tables,
            buckets,
            d,
            estimate,
            k,
            tau,
            sums: Cells::zeroed(cells, "bits")?,
            counts: Cells::zeroed(cells, "bits")?,
            key_sums: Cells::zeroed(key_cells, "bits")?,
            exact,
            seq: AtomicU64::new(0),
            inserts: AtomicU64::new(0),
        })
    }

    /// Floats of scratch one [`estimate`](Self::estimate) needs.
    pub fn scratch_floats(&self) -> usize {
        2 * self.tables.max(self.k)
    }

    /// Bytes of memory cells (`S`, `C`, `Kσ`, exact ring).
    pub fn bytes(&self) -> u64 {
        let exact = self.exact.as_ref().map_or(0, |r| r.keys.len() + r.errors.len() + r.norms.len());
        ((self.sums.len() + self.counts.len() + self.key_sums.len() + exact) * 4) as u64
    }

    /// Cell index of bucket `b` of table `l`.
    #[inline]
    fn cell(&self, l: usize, b: usize) -> usize {
        l * self.buckets + b
    }

    /// `ê(h)` for key `h` whose bucket in table `l` is `buckets[l]` (exact small integers
    /// as f32, the run-state encoding). Lock-free; see the module docs.
    pub fn estimate(&self, h: &[f32], buckets: &[f32], scratch: &mut [f32]) -> f64 {
        let mut value = 0.0;
        for _ in 0..READ_ATTEMPTS {
            let before = self.seq.load(Ordering::Acquire);
            value = match self.estimate {
                Estimate::Pooled => self.pooled(buckets),
                Estimate::TopK => self.top_k(h, buckets, scratch),
                Estimate::Exact => self.exact(h, scratch),
            };
            fence(Ordering::Acquire);
            if before.is_multiple_of(2) && self.seq.load(Ordering::Relaxed) == before {
                break;
            }
            core::hint::spin_loop();
        }
        if value.is_finite() { value } else { 0.0 }
    }

    fn bucket(&self, buckets: &[f32], l: usize) -> usize {
        // Callers validated the run state; clamp anyway so a bad value cannot index out.
        (buckets[l] as usize).min(self.buckets - 1)
    }

    fn pooled(&self, buckets: &[f32]) -> f64 {
        let (mut num, mut den) = (0.0f64, 0.0f64);
        for l in 0..self.tables {
            let i = self.cell(l, self.bucket(buckets, l));
            num += f64::from(self.sums.get(i));
            den += f64::from(self.counts.get(i));
        }
        if den > 0.0 { num / den } else { 0.0 }
    }

    fn top_k(&self, h: &[f32], buckets: &[f32], scratch: &mut [f32]) -> f64 {
        let (cos, rest) = scratch.split_at_mut(self.tables);
        let err = &mut rest[..self.tables];
        let h_norm = norm(h).max(NORM_EPS);
        let mut n = 0;
        for l in 0..self.tables {
            let i = self.cell(l, self.bucket(buckets, l));
            let c = f64::from(self.counts.get(i));
            if c <= 0.0 {
                continue; // empty bucket: no pseudo-sample
            }
            let start = i * self.d;
            let key_norm = (0..self.d).map(|j| f64::from(self.key_sums.get(start + j)).powi(2)).sum::<f64>().sqrt();
            // cos(h, Kσ/C) = (h·Kσ/C) / (max(‖h‖, ε)·max(‖Kσ‖/C, ε))
            let cosine = (dot(h, &self.key_sums, start) / c) / (h_norm * (key_norm / c).max(NORM_EPS));
            let e = f64::from(self.sums.get(i)) / c;
            if cosine.is_finite() && e.is_finite() {
                cos[n] = cosine as f32;
                err[n] = e as f32;
                n += 1;
            }
        }
        softmax_top_k(&mut cos[..n], &err[..n], self.k, self.tau)
    }

    fn exact(&self, h: &[f32], scratch: &mut [f32]) -> f64 {
        let Some(ring) = &self.exact else { return 0.0 };
        let k = self.k;
        let (best_cos, rest) = scratch.split_at_mut(k);
        let best_slot = &mut rest[..k];
        let pushes = ring.pushes.load(Ordering::Relaxed);
        let n = pushes.min(ring.cap as u64) as usize;
        let oldest = pushes - n as u64;
        let h_norm = norm(h).max(NORM_EPS);
        let mut len = 0;
        // Oldest first, so among equal cosines the older (lower-index) sample wins.
        for age in 0..n {
            let slot = ((oldest + age as u64) % ring.cap as u64) as usize;
            let denom = h_norm * f64::from(ring.norms.get(slot)).max(NORM_EPS);
            let cosine = (dot(h, &ring.keys, slot * self.d) / denom) as f32;
            if !cosine.is_finite() || (len == k && cosine <= best_cos[k - 1]) {
                continue;
            }
            let pos = best_cos[..len].iter().position(|&c| c < cosine).unwrap_or(len);
            let end = len.min(k - 1);
            best_cos.copy_within(pos..end, pos + 1);
            best_slot.copy_within(pos..end, pos + 1);
            best_cos[pos] = cosine;
            best_slot[pos] = slot as f32; // < 2^24: exact
            len = (len + 1).min(k);
        }
        if len == 0 {
            return 0.0;
        }
        let (max, mut num, mut den) = (f64::from(best_cos[0]), 0.0f64, 0.0f64);
        for j in 0..len {
            let w = ((f64::from(best_cos[j]) - max) / self.tau).exp();
            num += w * f64::from(ring.errors.get(best_slot[j] as usize));
            den += w;
        }
        num / den
    }

    fn begin_write(&self) {
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store(s.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
    }

    fn end_write(&self) {
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store(s.wrapping_add(1), Ordering::Release);
    }

    /// Inserts error `e` for key `h` (buckets `buckets`) with the current global weight,
    /// then advances the weight by `1/ρ`, renormalizing every cell when it grows too large.
    pub fn insert(&self, writer: &mut Writer, h: &[f32], buckets: &[u32], e: f64) {
        self.begin_write();
        let w = writer.weight;
        for (l, &b) in buckets.iter().enumerate().take(self.tables) {
            let i = self.cell(l, (b as usize).min(self.buckets - 1));
            self.sums.add(i, w * e);
            self.counts.add(i, w);
            if self.estimate == Estimate::TopK {
                for (j, &x) in h.iter().enumerate() {
                    self.key_sums.add(i * self.d + j, w * f64::from(x));
                }
            }
        }
        if let Some(ring) = &self.exact {
            let pushes = ring.pushes.load(Ordering::Relaxed);
            let slot = (pushes % ring.cap as u64) as usize;
            for (j, &x) in h.iter().enumerate() {
                ring.keys.set(slot * self.d + j, x);
            }
            ring.errors.set(slot, e as f32);
            ring.norms.set(slot, norm(h) as f32);
            ring.pushes.store(pushes + 1, Ordering::Relaxed);
        }
        self.inserts.fetch_add(1, Ordering::Relaxed);
        let next = w / writer.decay;
        if next > RENORM_ABOVE {
            let factor = 1.0 / next;
            self.sums.scale(factor);
            self.counts.scale(factor);
            self.key_sums.scale(factor);
            writer.weight = 1.0;
            writer.renormalizations += 1;
        } else {
            writer.weight = next;
        }
        self.end_write();
    }

    /// A consistent copy of the memory (the caller holds the writer, so nothing changes).
    pub fn snapshot(&self, writer: &Writer) -> SketchData {
        let (exact_keys, exact_errors) = match &self.exact {
            Some(ring) => {
                let pushes = ring.pushes.load(Ordering::Relaxed);
                let n = pushes.min(ring.cap as u64) as usize;
                let oldest = pushes - n as u64;
                let (mut keys, mut errors) = (Vec::with_capacity(n * self.d), Vec::with_capacity(n));
                for age in 0..n {
                    let slot = ((oldest + age as u64) % ring.cap as u64) as usize;
                    keys.extend((0..self.d).map(|j| ring.keys.get(slot * self.d + j)));
                    errors.push(ring.errors.get(slot));
                }
                (keys, errors)
            }
            None => (Vec::new(), Vec::new()),
        };
        SketchData {
            sums: self.sums.to_vec(),
            counts: self.counts.to_vec(),
            key_sums: self.key_sums.to_vec(),
            exact_keys,
            exact_errors,
            inserts: self.inserts.load(Ordering::Relaxed),
            weight: writer.weight,
        }
    }

    /// Replaces the memory with `data` (at load, before the adapter is shared). Shapes
    /// were checked by the caller.
    pub fn restore(&self, writer: &mut Writer, data: &SketchData) {
        self.begin_write();
        self.sums.load(&data.sums);
        self.counts.load(&data.counts);
        self.key_sums.load(&data.key_sums);
        if let Some(ring) = &self.exact {
            let n = data.exact_errors.len().min(ring.cap);
            ring.keys.load(&data.exact_keys[..n * self.d]);
            ring.errors.load(&data.exact_errors[..n]);
            for slot in 0..n {
                ring.norms.set(slot, norm(&data.exact_keys[slot * self.d..(slot + 1) * self.d]) as f32);
            }
            ring.pushes.store(n as u64, Ordering::Relaxed);
        }
        self.inserts.store(data.inserts, Ordering::Relaxed);
        writer.weight = data.weight;
        self.end_write();
    }

    /// Capacity of the exact ring (0 without one).
    pub fn exact_capacity(&self) -> usize {
        self.exact.as_ref().map_or(0, |r| r.cap)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn top_k_ties_pick_lower_position() {
        let mut cos = [0.5f32, 0.9, 0.9, 0.1];
        let err = [1.0f32, 2.0, 3.0, 4.0];
        // k = 1: the first 0.9 (position 1) wins.
        assert_eq!(softmax_top_k(&mut cos.clone(), &err, 1, 1.0), 2.0);
        // k = 2: both 0.9s, equal weights.
        assert!((softmax_top_k(&mut cos, &err, 2, 1.0) - 2.5).abs() < 1e-12);
    }

    #[test]
    fn exact_tie_keeps_older_sample() {
        let s = Sketch::new(1, 1, 2, Estimate::Exact, 1, 1.0, 8).unwrap();
        let mut w = Writer { weight: 1.0, decay: 1.0, renormalizations: 0 };
        s.insert(&mut w, &[1.0, 0.0], &[1], 0.25);
        s.insert(&mut w, &[2.0, 0.0], &[1], 0.75); // same direction: same cosine
        let mut scratch = vec![0.0; s.scratch_floats()];
        assert_eq!(s.estimate(&[1.0, 0.0], &[1.0], &mut scratch), 0.25);
    }

    #[test]
    fn exact_ring_forgets_oldest() {
        let s = Sketch::new(1, 1, 1, Estimate::Exact, 1, 1.0, 2).unwrap();
        let mut w = Writer { weight: 1.0, decay: 1.0, renormalizations: 0 };
        for (h, e) in [(1.0, 0.1), (-1.0, 0.2), (-1.0, 0.3)] {
            s.insert(&mut w, &[h], &[0], e);
        }
        let mut scratch = vec![0.0; s.scratch_floats()];
        // [1.0] was evicted: the best match for +1 is now a −1 key (cos −1), the older one.
        assert!((s.estimate(&[1.0], &[0.0], &mut scratch) - 0.2).abs() < 1e-7);
        let snap = s.snapshot(&w);
        assert_eq!(snap.exact_keys, vec![-1.0, -1.0]);
        assert_eq!(snap.exact_errors, vec![0.2, 0.3]);
    }
}
