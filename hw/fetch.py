"""Instruction fetch: program words from external memory into the control core's fetch stream.

The fetch unit is a client of :class:`~braze.hw.axi.ReadArbiter`.  On ``start`` it reads the
program from ``prog_base`` upwards in requests of :attr:`Fetch.BURST_BYTES`, ahead of the
dispatcher by up to ``depth`` words, and delivers the 128-bit words in order on ``fetch``
(:data:`~braze.hw.control.FETCH_ENTRY`: the word, its byte address ``pc``, ``error`` for a
word that got an AXI error response, and the word's MATMUL A extent, computed as the word enters
the FIFO so that the control core's range check has no multiplier in it).  A request is issued
only when the word FIFO has room for all of its words, so the unit takes its data beats at once and
does not stall the other clients of the shared read channel -- except on a 256-bit bus, where it
splits a beat into its two words over two cycles and refuses the next beat meanwhile, unless
``Config.fetch_skid`` gives it a second beat register.

A 128-bit word is two beats of a 64-bit bus, one beat of a 128-bit bus and half a beat of a
256-bit bus.  The program base must be 16-byte aligned; an unaligned base is reported as one
word with ``error`` set at ``pc = prog_base`` (the control core stops with FETCH_ERROR) and
no bus access.

``stop`` (the control core is done or failed) ends fetching; ``restart`` (a new start or a
soft reset) also empties the FIFO.  ``redirect`` (a taken BRANCH) empties it too and fetches on
from ``redirect_pc``, as a start there would.  Requests already handed to the bus cannot be recalled:
their beats are counted and dropped as they arrive, also across a restart, so a new run
never sees an old run's words.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, ResetInserter, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from braze.isa import INSN_BITS, INSN_BYTES, INSTRUCTION, Config
from braze.isa.timing import FETCH_BURST_BYTES, FETCH_DEPTH

from .axi import read_beat_layout, read_request_layout
from .control import FETCH_ENTRY, PC_BITS
from .decoder import A_EXTENT_BITS, a_extent

__all__ = ["Fetch"]

_WORD_ERROR = data.StructLayout({"word": unsigned(INSN_BITS), "error": unsigned(1),
                                 "a_extent": unsigned(A_EXTENT_BITS)})


class Fetch(wiring.Component):
    """Instruction fetch unit.

    Parameters
    ----------
    config : Config
        Sets the bus width (``dma_bus_bits``).
    depth : int
        Words the unit may hold or have requested ahead of the dispatcher; a power of two,
        at least ``BURST_BYTES // 16`` (default: the timing model's :data:`~braze.isa.timing.FETCH_DEPTH`).
    beats_width : int
        Width of a read request's ``beats`` field; must match the read master's.

    Attributes
    ----------
    start : In(1)
        Pulse: begin fetching at ``prog_base`` (drops every word of an earlier run).
    restart : In(1)
        Pulse: drop everything and stop (soft reset).  ``start`` implies it.
    stop : In(1)
        The program has ended (done or error): issue no further requests.
    prog_base : In(32)
        Byte address of the first instruction, sampled at ``start``.
    redirect : In(1)
        Pulse: drop every word fetched and continue at ``redirect_pc`` (a taken branch).
    redirect_pc : In(32)
        Byte address to continue at (16-byte aligned).
    hold : In(1)
        Only with ``Config.redirect_stage``: issue no request in this cycle (a BRANCH executes, and its
        redirect, if taken, comes in the next cycle: a request issued now would be dropped unused, and its
        beats would delay the target's).
    req : Out(stream.Signature(read_request_layout(32, beats_width)))
        Read requests, to a :class:`~braze.hw.axi.ReadArbiter` client port.
    data : In(stream.Signature(read_beat_layout(dma_bus_bits)))
        Data beats of those requests.
    fetch : Out(stream.Signature(FETCH_ENTRY))
        Program words in order, to :class:`~braze.hw.control.Control` ``fetch``.
    """

    #: Bytes per read request: four instructions (the timing model's, see
    #: :class:`braze.isa.timing.FetchStream`).
    BURST_BYTES = FETCH_BURST_BYTES

    def __init__(self, config: Config, *, depth: int = FETCH_DEPTH, beats_width: int = 16):
        if not isinstance(config, Config):
            raise TypeError(f"Fetch needs a braze.isa.Config, not {config!r}")
        burst_words = self.BURST_BYTES // INSN_BYTES
        if not isinstance(depth, int) or depth < burst_words or depth & (depth - 1):
            raise ValueError(f"Fetch: depth={depth!r} must be a power of two of at least {burst_words}")
        burst_beats = self.BURST_BYTES // config.dma_bus_bytes
        if not isinstance(beats_width, int) or not ceil_log2(burst_beats + 1) <= beats_width <= 32:
            raise ValueError(f"Fetch: beats_width={beats_width!r} must be from "
                             f"{ceil_log2(burst_beats + 1)} to 32")
        self.config = config
        self.depth = depth
        self.beats_width = beats_width
        members = {
            "start": In(1),
            "restart": In(1),
            "stop": In(1),
            "prog_base": In(PC_BITS),
            "redirect": In(1),
            "redirect_pc": In(PC_BITS),
            "req": Out(stream.Signature(read_request_layout(32, beats_width))),
            "data": In(stream.Signature(read_beat_layout(config.dma_bus_bits))),
            "fetch": Out(stream.Signature(FETCH_ENTRY)),
        }
        if config.redirect_stage:
            members["hold"] = In(1)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        bus_bytes = self.config.dma_bus_bytes
        bus_bits = bus_bytes * 8
        burst_beats = self.BURST_BYTES // bus_bytes
        burst_words = self.BURST_BYTES // INSN_BYTES
        restart = self.start | self.restart | self.redirect
        # A soft reset wins over a redirect; a start samples the program base.
        begins = self.start | (self.redirect & ~self.restart)
        base = Mux(self.start, self.prog_base, self.redirect_pc)

        m.submodules.words = words = ResetInserter(restart)(
            SyncFIFO(width=_WORD_ERROR.size, depth=self.depth))

        active = Signal()            # this run still wants words
        misaligned = Signal()        # the base is not 16-byte aligned: deliver one error word
        next_addr = Signal(PC_BITS)  # bus address of the next request
        out_pc = Signal(PC_BITS)     # pc of the word at the head of the FIFO
        skip_half = Signal()         # 256-bit bus: drop the low word of the first beat
        with m.If(restart):
            m.d.sync += [
                active.eq(begins),
                misaligned.eq(begins & (base[:exact_log2(INSN_BYTES)] != 0)),
                next_addr.eq(Cat(Const(0, exact_log2(bus_bytes)), base[exact_log2(bus_bytes):])),
                out_pc.eq(base),
                skip_half.eq(base[exact_log2(INSN_BYTES)] if bus_bytes > INSN_BYTES else 0),
            ]
        with m.Elif(self.stop):
            m.d.sync += active.eq(0)

        # Request side.  `reserved` counts words requested from the current run and not yet
        # in the FIFO (or dropped, for the skipped half beat); a request goes out only when
        # every word it brings has room.
        reserved = Signal(range(self.depth + 1))
        req_valid = Signal()                # a request is offered and must be held until taken
        req_addr = Signal(PC_BITS)          # its address, stable while offered (also across a restart)
        req_stale = Signal()                # the offered request belongs to an earlier run
        req_taken = self.req.valid & self.req.ready
        room = words.level + reserved + burst_words <= self.depth
        issue = active & ~self.stop & ~misaligned & ~req_valid & room & ~restart
        if self.config.redirect_stage:
            issue = issue & ~self.hold
        m.d.comb += [
            self.req.valid.eq(req_valid),
            self.req.payload.addr.eq(req_addr),
            self.req.payload.beats.eq(burst_beats),
        ]
        with m.If(issue):
            m.d.sync += [req_valid.eq(1), req_addr.eq(next_addr), next_addr.eq(next_addr + self.BURST_BYTES)]
        with m.Elif(req_taken):
            m.d.sync += req_valid.eq(0)
        with m.If(restart):
            m.d.sync += req_stale.eq(req_valid & ~req_taken)
        with m.Elif(req_taken):
            m.d.sync += req_stale.eq(0)

        # Requests taken by the bus whose last beat has not arrived: of this run, and stale.
        max_requests = self.depth // burst_words + 2
        outstanding = Signal(range(max_requests + 1))
        stale = Signal(range(2 * max_requests + 1))
        beat_taken = self.data.valid & self.data.ready
        request_ends = beat_taken & self.data.payload.last
        stale_beat = stale != 0
        current_beat = beat_taken & ~stale_beat & active
        with m.If(restart):
            m.d.sync += [
                stale.eq(stale + outstanding + req_taken - request_ends),
                outstanding.eq(0),
            ]
        with m.Else():
            m.d.sync += [
                stale.eq(stale + (req_taken & req_stale) - (request_ends & stale_beat)),
                outstanding.eq(outstanding + (req_taken & ~req_stale) - (request_ends & ~stale_beat)),
            ]

        # Data side: beats into words.
        push = Signal()
        push_data = Signal(_WORD_ERROR)
        dropped = Signal(range(3))          # words of reserved space given back unused
        beat = self.data.payload
        if bus_bytes < INSN_BYTES:
            # Two beats per word: hold the low half.
            low_valid = Signal()
            low = Signal(bus_bits)
            low_error = Signal()
            m.d.comb += self.data.ready.eq(1)
            with m.If(current_beat):
                with m.If(low_valid):
                    m.d.comb += [
                        push.eq(1),
                        push_data.word.eq(Cat(low, beat.data)),
                        push_data.error.eq(low_error | beat.error),
                    ]
                m.d.sync += [low_valid.eq(~low_valid), low.eq(beat.data), low_error.eq(beat.error)]
            with m.If(restart):
                m.d.sync += low_valid.eq(0)
        elif bus_bytes == INSN_BYTES:
            m.d.comb += [
                self.data.ready.eq(1),
                push.eq(current_beat),
                push_data.word.eq(beat.data),
                push_data.error.eq(beat.error),
            ]
        else:
            # Several words per beat: hold the beat and push its words one per cycle.
            per_beat = bus_bytes // INSN_BYTES
            held = Signal(bus_bits)
            held_error = Signal()
            held_index = Signal(range(per_beat + 1))    # next word of the held beat; per_beat: empty
            with m.If(held_index != per_beat):
                m.d.comb += [
                    push.eq(1),
                    push_data.word.eq(held.word_select(held_index, INSN_BITS)),
                    push_data.error.eq(held_error),
                ]
                m.d.sync += held_index.eq(held_index + 1)
            if self.config.fetch_skid:
                # A second beat register: a beat that arrives while the held one is still being split
                # waits here, so that a request's two beats are taken in consecutive cycles (its words
                # have room reserved in the FIFO) and the LOADs' beats behind them flow on.  The unit
                # still pushes one word a cycle: of back-to-back requests it takes a beat every other
                # cycle.
                spare = Signal(bus_bits)
                spare_error = Signal()
                spare_valid = Signal()
                held_free = (held_index == per_beat) | (held_index == per_beat - 1)   # after this cycle
                m.d.comb += self.data.ready.eq(~spare_valid | held_free | stale_beat | ~active)
                with m.If(spare_valid & held_free):
                    m.d.sync += [held.eq(spare), held_error.eq(spare_error), held_index.eq(0),
                                 spare_valid.eq(0)]
                with m.If(current_beat):
                    with m.If(held_free & ~spare_valid):
                        m.d.sync += [held.eq(beat.data), held_error.eq(beat.error), held_index.eq(skip_half)]
                        with m.If(skip_half):
                            m.d.comb += dropped.eq(1)
                            m.d.sync += skip_half.eq(0)
                    with m.Else():
                        m.d.sync += [spare.eq(beat.data), spare_error.eq(beat.error), spare_valid.eq(1)]
                with m.If(restart):
                    m.d.sync += [held_index.eq(per_beat), spare_valid.eq(0)]
            else:
                m.d.comb += self.data.ready.eq((held_index == per_beat) | stale_beat | ~active)
                with m.If(current_beat):
                    m.d.sync += [held.eq(beat.data), held_error.eq(beat.error), held_index.eq(skip_half)]
                    with m.If(skip_half):
                        m.d.comb += dropped.eq(1)
                        m.d.sync += skip_half.eq(0)
                with m.If(restart):
                    m.d.sync += held_index.eq(per_beat)

        # The word's MATMUL A extent goes into the FIFO with it (see FETCH_ENTRY).  Not with two
        # dispatch stages: the control core then computes it in its slot, a cycle ahead of the range
        # checks, and the multiplier is off the path from the bus into the FIFO.
        if self.config.dispatch_stage != 2:
            m.d.comb += push_data.a_extent.eq(a_extent(self.config, data.View(INSTRUCTION, push_data.word)))
        m.d.comb += [
            words.w_en.eq(push & ~restart),
            words.w_data.eq(push_data),
        ]
        with m.If(~restart):
            m.d.sync += reserved.eq(reserved + Mux(req_taken & ~req_stale, burst_words, 0)
                                    - (words.w_en & words.w_rdy) - dropped)
        with m.Else():
            m.d.sync += reserved.eq(0)

        # Output: the FIFO's head, or the one error word of a misaligned base.
        head = data.View(_WORD_ERROR, words.r_data)
        m.d.comb += [
            self.fetch.valid.eq((words.r_rdy | misaligned) & active),
            self.fetch.payload.word.eq(head.word),
            self.fetch.payload.pc.eq(out_pc),
            self.fetch.payload.error.eq(head.error | misaligned),
            self.fetch.payload.a_extent.eq(head.a_extent),
            words.r_en.eq(self.fetch.ready & active & ~misaligned),
        ]
        with m.If(self.fetch.valid & self.fetch.ready & ~restart):
            m.d.sync += out_pc.eq(out_pc + INSN_BYTES)
        return m
