"""``braze bench dataflow``: dynamic partitioning driven by the dataflow analyzer, against the static plan.

For the early-exit CNN (``easy`` and ``hard`` digits) and the mixture of experts (``skewed`` and
``uniform`` routing) of :mod:`braze.sw.runtime.dataflow_models`, on the same validation inputs:

* **static** -- the partitioned plan without the analyzer (:class:`~.dataflow.DataflowSession` with
  ``analyzer=False``): the If's predecessor and its else branch as two accelerator partitions with
  the condition and the then branch on the host; the gate and all four experts as one accelerator
  partition, routing and the gated sum on the host.  No instrumentation.
* **analyzed** -- the static plan with the analyzer on (``dynamic=False``): its overhead, as the
  analysis's accounted CPU time over the inference wall time, and as the wall-time difference.
* **dynamic** -- analyzer and dynamic decisions on (background thread), after ``--warmup`` runs of
  the same distribution; then the measured runs.  Its decisions include ``if-on-chip`` (the early
  exit's If as one program with its condition on chip); ``--no-onchip-if`` leaves it out, which
  gives the numbers of the host-If decisions alone.

**drift** -- the sensor MLP of :mod:`braze.sw.runtime.dataflow_drift` (no control flow) with
``skip_zero_blocks=True``, its inputs drifting mid-session: ``dense`` for ``--drift-runs`` runs,
``sparse`` for twice as many, ``dense`` again for twice as many.  The same feeds through the static
plan (plain kernels), the skipping plan held throughout (``always skip``) and the dynamic session (analyzer in
its background thread, ``--drift-budget`` of the inference time for host samples, a half-life of
:data:`DRIFT_HALF_LIFE` runs), which takes
``skip-zero-blocks`` after the inputs go sparse and reverses it after they go dense again.

Cycles are the accelerator's counters (kernel cycles); "cost" adds the host link's priced transfers
and device runs (:class:`~.partitions.HostLink`); bytes are every host <-> device transfer.  Every
dynamic output is compared with the static plan's (``np.array_equal``).  The last line is
``dataflow: overhead_pct=... early_exit_speedup=... moe_speedup=... transfer_bytes_saved_pct=...
mismatches=... sparsity_replan_speedup=...`` (speedups: static cost over dynamic cost, on ``hard`` and
``skewed``, and over the whole drift sequence; mismatches count the drift scenario's too).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from braze.isa.errors import ArgumentParser

from .dataflow import SKIP_ZERO_BLOCKS, DataflowSession, RunTrace
from .dataflow_drift import drift_calibration, drift_inputs, sensor_mlp
from .dataflow_models import DISTRIBUTIONS, calibration_feeds, early_exit_cnn, inputs, moe_mlp

__all__ = ["measure", "main"]

#: The distribution each model's speedup is quoted on (the one whose skew a dynamic plan exploits).
QUOTED = {"early_exit": "hard", "moe": "skewed"}


def _run(session: DataflowSession, feeds) -> tuple[list[np.ndarray], list[RunTrace], float]:
    first = len(session.traces)
    started = time.perf_counter()
    outputs = [session.run(None, feed)[0] for feed in feeds]
    return outputs, session.traces[first:], time.perf_counter() - started


def _totals(traces: Sequence[RunTrace], link) -> dict:
    return {"cycles": sum(t.kernel_cycles for t in traces), "bytes": sum(t.transfer_bytes for t in traces),
            "cost": sum(t.cost(link) for t in traces)}


def measure(family: str, distribution: str, *, runs: int, warmup: int, device: str = "golden",
            config: str = "default", cost_model: str | None = None, onchip_if: bool = True) -> dict:
    model = early_exit_cnn() if family == "early_exit" else moe_mlp()
    calibration = calibration_feeds(model)
    feeds = inputs(model, distribution, runs, seed=7)
    warm = inputs(model, distribution, warmup, seed=8)
    options = dict(calibration=calibration, device=device, config=config, cost_model=cost_model)
    with DataflowSession(model.onnx_bytes, analyzer=False, **options) as static:
        _run(static, warm[:2])                                   # device load, not measured
        static_out, static_traces, static_wall = _run(static, feeds)
        link = static.link
    with DataflowSession(model.onnx_bytes, dynamic=False, **options) as analyzed:
        _run(analyzed, warm[:2])
        _, _, analyzed_wall = _run(analyzed, feeds)
        analyzed.analyzer.flush()
        overhead = analyzed.analyzer.overhead
    with DataflowSession(model.onnx_bytes, onchip_if=onchip_if, **options) as dynamic:
        _run(dynamic, warm)
        dynamic.analyzer.flush()
        dynamic_out, dynamic_traces, dynamic_wall = _run(dynamic, feeds)
        report = dynamic.report()
        plan = dynamic.plan.describe()
        versions = sorted({v for t in dynamic_traces for v in t.plan_versions})
    mismatches = sum(not np.array_equal(a, b) for a, b in zip(static_out, dynamic_out, strict=True))
    before, after = _totals(static_traces, link), _totals(dynamic_traces, link)
    return {"model": model.name, "family": family, "distribution": distribution, "runs": runs,
            "static": before, "dynamic": after, "static_wall": static_wall, "analyzed_wall": analyzed_wall,
            "dynamic_wall": dynamic_wall, "overhead": overhead, "mismatches": mismatches, "plan": plan,
            "plan_versions": versions, "report": report}


#: The drift session's analyzer half-life (runs): the statistics follow a drift within a few dozen runs.
DRIFT_HALF_LIFE = 8.0


def measure_drift(*, runs: int, device: str = "golden", config: str = "default",
                  cost_model: str | None = None, budget: float = 0.05) -> dict:
    """The drift scenario (see the module documentation): cost per phase of three plans, and mismatches."""
    phases = [("dense", runs), ("sparse", 2 * runs), ("dense", 2 * runs)]
    feeds, phase_of = [], []
    for index, (distribution, count) in enumerate(phases):
        feeds += drift_inputs(distribution, count, seed=20 + index)
        phase_of += [index] * count
    model = sensor_mlp()
    options = dict(calibration=drift_calibration(), device=device, config=config, cost_model=cost_model,
                   skip_zero_blocks=True)
    results = {}
    with DataflowSession(model, analyzer=False, **options) as static:
        _run(static, feeds[:1])                                  # device load, not measured
        results["static"] = _run(static, feeds)
        link = static.link
    with DataflowSession(model, analyzer=False, **options) as always:
        always.manager.partition("body", "accelerator+skip")
        always.manager.deploy(frozenset({SKIP_ZERO_BLOCKS}))
        _run(always, feeds[:1])
        results["always skip"] = _run(always, feeds)
    with DataflowSession(model, analyzer_budget=budget, half_life=DRIFT_HALF_LIFE, **options) as dynamic:
        _run(dynamic, feeds[:1])
        results["dynamic"] = _run(dynamic, feeds)
        dynamic.analyzer.flush()
        report, overhead = dynamic.report(), dynamic.analyzer.overhead
        events = [(e.run, sorted(e.taken), sorted(e.reversed)) for e in dynamic.events]
    static_out = results["static"][0]
    mismatches = sum(not np.array_equal(a, b) for name in ("always skip", "dynamic")
                     for a, b in zip(static_out, results[name][0], strict=True))
    per_phase = {name: [_totals([t for t, p in zip(traces, phase_of, strict=True) if p == index], link)
                        for index in range(len(phases))]
                 for name, (_, traces, _) in results.items()}
    dynamic_traces = results["dynamic"][1]
    skipping = [[t.partitions[0].endswith("+skip") for t, p in zip(dynamic_traces, phase_of, strict=True)
                 if p == index] for index in range(len(phases))]
    totals = {name: _totals(traces, link) for name, (_, traces, _) in results.items()}
    return {"phases": phases, "per_phase": per_phase, "totals": totals, "skipping": skipping,
            "walls": {name: wall for name, (_, _, wall) in results.items()}, "mismatches": mismatches,
            "overhead": overhead, "events": events, "report": report}


def drift_table(drift: dict) -> str:
    lines = ["drift: sensor_mlp (no control flow, skip_zero_blocks=True), inputs dense -> sparse -> dense; "
             "cost per run (cycles + priced transfers and device runs) of the static plan (plain kernels), "
             "the skipping plan held throughout, and the dynamic session; 'skip runs' = the dynamic "
             "session's runs on the skipping plan"]
    header = f"  {'phase':<8} {'inputs':<7} {'runs':>5} {'static':>9} {'always skip':>12} {'dynamic':>9} " \
             f"{'skip runs':>9}"
    lines.append(header)
    for index, (distribution, count) in enumerate(drift["phases"]):
        cost = {name: drift["per_phase"][name][index]["cost"] / count for name in drift["per_phase"]}
        lines.append(f"  {index + 1:<8} {distribution:<7} {count:>5} {cost['static']:>9.0f} "
                     f"{cost['always skip']:>12.0f} {cost['dynamic']:>9.0f} "
                     f"{sum(drift['skipping'][index]):>9}")
    total = {name: t["cost"] for name, t in drift["totals"].items()}
    lines.append(f"  {'all':<8} {'':<7} {sum(c for _, c in drift['phases']):>5} {total['static']:>9.0f} "
                 f"{total['always skip']:>12.0f} {total['dynamic']:>9.0f}   (totals)")
    walls = drift["walls"]
    lines.append(f"  wall ms static/always skip/dynamic: {1e3 * walls['static']:.0f}/"
                 f"{1e3 * walls['always skip']:.0f}/{1e3 * walls['dynamic']:.0f}; analyzer "
                 f"{100 * drift['overhead']:.2f}% of inference time; decisions (observed runs, taken, "
                 f"reversed): {drift['events']}; mismatches {drift['mismatches']}")
    return "\n".join(lines)


def table(rows: Sequence[dict]) -> str:
    header = ("model", "inputs", "plan after warm-up", "cycles st/dyn", "bytes st/dyn", "cost st/dyn",
              "speedup", "wall ms st/an/dyn", "analyzer", "mismatch")
    lines = []
    for r in rows:
        s, d = r["static"], r["dynamic"]
        lines.append((r["model"], r["distribution"], r["plan"],
                      f"{s['cycles'] / r['runs']:.0f}/{d['cycles'] / r['runs']:.0f}",
                      f"{s['bytes'] / r['runs']:.0f}/{d['bytes'] / r['runs']:.0f}",
                      f"{s['cost'] / r['runs']:.0f}/{d['cost'] / r['runs']:.0f}",
                      f"{s['cost'] / d['cost']:.2f}x",
                      "/".join(f"{1e3 * r[k]:.0f}" for k in ("static_wall", "analyzed_wall", "dynamic_wall")),
                      f"{100 * r['overhead']:.2f}%", str(r["mismatches"])))
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    out = ["static plan = the partitioner's plan without the analyzer: If predecessor and else branch as two "
           "accelerator partitions (condition and then branch on the host); gate + all experts as one "
           "accelerator partition (routing, gated sum on the host). Per run: cycles = accelerator kernel "
           "cycles (counters); bytes = host<->device transfers; cost = cycles + priced transfers and device "
           "runs; wall = the measured runs' wall time: static, static with the analyzer on (an), dynamic; "
           "analyzer = its accounted CPU time / inference wall time (static plan, analyzer on)."]
    out.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    return "\n".join(out)


def summary(rows: Sequence[dict], drift: dict | None = None) -> str:
    def speedup(family: str) -> float:
        row = next((r for r in rows if r["family"] == family and r["distribution"] == QUOTED[family]), None)
        if row is None:                        # the family was not measured (--models)
            return float("nan")
        return row["static"]["cost"] / row["dynamic"]["cost"]

    static_bytes = sum(r["static"]["bytes"] for r in rows)
    saved = 100 * (static_bytes - sum(r["dynamic"]["bytes"] for r in rows)) / static_bytes
    mismatches = sum(r["mismatches"] for r in rows) + (drift["mismatches"] if drift else 0)
    replan = drift["totals"]["static"]["cost"] / drift["totals"]["dynamic"]["cost"] if drift else float("nan")
    return (f"dataflow: overhead_pct={100 * max(r['overhead'] for r in rows):.2f} "
            f"early_exit_speedup={speedup('early_exit'):.2f} moe_speedup={speedup('moe'):.2f} "
            f"transfer_bytes_saved_pct={saved:.1f} mismatches={mismatches} "
            f"sparsity_replan_speedup={replan:.2f}")


def main(argv: Sequence[str] | None = None) -> int:
    """``braze bench dataflow [--runs N] [--warmup N] [--device golden] [--config NAME] [--reports]
    [--no-onchip-if] [--models early_exit,moe]``."""
    parser = ArgumentParser(prog="braze bench dataflow", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=80, help="measured runs per model and distribution")
    parser.add_argument("--warmup", type=int, default=32, help="runs the analyzer sees before measuring")
    parser.add_argument("--device", default="golden", help="device back end of every partition")
    parser.add_argument("--config", default="default", help="preset name, PRESET:field=value,... or JSON")
    parser.add_argument("--cost-model", choices=("analytic", "learned"), default=None,
                        help="what prices decisions (default: learned where trained, else analytic)")
    parser.add_argument("--reports", action="store_true", help="print each dynamic session's report")
    parser.add_argument("--no-onchip-if", action="store_true",
                        help="leave the If on the host (no if-on-chip decision): the host-If decisions alone")
    parser.add_argument("--models", default="early_exit,moe",
                        help="comma-separated model families to measure (early_exit, moe)")
    parser.add_argument("--drift-runs", type=int, default=32,
                        help="runs of the drift scenario's first phase (dense; then sparse and dense again, "
                             "twice as many each); 0: leave it out")
    parser.add_argument("--drift-budget", type=float, default=0.05,
                        help="share of inference time the drift session's analyzer may spend sampling")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 2 or args.drift_runs < 0:
        parser.error("--runs must be >= 1, --warmup >= 2 and --drift-runs >= 0")
    families = [f.strip() for f in args.models.split(",") if f.strip()]
    unknown = [f for f in families if f not in DISTRIBUTIONS]
    if unknown or not families:
        parser.error(f"--models: unknown family {unknown}; choose from {', '.join(DISTRIBUTIONS)}")
    rows = []
    for family in families:
        for distribution in DISTRIBUTIONS[family]:
            rows.append(measure(family, distribution, runs=args.runs, warmup=args.warmup, device=args.device,
                                config=args.config, cost_model=args.cost_model,
                                onchip_if=not args.no_onchip_if))
            if args.reports:
                print(rows[-1]["report"], end="\n\n")
    drift = None
    if args.drift_runs:
        drift = measure_drift(runs=args.drift_runs, device=args.device, config=args.config,
                              cost_model=args.cost_model, budget=args.drift_budget)
        if args.reports:
            print(drift["report"], end="\n\n")
    print(table(rows))
    if drift:
        print(drift_table(drift))
    print(summary(rows, drift))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
