"""Routing: the performance model, the accelerator manager and the schedulers.

In StarPU's manner these are separate, swappable pieces:

* :class:`HistoryModel` -- expected execution time of a codelet in a version: the mean of its
  measured runs (same code, same input shapes) where there are any; else the profiler's analytic
  estimate scaled by the measured-over-analytic ratio of its pattern in that version (so one
  pattern's measurements correct the estimates of codelets never seen); else the analytic estimate.
  It loads from, and every measurement goes to, the performance history (the SQLite store of
  :mod:`braze.sw.hpm`, table ``codelet_runs``).
* :class:`AcceleratorManager` -- the simulated Braze devices of the heavy-compute fleet:
  ``request(kind, deadline)`` grants a lease on the device of that kind expected to be free
  first, or refuses if none is expected free within the deadline; ``release`` records the run's
  time, cycles and cost.  ``withheld=True`` refuses every request (the fallback experiment).
* Schedulers -- :class:`CpuScheduler` (every codelet in its CPU version, Dask places it),
  :class:`StaticScheduler` (by pattern, decided ahead: matrix work to the heavy fleet's
  accelerator, I/O to the memory fleet, the rest to the fast-path fleet), and
  :class:`DmdaScheduler`, StarPU's *dmda* (deque model, data aware): for every worker and version
  that can run the codelet, the expected finish time is the worker's (or device's) queue plus the
  transfer of the inputs that are elsewhere plus the expected execution; the earliest wins.
  Queues are the sums of the expected times of what is in flight there, corrected as runs finish.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import statistics
import threading
import time
from collections import defaultdict, deque
from collections.abc import Mapping, Sequence

from braze.sw.hpm import CodeletRun, HistoryStore

from .codelet import Codelet, FleetError, Program
from .profile import (
    ACCELERATORS,
    COST_PER_SECOND,
    TASK_OVERHEAD_S,
    TRANSFER_BYTES_PER_S,
    TRANSFER_LATENCY_S,
    TargetingProfile,
)

__all__ = ["WorkerInfo", "Placement", "Request", "HistoryModel", "AcceleratorManager", "Lease",
           "Scheduler", "CpuScheduler", "StaticScheduler", "DmdaScheduler", "SCHEDULERS", "fleets_of",
           "signature_of"]

#: Fleets, by the resource that makes a worker part of one.
FLEET_RESOURCES = {"heavy": tuple(ACCELERATORS), "memory": ("memory",), "fast": ("cpu",)}


def fleets_of(resources: Mapping[str, float]) -> tuple[str, ...]:
    """The fleets a worker with these Dask resources belongs to."""
    return tuple(fleet for fleet, names in FLEET_RESOURCES.items() if any(resources.get(n) for n in names))


def signature_of(codelet: Codelet, shapes: Mapping[str, tuple[int, ...]]) -> str:
    """The history key of a codelet run: its code and its inputs' shapes."""
    described = {name: list(shapes.get(name, ())) for name in codelet.inputs}
    text = codelet.code_hash + json.dumps(described, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@dataclasses.dataclass(frozen=True)
class WorkerInfo:
    """A Dask worker: its name, address and resources."""

    name: str
    address: str
    resources: dict[str, float]
    #: Threads running its tasks: CPU, I/O and simulated-device codelets alike take one.
    nthreads: int = 1

    @property
    def fleets(self) -> tuple[str, ...]:
        return fleets_of(self.resources)


@dataclasses.dataclass
class Placement:
    """Where and how one codelet runs.

    ``worker`` None lets Dask choose among the workers with ``resource``.
    """

    codelet: str
    version: str = "cpu"
    accelerator: str | None = None
    worker: str | None = None
    resource: str = "cpu"
    predicted_seconds: float | None = None
    reason: str = ""
    fallback: str | None = None
    lease: Lease | None = None

    @property
    def target(self) -> str:
        return self.accelerator if self.version == "int8" else "cpu"


@dataclasses.dataclass
class Request:
    """What a scheduler knows when it places a ready codelet."""

    program: Program
    codelet: Codelet
    profile: TargetingProfile
    signature: str
    #: For each input: (producing worker name or None, pickled bytes, serialization seconds).
    inputs: dict[str, tuple[str | None, int, float]]


class HistoryModel:
    """Expected execution times from measured runs (see the module documentation)."""

    def __init__(self, store: HistoryStore | None = None, *, window: int = 8, load: int = 5000):
        self.store = store
        self.window = window
        self._lock = threading.Lock()
        self._runs: dict[tuple[str, str], deque[float]] = defaultdict(lambda: deque(maxlen=window))
        self._ratios: dict[tuple[str, str], deque[float]] = defaultdict(lambda: deque(maxlen=4 * window))
        if store is not None:
            for run in store.codelet_runs(limit=load):
                if run.error is None:
                    # (stored predictions were the dispatcher's, not analytic: no pattern ratio from them)
                    self._remember(run.signature, run.version, run.pattern, run.seconds, None)

    def _remember(self, signature: str, version: str, pattern: str, seconds: float,
                  analytic: float | None) -> None:
        self._runs[signature, version].append(seconds)
        if analytic:
            self._ratios[pattern, version].append(seconds / analytic)

    def expected(self, signature: str, version: str, pattern: str, analytic: float) -> tuple[float, str]:
        """(seconds, where the number comes from: ``history``, ``pattern-scaled`` or ``analytic``)."""
        with self._lock:
            runs = self._runs.get((signature, version))
            if runs:
                return statistics.fmean(runs), "history"
            ratios = self._ratios.get((pattern, version))
            if ratios:
                return analytic * statistics.median(ratios), "pattern-scaled"
        return analytic, "analytic"

    def observe(self, signature: str, version: str, pattern: str, seconds: float, analytic: float | None
                ) -> None:
        with self._lock:
            self._remember(signature, version, pattern, seconds, analytic)

    def record(self, runs: Sequence[CodeletRun]) -> None:
        """Store measured runs in the performance history (one transaction)."""
        if self.store is not None and runs:
            self.store.add_codelet_runs(list(runs))


class _Queue:
    """Expected work in flight on one worker resource or device: sum of expected seconds / capacity."""

    def __init__(self, capacity: float):
        self.capacity = max(1.0, float(capacity))
        self.outstanding: dict[str, float] = {}

    def wait(self) -> float:
        return sum(self.outstanding.values()) / self.capacity


@dataclasses.dataclass
class Lease:
    """A granted accelerator: which device, for which codelet, expected for how long."""

    worker: str
    kind: str
    key: str
    expected_seconds: float
    granted_at: float


@dataclasses.dataclass
class DeviceStats:
    """What the manager knows of one device: runs, busy seconds, cycles, cost."""

    worker: str
    kind: str
    runs: int = 0
    busy_seconds: float = 0.0
    cycles: int = 0

    @property
    def cost(self) -> float:
        return self.busy_seconds * COST_PER_SECOND.get(self.kind, 1.0)


def _outstanding_on(queues, worker: str) -> float:
    """Expected seconds in flight on ``worker``, summed over its (worker, resource) queues."""
    return sum(sum(queue.outstanding.values()) for (name, _), queue in queues.items() if name == worker)


class AcceleratorManager:
    """The heavy-compute fleet's simulated accelerators (see the module documentation).

    Parameters
    ----------
    workers : sequence of WorkerInfo
        Every worker; those with accelerator resources own that many devices of each kind.
    withheld : bool
        Refuse every request (all accelerator work falls back to the CPU).
    """

    def __init__(self, workers: Sequence[WorkerInfo], *, withheld: bool = False):
        self.withheld = withheld
        self._lock = threading.Lock()
        self._queues: dict[tuple[str, str], _Queue] = {}
        self.stats: dict[tuple[str, str], DeviceStats] = {}
        self.refusals: list[str] = []
        self.update_workers(workers)

    def update_workers(self, workers: Sequence[WorkerInfo]) -> None:
        """Provision the devices of new workers; release those of workers that left."""
        with self._lock:
            present = set()
            for worker in workers:
                for kind in ACCELERATORS:
                    if worker.resources.get(kind):
                        present.add((worker.name, kind))
                        if (worker.name, kind) not in self._queues:
                            self._queues[worker.name, kind] = _Queue(worker.resources[kind])
                            self.stats.setdefault((worker.name, kind), DeviceStats(worker.name, kind))
            for key in set(self._queues) - present:
                del self._queues[key]

    def kinds(self) -> tuple[str, ...]:
        return tuple(sorted({kind for _, kind in self._queues}))

    def availability(self) -> dict[tuple[str, str], float]:
        """Seconds until each device is expected to be free."""
        with self._lock:
            return {key: queue.wait() for key, queue in self._queues.items()}

    def request(self, kind: str, key: str, expected_seconds: float, *, deadline: float,
                worker: str | None = None) -> Lease | str:
        """A lease on the ``kind`` device expected free first (on ``worker`` if given), or why not."""
        if self.withheld:
            return "accelerators withheld"
        with self._lock:
            devices = [(queue.wait(), name) for (name, k), queue in self._queues.items()
                       if k == kind and worker in (None, name)]
            if not devices:
                return f"no {kind} device in the fleets"
            wait, name = min(devices)
            if wait > deadline:
                reason = f"no {kind} free within {deadline:.3g} s (first free in {wait:.3g} s)"
                self.refusals.append(reason)
                return reason
            self._queues[name, kind].outstanding[key] = expected_seconds
            return Lease(name, kind, key, expected_seconds, time.monotonic())

    def outstanding(self, worker: str) -> float:
        """Expected seconds of the leases in flight on ``worker``'s devices (its threads simulate them)."""
        with self._lock:
            return _outstanding_on(self._queues, worker)

    def release(self, lease: Lease, *, seconds: float | None = None, cycles: int | None = None) -> None:
        """Give the device back; ``seconds`` and ``cycles`` are what the run measured."""
        with self._lock:
            queue = self._queues.get((lease.worker, lease.kind))
            if queue is not None:
                queue.outstanding.pop(lease.key, None)
            stats = self.stats.setdefault((lease.worker, lease.kind), DeviceStats(lease.worker, lease.kind))
            if seconds is not None:
                stats.runs += 1
                stats.busy_seconds += seconds
                stats.cycles += int(cycles or 0)


class Scheduler:
    """Places ready codelets; told of every finished run.  Subclasses implement :meth:`place`."""

    name = "base"

    def __init__(self, model: HistoryModel | None = None, *, accelerator_deadline: float = 0.25,
                 task_overhead: float = TASK_OVERHEAD_S):
        self.model = model if model is not None else HistoryModel()
        self.accelerator_deadline = accelerator_deadline
        #: Seconds a task costs around its body (queues count it): measure it where a cluster is
        #: at hand (:func:`~.execute.measure_task_overhead`).
        self.task_overhead = task_overhead
        self.workers: list[WorkerInfo] = []
        self.manager = AcceleratorManager([])
        self._queues: dict[tuple[str, str], _Queue] = {}

    def attach(self, workers: Sequence[WorkerInfo], manager: AcceleratorManager) -> None:
        """The workers (refreshed whenever the cluster changes) and the accelerator manager."""
        self.workers = list(workers)
        self.manager = manager
        manager.update_workers(workers)
        for worker in workers:
            for resource in ("cpu", "memory"):
                if worker.resources.get(resource) and (worker.name, resource) not in self._queues:
                    self._queues[worker.name, resource] = _Queue(worker.resources[resource])

    def resource_for(self, request: Request) -> str:
        """``memory`` for I/O codelets where a memory fleet exists, else ``cpu``."""
        if request.profile.pattern == "io" and any(w.resources.get("memory") for w in self.workers):
            return "memory"
        return "cpu"

    def prepare(self, program: Program) -> Program:
        """The program as this scheduler runs it (the base: as decomposed)."""
        return program

    def place(self, request: Request) -> Placement:
        raise NotImplementedError

    def submitted(self, placement: Placement, key: str) -> None:
        if placement.worker is not None and placement.version == "cpu":
            queue = self._queues.get((placement.worker, placement.resource))
            if queue is not None:
                queue.outstanding[key] = (placement.predicted_seconds or 0.0) + self.task_overhead

    def finished(self, placement: Placement, key: str) -> None:
        for queue in self._queues.values():
            queue.outstanding.pop(key, None)
        if placement.lease is not None:
            self.manager.release(placement.lease)

    def worker_wait(self, worker: WorkerInfo) -> float:
        """Seconds until a thread of ``worker`` is expected free: everything in flight there -- its
        CPU and I/O codelets and the leases on its devices -- over its threads (a task takes a
        thread whatever resource placed it: a one-thread worker runs its I/O, its CPU codelets and
        its simulated devices one after another)."""
        queued = _outstanding_on(self._queues, worker.name)
        return (queued + self.manager.outstanding(worker.name)) / max(1, worker.nthreads)

    def _eligible_accelerators(self, request: Request) -> list[str]:
        profile = request.profile
        return [kind for kind in self.manager.kinds() if kind in profile.estimates] \
            if profile.pattern == "matmul" and request.program.tolerance is not None else []

    def _cpu(self, request: Request, worker: str | None, reason: str, fallback: str | None = None
             ) -> Placement:
        resource = self.resource_for(request)
        expected, _ = self.model.expected(request.signature, "cpu", request.profile.pattern,
                                          request.profile.estimates["cpu"])
        return Placement(request.codelet.id, "cpu", None, worker, resource, expected, reason, fallback)


class CpuScheduler(Scheduler):
    """Every codelet in its CPU version; Dask chooses the worker (the all-CPU baseline)."""

    name = "cpu"

    def place(self, request: Request) -> Placement:
        return self._cpu(request, None, "all-CPU baseline")


class StaticScheduler(Scheduler):
    """By pattern, decided ahead: matrix work with a tolerance to the heavy fleet's accelerator (the
    largest kind), I/O to the memory fleet, everything else to the fast-path fleet."""

    name = "static"

    def _fleet_worker(self, fleet: str, avoid: str | None = None) -> str | None:
        members = [w.name for w in self.workers if fleet in w.fleets]
        preferred = [name for name in members if name != avoid]
        return (preferred or members or [None])[0]

    def place(self, request: Request) -> Placement:
        heavy = self._fleet_worker("heavy")
        eligible = self._eligible_accelerators(request)
        if eligible:
            kind = max(eligible, key=list(ACCELERATORS).index)
            expected, _ = self.model.expected(request.signature, kind, "matmul",
                                              request.profile.estimates[kind])
            lease = self.manager.request(kind, f"{request.program.name}/{request.codelet.id}", expected,
                                         deadline=float("inf"))
            if isinstance(lease, Lease):
                return Placement(request.codelet.id, "int8", kind, lease.worker, kind, expected,
                                 "static: matrix work to the heavy fleet", lease=lease)
            return self._cpu(request, heavy, "static: matrix work to the heavy fleet", fallback=lease)
        if request.profile.pattern == "matmul":
            why = "no tolerance" if request.program.tolerance is None else "no accelerator in the fleets"
            return self._cpu(request, heavy, f"static: matrix work to the heavy fleet (CPU: {why})")
        if self.resource_for(request) == "memory":
            return self._cpu(request, self._fleet_worker("memory"), "static: I/O to the memory fleet")
        return self._cpu(request, self._fleet_worker("fast", avoid=heavy), "static: to the fast-path fleet")


class DmdaScheduler(Scheduler):
    """StarPU's dmda: the earliest expected finish over workers and versions (see the module doc)."""

    name = "adaptive"

    def __init__(self, model: HistoryModel | None = None, *, group: bool = True, group_budget: float = 4.0,
                 **options):
        super().__init__(model, **options)
        #: Merge consecutive cheap codelets before placing (:meth:`prepare`), up to ``group_budget``
        #: times the per-task overhead of expected work per group (4: the overhead is then at most a
        #: fifth of a group's time; on the bench's workload 4 and no limit made the same groups).
        self.group = group
        self.group_budget = group_budget

    def prepare(self, program: Program) -> Program:
        """With ``group`` (the default), consecutive cheap codelets merged into one task each.

        Every task costs a round trip through the driver and the Dask scheduler whatever it runs
        (measured: :attr:`task_overhead`), and a program's next codelet waits for it: on the
        bench's cluster the workers sit idle between codelets most of the makespan (the driver's
        hops, not the work, bound it), so a chain run as one task saves a round trip per codelet.
        Consecutive codelets are grouped while their expected work (from the model where it has
        measured them) stays within ``group_budget`` overheads
        (:func:`~.execute.group_cheap`).  Only codelets with nowhere to go but a CPU are grouped:
        I/O stays alone (the memory fleet's), and so does matrix work that may run on an
        accelerator (a tolerance, and accelerators in the fleets -- or no fleets attached yet).
        A program grouped already is left as it is.
        """
        if not self.group or any(codelet.members for codelet in program.codelets):
            return program
        # (imported here: execute imports this module)
        from .execute import group_cheap
        from .profile import PATTERNS

        # (not attached to a cluster yet: accelerators may be there)
        accelerators = bool(self.manager.kinds()) or not self.workers
        placeable = {"io"} | ({"matmul"} if program.tolerance is not None and accelerators else set())
        return group_cheap(program, self.group_budget * self.task_overhead, self.model,
                           patterns=tuple(p for p in PATTERNS if p not in placeable))

    def _transfer(self, request: Request, worker: str) -> float:
        seconds = 0.0
        for producer, nbytes, serialize in request.inputs.values():
            if producer is not None and producer != worker:
                # A round trip, pickling and unpickling, the bytes on the wire.
                seconds += TRANSFER_LATENCY_S + 2 * serialize + nbytes / TRANSFER_BYTES_PER_S
        return seconds

    def place(self, request: Request) -> Placement:
        pattern = request.profile.pattern
        resource = self.resource_for(request)
        candidates: list[tuple[float, Placement]] = []
        cpu_expected, cpu_source = self.model.expected(request.signature, "cpu", pattern,
                                                       request.profile.estimates["cpu"])
        for worker in self.workers:
            if (worker.name, resource) not in self._queues:
                continue
            finish = self.worker_wait(worker) + self._transfer(request, worker.name) + cpu_expected
            candidates.append((finish, Placement(request.codelet.id, "cpu", None, worker.name, resource,
                                                 cpu_expected, f"dmda: CPU ({cpu_source})")))
        if not candidates:
            raise FleetError(f"no worker has the {resource!r} resource codelet {request.codelet.id} needs")
        best_cpu = min(candidates, key=lambda c: c[0])
        accelerated = []
        availability = self.manager.availability()
        for kind in self._eligible_accelerators(request):
            expected, source = self.model.expected(request.signature, kind, pattern,
                                                   request.profile.estimates[kind])
            for (worker, device_kind), wait in availability.items():
                if device_kind == kind:
                    thread = next((self.worker_wait(w) for w in self.workers if w.name == worker), 0.0)
                    finish = max(wait, thread) + self._transfer(request, worker) + expected
                    accelerated.append((finish, kind, worker, expected, source))
        fallback = None
        if accelerated:
            finish, kind, worker, expected, source = min(accelerated)
            if finish < best_cpu[0]:
                lease = self.manager.request(kind, f"{request.program.name}/{request.codelet.id}", expected,
                                             deadline=self.accelerator_deadline, worker=worker)
                if isinstance(lease, Lease):
                    return Placement(request.codelet.id, "int8", kind, worker, kind, expected,
                                     f"dmda: {kind} ({source}) finishes first", lease=lease)
                fallback = lease
        placement = best_cpu[1]
        placement.fallback = fallback
        return placement


#: Schedulers by name (``braze fleet run --policy``, the benchmark).
SCHEDULERS: dict[str, type[Scheduler]] = {"cpu": CpuScheduler, "static": StaticScheduler,
                                          "adaptive": DmdaScheduler}
