"""Analytical timing model of the accelerator.

Two levels:

* :func:`instruction_cycles` -- how long one instruction occupies its unit,
  from the pipeline depths below and the shapes in the instruction;
* :func:`schedule` -- when each instruction of a program starts and ends on
  the decoupled machine described in :mod:`braze.isa.encoding` (in-order
  dispatch into per-unit queues, dependency tokens, barriers).

The reference model (:mod:`braze.isa.model`) reports this schedule for the
performance counters that depend on timing (``cycles``, ``*_busy``,
``stall_dep``); :func:`axi_beats` gives the exact ``axi_*_beats`` counts.

Simplifications of :func:`schedule` (the hardware may differ by these):

* instruction fetch is free until a BRANCH is taken (``stall_fetch`` and the AXI stalls are 0):
  straight-line code is timed as if the fetch unit always ran ahead of the dispatcher;
* the dispatcher hands out one instruction per cycle, and an instruction may
  start in the cycle it is dispatched;
* an instruction leaves its unit's queue when it starts, freeing the slot;
* a token pushed in cycle t can be popped by an instruction starting in t;
* a push into a full token queue holds the pushing unit (its next
  instruction cannot start) until the consumer pops;
* a barrier starts when every earlier instruction has retired; the
  dispatcher resumes when it ends.
* SCALAR and BRANCH take one dispatcher cycle each (``start`` = ``dispatch``,
  ``end`` one later) and no unit; the instruction after a BRANCH that is not taken is
  dispatched in the next cycle, as fetch is free, but a taken BRANCH empties the fetch unit,
  which reads on from the target: the target is dispatched :func:`fetch_redirect_cycles` after
  the BRANCH ends at the earliest (:meth:`Scheduler.redirect`), and every later word no earlier
  than the fetch unit, refilling a few words at a time, brings it (:class:`FetchStream`): code
  after a taken BRANCH whose units need words faster than that waits for fetch, and the units'
  queues then hold too little work to hide the next restart;
* a PREDICATE of scratchpad rows that pushes no token runs beside the compute unit, which is free
  for the next instruction in the next cycle; that instruction may start while it runs only if it
  is a MATMUL, and no instruction of the unit retires (pushes) before the PREDICATE ends;
* with ``Config.epilogue_overlap``, an EPILOGUE that :func:`epilogue_runs_beside` runs beside the
  compute unit likewise (free for the next instruction in the next cycle); that instruction may start
  while it runs only if it is a MATMUL :func:`matmul_clear_of_epilogue`, else once the EPILOGUE has
  retired; the EPILOGUE pushes its tokens when it ends (waiting for room), and the next compute
  instruction retires no earlier than the cycle after it;
* with ``Config.matmul_overlap``, a MATMUL that follows a MATMUL on the compute unit starts (is taken by
  the MATMUL unit) once the previous one's last K-chunk streams and the MATMUL before that has retired,
  and ends when :class:`MatmulPipe` says; MATMULs retire in program order, and every other compute
  instruction waits for the last MATMUL's retire.  ``array_busy`` counts the cycles with at least one
  MATMUL in flight (what a MATMUL adds beyond the previous one's end);
* with ``Config.dispatch_stage`` = n (1 or 2), a load, compute or store instruction leaves the
  dispatcher's slot into the first dispatch stage, and each stage into the next, once the instruction
  before it has left that stage, a cycle after entering it at the earliest; from the last stage it
  enters its own queue (its ``dispatch``) a cycle later at the earliest (when its queue has room).
  The slot takes the next word in the cycle after its word left.  SCALAR, BRANCH and barriers stay in
  the slot as without the stages (a barrier waits for every earlier instruction to retire, so for the
  stages too); with two stages a SCALAR or BRANCH executes no earlier than the cycle after the last
  instruction before it left the first stage (whose range checks are the second stage's);
* with ``Config.redirect_stage``, a taken BRANCH redirects the fetch unit a cycle later (from registers):
  its target is dispatched :data:`REDIRECT_STAGE_CYCLES` later than without, and a BRANCH not taken
  costs the dispatcher nothing; after a taken BRANCH, a BRANCH that makes room for the fetch unit's
  next request holds it for its cycle (:class:`FetchStream`);
* while a PREDICATE runs, the dispatcher goes on; it holds (until the PREDICATE ends) only an
  instruction that names the PREDICATE's ``dst`` register (:func:`scalar_registers`) or is another
  PREDICATE.

With ``load_overlap`` > 1 a LOAD starts once the previous LOAD has issued its
row requests (one per cycle, the cycle after it starts; a zero LOAD issues
none), if fewer than ``load_overlap`` LOADs have not retired (one of them
:data:`LOAD_SLOT_CYCLES` ago at the latest); it ends no
earlier than alone (``mem_latency + beats + 1``) and no earlier than
:func:`load_handover_cycles` plus its beats (zero rows) after the previous
LOAD's end, and LOADs retire in program order.  ``load_busy`` counts the cycles
with at least one LOAD in flight (from a LOAD's start to its end), as the
hardware does; without overlap that is the sum of the LOADs' durations.

``stall_dep`` counts, per instruction on the load, compute and store units,
the cycles between being able to start (dispatched, unit free) and starting
because a token to pop was not there yet, plus the cycles after completion
spent waiting for room to push; and, per barrier, the cycles it waits for
the earlier instructions to retire (as the control core counts it: one per
cycle while a barrier waits).  Nothing is dispatched while a barrier is
pending, so no unit waits for a barrier itself.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Iterable

from .config import Config
from .counters import SNAPSHOT_BYTES
from .encoding import (
    FORMATS,
    INSN_BYTES,
    REGISTER_OFFSETS,
    UNARY_VECTOR_OPS,
    ErrorCause,
    Instruction,
    Memory,
    Opcode,
    Unit,
)
from .errors import ExecutionError

# The pipeline depths below are the single source of these constants: the units in braze.hw import
# them and their tests hold the RTL to them cycle-exactly.

#: Cycles of a MATMUL beyond ``chunks*(rows + m) + rows + cols`` (the systolic fill and drain;
#: with ``Config.weight_preload`` see :func:`matmul_cycles`): the scratchpad read, the adder stage
#: before the accumulator write, and the write.
MATMUL_LATENCY = 3
#: Cycles of an EPILOGUE beyond one per row: three parameter-row reads (bias, multiplier,
#: shift), the read latency, five pipeline registers (bias add, multiply, shift, round,
#: saturate/residual/activation) and the write.
EPILOGUE_LATENCY = 9
#: Cycles of a VECTOR beyond one (or two) per row: the read, the operand register, the
#: compute/multiply register, the round-and-saturate register and the write.
VECTOR_LATENCY = 4
#: With ``Config.vector_stage``: cycles a VECTOR takes beyond :data:`VECTOR_LATENCY` (the multiply's second
#: pipeline register; every op goes through it, so that the schedule is one for all ops).
VECTOR_STAGE_CYCLES = 1
#: Cycles of a TABLE beyond one per scratchpad row read (256/cols rows): the read latency (each row
#: is written into the table in the cycle its data arrives).
TABLE_LATENCY = 1
#: Cycles of a PREDICATE beyond one per row: the read, the reduction register and the write of the
#: scalar register.
PREDICATE_LATENCY = 3

#: With ``Config.store_ahead``: cycles of a STORE beyond one per AXI write beat -- the first row's local
#: read and packing, its address's way through the write master and the memory's address queue, the
#: write response to the last beat and the done.  Measured on the RTL with the co-simulation memory (a
#: write response one cycle after the last beat) on tiny, default and large, every row size and
#: alignment: exactly this.  Without ``store_ahead`` a STORE is priced ``mem_latency + beats + 1``, which
#: the RTL misses both ways: a few rows take about 10 cycles, and long runs of one-beat rows about twice
#: their beats, since each row's data waits for its own address (:class:`braze.hw.dma.StoreEngine`).
STORE_AHEAD_LATENCY = 9

#: Cycles a taken BRANCH costs the dispatcher beyond the memory's read latency and the bus beats of an
#: instruction word: the fetch unit's restart and request, the read channel's arbitration, and the
#: word's way through the fetch FIFO into the dispatcher's slot (see :func:`fetch_redirect_cycles`).
FETCH_REDIRECT_OVERHEAD = 8


#: With ``Config.redirect_stage``: cycles a taken BRANCH costs beyond :func:`fetch_redirect_cycles`
#: (its redirect reaches the fetch unit from a register, a cycle after the BRANCH executed).
REDIRECT_STAGE_CYCLES = 1


def fetch_redirect_cycles(config: Config) -> int:
    """Cycles from the end of a taken BRANCH until its target can be dispatched.

    The fetch unit (:class:`braze.hw.fetch.Fetch`) drops the words it fetched ahead and reads on
    from the target: the target waits for the memory's read latency, its word's bus beats and
    :data:`FETCH_REDIRECT_OVERHEAD`.  Measured on the Verilator device: 25 cycles on ``default``
    (every loop and forward branch measured; this gives 25); on ``tiny`` (64-bit bus) 16 to 19,
    as the beats of words fetched ahead before the redirect still have to drain (this gives 18).
    """
    return config.mem_latency + insn_word_beats(config) + FETCH_REDIRECT_OVERHEAD


def vector_latency(config: Config) -> int:
    """Cycles of a VECTOR beyond one (or two) per row: :data:`VECTOR_LATENCY`, plus
    :data:`VECTOR_STAGE_CYCLES` with ``Config.vector_stage``."""
    return VECTOR_LATENCY + VECTOR_STAGE_CYCLES * config.vector_stage


def insn_word_beats(config: Config) -> int:
    """Bus beats of one instruction word on the read port the fetch unit shares with the LOADs."""
    return -(-INSN_BYTES // config.dma_bus_bytes)


#: Bytes the fetch unit (:class:`braze.hw.fetch.Fetch`) reads per request: four instruction words.
FETCH_BURST_BYTES = 64
#: Instruction words the fetch unit may hold or have requested ahead of the dispatcher.
FETCH_DEPTH = 8


class FetchStream:
    """When the words the fetch unit reads from a taken BRANCH's target can be dispatched.

    After a redirect the fetch unit starts empty: word 0 (the target) can be dispatched
    :func:`fetch_redirect_cycles` after the BRANCH ends, and the rest of its request's words one
    bus word later each (``beats`` cycles per word, at least one).  The unit holds or has requested
    at most :data:`FETCH_DEPTH` words, :data:`FETCH_BURST_BYTES` at a time, so request ``k`` (words
    ``burst*k ...``) goes out only once the dispatcher has taken word ``burst*(k+1) - FETCH_DEPTH - 1``
    from it; its first word follows the previous request's last, and comes
    :func:`fetch_redirect_cycles` after that word was dispatched at the earliest, as a BRANCH's
    target does (on the Verilator device, loops of 7 to 49 SCALARs: 3.5 cycles per word on
    ``default``, 3 on ``tiny``, as this gives).  Code that needs words faster than that -- short unit
    instructions -- is fetch-bound after a branch, and its queues cannot hide the next restart.

    Straight-line code (no BRANCH taken yet) is timed with fetch free, as before; the
    stream only starts at a taken BRANCH.  With ``Config.redirect_stage`` the fetch unit issues no
    request in the cycle a BRANCH executes: a request that a BRANCH (not taken) made room for goes
    out a cycle later (:meth:`took`'s ``holds``).
    """

    __slots__ = ("_burst", "_word_cycles", "_refill", "_trigger", "_words", "_request", "_first",
                 "_dispatched")

    def __init__(self, config: Config, start: int):
        self._burst = FETCH_BURST_BYTES // INSN_BYTES
        self._word_cycles = insn_word_beats(config)
        self._refill = fetch_redirect_cycles(config)
        # Request k waits for word burst*(k+1) - depth - 1: this many words before its first one.
        self._trigger = FETCH_DEPTH - self._burst + 1
        self._words = 0               # words of the stream dispatched so far
        self._request = 0             # the request of the next word, and when its first word can be
        self._first = start           # dispatched
        self._dispatched: deque[int] = deque(maxlen=FETCH_DEPTH)  # the last words' dispatch cycles

    def ready(self) -> int:
        """The earliest cycle the stream's next word can be dispatched in."""
        index, offset = divmod(self._words, self._burst)
        if index != self._request:
            first = self._first + self._burst * self._word_cycles
            trigger = self._words - self._trigger        # the word that made room for this request
            if trigger >= 0:
                dispatched = self._dispatched[trigger - (self._words - len(self._dispatched))]
                first = max(first, dispatched + self._refill)
            self._request, self._first = index, first
        return self._first + offset * self._word_cycles

    def took(self, dispatched: int, holds: bool = False) -> None:
        """The next word was dispatched (left the dispatcher's slot) in cycle ``dispatched``;
        ``holds``: it held the fetch unit's requests in that cycle (a BRANCH with
        ``Config.redirect_stage``), so a request it made room for goes out a cycle later."""
        self._dispatched.append(dispatched + holds)
        self._words += 1


#: Units that execute from an instruction queue (barriers run on the control unit).
QUEUED_UNITS = (Unit.LOAD, Unit.COMPUTE, Unit.STORE)

#: Which ``*_busy`` counter an opcode's execution time is added to.
BUSY_COUNTER = {
    Opcode.LOAD: "load_busy",
    Opcode.STORE: "store_busy",
    Opcode.MATMUL: "array_busy",
    Opcode.EPILOGUE: "vector_busy",
    Opcode.VECTOR: "vector_busy",
    Opcode.TABLE: "vector_busy",
}

BARRIER_OPCODES = frozenset({Opcode.FENCE, Opcode.COUNTERS, Opcode.HALT})

#: With ``load_overlap`` > 1: cycles between one LOAD's last row and the next one's first in the load
#: engine (the next one becomes current once the last row is written): a zero LOAD's rows follow
#: after this many; a LOAD that reads memory also waits for its own instruction word's beats on the
#: read port (:func:`load_handover_cycles`).
LOAD_HANDOVER_CYCLES = 2


def load_handover_cycles(config: Config, zero: bool = False) -> int:
    """Cycles between one overlapped LOAD's last data (or row) and the next one's first.

    :data:`LOAD_HANDOVER_CYCLES`, and for a LOAD that reads memory (not ``zero``) the bus beats of one
    instruction word (at least one): the fetch unit reads the program through the same in-order read
    port.  Measured on the Verilator device (``benchmarks/load_handover.py``: 48 LOADs of 16 one-beat
    rows back to back): 19.0 cycles each on default's 16-byte and large's 32-byte bus (beats + 3), 20.0
    on tiny's 8-byte bus with ``load_overlap`` = 2 (beats + 4); zero LOADs of 4 rows 6.0 on all three.
    """
    if zero:
        return LOAD_HANDOVER_CYCLES
    return LOAD_HANDOVER_CYCLES + insn_word_beats(config)


#: With ``load_overlap`` > 1: cycles after a LOAD retires before its place among the ``load_overlap``
#: in flight is taken again (the control core counts the done, then frees the place).
LOAD_SLOT_CYCLES = 1

_PREV = {Unit.COMPUTE: Unit.LOAD, Unit.STORE: Unit.COMPUTE}
_NEXT = {Unit.LOAD: Unit.COMPUTE, Unit.COMPUTE: Unit.STORE}


def token_queues(insn: Instruction) -> tuple[list[tuple[Unit, Unit]], list[tuple[Unit, Unit]]]:
    """The token queues an instruction pops from and pushes to, as (producer, consumer) pairs.

    Assumes the flags are legal for the unit (``Instruction.make``/``decode`` guarantee it).
    """
    unit = insn.unit
    pops, pushes = [], []
    if "pop_prev" in insn.deps:
        pops.append((_PREV[unit], unit))
    if "pop_next" in insn.deps:
        pops.append((_NEXT[unit], unit))
    if "push_prev" in insn.deps:
        pushes.append((unit, _PREV[unit]))
    if "push_next" in insn.deps:
        pushes.append((unit, _NEXT[unit]))
    return pops, pushes


def scalar_registers(insn: Instruction) -> frozenset[int]:
    """The scalar registers r1..r7 an instruction names in the dispatcher: SCALAR's ``dst``, ``src1``,
    ``src2``, BRANCH's ``a`` and ``b``, and the register-offset fields of LOAD, STORE, MATMUL and
    PREDICATE (:data:`~braze.isa.encoding.REGISTER_OFFSETS`).  Of an unresolved instruction."""
    op = insn.opcode
    if op is Opcode.SCALAR:
        fields: Iterable[str] = ("dst", "src1", "src2")
    elif op is Opcode.BRANCH:
        fields = ("a", "b")
    else:
        fields = REGISTER_OFFSETS.get(op, {}).values()
    args = insn.args
    return frozenset(args[field] for field in fields if args[field])


def element_bytes(memory: Memory) -> int:
    """Bytes of one element in external memory: int8 for the scratchpad, int32 for the accumulator."""
    return 1 if memory is Memory.SPAD else 4


def _strided_beats(start: int, rows: int, stride: int, row_bytes: int, bus_bytes: int) -> int:
    """Sum over rows of the bus words covering ``[start + r*stride, ... + row_bytes)``."""
    # Only the offsets modulo the bus width matter, so the compiler's many similar LOADs share entries.
    key = (start % bus_bytes, rows, stride % bus_bytes, row_bytes, bus_bytes)
    beats = _BEATS.get(key)
    if beats is None:
        if len(_BEATS) >= _BEATS_LIMIT:
            _BEATS.clear()
        beats = _BEATS[key] = _strided_beats_uncached(*key)
    return beats


#: _strided_beats by its arguments reduced modulo the bus width; cleared when full.
_BEATS: dict[tuple[int, int, int, int, int], int] = {}
_BEATS_LIMIT = 1 << 16


def _strided_beats_uncached(start: int, rows: int, stride: int, row_bytes: int, bus_bytes: int) -> int:
    # The offset within a bus word repeats with this period, so one period suffices.
    period = bus_bytes // math.gcd(stride % bus_bytes, bus_bytes)
    if period == 1:
        return rows * ((start % bus_bytes + row_bytes + bus_bytes - 1) // bus_bytes)
    per_row = [((start + r * stride) % bus_bytes + row_bytes + bus_bytes - 1) // bus_bytes
               for r in range(min(period, rows))]
    full, rest = divmod(rows, period)
    return full * sum(per_row) + sum(per_row[:rest])


def axi_beats(insn: Instruction, config: Config) -> int:
    """AXI data beats an instruction transfers: whole bus words covering each row.

    LOAD (not ``zero``) counts read beats; STORE and COUNTERS count write
    beats; every other instruction transfers nothing and gives 0.
    """
    op = insn.opcode
    if op is Opcode.LOAD or op is Opcode.STORE:
        args = insn.args
        if op is Opcode.LOAD and args["zero"]:
            return 0
        return _strided_beats(args["dram"], args["rows"], args["stride"],
                              args["len"] * element_bytes(args["mem"]), config.dma_bus_bytes)
    if op is Opcode.COUNTERS:
        return _strided_beats(insn.args["dram"], 1, 0, SNAPSHOT_BYTES, config.dma_bus_bytes)
    return 0


def matmul_chunks(insn: Instruction, config: Config) -> int:
    """Number of K-chunks of ``rows`` a MATMUL is split into."""
    return -(-insn.args["k"] // config.rows)


def matmul_cycles(config: Config, m: int, k: int) -> int:
    """Cycles of a MATMUL of ``m`` A rows and reduction depth ``k``, from start to completion.

    Each K-chunk of ``rows`` preloads its weights (``rows`` scratchpad reads) and streams its ``m`` A
    rows (one read per cycle); after the last chunk the array drains (``rows + cols``), and
    :data:`MATMUL_LATENCY` adds the read, add and write stages.  Without ``config.weight_preload``
    the two share one read port, so each chunk takes ``rows + m``.  With it, the next chunk's
    weights are read on a second port while the current chunk streams: only the first chunk's
    preload is exposed, and a chunk starts ``max(m, rows + 1)`` cycles after the previous one (its
    weights must have arrived, and the PE array needs one cycle without a weight shift between two
    preloads, see :class:`braze.hw.pe_array.PEArray`).
    """
    rows = config.rows
    chunks = -(-k // rows)
    drain = rows + config.cols + MATMUL_LATENCY
    if config.weight_preload:
        return rows + (chunks - 1) * max(m, rows + 1) + m + drain
    return chunks * (rows + m) + drain


def matmul_hazard_gap(previous: Instruction, insn: Instruction) -> int:
    """With ``Config.matmul_overlap``: the fewest cycles from the start of ``previous``'s last K-chunk
    stream to the start of ``insn``'s first, for ``insn`` to read the accumulator rows ``previous``
    writes only after they are written (0 if it reads none of them).

    A MATMUL reads accumulator row ``acc + i`` of its first chunk (with ``accumulate``) ``rows + cols +
    i`` cycles after its chunk began streaming, and writes row ``acc + i`` of a chunk two cycles after
    that; a read sees a write at the earliest the cycle after.  So for each row both touch the gap must
    be at least ``acc - previous.acc + 3`` (as between two chunks of one MATMUL, ``rows + 1 >= 3``).
    Writing the same rows without ``accumulate`` needs no gap: the later write always comes later."""
    mm, prev = insn.args, previous.args
    acc, prev_acc = mm["acc"], prev["acc"]
    if not mm["accumulate"] or _disjoint(acc, acc + mm["m"], prev_acc, prev_acc + prev["m"]):
        return 0
    return acc - prev_acc + 3


class MatmulPipe:
    """With ``Config.matmul_overlap``: when the MATMUL unit accepts each MATMUL and when it is done.

    Cycles are the unit's.  A MATMUL accepted in cycle ``a`` reads its first chunk's weights on the weight
    read port in cycles ``a+1 .. a+rows`` and starts streaming its first chunk in cycle ``s = max(a + rows
    + 1, L' + m', L' + matmul_hazard_gap(previous, it))``, where ``L'`` is the cycle the previous MATMUL's
    last chunk began streaming and ``m'`` its A rows (its stream has ended).  Its last chunk begins
    streaming in ``L = s + (chunks-1)*max(m, rows+1)``, and it is done in ``L + m + rows + cols +
    MATMUL_LATENCY - 1``; alone (accepted once the unit is idle) that is :func:`matmul_cycles` after ``a``.
    The unit accepts the next MATMUL from cycle ``L`` on, and no earlier than the ``done`` cycle of the
    MATMUL before this one: at most two are in flight.
    """

    __slots__ = ("rows", "cols", "_last", "_last_start", "_done", "_done_before")

    def __init__(self, config: Config):
        self.rows, self.cols = config.rows, config.cols
        self._last: Instruction | None = None
        self._last_start = self._done = self._done_before = -(1 << 62)

    def earliest_accept(self) -> int:
        """The first cycle the unit may accept the next MATMUL in (before any: unconstrained)."""
        return max(self._last_start, self._done_before)

    def accept(self, insn: Instruction, accepted: int) -> int:
        """``insn`` is accepted in cycle ``accepted`` (no earlier than :meth:`earliest_accept`); its done
        cycle."""
        rows, args = self.rows, insn.args
        first = accepted + rows + 1
        if self._last is not None:
            previous_end = self._last_start + self._last.args["m"]
            first = max(first, previous_end, self._last_start + matmul_hazard_gap(self._last, insn))
        chunks = -(-args["k"] // rows)
        last_start = first + (chunks - 1) * max(args["m"], rows + 1)
        done = last_start + args["m"] + rows + self.cols + MATMUL_LATENCY - 1
        self._last, self._last_start = insn, last_start
        self._done_before, self._done = self._done, done
        return done


def epilogue_runs_beside(insn: Instruction, config: Config) -> bool:
    """With ``Config.epilogue_overlap``: an EPILOGUE that writes scratchpad rows (``out=spad``) and reads no
    residual runs beside the compute unit.  It reads the accumulator on a port of its own and writes
    the scratchpad's compute write port, which a MATMUL leaves alone; an EPILOGUE writing the
    accumulator, or reading residual scratchpad rows, would need the MATMUL's ports."""
    if not config.epilogue_overlap or insn.opcode is not Opcode.EPILOGUE:
        return False
    args = insn.args
    return args["out"] is Memory.SPAD and not args["residual"]


def _disjoint(first: int, first_end: int, second: int, second_end: int) -> bool:
    """Row ranges ``[first, first_end)`` and ``[second, second_end)`` share no row."""
    return first_end <= second or second_end <= first


def matmul_clear_of_epilogue(matmul: Instruction, epilogue: Instruction, config: Config) -> bool:
    """A MATMUL may start while ``epilogue`` (one that :func:`epilogue_runs_beside`) runs: the accumulator
    rows it reads and writes, ``[acc, acc + m)``, hold none of the rows the EPILOGUE reads (source rows
    ``[src, src + m)``, the bias row with ``bias``, the multiplier and shift rows with ``requant``),
    and the scratchpad rows it reads (A: ``[a, a + (chunks-1)*a_stride + m)``, B: ``[b, b + k)``) none
    of those the EPILOGUE writes (``[dst, dst + m)``).  Then neither sees the other, and the results
    are those of program order.  Of resolved instructions (register offsets added)."""
    mm, ep = matmul.args, epilogue.args
    acc, acc_end = mm["acc"], mm["acc"] + mm["m"]
    if not _disjoint(acc, acc_end, ep["src"], ep["src"] + ep["m"]):
        return False
    if ep["bias"] and not _disjoint(acc, acc_end, ep["bias_addr"], ep["bias_addr"] + 1):
        return False
    if ep["requant"] and not _disjoint(acc, acc_end, ep["quant_addr"], ep["quant_addr"] + 2):
        return False
    dst, dst_end = ep["dst"], ep["dst"] + ep["m"]
    a_end = mm["a"] + (matmul_chunks(matmul, config) - 1) * mm["a_stride"] + mm["m"]
    return _disjoint(mm["a"], a_end, dst, dst_end) and _disjoint(mm["b"], mm["b"] + mm["k"], dst, dst_end)


def table_rows(config: Config) -> int:
    """Scratchpad rows a TABLE reads: the 256 int8 entries of the activation table, ``cols`` per row."""
    return 256 // config.cols


def instruction_cycles(insn: Instruction, config: Config) -> int:
    """Cycles an instruction occupies its unit, from start to completion."""
    op = insn.opcode
    args = insn.args
    # LOADs first, with axi_beats inlined: they are most of a compiler's candidate kernels.
    if op is Opcode.LOAD:
        if args["zero"]:
            return args["rows"]
        row_bytes = args["len"] * (1 if args["mem"] is Memory.SPAD else 4)
        return config.mem_latency + _strided_beats(args["dram"], args["rows"], args["stride"], row_bytes,
                                                   config.dma_bus_bits // 8) + 1
    if op is Opcode.MATMUL:
        return matmul_cycles(config, args["m"], args["k"])
    if op is Opcode.EPILOGUE:
        return args["m"] + EPILOGUE_LATENCY
    if op is Opcode.PREDICATE:
        return args["rows"] + PREDICATE_LATENCY
    if op is Opcode.TABLE:
        return table_rows(config) + TABLE_LATENCY
    if op is Opcode.VECTOR:
        two_reads = (args["op"] not in UNARY_VECTOR_OPS and not args["use_imm"]
                     and args["src1_mem"] is args["src2_mem"])
        return args["rows"] * (2 if two_reads else 1) + vector_latency(config)
    if op is Opcode.STORE:
        if config.store_ahead:
            return STORE_AHEAD_LATENCY + axi_beats(insn, config)
        return config.mem_latency + axi_beats(insn, config) + 1
    if op is Opcode.COUNTERS:
        return config.mem_latency + axi_beats(insn, config)
    return 1  # CONFIG, FENCE, HALT, SCALAR, BRANCH


@dataclasses.dataclass(frozen=True)
class ScheduledInstruction:
    """When one instruction ran.

    ``dispatch``: cycle it entered its unit's queue; ``start``/``end``: its
    execution ``[start, end)``; ``retire``: when its unit was free again
    (later than ``end`` only if a token push waited for space);
    ``stall_dep``: cycles it waited for tokens (to pop, then to push), or, for a
    barrier, for every earlier instruction to retire.
    """

    index: int
    insn: Instruction
    unit: Unit
    dispatch: int
    start: int
    end: int
    retire: int
    stall_dep: int
    pc: int | None = None


_new_object = object.__new__


def _entry(index: int, insn: Instruction, unit: Unit, dispatch: int, start: int, end: int, retire: int,
           stall_dep: int, pc: int | None) -> ScheduledInstruction:
    """``ScheduledInstruction(...)`` without the frozen dataclass's per-field ``object.__setattr__``."""
    entry = _new_object(ScheduledInstruction)
    fields = entry.__dict__
    fields["index"] = index
    fields["insn"] = insn
    fields["unit"] = unit
    fields["dispatch"] = dispatch
    fields["start"] = start
    fields["end"] = end
    fields["retire"] = retire
    fields["stall_dep"] = stall_dep
    fields["pc"] = pc
    return entry


assert [field.name for field in dataclasses.fields(ScheduledInstruction)] == list(
    _entry.__code__.co_varnames[:_entry.__code__.co_argcount]), "_entry must set every field"


@dataclasses.dataclass
class Schedule:
    """The timing of a program: per-instruction entries and totals.

    ``unit_busy`` counts execution cycles per unit (barriers on
    ``Unit.CONTROL``); ``busy`` the same by ``*_busy`` counter name;
    ``stall_dep`` the unit-cycles spent waiting for tokens or in a barrier; ``cycles`` the
    cycle at which the last instruction retired.
    """

    entries: list[ScheduledInstruction]
    unit_busy: dict[Unit, int]
    busy: dict[str, int]
    stall_dep: int
    cycles: int


# The scheduler keeps per-unit state in lists indexed by Unit value.
assert [unit.value for unit in QUEUED_UNITS] == list(range(len(QUEUED_UNITS)))
_LOAD = Unit.LOAD.value

#: The four token queues as (producer, consumer), numbered in this order by :func:`timing_key`.
TOKEN_QUEUES = ((Unit.LOAD, Unit.COMPUTE), (Unit.COMPUTE, Unit.LOAD), (Unit.COMPUTE, Unit.STORE),
                (Unit.STORE, Unit.COMPUTE))
_QUEUE_NUMBER = {queue: number for number, queue in enumerate(TOKEN_QUEUES)}
_BUSY_NAMES = tuple(dict.fromkeys(BUSY_COUNTER.values()))
_PREDICATE = Opcode.PREDICATE
_BRANCH = Opcode.BRANCH
_MATMUL = Opcode.MATMUL
_EPILOGUE = Opcode.EPILOGUE
_COMPUTE = Unit.COMPUTE.value


# Per opcode: (unit it is scheduled on, is a barrier, index of its *_busy counter name or None).
_OPCODE_TIMING = {
    fmt.opcode: (Unit.CONTROL if fmt.opcode in BARRIER_OPCODES else fmt.unit, fmt.opcode in BARRIER_OPCODES,
                 _BUSY_NAMES.index(BUSY_COUNTER[fmt.opcode]) if fmt.opcode in BUSY_COUNTER else None)
    for fmt in FORMATS}
# (opcode, dependency flags) -> (pop queue numbers, push queue numbers), filled on first use.
_QUEUE_NUMBERS: dict[tuple[Opcode, frozenset[str]], tuple[tuple[int, ...], tuple[int, ...]]] = {}


def timing_key(insn: Instruction, config: Config, cycles: int | None = None) -> tuple:
    """What :meth:`Scheduler.add` needs to know of an instruction, computed once per instruction.

    ``(unit, cycles, pops, pushes, busy, barrier)``: pops and pushes are numbers of
    :data:`TOKEN_QUEUES`, ``busy`` the index of its ``*_busy`` counter name (or None).
    ``cycles``: its :func:`instruction_cycles`, if the caller has them already.
    """
    unit, barrier, busy = _OPCODE_TIMING[insn.opcode]
    queues = _QUEUE_NUMBERS.get((insn.opcode, insn.deps))
    if queues is None:
        pops, pushes = token_queues(insn)
        queues = _QUEUE_NUMBERS[insn.opcode, insn.deps] = (tuple(_QUEUE_NUMBER[q] for q in pops),
                                                           tuple(_QUEUE_NUMBER[q] for q in pushes))
    if cycles is None:
        cycles = instruction_cycles(insn, config)
    return unit, cycles, queues[0], queues[1], busy, barrier


class Scheduler:
    """Incremental :func:`schedule`: feed instructions in program order with :meth:`add`.

    Every time depends only on earlier instructions, because a valid
    program pops only tokens pushed by earlier instructions and pushes only
    into space freed by earlier pops (the reference model checks this).
    """

    def __init__(self, config: Config, *, keep_entries: bool = True, load_stretch: float = 0.0,
                 load_handover: int | None = None):
        self.config = config
        #: With overlapped LOADs: the extra cycles per row request and per data beat a stalling memory
        #: adds (``stall / (1 - stall)``; 0 for the nominal memory).  The requests and the beats of
        #: overlapped LOADs queue behind each other on the one AXI port, so the learned model's
        #: memory-aware baseline stretches them here rather than only each LOAD's own duration.
        self.load_stretch = load_stretch
        #: With overlapped LOADs: cycles from one LOAD's last data to the next one's first.  None: the
        #: RTL's (:func:`load_handover_cycles`); a number: that many before every LOAD (the learned
        #: model's memory-aware baseline gives one it measured on whole kernels).
        self.load_handover = load_handover
        self._handovers = (load_handover_cycles(config, False), load_handover_cycles(config, True)) \
            if load_handover is None else (load_handover, load_handover)
        # Without keep_entries only the totals are kept (add returns None): a compiler pricing a program.
        self.keep_entries = keep_entries
        self.entries: list[ScheduledInstruction] = []
        self.stall_dep = 0
        self._unit_busy = [0] * len(Unit)                  # by Unit value
        self._busy = [0] * len(_BUSY_NAMES)
        self._next_dispatch = 0
        # Start cycles of the last queue_depth instructions of each unit (by Unit value): their queue slots.
        self._queue_starts = [deque(maxlen=config.queue_depth) for _ in QUEUED_UNITS]
        self._unit_free = [0] * len(QUEUED_UNITS)
        # Per token queue (numbered as TOKEN_QUEUES): the push and pop cycles so far.
        self._push_times: list[list[int]] = [[] for _ in TOKEN_QUEUES]
        self._pop_times: list[list[int]] = [[] for _ in TOKEN_QUEUES]
        self._all_retired = 0
        # Overlapped LOADs (config.load_overlap > 1): when the load engine can take the next LOAD (its
        # requests issued), when the last LOAD's data ended, and the retire cycles of the LOADs that
        # may be in flight.
        self._load_overlap = config.load_overlap
        self._load_issue_free = 0
        self._load_data_end = 0
        self._load_retires: deque[int] = deque(maxlen=config.load_overlap)
        # The end of the last overlapped LOAD: load_busy counts only what a LOAD adds beyond it.
        self._load_busy_until = 0
        #: The ``*_busy`` counter cycles the instruction added last contributed (0 if it has no such
        #: counter): its duration, or with overlapped LOADs its cycles with no earlier LOAD in flight.
        self.last_busy = 0
        # The last PREDICATE's end and register (0: discarded): the dispatcher holds an instruction
        # naming that register, or another PREDICATE, until then.
        self._predicate_end = 0
        self._predicate_dst = 0
        self._redirect_cycles = fetch_redirect_cycles(config) + REDIRECT_STAGE_CYCLES * config.redirect_stage
        self._branch_holds_fetch = bool(config.redirect_stage)
        # The fetch unit's words since the last taken BRANCH (None: none taken, fetch is free).
        self._stream: FetchStream | None = None
        # The end of the last PREDICATE that runs beside the compute unit (see the module documentation).
        self._beside_end = 0
        # With epilogue_overlap: the last EPILOGUE that ran beside the compute unit, and its retire.
        self._epilogue_overlap = bool(config.epilogue_overlap)
        self._beside_epilogue: Instruction | None = None
        self._epilogue_retire = 0
        self._epilogue_end = 0
        # With Config.dispatch_stage = n: per stage, the cycle the last load/compute/store instruction
        # left it (into the next stage, the last one into its queue); the stage takes the next word
        # from then on.  -1: none yet.
        self._stage_left = [-1] * config.dispatch_stage
        # With Config.matmul_overlap: the MATMUL unit's acceptances and dones, whether the compute unit's
        # last instruction was a MATMUL (the next one may then be accepted while it runs), the retire
        # cycles of the last two MATMULs, and the end of the cycles array_busy has counted.
        self._matmul_pipe = MatmulPipe(config) if config.matmul_overlap else None
        self._matmul_follows = False
        # ... the last MATMUL, whether it was the compute unit's last instruction, and the cycle after an
        # EPILOGUE that started beside it (no MATMUL is taken before).
        self._last_matmul: Instruction | None = None
        self._matmul_last = False
        self._matmul_floor = 0
        self._matmul_retire = self._matmul_retire_before = 0
        self._matmul_busy_until = 0

    @property
    def unit_busy(self) -> dict[Unit, int]:
        return {unit: self._unit_busy[unit.value] for unit in Unit}

    @property
    def busy(self) -> dict[str, int]:
        return dict(zip(_BUSY_NAMES, self._busy, strict=True))

    @property
    def cycles(self) -> int:
        return max(self._all_retired, self._next_dispatch)

    @property
    def next_dispatch(self) -> int:
        """The earliest cycle the next instruction can be dispatched (a barrier: start) in."""
        return self._next_dispatch

    def redirect(self) -> None:
        """The BRANCH just added is taken: the fetch unit restarts at its target, which is dispatched
        :func:`fetch_redirect_cycles` (plus :data:`REDIRECT_STAGE_CYCLES` with ``Config.redirect_stage``)
        after the BRANCH ends (its one dispatcher cycle) at the earliest,
        and the words after it as the fetch unit brings them (:class:`FetchStream`)."""
        self._next_dispatch += self._redirect_cycles
        self._stream = FetchStream(self.config, self._next_dispatch)

    def add(self, insn: Instruction, *, pc: int | None = None,
            unresolved: Instruction | None = None) -> ScheduledInstruction | None:
        """Schedule ``insn``, the next instruction dispatched.

        ``unresolved``: the instruction before its register offsets were added (as the program has
        it), when ``insn`` is resolved: the registers it names come from it.
        """
        return self.add_keyed(insn, timing_key(insn, self.config), pc, unresolved)

    def add_keyed(self, insn: Instruction, key: tuple, pc: int | None = None,
                  unresolved: Instruction | None = None) -> ScheduledInstruction | None:
        """:meth:`add` with the instruction's :func:`timing_key` already computed."""
        stream = self._stream
        if stream is None:
            return self._add_keyed(insn, key, pc, unresolved)
        # After a taken BRANCH: not before the fetch unit has brought the word.
        self._next_dispatch = max(self._next_dispatch, stream.ready())
        entry = self._add_keyed(insn, key, pc, unresolved)
        # It left the dispatcher's slot the cycle before the next word may be dispatched (a barrier
        # holds the slot until it ends).
        stream.took(self._next_dispatch - 1, self._branch_holds_fetch and insn.opcode is _BRANCH)
        return entry

    def _add_keyed(self, insn: Instruction, key: tuple, pc: int | None,
                   unresolved: Instruction | None) -> ScheduledInstruction | None:
        unit, cycles, pops, pushes, busy, barrier = key
        index = len(self.entries)
        if self._predicate_end > self._next_dispatch and (
                insn.opcode is _PREDICATE
                or self._predicate_dst in scalar_registers(insn if unresolved is None else unresolved)):
            # A PREDICATE is running whose register this instruction names: it waits in the dispatcher.
            self._next_dispatch = self._predicate_end
        if barrier:
            dispatch = self._next_dispatch
            start = max(dispatch, self._all_retired)
            end = start + cycles
            self._next_dispatch = end
            self._all_retired = end
            self._unit_busy[unit.value] += cycles
            self.stall_dep += start - dispatch
            if not self.keep_entries:
                return None
            entry = _entry(index, insn, unit, dispatch, start, end, end, start - dispatch, pc)
            self.entries.append(entry)
            return entry

        if unit is Unit.CONTROL:
            # SCALAR or BRANCH: one dispatcher cycle, no unit.  With two dispatch stages, not while the
            # first one holds a word (its range checks are not done: it might fail).
            dispatch = self._next_dispatch
            if len(self._stage_left) == 2:
                dispatch = max(dispatch, self._stage_left[0] + 1)
            self._next_dispatch = dispatch + 1
            if not self.keep_entries:
                return None
            entry = _entry(index, insn, unit, dispatch, dispatch, dispatch + 1, dispatch + 1, 0, pc)
            self.entries.append(entry)
            return entry

        u = unit.value
        slots = self._queue_starts[u]
        dispatch = self._next_dispatch
        stage_left = self._stage_left
        if stage_left:
            # The word leaves the slot into the first dispatch stage, and each stage into the next,
            # once the word before it has left that stage, a cycle after entering it at the earliest;
            # from the last stage it enters its own queue (room permitting).
            leaves = moves = max(dispatch, stage_left[0])
            for stage in range(1, len(stage_left)):
                moves = stage_left[stage - 1] = max(moves + 1, stage_left[stage])
            dispatch = moves + 1
            if len(slots) == slots.maxlen:
                dispatch = max(dispatch, slots[0])
            stage_left[-1] = dispatch
            self._next_dispatch = leaves + 1
        else:
            if len(slots) == slots.maxlen:
                dispatch = max(dispatch, slots[0])
            self._next_dispatch = dispatch + 1
        overlapped = u == _LOAD and self._load_overlap > 1
        if overlapped:
            retires = self._load_retires
            ready = start = max(dispatch, self._load_issue_free,
                                retires[0] + LOAD_SLOT_CYCLES if len(retires) == retires.maxlen else 0)
        else:
            ready = start = max(dispatch, self._unit_free[u])
        pipelined = self._matmul_pipe is not None and insn.opcode is _MATMUL
        if pipelined and self._matmul_follows:
            # The MATMUL unit takes it once the last MATMUL's last chunk streams and the one before has
            # retired (the control core holds two at most), not at the last one's end.
            ready = start = max(dispatch, self._matmul_pipe.earliest_accept(), self._matmul_retire_before,
                                self._matmul_floor)
        # With epilogue_overlap too: an EPILOGUE that runs beside the unit and is clear of the last MATMUL's
        # rows starts while it is in flight, once the MATMUL before it has retired (and any EPILOGUE beside).
        past_matmul = (self._matmul_last and self._epilogue_overlap and insn.opcode is _EPILOGUE
                       and epilogue_runs_beside(insn, self.config)
                       and matmul_clear_of_epilogue(self._last_matmul, insn, self.config))
        if past_matmul:
            ready = start = max(dispatch, self._matmul_retire_before, self._epilogue_retire)
        if u == _COMPUTE and insn.opcode is not _MATMUL and self._beside_end > start:
            ready = start = self._beside_end   # only a MATMUL starts beside a running PREDICATE
        beside_epilogue = u == _COMPUTE and self._epilogue_retire > start
        ready_before_epilogue = start
        if beside_epilogue and not (insn.opcode is _MATMUL and matmul_clear_of_epilogue(
                insn, self._beside_epilogue, self.config)):
            # Only a MATMUL clear of its rows starts beside a running EPILOGUE; anything else once it retired.
            if pipelined:
                # With matmul_overlap a MATMUL that touches its rows waits only until it has completed (and
                # still retires after it).
                ready = start = max(self._epilogue_end, ready_before_epilogue)
                beside_epilogue = self._epilogue_retire > start
            else:
                ready = start = self._epilogue_retire
                beside_epilogue = False

        if pops:
            for queue in pops:
                pushed = self._push_times[queue]
                popped = self._pop_times[queue]
                if len(popped) >= len(pushed):
                    raise ExecutionError(
                        ErrorCause.DEADLOCK,
                        f"{insn.format.mnemonic} pops a {_queue_name(TOKEN_QUEUES[queue])} token that no "
                        "earlier instruction pushed", pc=pc)
                start = max(start, pushed[len(popped)])
            for queue in pops:
                self._pop_times[queue].append(start)
        end = retire = start + cycles
        if overlapped:
            end, retire = self._overlapped_load(insn, start, end)
        elif pipelined:
            end = self._matmul_pipe.accept(insn, start)
            retire = max(end, self._matmul_retire)     # MATMULs retire in program order
        elif past_matmul:
            retire = max(retire, self._matmul_retire + 1)  # after the MATMUL it started beside
        beside = False
        if u == _COMPUTE:
            if insn.opcode is _PREDICATE and insn.args["mem"] is Memory.SPAD and not pushes:
                beside = True
            elif self._beside_end > retire:
                retire = self._beside_end   # retires once the PREDICATE beside it is done
            if beside_epilogue and self._epilogue_retire >= retire:
                retire = self._epilogue_retire + 1   # and the cycle after the EPILOGUE beside it retired
        finished = retire   # pushes may wait beyond this; waiting for the PREDICATE is no stall

        for queue in pushes:
            pushed = self._push_times[queue]
            push_time = retire
            waits_for = len(pushed) - self.config.token_depth
            if waits_for >= 0:
                popped = self._pop_times[queue]
                if waits_for >= len(popped):
                    raise ExecutionError(
                        ErrorCause.DEADLOCK,
                        f"{insn.format.mnemonic} pushes a {_queue_name(TOKEN_QUEUES[queue])} token into a "
                        f"full queue (token_depth={self.config.token_depth}) that no earlier "
                        "instruction drains", pc=pc)
                push_time = max(push_time, popped[waits_for])
            pushed.append(push_time)
            retire = max(retire, push_time)

        if insn.opcode is _PREDICATE:
            # Later instructions that name its register wait for the result (see add_keyed).
            self._predicate_end = end
            self._predicate_dst = insn.args["dst"]
        stall = (start - ready) + (retire - finished)
        slots.append(start)
        self._unit_free[u] = retire
        if beside:
            # The unit is free in the next cycle; the PREDICATE ends (and counts as retired) at `end`.
            self._unit_free[u] = start + 1
            self._beside_end = end
        elif self._epilogue_overlap and insn.opcode is _EPILOGUE and epilogue_runs_beside(insn, self.config):
            # The unit is free in the next cycle; the EPILOGUE retires (has pushed) at `retire`.
            self._unit_free[u] = start + 1
            self._beside_epilogue = insn
            self._epilogue_retire = retire
            self._epilogue_end = end
        if overlapped:
            self._load_retires.append(retire)
        if u == _COMPUTE and self._matmul_pipe is not None:
            self._matmul_follows = pipelined or past_matmul
            self._matmul_last = pipelined
            if pipelined:
                self._matmul_retire_before, self._matmul_retire = self._matmul_retire, retire
                self._last_matmul = insn
            elif past_matmul:
                self._matmul_floor = start + 1
        if retire > self._all_retired:
            self._all_retired = retire
        if pipelined:
            # Two MATMULs may be in flight: array_busy counts the cycles with at least one, as the unit does.
            cycles = max(0, end - max(start, self._matmul_busy_until))
            self._matmul_busy_until = max(self._matmul_busy_until, end)
        self._unit_busy[u] += cycles
        if busy is not None:
            if overlapped:
                # LOADs end in program order, so the cycles in flight are what this one adds after the
                # previous LOADs' end.
                counted = max(0, end - max(start, self._load_busy_until))
                self._load_busy_until = max(self._load_busy_until, end)
            else:
                counted = cycles
            self._busy[busy] += counted
            self.last_busy = counted
        else:
            self.last_busy = 0
        self.stall_dep += stall
        if not self.keep_entries:
            return None
        entry = _entry(index, insn, unit, dispatch, start, end, retire, stall, pc)
        self.entries.append(entry)
        return entry

    def _overlapped_load(self, insn: Instruction, start: int, end: int) -> tuple[int, int]:
        """(end, retire) of a LOAD starting at ``start`` with ``load_overlap`` > 1; ``end``: alone.

        The engine issues one row request per cycle and takes the next LOAD the cycle after the last
        (a zero LOAD issues nothing); data arrives in program order on one bus, so this LOAD's
        beats (or zero rows) follow the previous LOAD's after a hand-over of ``load_handover``
        (by default :func:`load_handover_cycles`); LOADs complete and retire in program order.
        """
        args = insn.args
        data_cycles = args["rows"] if args["zero"] else axi_beats(insn, self.config)
        requests = args["rows"]
        if self.load_stretch and not args["zero"]:
            data_cycles = int(round(data_cycles * (1.0 + self.load_stretch)))
            requests = int(round(requests * (1.0 + self.load_stretch)))
        self._load_issue_free = start + (1 if args["zero"] else requests + 1)
        end = max(end, self._load_data_end + data_cycles + self._handovers[1 if args["zero"] else 0])
        self._load_data_end = end
        return end, max(end, self._unit_free[_LOAD])

    def result(self) -> Schedule:
        return Schedule(list(self.entries), self.unit_busy, self.busy, self.stall_dep, self.cycles)


def _queue_name(queue: tuple[Unit, Unit]) -> str:
    return f"{queue[0].name.lower()}->{queue[1].name.lower()}"


def schedule(program: list[Instruction], config: Config, *, base: int = 0) -> Schedule:
    """Simulate the decoupled machine on a program and return when everything ran.

    Entries carry ``pc = base + 16 * index``.

    Raises :class:`~braze.isa.ExecutionError` (DEADLOCK) if program order is
    not a valid execution of the tokens (a pop before its push, a push into a
    queue that only a later pop drains).
    """
    scheduler = Scheduler(config)
    for index, insn in enumerate(program):
        scheduler.add(insn, pc=base + INSN_BYTES * index)
    return scheduler.result()
