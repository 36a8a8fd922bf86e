# amaranth: UnusedElaboratable=no
"""The systolic PE array against numpy, with the tightest and loosest legal schedules."""

import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.sim import Simulator

from braze.hw.pe_array import PEArray
from braze.isa.arith import wrap32

# Tiles cycle through these kinds; "min" gives the largest sum, rows * (-128) * (-128).
_KINDS = ("random", "min", "max", "mixed")


def _values(rng, kind, shape):
    if kind == "min":
        return np.full(shape, -128, dtype=np.int64)
    if kind == "max":
        return np.full(shape, 127, dtype=np.int64)
    if kind == "mixed":
        return rng.choice(np.array([-128, 127, -1, 0]), size=shape)
    return rng.integers(-128, 128, size=shape)


def _random_schedule(rng, rows, cols, tiles, *, tight):
    """Cycle-by-cycle inputs for several weight tiles, and the activation rows with their tile.

    Returns ``(weights, activations, due)``: dicts from cycle to the weight row preloaded in that
    cycle, to ``(a_row, first)``, and to ``(a_row, tile)``.  The schedule follows the array's
    rules: a tile's first activation row comes after its whole preload, and the next preload
    starts no earlier than that first row and not right after the previous preload (``tight``
    starts it as early as that, overlapping the streaming of the current tile; otherwise random
    gaps appear everywhere).
    """
    weights, activations, due = {}, {}, {}
    preload_start = int(rng.integers(0, 3))
    previous_last_row = -1
    for index in range(tiles):
        kind = _KINDS[index % len(_KINDS)]
        tile = _values(rng, kind, (rows, cols))
        for j in range(rows):
            weights[preload_start + j] = tile[rows - 1 - j]          # bottom PE row first
        first_row = max(preload_start + rows, previous_last_row + 1)
        if not tight:
            first_row += int(rng.integers(0, 3))
        cycle = first_row
        a_rows = int(rng.integers(1, 2 * rows + 2))
        for i in range(a_rows):
            a_row = _values(rng, kind, (rows,))
            activations[cycle] = (a_row, i == 0)
            due[cycle] = (a_row, tile)
            previous_last_row = cycle
            cycle += 1 if tight else 1 + int(rng.integers(0, 2))
        # The next preload: from the first row on, after a gap of at least one cycle.
        earliest = max(first_row, preload_start + rows + 1)
        preload_start = earliest if tight else earliest + int(rng.integers(0, a_rows + 2))
    return weights, activations, due


def _run(rows, cols, *, tight, seed, tiles=5):
    rng = np.random.default_rng(seed)
    dut = PEArray(rows, cols)
    weights, activations, due = _random_schedule(rng, rows, cols, tiles, tight=tight)
    last_cycle = max(activations) + dut.latency + 2
    seen = {}

    async def testbench(ctx):
        for cycle in range(last_cycle):
            # Inputs without their valid flag carry garbage, which must not disturb anything.
            weight_row = weights.get(cycle)
            ctx.set(dut.weight_shift, weight_row is not None)
            ctx.set(dut.weight_in, [int(x) for x in (weight_row if weight_row is not None else
                                                      rng.integers(-128, 128, cols))])
            a_row, first = activations.get(cycle, (None, False))
            ctx.set(dut.a_valid, a_row is not None)
            ctx.set(dut.a_first, first)
            a_in = a_row if a_row is not None else rng.integers(-128, 128, rows)
            ctx.set(dut.a_in, [int(x) for x in a_in])
            if ctx.get(dut.c_valid):
                seen[cycle] = np.array(list(ctx.get(dut.c_out)), dtype=np.int64)
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()

    expected = {cycle + dut.latency: wrap32(a_row @ tile) for cycle, (a_row, tile) in due.items()}
    assert sorted(seen) == sorted(expected), "c_valid must be high exactly `latency` cycles after a_valid"
    for cycle, row in expected.items():
        np.testing.assert_array_equal(seen[cycle], row, err_msg=f"result row due in cycle {cycle}")


@pytest.mark.parametrize("tight", [True, False], ids=["tight", "gaps"])
def test_tiny_array_matches_numpy(tight):
    _run(4, 4, tight=tight, seed=1 + tight)


def test_rectangular_array_matches_numpy():
    _run(2, 8, tight=True, seed=3, tiles=4)


def test_default_array_matches_numpy():
    _run(8, 8, tight=True, seed=4, tiles=4)


@pytest.mark.parametrize("rows, cols", [(0, 4), (4, 65), (4.0, 4)])
def test_bad_size_is_rejected(rows, cols):
    with pytest.raises(ValueError, match="PEArray (rows|cols) must be .*not"):
        PEArray(rows, cols)


def test_converts_to_verilog():
    text = verilog.convert(PEArray(4, 4), name="pe_array")
    assert "module pe_array" in text
