"""Cost models: how the fusion engine prices a candidate.

A :class:`CostModel` predicts the cost of one kernel or of a candidate (a
sequence of kernels) on a configuration: cycles, external-memory bytes and energy.
:class:`TimingCostModel` reads the ISA timing model's prediction that every generated
:class:`~braze.sw.compiler.kernels.Kernel` carries (``predicted_cycles``, from
:func:`braze.isa.timing.schedule`) and counts external-memory bytes from the
kernel's operands.  A learned hardware performance model plugs in by
implementing :meth:`CostModel.predict_kernel`.  Energy is the same for every cost model: the
events it prices are decided by the program (:func:`.energy.kernel_energy_estimate`).

Decisions compare costs under an *objective* (:data:`OBJECTIVES`, :meth:`Cost.key`): fewest
cycles (the default), least energy, or the least energy-delay product.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterable, Sequence

from braze.isa import Config

from .energy import kernel_energy_estimate
from .kernels import Kernel

__all__ = ["Cost", "CostModel", "TimingCostModel", "OBJECTIVES", "check_objective"]

#: What a decision minimises: ``cycles`` (ties by bytes), ``energy`` (ties by cycles), or ``edp``,
#: the energy-delay product.
OBJECTIVES = ("cycles", "energy", "edp")


def check_objective(objective: str) -> str:
    if objective not in OBJECTIVES:
        raise ValueError(f"objective {objective!r}: choose one of {', '.join(OBJECTIVES)}")
    return objective


@dataclasses.dataclass(frozen=True)
class Cost:
    """Predicted cost: accelerator cycles, external-memory bytes moved (read + written), energy (pJ)."""

    cycles: int
    bytes: int
    energy_pj: float = 0.0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.cycles + other.cycles, self.bytes + other.bytes, self.energy_pj + other.energy_pj)

    def key(self, objective: str = "cycles") -> tuple:
        """Sort key under ``objective`` (see :data:`OBJECTIVES`): the smaller, the better."""
        if objective == "cycles":
            return (self.cycles, self.bytes)
        if objective == "energy":
            return (self.energy_pj, self.cycles)
        if objective == "edp":
            return (self.energy_pj * self.cycles, self.cycles)
        raise ValueError(f"objective {objective!r}: choose one of {', '.join(OBJECTIVES)}")

    def value(self, objective: str = "cycles") -> float:
        """The quantity ``objective`` minimises."""
        return float(self.key(objective)[0])


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

    def predict_candidates(self, candidates: Sequence[Kernel | Iterable[Kernel] | object],
                           config: Config) -> list[Cost]:
        """The costs of one decision's alternatives, to be compared with each other.

        A cost model that predicts some kernels one way and others another (a learned model that
        falls back for a few) overrides this so that one decision's candidates are priced alike.
        """
        return [self.predict(candidate, config) for candidate in candidates]


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
        return Cost(int(kernel.predicted_cycles), int(moved), kernel_energy_estimate(kernel))
