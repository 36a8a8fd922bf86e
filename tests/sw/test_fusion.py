"""The fusion engine: per-operator form, opportunities, candidates priced by a cost model, threshold."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from onnx_models import conv_model, make_model

from braze.isa import Config
from braze.sw.compiler.cache import KernelCache
from braze.sw.compiler.cost import Cost, CostModel, TimingCostModel
from braze.sw.compiler.frontend import evaluate, load_onnx
from braze.sw.compiler.fusion import DEFAULT_THRESHOLD, find_opportunities, fuse, split_activations
from braze.sw.compiler.kernels import gemm
from braze.sw.compiler.quantize import quantize
from braze.sw.compiler.validate import validate
from braze.sw.runtime.session import _with_shapes

TINY = Config.preset("tiny")


@pytest.fixture(scope="module")
def quantized():
    rng = np.random.default_rng(0)
    graph = quantize(load_onnx(conv_model(1)), [{"x": rng.normal(size=(2, 1, 8, 8)).astype(np.float32)}])
    return graph, rng.normal(size=(2, 1, 8, 8)).astype(np.float32)


def _same_function(a, b, x) -> bool:
    return np.array_equal(evaluate(a, {"x": x})["y"], evaluate(b, {"x": x})["y"])


def test_split_activations_is_exact_and_valid(quantized):
    graph, x = quantized
    split = split_activations(graph)
    assert validate(split) is split
    matrix = [n for n in split.operators() if n.op_type in ("QConv", "QMatMul")]
    assert all(n.attrs["act"] == "none" for n in matrix)
    assert len([n for n in split.operators() if n.op_type == "Clip"]) == 2
    assert _same_function(graph, split, x)
    assert split_activations(split) is split          # already per-operator


def test_opportunities_and_decisions_by_the_timing_model(quantized):
    graph, x = quantized
    split = split_activations(graph)
    found = find_opportunities(split)
    assert [(o.kind, o.nodes) for o in found] == [("epilogue", ("conv1_q", "conv1_q_act")),
                                                   ("pool", ("conv1_q_act", "pool1_q")),
                                                   ("epilogue", ("conv2_q", "conv2_q_act"))]
    cache = KernelCache(disk=False)
    fused, decisions = fuse(graph, TINY, cache=cache)
    assert validate(fused) is fused
    assert _same_function(graph, fused, x)
    # Once the activation is in conv1's epilogue, the pool opportunity after it is gone; the pooling can
    # move into the convolution's kernel instead (conv_pool).
    assert [d.opportunity.kind for d in decisions] == ["epilogue", "conv_pool", "epilogue"]
    for decision in decisions:
        costs = dict(decision.candidates)
        if decision.opportunity.kind == "conv_pool":
            # The unpooled output never leaves the chip; whether that pays is the cost model's to say.  The
            # fused kernel is priced at forced tilings too (the tiling pass retiles it).
            assert list(costs)[:2] == ["separate", "fused"]
            assert all(name.startswith("fused, tiling") for name in list(costs)[2:])
            assert all(costs[name].bytes < costs["separate"].bytes for name in list(costs)[1:])
            best = min(list(costs)[1:], key=lambda name: (costs[name].cycles, costs[name].bytes))
            cheaper = best if costs[best].cycles <= costs["separate"].cycles * (1 - DEFAULT_THRESHOLD) \
                else "separate"
            assert decision.chosen == cheaper
            continue
        # Candidates: two kernels, the fused kernel as the library tiles it, and forced tilings of it.
        assert list(costs)[:2] == ["separate", "fused"] and len(costs) >= 3
        assert all(name.startswith("fused, tiling") for name in list(costs)[2:])
        assert costs["fused"].cycles < costs["separate"].cycles
        assert costs["fused"].bytes < costs["separate"].bytes
        best = min(costs, key=lambda name: (costs[name].cycles, costs[name].bytes))
        assert decision.chosen == best and decision.chosen.startswith("fused")
        assert decision.gain == pytest.approx(1 - costs[best].cycles / costs["separate"].cycles)
    pool_decision = decisions[1]
    assert [(o.kind, o.nodes) for o in find_opportunities(fused)] == (
        [("conv_pool", pool_decision.opportunity.nodes)] if pool_decision.chosen == "separate" else [])
    fused_ops = [n.attrs.get("fused_ops") for n in fused.operators() if n.op_type == "QConv"]
    assert fused_ops == [("conv1_q", "conv1_q_act"), ("conv2_q", "conv2_q_act")]


def test_threshold_and_pluggable_cost_model(quantized):
    graph, _ = quantized
    cache = KernelCache(disk=False)
    unfused, decisions = fuse(graph, TINY, threshold=0.99, cache=cache, bytes_tie_break=None)
    assert [(d.opportunity.kind, d.chosen) for d in decisions] == [
        ("epilogue", "separate"), ("pool", "separate"), ("epilogue", "separate")]
    assert len([n for n in unfused.operators() if n.op_type == "Clip"]) == 2

    class KernelCount(CostModel):
        """Prefers more, smaller kernels: every kernel costs -1 cycle (a model that disagrees)."""

        def predict_kernel(self, kernel, config):
            return Cost(-1, 0)

    _, decisions = fuse(graph, TINY, cost_model=KernelCount(), cache=cache)
    assert [d.chosen for d in decisions] == ["separate"] * 3
    with pytest.raises(ValueError, match="threshold"):
        fuse(graph, TINY, threshold=1.5)
    with pytest.raises(ValueError, match="bytes_tie_break"):
        fuse(graph, TINY, bytes_tie_break=0.0)
    # The bytes tie-break takes a no-slower fused candidate moving >= 25% fewer bytes under any threshold.
    _, decisions = fuse(graph, TINY, threshold=0.99, cache=cache)
    for decision in decisions:
        costs = dict(decision.candidates)
        base = costs["separate"]
        frugal = [name for name, cost in decision.candidates if name != "separate"
                  and cost.cycles <= base.cycles and cost.bytes <= 0.75 * base.bytes]
        assert (decision.chosen != "separate") == bool(frugal) == decision.by_bytes
    assert any(decision.by_bytes for decision in decisions)


def test_timing_cost_model_reads_the_kernel_prediction():
    kernel = gemm(TINY, 8, 8, 8, bias=True)
    cost = TimingCostModel().predict(kernel, TINY)
    assert cost.cycles == kernel.predicted_cycles
    assert cost.bytes == sum(op.nbytes for op in kernel.operands.values() if op.role != "counters")
    assert TimingCostModel().predict([kernel, kernel], TINY) == cost + cost
    with pytest.raises(ValueError, match="config"):
        TimingCostModel().predict(kernel, Config.preset("default"))


def _clip_pool_graph(chain: bool):
    """QuantizeLinear -> Clip (int8) -> [Clip ->] MaxPool -> DequantizeLinear."""
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="quant"),
             helper.make_node("Clip", ["q", "lo", "hi"], ["c"], name="clip1")]
    last = "c"
    if chain:
        nodes.append(helper.make_node("Clip", ["c", "lo2", "hi2"], ["c2"], name="clip2"))
        last = "c2"
    nodes += [helper.make_node("MaxPool", [last], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
              helper.make_node("DequantizeLinear", ["p", "s", "zp"], ["y"], name="dequant")]
    inits = [("s", np.float32(0.05)), ("zp", np.int8(3)), ("lo", np.int8(-20)), ("hi", np.int8(90)),
             ("lo2", np.int8(-50)), ("hi2", np.int8(40))]
    model = make_model(nodes, [("x", np.float32, [1, 8, 8, 8])], [("y", np.float32, [1, 8, 4, 4])], inits)
    graph = load_onnx(model)
    return _with_shapes(graph, {"x": (1, 8, 8, 8)}, {"x": "float32"})


def test_pool_after_activation_and_elementwise_chains_are_exact():
    rng = np.random.default_rng(3)
    x = rng.normal(0, 3, size=(1, 8, 8, 8)).astype(np.float32)
    cache = KernelCache(disk=False)
    for chain in (False, True):
        graph = _clip_pool_graph(chain)
        kinds = [o.kind for o in find_opportunities(graph)]
        assert kinds == (["chain", "pool"] if chain else ["pool"])
        fused, decisions = fuse(graph, TINY, threshold=0.0, cache=cache)
        assert validate(fused) is fused
        assert _same_function(graph, fused, x)
        for decision in decisions:
            costs = dict(decision.candidates)
            best = min(costs, key=lambda name: (costs[name].cycles, costs[name].bytes))
            assert decision.chosen == best
        assert len([n for n in fused.operators() if n.op_type == "Clip"]) == 1
        if chain:
            assert (decisions[0].opportunity.kind, decisions[0].chosen) == ("chain", "merged")
