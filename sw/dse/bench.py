"""``braze bench dse``: a design-space sweep for the digits CNN, its Pareto front confirmed on the RTL.

1. The area estimate's held-out error: every configuration synthesized for real (the calibration),
   estimated by a model fitted on the others.
2. The sweep: the demo's digits CNN (batch 8) over ``rows x cols x spad_kib x bus_bits`` on a local
   Dask cluster of two single-threaded workers, into a fresh performance history (``--history``
   resumes one instead): ``--quick`` 30 configurations of a 54-configuration space (arrays up to
   16x16), otherwise 48 of the issue's 150 (arrays up to 32x32) -- both larger than the budget, so
   optuna's TPE sampler chooses.
3. Finalists (2 with ``--quick``, else 3) spread along the front, run on the Verilator RTL: one build
   each (about a minute for small arrays), measured cycles against predicted.  With ``--synthesize``
   they are synthesized for real too (minutes each) and the area estimate compared.

Prints the front and ends with ``dse: configs=<n> pareto=<n> minutes=<x> finalists_confirmed=<n>``
(minutes: the whole run, cluster start, model training and the RTL builds included;
finalists_confirmed: finalists whose measured cycles are within 3% of the prediction).
"""

from __future__ import annotations

import collections
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from braze.isa.errors import ArgumentParser

from .area import AreaModel, holdout_table, synthesize
from .explore import CONFIRM_TOLERANCE_PCT, confirm, dask_client, explore
from .pareto import parse_objectives
from .report import plot, table
from .space import parse_space
from .workload import parse_workload

__all__ = ["main", "QUICK_SPACE", "FULL_SPACE"]

QUICK_SPACE = "rows=4..16,cols=4..16,spad_kib=16..64,bus_bits=64..256"
FULL_SPACE = "rows=4..32,cols=4..32,spad_kib=16..256,bus_bits=64..256"


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="braze bench dse", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="30 configurations of arrays up to 16x16, 2 finalists")
    parser.add_argument("--history", type=Path, help="resume this performance history (default: a fresh one)")
    parser.add_argument("--plot", type=Path, help="write the front's plot here (PNG)")
    parser.add_argument("--device", default="verilator",
                        help="device the finalists run on (default: verilator)")
    parser.add_argument("--synthesize", action="store_true",
                        help="also synthesize the finalists for real (Yosys, minutes each; cached) and print "
                             "the area estimate's error on them")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error(f"argument --seed: {args.seed} must be at least 0")
    began = time.monotonic()
    space_text, trials, finalists = (QUICK_SPACE, 30, 2) if args.quick else (FULL_SPACE, 48, 3)
    objectives = parse_objectives("cycles,energy,luts,fmax")
    space = parse_space(space_text)

    print("== area estimate: held-out error on the synthesized configurations (ECP5, Yosys) ==")
    area = AreaModel()
    print(holdout_table(area.holdout()))
    print(area.fmax_basis)

    print(f"\n== sweep: digits CNN, {space_text}, {trials} configurations ==")
    from braze.sw.hpm import HistoryStore

    workload = parse_workload("digits-cnn", batch=8)
    with tempfile.TemporaryDirectory(prefix="braze-bench-dse-") as scratch:
        with HistoryStore(args.history or Path(scratch) / "history.sqlite") as store:
            with dask_client(workers=2) as client:
                exploration = explore(workload, space, objectives, trials=trials, client=client, store=store,
                                      seed=args.seed)
            sweep_minutes = (time.monotonic() - began) / 60
            predictors = collections.Counter(result.predictor for result in exploration.results)
            print(f"{len(exploration.results)} configurations ({exploration.resumed} resumed) in "
                  f"{exploration.seconds:.0f} s; cycles predicted by: "
                  + ", ".join(f"{name} {count}" for name, count in predictors.most_common()))
            print(f"\n== finalists on the {args.device} device "
                  f"(within {CONFIRM_TOLERANCE_PCT:g}% = confirmed) ==")
            confirm(exploration, finalists, device=args.device, store=store)
    if args.synthesize:
        print("\n== finalists synthesized for real (Yosys synth_ecp5) against the estimate ==")
        for index in exploration.finalists:
            config = exploration.results[index].config
            measured = synthesize(config)
            estimate = area.estimate(config).to_dict()
            parts = []
            for name in ("luts", "ffs", "dsps", "brams"):
                error = 100 * (estimate[name] - measured[name]) / max(measured[name], 1)
                parts.append(f"{name} {measured[name]} est {estimate[name]} ({error:+.1f}%)")
            print(f"  {config.name}: {', '.join(parts)}; synthesis {measured['seconds']:.0f} s")
    print()
    print(table(exploration, only_front=True))
    if args.plot:
        print(f"plot: {plot(exploration, args.plot)}")
    minutes = (time.monotonic() - began) / 60
    print(f"\nsweep {sweep_minutes:.2f} min (cluster, training, {len(exploration.results)} evaluations); "
          f"total {minutes:.2f} min")
    print(f"dse: configs={len(exploration.results)} pareto={len(exploration.front)} minutes={minutes:.2f} "
          f"finalists_confirmed={exploration.confirmed}")
    return 0
