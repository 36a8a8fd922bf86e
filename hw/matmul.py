"""The MATMUL execution unit: scratchpad rows through the PE array into accumulator rows."""

from amaranth.hdl import Elaboratable, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from braze.isa.config import Config
from braze.isa.encoding import INSTRUCTION
from braze.isa.timing import MATMUL_LATENCY
from braze.isa.timing import matmul_cycles as _timing_matmul_cycles

from .memories import read_port_signature, write_port_signature
from .pe_array import PEArray

__all__ = ["MATMUL_LATENCY", "MatmulUnit", "matmul_cycles"]

# MATMUL_LATENCY (braze.isa.timing) is what this unit takes beyond ``chunks*(rows + m) + rows + cols``:
# the scratchpad read, the adder stage before the accumulator write, and the write itself.


def matmul_cycles(config: Config, m: int, k: int) -> int:
    """Cycles from accepting a MATMUL to its ``done``: the timing contract
    (:func:`braze.isa.timing.matmul_cycles`, its single source)."""
    return _timing_matmul_cycles(config, m, k)


class MatmulUnit(wiring.Component):
    """Executes ``MATMUL`` instructions on a :class:`~braze.hw.pe_array.PEArray`.

    One instruction at a time.  For each K-chunk ``c`` (``chunks = ceil(k/rows)``)
    the unit spends ``rows`` cycles reading B rows ``b + c*rows + rows-1 .. b +
    c*rows`` (last first, the order the array preloads them; rows at or beyond
    ``k`` are not read and preload zero weights), then ``m`` cycles reading A
    rows ``a + c*a_stride + i``, one per cycle on the scratchpad compute read
    port.  Result row ``i`` of chunk ``c`` leaves the array ``rows + cols``
    cycles after its A row entered; one cycle earlier the unit reads
    accumulator row ``acc + i`` (unless this is chunk 0 of a MATMUL without
    ``accumulate``), then adds, then writes the row with columns ``0..n-1``
    enabled.  A chunk's accumulator write comes ``rows + m`` cycles after the
    previous chunk's write of the same row, so the read always sees it.

    **Weight preload** (``config.weight_preload``).  The unit has a second
    scratchpad read port, ``weight_read``, for the B rows.  Chunk 0's weights
    are read on it first (``rows`` cycles), then chunk ``c``'s A rows stream on
    ``spad_read`` while chunk ``c+1``'s B rows are read on ``weight_read`` in
    cycles 1 to ``rows`` of the stream (the PE array's shadow registers take
    them as the current chunk computes; not from cycle 0, as the array needs
    a cycle without a weight shift between two preloads).  Chunk ``c+1``
    starts streaming ``max(m, rows + 1)`` cycles after chunk ``c``, the first
    cycle after its weights are in.  So
    a chunk's accumulator write comes at least ``rows + 1 >= 3`` cycles after
    the previous chunk's write of the same row, and the read sees it.

    Timing: if the instruction is accepted in cycle 0, ``done`` is high in cycle
    ``chunks*(rows + m) + rows + cols + MATMUL_LATENCY``, with weight preload
    ``rows + (chunks-1)*max(m, rows+1) + m + rows + cols + MATMUL_LATENCY`` (see
    :func:`matmul_cycles`), the first cycle in which every accumulator write
    is committed.  ``insn.ready`` is high when idle and in the ``done`` cycle,
    so instructions can follow back to back.  ``busy`` is high from the cycle
    after acceptance through the ``done`` cycle: exactly ``matmul_cycles``
    cycles per instruction.

    **Two in flight** (``config.matmul_overlap``, with weight preload).  The unit
    takes the next MATMUL from the cycle its current one's last chunk begins
    streaming (``insn.ready``), if the MATMUL before that one is done (in its
    ``done`` cycle at the earliest): at most two are in flight.  The next one's
    chunk-0 B rows are read on ``weight_read`` in the ``rows`` cycles after it
    was accepted, and its first chunk streams once those are in, the current
    one's A rows have all been read, and -- if it accumulates into rows the
    current one writes -- ``acc - acc' + 3`` cycles after the current one's last
    chunk began (``acc'`` its accumulator row): then each such row is read the
    cycle after the current one wrote it at the earliest
    (:func:`braze.isa.timing.matmul_hazard_gap`).  The output stage follows
    each instruction's rows with its own descriptor (accumulator row, ``n``,
    ``k``, ``accumulate``), switching at the last row of an instruction, so
    ``done`` pulses once per instruction, in order.  The cycles are
    :class:`braze.isa.timing.MatmulPipe`'s; alone (accepted while idle) an
    instruction takes :func:`matmul_cycles`.  ``busy`` is high while at least one
    instruction is in flight (from the cycle after its acceptance through its
    ``done`` cycle), so it counts the union, not the sum, of their cycles.

    The instruction must be a legal ``MATMUL`` whose range checks passed
    (see :mod:`braze.isa.encoding`); the unit reads ``insn.payload.args.matmul``
    only.

    Parameters
    ----------
    config : Config
        The accelerator build (``rows``, ``cols``, ``spad_rows``, ``acc_rows``,
        ``weight_preload``).

    Attributes
    ----------
    insn : In(stream.Signature(INSTRUCTION))
        Decoded MATMUL instructions.
    spad_read : Out(read_port_signature(ceil_log2(spad_rows), ArrayLayout(signed(8), cols)))
        To the scratchpad's compute read port.
    weight_read : Out(read_port_signature(ceil_log2(spad_rows), ArrayLayout(signed(8), cols)))
        With ``weight_preload`` only: to the scratchpad's weight read port (B rows).
    acc_read : Out(read_port_signature(ceil_log2(acc_rows), ArrayLayout(signed(32), cols)))
        To the accumulator's compute read port.
    acc_write : Out(write_port_signature(ceil_log2(acc_rows), ArrayLayout(signed(32), cols)))
        To the accumulator's compute write port.
    done : Out(1)
        One-cycle pulse: the instruction has completed.
    busy : Out(1)
        An instruction is executing (for the ``array_busy`` counter).
    macs : Out(range(rows*cols + 1))
        Multiply-accumulates completed in this cycle: ``n * (rows of the chunk
        within k)`` with each accumulator write; ``m*n*k`` per instruction.
    spad_read_pulse, acc_read_pulse, acc_write_pulse : Out(1)
        One row read or written in this cycle: ``chunks*m + k`` scratchpad
        reads, ``m*chunks`` (``accumulate``) or ``m*(chunks-1)`` accumulator
        reads, and ``m*chunks`` accumulator writes per instruction.
    weight_read_pulse : Out(1)
        With ``weight_preload`` only: a B row read on ``weight_read`` in this
        cycle (``spad_read_pulse`` then counts the A rows): ``k`` per instruction.
    """

    def __init__(self, config: Config):
        if not isinstance(config, Config):
            raise TypeError(f"MatmulUnit needs a braze.isa.Config, not {config!r}")
        self.config = config
        self.array_latency = config.rows + config.cols
        spad_row = data.ArrayLayout(signed(8), config.cols)
        acc_row = data.ArrayLayout(signed(32), config.cols)
        preload = {}
        if config.weight_preload:
            preload = {"weight_read": Out(read_port_signature(ceil_log2(config.spad_rows), spad_row)),
                       "weight_read_pulse": Out(1)}
        super().__init__({
            **preload,
            "insn": In(stream.Signature(INSTRUCTION)),
            "spad_read": Out(read_port_signature(ceil_log2(config.spad_rows), spad_row)),
            "acc_read": Out(read_port_signature(ceil_log2(config.acc_rows), acc_row)),
            "acc_write": Out(write_port_signature(ceil_log2(config.acc_rows), acc_row)),
            "done": Out(1),
            "busy": Out(1),
            "macs": Out(range(config.rows * config.cols + 1)),
            "spad_read_pulse": Out(1),
            "acc_read_pulse": Out(1),
            "acc_write_pulse": Out(1),
        })

    def elaborate(self, platform) -> Elaboratable:
        if self.config.matmul_overlap:
            return self._elaborate_two_in_flight()
        m = Module()
        rows, cols = self.config.rows, self.config.cols
        array = m.submodules.array = PEArray(rows, cols)

        # The instruction, latched when accepted.
        args = self.insn.payload.args.matmul
        acc_base = Signal(16)
        a_base = Signal(16)
        b_base = Signal(16)
        a_stride = Signal(16)
        count_m = Signal(16)
        count_n = Signal(7)
        count_k = Signal(16)
        accumulate = Signal()
        accept = Signal()
        m.d.comb += accept.eq(self.insn.valid & self.insn.ready)
        with m.If(accept):
            m.d.sync += [
                acc_base.eq(args.acc),
                a_base.eq(args.a),
                b_base.eq(args.b),
                a_stride.eq(args.a_stride),
                count_m.eq(args.m),
                count_n.eq(args.n),
                count_k.eq(args.k),
                accumulate.eq(args.accumulate),
            ]

        # Issue stage: one scratchpad read per cycle, B rows (preload) then A rows (stream).
        step = Signal(16)              # preload row j, or A row i
        chunk_base = Signal(17)        # c * rows: the first K index of the current chunk
        a_chunk = Signal(17)           # a + c * a_stride
        a_row = Signal(17)             # a + c * a_stride + i
        issue_weight = Signal()
        issue_zero = Signal()
        issue_a = Signal()
        issue_first = Signal()
        b_index = Signal(17)
        m.d.comb += b_index.eq(chunk_base + (rows - 1) - step)
        last_chunk = Signal()
        m.d.comb += last_chunk.eq(chunk_base + rows >= count_k)

        with m.If(accept):
            m.d.sync += [
                step.eq(0),
                chunk_base.eq(0),
                a_chunk.eq(args.a),
                a_row.eq(args.a),
            ]

        # With weight preload the B rows come on a port of their own (see _stream_with_preload).
        b_port = self.weight_read if self.config.weight_preload else self.spad_read
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.insn.ready.eq(1)
                with m.If(self.insn.valid):
                    m.next = "PRELOAD"
            with m.State("PRELOAD"):
                in_range = b_index < count_k
                m.d.comb += [
                    self.busy.eq(1),
                    b_port.en.eq(in_range),
                    b_port.addr.eq(b_base + b_index),
                    issue_weight.eq(1),
                    issue_zero.eq(~in_range),
                ]
                m.d.sync += step.eq(step + 1)
                with m.If(step == rows - 1):
                    m.d.sync += step.eq(0)
                    m.next = "STREAM"
            with m.State("STREAM"):
                if self.config.weight_preload:
                    self._stream_with_preload(m, step, chunk_base, a_chunk, a_row, last_chunk,
                                              (issue_weight, issue_zero, issue_a, issue_first),
                                              (b_base, a_stride, count_m, count_k))
                else:
                    m.d.comb += [
                        self.busy.eq(1),
                        self.spad_read.en.eq(1),
                        self.spad_read.addr.eq(a_row),
                        issue_a.eq(1),
                        issue_first.eq(step == 0),
                    ]
                    m.d.sync += [
                        step.eq(step + 1),
                        a_row.eq(a_row + 1),
                    ]
                    with m.If(step == count_m - 1):
                        m.d.sync += step.eq(0)
                        with m.If(last_chunk):
                            m.next = "DRAIN"
                        with m.Else():
                            m.d.sync += [
                                chunk_base.eq(chunk_base + rows),
                                a_chunk.eq(a_chunk + a_stride),
                                a_row.eq(a_chunk + a_stride),
                            ]
                            m.next = "PRELOAD"
            with m.State("DRAIN"):
                m.d.comb += self.busy.eq(1)
                with m.If(self.done):
                    m.d.comb += self.insn.ready.eq(1)
                    with m.If(self.insn.valid):
                        m.next = "PRELOAD"
                    with m.Else():
                        m.next = "IDLE"

        data_a = self._data_stage(m, array, issue_weight, issue_zero, issue_a, issue_first)

        # Read stage: one cycle before a result row leaves the array, read the row it adds to.
        # Result rows leave in the order their A rows entered: chunk by chunk, row 0 first.
        read_valid = self._result_valid(m, data_a)
        out_step = Signal(16)
        out_chunk_base = Signal(17)
        out_acc_row = Signal(16)
        with m.If(accept):
            m.d.sync += [
                out_step.eq(0),
                out_chunk_base.eq(0),
                out_acc_row.eq(args.acc),
            ]
        read_old = accumulate | (out_chunk_base != 0)
        out_last_chunk = out_chunk_base + rows >= count_k
        with m.If(read_valid):
            m.d.comb += [
                self.acc_read.en.eq(read_old),
                self.acc_read.addr.eq(out_acc_row),
            ]
            m.d.sync += [
                out_step.eq(out_step + 1),
                out_acc_row.eq(out_acc_row + 1),
            ]
            with m.If(out_step == count_m - 1):
                m.d.sync += [
                    out_step.eq(0),
                    out_acc_row.eq(acc_base),
                    out_chunk_base.eq(out_chunk_base + rows),
                ]

        # Add stage: the result row meets the old accumulator row.
        add_valid = Signal()
        add_addr = Signal(16)
        add_old = Signal()
        add_last_chunk = Signal()
        add_last_row = Signal()
        m.d.sync += [
            add_valid.eq(read_valid),
            add_addr.eq(out_acc_row),
            add_old.eq(read_old),
            add_last_chunk.eq(out_last_chunk),
            add_last_row.eq(out_last_chunk & (out_step == count_m - 1)),
        ]
        write_valid = Signal()
        write_addr = Signal(16)
        write_row = Signal(data.ArrayLayout(signed(32), cols))
        write_last_chunk = Signal()
        write_last_row = Signal()
        m.d.sync += [
            write_valid.eq(add_valid),
            write_addr.eq(add_addr),
            write_last_chunk.eq(add_last_chunk),
            write_last_row.eq(add_valid & add_last_row),
        ]
        self._add_old_row(m, array, add_old, write_row)

        # Write stage: columns n..cols-1 keep their value.
        column_mask = self._column_mask(m, count_n)
        last_chunk_k = Signal(unsigned(ceil_log2(rows) + 1))
        m.d.comb += last_chunk_k.eq(((count_k - 1) & (rows - 1)) + 1)
        self._write_stage(m, write_valid, write_addr, write_row, column_mask)
        with m.If(write_valid):
            m.d.comb += self.macs.eq(count_n * Mux(write_last_chunk, last_chunk_k, rows))
        m.d.sync += self.done.eq(write_last_row)

        m.d.comb += [
            self.spad_read_pulse.eq(self.spad_read.en),
            self.acc_read_pulse.eq(self.acc_read.en),
            self.acc_write_pulse.eq(self.acc_write.en),
        ]
        if self.config.weight_preload:
            m.d.comb += self.weight_read_pulse.eq(self.weight_read.en)
        return m

    def _data_stage(self, m: Module, array: PEArray, issue_weight, issue_zero, issue_a, issue_first):
        """The data stage: the scratchpad rows read in the issue stage arrive a cycle later and enter the
        array (a weight row, with ``issue_zero`` as zeros, and an A row); returns the A row's valid."""
        data_weight = Signal()
        data_zero = Signal()
        data_a = Signal()
        data_first = Signal()
        m.d.sync += [
            data_weight.eq(issue_weight),
            data_zero.eq(issue_zero),
            data_a.eq(issue_a),
            data_first.eq(issue_first),
        ]
        spad_row = self.spad_read.data.as_value()
        weight_row = self.weight_read.data.as_value() if self.config.weight_preload else spad_row
        m.d.comb += [
            array.weight_in.eq(Mux(data_zero, 0, weight_row)),
            array.weight_shift.eq(data_weight),
            array.a_in.eq(spad_row[:array.a_in.shape().size]),
            array.a_valid.eq(data_a),
            array.a_first.eq(data_first),
        ]
        return data_a

    def _result_valid(self, m: Module, data_a):
        """``data_a`` delayed to one cycle before its result row leaves the array (the read stage)."""
        read_valid = data_a
        for stage in range(self.array_latency - 1):
            delayed = Signal(name=f"a_valid_d{stage + 1}")
            m.d.sync += delayed.eq(read_valid)
            read_valid = delayed
        return read_valid

    def _add_old_row(self, m: Module, array: PEArray, add_old, write_row) -> None:
        """The add stage: ``write_row`` gets the array's result row plus (with ``add_old``) the old row."""
        for column in range(self.config.cols):
            old = Mux(add_old, self.acc_read.data[column], 0)
            m.d.sync += write_row[column].eq(array.c_out[column] + old)

    def _column_mask(self, m: Module, count_n):
        """The write enables of columns ``0..count_n-1`` (the others keep their value)."""
        column_mask = Signal(self.config.cols)
        for column in range(self.config.cols):
            m.d.comb += column_mask[column].eq(column < count_n)
        return column_mask

    def _write_stage(self, m: Module, write_valid, write_addr, write_row, column_mask) -> None:
        """The write stage: ``write_row`` into accumulator row ``write_addr``, columns by ``column_mask``."""
        m.d.comb += [
            self.acc_write.en.eq(write_valid),
            self.acc_write.addr.eq(write_addr),
            self.acc_write.data.eq(write_row),
            self.acc_write.mask.eq(column_mask),
        ]

    def _stream_with_preload(self, m: Module, step, chunk_base, a_chunk, a_row, last_chunk, issue,
                             instruction) -> None:
        """The STREAM state with weight preload: A rows on ``spad_read``, the next chunk's B rows on
        ``weight_read``.

        ``step`` counts the cycles since the current chunk's stream began; in cycles 1 to ``rows`` of
        these the next chunk's B rows are read (last row first, zero weights beyond ``k``, as in
        PRELOAD).  Not from cycle 0: the PE array needs a cycle without a weight shift between two
        preloads, and this one follows the previous preload (PRELOAD's, or the one during the
        previous chunk) by at least that.  The next chunk starts ``max(m, rows + 1)`` cycles after
        this one, once its B rows are in; after the last chunk the unit drains.
        """
        rows = self.config.rows
        issue_weight, issue_zero, issue_a, issue_first = issue
        b_base, a_stride, count_m, count_k = instruction
        next_b_index = Signal(17)      # B row of the next chunk read in this stream cycle
        m.d.comb += [
            next_b_index.eq(chunk_base + 2 * rows - step),
            self.busy.eq(1),
        ]
        with m.If(step < count_m):
            m.d.comb += [
                self.spad_read.en.eq(1),
                self.spad_read.addr.eq(a_row),
                issue_a.eq(1),
                issue_first.eq(step == 0),
            ]
        with m.If(~last_chunk & (step >= 1) & (step <= rows)):
            next_in_range = next_b_index < count_k
            m.d.comb += [
                self.weight_read.en.eq(next_in_range),
                self.weight_read.addr.eq(b_base + next_b_index),
                issue_weight.eq(1),
                issue_zero.eq(~next_in_range),
            ]
        m.d.sync += [
            step.eq(step + 1),
            a_row.eq(a_row + 1),
        ]
        with m.If(last_chunk):
            with m.If(step == count_m - 1):
                m.d.sync += step.eq(0)
                m.next = "DRAIN"
        with m.Elif((step >= count_m - 1) & (step >= rows)):
            m.d.sync += [
                step.eq(0),
                chunk_base.eq(chunk_base + rows),
                a_chunk.eq(a_chunk + a_stride),
                a_row.eq(a_chunk + a_stride),
            ]

    def _elaborate_two_in_flight(self) -> Module:
        """The unit with ``Config.matmul_overlap``: two MATMULs in flight (see the class documentation).

        A separate elaboration, so that a build without the overlap keeps its Verilog.  Stages: a
        *pending* instruction (accepted; its chunk-0 B rows read on ``weight_read``), the *streaming*
        one (A rows on ``spad_read``, the next chunk's B rows on ``weight_read``), and the output stage,
        which reads, adds and writes each result row by the descriptor of the instruction it belongs to.
        """
        m = Module()
        rows, cols = self.config.rows, self.config.cols
        array = m.submodules.array = PEArray(rows, cols)
        args = self.insn.payload.args.matmul
        accept = Signal()
        m.d.comb += accept.eq(self.insn.valid & self.insn.ready)

        # Instructions accepted and not yet done: at most two.
        in_flight = Signal(range(3))
        m.d.sync += in_flight.eq(in_flight + accept - self.done)
        m.d.comb += self.busy.eq(in_flight != 0)

        # The pending instruction, latched when accepted.
        pending = Signal()
        p_acc, p_a, p_b, p_stride = Signal(16), Signal(16), Signal(16), Signal(16)
        p_m, p_n, p_k, p_accumulate = Signal(16), Signal(7), Signal(16), Signal()
        preload_step = Signal(range(rows + 1))       # its chunk-0 B rows read so far
        with m.If(accept):
            m.d.sync += [
                pending.eq(1), preload_step.eq(0),
                p_acc.eq(args.acc), p_a.eq(args.a), p_b.eq(args.b), p_stride.eq(args.a_stride),
                p_m.eq(args.m), p_n.eq(args.n), p_k.eq(args.k), p_accumulate.eq(args.accumulate),
            ]

        # The streaming instruction.  Its registers start at m = k = 0: "done streaming, last chunk".
        acc_base, b_base, a_stride = Signal(16), Signal(16), Signal(16)
        count_m, count_k = Signal(16), Signal(16)
        # Cycles since the current chunk began streaming; past the last chunk's A rows it goes on
        # (saturating), for the accumulator hazard with the pending instruction.
        step = Signal(17)
        chunk_base = Signal(17)        # c * rows: the first K index of the current chunk
        a_chunk = Signal(17)           # a + c * a_stride
        a_row = Signal(17)             # a + c * a_stride + step
        last_chunk = Signal()
        m.d.comb += last_chunk.eq(chunk_base + rows >= count_k)
        # Next MATMUL: from the start of the current one's last chunk, and the one before it done.
        m.d.comb += self.insn.ready.eq(~pending & last_chunk & ((in_flight != 2) | self.done))

        issue_weight = Signal()
        issue_zero = Signal()
        issue_a = Signal()
        issue_first = Signal()
        with m.If(step < count_m):
            m.d.comb += [
                self.spad_read.en.eq(1),
                self.spad_read.addr.eq(a_row),
                issue_a.eq(1),
                issue_first.eq(step == 0),
            ]
        # The current instruction's next chunk's B rows, in cycles 1 to rows of this chunk's stream (as
        # without the overlap); or the pending instruction's chunk-0 B rows, from the cycle after it was
        # accepted (the current one is in its last chunk then, so the two never meet).
        next_b_index = Signal(17)
        m.d.comb += next_b_index.eq(chunk_base + 2 * rows - step)
        pending_b_index = Signal(range(rows))
        m.d.comb += pending_b_index.eq(rows - 1 - preload_step)
        with m.If(~last_chunk & (step >= 1) & (step <= rows)):
            in_range = next_b_index < count_k
            m.d.comb += [
                self.weight_read.en.eq(in_range),
                self.weight_read.addr.eq(b_base + next_b_index),
                issue_weight.eq(1),
                issue_zero.eq(~in_range),
            ]
        with m.If(pending & (preload_step != rows)):
            in_range = pending_b_index < p_k
            m.d.comb += [
                self.weight_read.en.eq(in_range),
                self.weight_read.addr.eq(p_b + pending_b_index),
                issue_weight.eq(1),
                issue_zero.eq(~in_range),
            ]
            m.d.sync += preload_step.eq(preload_step + 1)

        # The pending instruction streams from the next cycle when its B rows are in by the end of this
        # one, the current one's last A row is read, and the accumulator hazard is clear.
        hazard = Signal()
        m.d.comb += hazard.eq(p_accumulate & (p_acc < acc_base + count_m) & (acc_base < p_acc + p_m))
        go = Signal()
        m.d.comb += go.eq(pending & (preload_step >= rows - 1) & (step >= count_m - 1)
                          & (~hazard | (step + acc_base >= p_acc + 2)))
        with m.If(go):
            m.d.sync += [
                pending.eq(0),
                step.eq(0), chunk_base.eq(0), a_chunk.eq(p_a), a_row.eq(p_a),
                acc_base.eq(p_acc), b_base.eq(p_b), a_stride.eq(p_stride), count_m.eq(p_m), count_k.eq(p_k),
            ]
        with m.Elif(~last_chunk & (step >= count_m - 1) & (step >= rows)):
            m.d.sync += [
                step.eq(0),
                chunk_base.eq(chunk_base + rows),
                a_chunk.eq(a_chunk + a_stride),
                a_row.eq(a_chunk + a_stride),
            ]
        with m.Else():
            m.d.sync += [
                step.eq(step + (step != (1 << len(step)) - 1)),
                a_row.eq(a_row + 1),
            ]

        data_a = self._data_stage(m, array, issue_weight, issue_zero, issue_a, issue_first)

        # Read stage, one cycle before a result row leaves the array, by the descriptor of the
        # instruction whose rows leave now; the next one's waits in `queued` while they do.
        read_valid = self._result_valid(m, data_a)
        fields = (("acc", 16), ("m", 16), ("n", 7), ("k", 16), ("accumulate", 1))
        out = {name: Signal(width, name=f"out_{name}") for name, width in fields}
        queued = {name: Signal(width, name=f"queued_{name}") for name, width in fields}
        starting = {"acc": p_acc, "m": p_m, "n": p_n, "k": p_k, "accumulate": p_accumulate}
        out_active = Signal()          # rows of `out`'s instruction are still to be read
        queued_valid = Signal()
        out_step = Signal(16)
        out_chunk_base = Signal(17)
        out_acc_row = Signal(16)
        read_old = out["accumulate"] | (out_chunk_base != 0)
        out_last_chunk = out_chunk_base + rows >= out["k"]
        last_row = Signal()
        m.d.comb += last_row.eq(read_valid & out_last_chunk & (out_step == out["m"] - 1))
        with m.If(read_valid):
            m.d.comb += [
                self.acc_read.en.eq(read_old),
                self.acc_read.addr.eq(out_acc_row),
            ]
            m.d.sync += [
                out_step.eq(out_step + 1),
                out_acc_row.eq(out_acc_row + 1),
            ]
            with m.If(out_step == out["m"] - 1):
                m.d.sync += [
                    out_step.eq(0),
                    out_acc_row.eq(out["acc"]),
                    out_chunk_base.eq(out_chunk_base + rows),
                ]

        def take(descriptor):
            m.d.sync += [out[name].eq(descriptor[name]) for name, _ in fields]
            m.d.sync += [out_step.eq(0), out_chunk_base.eq(0), out_acc_row.eq(descriptor["acc"])]

        # When the pending instruction starts streaming, the earlier one's rows may still be in the
        # array (not those of the one before: it is done before a third is accepted).
        with m.If(go & (~out_active | last_row)):
            take(starting)
            m.d.sync += out_active.eq(1)
        with m.Elif(go):
            m.d.sync += [queued[name].eq(starting[name]) for name, _ in fields]
            m.d.sync += queued_valid.eq(1)
        with m.Elif(last_row):
            with m.If(queued_valid):
                take(queued)
                m.d.sync += queued_valid.eq(0)
            with m.Else():
                m.d.sync += out_active.eq(0)

        # Add stage: the result row meets the old accumulator row; the row's n and K-rows travel along.
        chunk_k = Signal(unsigned(ceil_log2(rows) + 1))
        m.d.comb += chunk_k.eq(Mux(out_last_chunk, ((out["k"] - 1) & (rows - 1)) + 1, rows))
        add_valid = Signal()
        add_addr = Signal(16)
        add_old = Signal()
        add_n = Signal(7)
        add_chunk_k = Signal.like(chunk_k)
        add_last_row = Signal()
        m.d.sync += [
            add_valid.eq(read_valid),
            add_addr.eq(out_acc_row),
            add_old.eq(read_old),
            add_n.eq(out["n"]),
            add_chunk_k.eq(chunk_k),
            add_last_row.eq(last_row),
        ]
        write_valid = Signal()
        write_addr = Signal(16)
        write_row = Signal(data.ArrayLayout(signed(32), cols))
        write_n = Signal(7)
        write_chunk_k = Signal.like(chunk_k)
        write_last_row = Signal()
        m.d.sync += [
            write_valid.eq(add_valid),
            write_addr.eq(add_addr),
            write_n.eq(add_n),
            write_chunk_k.eq(add_chunk_k),
            write_last_row.eq(add_valid & add_last_row),
        ]
        self._add_old_row(m, array, add_old, write_row)

        # Write stage: columns n..cols-1 keep their value.
        self._write_stage(m, write_valid, write_addr, write_row, self._column_mask(m, write_n))
        with m.If(write_valid):
            m.d.comb += self.macs.eq(write_n * write_chunk_k)
        m.d.sync += self.done.eq(write_last_row)

        m.d.comb += [
            self.spad_read_pulse.eq(self.spad_read.en),
            self.weight_read_pulse.eq(self.weight_read.en),
            self.acc_read_pulse.eq(self.acc_read.en),
            self.acc_write_pulse.eq(self.acc_write.en),
        ]
        return m
