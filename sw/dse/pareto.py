"""Objectives and the Pareto front of evaluated configurations."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from braze.isa import BrazeError

__all__ = ["OBJECTIVES", "ObjectiveError", "parse_objectives", "pareto_front", "pick_finalists"]

#: Objective name -> (metric key, direction): "min" or "max".
OBJECTIVES: dict[str, tuple[str, str]] = {
    "cycles": ("cycles", "min"),
    "energy": ("energy_uj", "min"),
    "luts": ("luts", "min"),
    "ffs": ("ffs", "min"),
    "dsps": ("dsps", "min"),
    "brams": ("brams", "min"),
    "fmax": ("fmax_mhz", "max"),
}


class ObjectiveError(BrazeError):
    """An objective list naming no or unknown objectives."""


def parse_objectives(text: str) -> list[str]:
    """``cycles,energy,luts,fmax`` -> a list of known objective names, in order, without repeats."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ObjectiveError(f"objectives: none given; objectives are {', '.join(OBJECTIVES)}")
    for name in names:
        if name not in OBJECTIVES:
            raise ObjectiveError(f"objectives: unknown objective {name!r}; "
                                 f"objectives are {', '.join(OBJECTIVES)}")
    if len(set(names)) != len(names):
        raise ObjectiveError(f"objectives: {text!r} names an objective twice")
    return names


def _costs(metrics: Sequence[Mapping[str, float]], objectives: Sequence[str]) -> np.ndarray:
    """Every objective as a cost to minimise (maximised ones negated)."""
    columns = []
    for name in objectives:
        key, direction = OBJECTIVES[name]
        column = np.array([float(m[key]) for m in metrics])
        columns.append(column if direction == "min" else -column)
    return np.array(columns).T.reshape(len(metrics), len(objectives))


def pareto_front(metrics: Sequence[Mapping[str, float]], objectives: Sequence[str]) -> list[int]:
    """Indices of the non-dominated entries of ``metrics`` (ascending).

    An entry is dominated when another is no worse in every objective and better in one; entries
    with equal objectives do not dominate each other, so both stay.
    """
    costs = _costs(metrics, objectives)
    front = []
    for i in range(len(costs)):
        no_worse = np.all(costs <= costs[i], axis=1)
        better = np.any(costs < costs[i], axis=1)
        if not np.any(no_worse & better):
            front.append(i)
    return front


def pick_finalists(metrics: Sequence[Mapping[str, float]], front: Sequence[int], objectives: Sequence[str],
                   count: int) -> list[int]:
    """``count`` entries of the front spread along its first objective: both ends, then evenly between."""
    if count <= 0 or not front:
        return []
    key, direction = OBJECTIVES[objectives[0]]
    ordered = sorted(front, key=lambda i: (float(metrics[i][key]) * (1 if direction == "min" else -1), i))
    if count >= len(ordered):
        return ordered
    positions = np.linspace(0, len(ordered) - 1, count)
    chosen: list[int] = []
    for position in positions:
        index = ordered[int(round(position))]
        if index not in chosen:
            chosen.append(index)
    return chosen
