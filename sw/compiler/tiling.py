"""Tiling choice by a cost model: which of the library's tilings each GEMM and convolution runs with.

The kernel library ranks the tilings of a GEMM or convolution by the ISA timing model and keeps
the fastest it generated (:func:`~braze.sw.compiler.kernels.gemm`) -- within a generation budget,
so for large kernels it may not have tried them all.  Under another cost model -- the learned
hardware performance model, which knows that external memory stalls -- another tiling may be
cheaper still.  :func:`choose_tilings` is the pass that asks: for every GEMM/convolution node it
builds the library's candidates
(:func:`~braze.sw.compiler.kernels.candidate_tilings`, through the kernel cache), prices each with
the cost model, and forces the cheapest on the node (its ``tiling`` attribute, which lowering
passes to the kernel; the fusion engine may have forced one of a few variants already, priced
here among the rest).  Each choice is a :class:`TilingDecision`.

A candidate is generated only as far as it takes to rule it out: its streams are built and merged,
and the merge gives a lower bound on the timing model's cycles
(:meth:`~braze.sw.compiler.kernels.common._Streams.merge_bounded`); one whose bound is above the
fewest cycles predicted for a candidate so far is not scheduled, encoded or cached
(:class:`TilingDecision` ``pruned``).  Under the timing model that leaves every choice as it was; the
learned model prices only the candidates within :data:`SCREENED_BY_TIMING_MODEL` of the timing
model's fewest.

Measured on the digits CNN (batch 64, tiny preset, RTL): the pass under the timing model alone
cuts the CNN's cycles by 15% (the library's budget had stopped before the smaller M tiles of its
two convolutions); the learned model then picks the same tilings there.  Where the two models
disagree (strided and 5x5 convolutions on tiny), the learned model's tilings measure 5-15% faster
(``tests/sw/test_hpm_loop.py``, ``braze bench hpm``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from braze.isa import Config

from . import kernels as kernel_lib
from .cache import KernelCache, default_cache
from .cost import Cost, CostModel, TimingCostModel, check_objective
from .ir import Graph, Node
from .kernels import Kernel, Tiling
from .kernels.common import CandidatePruned, prune_above
from .lower import KernelRecipe, node_kernel, plan_node

__all__ = ["TilingDecision", "choose_tilings", "specialise_tilings", "tiling_label", "MAX_TILING_CANDIDATES",
           "MAX_TILING_INSTRUCTIONS"]

#: Candidates priced per node, in the library's order of promise (each is generated once, then cached).
MAX_TILING_CANDIDATES = 12
#: ... and no more once the candidates generated for a node hold this many instructions: generation
#: time grows with the kernel (a 33k-instruction convolution takes about 2 s per candidate), and the
#: kernels that large are the ones whose tilings differ least (many M tiles of the same shape).
MAX_TILING_INSTRUCTIONS = 60_000


def tiling_label(tiling: Tiling | dict) -> str:
    """A short name for a tiling: ``m=196 ring=36 B=resident x2`` (``pair``, ``B-split``, ``last=4`` with the
    cuts of :attr:`Tiling.first_pair`, :attr:`Tiling.first_b_split` and :attr:`Tiling.last_pieces`)."""
    t = tiling if isinstance(tiling, dict) else dataclasses.asdict(tiling)
    parts = [f"m={t['m']}", f"ring={t['a_slots']}", "B=" + ("resident" if t["b_resident"] else "streamed")]
    if t.get("k_block"):
        parts.append(f"kblock={t['k_block']}x{t['n_group']}")
    if t.get("first_pieces", 1) > 1:
        parts.append(f"pieces={t['first_pieces']}")
    if t.get("first_pair"):
        parts.append("pair")
    if t.get("first_b_split"):
        parts.append("B-split")
    if t.get("last_pieces", 1) > 1:
        parts.append(f"last={t['last_pieces']}")
    parts.append(f"x{t['buffers']}")
    return " ".join(parts)


@dataclasses.dataclass
class TilingDecision:
    """The tilings priced for one node and the one chosen.

    ``candidates`` are (label, predicted cost) in the library's order; ``library`` is the label of
    the library's own choice (the timing model's fastest); ``chosen`` the cost model's.
    """

    node: str
    candidates: list[tuple[str, Cost]]
    library: str
    chosen: str
    objective: str = "cycles"
    #: The chosen tiling itself (what :func:`specialise_tilings` starts from at another input shape).
    tiling: Tiling | None = None
    #: Its number of M tiles.
    tiles: int | None = None
    #: True when the tiling was specialised from another input shape's choice, not priced here.
    specialised: bool = False
    #: Candidates not generated because their lower bound (cycles) showed they could not be chosen:
    #: (label, lower bound).
    pruned: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    #: The chosen kernel's convolution layout when it is the resident-input one (``"resident"``, which a
    #: forced ``tiling`` excludes: :func:`specialise_tilings` forces the layout instead); else None.
    layout: str | None = None

    @property
    def changed(self) -> bool:
        return self.chosen != self.library

    @property
    def gain(self) -> float:
        """Predicted saving against the library's choice, as a fraction of its cost (in the objective)."""
        costs = dict(self.candidates)
        base = costs[self.library].value(self.objective)
        return (base - costs[self.chosen].value(self.objective)) / max(1.0, base)

    def __str__(self) -> str:
        costs = dict(self.candidates)

        def cost(label: str) -> str:
            return costs[label].describe()
        if self.specialised:
            return (f"tiling {self.node}: {self.chosen} ({cost(self.chosen)}; {len(self.candidates)} "
                    "priced), specialised from the tiling chosen at another input shape")
        pruned = f", {len(self.pruned)} ruled out by their lower bound" if self.pruned else ""
        if not self.changed:
            return f"tiling {self.node}: keeps {self.library} ({cost(self.library)}; " \
                   f"{len(self.candidates)} candidates priced{pruned})"
        what = "" if self.objective == "cycles" else f" in {self.objective}"
        return (f"tiling {self.node}: {self.chosen} ({cost(self.chosen)}) instead of {self.library} "
                f"({cost(self.library)}), predicted gain {100 * self.gain:.1f}%{what}")


def choose_tilings(graph: Graph, config: Config, *, cost_model: CostModel, cache: KernelCache | None = None,
                   max_candidates: int = MAX_TILING_CANDIDATES,
                   max_instructions: int = MAX_TILING_INSTRUCTIONS,
                   log: Callable[[TilingDecision], None] | None = None,
                   objective: str = "cycles") -> tuple[Graph, list[TilingDecision]]:
    """Force, on every GEMM/convolution node, the library tiling ``cost_model`` predicts cheapest.

    Each node's candidates are the library's own choice, the tiling the node has (if forced), and
    the first ``max_candidates`` of :func:`~braze.sw.compiler.kernels.candidate_tilings`, as far as
    ``max_instructions`` of generated candidates allow.

    Cheapest in ``objective`` (:data:`~braze.sw.compiler.cost.OBJECTIVES`).

    A node with a ``tiling`` already (the fusion engine's choice among a few variants) has it priced
    among the candidates too.  ``graph`` needs static shapes.  Returns the graph (a new one
    if any tiling changed) and a decision per node priced.
    """
    check_objective(objective)
    cache = cache if cache is not None else default_cache()
    fields = [field.name for field in dataclasses.fields(Tiling)]
    decisions: list[TilingDecision] = []
    forced = {}
    for node in graph.nodes:
        built = node_kernel(graph, node.with_attrs(tiling=None), config, cache)
        if built is None:
            continue
        library_kernel = built[1]
        tilings = kernel_lib.candidate_tilings(library_kernel)
        if not tilings:
            continue
        library_tiling = Tiling(**{name: library_kernel.tiling[name] for name in fields})
        current = node.attrs.get("tiling") or library_tiling
        kernels: dict[Tiling, Kernel] = {library_tiling: library_kernel}
        generated = 0
        # A candidate whose lower bound on the timing model's cycles rules it out is not generated
        # (_pruning_cutoff).  Pruned: (tiling, CandidatePruned).
        fewest = library_kernel.predicted_cycles     # the timing model's fewest cycles so far
        pruned: list[tuple[Tiling, CandidatePruned]] = []
        for tiling in [current, *tilings[:max_candidates]]:
            if generated > max_instructions and tiling is not current:
                break
            if tiling not in kernels and all(tiling != t for t, _ in pruned):
                cutoff = _pruning_cutoff(cost_model, objective, fewest, forced=tiling is current)
                try:
                    with prune_above(cutoff):
                        candidate = node_kernel(graph, node.with_attrs(tiling=tiling), config, cache)
                except CandidatePruned as bound:
                    # Without its traceback, whose frames (this one among them) hold the streams built.
                    pruned.append((tiling, bound.with_traceback(None)))
                    generated += bound.instructions     # it builds: the budget counts it as before
                    continue
                if candidate is not None:      # None: not orderable with this configuration's token queues
                    kernels[tiling] = candidate[1]
                    generated += len(candidate[1].instructions)
                    fewest = min(fewest, candidate[1].predicted_cycles)
        costs = cost_model.predict_candidates(list(kernels.values()), config, energy=objective != "cycles")
        priced = list(zip(kernels, costs, strict=True))
        best, _ = min(priced, key=lambda pair: pair[1].key(objective))
        decision = TilingDecision(node.name, [(tiling_label(t), cost) for t, cost in priced],
                                  tiling_label(library_tiling), tiling_label(best), objective, best,
                                  -(-_matmul_shape(built[0].recipe, config)[0] // best.m),
                                  pruned=[(tiling_label(t), p.lower_bound) for t, p in pruned],
                                  layout="resident" if "resident_input" in kernels[best].tiling else None)
        decisions.append(decision)
        if log is not None:
            log(decision)
        if best != current:
            forced[node.name] = node.with_attrs(tiling=None if best == library_tiling else best)
    if forced:
        graph = graph.edit(substitute=forced)
    return graph, decisions


#: Cost models (by name) whose candidates are screened by the timing model first: only those whose
#: lower bound on the timing model's cycles is under this factor of the fewest cycles the timing model
#: predicts for another candidate are generated and priced (the learned model's features cost as much
#: as generating a kernel).  Not exact, unlike the timing model's own pruning: measured on the digits
#: CNN and MLP (default and large presets, batch 64, 17, 1 and 40), the learned model chooses the same
#: tilings with it as without.
SCREENED_BY_TIMING_MODEL = {"hpm-learned": 1.25}


def _pruning_cutoff(cost_model: CostModel, objective: str, fewest: int, *, forced: bool = False
                    ) -> float | None:
    """The lower bound at which a candidate is not generated (:func:`prune_above`), given the fewest
    cycles the timing model predicts for a candidate generated so far; None: generate it.

    Under the timing model itself, with the objective cycles, a candidate whose bound exceeds the
    fewest cycles is dearer than that one, so the cheapest (the first of the fewest cycles, ties by
    bytes) is the same with or without it: exact.  For the cost models of
    :data:`SCREENED_BY_TIMING_MODEL`, those well above the fewest (not exact; the tiling the fusion
    engine forced, ``forced``, is always priced).  Other cost models and objectives: every candidate.
    """
    if objective != "cycles":
        return None
    if type(cost_model) is TimingCostModel:
        return fewest + 1
    factor = SCREENED_BY_TIMING_MODEL.get(getattr(cost_model, "name", ""))
    return None if factor is None or forced else fewest * factor


def _matmul_shape(recipe: KernelRecipe, config: Config) -> tuple[int, int, int, dict]:
    """(M, K, N, epilogue footprint) of a GEMM or convolution recipe, as its kernel will tile it."""
    options = dict(recipe.options)
    footprint = {"bias": bool(options.get("bias")), "requant": bool(options.get("requant")),
                 "residual": bool(options.get("residual")), "out_int32": options.get("out") == "int32"}
    if recipe.kind == "gemm":
        M, K, N = recipe.args
        return M, K, N, footprint
    n, c, h, w, k_out, kh, kw, stride, pad = recipe.args
    dilation = int(options.get("dilation", 1))
    span_h, span_w = (kh - 1) * dilation + 1, (kw - 1) * dilation + 1
    ho, wo = kernel_lib.conv2d_output_shape(h, w, span_h, span_w, stride, pad)
    pool = int(options.get("pool", 1))
    if pool > 1:           # fused pooling: the pixels of whole windows, M tiles of whole images
        ho, wo = ho // pool * pool, wo // pool * pool
        footprint["align"] = ho * wo
    # K as conv2d lays it out: a K-chunk per tap and channel chunk, or per group of packed taps.
    packed = kernel_lib.taps_per_chunk(config, c, kw, pad, dilation)
    return n * ho * wo, kh * -(-kw // packed) * -(-c // config.rows) * config.rows, k_out, footprint


def _tiling_of(kernel: Kernel) -> Tiling:
    """The :class:`Tiling` fields of a GEMM or convolution kernel's ``tiling`` report."""
    return Tiling(**{field.name: kernel.tiling[field.name] for field in dataclasses.fields(Tiling)})


def _kind(tiling: Tiling) -> tuple:
    return tiling.buffers, tiling.b_resident, tiling.k_block > 0


def _most_alike(tilings: list[Tiling], M: int, previous: TilingDecision) -> tuple[list[Tiling], int]:
    """The library tilings here in order of likeness to the one ``previous`` chose at another shape: of
    the same kind (buffering, B residency, K blocking) first where there is one, the nearest M tile and
    the nearest number of M tiles (how many of those: the second value), then the rest by the nearest
    M tile.  (Measured on the digits CNN from
    batch 64 to 17: neither of the first two alone is the best of the library's tilings for both
    convolutions; the cheaper of the two is.)"""
    same = [t for t in tilings if _kind(t) == _kind(previous.tiling)] or tilings
    by_m = min(same, key=lambda t: abs(t.m - previous.tiling.m))
    by_tiles = min(same, key=lambda t: abs(-(-M // t.m) - previous.tiles))
    rest = sorted(tilings, key=lambda t: (_kind(t) != _kind(previous.tiling), abs(t.m - previous.tiling.m)))
    return list(dict.fromkeys([by_m, by_tiles, *rest])), len({by_m, by_tiles})


def specialise_tilings(graph: Graph, config: Config, previous: Mapping[str, TilingDecision], *,
                       cost_model: CostModel, cache: KernelCache | None = None, objective: str = "cycles"
                       ) -> tuple[Graph, list[TilingDecision]]:
    """Per-size specialisation: force on each GEMM/convolution node the library tiling for its shapes
    here most like the one ``previous`` (decisions by node name, at another input shape) chose
    (:func:`_most_alike`: the two most alike that build, priced by ``cost_model``), generating those
    kernels alone instead of every candidate (:func:`choose_tilings`).  Where ``previous`` chose a
    convolution's resident-input layout (:attr:`TilingDecision.layout`), which a forced tiling excludes,
    that layout's kernel here is priced too, and chosen by forcing the node's ``conv_layout`` instead.
    (Digits CNN, batch 17 after 64, default preset: 11,772 -> 11,569 cycles on the golden model.)
    Nodes not in ``previous``, or none of whose tilings build, keep the library's own choice.
    """
    check_objective(objective)
    cache = cache if cache is not None else default_cache()
    decisions: list[TilingDecision] = []
    forced = {}
    for node in graph.nodes:
        before = previous.get(node.name)
        plan = plan_node(graph, node) if before is not None and before.tiling is not None else None
        if plan is None or isinstance(plan, str) or plan.recipe.kind not in ("gemm", "conv2d"):
            continue
        M, K, N, footprint = _matmul_shape(plan.recipe, config)
        # Candidates: (tiling, the node as forced to it, its kernel, resident-input layout).
        candidates: list[tuple[Tiling, Node, Kernel, bool]] = []
        if before.layout == "resident" and plan.recipe.kind == "conv2d":
            # The resident-input layout (on-chip im2col), which a forced tiling excludes: its kernel
            # here, with the images per tile the timing model prefers (a few small builds), priced
            # beside the most alike forced tilings.
            resident = node.with_attrs(tiling=None, conv_layout="resident")
            built = node_kernel(graph, resident, config, cache)
            if built is not None:
                candidates.append((_tiling_of(built[1]), resident, built[1], True))
        try:
            tilings = kernel_lib.matmul_tilings(config, M, K, N, **footprint)
        except kernel_lib.KernelError:
            tilings = []
        # The two most alike, priced; if neither can be ordered with this configuration's token queues
        # (node_kernel gives None), the next most alike that can.
        ordered, alike = _most_alike(tilings, M, before) if tilings else ([], 0)
        for index, tiling in enumerate(ordered):
            if index >= alike and candidates:
                break
            fewest = min((kernel.predicted_cycles for _, _, kernel, _ in candidates), default=None)
            forced_node = node.with_attrs(tiling=tiling)
            try:
                with prune_above(None if fewest is None else _pruning_cutoff(cost_model, objective, fewest)):
                    built = node_kernel(graph, forced_node, config, cache)
            except CandidatePruned:
                continue           # it builds, and cannot be chosen (see choose_tilings)
            if built is not None:
                candidates.append((tiling, forced_node, built[1], False))
        if not candidates:
            continue
        costs = cost_model.predict_candidates([kernel for _, _, kernel, _ in candidates], config,
                                              energy=objective != "cycles")
        labels = [tiling_label(tiling) + (" resident" if resident else "")
                  for tiling, _, _, resident in candidates]
        chosen = min(range(len(candidates)), key=lambda index: costs[index].key(objective))
        best, best_node, _, resident = candidates[chosen]
        decisions.append(TilingDecision(node.name, list(zip(labels, costs, strict=True)), labels[chosen],
                                        labels[chosen], objective, best, -(-M // best.m), specialised=True,
                                        layout="resident" if resident else None))
        forced[node.name] = best_node
    if forced:
        graph = graph.edit(substitute=forced)
    return graph, decisions
