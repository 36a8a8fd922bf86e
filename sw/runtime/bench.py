"""``braze bench model``: compile time (cold and cached), accelerator cycles and host overhead per inference.

For each model: the compile time with an empty kernel cache (cold) and with
the cache warm (a fresh session, same cache: what a second ``braze run`` of
the model costs), then one inference fused and one unfused with the
per-kernel cycles and PE utilisation from the hardware counters, and the
host-side time per inference spent outside the device (CPU operators,
transfers, layout changes).  Without model files it benchmarks two small
models built here (random weights, fixed seed): an MLP and a CNN shaped like
the digits demo's.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from braze.isa import Config
from braze.isa.errors import ArgumentParser

from ..compiler.cache import KernelCache
from .session import InferenceSession

__all__ = ["builtin_models", "bench_model", "ModelBench", "format_table", "main"]

OPSET = 17


def _model(nodes, inputs, outputs, initializers, name: str) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, s) for n, s in outputs],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def builtin_models(seed: int = 0, batch: int = 8) -> dict[str, tuple[onnx.ModelProto, np.ndarray]]:
    """Two small float models with random weights, and an input batch for each: ``mlp`` and ``cnn``."""
    rng = np.random.default_rng(seed)

    def dense(fan_in, fan_out):
        return rng.normal(0, (2 / fan_in) ** 0.5, (fan_out, fan_in)), rng.normal(0, 0.05, fan_out)

    w1, b1 = dense(64, 64)
    w2, b2 = dense(64, 32)
    w3, b3 = dense(32, 10)
    mlp = _model([
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h1"], name="/fc1/Gemm", transB=1),
        helper.make_node("Relu", ["h1"], ["a1"], name="/relu1/Relu"),
        helper.make_node("Gemm", ["a1", "w2", "b2"], ["h2"], name="/fc2/Gemm", transB=1),
        helper.make_node("Relu", ["h2"], ["a2"], name="/relu2/Relu"),
        helper.make_node("Gemm", ["a2", "w3", "b3"], ["logits"], name="/fc3/Gemm", transB=1),
    ], [("x", ["batch", 64])], [("logits", ["batch", 10])],
        {"w1": w1, "b1": b1, "w2": w2, "b2": b2, "w3": w3, "b3": b3}, "bench_mlp")
    c1 = rng.normal(0, (2 / 9) ** 0.5, (8, 1, 3, 3))
    c2 = rng.normal(0, (2 / 72) ** 0.5, (16, 8, 3, 3))
    fc, fb = dense(16 * 4 * 4, 10)
    cnn = _model([
        helper.make_node("Conv", ["x", "c1", "cb1"], ["h1"], name="/conv1/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h1"], ["a1"], name="/relu1/Relu"),
        helper.make_node("Conv", ["a1", "c2", "cb2"], ["h2"], name="/conv2/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h2"], ["a2"], name="/relu2/Relu"),
        helper.make_node("MaxPool", ["a2"], ["p"], name="/pool/MaxPool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"], name="/flatten/Flatten"),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"], name="/fc/Gemm", transB=1),
    ], [("x", ["batch", 1, 8, 8])], [("logits", ["batch", 10])],
        {"c1": c1, "cb1": rng.normal(0, 0.05, 8), "c2": c2, "cb2": rng.normal(0, 0.05, 16), "fw": fc,
         "fb": fb}, "bench_cnn")
    return {"mlp": (mlp, rng.random((batch, 64), dtype=np.float32)),
            "cnn": (cnn, rng.random((batch, 1, 8, 8), dtype=np.float32))}


@dataclasses.dataclass
class ModelBench:
    name: str
    compile_cold_ms: float
    compile_cached_ms: float
    cycles_fused: int
    cycles_unfused: int
    dma_bytes_fused: int
    dma_bytes_unfused: int
    host_overhead_ms: float
    kernels: list[dict[str, Any]]

    @property
    def cycle_ratio(self) -> float:
        return self.cycles_unfused / max(1, self.cycles_fused)

    @property
    def bytes_ratio(self) -> float:
        return self.dma_bytes_unfused / max(1, self.dma_bytes_fused)


def bench_model(name: str, model: Any, x: np.ndarray | None, *, config: Config, device: str = "golden",
                calibration: np.ndarray | None = None) -> ModelBench:
    """Benchmark one model (see the module documentation); ``x`` defaults to random data."""
    options = {"device": device, "config": config, "calibration": calibration}
    with tempfile.TemporaryDirectory() as directory:
        t0 = time.perf_counter()
        session = InferenceSession(model, cache=KernelCache(directory), **options)
        arg = session.get_inputs()[0]
        if x is None:
            shape = [d if isinstance(d, int) else 1 for d in arg.shape]
            x = np.random.default_rng(0).random(shape, dtype=np.float32)
        session.compile_for({arg.name: x.shape})
        cold = time.perf_counter() - t0
        # A fresh cache object on the same directory: what a second process compiling the model pays.
        t0 = time.perf_counter()
        warm = InferenceSession(model, cache=KernelCache(directory), **options)
        warm.compile_for({arg.name: x.shape})
        cached = time.perf_counter() - t0
        warm.close()
        session.run(None, {arg.name: x})
        fused = session.report()
        session.close()
        unfused_session = InferenceSession(model, cache=KernelCache(directory), fuse=False, **options)
        unfused_session.run(None, {arg.name: x})
        unfused = unfused_session.report()
        unfused_session.close()
    kernels = [{"kernel": r.kernel, "ops": list(r.ops), "cycles": r.cycles, "macs": r.macs,
                "utilisation": r.utilisation} for r in fused.kernels]
    return ModelBench(name, cold * 1e3, cached * 1e3, fused.total_cycles, unfused.total_cycles,
                      fused.dma_bytes, unfused.dma_bytes, fused.host_seconds * 1e3, kernels)


def format_table(results: Sequence[ModelBench]) -> str:
    lines = [f"{'model':<12} {'compile cold':>13} {'cached':>9} {'cycles fused':>13} {'unfused':>9} "
             f"{'ratio':>6} {'DMA B fused':>12} {'unfused':>9} {'ratio':>6} {'host/inf':>9}"]
    for r in results:
        lines.append(f"{r.name:<12} {r.compile_cold_ms:>10.1f} ms {r.compile_cached_ms:>6.1f} ms "
                     f"{r.cycles_fused:>13} {r.cycles_unfused:>9} {r.cycle_ratio:>5.2f}x "
                     f"{r.dma_bytes_fused:>12} "
                     f"{r.dma_bytes_unfused:>9} {r.bytes_ratio:>5.2f}x {r.host_overhead_ms:>6.2f} ms")
    for r in results:
        lines.append(f"\n{r.name}: per kernel (fused)")
        for k in r.kernels:
            lines.append(f"  {k['kernel']:<36} {k['cycles']:>9} cycles  {100 * k['utilisation']:5.1f}% PE  "
                         f"({'+'.join(k['ops'])})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``braze bench model [MODEL...] [--config NAME] [--device KIND] [--calibrate FILE] [--json FILE]``."""
    parser = ArgumentParser(prog="braze bench model", description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path, help="ONNX files (default: built-in MLP and CNN)")
    parser.add_argument("--config", default="default", help="preset name, PRESET:field=value,... or JSON")
    parser.add_argument("--device", default="golden", help="golden, amaranth or verilator")
    parser.add_argument("--calibrate", type=Path, help="calibration inputs (.npy) for float models")
    parser.add_argument("--input", type=Path, help="input batch (.npy)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    args = parser.parse_args(argv)
    config = Config.parse(args.config)
    results = []
    if args.models:
        calibration = np.load(args.calibrate) if args.calibrate else None
        x = np.load(args.input) if args.input else None
        for path in args.models:
            results.append(bench_model(path.stem, str(path), x, config=config, device=args.device,
                                       calibration=calibration))
    else:
        for name, (model, x) in builtin_models().items():
            results.append(bench_model(name, model, x, config=config, device=args.device, calibration=x))
    print(format_table(results))
    if args.json:
        args.json.write_text(json.dumps([dict(dataclasses.asdict(r), cycle_ratio=r.cycle_ratio,
                                              bytes_ratio=r.bytes_ratio) for r in results], indent=2))
    return 0
