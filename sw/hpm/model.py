"""The learned hardware performance model, and the cost model that puts it to work.

:class:`PerformanceModel` learns, from the history's runs, the *residual* of the analytic timing
model: ``log(measured cycles / analytic cycles)`` as a function of the kernel's features
(:mod:`.features`, which include the analytic prediction itself, the configuration and the memory
system).  Gradient-boosted trees (LightGBM, or scikit-learn's histogram GBRT -- chosen by
``regressor``; ``braze bench hpm`` measures both) predict the median and, with quantile losses,
a 10%..90% band whose relative width is the model's uncertainty.  It also predicts the counters
that say *why* (``stall_axi_read``, ``array_busy``) as shares of the cycles.

A model saves to a folder (the regressors' own formats plus ``model.json`` with its training
metadata) and loads in milliseconds.

:class:`LearnedCostModel` implements :class:`~braze.sw.compiler.CostModel` with it.  Where the
model is not trained for the configuration or device, or is unsure of a kernel (a wide band, a
kernel family it never saw, or features outside what it was trained on), it falls back to the
analytic model and counts why in :attr:`LearnedCostModel.fallbacks`, which session reports show.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from braze.isa import BrazeError, Config, Opcode

from ..compiler.cost import Cost, CostModel, TimingCostModel, _kernels_of
from ..compiler.kernels import Kernel
from .features import FEATURE_VERSION, MemorySystem, kernel_family, kernel_features
from .store import RunRecord, default_history_path, group_repeats

__all__ = ["PerformanceModel", "Prediction", "LearnedCostModel", "ModelError", "StaleModelError",
           "StaleModelWarning", "REGRESSORS", "error_pct",
           "default_model_dir", "shipped_model_dir", "shipped_runs_file", "load_model"]

#: Regressors a model can be built with.
REGRESSORS = ("lightgbm", "sklearn")
#: Counters predicted besides cycles, as shares of the cycles.
COUNTER_SHARES = ("stall_axi_read", "array_busy")
#: Features that say whether a kernel lies in the model's domain (:meth:`PerformanceModel.outside_training`).
DOMAIN_FEATURES = frozenset({"rows", "cols", "spad_banks", "acc_banks", "bus_bytes", "token_depth",
                             "read_latency", "stall", "log_analytic_cycles", "macs_per_byte"})
#: The band the uncertainty is measured on (quantiles of the residual).
BAND = (0.1, 0.9)
#: Per-opcode instruction counts (``n_<opcode>``): a program recorded before an opcode existed (the
#: ISA grew TABLE, SCALAR, BRANCH, PREDICATE within one feature version) has none of it, so a count
#: missing from its features is 0 -- without this, one such row made ``fit`` fail on the whole history.
_OPCODE_COUNTS = frozenset(f"n_{op.name.lower()}" for op in Opcode)
_MODEL_FILE = "model.json"


class StaleModelWarning(UserWarning):
    """A saved model was trained on other features than this Braze computes, and is not used."""


class ModelError(BrazeError):
    """A performance model cannot be trained, loaded or used."""


class StaleModelError(ModelError):
    """A saved model was trained on another version of the features: retrain it."""


def default_model_dir(device: str = "verilator") -> Path:
    """Where ``braze hpm train`` keeps the model of a device kind: ``$BRAZE_CACHE_DIR/hpm/model-<device>``."""
    return default_history_path().parent / f"model-{device}"


def shipped_model_dir(device: str = "verilator") -> Path:
    """The model shipped with Braze for a device kind (made by ``braze hpm train --ship``)."""
    return Path(__file__).resolve().parent / "shipped" / device


def shipped_runs_file(device: str = "verilator") -> Path:
    """The calibration runs committed beside the shipped model (``braze hpm export``): ``braze hpm
    import`` rebuilds a history from them on a new machine, without running the RTL.  (The model's
    ``made_with`` metadata says which history it was trained on.)"""
    return shipped_model_dir(device) / "calibration-runs.jsonl.xz"


def load_model(device: str = "verilator") -> PerformanceModel | None:
    """The model for a device kind: the user's trained one, else the shipped one, else None.

    A user's model trained on another version of the features (by an older Braze) is passed over
    with a warning rather than failing every session that would use it.
    """
    for folder in (default_model_dir(device), shipped_model_dir(device)):
        if (folder / _MODEL_FILE).exists():
            try:
                return PerformanceModel.load(folder)
            except StaleModelError as error:
                if folder == shipped_model_dir(device):
                    raise
                warnings.warn(f"{error}; using the shipped model meanwhile", StaleModelWarning, stacklevel=2)
    return None


def error_pct(predicted: float, measured: float) -> float:
    """Signed error of a prediction, in percent of the measurement."""
    return 100.0 * (predicted - measured) / measured


@dataclasses.dataclass(frozen=True)
class Prediction:
    """A learned prediction of one kernel run.

    Attributes
    ----------
    cycles : float
        Median prediction of the run's cycles.
    low, high : float
        The 10%..90% band of the cycles.
    counters : dict[str, float]
        Predicted ``stall_axi_read`` and ``array_busy`` cycles.
    analytic : float
        The analytic timing model's cycles.
    """

    cycles: float
    low: float
    high: float
    counters: dict[str, float]
    analytic: float

    @property
    def uncertainty(self) -> float:
        """Relative width of the band: ``(high - low) / cycles``."""
        return (self.high - self.low) / max(self.cycles, 1.0)


def _make_regressor(kind: str, objective: str, alpha: float | None = None, seed: int = 0):
    if kind == "lightgbm":
        import lightgbm

        options: dict[str, Any] = dict(n_estimators=400, learning_rate=0.05, num_leaves=15,
                                       min_child_samples=5, subsample=0.9, subsample_freq=1,
                                       colsample_bytree=0.9, random_state=seed, verbose=-1, n_jobs=1)
        if objective == "quantile":
            options.update(objective="quantile", alpha=alpha)
        return lightgbm.LGBMRegressor(**options)
    if kind == "sklearn":
        from sklearn.ensemble import HistGradientBoostingRegressor

        options = dict(max_iter=400, learning_rate=0.05, max_leaf_nodes=15, min_samples_leaf=5,
                       random_state=seed)
        if objective == "quantile":
            options.update(loss="quantile", quantile=alpha)
        return HistGradientBoostingRegressor(**options)
    raise ModelError(f"no regressor {kind!r}; regressors are {', '.join(REGRESSORS)}")


def _fit(regressor, x: np.ndarray, y: np.ndarray):
    """``regressor.fit(x, y)``; scikit-learn's trees on one OpenMP thread, as LightGBM's (``n_jobs=1``):
    on a busy two-core machine its thread team spins against the other work (400 rounds on 200 rows:
    1.3-3.3 s on two threads, 0.3-0.4 s on one; the same trees)."""
    if type(regressor).__module__.split(".")[0] == "sklearn":
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="openmp"):
            return regressor.fit(x, y)
    return regressor.fit(x, y)


def _predict(regressor, x: np.ndarray) -> np.ndarray:
    """``regressor.predict(x)``; a LightGBM one on one thread: its thread pool costs about 11 ms a call on
    a busy two-core machine whatever the rows (0.04 ms on one thread for one row, 1.1 ms for 50; the
    same predictions), and a compiler pricing candidates asks for a few rows at a time.  A scikit-learn
    one on one OpenMP thread likewise (see :func:`_fit`)."""
    if type(regressor).__module__.split(".")[0] == "lightgbm":
        return regressor.predict(x, num_threads=1)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="openmp"):
        return regressor.predict(x)


class PerformanceModel:
    """Learned cycles (and stall/busy counters) of kernel runs, with an uncertainty.

    Parameters
    ----------
    regressor : str
        ``"lightgbm"`` or ``"sklearn"``.
    seed : int
        Seed of the regressors.
    """

    def __init__(self, regressor: str = "lightgbm", *, seed: int = 0):
        if regressor not in REGRESSORS:
            raise ModelError(f"no regressor {regressor!r}; regressors are {', '.join(REGRESSORS)}")
        self.regressor = regressor
        self.seed = seed
        self.feature_names: list[str] = []
        #: The feature whose cycles the model learns the residual of.
        self.baseline = "baseline_cycles"
        self.metadata: dict[str, Any] = {}
        self._median = self._low = self._high = None
        self._shares: dict[str, Any] = {}
        self._ranges: dict[str, tuple[float, float]] = {}

    @property
    def trained(self) -> bool:
        return self._median is not None

    # --- Training. -------------------------------------------------------------------------------
    def fit(self, records: Sequence[RunRecord], *, band: bool = True) -> PerformanceModel:
        """Train on history rows (each with its features and measured counters).

        Without ``band``, only the median of the cycles is learned (evaluations that need nothing
        else train about five times faster); such a model has no uncertainty and predicts no
        counters.

        Repeats of one measurement (:func:`~.store.group_repeats`: one kernel, configuration and
        memory system under different backpressure patterns) are one example whose cycles and
        counters are their mean: the model learns what a kernel costs on average, and a kernel
        measured three times weighs no more than one measured once.
        """
        # Rows recorded by an older Braze have other features; they cannot be mixed in.
        given = len(records)
        records = [record for record in records if record.features.get("feature_version") == FEATURE_VERSION]
        if len(records) < 10:
            raise ModelError(f"a performance model needs at least 10 runs to learn from; the history has "
                             f"{len(records)} with this Braze's features (version {FEATURE_VERSION}) of "
                             f"{given}: run `braze hpm calibrate`")
        # Every feature of any row (older rows may lack counts of newer opcodes: see _OPCODE_COUNTS).
        names = set().union(*(record.features for record in records)) - {"feature_version"}
        self.feature_names = sorted(names)
        # The residual is learned over the memory-aware baseline where the features have it (this
        # Braze's always do; synthetic tests may give only the analytic cycles).
        self.baseline = "baseline_cycles" if "baseline_cycles" in self.feature_names else "analytic_cycles"
        groups = group_repeats(records)
        x = self._matrix([group[0].features for group in groups])
        baseline = x[:, self.feature_names.index(self.baseline)]
        measured = np.array([np.mean([record.cycles for record in group]) for group in groups])
        residual = np.log(np.maximum(measured, 1.0) / baseline)
        self._median = _fit(_make_regressor(self.regressor, "median", seed=self.seed), x, residual)
        self._low = self._high = None
        self._shares = {}
        if band:
            self._low = _fit(_make_regressor(self.regressor, "quantile", BAND[0], self.seed), x, residual)
            self._high = _fit(_make_regressor(self.regressor, "quantile", BAND[1], self.seed), x, residual)
        for name in COUNTER_SHARES if band else ():
            share = np.array([np.mean([record.counters.get(name, 0) / max(record.cycles, 1)
                                       for record in group]) for group in groups])
            self._shares[name] = _fit(_make_regressor(self.regressor, "median", seed=self.seed), x, share)
        self._ranges = {name: (float(x[:, i].min()), float(x[:, i].max()))
                        for i, name in enumerate(self.feature_names)}
        self.metadata = {
            "regressor": self.regressor, "feature_version": FEATURE_VERSION, "trained_at": time.time(),
            "baseline": self.baseline,
            "rows": len(records), "examples": len(groups),
            "families": sorted({record.family for record in records}),
            "configs": sorted({record.config_name for record in records}),
            "devices": sorted({record.device for record in records}),
            "stalls": sorted({record.stall for record in records}),
            "last_row_id": max((record.id or 0) for record in records),
            "ignored_rows": given - len(records),
        }
        return self

    def _matrix(self, features: Sequence[Mapping[str, float]]) -> np.ndarray:
        try:
            return np.array([[float(f[name] if name in f or name not in _OPCODE_COUNTS else 0.0)
                              for name in self.feature_names] for f in features], dtype=float)
        except KeyError as error:
            raise ModelError(f"features lack {error.args[0]!r}, which the model was trained on") from None

    # --- Prediction. -----------------------------------------------------------------------------
    def predict_features(self, features: Sequence[Mapping[str, float]]) -> list[Prediction]:
        if not self.trained:
            raise ModelError("the performance model is not trained")
        x = self._matrix(features)
        analytic = x[:, self.feature_names.index("analytic_cycles")]
        baseline = x[:, self.feature_names.index(self.baseline)]
        median = _predict(self._median, x)
        low = np.minimum(_predict(self._low, x), median) if self._low is not None else median
        high = np.maximum(_predict(self._high, x), median) if self._high is not None else median
        shares = {name: np.clip(_predict(model, x), 0.0, 1.0) for name, model in self._shares.items()}
        predictions = []
        for i in range(len(x)):
            cycles = float(baseline[i] * math.exp(median[i]))
            counters = {name: float(values[i] * cycles) for name, values in shares.items()}
            band = (float(baseline[i] * math.exp(low[i])), float(baseline[i] * math.exp(high[i])))
            predictions.append(Prediction(cycles, *band, counters, float(analytic[i])))
        return predictions

    def predict(self, kernel: Kernel, memory: MemorySystem | None = None) -> Prediction:
        return self.predict_features([kernel_features(kernel, kernel.config, memory)])[0]

    def outside_training(self, features: Mapping[str, float], *, slack: float = 0.25) -> list[str]:
        """Domain features of a kernel outside the training range (widened by ``slack`` of its span).

        The domain is the machine (array, banks, bus, token depth), the memory system, the kernel's
        size (its analytic cycles) and intensity: trees predict a constant beyond what they saw, so a
        kernel outside these is not trusted.  Instruction counts are not checked: a kernel with one
        more CONFIG than any calibration kernel is no stranger for it.
        """
        out = []
        for name, (low, high) in self._ranges.items():
            if name not in DOMAIN_FEATURES:
                continue
            value = float(features[name])
            span = (high - low) * slack
            if not low - span <= value <= high + span:
                out.append(name)
        return out

    def covers(self, config: Config, device: str) -> bool:
        """Whether the model was trained on runs of this configuration and device kind."""
        return self.trained and config.name in self.metadata.get("configs", []) \
            and device in self.metadata.get("devices", [])

    # --- Persistence. ----------------------------------------------------------------------------
    def _parts(self) -> dict[str, Any]:
        parts = {"median": self._median, "low": self._low, "high": self._high}
        parts.update({f"share_{name}": model for name, model in self._shares.items()})
        return {name: model for name, model in parts.items() if model is not None}

    def save(self, folder: str | Path, *, versioned: bool = False) -> Path:
        """Write the model to ``folder`` (created); returns it.

        LightGBM models are saved in LightGBM's own text format (loading one runs no code);
        scikit-learn models have no such format and are pickled with joblib -- load those only from
        folders you trust.  ``versioned`` writes the regressors into a new subfolder and then
        points the folder's ``model.json`` at it with one atomic rename, so that a process loading
        the model while another saves a retrained one reads either the old model or the new one,
        never a mix (the monitor and ``braze hpm train`` save so; older versions but the previous
        one are removed).
        """
        if not self.trained:
            raise ModelError("cannot save an untrained performance model")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        parts_dir = f"v{time.time_ns()}-{os.getpid()}" if versioned else ""
        target = folder / parts_dir
        target.mkdir(exist_ok=True)
        parts = self._parts()
        if self.regressor == "lightgbm":
            for name, model in parts.items():
                model.booster_.save_model(str(target / f"{name}.lgb.txt"))
        else:
            import joblib

            joblib.dump(parts, target / "regressors.joblib")
        info = {"metadata": self.metadata, "feature_names": self.feature_names, "ranges": self._ranges,
                "regressor": self.regressor, "seed": self.seed, "parts": sorted(parts),
                "parts_dir": parts_dir}
        previous = ""
        if (folder / _MODEL_FILE).exists():
            try:
                previous = json.loads((folder / _MODEL_FILE).read_text()).get("parts_dir", "")
            except (OSError, ValueError):
                previous = ""
        temporary = folder / f"{_MODEL_FILE}.{os.getpid()}.tmp"
        temporary.write_text(json.dumps(info, indent=1))
        temporary.replace(folder / _MODEL_FILE)
        if versioned:
            for old in folder.glob("v*-*"):
                if old.is_dir() and old.name not in (parts_dir, previous):
                    shutil.rmtree(old, ignore_errors=True)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> PerformanceModel:
        folder = Path(folder)
        try:
            info = json.loads((folder / _MODEL_FILE).read_text())
            source = folder / info.get("parts_dir", "")
            if info["regressor"] == "lightgbm":
                import lightgbm

                parts = {name: lightgbm.Booster(model_file=str(source / f"{name}.lgb.txt"))
                         for name in info["parts"]}
            else:
                import joblib

                parts = joblib.load(source / "regressors.joblib")
        except (OSError, ValueError, EOFError, KeyError) as error:
            raise ModelError(f"cannot load the performance model in {folder}: {error}") from None
        if info["metadata"].get("feature_version") != FEATURE_VERSION:
            raise StaleModelError(f"the performance model in {folder} was trained on feature version "
                             f"{info['metadata'].get('feature_version')}, not {FEATURE_VERSION}: retrain it")
        model = cls(info["regressor"], seed=info["seed"])
        model.feature_names = info["feature_names"]
        model.metadata = info["metadata"]
        model.baseline = info["metadata"].get("baseline", "analytic_cycles")
        model._ranges = {name: tuple(span) for name, span in info["ranges"].items()}
        model._median, model._low, model._high = parts["median"], parts.get("low"), parts.get("high")
        model._shares = {name.removeprefix("share_"): part for name, part in parts.items()
                         if name.startswith("share_")}
        return model


class LearnedCostModel(CostModel):
    """The learned performance model as the compiler's cost model, with the analytic one as fallback.

    Parameters
    ----------
    model : PerformanceModel
    device : str
        The device kind the kernels will run on.
    memory : MemorySystem or None
        Its memory system (by default the configuration's nominal one).
    max_uncertainty : float
        A prediction whose 10%..90% band is wider than this share of it falls back.
    """

    name = "hpm-learned"

    def __init__(self, model: PerformanceModel, *, device: str = "verilator",
                 memory: MemorySystem | None = None, max_uncertainty: float = 0.25):
        self.model = model
        self.device = device
        self.memory = memory
        self.max_uncertainty = max_uncertainty
        self.analytic = TimingCostModel()
        #: Why predictions fell back to the analytic model: reason -> count.
        self.fallbacks: collections.Counter[str] = collections.Counter()
        self.learned = 0

    def _learned(self, kernel: Kernel, config: Config) -> Cost | str:
        """The learned cost of ``kernel``, or why the analytic one must stand in."""
        return self._learned_batch([kernel], config)[0]

    def predict_kernel(self, kernel: Kernel, config: Config) -> Cost:
        learned = self._learned(kernel, config)
        if isinstance(learned, str):
            self.fallbacks[learned] += 1
            return self.analytic.predict_kernel(kernel, config)
        self.learned += 1
        return learned

    def _learned_batch(self, kernels: list[Kernel], config: Config) -> list[Cost | str]:
        """:meth:`_learned` of each kernel, the in-domain ones predicted in one call of the model."""
        if not self.model.covers(config, self.device):
            return [f"not trained for {config.name} on {self.device}"] * len(kernels)
        results: list[Cost | str] = []
        pending: list[tuple[int, dict[str, float]]] = []
        families = self.model.metadata.get("families")
        for kernel in kernels:
            family = kernel_family(kernel)
            if families is not None and family not in families:
                # A family the model never saw is extrapolated from others: the shipped model priced
                # the digits CNN's fused convolution+max pooling 39% over the analytic model, chose
                # the separate kernels, and the plan measured 0.6% slower on the RTL.
                results.append(f"family {family} not in training")
                continue
            features = kernel_features(kernel, config, self.memory)
            outside = self.model.outside_training(features)
            if outside:
                results.append(f"features outside training: {', '.join(outside[:3])}")
            else:
                results.append("")
                pending.append((len(results) - 1, features))
        predictions = self.model.predict_features([features for _, features in pending]) if pending else []
        for (index, _), prediction in zip(pending, predictions, strict=True):
            if prediction.uncertainty > self.max_uncertainty:
                results[index] = f"uncertain (band over {self.max_uncertainty:.0%})"
            else:
                kernel = kernels[index]
                results[index] = Cost(int(round(prediction.cycles)),
                                      self.analytic.predict_kernel(kernel, config).bytes)
        return results

    def predict_candidates(self, candidates, config: Config, *, energy: bool = False) -> list[Cost]:
        """One decision's candidates, all learned -- or all analytic if any kernel of any candidate falls
        back: the analytic model under-predicts stalls, so a mix would favour the fallen-back ones."""
        groups = [_kernels_of(candidate) for candidate in candidates]
        unique = list({id(kernel): kernel for group in groups for kernel in group}.values())
        costs = self._learned_batch(unique, config)
        learned = {id(kernel): cost for kernel, cost in zip(unique, costs, strict=True)}
        reasons = [cost for cost in learned.values() if isinstance(cost, str)]
        if reasons:
            for reason in reasons:
                self.fallbacks[reason] += 1
            self.fallbacks["a decision's other candidates, priced alike"] += len(learned) - len(reasons)
            return [self._total(group, config, energy, self.analytic.predict_kernel) for group in groups]
        self.learned += len(learned)
        return [self._total(group, config, energy, lambda kernel, _: learned[id(kernel)]) for group in groups]

    def describe(self) -> str:
        """One line for reports: how many predictions were learned and why the rest fell back."""
        total = self.learned + sum(self.fallbacks.values())
        text = f"{self.name}: {self.learned} of {total} kernel predictions learned"
        if self.fallbacks:
            text += "; analytic for " + "; ".join(f"{count} ({reason})" for reason, count in
                                                  self.fallbacks.most_common())
        return text
