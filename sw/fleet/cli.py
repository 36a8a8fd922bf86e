"""``braze fleet run|plan SCRIPT``: the plan, a progress bar, a per-codelet table, the script's output."""

from __future__ import annotations

import argparse
import importlib.util
import sys

from braze.sw.hpm import HistoryStore

from .codelet import FleetError, decompose
from .dispatch import SCHEDULERS, AcceleratorManager, HistoryModel
from .execute import connect, execute, group_cheap, measure_task_overhead, plan, quiet_dask_logs, workers_of

__all__ = ["run_script"]


def _dashboard(client) -> str | None:
    """The Dask dashboard's address, if the scheduler serves one."""
    services = client.scheduler_info().get("services", {})
    return client.dashboard_link if "dashboard" in services else None


def security_of(args: argparse.Namespace):
    """The :class:`distributed.security.Security` of the ``--tls-*`` arguments (None without them)."""
    files = {"--tls-ca-file": args.tls_ca_file, "--tls-cert": args.tls_cert, "--tls-key": args.tls_key}
    given = {flag: path for flag, path in files.items() if path is not None}
    if not given:
        return None
    missing = [flag for flag in files if flag not in given]
    if missing:
        raise FleetError(f"TLS needs {', '.join(files)}: {', '.join(missing)} missing")
    if args.scheduler is not None and not args.scheduler.startswith("tls://"):
        raise FleetError(f"--scheduler {args.scheduler}: the --tls-* certificates are for a tls:// address")
    for flag, path in given.items():
        try:
            path.read_bytes()
        except OSError as error:
            raise FleetError(f"{flag} {path}: cannot read it ({error.strerror or error})") from None
    import ssl

    from distributed.security import Security

    # (the same certificate for every role: a local cluster's scheduler and workers use it too)
    security = Security(require_encryption=True, tls_ca_file=str(args.tls_ca_file),
                        tls_client_cert=str(args.tls_cert), tls_client_key=str(args.tls_key),
                        tls_scheduler_cert=str(args.tls_cert), tls_scheduler_key=str(args.tls_key),
                        tls_worker_cert=str(args.tls_cert), tls_worker_key=str(args.tls_key))
    try:
        security.get_connection_args("client")      # loads the files: PEM errors show here
    except (ssl.SSLError, ValueError) as error:
        raise FleetError(f"--tls-ca-file {args.tls_ca_file}, --tls-cert {args.tls_cert}, --tls-key "
                         f"{args.tls_key}: not a usable CA/certificate/key set ({error})") from None
    return security


def run_script(args: argparse.Namespace) -> int:
    try:
        source = args.script.read_text()
    except UnicodeDecodeError as error:
        raise FleetError(f"{args.script}: not a text file ({error.reason})") from None
    program = decompose(source, filename=str(args.script), name=args.script.stem, tolerance=args.tolerance)
    security = security_of(args)
    quiet_dask_logs()
    history = HistoryStore(args.history)
    scheduler = SCHEDULERS[args.policy](HistoryModel(history))
    # A local cluster serves Dask's dashboard where bokeh (which draws it) is installed.
    with connect(args.scheduler, dashboard=importlib.util.find_spec("bokeh") is not None,
                 security=security) as client:
        workers = workers_of(client)
        scheduler.task_overhead = overhead = measure_task_overhead(client)
        if args.group:
            statements = len(program.codelets)
            program = group_cheap(program, overhead, HistoryModel(history))
            print(f"grouped: {statements} statements -> {len(program.codelets)} codelets (cheap ones merged "
                  f"up to the measured per-task overhead, {overhead * 1e3:.1f} ms)")
        scheduler.attach(workers, AcceleratorManager(workers))
        prepared = scheduler.prepare(program)       # (the adaptive policy groups cheap codelets itself)
        if len(prepared.codelets) != len(program.codelets):
            print(f"{args.policy}: {len(program.codelets)} codelets -> {len(prepared.codelets)} (cheap "
                  f"consecutive ones grouped against the measured per-task overhead, "
                  f"{overhead * 1e3:.1f} ms)")
        program = prepared
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
