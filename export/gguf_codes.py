"""GGUF block formats as integer codes (format knowledge only, numpy in / numpy out).

gguf-py dequantizes to floats; to keep a GGUF model's own rounding on the device we need the codes:
  Q4_1 (block 32): x = d * q + m, q in 0..15, d/m fp16 per block  -> 20 bytes: d, m, 16 bytes of nibbles
  Q8_0 (block 32): x = d * q,     q in -128..127, d fp16 per block -> 34 bytes: d, 32 int8
Nibble order in Q4_1: byte j holds element j (low nibble) and element j + 16 (high nibble).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BLOCK = 32


@dataclass
class BlockCodes:
    """Row-major codes of a [rows, cols] weight: q [rows, cols] (uint8 or int8), d/m [rows, cols // 32] fp32."""

    q: np.ndarray
    d: np.ndarray
    m: np.ndarray | None  # None for symmetric formats (Q8_0)
    kind: str

    def dequantize(self) -> np.ndarray:
        r, c = self.q.shape
        x = self.q.reshape(r, c // BLOCK, BLOCK).astype(np.float32) * self.d[..., None]
        if self.m is not None:
            x = x + self.m[..., None]
        return x.reshape(r, c)

    def take_rows(self, idx: np.ndarray) -> BlockCodes:
        return BlockCodes(self.q[idx], self.d[idx], None if self.m is None else self.m[idx], self.kind)


def q4_1_codes(raw: np.ndarray, cols: int) -> BlockCodes:
    """raw: uint8 [rows, cols / 32 * 20] as stored in the GGUF file."""
    rows = raw.shape[0]
    b = raw.reshape(rows, cols // BLOCK, 20)
    d = b[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    m = b[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    qs = b[..., 4:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).reshape(rows, cols)
    return BlockCodes(q.astype(np.uint8), d, m, "Q4_1")


def q8_0_codes(raw: np.ndarray, cols: int) -> BlockCodes:
    rows = raw.shape[0]
    b = raw.reshape(rows, cols // BLOCK, 34)
    d = b[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    q = b[..., 2:].copy().view(np.int8).reshape(rows, cols)
    return BlockCodes(q, d, None, "Q8_0")


DECODERS = {"Q4_1": q4_1_codes, "Q8_0": q8_0_codes}


def llama_unpermute_rows(rows: int, n_head: int) -> np.ndarray:
    """Row order that undoes llama.cpp's q/k permutation (the inverse of convert_hf_to_gguf's `permute`)."""
    dim = rows // n_head // 2
    return np.arange(rows).reshape(n_head, dim, 2).swapaxes(2, 1).reshape(rows)


def pack_nibbles(q: np.ndarray) -> np.ndarray:
    """[N, K] codes 0..15 -> MatMulNBits B layout [N, K/32, 16]: element 2i in the low nibble, 2i+1 high."""
    n, k = q.shape
    q = q.reshape(n, k // BLOCK, BLOCK // 2, 2).astype(np.uint8)
    return (q[..., 0] | (q[..., 1] << 4)).astype(np.uint8)
