"""GGUF block formats decoded to integer codes: bit-exact against gguf-py's own dequantization (an independent
implementation), on random blocks of every type we export from (any bit pattern is a valid block once its
fp16 scales are finite)."""

from __future__ import annotations

import numpy as np
import pytest
from cogenesis.export.gguf_codes import DECODERS, BlockCodes, concat_rows
from gguf.quants import GGML_QUANT_SIZES, GGMLQuantizationType, dequantize

# byte offsets of each fp16 scale inside one block (randomized separately so they are finite)
F16_AT = {"Q4_1": (0, 2), "Q8_0": (0,), "Q5_0": (0,), "Q4_K": (0, 2), "Q6_K": (208,)}


def random_blocks(kind: str, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    qt = GGMLQuantizationType[kind]
    block, size = GGML_QUANT_SIZES[qt]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (rows, cols // block, size), dtype=np.uint8)
    for at in F16_AT[kind]:
        raw[..., at : at + 2] = rng.uniform(-0.05, 0.05, (rows, cols // block)).astype(np.float16)[..., None].view(np.uint8)
    return raw.reshape(rows, -1)


@pytest.mark.parametrize("kind", sorted(DECODERS))
def test_codes_dequantize_exactly_like_gguf_py(kind):
    assert set(DECODERS) == set(F16_AT)  # a new decoder needs its scale offsets here
    raw = random_blocks(kind, rows=6, cols=512)
    codes = DECODERS[kind](raw, 512)
    ref = dequantize(raw, GGMLQuantizationType[kind]).reshape(6, 512).astype(np.float32)
    assert np.array_equal(codes.dequantize(), ref)
    assert codes.kind == kind
    if codes.m is None:  # signed codes: what the 8-bit MatMulNBits stores as code + 128
        assert codes.q.dtype == np.int8
    else:  # 4-bit affine codes
        assert codes.q.max() <= 15 and codes.block == 32


def test_q4_k_and_q6_k_scales_are_exact_in_fp32():
    """d * sc (fp16 times a 6/8-bit integer) must not round, or the sub-block scale would not be the GGUF's."""
    for kind in ("Q4_K", "Q6_K"):
        c = DECODERS[kind](random_blocks(kind, 4, 256, seed=1), 256)
        assert np.array_equal(c.d.astype(np.float64), c.d.astype(np.float32).astype(np.float64))


def test_rows_of_one_code_shape_stack_and_others_refuse():
    a = DECODERS["Q5_0"](random_blocks("Q5_0", 2, 256), 256)
    b = DECODERS["Q8_0"](random_blocks("Q8_0", 3, 256), 256)
    both = concat_rows([a, b])
    assert both.q.shape == (5, 256) and both.kind == "Q5_0+Q8_0"
    assert np.array_equal(both.dequantize(), np.concatenate([a.dequantize(), b.dequantize()]))
    k6 = DECODERS["Q6_K"](random_blocks("Q6_K", 1, 256), 256)  # signed too, but blocks of 16
    with pytest.raises(ValueError, match="different code shapes"):
        concat_rows([a, k6])
    assert isinstance(both, BlockCodes)
