# amaranth: UnusedElaboratable=no
"""The control core with fake execution units: ordering, tokens, barriers, errors and deadlock."""

import random

import pytest
from amaranth.back import verilog
from amaranth.sim import Simulator
from control_harness import TOKEN_OF_FLAG, check_trace, make, run, unit_of
from test_decoder_rtl import reference_cause

from braze.hw.control import Control
from braze.hw.decoder import a_extent_value
from braze.isa import PRESETS, ConfigReg, ErrorCause, Instruction, Opcode, Unit, decode
from braze.isa.encoding import ALLOWED_DEPS, ARGS_OFFSET, DEPS, INSTRUCTION
from braze.isa.timing import epilogue_runs_beside

CONFIG = PRESETS["tiny"]
#: With the dispatch stage (Config.dispatch_stage): a load/compute/store word enters its queue a cycle
#: after the slot, which resolved and range-checked it (two cycles with two stages: the slot resolves it,
#: the check stage range-checks it).
STAGED = {stages: CONFIG.replace(name=f"tiny_ds{stages}", dispatch_stage=stages) for stages in (1, 2)}
O = Opcode


def _retired_count(trace, unit):
    return len(trace.retires[unit])


def random_program(rng: random.Random, length: int, token_depth: int) -> list:
    """A program whose every pop is preceded, in program order, by the push it consumes and whose
    outstanding tokens never exceed ``token_depth``, so that it can neither deadlock nor overflow."""
    outstanding = {token: 0 for token in set(TOKEN_OF_FLAG.values())}
    program = []
    for tag in range(length):
        if rng.random() < 0.08:
            program.append(make(rng.choice([O.FENCE, O.COUNTERS]), tag))
            continue
        opcode = rng.choice([O.LOAD, O.LOAD, O.STORE, O.STORE, O.MATMUL, O.VECTOR, O.EPILOGUE, O.CONFIG])
        unit = make(opcode).unit
        deps = {}
        for flag in sorted(ALLOWED_DEPS[unit]):
            token = TOKEN_OF_FLAG[unit, flag]
            if flag.startswith("pop") and outstanding[token] > 0 and rng.random() < 0.6:
                outstanding[token] -= 1
                deps[flag] = True
            elif flag.startswith("push") and outstanding[token] < token_depth and rng.random() < 0.5:
                outstanding[token] += 1
                deps[flag] = True
        program.append(make(opcode, tag, **deps))
    return program + [make(O.HALT)]


@pytest.mark.parametrize("seed", range(16))
def test_random_programs_respect_every_ordering_rule(seed):
    rng = random.Random(seed)
    # The default preset without overlapped LOADs: the fake load client takes one LOAD at a time (overlap is
    # checked against the real load engine in test_dma.py and the device tests).  The fake compute client
    # takes one MATMUL at a time too (two in flight: tests/sim/test_matmul_overlap_device.py); an EPILOGUE
    # beside the unit goes to a client of its own.
    config = PRESETS["tiny"] if seed % 3 else PRESETS["default"].replace(name="default_lo1", load_overlap=1)
    assert seed % 3 or (config.matmul_overlap and config.epilogue_overlap)
    program = random_program(rng, 60, config.token_depth)
    latency = rng.choice([(0, 3), (1, 12), (5, 20)])
    trace = run(config, program, seed=seed, latency=latency, ready_prob=rng.choice([0.3, 1.0]),
                fetch_prob=rng.choice([0.5, 1.0]), max_edges=6000)
    assert trace.error_edge is None, f"error {trace.cause} at pc 0x{trace.error_pc:x}"
    assert trace.done_edge is not None
    check_trace(trace, config)
    for unit in (Unit.LOAD, Unit.COMPUTE, Unit.STORE, Unit.CONTROL):
        assert _retired_count(trace, unit) == sum(unit_of(insn) is unit for insn in program)
    assert sum(bool(insn.deps) for insn in program) > 10, "the program exercises few tokens"
    if config.epilogue_overlap:           # each EPILOGUE ran beside the unit and reported on epilogue_done
        beside = sum(epilogue_runs_beside(insn, config) for insn in program)
        assert beside > 0 and len(trace.epilogue_dones) == beside


@pytest.mark.parametrize(("stages", "seed"), [(1, 1), (1, 2), (2, 1), (2, 2)])
def test_random_programs_with_a_dispatch_stage_respect_every_ordering_rule(stages, seed):
    rng = random.Random(seed)
    config = STAGED[stages]
    program = random_program(rng, 60, config.token_depth)
    trace = run(config, program, seed=seed, latency=rng.choice([(0, 3), (1, 12)]), ready_prob=0.3,
                fetch_prob=1.0, max_edges=6000)
    assert trace.error_edge is None and trace.done_edge is not None
    check_trace(trace, config)
    for unit in (Unit.LOAD, Unit.COMPUTE, Unit.STORE, Unit.CONTROL):
        assert _retired_count(trace, unit) == sum(unit_of(insn) is unit for insn in program)


@pytest.mark.parametrize("seed", range(6))
def test_random_programs_with_a_failing_instruction(seed):
    """One instruction's client reports an error: the core reports it, with its pc, and stops."""
    rng = random.Random(100 + seed)
    program = random_program(rng, 40, CONFIG.token_depth)
    failing = rng.choice([i for i, insn in enumerate(program)
                          if insn.opcode in (O.LOAD, O.STORE, O.MATMUL, O.VECTOR, O.EPILOGUE)])
    pc = 0x1000 + 16 * failing
    trace = run(CONFIG, program, seed=seed, latency=(seed % 2, 12), unit_errors={pc: ErrorCause.DRAM_RANGE},
                max_edges=4000)
    assert trace.error_edge is not None and trace.done_edge is None
    assert trace.cause is ErrorCause.DRAM_RANGE and trace.error_pc == pc
    check_trace(trace, CONFIG, executed=len(program))
    # Only the failing instruction started without retiring.
    unit = program[failing].unit
    queued = (Unit.LOAD, Unit.COMPUTE, Unit.STORE)
    assert sum(len(trace.starts[u]) - len(trace.retires[u]) for u in queued) == 1
    assert len(trace.starts[unit]) == len(trace.retires[unit]) + 1


def test_pop_waits_for_push():
    """The compute unit is fast and the load slow: without the token it would start first."""
    program = [make(O.LOAD, 1, push_next=True), make(O.MATMUL, 2, pop_prev=True), make(O.HALT)]
    trace = run(CONFIG, program, latency_of={Unit.LOAD: (40, 40), Unit.COMPUTE: (1, 1)}, ready_prob=1.0,
                fetch_prob=1.0)
    check_trace(trace, CONFIG)
    (load_start, _), = trace.starts[Unit.LOAD]
    (matmul_start, _), = trace.starts[Unit.COMPUTE]
    assert matmul_start > trace.retires[Unit.LOAD][0] >= load_start + 40
    # While the matmul waited for its token, the core counted a dependency stall.
    assert sum(trace.stall_dep[load_start + 2:matmul_start]) >= 30


def test_units_overlap_without_tokens():
    program = [make(O.LOAD, i) for i in range(3)] + [make(O.MATMUL, i) for i in range(3)] + \
        [make(O.STORE, i) for i in range(3)] + [make(O.HALT)]
    trace = run(CONFIG, program, latency=(20, 20), ready_prob=1.0, fetch_prob=1.0)
    check_trace(trace, CONFIG)
    assert max(sum(bits) for bits in trace.busy) == 3
    # Serial execution would take 9 * 20 cycles.
    assert trace.done_edge < 9 * 20 / 2


def test_fence_orders_everything():
    program = [make(O.LOAD, 1), make(O.MATMUL, 2), make(O.FENCE), make(O.STORE, 3), make(O.HALT)]
    trace = run(CONFIG, program, latency_of={Unit.LOAD: (30, 30), Unit.COMPUTE: (10, 10),
                                             Unit.STORE: (1, 1)}, ready_prob=1.0)
    check_trace(trace, CONFIG)
    (fence_edge, opcode), *_ = trace.retires[Unit.CONTROL]
    assert opcode is O.FENCE
    assert trace.starts[Unit.STORE][0][0] > fence_edge > trace.retires[Unit.LOAD][0]
    # The barrier wait counts as a dependency stall.
    assert sum(trace.stall_dep) >= 20


def test_counters_handshake():
    program = [make(O.LOAD, 1), make(O.COUNTERS, 2), make(O.STORE, 3), make(O.HALT)]
    trace = run(CONFIG, program, latency_of={None: (25, 25), Unit.LOAD: (5, 5)}, ready_prob=1.0)
    check_trace(trace, CONFIG)
    (counters_start,) = trace.counters_starts
    counters_retire = next(edge for edge, op in trace.retires[Unit.CONTROL] if op is O.COUNTERS)
    assert counters_start > trace.retires[Unit.LOAD][0]
    assert counters_retire >= counters_start + 25
    assert trace.starts[Unit.STORE][0][0] > counters_retire


def test_full_queue_back_pressure():
    depth = CONFIG.queue_depth
    program = [make(O.VECTOR, i) for i in range(3 * depth)] + [make(O.HALT)]
    trace = run(CONFIG, program, latency_of={Unit.COMPUTE: (15, 15)}, ready_prob=1.0, fetch_prob=1.0)
    check_trace(trace, CONFIG)
    assert trace.queue_full_edges > 0
    # Fetched but not yet started: at most the queue, the dispatcher's one-word slot and its dispatch stage.
    starts = [edge for edge, _ in trace.starts[Unit.COMPUTE]]
    for edge in range(trace.edges):
        waiting = sum(e <= edge for e in trace.fetched) - sum(e <= edge for e in starts)
        assert waiting <= depth + 1 + CONFIG.dispatch_stage, f"edge {edge}: {waiting} instructions held"


def test_halt_stops_fetch():
    program = [make(O.LOAD, 1), make(O.HALT), make(O.LOAD, 2), 0]   # a legal and an illegal word after it
    trace = run(CONFIG, program, ready_prob=1.0, fetch_prob=1.0)
    assert trace.done_edge is not None and trace.error_edge is None
    assert len(trace.fetched) == 2
    assert len(trace.starts[Unit.LOAD]) == 1
    check_trace(trace, CONFIG, executed=2)


@pytest.mark.parametrize("bad", [
    0,                                                                      # opcode 0
    make(O.LOAD, 9).encode() | 1 << (INSTRUCTION["deps"].offset + DEPS["pop_prev"].offset),  # no prev
    Instruction.make("load", mem="spad", addr=CONFIG.spad_rows - 1, rows=2, len=4).encode(),
    Instruction.make("matmul", acc=0, a=0, b=0, a_stride=0, m=1, n=CONFIG.cols + 1, k=1).encode(),
    make(O.FENCE).encode() | 1 << 127,                                      # reserved bit
])
def test_illegal_word_stops_with_cause_and_pc(bad):
    program = [make(O.LOAD, 1), make(O.MATMUL, 2), bad, make(O.STORE, 3), make(O.HALT)]
    trace = run(CONFIG, program, latency=(3, 10), base=0x400)
    want = reference_cause(bad if isinstance(bad, int) else bad.encode(), CONFIG)
    assert want is not ErrorCause.NONE
    assert trace.error_edge is not None and trace.done_edge is None
    assert trace.cause == want
    assert trace.error_pc == trace.pc(2)
    assert trace.starts[Unit.STORE] == []
    check_trace(trace, CONFIG, executed=2)


def test_unit_error_waits_for_in_flight_work():
    program = [make(O.LOAD, 1), make(O.STORE, 2), make(O.STORE, 3), make(O.LOAD, 4), make(O.HALT)]
    trace = run(CONFIG, program, latency_of={Unit.LOAD: (60, 60), Unit.STORE: (5, 5)}, ready_prob=1.0,
                fetch_prob=1.0, unit_errors={0x1000 + 16: ErrorCause.DRAM_RANGE})
    assert trace.cause is ErrorCause.DRAM_RANGE
    assert trace.error_pc == trace.pc(1)
    # The first load was executing: the error is raised once it has completed, and nothing else starts.
    assert trace.error_edge > trace.retires[Unit.LOAD][0]
    assert len(trace.starts[Unit.LOAD]) == 1 and len(trace.starts[Unit.STORE]) == 1
    assert trace.retires[Unit.STORE] == []


def test_fetch_error():
    program = [make(O.LOAD, 1), make(O.LOAD, 2), make(O.HALT)]
    trace = run(CONFIG, program, fetch_errors=frozenset({0x1000 + 32}))
    assert trace.cause is ErrorCause.FETCH_ERROR and trace.error_pc == trace.pc(2)
    assert trace.done_edge is None


def test_counters_client_error():
    program = [make(O.COUNTERS, 1), make(O.LOAD, 2), make(O.HALT)]
    trace = run(CONFIG, program, counters_error={0: ErrorCause.DRAM_RANGE})
    assert trace.cause is ErrorCause.DRAM_RANGE and trace.error_pc == trace.pc(0)
    assert trace.starts[Unit.LOAD] == []


def test_deadlock_pop_without_push():
    program = [make(O.LOAD, 1), make(O.MATMUL, 2, pop_prev=True), make(O.HALT)]
    trace = run(CONFIG, program, max_edges=500)
    assert trace.error_edge is not None, "a deadlock hung the core"
    assert trace.cause is ErrorCause.DEADLOCK and trace.error_pc == trace.pc(1)
    assert len(trace.starts[Unit.LOAD]) == 1 and trace.starts[Unit.COMPUTE] == []


def test_deadlock_behind_full_queue():
    """The push that would free the compute unit sits behind the full compute queue."""
    depth = CONFIG.queue_depth
    program = [make(O.VECTOR, 0, pop_next=True)] + [make(O.VECTOR, i) for i in range(1, depth + 2)] + \
        [make(O.STORE, 1, push_prev=True), make(O.HALT)]
    trace = run(CONFIG, program, max_edges=500)
    assert trace.cause is ErrorCause.DEADLOCK and trace.error_pc == trace.pc(0)


def test_slow_push_is_not_a_deadlock():
    program = [make(O.STORE, 1, push_prev=True), make(O.VECTOR, 2, pop_next=True), make(O.HALT)]
    trace = run(CONFIG, program, latency_of={Unit.STORE: (150, 150)}, max_edges=1000)
    assert trace.error_edge is None and trace.done_edge is not None
    check_trace(trace, CONFIG)


def test_full_token_queue_blocks_push():
    """More pushes than the token queue holds: the producer waits until the consumer pops."""
    depth = CONFIG.token_depth
    program = [make(O.LOAD, i, push_next=True) for i in range(depth + 2)] + \
        [make(O.MATMUL, i, pop_prev=True) for i in range(depth + 2)] + [make(O.HALT)]
    trace = run(CONFIG, program, latency_of={Unit.LOAD: (1, 2), Unit.COMPUTE: (20, 20)}, max_edges=3000)
    # The load unit stalls on its push, but the compute unit pops, so this is no deadlock.
    assert trace.error_edge is None and trace.done_edge is not None
    check_trace(trace, CONFIG)


@pytest.mark.parametrize("seed", range(4))
def test_watchdog_stops_at_the_cycle_limit(seed):
    rng = random.Random(100 + seed)
    program = random_program(rng, 60, CONFIG.token_depth)
    unlimited = run(CONFIG, program, seed=seed, ready_prob=1.0, max_edges=6000)
    assert unlimited.done_edge is not None and unlimited.run_cycles <= unlimited.done_edge + 1
    # Below the cycle HALT retires (where the run-cycle count stops): from there on the run is over and
    # a limit no longer applies, though ``done`` is seen a few edges later.
    limit = rng.randrange(10, unlimited.run_cycles - 1)
    trace = run(CONFIG, program, seed=seed, ready_prob=1.0, max_edges=6000, cycle_limit=limit)
    assert trace.cause is ErrorCause.WATCHDOG and trace.done_edge is None
    assert trace.run_cycles == limit and trace.error_edge >= limit
    # Nothing is fetched into the dispatcher or started at or after run cycle `limit` (clients take
    # every offer at once, so a start is the cycle of the offer).
    assert trace.fetched and max(trace.fetched) < limit
    starts = [edge for unit in trace.starts.values() for edge, _ in unit] + trace.counters_starts
    assert max(starts) < limit
    # The pc is the first instruction not dispatched: the last word fetched, or the one after it (or,
    # with a dispatch stage, the word in it, before the last one).
    fetched = len(trace.fetched)
    assert trace.error_pc in [trace.pc(fetched - 1 - back) for back in range(-1, 1 + CONFIG.dispatch_stage)]
    for unit, unit_starts in trace.starts.items():     # each unit starts its instructions in order
        started = [i for i, insn in enumerate(program) if unit_of(insn) is unit][:len(unit_starts)]
        assert all(trace.pc(i) < trace.error_pc for i in started), unit
    check_trace(trace, CONFIG, executed=(trace.error_pc - trace.base) // 16)


def test_watchdog_before_the_first_fetch_and_a_limit_beyond_the_run():
    program = [make(O.LOAD, 1), make(O.HALT)]
    trace = run(CONFIG, program, base=0x2340, ready_prob=1.0, fetch_prob=1.0, cycle_limit=1)
    assert (trace.cause, trace.error_pc, trace.run_cycles) == (ErrorCause.WATCHDOG, 0x2340, 1)
    assert trace.starts[Unit.LOAD] == []
    trace = run(CONFIG, program, ready_prob=1.0, fetch_prob=1.0, cycle_limit=1000)
    assert trace.done_edge is not None and trace.cause is ErrorCause.NONE
    assert trace.run_cycles == trace.done_edge     # counted up to the cycle HALT retired, inclusive


def test_config_registers_start_and_soft_reset():
    """CONFIG sets the registers (signed); soft reset stops and clears; start runs again from scratch."""
    dut = Control(CONFIG)
    program = [make(O.CONFIG, 0).replace(reg="clip_lo", value=-5),
               make(O.CONFIG, 0).replace(reg="out_zp", value=(1 << 31) - 1),
               make(O.HALT)]

    async def feed(ctx, words):
        for word in words:
            ctx.set(dut.fetch.payload.word.as_value(), word)
            ctx.set(dut.fetch.payload.a_extent, a_extent_value(CONFIG, word))
            ctx.set(dut.fetch.valid, 1)
            await ctx.tick().until(dut.fetch.ready)
        ctx.set(dut.fetch.valid, 0)

    async def testbench(ctx):
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        assert ctx.get(dut.running)
        await feed(ctx, [insn.encode() for insn in program])
        done_pulses = 0                   # cycles with done & running: the status block's event
        for _ in range(20):
            await ctx.tick()
            done_pulses += ctx.get(dut.done) & ctx.get(dut.running)
        assert ctx.get(dut.done) and done_pulses == 1
        assert ctx.get(dut.config_regs.clip_lo) == -5
        assert ctx.get(dut.config_regs.out_zp) == (1 << 31) - 1
        assert ctx.get(dut.config_regs.clip_hi) == 0
        await ctx.tick()
        assert not ctx.get(dut.running)

        # A second run starts from cleared state; soft reset in the middle stops it.
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        assert not ctx.get(dut.done) and ctx.get(dut.config_regs.clip_lo) == 0
        await feed(ctx, [make(O.CONFIG, 1).encode(), make(O.LOAD, 1).encode()])
        await ctx.tick().repeat(3)
        assert ctx.get(dut.config_regs.as_value()) != 0
        ctx.set(dut.soft_reset, 1)
        await ctx.tick()
        ctx.set(dut.soft_reset, 0)
        assert not ctx.get(dut.running) and not ctx.get(dut.error) and not ctx.get(dut.done)
        assert ctx.get(dut.config_regs.as_value()) == 0
        assert not ctx.get(dut.fetch.ready)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()


def test_config_values_follow_program_order():
    program = [make(O.CONFIG, i) for i in range(9)] + [make(O.HALT)]
    trace = run(CONFIG, program)
    check_trace(trace, CONFIG)
    for reg in ConfigReg:
        last = max(i for i, insn in enumerate(program[:-1]) if insn.reg is reg)
        assert trace.config_regs[reg.name.lower()] == program[last].value


def test_stall_and_busy_outputs():
    program = [make(O.LOAD, 1), make(O.HALT)]
    trace = run(CONFIG, program, latency=(10, 10), ready_prob=1.0, fetch_prob=0.3)
    assert sum(trace.stall_fetch) > 0
    (start, _), = trace.starts[Unit.LOAD]
    retire = trace.retires[Unit.LOAD][0]
    busy_edges = [edge for edge, bits in enumerate(trace.busy) if bits[0]]
    assert busy_edges == list(range(start + 1, retire + 1))


def test_decoder_agrees_on_random_programs():
    """The words the harness builds are legal, so errors in the tests above come from the core."""
    rng = random.Random(7)
    for insn in random_program(rng, 200, CONFIG.token_depth):
        assert decode(insn.encode()) == insn
        assert reference_cause(insn.encode(), CONFIG) is ErrorCause.NONE


def test_rejects_bad_config():
    with pytest.raises(TypeError, match="Config"):
        Control({"rows": 4})


def test_control_converts_to_verilog():
    text = verilog.convert(Control(CONFIG), name="braze_control")
    assert "module braze_control" in text


def _loop(count_register: int, body: list, iterations: int) -> list:
    """``r<count_register> = iterations``, then ``body`` repeated by a count-down and a back-branch."""
    return ([Instruction.make("scalar", dst=count_register, imm=iterations)] + body +
            [Instruction.make("scalar", dst=count_register, src1=count_register, imm=-1),
             Instruction.make("branch", cond="ne", a=count_register, offset=-(len(body) + 1))])


@pytest.mark.parametrize("seed", range(3))
def test_counted_loop_dispatches_its_body_once_per_iteration(seed):
    """A taken BRANCH redirects fetch: the body's LOAD and STORE run three times, then HALT."""
    body = [make(O.LOAD, 1, push_next=True), make(O.CONFIG, 2, pop_prev=True, push_next=True),
            make(O.STORE, 3, pop_prev=True)]
    program = _loop(1, body, 3) + [make(O.HALT)]
    trace = run(CONFIG, program, seed=seed, latency=(1, 6))
    assert trace.done_edge is not None and trace.cause is ErrorCause.NONE
    assert [word for _, word in trace.starts[Unit.LOAD]] == [body[0].encode()] * 3
    assert [word for _, word in trace.starts[Unit.STORE]] == [body[2].encode()] * 3
    assert trace.scalar_regs[1] == 0


@pytest.mark.parametrize("config", [CONFIG, STAGED[1], STAGED[2]], ids=["slot", "one stage", "two stages"])
def test_register_offsets_are_added_at_dispatch_with_the_registers_of_program_order(config):
    """Each iteration's LOAD carries addr + r2 and dram + r3 as the SCALARs before it left them."""
    load = Instruction.make("load", mem="spad", addr=5, rows=1, len=4, dram=0x100, stride=0, addr_reg=2,
                            dram_reg=3)
    body = [load, Instruction.make("scalar", dst=2, src1=2, imm=7),
            Instruction.make("scalar", dst=3, src1=3, src2=2)]
    program = _loop(1, body, 3) + [make(O.HALT)]
    trace = run(config, program, latency=(1, 4), scalar_writes={2: 10, 3: -16})
    assert trace.cause is ErrorCause.NONE
    r2, r3, expected = 10, -16, []
    for _ in range(3):
        resolved = load.replace(addr=5 + r2, addr_reg=0, dram=(0x100 + r3) & 0xFFFF_FFFF, dram_reg=0)
        expected.append(resolved.encode())
        r2 += 7
        r3 += r2
    assert [word for _, word in trace.starts[Unit.LOAD]] == expected
    assert trace.scalar_regs[2:4] == (r2, r3)


@pytest.mark.parametrize("config", [CONFIG, STAGED[1], STAGED[2]], ids=["slot", "one stage", "two stages"])
def test_a_register_offset_out_of_range_stops_with_the_range_cause_at_its_pc(config):
    program = [Instruction.make("scalar", dst=4, imm=config.spad_rows - 2),
               Instruction.make("load", mem="spad", zero=True, addr=1, rows=2, len=4, addr_reg=4),
               make(O.STORE, 3), make(O.HALT)]
    trace = run(config, program)
    assert trace.cause is ErrorCause.SPAD_RANGE and trace.error_pc == trace.pc(1)
    assert trace.starts[Unit.LOAD] == [] and trace.starts[Unit.STORE] == []


@pytest.mark.parametrize("config", [CONFIG, STAGED[1], STAGED[2]], ids=["slot", "one stage", "two stages"])
def test_the_words_behind_a_failing_register_offset_have_no_effect(config):
    """The SCALAR right behind the failing LOAD writes nothing, and the BRANCH below the base behind it
    does not win: with two stages they reach the slot while the LOAD is still being range-checked."""
    program = [Instruction.make("scalar", dst=4, imm=config.spad_rows - 2),
               Instruction.make("load", mem="spad", zero=True, addr=1, rows=2, len=4, addr_reg=4),
               Instruction.make("scalar", dst=5, imm=7), Instruction.make("branch", offset=-8),
               make(O.HALT)]
    trace = run(config, program, base=0x400, fetch_prob=1.0, scalar_writes={5: 3})
    assert trace.cause is ErrorCause.SPAD_RANGE and trace.error_pc == trace.pc(1)
    assert trace.scalar_regs[4:6] == (config.spad_rows - 2, 3)


def test_a_register_field_above_r7_is_bad_field_not_a_resolved_address():
    load = Instruction.make("load", mem="spad", zero=True, addr=0, rows=1, len=4, addr_reg=1)
    offset = ARGS_OFFSET + load.format.layout["addr_reg"].offset
    word = load.encode() | 8 << offset                    # addr_reg=9
    assert reference_cause(word, CONFIG) is ErrorCause.BAD_FIELD
    trace = run(CONFIG, [make(O.STORE, 2), word, make(O.HALT)])
    assert trace.cause is ErrorCause.BAD_FIELD and trace.error_pc == trace.pc(1)
    assert trace.starts[Unit.LOAD] == []


def test_a_branch_below_the_program_base_stops_with_branch_range():
    program = [make(O.LOAD, 1), Instruction.make("branch", offset=-2), make(O.STORE, 3), make(O.HALT)]
    trace = run(CONFIG, program, base=0x400)
    assert trace.cause is ErrorCause.BRANCH_RANGE and trace.error_pc == trace.pc(1)
    assert trace.starts[Unit.STORE] == []


@pytest.mark.parametrize("value, loads", [(0, 1), (5, 2)])
def test_a_branch_on_a_predicate_sees_its_result(value, loads):
    """The dispatcher waits for the PREDICATE: the BRANCH right after it reads the new r3."""
    program = [make(O.LOAD, 1, push_next=True),
               Instruction.make("predicate", op="max", dst=3, mem="spad", addr=0, rows=1, pop_prev=True),
               Instruction.make("branch", cond="eq", a=3, b=0, offset=2),
               make(O.LOAD, 2), make(O.HALT)]
    trace = run(CONFIG, program, latency=(6, 12), predicate_value=value, scalar_writes={3: 99})
    assert trace.cause is ErrorCause.NONE
    assert len(trace.starts[Unit.LOAD]) == loads
    assert trace.scalar_regs[3] == value


def test_a_predicate_that_waits_for_a_missing_token_is_a_deadlock():
    program = [Instruction.make("predicate", op="any", dst=1, mem="spad", addr=0, rows=1, pop_prev=True),
               make(O.HALT)]
    trace = run(CONFIG, program)
    assert trace.cause is ErrorCause.DEADLOCK and trace.error_pc == trace.pc(0)


def test_an_endless_loop_runs_into_the_watchdog():
    program = [make(O.LOAD, 1), Instruction.make("branch", offset=-1), make(O.HALT)]
    trace = run(CONFIG, program, cycle_limit=200, max_edges=400)
    assert trace.cause is ErrorCause.WATCHDOG and trace.run_cycles == 200
    assert trace.error_pc in (trace.pc(0), trace.pc(1))
    assert len(trace.starts[Unit.LOAD]) > 3


def test_scalar_registers_survive_a_new_start_and_r0_stays_zero():
    program = [Instruction.make("scalar", dst=0, imm=9), Instruction.make("scalar", dst=5, src1=5, imm=-3),
               make(O.HALT)]
    trace = run(CONFIG, program, scalar_writes={5: -(1 << 31), 0: 4})
    assert trace.cause is ErrorCause.NONE
    assert trace.scalar_regs[0] == 0
    assert trace.scalar_regs[5] == (1 << 31) - 3          # wraps modulo 2**32
