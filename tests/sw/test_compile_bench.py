"""``braze bench compile``: what it measures, under which cost model, in caches of its own."""

from __future__ import annotations

import os

import pytest

from braze.isa import Config
from braze.isa.errors import BrazeError
from braze.sw.compiler.cost import TimingCostModel
from braze.sw.hpm import LearnedCostModel
from braze.sw.runtime import compile_bench


def test_the_cost_models_are_the_ones_named():
    default = Config.preset("default")
    assert isinstance(compile_bench.planning_cost_model("analytic", default), TimingCostModel)
    learned = compile_bench.planning_cost_model("learned", default)
    assert isinstance(learned, LearnedCostModel) and learned.device == "verilator"
    with pytest.raises(BrazeError, match="default_custom"):
        compile_bench.planning_cost_model("learned", Config.parse("default:spad_banks=1"))


def test_a_measurement_runs_in_caches_of_its_own(monkeypatch, tmp_path):
    monkeypatch.setenv("BRAZE_CACHE_DIR", str(tmp_path / "mine"))
    row = compile_bench.measure("mlp", first=8, second=3, cost_model="learned")
    assert os.environ["BRAZE_CACHE_DIR"] == str(tmp_path / "mine")      # restored
    assert not (tmp_path / "mine").exists()                              # nothing written there
    assert row["cost_model"] == "learned" and row["model"] == "mlp"
    assert row["kernels_generated"] > 0
    assert min(row["cold_s"], row["second_s"], row["cached_s"]) > 0
    # CPU seconds beside the wall-clock ones: a compile does work, and this process did it.
    assert min(row["cold_cpu_s"], row["second_cpu_s"], row["cached_cpu_s"]) > 0
