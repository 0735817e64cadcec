"""Rewrite an fp32 decoder graph so that its MatMuls run on the GGUF file's own integer codes.

Re-quantizing weights that were already Q4_1 rounds them a second time (measured: ~70% top-1 agreement for
MatMulNBits int4 and ~58% for dynamic int8 on SmolLM2-135M). Instead we keep the GGUF codes exactly:

* Q4_1 block: w = d*q + m = d*(q - 8) + (m + 8d). MatMulNBits (4 bit, no zero-point input, so the fast
  symmetric kernel with implicit zero point 8) computes A @ (d*(q-8)); the rest is
  sum_blocks (m + 8d) * blocksum(A): one small MatMul with K/32 rows on the block sums of A.
* Q8_0 block (SmolLM2's tied embedding / lm_head): w = d*q = d*((q+128) - 128): MatMulNBits 8 bit with its
  implicit zero point 128, exact with no correction. The embedding lookup gathers the same uint8 codes.

The result equals the GGUF model up to float summation order; `verify` checks every weight exactly.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .gguf_codes import BLOCK, DECODERS, BlockCodes, llama_unpermute_rows, pack_nibbles
from .graph import find_node, initializer_map

MS = "com.microsoft"


def read_gguf(path: str) -> tuple[dict[str, BlockCodes], dict]:
    """GGUF tensors by name as codes (only quantized tensors we know), and the llama hyper-parameters."""
    import gguf

    r = gguf.GGUFReader(path)
    arch = r.fields["general.architecture"].contents()
    hp = {
        "arch": arch,
        "n_head": int(r.fields[f"{arch}.attention.head_count"].contents()),
        "n_kv": int(r.fields[f"{arch}.attention.head_count_kv"].contents()),
        "n_layer": int(r.fields[f"{arch}.block_count"].contents()),
    }
    codes = {}
    for t in r.tensors:
        kind = t.tensor_type.name
        if kind in DECODERS:
            cols = int(t.shape[0])  # GGUF shapes are [cols, rows]
            codes[t.name] = DECODERS[kind](np.asarray(t.data), cols)
    return codes, hp


def builder_weight_codes(codes: dict[str, BlockCodes], hp: dict) -> dict[str, BlockCodes]:
    """Codes in [N, K] (out, in) order keyed by the onnxruntime-genai builder's initializer names."""
    if hp["arch"] != "llama":
        raise ValueError(f"GGUF-exact quantization supports llama-architecture GGUF files, got {hp['arch']!r}")
    out = {}
    for i in range(hp["n_layer"]):
        b = f"blk.{i}."
        need = [b + s for s in ("attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight",
                                "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight")]
        if not all(n in codes for n in need):
            raise ValueError(f"layer {i}: GGUF tensors are not all Q4_1/Q8_0 ({[n for n in need if n not in codes]})")
        q = codes[b + "attn_q.weight"]
        k = codes[b + "attn_k.weight"]
        q = q.take_rows(llama_unpermute_rows(q.q.shape[0], hp["n_head"]))
        k = k.take_rows(llama_unpermute_rows(k.q.shape[0], hp["n_kv"]))
        v = codes[b + "attn_v.weight"]
        if len({q.kind, k.kind, v.kind}) != 1:
            raise ValueError(f"layer {i}: q/k/v use different GGUF types; cannot fuse into one qkv MatMul")
        qkv = BlockCodes(np.concatenate([q.q, k.q, v.q]), np.concatenate([q.d, k.d, v.d]),
                         None if q.m is None else np.concatenate([q.m, k.m, v.m]), q.kind)
        p = f"model.layers.{i}."
        out[p + "attn.qkv_proj.MatMul.weight"] = qkv
        out[p + "attn.o_proj.MatMul.weight"] = codes[b + "attn_output.weight"]
        out[p + "mlp.gate_proj.MatMul.weight"] = codes[b + "ffn_gate.weight"]
        out[p + "mlp.up_proj.MatMul.weight"] = codes[b + "ffn_up.weight"]
        out[p + "mlp.down_proj.MatMul.weight"] = codes[b + "ffn_down.weight"]
    head = codes.get("output.weight") or codes.get("token_embd.weight")
    if head is not None:
        out["lm_head.MatMul.weight"] = head
    return out


def verify(model: onnx.ModelProto, weights: dict[str, BlockCodes], rtol: float = 1e-6) -> float:
    """Check every GGUF weight against the fp32 graph's initializer; return the largest abs difference."""
    inits = initializer_map(model.graph)
    worst = 0.0
    for name, c in weights.items():
        if name not in inits:
            raise ValueError(f"graph has no initializer {name!r}: the exported graph does not match this GGUF file")
        w = numpy_helper.to_array(inits[name])  # [K, N]
        deq = c.dequantize().T
        if w.shape != deq.shape:
            raise ValueError(f"{name}: graph shape {w.shape} != GGUF shape {deq.shape}")
        diff = float(np.abs(w - deq).max())
        if diff > rtol * float(np.abs(w).max()):
            raise ValueError(f"{name}: GGUF codes differ from the graph weight by {diff:g}; wrong source file?")
        worst = max(worst, diff)
    return worst


def _replace_matmul(g, node, c: BlockCodes, accuracy_level: int, q8_accuracy_level: int, blocksums: dict,
                    new_inits: list) -> list:
    a, y = node.input[0], node.output[0]
    n, k = c.q.shape
    base = node.name.rsplit("/", 1)[0] + "/nbits"
    w = node.input[1]
    scales = numpy_helper.from_array(c.d.reshape(-1).astype(np.float32), w + ".scales")
    nodes = []
    if c.kind == "Q8_0":
        b = numpy_helper.from_array((c.q.astype(np.int16) + 128).astype(np.uint8).reshape(n, k // BLOCK, BLOCK), w + ".q8")
        new_inits += [b, scales]
        nodes.append(helper.make_node("MatMulNBits", [a, b.name, scales.name], [y], name=base, domain=MS,
                                      K=k, N=n, bits=8, block_size=BLOCK, accuracy_level=q8_accuracy_level))
        return nodes
    b = numpy_helper.from_array(pack_nibbles(c.q), w + ".q4")
    corr = numpy_helper.from_array((c.m + 8.0 * c.d).T.astype(np.float32).copy(), w + ".blockmin")  # [K/32, N]
    new_inits += [b, scales, corr]
    if a not in blocksums:
        shape = numpy_helper.from_array(np.array([0, 0, k // BLOCK, BLOCK], np.int64), a + ".bs_shape")
        axes = numpy_helper.from_array(np.array([-1], np.int64), a + ".bs_axes")
        new_inits += [shape, axes]
        nodes += [
            helper.make_node("Reshape", [a, shape.name], [a + ".blocks"], name=base + "/BlockReshape"),
            helper.make_node("ReduceSum", [a + ".blocks", axes.name], [a + ".blocksum"], name=base + "/BlockSum", keepdims=0),
        ]
        blocksums[a] = a + ".blocksum"
    nodes += [
        helper.make_node("MatMulNBits", [a, b.name, scales.name], [y + ".q"], name=base, domain=MS,
                         K=k, N=n, bits=4, block_size=BLOCK, accuracy_level=accuracy_level),
        helper.make_node("MatMul", [blocksums[a], corr.name], [y + ".min"], name=base + "/MinTerm"),
        helper.make_node("Add", [y + ".q", y + ".min"], [y], name=base + "/Add"),
    ]
    return nodes


def _refine_top_logits(g, node, top: int, new_inits: list) -> None:
    """Make the top-`top` logits exact after an int8-activation lm_head.

    The 8-bit lm_head is fast only with int8 activations (accuracy_level 4), which moves logits by up to ~0.5 and
    flips near-ties. We keep its cheap approximate logits for ranking, then recompute the `top` best candidates
    in fp32 from the same Q8_0 codes (a 64-row gather) and scatter them back: greedy choices and the top-k that
    fusion uses are then those of the exact model unless the true best token ranks below `top` approximately.
    """
    node = find_node(g, lambda n: n.name == node.name)  # the graph holds its own copy of the node
    hidden, out = node.input[0], node.output[0]
    k_t = numpy_helper.from_array(np.array([top], np.int64), "/lm_refine/k")
    ax = numpy_helper.from_array(np.array([-1], np.int64), "/lm_refine/axis")
    off = numpy_helper.from_array(np.array(128.0, np.float32), "/lm_refine/offset")
    new_inits += [k_t, ax, off]
    shape_src = "/lm_refine/hidden_shape"
    nodes = [
        helper.make_node("TopK", [out + ".approx", k_t.name], ["/lm_refine/vals", "/lm_refine/idx"], name="/lm_refine/TopK", axis=-1),
        helper.make_node("Gather", ["lm_head.MatMul.weight.q8", "/lm_refine/idx"], ["/lm_refine/q"], name="/lm_refine/GatherCodes"),
        helper.make_node("Cast", ["/lm_refine/q"], ["/lm_refine/qf"], name="/lm_refine/Cast", to=TensorProto.FLOAT),
        helper.make_node("Sub", ["/lm_refine/qf", off.name], ["/lm_refine/qc"], name="/lm_refine/Center"),
        helper.make_node("Gather", ["embed.scales", "/lm_refine/idx"], ["/lm_refine/d"], name="/lm_refine/GatherScales"),
        helper.make_node("Mul", ["/lm_refine/qc", "/lm_refine/d"], ["/lm_refine/w"], name="/lm_refine/Scale"),
        helper.make_node("Shape", ["/lm_refine/idx"], ["/lm_refine/idx_shape"], name="/lm_refine/IdxShape"),
        helper.make_node("Shape", [hidden], [shape_src], name="/lm_refine/HiddenShape", start=-1),
        helper.make_node("Concat", ["/lm_refine/idx_shape", shape_src], ["/lm_refine/wshape"], name="/lm_refine/Concat", axis=0),
        helper.make_node("Reshape", ["/lm_refine/w", "/lm_refine/wshape"], ["/lm_refine/w2"], name="/lm_refine/Reshape"),
        helper.make_node("Unsqueeze", [hidden, ax.name], ["/lm_refine/h"], name="/lm_refine/Unsqueeze"),
        helper.make_node("MatMul", ["/lm_refine/w2", "/lm_refine/h"], ["/lm_refine/exact1"], name="/lm_refine/MatMul"),
        helper.make_node("Squeeze", ["/lm_refine/exact1", ax.name], ["/lm_refine/exact"], name="/lm_refine/Squeeze"),
        helper.make_node("ScatterElements", [out + ".approx", "/lm_refine/idx", "/lm_refine/exact"], [out],
                         name="/lm_refine/Scatter", axis=-1),
    ]
    node.output[0] = out + ".approx"
    idx = list(g.node).index(node)
    for j, n in enumerate(nodes):
        g.node.insert(idx + 1 + j, n)


def _replace_embedding(g, weights: dict[str, BlockCodes], new_inits: list) -> None:
    """The builder's embedding is Gather(Transpose(lm_head)); gather the shared Q8_0 codes instead."""
    c = weights["lm_head.MatMul.weight"]
    if c.kind != "Q8_0":
        return  # keep the fp32 embedding
    tr = find_node(g, lambda n: n.op_type == "Transpose" and n.input[0] == "lm_head.MatMul.weight")
    ga = find_node(g, lambda n: n.op_type == "Gather" and n.input[0] == tr.output[0])
    v, k = c.q.shape
    ds = numpy_helper.from_array(c.d[..., None].astype(np.float32), "embed.scales")  # [V, K/32, 1]
    shape = numpy_helper.from_array(np.array([0, 0, k], np.int64), "embed.shape")
    off = numpy_helper.from_array(np.array(128.0, np.float32), "embed.offset")
    new_inits += [ds, shape, off]
    ids, out = ga.input[1], ga.output[0]
    q8 = numpy_helper.from_array((c.q.astype(np.int16) + 128).astype(np.uint8).reshape(v, k // BLOCK, BLOCK),
                                 "lm_head.MatMul.weight.q8")
    new_inits.append(q8)
    q8 = q8.name
    nodes = [
        helper.make_node("Gather", [q8, ids], ["/embed/q"], name="/embed/GatherCodes"),
        helper.make_node("Cast", ["/embed/q"], ["/embed/qf"], name="/embed/Cast", to=TensorProto.FLOAT),
        helper.make_node("Sub", ["/embed/qf", off.name], ["/embed/qc"], name="/embed/Center"),
        helper.make_node("Gather", [ds.name, ids], ["/embed/d"], name="/embed/GatherScales"),
        helper.make_node("Mul", ["/embed/qc", "/embed/d"], ["/embed/x"], name="/embed/Scale"),
        helper.make_node("Reshape", ["/embed/x", shape.name], [out], name="/embed/Reshape"),
    ]
    idx = list(g.node).index(tr)
    g.node.remove(ga)
    g.node.remove(tr)
    for j, n in enumerate(nodes):
        g.node.insert(idx + j, n)


def _keep_used_initializers(g: onnx.GraphProto, new_inits: list | None = None) -> None:
    """Drop initializers no node reads; append the new ones that are read (each once: the Q8_0 codes are shared
    by embedding and lm_head)."""
    used = {i for n in g.node for i in n.input}
    keep = [t for t in g.initializer if t.name in used]
    fresh = {t.name: t for t in new_inits or [] if t.name in used}
    del g.initializer[:]
    g.initializer.extend(keep + list(fresh.values()))


def quantize_gguf_exact(model: onnx.ModelProto, gguf_path: str, accuracy_level: int = 0,
                        q8_accuracy_level: int = 4, lm_head: str = "q8-refine", refine_top: int = 64) -> dict:
    """lm_head: "q8-refine" (8-bit, int8 activations, exact top-`refine_top`), "q8" (8-bit only) or "fp32".

    accuracy_level applies to the Q4_1 layers: 0 keeps fp32 activations (exact), 4 quantizes activations to int8
    per block of 32 (faster; what llama.cpp itself does for Q4_1 dot products).
    """
    """In place: replace fp32 MatMul weights by the GGUF codes. Returns facts for the export report."""
    codes, hp = read_gguf(gguf_path)
    weights = builder_weight_codes(codes, hp)
    max_diff = verify(model, weights)
    g = model.graph
    new_inits: list = []
    blocksums: dict = {}
    _replace_embedding(g, weights, new_inits)  # first: it reads the Q8_0 codes the lm_head MatMul will own
    replaced = 0
    for node in list(g.node):
        if node.op_type == "MatMul" and len(node.input) > 1 and node.input[1] in weights:
            if node.input[1] == "lm_head.MatMul.weight" and lm_head == "fp32":
                continue
            idx = list(g.node).index(node)
            new = _replace_matmul(g, node, weights[node.input[1]], accuracy_level, q8_accuracy_level, blocksums, new_inits)
            is_head = node.input[1] == "lm_head.MatMul.weight"
            g.node.remove(node)
            for j, n in enumerate(new):
                g.node.insert(idx + j, n)
            if is_head and lm_head == "q8-refine" and weights[node.input[1]].kind == "Q8_0":
                _refine_top_logits(g, new[-1], refine_top, new_inits)
            replaced += 1
    _keep_used_initializers(g, new_inits)
    if not any(o.domain == MS for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS, 1))
    kinds = sorted({c.kind for c in weights.values()})
    return {"scheme": "gguf-exact", "gguf_types": kinds, "matmuls_replaced": replaced,
            "max_weight_abs_diff_vs_fp32": max_diff, "accuracy_level": accuracy_level,
            "q8_accuracy_level": q8_accuracy_level, "lm_head": lm_head,
            "refine_top": refine_top if lm_head == "q8-refine" else 0}


KERNEL_DOMAIN = "cogenesis"


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def kernel_graph(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
    """The same model with each exact Q4_1 linear (MatMulNBits + MinTerm MatMul + Add) as ONE
    `cogenesis.Q4_1MatMul` node over the same initializers (so both graphs can share one data file), the Q8_0
    lm_head (and its top-64 refinement) as `cogenesis.Q8_0MatMul` (every logit exact), and GroupQueryAttention
    as `cogenesis.GroupQueryAttention` (our one-token decode step; prefill is onnxruntime's).

    Only runtimes that load our kernel library can run it; the portable graph stays the bundle's model.onnx.
    Returns the new model and how many nodes of each of our ops it has.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    producer = {o: n for n in g.node for o in n.output}
    fused = 0
    for add in [n for n in g.node if n.op_type == "Add" and n.name.endswith("/nbits/Add")]:
        q, mn = producer.get(add.input[0]), producer.get(add.input[1])
        if q is None or mn is None or q.op_type != "MatMulNBits" or mn.op_type != "MatMul":
            continue
        attrs = _attrs(q)
        if attrs.get("bits") != 4 or attrs.get("block_size") != BLOCK or len(q.input) != 3:
            continue
        node = helper.make_node("Q4_1MatMul", [q.input[0], q.input[1], q.input[2], mn.input[1]], [add.output[0]],
                                name=q.name.rsplit("/", 1)[0] + "/q41", domain=KERNEL_DOMAIN, K=attrs["K"], N=attrs["N"])
        idx = list(g.node).index(add)
        g.node.insert(idx, node)
        for n in (add, q, mn):
            g.node.remove(n)
        fused += 1
    head = 0
    for q8 in [n for n in g.node if n.op_type == "MatMulNBits" and n.domain == MS]:
        attrs = _attrs(q8)
        if attrs.get("bits") != 8 or attrs.get("block_size") != BLOCK or len(q8.input) != 3:
            continue
        # exact fp32 logits: the top-64 refinement after the int8-activation lm_head (TopK .. Scatter) goes too
        scatter = next((n for n in g.node if n.op_type == "ScatterElements" and n.input[0] == q8.output[0]), None)
        out_name = scatter.output[0] if scatter is not None else q8.output[0]
        node = helper.make_node("Q8_0MatMul", list(q8.input), [out_name], name=q8.name + "/q8_0", domain=KERNEL_DOMAIN,
                                K=attrs["K"], N=attrs["N"])
        g.node.insert(list(g.node).index(scatter if scatter is not None else q8), node)
        for n in (q8, scatter):
            if n is not None:
                g.node.remove(n)
        head += 1
    attention = 0
    for node in g.node:  # attention: our decode step, onnxruntime's kernel for the rest (same inputs/attributes)
        if node.op_type == "GroupQueryAttention" and node.domain == MS:
            attention += 1
            node.domain = KERNEL_DOMAIN
            while len(node.input) > 9 and not node.input[-1]:
                node.input.pop()  # trailing optional inputs the builder leaves empty
            if len(node.input) > 9:
                raise ValueError(f"{node.name}: GroupQueryAttention inputs beyond sin_cache are not supported")
    while True:  # drop what fed only the removed nodes (the block sums)
        used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
        dead = [n for n in g.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    _keep_used_initializers(g)
    out.opset_import.append(helper.make_opsetid(KERNEL_DOMAIN, 1))
    return out, {f"{KERNEL_DOMAIN}.Q4_1MatMul": fused, f"{KERNEL_DOMAIN}.Q8_0MatMul": head,
                 f"{KERNEL_DOMAIN}.GroupQueryAttention": attention}
