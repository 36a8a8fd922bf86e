"""The main job: the sample kernel assembles, runs on the reference model and is right."""

import numpy as np
import pytest

from braze.cli import main
from braze.demo import run_demo
from braze.isa import Config


@pytest.mark.parametrize("preset", ["tiny", "default", "large"])
def test_demo_kernel_matches_numpy_and_counts_exactly(preset):
    config = Config.preset(preset)
    outcome = run_demo(config, seed=3, verbose=False)
    assert outcome["matches"]
    out = outcome["out"]
    m, k, n = 16, 4 * config.rows, config.cols
    assert out.shape == (m, n)
    # The epilogue ends in ReLU, and random data must exercise both sides of it.
    assert (out == 0).any() and (out > 0).any()
    counters = outcome["counters"]
    assert counters["macs"] == m * n * k
    assert counters["dma_read_bytes"] == m * k + k * n + 3 * n * 4
    assert counters["dma_write_bytes"] == m * n
    assert counters["insn_load"] == 6 and counters["insn_matmul"] == 1 and counters["insn_epilogue"] == 1
    assert counters["insn_store"] == 1
    # The snapshot is taken before COUNTERS and HALT retire.
    assert counters["insn_counters"] == 0 and counters["insn_halt"] == 0
    assert 0 < counters["array_busy"] <= counters["cycles"]


def test_demo_command_prints_result_and_counters(capsys):
    assert main(["demo", "--config", "tiny"]) == 0
    printed = capsys.readouterr().out
    assert "Matches numpy: yes" in printed
    assert "macs" in printed and "cycles" in printed
    assert "matmul" in printed  # the program listing


def test_demo_detects_a_wrong_result(monkeypatch):
    import braze.demo

    real = braze.demo.epilogue
    monkeypatch.setattr(braze.demo, "epilogue", lambda *a, **kw: np.asarray(real(*a, **kw)) ^ 1)
    assert not run_demo(Config.preset("tiny"), verbose=False)["matches"]
