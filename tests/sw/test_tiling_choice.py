"""Tiling chosen by a cost model, candidates priced alike, and energy as an objective."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from onnx_models import conv_model

from braze.isa import Config, Opcode
from braze.isa.model import program_events
from braze.sw.compiler import kernels as kernel_lib
from braze.sw.compiler.cache import KernelCache
from braze.sw.compiler.cost import Cost, CostModel, TimingCostModel
from braze.sw.compiler.energy import kernel_energy_estimate, kernel_energy_pj
from braze.sw.compiler.frontend import evaluate, load_onnx
from braze.sw.compiler.fusion import fuse
from braze.sw.compiler.quantize import quantize
from braze.sw.compiler.tiling import choose_tilings
from braze.sw.hpm.calibrate import random_inputs
from braze.sw.runtime.session import InferenceSession, _with_shapes

TINY = Config.preset("tiny")


class SmallestTileModel(CostModel):
    """Prefers the smallest M tile (the opposite of the timing model's usual choice), else cycles."""

    name = "smallest-tile"

    def predict_kernel(self, kernel, config):
        return Cost(kernel.tiling.get("m", 0) * 10**6 + kernel.predicted_cycles, 0,
                    kernel_energy_estimate(kernel))


@pytest.fixture(scope="module")
def quantized():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 1, 8, 8)).astype(np.float32)
    graph = quantize(load_onnx(conv_model(1)), [{"x": x}])
    return _with_shapes(graph, {"x": x.shape}, {"x": "float32"}), x


def test_candidate_tilings_are_what_the_library_ranks():
    shape = (2, 3, 8, 8, 8, 3, 3, 1, 1)
    kernel = kernel_lib.conv2d(TINY, *shape, bias=True, requant=True, act="relu")
    tilings = kernel_lib.candidate_tilings(kernel)
    fields = dataclasses.fields(kernel_lib.Tiling)
    chosen = kernel_lib.Tiling(**{f.name: kernel.tiling[f.name] for f in fields})
    assert chosen in tilings and len(tilings) > 2
    built = []
    for tiling in tilings:
        try:
            built.append(kernel_lib.conv2d(TINY, *shape, bias=True, requant=True, act="relu", tiling=tiling))
        except kernel_lib.KernelError:
            pass                          # not orderable with tiny's token queues
    # The library keeps the fastest under the timing model among these.
    assert min(k.predicted_cycles for k in built) == kernel.predicted_cycles
    assert kernel_lib.candidate_tilings(kernel_lib.relu(TINY, (4, 8))) == []


def test_under_the_timing_model_each_node_gets_its_fastest_candidate(quantized):
    graph, _ = quantized
    cache = KernelCache(disk=False)
    chosen, decisions = choose_tilings(graph, TINY, cost_model=TimingCostModel(), cache=cache)
    assert len(decisions) == 3                          # two convolutions and the GEMM
    for decision in decisions:
        costs = dict(decision.candidates)
        assert len(costs) + len(decision.pruned) > 1     # the rest ruled out by their lower bounds
        assert costs[decision.chosen].cycles == min(cost.cycles for cost in costs.values())
        assert costs[decision.chosen].cycles <= costs[decision.library].cycles
        assert (chosen.node(decision.node).attrs.get("tiling") is not None) == decision.changed


def test_another_cost_model_forces_its_tiling_and_the_result_stays_exact(quantized):
    graph, x = quantized
    cache = KernelCache(disk=False)
    fused, _ = fuse(graph, TINY, cache=cache)
    chosen, decisions = choose_tilings(fused, TINY, cost_model=SmallestTileModel(), cache=cache)
    assert decisions and any(d.changed for d in decisions)
    for decision in decisions:
        costs = dict(decision.candidates)
        assert costs[decision.chosen].cycles == min(cost.cycles for cost in costs.values())
        forced = chosen.node(decision.node).attrs.get("tiling")
        if decision.changed:
            smallest = min(int(label.split()[0].removeprefix("m=")) for label in costs)
            assert forced is not None and forced.m == smallest
    assert np.array_equal(evaluate(chosen, {"x": x})["y"], evaluate(graph, {"x": x})["y"])
    # Lowered and run, the forced tilings give the model's exact output.
    session = InferenceSession(conv_model(1), device="golden", config=TINY, calibration=x,
                               cost_model=SmallestTileModel(), cache=cache, record=False)
    assert any(d.changed for d in session.tiling_decisions)
    analytic = InferenceSession(conv_model(1), device="golden", config=TINY, calibration=x,
                                cost_model="analytic", cache=cache, record=False)

    def m_tiles(s):
        return sorted(k.tiling["m"] for k in s.kernels.values() if "m" in k.tiling)
    assert sum(m_tiles(session)) < sum(m_tiles(analytic))
    (y,) = session.run(None, {"x": x})
    assert np.array_equal(y, evaluate(session.graph_before, {"x": x})["y"])


def test_program_events_are_the_exact_counters_of_a_run():
    from braze.sim.device import open_device

    kernels = [kernel_lib.conv2d(TINY, 2, 3, 8, 8, 8, 3, 3, 1, 1, bias=True, requant=True, act="relu"),
               kernel_lib.gemm(TINY, 16, 40, 24, residual=True, requant=True),
               kernel_lib.maxpool2d(TINY, 1, 8, 8, 8, 2, 2, 2, 0), kernel_lib.add(TINY, (4, 12, 12, 16))]
    rng = np.random.default_rng(0)
    with open_device("golden", TINY) as device:
        for kernel in kernels:
            counters = kernel_lib.run_kernel(device, kernel, random_inputs(kernel, rng)).counters
            body = [insn for insn in kernel.instructions if insn.opcode is not Opcode.COUNTERS]
            events = program_events(body, TINY)
            assert events and events == {name: counters[name] for name in events}
            assert kernel_energy_estimate(kernel) == pytest.approx(kernel_energy_pj(counters, TINY)["total"])


def test_cost_keys_by_objective():
    fast_hungry, slow_frugal = Cost(100, 10, 5e6), Cost(150, 10, 1e6)
    assert min([fast_hungry, slow_frugal], key=lambda c: c.key("cycles")) is fast_hungry
    assert min([fast_hungry, slow_frugal], key=lambda c: c.key("energy")) is slow_frugal
    assert min([fast_hungry, slow_frugal], key=lambda c: c.key("edp")) is slow_frugal
    with pytest.raises(ValueError, match="objective 'watts'"):
        fast_hungry.key("watts")
    with pytest.raises(ValueError, match="objective"):
        fuse(None, TINY, objective="watts")


def test_energy_objective_minimises_predicted_energy(quantized):
    graph, _ = quantized
    cache = KernelCache(disk=False)
    _, decisions = fuse(graph, TINY, cache=cache, objective="energy")
    assert decisions
    for decision in decisions:
        costs = dict(decision.candidates)
        assert decision.objective == "energy"
        assert all(cost.energy_pj > 0 for cost in costs.values())
        if decision.chosen != "separate":
            assert costs[decision.chosen].energy_pj == min(cost.energy_pj for cost in costs.values())
    # Under the energy objective the timing model's tilings are priced too (energy differs by tiling).
    _, tilings = choose_tilings(graph, TINY, cost_model=TimingCostModel(), cache=cache, objective="energy")
    assert tilings
    for decision in tilings:
        costs = dict(decision.candidates)
        assert costs[decision.chosen].energy_pj == min(cost.energy_pj for cost in costs.values())
