"""Streams of small kernels in one program: cross-kernel pipelining and weights resident across calls.

An isolated small kernel is dominated by fixed costs (issue 12, "small shapes"): the memory latency of
its first LOADs, shifting its weights in, filling and draining the array, the STORE's write response
and the closing COUNTERS snapshot -- a *barrier*, so the next kernel of a linked program
(:func:`~braze.sw.compiler.kernels.link`) starts only once everything of this one has retired.  Two
tools remove what software can:

* :func:`pipeline` re-derives the dependency tokens of a straight-line program from what every
  instruction reads and writes on chip (:func:`braze.isa.model.instruction_accesses`), so that
  kernels linked without barriers between them overlap wherever their data allow it: the next
  kernel's LOADs run while the previous one computes and stores, and wait (by a token) only for
  the instructions still using the rows they overwrite.  The load and store units have no token
  queue between them, so a LOAD that reads external bytes a STORE wrote (or the converse), or
  rows only the store unit still reads, gets a FENCE instead.  The reference model's race check
  holds every such program to its data dependencies.
* :func:`stream` builds one program that runs ``calls`` back-to-back calls of one kernel, each on
  its own inputs and outputs, with the kernel's *parameters* (weights, bias/requantize rows,
  zero-point tiles, activation tables) **resident**: every parameter LOAD whose on-chip rows no
  other instruction of the kernel writes runs in the first call only, so later calls load only
  their activations.  One COUNTERS snapshot closes the stream; per-call counters are not kept
  (a snapshot is a barrier: keeping one per call would serialise the calls again), which is the
  trade-off -- :attr:`Stream.steady_cycles_per_call` is measured from two streams' snapshots.

Packing several independent small GEMMs that share their weights into one kernel is
:func:`~braze.sw.compiler.kernels.gemm` with the calls' rows stacked (``M * calls`` rows);
``braze bench kernels`` reports it beside the stream.

The tiling the library keeps is the fastest *alone*: it splits the work so that loads overlap
compute within the kernel.  In a stream the next call's loads overlap this one's compute anyway,
so fewer, larger tiles (less weight shift-in and array drain per row) may be faster there:
:func:`fastest_stream` picks among a kernel's tilings by the timing model's steady-state cycles per
call, or by cycles measured on a device (the packed GEMM 256x16x16 on ``default``: 110.1 -> 104.2
cycles per 16-row call on the RTL; on ``large`` 46.9 -> 40.0, where the timing model would pick one M
tile of 256 rows, predicted 36.2 and measured 51.7).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from braze.isa import SNAPSHOT_BYTES, Config, Instruction, Opcode, Unit, parse_snapshot
from braze.isa.encoding import CONTROL_FLOW_OPCODES
from braze.isa.errors import BrazeError, ExecutionError
from braze.isa.model import instruction_accesses
from braze.isa.timing import schedule

from .kernels import OPERAND_ALIGN, Kernel, Operand

__all__ = ["StreamError", "pipeline", "resident_loads", "Stream", "StreamResult", "stream",
           "steady_cycles_per_call", "fastest_stream"]


class StreamError(BrazeError, ValueError):
    """A program or kernel that cannot be pipelined or streamed (names what and why)."""


# The token queue between two units: (push flag on the producer, pop flag on the consumer).  The load
# and store units have none between them.
_QUEUE_FLAGS = {
    (Unit.LOAD, Unit.COMPUTE): ("push_next", "pop_prev"),
    (Unit.COMPUTE, Unit.LOAD): ("push_prev", "pop_next"),
    (Unit.COMPUTE, Unit.STORE): ("push_next", "pop_prev"),
    (Unit.STORE, Unit.COMPUTE): ("push_prev", "pop_next"),
}
_UNITS = (Unit.LOAD, Unit.COMPUTE, Unit.STORE)
_BARRIERS = frozenset({Opcode.FENCE, Opcode.COUNTERS, Opcode.HALT})
_ON_CHIP_SPACES = {"scratchpad row": 0, "accumulator row": 1}


def _span(index) -> tuple[int, int]:
    """The smallest byte interval holding an access's external bytes (a slice or an index array)."""
    if isinstance(index, slice):
        return index.start, index.stop
    return int(index.min()), int(index.max()) + 1


class _Tracker:
    """Who last wrote and read every on-chip row, per unit, and the external intervals the load and
    store units touched since the last barrier."""

    def __init__(self, config: Config):
        sizes = (config.spad_rows, config.acc_rows)
        self.writer_unit = [np.full(size, -1, np.int8) for size in sizes]
        self.writer_index = [np.full(size, -1, np.int64) for size in sizes]
        self.reader_index = [[np.full(size, -1, np.int64) for _ in _UNITS] for size in sizes]
        self.dram: list[tuple[int, int, Unit, bool]] = []       # (start, end, unit, written)

    def reset(self) -> None:
        """After a barrier every earlier instruction has completed: nothing is left to wait for."""
        for arrays in (self.writer_unit, self.writer_index):
            for array in arrays:
                array.fill(-1)
        for per_unit in self.reader_index:
            for array in per_unit:
                array.fill(-1)
        self.dram.clear()

    def waits(self, unit: Unit, accesses) -> tuple[dict[Unit, int], bool]:
        """The latest instruction of each other unit this one must wait for, and whether it needs a
        FENCE (a hazard with a unit it has no token queue to)."""
        wait: dict[Unit, int] = {}
        fence = False

        def need(other: Unit, index: int) -> None:
            nonlocal fence
            if (other, unit) not in _QUEUE_FLAGS:
                fence = True
            elif index > wait.get(other, -1):
                wait[other] = index

        for space, index, write in accesses:
            if space not in _ON_CHIP_SPACES:
                start, end = _span(index)
                for other_start, other_end, other, written in self.dram:
                    if other is not unit and (write or written) and start < other_end and other_start < end:
                        fence = True
                continue
            s = _ON_CHIP_SPACES[space]
            writer_units = self.writer_unit[s][index]
            writer_indices = self.writer_index[s][index]
            for other in _UNITS:
                if other is unit:
                    continue
                mask = writer_units == other.value
                if mask.any():
                    need(other, int(writer_indices[mask].max()))
                if write:
                    latest = int(self.reader_index[s][other.value][index].max(initial=-1))
                    if latest >= 0:
                        need(other, latest)
        return wait, fence

    def record(self, unit: Unit, position: int, accesses) -> None:
        for space, index, write in accesses:
            if space not in _ON_CHIP_SPACES:
                start, end = _span(index)
                self.dram.append((start, end, unit, write))
                continue
            if not write:
                self.reader_index[_ON_CHIP_SPACES[space]][unit.value][index] = position
        for space, index, write in accesses:
            if write and space in _ON_CHIP_SPACES:
                s = _ON_CHIP_SPACES[space]
                self.writer_unit[s][index] = unit.value
                self.writer_index[s][index] = position
                for per_unit in self.reader_index[s]:
                    per_unit[index] = -1


def pipeline(program: Sequence[Instruction], config: Config) -> list[Instruction]:
    """``program`` with its dependency tokens re-derived from its data, in the same order.

    Every instruction waits (pops a token) for the latest instruction of each other unit that wrote
    a row it reads or writes, or read a row it writes -- and for nothing else, so instructions of
    consecutive kernels overlap.  Existing tokens are dropped; FENCE, COUNTERS and HALT stay
    barriers; a hazard between the load and the store unit (no token queue) gets a FENCE.  Only
    straight-line programs: a BRANCH, SCALAR or PREDICATE raises :class:`StreamError` (their
    registers and loops are not a fixed set of accesses), and so does a result the timing model
    finds deadlocked (more tokens in flight than ``token_depth`` in program order).
    """
    tracker = _Tracker(config)
    # Per unit: the output positions of its instructions, in order; the flags added so far.
    out: list[Instruction] = []
    flags: list[set[str]] = []
    unit_positions: dict[Unit, list[int]] = {unit: [] for unit in _UNITS}
    waited = {queue: -1 for queue in _QUEUE_FLAGS}
    for pc, insn in enumerate(program):
        if insn.opcode in CONTROL_FLOW_OPCODES:
            raise StreamError(f"pipeline: instruction {pc} ({insn.opcode.name}) is control flow; only "
                              "straight-line programs can be pipelined")
        if insn.opcode in _BARRIERS:
            out.append(insn.with_deps(frozenset()))
            flags.append(set())
            tracker.reset()
            continue
        unit = insn.unit
        accesses = instruction_accesses(insn, config)
        wait, fence = tracker.waits(unit, accesses)
        if fence:
            out.append(Instruction.make(Opcode.FENCE))
            flags.append(set())
            tracker.reset()
            wait = {}
        position = len(unit_positions[unit])
        mine: set[str] = set()
        for other, index in wait.items():
            queue = (other, unit)
            if index > waited[queue]:
                push, pop = _QUEUE_FLAGS[queue]
                flags[unit_positions[other][index]].add(push)
                mine.add(pop)
                waited[queue] = index
        unit_positions[unit].append(len(out))
        out.append(insn)
        flags.append(mine)
        tracker.record(unit, position, accesses)
    result = [insn.with_deps(frozenset(extra)) for insn, extra in zip(out, flags, strict=True)]
    try:
        schedule(result, config)      # the timing model dispatches in program order: no token deadlock
    except ExecutionError as error:
        raise StreamError(f"pipeline: the re-derived tokens cannot run in this order ({error})") from None
    return result


def _written_rows(insn: Instruction, config: Config) -> list[tuple[int, slice | np.ndarray]]:
    return [(_ON_CHIP_SPACES[space], index) for space, index, write in instruction_accesses(insn, config)
            if write and space in _ON_CHIP_SPACES]


def resident_loads(kernel: Kernel) -> list[int]:
    """Indices of the kernel's parameter LOADs that can stay resident across back-to-back calls.

    A LOAD qualifies when it reads a ``"param"`` operand and no other instruction of the kernel writes
    any of the on-chip rows it fills: after one call those rows still hold the parameters.
    """
    config = kernel.config
    params = [(op.addr, op.end) for op in kernel.operands.values() if op.role == "param"]
    writes = [np.zeros(config.spad_rows, np.int32), np.zeros(config.acc_rows, np.int32)]
    written = []
    for insn in kernel.instructions:
        rows = _written_rows(insn, config)
        written.append(rows)
        for space, index in rows:
            np.add.at(writes[space], index, 1)
    resident = []
    for number, insn in enumerate(kernel.instructions):
        if insn.opcode is not Opcode.LOAD or insn.zero:
            continue
        if not any(start <= insn.dram < end for start, end in params):
            continue
        if all(int(writes[space][index].max()) == 1 for space, index in written[number]):
            resident.append(number)
    return resident


@dataclasses.dataclass
class StreamResult:
    """What :meth:`Stream.run` read back: each call's outputs, the stream's one snapshot, the run's cycles."""

    outputs: list[dict[str, np.ndarray]]
    counters: dict[str, int]
    cycles: int


@dataclasses.dataclass
class Stream:
    """One program running ``calls`` calls of ``kernel`` back to back (see :func:`stream`).

    Attributes
    ----------
    kernel : Kernel
        The kernel every call runs (its parameters at their own addresses, shared by the calls).
    calls : list of dict of str to Operand
        Per call, its ``"input"`` and ``"output"`` operands at their addresses in this stream.
    instructions : list of Instruction
        The pipelined program, closed by one COUNTERS snapshot; no HALT.
    counters_addr : int
        Where that snapshot goes.
    resident : tuple of int
        The kernel's parameter LOADs (indices) that only the first call runs.
    data_end : int
        First byte after every operand and the snapshot (the program may go there).
    """

    kernel: Kernel
    calls: list[dict[str, Operand]]
    instructions: list[Instruction]
    counters_addr: int
    resident: tuple[int, ...]
    data_end: int

    @property
    def resident_bytes(self) -> int:
        """External bytes each call after the first does not read (its resident parameter LOADs)."""
        from braze.isa.model import program_events

        loads = [self.kernel.instructions[i] for i in self.resident]
        return program_events(loads, self.kernel.config)["dma_read_bytes"] if loads else 0

    def program(self) -> list[Instruction]:
        return self.instructions + [Instruction.make(Opcode.HALT)]

    def run(self, device, params: Mapping[str, np.ndarray], inputs: Sequence[Mapping[str, np.ndarray]], *,
            max_cycles: int | None = None) -> StreamResult:
        """Write the parameters and every call's inputs, run the stream once, and read the outputs back."""
        if len(inputs) != len(self.calls):
            raise StreamError(f"stream of {len(self.calls)} calls given {len(inputs)} input mappings")
        given = [(self.kernel.operands, params, "parameter")] + [
            (operands, values, f"call {number} input") for number, (operands, values)
            in enumerate(zip(self.calls, inputs, strict=True))]
        for operands, values, what in given:
            for name, value in values.items():
                operand = operands.get(name)
                if operand is None or operand.role == "output":
                    raise StreamError(f"stream of {self.kernel.name}: no {what} named {name!r}")
                value = np.asarray(value)
                if value.shape != operand.shape:
                    raise StreamError(f"stream of {self.kernel.name}: {what} {name!r} has shape "
                                      f"{value.shape}, not {operand.shape}")
                device.write(operand.addr, value.astype(operand.dtype))
        base = -(-self.data_end // OPERAND_ALIGN) * OPERAND_ALIGN
        status = device.run(self.program(), base=base, max_cycles=max_cycles)
        outputs = [{op.name: device.read_array(op.addr, op.shape, op.dtype)
                    for op in call.values() if op.role == "output"} for call in self.calls]
        counters = parse_snapshot(device.read(self.counters_addr, SNAPSHOT_BYTES))
        return StreamResult(outputs, counters, status.cycles)


def stream(kernel: Kernel, calls: int, *, resident: bool = True) -> Stream:
    """``calls`` back-to-back calls of ``kernel`` in one pipelined program.

    Call ``i`` reads and writes its own copy of every ``"input"``/``"output"`` operand (placed after
    the kernel's operands, call after call); the ``"param"`` operands stay where the kernel has them
    and are shared.  With ``resident`` the parameter LOADs of :func:`resident_loads` run in the first
    call only.  The per-call COUNTERS snapshots are dropped and one closes the stream (at the
    kernel's ``counters`` operand); :func:`pipeline` derives the tokens.
    """
    if not isinstance(calls, int) or isinstance(calls, bool) or calls < 1:
        raise StreamError(f"stream of {kernel.name}: calls must be a positive integer, not {calls!r}")
    from .lower import relocate

    per_call = [op for op in kernel.operands.values() if op.role in ("input", "output")]
    cursor = kernel.data_end
    kept = tuple(resident_loads(kernel)) if resident else ()
    dropped = frozenset(kept)
    program: list[Instruction] = []
    placed: list[dict[str, Operand]] = []
    for number in range(calls):
        addrs = {}
        for op in per_call:
            cursor = -(-cursor // OPERAND_ALIGN) * OPERAND_ALIGN
            addrs[op.name] = cursor
            cursor += op.nbytes
        moved = relocate(kernel, addrs)
        placed.append({op.name: moved.operands[op.name] for op in per_call})
        for index, insn in enumerate(moved.instructions):
            if insn.opcode is Opcode.COUNTERS or (number > 0 and index in dropped):
                continue
            program.append(insn)
    if cursor > kernel.config.dram_bytes:
        raise StreamError(f"stream of {calls} {kernel.name} calls needs {cursor} bytes of external memory; "
                          f"config {kernel.config.name!r} has {kernel.config.dram_bytes}")
    counters = kernel.operands["counters"].addr
    program.append(Instruction.make(Opcode.COUNTERS, dram=counters, reset=True))
    return Stream(kernel, placed, pipeline(program, kernel.config), counters, kept, cursor)


def steady_cycles_per_call(kernel: Kernel, calls: int) -> float:
    """The timing model's cycles per call of ``kernel`` in a stream of ``calls`` (at least 2) calls, in the
    steady state: ``(cycles(calls) - cycles(1)) / (calls - 1)`` (the first call's fill and the stream's
    drain cancel), as ``braze bench kernels`` measures it on a device."""
    if calls < 2:
        raise StreamError(f"steady cycles per call of {kernel.name}: need at least 2 calls, not {calls}")
    one, many = (schedule(stream(kernel, count).program(), kernel.config).cycles for count in (1, calls))
    return (many - one) / (calls - 1)


def fastest_stream(candidates: Sequence[Kernel], calls: int,
                   cycles_per_call: Callable[[Kernel, int], float] = steady_cycles_per_call) -> Kernel:
    """Of ``candidates`` -- kernels computing the same thing, say one GEMM at each of its tilings
    (:func:`~braze.sw.compiler.kernels.candidate_tilings`) -- the one whose stream of ``calls`` calls is
    fastest per call in the steady state: as the timing model predicts (:func:`steady_cycles_per_call`),
    or as ``cycles_per_call(kernel, calls)`` says (measured on a device, say: the timing model can be
    wrong about a stream -- the packed 256x16x16 GEMM on ``large`` at one M tile of 256 rows, predicted
    36.2 cycles per 16 rows, measures 51.7 on the RTL); the first on a tie.  A candidate that cannot be
    streamed (loops, or tokens that cannot run in the stream's order) is passed over; if none can,
    :class:`StreamError`."""
    best, best_cycles, errors = None, 0.0, []
    for kernel in candidates:
        try:
            cycles = cycles_per_call(kernel, calls)
        except StreamError as error:
            errors.append(str(error))
            continue
        if best is None or cycles < best_cycles:
            best, best_cycles = kernel, cycles
    if best is None:
        raise StreamError("no candidate kernel can be streamed" + (f": {errors[0]}" if errors else ""))
    return best
