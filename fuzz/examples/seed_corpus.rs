//! Writes the seed corpus of a fuzz target, so that libFuzzer starts from inputs that get
//! past the first checks instead of rediscovering the formats byte by byte.
//!
//! - `container`: small valid models in every weight format, covering every op and input
//!   kind.
//! - `peft`: valid PEFT adapters for `graft::synthetic::tiny()` (LoRA, DoRA, rsLoRA with
//!   rank and alpha patterns, `lora_bias` with an explicit scale, bf16 and f16 tensors, a
//!   tensor file whose data is misaligned), packed as the target reads them: `u32` LE
//!   config length, `adapter_config.json`, `adapter_model.safetensors`. They are written
//!   by `write_peft_lora` (the same layout as PEFT's `save_pretrained`) and varied here.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --example seed_corpus -- [--target T] [DIR]`
//! (default target `container`, default DIR `fuzz/corpus/<target>`; `fuzz/run.sh` does
//! this first). Every seed is checked to load before it is written.

use std::path::{Path, PathBuf};

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

type Res<T = ()> = Result<T, Box<dyn std::error::Error>>;

fn main() -> Res {
    let mut target = "container".to_string();
    let mut dir = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--target" => target = args.next().ok_or("--target needs a value")?,
            _ => dir = Some(PathBuf::from(arg)),
        }
    }
    let dir = dir.unwrap_or_else(|| PathBuf::from(format!("fuzz/corpus/{target}")));
    std::fs::create_dir_all(&dir)?;
    match target.as_str() {
        "container" => container_seeds(&dir),
        "peft" => peft::seeds(&dir),
        other => Err(format!("unknown fuzz target `{other}` (container, peft)").into()),
    }
}

fn container_seeds(dir: &Path) -> Res {
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

mod peft {
    use std::collections::BTreeMap;
    use std::path::Path;

    use abi_stable::sabi_trait::TD_Opaque;
    use graft::adapters::{HostModelView, ModuleMap};
    use graft::builder::WeightFormats;
    use graft::synthetic::lora::{LoraSpec, write_peft_lora};
    use graft_plugin_abi::ModelView_TO;
    use safetensors::SafeTensors;
    use serde_json::{Value, json};

    use super::Res;

    /// One tensor: key, dtype name, shape, little-endian bytes.
    type Tensor = (String, &'static str, Vec<usize>, Vec<u8>);

    /// An adapter in memory.
    #[derive(Clone)]
    struct Adapter {
        config: Value,
        tensors: Vec<Tensor>,
    }

    /// Writes `spec` for `model` with `write_peft_lora` and reads it back.
    fn written(model: &graft::Model, tmp: &Path, name: &str, spec: &LoraSpec) -> Res<Adapter> {
        let dir = tmp.join(name);
        write_peft_lora(model, &dir, spec)?;
        let config = serde_json::from_slice(&std::fs::read(dir.join("adapter_config.json"))?)?;
        let bytes = std::fs::read(dir.join("adapter_model.safetensors"))?;
        let file = SafeTensors::deserialize(&bytes)?;
        let mut tensors: Vec<Tensor> =
            file.tensors().into_iter().map(|(k, v)| (k, "F32", v.shape().to_vec(), v.data().to_vec())).collect();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Adapter { config, tensors })
    }

    /// A safetensors file; `skew` extra header bytes misalign the data.
    fn safetensors(tensors: &[Tensor], skew: usize) -> Res<Vec<u8>> {
        let mut header = BTreeMap::new();
        header.insert("__metadata__".to_string(), json!({"format": "pt"}));
        let mut data = Vec::new();
        for (key, dtype, shape, bytes) in tensors {
            header.insert(
                key.clone(),
                json!({"dtype": dtype, "shape": shape, "data_offsets": [data.len(), data.len() + bytes.len()]}),
            );
            data.extend_from_slice(bytes);
        }
        let mut h = serde_json::to_vec(&header)?;
        let padded = (8 + h.len()).next_multiple_of(8) - 8 + skew;
        h.resize(padded, b' ');
        let mut out = (h.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&h);
        out.extend_from_slice(&data);
        Ok(out)
    }

    fn pack(a: &Adapter, skew: usize) -> Res<Vec<u8>> {
        let config = serde_json::to_vec(&a.config)?;
        let mut out = (config.len() as u32).to_le_bytes().to_vec();
        out.extend_from_slice(&config);
        out.extend_from_slice(&safetensors(&a.tensors, skew)?);
        Ok(out)
    }

    /// f32 bytes → bf16 (truncated) or f16 bytes.
    fn halve(t: &mut Tensor, dtype: &'static str) {
        let values = t.3.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
        t.3 = values
            .flat_map(|v| {
                let bits = if dtype == "BF16" { (v.to_bits() >> 16) as u16 } else { half::f16::from_f32(v).to_bits() };
                bits.to_le_bytes()
            })
            .collect();
        t.1 = dtype;
    }

    pub fn seeds(dir: &Path) -> Res {
        let bytes = graft::synthetic::tiny().to_bytes(WeightFormats::uniform(graft::WeightFormat::F32))?;
        let model = graft::Model::from_slice_copy(&bytes)?;
        let tmp = std::env::temp_dir().join(format!("graft-peft-seeds-{}", std::process::id()));
        let mut seeds: Vec<(&str, Vec<u8>)> = Vec::new();

        let lora = written(&model, &tmp, "lora", &LoraSpec::every_linear(2, 1))?;
        seeds.push(("lora", pack(&lora, 0)?));
        let dora = written(&model, &tmp, "dora", &LoraSpec { dora: true, ..LoraSpec::every_linear(4, 2) })?;
        seeds.push(("dora", pack(&dora, 0)?));

        // rsLoRA, rank 4 on `fc` and rank 2 on `head` through rank_pattern / alpha_pattern.
        let only = |t: &str| Some(vec![t.to_string()]);
        let fc = written(
            &model,
            &tmp,
            "rs_fc",
            &LoraSpec { rslora: true, targets: only("fc"), ..LoraSpec::every_linear(4, 3) },
        )?;
        let head = written(
            &model,
            &tmp,
            "rs_head",
            &LoraSpec { rslora: true, targets: only("head"), ..LoraSpec::every_linear(2, 4) },
        )?;
        let mut rs = fc.clone();
        rs.tensors.extend(head.tensors);
        rs.config["rank_pattern"] = json!({"head": 2});
        rs.config["alpha_pattern"] = json!({"he.*": 3.0});
        seeds.push(("rslora_patterns", pack(&rs, 0)?));

        // lora_B biases and an explicit scale (ALLoRA-style).
        let mut biased = lora.clone();
        biased.config["lora_bias"] = json!(true);
        biased.config["scaling"] = json!(0.5);
        for (module, out) in [("fc", 8usize), ("head", 1)] {
            let values: Vec<u8> = (0..out).flat_map(|i| (0.1 * i as f32 - 0.2).to_le_bytes()).collect();
            biased.tensors.push((format!("base_model.model.{module}.lora_B.bias"), "F32", vec![out], values));
        }
        seeds.push(("lora_bias_scaling", pack(&biased, 0)?));

        for dtype in ["BF16", "F16"] {
            let mut half = dora.clone();
            half.tensors.iter_mut().for_each(|t| halve(t, dtype));
            seeds.push((if dtype == "BF16" { "dora_bf16" } else { "dora_f16" }, pack(&half, 0)?));
        }
        // Misaligned tensor data: the loader copies instead of using the bytes in place.
        seeds.push(("lora_misaligned", pack(&lora, 1)?));
        seeds.push(("dora_misaligned", pack(&dora, 3)?));
        std::fs::remove_dir_all(&tmp)?;

        let map = ModuleMap::new();
        let view = HostModelView::new(&model, &map);
        for (name, seed) in &seeds {
            // Check the seed loads: a corpus of rejected adapters would fuzz only the parsers.
            let n = u32::from_le_bytes(seed[..4].try_into()?) as usize;
            let (config, tensors) = seed[4..].split_at(n);
            graft_plugin_lora::load_bytes(
                name,
                config,
                tensors.to_vec(),
                "",
                &ModelView_TO::from_ptr(&view, TD_Opaque),
            )
            .map_err(|e| format!("seed {name} does not load: {e}"))?;
            std::fs::write(dir.join(format!("seed-{name}.peft")), seed)?;
        }
        println!("wrote {} seeds to {}", seeds.len(), dir.display());
        Ok(())
    }
}
