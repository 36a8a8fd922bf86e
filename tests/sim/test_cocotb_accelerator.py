"""pytest launcher of the cocotb benches of the bare accelerator top (cocotb_benches/accelerator_bench.py).

The Verilator build is :func:`braze.sim.build.build_accelerator`'s, cached and shared like the
co-simulation harness builds; each bench test runs in one simulator process via
``cocotb_tools.runner``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cocotb_tools.runner import get_results, get_runner

from braze.hw.toolchain import verilator_env
from braze.isa import Config
from braze.sim.build import build_accelerator

# One worker runs the whole module: one Verilator build of the bare top for the five benches: on two
# workers one of them waited ~30 s for the other's build.
pytestmark = pytest.mark.xdist_group("cocotb-accelerator")

BENCHES = Path(__file__).parent / "cocotb_benches"
TESTS = ["register_access", "dma_bursts", "interrupts", "error_causes", "counter_semantics"]


@pytest.fixture(scope="module")
def tiny_build():
    return build_accelerator(Config.preset("tiny"))


@pytest.mark.parametrize("testcase", TESTS)
def test_accelerator_bench(tiny_build, testcase, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHES))
    for name, value in verilator_env().items():
        if name in ("PATH", "VERILATOR_ROOT"):
            monkeypatch.setenv(name, value)
    runner = get_runner("verilator")
    log_path = tmp_path / "sim.log"
    try:
        results = runner.test(
            test_module="accelerator_bench", hdl_toplevel=tiny_build.top, hdl_toplevel_lang="verilog",
            build_dir=tiny_build.directory, test_dir=tmp_path, test_filter=rf"\.{testcase}($|/)", seed=1234,
            extra_env={"BRAZE_CONFIG": Config.preset("tiny").to_json(), "COCOTB_LOG_LEVEL": "WARNING",
                       # cocotbext-axi 0.1.28 still uses APIs cocotb 2 deprecates; it works.
                       "PYTHONWARNINGS": "ignore::DeprecationWarning",
                       # the cached executable may come from another environment (see library_env)
                       **tiny_build.library_env()},
            log_file=log_path,
        )
    except SystemExit:      # the runner exits when a cocotb test fails
        pytest.fail(f"cocotb bench {testcase} failed:\n{_failures(log_path)}")
    total, failed = get_results(results)
    assert total >= 1, f"no cocotb test ran:\n{_failures(log_path)}"
    assert failed == 0, f"{failed} of {total} cocotb tests failed:\n{_failures(log_path)}"


def _failures(log_path: Path) -> str:
    """The simulator log without cocotb's start-up chatter."""
    if not log_path.exists():
        return "(no simulator log)"
    lines = [line for line in log_path.read_text().splitlines() if " INFO " not in line]
    return "\n".join(lines)[-6000:]
