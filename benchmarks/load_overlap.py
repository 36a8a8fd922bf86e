"""Experiment: LOADs whose reads overlap (``Config.load_overlap``), measured on the verilator device.

    python benchmarks/load_overlap.py --overlap 1 2 4      # one Verilator build per value (cached)

For each ``load_overlap`` on the default preset (whose own value is 4): the digits CNN's two
convolutions, a 64^3 GEMM, the fused conv2 + 2x2 max pooling against conv2 followed by
``maxpool2d``, and the whole digits CNN (batch 64, analytic cost model).  Each kernel runs on the
verilator device with ``sw.hpm.calibrate.random_inputs`` and on the reference model; the table
shows the measured cycles, the timing model's prediction, its error, and whether the outputs agree
with the reference model.
Ends with one line ``load_overlap: conv2_<n>=<cycles> ...`` per value measured.
"""

from __future__ import annotations

import argparse

import numpy as np

from braze.isa import Config
from braze.sim.device import open_device
from braze.sw.compiler import kernels as lib
from braze.sw.compiler.kernels import run_kernel
from braze.sw.hpm.calibrate import random_inputs


def workloads(config: Config) -> dict[str, list[lib.Kernel]]:
    """Kernels by name; a list runs linked, one after the other (their cycles add up)."""
    conv2 = dict(bias=True, requant=True, act="relu")
    return {
        "conv1 64x1x8x8->8": [lib.conv2d(config, 64, 1, 8, 8, 8, 3, 3, 1, 0, **conv2)],
        "conv2 64x8x6x6->16": [lib.conv2d(config, 64, 8, 6, 6, 16, 3, 3, 1, 0, **conv2)],
        "gemm 64^3": [lib.gemm(config, 64, 64, 64)],
        "conv2+pool fused": [lib.conv2d(config, 64, 8, 6, 6, 16, 3, 3, 1, 0, pool=2, **conv2)],
        "maxpool 64x16x4x4": [lib.maxpool2d(config, 64, 16, 4, 4, 2, 2, 2)],
    }


def measure_kernels(config: Config, device, golden) -> dict[str, dict]:
    results = {}
    for name, (kernel,) in workloads(config).items():
        inputs = random_inputs(kernel, np.random.default_rng(0))
        measured = run_kernel(device, kernel, inputs)
        reference = run_kernel(golden, kernel, inputs)
        same = all(np.array_equal(measured.outputs[key], reference.outputs[key]) for key in reference.outputs)
        results[name] = {"measured": measured.cycles, "predicted": kernel.predicted_cycles, "same": same,
                         "load_busy": measured.counters.get("load_busy"),
                         "stall_axi_read": measured.counters.get("stall_axi_read")}
    return results


def measure_cnn(config: Config, device) -> tuple[int, np.ndarray]:
    from braze.sw.compiler import models
    from braze.sw.compiler.cost import TimingCostModel
    from braze.sw.runtime.session import InferenceSession

    data = models.load_digits_split()
    cnn, _ = models.train_cnn(data, seed=0)
    x = cnn.inputs(data.x_val[:64])
    session = InferenceSession(cnn.to_onnx(), device=device, config=config,
                               calibration=models.calibration_set(cnn, data, seed=0),
                               cost_model=TimingCostModel(), record=False)
    outputs = session.run(None, {session.get_inputs()[0].name: x})
    return session.report().total_cycles, np.asarray(outputs[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--overlap", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--no-cnn", action="store_true", help="skip the whole-CNN run")
    args = parser.parse_args()
    base = Config.preset("default")
    summary = []
    for overlap in args.overlap:
        # The preset itself at its own overlap (4), a renamed variant at any other value.
        config = base if overlap == base.load_overlap else base.replace(name=f"default_lo{overlap}",
                                                                       load_overlap=overlap)
        with open_device("verilator", config) as device, open_device("golden", config) as golden:
            results = measure_kernels(config, device, golden)
            print(f"load_overlap={overlap} ({config.name}):")
            print(f"  {'kernel':22} {'measured':>9} {'predicted':>9} {'error':>7} {'load_busy':>9} "
                  f"{'stall_axi_rd':>12}  outputs")
            for name, r in results.items():
                error = (r["measured"] - r["predicted"]) / r["predicted"]
                print(f"  {name:22} {r['measured']:9d} {r['predicted']:9d} {error:+7.1%} {r['load_busy']:9d} "
                      f"{r['stall_axi_read']:12d}  {'= golden' if r['same'] else 'DIFFER'}")
            separate = results["conv2 64x8x6x6->16"]["measured"] + results["maxpool 64x16x4x4"]["measured"]
            print(f"  conv2 + maxpool separate: {separate} cycles; fused: "
                  f"{results['conv2+pool fused']['measured']}")
            line = (f"conv1_{overlap}={results['conv1 64x1x8x8->8']['measured']} "
                    f"conv2_{overlap}={results['conv2 64x8x6x6->16']['measured']} "
                    f"gemm64_{overlap}={results['gemm 64^3']['measured']} "
                    f"fused_{overlap}={results['conv2+pool fused']['measured']} "
                    f"separate_{overlap}={separate}")
            if not args.no_cnn:
                cycles, output = measure_cnn(config, device)
                print(f"  digits CNN (batch 64, analytic cost model): {cycles} cycles, "
                      f"output checksum {int(np.asarray(output, dtype=np.int64).sum())}")
                line += f" cnn_{overlap}={cycles}"
            summary.append(line)
    print("load_overlap: " + " ".join(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
