"""``braze bench kernels``: how close the kernels run to the roofline, on the verilator device.

In one run (issue 12, item 5):

* **GEMMs**: each shape of :data:`GEMM_SHAPES` (M x K x N, int8, bias + requantize + ReLU fused, int8
  out -- the kernel library's :func:`~braze.sw.compiler.kernels.gemm`) on each configuration
  (``default`` and ``large``), checked bit for bit against numpy, with cycles and utilisation from the
  kernel's COUNTERS snapshot and the shape's **bound**: max(compute cycles = MACs / array size,
  bus cycles = bytes of its operands (A, B, params, out) / bytes the DMA bus moves per cycle).
  ``over bound`` is cycles / bound (1.0 would be a kernel at the roofline).
* **small GEMMs** (M <= :data:`SMALL_M`) also per call in a stream of :data:`STREAM_CALLS` back-to-back
  calls in one program, pipelined and with the weights resident after the first call
  (:func:`run_small_stream`, :mod:`braze.sw.compiler.stream`), and packed (the calls' rows in one
  kernel), each against the same bound.
* **the digits MLP at batch 1** run repeatedly by one session with resident weights
  (:func:`run_mlp_resident`): first and steady-state cycles and bytes, and batch-1 requests packed.
* **the digits CNN** (:mod:`braze.demo`'s model and flow) compiled fused and unfused with the cost model
  a verilator session plans with and run on the validation images: the fused per-kernel table with the
  stall counters, PE utilisation, and the unfused / fused ratios of cycles and external bytes.
* **layer fusion** of the digits CNN: the plan's ``conv_chain`` decisions (are the layers one
  :func:`~braze.sw.compiler.kernels.conv2d_chain` kernel?), and the plan with them forced
  (``force_fusion=("conv_chain",)``: the whole CNN in one kernel) run the same way: cycles and external
  bytes against the fused plan.
* **compile time** of the digits CNN under that cost model (:mod:`braze.sw.runtime.compile_bench`, in a
  fresh process): cold, a second batch size, and from a warm kernel cache; each the least of
  :data:`COMPILE_REPEATS` processes (:func:`compile_times`), the cold one also in CPU seconds
  (``compile_cold_cpu_s``: a loaded machine stretches the wall-clock figure, not this one).

It ends with one line::

    kernels: cnn_util=<pct> gemm64_large_util=<pct> gemm256_util=<pct> small_gemm_worst_over_bound=<x>
             small_gemm_streamed_worst_over_bound=<x> small_gemm_packed_worst_over_bound=<x>
             fusion_cycles=<x> fusion_bytes=<x> compile_cold_s=<x> compile_cold_cpu_s=<x>
             cnn_chain=<chosen|not_chosen> chain_cycles=<x> chain_bytes=<x>

where the small GEMMs are those with M <= 16 (on both configurations; ``small_gemm_worst_over_bound``
is the isolated kernel's, the two others the streamed and the packed-and-streamed per-call figures) and
``gemm256_util`` is 256^3 on ``default``.  Targets (issue 12): CNN >= 60%, 64^3 on large >= 85%,
256^3 >= 95%, small shapes <= 1.5x their bound, fusion >= 1.5x cycles and >= 2x bytes, cold
compile < 1 s.  ``chain_cycles`` and ``chain_bytes`` are the fused plan's over the forced chain's
(above 1: the chain is better).

``--config-override FIELD=VALUE[,...]`` (e.g. ``weight_preload=1``) also runs the GEMMs on each
configuration with the override applied (named ``<preset>_<override>``) and prints them against the
plain rows: cycles and utilisation off/on and the timing model's error.  The override rows never enter
the last line, whose values stay those of the presets.  ``--config-base FIELD=VALUE[,...]`` (e.g.
``weight_preload=1`` with ``--config-override epilogue_overlap=1``) compares against the configurations
with the base fields changed instead, the override applied on top of them.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from braze.isa import Activation, Config, Memory
from braze.isa.arith import epilogue
from braze.isa.errors import ArgumentParser

__all__ = ["GEMM_SHAPES", "CONFIGS", "gemm_bound", "run_gemms", "run_cnn", "run_cnn_chain", "ChainOutcome",
           "override_specs", "override_table", "compile_times", "main"]

#: (M, K, N) of the GEMMs measured, as the issue lists them.
GEMM_SHAPES = ((1, 64, 10), (1, 256, 256), (16, 16, 16), (64, 64, 64), (128, 128, 128), (256, 256, 256),
               (64, 576, 64))
#: With ``--quick``: the shapes the last line needs (256^3 is the longest run).
QUICK_SHAPES = ((1, 64, 10), (1, 256, 256), (16, 16, 16), (64, 64, 64), (256, 256, 256))
CONFIGS = ("default", "large")
#: A GEMM with at most this many rows of A is "small" (fixed per-kernel costs dominate it).
SMALL_M = 16
#: Back-to-back calls of a small GEMM in the streamed (and packed) measurement.
STREAM_CALLS = 16
_EPILOGUE = dict(bias=True, requant=True, act="relu", out="int8")


def gemm_bound(kernel, config: Config) -> tuple[int, int]:
    """(compute cycles, bus cycles) of a GEMM kernel: MACs over the array's size, and the bytes of its
    operands (every one read or written once) over the bytes the DMA bus moves per cycle."""
    compute = -(-kernel.macs // (config.rows * config.cols))
    moved = sum(op.nbytes for op in kernel.operands.values() if op.role != "counters")
    return compute, -(-moved // config.dma_bus_bytes)


def _operands(rng: np.random.Generator, M: int, K: int, N: int, kernel) -> tuple[dict, np.ndarray]:
    """Random inputs of an M x K x N GEMM kernel with the fused epilogue, and the exact output."""
    from braze.sw.compiler import kernels

    a = rng.integers(-128, 128, size=(M, K), dtype=np.int8)
    b = rng.integers(-128, 128, size=(K, N), dtype=np.int8)
    bias = rng.integers(-5000, 5000, size=N)
    mult = rng.integers(1 << 13, 1 << 15, size=N)
    shift = np.full(N, 20)
    inputs = {"A": a, "B": b, "params": kernels.pack_params(kernel, bias=bias, mult=mult, shift=shift)}
    product = a.astype(np.int64) @ b.astype(np.int64)
    return inputs, epilogue(product, bias=bias, mult=mult, shift=shift, act=Activation.RELU, out=Memory.SPAD)


def run_gemms(device_kind: str, config_names: Sequence[str], shapes: Sequence[tuple[int, int, int]], *,
              seed: int = 0, stream_calls: int = STREAM_CALLS) -> list[dict]:
    """Each shape on each configuration: one row of cycles, utilisation, bound and correctness; a small
    shape's row also has its streamed and packed per-call cycles (:func:`run_small_stream`; none with
    ``stream_calls`` 1)."""
    from braze.sim.device import open_device
    from braze.sw.compiler import kernels
    from braze.sw.compiler.stream import StreamError

    rng = np.random.default_rng(seed)
    rows = []
    for name in config_names:
        config = Config.parse(name)
        with open_device(device_kind, config) as device:
            for M, K, N in shapes:
                kernel = kernels.gemm(config, M, K, N, **_EPILOGUE)
                inputs, expected = _operands(rng, M, K, N, kernel)
                result = kernels.run_kernel(device, kernel, inputs)
                counters = result.counters
                cycles = max(1, counters["cycles"])
                compute, bus = gemm_bound(kernel, config)
                rows.append({
                    "config": config.name, "shape": (M, K, N), "cycles": counters["cycles"],
                    "predicted": kernel.predicted_cycles,
                    "utilisation": counters["macs"] / (cycles * config.rows * config.cols),
                    "compute_cycles": compute, "bus_cycles": bus, "over_bound": cycles / max(compute, bus),
                    "stall_axi_read": counters["stall_axi_read"], "stall_dep": counters["stall_dep"],
                    "dma_bytes": counters["dma_read_bytes"] + counters["dma_write_bytes"],
                    "correct": bool(np.array_equal(result.outputs["out"], expected)),
                })
                if M <= SMALL_M and stream_calls > 1:
                    try:
                        rows[-1].update(run_small_stream(device, kernel, stream_calls, rng))
                    except StreamError as error:       # a kernel with loops: no straight-line stream
                        rows[-1]["stream_error"] = str(error)
                        continue
                    rows[-1]["correct"] &= rows[-1].pop("stream_correct")
    return rows


def _shared_weight_calls(rng: np.random.Generator, kernel, calls: int) -> tuple[dict, list[dict], list]:
    """Parameters shared by ``calls`` calls of a GEMM kernel, each call's A, and each call's exact output."""
    from braze.sw.compiler import kernels

    M, K = kernel.operands["A"].shape
    N = kernel.operands["out"].shape[1]
    b = rng.integers(-128, 128, size=(K, N), dtype=np.int8)
    bias = rng.integers(-5000, 5000, size=N)
    mult = rng.integers(1 << 13, 1 << 15, size=N)
    shift = np.full(N, 20)
    params = {"B": b, "params": kernels.pack_params(kernel, bias=bias, mult=mult, shift=shift)}
    inputs = [{"A": rng.integers(-128, 128, size=(M, K), dtype=np.int8)} for _ in range(calls)]
    expected = [epilogue(call["A"].astype(np.int64) @ b.astype(np.int64), bias=bias, mult=mult, shift=shift,
                         act=Activation.RELU, out=Memory.SPAD) for call in inputs]
    return params, inputs, expected


def _streamed(device, kernel, params: dict, inputs: list[dict], expected: list, count: int
              ) -> tuple[float, float, float, bool]:
    """Steady-state (cycles, timing-model cycles, bytes read) per call of ``kernel`` in a stream of
    ``count`` calls -- ``(x(count) - x(1)) / (count - 1)``: the stream's one snapshot cannot attribute
    cycles to a call -- and whether every call's output was exact."""
    from braze.isa.timing import schedule
    from braze.sw.compiler.stream import stream

    correct = True
    cycles, predicted, read_bytes = {}, {}, {}
    for calls in (1, count):
        program = stream(kernel, calls)
        result = program.run(device, params, inputs[:calls])
        correct &= all(np.array_equal(out["out"], want)
                       for out, want in zip(result.outputs, expected[:calls], strict=True))
        cycles[calls] = result.counters["cycles"]
        read_bytes[calls] = result.counters["dma_read_bytes"]
        predicted[calls] = schedule(program.program(), kernel.config).cycles
    return tuple((values[count] - values[1]) / (count - 1)
                 for values in (cycles, predicted, read_bytes)) + (correct,)


#: Packed kernels of :data:`STREAM_CALLS` calls each, streamed in this many back-to-back groups.
PACKED_GROUPS = 4


def _tilings(kernel, M: int, K: int, N: int) -> list:
    """``kernel`` (an M x K x N GEMM of the library) and the same GEMM at each other tiling the library
    weighs that can be generated."""
    from braze.sw.compiler import kernels

    found = [kernel]
    for tiling in kernels.candidate_tilings(kernel):
        try:
            found.append(kernels.gemm(kernel.config, M, K, N, **_EPILOGUE, tiling=tiling))
        except kernels.KernelError:
            continue           # not orderable with this configuration's token queues
    return found


def run_small_stream(device, kernel, calls: int, rng: np.random.Generator) -> dict:
    """A small GEMM in a stream and packed, on an open device: the per-call cycles of each.

    * **streamed**: ``calls`` back-to-back calls of the kernel in one program
      (:func:`braze.sw.compiler.stream.stream`: cross-call pipelining, weights resident after the first
      call); steady-state cycles per call (:func:`_streamed`; ``stream_predicted`` under the timing model).
    * **packed**: the ``calls`` GEMMs (one B) as one kernel of ``calls * M`` rows, run alone, over
      ``calls``; and that kernel streamed :data:`PACKED_GROUPS` times back to back (weights resident),
      its steady-state cycles over ``calls`` (``packed_streamed_*``).

    Streamed kernels run at the tiling measured fastest in their stream on this device
    (:func:`~braze.sw.compiler.stream.fastest_stream` over the library's tilings, autotuned: the timing
    model mispredicts some streams), which need not be the one fastest alone.
    """
    from braze.sw.compiler import kernels
    from braze.sw.compiler.stream import fastest_stream

    config = kernel.config
    M, K = kernel.operands["A"].shape
    N = kernel.operands["out"].shape[1]
    params, inputs, expected = _shared_weight_calls(rng, kernel, calls * PACKED_GROUPS)
    groups = [{"A": np.concatenate([call["A"] for call in inputs[g * calls:(g + 1) * calls]])}
              for g in range(PACKED_GROUPS)]
    grouped = [np.concatenate(expected[g * calls:(g + 1) * calls]) for g in range(PACKED_GROUPS)]

    def measured(calls_in: list[dict], outputs: list) -> Callable:
        """Steady-state cycles per call of a kernel's stream on this device (the choice is autotuned:
        the timing model mispredicts some streams, see fastest_stream)."""
        return lambda candidate, count: _streamed(device, candidate, params, calls_in, outputs, count)[0]

    # Streamed, each at the tiling measured fastest in its stream (not alone).
    streamed = fastest_stream(_tilings(kernel, M, K, N), calls, measured(inputs, expected))
    steady, steady_predicted, steady_read, correct = _streamed(device, streamed, params, inputs, expected,
                                                               calls)
    packed = kernels.gemm(config, calls * M, K, N, **_EPILOGUE)
    packed_streamed = fastest_stream(_tilings(packed, calls * M, K, N), PACKED_GROUPS,
                                     measured(groups, grouped))
    result = kernels.run_kernel(device, packed, {**groups[0], **params})
    correct &= bool(np.array_equal(result.outputs["out"], grouped[0]))
    group_steady, group_predicted, _, group_correct = _streamed(device, packed_streamed, params, groups,
                                                               grouped, PACKED_GROUPS)
    bound = max(gemm_bound(kernel, config))
    packed_per_call = result.counters["cycles"] / calls
    return {"stream_calls": calls, "stream_cycles": steady, "stream_predicted": steady_predicted,
            "stream_over_bound": steady / bound, "stream_read_bytes": steady_read,
            "packed_cycles": packed_per_call, "packed_predicted": packed.predicted_cycles / calls,
            "packed_over_bound": packed_per_call / bound,
            "packed_streamed_cycles": group_steady / calls,
            "packed_streamed_predicted": group_predicted / calls,
            "packed_streamed_over_bound": group_steady / calls / bound,
            "stream_correct": correct and group_correct}


def gemm_table(rows: Sequence[dict]) -> str:
    header = (f"{'config':<8} {'M x K x N':>13} {'cycles':>8} {'predicted':>9} {'MAC util':>8} "
              f"{'compute':>8} {'bus':>7} {'over bound':>10} {'axi rd stall':>12} {'dep stall':>9} "
              f"{'DMA B':>8}  result")
    lines = [header, "-" * len(header)]
    for row in rows:
        shape = "x".join(str(d) for d in row["shape"])
        lines.append(f"{row['config']:<8} {shape:>13} {row['cycles']:>8} {row['predicted']:>9} "
                     f"{row['utilisation']:>8.1%} {row['compute_cycles']:>8} {row['bus_cycles']:>7} "
                     f"{row['over_bound']:>9.2f}x {row['stall_axi_read']:>12} {row['stall_dep']:>9} "
                     f"{row['dma_bytes']:>8}  {'ok' if row['correct'] else 'MISMATCH'}")
    return "\n".join(lines)


def stream_table(rows: Sequence[dict]) -> str:
    """The small shapes isolated, streamed (per call, steady state) and packed (per call)."""
    header = (f"{'config':<8} {'M x K x N':>13} {'bound':>6} {'isolated':>9} {'over':>6} {'streamed':>9} "
              f"{'(model)':>8} {'over':>6} {'rd B/call':>9} {'packed':>8} {'(model)':>8} {'over':>6} "
              f"{'pk+str':>8} {'(model)':>8} {'over':>6}")
    lines = [header, "-" * len(header)]
    for row in rows:
        shape = "x".join(str(d) for d in row["shape"])
        if "stream_error" in row:
            lines.append(f"{row['config']:<8} {shape:>13}  not streamed: {row['stream_error']}")
        if "stream_cycles" not in row:
            continue
        bound = max(row["compute_cycles"], row["bus_cycles"])
        lines.append(f"{row['config']:<8} {shape:>13} {bound:>6} {row['cycles']:>9} "
                     f"{row['over_bound']:>5.2f}x "
                     f"{row['stream_cycles']:>9.1f} {row['stream_predicted']:>8.1f} "
                     f"{row['stream_over_bound']:>5.2f}x {row['stream_read_bytes']:>9.0f} "
                     f"{row['packed_cycles']:>8.1f} {row['packed_predicted']:>8.1f} "
                     f"{row['packed_over_bound']:>5.2f}x {row['packed_streamed_cycles']:>8.1f} "
                     f"{row['packed_streamed_predicted']:>8.1f} {row['packed_streamed_over_bound']:>5.2f}x")
    return "\n".join(lines)


def override_specs(override: str, config_names: Sequence[str] = CONFIGS) -> list[str]:
    """Config specs of ``--config-override``: each configuration with ``override`` (``field=value,...``)
    applied and named ``<preset>_<override>``; a bad field or value fails here (ConfigError)."""
    slug = re.sub(r"\W+", "_", override).strip("_")
    specs = [f"{name}:{override},name={name}_{slug}" for name in config_names]
    for spec in specs:
        Config.parse(spec)
    return specs


def _preset_of(config_name: str, config_names: Sequence[str]) -> str:
    """The configuration of ``config_names`` a row's is (``large``) or overrides (``large_...``)."""
    return next(name for name in config_names if config_name == name or config_name.startswith(f"{name}_"))


def override_table(base: Sequence[dict], overridden: Sequence[dict], config_names: Sequence[str] = CONFIGS
                   ) -> str:
    """Each overridden GEMM row next to the plain one of the same configuration and shape: cycles and
    utilisation off/on, the speed-up, and the timing model's error (predicted / measured - 1) on each.
    The plain rows may themselves be overridden (``--config-base``)."""
    header = (f"{'config':<8} {'M x K x N':>13} {'cycles':>8} {'with':>8} {'speed-up':>8} {'MAC util':>8} "
              f"{'with':>7} {'model err':>9} {'with':>7}")
    lines = [header, "-" * len(header)]
    for row in overridden:
        name = _preset_of(row["config"], config_names)
        plain = next(other for other in base
                     if _preset_of(other["config"], config_names) == name and other["shape"] == row["shape"])
        shape = "x".join(str(d) for d in row["shape"])
        lines.append(f"{name:<8} {shape:>13} {plain['cycles']:>8} {row['cycles']:>8} "
                     f"{plain['cycles'] / max(1, row['cycles']):>7.2f}x {plain['utilisation']:>8.1%} "
                     f"{row['utilisation']:>7.1%} {plain['predicted'] / max(1, plain['cycles']) - 1:>+9.1%} "
                     f"{row['predicted'] / max(1, row['cycles']) - 1:>+7.1%}")
    return "\n".join(lines)


def run_cnn(device_kind: str, *, samples: int, golden_check: bool, log=print):
    """The demo's digits CNN, fused and unfused, on ``device_kind`` with the default preset.

    Its runs are not recorded in the performance history (``BRAZE_HPM_RECORD=0`` meanwhile): a
    benchmark must not retrain the model it measures the plans of."""
    from braze import demo

    before = os.environ.get("BRAZE_HPM_RECORD")
    os.environ["BRAZE_HPM_RECORD"] = "0"
    try:
        return demo.run_model("cnn", device=device_kind, config="default", samples=samples, batch=64,
                              golden_check=golden_check, log=log)
    finally:
        if before is None:
            del os.environ["BRAZE_HPM_RECORD"]
        else:
            os.environ["BRAZE_HPM_RECORD"] = before


def run_mlp_resident(device_kind: str, *, runs: int = 4, packed: int = STREAM_CALLS,
                     config: str = "default") -> dict:
    """The demo's MLP at batch 1, run ``runs`` times by one session keeping its weights on chip
    (:mod:`braze.sw.runtime.resident`): cycles and DMA bytes of the first (cold) and the last run;
    the last run's cycles with the kernels pipelined too (``resident_weights="pipelined"``); then
    ``packed`` batch-1 requests packed into one run (:func:`~braze.sw.runtime.packing.run_packed`,
    twice: the second is warm).  Every output is checked against a plain golden session's."""
    from braze.sw.compiler import models
    from braze.sw.runtime.packing import run_packed
    from braze.sw.runtime.session import InferenceSession

    data = models.load_digits_split()
    model, _ = models.train_mlp(data, seed=0)
    calibration = models.calibration_set(model, data)
    x = model.inputs(data.x_val[:max(runs, packed)])
    before = os.environ.get("BRAZE_HPM_RECORD")
    os.environ["BRAZE_HPM_RECORD"] = "0"
    try:
        with tempfile.TemporaryDirectory(prefix="braze-bench-") as directory:
            path = model.save(os.path.join(directory, "mlp.onnx"))
            with InferenceSession(path, device="golden", config=config, calibration=calibration) as plain:
                name = plain.get_inputs()[0].name
                expected = [plain.run(None, {name: x[i:i + 1]})[0] for i in range(max(runs, packed))]
            with InferenceSession(path, device=device_kind, config=config, calibration=calibration,
                                  resident_weights=True) as session:
                rows = []
                for i in range(runs):
                    (out,) = session.run(None, {name: x[i:i + 1]})
                    report = session.report()
                    rows.append({"cycles": report.total_cycles,
                                 "dma_read_bytes": sum(row.dma_read_bytes for row in report.kernels),
                                 "dma_write_bytes": sum(row.dma_write_bytes for row in report.kernels),
                                 "warm": session._current[3].last_run_warm,
                                 "identical": bool(np.array_equal(out, expected[i]))})
                runtime = session._current[3]
            with InferenceSession(path, device=device_kind, config=config, calibration=calibration,
                                  resident_weights="pipelined") as session:
                for i in range(runs):
                    (out,) = session.run(None, {name: x[i:i + 1]})
                    rows[i]["identical"] &= bool(np.array_equal(out, expected[i]))
                rows[-1]["pipelined_cycles"] = session.report().total_cycles
                rows[-1]["pipelined_warm"] = session._current[3].last_run_warm
                requests = [{name: x[i:i + 1]} for i in range(packed)]
                for _ in range(2):
                    answers = run_packed(session, requests)
                packed_row = {"requests": packed, "cycles": session.report().total_cycles,
                              "warm": session._current[3].last_run_warm,
                              "identical": all(np.array_equal(answer[0], want)
                                               for answer, want in zip(answers, expected, strict=False))}
    finally:
        if before is None:
            del os.environ["BRAZE_HPM_RECORD"]
        else:
            os.environ["BRAZE_HPM_RECORD"] = before
    return {"runs": rows, "resident_bytes": runtime.plan.resident_bytes if runtime.plan else 0,
            "reason": runtime.reason, "packed": packed_row}


#: The stall counters of the per-kernel table.
STALLS = ("stall_axi_read", "stall_axi_write", "stall_dep", "stall_fetch")


def cnn_table(outcome, config: Config) -> str:
    """The fused CNN's last batch per kernel: cycles, utilisation, DMA bytes and every stall counter."""
    report = outcome.fused.report
    header = (f"{'kernel':<28} {'cycles':>8} {'PE util':>8} {'DMA rd B':>9} {'DMA wr B':>9} "
              + " ".join(f"{name.removeprefix('stall_'):>9}" for name in STALLS))
    lines = [header, "-" * len(header)]
    for row in report.kernels:
        lines.append(f"{row.kernel[:28]:<28} {row.cycles:>8} {row.utilisation:>8.1%} {row.dma_read_bytes:>9} "
                     f"{row.dma_write_bytes:>9} " + " ".join(f"{row.counters[name]:>9}" for name in STALLS))
    totals = outcome.fused.totals
    lines.append(f"{'total (all batches)':<28} {totals.cycles:>8} {totals.utilisation(config):>8.1%} "
                 f"{totals.dma_read_bytes:>9} {totals.dma_write_bytes:>9}")
    return "\n".join(lines)


@dataclasses.dataclass
class ChainOutcome:
    """The digits CNN's layer fusion: the plan's ``conv_chain`` decision, and the plan with it forced."""

    decision: str                  # the conv_chain decisions in the session's own plan (its cost model)
    chosen: bool                   # the plan chains the layers on its own
    forced_decision: str
    kernels: list[str]             # of the forced plan
    totals: Any                    # demo.Totals of the forced plan
    golden_identical: bool | None


def run_cnn_chain(device_kind: str, *, samples: int, golden_check: bool) -> ChainOutcome:
    """The demo's digits CNN in one ``conv2d_chain`` kernel (``force_fusion``: the convolutions chained,
    the pooling and the FC layer in the chain), run as :func:`run_cnn` runs the fused plan, and the
    ``conv_chain`` decisions of the unforced plan (its own cost model's)."""
    import tempfile
    from pathlib import Path

    from braze import demo
    from braze.sw.compiler import models
    from braze.sw.runtime.session import InferenceSession

    model, _ = demo.train_model("cnn")
    data = models.load_digits_split()
    x = model.inputs(data.x_val[:samples])
    calibration = models.calibration_set(model, data)
    before = os.environ.get("BRAZE_HPM_RECORD")
    os.environ["BRAZE_HPM_RECORD"] = "0"
    try:
        with tempfile.TemporaryDirectory(prefix="braze-chain-") as directory:
            path = model.save(Path(directory) / "digits_cnn.onnx")

            def chain_decision(session) -> str:
                found = [str(d) for d in session.fusion_decisions if d.opportunity.kind == "conv_chain"]
                return "; ".join(found) if found else "no conv_chain opportunity"

            with InferenceSession(path, device=device_kind, config="default",
                                  calibration=calibration) as plain:
                plain.compile_for({plain.get_inputs()[0].name: x[:64].shape})
                decision = chain_decision(plain)
                chosen = any(d.opportunity.kind == "conv_chain" and d.chosen != "separate"
                             for d in plain.fusion_decisions)
                planner = plain.cost_model
            with InferenceSession(path, device=device_kind, config="default", calibration=calibration,
                                  cost_model=planner, force_fusion=("conv_chain",)) as forced:
                logits, totals, report = demo.run_session(forced, x, 64)
                forced_decision = chain_decision(forced)
            identical = None
            if golden_check and device_kind != "golden":
                with InferenceSession(path, device="golden", config="default", calibration=calibration,
                                      cost_model=planner, force_fusion=("conv_chain",)) as golden:
                    identical = bool(np.array_equal(logits, demo.run_session(golden, x, 64)[0]))
    finally:
        if before is None:
            del os.environ["BRAZE_HPM_RECORD"]
        else:
            os.environ["BRAZE_HPM_RECORD"] = before
    return ChainOutcome(decision, chosen, forced_decision, [row.kernel for row in report.kernels], totals,
                        identical)


#: Fresh processes that compile the CNN cold; the least time of each kind is reported.
COMPILE_REPEATS = 3


def compile_times(cost_model: str, repeats: int = COMPILE_REPEATS) -> dict:
    """The digits CNN's compile times (:func:`braze.sw.runtime.compile_bench.run_child`: cold, a second
    batch size, cached) under ``cost_model``, each the least of ``repeats`` fresh processes, as
    ``braze bench compile`` measures them.

    The least, because this bench runs on machines shared with other jobs (and often under ``nice``),
    where a run's wall-clock time is the compiler's plus whatever the scheduler gave others: one run
    measured 5.08 s cold where ``braze bench compile`` said 1.5 s.  ``cold_cpu_s`` (the process's CPU
    seconds) does not grow with the load; ``cold_runs`` lists every run's wall-clock time."""
    from braze.sw.runtime import compile_bench

    runs = [compile_bench.run_child("cnn", cost_model) for _ in range(repeats)]
    best = dict(runs[0])
    for key in ("cold_s", "second_s", "cached_s", "cold_cpu_s", "second_cpu_s", "cached_cpu_s"):
        best[key] = min(run[key] for run in runs)
    # The highest load seen, as braze bench compile prints it: it says whether any run was crowded.
    best["load_average"] = max(run["load_average"] for run in runs)
    best["cold_runs"] = " ".join(f"{run['cold_s']:.3f}" for run in runs) + " s"
    return best


def main(argv: Sequence[str] | None = None) -> int:
    """``braze bench kernels [--quick] [--device verilator] [--samples N]``."""

    parser = ArgumentParser(prog="braze bench kernels", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="verilator", help="device back end (default: verilator; golden "
                        "reports the timing model's cycles)")
    parser.add_argument("--quick", action="store_true", help="fewer GEMM shapes (those the last line needs), "
                        "one batch of the CNN, no golden comparison")
    parser.add_argument("--stream-calls", type=int, default=STREAM_CALLS, help="back-to-back calls of a "
                        f"small GEMM streamed and packed (default: {STREAM_CALLS}; 1: none)")
    parser.add_argument("--samples", type=int, default=None, help="CNN validation images (default: 256, "
                        "64 with --quick)")
    parser.add_argument("--config-override", default=None, metavar="FIELD=VALUE[,...]",
                        help="also run the GEMMs on each configuration with these fields changed (e.g. "
                        "weight_preload=1) and compare; the last line keeps the presets' values")
    parser.add_argument("--config-base", default=None, metavar="FIELD=VALUE[,...]",
                        help="with --config-override: compare against the configurations with these fields "
                        "changed instead of the presets, the override applied on top of them (e.g. "
                        "--config-base weight_preload=1 --config-override epilogue_overlap=1)")
    args = parser.parse_args(argv)
    if args.config_base and not args.config_override:
        parser.error("--config-base needs --config-override")
    override = ",".join(filter(None, (args.config_base, args.config_override)))
    specs = override_specs(override) if args.config_override else []   # fails before any run
    base_specs = override_specs(args.config_base) if args.config_base else []
    samples = args.samples or (64 if args.quick else 256)
    started = time.perf_counter()

    if args.stream_calls < 1:
        parser.error(f"--stream-calls must be at least 1, not {args.stream_calls}")
    gemms = run_gemms(args.device, CONFIGS, QUICK_SHAPES if args.quick else GEMM_SHAPES,
                      stream_calls=args.stream_calls)
    print(f"GEMMs on the {args.device} device (bias + requantize + ReLU fused, int8 out); "
          "bound = max(compute, bus) cycles")
    print(gemm_table(gemms))
    if args.stream_calls > 1:
        print()
        print(f"small GEMMs per call: isolated (above); streamed = steady state of {args.stream_calls} "
              "back-to-back calls in one program, pipelined, weights resident after the first call "
              "(cycles(N) - cycles(1)) / (N - 1); packed = the calls' rows in one kernel, run alone, / N; "
              f"pk+str = that kernel streamed {PACKED_GROUPS} times, steady state / N; "
              "(model) = the timing model's")
        print(stream_table(gemms))
    overridden = []
    if specs:
        base_rows = gemms
        if base_specs:
            base_rows = run_gemms(args.device, base_specs, QUICK_SHAPES if args.quick else GEMM_SHAPES,
                                  stream_calls=1)
            print(f"\nGEMMs with {args.config_base} on the {args.device} device")
            print(gemm_table(base_rows))
        overridden = run_gemms(args.device, specs, QUICK_SHAPES if args.quick else GEMM_SHAPES,
                               stream_calls=1 if base_specs else STREAM_CALLS)
        print(f"\nGEMMs with {override} on the {args.device} device")
        print(gemm_table(overridden))
        print(f"\nwithout / with {args.config_override}"
              + (f" (both with {args.config_base})" if base_specs else "")
              + " (model err: timing model's predicted / measured - 1)")
        print(override_table(base_rows, overridden))
        overridden = [*overridden, *(base_rows if base_specs else [])]

    print()
    config = Config.preset("default")
    cnn = run_cnn(args.device, samples=samples, golden_check=not args.quick, log=lambda line: None)
    print(f"digits CNN on {args.device}, config default, {samples} images in batches of 64; "
          f"planned by {cnn.fused.cost_model}")
    print(cnn_table(cnn, config))
    identical = {None: "not compared", True: "bit-identical", False: "DIFFER"}[cnn.golden_identical]
    print(f"fused vs unfused: cycles {cnn.unfused.totals.cycles} / {cnn.fused.totals.cycles} = "
          f"{cnn.cycle_ratio:.2f}x, external bytes {cnn.unfused.totals.external_bytes} / "
          f"{cnn.fused.totals.external_bytes} = {cnn.byte_ratio:.2f}x; outputs vs golden: {identical}")
    chain = run_cnn_chain(args.device, samples=samples, golden_check=not args.quick)
    chain_cycles = cnn.fused.totals.cycles / max(1, chain.totals.cycles)
    chain_bytes = cnn.fused.totals.external_bytes / max(1, chain.totals.external_bytes)
    print(f"layer fusion in the plan: {chain.decision}")
    print(f"forced (force_fusion=conv_chain): {chain.forced_decision}")
    print(f"  kernels {', '.join(chain.kernels)}: cycles {chain.totals.cycles}, external bytes "
          f"{chain.totals.external_bytes}, PE util {chain.totals.utilisation(config):.1%}; fused plan / "
          f"chained = {chain_cycles:.2f}x cycles, {chain_bytes:.2f}x bytes; outputs vs golden: "
          f"{ {None: 'not compared', True: 'bit-identical', False: 'DIFFER'}[chain.golden_identical] }")

    print()
    mlp = run_mlp_resident(args.device)
    first, last = mlp["runs"][0], mlp["runs"][-1]
    print(f"digits MLP at batch 1 on {args.device}, config default, {len(mlp['runs'])} runs of one session "
          f"with resident weights ({mlp['resident_bytes']} B resident"
          + (f"; none: {mlp['reason']}" if mlp["reason"] else "") + "): first run "
          f"{first['cycles']} cycles, {first['dma_read_bytes']} B read, "
          f"{first['dma_write_bytes']} B written; "
          f"run {len(mlp['runs'])} ({'warm' if last['warm'] else 'cold'}) {last['cycles']} cycles, "
          f"{last['dma_read_bytes']} B read, {last['dma_write_bytes']} B written; outputs vs a plain golden "
          f"session: {'bit-identical' if all(r['identical'] for r in mlp['runs']) else 'DIFFER'}")
    state = "warm" if last["pipelined_warm"] else "cold"
    print(f"  the same with the kernels pipelined (resident_weights='pipelined', one snapshot per device "
          f"run): run {len(mlp['runs'])} ({state}) {last['pipelined_cycles']} cycles")
    pack = mlp["packed"]
    state = "warm" if pack["warm"] else "cold"
    print(f"  {pack['requests']} batch-1 requests packed into one run ({state}, pipelined): {pack['cycles']} "
          f"cycles, "
          f"{pack['cycles'] / pack['requests']:.1f} per request; outputs vs separate golden runs: "
          f"{'bit-identical' if pack['identical'] else 'DIFFER'}")

    print()
    cost_model = "learned" if "hpm-learned" in cnn.fused.cost_model else "analytic"
    compiled = compile_times(cost_model)
    print(f"compile of the digits CNN ({cost_model} cost model, fresh process, best of {COMPILE_REPEATS}): "
          f"cold {compiled['cold_s']:.3f} s, CPU {compiled['cold_cpu_s']:.3f} s (batch {compiled['first']}, "
          f"{compiled['kernels_generated']} kernels generated; {compiled['cold_runs']}), second batch size "
          f"{compiled['second_s']:.3f} s (batch {compiled['second']}), cached {compiled['cached_s']:.3f} s; "
          f"load average {compiled['load_average']:.2f} on {os.cpu_count()} CPUs, nice {compiled['nice']}")

    def util(config_name: str, shape: tuple[int, int, int]) -> str:
        found = [row for row in gemms if row["config"] == config_name and row["shape"] == shape]
        return f"{100 * found[0]['utilisation']:.1f}" if found else "n/a"
    small = [row["over_bound"] for row in gemms if row["shape"][0] <= SMALL_M]
    streamed = [row["stream_over_bound"] for row in gemms if "stream_over_bound" in row]
    packed = [row["packed_streamed_over_bound"] for row in gemms if "packed_streamed_over_bound" in row]

    def worst(values: list[float]) -> str:
        return f"{max(values):.2f}" if values else "n/a"
    correct = all(row["correct"] for row in [*gemms, *overridden]) and cnn.golden_identical is not False \
        and all(run["identical"] for run in mlp["runs"]) and mlp["packed"]["identical"] \
        and chain.golden_identical is not False
    verdict = "bit-exact" if correct else "NOT bit-exact"
    print(f"({time.perf_counter() - started:.0f} s; every output {verdict})")
    print(f"kernels: cnn_util={100 * cnn.fused.totals.utilisation(config):.1f} "
          f"gemm64_large_util={util('large', (64, 64, 64))} gemm256_util={util('default', (256, 256, 256))} "
          f"small_gemm_worst_over_bound={max(small):.2f} "
          f"small_gemm_streamed_worst_over_bound={worst(streamed)} "
          f"small_gemm_packed_worst_over_bound={worst(packed)} "
          f"fusion_cycles={cnn.cycle_ratio:.2f} "
          f"fusion_bytes={cnn.byte_ratio:.2f} compile_cold_s={compiled['cold_s']:.3f} "
          f"compile_cold_cpu_s={compiled['cold_cpu_s']:.3f} "
          f"cnn_chain={'chosen' if chain.chosen else 'not_chosen'} chain_cycles={chain_cycles:.2f} "
          f"chain_bytes={chain_bytes:.2f}")
    return 0 if correct else 1
