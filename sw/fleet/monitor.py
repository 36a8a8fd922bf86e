"""``monitor(codelet_id, fleet_id)``: a codelet's execution time, its fleet's utilisation, its errors.

Read from the performance history (table ``codelet_runs``), so it sees runs of every process that
wrote there -- a benchmark, ``braze fleet run``, a notebook.
"""

from __future__ import annotations

import dataclasses
import statistics

from braze.sw.hpm import HistoryStore

from .codelet import FleetError

__all__ = ["CodeletMetrics", "monitor"]


@dataclasses.dataclass(frozen=True)
class CodeletMetrics:
    """What the history says about one codelet on one fleet.

    Attributes
    ----------
    runs, errors, fallbacks : int
        Runs recorded, runs that raised, runs that fell back to the CPU.
    mean_seconds, last_seconds, max_seconds : float
        Execution time of its successful runs.
    mean_error_pct : float or None
        Mean absolute error of the dispatcher's predictions, in percent.
    utilisation : float
        Busy time of the fleet (all its codelet runs) over the span in which this codelet ran,
        per worker of the fleet that ran them (0..1).
    """

    codelet: str
    fleet: str
    runs: int
    errors: int
    fallbacks: int
    mean_seconds: float
    last_seconds: float
    max_seconds: float
    mean_error_pct: float | None
    utilisation: float


def monitor(codelet_id: str, fleet_id: str, *, program: str | None = None,
            history: HistoryStore | None = None) -> CodeletMetrics:
    """Execution time, utilisation and error metrics of ``codelet_id`` on fleet ``fleet_id``."""
    store = history if history is not None else HistoryStore()
    runs = [run for run in store.codelet_runs()
            if run.codelet == codelet_id and (program is None or run.program == program)]
    mine = [run for run in runs if run.fleet == fleet_id or (run.error and run.fleet == "?")]
    if not mine:
        fleets = sorted({run.fleet for run in runs})
        raise FleetError(f"no run of codelet {codelet_id!r} on fleet {fleet_id!r} in the history {store.path}"
                         + (f"; it ran on {', '.join(fleets)}" if fleets else ""))
    good = [run for run in mine if run.error is None]
    seconds = [run.seconds for run in good] or [0.0]
    errors = [abs(run.predicted_seconds - run.seconds) / run.seconds * 100 for run in good
              if run.predicted_seconds is not None and run.seconds > 0]
    begin = min(run.recorded_at - run.seconds for run in mine)
    end = max(run.recorded_at for run in mine)
    fleet_runs = [run for run in store.codelet_runs() if run.fleet == fleet_id and run.error is None
                  and begin <= run.recorded_at <= end]
    workers = max(1, len({run.worker for run in fleet_runs}))
    busy = sum(run.seconds for run in fleet_runs)
    utilisation = min(1.0, busy / (workers * (end - begin))) if end > begin else 0.0
    return CodeletMetrics(codelet_id, fleet_id, len(mine), len(mine) - len(good),
                          sum(run.fallback is not None for run in good), statistics.fmean(seconds),
                          seconds[-1], max(seconds), statistics.fmean(errors) if errors else None,
                          utilisation)
