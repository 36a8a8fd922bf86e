"""The main job: digits models trained, exported to ONNX, compiled and run on the accelerator.

``braze demo`` trains an MLP and a small CNN on scikit-learn's bundled digits
(:mod:`braze.sw.compiler.models`, numpy only, no downloads), exports both to ONNX,
quantizes them to int8 on training images, compiles each twice -- fused and
one kernel per operator -- runs the validation set on a device (the
Verilator-simulated RTL by default) and prints, per model: the float and int8
accuracies, how often they agree, and, from the hardware's counters, cycles
and external-memory bytes per inference fused against unfused.  On any device
but ``golden`` it also runs the reference model and checks that the outputs
are bit-identical.

``braze demo --kernel`` is the first demo: the sample fused-GEMM kernel
assembled, run on the reference model, checked against numpy, with its
counters (:func:`run_kernel_demo`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from braze.isa import COUNTERS, Config, Memory, parse_snapshot
from braze.isa.arith import epilogue
from braze.isa.asm import assemble, disassemble
from braze.isa.encoding import Activation, encode_program
from braze.isa.errors import ArgumentParser, BrazeError
from braze.isa.model import Machine

KERNEL = "fused_gemm.s"
#: The models of the main job, in the order they run.
MODELS = ("mlp", "cnn")
#: Largest accuracy difference between the int8 model on the accelerator and the float model.
ACCURACY_TOLERANCE = 0.01
DEFAULT_DEVICE = "verilator"


# ---------------------------------------------------------------------------------------------------
# The sample kernel (``braze demo --kernel``)
# ---------------------------------------------------------------------------------------------------

def build_kernel(config: Config) -> tuple[str, list]:
    source = resources.files("braze").joinpath("examples", KERNEL).read_text()
    return source, assemble(source, filename=KERNEL, defines=config.asm_constants())


def run_kernel_demo(config: Config, *, seed: int = 0, verbose: bool = True) -> dict:
    """Run the sample kernel; returns what it printed as data (used by the tests)."""
    source, program = build_kernel(config)
    matmul = next(insn for insn in program if insn.format.mnemonic == "matmul")
    load_a, load_b, load_params = program[0], program[4], program[5]
    store = next(insn for insn in program if insn.format.mnemonic == "store")
    snapshot = next(insn for insn in program if insn.format.mnemonic == "counters")
    m, n, k = matmul.m, matmul.n, matmul.k

    rng = np.random.default_rng(seed)
    a = rng.integers(-128, 128, size=(m, k), dtype=np.int8)
    b = rng.integers(-128, 128, size=(k, n), dtype=np.int8)
    bias = rng.integers(-2000, 2000, size=n, dtype=np.int32)
    mult = rng.integers(1 << 14, 1 << 15, size=n, dtype=np.int32)
    shift = np.full(n, 24, dtype=np.int32)

    machine = Machine(config)
    machine.write_dram(0, encode_program(program))
    machine.write_dram(load_a.dram, a.tobytes())
    machine.write_dram(load_b.dram, b.tobytes())
    machine.write_dram(load_params.dram, np.stack([bias, mult, shift]).astype("<i4").tobytes())
    result = machine.run(0)

    out = np.frombuffer(machine.read_dram(store.dram, m * n), dtype=np.int8).reshape(m, n)
    counters = parse_snapshot(machine.read_dram(snapshot.dram, len(COUNTERS) * 8))
    expected = epilogue(a.astype(np.int64) @ b.astype(np.int64), bias=bias, mult=mult, shift=shift,
                        act=Activation.RELU, out=Memory.SPAD)
    matches = bool(np.array_equal(out, expected))

    if verbose:
        macs = counters["macs"]
        busy = counters["array_busy"]
        print(f"Braze demo: fused GEMM kernel on the reference model, config {config.name!r} "
              f"({config.rows}x{config.cols} array)")
        print(f"  OUT = relu(requantize(A[{m}x{k}] @ B[{k}x{n}] + bias))  — {len(program)} instructions")
        print()
        print(disassemble(program, offsets=True))
        print()
        print("Result (int8):")
        print(np.array2string(out, max_line_width=120))
        print(f"Matches numpy: {'yes' if matches else 'NO'}")
        print()
        print("Counters at the snapshot (exact ones must equal the RTL's; "
              "cycle counts are the timing model's prediction):")
        width = max(len(spec.name) for spec in COUNTERS)
        for spec in COUNTERS:
            value = counters[spec.name]
            if value or spec.exact:
                kind = "exact" if spec.exact else "model"
                print(f"  {spec.name:<{width}}  {value:>10}  {kind}")
        if busy:
            print(f"PE utilisation while busy: {macs / (busy * config.rows * config.cols):.1%}; "
                  f"over the whole run: {macs / (counters['cycles'] * config.rows * config.cols):.1%}")
        print(f"Total cycles (timing model): {result.cycles}")
    return {"out": out, "expected": expected, "matches": matches, "counters": counters,
            "source": source, "program": program}


# ---------------------------------------------------------------------------------------------------
# The main job
# ---------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Totals:
    """Counter totals of every kernel over every device run of one validation pass."""

    inferences: int
    cycles: int
    macs: int
    dma_read_bytes: int
    dma_write_bytes: int
    kernels: int
    device_runs: int

    @property
    def external_bytes(self) -> int:
        """External-memory traffic: every byte the DMA read or wrote."""
        return self.dma_read_bytes + self.dma_write_bytes

    @property
    def cycles_per_inference(self) -> float:
        return self.cycles / self.inferences

    @property
    def bytes_per_inference(self) -> float:
        return self.external_bytes / self.inferences

    def utilisation(self, config: Config) -> float:
        """MACs done over MACs the PE array could have done in the kernels' cycles."""
        return self.macs / max(1, self.cycles * config.rows * config.cols)


@dataclasses.dataclass(frozen=True)
class Variant:
    """One compilation (fused or unfused) of a model run over the samples on the device."""

    logits: np.ndarray
    totals: Totals
    #: The report of the last batch (per-kernel table).
    report: Any
    #: Kernel name -> kernel, as compiled for the last batch.
    kernels: dict
    #: Bit-identical to the golden device on every sample; None when the device is golden.
    golden_identical: bool | None
    #: Wall time of compiling (for every batch shape) and of running on the device.
    compile_seconds: float
    run_seconds: float
    #: Which cost model planned it, and why (the session's own words).
    cost_model: str = ""
    #: The tilings that cost model chose against the kernel library's own (last batch shape).
    tilings: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class ModelOutcome:
    """What the main job found for one model."""

    name: str
    description: str
    device: str
    config: Config
    labels: np.ndarray
    float_logits: np.ndarray
    fused: Variant
    unfused: Variant

    @property
    def samples(self) -> int:
        return len(self.labels)

    @property
    def float_accuracy(self) -> float:
        return float((self.float_logits.argmax(axis=1) == self.labels).mean())

    @property
    def int8_accuracy(self) -> float:
        return float((self.fused.logits.argmax(axis=1) == self.labels).mean())

    @property
    def agreement(self) -> float:
        """Fraction of samples where the int8 model predicts what the float model predicts."""
        return float((self.fused.logits.argmax(axis=1) == self.float_logits.argmax(axis=1)).mean())

    @property
    def accuracy_ok(self) -> bool:
        # A hair of slack for the float comparison of two exact fractions.
        return abs(self.int8_accuracy - self.float_accuracy) <= ACCURACY_TOLERANCE + 1e-12

    @property
    def cycle_ratio(self) -> float:
        """Unfused over fused cycles: above 1 when fusion saves time."""
        return self.unfused.totals.cycles / self.fused.totals.cycles

    @property
    def byte_ratio(self) -> float:
        """Unfused over fused external-memory bytes: above 1 when fusion saves traffic."""
        return self.unfused.totals.external_bytes / self.fused.totals.external_bytes

    @property
    def golden_identical(self) -> bool | None:
        checks = [v.golden_identical for v in (self.fused, self.unfused) if v.golden_identical is not None]
        return all(checks) if checks else None

    @property
    def passed(self) -> bool:
        """The issue's acceptance for this model: accuracy, bit-exactness, and fusion saving both."""
        return (self.accuracy_ok and self.golden_identical is not False
                and self.fused.totals.cycles < self.unfused.totals.cycles
                and self.fused.totals.external_bytes < self.unfused.totals.external_bytes)


def train_model(name: str, *, seed: int = 0):
    """Train the named demo model; returns ``(model, training log)``."""
    from braze.sw.compiler import models

    trainers = {"mlp": models.train_mlp, "cnn": models.train_cnn}
    if name not in trainers:
        raise BrazeError(f"no demo model named {name!r}; the models are {', '.join(MODELS)}")
    return trainers[name](models.load_digits_split(), seed=seed)


def batches(count: int, batch: int) -> list[slice]:
    """``count`` samples in batches of ``batch``; only the last may be smaller."""
    if batch < 1:
        raise BrazeError(f"batch size must be at least 1, not {batch}")
    return [slice(start, min(start + batch, count)) for start in range(0, count, batch)]


def run_session(session, x: np.ndarray, batch: int) -> tuple[np.ndarray, Totals, Any]:
    """Run ``x`` through an InferenceSession in batches; returns logits, counter totals, last report."""
    outputs, reports = [], []
    for part in batches(len(x), batch):
        (logits,) = session.run(None, {session.get_inputs()[0].name: x[part]})
        outputs.append(logits)
        reports.append(session.report())
    totals = Totals(
        inferences=len(x),
        cycles=sum(report.total_cycles for report in reports),
        macs=sum(report.total_macs for report in reports),
        dma_read_bytes=sum(row.dma_read_bytes for report in reports for row in report.kernels),
        dma_write_bytes=sum(row.dma_write_bytes for report in reports for row in report.kernels),
        kernels=len(reports[-1].kernels),
        device_runs=sum(report.device_runs for report in reports))
    return np.concatenate(outputs), totals, reports[-1]


def run_model(name: str, *, device: Any = DEFAULT_DEVICE, config: Config | str = "default",
              samples: int | None = None, batch: int = 64, seed: int = 0, workdir: str | Path | None = None,
              golden_check: bool = True, log: Callable[[str], None] = print) -> ModelOutcome:
    """Train, export, compile (fused and unfused) and run one demo model on the validation set.

    ``device`` is a back-end name (each compilation opens and closes its own device) or an
    open :class:`~braze.sim.device.Device`, which the two compilations use one after the other
    (each loads its weights and programs before its first run) and which stays open.
    """
    from braze.sw.compiler import models
    from braze.sw.runtime.session import InferenceSession

    config = config if isinstance(config, Config) else Config.parse(config)
    device_name = device if isinstance(device, str) else device.kind
    data = models.load_digits_split()
    count = len(data.x_val) if samples is None else samples
    if not 1 <= count <= len(data.x_val):
        raise BrazeError(f"--samples must lie in [1, {len(data.x_val)}] (the validation set), not {count}")

    started = time.perf_counter()
    model, training = train_model(name, seed=seed)
    log(f"[{name}] {model.describe()}: trained in {time.perf_counter() - started:.1f} s, float validation "
        f"accuracy {training.val_accuracy:.2%} on all {len(data.x_val)} samples")

    with contextlib.ExitStack() as stack:
        directory = Path(workdir) if workdir is not None else Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="braze-demo-")))
        directory.mkdir(parents=True, exist_ok=True)
        path = model.save(directory / f"digits_{name}.onnx")
        difference = models.check_export(model, path, data.x_val)
        kept = "" if workdir is not None else " (temporary: --output DIR keeps it)"
        log(f"[{name}] exported {path}{kept} (opset {models.OPSET}); onnxruntime equals numpy "
            f"(largest logit difference {difference:.1e})")

        x = model.inputs(data.x_val[:count])
        labels = np.asarray(data.y_val[:count])
        float_logits = models.run_onnxruntime(path, x)
        calibration = models.calibration_set(model, data, seed=seed)

        def compile_and_run(fuse: bool) -> Variant:
            label = "fused" if fuse else "unfused"
            t0 = time.perf_counter()
            session = InferenceSession(path, device=device, config=config, fuse=fuse, calibration=calibration)
            try:
                input_name = session.get_inputs()[0].name
                for shape in sorted({x[part].shape for part in batches(len(x), batch)}):
                    session.compile_for({input_name: shape})
                compiled_in = time.perf_counter() - t0
                logits, totals, report = run_session(session, x, batch)
                kernels = dict(session.kernels)
                cost_model = session.cost_model_description()
                planner = session.cost_model
                tilings = tuple(str(d) for d in session.tiling_decisions if d.changed)
            finally:
                if isinstance(device, str):
                    session.close()
            seconds = time.perf_counter() - t0 - compiled_in
            identical = None
            if golden_check and device_name != "golden":
                # The same cost model plans both, so that both run the same kernels.
                with InferenceSession(path, device="golden", config=config, fuse=fuse,
                                      calibration=calibration, cost_model=planner) as golden:
                    golden_logits, _, _ = run_session(golden, x, batch)
                identical = bool(np.array_equal(logits, golden_logits))
            log(f"[{name}] {label}: {totals.kernels} kernels, compiled in {compiled_in:.2f} s; {count} "
                f"samples on {device_name} in {totals.device_runs} device run(s), {seconds:.1f} s"
                + ("" if identical is None else
                   f"; golden outputs {'bit-identical' if identical else 'DIFFER'}"))
            return Variant(logits, totals, report, kernels, identical, compiled_in, seconds, cost_model,
                           tilings)

        fused = compile_and_run(True)
        unfused = compile_and_run(False)
    return ModelOutcome(name, model.describe(), device_name, config, labels, float_logits, fused, unfused)


def _format_count(value: float) -> str:
    return f"{value:,.0f}"


def format_table(outcomes: Sequence[ModelOutcome]) -> str:
    """The main job's result table (one row per model) and the acceptance lines under it."""
    header = ("model", "samples", "float acc", "int8 acc", "agree", "cycles/inf fused", "unfused", "ratio",
              "ext bytes/inf fused", "unfused", "ratio", "PE util")
    rows = []
    for o in outcomes:
        rows.append((o.name, str(o.samples), f"{o.float_accuracy:.2%}", f"{o.int8_accuracy:.2%}",
                     f"{o.agreement:.2%}",
                     _format_count(o.fused.totals.cycles_per_inference),
                     _format_count(o.unfused.totals.cycles_per_inference), f"{o.cycle_ratio:.2f}x",
                     _format_count(o.fused.totals.bytes_per_inference),
                     _format_count(o.unfused.totals.bytes_per_inference), f"{o.byte_ratio:.2f}x",
                     f"{o.fused.totals.utilisation(o.config):.1%}"))
    widths = [max(len(header[i]), *(len(row[i]) for row in rows)) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(cells, widths, strict=True)))
             for cells in (header, ["-" * w for w in widths], *rows)]
    lines.append("ratios are unfused / fused (above 1: fusion saves); PE util is the fused run's "
                 "MACs / (cycles x array size)")
    lines.append("")
    for o in outcomes:
        checks = [
            f"int8 within {100 * ACCURACY_TOLERANCE:g} pp of float: {'yes' if o.accuracy_ok else 'NO'} "
            f"({100 * (o.int8_accuracy - o.float_accuracy):+.2f} pp)",
            f"fusion: {'fewer' if o.fused.totals.cycles < o.unfused.totals.cycles else 'NOT fewer'} cycles, "
            f"{'fewer' if o.fused.totals.external_bytes < o.unfused.totals.external_bytes else 'NOT fewer'} "
            f"external bytes",
        ]
        if o.golden_identical is None:
            checks.append("golden vs device: not compared (the device is golden)")
        else:
            verdict = "bit-identical" if o.golden_identical else "OUTPUTS DIFFER"
            checks.append(f"golden vs {o.device}: {verdict} (fused and unfused, {o.samples} samples)")
        lines.append(f"{o.name}: " + "; ".join(checks))
    return "\n".join(lines)


def run_main_demo(*, device: str = DEFAULT_DEVICE, config: Config | str = "default",
                  models: Sequence[str] = MODELS, samples: int | None = None, batch: int = 64, seed: int = 0,
                  workdir: str | Path | None = None, golden_check: bool = True,
                  out: TextIO | None = None) -> list[ModelOutcome]:
    """The main job for each of ``models``; prints progress and the table to ``out`` (stdout)."""
    out = out or sys.stdout
    config = config if isinstance(config, Config) else Config.parse(config)

    def log(line: str) -> None:
        print(line, file=out, flush=True)

    from braze.sim.device import open_device

    log(f"Braze demo: digits models on the {device} device, config {config.name!r} "
        f"({config.rows}x{config.cols} array)")
    started = time.perf_counter()
    # One device for every model and compilation: a simulator process starts once.
    with open_device(device, config) as shared:
        log(f"{device} device ready in {time.perf_counter() - started:.1f} s")
        outcomes = [run_model(name, device=shared, config=config, samples=samples, batch=batch, seed=seed,
                              workdir=workdir, golden_check=golden_check, log=log) for name in models]
    log("")
    log(format_table(outcomes))
    for outcome in outcomes:
        last = batches(outcome.samples, batch)[-1]
        log("")
        log(f"{outcome.name}, fused, per kernel (last batch: {last.stop - last.start} samples):")
        log(str(outcome.fused.report))
    log("")
    log(learned_model_table(outcomes, device, config))
    return outcomes


def learned_model_table(outcomes: Sequence[ModelOutcome], device: str, config: Config) -> str:
    """The hardware performance model at work: each fused kernel's measured cycles beside the
    analytic and the learned predictions, and the cost model that planned each compilation."""
    from braze.sw.hpm import MemorySystem, load_model
    from braze.sw.hpm.model import error_pct

    lines = ["Hardware performance model (learned from the RTL's counters):"]
    for outcome in outcomes:
        lines.append(f"  {outcome.name} fused was planned by {outcome.fused.cost_model}")
        for decision in outcome.fused.tilings:
            lines.append(f"    {decision}")
    model = load_model(device)
    if model is None or not model.covers(config, device):
        lines.append(f"  no learned model covers {config.name} on {device}: `braze hpm calibrate` then "
                     f"`braze hpm train` make one")
        return "\n".join(lines)
    meta = model.metadata
    lines.append(f"  model: {model.regressor}, trained on {meta['rows']} runs of {len(meta['families'])} "
                 f"kernel families ({', '.join(meta['configs'])}); `braze hpm calibrate` and "
                 f"`braze hpm train` remake it")
    if meta.get("left_out_families"):
        left_out = ", ".join(meta["left_out_families"])
        lines.append(f"  trained without {left_out} (priced by the analytic model; `braze hpm train "
                     f"--leave-out` as the shipped model was made)")
    lines.append(f"  {'model':6} {'kernel':28} {'measured':>9} {'analytic':>9} {'error':>7} {'learned':>9} "
                 f"{'error':>7}")
    errors: dict[str, list[float]] = {"analytic": [], "learned": []}
    for outcome in outcomes:
        for row in outcome.fused.report.kernels:
            kernel = outcome.fused.kernels[row.kernel]
            learned = model.predict(kernel, MemorySystem.nominal(config)).cycles
            analytic_error = error_pct(row.predicted_cycles, row.cycles)
            learned_error = error_pct(learned, row.cycles)
            errors["analytic"].append(abs(analytic_error))
            errors["learned"].append(abs(learned_error))
            lines.append(f"  {outcome.name:6} {row.kernel[:28]:28} {row.cycles:9d} {row.predicted_cycles:9d} "
                         f"{analytic_error:+6.1f}% {learned:9.0f} {learned_error:+6.1f}%")
    lines.append(f"  mean |error|: analytic {np.mean(errors['analytic']):.1f}%, learned "
                 f"{np.mean(errors['learned']):.1f}% (kernels of models it never saw)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``braze demo``."""
    parser.add_argument("--device", default=DEFAULT_DEVICE,
                        help=f"device back end: golden, amaranth or verilator (default: {DEFAULT_DEVICE})")
    parser.add_argument("--config", default="default", help="preset name, PRESET:field=value,... or JSON")
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated models to run (default: {','.join(MODELS)})")
    parser.add_argument("--samples", type=int, default=None,
                        help="validation samples to run (default: the whole validation set)")
    parser.add_argument("--batch", type=int, default=64, help="samples per device run (default: 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed of training (and of --kernel's inputs)")
    parser.add_argument("--output", type=Path, default=None,
                        help="directory to keep the exported ONNX models in (default: a temporary one)")
    parser.add_argument("--no-golden-check", dest="golden_check", action="store_false",
                        help="skip the bit-for-bit comparison with the golden device")
    parser.add_argument("--kernel", action="store_true",
                        help="instead, run the sample fused-GEMM kernel on the reference model")
    return parser


def build_parser() -> argparse.ArgumentParser:
    return add_arguments(ArgumentParser(
        prog="braze demo", description="The main job: digits models on the accelerator, fused vs unfused."))


def main(args: argparse.Namespace | Sequence[str] | None = None) -> int:
    """``braze demo``: 0 when every acceptance check passes; takes parsed arguments or an argv list."""
    if args is None or not isinstance(args, argparse.Namespace):
        args = build_parser().parse_args(args)
    # Fill what a caller's parser did not declare with this parser's defaults.
    options = vars(build_parser().parse_args([])) | vars(args)
    if options["kernel"]:
        outcome = run_kernel_demo(Config.parse(options["config"]), seed=options["seed"])
        return 0 if outcome["matches"] else 1
    names = [name.strip() for name in options["models"].split(",") if name.strip()]
    unknown = [name for name in names if name not in MODELS]
    if unknown or not names:
        raise BrazeError(f"--models: unknown model(s) {unknown or names}; the models are {', '.join(MODELS)}")
    outcomes = run_main_demo(device=options["device"], config=options["config"], models=names,
                             samples=options["samples"], batch=options["batch"], seed=options["seed"],
                             workdir=options["output"], golden_check=options["golden_check"])
    return 0 if all(outcome.passed for outcome in outcomes) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrazeError as error:
        print(f"braze demo: error: {error}", file=sys.stderr)
        sys.exit(2)
