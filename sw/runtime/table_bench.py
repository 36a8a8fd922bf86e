"""``braze bench table``: a GELU MLP with the activation fused into the GEMM epilogue, as a standalone
table kernel, and as float operators on the host -- accelerator cycles, kernels, host work per inference.

The model is built here (random weights, fixed seed): ``Gemm -> GELU -> Gemm -> GELU -> Gemm`` with
GELU written as the ``Div``/``Erf``/``Add``/``Mul``/``Mul`` chain ``torch.onnx.export`` writes, quantized
by Braze's own calibration (per-tensor int8 activations).  Three compilations of it:

* ``fused`` -- the default: each GELU becomes a 256-entry table
  (:mod:`braze.sw.compiler.tables`) that the fusion engine puts into the preceding GEMM's EPILOGUE
  (``act=table``, one TABLE instruction per kernel);
* ``standalone`` -- ``fuse=False``: the table runs as its own kernel
  (:func:`~braze.sw.compiler.kernels.table`: VECTOR mov into the accumulator, EPILOGUE act=table),
  its input and output through external memory;
* ``host`` -- no tables (:func:`~braze.sw.compiler.quantize.lower_qdq` with ``tables=False``): the
  float chain runs on the CPU between explicit transfers.

All three must give the same int8 results (``exact``).  Prints a table and ends with
``table: fused_cycles=<n> standalone_cycles=<n> host_cycles=<n> fused_speedup=<x> exact=<0|1>``
(``fused_speedup``: standalone cycles over fused cycles).
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from collections.abc import Sequence
from unittest import mock

import numpy as np
import onnx
from onnx import helper, numpy_helper

from braze.isa import Config
from braze.isa.errors import ArgumentParser

from ..compiler.cache import KernelCache
from .session import InferenceSession

__all__ = ["gelu_mlp", "Variant", "run_variant", "main"]

OPSET = 17
VARIANTS = ("fused", "standalone", "host")


def gelu_mlp(widths: Sequence[int] = (64, 256, 256, 10), seed: int = 0) -> onnx.ModelProto:
    """A float MLP with GELU (erf form) between its Gemm layers, random weights."""
    rng = np.random.default_rng(seed)
    nodes, initializers = [], {"sqrt2": np.float32(np.sqrt(2.0)), "one": np.float32(1.0),
                                "half": np.float32(0.5)}
    tensor = "x"
    for layer, (fan_in, fan_out) in enumerate(zip(widths, widths[1:], strict=False)):
        initializers[f"w{layer}"] = rng.normal(0, (2 / fan_in) ** 0.5, (fan_out, fan_in)).astype(np.float32)
        initializers[f"b{layer}"] = rng.normal(0, 0.05, fan_out).astype(np.float32)
        out = "y" if layer == len(widths) - 2 else f"h{layer}"
        nodes.append(helper.make_node("Gemm", [tensor, f"w{layer}", f"b{layer}"], [out], transB=1,
                                      name=f"fc{layer}"))
        tensor = out
        if out != "y":
            g = f"gelu{layer}"
            nodes += [helper.make_node("Div", [out, "sqrt2"], [f"{g}_a"], name=f"{g}_div"),
                      helper.make_node("Erf", [f"{g}_a"], [f"{g}_b"], name=f"{g}_erf"),
                      helper.make_node("Add", [f"{g}_b", "one"], [f"{g}_c"], name=f"{g}_add"),
                      helper.make_node("Mul", [out, f"{g}_c"], [f"{g}_d"], name=f"{g}_mul"),
                      helper.make_node("Mul", [f"{g}_d", "half"], [g], name=f"{g}_half")]
            tensor = g
    graph = helper.make_graph(
        nodes, "gelu_mlp",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", widths[0]])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", widths[-1]])],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@dataclasses.dataclass
class Variant:
    name: str
    cycles: int            # accelerator cycles per inference (the kernels' counters)
    kernels: int
    table_kernels: int     # kernels that are a table alone
    host_ops: int          # operators placed on the CPU
    dma_bytes: int
    host_ms: float
    output: np.ndarray


def run_variant(name: str, model: onnx.ModelProto, calibration: np.ndarray, x: np.ndarray, *,
                config: Config, device: str) -> Variant:
    """Compile and run ``model`` one way (see the module documentation) and read its report."""
    if name not in VARIANTS:
        raise ValueError(f"variant {name!r} is not one of {', '.join(VARIANTS)}")
    quantize_module = sys.modules["braze.sw.compiler.quantize"]   # the package's `quantize` is a function
    no_tables = mock.patch.object(quantize_module, "lower_table_activations", lambda graph: graph)
    with tempfile.TemporaryDirectory() as directory:
        if name == "host":
            no_tables.start()
        try:
            session = InferenceSession(model, config=config, device=device, calibration=calibration,
                                       fuse=name != "standalone", cache=KernelCache(directory))
        finally:
            if name == "host":
                no_tables.stop()
        try:
            (y,) = session.run(None, {"x": x})
            report = session.report()
            placement = session.compiled.placement.values()
        finally:
            session.close()
    return Variant(name, report.total_cycles, len(report.kernels),
                   sum("_table_" in where for where in placement),
                   sum(where.startswith("cpu:") for where in placement), report.dma_bytes,
                   report.host_seconds * 1e3, y)


def format_table(variants: Sequence[Variant]) -> str:
    lines = [f"{'variant':<11} {'cycles':>9} {'kernels':>8} {'table kernels':>14} {'host ops':>9} "
             f"{'DMA bytes':>10} {'host ms':>8}"]
    for v in variants:
        lines.append(f"{v.name:<11} {v.cycles:>9} {v.kernels:>8} {v.table_kernels:>14} {v.host_ops:>9} "
                     f"{v.dma_bytes:>10} {v.host_ms:>8.2f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``braze bench table [--config NAME] [--device KIND] [--batch N]``."""
    parser = ArgumentParser(prog="braze bench table", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="default", help="preset name, PRESET:field=value,... or JSON")
    parser.add_argument("--device", default="golden", help="golden, amaranth or verilator (default golden)")
    parser.add_argument("--batch", type=int, default=16, help="inputs per inference (default 16)")
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error(f"--batch {args.batch}: needs at least one input")
    config = Config.parse(args.config)
    model = gelu_mlp()
    rng = np.random.default_rng(1)
    calibration = rng.normal(size=(64, 64)).astype(np.float32)
    x = rng.normal(size=(args.batch, 64)).astype(np.float32)
    began = time.perf_counter()
    variants = [run_variant(name, model, calibration, x, config=config, device=args.device)
                for name in VARIANTS]
    exact = all(np.array_equal(v.output, variants[0].output) for v in variants)
    print(f"GELU MLP 64-256-256-10, batch {args.batch}, config {config.name!r}, device {args.device} "
          f"({time.perf_counter() - began:.1f} s)")
    print(format_table(variants))
    by_name = {v.name: v for v in variants}
    speedup = by_name["standalone"].cycles / max(1, by_name["fused"].cycles)
    print(f"table: fused_cycles={by_name['fused'].cycles} standalone_cycles={by_name['standalone'].cycles} "
          f"host_cycles={by_name['host'].cycles} fused_speedup={speedup:.2f} exact={int(exact)}")
    return 0 if exact else 1
