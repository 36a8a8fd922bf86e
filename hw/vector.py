"""The VECTOR unit: element-wise operations over whole scratchpad/accumulator rows.

Exactly :func:`braze.isa.arith.vector`, row by row, with a fixed schedule:
an instruction of ``rows`` rows takes ``rows * reads_per_row +
vector_latency(config)`` cycles (:data:`VECTOR_LATENCY`, one more with
``Config.vector_stage``), where ``reads_per_row`` is 2 when a binary operation
(not ``use_imm``) reads both operands from the same memory (one read port per
memory) and 1 otherwise.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import ReadPort, WritePort
from amaranth.lib.wiring import In, Out

from braze.isa.config import Config
from braze.isa.encoding import FORMAT_BY_OPCODE, INSTRUCTION, UNARY_VECTOR_OPS, Memory, Opcode, VectorOp
from braze.isa.timing import VECTOR_LATENCY, vector_latency

__all__ = ["VECTOR_LATENCY", "VectorUnit", "counter_ports", "memory_ports", "round_and_saturate",
           "round_half_even", "saturate", "shift_for_rounding", "vector_latency"]

# VECTOR_LATENCY (braze.isa.timing) is what this unit takes beyond one (or two) cycles per row:
# the read, the operand register, the compute/multiply register, the round-and-saturate register
# and the write; with Config.vector_stage also the partial-product register before the compute one.

#: Width of the row address on the memories' compute ports.
ROW_ADDR_WIDTH = 16

VECTOR_ARGS = FORMAT_BY_OPCODE[Opcode.VECTOR].layout


def shift_for_rounding(value: Value, shift: Value) -> tuple[Value, Value]:
    """``(value >> shift, round_up)``: the floor quotient and whether rounding to nearest, ties to
    even, adds one to it -- :func:`round_half_even` in two parts, so that a pipeline can register
    the shifter's output before the adder's carry chain.
    """
    quotient = value >> shift
    # The guard bit is bit shift-1 of value (0 when shift is 0); the sticky
    # bit ORs the bits below it.
    guard = ((value << 1) >> shift)[0]
    below_guard = ((Const(1, 1) << shift) - 1) >> 1
    sticky = (value.as_unsigned() & below_guard).any()
    return quotient, guard & (sticky | quotient[0])


def round_half_even(value: Value, shift: Value) -> Value:
    """``value / 2**shift`` rounded to nearest, ties to even (``braze.isa.arith.round_shift``).

    ``value`` is signed; the result has its width (the quotient never grows).
    """
    quotient, round_up = shift_for_rounding(value, shift)
    return (quotient + round_up)[:len(value)].as_signed()


def saturate(value: Value, bits: int) -> Value:
    """Clamp a signed ``value`` to ``signed(bits)``.

    Uses the top bits rather than comparators: ``value`` fits when every bit
    from ``bits-1`` up equals its sign.
    """
    if len(value) <= bits:
        return value.as_signed()
    top = value[bits - 1:]
    fits = ~top.any() | top.all()
    limit = Mux(value[-1], -(1 << (bits - 1)), (1 << (bits - 1)) - 1)
    return Mux(fits, value[:bits], limit[:bits]).as_signed()


def round_and_saturate(quotient: Value, round_up: Value, bits: int) -> Value:
    """``saturate(quotient + round_up, bits)`` for the parts :func:`shift_for_rounding` gives (so
    ``saturate(round_half_even(value, shift), bits)``), with a ``bits``-wide rounding adder.

    The full-width add of the rounding bit, then the saturation's check of its top bits, were two
    steps in a row; here the check is made on the floor quotient, beside the narrow add: ``q + 1``
    leaves the range only from its top (``q`` the largest value), a sum that does not fit has the
    sign of ``q``, and one that enters the range from below (``q`` one below the smallest) is the
    smallest value, which is also the negative limit.
    """
    top = quotient[bits - 1:]
    largest = (1 << (bits - 1)) - 1
    fits = (~top.any() | top.all()) & ~(round_up & (quotient == largest))
    limit = Mux(quotient[-1], -(1 << (bits - 1)), largest)
    return Mux(fits, (quotient[:bits] + round_up)[:bits], limit[:bits]).as_signed()


def memory_ports(config: Config) -> dict[str, wiring.Member]:
    """The compute read and write ports on the scratchpad and the accumulator, as a unit sees them."""
    spad_row = data.ArrayLayout(signed(8), config.cols)
    acc_row = data.ArrayLayout(signed(32), config.cols)
    return {
        "spad_read": In(ReadPort.Signature(addr_width=ROW_ADDR_WIDTH, shape=spad_row)),
        "spad_write": In(WritePort.Signature(addr_width=ROW_ADDR_WIDTH, shape=spad_row)),
        "acc_read": In(ReadPort.Signature(addr_width=ROW_ADDR_WIDTH, shape=acc_row)),
        "acc_write": In(WritePort.Signature(addr_width=ROW_ADDR_WIDTH, shape=acc_row)),
    }


def counter_ports() -> dict[str, wiring.Member]:
    """``busy``, ``done`` and the per-row access pulses of a compute unit."""
    return {
        "busy": Out(1),
        "done": Out(1),
        "spad_read_pulse": Out(1),
        "spad_write_pulse": Out(1),
        "acc_read_pulse": Out(1),
        "acc_write_pulse": Out(1),
    }


class VectorUnit(wiring.Component):
    """Executes ``VECTOR`` instructions.

    Parameters
    ----------
    config : Config
        The accelerator build; sets the row width (``cols``).

    Attributes
    ----------
    insn : In(stream.Signature(INSTRUCTION))
        The decoded instruction (``args.vector`` is read); range checks have
        already passed.  ``ready`` is high when idle and in the cycle of
        ``done``, so instructions can run back to back.
    clip_lo, clip_hi : In(signed(32))
        The CONFIG registers, sampled when the instruction is accepted.
    spad_read, acc_read : In(ReadPort.Signature(addr_width=16, shape=row))
        Compute read ports of the scratchpad and the accumulator (data valid
        the cycle after ``en``; they never stall).
    spad_write, acc_write : In(WritePort.Signature(addr_width=16, shape=row))
        Compute write ports.
    busy : Out(1)
        High for exactly ``rows * reads_per_row + vector_latency(config)`` cycles per
        instruction: from the cycle after it is accepted to the cycle of ``done``.
    done : Out(1)
        One-cycle pulse in the cycle of the last row write (committed at the
        end of that cycle).
    spad_read_pulse, spad_write_pulse, acc_read_pulse, acc_write_pulse : Out(1)
        One pulse per row read or written, for the performance counters.

    Notes
    -----
    Schedule, counting the cycle after acceptance as cycle 1, with
    ``p = reads_per_row``: row ``i`` is read in cycles ``1 + p*i .. p*(i+1)``
    (first operand, then second) and written in cycle ``p*(i+1) +
    vector_latency(config)``.  The pipeline is: read | operand register (int8
    sign-extended to int32, or ``imm``) | compute register (exact 64-bit
    result; the int32 x int32 product) | round half to even by ``shift`` (mul,
    shr) and saturate to the destination type | write.  With
    ``Config.vector_stage`` a register stage before the compute register holds
    the product's four 16 x 16 partial products (and the other ops' results),
    which the compute register adds.

    Every row is read before it is written, so in place (``dst == src``)
    and any ``dst < src`` overlap give the row-by-row result, which is then
    also the whole-tile result.  When a destination row is a source row of a
    *later* row of the same instruction (``0 < dst - src < rows`` in the same
    memory) the later row reads it before it is written if ``dst - src`` is
    below the pipeline depth (4, or 2 with two reads per row; one more with
    ``Config.vector_stage``) and after
    otherwise: neither order is guaranteed, so the decoder rejects such an instruction (OVERLAP).
    """

    def __init__(self, config: Config):
        if not isinstance(config, Config):
            raise TypeError(f"VectorUnit needs a braze.isa.Config, not {config!r}")
        self._config = config
        super().__init__({
            "insn": In(stream.Signature(INSTRUCTION)),
            "clip_lo": In(signed(32)),
            "clip_hi": In(signed(32)),
            **memory_ports(config),
            **counter_ports(),
        })

    @property
    def config(self) -> Config:
        return self._config

    def elaborate(self, platform):
        m = Module()
        cols = self._config.cols
        vector_stage = bool(self._config.vector_stage)

        args = Signal(VECTOR_ARGS)
        clip_hi = Signal(signed(32))
        clip_floor = Signal(signed(32))      # min(CLIP_LO, CLIP_HI): what clip gives below CLIP_LO
        clip_lo = Signal(signed(32))
        shift = Signal(5)                    # 0 unless the op rounds
        reads_y = Signal()                   # binary op reading src2 from memory
        two_reads = Signal()                 # ... from the same memory as src1

        busy = Signal()
        issuing = Signal()
        second_read = Signal()
        issue_row = Signal(16)
        x_addr = Signal(ROW_ADDR_WIDTH)
        y_addr = Signal(ROW_ADDR_WIDTH)
        write_row = Signal(16)
        write_addr = Signal(ROW_ADDR_WIDTH)

        # Stage valids: data of the reads issued last cycle; operand registers;
        # compute register; result register (write this cycle).
        x_arrives = Signal()
        y_arrives = Signal()
        row_arrives = Signal()
        operands_valid = Signal()
        staged_valid = Signal()          # with Config.vector_stage: the partial products
        computed_valid = Signal()
        result_valid = Signal()

        x_reg = Signal(data.ArrayLayout(signed(32), cols))
        y_reg = Signal(data.ArrayLayout(signed(32), cols))
        computed = Signal(data.ArrayLayout(signed(64), cols))
        result = Signal(data.ArrayLayout(signed(32), cols))

        done = Signal()
        m.d.comb += [
            done.eq(result_valid & (write_row == args.rows - 1)),
            self.done.eq(done),
            self.busy.eq(busy),
            self.insn.ready.eq(~busy | done),
        ]

        with m.If(done):
            m.d.sync += busy.eq(0)

        # Issuing reads: src1 of a row, then (two_reads) src2 of the row in the next cycle.
        x_read = Signal()
        y_read = Signal()
        row_read = Signal()
        m.d.comb += [
            x_read.eq(issuing & ~second_read),
            y_read.eq(issuing & reads_y & (second_read | ~two_reads)),
            row_read.eq(issuing & (second_read | ~two_reads)),
        ]
        with m.If(issuing):
            with m.If(two_reads):
                m.d.sync += second_read.eq(~second_read)
            with m.If(x_read):
                m.d.sync += x_addr.eq(x_addr + 1)
            with m.If(y_read):
                m.d.sync += y_addr.eq(y_addr + 1)
            with m.If(row_read):
                m.d.sync += issue_row.eq(issue_row + 1)
                with m.If(issue_row == args.rows - 1):
                    m.d.sync += issuing.eq(0)

        for memory, port, pulse in ((Memory.SPAD, self.spad_read, self.spad_read_pulse),
                                    (Memory.ACC, self.acc_read, self.acc_read_pulse)):
            x_here = x_read & (args.src1_mem == memory)
            y_here = y_read & (args.src2_mem == memory)
            m.d.comb += [
                port.en.eq(x_here | y_here),
                port.addr.eq(Mux(y_here, y_addr, x_addr)),
                pulse.eq(x_here | y_here),
            ]

        m.d.sync += [
            x_arrives.eq(x_read),
            y_arrives.eq(y_read),
            row_arrives.eq(row_read),
            operands_valid.eq(row_arrives),
            computed_valid.eq(staged_valid if vector_stage else operands_valid),
            result_valid.eq(computed_valid),
        ]

        # Operand registers: scratchpad elements sign-extended to int32.
        for j in range(cols):
            x_in = Mux(args.src1_mem == Memory.ACC, self.acc_read.data[j], self.spad_read.data[j])
            y_in = Mux(args.src2_mem == Memory.ACC, self.acc_read.data[j], self.spad_read.data[j])
            with m.If(x_arrives):
                m.d.sync += x_reg[j].eq(x_in)
            with m.If(args.use_imm):
                m.d.sync += y_reg[j].eq(args.imm)
            with m.Elif(y_arrives):
                m.d.sync += y_reg[j].eq(y_in)

        # Compute register: the exact result, before rounding (mul, shr) and saturation.  With
        # Config.vector_stage the multiply takes two stages: the partial products, then their sum (the
        # other ops' results wait beside the products in `staged`).
        if vector_stage:
            m.d.sync += staged_valid.eq(operands_valid)
        for j in range(cols):
            x, y = x_reg[j], y_reg[j]
            if vector_stage:
                staged = Signal(signed(33), name=f"staged_{j}")
                exact, product = staged, self._staged_product(m, j, x, y)
            else:
                exact, product = computed[j], x * y
            with m.Switch(args.op):
                with m.Case(VectorOp.ADD):
                    m.d.sync += exact.eq(x + y)
                with m.Case(VectorOp.SUB):
                    m.d.sync += exact.eq(x - y)
                with m.Case(VectorOp.MUL):
                    if not vector_stage:
                        m.d.sync += exact.eq(product)
                with m.Case(VectorOp.MAX):
                    m.d.sync += exact.eq(Mux(x > y, x, y))
                with m.Case(VectorOp.MIN):
                    m.d.sync += exact.eq(Mux(x < y, x, y))
                with m.Case(VectorOp.CLIP):
                    m.d.sync += exact.eq(Mux(x < clip_lo, clip_floor, Mux(x > clip_hi, clip_hi, x)))
                with m.Default():         # SHR, MOV
                    m.d.sync += exact.eq(x)
            if vector_stage:
                m.d.sync += computed[j].eq(Mux(args.op == VectorOp.MUL, product, staged))

        # Result register: round (shift is 0 for ops that do not round), saturate to the destination.
        for j in range(cols):
            quotient, round_up = shift_for_rounding(computed[j], shift)
            to_int8 = round_and_saturate(quotient, round_up, 8)
            to_int32 = round_and_saturate(quotient, round_up, 32)
            m.d.sync += result[j].eq(Mux(args.dst_mem == Memory.ACC, to_int32, to_int8))

        # Writing.
        with m.If(result_valid):
            m.d.sync += [write_row.eq(write_row + 1), write_addr.eq(write_addr + 1)]
        for memory, port, pulse in ((Memory.SPAD, self.spad_write, self.spad_write_pulse),
                                    (Memory.ACC, self.acc_write, self.acc_write_pulse)):
            here = result_valid & (args.dst_mem == memory)
            m.d.comb += [port.en.eq(here), port.addr.eq(write_addr), pulse.eq(here)]
            element = port.data.shape().elem_shape
            for j in range(cols):
                m.d.comb += port.data[j].eq(result[j][:element.width])

        # Accepting an instruction: last, so that it overrides the final updates of the previous one.
        new = self.insn.payload.args.vector
        new_binary = Signal()
        m.d.comb += new_binary.eq(~_is_one_of(new.op, UNARY_VECTOR_OPS))
        with m.If(self.insn.valid & self.insn.ready):
            m.d.sync += [
                args.eq(new),
                clip_lo.eq(self.clip_lo),
                clip_hi.eq(self.clip_hi),
                clip_floor.eq(Mux(self.clip_lo < self.clip_hi, self.clip_lo, self.clip_hi)),
                shift.eq(Mux((new.op == VectorOp.MUL) | (new.op == VectorOp.SHR), new.shift, 0)),
                reads_y.eq(new_binary & ~new.use_imm),
                two_reads.eq(new_binary & ~new.use_imm & (new.src1_mem == new.src2_mem)),
                busy.eq(1),
                issuing.eq(1),
                second_read.eq(0),
                issue_row.eq(0),
                x_addr.eq(new.src1),
                y_addr.eq(new.src2),
                write_row.eq(0),
                write_addr.eq(new.dst),
            ]
        return m

    @staticmethod
    def _staged_product(m: Module, column: int, x: Value, y: Value) -> Value:
        """With ``Config.vector_stage``: ``x * y`` (int32s) from four 16 x 16 partial products registered in
        this cycle (each fits one 18 x 18 DSP), added in the next: the sum, a cycle after ``x`` and ``y``.

        With ``x = xh * 2**16 + xl`` (``xh`` signed, ``xl`` unsigned) and ``y`` alike, ``x * y = xh*yh *
        2**32 + (xh*yl + xl*yh) * 2**16 + xl*yl``; ``xl*yl`` (32 bits, unsigned) and ``xh*yh * 2**32`` do
        not overlap, so the sum is two adds: the middle terms, then it shifted onto the two outer ones
        side by side."""
        x_lo, x_hi, y_lo, y_hi = x[:16], x[16:].as_signed(), y[:16], y[16:].as_signed()
        low = Signal(32, name=f"product_ll_{column}")
        high = Signal(signed(32), name=f"product_hh_{column}")
        middle = [Signal(signed(33), name=f"product_{name}_{column}") for name in ("lh", "hl")]
        m.d.sync += [low.eq(x_lo * y_lo), high.eq(x_hi * y_hi), middle[0].eq(x_lo * y_hi),
                     middle[1].eq(x_hi * y_lo)]
        return (Cat(low, high).as_signed() + ((middle[0] + middle[1]) << 16))[:64].as_signed()


def _is_one_of(value, members) -> Value:
    """``value`` (an enum view) equals one of ``members``."""
    result = Value.cast(0)
    for member in sorted(members, key=lambda member: member.value):
        result = result | (value == member)
    return result
