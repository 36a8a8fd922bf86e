"""Experiment: the memory-aware baseline's own error against the means of repeats, by family and backpressure.

    python benchmarks/hpm_baseline_errors.py [CONFIG ...]     # default: default,large as shipped

Reads the committed calibration runs (``sw/hpm/shipped/verilator/calibration-runs.jsonl.xz``; no
history, no RTL), groups each program's runs on one configuration and memory system (its repeats),
prices the program with :func:`~braze.sw.hpm.features.memory_aware_cycles` as the code now stands, and
prints per family and backpressure level the mean signed error and the worst absolute error (percent
of the mean measured cycles), then the mean absolute error and the worst over all.  Configurations are
the runs' presets by name (``tiny``, ``default``, ``large``) as they are now: runs of a preset before
it took the overlap options are another configuration and left out.  Feature version 12's terms came
from here (hpm9j): default and large as shipped, version 11 2.63% mean and 14.9% worst, version 12
2.17% and 12.6% (about 70 s on one core).
"""

from __future__ import annotations

import collections
import json
import lzma
import statistics
import sys
from pathlib import Path

from braze.isa import Config, Opcode
from braze.isa.encoding import decode_program
from braze.sw.hpm import features

RUNS = Path(features.__file__).parent / "shipped" / "verilator" / "calibration-runs.jsonl.xz"
STALLS = (0.0, 0.1, 0.25, 0.4)


def measurements(config_names: list[str]) -> list[tuple[str, Config, list, float, int, float]]:
    """(family, config, instructions, stall, read latency, mean measured cycles) per group of repeats."""
    wanted = {name: Config.preset(name).to_dict() for name in config_names}
    configs, programs = {}, {}
    groups: dict[tuple, list[dict]] = collections.defaultdict(list)
    for line in lzma.decompress(RUNS.read_bytes()).decode().splitlines():
        entry = json.loads(line)
        if entry.get("kind") == "config":
            configs[entry["id"]] = entry["config"]
        elif entry.get("kind") == "program":
            programs[entry["id"]] = bytes.fromhex(entry["words"])
        elif entry.get("kind") == "run" and wanted.get(entry["config_name"]) == configs[entry["config"]]:
            groups[(entry["program"], entry["config"], entry["read_latency"], entry["stall"])].append(entry)
    return [(runs[0]["family"], Config.from_dict(configs[config]), decode_program(programs[program]), stall,
             latency, statistics.mean(run["counters"]["cycles"] for run in runs))
            for (program, config, latency, stall), runs in groups.items()]


def baseline(instructions: list, config: Config, latency: int, stall: float) -> int:
    taken: frozenset[int] = frozenset()
    if any(insn.opcode is Opcode.BRANCH for insn in instructions):
        instructions, taken = features._dispatched_stream(instructions)
    memory = features.MemorySystem(latency, stall)
    return features.memory_aware_cycles(instructions, config, memory, taken=taken)


def main() -> None:
    names = sys.argv[1:] or ["default", "large"]
    errors: dict[tuple[str, float], list[float]] = collections.defaultdict(list)
    for family, config, instructions, stall, latency, measured in measurements(names):
        priced = baseline(instructions, config, latency, stall)
        errors[(family, stall)].append(100.0 * (priced - measured) / measured)
    print(f"feature version {features.FEATURE_VERSION}, {', '.join(names)}: baseline error against the means "
          "of repeats, mean signed / worst |error| (%)")
    print(f"{'family':30}" + "".join(f"{stall:>14}" for stall in STALLS))
    for family in sorted({family for family, _ in errors}):
        cells = [errors.get((family, stall), []) for stall in STALLS]
        print(f"{family:30}" + "".join(f"{statistics.mean(c):7.2f}/{max(map(abs, c)):5.1f}" if c
                                       else f"{'':>14}" for c in cells))
    every = [abs(value) for values in errors.values() for value in values]
    print(f"{len(every)} measurements: mean |error| {statistics.mean(every):.2f}%, worst {max(every):.1f}%")


if __name__ == "__main__":
    main()
