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
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Sequence

import numpy as np

from . import arith
from .config import Config
from .counters import COUNTER_BYTES, COUNTERS, SNAPSHOT_BYTES, Counter, instret_counter
from .encoding import (
    INSN_BYTES,
    UNARY_VECTOR_OPS,
    ConfigReg,
    ErrorCause,
    Instruction,
    Memory,
    Opcode,
    Unit,
    decode,
    encode_program,
)
from .errors import BrazeError, ExecutionError
from .timing import (
    BUSY_COUNTER,
    QUEUED_UNITS,
    ScheduledInstruction,
    Scheduler,
    axi_beats,
    element_bytes,
    token_queues,
)

__all__ = [
    "Machine", "RunResult", "RaceError", "InstructionLimitExceeded", "check_ranges", "check_overlap",
    "run_program", "instruction_accesses",
]

_COUNTER_MASK = (1 << 64) - 1


class RaceError(ExecutionError):
    """Two instructions on different units access the same memory unordered.

    ``pc`` is the later instruction's address, ``other_pc`` the earlier one's.
    """

    def __init__(self, detail: str, *, pc: int | None, other_pc: int | None):
        self.other_pc = other_pc
        super().__init__(ErrorCause.RACE, detail, pc=pc)


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


def _rows_of(memory: Memory, config: Config) -> int:
    return config.spad_rows if memory is Memory.SPAD else config.acc_rows


def _range_cause(memory: Memory) -> ErrorCause:
    return ErrorCause.SPAD_RANGE if memory is Memory.SPAD else ErrorCause.ACC_RANGE


def _mem_name(memory: Memory) -> str:
    return "scratchpad" if memory is Memory.SPAD else "accumulator"


def check_ranges(insn: Instruction, config: Config, *, pc: int | None = None) -> None:
    """Raise :class:`~braze.isa.ExecutionError` if ``insn`` breaks a range rule of ``config``.

    The config-dependent rules (TILE_RANGE, SPAD_RANGE, ACC_RANGE), checked
    in the architectural order; the first failure wins.  Arithmetic is exact
    (no wrap-around).  External-memory ranges are not checked here: they
    fail at execution (DRAM_RANGE).
    """
    op = insn.opcode
    mnemonic = insn.format.mnemonic

    def fail(cause: ErrorCause, detail: str):
        raise ExecutionError(cause, f"{mnemonic}: {detail}", pc=pc)

    def rows_within(memory: Memory, first: int, count: int, what: str):
        limit = _rows_of(memory, config)
        if first + count > limit:
            fail(_range_cause(memory), f"{what} rows {first}..{first + count - 1} exceed the "
                                       f"{limit} {_mem_name(memory)} rows of config {config.name!r}")

    def width_within(name: str, value: int):
        if value > config.cols:
            fail(ErrorCause.TILE_RANGE,
                 f"{name}={value} exceeds cols={config.cols} of config {config.name!r}")

    if op in (Opcode.LOAD, Opcode.STORE):
        width_within("len", insn.len)
        rows_within(insn.mem, insn.addr, insn.rows, "local")
    elif op is Opcode.MATMUL:
        width_within("n", insn.n)
        rows_within(Memory.ACC, insn.acc, insn.m, "C")
        chunks = -(-insn.k // config.rows)
        last_a = insn.a + (chunks - 1) * insn.a_stride
        if last_a + insn.m > config.spad_rows:
            fail(ErrorCause.SPAD_RANGE,
                 f"A rows reach {last_a + insn.m - 1} (a={insn.a}, {chunks} chunks of a_stride="
                 f"{insn.a_stride}, m={insn.m}), beyond the {config.spad_rows} scratchpad rows")
        rows_within(Memory.SPAD, insn.b, insn.k, "B")
    elif op is Opcode.EPILOGUE:
        width_within("n", insn.n)
        rows_within(Memory.ACC, insn.src, insn.m, "source")
        if insn.bias:
            rows_within(Memory.ACC, insn.bias_addr, 1, "bias")
        if insn.requant:
            rows_within(Memory.ACC, insn.quant_addr, 2, "requantize parameter")
        if insn.residual:
            rows_within(Memory.SPAD, insn.res_addr, insn.m, "residual")
        rows_within(insn.out, insn.dst, insn.m, "destination")
    elif op is Opcode.VECTOR:
        rows_within(insn.src1_mem, insn.src1, insn.rows, "src1")
        if insn.op not in UNARY_VECTOR_OPS and not insn.use_imm:
            rows_within(insn.src2_mem, insn.src2, insn.rows, "src2")
        rows_within(insn.dst_mem, insn.dst, insn.rows, "destination")


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
    counters : numpy.ndarray
        uint64 per performance counter, indexed by :class:`~braze.isa.Counter`.
    race_check : bool
        Whether :meth:`run` detects races (on by default).
    """

    def __init__(self, config: Config, *, race_check: bool = True):
        if not isinstance(config, Config):
            raise TypeError(f"Machine needs a Config, not {config!r}")
        self.config = config
        self.race_check = race_check
        self.dram = np.zeros(config.dram_bytes, dtype=np.uint8)
        self.spad = np.zeros((config.spad_rows, config.cols), dtype=np.int8)
        self.acc = np.zeros((config.acc_rows, config.cols), dtype=np.int32)
        self.config_regs: dict[ConfigReg, int] = {reg: 0 for reg in ConfigReg}
        self.counters = np.zeros(len(COUNTERS), dtype=np.uint64)
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
        self._scheduler = Scheduler(self.config)
        self._races = _RaceDetector(self.config) if self.race_check else None
        self._period_start = 0

    def run_program(self, program: bytes | Sequence[Instruction], *, base: int = 0,
                    max_instructions: int | None = None) -> RunResult:
        """Write a program (bytes or instructions) to external memory at ``base`` and run it."""
        blob = bytes(program) if isinstance(program, (bytes, bytearray, memoryview)) else encode_program(
            list(program))
        self.write_dram(base, blob)
        return self.run(base, max_instructions=max_instructions)

    def run(self, program_addr: int = 0, *, max_instructions: int | None = None) -> RunResult:
        """Fetch, decode and execute instructions from ``program_addr`` until HALT.

        Raises :class:`~braze.isa.IllegalInstruction` for an illegal word,
        :class:`~braze.isa.ExecutionError` for everything else the hardware
        would report (its ``pc`` is the byte address of the instruction),
        and :class:`InstructionLimitExceeded` after ``max_instructions``.
        """
        if program_addr < 0:
            raise ValueError(f"program_addr {program_addr} is negative")
        self._start_run()
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
            insn = decode(self._fetch(pc), pc=pc)
            executed += 1
            self._execute(insn, pc, executed)
            if insn.opcode is Opcode.HALT:
                break
            pc += INSN_BYTES
        return RunResult(
            status="done",
            counters={spec.name: int(value) for spec, value in zip(COUNTERS, self.counters, strict=True)},
            instructions=executed,
            cycles=self._scheduler.cycles,
            timeline=list(self._scheduler.entries),
            halt_pc=pc,
        )

    def _fetch(self, pc: int) -> int:
        if pc + INSN_BYTES > self.config.dram_bytes:
            raise ExecutionError(ErrorCause.FETCH_ERROR,
                                 f"instruction fetch of bytes 0x{pc:x}..0x{pc + INSN_BYTES - 1:x} is beyond "
                                 f"the {self.config.dram_bytes}-byte external memory", pc=pc)
        return int.from_bytes(self.dram[pc:pc + INSN_BYTES].tobytes(), "little")

    def _count(self, counter: Counter, amount: int) -> None:
        self.counters[counter] = (int(self.counters[counter]) + amount) & _COUNTER_MASK

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
        check_ranges(insn, config, pc=pc)
        check_overlap(insn, config, pc=pc)
        entry = self._scheduler.add(insn, pc=pc)  # raises DEADLOCK for an invalid token order

        if op in (Opcode.LOAD, Opcode.STORE) and not (op is Opcode.LOAD and insn.zero):
            self._check_dram(insn, pc, insn.dram, insn.rows, insn.stride, insn.len * element_bytes(insn.mem))
        elif op is Opcode.COUNTERS:
            self._check_dram(insn, pc, insn.dram, 1, 0, SNAPSHOT_BYTES)

        if self._races is not None:
            if entry.unit is Unit.CONTROL:
                self._races.barrier(seq)
            else:
                self._races.instruction(insn, seq, pc, instruction_accesses(insn, config))

        if op in BUSY_COUNTER:
            self._count(Counter[BUSY_COUNTER[op].upper()], entry.end - entry.start)
        # A barrier's wait comes before it starts, so a COUNTERS snapshot includes its own.
        self._count(Counter.STALL_DEP, entry.stall_dep)

        getattr(self, f"_exec_{op.name.lower()}")(insn, entry)
        self._count(instret_counter(op), 1)
        if op is Opcode.HALT:
            self.counters[Counter.CYCLES] = entry.end - self._period_start

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
                                clip_lo=regs[ConfigReg.CLIP_LO], clip_hi=regs[ConfigReg.CLIP_HI], **kwargs)
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

    def _exec_config(self, insn: Instruction, entry: ScheduledInstruction) -> None:
        self.config_regs[insn.reg] = insn.value

    def _exec_fence(self, insn: Instruction, entry: ScheduledInstruction) -> None:
        pass

    def _exec_counters(self, insn: Instruction, entry: ScheduledInstruction) -> None:
        self.counters[Counter.CYCLES] = entry.start - self._period_start
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


def run_program(program: bytes | Sequence[Instruction], config: Config, *, base: int = 0,
                max_instructions: int | None = None, data: dict[int, bytes] | None = None,
                ) -> tuple[Machine, RunResult]:
    """Convenience: a fresh :class:`Machine` with ``{addr: bytes}`` data and the program at ``base``, run."""
    machine = Machine(config)
    for addr, blob in (data or {}).items():
        machine.write_dram(addr, blob)
    result = machine.run_program(program, base=base, max_instructions=max_instructions)
    return machine, result
