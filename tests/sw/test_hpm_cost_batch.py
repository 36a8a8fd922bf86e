"""The learned cost model prices a decision's candidates in one call of the model, with the same costs."""

from __future__ import annotations

import numpy as np
import pytest

from braze.isa import Config
from braze.sw.compiler import kernels
from braze.sw.hpm import LearnedCostModel, MemorySystem, load_model
from braze.sw.hpm.features import kernel_features

DEFAULT = Config.preset("default")


@pytest.fixture(scope="module")
def shipped():
    model = load_model("verilator")
    if model is None or not model.covers(DEFAULT, "verilator"):
        pytest.skip("no learned model covers the default preset on verilator")
    return model


@pytest.fixture(scope="module")
def candidates():
    base = kernels.gemm(DEFAULT, 64, 72, 24, bias=True, requant=True, act="relu")
    built = [kernels.gemm(DEFAULT, 64, 72, 24, bias=True, requant=True, act="relu", tiling=tiling)
             for tiling in kernels.candidate_tilings(base)[:4]]
    return [base, *built]


def test_one_call_prices_like_one_kernel_at_a_time(shipped, candidates):
    batch = LearnedCostModel(shipped, memory=MemorySystem.nominal(DEFAULT))
    single = LearnedCostModel(shipped, memory=MemorySystem.nominal(DEFAULT))
    together = batch.predict_candidates(candidates, DEFAULT)
    assert together == [single.predict_kernel(kernel, DEFAULT) for kernel in candidates]
    assert batch.learned == single.learned == len(candidates)
    # A candidate made of two kernels costs their sum.
    pair = batch.predict_candidates([candidates[:2]], DEFAULT)[0]
    assert pair.cycles == together[0].cycles + together[1].cycles


def test_one_thread_predicts_what_the_thread_pool_predicts(shipped, candidates):
    x = shipped._matrix([kernel_features(kernel, DEFAULT) for kernel in candidates])
    for regressor in (shipped._median, shipped._low, shipped._high):
        assert np.array_equal(regressor.predict(x, num_threads=1), regressor.predict(x))
