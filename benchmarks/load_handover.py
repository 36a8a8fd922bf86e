"""Experiment: what back-to-back overlapped LOADs cost on the RTL, beside the timing model (issue 12).

    python benchmarks/load_handover.py default     # or large, tiny:load_overlap=2 (a Verilator build each)

Runs programs of N and 2N identical LOADs (no compute; some with SCALARs between them, which add only
instruction words to fetch) on the Verilator device and prints the cycles each LOAD adds (the
difference of the two runs over N) beside the timing model's with a hand-over of 2 and 4 cycles
before every LOAD (``Scheduler(load_handover=...)``) and as it prices them
(:func:`~braze.isa.timing.load_handover_cycles`).  Measured, the same on default (16-byte bus) and
large (32-byte bus): one-beat rows, 8 and 16 to a LOAD, 11.0 and 19.0 cycles (beats + 3: the engine's
hand-over and the LOAD's instruction word on the read port); on tiny with ``load_overlap`` = 2 (8-byte
bus, a word is two beats) 16 rows 20.0 (beats + 4); zero LOADs of 4 rows 6.0 (rows + 2) on all three.
Not priced: LOADs of 1-4 rows take longer (default and large: 6.75, 7.0, 8.5 cycles; the RTL holds a
LOAD in flight longer than ``mem_latency + beats + 1``, and four are in flight at most), and words
fetched between the LOADs cost 0.7-2 cycles each, not in proportion to their beats (16 rows and 3 or 7
SCALARs: 21.0 and 28.0 on default, 22.0 and 30.0 on large, 26.0 and 32.0 on tiny: the fetch unit's
bursts wait behind the LOADs' rows on the in-order read port).
"""

from __future__ import annotations

import sys

from braze.isa import Config, Instruction, Memory, Opcode
from braze.isa.timing import Scheduler, axi_beats
from braze.sim.device import open_device

COPIES = 48


def _load(config: Config, index: int, rows: int, zero: bool) -> Instruction:
    spad_rows = config.spad_bytes // config.cols
    addr = (index * rows) % (spad_rows // 2)
    if zero:
        return Instruction.make(Opcode.LOAD, mem=Memory.SPAD, zero=True, addr=addr, rows=rows,
                                len=config.cols)
    # One bus word a row: bus-aligned rows of at most a bus word of bytes.
    stride = 4 * config.dma_bus_bytes
    return Instruction.make(Opcode.LOAD, mem=Memory.SPAD, addr=addr, rows=rows,
                            len=min(config.cols, config.dma_bus_bytes),
                            dram=4096 + (index % 64) * rows * stride, stride=stride)


def programs(config: Config) -> dict[str, tuple[int, int, bool]]:
    """The cases, by name: (rows per LOAD, SCALARs after each, zero)."""
    cases = {f"{rows} rows": (rows, 0, False) for rows in (1, 2, 4, 8, 16)}
    cases.update({"4 rows +3 words": (4, 3, False), "16 rows +3 words": (16, 3, False),
                  "16 rows +7 words": (16, 7, False), "1 zero row": (1, 0, True),
                  "4 zero rows": (4, 0, True)})
    return cases


def _program(config: Config, copies: int, rows: int, fillers: int, zero: bool) -> list[Instruction]:
    program = []
    for index in range(copies):
        program.append(_load(config, index, rows, zero))
        program += [Instruction.make(Opcode.SCALAR, dst=1)] * fillers
    return [*program, Instruction.make(Opcode.HALT)]


def _modelled(config: Config, program: list[Instruction], handover: int | None) -> int:
    scheduler = Scheduler(config, keep_entries=False, load_handover=handover)
    for insn in program:
        scheduler.add(insn)
    return scheduler.cycles


def main() -> None:
    config = Config.parse(sys.argv[1] if len(sys.argv) > 1 else "default")
    base = config.dram_bytes // 2           # the program, clear of every operand byte
    print(f"{config.name}: {config.dma_bus_bytes}-byte bus, load_overlap={config.load_overlap}; "
          "cycles per LOAD")
    print(f"{'case':17} {'beats':>5} {'RTL':>6} {'hand-over 2':>11} {'4':>6} {'priced':>6}")
    with open_device("verilator", config) as device:
        for name, case in programs(config).items():
            short, long = (_program(config, copies, *case) for copies in (COPIES, 2 * COPIES))
            measured = [device.run(program, base=base).counters["cycles"] for program in (short, long)]
            modelled = [(_modelled(config, long, h) - _modelled(config, short, h)) / COPIES
                        for h in (2, 4, None)]
            widths = (11, 6, 6)
            print(f"{name:17} {axi_beats(short[0], config):5d} {(measured[1] - measured[0]) / COPIES:6.2f} "
                  + " ".join(f"{value:{width}.2f}" for value, width in zip(modelled, widths, strict=True)))


if __name__ == "__main__":
    main()
