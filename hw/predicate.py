"""The PREDICATE unit: a property of on-chip rows, for the control core's scalar registers.

Exactly :meth:`braze.isa.model.Machine._exec_predicate`: ``any`` is 1 if an element of the rows
is nonzero (else 0), ``max`` the largest element (int8 scratchpad elements sign-extended), over
all ``cols`` elements of rows ``addr .. addr + rows - 1`` of ``mem``.  An instruction of ``rows``
rows takes ``rows + PREDICATE_LATENCY`` cycles.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import ReadPort
from amaranth.lib.wiring import In, Out

from braze.isa.config import Config
from braze.isa.encoding import FORMAT_BY_OPCODE, INSTRUCTION, Memory, Opcode, PredicateOp
from braze.isa.timing import PREDICATE_LATENCY

from .vector import ROW_ADDR_WIDTH

__all__ = ["PREDICATE_LATENCY", "PredicateUnit"]

PREDICATE_ARGS = FORMAT_BY_OPCODE[Opcode.PREDICATE].layout

_INT32_MIN = -(1 << 31)


def _tree_max(values: list, down_to: int = 1) -> list:
    """The largest of ``values`` (signed) as a balanced tree of comparisons, stopped at ``down_to``
    values (the largest of which is the largest of all)."""
    while len(values) > down_to:
        pairs = [Mux(values[i] > values[i + 1], values[i], values[i + 1])
                 for i in range(0, len(values) - 1, 2)]
        values = pairs + ([values[-1]] if len(values) % 2 else [])
    return values


class PredicateUnit(wiring.Component):
    """Executes ``PREDICATE`` instructions.

    Parameters
    ----------
    config : Config
        The accelerator build; sets the row width (``cols``).

    Attributes
    ----------
    insn : In(stream.Signature(INSTRUCTION))
        The instruction (``args.predicate`` is read; register offsets already added, ranges
        checked).  ``ready`` is high when idle and in the cycle of ``done``.
    spad_read, acc_read : In(ReadPort.Signature(addr_width=16, shape=row))
        Compute read ports of the scratchpad and the accumulator (data the cycle after ``en``).
    busy : Out(1)
        High for ``rows + PREDICATE_LATENCY`` cycles per instruction, from the cycle after it is
        accepted to the cycle of ``done``.
    done : Out(1)
        One-cycle pulse when ``value`` holds the result.
    value : Out(signed(32))
        The result (``any``: 0 or 1; ``max``: the largest element); held until the next
        instruction is accepted.

    Notes
    -----
    Counting the cycle after acceptance as cycle 1: row ``i`` is read in cycle ``1 + i``; its
    data arrive in cycle ``2 + i`` and are reduced across the row into a register; the row
    results are folded into ``value`` in cycle ``3 + i``, so the last one is there in cycle
    ``rows + 3`` (``PREDICATE_LATENCY`` = 3: the read, the row register, the fold).
    """

    def __init__(self, config: Config):
        if not isinstance(config, Config):
            raise TypeError(f"PredicateUnit needs a braze.isa.Config, not {config!r}")
        self._config = config
        spad_row = data.ArrayLayout(signed(8), config.cols)
        acc_row = data.ArrayLayout(signed(32), config.cols)
        super().__init__({
            "insn": In(stream.Signature(INSTRUCTION)),
            "spad_read": In(ReadPort.Signature(addr_width=ROW_ADDR_WIDTH, shape=spad_row)),
            "acc_read": In(ReadPort.Signature(addr_width=ROW_ADDR_WIDTH, shape=acc_row)),
            "busy": Out(1),
            "done": Out(1),
            "value": Out(signed(32)),
        })

    @property
    def config(self) -> Config:
        return self._config

    def elaborate(self, platform):
        m = Module()
        cols = self._config.cols
        assert PREDICATE_LATENCY == 3, "the pipeline below has three stages after the reads"

        args = Signal(PREDICATE_ARGS)
        busy = Signal()
        issuing = Signal()
        issue_row = Signal(16)
        read_addr = Signal(ROW_ADDR_WIDTH)
        row_arrives = Signal()            # read data of a row this cycle
        row_valid = Signal()              # the row registers hold a row's reduction
        last_arrives = Signal()           # ... of the last row
        last_row = Signal()
        # The row's largest elements: its reduction ends one tree level short of a single value, and
        # the fold takes the larger of the two with the running maximum (three comparisons side by
        # side), so the row register and the fold each have about half the tree.
        row_max = [Signal(signed(32), name=f"row_max_{half}") for half in range(2)]
        row_nonzero = Signal()
        running_max = Signal(signed(32))
        running_any = Signal()
        finished = Signal()               # the last row is folded in: done this cycle

        m.d.comb += [
            self.done.eq(finished),
            self.busy.eq(busy),
            self.insn.ready.eq(~busy | finished),
            self.value.eq(Mux(args.op == PredicateOp.ANY, running_any, running_max)),
        ]
        with m.If(finished):
            m.d.sync += [busy.eq(0), finished.eq(0)]

        # Reads, one row per cycle.
        reading = Signal()
        m.d.comb += reading.eq(issuing)
        for memory, port in ((Memory.SPAD, self.spad_read), (Memory.ACC, self.acc_read)):
            m.d.comb += [port.en.eq(reading & (args.mem == memory)), port.addr.eq(read_addr)]
        with m.If(reading):
            m.d.sync += [read_addr.eq(read_addr + 1), issue_row.eq(issue_row + 1)]
            with m.If(issue_row == args.rows - 1):
                m.d.sync += issuing.eq(0)
        m.d.sync += [row_arrives.eq(reading), last_arrives.eq(reading & (issue_row == args.rows - 1))]

        # Row reduction register.
        elements = [Mux(args.mem == Memory.ACC, self.acc_read.data[j], self.spad_read.data[j])
                    for j in range(cols)]
        nonzero = Signal()
        m.d.comb += nonzero.eq(Mux(args.mem == Memory.ACC, self.acc_read.data.as_value(),
                                   self.spad_read.data.as_value()).any())
        m.d.sync += [row_valid.eq(row_arrives), last_row.eq(last_arrives)]
        with m.If(row_arrives):
            m.d.sync += [*(reg.eq(value) for reg, value in zip(row_max, _tree_max(elements, 2), strict=True)),
                         row_nonzero.eq(nonzero)]

        # Fold.
        first, second = row_max
        first_larger = first > second
        row_beats_running = Mux(first_larger, first > running_max, second > running_max)
        with m.If(row_valid):
            m.d.sync += [
                running_max.eq(Mux(row_beats_running, Mux(first_larger, first, second), running_max)),
                running_any.eq(running_any | row_nonzero),
            ]
            with m.If(last_row):
                m.d.sync += finished.eq(1)

        # Accepting an instruction: last, so that it overrides the final updates of the previous one.
        with m.If(self.insn.valid & self.insn.ready):
            new = self.insn.payload.args.predicate
            m.d.sync += [
                args.eq(new),
                busy.eq(1),
                issuing.eq(1),
                issue_row.eq(0),
                read_addr.eq(new.addr),
                running_max.eq(_INT32_MIN),
                running_any.eq(0),
            ]
        return m
