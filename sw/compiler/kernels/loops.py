"""Loops from straight-line kernels (issue 13): the library's own tiling, as a short program.

:func:`roll_loops` turns a straight-line program into one with counted loops: wherever a run of
instructions repeats with period ``p`` -- the same opcodes, tokens and shapes, each address field
(``REGISTER_OFFSETS``: LOAD/STORE ``addr``, ``dram``; MATMUL ``acc``, ``a``, ``b``) advancing by
a constant step per repetition -- the run becomes one copy of the ``p`` instructions whose
varying fields name a scalar register, one SCALAR per distinct step that advances it, and a
BRANCH back.  The load, compute and store units therefore receive *exactly* the instructions of
the straight-line program, in the same order with the same tokens (:func:`expand_loops` checks
it): the tiling, double buffering and load/compute/store overlap of the kernel are kept, and
only the dispatcher does more work (one cycle per SCALAR and BRANCH), which the units' queues
usually hide.  The program's bytes, and the instruction-fetch traffic, fall.

Registers: each loop sets every register it uses before it starts (register ``r`` counts from 0
by its step, and the field keeps its first value, so the sum is the straight-line value in every
iteration and every address still lies inside its operand: :func:`~braze.sw.compiler.lower.relocate`
moves a rolled kernel as it moves a straight-line one), so a rolled kernel depends on no register
the host writes, and loops one after the other reuse r1..r7.  A loop needs one register per
distinct step (at most six), or one counter if nothing varies, and one holding where the first
ends.

Which runs become loops is a shortest-program choice (dynamic programming over the program):
a loop of period ``p`` with ``s`` registers costs ``p + 2*s + 2`` instructions.  ``min_body``
keeps loop bodies at least that long (a longer period is a multiple of a short one, so a
short-period run is then unrolled a few times): fewer dispatcher cycles per instruction.  A
loop position never crosses from one operand into another (``region``, :func:`operand_region`):
the lowering places operands apart.

The lowering rolls every kernel it places this way by default
(:meth:`~braze.sw.compiler.lower.KernelRecipe.looped_kernel`), after fusion and tiling chose it,
so the search must cost little beside the compile: the repeated runs are found once with array
arithmetic for every period and body length (:class:`_Repeats`), and the choice visits only the
positions where a loop can start.

:func:`looped_kernel` prices the rolled program with the timing model (:func:`looped_cycles`)
and returns it as a :class:`~.common.Kernel` whose :attr:`~.common.Kernel.events` count the
dispatched stream; :func:`loops_if_no_slower` (:func:`~.matmul.gemm` ``loops=True``) keeps the
shortest rolled form the timing model predicts no slower than the straight-line kernel.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from braze.isa import Config, Instruction, Opcode
from braze.isa.encoding import REGISTER_OFFSETS
from braze.isa.model import branch_taken, program_events, resolve_registers
from braze.isa.timing import Scheduler

from .common import Kernel, KernelError

__all__ = ["roll_loops", "expand_loops", "looped_cycles", "looped_kernel", "loops_if_no_slower",
           "operand_region", "straight_line", "MIN_SHRINK", "spread_predicate",
           "dispatched_events", "LoopedKernel", "LOOP_REGISTERS"]

#: Scalar registers a rolled loop may use (r0 reads as zero).
LOOP_REGISTERS = (1, 2, 3, 4, 5, 6, 7)
#: The longest loop body :func:`roll_loops` looks for (instructions).
MAX_PERIOD = 48
_CONTROL = (Opcode.SCALAR, Opcode.BRANCH, Opcode.PREDICATE)
#: The most address fields one instruction has (MATMUL: ``acc``, ``a``, ``b``).
_ADDRESS_FIELDS = max(len(fields) for fields in REGISTER_OFFSETS.values())
_INT32 = 1 << 31


def _shape(insn: Instruction) -> tuple | None:
    """What must be equal between repetitions: everything but the address fields; None when the
    instruction already names a register or cannot be in a loop body."""
    offsets = REGISTER_OFFSETS.get(insn.opcode, {})
    args = insn.args
    if any(args[register] for register in offsets.values()):
        return None
    fixed = tuple((name, value) for name, value in args.items() if name not in offsets)
    return insn.opcode, insn.deps, fixed


def _registers_needed(steps: Sequence[tuple]) -> tuple[int, ...]:
    """The distinct nonzero steps of a loop body, in order of appearance (one register each)."""
    seen: dict[int, None] = {}
    for step in steps:
        for value in step:
            if value:
                seen.setdefault(value, None)
    return tuple(seen)


#: Which operand an instruction's external address lies in (None: it has none); two instructions
#: in different operands are never one loop position (see :func:`roll_loops`).
Region = Callable[[Instruction], object]


class _Repeats:
    """The repeated runs of a straight-line program, found once for every loop-body length
    (:func:`roll_loops` chooses among them; :func:`loops_if_no_slower` for several ``min_body``).

    Each instruction's shape (:func:`_shape`, with its ``region``) becomes a small integer and its
    address fields a row of an array, once; comparing every instruction ``t`` with ``t + p`` for
    every period ``p`` is then array arithmetic, and the choice only visits the (position, period)
    pairs at which a loop can start: a few milliseconds for the kernels a model compiles.
    """

    def __init__(self, program: Sequence[Instruction], max_period: int, region: Region | None,
                 longest: int | None = None):
        self.program = program = list(program)
        n = len(program)
        ids: dict[tuple, int] = {}
        shape_ids = np.empty(n, np.int64)
        addresses = np.zeros((n, _ADDRESS_FIELDS), np.int64)
        self.fields = [len(REGISTER_OFFSETS.get(insn.opcode, {})) for insn in program]
        for t, insn in enumerate(program):
            shape = _shape(insn)
            if shape is None:
                raise ValueError("register offset")
            if region is not None:
                shape = (*shape, region(insn))
            shape_ids[t] = ids.setdefault(shape, len(ids))
            args = insn.args
            for column, field in enumerate(REGISTER_OFFSETS.get(insn.opcode, {})):
                addresses[t, column] = args[field]
        if longest is not None and len(ids) > longest:
            # Every shape keeps at least one instruction in any rolled form: it cannot be that short.
            raise ValueError("too many shapes")
        # Row p-1 is period p, for every period at once: step[p][t] the address steps from instruction
        # t to t + p (valid where the two have one shape), ``known`` the length of the run of valid
        # steps from t, ``same`` the length of the run of positions from t whose step equals the step
        # a period earlier.
        periods = np.arange(1, max(1, min(max_period, n // 2)) + 1)
        later = np.arange(n)[None, :] + periods[:, None]                  # t + p
        inside = later < n
        later = np.minimum(later, n - 1)
        valid = inside & (shape_ids[later] == shape_ids[None, :])
        step = np.where(inside[:, :, None], addresses[later] - addresses[None, :, :], 0)
        earlier = np.maximum(np.arange(n)[None, :] - periods[:, None], 0)  # t - p
        rows = np.arange(len(periods))[:, None]
        repeat = (np.arange(n)[None, :] >= periods[:, None]) & valid & valid[rows, earlier] \
            & (step == step[rows, earlier]).all(axis=2)
        known, same = _run_lengths(valid), _run_lengths(repeat)
        self.steps = {int(p): step[p - 1] for p in periods}
        self.same = {int(p): same[p - 1] for p in periods}
        self._needed: dict[tuple[int, int], tuple[int, ...]] = {}     # registers of the loop (p, i)
        #: Per position, the periods at which a loop can start there (a whole period of valid steps).
        self.starts: list[list[int]] = [[] for _ in range(n)]
        for row, t in zip(*np.nonzero(known[:, :n] >= periods[:, None]), strict=True):
            self.starts[t].append(int(periods[row]))

    def _step_tuples(self, p: int, i: int) -> list[tuple[int, ...]]:
        """The address steps of the loop body ``program[i:i + p]`` (one tuple per instruction)."""
        rows = self.steps[p][i:i + p].tolist()
        return [tuple(row[:fields]) for row, fields in zip(rows, self.fields[i:i + p], strict=True)]

    def roll(self, min_body: int) -> list[Instruction]:
        """The shortest rolled form with loop bodies of at least ``min_body`` instructions."""
        program, n = self.program, len(self.program)
        # best[i]: length of the shortest rolled form of program[i:], and the choice that gives it.
        best = [0] * (n + 1)
        choice: list[tuple[int, int] | None] = [None] * (n + 1)
        for i in range(n - 1, -1, -1):
            best[i], choice[i] = best[i + 1] + 1, None
            for p in self.starts[i]:
                if p < min_body:
                    continue
                count = 2 + int(self.same[p][i + p]) // p
                counts = range(count, max(1, count - 2), -1)
                # The cheapest loop (one register) cannot beat what is known: skip finding its registers.
                end = i + count * p
                rest = best[end] if count == 2 else min(best[end], best[end - p])
                if p + 4 + rest >= best[i]:
                    continue
                needed = self._needed.get((p, i))
                if needed is None:
                    needed = self._needed[p, i] = _registers_needed(self._step_tuples(p, i))
                if len(needed) >= len(LOOP_REGISTERS) or any(abs(count * s) >= _INT32 for s in needed):
                    continue
                cost = p + 2 * max(1, len(needed)) + 2
                for c in counts:
                    if cost + best[i + c * p] < best[i]:
                        best[i], choice[i] = cost + best[i + c * p], (p, c)
        rolled: list[Instruction] = []
        i = 0
        while i < n:
            if choice[i] is None:
                rolled.append(program[i])
                i += 1
                continue
            p, count = choice[i]
            rolled += _loop(program[i:i + p], self._step_tuples(p, i), count)
            i += p * count
        return rolled


def _run_lengths(flags: np.ndarray) -> np.ndarray:
    """Per row and position t (and n), how many of ``flags[row, t], flags[row, t+1], ...`` are true
    before the first false one."""
    n = flags.shape[1]
    positions = np.arange(n + 1)
    false_at = np.where(np.pad(flags, ((0, 0), (0, 1))), n, positions)
    next_false = np.minimum.accumulate(false_at[:, ::-1], axis=1)[:, ::-1]
    return next_false - positions


def _repeats(program: Sequence[Instruction], max_period: int, region: Region | None,
             longest: int | None = None) -> _Repeats | None:
    """The :class:`_Repeats` of ``program``, or None when it cannot be rolled (too short, control
    flow already, register offsets) or not into at most ``longest`` instructions."""
    if len(program) < 2 or any(insn.opcode in _CONTROL for insn in program):
        return None
    try:
        return _Repeats(program, max_period, region, longest)
    except ValueError:
        return None


def roll_loops(program: Sequence[Instruction], *, min_body: int = 1, max_period: int = MAX_PERIOD,
               region: Region | None = None) -> list[Instruction]:
    """``program`` (straight-line) with its repeated runs as counted loops; see the module.

    A program that already has control flow (SCALAR, BRANCH, PREDICATE) or register offsets is
    returned as it is.  ``min_body``: the shortest loop body considered.  ``region``: which operand
    an instruction's address lies in (:func:`operand_region`); the repetitions of a loop position
    then stay in one operand, so relocating the operands moves the loop's addresses with them.
    """
    repeats = _repeats(program, max_period, region)
    return list(program) if repeats is None else repeats.roll(max(1, min_body))


def operand_region(kernel: Kernel) -> Region:
    """Which of ``kernel``'s operands an instruction's external address lies in, as
    :func:`~braze.sw.compiler.lower.relocate` sees it (LOAD, STORE and COUNTERS; a zero-fill LOAD
    reads nothing): a loop whose iterations crossed from one operand into the next would read the
    wrong bytes once the lowering places the two apart."""
    bounds = sorted((op.addr, op.end, name) for name, op in kernel.operands.items())

    def region(insn: Instruction) -> object:
        if insn.opcode not in (Opcode.LOAD, Opcode.STORE, Opcode.COUNTERS) or \
                (insn.opcode is Opcode.LOAD and insn.zero):
            return None
        dram = insn.dram
        return next((name for start, end, name in bounds if start <= dram < end), "outside")

    return region


def _loop(body: Sequence[Instruction], steps: Sequence[tuple], count: int) -> list[Instruction]:
    """The loop running ``body`` ``count`` times, its address fields advancing by ``steps``."""
    needed = _registers_needed(steps) or (1,)
    register = dict(zip(needed, LOOP_REGISTERS, strict=False))
    end = LOOP_REGISTERS[len(needed)]       # the first register's value after the last iteration
    out = [Instruction.make(Opcode.SCALAR, dst=register[s], imm=0) for s in needed]
    out.append(Instruction.make(Opcode.SCALAR, dst=end, imm=count * needed[0]))
    for insn, step in zip(body, steps, strict=True):
        fields = REGISTER_OFFSETS.get(insn.opcode, {}).values()
        values = {register_field: register[s] for register_field, s in zip(fields, step, strict=True) if s}
        out.append(insn.replace(**values) if values else insn)
    out += [Instruction.make(Opcode.SCALAR, dst=register[s], src1=register[s], imm=s) for s in needed]
    out.append(Instruction.make(Opcode.BRANCH, cond="ne", a=register[needed[0]], b=end,
                                offset=-(len(body) + len(needed))))
    return out


#: What a PREDICATE writes, given how many PREDICATEs were dispatched before it (:func:`expand_loops`).
Predicate = Callable[[int], int]


def spread_predicate(zero_fraction: float) -> Predicate:
    """PREDICATE results for a run in which ``zero_fraction`` of the tested blocks are all zero (the
    ``any`` test writes 0), spread evenly: test ``i`` finds zero when ``floor((i+1)*f)`` exceeds
    ``floor(i*f)``."""
    if not 0.0 <= zero_fraction <= 1.0:
        raise KernelError(f"a zero-block fraction of {zero_fraction} is outside 0..1")
    return lambda index: int(math.floor((index + 1) * zero_fraction) == math.floor(index * zero_fraction))


def expand_loops(program: Sequence[Instruction], *, limit: int = 10_000_000,
                 predicate: Predicate | None = None,
                 on_taken: Callable[[], None] | None = None) -> Iterator[tuple[Instruction, Instruction]]:
    """The instructions a run of ``program`` dispatches, in order: ``(resolved, as written)`` --
    register offsets added -- with its SCALARs and BRANCHes executed on registers that start at 0
    and its PREDICATEs writing what ``predicate`` says.  ``on_taken`` is called after a taken
    BRANCH is yielded (:func:`looped_cycles` prices the fetch unit's restart).

    Raises :class:`KernelError` for a PREDICATE without ``predicate`` (its result depends on the
    data), a branch out of the program, or more than ``limit`` instructions dispatched.
    """
    registers = [0] * 8
    pc, dispatched, tested = 0, 0, 0
    while 0 <= pc < len(program):
        insn = program[pc]
        dispatched += 1
        if dispatched > limit:
            raise KernelError(f"looped program: more than {limit} instructions dispatched "
                              f"(a loop that never ends?)")
        if insn.opcode is Opcode.PREDICATE:
            if predicate is None:
                raise KernelError(f"looped program: the PREDICATE at instruction {pc} depends on the data")
            resolved = resolve_registers(insn, registers)
            if insn.dst:
                registers[insn.dst] = predicate(tested)
            tested += 1
            yield resolved, insn
        elif insn.opcode is Opcode.SCALAR:
            if insn.dst:
                value = (registers[insn.src1] + registers[insn.src2] + insn.imm) & 0xFFFF_FFFF
                registers[insn.dst] = value - (1 << 32) if value >= _INT32 else value
            yield insn, insn
        elif insn.opcode is Opcode.BRANCH:
            yield insn, insn
            if branch_taken(insn.cond, registers[insn.a], registers[insn.b]):
                if on_taken is not None:
                    on_taken()
                pc += insn.offset
                continue
        else:
            yield resolve_registers(insn, registers), insn
        pc += 1
    if pc != len(program):
        raise KernelError(f"looped program: a branch leaves the program (to instruction {pc})")


def looped_cycles(program: Sequence[Instruction], config: Config, *,
                  predicate: Predicate | None = None) -> int:
    """Cycles of ``program`` followed by HALT under the timing model (the reference model's); its
    PREDICATEs write what ``predicate`` says (:func:`expand_loops`)."""
    scheduler = Scheduler(config, keep_entries=False)
    for resolved, written in expand_loops(program, predicate=predicate, on_taken=scheduler.redirect):
        scheduler.add(resolved, unresolved=written)
    scheduler.add(Instruction.make(Opcode.HALT))
    return scheduler.cycles


def dispatched_events(program: Sequence[Instruction], config: Config) -> dict[str, int]:
    """The exact counters of a run of ``program`` (loop bodies once per iteration; a PREDICATE finds
    its rows nonzero: a kernel's dense run) -- what :attr:`~.common.Kernel.events` gives for a
    program with loops."""
    dense = spread_predicate(0.0)
    return program_events([resolved for resolved, _ in expand_loops(program, predicate=dense)], config)


@dataclasses.dataclass
class LoopedKernel(Kernel):
    """A :class:`~.common.Kernel` whose instructions have loops (:func:`looped_kernel`); its
    :attr:`~.common.Kernel.events` count the dispatched stream (:func:`dispatched_events`)."""


def looped_kernel(kernel: Kernel, *, min_body: int = 1) -> LoopedKernel:
    """``kernel`` with its repeated runs as loops (:func:`roll_loops`, each loop within one
    operand: :func:`operand_region`), priced by the timing model.

    Its units receive exactly the straight-line kernel's instructions (checked here), so its
    outputs are bit-identical; ``predicted_cycles`` adds what the loops' dispatcher cycles do
    not hide.
    """
    rolled = roll_loops(kernel.instructions, min_body=min_body, region=operand_region(kernel))
    return _priced(kernel, rolled, min_body)


def _priced(kernel: Kernel, rolled: list[Instruction], min_body: int) -> LoopedKernel:
    """The :class:`LoopedKernel` of ``kernel`` whose program is ``rolled`` (checked against it); its
    ``tiling`` counts the ``taken_branches`` of a run."""
    scheduler = Scheduler(kernel.config, keep_entries=False)
    units = []
    taken = []

    def restart() -> None:
        scheduler.redirect()
        taken.append(1)

    for resolved, written in expand_loops(rolled, on_taken=restart):
        scheduler.add(resolved, unresolved=written)
        if resolved.opcode not in _CONTROL:
            units.append(resolved)
    if units != list(kernel.instructions):
        raise KernelError(f"{kernel.name}: the looped program does not dispatch the straight-line one's "
                          f"instructions (a bug in roll_loops)")
    scheduler.add(Instruction.make(Opcode.HALT))
    fields = {field.name: getattr(kernel, field.name) for field in dataclasses.fields(Kernel)}
    fields.update(instructions=rolled, predicted_cycles=scheduler.cycles,
                  tiling=dict(kernel.tiling) | {"loops": True, "min_body": min_body,
                                                "taken_branches": len(taken)})
    return LoopedKernel(**fields)


def straight_line(kernel: Kernel) -> Kernel:
    """A kernel :func:`looped_kernel` rolled (its ``tiling`` names a ``min_body``) as the straight-line
    program its units receive, priced again; any other kernel as it is.  For what rewrites a
    program instruction by instruction (the resident runtime's row windows and dropped LOADs):
    a rolled loop's body stands for many instructions."""
    if "min_body" not in kernel.tiling:
        return kernel
    units = [resolved for resolved, _ in expand_loops(kernel.instructions) if resolved.opcode not in _CONTROL]
    fields = {field.name: getattr(kernel, field.name) for field in dataclasses.fields(Kernel)}
    fields.update(instructions=units, predicted_cycles=looped_cycles(units, kernel.config),
                  tiling={key: value for key, value in kernel.tiling.items()
                          if key not in ("loops", "min_body", "taken_branches")})
    return Kernel(**fields)


#: The loop-body lengths :func:`loops_if_no_slower` tries (longer bodies: fewer dispatcher cycles).
MIN_BODIES = (1, 4, 8)
#: The lowering (:meth:`~braze.sw.compiler.lower.KernelRecipe.looped_kernel`) rolls a kernel only if
#: that removes at least this share of its instructions (:func:`loops_if_no_slower` ``min_shrink``):
#: with every saving taken, the digits models at batch 64 lost 4% (CNN) and 7% (MLP) of their
#: program bytes -- loops of a few iterations saving four instructions each -- and ran 0.05% and
#: 0.4% slower on the Verilator device (about 20 cycles per such loop).
MIN_SHRINK = 0.25


def loops_if_no_slower(kernel: Kernel, *, min_shrink: float = 0.0) -> Kernel:
    """The shortest :func:`looped_kernel` of ``kernel`` (over :data:`MIN_BODIES`) whose predicted
    cycles are no more than the straight-line kernel's; ``kernel`` itself when none is, or when
    rolling saves no instruction, or less than ``min_shrink`` of them (e.g. :data:`MIN_SHRINK`).
    The timing model charges each taken BRANCH's fetch restart and the refill of the fetch unit
    behind it (:class:`braze.isa.timing.FetchStream`) as the Verilator device pays them, so a
    kernel whose units cannot hide them stays straight-line.

    The repeated runs are found once for every body length, and the body lengths are tried
    shortest first -- its program is the shortest, as every loop a longer minimum allows it allows
    too -- stopping at the first no slower: usually one choice and one timing-model run.
    """
    longest = int((1.0 - min_shrink) * len(kernel.instructions))
    repeats = _repeats(kernel.instructions, MAX_PERIOD, operand_region(kernel), longest)
    if repeats is None:
        return kernel
    tried: list[list[Instruction]] = []
    for min_body in MIN_BODIES:
        rolled = repeats.roll(min_body)
        if len(rolled) >= len(kernel.instructions) or len(rolled) > longest:
            break                   # longer bodies give no shorter programs
        if rolled in tried:
            continue
        tried.append(rolled)
        looped = _priced(kernel, rolled, min_body)
        if looped.predicted_cycles <= kernel.predicted_cycles:
            return looped
    return kernel
