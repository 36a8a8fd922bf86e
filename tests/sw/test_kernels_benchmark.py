"""benchmarks/gemm.py runs on the golden device and reports what the counters say."""

import importlib.util
from pathlib import Path

import pytest

from braze.isa import Config

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gemm.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("braze_gemm_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_rows_follow_the_counters(bench):
    config = Config.preset("tiny")
    rows = bench.benchmark("golden", config, [8, 20], "fused", seed=1, max_cycles=None)
    assert [row["size"] for row in rows] == [8, 20]
    for row in rows:
        assert row["correct"]
        assert row["cycles"] > 0 and row["predicted"] >= row["cycles"]
        assert 0 < row["utilisation"] <= row["array_busy"] <= 1
        n = row["size"]
        # A and B read at least once, the int8 output written exactly once.
        assert row["dma_bytes"] >= 2 * n * n + n * n


def test_benchmark_main_prints_a_table(bench, capsys):
    assert bench.main(["--device", "golden", "--config", "tiny", "--sizes", "12", "--epilogue", "none"]) == 0
    out = capsys.readouterr().out
    assert "MAC util" in out and "ok" in out.splitlines()[-1]
    assert out.splitlines()[-1].split()[0] == "12"
