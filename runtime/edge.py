"""EdgeModel: a verified bundle, ready to chat. The one object most users need."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from cogenesis.runtime.bundle import BundleError, read_manifest, verify_bundle
from tokenizers import Tokenizer

from . import chat, kernel_trial, kernels
from .generate import GenerationResult, GenerationStats, StreamDecoder, generate_tokens
from .model import Decoder, KVSpec, make_session, uses_gqa
from .sampling import Sampler, SamplingConfig
from .vocab import vocab_fingerprint

Prompt = str | list[dict]


def _open_session(path: Path, threads: int | None, lib: str | None):
    try:
        return make_session(str(path), threads, custom_ops=lib)
    except Exception as e:
        raise BundleError(f"{path} could not be loaded by onnxruntime ({e}); re-export the bundle") from e


class EdgeModel:
    def __init__(self, bundle: str | Path, threads: int | None = None, verify: bool = True, trusted_keys=None):
        self.path = Path(bundle)
        self.manifest = read_manifest(self.path, trusted_keys=trusted_keys)
        if verify:
            verify_bundle(self.path, self.manifest)
        m = self.manifest
        try:
            self.tokenizer = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        except Exception as e:  # tokenizers raises a bare Exception on bad files
            raise BundleError(f"{self.path / 'tokenizer.json'} could not be read ({e}); re-export the bundle") from e
        self.template = chat.compile_template((self.path / "chat_template.jinja").read_text(encoding="utf-8"))
        self.generation_config = json.loads((self.path / "generation_config.json").read_text(encoding="utf-8"))
        onnx_path, lib = self._graph(threads)
        try:
            session = _open_session(onnx_path, threads, lib)
        except BundleError as e:
            if lib is None or kernels.mode() == "require":
                raise
            # a kernel-graph problem: the portable graph may still load (if not, the bundle is broken)
            onnx_path, lib = self.path / m["onnx"]["file"], None
            session = _open_session(onnx_path, threads, None)
            warnings.warn(f"model.kernel.onnx did not load with our kernel library ({e.__cause__}); using the "
                          "portable model.onnx", stacklevel=2)
        self.graph_file, self.kernel_library = onnx_path.name, lib
        self._check_signature(session)
        mm = m["model"]
        shared = m["onnx"].get("kv_cache") == "shared-buffer" or uses_gqa(str(onnx_path))
        self.decoder = Decoder(session, KVSpec(mm["num_layers"], mm["num_kv_heads"], mm["head_dim"]), shared_kv=shared)
        st = m.get("special_tokens", {})
        eos = st.get("eos_token_ids") or self.generation_config.get("eos_token_id") or []
        self.stop_ids = set(eos if isinstance(eos, list) else [eos])
        self.special_tokens = st

    def _graph(self, threads: int | None) -> tuple[Path, str | None]:
        """The kernel graph (model.kernel.onnx) when the bundle has one, our kernel library is built and
        `kernels.dispatch` picks it here (on a CPU whose path we have not measured: when a first-load trial finds
        it faster), else the portable model.onnx. Both compute the same function (the export report checks it)."""
        portable = self.path / self.manifest["onnx"]["file"]
        kg = self.manifest["onnx"].get("kernel_graph")
        self.kernel_choice = "the bundle has no kernel graph"
        if not kg:
            return portable, None
        lib, self.kernel_choice = kernels.usage()  # None when off or not built; raises when required and missing
        if lib and kernels.needs_trial():
            try:
                mm = self.manifest["model"]
                kv = KVSpec(mm["num_layers"], mm["num_kv_heads"], mm["head_dim"])
                faster, self.kernel_choice = kernel_trial.kernels_faster(
                    portable, self.path / kg["file"], str(lib), threads, kv, uses_gqa(str(portable)),
                    json.dumps([self.manifest["files"].get(f, {}).get("sha256") for f in (kg["file"], "model.onnx.data")]))
            except Exception as e:  # noqa: BLE001 - a failed trial must not stop the model: portable graph
                faster, self.kernel_choice = False, f"first-load trial failed ({e}); the portable graph runs"
            lib = lib if faster else None
        return (self.path / kg["file"], str(lib)) if lib else (portable, None)

    def _check_signature(self, session) -> None:
        want = {i["name"]: i for i in self.manifest["onnx"]["inputs"]}
        have = {i.name for i in session.get_inputs()}
        if set(want) != have:
            missing, extra = sorted(set(want) - have), sorted(have - set(want))
            raise BundleError(
                f"{self.path / self.manifest['onnx']['file']}: ONNX inputs do not match manifest.json "
                f"(missing {missing[:4]}, unexpected {extra[:4]}); the model file belongs to another export, re-export the bundle"
            )

    # -- text <-> ids ------------------------------------------------------------------------------------
    @property
    def vocab_fingerprint(self) -> str:
        """The manifest's ``model.vocab_fingerprint``, or computed from tokenizer.json (older bundles)."""
        return self.manifest["model"].get("vocab_fingerprint") or vocab_fingerprint(self.tokenizer)

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        return chat.render(self.template, messages, add_generation_prompt, **self.special_tokens.get("strings", {}))

    def encode(self, prompt: Prompt) -> list[int]:
        text = self.render(prompt) if isinstance(prompt, list) else prompt
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # -- generation --------------------------------------------------------------------------------------
    def _sampler(self, temperature: float, top_k: int, top_p: float, seed: int | None) -> Sampler:
        return Sampler(SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed))

    def stream_ids(self, prompt: Prompt, max_new_tokens: int = 256, temperature: float = 0.0, top_k: int = 0,
                   top_p: float = 1.0, seed: int | None = None, stop_ids: set[int] | None = None,
                   stats: GenerationStats | None = None, repetition_penalty: float = 1.0) -> Iterator[int]:
        ids = prompt if isinstance(prompt, list) and prompt and isinstance(prompt[0], int) else self.encode(prompt)
        return generate_tokens(self.decoder, ids, self._sampler(temperature, top_k, top_p, seed), max_new_tokens,
                               self.stop_ids if stop_ids is None else stop_ids, stats, repetition_penalty)

    def stream(self, prompt: Prompt, stats: GenerationStats | None = None, **kw) -> Iterator[str]:
        """Yield text pieces as they are generated."""
        sd = StreamDecoder(self.tokenizer)
        for tok in self.stream_ids(prompt, stats=stats, **kw):
            if piece := sd.push(tok):
                yield piece
        if tail := sd.flush():
            yield tail

    def generate(self, prompt: Prompt, **kw) -> GenerationResult:
        stats = GenerationStats()
        ids = list(self.stream_ids(prompt, stats=stats, **kw))
        return GenerationResult(self.decode(ids), ids, stats)

    def logits(self, ids: list[int]) -> np.ndarray:
        """Logits at every position of `ids` (fresh cache): [len(ids), vocab]."""
        self.decoder.reset()
        return self.decoder.forward(ids, keep=0)
