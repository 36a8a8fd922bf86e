"""DMA engines: LOAD and STORE over AXI4, and the COUNTERS snapshot write-out.

Blocks
------
:class:`LoadEngine`
    Executes ``LOAD``: reads rows of external memory through an
    :class:`~braze.hw.axi.AXI4ReadMaster` (directly or through a
    :class:`~braze.hw.axi.ReadArbiter`), realigns each row's bytes and writes
    it through the DMA write port of the scratchpad or the accumulator
    (:class:`~braze.hw.memories.BankedMemory`).
:class:`StoreEngine`
    Executes ``STORE``: reads local rows through the DMA read ports, realigns
    them to the bus and writes them through an
    :class:`~braze.hw.axi.AXI4WriteMaster` with byte strobes.  It also
    executes the write-out of ``COUNTERS``: the 64-bit words of a snapshot
    from :class:`~braze.hw.counters.CounterBank` are packed onto the bus at any
    byte address.

Both engines report the end of each instruction with a one-cycle ``done``,
in program order; ``error`` is high in that same cycle if the instruction
failed, with ``cause`` = ``DRAM_RANGE``: an AXI error response (SLVERR or
DECERR) or an external range that runs past the 32-bit address space.  After
an error an engine issues no new rows but drains everything already in flight,
so it always ends and leaves the AXI masters idle.  The configuration range
checks (TILE_RANGE, SPAD_RANGE, ACC_RANGE) belong to
:class:`~braze.hw.decoder.Decoder`; the engines assume instructions that
passed them.

Row geometry
------------
Row ``r`` of a LOAD or STORE covers the ``len * element_bytes`` bytes
(1 per element for the scratchpad, 4, little-endian, for the accumulator)
from external byte address ``dram + r*stride``, at any alignment.  Its AXI
request starts at the bus word holding the first byte and has
``ceil((addr % bus_bytes + row_bytes) / bus_bytes)`` beats, the count the
``axi_*_beats`` counters define.  Every row is its own request, and the
LoadEngine keeps up to ``rows_in_flight`` of them outstanding, so long LOADs
and STOREs move one bus word per cycle when the bus allows it -- provided the
AXI masters' ``max_outstanding`` covers the memory latency: rows are often a
single beat, hence a single burst, and with 4 bursts outstanding and a
16-cycle latency a LOAD of one-beat rows gets about a quarter of the bus.

Performance events
------------------
``events`` carries this cycle's increments, one field per counter of
:data:`braze.isa.COUNTERS` that the engine contributes to, named like the
counter (``inc[Counter[name.upper()]] += events[name]``).  The ``spad_*`` and
``acc_*`` fields count this engine's own row accesses (one per row); do not
add them on top of :attr:`BankedMemory.reads <braze.hw.memories.BankedMemory>`
/ ``writes``, which already include the DMA ports.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, ValueLike, signed, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from braze.isa import INSTRUCTION, SNAPSHOT_BYTES, Config, ErrorCause, Memory

from .axi import (
    read_beat_layout,
    read_request_layout,
    write_beat_layout,
    write_request_layout,
    write_response_layout,
)
from .counters import SNAPSHOT_WORD
from .memories import read_port_signature, write_port_signature

__all__ = ["ADDR_WIDTH", "LoadEngine", "StoreEngine", "load_events_layout", "store_events_layout",
           "row_beats"]

#: External (AXI) byte address width.
ADDR_WIDTH = 32
# Row addresses are computed this wide, so that dram + r*stride never wraps silently.
_WIDE_ADDR_WIDTH = ADDR_WIDTH + 17
_SNAPSHOT_WORD_BYTES = 8


def row_beats(offset: int, row_bytes: int, bus_bytes: int) -> int:
    """Bus words covering ``row_bytes`` bytes that start ``offset`` bytes into a bus word."""
    return (offset + row_bytes + bus_bytes - 1) // bus_bytes


def _max_row_bytes(config: Config) -> int:
    return 4 * config.cols


def _row_layouts(config: Config) -> tuple[data.ArrayLayout, data.ArrayLayout]:
    """Rows of the scratchpad (int8) and of the accumulator (int32), as BankedMemory holds them."""
    return data.ArrayLayout(signed(8), config.cols), data.ArrayLayout(signed(32), config.cols)


def load_events_layout(config: Config) -> data.StructLayout:
    """Per-cycle counter increments of a :class:`LoadEngine`, named like the counters."""
    return data.StructLayout({
        "load_busy": unsigned(1),
        "stall_axi_read": unsigned(1),
        "dma_read_bytes": unsigned(ceil_log2(_max_row_bytes(config) + 1)),
        "axi_read_beats": unsigned(1),
        "spad_writes": unsigned(1),
        "acc_writes": unsigned(1),
    })


def store_events_layout(config: Config) -> data.StructLayout:
    """Per-cycle counter increments of a :class:`StoreEngine`, named like the counters."""
    return data.StructLayout({
        "store_busy": unsigned(1),
        "stall_axi_write": unsigned(1),
        "dma_write_bytes": unsigned(ceil_log2(max(_max_row_bytes(config), _SNAPSHOT_WORD_BYTES) + 1)),
        "axi_write_beats": unsigned(1),
        "spad_reads": unsigned(1),
        "acc_reads": unsigned(1),
    })


def _check_common(owner: str, config, beats_width) -> None:
    if not isinstance(config, Config):
        raise TypeError(f"{owner} needs a braze.isa.Config, not {config!r}")
    longest = max(row_beats(config.dma_bus_bytes - 1, _max_row_bytes(config), config.dma_bus_bytes),
                  row_beats(config.dma_bus_bytes - 1, SNAPSHOT_BYTES, config.dma_bus_bytes))
    if not isinstance(beats_width, int) or isinstance(beats_width, bool) or not \
            ceil_log2(longest + 1) <= beats_width <= 32:
        raise ValueError(f"{owner}: beats_width={beats_width!r} must be an integer from "
                         f"{ceil_log2(longest + 1)} (a request of up to {longest} beats) to 32")


def _element_bytes_shift(mem: ValueLike) -> Value:
    """log2 of the external bytes of one element of ``mem`` (1 for the scratchpad, 4 for the accumulator)."""
    return Mux(mem == Memory.ACC, 2, 0)


def _or_all(values: list, width: int) -> Value:
    """The OR of ``values``, ``width`` bits wide (0 for none)."""
    result = Const(0, width)
    for value in values:
        result = result | value
    return result


class LoadEngine(wiring.Component):
    """Executes LOAD instructions: external rows over AXI4 into the scratchpad or accumulator.

    For row ``r`` the engine requests the bus words covering ``len`` elements at
    ``dram + r*stride``, puts each beat's bytes in place in a row buffer as it
    arrives (a byte rotation by the row's offset within the bus word), and on the
    row's last beat writes local row ``addr + r``: the ``len`` elements, then zeros.
    Read requests run ahead of the data by up to ``rows_in_flight`` rows.  A row
    write refused by the memory (bank conflict with the compute unit) is held
    until accepted; meanwhile the engine stops taking beats once the next row is
    complete.  With ``zero`` set, rows of zeros are written, one per cycle, with no
    AXI traffic.

    Overlap (``config.load_overlap`` > 1): the engine takes the next LOAD as soon
    as every row request of the newest one is issued, up to ``load_overlap``
    instructions in flight, so that one LOAD's requests go out while the previous
    one's data arrives.  Each row request carries a ``last`` flag in the request
    FIFO; the data side works on the oldest instruction (``current``; the others
    wait in a FIFO of their parameters), writes its rows in order, and reports
    ``done`` once its last row is written -- so data and ``done`` stay in program
    order, zero LOADs included.  The first error (an AXI error response on one of
    ``current``'s rows, or a row past the address space found while issuing, which
    is reported with the instruction it belongs to) stops all issuing; the rows
    in flight are drained unwritten, and each instruction still held reports
    ``done`` in turn.  With ``load_overlap`` = 1 it behaves, cycle for cycle, as
    an engine that takes one instruction at a time.

    Parameters
    ----------
    config : Config
        Bus width (``dma_bus_bits``), row size (``cols``) and memory depths.
    beats_width : int
        Width of a read request's ``beats`` field; must match the read master's.
    rows_in_flight : int
        Rows whose read request has been accepted and whose data has not fully
        arrived; at least the bus latency in beats for full throughput.

    Attributes
    ----------
    insn : In(stream.Signature(INSTRUCTION))
        LOAD instructions (``args.load``), range-checked; ready while idle or (with
        overlap) while fewer than ``load_overlap`` are in flight, the newest one has
        issued all its row requests and no error stopped the engine.
    read_req : Out(stream.Signature(read_request_layout(32, beats_width)))
        To :class:`~braze.hw.axi.AXI4ReadMaster` ``req``: one request per row,
        bus-aligned address.
    read_data : In(stream.Signature(read_beat_layout(dma_bus_bits)))
        From the read master's ``data``; ``last`` is not used (the engine counts beats).
    spad_write, acc_write : Out(write_port_signature(..., handshake=True))
        To the ``dma_write`` port of the scratchpad / accumulator ``BankedMemory``.
    done : Out(1)
        One-cycle pulse: the instruction has ended and every row write is committed.
    error : Out(1)
        High with ``done`` when the instruction failed.
    cause : Out(ErrorCause)
        With ``error``: ``DRAM_RANGE``; ``NONE`` otherwise.
    busy : Out(1)
        An instruction is being executed (from acceptance to ``done``); with overlap,
        at least one is.  ``events.load_busy`` follows it, so with overlap the
        ``load_busy`` counter counts cycles with any LOAD in flight, as the timing
        model predicts it.
    events : Out(load_events_layout(config))
        Counter increments of this cycle (see the module documentation).
    """

    def __init__(self, config: Config, *, beats_width: int = 16, rows_in_flight: int = 32):
        _check_common("LoadEngine", config, beats_width)
        if not isinstance(rows_in_flight, int) or rows_in_flight < 2 or rows_in_flight & (rows_in_flight - 1):
            raise ValueError(f"LoadEngine: rows_in_flight={rows_in_flight!r} must be a power of two, "
                             "at least 2")
        self.config = config
        self.beats_width = beats_width
        self.rows_in_flight = rows_in_flight
        spad_row, acc_row = _row_layouts(config)
        super().__init__({
            "insn": In(stream.Signature(INSTRUCTION)),
            "read_req": Out(stream.Signature(read_request_layout(ADDR_WIDTH, beats_width))),
            "read_data": In(stream.Signature(read_beat_layout(config.dma_bus_bits))),
            "spad_write": Out(write_port_signature(ceil_log2(config.spad_rows), spad_row, handshake=True)),
            "acc_write": Out(write_port_signature(ceil_log2(config.acc_rows), acc_row, handshake=True)),
            "done": Out(1),
            "error": Out(1),
            "cause": Out(ErrorCause),
            "busy": Out(1),
            "events": Out(load_events_layout(config)),
        })

    def elaborate(self, platform):
        m = Module()
        config = self.config
        overlap = config.load_overlap
        bus_bytes = config.dma_bus_bytes
        shift = exact_log2(bus_bytes)
        row_bytes_max = _max_row_bytes(config)
        words = -(-row_bytes_max // bus_bytes)      # bus words in the row buffer
        max_beats = row_beats(bus_bytes - 1, row_bytes_max, bus_bytes)
        total_rows = 1 << len(self.insn.payload.args.load.rows)
        args = self.insn.payload.args.load

        # Instructions accepted and not yet done, and the error state they share.  Instructions are
        # numbered in acceptance order (modulo 2*overlap), so that a range error found while issuing
        # one is reported with that one, even while earlier ones still receive their data.
        tag_count = 2 * overlap
        in_flight = Signal(range(overlap + 1))
        halted = Signal()            # an error occurred: issue no more rows, drain those in flight
        next_tag = Signal(range(tag_count))
        range_failed = Signal()
        range_failed_tag = Signal(range(tag_count))
        accept = Signal()
        finished = Signal()
        issuing = Signal()           # the newest instruction still has row requests to issue
        # One instruction at a time: ready while none is in flight.  With overlap, also once every row
        # request of the newest one is issued (and no error stopped the engine).
        m.d.comb += [
            self.insn.ready.eq((in_flight == 0) | (~halted & ~issuing & (in_flight != overlap))),
            accept.eq(self.insn.valid & self.insn.ready),
        ]
        m.d.sync += in_flight.eq(in_flight + accept - finished)
        with m.If(accept):
            m.d.sync += next_tag.eq(next_tag + 1)
            with m.If(in_flight == 0):
                m.d.sync += [halted.eq(0), range_failed.eq(0)]
        accepted_row_bytes = args.len << _element_bytes_shift(args.mem)

        # --- Request side: one read request per row of the newest instruction, recorded in `meta`
        # for the data side; `last` marks the instruction's last row.
        issue_zero = Signal()
        issue_rows = Signal(range(total_rows))
        issue_row_bytes = Signal(range(row_bytes_max + 1))
        issue_stride = Signal(32)
        issue_tag = Signal(range(tag_count))
        req_row = Signal(range(total_rows + 1))
        req_addr = Signal(_WIDE_ADDR_WIDTH)
        with m.If(accept):
            m.d.sync += [
                issue_zero.eq(args.zero),
                issue_rows.eq(args.rows),
                issue_row_bytes.eq(accepted_row_bytes),
                issue_stride.eq(args.stride),
                issue_tag.eq(next_tag),
                req_row.eq(0),
                req_addr.eq(args.dram),
            ]

        meta_layout = data.StructLayout({"offset": unsigned(shift), "beats": range(max_beats + 1),
                                         "last": unsigned(1)})
        m.submodules.meta = meta = fifo.SyncFIFO(width=meta_layout.size, depth=self.rows_in_flight)
        req_offset = req_addr[:shift]
        req_beats = Signal(range(max_beats + 1))
        m.d.comb += req_beats.eq((req_offset + issue_row_bytes + bus_bytes - 1) >> shift)
        past_address_space = (req_addr + issue_row_bytes) > (1 << ADDR_WIDTH)
        m.d.comb += issuing.eq(~issue_zero & ~halted & (req_row != issue_rows))
        m.d.comb += [
            self.read_req.valid.eq(issuing & ~past_address_space & meta.w_rdy),
            self.read_req.payload.addr.eq(Cat(Const(0, shift), req_addr[shift:ADDR_WIDTH])),
            self.read_req.payload.beats.eq(req_beats),
            meta.w_en.eq(self.read_req.valid & self.read_req.ready),
            meta.w_data.eq(Cat(req_offset, req_beats, req_row + 1 == issue_rows)),
        ]
        with m.If(meta.w_en):
            m.d.sync += [req_row.eq(req_row + 1), req_addr.eq(req_addr + issue_stride)]
        with m.If(issuing & past_address_space):
            m.d.sync += [halted.eq(1), range_failed.eq(1), range_failed_tag.eq(issue_tag)]

        # --- Data side: the oldest instruction not yet done (`current`) writes its rows, in order.
        params_layout = data.StructLayout({
            "mem": Memory, "zero": unsigned(1), "first_row": unsigned(16), "rows": range(total_rows),
            "row_bytes": range(row_bytes_max + 1), "tag": range(tag_count)})
        accepted = Signal(params_layout)
        m.d.comb += [
            accepted.mem.eq(args.mem),
            accepted.zero.eq(args.zero),
            accepted.first_row.eq(args.addr),
            accepted.rows.eq(args.rows),
            accepted.row_bytes.eq(accepted_row_bytes),
            accepted.tag.eq(next_tag),
        ]
        active = Signal()            # `current` holds an instruction
        current = Signal(params_layout)
        failed = Signal()            # an AXI error response arrived for one of current's rows
        rows_done = Signal(range(total_rows + 1))    # current's rows whose last beat (or zero row) has passed
        all_received = Signal()      # current's last row has passed

        def begin(params):
            m.d.sync += [current.eq(params), active.eq(1), failed.eq(0), rows_done.eq(0),
                         all_received.eq(params.rows == 0)]

        if overlap == 1:
            with m.If(accept):
                begin(accepted)
            with m.Elif(finished):
                m.d.sync += active.eq(0)
        else:
            # Accepted instructions wait here while an earlier one is current.
            m.submodules.waiting = waiting = fifo.SyncFIFO(width=params_layout.size, depth=overlap)
            direct = accept & ~active & ~waiting.r_rdy
            from_waiting = waiting.r_rdy & (~active | finished)
            m.d.comb += [
                waiting.w_en.eq(accept & ~direct),
                waiting.w_data.eq(accepted),
                waiting.r_en.eq(from_waiting),
            ]
            with m.If(direct):
                begin(accepted)
            with m.Elif(from_waiting):
                begin(data.View(params_layout, waiting.r_data))
            with m.Elif(finished):
                m.d.sync += active.eq(0)
        current_failed = failed | (range_failed & (range_failed_tag == current.tag))
        row_bytes = current.row_bytes

        # The completed row waiting for the memory's write port.
        out_valid = Signal()
        out_row = Signal(16)
        out_bytes = Signal(row_bytes_max * 8)
        out_taken = Signal()
        m.d.comb += [
            self.spad_write.en.eq(out_valid & (current.mem == Memory.SPAD)),
            self.spad_write.addr.eq(out_row),
            self.spad_write.data.eq(out_bytes[:config.cols * 8]),
            self.acc_write.en.eq(out_valid & (current.mem == Memory.ACC)),
            self.acc_write.addr.eq(out_row),
            self.acc_write.data.eq(out_bytes),
            out_taken.eq(Mux(current.mem == Memory.ACC, self.acc_write.en & self.acc_write.ready,
                             self.spad_write.en & self.spad_write.ready)),
        ]
        out_free = ~out_valid | out_taken
        with m.If(out_taken):
            m.d.sync += out_valid.eq(0)

        # Place each beat's bytes in the row buffer.  The head row belongs to `current` until its last
        # row has passed; after an error every row in flight is drained (and not written).
        head = data.View(meta_layout, meta.r_data)
        owns_head = active & ~current.zero & ~all_received
        beat_index = Signal(range(max_beats))
        row_ends = beat_index == head.beats - 1
        beat = self.read_data.payload
        m.d.comb += self.read_data.ready.eq(meta.r_rdy & (owns_head | halted) & (~row_ends | out_free))
        beat_taken = self.read_data.valid & self.read_data.ready

        # Byte c of a beat rotated right by `offset` is byte c of bus word `beat_index` of the
        # row if c < bus_bytes - offset, else byte c of word `beat_index - 1`.
        rotated = Cat(beat.data, beat.data).bit_select(head.offset * 8, bus_bytes * 8)
        to_this_word = Signal(bus_bytes)
        m.d.comb += to_this_word.eq(Cat(c < bus_bytes - head.offset for c in range(bus_bytes)))
        row_buffer = [Signal(bus_bytes * 8, name=f"row_word{k}") for k in range(words)]
        merged = []
        for k, word in enumerate(row_buffer):
            byte_enable = (Mux(beat_index == k, to_this_word, 0)
                           | Mux(beat_index == k + 1, ~to_this_word, 0))
            merged.append(Cat(Mux(byte_enable[c], rotated.word_select(c, 8), word.word_select(c, 8))
                              for c in range(bus_bytes)))
        keep = Cat(Mux(j < row_bytes, 0xff, 0x00) for j in range(row_bytes_max))
        completed_row = Cat(*merged)[:row_bytes_max * 8] & keep

        row_written = Signal()       # this beat completes one of current's rows, to be written
        m.d.comb += row_written.eq(beat_taken & row_ends & owns_head & ~current_failed & ~beat.error)
        with m.If(beat_taken):
            m.d.sync += [word.eq(new) for word, new in zip(row_buffer, merged, strict=True)]
            with m.If(beat.error):
                m.d.sync += halted.eq(1)
                with m.If(owns_head):
                    m.d.sync += failed.eq(1)
            with m.If(row_ends):
                m.d.comb += meta.r_en.eq(1)
                m.d.sync += beat_index.eq(0)
                with m.If(owns_head):
                    m.d.sync += rows_done.eq(rows_done + 1)
                    with m.If(head.last):
                        m.d.sync += all_received.eq(1)
                with m.If(row_written):
                    m.d.sync += [
                        out_valid.eq(1),
                        out_row.eq(current.first_row + rows_done),
                        out_bytes.eq(completed_row),
                    ]
            with m.Else():
                m.d.sync += beat_index.eq(beat_index + 1)

        # `zero`: one row of zeros per cycle, through the same output register.
        with m.If(active & current.zero & ~halted & (rows_done != current.rows) & out_free):
            m.d.sync += [
                out_valid.eq(1),
                out_row.eq(current.first_row + rows_done),
                out_bytes.eq(0),
                rows_done.eq(rows_done + 1),
            ]

        # End of `current`: every row received and written -- or, after an error, nothing left in
        # flight (the engine issues no more rows).
        drained = halted & ~meta.r_rdy
        rows_over = Mux(current.zero, rows_done == current.rows, all_received) | drained
        m.d.comb += finished.eq(active & rows_over & ~out_valid)
        m.d.comb += [
            self.done.eq(finished),
            self.error.eq(finished & current_failed),
            self.cause.eq(Mux(finished & current_failed, ErrorCause.DRAM_RANGE, ErrorCause.NONE)),
            self.busy.eq(in_flight != 0),
        ]

        events = self.events
        m.d.comb += [
            events.load_busy.eq(self.busy),
            events.stall_axi_read.eq(self.busy & ((self.read_req.valid & ~self.read_req.ready)
                                                  | (meta.r_rdy & ~self.read_data.valid))),
            events.axi_read_beats.eq(beat_taken),
            events.dma_read_bytes.eq(Mux(row_written, row_bytes, 0)),
            events.spad_writes.eq(out_taken & (current.mem == Memory.SPAD)),
            events.acc_writes.eq(out_taken & (current.mem == Memory.ACC)),
        ]
        return m


class StoreEngine(wiring.Component):
    """Executes STORE instructions and the write-out of COUNTERS snapshots over AXI4.

    STORE: local rows are read through the DMA read port (a read refused on a
    bank conflict is held until accepted), two rows at most between the memory
    and the bus packer.  For each row one write request of
    ``ceil((addr % bus_bytes + row_bytes) / bus_bytes)`` beats goes to the write
    master ahead of its data: when the row is read, or with
    ``Config.store_ahead`` from a sequencer of its own, up to
    :attr:`REQUESTS_AHEAD` rows before the row is read (so that the data of
    one-beat rows need not wait for their addresses to reach the memory); the
    packer shifts the row out one bus word per beat, rotated to the row's byte
    offset, with ``strb`` set exactly on the row's bytes.

    COUNTERS: after accepting the instruction the engine consumes one snapshot
    from ``snapshot`` (64-bit words in counter order, up to ``last``) and writes
    its ``len(COUNTERS) * 8`` bytes to ``dram`` (any byte address) as one
    request.  The words pass through a byte queue of one bus word plus one
    counter word, so a word is taken in any cycle the bus has room for it.  If
    ``dram`` is so high that the snapshot would pass the 32-bit address space,
    the words are consumed and dropped and the instruction ends with an error.

    ``done`` comes when the write response of the instruction's last request
    has arrived.  STORE and COUNTERS are never executed at once.

    Parameters
    ----------
    config : Config
        Bus width (``dma_bus_bits``), row size (``cols``) and memory depths.
    beats_width : int
        Width of a write request's ``beats`` field; must match the write master's.

    Attributes
    ----------
    insn : In(stream.Signature(INSTRUCTION))
        STORE instructions (``args.store``), range-checked; ready while idle.
    counters : In(stream.Signature(INSTRUCTION))
        COUNTERS instructions (``args.counters.dram``); ready while idle and no
        STORE is offered.
    snapshot : In(stream.Signature(SNAPSHOT_WORD))
        From :class:`~braze.hw.counters.CounterBank` ``words``.
    spad_read, acc_read : Out(read_port_signature(..., handshake=True))
        To the ``dma_read`` port of the scratchpad / accumulator ``BankedMemory``.
    write_req : Out(stream.Signature(write_request_layout(32, beats_width)))
        To :class:`~braze.hw.axi.AXI4WriteMaster` ``req``.
    write_data : Out(stream.Signature(write_beat_layout(dma_bus_bits)))
        To the write master's ``data``.
    write_resp : In(stream.Signature(write_response_layout()))
        From the write master's ``resp``; always ready.
    done, error, cause, busy
        As for :class:`LoadEngine`; ``busy`` covers STORE and COUNTERS.
    events : Out(store_events_layout(config))
        Counter increments of this cycle; ``store_busy`` counts STORE only, the
        bytes and beats count both.
    """

    #: Rows that may be read from local memory and not yet be in the packer.
    ROW_BUFFER_DEPTH = 2
    #: With ``Config.store_ahead``: write requests the engine may hold ahead of the write master (each
    #: the request of a row not read yet, or read and not yet sent): enough to cover the way of an
    #: address through the write master and the memory's address queue before its data comes.
    REQUESTS_AHEAD = 8

    def __init__(self, config: Config, *, beats_width: int = 16):
        _check_common("StoreEngine", config, beats_width)
        self.config = config
        self.beats_width = beats_width
        spad_row, acc_row = _row_layouts(config)
        super().__init__({
            "insn": In(stream.Signature(INSTRUCTION)),
            "counters": In(stream.Signature(INSTRUCTION)),
            "snapshot": In(stream.Signature(SNAPSHOT_WORD)),
            "spad_read": Out(read_port_signature(ceil_log2(config.spad_rows), spad_row, handshake=True)),
            "acc_read": Out(read_port_signature(ceil_log2(config.acc_rows), acc_row, handshake=True)),
            "write_req": Out(stream.Signature(write_request_layout(ADDR_WIDTH, beats_width))),
            "write_data": Out(stream.Signature(write_beat_layout(config.dma_bus_bits))),
            "write_resp": In(stream.Signature(write_response_layout())),
            "done": Out(1),
            "error": Out(1),
            "cause": Out(ErrorCause),
            "busy": Out(1),
            "events": Out(store_events_layout(config)),
        })

    def elaborate(self, platform):
        m = Module()
        config = self.config
        bus_bytes = config.dma_bus_bytes
        shift = exact_log2(bus_bytes)
        row_bytes_max = _max_row_bytes(config)
        words = -(-row_bytes_max // bus_bytes)
        max_beats = max(row_beats(bus_bytes - 1, row_bytes_max, bus_bytes),
                        row_beats(bus_bytes - 1, SNAPSHOT_BYTES, bus_bytes))
        total_rows = 1 << len(self.insn.payload.args.store.rows)

        # The instruction being executed.
        active = Signal()
        snapshotting = Signal()      # executing COUNTERS rather than STORE
        mem = Signal(Memory)
        first_row = Signal(16)
        rows = Signal(range(total_rows))
        row_bytes = Signal(range(row_bytes_max + 1))
        stride = Signal(32)
        failed = Signal()

        store = self.insn.payload.args.store
        m.d.comb += [
            self.insn.ready.eq(~active),
            self.counters.ready.eq(~active & ~self.insn.valid),
        ]
        take_store = self.insn.valid & self.insn.ready
        take_counters = self.counters.valid & self.counters.ready
        with m.If(take_store):
            m.d.sync += [
                active.eq(1),
                snapshotting.eq(0),
                mem.eq(store.mem),
                first_row.eq(store.addr),
                rows.eq(store.rows),
                row_bytes.eq(store.len << _element_bytes_shift(store.mem)),
                stride.eq(store.stride),
                failed.eq(0),
            ]
        with m.If(take_counters):
            m.d.sync += [active.eq(1), snapshotting.eq(1), failed.eq(0)]
        storing = active & ~snapshotting

        # Write requests wait here for the write master, ahead of their data.
        request_layout = data.StructLayout({"word": unsigned(ADDR_WIDTH - shift),
                                            "beats": range(max_beats + 1)})
        ahead = bool(config.store_ahead)
        m.submodules.requests = requests = fifo.SyncFIFO(
            width=request_layout.size, depth=self.REQUESTS_AHEAD if ahead else self.ROW_BUFFER_DEPTH + 2)
        queued = data.View(request_layout, requests.r_data)
        m.d.comb += [
            self.write_req.valid.eq(requests.r_rdy),
            self.write_req.payload.addr.eq(Cat(Const(0, shift), queued.word)),
            self.write_req.payload.beats.eq(queued.beats),
            requests.r_en.eq(self.write_req.valid & self.write_req.ready),
        ]

        # Completions still to come: one per request the master has taken.
        pending = Signal(range(total_rows + 1))
        m.d.comb += self.write_resp.ready.eq(1)
        response = self.write_resp.valid & self.write_resp.ready
        m.d.sync += pending.eq(pending + requests.r_en - response)
        with m.If(response & self.write_resp.payload.error):
            m.d.sync += failed.eq(1)

        beat_sent = Signal()
        m.d.comb += beat_sent.eq(self.write_data.valid & self.write_data.ready)

        # --- STORE: sequencer, local reads, packer --------------------------------------------

        # Sequencer: one local read and one write request per row.
        next_row = Signal(range(total_rows + 1))
        next_addr = Signal(_WIDE_ADDR_WIDTH)
        with m.If(take_store):
            m.d.sync += [next_row.eq(0), next_addr.eq(store.dram)]
        offset = next_addr[:shift]
        if ahead:
            # Config.store_ahead: a sequencer of its own issues the write requests, up to REQUESTS_AHEAD
            # rows ahead of the local reads, so that a row's address has reached the memory when its data
            # does (else the data waits on the address's way through the write master and the memory,
            # and two rows buffered cannot cover it).  Only rows whose request was issued are read:
            # after an error the requests stop, and the rows already requested still send their data.
            request_row = Signal(range(total_rows + 1))
            request_addr = Signal(_WIDE_ADDR_WIDTH)
            with m.If(take_store):
                m.d.sync += [request_row.eq(0), request_addr.eq(store.dram)]
            request_offset = request_addr[:shift]
            past_address_space = (request_addr + row_bytes) > (1 << ADDR_WIDTH)
            want_request = storing & ~failed & (request_row != rows)
            with m.If(want_request & ~past_address_space & requests.w_rdy):
                m.d.comb += [
                    requests.w_en.eq(1),
                    requests.w_data.eq(Cat(
                        request_addr[shift:ADDR_WIDTH],
                        ((request_offset + row_bytes + bus_bytes - 1) >> shift)[:len(queued.beats)])),
                ]
                m.d.sync += [request_row.eq(request_row + 1), request_addr.eq(request_addr + stride)]
            with m.If(want_request & past_address_space):
                m.d.sync += failed.eq(1)
            want_row = storing & (next_row != request_row)
        else:
            past_address_space = (next_addr + row_bytes) > (1 << ADDR_WIDTH)
            want_row = storing & ~failed & (next_row != rows)

        # Rows read and not yet in the packer: one in the memory's read cycle, the rest in `fetched`.
        row_layout = data.StructLayout({"bytes": unsigned(row_bytes_max * 8), "offset": unsigned(shift)})
        m.submodules.fetched = fetched = fifo.SyncFIFO(width=row_layout.size, depth=self.ROW_BUFFER_DEPTH)
        reading = Signal()           # a read was accepted last cycle; its row arrives now
        reading_offset = Signal(shift)
        room = fetched.level + reading - fetched.r_en < self.ROW_BUFFER_DEPTH

        # (With store_ahead a row is read only once its request is in the queue.)
        issue = want_row & room if ahead else want_row & ~past_address_space & room & requests.w_rdy
        local_addr = (first_row + next_row)[:16]
        m.d.comb += [
            self.spad_read.en.eq(issue & (mem == Memory.SPAD)),
            self.spad_read.addr.eq(local_addr),
            self.acc_read.en.eq(issue & (mem == Memory.ACC)),
            self.acc_read.addr.eq(local_addr),
        ]
        row_read = Signal()
        m.d.comb += row_read.eq(issue & Mux(mem == Memory.ACC, self.acc_read.ready, self.spad_read.ready))
        with m.If(row_read):
            if not ahead:
                beats = (offset + row_bytes + bus_bytes - 1) >> shift
                m.d.comb += [
                    requests.w_en.eq(1),
                    requests.w_data.eq(Cat(next_addr[shift:ADDR_WIDTH], beats[:len(queued.beats)])),
                ]
            m.d.sync += [next_row.eq(next_row + 1), next_addr.eq(next_addr + stride)]
        m.d.sync += [reading.eq(row_read), reading_offset.eq(offset)]
        if not ahead:
            with m.If(want_row & past_address_space):
                m.d.sync += failed.eq(1)

        local_row = Mux(mem == Memory.ACC, self.acc_read.data.as_value(), self.spad_read.data.as_value())
        m.d.comb += [
            fetched.w_en.eq(reading),
            fetched.w_data.eq(Cat(local_row, reading_offset)),
        ]

        # Packer: the row in bus words, shifted down one word per beat; `previous` is the word
        # shifted out last, whose high bytes begin the next beat when the row is unaligned.
        loaded = Signal()
        remaining = Signal(words * bus_bytes * 8)
        previous = Signal(bus_bytes * 8)
        row_offset = Signal(shift)
        position = Signal(range(row_bytes_max + 2 * bus_bytes))    # window byte at lane 0 of this beat
        row_end = Signal(range(row_bytes_max + bus_bytes))         # window byte just after the row

        window = Cat(previous, remaining[:bus_bytes * 8])
        window_start = Signal(range(bus_bytes + 1))    # first window byte of this beat
        m.d.comb += window_start.eq(bus_bytes - row_offset)
        row_beat_data = window.bit_select(window_start * 8, bus_bytes * 8)
        row_beat_strobes = Cat((position + lane >= row_offset) & (position + lane < row_end)
                               for lane in range(bus_bytes))
        row_last_beat = position + bus_bytes >= row_end
        row_beat_sent = beat_sent & storing
        with m.If(row_beat_sent):
            m.d.sync += [
                previous.eq(remaining[:bus_bytes * 8]),
                remaining.eq(remaining >> (bus_bytes * 8)),
                position.eq(position + bus_bytes),
            ]
            with m.If(row_last_beat):
                m.d.sync += loaded.eq(0)
        head = data.View(row_layout, fetched.r_data)
        m.d.comb += fetched.r_en.eq(fetched.r_rdy & (~loaded | (row_beat_sent & row_last_beat)))
        with m.If(fetched.r_en):
            m.d.sync += [
                loaded.eq(1),
                remaining.eq(head.bytes),
                previous.eq(0),
                row_offset.eq(head.offset),
                position.eq(0),
                row_end.eq(head.offset + row_bytes),
            ]
        rows_idle = ~want_row & ~reading & ~fetched.r_rdy & ~loaded
        if ahead:
            rows_idle &= ~want_request

        # --- COUNTERS: the snapshot's words packed onto the bus ----------------------------------

        # A byte queue of bus_bytes + 8 bytes: words enter at byte `fill`, beats leave from byte 0.
        word_bytes = _SNAPSHOT_WORD_BYTES
        queue_bytes = bus_bytes + word_bytes
        queue = Signal(queue_bytes * 8)
        queue_strobes = Signal(queue_bytes)
        fill = Signal(range(queue_bytes + 1))
        ended = Signal()             # the snapshot's last word has been taken
        discard = Signal()           # the snapshot lies past the address space: drop its words

        snapshot_dram = self.counters.payload.args.counters.dram
        snapshot_offset = snapshot_dram[:shift]
        snapshot_past_space = snapshot_dram + SNAPSHOT_BYTES > (1 << ADDR_WIDTH)
        with m.If(take_counters):
            m.d.sync += [
                queue.eq(0),
                queue_strobes.eq(0),
                fill.eq(snapshot_offset),    # the lanes below the start address are never strobed
                ended.eq(0),
                discard.eq(snapshot_past_space),
            ]
            with m.If(snapshot_past_space):
                m.d.sync += failed.eq(1)
            with m.Else():
                m.d.comb += [
                    requests.w_en.eq(1),
                    requests.w_data.eq(Cat(
                        snapshot_dram[shift:ADDR_WIDTH],
                        ((snapshot_offset + SNAPSHOT_BYTES + bus_bytes - 1) >> shift)[:len(queued.beats)])),
                ]

        snapshotting_now = active & snapshotting
        snapshot_beat_valid = snapshotting_now & ~discard & ((fill >= bus_bytes) | (ended & (fill != 0)))
        snapshot_beat_sent = beat_sent & snapshotting
        # The fill after this cycle's beat, both ways: whether a beat leaves (the bus's ready, late in
        # the cycle) only picks one of two placements made from registers.
        fill_if_sent = Signal(range(queue_bytes + 1))
        m.d.comb += fill_if_sent.eq(Mux(fill > bus_bytes, fill - bus_bytes, 0))
        fill_after = Mux(snapshot_beat_sent, fill_if_sent, fill)
        m.d.comb += self.snapshot.ready.eq(snapshotting_now & ~ended & (
            Mux(snapshot_beat_sent, fill_if_sent <= bus_bytes, fill <= bus_bytes) | discard))
        word_taken = self.snapshot.valid & self.snapshot.ready

        kept = Mux(snapshot_beat_sent, queue >> (bus_bytes * 8), queue)
        kept_strobes = Mux(snapshot_beat_sent, queue_strobes >> bus_bytes, queue_strobes)
        word = self.snapshot.payload.value

        def placed_at(position: Value) -> tuple[Value, Value]:
            """The word's bytes and strobes in the queue when it enters at byte ``position``: an OR of
            the one matching placement per byte, not a chain of multiplexers."""
            placed, strobes = [], []
            for byte in range(queue_bytes):
                heres = [(position == byte - i, i) for i in range(word_bytes) if 0 <= byte - i <= bus_bytes]
                placed.append(_or_all([here.replicate(8) & word.word_select(i, 8) for here, i in heres], 8))
                strobes.append(_or_all([here for here, _ in heres], 1))
            return Cat(*placed), Cat(*strobes)

        placed_if_sent, strobes_if_sent = placed_at(fill_if_sent)
        placed_if_kept, strobes_if_kept = placed_at(fill)
        placed = Mux(snapshot_beat_sent, placed_if_sent, placed_if_kept)
        placed_strobes = Mux(snapshot_beat_sent, strobes_if_sent, strobes_if_kept)
        with m.If(word_taken & ~discard):
            m.d.sync += [
                queue.eq(kept | placed),
                queue_strobes.eq(kept_strobes | placed_strobes),
                fill.eq(fill_after + word_bytes),
            ]
        with m.Elif(snapshot_beat_sent):
            m.d.sync += [queue.eq(kept), queue_strobes.eq(kept_strobes), fill.eq(fill_after)]
        with m.If(word_taken & self.snapshot.payload.last):
            m.d.sync += ended.eq(1)
        snapshot_idle = ~snapshotting_now | (ended & ((fill == 0) | discard))

        # --- the write data stream, completion and events --------------------------------------

        with m.If(snapshotting):
            m.d.comb += [
                self.write_data.valid.eq(snapshot_beat_valid),
                self.write_data.payload.data.eq(queue[:bus_bytes * 8]),
                self.write_data.payload.strb.eq(queue_strobes[:bus_bytes]),
            ]
        with m.Else():
            m.d.comb += [
                self.write_data.valid.eq(loaded),
                self.write_data.payload.data.eq(row_beat_data),
                self.write_data.payload.strb.eq(row_beat_strobes),
            ]

        finished = active & rows_idle & snapshot_idle & ~requests.r_rdy & (pending == 0)
        with m.If(finished):
            m.d.sync += active.eq(0)
        m.d.comb += [
            self.done.eq(finished),
            self.error.eq(finished & failed),
            self.cause.eq(Mux(finished & failed, ErrorCause.DRAM_RANGE, ErrorCause.NONE)),
            self.busy.eq(active),
        ]

        data_left = ~(rows_idle & snapshot_idle)
        events = self.events
        m.d.comb += [
            events.store_busy.eq(storing),
            events.stall_axi_write.eq(active & ~beat_sent & (
                self.write_data.valid | self.write_req.valid | (~data_left & (pending != 0)))),
            events.axi_write_beats.eq(beat_sent),
            events.dma_write_bytes.eq(Mux(row_beat_sent & row_last_beat, row_bytes, 0)
                                      | Mux(word_taken & ~discard, word_bytes, 0)),
            events.spad_reads.eq(self.spad_read.en & self.spad_read.ready),
            events.acc_reads.eq(self.acc_read.en & self.acc_read.ready),
        ]
        return m
