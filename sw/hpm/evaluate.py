"""Evaluating performance models honestly: on kernel families they were not trained on.

:func:`holdout_by_family` trains one model per family with every run of that family left out and
predicts the left-out runs, so that no run is judged by a model that saw it (or saw its family:
rows of one family are near-duplicates of each other, and a split by row would flatter the
model).  Each family's MAPE and worst error are reported beside the analytic model's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from .features import FEATURE_VERSION
from .model import PerformanceModel, error_pct
from .store import RunRecord

__all__ = ["FamilyScore", "holdout_by_family", "summarise", "format_scores"]


@dataclasses.dataclass
class FamilyScore:
    """Held-out errors of one family (percent of the measured cycles)."""

    family: str
    rows: int
    analytic_mape: float
    analytic_worst: float
    learned_mape: float
    learned_worst: float
    errors: list[tuple[float, float]] = dataclasses.field(default_factory=list, repr=False)
    """(analytic error, learned error) of every run, signed, in percent."""
    cycles: list[int] = dataclasses.field(default_factory=list, repr=False)
    """The measured cycles of every run, in the order of ``errors``."""


def holdout_by_family(records: Sequence[RunRecord], *, regressor: str = "lightgbm",
                      min_train: int = 20) -> list[FamilyScore]:
    """Leave-one-family-out scores of a learned model against the analytic one.

    Only runs recorded with this Braze's features count (older rows cannot be predicted).
    """
    records = [record for record in records if record.features.get("feature_version") == FEATURE_VERSION]
    families = sorted({record.family for record in records})
    scores = []
    for family in families:
        test = [record for record in records if record.family == family]
        train = [record for record in records if record.family != family]
        if len(train) < min_train:
            continue
        model = PerformanceModel(regressor).fit(train, band=False)
        predictions = model.predict_features([record.features for record in test])
        errors = [(error_pct(record.features["analytic_cycles"], record.cycles),
                   error_pct(prediction.cycles, record.cycles))
                  for record, prediction in zip(test, predictions, strict=True)]
        analytic = np.abs([a for a, _ in errors])
        learned = np.abs([b for _, b in errors])
        scores.append(FamilyScore(family, len(test), float(analytic.mean()), float(analytic.max()),
                                  float(learned.mean()), float(learned.max()), errors,
                                  [record.cycles for record in test]))
    return scores


def summarise(scores: Sequence[FamilyScore]) -> dict[str, float]:
    """Pooled over every held-out run: MAPE and worst error, analytic and learned."""
    analytic = np.abs([a for score in scores for a, _ in score.errors])
    learned = np.abs([b for score in scores for _, b in score.errors])
    if not len(learned):
        return {"analytic_mape": float("nan"), "analytic_worst": float("nan"), "learned_mape": float("nan"),
                "learned_worst": float("nan"), "rows": 0}
    return {"analytic_mape": float(analytic.mean()), "analytic_worst": float(analytic.max()),
            "learned_mape": float(learned.mean()), "learned_worst": float(learned.max()),
            "rows": len(learned)}


def format_scores(scores: Sequence[FamilyScore]) -> str:
    """The per-family table."""
    lines = [f"{'family (held out)':32} {'runs':>5} {'analytic MAPE':>14} {'worst':>8} {'learned MAPE':>13} "
             f"{'worst':>8}"]
    rows = [(score.family, score.rows, score.analytic_mape, score.analytic_worst, score.learned_mape,
             score.learned_worst) for score in scores]
    total = summarise(scores)
    rows.append(("all families", total["rows"], total["analytic_mape"], total["analytic_worst"],
                 total["learned_mape"], total["learned_worst"]))
    for family, runs, a_mape, a_worst, l_mape, l_worst in rows:
        lines.append(f"{family:32} {runs:5d} {a_mape:13.2f}% {a_worst:7.1f}% {l_mape:12.2f}% {l_worst:7.1f}%")
    return "\n".join(lines)
