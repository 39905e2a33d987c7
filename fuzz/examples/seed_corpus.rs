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
//! - `kinds`: valid graft adapter files for the target's MLP (static SSF; FedIns pools
//!   queried at the input and, through a prefix pass, at `r2`, one with a pooled head;
//!   hard and soft routing; error memories with the pooled, top-k and exact estimators),
//!   each behind a selector byte that varies the loader, batch, row sets, kernels and
//!   options (the layout is documented in `fuzz_targets/kinds.rs`). They are written by
//!   `graft::synthetic::kinds`.
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

/// The tensor ops of graph version 2 on small row shapes: transpose, reshape, slice,
/// gather with constant indices, broadcasting binaries against a constant, a mask and
/// `where`, unary, softmax, reduce, matmul, tile, pad, top-k values and indices, concat
/// along an axis, casts, embeddings with input and computed ids, and a 1-d convolution.
fn tensor_ops() -> ModelBuilder {
    use graft::builder::ConstValues;
    use graft::graph::ValueType::{F32, I64};
    use serde_json::json;
    let mut b = ModelBuilder::new("tensor-ops");
    b.dense_input_shaped("x", &[2, 4]);
    b.ids_input_shaped("ids", &[3]);
    b.constant("bias", &[4], ConstValues::F32(values(4, 1.0)));
    b.constant("idx", &[2], ConstValues::I64(vec![3, 0]));
    b.tensor_op("t", "transpose", &["x"], json!({"perm": [1, 0]}), &[4, 2], F32);
    b.tensor_op("r", "reshape", &["t"], json!({}), &[8], F32);
    b.tensor_op("s", "slice", &["x"], json!({"axis": 1, "start": 1, "end": 4, "step": 2}), &[2, 2], F32);
    b.tensor_op("g", "gather", &["x", "idx"], json!({"axis": 1}), &[2, 2], F32);
    b.tensor_op("a", "add", &["x", "bias"], json!({}), &[2, 4], F32);
    b.tensor_op("m", "less", &["a", "bias"], json!({}), &[2, 4], F32);
    b.tensor_op("w", "where", &["m", "a", "x"], json!({}), &[2, 4], F32);
    b.tensor_op("e", "exp", &["w"], json!({}), &[2, 4], F32);
    b.tensor_op("sm", "softmax", &["e"], json!({"axis": 1}), &[2, 4], F32);
    b.tensor_op("red", "reduce", &["sm"], json!({"reduce": "sum", "axes": [1], "keepdims": true}), &[2, 1], F32);
    b.tensor_op("mm", "matmul", &["x", "t"], json!({}), &[2, 2], F32);
    b.tensor_op("tile", "tile", &["red"], json!({}), &[2, 2], F32);
    b.tensor_op("pad", "pad", &["mm"], json!({"pads": [0, 0, 1, 1], "value": 0.5}), &[2, 4], F32);
    let top = json!({"axis": 1, "k": 2, "largest": true, "output": "values"});
    b.tensor_op("top", "topk", &["pad"], top, &[2, 2], F32);
    let top_i = json!({"axis": 1, "k": 2, "largest": true, "output": "indices"});
    b.tensor_op("ti", "topk", &["pad"], top_i, &[2, 2], I64);
    b.tensor_op("cat", "concat", &["s", "g", "tile", "top"], json!({"axis": 1}), &[2, 8], F32);
    b.tensor_op("c", "cast", &["ti"], json!({"to": "f32"}), &[2, 2], F32);
    b.tensor_op("ids2", "cast", &["c"], json!({"to": "i64"}), &[2, 2], I64);
    b.embedding("emb", "ids", Matrix::new(6, 2, values(12, 2.0)), &[3, 2]);
    b.embedding("emb2", "ids2", Matrix::new(4, 3, values(12, 3.0)), &[2, 2, 3]);
    let conv = json!({"kernel": [2], "strides": [1], "pads": [0, 0], "dilations": [1], "group": 1});
    b.conv("conv", "x", Matrix::new(3, 4, values(12, 4.0)), Some(values(3, 5.0)), conv, &[3, 3]);
    b.tensor_op("flat", "reshape", &["conv"], json!({}), &[9], F32);
    for out in ["cat", "emb", "emb2", "flat", "r", "c"] {
        b.output(out, out);
    }
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
        "kinds" => kinds::seeds(&dir),
        other => Err(format!("unknown fuzz target `{other}` (container, peft, kinds)").into()),
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
    for (name, builder) in [("small", graft::synthetic::tiny()), ("zoo", zoo()), ("tensor", tensor_ops())] {
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

mod kinds {
    use std::path::Path;

    use graft::adapters::{Registry, RowAdapters};
    use graft::builder::{Matrix, ModelBuilder, WeightFormats};
    use graft::graph::Activation;
    use graft::synthetic::kinds::{NamedTensor, SsfPoolSpec, write_adapter_file, write_routing, write_ssf_pool};
    use graft::{Input, Session, SessionOptions};
    use serde_json::{Value, json};

    use super::Res;

    /// The target's model; keep in sync with `model()` in `fuzz_targets/kinds.rs`.
    fn model() -> ModelBuilder {
        let values = |n: usize, seed: f32| (0..n).map(|i| ((i as f32 + seed) * 0.37).sin() * 0.6).collect::<Vec<_>>();
        let mut b = ModelBuilder::new("kinds");
        b.dense_input("x", 6);
        b.linear("fc1", "x", Matrix::new(8, 6, values(48, 1.0)), Some(values(8, 2.0)));
        b.activation("r1", Activation::Relu, "fc1");
        b.linear("fc2", "r1", Matrix::new(4, 8, values(32, 3.0)), Some(values(4, 4.0)));
        b.activation("r2", Activation::Relu, "fc2");
        b.linear("fc3", "r2", Matrix::new(1, 4, values(4, 5.0)), Some(vec![0.1]));
        b.activation("prob", Activation::Sigmoid, "fc3");
        b.output("logit", "fc3");
        b.output("prob", "prob");
        b
    }

    /// Which loader the target uses (selector bits 0–1).
    #[derive(Clone, Copy)]
    enum Loader {
        /// `Registry::load_path`: the kind from the file's metadata.
        Detect,
        /// `Registry::load` as the file's own kind.
        Named,
    }

    /// A selector byte (layout in `fuzz_targets/kinds.rs`): `rows` indexes 1, 3, 8, 37;
    /// `pattern` picks the rows' adapter sets.
    fn selector(kind: &str, loader: Loader, rows: u8, pattern: u8, scalar: bool, config_option: bool) -> u8 {
        let kind = match (loader, kind) {
            (Loader::Detect, _) => 0,
            (Loader::Named, "ssf-pool") => 1,
            (Loader::Named, "error-memory") => 2,
            (Loader::Named, _) => 3,
        };
        kind | (rows & 3) << 2 | (pattern & 3) << 4 | u8::from(scalar) << 6 | u8::from(config_option) << 7
    }

    /// Deterministic values around `center`.
    fn wave(n: usize, seed: f32, center: f32, amplitude: f32) -> Vec<f32> {
        (0..n).map(|i| center + amplitude * ((i as f32 + seed) * 0.73).sin()).collect()
    }

    fn tensor(name: &str, shape: &[usize], seed: f32, center: f32, amplitude: f32) -> NamedTensor {
        (name.into(), shape.to_vec(), wave(shape.iter().product(), seed, center, amplitude))
    }

    fn error_memory(extra: Value) -> Value {
        let mut config = json!({
            "kind": "error-memory", "format_version": 1, "key_node": "r2", "output_node": "prob",
            "output_is": "prob", "tables": 4, "bits": 3, "seed": 11, "lambda": 0.5,
        });
        if let (Some(config), Value::Object(extra)) = (config.as_object_mut(), extra) {
            config.extend(extra);
        }
        config
    }

    pub fn seeds(dir: &Path) -> Res {
        let bytes = model().to_bytes(WeightFormats::uniform(graft::WeightFormat::F32))?;
        let model = graft::Model::from_slice_copy(&bytes)?;
        let tmp = std::env::temp_dir().join(format!("graft-kinds-seeds-{}", std::process::id()));
        std::fs::create_dir_all(&tmp)?;
        // (name, selector, file path), each file written below.
        let mut files: Vec<(String, u8, std::path::PathBuf)> = Vec::new();
        let mut add = |name: &str, kind: &str, selectors: &[(Loader, u8, u8, bool, bool)]| {
            for (i, &(loader, rows, pattern, scalar, config)) in selectors.iter().enumerate() {
                let byte = selector(kind, loader, rows, pattern, scalar, config);
                files.push((format!("{name}-{i}"), byte, tmp.join(format!("{name}.safetensors"))));
            }
        };
        use Loader::{Detect, Named};

        // Static SSF: a vector γ/β at a linear, a `[1, C]` one at an activation.
        let ssf = json!({"kind": "ssf-pool", "format_version": 1, "sites": [
            {"node": "fc1", "gamma": "g1", "beta": "b1"}, {"node": "r2", "gamma": "g2", "beta": "b2"}]});
        write_adapter_file(
            &tmp.join("ssf.safetensors"),
            &ssf,
            &[
                tensor("g1", &[8], 1.0, 1.0, 0.3),
                tensor("b1", &[8], 2.0, 0.0, 0.2),
                tensor("g2", &[1, 4], 3.0, 1.0, 0.3),
                tensor("b2", &[1, 4], 4.0, 0.0, 0.2),
            ],
        )?;
        add("ssf", "ssf-pool", &[(Detect, 1, 1, false, false), (Named, 3, 2, true, true)]);

        // A FedIns pool queried at the input, with a pooled head at `fc3`.
        let (p, pool) = (5, json!({"keys": "keys", "query": "x", "top_k": 2}));
        let head = json!({"node": "fc3", "weight": "hw", "bias": "hb"});
        let pool_x = json!({"kind": "ssf-pool", "format_version": 1, "pool": pool, "head": head, "sites": [
            {"node": "fc1", "gamma": "g1", "beta": "b1"}, {"node": "fc2", "gamma": "g2", "beta": "b2"}]});
        write_adapter_file(
            &tmp.join("pool-x.safetensors"),
            &pool_x,
            &[
                tensor("keys", &[p, 6], 5.0, 0.0, 1.0),
                tensor("g1", &[p, 8], 6.0, 1.0, 0.3),
                tensor("b1", &[p, 8], 7.0, 0.0, 0.2),
                tensor("g2", &[p, 4], 8.0, 1.0, 0.3),
                tensor("b2", &[p, 4], 9.0, 0.0, 0.2),
                tensor("hw", &[p, 1, 4], 10.0, 0.0, 0.5),
                tensor("hb", &[p, 1], 11.0, 0.0, 0.1),
            ],
        )?;
        add(
            "pool-x",
            "ssf-pool",
            &[(Detect, 2, 1, false, false), (Named, 3, 2, true, false), (Detect, 0, 3, false, true)],
        );

        // A pool queried at `r2`, after its sites: the base query needs a prefix pass.
        let spec = SsfPoolSpec { query: "r2", sites: &["fc1", "r1"], pool: 4, top_k: 3, strength: 0.2, seed: 3 };
        write_ssf_pool(&model, &tmp.join("pool-r2.safetensors"), &spec)?;
        add(
            "pool-r2",
            "ssf-pool",
            &[(Detect, 2, 2, false, false), (Detect, 3, 1, false, true), (Named, 1, 0, true, false)],
        );

        // Hard routing from `r1` replacing the logit.
        write_routing(&model, &tmp.join("routing-hard.safetensors"), "r1", "fc3", 3, &[5], 5)?;
        add(
            "routing-hard",
            "routing",
            &[(Detect, 1, 1, false, false), (Named, 3, 0, false, false), (Detect, 2, 2, true, true)],
        );

        // Soft routing from the input, with biases, replacing the probability.
        let (k, dims) = (2, [6usize, 3, 1]);
        let routing_soft = json!({"kind": "routing", "format_version": 1, "input_node": "x", "output_node": "prob",
            "output_is": "prob", "clusters": k, "dims": dims, "mode": "soft", "use_bias": true});
        let mut tensors = vec![tensor("centers", &[k, 6], 12.0, 0.0, 0.4)];
        for l in 0..dims.len() - 1 {
            let (i, o) = (dims[l], dims[l + 1]);
            tensors.push(tensor(&format!("shared.{l}.weight"), &[i, o], 13.0 + l as f32, 0.0, 0.6));
            tensors.push(tensor(&format!("shared.{l}.bias"), &[o], 14.0 + l as f32, 0.0, 0.1));
            for j in 0..k {
                tensors.push(tensor(&format!("cluster.{j}.{l}.weight"), &[i, o], 15.0 + j as f32, 1.0, 0.3));
                tensors.push(tensor(&format!("cluster.{j}.{l}.bias"), &[o], 16.0 + j as f32, 0.0, 0.1));
            }
        }
        write_adapter_file(&tmp.join("routing-soft.safetensors"), &routing_soft, &tensors)?;
        add("routing-soft", "routing", &[(Detect, 2, 1, false, false), (Named, 3, 2, true, true)]);

        // Error memories keyed on `r2` compensating the probability, one per estimator,
        // and one in logit space with explicit projections.
        let memories = [
            ("memory-pooled", error_memory(json!({"estimate": "pooled"})), vec![]),
            ("memory-topk", error_memory(json!({"estimate": "topk", "top_k": 3, "tau": 0.5, "decay": 0.95})), vec![]),
            (
                "memory-exact",
                error_memory(
                    json!({"estimate": "exact", "top_k": 3, "exact_capacity": 16, "threshold": 0.01, "pending": 8}),
                ),
                vec![],
            ),
            (
                "memory-logit",
                error_memory(json!({"tables": 2, "projections": "R", "space": "logit", "lambda": 1.0})),
                vec![tensor("R", &[6, 4], 17.0, 0.0, 1.0)],
            ),
        ];
        for (name, config, tensors) in &memories {
            write_adapter_file(&tmp.join(format!("{name}.safetensors")), config, tensors)?;
            add(
                name,
                "error-memory",
                &[(Detect, 2, 1, false, false), (Named, 3, 2, false, true), (Detect, 1, 0, true, false)],
            );
        }

        // Check every file loads and runs: a corpus of rejected adapters would fuzz only
        // the parsers.
        let registry = Registry::new(&model);
        let mut session = Session::new(&model, SessionOptions { max_batch: 4, ..Default::default() })?;
        let x: Vec<f32> = super::values(4 * 6, 18.0);
        for (name, byte, path) in &files {
            let adapter = registry.load_path(name, path, "").map_err(|e| format!("seed {name} does not load: {e}"))?;
            registry.upsert(adapter)?;
            let mut rows = RowAdapters::new(&registry);
            for r in 0..4 {
                if r % 2 == 0 { rows.push(name)? } else { rows.push_base()? }
            }
            session
                .run_with(&[Input::dense("x", &x, 6)], &rows)
                .map_err(|e| format!("seed {name} does not run: {e}"))?;
            let mut seed = vec![*byte];
            seed.extend_from_slice(&std::fs::read(path)?);
            std::fs::write(dir.join(format!("seed-{name}.kinds")), seed)?;
        }
        std::fs::remove_dir_all(&tmp)?;
        println!("wrote {} seeds to {}", files.len(), dir.display());
        Ok(())
    }
}
