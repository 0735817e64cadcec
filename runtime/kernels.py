"""Our onnxruntime kernel library: build it once per machine, find it at load time.

`cogenesis.Q4_1MatMul` (csrc/q41_matmul.cc) is the GGUF Q4_1 linear in one exact fp32 pass;
`cogenesis.GroupQueryAttention` (csrc/gqa_decode.cc) is onnxruntime's attention with our one-token decode step.
An int4 bundle exported from a GGUF carries `model.kernel.onnx`, a copy of its graph on these ops (sharing
model.onnx.data).
The runtime uses that graph when the library is built and falls back to the portable model.onnx otherwise.

    cogenesis kernels build     # fetch onnxruntime's C API headers, compile (~5 s)
    cogenesis kernels status

COGENESIS_KERNELS=0 turns the kernels off; =1 uses them on any CPU and makes a missing library an error instead
of a fallback. Unset (auto): used when built AND they have a fast path for the running CPU (see `dispatch`).
COGENESIS_KERNELS_MARCH picks another -march than native (a cross build with CXX=aarch64-linux-gnu-g++ for a
Raspberry Pi, or one library for a fleet: x86-64-v3); building and loading both read it.
"""

from __future__ import annotations

import functools
import hashlib
import io
import lzma
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from cogenesis.core.paths import cache_dir

CSRC = Path(__file__).parent / "csrc"
SOURCES = [CSRC / "q41_matmul.cc", CSRC / "q8_0_matmul.cc", CSRC / "gqa_decode.cc", CSRC / "attend.cc",
           CSRC / "register.cc"]
DOMAIN = "cogenesis"
LIB_NAME = "libcogenesis_kernels.so"

# onnxruntime's C/C++ API headers (header-only; the C API is versioned, so 1.21 headers work with any newer
# onnxruntime). The PyPI wheel ships no headers; Debian packages them. Pinned by sha256.
HEADERS_DEB = ("http://deb.debian.org/debian/pool/main/o/onnxruntime/libonnxruntime-dev_1.21.0+dfsg-1_amd64.deb",
               "14f7d959d5deacbcf1504830d4189f91fc67382b399ed9ae9d3aa9c4050ced08")


class KernelError(RuntimeError):
    pass




def mode() -> str:
    """'off', 'auto' (use when built) or 'require' (COGENESIS_KERNELS=0 / unset / 1)."""
    v = os.environ.get("COGENESIS_KERNELS", "").strip().lower()
    return {"0": "off", "false": "off", "off": "off", "1": "require", "require": "require"}.get(v, "auto")


def target_arch() -> str:
    """The -march the library is built for: native, or COGENESIS_KERNELS_MARCH."""
    return os.environ.get("COGENESIS_KERNELS_MARCH", "").strip() or "native"


def _ar_members(data: bytes) -> dict[str, bytes]:
    """Members of a Unix ar archive (a .deb). Hand-written: the stdlib has no ar reader, and this keeps the
    build free of dpkg so it also works off Debian."""
    if not data.startswith(b"!<arch>\n"):
        raise KernelError("not a .deb (ar) archive")
    out, pos = {}, 8
    while pos + 60 <= len(data):
        name = data[pos:pos + 16].decode().strip().rstrip("/")
        size = int(data[pos + 48:pos + 58].decode().strip())
        out[name] = data[pos + 60:pos + 60 + size]
        pos += 60 + size + (size % 2)
    return out


def headers_dir(fetch: bool = True) -> Path:
    """The directory holding onnxruntime_cxx_api.h: $COGENESIS_ORT_INCLUDE, or the pinned Debian headers."""
    env = os.environ.get("COGENESIS_ORT_INCLUDE")
    if env:
        if not (Path(env) / "onnxruntime_cxx_api.h").is_file():
            raise KernelError(f"COGENESIS_ORT_INCLUDE={env} has no onnxruntime_cxx_api.h")
        return Path(env)
    url, sha = HEADERS_DEB
    dest = cache_dir() / "ort-headers" / sha[:16]
    inc = dest / "usr" / "include" / "onnxruntime"
    if (inc / "onnxruntime_cxx_api.h").is_file():
        return inc
    if not fetch:
        raise KernelError(f"onnxruntime headers are not in {dest}; run `cogenesis kernels build`")
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            deb = r.read()
    except OSError as e:
        raise KernelError(f"could not download onnxruntime headers from {url} ({e}); set COGENESIS_ORT_INCLUDE "
                          "to a folder with onnxruntime_cxx_api.h instead") from e
    if hashlib.sha256(deb).hexdigest() != sha:
        raise KernelError(f"{url}: sha256 mismatch (expected {sha}); refusing to use it")
    members = _ar_members(deb)
    data = next((v for k, v in members.items() if k.startswith("data.tar")), None)
    if data is None:
        raise KernelError(f"{url}: no data.tar in the package")
    raw = lzma.decompress(data) if data[:6] == b"\xfd7zXZ\x00" else data
    cache_dir().mkdir(parents=True, exist_ok=True)  # a fresh checkout has no cache yet
    tmp = Path(tempfile.mkdtemp(prefix="hdr-", dir=cache_dir()))
    try:
        with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
            _extract_headers(tf, tmp)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return inc


def _extract_headers(tf: tarfile.TarFile, dest: Path) -> None:
    """Only the regular files under usr/include/onnxruntime/, with checked names. By hand instead of
    extractall(filter="data"): Python 3.11.2 (Debian bookworm, Raspberry Pi OS) has no `filter`."""
    for m in tf.getmembers():
        name = m.name.removeprefix("./")
        if m.isfile() and name.startswith("usr/include/onnxruntime/") and ".." not in Path(name).parts:
            out = dest / name
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(tf.extractfile(m).read())


def _compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if not cxx:
        raise KernelError("no C++ compiler found (g++/clang++); install one (Debian: apt-get install g++) or set CXX")
    return cxx


def _flags(march: str = "native") -> list[str]:
    # -march=native: the library is built on the machine that runs it (AVX-512 where present, NEON on ARM);
    # -ffp-contract=fast keeps FMAs but no -ffast-math: results stay IEEE fp32.
    return ["-O3", f"-march={march}", "-std=c++17", "-fPIC", "-shared", "-ffp-contract=fast", "-Wall",
            "-Wno-maybe-uninitialized", "-Wno-uninitialized"]  # gcc 12 flags its own AVX-512 reduce intrinsics


def _key(cxx: str, inc: Path, march: str = "native") -> str:
    h = hashlib.sha256()
    for s in [*SOURCES, CSRC / "kernels.h", CSRC / "attend.h"]:
        h.update(s.read_bytes())
    h.update(" ".join(_flags(march)).encode())
    h.update(subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout.encode())
    h.update((inc / "onnxruntime_c_api.h").read_bytes())
    h.update(platform.machine().encode())
    return h.hexdigest()[:16]


def _lib_path(cxx: str, inc: Path, march: str) -> Path:
    key = _key(cxx, inc, march)
    return cache_dir() / "kernels" / (key if march == "native" else f"{march}-{key}") / LIB_NAME


def build(force: bool = False, march: str | None = None) -> Path:
    """Compile the kernel library (cached by source, flags, compiler and headers); returns its path.
    march: another -march than target_arch() (e.g. x86-64-v3, an AVX2-only build, to test the portable paths)."""
    cxx, inc, march = _compiler(), headers_dir(), march or target_arch()
    out = _lib_path(cxx, inc, march)
    if out.is_file() and not force:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{LIB_NAME}.{os.getpid()}")
    cmd = [cxx, *_flags(march), f"-I{inc}", *map(str, SOURCES), "-o", str(tmp)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise KernelError(f"compiling the kernel library failed:\n{' '.join(cmd)}\n{r.stderr[-3000:]}")
    tmp.replace(out)  # atomic: a half-written library is never found
    return out


def cpu_features() -> set[str]:
    """The running CPU's feature flags (lower case, as /proc/cpuinfo names them; empty where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, val = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(val.split())
    return set()


# The vector paths the kernels have, best first: (library feature, the CPU flags it needs, its name). A library
# runs the best path it was compiled with (an AVX-512 build also has __AVX2__, and runs only AVX-512 code).
PATHS = (("avx512f", ("avx512f",), "AVX-512 path"),
         ("avx2", ("avx2", "fma", "f16c"), "AVX2 + FMA path"),
         ("neon", ("asimd",), "NEON path"))
MEASURED = {"AVX-512 path", "AVX2 + FMA path"}  # measured against the portable graph; others: a first-load trial
_MACROS = (("avx512f", ("__AVX512F__",)), ("avx2", ("__AVX2__", "__FMA__", "__F16C__")), ("neon", ("__ARM_NEON",)))


@functools.lru_cache(maxsize=8)
def library_features(march: str | None = None) -> frozenset[str]:
    """Which fast paths a library built for `march` compiled in: the compiler's own predefined macros."""
    try:
        r = subprocess.run([_compiler(), f"-march={march or target_arch()}", "-dM", "-E", "-x", "c++", os.devnull],
                           capture_output=True, text=True, timeout=30)
    except (KernelError, OSError, subprocess.SubprocessError):
        return frozenset()
    defined = {ln.split()[1] for ln in r.stdout.splitlines() if ln.startswith("#define ")}
    return frozenset(f for f, macros in _MACROS if all(m in defined for m in macros))


def dispatch(cpu: set[str], lib: frozenset[str] | set[str]) -> tuple[bool, str]:
    """Whether auto mode uses the kernels: only where the library's best vector path runs on this CPU.

    Measured (SmolLM2-135M int4, tok/s, kernels / portable graph; bench/results/cpu_dispatch.md): the AVX2 path
    on an AMD EPYC without AVX-512 decodes ~2.7x (1 thread) the portable graph (onnxruntime's MatMulNBits) and
    prefills about as fast; the AVX-512 path on a Xeon 1.6-2.0x. Without a vector path the kernels run plain C++,
    slower than the portable graph (20.8 vs 33.0 decode on the EPYC), so that is never chosen. The NEON path is
    checked for correctness under emulation (`make arm-check`); its speed on real ARM hardware is unmeasured.
    """
    best = next(((need, name) for feat, need, name in PATHS if feat in lib), None)
    if best is None:
        return False, ("the library has no vector path for this CPU (built without AVX2/AVX-512/NEON), so our "
                       "kernels would run plain C++, slower than the portable graph; COGENESIS_KERNELS=1 uses them "
                       "anyway (the exact path)")
    need, name = best
    missing = [f for f in need if f not in cpu]
    if missing:
        return False, (f"the library was built for its {name} but this CPU lacks {', '.join(missing)}; build one "
                       "for this CPU (`cogenesis kernels build` with COGENESIS_KERNELS_MARCH unset)")
    return True, name


def needs_trial() -> bool:
    """Auto mode on a path we have not measured (NEON): the runtime times both graphs at first load
    (runtime/kernel_trial.py) instead of trusting the table."""
    if mode() != "auto":
        return False
    use, path = dispatch(cpu_features(), library_features())
    return use and path not in MEASURED


def usage() -> tuple[Path | None, str]:
    """The library the runtime loads (None: the portable graph) and why, in words for `info`/`status`."""
    if mode() == "off":
        return None, "not used: COGENESIS_KERNELS=0"
    try:  # the build of THESE sources (an older build of other sources is ignored)
        exact = _lib_path(_compiler(), headers_dir(fetch=False), target_arch())
    except KernelError:
        exact = None
    if exact is None or not exact.is_file():
        if mode() == "require":
            raise KernelError("COGENESIS_KERNELS=1 but the kernel library is not built for these sources; "
                              "run `cogenesis kernels build`")
        return None, "not used: run `cogenesis kernels build`"
    if mode() == "require":
        return exact, "used: library built (COGENESIS_KERNELS=1)"
    fast, why = dispatch(cpu_features(), library_features())
    return (exact, f"used: library built, {why}") if fast else (None, f"not used: {why}")


def library() -> Path | None:
    """The built library for the current sources when the runtime should use it, else None."""
    return usage()[0]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    cmd = args[0] if args else "status"
    try:
        if cmd == "build":
            print(build(force="--force" in args))
        elif cmd == "status":
            lib, why = usage()
            print(f"kernels: {mode()}; -march={target_arch()}; {why}" + (f"; library: {lib}" if lib else ""))
        else:
            print(__doc__)
            return 2
    except KernelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
