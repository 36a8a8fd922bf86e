"""Execution on a Dask cluster: fleets of workers, codelets as tasks, results as futures.

Fleets are ``dask.distributed`` workers with resources (:data:`DEFAULT_WORKERS`): the heavy-compute
fleet owns simulated Braze accelerators (``accel-tiny``, ``accel-default``: Dask resources that
int8 codelets require, one codelet per device at a time), the memory-bound fleet has ``memory``
slots for I/O, and the fast-path fleet ``cpu`` slots (these two the schedulers place by, with
loose worker restrictions).  :func:`local_cluster` starts them as
a :class:`distributed.SpecCluster` of nannies (one process per worker, restarted by its nanny if it
dies); a scheduler address uses an existing cluster instead (its workers' ``--resources`` make the
fleets).

:func:`run_programs` is the driver: a codelet is submitted when the codelets it depends on have
finished -- its scheduler (:mod:`.dispatch`) places it with what they measured (shapes, sizes,
where they are) -- with the dependencies' *futures* as arguments, so Dask moves the data between
workers.  Each finished codelet's measurements update the scheduler's model and go into the
performance history.  A codelet that raises stops the program with a
:class:`~.codelet.CodeletError` naming the codelet and the line.

Worker faults are the driver's to recover (:func:`run_programs` watches the scheduler's workers):
when a worker leaves the scheduler (killed, its nanny gone, retired) --

* every result it produced that a codelet still needs is scattered again from the driver, which
  holds every finished codelet's result (the same bytes: nothing is recomputed, so nothing changes);
* every unfinished codelet placed on one of its accelerators, or reading a result scattered again,
  is cancelled and placed afresh by the scheduler: on another worker's device of that kind if one
  exists, else in its CPU version -- the *float* version, so an int8 codelet's outputs then differ
  from its accelerator route only within the tolerance its contract states (which is also what
  the accelerator route itself guarantees: never more than the tolerance from the float result);
* a CPU codelet that was running there is rerun by Dask elsewhere (its restriction is loose).

A task the scheduler forgets under the driver (a scattered result lost with the worker that held
it takes its dependents with it: Dask cancels them, "already forgotten") is placed again the same
way, after its lost inputs are scattered again from the driver -- whichever of the two the driver
notices first, the scheduler's cancellation or the worker leaving.  Results are scattered again to
workers without accelerators where there are any (those are the ones a fault-injection test, or a
device crash, takes down).

An int8 codelet whose task Dask gives up on (``KilledWorker``: its workers died while running it)
is placed again in its CPU version.  Each such move is the codelet's ``retry`` in its
:class:`CodeletRecord` (why, from where) and in the execution's table.

Nothing here deserialises data from outside the cluster: tasks and results move only between the
client, the scheduler and the workers, over Dask's comms (TLS when ``security`` is given).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from braze.sw.hpm import CodeletRun, HistoryStore

from .codelet import Codelet, CodeletError, FleetError, Program, decompose, group
from .dispatch import (
    SCHEDULERS,
    AcceleratorManager,
    HistoryModel,
    Placement,
    Request,
    Scheduler,
    WorkerInfo,
    fleets_of,
    signature_of,
)
from .profile import TargetingProfile, profile_codelet
from .worker import CodeletResult, CodeletTask, run_codelet

__all__ = ["WorkerSpec", "DEFAULT_WORKERS", "local_cluster", "connect", "CodeletRecord", "Execution",
           "run_programs", "execute", "compose_and_execute", "plan", "workers_of", "measure_task_overhead",
           "group_cheap", "GROUPABLE_PATTERNS"]


@dataclasses.dataclass(frozen=True)
class WorkerSpec:
    """One worker of a local cluster: its name, Dask resources and threads."""

    name: str
    resources: dict[str, float]
    nthreads: int = 1


#: Two workers of one thread each (this machine has 2 cores): one in the heavy-compute fleet (a
#: CPU and one device of each accelerator type, simulated by that CPU), one in the fast-path and
#: memory-bound fleets.
DEFAULT_WORKERS = (WorkerSpec("heavy-0", {"cpu": 1, "accel-tiny": 1, "accel-default": 1}),
                   WorkerSpec("fast-0", {"cpu": 1, "memory": 1}))


def quiet_dask_logs(level: str = "error") -> None:
    """Only Dask's errors on stderr, in this process and the worker processes it starts (command line)."""
    import dask

    os.environ["DASK_LOGGING__DISTRIBUTED"] = level        # read by the spawned worker processes
    dask.config.set({"logging.distributed": level})
    logging.getLogger("distributed").setLevel(level.upper())


def local_cluster(workers: Sequence[WorkerSpec] = DEFAULT_WORKERS, *, processes: bool = True,
                  dashboard: bool = False, security: Any = None, memory_limit: str = "2GB"):
    """A :class:`distributed.SpecCluster` on this machine with these workers (nannies with processes)."""
    from distributed import Nanny, Scheduler, SpecCluster, Worker

    protocol = "tls://" if security is not None else "tcp://"
    # The scheduler's HTTP server (the dashboard, where bokeh is installed and it is asked for) on a
    # free port: without an address it takes 8787, and a second cluster on the machine warns.
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "protocol": protocol,
                                               "dashboard_address": ":0",
                                               "dashboard": dashboard, "security": security}}
    specs = {}
    for spec in workers:
        options = {"nthreads": spec.nthreads, "resources": dict(spec.resources), "host": "127.0.0.1",
                   "name": spec.name, "security": security}
        if processes:
            options |= {"memory_limit": memory_limit, "protocol": protocol}
        specs[spec.name] = {"cls": Nanny if processes else Worker, "options": options}
    return SpecCluster(scheduler=scheduler, workers=specs, silence_logs=logging.ERROR, security=security,
                       asynchronous=False)


@contextlib.contextmanager
def connect(scheduler: str | None = None, *, workers: Sequence[WorkerSpec] = DEFAULT_WORKERS,
            processes: bool = True, dashboard: bool = False, security: Any = None) -> Iterator[Any]:
    """A :class:`distributed.Client` of the cluster at ``scheduler``, or of a new local cluster."""
    import dask
    from distributed import Client

    if scheduler is not None:
        if scheduler.startswith("tls://") and security is None:
            raise FleetError(f"the Dask scheduler at {scheduler} speaks TLS: pass the cluster's certificates "
                             f"(--tls-ca-file, --tls-cert, --tls-key; in Python "
                             f"security=distributed.security.Security(...))")
        try:
            client = Client(scheduler, timeout="10s", security=security)
        except (OSError, TimeoutError) as error:
            raise FleetError(f"cannot reach the Dask scheduler at {scheduler}: {error}") from None
        with client:
            yield client
        return
    # On one machine a peer that does not answer within seconds is dead: without this, a worker that
    # fetches a result from a killed one waits out Dask's default 30 s connect timeout first.  Work
    # stealing is off: placement is the dispatcher's (a loose restriction is for failures only).
    with dask.config.set({"distributed.comm.timeouts.connect": "5s",
                          "distributed.scheduler.work-stealing": False}), \
            local_cluster(workers, processes=processes, dashboard=dashboard, security=security) as cluster, \
            Client(cluster, security=security) as client:
        yield client


def workers_of(client) -> list[WorkerInfo]:
    """The cluster's workers as the schedulers see them.

    Asked of the scheduler each time: ``Client.scheduler_info()`` returns the client's cache, which
    the client's own periodic refresh (every 2 s, without per-worker information) can overwrite
    between the fetch and the return -- a cluster that seems, for one call, to have no workers (the
    driver then took every worker for lost).
    """
    info = client.sync(client.scheduler.identity, n_workers=-1)["workers"]
    return sorted((WorkerInfo(str(w.get("name", address)), address, dict(w.get("resources") or {}),
                              int(w.get("nthreads") or 1))
                   for address, w in info.items()), key=lambda w: w.name)


@dataclasses.dataclass
class CodeletRecord:
    """How one codelet ran: where, in which version, how long against the prediction, and why."""

    program: str
    codelet: str
    line: int
    pattern: str
    worker: str
    fleet: str
    version: str
    seconds: float
    predicted_seconds: float | None
    cycles: int | None
    output_bytes: int
    serialize_seconds: float
    fallback: str | None
    reason: str
    started: float
    finished: float
    signature: str
    retry: str | None = None


@dataclasses.dataclass
class Execution:
    """A program's run: its outputs, each codelet's record, what it printed, and its makespan."""

    program: Program
    values: dict[str, Any]
    records: dict[str, CodeletRecord]
    stdout: str
    started: float
    finished: float

    @property
    def makespan(self) -> float:
        return self.finished - self.started

    def table(self) -> str:
        """One line per codelet: where it ran and how long it took."""
        header = ("codelet", "line", "pattern", "fleet", "worker", "version", "ms", "predicted", "cycles",
                  "out B", "note")
        rows = [header]
        for record in self.records.values():
            rows.append((record.codelet, str(record.line), record.pattern, record.fleet, record.worker,
                         record.version, f"{record.seconds * 1e3:.2f}",
                         "-" if record.predicted_seconds is None else f"{record.predicted_seconds * 1e3:.2f}",
                         "-" if record.cycles is None else str(record.cycles), str(record.output_bytes),
                         "; ".join(note for note in (record.retry and f"retry: {record.retry}",
                                                     record.fallback and f"fallback: {record.fallback}")
                                   if note) or record.reason))
        widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
                 for row in rows]
        lines.insert(1, "-" * len(lines[0]))
        return "\n".join(lines)


def _fleet_of(worker: WorkerInfo | None, result: CodeletResult, resource: str) -> str:
    if result.version != "cpu":
        return "heavy"
    if resource == "memory":
        return "memory"
    fleets = fleets_of(worker.resources) if worker else ()
    return "fast" if "fast" in fleets and "heavy" not in fleets else (fleets[0] if fleets else "?")


@dataclasses.dataclass
class _Job:
    """A program in flight on the cluster."""

    index: int
    program: Program
    parameters: Mapping[str, Any] | None
    token: str
    waiting: dict[str, set[str]]
    futures: dict[str, Any] = dataclasses.field(default_factory=dict)
    results: dict[str, CodeletResult] = dataclasses.field(default_factory=dict)
    placements: dict[str, Placement] = dataclasses.field(default_factory=dict)
    profiles: dict[str, tuple[TargetingProfile, str]] = dataclasses.field(default_factory=dict)
    records: dict[str, CodeletRecord] = dataclasses.field(default_factory=dict)
    #: Codelet -> why it was placed again (a worker lost, KilledWorker), and how many times.
    retries: dict[str, str] = dataclasses.field(default_factory=dict)
    attempts: dict[str, int] = dataclasses.field(default_factory=dict)
    parameters_future: Any = None
    started: float = 0.0


def _sources(program: Program, codelet: Codelet) -> tuple[tuple[str, int], ...]:
    """For each input: the position, among the codelet's deps, of its last writer (-1: a parameter)."""
    order = {c.id: i for i, c in enumerate(program.codelets)}
    sources = []
    for name in codelet.inputs:
        writers = [d for d in codelet.deps if name in program.codelet(d).outputs]
        sources.append((name, codelet.deps.index(max(writers, key=order.__getitem__)) if writers else -1))
    return tuple(sources)


#: How often the driver looks at the scheduler's workers while it waits (seconds).
WORKER_POLL_S = 0.25
#: How many times a codelet may be placed again after losses before the run stops.
MAX_ATTEMPTS = 4


def run_programs(client, jobs: Sequence[tuple[Program, Mapping[str, Any] | None]], scheduler: Scheduler, *,
                 manager: AcceleratorManager | None = None, window: int = 4, device: str = "golden",
                 source: str = "fleet", on_record: Callable[[CodeletRecord], None] | None = None,
                 on_event: Callable[[int, int], None] | None = None) -> list[Execution]:
    """Run programs on the cluster, at most ``window`` at a time, placing codelets with ``scheduler``.

    Parameters
    ----------
    jobs : sequence of (Program, parameters)
        ``parameters``: values of a function program's parameters (None for scripts).
    manager : AcceleratorManager, optional
        The accelerators (default: every accelerator resource of the cluster's workers).
    on_record : callable, optional
        Called with each codelet's record as it finishes (progress bars).
    on_event : callable, optional
        Called with (programs finished, codelets finished) after each codelet (fault injection).

    Returns
    -------
    list of Execution, in the order of ``jobs``.
    """
    from distributed import wait
    from distributed.client import FuturesCancelledError
    from distributed.scheduler import KilledWorker

    workers = workers_of(client)
    if not workers:
        raise FleetError("the Dask cluster has no workers")
    manager = manager if manager is not None else AcceleratorManager(workers)
    scheduler.attach(workers, manager)
    by_name = {w.name: w for w in workers}
    addresses = {w.address for w in workers}
    refreshed = time.monotonic()
    executions: list[Execution | None] = [None] * len(jobs)
    queue = list(enumerate(jobs))
    active: dict[str, _Job] = {}
    owner: dict[Any, tuple[_Job, str]] = {}         # futures in flight
    placed_at: dict[Any, str | None] = {}            # an int8 codelet's future -> its worker's address
    done_codelets = done_programs = 0

    def start(index: int, program: Program, parameters) -> None:
        program = scheduler.prepare(program)
        job = _Job(index, program, parameters, uuid.uuid4().hex[:8],
                   {c.id: set(c.deps) for c in program.codelets}, started=time.time())
        if parameters:
            missing = sorted(set(program.parameters) - set(parameters))
            if missing:
                raise FleetError(f"program {program.name!r}: no value for parameter {missing[0]!r}")
            job.parameters_future = client.scatter(dict(parameters), broadcast=False)
        active[job.token] = job
        for codelet in program.codelets:
            if not codelet.deps:
                submit(job, codelet)

    def submit(job: _Job, codelet: Codelet, *, cpu_only: bool = False) -> None:
        shapes, inputs = {}, {}
        for name, position in _sources(job.program, codelet):
            if position < 0:
                value = (job.parameters or {}).get(name)
                shapes[name] = tuple(getattr(value, "shape", ()))
                inputs[name] = (None, int(getattr(value, "nbytes", 0)), 0.0)
                continue
            producer = job.results[codelet.deps[position]]
            shapes[name] = producer.shapes.get(name, ())
            share = producer.output_bytes / max(1, len(producer.values))
            inputs[name] = (producer.worker, int(share),
                            producer.serialize_seconds / max(1, len(producer.values)))
        signature = signature_of(codelet, shapes)
        profile = profile_codelet(job.program, codelet, shapes,
                                  accelerators=() if cpu_only else manager.kinds() or (), device=device)
        placement = scheduler.place(Request(job.program, codelet, profile, signature, inputs))
        task = CodeletTask(job.program.name, codelet, job.program.prelude, _sources(job.program, codelet),
                           placement.version, placement.accelerator, job.program.tolerance, device)
        attempt = job.attempts.get(codelet.id, 0)
        key = f"codelet-{job.token}-{codelet.id}"       # (int8: and its accelerator, as the dashboard shows)
        key += (f"-{placement.accelerator}" if placement.version == "int8" else "") \
            + (f"-retry{attempt}" if attempt else "")
        address = None
        if placement.version == "int8":
            # A device is a Dask resource: one codelet at a time on it, on the worker the scheduler
            # leased it on (strictly: if that worker leaves, the driver places the codelet again).
            address = by_name[placement.worker].address if placement.worker in by_name else None
            restrictions = {"resources": {placement.accelerator: 1}} | (
                {"workers": [address]} if address else {})
        elif placement.worker is not None:
            # Loose: if the chosen worker dies, the codelet (or a rerun of a result it held) runs on
            # another.  (Not combined with resources: Dask gives a loose task to workers that lack
            # them, where it never starts.)
            restrictions = {"workers": [placement.worker], "allow_other_workers": True}
        else:
            restrictions = {}
        future = client.submit(run_codelet, task, job.parameters_future,
                               *[job.futures[d] for d in codelet.deps], key=key, pure=False, **restrictions)
        scheduler.submitted(placement, key)
        job.futures[codelet.id] = future
        job.placements[codelet.id] = placement
        job.profiles[codelet.id] = (profile, signature)
        owner[future] = (job, codelet.id)
        placed_at[future] = address

    def place_again(job: _Job, codelet: Codelet, reason: str, *, cpu_only: bool = False) -> None:
        """Cancel a codelet's task and place it afresh (the scheduler now sees the workers left)."""
        old = job.futures.pop(codelet.id)
        owner.pop(old, None)
        placed_at.pop(old, None)
        client.cancel([old])
        scheduler.finished(job.placements[codelet.id], old.key)       # its queue slot and its lease
        job.attempts[codelet.id] = job.attempts.get(codelet.id, 0) + 1
        job.retries[codelet.id] = reason
        submit(job, codelet, cpu_only=cpu_only)

    def scatter_again(value):
        """Scatter a driver-held value again, to a worker without devices where there is one."""
        plain = [w.address for w in workers if not any(k.startswith("accel") for k in w.resources)]
        return client.scatter(value, hash=False, **({"workers": plain} if plain else {}))

    def alive(future) -> bool:
        return future is not None and future.status in ("pending", "finished")

    def revive(job: _Job, codelet_id: str, reason: str) -> None:
        """A codelet's task was cancelled by the scheduler: bring back what it reads, then place it
        again (its inputs first: a lost input's own dependents may be among the cancelled)."""
        if job.attempts.get(codelet_id, 0) >= MAX_ATTEMPTS:
            stop_all()
            codelet = job.program.codelet(codelet_id)
            raise FleetError(f"codelet {codelet_id} of {job.program.name!r} ({codelet.file}:{codelet.line}) "
                             f"was placed {MAX_ATTEMPTS} times and lost each time; last: {reason}")
        if job.parameters and not alive(job.parameters_future):
            job.parameters_future = scatter_again(dict(job.parameters))
        codelet = job.program.codelet(codelet_id)
        for dep in codelet.deps:
            if alive(job.futures.get(dep)):
                continue
            if dep in job.results:
                job.futures[dep] = scatter_again(job.results[dep])
            else:
                revive(job, dep, reason)
        if job.futures.get(codelet_id) is not None and not alive(job.futures[codelet_id]):
            place_again(job, codelet, reason)

    def needed(job: _Job, codelet_id: str) -> bool:
        return any(codelet_id in other.deps for other in job.program.codelets if other.id not in job.results)

    def recover(lost: set[str], names: dict[str, str]) -> None:
        """Workers at ``lost`` addresses left the scheduler: save what they held or were to run."""
        for job in list(active.values()):
            rescattered = set()
            for codelet_id, result in job.results.items():
                if result.address in lost and codelet_id in job.futures:
                    if needed(job, codelet_id):
                        job.futures[codelet_id] = scatter_again(result)
                        rescattered.add(codelet_id)
                    else:           # (the driver has it: nothing to recompute on the cluster)
                        job.futures.pop(codelet_id).release()
            for codelet_id, future in list(job.futures.items()):
                if codelet_id in job.results:
                    continue
                codelet = job.program.codelet(codelet_id)
                gone = placed_at.get(future)
                if gone in lost:
                    place_again(job, codelet, f"worker {names[gone]} ({gone}) left the scheduler with the "
                                              f"{job.placements[codelet_id].accelerator} it was placed on")
                elif rescattered & set(codelet.deps):
                    place_again(job, codelet, f"its inputs from worker "
                                              f"{', '.join(sorted(names[a] for a in lost))} were scattered "
                                              f"again from the driver")

    def refresh() -> None:
        nonlocal workers, by_name, addresses, refreshed
        current = workers_of(client)
        lost = addresses - {w.address for w in current}
        names = {w.address: w.name for w in workers}
        workers, by_name, addresses = current, {w.name: w for w in current}, {w.address for w in current}
        scheduler.attach(workers, manager)
        refreshed = time.monotonic()
        if lost:
            recover(lost, names)

    def stop_all() -> None:
        futures = [f for job in active.values() for f in job.futures.values()]
        client.cancel(futures)

    def finished(future) -> None:
        nonlocal done_codelets, done_programs
        job, codelet_id = owner.pop(future)
        placed_at.pop(future, None)
        codelet = job.program.codelet(codelet_id)
        placement = job.placements[codelet_id]
        profile, signature = job.profiles[codelet_id]
        try:
            result: CodeletResult = future.result()
        except CodeletError as error:
            stop_all()
            scheduler.model.record([CodeletRun(job.program.name, codelet_id, signature, profile.pattern,
                                               placement.target, "?", "?", 0.0, error=str(error),
                                               source=source)])
            raise
        except KilledWorker as error:
            if placement.version != "int8":
                stop_all()
                raise FleetError(f"codelet {codelet_id} of {job.program.name!r} "
                                 f"({codelet.file}:{codelet.line}) killed the workers that ran it: {error}"
                                 ) from None
            # The accelerator version took its workers down: the CPU version instead.
            owner[future] = (job, codelet_id)
            place_again(job, codelet, f"KilledWorker on {placement.accelerator}: {error}", cpu_only=True)
            return
        except Exception as error:          # a cancelled run ...
            stop_all()
            raise FleetError(f"codelet {codelet_id} of {job.program.name!r} ({codelet.file}:{codelet.line}) "
                             f"could not run on the cluster: {type(error).__name__}: {error}") from None
        key = future.key
        scheduler.finished(placement, key)
        if placement.lease is not None:
            manager.release(placement.lease, seconds=result.seconds if result.version != "cpu" else None,
                            cycles=result.cycles)
        analytic = profile.estimates.get(result.version)
        scheduler.model.observe(signature, result.version, profile.pattern, result.seconds, analytic)
        fallback = placement.fallback or result.fallback
        record = CodeletRecord(job.program.name, codelet_id, codelet.line, profile.pattern, result.worker,
                               _fleet_of(by_name.get(result.worker), result, placement.resource),
                               result.version, result.seconds, placement.predicted_seconds, result.cycles,
                               result.output_bytes, result.serialize_seconds, fallback, placement.reason,
                               result.started, result.finished, signature, job.retries.get(codelet_id))
        job.results[codelet_id] = result
        job.records[codelet_id] = record
        done_codelets += 1
        if on_record is not None:
            on_record(record)
        for other in job.program.codelets:
            waiting = job.waiting[other.id]
            if codelet_id in waiting:
                waiting.discard(codelet_id)
                if not waiting and other.id not in job.futures:
                    submit(job, other)
        if len(job.results) == len(job.program.codelets):
            executions[job.index] = _finish(job, scheduler.model, source)
            del active[job.token]
            done_programs += 1
            if queue:
                index, (program, parameters) = queue.pop(0)
                start(index, program, parameters)
        if on_event is not None:
            on_event(done_programs, done_codelets)
            refresh()               # (fault injection may have changed the cluster)

    def cancelled_under_us() -> None:
        """Tasks the scheduler cancelled (not the driver: those leave ``owner`` first): the workers
        are looked at (a loss places them again), then what is still cancelled is revived."""
        refresh()
        for future in sorted(owner, key=lambda f: str(f.key)):
            if future in owner and future.status in ("cancelled", "lost"):
                job, codelet_id = owner[future]
                exception = getattr(future._state, "exception", None)
                why = getattr(exception, "reason", None) or future.status
                revive(job, codelet_id, f"the scheduler cancelled its task ({why}) after a worker left")

    while queue and len(active) < window:
        index, (program, parameters) = queue.pop(0)
        start(index, program, parameters)
    while owner:
        with client.as_current():
            try:
                done = wait(list(owner), timeout=WORKER_POLL_S, return_when="FIRST_COMPLETED").done
            except TimeoutError:
                done = set()
            except FuturesCancelledError:
                cancelled_under_us()
                continue
        for future in sorted(done, key=lambda f: str(f.key)):
            if future in owner and future.cancelled():      # (between wait and here)
                cancelled_under_us()
            elif future in owner:         # (not one placed again meanwhile)
                finished(future)
        if not done or time.monotonic() - refreshed > 1.0:
            refresh()           # (a lost worker's tasks never finish: look at the workers while idle)
    return [execution for execution in executions if execution is not None]


def _nothing() -> None:
    return None


def measure_task_overhead(client, samples: int = 8) -> float:
    """Seconds one Dask task costs the driver around its body: the median round trip of a task that
    does nothing (submitted, run on a worker, its result back), one at a time."""
    times = []
    for _ in range(samples):
        began = time.perf_counter()
        client.submit(_nothing, pure=False).result()
        times.append(time.perf_counter() - began)
    return sorted(times)[len(times) // 2]


#: Patterns whose codelets may be grouped when cheap; the others (matrix work, convolutions, FFTs,
#: hashing, I/O) stay alone, for the scheduler to place on their own.
GROUPABLE_PATTERNS = ("scalar", "elementwise")


def group_cheap(program: Program, overhead: float, model: HistoryModel | None = None, *,
                patterns: Sequence[str] = GROUPABLE_PATTERNS) -> Program:
    """:func:`~.codelet.group` with the profiler's CPU estimate of each codelet (scaled by what the
    model measured of its pattern, where it has) against ``overhead``, the per-task overhead;
    codelets of other ``patterns`` than these stay alone."""

    def estimate(codelet: Codelet) -> float | None:
        profile = profile_codelet(program, codelet, {}, accelerators=())
        if profile.pattern not in patterns:
            return None
        analytic = profile.estimates["cpu"]
        if model is None:
            return analytic
        return model.expected(signature_of(codelet, {}), "cpu", profile.pattern, analytic)[0]

    return group(program, estimate, overhead)


def _finish(job: _Job, model: HistoryModel, source: str) -> Execution:
    program = job.program
    last_writer: dict[str, str] = {}
    for codelet in program.codelets:
        for name in codelet.outputs:
            last_writer[name] = codelet.id
    values = {name: job.results[last_writer[name]].values[name] for name in program.outputs}
    stdout = "".join(job.results[c.id].stdout for c in program.codelets)
    model.record([CodeletRun(program.name, r.codelet, r.signature, r.pattern, r.version, r.fleet, r.worker,
                             r.seconds, r.output_bytes, r.serialize_seconds, r.cycles, r.predicted_seconds,
                             r.fallback, source=source, recorded_at=r.finished)
                  for r in job.records.values()])
    finished = max(r.finished for r in job.records.values())
    return Execution(program, values, dict(sorted(job.records.items(), key=lambda kv: kv[1].line)), stdout,
                     job.started, finished)


def plan(program: Program, scheduler: Scheduler, workers: Sequence[WorkerInfo], *, device: str = "golden",
         manager: AcceleratorManager | None = None) -> dict[str, tuple[TargetingProfile, Placement]]:
    """The placement the scheduler would give each codelet before anything runs (shapes unknown:
    matrix codelets are planned on the CPU until their operands are known).  For display: the
    adaptive scheduler decides again, with measurements, when each codelet is ready."""
    manager = manager if manager is not None else AcceleratorManager(workers)
    scheduler.attach(workers, manager)
    program = scheduler.prepare(program)
    planned = {}
    for codelet in program.codelets:
        profile = profile_codelet(program, codelet, {}, accelerators=manager.kinds(), device=device)
        placement = scheduler.place(Request(program, codelet, profile, signature_of(codelet, {}), {}))
        if placement.lease is not None:
            manager.release(placement.lease)
        planned[codelet.id] = (profile, placement)
    return planned


def execute(program: Program, scheduler: Scheduler | str = "adaptive", *, client,
            parameters: Mapping[str, Any] | None = None, history: HistoryStore | None = None,
            device: str = "golden", on_record: Callable[[CodeletRecord], None] | None = None) -> Execution:
    """Run a decomposed program's codelets on the cluster of ``client``, placed by ``scheduler``
    (a :class:`~.dispatch.Scheduler` or a name of :data:`~.dispatch.SCHEDULERS`)."""
    if isinstance(scheduler, str):
        if scheduler not in SCHEDULERS:
            raise FleetError(f"no scheduler {scheduler!r}; schedulers: {', '.join(SCHEDULERS)}")
        scheduler = SCHEDULERS[scheduler](HistoryModel(history))
    (execution,) = run_programs(client, [(program, parameters)], scheduler, device=device,
                                on_record=on_record)
    return execution


def compose_and_execute(program: Any, *args: Any, scheduler: str = "adaptive", client=None,
                        address: str | None = None, tolerance: float | None = None,
                        history: HistoryStore | None = None, device: str = "golden",
                        grouped: bool = False) -> Execution:
    """Decompose ``program`` (source, module or function), route its codelets and run them.

    A function program is called with ``args`` (its return value is ``values["__return__"]``).
    Without ``client``, connects to ``address`` or starts a local cluster for the call.
    ``grouped``: consecutive cheap codelets merged (:func:`group_cheap`, against the cluster's
    measured per-task overhead).
    """
    if client is None:
        with connect(address) as own:
            return compose_and_execute(program, *args, scheduler=scheduler, client=own, tolerance=tolerance,
                                       history=history, device=device, grouped=grouped)
    decomposed = decompose(program, tolerance=tolerance)
    if grouped:
        decomposed = group_cheap(decomposed, measure_task_overhead(client))
    if len(args) != len(decomposed.parameters):
        raise FleetError(f"program {decomposed.name!r} takes {len(decomposed.parameters)} argument(s) "
                         f"({', '.join(decomposed.parameters)}), {len(args)} given")
    parameters = dict(zip(decomposed.parameters, args, strict=True)) or None
    return execute(decomposed, scheduler, client=client, parameters=parameters, history=history,
                   device=device)
