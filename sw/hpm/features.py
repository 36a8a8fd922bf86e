"""Features of a kernel for the hardware performance model: what its instruction stream asks of the machine.

:func:`kernel_features` turns a :class:`~braze.sw.compiler.Kernel`, the configuration and the
memory system it runs on into a flat ``{name: float}`` dict:

* per unit: instruction counts, rows moved, bytes, AXI beats, bursts (rows are bursts: a LOAD of
  ``rows`` rows issues that many reads), mean burst length in beats, the share of strided rows;
* compute: MACs, MATMUL count and mean m/n/k and K-chunks, fill/drain per MATMUL, epilogue and
  vector rows;
* dependencies: tokens pushed and popped per unit, barriers;
* the configuration (array size, banks, bus width) and the memory system (read latency,
  backpressure probability), so that one model serves every preset and memory;
* the analytic timing model's cycles and per-unit busy cycles, and derived intensities: MACs per
  external byte, beats per cycle of the analytic prediction;
* the **baseline** the learned model corrects (it learns the residual): the same timing model
  rescheduled with what it leaves out of external memory -- each DMA instruction's hand-off and
  every beat and row request stretched by the memory's backpressure (:func:`memory_aware_cycles`).
  Against the plain timing model the residual is up to +80% on strided convolutions under heavy
  backpressure, and trees extrapolate such a residual badly to families they never saw; against
  this baseline it is a few percent (``benchmarks/hpm_memory_baseline.py`` measured the choice).

Every feature is computed from the program alone, never from a run, so it is available before
the kernel runs (the cost model prices candidates with it), and it can be recomputed from the
program the history stores with every run (:func:`program_features`) when the features change.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from braze.isa import INSN_BYTES, Config, Instruction, Memory, Opcode, Unit
from braze.isa.encoding import UNARY_VECTOR_OPS
from braze.isa.timing import (
    Scheduler,
    axi_beats,
    element_bytes,
    fetch_redirect_cycles,
    load_handover_cycles,
    timing_key,
)

from ..compiler.kernels import Kernel

__all__ = ["MemorySystem", "kernel_features", "program_features", "feature_cache_dir", "forget_features",
           "kernel_signature", "kernel_family", "memory_aware_cycles", "FEATURE_VERSION",
           "DMA_HANDOFF_CYCLES", "ZERO_LOAD_HANDOFF_CYCLES", "VECTOR_HANDOFF_CYCLES", "STORE_BASE_CYCLES",
           "STORE_STALL_SHARE", "OVERLAPPED_LOAD_HANDOVER_EXCESS", "OVERLAPPED_LOAD_STALL_HANDSHAKES",
           "TOKEN_ROW_LOAD_CYCLES", "DMA_RESTART_CYCLES", "SHORT_LOAD_ROWS",
           "SHORT_LOAD_SAVING", "ALONE_LOAD_STALL_HANDSHAKES", "STORE_STALL_HANDSHAKES",
           "SNAPSHOT_START_CYCLES", "snapshot_start_cycles", "STORE_AHEAD_STALL_PER_BEAT",
           "STORE_AHEAD_STALL_PER_ROW", "OVERLAP_OPTIONS"]

#: Bump when the features change meaning: models record it and refuse features of another version;
#: ``braze hpm refeature`` recomputes the history's features from the programs it stores.  The
#: analytic features come from :mod:`braze.isa.timing`, so a change of its prices is a change of
#: meaning too (version 11: an overlapped LOAD's hand-over, ``load_handover_cycles``; version 12: the
#: baseline's overlapped LOADs from that hand-over, exposed and token-waiting LOADs priced).
FEATURE_VERSION = 12
#: Cycles between one DMA instruction and the next that the timing model does not count (the
#: RTL's DMA engine finishes one instruction's last response before it takes the next), by opcode.
#: A least-squares fit of the measured ``load_busy`` on the calibration history (no backpressure)
#: gives the read latency plus about 9 per LOAD on every preset, plus 0.8-1.1 per beat.
DMA_HANDOFF_CYCLES = {Opcode.LOAD: 9, Opcode.COUNTERS: 6}
#: A zero LOAD (a convolution's padding rows, written on chip without a memory read) takes one cycle
#: per row, as the timing model says, and then hands off to the next instruction: on the tiny preset at
#: no backpressure, ``load_busy`` minus the modelled LOADs is 3.9 cycles per zero LOAD (median over the
#: 41 calibration kernels with any; 10%..90%: 3.2..4.7), and without it the baseline under-priced
#: LOAD-bound convolutions with padding by up to 14.6% (feature version 7; see VECTOR_HANDOFF_CYCLES
#: for what the two took off the held-out errors).
ZERO_LOAD_HANDOFF_CYCLES = 4
#: A VECTOR holds the compute unit one cycle beyond its timing-model cycles before the next compute
#: instruction starts: at no backpressure the measured ``vector_busy`` is exactly the timing model's,
#: yet pools and the global average pool (chains of short VECTORs) ran 6-7% (median) longer than the
#: baseline on default and large, about one cycle per VECTOR (global_avgpool: 0.75..1.3).
VECTOR_HANDOFF_CYCLES = 1
#: A STORE occupies the store unit for this many cycles plus one per row (each row is its own
#: write request) plus one per beat, whatever the read latency.  A least-squares fit of the
#: measured ``store_busy`` (no backpressure) gives 1.1 per row and 1.1 per beat on tiny and large;
#: the median of ``(store_busy - rows - beats) / stores`` is 8 on tiny and large, 8.5 on default.
#: The timing model's ``latency + beats + 1`` under-prices a store of many short rows by up to
#: half, which put single-buffered convolutions 30% off.
STORE_BASE_CYCLES = 8
#: A DMA engine that runs one instruction at a time -- the store engine, and the load engine with
#: ``load_overlap`` = 1 -- takes the next instruction the cycle after the previous one's ``done``, a
#: cycle that ``store_busy``/``load_busy`` do not count (and the fits above, made on those counters,
#: left out).  On the Verilator device, 300 back-to-back STOREs measure ``cycles - store_busy`` = one
#: per STORE (+28 for the whole program) on default and tiny, and 300 LOADs on tiny one per LOAD (+21);
#: overlapped LOADs keep ``load_busy`` up across the hand-over (``cycles - load_busy`` = 30 whatever
#: their count).  Without it the baseline under-priced a STORE-bound convolution (K = 24 on default,
#: 800 four-row STOREs) by 5.0% and a LOAD-bound one on tiny (1,465 LOADs) by 4.1%, deterministically
#: (no backpressure; feature version 8).
DMA_RESTART_CYCLES = 1
#: A LOAD run alone (``load_overlap`` = 1) of at most :data:`SHORT_LOAD_ROWS` rows takes
#: :data:`SHORT_LOAD_SAVING` cycles less than :data:`DMA_HANDOFF_CYCLES` gives: on tiny, 200
#: back-to-back LOADs measure ``load_busy`` = 16 + beats per LOAD of one or two rows and 18 + beats
#: of three to eight (scratchpad and accumulator rows alike), and the fit of 9 is the latter.
SHORT_LOAD_ROWS = 2
SHORT_LOAD_SAVING = 2
#: Under backpressure a LOAD run alone (``load_overlap`` = 1) waits on this many handshakes more than
#: its beats: nothing hides its first request and its latency behind an earlier LOAD's data.  A
#: least-squares fit of the growth of ``load_busy`` from no backpressure to 0.1, 0.25 and 0.4 on the
#: tiny calibration history gives 4.6 per LOAD (with 1.2 per beat; 5.6 with the beats' 1.0); 4 keeps
#: the pools' and small GEMMs' LOADs from being over-priced.  The baseline's mean error against the
#: means of repeats on tiny, over all levels, went from 4.9% (v7) to 2.7% with the two terms above.
ALONE_LOAD_STALL_HANDSHAKES = 4
#: Under backpressure a LOAD waits ``stall / (1 - stall)`` cycles per data beat, not per row request
#: too: the engine issues a LOAD's row requests ahead of its data, so a stalled request hides under
#: earlier rows' beats.  Fitting the growth of the measured ``load_busy`` from no backpressure to 0.1,
#: 0.25 and 0.4 over the calibration history gives 1.06 and 0.98 per beat and 0 per row on default and
#: large; counting rows too priced element-wise kernels and GEMMs at backpressure 0.4 up to 19% high
#: (median) and hid the growth in the learned model's residual (feature version 7).
#: A STORE waits on its write address, data and response handshakes, which overlap in part: its
#: measured ``store_busy`` grows by about this share of ``stall / (1 - stall)`` per beat and row
#: (feature version 7 fitted 0.65 alone: median ratio 0.58..0.71 over the families whose STOREs have
#: more than one row) ...
STORE_STALL_SHARE = 0.55
#: ... and, whatever its rows, on this many handshakes more (its write responses: the store engine
#: runs one STORE at a time, so nothing hides them).  Fitting the growth of ``store_busy`` over the
#: calibration history to a share per beat and row plus a term per STORE gives 0.63 and 2.5 on tiny,
#: 0.53 and 4.5 on default (0.59 and 3.2 over both), and halves the fit's median relative residual
#: (0.13..0.15 against 0.22..0.31 for the share alone, 0.65, of feature version 7).  It took the
#: STORE-bound K = 24 convolution on default at backpressure 0.4 from 6.0% to 0.5% under-priced by
#: the baseline (feature version 8).
STORE_STALL_HANDSHAKES = 3
#: With ``Config.store_ahead`` a STORE takes the timing model's ``STORE_AHEAD_LATENCY + beats``
#: exactly, and the store engine's restart (:data:`DMA_RESTART_CYCLES`) before the next: its write
#: addresses run ahead of its data, so its rows cost nothing of their own without backpressure (the
#: ``STORE_BASE_CYCLES`` + rows + beats of a STORE without it double-counted them: element-wise kernels
#: on default were priced up to 55% high).  Under backpressure it waits on
#: ``stall / (1 - stall)`` times this share of its beats, plus one per row
#: (:data:`STORE_AHEAD_STALL_PER_ROW`) and :data:`STORE_STALL_HANDSHAKES`: fitted on runs of 60-200
#: back-to-back STOREs on the Verilator device (default and large measure alike, 1..64 rows of 1 or 2
#: beats, backpressure 0.1, 0.25, 0.4: 0.42 per beat, 1.05 per row, 3.0 per STORE; within 5.7% of each
#: STORE's measured ``store_busy``, 2.0% on average; feature version 10).
STORE_AHEAD_STALL_PER_BEAT = 0.4
STORE_AHEAD_STALL_PER_ROW = 1.0
#: With overlapped LOADs (``load_overlap`` > 1), from one LOAD's last data to the next one's first
#: the baseline takes the timing model's :func:`~braze.isa.timing.load_handover_cycles` (the engine's
#: hand-over and the LOAD's own instruction word on the read port: 3 on default and large, measured on
#: back-to-back LOADs) plus this many: in kernels the words fetched *between* the LOADs wait behind
#: their rows on the in-order read port too (0.7-2 cycles a word, ``benchmarks/load_handover.py``),
#: which the timing model leaves out.  Against the means of repeats of the 5,136 calibration runs of
#: default and large as shipped, the baseline's mean error is 2.63% with this excess (1) and 3.03%
#: without it, and convolutions go from +2.0% / -0.3% (no backpressure / 0.4) to -1.0% / -4.0% without
#: it (hpm9j, feature version 12; version 11 had a constant 4 of its own for every LOAD).
OVERLAPPED_LOAD_HANDOVER_EXCESS = 1
#: Under backpressure an overlapped LOAD whose requests nothing hides (the LOADs before it done, or it
#: waited on a token) waits on this many handshakes more than its beats (``stall / (1 - stall)``
#: cycles each), as :data:`ALONE_LOAD_STALL_HANDSHAKES` for LOADs run alone: only where its own
#: duration, not the data chain behind the LOADs before it, ends it.  Fitted on the means of repeats
#: of default and large as shipped (pools of short LOADs, each waiting on the compute unit's token,
#: were -6.2% (avgpool2d) and -7.1% (maxpool2d) under-priced at 0.4 on average; 4 handshakes left
#: -4.3% / -4.9%, 6 leave -2.9% / -3.7%; the baseline's mean error over all families 2.63% -> 2.17%
#: with the term below; feature version 12).
OVERLAPPED_LOAD_STALL_HANDSHAKES = 6
#: An overlapped LOAD of one row that waits on the compute unit's token (``pop_next``: a pool's ring
#: of one-row slots, each refilled when the VECTOR that read it is done) takes this many cycles more
#: than :data:`DMA_HANDOFF_CYCLES` gives.  Measured on the Verilator device with prefix programs of the
#: worst kernel of feature version 11, an ``avgpool2d`` on large of 32 such LOADs and 48 VECTORs: the
#: whole kernel 385 cycles without backpressure where the baseline gave 346, the gap growing at the
#: LOADs that wait on a token (by 9-15 cycles every fourth LOAD); with the term, 389 (and 397, 406,
#: 417 against means of 396, 404, 412 at 0.1, 0.25, 0.4).  Applied to every one-row overlapped LOAD it
#: priced convolutions of many one-row LOADs up to 31% high, so it is kept to those that pop a token.
TOKEN_ROW_LOAD_CYCLES = 8
#: A kernel's cycles are what its final COUNTERS snapshot counts: from reset to the cycle the snapshot
#: freezes the counters, which is when the COUNTERS starts (``braze.hw.counters``), not when its write
#: of the snapshot ends; and they include the fetch of the program's first word, which the timing model
#: leaves out (its straight-line code is timed with fetch free).  On the Verilator device a program of
#: one COUNTERS measures ``cycles`` = 19 on tiny and 26 on default: :func:`~braze.isa.timing.
#: fetch_redirect_cycles` (the latency, the word's beats and the fetch unit's overhead) plus this
#: many; a LOAD, a STORE or a FENCE before it adds what the baseline prices it at, within a cycle or
#: two.  Pricing the snapshot's own write (the timing model's ``latency + beats``, 36 cycles on tiny,
#: stretched under backpressure) over-priced every kernel by a constant -- 25 cycles on tiny without
#: backpressure, 45 at 0.4 -- 11-21% of a 222-cycle global average pool and 17-24% of the ~90-cycle
#: element-wise kernels (feature version 9).
SNAPSHOT_START_CYCLES = 1
#: Configuration options that change how the units overlap, each a feature (0/1) of its own.
OVERLAP_OPTIONS = ("weight_preload", "epilogue_overlap", "matmul_overlap", "store_ahead")
_UNITS = ("load", "compute", "store")


@dataclasses.dataclass(frozen=True)
class MemorySystem:
    """The external memory a kernel runs against.

    Attributes
    ----------
    read_latency : int
        Cycles from a read request to its first data beat.
    stall : float
        Probability that the memory stalls each AXI handshake (backpressure), in [0, 1).
    """

    read_latency: int
    stall: float = 0.0

    def __post_init__(self):
        if not isinstance(self.read_latency, int) or self.read_latency < 1:
            raise ValueError(f"MemorySystem: read_latency={self.read_latency!r} must be a positive integer")
        if not 0.0 <= self.stall < 1.0:
            raise ValueError(f"MemorySystem: stall={self.stall!r} must be a probability in [0, 1)")

    @classmethod
    def nominal(cls, config: Config) -> MemorySystem:
        """The memory the timing model assumes: the configuration's latency, no backpressure."""
        return cls(config.mem_latency, 0.0)


def kernel_family(kernel: Kernel) -> str:
    """The family held-out evaluation splits by: the kernel kind and its fused epilogue stages."""
    stages = [stage for stage, present in (("bias", "bias" in kernel.param_rows),
                                           ("requant", "mult" in kernel.param_rows),
                                           ("residual", "residual" in kernel.operands),
                                           ("maxpool", kernel.tiling.get("pool", 1) > 1)) if present]
    return "+".join([kernel.name, *stages])


def kernel_signature(kernel: Kernel) -> dict[str, Any]:
    """What identifies a kernel: family, operand shapes and types, tiling (JSON-serialisable)."""
    return {
        "family": kernel_family(kernel),
        "name": kernel.name,
        "operands": {name: [list(op.shape), str(op.dtype)] for name, op in sorted(kernel.operands.items())
                     if op.role != "counters"},
        "param_rows": list(kernel.param_rows),
        "tiling": {key: value for key, value in sorted(kernel.tiling.items())},
        "instructions": len(kernel.instructions),
        # Rows recorded with other features cannot train this code's models: calibration reruns them.
        "feature_version": FEATURE_VERSION,
    }


def _local_accesses(insn: Instruction) -> dict[Memory, float]:
    """Row accesses per cycle an element-wise instruction makes to each local memory while it runs.

    A binary VECTOR with both sources in one memory reads two rows per output row, so it touches
    that memory (and its destination) every cycle at half the row rate.
    """
    args = insn.args
    if insn.opcode is Opcode.EPILOGUE:
        accesses = {Memory.ACC: 1.0}
        accesses[args["out"]] = accesses.get(args["out"], 0.0) + 1.0
        return accesses
    if insn.opcode is Opcode.VECTOR:
        binary = args["op"] not in UNARY_VECTOR_OPS and not args["use_imm"]
        if binary and args["src1_mem"] is args["src2_mem"]:
            rate, sources = 0.5, (args["src1_mem"],)
        else:
            rate, sources = 1.0, (args["src1_mem"], args["src2_mem"]) if binary else (args["src1_mem"],)
        accesses: dict[Memory, float] = {}
        for memory in (*sources, args["dst_mem"]):
            accesses[memory] = accesses.get(memory, 0.0) + rate
        return accesses
    return {}


def snapshot_start_cycles(config: Config, memory: MemorySystem) -> int:
    """Cycles from reset to the first instruction's dispatch, as a kernel's snapshot counts them: the
    program's first word fetched (its beats stretched by the memory's backpressure), plus
    :data:`SNAPSHOT_START_CYCLES` (measured: 19 cycles before a lone COUNTERS on tiny, 20.5 at 0.4)."""
    stretch = memory.stall / (1.0 - memory.stall)
    beats = -(-INSN_BYTES // config.dma_bus_bytes)
    return fetch_redirect_cycles(config) + SNAPSHOT_START_CYCLES + int(round(stretch * beats))


def _stepped_write_pace(insn: Instruction) -> float:
    """Rows per cycle an element-wise instruction writes when that is slower than a DMA row per cycle,
    else 0: a binary VECTOR with both sources in one memory writes a row every other cycle.

    A LOAD writing rows into the memory beside it falls into step with it: the RTL refuses a DMA row
    write in the cycle the compute port writes the same bank, the blocked row goes the next cycle
    (the VECTOR writes every other cycle), and the LOAD's next row then meets the VECTOR's next
    row's bank again -- so, whatever the banks, the LOAD's rows go at the VECTOR's pace.  Measured on
    default (an ``add`` of two 256x64 tensors, 1,024-row blocks): the two LOADs beside the first
    VECTOR take 3,072 cycles for 2,048 rows, 2,052 of them beside it at half a row per cycle;
    random bank conflicts (a quarter of the VECTOR's accesses) gave about 2,600 (feature version 9).
    """
    if insn.opcode is not Opcode.VECTOR:
        return 0.0
    args = insn.args
    binary = args["op"] not in UNARY_VECTOR_OPS and not args["use_imm"]
    return 0.5 if binary and args["src1_mem"] is args["src2_mem"] else 0.0


def memory_aware_cycles(instructions: Sequence[Instruction], config: Config, memory: MemorySystem, *,
                        taken: frozenset[int] = frozenset()) -> int:
    """Cycles of a program on the timing model with a memory that stalls and DMA that hands off.

    Each LOAD and COUNTERS that touches external memory takes its :data:`DMA_HANDOFF_CYCLES` more,
    a zero LOAD :data:`ZERO_LOAD_HANDOFF_CYCLES` more, a VECTOR :data:`VECTOR_HANDOFF_CYCLES` more,
    each STORE :data:`STORE_BASE_CYCLES` plus one per row and per beat, and each STORE and each LOAD
    run alone (``load_overlap`` = 1) the :data:`DMA_RESTART_CYCLES` before the next (such a LOAD of
    few rows :data:`SHORT_LOAD_SAVING` less); every LOAD that touches the memory plus
    ``stall / (1 - stall)`` cycles (the expected wait of a handshake stalled with probability
    ``stall``) per AXI beat, one run alone for :data:`ALONE_LOAD_STALL_HANDSHAKES` more, each
    COUNTERS that per beat and for its request, each STORE :data:`STORE_STALL_SHARE` of it per beat
    and row and for :data:`STORE_STALL_HANDSHAKES` more; overlapped LOADs hand over their data in the
    timing model's :func:`~braze.isa.timing.load_handover_cycles` plus
    :data:`OVERLAPPED_LOAD_HANDOVER_EXCESS`, wait on :data:`OVERLAPPED_LOAD_STALL_HANDSHAKES` where
    nothing hides their requests, and one of one row waiting on a token takes
    :data:`TOKEN_ROW_LOAD_CYCLES` more; the schedule keeps the units' overlap and the
    dependency tokens, so a stretched load only costs what it delays.  With overlapped LOADs
    (``load_overlap`` > 1) the stretch also lengthens each LOAD's row requests and data beats where
    they queue behind the previous LOAD's on the one AXI port (``Scheduler(load_stretch=...)``):
    stretching only each LOAD's own duration left the back-to-back LOADs of a convolution at
    backpressure 0.4 up to 29% under-priced (held out by family, the worst learned error of
    ``conv2d`` went from 15.1% to 9.6%, of all families from 15.1% to 12.9%; feature version 6).

    Then bank conflicts: the RTL's banked memories refuse a DMA row write (or read) that falls on
    the bank an element-wise instruction uses in that cycle.  A second pass stretches each
    LOAD/STORE by the conflicts it expects beside the EPILOGUEs and VECTORs the first pass
    overlapped it with on its memory: overlap cycles x its rows per cycle x their accesses per
    cycle / banks.  Held out by family on the calibration history, this cut the worst error of
    the ``add`` family from 23% to 9% (of all families from 23% to 11%); counting MATMUL's
    operand reads the same way made GEMMs and convolutions worse (13% worst), so they are left out.
    Each bank has a read and a write port and the DMA waits only for the compute port of its own
    direction, but counting only those accesses left ``add`` on tiny 15% under-priced (the rows of
    the two streams fall on banks in step, not at random), so both directions are counted.

    Feature version 12 takes the overlapped LOADs' hand-over from the timing model
    (:func:`~braze.isa.timing.load_handover_cycles`, plus :data:`OVERLAPPED_LOAD_HANDOVER_EXCESS`: the
    same 4 cycles on default and large as version 11's constant of its own), stalls an overlapped LOAD
    that nothing hides on :data:`OVERLAPPED_LOAD_STALL_HANDSHAKES`, and prices a one-row LOAD waiting on
    a token :data:`TOKEN_ROW_LOAD_CYCLES` more (the worst held-out kernel of version 11, an ``avgpool2d``
    on large, 10-15% under-priced at every backpressure level).  Against the means of repeats of the
    calibration runs of default and large as shipped (``benchmarks/hpm_baseline_errors.py``): mean error
    2.63% -> 2.17%, worst 14.9% -> 12.6%; the pools at 0.4 -6.2% / -7.1% -> -3.1% / -3.9% (avgpool2d /
    maxpool2d); the runs of default and large before the overlap options 2.53% -> 2.14%, worst 13.0% ->
    11.6%; tiny (LOADs one at a time) unchanged.

    Feature version 10 prices a STORE with ``Config.store_ahead`` as the RTL runs it
    (:data:`STORE_AHEAD_STALL_PER_BEAT`): on the presets with the overlap options (default and large),
    the baseline's error against the means of repeats went from 4.64% to 2.46% (default) and from
    5.69% to 2.75% (large); held out by family on 11,484 calibration runs (the 6,348 before the options
    and 5,136 of default and large with them), learned MAPE 1.62%, worst mean of repeats 9.8%, worst
    run without backpressure 9.3%.

    Feature version 9 prices a program that ends in a snapshot (every kernel's does) as its counters
    count it: from reset, the fetch of the first word included, to the start of the COUNTERS
    (:data:`SNAPSHOT_START_CYCLES`), rather than to the end of the snapshot's write, which over-priced
    every kernel by a constant (25 cycles on tiny without backpressure, 45 at 0.4, since that write
    was stretched too); and a LOAD beside a VECTOR that writes its memory every other cycle goes at
    the VECTOR's pace (:func:`_stepped_write_pace`).  Held out by family on the committed calibration
    runs, against version 8: learned MAPE 1.52% -> 1.50%, worst mean of repeats 9.5% -> 8.4%, worst
    run without backpressure 9.5% -> 6.7%, worst single run 15.1% -> 11.9%, worst family MAPE 2.00%
    -> 1.87% (the snapshot alone: 1.51%, 8.9%, 8.9%, 12.0%, 1.91%).

    Feature version 8 added the restart cycle of the DMA engines that run one instruction at a time
    (:data:`DMA_RESTART_CYCLES`: every STORE, and every LOAD with ``load_overlap`` = 1), the shorter
    LOADs of one or two rows and the backpressure on a LOAD run alone (:data:`SHORT_LOAD_SAVING`,
    :data:`ALONE_LOAD_STALL_HANDSHAKES`) and on each STORE's responses (:data:`STORE_STALL_HANDSHAKES`).
    Held out by family on the committed calibration runs (6,348: the 30 worst measurements made once
    repeated to three runs), against version 8 without the STORE term: learned MAPE 1.54% -> 1.52%,
    worst mean of repeats 10.3% -> 9.5%, worst run without backpressure 8.6% -> 9.5%, worst single run
    13.9% -> 15.1%; on the 6,288 runs of version 7, without the STORE term, against version 7: MAPE
    1.59% -> 1.48%, worst mean of repeats 10.8% -> 10.2%, without backpressure 9.4% -> 8.6%.

    Feature version 7 added the zero-LOAD and VECTOR hand-offs, the LOADs' backpressure on their beats
    only, :data:`STORE_STALL_SHARE` and the overlapped LOADs' hand-over.  Held out by family on the
    committed calibration runs (``braze hpm import && braze hpm evaluate``), against version 6: learned
    MAPE 1.83% -> 1.59%, worst single run 15.3% -> 13.6%, worst mean of repeats 12.3% -> 10.8%, worst
    run without backpressure 11.0% -> 9.4%, worst family MAPE 4.17% -> 1.97%; the baseline's own error
    against the means of repeats 4.44% -> 2.77%, the pools' median at no backpressure -6..-8% -> 0%.
    """
    if memory.read_latency != config.mem_latency:
        config = dataclasses.replace(config, mem_latency=memory.read_latency)
    program = [*instructions, Instruction.make(Opcode.HALT)]
    return _memory_aware_cycles(program, [timing_key(insn, config) for insn in program],
                                [axi_beats(insn, config) for insn in program], config, memory, taken)


def _memory_aware_cycles(program: Sequence[Instruction], plain_keys: Sequence[tuple], beats: Sequence[int],
                         config: Config, memory: MemorySystem, taken: frozenset[int] = frozenset()) -> int:
    """:func:`memory_aware_cycles` of ``program`` (with its HALT) given each instruction's
    :func:`~braze.isa.timing.timing_key` on ``config`` (whose latency is the memory's) and its AXI beats,
    which :func:`program_features` has computed already; ``taken``: the positions of taken BRANCHes in
    a dispatched stream (:func:`_dispatched_stream`), after which the fetch unit restarts."""
    stretch = 1.0 / (1.0 - memory.stall) - 1.0
    # LOADs one at a time take the next one a cycle after the last is done (overlapped ones do not).
    restart = DMA_RESTART_CYCLES if config.load_overlap == 1 else 0
    # A program ending in a snapshot (every kernel's does) is measured up to the snapshot's start, from
    # reset (SNAPSHOT_START_CYCLES): the snapshot's write and the HALT cost nothing it counts.
    snapshot = len(program) >= 2 and program[-2].opcode is Opcode.COUNTERS
    before = snapshot_start_cycles(config, memory) if snapshot else 0
    keys = []
    for index, (insn, key, insn_beats) in enumerate(zip(program, plain_keys, beats, strict=True)):
        op = insn.opcode
        if snapshot and index >= len(program) - 2:
            keys.append((key[0], 0, *key[2:]))
            continue
        if op is Opcode.STORE and config.store_ahead:
            cycles = int(round(key[1] + DMA_RESTART_CYCLES
                               + stretch * (STORE_AHEAD_STALL_PER_BEAT * insn_beats
                                            + STORE_AHEAD_STALL_PER_ROW * insn.args["rows"]
                                            + STORE_STALL_HANDSHAKES)))
            key = (key[0], cycles, *key[2:])
        elif op is Opcode.STORE:
            rows = insn.args["rows"]
            cycles = int(round(STORE_BASE_CYCLES + DMA_RESTART_CYCLES + rows + insn_beats
                               + stretch * (STORE_STALL_SHARE * (insn_beats + rows)
                                            + STORE_STALL_HANDSHAKES)))
            key = (key[0], cycles, *key[2:])
        elif op is Opcode.LOAD and insn.zero:
            key = (key[0], key[1] + ZERO_LOAD_HANDOFF_CYCLES, *key[2:])     # no memory: no stretch
        elif op is Opcode.VECTOR:
            key = (key[0], key[1] + VECTOR_HANDOFF_CYCLES, *key[2:])
        elif op in DMA_HANDOFF_CYCLES:
            # A LOAD's row requests go out ahead of its data: only its beats wait (STORE_STALL_SHARE).
            requests = insn_beats if op is Opcode.LOAD else insn_beats + 1
            cycles = key[1] + DMA_HANDOFF_CYCLES[op]
            if op is Opcode.LOAD and restart:
                requests += ALONE_LOAD_STALL_HANDSHAKES
                cycles += restart - (SHORT_LOAD_SAVING if insn.rows <= SHORT_LOAD_ROWS else 0)
            elif op is Opcode.LOAD:
                # Overlapped: these lengthen only the LOAD's own duration, which ends it where the data
                # chain of the LOADs before it does not (Scheduler._overlapped_load takes the later).
                requests += OVERLAPPED_LOAD_STALL_HANDSHAKES
                if insn.rows == 1 and "pop_next" in insn.deps:
                    cycles += TOKEN_ROW_LOAD_CYCLES
            key = (key[0], int(round(cycles + stretch * requests)), *key[2:])
        keys.append(key)
    handover = load_handover_cycles(config) + OVERLAPPED_LOAD_HANDOVER_EXCESS
    scheduler = Scheduler(config, load_stretch=stretch, load_handover=handover)
    entries = []
    for index, (insn, key) in enumerate(zip(program, keys, strict=True)):
        entries.append(scheduler.add_keyed(insn, key))
        if index in taken:
            scheduler.redirect()

    banks = {Memory.SPAD: config.spad_banks, Memory.ACC: config.acc_banks}
    # Per local memory, the element-wise instructions touching it as (start, end, accesses per
    # cycle).  They run on the one compute unit in program order, so their intervals are disjoint
    # and sorted, and a DMA instruction's overlaps are found by bisection, not by a scan of all.
    elementwise: dict[Memory, list[tuple[int, int, float, float]]] = {Memory.SPAD: [], Memory.ACC: []}
    for entry in entries:
        if entry.insn.opcode in (Opcode.EPILOGUE, Opcode.VECTOR):
            pace = _stepped_write_pace(entry.insn)
            for local, rate in _local_accesses(entry.insn).items():
                elementwise[local].append((entry.start, entry.end, rate,
                                           pace if local is entry.insn.args.get("dst_mem") else 0.0))
    if not elementwise[Memory.SPAD] and not elementwise[Memory.ACC]:
        return max(1, before + scheduler.cycles)
    ends = {local: [end for _, end, _, _ in intervals] for local, intervals in elementwise.items()}
    scheduler = Scheduler(config, keep_entries=False, load_stretch=stretch,      # only its cycles are needed
                          load_handover=handover)
    for index, (entry, key) in enumerate(zip(entries, keys, strict=True)):
        insn = entry.insn
        if insn.opcode in (Opcode.LOAD, Opcode.STORE) and not (insn.opcode is Opcode.LOAD and insn.zero):
            local = insn.args["mem"]
            intervals = elementwise[local]
            rows_per_cycle = insn.args["rows"] / max(1, entry.end - entry.start)
            extra = 0.0
            for start, end, rate, pace in intervals[bisect.bisect_right(ends[local], entry.start):]:
                if start >= entry.end:
                    break
                overlap = min(entry.end, end) - max(entry.start, start)
                conflicts = overlap * rate * rows_per_cycle / banks[local]
                if insn.opcode is Opcode.LOAD and 0.0 < pace < rows_per_cycle:
                    # In step the LOAD's rows go at the VECTOR's write pace while they overlap (where
                    # that costs more than conflicts at random: under backpressure the rows come slower).
                    conflicts = max(conflicts, overlap * (1.0 - pace / rows_per_cycle))
                extra += conflicts
            if extra:
                key = (key[0], int(round(key[1] + extra)), *key[2:])
        scheduler.add_keyed(insn, key)
        if index in taken:
            scheduler.redirect()
    return max(1, before + scheduler.cycles)


def kernel_features(kernel: Kernel, config: Config | None = None,
                    memory: MemorySystem | None = None) -> dict[str, float]:
    """The features of ``kernel`` on ``config`` (its own by default) against ``memory``.

    Computed once per program, configuration and memory system: remembered in this process and on
    disk (:func:`feature_cache_dir`; a compiler pricing candidates asks again for the same kernels at
    every compile, and a kernel from the kernel cache has its program's words already, which name it).
    """
    config = kernel.config if config is None else config
    memory = MemorySystem.nominal(config) if memory is None else memory
    key = _feature_key(kernel, config, memory)
    features = _FEATURES.get(key)
    if features is None:
        features = _load_features(key)
        if features is None:
            features = program_features(kernel.instructions, config, memory)
            _store_features(key, features)
        if len(_FEATURES) >= _FEATURES_LIMIT:
            _FEATURES.pop(next(iter(_FEATURES)))
        _FEATURES[key] = features
    return dict(features)


#: kernel_features by _feature_key, in this process (oldest dropped first beyond the limit).
_FEATURES: dict[str, dict[str, float]] = {}
_FEATURES_LIMIT = 4096


def forget_features() -> None:
    """Forget the features :func:`kernel_features` remembers in this process (those on disk stay):
    a benchmark measuring what a new process pays."""
    _FEATURES.clear()


def _code_digest() -> str:
    """What the features' values depend on besides the program, configuration and memory: the code of
    the timing model, of the instruction encoding and of this module (an edit to any of them
    invalidates every remembered feature)."""
    from braze.isa import encoding, timing

    digest = hashlib.sha256()
    for module in (timing, encoding, sys.modules[__name__]):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()


_CODE_DIGEST = _code_digest()


def _feature_key(kernel: Kernel, config: Config, memory: MemorySystem) -> str:
    """The name of ``kernel``'s features on ``config`` against ``memory``: a hash of its encoded program
    (the kernel cache encodes each kernel once), the configuration, the memory and the code."""
    from ..compiler.cache import encoded_words

    program = hashlib.blake2b(b"".join(word.to_bytes(16, "little") for word in encoded_words(kernel)),
                              digest_size=16).hexdigest()
    text = repr((FEATURE_VERSION, program, config.to_json(), memory.read_latency, memory.stall, _CODE_DIGEST))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def feature_cache_dir() -> Path:
    """``$BRAZE_CACHE_DIR/hpm-features``, by default ``~/.cache/braze/hpm-features``: the features of
    kernels priced before (set ``BRAZE_HPM_FEATURE_CACHE=0`` to keep them in memory only)."""
    from ..compiler.cache import cache_dir

    return cache_dir().parent / "hpm-features"


def _load_features(key: str) -> dict[str, float] | None:
    """The features stored under ``key``, or None (none stored, unreadable or not this key's)."""
    if os.environ.get("BRAZE_HPM_FEATURE_CACHE") == "0":
        return None
    try:
        entry = json.loads((feature_cache_dir() / f"{key}.json").read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or entry.get("key") != key or not isinstance(entry.get("features"), dict):
        return None
    return entry["features"]


def _store_features(key: str, features: dict[str, float]) -> None:
    """Remember ``features`` on disk (atomically); an unwritable directory only costs recomputation."""
    if os.environ.get("BRAZE_HPM_FEATURE_CACHE") == "0":
        return
    directory = feature_cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{key}.", suffix=".tmp")
    except OSError:
        return
    try:
        with os.fdopen(handle, "w") as file:
            json.dump({"key": key, "features": features}, file)
        os.replace(temporary, directory / f"{key}.json")
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)


def _dispatched_stream(instructions: Sequence[Instruction]) -> tuple[list[Instruction], frozenset[int]]:
    """What a program with loops dispatches (:func:`~braze.sw.compiler.kernels.loops.expand_loops`,
    register offsets added, a PREDICATE finding its rows nonzero: a dense run), and the positions
    of its taken BRANCHes in that stream."""
    from ..compiler.kernels.loops import expand_loops, spread_predicate

    stream: list[Instruction] = []
    taken: list[int] = []
    for resolved, _ in expand_loops(instructions, predicate=spread_predicate(0.0),
                                    on_taken=lambda: taken.append(len(stream) - 1)):
        stream.append(resolved)
    return stream, frozenset(taken)


def program_features(instructions: Sequence[Instruction], config: Config,
                     memory: MemorySystem | None = None) -> dict[str, float]:
    """The features of a kernel's instructions (without the HALT) on ``config`` against ``memory``.

    A program with loops is featured as it runs: its dispatched stream (:func:`_dispatched_stream`),
    scheduled with the fetch unit's restart after each taken BRANCH as
    :func:`~braze.sw.compiler.kernels.loops.looped_cycles` prices it.  A loop rolled from a
    straight-line kernel therefore has its twin's features for everything the units execute
    (counts, rows, bytes, beats, MACs, tokens); only the dispatcher's ``n_scalar`` and ``n_branch``
    are added, and the cycles features hold what the loops' dispatcher cycles do not hide.
    """
    memory = MemorySystem.nominal(config) if memory is None else memory
    taken: frozenset[int] = frozenset()
    if any(insn.opcode is Opcode.BRANCH for insn in instructions):
        instructions, taken = _dispatched_stream(instructions)
    features: dict[str, float] = {}
    counts = {op: 0 for op in Opcode}
    rows = {"load": 0, "store": 0}
    data_bytes = {"load": 0, "store": 0}
    beats = {"load": 0, "store": 0}
    strided_rows = {"load": 0, "store": 0}
    tokens = {(unit, kind): 0 for unit in _UNITS for kind in ("push", "pop")}
    macs = chunks = matmul_m = matmul_n = matmul_k = 0
    epilogue_rows = vector_rows = zero_rows = 0
    chunk_rows = config.rows
    program = [*instructions, Instruction.make(Opcode.HALT)]
    # Each instruction's AXI beats and timing key, computed once for the counts, the analytic schedule
    # and the baseline.
    program_beats = [axi_beats(insn, config) for insn in program]
    for insn, insn_beats in zip(instructions, program_beats, strict=False):
        op = insn.opcode
        counts[op] += 1
        unit = ("load" if op is Opcode.LOAD else "store" if op in (Opcode.STORE, Opcode.COUNTERS)
                else "compute")
        for flag in insn.deps:
            tokens[(unit, "push" if flag.startswith("push") else "pop")] += 1
        if op in (Opcode.LOAD, Opcode.STORE):
            side = "load" if op is Opcode.LOAD else "store"
            if op is Opcode.LOAD and insn.zero:
                zero_rows += insn.rows
                continue
            row_bytes = insn.len * element_bytes(insn.mem)
            rows[side] += insn.rows
            data_bytes[side] += insn.rows * row_bytes
            beats[side] += insn_beats
            if insn.rows > 1 and insn.stride != row_bytes:
                strided_rows[side] += insn.rows
        elif op is Opcode.COUNTERS:
            beats["store"] += insn_beats
        elif op is Opcode.MATMUL:
            macs += insn.m * insn.n * insn.k
            chunks += math.ceil(insn.k / chunk_rows)
            matmul_m += insn.m
            matmul_n += insn.n
            matmul_k += insn.k
        elif op is Opcode.EPILOGUE:
            epilogue_rows += insn.m
        elif op is Opcode.VECTOR:
            vector_rows += insn.rows
    for op, count in counts.items():
        features[f"n_{op.name.lower()}"] = count
    matmuls = max(1, counts[Opcode.MATMUL])
    for side in ("load", "store"):
        features[f"{side}_rows"] = rows[side]
        features[f"{side}_bytes"] = data_bytes[side]
        features[f"{side}_beats"] = beats[side]
        features[f"{side}_beats_per_row"] = beats[side] / max(1, rows[side])
        features[f"{side}_bytes_per_row"] = data_bytes[side] / max(1, rows[side])
        features[f"{side}_strided_share"] = strided_rows[side] / max(1, rows[side])
    features["zero_rows"] = zero_rows
    features["macs"] = macs
    features["matmul_chunks"] = chunks
    features["matmul_mean_m"] = matmul_m / matmuls
    features["matmul_mean_n"] = matmul_n / matmuls
    features["matmul_mean_k"] = matmul_k / matmuls
    features["epilogue_rows"] = epilogue_rows
    features["vector_rows"] = vector_rows
    for (unit, kind), count in tokens.items():
        features[f"tokens_{unit}_{kind}"] = count
    features["barriers"] = counts[Opcode.FENCE] + counts[Opcode.COUNTERS]

    # The configuration and the memory system.
    features["rows"] = config.rows
    features["cols"] = config.cols
    features["spad_banks"] = config.spad_banks
    features["acc_banks"] = config.acc_banks
    features["bus_bytes"] = config.dma_bus_bytes
    features["token_depth"] = config.token_depth
    # LOADs with reads in flight at once: at 1 every LOAD pays the whole latency, and the analytic
    # model's error on LOAD-heavy kernels is 40% at 1 against 7-28% at 4 (benchmarks/load_overlap.py).
    features["load_overlap"] = config.load_overlap
    # The options that change how the units overlap (0/1 each; feature version 10): runs of a preset
    # before and after an option went into it differ in nothing else the trees could split on.
    for option in OVERLAP_OPTIONS:
        features[option] = getattr(config, option)
    features["read_latency"] = memory.read_latency
    features["stall"] = memory.stall

    # The analytic model: its cycles and per-unit busy time (the learned model corrects these).
    # (A unit's busy cycles are the sum of its instructions' cycles: each runs from start to end.)
    keys = [timing_key(insn, config) for insn in program]
    timeline = Scheduler(config, keep_entries=False)
    for index, (insn, key) in enumerate(zip(program, keys, strict=True)):
        timeline.add_keyed(insn, key)
        if index in taken:
            timeline.redirect()
    analytic = max(1, int(timeline.cycles))
    unit_busy = timeline.unit_busy
    busy = {unit: unit_busy[Unit[unit.upper()]] for unit in _UNITS}
    features["analytic_cycles"] = analytic
    features["log_analytic_cycles"] = math.log(analytic)
    for unit, cycles in busy.items():
        features[f"analytic_{unit}_busy_share"] = cycles / analytic
    external = data_bytes["load"] + data_bytes["store"]
    features["macs_per_byte"] = macs / max(1, external)
    features["read_beats_per_cycle"] = beats["load"] / analytic
    features["write_beats_per_cycle"] = beats["store"] / analytic
    features["bursts_per_kcycle"] = 1000 * (rows["load"] + rows["store"]) / analytic
    features["array_share"] = macs / (analytic * config.rows * config.cols)
    # Backpressure and latency meet the bursts: expected stall cycles per read burst, per beat.
    features["stall_x_read_beats"] = memory.stall * beats["load"] / analytic
    features["latency_x_read_bursts"] = memory.read_latency * rows["load"] / analytic
    # What the analytic model leaves out, as shares of its cycles: each DMA instruction runs to
    # completion before the next starts (a hand-off of a few cycles), and a stalling memory adds
    # stall / (1 - stall) cycles per beat on average.
    stretch = memory.stall / (1.0 - memory.stall)
    features["dma_handoffs_share"] = (counts[Opcode.LOAD] + counts[Opcode.STORE]) / analytic
    features["expected_read_stall_share"] = stretch * beats["load"] / analytic
    features["expected_write_stall_share"] = stretch * beats["store"] / analytic
    features["load_busy_x_stretch"] = features["analytic_load_busy_share"] * stretch
    features["store_busy_x_stretch"] = features["analytic_store_busy_share"] * stretch
    # The baseline the learned model corrects (see the module documentation).
    if memory.read_latency == config.mem_latency:
        baseline = _memory_aware_cycles(program, keys, program_beats, config, memory, taken)
    else:
        baseline = memory_aware_cycles(instructions, config, memory, taken=taken)
    features["baseline_cycles"] = baseline
    features["log_baseline_cycles"] = math.log(baseline)
    features["log_baseline_over_analytic"] = math.log(baseline / analytic)
    features["feature_version"] = FEATURE_VERSION
    return features
