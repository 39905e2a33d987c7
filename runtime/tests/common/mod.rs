//! A model that exercises every op and planner feature, and a naive f64 evaluator of it.
//!
//! ```text
//! dense ─ fc1 ─ relu ─────────────── bot ┐            (linear+relu fused)
//! ids_0 [N,3] ─ emb_0 (sum) ───────── e0 ┤            (padded ids)
//! idx_1/off_1 ─ emb_1 (mean) ──────── e1 ┤            (flat bags; row 0 is empty)
//! ids_2 [N] ─ emb_2 (sum) ─────────── e2 ┴ z = concat (e2 is placed inside z; the rest are copied)
//! z ─ cross(z, z) ─ layer_norm ─ gelu ─ ·scale ─ +z ─ (·)² = m
//! dots = dot_interaction(bot, e0, e1);  fm = fm(e0, e1)
//! all = concat(m, dots, fm) ─ head ─ logit ─ sigmoid ─ prob     outputs: prob, logit, dots
//! ```

#![allow(dead_code, clippy::unwrap_used)]

use graft::builder::{Matrix, ModelBuilder, WeightFormats};
use graft::graph::{Activation, BagMode};
use graft::synthetic::Rng;
use graft::{Input, Model};

pub const DENSE: usize = 11;
pub const DIM: usize = 8;
pub const VOCAB: [usize; 3] = [17, 9, 23];
pub const SLOTS: usize = 3;
const CAT: usize = 4 * DIM;
const DOTS: usize = DIM + 3;
const ALL: usize = CAT + DOTS + 1;

/// The parameters of [`everything`], for the reference evaluator.
pub struct Params {
    fc1_w: Vec<f32>,
    fc1_b: Vec<f32>,
    tables: Vec<Vec<f32>>,
    cross_w: Vec<f32>,
    cross_b: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    scale: Vec<f32>,
    head_w: Vec<f32>,
    head_b: f32,
}

fn rand(rng: &mut Rng, n: usize, s: f32) -> Vec<f32> {
    (0..n).map(|_| s * rng.normal()).collect()
}

impl Params {
    /// The parameters with every weight matrix the weight formats store (the linears'
    /// and the cross layer's weights, the embedding tables) passed row by row through
    /// `round_trip` — a storage format's encode/decode, written independently of graft —
    /// and everything else (biases, norms, scales) kept in f32.
    pub fn stored_as(&self, round_trip: impl Fn(&[f32]) -> Vec<f32>) -> Params {
        let rows = |w: &[f32], cols: usize| w.chunks(cols).flat_map(&round_trip).collect::<Vec<f32>>();
        Params {
            fc1_w: rows(&self.fc1_w, DENSE),
            fc1_b: self.fc1_b.clone(),
            tables: self.tables.iter().map(|t| rows(t, DIM)).collect(),
            cross_w: rows(&self.cross_w, CAT),
            cross_b: self.cross_b.clone(),
            gamma: self.gamma.clone(),
            beta: self.beta.clone(),
            scale: self.scale.clone(),
            head_w: rows(&self.head_w, ALL),
            head_b: self.head_b,
        }
    }
}

/// Builds the model with parameters from `seed`.
pub fn everything(seed: u64) -> (ModelBuilder, Params) {
    let mut rng = Rng::new(seed);
    let p = Params {
        fc1_w: rand(&mut rng, DIM * DENSE, 0.4),
        fc1_b: rand(&mut rng, DIM, 0.1),
        tables: VOCAB.iter().map(|&v| rand(&mut rng, v * DIM, 0.5)).collect(),
        cross_w: rand(&mut rng, CAT * CAT, 0.2),
        cross_b: rand(&mut rng, CAT, 0.1),
        gamma: rand(&mut rng, CAT, 1.0),
        beta: rand(&mut rng, CAT, 0.1),
        scale: rand(&mut rng, CAT, 1.0),
        head_w: rand(&mut rng, ALL, 0.3),
        head_b: -0.2,
    };
    let mut b = ModelBuilder::new("everything");
    b.dense_input("dense", DENSE);
    b.ids_input("ids_0", SLOTS);
    b.bag_inputs("idx_1", "off_1");
    b.ids_input("ids_2", 1);
    let h = b.linear("fc1", "dense", Matrix::new(DIM, DENSE, p.fc1_w.clone()), Some(p.fc1_b.clone()));
    let bot = b.activation("fc1_relu", Activation::Relu, &h);
    let table = |f: usize| Matrix::new(VOCAB[f], DIM, p.tables[f].clone());
    let e0 = b.embedding_bag("emb_0", &["ids_0"], table(0), BagMode::Sum);
    let e1 = b.embedding_bag("emb_1", &["idx_1", "off_1"], table(1), BagMode::Mean);
    let e2 = b.embedding_bag("emb_2", &["ids_2"], table(2), BagMode::Sum);
    let z = b.concat("z", &[&bot, &e0, &e1, &e2]);
    let c = b.cross("cross", &z, &z, Matrix::new(CAT, CAT, p.cross_w.clone()), Some(p.cross_b.clone()));
    let n = b.layer_norm("ln", &c, p.gamma.clone(), Some(p.beta.clone()), 1e-5);
    let g = b.activation("gelu", Activation::Gelu, &n);
    let s = b.mul_scale("scaled", &g, p.scale.clone());
    let a = b.add("residual", &s, &z);
    let m = b.mul("squared", &a, &a);
    let dots = b.dot_interaction("dots", &[&bot, &e0, &e1], false);
    let fm = b.fm("fm", &[&e0, &e1]);
    let all = b.concat("all", &[&m, &dots, &fm]);
    let logit = b.linear("head", &all, Matrix::new(1, ALL, p.head_w.clone()), Some(vec![p.head_b]));
    let prob = b.activation("prob", Activation::Sigmoid, &logit);
    b.output("prob", &prob).output("logit", &logit).output("dots", &dots);
    (b, p)
}

/// The model written in `formats` and opened from memory.
pub fn model(seed: u64, formats: WeightFormats) -> Model {
    let (b, _) = everything(seed);
    Model::from_slice_copy(&b.to_bytes(formats).unwrap()).unwrap()
}

/// Owned random inputs for [`everything`].
pub struct Inputs {
    pub rows: usize,
    pub dense: Vec<f32>,
    pub ids0: Vec<i64>,
    pub idx1: Vec<i64>,
    pub off1: Vec<i64>,
    pub ids2: Vec<i64>,
}

impl Inputs {
    pub fn new(rows: usize, seed: u64) -> Inputs {
        let mut rng = Rng::new(seed);
        let (mut idx1, mut off1) = (Vec::new(), Vec::new());
        for r in 0..rows {
            off1.push(idx1.len() as i64);
            let n = if r == 0 { 0 } else { 1 + rng.below(3) as usize };
            idx1.extend((0..n).map(|_| rng.below(VOCAB[1] as u64) as i64));
        }
        Inputs {
            rows,
            dense: (0..rows * DENSE).map(|_| rng.normal()).collect(),
            ids0: (0..rows * SLOTS).map(|_| rng.below(VOCAB[0] as u64) as i64).collect(),
            idx1,
            off1,
            ids2: (0..rows).map(|_| rng.below(VOCAB[2] as u64) as i64).collect(),
        }
    }

    pub fn inputs(&self) -> Vec<Input<'_>> {
        vec![
            Input::dense("dense", &self.dense, DENSE),
            Input::ids("ids_0", &self.ids0, SLOTS),
            Input::flat("idx_1", &self.idx1),
            Input::flat("off_1", &self.off1),
            Input::ids("ids_2", &self.ids2, 1),
        ]
    }

    fn bag1(&self, r: usize) -> &[i64] {
        let start = self.off1[r] as usize;
        let end = self.off1.get(r + 1).map_or(self.idx1.len(), |&o| o as usize);
        &self.idx1[start..end]
    }

    /// Row `r` alone (offsets re-based).
    pub fn row(&self, r: usize) -> Inputs {
        Inputs {
            rows: 1,
            dense: self.dense[r * DENSE..(r + 1) * DENSE].to_vec(),
            ids0: self.ids0[r * SLOTS..(r + 1) * SLOTS].to_vec(),
            idx1: self.bag1(r).to_vec(),
            off1: vec![0],
            ids2: vec![self.ids2[r]],
        }
    }
}

fn matvec(w: &[f32], b: Option<&[f32]>, x: &[f64], out: usize) -> Vec<f64> {
    (0..out)
        .map(|o| {
            let dot: f64 = (0..x.len()).map(|k| w[o * x.len() + k] as f64 * x[k]).sum();
            dot + b.map_or(0.0, |b| b[o] as f64)
        })
        .collect()
}

fn bag(table: &[f32], ids: &[i64], mean: bool) -> Vec<f64> {
    let mut v = vec![0.0f64; DIM];
    for &id in ids {
        for d in 0..DIM {
            v[d] += table[id as usize * DIM + d] as f64;
        }
    }
    if mean && !ids.is_empty() {
        v.iter_mut().for_each(|x| *x /= ids.len() as f64);
    }
    v
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Naive f64 logit and dot-interaction output of row `r`.
pub fn reference(p: &Params, x: &Inputs, r: usize) -> (f64, Vec<f64>) {
    let dense: Vec<f64> = x.dense[r * DENSE..(r + 1) * DENSE].iter().map(|&v| v as f64).collect();
    let bot: Vec<f64> = matvec(&p.fc1_w, Some(&p.fc1_b), &dense, DIM).into_iter().map(|v| v.max(0.0)).collect();
    let e0 = bag(&p.tables[0], &x.ids0[r * SLOTS..(r + 1) * SLOTS], false);
    let e1 = bag(&p.tables[1], x.bag1(r), true);
    let e2 = bag(&p.tables[2], &x.ids2[r..r + 1], false);
    let z: Vec<f64> = [&bot, &e0, &e1, &e2].iter().flat_map(|v| v.iter().copied()).collect();
    let wz = matvec(&p.cross_w, Some(&p.cross_b), &z, CAT);
    let c: Vec<f64> = (0..CAT).map(|i| z[i] * wz[i] + z[i]).collect();
    let mean = c.iter().sum::<f64>() / CAT as f64;
    let var = c.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / CAT as f64;
    let inv = 1.0 / (var + 1e-5).sqrt();
    let m: Vec<f64> = (0..CAT)
        .map(|i| {
            let n = (c[i] - mean) * inv * p.gamma[i] as f64 + p.beta[i] as f64;
            let g = 0.5 * n * (1.0 + libm::erf(n / std::f64::consts::SQRT_2));
            let a = g * p.scale[i] as f64 + z[i];
            a * a
        })
        .collect();
    let vs = [&bot, &e0, &e1];
    let mut dots = bot.clone();
    for i in 0..3 {
        for j in 0..i {
            dots.push(dot(vs[i], vs[j]));
        }
    }
    let fm: f64 = 0.5
        * (0..DIM)
            .map(|d| {
                let s = e0[d] + e1[d];
                s * s - (e0[d] * e0[d] + e1[d] * e1[d])
            })
            .sum::<f64>();
    let all: Vec<f64> = m.iter().chain(&dots).copied().chain([fm]).collect();
    let logit = matvec(&p.head_w, None, &all, 1)[0] + p.head_b as f64;
    (logit, dots)
}
