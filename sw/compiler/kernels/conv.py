"""Convolution: :func:`conv2d`, NHWC, as a GEMM on the matrix-multiply pipeline of :mod:`.matmul` whose
A tile is gathered from the input by strided LOADs (implicit im2col); :func:`conv2d_weights` builds
its B operand from OIHW weights.

Three layouts of the A operand (``conv2d(layout=...)``, by default the one the timing model prices
fastest): row-major M tiles, pixel-major M tiles of whole images (long LOADs across a batch), and a
resident input read once per tile with the taps taken from the scratchpad (on-chip im2col).

Limitations
-----------
* Convolution pads channels to a multiple of ``rows`` (see :func:`conv2d`), except that with
  ``2*C <= rows`` (and no padding or dilation) several taps share a K-chunk.
* The resident-input layout needs stride 1, no dilation and ``rows/2 < C <= rows``.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence

import numpy as np

from braze.isa import Activation, Config, Instruction, Memory, Opcode, VectorOp

from .common import (
    CandidatePruned,
    Kernel,
    KernelError,
    _Allocator,
    _buffering_options,
    _cdiv,
    _check_config,
    _check_window,
    _counters_spec,
    _Epilogue,
    _epilogue_options,
    _epilogue_specs,
    _finish,
    _load_table,
    _OperandSpec,
    _place,
    _positive,
    _SegmentList,
    _set_config_regs,
    _slot,
    _Streams,
    _Unorderable,
    _vector,
    _window_segments,
    prune_above,
    prune_cutoff,
)
from .matmul import Tiling, _matmul_kernel

__all__ = ["conv2d", "conv2d_chain", "ConvLayer", "FCLayer", "conv2d_weights", "chain_fc_weights",
           "taps_per_chunk"]


def taps_per_chunk(config: Config, C: int, kw: int, pad: int = 0, dilation: int = 1) -> int:
    """How many horizontally adjacent taps of a kernel row share one K-chunk of :func:`conv2d`'s A tile.

    With few input channels (``2*C <= rows``) the ``kw`` taps of a kernel row are ``kw*C``
    contiguous bytes of an NHWC input row, so one LOAD row of up to ``rows`` bytes carries
    ``rows // C`` of them: a 3x3 convolution of one channel on 8 rows needs 3 K-chunks of A instead
    of 9 (a third of the LOADs and MACs).  Only without padding and dilation: a padded edge pixel's
    packed taps would straddle the border (a LOAD cannot zero part of a row), a dilated kernel's taps
    are not adjacent.  1 means one tap per chunk (channels padded to a multiple of ``rows``).
    """
    if 2 * C > config.rows or kw < 2 or pad != 0 or dilation != 1:
        return 1
    return min(kw, config.rows // C)


def conv2d_weights(config: Config, weights: np.ndarray, kernel: Kernel | None = None, operand: str = "B"
                   ) -> np.ndarray:
    """The B operand of :func:`conv2d` from OIHW weights (K_out, C, kh, kw), for ``kernel``.

    One tap per K-chunk (``kernel`` None, or a kernel whose ``taps_per_chunk`` is 1): shape
    (kh*kw*Cp, K_out), row ``(ky*kw + kx)*Cp + ch`` holds the weights of input channel ``ch`` at
    tap (ky, kx); ``Cp`` is C rounded up to a multiple of ``config.rows`` and the padding rows are
    zero.  With ``g = kernel.tiling["taps_per_chunk"] > 1`` (few channels, see
    :func:`taps_per_chunk`): shape (kh*G*rows, K_out) with ``G = ceil(kw/g)`` chunks per kernel
    row; row ``(ky*G + kx//g)*rows + (kx % g)*C + ch`` holds tap (ky, kx), channel ``ch``.

    ``operand``: which B of a :func:`conv2d_chain` kernel (``"B1"``, ``"B2"`` ...); only the first
    layer's taps can be packed.
    """
    weights = np.asarray(weights)
    if weights.ndim != 4:
        raise KernelError(f"conv2d weights must be OIHW (4-D), not shape {weights.shape}")
    k_out, channels, kh, kw = weights.shape
    first = operand in ("B", "B1")
    if kernel is not None and operand not in kernel.operands:
        raise KernelError(f"the {kernel.name} kernel has no operand {operand!r}")
    packed = 1 if kernel is None or not first else int(kernel.tiling.get("taps_per_chunk", 1))
    # The input channels: the first layer's input's, or the output channels of the layer before.
    expected = None if kernel is None else (kernel.operands["x"].shape[-1] if first
                                            else kernel.operands[f"B{int(operand[1:]) - 1}"].shape[1])
    if expected is not None and expected != channels:
        raise KernelError(f"conv2d weights of shape {weights.shape} have {channels} input channels, the "
                          f"{kernel.name} kernel's {operand} expects {expected}")
    if packed == 1:
        cp = _cdiv(channels, config.rows) * config.rows
        b = np.zeros((kh, kw, cp, k_out), dtype=np.int8)
        b[:, :, :channels, :] = weights.transpose(2, 3, 1, 0)
        b = b.reshape(kh * kw * cp, k_out)
    else:
        groups = _cdiv(kw, packed)
        b = np.zeros((kh, groups, config.rows, k_out), dtype=np.int8)
        for kx in range(kw):
            q, r = divmod(kx, packed)
            b[:, q, r * channels:(r + 1) * channels, :] = weights[:, :, :, kx].transpose(2, 1, 0)
        b = b.reshape(kh * groups * config.rows, k_out)
    if kernel is not None and b.shape != kernel.operands[operand].shape:
        raise KernelError(f"conv2d weights of shape {weights.shape} give B of shape {b.shape}, the "
                          f"{kernel.name} kernel's {operand} is {kernel.operands[operand].shape}")
    return b


def conv2d(config: Config, N: int, C: int, H: int, W: int, K_out: int, kh: int, kw: int, stride: int = 1,
           pad: int = 0, *, bias: bool = False, requant: bool = False, residual: bool = False,
           act: Activation | str = "none", clip: tuple[int, int] | None = None, out_zp: int = 0,
           out: str = "int8", addrs: Mapping[str, int] | None = None, base: int = 0,
           tiling: Tiling | None = None, pool: int = 1, dilation: int = 1,
           layout: str | None = None) -> Kernel:
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
    would be ``kh*kw`` times the input); the price is that small output rows
    mean many short LOADs (the load unit overlaps them with the MATMULs, and
    the pixel-major and resident layouts below avoid them for batches).

    Few input channels (``2*C <= rows``, no padding or dilation): the taps of a kernel row share a
    K-chunk (:func:`taps_per_chunk`), each chunk one LOAD row of ``taps*C`` contiguous input bytes;
    build ``B`` with ``conv2d_weights(config, weights, kernel)``.

    ``layout``: how the GEMM's A rows reach the scratchpad.

    ``"rows"``
        M tiles in the order (image, oy, ox); each A LOAD is one output row's run of pixels of one
        image, for one K-chunk.
    ``"pixels"``
        M tiles of whole images in the order (pixel, image); each A LOAD is one K-chunk of one
        pixel of every image in the tile (one LOAD row per image: few, long LOADs for a batch of
        small images); one STORE per output pixel.
    ``"resident"``
        stride 1, no dilation, ``rows/2 < C <= rows`` or a kernel row's taps in one K-chunk: each
        input pixel is loaded once (with packed taps: once per kernel-row run of ``kw`` pixels) and
        the taps are read from the scratchpad (:func:`_resident_input_conv`), instead of loading
        the input ``kh*kw`` (packed: ``kh``) times.
    None (the default)
        ``"rows"``, and where a batch of small images makes them worth a try the other two; the
        one the timing model predicts fastest.  With a forced ``tiling``, not ``"resident"`` (its
        own tiles are images per input tile and bands of output rows).

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
    packed = taps_per_chunk(config, C, kw, pad, dilation)
    tap_groups = _cdiv(kw, packed)           # K-chunk groups per kernel row (kw without packing)
    K = kh * tap_groups * c_chunks * R
    M = N * pool * pool * Hp * Wp            # the output pixels computed (pooling windows cover them all)
    specs = [_OperandSpec("x", (N, H, W, C), "i1", "NHWC", "input"),
             _OperandSpec("B", (K, K_out), "i1", "see conv2d_weights", "param"),
             *_epilogue_specs(epi, N * Hp * Wp, K_out, "NHWC (N*Ho*Wo rows of K_out)"), _counters_spec()]
    operands = _place(config, specs, addrs, base)
    operands["out"] = dataclasses.replace(operands["out"], shape=(N, Hp, Wp, K_out))
    if epi.residual:
        operands["residual"] = dataclasses.replace(operands["residual"], shape=(N, Ho, Wo, K_out))
    x_addr = operands["x"].addr
    image_rows = pool * pool * Hp * Wp           # GEMM rows per image

    def _conv_form(pixel_major: bool) -> Kernel:
        geometry = ("conv2d", N, C, H, W, kh, kw, stride, pad, R, x_addr, pool, dilation, packed, pixel_major)

        def load_a(i0: int, mt: int, c: int, dst: int) -> list[Instruction]:
            # The same A tiles recur in every candidate kernel with the same M tile (separate and fused
            # forms, forced tilings): their LOADs are generated once (instructions are immutable, so shared).
            key = (geometry, i0, mt, c, dst)
            loads = _A_LOADS.get(key)
            if loads is not None:
                return list(loads)
            group, cc = divmod(c, c_chunks)
            ky, q = divmod(group, tap_groups)
            ky, kx = dilation * ky, dilation * q * packed
            # The LOADs at scratchpad row 0 do not depend on the A slot: candidates with other rings
            # move copies of them (Instruction.with_int) instead of making them anew.
            at_zero = _A_LOADS_AT_ZERO.get(key[:-1])
            if at_zero is None:
                # Packed taps: this chunk's taps kx..kx+taps-1 are taps*C contiguous bytes of an input row.
                length = min(packed, kw - q * packed) * C if packed > 1 else min(R, C - cc * R)
                if pixel_major:
                    segments = _pixel_major_segments(i0 // image_rows, mt // image_rows, ky, kx, cc * R)
                elif pool == 1:
                    segments = _window_segments(N, H, W, C, Ho, Wo, stride, pad, ky, kx, i0, mt, x_addr,
                                                cc * R)
                else:
                    segments = _pooled_segments(i0 // image_rows, mt // image_rows, ky, kx, cc * R)
                at_zero = []
                for seg in segments:
                    if seg.dram is None:
                        at_zero.append(Instruction.make(Opcode.LOAD, mem=Memory.SPAD, zero=True,
                                                        addr=seg.local, rows=seg.rows, len=R))
                    else:
                        at_zero.append(Instruction.make(Opcode.LOAD, mem=Memory.SPAD, addr=seg.local,
                                                        rows=seg.rows, len=length, dram=seg.dram,
                                                        stride=seg.stride))
                if len(_A_LOADS_AT_ZERO) >= _A_LOADS_LIMIT:
                    _A_LOADS_AT_ZERO.clear()
                _A_LOADS_AT_ZERO[key[:-1]] = at_zero = tuple(at_zero)
            loads = [load.with_int("addr", load.args["addr"] + dst) for load in at_zero]
            if len(_A_LOADS) >= _A_LOADS_LIMIT:
                _A_LOADS.clear()
            _A_LOADS[key] = tuple(loads)
            return loads

        def _pooled_segments(n0: int, images: int, ky: int, kx: int, channel: int) -> list:
            # Local row ((dy*p + dx)*images + n)*Hp*Wp + py*Wp + px holds output pixel (py*p + dy,
            # px*p + dx) of image n0 + n: for each (dy, dx, n, py) the Wp pixels of a row, every p-th.
            segments = _SegmentList()
            for dy, dx, n, py in itertools.product(range(pool), range(pool), range(images), range(Hp)):
                local = (((dy * pool + dx) * images + n) * Hp + py) * Wp
                segments.row(local, n0 + n, py * pool + dy, dx, pool, Wp, H=H, W=W, C=C, stride=stride,
                             pad=pad, ky=ky, kx=kx, x_addr=x_addr, channel=channel)
            return list(segments)

        def _pixel_major_segments(n0: int, images: int, ky: int, kx: int, channel: int) -> list:
            # Local row index*images + n holds the index-th computed pixel of image n0 + n: in pooling
            # blocks (dy, dx) of pixels (py*p + dy, px*p + dx) with fused pooling, else (oy, ox).
            segments = _SegmentList()
            pixels = itertools.product(range(pool), range(pool), range(Hp), range(Wp))
            image_bytes = H * W * C
            for index, (dy, dx, py, px) in enumerate(pixels):
                iy, ix = (py * pool + dy) * stride + ky - pad, (px * pool + dx) * stride + kx - pad
                if 0 <= iy < H and 0 <= ix < W:
                    dram = x_addr + n0 * image_bytes + (iy * W + ix) * C + channel
                    segments.emit(index * images, images, dram, image_bytes)
                else:
                    segments.emit(index * images, images, None, 0)
            return list(segments)

        extra = {"Ho": Ho, "Wo": Wo, "K": K}
        if pixel_major:
            extra.update(pixel_major=Hp * Wp, align=image_rows)
        if packed > 1:
            extra["taps_per_chunk"] = packed
        if pool > 1:
            extra.update(pool=pool, align=image_rows)
        return _matmul_kernel("conv2d", config, M, K, K_out, epi, operands, load_a, geometry, tiling, extra)

    chunks = kh * tap_groups * c_chunks
    # The pixel-major and resident layouts are candidates where the images of a batch outnumber a
    # row-major LOAD's run of pixels twice over; the timing model chooses (digits CNN, batch 64, on the
    # RTL: conv2 with its pool fused 37,487 cycles row-major, 25,363 pixel-major; conv1, whose
    # row-major LOADs of packed taps are single bus words, 11,548 row-major against 14,241).
    run = Wp if pool > 1 else Wo
    batch = N >= 2 * run and not epi.residual
    # Resident input: one channel chunk, and either one tap per chunk or a whole kernel row per chunk.
    resident_ok = (stride == 1 and dilation == 1 and c_chunks == 1 and packed in (1, kw)
                   and not epi.residual)
    if layout is None:
        forms = ["rows"]
        if batch and 4 * image_rows * chunks + K <= config.spad_rows:
            forms.insert(0, "pixels")
        if batch and resident_ok and tiling is None:
            forms.insert(0, "resident")
    elif layout not in ("rows", "pixels", "resident"):
        raise KernelError(f"layout={layout!r}: one of 'rows', 'pixels', 'resident' or None")
    elif layout != "rows" and epi.residual:
        raise KernelError(f"layout={layout!r} takes no residual input")
    elif layout == "resident" and (not resident_ok or tiling is not None):
        raise KernelError("layout='resident' needs stride 1, no dilation, C <= rows (rows/2 < C or all "
                          "taps of a kernel row in one K-chunk) and no forced tiling")
    else:
        forms = [layout]
    built: list[Kernel] = []
    ruled_out: list[CandidatePruned] = []      # forms whose forced tiling prune_above ruled out
    outer_cutoff = prune_cutoff()
    for form in forms:
        # With a forced tiling a later form need only beat the fastest form built so far (the first of
        # the fastest is kept): one that cannot is ruled out by its lower bound, not scheduled.
        cutoff = outer_cutoff
        if tiling is not None and built:
            fastest_cycles = min(kernel.predicted_cycles for kernel in built)
            cutoff = fastest_cycles if cutoff is None else min(cutoff, fastest_cycles)
        try:
            if form == "resident":
                layer = _Layer(C, H, W, K_out, kh, kw, pad, packed > 1, epi, "B", "params")
                kernel = _resident_input_conv(config, N, [layer], pool, operands)
                if kernel is None and layout is not None:
                    raise KernelError(f"conv2d {N}x{C}x{H}x{W}: not one image's input fits the scratchpad")
            else:
                with prune_above(cutoff):
                    kernel = _conv_form(form == "pixels")
        except CandidatePruned as pruned:
            # Another form may still beat the cutoff.  (Kept without its traceback: its frames, this
            # one among them, would hold the streams built, in a reference cycle.)
            ruled_out.append(pruned.with_traceback(None))
            continue
        except KernelError:
            if form != "rows" and len(forms) > 1:
                continue           # e.g. a forced tiling of the row-major form (not whole images per tile)
            raise
        if kernel is not None:
            built.append(kernel)
    if ruled_out:
        # Exact only if a form built beats the caller's cutoff (the ones ruled out reach it, or the
        # fastest built); else the fastest form is not known, and the tiling is ruled out as a whole
        # (its size, for a generation budget, then that of the smallest form ruled out).
        fastest = min(built, key=lambda kernel: kernel.predicted_cycles) if built else None
        if fastest is None or outer_cutoff is not None and fastest.predicted_cycles >= outer_cutoff:
            raise CandidatePruned(min([pruned.lower_bound for pruned in ruled_out]
                                      + [kernel.predicted_cycles for kernel in built]),
                                  min(pruned.instructions for pruned in ruled_out))
        return fastest
    return min(built, key=lambda kernel: kernel.predicted_cycles)


def conv2d_chain(config: Config, N: int, C: int, H: int, W: int, layers: Sequence[ConvLayer], *,
                 pool: int = 1, out: str = "int8", addrs: Mapping[str, int] | None = None, base: int = 0,
                 fc: FCLayer | None = None) -> Kernel:
    """Stride-1 convolutions one after another in one kernel (layer fusion), NHWC int8 in and out:
    each layer's int8 output stays in the scratchpad as the next one's input, never crossing the bus,
    and with ``pool > 1`` a ``pool`` x ``pool`` max pooling of stride ``pool`` follows the last.

    Operands: ``x`` (N, H, W, C); per layer ``i`` (from 1) ``B{i}`` (its weights through
    ``conv2d_weights(config, w, kernel, f"B{i}")``) and, with a bias or requantization, ``params{i}``
    (int32 rows bias, mult, shift as present, one column per output channel); ``out`` (N, Hp, Wp,
    K_out of the last layer).  The input tile's rows are those of :func:`conv2d`'s resident layout
    (:func:`_resident_input_conv`): every layer's input has at most ``rows`` channels (the first
    layer's kernel-row taps share a K-chunk where they fit one, :func:`taps_per_chunk`), and an
    inner layer has at most ``cols`` output channels and no table activation.  Raises
    :class:`KernelError` otherwise, or if not one image of every layer fits the scratchpad.

    ``fc``: a fully connected layer after the (pooled) last convolution, in the same kernel -- the
    whole of a small CNN in one kernel.  Its input is each image's (pooled) output, F = K_out*Hp*Wp
    features; operands ``B{L+1}`` (F, fc.N_out) int8 weights (:func:`chain_fc_weights`) and
    ``params{L+1}``; ``out`` is then (N, fc.N_out).  Each pooled output row of ``cols`` channels is
    one K-chunk of the FC's GEMM, multiplied as soon as its band is pooled (one MATMUL per band and
    column tile; it never leaves the chip).  Needs ``rows == cols`` and the last layer's ``K_out`` a
    multiple of ``cols``.
    """
    config = _check_config(config)
    for name, value in (("N", N), ("C", C), ("H", H), ("W", W)):
        _positive(name, value)
    if not layers:
        raise KernelError("conv2d_chain needs at least one layer")
    R = config.rows
    built: list[_Layer] = []
    channels, height, width = C, H, W
    for index, spec in enumerate(layers, start=1):
        if not isinstance(spec, ConvLayer):
            raise KernelError(f"layer {index} must be a ConvLayer, not {type(spec).__name__}")
        _positive(f"layer {index} K_out", spec.K_out)
        last = index == len(layers)
        Ho, Wo = _check_window(height, width, spec.kh, spec.kw, 1, spec.pad, pad_below_kernel=False)
        epi = _epilogue_options(spec.bias, spec.requant, False, spec.act, spec.clip, spec.out_zp,
                                out if last else "int8")
        # The first layer's taps packed if a whole kernel row fits one K-chunk, else one tap per chunk.
        packed = taps_per_chunk(config, channels, spec.kw, spec.pad) if index == 1 else 1
        packed = packed if packed == spec.kw else 1
        if channels > R:
            raise KernelError(f"layer {index}: {channels} input channels do not fit a resident input of "
                              f"{R} rows")
        if not last and (spec.K_out > config.cols or epi.act is Activation.TABLE):
            raise KernelError(f"layer {index}: an inner layer has at most {config.cols} output channels "
                              "and no table activation")
        built.append(_Layer(channels, height, width, spec.K_out, spec.kh, spec.kw, spec.pad, packed > 1, epi,
                            f"B{index}", f"params{index}"))
        channels, height, width = spec.K_out, Ho, Wo
    last = built[-1]
    pool = _check_pool(pool, last.Ho, last.Wo, last.epi)
    Hp, Wp = last.Ho // pool, last.Wo // pool
    specs = [_OperandSpec("x", (N, H, W, C), "i1", "NHWC", "input")]
    for layer in built:
        specs.append(_OperandSpec(layer.b_name, (layer.K(R), layer.K_out), "i1", "see conv2d_weights",
                                  "param"))
        if layer.epi.param_rows:
            specs.append(_OperandSpec(layer.params_name, (len(layer.epi.param_rows), layer.K_out), "i4",
                                      f"rows {', '.join(layer.epi.param_rows)}", "param"))
    dense = None
    if fc is not None:
        dense = _dense_layer(config, fc, len(built) + 1, Hp * Wp * last.K_out, last)
        specs += _dense_specs(dense, N)
    else:
        specs += [*(s for s in _epilogue_specs(last.epi, N * Hp * Wp, last.K_out, "NHWC")
                    if s.name in ("out", "table")), _counters_spec()]
    operands = _place(config, specs, addrs, base)
    if dense is None:
        operands["out"] = dataclasses.replace(operands["out"], shape=(N, Hp, Wp, last.K_out))
    kernel = _resident_input_conv(config, N, built, pool, operands, name="conv2d_chain", dense=dense)
    if kernel is None:
        raise KernelError(f"conv2d_chain {N}x{C}x{H}x{W}: not one image of every layer fits config "
                          f"{config.name!r}")
    return kernel


@dataclasses.dataclass(frozen=True, kw_only=True)
class _LayerEpilogue:
    """The fused epilogue of a layer of :func:`conv2d_chain` (keyword-only, as :func:`conv2d`'s and
    :func:`~.matmul.gemm`'s keyword arguments of the same names)."""

    bias: bool = False
    requant: bool = False
    act: str = "none"
    clip: tuple[int, int] | None = None
    out_zp: int = 0


@dataclasses.dataclass(frozen=True)
class ConvLayer(_LayerEpilogue):
    """One stride-1 convolution of :func:`conv2d_chain`: its output channels, kernel size, zero
    padding and fused epilogue."""

    K_out: int
    kh: int
    kw: int
    pad: int = 0


@dataclasses.dataclass(frozen=True)
class FCLayer(_LayerEpilogue):
    """The fully connected layer closing a :func:`conv2d_chain`: its outputs and fused epilogue."""

    N_out: int


@dataclasses.dataclass(frozen=True)
class _Dense:
    """The FC layer of a chain kernel: features per image, outputs, epilogue and operand names."""

    F: int
    N_out: int
    epi: _Epilogue
    b_name: str
    params_name: str


def _dense_layer(config: Config, fc: FCLayer, index: int, features: int, last: _Layer) -> _Dense:
    if not isinstance(fc, FCLayer):
        raise KernelError(f"fc must be an FCLayer, not {type(fc).__name__}")
    _positive("fc N_out", fc.N_out)
    if config.rows != config.cols or last.K_out % config.cols:
        raise KernelError(f"a chain's FC layer needs rows == cols and the last convolution's output "
                          f"channels ({last.K_out}) a multiple of cols ({config.cols}) on config "
                          f"{config.name!r}")
    if last.epi.out_int32 or last.epi.act is Activation.TABLE:
        raise KernelError("a chain's FC layer reads the last convolution's int8 output (no table activation)")
    epi = _epilogue_options(fc.bias, fc.requant, False, fc.act, fc.clip, fc.out_zp, "int8")
    if epi.act is Activation.TABLE:
        raise KernelError("a chain's FC layer has no table activation")
    return _Dense(features, fc.N_out, epi, f"B{index}", f"params{index}")


def chain_fc_weights(config: Config, weights: np.ndarray, kernel: Kernel) -> np.ndarray:
    """The B operand of a :func:`conv2d_chain` kernel's FC layer from its (F, N_out) weights whose rows
    are the features in the order of ONNX's ``Flatten`` of the NCHW output, ``(channel, y, x)``.

    Row ``((j*Hp + y)*Wp + x)*cols + r`` of the result holds feature (channel ``j*cols + r``, y, x):
    column tile, pixel, then channel within the tile, the order the kernel's MATMULs read them.
    """
    name = f"B{len([op for op in kernel.operands if op.startswith('B')])}"
    if "fc" not in kernel.tiling or name not in kernel.operands:
        raise KernelError(f"the {kernel.name} kernel has no FC layer")
    weights = np.asarray(weights)
    features, n_out = kernel.operands[name].shape
    if weights.shape != (features, n_out):
        raise KernelError(f"FC weights of shape {weights.shape}, the {kernel.name} kernel's {name} is "
                          f"{(features, n_out)}")
    pixels = kernel.tiling["fc_pixels"]
    tiles = features // pixels // config.cols
    b = weights.reshape(tiles, config.cols, pixels, n_out).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(b.reshape(features, n_out).astype(np.int8))


def _dense_specs(dense: _Dense, N: int) -> list[_OperandSpec]:
    specs = [_OperandSpec(dense.b_name, (dense.F, dense.N_out), "i1", "see chain_fc_weights", "param")]
    if dense.epi.param_rows:
        specs.append(_OperandSpec(dense.params_name, (len(dense.epi.param_rows), dense.N_out), "i4",
                                  f"rows {', '.join(dense.epi.param_rows)}", "param"))
    return [*specs, _OperandSpec("out", (N, dense.N_out), "i1", "row-major", "output"), _counters_spec()]


@dataclasses.dataclass(frozen=True)
class _Layer:
    """A convolution of a resident-input kernel: geometry, epilogue and operand names."""

    C: int
    H: int
    W: int
    K_out: int
    kh: int
    kw: int
    pad: int
    packed: bool               # a kernel row's kw taps in one K-chunk (the input rows hold kw pixels)
    epi: _Epilogue
    b_name: str
    params_name: str

    @property
    def Hq(self) -> int:
        return self.H + 2 * self.pad

    @property
    def Wq(self) -> int:
        return self.W + 2 * self.pad

    @property
    def Ho(self) -> int:
        return self.Hq - self.kh + 1

    @property
    def Wo(self) -> int:
        return self.Wq - self.kw + 1

    @property
    def row_pixels(self) -> int:
        """Input rows per image of one input row (kw-pixel rows for packed taps)."""
        return self.Wo if self.packed else self.Wq

    def K(self, rows: int) -> int:
        return self.kh * rows if self.packed else self.kh * self.kw * rows


def _registers(epi: _Epilogue) -> tuple:
    """What of the configuration registers an epilogue reads (see _set_config_regs)."""
    return (epi.requant and epi.out_zp, epi.act is Activation.CLIP and (epi.clip_lo, epi.clip_hi))


def _resident_input_conv(config: Config, N: int, layers: list[_Layer], pool: int, operands: dict,
                         name: str = "conv2d", dense: _Dense | None = None) -> Kernel | None:
    """Stride-1 convolutions of a batch of small images whose input pixels are each loaded once (with
    packed taps, once per kernel-row run): the taps are read from the scratchpad, not loaded again
    (on-chip im2col); with several ``layers``
    each one's output stays on chip as the next one's input (layer fusion, :func:`conv2d_chain`).

    An input tile holds ``G`` whole images in scratchpad rows ``(iy, ix, n)`` (padding pixels are
    zero rows), one LOAD per input pixel for every image of the tile.  A layer's output is computed
    in bands of output rows (``pool`` rows for the last layer, else one), rows ``(oy, ox, n)``: for
    output row ``oy`` and kernel row ``ky`` the A rows of tap ``kx`` -- pixel ``(oy + ky, ox + kx)``
    of image ``n`` -- are the ``Wo*G`` consecutive input rows from ``((oy + ky)*Wq + kx)*G``, so one
    MATMUL per (oy, ky) covers the ``kw`` taps as its K-chunks, ``G`` rows apart (``a_stride``).
    With packed taps (the first layer only: a kernel row's ``kw`` taps in one K-chunk,
    :func:`taps_per_chunk`, no padding) the input rows are ``(iy, ox, n)``, each the ``kw*C`` bytes
    of taps ``ox..ox+kw-1`` of input row ``iy``, and one MATMUL per output row covers its ``kh``
    K-chunks, an input row apart.  The EPILOGUE of a layer but the last writes its output row to the
    next layer's input rows ``(oy + pad, pad.., n)``: the same order.  B and the parameters stay
    resident.  Pooling (``pool = p``): VECTOR max of the ``p*p`` pixels of each window, ``G`` rows at
    a time.  One STORE per output pixel writes it for every image.  Of the tile sizes tried, the
    kernel the timing model predicts fastest; None if not even one image fits.
    """
    R, COLS = config.rows, config.cols
    first_layer, last = layers[0], layers[-1]
    Hp, Wp = last.Ho // pool, last.Wo // pool
    pixels = Hp * Wp                          # output pixels per image (after pooling)
    image_bytes = first_layer.H * first_layer.W * first_layer.C
    out_bytes = 4 if last.epi.out_int32 else 1
    x_addr, out_op = operands["x"].addr, operands["out"]
    bands = [1] * (len(layers) - 1) + [pool]              # output rows per band, per layer
    n_tiles = [_cdiv(layer.K_out, COLS) for layer in layers]
    p_rows = [len(layer.epi.param_rows) for layer in layers]
    spad_fixed = sum(n * layer.K(R) for n, layer in zip(n_tiles, layers, strict=True)) \
        + (256 // COLS if last.epi.act is Activation.TABLE else 0)
    # A closing FC layer (conv2d_chain's fc): its weights and parameters resident, per image one
    # accumulator row and one output row per column tile of it.
    fc_tiles = _cdiv(dense.N_out, COLS) if dense is not None else 0
    fc_rows = len(dense.epi.param_rows) if dense is not None else 0
    spad_fixed += fc_tiles * (dense.F if dense is not None else 0)
    band_rows = max(rows * layer.Wo for rows, layer in zip(bands, layers, strict=True))
    # C's accumulator rows are free once the EPILOGUE (and pooling, on the same unit) has read them,
    # unless the STOREs read them (int32 output): then a second slot lets the next band go on.
    c_ring = 2 if last.epi.out_int32 else 1
    # Per image: the first layer's input (two slots, one if a single tile holds the batch), the later
    # layers' (one: the compute unit writes and reads them in order), the output slots.
    inner_rows = sum(layer.Hq * layer.Wq for layer in layers[1:]) \
        + (0 if last.epi.out_int32 else 2 * pool * last.Wo) + fc_tiles
    first_rows = first_layer.Hq * first_layer.row_pixels
    acc_fixed = sum(n * p for n, p in zip(n_tiles, p_rows, strict=True)) + fc_tiles * fc_rows
    acc_images = (config.acc_rows - acc_fixed) // (c_ring * band_rows + fc_tiles)
    largest = min((config.spad_rows - spad_fixed) // (2 * first_rows + inner_rows), acc_images, N)
    whole_batch = N <= acc_images and N * (first_rows + inner_rows) <= config.spad_rows - spad_fixed
    if whole_batch:
        largest = N
    if largest < 1:
        return None
    epilogues = [layer.epi for layer in layers] + ([dense.epi] if dense is not None else [])
    chained = len({_registers(epi) for epi in epilogues}) > 1    # registers set per layer

    def build(images: int, ring: int) -> Kernel:
        what = f"{name} {N}x{first_layer.C}x{first_layer.H}x{first_layer.W} resident input, {images} per tile"
        spad = _Allocator(Memory.SPAD, config.spad_rows, what)
        acc = _Allocator(Memory.ACC, config.acc_rows, what)
        streams = _Streams(config)
        _set_config_regs(streams, last.epi)
        if last.epi.act is Activation.TABLE:
            _load_table(streams, spad, operands["table"])
        b_bufs = [spad.ring(f"B{i}", n_tiles[i], layer.K(R)) for i, layer in enumerate(layers)]
        # One buffer per input row of a slot, taken in order (consecutive input rows are
        # row_pixels*images rows apart): a MATMUL waits only for the rows it reads.
        slots = min(ring, _cdiv(N, images))
        in_slots = [[spad.take(f"in{slot}_{iy}", first_layer.row_pixels * images)
                     for iy in range(first_layer.Hq)] for slot in range(slots)]
        inner = [[spad.take(f"in{i}_{iy}", layer.Wq * images) for iy in range(layer.Hq)]
                 for i, layer in enumerate(layers) if i > 0]
        out_slots = [] if last.epi.out_int32 else spad.ring("out", ring, pool * last.Wo * images)
        c_slots = acc.ring("C", min(ring, c_ring), band_rows * images)
        p_bufs = [acc.ring(f"params{i}", n_tiles[i], p_rows[i]) if p_rows[i] else []
                  for i in range(len(layers))]
        if dense is not None:
            fc_b = spad.ring("B_fc", fc_tiles, dense.F)
            fc_params = acc.ring("params_fc", fc_tiles, fc_rows) if fc_rows else []
            fc_acc = acc.ring("C_fc", fc_tiles, images)
            fc_out = spad.ring("out_fc", fc_tiles, images)
            for j in range(fc_tiles):
                n0, nj = j * COLS, min(COLS, dense.N_out - j * COLS)
                streams.add(Instruction.make(Opcode.LOAD, mem=Memory.SPAD, addr=fc_b[j].start,
                                             rows=dense.F, len=nj, dram=operands[dense.b_name].addr + n0,
                                             stride=dense.N_out), writes=[fc_b[j]])
                if fc_rows:
                    streams.add(Instruction.make(Opcode.LOAD, mem=Memory.ACC, addr=fc_params[j].start,
                                                 rows=fc_rows, len=nj, stride=4 * dense.N_out,
                                                 dram=operands[dense.params_name].addr + 4 * n0),
                                writes=[fc_params[j]])
        for i, layer in enumerate(layers):
            for j in range(n_tiles[i]):
                n0, nj = j * COLS, min(COLS, layer.K_out - j * COLS)
                streams.add(Instruction.make(Opcode.LOAD, mem=Memory.SPAD, addr=b_bufs[i][j].start,
                                             rows=layer.K(R), len=nj, dram=operands[layer.b_name].addr + n0,
                                             stride=layer.K_out), writes=[b_bufs[i][j]])
                if p_rows[i]:
                    streams.add(Instruction.make(Opcode.LOAD, mem=Memory.ACC, addr=p_bufs[i][j].start,
                                                 rows=p_rows[i], len=nj, stride=4 * layer.K_out,
                                                 dram=operands[layer.params_name].addr + 4 * n0),
                                writes=[p_bufs[i][j]])
        step = 0
        for t, first in enumerate(range(0, N, images)):
            g = min(images, N - first)
            rows_in = [in_slots[t % slots], *inner]
            _load_input(streams, first_layer, rows_in[0], g, x_addr + first * image_bytes, image_bytes, R)
            for i, layer in enumerate(layers[1:], start=1):       # its padding: zero rows
                _zero_padding(streams, layer, rows_in[i], g, R)
            for i, layer in enumerate(layers):
                if chained:
                    _set_config_regs(streams, layer.epi)
                band = bands[i]
                for j, b0 in itertools.product(range(n_tiles[i]), range(0, layer.Ho - band + 1, band)):
                    n0, nj = j * COLS, min(COLS, layer.K_out - j * COLS)
                    c_buf = _slot(c_slots, step)
                    step += 1
                    _band_matmuls(streams, layer, rows_in[i], b_bufs[i][j], c_buf, b0, band, g, images, nj, R)
                    rows = band * layer.Wo * g
                    if i + 1 < len(layers):       # into the next layer's input row b0 + pad, from column pad
                        nxt = layers[i + 1]
                        dst_buf = rows_in[i + 1][b0 + nxt.pad]
                        dst = dst_buf.start + nxt.pad * g
                    else:
                        dst_buf = c_buf if last.epi.out_int32 else _slot(out_slots, step)
                        dst = dst_buf.start
                    streams.add(_epilogue_insn(layer.epi, c_buf, p_bufs[i][j:j + 1], dst, rows, nj),
                                reads=[c_buf, *p_bufs[i][j:j + 1]], writes=[dst_buf])
                    if i + 1 == len(layers) and dense is not None:
                        # Each pooled row of this column tile is one K-chunk of the FC layer's GEMM:
                        # feature chunk (pixel q, channels n0..n0+cols) is B_fc's rows (q*K_out + n0)...
                        # the Wp pooled rows of this band, g rows apart, are Wp K-chunks of one MATMUL
                        # (chain_fc_weights orders B's rows so: column tile, then pixel).
                        _pool(streams, c_buf, dst_buf, pool, last.Wo, Wp, g)
                        first_row = (j * Hp + b0 // band) * Wp * R
                        for f in range(fc_tiles):
                            streams.add(Instruction.make(
                                Opcode.MATMUL, acc=fc_acc[f].start, a=dst_buf.start,
                                b=fc_b[f].start + first_row, a_stride=g, m=g,
                                n=min(COLS, dense.N_out - f * COLS), k=Wp * R, accumulate=first_row > 0),
                                reads=[dst_buf, fc_b[f]], writes=[fc_acc[f]])
                    elif i + 1 == len(layers):
                        _pool_and_store(streams, c_buf, dst_buf, out_op.addr, first, b0 // band, pool,
                                        last.Wo, Wp, pixels, g, n0, nj, last.K_out, out_bytes)
            if dense is not None:
                if chained:
                    _set_config_regs(streams, dense.epi)
                for f in range(fc_tiles):
                    n0, nj = f * COLS, min(COLS, dense.N_out - f * COLS)
                    streams.add(_epilogue_insn(dense.epi, fc_acc[f], fc_params[f:f + 1], fc_out[f].start,
                                               g, nj),
                                reads=[fc_acc[f], *fc_params[f:f + 1]], writes=[fc_out[f]])
                    streams.add(Instruction.make(Opcode.STORE, mem=Memory.SPAD, addr=fc_out[f].start, rows=g,
                                                 len=nj, dram=out_op.addr + first * dense.N_out + n0,
                                                 stride=dense.N_out), reads=[fc_out[f]])
        tiling = {"m": last.Ho * last.Wo * images, "a_slots": slots, "b_resident": True,
                  "params_resident": True, "first_pieces": 1, "buffers": ring, "k_block": 0, "n_group": 1,
                  "first_b_split": False, "last_pieces": 1, "first_pair": False,
                  "Ho": last.Ho, "Wo": last.Wo, "K": last.K(R), "resident_input": images}
        if first_layer.packed:
            tiling["taps_per_chunk"] = first_layer.kw
        if pool > 1:
            tiling.update(pool=pool, align=pool * pool * pixels)
        macs = sum(N * layer.Ho // band * band * layer.Wo * layer.K(R) * layer.K_out
                   for band, layer in zip(bands, layers, strict=True))
        if dense is not None:
            macs += N * dense.F * dense.N_out
            tiling.update(fc=dense.N_out, fc_pixels=pixels)
        return _finish(name, config, streams, operands, macs=macs, param_rows=last.epi.param_rows,
                       tiling=tiling)

    best: Kernel | None = None
    fewest = _cdiv(N, largest)
    for tiles in sorted({fewest, fewest + 1, 2 * fewest}):
        if tiles > N:
            continue
        for ring in _buffering_options(config):
            try:
                kernel = build(_cdiv(N, tiles), ring)
            except _Unorderable:
                continue
            except KernelError:
                break              # does not fit: (only) one tile of the whole batch did
            if best is None or kernel.predicted_cycles < best.predicted_cycles:
                best = kernel
            break
    return best


def _load_input(streams: _Streams, layer: _Layer, rows_in: list, g: int, x_addr: int, image_bytes: int,
                R: int) -> None:
    """The LOADs of a tile's input rows (see _resident_input_conv), each for every image of the tile."""
    C, W = layer.C, layer.W
    if layer.packed:
        for iy, ox in itertools.product(range(layer.H), range(layer.Wo)):   # taps ox..ox+kw-1 of row iy
            streams.add(Instruction.make(Opcode.LOAD, mem=Memory.SPAD, rows=g, len=layer.kw * C,
                                         addr=rows_in[iy].start + ox * g, stride=image_bytes,
                                         dram=x_addr + (iy * W + ox) * C), writes=[rows_in[iy]])
        return
    for iy in range(layer.Hq):
        segments = _SegmentList()
        for ix in range(layer.Wq):
            y, x = iy - layer.pad, ix - layer.pad
            inside = 0 <= y < layer.H and 0 <= x < W
            dram = x_addr + (y * W + x) * C if inside else None
            segments.emit(ix * g, g, dram, image_bytes if inside else 0)
        for seg in segments:
            fields = (dict(zero=True, len=R) if seg.dram is None
                      else dict(len=C, dram=seg.dram, stride=seg.stride))
            streams.add(Instruction.make(Opcode.LOAD, mem=Memory.SPAD, rows=seg.rows,
                                         addr=rows_in[iy].start + seg.local, **fields), writes=[rows_in[iy]])


def _zero_padding(streams: _Streams, layer: _Layer, rows_in: list, g: int, R: int) -> None:
    """Zero rows for the padding of a later layer's input (its inside comes from an EPILOGUE)."""
    p = layer.pad
    for iy in range(layer.Hq):
        runs = [(0, layer.Wq)] if not p <= iy < p + layer.H else [(0, p), (p + layer.W, layer.Wq)]
        for a, b in runs:
            if b > a:
                streams.add(Instruction.make(Opcode.LOAD, mem=Memory.SPAD, zero=True, len=R, rows=(b - a) * g,
                                             addr=rows_in[iy].start + a * g), writes=[rows_in[iy]])


def _band_matmuls(streams: _Streams, layer: _Layer, rows_in: list, b_buf, c_buf, b0: int, band: int, g: int,
                  images: int, nj: int, R: int) -> None:
    """The MATMULs of output rows b0..b0+band-1 of one column tile into C."""
    Wo, kh, kw = layer.Wo, layer.kh, layer.kw
    for r in range(band):
        oy = b0 + r
        if layer.packed:     # the kh K-chunks are input rows oy..oy+kh-1, row_pixels*images rows apart
            streams.add(Instruction.make(Opcode.MATMUL, acc=c_buf.start + r * Wo * g, a=rows_in[oy].start,
                                         b=b_buf.start, a_stride=Wo * images, m=Wo * g, n=nj, k=kh * R,
                                         accumulate=False),
                        reads=[*rows_in[oy:oy + kh], b_buf], writes=[c_buf])
            continue
        for ky in range(kh):  # the kw K-chunks are taps kx: the same rows, shifted by g per tap
            row = rows_in[oy + ky]
            streams.add(Instruction.make(Opcode.MATMUL, acc=c_buf.start + r * Wo * g, a=row.start,
                                         b=b_buf.start + ky * kw * R, a_stride=g, m=Wo * g, n=nj, k=kw * R,
                                         accumulate=ky > 0),
                        reads=[row, b_buf], writes=[c_buf])


def _epilogue_insn(epi: _Epilogue, c_buf, p_buf: list, dst: int, rows: int, nj: int) -> Instruction:
    fields = dict(src=c_buf.start, m=rows, n=nj, dst=dst, out=Memory.ACC if epi.out_int32 else Memory.SPAD,
                  act=epi.act)
    if epi.bias:
        fields.update(bias=True, bias_addr=p_buf[0].start)
    if epi.requant:
        fields.update(requant=True, quant_addr=p_buf[0].start + (1 if epi.bias else 0))
    return Instruction.make(Opcode.EPILOGUE, **fields)


def _pool_and_store(streams: _Streams, c_buf, result, out_addr: int, first: int, band: int, pool: int,
                    Wo: int,
                    Wp: int, pixels: int, g: int, n0: int, nj: int, K_out: int, out_bytes: int) -> None:
    """Max pooling of one band of ``pool`` output rows (in C's rows, which the EPILOGUE has read),
    and a STORE per output pixel of the band, for every image of the tile."""
    _pool(streams, c_buf, result, pool, Wo, Wp, g)
    for px in range(Wp):
        q = band * Wp + px
        streams.add(Instruction.make(Opcode.STORE, mem=result.memory, addr=result.start + px * g, rows=g,
                                     len=nj,
                                     dram=out_addr + ((first * pixels + q) * K_out + n0) * out_bytes,
                                     stride=pixels * K_out * out_bytes), reads=[result])


def _pool(streams: _Streams, c_buf, result, pool: int, Wo: int, Wp: int, g: int) -> None:
    """Max pooling of one band of ``pool`` output rows of ``result`` (through C's rows, which the
    EPILOGUE has read) into its first ``Wp*g`` rows: rows ``(px, n)``."""
    if pool == 1:
        return
    for px in range(Wp):
        dst = c_buf.start + px * g
        for w, (dy, dx) in enumerate(itertools.product(range(pool), range(pool))):
            src = result.start + (dy * Wo + px * pool + dx) * g
            if w == 0:
                insn = _vector(VectorOp.MOV, c_buf, dst, result, src, g)
            else:
                insn = _vector(VectorOp.MAX, c_buf, dst, c_buf, dst, g, src2=result, src2_row=src)
            streams.add(insn, reads=[c_buf, result], writes=[c_buf])
    streams.add(_vector(VectorOp.MOV, result, result.start, c_buf, c_buf.start, Wp * g),
                reads=[c_buf], writes=[result])


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
#: ... and at scratchpad row 0, by (geometry, first pixel, pixels, K-chunk): moved to any other row.
_A_LOADS_AT_ZERO: dict[tuple, tuple[Instruction, ...]] = {}
