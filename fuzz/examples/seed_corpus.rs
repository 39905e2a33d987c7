//! Writes the seed corpus of the `container` fuzz target: small valid models in every
//! weight format, covering every op and input kind.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --example seed_corpus -- fuzz/corpus/container`
//! (`fuzz/run.sh` does this first).

use std::path::PathBuf;

use graft::builder::{Matrix, ModelBuilder, WeightFormats};
use graft::graph::{Activation, BagMode};

fn values(n: usize, seed: f32) -> Vec<f32> {
    (0..n).map(|i| ((i as f32 + seed) * 0.37).sin() * 0.5).collect()
}

/// Every op and input kind: layer_norm, cross, fused and standalone activations, mean
/// and flat bags, dot_interaction, fm, add/mul with values and tensors, an input output.
fn zoo() -> ModelBuilder {
    let d = 8;
    let mut b = ModelBuilder::new("zoo");
    b.dense_input("dense", d);
    b.ids_input("ids", 3);
    b.bag_inputs("bag_idx", "bag_off");
    b.layer_norm("ln", "dense", values(d, 5.0), Some(values(d, 6.0)), 1e-5);
    b.cross("cross", "dense", "ln", Matrix::new(d, d, values(d * d, 7.0)), Some(values(d, 8.0)));
    b.linear("mlp", "cross", Matrix::new(d, d, values(d * d, 9.0)), None);
    b.activation("gelu", Activation::Gelu, "mlp");
    b.embedding_bag("e_ids", &["ids"], Matrix::new(16, d, values(16 * d, 10.0)), BagMode::Mean);
    b.embedding_bag("e_bag", &["bag_idx", "bag_off"], Matrix::new(7, d, values(7 * d, 11.0)), BagMode::Sum);
    b.dot_interaction("dot", &["gelu", "e_ids", "e_bag"], false);
    b.dot_interaction("dot_self", &["e_ids", "e_bag"], true);
    b.fm("fm", &["e_ids", "e_bag"]);
    b.add("sum", "e_ids", "e_bag");
    b.mul("prod", "sum", "gelu");
    b.add_bias("shifted", "prod", values(d, 12.0));
    b.mul_scale("scaled", "shifted", values(d, 13.0));
    b.activation("silu", Activation::Silu, "scaled");
    b.activation("tanh", Activation::Tanh, "silu");
    b.concat("cat", &["dot", "dot_self", "fm", "tanh", "dense"]);
    b.linear("head", "cat", Matrix::new(2, 11 + 11 + 1 + d + d, values(2 * 39, 14.0)), Some(vec![0.5, -0.5]));
    b.activation("prob", Activation::Sigmoid, "head");
    b.output("prob", "prob");
    b.output("features", "dense");
    b.output("gelu", "gelu");
    b
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "fuzz/corpus/container".into()));
    std::fs::create_dir_all(&dir)?;
    let mut written = 0;
    // Every format for both roles, plus mixes (q8 tables, q4 tables under f16 linears, …).
    use graft::WeightFormat::*;
    let mut formats: Vec<WeightFormats> = [F32, F16, Bf16, Q8, Q4].map(WeightFormats::uniform).to_vec();
    formats.extend(
        [(Q8, Q8), (F16, Q4), (Q4, Bf16), (Bf16, Q8Rowwise)].map(|(linear, table)| WeightFormats { linear, table }),
    );
    for (name, builder) in [("small", graft::synthetic::tiny()), ("zoo", zoo())] {
        for f in &formats {
            let bytes = builder.to_bytes(*f)?;
            // Check the seed is valid: a corpus of rejected files would fuzz only the envelope.
            graft::Model::from_slice_copy(&bytes)?;
            std::fs::write(dir.join(format!("seed-{name}-{}-{}.graft", f.linear, f.table)), bytes)?;
            written += 1;
        }
    }
    println!("wrote {written} seeds to {}", dir.display());
    Ok(())
}
