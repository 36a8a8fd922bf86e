"""Compile time: candidate kernels shared within a process, and later input shapes specialising the first
shape's plan (fusion decisions replayed, tilings carried over) with outputs still bit-exact."""

from __future__ import annotations

import numpy as np
import pytest

from braze.isa import Config
from braze.sw.compiler import kernels as kernel_lib
from braze.sw.compiler.cache import KernelCache
from braze.sw.compiler.frontend import evaluate
from braze.sw.compiler.fusion import fuse
from braze.sw.compiler.kernels import matmul
from braze.sw.runtime.bench import builtin_models
from braze.sw.runtime.session import InferenceSession, _with_shapes

DEFAULT = Config.preset("default")


def test_a_candidate_kernel_is_generated_once_and_handed_out_as_copies():
    shape = (2, 3, 8, 8, 8, 3, 3, 1, 1)
    first = kernel_lib.conv2d(DEFAULT, *shape, bias=True, requant=True, act="relu")
    fields = kernel_lib.Tiling.__dataclass_fields__
    tiling = kernel_lib.Tiling(**{name: first.tiling[name] for name in fields})
    again = kernel_lib.conv2d(DEFAULT, *shape, bias=True, requant=True, act="relu", tiling=tiling)
    assert again.instructions == first.instructions and again.predicted_cycles == first.predicted_cycles
    assert again.instructions is not first.instructions and again.tiling is not first.tiling
    again.instructions.pop()
    again.tiling["m"] = -1
    matmul._GENERATED.clear()
    fresh = kernel_lib.conv2d(DEFAULT, *shape, bias=True, requant=True, act="relu", tiling=tiling)
    assert fresh.instructions == first.instructions and fresh.tiling == first.tiling
    # Another epilogue is another kernel, not a stale entry.
    other = kernel_lib.conv2d(DEFAULT, *shape, bias=True, requant=True, act="none", tiling=tiling)
    assert other.instructions != first.instructions


@pytest.fixture(scope="module")
def cnn():
    model, x = builtin_models(batch=12)["cnn"]
    return model, x


def _session(model, x, **options) -> InferenceSession:
    return InferenceSession(model, device="golden", config=DEFAULT, calibration=x,
                            cache=KernelCache(disk=False), cost_model="analytic", record=False, **options)


def test_a_second_batch_size_specialises_the_first_plan_and_stays_exact(cnn):
    model, x = cnn
    session = _session(model, x)
    (y12,) = session.run(None, {"x": x})
    first_fusion = session.fusion_decisions
    first_tiling = {d.node: d for d in session.tiling_decisions}
    assert first_fusion and not any(d.replayed for d in first_fusion)
    assert first_tiling and not any(d.specialised for d in first_tiling.values())

    small = x[:5]
    (y5,) = session.run(None, {"x": small})
    # The same fusions, taken over without pricing.
    assert [(d.opportunity, d.chosen.split(",")[0]) for d in session.fusion_decisions] == \
        [(d.opportunity, d.chosen.split(",")[0]) for d in first_fusion]
    assert all(d.replayed and not d.candidates for d in session.fusion_decisions)
    # Per GEMM/conv, a library tiling for the new shape of the kind chosen at the first one, priced.
    for decision in session.tiling_decisions:
        assert decision.specialised and 1 <= len(decision.candidates) <= 2
        before = first_tiling[decision.node].tiling
        assert (decision.tiling.buffers, decision.tiling.b_resident) == (before.buffers, before.b_resident)
        node = session.graph_after.node(decision.node)
        if decision.layout == "resident":
            # A convolution's resident-input layout (on-chip im2col) excludes a forced tiling: the
            # layout is forced instead (conv2 on the overlapped default preset, pooled on chip).
            assert node.attrs["conv_layout"] == "resident" and node.attrs.get("tiling") is None
        else:
            assert node.attrs["tiling"] == decision.tiling
    assert {d.node for d in session.tiling_decisions} == set(first_tiling)
    # Bit-exact to the frontend evaluator at both sizes.
    graph = session.graph_before
    for feed, y in ((x, y12), (small, y5)):
        expected = evaluate(graph, {"x": feed})[graph.outputs[0]]
        np.testing.assert_array_equal(y, expected)


def test_replayed_fusion_equals_priced_fusion_where_the_decisions_agree(cnn):
    model, x = cnn
    session = _session(model, x, specialise=False)
    graph = session.graph_before
    big = _with_shapes(graph, {"x": (12, 1, 8, 8)}, {"x": "float32"})
    small = _with_shapes(graph, {"x": (5, 1, 8, 8)}, {"x": "float32"})
    cache = KernelCache(disk=False)
    _, decisions = fuse(big, DEFAULT, cache=cache)
    priced, priced_decisions = fuse(small, DEFAULT, cache=cache)
    replayed, replayed_decisions = fuse(small, DEFAULT, cache=cache, replay=decisions)
    assert [d.chosen.split(",")[0] for d in priced_decisions] == [d.chosen for d in replayed_decisions]
    strip = [(n.name, n.op_type, tuple(n.inputs), tuple(n.outputs),
              {k: v for k, v in n.attrs.items() if k != "tiling"}) for n in replayed.nodes]
    assert strip == [(n.name, n.op_type, tuple(n.inputs), tuple(n.outputs),
                      {k: v for k, v in n.attrs.items() if k != "tiling"}) for n in priced.nodes]


def test_specialise_false_prices_every_shape_afresh(cnn):
    model, x = cnn
    session = _session(model, x, specialise=False)
    session.run(None, {"x": x})
    session.run(None, {"x": x[:5]})
    assert session.fusion_decisions and not any(d.replayed for d in session.fusion_decisions)
    assert not any(d.specialised for d in session.tiling_decisions)
    fresh = _session(model, x, specialise=False)
    fresh.run(None, {"x": x[:5]})
    assert [str(d) for d in fresh.tiling_decisions] == [str(d) for d in session.tiling_decisions]
