"""The bundle format: one directory that a device can run.

Format knowledge only (what a valid bundle is, how it is verified, how it is written atomically); no model code.
`export` writes bundles with `write_bundle`; `runtime` reads them with `read_manifest` + `verify_bundle`.

Layout::

    bundle/
      manifest.json           format version, model facts, quant scheme, target, ONNX signature (or the .pte's
                              "executorch" section: method, inputs, outputs), sha256 of files
      model.onnx (+ .data)    the decoder with KV cache (an ExecuTorch bundle: model.pte)
      tokenizer.json          HF tokenizers file
      chat_template.jinja     chat template (jinja2)
      generation_config.json  eos ids, default sampling
      export_report.json      parity / agreement numbers measured at export time
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

FORMAT = "cogenesis-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
REQUIRED_FILES = ("tokenizer.json", "chat_template.jinja", "generation_config.json")


class BundleError(Exception):
    """A bundle that cannot be used; the message names the file and the fix."""


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def file_table(root: Path) -> dict[str, dict]:
    """sha256 and size of every file under root except the manifest."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            rel = p.relative_to(root).as_posix()
            out[rel] = {"sha256": sha256_file(p), "size": p.stat().st_size}
    return out


def model_file(m: dict) -> str:
    """The model file a manifest names: model.onnx, or model.pte for an ExecuTorch bundle."""
    return (m.get("onnx") or m["executorch"])["file"]


def read_manifest(bundle: str | Path, kinds: tuple[str, ...] = ("onnx",)) -> dict:
    """Read and structurally check manifest.json (no hashing); `kinds`: the model sections accepted."""
    root = Path(bundle)
    if not root.is_dir():
        raise BundleError(f"bundle not found: {root} is not a directory (export one with `cogenesis export`)")
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{mpath} is missing: not a cogenesis bundle (re-export with `cogenesis export`)")
    try:
        m = json.loads(mpath.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise BundleError(f"{mpath} is not valid JSON ({e}); re-export the bundle") from e
    if m.get("format") != FORMAT:
        raise BundleError(f"{mpath}: format is {m.get('format')!r}, expected {FORMAT!r}; not a cogenesis bundle")
    v = m.get("format_version")
    if v != FORMAT_VERSION:
        raise BundleError(
            f"{mpath}: unknown format_version {v!r}; this runtime reads version {FORMAT_VERSION}. "
            "Upgrade cogenesis-edge or re-export the bundle with this version."
        )
    if not any(k in m for k in kinds) and "executorch" in m:
        raise BundleError(f"{mpath}: an ExecuTorch bundle ({m['executorch'].get('file')}), not ONNX: run it with "
                          "ExecuTorch (cogenesis.export.executorch_export.load_pte_bundle, or the Android app)")
    kind = next((k for k in kinds if k in m), kinds[0])
    for key in ("model", kind, "files"):
        if key not in m:
            raise BundleError(f"{mpath}: missing section {key!r}; re-export the bundle")
    return m


def verify_bundle(bundle: str | Path, manifest: dict | None = None, check_hashes: bool = True) -> dict:
    """Check that every file the manifest lists is present, of the right size and (optionally) hash."""
    root = Path(bundle)
    m = manifest or read_manifest(root)
    files = m["files"]
    for req in (*REQUIRED_FILES, model_file(m)):
        if req not in files:
            raise BundleError(f"{root / MANIFEST}: does not list required file {req!r}; re-export the bundle")
    for rel, info in files.items():
        p = root / rel
        if not p.is_file():
            raise BundleError(f"{p} is missing from the bundle (it is listed in manifest.json); copy the whole bundle directory again or re-export")
        size = p.stat().st_size
        if size != info["size"]:
            raise BundleError(
                f"{p} has {size} bytes, manifest says {info['size']}: the file is truncated or was changed; "
                "copy the bundle again or re-export"
            )
        if check_hashes and sha256_file(p) != info["sha256"]:
            raise BundleError(
                f"{p}: sha256 does not match manifest.json (file corrupted or tampered with); "
                "copy the bundle again or re-export"
            )
    return m


def replace_dir(tmp: Path, out: Path) -> None:
    """Move a finished directory into place; an existing `out` is removed only after the new one is there."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def write_bundle(out: str | Path, fill: Callable[[Path], dict], force: bool = False) -> Path:
    """Write a bundle atomically: `fill(tmpdir)` writes the files and returns the manifest (without 'files').

    The bundle appears at `out` only when complete (temp dir + rename). An existing `out` is replaced only with
    force=True, and even then the old one is removed only after the new one is complete.
    """
    out = Path(out)
    if out.exists() and not force:
        raise BundleError(f"{out} already exists; pass --force to replace it, or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        manifest = fill(tmp)
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest}
        manifest["files"] = file_table(tmp)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
