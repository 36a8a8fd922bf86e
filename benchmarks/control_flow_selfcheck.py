"""Experiment: random control-flow programs on the reference model (issue 13).

    python benchmarks/control_flow_selfcheck.py 2000 tiny

For each seed, :func:`braze.sim.progen.generate_control_flow` wraps a random program in a counted
loop with a data-dependent branch on a PREDICATE and register-offset addresses.  The reference
model runs it; the instructions it dispatched (registers resolved) must be the original program's
in every iteration, and their straight-line replay on the planned path must leave the data regions,
the scratchpad and the accumulator as the looped run did.  Golden only: the comparison with the
RTL back ends is ``braze verify --control-flow``.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from braze.isa import PRESETS
from braze.isa.model import DispatchTracer, Machine
from braze.sim.progen import generate, generate_control_flow


def _agrees(config, seed: int) -> tuple[bool, int]:
    program = generate_control_flow(config, seed, size=4)
    looped = DispatchTracer(config)
    straight = Machine(config)
    for machine in (looped, straight):
        for address, blob in program.image[1:]:
            machine.write_dram(address, blob)
    looped.run_program(list(program.instructions), base=program.base)
    original = generate(config, seed, size=4).instructions[:-1]
    iterations, stride = program.instructions[0].imm, len(original) + 2
    same = all(tuple(looped.trace[i * stride:i * stride + len(original)]) == original
               for i in range(iterations))
    straight.run_program(looped.trace, base=program.base)
    for region in program.regions:
        if region.kind != "counters":
            size = len(region.data)
            same = same and looped.read_dram(region.addr, size) == straight.read_dram(region.addr, size)
    return same and np.array_equal(looped.spad, straight.spad) and np.array_equal(looped.acc, straight.acc), \
        iterations


def main(argv: list[str]) -> int:
    count, preset = (int(argv[0]), argv[1]) if argv else (2000, "tiny")
    config = PRESETS[preset]
    began = time.monotonic()
    mismatches = iterations = 0
    for seed in range(count):
        same, loops = _agrees(config, seed)
        mismatches += not same
        iterations += loops
    print(f"{preset}: programs={count} loop_iterations={iterations} mismatches={mismatches} "
          f"seconds={time.monotonic() - began:.1f}")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
