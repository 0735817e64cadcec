"""Run onnxruntime-genai's model builder (`python -m cogenesis.export.builder_shim <builder arguments>`) with one
compatibility fix, applied in this subprocess only.

transformers 5.x writes Gemma-3's RoPE as one entry per layer type (``rope_parameters: {"full_attention": {...},
"sliding_attention": {...}}``); the builder 0.18's Gemma3 class reads the flat 4.x form (``rope_parameters
["rope_type"]``, ``rope_local_base_freq``) and stops with ``KeyError: 'rope_type'``. Its Gemma4 class already reads
the nested form; for Gemma3 we flatten it before the model's constructor reads it: full-attention layers keep
their theta (1e6), sliding layers get ``rope_local_base_freq`` (1e4), as transformers 4.x configs said. (Flattening
later, in ``make_rope_init``, is too late: the global cos/sin caches were then built with the default 1e4, measured
KL 0.091 and top-1 0.958 against transformers eager.)
"""

from __future__ import annotations

import runpy
import sys


def flatten_layer_rope(config) -> None:
    """Per-layer-type RoPE parameters -> the flat form plus ``rope_local_base_freq`` (no-op when already flat)."""
    rp = getattr(config, "rope_parameters", None)
    if isinstance(rp, dict) and "rope_type" not in rp and "full_attention" in rp:
        full = dict(rp["full_attention"])
        config.rope_local_base_freq = rp.get("sliding_attention", full)["rope_theta"]
        config.rope_parameters = full
        config.rope_theta = full["rope_theta"]


def _patch_gemma3() -> None:
    import onnxruntime_genai.models  # noqa: F401  (puts its folder on sys.path: builder.py imports `builders`)
    from builders import gemma  # the module object builder.py will use

    init = gemma.Gemma3Model.__init__

    def __init__(self, config, *args, **kwargs):  # before the base reads rope_theta into its RoPE attributes
        if type(self) is gemma.Gemma3Model:
            flatten_layer_rope(config)
        init(self, config, *args, **kwargs)

    gemma.Gemma3Model.__init__ = __init__


def main(argv: list[str]) -> None:
    _patch_gemma3()
    sys.argv = ["onnxruntime_genai.models.builder", *argv]
    runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
