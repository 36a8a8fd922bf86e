"""Per-model reports of the zoo: where the MACs run, what stays on the host and why, exactness, accuracy.

:func:`~braze.sw.compiler.macs.count_macs` (re-exported here) counts the multiply-accumulates of
every matrix operator from a graph's static shapes.  :func:`model_report` compiles a zoo model as
onnxruntime's quantizer wrote it (no calibration by Braze: the QDQ groups become Braze ops), and
measures:

* MACs on the accelerator: the matrix operators the lowering made kernels (directly, or fused
  into a kernel), as a fraction of all MACs per inference;
* the operators on the host, grouped by operator type and the reason the lowering gives
  (:func:`~braze.sw.compiler.lower.plan_node`'s, or a kernel's refusal);
* bit-exactness: the golden device's outputs against the frontend evaluator's
  (:func:`~braze.sw.compiler.frontend.evaluate` of the quantized graph) on every evaluated image,
  and, per batch size asked for, the verilator device's against the golden device's;
* against onnxruntime running the same QDQ model: argmax agreement and the largest logit error,
  and accuracy on the digits validation split (every zoo model is trained);
* compile time and cycles per inference (the kernels' COUNTERS snapshots, per batch size).
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Mapping, Sequence

import numpy as np

from braze.isa import Config
from braze.isa.errors import BrazeError

from ..compiler.cache import KernelCache
from ..compiler.frontend import evaluate
from ..compiler.macs import count_macs, node_macs
from ..runtime.session import InferenceSession
from .export import INPUT, quantize_qdq
from .models import ZOO, build_model, digits_images

__all__ = ["HostOps", "MacPlacement", "ModelReport", "count_macs", "node_macs", "mac_placement",
           "model_report", "format_reports", "AGREEMENT_TARGET", "ACCURACY_MARGIN", "CHIP_MAC_TARGETS",
           "EVAL_CHUNK"]

#: Argmax agreement with onnxruntime's QDQ run that a model with the ``"agreement"`` target must reach.
AGREEMENT_TARGET = 0.99
#: How far below onnxruntime's QDQ accuracy a trained model may be (issue 11: within 1 point).
ACCURACY_MARGIN = 0.01
#: Issue 11's targets of MACs on the accelerator, by model kind.
CHIP_MAC_TARGETS = {"resnet18": 0.95, "mobilenetv2": 0.95, "transformer": 0.90, "mixer": 0.90}
#: Images per golden run when a report evaluates the validation split (one compiled shape).
EVAL_CHUNK = 40

@dataclasses.dataclass(frozen=True)
class HostOps:
    """Operators of one type that run on the host for one reason, and the MACs among them."""

    op_type: str
    count: int
    reason: str
    macs: int


@dataclasses.dataclass
class ModelReport:
    """One zoo model compiled from one exporter's QDQ model (see the module documentation).

    MACs and cycles are per inference.  ``cycles_golden``/``cycles_verilator`` map a batch size to
    cycles per inference at that batch; ``verilator_identical`` is None when verilator did not run.
    ``accuracy*`` are None for untrained models; ``target`` is the zoo spec's (``"accuracy"`` or
    ``"agreement"``).
    """

    name: str
    exporter: str
    params: int
    trained: bool
    total_macs: int
    chip_macs: int
    kernels: int
    host_ops: list[HostOps]
    compile_seconds: float
    images: int
    frontend_identical: bool
    agreement: float
    max_logit_error: float
    accuracy: float | None
    accuracy_ort: float | None
    accuracy_float: float | None
    cycles_golden: dict[int, float]
    cycles_verilator: dict[int, float] = dataclasses.field(default_factory=dict)
    verilator_identical: bool | None = None
    verilator_seconds: float = 0.0
    target: str = "accuracy"
    #: MACs the array performed per inference at batch 1 (its MAC counter): more than ``chip_macs``
    #: where a kernel computes zeros (a grouped convolution runs as the dense one).
    array_macs: int = 0
    #: Host time of one golden inference at batch 1 outside the device (host ops, transfers), ms.
    host_ms: float = 0.0

    @property
    def chip_mac_fraction(self) -> float:
        return self.chip_macs / self.total_macs if self.total_macs else 0.0

    @property
    def chip_mac_target(self) -> float:
        return CHIP_MAC_TARGETS.get(self.name, 0.95)

    @property
    def within_target(self) -> bool:
        """Accuracy within :data:`ACCURACY_MARGIN` of onnxruntime's (target ``"accuracy"``), or argmax
        agreement of at least :data:`AGREEMENT_TARGET` (target ``"agreement"``)."""
        if self.target == "accuracy":
            return self.accuracy is not None and self.accuracy >= self.accuracy_ort - ACCURACY_MARGIN
        return self.agreement >= AGREEMENT_TARGET

    @property
    def passed(self) -> bool:
        """Bit-identical golden vs frontend and vs verilator (verilator must have run), and within
        the accuracy or agreement target.  (The MACs-on-chip target is reported separately.)"""
        return bool(self.frontend_identical and self.verilator_identical and self.within_target)

    def table(self) -> str:
        """The report as text: a summary block and the host operators with their reasons."""
        def pct(value):
            return "-" if value is None else f"{100 * value:.1f}%"

        def same(value):
            return "not run" if value is None else ("bit-identical" if value else "DIFFERENT")

        lines = [
            f"{self.name} ({self.exporter} export, onnxruntime QDQ per-channel): {self.params:,} params",
            f"  MACs/inference   {self.total_macs:,}; on the accelerator {self.chip_macs:,} "
            f"({100 * self.chip_mac_fraction:.1f}%, target {100 * self.chip_mac_target:.0f}%) in "
            f"{self.kernels} kernels; the array's MAC counter {self.array_macs:,}",
            f"  compile          {self.compile_seconds:.2f} s (load, lower QDQ, fuse, tile, lower)",
            f"  golden/frontend  {same(self.frontend_identical)} on {self.images} images",
            f"  golden/verilator {same(self.verilator_identical)}"
            + (f" at batch {','.join(map(str, self.cycles_verilator))}" if self.cycles_verilator else ""),
            f"  vs onnxruntime   argmax agreement {pct(self.agreement)}, max logit error "
            f"{self.max_logit_error:.4g}; target: "
            + (f"accuracy within {100 * ACCURACY_MARGIN:.0f} point of onnxruntime's"
               if self.target == "accuracy" else f"agreement >= {100 * AGREEMENT_TARGET:.0f}%")
            + (" (met)" if self.within_target else " (NOT met)"),
        ]
        if self.trained:
            lines.append(f"  accuracy         braze {pct(self.accuracy)}, onnxruntime QDQ "
                         f"{pct(self.accuracy_ort)}, float {pct(self.accuracy_float)} (digits validation)")
        cycles = "; ".join(f"batch {b}: golden {c:,.0f}" + (f", verilator {self.cycles_verilator[b]:,.0f}"
                                                            if b in self.cycles_verilator else "")
                           for b, c in self.cycles_golden.items())
        lines.append(f"  cycles/inference {cycles}")
        lines.append(f"  host ops         {sum(h.count for h in self.host_ops)} "
                     f"({sum(h.macs for h in self.host_ops):,} MACs; {self.host_ms:.1f} ms of host time per "
                     f"golden inference at batch 1):")
        for host in self.host_ops:
            lines.append(f"    {host.count:>4} x {host.op_type:<20} {host.reason}"
                         + (f"  [{host.macs:,} MACs]" if host.macs else ""))
        return "\n".join(lines)

    __str__ = table


def _host_ops(session: InferenceSession, macs: Mapping[str, int]) -> list[HostOps]:
    """Host operators of the session's last compiled plan, grouped by (op type, reason)."""
    groups: dict[tuple[str, str], list[int]] = collections.defaultdict(lambda: [0, 0])
    source = session.compiled.source
    for name, where in session.compiled.placement.items():
        if not where.startswith("cpu"):
            continue
        node = source.node(name)
        group = groups[(node.qualified_op, where.split(": ", 1)[-1])]
        group[0] += 1
        group[1] += sum(macs.get(op, 0) for op in node.attrs.get("fused_ops", (name,)))
    rows = [HostOps(op, count, reason, host_macs) for (op, reason), (count, host_macs) in groups.items()]
    return sorted(rows, key=lambda h: (-h.macs, -h.count, h.op_type))


def _on_chip(session: InferenceSession) -> set[str]:
    """Names of the quantized graph's nodes that run inside a kernel of the last compiled plan."""
    source = session.compiled.source
    names = set()
    for name, where in session.compiled.placement.items():
        if where.startswith("accel") and name in source:
            names.update(source.node(name).attrs.get("fused_ops", (name,)))
    return names


@dataclasses.dataclass(frozen=True)
class MacPlacement:
    """Where a session's MACs run for one input: every matrix node's MACs, and which are on chip."""

    macs: Mapping[str, int]
    on_chip: frozenset[str]
    host_ops: list[HostOps]

    @property
    def total(self) -> int:
        return sum(self.macs.values())

    @property
    def chip(self) -> int:
        return sum(m for node, m in self.macs.items() if node in self.on_chip)


def mac_placement(session: InferenceSession, feeds: Mapping[str, np.ndarray]) -> MacPlacement:
    """Compile ``session`` for ``feeds``' shapes and account its MACs: :func:`count_macs` of the
    quantized graph (shapes from evaluating it on ``feeds``; it must equal the count of the model's
    own operators), a node on chip when the lowering made it, or a fused group holding it, a kernel;
    the host operators with the lowering's reasons."""
    shapes = {k: np.shape(v) for k, v in evaluate(session.graph_before, feeds, keep=True).items()}
    macs = count_macs(session.graph_before, shapes)
    # The model's own operators (standard ONNX ops, before Braze lowered them) must count the same:
    # a lowered op :func:`node_macs` does not know would otherwise vanish from both sides silently.
    float_shapes = {k: np.shape(v) for k, v in evaluate(session.graph_float, feeds, keep=True).items()}
    expected = sum(count_macs(session.graph_float, float_shapes).values())
    if sum(macs.values()) != expected:
        raise BrazeError(f"model {session.graph_before.name!r}: its operators do {expected:,} MACs, the "
                         f"quantized graph's count {sum(macs.values()):,}: an operator of "
                         f"{sorted({n.qualified_op for n in session.graph_before.operators()})} "
                         "is missing from node_macs")
    session.compile_for({name: np.shape(value) for name, value in feeds.items()})
    chip = _on_chip(session)
    unplaced = [node for node in macs if node not in chip and not _placed_on_host(session, node)]
    if unplaced:
        raise BrazeError(f"matrix nodes {unplaced} of {session.graph_before.name!r} are neither in a kernel "
                         f"nor on the host in the lowered plan")
    return MacPlacement(macs, frozenset(chip), _host_ops(session, macs))


def _placed_on_host(session: InferenceSession, name: str) -> bool:
    source = session.compiled.source
    return any(where.startswith("cpu") and name in source.node(node).attrs.get("fused_ops", (node,))
               for node, where in session.compiled.placement.items())


def _same(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> bool:
    return len(a) == len(b) and all(x.dtype == y.dtype and np.array_equal(x, y)
                                    for x, y in zip(a, b, strict=True))


def _ort_logits(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    """onnxruntime's run of the QDQ model as written: its optimized kernels depend on the CPU
    (see :mod:`braze.sw.runtime.ort_reference`)."""
    from ..runtime.ort_reference import qdq_reference_session

    return qdq_reference_session(model_bytes).run(None, {INPUT: x})[0]


def _float_accuracy(name: str, x: np.ndarray, y: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        return float((build_model(name)(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def model_report(name: str, exporter: str = "dynamo", *, config: str | Config = "default",
                 images: int | None = None, batches: Sequence[int] = (1,), verilator: bool = False,
                 cache: KernelCache | None = None, cost_model: str = "analytic") -> ModelReport:
    """Compile zoo model ``name`` (``exporter``'s export, quantized by onnxruntime) and measure it.

    ``images``: how many digits validation images to evaluate on the golden device, in runs of
    :data:`EVAL_CHUNK` (default: all 360).  ``batches``: the batch sizes whose cycles per inference
    are measured (the first images); with ``verilator`` each also runs on the verilator device
    and its outputs are compared with the golden device's.  Both devices' sessions plan with
    ``cost_model`` (default the ISA timing model, so that they run the same kernels) and record
    nothing in the performance history.
    """
    if name not in ZOO:
        raise BrazeError(f"no zoo model {name!r}; the zoo has {', '.join(ZOO)}")
    if any(b < 1 for b in batches):
        raise BrazeError(f"batch sizes must be at least 1, not {list(batches)}")
    config = config if isinstance(config, Config) else Config.parse(config)
    spec = ZOO[name]
    x_val, y_val = np.array(digits_images()[2]), np.array(digits_images()[3])
    count = len(x_val) if images is None else max(1, min(int(images), len(x_val)))
    x_val, y_val = x_val[:count], y_val[:count]
    params = sum(p.numel() for p in build_model(name).parameters())
    qdq = quantize_qdq(name, exporter)
    qdq_bytes = qdq.SerializeToString()

    started = time.perf_counter()            # load + compile: the first run's shapes
    session = InferenceSession(qdq, device="golden", config=config, cache=cache, cost_model=cost_model,
                               record=False)
    chunk = min(EVAL_CHUNK, count)
    session.compile_for({INPUT: (chunk, *x_val.shape[1:])})
    compile_seconds = time.perf_counter() - started

    logits, identical = [], True
    for start in range(0, count, chunk):
        x = x_val[start:start + chunk]
        (out,) = session.run(None, {INPUT: x})
        reference = evaluate(session.graph_before, {INPUT: x})
        identical &= _same([out], [reference[session.graph_before.outputs[0]]])
        logits.append(out)
    logits = np.concatenate(logits)
    ort_logits = _ort_logits(qdq_bytes, x_val)
    agreement = float((logits.argmax(1) == ort_logits.argmax(1)).mean())
    max_error = float(np.abs(logits.astype(np.float64) - ort_logits).max())
    accuracy = accuracy_ort = accuracy_float = None
    if spec.trained:
        accuracy = float((logits.argmax(1) == y_val).mean())
        accuracy_ort = float((ort_logits.argmax(1) == y_val).mean())
        accuracy_float = _float_accuracy(name, x_val, y_val)

    # MACs per inference: the quantized graph and its plan at batch 1.
    placement = mac_placement(session, {INPUT: x_val[:1]})
    cycles_golden: dict[int, float] = {}
    golden_outputs: dict[int, np.ndarray] = {}
    for batch in sorted(set(batches)):
        (golden_outputs[batch],) = session.run(None, {INPUT: x_val[:batch]})
        cycles_golden[batch] = session.report().total_cycles / batch
    session.run(None, {INPUT: x_val[:1]})
    array_macs = session.report().total_macs
    host_ms = session.report().host_seconds * 1e3
    kernels = len(session.compile_for({INPUT: x_val[:1].shape}).kernels)
    session.close()

    report = ModelReport(name, exporter, params, spec.trained, placement.total, placement.chip, kernels,
                         placement.host_ops, compile_seconds, count, identical, agreement, max_error,
                         accuracy, accuracy_ort, accuracy_float, cycles_golden, target=spec.target,
                         array_macs=array_macs, host_ms=host_ms)
    if verilator:
        started = time.perf_counter()
        rtl = InferenceSession(qdq, device="verilator", config=config, cache=cache, cost_model=cost_model,
                               record=False)
        same = True
        try:
            for batch in sorted(set(batches)):
                (out,) = rtl.run(None, {INPUT: x_val[:batch]})
                same &= _same([out], [golden_outputs[batch]])
                report.cycles_verilator[batch] = rtl.report().total_cycles / batch
        finally:
            rtl.close()
        report.verilator_identical = same
        report.verilator_seconds = time.perf_counter() - started
    return report


def format_reports(reports: Sequence[ModelReport]) -> str:
    """A one-row-per-model table (then each model's host operators and reasons)."""
    header = (f"{'model':<12} {'export':<11} {'params':>8} {'MACs/inf':>10} {'on chip':>8} {'kernels':>7} "
              f"{'compile':>8} {'golden=fe':>9} {'gold=rtl':>8} {'agree':>7} {'max err':>8} {'acc':>6} "
              f"{'acc ORT':>7} {'pass':>4}")
    lines = [header, "-" * len(header)]
    for r in reports:
        acc = "-" if r.accuracy is None else f"{100 * r.accuracy:.1f}"
        acc_ort = "-" if r.accuracy_ort is None else f"{100 * r.accuracy_ort:.1f}"
        rtl = "-" if r.verilator_identical is None else ("yes" if r.verilator_identical else "NO")
        lines.append(f"{r.name:<12} {r.exporter:<11} {r.params:>8,} {r.total_macs:>10,} "
                     f"{100 * r.chip_mac_fraction:>7.1f}% {r.kernels:>7} {r.compile_seconds:>7.2f}s "
                     f"{'yes' if r.frontend_identical else 'NO':>9} {rtl:>8} {100 * r.agreement:>6.1f}% "
                     f"{r.max_logit_error:>8.4f} {acc:>6} {acc_ort:>7} {'yes' if r.passed else 'no':>4}")
    return "\n".join(lines)

