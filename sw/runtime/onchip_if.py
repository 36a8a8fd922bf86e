"""An ONNX ``If`` whose condition is computed on chip: both branches' kernels in one program.

A :class:`~braze.sw.runtime.partitions.BranchModel` runs its If on the host: the predecessor's
partition returns the condition, the host picks a branch and starts that branch's partition.  When
the condition is something the chip can compute exactly, :class:`OnChipIfPartition` runs the
predecessor and the else branch as **one program**: after the kernels that compute the tested
tensor, a guard kernel (:func:`~braze.sw.compiler.kernels.guard.if_guard`) loads it, computes its
largest element with ``PREDICATE max`` into a scalar register and ``BRANCH``-es over the else
branch's kernels when the condition holds (:func:`~braze.sw.compiler.lower.lower` with an
:class:`~braze.sw.compiler.lower.IfGuard`).  No tensor goes through the host between the
predecessor and the branch; the host reads the register and the results after the one run.

Which conditions
----------------
:func:`find_guard` accepts ``Compare(ReduceMax(DequantizeLinear(q)), t)`` in the quantized graph --
``Compare`` one of Greater, GreaterOrEqual, Less, LessOrEqual (either operand order), ``ReduceMax``
over every element (one result: the If is batch-wide, as ONNX defines it -- at batch > 1 the
largest element of the whole batch decides, exactly as the host's evaluation does), ``q`` an int8
tensor a kernel computes with a per-tensor positive scale, ``t`` a constant.  Dequantizing is
monotone (float32 rounding of ``(q - zp) * scale`` never reverses an order), so
``ReduceMax(DequantizeLinear(q)) == DequantizeLinear(max(q))`` and the condition is a function of
``max(q)`` alone.  :func:`find_guard` evaluates the graph's own nodes (Braze's evaluator, the
host's arithmetic) on every int8 value of the maximum and accepts the condition only when the
answers are a step -- ``max(q) >= k`` or ``max(q) < k`` for an integer ``k`` -- which is then what
the chip tests.  Anything else (a softmax probability, a per-row decision, a float tensor) is
refused with the reason, and the If stays on the host: never a different answer.  Every run checks
the chip's decision against the host's evaluation of the condition (which reads the tested
tensor anyway, the then branch's result) and raises if they ever differ.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from braze.isa import Config
from braze.isa.errors import BrazeError

from ..compiler.frontend import evaluate_node
from ..compiler.ir import Graph, NodeKind
from ..compiler.lower import IfGuard, KernelStep, LoweringError, TransferStep, lower
from .partitions import AcceleratorPartition, HostLink, Region, Transfer
from .runtime import Runtime

__all__ = ["OnChipIfError", "find_guard", "OnChipIfPartition", "COMPARISONS"]

#: Comparison operators a guard can test, and their operands' roles.
COMPARISONS = ("Greater", "GreaterOrEqual", "Less", "LessOrEqual")


class OnChipIfError(BrazeError):
    """The If's condition is not one the chip computes exactly (or its kernels cannot form one program)."""


def find_guard(graph: Graph, cond: str, needed: Sequence[str]) -> IfGuard:
    """The on-chip form of condition ``cond`` of the quantized ``graph``, proved equal for every int8
    maximum; ``needed`` are the outputs the then branch reads (``cond`` among them).  Raises
    :class:`OnChipIfError` with the reason when there is none."""
    compare = graph.producer(cond)
    if compare is None or compare.kind is not NodeKind.OPERATOR or compare.op_type not in COMPARISONS:
        raise OnChipIfError(f"If condition {cond!r} is not a comparison ({', '.join(COMPARISONS)})")
    constants = [graph.constant(t) for t in compare.inputs]
    if sum(c is not None for c in constants) != 1 or np.asarray(
            next(c for c in constants if c is not None)).size != 1:
        raise OnChipIfError(f"comparison {compare.name!r}: needs one constant scalar operand")
    reduced = next(t for t, c in zip(compare.inputs, constants, strict=True) if c is None)
    reduce_node = graph.producer(reduced)
    if reduce_node is None or reduce_node.op_type != "ReduceMax":
        raise OnChipIfError(f"comparison {compare.name!r}: its operand {reduced!r} is not a ReduceMax "
                            f"(the chip tests a tensor's largest element)")
    info = graph.tensor(reduced)
    if info.shape is None or not info.static or int(np.prod(info.shape, dtype=np.int64)) != 1:
        raise OnChipIfError(f"ReduceMax {reduce_node.name!r}: reduces to {info.shape}, not one value (a "
                            f"per-row decision is no ONNX If condition)")
    dequant = graph.producer(reduce_node.inputs[0])
    if dequant is None or dequant.op_type != "DequantizeLinear":
        raise OnChipIfError(f"ReduceMax {reduce_node.name!r}: reads {reduce_node.inputs[0]!r}, not the "
                            f"dequantized result of a kernel")
    q = dequant.inputs[0]
    scale = graph.constant(dequant.inputs[1])
    zero = graph.constant(dequant.inputs[2]) if len(dequant.inputs) > 2 and dequant.inputs[2] else np.int8(0)
    q_info = graph.tensor(q)
    one_scale = scale is not None and np.asarray(scale).size == 1 and float(np.asarray(scale)) > 0
    if q_info.dtype != "int8" or not one_scale or zero is None or np.asarray(zero).size != 1:
        raise OnChipIfError(f"DequantizeLinear {dequant.name!r}: needs an int8 tensor with one positive "
                            f"scale and one zero point")
    if not q_info.static:
        raise OnChipIfError(f"tensor {q!r} has no static shape")
    answers = []
    for value in range(-128, 128):
        filled = np.full(tuple(int(d) for d in q_info.shape), value, np.int8)
        (real,) = evaluate_node(dequant, filled, *_constants(graph, dequant.inputs[1:]))
        (largest,) = evaluate_node(reduce_node, real, *_constants(graph, reduce_node.inputs[1:]))
        args = [largest if t == reduced else graph.constant(t) for t in compare.inputs]
        (result,) = evaluate_node(compare, *args)
        answers.append(bool(np.asarray(result).reshape(-1)[0]))
    changes = [i for i in range(1, 256) if answers[i] != answers[i - 1]]
    if len(changes) != 1:
        shape = "constant" if not changes else "not monotone"
        raise OnChipIfError(f"If condition {cond!r} is {shape} in the largest element of {q!r}")
    threshold = changes[0] - 128
    return IfGuard(q, threshold, "ge" if answers[-1] else "lt", cond, tuple(needed))


def _constants(graph: Graph, tensors: Sequence[str]) -> list:
    return [graph.constant(t) if t else None for t in tensors]


class OnChipIfPartition(AcceleratorPartition):
    """The If's predecessor and else branch as one accelerator program with the condition on chip.

    ``region`` is the fused region (predecessor and else branch; its outputs are the condition, what
    the then branch reads, then the else branch's outputs).  Costs: :attr:`predicted_cycles` is the
    run with the else branch (the most it costs); :meth:`predicted_at` prices a rate of taking it.
    """

    kind = "accelerator"

    def __init__(self, region: Region, *, cond: str, then_inputs: Sequence[str], config: Config,
                 calibration, cache, cost_model, device, link: HostLink):
        super().__init__(region, config=config, calibration=calibration, cache=cache, cost_model=cost_model,
                         device=device, link=link)
        self.name = f"{region.name}(if on chip)"
        self.link = link
        fused = self.session.graph_after
        try:
            self.guard = find_guard(fused, cond, [cond, *then_inputs])
            self.compiled = lower(fused, config, cache=cache, guard=self.guard)
        except (OnChipIfError, LoweringError) as error:
            self.session.close()
            raise OnChipIfError(str(error)) from error
        plan = self.compiled.guard
        self.runtime = Runtime(self.compiled, self.session.device)
        steps = self.compiled.steps
        moves = [(i, Transfer(self.name, s.value.tensor, s.direction,
                              int(np.prod(s.value.shape)) * s.value.dtype.itemsize))
                 for i, s in enumerate(steps) if isinstance(s, TransferStep)]
        self._always = [t for i, t in moves if i not in plan.else_steps]
        self._else_only = [t for i, t in moves if i in plan.else_steps]
        self.transfers = self._always + self._else_only
        self.transfer_bytes = sum(t.bytes for t in self.transfers)
        self.device_runs = len(self.compiled.segments)
        kernels = [s for s in steps if isinstance(s, KernelStep)]
        guard_step = next(k for k in kernels if k.name == plan.step)
        then_kernels = [k.kernel for k in kernels if k.name not in plan.else_kernels and k is not guard_step]
        else_kernels = [k.kernel for k in kernels if k.name in plan.else_kernels]
        predict = self.session.cost_model.predict
        # The guard is not a library kernel a learned model was trained on: the ISA timing model prices it.
        self.predicted_then_cycles = (int(predict(then_kernels, config).cycles)
                                      + guard_step.kernel.predicted_cycles)
        self.predicted_else_cycles = int(predict(else_kernels, config).cycles) if else_kernels else 0
        self.predicted_kernel_cycles = self.predicted_then_cycles + self.predicted_else_cycles
        self.predicted_cycles = self.predicted_at(1.0)
        self.last_transfers: list[Transfer] = list(self.transfers)

    def predicted_at(self, else_rate: float) -> float:
        """Predicted cost per run when the else branch is taken in ``else_rate`` of the runs."""
        link = self.link
        always = link.transfer_cycles(len(self._always), sum(t.bytes for t in self._always))
        orelse = link.transfer_cycles(len(self._else_only), sum(t.bytes for t in self._else_only))
        return (self.predicted_then_cycles + link.launch_cycles * self.device_runs + always
                + else_rate * (self.predicted_else_cycles + orelse))

    def run(self, feeds: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
        """The region's outputs (without the else branch's when the guard skipped it) and kernel cycles."""
        with self._lock:
            values = self.runtime.run({name: feeds[name] for name in self.region.inputs})
            cycles = self.runtime.last_report.total_cycles
            took_else = not self.runtime.last_guard_holds
        self.last_transfers = self._always + (self._else_only if took_else else [])
        return {name: values[name] for name in self.region.outputs if name in values}, cycles

    def host_graph(self):
        return self.session.graph_before
