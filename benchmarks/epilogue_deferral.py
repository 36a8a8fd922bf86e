"""Experiment: each output tile's EPILOGUE after the next tile's MATMULs (deferred) or right after its own,
measured on the verilator device.

    python benchmarks/epilogue_deferral.py        # default and large (Verilator builds cached)

With ``matmul_overlap`` and ``epilogue_overlap`` (turned on here in default and large) the GEMM kernels price
every candidate tiling with the deferral and without and keep the faster
(:func:`braze.sw.compiler.kernels.matmul._candidate`).  Here each of ``braze bench kernels``' GEMM
shapes, and its packed 16x16x16 (256x16x16), is generated with one order forced (the library's fastest
tiling under it) and run on the device with the same operands; both outputs are compared.  Prints, per
shape, the measured and predicted cycles of both and the measured ratio not-deferred / deferred; ends
with one line ``epilogue_deferral: worst_ratio=<x> best_ratio=<x> same_outputs=<bool>``.
"""

from __future__ import annotations

import argparse

import numpy as np

from braze.isa import Config
from braze.kernels_bench import CONFIGS, GEMM_SHAPES
from braze.sim.device import open_device
from braze.sw.compiler import kernels
from braze.sw.compiler.kernels import matmul
from braze.sw.compiler.kernels.common import pack_params

EPILOGUE = dict(bias=True, requant=True, act="relu")
#: The bench's GEMM shapes and its packed small GEMM (16 calls of 16x16x16 as one kernel).
SHAPES = (*GEMM_SHAPES, (256, 16, 16))


def forced(config: Config, shape: tuple[int, int, int], defer: bool) -> kernels.Kernel:
    """The library's GEMM with the deferral forced on or off (its private pipeline wrapped)."""
    pipeline = matmul._matmul_pipeline
    matmul._GENERATED.clear()
    matmul._BOUNDS.clear()
    matmul._matmul_pipeline = lambda *args, **options: pipeline(*args, **(options | {"defer": defer}))
    try:
        return kernels.gemm(config, *shape, **EPILOGUE)
    finally:
        matmul._matmul_pipeline = pipeline
        matmul._GENERATED.clear()
        matmul._BOUNDS.clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="verilator")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    ratios, same = [], True
    print(f"{'config':<8} {'M x K x N':>12} {'deferred':>9} {'(model)':>8} {'not':>9} {'(model)':>8} "
          f"{'not/def':>8}")
    for name in CONFIGS:
        config = Config.parse(f"{name}:weight_preload=1,epilogue_overlap=1,matmul_overlap=1")
        with open_device(args.device, config) as device:
            for M, K, N in SHAPES:
                a = rng.integers(-128, 128, (M, K), dtype=np.int8)
                b = rng.integers(-128, 128, (K, N), dtype=np.int8)
                bias = rng.integers(-1000, 1000, N)
                measured, predicted, outputs = [], [], []
                for defer in (True, False):
                    kernel = forced(config, (M, K, N), defer)
                    params = pack_params(kernel, bias=bias, mult=np.full(N, 1 << 14), shift=np.full(N, 20))
                    result = kernels.run_kernel(device, kernel, {"A": a, "B": b, "params": params})
                    measured.append(result.counters["cycles"])
                    predicted.append(kernel.predicted_cycles)
                    outputs.append(result.outputs["out"])
                same &= bool(np.array_equal(*outputs))
                ratios.append(measured[1] / measured[0])
                print(f"{name:<8} {'x'.join(map(str, (M, K, N))):>12} {measured[0]:>9} {predicted[0]:>8} "
                      f"{measured[1]:>9} {predicted[1]:>8} {ratios[-1]:>8.3f}")
    print(f"epilogue_deferral: worst_ratio={min(ratios):.3f} best_ratio={max(ratios):.3f} "
          f"same_outputs={same}")


if __name__ == "__main__":
    main()
