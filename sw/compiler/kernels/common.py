"""What every kernel shares: the data types (:class:`Operand`, :class:`Kernel`, :class:`KernelResult`),
argument checks, the unit streams and their merge into one program, operand placement, the epilogue
options of GEMM and convolution, the geometry of convolution and pooling windows, VECTOR helpers, and
the host-side helpers (:func:`pack_params`, :func:`link`, :func:`run_kernel`, :func:`run_kernels`,
:func:`utilisation`).

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
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import dataclasses
import functools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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
from braze.isa.arith import TABLE_ENTRIES
from braze.isa.asm import disassemble
from braze.isa.errors import BrazeError
from braze.isa.model import program_events
from braze.isa.timing import (
    LOAD_SLOT_CYCLES,
    MatmulPipe,
    Scheduler,
    epilogue_runs_beside,
    instruction_cycles,
    load_handover_cycles,
    matmul_clear_of_epilogue,
    table_rows,
    timing_key,
)

__all__ = [
    "KernelError", "Operand", "Kernel", "KernelResult", "conv2d_output_shape",
    "CandidatePruned", "prune_above", "prune_cutoff",
    "pack_params", "link", "run_kernel", "run_kernels", "utilisation", "MAX_VECTOR_MULT", "OPERAND_ALIGN",
]

#: Alignment of operands that the caller leaves to the kernel to place.
OPERAND_ALIGN = 64
#: Largest multiplier of VECTOR ``mul`` (its ``imm`` field is int16).
MAX_VECTOR_MULT = (1 << 15) - 1


class KernelError(BrazeError, ValueError):
    """A kernel cannot be generated for these shapes, options or configuration."""


class _Unorderable(Exception):
    """The streams need more tokens in flight than the token queues hold (retry with fewer slots)."""


class CandidatePruned(Exception):
    """A candidate tiling was not generated: its streams' lower bound (:meth:`_Streams.merge_bounded`)
    reached the cycles it had to beat (:func:`prune_above`), so it cannot be the fastest.

    ``instructions``: how many its kernel would hold (it orders with the token queues: a candidate that
    does not is never pruned, it does not build).
    """

    def __init__(self, lower_bound: int, instructions: int):
        super().__init__(f"lower bound {lower_bound} cycles")
        self.lower_bound = lower_bound
        self.instructions = instructions


#: Cycles a forced tiling must beat to be generated (see :func:`prune_above`); None: generate it.
_PRUNE_ABOVE: contextvars.ContextVar[float | None] = contextvars.ContextVar("braze_prune_above", default=None)


@contextlib.contextmanager
def prune_above(cycles: float | None) -> Iterator[None]:
    """Meanwhile, a GEMM or convolution built with a forced ``tiling`` whose lower bound is at least
    ``cycles`` raises :class:`CandidatePruned` instead of being generated (None: no pruning)."""
    token = _PRUNE_ABOVE.set(cycles)
    try:
        yield
    finally:
        _PRUNE_ABOVE.reset(token)


def prune_cutoff() -> float | None:
    """The cycles set by the innermost :func:`prune_above` in force (None: no pruning)."""
    return _PRUNE_ABOVE.get()


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

    def __post_init__(self):
        # A build without a VECTOR unit (Config.vector_unit=0) stops at a VECTOR with ILLEGAL_OPCODE: no
        # kernel of that configuration may hold one (the lowering runs such a node on the host instead).
        if not self.config.vector_unit and any(insn.opcode is Opcode.VECTOR for insn in self.instructions):
            raise KernelError(f"the {self.name} kernel needs the VECTOR unit, which config "
                              f"{self.config.name!r} lacks (vector_unit=0)")

    def program(self, *, halt: bool = True) -> list[Instruction]:
        """The instructions, followed by HALT unless ``halt`` is false."""
        return self.instructions + ([Instruction.make(Opcode.HALT)] if halt else [])

    @property
    def asm(self) -> str:
        """The instructions as assembly text (the disassembler's)."""
        return disassemble(self.instructions)

    @functools.cached_property
    def events(self) -> dict[str, int]:
        """The exact counters its snapshot will hold -- MACs, row accesses, external bytes and beats,
        instructions -- known before it runs (:func:`braze.isa.model.program_events`; computed once)."""
        body = [insn for insn in self.instructions if insn.opcode is not Opcode.COUNTERS]
        if any(insn.opcode is Opcode.BRANCH for insn in body):
            # A program with loops (also one read back from the kernel cache as a plain Kernel).
            from .loops import dispatched_events
            return dispatched_events(body, self.config)
        return program_events(body, self.config)

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
#: The token queues (producer, consumer), numbered for :meth:`_Streams.merge_timed`.
_QUEUES = tuple(_PUSH_FLAG)
_QUEUE_NUMBER = {queue: number for number, queue in enumerate(_QUEUES)}
#: Each token queue's producer and consumer unit, by queue number, as positions in _STREAM_UNITS.
_QUEUE_PRODUCER = tuple(_STREAM_UNITS.index(producer) for producer, _ in _QUEUES)
_QUEUE_CONSUMER = tuple(_STREAM_UNITS.index(consumer) for _, consumer in _QUEUES)


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


class _Op:
    """One instruction of a stream and the token queues (:data:`_QUEUES` numbers) it pops from and pushes
    to.  A plain class with slots: a candidate kernel makes thousands, most without tokens (the queue
    lists are made on the first token).  ``cycles``: its :func:`~braze.isa.timing.instruction_cycles`
    once :meth:`_Streams.transfer_bound` has worked them out (-1 before), so that the merge after it
    does not work them out again (its dependency flags do not change them)."""

    __slots__ = ("insn", "pop_queues", "push_queues", "cycles")

    def __init__(self, insn: Instruction):
        self.insn = insn
        self.pop_queues: list[int] = _NO_QUEUES
        self.push_queues: list[int] = _NO_QUEUES
        self.cycles = -1

    @property
    def flags(self) -> frozenset[str]:
        """The dependency flags its tokens need."""
        return _queue_flags(tuple(self.pop_queues), tuple(self.push_queues))


#: The queue list of an _Op without tokens (shared, never appended to: _Streams.add replaces it).
_NO_QUEUES: list[int] = []


@functools.cache
def _queue_flags(pops: tuple[int, ...], pushes: tuple[int, ...]) -> frozenset[str]:
    return frozenset([_POP_FLAG[_QUEUES[queue]] for queue in pops]
                     + [_PUSH_FLAG[_QUEUES[queue]] for queue in pushes])


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
        # ``buffer.group or buffer`` is _Buffer.tracked, inlined: this runs once per instruction of every
        # candidate kernel.
        if reads:
            reads = [buffer.group or buffer for buffer in reads]
            if len(reads) > 1:
                reads = list(dict.fromkeys(reads))
        if writes:
            writes = [buffer.group or buffer for buffer in writes]
            if len(writes) > 1:
                writes = list(dict.fromkeys(writes))
        unit = insn.unit
        ops = self.ops.get(unit)
        if ops is None:
            raise AssertionError(f"{insn!r} is not a unit instruction")
        # The latest instruction of each other unit this one must wait for.
        wait: dict[Unit, int] = {}
        for buffer in reads:
            writer = buffer.writer
            if writer is not None and writer[0] is not unit and wait.get(writer[0], -1) < writer[1]:
                wait[writer[0]] = writer[1]
        for buffer in writes:
            writer = buffer.writer
            if writer is not None and writer[0] is not unit and wait.get(writer[0], -1) < writer[1]:
                wait[writer[0]] = writer[1]
            for reader, index in buffer.readers.items():
                if reader is not unit and wait.get(reader, -1) < index:
                    wait[reader] = index
        op = _Op(insn)
        for producer, index in wait.items():
            queue = (producer, unit)
            number = _QUEUE_NUMBER.get(queue)
            if number is None:
                raise AssertionError(f"{insn!r} depends on the {producer.name.lower()} unit, "
                                     "which has no token queue to it")
            if index > self._waited[queue]:
                producer_op = self.ops[producer][index]
                if producer_op.push_queues is _NO_QUEUES:
                    producer_op.push_queues = []
                producer_op.push_queues.append(number)
                if op.pop_queues is _NO_QUEUES:
                    op.pop_queues = []
                op.pop_queues.append(number)
                self._waited[queue] = index
        here = len(ops)
        ops.append(op)
        for buffer in reads:
            buffer.readers[unit] = here
        if writes:
            writer = (unit, here)
            for buffer in writes:
                buffer.writer = writer
                buffer.readers = {}

    def add_writes(self, insns: Sequence[Instruction], buffer: _Buffer) -> None:
        """:meth:`add` each of ``insns`` (instructions of one opcode, in order) writing ``buffer``: after the
        first, none waits for anything -- the unit wrote the buffer last and no one read it since --
        so the rest are only appended (the many LOADs of a gathered A tile)."""
        if not insns:
            return
        self.add(insns[0], writes=[buffer])
        opcode, unit = insns[0].opcode, insns[0].unit
        ops = self.ops[unit]
        for insn in insns[1:]:
            if insn.opcode is not opcode:
                raise AssertionError(f"add_writes: {insn!r} is not a {opcode.name} as the first is")
            ops.append(_Op(insn))
        (buffer.group or buffer).writer = (unit, len(ops) - 1)

    def transfer_bound(self, counters_addr: int) -> int:
        """A lower bound on :meth:`merge_bounded`'s bound (and so on the timing model's cycles) without
        merging: the LOADs' time on the load data bus (with ``load_overlap``: each one's data and
        handover, as that bound relaxes them; without, each whole, one after another), the STOREs' on
        the store unit, or one dispatch per instruction, whichever is most, then the closing COUNTERS
        and HALT.  Each is a sum that :meth:`merge_bounded`'s schedule never goes under, in any order."""
        config = self.config
        overlapped = config.load_overlap > 1
        handover, zero_handover = load_handover_cycles(config), load_handover_cycles(config, zero=True)
        mem_latency = config.mem_latency
        load = 0
        for op in self.ops[Unit.LOAD]:
            took = op.cycles = instruction_cycles(op.insn, config)
            if overlapped:
                args = op.insn.args
                load += (args["rows"] + zero_handover if args["zero"] else took - mem_latency - 1 + handover)
            else:
                load += took
        store = 0
        for op in self.ops[Unit.STORE]:
            op.cycles = instruction_cycles(op.insn, config)
            store += op.cycles
        total = sum(len(ops) for ops in self.ops.values())
        closing = Instruction.make(Opcode.COUNTERS, dram=counters_addr, reset=True)
        halt = Instruction.make(Opcode.HALT)
        closing_cycles = instruction_cycles(closing, config) + instruction_cycles(halt, config)
        return max(load, store, total) + closing_cycles

    def merge(self) -> list[Instruction]:
        """One program: the streams interleaved by estimated start time, within token capacity."""
        return self.merge_timed()[0]

    def merge_timed(self) -> tuple[list[Instruction], list[int]]:
        """:meth:`merge`, and each instruction's :func:`~braze.isa.timing.instruction_cycles`."""
        program, cycles, _ = self.merge_bounded(None)
        return program, cycles

    def merge_bounded(self, counters_addr: int | None) -> tuple[list[Instruction], list[int], int]:
        """:meth:`merge_timed`, and the cycles that the program :func:`_finish` makes of it (closed by
        COUNTERS at ``counters_addr``, then HALT) takes at least under the timing model (0 when
        ``counters_addr`` is None).

        The bound is a relaxation of :class:`~braze.isa.timing.Scheduler`: one instruction dispatched a
        cycle in program order, not before the unit's queue has room (``queue_depth``); each unit runs
        its stream in order, an instruction starts after the token it pops was pushed (the k-th pop of
        a queue takes the k-th push), overlapped LOADs share one data bus in order, at most
        ``load_overlap`` of them in flight -- and nothing else waits (no token capacity, no hold of the
        dispatcher or the compute unit beside a PREDICATE or EPILOGUE).  With ``epilogue_overlap`` (and
        ``matmul_overlap``) the compute unit's times follow :class:`_OverlappedComputeBound`.  Every
        time there is at most the scheduler's, so a tiling whose bound reaches another's predicted cycles
        cannot be faster: it need not be scheduled and encoded to be ruled out
        (:func:`~.matmul._candidate`).
        """
        token_depth = self.config.token_depth
        config = self.config
        # State by position in _STREAM_UNITS and by token queue number (_QUEUES), not by enum.
        streams = [self.ops[unit] for unit in _STREAM_UNITS]
        lengths = [len(ops) for ops in streams]
        heads = [0, 0, 0]
        unit_free = [0, 0, 0]
        push_times: list[list[int]] = [[] for _ in _QUEUES]
        popped = [0] * len(_QUEUES)
        program: list[Instruction] = []
        cycles: list[int] = []
        # Each unit's head: its estimated start, or -1 if it cannot go yet (a token it pops not pushed, or
        # a queue it pushes to full), or None if that must be worked out again.  A head's answer changes
        # only when its unit goes or a queue it pops from (or pushes to) gets a token (or loses one), so
        # most steps work out one head, not three.
        head_start: list[int | None] = [None, None, None]
        # The relaxed schedule of the bound: the next dispatch, the starts of each unit's last queue_depth
        # instructions (their queue slots), when each unit is free, each token pushed, the overlapped load
        # engine takes the next LOAD, the load data bus is free, the ends of the last load_overlap LOADs;
        # the last retire.
        bounding = counters_addr is not None
        overlapped = config.load_overlap > 1
        handover, zero_handover = load_handover_cycles(config), load_handover_cycles(config, zero=True)
        mem_latency = config.mem_latency
        queue_depth = config.queue_depth
        next_dispatch = 0
        queued = [collections.deque(maxlen=queue_depth) for _ in _STREAM_UNITS]
        load_ends: collections.deque[int] = collections.deque(maxlen=config.load_overlap)
        free = [0, 0, 0]
        pushed_at: list[list[int]] = [[] for _ in _QUEUES]
        issue_free = data_end = retired = 0
        # With epilogue_overlap (and matmul_overlap) the compute unit's times are bounded apart.
        compute = (_OverlappedComputeBound(config) if bounding and config.epilogue_overlap
                   else None)
        total = sum(lengths)
        closing_cycles = 0
        if bounding:
            closing = Instruction.make(Opcode.COUNTERS, dram=counters_addr, reset=True)
            closing_cycles = (instruction_cycles(closing, config)
                              + instruction_cycles(Instruction.make(Opcode.HALT), config))
        for _ in range(total):
            best_start = best = -1
            for u in (0, 1, 2):
                start = head_start[u]
                if start is None:
                    start = -1
                    head = heads[u]
                    if head < lengths[u]:
                        op = streams[u][head]
                        start = unit_free[u]
                        for queue in op.pop_queues:
                            if popped[queue] >= len(push_times[queue]):
                                start = -1
                                break
                            pushed = push_times[queue][popped[queue]]
                            if pushed > start:
                                start = pushed
                        if start >= 0:
                            for queue in op.push_queues:
                                if len(push_times[queue]) - popped[queue] >= token_depth:
                                    start = -1
                    head_start[u] = start
                if start >= 0 and (best < 0 or start < best_start):
                    best_start, best = start, u
            if best < 0:
                raise _Unorderable(f"the streams need more than token_depth={token_depth} tokens in flight")
            op = streams[best][heads[best]]
            heads[best] += 1
            head_start[best] = None
            pops, pushes = op.pop_queues, op.push_queues
            # The flags are legal for the unit by construction (_PUSH_FLAG/_POP_FLAG).
            insn = op.insn.with_deps(op.insn.deps | op.flags) if pops or pushes else op.insn
            took = op.cycles if op.cycles >= 0 else instruction_cycles(insn, config)
            if compute is not None and best == 1:
                dispatch = next_dispatch
                slots = queued[1]
                if len(slots) == queue_depth and slots[0] > dispatch:
                    dispatch = slots[0]
                next_dispatch = dispatch + 1
                start, free[1], end = compute.schedule(insn, took, dispatch, free[1],
                                                       [pushed_at[queue][popped[queue]] for queue in pops])
                slots.append(start)
                for queue in pushes:
                    pushed_at[queue].append(end)
                if end > retired:
                    retired = end
            elif bounding:
                dispatch = next_dispatch
                slots = queued[best]
                if len(slots) == queue_depth and slots[0] > dispatch:
                    dispatch = slots[0]
                next_dispatch = dispatch + 1
                loading = best == 0 and overlapped
                # (Comparisons rather than max(): this runs for every instruction of every candidate.)
                if loading:
                    start = issue_free if issue_free > dispatch else dispatch
                    if len(load_ends) == load_ends.maxlen and load_ends[0] + LOAD_SLOT_CYCLES > start:
                        start = load_ends[0] + LOAD_SLOT_CYCLES
                else:
                    start = free[best] if free[best] > dispatch else dispatch
                for queue in pops:
                    if pushed_at[queue][popped[queue]] > start:
                        start = pushed_at[queue][popped[queue]]
                # A PREDICATE, and with epilogue_overlap an EPILOGUE, may run beside the compute unit: 1
                # cycle at least (the EPILOGUE's tokens come at its end).
                beside = best == 1 and (insn.opcode is Opcode.PREDICATE or epilogue_runs_beside(insn, config))
                end = start + (1 if beside else took)
                if loading:
                    args = insn.args
                    issue_free = start + (1 if args["zero"] else args["rows"] + 1)
                    # Its beats: what instruction_cycles adds to the memory latency and the request.
                    data = args["rows"] if args["zero"] else took - mem_latency - 1
                    data_end += data + (zero_handover if args["zero"] else handover)
                    if end > data_end:
                        data_end = end
                    end = data_end if data_end > free[0] else free[0]     # LOADs retire in program order
                    load_ends.append(end)
                slots.append(start)
                free[best] = end
                if beside and insn.opcode is Opcode.EPILOGUE:
                    end = start + took
                for queue in pushes:
                    pushed_at[queue].append(end)
                if end > retired:
                    retired = end
            for queue in pops:
                popped[queue] += 1
                head_start[_QUEUE_PRODUCER[queue]] = None     # room in the queue it pushes to
            end = best_start + took
            for queue in pushes:
                push_times[queue].append(end)
                head_start[_QUEUE_CONSUMER[queue]] = None     # a token it may pop
            unit_free[best] = end
            program.append(insn)
            cycles.append(took)
        if not bounding:
            return program, cycles, 0
        return program, cycles, max(retired, next_dispatch, total) + closing_cycles


class _OverlappedComputeBound:
    """The compute unit's times in :meth:`_Streams.merge_bounded` with ``epilogue_overlap`` (and
    ``matmul_overlap``): each at most :class:`~braze.isa.timing.Scheduler`'s.

    An EPILOGUE that runs beside the unit frees it the next cycle; a later compute instruction starts
    after that EPILOGUE has retired (pushed its tokens) unless it is a MATMUL clear of its rows (with
    ``matmul_overlap``, a MATMUL not clear of them once it has ended), and retires after it.
    With ``matmul_overlap`` the MATMULs go through a :class:`~braze.isa.timing.MatmulPipe` of their own,
    retiring in program order: a MATMUL right after a MATMUL (or after an EPILOGUE that started beside
    one) starts once the pipe accepts it; an EPILOGUE beside a MATMUL clear of its rows starts once the
    MATMUL before that one is done and retires after it; anything else waits for the last MATMUL."""

    def __init__(self, config: Config):
        self.config = config
        self.pipe = MatmulPipe(config) if config.matmul_overlap else None
        # The last MATMUL, whether it was the unit's last instruction, whether the next MATMUL may be
        # accepted early, the cycle after an EPILOGUE past a MATMUL started, the done cycles of the last
        # two MATMULs; the last EPILOGUE beside the unit, its end and its retire.
        self.last_matmul: Instruction | None = None
        self.matmul_last = self.matmul_follows = False
        self.matmul_floor = self.matmul_done = self.matmul_done_before = 0
        self.epilogue: Instruction | None = None
        self.epilogue_end = self.epilogue_retire = 0

    def schedule(self, insn: Instruction, took: int, dispatch: int, free: int, pushed: list[int]
                 ) -> tuple[int, int, int]:
        """(start, when the unit is free for the next instruction, when it pushes its tokens) of
        ``insn`` (``took`` cycles), dispatched at ``dispatch``, the unit free at ``free``, the tokens it
        pops pushed at ``pushed``."""
        config, pipe = self.config, self.pipe
        opcode = insn.opcode
        matmul = opcode is Opcode.MATMUL
        runs_beside = epilogue_runs_beside(insn, config)
        past_matmul = (pipe is not None and self.matmul_last and runs_beside
                       and matmul_clear_of_epilogue(self.last_matmul, insn, config))
        if pipe is not None and matmul and self.matmul_follows:
            start = max(dispatch, pipe.earliest_accept(), self.matmul_floor)
        elif past_matmul:
            start = max(dispatch, self.matmul_done_before, self.epilogue_retire)
        else:
            start = max(dispatch, free)
        epilogue = self.epilogue
        if epilogue is not None and not (matmul and matmul_clear_of_epilogue(insn, epilogue, config)):
            start = max(start, self.epilogue_end if matmul and pipe is not None else self.epilogue_retire)
        if pushed:
            start = max(start, *pushed)
        end = start + took
        if pipe is not None and matmul:
            end = max(pipe.accept(insn, start), self.matmul_done)   # MATMULs retire in program order
            self.matmul_done_before, self.matmul_done = self.matmul_done, end
            self.last_matmul = insn
        elif past_matmul:
            end = max(end, self.matmul_done + 1)       # after the MATMUL it started beside
            self.matmul_floor = start + 1
        if epilogue is not None and end <= self.epilogue_retire:
            end = self.epilogue_retire + 1             # after the EPILOGUE beside the unit
        if pipe is not None:
            self.matmul_follows = matmul or past_matmul
            self.matmul_last = matmul
        if runs_beside:
            self.epilogue, self.epilogue_end, self.epilogue_retire = insn, start + took, end
        beside = runs_beside or (opcode is Opcode.PREDICATE)
        return start, start + 1 if beside else end, end


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
            param_rows: tuple[str, ...] = (), tiling: dict | None = None,
            merged: tuple[list[Instruction], list[int]] | None = None) -> Kernel:
    """The kernel of ``streams``: merged (or ``merged``, what :meth:`_Streams.merge_timed` gave), closed by
    COUNTERS, and priced by the timing model."""
    instructions, took = streams.merge_timed() if merged is None else merged
    instructions.append(Instruction.make(Opcode.COUNTERS, dram=operands["counters"].addr, reset=True))
    # schedule(instructions + [HALT]).cycles, reusing the instruction cycles the merge computed.
    scheduler = Scheduler(config, keep_entries=False)
    for insn, insn_cycles in zip(instructions, took, strict=False):
        scheduler.add_keyed(insn, timing_key(insn, config, insn_cycles))
    for insn in instructions[len(took):] + [Instruction.make(Opcode.HALT)]:
        scheduler.add(insn)
    cycles = scheduler.cycles
    return Kernel(name, config, instructions, operands, macs, cycles, param_rows, dict(tiling or {}))


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
            raise KernelError(f"act must be one of none, relu, clip, table, not {act!r}") from None
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
    if act is Activation.CLIP and out == "int8" and lo <= -128 and hi >= 127:
        # A clip to the whole int8 range before the int8 saturation changes nothing (isa.arith.epilogue:
        # activate, then saturate): no activation, so no CLIP CONFIGs.  A quantized ReLU whose output zero
        # point is -128 is one (the digits CNN's convolutions); and the fusion engine's separate and fused
        # forms of such a convolution are then one kernel, generated once.
        act, lo, hi = Activation.NONE, 0, 0
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
    if epi.act is Activation.TABLE:
        specs.append(_table_spec())
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


def _table_spec() -> _OperandSpec:
    return _OperandSpec("table", (TABLE_ENTRIES,), "i1",
                        "activation table: entry e for the int8 input with two's-complement byte e", "param")


def _load_table(streams: _Streams, spad: _Allocator, table: Operand) -> None:
    """LOAD the ``table`` operand into scratchpad rows and write it into the activation table (TABLE):
    once per kernel, before its first EPILOGUE (the compute unit runs them in order)."""
    config = streams.config
    rows = table_rows(config)
    buffer = spad.take("table", rows)
    streams.add(Instruction.make(Opcode.LOAD, mem=Memory.SPAD, addr=buffer.start, rows=rows, len=config.cols,
                                 dram=table.addr, stride=config.cols), writes=[buffer])
    streams.add(Instruction.make(Opcode.TABLE, addr=buffer.start), reads=[buffer])


def pack_table(table: Any) -> np.ndarray:
    """The ``table`` operand of a kernel with a table activation: 256 int8 entries, entry ``e`` for the
    int8 input whose two's-complement byte is ``e`` (:func:`braze.sw.compiler.tables.table_of`)."""
    values = np.asarray(table)
    if values.shape != (TABLE_ENTRIES,) or values.dtype.kind not in "iu" \
            or values.min() < -128 or values.max() > 127:
        raise KernelError(f"an activation table is {TABLE_ENTRIES} int8 entries, not {values.dtype} "
                          f"of shape {values.shape}")
    return values.astype(np.int8)


# ---------------------------------------------------------------------------------------------------------
# Windows of convolution and pooling

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


class _SegmentList(list):
    """Segments in local-row order; a run that continues the previous one (zeros after zeros, or the
    same external stride) is merged into it, so it becomes one LOAD."""

    def emit(self, local: int, rows: int, dram: int | None, stride_bytes: int) -> None:
        if rows <= 0:
            return
        if self:
            last = self[-1]
            contiguous = last.local + last.rows == local
            if contiguous and dram is None and last.dram is None:
                last.rows += rows
                return
            if (contiguous and dram is not None and last.dram is not None and last.stride == stride_bytes
                    and last.dram + last.rows * last.stride == dram):
                last.rows += rows
                return
        self.append(_Segment(local, rows, dram, stride_bytes))

    def row(self, local: int, n: int, oy: int, ox_first: int, ox_step: int, count: int, *, H: int, W: int,
            C: int, stride: int, pad: int, ky: int, kx: int, x_addr: int, channel: int) -> None:
        """Tap (ky, kx) of ``count`` output pixels of row ``oy`` of image ``n``, at ``ox = ox_first +
        j*ox_step``, into local rows ``local + j``: one strided LOAD for those inside the input, zeros
        for those in the padding."""
        iy = oy * stride + ky - pad
        # Valid j: 0 <= (ox_first + j*ox_step)*stride + kx - pad < W.
        lo = max(0, _cdiv(pad - kx - ox_first * stride, ox_step * stride))
        hi = min(count, (W - 1 + pad - kx - ox_first * stride) // (ox_step * stride) + 1)
        if not 0 <= iy < H or hi <= lo:
            self.emit(local, count, None, 0)
            return
        self.emit(local, lo, None, 0)
        ix = (ox_first + lo * ox_step) * stride + kx - pad
        self.emit(local + lo, hi - lo, x_addr + ((n * H + iy) * W + ix) * C + channel, ox_step * stride * C)
        self.emit(local + hi, count - hi, None, 0)


def _window_segments(N: int, H: int, W: int, C: int, Ho: int, Wo: int, stride: int, pad: int, ky: int,
                     kx: int, first: int, count: int, x_addr: int, channel: int) -> list[_Segment]:
    """Where the tap (ky, kx) of output pixels first..first+count-1 (flattened n, oy, ox) lies in an
    NHWC input: runs of pixels read with one strided LOAD, and runs in the padding (None)."""
    segments = _SegmentList()
    pixel = first
    end = first + count
    while pixel < end:
        n, rest = divmod(pixel, Ho * Wo)
        oy, ox0 = divmod(rest, Wo)
        ox1 = min(Wo, ox0 + end - pixel)          # this output row's part of the range
        segments.row(pixel - first, n, oy, ox0, 1, ox1 - ox0, H=H, W=W, C=C, stride=stride, pad=pad, ky=ky,
                     kx=kx, x_addr=x_addr, channel=channel)
        pixel += ox1 - ox0
    return list(segments)


# ---------------------------------------------------------------------------------------------------------
# VECTOR helpers shared by pooling and element-wise kernels

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
