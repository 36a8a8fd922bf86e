"""``braze bench kernels``: GEMM rows measured against their roofline bound."""

from __future__ import annotations

import pytest

from braze import kernels_bench
from braze.isa import BrazeError, Config
from braze.sw.compiler import kernels

TINY = Config.preset("tiny")


def test_the_bound_is_the_larger_of_compute_and_bus_cycles():
    kernel = kernels.gemm(TINY, 16, 64, 8, bias=True, requant=True, act="relu")
    compute, bus = kernels_bench.gemm_bound(kernel, TINY)
    assert compute == -(-16 * 64 * 8 // (TINY.rows * TINY.cols))
    # A, B, the bias/mult/shift rows (int32) and the int8 output, over the bus width.
    moved = 16 * 64 + 64 * 8 + 3 * 8 * 4 + 16 * 8
    assert bus == -(-moved // TINY.dma_bus_bytes)


def test_gemm_rows_are_exact_and_never_beat_their_bound():
    rows = kernels_bench.run_gemms("golden", ["tiny"], [(1, 64, 10), (16, 16, 16), (20, 24, 12)], seed=3)
    assert [row["shape"] for row in rows] == [(1, 64, 10), (16, 16, 16), (20, 24, 12)]
    for row in rows:
        assert row["correct"] and row["config"] == "tiny"
        # On the golden device the cycles are the timing model's, which a lower bound must not exceed.
        assert 0 < row["cycles"] <= row["predicted"]
        assert row["over_bound"] >= 1.0
        assert 0 < row["utilisation"] <= 1
    table = kernels_bench.gemm_table(rows)
    assert "1x64x10" in table and table.count("ok") == 3


def test_small_shapes_report_streamed_and_packed_cycles_per_call():
    rows = kernels_bench.run_gemms("golden", ["tiny"], [(1, 64, 10), (20, 24, 12)], seed=4, stream_calls=4)
    small, large = rows
    assert small["correct"] and "stream_cycles" not in large     # only M <= SMALL_M streams
    # Weights resident: a later call reads only its A (64 B); pipelined and resident, it beats a lone kernel.
    assert small["stream_read_bytes"] == 64
    assert 0 < small["stream_cycles"] < small["cycles"]
    assert small["stream_cycles"] == small["stream_predicted"]     # golden: the timing model's cycles
    # Four calls in one kernel share one weight load: cheaper per call than streaming them; streaming
    # such packed kernels (weights resident) removes their fixed costs too.
    assert small["packed_streamed_cycles"] < small["packed_cycles"] < small["stream_cycles"]
    bound = max(small["compute_cycles"], small["bus_cycles"])
    assert small["stream_over_bound"] == small["stream_cycles"] / bound
    table = kernels_bench.stream_table(rows)
    assert "1x64x10" in table and "20x24x12" not in table


def test_the_cnn_chain_row_runs_the_whole_digits_cnn_in_one_kernel():
    outcome = kernels_bench.run_cnn_chain("golden", samples=8, golden_check=False)
    assert len(outcome.kernels) == 1 and "conv2d_chain" in outcome.kernels[0]
    assert outcome.forced_decision.count("(forced") == 2 and "conv_chain(" in outcome.decision
    assert outcome.chosen == ("-> chained" in outcome.decision)
    assert outcome.totals.cycles > 0 and outcome.totals.kernels == 1
    assert outcome.golden_identical is None          # on golden itself: nothing to compare


def test_config_override_rows_compare_against_the_plain_ones():
    """--config-override weight_preload=1: the override rows are named after their preset, run the
    same shapes exactly, and the comparison pairs each with its plain row (a K of several chunks gets
    faster where the array bounds the kernel, a one-chunk K does not)."""
    specs = kernels_bench.override_specs("weight_preload=1", ["tiny"])
    assert specs == ["tiny:weight_preload=1,name=tiny_weight_preload_1"]
    shapes = [(8, 4, 4), (32, 64, 8)]
    plain = kernels_bench.run_gemms("golden", ["tiny"], shapes, seed=5)
    preload = kernels_bench.run_gemms("golden", specs, shapes, seed=5)
    assert all(row["correct"] for row in [*plain, *preload])
    assert [row["config"] for row in preload] == ["tiny_weight_preload_1"] * 2
    assert preload[0]["cycles"] == plain[0]["cycles"] and preload[1]["cycles"] < plain[1]["cycles"]
    table = kernels_bench.override_table(plain, preload, ["tiny"]).splitlines()
    assert len(table) == 4 and table[3].split()[:4] == ["tiny", "32x64x8", str(plain[1]["cycles"]),
                                                         str(preload[1]["cycles"])]
    with pytest.raises(BrazeError, match="unknown field 'weight_prelaod'"):
        kernels_bench.override_specs("weight_prelaod=1")


def test_config_base_compares_an_override_against_another():
    """--config-base weight_preload=1 --config-override epilogue_overlap=1: the override rows pair with the
    base rows (not the presets'); with several N tiles the EPILOGUEs hide behind the next MATMULs."""
    base = kernels_bench.override_specs("weight_preload=1", ["tiny"])
    both = kernels_bench.override_specs("weight_preload=1,epilogue_overlap=1", ["tiny"])
    shapes = [(32, 16, 16)]
    preload = kernels_bench.run_gemms("golden", base, shapes, seed=6)
    overlapped = kernels_bench.run_gemms("golden", both, shapes, seed=6)
    assert all(row["correct"] for row in [*preload, *overlapped])
    assert overlapped[0]["cycles"] < preload[0]["cycles"]
    table = kernels_bench.override_table(preload, overlapped, ["tiny"]).splitlines()
    cycles = [str(row["cycles"]) for row in (*preload, *overlapped)]
    assert table[2].split()[:4] == ["tiny", "32x16x16", *cycles]
