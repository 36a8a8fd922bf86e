"""``braze bench dataflow``: dynamic partitioning driven by the dataflow analyzer, against the static plan.

For the early-exit CNN (``easy`` and ``hard`` digits), the mixture of experts (``skewed`` and
``uniform`` routing) and the early-exit encoder (``easy`` and ``hard`` digits: its exit branch is one
``MaxPool`` the static plan keeps on the host, which ``pull-elementwise`` pulls onto the chip) of
:mod:`braze.sw.runtime.dataflow_models`, on the same validation inputs:

* **static** -- the partitioned plan without the analyzer (:class:`~.dataflow.DataflowSession` with
  ``analyzer=False``): the If's predecessor and its else branch as two accelerator partitions with
  the condition and the then branch on the host; the gate and all four experts as one accelerator
  partition, routing and the gated sum on the host.  No instrumentation.
* **analyzed** -- the static plan with the analyzer on (``dynamic=False``), open beside the static
  session: its overhead from ``--overhead-rounds`` interleaved pairs of ``--overhead-block`` runs, the
  same inputs on both sessions in ABBA order, each analyzed block charged with its analyzer's folding
  (it ends after ``flush``).  The median and quartiles over the pairs, in wall time (what the issue
  targets) and in process CPU time (steady on a shared machine: waiting for a core is not in it), beside
  the analyzer's own accounting (its CPU time over the inference wall time, which its budget uses).
  The wall-time median comes with a 95% bootstrap confidence interval (resampled pairs) and the mean
  over the pairs beside it: the analyzer's work is lumpy (a sampled run's fold costs as much as a
  few hundred microseconds, and most blocks hold none or one), so the median of the pairs can sit below
  their mean, which the summary reports too.  Blocks are kept long (32 runs): every analyzed block ends
  with a ``flush``, a fold batch of fixed cost (tens of microseconds) that background folding amortises
  over its polls, so short blocks charge the analyzer a cost it does not have between flushes
  (measured: 4-run blocks doubled the median); precision comes from the number of pairs instead.
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

**multi-device** -- the same models on a session with several devices (``--multi-devices``, by default
``default,large``; each accelerator partition assigned to a device by price,
:mod:`braze.sw.runtime.devices`), against the one-device static plan of ``--config``: the early-exit CNN's
static plan on ``hard`` digits, and the mixture's ``dispatch-experts`` plan (the experts as partitions of
their own, spread over the devices) on ``uniform`` routing, its experts priced and run one after another
(``seq``) and concurrently (``conc``, a thread per device; that placement is also run without threads,
``ser``, which is what the threads buy in wall time).  A multi-device run's cost is its critical path's:
concurrent partitions count as their busiest device's.

Cycles are the accelerator's counters (kernel cycles); "cost" adds the host link's priced transfers
and device runs (:class:`~.partitions.HostLink`); bytes are every host <-> device transfer.  Every
dynamic output is compared with the static plan's (``np.array_equal``).  The last line is
``dataflow: overhead_pct=... early_exit_speedup=... moe_speedup=... transfer_bytes_saved_pct=...
mismatches=... sparsity_replan_speedup=... multi_device_cycles_ratio=... multi_device_wall_ratio=...
multi_device_mismatches=... overhead_cpu_pct=... overhead_iqr_pct=... overhead_own_pct=... pull_speedup=...
pull_bytes_ratio=... overhead_ci_high_pct=... overhead_mean_pct=...``
(``overhead_pct``: the largest median wall-time overhead over every row (three models, two
distributions each; no row is left out); ``overhead_iqr_pct``: that row's interquartile range;
``overhead_cpu_pct``, ``overhead_own_pct``: the largest CPU-time median and own accounting;
``overhead_ci_high_pct``: the largest upper end of the rows' 95% confidence intervals of the median
wall-time overhead; ``overhead_mean_pct``: the largest mean wall-time overhead over a row's pairs;
speedups: static cost over dynamic cost, on ``hard`` and ``skewed``, and
over the whole drift sequence; ``transfer_bytes_saved_pct``: over the early-exit CNN's and the mixture's
rows; ``pull_speedup``: the encoder's on ``easy`` digits, its cost counting the host partitions' measured
time (what the decision trades for chip work), ``pull_bytes_ratio`` its static bytes over dynamic;
mismatches count the drift scenario's too; ``multi_device_cycles_ratio``:
the multi-device cost over the same plan's on the one device, both models, the mixture's experts
concurrent;
``multi_device_wall_ratio``: the mixture's wall time with its experts run concurrently over one after
another, the same placement on the same devices; ``multi_device_mismatches``: multi-device outputs that
differ from the one-device static plan's).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence

import numpy as np

from braze.isa.errors import ArgumentParser

from .dataflow import DISPATCH_EXPERTS, SKIP_ZERO_BLOCKS, DataflowSession, RunTrace
from .dataflow_drift import drift_calibration, drift_inputs, sensor_mlp
from .dataflow_models import DISTRIBUTIONS, calibration_feeds, inputs, model_of

__all__ = ["measure", "main"]

#: The distribution each model's speedup is quoted on (the one whose skew a dynamic plan exploits).
QUOTED = {"early_exit": "hard", "moe": "skewed", "exit_encoder": "easy"}
#: The families of the issue's speedup and transfer-bytes keys (the encoder has keys of its own: pull_*).
ISSUE_FAMILIES = ("early_exit", "moe")
#: Pairs of blocks the analyzer's overhead is measured over, per row: the median's 95% interval is about
#: +-1 point wide at 120 pairs of 32 runs (+-1.5 at 60, which made the largest of six medians a coin toss
#: around 5% for a cost of about 3%).
OVERHEAD_ROUNDS = 120


def _run(session: DataflowSession, feeds) -> tuple[list[np.ndarray], list[RunTrace], float]:
    first = len(session.traces)
    started = time.perf_counter()
    outputs = [session.run(None, feed)[0] for feed in feeds]
    return outputs, session.traces[first:], time.perf_counter() - started


def _totals(traces: Sequence[RunTrace], link) -> dict:
    return {"cycles": sum(t.kernel_cycles for t in traces), "bytes": sum(t.transfer_bytes for t in traces),
            "cost": sum(t.cost(link) for t in traces), "host": sum(t.host_cycles for t in traces)}


def _quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    low, median, high = np.percentile(values, [25, 50, 75])
    return float(low), float(median), float(high)


#: Resamples of the bootstrap confidence interval of a median (seeded: the same pairs give the same interval).
BOOTSTRAP_RESAMPLES = 2000


def median_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """A percentile bootstrap confidence interval of the median of ``values`` (resampled with
    replacement, :data:`BOOTSTRAP_RESAMPLES` times, a fixed seed)."""
    data = np.asarray(values, dtype=float)
    picks = np.random.default_rng(0).integers(0, len(data), (BOOTSTRAP_RESAMPLES, len(data)))
    medians = np.median(data[picks], axis=1)
    low, high = np.percentile(medians, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def measure_overhead(static: DataflowSession, analyzed: DataflowSession, feeds, *, rounds: int,
                     block: int) -> dict:
    """The analyzer's overhead, from ``rounds`` interleaved pairs of blocks (see the module documentation).

    Each pair runs the same ``block`` feeds on the static plan without instrumentation and on the same
    plan with the analyzer on, in alternating order (ABBA: a machine getting busier or quieter weighs on
    both alike); the analyzed block ends when its analyzer has folded every observation (``flush``), so
    that its background work is charged to it, not to the next block.  Per pair: the wall-time overhead
    and the CPU-time overhead (process time: every thread, the analyzer's included; time the process
    waits for a core is not in it, so it is steady on a shared machine).  Returns their quartiles, the
    wall-time median's 95% bootstrap interval and the pairs' mean, and the analyzer's own accounting (its
    CPU time over the measured runs' wall time)."""
    wall, cpu = [], []
    analyzer = analyzed.analyzer
    analyzer.flush()
    # The sessions' set-up left garbage enough for a full collection (hundreds of milliseconds) that would
    # land in whichever block came next; collections the runs themselves cause are measured.
    gc.collect()
    cost_before, inference_before = analyzer.cost_seconds, analyzer.inference_seconds
    for index in range(rounds):
        chunk = [feeds[(index * block + i) % len(feeds)] for i in range(block)]
        spent = {}
        for session in ((static, analyzed) if index % 2 == 0 else (analyzed, static)):
            started, started_cpu = time.perf_counter(), time.process_time()
            for feed in chunk:
                session.run(None, feed)
            if session.analyzer is not None:
                session.analyzer.flush()
            spent[session is analyzed] = (time.perf_counter() - started, time.process_time() - started_cpu)
        wall.append(spent[True][0] / spent[False][0] - 1)
        cpu.append(spent[True][1] / spent[False][1] - 1)
    accounted = ((analyzer.cost_seconds - cost_before) / (analyzer.inference_seconds - inference_before))
    return {"wall": _quartiles(wall), "cpu": _quartiles(cpu), "accounted": accounted,
            "wall_interval": median_interval(wall), "wall_mean": float(np.mean(wall)),
            "sampled": analyzer.sampled, "observed": analyzer.observations, "pairs": rounds}


def measure(family: str, distribution: str, *, runs: int, warmup: int, device: str = "golden",
            config: str = "default", cost_model: str | None = None, onchip_if: bool = True,
            overhead_rounds: int = OVERHEAD_ROUNDS, overhead_block: int = 32) -> dict:
    model = model_of(family)
    calibration = calibration_feeds(model)
    feeds = inputs(model, distribution, runs, seed=7)
    warm = inputs(model, distribution, warmup, seed=8)
    options = dict(calibration=calibration, device=device, config=config, cost_model=cost_model)
    with DataflowSession(model.onnx_bytes, analyzer=False, **options) as static, \
            DataflowSession(model.onnx_bytes, dynamic=False, **options) as analyzed:
        _run(static, warm[:2])                                   # device load, not measured
        _run(analyzed, warm[:2])
        static_out, static_traces, static_wall = _run(static, feeds)
        _, _, analyzed_wall = _run(analyzed, feeds)
        link = static.link
        overhead = measure_overhead(static, analyzed, feeds, rounds=overhead_rounds, block=overhead_block)
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


#: The distribution each model runs on in the multi-device rows (most branch work; most experts per run).
MULTI_DEVICE = {"early_exit": "hard", "moe": "uniform"}


def measure_multi(family: str, *, runs: int, devices: Sequence[str], device: str = "golden",
                  config: str = "default", cost_model: str | None = None) -> dict:
    """One device against several (see the module documentation): cost, wall time, mismatches."""
    model = model_of(family)
    distribution = MULTI_DEVICE[family]
    feeds = inputs(model, distribution, runs, seed=7)
    warm = inputs(model, distribution, 2, seed=8)
    options = dict(calibration=calibration_feeds(model), device=device, cost_model=cost_model, analyzer=False)
    choices = frozenset({DISPATCH_EXPERTS}) if family == "moe" else frozenset()
    with DataflowSession(model.onnx_bytes, config=config, **options) as one:
        _run(one, warm)                                          # device load, not measured
        one_out, one_traces, one_wall = _run(one, feeds)
        one_cost = sum(t.cost(one.link) for t in one_traces)
        one.manager.deploy(choices)                              # the multi-device rows' plan, on one device
        _run(one, warm)
        _, same_traces, _ = _run(one, feeds)
        same_cost = sum(t.cost(one.link) for t in same_traces)
    rows = []
    for concurrent in ((False, True) if family == "moe" else (False,)):
        with DataflowSession(model.onnx_bytes, devices=devices, concurrent=concurrent, **options) as multi:
            plan = multi.manager.deploy(choices)
            _run(multi, warm)
            out, traces, wall = _run(multi, feeds)
            row = {"concurrent": concurrent, "wall": wall, "report": multi.report(),
                   "placement": ", ".join(f"{role}@{name}" for role, name in plan.devices.items()),
                   "cycles": sum(t.kernel_cycles for t in traces),
                   "cost": sum(t.critical_cost for t in traces),
                   "mismatches": sum(not np.array_equal(a, b) for a, b in zip(one_out, out, strict=True))}
            if concurrent:                # the same placement, experts one after another: what threads buy
                multi.manager.placer.concurrent = False
                serial_out, _, row["serial_wall"] = _run(multi, feeds)
                row["mismatches"] += sum(not np.array_equal(a, b)
                                         for a, b in zip(one_out, serial_out, strict=True))
            rows.append(row)
    return {"model": model.name, "family": family, "distribution": distribution, "runs": runs,
            "devices": list(devices), "one_cycles": sum(t.kernel_cycles for t in one_traces),
            "one_cost": one_cost, "same_plan_cost": same_cost, "one_wall": one_wall, "rows": rows}


def multi_table(multi: Sequence[dict], config: str) -> str:
    lines = [f"multi-device: the one-device static plan on {config} (one; 'same': the multi rows' plan on "
             f"that one device) against devices "
             f"{', '.join(multi[0]['devices'])} (multi; partitions placed by price; moe: dispatch-experts, "
             f"its experts priced and run one after another (seq) or concurrently (conc), conc's placement "
             f"also run without threads (wall ser)); per run: kernel cycles, cost = kernel cycles + priced "
             f"transfers and device runs on the critical path (concurrent partitions: the busiest "
             f"device's), wall ms"]
    lines.append(f"  {'model':<15} {'inputs':<8} {'experts':<7} {'cycles one':>10} {'multi':>7} "
                 f"{'cost one':>8} {'same':>7} {'multi':>7} {'wall one':>8} {'multi':>7} {'ser':>7} "
                 f"{'mismatch':>8}  placement")
    for m in multi:
        runs = m["runs"]
        for row in m["rows"]:
            experts = ("conc" if row["concurrent"] else "seq") if m["family"] == "moe" else "-"
            serial = f"{1e3 * row['serial_wall'] / runs:.2f}" if "serial_wall" in row else "-"
            lines.append(f"  {m['model']:<15} {m['distribution']:<8} {experts:<7} "
                         f"{m['one_cycles'] / runs:>10.0f} {row['cycles'] / runs:>7.0f} "
                         f"{m['one_cost'] / runs:>8.0f} {m['same_plan_cost'] / runs:>7.0f} "
                         f"{row['cost'] / runs:>7.0f} "
                         f"{1e3 * m['one_wall'] / runs:>8.2f} {1e3 * row['wall'] / runs:>7.2f} {serial:>7} "
                         f"{row['mismatches']:>8}  {row['placement']}")
    return "\n".join(lines)


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


def _spread(quartiles: tuple[float, float, float]) -> str:
    low, median, high = quartiles
    return f"{100 * median:.2f}% [{100 * low:.1f}, {100 * high:.1f}]"


def _interval(overhead: dict) -> str:
    low, high = overhead["wall_interval"]
    return f"[{100 * low:.1f}, {100 * high:.1f}] {100 * overhead['wall_mean']:.2f}%"


def table(rows: Sequence[dict]) -> str:
    header = ("model", "inputs", "plan after warm-up", "cycles st/dyn", "bytes st/dyn", "cost st/dyn",
              "speedup", "host st/dyn", "wall ms st/an/dyn", "analyzer wall [IQR]", "median 95% CI, mean",
              "cpu [IQR]", "own", "mismatch")
    lines = []
    for r in rows:
        s, d = r["static"], r["dynamic"]
        lines.append((r["model"], r["distribution"], r["plan"],
                      f"{s['cycles'] / r['runs']:.0f}/{d['cycles'] / r['runs']:.0f}",
                      f"{s['bytes'] / r['runs']:.0f}/{d['bytes'] / r['runs']:.0f}",
                      f"{s['cost'] / r['runs']:.0f}/{d['cost'] / r['runs']:.0f}",
                      f"{s['cost'] / d['cost']:.2f}x",
                      f"{s['host'] / r['runs']:.0f}/{d['host'] / r['runs']:.0f}",
                      "/".join(f"{1e3 * r[k]:.0f}" for k in ("static_wall", "analyzed_wall", "dynamic_wall")),
                      _spread(r["overhead"]["wall"]), _interval(r["overhead"]), _spread(r["overhead"]["cpu"]),
                      f"{100 * r['overhead']['accounted']:.2f}%", str(r["mismatches"])))
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    out = ["static plan = the partitioner's plan without the analyzer: If predecessor and else branch as two "
           "accelerator partitions (condition and then branch on the host); gate + all experts as one "
           "accelerator partition (routing, gated sum on the host). Per run: cycles = accelerator kernel "
           "cycles (counters); bytes = host<->device transfers; cost = cycles + priced transfers and device "
           "runs; host = the host partitions' measured time in cycles (200 MHz; not in cost, except in "
           "pull_speedup); wall = the measured runs' wall time: static, static with the analyzer on (an), "
           "dynamic; "
           "analyzer = its overhead on the static plan, median [quartiles] over interleaved pairs of blocks "
           "(analyzer off/on, the same inputs, ABBA order) in wall time, the wall-time median's 95% "
           "bootstrap interval and the pairs' mean, and in process CPU time; own = its own accounting (its "
           "CPU time / inference wall time)."]
    out.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    return "\n".join(out)


def summary(rows: Sequence[dict], drift: dict | None = None, multi: Sequence[dict] = ()) -> str:
    def speedup(family: str) -> float:
        row = next((r for r in rows if r["family"] == family and r["distribution"] == QUOTED[family]), None)
        if row is None:                        # the family was not measured (--models)
            return float("nan")
        return row["static"]["cost"] / row["dynamic"]["cost"]

    issue_rows = [r for r in rows if r["family"] in ISSUE_FAMILIES] or rows
    static_bytes = sum(r["static"]["bytes"] for r in issue_rows)
    saved = 100 * (static_bytes - sum(r["dynamic"]["bytes"] for r in issue_rows)) / static_bytes
    pull = next((r for r in rows
                 if r["family"] == "exit_encoder" and r["distribution"] == QUOTED["exit_encoder"]), None)
    if pull is None:
        pull_text = "pull_speedup=nan pull_bytes_ratio=nan"
    else:
        s, d = pull["static"], pull["dynamic"]
        pull_text = (f"pull_speedup={(s['cost'] + s['host']) / (d['cost'] + d['host']):.2f} "
                     f"pull_bytes_ratio={s['bytes'] / d['bytes']:.2f}")
    mismatches = sum(r["mismatches"] for r in rows) + (drift["mismatches"] if drift else 0)
    replan = drift["totals"]["static"]["cost"] / drift["totals"]["dynamic"]["cost"] if drift else float("nan")
    nan = float("nan")
    # The best multi-device row of each model (the mixture: its experts priced concurrently).
    best = [m["rows"][-1] for m in multi]
    cost_ratio = sum(row["cost"] for row in best) / sum(m["same_plan_cost"] for m in multi) if multi else nan
    timed = [row for row in best if "serial_wall" in row]
    wall_ratio = (sum(row["wall"] for row in timed) / sum(row["serial_wall"] for row in timed)
                  if timed else nan)
    worst = max(rows, key=lambda r: r["overhead"]["wall"][1])
    return (f"dataflow: overhead_pct={100 * worst['overhead']['wall'][1]:.2f} "
            f"early_exit_speedup={speedup('early_exit'):.2f} moe_speedup={speedup('moe'):.2f} "
            f"transfer_bytes_saved_pct={saved:.1f} mismatches={mismatches} "
            f"sparsity_replan_speedup={replan:.2f} multi_device_cycles_ratio={cost_ratio:.2f} "
            f"multi_device_wall_ratio={wall_ratio:.2f} "
            f"multi_device_mismatches={sum(row['mismatches'] for m in multi for row in m['rows'])} "
            f"overhead_cpu_pct={100 * max(r['overhead']['cpu'][1] for r in rows):.2f} "
            f"overhead_iqr_pct={100 * (worst['overhead']['wall'][2] - worst['overhead']['wall'][0]):.2f} "
            f"overhead_own_pct={100 * max(r['overhead']['accounted'] for r in rows):.2f} {pull_text} "
            f"overhead_ci_high_pct={100 * max(r['overhead']['wall_interval'][1] for r in rows):.2f} "
            f"overhead_mean_pct={100 * max(r['overhead']['wall_mean'] for r in rows):.2f}")


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
    parser.add_argument("--overhead-rounds", type=int, default=OVERHEAD_ROUNDS,
                        help="interleaved pairs of blocks (analyzer off, on) the overhead is the median of")
    parser.add_argument("--overhead-block", type=int, default=32, help="runs per block of those pairs")
    parser.add_argument("--reports", action="store_true", help="print each dynamic session's report")
    parser.add_argument("--no-onchip-if", action="store_true",
                        help="leave the If on the host (no if-on-chip decision): the host-If decisions alone")
    parser.add_argument("--models", default="early_exit,moe,exit_encoder",
                        help="comma-separated model families to measure (early_exit, moe, exit_encoder)")
    parser.add_argument("--drift-runs", type=int, default=32,
                        help="runs of the drift scenario's first phase (dense; then sparse and dense again, "
                             "twice as many each); 0: leave it out")
    parser.add_argument("--drift-budget", type=float, default=0.05,
                        help="share of inference time the drift session's analyzer may spend sampling")
    parser.add_argument("--multi-devices", default="default,large",
                        help="comma-separated devices (CONFIG or KIND:CONFIG) of the multi-device rows; '': "
                             "leave them out")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 2 or args.drift_runs < 0 or args.overhead_rounds < 1 \
            or args.overhead_block < 1:
        parser.error("--runs must be >= 1, --warmup >= 2, --drift-runs >= 0, --overhead-rounds and "
                     "--overhead-block >= 1")
    families = [f.strip() for f in args.models.split(",") if f.strip()]
    unknown = [f for f in families if f not in DISTRIBUTIONS]
    if unknown or not families:
        parser.error(f"--models: unknown family {unknown}; choose from {', '.join(DISTRIBUTIONS)}")
    rows = []
    for family in families:
        for distribution in DISTRIBUTIONS[family]:
            rows.append(measure(family, distribution, runs=args.runs, warmup=args.warmup, device=args.device,
                                config=args.config, cost_model=args.cost_model,
                                onchip_if=not args.no_onchip_if, overhead_rounds=args.overhead_rounds,
                                overhead_block=args.overhead_block))
            if args.reports:
                print(rows[-1]["report"], end="\n\n")
    devices = [d.strip() for d in args.multi_devices.split(",") if d.strip()]
    multi = []
    if devices:
        multi = [measure_multi(family, runs=args.runs, devices=devices, device=args.device,
                               config=args.config, cost_model=args.cost_model)
                 for family in families if family in MULTI_DEVICE]
        if args.reports:
            for m in multi:
                for row in m["rows"]:
                    print(row["report"], end="\n\n")
    drift = None
    if args.drift_runs:
        drift = measure_drift(runs=args.drift_runs, device=args.device, config=args.config,
                              cost_model=args.cost_model, budget=args.drift_budget)
        if args.reports:
            print(drift["report"], end="\n\n")
    print(table(rows))
    if drift:
        print(drift_table(drift))
    if multi:
        print(multi_table(multi, args.config))
    print(summary(rows, drift, multi))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
