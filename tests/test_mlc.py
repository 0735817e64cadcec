"""MLC adapter: the error path without mlc_llm, and the exact commands it runs (against a real stand-in executable).

What is NOT tested here: a real MLC build. mlc_llm is not installable from PyPI (placeholders only), so these tests
put a small `mlc_llm` script on PATH that records its argv and writes the files the real tool would write.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest
from cogenesis.export import mlc

FAKE = """#!{python}
import json, os, sys
from pathlib import Path
argv = sys.argv[1:]
with open(os.environ["MLC_FAKE_LOG"], "a") as f:
    f.write(json.dumps(argv) + "\\n")
if os.environ.get("MLC_FAKE_FAIL") == (argv[0] if argv else ""):
    sys.stderr.write("fake failure in " + argv[0] + "\\n")
    sys.exit(3)
if argv and argv[0] in ("convert_weight", "gen_config"):
    out = Path(argv[argv.index("-o") + 1]); out.mkdir(parents=True, exist_ok=True)
    name = "params_shard_0.bin" if argv[0] == "convert_weight" else "mlc-chat-config.json"
    (out / name).write_text("{{}}")
elif argv and argv[0] == "compile":
    Path(argv[argv.index("-o") + 1]).write_bytes(b"lib")
elif argv == ["--version"]:
    print("mlc_llm fake 0.0")
"""


@pytest.fixture
def hf_folder(tmp_path: Path) -> Path:
    """A minimal HF-looking folder (config + ChatML template): enough for command construction."""
    d = tmp_path / "hf"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (d / "chat_template.jinja").write_text("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                                           "<|im_end|>\n{% endfor %}")
    return d


@pytest.fixture
def fake_mlc(tmp_path: Path, monkeypatch) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "mlc_llm"
    exe.write_text(FAKE.format(python=sys.executable))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    log = tmp_path / "argv.jsonl"
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("MLC_FAKE_LOG", str(log))
    monkeypatch.delenv(mlc.ENV_EXE, raising=False)
    return log


def test_missing_mlc_llm_says_how_to_install(tmp_path, hf_folder, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv(mlc.ENV_EXE, raising=False)
    with pytest.raises(mlc.MlcError, match="not found on PATH.*mlc.ai/wheels"):
        mlc.export_mlc(str(hf_folder), tmp_path / "out")
    assert not (tmp_path / "out").exists()  # fails before any work
    with pytest.raises(mlc.MlcError, match="not runnable"):
        mlc.find_mlc(str(tmp_path / "nope" / "mlc_llm"))


def test_commands_for_android(tmp_path, hf_folder, fake_mlc):
    out = tmp_path / "mlc-android"
    rec = mlc.export_mlc(str(hf_folder), out, target="android-arm64")
    calls = [json.loads(x) for x in fake_mlc.read_text().splitlines()]
    assert calls[0] == ["convert_weight", str(hf_folder), "--quantization", "q4f16_1", "-o", str(out)]
    assert calls[1] == ["gen_config", str(hf_folder), "--quantization", "q4f16_1", "--conv-template", "chatml",
                        "--context-window-size", "2048", "--prefill-chunk-size", "512", "-o", str(out)]
    assert calls[2] == ["compile", str(out / "mlc-chat-config.json"), "--device", "android", "-o", str(out / "lib.tar")]
    assert calls[3] == ["--version"]
    assert rec["device"] == "android" and rec["library"] == "lib.tar" and rec["mlc_llm_version"] == "mlc_llm fake 0.0"
    assert json.loads((out / "mlc_build.json").read_text())["commands"][2]["argv"][1] == "compile"


def test_laptop_defaults_and_overrides(tmp_path, hf_folder, fake_mlc):
    out = tmp_path / "mlc-cpu"
    mlc.export_mlc(str(hf_folder), out, target="laptop-x86_64")
    calls = [json.loads(x) for x in fake_mlc.read_text().splitlines()]
    assert calls[0][3] == "q4f32_1" and calls[2][3:] == ["llvm", "-o", str(out / "lib.so")]
    fake_mlc.write_text("")
    with pytest.raises(FileExistsError):
        mlc.export_mlc(str(hf_folder), out, target="laptop-x86_64")
    mlc.export_mlc(str(hf_folder), out, target="raspberry-pi-5", quantization="q0f32", device="llvm",
                   conv_template="chatml", force=True)
    calls = [json.loads(x) for x in fake_mlc.read_text().splitlines()]
    assert calls[0][3] == "q0f32" and calls[1][5] == "chatml" and calls[1][7] == "4096" and calls[2][3] == "llvm"
    with pytest.raises(ValueError, match="quantization"):
        mlc.export_mlc(str(hf_folder), out, quantization="q4f99", force=True)


def test_tool_failure_is_reported(tmp_path, hf_folder, fake_mlc, monkeypatch):
    monkeypatch.setenv("MLC_FAKE_FAIL", "gen_config")
    with pytest.raises(mlc.MlcError, match=r"(?s)gen_config` failed \(exit 3\).*fake failure in gen_config"):
        mlc.export_mlc(str(hf_folder), tmp_path / "o")
    calls = [json.loads(x)[0] for x in fake_mlc.read_text().splitlines()]
    assert calls == ["convert_weight", "gen_config"]  # stops at the failing step


def test_explicit_executable_and_unknown_template(tmp_path, hf_folder, fake_mlc, monkeypatch):
    exe = Path(mlc.find_mlc())
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv(mlc.ENV_EXE, str(exe))
    assert mlc.find_mlc() == str(exe)
    (hf_folder / "chat_template.jinja").write_text("{{ messages }}")
    with pytest.raises(mlc.MlcError, match="conv-template"):
        mlc.export_mlc(str(hf_folder), tmp_path / "o2")
