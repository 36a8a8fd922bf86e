# amaranth: UnusedElaboratable=no
"""The control core's FPGA Fmax options (issue 16) with fake execution units: Config.redirect_stage (a taken
BRANCH redirects the fetch unit a cycle later, from registers) and Config.fmax_registers (the DEADLOCK
report's pc from registered pcs) stop with the same cause, at the same pc, as without them."""

import pytest
from control_harness import make, run

from braze.isa import PRESETS, ErrorCause, Instruction, Opcode, Unit

TINY = PRESETS["tiny"]
O = Opcode
#: The registered redirect alone and with the two dispatch stages it is meant to go with.
REDIRECTED = [TINY.replace(name="tiny_rs", redirect_stage=1),
              TINY.replace(name="tiny_ds2_rs", dispatch_stage=2, redirect_stage=1)]
REGISTERED = TINY.replace(name="tiny_fr", fmax_registers=1)


@pytest.mark.parametrize("config", REDIRECTED, ids=lambda config: config.name)
def test_a_registered_redirect_takes_the_branch_and_drops_the_word_behind_it(config):
    # The STORE behind the taken BRANCH enters the slot in the BRANCH's cycle and must not start; the
    # LOAD at the target must, and the loop's SCALARs must leave r1 at 0.
    program = [Instruction.make("scalar", dst=1, imm=3),
               make(O.LOAD, 1),
               Instruction.make("scalar", dst=1, src1=1, imm=-1),
               Instruction.make("branch", cond="ne", a=1, b=0, offset=-2),
               Instruction.make("branch", cond="always", offset=2),
               make(O.STORE, 2),
               make(O.LOAD, 3),
               make(O.HALT)]
    trace = run(config, program, latency=(1, 4), fetch_prob=1.0)
    assert trace.cause is ErrorCause.NONE and trace.done_edge is not None
    assert len(trace.starts[Unit.LOAD]) == 4 and trace.starts[Unit.STORE] == []
    assert trace.scalar_regs[1] == 0


@pytest.mark.parametrize("config", REDIRECTED, ids=lambda config: config.name)
def test_a_registered_branch_below_the_program_base_stops_with_branch_range_at_its_pc(config):
    program = [make(O.LOAD, 1), Instruction.make("branch", offset=-2), make(O.STORE, 3), make(O.HALT)]
    trace = run(config, program, base=0x400)
    assert trace.cause is ErrorCause.BRANCH_RANGE and trace.error_pc == trace.pc(1)
    assert trace.starts[Unit.STORE] == []


@pytest.mark.parametrize("limit", range(40, 48))
def test_the_watchdog_stops_a_registered_loop_at_the_first_word_not_dispatched(limit):
    """Whatever cycle the limit falls in -- the BRANCH's, the one after it (the redirect's, when the word
    behind it is dropped), or a LOAD's -- the pc is that of the loop's LOAD or BRANCH, never the HALT
    behind the BRANCH."""
    program = [make(O.LOAD, 1), Instruction.make("branch", offset=-1), make(O.HALT)]
    trace = run(REDIRECTED[0], program, cycle_limit=limit, max_edges=400, latency=(1, 1), fetch_prob=1.0)
    assert trace.cause is ErrorCause.WATCHDOG and trace.run_cycles == limit
    assert trace.error_pc in (trace.pc(0), trace.pc(1))


#: Deadlocks and the pc the core reports for each (the earliest blocked instruction's).
DEADLOCKS = {
    "pop without push": ([make(O.LOAD, 1), make(O.MATMUL, 2, pop_prev=True), make(O.HALT)], 1),
    # The push that would free the compute unit sits behind the full compute queue: the compute and the
    # store unit are blocked, the compute unit's instruction is the earlier one.
    "behind a full queue": ([make(O.VECTOR, 0, pop_next=True)]
                            + [make(O.VECTOR, i) for i in range(1, TINY.queue_depth + 2)]
                            + [make(O.STORE, 1, push_prev=True), make(O.HALT)], 0),
    # Two units blocked for good, the earlier instruction on the last unit, then on the first.
    "store, then load": ([make(O.STORE, 1, pop_prev=True), make(O.LOAD, 2, pop_next=True), make(O.HALT)], 0),
    "load, then store": ([make(O.LOAD, 1, pop_next=True), make(O.STORE, 2, pop_prev=True), make(O.HALT)], 0),
}


@pytest.mark.parametrize("name", DEADLOCKS)
def test_with_registered_pcs_a_deadlock_is_reported_at_the_earliest_blocked_instruction(name):
    program, blocked = DEADLOCKS[name]
    for config in (TINY, REGISTERED):
        trace = run(config, program, max_edges=500)
        assert (trace.cause, trace.error_pc) == (ErrorCause.DEADLOCK, trace.pc(blocked)), (config.name, trace)
