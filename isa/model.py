"""The bit-exact reference model of the accelerator.

:class:`Machine` holds the whole architectural state in numpy arrays and
executes a program fetched from its external memory, one instruction at a
time **in program order**.  The hardware runs its load, compute and store
units decoupled, so the model's results are the hardware's only if program
order is a valid execution of the program; the model checks that:

* **DEADLOCK** -- an instruction pops a token that no earlier instruction (in
  program order) pushed, or pushes into a token queue already holding
  ``token_depth`` tokens that only later instructions would pop;
* **RACE** -- two instructions on different units touch overlapping
  scratchpad rows, accumulator rows or external bytes (at least one of them
  writing) with no happens-before between them.  Happens-before is program
  order within a unit, the k-th pop of a token queue after the k-th push,
  and barriers (FENCE, COUNTERS, HALT), which order everything before them
  before everything after them.  The detector keeps a vector clock per
  unit and, per memory and unit, numpy shadow arrays holding the sequence
  number of the unit's last read and last write of every row/byte (the
  FastTrack idea); each access is then a few vectorised comparisons.

Each instruction is checked in this order, and one that fails a check has
no effect: fetch (FETCH_ERROR past the end of external memory), decoding
(:class:`~braze.isa.IllegalInstruction` from :func:`braze.isa.decode`), the
range rules (:func:`check_ranges`), the overlap rule (:func:`check_overlap`),
tokens (DEADLOCK), external-memory range (DRAM_RANGE), races (RACE).  Every
error carries the byte address of the instruction in external memory as its
``pc``.

Instruction fetch reads external memory like the hardware, 16 bytes per
instruction starting at ``program_addr``; the model does not check races
between fetch and STOREs that overwrite the program.  Within one
instruction every source row is read before any destination row is
written; the hardware matches this because :func:`check_overlap` only lets
source and destination rows in one memory be the same rows or disjoint.

Exact performance counters (``exact`` in :mod:`braze.isa.counters`) are
counted here and must equal the hardware's.  The timing counters
(``cycles``, ``*_busy``, ``stall_dep``) are the prediction of
:mod:`braze.isa.timing`; ``stall_axi_*`` and ``stall_fetch`` stay 0.  They
are kept per counting period: a COUNTERS snapshot latches ``cycles`` as the
cycle the COUNTERS instruction starts (in the schedule) minus the cycle of
the last reset (the start of the run, or the start of the last COUNTERS
with ``reset``); ``*_busy`` and ``stall_dep`` sum over the instructions of
the period, which barriers delimit exactly.  After HALT, ``cycles`` is the
cycle HALT ends minus the cycle of the last reset.

:meth:`Machine.run` starts a run with counters, token queues, the race
detector and the timing model cleared; memories and configuration
registers keep their contents across runs.

Watchdog
--------
With ``cycle_limit=L`` (the hardware's ``CYCLE_LIMIT``; 0 or None: no limit) the run stops
with :class:`WatchdogError` (cause ``WATCHDOG``) at the first instruction, in program order,
that the timing model does not dispatch before cycle L: a load/compute/store instruction whose
``dispatch`` is L or later, a barrier whose ``start`` is (FENCE and HALT retire when they start,
COUNTERS leaves the dispatcher when it starts), or, for a word that cannot be fetched, decoded
or range-checked, or a token pop/push that can never be served, the cycle the dispatcher would
take it.  That instruction's pc is the error's; it has no effect, and the run's cycles are L.
This is the hardware's rule (:class:`braze.hw.control.Control`) on the timing model's clock:
the model's cycles are a prediction, so the model and the hardware stop at the same cycle with
the same cause, at the same pc where the prediction of the dispatch times holds.  The model
runs the instructions before that pc; the hardware drops the ones it had dispatched but not
started, which, as after any error, leaves memory defined up to the last barrier.

Plans
-----
Everything these checks, the schedule and the counters depend on is in the
instruction words fetched (with the configuration and the base address),
never in the data.  So :meth:`Machine.run` does not interpret a program
instruction by instruction: it first compiles it -- decoding each word once,
checking, scheduling and counting it with the functions below and in
:mod:`braze.isa.timing`, deciding races on the same vector clocks with
interval lists instead of shadow arrays where it can -- into a plan: the
numpy operations that move data, in program order, and the outcome (the
counters, every COUNTERS snapshot, the error or the HALT).  Replaying the
plan leaves the machine exactly as the instruction-by-instruction executor
(:meth:`Machine._run_reference`) does; that executor still runs with
``Machine(..., fast=False)``, for subclasses that override a part of it, and
for a program that writes over its own instructions ahead of the writer.
The reference path executes a program with control flow (PREDICATE, BRANCH, SCALAR) in the
order instructions are dispatched (branches taken), with registers resolved at dispatch
(:func:`resolve_registers`); tokens, races, counters and the watchdog are checked on that
dynamic order, iteration by iteration.  The plans follow the same order: SCALAR, BRANCH and the
register offsets depend only on the registers, so the compiler (:meth:`Machine._walk`) keeps
them itself, and a loop whose registers the program sets is planned like straight-line code.
Only two things are not in the words: a register read before the run writes it (the host's
value) and a PREDICATE's result (the data).  At each of these checkpoints the plan ends a
stretch; a run replays the stretch, reads the value -- the register, or the PREDICATE over the
rows its operations have just written -- and goes on with the stretch kept for that value, or,
the first time a value is seen, walks the program on from there (moving the data as it goes)
and keeps what it finds.  So a program with control flow is a tree of plans with a course per
outcome (:class:`_Plan`), replayed at the speed of straight-line code once its courses are
known.  Plans are kept per machine, keyed by the program's bytes: a run whose
program bytes at its base are unchanged only replays the data movement, as
the runtime does for every batch.  Errors raised from a plan are the
reference code's, with the same cause, pc and message.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import gc
from collections import deque
from collections.abc import Sequence

import numpy as np

from . import arith
from .config import Config
from .counters import COUNTER_BYTES, COUNTERS, SNAPSHOT_BYTES, Counter, check_cycle_limit, instret_counter
from .encoding import (
    CONTROL_FLOW_OPCODES,
    INSN_BYTES,
    REGISTER_OFFSETS,
    SCALAR_REGS,
    UNARY_VECTOR_OPS,
    Activation,
    BranchCond,
    ConfigReg,
    ErrorCause,
    Instruction,
    Memory,
    Opcode,
    PredicateOp,
    Unit,
    decode,
    encode_program,
)
from .errors import BrazeError, ExecutionError, IllegalInstruction
from .timing import (
    BARRIER_OPCODES,
    BUSY_COUNTER,
    QUEUED_UNITS,
    TOKEN_QUEUES,
    ScheduledInstruction,
    Scheduler,
    axi_beats,
    element_bytes,
    table_rows,
    timing_key,
    token_queues,
)

__all__ = [
    "Machine", "DispatchTracer", "RunResult", "RaceError", "WatchdogError", "InstructionLimitExceeded",
    "ScalarRegisterError", "branch_taken", "check_scalar_write", "resolve_registers", "check_ranges",
    "check_overlap", "run_program", "instruction_accesses", "program_events",
]



class RaceError(ExecutionError):
    """Two instructions on different units access the same memory unordered.

    ``pc`` is the later instruction's address, ``other_pc`` the earlier one's.
    """

    def __init__(self, detail: str, *, pc: int | None, other_pc: int | None):
        self.other_pc = other_pc
        super().__init__(ErrorCause.RACE, detail, pc=pc)


class WatchdogError(ExecutionError):
    """The run reached its cycle limit before HALT (cause ``WATCHDOG``); ``cycle_limit`` is the limit."""

    def __init__(self, cycle_limit: int, pc: int):
        self.cycle_limit = cycle_limit
        super().__init__(ErrorCause.WATCHDOG, f"no HALT within the cycle limit of {cycle_limit} run cycles",
                         pc=pc)


class ScalarRegisterError(BrazeError, ValueError):
    """The host named a scalar register it cannot write, or a value that is not an int32."""


def branch_taken(cond: BranchCond, a: int, b: int) -> bool:
    """Whether a BRANCH with condition ``cond`` on register values ``a`` and ``b`` (int32) is taken."""
    if cond is BranchCond.ALWAYS:
        return True
    if cond is BranchCond.EQ:
        return a == b
    if cond is BranchCond.NE:
        return a != b
    if cond is BranchCond.LT:
        return a < b
    return a >= b


def resolve_registers(insn: Instruction, scalar_regs: Sequence[int]) -> Instruction:
    """``insn`` with its register offsets added to its address fields (see REGISTER_OFFSETS).

    Each named register's value is added to its field modulo the field's width, and the register
    field is cleared; an instruction that names no register is returned as it is.
    """
    offsets = REGISTER_OFFSETS.get(insn.opcode)
    if not offsets:
        return insn
    args = insn.args
    values = {}
    for field, register_field in offsets.items():
        register = args[register_field]
        if register:
            mask = (1 << insn.format.field(field).width) - 1
            values[field] = (args[field] + scalar_regs[register]) & mask
            values[register_field] = 0
    return insn.replace(**values) if values else insn


class InstructionLimitExceeded(BrazeError):
    """:meth:`Machine.run` executed ``max_instructions`` instructions without reaching HALT."""

    def __init__(self, limit: int, pc: int):
        self.limit = limit
        self.pc = pc
        super().__init__(f"no HALT after {limit} instructions (max_instructions={limit}); "
                         f"next instruction at byte 0x{pc:x}")


@dataclasses.dataclass
class RunResult:
    """The outcome of :meth:`Machine.run`.

    ``counters`` maps every counter name to its value after HALT;
    ``instructions`` counts the instructions executed (HALT included);
    ``cycles`` is the schedule's total length; ``timeline`` holds one
    :class:`~braze.isa.timing.ScheduledInstruction` per instruction, with
    its ``pc``.
    """

    status: str
    counters: dict[str, int]
    instructions: int
    cycles: int
    timeline: list[ScheduledInstruction]
    halt_pc: int


def _range_cause(memory: Memory) -> ErrorCause:
    return ErrorCause.SPAD_RANGE if memory is Memory.SPAD else ErrorCause.ACC_RANGE


def _mem_name(memory: Memory) -> str:
    return "scratchpad" if memory is Memory.SPAD else "accumulator"


def _range_failure(insn: Instruction, cause: ErrorCause, detail: str, pc: int | None) -> ExecutionError:
    return ExecutionError(cause, f"{insn.format.mnemonic}: {detail}", pc=pc)


def _rows_within(insn: Instruction, config: Config, pc: int | None, memory: Memory, first: int, count: int,
                 what: str) -> None:
    limit = config.spad_rows if memory is Memory.SPAD else config.acc_rows
    if first + count > limit:
        raise _range_failure(insn, _range_cause(memory),
                             f"{what} rows {first}..{first + count - 1} exceed the "
                             f"{limit} {_mem_name(memory)} rows of config {config.name!r}", pc)


def _width_within(insn: Instruction, config: Config, pc: int | None, name: str, value: int) -> None:
    if value > config.cols:
        raise _range_failure(insn, ErrorCause.TILE_RANGE,
                             f"{name}={value} exceeds cols={config.cols} of config {config.name!r}", pc)


def check_ranges(insn: Instruction, config: Config, *, pc: int | None = None) -> None:
    """Raise :class:`~braze.isa.ExecutionError` if ``insn`` breaks a range rule of ``config``.

    The config-dependent rules (ILLEGAL_OPCODE for an opcode the configuration lacks -- VECTOR with
    ``Config.vector_unit=0`` -- then TILE_RANGE, SPAD_RANGE, ACC_RANGE), checked
    in the architectural order; the first failure wins.  Arithmetic is exact
    (no wrap-around).  External-memory ranges are not checked here: they
    fail at execution (DRAM_RANGE).
    """
    op = insn.opcode
    a = insn.args
    if op is Opcode.VECTOR and not config.vector_unit:
        raise _range_failure(insn, ErrorCause.ILLEGAL_OPCODE,
                             f"config {config.name!r} has no VECTOR unit (vector_unit=0)", pc)
    if op is Opcode.LOAD or op is Opcode.STORE:
        _width_within(insn, config, pc, "len", a["len"])
        _rows_within(insn, config, pc, a["mem"], a["addr"], a["rows"], "local")
    elif op is Opcode.MATMUL:
        m = a["m"]
        _width_within(insn, config, pc, "n", a["n"])
        _rows_within(insn, config, pc, Memory.ACC, a["acc"], m, "C")
        chunks = -(-a["k"] // config.rows)
        last_a = a["a"] + (chunks - 1) * a["a_stride"]
        if last_a + m > config.spad_rows:
            raise _range_failure(
                insn, ErrorCause.SPAD_RANGE,
                f"A rows reach {last_a + m - 1} (a={a['a']}, {chunks} chunks of a_stride="
                f"{a['a_stride']}, m={m}), beyond the {config.spad_rows} scratchpad rows", pc)
        _rows_within(insn, config, pc, Memory.SPAD, a["b"], a["k"], "B")
    elif op is Opcode.EPILOGUE:
        m = a["m"]
        _width_within(insn, config, pc, "n", a["n"])
        _rows_within(insn, config, pc, Memory.ACC, a["src"], m, "source")
        if a["bias"]:
            _rows_within(insn, config, pc, Memory.ACC, a["bias_addr"], 1, "bias")
        if a["requant"]:
            _rows_within(insn, config, pc, Memory.ACC, a["quant_addr"], 2, "requantize parameter")
        if a["residual"]:
            _rows_within(insn, config, pc, Memory.SPAD, a["res_addr"], m, "residual")
        _rows_within(insn, config, pc, a["out"], a["dst"], m, "destination")
    elif op is Opcode.PREDICATE:
        _rows_within(insn, config, pc, a["mem"], a["addr"], a["rows"], "predicate")
    elif op is Opcode.TABLE:
        _rows_within(insn, config, pc, Memory.SPAD, a["addr"], table_rows(config), "table")
    elif op is Opcode.VECTOR:
        rows = a["rows"]
        _rows_within(insn, config, pc, a["src1_mem"], a["src1"], rows, "src1")
        if a["op"] not in UNARY_VECTOR_OPS and not a["use_imm"]:
            _rows_within(insn, config, pc, a["src2_mem"], a["src2"], rows, "src2")
        _rows_within(insn, config, pc, a["dst_mem"], a["dst"], rows, "destination")


def check_overlap(insn: Instruction, config: Config | None = None, *, pc: int | None = None) -> None:
    """Raise :class:`~braze.isa.ExecutionError` (OVERLAP) for source rows that partly overlap the destination.

    EPILOGUE (``src`` with ``out=acc``; ``res_addr`` with ``residual`` and
    ``out=spad``) and VECTOR (``src1``, and ``src2`` when it is read, in
    ``dst_mem``): a source range in the destination's memory must be the
    destination range itself or not overlap it, because the pipelined
    hardware may read a row of it before or after it is written.  Checked
    after :func:`check_ranges`; ``config`` is accepted for symmetry with it
    (the rule does not depend on the configuration).
    """
    op = insn.opcode
    if op is Opcode.EPILOGUE:
        sources = [("src", insn.src, Memory.ACC)]
        if insn.residual:
            sources.append(("res_addr", insn.res_addr, Memory.SPAD))
        dst_mem, count = insn.out, insn.m
    elif op is Opcode.VECTOR:
        sources = [("src1", insn.src1, insn.src1_mem)]
        if insn.op not in UNARY_VECTOR_OPS and not insn.use_imm:
            sources.append(("src2", insn.src2, insn.src2_mem))
        dst_mem, count = insn.dst_mem, insn.rows
    else:
        return
    for name, first, memory in sources:
        if memory is dst_mem and first != insn.dst and abs(first - insn.dst) < count:
            raise ExecutionError(
                ErrorCause.OVERLAP,
                f"{insn.format.mnemonic}: {name} rows {first}..{first + count - 1} overlap destination rows "
                f"{insn.dst}..{insn.dst + count - 1} of the {_mem_name(memory)} without being the same rows",
                pc=pc)


# ---------------------------------------------------------------------------------------------------------
# Race detection

_SPAD, _ACC, _DRAM = "scratchpad row", "accumulator row", "external byte"
_SPACE_OF = {Memory.SPAD: _SPAD, Memory.ACC: _ACC}
_UNIT_INDEX = {unit: i for i, unit in enumerate(QUEUED_UNITS)}

# (space, index, is_write); index is a slice or an integer array of rows/bytes.
Access = tuple[str, "slice | np.ndarray", bool]


def _dram_index(start: int, rows: int, stride: int, row_bytes: int) -> slice | np.ndarray:
    """The external bytes of a strided 2-D transfer, as a slice when they are contiguous."""
    if rows == 1 or stride == row_bytes:
        return slice(start, start + rows * row_bytes)
    firsts = start + np.arange(rows, dtype=np.int64) * stride
    return (firsts[:, None] + np.arange(row_bytes, dtype=np.int64)).ravel()


def _matmul_a_rows(insn: Instruction, first_chunk: int, end_chunk: int) -> np.ndarray:
    """Scratchpad rows of A for chunks ``first_chunk..end_chunk-1``, shape (chunks, m)."""
    return (insn.a + np.arange(first_chunk, end_chunk, dtype=np.int64)[:, None] * insn.a_stride
            + np.arange(insn.m, dtype=np.int64))


def instruction_accesses(insn: Instruction, config: Config) -> list[Access]:
    op = insn.opcode
    if op is Opcode.LOAD:
        result: list[Access] = [(_SPACE_OF[insn.mem], slice(insn.addr, insn.addr + insn.rows), True)]
        if not insn.zero:
            row_bytes = insn.len * element_bytes(insn.mem)
            result.append((_DRAM, _dram_index(insn.dram, insn.rows, insn.stride, row_bytes), False))
        return result
    if op is Opcode.STORE:
        row_bytes = insn.len * element_bytes(insn.mem)
        return [(_SPACE_OF[insn.mem], slice(insn.addr, insn.addr + insn.rows), False),
                (_DRAM, _dram_index(insn.dram, insn.rows, insn.stride, row_bytes), True)]
    if op is Opcode.MATMUL:
        chunks = -(-insn.k // config.rows)
        # With a_stride <= m the chunks' rows touch or overlap: one contiguous range.  Otherwise
        # they are disjoint and all within the scratchpad, so the index array stays small.
        a_rows = (slice(insn.a, insn.a + (chunks - 1) * insn.a_stride + insn.m) if insn.a_stride <= insn.m
                  else _matmul_a_rows(insn, 0, chunks).ravel())
        acc_rows = slice(insn.acc, insn.acc + insn.m)
        result = [(_SPAD, a_rows, False), (_SPAD, slice(insn.b, insn.b + insn.k), False)]
        if insn.accumulate or chunks > 1:
            result.append((_ACC, acc_rows, False))
        result.append((_ACC, acc_rows, True))
        return result
    if op is Opcode.EPILOGUE:
        result = [(_ACC, slice(insn.src, insn.src + insn.m), False)]
        if insn.bias:
            result.append((_ACC, slice(insn.bias_addr, insn.bias_addr + 1), False))
        if insn.requant:
            result.append((_ACC, slice(insn.quant_addr, insn.quant_addr + 2), False))
        if insn.residual:
            result.append((_SPAD, slice(insn.res_addr, insn.res_addr + insn.m), False))
        result.append((_SPACE_OF[insn.out], slice(insn.dst, insn.dst + insn.m), True))
        return result
    if op is Opcode.VECTOR:
        result = [(_SPACE_OF[insn.src1_mem], slice(insn.src1, insn.src1 + insn.rows), False)]
        if insn.op not in UNARY_VECTOR_OPS and not insn.use_imm:
            result.append((_SPACE_OF[insn.src2_mem], slice(insn.src2, insn.src2 + insn.rows), False))
        result.append((_SPACE_OF[insn.dst_mem], slice(insn.dst, insn.dst + insn.rows), True))
        return result
    if op is Opcode.PREDICATE:
        return [(_SPACE_OF[insn.mem], slice(insn.addr, insn.addr + insn.rows), False)]
    if op is Opcode.TABLE:
        # The activation table itself is the compute unit's alone (in queue order): no race on it.
        return [(_SPAD, slice(insn.addr, insn.addr + table_rows(config)), False)]
    return []  # CONFIG touches only compute-unit registers; barriers are ordered with everything.


class _RaceDetector:
    """Vector clocks per unit, and per (space, unit, read/write) shadow arrays of sequence numbers.

    Instruction ``seq`` numbers start at 1 and grow in program order; a shadow
    entry of 0 means "never accessed".  Unit v's access with sequence number
    s happens before the current instruction on unit u iff ``s <= clock[u][v]``.
    """

    def __init__(self, config: Config):
        self._sizes = {_SPAD: config.spad_rows, _ACC: config.acc_rows, _DRAM: config.dram_bytes}
        # Allocated on first use; np.zeros is lazily committed, so a large external memory is cheap.
        self._shadow: dict[tuple[str, Unit, bool], np.ndarray] = {}
        self._clock = {unit: [0] * len(QUEUED_UNITS) for unit in QUEUED_UNITS}
        self._tokens: dict[tuple[Unit, Unit], deque[list[int]]] = {}
        self._pc_of_seq: dict[int, int | None] = {}

    def _array(self, space: str, unit: Unit, write: bool) -> np.ndarray:
        key = (space, unit, write)
        array = self._shadow.get(key)
        if array is None:
            array = self._shadow[key] = np.zeros(self._sizes[space], dtype=np.int32)
        return array

    def barrier(self, seq: int) -> None:
        for unit in QUEUED_UNITS:
            self._clock[unit] = [seq] * len(QUEUED_UNITS)

    def instruction(self, insn: Instruction, seq: int, pc: int | None, accesses: list[Access]) -> None:
        if seq >= 1 << 31:
            raise OverflowError("the race detector numbers at most 2**31 - 1 instructions per run")
        unit = insn.unit
        clock = self._clock[unit]
        pops, pushes = token_queues(insn)
        for queue in pops:
            sent = self._tokens[queue].popleft()
            clock[:] = [max(a, b) for a, b in zip(clock, sent, strict=True)]
        clock[_UNIT_INDEX[unit]] = seq
        self._pc_of_seq[seq] = pc

        for space, index, write in accesses:
            for other in QUEUED_UNITS:
                if other is unit:
                    continue
                known = clock[_UNIT_INDEX[other]]
                for other_write in ((False, True) if write else (True,)):
                    shadow = self._shadow.get((space, other, other_write))
                    if shadow is None:
                        continue
                    seen = shadow[index]
                    if seen.size and seen.max() > known:
                        self._report(insn, pc, space, index, write, seen, known, other, other_write)
        for space, index, write in accesses:
            self._array(space, unit, write)[index] = seq
        for queue in pushes:
            self._tokens.setdefault(queue, deque()).append(list(clock))

    def _report(self, insn, pc, space, index, write, seen, known, other, other_write):
        position = int(np.argmax(seen > known))
        location = index.start + position if isinstance(index, slice) else int(index[position])
        other_seq = int(seen[position])
        other_pc = self._pc_of_seq.get(other_seq)
        where = f"0x{location:x}" if space == _DRAM else str(location)
        other_where = f"byte 0x{other_pc:x}" if other_pc is not None else f"#{other_seq}"
        raise RaceError(
            f"{insn.format.mnemonic} on the {insn.unit.name.lower()} unit "
            f"{'writes' if write else 'reads'} {space} {where}, which the instruction at {other_where} "
            f"on the {other.name.lower()} unit {'writes' if other_write else 'reads'}, "
            "with no token or barrier ordering them",
            pc=pc, other_pc=other_pc)


# ---------------------------------------------------------------------------------------------------------
# The planned path: a program compiled once, its data movement replayed
#
# Everything the model decides about a program -- decoding, the range and overlap rules, the token
# schedule and its timing, external-memory ranges, races, every counter and the COUNTERS snapshots --
# depends only on the instruction words fetched, the configuration and the base address, never on the
# data.  Machine._walk works all of it out once (with the reference functions of this module and
# of braze.isa.timing, on facts cached per instruction word) and leaves a _Plan: the numpy operations
# that move data, in program order, and the outcome.  A run whose program bytes equal a plan's replays
# those operations.  A program that writes into its own instructions ahead of the one writing (a STORE
# or COUNTERS over code still to be fetched) is not planned: it runs on the reference path.

_DRAM_SPACE = 2                                  # spaces: 0 scratchpad, 1 accumulator, 2 external
_OTHER_UNITS = ((1, 2), (0, 2), (0, 1))
_N_COUNTERS = len(COUNTERS)
_BUSY_INDEX = {op: int(Counter[name.upper()]) for op, name in BUSY_COUNTER.items()}
_LE_INT32 = np.dtype("<i4")
#: Per-word facts are kept for this many words per configuration (then forgotten).
_STATIC_LIMIT = 1 << 16
#: Plans a machine keeps (the least recently used go first), per base address and in all, and the
#: instructions they may hold in total (a planned instruction takes about 0.5 kB).
_PLANS_PER_BASE = 8
_PLAN_LIMIT = 256
_PLANNED_INSTRUCTIONS_LIMIT = 1 << 19
#: A tree of plans (a program whose course depends on data or on the host's registers) keeps at most
#: this many courses after each checkpoint, and this many courses in all; runs beyond are walked.
_CHILDREN_PER_NODE = 64
_PATHS_PER_TREE = 64


_LOAD, _STORE, _MATMUL, _EPILOGUE, _VECTOR, _COUNTERS, _HALT = (
    Opcode.LOAD, Opcode.STORE, Opcode.MATMUL, Opcode.EPILOGUE, Opcode.VECTOR, Opcode.COUNTERS, Opcode.HALT)
_MEM_SPAD = Memory.SPAD
_BRANCH, _SCALAR, _PREDICATE = Opcode.BRANCH, Opcode.SCALAR, Opcode.PREDICATE
_CONTROL = Unit.CONTROL.value
(_C_CYCLES, _C_STALL_DEP, _C_MACS, _C_DMA_READ_BYTES, _C_DMA_WRITE_BYTES, _C_AXI_READ_BEATS,
 _C_AXI_WRITE_BEATS, _C_SPAD_READS, _C_SPAD_WRITES, _C_ACC_READS, _C_ACC_WRITES) = (
    int(Counter[name]) for name in ("CYCLES", "STALL_DEP", "MACS", "DMA_READ_BYTES", "DMA_WRITE_BYTES",
                                    "AXI_READ_BEATS", "AXI_WRITE_BEATS", "SPAD_READS", "SPAD_WRITES",
                                    "ACC_READS", "ACC_WRITES"))
# Per opcode: (its instructions-retired counter or None, its *_busy counter or None).
_OPCODE_COUNTERS = {op: (None if op in CONTROL_FLOW_OPCODES else int(instret_counter(op)),
                         _BUSY_INDEX.get(op)) for op in Opcode}


class _Static:
    """What the model needs to know of one legal instruction word under one configuration.

    ``deltas`` are the (counter, amount) it adds (after the snapshot, for COUNTERS);
    ``accesses`` its (space, is_write, strided, first, end) for the race detector: the locations
    ``first..end-1`` of space 0 (scratchpad rows), 1 (accumulator rows) or 2 (external bytes), or
    only those of a strided view (see :func:`_shadow_view`); ``dram_write`` the span of external
    memory it may write.
    """

    __slots__ = ("insn", "opcode", "unit", "fails_checks", "timing", "fails_dram", "deltas", "accesses",
                 "dram_write", "dynamic", "busy", "offset_registers", "reads")

    def __init__(self, insn: Instruction, config: Config):
        self.insn = insn
        self.opcode = op = insn.opcode
        args = insn.args
        #: The registers its address fields name (resolved at dispatch), and every register it reads.
        self.offset_registers = tuple(args[register] for register in REGISTER_OFFSETS.get(op, {}).values()
                                      if args[register])
        if op is Opcode.SCALAR:
            self.reads = tuple(register for register in (args["src1"], args["src2"]) if register)
        elif op is Opcode.BRANCH:
            compared = () if args["cond"] is BranchCond.ALWAYS else (args["a"], args["b"])
            self.reads = tuple(register for register in compared if register)
        else:
            self.reads = self.offset_registers
        # Control flow, or an address that depends on a scalar register: its course or its addresses
        # depend on the registers (see Machine._walk).
        self.dynamic = op in CONTROL_FLOW_OPCODES or bool(self.offset_registers)
        try:
            check_ranges(insn, config)
            check_overlap(insn, config)
            self.fails_checks = False
        except ExecutionError:
            self.fails_checks = True
        self.timing = timing = timing_key(insn, config)
        self.unit = timing[0].value
        self.fails_dram = False
        self.dram_write: tuple[int, int] | None = None
        insn_counter, busy = _OPCODE_COUNTERS[op]
        # The *_busy counter's increment is the scheduler's (Scheduler.last_busy): with overlapped
        # LOADs it depends on the neighbours, not only on the instruction.
        self.busy = busy
        deltas = []
        accesses: list = []
        if self.fails_checks:
            pass                          # never executed: the rest is not needed
        elif op is _LOAD or op is _STORE:
            mem, addr, rows, length = args["mem"], args["addr"], args["rows"], args["len"]
            spad = mem is _MEM_SPAD
            space = 0 if spad else 1
            row_bytes = length if spad else 4 * length
            start, stride = args["dram"], args["stride"]
            end = start + (rows - 1) * stride + row_bytes
            if rows == 1 or stride == row_bytes:
                external = (None, start, start + rows * row_bytes)
            else:
                external = ((4 * start, (rows, row_bytes), (4 * stride, 4)), start, end)
            if op is _LOAD:
                deltas.append((_C_SPAD_WRITES if spad else _C_ACC_WRITES, rows))
                accesses.append((space, True, None, addr, addr + rows))
                if not args["zero"]:
                    self.fails_dram = end > config.dram_bytes
                    deltas.append((_C_DMA_READ_BYTES, rows * row_bytes))
                    deltas.append((_C_AXI_READ_BEATS, axi_beats(insn, config)))
                    accesses.append((_DRAM_SPACE, False, *external))
            else:
                self.fails_dram = end > config.dram_bytes
                deltas.append((_C_SPAD_READS if spad else _C_ACC_READS, rows))
                deltas.append((_C_DMA_WRITE_BYTES, rows * row_bytes))
                deltas.append((_C_AXI_WRITE_BEATS, axi_beats(insn, config)))
                accesses.append((space, False, None, addr, addr + rows))
                accesses.append((_DRAM_SPACE, True, *external))
                self.dram_write = (start, end)
        elif op is _MATMUL:
            m, n, k, a, a_stride = args["m"], args["n"], args["k"], args["a"], args["a_stride"]
            chunks = -(-k // config.rows)
            deltas.append((_C_MACS, m * n * k))
            deltas.append((_C_SPAD_READS, chunks * m + k))
            deltas.append((_C_ACC_READS, m * (chunks if args["accumulate"] else chunks - 1)))
            deltas.append((_C_ACC_WRITES, m * chunks))
            a_end = a + (chunks - 1) * a_stride + m
            if a_stride <= m:
                accesses.append((0, False, None, a, a_end))
            else:
                accesses.append((0, False, (4 * a, (chunks, m), (4 * a_stride, 4)), a, a_end))
            b = args["b"]
            accesses.append((0, False, None, b, b + k))
            c = args["acc"]
            if args["accumulate"] or chunks > 1:
                accesses.append((1, False, None, c, c + m))
            accesses.append((1, True, None, c, c + m))
        elif op is _EPILOGUE:
            m, out = args["m"], args["out"]
            acc_reads = m
            first = args["src"]
            accesses.append((1, False, None, first, first + m))
            if args["bias"]:
                acc_reads += 1
                first = args["bias_addr"]
                accesses.append((1, False, None, first, first + 1))
            if args["requant"]:
                acc_reads += 2
                first = args["quant_addr"]
                accesses.append((1, False, None, first, first + 2))
            if args["residual"]:
                deltas.append((_C_SPAD_READS, m))
                first = args["res_addr"]
                accesses.append((0, False, None, first, first + m))
            deltas.append((_C_ACC_READS, acc_reads))
            deltas.append((_C_SPAD_WRITES if out is _MEM_SPAD else _C_ACC_WRITES, m))
            space, first = (0 if out is _MEM_SPAD else 1), args["dst"]
            accesses.append((space, True, None, first, first + m))
        elif op is _VECTOR:
            rows = args["rows"]
            reads = [0, 0]
            space, first = (0 if args["src1_mem"] is _MEM_SPAD else 1), args["src1"]
            reads[space] += rows
            accesses.append((space, False, None, first, first + rows))
            if args["op"] not in UNARY_VECTOR_OPS and not args["use_imm"]:
                space, first = (0 if args["src2_mem"] is _MEM_SPAD else 1), args["src2"]
                reads[space] += rows
                accesses.append((space, False, None, first, first + rows))
            deltas.append((_C_SPAD_READS, reads[0]))
            deltas.append((_C_ACC_READS, reads[1]))
            space, first = (0 if args["dst_mem"] is _MEM_SPAD else 1), args["dst"]
            deltas.append((_C_SPAD_WRITES if space == 0 else _C_ACC_WRITES, rows))
            accesses.append((space, True, None, first, first + rows))
        elif op is Opcode.TABLE:
            rows = table_rows(config)
            deltas.append((_C_SPAD_READS, rows))
            accesses.append((0, False, None, args["addr"], args["addr"] + rows))
        elif op is Opcode.PREDICATE:
            spad, first, rows = args["mem"] is _MEM_SPAD, args["addr"], args["rows"]
            deltas.append((_C_SPAD_READS if spad else _C_ACC_READS, rows))
            accesses.append((0 if spad else 1, False, None, first, first + rows))
        elif op is _COUNTERS:
            start = args["dram"]
            self.fails_dram = start + SNAPSHOT_BYTES > config.dram_bytes
            deltas.append((_C_DMA_WRITE_BYTES, SNAPSHOT_BYTES))
            deltas.append((_C_AXI_WRITE_BEATS, axi_beats(insn, config)))
            self.dram_write = (start, start + SNAPSHOT_BYTES)
        if insn_counter is not None:
            deltas.append((insn_counter, 1))
        # Many words share their counts and timing: keep one copy of each.
        deltas = tuple(delta for delta in deltas if delta[1])
        self.deltas = _SHARED.setdefault(deltas, deltas)
        self.timing = _SHARED.setdefault(timing, timing)
        self.accesses = tuple(accesses)


def program_events(program: Sequence[Instruction], config: Config) -> dict[str, int]:
    """The exact counters (:data:`~braze.isa.counters.COUNTERS` marked ``exact``) of a run of ``program``.

    These count events the program alone decides -- MACs, scratchpad and accumulator row accesses,
    external bytes and beats, instructions -- so they are known before the program runs (energy
    estimates price them).  Each instruction counts as the model's execution counts it; the
    program is assumed to pass its range checks.
    """
    totals = [0] * len(COUNTERS)
    for insn in program:
        for counter, amount in _Static(insn, config).deltas:
            totals[counter] += amount
    return {spec.name: totals[index] for index, spec in enumerate(COUNTERS) if spec.exact}


def _shadow_view(shadow: np.ndarray, strided: tuple | None, first: int, end: int) -> np.ndarray:
    """The locations of an access in an int32 shadow array: ``first..end-1``, or a strided view
    (byte offset, shape, byte strides)."""
    if strided is None:
        return shadow[first:end]
    offset, shape, strides = strided
    return np.ndarray(shape, np.int32, shadow, offset, strides)


_STATICS: dict[Config, dict[int, _Static]] = {}
_SHARED: dict[tuple, tuple] = {}


def _statics_of(config: Config) -> dict[int, _Static]:
    statics = _STATICS.get(config)
    if statics is None or len(statics) >= _STATIC_LIMIT:
        statics = _STATICS[config] = {}
        if len(_SHARED) >= _STATIC_LIMIT:
            _SHARED.clear()
    return statics


class _FastRaces:
    """The race detector's verdict, on the vector clocks of :class:`_RaceDetector`.

    Per memory space, unit and kind of access (read, write), the accesses of a unit are kept in
    program order as entries (sequence number, first location, end location, strided), grouped in
    blocks of :attr:`_BLOCK` with their bounds and latest sequence number.  An access races with
    an entry of another unit that the unit's clock does not cover and whose locations overlap it.
    A check walks the blocks back from the newest, stopping at the first one the clock covers and
    skipping those whose bounds miss the access; contiguous ranges are settled on their bounds, a
    strided entry or access whose bounds overlap by shadow arrays as in :class:`_RaceDetector`
    (into which old blocks are also flushed when a list grows past :attr:`_BLOCKS` blocks).
    Blocks every other unit's clock covers can never race again and are dropped.  It answers only
    whether an instruction races: the error itself (which location, which earlier instruction)
    comes from :class:`_RaceDetector`.
    """

    _BLOCK = 32                      # entries per block
    _BLOCKS = 64                     # blocks per list before the oldest are flushed

    def __init__(self, config: Config):
        self._sizes = (config.spad_rows, config.acc_rows, config.dram_bytes)
        # [space][unit][is_write]: [latest seq, first, end, blocks], the bounds over all blocks, each
        # block [latest seq, first, end, entries]; shadow arrays; the latest seq flushed into each.
        self._lists = [[[[0, 0, 0, []], [0, 0, 0, []]] for _ in QUEUED_UNITS] for _ in self._sizes]
        self._shadow = [[[None, None] for _ in QUEUED_UNITS] for _ in self._sizes]
        self._flushed = [[[0, 0] for _ in QUEUED_UNITS] for _ in self._sizes]
        self._clock = [[0] * len(QUEUED_UNITS) for _ in QUEUED_UNITS]
        self._tokens: list[deque[list[int]]] = [deque() for _ in TOKEN_QUEUES]

    def barrier(self, seq: int) -> None:
        self._clock = [[seq] * len(QUEUED_UNITS) for _ in QUEUED_UNITS]
        for space in self._lists:
            for lists in space:
                lists[0] = [0, 0, 0, []]
                lists[1] = [0, 0, 0, []]

    @staticmethod
    def _rebound(summary: list) -> None:
        blocks = summary[3]
        if blocks:
            summary[1] = min(block[1] for block in blocks)
            summary[2] = max(block[2] for block in blocks)
        else:
            summary[:3] = [0, 0, 0]

    def _flush(self, space: int, unit: int, write: bool, keep: int = 0) -> None:
        """Move all but the ``keep`` latest blocks of a list into its shadow array."""
        summary = self._lists[space][unit][write]
        blocks = summary[3]
        if len(blocks) <= keep:
            return
        shadow = self._shadow[space][unit][write]
        if shadow is None:
            shadow = self._shadow[space][unit][write] = np.zeros(self._sizes[space], dtype=np.int32)
        moved = blocks[:len(blocks) - keep]
        for block in moved:
            for seq, first, end, strided in block[3]:
                _shadow_view(shadow, strided, first, end)[...] = seq
        self._flushed[space][unit][write] = moved[-1][0]
        del blocks[:len(moved)]
        self._rebound(summary)

    def _conflicts(self, space: int, other: int, write: bool, known: int, strided: tuple | None, first: int,
                   end: int) -> bool:
        """Whether the access races with an access of the ``other`` unit in the list (or shadow)."""
        summary = self._lists[space][other][write]
        if summary[0] > known and summary[1] < end and first < summary[2]:
            blocks = summary[3]
            for position in range(len(blocks) - 1, -1, -1):
                latest, low, high, entries = blocks[position]
                if latest <= known:
                    break
                if low >= end or first >= high:
                    continue
                for seq, low, high, other_strided in reversed(entries):
                    if seq <= known:
                        break
                    if low < end and first < high:
                        if strided is None and other_strided is None:
                            return True
                        self._flush(space, other, write)      # strided: let the shadow array decide
                        return self._shadow_races(space, other, write, known, strided, first, end)
        return self._shadow_races(space, other, write, known, strided, first, end)

    def _shadow_races(self, space: int, other: int, write: bool, known: int, strided: tuple | None,
                      first: int, end: int) -> bool:
        return (self._flushed[space][other][write] > known
                and _shadow_view(self._shadow[space][other][write], strided, first, end).max() > known)

    def races(self, unit: int, pops: tuple, pushes: tuple, accesses: tuple, seq: int) -> bool:
        clock = self._clock[unit]
        for queue in pops:
            sent = self._tokens[queue].popleft()
            for other in range(len(clock)):
                if sent[other] > clock[other]:
                    clock[other] = sent[other]
        clock[unit] = seq
        others = _OTHER_UNITS[unit]
        all_lists, flushed = self._lists, self._flushed
        for space, write, strided, first, end in accesses:
            for other in others:
                known = clock[other]
                lists = all_lists[space][other]
                done = flushed[space][other]
                # Most lists hold nothing the clock does not cover, or nothing near the access.
                writes = lists[1]
                if ((writes[0] > known and writes[1] < end and first < writes[2]) or done[1] > known) and \
                        self._conflicts(space, other, True, known, strided, first, end):
                    return True
                if write:
                    reads = lists[0]
                    if ((reads[0] > known and reads[1] < end and first < reads[2]) or done[0] > known) and \
                            self._conflicts(space, other, False, known, strided, first, end):
                        return True
        block_size = self._BLOCK
        for space, write, strided, first, end in accesses:
            summary = all_lists[space][unit][write]
            blocks = summary[3]
            entry = (seq, first, end, strided)
            if blocks and len(blocks[-1][3]) < block_size:
                block = blocks[-1]
                block[0] = seq
                if first < block[1]:
                    block[1] = first
                if end > block[2]:
                    block[2] = end
                block[3].append(entry)
            else:
                # A new block: first drop the blocks every other unit knows about.
                covered = min(self._clock[other][unit] for other in others)
                dropped = 0
                while dropped < len(blocks) and blocks[dropped][0] <= covered:
                    dropped += 1
                if dropped:
                    del blocks[:dropped]
                    self._rebound(summary)
                blocks.append([seq, first, end, [entry]])
                if len(blocks) > self._BLOCKS:
                    self._flush(space, unit, write, self._BLOCKS // 2)
            if len(blocks) == 1 and len(blocks[0][3]) == 1:
                summary[1], summary[2] = first, end
            else:
                if first < summary[1]:
                    summary[1] = first
                if end > summary[2]:
                    summary[2] = end
            summary[0] = seq
        for queue in pushes:
            self._tokens[queue].append(list(clock))
        return False


class _Plan:
    """A program compiled by :meth:`Machine._walk`: its data movement and its outcome.

    ``key`` is the program's bytes from ``base`` up to the last instruction fetched (HALT, the
    failing instruction, or the last one before the instruction limit), ``arrays`` the machine's
    memories and registers its operations were built on.  ``ops`` are (function, arguments) in
    program order; ``counters`` the counters after the last instruction; ``error`` the exception
    (raised as a copy), ``limit`` the instruction limit that stopped the run, or neither for HALT.
    ``last`` is the index of the last instruction fetched (or of the fetch that failed).
    ``last_when`` is the cycle the last instruction was dispatched (see the watchdog in the module's
    documentation); ``watchdog`` the cycle limit that stopped the run, or 0.  The plan holds for
    every cycle limit above ``last_when`` (or none) unless the watchdog stopped it, and then only
    for that limit.

    A program whose course depends on something besides its words -- a PREDICATE's result (the
    data), or a scalar register it reads before writing (the host's) -- is a tree of plans, one
    node per straight stretch of its run: ``kind`` is ``"end"`` for the outcome above, ``"data"``
    for a stretch that ends at a PREDICATE (``check``: the rows it reads and whether it is ANY),
    ``"register"`` for one that ends where the register ``check`` is first read, and ``"flush"``
    for one whose operations must run before the walk fetches an instruction they overwrite.
    ``children`` maps each value seen at the end of a stretch to the next stretch.  In the root,
    ``exact`` is the (instruction limit, cycle limit) a tree holds for (None: the rule above),
    ``size`` the instructions its outcomes hold and ``paths`` their number; ``written`` in an
    outcome is {register: value} of the scalar registers the run wrote.
    """

    __slots__ = ("key", "arrays", "race_check", "ops", "counters", "counter_values", "error", "limit",
                 "last", "instructions", "cycles", "timeline", "halt_pc", "last_when", "watchdog", "kind",
                 "check", "children", "exact", "size", "paths", "written")


_END, _DATA, _REGISTER, _FLUSH = "end", "data", "register", "flush"


def _branch_range_error(insn: Instruction, pc: int, base: int) -> ExecutionError:
    target = pc + INSN_BYTES * insn.offset
    return ExecutionError(ErrorCause.BRANCH_RANGE,
                          f"branch: target {target:#x} (offset {insn.offset}) is below the program base "
                          f"0x{base:x}", pc=pc)


def _predicate_value(rows: np.ndarray, any_nonzero: bool) -> int:
    """PREDICATE's result over ``rows``: ANY (1 if an element is nonzero) or MAX."""
    return int(np.count_nonzero(rows) != 0) if any_nonzero else int(rows.max())


def _wrap_int32(value: int) -> int:
    return ((value + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


_HOOKS = ("_execute", "_exec_load", "_exec_store", "_exec_matmul", "_exec_epilogue", "_exec_vector",
          "_exec_config", "_exec_fence", "_exec_counters", "_exec_halt", "_count", "_fetch", "_check_dram",
          "_local", "_start_run", "_run_reference", "_exec_table", "_exec_scalar", "_exec_branch",
          "_exec_predicate", "_write_scalar")
_FAST_CAPABLE: dict[type, bool] = {}


def _fast_capable(cls: type) -> bool:
    """Whether ``cls`` executes instructions exactly as :class:`Machine` does (no hook overridden)."""
    capable = _FAST_CAPABLE.get(cls)
    if capable is None:
        capable = _FAST_CAPABLE[cls] = all(getattr(cls, name) is getattr(Machine, name) for name in _HOOKS)
    return capable


@contextlib.contextmanager
def _gc_paused():
    """No cyclic garbage collection inside: compiling makes many objects and no reference cycles."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _copy_error(error: BaseException) -> BaseException:
    """A fresh exception equal to ``error`` (same type, message and attributes; no traceback)."""
    copy = error.__class__.__new__(error.__class__, *error.args)
    copy.__dict__.update(error.__dict__)
    copy.__suppress_context__ = error.__suppress_context__
    return copy


# Data movement of each opcode, as (function, arguments) pairs appended to a plan's operations.

def _row_dtype(rows: int) -> np.dtype:
    """One element holding the ``rows`` bytes of an A row in a scratchpad row."""
    return np.dtype({2: np.uint16, 4: np.uint32, 8: np.uint64}.get(rows, f"V{rows}"))


def _matmul_op(a_rows: np.ndarray, k: int, b: np.ndarray, c: np.ndarray, accumulate: bool,
               exact: type) -> None:
    # a_rows: (m, chunks) of whole A rows (or (m, k) int8 for one chunk).  Sums of at most k
    # int8 x int8 products are below 2**14 * k: exact in float32 for k <= 1024, float64 beyond.
    if a_rows.dtype != np.int8:
        a_rows = np.ascontiguousarray(a_rows).view(np.int8)
        if a_rows.shape[1] != k:
            a_rows = a_rows[:, :k]
    product = a_rows.astype(exact) @ b.astype(exact)
    if accumulate:
        c += product.astype(np.int32)              # wraps modulo 2**32
    else:
        c[...] = product


_INT32_LOW, _INT32_HIGH = np.int64(arith.INT32_MIN), np.int64(arith.INT32_MAX)
_INT8_LOW, _INT8_HIGH = np.int64(arith.INT8_MIN), np.int64(arith.INT8_MAX)
_ZERO = np.int64(0)


def _epilogue(tile: np.ndarray, bias: np.ndarray | None, mult: np.ndarray | None, shift: np.ndarray | None,
              residual: np.ndarray | None, act: Activation, out: Memory, out_zp: int, clip_lo: int,
              clip_hi: int, table: np.ndarray | None = None) -> np.ndarray:
    """:func:`braze.isa.arith.epilogue`, bit for bit, in fewer numpy operations; returns the int64 result
    transposed (columns by rows: per-column parameters then broadcast along the long axis).

    The rounding shift is ``(p + 2**(s-1) - 1 + ((p >> s) & 1)) >> s`` for s > 0 (ties to even; no
    overflow, as ``|p| <= 2**62``), and ``p`` for s = 0.
    """
    x = np.array((tile if bias is None else tile + bias).T, dtype=np.int64, order="C")  # int32 sum wraps
    if mult is not None:
        s = (shift.astype(np.int64) & 63)[:, None]
        rounds = s > 0
        x *= mult.astype(np.int64)[:, None]
        rounded = x >> s
        rounded &= rounds
        rounded += x
        rounded += np.where(rounds, np.left_shift(1, np.maximum(s - 1, 0)) - 1, 0)
        rounded >>= s
        rounded += np.int64(out_zp)
        x = rounded
        np.maximum(x, _INT32_LOW, out=x)
        np.minimum(x, _INT32_HIGH, out=x)
    if residual is not None:
        x += residual.T
        np.maximum(x, _INT32_LOW, out=x)
        np.minimum(x, _INT32_HIGH, out=x)
    if act is Activation.RELU:
        np.maximum(x, _ZERO, out=x)
    elif act is Activation.CLIP:
        np.maximum(x, np.int64(clip_lo), out=x)
        np.minimum(x, np.int64(clip_hi), out=x)
    elif act is Activation.TABLE:
        x = arith.table_lookup(x, table)
    low, high = (_INT8_LOW, _INT8_HIGH) if out is Memory.SPAD else (_INT32_LOW, _INT32_HIGH)
    np.maximum(x, low, out=x)
    np.minimum(x, high, out=x)
    return x


def _epilogue_op(tile, bias, mult, shift, residual, act, out, regs, dst, rest, table=None) -> None:
    dst[...] = _epilogue(tile, bias, mult, shift, residual, act, out, regs[ConfigReg.OUT_ZP],
                         regs[ConfigReg.CLIP_LO], regs[ConfigReg.CLIP_HI], table).T
    if rest is not None:
        rest[...] = 0


def _overlapping_store_op(values: np.ndarray, dtype: np.dtype, head: np.ndarray, tail: np.ndarray) -> None:
    raw = np.ascontiguousarray(values, dtype=dtype).view(np.uint8)
    head[...] = raw[:-1, :head.shape[1]]
    tail[...] = raw[-1]


def _vector_op(op, x, y, shift, regs, out, dst) -> None:
    dst[...] = arith.vector(op, x, y, shift=shift, clip_lo=regs[ConfigReg.CLIP_LO],
                            clip_hi=regs[ConfigReg.CLIP_HI], out=out)


class _LoadRun:
    """Consecutive LOADs of one shape into consecutive local rows from evenly spaced external rows.

    Compiled into one strided copy: LOAD j writes rows ``addr + j*rows`` from external bytes at
    ``dram + j*step``.  The destinations do not overlap and LOADs read only external memory, which
    none of them writes, so one copy equals the LOADs one after the other.
    """

    __slots__ = ("local", "dram", "spad", "addr", "rows", "length", "start", "stride", "step", "count")

    def __init__(self, local: np.ndarray, dram: np.ndarray, spad: bool, addr: int, rows: int, length: int,
                 start: int, stride: int):
        self.local, self.dram, self.spad = local, dram, spad
        self.addr, self.rows, self.length, self.start, self.stride = addr, rows, length, start, stride
        self.step: int | None = None
        self.count = 1

    def extend(self, local: np.ndarray, addr: int, rows: int, length: int, start: int, stride: int) -> bool:
        """Take the next LOAD into the run if it continues it."""
        if (local is not self.local or rows != self.rows or length != self.length or stride != self.stride
                or addr != self.addr + self.count * rows):
            return False
        step = start - self.start if self.count == 1 else self.step
        if step < 0 or start != self.start + self.count * step:
            return False
        self.step = step
        self.count += 1
        return True

    def ops(self) -> list:
        local, rows, length, count = self.local, self.rows, self.length, self.count
        dtype, size = (np.dtype(np.int8), 1) if self.spad else (_LE_INT32, 4)
        first = self.addr
        if count == 1:
            target = local[first:first + rows, :length]
            source = np.ndarray((rows, length), dtype, self.dram, self.start, (self.stride, size))
        else:
            row = local.strides[0]
            target = np.ndarray((count, rows, length), local.dtype, local, first * row,
                                (rows * row, row, local.strides[1]))
            source = np.ndarray((count, rows, length), dtype, self.dram, self.start,
                                (self.step, self.stride, size))
        ops = [(target.__setitem__, (Ellipsis, source))]
        if length < local.shape[1]:
            ops.append((local[first:first + count * rows, length:].fill, (0,)))
        return ops


# ---------------------------------------------------------------------------------------------------------
# The machine

class Machine:
    """The architectural state of one accelerator with its external memory, and an executor.

    Attributes
    ----------
    config : Config
    dram : numpy.ndarray
        External memory, uint8, ``config.dram_bytes`` long.
    spad : numpy.ndarray
        Scratchpad, int8, shape ``(spad_rows, cols)``.
    acc : numpy.ndarray
        Accumulator, int32, shape ``(acc_rows, cols)``.
    config_regs : dict[ConfigReg, int]
        The CONFIG registers (int32, reset 0).
    table : numpy.ndarray
        The EPILOGUE activation table: 256 int8 entries (reset 0) that ``TABLE`` writes.
    counters : numpy.ndarray
        uint64 per performance counter, indexed by :class:`~braze.isa.Counter`.
    race_check : bool
        Whether :meth:`run` detects races (on by default).
    fast : bool
        Whether :meth:`run` may execute a program through its compiled plan (on by default; the
        results are the same, see :class:`_Plan`).  Off, or in a subclass that overrides one of
        the executor's methods (``_execute``, ``_exec_*``, ``_count`` ...), every run takes the
        instruction-by-instruction reference path.
    """

    def __init__(self, config: Config, *, race_check: bool = True, fast: bool = True):
        if not isinstance(config, Config):
            raise TypeError(f"Machine needs a Config, not {config!r}")
        self.config = config
        self.race_check = race_check
        self.fast = fast
        # Compiled programs by base address, most recently used first, and all of them from the least
        # recently used on, with the instructions they hold (see _Plan).
        self._plans: dict[int, list[_Plan]] = {}
        self._plan_order: collections.OrderedDict[int, tuple[int, _Plan]] = collections.OrderedDict()
        self._planned_instructions = 0
        self.dram = np.zeros(config.dram_bytes, dtype=np.uint8)
        self.spad = np.zeros((config.spad_rows, config.cols), dtype=np.int8)
        self.acc = np.zeros((config.acc_rows, config.cols), dtype=np.int32)
        self.config_regs: dict[ConfigReg, int] = {reg: 0 for reg in ConfigReg}
        #: The EPILOGUE activation table (256 int8 entries, zero at reset), written by TABLE; like the
        #: CONFIG registers it keeps its contents across runs.
        self.table = np.zeros(arith.TABLE_ENTRIES, dtype=np.int8)
        #: The scalar registers r0..r7 (int32; r0 stays 0).  The host writes r1..r7 with write_scalar.
        self.scalar_regs: list[int] = [0] * SCALAR_REGS
        self.counters = np.zeros(len(COUNTERS), dtype=np.uint64)
        # Every counter counts modulo 2**counter_bits (Config.counter_bits), as the hardware's do.
        self._counter_mask = (1 << config.counter_bits) - 1
        self._start_run()

    # Host access to external memory ------------------------------------------------------------------------

    def _check_host_range(self, addr: int, nbytes: int, what: str) -> None:
        if addr < 0 or nbytes < 0 or addr + nbytes > self.config.dram_bytes:
            raise ValueError(f"{what} of {nbytes} bytes at 0x{addr:x} is outside the "
                             f"{self.config.dram_bytes}-byte external memory")

    def write_dram(self, addr: int, data: bytes | bytearray | memoryview | np.ndarray) -> None:
        """Copy bytes (or the raw bytes of a numpy array, native layout) into external memory."""
        if isinstance(data, np.ndarray):
            raw = np.ascontiguousarray(data).view(np.uint8).ravel()
        else:
            raw = np.frombuffer(bytes(data), dtype=np.uint8)
        self._check_host_range(addr, raw.size, "write_dram")
        self.dram[addr:addr + raw.size] = raw

    def read_dram(self, addr: int, nbytes: int) -> bytes:
        self._check_host_range(addr, nbytes, "read_dram")
        return self.dram[addr:addr + nbytes].tobytes()

    # Running ---------------------------------------------------------------------------------------------

    def _start_run(self) -> None:
        self.counters[:] = 0
        self._cycle_limit = 0
        self._scheduler = Scheduler(self.config)
        self._races = _RaceDetector(self.config) if self.race_check else None
        self._period_start = 0

    def run_program(self, program: bytes | Sequence[Instruction], *, base: int = 0,
                    max_instructions: int | None = None, cycle_limit: int | None = None) -> RunResult:
        """Write a program (bytes or instructions) to external memory at ``base`` and run it."""
        blob = bytes(program) if isinstance(program, (bytes, bytearray, memoryview)) else encode_program(
            list(program))
        self.write_dram(base, blob)
        return self.run(base, max_instructions=max_instructions, cycle_limit=cycle_limit)

    def run(self, program_addr: int = 0, *, max_instructions: int | None = None,
            cycle_limit: int | None = None) -> RunResult:
        """Fetch, decode and execute instructions from ``program_addr`` until HALT.

        Raises :class:`~braze.isa.IllegalInstruction` for an illegal word,
        :class:`~braze.isa.ExecutionError` for everything else the hardware
        would report (its ``pc`` is the byte address of the instruction),
        :class:`WatchdogError` when the timing model reaches ``cycle_limit``
        (0 or None: no limit; see the module's documentation), and
        :class:`InstructionLimitExceeded` after ``max_instructions``.
        Runs through the program's plan (see the module's documentation)
        unless :attr:`fast` is off.
        """
        if program_addr < 0:
            raise ValueError(f"program_addr {program_addr} is negative")
        cycle_limit = check_cycle_limit(cycle_limit)
        if self.fast and _fast_capable(type(self)):
            return self._run_planned(program_addr, max_instructions, cycle_limit)
        return self._run_reference(program_addr, max_instructions, cycle_limit)

    def _run_reference(self, program_addr: int, max_instructions: int | None,
                       cycle_limit: int = 0) -> RunResult:
        """:meth:`run`, one instruction at a time: fetch, decode, :meth:`_execute`."""
        self._start_run()
        self._cycle_limit = cycle_limit
        self._program_base = program_addr
        if program_addr % INSN_BYTES:
            # The hardware fetches whole 16-byte words and reports an unaligned base this way.
            raise ExecutionError(ErrorCause.FETCH_ERROR,
                                 f"program base 0x{program_addr:x} is not {INSN_BYTES}-byte aligned",
                                 pc=program_addr)
        pc = program_addr
        executed = 0
        while True:
            if max_instructions is not None and executed >= max_instructions:
                raise InstructionLimitExceeded(max_instructions, pc)
            if cycle_limit and self._scheduler.next_dispatch >= cycle_limit:
                self._stop_by_watchdog(pc)
            insn = decode(self._fetch(pc), pc=pc)
            executed += 1
            self._next_pc = pc + INSN_BYTES
            self._execute(insn, pc, executed)
            if insn.opcode is Opcode.HALT:
                break
            pc = self._next_pc
        return RunResult(
            status="done",
            counters={spec.name: int(value) for spec, value in zip(COUNTERS, self.counters, strict=True)},
            instructions=executed,
            cycles=self._scheduler.cycles,
            timeline=list(self._scheduler.entries),
            halt_pc=pc,
        )

    # The planned path (see _Plan) ------------------------------------------------------------------------

    def _stop_by_watchdog(self, pc: int) -> None:
        """Raise the watchdog's error at ``pc``, with ``cycles`` counted up to the limit."""
        self.counters[Counter.CYCLES] = (self._cycle_limit - self._period_start) & self._counter_mask
        raise WatchdogError(self._cycle_limit, pc)

    def _run_planned(self, base: int, limit: int | None, cycle_limit: int = 0) -> RunResult:
        self.counters[:] = 0
        if base % INSN_BYTES:
            raise ExecutionError(ErrorCause.FETCH_ERROR,
                                 f"program base 0x{base:x} is not {INSN_BYTES}-byte aligned", pc=base)
        plan = self._cached_plan(base, limit, cycle_limit)
        if plan is None:
            if not all(array.flags.c_contiguous for array in (self.dram, self.spad, self.acc)):
                return self._run_reference(base, limit, cycle_limit)   # plans view the memories' buffers
            return self._run_walk(base, limit, cycle_limit)
        node, path = plan, []
        while node.kind is not _END:
            for function, args in node.ops:
                function(*args)
            value = self._checkpoint(node)
            path.append(value)
            child = node.children.get(value)
            if child is None:              # a course not seen yet: walk it on from here
                return self._run_walk(base, limit, cycle_limit, plan, path, node)
            node = child
        return self._finish(node)

    def _checkpoint(self, node: _Plan) -> int:
        """The value a run's course depends on at the end of ``node``, once its operations ran."""
        if node.kind is _DATA:
            return _predicate_value(*node.check)
        return self.scalar_regs[node.check]

    def _finish(self, node: _Plan) -> RunResult:
        """Run the last stretch of a run and leave the machine as the run's outcome says."""
        for function, args in node.ops:
            function(*args)
        self.counters[:] = node.counters
        for register, value in node.written.items():
            self.scalar_regs[register] = value
        if node.error is not None:
            raise _copy_error(node.error)
        if node.limit is not None:
            raise InstructionLimitExceeded(*node.limit)
        return RunResult(status="done", counters=dict(node.counter_values), instructions=node.instructions,
                         cycles=node.cycles, timeline=list(node.timeline), halt_pc=node.halt_pc)

    def _run_walk(self, base: int, limit: int | None, cycle_limit: int, root: _Plan | None = None,
                  path: Sequence[int] = (), parent: _Plan | None = None) -> RunResult:
        """Run a program by walking it (:meth:`_walk`), moving the data at each checkpoint, and keep
        what the walk finds: a new plan, or with ``root``, the course after ``path`` under ``parent``
        (whose operations, and all before them, have run)."""
        with _gc_paused():
            walk = self._walk(base, limit, cycle_limit, path, b"" if root is None else root.key)
            node = next(walk, None)
            if node is None:                       # writes into its own instructions
                return self._run_reference(base, limit, cycle_limit)
            keep = True
            value = path[-1] if path else None
            while True:
                if node.kind is _FLUSH:
                    keep = False
                if keep:
                    if root is None:
                        root = self._new_root(base, node, limit, cycle_limit)
                    else:
                        keep = self._attach(root, parent, value, node)
                if node.kind is _END:
                    return self._finish(node)
                for function, args in node.ops:
                    function(*args)
                value = None if node.kind is _FLUSH else self._checkpoint(node)
                parent = node
                node = walk.send(value)

    def _new_root(self, base: int, node: _Plan, limit: int | None, cycle_limit: int) -> _Plan:
        node.arrays = self._arrays()
        node.race_check = self.race_check
        if node.kind is _END:
            node.exact, node.size, node.paths = None, len(node.timeline), 1
            if node.limit is None:
                self._remember(base, node)
        else:
            # A tree: its courses differ in length, so it holds for these limits only.
            node.exact, node.size, node.paths = (limit, cycle_limit), 0, 0
            self._remember(base, node)
        return node

    def _attach(self, root: _Plan, parent: _Plan, value: int, node: _Plan) -> bool:
        """Keep ``node`` as the course after ``value`` at the end of ``parent``, unless the tree is full."""
        if len(parent.children) >= _CHILDREN_PER_NODE or root.paths >= _PATHS_PER_TREE:
            return False
        parent.children[value] = node
        if len(node.key) > len(root.key):
            root.key = node.key
        if node.kind is _END:
            root.paths += 1
            if id(root) in self._plan_order:
                root.size += len(node.timeline)
                self._planned_instructions += len(node.timeline)
                self._evict()
        return True

    def _arrays(self) -> tuple:
        """What a plan's operations are built on: a plan is used only while all of it is still in place."""
        return self.config, self.dram, self.spad, self.acc, self.config_regs, self.table

    def _cached_plan(self, base: int, limit: int | None, cycle_limit: int = 0) -> _Plan | None:
        plans = self._plans.get(base)
        if not plans:
            return None
        arrays = self._arrays()
        head = self.dram[base:base + INSN_BYTES].tobytes()
        for position, plan in enumerate(plans):
            if (plan.key.startswith(head) and plan.race_check == self.race_check
                    and (plan.exact == (limit, cycle_limit) if plan.exact is not None else
                         (limit is None or limit > plan.last)
                         and (cycle_limit == plan.watchdog if plan.watchdog
                              else not cycle_limit or cycle_limit > plan.last_when))
                    and all(mine is theirs for mine, theirs in zip(plan.arrays, arrays, strict=True))
                    and self.dram[base:base + len(plan.key)].tobytes() == plan.key):
                if position:
                    plans.insert(0, plans.pop(position))
                self._plan_order.move_to_end(id(plan))
                return plan
        return None

    def _remember(self, base: int, plan: _Plan) -> None:
        """Keep a plan, forgetting the least recently used ones beyond the limits."""
        plans = self._plans.setdefault(base, [])
        plans.insert(0, plan)
        self._plan_order[id(plan)] = base, plan
        self._planned_instructions += plan.size
        if len(plans) > _PLANS_PER_BASE:
            self._forget(base, plans[-1])
        self._evict()

    def _evict(self) -> None:
        while (len(self._plan_order) > _PLAN_LIMIT
               or self._planned_instructions > _PLANNED_INSTRUCTIONS_LIMIT) and len(self._plan_order) > 1:
            self._forget(*next(iter(self._plan_order.values())))

    def _forget(self, base: int, plan: _Plan) -> None:
        del self._plan_order[id(plan)]
        self._planned_instructions -= plan.size
        plans = self._plans[base]
        plans.remove(plan)
        if not plans:
            del self._plans[base]

    def _walk(self, base: int, limit: int | None, cycle_limit: int, known: Sequence[int], blob: bytes):
        """Work out a run from ``base`` without moving data: a generator of the run's plan nodes.

        Follows :meth:`_run_reference` and :meth:`_execute` step by step, on the same functions
        (their errors are raised by the reference code, with the instruction's pc).  Where the
        course depends on a value the words do not hold -- a PREDICATE's result, a register read
        before the run writes it -- the walk yields the stretch so far (a :class:`_Plan` node); the
        caller runs its operations and sends the value back.  The values of ``known`` are taken
        instead, for the first checkpoints, whose operations have run already (their stretches
        are not yielded).  The last node is the outcome.  ``blob`` is the program's bytes as far
        as they are known.  Yields nothing if the program writes into an instruction it fetches
        later before any operation has run (the reference path runs it); after that, such a
        write is run (a ``"flush"`` node) before the instruction is fetched.
        """
        config = self.config
        dram_bytes = config.dram_bytes
        statics = _statics_of(config)
        scheduler = Scheduler(config)
        races = _FastRaces(config) if self.race_check else None
        counters = [0] * _N_COUNTERS
        period_start = 0
        ops: list = []
        error: BaseException | None = None
        index, pc, fetched_end = 0, base, 0
        halted = False
        watchdog = 0
        last_when = 0
        # The scalar registers as far as the walk knows them: r0, those it wrote, and those it read.
        regs = [0] * SCALAR_REGS
        settled = {0}
        written: dict[int, int] = {}
        steps = iter(known)
        pending = len(known)             # checkpoints still to take from `known`
        live = False                     # whether the caller has run operations of this walk
        # External bytes the run writes, by STOREs and COUNTERS, while they have not run.
        writes: list[tuple[int, int]] = []
        write_low, write_high = dram_bytes, 0
        while True:
            if limit is not None and index >= limit:
                break
            last_when = scheduler.next_dispatch
            if cycle_limit and last_when >= cycle_limit:
                watchdog = cycle_limit
                break
            if pc + INSN_BYTES > dram_bytes:
                try:
                    self._fetch(pc)
                except ExecutionError as failure:
                    error = failure
                break
            offset = pc - base
            if offset + INSN_BYTES > len(blob):
                more = max(64 * INSN_BYTES, len(blob), offset + INSN_BYTES - len(blob))
                blob += self.dram[base + len(blob):min(dram_bytes, base + len(blob) + more)].tobytes()
            if write_low < pc + INSN_BYTES and pc < write_high and any(
                    low < pc + INSN_BYTES and pc < high for low, high in writes):
                # An earlier STORE or COUNTERS of this run writes over this instruction.
                if not live and not known:
                    return
                if pending:
                    raise AssertionError(f"a kept course writes over its instruction at 0x{pc:x}")
                yield self._node(_FLUSH, None, ops, blob[:fetched_end])
                ops = []
                blob = self.dram[base:base + len(blob)].tobytes()
                writes, write_low, write_high = [], dram_bytes, 0
            word = int.from_bytes(blob[offset:offset + INSN_BYTES], "little")
            if offset + INSN_BYTES > fetched_end:
                fetched_end = offset + INSN_BYTES
            static = statics.get(word)
            if static is None:
                try:
                    insn = decode(word, pc=pc)
                except IllegalInstruction as failure:
                    error = failure
                    break
                static = statics[word] = _Static(insn, config)
            unresolved = None
            if static.dynamic:
                for register in static.reads:
                    if register not in settled:        # the host's value: a checkpoint
                        if pending:
                            value, pending = next(steps), pending - 1
                        else:
                            value = yield self._node(_REGISTER, register, ops, blob[:fetched_end])
                            live = True
                        ops = []
                        regs[register] = value
                        settled.add(register)
                if static.offset_registers:
                    unresolved = static.insn
                    key = (word, *(regs[register] for register in static.offset_registers))
                    resolved = statics.get(key)
                    if resolved is None:
                        resolved = statics[key] = _Static(resolve_registers(unresolved, regs), config)
                    static = resolved
            insn = static.insn
            if static.fails_checks:
                try:
                    check_ranges(insn, config, pc=pc)
                    check_overlap(insn, config, pc=pc)
                except ExecutionError as failure:
                    error = failure
                    break
                raise AssertionError(f"{insn!r} passes the checks it failed before")
            try:
                entry = scheduler.add_keyed(insn, static.timing, pc, unresolved)
            except ExecutionError as failure:
                error = failure
                break
            last_when = entry.start if static.timing[5] else entry.dispatch
            if cycle_limit and last_when >= cycle_limit:
                watchdog = cycle_limit
                break
            op = static.opcode
            if static.fails_dram:
                try:
                    if op is Opcode.COUNTERS:
                        self._check_dram(insn, pc, insn.dram, 1, 0, SNAPSHOT_BYTES)
                    else:
                        self._check_dram(insn, pc, insn.dram, insn.rows, insn.stride,
                                         insn.len * element_bytes(insn.mem))
                except ExecutionError as failure:
                    error = failure
                    break
                raise AssertionError(f"{insn!r} fits the external memory it did not fit before")
            if races is not None:
                timing = static.timing
                if timing[5]:
                    races.barrier(index + 1)
                elif static.unit != _CONTROL and races.races(static.unit, timing[2], timing[3],
                                                             static.accesses, index + 1):
                    error = self._race_error(scheduler.entries)
                    if error is None:
                        if live or known:
                            raise AssertionError(f"the race detectors disagree at 0x{pc:x}")
                        return
                    break

            counters[_C_STALL_DEP] += entry.stall_dep
            next_pc = pc + INSN_BYTES
            if op is Opcode.COUNTERS:
                counters[_C_CYCLES] = entry.start - period_start
                snapshot = np.array([value & self._counter_mask for value in counters],
                                    dtype="<u8").view(np.uint8)
                address = insn.args["dram"]
                ops.append((np.copyto, (self.dram[address:address + SNAPSHOT_BYTES], snapshot)))
                if insn.args["reset"]:
                    counters = [0] * _N_COUNTERS
                    period_start = entry.start
            elif op is _BRANCH:
                args = insn.args
                if branch_taken(args["cond"], regs[args["a"]], regs[args["b"]]):
                    next_pc = pc + INSN_BYTES * args["offset"]
                    if next_pc < base:
                        error = _branch_range_error(insn, pc, base)
                        break
                    scheduler.redirect()
            elif op is _SCALAR:
                args = insn.args
                if args["dst"]:
                    value = written[args["dst"]] = regs[args["dst"]] = _wrap_int32(
                        regs[args["src1"]] + regs[args["src2"]] + args["imm"])
                    settled.add(args["dst"])
            elif op is _PREDICATE:
                args = insn.args
                if args["dst"]:                    # the data's value: a checkpoint
                    if pending:
                        value, pending = next(steps), pending - 1
                    else:
                        rows = self._local(args["mem"])[args["addr"]:args["addr"] + args["rows"]]
                        check = (rows, args["op"] is PredicateOp.ANY)
                        value = yield self._node(_DATA, check, ops, blob[:fetched_end])
                        live = True
                    ops = []
                    written[args["dst"]] = regs[args["dst"]] = value
                    settled.add(args["dst"])
            else:
                self._plan_ops(insn, ops)
            for counter, amount in static.deltas:
                counters[counter] += amount
            if static.busy is not None:
                counters[static.busy] += scheduler.last_busy
            if op is Opcode.HALT:
                counters[_C_CYCLES] = entry.end - period_start
                halted = True
            if static.dram_write is not None:
                low, high = static.dram_write
                writes.append((low, high))
                write_low, write_high = min(write_low, low), max(write_high, high)
            index += 1
            if halted:
                break
            pc = next_pc

        if watchdog:
            error = WatchdogError(watchdog, pc)
            counters[_C_CYCLES] = watchdog - period_start
        plan = self._node(_END, None, ops, blob[:fetched_end])
        plan.last_when = last_when
        plan.watchdog = watchdog
        plan.counters = np.array([value & self._counter_mask for value in counters], dtype=np.uint64)
        plan.counter_values = {spec.name: int(value)
                               for spec, value in zip(COUNTERS, plan.counters, strict=True)}
        plan.error = error
        plan.limit = None if halted or error is not None else (limit, pc)
        plan.last = index if not halted else index - 1
        plan.instructions = index
        plan.cycles = scheduler.cycles
        plan.timeline = scheduler.entries
        plan.halt_pc = pc
        plan.written = written
        yield plan

    @staticmethod
    def _node(kind: str, check, ops: list, key: bytes) -> _Plan:
        node = _Plan()
        node.kind, node.check, node.key, node.children = kind, check, key, {}
        node.ops = [op for item in ops for op in (item.ops() if type(item) is _LoadRun else (item,))]
        return node

    def _race_error(self, entries: list[ScheduledInstruction]) -> RaceError | None:
        """The reference detector's error for the last of the instructions run (None if it finds none)."""
        detector = _RaceDetector(self.config)
        for index, entry in enumerate(entries):
            insn = entry.insn
            if insn.opcode in BARRIER_OPCODES:
                detector.barrier(index + 1)
                continue
            if insn.unit is Unit.CONTROL:                 # SCALAR and BRANCH touch no memory
                continue
            try:
                detector.instruction(insn, index + 1, entry.pc, instruction_accesses(insn, self.config))
            except RaceError as error:
                return error if index == len(entries) - 1 else None
        return None

    def _plan_ops(self, insn: Instruction, ops: list) -> None:
        """Append the data movement of ``insn`` (as :meth:`_execute` does it) to a plan's operations."""
        op, args, config = insn.opcode, insn.args, self.config
        if op is Opcode.LOAD:
            mem, addr, rows, length = args["mem"], args["addr"], args["rows"], args["len"]
            local = self._local(mem)
            if args["zero"]:
                ops.append((local[addr:addr + rows].fill, (0,)))
                return
            start, stride = args["dram"], args["stride"]
            run = ops[-1] if ops and type(ops[-1]) is _LoadRun else None
            if run is None or not run.extend(local, addr, rows, length, start, stride):
                ops.append(_LoadRun(local, self.dram, mem is Memory.SPAD, addr, rows, length, start, stride))
        elif op is Opcode.STORE:
            mem, addr, rows, length = args["mem"], args["addr"], args["rows"], args["len"]
            spad = mem is Memory.SPAD
            dtype, size = (np.int8, 1) if spad else (_LE_INT32, 4)
            values = self._local(mem)[addr:addr + rows, :length]
            start, stride = args["dram"], args["stride"]
            if rows == 1 or stride >= length * size:
                target = np.ndarray((rows, length), dtype, self.dram, start, (stride, size))
                ops.append((target.__setitem__, (Ellipsis, values)))
            else:
                # Overlapping rows, written in order: byte o of the span ends up from row o // stride
                # (the first `stride` bytes of each row but the last), then the whole last row.
                row_bytes = length * size
                head = self.dram[start:start + (rows - 1) * stride].reshape(rows - 1, stride)
                tail = self.dram[start + (rows - 1) * stride:start + (rows - 1) * stride + row_bytes]
                ops.append((_overlapping_store_op, (values, dtype, head, tail)))
        elif op is Opcode.MATMUL:
            m, n, k, a, a_stride = args["m"], args["n"], args["k"], args["a"], args["a_stride"]
            chunks = -(-k // config.rows)
            if chunks == 1:
                a_rows = self.spad[a:a + m, :k]
            else:
                a_rows = np.ndarray((m, chunks), _row_dtype(config.rows), self.spad, a * config.cols,
                                    (config.cols, a_stride * config.cols))
            ops.append((_matmul_op, (a_rows, k, self.spad[args["b"]:args["b"] + k, :n],
                                     self.acc[args["acc"]:args["acc"] + m, :n], args["accumulate"],
                                     np.float32 if k <= 1024 else np.float64)))
        elif op is Opcode.EPILOGUE:
            m, n, src = args["m"], args["n"], args["src"]
            bias = self.acc[args["bias_addr"], :n] if args["bias"] else None
            quant = args["quant_addr"]
            mult, shift = (self.acc[quant, :n], self.acc[quant + 1, :n]) if args["requant"] else (None, None)
            residual = self.spad[args["res_addr"]:args["res_addr"] + m, :n] if args["residual"] else None
            dst = self._local(args["out"])
            rows = slice(args["dst"], args["dst"] + m)
            rest = dst[rows, n:] if n < config.cols else None
            ops.append((_epilogue_op, (self.acc[src:src + m, :n], bias, mult, shift, residual, args["act"],
                                       args["out"], self.config_regs, dst[rows, :n], rest, self.table)))
        elif op is Opcode.VECTOR:
            rows, vop = args["rows"], args["op"]
            x = self._local(args["src1_mem"])[args["src1"]:args["src1"] + rows]
            if vop in UNARY_VECTOR_OPS:
                y = 0
            elif args["use_imm"]:
                y = args["imm"]
            else:
                y = self._local(args["src2_mem"])[args["src2"]:args["src2"] + rows]
            ops.append((_vector_op, (vop, x, y, args["shift"], self.config_regs, args["dst_mem"],
                                     self._local(args["dst_mem"])[args["dst"]:args["dst"] + rows])))
        elif op is Opcode.CONFIG:
            ops.append((self.config_regs.__setitem__, (args["reg"], args["value"])))
        elif op is Opcode.TABLE:
            rows = table_rows(config)
            ops.append((np.copyto, (self.table, self.spad[args["addr"]:args["addr"] + rows].reshape(-1))))

    def _fetch(self, pc: int) -> int:
        if pc + INSN_BYTES > self.config.dram_bytes:
            raise ExecutionError(ErrorCause.FETCH_ERROR,
                                 f"instruction fetch of bytes 0x{pc:x}..0x{pc + INSN_BYTES - 1:x} is beyond "
                                 f"the {self.config.dram_bytes}-byte external memory", pc=pc)
        return int.from_bytes(self.dram[pc:pc + INSN_BYTES].tobytes(), "little")

    def _count(self, counter: Counter, amount: int) -> None:
        self.counters[counter] = (int(self.counters[counter]) + amount) & self._counter_mask

    def _check_dram(self, insn: Instruction, pc: int, start: int, rows: int, stride: int, row_bytes: int):
        end = start + (rows - 1) * stride + row_bytes
        if end > self.config.dram_bytes:
            raise ExecutionError(
                ErrorCause.DRAM_RANGE,
                f"{insn.format.mnemonic} accesses external bytes up to 0x{end - 1:x}, beyond the "
                f"{self.config.dram_bytes}-byte external memory", pc=pc)

    def _execute(self, insn: Instruction, pc: int, seq: int) -> None:
        config = self.config
        op = insn.opcode
        unresolved = insn
        if op in REGISTER_OFFSETS:
            insn = resolve_registers(insn, self.scalar_regs)
        check_ranges(insn, config, pc=pc)
        check_overlap(insn, config, pc=pc)
        # raises DEADLOCK for an invalid token order
        entry = self._scheduler.add(insn, pc=pc, unresolved=unresolved)
        dispatched = entry.start if entry.unit is Unit.CONTROL else entry.dispatch
        if self._cycle_limit and dispatched >= self._cycle_limit:
            self._stop_by_watchdog(pc)

        if op in (Opcode.LOAD, Opcode.STORE) and not (op is Opcode.LOAD and insn.zero):
            self._check_dram(insn, pc, insn.dram, insn.rows, insn.stride, insn.len * element_bytes(insn.mem))
        elif op is Opcode.COUNTERS:
            self._check_dram(insn, pc, insn.dram, 1, 0, SNAPSHOT_BYTES)

        if self._races is not None:
            if op in BARRIER_OPCODES:
                self._races.barrier(seq)
            elif entry.unit is not Unit.CONTROL:       # SCALAR and BRANCH touch no memory
                self._races.instruction(insn, seq, pc, instruction_accesses(insn, config))

        if op in BUSY_COUNTER:
            self._count(Counter[BUSY_COUNTER[op].upper()], self._scheduler.last_busy)
        # A barrier's wait comes before it starts, so a COUNTERS snapshot includes its own.
        self._count(Counter.STALL_DEP, entry.stall_dep)

        getattr(self, f"_exec_{op.name.lower()}")(insn, entry)
        if op not in CONTROL_FLOW_OPCODES:
            self._count(instret_counter(op), 1)
        if op is Opcode.HALT:
            self.counters[Counter.CYCLES] = (entry.end - self._period_start) & self._counter_mask

    # One method per opcode ---------------------------------------------------------------------------------

    def _local(self, memory: Memory) -> np.ndarray:
        return self.spad if memory is Memory.SPAD else self.acc

    def _exec_load(self, insn: Instruction, entry: ScheduledInstruction) -> None:
        local = self._local(insn.mem)
        rows = slice(insn.addr, insn.addr + insn.rows)
        self._count(Counter.SPAD_WRITES if insn.mem is Memory.SPAD else Counter.ACC_WRITES, insn.rows)
        if insn.zero:
            local[rows] = 0
            return
        row_bytes = insn.len * element_bytes(insn.mem)
        index = _dram_index(insn.dram, insn.rows, insn.stride, row_bytes)
        raw = self.dram[index].reshape(insn.rows, row_bytes)
        values = np.ascontiguousarray(raw).view(np.int8 if insn.mem is Memory.SPAD else "<i4")
        local[rows, :insn.len] = values
        local[rows, insn.len:] = 0
        self._count(Counter.DMA_READ_BYTES, insn.rows * row_bytes)
        self._count(Counter.AXI_READ_BEATS, axi_beats(insn, self.config))

    def _exec_store(self, insn: Instruction, entry: ScheduledInstruction) -> None:
        local = self._local(insn.mem)
        row_bytes = insn.len * element_bytes(insn.mem)
        values = local[insn.addr:insn.addr + insn.rows, :insn.len]
        element = np.int8 if insn.mem is Memory.SPAD else np.dtype("<i4")
        raw = np.ascontiguousarray(values.astype(element)).view(np.uint8)
        if insn.rows == 1 or insn.stride >= row_bytes:
            self.dram[_dram_index(insn.dram, insn.rows, insn.stride, row_bytes)] = raw.ravel()
        else:
            # Overlapping rows: later rows overwrite earlier ones, as the rows are written in order.
            for r in range(insn.rows):
                start = insn.dram + r * insn.stride
                self.dram[start:start + row_bytes] = raw[r]
        self._count(Counter.SPAD_READS if insn.mem is Memory.SPAD else Counter.ACC_READS, insn.rows)
        self._count(Counter.DMA_WRITE_BYTES, insn.rows * row_bytes)
        self._count(Counter.AXI_WRITE_BEATS, axi_beats(insn, self.config))

    def _exec_matmul(self, insn: Instruction, entry: ScheduledInstruction) -> None:
        config = self.config
        m, n, k = insn.m, insn.n, insn.k
        chunks = -(-k // config.rows)
        # Sums of at most 65535 int8 x int8 products stay below 2**31, so float64 (BLAS) is exact.
        product = np.zeros((m, n), dtype=np.float64)
        step = max(1, 4096 // config.rows)      # chunks per step, bounding the temporaries to m x 4096
        for first in range(0, chunks, step):
            end = min(chunks, first + step)
            # A[i, c*rows + r] = spad[a + c*a_stride + i][r]
            a_tiles = self.spad[_matmul_a_rows(insn, first, end), :config.rows]   # (chunks, m, rows)
            k_first, k_end = first * config.rows, min(k, end * config.rows)
            a = a_tiles.transpose(1, 0, 2).reshape(m, (end - first) * config.rows)[:, :k_end - k_first]
            b = self.spad[insn.b + k_first:insn.b + k_end, :n]
            product += a.astype(np.float64) @ b.astype(np.float64)
        product = product.astype(np.int64)
        c = self.acc[insn.acc:insn.acc + m, :n]
        if insn.accumulate:
            product = product + c.astype(np.int64)
        self.acc[insn.acc:insn.acc + m, :n] = arith.wrap32(product)
        self._count(Counter.MACS, m * n * k)
        self._count(Counter.SPAD_READS, chunks * m + k)
        self._count(Counter.ACC_READS, m * (chunks if insn.accumulate else chunks - 1))
        self._count(Counter.ACC_WRITES, m * chunks)

    def _exec_epilogue(self, insn: Instruction, entry: ScheduledInstruction) -> None:
        m, n = insn.m, insn.n
        regs = self.config_regs
        tile = self.acc[insn.src:insn.src + m, :n]
        acc_reads = m
        kwargs = {}
        if insn.bias:
            kwargs["bias"] = self.acc[insn.bias_addr, :n]
            acc_reads += 1
        if insn.requant:
            kwargs["mult"] = self.acc[insn.quant_addr, :n]
            kwargs["shift"] = self.acc[insn.quant_addr + 1, :n]
            acc_reads += 2
        if insn.residual:
            kwargs["residual"] = self.spad[insn.res_addr:insn.res_addr + m, :n]
            self._count(Counter.SPAD_READS, m)
        result = arith.epilogue(tile, act=insn.act, out=insn.out, out_zp=regs[ConfigReg.OUT_ZP],
                                clip_lo=regs[ConfigReg.CLIP_LO], clip_hi=regs[ConfigReg.CLIP_HI],
                                table=self.table, **kwargs)
        dst = self._local(insn.out)
        dst[insn.dst:insn.dst + m, :n] = result
        dst[insn.dst:insn.dst + m, n:] = 0
        self._count(Counter.ACC_READS, acc_reads)
        self._count(Counter.SPAD_WRITES if insn.out is Memory.SPAD else Counter.ACC_WRITES, m)

    def _exec_vector(self, insn: Instruction, entry: ScheduledInstruction) -> None:
        rows = insn.rows
        regs = self.config_regs
        reads = {Memory.SPAD: 0, Memory.ACC: 0}
        x = self._local(insn.src1_mem)[insn.src1:insn.src1 + rows]
        reads[insn.src1_mem] += rows
        if insn.op in UNARY_VECTOR_OPS:
            y: np.ndarray | int = 0
        elif insn.use_imm:
            y = insn.imm
        else:
            y = self._local(insn.src2_mem)[insn.src2:insn.src2 + rows]
            reads[insn.src2_mem] += rows
        result = arith.vector(insn.op, x, y, shift=insn.shift, clip_lo=regs[ConfigReg.CLIP_LO],
                              clip_hi=regs[ConfigReg.CLIP_HI], out=insn.dst_mem)
        self._local(insn.dst_mem)[insn.dst:insn.dst + rows] = result
        self._count(Counter.SPAD_READS, reads[Memory.SPAD])
        self._count(Counter.ACC_READS, reads[Memory.ACC])
        self._count(Counter.SPAD_WRITES if insn.dst_mem is Memory.SPAD else Counter.ACC_WRITES, rows)

    def _exec_table(self, insn: Instruction, entry: ScheduledInstruction) -> None:
        rows = table_rows(self.config)
        self.table[:] = self.spad[insn.addr:insn.addr + rows].reshape(-1)
        self._count(Counter.SPAD_READS, rows)

    def _exec_config(self, insn: Instruction, entry: ScheduledInstruction) -> None:
        self.config_regs[insn.reg] = insn.value

    def _exec_fence(self, insn: Instruction, entry: ScheduledInstruction) -> None:
        pass

    def _exec_counters(self, insn: Instruction, entry: ScheduledInstruction) -> None:
        self.counters[Counter.CYCLES] = (entry.start - self._period_start) & self._counter_mask
        snapshot = self.counters.astype("<u8").tobytes()
        assert len(snapshot) == SNAPSHOT_BYTES == len(COUNTERS) * COUNTER_BYTES
        self.dram[insn.dram:insn.dram + SNAPSHOT_BYTES] = np.frombuffer(snapshot, dtype=np.uint8)
        if insn.reset:
            self.counters[:] = 0
            self._period_start = entry.start
        self._count(Counter.DMA_WRITE_BYTES, SNAPSHOT_BYTES)
        self._count(Counter.AXI_WRITE_BEATS, axi_beats(insn, self.config))

    def _exec_halt(self, insn: Instruction, entry: ScheduledInstruction) -> None:
        pass

    def _write_scalar(self, register: int, value: int) -> None:
        if register:
            self.scalar_regs[register] = _wrap_int32(value)

    def _exec_scalar(self, insn: Instruction, entry: ScheduledInstruction) -> None:
        regs = self.scalar_regs
        self._write_scalar(insn.dst, regs[insn.src1] + regs[insn.src2] + insn.imm)

    def _exec_branch(self, insn: Instruction, entry: ScheduledInstruction) -> None:
        if not branch_taken(insn.cond, self.scalar_regs[insn.a], self.scalar_regs[insn.b]):
            return
        pc = entry.pc
        target = pc + INSN_BYTES * insn.offset
        if target < self._program_base:
            raise _branch_range_error(insn, pc, self._program_base)
        self._scheduler.redirect()
        self._next_pc = target

    def _exec_predicate(self, insn: Instruction, entry: ScheduledInstruction) -> None:
        rows = self._local(insn.mem)[insn.addr:insn.addr + insn.rows]
        self._count(Counter.SPAD_READS if insn.mem is Memory.SPAD else Counter.ACC_READS, insn.rows)
        self._write_scalar(insn.dst, _predicate_value(rows, insn.op is PredicateOp.ANY))

    def write_scalar(self, register: int, value: int) -> None:
        """Host access: set scalar register ``register`` (1..7) to the int32 ``value`` before a run."""
        check_scalar_write(register, value)
        self.scalar_regs[register] = value


def check_scalar_write(register: int, value: int) -> None:
    """Raise :class:`ScalarRegisterError` unless the host may write the int32 ``value`` to ``register``."""
    if isinstance(register, bool) or not isinstance(register, int) or not 1 <= register < SCALAR_REGS:
        raise ScalarRegisterError(f"scalar register {register!r}: the host writes r1..r{SCALAR_REGS - 1}")
    if isinstance(value, bool) or not isinstance(value, int) \
            or not arith.INT32_MIN <= value <= arith.INT32_MAX:
        raise ScalarRegisterError(f"scalar register r{register}: {value!r} is not an int32")


class DispatchTracer(Machine):
    """A :class:`Machine` that records, in :attr:`trace`, every instruction it dispatches other than
    the control-flow ones, with its register offsets resolved: the straight-line program a run of a
    control-flow program amounts to (tests and benchmarks replay it and compare)."""

    def __init__(self, config: Config, **options):
        super().__init__(config, **options)
        self.trace: list[Instruction] = []

    def _execute(self, insn: Instruction, pc: int, seq: int) -> None:
        if insn.opcode not in CONTROL_FLOW_OPCODES:
            self.trace.append(resolve_registers(insn, self.scalar_regs))
        super()._execute(insn, pc, seq)


def run_program(program: bytes | Sequence[Instruction], config: Config, *, base: int = 0,
                max_instructions: int | None = None, data: dict[int, bytes] | None = None,
                cycle_limit: int | None = None) -> tuple[Machine, RunResult]:
    """Convenience: a fresh :class:`Machine` with ``{addr: bytes}`` data and the program at ``base``, run."""
    machine = Machine(config)
    for addr, blob in (data or {}).items():
        machine.write_dram(addr, blob)
    result = machine.run_program(program, base=base, max_instructions=max_instructions,
                                 cycle_limit=cycle_limit)
    return machine, result
