"""Experiment: what back-to-back LOADs and STOREs cost on the RTL, beside the HPM's baseline (issue 9).

    python benchmarks/hpm_dma_micro.py default       # or tiny, large (builds the Verilator model once)

Runs micro-programs of 100-300 identical DMA instructions (no compute) on the Verilator device
without backpressure and prints, per instruction, the measured ``cycles``, ``load_busy`` and
``store_busy`` beside the memory-aware baseline (:func:`braze.sw.hpm.features.memory_aware_cycles`).
This is where feature version 8 came from: ``cycles - store_busy`` is one cycle per STORE (+28 for
the program) on default and tiny, ``cycles - load_busy`` one per LOAD on tiny (``load_overlap`` = 1)
and a constant 30 with overlapped LOADs (default) -- the engines that run one instruction at a time
take the next one a cycle after the last one's ``done`` (``DMA_RESTART_CYCLES``); on tiny a LOAD of
one or two rows measures ``load_busy`` = 16 + beats, of three to eight 18 + beats (``SHORT_LOAD_SAVING``).
Measured (per instruction, cycles): default STORE 4x8 B 17.09 (store_busy 16.00), tiny LOAD 4x3 B
24.06 (load_busy 22.99), tiny LOAD 1x3 B 18.32 (17.25).
"""

from __future__ import annotations

import sys

from braze.isa import Config, Instruction, Memory, Opcode
from braze.sim.device import open_device
from braze.sw.hpm.features import MemorySystem, memory_aware_cycles


def _load(config: Config, index: int, rows: int, length: int, stride: int) -> Instruction:
    spad_rows = config.spad_bytes // config.cols
    return Instruction.make(Opcode.LOAD, mem=Memory.SPAD, addr=(index * rows) % (spad_rows // 2), rows=rows,
                            len=min(length, config.cols), dram=1000 + index * 7, stride=stride)


def _store(config: Config, index: int, rows: int) -> Instruction:
    spad_rows = config.spad_bytes // config.cols
    return Instruction.make(Opcode.STORE, mem=Memory.SPAD, addr=(index * rows) % (spad_rows // 2), rows=rows,
                            len=min(8, config.cols), dram=100_000 + index * 16, stride=1600)


def programs(config: Config) -> dict[str, list[Instruction]]:
    """The micro-programs, by name: ``load{rows}x{bytes}``, ``store{rows}x8``."""
    cases = {f"load{rows}x3": [_load(config, i, rows, 3, 144) for i in range(300)]
             for rows in (1, 2, 4, 8, 16)}
    cases["load24x8"] = [_load(config, i, 24, 8, 16) for i in range(100)]
    for rows in (1, 4):
        cases[f"store{rows}x8"] = [_store(config, i, rows) for i in range(300)]
    return cases


def main() -> None:
    config = Config.parse(sys.argv[1] if len(sys.argv) > 1 else "default")
    base = config.dram_bytes // 2           # the program, clear of every operand byte
    print(f"{'program':12} {'cycles/insn':>11} {'load_busy':>10} {'store_busy':>10} {'baseline':>9}")
    with open_device("verilator", config) as device:
        for name, program in programs(config).items():
            counters = device.run([*program, Instruction.make(Opcode.HALT)], base=base).counters
            count = len(program)
            baseline = memory_aware_cycles(program, config, MemorySystem(config.mem_latency, 0.0))
            print(f"{name:12} {counters['cycles'] / count:11.2f} {counters['load_busy'] / count:10.2f} "
                  f"{counters['store_busy'] / count:10.2f} {baseline / count:9.2f}")


if __name__ == "__main__":
    main()
