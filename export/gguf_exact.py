"""Rewrite an fp32 decoder graph so that its MatMuls and embedding run on the GGUF file's own integer codes.

Re-quantizing weights that were already Q4_1 rounds them a second time (measured: ~70% top-1 agreement for
MatMulNBits int4 and ~58% for dynamic int8 on SmolLM2-135M). Instead we keep the GGUF codes exactly
(`gguf_codes` turns every supported type into one of two code shapes):

* 4-bit affine (Q4_1, Q4_K): w = d*q + m = d*(q - 8) + (m + 8d). MatMulNBits (4 bit, no zero-point input, so the
  fast symmetric kernel with implicit zero point 8) computes A @ (d*(q-8)); the rest is
  sum_blocks (m + 8d) * blocksum(A): one small MatMul with K/32 rows on the block sums of A.
* signed (Q8_0, Q5_0, Q6_K): w = d*q = d*((q+128) - 128): MatMulNBits 8 bit (block 32, or 16 for Q6_K) with its
  implicit zero point 128, no correction; int8 activations per block, as llama.cpp computes these types.
* A fused q/k/v weight whose parts use different shapes (Qwen2.5-1.5B: q/k Q4_K, v Q6_K) becomes one MatMul per
  run of equal shape and a Concat. The embedding gathers codes (shared with a tied Q8_0 head; 4-bit codes stay
  packed two per byte and are unpacked after the gather).

Measured (`cogenesis export --model NAME`, parity against transformers eager on the dequantized weights):

  model                 GGUF types                  greedy   top-1   KL       weights / GGUF    decode, 2 thr
  SmolLM2-135M          Q4_1 + Q8_0                 3/3      1.000   6e-5     118 / 98 MB
  Qwen2.5-Coder-0.5B    Q5_0, Q8_0, Q4_K, Q6_K      3/3      1.000   2e-4     704 / 491 MB      33.6 tok/s
  Qwen2.5-Coder-1.5B    Q4_K, Q6_K                  2/3      0.995   2e-5     1566 / 1117 MB    6.5 tok/s
  Gemma-3-270M (base)   Q8_0, Q5_0, Q4_K, Q6_K      1/3      0.995   7e-4     383 / 253 MB      44 tok/s

The result equals the GGUF model up to float summation order (and the int8 activations of 8-bit layers);
`verify` checks every weight exactly.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .gguf_codes import BLOCK, DECODERS, BlockCodes, concat_rows, llama_unpermute_rows, pack_nibbles
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


ARCH_QK_PERMUTED = {"llama": True, "qwen2": False, "gemma3": False}  # convert_hf_to_gguf permutes q/k for llama only
EMBED = "model.embed_tokens.weight"  # the builder's embedding initializer when the head is not tied
LAYER = {"attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
Segments = list[BlockCodes]  # one weight as row blocks that may use different GGUF types (q/k Q4_K + v Q6_K)


def _segments(parts: list[BlockCodes]) -> Segments:
    """Stack consecutive parts of one code shape; a change of shape starts a new segment (its own MatMul)."""
    out: Segments = []
    for p in parts:
        if out and (out[-1].shape, out[-1].block) == (p.shape, p.block):
            out[-1] = concat_rows([out[-1], p])
        else:
            out.append(p)
    return out


def builder_weight_codes(codes: dict[str, BlockCodes], hp: dict) -> dict[str, Segments]:
    """Codes in [N, K] (out, in) order keyed by the onnxruntime-genai builder's initializer names."""
    if hp["arch"] not in ARCH_QK_PERMUTED:
        raise ValueError(f"GGUF-exact quantization supports {sorted(ARCH_QK_PERMUTED)} GGUF files, got "
                         f"{hp['arch']!r}; export the converted HF folder instead (--quant int4 re-quantizes)")
    out = {}
    for i in range(hp["n_layer"]):
        b, p = f"blk.{i}.", f"model.layers.{i}."
        need = [b + s + ".weight" for s in ("attn_q", "attn_k", "attn_v", *LAYER.values())]
        if missing := [n for n in need if n not in codes]:
            raise ValueError(f"layer {i}: GGUF tensors of a type we cannot keep exactly ({', '.join(missing)}); "
                             f"supported: {', '.join(DECODERS)}")
        q, k, v = (codes[b + f"attn_{x}.weight"] for x in "qkv")
        if ARCH_QK_PERMUTED[hp["arch"]]:
            q = q.take_rows(llama_unpermute_rows(q.q.shape[0], hp["n_head"]))
            k = k.take_rows(llama_unpermute_rows(k.q.shape[0], hp["n_kv"]))
        out[p + "attn.qkv_proj.MatMul.weight"] = _segments([q, k, v])
        for name, g in LAYER.items():
            out[p + name + ".MatMul.weight"] = [codes[b + g + ".weight"]]
    head = codes.get("output.weight") or codes.get("token_embd.weight")
    if head is not None:
        out["lm_head.MatMul.weight"] = [head]
    return out


def _dequantized(segs: Segments) -> np.ndarray:
    return np.concatenate([c.dequantize() for c in segs])


def _check(name: str, w: np.ndarray, deq: np.ndarray, rtol: float) -> float:
    if w.shape != deq.shape:
        raise ValueError(f"{name}: graph shape {w.shape} != GGUF shape {deq.shape}")
    diff = float(np.abs(w - deq).max())
    if diff > rtol * float(np.abs(w).max()):
        raise ValueError(f"{name}: GGUF codes differ from the graph weight by {diff:g}; wrong source file?")
    return diff


def verify(model: onnx.ModelProto, weights: dict[str, Segments], embed: BlockCodes | None = None,
           rtol: float = 1e-6) -> float:
    """Check every GGUF weight against the fp32 graph's initializer; return the largest abs difference."""
    inits = initializer_map(model.graph)
    worst = 0.0
    for name, segs in weights.items():
        if name not in inits:
            raise ValueError(f"graph has no initializer {name!r}: the exported graph does not match this GGUF file")
        worst = max(worst, _check(name, numpy_helper.to_array(inits[name]), _dequantized(segs).T, rtol))  # [K, N]
    if embed is not None and EMBED in inits:
        worst = max(worst, _check(EMBED, numpy_helper.to_array(inits[EMBED]), embed.dequantize(), rtol))
    return worst


def _signed8_codes(c: BlockCodes, name: str) -> onnx.TensorProto:
    """Centred int8 codes as MatMulNBits' 8-bit layout [N, K/block, block], stored +128 (its implicit zero point)."""
    n, k = c.q.shape
    return numpy_helper.from_array((c.q.astype(np.int16) + 128).astype(np.uint8).reshape(n, k // c.block, c.block), name)


def _one_linear(a: str, y: str, w: str, base: str, c: BlockCodes, acc: int, blocksums: dict,
                new_inits: list) -> list:
    """Nodes computing y = a @ W.T exactly from one segment's codes (see the module docstring)."""
    n, k = c.q.shape
    scales = numpy_helper.from_array(c.d.reshape(-1).astype(np.float32), w + ".scales")
    if c.m is None:
        b = _signed8_codes(c, w + ".q8")
        new_inits += [b, scales]
        return [helper.make_node("MatMulNBits", [a, b.name, scales.name], [y], name=base, domain=MS,
                                 K=k, N=n, bits=8, block_size=c.block, accuracy_level=acc)]
    b = numpy_helper.from_array(pack_nibbles(c.q), w + ".q4")
    corr = numpy_helper.from_array((c.m + 8.0 * c.d).T.astype(np.float32).copy(), w + ".blockmin")  # [K/32, N]
    new_inits += [b, scales, corr]
    nodes = []
    if a not in blocksums:
        shape = numpy_helper.from_array(np.array([0, 0, k // BLOCK, BLOCK], np.int64), a + ".bs_shape")
        axes = numpy_helper.from_array(np.array([-1], np.int64), a + ".bs_axes")
        new_inits += [shape, axes]
        nodes += [
            helper.make_node("Reshape", [a, shape.name], [a + ".blocks"], name=base + "/BlockReshape"),
            helper.make_node("ReduceSum", [a + ".blocks", axes.name], [a + ".blocksum"], name=base + "/BlockSum", keepdims=0),
        ]
        blocksums[a] = a + ".blocksum"
    return nodes + [
        helper.make_node("MatMulNBits", [a, b.name, scales.name], [y + ".q"], name=base, domain=MS,
                         K=k, N=n, bits=4, block_size=BLOCK, accuracy_level=acc),
        helper.make_node("MatMul", [blocksums[a], corr.name], [y + ".min"], name=base + "/MinTerm"),
        helper.make_node("Add", [y + ".q", y + ".min"], [y], name=base + "/Add"),
    ]


def _replace_matmul(g, node, segs: Segments | BlockCodes, accuracy_level: int, q8_accuracy_level: int,
                    blocksums: dict, new_inits: list) -> list:
    """Nodes replacing one fp32 MatMul: one exact linear per segment, concatenated along the output features.

    accuracy_level applies to 4-bit segments, q8_accuracy_level to 8-bit ones (Q8_0/Q5_0/Q6_K codes): onnxruntime
    1.32's 8-bit MatMulNBits with fp32 activations dequantizes the whole weight per call (21 ms vs 0.20 ms with
    int8 activations for a 4864x896 weight, one thread), and int8 activations per block are what llama.cpp itself
    uses for these types (its vec_dot_type is Q8_0/Q8_K)."""
    segs = [segs] if isinstance(segs, BlockCodes) else segs
    a, y, w = node.input[0], node.output[0], node.input[1]
    base = node.name.rsplit("/", 1)[0] + "/nbits"
    acc = [q8_accuracy_level if c.m is None else accuracy_level for c in segs]
    if len(segs) == 1:
        return _one_linear(a, y, w, base, segs[0], acc[0], blocksums, new_inits)
    nodes, parts = [], []
    for i, c in enumerate(segs):
        parts.append(f"{y}.part{i}")
        nodes += _one_linear(a, parts[-1], f"{w}.part{i}", f"{base}{i}", c, acc[i], blocksums, new_inits)
    return nodes + [helper.make_node("Concat", parts, [y], name=base + "/Concat", axis=-1)]


def _refine_top_logits(g, node, top: int, new_inits: list, codes: str, scales3: str, k: int,
                       flat_scales: str | None = None) -> None:
    """Make the top-`top` logits exact after an int8-activation lm_head.

    The 8-bit lm_head is fast only with int8 activations (accuracy_level 4), which moves logits by up to ~0.5 and
    flips near-ties. We keep its cheap approximate logits for ranking, then recompute the `top` best candidates
    in fp32 from the same codes (`codes` [V, K/b, b] uint8 +128, `scales3` [V, K/b, 1]; a 64-row gather) and
    scatter them back: greedy choices and the top-k that fusion uses are then those of the exact model unless the
    true best token ranks below `top` approximately. ``flat_scales``: build `scales3` as a view of this flat
    MatMulNBits scales initializer (an untied head: onnxruntime folds the Reshape at load).
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
        helper.make_node("Gather", [codes, "/lm_refine/idx"], ["/lm_refine/q"], name="/lm_refine/GatherCodes"),
        helper.make_node("Cast", ["/lm_refine/q"], ["/lm_refine/qf"], name="/lm_refine/Cast", to=TensorProto.FLOAT),
        helper.make_node("Sub", ["/lm_refine/qf", off.name], ["/lm_refine/qc"], name="/lm_refine/Center"),
        helper.make_node("Gather", [scales3, "/lm_refine/idx"], ["/lm_refine/d"], name="/lm_refine/GatherScales"),
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
    if flat_scales is not None:
        shape = numpy_helper.from_array(np.array([-1, k // _block_of(g, codes), 1], np.int64), "/lm_refine/scales_shape")
        new_inits.append(shape)
        nodes.insert(0, helper.make_node("Reshape", [flat_scales, shape.name], [scales3], name="/lm_refine/ScalesView"))
    node.output[0] = out + ".approx"
    idx = list(g.node).index(node)
    for j, n in enumerate(nodes):
        g.node.insert(idx + 1 + j, n)


def _block_of(g, codes: str) -> int:
    for n in g.node:
        if n.op_type == "MatMulNBits" and n.input[1] == codes:
            return _attrs(n)["block_size"]
    raise ValueError(f"no MatMulNBits reads {codes}")


def _embedding_nodes(c: BlockCodes, ids: str, out: str, new_inits: list, codes: str | None = None) -> list:
    """Gather the embedding rows from the GGUF codes: x = d * (u - 128) for signed codes (1 byte each), or
    d * nibble + m for 4-bit affine codes (packed two per byte as in the GGUF, unpacked after the gather)."""
    v, k = c.q.shape
    nb = k // c.block
    ds = numpy_helper.from_array(c.d.reshape(v, nb, 1).astype(np.float32), "embed.scales")
    shape = numpy_helper.from_array(np.array([0, 0, k], np.int64), "embed.shape")
    new_inits += [ds, shape]
    if c.m is None:
        if codes is None:
            new_inits.append(_signed8_codes(c, "embed.q8"))
            codes = "embed.q8"
        off = numpy_helper.from_array(np.array(128.0, np.float32), "embed.offset")
        new_inits.append(off)
        nodes = [
            helper.make_node("Gather", [codes, ids], ["/embed/q"], name="/embed/GatherCodes"),
            helper.make_node("Cast", ["/embed/q"], ["/embed/qf"], name="/embed/Cast", to=TensorProto.FLOAT),
            helper.make_node("Sub", ["/embed/qf", off.name], ["/embed/qc"], name="/embed/Center"),
        ]
    else:
        half = BLOCK // 2
        q = c.q.reshape(v, nb, 2, half)
        packed = numpy_helper.from_array((q[:, :, 0] | (q[:, :, 1] << 4)).astype(np.uint8), "embed.q4")
        mins = numpy_helper.from_array(c.m.reshape(v, nb, 1).astype(np.float32), "embed.mins")
        low, four = (numpy_helper.from_array(np.array(x, np.uint8), f"embed.u8_{x}") for x in (15, 4))
        new_inits += [packed, mins, low, four]
        nodes = [
            helper.make_node("Gather", [packed.name, ids], ["/embed/p"], name="/embed/GatherCodes"),
            helper.make_node("BitwiseAnd", ["/embed/p", low.name], ["/embed/lo"], name="/embed/Low"),
            helper.make_node("BitShift", ["/embed/p", four.name], ["/embed/hi"], name="/embed/High", direction="RIGHT"),
            helper.make_node("Concat", ["/embed/lo", "/embed/hi"], ["/embed/q"], name="/embed/Unpack", axis=-1),
            helper.make_node("Cast", ["/embed/q"], ["/embed/qc"], name="/embed/Cast", to=TensorProto.FLOAT),
        ]
    nodes += [
        helper.make_node("Gather", [ds.name, ids], ["/embed/d"], name="/embed/GatherScales"),
        helper.make_node("Mul", ["/embed/qc", "/embed/d"], ["/embed/x" if c.m is None else "/embed/xd"], name="/embed/Scale"),
    ]
    if c.m is not None:
        nodes += [helper.make_node("Gather", ["embed.mins", ids], ["/embed/m"], name="/embed/GatherMins"),
                  helper.make_node("Add", ["/embed/xd", "/embed/m"], ["/embed/x"], name="/embed/Min")]
    return nodes + [helper.make_node("Reshape", ["/embed/x", shape.name], [out], name="/embed/Reshape")]


def _replace_embedding(g, weights: dict, new_inits: list, embed: BlockCodes | None = None) -> bool:
    """Gather the embedding from GGUF codes instead of fp32 rows. A tied embedding is Gather(Transpose(lm_head));
    with Q8_0 it shares the lm_head's codes. An untied one gathers `model.embed_tokens.weight` (`embed` codes).
    Returns whether the embedding was replaced (a tied head in fp32 keeps the fp32 embedding)."""
    head = weights["lm_head.MatMul.weight"]
    head = head[0] if isinstance(head, list) else head
    tr = [n for n in g.node if n.op_type == "Transpose" and n.input[0] == "lm_head.MatMul.weight"]
    if tr:
        ga = find_node(g, lambda n: n.op_type == "Gather" and n.input[0] == tr[0].output[0])
        c, shared = head, ("lm_head.MatMul.weight.q8" if head.m is None and head.block == BLOCK else None)
        if shared:
            new_inits.append(_signed8_codes(head, shared))
    else:
        ga = find_node(g, lambda n: n.op_type == "Gather" and n.input[0] == EMBED)
        if embed is None:
            raise ValueError("the graph has an untied embedding but the GGUF file has no token_embd codes")
        c, shared = embed, None
    nodes = _embedding_nodes(c, ga.input[1], ga.output[0], new_inits, shared)
    idx = list(g.node).index(tr[0] if tr else ga)
    for n in (ga, *tr):
        g.node.remove(n)
    for j, n in enumerate(nodes):
        g.node.insert(idx + j, n)
    return True


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
    """In place: replace fp32 MatMul weights and the embedding by the GGUF codes. Returns facts for the report.

    lm_head: "q8-refine" (8-bit, int8 activations, exact top-`refine_top`), "q8" (8-bit only) or "fp32".
    accuracy_level applies to the layers: 0 keeps fp32 activations (exact), 4 quantizes activations to int8
    per block (faster; what llama.cpp itself does for its dot products).
    """
    codes, hp = read_gguf(gguf_path)
    weights = builder_weight_codes(codes, hp)
    embed = codes.get("token_embd.weight")
    max_diff = verify(model, weights, embed)
    g = model.graph
    new_inits: list = []
    blocksums: dict = {}
    tied = any(n.op_type == "Transpose" and n.input[0] == "lm_head.MatMul.weight" for n in g.node)
    _replace_embedding(g, weights, new_inits, embed)  # first: a tied one reads the codes the lm_head will own
    replaced = 0
    for node in list(g.node):
        if node.op_type == "MatMul" and len(node.input) > 1 and node.input[1] in weights:
            w = node.input[1]
            if w == "lm_head.MatMul.weight" and lm_head == "fp32":
                continue
            idx = list(g.node).index(node)
            new = _replace_matmul(g, node, weights[w], accuracy_level, q8_accuracy_level, blocksums, new_inits)
            g.node.remove(node)
            for j, n in enumerate(new):
                g.node.insert(idx + j, n)
            segs = weights[w]
            if w == "lm_head.MatMul.weight" and lm_head == "q8-refine" and len(segs) == 1 and segs[0].m is None:
                if tied and segs[0].block == BLOCK:  # the embedding's [V, K/32, 1] scales are the head's
                    _refine_top_logits(g, new[-1], refine_top, new_inits, w + ".q8", "embed.scales", segs[0].q.shape[1])
                else:
                    _refine_top_logits(g, new[-1], refine_top, new_inits, w + ".q8", w + ".scales3",
                                       segs[0].q.shape[1], flat_scales=w + ".scales")
            replaced += 1
    _keep_used_initializers(g, new_inits)
    for domain, version in ((MS, 1), ("", 18)):  # BitwiseAnd (4-bit embedding unpack) needs opset 18
        have = [o for o in model.opset_import if o.domain == domain]
        if not have:
            model.opset_import.append(helper.make_opsetid(domain, version))
        elif have[0].version < version:
            have[0].version = version
    kinds = sorted({c.kind for segs in weights.values() for c in segs} | ({embed.kind} if embed is not None else set()))
    return {"scheme": "gguf-exact", "gguf_types": kinds, "architecture": hp["arch"], "matmuls_replaced": replaced,
            "max_weight_abs_diff_vs_fp32": max_diff, "accuracy_level": accuracy_level,
            "q8_accuracy_level": q8_accuracy_level, "lm_head": lm_head,
            "refine_top": refine_top if lm_head == "q8-refine" else 0}


KERNEL_DOMAIN = "cogenesis"


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


KV_DTYPES = {"float32": onnx.TensorProto.FLOAT, "float16": onnx.TensorProto.FLOAT16}


def _set_kv_dtype(g: onnx.GraphProto, kv_dtype: str) -> None:
    """Declare the cache inputs and outputs as `kv_dtype` (only our GroupQueryAttention reads and writes them)."""
    if kv_dtype not in KV_DTYPES:
        raise ValueError(f"kv_dtype must be one of {sorted(KV_DTYPES)}, not {kv_dtype!r}")
    for v in [*g.input, *g.output]:
        if v.name.startswith(("past_key_values.", "present.")):
            v.type.tensor_type.elem_type = KV_DTYPES[kv_dtype]


def kernel_graph(model: onnx.ModelProto, kv_dtype: str = "float16") -> tuple[onnx.ModelProto, dict]:
    """The same model with each exact Q4_1 linear (MatMulNBits + MinTerm MatMul + Add) as ONE
    `cogenesis.Q4_1MatMul` node over the same initializers (so both graphs can share one data file), the Q8_0
    lm_head (and its top-64 refinement) as `cogenesis.Q8_0MatMul` (every logit exact), and GroupQueryAttention
    as `cogenesis.GroupQueryAttention` (our one-token decode step; prefill is onnxruntime's).

    kv_dtype: the KV cache (past_key_values.* / present.*). "float16" (default, as llama.cpp's cache): keys and
    values are rounded once when stored, all arithmetic stays fp32; it halves the bytes a decode step reads from
    the cache (SmolLM2 at a 1.5k context: 69 -> 35 MB per token, next to 96 MB of weights). "float32": the
    portable graph's cache, bit for bit.

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
    _set_kv_dtype(g, kv_dtype)
    out.opset_import.append(helper.make_opsetid(KERNEL_DOMAIN, 1))
    return out, {f"{KERNEL_DOMAIN}.Q4_1MatMul": fused, f"{KERNEL_DOMAIN}.Q8_0MatMul": head,
                 f"{KERNEL_DOMAIN}.GroupQueryAttention": attention}
