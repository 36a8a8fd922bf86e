"""The Braze instruction set, defined once.

Every instruction is one 128-bit word (16 bytes, little-endian in memory).
Its layout is :data:`INSTRUCTION`, an :class:`amaranth.lib.data.StructLayout`::

    bits 0..3    opcode     (:class:`Opcode`)
    bits 4..7    deps       (:data:`DEPS`: pop_prev, pop_next, push_prev, push_next)
    bits 8..127  args       (a union: one :class:`Format` layout per opcode)

The hardware decoder views a fetched word through :data:`INSTRUCTION`; the
Python encoder and decoder below read field offsets and widths from the very
same layouts; the assembler, the disassembler and the ISA document read the
:class:`Format` table.  Nothing about an instruction is written anywhere else.

Dependencies
------------
The machine runs three units decoupled: **load** (``LOAD``), **compute**
(``MATMUL``, ``EPILOGUE``, ``VECTOR``, ``CONFIG``, ``TABLE``) and **store** (``STORE``).
Instructions are dispatched in program order into one queue per unit, and
each unit executes its own queue in order, so a unit may run ahead of the
others.  Ordering *between* units is stated with dependency tokens in the
manner of VTA: four token queues connect neighbours (load→compute,
compute→load, compute→store, store→compute).  ``push_next``/``push_prev``
put a token to the next/previous unit after the instruction completes;
``pop_prev``/``pop_next`` wait for (and consume) a token from that unit
before the instruction starts.  The load unit has no previous unit and the
store unit no next one; setting those flags is illegal.

``FENCE``, ``COUNTERS`` and ``HALT`` are *barriers*: they are executed by the
control unit once every earlier instruction has completed, and take no tokens.

A program is correct when every pair of instructions on different units that
touch the same memory (scratchpad, accumulator or external) is ordered by
tokens or barriers.  The reference model checks this and reports a race.

Control flow
------------
Eight int32 scalar registers r0..r7 (:data:`SCALAR_REGS`; r0 reads as 0) hold loop counters,
offsets and runtime parameters: the host writes r1..r7 before a run, and they keep their values
across runs (a start does not clear them; a run's writes stay). ``SCALAR`` adds registers and an
immediate, ``BRANCH`` compares two registers and continues at a relative target, and ``PREDICATE``
computes a property of on-chip rows (any nonzero element; the largest element) into a register.
The address fields of LOAD, STORE, MATMUL and PREDICATE may name a register (``addr_reg``,
``dram_reg``, ``a_reg`` ...; 0 names none) whose value is added to the field, modulo the field's
width, when the instruction is dispatched; the range rules apply to the sum. So a loop body is
dispatched once per iteration with different addresses, and a tiled kernel is a short program.

SCALAR and BRANCH execute in the dispatcher, in program order, one per cycle, without waiting for
the units: a branch is resolved before any later instruction is dispatched, and registers read at
dispatch are those written by the instructions before it in program order.  PREDICATE runs on the
compute unit, in its queue order and with its dependency tokens (like a VECTOR reading the rows:
pop the token of the LOAD that wrote them).  While a PREDICATE runs the dispatcher goes on; an
instruction that names its ``dst`` register (a SCALAR's ``dst``/``src1``/``src2``, a BRANCH's
``a``/``b``, a register-offset field), and any other PREDICATE, waits in the dispatcher until it
has completed, so that registers read at dispatch are still those of program order and the next
BRANCH on the result sees it.  A PREDICATE of scratchpad rows that pushes no token runs *beside*
the compute unit: the next compute instruction may start while it runs if it is a MATMUL (which
reads the scratchpad and writes only the accumulator), anything else waits for it, and no later
compute instruction retires (pushes a token) before it has completed -- so every result is that
of program order, only sooner.  A kernel can thus test a block one step ahead, while the units
work on the previous one, at the cost of one compute-unit cycle.  A taken branch empties the
fetch unit, which reads on from the target: its target is dispatched a memory read latency and
some cycles later (``braze.isa.timing.fetch_redirect_cycles``; 25 on ``default``), and the
words after it as the fetch unit refills, a few at a time, a read latency apart
(``braze.isa.timing.FetchStream``).  The units' queues hide that only when they hold enough work:
a loop whose body is many short instructions waits for fetch, and a kernel is better left
straight-line then.  Control instructions take no
tokens and are not barriers.  The reference model checks tokens and races in the order the
instructions are executed, iteration by iteration.  A taken branch below the program base stops
with ``BRANCH_RANGE``; a loop that never ends runs into the watchdog (``CYCLE_LIMIT``).

Errors
------
An illegal or failing instruction stops the machine with an
:class:`ErrorCause` and the instruction's byte address.  Because the units
run decoupled, only the instructions ordered before the failing one by a
barrier are guaranteed to have completed; instructions of other units may
have run past it, and a LOAD or STORE that fails part-way has moved (and
counted) its earlier rows.  Memory contents and exact counters after an
error are therefore defined only up to the last barrier before it.  Programs
start at a 16-byte aligned address; an unaligned base is a FETCH_ERROR.
"""

from __future__ import annotations

import dataclasses
import enum as py_enum
import functools
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from amaranth.hdl import Shape, signed, unsigned
from amaranth.lib import data, enum

from .config import MAX_ARRAY_DIM
from .errors import BrazeError, IllegalInstruction

INSN_BITS = 128
INSN_BYTES = INSN_BITS // 8
#: Scalar registers r0..r7 (int32): r0 reads as 0; r1..r7 are written by SCALAR and PREDICATE and by
#: the host before a run (runtime parameters, the SCALAR1..7 registers of the host interface).
SCALAR_REGS = 8


class Opcode(enum.Enum, shape=4):
    """Instruction opcodes.  Opcode 0 is illegal, so zeroed memory never executes."""

    LOAD = 1
    STORE = 2
    MATMUL = 3
    EPILOGUE = 4
    VECTOR = 5
    CONFIG = 6
    FENCE = 7
    COUNTERS = 8
    HALT = 9
    TABLE = 10
    # Control flow (issue 13), numbered from the top so that other additions can grow from 10.
    PREDICATE = 13
    BRANCH = 14
    SCALAR = 15


class Unit(enum.Enum, shape=2):
    """The unit whose queue an instruction is dispatched to."""

    LOAD = 0
    COMPUTE = 1
    STORE = 2
    CONTROL = 3


class Memory(enum.Enum, shape=1):
    """On-chip memories: scratchpad rows of int8, accumulator rows of int32."""

    SPAD = 0
    ACC = 1


class Activation(enum.Enum, shape=2):
    """Activation stage of ``EPILOGUE``."""

    NONE = 0
    RELU = 1
    CLIP = 2
    #: Look the value, saturated to int8, up in the 256-entry activation table that ``TABLE`` writes.
    TABLE = 3


class VectorOp(enum.Enum, shape=4):
    """Element-wise operations of ``VECTOR`` (values 8..15 are illegal)."""

    ADD = 0
    SUB = 1
    MUL = 2
    MAX = 3
    MIN = 4
    SHR = 5
    CLIP = 6
    MOV = 7


class BranchCond(enum.Enum, shape=3):
    """Conditions of ``BRANCH`` on scalar registers ``a`` and ``b`` (values 5..7 are illegal)."""

    ALWAYS = 0
    EQ = 1
    NE = 2
    LT = 3
    GE = 4


class PredicateOp(enum.Enum, shape=2):
    """Properties of on-chip rows that ``PREDICATE`` computes (values 2..3 are illegal)."""

    ANY = 0
    MAX = 1



class ConfigReg(enum.Enum, shape=8):
    """Registers written by ``CONFIG`` and read by ``EPILOGUE`` and ``VECTOR``.

    All are int32 and reset to 0.
    """

    CLIP_LO = 0
    CLIP_HI = 1
    OUT_ZP = 2



class ErrorCause(enum.Enum, shape=4):
    """Why the machine stopped with an error (hardware status register field)."""

    NONE = 0
    ILLEGAL_OPCODE = 1
    RESERVED_BITS = 2
    BAD_DEPS = 3
    BAD_FIELD = 4
    SPAD_RANGE = 5
    ACC_RANGE = 6
    DRAM_RANGE = 7
    TILE_RANGE = 8
    DEADLOCK = 9
    FETCH_ERROR = 10
    OVERLAP = 11
    WATCHDOG = 12
    BRANCH_RANGE = 13
    RACE = 15


# Members are singletons compared by identity: hash them by identity too.  The inherited
# ``Enum.__hash__`` is a Python-level call, and the compiler hashes millions of these.  (Before any
# set or dict of members is built: one built earlier would hold the old hashes.)
for _enum in (Opcode, Unit, Memory, Activation, VectorOp, BranchCond, PredicateOp, ConfigReg, ErrorCause):
    _enum.__hash__ = object.__hash__

#: Vector operations that read only their first operand.
UNARY_VECTOR_OPS = frozenset({VectorOp.SHR, VectorOp.CLIP, VectorOp.MOV})

CONFIG_REG_DOC = {
    ConfigReg.CLIP_LO: "lower bound of the CLIP activation and of VECTOR op=clip",
    ConfigReg.CLIP_HI: "upper bound of the CLIP activation and of VECTOR op=clip",
    ConfigReg.OUT_ZP: "output zero point, added by the EPILOGUE requantize stage",
}

ERROR_CAUSE_DOC = {
    ErrorCause.NONE: "no error",
    ErrorCause.ILLEGAL_OPCODE: "the opcode field holds no defined opcode, or the configuration lacks the "
                               "opcode's unit (VECTOR with `vector_unit=0`; raised with the range checks)",
    ErrorCause.RESERVED_BITS: "a bit outside the opcode's fields is set",
    ErrorCause.BAD_DEPS: "a dependency flag names a neighbour the unit does not have",
    ErrorCause.BAD_FIELD: "a field holds a value its encoding does not define (zero count, unknown enum)",
    ErrorCause.SPAD_RANGE: "a scratchpad access lies outside this configuration's scratchpad",
    ErrorCause.ACC_RANGE: "an accumulator access lies outside this configuration's accumulator",
    ErrorCause.DRAM_RANGE: "an external-memory access failed (outside memory; AXI SLVERR/DECERR)",
    ErrorCause.TILE_RANGE: "a tile or row is wider than this configuration's array",
    ErrorCause.DEADLOCK: "every unit waits for a dependency token that no instruction will push",
    ErrorCause.FETCH_ERROR: "instruction fetch failed (AXI error response)",
    ErrorCause.OVERLAP: "EPILOGUE/VECTOR source and destination rows in one memory overlap but differ",
    ErrorCause.WATCHDOG: "the run reached its cycle limit (CYCLE_LIMIT) before HALT",
    ErrorCause.BRANCH_RANGE: "a taken BRANCH targets an address below the program base",
    ErrorCause.RACE: "reference model only: two units touch the same memory without a token ordering them",
}


class Kind(py_enum.Enum):
    """How a field is read and written in assembly, and what it means."""

    COUNT = "count"      # positive integer
    UINT = "uint"        # non-negative integer
    INT = "int"          # signed integer
    ROW = "row"          # row address in the scratchpad or accumulator
    DRAM = "dram"        # byte address in external memory
    FLAG = "flag"        # one bit, written as a bare word
    ENUM = "enum"        # one of an enum's members, by lower-case name


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """One field of an instruction format.

    ``default`` is the value the assembler and :meth:`Instruction.make` fill in
    when the field is omitted; ``None`` makes the field required.
    ``required_if`` makes the assembler require a field that has a default
    when a flag of the instruction has a value: ``("zero", False)`` for the
    external address of a LOAD, which only a zero-filling LOAD may omit in
    assembly (a forgotten address is an error, never a silent 0).  ``limit``
    is the largest legal value where that is below what the bits hold.
    """

    name: str
    shape: Any
    kind: Kind
    doc: str
    default: Any = None
    limit: int | None = None
    required_if: tuple[str, bool] | None = None

    def required(self, flags: Mapping[str, Any]) -> bool:
        """Whether the field must be given, for an instruction whose flag fields are ``flags``."""
        if self.default is None:
            return True
        if self.required_if is None:
            return False
        flag, value = self.required_if
        return bool(flags.get(flag, False)) == value

    @property
    def width(self) -> int:
        return Shape.cast(self.shape).width


def _f(name, shape, kind, doc, default=None, limit=None, required_if=None):
    if kind is Kind.FLAG:
        default = False
    return FieldSpec(name, shape, kind, doc, default, limit, required_if)


@dataclasses.dataclass(frozen=True)
class Format:
    """The argument layout and meaning of one opcode."""

    opcode: Opcode
    unit: Unit
    summary: str
    doc: str
    fields: tuple[FieldSpec, ...]

    @property
    def mnemonic(self) -> str:
        return self.opcode.name.lower()

    @functools.cached_property
    def layout(self) -> data.StructLayout:
        return data.StructLayout({f.name: f.shape for f in self.fields})

    @functools.cached_property
    def slots(self) -> tuple[tuple[FieldSpec, int, int], ...]:
        """(field, offset in the instruction word, width), read off :attr:`layout` once."""
        return tuple((spec, ARGS_OFFSET + self.layout[spec.name].offset, self.layout[spec.name].width)
                     for spec in self.fields)

    def field(self, name: str) -> FieldSpec:
        for spec in self.fields:
            if spec.name == name:
                return spec
        raise KeyError(name)


_LOCAL_MEM = _f("mem", Memory, Kind.ENUM, "on-chip memory: spad (int8 rows) or acc (int32 rows)")
_ROW_LEN = _f("len", unsigned(7), Kind.COUNT,
              "elements per row (1..cols); int8 in spad, int32 in acc", limit=MAX_ARRAY_DIM)
_DRAM_STRIDE = _f("stride", unsigned(32), Kind.UINT, "bytes from one external row to the next")


def _reg(name: str, doc: str, default: int | None = None) -> FieldSpec:
    """A field naming one of the :data:`SCALAR_REGS` scalar registers (a larger number is BAD_FIELD)."""
    return _f(name, unsigned(4), Kind.UINT, doc, default=default, limit=SCALAR_REGS - 1)


_ADDR_REG = _reg("addr_reg", "scalar register added to `addr` (0: none)", default=0)
_DRAM_REG = _reg("dram_reg", "scalar register added to `dram` (0: none)", default=0)

FORMATS: tuple[Format, ...] = (
    Format(
        Opcode.LOAD, Unit.LOAD, "2-D strided copy from external memory into an on-chip memory",
        "Row r (0 <= r < rows) reads `len` elements from external address "
        "`dram + r*stride` into local row `addr + r` of `mem`, and fills the rest "
        "of the local row with zeros. With `zero` set, external memory is not read "
        "and the rows are written with zeros.",
        (
            _LOCAL_MEM,
            _f("zero", unsigned(1), Kind.FLAG, "write zero rows without reading external memory"),
            _f("addr", unsigned(16), Kind.ROW, "first local row"),
            _f("rows", unsigned(16), Kind.COUNT, "number of rows"),
            _ROW_LEN,
            _f("dram", unsigned(32), Kind.DRAM, "external byte address of row 0", default=0,
               required_if=("zero", False)),
            dataclasses.replace(_DRAM_STRIDE, default=0, required_if=("zero", False)),

            _ADDR_REG,
            _DRAM_REG,
        ),
    ),
    Format(
        Opcode.STORE, Unit.STORE, "2-D strided copy from an on-chip memory to external memory",
        "Row r (0 <= r < rows) writes the first `len` elements of local row "
        "`addr + r` of `mem` to external address `dram + r*stride` (int32 "
        "elements little-endian).",
        (
            _LOCAL_MEM,
            _f("addr", unsigned(16), Kind.ROW, "first local row"),
            _f("rows", unsigned(16), Kind.COUNT, "number of rows"),
            _ROW_LEN,
            _f("dram", unsigned(32), Kind.DRAM, "external byte address of row 0"),
            _DRAM_STRIDE,

            _ADDR_REG,
            _DRAM_REG,
        ),
    ),
    Format(
        Opcode.MATMUL, Unit.COMPUTE, "int8 matrix multiply into int32 accumulator rows",
        "C[i, j] for 0 <= i < m, 0 <= j < n is accumulator row `acc + i`, column j. "
        "C = A x B (or C += A x B with `accumulate`), A is m x k and B is k x n, "
        "both int8. K is split into chunks of `rows` (the array height): element "
        "A[i, c*rows + r] is byte r of scratchpad row `a + c*a_stride + i`, and "
        "B[k, j] is byte j of scratchpad row `b + k`. Accumulator columns n..cols-1 "
        "are left unchanged. Products and sums wrap modulo 2**32.",
        (
            _f("acc", unsigned(16), Kind.ROW, "accumulator row of C[0, :]"),
            _f("a", unsigned(16), Kind.ROW, "scratchpad row of A[0, 0:rows]"),
            _f("b", unsigned(16), Kind.ROW, "scratchpad row of B[0, :]"),
            _f("a_stride", unsigned(16), Kind.UINT,
               "scratchpad rows from one K-chunk of A to the next (usually m)"),
            _f("m", unsigned(16), Kind.COUNT, "rows of A and C"),
            _f("n", unsigned(7), Kind.COUNT, "columns of B and C (1..cols)", limit=MAX_ARRAY_DIM),
            _f("k", unsigned(16), Kind.COUNT, "reduction length"),
            _f("accumulate", unsigned(1), Kind.FLAG, "add to C instead of overwriting it"),

            _reg("acc_reg", "scalar register added to `acc` (0: none)", default=0),
            _reg("a_reg", "scalar register added to `a` (0: none)", default=0),
            _reg("b_reg", "scalar register added to `b` (0: none)", default=0),
        ),
    ),
    Format(
        Opcode.EPILOGUE, Unit.COMPUTE, "fused bias, requantize, residual and activation on accumulator rows",
        "For each of m rows of n columns from accumulator row `src + i`, in one pass: "
        "(1) `bias`: x = wrap32(x + bias[j]), bias[j] = acc[bias_addr][j]; "
        "(2) `requant`: x = sat32(round_half_even(x * mult[j] / 2**shift[j]) + OUT_ZP), "
        "mult[j] = acc[quant_addr][j] (int32), shift[j] = acc[quant_addr+1][j] & 63; "
        "(3) `residual`: x = sat32(x + spad[res_addr + i][j]) (int8); "
        "(4) `act`: relu gives max(x, 0), clip gives min(max(x, CLIP_LO), CLIP_HI), table gives "
        "table[sat8(x) mod 256] (the int8 activation table TABLE writes, sign-extended); "
        "(5) write: to scratchpad row `dst + i` saturated to int8 (`out=spad`), or to "
        "accumulator row `dst + i` as int32 (`out=acc`). Columns n..cols-1 of the "
        "destination row are written with zeros. Rows are processed in order; a source range "
        "(src, or res_addr) in the destination's memory must equal the destination range or "
        "not overlap it (OVERLAP otherwise).",
        (
            _f("src", unsigned(16), Kind.ROW, "accumulator row of the first input row"),
            _f("m", unsigned(16), Kind.COUNT, "rows"),
            _f("n", unsigned(7), Kind.COUNT, "columns (1..cols)", limit=MAX_ARRAY_DIM),
            _f("dst", unsigned(16), Kind.ROW, "first destination row"),
            _f("out", Memory, Kind.ENUM, "destination memory: spad (int8) or acc (int32)",
               default=Memory.SPAD),
            _f("bias", unsigned(1), Kind.FLAG, "enable the bias stage"),
            _f("bias_addr", unsigned(16), Kind.ROW, "accumulator row holding the bias", default=0,
               required_if=("bias", True)),
            _f("requant", unsigned(1), Kind.FLAG, "enable the requantize stage"),
            _f("quant_addr", unsigned(16), Kind.ROW,
               "accumulator row holding multipliers; shifts in the next row", default=0,
               required_if=("requant", True)),
            _f("residual", unsigned(1), Kind.FLAG, "enable the residual stage"),
            _f("res_addr", unsigned(16), Kind.ROW, "scratchpad row of the residual's first row", default=0,
               required_if=("residual", True)),
            _f("act", Activation, Kind.ENUM, "activation", default=Activation.NONE),
        ),
    ),
    Format(
        Opcode.VECTOR, Unit.COMPUTE, "element-wise operation over whole on-chip rows",
        "For each of `rows` rows and all `cols` elements: x = src1[i][j]; y = src2[i][j], "
        "or y = imm with `use_imm`. Elements read from the scratchpad are int8 and "
        "from the accumulator int32; the result is computed exactly and saturated to "
        "the destination's type. add: x+y; sub: x-y; mul: round_half_even(x*y / 2**shift); "
        "max, min; shr: round_half_even(x / 2**shift); clip: min(max(x, CLIP_LO), CLIP_HI); "
        "mov: x. shr, clip and mov read no second operand. An operand range in the destination's "
        "memory must equal the destination range or not overlap it (OVERLAP otherwise).",
        (
            _f("op", VectorOp, Kind.ENUM, "operation"),
            _f("dst_mem", Memory, Kind.ENUM, "memory of the destination"),
            _f("src1_mem", Memory, Kind.ENUM, "memory of the first operand"),
            _f("src2_mem", Memory, Kind.ENUM, "memory of the second operand", default=Memory.SPAD),
            _f("use_imm", unsigned(1), Kind.FLAG, "second operand is `imm` instead of src2"),
            _f("dst", unsigned(16), Kind.ROW, "first destination row"),
            _f("src1", unsigned(16), Kind.ROW, "first row of the first operand"),
            _f("src2", unsigned(16), Kind.ROW, "first row of the second operand", default=0),
            _f("rows", unsigned(16), Kind.COUNT, "number of rows"),
            _f("imm", signed(16), Kind.INT, "immediate second operand", default=0),
            _f("shift", unsigned(5), Kind.UINT, "right shift of mul and shr", default=0),
        ),
    ),
    Format(
        Opcode.CONFIG, Unit.COMPUTE, "write a configuration register",
        "Sets register `reg` to `value`; later EPILOGUE and VECTOR instructions read it.",
        (
            _f("reg", ConfigReg, Kind.ENUM, "register"),
            _f("value", signed(32), Kind.INT, "value"),
        ),
    ),
    Format(
        Opcode.FENCE, Unit.CONTROL, "wait until every earlier instruction has completed",
        "A barrier: no later instruction starts before every earlier one has completed.",
        (),
    ),
    Format(
        Opcode.COUNTERS, Unit.CONTROL, "snapshot the performance counters to external memory",
        "A barrier. Once every earlier instruction has completed, writes every "
        "performance counter as a 64-bit little-endian integer, in Counter order, "
        "starting at external address `dram`; then, with `reset`, sets them to zero. "
        "The COUNTERS instruction itself is counted after the snapshot (and reset).",
        (
            _f("dram", unsigned(32), Kind.DRAM, "external byte address of the snapshot"),
            _f("reset", unsigned(1), Kind.FLAG, "zero the counters after the snapshot"),
        ),
    ),
    Format(
        Opcode.HALT, Unit.CONTROL, "stop, once every earlier instruction has completed",
        "A barrier; then the machine reports done.",
        (),
    ),
    Format(
        Opcode.TABLE, Unit.COMPUTE, "write the EPILOGUE activation table from scratchpad rows",
        "Copies the 256/cols scratchpad rows `addr` .. `addr + 256/cols - 1` into the 256-entry int8 "
        "activation table that EPILOGUE with act=table reads: entry e (0 <= e < 256) is byte e mod cols "
        "of row `addr + e // cols`, so the table is one 256-byte external array indexed by the int8 "
        "input's two's-complement byte, loaded with one LOAD of 256/cols rows of cols bytes. "
        "Runs on the compute unit in its queue order and with its tokens (pop the LOAD that wrote the "
        "rows); every later EPILOGUE reads the new table. The table keeps its contents across runs "
        "(like the CONFIG registers) and is zero after reset.",
        (
            _f("addr", unsigned(16), Kind.ROW, "first scratchpad row of the table"),
        ),
    ),
    Format(
        Opcode.PREDICATE, Unit.COMPUTE, "compute a property of on-chip rows into a scalar register",
        "Reads all `cols` elements of rows `addr + r[addr_reg]` .. `+ rows - 1` of `mem` (int8 in spad, "
        "int32 in acc) and writes scalar register `dst`: any: 1 if an element is nonzero, else 0; "
        "max: the largest element (signed). Runs on the compute unit, in its queue order and with "
        "its tokens (pop the LOAD that wrote the rows); the dispatcher goes on, and holds only an "
        "instruction that names `dst` (or another PREDICATE) until it has completed, so later "
        "BRANCH and SCALAR instructions see its result. "
        "dst = 0 discards the result.",
        (
            _f("op", PredicateOp, Kind.ENUM, "property: any (nonzero) or max"),
            _reg("dst", "scalar register written"),
            _LOCAL_MEM,
            _f("addr", unsigned(16), Kind.ROW, "first row"),
            _f("rows", unsigned(16), Kind.COUNT, "number of rows"),
            _ADDR_REG,
        ),
    ),
    Format(
        Opcode.BRANCH, Unit.CONTROL, "conditional relative branch on scalar registers",
        "Executed by the dispatcher in program order, without waiting for the units: if the "
        "condition holds (always; eq: r[a] == r[b]; ne; lt: r[a] < r[b] signed; ge), the next "
        "instruction is fetched from `pc + 16*offset`, else from `pc + 16`. A taken branch to an "
        "address below the program base stops with BRANCH_RANGE; one beyond external memory "
        "fails its fetch (FETCH_ERROR). A loop that never ends is stopped by the watchdog "
        "(CYCLE_LIMIT).",
        (
            _f("cond", BranchCond, Kind.ENUM, "condition", default=BranchCond.ALWAYS),
            _reg("a", "first scalar register compared", default=0),
            _reg("b", "second scalar register compared", default=0),
            _f("offset", signed(16), Kind.INT, "target, in instructions relative to this one"),
        ),
    ),
    Format(
        Opcode.SCALAR, Unit.CONTROL, "scalar register arithmetic: r[dst] = r[src1] + r[src2] + imm",
        "Executed by the dispatcher in program order, without waiting for the units. The sum "
        "wraps modulo 2**32; registers hold int32. Register 0 reads as 0 and ignores writes, so "
        "`scalar dst=1 imm=5` sets r1 and `scalar dst=1 src1=1 imm=-1` decrements it.",
        (
            _reg("dst", "scalar register written"),
            _reg("src1", "first scalar register added", default=0),
            _reg("src2", "second scalar register added", default=0),
            _f("imm", signed(32), Kind.INT, "immediate added", default=0),
        ),
    ),
)

FORMAT_BY_OPCODE: Mapping[Opcode, Format] = MappingProxyType({f.opcode: f for f in FORMATS})
FORMAT_BY_MNEMONIC: Mapping[str, Format] = MappingProxyType({f.mnemonic: f for f in FORMATS})

#: The control-flow instructions: executed by the dispatcher (BRANCH, SCALAR) or read back by it
#: (PREDICATE).  They have no instructions-retired counter: one would change the counter snapshot's
#: layout, and with it every existing program's COUNTERS.
CONTROL_FLOW_OPCODES = frozenset({Opcode.PREDICATE, Opcode.BRANCH, Opcode.SCALAR})

#: Per opcode, the address fields a scalar register may offset: {field: its register field}.  The
#: effective value is ``(field + r[register]) mod 2**width`` of the field, resolved at dispatch.
REGISTER_OFFSETS: Mapping[Opcode, Mapping[str, str]] = MappingProxyType({
    Opcode.LOAD: MappingProxyType({"addr": "addr_reg", "dram": "dram_reg"}),
    Opcode.STORE: MappingProxyType({"addr": "addr_reg", "dram": "dram_reg"}),
    Opcode.MATMUL: MappingProxyType({"acc": "acc_reg", "a": "a_reg", "b": "b_reg"}),
    Opcode.PREDICATE: MappingProxyType({"addr": "addr_reg"}),
})

DEP_FLAGS = ("pop_prev", "pop_next", "push_prev", "push_next")
DEPS = data.StructLayout({name: unsigned(1) for name in DEP_FLAGS})
ARGS_BITS = INSN_BITS - Shape.cast(Opcode).width - DEPS.size

#: The instruction word, as the hardware decoder views it.
INSTRUCTION = data.StructLayout({
    "opcode": Opcode,
    "deps": DEPS,
    "args": data.UnionLayout({f.mnemonic: f.layout for f in FORMATS} | {"raw": unsigned(ARGS_BITS)}),
})
assert INSTRUCTION.size == INSN_BITS
assert all(f.layout.size <= ARGS_BITS for f in FORMATS)
ARGS_OFFSET = INSTRUCTION["args"].offset
_OPCODE_OFFSET = INSTRUCTION["opcode"].offset
_DEP_OFFSETS = {name: INSTRUCTION["deps"].offset + DEPS[name].offset for name in DEP_FLAGS}

#: Dependency flags each unit may set; the others are illegal.
ALLOWED_DEPS: Mapping[Unit, frozenset[str]] = MappingProxyType({
    Unit.LOAD: frozenset({"pop_next", "push_next"}),
    Unit.COMPUTE: frozenset(DEP_FLAGS),
    Unit.STORE: frozenset({"pop_prev", "push_prev"}),
    Unit.CONTROL: frozenset(),
})


def _field_range(spec: FieldSpec) -> tuple[int, int]:
    shape = Shape.cast(spec.shape)
    if shape.signed:
        low, high = -(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1
    else:
        low, high = 0, (1 << shape.width) - 1
    if spec.kind is Kind.COUNT:
        low = 1
    if spec.limit is not None:
        high = min(high, spec.limit)
    return low, high


def field_range(spec: FieldSpec) -> tuple[int, int]:
    """Smallest and largest legal value of an integer field."""
    return _field_range(spec)


class InstructionError(BrazeError, ValueError):
    """An instruction built in Python with a missing, unknown or out-of-range field."""


def _coerce(spec: FieldSpec, value: Any, mnemonic: str) -> Any:
    where = f"{mnemonic} field {spec.name!r}"
    if spec.kind is Kind.ENUM:
        enum_cls = spec.shape
        if isinstance(value, enum_cls):
            return value
        if isinstance(value, str):
            try:
                return enum_cls[value.upper()]
            except KeyError:
                pass
        names = ", ".join(m.name.lower() for m in enum_cls)
        raise InstructionError(f"{where}: {value!r} is not one of {names}")
    if spec.kind is Kind.FLAG:
        if value in (0, 1, False, True):
            return bool(value)
        raise InstructionError(f"{where}: {value!r} is not a flag (0/1/True/False)")
    if not isinstance(value, int) or isinstance(value, bool):
        raise InstructionError(f"{where}: {value!r} is not an integer")
    low, high = _field_range(spec)
    if not low <= value <= high:
        raise InstructionError(f"{where}: {value} is outside {low}..{high}")
    return value


@dataclasses.dataclass(frozen=True)
class Instruction:
    """One decoded instruction: an opcode, its argument values and its dependency flags.

    Build one with :meth:`make`; arguments read as attributes (``insn.m``).
    """

    opcode: Opcode
    args: Mapping[str, Any]
    deps: frozenset[str] = frozenset()

    @classmethod
    def make(cls, opcode: Opcode | str, /, **values: Any) -> Instruction:
        """Build an instruction, filling defaults and checking every field.

        Dependency flags are keyword arguments too (``push_next=True``).
        """
        maker = _MAKERS.get(opcode)
        if maker is None:
            if not isinstance(opcode, str):
                return cls.make(FORMAT_BY_OPCODE[opcode].opcode, **values)   # KeyError: not an opcode
            maker = _MAKERS.get(opcode.lower())
            if maker is None:
                raise InstructionError(f"no opcode named {opcode!r}")
        fmt, allowed_deps, names, fields = maker
        deps = _NO_DEPS
        if not _DEP_FLAG_SET.isdisjoint(values):        # most instructions are made without flags
            flags = [name for name in DEP_FLAGS if values.pop(name, False)]
            if flags:
                deps = frozenset(flags)
                if not deps <= allowed_deps:
                    raise InstructionError(
                        f"{fmt.mnemonic} runs on the {fmt.unit.name.lower()} unit, which cannot "
                        f"{', '.join(sorted(deps - allowed_deps))}")
        if not names.issuperset(values):
            raise InstructionError(f"{fmt.mnemonic} has no field(s) {', '.join(sorted(set(values) - names))}")
        args = {}
        # The common cases are checked inline from the precomputed table; anything else (numpy
        # integers, enum names as strings, 0/1 flags, values out of range) goes through _coerce,
        # which converts it or raises the error naming the field.
        for name, kind, low, high, default, spec in fields:
            value = values.get(name, _MISSING)
            if value is _MISSING:
                if default is None:
                    raise InstructionError(f"{fmt.mnemonic} needs field {name!r}")
                args[name] = default
            elif kind is int:
                args[name] = value if type(value) is int and low <= value <= high \
                    else _coerce(spec, value, fmt.mnemonic)
            elif kind is bool:
                args[name] = value if value is True or value is False else _coerce(spec, value, fmt.mnemonic)
            else:                                   # an enum class
                args[name] = value if type(value) is kind else _coerce(spec, value, fmt.mnemonic)
        return _new_instruction(fmt.opcode, MappingProxyType(args), deps)

    def with_int(self, name: str, value: int) -> Instruction:
        """The same instruction with integer field ``name`` set to ``value``, checked as :meth:`make` checks
        it: a compiler emitting one instruction at many scratchpad rows (a gathered A tile in each slot
        of a ring) moves a copy instead of making each anew."""
        field = _INT_FIELDS[self.opcode].get(name)
        if field is None:
            raise InstructionError(f"{self.format.mnemonic} has no integer field {name!r}")
        low, high, spec = field
        if not (type(value) is int and low <= value <= high):
            value = _coerce(spec, value, self.format.mnemonic)
        args = dict(self.args)
        args[name] = value
        return _new_instruction(self.opcode, MappingProxyType(args), self.deps)

    def with_deps(self, deps: frozenset[str]) -> Instruction:
        """The same instruction with dependency flags ``deps`` (checked against its unit)."""
        if not deps <= ALLOWED_DEPS[self.unit]:
            raise InstructionError(f"{self.format.mnemonic} runs on the {self.unit.name.lower()} unit, "
                                   f"which cannot {', '.join(sorted(deps - ALLOWED_DEPS[self.unit]))}")
        return _new_instruction(self.opcode, self.args, deps)

    @property
    def format(self) -> Format:
        return FORMAT_BY_OPCODE[self.opcode]

    @property
    def unit(self) -> Unit:
        return self.format.unit

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not dataclass attributes.
        try:
            return self.__dict__["args"][name]
        except KeyError:
            raise AttributeError(name) from None

    def replace(self, **values: Any) -> Instruction:
        merged = dict(self.args) | {name: True for name in self.deps} | values
        return Instruction.make(self.opcode, **merged)

    def encode(self) -> int:
        """The 128-bit instruction word."""
        # Offsets come from the same layouts as `INSTRUCTION.const(...)` would use; packing
        # them by hand is an order of magnitude faster for the compiler's long programs.
        word, slots = _ENCODERS[self.opcode]
        for name in self.deps:
            word |= 1 << _DEP_OFFSETS[name]
        args = self.args
        for name, offset, mask in slots:
            value = args[name]
            word |= (int(getattr(value, "value", value)) & mask) << offset
        return word

    def to_bytes(self) -> bytes:
        return self.encode().to_bytes(INSN_BYTES, "little")

    def __repr__(self) -> str:
        parts = [f"{k}={v.name.lower() if isinstance(v, py_enum.Enum) else v}"
                 for k, v in self.args.items()]
        return f"<Instruction {self.format.mnemonic} {' '.join(parts + sorted(self.deps))}>"


_MISSING = object()
_new_object = object.__new__
_NO_DEPS: frozenset[str] = frozenset()
_DEP_FLAG_SET = frozenset(DEP_FLAGS)


def _maker(fmt: Format) -> tuple:
    """What :meth:`Instruction.make` checks for one format, read off its fields once: the format, the
    legal dependency flags, the field names, and per field (name, kind, low, high, default, spec) where
    kind is ``int`` (with its legal range), ``bool`` (a flag) or the field's enum class."""
    fields = []
    for spec in fmt.fields:
        if spec.kind is Kind.ENUM:
            fields.append((spec.name, spec.shape, None, None, spec.default, spec))
        elif spec.kind is Kind.FLAG:
            fields.append((spec.name, bool, None, None, spec.default, spec))
        else:
            fields.append((spec.name, int, *_field_range(spec), spec.default, spec))
    return fmt, ALLOWED_DEPS[fmt.unit], frozenset(spec.name for spec in fmt.fields), tuple(fields)


#: Instruction.encode's tables by opcode: the opcode bits, and (name, offset, mask) per field.
_ENCODERS: dict[Opcode, tuple[int, tuple[tuple[str, int, int], ...]]] = {
    fmt.opcode: (fmt.opcode.value << _OPCODE_OFFSET,
                 tuple((spec.name, offset, (1 << width) - 1) for spec, offset, width in fmt.slots))
    for fmt in FORMATS}
#: Instruction.make's tables by opcode and by mnemonic.
_MAKERS: dict[Any, tuple] = {key: _maker(fmt) for fmt in FORMATS for key in (fmt.opcode, fmt.mnemonic)}
#: Instruction.with_int's table by opcode: (low, high, spec) per integer field name.
_INT_FIELDS: dict[Opcode, dict[str, tuple[int, int, FieldSpec]]] = {
    fmt.opcode: {name: (low, high, spec) for name, kind, low, high, _, spec in _maker(fmt)[3] if kind is int}
    for fmt in FORMATS}


def _new_instruction(opcode: Opcode, args: Mapping[str, Any], deps: frozenset[str]) -> Instruction:
    """``Instruction(opcode, args, deps)`` without the frozen dataclass's per-field ``__setattr__``."""
    insn = _new_object(Instruction)
    fields = insn.__dict__
    fields["opcode"] = opcode
    fields["args"] = args
    fields["deps"] = deps
    return insn


def _bits(word: int, offset: int, width: int) -> int:
    return (word >> offset) & ((1 << width) - 1)


def _decode_checked(word: int, *, pc: int | None = None) -> Instruction:
    """The field-by-field decoder; :func:`decode` runs it for the words its tables reject, so
    that every error is raised here, with its cause and words."""
    if not 0 <= word < 1 << INSN_BITS:
        raise IllegalInstruction(ErrorCause.RESERVED_BITS, "word is wider than 128 bits", pc=pc)

    def illegal(cause: ErrorCause, detail: str):
        return IllegalInstruction(cause, detail, pc=pc, word=word)

    op_field = INSTRUCTION["opcode"]
    raw_op = _bits(word, op_field.offset, op_field.width)
    try:
        opcode = Opcode(raw_op)
    except ValueError:
        raise illegal(ErrorCause.ILLEGAL_OPCODE, f"opcode {raw_op} is not defined") from None
    fmt = FORMAT_BY_OPCODE[opcode]

    deps_offset = INSTRUCTION["deps"].offset
    deps = frozenset(name for name in DEP_FLAGS if _bits(word, deps_offset + DEPS[name].offset, 1))
    bad_deps = deps - ALLOWED_DEPS[fmt.unit]
    if bad_deps:
        raise illegal(ErrorCause.BAD_DEPS, f"{fmt.mnemonic} runs on the {fmt.unit.name.lower()} "
                                           f"unit, which cannot {', '.join(sorted(bad_deps))}")

    layout = fmt.layout
    args_word = word >> ARGS_OFFSET
    if args_word >> layout.size:
        raise illegal(ErrorCause.RESERVED_BITS,
                      f"{fmt.mnemonic} uses argument bits 0..{layout.size - 1}; higher bits are set")
    args = {}
    for spec in fmt.fields:
        field = layout[spec.name]
        raw = _bits(args_word, field.offset, field.width)
        if spec.kind is Kind.ENUM:
            try:
                args[spec.name] = spec.shape(raw)
            except ValueError:
                raise illegal(ErrorCause.BAD_FIELD,
                              f"{fmt.mnemonic} field {spec.name!r} holds undefined value {raw}") from None
            continue
        if spec.kind is Kind.FLAG:
            args[spec.name] = bool(raw)
            continue
        if Shape.cast(spec.shape).signed and raw >> (field.width - 1):
            raw -= 1 << field.width
        low, high = _field_range(spec)
        if not low <= raw <= high:
            raise illegal(ErrorCause.BAD_FIELD,
                          f"{fmt.mnemonic} field {spec.name!r} holds {raw}, outside {low}..{high}")
        args[spec.name] = raw
    return Instruction(opcode, MappingProxyType(args), deps)


# Decoding tables, derived once from the layouts above so that no Amaranth call runs per word:
# per opcode value, the format, the legal dependency bits and the width of its arguments, and per
# field (name, offset in the word, mask, kind) plus the enum members by raw value (ENUM), the sign
# bit (signed INT) or the legal range (other integers).
_FLAG, _ENUM, _SIGNED, _INT = range(4)


def _field_decoder(spec: FieldSpec, offset: int, width: int) -> tuple:
    mask = (1 << width) - 1
    if spec.kind is Kind.ENUM:
        members = {member.value: member for member in spec.shape}
        return spec.name, offset, mask, _ENUM, tuple(members.get(raw) for raw in range(1 << width))
    if spec.kind is Kind.FLAG:
        return spec.name, offset, mask, _FLAG, None
    low, high = _field_range(spec)
    if Shape.cast(spec.shape).signed:
        return spec.name, offset, mask, _SIGNED, (1 << (width - 1), 1 << width, low, high)
    return spec.name, offset, mask, _INT, (low, high)


def _decoder_table() -> tuple:
    op_field, deps_field = INSTRUCTION["opcode"], INSTRUCTION["deps"]
    table: list = [None] * (1 << op_field.width)
    for fmt in FORMATS:
        allowed = sum(1 << DEPS[name].offset for name in ALLOWED_DEPS[fmt.unit])
        deps = {bits: frozenset(name for name in DEP_FLAGS if bits >> DEPS[name].offset & 1)
                for bits in range(1 << DEPS.size) if not bits & ~allowed}
        fields = tuple(_field_decoder(spec, offset, width) for spec, offset, width in fmt.slots)
        table[fmt.opcode.value] = (fmt.opcode, deps, ARGS_OFFSET + fmt.layout.size, fields)
    return op_field.offset, (1 << op_field.width) - 1, deps_field.offset, (1 << deps_field.width) - 1, \
        tuple(table)


_OP_SHIFT, _OP_MASK, _DEPS_SHIFT, _DEPS_MASK, _DECODERS = _decoder_table()
#: Decoded legal words (instructions are immutable, so they are shared); cleared when full.
_DECODED: dict[int, Instruction] = {}
_DECODED_LIMIT = 1 << 15


def _decode_fast(word: int) -> Instruction | None:
    """The instruction a legal word encodes, or None for an illegal one (no exception raised)."""
    if word >> INSN_BITS or word < 0:
        return None
    decoder = _DECODERS[(word >> _OP_SHIFT) & _OP_MASK]
    if decoder is None:
        return None
    opcode, deps_by_bits, used_bits, fields = decoder
    deps = deps_by_bits.get((word >> _DEPS_SHIFT) & _DEPS_MASK)
    if deps is None or word >> used_bits:
        return None
    args = {}
    for name, offset, mask, kind, extra in fields:
        raw = (word >> offset) & mask
        if kind is _INT:
            if raw < extra[0] or raw > extra[1]:
                return None
            args[name] = raw
        elif kind is _ENUM:
            member = extra[raw]
            if member is None:
                return None
            args[name] = member
        elif kind is _FLAG:
            args[name] = bool(raw)
        else:
            sign, span, low, high = extra
            if raw & sign:
                raw -= span
            if raw < low or raw > high:
                return None
            args[name] = raw
    return _new_instruction(opcode, MappingProxyType(args), deps)


assert [field.name for field in dataclasses.fields(Instruction)] == ["opcode", "args", "deps"]


def decode(word: int, *, pc: int | None = None) -> Instruction:
    """Decode a 128-bit word, raising :class:`IllegalInstruction` for illegal encodings."""
    if type(word) is int:
        insn = _DECODED.get(word)
        if insn is not None:
            return insn
        insn = _decode_fast(word)
        if insn is not None:
            if len(_DECODED) >= _DECODED_LIMIT:
                _DECODED.clear()
            _DECODED[word] = insn
            return insn
    return _decode_checked(word, pc=pc)


def encode_program(program: list[Instruction]) -> bytes:
    """Instructions as the bytes the machine fetches."""
    return b"".join(insn.to_bytes() for insn in program)


def decode_program(blob: bytes) -> list[Instruction]:
    """Bytes of a program back into instructions; errors name the byte offset."""
    if len(blob) % INSN_BYTES:
        raise IllegalInstruction(
            ErrorCause.FETCH_ERROR,
            f"program is {len(blob)} bytes, not a multiple of the {INSN_BYTES}-byte instruction")
    return [decode(int.from_bytes(blob[pc:pc + INSN_BYTES], "little"), pc=pc)
            for pc in range(0, len(blob), INSN_BYTES)]
