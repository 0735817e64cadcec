"""Device profiles, the memory budget check, the edge install for a Raspberry Pi (aarch64), and the
onnxruntime-genai bundle format (`cogenesis export --format ort-genai`)."""

from __future__ import annotations

import json
import subprocess
import sys

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib
from pathlib import Path

import pytest
from cogenesis.export.targets import TARGETS, Target, budget_check, get_target, kv_cache_bytes

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2 = {"num_layers": 30, "num_kv_heads": 3, "head_dim": 64}


# -- profiles --------------------------------------------------------------------------------------------------
def test_profiles_are_complete_and_sane():
    assert {"laptop-x86_64", "raspberry-pi-4", "raspberry-pi-5", "android-arm64"} <= set(TARGETS)
    for name, t in TARGETS.items():
        assert t.name == name
        assert t.arch in ("x86_64", "aarch64")
        assert t.format in ("onnx", "executorch", "ort-genai")
        assert t.quant in ("fp32", "int8", "int4", "int4-fast", "int8-dynamic")
        assert t.threads >= 1 and t.max_context >= 512 and t.memory_budget_mb >= 256
        assert set(t.to_dict()) >= {"name", "arch", "format", "quant", "threads", "max_context", "memory_budget_mb"}
    assert TARGETS["raspberry-pi-4"].memory_budget_mb < TARGETS["raspberry-pi-5"].memory_budget_mb
    assert all(TARGETS[n].arch == "aarch64" for n in ("raspberry-pi-4", "raspberry-pi-5", "android-arm64"))


def test_unknown_target_names_the_choices():
    with pytest.raises(ValueError, match="unknown target 'pi-zero'.*raspberry-pi-4.*cogenesis targets"):
        get_target("pi-zero")


def test_kv_cache_bytes_formula():
    # K and V, per layer, per kv head, per position, fp32
    assert kv_cache_bytes(30, 3, 64, 2048) == 2 * 30 * 3 * 64 * 2048 * 4
    assert kv_cache_bytes(30, 3, 64, 2048, dtype_bytes=2) == kv_cache_bytes(30, 3, 64, 1024)


def test_budget_check_fits_and_overflows():
    pi4 = get_target("raspberry-pi-4")
    kv = kv_cache_bytes(30, 3, 64, pi4.max_context)
    room = pi4.memory_budget_mb * 2**20 - kv
    ok = budget_check(pi4, room, SMOLLM2)
    assert ok["fits"] and ok["total_mb"] == pytest.approx(pi4.memory_budget_mb, abs=0.1)
    assert ok["kv_cache_mb_at_max_context"] == pytest.approx(kv / 2**20, abs=0.1)
    assert not budget_check(pi4, room + 1, SMOLLM2)["fits"]
    # the real SmolLM2 bundles: int4 (~112 MB) fits every profile, fp32 (~515 MB) does not fit the phone
    for t in TARGETS.values():
        assert budget_check(t, 117_253_376, SMOLLM2)["fits"], t.name
    assert not budget_check(get_target("android-arm64"), 540_157_184 + 200 * 2**20, SMOLLM2)["fits"]
    tiny = Target("tiny", "aarch64", "onnx", "int4", 1, 8192, 256)
    assert not budget_check(tiny, 117_253_376, SMOLLM2)["fits"]  # 8k context KV cache alone is 180 MB


def test_targets_cli_lists_every_profile():
    r = subprocess.run([sys.executable, "-m", "cogenesis.cli", "targets", "--json"], capture_output=True, text=True,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert set(data) == set(TARGETS)
    assert data["raspberry-pi-4"]["memory_budget_mb"] == TARGETS["raspberry-pi-4"].memory_budget_mb
    r = subprocess.run([sys.executable, "-m", "cogenesis.cli", "targets"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and all(n in r.stdout for n in TARGETS)


# -- the edge extra on a Raspberry Pi ----------------------------------------------------------------------------
def edge_deps() -> list[str]:
    pp = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return pp["project"]["optional-dependencies"]["edge"]


def test_edge_extra_has_no_torch():
    deps = " ".join(edge_deps()).lower()
    assert "torch" not in deps and "transformers" not in deps and "onnxruntime" in deps


def test_edge_extra_resolves_for_manylinux_2_28_aarch64(tmp_path):
    """What `pip install cogenesis-edge[edge]` pulls on a 64-bit Raspberry Pi OS (glibc 2.36, Python 3.11):
    binary wheels only, no torch/transformers. pip does not widen an explicit PEP 600 --platform to older
    manylinux tags, so the tags a glibc-2.28+ aarch64 machine accepts are listed (tokenizers ships
    manylinux_2_17 / manylinux2014 aarch64 wheels only)."""
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--only-binary=:all:",
           "--platform", "manylinux_2_28_aarch64", "--platform", "manylinux_2_17_aarch64",
           "--platform", "manylinux2014_aarch64", "--python-version", "3.11", "--target", str(tmp_path / "t"),
           "--report", str(report), "--quiet", *edge_deps()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    err = r.stderr + r.stdout
    if r.returncode != 0 and any(s in err for s in ("NewConnectionError", "Temporary failure in name resolution",
                                                    "Network is unreachable")):
        pytest.skip(f"no package index reachable: {err[-300:]}")
    assert r.returncode == 0, err[-3000:]
    rep = json.loads(report.read_text())
    names = {i["metadata"]["name"].lower().replace("_", "-"): i for i in rep["install"]}
    assert {"onnxruntime", "numpy", "tokenizers", "jinja2", "pydantic"} <= set(names)
    assert not {n for n in names if n in ("torch", "transformers", "torchvision", "triton") or n.startswith("nvidia-")}
    for n, item in names.items():
        wheel = item["download_info"]["url"].rsplit("/", 1)[-1]
        assert wheel.endswith(".whl"), (n, wheel)
        assert "aarch64" in wheel or wheel.endswith("-none-any.whl") or "py3-none-any" in wheel, (n, wheel)
        assert "x86_64" not in wheel, (n, wheel)


# -- onnxruntime-genai bundle --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ort_genai_bundle(int4_bundle, tmp_path_factory):
    from cogenesis.export.ort_genai import export_ort_genai_bundle
    from cogenesis.export.report import PARITY_PROMPTS

    out = tmp_path_factory.mktemp("og") / "smollm2-int4-genai"
    return export_ort_genai_bundle(None, out, target="raspberry-pi-5", base_bundle=int4_bundle, new_tokens=24,
                                   prompts=PARITY_PROMPTS[:2], progress=False)


@pytest.mark.slow
def test_ort_genai_bundle_runs_under_onnxruntime_genai(ort_genai_bundle):
    import onnxruntime_genai as og
    from cogenesis.export.ort_genai import run_text

    b = ort_genai_bundle
    cfg = json.loads((b / "genai_config.json").read_text())
    assert cfg["search"]["past_present_share_buffer"] is True and cfg["model"]["context_length"] == 4096
    model = og.Model(str(b))
    tok = og.Tokenizer(model)
    params = og.GeneratorParams(model)
    ids = tok.encode("<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n")
    params.set_search_options(do_sample=False, max_length=len(ids) + 12)
    gen = og.Generator(model, params)
    gen.append_tokens(ids)
    while not gen.is_done():
        gen.generate_next_token()
    text = tok.decode(gen.get_sequence(0)[len(ids):])
    assert len(text.strip()) > 0
    assert len(run_text(b, "Write one sentence about tomatoes.", 16).split()) >= 3
    rep = json.loads((b / "export_report.json").read_text())
    # the GGUF-exact int4 graph: identical greedy tokens to transformers eager under onnxruntime-genai too
    assert rep["genai_parity"]["greedy_identical_prompts"] == 2, rep["genai_parity"]
    assert rep["parity"]["greedy_identical_prompts"] == 2


@pytest.mark.slow
def test_ort_genai_bundle_is_also_a_cogenesis_bundle(ort_genai_bundle):
    import cogenesis.runtime as rt
    from cogenesis.runtime.bundle import verify_bundle

    m = verify_bundle(ort_genai_bundle)
    assert m["ort_genai"]["config"] == "genai_config.json" and "genai_config.json" in m["files"]
    assert "num_logits_to_keep" not in {i["name"] for i in m["onnx"]["inputs"]}
    model = rt.load(ort_genai_bundle, threads=2)
    out = model.generate([{"role": "user", "content": "Say hello."}], max_new_tokens=8)
    assert out.token_ids and out.text.strip()
