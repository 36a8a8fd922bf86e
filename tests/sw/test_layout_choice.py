"""Convolution layouts chosen by the cost model in use (sw/compiler/layouts.py)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from onnx_models import conv_model

from braze.isa import Config
from braze.sw.compiler.cache import KernelCache
from braze.sw.compiler.cost import Cost, CostModel, TimingCostModel
from braze.sw.compiler.frontend import load_onnx
from braze.sw.compiler.fusion import fuse
from braze.sw.compiler.layouts import choose_conv_layouts, conv_layout_of
from braze.sw.compiler.lower import node_kernel
from braze.sw.compiler.quantize import quantize
from braze.sw.runtime.session import InferenceSession, _with_shapes

TINY = Config.preset("tiny")
BATCH = 16          # images enough that the pixel-major layout is a candidate for both convolutions


class PreferLayout(CostModel):
    """Prices one layout far below the others (else by the timing model's cycles)."""

    name = "prefer-layout"

    def __init__(self, layout: str):
        self.layout = layout

    def predict_kernel(self, kernel, config):
        penalty = 0 if kernel.name != "conv2d" or conv_layout_of(kernel) == self.layout else 10**7
        return Cost(kernel.predicted_cycles + penalty, 0)


@pytest.fixture(scope="module")
def model_and_graph():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH, 1, 8, 8)).astype(np.float32)
    onnx_model = conv_model(1, batch=BATCH)
    graph = quantize(load_onnx(onnx_model), [{"x": x}])
    static = _with_shapes(graph, {"x": x.shape}, {"x": "float32"})
    fused, _ = fuse(static, TINY, cost_model=TimingCostModel(), cache=KernelCache(disk=False))
    return onnx_model, fused, x


def test_the_timing_model_keeps_the_librarys_layouts(model_and_graph):
    _, fused, _ = model_and_graph
    graph, decisions = choose_conv_layouts(fused, TINY, cost_model=TimingCostModel(),
                                           cache=KernelCache(disk=False))
    assert graph is fused and decisions == []


def test_another_cost_model_forces_its_cheapest_layout_and_lowering_builds_it(model_and_graph):
    _, fused, _ = model_and_graph
    cache = KernelCache(disk=False)
    graph, decisions = choose_conv_layouts(fused, TINY, cost_model=PreferLayout("pixels"), cache=cache)
    assert decisions
    for decision in decisions:
        # The library's layout is the one the convolution gets unforced; the other is the cost model's.
        library = conv_layout_of(node_kernel(fused, fused.node(decision.node), TINY, cache)[1])
        assert decision.library == library != "pixels"
        assert decision.chosen == "pixels" and decision.changed
        assert {library, "pixels"} <= {layout for layout, _ in decision.candidates}
        node = graph.node(decision.node)
        assert node.attrs["conv_layout"] == "pixels"
        assert conv_layout_of(node_kernel(graph, node, TINY, cache)[1]) == "pixels"
        assert f"instead of {library}" in str(decision)
    # A cost model that agrees with the library forces nothing.
    again, kept = choose_conv_layouts(fused, TINY, cost_model=PreferLayout(decisions[0].library), cache=cache)
    assert kept and not any(d.changed for d in kept) and again is fused


def test_a_session_under_the_chosen_layouts_computes_the_same_outputs(model_and_graph):
    onnx_model, _, x = model_and_graph
    outputs, layouts = [], []
    for cost_model in (TimingCostModel(), PreferLayout("pixels")):
        session = InferenceSession(onnx_model, device="golden", config=TINY, calibration=[{"x": x}],
                                   cost_model=cost_model, record=False)
        outputs.append(session.run(None, {"x": x})[0])
        layouts.append({node.attrs.get("conv_layout") for node in session.graph_after.nodes
                        if node.op_type == "QConv"})
    assert layouts[0] == {None} and "pixels" in layouts[1]
    np.testing.assert_array_equal(outputs[0], outputs[1])


class AvoidTile(CostModel):
    """Prices kernels with one M tile far above the rest."""

    name = "avoid-tile"

    def __init__(self, m: int):
        self.m = m

    def predict_kernel(self, kernel, config):
        return Cost(kernel.predicted_cycles + (10**7 if kernel.tiling.get("m") == self.m else 0), 0)


def test_layouts_with_the_librarys_tiling_compete_with_a_forced_tiling(model_and_graph):
    from braze.sw.compiler import kernels as kernel_lib

    _, fused, _ = model_and_graph
    cache = KernelCache(disk=False)
    _, decisions = choose_conv_layouts(fused, TINY, cost_model=PreferLayout("rows"), cache=cache)
    name = decisions[0].node
    node = fused.node(name)
    library = node_kernel(fused, node, TINY, cache)[1]
    forced = next(t for t in kernel_lib.candidate_tilings(library) if t.m != library.tiling["m"]
                  and node_kernel(fused, node.with_attrs(tiling=t), TINY, cache) is not None)
    graph = fused.edit(substitute={name: node.with_attrs(tiling=forced)})
    chosen_graph, decisions = choose_conv_layouts(graph, TINY, cost_model=AvoidTile(forced.m), cache=cache)
    (decision,) = [d for d in decisions if d.node == name]
    assert decision.chosen.endswith("(library tiling)")
    assert any(not label.endswith("(library tiling)") for label, _ in decision.candidates)
    assert chosen_graph.node(name).attrs.get("tiling") is None
    assert node_kernel(chosen_graph, chosen_graph.node(name), TINY, cache)[1].tiling["m"] != forced.m



def _symbolic_batch(model):
    """The model with a symbolic leading (batch) dimension on its inputs and outputs."""
    model = copy.deepcopy(model)
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_param = "N"
    return model


@pytest.mark.parametrize("preset, prefer, resident_at_second", [
    ("default", "resident", True),     # conv1: the library's layout is not resident, the cost model's is
    ("tiny", "pixels", False),         # the library's is resident for both, the cost model's is not
])
def test_a_second_batch_size_keeps_the_layout_the_cost_model_chose(model_and_graph, preset, prefer,
                                                                    resident_at_second):
    """The layout pass runs at the first input shape only; whether it chose the resident-input layout
    is recorded in the plan's tiling decisions, so specialise_tilings builds (or not) that layout
    again at another batch size, as the cost model chose."""
    onnx_model, _, x = model_and_graph
    onnx_model = _symbolic_batch(onnx_model)
    config = Config.preset(preset)
    session = InferenceSession(onnx_model, device="golden", config=config, calibration=[{"x": x}],
                               cost_model=PreferLayout(prefer), record=False)
    session.run(None, {"x": x})
    moved = {node.name for node in session.graph_after.nodes if node.attrs.get("conv_layout") == prefer}
    assert moved
    assert all((d.layout == "resident") == resident_at_second for d in session.tiling_decisions
               if d.node in moved)
    half = x[: BATCH // 2]
    outputs = session.run(None, {"x": half})[0]
    second = {node.name: node.attrs.get("conv_layout") for node in session.graph_after.nodes}
    assert all((second[name] == "resident") == resident_at_second for name in moved), second
    plain = InferenceSession(onnx_model, device="golden", config=config, calibration=[{"x": x}],
                             cost_model=TimingCostModel(), record=False)
    np.testing.assert_array_equal(outputs, plain.run(None, {"x": half})[0])
