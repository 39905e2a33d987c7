#!/usr/bin/env python3
"""ONNX Runtime int8 versions of benchmark models (the "ORT int8" peer of `--bench zoo`,
`--bench models` and `--bench gemv`).

Usage: scripts/zoo_int8.py OUT_DIR MODEL_ID [MODEL_ID ...]
       (reads tests/fixtures/zoo/<id>/model.onnx, writes OUT_DIR/<id>.onnx)
       scripts/zoo_int8.py --onnx SRC.onnx DST.onnx
       (any model, e.g. graft's export of the demo DLRM; its inputs are read from the
       graph: float inputs get normal values, int64 inputs ids below the smallest table
       any `Gather` reads, symbolic dimensions 4)

Each model goes through `onnxruntime.quantization.quantize_dynamic(...,
weight_type=QuantType.QInt8)`: int8 weights, activations quantized per run (u8), the
MatMuls become `MatMulInteger` and embedding `Gather`s read int8 tables.

One rewrite comes first: dynamic quantization handles `MatMul` but not `Gemm` (ONNX
Runtime's `IntegerOpsRegistry` has no `Gemm`), and the legacy PyTorch exporter writes
every `nn.Linear` on 2-D activations as `Gemm`. Left alone, the MLPs of these models
would stay f32 and "ORT int8" would mean int8 embeddings only. So each `Gemm` with a
constant B (alpha = beta = 1) becomes `MatMul(A, B or Bᵀ)` + `Add(C)` first — the
same arithmetic in f32 (checked below against the original model on random inputs).

Prints one line per model: the number of nodes quantized and the f32 check. Needs
`onnx` and `onnxruntime` (with its `quantization` package) in the running Python.
"""
import json
import os
import sys
import tempfile

import numpy as np
import onnx
from onnx import helper, numpy_helper
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
ZOO = os.path.join(ROOT, "tests", "fixtures", "zoo")


def gemm_to_matmul(model):
    """Rewrites `Gemm(A, B[, C])` with an initializer B and alpha = beta = 1 as MatMul + Add."""
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    nodes, rewritten = [], 0
    for n in g.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        ok = (
            n.op_type == "Gemm"
            and n.input[1] in inits
            and attrs.get("alpha", 1.0) == 1.0
            and attrs.get("beta", 1.0) == 1.0
            and not attrs.get("transA", 0)
        )
        if not ok:
            nodes.append(n)
            continue
        b = inits[n.input[1]]
        if attrs.get("transB", 0):
            w = numpy_helper.to_array(b).T.copy()
            b_name = n.input[1] + "_t"
            g.initializer.append(numpy_helper.from_array(w, b_name))
        else:
            b_name = n.input[1]
        has_c = len(n.input) > 2 and n.input[2] != ""
        mm_out = n.output[0] + "_mm" if has_c else n.output[0]
        nodes.append(helper.make_node("MatMul", [n.input[0], b_name], [mm_out], name=(n.name or "gemm") + "_matmul"))
        if has_c:
            nodes.append(helper.make_node("Add", [mm_out, n.input[2]], [n.output[0]], name=(n.name or "gemm") + "_bias"))
        rewritten += 1
    del g.node[:]
    g.node.extend(nodes)
    # Drop initializers no node reads any more (the untransposed B).
    used = {i for n in g.node for i in n.input}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    return rewritten


def random_feeds(spec, rows, seed):
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in spec["inputs"]:
        shape = [rows] + list(inp["shape_per_row"])
        if inp["dtype"] == "int64":
            feeds[inp["name"]] = rng.integers(1, inp["vocab"], size=shape, dtype=np.int64)
        else:
            feeds[inp["name"]] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def graph_feeds(model, rows, seed):
    """Random feeds for any model, from its graph inputs (see the usage above)."""
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    tables = [inits[n.input[0]].dims[0] for n in g.node if n.op_type == "Gather" and n.input[0] in inits]
    vocab = min(tables) if tables else 1
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in g.input:
        if inp.name in inits:
            continue
        t = inp.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else rows for d in t.shape.dim]
        if t.elem_type == onnx.TensorProto.INT64:
            feeds[inp.name] = rng.integers(0, vocab, size=shape, dtype=np.int64)
        elif t.elem_type == onnx.TensorProto.FLOAT:
            feeds[inp.name] = rng.standard_normal(shape).astype(np.float32)
        else:
            sys.exit(f"input {inp.name}: element type {t.elem_type} is not supported here")
    return feeds


def run(path, feeds):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    s = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    return s.run(None, feeds)


def convert(mid, src, dst, feeds_for):
    """Rewrites, checks and quantizes `src` into `dst`; prints one line."""
    model = onnx.load(src)
    rewritten = gemm_to_matmul(model)
    feeds = feeds_for(model)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(dst))) as tmp:
        mm = os.path.join(tmp, "matmul.onnx")
        onnx.save(model, mm)
        del model
        ref, got = run(src, feeds), run(mm, feeds)
        diff = max(float(np.max(np.abs(a - b))) for a, b in zip(ref, got))
        # Relative to the outputs' size: a 16384-wide GEMV sums 16384 products.
        scale = max(1.0, max(float(np.max(np.abs(a))) for a in ref))
        assert diff <= 1e-5 * scale, f"{mid}: Gemm rewrite changed the outputs by {diff}"
        tmp_dst = os.path.join(tmp, "int8.onnx")
        quantize_dynamic(mm, tmp_dst, weight_type=QuantType.QInt8)
        os.replace(tmp_dst, dst)
    return rewritten, diff, ref, feeds


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--onnx":
        src, dst = sys.argv[2], sys.argv[3]
        todo = [(os.path.basename(src), src, dst, lambda m: graph_feeds(m, 4, 1))]
    elif len(sys.argv) >= 3 and not sys.argv[1].startswith("-"):
        out_dir, ids = sys.argv[1], sys.argv[2:]
        os.makedirs(out_dir, exist_ok=True)
        manifest = json.load(open(os.path.join(ZOO, "manifest.json")))
        specs = {m["id"]: m for m in manifest["models"]}
        todo = [
            (mid, os.path.join(ZOO, mid, specs[mid]["files"]["onnx"]), os.path.join(out_dir, f"{mid}.onnx"),
             lambda m, spec=specs[mid]: random_feeds(spec, 16, 1))
            for mid in ids
        ]
    else:
        sys.exit(__doc__)
    for mid, src, dst, feeds_for in todo:
        rewritten, diff, ref, feeds = convert(mid, src, dst, feeds_for)
        q = onnx.load(dst)
        quantized = sum(n.op_type in ("MatMulInteger", "DynamicQuantizeLinear") for n in q.graph.node)
        int8_inits = sum(i.data_type == onnx.TensorProto.INT8 for i in q.graph.initializer)
        qdiff = max(float(np.max(np.abs(a - b))) for a, b in zip(ref, run(dst, feeds)))
        print(
            f"{mid}: {rewritten} Gemm -> MatMul+Add (f32 diff {diff:.1e}); "
            f"{sum(n.op_type == 'MatMulInteger' for n in q.graph.node)} MatMulInteger, "
            f"{int8_inits} int8 initializers ({quantized} quantized-op nodes); int8 vs f32 max diff {qdiff:.1e}"
        )


if __name__ == "__main__":
    main()
