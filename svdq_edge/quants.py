"""GGML block layouts as a table (cf. gguf-py's GGML_QUANT_SIZES).

Each entry: (elements per block, bytes per block), with the byte sum spelled out.
"""
from __future__ import annotations

from gguf import GGMLQuantizationType as T

QK_K = 256

# qtype -> (block elements, block bytes)
LAYOUTS: dict[int, tuple[int, int]] = {
    T.F32: (1, 4),
    T.F16: (1, 2),
    T.BF16: (1, 2),
    T.Q4_0: (32, 2 + 16),                                # d, 32 nibbles
    T.Q4_1: (32, 2 + 2 + 16),                            # d, m, 32 nibbles
    T.Q5_0: (32, 2 + 4 + 16),                            # d, qh (32 high bits), 32 nibbles
    T.Q5_1: (32, 2 + 2 + 4 + 16),                        # d, m, qh, 32 nibbles
    T.Q8_0: (32, 2 + 32),                                # d, 32 int8
    T.Q4_K: (QK_K, 2 + 2 + 12 + QK_K // 2),              # d, dmin, 6-bit scales/mins, nibbles
    T.Q5_K: (QK_K, 2 + 2 + 12 + QK_K // 8 + QK_K // 2),  # d, dmin, scales, qh, nibbles
    T.Q6_K: (QK_K, QK_K // 2 + QK_K // 4 + QK_K // 16 + 2),  # ql, qh, int8 scales, d
    T.Q8_K: (QK_K, 4 + QK_K + QK_K // 16 * 2),           # f32 d, 256 int8, int16 bsums
}

SUPPORTED = frozenset(LAYOUTS)      # types a GGUF file may hold

# Weight layouts of our own, made at load time for a kernel (never in a file), in quads of 4 blocks
# (native/kernels.c, x4_row):
#   Q5_0X4 88 B: qs[4][16], 64-bit masks of the fifth bits of values 0-15 and 16-31 (bit 16 i + l
#                for block i), d[4]
#   Q8_0X4 136 B: qs int8[4][32] (the 128 values in order), d[4]
Q5_0X4, Q8_0X4 = 106, 108
REPACKED: dict[int, tuple[int, int]] = {Q5_0X4: (4 * 32, 4 * (2 + 4 + 16)), Q8_0X4: (4 * 32, 4 * (2 + 32))}
REPACKED_FROM = {Q5_0X4: T.Q5_0, Q8_0X4: T.Q8_0}
REPACKED_NAMES = {Q5_0X4: "Q5_0X4", Q8_0X4: "Q8_0X4"}


def type_name(qtype: int) -> str:
    if qtype in REPACKED_NAMES:
        return REPACKED_NAMES[qtype]
    try:
        return T(qtype).name
    except ValueError:
        return f"type {qtype}"


def _layout(qtype: int) -> tuple[int, int]:
    """(elements, bytes) of one block of qtype; unsupported types fail loudly."""
    lay = LAYOUTS.get(qtype) or REPACKED.get(qtype)
    if lay is None:
        raise ValueError(f"unsupported tensor type {type_name(qtype)}")
    return lay


def row_bytes(qtype: int, n_cols: int) -> int:
    """Bytes of one row of n_cols elements; fails loudly when the row does not fill whole blocks."""
    blk, nbytes = _layout(qtype)
    if n_cols % blk:
        raise ValueError(f"row size {n_cols} is not a multiple of {type_name(qtype)} block size {blk}")
    return n_cols // blk * nbytes


def row_cols(qtype: int, n_bytes: int) -> int:
    """Elements in a row of n_bytes (row_bytes inverted); fails loudly on a partial block."""
    blk, nbytes = _layout(qtype)
    if n_bytes % nbytes:
        raise ValueError(f"row of {n_bytes} bytes is not whole {type_name(qtype)} blocks of {nbytes}")
    return n_bytes // nbytes * blk
