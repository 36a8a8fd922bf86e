"""``braze bench kernels``: how close the kernels run to the roofline, on the verilator device.

In one run (issue 12, item 5):

* **GEMMs**: each shape of :data:`GEMM_SHAPES` (M x K x N, int8, bias + requantize + ReLU fused, int8
  out -- the kernel library's :func:`~braze.sw.compiler.kernels.gemm`) on each configuration
  (``default`` and ``large``), checked bit for bit against numpy, with cycles and utilisation from the
  kernel's COUNTERS snapshot and the shape's **bound**: max(compute cycles = MACs / array size,
  bus cycles = bytes of its operands (A, B, params, out) / bytes the DMA bus moves per cycle).
  ``over bound`` is cycles / bound (1.0 would be a kernel at the roofline).
* **the digits CNN** (:mod:`braze.demo`'s model and flow) compiled fused and unfused with the cost model
  a verilator session plans with and run on the validation images: the fused per-kernel table with the
  stall counters, PE utilisation, and the unfused / fused ratios of cycles and external bytes.
* **compile time** of the digits CNN under that cost model (:mod:`braze.sw.runtime.compile_bench`, in a
  fresh process): cold, a second batch size, and from a warm kernel cache.

It ends with one line::

    kernels: cnn_util=<pct> gemm64_large_util=<pct> gemm256_util=<pct> small_gemm_worst_over_bound=<x>
             fusion_cycles=<x> fusion_bytes=<x> compile_cold_s=<x>

where the small GEMMs are those with M <= 16 (on both configurations) and ``gemm256_util`` is 256^3 on
``default``.  Targets (issue 12): CNN >= 60%, 64^3 on large >= 85%, 256^3 >= 95%, small shapes
<= 1.5x their bound, fusion >= 1.5x cycles and >= 2x bytes, cold compile < 1 s.

``--config-override FIELD=VALUE[,...]`` (e.g. ``weight_preload=1``) also runs the GEMMs on each
configuration with the override applied (named ``<preset>_<override>``) and prints them against the
plain rows: cycles and utilisation off/on and the timing model's error.  The override rows never enter
the last line, whose values stay those of the presets.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence

import numpy as np

from braze.isa import Activation, Config, Memory
from braze.isa.arith import epilogue
from braze.isa.errors import ArgumentParser

__all__ = ["GEMM_SHAPES", "CONFIGS", "gemm_bound", "run_gemms", "run_cnn", "override_specs", "override_table",
           "main"]

#: (M, K, N) of the GEMMs measured, as the issue lists them.
GEMM_SHAPES = ((1, 64, 10), (1, 256, 256), (16, 16, 16), (64, 64, 64), (128, 128, 128), (256, 256, 256),
               (64, 576, 64))
#: With ``--quick``: the shapes the last line needs (256^3 is the longest run).
QUICK_SHAPES = ((1, 64, 10), (1, 256, 256), (16, 16, 16), (64, 64, 64), (256, 256, 256))
CONFIGS = ("default", "large")
#: A GEMM with at most this many rows of A is "small" (fixed per-kernel costs dominate it).
SMALL_M = 16
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
              seed: int = 0) -> list[dict]:
    """Each shape on each configuration: one row of cycles, utilisation, bound and correctness."""
    from braze.sim.device import open_device
    from braze.sw.compiler import kernels

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
    return rows


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


def override_specs(override: str, config_names: Sequence[str] = CONFIGS) -> list[str]:
    """Config specs of ``--config-override``: each configuration with ``override`` (``field=value,...``)
    applied and named ``<preset>_<override>``; a bad field or value fails here (ConfigError)."""
    slug = re.sub(r"\W+", "_", override).strip("_")
    specs = [f"{name}:{override},name={name}_{slug}" for name in config_names]
    for spec in specs:
        Config.parse(spec)
    return specs


def override_table(base: Sequence[dict], overridden: Sequence[dict], config_names: Sequence[str] = CONFIGS
                   ) -> str:
    """Each overridden GEMM row next to the plain one of the same configuration and shape: cycles and
    utilisation off/on, the speed-up, and the timing model's error (predicted / measured - 1) on each."""
    header = (f"{'config':<8} {'M x K x N':>13} {'cycles':>8} {'with':>8} {'speed-up':>8} {'MAC util':>8} "
              f"{'with':>7} {'model err':>9} {'with':>7}")
    lines = [header, "-" * len(header)]
    for row in overridden:
        name = next(name for name in config_names if row["config"].startswith(f"{name}_"))
        plain = next(other for other in base if other["config"] == name and other["shape"] == row["shape"])
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


def main(argv: Sequence[str] | None = None) -> int:
    """``braze bench kernels [--quick] [--device verilator] [--samples N]``."""
    from braze.sw.runtime import compile_bench

    parser = ArgumentParser(prog="braze bench kernels", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="verilator", help="device back end (default: verilator; golden "
                        "reports the timing model's cycles)")
    parser.add_argument("--quick", action="store_true", help="fewer GEMM shapes (those the last line needs), "
                        "one batch of the CNN, no golden comparison")
    parser.add_argument("--samples", type=int, default=None, help="CNN validation images (default: 256, "
                        "64 with --quick)")
    parser.add_argument("--config-override", default=None, metavar="FIELD=VALUE[,...]",
                        help="also run the GEMMs on each configuration with these fields changed (e.g. "
                        "weight_preload=1) and compare; the last line keeps the presets' values")
    args = parser.parse_args(argv)
    specs = override_specs(args.config_override) if args.config_override else []   # fails before any run
    samples = args.samples or (64 if args.quick else 256)
    started = time.perf_counter()

    gemms = run_gemms(args.device, CONFIGS, QUICK_SHAPES if args.quick else GEMM_SHAPES)
    print(f"GEMMs on the {args.device} device (bias + requantize + ReLU fused, int8 out); "
          "bound = max(compute, bus) cycles")
    print(gemm_table(gemms))
    overridden = []
    if specs:
        overridden = run_gemms(args.device, specs, QUICK_SHAPES if args.quick else GEMM_SHAPES)
        print(f"\nGEMMs with {args.config_override} on the {args.device} device")
        print(gemm_table(overridden))
        print(f"\nwithout / with {args.config_override} (model err: timing model's predicted / measured - 1)")
        print(override_table(gemms, overridden))

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

    print()
    cost_model = "learned" if "hpm-learned" in cnn.fused.cost_model else "analytic"
    compiled = compile_bench.run_child("cnn", cost_model)
    print(f"compile of the digits CNN ({cost_model} cost model, fresh process): cold "
          f"{compiled['cold_s']:.3f} s (batch {compiled['first']}, {compiled['kernels_generated']} kernels "
          f"generated), second batch size {compiled['second_s']:.3f} s (batch {compiled['second']}), "
          f"cached {compiled['cached_s']:.3f} s")

    def util(config_name: str, shape: tuple[int, int, int]) -> str:
        found = [row for row in gemms if row["config"] == config_name and row["shape"] == shape]
        return f"{100 * found[0]['utilisation']:.1f}" if found else "n/a"
    small = [row["over_bound"] for row in gemms if row["shape"][0] <= SMALL_M]
    correct = all(row["correct"] for row in [*gemms, *overridden]) and cnn.golden_identical is not False
    verdict = "bit-exact" if correct else "NOT bit-exact"
    print(f"({time.perf_counter() - started:.0f} s; every output {verdict})")
    print(f"kernels: cnn_util={100 * cnn.fused.totals.utilisation(config):.1f} "
          f"gemm64_large_util={util('large', (64, 64, 64))} gemm256_util={util('default', (256, 256, 256))} "
          f"small_gemm_worst_over_bound={max(small):.2f} fusion_cycles={cnn.cycle_ratio:.2f} "
          f"fusion_bytes={cnn.byte_ratio:.2f} compile_cold_s={compiled['cold_s']:.3f}")
    return 0 if correct else 1
