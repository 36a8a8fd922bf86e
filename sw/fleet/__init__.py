"""Codelets, fleets and the dispatcher: ordinary Python programs routed across CPUs and accelerators.

A program (source, module or function) is split into codelets by def-use analysis
(:func:`decompose`); each codelet is profiled (:func:`profile_codelet` -> :class:`TargetingProfile`)
and routed by a scheduler to a fleet of ``dask.distributed`` workers -- the heavy-compute fleet
owns simulated Braze accelerators, on which matrix codelets run in int8 where the user stated a
tolerance -- and every run goes into the performance history that routing learns from.

* :mod:`.codelet` -- :func:`decompose`, :class:`Codelet`, :class:`Program`, the errors;
* :mod:`.profile` -- pattern recognition and the targeting profile;
* :mod:`.worker` -- what runs on a worker (the CPU and the int8 version of a codelet);
* :mod:`.dispatch` -- the performance model, the accelerator manager, the schedulers;
* :mod:`.execute` -- clusters, :func:`execute`, :func:`compose_and_execute`;
* :mod:`.monitor` -- :func:`monitor`;  :mod:`.bench` -- ``braze bench fleet``.

The package uses the compiler, the runtime and the performance model; nothing imports it.
"""

from .codelet import Codelet, CodeletError, DecompositionError, FleetError, Program, decompose, group
from .dispatch import (
    SCHEDULERS,
    AcceleratorManager,
    CpuScheduler,
    DmdaScheduler,
    HistoryModel,
    Scheduler,
    StaticScheduler,
)
from .execute import (
    DEFAULT_WORKERS,
    CodeletRecord,
    Execution,
    WorkerSpec,
    compose_and_execute,
    connect,
    execute,
    group_cheap,
    local_cluster,
    measure_task_overhead,
    plan,
    run_programs,
)
from .monitor import CodeletMetrics, monitor
from .profile import TargetingProfile, profile_codelet

__all__ = [
    "decompose", "group", "group_cheap", "measure_task_overhead",
    "Program", "Codelet", "FleetError", "DecompositionError", "CodeletError",
    "TargetingProfile", "profile_codelet",
    "Scheduler", "CpuScheduler", "StaticScheduler", "DmdaScheduler", "SCHEDULERS", "HistoryModel",
    "AcceleratorManager",
    "WorkerSpec", "DEFAULT_WORKERS", "local_cluster", "connect", "plan", "execute", "run_programs",
    "compose_and_execute", "Execution", "CodeletRecord",
    "monitor", "CodeletMetrics",
]
