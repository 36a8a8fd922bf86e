"""Weights resident on chip across a session's runs (issue 12, "small shapes").

A small model run again and again (batch-1 inference) spends much of each run loading the same
weights.  When every kernel of a compiled model fits the scratchpad and accumulator *side by side*,
:func:`plan_resident` gives each kernel its own window of on-chip rows (its instructions' row
fields shifted, :func:`relocate_rows`) and builds, per segment, two programs:

* **cold**: every kernel as compiled (in its window): it loads weights and parameters;
* **warm**: the same without the parameter LOADs that :func:`~braze.sw.compiler.stream.resident_loads`
  finds (rows no other instruction of the kernel writes): the rows still hold what the cold program
  loaded, as no other kernel of the model touches its window.  Its dependency tokens are re-derived
  (:func:`~braze.sw.compiler.stream.pipeline`; the dropped LOADs pushed some).

:class:`ResidentRuntime` runs the cold programs the first time and the warm ones as long as the
device ran nothing else since its last run (:attr:`~braze.sim.device.Device.run_count` and
``memory_generation`` unchanged): another model's run, a kernel run directly on the device, or a
simulator that died and was replaced makes the next run cold again.  A session that re-plans builds
a new runtime, so residency never outlives the plan that placed the rows.  Each kernel keeps its own
COUNTERS snapshot, so per-kernel counters stay exact; the warm kernels read fewer bytes and take
fewer cycles.

Cross-kernel pipelining (``pipelined=True``, ``InferenceSession(resident_weights="pipelined")``):
what serialises the kernels of one program is (1) the COUNTERS snapshot closing each kernel, a
barrier; (2) every kernel of the library placing its rows from row 0, so the next kernel's LOADs
would overwrite rows the previous one still reads; (3) a kernel reading what the previous one
stored, with no token queue between the store and the load unit.  The resident windows remove (2);
a pipelined warm program drops (1) -- one snapshot per segment, so its report has one row per
segment instead of one per kernel -- and keeps (3) as a FENCE (a true data dependency: the digits
MLP's layers form a chain, so only the snapshots' cycles go).

The loops the lowering rolls by default (:func:`~braze.sw.compiler.lower.lower` ``loops=True``) are
unrolled for the cold and warm programs (:func:`~braze.sw.compiler.kernels.loops.straight_line`: the
windows and the dropped LOADs are per instruction).  Models with other control flow in a kernel (a
zero-block skipping GEMM, an on-chip If) or too large for the scratchpad side by side run as the
plain :class:`~braze.sw.runtime.runtime.Runtime` does;
:attr:`ResidentRuntime.reason` says why.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from braze.isa import INSN_BYTES, Instruction, Memory, Opcode, encode_program
from braze.isa.encoding import CONTROL_FLOW_OPCODES, UNARY_VECTOR_OPS
from braze.isa.model import instruction_accesses
from braze.sw.compiler.kernels import OPERAND_ALIGN, Kernel
from braze.sw.compiler.kernels.loops import straight_line
from braze.sw.compiler.lower import CompiledModel, KernelStep, Segment, relocate
from braze.sw.compiler.stream import StreamError, pipeline, resident_loads

from .runtime import KernelReport, Runtime

__all__ = ["relocate_rows", "footprint", "ResidentPlan", "plan_resident", "ResidentRuntime"]


def _row_fields(insn: Instruction) -> list[tuple[str, Memory]]:
    """The fields of ``insn`` that name on-chip rows, with the memory of each (used fields only)."""
    op, args = insn.opcode, insn.args
    if op in (Opcode.LOAD, Opcode.STORE, Opcode.PREDICATE):
        return [("addr", args["mem"])]
    if op is Opcode.MATMUL:
        return [("acc", Memory.ACC), ("a", Memory.SPAD), ("b", Memory.SPAD)]
    if op is Opcode.EPILOGUE:
        fields = [("src", Memory.ACC), ("dst", args["out"])]
        fields += [(name, memory) for name, memory, used in (
            ("bias_addr", Memory.ACC, args["bias"]), ("quant_addr", Memory.ACC, args["requant"]),
            ("res_addr", Memory.SPAD, args["residual"])) if used]
        return fields
    if op is Opcode.VECTOR:
        fields = [("dst", args["dst_mem"]), ("src1", args["src1_mem"])]
        if args["op"] not in UNARY_VECTOR_OPS and not args["use_imm"]:
            fields.append(("src2", args["src2_mem"]))
        return fields
    if op is Opcode.TABLE:
        return [("addr", Memory.SPAD)]
    return []


def relocate_rows(instructions: list[Instruction], spad: int, acc: int) -> list[Instruction]:
    """``instructions`` with every scratchpad row they name moved by ``spad`` rows, every accumulator
    row by ``acc`` (dependency flags kept)."""
    shift = {Memory.SPAD: spad, Memory.ACC: acc}
    moved = []
    for insn in instructions:
        changes = {name: insn.args[name] + shift[memory] for name, memory in _row_fields(insn)
                   if shift[memory]}
        moved.append(insn.replace(**changes) if changes else insn)
    return moved


def footprint(kernel: Kernel) -> tuple[int, int]:
    """(scratchpad rows, accumulator rows) from row 0 to the last row any instruction touches."""
    ends = {"scratchpad row": 0, "accumulator row": 0}
    for insn in kernel.instructions:
        for space, index, _ in instruction_accesses(insn, kernel.config):
            if space in ends:
                end = index.stop if isinstance(index, slice) else int(np.max(index)) + 1
                ends[space] = max(ends[space], end)
    return ends["scratchpad row"], ends["accumulator row"]


@dataclasses.dataclass
class ResidentPlan:
    """Where each kernel's rows go and the cold and warm program of each segment.

    ``windows`` maps a kernel step's name to its (scratchpad, accumulator) row offsets;
    ``programs`` holds per segment index (cold address, warm address); ``binaries`` what goes there;
    ``resident_bytes`` the external bytes a warm run does not read; ``memory_end`` the first byte
    after the programs; ``pipelined`` whether a warm program has one snapshot per segment;
    ``kernel_ends`` per program address the index of each kernel's closing COUNTERS and its step name.
    """

    windows: dict[str, tuple[int, int]]
    programs: dict[int, tuple[int, int]]
    binaries: dict[int, bytes]
    resident_bytes: int
    memory_end: int
    pipelined: bool = False
    kernel_ends: dict[int, list[tuple[int, str]]] = dataclasses.field(default_factory=dict)


def _aligned(value: int, step: int) -> int:
    return -(-value // step) * step


def plan_resident(model: CompiledModel, *, pipelined: bool = False) -> ResidentPlan | str:
    """The resident plan of ``model``, or why it has none.

    With ``pipelined`` a segment's warm program keeps one COUNTERS snapshot, at its end (into the
    last kernel's counters buffer), instead of one per kernel: without those barriers the kernels
    overlap wherever their data allow (:func:`~braze.sw.compiler.stream.pipeline`; each kernel has
    its own rows, so only a kernel reading what an earlier one stored waits for it, by a FENCE).
    """
    from braze.isa.model import program_events

    config = model.config
    if model.guard is not None:
        return "an If on chip (its branch skips a fixed count of instructions)"
    steps = [step for segment in model.segments for step in segment.steps]
    if not steps:
        return "no kernels"
    windows: dict[str, tuple[int, int]] = {}
    # Loops the lowering rolled are unrolled: the windows and dropped LOADs are per instruction.
    kernels = {step.name: straight_line(step.kernel) for step in steps}
    spad_next = acc_next = 0
    for step in steps:
        if any(insn.opcode in CONTROL_FLOW_OPCODES for insn in kernels[step.name].instructions):
            return f"kernel {step.name} has control flow (its rows depend on registers)"
        spad_rows, acc_rows = footprint(kernels[step.name])
        # Offsets in whole bank rounds: every row keeps its bank.
        spad_at, acc_at = _aligned(spad_next, config.spad_banks), _aligned(acc_next, config.acc_banks)
        windows[step.name] = (spad_at, acc_at)
        spad_next, acc_next = spad_at + spad_rows, acc_at + acc_rows
    if spad_next > config.spad_rows or acc_next > config.acc_rows:
        return (f"its kernels need {spad_next} scratchpad and {acc_next} accumulator rows side by side; "
                f"config {config.name!r} has {config.spad_rows} and {config.acc_rows}")
    cursor = _aligned(model.memory_bytes, OPERAND_ALIGN)
    programs: dict[int, tuple[int, int]] = {}
    binaries: dict[int, bytes] = {}
    kernel_ends: dict[int, list[tuple[int, str]]] = {}
    saved = 0
    halt = Instruction.make(Opcode.HALT)
    for segment in model.segments:
        cold: list[Instruction] = []
        warm: list[Instruction] = []
        for step in segment.steps:
            kernel = kernels[step.name]
            placed = relocate_rows(relocate(kernel, step.addrs).instructions, *windows[step.name])
            dropped = frozenset(resident_loads(kernel))
            cold += placed
            warm += [insn for index, insn in enumerate(placed) if index not in dropped]
            if dropped:
                loads = [kernel.instructions[index] for index in sorted(dropped)]
                saved += program_events(loads, config)["dma_read_bytes"]
        if pipelined:
            last = [insn for insn in warm if insn.opcode is Opcode.COUNTERS][-1]
            warm = [insn for insn in warm if insn.opcode is not Opcode.COUNTERS] + [last]
        # Dropping LOADs drops the tokens they pushed: the warm program's tokens are re-derived from
        # its data (each remaining COUNTERS stays a barrier).
        try:
            warm = pipeline(warm, config)
        except StreamError as error:
            return f"segment {segment.index}'s warm program: {error}"
        addrs = []
        for program in (cold, warm):
            binary = encode_program(program + [halt])
            binaries[cursor] = binary
            addrs.append(cursor)
            # Each kernel ends at its COUNTERS (a pipelined warm program: the segment at its one).
            ends = [index for index, insn in enumerate(program) if insn.opcode is Opcode.COUNTERS]
            names = [step.name for step in segment.steps]
            kernel_ends[cursor] = list(zip(ends, names[-len(ends):], strict=True))
            cursor = _aligned(cursor + len(binary), OPERAND_ALIGN)
        programs[segment.index] = (addrs[0], addrs[1])
    if cursor > config.dram_bytes:
        return f"its cold and warm programs end at byte {cursor}, past the {config.dram_bytes}-byte memory"
    return ResidentPlan(windows, programs, binaries, saved, cursor, pipelined, kernel_ends)


class ResidentRuntime(Runtime):
    """A :class:`Runtime` that keeps the model's weights on chip between runs (see the module notes).

    :attr:`plan` is the :class:`ResidentPlan` (None when the model cannot have one, and :attr:`reason`
    says why); :attr:`last_run_warm` whether the last run used the warm programs.

    With ``pipelined`` the kernels of a segment also overlap in a warm run (:func:`plan_resident`).
    The trade-off: a warm run's report has one row per segment (its kernels' names joined by ``+``,
    the counters of the whole segment) instead of one per kernel -- a snapshot is a barrier, so
    per-kernel counters and overlap exclude each other.  The cold run keeps per-kernel rows.
    """

    def __init__(self, model: CompiledModel, device, *, pipelined: bool = False):
        super().__init__(model, device)
        planned = plan_resident(model, pipelined=pipelined)
        self.plan: ResidentPlan | None = planned if isinstance(planned, ResidentPlan) else None
        self.reason: str | None = planned if isinstance(planned, str) else None
        self.last_run_warm = False
        self._warm = False

    def load(self) -> None:
        super().load()
        if self.plan is not None:
            for addr, binary in self.plan.binaries.items():
                self.device.write(addr, binary)

    def _resident_now(self) -> bool:
        """Whether the device's rows still hold what this runtime's last run left there."""
        mark = getattr(self.device, "_braze_resident", None)
        return (self.plan is not None and mark is not None and mark[0] is self and self.loaded
                and mark[1] == self.device.memory_generation and mark[2] == self.device.run_count)

    def segment_program_addr(self, segment: Segment) -> int:
        if self.plan is None:
            return super().segment_program_addr(segment)
        cold, warm = self.plan.programs[segment.index]
        return warm if self._warm else cold

    def kernel_at(self, segment: Segment, pc: int | None) -> KernelStep:
        if self.plan is None:
            return super().kernel_at(segment, pc)
        base = self.segment_program_addr(segment)
        steps = {step.name: step for step in segment.steps}
        index = None if pc is None else (pc - base) // INSN_BYTES
        for end, name in self.plan.kernel_ends[base]:
            if index is not None and 0 <= index <= end:
                return steps[name]
        return segment.steps[-1]

    def run(self, feeds: Mapping[str, np.ndarray], *, observe=None) -> dict[str, np.ndarray]:
        self._warm = self._resident_now()
        self.device._braze_resident = None        # until this run has completed
        outputs = super().run(feeds, observe=observe)
        self.last_run_warm = self._warm
        if self._warm and self.plan.pipelined and self.last_report is not None:
            self.last_report.kernels = self._segment_rows(self.last_report.kernels)
        if self.plan is not None:
            self.device._braze_resident = (self, self.device.memory_generation, self.device.run_count)
        return outputs


    def _segment_rows(self, rows: list[KernelReport]) -> list[KernelReport]:
        """A pipelined warm run's report: per segment one row, from the snapshot its last kernel's row
        read (the segment's); the other kernels' snapshots are those of an earlier run."""
        segment_of = {step.name: segment for segment in self.model.segments for step in segment.steps}
        merged: list[KernelReport] = []
        for row in rows:
            segment = segment_of[row.kernel]
            if row.kernel != segment.steps[-1].name:
                continue
            names = [step.name for step in segment.steps]
            merged.append(dataclasses.replace(
                row, kernel="+".join(names), ops=tuple(op for step in segment.steps for op in step.ops),
                predicted_cycles=sum(step.kernel.predicted_cycles for step in segment.steps)))
        return merged
