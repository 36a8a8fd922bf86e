"""Cost models: how the fusion engine prices a candidate.

A :class:`CostModel` predicts the cost of one kernel or of a candidate (a
sequence of kernels) on a configuration.  :class:`TimingCostModel`, the one in
use, reads the ISA timing model's prediction that every generated
:class:`~braze.sw.compiler.kernels.Kernel` carries (``predicted_cycles``, from
:func:`braze.isa.timing.schedule`) and counts external-memory bytes from the
kernel's operands.  A learned hardware performance model plugs in by
implementing :meth:`CostModel.predict`.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterable

from braze.isa import Config

from .kernels import Kernel

__all__ = ["Cost", "CostModel", "TimingCostModel"]


@dataclasses.dataclass(frozen=True)
class Cost:
    """Predicted cost: accelerator cycles and external-memory bytes moved (read + written)."""

    cycles: int
    bytes: int

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.cycles + other.cycles, self.bytes + other.bytes)


class CostModel(abc.ABC):
    """Predicts what a kernel, or a candidate made of several kernels, costs on a configuration."""

    name: str = "abstract"

    @abc.abstractmethod
    def predict_kernel(self, kernel: Kernel, config: Config) -> Cost:
        """The cost of one kernel."""

    def predict(self, kernel_or_candidate: Kernel | Iterable[Kernel] | object, config: Config) -> Cost:
        """The cost of a kernel, of kernels run one after another, or of anything with ``.kernels``."""
        if isinstance(kernel_or_candidate, Kernel):
            return self.predict_kernel(kernel_or_candidate, config)
        kernels = getattr(kernel_or_candidate, "kernels", kernel_or_candidate)
        total = Cost(0, 0)
        for kernel in kernels:
            total = total + self.predict_kernel(kernel, config)
        return total


class TimingCostModel(CostModel):
    """The ISA timing model's cycles; bytes are every external operand read or written once.

    The bytes are a lower bound (a kernel that streams A several times reads
    more), which is what fusion changes: an intermediate tensor that a fused
    kernel keeps on chip is neither written nor read back.
    """

    name = "isa-timing"

    def predict_kernel(self, kernel: Kernel, config: Config) -> Cost:
        if kernel.config != config:
            raise ValueError(f"kernel {kernel.name} was generated for config {kernel.config.name!r}, "
                             f"not {config.name!r}")
        moved = sum(op.nbytes for op in kernel.operands.values() if op.role != "counters")
        return Cost(int(kernel.predicted_cycles), int(moved))
