"""The weight-stationary systolic array of int8 multiply-accumulate PEs."""

from amaranth.hdl import Elaboratable, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from braze.isa.config import MAX_ARRAY_DIM

__all__ = ["ProcessingElement", "PEArray"]

OPERAND = signed(8)
PARTIAL_SUM = signed(32)


class ProcessingElement(wiring.Component):
    """One multiply-accumulate cell of the array, with a double-buffered weight.

    Every output is a register, so a value moves one PE per cycle.  In each
    cycle the PE computes ``psum_out <= psum_in + a_in * weight`` (wrapping to
    int32) and passes ``a_in``/``first_in`` to the right.  ``weight`` is the
    *active* weight, except in a cycle with ``first_in`` high, which switches
    to the *shadow* weight: that cycle already uses it, and it becomes active.
    With ``shift`` high the shadow register loads ``weight_in``; its value is
    ``weight_out``, which feeds the shadow register of the PE below.

    The weight the multiplier takes is a register of its own, loaded a cycle ahead from
    ``first_next`` (``first_in`` of the next cycle, which the PE on the left holds now) and the
    shadow register's next value, so that no multiplexer lies between the registers and the
    multiplier (the array's critical path on an FPGA): the same weight in every cycle.

    Attributes
    ----------
    a_in, first_in : In
        Activation from the left, and its flag "first row of a new weight tile".
    first_next : In(1)
        ``first_in`` of the next cycle.
    psum_in : In(signed(32))
        Partial sum from above.
    weight_in, shift : In
        Value for the shadow register, and its load enable.
    a_out, first_out, psum_out : Out
        Registered ``a_in``, ``first_in`` and new partial sum.
    weight_out : Out(signed(8))
        The shadow register.
    shift_out : Out(1)
        Registered ``shift``: the PE below may shift in the next cycle.
    """

    a_in: In(OPERAND)
    first_in: In(1)
    first_next: In(1)
    psum_in: In(PARTIAL_SUM)
    weight_in: In(OPERAND)
    shift: In(1)
    a_out: Out(OPERAND)
    first_out: Out(1)
    psum_out: Out(PARTIAL_SUM)
    weight_out: Out(OPERAND)
    shift_out: Out(1)

    def elaborate(self, platform) -> Elaboratable:
        m = Module()
        # The weight in use: the shadow register's in a cycle with first_in, else the one before.
        weight = Signal(OPERAND)
        shadow_next = Mux(self.shift, self.weight_in, self.weight_out)
        with m.If(self.first_next):
            m.d.sync += weight.eq(shadow_next)
        m.d.sync += self.weight_out.eq(shadow_next)
        m.d.sync += [
            self.psum_out.eq(self.psum_in + self.a_in * weight),
            self.a_out.eq(self.a_in),
            self.first_out.eq(self.first_in),
            self.shift_out.eq(self.shift),
        ]
        return m


class PEArray(wiring.Component):
    """A weight-stationary systolic array of ``rows x cols`` int8 MAC PEs.

    PE ``(r, c)`` holds the weight ``W[r, c]`` and computes one column of
    ``A @ W``: activations enter row ``r`` from the left and move right one PE
    per cycle, partial sums (int32, wrapping) enter the top row as zero and
    move down one PE per cycle, and column ``c`` of the result leaves the
    bottom.  All inputs are registered, and the array skews and deskews
    internally, so its ports carry whole rows.

    **Activations.**  A row presented on ``a_in`` (``a_valid`` high) in cycle
    ``t`` reaches PE ``(r, c)`` in cycle ``t + 1 + r + c``.  The result row
    ``a_in @ W`` (``cols`` int32 values) appears on ``c_out`` with ``c_valid``
    high in cycle ``t + latency``, ``latency = rows + cols``; one result row
    leaves per cycle when one activation row enters per cycle.

    **Weights.**  Each PE has an active and a shadow weight register.  A
    preload is ``rows`` consecutive cycles with ``weight_shift`` high, one
    weight row (``cols`` int8) per cycle on ``weight_in``.  The rows travel
    down the columns through the shadow registers, *bottom row first*: the
    row presented in preload cycle ``j`` lands in PE row ``rows - 1 - j``.
    Column ``c`` shifts ``c`` cycles after column 0, and shadow register
    ``(r, c)`` shifts only in preload cycles ``j >= r``, so it changes only in
    cycles ``t0 + 1 + c + j`` for ``j = r .. rows-1`` (``t0`` = first preload
    cycle).

    **Switching.**  The activation row presented with ``a_first`` high is the
    first to use the preloaded weights: the flag travels with it, and each PE
    copies its shadow into its active register as the row passes (a diagonal
    wavefront), so the earlier rows still in flight keep using the old
    weights.  Hence the rules:

    * ``a_first`` may be presented no earlier than the cycle after the last
      preload cycle;
    * the next preload may start no earlier than the cycle in which the
      ``a_first`` row of the current weights is presented, so a preload
      overlaps the draining (and even the streaming) of the previous tile;
    * ``weight_shift`` is low for at least one cycle between two preloads
      (that gap restarts the row-by-row fill of the shadow registers).

    Parameters
    ----------
    rows, cols : int
        Array size: ``rows`` is the reduction depth, ``cols`` the number of
        output columns.  From 1 to 64 each.

    Attributes
    ----------
    weight_in : In(ArrayLayout(signed(8), cols))
        One weight row of a preload.
    weight_shift : In(1)
        ``weight_in`` holds a preload row in this cycle.
    a_in : In(ArrayLayout(signed(8), rows))
        One activation row: element ``r`` enters PE row ``r``.
    a_valid : In(1)
        ``a_in`` holds a row; only delayed to ``c_valid``.
    a_first : In(1)
        This row switches to the preloaded weights.
    c_out : Out(ArrayLayout(signed(32), cols))
        One result row, ``latency`` cycles after its activation row.
    c_valid : Out(1)
        ``a_valid`` delayed by ``latency`` cycles.
    latency : int
        ``rows + cols``.
    """

    def __init__(self, rows: int, cols: int):
        for name, value in (("rows", rows), ("cols", cols)):
            if not isinstance(value, int) or not 1 <= value <= MAX_ARRAY_DIM:
                raise ValueError(f"PEArray {name} must be an integer from 1 to {MAX_ARRAY_DIM}, "
                                 f"not {value!r}")
        self.rows = rows
        self.cols = cols
        self.latency = rows + cols
        super().__init__({
            "weight_in": In(data.ArrayLayout(OPERAND, cols)),
            "weight_shift": In(1),
            "a_in": In(data.ArrayLayout(OPERAND, rows)),
            "a_valid": In(1),
            "a_first": In(1),
            "c_out": Out(data.ArrayLayout(PARTIAL_SUM, cols)),
            "c_valid": Out(1),
        })

    def elaborate(self, platform) -> Elaboratable:
        m = Module()
        rows, cols = self.rows, self.cols

        def delayed(value, cycles: int, name: str):
            """``value`` after ``cycles`` registers."""
            for stage in range(cycles):
                register = Signal.like(value, name=f"{name}_d{stage + 1}")
                m.d.sync += register.eq(value)
                value = register
            return value

        pes = [[ProcessingElement() for _ in range(cols)] for _ in range(rows)]
        for r in range(rows):
            for c in range(cols):
                m.submodules[f"pe_{r}_{c}"] = pes[r][c]

        # Left edge: row r of the activations is delayed 1 + r cycles.
        for r in range(rows):
            left = pes[r][0]
            first_next = delayed(self.a_first, r, f"first{r}")
            m.d.comb += [
                left.a_in.eq(delayed(self.a_in[r], 1 + r, f"a{r}")),
                left.first_next.eq(first_next),
                left.first_in.eq(delayed(first_next, 1, f"first{r}_last")),
            ]
            for c in range(1, cols):
                m.d.comb += [
                    pes[r][c].a_in.eq(pes[r][c - 1].a_out),
                    pes[r][c].first_next.eq(pes[r][c - 1].first_in),
                    pes[r][c].first_in.eq(pes[r][c - 1].first_out),
                ]

        # Top edge: column c of the weights and its shift enable are delayed 1 + c cycles.
        # Shadow (r, c) shifts when column c shifts and shadow (r-1, c) shifted in the previous
        # cycle, so the shadow registers fill from the top, one more row per preload cycle.
        for c in range(cols):
            column_shift = delayed(self.weight_shift, 1 + c, f"shift{c}")
            top = pes[0][c]
            m.d.comb += [
                top.weight_in.eq(delayed(self.weight_in[c], 1 + c, f"w{c}")),
                top.shift.eq(column_shift),
                top.psum_in.eq(0),
            ]
            for r in range(1, rows):
                above, pe = pes[r - 1][c], pes[r][c]
                m.d.comb += [
                    pe.weight_in.eq(above.weight_out),
                    pe.shift.eq(above.shift_out & column_shift),
                    pe.psum_in.eq(above.psum_out),
                ]

        # Bottom edge: column c leaves in cycle t + 1 + rows + c; delay it to t + rows + cols.
        for c in range(cols):
            m.d.comb += self.c_out[c].eq(delayed(pes[rows - 1][c].psum_out, cols - 1 - c, f"c{c}"))
        m.d.comb += self.c_valid.eq(delayed(self.a_valid, self.latency, "valid"))
        return m
