"""The runtime: device checks, repeated runs, report totals."""

from __future__ import annotations

import numpy as np
import pytest
from onnx_models import conv_model

from braze.isa import Config
from braze.sim.device import GoldenDevice, open_device
from braze.sw.compiler.cache import KernelCache
from braze.sw.runtime import runtime as runtime_module
from braze.sw.runtime.runtime import Runtime
from braze.sw.runtime.session import InferenceSession

#: Counters that are a function of the program alone (braze.isa.counters marks them exact).
EXACT = ("macs", "dma_read_bytes", "dma_write_bytes", "insn_matmul", "insn_load", "insn_store")


@pytest.fixture(scope="module")
def session():
    rng = np.random.default_rng(5)
    return InferenceSession(conv_model(6), config="tiny",
                            calibration=rng.normal(size=(2, 1, 8, 8)).astype(np.float32),
                            cache=KernelCache(disk=False))


def test_repeated_runs_are_deterministic(session):
    x = np.random.default_rng(6).normal(size=(2, 1, 8, 8)).astype(np.float32)
    (first,) = session.run(None, {"x": x})
    rows = [{name: row.counters[name] for name in EXACT} for row in session.report().kernels]
    (second,) = session.run(None, {"x": x})
    assert np.array_equal(first, second)
    assert rows == [{name: row.counters[name] for name in EXACT} for row in session.report().kernels]
    other = np.random.default_rng(7).normal(size=(2, 1, 8, 8)).astype(np.float32)
    (third,) = session.run(None, {"x": other})
    assert not np.array_equal(first, third)


def test_report_totals_add_up(session):
    session.run(None, {"x": np.zeros((2, 1, 8, 8), np.float32)})
    report = session.report()
    summary = report.to_dict()
    assert summary["total_cycles"] == sum(r.cycles for r in report.kernels)
    assert summary["dma_bytes"] == sum(r.dma_read_bytes + r.dma_write_bytes for r in report.kernels)
    assert summary["total_macs"] == sum(k.macs for k in session.kernels.values())
    # Kernels of one device run: the run's cycles cover every kernel snapshot in it.
    assert report.device_cycles >= report.total_cycles
    assert report.cpu_ops and all(name in session.compiled.placement for name in report.cpu_ops)


def test_runtime_refuses_a_device_of_another_config(session):
    with open_device("golden", Config.preset("default")) as device, pytest.raises(ValueError, match="config"):
        Runtime(session.compiled, device)


def test_a_device_that_lost_its_memory_is_loaded_again(session):
    """A replaced simulator starts with cleared memory; the next run must reload, not read zeros."""
    x = np.random.default_rng(8).normal(size=(2, 1, 8, 8)).astype(np.float32)
    (expected,) = session.run(None, {"x": x})
    device = session.device
    device.write(0, bytes(device.memory_size))      # what a replaced simulator holds
    device.memory_generation += 1
    (again,) = session.run(None, {"x": x})
    assert np.array_equal(again, expected)


def test_session_survives_a_killed_simulator():
    import os
    import signal

    from braze.sim.verilator_device import SimulatorError

    rng = np.random.default_rng(9)
    sess = InferenceSession(conv_model(6), device="verilator", config="tiny",
                            calibration=rng.normal(size=(2, 1, 8, 8)).astype(np.float32),
                            cache=KernelCache(disk=False))
    try:
        x = rng.normal(size=(2, 1, 8, 8)).astype(np.float32)
        (expected,) = sess.run(None, {"x": x})
        os.kill(sess.device.pid, signal.SIGKILL)
        with pytest.raises(SimulatorError, match="fresh simulator"):
            sess.run(None, {"x": x})
        (again,) = sess.run(None, {"x": x})
        assert np.array_equal(again, expected)
        assert sess.device.memory_generation == 1
    finally:
        sess.close()


def test_every_run_gets_a_cycle_limit_from_its_prediction(session, monkeypatch):
    seen = []
    original = GoldenDevice.run

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("cycle_limit"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GoldenDevice, "run", spy)
    session.run(None, {"x": np.zeros((2, 1, 8, 8), np.float32)})
    segments = session.compiled.segments
    assert seen == [runtime_module.watchdog_cycle_limit(sum(s.kernel.predicted_cycles for s in segment.steps))
                    for segment in segments]
    assert all(limit > 4 * sum(s.kernel.predicted_cycles for s in segment.steps)
               for limit, segment in zip(seen, segments, strict=True))


def test_a_run_over_its_cycle_limit_is_an_error_naming_the_kernel(session, monkeypatch):
    x = np.random.default_rng(10).normal(size=(2, 1, 8, 8)).astype(np.float32)
    (expected,) = session.run(None, {"x": x})
    # The segment with the most kernels gets a limit halfway through its last kernel's predicted cycles.
    segment = max(session.compiled.segments, key=lambda s: len(s.steps))
    predicted = [step.kernel.predicted_cycles for step in segment.steps]
    limit = sum(predicted[:-1]) + predicted[-1] // 2
    original = runtime_module.watchdog_cycle_limit

    def shrunk(cycles, stall=0.0):
        return limit if cycles == sum(predicted) else original(cycles, stall)

    monkeypatch.setattr(runtime_module, "watchdog_cycle_limit", shrunk)
    with pytest.raises(runtime_module.KernelTimeout) as caught:
        session.run(None, {"x": x})
    error = caught.value
    # The kernel is the one whose instructions hold the pc where the device stopped.
    index = (error.pc - segment.program.addr) // 16
    sizes = np.cumsum([len(step.kernel.instructions) for step in segment.steps])
    named = segment.steps[min(int(np.searchsorted(sizes, index, side="right")), len(sizes) - 1)]
    assert error.kernel == named.name and error.cycle_limit == limit
    assert f"kernel {named.name!r}" in str(error) and "cycle limit" in str(error)
    monkeypatch.undo()
    (again,) = session.run(None, {"x": x})
    assert np.array_equal(again, expected)
