"""The guard of an ONNX ``If`` computed on chip: test an int8 tensor's largest element, skip a branch.

:func:`if_guard` loads an int8 tensor that an earlier kernel wrote (any layout: the largest element
does not depend on it) into scratchpad rows, computes its largest element with ``PREDICATE max``
into a scalar register, puts the integer threshold into a second register, writes its own counter
snapshot and ends with a ``BRANCH`` that jumps over the next ``skip`` instructions -- the else
branch's kernels -- when the condition holds.  Linked between the kernels that compute the tensor
and the else branch's kernels (:func:`braze.sw.compiler.lower.lower` with an ``IfGuard``), one
program runs the condition and either branch without a round trip to the host.

Exactness: the tensor is loaded in rows of ``cols`` elements; a partial last row is filled with
zeros, so the register holds ``max(x ∪ {0})`` then.  That equals ``max(x)`` for every comparison
with a positive threshold (``max >= t`` and ``max < t`` with ``t > 0`` cannot tell them apart);
:func:`if_guard` refuses a non-positive threshold when there is padding.
"""

from __future__ import annotations

import numpy as np

from braze.isa import SNAPSHOT_BYTES, Config, Instruction, Opcode
from braze.isa.timing import Scheduler

from .common import Kernel, KernelError, Operand

__all__ = ["if_guard", "GUARD_CONDITIONS"]

_I = Instruction.make
#: How the condition compares the largest element ``m`` with the threshold ``t``: ``"ge"`` (m >= t) or
#: ``"lt"`` (m < t); the branch over the else kernels is taken when it holds.
GUARD_CONDITIONS = ("ge", "lt")


def if_guard(config: Config, elements: int, threshold: int, condition: str, skip: int, *,
             max_register: int, threshold_register: int, x_addr: int = 0, counters_addr: int | None = None
             ) -> Kernel:
    """The guard: ``r[max_register] = max(x)``; branch over ``skip`` instructions if the condition holds.

    ``x`` is ``elements`` int8 values at ``x_addr``; ``condition`` is one of :data:`GUARD_CONDITIONS`.
    The snapshot comes before the branch, so the guard's cycles are reported whichever way it goes.
    """
    if condition not in GUARD_CONDITIONS:
        raise KernelError(f"if_guard: condition {condition!r} is not one of {GUARD_CONDITIONS}")
    if not -128 <= threshold <= 127:
        raise KernelError(f"if_guard: threshold {threshold} is outside the int8 range")
    if elements < 1 or skip < 0:
        raise KernelError(f"if_guard: needs elements >= 1 and skip >= 0 (got {elements}, {skip})")
    if {max_register, threshold_register} & {0} or max_register == threshold_register \
            or not all(1 <= r <= 7 for r in (max_register, threshold_register)):
        raise KernelError(f"if_guard: registers {max_register}, {threshold_register} must be two of 1..7")
    cols = config.cols
    full, rest = divmod(elements, cols)
    rows = full + (1 if rest else 0)
    if rows > config.spad_rows:
        raise KernelError(f"if_guard: {elements} elements need {rows} scratchpad rows, config "
                          f"{config.name!r} has {config.spad_rows}")
    if (rest or elements < cols) and threshold <= 0:
        raise KernelError(f"if_guard: threshold {threshold} <= 0 with a partial row: the zero padding "
                          f"would decide the maximum")
    if counters_addr is None:
        counters_addr = -(-(x_addr + elements) // 64) * 64
    operands = {
        "x": Operand("x", x_addr, (elements,), np.dtype("int8"), "flat int8 (any layout)", "input"),
        "counters": Operand("counters", counters_addr, (SNAPSHOT_BYTES // 8,), np.dtype("u8"),
                            "COUNTERS snapshot, Counter order", "counters"),
    }
    program = []
    if full:
        program.append(_I(Opcode.LOAD, mem="spad", addr=0, rows=full, len=cols, dram=x_addr, stride=cols))
    if rest:
        program.append(_I(Opcode.LOAD, mem="spad", addr=full, rows=1, len=rest, dram=x_addr + full * cols,
                          stride=rest))
    program += [
        _I(Opcode.FENCE),                    # the rows are loaded (no token: two LOADs may overlap)
        _I(Opcode.PREDICATE, op="max", dst=max_register, mem="spad", addr=0, rows=rows),
        _I(Opcode.SCALAR, dst=threshold_register, imm=threshold),
        _I(Opcode.COUNTERS, dram=counters_addr, reset=True),
    ]
    a, b = max_register, threshold_register
    program.append(_I(Opcode.BRANCH, cond=condition, a=a, b=b, offset=skip + 1))
    scheduler = Scheduler(config, keep_entries=False)
    for insn in program + [_I(Opcode.HALT)]:
        scheduler.add(insn)
    tiling = {"elements": elements, "threshold": threshold, "condition": condition, "skip": skip}
    return Kernel("if_guard", config, program, operands, 0, scheduler.cycles, (), tiling)

