# amaranth: UnusedElaboratable=no
"""The MATMUL unit with two MATMULs in flight (Config.matmul_overlap): results vs numpy after each done,
acceptance and done cycles exactly as the timing model's MatmulPipe, counter pulses in total."""

import numpy as np
import pytest
from amaranth.sim import Simulator
from test_matmul import ACC_WINDOW, SPAD_WINDOW, MatmulSystem, _random_matmul, _reference

from braze.isa import Config, ConfigError, Instruction
from braze.isa.timing import MATMUL_LATENCY, MatmulPipe, matmul_cycles

TINY = Config.parse("tiny:weight_preload=1,matmul_overlap=1")


def _run(config, program, rng, *, gaps):
    """Offer `program` (each instruction from the cycle after the previous one was accepted; with `gaps`
    not in cycles 3..5 mod 7); check each result at its done, and return (accept, done) cycles."""
    system = MatmulSystem(config)
    unit = system.unit
    spad = rng.integers(-128, 128, size=(SPAD_WINDOW, config.cols))
    acc = rng.integers(-(1 << 31), 1 << 31, size=(ACC_WINDOW, config.cols)).astype(np.int64)
    model_acc = acc.copy()
    accepted, done, sums = [], [], dict.fromkeys(("busy", "spad_reads", "acc_reads", "acc_writes", "macs"), 0)

    async def testbench(ctx):
        for row in range(SPAD_WINDOW):
            ctx.set(system.spad.storage_row(row), [int(x) for x in spad[row]])
        for row in range(ACC_WINDOW):
            ctx.set(system.acc.storage_row(row), [int(x) for x in acc[row]])
        cycle = 0
        while len(done) < len(program):
            offer = len(accepted) < len(program) and not (gaps and 3 <= cycle % 7 <= 5)
            ctx.set(unit.insn.valid, offer)
            if offer:
                ctx.set(unit.insn.payload.as_value(), program[len(accepted)].encode())
            sums["busy"] += ctx.get(unit.busy)
            sums["spad_reads"] += ctx.get(unit.spad_read_pulse) + ctx.get(unit.weight_read_pulse)
            sums["acc_reads"] += ctx.get(unit.acc_read_pulse)
            sums["acc_writes"] += ctx.get(unit.acc_write_pulse)
            sums["macs"] += ctx.get(unit.macs)
            if ctx.get(unit.done):
                # In order: the oldest instruction not yet done; the next one has written nothing yet.
                _reference(spad, model_acc, program[len(done)], config.rows)
                state = np.array([list(ctx.get(system.acc.storage_row(row))) for row in range(ACC_WINDOW)])
                np.testing.assert_array_equal(state, model_acc, err_msg=repr(program[len(done)]))
                done.append(cycle)
            assert len(accepted) - len(done) <= 2, "more than two MATMULs in flight"
            if offer and ctx.get(unit.insn.ready):
                accepted.append(cycle)
            await ctx.tick()
            cycle += 1
            assert cycle < 100_000

    sim = Simulator(system)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()

    chunks = [-(-insn.k // config.rows) for insn in program]
    assert sums["macs"] == sum(insn.m * insn.n * insn.k for insn in program)
    assert sums["spad_reads"] == sum(c * insn.m + insn.k for c, insn in zip(chunks, program, strict=True))
    assert sums["acc_reads"] == sum(insn.m * (c if insn.accumulate else c - 1)
                                    for c, insn in zip(chunks, program, strict=True))
    assert sums["acc_writes"] == sum(insn.m * c for c, insn in zip(chunks, program, strict=True))
    # busy: the cycles with at least one instruction in flight, (accept, done] each.
    busy = set()
    for start, end in zip(accepted, done, strict=True):
        busy.update(range(start + 1, end + 1))
    assert sums["busy"] == len(busy)
    return accepted, done


def _check_timing(config, program, accepted, done, *, gaps):
    """Each instruction is accepted in the first cycle it is offered in and the unit may take it
    (MatmulPipe.earliest_accept), and done when MatmulPipe says."""
    pipe = MatmulPipe(config)
    previous = -1
    for insn, accept, finish in zip(program, accepted, done, strict=True):
        expected = max(previous + 1, pipe.earliest_accept())
        while gaps and 3 <= expected % 7 <= 5:
            expected += 1
        assert accept == expected, insn
        assert finish == pipe.accept(insn, accept), insn
        previous = accept


@pytest.mark.parametrize("seed", [31, 32])
def test_random_back_to_back_matmuls_two_in_flight(seed):
    """Shapes around rows (the chunk period max(m, rows+1)), accumulating or not, into a few accumulator
    rows, so that the next MATMUL often reads rows the one before writes (the hazard gap)."""
    rng = np.random.default_rng(seed)
    program = []
    for m, k, n in [(1, 1, 1), (3, 4, 4), (4, 3, 2), (6, 5, 3), (9, 11, 4), (2, 8, 1), (5, 13, 4), (7, 7, 2),
                    (4, 4, 4), (1, 9, 3), (5, 8, 3), (1, 2, 4), (8, 4, 2), (2, 3, 4), (6, 1, 1), (3, 6, 3)]:
        insn = _random_matmul(rng, TINY, m, k, n, bool(rng.integers(2)))
        program.append(insn.replace(acc=int(rng.integers(0, 12 - m + 1)) if m < 12 else 0))
    rng.shuffle(program)
    for gaps in (False, True):
        accepted, done = _run(TINY, program, np.random.default_rng(seed), gaps=gaps)
        _check_timing(TINY, program, accepted, done, gaps=gaps)


def test_the_default_preset_back_to_back():
    """The default preset as shipped (8x8, weight preload, two MATMULs in flight): the same shapes as
    test_matmul's default-geometry tests, results and cycles as MatmulPipe says."""
    config = Config.preset("default")
    assert config.matmul_overlap and config.weight_preload
    rng = np.random.default_rng(23)
    program = [_random_matmul(rng, config, 10, 19, 6, True), _random_matmul(rng, config, 3, 24, 8, False),
               _random_matmul(rng, config, 9, 17, 8, True), _random_matmul(rng, config, 3, 8, 8, False)]
    accepted, done = _run(config, program, np.random.default_rng(23), gaps=False)
    _check_timing(config, program, accepted, done, gaps=False)
    assert any(accept < finish for accept, finish in zip(accepted[1:], done, strict=False)), \
        "no MATMUL was accepted while the one before it was in flight"


def _overlap_gain(config, program):
    accepted, done = _run(config, program, np.random.default_rng(5), gaps=False)
    _check_timing(config, program, accepted, done, gaps=False)
    return accepted, done


def test_back_to_back_into_different_rows_hide_the_fill_and_drain():
    """Two 8-row MATMULs of two chunks into different rows: the second is accepted when the first's last
    chunk begins streaming, its weights come during that chunk, and it streams right after the first's
    last A row -- rows + cols + MATMUL_LATENCY + rows cycles sooner than one after the other."""
    rows, cols = TINY.rows, TINY.cols
    first = Instruction.make("matmul", acc=0, a=0, b=40, a_stride=8, m=8, n=4, k=8)
    second = Instruction.make("matmul", acc=8, a=16, b=60, a_stride=8, m=8, n=4, k=8)
    accepted, done = _overlap_gain(TINY, [first, second])
    alone = matmul_cycles(TINY, 8, 8)
    assert done[0] - accepted[0] == alone
    last_chunk = accepted[0] + rows + 1 + 8          # the first one's second chunk begins streaming
    assert accepted[1] == last_chunk
    assert done[1] == done[0] + 2 * 8                 # its two chunks' rows follow the first one's
    serial = accepted[0] + 2 * alone     # without overlap: accepted in the first one's done cycle
    assert serial - done[1] == rows + cols + MATMUL_LATENCY + rows


def test_accumulating_into_the_rows_just_written_waits_for_the_writes():
    """The second MATMUL accumulates into rows 0..5 the first writes, shifted by `shift` rows: its first
    chunk streams acc - acc' + 3 cycles after the first one's (single) chunk began at the earliest, which
    binds once that exceeds max(m', rows + 1) = 6 (shift 4 and 5); the results stay right."""
    rows, cols = TINY.rows, TINY.cols
    for shift in (0, 3, 4, 5):
        first = Instruction.make("matmul", acc=0, a=0, b=40, a_stride=8, m=6, n=4, k=4)
        second = Instruction.make("matmul", acc=shift, a=20, b=60, a_stride=8, m=6, n=4, k=4, accumulate=True)
        accepted, done = _overlap_gain(TINY, [first, second])
        first_stream = accepted[0] + rows + 1
        assert accepted[1] == first_stream
        second_stream = first_stream + max(rows + 1, 6, shift + 3)
        assert done[1] == second_stream + 6 + rows + cols + MATMUL_LATENCY - 1, shift


def test_matmul_overlap_needs_weight_preload():
    with pytest.raises(ConfigError, match="matmul_overlap=1 needs weight_preload=1"):
        Config.parse("tiny:matmul_overlap=1")
    with pytest.raises(ConfigError, match="matmul_overlap=2 must be 0"):
        Config.parse("tiny:weight_preload=1,matmul_overlap=2")
    assert "matmul_overlap" not in Config.parse("tiny:weight_preload=1").to_dict()
    assert TINY.to_dict()["matmul_overlap"] == 1
