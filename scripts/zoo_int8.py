#!/usr/bin/env python3
"""ONNX Runtime int8 versions of the zoo models (the "ORT int8" peer of `--bench zoo`).

Usage: scripts/zoo_int8.py OUT_DIR MODEL_ID [MODEL_ID ...]
       (reads tests/fixtures/zoo/<id>/model.onnx, writes OUT_DIR/<id>.onnx)

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


def run(path, feeds):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    s = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    return s.run(None, feeds)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out_dir, ids = sys.argv[1], sys.argv[2:]
    os.makedirs(out_dir, exist_ok=True)
    manifest = json.load(open(os.path.join(ZOO, "manifest.json")))
    specs = {m["id"]: m for m in manifest["models"]}
    for mid in ids:
        spec = specs[mid]
        src = os.path.join(ZOO, mid, spec["files"]["onnx"])
        model = onnx.load(src)
        rewritten = gemm_to_matmul(model)
        with tempfile.TemporaryDirectory() as tmp:
            mm = os.path.join(tmp, "matmul.onnx")
            onnx.save(model, mm)
            feeds = random_feeds(spec, 16, 1)
            ref, got = run(src, feeds), run(mm, feeds)
            diff = max(float(np.max(np.abs(a - b))) for a, b in zip(ref, got))
            assert diff < 1e-5, f"{mid}: Gemm rewrite changed the outputs by {diff}"
            dst = os.path.join(out_dir, f"{mid}.onnx")
            tmp_dst = dst + ".tmp"
            quantize_dynamic(mm, tmp_dst, weight_type=QuantType.QInt8)
            os.replace(tmp_dst, dst)
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
