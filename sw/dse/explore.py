"""Design-space exploration: evaluate configurations in parallel, keep the Pareto front, confirm finalists.

:func:`explore` evaluates configurations of a :class:`~.space.Space` for a
:class:`~.workload.Workload` on a Dask cluster (a local one of single-threaded worker processes
by default, or the scheduler at an address): each evaluation compiles the workload for the
configuration and prices it (:func:`~.workload.predict`: cycles, energy) and estimates its area
and Fmax (:class:`~.area.AreaModel`).  Where the space has no more valid configurations than the
trial budget it evaluates them all (a grid); otherwise optuna's multi-objective TPE sampler
chooses, a batch of one per worker at a time, which to evaluate next.

Every result goes into the performance history (table ``dse_results``) as it arrives, so an
interrupted exploration resumes: configurations already evaluated for the workload are read back
(their area re-estimated, which is instant) and count towards the budget; the sampler is told
them before it proposes anything.

:func:`confirm` runs finalists -- spread along the Pareto front -- on a device (the Verilator RTL
by default: one build per configuration, about a minute each for small arrays) and records the
measured cycles beside the prediction.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from braze.isa import BrazeError, Config

from .area import AreaModel
from .pareto import OBJECTIVES, pareto_front, pick_finalists
from .space import Space
from .workload import Workload, predict

__all__ = ["DseError", "Evaluated", "Exploration", "explore", "confirm", "dask_client", "evaluate_config",
           "CONFIRM_TOLERANCE_PCT"]

#: A finalist is confirmed when its measured cycles are within this of the prediction.
CONFIRM_TOLERANCE_PCT = 3.0
#: Proposals the sampler may make (invalid or already evaluated ones included) per trial of the budget
#: before the exploration stops short: a space nearly exhausted makes it propose repeats.
_PROPOSALS_PER_TRIAL = 20


class DseError(BrazeError):
    """An exploration cannot run (no cluster, an evaluation failed)."""


@dataclasses.dataclass
class Evaluated:
    """One evaluated configuration: its objectives and other metrics, and how it was obtained."""

    config: Config
    metrics: dict[str, Any]
    resumed: bool = False
    measured_cycles: int | None = None
    measured_device: str | None = None

    @property
    def predictor(self) -> str:
        return str(self.metrics["predictor"])

    @property
    def error_pct(self) -> float | None:
        """Predicted against measured cycles, in percent of the measurement."""
        if self.measured_cycles is None:
            return None
        return 100.0 * (self.metrics["cycles"] - self.measured_cycles) / self.measured_cycles


@dataclasses.dataclass
class Exploration:
    """What :func:`explore` found."""

    workload: Workload
    space: Space
    objectives: list[str]
    results: list[Evaluated]
    search: str
    seconds: float
    area_basis: str
    front: list[int] = dataclasses.field(default_factory=list)
    finalists: list[int] = dataclasses.field(default_factory=list)

    @property
    def resumed(self) -> int:
        return sum(result.resumed for result in self.results)

    @property
    def confirmed(self) -> int:
        """Finalists whose measured cycles are within :data:`CONFIRM_TOLERANCE_PCT` of the prediction."""
        return sum(1 for i in self.finalists if self.results[i].error_pct is not None
                   and abs(self.results[i].error_pct) <= CONFIRM_TOLERANCE_PCT)


# ------------------------------------------------------------------------------------------- cluster

@contextlib.contextmanager
def dask_client(scheduler: str | None = None, *, workers: int = 2, processes: bool = True) -> Iterator[Any]:
    """A Dask client: of the scheduler at ``scheduler``, or of a new local cluster of ``workers``
    single-threaded workers (processes, unless ``processes`` is False: threads of this process)."""
    import dask
    from distributed import Client, LocalCluster

    if scheduler is not None:
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as error:
            raise DseError(f"cannot reach the Dask scheduler at {scheduler}: {error}") from None
        with client:
            yield client
        return
    if workers < 1:
        raise DseError(f"a local cluster needs at least one worker, not {workers}")
    with dask.config.set({"distributed.comm.timeouts.connect": "5s"}), \
            LocalCluster(n_workers=workers, threads_per_worker=1, processes=processes, dashboard_address=None,
                         # No dashboard; the scheduler's HTTP endpoints on a free port, not 8787 (taken
                         # by any other cluster on the machine: a warning, and an error under -W error).
                         scheduler_kwargs={"dashboard_address": ":0"},
                         silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        yield client


_WORKER_STATE: dict[str, Any] = {}


def evaluate_config(workload: Workload, config_fields: dict[str, Any]) -> dict[str, Any]:
    """One evaluation (runs on a worker): the workload's predicted cycles and energy for the
    configuration, and its area estimate.  The learned model and the area model load once per worker."""
    if "model" not in _WORKER_STATE:
        from braze.sw.hpm import load_model

        _WORKER_STATE["model"] = load_model("verilator")
        _WORKER_STATE["area"] = AreaModel()
    config = Config.from_dict(config_fields)
    began = time.perf_counter()
    metrics = predict(workload.kernels(config), config, _WORKER_STATE["model"])
    metrics |= _WORKER_STATE["area"].estimate(config).to_dict()
    metrics["seconds"] = round(time.perf_counter() - began, 3)
    return metrics


# ------------------------------------------------------------------------------------------- explore

def _objective_values(metrics: dict[str, Any], objectives: Sequence[str]) -> list[float]:
    return [float(metrics[OBJECTIVES[name][0]]) for name in objectives]


def explore(workload: Workload, space: Space, objectives: Sequence[str], *, trials: int, client: Any,
            store: Any, seed: int = 0, progress: bool = True,
            log: Callable[[str], None] = print) -> Exploration:
    """Evaluate up to ``trials`` configurations of ``space`` (all of them when it has no more), resuming
    from ``store`` (a :class:`~braze.sw.hpm.HistoryStore`); returns them with the Pareto front."""
    from tqdm import tqdm

    from ..hpm.store import DseResult

    if trials < 1:
        raise DseError(f"trials must be at least 1, not {trials}")
    began = time.monotonic()
    area = AreaModel()
    grid = space.configs()
    in_space = {config.to_json(): config for config in grid}
    results: dict[str, Evaluated] = {}
    for stored in store.dse_results(workload.key):
        key = Config.from_dict(stored.config).to_json()
        if key in in_space:
            config = in_space[key]
            metrics = stored.metrics | area.estimate(config).to_dict()
            results[key] = Evaluated(config, metrics, True, stored.measured_cycles, stored.measured_device)
    search = "grid" if len(grid) <= trials else "tpe"
    budget = min(trials, len(grid))
    log(f"dse: {workload.key}; {space.describe()}; {search} search for {budget} configurations"
        + (f", {len(results)} already in {store.path}" if results else ""))
    shared = client.scatter(workload, broadcast=True)
    bar = tqdm(total=budget, initial=min(len(results), budget), desc="dse", unit="config",
               disable=not progress)

    def evaluate(configs: list[Config]) -> list[tuple[Config, dict[str, Any]]]:
        from distributed import as_completed

        futures = {client.submit(evaluate_config, shared, config.to_dict(), pure=False): config
                   for config in configs}
        done = []
        for future in as_completed(futures):
            config = futures[future]
            try:
                metrics = future.result()
            except BrazeError as error:
                raise DseError(f"evaluating {config.name}: {error}") from None
            store.add_dse_results([DseResult(workload.key, config.to_dict(), metrics, metrics["predictor"])])
            results[config.to_json()] = Evaluated(config, metrics)
            done.append((config, metrics))
            bar.update(1)
        return done

    try:
        if search == "grid":
            evaluate([config for config in grid if config.to_json() not in results])
        else:
            _sample(space, objectives, results, evaluate, budget, seed, workers=_worker_count(client))
    finally:
        bar.close()
    ordered = sorted(results.values(), key=lambda result: [result.config.to_json()])
    exploration = Exploration(workload, space, list(objectives), ordered, search, time.monotonic() - began,
                              area.fmax_basis)
    exploration.front = pareto_front([result.metrics for result in ordered], objectives)
    return exploration


def _worker_count(client: Any) -> int:
    try:
        return max(1, len(client.scheduler_info()["workers"]))
    except (KeyError, TypeError, OSError):
        return 1


def _sample(space: Space, objectives: Sequence[str], results: dict[str, Evaluated],
            evaluate: Callable[[list[Config]], list[tuple[Config, dict[str, Any]]]], budget: int, seed: int,
            *, workers: int) -> None:
    """Optuna's multi-objective TPE: told every stored result first, then asked a batch per round.

    A proposal that breaks a rule between fields is told as failed; one evaluated before is told its
    values again.  Either way the next proposal is a random configuration not yet evaluated (queued
    with ``enqueue_trial``): TPE, once it has a model, keeps proposing near its best, and in a small
    space that is mostly repeats.
    """
    import random

    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = ["minimize" if OBJECTIVES[name][1] == "min" else "maximize" for name in objectives]
    distributions = {p.name: CategoricalDistribution(list(p.values)) for p in space.parameters}
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(4, budget // 3), constant_liar=True)
    study = optuna.create_study(directions=directions, sampler=sampler)
    for result in results.values():
        study.add_trial(create_trial(params=space.point(result.config), distributions=distributions,
                                     values=_objective_values(result.metrics, objectives)))
    grid = space.configs()
    chooser = random.Random(seed)
    proposals = 0
    while len(results) < budget and proposals < _PROPOSALS_PER_TRIAL * budget:
        batch: list[tuple[Any, Config]] = []
        wanted = min(workers, budget - len(results))
        while len(batch) < wanted and proposals < _PROPOSALS_PER_TRIAL * budget:
            proposals += 1
            trial = study.ask(distributions)
            try:
                config = space.config(trial.params)
            except BrazeError:
                config = None
            key = config.to_json() if config is not None else ""
            if config is not None and key not in results and all(key != c.to_json() for _, c in batch):
                batch.append((trial, config))
                continue
            if config is not None and key in results:
                study.tell(trial, _objective_values(results[key].metrics, objectives))
            else:
                study.tell(trial, state=TrialState.FAIL)        # breaks a rule, or already in this batch
            taken = {c.to_json() for _, c in batch}
            fresh = [c for c in grid if c.to_json() not in results and c.to_json() not in taken]
            if fresh:
                study.enqueue_trial(space.point(chooser.choice(fresh)))
        evaluated = {config.to_json(): metrics for config, metrics in evaluate([c for _, c in batch])}
        for trial, config in batch:
            study.tell(trial, _objective_values(evaluated[config.to_json()], objectives))


# ------------------------------------------------------------------------------------------- confirm

def confirm(exploration: Exploration, count: int, *, device: str = "verilator", store: Any = None,
            log: Callable[[str], None] = print) -> None:
    """Run ``count`` finalists of the front on ``device`` and record their measured cycles.

    Finalists spread along the first objective (:func:`~.pareto.pick_finalists`).  A finalist
    already measured on this device (a resumed exploration) is not run again.
    """
    from braze.sim.device import open_device

    from ..hpm.store import DseResult

    metrics = [result.metrics for result in exploration.results]
    exploration.finalists = pick_finalists(metrics, exploration.front, exploration.objectives, count)
    for index in exploration.finalists:
        result = exploration.results[index]
        if result.measured_cycles is not None and result.measured_device == device:
            log(f"  {result.config.name}: measured before on {device}: {result.measured_cycles} cycles")
            continue
        began = time.monotonic()
        with open_device(device, result.config) as opened:
            result.measured_cycles = exploration.workload.measure(opened)
        result.measured_device = device
        log(f"  {result.config.name}: {device} {result.measured_cycles} cycles, predicted "
            f"{result.metrics['cycles']:.0f} ({result.predictor}): {result.error_pct:+.2f}% "
            f"({time.monotonic() - began:.0f} s with the build)")
        if store is not None:
            store.add_dse_results([DseResult(exploration.workload.key, result.config.to_dict(),
                                             result.metrics, result.predictor, result.measured_cycles,
                                             device)])
