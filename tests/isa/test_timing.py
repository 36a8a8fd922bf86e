"""The analytical timing model: per-instruction formulas, AXI beats and the decoupled schedule."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from braze.isa import SNAPSHOT_BYTES, Config, ErrorCause, ExecutionError
from braze.isa import Instruction as I
from braze.isa.timing import (
    EPILOGUE_LATENCY,
    MATMUL_LATENCY,
    VECTOR_LATENCY,
    axi_beats,
    instruction_cycles,
    schedule,
)

TINY = Config.preset("tiny")        # rows=cols=4, 64-bit bus (8 bytes), mem_latency=8
DEFAULT = Config.preset("default")  # rows=cols=8, 128-bit bus (16 bytes), mem_latency=16


def test_latency_constants():
    # Pinned: the RTL units import these and their tests measure the pipelines against them, so a
    # change here is a change of the timing contract and should be deliberate.
    assert MATMUL_LATENCY == 3 and EPILOGUE_LATENCY == 9 and VECTOR_LATENCY == 4


@pytest.mark.parametrize(("m", "k", "chunks"), [(1, 1, 1), (3, 4, 1), (3, 5, 2), (6, 9, 3), (16, 16, 4)])
def test_matmul_cycles(m, k, chunks):
    insn = I.make("matmul", acc=0, a=0, b=0, a_stride=m, m=m, n=4, k=k)
    assert instruction_cycles(insn, TINY) == chunks * (4 + m) + 4 + 4 + MATMUL_LATENCY


def test_matmul_cycles_default_hand_computed():
    insn = I.make("matmul", acc=0, a=0, b=0, a_stride=10, m=10, n=8, k=20)
    # chunks = 3: 3 * (8 + 10) + 8 + 8 + MATMUL_LATENCY (3) = 73 without weight preload ...
    assert instruction_cycles(insn, DEFAULT.replace(weight_preload=0, matmul_overlap=0)) == 73
    # ... and as the preset ships, with it: 8 + 2 * max(10, 9) + 10 + 8 + 8 + 3 = 57.
    assert DEFAULT.weight_preload and instruction_cycles(insn, DEFAULT) == 57


@pytest.mark.parametrize(("m", "k", "expected"), [
    # rows = 4: chunk 0's preload (4), then chunks - 1 periods of max(m, 5), the last stream (m), and
    # the drain 4 + 4 + MATMUL_LATENCY (3).
    (1, 1, 4 + 0 + 1 + 11),          # one chunk: as without preload
    (3, 4, 4 + 0 + 3 + 11),
    (3, 5, 4 + 5 + 3 + 11),          # m < rows + 1: the period is the preload and its gap
    (6, 9, 4 + 2 * 6 + 6 + 11),      # m > rows + 1: the period is the stream
    (5, 16, 4 + 3 * 5 + 5 + 11),
])
def test_matmul_cycles_with_weight_preload(m, k, expected):
    insn = I.make("matmul", acc=0, a=0, b=0, a_stride=m, m=m, n=4, k=k)
    assert instruction_cycles(insn, TINY.replace(weight_preload=1)) == expected
    assert instruction_cycles(insn, TINY.replace(weight_preload=1)) <= instruction_cycles(insn, TINY)


def test_epilogue_cycles():
    insn = I.make("epilogue", src=0, m=7, n=4, dst=0, bias=True, requant=True)
    assert instruction_cycles(insn, TINY) == 7 + EPILOGUE_LATENCY


@pytest.mark.parametrize(("fields", "reads_per_row"), [
    ({"op": "add", "src1_mem": "spad", "src2_mem": "spad"}, 2),
    ({"op": "mul", "src1_mem": "acc", "src2_mem": "acc"}, 2),
    ({"op": "add", "src1_mem": "spad", "src2_mem": "acc"}, 1),
    ({"op": "max", "src1_mem": "acc", "src2_mem": "spad"}, 1),
    ({"op": "add", "src1_mem": "spad", "src2_mem": "spad", "use_imm": True}, 1),
    ({"op": "mov", "src1_mem": "spad", "src2_mem": "spad"}, 1),
    ({"op": "shr", "src1_mem": "acc", "src2_mem": "acc"}, 1),
    ({"op": "clip", "src1_mem": "acc", "src2_mem": "acc"}, 1),
])
def test_vector_cycles(fields, reads_per_row):
    insn = I.make("vector", dst_mem="spad", dst=0, src1=0, rows=5, **fields)
    assert instruction_cycles(insn, TINY) == 5 * reads_per_row + VECTOR_LATENCY
    # Config.vector_stage: one more pipeline register for every op.
    assert instruction_cycles(insn, TINY.replace(vector_stage=1)) == 5 * reads_per_row + VECTOR_LATENCY + 1


def test_load_store_cycles_hand_computed():
    # tiny: 8-byte bus, mem_latency 8.  Rows of 4 bytes at 5, 11, 17: offsets 5, 3, 1 in their
    # bus words -> 2 + 1 + 1 beats.
    load = I.make("load", mem="spad", addr=0, rows=3, len=4, dram=5, stride=6)
    assert axi_beats(load, TINY) == 4
    assert instruction_cycles(load, TINY) == 8 + 4 + 1
    # Accumulator rows: 3 int32 = 12 bytes at 0, 16: 2 beats each.
    store = I.make("store", mem="acc", addr=0, rows=2, len=3, dram=0, stride=16)
    assert axi_beats(store, TINY) == 4
    assert instruction_cycles(store, TINY) == 8 + 4 + 1
    # Same on the 16-byte bus of `default`: 1 beat each; the preset's store_ahead makes it 9 + beats.
    assert axi_beats(store, DEFAULT) == 2
    assert instruction_cycles(store, DEFAULT.replace(store_ahead=0)) == 16 + 2 + 1
    assert DEFAULT.store_ahead and instruction_cycles(store, DEFAULT) == 9 + 2


def test_load_zero_cycles():
    insn = I.make("load", mem="acc", zero=True, addr=0, rows=9, len=4)
    assert instruction_cycles(insn, TINY) == 9
    assert axi_beats(insn, TINY) == 0


def test_counters_and_control_cycles():
    insn = I.make("counters", dram=4)
    beats = (4 + SNAPSHOT_BYTES + 7) // 8
    assert axi_beats(insn, TINY) == beats
    assert instruction_cycles(insn, TINY) == TINY.mem_latency + beats
    for control in (I.make("fence"), I.make("halt"), I.make("config", reg="clip_lo", value=-3)):
        assert instruction_cycles(control, TINY) == 1
        assert axi_beats(control, TINY) == 0


@settings(max_examples=200, deadline=None)
@given(dram=st.integers(0, 1 << 20), rows=st.integers(1, 200), stride=st.integers(0, 300),
       length=st.integers(1, 64), acc=st.booleans(), bus_bits=st.sampled_from([64, 128, 256]))
def test_axi_beats_brute_force(dram, rows, stride, length, acc, bus_bits):
    config = Config(cols=64, rows=8, dma_bus_bits=bus_bits)
    insn = I.make("load", mem="acc" if acc else "spad", addr=0, rows=rows, len=length,
                  dram=dram, stride=stride)
    row_bytes = length * (4 if acc else 1)
    bus = bus_bits // 8
    expected = 0
    for r in range(rows):
        first = dram + r * stride
        last = first + row_bytes - 1
        expected += last // bus - first // bus + 1       # bus words touched
    assert axi_beats(insn, config) == expected


# Schedules ------------------------------------------------------------------------------------------------

LOAD_A = I.make("load", mem="spad", addr=0, rows=4, len=4, dram=0x1000, stride=4)
MATMUL_OTHER = I.make("matmul", acc=0, a=16, b=20, a_stride=4, m=4, n=4, k=4)


def test_independent_load_and_matmul_overlap():
    sched = schedule([LOAD_A, MATMUL_OTHER, I.make("halt")], TINY)
    load, matmul, halt = sched.entries
    assert matmul.start < load.end                       # ran in parallel
    assert halt.start == max(load.end, matmul.end)
    assert sched.cycles == halt.end == halt.start + 1
    assert load.stall_dep == matmul.stall_dep == 0
    assert sched.stall_dep == halt.stall_dep == halt.start - halt.dispatch > 0    # HALT waits


def test_token_serialises_load_and_matmul():
    program = [LOAD_A.replace(push_next=True), MATMUL_OTHER.replace(pop_prev=True), I.make("halt")]
    sched = schedule(program, TINY)
    load, matmul, halt = sched.entries
    assert matmul.start == load.end
    assert matmul.end == matmul.start + instruction_cycles(MATMUL_OTHER, TINY)
    assert sched.stall_dep == (matmul.start - matmul.dispatch) + (halt.start - halt.dispatch)
    assert halt.start == matmul.end


def test_units_run_their_queues_in_order_and_busy_sums():
    loads = [LOAD_A.replace(addr=4 * i) for i in range(3)]
    sched = schedule(loads + [MATMUL_OTHER], TINY)
    for before, after in zip(sched.entries[:2], sched.entries[1:3], strict=True):
        assert after.start == before.end
    cycles = instruction_cycles(LOAD_A, TINY)
    assert sched.unit_busy[LOAD_A.unit] == 3 * cycles
    assert sched.busy["load_busy"] == 3 * cycles
    assert sched.busy["array_busy"] == instruction_cycles(MATMUL_OTHER, TINY)
    assert sched.cycles == 3 * cycles


def test_full_queue_blocks_dispatch():
    depth = TINY.queue_depth
    loads = [LOAD_A.replace(addr=4 * i) for i in range(depth + 2)]
    sched = schedule(loads + [MATMUL_OTHER], TINY)
    matmul = sched.entries[-1]
    # The last load waits for a slot, which the load two places before frees when it starts.
    assert sched.entries[depth + 1].dispatch == sched.entries[1].start
    assert matmul.dispatch == sched.entries[depth + 1].dispatch + 1
    assert matmul.start == matmul.dispatch


def test_barrier_waits_for_everything_and_holds_dispatch():
    program = [LOAD_A, MATMUL_OTHER, I.make("fence"), MATMUL_OTHER, I.make("halt")]
    sched = schedule(program, TINY)
    load, matmul, fence, matmul2, halt = sched.entries
    assert fence.start == max(load.end, matmul.end)
    assert matmul2.dispatch == fence.end == fence.start + 1
    assert matmul2.start == fence.end


def test_push_into_full_token_queue_waits_for_pop():
    depth = TINY.token_depth
    vec = I.make("vector", op="mov", dst_mem="spad", src1_mem="spad", dst=0, src1=0, rows=1, push_next=True)
    # A long store keeps the store unit busy, so the popping store starts late.
    long_store = I.make("store", mem="spad", addr=40, rows=64, len=4, dram=0x2000, stride=64)
    popping_store = long_store.replace(rows=1, pop_prev=True)
    program = [long_store] + [vec] * depth + [popping_store, vec]
    sched = schedule(program, TINY)
    first_vec, store, last = sched.entries[1], sched.entries[depth + 1], sched.entries[depth + 2]
    assert store.start == sched.entries[0].end            # after the long store
    assert store.start > first_vec.retire                 # so the token waited for the store
    assert last.end < store.start                         # the fifth push had no room ...
    assert last.retire == store.start                     # ... until the store popped
    assert last.stall_dep == last.retire - last.end
    assert sched.stall_dep == last.stall_dep + store.stall_dep


def test_schedule_rejects_pop_without_push():
    with pytest.raises(ExecutionError) as info:
        schedule([MATMUL_OTHER.replace(pop_prev=True)], TINY)
    assert info.value.cause is ErrorCause.DEADLOCK


def _overlapped(config: Config, overlap: int) -> Config:
    return config.replace(name=f"{config.name}_lo{overlap}", load_overlap=overlap)


def test_overlapped_loads_share_the_latency():
    """With load_overlap > 1 the next LOAD starts once the previous one's rows are requested; data and
    completions stay in program order, and at most load_overlap LOADs are in flight."""
    from braze.isa.timing import LOAD_HANDOVER_CYCLES, LOAD_SLOT_CYCLES
    loads = [LOAD_A.replace(addr=4 * i, push_next=True) for i in range(TINY.token_depth)]
    matmuls = [MATMUL_OTHER.replace(pop_prev=True) for _ in loads]
    program = loads + matmuls + [I.make("halt")]
    serial = schedule(program, TINY)
    beats = axi_beats(LOAD_A, TINY)
    for overlap in (2, 4):
        sched = schedule(program, _overlapped(TINY, overlap))
        entries = sched.entries[:len(loads)]
        for index, (before, after) in enumerate(zip(entries, entries[1:], strict=False)):
            assert after.start >= before.start + LOAD_A.rows + 1          # the rows are requested first
            assert after.end >= before.end + beats + LOAD_HANDOVER_CYCLES  # one bus, in order
            assert after.retire >= before.retire
            if index + 1 >= overlap:                                      # at most `overlap` in flight
                assert after.start >= entries[index + 1 - overlap].retire + LOAD_SLOT_CYCLES
        assert entries[1].start < entries[0].end
        assert entries[-1].end < serial.entries[len(loads) - 1].end
        assert sched.cycles <= serial.cycles
    assert schedule(program, _overlapped(TINY, 1)).cycles == serial.cycles


def test_overlapped_zero_loads_follow_in_order():
    zero = LOAD_A.replace(zero=True)
    sched = schedule([LOAD_A, zero, I.make("halt")], _overlapped(DEFAULT, 2))
    load, zeroed, _ = sched.entries
    assert zeroed.start == load.start + LOAD_A.rows + 1
    assert zeroed.end == load.end + zero.rows + 2


def test_overlapped_loads_hand_over_as_the_rtl_measures():
    """Back to back, a zero LOAD's rows follow the previous LOAD's data after LOAD_HANDOVER_CYCLES (2), a
    LOAD that reads memory waits also for its instruction word's beats on the read port (at least one),
    as benchmarks/load_handover.py measures on the RTL: beats + 3 on default's 16-byte bus and large's
    32-byte one, beats + 4 on tiny's 8-byte one; a hand-over given to the Scheduler (the learned model's
    baseline) applies before every LOAD."""
    from braze.isa.timing import LOAD_HANDOVER_CYCLES, Scheduler, load_handover_cycles
    assert LOAD_HANDOVER_CYCLES == 2
    tiny = _overlapped(TINY, 2)
    assert [load_handover_cycles(config) for config in (tiny, DEFAULT, Config.preset("large"))] == [4, 3, 3]
    assert [load_handover_cycles(config, zero=True) for config in (tiny, DEFAULT)] == [2, 2]
    rows8 = I.make("load", mem="spad", addr=0, rows=8, len=8, dram=0x1000, stride=64)
    zero = rows8.replace(zero=True)
    beats = axi_beats(rows8, DEFAULT)
    assert beats == 8

    def second_end(second: I, **options) -> int:
        scheduler = Scheduler(DEFAULT, **options)
        for insn in (rows8, second):
            scheduler.add(insn)
        return scheduler.entries[-1].end

    first_end = schedule([rows8], DEFAULT).entries[0].end
    assert second_end(rows8) == first_end + beats + 3
    assert second_end(zero) == first_end + zero.rows + 2
    assert second_end(rows8, load_handover=4) == first_end + beats + 4
    assert second_end(zero, load_handover=4) == first_end + zero.rows + 4


def test_load_stretch_lengthens_the_overlapped_loads_requests_and_beats():
    """A stalling memory (``load_stretch``) stretches each overlapped LOAD's row requests and data
    beats where they queue behind the previous LOAD's; at 0 the schedule is the timing model's."""
    from braze.isa.timing import LOAD_HANDOVER_CYCLES, Scheduler
    config = _overlapped(TINY, 4)
    loads = [LOAD_A.replace(addr=4 * i, push_next=True) for i in range(TINY.token_depth)]
    program = loads + [MATMUL_OTHER.replace(pop_prev=True) for _ in loads] + [I.make("halt")]
    beats = axi_beats(LOAD_A, config)

    def entries(stretch: float):
        scheduler = Scheduler(config, load_stretch=stretch)
        for insn in program:
            scheduler.add(insn)
        return scheduler.result()

    assert entries(0.0).cycles == schedule(program, config).cycles
    stretched = entries(1.0)                                      # stall 0.5: every handshake twice
    plain = entries(0.0)
    firsts = stretched.entries[:len(loads)]
    for before, after in zip(firsts, firsts[1:], strict=False):
        assert after.start >= before.start + 2 * LOAD_A.rows + 1
        assert after.end >= before.end + 2 * beats + LOAD_HANDOVER_CYCLES
    assert firsts[-1].end > plain.entries[len(loads) - 1].end        # the matmuls hide it here
    assert stretched.busy["load_busy"] > plain.busy["load_busy"]
    # Without overlap a LOAD's own duration is all there is: the stretch has nothing to lengthen.
    serial = Scheduler(TINY, load_stretch=1.0)
    for insn in program:
        serial.add(insn)
    assert serial.result().cycles == schedule(program, TINY).cycles


# --- Config.epilogue_overlap: an EPILOGUE beside the compute unit ---------------------------------------

OVERLAP = TINY.replace(name="tiny_eo", epilogue_overlap=1)
#: Reads accumulator rows 0..7 and 100..102, writes scratchpad rows 40..47; pushes to the store unit.
EPILOGUE_BESIDE = I.make("epilogue", src=0, m=8, n=4, dst=40, bias=True, bias_addr=100, requant=True,
                         quant_addr=101, push_next=True)
#: Clear of it: accumulator rows 8..11, scratchpad A rows 0..3 and 16..19 (two chunks), B rows 20..27.
MATMUL_CLEAR = I.make("matmul", acc=8, a=0, b=20, a_stride=16, m=4, n=4, k=8)


def _epilogue_then(second, config=OVERLAP, epilogue=EPILOGUE_BESIDE):
    program = [epilogue, second, I.make("store", mem="spad", addr=40, rows=8, len=4, dram=0x100, stride=4,
                                        pop_prev=True), I.make("halt")]
    entries = schedule(program, config).entries
    return entries[0], entries[1]


def test_a_clear_matmul_starts_beside_an_epilogue_and_retires_after_it():
    epilogue, matmul = _epilogue_then(MATMUL_CLEAR)
    assert matmul.start == epilogue.start + 1
    assert epilogue.end == epilogue.start + instruction_cycles(EPILOGUE_BESIDE, OVERLAP)
    assert matmul.retire >= epilogue.retire + 1
    # Off, or not a MATMUL: after it.
    epilogue, matmul = _epilogue_then(MATMUL_CLEAR, config=TINY)
    assert matmul.start == epilogue.end
    vector = I.make("vector", op="mov", src1_mem="spad", src1=0, dst_mem="spad", dst=60, rows=1)
    epilogue, after = _epilogue_then(vector)
    assert after.start == epilogue.retire


@pytest.mark.parametrize("clash", [
    {"acc": 4},                      # accumulator rows 4..7 are EPILOGUE source rows
    {"acc": 98},                     # rows 98..101 hold the bias and multiplier rows
    {"a": 30, "a_stride": 10},       # A rows 30..33 and 40..43: 40..43 are EPILOGUE destination rows
    {"a": 36},                       # rows 36..39 and 52..55 miss them, but the A span 36..55 does not
    {"b": 44},                       # B rows read what the EPILOGUE writes
])
def test_a_matmul_touching_the_epilogues_rows_waits_for_it(clash):
    epilogue, after = _epilogue_then(MATMUL_CLEAR.replace(**clash))
    assert after.start == epilogue.retire


@pytest.mark.parametrize("change", [{"out": "acc", "dst": 200}, {"residual": True, "res_addr": 60}])
def test_an_epilogue_writing_the_accumulator_or_reading_a_residual_is_not_beside(change):
    epilogue, matmul = _epilogue_then(MATMUL_CLEAR, epilogue=EPILOGUE_BESIDE.replace(**change))
    assert matmul.start == epilogue.end
