"""A GEMM kernel written as loops (issue 13): a short program whose address fields follow scalar registers.

``C = A @ B`` (A is M x K int8, B is K x N int8, both row-major; C is M x N int32, row-major) in
three nested loops -- M tiles of ``m`` rows; within one, K blocks of ``rows``; within one, N tiles
of ``cols`` columns -- with one copy of each loop body, whatever the shape.  The accumulator rows
of every N tile of an M tile stay resident, so each A block is loaded (and tested) once.  Registers:

* r1: byte offset of the current A block (``mt*m*K + kb*rows``), added to the A LOAD's ``dram``;
* r2: byte offset of the current B block (``kb*rows*N + nt*cols``), added to the B LOAD's ``dram``;
* r3: byte offset of the current C tile, added to the STORE's ``dram``;
* r4: ``(kc - k_chunks)*m`` for the first K-chunk kc of the current block, the K loop's counter and
  the offset of its scratchpad rows (every K-chunk of an M tile has its own m rows);
* r5: ``(nt - n_tiles)*m``, the N loop's counter and the offset of N tile nt's accumulator rows
  and of its B block's scratchpad rows;
* r6: the PREDICATE's result;
* r7: the **runtime parameter** ``m_tiles*m*K``, the A offset at which the M loop ends, written by
  the host before the run (:meth:`LoopedGemm.registers`): one program serves every M up to the
  largest it was built for, e.g. every batch size.

With ``skip_zero_blocks`` each A block but an M tile's first is tested on chip once it is loaded
(PREDICATE any) and, when it is all zero, the whole N loop of that block -- its B LOADs and
MATMULs -- is branched over: after a ReLU many activation blocks are zero, and their products add
nothing.  A block is ``chunks`` K-chunks of ``rows`` (one MATMUL of ``k=chunks*rows`` per N tile, one
PREDICATE of ``chunks*m`` rows): a MATMUL pays ``rows + cols + 3`` cycles of drain whatever its k,
so coarser blocks cost less dense, but are all zero less often (:func:`best_skipping_chunks` weighs
the two at a profiled fraction).  The first block is computed whatever it holds: its MATMULs
overwrite the accumulator tiles (no zeroing LOAD holding the load unit before the first B LOAD),
and its B LOADs are not held behind a test.  The loop is software-pipelined (A blocks loaded
two ahead, tested one ahead, beside the previous block's
MATMULs), so that a dense block costs about what it costs without skipping; see ``_program``.

Ordering: the B block of N tile nt is overwritten (in the next K block) only after the MATMUL that
read it: each B LOAD pops a credit token that a MATMUL pushes (two are primed before the loops, so
a B LOAD overlaps the previous MATMUL); a skipped block neither pops nor pushes.  The B LOAD's
token orders its MATMUL after it and after the A LOAD before it; with skipping, a one-row zeroing
LOAD's token orders each PREDICATE after the A LOAD it tests.  Each M tile starts with a FENCE (the
previous tile's stores are done) and, without skipping, one zeroing LOAD of its accumulator rows;
its STOREs pop tokens of no-op CONFIGs after the K loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from braze.isa import Activation, Config, Instruction
from braze.isa.encoding import INSN_BYTES

from .common import (
    KernelError,
    _check_config,
    _counters_spec,
    _Epilogue,
    _epilogue_options,
    _epilogue_specs,
    _OperandSpec,
    _place,
    _positive,
)
from .loops import LoopedKernel, looped_cycles, spread_predicate

__all__ = ["LoopedGemm", "looped_gemm", "SkippingKernel", "skipping_gemm", "skipping_tile_rows",
           "SKIPPING_CHUNKS", "best_skipping_chunks"]

#: The K-chunks of ``rows`` a tested block of :func:`skipping_gemm` may span (its candidates).
SKIPPING_CHUNKS = (1, 2, 4, 8)

_I = Instruction.make
# Register roles (see the module's documentation).
A_OFFSET, B_OFFSET, C_OFFSET, K_COUNT, N_COUNT, FLAG, M_END = range(1, 8)


@dataclasses.dataclass(frozen=True)
class LoopedGemm:
    """A looped GEMM program and where its operands live.

    ``a``, ``b``, ``c`` are the external byte addresses of A (``max_m`` padded to whole M tiles
    of ``m`` rows, K columns), B and C (as many rows as A).  Run it with the registers of
    :meth:`registers` for the M of the run.
    """

    config: Config
    max_m: int
    K: int
    N: int
    m: int
    a: int
    b: int
    c: int
    end: int
    skip_zero_blocks: bool
    program: tuple[Instruction, ...]

    @property
    def padded_m(self) -> int:
        return -(-self.max_m // self.m) * self.m

    def registers(self, M: int | None = None) -> dict[int, int]:
        """The scalar registers the host writes before running ``M`` rows (default: ``max_m``)."""
        M = self.max_m if M is None else M
        if not isinstance(M, int) or not 1 <= M <= self.max_m:
            raise KernelError(f"looped gemm: M={M!r} is outside 1..{self.max_m}, the rows it was built for")
        return {M_END: -(-M // self.m) * self.m * self.K}


def _nop(out_zp: int = 0, **deps: bool) -> Instruction:
    """A compute-unit instruction that only relays tokens: it writes OUT_ZP with the value the
    kernel's EPILOGUEs read (0 when no EPILOGUE requantizes)."""
    return _I("config", reg="out_zp", value=out_zp, **deps)


def looped_gemm(config: Config, max_m: int, K: int, N: int, *, m: int | None = None,
                skip_zero_blocks: bool = False, chunks: int = 1, base: int = 0) -> LoopedGemm:
    """The looped GEMM for up to ``max_m`` rows; K must be a multiple of ``chunks*rows``, N of ``cols``.

    ``m`` (the M tile, at least ``chunks*rows``) is by default the largest that fits.  A K block
    (one MATMUL, and with ``skip_zero_blocks`` one test) is ``chunks`` K-chunks of ``rows``.  The
    program is at external address ``base``; A, B and C follow it.
    """
    rows, cols = config.rows, config.cols
    for name, value in (("max_m", max_m), ("K", K), ("N", N), ("chunks", chunks)):
        if not isinstance(value, int) or value < 1:
            raise KernelError(f"looped gemm: {name}={value!r} must be a positive integer")
    depth = rows * chunks
    if K % depth or N % cols:
        per_block = f"rows={rows}" + (f" x chunks={chunks}" if chunks > 1 else "")
        raise KernelError(f"looped gemm: K={K} must be a multiple of {per_block} and N={N} of cols={cols} "
                          f"on config {config.name!r}")
    k_blocks, n_tiles = K // rows, N // cols
    # Scratchpad: m rows per A block and per B block (B blocks are spaced like the accumulator tiles),
    # and with skipping two more A blocks (loaded ahead past the last) and one row after the B blocks
    # (zeroed to relay tokens); accumulator: m rows per N tile.  An M tile is at least `rows` rows, so
    # that B blocks fit their rows.
    a_blocks = k_blocks + 2 * chunks * skip_zero_blocks
    largest = min(config.acc_rows // n_tiles, (config.spad_rows - skip_zero_blocks) // (a_blocks + n_tiles),
                  1 << 12)
    m = m or max(depth, min(-(-max_m // rows) * rows, largest))
    if not depth <= m <= largest:
        raise KernelError(f"looped gemm: an M tile of {m} rows does not fit config {config.name!r} "
                          f"(from {depth} to {largest} rows for K={K}, N={N}, {chunks} chunk(s) a block)")
    # The program's length does not depend on the operands' addresses, which follow it.
    length = len(_program(config, K, N, m, skip_zero_blocks, 0, 0, 0, chunks=chunks))
    padded = -(-max_m // m) * m
    a = _align(base + INSN_BYTES * length)
    b = _align(a + padded * K)
    c = _align(b + K * N)
    end = c + 4 * padded * N
    if end > config.dram_bytes:
        raise KernelError(f"looped gemm: operands end at {end:#x}, beyond the {config.dram_bytes}-byte "
                          f"external memory of config {config.name!r}")
    program = _program(config, K, N, m, skip_zero_blocks, a, b, c, chunks=chunks)
    return LoopedGemm(config, max_m, K, N, m, a, b, c, end, skip_zero_blocks, tuple(program))


@dataclasses.dataclass(frozen=True)
class _Outputs:
    """The fused epilogue of :func:`skipping_gemm`: its options, where its parameter rows are in
    external memory and in the accumulator, and where the int8 output tiles go in the scratchpad."""

    epi: _Epilogue
    params: int
    acc_params: int
    spad_out: int


def _program(config: Config, K: int, N: int, m: int, skip_zero_blocks: bool, a: int, b: int,
             c: int, outputs: _Outputs | None = None, chunks: int = 1) -> list[Instruction]:
    rows, cols = config.rows, config.cols
    # A K block is `chunks` K-chunks of `rows` (depth columns of A): one MATMUL, one test.  Its A
    # chunks are m scratchpad rows each, one after the other (the MATMUL's a_stride is m).
    depth = rows * chunks
    k_chunks, n_tiles = K // rows, N // cols
    # Field values: the registers count up to 0.  With skipping, two more A blocks (loaded ahead).
    ahead = 2 * chunks * skip_zero_blocks
    spad_a, spad_b = k_chunks * m, (k_chunks + ahead + n_tiles) * m
    acc_c = n_tiles * m
    credits = min(2, config.token_depth, n_tiles)

    n_loop = [
        _I("load", mem="spad", addr=spad_b, addr_reg=N_COUNT, rows=depth, len=cols, dram=b, dram_reg=B_OFFSET,
           stride=N, pop_next=True, push_next=True),
        _I("matmul", acc=acc_c, acc_reg=N_COUNT, a=spad_a, a_reg=K_COUNT, b=spad_b, b_reg=N_COUNT, a_stride=m,
           m=m, n=cols, k=depth, accumulate=True, pop_prev=True, push_prev=True),
        _I("scalar", dst=B_OFFSET, src1=B_OFFSET, imm=cols),
        _I("scalar", dst=N_COUNT, src1=N_COUNT, imm=m),
    ]
    n_loop.append(_I("branch", cond="ne", a=N_COUNT, offset=-len(n_loop)))
    block = [
        _I("scalar", dst=N_COUNT, imm=-n_tiles * m),
        *n_loop,
        _I("scalar", dst=B_OFFSET, src1=B_OFFSET, imm=-n_tiles * cols),
    ]
    # With skipping, block 0 of an M tile is peeled: its MATMULs overwrite the accumulator tiles (no
    # zeroing LOAD, which would hold the load unit for n_tiles*m cycles before the first A and B
    # blocks).  Without, the accumulator is zeroed by one LOAD: the program stays 10 instructions
    # shorter (GEMM 256^3 on default: 30 instead of 40; predicted 2% slower for 64x256x64).
    n_loop_first = [n_loop[0], n_loop[1].replace(accumulate=False), *n_loop[2:]]
    def load(block: int) -> list[Instruction]:
        """The A LOADs of the block ``block`` blocks after the current one (one per K-chunk)."""
        return [_I("load", mem="spad", addr=spad_a + chunk * m, addr_reg=K_COUNT, rows=m, len=rows,
                   dram=a + chunk * rows, dram_reg=A_OFFSET, stride=K)
                for chunk in range(block * chunks, (block + 1) * chunks)]

    next_block = [
        _I("scalar", dst=B_OFFSET, src1=B_OFFSET, imm=depth * N),
        _I("scalar", dst=A_OFFSET, src1=A_OFFSET, imm=depth),
        _I("scalar", dst=K_COUNT, src1=K_COUNT, imm=chunks * m),
    ]
    if skip_zero_blocks:
        # Software-pipelined: in iteration kb, block kb+1 is tested (into FLAG) before block kb's N
        # loop is dispatched, and block kb+2 loaded after it, so the test runs beside block kb's
        # first MATMUL (a PREDICATE of scratchpad rows that pushes no token does, docs/isa.md) and
        # its rows are there when it runs (also along a run of zero blocks); the BRANCH on block
        # kb's FLAG finds it done.  The dispatcher waits only for a PREDICATE whose register an
        # instruction names, here that BRANCH.  The A LOADs push no token: the test of block kb+1
        # pops the token of a one-row zeroing LOAD issued after block kb+1's LOAD and before block
        # kb+2's (LOADs complete in order), so it waits for its block only.
        relay = _I("load", mem="spad", zero=True, addr=(k_chunks + ahead + n_tiles) * m, rows=1, len=cols,
                   push_next=True)
        test = _I("predicate", op="any", dst=FLAG, mem="spad", addr=spad_a + chunks * m, addr_reg=K_COUNT,
                  rows=chunks * m, pop_prev=True)
        # A zero block falls through to a copy of the loop's tail, so that it costs one taken BRANCH
        # (a fetch redirect), and a run of zero blocks goes as fast as their LOADs and tests; a dense
        # block branches to the N loop, where a redirect is hidden behind the MATMULs queued.
        # Block kb+2 is loaded after block kb's B LOADs, so that they do not wait for it.
        tail = [*load(2), *next_block]
        zero_path = [relay, None, test, *tail]
        zero_path.append(_I("branch", cond="ne", a=K_COUNT, offset=-len(zero_path)))
        dense_path = [test, *block, *tail]
        dense_path.append(_I("branch", cond="ne", a=K_COUNT, offset=-(len(zero_path) + 1 + len(dense_path))))
        zero_path[1] = _I("branch", cond="ne", a=FLAG, offset=len(zero_path))   # block kb is not all zero
        zero_path.append(_I("branch", offset=len(dense_path) + 1))               # the K loop's end
        k_loop = [*zero_path, *dense_path]
        # Block 0 is not tested: it is computed whatever it holds (its MATMULs zero the accumulator
        # tiles, and its B LOADs start at once instead of after a test).  Block 1 is loaded after
        # block 0's first B LOAD and tested beside its second MATMUL; the K loop is entered at its
        # top, block 1's FLAG known and block 2 loaded.
        first_block = [*load(0), block[0], *n_loop_first[:-1], *load(1), relay, test,
                       _I("branch", cond="eq", a=N_COUNT, offset=len(n_loop) + 1),    # one N tile only
                       *n_loop_first, block[-1], *tail]
        # One K block only: the K loop is not entered.
        first_block.append(_I("branch", cond="eq", a=K_COUNT, offset=len(k_loop) + 1))
        zero_accumulator = []
    else:
        k_loop = [*load(0), *block, *next_block]
        k_loop.append(_I("branch", cond="ne", a=K_COUNT, offset=-len(k_loop)))
        first_block = []
        zero_accumulator = [_I("load", mem="acc", zero=True, addr=0, rows=n_tiles * m, len=cols)]
    store_loop = [
        _nop(push_next=True),
        _I("store", mem="acc", addr=acc_c, addr_reg=N_COUNT, rows=m, len=cols, dram=c, dram_reg=C_OFFSET,
           stride=4 * N, pop_prev=True),
        _I("scalar", dst=C_OFFSET, src1=C_OFFSET, imm=4 * cols),
        _I("scalar", dst=N_COUNT, src1=N_COUNT, imm=m),
    ]
    store_loop.append(_I("branch", cond="ne", a=N_COUNT, offset=-len(store_loop)))
    out_bytes, prologue = 4, []
    if outputs is not None:
        # An EPILOGUE names no register, so the output tiles are written one by one (per M tile);
        # the STOREs' external addresses follow C_OFFSET as before.
        store_loop, prologue, out_bytes = _epilogue_tiles(config, N, m, c, outputs)
    m_loop = [
        _I("fence"),
        *zero_accumulator,
        _I("scalar", dst=B_OFFSET, imm=0),
        _I("scalar", dst=K_COUNT, imm=-k_chunks * m),
        *first_block,
        *k_loop,
        _I("scalar", dst=N_COUNT, imm=-n_tiles * m),
        *store_loop,
        _I("scalar", dst=A_OFFSET, src1=A_OFFSET, imm=m * K - K),
        _I("scalar", dst=C_OFFSET, src1=C_OFFSET,
           imm=out_bytes * (m * N - N) if outputs is None else out_bytes * m * N),
    ]
    m_loop.append(_I("branch", cond="lt", a=A_OFFSET, b=M_END, offset=-len(m_loop)))
    out_zp = outputs.epi.out_zp if outputs is not None and outputs.epi.requant else 0
    return [
        _I("scalar", dst=A_OFFSET, imm=0),
        _I("scalar", dst=C_OFFSET, imm=0),
        *prologue,
        *[_nop(out_zp, push_prev=True)] * credits,                 # the first B LOADs' credits
        *m_loop,
        _I("halt"),
    ]


def _epilogue_tiles(config: Config, N: int, m: int, c: int, outputs: _Outputs
                    ) -> tuple[list[Instruction], list[Instruction], int]:
    """The output phase of an M tile with the fused epilogue (an EPILOGUE and a STORE per N tile),
    the prologue (configuration registers; the parameter rows, loaded once into the accumulator)
    and the output's element bytes."""
    cols, n_tiles, epi = config.cols, N // config.cols, outputs.epi
    p_rows = len(epi.param_rows)
    out_bytes = 4 if epi.out_int32 else 1
    prologue = []
    if epi.act is Activation.CLIP:
        prologue += [_I("config", reg="clip_lo", value=epi.clip_lo),
                     _I("config", reg="clip_hi", value=epi.clip_hi)]
    for j in range(n_tiles if p_rows else 0):
        prologue.append(_I("load", mem="acc", addr=outputs.acc_params + j * p_rows, rows=p_rows, len=cols,
                           dram=outputs.params + 4 * j * cols, stride=4 * N))
    tiles = []
    for j in range(n_tiles):
        dst, memory = (j * m, "acc") if epi.out_int32 else (outputs.spad_out + j * m, "spad")
        fields = dict(src=j * m, m=m, n=cols, dst=dst, out=memory, act=epi.act)
        if epi.bias:
            fields.update(bias=True, bias_addr=outputs.acc_params + j * p_rows)
        if epi.requant:
            fields.update(requant=True, quant_addr=outputs.acc_params + j * p_rows + (1 if epi.bias else 0))
        tiles += [_I("epilogue", **fields, push_next=True),
                  _I("store", mem=memory, addr=dst, rows=m, len=cols, dram=c + out_bytes * j * cols,
                     dram_reg=C_OFFSET, stride=out_bytes * N, pop_prev=True)]
    return tiles, prologue, out_bytes


@dataclasses.dataclass
class SkippingKernel(LoopedKernel):
    """A :class:`~.common.Kernel` of :func:`skipping_gemm`: its cycles depend on how many K-blocks of A
    are all zero (:meth:`cycles_at`); :attr:`~.common.Kernel.events` are those of a dense A."""

    def cycles_at(self, zero_fraction: float) -> int:
        """Predicted cycles (timing model) when ``zero_fraction`` of the tested K-blocks are all zero,
        spread evenly over the run (see :func:`~.loops.spread_predicate`)."""
        return looped_cycles(self.instructions, self.config, predicate=spread_predicate(zero_fraction))


def skipping_tile_rows(config: Config, M: int, K: int, N: int, *, param_rows: int = 0,
                       out_int32: bool = False, skip_zero_blocks: bool = True, chunks: int = 1) -> int:
    """The M tile (rows) of :func:`skipping_gemm`: the largest divisor of M from ``chunks*rows`` up
    that fits the scratchpad and accumulator (so a zero block is ``m`` rows of A by ``chunks*rows``
    columns); 0 when none does."""
    rows, cols = config.rows, config.cols
    k_chunks, n_tiles, skip = K // rows, -(-N // cols), int(skip_zero_blocks)
    out_tiles = 0 if out_int32 else n_tiles
    largest = min((config.acc_rows - n_tiles * param_rows) // n_tiles,
                  (config.spad_rows - skip) // (k_chunks + 2 * chunks * skip + n_tiles + out_tiles), 1 << 12)
    # M tiles of m rows with m dividing M: the STOREs write no row beyond the output.  A B block
    # (chunks*rows rows) fits the m rows of its N tile.
    least = rows * chunks
    return max((M // tiles for tiles in range(1, M + 1) if M % tiles == 0 and least <= M // tiles <= largest),
               default=0)


def skipping_gemm(config: Config, M: int, K: int, N: int, *, bias: bool = False, requant: bool = False,
                  act: Activation | str = "none", clip: tuple[int, int] | None = None, out_zp: int = 0,
                  out: str = "int8", addrs: Mapping[str, int] | None = None, base: int = 0,
                  skip_zero_blocks: bool = True, expected_zero_fraction: float = 0.0,
                  chunks: int = 1) -> SkippingKernel:
    """:func:`~.matmul.gemm` (no residual) as the looped kernel that skips all-zero K-blocks of A.

    The program of :func:`looped_gemm` -- M tiles of ``m`` rows (the largest divisor of M that fits),
    K blocks of ``rows`` each tested on chip (but an M tile's first) and, when all zero, their
    B LOADs and MATMULs branched over -- with the epilogue fused: the parameter rows loaded into the
    accumulator once, and after the K loop of an M tile an EPILOGUE and a STORE per N tile.  Its
    cycles depend on the data (:meth:`SkippingKernel.cycles_at`), its outputs do not: they are
    ``gemm``'s exactly.  Operands as :func:`~.matmul.gemm`'s; K must be a multiple of ``rows`` and
    N of ``cols``.  ``skip_zero_blocks=False``: the same loops without the tests (for comparison).
    ``predicted_cycles`` are those at ``expected_zero_fraction`` of the tested blocks all zero (a
    profile's, :meth:`~braze.sw.compiler.profile.TensorProfile.zero_block_fraction`), ``events``
    those of a dense A.  A tested block is ``chunks`` K-chunks of ``rows`` (one MATMUL each N tile):
    coarser blocks pay the MATMUL's fixed cycles and the test less often (see
    :func:`best_skipping_chunks`); K must be a multiple of ``chunks*rows``.
    """
    config = _check_config(config)
    if not isinstance(chunks, int) or chunks < 1:
        raise KernelError(f"skipping gemm: chunks={chunks!r} must be a positive integer")
    M, K, N = (_positive(name, value) for name, value in (("M", M), ("K", K), ("N", N)))
    epi = _epilogue_options(bias, requant, False, act, clip, out_zp, out)
    rows, cols = config.rows, config.cols
    what = f"skipping gemm {M}x{K}x{N}"
    if epi.act is Activation.TABLE:
        raise KernelError(f"{what}: a table activation is not supported")
    if K % (rows * chunks) or N % cols:
        per_block = f"rows={rows}" + (f" x chunks={chunks}" if chunks > 1 else "")
        raise KernelError(f"{what}: K must be a multiple of {per_block} and N of cols={cols} "
                          f"on config {config.name!r}")
    k_chunks, n_tiles, p_rows = K // rows, N // cols, len(epi.param_rows)
    skip = int(skip_zero_blocks)
    m = skipping_tile_rows(config, M, K, N, param_rows=p_rows, out_int32=epi.out_int32,
                           skip_zero_blocks=skip_zero_blocks, chunks=chunks)
    if not m:
        raise KernelError(f"{what}: no M tile of at least {rows * chunks} rows divides M and fits config "
                          f"{config.name!r}")
    specs = [_OperandSpec("A", (M, K), "i1", "row-major M x K", "input"),
             _OperandSpec("B", (K, N), "i1", "row-major K x N", "param"),
             *_epilogue_specs(epi, M, N, "row-major M x N"), _counters_spec()]
    operands = _place(config, specs, addrs, base)
    outputs = _Outputs(epi, operands["params"].addr if p_rows else 0, n_tiles * m,
                       (k_chunks + 2 * chunks * skip + n_tiles) * m + skip)
    program = _program(config, K, N, m, skip_zero_blocks, operands["A"].addr, operands["B"].addr,
                       operands["out"].addr, outputs, chunks=chunks)
    instructions = [_I("scalar", dst=M_END, imm=M * K), *program[:-1],
                    _I("counters", dram=operands["counters"].addr, reset=True)]
    cycles = looped_cycles(instructions, config, predicate=spread_predicate(expected_zero_fraction))
    return SkippingKernel("skipping_gemm", config, instructions, operands, M * N * K, cycles, epi.param_rows,
                          {"m": m, "chunks": chunks, "skip_zero_blocks": skip_zero_blocks, "loops": True,
                           "expected_zero_fraction": expected_zero_fraction})


def best_skipping_chunks(config: Config, M: int, K: int, N: int,
                         zero_fraction_at: Callable[[int], float | None], **options) -> tuple[int, float]:
    """The block size of :func:`skipping_gemm` (in K-chunks of ``rows``) with the fewest predicted cycles,
    and the zero-block fraction at it.

    A coarser block pays the MATMUL's fixed cycles (``rows + cols + 3``) and a test once for
    ``chunks`` K-chunks, but is all zero less often: ``zero_fraction_at(chunks)`` says how often (a
    profile's :meth:`~braze.sw.compiler.profile.TensorProfile.zero_block_fraction` at the kernel's M
    tile by ``chunks*rows``; None: not known, that size is not a candidate).  ``options`` are
    :func:`skipping_gemm`'s.  Raises :class:`KernelError` when no candidate builds or is known.
    """
    best: tuple[int, int, float] | None = None
    for chunks in SKIPPING_CHUNKS:
        if K % (config.rows * chunks):
            continue
        fraction = zero_fraction_at(chunks)
        if fraction is None:
            continue
        try:
            kernel = skipping_gemm(config, M, K, N, chunks=chunks, expected_zero_fraction=fraction, **options)
        except KernelError:
            continue
        if best is None or kernel.predicted_cycles < best[0]:
            best = (kernel.predicted_cycles, chunks, fraction)
    if best is None:
        raise KernelError(f"skipping gemm {M}x{K}x{N}: no block size of {SKIPPING_CHUNKS} K-chunks builds "
                          f"on config {config.name!r} with a known zero-block fraction")
    return best[1], best[2]


def _align(address: int) -> int:
    return -(-address // 64) * 64
