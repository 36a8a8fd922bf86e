"""The hardware performance model: the accelerator's own counters teach the compiler what things cost.

* :mod:`.store` -- the performance history (SQLite): one row per kernel run;
* :mod:`.features` -- what a kernel's instruction stream asks of the machine;
* :mod:`.calibrate` -- representative kernels run on a device under several memory systems, and
  re-featuring the history when the features change;
* :mod:`.model` -- the learned model (the analytic model's residual, with an uncertainty) and
  :class:`LearnedCostModel`, the compiler's cost model built on it;
* :mod:`.evaluate` -- held-out evaluation by kernel family.

The package uses :mod:`braze.sw.compiler` (it implements its ``CostModel``); the compiler never
imports it, and it never imports the runtime (``braze bench hpm``, which plans with inference
sessions, is :mod:`braze.sw.runtime.hpm_bench`).
"""

from .calibrate import (
    CalibrationReport,
    RefeatureReport,
    calibrate,
    calibration_kernels,
    refeature,
    repeat_measurements,
)
from .evaluate import FamilyScore, holdout_by_family
from .features import MemorySystem, kernel_family, kernel_features, kernel_signature
from .model import LearnedCostModel, ModelError, PerformanceModel, Prediction, default_model_dir, load_model
from .store import CodeletRun, HistoryError, HistoryStore, RunRecord, default_history_path

__all__ = [
    "HistoryStore", "HistoryError", "RunRecord", "CodeletRun", "default_history_path",
    "MemorySystem", "kernel_features", "kernel_signature", "kernel_family",
    "calibrate", "calibration_kernels", "CalibrationReport", "refeature", "RefeatureReport",
    "repeat_measurements",
    "PerformanceModel", "Prediction", "LearnedCostModel", "ModelError", "default_model_dir", "load_model",
    "holdout_by_family", "FamilyScore",
]
