"""Small ONNX graph edits shared by the export paths (onnx.helper; no model code)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

KEEP_INPUT = "num_logits_to_keep"


def find_node(graph: onnx.GraphProto, pred) -> onnx.NodeProto:
    hits = [n for n in graph.node if pred(n)]
    if len(hits) != 1:
        raise ValueError(f"expected exactly one matching node, found {len(hits)}")
    return hits[0]


def initializer_map(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in graph.initializer}


def add_logits_to_keep(model: onnx.ModelProto, lm_head_weight: str) -> None:
    """Compute logits for only the last `num_logits_to_keep` positions (0 = all).

    A 1.5k-token prefill otherwise materializes 1.5k x vocab logits (~300 MB) to use one row.
    """
    g = model.graph
    mm = find_node(g, lambda n: n.op_type in ("MatMul", "MatMulNBits") and len(n.input) > 1 and n.input[1] == lm_head_weight)
    hidden = mm.input[0]
    g.input.append(helper.make_tensor_value_info(KEEP_INPUT, TensorProto.INT64, []))
    g.initializer.extend([
        numpy_helper.from_array(np.array([np.iinfo(np.int64).max], np.int64), "/keep/ends"),
        numpy_helper.from_array(np.array([1], np.int64), "/keep/axes"),
        numpy_helper.from_array(np.array([0], np.int64), "/keep/zero_axis"),
    ])
    nodes = [
        helper.make_node("Unsqueeze", [KEEP_INPUT, "/keep/zero_axis"], ["/keep/n1"], name="/keep/Unsqueeze"),
        helper.make_node("Neg", ["/keep/n1"], ["/keep/starts"], name="/keep/Neg"),
        helper.make_node("Slice", [hidden, "/keep/starts", "/keep/ends", "/keep/axes"], ["/keep/hidden"], name="/keep/Slice"),
    ]
    idx = list(g.node).index(mm)
    for k, n in enumerate(nodes):
        g.node.insert(idx + k, n)
    mm.input[0] = "/keep/hidden"


def io_signature(model: onnx.ModelProto) -> dict:
    def vi(v):
        t = v.type.tensor_type
        return {
            "name": v.name,
            "dtype": TensorProto.DataType.Name(t.elem_type).lower(),
            "shape": [d.dim_param or d.dim_value for d in t.shape.dim],
        }

    inits = {t.name for t in model.graph.initializer}
    return {
        "inputs": [vi(v) for v in model.graph.input if v.name not in inits],
        "outputs": [vi(v) for v in model.graph.output],
    }


def save(model: onnx.ModelProto, path: str, data_file: str | None = None) -> None:
    """Save with weights in one external data file beside the graph (protobuf caps a file at 2 GB)."""
    if data_file:
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_file, size_threshold=1024)
    else:
        onnx.save_model(model, path)
