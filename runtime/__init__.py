"""cogenesis.runtime: the torch-free on-device runtime (numpy + onnxruntime + tokenizers + jinja2).

    import cogenesis.runtime as rt
    model = rt.load("artifacts/bundles/smollm2-int4")
    print(model.generate([{"role": "user", "content": "Hi"}], max_new_tokens=32).text)
"""

from cogenesis.runtime.bundle import BundleError

from .edge import EdgeModel
from .generate import GenerationResult, GenerationStats
from .sampling import Sampler, SamplingConfig


def load(bundle, threads: int | None = None, verify: bool = True, trusted_keys=None) -> EdgeModel:
    """Load and verify a bundle directory.

    `trusted_keys`: Ed25519 public keys (PEM paths or bytes); the bundle must carry a manifest.sig that one of
    them verifies, checked before any file of the bundle is opened (see cogenesis.runtime.signing)."""
    return EdgeModel(bundle, threads=threads, verify=verify, trusted_keys=trusted_keys)


__all__ = ["load", "EdgeModel", "BundleError", "GenerationResult", "GenerationStats", "Sampler", "SamplingConfig"]
