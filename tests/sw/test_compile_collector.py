"""Compiling runs with Python's cyclic garbage collector paused, and leaves it as it found it."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from braze.isa import Config
from braze.sw.compiler.cache import KernelCache
from braze.sw.compiler.cost import TimingCostModel
from braze.sw.runtime.bench import builtin_models
from braze.sw.runtime.session import InferenceSession

DEFAULT = Config.preset("default")


class _Watching(TimingCostModel):
    """The timing model, noting whether the collector was on whenever it priced something."""

    def __init__(self):
        self.collector_states: set[bool] = set()

    def predict_kernel(self, kernel, config):
        self.collector_states.add(gc.isenabled())
        return super().predict_kernel(kernel, config)


@pytest.mark.parametrize("enabled_before", [True, False])
def test_the_collector_is_paused_while_compiling_and_restored(enabled_before):
    model, x = builtin_models(batch=4)["mlp"]
    watching = _Watching()
    was = gc.isenabled()
    try:
        (gc.enable if enabled_before else gc.disable)()
        session = InferenceSession(model, device="golden", config=DEFAULT, calibration=x,
                                   cache=KernelCache(disk=False), cost_model=watching, record=False)
        name = session.get_inputs()[0].name
        session.compile_for({name: x.shape})
        assert gc.isenabled() is enabled_before
        assert watching.collector_states == {False}
        (out,) = session.run(None, {name: x})           # compiled code still runs, collector as before
        assert gc.isenabled() is enabled_before
        assert np.asarray(out).shape[0] == x.shape[0]
    finally:
        (gc.enable if was else gc.disable)()


def test_the_streams_of_candidates_ruled_out_are_freed_without_the_collector(monkeypatch):
    # A candidate ruled out by its lower bound raises CandidatePruned from the frame that built its
    # streams; an exception kept with its traceback (by the tiling pass, by conv2d's forms, by the kernel
    # cache) holds those frames in a reference cycle, so only the cyclic collector would free them.
    from onnx_models import conv_model

    from braze.sw.compiler.frontend import load_onnx
    from braze.sw.compiler.kernels import common, matmul
    from braze.sw.compiler.quantize import quantize
    from braze.sw.compiler.tiling import choose_tilings
    from braze.sw.runtime.session import _with_shapes

    monkeypatch.setattr(matmul, "_GENERATED", {})
    monkeypatch.setattr(matmul, "_BOUNDS", {})
    x = np.random.default_rng(0).normal(size=(12, 1, 8, 8)).astype(np.float32)
    graph = _with_shapes(quantize(load_onnx(conv_model(1, batch=12)), [{"x": x}]), {"x": x.shape},
                         {"x": "float32"})
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        _, decisions = choose_tilings(graph, DEFAULT, cost_model=TimingCostModel(),
                                      cache=KernelCache(disk=False))
        assert any(decision.pruned for decision in decisions)       # candidates were ruled out
        assert not any(type(obj) is common._Op for obj in gc.get_objects())
    finally:
        (gc.enable if was else gc.disable)()
