"""The tiled matrix-multiply pipeline behind :func:`gemm` and :func:`~.conv.conv2d`: the tilings
(:class:`Tiling`) that fit a configuration, the streams of one tiling, and the choice of the tiling the
timing model predicts fastest; :func:`gemm` itself.

Limitations
-----------
* When an A tile with all of K does not fit the scratchpad with room to
  spare, A is streamed in K blocks once per group of N tiles (see
  :class:`Tiling`); that reads A several times, and a convolution then
  gathers its patches several times (more LOAD instructions).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from braze.isa import Activation, Config, Instruction, Memory, Opcode, VectorOp
from braze.isa.timing import table_rows

from .common import (
    CandidatePruned,
    Kernel,
    KernelError,
    Operand,
    _Allocator,
    _Buffer,
    _buffering_options,
    _cdiv,
    _check_config,
    _counters_spec,
    _Epilogue,
    _epilogue_options,
    _epilogue_specs,
    _finish,
    _load_table,
    _OperandSpec,
    _place,
    _positive,
    _set_config_regs,
    _slot,
    _Streams,
    _Unorderable,
    _vector,
    prune_cutoff,
)
from .loops import loops_if_no_slower

__all__ = ["Tiling", "gemm", "batched_gemm", "zero_point_rows", "candidate_tilings", "matmul_tilings"]


# ---------------------------------------------------------------------------------------------------------
# The matrix-multiply pipeline behind gemm and conv2d

# Emits the LOADs that place rows i0..i0+m-1 of K-chunk c of A at scratchpad row `dst` (one row per
# A row, the chunk's `rows` bytes at the start of the row, zeros elsewhere).
ALoader = Callable[[int, int, int, int], list[Instruction]]


@dataclasses.dataclass(frozen=True)
class Tiling:
    """How a GEMM or convolution is tiled (chosen by the kernel unless forced, e.g. by tests).

    Attributes
    ----------
    m : int
        Rows of A (and C) per M tile.
    a_slots : int
        Size of the A ring, in K-chunk slots of ``m`` scratchpad rows.  Chunk c
        of M tile t lives in slot ``(t*chunks + c) % a_slots``, so with more
        slots than one tile needs the next tile's chunks load while this one
        computes (a ring of exactly ``2*chunks`` slots is plain double
        buffering).  A MATMUL whose chunks wrap around the ring is split in two.
    b_resident : bool
        Every B tile stays in the scratchpad (loaded once); otherwise B tiles
        stream through two slots.
    params_resident : bool
        Every parameter tile stays in the accumulator (loaded once); otherwise two slots.
    first_pieces : int
        The MATMUL of the first N tile of each M tile is split into this many
        K-pieces (accumulating), so that it starts as soon as the first
        chunks of A are in, instead of after all of them.
    buffers : int
        Slots of the rings of streamed B, parameter, residual, output and C
        tiles: 2 (double buffering) or 1 (for token queues of depth 1).
    k_block : int
        0: an A tile (all of K) stays resident while every N tile is computed.
        Otherwise a multiple of ``rows``: for each N tile, K is covered in
        blocks of ``k_block`` rows, each block's A chunks and B rows streamed
        through the rings and accumulated by MATMUL -- A is read once per N
        tile, but K is no longer limited by the scratchpad, and ``m`` can be
        large for large K.  ``b_resident`` must be false.
    n_group : int
        With ``k_block``: N tiles computed together, each K block of A
        serving all of them (their C tiles live in the accumulator at once),
        so A is read once per group of N tiles.
    first_b_split : bool
        With resident B: the first tile's B is loaded in the K-pieces of its
        first MATMUL, each LOADed just before its chunks of A, so that the
        first piece waits for its own rows of B only, not for all of them
        (the parameter rows follow the A tile).
    last_pieces : int
        With two MATMULs in flight and the EPILOGUE beside them (the deferred
        finish of ``Config.matmul_overlap``): the last output tile is computed,
        finished and stored in this many pieces of rows, so that the work left
        after the last MATMUL is one piece's EPILOGUE and STORE, not the tile's.
    first_pair : bool
        With resident B and the deferred finish: the first M tile's first two
        N tiles are computed K-chunk by K-chunk, one MATMUL per chunk and tile
        in turn, their B loaded chunk by chunk beside the A chunks, so that they
        stream while A arrives (without, the first N tile needs all of A before
        the second can start, and its loads outrun its MATMULs).
    """

    m: int
    a_slots: int
    b_resident: bool
    params_resident: bool
    first_pieces: int = 1
    buffers: int = 2
    k_block: int = 0
    n_group: int = 1
    first_b_split: bool = False
    last_pieces: int = 1
    first_pair: bool = False

    def uncut(self) -> Tiling:
        """This tiling without the lead-in and tail cuts (``first_b_split``, ``last_pieces``, ``first_pair``):
        the candidate :func:`candidate_tilings` lists, which the library refines into this one."""
        return dataclasses.replace(self, first_b_split=False, last_pieces=1, first_pair=False)


def _chunk_runs(first_slot: int, chunks: int, ring: int, pieces: int) -> list[tuple[int, int]]:
    """Chunk ranges [c0, c1) whose slots are consecutive in the ring, each range split into about
    ``pieces`` parts in total."""
    runs = []
    c = 0
    while c < chunks:
        slot = (first_slot + c) % ring
        length = min(chunks - c, ring - slot)
        runs.append((c, c + length))
        c += length
    if pieces <= 1:
        return runs
    size = _cdiv(chunks, pieces)
    return [(c, min(c + size, c1)) for c0, c1 in runs for c in range(c0, c1, size)]


def _split_loads(loads: list[Instruction], row: int) -> tuple[list[Instruction], list[Instruction]]:
    """``loads`` (LOADs of local rows) divided into those of the rows below ``row`` and those of the rows from
    ``row`` on, a LOAD across ``row`` split in two (its second part reads on from its row ``row - addr``)."""
    below, above = [], []
    for load in loads:
        if load.addr + load.rows <= row:
            below.append(load)
        elif load.addr >= row:
            above.append(load)
        else:
            head = row - load.addr
            fields = dict(load.args)
            below.append(Instruction.make(Opcode.LOAD, **fields | dict(rows=head)))
            tail = dict(addr=row, rows=load.rows - head)
            if not load.zero:
                tail["dram"] = load.dram + head * load.stride
            above.append(Instruction.make(Opcode.LOAD, **fields | tail))
    return below, above


def _matmul_pipeline(config: Config, M: int, K: int, N: int, epi: _Epilogue, operands: dict[str, Operand],
                     a_loader: ALoader, tiling: Tiling, pool: int = 1, slice_rows: int | None = None,
                     b_slice: int = 0, zp_a: tuple[int, ...] = (), zp_b: tuple[int, ...] = (),
                     b_heads: int = 1, out_heads: int = 1, pixel_major: int = 0, defer: bool = True
                     ) -> _Streams:
    """The streams of a tiled matrix multiply; with ``pool > 1`` every output tile is max-pooled on chip
    before its STORE (the rows of a tile in blocks of ``pool**2``, see :func:`~.conv.conv2d`).

    A batch of matrix multiplies (:func:`batched_gemm`): the M rows are slices of ``slice_rows`` rows,
    M tiles never cross a slice, and slice ``s`` reads its B ``s * b_slice`` bytes after the first
    (``b_slice = 0``: one B shared by every slice).

    Zero points (:func:`batched_gemm`): after the MATMULs of A and B, each output tile accumulates
    ``v * colsum(B)`` for every ``v`` of ``zp_a`` (a MATMUL whose A is a constant tile of ``v``, read
    for every K chunk: ``a_stride = 0``) and ``v * rowsum(A)`` for every ``v`` of ``zp_b`` (a MATMUL
    per K chunk whose B is a constant tile of ``v``); the constants come from the ``zp`` operand
    (:func:`zero_point_rows`), loaded once.

    Heads (:func:`batched_gemm` ``heads``): with ``b_heads = H > 1`` slice ``g`` of B is head ``g % H`` of
    a ``[batch/H, K, H, N]`` tensor (rows ``H*N`` bytes apart), and likewise the output with
    ``out_heads`` (``[batch/H, M, H, N]``).

    Pixel-major tiles (``pixel_major = P``, a convolution over a batch, :func:`~.conv.conv2d`): M is
    images of P output rows each (P pixels, after pooling), every M tile holds whole images, and
    within a tile the rows are in the order (pixel, image); each pixel's rows are STOREd to their
    NHWC places with one strided STORE.

    ``defer``: where :func:`_defers_finish` allows it, each output tile's EPILOGUE and STORE come after the
    next tile's MATMULs (False: right after its own)."""
    R, COLS = config.rows, config.cols
    chunks = _cdiv(K, R)
    n_tiles = _cdiv(N, COLS)
    m = tiling.m
    p_rows = len(epi.param_rows)
    streamed = tiling.k_block > 0
    block_chunks = tiling.k_block // R if streamed else chunks
    blocks = [(c0, min(chunks, c0 + block_chunks)) for c0 in range(0, chunks, block_chunks)]
    what = f"{M}x{K}x{N} matmul tiling {tiling}"
    spad = _Allocator(Memory.SPAD, config.spad_rows, what)
    acc = _Allocator(Memory.ACC, config.acc_rows, what)
    ring = tiling.buffers
    b_slots = spad.ring("B", n_tiles if tiling.b_resident else ring, block_chunks * R if streamed else K)
    res_slots = spad.ring("residual", ring, m) if epi.residual else []
    out_slots = spad.ring("out", ring, m) if not epi.out_int32 else []
    if tiling.a_slots < block_chunks:
        raise KernelError(f"{what}: the A ring needs at least {block_chunks} slots")
    if pool > 1 and (not epi.needed or epi.out_int32):
        raise KernelError(f"{what}: fused pooling needs an int8 EPILOGUE output")
    if out_heads > 1 and (epi.residual or pool > 1):
        raise KernelError(f"{what}: an output in heads layout takes no residual or pooling")
    if pixel_major and (epi.residual or out_heads > 1 or b_slice):
        raise KernelError(f"{what}: pixel-major tiles take no residual, heads or batch of B")
    if (zp_a or zp_b) and streamed:
        raise KernelError(f"{what}: zero points need A resident (no K blocks)")
    zp_a_bufs = spad.ring("zp_a", len(zp_a), m)       # constant A tiles: -za (in int8 parts)
    zp_b_bufs = spad.ring("zp_b", len(zp_b), min(R, K))   # constant B tiles of one K chunk: -zb
    a_slots = spad.ring("A", tiling.a_slots, m)      # consecutive rows: slot i starts at a_slots[0] + i*m
    group = tiling.n_group if streamed else 1
    defer_finish = defer and _defers_finish(config, epi, tiling, pool)
    pair = bool(tiling.first_pair and tiling.b_resident and n_tiles >= 3 and not b_slice and not streamed
                and not (zp_a or zp_b) and defer_finish and _first_pair_fits(config, tiling, n_tiles, p_rows))
    # A first pair's tile 0 finishes beside tile 1's last MATMUL and tile 2's: a third C slot keeps tile 2's
    # MATMUL clear of it.
    c_slots = acc.ring("C", ring * group + (1 if pair else 0), m)
    p_count = n_tiles if tiling.params_resident else ring * group
    p_slots = acc.ring("params", p_count, p_rows) if p_rows else []

    b_op, out_op = operands["B"], operands["out"]
    out_bytes = 4 if epi.out_int32 else 1
    streams = _Streams(config)
    _set_config_regs(streams, epi)
    if epi.act is Activation.TABLE:
        _load_table(streams, spad, operands["table"])
    a_next = 0          # the A ring slot the next chunk goes to
    b_next = 0          # the B ring slot the next streamed B tile goes to
    c_next = 0          # the C ring slot of the next output tile
    slice_rows = slice_rows or M
    b_base = b_op.addr  # the B of the current slice
    b_row = N * (b_heads if b_slice else 1)   # bytes from one row of B to the next
    if zp_a or zp_b:
        zp_op = operands["zp"]
        width = zp_op.shape[1]
        for index, buf in enumerate(zp_a_bufs):
            streams.add(Instruction.make(Opcode.LOAD, mem=Memory.SPAD, addr=buf.start, rows=m, len=min(R, K),
                                         dram=zp_op.addr + index * width, stride=0), writes=[buf])
        for index, buf in enumerate(zp_b_bufs, start=len(zp_a)):
            streams.add(Instruction.make(Opcode.LOAD, mem=Memory.SPAD, addr=buf.start, rows=min(R, K),
                                         len=min(COLS, N), dram=zp_op.addr + index * width, stride=0),
                        writes=[buf])
    b_fresh = True      # the current M tile is the first of its slice (a resident B is loaded)

    def load_a(i0: int, mt: int, c0: int, c1: int) -> tuple[int, list[_Buffer]]:
        """LOADs of chunks c0..c1-1 of A tile i0 into the next ring slots; (first slot index, slots)."""
        nonlocal a_next
        first, slots = a_next % tiling.a_slots, []
        for c in range(c0, c1):
            slot = _slot(a_slots, a_next)
            a_next += 1
            streams.add_writes(a_loader(i0, mt, c, slot.start), slot)
            slots.append(slot)
        return first, slots

    def load_b(t: int, j: int, c0: int, c1: int) -> _Buffer:
        """The LOAD of rows c0*R.. of B tile j (all of K unless streamed); returns its buffer."""
        nonlocal b_next
        n0 = j * COLS
        k0, k1 = (c0 * R, min(K, c1 * R)) if streamed else (0, K)
        if tiling.b_resident:
            b_buf = b_slots[j]
        else:
            b_buf = _slot(b_slots, b_next)
            b_next += 1
        if not tiling.b_resident or t == 0 or (b_fresh and b_slice):
            streams.add(Instruction.make(Opcode.LOAD, mem=Memory.SPAD, addr=b_buf.start, rows=k1 - k0,
                                         len=min(COLS, N - n0), dram=b_base + k0 * b_row + n0, stride=b_row),
                        writes=[b_buf])
        return b_buf

    def load_epilogue_operands(t: int, i0: int, mt: int, j: int, step: int
                               ) -> tuple[_Buffer | None, _Buffer | None]:
        """The LOADs of the parameter and residual tiles of tile (t, j); returns their buffers."""
        n0 = j * COLS
        nj = min(COLS, N - n0)
        p_buf = None
        if p_rows:
            p_buf = p_slots[j] if tiling.params_resident else _slot(p_slots, step)
            if not tiling.params_resident or t == 0:
                streams.add(Instruction.make(Opcode.LOAD, mem=Memory.ACC, addr=p_buf.start, rows=p_rows,
                                             len=nj, dram=operands["params"].addr + 4 * n0, stride=4 * N),
                            writes=[p_buf])
        r_buf = None
        if epi.residual:
            r_buf = _slot(res_slots, step)
            streams.add(Instruction.make(Opcode.LOAD, mem=Memory.SPAD, addr=r_buf.start, rows=mt, len=nj,
                                         dram=operands["residual"].addr + i0 * N + n0, stride=N),
                        writes=[r_buf])
        return p_buf, r_buf

    def matmuls(c_buf: _Buffer, b_buf: _Buffer, mt: int, nj: int, c0: int, c1: int, first_slot: int,
                block_slots: list[_Buffer], pieces: int, row: int = 0,
                b_parts: Mapping[int, _Buffer] | None = None) -> None:
        """MATMULs of chunks c0..c1-1 into C: one per run of consecutive ring slots (a block that wraps
        around the ring is split in two, as is the first MATMUL of a tile into ``pieces``),
        accumulating after the first chunk of K.  ``row``: the MATMULs cover the tile's rows ``row ..
        row+mt-1`` only; ``b_parts``: the buffers B was loaded in, by the first chunk of their run."""
        for r0, r1 in _chunk_runs(first_slot, c1 - c0, tiling.a_slots, pieces):
            k0, k1 = (c0 + r0) * R, min(K, (c0 + r1) * R)
            b_read = b_buf if b_parts is None else b_parts[r0]
            streams.add(Instruction.make(Opcode.MATMUL, acc=c_buf.start + row, a=block_slots[r0].start + row,
                                         b=b_buf.start + (k0 if not streamed else r0 * R), a_stride=m, m=mt,
                                         n=nj, k=k1 - k0, accumulate=k0 > 0),
                        reads=[*block_slots[r0:r1], b_read], writes=[c_buf])

    def zero_point_matmuls(c_buf: _Buffer, b_buf: _Buffer, mt: int, nj: int, tile_slots: list[_Buffer]
                           ) -> None:
        """The zero-point terms of an output tile, accumulated after its MATMULs of A and B."""
        for buf in zp_a_bufs:           # v * colsum(B): the constant A tile serves every K chunk
            streams.add(Instruction.make(Opcode.MATMUL, acc=c_buf.start, a=buf.start, b=b_buf.start,
                                         a_stride=0, m=mt, n=nj, k=K, accumulate=True),
                        reads=[buf, b_buf], writes=[c_buf])
        for buf in zp_b_bufs:           # v * rowsum(A): chunk by chunk against one constant B chunk
            for c in range(chunks):
                streams.add(Instruction.make(Opcode.MATMUL, acc=c_buf.start, a=tile_slots[c].start,
                                             b=buf.start, a_stride=m, m=mt, n=nj, k=min(R, K - c * R),
                                             accumulate=True),
                            reads=[tile_slots[c], buf], writes=[c_buf])

    def finish_tile(c_buf: _Buffer, p_buf: _Buffer | None, r_buf: _Buffer | None, i0: int, mt: int, j: int,
                    step: int, row: int = 0, pieces: int = 1) -> None:
        """The EPILOGUE (if any) and STORE of output tile (i0, j); with ``pieces`` > 1, of its rows ``row ..
        row+mt-1`` only (an int8 EPILOGUE without residual, pooling or pixel-major STOREs), the piece's
        output rows tracked on their own so that the next piece's EPILOGUE waits for no STORE but the
        previous user's of the slot."""
        n0 = j * COLS
        nj = min(COLS, N - n0)
        result = written = c_buf     # written: the rows' tracking buffer
        if epi.needed:
            result = written = c_buf if epi.out_int32 else _slot(out_slots, step)
            if pieces > 1:
                # The piece's rows of the slot, starting with the slot's users (the last tile's STORE).
                written = _Buffer(result.name, result.memory, result.start + row, mt, result.writer,
                                  dict(result.readers))
            fields: dict[str, Any] = dict(src=c_buf.start + row, m=mt, n=nj, dst=result.start + row,
                                          out=Memory.ACC if epi.out_int32 else Memory.SPAD, act=epi.act)
            if epi.bias:
                fields.update(bias=True, bias_addr=p_buf.start)
            if epi.requant:
                fields.update(requant=True, quant_addr=p_buf.start + (1 if epi.bias else 0))
            if epi.residual:
                fields.update(residual=True, res_addr=r_buf.start)
            streams.add(Instruction.make(Opcode.EPILOGUE, **fields),
                        reads=[b for b in (c_buf, p_buf, r_buf) if b is not None],
                        writes=[written])
        rows, first_row = mt, i0 + row
        if pool > 1:
            # The maximum of the pool**2 blocks of the int8 tile, in C's accumulator rows (the EPILOGUE
            # has read them), then back to int8 for the STORE.
            rows, first_row = mt // pool ** 2, i0 // pool ** 2
            streams.add(_vector(VectorOp.MOV, c_buf, c_buf.start, result, result.start, rows),
                        reads=[result], writes=[c_buf])
            for block in range(1, pool ** 2):
                streams.add(_vector(VectorOp.MAX, c_buf, c_buf.start, c_buf, c_buf.start, rows, src2=result,
                                    src2_row=result.start + block * rows),
                            reads=[c_buf, result], writes=[c_buf])
            streams.add(_vector(VectorOp.MOV, result, result.start, c_buf, c_buf.start, rows),
                        reads=[c_buf], writes=[result])
        if pixel_major:
            # Rows (pixel, image) of whole images: one STORE per pixel, its rows an image apart.
            images, first_image = rows // pixel_major, first_row // pixel_major
            for pixel in range(pixel_major):
                streams.add(Instruction.make(
                    Opcode.STORE, mem=result.memory, addr=result.start + pixel * images, rows=images, len=nj,
                    dram=out_op.addr + ((first_image * pixel_major + pixel) * N + n0) * out_bytes,
                    stride=pixel_major * N * out_bytes), reads=[result])
            return
        out_row = first_row * N
        if out_heads > 1:           # row r of slice g: head g % H of [batch/H, M, H, N]
            g, r = divmod(first_row, slice_rows)
            out_row = (g // out_heads * slice_rows * out_heads + g % out_heads + r * out_heads) * N
        streams.add(Instruction.make(Opcode.STORE, mem=result.memory, addr=result.start + row, rows=rows,
                                     len=nj, dram=out_op.addr + (out_row + n0) * out_bytes,
                                     stride=N * out_heads * out_bytes), reads=[written])

    step = 0
    tiles = [(i0, min(m, s0 + slice_rows - i0)) for s0 in range(0, M, slice_rows)
             for i0 in range(s0, min(M, s0 + slice_rows), m)]
    deferred: tuple | None = None
    # Tiling.first_b_split and last_pieces: only where they apply (else the tiling is that without them).
    split_b = tiling.first_b_split and tiling.b_resident and not b_slice and not streamed
    split_last = tiling.last_pieces > 1 and defer_finish and not (zp_a or zp_b) and not pixel_major
    m_tiles = len(tiles)
    for t, (i0, mt) in enumerate(tiles):
        g = i0 // slice_rows
        # Slice g's B: head g % H of [batch/H, K, H, N] with B heads, else the g-th K x N matrix.
        b_base = b_op.addr + (g // b_heads * b_heads * b_slice + g % b_heads * N if b_heads > 1
                              else g * b_slice)
        b_fresh = i0 % slice_rows == 0
        if streamed:
            # Per group of N tiles: each K block of A serves every tile of the group.
            for g0 in range(0, n_tiles, group):
                tiles = range(g0, min(n_tiles, g0 + group))
                c_bufs = {j: _slot(c_slots, c_next + index) for index, j in enumerate(tiles)}
                c_next += len(tiles)
                for c0, c1 in blocks:
                    first_slot, block_slots = load_a(i0, mt, c0, c1)
                    for j in tiles:
                        b_buf = load_b(t, j, c0, c1)
                        nj = min(COLS, N - j * COLS)
                        matmuls(c_bufs[j], b_buf, mt, nj, c0, c1, first_slot, block_slots, 1)
                for j in tiles:
                    finish_tile(c_bufs[j], *load_epilogue_operands(t, i0, mt, j, step), i0, mt, j, step)
                    step += 1
            continue
        first_j = 0
        b_parts = None
        if pair and t == 0:
            # Tiling.first_pair: per K-chunk, the two tiles' B rows and the A chunk, then per chunk a MATMUL
            # for each tile in turn; tile 0's finish beside tile 1's last MATMUL, tile 1's deferred.
            first_slot, tile_slots, parts = a_next % tiling.a_slots, [], ([], [])
            # The first A chunk in two parts when each keeps the array streaming (at least rows + 1 rows).
            start = _slot(a_slots, a_next).start
            first_rows = _pair_first_rows(config, mt, min(R, K))
            a_parts = [_Buffer("A", Memory.SPAD, start, first_rows),
                       _Buffer("A", Memory.SPAD, start + first_rows, mt - first_rows)
                       ] if mt - first_rows > R else []
            for c in range(chunks):
                k0, k1 = c * R, min(K, (c + 1) * R)
                # Tile 0's B rows, the A chunk, tile 1's B rows: in the order the MATMULs need them.
                for j in (0, 1):
                    parts[j].append(_Buffer("B", Memory.SPAD, b_slots[j].start + k0, k1 - k0))
                    streams.add(Instruction.make(Opcode.LOAD, mem=Memory.SPAD, addr=b_slots[j].start + k0,
                                                 rows=k1 - k0, len=min(COLS, N - j * COLS),
                                                 dram=b_base + k0 * b_row + j * COLS, stride=b_row),
                                writes=[parts[j][c]])
                    if j == 0 and c == 0 and a_parts:
                        # The first chunk in two parts of rows: the first MATMUL starts on the first.
                        # The chunk's LOADs divided at the second part's first row -- not the loader asked
                        # for rows i0+row.., which are not the tile's rows row.. in a pixel-major tile.
                        slot = _slot(a_slots, a_next)
                        a_next += 1
                        loads = _split_loads(a_loader(i0, mt, 0, slot.start), a_parts[1].start)
                        for part, part_loads in zip(a_parts, loads, strict=True):
                            streams.add_writes(part_loads, part)
                        tile_slots.append(slot)
                    elif j == 0:
                        tile_slots += load_a(i0, mt, c, c + 1)[1]
            pair_operands = [load_epilogue_operands(t, i0, mt, j, step + j) for j in (0, 1)]
            c_pair = [_slot(c_slots, c_next + j) for j in (0, 1)]
            c_next += 2
            for c in range(chunks):
                k0, k1 = c * R, min(K, (c + 1) * R)
                for j in (0, 1):
                    # Tile 0's first chunk per part (each waits for its own rows; tile 1's for both).
                    pieces = [(part.start - tile_slots[0].start, part.rows, [part]) for part in a_parts] \
                        if c == 0 and j == 0 and a_parts else [(0, mt, a_parts if c == 0 else [])]
                    for row, rows, waits in pieces:
                        streams.add(Instruction.make(Opcode.MATMUL, acc=c_pair[j].start + row,
                                                     a=tile_slots[c].start + row, b=b_slots[j].start + k0,
                                                     a_stride=m, m=rows, n=min(COLS, N - j * COLS), k=k1 - k0,
                                                     accumulate=c > 0),
                                    reads=[tile_slots[c], *waits, parts[j][c]], writes=[c_pair[j]])
            finish_tile(c_pair[0], *pair_operands[0], i0, mt, 0, step)
            deferred = (c_pair[1], *pair_operands[1], i0, mt, 1, step + 1, 0, 1)
            step += 2
            first_j = 2
            first_operands = None
        # The first N tile's operands first: its MATMUL can start on the first chunks of A.
        elif split_b and t == 0:
            # B in the first MATMUL's K-pieces, each before its chunks of A; the parameters after A.
            b_buf = b_slots[0]
            first_slot, tile_slots, b_parts = a_next % tiling.a_slots, [], {}
            for r0, r1 in _chunk_runs(first_slot, chunks, tiling.a_slots, tiling.first_pieces):
                k0, k1 = r0 * R, min(K, r1 * R)
                b_parts[r0] = _Buffer("B", Memory.SPAD, b_buf.start + k0, k1 - k0)
                streams.add(Instruction.make(Opcode.LOAD, mem=Memory.SPAD, addr=b_buf.start + k0,
                                             rows=k1 - k0, len=min(COLS, N), dram=b_base + k0 * b_row,
                                             stride=b_row), writes=[b_parts[r0]])
                tile_slots += load_a(i0, mt, r0, r1)[1]
            first_operands = b_buf, *load_epilogue_operands(t, i0, mt, 0, step)
        else:
            first_operands = load_b(t, 0, 0, chunks), *load_epilogue_operands(t, i0, mt, 0, step)
            first_slot, tile_slots = load_a(i0, mt, 0, chunks)
        for j in range(first_j, n_tiles):
            b_buf, p_buf, r_buf = first_operands if j == 0 else (
                load_b(t, j, 0, chunks), *load_epilogue_operands(t, i0, mt, j, step))
            c_buf = _slot(c_slots, c_next)
            c_next += 1
            nj = min(COLS, N - j * COLS)
            last = t == m_tiles - 1 and j == n_tiles - 1 and (t, j) != (0, 0)
            # The last tile in pieces of rows (Tiling.last_pieces): each piece's MATMULs, then the finish
            # deferred before them (the previous piece's, or the previous tile's).
            size = _cdiv(mt, tiling.last_pieces) if last and split_last else mt
            for row in range(0, mt, size):
                rows = min(size, mt - row)
                matmuls(c_buf, b_buf, rows, nj, 0, chunks, first_slot, tile_slots,
                        tiling.first_pieces if j == 0 else 1, row, b_parts if j == 0 else None)
                if size == mt:
                    zero_point_matmuls(c_buf, b_buf, mt, nj, tile_slots)
                if deferred is not None:
                    finish_tile(*deferred)
                    deferred = None
                if defer_finish:
                    deferred = (c_buf, p_buf, r_buf, i0, rows, j, step, row, _cdiv(mt, size))
                else:
                    finish_tile(c_buf, p_buf, r_buf, i0, mt, j, step)
            step += 1
    if deferred is not None:
        finish_tile(*deferred)
    return streams


def _pair_first_rows(config: Config, mt: int, row_bytes: int) -> int:
    """Rows of the first part of :attr:`Tiling.first_pair`'s first A chunk (A rows of ``row_bytes``).

    Two MATMULs are in flight at most, so tile 1's first MATMUL is taken only once the first part's is
    done (its rows, then the array's drain) and streams ``rows + 1`` cycles later (its B rows);
    the second part's rows arrive after the first's and stream in ``mt - first`` cycles.  The first part
    is the largest that keeps tile 1's MATMUL from waiting past the second part's stream:
    ``first + drain + rows + 1 <= (mt - first) * (1 + beats)``, ``beats`` the bus beats of an A row
    (large 64^3: 26 rows of 64, predicted 11 cycles faster than halves)."""
    R = config.rows
    beats = _cdiv(row_bytes, config.dma_bus_bits // 8)
    drain = R + config.cols + 2
    return max(R + 1, _cdiv(mt * (1 + beats) - drain - R - 1, 2 + beats))


def _first_pair_fits(config: Config, tiling: Tiling, n_tiles: int, p_rows: int) -> bool:
    """Whether the accumulator holds the third C slot of :attr:`Tiling.first_pair` beside the other C slots
    and the parameter tiles (a tiling whose large M tile fills it has no room for one)."""
    c_rows = (tiling.buffers + 1) * tiling.m
    p_count = n_tiles if tiling.params_resident else tiling.buffers
    return c_rows + p_count * p_rows <= config.acc_rows


def _defers_finish(config: Config, epi: _Epilogue, tiling: Tiling, pool: int) -> bool:
    """Whether an output tile's EPILOGUE and STORE may come after the next tile's MATMULs.

    With two MATMULs in flight (Config.matmul_overlap) the next MATMUL then overlaps this one's drain, and
    the EPILOGUE runs beside it (epilogue_overlap; clear of its rows, as C, parameter and output tiles are
    in rings of two or more).  Only for an EPILOGUE that can run beside (int8 out, no residual) and no
    pooling VECTORs after it.  Not always faster under the timing model (the digits CNN's fused conv1 on
    default is priced 25 cycles lower without it), so :func:`_candidate` prices both orders."""
    return bool(config.matmul_overlap and config.epilogue_overlap and epi.needed and not epi.out_int32
                and not epi.residual and pool == 1 and tiling.buffers >= 2)


def _tiling_candidates(config: Config, M: int, K: int, N: int, epi: _Epilogue, align: int = 1,
                       reserved: int = 0, streamed_ok: bool = True) -> list[list[Tiling]]:
    """Tilings that fit, grouped by M tile count; double-buffered groups first, then single-buffered.

    With ``align > 1`` (a divisor of M) every M tile is a multiple of ``align`` rows (whole images of
    a convolution with fused pooling).

    With A resident (K fits the scratchpad): the fewest M tiles that fit, one and two more, and
    twice and four times as many; per count B resident or streamed, the A ring in the rest of
    the scratchpad.  With A streamed in K blocks (tried whenever A does not fit in one tile): one
    to four M tiles, the largest K block that fits.

    ``reserved`` scratchpad rows are kept for other buffers (zero-point constants); with
    ``streamed_ok`` false, no tiling streams A in K blocks.
    """
    R, COLS = config.rows, config.cols
    chunks = _cdiv(K, R)
    n_tiles = _cdiv(N, COLS)
    p_rows = len(epi.param_rows)
    per_m_spad = (2 if epi.residual else 0) + (0 if epi.out_int32 else 2)
    # A table activation keeps the table's rows until its TABLE has read them.
    spad_rows = config.spad_rows - (table_rows(config) if epi.act is Activation.TABLE else 0)

    def params_resident(m: int, ring: int) -> bool | None:
        """Whether every parameter tile fits the accumulator beside the C tiles; None: not even two."""
        if ring * (m + p_rows) > config.acc_rows:
            return None
        return ring * m + n_tiles * p_rows <= config.acc_rows

    def resident(m: int, ring: int) -> list[Tiling]:
        p_resident = params_resident(m, ring)
        if p_resident is None:
            return []
        found = []
        for b_resident in (True, False):
            free = spad_rows - reserved - ring * per_m_spad * m - (n_tiles if b_resident else ring) * K
            slots = free // m
            if slots < chunks:
                continue
            if slots >= 2 * chunks:      # whole tiles: no MATMUL wraps around the ring
                slots -= slots % chunks
            if ring == 1:
                slots = chunks           # and no prefetch of the next A tile either
            pieces = min(8, chunks) if ring > 1 else 1
            found.append(Tiling(m, slots, b_resident, p_resident, pieces, ring))
            if b_resident and slots >= 2 * chunks:
                break                    # streaming B cannot beat resident B with double-buffered A
        return found

    def streamed(m: int, ring: int) -> list[Tiling]:
        # As many N tiles per group as the accumulator holds C tiles (and parameters) for.
        group = 0
        for p_resident in (True, False):
            p_acc = n_tiles * p_rows if p_resident else 0
            group = min(n_tiles, (config.acc_rows - p_acc) // (ring * (m + (0 if p_resident else p_rows))))
            if group >= 1:
                break
        if group < 1:
            return []
        free = spad_rows - reserved - ring * per_m_spad * m
        # A ring of two blocks of chunks (one loading, one computing) and B ring of two blocks of rows.
        block = min(chunks, free // (ring * (m + R)))
        if block < 1:
            return []
        slots = (free - ring * block * R) // m
        slots -= slots % block
        return [Tiling(m, slots, False, p_resident, 1, ring, block * R, group)]

    units = M // align

    def tile_rows(tiles: int) -> int:
        return _cdiv(units, min(tiles, units)) * align

    groups: list[list[Tiling]] = []
    for ring in _buffering_options(config):
        fewest = next((tiles for tiles in range(1, units + 1) if resident(tile_rows(tiles), ring)), None)
        counts = [] if fewest is None else [fewest, fewest + 1, fewest + 2, 2 * fewest, 4 * fewest]
        # In order of promise: A resident in the fewest tiles, A streamed (unless one tile holds all of
        # A), then more and smaller resident tiles.
        options = [(resident, tiles) for tiles in counts[:1]]
        options += [(streamed, tiles) for tiles in range(1, 5) if fewest != 1 and streamed_ok]
        options += [(resident, tiles) for tiles in counts[1:]]
        seen: set[tuple[Callable, int]] = set()
        for make, tiles in options:
            m = tile_rows(tiles)
            if (make, m) not in seen:
                seen.add((make, m))
                if group := make(m, ring):
                    groups.append(group)
    if not groups:
        raise KernelError(f"a {M}x{K}x{N} matmul does not fit config {config.name!r}: not even one row of "
                          f"A, one K chunk and the output rows fit its {config.spad_rows} scratchpad rows")
    return groups


def candidate_tilings(kernel: Kernel) -> list[Tiling]:
    """The tilings the library weighs for a GEMM or convolution like ``kernel``, in order of promise.

    The same candidates :func:`gemm` and :func:`~.conv.conv2d` generate and rank by the timing
    model (double-buffered ones first), so that another cost model can rank them instead: build
    each with ``tiling=``.  Some may not be orderable with the configuration's token queues (their
    build raises :class:`KernelError`).  Empty for kernels that are not tiled matrix multiplies.
    """
    if kernel.name not in ("gemm", "conv2d") or "m" not in kernel.tiling:
        return []
    out = kernel.operands["out"]
    n = out.shape[-1]
    m = 1
    for dim in out.shape[:-1]:
        m *= dim
    k = kernel.tiling["K"] if "K" in kernel.tiling else kernel.operands["A"].shape[1]
    if "align" in kernel.tiling:          # fused pooling: the output has a quarter of the GEMM's rows
        m = kernel.tiling["align"] * out.shape[0]
    return matmul_tilings(kernel.config, m, k, n, bias="bias" in kernel.param_rows,
                          requant="mult" in kernel.param_rows, residual="residual" in kernel.operands,
                          out_int32=out.dtype == np.dtype(np.int32), align=kernel.tiling.get("align", 1))


def matmul_tilings(config: Config, M: int, K: int, N: int, *, bias: bool = False, requant: bool = False,
                   residual: bool = False, out_int32: bool = False, align: int = 1) -> list[Tiling]:
    """:func:`candidate_tilings` of an M x K x N matrix multiply (a convolution's GEMM: M output pixels,
    K = kh*kw*Cp), from its shape and epilogue footprint, without generating a kernel."""
    # Only the epilogue's footprint shapes the tilings: parameter rows, residual and output tiles.
    epi = _Epilogue(bias=bias, requant=requant, residual=residual, act=Activation.NONE, clip_lo=0, clip_hi=0,
                    out_zp=0, out_int32=out_int32)
    return [tiling for group in _tiling_candidates(config, M, K, N, epi, align) for tiling in group]


#: Stop trying more tilings once the candidates generated hold this many instructions (generation time).
_CANDIDATE_BUDGET = 12000
#: A single-buffered tiling replaces a double-buffered one only if predicted this much cheaper (fraction).
_SINGLE_BUFFER_MARGIN = 0.97

#: Candidate kernels generated in this process, by everything they depend on (see :func:`_candidate`):
#: the library's own search, the fusion engine's forced tilings and the tiling pass ask for many of the
#: same ones.  At most _GENERATED_LIMIT instructions in all, the oldest entries dropped first.
_GENERATED: dict[tuple, Kernel | None] = {}
_GENERATED_LIMIT = 200_000


def _candidate(name: str, config: Config, M: int, K: int, N: int, epi: _Epilogue,
               operands: dict[str, Operand], a_loader: ALoader, loader_key: tuple, tiling: Tiling,
               extra_tiling: dict, cutoff: float | None = None) -> Kernel | None:
    """The kernel of one tiling, or None when its streams do not fit the token queues.

    ``loader_key`` says everything ``a_loader`` depends on (kernel generation is a pure function of
    these arguments, so a kernel generated once is reused; callers get their own copy).

    ``cutoff``: the predicted cycles the kernel would have to beat; a tiling not generated yet whose
    lower bound (:meth:`~.common._Streams.merge_bounded`) reaches them raises :class:`CandidatePruned`
    instead (its streams are built and merged, not scheduled or encoded)."""
    key = (name, config, M, K, N, epi, tuple(operands.items()), loader_key, tiling,
           tuple(sorted(extra_tiling.items())))
    if key in _GENERATED:
        kernel = _GENERATED[key]
    else:
        bound = _BOUNDS.get(key)
        if cutoff is not None and bound is not None and bound[0] >= cutoff:
            raise CandidatePruned(*bound)
        pool = extra_tiling.get("pool", 1)
        # The EPILOGUE deferral, where it applies, both ways (deferred first: kept on a tie).
        orders = (True, False) if _defers_finish(config, epi, tiling, pool) else (False,)
        merged = []
        transfer = None        # the streams' transfer bound, with a cutoff (the same for both orders)
        for defer in orders:
            streams = _matmul_pipeline(config, M, K, N, epi, operands, a_loader, tiling, pool,
                                       extra_tiling.get("slice_rows"), extra_tiling.get("b_slice", 0),
                                       extra_tiling.get("zp_a", ()), extra_tiling.get("zp_b", ()),
                                       *extra_tiling.get("heads", (1, 1, 1))[1:],
                                       pixel_major=extra_tiling.get("pixel_major", 0), defer=defer)
            if cutoff is not None and transfer is None and _TRANSFER_BOUND:
                transfer = streams.transfer_bound(operands["counters"].addr)
            if transfer is not None and transfer >= cutoff:
                # Ruled out by the cheaper bound, which holds for both orders (the same instructions):
                # only whether an order can be merged at all is left to know (one that cannot is not
                # a candidate, as below), and that without the merge's own bound.
                try:
                    program, took = streams.merge_timed()
                except _Unorderable:
                    continue
                merged.append((defer, streams, program, took, transfer))
                break
            # Bounded when there is a cutoff, and for the second order (its bound may spare its _finish).
            bounded = cutoff is not None or defer is False and len(orders) > 1
            try:
                program, took, lower = streams.merge_bounded(operands["counters"].addr if bounded else None)
            except _Unorderable:
                continue      # needs deeper token queues
            merged.append((defer, streams, program, took, lower))
        kernel = None
        if merged and cutoff is not None:
            if len(_BOUNDS) >= _BOUNDS_LIMIT:
                _BOUNDS.clear()
            # Both orders hold the same instructions; the candidate cannot beat the cutoff if neither can.
            _BOUNDS[key] = bound = (min(lower for *_, lower in merged), len(merged[0][2]) + 1)
            if bound[0] >= cutoff:
                raise CandidatePruned(*bound)
            merged = [order for order in merged if order[4] < cutoff]
        for defer, streams, program, took, lower in merged:
            if kernel is not None and lower >= kernel.predicted_cycles:
                continue      # the second order cannot beat the first (kept on a tie): not scheduled
            deferral = {"finish_deferred": defer} if len(orders) > 1 else {}
            priced = _finish(name, config, streams, operands, macs=M * N * K, param_rows=epi.param_rows,
                             tiling=dataclasses.asdict(tiling) | extra_tiling | deferral,
                             merged=(program, took))
            if kernel is None or priced.predicted_cycles < kernel.predicted_cycles:
                kernel = priced
        _GENERATED[key] = kernel
        held = sum(len(k.instructions) for k in _GENERATED.values() if k is not None)
        while held > _GENERATED_LIMIT and len(_GENERATED) > 1:
            oldest = _GENERATED.pop(next(iter(_GENERATED)))
            held -= len(oldest.instructions) if oldest is not None else 0
    if kernel is None:
        return None
    return dataclasses.replace(kernel, instructions=list(kernel.instructions), operands=dict(kernel.operands),
                               tiling=dict(kernel.tiling))


#: Rule candidates out by their lower bound (:func:`_candidate`'s ``cutoff``); off: generate every one
#: (tests compare).
_PRUNING = True
#: Try the streams' transfer bound (:meth:`~.common._Streams.transfer_bound`) before the merge's own; off:
#: every bound a pruned candidate reports is the merge's (tests of its tightness).
_TRANSFER_BOUND = True

#: Lower bounds and instruction counts of the candidates pruned (:func:`_candidate`), by the same key as
#: _GENERATED: a tiling ruled out once is ruled out again without building its streams.
_BOUNDS: dict[tuple, tuple[int, int]] = {}
_BOUNDS_LIMIT = 1 << 14


def _matmul_kernel(name: str, config: Config, M: int, K: int, N: int, epi: _Epilogue,
                   operands: dict[str, Operand], a_loader: ALoader, loader_key: tuple, tiling: Tiling | None,
                   extra_tiling: dict) -> Kernel:
    """Generate the candidate tilings (or the given one) and keep the fastest under the timing model."""
    align = extra_tiling.get("align", 1)
    if tiling is not None and tiling.m % align:
        raise KernelError(f"{name} {M}x{K}x{N}: an M tile of {tiling.m} rows is not a multiple of the "
                          f"{align} rows of one image (fused pooling)")
    # A batch is tiled as one of its slices (M tiles never cross a slice).
    tiled_rows = extra_tiling.get("slice_rows", M)
    zp_tiles = len(extra_tiling.get("zp_a", ())) + len(extra_tiling.get("zp_b", ()))
    groups = [[tiling]] if tiling is not None else _tiling_candidates(
        config, tiled_rows, K, N, epi, align, reserved=zp_tiles * max(tiled_rows, config.rows),
        streamed_ok=zp_tiles == 0)
    best: Kernel | None = None
    generated = 0
    forced_cutoff = prune_cutoff() if tiling is not None else None
    for group in groups:
        if best is not None and group[0].buffers < best.tiling["buffers"] and best.tiling["m"] < M:
            # Single-buffered candidates are the fallback -- except for one M tile, where double
            # buffering prefetches nothing and a single-buffered tiling may win (large preset:
            # 1x64x10 predicted 13% faster, measured 436 -> 402 cycles on the RTL); generation time
            # over the calibration shapes stays the same.
            break
        for candidate in group:
            # ... and then by a margin (predicted 1.3% faster, default's 1x64x10 measured 1.5% slower).
            margin = 1.0 if best is None or candidate.buffers >= best.tiling["buffers"] \
                else _SINGLE_BUFFER_MARGIN
            # A candidate that cannot beat the best so far is not generated (its lower bound says so);
            # a forced tiling is pruned at the cycles its caller gives (prune_above).
            cutoff = forced_cutoff if best is None else best.predicted_cycles * margin
            cutoff = cutoff if _PRUNING else None
            try:
                kernel = _candidate(name, config, M, K, N, epi, operands, a_loader, loader_key, candidate,
                                    extra_tiling, cutoff)
            except CandidatePruned as pruned:
                if best is None:
                    raise                 # a forced tiling its caller needs no more
                generated += pruned.instructions     # it builds: the budget counts it as before
                continue
            if kernel is None:
                continue          # needs deeper token queues; single-buffered candidates follow
            generated += len(kernel.instructions)
            if best is None:
                best = kernel
                continue
            if kernel.predicted_cycles < best.predicted_cycles * margin:
                best = kernel
        if best is not None and generated > _CANDIDATE_BUDGET:
            break
    if best is None:
        raise KernelError(f"{name} {M}x{K}x{N}: no tiling fits token_depth={config.token_depth} of config "
                          f"{config.name!r}")
    if tiling is None and config.matmul_overlap and not best.tiling["k_block"]:
        best = _refined(name, config, M, K, N, epi, operands, a_loader, loader_key, best, extra_tiling)
    return best


#: Whether the library tries :attr:`Tiling.first_pair` (off: the other cuts only, to compare).  It was off
#: for a while: the pair's first A chunk, loaded in two parts of rows, asked the A loader for the tile's
#: rows ``i0+row ..``, which a pixel-major convolution tile does not hold in that order (its rows are
#: (pixel, image)), and the quantized resnet18 of tests/sw/test_zoo.py got wrong logits; the parts are now
#: the tile's LOADs divided at the second part's first row (:func:`_split_loads`).
_TRY_FIRST_PAIR = True

#: Pieces of the last output tile (:attr:`Tiling.last_pieces`) tried, in order, while each is faster.
_LAST_PIECES = (2, 4, 8)


def _refined(name: str, config: Config, M: int, K: int, N: int, epi: _Epilogue, operands: dict[str, Operand],
             a_loader: ALoader, loader_key: tuple, best: Kernel, extra_tiling: dict) -> Kernel:
    """``best`` with its lead-in and tail cut where the timing model predicts it faster: the first M tile's
    first two N tiles computed chunk by chunk (:attr:`Tiling.first_pair`), or its B loaded in the K-pieces
    of its first MATMUL (:attr:`Tiling.first_b_split`), then the last output tile in 2, 4, 8 pieces of
    rows (:attr:`Tiling.last_pieces`) for as long as each is faster than the last.
    With ``Config.matmul_overlap`` only: a piece's MATMULs then follow the last piece's without a fill
    and drain, and its EPILOGUE runs beside the next piece's MATMULs (without, each piece would pay
    them)."""
    chosen = Tiling(**{field.name: best.tiling[field.name] for field in dataclasses.fields(Tiling)})
    # Only the cuts that change the program (see _matmul_pipeline's split_b and split_last).
    variants = []
    deferred_finish = _defers_finish(config, epi, chosen, extra_tiling.get("pool", 1))
    if chosen.b_resident and not extra_tiling.get("b_slice", 0):
        # (Not when the pair is the last N tiles: its MATMULs, one per K-chunk, would then be the last readers
        # of the A slots, each owing the next call of a stream a token -- more than the queue holds.)
        no_zero_points = not (extra_tiling.get("zp_a") or extra_tiling.get("zp_b"))
        if (_TRY_FIRST_PAIR and deferred_finish and N > 2 * config.cols and no_zero_points
                and _first_pair_fits(config, chosen, _cdiv(N, config.cols), len(epi.param_rows))):
            variants.append(dataclasses.replace(chosen, first_pair=True))
        variants.append(dataclasses.replace(chosen, first_b_split=True))
    if deferred_finish and not any(extra_tiling.get(key) for key in ("pixel_major", "zp_a", "zp_b")):
        variants += [dataclasses.replace(chosen, last_pieces=pieces) for pieces in _LAST_PIECES]
    for variant in variants:
        if variant.last_pieces > 1:
            variant = dataclasses.replace(variant, first_b_split=chosen.first_b_split,
                                          first_pair=chosen.first_pair)
        try:
            kernel = _candidate(name, config, M, K, N, epi, operands, a_loader, loader_key, variant,
                                extra_tiling, best.predicted_cycles if _PRUNING else None)
        except CandidatePruned:
            kernel = None
        if kernel is None or kernel.predicted_cycles >= best.predicted_cycles:
            if variant.last_pieces > 1:
                break             # more pieces cost more per piece: they will not be faster either
            continue
        best, chosen = kernel, variant
    return best


def gemm(config: Config, M: int, K: int, N: int, *, bias: bool = False, requant: bool = False,
         residual: bool = False, act: Activation | str = "none", clip: tuple[int, int] | None = None,
         out_zp: int = 0, out: str = "int8", addrs: Mapping[str, int] | None = None, base: int = 0,
         tiling: Tiling | None = None, loops: bool = False) -> Kernel:
    """``out = epilogue(A @ B)``: a tiled, double-buffered GEMM with the epilogue fused.

    Parameters
    ----------
    config : Config
    M, K, N : int
        A is M x K, B is K x N, both int8; products accumulate exactly in int32.
    bias : bool
        Add a per-column int32 bias (wrapping, as the accumulator does).
    requant : bool
        Requantize per column: ``round_half_even(x * mult / 2**shift) + out_zp``, saturated to int32.
    residual : bool
        Add an int8 M x N tensor (after requantize), saturating.
    act : "none", "relu" or "clip"
    clip : (lo, hi)
        Bounds of ``act="clip"`` (int32; the int8 output saturates afterwards anyway).
    out_zp : int
        Output zero point, added by the requantize stage (needs ``requant``).
    out : "int8" or "int32"
        Output element type; int8 saturates.
    addrs, base
        Operand placement (see :mod:`.common`).
    tiling
        Force one tiling (tests); by default every fitting tiling is generated
        and the one the timing model predicts fastest is kept.
    loops
        Emit the kept tiling's program with its repeated runs as counted loops
        (:func:`~.loops.loops_if_no_slower`: the units receive the same
        instructions, the program is shorter) when the timing model predicts
        it no slower; the kernel's ``tiling`` then has ``loops=True``.

    Returns
    -------
    Kernel
        Operands: ``A`` (M x K int8, row-major), ``B`` (K x N int8, row-major),
        ``params`` (int32 rows of N: those of :attr:`Kernel.param_rows`, only
        with bias or requant; build it with :func:`pack_params`), ``residual``
        (M x N int8), ``out`` (M x N int8 or int32), ``counters``.

    Notes
    -----
    The exact result is ``braze.isa.arith.epilogue(A.astype(int64) @ B, ...)``
    with the stages selected.  Tiling: N in tiles of ``cols`` columns, K in
    chunks of ``rows``, M in tiles of ``m`` rows, sized to the scratchpad and
    accumulator.  Where it fits, an A tile stays resident while every N tile is
    computed against it (A is read from external memory once); B tiles stay
    resident across M tiles when all fit (B read once), otherwise they are
    streamed through two slots.  Accumulator, output, residual and (when not
    resident) B and parameter tiles are double buffered, and the A tiles
    share a ring of K-chunk slots in the rest of the scratchpad, so the next
    A tile loads while this one computes, as far as it fits.  The loads of the
    next tile thus overlap the MATMUL of this one, and its EPILOGUE and STORE
    overlap the next MATMUL; the first MATMUL of an A tile is split into
    K-pieces so that it starts on the first chunks to arrive.  Where even a
    small A tile does not fit beside two B tiles of K rows (or only a small
    one), A and B are instead streamed in K blocks, accumulating, for groups
    of N tiles whose C tiles share the accumulator (:class:`Tiling`
    ``k_block``, ``n_group``).  Among the tilings that fit, the one the timing
    model predicts fastest is kept.

    The EPILOGUE runs on the compute unit between MATMULs, costing about
    ``M*N/cols`` cycles in all: ``rows/K`` of the ideal MATMUL time.
    """
    config = _check_config(config)
    M, K, N = (_positive(name, value) for name, value in (("M", M), ("K", K), ("N", N)))
    epi = _epilogue_options(bias, requant, residual, act, clip, out_zp, out)
    specs = [_OperandSpec("A", (M, K), "i1", "row-major M x K", "input"),
             _OperandSpec("B", (K, N), "i1", "row-major K x N", "param"),
             *_epilogue_specs(epi, M, N, "row-major M x N"), _counters_spec()]
    operands = _place(config, specs, addrs, base)
    a_op = operands["A"]
    R = config.rows

    def load_a(i0: int, mt: int, c: int, dst: int) -> list[Instruction]:
        return [Instruction.make(Opcode.LOAD, mem=Memory.SPAD, addr=dst, rows=mt, len=min(R, K - c * R),
                                 dram=a_op.addr + i0 * K + c * R, stride=K)]

    kernel = _matmul_kernel("gemm", config, M, K, N, epi, operands, load_a, ("gemm", a_op.addr), tiling, {})
    return loops_if_no_slower(kernel) if loops else kernel


def _int8_parts(value: int) -> tuple[int, ...]:
    """``value`` (in -127..128) as at most two int8 values that add up to it; none for 0."""
    if value == 0:
        return ()
    if -128 <= value <= 127:
        return (value,)
    half = value // 2
    return (half, value - half)


def zero_point_rows(kernel: Kernel) -> np.ndarray:
    """The ``zp`` operand of a :func:`batched_gemm` with zero points: one row per constant tile, every
    byte the tile's value (``-a_zero_point`` parts, then ``-b_zero_point`` parts)."""
    values = (*kernel.tiling["zp_a"], *kernel.tiling["zp_b"])
    rows, width = kernel.operands["zp"].shape
    return np.repeat(np.asarray(values, np.int8)[:, None], width, axis=1).reshape(rows, width)


def batched_gemm(config: Config, batch: int, M: int, K: int, N: int, *, b_batched: bool = True,
                 zero_points: tuple[int, int] = (0, 0), heads: tuple[int, int, int] = (1, 1, 1),
                 bias: bool = False, requant: bool = False,
                 residual: bool = False,
                 act: Activation | str = "none", clip: tuple[int, int] | None = None, out_zp: int = 0,
                 out: str = "int8", addrs: Mapping[str, int] | None = None, base: int = 0,
                 tiling: Tiling | None = None) -> Kernel:
    """``out[g] = epilogue(A[g] @ B[g])`` for ``g < batch``: one program, pipelined across the batch.

    The batched MatMul of attention (``Q @ K^T`` and ``P @ V`` per head): the :func:`gemm` pipeline
    over the ``batch * M`` rows of A, its M tiles never crossing a slice, each slice's B loaded
    when its first M tile is (``b_batched=False``: one B for every slice).  Unlike ``batch`` separate
    kernels, the next slice's loads overlap this slice's MATMULs, and there is one COUNTERS barrier
    instead of ``batch``.

    Parameters
    ----------
    config : Config
    batch, M, K, N : int
        ``batch`` products of M x K by K x N int8 matrices.
    b_batched : bool
        B holds ``batch`` matrices (else one, shared).
    zero_points : (int, int)
        ``(za, zb)``, int8: compute ``(A - za) @ (B - zb)``, the product of two activations with
        zero points.  ``-za * colsum(B)`` and ``-zb * rowsum(A)`` are accumulated on the array by
        MATMULs with constant tiles (``-za``, ``-zb`` as one or two int8 parts: 128 = 64 + 64), at
        ``M*N*K`` extra MACs per part; ``K * za * zb`` is the caller's to add to the bias (the
        EPILOGUE's, ``bias=True``).  Needs A resident (no K blocks).
    heads : (int, int, int)
        For A, B and the output: ``H > 1`` when the operand is stored heads-interleaved, as a
        ``[batch/H, rows, H, cols]`` tensor whose slice ``g`` is head ``g % H`` (what the head split
        ``Reshape`` of a projection gives, before its ``Transpose``), so the split and the merge of
        attention heads need no transpose.
    bias, requant, residual, act, clip, out_zp, out, addrs, base, tiling
        As for :func:`gemm`; the parameter rows are shared by every slice.

    Returns
    -------
    Kernel
        Operands: ``A`` (``batch*M`` x K int8, row-major: the slices one after the other), ``B``
        (``batch*K`` x N, or K x N), ``params``, ``residual`` and ``out`` (``batch*M`` x N), ``zp``
        (with zero points: :func:`zero_point_rows`), ``counters``.
    """
    config = _check_config(config)
    batch, M, K, N = (_positive(name, value) for name, value in
                      (("batch", batch), ("M", M), ("K", K), ("N", N)))
    epi = _epilogue_options(bias, requant, residual, act, clip, out_zp, out)
    b_rows = batch * K if b_batched else K
    za, zb = (int(z) for z in zero_points)
    if not (-128 <= za <= 127 and -128 <= zb <= 127):
        raise KernelError(f"zero points {zero_points} must be int8")
    zp_a, zp_b = _int8_parts(-za), _int8_parts(-zb)
    specs = [_OperandSpec("A", (batch * M, K), "i1", "row-major (batch*M) x K", "input"),
             _OperandSpec("B", (b_rows, N), "i1",
                          "row-major (batch*K) x N" if b_batched else "row-major K x N", "input"),
             *_epilogue_specs(epi, batch * M, N, "row-major (batch*M) x N"), _counters_spec()]
    if zp_a or zp_b:
        specs.append(_OperandSpec("zp", (len(zp_a) + len(zp_b), max(config.rows, config.cols)), "i1",
                                  "one row per constant tile: -za parts, then -zb parts", "param"))
    operands = _place(config, specs, addrs, base)
    a_op = operands["A"]
    R = config.rows

    a_heads = heads[0]
    if any(h < 1 or batch % h for h in heads) or (heads[1] > 1 and not b_batched):
        raise KernelError(f"heads {heads} must divide the batch of {batch} (and B be batched for B heads)")

    def load_a(i0: int, mt: int, c: int, dst: int) -> list[Instruction]:
        row = i0 * K
        if a_heads > 1:             # row r of slice g: head g % H of [batch/H, M, H, K]
            g, r = divmod(i0, M)
            row = (g // a_heads * M * a_heads + g % a_heads + r * a_heads) * K
        return [Instruction.make(Opcode.LOAD, mem=Memory.SPAD, addr=dst, rows=mt, len=min(R, K - c * R),
                                 dram=a_op.addr + row + c * R, stride=K * a_heads)]

    extra = {"batch": batch, "slice_rows": M, "b_slice": K * N if b_batched else 0}
    if tuple(heads) != (1, 1, 1):
        extra["heads"] = tuple(int(h) for h in heads)
    if zp_a or zp_b:
        extra.update(zp_a=zp_a, zp_b=zp_b)
    return _matmul_kernel("batched_gemm", config, batch * M, K, N, epi, operands, load_a,
                          ("batched_gemm", a_op.addr), tiling, extra)
