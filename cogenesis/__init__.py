"""CoGenesis Edge: on-device small model + cloud large model co-generation."""

import logging

__version__ = "0.1.0"

# transformers imports torchao when it loads a model; torchao then warns that its CUDA-only .so files do not load on
# this CPU ("Failed to load .../_C_mxfp8...so") and torch warns about torchao's Enum registrations. Neither affects
# anything we run, and a newcomer reads them as errors (issue 15): keep those two loggers to real errors.
for _name in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_name).setLevel(logging.ERROR)
