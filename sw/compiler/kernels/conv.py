"""Convolution: :func:`conv2d`, NHWC, as a GEMM on the matrix-multiply pipeline of :mod:`.matmul` whose
A tile is gathered from the input by strided LOADs (implicit im2col); :func:`conv2d_weights` builds
its B operand from OIHW weights.

Limitations
-----------
* Convolution pads channels to a multiple of ``rows`` (see :func:`conv2d`).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping

import numpy as np

from braze.isa import Activation, Config, Instruction, Memory, Opcode

from .common import (
    Kernel,
    KernelError,
    _cdiv,
    _check_config,
    _check_window,
    _counters_spec,
    _epilogue_options,
    _epilogue_specs,
    _OperandSpec,
    _place,
    _positive,
    _SegmentList,
    _window_segments,
)
from .matmul import Tiling, _matmul_kernel

__all__ = ["conv2d", "conv2d_weights"]


def conv2d_weights(config: Config, weights: np.ndarray) -> np.ndarray:
    """The B operand of :func:`conv2d` from OIHW weights (K_out, C, kh, kw): shape (kh*kw*Cp, K_out).

    Row ``(ky*kw + kx)*Cp + ch`` holds the weights of input channel ``ch`` at
    tap (ky, kx); ``Cp`` is C rounded up to a multiple of ``config.rows`` and
    the padding rows are zero.
    """
    weights = np.asarray(weights)
    if weights.ndim != 4:
        raise KernelError(f"conv2d weights must be OIHW (4-D), not shape {weights.shape}")
    k_out, channels, kh, kw = weights.shape
    cp = _cdiv(channels, config.rows) * config.rows
    b = np.zeros((kh, kw, cp, k_out), dtype=np.int8)
    b[:, :, :channels, :] = weights.transpose(2, 3, 1, 0)
    return b.reshape(kh * kw * cp, k_out)


def conv2d(config: Config, N: int, C: int, H: int, W: int, K_out: int, kh: int, kw: int, stride: int = 1,
           pad: int = 0, *, bias: bool = False, requant: bool = False, residual: bool = False,
           act: Activation | str = "none", clip: tuple[int, int] | None = None, out_zp: int = 0,
           out: str = "int8", addrs: Mapping[str, int] | None = None, base: int = 0,
           tiling: Tiling | None = None, pool: int = 1, dilation: int = 1) -> Kernel:
    """2-D convolution, NHWC, with the fused epilogue of :func:`gemm` and, with ``pool > 1``, a fused
    ``pool`` x ``pool`` max pooling of stride ``pool`` (no padding, floor mode) after it.

    Layout contract: input ``x`` is NHWC int8 (N, H, W, C); the output ``out``
    (and ``residual``) is NHWC (N, Ho, Wo, K_out), which is exactly the
    row-major (N*Ho*Wo) x K_out GEMM result; ``B`` comes from OIHW weights via
    :func:`conv2d_weights`; ``params`` is as in :func:`gemm` with K_out columns.
    Padding is zeros (of the quantized input; fold a nonzero input zero point
    into the bias).  NCHW models are transposed by the runtime at the graph
    boundary, once.

    im2col is implicit: the A tile (output pixels x patch elements) is
    gathered by strided LOADs straight from the NHWC input.  The patch axis is
    ordered (ky, kx, channel) with channels padded to ``Cp`` (a multiple of
    ``rows``), so each K-chunk of the MATMUL is ``rows`` consecutive channels
    of one tap: for one output row it is a single LOAD with stride
    ``stride*C`` bytes, and padding pixels are LOADs with ``zero`` set.  This
    needs no host transform and no im2col copy in external memory (which
    would be ``kh*kw`` times the input); the price is that inputs with few
    channels (C < rows) waste part of each chunk, and small output rows mean
    many short LOADs -- the load unit overlaps them with the MATMULs.

    ``dilation``: the taps are ``dilation`` pixels apart (the window spans ``(kh - 1)*dilation + 1``
    rows); only the LOADs' addresses change.

    Fused max pooling (``pool = p``): the output is (N, Ho//p, Wo//p, K_out) and never leaves the
    chip unpooled.  Only the pixels inside a pooling window are computed, and an M tile holds whole
    images with its rows in the order (dy, dx, image, py, px) -- output pixel (py*p + dy, px*p + dx) --
    so that each of the p*p positions in the window is a block of consecutive rows.  After the
    EPILOGUE, VECTORs take the maximum of the blocks in the accumulator (MOV the first, MAX the rest,
    MOV back to int8: exact, the values are int8) and one STORE writes the pooled rows, which are in
    NHWC order.  The A tile's LOADs read every p-th pixel of an output row (stride ``p*stride*C``).
    A max commutes with the epilogue's monotone requantization and activation, so this equals the
    separate convolution and pooling bit for bit.
    """
    config = _check_config(config)
    for name, value in (("N", N), ("C", C), ("K_out", K_out)):
        _positive(name, value)
    _positive("dilation", dilation)
    Ho, Wo = _check_window(H, W, (kh - 1) * dilation + 1, (kw - 1) * dilation + 1, stride, pad,
                           pad_below_kernel=False)
    epi = _epilogue_options(bias, requant, residual, act, clip, out_zp, out)
    pool = _check_pool(pool, Ho, Wo, epi)
    Hp, Wp = Ho // pool, Wo // pool
    R = config.rows
    c_chunks = _cdiv(C, R)
    K = kh * kw * c_chunks * R
    M = N * pool * pool * Hp * Wp            # the output pixels computed (pooling windows cover them all)
    specs = [_OperandSpec("x", (N, H, W, C), "i1", "NHWC", "input"),
             _OperandSpec("B", (K, K_out), "i1", "(kh*kw*Cp) x K_out, see conv2d_weights", "param"),
             *_epilogue_specs(epi, N * Hp * Wp, K_out, "NHWC (N*Ho*Wo rows of K_out)"), _counters_spec()]
    operands = _place(config, specs, addrs, base)
    operands["out"] = dataclasses.replace(operands["out"], shape=(N, Hp, Wp, K_out))
    if epi.residual:
        operands["residual"] = dataclasses.replace(operands["residual"], shape=(N, Ho, Wo, K_out))
    x_addr = operands["x"].addr

    geometry = ("conv2d", N, C, H, W, kh, kw, stride, pad, R, x_addr, pool, dilation)
    image_rows = pool * pool * Hp * Wp           # GEMM rows per image: an M tile holds whole images

    def load_a(i0: int, mt: int, c: int, dst: int) -> list[Instruction]:
        # The same A tiles recur in every candidate kernel with the same M tile (separate and fused forms,
        # forced tilings): their LOADs are generated once (instructions are immutable, so shared).
        key = (geometry, i0, mt, c, dst)
        loads = _A_LOADS.get(key)
        if loads is not None:
            return list(loads)
        tap, cc = divmod(c, c_chunks)
        ky, kx = (dilation * offset for offset in divmod(tap, kw))
        length = min(R, C - cc * R)
        loads = []
        if pool == 1:
            segments = _window_segments(N, H, W, C, Ho, Wo, stride, pad, ky, kx, i0, mt, x_addr, cc * R)
        else:
            segments = _pooled_segments(i0 // image_rows, mt // image_rows, ky, kx, cc * R)
        for seg in segments:
            if seg.dram is None:
                loads.append(Instruction.make(Opcode.LOAD, mem=Memory.SPAD, zero=True, addr=dst + seg.local,
                                              rows=seg.rows, len=R))
            else:
                loads.append(Instruction.make(Opcode.LOAD, mem=Memory.SPAD, addr=dst + seg.local,
                                              rows=seg.rows, len=length, dram=seg.dram, stride=seg.stride))
        if len(_A_LOADS) >= _A_LOADS_LIMIT:
            _A_LOADS.clear()
        _A_LOADS[key] = tuple(loads)
        return loads

    def _pooled_segments(n0: int, images: int, ky: int, kx: int, channel: int) -> list:
        # Local row ((dy*p + dx)*images + n)*Hp*Wp + py*Wp + px holds output pixel (py*p + dy, px*p + dx)
        # of image n0 + n: for each (dy, dx, n, py) the Wp pixels of a row, every p-th of it.
        segments = _SegmentList()
        for dy, dx, n, py in itertools.product(range(pool), range(pool), range(images), range(Hp)):
            local = (((dy * pool + dx) * images + n) * Hp + py) * Wp
            segments.row(local, n0 + n, py * pool + dy, dx, pool, Wp, H=H, W=W, C=C, stride=stride, pad=pad,
                         ky=ky, kx=kx, x_addr=x_addr, channel=channel)
        return list(segments)

    extra = {"Ho": Ho, "Wo": Wo, "K": K}
    if pool > 1:
        extra.update(pool=pool, align=image_rows)
    return _matmul_kernel("conv2d", config, M, K, K_out, epi, operands, load_a, geometry, tiling, extra)


def _check_pool(pool: int, Ho: int, Wo: int, epi) -> int:
    if isinstance(pool, bool) or not isinstance(pool, int) or pool < 1:
        raise KernelError(f"pool={pool!r} must be a positive integer (1: no fused pooling)")
    if pool == 1:
        return 1
    if Ho < pool or Wo < pool:
        raise KernelError(f"a {pool}x{pool} pooling window does not fit the {Ho}x{Wo} convolution output")
    if epi.out_int32 or epi.residual:
        raise KernelError("fused pooling needs an int8 output without a residual input")
    return pool


#: The LOADs of conv2d A tiles by (geometry, first pixel, pixels, K-chunk, scratchpad row); cleared when full.
_A_LOADS: dict[tuple, tuple[Instruction, ...]] = {}
_A_LOADS_LIMIT = 1 << 15
