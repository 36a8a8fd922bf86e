"""``braze bench hpm``: is the learned performance model right, on kernels it never saw?

1. **Calibrate** (resumably, into the history): the calibration kernels of the presets on the
   verilator device under several backpressure levels (``--quick``: the tiny preset, fewer kernels
   and levels; under 15 minutes on 2 cores).  Then the 30 held-out measurements with the largest
   learned error among those made once under backpressure (long kernels) are run again, to three
   runs each (``braze hpm repeat``), so that their "mean of repeats" is a mean.
2. **Held-out families**: leave-one-family-out -- for every kernel family, a model trained on all
   the *other* families predicts it; MAPE and worst error per family, analytic beside learned, for
   both regressors (the better is the one the product uses).
3. **Top-1 decisions**: for GEMM and convolution shapes not in the calibration set, every tiling
   candidate (and, for GEMMs with an activation, fused vs. GEMM followed by a separate activation
   kernel) is run on the RTL; a model trained on the whole history picks the candidate it
   predicts fastest; it agrees when its pick's measured cycles are within 1% of the measured best.
   The analytic model's agreement is printed beside it.
4. **Drift**: a model trained only on runs without backpressure meets a memory that stalls 40% of
   handshakes; every run is recorded, and the monitor retrains (every 8 runs while the rolling
   error is over the target); ``drift_recovery_runs`` is how many runs it took until the mean
   error of the last 8 predictions was back under 5%.
5. **Plans**: the digits CNN (trained here on scikit-learn's digits) compiled twice on the RTL of
   the last configuration -- fusion and tiling priced by the analytic model, and by the learned
   one for the memory at hand -- and one batch of 64 run with each plan, without and with 40%
   backpressure, and one of 16 with it (both plans under the same recorded stall seed): measured
   cycles side by side, and which decisions (fusion, tiling, convolution layout) differ.

Ends with ``hpm: learned_mape=<pct> analytic_mape=<pct> learned_worst=<pct> learned_mean_worst=<pct>
noise_worst=<pct> top1=<fraction> drift_recovery_runs=<n>``, ``cnn_cycles_learned_over_analytic=<x>``
(at 40% backpressure), ``cnn16_cycles_learned_over_analytic=<x>`` (the same at batch 16)
and ``learned_stall0_worst=<pct>``: ``learned_worst`` against single runs, ``learned_mean_worst``
against the mean of each measurement's repeats (calibration runs short kernels under backpressure
three times, each under its own recorded stall pattern), ``noise_worst`` how far single runs lie
from that mean, ``learned_stall0_worst`` against the single runs without backpressure (deterministic,
so a single run's error there is the model's own, not the stall pattern's).
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from braze.isa import Config
from braze.isa.errors import ArgumentParser

from ..compiler import kernels as library
from ..compiler.kernels import Kernel, KernelError, run_kernel
from ..hpm.calibrate import (
    DEFAULT_REPEATS,
    DEFAULT_STALLS,
    WORST_TO_REPEAT,
    calibrate,
    random_inputs,
    record_run,
    repeat_worst_measured_once,
    tiling_variants,
)
from ..hpm.evaluate import format_scores, holdout_by_family, summarise
from ..hpm.features import MemorySystem, kernel_features, kernel_signature
from ..hpm.model import PerformanceModel, error_pct
from ..hpm.store import HistoryStore, signature_hash

__all__ = ["main", "decision_sets", "compare_plans"]

_AGREE_PCT = 1.0
_DRIFT_STALL = 0.4
_DRIFT_TARGET_PCT = 5.0
_DRIFT_WINDOW = 8
#: A safety stop for the repeats after calibration (on tiny they take about a minute).
_REPEAT_BUDGET_SECONDS = 240


def decision_sets(config: Config, *, quick: bool) -> list[tuple[str, list[list[Kernel]]]]:
    """Decisions the compiler makes, each a list of candidates (a candidate is one or more kernels)."""
    decisions = []
    gemms = [(48, 96, 24), (20, 40, 36), (96, 72, 16), (8, 200, 12)] + ([] if quick else
                                                                       [(130, 64, 48), (33, 160, 20)])
    for m, k, n in gemms:
        try:
            chosen = library.gemm(config, m, k, n, bias=True, requant=True, act="relu")
        except KernelError:
            continue
        candidates = [[chosen]]
        for tiling in tiling_variants(chosen):
            try:
                candidates.append([library.gemm(config, m, k, n, bias=True, requant=True, act="relu",
                                                tiling=tiling)])
            except KernelError:
                continue
        if len(candidates) > 1:
            decisions.append((f"tiling gemm {m}x{k}x{n}", candidates))
        # Fusion: the activation in the epilogue, or a separate ReLU kernel after the GEMM.
        unfused = [library.gemm(config, m, k, n, bias=True, requant=True),
                   library.relu(config, (m, n))]
        decisions.append((f"fusion gemm {m}x{k}x{n}+relu", [[chosen], unfused]))
    convs = [(2, 5, 10, 8, 3, 1, 1), (1, 12, 9, 8, 3, 2, 1)] + ([] if quick else [(4, 6, 7, 16, 3, 1, 0)])
    for n, c, hw, k_out, kh, stride, pad in convs:
        try:
            chosen = library.conv2d(config, n, c, hw, hw, k_out, kh, kh, stride, pad, bias=True, requant=True)
        except KernelError:
            continue
        candidates = [[chosen]]
        for tiling in tiling_variants(chosen):
            try:
                candidates.append([library.conv2d(config, n, c, hw, hw, k_out, kh, kh, stride, pad, bias=True,
                                                  requant=True, tiling=tiling)])
            except KernelError:
                continue
        if len(candidates) > 1:
            decisions.append((f"tiling conv {n}x{c}x{hw}x{hw}->{k_out} k{kh}s{stride}", candidates))
    return decisions


@dataclasses.dataclass
class _Measured:
    kernels: list[Kernel]
    cycles: list[int]


def _run_candidates(device, decisions, stall: float, rng) -> list[tuple[str, list[_Measured]]]:
    """Every candidate's measured cycles; under backpressure the mean of 3 runs (one run's cycles vary
    by a few percent with the memory's pseudo-random stall pattern), every candidate under the same
    three recorded patterns (``set_stall_seed``), so that no candidate wins by a luckier pattern."""
    device.set_stall(stall)
    seeds = [None] if stall == 0 else [1, 998, 1995]
    measured = []
    for name, candidates in decisions:
        runs = []
        for candidate in candidates:
            cycles = []
            for kernel in candidate:
                inputs = random_inputs(kernel, rng)
                runs_of_kernel = []
                for seed in seeds:
                    device.set_stall_seed(seed)
                    runs_of_kernel.append(run_kernel(device, kernel, inputs).counters["cycles"])
                cycles.append(round(np.mean(runs_of_kernel)))
            runs.append(_Measured(candidate, cycles))
        measured.append((name, runs))
    device.set_stall_seed(None)
    return measured


def _top1(model: PerformanceModel, measured, memory: MemorySystem) -> tuple[float, float, list[str]]:
    """Agreement of the learned and the analytic model's picks with the measured best."""
    learned_ok = analytic_ok = 0
    lines = []
    for name, runs in measured:
        truth = [sum(run.cycles) for run in runs]
        best = min(truth)
        learned = [sum(p.cycles for p in model.predict_features(
            [kernel_features(kernel, kernel.config, memory) for kernel in run.kernels])) for run in runs]
        analytic = [sum(kernel.predicted_cycles for kernel in run.kernels) for run in runs]
        pick_l, pick_a = int(np.argmin(learned)), int(np.argmin(analytic))
        ok_l = truth[pick_l] <= best * (1 + _AGREE_PCT / 100)
        ok_a = truth[pick_a] <= best * (1 + _AGREE_PCT / 100)
        learned_ok += ok_l
        analytic_ok += ok_a
        lines.append(f"  {name:40} measured {truth}  learned picks #{pick_l} {'ok' if ok_l else 'WRONG'}  "
                     f"analytic picks #{pick_a} {'ok' if ok_a else 'WRONG'}")
    count = max(1, len(measured))
    return learned_ok / count, analytic_ok / count, lines


def _drift(store: HistoryStore, device, config: Config, regressor: str, rng, log) -> int:
    """Runs until a model trained without backpressure recovers under heavy backpressure (-1: never)."""
    base = [record for record in store.records(config=config.to_dict(), device="verilator")
            if record.stall == 0.0]
    model = PerformanceModel(regressor).fit(base, band=False)
    memory = MemorySystem(config.mem_latency, _DRIFT_STALL)
    device.set_stall(_DRIFT_STALL)
    # A stream of kernels the model has not seen: fresh GEMM/conv shapes.
    shapes = [(m, k, n) for m in (12, 28, 44, 60, 76) for k in (20, 52, 84) for n in (12, 28, 44)]
    rng.shuffle(shapes)
    recent: list[float] = []
    new_rows = []
    for run, (m, k, n) in enumerate(shapes, start=1):
        kernel = library.gemm(config, m, k, n, bias=True, requant=True, act="relu")
        features = kernel_features(kernel, config, memory)
        predicted = model.predict_features([features])[0].cycles
        counters = run_kernel(device, kernel, random_inputs(kernel, rng)).counters
        new_rows.append(record_run(kernel, counters, device="verilator", memory=memory, source="bench",
                                   predicted_cycles=int(predicted), predictor=f"hpm-{regressor}"))
        recent = (recent + [abs(error_pct(predicted, counters["cycles"]))])[-_DRIFT_WINDOW:]
        rolling = sum(recent) / len(recent)
        log(f"  drift run {run:3d}: predicted {predicted:8.0f}, measured {counters['cycles']:6d}, "
            f"rolling error {rolling:5.1f}%")
        if len(recent) == _DRIFT_WINDOW and rolling < _DRIFT_TARGET_PCT:
            return run
        if run % _DRIFT_WINDOW == 0 and rolling >= _DRIFT_TARGET_PCT:
            model = PerformanceModel(regressor).fit(base + new_rows, band=False)      # the monitor retrains
            log(f"  retrained on {len(base) + len(new_rows)} runs")
    return -1


def compare_plans(device, config: Config, model: PerformanceModel, stall: float, log, batch: int = 64
                  ) -> dict[str, int]:
    """Measured cycles of one CNN batch planned by the analytic and by the learned cost model."""
    from ..compiler import models
    from ..compiler.cost import TimingCostModel
    from ..hpm.model import LearnedCostModel
    from .session import InferenceSession

    data = models.load_digits_split()
    cnn, _ = models.train_cnn(data, seed=0)
    x = cnn.inputs(data.x_val[:batch])
    calibration = models.calibration_set(cnn, data, seed=0)
    device.set_stall(stall)
    device.set_stall_seed(1)          # both plans under the same stall pattern
    memory = MemorySystem(config.mem_latency, stall)
    cycles, decisions = {}, {}
    for name, cost_model in (("analytic", TimingCostModel()),
                             ("learned", LearnedCostModel(model, device="verilator", memory=memory))):
        session = InferenceSession(cnn.to_onnx(), device=device, config=config, calibration=calibration,
                                   cost_model=cost_model, record=False)
        session.run(None, {session.get_inputs()[0].name: x})
        cycles[name] = session.report().total_cycles
        decisions[name] = {f"{d.opportunity}: {d.chosen}" for d in session.fusion_decisions}
        decisions[name] |= {f"tiling {d.node}: {d.chosen}" for d in session.tiling_decisions}
        decisions[name] |= {f"layout {node.name}: {node.attrs['conv_layout']}"
                            for node in session.graph_after.nodes if node.attrs.get("conv_layout")}
        describe = getattr(cost_model, "describe", None)
        log(f"  {name:8} plan: {cycles[name]:8d} cycles" + (f"  ({describe()})" if describe else ""))
    device.set_stall_seed(None)
    differ = sorted(decisions["learned"] ^ decisions["analytic"])
    log(f"  learned only: {sorted(decisions['learned'] - decisions['analytic'])}")
    log(f"  decisions that differ: {differ or 'none'}")
    return cycles


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="braze bench hpm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny preset, fewer kernels and backpressure levels (under 15 min on 2 cores)")
    parser.add_argument("--history", type=Path, help="the performance history (default: the cache's)")
    parser.add_argument("--fresh", action="store_true", help="calibrate into a new, temporary history")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error(f"argument --seed: {args.seed} must be at least 0")
    began = time.monotonic()
    names = ("tiny",) if args.quick else ("tiny", "default", "large")
    configs = [Config.parse(name) for name in names]
    stalls = (0.0, 0.2, 0.4) if args.quick else DEFAULT_STALLS
    count = 200
    with tempfile.TemporaryDirectory(prefix="braze-bench-hpm-") as scratch:
        path = Path(scratch) / "history.sqlite" if args.fresh else args.history
        store = HistoryStore(path)
        print(f"history: {store.path}")
        report = calibrate(configs, stalls=stalls, count=count, store=store, seed=args.seed)
        print(report.summary())
        names_run = {config.name for config in configs}
        records = [record for record in store.records(device="verilator") if record.config_name in names_run]
        # Calibration runs a long kernel once per backpressure level, so the "mean of repeats" of such a
        # measurement is one stall pattern's luck: the worst of them are repeated (a fixed number, as
        # `braze hpm repeat` does) before the held-out worst is read.
        repeated = repeat_worst_measured_once(store, records, worst=WORST_TO_REPEAT, repeats=DEFAULT_REPEATS,
                                              budget_seconds=_REPEAT_BUDGET_SECONDS, progress=None)
        print(f"repeats of the {WORST_TO_REPEAT} worst held-out measurements made once: {repeated.summary()}")
        records = [record for record in store.records(device="verilator") if record.config_name in names_run]

        print(f"\n== held-out kernel families ({len(records)} runs) ==")
        pooled = {}
        for regressor in ("lightgbm", "sklearn"):
            scores = holdout_by_family(records, regressor=regressor)
            pooled[regressor] = summarise(scores)
            print(f"-- {regressor}")
            print(format_scores(scores))
        regressor = min(pooled, key=lambda name: pooled[name]["learned_mape"])
        print(f"regressor used: {regressor} (lower held-out MAPE)")

        print("\n== top-1 decisions (candidates run on the RTL) ==")
        from braze.sim.device import open_device

        rng = np.random.default_rng(args.seed)
        model = PerformanceModel(regressor).fit(records, band=False)
        agreements = []
        with open_device("verilator", configs[-1]) as device:
            for stall in (0.0, 0.4):
                decisions = decision_sets(configs[-1], quick=args.quick)
                seen = {record.signature_hash for record in records}
                kernels = [kernel for _, candidates in decisions for run in candidates for kernel in run]
                in_training = sum(signature_hash(kernel_signature(kernel)) in seen for kernel in kernels)
                measured = _run_candidates(device, decisions, stall, rng)
                memory = MemorySystem(configs[-1].mem_latency, stall)
                learned, analytic, lines = _top1(model, measured, memory)
                print(f"-- backpressure {stall}: learned {learned:.2f}, analytic {analytic:.2f} "
                      f"({len(measured)} decisions over {len(kernels)} candidate kernels, "
                      f"{in_training} of them in the training runs)")
                print("\n".join(lines))
                agreements.append((learned, analytic, len(measured)))
            top1 = sum(a * n for a, _, n in agreements) / max(1, sum(n for _, _, n in agreements))
            top1_analytic = sum(a * n for _, a, n in agreements) / max(1, sum(n for _, _, n in agreements))
            print(f"top-1 overall: learned {top1:.2f}, analytic {top1_analytic:.2f}")

            print(f"\n== drift: backpressure 0 -> {_DRIFT_STALL} ==")
            recovery = _drift(store, device, configs[-1], regressor, rng, print)
            print(f"drift recovery: {recovery} runs" if recovery > 0 else "drift: not recovered")

            print(f"\n== plans: digits CNN, batch 64, on {configs[-1].name} ==")
            planner = PerformanceModel(regressor).fit(records)
            plans = {}
            for stall in (0.0, _DRIFT_STALL):
                print(f"-- backpressure {stall}")
                plans[stall] = compare_plans(device, configs[-1], planner, stall, print)
            # At batch 16 the convolutions' layouts differ most under backpressure (compiler/layouts.py).
            print(f"-- batch 16, backpressure {_DRIFT_STALL}")
            plans16 = compare_plans(device, configs[-1], planner, _DRIFT_STALL, print, batch=16)
            device.set_stall(0.0)
        store.close()
    total = pooled[regressor]
    print(f"\n{time.monotonic() - began:.0f} s")
    print(f"hpm: learned_mape={total['learned_mape']:.2f} analytic_mape={total['analytic_mape']:.2f} "
          f"learned_worst={total['learned_worst']:.1f} learned_mean_worst={total['learned_mean_worst']:.1f} "
          f"noise_worst={total['noise_worst']:.1f} top1={top1:.2f} drift_recovery_runs={recovery} "
          f"cnn_cycles_learned_over_analytic="
          f"{plans[_DRIFT_STALL]['learned'] / plans[_DRIFT_STALL]['analytic']:.3f} "
          f"cnn16_cycles_learned_over_analytic={plans16['learned'] / plans16['analytic']:.3f} "
          f"learned_stall0_worst={total['learned_stall0_worst']:.1f} repeated_runs={repeated.ran}")
    return 0
