//! A `.graft` file is a valid safetensors file (DESIGN §2): the reference `safetensors`
//! crate reads every tensor written by `ModelBuilder` — in each weight format — with the
//! same names, dtypes, shapes and bytes as graft's own envelope, sees only `__pad.N` U8
//! fillers besides them, and finds the graph JSON under the metadata key `graft.graph`.

#![allow(clippy::unwrap_used)]

mod common_bad;

use std::collections::BTreeSet;
use std::path::PathBuf;

use graft::Model;
use graft::builder::WeightFormats;
use graft::container::{GRAPH_KEY, PAD_PREFIX, TENSOR_ALIGN};
use safetensors::{Dtype, SafeTensors};

#[test]
fn safetensors_reads_graft_files_in_every_format() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("safetensors_compat");
    std::fs::create_dir_all(&dir).unwrap();
    for format in ["f32", "f16", "bf16", "q8", "q4"] {
        let formats = WeightFormats::from_name(format).unwrap();
        let path = dir.join(format!("small-{format}.graft"));
        let builder = common_bad::small_model();
        builder.write(&path, formats).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let model = Model::open(&path).unwrap();
        let envelope = model.envelope();

        let st = SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{format}: {e:?}"));
        let (header_len, metadata) = SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(8 + header_len, envelope.data_start, "{format}: data section start");
        assert_eq!(envelope.data_start % TENSOR_ALIGN, 0, "{format}");

        // Graph JSON: the same string under the same key.
        let meta = metadata.metadata().as_ref().unwrap();
        assert_eq!(meta.get(GRAPH_KEY), Some(&builder.graph_json(formats).unwrap()), "{format}: graph metadata");
        assert_eq!(meta.get(GRAPH_KEY), envelope.metadata.get(GRAPH_KEY), "{format}");

        // Every tensor graft sees, safetensors sees identically.
        for t in &envelope.tensors {
            let view = st.tensor(&t.name).unwrap_or_else(|e| panic!("{format}: {}: {e:?}", t.name));
            assert_eq!(view.dtype().to_string(), t.dtype.as_str(), "{format}: {} dtype", t.name);
            assert_eq!(view.shape(), t.shape.as_slice(), "{format}: {} shape", t.name);
            assert_eq!(view.data(), model.tensor_bytes(t), "{format}: {} bytes", t.name);
            assert_eq!(
                view.data().as_ptr() as usize - bytes.as_ptr() as usize,
                t.offset,
                "{format}: {} offset",
                t.name
            );
        }
        // … and the only other tensors are U8 pads.
        let graft_names: BTreeSet<&str> = envelope.tensors.iter().map(|t| t.name.as_str()).collect();
        for (name, view) in st.iter() {
            if !graft_names.contains(name) {
                assert!(name.starts_with(PAD_PREFIX), "{format}: unexpected tensor {name}");
                assert_eq!(view.dtype(), Dtype::U8, "{format}: pad {name}");
                assert!(view.data().iter().all(|&b| b == 0), "{format}: pad {name} is zeros");
            }
        }

        // The weights really are in the requested format.
        let (linear_dtype, table_dtype) = match format {
            "f32" => ("F32", "F32"),
            "f16" => ("F16", "F16"),
            "bf16" => ("BF16", "BF16"),
            "q8" => ("I8", "U8"),
            _ => ("U8", "U8"),
        };
        assert_eq!(st.tensor("fc.weight").unwrap().dtype().to_string(), linear_dtype, "{format}");
        assert_eq!(st.tensor("emb.weight").unwrap().dtype().to_string(), table_dtype, "{format}");
        assert_eq!(st.tensor("fc.weight.scale").is_ok(), format == "q8", "{format}: q8 scales");
        assert_eq!(
            st.len(),
            graft_names.len() + st.names().iter().filter(|n| n.starts_with(PAD_PREFIX)).count(),
            "{format}"
        );
    }
}
