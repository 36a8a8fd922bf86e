"""The Pareto front and the finalists on hand-checked sets."""

from __future__ import annotations

import pytest

from braze.sw.dse import ObjectiveError, pareto_front, parse_objectives, pick_finalists


def _points(*rows):
    return [{"cycles": c, "luts": lut, "fmax_mhz": f} for c, lut, f in rows]


def test_front_of_a_known_set():
    points = _points(
        (100, 50, 40),    # 0: on the front (fastest)
        (200, 20, 40),    # 1: on the front (smallest)
        (150, 30, 40),    # 2: on the front (between)
        (160, 30, 40),    # 3: dominated by 2 (slower, same area)
        (250, 60, 40),    # 4: dominated by everything
        (150, 30, 40),    # 5: equal to 2: neither dominates the other
    )
    assert pareto_front(points, ["cycles", "luts"]) == [0, 1, 2, 5]
    assert pareto_front(points, ["cycles"]) == [0]
    assert pareto_front(points, ["luts"]) == [1]


def test_a_maximised_objective_counts_higher_as_better():
    points = _points((100, 50, 40), (100, 50, 60), (90, 70, 30))
    # With Fmax, the second beats the first (same cycles and area, faster clock).
    assert pareto_front(points, ["cycles", "luts", "fmax"]) == [1, 2]
    assert pareto_front(points, ["fmax"]) == [1]


def test_finalists_spread_along_the_first_objective():
    points = _points(*[(100 + 10 * i, 100 - 10 * i, 40) for i in range(7)])
    front = pareto_front(points, ["cycles", "luts"])
    assert front == list(range(7))
    assert pick_finalists(points, front, ["cycles", "luts"], 3) == [0, 3, 6]
    assert pick_finalists(points, front, ["cycles", "luts"], 1) == [0]
    assert pick_finalists(points, front, ["luts", "cycles"], 2) == [6, 0]
    assert pick_finalists(points, front, ["cycles"], 10) == front
    assert pick_finalists(points, front, ["cycles"], 0) == []


@pytest.mark.parametrize("text, message", [
    ("cycles,area", "unknown objective 'area'"),
    ("", "none given"),
    ("cycles,cycles", "names an objective twice"),
])
def test_bad_objectives(text, message):
    with pytest.raises(ObjectiveError, match=message):
        parse_objectives(text)
    assert parse_objectives(" cycles, energy ,luts,fmax") == ["cycles", "energy", "luts", "fmax"]
