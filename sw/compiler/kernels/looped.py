"""A GEMM kernel written as loops (issue 13): a short program whose address fields follow scalar registers.

``C = A @ B`` (A is M x K int8, B is K x N int8, both row-major; C is M x N int32, row-major) in
three nested loops -- M tiles of ``m`` rows, N tiles of ``cols`` columns, K blocks of ``rows`` --
with one copy of the loop body, whatever the shape.  The registers:

* r1: byte offset of the current A block (``mt*m*K + kb*rows``), added to the A LOAD's ``dram``;
* r2: byte offset of the current B block (``kb*rows*N + nt*cols``), added to the B LOAD's ``dram``;
* r3: byte offset of the current C tile, added to the STORE's ``dram``;
* r4, r5: the K-block and N-tile down-counters; r6: the PREDICATE's result;
* r7: the **runtime parameter** ``m_tiles*m*K``, the A offset at which the M loop ends, written by
  the host before the run (:meth:`LoopedGemm.registers`): one program serves every M up to the
  largest it was built for, e.g. every batch size.

With ``skip_zero_blocks`` each A block is tested on chip after it is loaded (PREDICATE any) and,
when it is all zero, the B block's LOAD and the MATMUL are branched over: after a ReLU many
activation blocks are zero, and their products add nothing.

Ordering: the A block LOAD pops a credit token from the compute unit (one is primed before the
loops; each MATMUL, or on the skipped path a no-op CONFIG, returns it), so a block is not
overwritten while the previous MATMUL reads it; the B LOAD's token orders the MATMUL after both
loads.  Each output tile starts with a FENCE and a zeroing LOAD of its accumulator rows, and its
STORE pops a token from a no-op CONFIG after the K loop.  The scratchpad holds one A and one B
block (no double buffering): the loads of a block and its MATMUL do not overlap.
"""

from __future__ import annotations

import dataclasses

from braze.isa import Config, Instruction
from braze.isa.encoding import INSN_BYTES

from .common import KernelError

__all__ = ["LoopedGemm", "looped_gemm"]

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


def _nop(**deps: bool) -> Instruction:
    """A compute-unit instruction that only relays tokens (OUT_ZP is 0 in a GEMM: no EPILOGUE reads it)."""
    return _I("config", reg="out_zp", value=0, **deps)


def looped_gemm(config: Config, max_m: int, K: int, N: int, *, m: int | None = None,
                skip_zero_blocks: bool = False, base: int = 0) -> LoopedGemm:
    """The looped GEMM for up to ``max_m`` rows; K must be a multiple of ``rows``, N of ``cols``.

    The program is at external address ``base``; A, B and C follow it.
    """
    rows, cols = config.rows, config.cols
    for name, value in (("max_m", max_m), ("K", K), ("N", N)):
        if not isinstance(value, int) or value < 1:
            raise KernelError(f"looped gemm: {name}={value!r} must be a positive integer")
    if K % rows or N % cols:
        raise KernelError(f"looped gemm: K={K} must be a multiple of rows={rows} and N={N} of cols={cols} "
                          f"on config {config.name!r}")
    # Two buffers of an A block (m rows) and a B block (rows rows) in the scratchpad.
    largest = min(config.acc_rows, (config.spad_rows - 2 * rows) // 2)
    m = m or min(max_m, largest, 256)
    if not 1 <= m <= largest:
        raise KernelError(f"looped gemm: an M tile of {m} rows does not fit config {config.name!r}")
    # The program's length does not depend on the operands' addresses, which follow it.
    length = len(_program(config, K, N, m, skip_zero_blocks, 0, 0, 0))
    padded = -(-max_m // m) * m
    a = _align(base + INSN_BYTES * length)
    b = _align(a + padded * K)
    c = _align(b + K * N)
    end = c + 4 * padded * N
    if end > config.dram_bytes:
        raise KernelError(f"looped gemm: operands end at {end:#x}, beyond the {config.dram_bytes}-byte "
                          f"external memory of config {config.name!r}")
    program = _program(config, K, N, m, skip_zero_blocks, a, b, c)
    return LoopedGemm(config, max_m, K, N, m, a, b, c, end, skip_zero_blocks, tuple(program))


def _program(config: Config, K: int, N: int, m: int, skip_zero_blocks: bool, a: int, b: int,
             c: int) -> list[Instruction]:
    rows, cols = config.rows, config.cols
    k_blocks, n_tiles = K // rows, N // cols
    acc_c = 0
    # With an even number of K blocks the loop body is written twice, on two scratchpad buffers, so
    # that the loads of one block overlap the MATMUL of the other (two credit tokens in flight).
    buffers = 2 if k_blocks % 2 == 0 else 1
    k_loop = []
    for buffer in range(buffers):
        spad_a, spad_b = buffer * (m + rows), buffer * (m + rows) + m
        # The second buffer's block is the next one: its addresses are the registers' plus one block.
        b_load = _I("load", mem="spad", addr=spad_b, rows=rows, len=cols, dram=b + buffer * rows * N,
                    dram_reg=B_OFFSET, stride=N, push_next=True)
        matmul = _I("matmul", acc=acc_c, a=spad_a, b=spad_b, a_stride=m, m=m, n=cols, k=rows,
                    accumulate=True, pop_prev=True, push_prev=True)
        k_loop.append(_I("load", mem="spad", addr=spad_a, rows=m, len=rows, dram=a + buffer * rows,
                         dram_reg=A_OFFSET, stride=K, pop_next=True, push_next=skip_zero_blocks))
        if skip_zero_blocks:
            k_loop += [
                _I("predicate", op="any", dst=FLAG, mem="spad", addr=spad_a, rows=m, pop_prev=True),
                _I("branch", cond="eq", a=FLAG, offset=4),       # all zero: to the no-op below
                b_load, matmul,
                _I("branch", offset=2),
                _nop(push_prev=True),                              # returns the A LOAD's credit
            ]
        else:
            k_loop += [b_load, matmul]
    k_loop += [
        _I("scalar", dst=A_OFFSET, src1=A_OFFSET, imm=buffers * rows),
        _I("scalar", dst=B_OFFSET, src1=B_OFFSET, imm=buffers * rows * N),
        _I("scalar", dst=K_COUNT, src1=K_COUNT, imm=-buffers),
    ]
    k_loop.append(_I("branch", cond="ne", a=K_COUNT, offset=-len(k_loop)))

    n_loop = [
        _I("fence"),
        _I("load", mem="acc", zero=True, addr=acc_c, rows=m, len=cols),
        _I("scalar", dst=K_COUNT, imm=k_blocks),
        *k_loop,
        _nop(push_next=True),
        _I("store", mem="acc", addr=acc_c, rows=m, len=cols, dram=c, dram_reg=C_OFFSET, stride=4 * N,
           pop_prev=True),
        _I("scalar", dst=A_OFFSET, src1=A_OFFSET, imm=-K),
        _I("scalar", dst=B_OFFSET, src1=B_OFFSET, imm=-K * N + cols),
        _I("scalar", dst=C_OFFSET, src1=C_OFFSET, imm=4 * cols),
        _I("scalar", dst=N_COUNT, src1=N_COUNT, imm=-1),
    ]
    n_loop.append(_I("branch", cond="ne", a=N_COUNT, offset=-len(n_loop)))
    m_loop = [
        _I("scalar", dst=B_OFFSET, imm=0),
        _I("scalar", dst=N_COUNT, imm=n_tiles),
        *n_loop,
        _I("scalar", dst=A_OFFSET, src1=A_OFFSET, imm=m * K),
        _I("scalar", dst=C_OFFSET, src1=C_OFFSET, imm=4 * m * N - 4 * N),
    ]
    m_loop.append(_I("branch", cond="lt", a=A_OFFSET, b=M_END, offset=-len(m_loop)))
    return [
        _I("scalar", dst=A_OFFSET, imm=0),
        _I("scalar", dst=C_OFFSET, imm=0),
        *[_nop(push_prev=True)] * buffers,                         # the first A LOADs' credits
        *m_loop,
        _I("halt"),
    ]


def _align(address: int) -> int:
    return -(-address // 64) * 64
