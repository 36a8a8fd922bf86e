"""Evaluating performance models honestly: on kernel families they were not trained on.

:func:`holdout_by_family` trains one model per family with every run of that family left out and
predicts the left-out runs, so that no run is judged by a model that saw it (or saw its family:
rows of one family are near-duplicates of each other, and a split by row would flatter the
model).  Each family's MAPE and worst error are reported beside the analytic model's.

Under backpressure one run is a noisy sample of a kernel's cost (its few memory requests meet a
random stall pattern), so errors are reported three ways, and beside the noise itself:

* against every single run (the ``*_mape``/``*_worst`` fields), as measured;
* against the mean of each measurement's repeats (``*_mean_*``: one kernel, configuration and
  memory system under different recorded stall patterns, :func:`~.store.group_repeats`) -- what
  the model predicts; a measurement made once counts as its own mean, nothing is dropped;
* the noise floor (``noise_*``): how far single runs lie from the mean of their repeats, over the
  measurements repeated at least twice.  No model can be judged on single runs more finely;
* against the single runs without backpressure (``*_stall0_worst``), which are deterministic (no
  stall pattern, so no noise): there a single run's error is the model's own.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

import numpy as np

from .features import FEATURE_VERSION
from .model import PerformanceModel, error_pct
from .store import RunRecord, group_repeats

__all__ = ["FamilyScore", "WorstMeasurement", "holdout_by_family", "summarise", "format_scores",
           "format_worst", "worst_measured_once"]


@dataclasses.dataclass(frozen=True)
class WorstMeasurement:
    """One held-out measurement (a kernel, configuration and memory system; its repeats' mean)."""

    family: str
    config_name: str
    stall: float
    repeats: int
    measured: float
    analytic: float
    baseline: float
    learned: float
    signature: dict

    @property
    def learned_error(self) -> float:
        return error_pct(self.learned, self.measured)


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
    mean_errors: list[tuple[float, float]] = dataclasses.field(default_factory=list, repr=False)
    """(analytic error, learned error) against the mean of each measurement's repeats, signed, in percent."""
    noise: list[float] = dataclasses.field(default_factory=list, repr=False)
    """Of every run of a measurement repeated at least twice: its distance from the mean of the
    repeats, in percent of that mean."""
    stalls: list[float] = dataclasses.field(default_factory=list, repr=False)
    """The backpressure of every run, in the order of ``errors``."""
    worst: list[WorstMeasurement] = dataclasses.field(default_factory=list, repr=False)
    """Every measurement (group of repeats) with its held-out predictions, for :func:`format_worst`."""

    @property
    def measurements(self) -> int:
        """Distinct measurements (groups of repeats)."""
        return len(self.mean_errors)

    @property
    def learned_mean_mape(self) -> float:
        return _mean_abs(b for _, b in self.mean_errors)

    @property
    def learned_mean_worst(self) -> float:
        return _max_abs(b for _, b in self.mean_errors)

    @property
    def analytic_mean_mape(self) -> float:
        return _mean_abs(a for a, _ in self.mean_errors)

    @property
    def learned_stall0_errors(self) -> list[float]:
        """The learned error of every run without backpressure (deterministic: no stall pattern)."""
        return [b for (_, b), stall in zip(self.errors, self.stalls, strict=True) if stall == 0]

    @property
    def learned_stall0_worst(self) -> float:
        return _max_abs(self.learned_stall0_errors)

    @property
    def noise_mape(self) -> float:
        return _mean_abs(self.noise)

    @property
    def noise_worst(self) -> float:
        return _max_abs(self.noise)


def _mean_abs(values) -> float:
    values = np.abs(list(values))
    return float(values.mean()) if len(values) else float("nan")


def _max_abs(values) -> float:
    values = np.abs(list(values))
    return float(values.max()) if len(values) else float("nan")


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
        predicted = {id(record): prediction.cycles
                     for record, prediction in zip(test, predictions, strict=True)}
        mean_errors, noise, measurements = [], [], []
        for group in group_repeats(test):
            mean = float(np.mean([record.cycles for record in group]))
            first = group[0]
            mean_errors.append((error_pct(first.features["analytic_cycles"], mean),
                                error_pct(predicted[id(first)], mean)))
            priced = first.features["analytic_cycles"]
            measurements.append(WorstMeasurement(
                family, first.config_name, first.stall, len(group), mean, priced,
                first.features.get("baseline_cycles", priced), predicted[id(first)], first.signature))
            if len(group) > 1:
                noise.extend(error_pct(record.cycles, mean) for record in group)
        scores.append(FamilyScore(family, len(test), float(analytic.mean()), float(analytic.max()),
                                  float(learned.mean()), float(learned.max()), errors,
                                  [record.cycles for record in test], mean_errors, noise,
                                  [record.stall for record in test], measurements))
    return scores


def summarise(scores: Sequence[FamilyScore]) -> dict[str, float]:
    """Pooled over every held-out run: MAPE and worst error, analytic and learned; the learned worst
    against the means of repeats (``learned_mean_worst``), against the runs without backpressure
    (``learned_stall0_worst``), and the noise floor (``noise_worst``)."""
    analytic = np.abs([a for score in scores for a, _ in score.errors])
    learned = np.abs([b for score in scores for _, b in score.errors])
    pooled = {"learned_mean_mape": _mean_abs(b for score in scores for _, b in score.mean_errors),
              "learned_mean_worst": _max_abs(b for score in scores for _, b in score.mean_errors),
              "analytic_mean_mape": _mean_abs(a for score in scores for a, _ in score.mean_errors),
              "noise_mape": _mean_abs(x for score in scores for x in score.noise),
              "noise_worst": _max_abs(x for score in scores for x in score.noise),
              "learned_stall0_worst": _max_abs(b for score in scores for b in score.learned_stall0_errors),
              "measurements": sum(score.measurements for score in scores)}
    if not len(learned):
        return {"analytic_mape": float("nan"), "analytic_worst": float("nan"), "learned_mape": float("nan"),
                "learned_worst": float("nan"), "rows": 0, **pooled}
    return {"analytic_mape": float(analytic.mean()), "analytic_worst": float(analytic.max()),
            "learned_mape": float(learned.mean()), "learned_worst": float(learned.max()),
            "rows": len(learned), **pooled}


def format_scores(scores: Sequence[FamilyScore]) -> str:
    """The per-family table: errors against single runs, against the means of repeats, against the
    deterministic runs (no backpressure), and the noise floor; then the worst errors side by side."""
    lines = ["runs: each run's error; means: the error against the mean of a measurement's repeats "
             "(different stall patterns; one made once is its own mean); stall 0: runs without backpressure "
             "(deterministic); noise: single runs' distance from their repeats' mean",
             f"{'family (held out)':32} {'runs':>5} {'analytic MAPE':>14} {'worst':>8} {'learned MAPE':>13} "
             f"{'worst':>8} {'means':>6} {'learned MAPE':>13} {'worst':>8} {'stall 0 worst':>14} "
             f"{'noise MAPE':>11} {'worst':>8}"]
    rows = [(score.family, score.rows, score.analytic_mape, score.analytic_worst, score.learned_mape,
             score.learned_worst, score.measurements, score.learned_mean_mape, score.learned_mean_worst,
             score.learned_stall0_worst, score.noise_mape, score.noise_worst) for score in scores]
    total = summarise(scores)
    rows.append(("all families", total["rows"], total["analytic_mape"], total["analytic_worst"],
                 total["learned_mape"], total["learned_worst"], total["measurements"],
                 total["learned_mean_mape"], total["learned_mean_worst"], total["learned_stall0_worst"],
                 total["noise_mape"], total["noise_worst"]))
    for family, runs, a_mape, a_worst, l_mape, l_worst, means, m_mape, m_worst, s_worst, n_mape, n_worst \
            in rows:
        lines.append(f"{family:32} {runs:5d} {a_mape:13.2f}% {a_worst:7.1f}% {l_mape:12.2f}% "
                     f"{l_worst:7.1f}% {means:6d} {m_mape:12.2f}% {m_worst:7.1f}% {s_worst:13.1f}% "
                     f"{n_mape:10.2f}% {n_worst:7.1f}%")
    lines.append(f"learned worst: {total['learned_worst']:.1f}% of a single run, "
                 f"{total['learned_mean_worst']:.1f}% of a mean of repeats, "
                 f"{total['learned_stall0_worst']:.1f}% of a run without backpressure; noise floor "
                 f"{total['noise_worst']:.1f}% (analytic worst {total['analytic_worst']:.1f}%)")
    return "\n".join(lines)


def format_worst(scores: Sequence[FamilyScore], count: int = 15) -> str:
    """The ``count`` worst held-out measurements by the learned error against their repeats' mean, and
    the ``count`` worst without backpressure (deterministic): where the baseline misses something.

    Each line: family, configuration, backpressure, repeats, measured cycles (mean), and the analytic
    model's, the memory-aware baseline's and the learned model's prediction with its error.
    """
    measurements = [measurement for score in scores for measurement in score.worst]
    lines = []
    for title, chosen in (("by the error against the mean of repeats", measurements),
                          ("without backpressure", [m for m in measurements if m.stall == 0])):
        lines.append(f"{count} worst held-out measurements {title}:")
        lines.append(f"  {'family':28} {'config':8} {'stall':>5} {'runs':>4} {'measured':>9} "
                     f"{'analytic':>16} {'baseline':>16} {'learned':>16}  tiling")
        for m in sorted(chosen, key=lambda m: -abs(m.learned_error))[:count]:
            predictions = " ".join(f"{value:9.0f} ({error_pct(value, m.measured):+5.1f}%)"
                                   for value in (m.analytic, m.baseline, m.learned))
            lines.append(f"  {m.family:28} {m.config_name:8} {m.stall:5.2f} {m.repeats:4d} {m.measured:9.0f} "
                         f"{predictions}  {json.dumps(m.signature.get('tiling', {}), sort_keys=True)}")
    return "\n".join(lines)


def worst_measured_once(scores: Sequence[FamilyScore], count: int) -> list[WorstMeasurement]:
    """The ``count`` held-out measurements under backpressure made only once with the largest learned
    error: their "mean of repeats" is one run, whose stall pattern's luck the error includes, so they
    are the ones to repeat (:func:`~.calibrate.repeat_measurements`) before reading the worst error."""
    once = [m for score in scores for m in score.worst if m.repeats == 1 and m.stall > 0]
    return sorted(once, key=lambda m: -abs(m.learned_error))[:count]
