"""Check: a change to kernel generation or compilation keeps every kernel and plan the same.

    python benchmarks/kernel_identity.py dump before.json      # on the code before the change
    python benchmarks/kernel_identity.py dump after.json       # ... and after it
    python benchmarks/kernel_identity.py compare before.json after.json

``dump`` compiles the digits CNN and MLP (:mod:`braze.sw.compiler.models`, trained with a fixed seed) on
``default`` and ``large`` under both cost models (the timing model, and the verilator device's learned
model as a verilator session plans with it), at batch 64 and then 17 and 1 (specialised from the
first), with empty kernel and feature caches; and the library's GEMM of each shape of
:data:`GEMM_SHAPES` on ``tiny``, ``default`` and ``large``.  It writes, per compiled model, a hash of
every kernel (its instruction words, tiling and predicted cycles) and the fusion and tiling decisions,
and per GEMM its kernel's hash.  ``compare`` says whether two dumps agree; the lower bounds that the
tiling decisions report for the tilings they ruled out are left out of the comparison (a tighter
bound rules the same tilings out at higher bounds).  It exits 1 if they differ.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile

GEMM_SHAPES = ((1, 64, 10), (1, 256, 256), (16, 16, 16), (64, 64, 64), (128, 128, 128), (64, 576, 64),
               (256, 64, 32))
BATCHES = (64, 17, 1)


def kernel_hash(kernel) -> str:
    digest = hashlib.sha256()
    for insn in kernel.instructions:
        digest.update(insn.to_bytes())
    digest.update(repr(sorted(kernel.tiling.items())).encode())
    digest.update(str(kernel.predicted_cycles).encode())
    return digest.hexdigest()[:16]


def dump(path: str) -> None:
    from braze.isa import Config
    from braze.sw.compiler import kernels, models
    from braze.sw.compiler.cache import KernelCache
    from braze.sw.runtime import compile_bench
    from braze.sw.runtime.session import InferenceSession

    found: dict[str, object] = {}
    data = models.load_digits_split()
    for kind in ("cnn", "mlp"):
        model, _ = (models.train_cnn if kind == "cnn" else models.train_mlp)(data, seed=0)
        calibration = models.calibration_set(model, data, seed=0)
        for config_name in ("default", "large"):
            config = Config.parse(config_name)
            for cost_model in compile_bench.COST_MODELS:
                with tempfile.TemporaryDirectory() as directory, compile_bench._cache_root(directory):
                    onnx_path = model.save(os.path.join(directory, f"{kind}.onnx"))
                    session = InferenceSession(
                        onnx_path, cache=KernelCache(os.path.join(directory, "cache")), device="golden",
                        cost_model=compile_bench.planning_cost_model(cost_model, config), config=config,
                        calibration=calibration, record=False)
                    name = session.get_inputs()[0].name
                    shape = model.inputs(data.x_val[:1]).shape
                    for batch in BATCHES:
                        compiled = session.compile_for({name: (batch, *shape[1:])})
                        key = f"{kind}/{config_name}/{cost_model}/{batch}"
                        found[key] = {name: kernel_hash(k) for name, k in sorted(compiled.kernels.items())}
                        found[key + "/decisions"] = ([repr(d) for d in session.fusion_decisions]
                                                     + [repr(d) for d in session.tiling_decisions])
    for config_name in ("tiny", "default", "large"):
        config = Config.preset(config_name)
        for M, K, N in GEMM_SHAPES:
            try:
                kernel = kernels.gemm(config, M, K, N, bias=True, requant=True, act="relu")
                found[f"gemm/{config_name}/{M}x{K}x{N}"] = kernel_hash(kernel)
            except kernels.KernelError as error:
                found[f"gemm/{config_name}/{M}x{K}x{N}"] = f"KernelError: {error}"
    with open(path, "w") as out:
        json.dump(found, out, indent=1)
    print(f"{len(found)} entries written to {path}")


def _without_pruned_bounds(value):
    """``value`` with the bounds of the ruled-out tilings (``pruned=[('label', bound), ...]``) dropped."""
    if isinstance(value, dict):
        return {key: _without_pruned_bounds(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_pruned_bounds(item) for item in value]
    if isinstance(value, str):
        return re.sub(r"pruned=\[[^\]]*\]", lambda found: re.sub(r", \d+\)", ")", found.group(0)), value)
    return value


def compare(before_path: str, after_path: str) -> bool:
    with open(before_path) as before_file, open(after_path) as after_file:
        before, after = json.load(before_file), json.load(after_file)
    differing = sorted(key for key in before.keys() | after.keys()
                       if _without_pruned_bounds(before.get(key)) != _without_pruned_bounds(after.get(key)))
    bounds_only = sum(1 for key in before.keys() & after.keys()
                      if before[key] != after[key] and key not in differing)
    print(f"{len(before)} / {len(after)} entries; differing: {len(differing)}"
          + "".join(f"\n  {key}" for key in differing)
          + f"; differing only in the ruled-out tilings' bounds: {bounds_only}")
    return not differing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("dump").add_argument("path")
    compare_parser = commands.add_parser("compare")
    compare_parser.add_argument("before")
    compare_parser.add_argument("after")
    args = parser.parse_args(argv)
    if args.command == "dump":
        dump(args.path)
        return 0
    return 0 if compare(args.before, args.after) else 1


if __name__ == "__main__":
    sys.exit(main())
