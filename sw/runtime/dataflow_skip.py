"""Zero-block skipping as a dynamic decision: where it applies, what the chip counts, what the host samples.

A partition compiled with the fusion engine's ``skip`` candidate taken for every eligible GEMM
(:func:`~braze.sw.compiler.fusion.fuse` ``profiles``; the candidate forced by all-zero profiles, see
:func:`forced_profiles`) runs :func:`~braze.sw.compiler.kernels.skipping_gemm` kernels, whose outputs
equal the library GEMM's and whose cycles depend on how many K-blocks of their input are all zero.
Each such kernel is a :class:`SkipPoint`: a monitoring point on the GEMM's input tensor, at the
kernel's own granularity (``m`` rows of an M tile by ``rows`` columns, every block but an M tile's
first tested).

The analyzer learns the fraction of tested blocks that are all zero from two sources, measuring the
same quantity:

* **the chip's counters** while the skipping kernel runs (:meth:`SkipPoint.fraction_from_counters`):
  ``macs`` counts the MATMULs executed, and a skipped block executes none of its ``m*rows*N``;
* **a host sample** while the plain kernel runs (:meth:`SkipPoint.fraction_of`): the int8 input
  evaluated on the host from the partition's quantized graph (the integers the chip computes), on the
  runs the analyzer's budget lets it sample.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from ..compiler.frontend import BRAZE_DOMAIN
from ..compiler.ir import Graph
from ..compiler.kernels import Kernel
from ..compiler.kernels.loops import looped_cycles, spread_predicate
from ..compiler.lower import CompiledModel, KernelStep
from ..compiler.profile import TensorProfile

__all__ = ["SkipPoint", "skip_points", "forced_profiles", "tested_zero_fraction", "skipping_cycles_at",
           "prefix_graph"]

#: The skipping kernel's name (:func:`~braze.sw.compiler.kernels.skipping_gemm`).
SKIPPING_KERNEL = "skipping_gemm"


def tested_zero_fraction(value: np.ndarray, m: int, rows: int) -> float:
    """Fraction of the tested K-blocks of ``value`` (an M x K int8 matrix, the GEMM's A) that are all
    zero: blocks of ``m`` rows by ``rows`` columns, the first block of each M tile not tested."""
    matrix = np.asarray(value).reshape(-1, np.shape(value)[-1])
    M, K = matrix.shape
    if M % m or K % rows or K // rows < 2:
        raise ValueError(f"a {M}x{K} input has no tested blocks of {m} x {rows}")
    nonzero = (matrix != 0).reshape(M // m, m, K // rows, rows).any(axis=(1, 3))
    return float(1.0 - nonzero[:, 1:].mean())


def skipping_cycles_at(kernel: Kernel, zero_fraction: float) -> int:
    """A skipping kernel's cycles (timing model) when ``zero_fraction`` of its tested blocks are all zero
    (:meth:`~braze.sw.compiler.kernels.looped.SkippingKernel.cycles_at`, for a kernel as the cache
    returns it: a plain :class:`Kernel`)."""
    return looped_cycles(kernel.instructions, kernel.config, predicate=spread_predicate(zero_fraction))


@dataclasses.dataclass(frozen=True)
class SkipPoint:
    """A skipping GEMM of a compiled partition: ``A`` (``tensor``, M x K) times K x N, M tiles of ``m``."""

    step: str                          # the kernel step's name (its row in the run report)
    node: str
    tensor: str                        # the GEMM's input, a tensor of the partition's quantized graph
    M: int
    K: int
    N: int
    m: int
    rows: int

    @property
    def tested_blocks(self) -> int:
        return (self.M // self.m) * (self.K // self.rows - 1)

    def fraction_from_counters(self, counters: Mapping[str, int]) -> float:
        """The fraction of tested blocks skipped in one run, from the kernel's ``macs`` counter."""
        skipped = (self.M * self.K * self.N - counters["macs"]) / (self.m * self.rows * self.N)
        return min(1.0, max(0.0, skipped / self.tested_blocks))

    def fraction_of(self, value: np.ndarray) -> float:
        """The same fraction measured on the host, on the GEMM's int8 input."""
        return tested_zero_fraction(value, self.m, self.rows)


def skip_points(compiled: CompiledModel, graph: Graph) -> list[SkipPoint]:
    """The skipping GEMMs of a compiled model (``graph``: the fused graph it was lowered from)."""
    points = []
    for step in compiled.steps:
        if not isinstance(step, KernelStep) or step.kernel.name != SKIPPING_KERNEL:
            continue
        node = graph.node(step.ops[0])
        (M, K), (_, N) = step.kernel.operands["A"].shape, step.kernel.operands["B"].shape
        # A tested block is m rows by `chunks` K-chunks of rows columns.
        width = compiled.config.rows * int(step.kernel.tiling.get("chunks", 1))
        points.append(SkipPoint(step.name, node.name, node.inputs[0], M, K, N, int(step.kernel.tiling["m"]),
                                width))
    return points


def forced_profiles(graph: Graph) -> dict[str, TensorProfile]:
    """All-zero profiles of every quantized GEMM's input: priced at them, the fusion engine takes its
    ``skip`` candidate wherever one applies (the session prices the result at observed fractions)."""
    profiles = {}
    rng = np.random.default_rng(0)
    for node in graph.operators():
        if node.qualified_op != f"{BRAZE_DOMAIN}.QMatMul":
            continue
        tensor = node.inputs[0]
        width = graph.tensor(tensor).shape[-1]
        profile = TensorProfile(tensor, (1, width), "int8")
        profile.add(np.zeros((1, width), np.int8), rng)
        profiles[tensor] = profile
    return profiles


def prefix_graph(graph: Graph, tensors: Sequence[str]) -> Graph:
    """The part of ``graph`` that computes ``tensors`` (their producers' ancestors, no outputs): what a
    host sample of them evaluates (:func:`~braze.sw.compiler.frontend.evaluate` with ``keep``)."""
    wanted, stack = set(), list(tensors)
    while stack:
        node = graph.producer(stack.pop())
        if node is None or node.name in wanted:
            continue
        wanted.add(node.name)
        stack.extend(t for t in node.inputs if t)
    return graph.replace(nodes=[node for node in graph.nodes if node.name in wanted])
