"""Lower bounds of candidate tilings: never above the timing model's cycles, tight, and pruning with them
changes no choice (the library's own search, and the tiling pass under the timing model)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx_models import conv_model

from braze.isa import Config
from braze.sw.compiler import kernels as kernel_lib
from braze.sw.compiler.cache import KernelCache
from braze.sw.compiler.cost import TimingCostModel
from braze.sw.compiler.frontend import load_onnx
from braze.sw.compiler.kernels import matmul
from braze.sw.compiler.kernels.common import CandidatePruned, prune_above
from braze.sw.compiler.quantize import quantize
from braze.sw.compiler.tiling import choose_tilings
from braze.sw.runtime.session import _with_shapes

CONFIGS = [Config.preset("tiny"), Config.preset("default"), Config.preset("large"),
           Config.parse("default:load_overlap=1"), Config.parse("tiny:token_depth=1"),
           # The presets' overlap options one by one: epilogue_overlap without matmul_overlap, and none.
           Config.parse("default:matmul_overlap=0"),
           Config.parse("large:weight_preload=0,epilogue_overlap=0,matmul_overlap=0"),
           Config.parse("large:store_ahead=1")]

# (kind, args, options): GEMMs and convolutions (N, C, H, W, K, kh, kw, stride, pad) of several shapes.
SHAPES = [
    ("gemm", (64, 64, 64), dict(bias=True, requant=True, act="relu")),
    ("gemm", (1, 256, 40), dict(requant=True)),
    ("gemm", (100, 30, 70), dict(out="int32")),
    ("gemm", (33, 300, 17), dict(bias=True, requant=True, residual=True)),
    ("conv2d", (4, 1, 16, 16, 8, 3, 3, 1, 1), dict(bias=True, requant=True, act="relu")),
    ("conv2d", (2, 8, 12, 12, 16, 3, 3, 2, 1), dict(bias=True, requant=True)),
    ("conv2d", (3, 4, 10, 10, 12, 5, 5, 1, 2), dict(requant=True, act="relu", pool=2)),
    ("conv2d", (8, 16, 7, 7, 24, 1, 1, 1, 0), dict(bias=True, requant=True)),
]


def _fresh_generation(monkeypatch) -> None:
    """Forget the kernels and bounds this process generated, so that each build here generates."""
    monkeypatch.setattr(matmul, "_GENERATED", {})
    monkeypatch.setattr(matmul, "_BOUNDS", {})


def _build(config, kind, args, options, **extra):
    return getattr(kernel_lib, kind)(config, *args, **options, **extra)


def _tilings(config, kind, args, options):
    try:
        return kernel_lib.candidate_tilings(_build(config, kind, args, options))
    except kernel_lib.KernelError:
        return []          # does not fit this configuration


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name + (f"-o{c.load_overlap}-t{c.token_depth}"
                                                                      f"-e{c.epilogue_overlap}-m{c.matmul_overlap}"))
def test_the_bound_of_every_candidate_is_at_most_its_predicted_cycles_and_tight(config, monkeypatch):
    monkeypatch.setattr(matmul, "_TRANSFER_BOUND", False)      # the merge's own bound, not the cheaper one
    ratios = []
    for kind, args, options in SHAPES:
        for tiling in _tilings(config, kind, args, options):
            _fresh_generation(monkeypatch)
            try:
                with pytest.raises(CandidatePruned) as pruned, prune_above(1):
                    _build(config, kind, args, options, tiling=tiling)
            except kernel_lib.KernelError:
                # Not orderable with these token queues: never pruned, it does not build at all.
                with pytest.raises(kernel_lib.KernelError):
                    _build(config, kind, args, options, tiling=tiling)
                continue
            bound, instructions = pruned.value.lower_bound, pruned.value.instructions
            kernel = _build(config, kind, args, options, tiling=tiling)     # it builds
            assert instructions == len(kernel.instructions)
            assert 0 < bound <= kernel.predicted_cycles, (kind, args, tiling)
            ratios.append(kernel.predicted_cycles / bound)
    assert ratios
    # Tight: the timing model's cycles are mostly the bound itself (measured over these shapes: every
    # candidate on default and large, with their overlap options or without, 101 of 110 on tiny, the
    # rest within 1.09x).
    assert np.median(ratios) == 1.0 and max(ratios) < 1.15


@pytest.mark.parametrize("config", [Config.preset("default"), Config.parse("tiny:load_overlap=1")],
                         ids=lambda c: f"{c.name}-o{c.load_overlap}")
def test_the_transfer_bound_is_at_most_the_merges_bound(config, monkeypatch):
    # The cheaper bound tried first (LOAD data bus, STORE unit, dispatches) never exceeds the merge's, for
    # overlapped LOADs and LOADs one at a time (both rule every candidate out at a cutoff of 1).
    below = 0
    for kind, args, options in SHAPES:
        for tiling in _tilings(config, kind, args, options)[:4]:
            bounds = []
            for transfer in (True, False):
                _fresh_generation(monkeypatch)
                monkeypatch.setattr(matmul, "_TRANSFER_BOUND", transfer)
                try:
                    with pytest.raises(CandidatePruned) as pruned, prune_above(1):
                        _build(config, kind, args, options, tiling=tiling)
                except kernel_lib.KernelError:
                    break              # not orderable: never pruned, either way
                bounds.append((pruned.value.lower_bound, pruned.value.instructions))
            if len(bounds) == 2:
                (transfer_bound, count), (merge_bound, merged_count) = bounds
                assert 0 < transfer_bound <= merge_bound and count == merged_count, (kind, args, tiling)
                below += transfer_bound < merge_bound
    assert below                # a bound of its own, not the merge's under another name


@pytest.mark.parametrize("config", CONFIGS[:3], ids=lambda c: c.name)
def test_the_library_keeps_the_same_kernel_with_and_without_pruning(config, monkeypatch):
    for kind, args, options in SHAPES:
        _fresh_generation(monkeypatch)
        try:
            pruning = _build(config, kind, args, options)
        except kernel_lib.KernelError:
            continue
        _fresh_generation(monkeypatch)
        monkeypatch.setattr(matmul, "_PRUNING", False)
        exhaustive = _build(config, kind, args, options)
        monkeypatch.setattr(matmul, "_PRUNING", True)
        assert pruning.tiling == exhaustive.tiling
        assert pruning.instructions == exhaustive.instructions
        assert pruning.predicted_cycles == exhaustive.predicted_cycles


class UnprunedTimingModel(TimingCostModel):
    """The timing model's prices, by a model the tiling pass does not know to be the timing model (so it
    generates every candidate)."""


@pytest.mark.parametrize("config", CONFIGS[:3], ids=lambda c: c.name)
def test_the_tiling_pass_chooses_the_same_with_pruned_candidates(config, monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 1, 8, 8)).astype(np.float32)
    graph = _with_shapes(quantize(load_onnx(conv_model(1, batch=12)), [{"x": x}]), {"x": x.shape},
                         {"x": "float32"})
    _fresh_generation(monkeypatch)
    pruned_graph, pruned = choose_tilings(graph, config, cost_model=TimingCostModel(),
                                          cache=KernelCache(disk=False))
    _fresh_generation(monkeypatch)
    full_graph, full = choose_tilings(graph, config, cost_model=UnprunedTimingModel(),
                                      cache=KernelCache(disk=False))
    assert [(d.node, d.chosen, d.library) for d in pruned] == [(d.node, d.chosen, d.library) for d in full]
    for with_bounds, every in zip(pruned, full, strict=True):
        costs = dict(every.candidates)
        assert dict(with_bounds.candidates)[with_bounds.chosen] == costs[every.chosen]
        assert not every.pruned
        # What was ruled out was generated by the exhaustive pass, and its cycles are above the bound
        # and above the chosen one's.
        for label, bound in with_bounds.pruned:
            assert label not in dict(with_bounds.candidates)
            if label in costs:
                assert bound <= costs[label].cycles
                assert costs[label].cycles > costs[every.chosen].cycles
    assert any(decision.pruned for decision in pruned)     # the bounds ruled candidates out here
    assert [n.attrs.get("tiling") for n in pruned_graph.nodes] == \
        [n.attrs.get("tiling") for n in full_graph.nodes]


def test_a_cached_compile_reads_the_bounds_of_the_tilings_ruled_out_instead_of_generating_them(
        tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(12, 1, 8, 8)).astype(np.float32)
    graph = _with_shapes(quantize(load_onnx(conv_model(1, batch=12)), [{"x": x}]), {"x": x.shape},
                         {"x": "float32"})
    config = Config.preset("default")
    _fresh_generation(monkeypatch)
    cold = KernelCache(tmp_path)
    _, first = choose_tilings(graph, config, cost_model=TimingCostModel(), cache=cold)
    assert cold.pruned > 0 and cold.misses > 0
    assert len(list(tmp_path.glob("*.bound.json"))) == cold.pruned
    _fresh_generation(monkeypatch)          # as a new process: only the disk remembers
    warm = KernelCache(tmp_path)
    _, second = choose_tilings(graph, config, cost_model=TimingCostModel(), cache=warm)
    assert warm.misses == 0 and warm.pruned == cold.pruned      # nothing generated, the same ruled out
    assert [(d.node, d.chosen, d.candidates, d.pruned) for d in second] == \
        [(d.node, d.chosen, d.candidates, d.pruned) for d in first]


def test_which_candidates_each_cost_model_generates():
    from braze.sw.compiler.cost import Cost, CostModel
    from braze.sw.compiler.tiling import SCREENED_BY_TIMING_MODEL, _pruning_cutoff

    class Screened(CostModel):
        name = next(iter(SCREENED_BY_TIMING_MODEL))

        def predict_kernel(self, kernel, config):
            return Cost(kernel.predicted_cycles, 0)

    timing, screened = TimingCostModel(), Screened()
    # The timing model itself: exactly those whose bound exceeds the fewest cycles are ruled out.
    assert _pruning_cutoff(timing, "cycles", 1000) == 1001
    assert _pruning_cutoff(timing, "energy", 1000) is None           # bounds are on cycles only
    assert _pruning_cutoff(UnprunedTimingModel(), "cycles", 1000) is None
    # A screened model: well above the fewest only, and never the tiling the fusion engine forced.
    assert _pruning_cutoff(screened, "cycles", 1000) == 1000 * SCREENED_BY_TIMING_MODEL[screened.name] > 1001
    assert _pruning_cutoff(screened, "cycles", 1000, forced=True) is None


def test_a_forced_convolution_of_several_forms_is_ruled_out_only_when_its_fastest_form_would_be(
        monkeypatch):
    config = Config.preset("default")
    shape = (16, 1, 6, 6, 8, 3, 3, 1, 1)          # a batch of small images: pixel-major and row-major forms
    options = dict(bias=True, requant=True, act="relu")
    for tiling in kernel_lib.candidate_tilings(kernel_lib.conv2d(config, *shape, **options)):
        _fresh_generation(monkeypatch)
        try:
            whole = kernel_lib.conv2d(config, *shape, **options, tiling=tiling)
        except kernel_lib.KernelError:
            continue
        # A later form is ruled out at the cycles of the fastest form built before it: the same kernel as
        # when every form is generated.
        _fresh_generation(monkeypatch)
        monkeypatch.setattr(matmul, "_PRUNING", False)
        every_form = kernel_lib.conv2d(config, *shape, **options, tiling=tiling)
        monkeypatch.setattr(matmul, "_PRUNING", True)
        assert every_form.instructions == whole.instructions and every_form.tiling == whole.tiling
        # Above its cycles it is generated, and the same kernel (whatever other form was ruled out); at
        # its cycles it may be ruled out (if the bounds say so), or else generated the same; at 1 it is.
        for cutoff in (whole.predicted_cycles + 1, whole.predicted_cycles, 1):
            _fresh_generation(monkeypatch)
            try:
                with prune_above(cutoff):
                    kept = kernel_lib.conv2d(config, *shape, **options, tiling=tiling)
            except CandidatePruned as pruned:
                assert cutoff <= whole.predicted_cycles and pruned.lower_bound <= whole.predicted_cycles
            else:
                assert cutoff > 1
                assert kept.instructions == whole.instructions and kept.tiling == whole.tiling
