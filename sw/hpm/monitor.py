"""The closed loop: every run teaches the model, and a model that drifts is retrained.

A :class:`Monitor` takes each run's kernels and their counter snapshots (:meth:`Monitor.observe`,
which only queues them, so a run never waits for it), and on its worker thread computes their
features, compares the measurement with what the current model (or, without one, the analytic
model) predicted, stores the row in the history, and keeps a rolling error.  When the rolling
error passes ``threshold_pct``, or ``retrain_rows`` new rows have arrived since the last training,
it retrains on the history -- on the same worker thread, off every run's critical path -- and swaps
the new model in with one reference assignment, bumping :attr:`Monitor.version`.  Whoever plans
with the model (an :class:`~braze.sw.runtime.InferenceSession`) checks the version *between* runs
and re-plans, so no run sees a half-updated plan.
"""

from __future__ import annotations

import collections
import dataclasses
import queue
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ..compiler.kernels import Kernel
from .calibrate import record_run
from .features import MemorySystem, kernel_features
from .model import ModelError, PerformanceModel, error_pct
from .store import HistoryStore

__all__ = ["Monitor", "MonitorEvent"]


@dataclasses.dataclass(frozen=True)
class MonitorEvent:
    """Something the monitor did: ``kind`` is ``retrain`` or ``error``."""

    kind: str
    detail: str
    at: float = dataclasses.field(default_factory=time.time)


class Monitor:
    """Records runs, tracks the prediction error and retrains the model when it drifts.

    Parameters
    ----------
    store : HistoryStore
        Where runs go (and what retraining reads).
    device : str
        The device kind whose runs these are (the model is per device kind).
    model : PerformanceModel or None
        The model in use; None until one is trained (the analytic model predicts meanwhile).
    threshold_pct : float
        Retrain when the mean absolute error of the last ``window`` runs exceeds this.
    window : int
        Runs in the rolling error.
    retrain_rows : int
        Also retrain after this many new rows.
    min_rows : int
        Rows the history needs before a first model is trained.
    regressor : str
        Regressor of retrained models.
    save_to : Path or None
        Folder each retrained model is saved to (atomically replaced), so the next process starts
        from it -- provided the history it was trained on is at least as large as the training set
        of the model the monitor started with: a model retrained on a few local runs must not
        replace, for every later process, one calibrated on thousands (it still serves this
        process, whose runs it fits).
    background : bool
        Process on a worker thread (default); otherwise :meth:`observe` processes at once (tests).
    """

    def __init__(self, store: HistoryStore, *, device: str, model: PerformanceModel | None = None,
                 threshold_pct: float = 5.0, window: int = 16, retrain_rows: int = 256, min_rows: int = 32,
                 regressor: str = "lightgbm", save_to: Path | None = None, background: bool = True,
                 on_swap: Callable[[PerformanceModel], None] | None = None):
        self.store = store
        self.device = device
        self.threshold_pct = threshold_pct
        self.window = window
        self.retrain_rows = retrain_rows
        self.min_rows = min_rows
        self.regressor = regressor
        self.save_to = save_to
        self.on_swap = on_swap
        self._model = model
        #: Rows a retrained model needs before it is saved (see ``save_to``).
        self._save_floor = int(model.metadata.get("rows", 0)) if model is not None else 0
        self.version = 0
        self.events: list[MonitorEvent] = []
        self._errors: collections.deque[float] = collections.deque(maxlen=window)
        self._rows_since_training = 0
        self._queue: queue.Queue | None = None
        self._worker: threading.Thread | None = None
        if background:
            self._queue = queue.Queue()
            self._worker = threading.Thread(target=self._work, name="braze-hpm-monitor", daemon=True)
            self._worker.start()

    @property
    def model(self) -> PerformanceModel | None:
        """The current model (swapped atomically by retraining)."""
        return self._model

    @property
    def rolling_error_pct(self) -> float | None:
        """Mean absolute error of the last ``window`` predictions, in percent (None before any)."""
        return sum(self._errors) / len(self._errors) if self._errors else None

    # --- Intake. ---------------------------------------------------------------------------------
    def observe(self, kernels: Sequence[Kernel], counters: Sequence[dict], memory: MemorySystem,
                source: str = "runtime") -> None:
        """One run's kernels and their counter snapshots (queued; returns at once)."""
        item = (list(kernels), [dict(c) for c in counters], memory, source)
        if self._queue is None:
            self._process(item)
        else:
            self._queue.put(item)

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until everything observed so far is processed (and any retraining it caused)."""
        if self._queue is None:
            return
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the performance monitor did not catch up within {timeout:g} s")
            time.sleep(0.01)

    def close(self) -> None:
        if self._queue is not None and self._worker is not None:
            self._queue.put(None)
            self._worker.join(timeout=60)
            self._queue = None

    # --- Worker. ---------------------------------------------------------------------------------
    def _work(self) -> None:
        assert self._queue is not None
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._process(item)
            except Exception as error:          # the loop must survive; the error is reported
                self.events.append(MonitorEvent("error", f"{type(error).__name__}: {error}"))
            finally:
                self._queue.task_done()

    def _process(self, item) -> None:
        kernels, counters, memory, source = item
        model = self._model
        records = []
        for kernel, values in zip(kernels, counters, strict=True):
            features = kernel_features(kernel, kernel.config, memory)
            if model is not None and model.covers(kernel.config, self.device):
                predicted, predictor = model.predict_features([features])[0].cycles, f"hpm-{model.regressor}"
            else:
                predicted, predictor = float(kernel.predicted_cycles), "isa-timing"
            if values.get("cycles"):
                self._errors.append(abs(error_pct(predicted, values["cycles"])))
            records.append(record_run(kernel, values, device=self.device, memory=memory, source=source,
                                      predicted_cycles=int(round(predicted)), predictor=predictor))
        self.store.add_many(records)
        self._rows_since_training += len(records)
        rolling = self.rolling_error_pct
        drifted = (rolling is not None and len(self._errors) == self.window and rolling > self.threshold_pct)
        if drifted or self._rows_since_training >= self.retrain_rows or model is None:
            self._retrain(f"rolling error {rolling:.1f}% over {self.threshold_pct:.1f}%" if drifted
                          else f"{self._rows_since_training} new runs")

    def _retrain(self, why: str) -> None:
        if self.store.count() < self.min_rows:
            return
        rows = self.store.records(device=self.device)
        if len(rows) < self.min_rows:
            return
        try:
            model = PerformanceModel(self.regressor).fit(rows)
        except ModelError as error:
            self.events.append(MonitorEvent("error", f"retraining failed: {error}"))
            return
        saved = ""
        if self.save_to is not None:
            if len(rows) >= self._save_floor:
                model.save(self.save_to, versioned=True)
                saved = f", saved to {self.save_to}"
            else:
                saved = (f"; not saved: {len(rows)} runs are fewer than the {self._save_floor} the "
                         f"starting model was trained on")
        self._model = model                 # the swap: one reference assignment
        self.version += 1
        self._rows_since_training = 0
        self._errors.clear()
        self.events.append(MonitorEvent("retrain", f"{why}: retrained on {len(rows)} runs "
                                                   f"(model version {self.version}){saved}"))
        if self.on_swap is not None:
            self.on_swap(model)
