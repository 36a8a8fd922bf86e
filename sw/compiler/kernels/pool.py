"""Pooling: :func:`maxpool2d`, :func:`avgpool2d` and :func:`global_avgpool` -- VECTOR max / sum in the
accumulator, averaging by multiply and shift (:func:`avg_multiplier`).

Limitations
-----------
* Averages use a 15-bit multiplier (:func:`avg_multiplier`), exact only for
  power-of-two divisors.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

from braze.isa import Config, Instruction, Memory, Opcode, VectorOp

from .common import (
    Kernel,
    KernelError,
    _Allocator,
    _check_config,
    _check_window,
    _counters_spec,
    _finish,
    _first_orderable,
    _OperandSpec,
    _place,
    _positive,
    _set_clip,
    _slot,
    _Streams,
    _vector,
    _window_segments,
)

__all__ = ["maxpool2d", "avgpool2d", "global_avgpool", "avg_multiplier"]


# ---------------------------------------------------------------------------------------------------------
# Pooling

def avg_multiplier(divisor: int) -> tuple[int, int]:
    """(mult, shift) with ``mult / 2**shift`` closest to ``1/divisor`` and ``mult`` a VECTOR immediate.

    ``shift = 14 + floor(log2(divisor))`` keeps ``mult`` in 2**13..2**14;
    ``mult = round(2**shift / divisor)``.  Averages are then
    ``round_half_even(sum * mult / 2**shift)``, exact for powers of two.
    """
    divisor = _positive("divisor", divisor)
    shift = 14 + divisor.bit_length() - 1
    if shift > 31:
        raise KernelError(f"cannot average over {divisor} elements (VECTOR shift is at most 31)")
    mult = ((1 << (shift + 1)) + divisor) // (2 * divisor)
    return mult, shift


def _pool2d(kind: str, config: Config, N: int, C: int, H: int, W: int, kh: int, kw: int, stride: int,
            pad: int, count_include_pad: bool, addrs, base) -> Kernel:
    config = _check_config(config)
    _positive("N", N)
    _positive("C", C)
    Ho, Wo = _check_window(H, W, kh, kw, stride, pad, pad_below_kernel=True)
    COLS = config.cols
    specs = [_OperandSpec("x", (N, H, W, C), "i1", "NHWC", "input"),
             _OperandSpec("out", (N, Ho, Wo, C), "i1", "NHWC", "output"), _counters_spec()]
    operands = _place(config, specs, addrs, base)
    x_addr, y_addr = operands["x"].addr, operands["out"].addr
    # One work item is up to `seg` pixels of one output row and one tile of `cols` channels.
    seg = max(1, min(Wo, config.acc_rows // 2, config.spad_rows // 6))
    items = [(n, oy, ox0, ct) for n in range(N) for oy in range(Ho) for ox0 in range(0, Wo, seg)
             for ct in range(0, C, COLS)]
    accumulate = VectorOp.MAX if kind == "max" else VectorOp.ADD

    def build(ring: int) -> Kernel:
        what = f"{kind}pool2d {N}x{C}x{H}x{W}"
        spad = _Allocator(Memory.SPAD, config.spad_rows, what)
        acc = _Allocator(Memory.ACC, config.acc_rows, what)
        # Each slot in a ring between two units can hold a token in flight: no more than the queue holds.
        tap_slots = spad.ring("tap", min(2 * ring, config.token_depth), seg)
        out_slots = spad.ring("out", ring, seg)
        sum_slots = acc.ring("sum", ring, seg)
        streams = _Streams(config)
        if kind == "max":
            _set_clip(streams, -128, -128)
        taps_loaded = 0
        for step, (n, oy, ox0, ct) in enumerate(items):
            rows = min(seg, Wo - ox0)
            first = (n * Ho + oy) * Wo + ox0
            length = min(COLS, C - ct)
            total = _slot(sum_slots, step)
            if kind == "max":      # start from -128: CLIP with CLIP_LO = CLIP_HI = -128
                streams.add(_vector(VectorOp.CLIP, total, total.start, total, total.start, rows),
                            reads=[total], writes=[total])
            else:                  # start from 0: multiply by an immediate 0
                streams.add(_vector(VectorOp.MUL, total, total.start, total, total.start, rows, imm=0),
                            reads=[total], writes=[total])
            for ky, kx in itertools.product(range(kh), range(kw)):
                parts = _window_segments(N, H, W, C, Ho, Wo, stride, pad, ky, kx, first, rows, x_addr, ct)
                for part in parts:
                    if part.dram is None:
                        continue       # padding: contributes nothing to a max or a sum
                    tap = _slot(tap_slots, taps_loaded)
                    taps_loaded += 1
                    row = part.local
                    streams.add(Instruction.make(Opcode.LOAD, mem=Memory.SPAD, addr=tap.start + row,
                                                 rows=part.rows, len=length, dram=part.dram,
                                                 stride=part.stride), writes=[tap])
                    streams.add(_vector(accumulate, total, total.start + row, total, total.start + row,
                                        part.rows, src2=tap, src2_row=tap.start + row),
                                reads=[total, tap], writes=[total])
            result = _slot(out_slots, step)
            if kind == "max":
                streams.add(_vector(VectorOp.MOV, result, result.start, total, total.start, rows),
                            reads=[total], writes=[result])
            else:
                for lo, hi, divisor in _avg_divisors(H, W, kh, kw, stride, pad, oy, ox0, rows,
                                                     count_include_pad):
                    mult, shift = avg_multiplier(divisor)
                    streams.add(_vector(VectorOp.MUL, result, result.start + lo, total, total.start + lo,
                                        hi - lo, imm=mult, shift=shift), reads=[total], writes=[result])
            streams.add(Instruction.make(Opcode.STORE, mem=Memory.SPAD, addr=result.start, rows=rows,
                                         len=length, dram=y_addr + first * C + ct, stride=C), reads=[result])
        # The window is part of what the kernel is: pools of one input and output shape with other
        # windows can have programs of the same length, and the performance history tells kernels
        # apart by their operands and tiling (``braze.sw.hpm.kernel_signature``).
        window = {"kh": kh, "kw": kw, "stride": stride, "pad": pad}
        if kind == "avg":
            window["count_include_pad"] = count_include_pad
        return _finish(f"{kind}pool2d", config, streams, operands, macs=0,
                       tiling={"pixels_per_item": seg, "buffers": ring, "Ho": Ho, "Wo": Wo, **window})

    return _first_orderable(f"{kind}pool2d", config, build)


def _avg_divisors(H, W, kh, kw, stride, pad, oy, ox0, rows, count_include_pad):
    """Runs (lo, hi, divisor) of output pixels ox0+lo..ox0+hi-1 sharing one divisor."""
    if count_include_pad:
        return [(0, rows, kh * kw)]
    valid_y = sum(1 for ky in range(kh) if 0 <= oy * stride + ky - pad < H)
    runs: list[tuple[int, int, int]] = []
    for r in range(rows):
        ox = ox0 + r
        divisor = valid_y * sum(1 for kx in range(kw) if 0 <= ox * stride + kx - pad < W)
        if runs and runs[-1][2] == divisor:
            runs[-1] = (runs[-1][0], r + 1, divisor)
        else:
            runs.append((r, r + 1, divisor))
    return runs


def maxpool2d(config: Config, N: int, C: int, H: int, W: int, kh: int, kw: int, stride: int = 1,
              pad: int = 0, *, addrs: Mapping[str, int] | None = None, base: int = 0) -> Kernel:
    """Max pooling, NHWC int8 in (``x``: N, H, W, C) and out (``out``: N, Ho, Wo, C).

    Padding pixels are ignored (as ONNX MaxPool); ``pad`` must be below the
    window size.  Per output row and tile of ``cols`` channels: the running
    maximum lives in accumulator rows (so that each VECTOR ``max`` reads its two
    operands from different memories, one row per cycle), each window tap is
    one strided LOAD into a scratchpad slot, and a final VECTOR ``mov`` writes
    the int8 result for the STORE.
    """
    return _pool2d("max", config, N, C, H, W, kh, kw, stride, pad, False, addrs, base)


def avgpool2d(config: Config, N: int, C: int, H: int, W: int, kh: int, kw: int, stride: int = 1,
              pad: int = 0, *, count_include_pad: bool = False, addrs: Mapping[str, int] | None = None,
              base: int = 0) -> Kernel:
    """Average pooling, NHWC int8 in and out.

    Output = ``sat8(round_half_even(sum * mult / 2**shift))`` with
    ``(mult, shift) = avg_multiplier(d)``, ``d`` the number of window pixels
    inside the input (ONNX's default), or ``kh*kw`` with ``count_include_pad``.
    Sums are exact int32 in the accumulator (VECTOR ``add``); the scaling is
    one VECTOR ``mul`` per run of output pixels sharing a divisor.
    """
    return _pool2d("avg", config, N, C, H, W, kh, kw, stride, pad, count_include_pad, addrs, base)


def global_avgpool(config: Config, N: int, H: int, W: int, C: int, *, addrs: Mapping[str, int] | None = None,
                   base: int = 0) -> Kernel:
    """Global average pooling: NHWC int8 (N, H, W, C) to int8 (N, C).

    Output = ``sat8(round_half_even(sum * mult / 2**shift))`` with
    ``(mult, shift) = avg_multiplier(H*W)``.  Per image and tile of ``cols``
    channels the H*W pixel rows are loaded in blocks, copied to the
    accumulator and summed by halving (VECTOR ``add`` of the upper half onto
    the lower half, ``log2`` steps), then added to a running total row.
    """
    config = _check_config(config)
    for name, value in (("N", N), ("H", H), ("W", W), ("C", C)):
        _positive(name, value)
    pixels = H * W
    mult, shift = avg_multiplier(pixels)
    COLS = config.cols
    specs = [_OperandSpec("x", (N, H, W, C), "i1", "NHWC", "input"),
             _OperandSpec("out", (N, C), "i1", "N x C", "output"), _counters_spec()]
    operands = _place(config, specs, addrs, base)
    x_addr, y_addr = operands["x"].addr, operands["out"].addr
    block = max(1, min(pixels, (config.acc_rows - 4) // 2, (config.spad_rows - 2) // 2))
    what = f"global_avgpool {N}x{H}x{W}x{C}"

    def build(ring: int) -> Kernel:
        spad = _Allocator(Memory.SPAD, config.spad_rows, what)
        acc = _Allocator(Memory.ACC, config.acc_rows, what)
        in_slots = spad.ring("in", ring, block)
        out_slots = spad.ring("out", ring, 1)
        work_slots = acc.ring("work", ring, block)
        total_slots = acc.ring("total", ring, 1)
        streams = _Streams(config)
        blocks = 0
        for step, (n, ct) in enumerate(itertools.product(range(N), range(0, C, COLS))):
            length = min(COLS, C - ct)
            total = _slot(total_slots, step)
            streams.add(_vector(VectorOp.MUL, total, total.start, total, total.start, 1, imm=0),
                        reads=[total], writes=[total])
            for p0 in range(0, pixels, block):
                rows = min(block, pixels - p0)
                src, work = _slot(in_slots, blocks), _slot(work_slots, blocks)
                blocks += 1
                streams.add(Instruction.make(Opcode.LOAD, mem=Memory.SPAD, addr=src.start, rows=rows,
                                             len=length, dram=x_addr + (n * pixels + p0) * C + ct, stride=C),
                            writes=[src])
                streams.add(_vector(VectorOp.MOV, work, work.start, src, src.start, rows),
                            reads=[src], writes=[work])
                live = rows
                while live > 1:           # fold the upper half onto the lower half
                    half = live // 2
                    streams.add(_vector(VectorOp.ADD, work, work.start, work, work.start, half,
                                        src2=work, src2_row=work.start + live - half),
                                reads=[work], writes=[work])
                    live -= half
                streams.add(_vector(VectorOp.ADD, total, total.start, total, total.start, 1,
                                    src2=work, src2_row=work.start), reads=[total, work], writes=[total])
            result = _slot(out_slots, step)
            streams.add(_vector(VectorOp.MUL, result, result.start, total, total.start, 1, imm=mult,
                                shift=shift), reads=[total], writes=[result])
            streams.add(Instruction.make(Opcode.STORE, mem=Memory.SPAD, addr=result.start, rows=1, len=length,
                                         dram=y_addr + n * C + ct, stride=0), reads=[result])
        return _finish("global_avgpool", config, streams, operands, macs=0,
                       tiling={"pixels_per_block": block, "buffers": ring, "mult": mult, "shift": shift})

    return _first_orderable(what, config, build)
