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

Cycles are the accelerator's counters (kernel cycles); "cost" adds the host link's priced transfers
and device runs (:class:`~.partitions.HostLink`); bytes are every host <-> device transfer.  Every
dynamic output is compared with the static plan's (``np.array_equal``).  The last line is
``dataflow: overhead_pct=... early_exit_speedup=... moe_speedup=... transfer_bytes_saved_pct=...
mismatches=...`` (speedups: static cost over dynamic cost, on ``hard`` and ``skewed``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from braze.isa.errors import ArgumentParser

from .dataflow import DataflowSession, RunTrace
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


def summary(rows: Sequence[dict]) -> str:
    def speedup(family: str) -> float:
        row = next((r for r in rows if r["family"] == family and r["distribution"] == QUOTED[family]), None)
        if row is None:                        # the family was not measured (--models)
            return float("nan")
        return row["static"]["cost"] / row["dynamic"]["cost"]

    static_bytes = sum(r["static"]["bytes"] for r in rows)
    saved = 100 * (static_bytes - sum(r["dynamic"]["bytes"] for r in rows)) / static_bytes
    return (f"dataflow: overhead_pct={100 * max(r['overhead'] for r in rows):.2f} "
            f"early_exit_speedup={speedup('early_exit'):.2f} moe_speedup={speedup('moe'):.2f} "
            f"transfer_bytes_saved_pct={saved:.1f} mismatches={sum(r['mismatches'] for r in rows)}")


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
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 2:
        parser.error("--runs must be >= 1 and --warmup >= 2")
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
    print(table(rows))
    print(summary(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
