"""Performance-counter bank: one counter (64 bits, or ``Config.counter_bits``) per entry of
:data:`braze.isa.COUNTERS`."""

from amaranth.hdl import Module, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from braze.isa import COUNTERS
from braze.isa.config import COUNTER_BITS_CHOICES

__all__ = ["COUNTER_BITS", "SNAPSHOT_REQUEST", "SNAPSHOT_WORD", "CounterBank"]

COUNTER_BITS = 64

#: A snapshot request: with ``reset``, the counters restart from zero after the snapshot.
SNAPSHOT_REQUEST = data.StructLayout({"reset": unsigned(1)})

#: One counter of a snapshot write-out; ``last`` marks the final counter.
SNAPSHOT_WORD = data.StructLayout({"value": unsigned(COUNTER_BITS), "last": unsigned(1)})


class CounterBank(wiring.Component):
    """The performance counters, their live values and their snapshots.

    Every cycle counter ``i`` (index :class:`braze.isa.Counter`) adds ``inc[i]``,
    wrapping modulo ``2**counter_bits``.  A transfer on ``snapshot`` freezes a copy of all
    counters, including the increments of the transfer cycle, and (with
    ``reset``) restarts the live counters from zero in the next cycle; the
    copy is then written out on ``words`` in counter order.  Counting goes on
    while the copy is written out, so every event is counted exactly once:
    either in the snapshot or after it.

    Parameters
    ----------
    inc_width : int
        Width of each increment input: large enough for the most a counter can
        gain in one cycle (e.g. ``rows*cols`` multiply-accumulates, or the bus
        bytes of one beat).
    counter_bits : int
        Width of each counter (``Config.counter_bits``: 32 or 64).  ``values`` and the
        snapshot words stay 64 bits wide, zero-extended, so that what reads them is the same.

    Attributes
    ----------
    inc : In(ArrayLayout(unsigned(inc_width), len(COUNTERS)))
        Per-counter increment of this cycle.
    values : Out(ArrayLayout(unsigned(64), len(COUNTERS)))
        Live counter values, for the register block (zero-extended from ``counter_bits``).
    snapshot : In(stream.Signature(SNAPSHOT_REQUEST))
        Snapshot requests; ready while no write-out is in progress.
    words : Out(stream.Signature(SNAPSHOT_WORD))
        The frozen copy, one counter per transfer, in counter order.
    clear : In(1)
        Soft reset: zero the counters and drop any write-out in progress.
    """

    def __init__(self, *, inc_width: int = 16, counter_bits: int = COUNTER_BITS):
        if counter_bits not in COUNTER_BITS_CHOICES:
            raise ValueError(f"CounterBank counter_bits must be one of {COUNTER_BITS_CHOICES}, "
                             f"not {counter_bits!r}")
        if not isinstance(inc_width, int) or not 1 <= inc_width <= counter_bits:
            raise ValueError(f"CounterBank inc_width must be an integer from 1 to {counter_bits}, "
                             f"not {inc_width!r}")
        self.inc_width = inc_width
        self.counter_bits = counter_bits
        count = len(COUNTERS)
        super().__init__({
            "inc": In(data.ArrayLayout(unsigned(inc_width), count)),
            "values": Out(data.ArrayLayout(unsigned(COUNTER_BITS), count)),
            "snapshot": In(stream.Signature(SNAPSHOT_REQUEST)),
            "words": Out(stream.Signature(SNAPSHOT_WORD)),
            "clear": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        count = len(COUNTERS)
        bits = self.counter_bits
        # The increments come from deep in the design (the control core's retire and stall logic, the
        # memories' port arbitration), so they are registered before the wide adders: counter ``i``
        # is ``total[i] + pending[i]``, ``pending`` being last cycle's increment.  Every value and
        # every snapshot is the same, cycle for cycle, as adding the increment in its own cycle.
        total = [Signal(unsigned(bits), name=f"total_{spec.name}") for spec in COUNTERS]
        pending = [Signal(unsigned(self.inc_width), name=f"pending_{spec.name}") for spec in COUNTERS]
        # The frozen copy is a shift register, so the write-out needs no wide multiplexer.  Its head
        # (the word on ``words``) is a value; the others are (total, increment) pairs like the live
        # counters, added as they move into the head.
        head = Signal(unsigned(bits), name=f"frozen_{COUNTERS[0].name}")
        frozen_total = [Signal(unsigned(bits), name=f"frozen_total_{spec.name}")
                        for spec in COUNTERS[1:]]
        frozen_inc = [Signal(unsigned(self.inc_width), name=f"frozen_inc_{spec.name}")
                      for spec in COUNTERS[1:]]
        words_left = Signal(range(count + 1))

        taking_snapshot = self.snapshot.valid & self.snapshot.ready
        restart = self.clear | (taking_snapshot & self.snapshot.payload.reset)
        m.d.comb += [
            self.snapshot.ready.eq((words_left == 0) & ~self.clear),
            self.words.valid.eq(words_left != 0),
            self.words.payload.value.eq(head),
            self.words.payload.last.eq(words_left == 1),
        ]

        for index in range(count):
            m.d.comb += self.values[index].eq((total[index] + pending[index])[:bits])
            with m.If(restart):
                m.d.sync += [total[index].eq(0), pending[index].eq(0)]
            with m.Else():
                m.d.sync += [total[index].eq(self.values[index]), pending[index].eq(self.inc[index])]

        # Counter 0 (CYCLES) goes straight into the head; its increment is a register (``running``).
        shifting = self.words.valid & self.words.ready
        with m.If(taking_snapshot):
            m.d.sync += head.eq((self.values[0] + self.inc[0])[:bits])
        with m.Elif(shifting):
            m.d.sync += head.eq((frozen_total[0] + frozen_inc[0])[:bits] if count > 1 else 0)
        for index in range(1, count):
            pair = index - 1
            with m.If(taking_snapshot):
                m.d.sync += [frozen_total[pair].eq(self.values[index]), frozen_inc[pair].eq(self.inc[index])]
            with m.Elif(shifting):
                following = index < count - 1
                m.d.sync += [frozen_total[pair].eq(frozen_total[pair + 1] if following else 0),
                             frozen_inc[pair].eq(frozen_inc[pair + 1] if following else 0)]

        with m.If(self.clear):
            m.d.sync += words_left.eq(0)
        with m.Elif(taking_snapshot):
            m.d.sync += words_left.eq(count)
        with m.Elif(shifting):
            m.d.sync += words_left.eq(words_left - 1)
        return m
