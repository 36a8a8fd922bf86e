"""Errors of the reference model: range rules, illegal words, external memory, deadlock, races."""

import numpy as np
import pytest

from braze.isa import SNAPSHOT_BYTES, Config, ErrorCause, ExecutionError, IllegalInstruction
from braze.isa import Instruction as I
from braze.isa.model import InstructionLimitExceeded, Machine, RaceError, check_overlap, check_ranges

TINY = Config.preset("tiny")   # cols 4, rows 4, 1024 scratchpad rows, 256 accumulator rows, token_depth 4
SPAD, ACC, TILE = ErrorCause.SPAD_RANGE, ErrorCause.ACC_RANGE, ErrorCause.TILE_RANGE
HALT = I.make("halt")


def load(**fields):
    return I.make("load", **({"mem": "spad", "addr": 0, "rows": 1, "len": 4, "dram": 0x1000} | fields))


def store(**fields):
    return I.make("store", **({"mem": "spad", "addr": 0, "rows": 1, "len": 4, "dram": 0x2000,
                               "stride": 0} | fields))


def matmul(**fields):
    return I.make("matmul", **({"acc": 0, "a": 0, "b": 0, "a_stride": 1, "m": 1, "n": 4, "k": 4} | fields))


def epilogue(**fields):
    return I.make("epilogue", **({"src": 0, "m": 1, "n": 4, "dst": 0} | fields))


def vector(**fields):
    return I.make("vector", **({"op": "add", "dst_mem": "spad", "src1_mem": "spad", "src2_mem": "spad",
                                "dst": 0, "src1": 0, "src2": 0, "rows": 1} | fields))


# (instruction, cause or None when legal).  Limits: cols 4, scratchpad rows 1024, accumulator rows 256.
RANGE_CASES = [
    (load(len=5), TILE),
    (load(addr=1020, rows=4), None),
    (load(addr=1020, rows=5), SPAD),
    (load(mem="acc", addr=250, rows=7), ACC),
    (load(len=5, addr=1020, rows=5), TILE),                       # first rule wins
    (load(zero=True, addr=1024), SPAD),
    (store(len=5), TILE),
    (store(mem="acc", addr=256), ACC),
    (store(addr=65535, rows=65535), SPAD),                        # full precision, no 16-bit wrap
    (matmul(n=5), TILE),
    (matmul(acc=253, m=4), ACC),
    (matmul(acc=252, m=4), None),
    (matmul(a=1000, a_stride=10, k=12, m=5), SPAD),               # 1000 + 2*10 + 5 = 1025 > 1024
    (matmul(a=999, a_stride=10, k=12, m=5), None),
    (matmul(a=1020, a_stride=0, k=400, m=4), None),               # a_stride 0: every chunk on the same rows
    (matmul(b=1020, k=5), SPAD),
    (matmul(b=1020, k=4), None),
    (matmul(n=5, acc=300), TILE),
    (matmul(acc=300, b=2000), ACC),
    (matmul(a=65535, a_stride=65535, k=65535, m=65535, acc=0), ACC),
    (matmul(a=65535, a_stride=65535, k=65535, m=1), SPAD),
    (epilogue(n=5), TILE),
    (epilogue(src=254, m=3), ACC),
    (epilogue(bias=True, bias_addr=256), ACC),
    (epilogue(bias=False, bias_addr=256), None),
    (epilogue(bias=True, bias_addr=255), None),
    (epilogue(requant=True, quant_addr=255), ACC),                # needs two rows
    (epilogue(requant=True, quant_addr=254), None),
    (epilogue(requant=False, quant_addr=65535), None),
    (epilogue(residual=True, res_addr=1022, m=3), SPAD),
    (epilogue(residual=True, res_addr=1021, m=3), None),
    (epilogue(residual=False, res_addr=1022, m=3), None),
    (epilogue(dst=1022, m=3), SPAD),
    (epilogue(dst=1022, m=3, out="acc"), ACC),
    (epilogue(dst=253, m=3, out="acc"), None),
    (epilogue(bias=True, bias_addr=300, residual=True, res_addr=5000), ACC),
    (epilogue(residual=True, res_addr=5000, dst=300, out="acc"), SPAD),
    (vector(src1_mem="acc", src1=250, rows=7), ACC),
    (vector(src2_mem="spad", src2=1020, rows=7), SPAD),
    (vector(src2_mem="acc", src2=1020, rows=7), ACC),
    (vector(src2=1020, rows=7, use_imm=True), None),
    (vector(op="mov", src2=1020, rows=7), None),
    (vector(op="shr", src2_mem="acc", src2=1020, rows=7), None),
    (vector(dst_mem="acc", dst=256), ACC),
    (vector(dst_mem="spad", dst=1024), SPAD),
    (vector(src1=1024, dst_mem="acc", dst=256), SPAD),
    (vector(src1_mem="acc", src1=0, rows=256, dst_mem="acc"), None),
]


@pytest.mark.parametrize(("insn", "cause"), RANGE_CASES)
def test_range_rules(insn, cause):
    machine = Machine(TINY)
    program = [I.make("fence"), insn, HALT]
    if cause is None:
        check_ranges(insn, TINY)
        machine.run_program(program)
        return
    with pytest.raises(ExecutionError) as info:
        check_ranges(insn, TINY, pc=0x30)
    assert info.value.cause is cause and info.value.pc == 0x30
    with pytest.raises(ExecutionError) as info:
        machine.run_program(program, base=0x100)
    assert info.value.cause is cause
    assert info.value.pc == 0x110
    assert "0x110" in str(info.value)


def test_range_rules_follow_the_config():
    big = Config.preset("large")   # 16 columns, 16384 scratchpad rows
    insn = load(len=16, addr=2000, rows=100)
    check_ranges(insn, big)
    with pytest.raises(ExecutionError):
        check_ranges(insn, TINY)


# (instruction, whether its sources partly overlap its destination in one memory).
OVERLAP = ErrorCause.OVERLAP
OVERLAP_CASES = [
    (epilogue(src=10, m=4, dst=10, out="acc"), None),                # in place
    (epilogue(src=10, m=4, dst=13, out="acc"), OVERLAP),             # last source row is the first dst row
    (epilogue(src=10, m=4, dst=7, out="acc"), OVERLAP),              # dst below src, overlapping
    (epilogue(src=10, m=4, dst=14, out="acc"), None),                # adjacent
    (epilogue(src=10, m=4, dst=6, out="acc"), None),
    (epilogue(src=10, m=4, dst=12, out="spad"), None),               # other memory
    (epilogue(src=10, m=4, dst=12, out="spad", residual=True, res_addr=10), OVERLAP),
    (epilogue(src=10, m=4, dst=12, out="spad", residual=True, res_addr=12), None),
    (epilogue(src=10, m=4, dst=12, out="acc", residual=True, res_addr=10), OVERLAP),   # src, not res_addr
    (epilogue(src=0, m=4, dst=12, out="acc", residual=True, res_addr=10), None),
    (epilogue(src=0, m=4, dst=12, out="spad", residual=False, res_addr=10), None),     # residual unused
    (epilogue(src=0, m=4, dst=12, out="acc", bias=True, bias_addr=13), None),          # parameter rows
    (vector(src1=5, src2=5, dst=5, rows=3), None),
    (vector(src1=5, src2=40, dst=6, rows=3), OVERLAP),
    (vector(src1=40, src2=5, dst=7, rows=3), OVERLAP),
    (vector(src1=40, src2=5, dst=7, rows=3, use_imm=True), None),   # src2 not read
    (vector(op="mov", src1=40, src2=5, dst=7, rows=3), None),
    (vector(src1=40, src2=5, src2_mem="acc", dst=7, rows=3), None),  # src2 in the other memory
    (vector(src1_mem="acc", src1=5, src2=40, dst=4, rows=3), None),
    (vector(src1_mem="acc", dst_mem="acc", src1=5, src2=40, dst=4, rows=3), OVERLAP),
    (vector(src1=5, src2=40, dst=8, rows=3), None),
    (matmul(acc=0, a=0, b=0, m=4), None),                            # the rule is EPILOGUE/VECTOR only
]


@pytest.mark.parametrize(("insn", "cause"), OVERLAP_CASES)
def test_overlap_rule(insn, cause):
    program = [I.make("fence"), insn, HALT]
    if cause is None:
        check_overlap(insn, TINY)
        Machine(TINY).run_program(program)
        return
    with pytest.raises(ExecutionError) as info:
        check_overlap(insn, TINY, pc=0x30)
    assert info.value.cause is OVERLAP and info.value.pc == 0x30
    check_ranges(insn, TINY)                                        # ranges alone accept it
    _expect(Machine(TINY), program, OVERLAP, 0x10)


def test_range_error_comes_before_overlap():
    insn = epilogue(src=10, m=4, dst=13, out="acc", n=5)
    _expect(Machine(TINY), [insn, HALT], ErrorCause.TILE_RANGE, 0)


def test_illegal_word_reports_pc():
    machine = Machine(TINY)
    program = I.make("fence").to_bytes() + bytes(16) + HALT.to_bytes()
    with pytest.raises(IllegalInstruction) as info:
        machine.run_program(program, base=0x40)
    assert info.value.cause is ErrorCause.ILLEGAL_OPCODE
    assert info.value.pc == 0x50


def test_bad_deps_word_reports_pc():
    machine = Machine(TINY)
    word = load().encode() | (1 << 4)          # pop_prev: the load unit has no previous unit
    program = word.to_bytes(16, "little") + HALT.to_bytes()
    with pytest.raises(IllegalInstruction) as info:
        machine.run_program(program, base=0x80)
    assert info.value.cause is ErrorCause.BAD_DEPS and info.value.pc == 0x80


def _expect(machine, program, cause, pc, **kwargs):
    with pytest.raises(ExecutionError) as info:
        machine.run_program(program, **kwargs)
    assert info.value.cause is cause
    assert info.value.pc == pc
    return info.value


@pytest.mark.parametrize("make", [load, store])
def test_dram_range(make):
    size = TINY.dram_bytes
    fits = make(dram=size - 12, rows=2, stride=8, len=4)     # last byte: size - 12 + 8 + 3 = size - 1
    Machine(TINY).run_program([fits, HALT])
    error = _expect(Machine(TINY), [fits.replace(dram=size - 11), HALT], ErrorCause.DRAM_RANGE, 0)
    assert f"0x{size:x}" in str(error)            # the first byte beyond memory is named
    acc_row = make(mem="acc", dram=size - 16, len=4)            # 16 bytes: fits exactly
    Machine(TINY).run_program([acc_row, HALT])
    _expect(Machine(TINY), [acc_row.replace(dram=size - 15), HALT], ErrorCause.DRAM_RANGE, 0)


def test_dram_range_of_counters():
    size = TINY.dram_bytes
    Machine(TINY).run_program([I.make("counters", dram=size - SNAPSHOT_BYTES), HALT])
    _expect(Machine(TINY), [I.make("fence"), I.make("counters", dram=size - SNAPSHOT_BYTES + 1), HALT],
            ErrorCause.DRAM_RANGE, 16)


def test_fetch_past_memory():
    machine = Machine(TINY)
    end = TINY.dram_bytes
    error = _expect(machine, [I.make("fence")], ErrorCause.FETCH_ERROR, end, base=end - 16)
    assert "fetch" in str(error)


def test_instruction_limit():
    machine = Machine(TINY)
    program = [I.make("fence")] * 5 + [HALT]
    assert machine.run_program(program, max_instructions=6).instructions == 6
    with pytest.raises(InstructionLimitExceeded, match="no HALT after 3 instructions") as info:
        machine.run_program(program, max_instructions=3)
    assert info.value.pc == 0x30


# Deadlock --------------------------------------------------------------------------------------------------

def test_deadlock_pop_without_push():
    _expect(Machine(TINY), [load(), matmul(pop_prev=True), HALT], ErrorCause.DEADLOCK, 16)


def test_deadlock_push_comes_later_in_program_order():
    # The hardware could run this (the store unit waits), but program order is not a valid execution.
    program = [store(pop_prev=True), vector(push_next=True), HALT]
    _expect(Machine(TINY), program, ErrorCause.DEADLOCK, 0)


def test_deadlock_push_into_full_queue():
    depth = TINY.token_depth
    pushes = [load(addr=i, push_next=True) for i in range(depth + 1)]
    _expect(Machine(TINY), pushes + [HALT], ErrorCause.DEADLOCK, 16 * depth)
    drained = pushes[:depth] + [vector(op="mov", src1=100, dst=101, pop_prev=True)] + pushes[depth:]
    drained += [vector(op="mov", src1=100, dst=101, pop_prev=True)] * depth
    result = Machine(TINY).run_program(drained + [HALT])
    assert result.counters["insn_load"] == depth + 1


# Races -----------------------------------------------------------------------------------------------------

def _race(program, *, earlier, later):
    with pytest.raises(RaceError) as info:
        Machine(TINY).run_program(program)
    error = info.value
    assert error.cause is ErrorCause.RACE
    assert (error.pc, error.other_pc) == (later, earlier)
    assert f"0x{later:x}" in str(error) and f"0x{earlier:x}" in str(error)
    return error


def test_forgotten_token_is_a_race_and_the_token_fixes_it():
    rng = np.random.default_rng(11)
    a = rng.integers(-128, 128, (4, 4), dtype=np.int8)
    forgot = [load(addr=0, rows=4, dram=0x1000, stride=4), load(addr=4, rows=4, dram=0x1000, stride=4),
              matmul(a=0, b=4, m=4, a_stride=4), HALT]
    error = _race(forgot, earlier=0x0, later=0x20)          # A rows, loaded first, are checked first
    assert "scratchpad row" in str(error)

    fixed = [forgot[0], forgot[1].replace(push_next=True), forgot[2].replace(pop_prev=True), HALT]
    machine = Machine(TINY)
    machine.write_dram(0x1000, a)
    machine.run_program(fixed)
    assert machine.acc[:4].tolist() == (a.astype(np.int64) @ a.astype(np.int64)).tolist()


def test_token_from_an_earlier_instruction_does_not_cover_a_later_one():
    program = [load(addr=0, rows=4, push_next=True), load(addr=4, rows=4),
               matmul(a=4, b=0, m=4, a_stride=4, pop_prev=True), HALT]
    _race(program, earlier=0x10, later=0x20)


def test_write_after_read_race_and_transitive_ordering():
    # The store reads scratchpad row 0; a later load overwrites it.
    program = [store(addr=0), load(addr=0), HALT]
    _race(program, earlier=0x0, later=0x10)
    # store -> compute -> load orders them through the compute unit.
    chained = [store(addr=0, push_prev=True), I.make("config", reg="clip_lo", value=0, pop_next=True,
                                                     push_prev=True),
               load(addr=0, pop_next=True), HALT]
    Machine(TINY).run_program(chained)


def test_external_memory_race():
    program = [store(dram=0x3000, rows=4, stride=8, len=4), load(addr=10, dram=0x3003, rows=1, len=4), HALT]
    error = _race(program, earlier=0x0, later=0x10)
    assert "external byte 0x3003" in str(error)
    # Interleaved bytes do not overlap.
    Machine(TINY).run_program([program[0], load(addr=10, dram=0x3004, rows=4, stride=8, len=4), HALT])
    # A barrier orders them.
    Machine(TINY).run_program([program[0], I.make("fence"), program[1], HALT])
    Machine(TINY).run_program([program[0], I.make("counters", dram=0x8000), program[1], HALT])


def test_accumulator_race_and_concurrent_reads():
    program = [matmul(acc=8, m=2), store(mem="acc", addr=9), HALT]
    _race(program, earlier=0x0, later=0x10)
    # Reads on two units do not race.
    Machine(TINY).run_program([matmul(a=0, b=0), store(addr=0, rows=4), HALT])
    # Disjoint rows do not race.
    Machine(TINY).run_program([matmul(acc=8, m=1), store(mem="acc", addr=9), HALT])


def test_race_check_can_be_switched_off():
    machine = Machine(TINY, race_check=False)
    machine.run_program([store(addr=0), load(addr=0), HALT])


def test_large_program_checks_quickly():
    """A 2,000-instruction double-buffered GEMM pipeline on `large`, with the race detector on."""
    config = Config.preset("large")       # 16 x 16
    k, tile = 64, 16
    rng = np.random.default_rng(12)
    a = rng.integers(-128, 128, (tile, k), dtype=np.int8)   # A as 4 chunks of 16 x 16
    b = rng.integers(-128, 128, (k, tile), dtype=np.int8)
    machine = Machine(config)
    a_chunks = np.concatenate([a[:, c * tile:(c + 1) * tile] for c in range(k // tile)])
    machine.write_dram(0x10000, a_chunks)
    machine.write_dram(0x20000, b)
    program = []
    iterations = 400
    for i in range(iterations):
        buf = i % 2
        a_row, b_row, out_row, acc_row = 1000 * buf, 1000 * buf + 200, 1000 * buf + 400, 100 * buf
        program += [
            I.make("load", mem="spad", addr=a_row, rows=k, len=tile, dram=0x10000, stride=tile,
                   pop_next=i >= 2),
            I.make("load", mem="spad", addr=b_row, rows=k, len=tile, dram=0x20000, stride=tile,
                   push_next=True),
            I.make("matmul", acc=acc_row, a=a_row, b=b_row, a_stride=tile, m=tile, n=tile, k=k,
                   pop_prev=True, push_prev=True),
            I.make("epilogue", src=acc_row, m=tile, n=tile, dst=out_row, pop_next=i >= 2, push_next=True),
            I.make("store", mem="spad", addr=out_row, rows=tile, len=tile, dram=0x100000 + i * 256,
                   stride=tile, pop_prev=True, push_prev=True),
        ]
    result = machine.run_program(program + [HALT], base=0)
    assert result.instructions == 5 * iterations + 1
    expected = np.clip(a.astype(np.int64) @ b.astype(np.int64), -128, 127).astype(np.int8)
    last = np.frombuffer(machine.read_dram(0x100000 + (iterations - 1) * 256, 256), np.int8)
    last = last.reshape(tile, tile)
    assert (last == expected).all()
    assert result.counters["macs"] == iterations * tile * tile * k
    assert result.counters["insn_store"] == iterations
    # The pipeline overlaps units: well under the serial sum of busy cycles.
    busy = sum(result.counters[name] for name in ("load_busy", "store_busy", "array_busy", "vector_busy"))
    assert result.cycles < busy


def test_unaligned_program_base_is_a_fetch_error():
    from braze.isa import Config, ErrorCause, ExecutionError, Instruction, encode_program
    from braze.isa.model import Machine

    machine = Machine(Config.preset("tiny"))
    machine.write_dram(0x104, encode_program([Instruction.make("halt")]))
    with pytest.raises(ExecutionError) as caught:
        machine.run(0x104)
    assert caught.value.cause is ErrorCause.FETCH_ERROR and caught.value.pc == 0x104
    machine.write_dram(0x100, encode_program([Instruction.make("halt")]))
    assert machine.run(0x100).status == "done"
