"""braze bench sim: how fast the Verilator co-simulation builds and runs.

For each configuration it measures

* the Verilator build of the harness from clean (in a fresh cache directory unless ``--no-clean``)
  and from the cache (the lookup a second device open pays), and the simulator start;
* simulated cycles per wall-clock second of a long GEMM (:func:`braze.sw.kernels.gemm`) run
  as a program would be: inputs written, the run, outputs read back -- and of the run alone;
* the per-run overhead of the device: write and run a one-instruction program (``halt``),
  mean of ``--runs`` runs.

Targets (issue 4): at least 200,000 cycles/s on ``default``; under 50 ms per-run overhead.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Sequence

import numpy as np

from braze.isa import Config, encode_program
from braze.isa.asm import assemble

__all__ = ["bench_config", "main", "GEMM_SHAPES"]

#: GEMM of each preset's benchmark (M, K, N): long enough that the run dwarfs the device's overhead.
GEMM_SHAPES = {"tiny": (64, 64, 64), "default": (256, 256, 256), "large": (512, 512, 512)}


@contextlib.contextmanager
def _cache_root(path: str | None):
    previous = os.environ.get("BRAZE_CACHE_DIR")
    if path is not None:
        os.environ["BRAZE_CACHE_DIR"] = path
    try:
        yield
    finally:
        if path is not None:
            if previous is None:
                del os.environ["BRAZE_CACHE_DIR"]
            else:
                os.environ["BRAZE_CACHE_DIR"] = previous


def bench_config(config: Config, *, clean: bool = True, runs: int = 50,
                 gemm_shape: tuple[int, int, int] | None = None, log=print) -> dict:
    """Measure one configuration; returns the numbers by name."""
    from braze.sw.kernels import gemm, run_kernel

    from .build import build_harness
    from .verilator_device import VerilatorDevice

    result: dict = {"config": config.name}
    with tempfile.TemporaryDirectory(prefix="braze-bench-cache-") as scratch, \
            _cache_root(scratch if clean else None):
        began = time.perf_counter()
        build = build_harness(config)
        result["build_s"] = time.perf_counter() - began
        result["build_cached"] = build.cached
        result["generate_s"] = build.seconds.get("generate", 0.0)
        began = time.perf_counter()
        again = build_harness(config)
        assert again.cached
        result["cache_lookup_s"] = time.perf_counter() - began
        log(f"{config.name}: build {result['build_s']:.1f} s ({'cached' if build.cached else 'clean'}), "
            f"cache lookup {result['cache_lookup_s'] * 1000:.0f} ms")

        began = time.perf_counter()
        with VerilatorDevice(config, timeout=3600) as device:
            result["open_s"] = time.perf_counter() - began

            m, k, n = gemm_shape or GEMM_SHAPES.get(config.name, (256, 256, 256))
            kernel = gemm(config, m, k, n)
            rng = np.random.default_rng(0)
            inputs = {op.name: rng.integers(-128, 128, size=op.shape).astype(op.dtype)
                      for op in kernel.inputs()}
            began = time.perf_counter()
            outcome = run_kernel(device, kernel, inputs)
            wall = time.perf_counter() - began
            cycles = device.last_run_cycles     # the whole run (the counters restart at snapshots)
            expected = inputs["A"].astype(np.int64) @ inputs["B"].astype(np.int64)
            output = next(iter(outcome.outputs.values()))
            result["gemm_correct"] = bool(np.array_equal(np.clip(expected, -128, 127), output))
            result["gemm"] = f"{m}x{k}x{n}"
            result["gemm_cycles"] = cycles
            result["gemm_wall_s"] = wall
            result["cycles_per_s"] = cycles / wall
            # The run alone: the same program again, its inputs already in memory.
            began = time.perf_counter()
            device.run(None, base=_program_base(kernel))
            run_wall = time.perf_counter() - began
            result["cycles_per_s_run_only"] = device.last_run_cycles / run_wall
            log(f"{config.name}: GEMM {result['gemm']} {cycles} cycles in {wall:.2f} s "
                f"({result['cycles_per_s']:,.0f} cycles/s whole run, "
                f"{result['cycles_per_s_run_only']:,.0f} cycles/s run only); "
                f"correct={result['gemm_correct']}")

            halt = encode_program(assemble("halt"))
            base = device.memory_size - 4096
            device.run(halt, base=base)
            times = []
            for _ in range(runs):
                began = time.perf_counter()
                device.run(halt, base=base)
                times.append(time.perf_counter() - began)
            result["overhead_ms"] = statistics.mean(times) * 1000
            result["overhead_ms_median"] = statistics.median(times) * 1000
            log(f"{config.name}: per-run overhead {result['overhead_ms']:.1f} ms mean over {runs} runs")
    return result


def _program_base(kernel) -> int:
    from braze.sw.kernels import OPERAND_ALIGN

    return -(-kernel.data_end // OPERAND_ALIGN) * OPERAND_ALIGN


def _table(results: list[dict]) -> str:
    columns = [
        ("config", "config", "{}"),
        ("build (s)", "build_s", "{:.1f}"),
        ("cached (ms)", "cache_lookup_s", lambda v: f"{v * 1000:.0f}"),
        ("open (s)", "open_s", "{:.2f}"),
        ("GEMM", "gemm", "{}"),
        ("cycles", "gemm_cycles", "{:,}"),
        ("cycles/s whole", "cycles_per_s", "{:,.0f}"),
        ("cycles/s run", "cycles_per_s_run_only", "{:,.0f}"),
        ("overhead (ms)", "overhead_ms", "{:.1f}"),
        ("correct", "gemm_correct", "{}"),
    ]
    cells = [[title for title, _, _ in columns]]
    for result in results:
        row = []
        for _, key, fmt in columns:
            value = result.get(key, "")
            row.append(fmt(value) if callable(fmt) else fmt.format(value))
        cells.append(row)
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="braze bench sim", description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["default", "large"], metavar="CONFIG",
                        help="presets or config specs to measure (default: default large)")
    parser.add_argument("--no-clean", dest="clean", action="store_false",
                        help="use the normal build cache instead of building from clean")
    parser.add_argument("--runs", type=int, default=50, help="runs averaged for the per-run overhead")
    parser.add_argument("--gemm", type=int, nargs=3, metavar=("M", "K", "N"),
                        help="GEMM shape of the speed run")
    args = parser.parse_args(argv)
    results = []
    for spec in args.configs:
        config = Config.parse(spec)
        results.append(bench_config(config, clean=args.clean, runs=args.runs,
                                    gemm_shape=tuple(args.gemm) if args.gemm else None))
    print()
    print(_table(results))
    return 0
