"""Per-size specialisation keeps the resident-input convolution layout, and sees a convolution's GEMM as
the library tiles it (packed taps, dilation, fused pooling)."""

from __future__ import annotations

import numpy as np
import pytest

from braze.isa import Config
from braze.sw.compiler import kernels as kernel_lib
from braze.sw.compiler.cache import KernelCache
from braze.sw.compiler.frontend import evaluate
from braze.sw.compiler.lower import KernelRecipe
from braze.sw.compiler.tiling import _matmul_shape
from braze.sw.runtime.bench import builtin_models
from braze.sw.runtime.session import InferenceSession

DEFAULT = Config.preset("default")

# conv2d recipes (N, C, H, W, K_out, kh, kw, stride, pad) with options: packed taps (few channels, no
# padding), one tap per chunk, dilation, fused pooling.
RECIPES = [
    ((4, 1, 12, 12, 8, 3, 3, 1, 0), dict(bias=True, requant=True, act="relu")),
    ((4, 3, 12, 12, 8, 3, 3, 1, 0), dict(requant=True, pool=2)),
    ((2, 8, 10, 10, 16, 3, 3, 1, 1), dict(bias=True, requant=True)),
    ((2, 1, 14, 14, 8, 3, 3, 1, 0), dict(requant=True, dilation=2)),
    ((3, 12, 9, 9, 12, 5, 5, 2, 2), dict(requant=True)),
]


@pytest.mark.parametrize("args, options", RECIPES)
def test_the_matmul_shape_of_a_convolution_is_the_one_its_kernel_tiles(args, options):
    recipe = KernelRecipe("conv2d", args, tuple(sorted(options.items())))
    kernel = recipe.build(DEFAULT)
    M, K, N, footprint = _matmul_shape(recipe, DEFAULT)
    assert K == kernel.operands["B"].shape[0] and N == args[4]
    # The tilings specialise_tilings weighs are the library's own for this convolution.
    assert kernel_lib.matmul_tilings(DEFAULT, M, K, N, **footprint) == kernel_lib.candidate_tilings(kernel)


def _kernel_of(session: InferenceSession, node: str):
    """The kernel lowered for a GEMM/convolution node (kernels are named k<i>_<kind>_<node>)."""
    return next(kernel for name, kernel in session.kernels.items()
                if name.endswith(node.strip("/").replace("/", "_")))


def test_a_second_batch_size_keeps_the_resident_input_layout_where_the_first_chose_it():
    model, x = builtin_models(batch=64)["cnn"]
    session = InferenceSession(model, device="golden", config=DEFAULT, calibration=x,
                               cache=KernelCache(disk=False), cost_model="analytic", record=False)
    session.run(None, {"x": x})
    first = {d.node: d for d in session.tiling_decisions}
    resident = [node for node, d in first.items() if d.layout == "resident"]
    assert resident            # the first size chose the on-chip im2col layout for a convolution
    for node in resident:
        assert "resident_input" in _kernel_of(session, node).tiling
    small = x[:17]
    (y,) = session.run(None, {"x": small})
    for decision in session.tiling_decisions:
        assert decision.specialised
        costs = dict(decision.candidates)
        assert decision.chosen == min(costs, key=lambda label: costs[label].cycles)
        node = session.graph_after.node(decision.node)
        if decision.node in resident:
            # The resident layout is priced at the new size beside the most alike forced tilings.
            assert any(label.endswith(" resident") for label in costs)
        if decision.layout == "resident":
            assert node.attrs["conv_layout"] == "resident" and node.attrs.get("tiling") is None
        else:
            assert node.attrs["tiling"] == decision.tiling
    kept = [d for d in session.tiling_decisions if d.layout == "resident"]
    assert kept                # and here it is still the cheapest for one of them
    for decision in kept:
        assert _kernel_of(session, decision.node).tiling["resident_input"] >= 1
    graph = session.graph_before
    np.testing.assert_array_equal(y, evaluate(graph, {"x": small})[graph.outputs[0]])
