"""The kernel library: fused GEMM, convolution, pooling and element-wise kernels as Braze programs.

Every function here takes a :class:`~braze.isa.Config` and shapes and returns a
:class:`Kernel`: a straight-line instruction list for that configuration, the
external-memory operands it reads and writes, and its predicted cycles (the
timing model of :mod:`braze.isa.timing`) and MACs.  Nothing here knows about a
graph IR; the compiler calls these functions, places the operands and chains
the kernels.

Operands and placement
----------------------
A kernel names its external operands (``"A"``, ``"B"``, ``"params"``, ``"out"``,
``"counters"``, ...); :attr:`Kernel.operands` maps each name to an
:class:`Operand` with its absolute byte address, shape, dtype and layout.  The
caller chooses addresses with ``addrs={"A": 0x1000, ...}``; operands it leaves
out are packed one after another from ``base`` (64-byte aligned).  Operands may
not overlap (an output is never written in place over an input).  Integers
are little-endian; every tensor is dense and row-major in the layout named.

Every kernel ends with ``COUNTERS dram=<counters> reset`` (place the snapshot
with ``addrs={"counters": ...}``): it holds the performance counters since the
previous snapshot or the start of the run, so a program made of several
kernels yields a per-kernel breakdown.  (A COUNTERS instruction counts its own
external write after its snapshot, so the next kernel's ``dma_write_bytes``
and ``axi_write_beats`` include the previous snapshot's.)  Kernels leave every
token queue empty and set the CONFIG registers they use, and COUNTERS is a
barrier, so they compose by concatenation (:func:`link`), a later kernel
reading what an earlier one wrote.

How a kernel is scheduled
-------------------------
A kernel is first written as three in-order streams, one per unit (load,
compute, store), each instruction declaring which on-chip buffers
(:class:`_Buffer`) it reads and writes.  Dependencies between units follow from
those buffers (read after write, write after read or write) and become
dependency tokens: the producer sets ``push_*``, the consumer ``pop_*``, and a
dependency already implied by an earlier token is not repeated.  Buffers used
round-robin (two or more slots) are what gives double buffering: the load of
the next tile only waits for the compute instruction that last read its slot.
The three streams are then merged into one program in the order of their
estimated start times (the timing model's instruction cycles, without the
dispatcher), which keeps the in-order dispatcher from blocking a unit behind
another unit's queue, and never lets a token queue hold more than
``token_depth`` tokens.  Where double buffering needs more tokens in flight
than the configuration's queues hold (``token_depth`` 1), the kernel falls
back to single buffering.  GEMM and convolution generate several tilings and
keep the one the timing model predicts fastest (:class:`Tiling`).

Limitations
-----------
* When an A tile with all of K does not fit the scratchpad with room to
  spare, A is streamed in K blocks once per group of N tiles (see
  :class:`Tiling`); that reads A several times, and a convolution then
  gathers its patches several times (more LOAD instructions).
* Convolution pads channels to a multiple of ``rows`` (see :func:`conv2d`).
* Averages use a 15-bit multiplier (:func:`avg_multiplier`), exact only for
  power-of-two divisors.

Kernels
-------
* :func:`gemm` -- ``out = epilogue(A @ B)``, int8 operands, bias / requantize /
  residual / activation fused, int8 or int32 output.
* :func:`conv2d` -- NHWC convolution as a GEMM whose A tile is gathered from the
  input by strided LOADs (implicit im2col; see the function).
* :func:`maxpool2d`, :func:`avgpool2d`, :func:`global_avgpool` -- VECTOR
  max / sum in the accumulator, averaging by multiply and shift.
* :func:`add`, :func:`relu`, :func:`clip` -- element-wise.

Host-side helpers: :func:`pack_params`, :func:`conv2d_weights`,
:func:`avg_multiplier`, :func:`link`, :func:`run_kernel`, :func:`run_kernels`.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from braze.isa import (
    SNAPSHOT_BYTES,
    Activation,
    Config,
    ConfigReg,
    Instruction,
    Memory,
    Opcode,
    Unit,
    VectorOp,
    parse_snapshot,
)
from braze.isa.asm import disassemble
from braze.isa.errors import BrazeError
from braze.isa.timing import instruction_cycles, schedule

__all__ = [
    "KernelError", "Operand", "Kernel", "KernelResult",
    "gemm", "conv2d", "conv2d_output_shape", "maxpool2d", "avgpool2d", "global_avgpool",
    "add", "relu", "clip",
    "pack_params", "conv2d_weights", "avg_multiplier", "link", "run_kernel", "run_kernels", "utilisation",
    "Tiling", "MAX_VECTOR_MULT", "OPERAND_ALIGN",
]

#: Alignment of operands that the caller leaves to the kernel to place.
OPERAND_ALIGN = 64
#: Largest multiplier of VECTOR ``mul`` (its ``imm`` field is int16).
MAX_VECTOR_MULT = (1 << 15) - 1


class KernelError(BrazeError, ValueError):
    """A kernel cannot be generated for these shapes, options or configuration."""


class _Unorderable(Exception):
    """The streams need more tokens in flight than the token queues hold (retry with fewer slots)."""


# ---------------------------------------------------------------------------------------------------------
# Public data types

@dataclasses.dataclass(frozen=True)
class Operand:
    """One external-memory operand of a kernel.

    Attributes
    ----------
    name : str
        The kernel's name for it (``"A"``, ``"params"``, ...).
    addr : int
        Absolute byte address in external memory.
    shape : tuple of int
        Shape of the dense array stored there.
    dtype : numpy.dtype
        Element type (little-endian).
    layout : str
        What the axes mean, e.g. ``"NHWC"`` or ``"row-major M x K"``.
    role : str
        ``"input"`` (the caller writes it before the run), ``"param"`` (an input
        holding constants: weights, bias, requantize rows), ``"output"`` (the
        kernel writes it) or ``"counters"`` (the COUNTERS snapshot).
    """

    name: str
    addr: int
    shape: tuple[int, ...]
    dtype: np.dtype
    layout: str
    role: str

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    @property
    def end(self) -> int:
        return self.addr + self.nbytes


@dataclasses.dataclass
class Kernel:
    """A generated kernel.

    Attributes
    ----------
    name : str
        Kind of kernel (``"gemm"``, ``"conv2d"``, ...).
    config : Config
        The configuration it was generated for (it is only valid there).
    instructions : list of Instruction
        The program, ending with the COUNTERS snapshot; no HALT (see :meth:`program`).
    operands : dict of str to Operand
        External operands by name.
    macs : int
        Useful multiply-accumulates (MATMUL ``m*n*k`` summed).
    predicted_cycles : int
        Cycles of :meth:`program` under the timing model.
    param_rows : tuple of str
        For kernels with a ``params`` operand, what its rows hold, in order
        (``"bias"``, ``"mult"``, ``"shift"``); see :func:`pack_params`.
    tiling : dict
        How the kernel was tiled (for reports; not an interface).
    """

    name: str
    config: Config
    instructions: list[Instruction]
    operands: dict[str, Operand]
    macs: int
    predicted_cycles: int
    param_rows: tuple[str, ...] = ()
    tiling: dict[str, Any] = dataclasses.field(default_factory=dict)

    def program(self, *, halt: bool = True) -> list[Instruction]:
        """The instructions, followed by HALT unless ``halt`` is false."""
        return self.instructions + ([Instruction.make(Opcode.HALT)] if halt else [])

    @property
    def asm(self) -> str:
        """The instructions as assembly text (the disassembler's)."""
        return disassemble(self.instructions)

    def inputs(self) -> list[Operand]:
        """Operands the caller must write before running (inputs and parameters)."""
        return [op for op in self.operands.values() if op.role in ("input", "param")]

    def outputs(self) -> list[Operand]:
        return [op for op in self.operands.values() if op.role == "output"]

    @property
    def data_end(self) -> int:
        """First byte after every operand."""
        return max(op.end for op in self.operands.values())


@dataclasses.dataclass
class KernelResult:
    """What :func:`run_kernel` read back: outputs by name, the kernel's counter snapshot, and the
    cycles of the whole run (all linked kernels) as the device reported them."""

    outputs: dict[str, np.ndarray]
    counters: dict[str, int]
    cycles: int


# ---------------------------------------------------------------------------------------------------------
# Argument checks

def _positive(name: str, value: Any) -> int:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
        raise KernelError(f"{name} must be a positive integer, not {value!r}")
    return int(value)


def _non_negative(name: str, value: Any) -> int:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 0:
        raise KernelError(f"{name} must be a non-negative integer, not {value!r}")
    return int(value)


def _check_config(config: Any) -> Config:
    if not isinstance(config, Config):
        raise KernelError(f"config must be a braze Config, not {config!r}")
    return config


def _int_in(name: str, value: Any, low: int, high: int) -> int:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or not low <= value <= high:
        raise KernelError(f"{name} must be an integer in {low}..{high}, not {value!r}")
    return int(value)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ---------------------------------------------------------------------------------------------------------
# Streams, buffers and the merge into one program

_PUSH_FLAG = {(Unit.LOAD, Unit.COMPUTE): "push_next", (Unit.COMPUTE, Unit.LOAD): "push_prev",
              (Unit.COMPUTE, Unit.STORE): "push_next", (Unit.STORE, Unit.COMPUTE): "push_prev"}
_POP_FLAG = {(Unit.LOAD, Unit.COMPUTE): "pop_prev", (Unit.COMPUTE, Unit.LOAD): "pop_next",
             (Unit.COMPUTE, Unit.STORE): "pop_prev", (Unit.STORE, Unit.COMPUTE): "pop_next"}
_STREAM_UNITS = (Unit.LOAD, Unit.COMPUTE, Unit.STORE)


@dataclasses.dataclass(eq=False)      # identity: buffers are tracked as objects
class _Buffer:
    """A range of on-chip rows that instructions access as a whole, for dependency tracking.

    ``writer``: (unit, index) of the last writer; ``readers``: the last reader per unit since then.
    Buffers made with the same ``group`` share that tracking, as if they were one buffer.
    """

    name: str
    memory: Memory
    start: int
    rows: int
    writer: tuple[Unit, int] | None = None
    readers: dict[Unit, int] = dataclasses.field(default_factory=dict)
    group: _Buffer | None = None

    @property
    def tracked(self) -> _Buffer:
        return self.group if self.group is not None else self


@dataclasses.dataclass
class _Op:
    insn: Instruction
    flags: set[str] = dataclasses.field(default_factory=set)
    pops: list[Unit] = dataclasses.field(default_factory=list)      # producers this op pops from
    pushes: list[Unit] = dataclasses.field(default_factory=list)    # consumers this op pushes to


class _Allocator:
    """Bump allocation of the rows of one on-chip memory."""

    def __init__(self, memory: Memory, limit: int, what: str):
        self.memory = memory
        self.limit = limit
        self.what = what
        self.used = 0

    def take(self, name: str, rows: int) -> _Buffer:
        if self.used + rows > self.limit:
            raise KernelError(f"{self.what}: buffer {name!r} of {rows} rows does not fit "
                              f"({self.used} of {self.limit} {self.memory.name.lower()} rows in use)")
        buffer = _Buffer(name, self.memory, self.used, rows)
        self.used += rows
        return buffer

    def ring(self, name: str, slots: int, rows: int) -> list[_Buffer]:
        return [self.take(f"{name}{i}", rows) for i in range(slots)]


def _slot(slots: list[_Buffer], index: int) -> _Buffer:
    return slots[index % len(slots)]


def _buffering_options(config: Config) -> list[int]:
    """Ring slots to try, most first: two (double buffering) if the token queues can hold the tokens
    that needs in flight, then one."""
    return sorted({min(2, config.token_depth), 1}, reverse=True)


def _first_orderable(what: str, config: Config, build: Callable[[int], Kernel]) -> Kernel:
    """``build(slots)`` with the most ring slots whose streams fit the token queues."""
    for slots in _buffering_options(config):
        try:
            return build(slots)
        except _Unorderable:
            continue
    raise KernelError(f"{what}: no order of the program fits token_depth={config.token_depth} of config "
                      f"{config.name!r}")


class _Streams:
    """Per-unit instruction streams whose cross-unit dependencies become tokens."""

    def __init__(self, config: Config):
        self.config = config
        self.ops: dict[Unit, list[_Op]] = {unit: [] for unit in _STREAM_UNITS}
        # Latest producer instruction each consumer has already waited for, per token queue.
        self._waited: dict[tuple[Unit, Unit], int] = {queue: -1 for queue in _PUSH_FLAG}

    def add(self, insn: Instruction, *, reads: Iterable[_Buffer] = (),
            writes: Iterable[_Buffer] = ()) -> None:
        reads = list(dict.fromkeys(buffer.tracked for buffer in reads))
        writes = list(dict.fromkeys(buffer.tracked for buffer in writes))
        unit = insn.unit
        if unit not in self.ops:
            raise AssertionError(f"{insn!r} is not a unit instruction")
        wait: dict[Unit, int] = {}

        def after(other: tuple[Unit, int] | None):
            if other is not None and other[0] is not unit:
                wait[other[0]] = max(wait.get(other[0], -1), other[1])

        for buffer in reads:
            after(buffer.writer)
        for buffer in writes:
            after(buffer.writer)
            for reader in buffer.readers.items():
                after(reader)
        op = _Op(insn)
        for producer, index in wait.items():
            queue = (producer, unit)
            if queue not in _PUSH_FLAG:
                raise AssertionError(f"{insn!r} depends on the {producer.name.lower()} unit, "
                                     "which has no token queue to it")
            if index > self._waited[queue]:
                producer_op = self.ops[producer][index]
                producer_op.flags.add(_PUSH_FLAG[queue])
                producer_op.pushes.append(unit)
                op.flags.add(_POP_FLAG[queue])
                op.pops.append(producer)
                self._waited[queue] = index
        here = (unit, len(self.ops[unit]))
        self.ops[unit].append(op)
        for buffer in reads:
            buffer.readers[unit] = here[1]
        for buffer in writes:
            buffer.writer = here
            buffer.readers = {}

    def merge(self) -> list[Instruction]:
        """One program: the streams interleaved by estimated start time, within token capacity."""
        config = self.config
        heads = {unit: 0 for unit in _STREAM_UNITS}
        unit_free = {unit: 0 for unit in _STREAM_UNITS}
        push_times: dict[tuple[Unit, Unit], list[int]] = {queue: [] for queue in _PUSH_FLAG}
        popped = {queue: 0 for queue in _PUSH_FLAG}
        program: list[Instruction] = []
        total = sum(len(ops) for ops in self.ops.values())
        while len(program) < total:
            best: tuple[int, Unit] | None = None
            for unit in _STREAM_UNITS:
                ops = self.ops[unit]
                if heads[unit] == len(ops):
                    continue
                op = ops[heads[unit]]
                start = unit_free[unit]
                ready = True
                for producer in op.pops:
                    queue = (producer, unit)
                    if popped[queue] >= len(push_times[queue]):
                        ready = False
                        break
                    start = max(start, push_times[queue][popped[queue]])
                for consumer in op.pushes:
                    queue = (unit, consumer)
                    if len(push_times[queue]) - popped[queue] >= config.token_depth:
                        ready = False
                if ready and (best is None or start < best[0]):
                    best = (start, unit)
            if best is None:
                raise _Unorderable(f"the streams need more than token_depth={config.token_depth} tokens "
                                   "in flight")
            start, unit = best
            op = self.ops[unit][heads[unit]]
            heads[unit] += 1
            for producer in op.pops:
                popped[(producer, unit)] += 1
            # The flags are legal for the unit by construction (_PUSH_FLAG/_POP_FLAG), so no re-validation.
            insn = dataclasses.replace(op.insn, deps=op.insn.deps | frozenset(op.flags))
            end = start + instruction_cycles(insn, config)
            for consumer in op.pushes:
                push_times[(unit, consumer)].append(end)
            unit_free[unit] = end
            program.append(insn)
        return program


# ---------------------------------------------------------------------------------------------------------
# Operand placement and kernel assembly

@dataclasses.dataclass
class _OperandSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str
    layout: str
    role: str


def _place(config: Config, specs: list[_OperandSpec], addrs: Mapping[str, int] | None, base: int
           ) -> dict[str, Operand]:
    addrs = dict(addrs or {})
    unknown = set(addrs) - {spec.name for spec in specs}
    if unknown:
        raise KernelError(f"addrs names unknown operand(s) {', '.join(sorted(unknown))}; "
                          f"this kernel has {', '.join(spec.name for spec in specs)}")
    _non_negative("base", base)
    cursor = base
    placed: dict[str, Operand] = {}
    for spec in specs:
        dtype = np.dtype(spec.dtype).newbyteorder("<")
        nbytes = int(np.prod(spec.shape)) * dtype.itemsize
        if spec.name in addrs:
            addr = _non_negative(f"addrs[{spec.name!r}]", addrs[spec.name])
        else:
            addr = _cdiv(cursor, OPERAND_ALIGN) * OPERAND_ALIGN
            cursor = addr + nbytes
        placed[spec.name] = Operand(spec.name, addr, spec.shape, dtype, spec.layout, spec.role)
    ordered = sorted(placed.values(), key=lambda op: op.addr)
    for first, second in zip(ordered, ordered[1:], strict=False):
        if first.end > second.addr:
            raise KernelError(f"operands {first.name!r} (0x{first.addr:x}..0x{first.end:x}) and "
                              f"{second.name!r} (0x{second.addr:x}..) overlap")
    if ordered[-1].end > config.dram_bytes:
        raise KernelError(f"operand {ordered[-1].name!r} ends at 0x{ordered[-1].end:x}, beyond the "
                          f"{config.dram_bytes}-byte external memory of config {config.name!r}")
    return placed


def _counters_spec() -> _OperandSpec:
    return _OperandSpec("counters", (SNAPSHOT_BYTES // 8,), "u8", "COUNTERS snapshot, Counter order",
                        "counters")


def _finish(name: str, config: Config, streams: _Streams, operands: dict[str, Operand], *, macs: int,
            param_rows: tuple[str, ...] = (), tiling: dict | None = None) -> Kernel:
    instructions = streams.merge()
    instructions.append(Instruction.make(Opcode.COUNTERS, dram=operands["counters"].addr, reset=True))
    cycles = schedule(instructions + [Instruction.make(Opcode.HALT)], config).cycles
    return Kernel(name, config, instructions, operands, macs, cycles, param_rows, dict(tiling or {}))


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


# ---------------------------------------------------------------------------------------------------------
# Epilogue options shared by gemm and conv2d

@dataclasses.dataclass(frozen=True)
class _Epilogue:
    bias: bool
    requant: bool
    residual: bool
    act: Activation
    clip_lo: int
    clip_hi: int
    out_zp: int
    out_int32: bool

    @property
    def param_rows(self) -> tuple[str, ...]:
        return (("bias",) if self.bias else ()) + (("mult", "shift") if self.requant else ())

    @property
    def needed(self) -> bool:
        """Whether an EPILOGUE runs at all (int8 output always needs one, to saturate)."""
        return (self.bias or self.requant or self.residual or self.act is not Activation.NONE
                or not self.out_int32)


def _epilogue_options(bias, requant, residual, act, clip_range, out_zp, out) -> _Epilogue:
    if isinstance(act, str):
        try:
            act = Activation[act.upper()]
        except KeyError:
            raise KernelError(f"act must be one of none, relu, clip, not {act!r}") from None
    if not isinstance(act, Activation):
        raise KernelError(f"act must be an Activation or its name, not {act!r}")
    lo = hi = 0
    if act is Activation.CLIP:
        if not isinstance(clip_range, tuple | list) or len(clip_range) != 2:
            raise KernelError(f"act='clip' needs clip=(lo, hi), not clip={clip_range!r}")
        lo, hi = clip_range
        lo = _int_in("clip lower bound", lo, -(1 << 31), (1 << 31) - 1)
        hi = _int_in("clip upper bound", hi, lo, (1 << 31) - 1)
    elif clip_range is not None:
        raise KernelError(f"clip={clip_range!r} is only meaningful with act='clip' (act={act.name.lower()})")
    if out not in ("int8", "int32"):
        raise KernelError(f"out must be 'int8' or 'int32', not {out!r}")
    out_zp = _int_in("out_zp", out_zp, -(1 << 31), (1 << 31) - 1)
    if out_zp and not requant:
        raise KernelError(f"out_zp={out_zp} is added by the requantize stage; set requant=True")
    for name, flag in (("bias", bias), ("requant", requant), ("residual", residual)):
        if not isinstance(flag, bool):
            raise KernelError(f"{name} must be True or False, not {flag!r}")
    return _Epilogue(bias, requant, residual, act, lo, hi, out_zp, out == "int32")


def _epilogue_specs(epi: _Epilogue, rows: int, cols: int, layout: str) -> list[_OperandSpec]:
    specs = []
    if epi.param_rows:
        specs.append(_OperandSpec("params", (len(epi.param_rows), cols), "i4",
                                  f"rows {', '.join(epi.param_rows)}; one column per output column", "param"))
    if epi.residual:
        specs.append(_OperandSpec("residual", (rows, cols), "i1", layout, "input"))
    specs.append(_OperandSpec("out", (rows, cols), "i4" if epi.out_int32 else "i1", layout, "output"))
    return specs


def _set_config_regs(streams: _Streams, epi: _Epilogue) -> None:
    # The registers persist across kernels: set every one this kernel's EPILOGUEs read.
    if epi.requant:
        streams.add(Instruction.make(Opcode.CONFIG, reg=ConfigReg.OUT_ZP, value=epi.out_zp))
    if epi.act is Activation.CLIP:
        streams.add(Instruction.make(Opcode.CONFIG, reg=ConfigReg.CLIP_LO, value=epi.clip_lo))
        streams.add(Instruction.make(Opcode.CONFIG, reg=ConfigReg.CLIP_HI, value=epi.clip_hi))


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
    """

    m: int
    a_slots: int
    b_resident: bool
    params_resident: bool
    first_pieces: int = 1
    buffers: int = 2
    k_block: int = 0
    n_group: int = 1


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


def _matmul_pipeline(config: Config, M: int, K: int, N: int, epi: _Epilogue, operands: dict[str, Operand],
                     a_loader: ALoader, tiling: Tiling) -> _Streams:
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
    a_slots = spad.ring("A", tiling.a_slots, m)      # consecutive rows: slot i starts at a_slots[0] + i*m
    group = tiling.n_group if streamed else 1
    c_slots = acc.ring("C", ring * group, m)
    p_count = n_tiles if tiling.params_resident else ring * group
    p_slots = acc.ring("params", p_count, p_rows) if p_rows else []

    b_op, out_op = operands["B"], operands["out"]
    out_bytes = 4 if epi.out_int32 else 1
    streams = _Streams(config)
    _set_config_regs(streams, epi)
    a_next = 0          # the A ring slot the next chunk goes to
    b_next = 0          # the B ring slot the next streamed B tile goes to
    c_next = 0          # the C ring slot of the next output tile

    def load_a(i0: int, mt: int, c0: int, c1: int) -> tuple[int, list[_Buffer]]:
        """LOADs of chunks c0..c1-1 of A tile i0 into the next ring slots; (first slot index, slots)."""
        nonlocal a_next
        first, slots = a_next % tiling.a_slots, []
        for c in range(c0, c1):
            slot = _slot(a_slots, a_next)
            a_next += 1
            for load in a_loader(i0, mt, c, slot.start):
                streams.add(load, writes=[slot])
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
        if not tiling.b_resident or t == 0:
            streams.add(Instruction.make(Opcode.LOAD, mem=Memory.SPAD, addr=b_buf.start, rows=k1 - k0,
                                         len=min(COLS, N - n0), dram=b_op.addr + k0 * N + n0, stride=N),
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
                block_slots: list[_Buffer], pieces: int) -> None:
        """MATMULs of chunks c0..c1-1 into C: one per run of consecutive ring slots (a block that wraps
        around the ring is split in two, as is the first MATMUL of a tile into ``pieces``),
        accumulating after the first chunk of K."""
        for r0, r1 in _chunk_runs(first_slot, c1 - c0, tiling.a_slots, pieces):
            k0, k1 = (c0 + r0) * R, min(K, (c0 + r1) * R)
            streams.add(Instruction.make(Opcode.MATMUL, acc=c_buf.start, a=block_slots[r0].start,
                                         b=b_buf.start + (k0 if not streamed else r0 * R), a_stride=m, m=mt,
                                         n=nj, k=k1 - k0, accumulate=k0 > 0),
                        reads=[*block_slots[r0:r1], b_buf], writes=[c_buf])

    def finish_tile(c_buf: _Buffer, p_buf: _Buffer | None, r_buf: _Buffer | None, i0: int, mt: int, j: int,
                    step: int) -> None:
        """The EPILOGUE (if any) and STORE of output tile (i0, j)."""
        n0 = j * COLS
        nj = min(COLS, N - n0)
        result = c_buf
        if epi.needed:
            result = c_buf if epi.out_int32 else _slot(out_slots, step)
            fields: dict[str, Any] = dict(src=c_buf.start, m=mt, n=nj, dst=result.start,
                                          out=Memory.ACC if epi.out_int32 else Memory.SPAD, act=epi.act)
            if epi.bias:
                fields.update(bias=True, bias_addr=p_buf.start)
            if epi.requant:
                fields.update(requant=True, quant_addr=p_buf.start + (1 if epi.bias else 0))
            if epi.residual:
                fields.update(residual=True, res_addr=r_buf.start)
            streams.add(Instruction.make(Opcode.EPILOGUE, **fields),
                        reads=[b for b in (c_buf, p_buf, r_buf) if b is not None], writes=[result])
        streams.add(Instruction.make(Opcode.STORE, mem=result.memory, addr=result.start, rows=mt, len=nj,
                                     dram=out_op.addr + (i0 * N + n0) * out_bytes, stride=N * out_bytes),
                    reads=[result])

    step = 0
    for t, i0 in enumerate(range(0, M, m)):
        mt = min(m, M - i0)
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
        # The first N tile's operands first: its MATMUL can start on the first chunks of A.
        first_operands = load_b(t, 0, 0, chunks), *load_epilogue_operands(t, i0, mt, 0, step)
        first_slot, tile_slots = load_a(i0, mt, 0, chunks)
        for j in range(n_tiles):
            b_buf, p_buf, r_buf = first_operands if j == 0 else (
                load_b(t, j, 0, chunks), *load_epilogue_operands(t, i0, mt, j, step))
            c_buf = _slot(c_slots, c_next)
            c_next += 1
            matmuls(c_buf, b_buf, mt, min(COLS, N - j * COLS), 0, chunks, first_slot, tile_slots,
                    tiling.first_pieces if j == 0 else 1)
            finish_tile(c_buf, p_buf, r_buf, i0, mt, j, step)
            step += 1
    return streams


def _tiling_candidates(config: Config, M: int, K: int, N: int, epi: _Epilogue) -> list[list[Tiling]]:
    """Tilings that fit, grouped by M tile count; double-buffered groups first, then single-buffered.

    With A resident (K fits the scratchpad): the fewest M tiles that fit, one and two more, and
    twice and four times as many; per count B resident or streamed, the A ring in the rest of
    the scratchpad.  With A streamed in K blocks (tried whenever A does not fit in one tile): one
    to four M tiles, the largest K block that fits.
    """
    R, COLS = config.rows, config.cols
    chunks = _cdiv(K, R)
    n_tiles = _cdiv(N, COLS)
    p_rows = len(epi.param_rows)
    per_m_spad = (2 if epi.residual else 0) + (0 if epi.out_int32 else 2)

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
            free = config.spad_rows - ring * per_m_spad * m - (n_tiles if b_resident else ring) * K
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
        free = config.spad_rows - ring * per_m_spad * m
        # A ring of two blocks of chunks (one loading, one computing) and B ring of two blocks of rows.
        block = min(chunks, free // (ring * (m + R)))
        if block < 1:
            return []
        slots = (free - ring * block * R) // m
        slots -= slots % block
        return [Tiling(m, slots, False, p_resident, 1, ring, block * R, group)]

    groups: list[list[Tiling]] = []
    for ring in _buffering_options(config):
        fewest = next((tiles for tiles in range(1, M + 1) if resident(_cdiv(M, tiles), ring)), None)
        counts = [] if fewest is None else [fewest, fewest + 1, fewest + 2, 2 * fewest, 4 * fewest]
        # In order of promise: A resident in the fewest tiles, A streamed (unless one tile holds all of
        # A), then more and smaller resident tiles.
        options = [(resident, tiles) for tiles in counts[:1]]
        options += [(streamed, tiles) for tiles in range(1, 5) if fewest != 1]
        options += [(resident, tiles) for tiles in counts[1:]]
        seen: set[tuple[Callable, int]] = set()
        for make, tiles in options:
            m = _cdiv(M, min(tiles, M))
            if (make, m) not in seen:
                seen.add((make, m))
                if group := make(m, ring):
                    groups.append(group)
    if not groups:
        raise KernelError(f"a {M}x{K}x{N} matmul does not fit config {config.name!r}: not even one row of "
                          f"A, one K chunk and the output rows fit its {config.spad_rows} scratchpad rows")
    return groups


#: Stop trying more tilings once the candidates generated hold this many instructions (generation time).
_CANDIDATE_BUDGET = 12000


def _matmul_kernel(name: str, config: Config, M: int, K: int, N: int, epi: _Epilogue,
                   operands: dict[str, Operand], a_loader: ALoader, tiling: Tiling | None,
                   extra_tiling: dict) -> Kernel:
    """Generate the candidate tilings (or the given one) and keep the fastest under the timing model."""
    groups = [[tiling]] if tiling is not None else _tiling_candidates(config, M, K, N, epi)
    best: Kernel | None = None
    generated = 0
    for group in groups:
        if best is not None and group[0].buffers < best.tiling["buffers"]:
            break                 # single-buffered candidates are only the fallback
        for candidate in group:
            streams = _matmul_pipeline(config, M, K, N, epi, operands, a_loader, candidate)
            try:
                kernel = _finish(name, config, streams, operands, macs=M * N * K, param_rows=epi.param_rows,
                                 tiling=dataclasses.asdict(candidate) | extra_tiling)
            except _Unorderable:
                continue          # needs deeper token queues; single-buffered candidates follow
            generated += len(kernel.instructions)
            if best is None or kernel.predicted_cycles < best.predicted_cycles:
                best = kernel
        if best is not None and generated > _CANDIDATE_BUDGET:
            break
    if best is None:
        raise KernelError(f"{name} {M}x{K}x{N}: no tiling fits token_depth={config.token_depth} of config "
                          f"{config.name!r}")
    return best


def gemm(config: Config, M: int, K: int, N: int, *, bias: bool = False, requant: bool = False,
         residual: bool = False, act: Activation | str = "none", clip: tuple[int, int] | None = None,
         out_zp: int = 0, out: str = "int8", addrs: Mapping[str, int] | None = None, base: int = 0,
         tiling: Tiling | None = None) -> Kernel:
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
        Operand placement (see the module documentation).
    tiling
        Force one tiling (tests); by default every fitting tiling is generated
        and the one the timing model predicts fastest is kept.

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

    return _matmul_kernel("gemm", config, M, K, N, epi, operands, load_a, tiling, {})


# ---------------------------------------------------------------------------------------------------------
# Convolution

def conv2d_output_shape(H: int, W: int, kh: int, kw: int, stride: int, pad: int) -> tuple[int, int]:
    """Output height and width of a convolution or pooling window."""
    return (H + 2 * pad - kh) // stride + 1, (W + 2 * pad - kw) // stride + 1


def _check_window(H, W, kh, kw, stride, pad, *, pad_below_kernel: bool) -> tuple[int, int]:
    for name, value in (("H", H), ("W", W), ("kh", kh), ("kw", kw), ("stride", stride)):
        _positive(name, value)
    _non_negative("pad", pad)
    if pad_below_kernel and (pad >= kh or pad >= kw):
        raise KernelError(f"pad={pad} must be smaller than the {kh}x{kw} window")
    Ho, Wo = conv2d_output_shape(H, W, kh, kw, stride, pad)
    if Ho < 1 or Wo < 1:
        raise KernelError(f"a {kh}x{kw} window with pad={pad} does not fit a {H}x{W} input")
    return Ho, Wo


@dataclasses.dataclass
class _Segment:
    """Rows of one gathered LOAD: ``rows`` local rows, external ``dram + r*stride`` (None: zeros)."""

    local: int
    rows: int
    dram: int | None
    stride: int


def _window_segments(N: int, H: int, W: int, C: int, Ho: int, Wo: int, stride: int, pad: int, ky: int,
                     kx: int, first: int, count: int, x_addr: int, channel: int) -> list[_Segment]:
    """Where the tap (ky, kx) of output pixels first..first+count-1 (flattened n, oy, ox) lies in an
    NHWC input: runs of pixels read with one strided LOAD, and runs in the padding (None)."""
    segments: list[_Segment] = []

    def emit(local: int, rows: int, dram: int | None, stride_bytes: int):
        if rows <= 0:
            return
        if segments:
            last = segments[-1]
            contiguous = last.local + last.rows == local
            if contiguous and dram is None and last.dram is None:
                last.rows += rows
                return
            if (contiguous and dram is not None and last.dram is not None and last.stride == stride_bytes
                    and last.dram + last.rows * last.stride == dram):
                last.rows += rows
                return
        segments.append(_Segment(local, rows, dram, stride_bytes))

    pixel = first
    end = first + count
    while pixel < end:
        n, rest = divmod(pixel, Ho * Wo)
        oy, ox0 = divmod(rest, Wo)
        ox1 = min(Wo, ox0 + end - pixel)          # this output row's part of the range
        local0 = pixel - first
        iy = oy * stride + ky - pad
        if not 0 <= iy < H:
            emit(local0, ox1 - ox0, None, 0)
        else:
            # Valid ox: 0 <= ox*stride + kx - pad < W.
            lo = max(ox0, _cdiv(pad - kx, stride))
            hi = min(ox1, (W - 1 + pad - kx) // stride + 1)
            if hi <= lo:
                emit(local0, ox1 - ox0, None, 0)
            else:
                emit(local0, lo - ox0, None, 0)
                ix = lo * stride + kx - pad
                emit(local0 + lo - ox0, hi - lo, x_addr + ((n * H + iy) * W + ix) * C + channel, stride * C)
                emit(local0 + hi - ox0, ox1 - hi, None, 0)
        pixel += ox1 - ox0
    return segments


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

    def load_a(i0: int, mt: int, c: int, dst: int) -> list[Instruction]:
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
        return loads

    extra = {"Ho": Ho, "Wo": Wo, "K": K}
    return _matmul_kernel("conv2d", config, M, K, K_out, epi, operands, load_a, tiling, extra)


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


def _set_clip(streams: _Streams, lo: int, hi: int) -> None:
    streams.add(Instruction.make(Opcode.CONFIG, reg=ConfigReg.CLIP_LO, value=lo))
    streams.add(Instruction.make(Opcode.CONFIG, reg=ConfigReg.CLIP_HI, value=hi))


def _vector(op: VectorOp, dst: _Buffer, dst_row: int, src1: _Buffer, src1_row: int, rows: int, *,
            src2: _Buffer | None = None, src2_row: int = 0, imm: int | None = None, shift: int = 0
            ) -> Instruction:
    fields: dict[str, Any] = dict(op=op, dst_mem=dst.memory, dst=dst_row, src1_mem=src1.memory, src1=src1_row,
                                  rows=rows, shift=shift)
    if src2 is not None:
        fields.update(src2_mem=src2.memory, src2=src2_row)
    if imm is not None:
        fields.update(use_imm=True, imm=imm)
    return Instruction.make(Opcode.VECTOR, **fields)


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
        return _finish(f"{kind}pool2d", config, streams, operands, macs=0,
                       tiling={"pixels_per_item": seg, "buffers": ring, "Ho": Ho, "Wo": Wo})

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


# ---------------------------------------------------------------------------------------------------------
# Element-wise kernels

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
                 acc_per_row: int, setup: Callable[[_Streams], None] | None = None) -> Kernel:
    """Shared loop: the flat tensor as rows of ``cols`` int8, in double-buffered blocks of rows."""
    config = _check_config(config)
    shape = _shape(shape)
    elements = int(np.prod(shape))
    COLS = config.cols
    specs = [*(_OperandSpec(x, shape, "i1", "any (element-wise)", "input") for x in inputs),
             _OperandSpec("out", shape, "i1", "as the inputs", "output"), _counters_spec()]
    operands = _place(config, specs, addrs, base)
    total_rows = _cdiv(elements, COLS)
    spad_share = config.spad_rows // (2 * (len(inputs) + 1))
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
        x_zp: int = 0, y_zp: int = 0, out_zp: int = 0, addrs: Mapping[str, int] | None = None,
        base: int = 0) -> Kernel:
    """Quantized element-wise addition of two int8 tensors (operands ``x``, ``y``, ``out``).

    ``out = sat8(rq(x - x_zp, x_scale) + rq(y - y_zp, y_scale) + out_zp)`` with
    ``rq(v, (mult, shift)) = round_half_even(v * mult / 2**shift)``; ``mult`` is
    a VECTOR immediate (-32768..32767), ``shift`` 0..31, zero points -128..127.
    ``mult / 2**shift`` is the ratio of the input's scale to the output's.
    With the defaults (equal scales, zero points 0) it is one saturating VECTOR
    ``add``; otherwise each operand is rescaled into the accumulator (VECTOR
    ``sub`` of its zero point, ``mul``), the two are added there, and a final
    ``add`` of ``out_zp`` writes int8.
    """
    scales = []
    for name, scale in (("x_scale", x_scale), ("y_scale", y_scale)):
        if not isinstance(scale, tuple | list) or len(scale) != 2:
            raise KernelError(f"{name} must be (mult, shift), not {scale!r}")
        scales.append((_int_in(f"{name} mult", scale[0], -(1 << 15), MAX_VECTOR_MULT),
                       _int_in(f"{name} shift", scale[1], 0, 31)))
    zps = {name: _int_in(name, value, -128, 127) for name, value in
           (("x_zp", x_zp), ("y_zp", y_zp), ("out_zp", out_zp))}
    plain = scales == [(1, 0), (1, 0)] and not any(zps.values())

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
        streams.add(_vector(VectorOp.ADD, out_buf, out_buf.start, t0, t0.start, rows, imm=zps["out_zp"]),
                    reads=[t0], writes=[out_buf])
    return _elementwise("add", config, shape, ("x", "y"), addrs, base, body, 0 if plain else 2)


# ---------------------------------------------------------------------------------------------------------
# Host-side helpers

def pack_params(kernel: Kernel, *, bias: np.ndarray | None = None, mult: np.ndarray | None = None,
                shift: np.ndarray | None = None) -> np.ndarray:
    """The ``params`` operand of a GEMM/conv kernel: int32 rows in :attr:`Kernel.param_rows` order."""
    given = {"bias": bias, "mult": mult, "shift": shift}
    if "params" not in kernel.operands:
        raise KernelError(f"this {kernel.name} kernel has no params operand (no bias or requant)")
    columns = kernel.operands["params"].shape[1]
    rows = []
    for name in kernel.param_rows:
        value = given.pop(name)
        if value is None:
            raise KernelError(f"the kernel needs {name!r} "
                              f"(its param rows are {', '.join(kernel.param_rows)})")
        value = np.asarray(value)
        if value.shape != (columns,):
            raise KernelError(f"{name} must have shape ({columns},), not {value.shape}")
        rows.append(value.astype(np.int64))
    extra = [name for name, value in given.items() if value is not None]
    if extra:
        raise KernelError(f"the kernel does not use {', '.join(extra)} (its param rows are "
                          f"{', '.join(kernel.param_rows) or 'none'})")
    packed = np.stack(rows)
    if packed.min() < -(1 << 31) or packed.max() >= 1 << 31:
        raise KernelError("params must fit int32")
    return packed.astype("<i4")


def link(kernels: Sequence[Kernel]) -> list[Instruction]:
    """One program running the kernels in order, then HALT (each keeps its own counter snapshot)."""
    if not kernels:
        raise KernelError("link needs at least one kernel")
    config = kernels[0].config
    for kernel in kernels:
        if kernel.config != config:
            raise KernelError(f"kernel {kernel.name} is for config {kernel.config.name!r}, "
                              f"not {config.name!r}")
    return [insn for kernel in kernels for insn in kernel.instructions] + [Instruction.make(Opcode.HALT)]


def run_kernels(device, kernels: Sequence[Kernel], inputs: Sequence[Mapping[str, np.ndarray]], *,
                program_addr: int | None = None, max_cycles: int | None = None) -> list[KernelResult]:
    """Write the inputs, run the linked kernels on a device, and read every output and snapshot.

    ``inputs[i]`` maps operand names of ``kernels[i]`` to arrays (an input
    produced by an earlier kernel is simply not given).  The program goes at
    ``program_addr``, by default after every operand.
    """
    if len(inputs) != len(kernels):
        raise KernelError(f"{len(kernels)} kernels but {len(inputs)} input mappings")
    program = link(kernels)
    if program_addr is None:
        program_addr = _cdiv(max(kernel.data_end for kernel in kernels), OPERAND_ALIGN) * OPERAND_ALIGN
    for kernel, values in zip(kernels, inputs, strict=True):
        for name, value in values.items():
            if name not in kernel.operands:
                raise KernelError(f"{kernel.name} kernel has no operand {name!r}")
            operand = kernel.operands[name]
            value = np.asarray(value)
            if value.shape != operand.shape:
                raise KernelError(f"{kernel.name} operand {name!r} has shape {operand.shape}, "
                                  f"not {value.shape}")
            device.write(operand.addr, value.astype(operand.dtype))
    status = device.run(program, base=program_addr, max_cycles=max_cycles)
    results = []
    for kernel in kernels:
        outputs = {op.name: device.read_array(op.addr, op.shape, op.dtype) for op in kernel.outputs()}
        counters = parse_snapshot(device.read(kernel.operands["counters"].addr, SNAPSHOT_BYTES))
        results.append(KernelResult(outputs, counters, status.cycles))
    return results


def run_kernel(device, kernel: Kernel, inputs: Mapping[str, np.ndarray], **options) -> KernelResult:
    """:func:`run_kernels` for one kernel."""
    return run_kernels(device, [kernel], [inputs], **options)[0]


def utilisation(kernel_or_counters: Kernel | Mapping[str, int], config: Config | None = None) -> float:
    """Useful-MAC utilisation ``macs / (cycles * rows * cols)`` of a kernel's prediction or a snapshot."""
    if isinstance(kernel_or_counters, Kernel):
        kernel = kernel_or_counters
        return kernel.macs / (kernel.predicted_cycles * kernel.config.rows * kernel.config.cols)
    if config is None:
        raise KernelError("utilisation of a counter snapshot needs the config")
    counters = kernel_or_counters
    return counters["macs"] / (max(1, counters["cycles"]) * config.rows * config.cols)

