"""Control flow in the reference and timing models: scalar registers, SCALAR, BRANCH, PREDICATE and
register-offset address fields (issue 13)."""

import numpy as np
import pytest

from braze.isa import (
    COUNTERS,
    PRESETS,
    SNAPSHOT_BYTES,
    ErrorCause,
    ExecutionError,
    Instruction,
    Opcode,
    assemble,
    decode,
    disassemble,
    encode_program,
)
from braze.isa.encoding import INSN_BYTES, SCALAR_REGS, IllegalInstruction
from braze.isa.model import DispatchTracer, Machine, RaceError, ScalarRegisterError, WatchdogError
from braze.isa.timing import PREDICATE_LATENCY, fetch_redirect_cycles

TINY = PRESETS["tiny"]
I = Instruction.make  # noqa: E741
#: Cycles per instruction word the fetch unit brings after a restart: its bus beats (two on tiny).
WORD = -(-INSN_BYTES // TINY.dma_bus_bytes)


def _countdown_loop(count: int, body: list[Instruction]) -> list[Instruction]:
    """r1 = count; do { body; r2 += 1; r1 -= 1 } while r1 != 0; halt."""
    return ([I("scalar", dst=1, imm=count)] + body
            + [I("scalar", dst=2, src1=2, imm=1), I("scalar", dst=1, src1=1, imm=-1),
               I("branch", cond="ne", a=1, offset=-(len(body) + 2)), I("halt")])


def test_counted_loop_runs_its_body_count_times_and_scalar_arithmetic_wraps():
    machine = Machine(TINY)
    machine.write_scalar(3, (1 << 31) - 1)
    program = _countdown_loop(7, [I("scalar", dst=4, src1=4, src2=3, imm=0)])
    result = machine.run_program(program)
    assert machine.scalar_regs[1] == 0
    assert machine.scalar_regs[2] == 7
    # 7 * (2**31 - 1) wraps modulo 2**32 into int32.
    assert machine.scalar_regs[4] == ((7 * ((1 << 31) - 1) + (1 << 31)) % (1 << 32)) - (1 << 31)
    assert result.instructions == 1 + 7 * 4 + 1
    # SCALAR and BRANCH take one dispatcher cycle each, HALT one more, and each of the six taken
    # BRANCHes waits for the fetch unit to restart at its target, which then brings a word per bus
    # word (two beats on tiny): three more cycles per iteration, and one before the HALT.
    assert result.cycles == result.instructions + 6 * (fetch_redirect_cycles(TINY) + 3 * (WORD - 1)) + 1


def test_register_zero_reads_zero_and_ignores_writes():
    machine = Machine(TINY)
    machine.run_program([I("scalar", dst=0, imm=9), I("scalar", dst=1, src1=0, src2=0, imm=4), I("halt")])
    assert machine.scalar_regs[0] == 0 and machine.scalar_regs[1] == 4


@pytest.mark.parametrize("cond, a, b, taken", [
    ("always", 0, 0, True), ("eq", 5, 5, True), ("eq", 5, 6, False), ("ne", 5, 6, True),
    ("ne", -1, -1, False), ("lt", -3, 2, True), ("lt", 2, 2, False), ("ge", 2, 2, True), ("ge", -3, 2, False),
])
def test_branch_conditions(cond, a, b, taken):
    machine = Machine(TINY)
    machine.write_scalar(1, a)
    machine.write_scalar(2, b)
    # Taken: skip the SCALAR that sets r3.
    program = [I("branch", cond=cond, a=1, b=2, offset=2), I("scalar", dst=3, imm=1), I("halt")]
    machine.run_program(program)
    assert machine.scalar_regs[3] == (0 if taken else 1)


def test_looped_copy_with_register_offsets_equals_its_unrolled_program():
    """A loop of LOAD/STORE with register offsets leaves memory as the straight-line program of the
    instructions it dispatched does on the planned path."""
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, 256, dtype=np.uint8)
    body = [
        I("load", mem="spad", addr=0, rows=2, len=4, dram=0x400, stride=4, addr_reg=3, dram_reg=5,
          push_next=True),
        I("config", reg="out_zp", value=0, pop_prev=True, push_next=True),
        I("store", mem="spad", addr=0, rows=2, len=4, dram=0x800, stride=8, addr_reg=3, dram_reg=6,
          pop_prev=True),
        I("scalar", dst=3, src1=3, imm=2),       # next two local rows
        I("scalar", dst=5, src1=5, imm=8),       # next 8 input bytes
        I("scalar", dst=6, src1=6, imm=16),      # next 16 output bytes
    ]
    looped = DispatchTracer(TINY)
    looped.write_dram(0x400, data)
    result = looped.run_program(_countdown_loop(5, body))
    assert looped.trace[-1].opcode is Opcode.HALT
    assert looped.trace[0].dram == 0x400 and looped.trace[3].dram == 0x408 and looped.trace[5].dram == 0x810

    unrolled = Machine(TINY)
    unrolled.write_dram(0x400, data)
    unrolled.run_program(looped.trace)
    assert np.array_equal(unrolled.spad, looped.spad)
    assert np.array_equal(unrolled.dram[0x800:0x900], looped.dram[0x800:0x900])
    expected = data[:40].reshape(10, 4)
    assert np.array_equal(looped.spad[:10, :4].view(np.uint8), expected)
    assert result.counters["insn_load"] == 5 and result.counters["dma_read_bytes"] == 40


def test_register_offset_wraps_in_the_field_and_is_range_checked():
    machine = Machine(TINY)
    machine.write_scalar(1, -2)                   # a negative offset: addr 3 + (-2) = row 1
    machine.run_program([I("load", mem="spad", zero=True, addr=3, rows=1, len=4, addr_reg=1), I("halt")])
    machine.write_scalar(1, TINY.spad_rows)
    with pytest.raises(ExecutionError) as failure:
        machine.run_program([I("load", mem="spad", zero=True, addr=3, rows=1, len=4, addr_reg=1), I("halt")])
    assert failure.value.cause is ErrorCause.SPAD_RANGE and failure.value.pc == 0
    assert str(TINY.spad_rows + 3) in str(failure.value)


def test_branch_below_the_program_base_stops_with_branch_range():
    machine = Machine(TINY)
    base = 0x100
    with pytest.raises(ExecutionError) as failure:
        machine.run_program([I("scalar", dst=1, imm=1), I("branch", offset=-2), I("halt")], base=base)
    assert failure.value.cause is ErrorCause.BRANCH_RANGE
    assert failure.value.pc == base + INSN_BYTES
    # A branch to the base itself is legal: bounded by the watchdog here.
    with pytest.raises(WatchdogError):
        machine.run_program([I("branch", offset=0), I("halt")], base=base, cycle_limit=50)


def test_endless_loop_is_stopped_by_the_watchdog_at_the_limit():
    machine = Machine(TINY)
    program = [I("scalar", dst=1, src1=1, imm=1), I("branch", offset=-1), I("halt")]
    with pytest.raises(WatchdogError) as failure:
        machine.run_program(program, cycle_limit=101)
    assert failure.value.cause is ErrorCause.WATCHDOG
    # Each iteration: the fetch unit's restart at the target, the SCALAR, the BRANCH a bus word later
    # (the first iteration's words are there at once), and its one dispatcher cycle.
    period = fetch_redirect_cycles(TINY) + WORD + 1
    dispatches = [0, 1] + [cycle for start in range(2 + fetch_redirect_cycles(TINY), 101 + period, period)
                           for cycle in (start, start + WORD)]
    first_late = next(index for index, cycle in enumerate(dispatches) if cycle >= 101)
    assert failure.value.pc == INSN_BYTES * (first_late % 2)
    assert machine.scalar_regs[1] == (first_late + 1) // 2
    assert int(machine.counters[0]) == 101        # cycles


@pytest.mark.parametrize("mem", ["spad", "acc"])
def test_predicate_any_and_max(mem):
    machine = Machine(TINY)
    local = machine.spad if mem == "spad" else machine.acc
    local[4:8] = 0
    program = [I("predicate", op="any", dst=1, mem=mem, addr=4, rows=4),
               I("predicate", op="max", dst=2, mem=mem, addr=4, rows=4), I("halt")]
    machine.run_program(program)
    assert machine.scalar_regs[1:3] == [0, 0]
    local[6, 2] = -5
    machine.run_program(program)
    assert machine.scalar_regs[1:3] == [1, 0]
    local[7, 0] = 3
    local[3, 0] = 100                              # outside the rows tested
    result = machine.run_program(program)
    assert machine.scalar_regs[1:3] == [1, 3]
    reads = "spad_reads" if mem == "spad" else "acc_reads"
    assert result.counters[reads] == 8


def test_predicate_holds_the_dispatcher_until_its_result():
    machine = Machine(TINY)
    result = machine.run_program([I("predicate", op="any", dst=1, mem="spad", addr=0, rows=5),
                                  I("scalar", dst=2, src1=1, imm=0), I("halt")])
    predicate, scalar = result.timeline[0], result.timeline[1]
    assert predicate.end - predicate.start == 5 + PREDICATE_LATENCY
    assert scalar.dispatch == predicate.end


def test_only_instructions_naming_the_predicates_register_wait_for_it():
    """The dispatcher goes on past a PREDICATE; a SCALAR or register offset naming its dst, or
    another PREDICATE, waits for its end (docs/isa.md, "Control flow")."""
    machine = Machine(TINY)
    result = machine.run_program([
        I("predicate", op="any", dst=1, mem="spad", addr=0, rows=20),
        I("scalar", dst=2, imm=7),                                        # names r2 only: goes on
        I("load", mem="spad", addr=40, rows=1, len=4, dram=0, dram_reg=2),   # r2: goes on
        I("load", mem="spad", addr=40, rows=1, len=4, dram=0, dram_reg=1),   # r1: waits
        I("predicate", op="any", dst=3, mem="spad", addr=0, rows=2),      # another PREDICATE: waits
        I("halt"),
    ])
    predicate, scalar, free_load, held_load, second = result.timeline[:5]
    assert scalar.dispatch == predicate.dispatch + 1 and free_load.dispatch == predicate.dispatch + 2
    assert held_load.dispatch == predicate.end and second.dispatch >= predicate.end
    assert machine.scalar_regs[2] == 7


def test_a_matmul_runs_beside_a_scratchpad_predicate_and_retires_after_it():
    def run(predicate: Instruction, then: Instruction):
        result = Machine(TINY).run_program([predicate, then, I("halt")])
        return result.timeline[0], result.timeline[1]

    matmul = I("matmul", acc=0, a=0, b=16, a_stride=4, m=4, n=4, k=4, push_next=True)
    spad = I("predicate", op="any", dst=1, mem="spad", addr=0, rows=40)
    predicate, beside = run(spad, matmul)
    assert beside.start == predicate.start + 1 and beside.end < predicate.end
    assert beside.retire == predicate.end               # its token waits for the PREDICATE
    # Not beside: anything but a MATMUL, a PREDICATE of accumulator rows, one that pushes a token.
    predicate, vector = run(spad, I("vector", op="mov", src1_mem="spad", src1=0, dst_mem="spad", dst=50,
                                    rows=1))
    assert vector.start == predicate.end
    for not_beside in (spad.replace(mem="acc"), spad.replace(push_next=True)):
        predicate, after = run(not_beside, matmul)
        assert after.start == predicate.end


def test_zero_block_skip_branches_over_the_matmul():
    """The use the feature exists for: test a loaded block and skip the MATMUL when it is all zero."""
    def run(a_block: np.ndarray) -> tuple[Machine, dict]:
        machine = Machine(TINY)
        machine.write_dram(0x400, a_block.astype(np.int8))
        machine.write_dram(0x500, np.ones((4, 4), np.int8))
        program = [
            I("load", mem="acc", zero=True, addr=0, rows=4, len=4),
            I("load", mem="spad", addr=0, rows=4, len=4, dram=0x400, stride=4),
            I("load", mem="spad", addr=4, rows=4, len=4, dram=0x500, stride=4, push_next=True),
            I("predicate", op="any", dst=1, mem="spad", addr=0, rows=4, pop_prev=True),
            I("branch", cond="eq", a=1, offset=2),
            I("matmul", acc=0, a=0, b=4, a_stride=4, m=4, n=4, k=4, accumulate=True),
            I("halt"),
        ]
        return machine, machine.run_program(program).counters

    dense = np.arange(16).reshape(4, 4) - 8
    machine, counters = run(dense)
    assert counters["macs"] == 64
    assert np.array_equal(machine.acc[:4, :4], dense @ np.ones((4, 4), np.int64))
    machine, counters = run(np.zeros((4, 4)))
    assert counters["macs"] == 0 and not machine.acc[:4].any()


def test_races_are_checked_iteration_by_iteration():
    """The second iteration's LOAD overwrites rows the first iteration's MATMUL reads, unordered."""
    body = [I("load", mem="spad", addr=0, rows=4, len=4, dram=0x400, stride=4, push_next=True),
            I("matmul", acc=0, a=0, b=0, a_stride=4, m=4, n=4, k=4, pop_prev=True)]
    with pytest.raises(RaceError) as failure:
        Machine(TINY).run_program(_countdown_loop(2, body))
    assert failure.value.pc == INSN_BYTES * 1 and failure.value.other_pc == INSN_BYTES * 2


def test_register_fields_beyond_the_register_file_are_bad_field():
    word = I("scalar", dst=1, imm=1).encode()
    dst_offset = next(offset for spec, offset, _ in I("scalar", dst=1).format.slots if spec.name == "dst")
    bad = word | (SCALAR_REGS << dst_offset)
    with pytest.raises(IllegalInstruction) as failure:
        decode(bad, pc=0x40)
    assert failure.value.cause is ErrorCause.BAD_FIELD and "dst" in str(failure.value)


def test_host_scalar_writes_are_checked():
    machine = Machine(TINY)
    for register, value in ((0, 1), (SCALAR_REGS, 1), (1, 1 << 31), (1, "3")):
        with pytest.raises(ScalarRegisterError):
            machine.write_scalar(register, value)


def test_existing_counter_snapshot_layout_is_unchanged():
    names = [spec.name for spec in COUNTERS]
    assert not any(name.endswith(("_scalar", "_branch", "_predicate")) for name in names)
    # 18 event counters and one instructions-retired counter per opcode but the control-flow ones;
    # insn_table (opcode 10, the EPILOGUE activation table) is appended after them.
    assert SNAPSHOT_BYTES == 8 * len(names) == 8 * (18 + 10)
    assert names[-1] == "insn_table"


def test_assembler_round_trips_a_loop_with_label_offsets():
    source = """
        scalar dst=1 imm=3
    loop:
        predicate op=max dst=2 mem=acc addr=0 rows=1 addr_reg=4
        scalar dst=4 src1=4 imm=1
        scalar dst=1 src1=1 imm=-1
    back: branch cond=ne a=1 offset=(loop - back) / 16
        halt
    """
    program = assemble(source)
    assert program[4].offset == -3 and program[1].addr_reg == 4
    assert assemble(disassemble(program)) == program
    assert encode_program(program) == encode_program(assemble(disassemble(encode_program(program))))


def test_a_taken_branch_waits_for_the_fetch_unit_to_restart():
    """A taken BRANCH delays its target's dispatch by fetch_redirect_cycles; one not taken costs nothing."""
    def cycles(program):
        return Machine(TINY).run_program(program).cycles

    redirect = fetch_redirect_cycles(TINY)
    not_taken = cycles([I("branch", cond="ne", offset=5), I("scalar", dst=1, imm=1), I("halt")])
    taken = cycles([I("branch", cond="always", offset=2), I("scalar", dst=1, imm=1), I("halt")])
    assert (not_taken, taken) == (3, 2 + redirect)
    # Each further iteration of a loop: the restart, then its two SCALARs and its BRANCH a bus word
    # apart (two cycles on tiny) as the fetch unit brings them; the HALT after the last iteration is
    # the first word of the next request, a bus word after the BRANCH.
    loops = [cycles(_countdown_loop(n, [])) for n in (1, 2, 5)]
    iteration = 3 + redirect + 2 * (WORD - 1)
    assert loops[1] - loops[0] == iteration + WORD - 1 and loops[2] - loops[0] == 4 * iteration + WORD - 1
    # The units' queues hide the restart when they hold enough work: a long MATMUL per iteration.
    matmul = I("matmul", acc=0, a=0, b=0, a_stride=16, m=16, n=TINY.cols, k=16 * TINY.rows)
    assert cycles(_countdown_loop(3, [matmul])) == cycles([matmul] * 3 + [I("halt")]) + 1
