"""``braze bench compile``: compile time of the digits models, cold and for a second batch size.

For each model (the digits CNN and MLP of :mod:`braze.sw.compiler.models`, trained with a fixed
seed), under each cost model (``--cost-models``: the analytic timing model, and the learned
performance model of the verilator device, :mod:`braze.sw.hpm`, as the demo plans with it), in a
fresh process with an empty kernel cache and feature cache (``$BRAZE_CACHE_DIR`` in a temporary
directory): the time of ``InferenceSession.compile_for`` for the first batch size (cold: every
candidate kernel generated, fusion and tiling priced), then for a second batch size (which
specialises the first one's plan, ``specialise=True``; with ``--fresh`` it is priced afresh), then
for the first size again in a new session on the now warm disk caches (the features remembered in
memory forgotten).  ``pruned``: candidate tilings of the cold compile ruled out by their lower bound
before being scheduled (:mod:`braze.sw.compiler.tiling`); ``read``: kernels the cached compile read.
Session construction (import, quantization) is not counted, nor is importing the compiler (done before the
clock starts: a cold compile triggers no import).  Each time is wall-clock (``time.perf_counter``) with the
process's CPU time beside it (``*_cpu_s``, ``time.process_time``: every thread of the process): on a
machine shared with other jobs, or under ``nice``, the wall-clock time grows with the load while the CPU
time does not, so the two together say whether a slow figure is the compiler's or the machine's.
The last line is ``compile: cnn_cold=... cnn_second=... ...`` (the learned model's keys with a
``_learned`` suffix).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence

from braze.isa.errors import ArgumentParser, BrazeError

__all__ = ["measure", "main", "run_child", "planning_cost_model", "COST_MODELS"]

MODELS = ("cnn", "mlp")
#: ``analytic``: the ISA timing model; ``learned``: the verilator device's learned performance model
#: (the user's trained one, else the shipped one), with the configuration's nominal memory.
COST_MODELS = ("analytic", "learned")


def planning_cost_model(name: str, config):
    """The cost model ``name`` (one of :data:`COST_MODELS`) for ``config``, as a verilator session plans."""
    from braze.sw.compiler.cost import TimingCostModel

    if name == "analytic":
        return TimingCostModel()
    from braze.sw.hpm import LearnedCostModel, MemorySystem, load_model

    model = load_model("verilator")
    if model is None or not model.covers(config, "verilator"):
        raise BrazeError(f"no learned performance model covers config {config.name!r} on the verilator "
                         "device: run `braze hpm calibrate` and `braze hpm train`")
    return LearnedCostModel(model, device="verilator", memory=MemorySystem.nominal(config))


def measure(kind: str, *, config: str = "default", first: int = 64, second: int = 17,
            specialise: bool = True, cost_model: str = "analytic", loops: bool = True) -> dict:
    """Compile times of one digits model in this process (call it in a fresh one for a cold number)."""
    from braze.isa import Config
    from braze.sw.compiler import models
    from braze.sw.compiler.cache import KernelCache
    from braze.sw.hpm.features import forget_features
    from braze.sw.runtime.session import InferenceSession

    data = models.load_digits_split()
    model, _ = (models.train_cnn if kind == "cnn" else models.train_mlp)(data, seed=0)
    with tempfile.TemporaryDirectory() as directory, _cache_root(directory):
        path = model.save(os.path.join(directory, f"{kind}.onnx"))
        calibration = models.calibration_set(model, data, seed=0)
        parsed = Config.parse(config)
        options = dict(device="golden", config=parsed, calibration=calibration, record=False,
                       specialise=specialise, loops=loops)
        planner = planning_cost_model(cost_model, parsed)
        cache_dir = os.path.join(directory, "cache")
        session = InferenceSession(path, cache=KernelCache(cache_dir), cost_model=planner, **options)
        name = session.get_inputs()[0].name
        shape = model.inputs(data.x_val[:first]).shape
        cold, cold_cpu = _timed(lambda: session.compile_for({name: shape}))
        generated = session.cache.misses
        pruned = session.cache.pruned
        second_s, second_cpu = _timed(lambda: session.compile_for({name: (second, *shape[1:])}))
        forget_features()          # as a new process would: what is remembered is on disk
        warm = InferenceSession(path, cache=KernelCache(cache_dir),
                                cost_model=planning_cost_model(cost_model, parsed), **options)
        cached, cached_cpu = _timed(lambda: warm.compile_for({name: shape}))
    return {"model": kind, "cost_model": cost_model, "first": first, "second": second, "cold_s": cold,
            "second_s": second_s, "cached_s": cached, "cold_cpu_s": cold_cpu, "second_cpu_s": second_cpu,
            "cached_cpu_s": cached_cpu, "load_average": os.getloadavg()[0], "nice": os.nice(0),
            "kernels_generated": generated,
            "kernels_second": session.cache.misses - generated, "kernels_pruned": pruned,
            "kernels_cached": warm.cache.disk_hits}


def _timed(call: Callable[[], object]) -> tuple[float, float]:
    """(wall-clock seconds, CPU seconds of this process) of ``call()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    call()
    return time.perf_counter() - wall, time.process_time() - cpu


@contextlib.contextmanager
def _cache_root(directory: str) -> Iterator[None]:
    """``$BRAZE_CACHE_DIR`` at ``directory`` meanwhile: no kernel or feature from an earlier run counts."""
    before = os.environ.get("BRAZE_CACHE_DIR")
    os.environ["BRAZE_CACHE_DIR"] = directory
    try:
        yield
    finally:
        if before is None:
            del os.environ["BRAZE_CACHE_DIR"]
        else:
            os.environ["BRAZE_CACHE_DIR"] = before


def run_child(kind: str, cost_model: str, *, config: str = "default", first: int = 64, second: int = 17,
              fresh: bool = False, loops: bool = True) -> dict:
    """:func:`measure` in a fresh Python process (so that the cold number is cold); its JSON row."""
    command = [sys.executable, "-m", "braze.sw.runtime.compile_bench", "--one", kind,
               "--cost-models", cost_model, "--config", config, "--first", str(first),
               "--second", str(second)]
    command += ["--fresh"] if fresh else []
    command += [] if loops else ["--no-loops"]
    env = dict(os.environ, BRAZE_HPM_RECORD="0")
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise BrazeError(f"braze bench compile: measuring {kind} under the {cost_model} cost model failed: "
                         + (done.stderr.strip().splitlines() or ["no message"])[-1])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> int:
    """``braze bench compile [--config NAME] [--first N] [--second N] [--fresh] [--no-loops]
    [--models cnn,mlp] [--cost-models analytic,learned]``."""
    parser = ArgumentParser(prog="braze bench compile", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="default", help="preset name, PRESET:field=value,... or JSON")
    parser.add_argument("--first", type=int, default=64, help="first batch size (compiled cold)")
    parser.add_argument("--second", type=int, default=17, help="second batch size")
    parser.add_argument("--fresh", action="store_true", help="price the second batch size afresh "
                        "(specialise=False) instead of specialising the first one's plan")
    parser.add_argument("--no-loops", action="store_true", help="lower every kernel straight-line "
                        "(InferenceSession(loops=False)) instead of with the default loops")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: cnn, mlp")
    parser.add_argument("--cost-models", default=",".join(COST_MODELS),
                        help="comma-separated: analytic, learned (the verilator device's learned model)")
    parser.add_argument("--one", help=argparse.SUPPRESS)      # internal: measure one model in this process
    args = parser.parse_args(argv)
    options = dict(config=args.config, first=args.first, second=args.second, loops=not args.no_loops)
    kinds = _choices(parser, "--models", args.models, MODELS)
    planners = _choices(parser, "--cost-models", args.cost_models, COST_MODELS)
    if args.one:                      # the child process: one model, JSON out
        print(json.dumps(measure(args.one, specialise=not args.fresh, cost_model=planners[0], **options)))
        return 0
    rows = [run_child(kind, planner, fresh=args.fresh, **options) for planner in planners for kind in kinds]
    print(f"{'model':<6} {'cost model':<10} {'batch':>6} {'cold':>9} {'(CPU)':>8} {'generated':>10} "
          f"{'pruned':>7} {'batch':>6} {'second':>9} {'generated':>10} {'cached':>9} {'read':>5}")
    for row in rows:
        print(f"{row['model']:<6} {row['cost_model']:<10} {row['first']:>6} {row['cold_s']:>8.3f}s "
              f"{row['cold_cpu_s']:>7.3f}s {row['kernels_generated']:>10} {row['kernels_pruned']:>7} "
              f"{row['second']:>6} {row['second_s']:>8.3f}s {row['kernels_second']:>10} "
              f"{row['cached_s']:>8.3f}s {row['kernels_cached']:>5}")
    print(f"(wall-clock seconds; CPU: the compiling process's CPU seconds; load average "
          f"{max(row['load_average'] for row in rows):.2f} on {os.cpu_count()} CPUs, nice "
          f"{max(row['nice'] for row in rows)})")
    how = "fresh" if args.fresh else "specialised"
    suffix = {"analytic": "", "learned": "_learned"}
    print("compile: " + " ".join(f"{row['model']}_{key}{suffix[row['cost_model']]}={row[key + '_s']:.3f}"
                                 for row in rows for key in ("cold", "second", "cached"))
          + f" second_size={how}" + (" loops=off" if args.no_loops else ""))
    return 0


def _choices(parser: argparse.ArgumentParser, option: str, given: str, allowed: Sequence[str]) -> list[str]:
    chosen = [name.strip() for name in given.split(",") if name.strip()]
    if not chosen or any(name not in allowed for name in chosen):
        parser.error(f"{option}: choose from {', '.join(allowed)}, not {given!r}")
    return chosen


if __name__ == "__main__":
    raise SystemExit(main())
