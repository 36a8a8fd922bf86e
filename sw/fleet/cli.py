"""``braze fleet run|plan SCRIPT``: the plan, a progress bar, a per-codelet table, the script's output."""

from __future__ import annotations

import argparse
import importlib.util
import sys

from braze.sw.hpm import HistoryStore

from .codelet import FleetError, decompose
from .dispatch import SCHEDULERS, HistoryModel
from .execute import connect, execute, plan, quiet_dask_logs, workers_of

__all__ = ["run_script"]


def _dashboard(client) -> str | None:
    """The Dask dashboard's address, if the scheduler serves one."""
    services = client.scheduler_info().get("services", {})
    return client.dashboard_link if "dashboard" in services else None


def run_script(args: argparse.Namespace) -> int:
    try:
        source = args.script.read_text()
    except UnicodeDecodeError as error:
        raise FleetError(f"{args.script}: not a text file ({error.reason})") from None
    program = decompose(source, filename=str(args.script), name=args.script.stem, tolerance=args.tolerance)
    quiet_dask_logs()
    history = HistoryStore(args.history)
    scheduler = SCHEDULERS[args.policy](HistoryModel(history))
    # A local cluster serves Dask's dashboard where bokeh (which draws it) is installed.
    with connect(args.scheduler, dashboard=importlib.util.find_spec("bokeh") is not None) as client:
        workers = workers_of(client)
        print(f"cluster: {client.scheduler.address}; workers: "
              + "; ".join(f"{w.name} ({', '.join(f'{k}={v:g}' for k, v in w.resources.items() if v)})"
                          for w in workers))
        dashboard = _dashboard(client) if args.scheduler or importlib.util.find_spec("bokeh") else None
        print(f"dashboard: {dashboard}" if dashboard else
              "dashboard: none (the scheduler serves none; Dask's dashboard needs bokeh)")
        print(f"\nplan ({args.policy}; {len(program.codelets)} codelets, DAG levels "
              f"{[len(level) for level in program.levels()]}):")
        for codelet_id, (profile, placement) in plan(program, SCHEDULERS[args.policy](HistoryModel(history)),
                                                     workers).items():
            codelet = program.codelet(codelet_id)
            deps = ",".join(codelet.deps) or "-"
            print(f"  {codelet_id:4} line {codelet.line:<4} {profile.pattern:11} -> "
                  f"{placement.worker or 'any worker'} {placement.target:13} deps {deps:12} "
                  f"{codelet.source.splitlines()[0][:60]}")
        if args.action == "plan":
            return 0
        from tqdm import tqdm

        with tqdm(total=len(program.codelets), desc="codelets", unit="codelet", file=sys.stderr) as bar:
            result = execute(program, scheduler, client=client, history=history,
                             on_record=lambda record: bar.update(1))
    history.close()
    print()
    print(result.table())
    print(f"\nmakespan {result.makespan * 1e3:.1f} ms; outputs: {', '.join(result.values) or 'none'}")
    if result.stdout:
        print("\n--- output of the script ---")
        sys.stdout.write(result.stdout)
    return 0
