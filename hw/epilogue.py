"""The EPILOGUE unit: fused bias, requantize, residual and activation over accumulator rows.

Exactly :func:`braze.isa.arith.epilogue` and the ``EPILOGUE`` format's doc in
:mod:`braze.isa.encoding`, one row per cycle, with a fixed schedule: an
instruction of ``m`` rows takes ``m + EPILOGUE_LATENCY`` cycles whatever its
flags (the parameter-row reads it does not need are idle cycles, so the
access counts stay exact).  The unit also holds the activation table of
``act=table`` and executes ``TABLE``, which writes it.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory as MemoryBlock
from amaranth.lib.wiring import In
from amaranth.utils import exact_log2

from braze.isa.config import Config
from braze.isa.encoding import FORMAT_BY_OPCODE, INSTRUCTION, Activation, Memory, Opcode
from braze.isa.timing import EPILOGUE_LATENCY, TABLE_LATENCY, table_rows

from .vector import ROW_ADDR_WIDTH, counter_ports, memory_ports, saturate, shift_for_rounding

__all__ = ["EPILOGUE_LATENCY", "TABLE_LATENCY", "EpilogueUnit"]

# EPILOGUE_LATENCY (braze.isa.timing) is what this unit takes beyond one cycle per row: three
# parameter-row reads (bias, multiplier, shift), the read latency, five pipeline registers
# (bias add, multiply, shift, round/OUT_ZP/sat32, residual/activation/output) and the write.
# The shift has its own register because the variable 64-bit shift and the rounding adder in one
# cycle were the whole design's critical path (tiny on an ECP5: 42.9 MHz).

EPILOGUE_ARGS = FORMAT_BY_OPCODE[Opcode.EPILOGUE].layout
TABLE_ARGS = FORMAT_BY_OPCODE[Opcode.TABLE].layout

#: Cycle (counting the one after acceptance as 1) of the first source-row read.
_FIRST_ROW_READ = 4


def _sign_extend(value: Value, width: int) -> Value:
    """A signed ``value`` in ``width`` bits (as raw bits)."""
    value = Value.cast(value)
    return Cat(value, value[-1].replicate(width - len(value)))


def _sign_of_sum3(a: Value, b: Value, c: Value, carry_in: int) -> Value:
    """Whether ``a + b + c + carry_in`` (signed values; ``carry_in`` 0 or 1) is negative, in one carry
    chain: a carry-save step (one LUT level) and one adder, not two adders in a row."""
    width = max(len(Value.cast(v)) for v in (a, b, c)) + 3
    a, b, c = (_sign_extend(v, width) for v in (a, b, c))
    bits = a ^ b ^ c
    carries = Cat(Const(carry_in, 1), ((a & b) | (a & c) | (b & c))[:width - 1])
    return (bits + carries)[width - 1]


class EpilogueUnit(wiring.Component):
    """Executes ``EPILOGUE`` and ``TABLE`` instructions.

    Parameters
    ----------
    config : Config
        The accelerator build; sets the row width (``cols``).

    Attributes
    ----------
    insn : In(stream.Signature(INSTRUCTION))
        The decoded instruction, an EPILOGUE (``args.epilogue`` is read) or a
        TABLE (``args.table``); range checks have already passed.  ``ready``
        is high when idle and in the cycle of ``done``, so instructions can run
        back to back.
    clip_lo, clip_hi, out_zp : In(signed(32))
        The CONFIG registers, sampled when the instruction is accepted.
    spad_read, acc_read : In(ReadPort.Signature(addr_width=16, shape=row))
        Compute read ports of the scratchpad and the accumulator (data valid
        the cycle after ``en``; they never stall).
    spad_write, acc_write : In(WritePort.Signature(addr_width=16, shape=row))
        Compute write ports.
    busy : Out(1)
        High for exactly ``m + EPILOGUE_LATENCY`` cycles per EPILOGUE and
        ``256/cols + TABLE_LATENCY`` per TABLE: from the cycle after it is
        accepted to the cycle of ``done``.
    done : Out(1)
        One-cycle pulse in the cycle of the last row write (committed at the
        end of that cycle).
    spad_read_pulse, spad_write_pulse, acc_read_pulse, acc_write_pulse : Out(1)
        One pulse per row read or written, for the performance counters:
        ``m + bias + 2*requant`` accumulator reads, ``m`` scratchpad reads with
        ``residual``, ``m`` writes to ``out``; ``256/cols`` scratchpad reads per TABLE.

    Notes
    -----
    Schedule, counting the cycle after acceptance as cycle 1: cycle 1 reads
    the bias row (with ``bias``), cycles 2 and 3 the multiplier and shift
    rows (with ``requant``); source row ``i`` is read in cycle ``4 + i``,
    residual row ``i`` in cycle ``7 + i``, and destination row ``i`` written
    in cycle ``10 + i``; ``done`` comes in cycle ``m + 9``.  Per row the
    pipeline registers hold: the bias sum (wrap32) | the int32 x int32
    product | the product shifted right by ``shift & 63`` and its rounding
    bit | that rounded half to even, plus OUT_ZP, sat32 | plus the residual,
    sat32, activated, sat8 for ``out=spad``, columns ``>= n`` zeroed; then
    the write.
    Disabled stages are made neutral (bias 0, multiplier 1, shift 0,
    OUT_ZP 0, residual 0) rather than bypassed.

    The activation table is a :class:`~amaranth.lib.memory.Memory` of
    ``256/cols`` rows of ``cols`` int8 entries (entry ``e`` is element
    ``e % cols`` of row ``e // cols``, the layout of the scratchpad rows TABLE
    copies) with one write port and one synchronous read port per column.
    With ``act=table`` the activation register stage drives each column's read
    address with the row of its int8-saturated value and registers the column
    index next to ``result``; in the write cycle the entry is picked out of the
    row that arrives, so the lookup adds no cycle to the fixed schedule.  A
    TABLE reads scratchpad row ``addr + r`` in cycle ``1 + r`` and writes it
    into table row ``r`` in the cycle it arrives; ``done`` comes in cycle
    ``256/cols + 1``.

    The parameter rows are read before any write, and every source and
    residual row before it is written, so in place (``out=acc`` with
    ``dst == src``, or ``out=spad`` with ``dst == res_addr``) and any overlap
    with ``dst`` below the source give the row-by-row result, which is then
    also the whole-tile result.  When a destination row is a source (residual)
    row of a *later* row of the same instruction, the later row reads it
    before it is written if the distance is below 5 (3) rows and after
    otherwise: neither order is guaranteed, so the decoder rejects such an instruction (OVERLAP).
    """

    def __init__(self, config: Config):
        if not isinstance(config, Config):
            raise TypeError(f"EpilogueUnit needs a braze.isa.Config, not {config!r}")
        self._config = config
        super().__init__({
            "insn": In(stream.Signature(INSTRUCTION)),
            "clip_lo": In(signed(32)),
            "clip_hi": In(signed(32)),
            "out_zp": In(signed(32)),
            **memory_ports(config),
            **counter_ports(),
        })

    @property
    def config(self) -> Config:
        return self._config

    def elaborate(self, platform):
        m = Module()
        cols = self._config.cols
        int32_row = data.ArrayLayout(signed(32), cols)

        args = Signal(EPILOGUE_ARGS)
        clip_lo = Signal(signed(32))
        clip_hi = Signal(signed(32))
        clip_floor = Signal(signed(32))      # min(CLIP_LO, CLIP_HI): what clip gives below CLIP_LO
        zero_point = Signal(signed(32))      # OUT_ZP with requant, else 0

        busy = Signal()
        # Parameter-read phase: cycle 1..3 after acceptance; then the source rows.
        param_cycle = Signal(range(_FIRST_ROW_READ + 1))
        reading = Signal()
        read_row = Signal(16)
        src_addr = Signal(ROW_ADDR_WIDTH)
        res_addr = Signal(ROW_ADDR_WIDTH)
        write_row = Signal(16)
        dst_addr = Signal(ROW_ADDR_WIDTH)

        bias = Signal(int32_row)
        mult = Signal(int32_row)
        shift = Signal(data.ArrayLayout(6, cols))

        # Stage valids, one per pipeline register after the source-row read.
        row_arrives = Signal()   # source row data on acc_read.data
        biased_valid = Signal()  # biased holds the row; residual row read this cycle
        product_valid = Signal()
        shifted_valid = Signal()
        requantized_valid = Signal()  # residual row registered too
        result_valid = Signal()  # write this cycle

        biased = Signal(int32_row)
        product = Signal(data.ArrayLayout(signed(64), cols))
        shifted = Signal(data.ArrayLayout(signed(64), cols))
        round_up = Signal(cols)
        requantized = Signal(int32_row)
        residual_row = Signal(data.ArrayLayout(signed(8), cols))
        result = Signal(int32_row)

        # The activation table and the TABLE instruction's state.
        index_bits = exact_log2(cols)            # bits of an entry's column within a table row
        m.submodules.table = table = MemoryBlock(
            shape=data.ArrayLayout(signed(8), cols), depth=table_rows(self._config), init=[])
        table_write = table.write_port()
        table_reads = [table.read_port() for _ in range(cols)]
        table_reading = Signal()
        table_read_row = Signal(range(table_rows(self._config) + 1))
        table_src = Signal(ROW_ADDR_WIDTH)
        table_arrives = Signal()                 # the row read last cycle is on spad_read.data
        table_write_row = Signal(range(table_rows(self._config) + 1))
        table_done = Signal()
        lookup_column = Signal(data.ArrayLayout(max(index_bits, 1), cols))

        done = Signal()
        m.d.comb += [
            table_done.eq(table_arrives & (table_write_row == table_rows(self._config) - 1)),
            done.eq((result_valid & (write_row == args.m - 1)) | table_done),
            self.done.eq(done),
            self.busy.eq(busy),
            self.insn.ready.eq(~busy | done),
        ]

        with m.If(done):
            m.d.sync += busy.eq(0)

        # TABLE: one scratchpad row read per cycle, written into the table as it arrives.
        with m.If(table_reading):
            m.d.sync += [table_read_row.eq(table_read_row + 1), table_src.eq(table_src + 1)]
            with m.If(table_read_row == table_rows(self._config) - 1):
                m.d.sync += table_reading.eq(0)
        m.d.sync += table_arrives.eq(table_reading)
        with m.If(table_arrives):
            m.d.sync += table_write_row.eq(table_write_row + 1)
        m.d.comb += [
            table_write.en.eq(table_arrives),
            table_write.addr.eq(table_write_row),
            table_write.data.eq(self.spad_read.data),
        ]

        # Accumulator reads: bias, multiplier and shift rows, then the m source rows.
        with m.If(param_cycle != 0):
            m.d.sync += param_cycle.eq(param_cycle + 1)
            with m.If(param_cycle == _FIRST_ROW_READ - 1):
                m.d.sync += [param_cycle.eq(0), reading.eq(1)]
        acc_read_en = Signal()
        with m.Switch(param_cycle):
            with m.Case(1):
                m.d.comb += [self.acc_read.addr.eq(args.bias_addr), acc_read_en.eq(args.bias)]
            with m.Case(2):
                m.d.comb += [self.acc_read.addr.eq(args.quant_addr), acc_read_en.eq(args.requant)]
            with m.Case(3):
                m.d.comb += [self.acc_read.addr.eq(args.quant_addr + 1), acc_read_en.eq(args.requant)]
            with m.Default():
                m.d.comb += [self.acc_read.addr.eq(src_addr), acc_read_en.eq(reading)]
        m.d.comb += [self.acc_read.en.eq(acc_read_en), self.acc_read_pulse.eq(acc_read_en)]
        with m.If(reading):
            m.d.sync += [read_row.eq(read_row + 1), src_addr.eq(src_addr + 1)]
            with m.If(read_row == args.m - 1):
                m.d.sync += reading.eq(0)

        # Parameter rows arrive one cycle after their read; disabled stages get neutral values.
        param_arrives = Signal(range(_FIRST_ROW_READ + 1))
        m.d.sync += param_arrives.eq(param_cycle)
        for j in range(cols):
            element = self.acc_read.data[j]
            with m.Switch(param_arrives):
                with m.Case(1):
                    m.d.sync += bias[j].eq(Mux(args.bias, element, 0))
                with m.Case(2):
                    m.d.sync += mult[j].eq(Mux(args.requant, element, 1))
                with m.Case(3):
                    m.d.sync += shift[j].eq(Mux(args.requant, element[:6], 0))

        m.d.sync += [
            row_arrives.eq(reading),
            biased_valid.eq(row_arrives),
            product_valid.eq(biased_valid),
            shifted_valid.eq(product_valid),
            requantized_valid.eq(shifted_valid),
            result_valid.eq(requantized_valid),
        ]

        # Residual rows: read while the row is in the shift stage, registered next to `requantized`.
        residual_read = Signal()
        m.d.comb += [
            residual_read.eq(product_valid & args.residual),
            self.spad_read.en.eq(residual_read | table_reading),
            self.spad_read.addr.eq(Mux(table_reading, table_src, res_addr)),
            self.spad_read_pulse.eq(residual_read | table_reading),
        ]
        with m.If(residual_read):
            m.d.sync += res_addr.eq(res_addr + 1)

        for j in range(cols):
            # Bias (wrap32) | multiply | shift | round, + OUT_ZP, sat32.  An int32 x int32 product
            # shifted right never reaches 2**63 - 1, so the rounding add cannot wrap.
            quotient, rounds_up = shift_for_rounding(product[j], shift[j])
            m.d.sync += [
                biased[j].eq((self.acc_read.data[j] + bias[j])[:32]),
                product[j].eq(biased[j] * mult[j]),
                shifted[j].eq(quotient),
                round_up[j].eq(rounds_up),
                requantized[j].eq(saturate(shifted[j] + round_up[j] + zero_point, 32)),
                residual_row[j].eq(Mux(args.residual, self.spad_read.data[j], 0)),
            ]
            # + residual, sat32 | activation | output type | column mask.
            exact_sum = requantized[j] + residual_row[j]
            summed = saturate(exact_sum, 32)
            # CLIP compares the exact sum (before sat32), each as one three-operand carry chain beside
            # the sum's, not a comparator after it (the unit's critical path).  sat32(x) < lo exactly
            # when x < lo, except for x < lo = INT32_MIN, where both give INT32_MIN (the floor is
            # INT32_MIN then); likewise for > hi.
            below = _sign_of_sum3(requantized[j], residual_row[j], ~clip_lo, 1)
            above = ~_sign_of_sum3(requantized[j], residual_row[j], ~clip_hi, 0)
            activated = Signal(signed(32), name=f"activated_{j}")
            with m.Switch(args.act):
                with m.Case(Activation.RELU):
                    m.d.comb += activated.eq(Mux(summed[-1], 0, summed))
                with m.Case(Activation.CLIP):
                    m.d.comb += activated.eq(Mux(below, clip_floor, Mux(above, clip_hi, summed)))
                with m.Default():
                    m.d.comb += activated.eq(summed)
            converted = Mux(args.out == Memory.SPAD, saturate(activated, 8), activated)
            m.d.sync += result[j].eq(Mux(j < args.n, converted, 0))
            # act=table: read the table row of the int8-saturated value; the entry's column waits
            # next to `result` and picks it out of the row in the write cycle.
            entry = Signal(8, name=f"table_entry_{j}")
            m.d.comb += [
                entry.eq(saturate(summed, 8)[:8]),
                table_reads[j].addr.eq(entry[index_bits:]),
                table_reads[j].en.eq(requantized_valid),
            ]
            if index_bits:
                m.d.sync += lookup_column[j].eq(entry[:index_bits])

        # Writing.
        with m.If(result_valid):
            m.d.sync += [write_row.eq(write_row + 1), dst_addr.eq(dst_addr + 1)]
        for memory, port, pulse in ((Memory.SPAD, self.spad_write, self.spad_write_pulse),
                                    (Memory.ACC, self.acc_write, self.acc_write_pulse)):
            here = result_valid & (args.out == memory)
            m.d.comb += [port.en.eq(here), port.addr.eq(dst_addr), pulse.eq(here)]
            element = port.data.shape().elem_shape
            for j in range(cols):
                looked_up = table_reads[j].data[lookup_column[j]] if index_bits else table_reads[j].data[0]
                with m.If((args.act == Activation.TABLE) & (j < args.n)):
                    m.d.comb += port.data[j].eq(looked_up)    # int8, sign-extended into acc rows
                with m.Else():
                    m.d.comb += port.data[j].eq(result[j][:element.width])

        # Accepting an instruction: last, so that it overrides the final updates of the previous one.
        new = self.insn.payload.args.epilogue
        is_table = self.insn.payload.opcode == Opcode.TABLE
        with m.If(self.insn.valid & self.insn.ready & is_table):
            m.d.sync += [
                busy.eq(1),
                table_reading.eq(1),
                table_read_row.eq(0),
                table_src.eq(self.insn.payload.args.table.addr),
                table_write_row.eq(0),
            ]
        with m.If(self.insn.valid & self.insn.ready & ~is_table):
            m.d.sync += [
                args.eq(new),
                clip_lo.eq(self.clip_lo),
                clip_hi.eq(self.clip_hi),
                clip_floor.eq(Mux(self.clip_lo < self.clip_hi, self.clip_lo, self.clip_hi)),
                zero_point.eq(Mux(new.requant, self.out_zp, 0)),
                busy.eq(1),
                param_cycle.eq(1),
                read_row.eq(0),
                src_addr.eq(new.src),
                res_addr.eq(new.res_addr),
                write_row.eq(0),
                dst_addr.eq(new.dst),
            ]
        return m
