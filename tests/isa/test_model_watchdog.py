"""The reference model's watchdog: a cycle limit stops the run on the timing model's clock."""

from __future__ import annotations

import random

import numpy as np
import pytest

from braze.isa import BrazeError, Config, Counter, ErrorCause, Instruction, Unit, encode_program
from braze.isa.model import Machine, WatchdogError
from braze.sim.progen import generate

TINY = Config.preset("tiny")


def _machine(program, *, fast: bool = True) -> Machine:
    machine = Machine(program.config, fast=fast)
    for addr, blob in program.image:
        machine.write_dram(addr, blob)
    return machine


def _dispatched(entry) -> int:
    """The cycle the dispatcher takes an instruction: a barrier when it starts, the others when queued."""
    return entry.start if entry.unit is Unit.CONTROL else entry.dispatch


def _stop(machine: Machine, base: int, cycle_limit: int):
    with pytest.raises(WatchdogError) as caught:
        machine.run(base, cycle_limit=cycle_limit)
    return caught.value


@pytest.mark.parametrize("seed", range(12))
def test_the_run_stops_at_the_first_instruction_not_dispatched_before_the_limit(seed):
    program = generate(TINY, 300 + seed)
    timeline = _machine(program).run(program.base).timeline
    halt_start = timeline[-1].start
    limit = random.Random(seed).randrange(1, halt_start + 1)
    expected = next(entry.pc for entry in timeline if _dispatched(entry) >= limit)

    planned, reference = _machine(program), _machine(program, fast=False)
    errors = [_stop(machine, program.base, limit) for machine in (planned, reference)]
    for error in errors:
        assert (error.cause, error.pc, error.cycle_limit) == (ErrorCause.WATCHDOG, expected, limit)
    assert str(errors[0]) == str(errors[1])
    # The planned and the instruction-by-instruction executor leave the same machine behind.
    assert np.array_equal(planned.dram, reference.dram) and np.array_equal(planned.spad, reference.spad)
    assert np.array_equal(planned.acc, reference.acc)
    assert planned.counters.tolist() == reference.counters.tolist()


def test_a_limit_above_the_halt_changes_nothing_and_reuses_the_plan():
    program = generate(TINY, 7)
    machine = _machine(program)
    free = machine.run(program.base)
    halt = free.timeline[-1]
    assert machine.run(program.base, cycle_limit=halt.start + 1).counters == free.counters
    assert machine.run(program.base, cycle_limit=0).cycles == free.cycles      # 0: no limit
    # HALT not yet started at the limit: the watchdog stops the run at HALT itself.
    assert _stop(machine, program.base, halt.start).pc == halt.pc
    # The stopped run's plan is kept for its own limit only.
    assert machine.run(program.base, cycle_limit=halt.start + 1).cycles == free.cycles
    assert _stop(machine, program.base, halt.start).pc == halt.pc


def test_a_runaway_program_stops_at_the_limit():
    """Valid instructions up to the end of memory and no HALT: stopped at the limit, not at the end."""
    rows = 100
    pair = encode_program([
        Instruction.make("vector", op="add", dst_mem="spad", src1_mem="spad", src2_mem="spad", dst=0, src1=0,
                         src2=rows, rows=rows),
        Instruction.make("fence")])
    base = 0x100
    blob = pair * ((TINY.dram_bytes - base) // len(pair))
    period = 2 * rows + 4 + 1          # the VECTOR (two scratchpad reads per row), then the FENCE
    for fast in (True, False):
        machine = Machine(TINY, fast=fast)
        machine.write_dram(base, blob)
        error = _stop(machine, base, 5 * period + 3)
        # The sixth VECTOR was dispatched at 5 * period; its FENCE waits for it beyond the limit.
        assert error.pc == base + 16 * (2 * 5 + 1)
        assert int(machine.counters[Counter.CYCLES]) == 5 * period + 3      # up to the limit


@pytest.mark.parametrize("bad", [-1, 1 << 32, 2.5, True, "100"])
def test_a_cycle_limit_the_register_cannot_hold_is_refused(bad):
    with pytest.raises(BrazeError, match="cycle_limit"):
        Machine(TINY).run_program([Instruction.make("halt")], cycle_limit=bad)
