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
short-period run is then unrolled a few times): fewer dispatcher cycles per instruction.

:func:`looped_kernel` prices the rolled program with the timing model (:func:`looped_cycles`)
and returns it as a :class:`~.common.Kernel` whose :attr:`~.common.Kernel.events` count the
dispatched stream; :func:`loops_if_no_slower` (:func:`~.matmul.gemm` ``loops=True``) keeps the
shortest rolled form the timing model predicts no slower than the straight-line kernel.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence

from braze.isa import Config, Instruction, Opcode
from braze.isa.encoding import REGISTER_OFFSETS
from braze.isa.model import branch_taken, program_events, resolve_registers
from braze.isa.timing import Scheduler

from .common import Kernel, KernelError

__all__ = ["roll_loops", "expand_loops", "looped_cycles", "looped_kernel", "loops_if_no_slower",
           "spread_predicate", "dispatched_events", "LoopedKernel", "LOOP_REGISTERS"]

#: Scalar registers a rolled loop may use (r0 reads as zero).
LOOP_REGISTERS = (1, 2, 3, 4, 5, 6, 7)
#: The longest loop body :func:`roll_loops` looks for (instructions).
MAX_PERIOD = 48
_CONTROL = (Opcode.SCALAR, Opcode.BRANCH, Opcode.PREDICATE)
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


def _step(first: Instruction, second: Instruction) -> tuple | None:
    """The address fields' steps from ``first`` to ``second``, or None when they are not one
    instruction advanced (different opcode, shape or tokens)."""
    shape = _shape(first)
    if shape is None or shape != _shape(second):
        return None
    return tuple(second.args[field] - first.args[field] for field in REGISTER_OFFSETS.get(first.opcode, {}))


def _registers_needed(steps: Sequence[tuple]) -> tuple[int, ...]:
    """The distinct nonzero steps of a loop body, in order of appearance (one register each)."""
    seen: dict[int, None] = {}
    for step in steps:
        for value in step:
            if value:
                seen.setdefault(value, None)
    return tuple(seen)


def roll_loops(program: Sequence[Instruction], *, min_body: int = 1, max_period: int = MAX_PERIOD
               ) -> list[Instruction]:
    """``program`` (straight-line) with its repeated runs as counted loops; see the module.

    A program that already has control flow (SCALAR, BRANCH, PREDICATE) or register offsets is
    returned as it is.  ``min_body``: the shortest loop body considered.
    """
    program = list(program)
    n = len(program)
    if n < 2 or any(insn.opcode in _CONTROL for insn in program) or any(_shape(i) is None for i in program):
        return program
    # best[i]: length of the shortest rolled form of program[i:], and the choice that gives it.
    best = [0] * (n + 1)
    choice: list[tuple[int, int] | None] = [None] * (n + 1)
    # For each period p: steps[p][t] between instruction t and t + p, and the length of the run
    # of positions from t whose step equals the step a period earlier (so the run repeats).
    steps: dict[int, list[tuple | None]] = {}
    repeats: dict[int, list[int]] = {}
    defined: dict[int, list[int]] = {}
    for p in range(max(1, min_body), min(max_period, n // 2) + 1):
        step = [_step(program[t], program[t + p]) for t in range(n - p)] + [None] * p
        same = [0] * (n + 1)
        known = [0] * (n + 1)
        for t in range(n - 1, -1, -1):
            known[t] = known[t + 1] + 1 if step[t] is not None else 0
            same[t] = same[t + 1] + 1 if t >= p and step[t] is not None and step[t] == step[t - p] else 0
        steps[p], repeats[p], defined[p] = step, same, known
    for i in range(n - 1, -1, -1):
        best[i], choice[i] = best[i + 1] + 1, None
        for p, step in steps.items():
            if defined[p][i] < p:
                continue
            count = 2 + repeats[p][i + p] // p
            needed = _registers_needed(step[i:i + p])
            if len(needed) >= len(LOOP_REGISTERS) or any(abs(count * s) >= _INT32 for s in needed):
                continue
            cost = p + 2 * max(1, len(needed)) + 2
            for c in range(count, max(1, count - 2), -1):
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
        rolled += _loop(program[i:i + p], steps[p][i:i + p], count)
        i += p * count
    return rolled


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
    """``kernel`` with its repeated runs as loops (:func:`roll_loops`), priced by the timing model.

    Its units receive exactly the straight-line kernel's instructions (checked here), so its
    outputs are bit-identical; ``predicted_cycles`` adds what the loops' dispatcher cycles do
    not hide.
    """
    rolled = roll_loops(kernel.instructions, min_body=min_body)
    units = [resolved for resolved, _ in expand_loops(rolled) if resolved.opcode not in _CONTROL]
    if units != list(kernel.instructions):
        raise KernelError(f"{kernel.name}: the looped program does not dispatch the straight-line one's "
                          f"instructions (a bug in roll_loops)")
    fields = {field.name: getattr(kernel, field.name) for field in dataclasses.fields(Kernel)}
    fields.update(instructions=rolled, predicted_cycles=looped_cycles(rolled, kernel.config),
                  tiling=dict(kernel.tiling) | {"loops": True, "min_body": min_body})
    return LoopedKernel(**fields)


#: The loop-body lengths :func:`loops_if_no_slower` tries (longer bodies: fewer dispatcher cycles).
MIN_BODIES = (1, 4, 8)


def loops_if_no_slower(kernel: Kernel) -> Kernel:
    """The shortest :func:`looped_kernel` of ``kernel`` (over :data:`MIN_BODIES`) whose predicted
    cycles are no more than the straight-line kernel's; ``kernel`` itself when none is, or when
    rolling saves no instruction."""
    best: Kernel = kernel
    for min_body in MIN_BODIES:
        looped = looped_kernel(kernel, min_body=min_body)
        shorter = len(looped.instructions) < len(best.instructions)
        if shorter and looped.predicted_cycles <= kernel.predicted_cycles:
            best = looped
    return best
