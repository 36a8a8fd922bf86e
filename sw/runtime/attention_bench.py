"""``braze bench attention``: a transformer's attention block (issue 11) with its MatMuls on the chip.

The block is the zoo transformer's (d=64, 4 heads, sequence 16, batch 1 by default): Q/K/V
projections, the head split (Reshape + Transpose), ``Q @ K^T``, scaling, Softmax, ``P @ V``, the
head merge and the output projection, quantized by onnxruntime's ``quantize_static`` (QDQ) with
symmetric int8 activations and with asymmetric uint8 ones.  Per variant it prints:

* where every MatMul runs and the fraction of the block's MACs on the chip;
* per-kernel cycles: the timing model's prediction and the counters of the device(s) run;
* bit-exactness against the frontend evaluator and agreement with onnxruntime (output LSBs);
* the host's share: every CPU step timed (median of repeats) and converted to accelerator cycles
  at the host link's 200 MHz, the host <-> device transfers priced by
  :class:`~braze.sw.runtime.partitions.HostLink` -- the numbers behind the Softmax/LayerNorm
  decision of docs/attention.md;
* the batched MatMul as one :func:`~braze.sw.compiler.kernels.batched_gemm` against one
  :func:`~braze.sw.compiler.kernels.gemm` per head (predicted, and measured on the device).

Ends with ``attention: chip_mac_pct=<x> cycles_golden=<n> [cycles_verilator=<n>] bitexact=<bool>
batched_over_per_slice=<x> host_softmax_cycles=<n> softmax_transfer_cycles=<n>
host_layernorm_cycles=<n> layernorm_transfer_cycles=<n>`` (symmetric variant; the asymmetric one's
numbers are in the table).
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from braze.isa import Config
from braze.isa.errors import ArgumentParser

from ..compiler import kernels as library
from ..compiler.frontend import evaluate, evaluate_node, load_onnx
from ..compiler.lower import CpuStep, KernelStep, TransferStep
from ..compiler.macs import count_macs
from .partitions import HostLink

__all__ = ["main", "attention_model", "quantize_attention", "matmul_macs", "AttentionResult",
           "measure_attention", "host_step_cycles"]

def attention_model(*, batch: int = 1, seq: int = 16, d: int = 64, heads: int = 4, seed: int = 0,
                    layernorm: bool = True) -> onnx.ModelProto:
    """A float multi-head self-attention block as ``torch.onnx.export`` writes one (random weights).

    ``x [batch, seq, d]`` -> Q/K/V projections -> Reshape/Transpose to ``[batch, heads, seq, d/heads]``
    (K to ``[batch, heads, d/heads, seq]``) -> ``Q @ K^T`` -> ``* 1/sqrt(d/heads)`` -> Softmax ->
    ``@ V`` -> Transpose/Reshape back -> output projection -> (``layernorm``: residual ``+ x`` and
    LayerNormalization, a post-norm encoder layer's first half) -> ``y``.
    """
    rng = np.random.default_rng(seed)
    dh = d // heads
    weights = [(name, rng.normal(0, d ** -0.5, (d, d)).astype(np.float32))
               for name in ("wq", "wk", "wv", "wo")]
    nodes = [helper.make_node("MatMul", ["x", f"w{t}"], [t], name=f"{t}_proj") for t in "qkv"]
    nodes += [helper.make_node("Reshape", [t, "heads_shape"], [f"{t}4"], name=f"{t}_split") for t in "qkv"]
    nodes += [
        helper.make_node("Transpose", ["q4"], ["qh"], perm=[0, 2, 1, 3], name="q_heads"),
        helper.make_node("Transpose", ["k4"], ["kt"], perm=[0, 2, 3, 1], name="k_heads_t"),
        helper.make_node("Transpose", ["v4"], ["vh"], perm=[0, 2, 1, 3], name="v_heads"),
        helper.make_node("MatMul", ["qh", "kt"], ["s"], name="qk"),
        helper.make_node("Mul", ["s", "inv_sqrt"], ["s_scaled"], name="scale"),
        helper.make_node("Softmax", ["s_scaled"], ["p"], axis=-1, name="softmax"),
        helper.make_node("MatMul", ["p", "vh"], ["o"], name="pv"),
        helper.make_node("Transpose", ["o"], ["o4"], perm=[0, 2, 1, 3], name="merge"),
        helper.make_node("Reshape", ["o4", "model_shape"], ["o3"], name="merge_reshape"),
        helper.make_node("MatMul", ["o3", "wo"], ["attn" if layernorm else "y"], name="o_proj"),
    ]
    if layernorm:
        nodes += [helper.make_node("Add", ["x", "attn"], ["residual"], name="residual"),
                  helper.make_node("LayerNormalization", ["residual", "gamma", "beta"], ["y"], axis=-1,
                                   epsilon=1e-5, name="layernorm")]
        weights += [("gamma", rng.uniform(0.5, 1.5, d).astype(np.float32)),
                    ("beta", rng.normal(0, 0.1, d).astype(np.float32))]
    initializers = [numpy_helper.from_array(value, name) for name, value in weights]
    initializers += [numpy_helper.from_array(np.array([batch, seq, heads, dh], np.int64), "heads_shape"),
                     numpy_helper.from_array(np.array([batch, seq, d], np.int64), "model_shape"),
                     numpy_helper.from_array(np.array(dh ** -0.5, np.float32), "inv_sqrt")]
    graph = helper.make_graph(nodes, "attention",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [batch, seq, d])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [batch, seq, d])],
                              initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def quantize_attention(model: onnx.ModelProto, calibration: Sequence[np.ndarray], *, symmetric: bool
                       ) -> bytes:
    """``model`` quantized by onnxruntime's ``quantize_static`` (QDQ, per-channel int8 weights):
    int8 activations with zero point 0 (``symmetric``) or uint8 asymmetric ones (its default)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{model.graph.input[0].name: x} for x in calibration])

        def get_next(self):
            return next(self.feeds, None)

    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "float.onnx", Path(folder) / "qdq.onnx"
        onnx.save(model, source)
        quantize_static(source, target, Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                        weight_type=QuantType.QInt8, per_channel=True,
                        extra_options={"ActivationSymmetric": symmetric})
        return target.read_bytes()


def matmul_macs(model: onnx.ModelProto) -> dict[str, int]:
    """MACs of every MatMul of a float model with static shapes (node name -> MACs)."""
    graph = load_onnx(model)
    macs = count_macs(graph)
    return {node.name: macs[node.name] for node in graph.operators() if node.op_type == "MatMul"}


def host_step_cycles(session, feeds: dict[str, np.ndarray], link: HostLink, repeats: int = 20
                     ) -> list[tuple[str, str, float]]:
    """Every CPU step of the session's plan timed on its real inputs (median of ``repeats``):
    ``(node, op, accelerator cycles at link.host_clock_hz)``."""
    values = evaluate(session.graph_before, feeds, keep=True)
    rows = []
    for step in session.compiled.steps:
        if not isinstance(step, CpuStep):
            continue
        args = [values[t] if t else None for t in step.node.inputs]
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            evaluate_node(step.node, *args)
            times.append(time.perf_counter() - started)
        rows.append((step.node.name, step.node.qualified_op, statistics.median(times) * link.host_clock_hz))
    return rows


@dataclasses.dataclass
class AttentionResult:
    """One quantized variant of the block on one device."""

    variant: str
    device: str
    chip_macs: int
    total_macs: int
    kernel_cycles: dict[str, tuple[int, int]]     # kernel -> (predicted, measured)
    bitexact: bool
    ort_lsb: int                                  # largest |braze - onnxruntime| in output steps
    host: list[tuple[str, str, float]]
    transfers: int
    transfer_bytes: int
    placement: dict[str, str]
    stages: dict[str, tuple[list[str], int, int]]  # stage -> (CPU nodes, transfers, bytes) it costs

    def stage_cycles(self, stage: str) -> float:
        nodes = self.stages[stage][0]
        return sum(cycles for node, _, cycles in self.host if node in nodes)

    @property
    def chip_mac_pct(self) -> float:
        return 100.0 * self.chip_macs / self.total_macs

    @property
    def cycles(self) -> int:
        return sum(measured for _, measured in self.kernel_cycles.values())


def measure_attention(proto: bytes, float_model: onnx.ModelProto, x: np.ndarray, *, variant: str, device: str,
                      config: Config, link: HostLink, cache=None) -> AttentionResult:
    """Compile and run the quantized block once on ``device``; see the module documentation."""
    from .ort_reference import qdq_reference_session
    from .session import InferenceSession

    session = InferenceSession(proto, device=device, config=config, cache=cache)
    feeds = {"x": x}
    (y,) = session.run(None, feeds)
    reference = evaluate(session.graph_before, feeds)["y"]
    (expected,) = qdq_reference_session(proto, threads=None).run(None, feeds)
    out_scale = _output_scale(onnx.load_from_string(proto))
    report = session.report()
    kernels = {row.kernel: (row.predicted_cycles, row.cycles) for row in report.kernels}
    steps = session.compiled.steps
    transfers = [s for s in steps if isinstance(s, TransferStep)]
    kernel_steps = [i for i, s in enumerate(steps) if isinstance(s, KernelStep)]
    products = [i for i in kernel_steps if "braze.QActMatMul" in steps[i].op_types]
    stages = {}
    if len(products) == 2:
        # Softmax: what computes P from S (Q @ K^T) before P @ V -- S to the host and P back.
        stages["softmax"] = _stage(steps, products[0], products[1])
    if len(products) == 2 and kernel_steps[-1] > products[1]:
        # LayerNorm (and the residual addition): what follows the output projection.
        stages["layernorm"] = _stage(steps, kernel_steps[-1], len(steps))
    # The model's MACs each kernel computes (the counters also count a zero-point kernel's constant tiles).
    chip_macs = sum(step.kernel.macs for step in steps if isinstance(step, KernelStep))
    return AttentionResult(
        variant, device, chip_macs, sum(matmul_macs(float_model).values()), kernels,
        bool(np.array_equal(y, reference)), int(np.rint(np.abs(y - expected).max() / out_scale)),
        host_step_cycles(session, feeds, link), len(transfers), sum(s.value.buffer.nbytes for s in transfers),
        dict(session.compiled.placement), stages)


def _stage(steps: list, producer: int, end: int) -> tuple[list[str], int, int]:
    """The host work fed by kernel step ``producer``'s output before step ``end``: ``(CPU nodes,
    transfers, bytes)`` -- the output's transfer to the host, every CPU step reading what it or
    they computed (or a kernel between, such as the scaling as a table), and the transfers of their
    results back to the device."""
    derived = {steps[producer].operands["out"].tensor}
    nodes, moved = [], []
    for step in steps[producer + 1:end]:
        if isinstance(step, CpuStep) and derived & set(step.node.inputs):
            nodes.append(step.node.name)
            derived.update(t for t in step.node.outputs if t)
        elif isinstance(step, TransferStep) and step.value.tensor in derived:
            moved.append(step)
        elif isinstance(step, KernelStep) and "out" in step.operands \
                and derived & {value.tensor for name, value in step.operands.items() if name != "out"}:
            derived.add(step.operands["out"].tensor)   # a kernel on the way: the scaling as a table
    return nodes, len(moved), sum(s.value.buffer.nbytes for s in moved)


def _output_scale(model: onnx.ModelProto) -> float:
    """The scale of the DequantizeLinear that produces the graph's output."""
    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.output[0] == model.graph.output[0].name:
            return float(constants[node.input[1]])
    raise ValueError("the model's output is not dequantized")


def batched_vs_per_slice(config: Config, heads: int, m: int, k: int, n: int, device: str | None
                         ) -> tuple[int, int, int | None, int | None]:
    """(predicted batched, predicted per-slice total, measured batched, measured per-slice) cycles of
    ``heads`` products m x k x n with the attention epilogue (requantize to int8)."""
    batched = library.batched_gemm(config, heads, m, k, n, requant=True)
    single = library.gemm(config, m, k, n, requant=True)
    measured: list[int | None] = [None, None]
    if device is not None:
        from braze.sim.device import open_device

        rng = np.random.default_rng(0)
        params = {"mult": np.full(n, 1 << 30), "shift": np.full(n, 38)}
        with open_device(device, config) as dev:
            a = rng.integers(-128, 128, (heads * m, k), dtype=np.int8)
            b = rng.integers(-128, 128, (heads * k, n), dtype=np.int8)
            run = library.run_kernel(dev, batched, {"A": a, "B": b,
                                                    "params": library.pack_params(batched, **params)})
            measured[0] = int(run.counters["cycles"])
            total = 0
            for head in range(heads):
                run = library.run_kernel(dev, single, {"A": a[head * m:(head + 1) * m],
                                                       "B": b[head * k:(head + 1) * k],
                                                       "params": library.pack_params(single, **params)})
                total += int(run.counters["cycles"])
            measured[1] = total
    return batched.predicted_cycles, heads * single.predicted_cycles, measured[0], measured[1]


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="braze bench attention", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="default", help="accelerator preset (default: default)")
    parser.add_argument("--verilator", action="store_true", help="also run on the verilator device (RTL)")
    parser.add_argument("--seq", type=int, default=16)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    args = parser.parse_args(argv)
    if min(args.seq, args.d, args.heads) < 1 or args.d % args.heads:
        parser.error(f"--seq {args.seq}, --d {args.d}, --heads {args.heads}: need positive sizes and heads "
                     f"dividing d")
    config = Config.parse(args.config)
    link = HostLink()
    rng = np.random.default_rng(0)
    shape = (1, args.seq, args.d)
    float_model = attention_model(seq=args.seq, d=args.d, heads=args.heads)
    calibration = [rng.normal(size=shape).astype(np.float32) for _ in range(8)]
    x = rng.normal(size=shape).astype(np.float32)
    devices = ["golden"] + (["verilator"] if args.verilator else [])
    results: list[AttentionResult] = []
    for symmetric in (True, False):
        proto = quantize_attention(float_model, calibration, symmetric=symmetric)
        for device in devices:
            results.append(measure_attention(proto, float_model, x, variant="symmetric" if symmetric
                                             else "asymmetric", device=device, config=config, link=link))
    print(f"attention block: seq {args.seq}, d {args.d}, {args.heads} heads, config {config.name}; "
          f"{link.describe()}, host clock {link.host_clock_hz / 1e6:g} MHz")
    print(f"{'variant':<11} {'device':<9} {'kernel':<34} {'predicted':>9} {'measured':>9}")
    for r in results:
        for kernel, (predicted, measured) in r.kernel_cycles.items():
            print(f"{r.variant:<11} {r.device:<9} {kernel:<34} {predicted:>9} {measured:>9}")
        print(f"{r.variant:<11} {r.device:<9} {'total kernels':<34} "
              f"{sum(p for p, _ in r.kernel_cycles.values()):>9} {r.cycles:>9}")
    print()
    print(f"{'variant':<11} {'device':<9} {'chip MACs':>10} {'of':>8} {'pct':>6} {'bitexact':>8} "
          f"{'ort LSB':>7} {'transfers':>9} {'bytes':>6}")
    for r in results:
        print(f"{r.variant:<11} {r.device:<9} {r.chip_macs:>10} {r.total_macs:>8} {r.chip_mac_pct:>6.1f} "
              f"{str(r.bitexact):>8} {r.ort_lsb:>7} {r.transfers:>9} {r.transfer_bytes:>6}")
    print()
    print("host steps (golden plan; median time at the host link's clock):")
    summary = {}
    for r in results:
        if r.device != "golden":
            continue
        every = sum(c for _, _, c in r.host)
        for node, op, cycles in r.host:
            stage = next((name for name, (nodes, _, _) in r.stages.items() if node in nodes), "")
            print(f"  {r.variant:<11} {node:<44} {op:<22} {cycles:>9.0f}  {stage}")
        for name, (nodes, count, nbytes) in r.stages.items():
            host, transfer = r.stage_cycles(name), link.transfer_cycles(count, nbytes)
            summary[(r.variant, name)] = (host, transfer)
            print(f"  {r.variant:<11} {name} on the host: {len(nodes)} steps {host:.0f} cycles, its {count} "
                  f"transfers ({nbytes} B) {transfer:.0f} cycles")
        print(f"  {r.variant:<11} all host steps {every:.0f} cycles; all {r.transfers} transfers "
              f"{link.transfer_cycles(r.transfers, r.transfer_bytes):.0f} cycles; kernels {r.cycles} cycles")
    dh = args.d // args.heads
    batched = batched_vs_per_slice(config, args.heads, args.seq, dh, args.seq,
                                   "verilator" if args.verilator else "golden")
    print()
    print(f"Q @ K^T ({args.heads} x {args.seq}x{dh}x{args.seq}): batched_gemm predicted {batched[0]}, "
          f"measured {batched[2]}; {args.heads} gemm kernels predicted {batched[1]}, measured {batched[3]}")
    sym = next(r for r in results if r.variant == "symmetric" and r.device == "golden")
    line = (f"attention: chip_mac_pct={sym.chip_mac_pct:.1f} cycles_golden={sym.cycles}")
    verilator = [r for r in results if r.variant == "symmetric" and r.device == "verilator"]
    if verilator:
        line += f" cycles_verilator={verilator[0].cycles}"
    line += (f" bitexact={all(r.bitexact for r in results)} "
             f"batched_over_per_slice={batched[2] / batched[3]:.2f} "
             f"host_softmax_cycles={summary['symmetric', 'softmax'][0]:.0f} "
             f"softmax_transfer_cycles={summary['symmetric', 'softmax'][1]:.0f} "
             f"host_layernorm_cycles={summary['symmetric', 'layernorm'][0]:.0f} "
             f"layernorm_transfer_cycles={summary['symmetric', 'layernorm'][1]:.0f}")
    print(line)
    return 0

