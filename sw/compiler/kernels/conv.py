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
from collections.abc import Mapping

import numpy as np

from braze.isa import Activation, Config, Instruction, Memory, Opcode, VectorOp

from .common import (
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
)
from .matmul import Tiling, _matmul_kernel

__all__ = ["conv2d", "conv2d_weights", "taps_per_chunk"]


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


def conv2d_weights(config: Config, weights: np.ndarray, kernel: Kernel | None = None) -> np.ndarray:
    """The B operand of :func:`conv2d` from OIHW weights (K_out, C, kh, kw), for ``kernel``.

    One tap per K-chunk (``kernel`` None, or a kernel whose ``taps_per_chunk`` is 1): shape
    (kh*kw*Cp, K_out), row ``(ky*kw + kx)*Cp + ch`` holds the weights of input channel ``ch`` at
    tap (ky, kx); ``Cp`` is C rounded up to a multiple of ``config.rows`` and the padding rows are
    zero.  With ``g = kernel.tiling["taps_per_chunk"] > 1`` (few channels, see
    :func:`taps_per_chunk`): shape (kh*G*rows, K_out) with ``G = ceil(kw/g)`` chunks per kernel
    row; row ``(ky*G + kx//g)*rows + (kx % g)*C + ch`` holds tap (ky, kx), channel ``ch``.
    """
    weights = np.asarray(weights)
    if weights.ndim != 4:
        raise KernelError(f"conv2d weights must be OIHW (4-D), not shape {weights.shape}")
    k_out, channels, kh, kw = weights.shape
    packed = 1 if kernel is None else int(kernel.tiling.get("taps_per_chunk", 1))
    if kernel is not None and kernel.operands["x"].shape[-1] != channels:
        raise KernelError(f"conv2d weights of shape {weights.shape} have {channels} input channels, the "
                          f"{kernel.name} kernel expects {kernel.operands['x'].shape[-1]}")
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
    if kernel is not None and b.shape != kernel.operands["B"].shape:
        raise KernelError(f"conv2d weights of shape {weights.shape} give B of shape {b.shape}, the "
                          f"{kernel.name} kernel expects {kernel.operands['B'].shape}")
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
        stride 1, no dilation, ``rows/2 < C <= rows``: each input pixel is loaded once and the
        taps are read from the scratchpad (:func:`_resident_input_conv`): the input crosses the
        bus once instead of ``kh*kw`` times.
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
            # Packed taps: this chunk's taps kx..kx+taps-1 are taps*C contiguous bytes of an input row.
            length = min(packed, kw - q * packed) * C if packed > 1 else min(R, C - cc * R)
            loads = []
            if pixel_major:
                segments = _pixel_major_segments(i0 // image_rows, mt // image_rows, ky, kx, cc * R)
            elif pool == 1:
                segments = _window_segments(N, H, W, C, Ho, Wo, stride, pad, ky, kx, i0, mt, x_addr, cc * R)
            else:
                segments = _pooled_segments(i0 // image_rows, mt // image_rows, ky, kx, cc * R)
            for seg in segments:
                if seg.dram is None:
                    loads.append(Instruction.make(Opcode.LOAD, mem=Memory.SPAD, zero=True,
                                                  addr=dst + seg.local, rows=seg.rows, len=R))
                else:
                    loads.append(Instruction.make(Opcode.LOAD, mem=Memory.SPAD, addr=dst + seg.local,
                                                  rows=seg.rows, len=length, dram=seg.dram,
                                                  stride=seg.stride))
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
    for form in forms:
        try:
            if form == "resident":
                kernel = _resident_input_conv(config, N, C, H, W, K_out, kh, kw, pad, pool, epi, operands,
                                              (Ho, Wo, K), packed > 1)
                if kernel is None and layout is not None:
                    raise KernelError(f"conv2d {N}x{C}x{H}x{W}: not one image's input fits the scratchpad")
            else:
                kernel = _conv_form(form == "pixels")
        except KernelError:
            if form != "rows" and len(forms) > 1:
                continue           # e.g. a forced tiling of the row-major form (not whole images per tile)
            raise
        if kernel is not None:
            built.append(kernel)
    return min(built, key=lambda kernel: kernel.predicted_cycles)


def _resident_input_conv(config: Config, N: int, C: int, H: int, W: int, K_out: int, kh: int, kw: int,
                         pad: int, pool: int, epi: _Epilogue, operands: dict, shape: tuple[int, int, int],
                         packed: bool = False) -> Kernel | None:
    """A stride-1 convolution of a batch of small images (``rows/2 < C <= rows``) whose input pixels
    are each loaded once: the taps are read from the scratchpad, not loaded again (on-chip im2col).

    ``packed`` (a kernel row's ``kw`` taps in one K-chunk, :func:`taps_per_chunk`; no padding):
    the input rows are ``(iy, ox, n)`` instead, each the ``kw*C`` bytes of taps ``ox..ox+kw-1`` of
    input row ``iy`` (one LOAD per (iy, ox) for every image), and for output row ``oy`` the A rows
    of chunk ``ky`` are the ``Wo*G`` rows of input row ``oy + ky``: one MATMUL per output row, its
    ``kh`` K-chunks an input row apart.

    An input tile holds ``G`` whole images in scratchpad rows ``(iy, ix, n)`` (padding pixels are
    zero rows), one LOAD per input pixel for every image of the tile.  The output is computed in
    bands of ``pool`` output rows, rows ``(oy, ox, n)``: for output row ``oy`` and kernel row
    ``ky`` the A rows of tap ``kx`` -- pixel ``(oy + ky, ox + kx)`` of image ``n`` -- are the
    ``Wo*G`` consecutive input rows from ``((oy + ky)*Wq + kx)*G``, so one MATMUL per (oy, ky)
    covers the ``kw`` taps as its K-chunks, ``G`` rows apart (``a_stride``).  B and the parameters
    stay resident.  Pooling (``pool = p``): VECTOR max of the ``p*p`` pixels of each window, ``G``
    rows at a time.  One STORE per output pixel writes it for every image.  Of the tile sizes
    tried, the kernel the timing model predicts fastest; None if not even one image fits.
    """
    Ho, Wo, K = shape
    R, COLS = config.rows, config.cols
    Hq, Wq = H + 2 * pad, W + 2 * pad
    Hp, Wp = Ho // pool, Wo // pool
    pixels = Hp * Wp                          # output pixels per image (after pooling)
    band_rows = pool * Wo                     # C rows per image of one band of output rows
    bands = Ho // pool
    n_tiles = _cdiv(K_out, COLS)
    p_rows = len(epi.param_rows)
    image_bytes = H * W * C
    out_bytes = 4 if epi.out_int32 else 1
    x_addr, out_op = operands["x"].addr, operands["out"]
    spad_fixed = n_tiles * K + (256 // COLS if epi.act is Activation.TABLE else 0)
    # C's accumulator rows are free once the EPILOGUE (and pooling, on the same unit) has read them,
    # unless the STOREs read them (int32 output): then a second slot lets the next band go on.
    c_ring = 2 if epi.out_int32 else 1
    row_pixels = Wo if packed else Wq         # input slot rows per image and input row
    largest = min((config.spad_rows - spad_fixed)
                  // (2 * Hq * row_pixels + (0 if epi.out_int32 else 2 * band_rows)),
                  (config.acc_rows - n_tiles * p_rows) // (c_ring * band_rows), N)
    if largest < 1:
        return None

    def build(images: int, ring: int) -> Kernel:
        what = f"conv2d {N}x{C}x{H}x{W} resident input, {images} images per tile"
        spad = _Allocator(Memory.SPAD, config.spad_rows, what)
        acc = _Allocator(Memory.ACC, config.acc_rows, what)
        streams = _Streams(config)
        _set_config_regs(streams, epi)
        if epi.act is Activation.TABLE:
            _load_table(streams, spad, operands["table"])
        b_bufs = spad.ring("B", n_tiles, K)
        # One buffer per input row of a slot: a MATMUL waits only for the rows it reads.
        slots = min(ring, _cdiv(N, images))
        # (Taken in order: consecutive input rows are row_pixels*images rows apart.)
        in_slots = [[spad.take(f"in{slot}_{iy}", row_pixels * images) for iy in range(Hq)]
                    for slot in range(slots)]
        out_slots = [] if epi.out_int32 else spad.ring("out", ring, band_rows * images)
        c_slots = acc.ring("C", min(ring, c_ring), band_rows * images)
        p_bufs = acc.ring("params", n_tiles, p_rows) if p_rows else []
        for j in range(n_tiles):
            n0, nj = j * COLS, min(COLS, K_out - j * COLS)
            streams.add(Instruction.make(Opcode.LOAD, mem=Memory.SPAD, addr=b_bufs[j].start, rows=K, len=nj,
                                         dram=operands["B"].addr + n0, stride=K_out), writes=[b_bufs[j]])
            if p_rows:
                streams.add(Instruction.make(Opcode.LOAD, mem=Memory.ACC, addr=p_bufs[j].start, rows=p_rows,
                                             len=nj, dram=operands["params"].addr + 4 * n0, stride=4 * K_out),
                            writes=[p_bufs[j]])
        step = 0
        for t, first in enumerate(range(0, N, images)):
            g = min(images, N - first)
            rows_in = in_slots[t % slots]
            for iy in range(Hq if packed else 0):
                for ox in range(Wo):        # taps ox..ox+kw-1 of input row iy, for every image
                    streams.add(Instruction.make(Opcode.LOAD, mem=Memory.SPAD, rows=g, len=kw * C,
                                                 addr=rows_in[iy].start + ox * g, stride=image_bytes,
                                                 dram=x_addr + first * image_bytes + (iy * W + ox) * C),
                                writes=[rows_in[iy]])
            for iy in range(0 if packed else Hq):
                segments = _SegmentList()
                for ix in range(Wq):
                    y, x = iy - pad, ix - pad
                    inside = 0 <= y < H and 0 <= x < W
                    dram = x_addr + first * image_bytes + (y * W + x) * C if inside else None
                    segments.emit(ix * g, g, dram, image_bytes if inside else 0)
                for seg in segments:
                    fields = (dict(zero=True, len=R) if seg.dram is None
                              else dict(len=C, dram=seg.dram, stride=seg.stride))
                    streams.add(Instruction.make(Opcode.LOAD, mem=Memory.SPAD, rows=seg.rows,
                                                 addr=rows_in[iy].start + seg.local, **fields),
                                writes=[rows_in[iy]])
            for j, band in itertools.product(range(n_tiles), range(bands)):
                n0, nj = j * COLS, min(COLS, K_out - j * COLS)
                c_buf = _slot(c_slots, step)
                for r in range(pool if packed else 0):
                    oy = band * pool + r
                    streams.add(Instruction.make(Opcode.MATMUL, acc=c_buf.start + r * Wo * g,
                                                 a=rows_in[oy].start, b=b_bufs[j].start,
                                                 a_stride=Wo * images, m=Wo * g, n=nj, k=K, accumulate=False),
                                reads=[*rows_in[oy:oy + kh], b_bufs[j]], writes=[c_buf])
                for r, ky in itertools.product(range(0 if packed else pool), range(kh)):
                    row = rows_in[band * pool + r + ky]
                    streams.add(Instruction.make(Opcode.MATMUL, acc=c_buf.start + r * Wo * g, a=row.start,
                                                 b=b_bufs[j].start + ky * kw * R, a_stride=g, m=Wo * g, n=nj,
                                                 k=kw * R, accumulate=ky > 0),
                                reads=[row, b_bufs[j]], writes=[c_buf])
                result = c_buf if epi.out_int32 else _slot(out_slots, step)
                fields = dict(src=c_buf.start, m=band_rows * g, n=nj, dst=result.start,
                              out=Memory.ACC if epi.out_int32 else Memory.SPAD, act=epi.act)
                if epi.bias:
                    fields.update(bias=True, bias_addr=p_bufs[j].start)
                if epi.requant:
                    fields.update(requant=True, quant_addr=p_bufs[j].start + (1 if epi.bias else 0))
                streams.add(Instruction.make(Opcode.EPILOGUE, **fields),
                            reads=[c_buf, *p_bufs[j:j + 1]], writes=[result])
                if pool > 1:
                    # Window px of the band: the max of its pool*pool pixels' rows, into C's rows px*g..
                    # (the EPILOGUE has read them), then back to int8 for the STOREs.
                    for px in range(Wp):
                        dst = c_buf.start + px * g
                        for w, (dy, dx) in enumerate(itertools.product(range(pool), range(pool))):
                            src = result.start + (dy * Wo + px * pool + dx) * g
                            if w == 0:
                                insn = _vector(VectorOp.MOV, c_buf, dst, result, src, g)
                            else:
                                insn = _vector(VectorOp.MAX, c_buf, dst, c_buf, dst, g, src2=result,
                                               src2_row=src)
                            streams.add(insn, reads=[c_buf, result], writes=[c_buf])
                    streams.add(_vector(VectorOp.MOV, result, result.start, c_buf, c_buf.start, Wp * g),
                                reads=[c_buf], writes=[result])
                for px in range(Wp):          # output pixel (band, px) of every image of the tile: one STORE
                    q = band * Wp + px
                    streams.add(Instruction.make(
                        Opcode.STORE, mem=result.memory, addr=result.start + px * g, rows=g, len=nj,
                        dram=out_op.addr + ((first * pixels + q) * K_out + n0) * out_bytes,
                        stride=pixels * K_out * out_bytes), reads=[result])
                step += 1
        tiling = {"m": Ho * Wo * images, "a_slots": slots, "b_resident": True, "params_resident": True,
                  "first_pieces": 1, "buffers": ring, "k_block": 0, "n_group": 1, "Ho": Ho, "Wo": Wo, "K": K,
                  "resident_input": images}
        if packed:
            tiling["taps_per_chunk"] = kw
        if pool > 1:
            tiling.update(pool=pool, align=pool * pool * pixels)
        return _finish("conv2d", config, streams, operands, macs=N * bands * band_rows * K * K_out,
                       param_rows=epi.param_rows, tiling=tiling)

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
            if best is None or kernel.predicted_cycles < best.predicted_cycles:
                best = kernel
            break
    return best


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
