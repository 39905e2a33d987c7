//! Malformed containers are refused with the typed [`Error`] that names the culprit —
//! never a panic.
//!
//! Every case starts from one valid container ([`common_bad::small_model`]) and breaks
//! one thing: the envelope bytes (truncations, length prefixes, header JSON, tensor
//! entries, offsets, alignment) or the graph JSON in `__metadata__`/`graft.graph`
//! (version, ops, edges, names, outputs, attributes, weights, widths). Cases are tables of
//! `(name, bytes, expected error pattern)`; each table runs every case, catching panics,
//! and reports all mismatches at once. Separate tests cover `Model::from_bytes` on a
//! misaligned buffer and `Model::open`/`Model::load` on missing, empty and malformed files.

#![allow(clippy::unwrap_used)]

mod common_bad;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;

use graft::builder::WeightFormats;
use graft::container::{MAX_HEADER_LEN, PAD_PREFIX, TENSOR_ALIGN};
use graft::{Error, Model, Session, SessionOptions};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------
// Taking a container apart and putting it back together.

/// A container split into its header JSON and its data section.
#[derive(Clone)]
struct Parts {
    header: Value,
    data: Vec<u8>,
}

impl Parts {
    /// The valid f32 container.
    fn valid() -> Parts {
        Parts::of(&common_bad::small_container("f32"))
    }

    fn of(bytes: &[u8]) -> Parts {
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        Parts { header: serde_json::from_slice(&bytes[8..8 + n]).unwrap(), data: bytes[8 + n..].to_vec() }
    }

    /// Re-emits with a correct length prefix and the data section 64-byte aligned.
    fn bytes(&self) -> Vec<u8> {
        self.emit(None, 0)
    }

    /// Re-emits with `skew` spaces beyond the aligning padding, and a length prefix of
    /// `prefix` instead of the true header length if given.
    fn emit(&self, prefix: Option<u64>, skew: usize) -> Vec<u8> {
        let mut header = serde_json::to_vec(&self.header).unwrap();
        let padded = (8 + header.len()).next_multiple_of(TENSOR_ALIGN) - 8 + skew;
        header.resize(padded, b' ');
        assemble(prefix.unwrap_or(padded as u64), &header, &self.data)
    }

    fn graph(&self) -> Value {
        serde_json::from_str(self.header["__metadata__"]["graft.graph"].as_str().unwrap()).unwrap()
    }

    fn set_graph(&mut self, graph: &Value) {
        self.header["__metadata__"]["graft.graph"] = graph.to_string().into();
    }

    /// `(name, begin, end)` of every tensor entry, pads included, in data order.
    fn layout(&self) -> Vec<(String, u64, u64)> {
        let mut v: Vec<_> = self
            .header
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| *k != "__metadata__")
            .map(|(k, e)| (k.clone(), e["data_offsets"][0].as_u64().unwrap(), e["data_offsets"][1].as_u64().unwrap()))
            .collect();
        v.sort_by_key(|t| (t.1, t.2));
        v
    }

    fn set_offsets(&mut self, tensor: &str, begin: u64, end: u64) {
        self.header[tensor]["data_offsets"] = json!([begin, end]);
    }
}

/// `u64 LE prefix | header | data`.
fn assemble(prefix: u64, header: &[u8], data: &[u8]) -> Vec<u8> {
    [&prefix.to_le_bytes()[..], header, data].concat()
}

/// The valid container with its header edited by `f`.
fn edit_header(f: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut p = Parts::valid();
    f(&mut p.header);
    p.bytes()
}

/// The valid container with its graph JSON edited by `f`.
fn edit_graph(f: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut p = Parts::valid();
    let mut g = p.graph();
    f(&mut g);
    p.set_graph(&g);
    p.bytes()
}

/// The graph node called `name`.
fn node<'a>(g: &'a mut Value, name: &str) -> &'a mut Value {
    g["nodes"].as_array_mut().unwrap().iter_mut().find(|n| n["name"] == name).unwrap()
}

// ---------------------------------------------------------------------------------------
// Running a table of cases.

type Check<'a> = Box<dyn Fn(&Error) -> bool + 'a>;

/// `(name, bytes, pattern)`: `pattern` is a `matches!` pattern (with an optional guard,
/// which may use locals: the check is a `move` closure).
macro_rules! case {
    ($name:expr, $bytes:expr, $($pattern:tt)+) => {
        ($name, $bytes, stringify!($($pattern)+), Box::new(move |e: &Error| matches!(e, $($pattern)+)) as Check<'_>)
    };
}

/// Parses every case, and fails listing each one that was accepted, panicked, or gave
/// an error other than its pattern.
fn check_all(cases: Vec<(&str, Vec<u8>, &str, Check<'_>)>) {
    let failures: Vec<String> = cases
        .into_iter()
        .filter_map(|(name, bytes, pattern, check)| {
            match catch_unwind(AssertUnwindSafe(|| Model::from_slice_copy(&bytes))) {
                Err(_) => Some(format!("{name}: PANICKED")),
                Ok(Ok(_)) => Some(format!("{name}: accepted")),
                Ok(Err(e)) if check(&e) => None,
                Ok(Err(e)) => Some(format!("{name}: expected {pattern}\n    got {e:?}\n    ({e})")),
            }
        })
        .collect();
    assert!(failures.is_empty(), "{} case(s) failed:\n{}", failures.len(), failures.join("\n"));
}

// ---------------------------------------------------------------------------------------
// The cases.

#[test]
fn the_valid_container_parses_and_runs() {
    let model = Model::from_slice_copy(&Parts::valid().bytes()).unwrap();
    assert_eq!(common_bad::run_zeros(&model, 3).unwrap(), graft::kernels::available().len());
    // The re-emitter round-trips byte for byte, so every mutation below is the only change.
    assert_eq!(Parts::valid().bytes(), common_bad::small_container("f32"));
}

#[test]
fn envelope_errors_are_typed() {
    let valid = Parts::valid().bytes();
    let len = valid.len() as u64;
    let p = Parts::valid();
    let header_len = len - p.data.len() as u64 - 8;
    let data_len = p.data.len() as u64;
    let layout = p.layout();
    let (last, last_begin, _) = layout.last().unwrap();
    let first_real = &layout.iter().find(|t| !t.0.starts_with(PAD_PREFIX)).unwrap().0;
    let (pad, pad_begin, pad_end) = layout.iter().find(|t| t.0.starts_with(PAD_PREFIX)).unwrap();
    // The real tensor right after that pad, and a copy of its entry.
    let (after_pad, _, after_end) = layout.iter().find(|t| t.1 == *pad_end).unwrap();
    let after_entry = p.header[after_pad].clone();
    let (last_begin, pad_begin, pad_end, after_end) = (*last_begin, *pad_begin, *pad_end, *after_end);

    check_all(vec![
        case!("empty buffer", vec![], Error::Truncated { what: "header length", needed: 8, available: 0 }),
        case!(
            "truncated inside the length prefix",
            valid[..5].to_vec(),
            Error::Truncated { what: "header length", needed: 8, available: 5 }
        ),
        case!(
            "truncated inside the header",
            valid[..8 + header_len as usize / 2].to_vec(),
            Error::Truncated { what: "header", needed, .. } if *needed == 8 + header_len
        ),
        case!(
            "truncated inside the tensor data",
            valid[..valid.len() - 10].to_vec(),
            Error::TensorOutOfRange { tensor, begin, data_len: dl, .. }
                if tensor == last && *begin == last_begin && *dl == data_len - 10
        ),
        case!(
            "header length larger than the file",
            p.emit(Some(len), 0),
            Error::Truncated { what: "header", needed, available } if *needed == len + 8 && *available == len
        ),
        case!(
            "header length over the limit",
            p.emit(Some(MAX_HEADER_LEN + 1), 0),
            Error::HeaderTooLarge { declared, limit: MAX_HEADER_LEN } if *declared == MAX_HEADER_LEN + 1
        ),
        case!("header length u64::MAX", p.emit(Some(u64::MAX), 0), Error::HeaderTooLarge { declared: u64::MAX, .. }),
        case!("header length shorter than the JSON", p.emit(Some(header_len - 64), 0), Error::HeaderJson { .. }),
        case!(
            "header not JSON",
            assemble(56, &[b'#'; 56], &p.data),
            Error::HeaderJson { detail } if detail.contains("not a JSON object")
        ),
        case!("header not UTF-8", assemble(56, &[0xff; 56], &p.data), Error::HeaderJson { .. }),
        case!(
            "header JSON not an object",
            edit_header(|h| *h = json!([1, 2, 3])),
            Error::HeaderJson { detail } if detail.contains("not a JSON object")
        ),
        case!(
            "__metadata__ not an object",
            edit_header(|h| h["__metadata__"] = json!("graph")),
            Error::HeaderJson { detail } if detail.contains("__metadata__")
        ),
        case!(
            "__metadata__ value not a string",
            edit_header(|h| h["__metadata__"]["graft.graph"] = json!({"version": 1})),
            Error::HeaderJson { detail } if detail.contains("graft.graph")
        ),
        case!(
            "missing graft.graph key",
            edit_header(|h| {
                h["__metadata__"].as_object_mut().unwrap().remove("graft.graph");
            }),
            Error::GraphJson { detail } if detail.contains("graft.graph")
        ),
        case!(
            "tensor entry not an object",
            edit_header(|h| h["fc.bias"] = json!([0, 32])),
            Error::TensorEntry { tensor, .. } if tensor == "fc.bias"
        ),
        case!(
            "tensor entry with an unknown field",
            edit_header(|h| h["fc.bias"]["layout"] = json!("nchw")),
            Error::TensorEntry { tensor, detail } if tensor == "fc.bias" && detail.contains("layout")
        ),
        case!(
            "unknown dtype",
            edit_header(|h| h["fc.bias"]["dtype"] = json!("F12")),
            Error::UnknownDtype { tensor, dtype } if tensor == "fc.bias" && dtype == "F12"
        ),
        case!(
            "negative shape entry",
            edit_header(|h| h["fc.bias"]["shape"] = json!([-8])),
            Error::TensorEntry { tensor, .. } if tensor == "fc.bias"
        ),
        case!(
            "byte size not shape x dtype",
            edit_header(|h| h["fc.bias"]["shape"] = json!([9])),
            Error::TensorEntry { tensor, detail } if tensor == "fc.bias" && detail.contains("36 bytes")
        ),
        case!(
            "shape product overflows",
            edit_header(|h| h["fc.bias"]["shape"] = json!([u64::MAX, u64::MAX])),
            Error::TensorEntry { tensor, detail } if tensor == "fc.bias" && detail.contains("overflows")
        ),
        case!(
            "data_offsets end before begin",
            edit_header(|h| h["fc.bias"]["data_offsets"] = json!([32, 0])),
            Error::TensorEntry { tensor, detail } if tensor == "fc.bias" && detail.contains("end before")
        ),
        case!(
            "data_offsets with three entries",
            edit_header(|h| h["fc.bias"]["data_offsets"] = json!([0, 16, 32])),
            Error::TensorEntry { tensor, .. } if tensor == "fc.bias"
        ),
        case!(
            "tensor past the end of the data",
            edit_header(|h| {
                h["extra"] = json!({"dtype": "U8", "shape": [64], "data_offsets": [data_len, data_len + 64]});
            }),
            Error::TensorOutOfRange { tensor, begin, end, data_len: dl }
                if tensor == "extra" && *begin == data_len && *end == data_len + 64 && *dl == data_len
        ),
        case!(
            "two tensors overlapping",
            edit_header(|h| h["alias"] = after_entry.clone()),
            Error::TensorOverlap { first, second }
                if [first.as_str(), second.as_str()].contains(&"alias")
                    && [first.as_str(), second.as_str()].contains(&after_pad.as_str())
        ),
        case!(
            "a gap between tensors (pad removed)",
            edit_header(|h| {
                h.as_object_mut().unwrap().remove(pad);
            }),
            Error::TensorGap { offset } if *offset == pad_begin
        ),
        case!(
            "trailing bytes after the last tensor",
            [valid.clone(), vec![0; 64]].concat(),
            Error::TensorGap { offset } if *offset == data_len
        ),
        case!(
            "data section not 64-byte aligned",
            p.emit(None, 4),
            Error::Misaligned { tensor, offset, align: 64 } if tensor == first_real && offset % 64 == 4
        ),
        case!(
            "tensor not 64-byte aligned (pad shrunk by 4, tensor moved up)",
            {
                // The pad ends 4 bytes early, the tensor after it starts there, and a new
                // 4-byte pad closes the hole the move leaves behind it: still no gap.
                let mut q = p.clone();
                q.header[pad]["shape"] = json!([pad_end - pad_begin - 4]);
                q.set_offsets(pad, pad_begin, pad_end - 4);
                q.set_offsets(after_pad, pad_end - 4, after_end - 4);
                q.header[format!("{PAD_PREFIX}moved")] =
                    json!({"dtype": "U8", "shape": [4], "data_offsets": [after_end - 4, after_end]});
                q.bytes()
            },
            Error::Misaligned { tensor, offset, align: 64 } if tensor == after_pad && offset % 64 == 60
        ),
    ]);
}

#[test]
fn graph_errors_are_typed() {
    check_all(vec![
        case!(
            "graph JSON invalid",
            edit_header(|h| h["__metadata__"]["graft.graph"] = json!("{\"version\": 1,")),
            Error::GraphJson { detail } if detail.contains("invalid JSON")
        ),
        case!("graph JSON not an object", edit_graph(|g| *g = json!([])), Error::GraphJson { .. }),
        case!(
            "unknown top-level key",
            edit_graph(|g| g["adapters"] = json!([])),
            Error::GraphJson { detail } if detail.contains("adapters")
        ),
        case!(
            "future format version",
            edit_graph(|g| g["version"] = json!(graft::graph::FORMAT_VERSION + 1)),
            Error::UnsupportedVersion { found, supported: graft::graph::FORMAT_VERSION }
                if *found == graft::graph::FORMAT_VERSION + 1
        ),
        case!(
            "version 0",
            edit_graph(|g| g["version"] = json!(0)),
            Error::UnsupportedVersion { found: 0, supported: graft::graph::FORMAT_VERSION }
        ),
        case!(
            "version not an integer",
            edit_graph(|g| g["version"] = json!("1")),
            Error::GraphJson { detail } if detail.contains("version")
        ),
        case!(
            "unknown op",
            edit_graph(|g| node(g, "act")["op"] = json!("swish2")),
            Error::UnknownOp { node, op } if node == "act" && op == "swish2"
        ),
        case!(
            "cycle: two nodes feeding each other",
            edit_graph(|g| node(g, "fc")["inputs"] = json!(["act"])),
            Error::Cycle { node } if node == "fc" || node == "act"
        ),
        case!(
            "cycle: a node feeding itself",
            edit_graph(|g| node(g, "act")["inputs"] = json!(["act"])),
            Error::Cycle { node } if node == "act"
        ),
        case!(
            "dangling edge",
            edit_graph(|g| node(g, "act")["inputs"] = json!(["nope"])),
            Error::DanglingEdge { node, value } if node == "act" && value == "nope"
        ),
        case!(
            "duplicate node name",
            edit_graph(|g| node(g, "act")["name"] = json!("fc")),
            Error::DuplicateName { kind: "node", name } if name == "fc"
        ),
        case!(
            "node named like an input",
            edit_graph(|g| node(g, "act")["name"] = json!("dense")),
            Error::DuplicateName { kind: "node", name } if name == "dense"
        ),
        case!(
            "duplicate input name",
            edit_graph(|g| g["inputs"][1]["name"] = json!("dense")),
            Error::DuplicateName { kind: "input", name } if name == "dense"
        ),
        case!(
            "duplicate output name",
            edit_graph(|g| g["outputs"] = json!([{"name": "s", "value": "head"}, {"name": "s", "value": "cat"}])),
            Error::DuplicateName { kind: "output", name } if name == "s"
        ),
        case!(
            "output refers to a missing value",
            edit_graph(|g| g["outputs"][0]["value"] = json!("nope")),
            Error::InvalidOutput { output, detail } if output == "score" && detail.contains("nope")
        ),
        case!(
            "output exposes an ids input",
            edit_graph(|g| g["outputs"][0]["value"] = json!("ids")),
            Error::InvalidOutput { output, .. } if output == "score"
        ),
        case!(
            "no outputs",
            edit_graph(|g| g["outputs"] = json!([])),
            Error::InvalidOutput { detail, .. } if detail.contains("no outputs")
        ),
        case!(
            "unknown node attribute",
            edit_graph(|g| node(g, "act")["alpha"] = json!(0.1)),
            Error::InvalidAttribute { node, attribute, .. } if node == "act" && attribute == "alpha"
        ),
        case!(
            "unknown embedding_bag mode",
            edit_graph(|g| node(g, "emb")["mode"] = json!("max")),
            Error::InvalidAttribute { node, attribute, .. } if node == "emb" && attribute == "mode"
        ),
        case!(
            "unknown input kind",
            edit_graph(|g| g["inputs"][0]["kind"] = json!("image")),
            Error::GraphJson { detail } if detail.contains("image")
        ),
        case!(
            "dense input of width 0",
            edit_graph(|g| g["inputs"][0]["width"] = json!(0)),
            Error::GraphJson { detail } if detail.contains("dense")
        ),
        case!(
            "weight declared q8 but stored F32",
            edit_graph(|g| g["weights"]["fc.weight"]["format"] = json!("q8")),
            Error::TensorMismatch { tensor, expected, actual }
                if tensor == "fc.weight" && expected.starts_with("I8") && actual.starts_with("F32")
        ),
        case!(
            "weight of the wrong shape",
            edit_graph(|g| g["weights"]["fc.weight"]["shape"] = json!([8, 5])),
            Error::TensorMismatch { tensor, expected, actual }
                if tensor == "fc.weight" && expected.contains("[8, 5]") && actual.contains("[8, 4]")
        ),
        case!(
            "weight with an unknown format",
            edit_graph(|g| g["weights"]["fc.weight"]["format"] = json!("q3")),
            Error::GraphJson { detail } if detail.contains("fc.weight") && detail.contains("q3")
        ),
        case!(
            "weight without a tensor",
            edit_graph(|g| {
                let w = g["weights"].as_object_mut().unwrap().remove("fc.weight").unwrap();
                g["weights"]["fc.w"] = w;
                node(g, "fc")["weight"] = json!("fc.w");
            }),
            Error::MissingTensor { node, tensor } if node == "fc.w" && tensor == "fc.w"
        ),
        case!(
            "node names a weight the graph lacks",
            edit_graph(|g| node(g, "fc")["weight"] = json!("nope")),
            Error::MissingTensor { node, tensor } if node == "fc" && tensor == "nope"
        ),
        case!(
            "weight columns overflow the row size (q8_rowwise)",
            edit_graph(|g| g["weights"]["emb.weight"] = json!({"format": "q8_rowwise", "shape": [1, u64::MAX]})),
            Error::GraphJson { detail } if detail.contains("emb.weight")
        ),
        case!(
            "weight with absurd columns (q4)",
            edit_graph(|g| g["weights"]["emb.weight"] = json!({"format": "q4", "shape": [10, u64::MAX / 8]})),
            Error::TensorMismatch { tensor, .. } if tensor == "emb.weight"
        ),
        case!(
            "bias vector of the wrong length",
            edit_graph(|g| node(g, "fc")["bias"] = json!("head.bias")),
            Error::TensorMismatch { tensor, expected, .. } if tensor == "head.bias" && expected.contains("[8]")
        ),
        case!(
            "bias that is a matrix",
            edit_graph(|g| node(g, "fc")["bias"] = json!("fc.weight")),
            Error::TensorMismatch { tensor, .. } if tensor == "fc.weight"
        ),
        case!(
            "linear input width does not match the weight columns",
            edit_graph(|g| g["inputs"][0]["width"] = json!(5)),
            Error::ShapeMismatch { node, detail } if node == "fc" && detail.contains("4 columns")
        ),
        case!(
            "embedding_bag fed by a dense input",
            edit_graph(|g| node(g, "emb")["inputs"] = json!(["dense"])),
            Error::ShapeMismatch { node, .. } if node == "emb"
        ),
        case!(
            "linear fed by an ids input",
            edit_graph(|g| node(g, "fc")["inputs"] = json!(["ids"])),
            Error::ShapeMismatch { node, detail } if node == "fc" && detail.contains("ids")
        ),
        case!(
            "activation with two inputs",
            edit_graph(|g| node(g, "act")["inputs"] = json!(["fc", "fc"])),
            Error::ShapeMismatch { node, .. } if node == "act"
        ),
        case!(
            "concat width overflows",
            edit_graph(|g| {
                let huge = usize::MAX / 2 + 1;
                g["inputs"].as_array_mut().unwrap().extend([
                    json!({"name": "big1", "kind": "dense", "width": huge}),
                    json!({"name": "big2", "kind": "dense", "width": huge}),
                ]);
                g["nodes"].as_array_mut().unwrap().push(json!({"name": "wide", "op": "concat", "inputs": ["big1", "big2"]}));
            }),
            Error::ShapeMismatch { node, .. } if node == "wide"
        ),
        case!(
            "dot_interaction width overflows",
            edit_graph(|g| {
                g["inputs"].as_array_mut().unwrap().extend([
                    json!({"name": "big1", "kind": "dense", "width": usize::MAX}),
                    json!({"name": "big2", "kind": "dense", "width": usize::MAX}),
                ]);
                g["nodes"].as_array_mut().unwrap().push(json!({"name": "dot", "op": "dot_interaction", "inputs": ["big1", "big2"]}));
            }),
            Error::ShapeMismatch { node, .. } if node == "dot"
        ),
    ]);
}

#[test]
fn absurd_widths_are_refused_when_planning() {
    // Nothing backs a dense input's width, so a consistent graph may declare any; planning
    // must refuse what it cannot address (2^62) or allocate (2^44: 2^49 bytes of
    // activations, beyond any address space) instead of overflowing or aborting.
    for width in [1u64 << 44, 1 << 62] {
        let bytes = edit_graph(|g| {
            g["inputs"].as_array_mut().unwrap().push(json!({"name": "big", "kind": "dense", "width": width}));
            g["nodes"].as_array_mut().unwrap().push(json!({"name": "wide", "op": "concat", "inputs": ["big", "big"]}));
            g["outputs"].as_array_mut().unwrap().push(json!({"name": "wide", "value": "wide"}));
        });
        let model = Model::from_slice_copy(&bytes).unwrap();
        let err = Session::new(&model, SessionOptions { max_batch: 4, ..SessionOptions::default() }).unwrap_err();
        // 2^62 cannot be addressed (an option error); 2^44 can, but not allocated.
        let named = match &err {
            Error::InvalidOption { detail } => detail.contains("max_batch 4"),
            Error::OutOfMemory { what, .. } => what.contains("max_batch 4"),
            _ => false,
        };
        assert!(named, "{width}: {err:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Buffers and files.

/// A `'static` copy of `bytes` (leaked) at an address that is `residue` modulo 64.
fn leaked_copy(bytes: &[u8], residue: usize) -> &'static [u8] {
    let buf: &'static mut [u8] = Vec::leak(vec![0u8; bytes.len() + 64]);
    let base = buf.as_ptr() as usize;
    let shift = (0..64).find(|s| (base + s) % 64 == residue).unwrap();
    buf[shift..shift + bytes.len()].copy_from_slice(bytes);
    &buf[shift..shift + bytes.len()]
}

#[test]
fn from_bytes_refuses_a_misaligned_buffer() {
    let valid = common_bad::small_container("f32");
    for residue in [1, 2, 3, 33] {
        let misaligned = leaked_copy(&valid, residue);
        let err = Model::from_bytes(misaligned).unwrap_err();
        assert!(
            matches!(err, Error::MisalignedBuffer { address, align: 4 } if address == misaligned.as_ptr() as usize),
            "{residue}: {err:?}"
        );
    }
    // 4-byte alignment is all `from_bytes` asks: such buffers parse in place and run on
    // every kernel table (tensors are then 4-, not 64-byte aligned in memory).
    for format in ["f32", "f16", "bf16", "q8", "q4"] {
        for residue in [0, 4, 32] {
            let bytes = common_bad::small_container(format);
            let model = Model::from_bytes(leaked_copy(&bytes, residue)).unwrap();
            let runs = common_bad::run_zeros(&model, 2).unwrap();
            assert_eq!(runs, graft::kernels::available().len(), "{format} at {residue} mod 64");
        }
    }
}

/// A path in this test binary's scratch directory.
fn scratch_path(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("malformed");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn open_reports_a_missing_file_with_its_path() {
    let path = scratch_path("does-not-exist.graft");
    let _ = std::fs::remove_file(&path);
    let err = Model::open(&path).unwrap_err();
    assert!(
        matches!(&err, Error::Io { path: p, source } if p.ends_with("does-not-exist.graft") && source.kind() == std::io::ErrorKind::NotFound),
        "{err:?}"
    );
    assert!(err.to_string().contains("does-not-exist.graft"), "{err}");
}

#[test]
fn open_and_load_wrap_malformed_files_in_in_file() {
    let valid = common_bad::small_container("f32");
    let cases = vec![
        case!("empty.graft", vec![], Error::Truncated { available: 0, .. }),
        case!("truncated.graft", valid[..valid.len() - 1].to_vec(), Error::TensorOutOfRange { .. }),
        case!("future.graft", edit_graph(|g| g["version"] = json!(7)), Error::UnsupportedVersion { found: 7, .. }),
    ];
    for (name, bytes, pattern, check) in cases {
        let path = scratch_path(name);
        std::fs::write(&path, bytes).unwrap();
        for (how, result) in [("open", Model::open(&path)), ("load", Model::load(&path))] {
            let err = result.unwrap_err();
            assert!(matches!(&err, Error::InFile { path: p, .. } if p.ends_with(name)), "{how} {name}: {err:?}");
            assert!(check(err.root()), "{how} {name}: root is {:?}, expected {pattern}", err.root());
            assert!(err.to_string().contains(name), "{how} {name}: message `{err}` lacks the file name");
        }
    }
}

#[test]
fn open_accepts_what_the_builder_writes() {
    let path = scratch_path("valid.graft");
    common_bad::small_model().write(&path, WeightFormats::default()).unwrap();
    let model = Model::open(&path).unwrap();
    assert_eq!(model.source(), Some(path.display().to_string().as_str()));
    assert_eq!(common_bad::run_zeros(&model, 4).unwrap(), graft::kernels::available().len());
}
