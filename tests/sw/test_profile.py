"""Run-time tensor profiles."""

from __future__ import annotations

import numpy as np
import pytest
from onnx_models import conv_model

from braze.sw.compiler.frontend import evaluate, load_onnx
from braze.sw.compiler.profile import PERCENTILES, format_profiles, profile_graph


def _runs(count, seed=0):
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(size=(2, 1, 8, 8)).astype(np.float32)} for _ in range(count)]


def test_profile_matches_numpy_over_all_runs():
    graph = load_onnx(conv_model())
    runs = _runs(3)
    profiles = profile_graph(graph, runs)
    assert "w1" not in profiles  # constants are not profiled
    assert list(profiles)[0] == "x"
    values = {name: [] for name in profiles}
    for run in runs:
        for name, value in evaluate(graph, run, keep=True).items():
            if name in values:
                values[name].append(np.asarray(value).reshape(-1))
    for name, profile in profiles.items():
        flat = np.concatenate(values[name])
        assert profile.count == flat.size
        assert profile.min == pytest.approx(flat.min()) and profile.max == pytest.approx(flat.max())
        assert profile.sparsity == pytest.approx(np.mean(flat == 0))
        assert profile.mean == pytest.approx(flat.mean(), rel=1e-5, abs=1e-6)
        np.testing.assert_allclose(
            list(profile.percentiles.values()), np.percentile(flat, PERCENTILES), rtol=1e-6
        )
    assert profiles["r1"].sparsity > 0.2  # after a ReLU
    assert profiles["x"].sparsity == 0.0
    assert profiles["r1"].shape == (2, 4, 8, 8) and profiles["r1"].dtype == "float32"


def test_calibration_ranges():
    graph = load_onnx(conv_model())
    profile = profile_graph(graph, _runs(4))["c1"]
    assert profile.range("minmax") == (profile.min, profile.max)
    lo, hi = profile.range("percentile", 99.0)
    assert profile.min < lo < hi < profile.max
    assert (lo, hi) == pytest.approx((profile.percentiles[1.0], profile.percentiles[99.0]))
    with pytest.raises(ValueError, match="'mean'"):
        profile.range("mean")


def test_single_run_and_printing():
    graph = load_onnx(conv_model())
    profiles = profile_graph(graph, _runs(1)[0])
    text = format_profiles(profiles)
    assert text.count("\n") == len(profiles) - 1
    assert "r1: float32[2x4x8x8] sparsity" in text
    with pytest.raises(ValueError, match="at least one input set"):
        profile_graph(graph, [])


def test_zero_block_fraction_counts_whole_zero_blocks():
    from braze.sw.compiler.profile import TensorProfile

    rng = np.random.default_rng(5)
    a = rng.integers(1, 100, (20, 32)).astype(np.int8)
    a[0:8, 8:16] = 0                 # one whole 8 x 8 block
    a[8:16, 0:8] = 0
    a[9, 3] = 1                      # ... not all zero
    a[:, 24:32] = 0                  # a zero column block: zero in each of the 3 row blocks
    profile = TensorProfile("a", a.shape, "int8")
    profile.add(a, rng)
    # Rows padded to 24 (3 row blocks) by 4 K-blocks of 8: (0, 1), (0, 3), (1, 3), (2, 3) are zero.
    assert profile.zero_block_fraction(8, 8) == pytest.approx(4 / 12)
    # Rows one by one: 8 rows of block 1, 7 of block 0, 20 of block 3, of 20 x 4.
    assert profile.zero_block_fraction(1, 8) == pytest.approx((8 + 7 + 20) / 80)
    assert profile.zero_block_fraction(20, 4) == pytest.approx(2 / 8)    # columns 24..31 are zero
    assert profile.zero_block_fraction(20, 16) == 0.0
    assert profile.zero_block_fraction(8, 5) is None                      # a width not recorded
    profile.add(np.ones_like(a), rng)                                     # a dense second run
    assert profile.zero_block_fraction(8, 8) == pytest.approx(4 / 24)


def test_zero_blocks_after_a_relu():
    graph = load_onnx(conv_model())
    profiles = profile_graph(graph, _runs(2))
    assert profiles["x"].zero_block_fraction(1, 4) == 0.0
    # Along the last axis (W = 8) one ReLU row of 4 is all zero far more often than a block of 8 x 4.
    after = profiles["r1"]
    assert after.zero_block_fraction(1, 4) > after.zero_block_fraction(8, 4) >= 0.0
    assert after.zero_block_fraction(1, 4) > 0.02
