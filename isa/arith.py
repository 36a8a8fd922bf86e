"""Exact element arithmetic of ``EPILOGUE`` and ``VECTOR``.

These numpy functions are the specification: the reference model executes
them, the hardware's block tests compare against them.  All intermediate
values are exact in int64 (the widest product is int32 x int32).
"""

from __future__ import annotations

import numpy as np

from .encoding import Activation, Memory, VectorOp

INT8_MIN, INT8_MAX = -(1 << 7), (1 << 7) - 1
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


def saturate(x: np.ndarray, memory: Memory) -> np.ndarray:
    """Clamp to the element type of ``memory`` (int8 scratchpad, int32 accumulator)."""
    x = np.asarray(x, dtype=np.int64)
    if memory is Memory.SPAD:
        return np.clip(x, INT8_MIN, INT8_MAX).astype(np.int8)
    return np.clip(x, INT32_MIN, INT32_MAX).astype(np.int32)


def wrap32(x: np.ndarray) -> np.ndarray:
    """Two's-complement wrap to int32, as the accumulators do."""
    return np.asarray(x, dtype=np.int64).astype(np.int32)


def round_shift(x: np.ndarray, shift: np.ndarray | int) -> np.ndarray:
    """``x / 2**shift`` rounded to nearest, ties to even (exact, int64).

    ``shift`` is 0..63, broadcast against ``x``.
    """
    x = np.asarray(x, dtype=np.int64)
    shift = np.broadcast_to(np.asarray(shift, dtype=np.int64), x.shape)
    if np.any((shift < 0) | (shift > 63)):
        raise ValueError("shift must be 0..63")
    quotient = x >> shift
    remainder = x - (quotient << shift)                    # 0 <= remainder < 2**shift
    half = np.where(shift > 0, np.left_shift(np.int64(1), np.maximum(shift - 1, 0)), 0)
    round_up = (shift > 0) & ((remainder > half) | ((remainder == half) & ((quotient & 1) == 1)))
    return quotient + round_up


def requantize(x: np.ndarray, mult: np.ndarray, shift: np.ndarray, zero_point: int) -> np.ndarray:
    """``sat32(round_half_even(x * mult / 2**shift) + zero_point)`` per column."""
    product = np.asarray(x, dtype=np.int64) * np.asarray(mult, dtype=np.int64)
    return np.clip(round_shift(product, shift) + np.int64(zero_point), INT32_MIN, INT32_MAX)


TABLE_ENTRIES = 256


def table_lookup(x: np.ndarray, table: np.ndarray) -> np.ndarray:
    """The ``table`` activation: ``table[sat8(x) mod 256]``, int64.

    ``table`` holds the 256 int8 entries indexed by the two's-complement byte of the int8 input
    (entry 255 is the value for -1, entry 128 for -128).
    """
    table = np.asarray(table)
    if table.shape != (TABLE_ENTRIES,):
        raise ValueError(f"an activation table has {TABLE_ENTRIES} entries, not shape {table.shape}")
    index = np.clip(np.asarray(x, dtype=np.int64), INT8_MIN, INT8_MAX) & 0xFF
    return table.astype(np.int8).astype(np.int64)[index]


def activate(x: np.ndarray, act: Activation, clip_lo: int, clip_hi: int,
             table: np.ndarray | None = None) -> np.ndarray:
    x = np.asarray(x, dtype=np.int64)
    if act is Activation.RELU:
        return np.maximum(x, 0)
    if act is Activation.CLIP:
        return np.minimum(np.maximum(x, clip_lo), clip_hi)
    if act is Activation.TABLE:
        if table is None:
            raise ValueError("act=table needs the activation table")
        return table_lookup(x, table)
    return x


def epilogue(
    tile: np.ndarray,
    *,
    bias: np.ndarray | None = None,
    mult: np.ndarray | None = None,
    shift: np.ndarray | None = None,
    residual: np.ndarray | None = None,
    act: Activation = Activation.NONE,
    out: Memory = Memory.SPAD,
    out_zp: int = 0,
    clip_lo: int = 0,
    clip_hi: int = 0,
    table: np.ndarray | None = None,
) -> np.ndarray:
    """The ``EPILOGUE`` chain over an m x n int32 tile; a stage runs when its operand is given.

    ``bias``, ``mult`` and ``shift`` are per column (length n; ``shift`` is
    taken modulo 64 as the hardware reads its low 6 bits); ``residual`` is
    an m x n int8 tile; ``table`` the 256 int8 entries of the activation
    table (read with ``act=TABLE``, see :func:`table_lookup`).  Returns int8
    (``out=SPAD``) or int32 (``out=ACC``).
    """
    x = np.asarray(tile, dtype=np.int64)
    if bias is not None:
        x = wrap32(x + np.asarray(bias, dtype=np.int64)).astype(np.int64)
    if (mult is None) != (shift is None):
        raise ValueError("requantize needs both mult and shift")
    if mult is not None:
        x = requantize(x, mult, np.asarray(shift, dtype=np.int64) & 63, out_zp)
    if residual is not None:
        x = np.clip(x + np.asarray(residual, dtype=np.int64), INT32_MIN, INT32_MAX)
    x = activate(x, act, clip_lo, clip_hi, table)
    return saturate(x, out)


def vector(
    op: VectorOp,
    x: np.ndarray,
    y: np.ndarray | int,
    *,
    shift: int = 0,
    clip_lo: int = 0,
    clip_hi: int = 0,
    out: Memory,
) -> np.ndarray:
    """One ``VECTOR`` operation on sign-extended operands, saturated to ``out``'s type."""
    x = np.asarray(x, dtype=np.int64)
    y = np.asarray(y, dtype=np.int64)
    if op is VectorOp.ADD:
        result = x + y
    elif op is VectorOp.SUB:
        result = x - y
    elif op is VectorOp.MUL:
        result = round_shift(x * y, shift)
    elif op is VectorOp.MAX:
        result = np.maximum(x, y)
    elif op is VectorOp.MIN:
        result = np.minimum(x, y)
    elif op is VectorOp.SHR:
        result = round_shift(x, shift)
    elif op is VectorOp.CLIP:
        result = np.minimum(np.maximum(x, clip_lo), clip_hi)
    elif op is VectorOp.MOV:
        result = x
    else:
        raise ValueError(f"unknown vector op {op!r}")
    return saturate(np.broadcast_to(result, np.broadcast_shapes(x.shape, y.shape)), out)
