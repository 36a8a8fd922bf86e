"""Element-wise kernels: :func:`relu`, :func:`clip`, the quantized :func:`add` and the activation
:func:`table`, over int8 tensors of any shape taken as rows of ``cols`` elements, in double-buffered
blocks of rows."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from braze.isa import Activation, Config, Instruction, Memory, Opcode, VectorOp
from braze.isa.timing import table_rows

from .common import (
    MAX_VECTOR_MULT,
    Kernel,
    KernelError,
    _Allocator,
    _Buffer,
    _cdiv,
    _check_config,
    _counters_spec,
    _finish,
    _first_orderable,
    _int_in,
    _load_table,
    _OperandSpec,
    _place,
    _positive,
    _set_clip,
    _slot,
    _Streams,
    _table_spec,
    _vector,
)

__all__ = ["relu", "clip", "add", "table"]


# ---------------------------------------------------------------------------------------------------------
# Element-wise kernels

def _flat_rows(streams: _Streams, op: Opcode, buffer: _Buffer, dram: int, elements: int) -> None:
    """LOAD into or STORE from a scratchpad buffer ``elements`` consecutive int8 at ``dram``, as rows
    of ``cols`` (the last one partial)."""
    cols = streams.config.cols
    full, rest = divmod(elements, cols)
    access = {"writes": [buffer]} if op is Opcode.LOAD else {"reads": [buffer]}
    if full:
        streams.add(Instruction.make(op, mem=Memory.SPAD, addr=buffer.start, rows=full, len=cols, dram=dram,
                                     stride=cols), **access)
    if rest:
        streams.add(Instruction.make(op, mem=Memory.SPAD, addr=buffer.start + full, rows=1, len=rest,
                                     dram=dram + full * cols, stride=0), **access)


def _shape(shape: Any) -> tuple[int, ...]:
    if isinstance(shape, int | np.integer):
        shape = (shape,)
    shape = tuple(shape)
    if not shape:
        raise KernelError("an element-wise kernel needs a non-empty shape")
    for axis, size in enumerate(shape):
        _positive(f"shape[{axis}]", size)
    return tuple(int(s) for s in shape)


def _elementwise(name: str, config: Config, shape: Any, inputs: tuple[str, ...], addrs, base,
                 body: Callable[[_Streams, dict[str, _Buffer], dict[str, _Buffer], _Buffer, int], None],
                 acc_per_row: int, setup: Callable[[_Streams], None] | None = None, *,
                 with_table: bool = False) -> Kernel:
    """Shared loop: the flat tensor as rows of ``cols`` int8, in double-buffered blocks of rows.

    ``with_table``: the kernel has a ``table`` operand, loaded into the activation table first."""
    config = _check_config(config)
    shape = _shape(shape)
    elements = int(np.prod(shape))
    COLS = config.cols
    specs = [*(_OperandSpec(x, shape, "i1", "any (element-wise)", "input") for x in inputs),
             _OperandSpec("out", shape, "i1", "as the inputs", "output"), _counters_spec()]
    if with_table:
        specs.insert(len(inputs), _table_spec())
    operands = _place(config, specs, addrs, base)
    total_rows = _cdiv(elements, COLS)
    reserved = table_rows(config) if with_table else 0
    spad_share = (config.spad_rows - reserved) // (2 * (len(inputs) + 1))
    acc_share = config.acc_rows // (2 * acc_per_row) if acc_per_row else spad_share
    block = max(1, min(total_rows, spad_share, acc_share, 1024))
    what = f"{name} of {elements} elements"

    def build(ring: int) -> Kernel:
        spad = _Allocator(Memory.SPAD, config.spad_rows, what)
        acc = _Allocator(Memory.ACC, config.acc_rows, what)
        in_slots = {x: spad.ring(x, ring, block) for x in inputs}
        for index in range(ring):
            # The inputs of one block are one dependency: a token each way per block, not per input,
            # so that shallow token queues suffice.
            group = _Buffer(f"inputs{index}", Memory.SPAD, 0, 0)
            for slots in in_slots.values():
                slots[index].group = group
        out_slots = spad.ring("out", ring, block)
        acc_slots = {f"t{i}": acc.ring(f"t{i}", ring, block) for i in range(acc_per_row)}
        streams = _Streams(config)
        if setup is not None:
            setup(streams)
        if with_table:
            _load_table(streams, spad, operands["table"])
        for step, r0 in enumerate(range(0, total_rows, block)):
            count = min(elements - r0 * COLS, block * COLS)
            rows = _cdiv(count, COLS)
            srcs = {x: _slot(slots, step) for x, slots in in_slots.items()}
            for x, buf in srcs.items():
                _flat_rows(streams, Opcode.LOAD, buf, operands[x].addr + r0 * COLS, count)
            temps = {t: _slot(slots, step) for t, slots in acc_slots.items()}
            out_buf = _slot(out_slots, step)
            body(streams, srcs, temps, out_buf, rows)
            _flat_rows(streams, Opcode.STORE, out_buf, operands["out"].addr + r0 * COLS, count)
        return _finish(name, config, streams, operands, macs=0,
                       tiling={"rows_per_block": block, "buffers": ring})

    return _first_orderable(what, config, build)


def relu(config: Config, shape: Any, *, addrs: Mapping[str, int] | None = None, base: int = 0) -> Kernel:
    """``out = max(x, 0)`` over an int8 tensor of any shape (operands ``x``, ``out``)."""
    def body(streams, srcs, temps, out_buf, rows):
        x = srcs["x"]
        streams.add(_vector(VectorOp.MAX, out_buf, out_buf.start, x, x.start, rows, imm=0),
                    reads=[x], writes=[out_buf])
    return _elementwise("relu", config, shape, ("x",), addrs, base, body, 0)


def clip(config: Config, shape: Any, lo: int, hi: int, *, addrs: Mapping[str, int] | None = None,
         base: int = 0) -> Kernel:
    """``out = min(max(x, lo), hi)`` over an int8 tensor (operands ``x``, ``out``); sets CLIP_LO/HI."""
    lo = _int_in("lo", lo, -(1 << 31), (1 << 31) - 1)
    hi = _int_in("hi", hi, lo, (1 << 31) - 1)

    def body(streams, srcs, temps, out_buf, rows):
        x = srcs["x"]
        streams.add(_vector(VectorOp.CLIP, out_buf, out_buf.start, x, x.start, rows),
                    reads=[x], writes=[out_buf])
    return _elementwise("clip", config, shape, ("x",), addrs, base, body, 0,
                        setup=lambda streams: _set_clip(streams, lo, hi))


def add(config: Config, shape: Any, *, x_scale: tuple[int, int] = (1, 0), y_scale: tuple[int, int] = (1, 0),
        x_zp: int = 0, y_zp: int = 0, out_zp: int = 0, out_shift: int = 0,
        addrs: Mapping[str, int] | None = None, base: int = 0) -> Kernel:
    """Quantized element-wise addition of two int8 tensors (operands ``x``, ``y``, ``out``).

    ``out = sat8(rq(x - x_zp, x_scale) + rq(y - y_zp, y_scale) + out_zp)`` with
    ``rq(v, (mult, shift)) = round_half_even(v * mult / 2**shift)``; ``mult`` is
    a VECTOR immediate (-32768..32767), ``shift`` 0..31, zero points -128..127.
    ``mult / 2**shift`` is the ratio of the input's scale to the output's.
    With the defaults (equal scales, zero points 0) it is one saturating VECTOR
    ``add``; otherwise each operand is rescaled into the accumulator (VECTOR
    ``sub`` of its zero point, ``mul``), the two are added there, and a final
    ``add`` of ``out_zp`` writes int8.

    ``out_shift`` (0..31) rounds the sum once more before ``out_zp``, a VECTOR ``shr``:
    ``out = sat8(round_half_even((rq(x - x_zp, x_scale) + rq(y - y_zp, y_scale)) / 2**out_shift) + out_zp)``.
    With operand shifts 0 the products are exact, so two scales cost one rounding (of the exact sum)
    instead of one per operand: the residual ``Add`` of operands at two scales (``braze.QAdd`` with
    ``x_mult``/``y_mult``/``shift``).
    """
    scales = []
    for name, scale in (("x_scale", x_scale), ("y_scale", y_scale)):
        if not isinstance(scale, tuple | list) or len(scale) != 2:
            raise KernelError(f"{name} must be (mult, shift), not {scale!r}")
        scales.append((_int_in(f"{name} mult", scale[0], -(1 << 15), MAX_VECTOR_MULT),
                       _int_in(f"{name} shift", scale[1], 0, 31)))
    zps = {name: _int_in(name, value, -128, 127) for name, value in
           (("x_zp", x_zp), ("y_zp", y_zp), ("out_zp", out_zp))}
    out_shift = _int_in("out_shift", out_shift, 0, 31)
    plain = scales == [(1, 0), (1, 0)] and not any(zps.values()) and not out_shift

    def body(streams, srcs, temps, out_buf, rows):
        if plain:
            x, y = srcs["x"], srcs["y"]
            streams.add(_vector(VectorOp.ADD, out_buf, out_buf.start, x, x.start, rows, src2=y,
                                src2_row=y.start), reads=[x, y], writes=[out_buf])
            return
        for src, temp, (mult, shift), zp in ((srcs["x"], temps["t0"], scales[0], zps["x_zp"]),
                                             (srcs["y"], temps["t1"], scales[1], zps["y_zp"])):
            operand = src
            if zp:
                streams.add(_vector(VectorOp.SUB, temp, temp.start, src, src.start, rows, imm=zp),
                            reads=[src], writes=[temp])
                operand = temp
            streams.add(_vector(VectorOp.MUL, temp, temp.start, operand, operand.start, rows, imm=mult,
                                shift=shift), reads=[operand], writes=[temp])
        t0, t1 = temps["t0"], temps["t1"]
        streams.add(_vector(VectorOp.ADD, t0, t0.start, t0, t0.start, rows, src2=t1, src2_row=t1.start),
                    reads=[t0, t1], writes=[t0])
        if out_shift:
            streams.add(_vector(VectorOp.SHR, t0, t0.start, t0, t0.start, rows, shift=out_shift),
                        reads=[t0], writes=[t0])
        streams.add(_vector(VectorOp.ADD, out_buf, out_buf.start, t0, t0.start, rows, imm=zps["out_zp"]),
                    reads=[t0], writes=[out_buf])
    return _elementwise("add", config, shape, ("x", "y"), addrs, base, body, 0 if plain else 2)


def table(config: Config, shape: Any, *, addrs: Mapping[str, int] | None = None, base: int = 0) -> Kernel:
    """``out = table[x mod 256]`` over an int8 tensor of any shape (operands ``x``, ``table``, ``out``).

    ``table`` holds 256 int8 entries (:func:`~.common.pack_table`), loaded once with ``TABLE``; per
    block a VECTOR ``mov`` widens the int8 rows into accumulator rows and an EPILOGUE with
    ``act=table`` looks them up into int8 rows.  A table that follows a GEMM or convolution is cheaper
    in its EPILOGUE (``gemm(..., act="table")``): this kernel is for one that does not.
    """
    def body(streams, srcs, temps, out_buf, rows):
        x, wide = srcs["x"], temps["t0"]
        streams.add(_vector(VectorOp.MOV, wide, wide.start, x, x.start, rows), reads=[x], writes=[wide])
        streams.add(Instruction.make(Opcode.EPILOGUE, src=wide.start, m=rows, n=streams.config.cols,
                                     dst=out_buf.start, out=Memory.SPAD, act=Activation.TABLE),
                    reads=[wide], writes=[out_buf])
    return _elementwise("table", config, shape, ("x",), addrs, base, body, 1, with_table=True)
