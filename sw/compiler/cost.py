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
from collections.abc import Callable, Iterable, Sequence

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
    """Predicted cost: accelerator cycles, external-memory bytes moved (read + written), and energy
    (pJ; None when not estimated -- decisions that minimise cycles do not need it)."""

    cycles: int
    bytes: int
    energy_pj: float | None = None

    def __add__(self, other: Cost) -> Cost:
        energy = None
        if self.energy_pj is not None and other.energy_pj is not None:
            energy = self.energy_pj + other.energy_pj
        return Cost(self.cycles + other.cycles, self.bytes + other.bytes, energy)

    def describe(self) -> str:
        """``12345 cycles / 678 B / 0.123 uJ`` (without the energy when it was not estimated)."""
        energy = "" if self.energy_pj is None else f" / {self.energy_pj / 1e6:.3f} uJ"
        return f"{self.cycles} cycles / {self.bytes} B{energy}"

    def key(self, objective: str = "cycles") -> tuple:
        """Sort key under ``objective`` (see :data:`OBJECTIVES`): the smaller, the better."""
        if objective != "cycles" and self.energy_pj is None:
            raise ValueError(f"objective {objective!r} needs energy estimates: price with energy=True")
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
        """The cycles and bytes of one kernel (energy is added by :meth:`predict` when asked for)."""

    def predict(self, kernel_or_candidate: Kernel | Iterable[Kernel] | object, config: Config, *,
                energy: bool = False) -> Cost:
        """The cost of a kernel, of kernels run one after another, or of anything with ``.kernels``;
        with ``energy``, the energy estimate too (the same for every cost model: the program decides
        the events it prices)."""
        return self._total(_kernels_of(kernel_or_candidate), config, energy, self.predict_kernel)

    def predict_candidates(self, candidates: Sequence[Kernel | Iterable[Kernel] | object], config: Config,
                           *, energy: bool = False) -> list[Cost]:
        """The costs of one decision's alternatives, to be compared with each other.

        A cost model that predicts some kernels one way and others another (a learned model that
        falls back for a few) overrides this so that one decision's candidates are priced alike.
        """
        return [self.predict(candidate, config, energy=energy) for candidate in candidates]

    @staticmethod
    def _total(kernels: Sequence[Kernel], config: Config, energy: bool,
               predict_kernel: Callable[[Kernel, Config], Cost]) -> Cost:
        total = Cost(0, 0, 0.0 if energy else None)
        for kernel in kernels:
            cost = predict_kernel(kernel, config)
            total = total + Cost(cost.cycles, cost.bytes, kernel_energy_estimate(kernel) if energy else None)
        return total


def _kernels_of(kernel_or_candidate: Kernel | Iterable[Kernel] | object) -> list[Kernel]:
    if isinstance(kernel_or_candidate, Kernel):
        return [kernel_or_candidate]
    return list(getattr(kernel_or_candidate, "kernels", kernel_or_candidate))


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
