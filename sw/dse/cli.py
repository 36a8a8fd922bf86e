"""``braze dse``: the command line of design-space exploration."""

from __future__ import annotations

import argparse
import time

from .explore import confirm, dask_client, explore
from .pareto import parse_objectives
from .report import plot, table
from .space import parse_space
from .workload import parse_workload

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    """Explore, print the front (or every row with ``--all``), confirm finalists, plot."""
    from braze.sw.hpm import HistoryStore

    # Everything the user typed is checked before a cluster starts or a model trains.
    objectives = parse_objectives(args.objectives)
    space = parse_space(args.space, args.base)
    workload = parse_workload(args.workload, batch=args.batch)
    began = time.monotonic()
    with HistoryStore(args.history) as store:
        with dask_client(args.scheduler, workers=args.workers) as client:
            exploration = explore(workload, space, objectives, trials=args.trials, client=client, store=store,
                                  seed=args.seed, progress=not args.no_progress)
        if args.confirm:
            print(f"confirming {args.confirm} finalists on the {args.device} device:")
            confirm(exploration, args.confirm, device=args.device, store=store)
    print(table(exploration, only_front=not args.all))
    if args.plot:
        print(f"plot: {plot(exploration, args.plot)}")
    print(f"dse: configs={len(exploration.results)} pareto={len(exploration.front)} "
          f"minutes={(time.monotonic() - began) / 60:.2f} finalists_confirmed={exploration.confirmed}")
    return 0
