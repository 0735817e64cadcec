"""GGUF block formats as integer codes (format knowledge only, numpy in / numpy out).

gguf-py dequantizes to floats; to keep a GGUF model's own rounding on the device we need the codes. Every format
below becomes one of two shapes of `BlockCodes`, each exact in fp32 (llama.cpp's own dequantization order):
  4-bit affine, block 32:  x = d * q + m, q in 0..15            Q4_1 (d, m fp16), Q4_K (d = d*sc, m = -dmin*mn)
  signed, block 32 or 16:  x = d * q,     q int8 (centred)      Q8_0, Q5_0 (q - 16), Q6_K (q - 32, d = d*sc, block 16)
Q4_K/Q6_K are 256-element super-blocks whose 6/8-bit sub-block scales multiply a fp16 d: d*sc has at most
11 + 8 significant bits, so the per-sub-block scale is exact in fp32 and the super-block disappears.
Nibble order in Q4_1/Q5_0: byte j holds element j (low nibble) and element j + 16 (high nibble).
Tested against gguf-py's own `gguf.quants.dequantize` on every type (tests/test_gguf_codes.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BLOCK = 32


@dataclass
class BlockCodes:
    """Row-major codes of a [rows, cols] weight: q [rows, cols] (uint8 0..15 when m is set, else centred int8),
    d/m [rows, cols // block] fp32."""

    q: np.ndarray
    d: np.ndarray
    m: np.ndarray | None  # None for symmetric formats (Q8_0, Q5_0, Q6_K)
    kind: str
    block: int = BLOCK

    def dequantize(self) -> np.ndarray:
        r, c = self.q.shape
        x = self.q.reshape(r, c // self.block, self.block).astype(np.float32) * self.d[..., None]
        if self.m is not None:
            x = x + self.m[..., None]
        return x.reshape(r, c)

    def take_rows(self, idx: np.ndarray) -> BlockCodes:
        return BlockCodes(self.q[idx], self.d[idx], None if self.m is None else self.m[idx], self.kind, self.block)

    @property
    def shape(self) -> str:
        """'affine4' (4-bit codes plus a per-block min) or 'signed8' (codes fit int8, no min)."""
        return "affine4" if self.m is not None else "signed8"


def concat_rows(parts: list[BlockCodes]) -> BlockCodes:
    """Stack weights that share one code shape and block size (q, k, v -> one qkv weight)."""
    if len({(p.shape, p.block) for p in parts}) != 1:
        raise ValueError("cannot stack GGUF weights of different code shapes: " + ", ".join(p.kind for p in parts))
    kinds = sorted({p.kind for p in parts})
    return BlockCodes(np.concatenate([p.q for p in parts]), np.concatenate([p.d for p in parts]),
                      None if parts[0].m is None else np.concatenate([p.m for p in parts]), "+".join(kinds), parts[0].block)


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


def _f16(b: np.ndarray) -> np.ndarray:
    return b.copy().view(np.float16)[..., 0].astype(np.float32)


def q5_0_codes(raw: np.ndarray, cols: int) -> BlockCodes:
    """22 bytes per 32: d fp16, 4 bytes of fifth bits (bit j -> element j), 16 bytes of nibbles; x = d*(q - 16)."""
    rows = raw.shape[0]
    b = raw.reshape(rows, cols // BLOCK, 22)
    d = _f16(b[..., 0:2])
    qh = b[..., 2:6].copy().view("<u4")[..., 0]
    high = ((qh[..., None] >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8) << 4
    qs = b[..., 6:]
    low = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)
    q = ((low | high).astype(np.int16) - 16).astype(np.int8).reshape(rows, cols)
    return BlockCodes(q, d, None, "Q5_0")


def _k_scales(sc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 12 packed bytes of a Q4_K super-block -> 8 six-bit scales and 8 six-bit mins (get_scale_min_k4)."""
    s = sc.astype(np.uint8)
    scale = np.concatenate([s[..., 0:4] & 63, (s[..., 8:12] & 0x0F) | ((s[..., 0:4] >> 6) << 4)], axis=-1)
    mins = np.concatenate([s[..., 4:8] & 63, (s[..., 8:12] >> 4) | ((s[..., 4:8] >> 6) << 4)], axis=-1)
    return scale.astype(np.float32), mins.astype(np.float32)


def q4_k_codes(raw: np.ndarray, cols: int) -> BlockCodes:
    """144 bytes per 256: d, dmin fp16, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles in 4 chunks of 64
    elements (low nibbles = first 32, high = next 32); x = (d*sc) q - (dmin*mn)."""
    rows = raw.shape[0]
    b = raw.reshape(rows, cols // 256, 144)
    d, dmin = _f16(b[..., 0:2]), _f16(b[..., 2:4])
    sc, mn = _k_scales(b[..., 4:16])
    qs = b[..., 16:].reshape(rows, cols // 256, 4, 32)
    q = np.stack([qs & 0x0F, qs >> 4], axis=3).reshape(rows, cols)
    return BlockCodes(q.astype(np.uint8), (d[..., None] * sc).reshape(rows, -1),
                      -(dmin[..., None] * mn).reshape(rows, -1), "Q4_K")


def q6_k_codes(raw: np.ndarray, cols: int) -> BlockCodes:
    """210 bytes per 256: 128 bytes low nibbles, 64 bytes of 2-bit highs, 16 int8 scales, d fp16; two halves of
    128 elements, each four runs of 32 (ql low/high nibble x first/second 32 bytes); x = (d*sc) (q - 32)."""
    rows = raw.shape[0]
    b = raw.reshape(rows, cols // 256, 210)
    ql = b[..., 0:128].reshape(rows, -1, 2, 2, 32)  # [half, first/second 32 bytes, l]
    qh = b[..., 128:192].reshape(rows, -1, 2, 1, 32)
    sc = b[..., 192:208].copy().view(np.int8).astype(np.float32)
    d = _f16(b[..., 208:210])
    runs = [(ql[..., 0, :] & 0x0F) | ((qh[..., 0, :] & 3) << 4),          # l + 0
            (ql[..., 1, :] & 0x0F) | (((qh[..., 0, :] >> 2) & 3) << 4),   # l + 32
            (ql[..., 0, :] >> 4) | (((qh[..., 0, :] >> 4) & 3) << 4),     # l + 64
            (ql[..., 1, :] >> 4) | (((qh[..., 0, :] >> 6) & 3) << 4)]     # l + 96
    q = np.stack(runs, axis=3).astype(np.int16) - 32  # [rows, sb, half, run, 32]
    return BlockCodes(q.astype(np.int8).reshape(rows, cols), (d[..., None] * sc).reshape(rows, -1), None, "Q6_K", 16)


DECODERS = {"Q4_1": q4_1_codes, "Q8_0": q8_0_codes, "Q5_0": q5_0_codes, "Q4_K": q4_k_codes, "Q6_K": q6_k_codes}


def llama_unpermute_rows(rows: int, n_head: int) -> np.ndarray:
    """Row order that undoes llama.cpp's q/k permutation (the inverse of convert_hf_to_gguf's `permute`)."""
    dim = rows // n_head // 2
    return np.arange(rows).reshape(n_head, dim, 2).swapaxes(2, 1).reshape(rows)


def pack_nibbles(q: np.ndarray) -> np.ndarray:
    """[N, K] codes 0..15 -> MatMulNBits B layout [N, K/32, 16]: element 2i in the low nibble, 2i+1 high."""
    n, k = q.shape
    q = q.reshape(n, k // BLOCK, BLOCK // 2, 2).astype(np.uint8)
    return (q[..., 0] | (q[..., 1] << 4)).astype(np.uint8)
