"""A UART (8N1) receiver and transmitter: the board's serial link to a host.

Both sides count ``divisor`` clock cycles per bit (the clock frequency over the baud rate:
217 for 115200 baud from the ULX3S's 25 MHz oscillator; tests use 4 to keep simulations short).
Bytes go least significant bit first, framed by a low start bit and one high stop bit, with no
parity: 10 bit times a byte.

Blocks
------
:class:`UARTReceiver`
    Samples the ``rx`` line (through a two-flop synchroniser) in the middle of each bit and
    offers each byte on a stream; a low stop bit is a framing error, a byte arriving while the
    previous one is still unread is an overrun.  Both drop the byte and pulse ``error``.
:class:`UARTTransmitter`
    Sends each byte of its input stream on the ``tx`` line, which idles high.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

from braze.isa import BrazeError

__all__ = ["BoardParameterError", "UARTReceiver", "UARTTransmitter", "MIN_DIVISOR", "MAX_DIVISOR",
           "check_divisor", "BITS_PER_BYTE"]

#: Fewest clock cycles per bit.  The receiver samples each bit once, in its middle: 2 and 3 work
#: only for a line that changes with the clock (a simulation's); an asynchronous line wants 16 or
#: more (a real board has 217 at 115200 baud).
MIN_DIVISOR = 2
#: Most clock cycles per bit (a 16-bit counter): 9600 baud from a 600 MHz clock.
MAX_DIVISOR = 1 << 16
#: Bit times per byte on the line: start, eight data bits, stop.
BITS_PER_BYTE = 10


class BoardParameterError(BrazeError, ValueError):
    """A board-level block (UART, bridge, board memory, board top) got a parameter it cannot build."""


def check_divisor(owner: str, divisor) -> int:
    """``divisor`` if it is a usable number of clock cycles per bit, else :class:`BoardParameterError`."""
    if not isinstance(divisor, int) or isinstance(divisor, bool) or not MIN_DIVISOR <= divisor <= MAX_DIVISOR:
        raise BoardParameterError(f"{owner}: divisor={divisor!r} must be an integer number of clock cycles "
                                  f"per bit from {MIN_DIVISOR} to {MAX_DIVISOR}")
    return divisor


class UARTReceiver(wiring.Component):
    """Receives 8N1 bytes from the ``rx`` line.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit, :data:`MIN_DIVISOR` to :data:`MAX_DIVISOR`.

    Attributes
    ----------
    rx : In(1)
        The serial line (asynchronous to the clock; idles high).
    data : Out(stream.Signature(8))
        Received bytes; a byte waits in ``payload`` until taken.
    error : Out(1)
        A one-cycle pulse when a byte is dropped: its stop bit was low (framing error; the
        receiver then waits for the line to go high again, so a held-low line -- a break --
        counts once), or the previous byte had not been taken when it arrived (overrun).
    frame_error, overrun : Out(1)
        Which of the two it was, in the same cycle as ``error``.
    """

    def __init__(self, divisor: int):
        self.divisor = check_divisor("UARTReceiver", divisor)
        super().__init__({
            "rx": In(1, init=1),
            "data": Out(stream.Signature(8)),
            "error": Out(1), "frame_error": Out(1), "overrun": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        divisor = self.divisor
        line = Signal(init=1)
        m.submodules.sync_rx = FFSynchronizer(self.rx, line, init=1)

        timer = Signal(range(divisor))          # cycles left until the next sample
        bits_left = Signal(range(9))            # data bits still to sample
        shift = Signal(8)
        with m.If(self.data.ready):
            m.d.sync += self.data.valid.eq(0)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(~line):
                    # Sample the start bit again in its middle: a glitch shorter than half a bit is ignored.
                    m.d.sync += timer.eq(divisor // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(line):
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += [timer.eq(divisor - 1), bits_left.eq(8)]
                    m.next = "DATA"
            with m.State("DATA"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Else():
                    m.d.sync += [shift.eq(Cat(shift[1:], line)), bits_left.eq(bits_left - 1),
                                 timer.eq(divisor - 1)]
                    with m.If(bits_left == 1):
                        m.next = "STOP"
            with m.State("STOP"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(~line):
                    m.d.comb += [self.error.eq(1), self.frame_error.eq(1)]
                    m.next = "BREAK"
                with m.Elif(self.data.valid & ~self.data.ready):
                    m.d.comb += [self.error.eq(1), self.overrun.eq(1)]
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += [self.data.payload.eq(shift), self.data.valid.eq(1)]
                    m.next = "IDLE"
            with m.State("BREAK"):
                with m.If(line):
                    m.next = "IDLE"
        return m


class UARTTransmitter(wiring.Component):
    """Sends 8N1 bytes on the ``tx`` line.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit, :data:`MIN_DIVISOR` to :data:`MAX_DIVISOR`.

    Attributes
    ----------
    data : In(stream.Signature(8))
        Bytes to send; ``ready`` is high while the transmitter is idle, so a byte is taken at
        most every ten bit times.
    tx : Out(1)
        The serial line (registered; idles high).
    """

    def __init__(self, divisor: int):
        self.divisor = check_divisor("UARTTransmitter", divisor)
        super().__init__({
            "data": In(stream.Signature(8)),
            "tx": Out(1, init=1),
        })

    def elaborate(self, platform):
        m = Module()
        timer = Signal(range(self.divisor))
        # Start bit, data bits LSB first, stop bit; shifted out from bit 0.
        frame = Signal(BITS_PER_BYTE)
        bits_left = Signal(range(BITS_PER_BYTE + 1))
        m.d.comb += self.data.ready.eq(bits_left == 0)
        with m.If(self.data.valid & self.data.ready):
            m.d.sync += [frame.eq(Cat(0, self.data.payload, 1)), bits_left.eq(BITS_PER_BYTE), timer.eq(0)]
        with m.Elif(bits_left != 0):
            with m.If(timer == 0):
                m.d.sync += [self.tx.eq(frame[0]), frame.eq(frame >> 1), timer.eq(self.divisor - 1)]
            with m.Else():
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 1):
                    m.d.sync += bits_left.eq(bits_left - 1)
        return m
