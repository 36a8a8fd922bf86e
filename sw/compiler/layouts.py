"""Convolution layout choice by the cost model in use.

:func:`~braze.sw.compiler.kernels.conv2d` builds a convolution's A operand in one of three layouts
(row-major M tiles, pixel-major tiles of whole images, or a resident input with the taps taken from
the scratchpad) and, unless told, keeps the one the ISA timing model prices fastest.  The timing model
assumes external memory never stalls, yet the layouts differ most in how they use the memory: the
row-major one re-reads the input once per tap in many short LOADs, the resident one reads each
pixel once.  Under backpressure the cheapest layout on the timing model need not be the cheapest on
the hardware.

:func:`choose_conv_layouts` is the pass that asks the cost model in use: for every convolution node
it builds each layout the kernel library accepts for it (through the kernel cache), prices them with
the cost model, and forces the cheapest on the node (its ``conv_layout`` attribute, which lowering
passes to ``conv2d(layout=...)``).  Where the tiling pass forced a tiling on the node, each layout
comes with that tiling and with the library's own (the resident layout takes no forced tiling, so
the tiling pass, which prices tilings in the library's layout, never saw it); a candidate of the
library's tiling that wins drops the forced one.  Under the
timing model the pass changes nothing (the library already chose by it) and is skipped.  For the
cost models of :data:`~braze.sw.compiler.tiling.SCREENED_BY_TIMING_MODEL` (the learned model, whose
features cost about as much as a kernel build) only the layouts within that factor of the timing
model's fewest cycles are priced.  Each choice is a :class:`LayoutDecision`.

Measured (``benchmarks/hpm_plans.py``, the shipped learned model, three repeats of each plan under the
same recorded stall seeds): the digits CNN at batch 16 runs conv1 (on default conv2 too) with the
resident input, 10.6% and 15.7% fewer RTL cycles than the analytic plan at backpressure 0.3 and 0.4
on default, 9.8% and 12.1% on large; at batch 64 both models keep the library's layouts.
"""

from __future__ import annotations

import dataclasses

from braze.isa import Config

from .cache import KernelCache, default_cache
from .cost import Cost, CostModel, TimingCostModel, check_objective
from .ir import Graph
from .kernels import Kernel
from .lower import node_kernel, plan_node
from .tiling import SCREENED_BY_TIMING_MODEL

__all__ = ["CONV_LAYOUTS", "LayoutDecision", "choose_conv_layouts", "conv_layout_of"]

#: The layouts of :func:`~braze.sw.compiler.kernels.conv2d`, in the order it tries them (its ties go
#: to the first).
CONV_LAYOUTS = ("resident", "pixels", "rows")


def conv_layout_of(kernel: Kernel) -> str:
    """The layout a ``conv2d`` kernel was built in (from the marks each layout leaves in its tiling)."""
    if "resident_input" in kernel.tiling:
        return "resident"
    return "pixels" if "pixel_major" in kernel.tiling else "rows"


@dataclasses.dataclass
class LayoutDecision:
    """The layouts priced for one convolution node and the one chosen.

    ``candidates`` are (label, predicted cost) of the layouts priced, a label being the layout and,
    where the node has a forced tiling, `` (library tiling)`` for a candidate without it; ``library``
    is the label of the node's kernel as planned (the layout the library chooses alone: the timing
    model's fastest); ``chosen`` the cost model's; ``screened`` the candidates built but not priced
    (timing-model cycles far above the fewest).
    """

    node: str
    candidates: list[tuple[str, Cost]]
    library: str
    chosen: str
    screened: list[str] = dataclasses.field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.chosen != self.library

    def __str__(self) -> str:
        costs = dict(self.candidates)
        if not self.changed:
            return f"layout {self.node}: keeps {self.library} ({costs[self.library].describe()}; " \
                   f"{len(self.candidates)} layouts priced)"
        return (f"layout {self.node}: {self.chosen} ({costs[self.chosen].describe()}) instead of "
                f"{self.library} ({costs[self.library].describe()})")


def choose_conv_layouts(graph: Graph, config: Config, *, cost_model: CostModel,
                        cache: KernelCache | None = None, objective: str = "cycles"
                        ) -> tuple[Graph, list[LayoutDecision]]:
    """Force, on every convolution node with more than one layout, the one ``cost_model`` prices
    cheapest in ``objective``.  ``graph`` needs static shapes.  Returns the graph (a new one if any
    layout was forced) and a decision per node with a choice."""
    check_objective(objective)
    if type(cost_model) is TimingCostModel:
        return graph, []            # the library's own choice is the timing model's
    cache = cache if cache is not None else default_cache()
    factor = SCREENED_BY_TIMING_MODEL.get(getattr(cost_model, "name", "")) if objective == "cycles" else None
    decisions: list[LayoutDecision] = []
    forced = {}
    for node in graph.nodes:
        if node.attrs.get("conv_layout") is not None:
            continue
        plan = plan_node(graph, node)
        if isinstance(plan, str) or plan.recipe.kind != "conv2d":
            continue
        planned = node_kernel(graph, node, config, cache)
        if planned is None:
            continue
        tiled = node.attrs.get("tiling") is not None
        # label -> (the node's attributes for it, its kernel); the node as planned first.
        library = conv_layout_of(planned[1])
        kernels: dict[str, tuple[dict, Kernel]] = {library: ({}, planned[1])}
        for layout in CONV_LAYOUTS:
            for own_tiling in (False, True) if tiled else (False,):
                label = layout + (" (library tiling)" if own_tiling else "")
                if label in kernels:
                    continue
                attrs = {"conv_layout": layout, **({"tiling": None} if own_tiling else {})}
                built = node_kernel(graph, node.with_attrs(**attrs), config, cache)
                if built is not None:        # None: this layout does not fit the convolution
                    kernels[label] = (attrs, built[1])
        if len(kernels) < 2:
            continue
        fewest = min(kernel.predicted_cycles for _, kernel in kernels.values())
        priced = {label: kernel for label, (_, kernel) in kernels.items()
                  if label == library or factor is None or kernel.predicted_cycles <= factor * fewest}
        costs = cost_model.predict_candidates(list(priced.values()), config, energy=objective != "cycles")
        candidates = list(zip(priced, costs, strict=True))
        chosen, _ = min(candidates, key=lambda pair: pair[1].key(objective))
        decisions.append(LayoutDecision(node.name, candidates, library, chosen,
                                        [label for label in kernels if label not in priced]))
        if chosen != library:
            forced[node.name] = node.with_attrs(**kernels[chosen][0])
    if forced:
        graph = graph.edit(substitute=forced)
    return graph, decisions
