//! The SimHash hyperplanes `R` generated from a seed, portably.
//!
//! A memory saved on one machine must hash keys the same way on another, so the generator
//! is specified bit for bit: SplitMix64 (integer arithmetic only), uniforms from its top 53
//! bits, and the cosine branch of Box–Muller in f64 through `libm` (a pure-Rust libm, so
//! `log` and `cos` do not depend on the platform's C library), rounded once to f32.

/// SplitMix64 (Steele, Lea & Flood 2014), the seeding generator of `java.util.SplittableRandom`.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator whose first output is `mix(seed + γ)`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    /// The next 64-bit output.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// One N(0, 1) draw: `u1 = (top53 + 1)·2⁻⁵³ ∈ (0, 1]`, `u2 = top53·2⁻⁵³ ∈ [0, 1)`,
    /// `sqrt(−2 ln u1)·cos(2π u2)`. Consumes two outputs.
    pub fn next_gaussian(&mut self) -> f64 {
        const SCALE: f64 = 1.0 / (1u64 << 53) as f64;
        let u1 = ((self.next_u64() >> 11) + 1) as f64 * SCALE;
        let u2 = (self.next_u64() >> 11) as f64 * SCALE;
        (-2.0 * libm::log(u1)).sqrt() * libm::cos(2.0 * core::f64::consts::PI * u2)
    }
}

/// `R` for `tables × bits` hyperplanes over `d` dimensions, row `l·bits + t` holding
/// hyperplane `t` of table `l`: drawn in the order table, bit, dimension, each value one
/// [`SplitMix64::next_gaussian`] rounded to f32.
pub fn projections_from_seed(seed: u64, tables: usize, bits: usize, d: usize) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    (0..tables * bits * d).map(|_| rng.next_gaussian() as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_reference_values() {
        // Reference outputs of SplitMix64 seeded with 1234567 (from the published C code).
        let mut r = SplitMix64::new(1_234_567);
        let want = [6_457_827_717_110_365_317u64, 3_203_168_211_198_807_973, 9_817_491_932_198_370_423];
        for w in want {
            assert_eq!(r.next_u64(), w);
        }
    }

    #[test]
    fn gaussian_moments() {
        let v = projections_from_seed(7, 4, 10, 100);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let var = v.iter().map(|&x| (f64::from(x) - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.05, "mean {mean}");
        assert!((var - 1.0).abs() < 0.06, "var {var}");
        assert_eq!(v, projections_from_seed(7, 4, 10, 100));
        assert_ne!(v, projections_from_seed(8, 4, 10, 100));
    }
}
