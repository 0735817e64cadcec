"""Bundles under hostile input and faults: confined paths, every file hashed, Ed25519 signing, atomic replacement,
kill -9 during `cogenesis export`, a full filesystem (issue 17)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cogenesis.runtime as rt
import pytest
from cogenesis.runtime import bundle as B
from cogenesis.runtime.bundle import BundleError, verify_bundle, write_bundle
from cogenesis.runtime.signing import generate_key, sign_bundle, verify_signature

from cogenesis.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _fill_small(tmp: Path) -> dict:
    """A structurally valid bundle of small files (verify_bundle only reads the table and the bytes)."""
    for name, text in (("model.onnx", "not really onnx"), ("tokenizer.json", "{}"), ("chat_template.jinja", "x"),
                       ("generation_config.json", "{}")):
        (tmp / name).write_text(text)
    return {"model": {"name": "tiny"}, "onnx": {"file": "model.onnx"}}


@pytest.fixture
def small(tmp_path) -> Path:
    return write_bundle(tmp_path / "b", _fill_small)


def _rewrite_table(b: Path, edit) -> None:
    m = json.loads((b / "manifest.json").read_text())
    edit(m["files"])
    (b / "manifest.json").write_text(json.dumps(m))


def _entry(p: Path) -> dict:
    data = p.read_bytes()
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


# ---- confinement: each case verified on HEAD (before this change) -----------------------------------------------

def test_absolute_path_in_the_table_is_refused(small):
    target = Path("/etc/hostname")
    _rewrite_table(small, lambda f: f.__setitem__(str(target), _entry(target)))
    with pytest.raises(BundleError, match="leaves the bundle directory"):
        verify_bundle(small)


@pytest.mark.parametrize("rel", ["../outside.txt", "sub/../../outside.txt", "./model.onnx", "a//b"])
def test_dot_dot_and_odd_paths_are_refused(small, rel):
    outside = small.parent / "outside.txt"
    outside.write_text("secret")
    _rewrite_table(small, lambda f: f.__setitem__(rel, _entry(outside)))
    with pytest.raises(BundleError, match="leaves the bundle directory"):
        verify_bundle(small)


def test_symlink_out_of_the_bundle_is_refused_even_with_the_right_hash(small):
    target = Path("/etc/hostname")
    (small / "host.txt").symlink_to(target)
    _rewrite_table(small, lambda f: f.__setitem__("host.txt", _entry(target)))
    with pytest.raises(BundleError, match="symlink"):
        verify_bundle(small)


def test_symlinked_directory_is_refused(small, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "w.bin").write_bytes(b"w" * 10)
    (small / "weights").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    _rewrite_table(small, lambda f: f.__setitem__("weights/w.bin", _entry(tmp_path / "elsewhere" / "w.bin")))
    with pytest.raises(BundleError, match="symlink"):
        verify_bundle(small)


def test_a_file_missing_from_the_table_is_refused(small):
    (small / "model.onnx.data").write_bytes(b"\0" * 64)
    with pytest.raises(BundleError, match="not listed"):
        verify_bundle(small)


def test_malformed_files_table_is_a_bundle_error(small):
    _rewrite_table(small, lambda f: f.__setitem__("tokenizer.json", "not an object"))
    with pytest.raises(BundleError, match="integer 'size'"):
        verify_bundle(small)


def test_runtime_refuses_unhashed_weights_before_onnxruntime_opens_anything(int4_bundle, tmp_path, monkeypatch):
    """model.onnx.data dropped from the table (and swapped): was loaded unhashed; now refused before any session."""
    b = tmp_path / "b"
    shutil.copytree(int4_bundle, b)
    _rewrite_table(b, lambda f: f.pop("model.onnx.data"))
    opened = []
    import cogenesis.runtime.edge as edge

    monkeypatch.setattr(edge, "_open_session", lambda *a, **k: opened.append(a) or pytest.fail("ORT opened a file"))
    with pytest.raises(BundleError, match=r"model\.onnx\.data.*not listed"):
        rt.load(b)
    assert opened == []


# ---- signing ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    return generate_key(d / "fleet"), generate_key(d / "other")


@pytest.fixture
def signed(int4_bundle, tmp_path, keys):
    b = tmp_path / "signed"
    shutil.copytree(int4_bundle, b)
    sign_bundle(b, keys[0][0])
    return b


def test_key_files_are_private_and_pem(keys):
    priv, pub = keys[0]
    assert oct(priv.stat().st_mode & 0o777) == "0o600"
    assert priv.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert pub.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    with pytest.raises(BundleError, match="already exists"):
        generate_key(priv.with_suffix(""))


def test_signed_bundle_loads_with_its_trusted_key(signed, keys):
    m = rt.load(signed, trusted_keys=[keys[1][1], keys[0][1]])
    assert m.generate("Hi", max_new_tokens=2).text is not None


def test_untrusted_key_unsigned_bundle_and_changed_manifest_are_refused(signed, keys, int4_bundle, tmp_path):
    with pytest.raises(BundleError, match="does not verify"):
        rt.load(signed, trusted_keys=[keys[1][1]])
    with pytest.raises(BundleError, match="not signed"):
        rt.load(int4_bundle, trusted_keys=[keys[0][1]])
    # a swapped file with a manifest rewritten to match it: hashes agree, the signature does not
    tok = signed / "generation_config.json"
    tok.write_text(tok.read_text().replace("}", ', "evil": 1}', 1))
    _rewrite_table(signed, lambda f: f.__setitem__("generation_config.json", _entry(tok)))
    verify_bundle(signed)  # internally consistent ...
    with pytest.raises(BundleError, match="does not verify"):
        rt.load(signed, trusted_keys=[keys[0][1]])  # ... but not what the key holder signed


def test_cli_keygen_sign_and_info_verify_key(int4_bundle, tmp_path, capsys):
    b = tmp_path / "b"
    shutil.copytree(int4_bundle, b)
    assert main(["keygen", "--out", str(tmp_path / "k")]) == 0
    assert main(["sign", str(b), "--key", str(tmp_path / "k.key")]) == 0
    capsys.readouterr()
    assert main(["info", str(b), "--verify-key", str(tmp_path / "k.pub")]) == 0
    assert "signed by trusted key" in capsys.readouterr().out
    generate_key(tmp_path / "stranger")
    assert main(["info", str(b), "--verify-key", str(tmp_path / "stranger.pub")]) != 0
    assert "does not verify" in capsys.readouterr().err
    assert verify_signature(b, [tmp_path / "k.pub"])


# ---- atomic replacement -----------------------------------------------------------------------------------------

def test_replacement_never_leaves_the_path_missing_or_partial(tmp_path, monkeypatch):
    """At every filesystem step of a replacement, `out` holds a complete, verifiable bundle (old or new)."""
    out = write_bundle(tmp_path / "b", _fill_small)
    seen: list[bool] = []

    def complete() -> bool:
        try:
            verify_bundle(out)
            return True
        except BundleError:
            return False

    real_rename, real_rmtree = Path.rename, shutil.rmtree

    def rename(self, target):
        r = real_rename(self, target)
        seen.append(complete())
        return r

    def rmtree(path, *a, **k):
        seen.append(complete())
        return real_rmtree(path, *a, **k)

    monkeypatch.setattr(Path, "rename", rename)
    monkeypatch.setattr(B.shutil, "rmtree", rmtree)

    def fill_new(tmp: Path) -> dict:
        m = _fill_small(tmp)
        (tmp / "model.onnx").write_text("version two")
        return m

    write_bundle(out, fill_new, force=True)
    assert seen and all(seen), seen
    assert (out / "model.onnx").read_text() == "version two"
    assert [p.name for p in tmp_path.iterdir()] == ["b"]  # the old copy is gone


def test_fallback_restores_the_old_bundle_when_the_second_rename_fails(tmp_path, monkeypatch):
    out = write_bundle(tmp_path / "b", _fill_small)
    monkeypatch.setattr(B, "_exchange", lambda a, b: False)  # a filesystem without RENAME_EXCHANGE
    real_rename, calls = Path.rename, []

    def rename(self, target):
        calls.append(self)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(BundleError, match="not enough space"):
        write_bundle(out, _fill_small, force=True)
    monkeypatch.undo()
    verify_bundle(out)
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


# ---- faults through real mechanisms -----------------------------------------------------------------------------

def test_kill_9_during_cogenesis_export_keeps_the_previous_bundle(int4_bundle, tmp_path):
    out = tmp_path / "bundles" / "smollm2"
    out.parent.mkdir()
    shutil.copytree(int4_bundle, out)
    before = json.loads((out / "manifest.json").read_text())["files"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "cogenesis.cli", "export", "--quant", "int4", "--out", str(out),
                             "--force"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    tmp_dirs: list[Path] = []
    while time.monotonic() < deadline and proc.poll() is None:  # wait until it writes into its temp folder
        tmp_dirs = [p for p in out.parent.iterdir() if p.name.startswith(".smollm2.tmp-")]
        if tmp_dirs and any(f.is_file() and f.stat().st_size > 0 for f in tmp_dirs[0].rglob("*")):
            break
        time.sleep(0.2)
    assert proc.poll() is None, f"export ended before it could be killed: {proc.stderr.read()[-2000:]!r}"
    assert tmp_dirs, "the export never started writing"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    verify_bundle(out)  # every hash checked
    assert json.loads((out / "manifest.json").read_text())["files"] == before
    assert rt.load(out).generate("Hi", max_new_tokens=2).token_ids is not None
    assert B.clean_stale(out) == tmp_dirs  # the next export removes the dead writer's folder
    assert [p.name for p in out.parent.iterdir()] == ["smollm2"]


def _mount_tmpfs_and_run(mount_dir: Path, size: str, code: str) -> subprocess.CompletedProcess:
    """Run `code` in a child that has a `size` tmpfs at mount_dir (a private mount namespace: nothing leaks out)."""
    script = f"mount -t tmpfs -o size={size} tmpfs {mount_dir} && exec {sys.executable} -c \"$0\""
    errors = []
    for prefix in (["unshare", "-rm"], ["unshare", "-Urm"]):
        if shutil.which("unshare") is None:
            break
        r = subprocess.run([*prefix, "sh", "-c", script, code], cwd=ROOT, capture_output=True, text=True, timeout=300)
        if "RESULT" in r.stdout or not r.stderr.startswith(("unshare:", "mount:")):
            return r
        errors.append(r.stderr.strip()[:200])
    pytest.skip(f"this machine cannot mount a tmpfs in a private namespace (unshare): {errors}; it runs as root or "
                "where unprivileged user namespaces are enabled (sysctl kernel.unprivileged_userns_clone=1)")


def test_export_onto_a_full_filesystem_fails_clearly_and_leaves_nothing(int4_bundle, tmp_path):
    """A 24 MiB tmpfs holding a small bundle; writing the 116 MB int4 bundle there runs out of space."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    code = f"""
import json, shutil
from pathlib import Path
from cogenesis.runtime.bundle import BundleError, write_bundle, verify_bundle
def _fill_small(tmp):
    for name in ("model.onnx", "tokenizer.json", "chat_template.jinja", "generation_config.json"):
        (tmp / name).write_text("{{}}")
    return {{"model": {{"name": "tiny"}}, "onnx": {{"file": "model.onnx"}}}}
mnt, src = Path({str(mnt)!r}), Path({str(int4_bundle)!r})
out = write_bundle(mnt / "b", _fill_small)
def fill(tmp):
    for f in src.iterdir():
        if f.name != "manifest.json":
            shutil.copyfile(f, tmp / f.name)
    return {{k: v for k, v in json.loads((src / "manifest.json").read_text()).items() if k != "files"}}
try:
    write_bundle(out, fill, force=True)
    print("RESULT no error")
except BundleError as e:
    verify_bundle(out)
    print("RESULT", json.dumps({{"error": str(e), "left": sorted(p.name for p in mnt.iterdir())}}))
"""
    r = _mount_tmpfs_and_run(mnt, "24m", code)
    line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT")), None)
    assert line is not None, r.stderr[-3000:]
    res = json.loads(line.split(" ", 1)[1])
    assert "not enough space" in res["error"] and "previous bundle is untouched" in res["error"]
    assert res["left"] == ["b"]
