"""Our kernel library: `cogenesis.Q4_1MatMul` against float64 numpy and the portable graph, its errors, and how
the runtime picks the kernel graph of an int4 bundle (or falls back to the portable one)."""

from __future__ import annotations

import json
import shutil

import cogenesis.runtime as rt
import numpy as np
import onnxruntime as ort
import pytest
from cogenesis.runtime import kernels
from onnx import TensorProto, helper, numpy_helper

MS = "com.microsoft"


@pytest.fixture(scope="module")
def lib() -> str:
    return str(kernels.build())  # `make setup` builds it; failing here means a broken install, not a skip


def _weights(rng, k: int, n: int):
    """Random GGUF-like Q4_1 weights: codes 0..15, fp16 d and m per block of 32; W = d*q + m in float64."""
    nb = k // 32
    q = rng.integers(0, 16, (n, k), dtype=np.uint8)
    packed = (q.reshape(n, nb, 16, 2)[..., 0] | (q.reshape(n, nb, 16, 2)[..., 1] << 4)).astype(np.uint8)
    d = (rng.random((n, nb)) * 0.02).astype(np.float16).astype(np.float32)
    m = (rng.standard_normal((nb, n)) * 0.05).astype(np.float16).astype(np.float32)
    c = (m + np.float32(8) * d.T).astype(np.float32)  # what the portable graph's MinTerm holds: m + 8d
    w = (d.astype(np.float64)[:, :, None] * q.reshape(n, nb, 32) + m.T.astype(np.float64)[:, :, None]).reshape(n, k).T
    return [numpy_helper.from_array(packed, "q"), numpy_helper.from_array(d.reshape(-1), "d"),
            numpy_helper.from_array(c, "c")], w


def _session(nodes, inits, k: int, lib: str | None, threads: int = 1) -> ort.InferenceSession:
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [None, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(MS, 1),
                                                helper.make_opsetid("cogenesis", 1)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    if lib:
        so.register_custom_ops_library(lib)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _kernel(k: int, n: int, inits, lib: str, threads: int = 1) -> ort.InferenceSession:
    return _session([helper.make_node("Q4_1MatMul", ["a", "q", "d", "c"], ["y"], domain="cogenesis", K=k, N=n)],
                    inits, k, lib, threads)


def _portable(k: int, n: int, inits) -> ort.InferenceSession:
    """What the bundle's model.onnx does: MatMulNBits (fp32 activations) + block sums @ (m + 8d)."""
    sh = numpy_helper.from_array(np.array([0, k // 32, 32], np.int64), "sh")
    ax = numpy_helper.from_array(np.array([-1], np.int64), "ax")
    nodes = [helper.make_node("MatMulNBits", ["a", "q", "d"], ["yq"], domain=MS, K=k, N=n, bits=4, block_size=32,
                              accuracy_level=0),
             helper.make_node("Reshape", ["a", "sh"], ["b"]),
             helper.make_node("ReduceSum", ["b", "ax"], ["bs"], keepdims=0),
             helper.make_node("MatMul", ["bs", "c"], ["ym"]),
             helper.make_node("Add", ["yq", "ym"], ["y"])]
    return _session(nodes, inits + [sh, ax], k, None)


# N=48: three 16-column groups, so prefill also runs the odd-last-group path; M covers decode (1), short blocks
# (up to 8 rows stream the codes per row), and the panel GEMM with a row tail (9, 70).
@pytest.mark.parametrize("k,n", [(64, 48), (576, 960), (1536, 576)])
@pytest.mark.parametrize("m", [1, 3, 8, 9, 70])
def test_q41_matmul_equals_float64_and_portable_graph(lib, k, n, m):
    rng = np.random.default_rng(k * 1000 + n + m)
    inits, w = _weights(rng, k, n)
    x = rng.standard_normal((m, k)).astype(np.float32)
    ref = x.astype(np.float64) @ w
    scale = np.abs(ref).max()
    got = _kernel(k, n, inits, lib).run(None, {"a": x})[0]
    port = _portable(k, n, inits).run(None, {"a": x})[0]
    assert got.shape == (m, n)
    err_kernel = np.abs(got - ref).max() / scale
    err_portable = np.abs(port - ref).max() / scale
    # fp32 summation over K terms: both are ~1e-7..1e-6 relative; a wrong code, scale or minimum is >= 1e-3
    assert err_kernel < 5e-6, (err_kernel, err_portable)
    assert err_kernel < 10 * err_portable + 1e-6


def test_threads_do_not_change_results(lib):
    rng = np.random.default_rng(7)
    inits, _ = _weights(rng, 576, 1536)
    for m in (1, 40):
        x = rng.standard_normal((m, 576)).astype(np.float32)
        one = _kernel(576, 1536, inits, lib, threads=1).run(None, {"a": x})[0]
        two = _kernel(576, 1536, inits, lib, threads=2).run(None, {"a": x})[0]
        np.testing.assert_array_equal(one, two)  # work is split by columns: same sums in the same order


def test_bad_inputs_give_clear_errors(lib):
    rng = np.random.default_rng(1)
    inits, _ = _weights(rng, 64, 32)
    not_half = numpy_helper.from_array(np.full(64 // 32 * 32, 0.1234567, np.float32), "d")  # 0.1234567 is no fp16
    with pytest.raises(Exception, match="not fp16 values"):
        _kernel(64, 32, [inits[0], not_half, inits[2]], lib)
    with pytest.raises(Exception, match="K % 32 == 0"):
        _kernel(48, 32, inits, lib)
    with pytest.raises(Exception, match="initializer sizes do not match"):
        _kernel(64, 48, inits, lib)
    s = _kernel(64, 32, inits, lib)
    with pytest.raises(Exception, match="[Ii]nvalid|dimension"):  # onnxruntime checks the declared shape [None, 64]
        s.run(None, {"a": np.zeros((1, 63), np.float32)})


def test_int4_bundle_carries_a_kernel_graph_with_exact_parity(int4_bundle):
    m = json.loads((int4_bundle / "manifest.json").read_text())
    kg = m["onnx"]["kernel_graph"]
    assert kg["file"] in m["files"] and kg["fused_linears"] == 150  # 30 layers x (qkv, o, gate, up, down)
    rep = json.loads((int4_bundle / "export_report.json").read_text())
    kp, pp = rep["kernel_parity"], rep["parity"]
    assert "teacher_forced_top1" in kp, kp  # the library builds in `make setup`, so export measured it
    assert kp["greedy_identical_prompts"] == kp["prompts"] == pp["greedy_identical_prompts"]
    assert kp["teacher_forced_top1"] >= 0.99 and kp["mean_kl"] < 1e-3


def test_runtime_uses_kernel_graph_and_matches_portable(int4_bundle, lib, monkeypatch):
    fast = rt.load(int4_bundle, threads=1)
    assert fast.graph_file == "model.kernel.onnx" and fast.kernel_library
    monkeypatch.setenv("COGENESIS_KERNELS", "0")
    portable = rt.load(int4_bundle, threads=1)
    assert portable.graph_file == "model.onnx" and portable.kernel_library is None
    for prompt in ("Write one sentence about tea.", "List two colours."):
        msgs = [{"role": "user", "content": prompt}]
        ids = fast.encode(msgs)
        la = fast.decoder.forward(ids, keep=0)
        fast.decoder.reset()
        lb = portable.decoder.forward(ids, keep=0)
        portable.decoder.reset()
        assert np.abs(la - lb).max() < 2e-3 * np.abs(lb).max()
        assert (la.argmax(-1) == lb.argmax(-1)).mean() == 1.0
        assert fast.generate(msgs, max_new_tokens=24).text == portable.generate(msgs, max_new_tokens=24).text


def test_required_kernels_missing_is_a_clear_error(int4_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("COGENESIS_CACHE", str(tmp_path / "empty-cache"))  # no library, no headers here
    monkeypatch.setenv("COGENESIS_KERNELS", "1")
    with pytest.raises(kernels.KernelError, match="cogenesis kernels build"):
        rt.load(int4_bundle)
    monkeypatch.setenv("COGENESIS_KERNELS", "")  # auto: falls back to the portable graph without a word
    assert rt.load(int4_bundle).graph_file == "model.onnx"


def test_bundle_without_kernel_graph_still_loads(int4_bundle, tmp_path):
    """Older bundles (no model.kernel.onnx in the manifest) run the portable graph."""
    b = tmp_path / "b"
    shutil.copytree(int4_bundle, b)
    m = json.loads((b / "manifest.json").read_text())
    kg = m["onnx"].pop("kernel_graph")
    m["files"].pop(kg["file"])
    (b / kg["file"]).unlink()
    (b / "manifest.json").write_text(json.dumps(m))
    assert rt.load(b).graph_file == "model.onnx"


def test_kernel_headers_are_pinned_and_extracted(lib):
    inc = kernels.headers_dir(fetch=False)
    assert (inc / "onnxruntime_c_api.h").is_file()
    url, sha = kernels.HEADERS_DEB
    assert url.startswith("http://deb.debian.org/") and len(sha) == 64
    with pytest.raises(kernels.KernelError, match="not a .deb"):
        kernels._ar_members(b"definitely not an ar archive")
