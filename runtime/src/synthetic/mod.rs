//! Seeded synthetic models and request streams for the demo, benchmarks and tests.
//!
//! [`Dlrm`] describes a DLRM-style CTR model (dense features through a bottom MLP, one
//! embedding bag per sparse field, concatenation, a top MLP, a sigmoid) whose parameters
//! are generated row by row from a seed, so models of any size — the demo's is 26 fields
//! of 100 000 × 64 — are written without holding them in memory. [`Requests`] produces
//! request batches with power-law ("popular items") ids, like real recommendation traffic;
//! [`lora`] writes PEFT LoRA directories for any model, [`kinds`] the files of the other
//! adapter kinds.

pub mod kinds;
pub mod lora;

use std::vec::Vec;

use crate::builder::{Matrix, ModelBuilder};
use crate::graph::{Activation, BagMode};

/// A small, fast, seedable generator (SplitMix64 seeding, xoshiro256** core).
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            x ^ (x >> 31)
        };
        Rng { s: [next(), next(), next(), next()] }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    /// Uniform integer in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// `n` values uniform in `[-scale, scale)`.
    pub fn symmetric(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| (2.0 * self.uniform() - 1.0) * scale).collect()
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = (self.uniform() + f32::EPSILON).min(1.0);
        let u2 = self.uniform();
        libm::sqrtf(-2.0 * libm::logf(u1)) * libm::cosf(core::f32::consts::TAU * u2)
    }

    /// A power-law id in `0..n`: id `i` has probability roughly ∝ 1/(i+1)^0.9.
    pub fn popular(&mut self, n: u64) -> u64 {
        // Inverse CDF of a continuous power law with exponent 0.9 on [1, n+1).
        let u = self.uniform() as f64;
        let a = 0.1f64; // 1 - exponent
        let top = ((n + 1) as f64).powf(a);
        let x = (1.0 + u * (top - 1.0)).powf(1.0 / a);
        (x as u64).saturating_sub(1).min(n - 1)
    }
}

/// A DLRM-style model description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dlrm {
    /// Dense features per row.
    pub dense: usize,
    /// Bottom MLP widths (the last one is the embedding dimension's peer in the concat).
    pub bottom: Vec<usize>,
    /// Sparse fields (one embedding bag each).
    pub fields: usize,
    /// Rows per embedding table.
    pub vocab: usize,
    /// Embedding dimension.
    pub dim: usize,
    /// Ids per bag (the padded `ids` input width).
    pub bag: usize,
    /// Top MLP hidden widths (a final width-1 logit layer is added).
    pub top: Vec<usize>,
    /// Parameter seed.
    pub seed: u64,
}

impl Dlrm {
    /// The demo's model: 13 dense features, bottom 512-256-64, 26 fields of
    /// 100 000 × 64 (166 M table weights, ~187 MB in q8), top 512-256-1.
    pub fn demo() -> Dlrm {
        Dlrm {
            dense: 13,
            bottom: vec![512, 256, 64],
            fields: 26,
            vocab: 100_000,
            dim: 64,
            bag: 2,
            top: vec![512, 256],
            seed: 0x6_7261_6674,
        }
    }

    /// A model with `table_bytes` of f32 embedding tables (for open-time benchmarks).
    pub fn with_table_bytes(table_bytes: usize) -> Dlrm {
        let mut d = Dlrm::demo();
        d.vocab = (table_bytes / (d.fields * d.dim * 4)).max(1);
        d
    }

    /// Width of the concatenation feeding the top MLP.
    pub fn interaction_width(&self) -> usize {
        self.bottom.last().copied().unwrap_or(self.dense) + self.fields * self.dim
    }

    /// Total embedding-table parameters.
    pub fn table_params(&self) -> usize {
        self.fields * self.vocab * self.dim
    }

    /// Multiply-adds of the MLPs per row.
    pub fn mlp_macs(&self) -> usize {
        let mut macs = 0;
        let mut w = self.dense;
        for &b in &self.bottom {
            macs += w * b;
            w = b;
        }
        w = self.interaction_width();
        for &t in self.top.iter().chain([1].iter()) {
            macs += w * t;
            w = t;
        }
        macs
    }

    /// Name of sparse field `f`'s ids input.
    pub fn ids_name(f: usize) -> String {
        format!("ids_{f}")
    }

    /// The model, parameters generated lazily from the seed. Node names follow a
    /// PyTorch DLRM module layout (`bot_fc1`, `emb_3`, `top_fc2`, …).
    pub fn build(&self) -> ModelBuilder {
        let mut b = ModelBuilder::new("synthetic-dlrm");
        b.producer(format!("graft synthetic DLRM (seed {:#x})", self.seed));
        let dense = b.dense_input("dense", self.dense);
        let ids: Vec<String> = (0..self.fields).map(|f| b.ids_input(&Dlrm::ids_name(f), self.bag)).collect();
        let mut seed = self.seed;
        let mut next_seed = || {
            seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
            seed
        };
        let mut x = dense;
        let mut width = self.dense;
        for (i, &out) in self.bottom.iter().enumerate() {
            let name = format!("bot_fc{}", i + 1);
            let y = b.linear(&name, &x, he_matrix(out, width, next_seed()), Some(small_bias(out, next_seed())));
            x = b.activation(&format!("{name}_relu"), Activation::Relu, &y);
            width = out;
        }
        let mut parts = vec![x];
        for (f, id) in ids.iter().enumerate() {
            let s = next_seed();
            let dim = self.dim;
            let table = Matrix::generated(self.vocab, dim, move |r, out| {
                let mut rng = Rng::new(s ^ (r as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
                out.iter_mut().for_each(|v| *v = 0.1 * rng.normal());
            });
            parts.push(b.embedding_bag(&format!("emb_{f}"), &[id], table, BagMode::Sum));
        }
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        let mut x = b.concat("interaction", &refs);
        width = self.interaction_width();
        for (i, &out) in self.top.iter().enumerate() {
            let name = format!("top_fc{}", i + 1);
            let y = b.linear(&name, &x, he_matrix(out, width, next_seed()), Some(small_bias(out, next_seed())));
            x = b.activation(&format!("{name}_relu"), Activation::Relu, &y);
            width = out;
        }
        let name = format!("top_fc{}", self.top.len() + 1);
        let logit = b.linear(&name, &x, he_matrix(1, width, next_seed()), Some(vec![-1.5]));
        let prob = b.activation("prob", Activation::Sigmoid, &logit);
        b.output("prob", &prob).output("logit", &logit);
        b
    }
}

/// The smallest model with every kind of tensor the container knows (bias vectors, linear
/// weights, a table, alignment fillers): `dense[4] → fc (linear 4→8, bias) → act (relu)`,
/// `ids[2] → emb (embedding_bag, table 10×4)`, `cat = concat(act, emb)`, `head` (linear
/// 12→1, bias) → output `score`. Fixed, seed-free values; the malformed-container corpus
/// and the fuzz seeds start from it.
pub fn tiny() -> ModelBuilder {
    let values = |n: usize, seed: f32| -> Vec<f32> { (0..n).map(|i| ((i as f32 + seed) * 0.37).sin() * 0.5).collect() };
    let mut b = ModelBuilder::new("small");
    b.dense_input("dense", 4);
    b.ids_input("ids", 2);
    b.linear("fc", "dense", Matrix::new(8, 4, values(32, 1.0)), Some(values(8, 2.0)));
    b.activation("act", Activation::Relu, "fc");
    b.embedding_bag("emb", &["ids"], Matrix::new(10, 4, values(40, 3.0)), BagMode::Sum);
    b.concat("cat", &["act", "emb"]);
    b.linear("head", "cat", Matrix::new(1, 12, values(12, 4.0)), Some(vec![0.25]));
    b.output("score", "head");
    b
}

/// He-normal `[rows, cols]` weights, generated row by row.
fn he_matrix(rows: usize, cols: usize, seed: u64) -> Matrix {
    let std = (2.0 / cols as f32).sqrt();
    Matrix::generated(rows, cols, move |r, out| {
        let mut rng = Rng::new(seed ^ (r as u64).wrapping_mul(0x9e37_79b9));
        out.iter_mut().for_each(|v| *v = std * rng.normal());
    })
}

fn small_bias(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| 0.05 * rng.normal()).collect()
}

/// One request batch for a [`Dlrm`] model, in the layout `Session::run` takes.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    /// Rows.
    pub rows: usize,
    /// `[rows, dense]` features.
    pub dense: Vec<f32>,
    /// Per field, `[rows, bag]` ids.
    pub ids: Vec<Vec<i64>>,
}

impl Batch {
    /// The batch as named inputs.
    pub fn inputs<'a>(&'a self, model: &Dlrm, names: &'a [String]) -> Vec<crate::Input<'a>> {
        let mut v = Vec::with_capacity(1 + self.ids.len());
        v.push(crate::Input::dense("dense", &self.dense, model.dense));
        for (name, ids) in names.iter().zip(&self.ids) {
            v.push(crate::Input::ids(name, ids, model.bag));
        }
        v
    }
}

/// A seeded stream of request batches with power-law ids.
#[derive(Clone, Debug)]
pub struct Requests {
    model: Dlrm,
    rng: Rng,
}

impl Requests {
    /// A stream for `model` from `seed`.
    pub fn new(model: &Dlrm, seed: u64) -> Requests {
        Requests { model: model.clone(), rng: Rng::new(seed) }
    }

    /// Fills `batch` with `rows` fresh rows (reusing its buffers).
    pub fn fill(&mut self, batch: &mut Batch, rows: usize) {
        let m = &self.model;
        batch.rows = rows;
        batch.dense.clear();
        batch.dense.extend((0..rows * m.dense).map(|_| self.rng.normal()));
        batch.ids.resize_with(m.fields, Vec::new);
        for ids in &mut batch.ids {
            ids.clear();
            ids.extend((0..rows * m.bag).map(|_| self.rng.popular(m.vocab as u64) as i64));
        }
    }

    /// A new batch of `rows` rows.
    pub fn batch(&mut self, rows: usize) -> Batch {
        let mut b = Batch::default();
        self.fill(&mut b, rows);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_seeded_and_in_range() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        assert!((0..1000).all(|_| a.next_u64() == b.next_u64()));
        assert_ne!(Rng::new(8).next_u64(), Rng::new(7).next_u64());
        for _ in 0..1000 {
            assert!(a.popular(100) < 100);
            assert!(a.below(3) < 3);
            assert!((0.0..1.0).contains(&a.uniform()));
        }
    }

    #[test]
    fn popular_ids_are_skewed() {
        let mut r = Rng::new(1);
        let head = (0..10_000).filter(|_| r.popular(100_000) < 1000).count();
        assert!(head > 2_000, "head share {head}");
    }
}

/// Owned inputs for any graph: random ([`GraphInputs::new`]: dense values N(0, 1), ids
/// uniform over the smallest table each ids input feeds, bags of two ids per row) or
/// zeros ([`GraphInputs::zeros`]: id 0, bags of one id).
#[derive(Clone, Debug)]
pub struct GraphInputs {
    names: Vec<String>,
    data: Vec<InputData>,
}

#[derive(Clone, Debug)]
enum InputData {
    Dense(Vec<f32>, usize),
    Ids(Vec<i64>, usize),
    Flat(Vec<i64>),
}

impl GraphInputs {
    /// `rows` rows of zeros: dense 0.0, every id 0, one id per flat bag. Valid for any
    /// graph that validated.
    pub fn zeros(graph: &crate::graph::Graph, rows: usize) -> GraphInputs {
        use crate::graph::InputKind;
        let data = graph
            .inputs
            .iter()
            .map(|def| match def.kind {
                InputKind::Dense { width } => InputData::Dense(vec![0.0; rows * width], width),
                InputKind::Ids { slots } => InputData::Ids(vec![0; rows * slots], slots),
                InputKind::BagIndices => InputData::Flat(vec![0; rows]),
                InputKind::BagOffsets => InputData::Flat((0..rows as i64).collect()),
            })
            .collect();
        GraphInputs { names: graph.inputs.iter().map(|d| d.name.clone()).collect(), data }
    }

    /// `rows` rows of random inputs for `graph` from `seed`. Panics if memory runs out;
    /// [`GraphInputs::try_new`] returns an error instead.
    pub fn new(graph: &crate::graph::Graph, rows: usize, seed: u64) -> GraphInputs {
        match Self::try_new(graph, rows, seed) {
            Ok(inputs) => inputs,
            Err(e) => panic!("GraphInputs::new: {e}"),
        }
    }

    /// `rows` rows of random inputs for `graph` from `seed`, or [`crate::Error::OutOfMemory`]
    /// when the graph's input widths times `rows` cannot be allocated.
    pub fn try_new(graph: &crate::graph::Graph, rows: usize, seed: u64) -> crate::Result<GraphInputs> {
        use crate::graph::InputKind;
        let mut rng = Rng::new(seed);
        let vocab = |k: usize| graph.id_bound(k).map_or(1, |v| v as u64);
        const BAG: usize = 2;
        let mut names = Vec::with_capacity(graph.inputs.len());
        let mut data = Vec::with_capacity(graph.inputs.len());
        for (k, def) in graph.inputs.iter().enumerate() {
            names.push(def.name.clone());
            let per_row = match def.kind {
                InputKind::Dense { width } => width,
                InputKind::Ids { slots } => slots,
                InputKind::BagIndices => BAG,
                InputKind::BagOffsets => 1,
            };
            let len = rows.checked_mul(per_row);
            let out_of_memory = || crate::Error::OutOfMemory {
                what: format!("{rows} rows of synthetic input `{}`", def.name),
                bytes: rows as u128 * per_row as u128 * 8,
            };
            let len = len.filter(|&n| n <= isize::MAX as usize / 8).ok_or_else(out_of_memory)?;
            data.push(match def.kind {
                InputKind::Dense { width } => {
                    let mut v = Vec::new();
                    v.try_reserve_exact(len).map_err(|_| out_of_memory())?;
                    v.extend((0..len).map(|_| rng.normal()));
                    InputData::Dense(v, width)
                }
                kind => {
                    let mut v = Vec::new();
                    v.try_reserve_exact(len).map_err(|_| out_of_memory())?;
                    match kind {
                        InputKind::BagOffsets => v.extend((0..rows).map(|r| (r * BAG) as i64)),
                        _ => {
                            let bound = vocab(k);
                            v.extend((0..len).map(|_| rng.below(bound) as i64));
                        }
                    }
                    match kind {
                        InputKind::Ids { slots } => InputData::Ids(v, slots),
                        _ => InputData::Flat(v),
                    }
                }
            });
        }
        Ok(GraphInputs { names, data })
    }

    /// The inputs, borrowed.
    pub fn inputs(&self) -> Vec<crate::Input<'_>> {
        self.names
            .iter()
            .zip(&self.data)
            .map(|(name, d)| match d {
                InputData::Dense(v, w) => crate::Input::dense(name, v, *w),
                InputData::Ids(v, s) => crate::Input::ids(name, v, *s),
                InputData::Flat(v) => crate::Input::flat(name, v),
            })
            .collect()
    }
}
