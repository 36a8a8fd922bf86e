"""Experiment: a memory-aware schedule as the learned model's baseline (issue 9's worst-case error).

    python benchmarks/hpm_memory_baseline.py          # reads the performance history

The learned model corrects the ISA timing model, which assumes that external memory never stalls
and that DMA instructions follow each other without a gap.  This script re-schedules each
calibration kernel with DMA durations that add a fixed hand-off (``HANDOFF`` cycles per LOAD/STORE,
about what ``load_busy`` shows on the RTL) and stretch every beat and row request by
``1 / (1 - stall)``, then prints leave-one-family-out errors three ways: the current features, the
current features plus this schedule, and this schedule as the baseline the model learns the residual
of.  Only rows whose kernels it can regenerate (``calibration_kernels(count=200, seed=0)`` of tiny,
default and large, matched by signature) take part.  Not part of the product yet: adopting it means a
new feature version and re-featured history rows.
"""

from __future__ import annotations

import collections
import dataclasses
import math

import numpy as np

from braze.isa import Config, Opcode
from braze.isa.timing import Scheduler, axi_beats, timing_key
from braze.sw.hpm.calibrate import calibration_kernels
from braze.sw.hpm.evaluate import format_scores, holdout_by_family
from braze.sw.hpm.features import kernel_signature
from braze.sw.hpm.store import HistoryStore, signature_hash

#: Cycles between one DMA instruction and the next that the timing model does not count.
HANDOFF = 6


def memory_aware_cycles(kernel, stall: float) -> int:
    """The kernel's cycles on the timing model with stalling, hand-off-paying DMA instructions."""
    config = kernel.config
    scheduler = Scheduler(config)
    stretch = 1.0 / (1.0 - stall)
    for insn in kernel.program():
        unit, cycles, pops, pushes, busy, barrier = timing_key(insn, config)
        is_dma = insn.opcode in (Opcode.LOAD, Opcode.STORE, Opcode.COUNTERS)
        if is_dma and not (insn.opcode is Opcode.LOAD and insn.zero):
            requests = axi_beats(insn, config) + insn.args.get("rows", 1)
            cycles = int(round(cycles + HANDOFF + (stretch - 1.0) * requests))
        scheduler.add_keyed(insn, (unit, cycles, pops, pushes, busy, barrier))
    return max(1, scheduler.cycles)


def main() -> None:
    by_key = collections.defaultdict(list)
    for record in HistoryStore().records():
        by_key[(record.signature_hash, record.config_name)].append(record)
    with_schedule, as_baseline, current = [], [], []
    errors = collections.defaultdict(list)
    for name in ("tiny", "default", "large"):
        for kernel in calibration_kernels(Config.preset(name), count=200, seed=0):
            for record in by_key.get((signature_hash(kernel_signature(kernel)), name), []):
                cycles = memory_aware_cycles(kernel, record.stall)
                errors[record.family].append(abs(100.0 * (cycles - record.cycles) / record.cycles))
                features = dict(record.features, mem_cycles=cycles,
                                log_mem_over_analytic=math.log(cycles / record.features["analytic_cycles"]))
                current.append(record)
                with_schedule.append(dataclasses.replace(record, features=features))
                baseline = dict(features, timing_cycles=features["analytic_cycles"], analytic_cycles=cycles,
                                log_analytic_cycles=math.log(cycles))
                as_baseline.append(dataclasses.replace(record, features=baseline))
    print(f"{len(current)} history rows whose kernels were regenerated")
    print("the memory-aware schedule alone: MAPE and worst error by family")
    for family, values in sorted(errors.items()):
        print(f"  {family:28} {np.mean(values):6.2f}% {np.max(values):6.1f}%")
    for label, rows in (("current features", current), ("current features + the schedule", with_schedule),
                        ("the schedule as the baseline ('analytic' columns are the schedule)", as_baseline)):
        print(f"\n== {label} ==")
        print(format_scores(holdout_by_family(rows)))


if __name__ == "__main__":
    main()
