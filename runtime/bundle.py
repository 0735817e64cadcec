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

import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath

from cogenesis.runtime.format import (  # noqa: F401  (re-exported: the names users import from here)
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    REQUIRED_FILES,
    SIGNATURE,
    UNLISTED,
    BundleError,
)


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


def read_manifest(bundle: str | Path, kinds: tuple[str, ...] = ("onnx",), trusted_keys: Iterable | None = None) -> dict:
    """Read and structurally check manifest.json (no hashing); `kinds`: the model sections accepted.

    `trusted_keys` (Ed25519 public keys: PEM paths, PEM bytes or key objects): manifest.sig must verify with one
    of them over exactly the bytes parsed here, else BundleError; None: signatures are not checked."""
    root = Path(bundle)
    if not root.is_dir():
        raise BundleError(f"bundle not found: {root} is not a directory (export one with `cogenesis export`)")
    mpath = root / MANIFEST
    if mpath.is_symlink() or not mpath.is_file():
        raise BundleError(f"{mpath} is missing (or a symlink): not a cogenesis bundle (re-export with `cogenesis export`)")
    raw = mpath.read_bytes()
    if trusted_keys is not None:
        from cogenesis.runtime.signing import verify_manifest_bytes

        verify_manifest_bytes(root, raw, trusted_keys)
    try:
        m = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{mpath} is not valid JSON ({e}); re-export the bundle") from e
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise BundleError(f"{mpath}: format is {m.get('format') if isinstance(m, dict) else m!r:.80}, expected {FORMAT!r}; not a cogenesis bundle")
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
    """Check the files table against the directory before anything opens a file of it.

    Every path is relative and stays inside the bundle (no absolute path, no `..`, no symlink anywhere);
    every file under the directory is listed (only manifest.json and manifest.sig are not); each listed file
    is present with its size and (optionally) its sha256. A weight file dropped from the table, a symlink to
    /etc/hostname or a path like ../../x is a BundleError naming it, not something onnxruntime reads.
    """
    root = Path(bundle)
    m = manifest or read_manifest(root)
    files = m["files"]
    if not isinstance(files, dict):
        raise BundleError(f"{root / MANIFEST}: 'files' must be an object {{path: {{sha256, size}}}}; re-export the bundle")
    for req in (*REQUIRED_FILES, model_file(m)):
        if req not in files:
            raise BundleError(f"{root / MANIFEST}: does not list required file {req!r}; re-export the bundle")
    for rel, info in files.items():
        _check_path(root, rel)
        if not isinstance(info, dict) or not isinstance(info.get("size"), int) or not isinstance(info.get("sha256"), str):
            raise BundleError(f"{root / MANIFEST}: files[{rel!r}] needs an integer 'size' and a 'sha256'; re-export")
    _check_tree(root, files)
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


def _check_path(root: Path, rel: object) -> None:
    """A files-table key must be a plain relative POSIX path inside the bundle, through no symlink."""
    fix = "a bundle lists only its own files by relative path; re-export the bundle"
    if not isinstance(rel, str) or not rel or "\\" in rel or "\x00" in rel:
        raise BundleError(f"{root / MANIFEST}: file path {rel!r} is not a relative POSIX path; {fix}")
    pp = PurePosixPath(rel)
    if pp.is_absolute() or any(part in ("", ".", "..") for part in rel.split("/")):
        raise BundleError(f"{root / MANIFEST}: file path {rel!r} leaves the bundle directory "
                          f"(absolute, '.' or '..'); {fix}")
    cur = root
    for part in pp.parts:
        cur = cur / part
        if cur.is_symlink():
            raise BundleError(f"{cur} is a symlink (to {os.readlink(cur)!r}); bundles hold real files only: "
                              "copy the target into the bundle and re-export")


def _check_tree(root: Path, files: dict) -> None:
    """Every file (and no symlink) under root is in the table: nothing unhashed is ever opened."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        d = Path(dirpath)
        for name in dirnames + filenames:
            p = d / name
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                raise BundleError(f"{p} is a symlink (to {os.readlink(p)!r}); bundles hold real files only: "
                                  "remove it or re-export the bundle")
            if name in filenames and rel not in files and rel not in UNLISTED:
                raise BundleError(f"{p} is in the bundle directory but not listed (with its sha256) in "
                                  "manifest.json; remove it or re-export the bundle")


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux renameat2 RENAME_EXCHANGE); False where unsupported.

    Hand-written with ctypes: Python's os module has no renameat2, and it is the only way to replace a
    directory with no moment at which the path is missing."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    AT_FDCWD = -100
    if fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.EOPNOTSUPP):
        return False  # the filesystem (or the kernel) cannot exchange: fall back to two renames
    raise OSError(err, f"renameat2(RENAME_EXCHANGE) {a} <-> {b}: {os.strerror(err)}")


def replace_dir(tmp: Path, out: Path) -> None:
    """Move a finished directory into place; `out`, if it exists, is swapped atomically and then removed.

    Readers always see a complete directory at `out`: the old one until the swap, the new one after (Linux
    RENAME_EXCHANGE). Where the filesystem cannot exchange, the old directory is renamed aside first, a
    window of two renames, and restored if the second rename fails."""
    if not out.exists():
        tmp.rename(out)
        return
    if _exchange(tmp, out):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old bundle
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    out.rename(old)
    try:
        tmp.rename(out)
    except BaseException:
        old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def clean_stale(out: Path) -> list[Path]:
    """Remove what a killed writer left beside `out`: ``.NAME.tmp-PID-*`` / ``.NAME.old-PID`` of dead processes."""
    pat = re.compile(rf"\.{re.escape(out.name)}\.(?:tmp|old)-(\d+)(?:-.*)?")
    gone = []
    for p in out.parent.iterdir() if out.parent.is_dir() else ():
        m = pat.fullmatch(p.name)
        if m and not _alive(int(m[1])):
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p)
    return gone


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_bundle(out: str | Path, fill: Callable[[Path], dict], force: bool = False) -> Path:
    """Write a bundle atomically: `fill(tmpdir)` writes the files and returns the manifest (without 'files').

    The bundle appears at `out` only when complete (temp dir + rename). An existing `out` is replaced only with
    force=True, and even then the old one is removed only after the new one is complete.
    """
    out = Path(out)
    if out.exists() and not force:
        raise BundleError(f"{out} already exists; pass --force to replace it, or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out)
    # the writer's pid in the name: clean_stale removes only folders of dead writers
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    try:
        manifest = fill(tmp)
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest}
        manifest["files"] = file_table(tmp)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")
        replace_dir(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise BundleError(f"not enough space to write the bundle at {out} ({os.strerror(e.errno)}); nothing "
                              f"was left behind{' and the previous bundle is untouched' if out.exists() else ''}: "
                              "free disk space or choose another --out") from e
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
