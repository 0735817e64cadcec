"""MLC LLM adapter: drive the `mlc_llm` command line (convert_weight -> gen_config -> compile) for a model folder.

mlc_llm is not installable from the package registries this project uses (PyPI carries only empty placeholder
packages named mlc-llm*; the real wheels come from https://mlc.ai/wheels). So this adapter does not import it: it
runs the `mlc_llm` executable when one is on PATH (or named with --mlc-llm / $COGENESIS_MLC_LLM), and otherwise
fails with a message that says how to get it. The output is MLC's own layout (params shards +
mlc-chat-config.json + the compiled model library), run by MLC's runtimes (MLCChat on Android/iOS, mlc_llm serve);
our ONNX runtime does not read it. `mlc_build.json` beside it records the commands, versions and source.

    mlc_llm convert_weight HF_DIR --quantization Q -o OUT
    mlc_llm gen_config HF_DIR --quantization Q --conv-template T --context-window-size N
                      --prefill-chunk-size P -o OUT
    mlc_llm compile OUT/mlc-chat-config.json --device D -o OUT/LIB
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

ENV_EXE = "COGENESIS_MLC_LLM"
INSTALL_HINT = (
    "mlc_llm was not found on PATH. It is not on PyPI (the mlc-llm* names there are empty placeholders); install "
    "a nightly wheel from MLC's own index, e.g. `pip install --pre -f https://mlc.ai/wheels mlc-llm-nightly-cpu "
    "mlc-ai-nightly-cpu` (see https://llm.mlc.ai/docs/install/mlc_llm.html), or pass --mlc-llm PATH / set "
    f"${ENV_EXE} to the executable."
)
# MLC quantization codes: q{weight bits}f{compute float bits}_{group layout}. f32 for CPUs without fp16 math.
QUANTIZATIONS = ("q4f16_1", "q4f32_1", "q3f16_1", "q0f16", "q0f32")
# device profile -> (MLC --device, default quantization, library file name)
DEVICES = {
    "laptop-x86_64": ("llvm", "q4f32_1", "lib.so"),
    "raspberry-pi-4": ("vulkan", "q4f16_1", "lib.so"),
    "raspberry-pi-5": ("vulkan", "q4f16_1", "lib.so"),
    "android-arm64": ("android", "q4f16_1", "lib.tar"),  # system library, linked into the app by `mlc_llm package`
}


class MlcError(RuntimeError):
    """mlc_llm missing or failing; the message says what to do."""


def find_mlc(exe: str | None = None) -> str:
    """The mlc_llm executable: `exe`, $COGENESIS_MLC_LLM, or `mlc_llm` on PATH."""
    cand = exe or os.environ.get(ENV_EXE) or "mlc_llm"
    path = shutil.which(cand)
    if path is None:
        raise MlcError(INSTALL_HINT if not exe and not os.environ.get(ENV_EXE) else
                       f"mlc_llm executable {cand!r} is not runnable (not found or not executable). {INSTALL_HINT}")
    return path


def conv_template_for(hf_dir: Path) -> str:
    """MLC conversation template from the model's chat template (ChatML for SmolLM2/Qwen-style templates)."""
    tpl = ""
    if (hf_dir / "chat_template.jinja").is_file():
        tpl = (hf_dir / "chat_template.jinja").read_text()
    elif (hf_dir / "tokenizer_config.json").is_file():
        tpl = str(json.loads((hf_dir / "tokenizer_config.json").read_text()).get("chat_template") or "")
    if "<|im_start|>" in tpl:
        return "chatml"
    if "<start_of_turn>" in tpl:
        return "gemma_instruction"
    if "<|start_header_id|>" in tpl:
        return "llama-3"
    raise MlcError(f"{hf_dir}: cannot tell which MLC conversation template matches this chat template; "
                   "pass --conv-template (see `mlc_llm gen_config --help`)")


def mlc_commands(exe: str, hf_dir: Path, out: Path, quantization: str, device: str, lib_name: str,
                 conv_template: str, context_window: int, prefill_chunk: int = 512) -> list[list[str]]:
    """The three mlc_llm invocations, in order."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"MLC quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    return [
        [exe, "convert_weight", str(hf_dir), "--quantization", quantization, "-o", str(out)],
        [exe, "gen_config", str(hf_dir), "--quantization", quantization, "--conv-template", conv_template,
         "--context-window-size", str(context_window), "--prefill-chunk-size", str(min(prefill_chunk, context_window)),
         "-o", str(out)],
        [exe, "compile", str(out / "mlc-chat-config.json"), "--device", device, "-o", str(out / lib_name)],
    ]


def export_mlc(model: str | None, out: str | Path, target: str = "android-arm64", quantization: str | None = None,
               device: str | None = None, conv_template: str | None = None, mlc_llm: str | None = None,
               force: bool = False, timeout: float | None = None) -> dict:
    """Build an MLC model folder at `out` with the mlc_llm CLI; returns (and writes) mlc_build.json."""
    from .pipeline import resolve_source
    from .targets import get_target

    tgt = get_target(target)
    exe = find_mlc(mlc_llm)  # fail before any conversion work
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} exists and is not empty; pass --force to rebuild into it")
    dev, q_default, lib = DEVICES.get(tgt.name, ("llvm", "q4f32_1", "lib.so"))
    dev = device or dev
    if device and device == "android":
        lib = "lib.tar"
    q = quantization or q_default
    src = resolve_source(model)
    conv = conv_template or conv_template_for(src.hf_dir)
    out.mkdir(parents=True, exist_ok=True)
    cmds = mlc_commands(exe, src.hf_dir, out, q, dev, lib, conv, tgt.max_context)
    log = []
    t0 = time.time()
    for cmd in cmds:
        t = time.time()
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        log.append({"argv": cmd, "returncode": r.returncode, "seconds": round(time.time() - t, 1)})
        if r.returncode != 0:
            raise MlcError(f"`{' '.join(cmd[:2])}` failed (exit {r.returncode}):\n{(r.stderr or r.stdout)[-2000:]}")
    missing = [f for f in ("mlc-chat-config.json", lib) if not (out / f).is_file()]
    if missing:
        raise MlcError(f"mlc_llm finished but {out} lacks {missing}; check the mlc_llm version (convert_weight / "
                       "gen_config / compile layout changed?)")
    ver = subprocess.run([exe, "--version"], capture_output=True, text=True)
    rec = {"format": "mlc-llm", "source": {"name": src.name, "hf_dir": str(src.hf_dir)}, "target": tgt.name,
           "device": dev, "quantization": q, "conv_template": conv, "context_window": tgt.max_context,
           "library": lib, "mlc_llm": exe, "mlc_llm_version": (ver.stdout or ver.stderr).strip()[:200],
           "commands": log, "seconds": round(time.time() - t0, 1),
           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (out / "mlc_build.json").write_text(json.dumps(rec, indent=2))
    return rec
