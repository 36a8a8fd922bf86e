"""Convolution: :func:`conv2d`, NHWC, as a GEMM on the matrix-multiply pipeline of :mod:`.matmul` whose
A tile is gathered from the input by strided LOADs (implicit im2col); :func:`conv2d_weights` builds
its B operand from OIHW weights.

Limitations
-----------
* Convolution pads channels to a multiple of ``rows`` (see :func:`conv2d`).
"""

from __future__ import annotations

import dataclasses
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
           tiling: Tiling | None = None) -> Kernel:
    """2-D convolution, NHWC, with the fused epilogue of :func:`gemm`.

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
    """
    config = _check_config(config)
    for name, value in (("N", N), ("C", C), ("K_out", K_out)):
        _positive(name, value)
    Ho, Wo = _check_window(H, W, kh, kw, stride, pad, pad_below_kernel=False)
    epi = _epilogue_options(bias, requant, residual, act, clip, out_zp, out)
    R = config.rows
    c_chunks = _cdiv(C, R)
    K = kh * kw * c_chunks * R
    M = N * Ho * Wo
    specs = [_OperandSpec("x", (N, H, W, C), "i1", "NHWC", "input"),
             _OperandSpec("B", (K, K_out), "i1", "(kh*kw*Cp) x K_out, see conv2d_weights", "param"),
             *_epilogue_specs(epi, M, K_out, "NHWC (N*Ho*Wo rows of K_out)"), _counters_spec()]
    operands = _place(config, specs, addrs, base)
    operands["out"] = dataclasses.replace(operands["out"], shape=(N, Ho, Wo, K_out))
    if epi.residual:
        operands["residual"] = dataclasses.replace(operands["residual"], shape=(N, Ho, Wo, K_out))
    x_addr = operands["x"].addr

    geometry = ("conv2d", N, C, H, W, kh, kw, stride, pad, R, x_addr)

    def load_a(i0: int, mt: int, c: int, dst: int) -> list[Instruction]:
        # The same A tiles recur in every candidate kernel with the same M tile (separate and fused forms,
        # forced tilings): their LOADs are generated once (instructions are immutable, so shared).
        key = (geometry, i0, mt, c, dst)
        loads = _A_LOADS.get(key)
        if loads is not None:
            return list(loads)
        tap, cc = divmod(c, c_chunks)
        ky, kx = divmod(tap, kw)
        length = min(R, C - cc * R)
        loads = []
        for seg in _window_segments(N, H, W, C, Ho, Wo, stride, pad, ky, kx, i0, mt, x_addr, cc * R):
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

    extra = {"Ho": Ho, "Wo": Wo, "K": K}
    return _matmul_kernel("conv2d", config, M, K, K_out, epi, operands, load_a, geometry, tiling, extra)


#: The LOADs of conv2d A tiles by (geometry, first pixel, pixels, K-chunk, scratchpad row); cleared when full.
_A_LOADS: dict[tuple, tuple[Instruction, ...]] = {}
_A_LOADS_LIMIT = 1 << 15
