# amaranth: UnusedElaboratable=no
"""The counter bank against a Python tally of random events, snapshots and resets."""

import random

import pytest
from amaranth.back import verilog
from amaranth.sim import Simulator

from braze.hw.counters import COUNTER_BITS, CounterBank
from braze.isa import COUNTERS, Counter


def _simulate(seed: int, cycles: int, inc_width: int, counter_bits: int = COUNTER_BITS):
    """Drive random increments, requests and back-pressure; check everything against a tally."""
    dut = CounterBank(inc_width=inc_width, counter_bits=counter_bits)
    mask = (1 << counter_bits) - 1
    rng = random.Random(seed)
    count = len(COUNTERS)
    stats = {"snapshots": 0, "resets": 0, "words": 0, "clears": 0}

    async def testbench(ctx):
        tally = [0] * count
        expected_words = []          # the snapshot being written out, in order
        for cycle in range(cycles):
            incs = [rng.choice([0, 0, 1, rng.getrandbits(inc_width)]) for _ in range(count)]
            for index, inc in enumerate(incs):
                ctx.set(dut.inc[index], inc)
            request = rng.random() < 0.05
            reset = rng.random() < 0.5
            clear = rng.random() < 0.003
            ctx.set(dut.snapshot.valid, request)
            ctx.set(dut.snapshot.payload.reset, reset)
            ctx.set(dut.words.ready, rng.random() < 0.7)
            ctx.set(dut.clear, clear)

            # Sample the handshakes of this cycle before the clock edge.
            accepted = ctx.get(dut.snapshot.valid) and ctx.get(dut.snapshot.ready)
            assert ctx.get(dut.snapshot.ready) == (not expected_words and not clear), f"cycle {cycle}"
            word_valid = ctx.get(dut.words.valid)
            assert word_valid == bool(expected_words), f"cycle {cycle}"
            if word_valid and ctx.get(dut.words.ready):
                value, last = ctx.get(dut.words.payload.value), ctx.get(dut.words.payload.last)
                want = expected_words.pop(0)
                assert value == want, f"cycle {cycle}: snapshot counter {count - 1 - len(expected_words)}"
                assert last == (not expected_words)
                stats["words"] += 1
            await ctx.tick()

            after = [(t + i) & mask for t, i in zip(tally, incs, strict=True)]
            if clear:
                tally = [0] * count
                expected_words = []
                stats["clears"] += 1
            elif accepted:
                expected_words = list(after)
                tally = [0] * count if reset else after
                stats["snapshots"] += 1
                stats["resets"] += reset
            else:
                tally = after
            assert [ctx.get(dut.values[i]) for i in range(count)] == tally, f"after cycle {cycle}"

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    return stats


def test_random_events_and_snapshots():
    stats = _simulate(seed=1, cycles=1500, inc_width=16)
    # The run must have exercised what it claims to check.
    assert stats["snapshots"] >= 10 and stats["resets"] >= 3 and stats["words"] >= 10 * len(COUNTERS)
    assert stats["clears"] >= 1


def test_counters_wrap_at_64_bits():
    """With the widest increments the counters pass 2**64 quickly."""
    stats = _simulate(seed=2, cycles=300, inc_width=COUNTER_BITS)
    assert stats["snapshots"] >= 3


def test_counters_wrap_at_32_bits():
    """Config.counter_bits=32: the counters, and their snapshot words, wrap modulo 2**32."""
    stats = _simulate(seed=3, cycles=150, inc_width=32, counter_bits=32)
    assert stats["snapshots"] >= 2


@pytest.mark.parametrize("bits", [16, 48, 128])
def test_bad_counter_bits(bits):
    with pytest.raises(ValueError, match="counter_bits"):
        CounterBank(counter_bits=bits)


def test_index_is_counter_enum():
    """inc[Counter.X] feeds values[Counter.X] and nothing else."""
    dut = CounterBank()
    target = Counter.MACS

    async def testbench(ctx):
        ctx.set(dut.inc[target], 7)
        await ctx.tick()
        await ctx.tick()
        values = [ctx.get(dut.values[i]) for i in range(len(COUNTERS))]
        assert values[target] == 14
        assert sum(values) == 14

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()


@pytest.mark.parametrize("width", [0, 65, "16"])
def test_bad_inc_width(width):
    with pytest.raises(ValueError, match="inc_width"):
        CounterBank(inc_width=width)


def test_counter_bank_converts_to_verilog():
    text = verilog.convert(CounterBank(), name="braze_counters")
    assert "module braze_counters" in text
