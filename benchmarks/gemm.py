"""GEMM benchmark: square int8 GEMMs with the fused epilogue, on any Braze device back end.

    python benchmarks/gemm.py --device golden --config default --sizes 64 128 256

For each size n, generates ``braze.sw.compiler.kernels.gemm(config, n, n, n, ...)``, runs it on the
device with random operands, checks the result against numpy and ``braze.isa.arith``, and
prints one table row from the kernel's COUNTERS snapshot: cycles, array busy % (``array_busy
/ cycles``), useful-MAC utilisation % (``macs / (cycles * rows * cols)``), DMA bytes (read +
written), instructions, and the time it took to generate the kernel.  On the golden device the
cycle counts are the timing model's prediction; on a simulated RTL device they are measured.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from braze.isa import Activation, Config, Memory
from braze.isa.arith import epilogue
from braze.sim.device import DEVICES, open_device
from braze.sw.compiler import kernels

EPILOGUES = {
    # The hardware benchmark's GEMM: bias, per-column requantize and ReLU fused, int8 out.
    "fused": dict(bias=True, requant=True, act="relu", out="int8"),
    # The bare product, int32 out, no EPILOGUE instruction at all.
    "none": dict(out="int32"),
}


def operands(rng: np.random.Generator, n: int, kernel: kernels.Kernel) -> tuple[dict, np.ndarray]:
    """Random inputs for an n^3 kernel and the exact expected output."""
    a = rng.integers(-128, 128, size=(n, n), dtype=np.int8)
    b = rng.integers(-128, 128, size=(n, n), dtype=np.int8)
    inputs = {"A": a, "B": b}
    product = a.astype(np.int64) @ b.astype(np.int64)
    if "params" not in kernel.operands:
        return inputs, epilogue(product, out=Memory.ACC)
    bias = rng.integers(-5000, 5000, size=n)
    mult = rng.integers(1 << 13, 1 << 15, size=n)
    shift = np.full(n, 20)
    inputs["params"] = kernels.pack_params(kernel, bias=bias, mult=mult, shift=shift)
    return inputs, epilogue(product, bias=bias, mult=mult, shift=shift, act=Activation.RELU, out=Memory.SPAD)


def benchmark(device_kind: str, config: Config, sizes: list[int], epilogue_kind: str, seed: int,
              max_cycles: int | None) -> list[dict]:
    rows = []
    rng = np.random.default_rng(seed)
    with open_device(device_kind, config) as device:
        for n in sizes:
            started = time.perf_counter()
            kernel = kernels.gemm(config, n, n, n, **EPILOGUES[epilogue_kind])
            generation = time.perf_counter() - started
            inputs, expected = operands(rng, n, kernel)
            result = kernels.run_kernel(device, kernel, inputs, max_cycles=max_cycles)
            counters = result.counters
            cycles = max(1, counters["cycles"])
            rows.append({
                "size": n,
                "cycles": counters["cycles"],
                "predicted": kernel.predicted_cycles,
                "array_busy": counters["array_busy"] / cycles,
                "utilisation": counters["macs"] / (cycles * config.rows * config.cols),
                "dma_bytes": counters["dma_read_bytes"] + counters["dma_write_bytes"],
                "instructions": len(kernel.instructions),
                "generation_ms": generation * 1e3,
                "correct": bool(np.array_equal(result.outputs["out"], expected)),
                "tiling": kernel.tiling,
            })
    return rows


def print_table(rows: list[dict], *, device_kind: str, config: Config, epilogue_kind: str) -> None:
    print(f"GEMM n x n x n, epilogue {epilogue_kind!r}, device {device_kind!r}, config {config.name!r} "
          f"({config.rows}x{config.cols} array, {config.spad_rows} scratchpad / {config.acc_rows} "
          f"accumulator rows, {config.dma_bus_bits}-bit bus)")
    header = (f"{'size':>6} {'cycles':>10} {'predicted':>10} {'array busy':>11} {'MAC util':>9} "
              f"{'DMA bytes':>11} {'insns':>7} {'gen ms':>8}  result")
    print(header)
    print("-" * len(header))
    for row in rows:
        print(f"{row['size']:>6} {row['cycles']:>10} {row['predicted']:>10} {row['array_busy']:>10.1%} "
              f"{row['utilisation']:>9.1%} {row['dma_bytes']:>11} {row['instructions']:>7} "
              f"{row['generation_ms']:>8.1f}  {'ok' if row['correct'] else 'MISMATCH'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="golden", choices=sorted(DEVICES),
                        help="device back end (default: golden)")
    parser.add_argument("--config", default="default",
                        help="preset name, JSON object or PRESET:field=value,... (default: default)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256], help="n of each n^3 GEMM")
    parser.add_argument("--epilogue", default="fused", choices=sorted(EPILOGUES),
                        help="fused bias+requantize+ReLU to int8 (default), or none (int32 product)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-cycles", type=int, default=None, help="cycle budget of each run")
    args = parser.parse_args(argv)
    config = Config.parse(args.config)
    rows = benchmark(args.device, config, args.sizes, args.epilogue, args.seed, args.max_cycles)
    print_table(rows, device_kind=args.device, config=config, epilogue_kind=args.epilogue)
    return 0 if all(row["correct"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
