"""Instruction decoder: legality and configuration range checks of one instruction word.

Every check is generated from :data:`braze.isa.FORMATS` and the layouts of
:data:`braze.isa.INSTRUCTION`, so that a field added to the ISA is checked
here without touching this file; only the range and overlap rules, which state
what the fields *mean*, are written out (:meth:`Decoder._range_rules`,
:meth:`Decoder._overlap_rules`; the same rules as :func:`braze.isa.model.check_ranges`
and :func:`braze.isa.model.check_overlap`).
"""

from amaranth.hdl import Cat, Module, Mux, Shape, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from braze.isa import FORMATS, INSTRUCTION, Config, ErrorCause, Memory, Unit
from braze.isa.encoding import ALLOWED_DEPS, DEPS, UNARY_VECTOR_OPS, Format, Kind, field_range
from braze.isa.timing import table_rows

__all__ = ["A_EXTENT_BITS", "Decoder", "a_extent", "a_extent_value"]

#: In a fixed order: iterating the set itself would order the generated Verilog by string hashes, which
#: differ from process to process, and a different Verilog text is a different (recompiled) model.
_UNARY_OPS = sorted(UNARY_VECTOR_OPS, key=lambda op: op.value)


#: Width of a MATMUL's A extent, ``(ceil(k/rows) - 1) * a_stride + m`` (16-bit fields: below 2**33).
A_EXTENT_BITS = 33


def a_extent(config: Config, word) -> Value:
    """The A extent of an instruction word (a View of :data:`INSTRUCTION`) read as a MATMUL:
    ``(ceil(k/rows) - 1) * a_stride + m``, exact (no bit of the sum is dropped).

    Meaningful for a MATMUL only; the fetch unit computes it for every word as it enters its FIFO
    (:class:`~braze.hw.fetch.Fetch`), so that the control core's range check needs no multiplier.
    """
    matmul = word.args.matmul
    # ceil(k/rows) - 1 for k >= 1 (k == 0 is BAD_FIELD and never reaches the range rules).
    k_minus_1 = (matmul.k - 1)[:len(matmul.k)]
    chunks_minus_1 = k_minus_1 >> (config.rows.bit_length() - 1)
    return chunks_minus_1 * matmul.a_stride + matmul.m


def a_extent_value(config: Config, word: int) -> int:
    """:func:`a_extent` of an encoded 128-bit instruction word, in Python (for test benches that
    drive the control core's fetch stream themselves)."""
    matmul = INSTRUCTION["args"].shape["matmul"].shape

    def field(name: str) -> int:
        member = matmul[name]
        offset = INSTRUCTION["args"].offset + member.offset
        return (word >> offset) & ((1 << Shape.cast(member.shape).width) - 1)

    k_minus_1 = (field("k") - 1) & ((1 << Shape.cast(matmul["k"].shape).width) - 1)
    return (k_minus_1 >> (config.rows.bit_length() - 1)) * field("a_stride") + field("m")


def _field_value(args, fmt: Format, name: str) -> Value:
    """The raw bits of one field (signed for signed fields), read through the format's layout."""
    return Value.cast(args[fmt.mnemonic][name])


def _field_is_legal(spec, value: Value) -> Value:
    """Whether a field holds a value its encoding defines (the BAD_FIELD rule of ``decode``)."""
    if spec.kind is Kind.ENUM:
        return Cat(*(value == member.value for member in spec.shape)).any()
    if spec.kind is Kind.FLAG:
        return Value.cast(1)
    low, high = field_range(spec)
    shape = Shape.cast(spec.shape)
    full_low = -(1 << (shape.width - 1)) if shape.signed else 0
    full_high = (1 << (shape.width - 1)) - 1 if shape.signed else (1 << shape.width) - 1
    legal = Value.cast(1)
    if low > full_low:
        legal &= value >= low
    if high < full_high:
        legal &= value <= high
    return legal


class Decoder(wiring.Component):
    """Combinational decoder of one 128-bit instruction word.

    Reports the unit an instruction runs on and whether it may execute on this
    configuration.  The encoding checks are exactly those of
    :func:`braze.isa.decode`, in its order (ILLEGAL_OPCODE, BAD_DEPS,
    RESERVED_BITS, BAD_FIELD); an encoding-legal word is then checked against
    the configuration's range rules (ILLEGAL_OPCODE for a VECTOR without a VECTOR unit, TILE_RANGE,
    SPAD_RANGE, ACC_RANGE), first failing rule first, and a word that passes them against the overlap rule
    (OVERLAP: an EPILOGUE/VECTOR source range in the destination's memory that
    overlaps the destination range without being equal to it).

    The MATMUL range check of A (rows ``a`` up to ``a + A extent``) needs a multiplication, the
    *A extent* ``(ceil(k/rows) - 1) * a_stride + m`` (:func:`a_extent`).  It is an output
    (``a_extent``), and with ``extent_input=True`` an input instead: the control core's decoders
    take it from the fetch unit, which computes it as the word enters its FIFO, so that the
    multiplier is not in the cycle that needs the decoder's result.

    Parameters
    ----------
    config : Config
        The accelerator configuration whose array size and memories bound the ranges.
    extent_input : bool
        Take the A extent from the ``a_extent_in`` port instead of computing it.

    Attributes
    ----------
    word : In(INSTRUCTION)
        The instruction word.
    unit : Out(Unit)
        Queue the instruction is dispatched to (meaningless when the opcode is illegal).
    legal : Out(1)
        The word may execute: ``cause`` is ``NONE``.
    cause : Out(ErrorCause)
        The first failing check, or ``NONE``.
    a_extent : Out(A_EXTENT_BITS)
        The MATMUL A extent of ``word`` (meaningless for other opcodes; ``a_extent_in`` with
        ``extent_input``).
    a_extent_in : In(A_EXTENT_BITS)
        Only with ``extent_input``: the A extent of ``word``, computed earlier.
    """

    def __init__(self, config: Config, *, extent_input: bool = False):
        if not isinstance(config, Config):
            raise TypeError(f"Decoder needs a braze.isa.Config, not {config!r}")
        self.config = config
        self.extent_input = bool(extent_input)
        members = {
            "word": In(INSTRUCTION),
            "unit": Out(Unit),
            "legal": Out(1),
            "cause": Out(ErrorCause),
            "a_extent": Out(A_EXTENT_BITS),
        }
        if self.extent_input:
            members["a_extent_in"] = In(A_EXTENT_BITS)
        super().__init__(members)

    def _rows_outside(self, start: Value, count: Value, memory) -> tuple[Value, Value]:
        """Rule: rows ``[start, start+count)`` lie outside ``memory`` (a constant or a Memory value)."""
        spad_rows, acc_rows = self.config.spad_rows, self.config.acc_rows
        if isinstance(memory, Memory):
            size = spad_rows if memory is Memory.SPAD else acc_rows
            cause = ErrorCause.SPAD_RANGE if memory is Memory.SPAD else ErrorCause.ACC_RANGE
            return start + count > size, Value.cast(cause)
        is_spad = memory == Memory.SPAD
        return (start + count > Mux(is_spad, spad_rows, acc_rows),
                Mux(is_spad, ErrorCause.SPAD_RANGE, ErrorCause.ACC_RANGE))

    def _range_rules(self, args) -> dict:
        """Per opcode, the configuration range rules in priority order: ``[(failed, cause), ...]``."""
        config = self.config
        tile = Value.cast(ErrorCause.TILE_RANGE)
        spad, acc = Value.cast(ErrorCause.SPAD_RANGE), Value.cast(ErrorCause.ACC_RANGE)
        load, store = args.load, args.store
        matmul, epilogue, vector = args.matmul, args.epilogue, args.vector

        a_extent = self.a_extent      # computed once, in elaborate
        reads_src2 = ~Cat(*(vector.op == op for op in _UNARY_OPS)).any() & ~vector.use_imm
        src2_outside, src2_cause = self._rows_outside(vector.src2, vector.rows, vector.src2_mem)
        return {
            "load": [
                (load.len > config.cols, tile),
                self._rows_outside(load.addr, load.rows, load.mem),
            ],
            "store": [
                (store.len > config.cols, tile),
                self._rows_outside(store.addr, store.rows, store.mem),
            ],
            "matmul": [
                (matmul.n > config.cols, tile),
                self._rows_outside(matmul.acc, matmul.m, Memory.ACC),
                (matmul.a + a_extent > config.spad_rows, spad),
                (matmul.b + matmul.k > config.spad_rows, spad),
            ],
            "epilogue": [
                (epilogue.n > config.cols, tile),
                self._rows_outside(epilogue.src, epilogue.m, Memory.ACC),
                (epilogue.bias & (epilogue.bias_addr >= config.acc_rows), acc),
                (epilogue.requant & (epilogue.quant_addr + 1 >= config.acc_rows), acc),
                (epilogue.residual & (epilogue.res_addr + epilogue.m > config.spad_rows), spad),
                self._rows_outside(epilogue.dst, epilogue.m, epilogue.out),
            ],
            "predicate": [
                self._rows_outside(args.predicate.addr, args.predicate.rows, args.predicate.mem),
            ],
            "table": [
                self._rows_outside(args.table.addr, table_rows(config), Memory.SPAD),
            ],
            "vector": [
                self._rows_outside(vector.src1, vector.rows, vector.src1_mem),
                (reads_src2 & src2_outside, src2_cause),
                self._rows_outside(vector.dst, vector.rows, vector.dst_mem),
            ],
        }

    @staticmethod
    def _overlap_rules(args) -> dict:
        """Per opcode, the OVERLAP rule: ``[(failed, cause), ...]``, checked after the range rules.

        A source range ``[first, first+count)`` read from the destination's memory must be the
        destination range ``[dst, dst+count)`` itself or disjoint from it.
        """
        overlap = Value.cast(ErrorCause.OVERLAP)
        epilogue, vector = args.epilogue, args.vector

        def partly_overlaps(first: Value, dst: Value, count: Value) -> Value:
            # |first - dst| < count, without a subtraction that could wrap.
            return (first != dst) & (first < dst + count) & (dst < first + count)

        reads_src2 = ~Cat(*(vector.op == op for op in _UNARY_OPS)).any() & ~vector.use_imm
        return {
            "epilogue": [
                ((epilogue.out == Memory.ACC) & partly_overlaps(epilogue.src, epilogue.dst, epilogue.m),
                 overlap),
                (epilogue.residual & (epilogue.out == Memory.SPAD)
                 & partly_overlaps(epilogue.res_addr, epilogue.dst, epilogue.m), overlap),
            ],
            "vector": [
                ((vector.src1_mem == vector.dst_mem) & partly_overlaps(vector.src1, vector.dst, vector.rows),
                 overlap),
                (reads_src2 & (vector.src2_mem == vector.dst_mem)
                 & partly_overlaps(vector.src2, vector.dst, vector.rows), overlap),
            ],
        }

    def elaborate(self, platform):
        m = Module()
        word = self.word
        args_bits = word.args.as_value()
        deps_bits = word.deps.as_value()

        is_opcode = {fmt.opcode: word.opcode == fmt.opcode for fmt in FORMATS}
        illegal_opcode = ~Cat(*is_opcode.values()).any()
        bad_deps, reserved_bits, bad_field = [], [], []
        for fmt in FORMATS:
            allowed = sum(1 << DEPS[name].offset for name in ALLOWED_DEPS[fmt.unit])
            bad_deps.append(is_opcode[fmt.opcode] & (deps_bits & ~allowed & ((1 << DEPS.size) - 1)).any())
            reserved_bits.append(is_opcode[fmt.opcode] & args_bits[fmt.layout.size:].any())
            fields_legal = Cat(*(_field_is_legal(spec, _field_value(word.args, fmt, spec.name))
                                 for spec in fmt.fields)).all() if fmt.fields else Value.cast(1)
            bad_field.append(is_opcode[fmt.opcode] & ~fields_legal)

        with m.Switch(word.opcode):
            for fmt in FORMATS:
                with m.Case(fmt.opcode):
                    m.d.comb += self.unit.eq(fmt.unit)
            with m.Default():
                m.d.comb += self.unit.eq(Unit.CONTROL)

        m.d.comb += self.a_extent.eq(self.a_extent_in if self.extent_input else a_extent(self.config, word))
        range_rules = self._range_rules(word.args)
        overlap_rules = self._overlap_rules(word.args)
        rules = {name: range_rules[name] + overlap_rules.get(name, []) for name in range_rules}
        if not self.config.vector_unit:
            # A build without a VECTOR unit (Config.vector_unit=0): an encoding-legal VECTOR fails here,
            # where the range rules would check it (braze.isa.model.check_ranges).
            rules["vector"] = [(Value.cast(1), Value.cast(ErrorCause.ILLEGAL_OPCODE))]
        with m.If(illegal_opcode):
            m.d.comb += self.cause.eq(ErrorCause.ILLEGAL_OPCODE)
        with m.Elif(Cat(*bad_deps).any()):
            m.d.comb += self.cause.eq(ErrorCause.BAD_DEPS)
        with m.Elif(Cat(*reserved_bits).any()):
            m.d.comb += self.cause.eq(ErrorCause.RESERVED_BITS)
        with m.Elif(Cat(*bad_field).any()):
            m.d.comb += self.cause.eq(ErrorCause.BAD_FIELD)
        with m.Else():
            with m.Switch(word.opcode):
                for fmt in FORMATS:
                    if fmt.mnemonic not in rules:
                        continue
                    with m.Case(fmt.opcode):
                        cause = Value.cast(ErrorCause.NONE)
                        for failed, rule_cause in reversed(rules[fmt.mnemonic]):
                            cause = Mux(failed, rule_cause, cause)
                        m.d.comb += self.cause.eq(cause)
        m.d.comb += self.legal.eq(self.cause == ErrorCause.NONE)
        return m

