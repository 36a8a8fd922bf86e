"""The lowering emits counted loops by default (issue 13): same outputs, shorter programs."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from braze.isa import Opcode
from braze.sw.compiler import models
from braze.sw.compiler.cache import KernelCache
from braze.sw.compiler.kernels.loops import expand_loops
from braze.sw.compiler.lower import relocate
from braze.sw.runtime.resident import ResidentRuntime
from braze.sw.runtime.session import InferenceSession

_CONTROL = (Opcode.SCALAR, Opcode.BRANCH)


@functools.cache
def _cnn(tmp_dir: str):
    data = models.load_digits_split()
    model, _ = models.train_cnn(data, epochs=1, seed=0)
    path = model.save(f"{tmp_dir}/cnn.onnx")
    return path, models.calibration_set(model, data, samples=32), model.inputs(data.x_val[:8])


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    return _cnn(str(tmp_path_factory.mktemp("lowered_loops")))


def _session(cnn, cache, **options):
    path, calibration, _ = cnn
    # On tiny the CNN's convolutions are many small tiles: loops pay (on default too few repeat).
    return InferenceSession(path, device="golden", config="tiny", calibration=calibration,
                            cost_model="analytic", cache=cache, record=False, **options)


def _program_bytes(session) -> int:
    return sum(len(segment.binary) for segment in session.compiled.segments)


def test_loops_by_default_run_the_straight_line_programs_instructions(cnn, tmp_path):
    _, _, x = cnn
    cache = KernelCache(tmp_path / "kernels")
    plain, looped = _session(cnn, cache, loops=False), _session(cnn, cache)
    name = plain.get_inputs()[0].name
    expected = plain.run(None, {name: x})[0]
    np.testing.assert_array_equal(looped.run(None, {name: x})[0], expected)
    assert _program_bytes(looped) < _program_bytes(plain)
    rolled = 0
    for step, twin in zip(looped.compiled.steps, plain.compiled.steps, strict=True):
        if not hasattr(step, "kernel"):
            continue
        assert not any(insn.opcode in _CONTROL for insn in twin.kernel.instructions)
        rolled += any(insn.opcode is Opcode.BRANCH for insn in step.kernel.instructions)
        # Placed where the lowering put them, the units receive exactly the straight-line instructions.
        units = [insn for insn, _ in expand_loops(step.placed.instructions) if insn.opcode not in _CONTROL]
        assert units == relocate(twin.kernel, step.addrs).instructions
        assert step.kernel.predicted_cycles <= twin.kernel.predicted_cycles
        assert step.kernel.events == twin.kernel.events          # the exact counters of the same work
    assert rolled
    # The reference model runs the same work: MACs and external bytes per kernel are the twin's.
    for row, twin in zip(looped.report().kernels, plain.report().kernels, strict=True):
        assert (row.macs, row.dma_read_bytes, row.dma_write_bytes) == (twin.macs, twin.dma_read_bytes,
                                                                       twin.dma_write_bytes)
    # The kernel cache keys the looped kernels apart, and a new session reads them back from disk.
    again = _session(cnn, KernelCache(tmp_path / "kernels"))
    np.testing.assert_array_equal(again.run(None, {name: x})[0], expected)
    assert again.cache.misses == 0 and _program_bytes(again) == _program_bytes(looped)


def test_resident_weights_unroll_the_loops():
    from onnx_models import conv_model

    # At batch 16 on default conv2's kernel rolls (at 4, on the overlapped default, none is priced
    # faster rolled), and all fit side by side.
    model = conv_model(batch=16)
    x = np.random.default_rng(0).normal(size=(16, 1, 8, 8)).astype(np.float32)
    options = dict(device="golden", calibration=x, cost_model="analytic", cache=KernelCache(disk=False),
                   record=False)
    expected = InferenceSession(model, loops=False, **options).run(None, {"x": x})[0]
    session = InferenceSession(model, resident_weights=True, **options)
    assert any(insn.opcode is Opcode.BRANCH for kernel in session.compiled.kernels.values()
               for insn in kernel.instructions)
    reads = []
    for _ in range(2):
        np.testing.assert_array_equal(session.run(None, {"x": x})[0], expected)
        runtime = session._current[3]
        assert isinstance(runtime, ResidentRuntime) and runtime.plan is not None, runtime.reason
        reads.append(sum(row.dma_read_bytes for row in session.report().kernels))
    assert runtime.last_run_warm and reads[1] < reads[0]
