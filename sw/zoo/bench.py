"""``braze bench zoo``: the model zoo from both of torch's exporters, on golden and verilator.

Per model and exporter (the QDQ model onnxruntime's quantizer writes): load+compile time (with an
empty kernel cache; the plans come from the ISA timing model on both devices), MACs
on the accelerator, cycles per inference on the golden device and on the verilator device at
batch 1..N, bit-exactness (golden against the frontend evaluator and against verilator), argmax
agreement and largest logit error against onnxruntime's run of the same model, accuracy on the
digits validation split; then each model's host operators and why they stay
on the host; then onnx's node tests in strict mode (Braze's own code only).

The last line is ``zoo: models=<n> passed=<n> min_chip_mac_pct=<x> strict_node_pass=<n>``: a model
passes when, from every exporter, its outputs are bit-identical golden vs frontend and golden vs
verilator and it meets its target (accuracy within 1 point of onnxruntime's QDQ run for the
CNNs, argmax agreement of at least 99% for the transformer and the mixer).
``min_chip_mac_pct`` is the smallest share of MACs on the accelerator over all models and exporters.
With ``--skip-nodes`` the strict count is the last one this command measured (stored under
``$BRAZE_CACHE_DIR/zoo``), and the line says so with ``strict_nodes=reused``.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from braze.isa import Config
from braze.isa.errors import ArgumentParser, BrazeError

from ..compiler.cache import KernelCache, cache_dir
from .export import EXPORTERS
from .models import MODEL_NAMES
from .report import ModelReport, format_reports, model_report

__all__ = ["main", "strict_node_pass", "summary_line"]


def _strict_store() -> Path:
    return cache_dir().parent / "zoo" / "strict_nodes.json"


def strict_node_pass(reuse: bool) -> tuple[int | None, str]:
    """The strict node-test pass count and where it came from (``"measured"`` or ``"reused ..."``)."""
    store = _strict_store()
    if reuse:
        try:
            saved = json.loads(store.read_text())
            return int(saved["passed"]), f"reused: measured {saved['when']} (onnx {saved['onnx']})"
        except (OSError, ValueError, KeyError, TypeError):
            return None, "reused: no earlier measurement stored"
    import onnx

    from ..runtime.conformance import run_node_tests

    summary = run_node_tests(strict=True)
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        store.write_text(json.dumps({"passed": summary.passed, "total": summary.total,
                                     "onnx": onnx.__version__, "when": time.strftime("%Y-%m-%d %H:%M:%S")}))
    except OSError:
        pass
    return summary.passed, f"measured: {summary.summary_line()}"


def summary_line(reports: Sequence[ModelReport], failed: Sequence[str], strict: int | None,
                 reused: bool) -> str:
    """The benchmark's last line (see the module documentation)."""
    names = sorted({r.name for r in reports} | set(failed))
    passed = [name for name in names if name not in failed
              and all(r.passed for r in reports if r.name == name)]
    chip = min((100 * r.chip_mac_fraction for r in reports), default=0.0)
    line = (f"zoo: models={len(names)} passed={len(passed)} min_chip_mac_pct={chip:.1f} "
            f"strict_node_pass={'na' if strict is None else strict}")
    return line + (" strict_nodes=reused" if reused else "")


def main(argv: Sequence[str] | None = None) -> int:
    """``braze bench zoo [MODEL...] [--exporter E] [--batches N] [--no-verilator] [--images N] ...``."""
    parser = ArgumentParser(prog="braze bench zoo", description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help=f"zoo models (default all: {', '.join(MODEL_NAMES)})")
    parser.add_argument("--exporter", action="append", choices=EXPORTERS,
                        help="torch exporter(s) to take the models from (default both)")
    parser.add_argument("--config", default="default", help="preset name, PRESET:field=value,... or JSON")
    parser.add_argument("--batches", type=int, default=4,
                        help="measure cycles at batch 1..N on golden and verilator (default 4)")
    parser.add_argument("--no-verilator", action="store_true",
                        help="golden device only (then no model passes: verilator exactness is unchecked)")
    parser.add_argument("--images", type=int, help="validation images evaluated on golden (default all)")
    parser.add_argument("--skip-nodes", action="store_true",
                        help="reuse the last measured strict node-test count instead of running the set")
    parser.add_argument("--json", type=Path, help="also write the reports as JSON")
    args = parser.parse_args(argv)
    unknown = [m for m in args.models if m not in MODEL_NAMES]
    if unknown:
        raise BrazeError(f"no zoo model {', '.join(map(repr, unknown))}; "
                         f"the zoo has {', '.join(MODEL_NAMES)}")
    if args.batches < 1:
        parser.error(f"argument --batches: must be at least 1, not {args.batches}")
    if args.images is not None and args.images < 1:
        parser.error(f"argument --images: must be at least 1, not {args.images}")
    config = Config.parse(args.config)
    exporters = args.exporter or list(EXPORTERS)
    reports: list[ModelReport] = []
    failed: dict[str, str] = {}
    for name in args.models or MODEL_NAMES:
        for exporter in exporters:
            started = time.perf_counter()
            try:
                with tempfile.TemporaryDirectory() as directory:     # compile time with a cold kernel cache
                    report = model_report(name, exporter, config=config, images=args.images,
                                          batches=range(1, args.batches + 1), verilator=not args.no_verilator,
                                          cache=KernelCache(directory))
            except BrazeError as error:     # a model that does not load or compile is a finding, not a crash
                failed[name] = f"{name} ({exporter}): {type(error).__name__}: {error}"
                print(f"FAILED {failed[name]}", flush=True)
                continue
            reports.append(report)
            print(f"[{name} {exporter}: {time.perf_counter() - started:.1f} s]", flush=True)
    print()
    print(format_reports(reports))
    print()
    batches = range(1, args.batches + 1)
    header = f"{'cycles/inference':<26}" + "".join(f"{'b=' + str(b) + ' golden':>13}{'verilator':>11}"
                                                   for b in batches)
    print(header)
    for r in reports:
        cells = "".join(f"{r.cycles_golden[b]:>13,.0f}"
                        + (f"{r.cycles_verilator[b]:>11,.0f}" if b in r.cycles_verilator else f"{'-':>11}")
                        for b in batches)
        print(f"{r.name + ' (' + r.exporter + ')':<26}{cells}")
    for r in reports:
        print()
        print(r.table())
    for message in failed.values():
        print(f"\nFAILED {message}")
    strict, source = strict_node_pass(args.skip_nodes)
    print(f"\nstrict node tests: {'-' if strict is None else strict} passed ({source})")
    if args.json:
        args.json.write_text(json.dumps({"reports": [dict(dataclasses.asdict(r), passed=r.passed,
                                                          chip_mac_fraction=r.chip_mac_fraction)
                                                     for r in reports],
                                         "failed": failed, "strict_node_pass": strict,
                                         "strict_node_source": source}, indent=2))
    print(summary_line(reports, list(failed), strict, args.skip_nodes))
    return 0
