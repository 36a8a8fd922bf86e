"""``braze bench compile``: compile time of the digits models, cold and for a second batch size.

For each model (the digits CNN and MLP of :mod:`braze.sw.compiler.models`, trained with a fixed
seed), in a fresh process with an empty kernel cache: the time of
``InferenceSession.compile_for`` for the first batch size (cold: every candidate kernel generated,
fusion and tiling priced), then for a second batch size (which specialises the first one's plan,
``specialise=True``; with ``--fresh`` it is priced afresh), then for the first size again in a new
session on the now warm disk cache.  Session construction (import, quantization) is not counted.
The last line is ``compile: cnn_cold_s=... cnn_second_s=... ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from braze.isa.errors import ArgumentParser

__all__ = ["measure", "main"]

MODELS = ("cnn", "mlp")


def measure(kind: str, *, config: str = "default", first: int = 64, second: int = 17,
            specialise: bool = True) -> dict:
    """Compile times of one digits model in this process (call it in a fresh one for a cold number)."""
    from braze.sw.compiler import models
    from braze.sw.compiler.cache import KernelCache
    from braze.sw.runtime.session import InferenceSession

    data = models.load_digits_split()
    model, _ = (models.train_cnn if kind == "cnn" else models.train_mlp)(data, seed=0)
    with tempfile.TemporaryDirectory() as directory:
        path = model.save(os.path.join(directory, f"{kind}.onnx"))
        calibration = models.calibration_set(model, data, seed=0)
        options = dict(device="golden", config=config, calibration=calibration, cost_model="analytic",
                       record=False, specialise=specialise)
        cache_dir = os.path.join(directory, "cache")
        session = InferenceSession(path, cache=KernelCache(cache_dir), **options)
        name = session.get_inputs()[0].name
        shape = model.inputs(data.x_val[:first]).shape
        started = time.perf_counter()
        session.compile_for({name: shape})
        cold = time.perf_counter() - started
        generated = session.cache.misses
        started = time.perf_counter()
        session.compile_for({name: (second, *shape[1:])})
        second_s = time.perf_counter() - started
        warm = InferenceSession(path, cache=KernelCache(cache_dir), **options)
        started = time.perf_counter()
        warm.compile_for({name: shape})
        cached = time.perf_counter() - started
    return {"model": kind, "first": first, "second": second, "cold_s": cold, "second_s": second_s,
            "cached_s": cached, "kernels_generated": generated,
            "kernels_second": session.cache.misses - generated}


def main(argv: Sequence[str] | None = None) -> int:
    """``braze bench compile [--config NAME] [--first N] [--second N] [--fresh] [--models cnn,mlp]``."""
    parser = ArgumentParser(prog="braze bench compile", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="default", help="preset name, PRESET:field=value,... or JSON")
    parser.add_argument("--first", type=int, default=64, help="first batch size (compiled cold)")
    parser.add_argument("--second", type=int, default=17, help="second batch size")
    parser.add_argument("--fresh", action="store_true", help="price the second batch size afresh "
                        "(specialise=False) instead of specialising the first one's plan")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: cnn, mlp")
    parser.add_argument("--one", help=argparse.SUPPRESS)      # internal: measure one model in this process
    args = parser.parse_args(argv)
    options = dict(config=args.config, first=args.first, second=args.second, specialise=not args.fresh)
    if args.one:                      # the child process: one model, JSON out
        print(json.dumps(measure(args.one, **options)))
        return 0
    kinds = [kind.strip() for kind in args.models.split(",") if kind.strip()]
    unknown = [kind for kind in kinds if kind not in MODELS]
    if unknown or not kinds:
        parser.error(f"--models: choose from {', '.join(MODELS)}, not {args.models!r}")
    rows = []
    for kind in kinds:
        command = [sys.executable, "-m", "braze.sw.runtime.compile_bench", "--one", kind,
                   "--config", args.config, "--first", str(args.first), "--second", str(args.second)]
        command += ["--fresh"] if args.fresh else []
        env = dict(os.environ, BRAZE_HPM_RECORD="0")
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if done.returncode:
            sys.stderr.write(done.stderr)
            return done.returncode
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"{'model':<6} {'batch':>6} {'cold':>9} {'generated':>10} {'batch':>6} {'second':>9} "
          f"{'generated':>10} {'cached':>9}")
    for row in rows:
        print(f"{row['model']:<6} {row['first']:>6} {row['cold_s']:>8.3f}s {row['kernels_generated']:>10} "
              f"{row['second']:>6} {row['second_s']:>8.3f}s {row['kernels_second']:>10} "
              f"{row['cached_s']:>8.3f}s")
    how = "fresh" if args.fresh else "specialised"
    print("compile: " + " ".join(f"{row['model']}_{key}={row[key + '_s']:.3f}" for row in rows
                                 for key in ("cold", "second", "cached")) + f" second_size={how}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
