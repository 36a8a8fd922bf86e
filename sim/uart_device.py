"""A board over its serial port, as a :class:`~braze.sim.device.Device`.

:class:`UARTDevice` drives a board top (:class:`braze.hw.board.BoardTop`) through the bridge
protocol of :mod:`braze.hw.uart_bridge` -- the same opcodes and status codes the hardware is
built from.  What carries the bytes is a :class:`Transport`:

* :class:`SimulatedBoard` -- the board top (minus pads) in Amaranth's simulator, its UART
  driven and sampled bit by bit (a small divisor keeps it quick): what the tests use;
* :class:`SerialTransport` -- a real serial port through pyserial (an optional dependency:
  ``pip install pyserial``), for a board running the bitstream of ``braze fpga --board``.

A run is what a host script does on the board: write the scalar registers, ``PROG_BASE`` and
``CYCLE_LIMIT``, write ``CTRL.start``, poll ``STATUS`` (and ``RUN_CYCLES``, for the host's cycle
budget) until done or error, then read ``ERROR_CAUSE``/``ERROR_PC``, every counter in one
request, and the scalar registers.  The reported cycles are ``RUN_CYCLES``: the host cannot see
the clock.
"""

from __future__ import annotations

import abc
import collections

import numpy as np

from braze.hw.csr import (
    COUNTER_BASE,
    CTRL_SOFT_RESET,
    CTRL_START_RUN,
    REGISTER_BY_NAME,
    STATUS_DONE,
    STATUS_ERROR,
)
from braze.hw.top import AXIL_ADDR_WIDTH
from braze.hw.uart_bridge import (
    HEADER_BYTES,
    INFO_BYTES,
    MAX_MEM_COUNT,
    MAX_REG_COUNT,
    PROTOCOL_VERSION,
    Op,
    Status,
    header_status,
)
from braze.isa import COUNTERS, BrazeError, Config, ErrorCause
from braze.isa.encoding import SCALAR_REGS

# The host's view of CTRL and STATUS, and its default cycle budget, are the Amaranth device's.
from .amaranth_device import DEFAULT_MAX_CYCLES
from .device import Device, RunStatus, ScalarShadow

__all__ = ["BridgeError", "Transport", "SimulatedBoard", "SerialTransport", "BridgeClient", "UARTDevice",
           "DEFAULT_SIM_DIVISOR"]

#: Clock cycles per UART bit of the simulated board: the fewest the UART allows with a line that
#: changes with the clock, so that a byte costs 20 cycles of a simulator that runs ~2000 a second.
DEFAULT_SIM_DIVISOR = 2
_CTRL, _STATUS = REGISTER_BY_NAME["CTRL"], REGISTER_BY_NAME["STATUS"]
_RUN_CYCLES = REGISTER_BY_NAME["RUN_CYCLES"]


class BridgeError(BrazeError):
    """The board's bridge answered a request with an error status, or did not answer."""


class Transport(abc.ABC):
    """Carries the bridge protocol's bytes to a board and back."""

    @abc.abstractmethod
    def send(self, data: bytes) -> None:
        """Queue ``data`` for the board."""

    @abc.abstractmethod
    def receive(self, count: int) -> bytes:
        """The next ``count`` bytes from the board; :class:`BridgeError` if they do not come."""

    def close(self) -> None:  # noqa: B027 -- most transports hold nothing to release
        """Release the port (or the simulator)."""


class SimulatedBoard(Transport):
    """A :class:`~braze.hw.board.BoardTop` in Amaranth's simulator, spoken to bit by bit.

    Parameters
    ----------
    config : Config
        The build on the board (its ``dram_bytes`` is the board memory).
    divisor : int
        Clock cycles per UART bit.
    reply_timeout : int
        Clock cycles :meth:`receive` waits for the next byte before it gives up.
    top : wiring.Component or None
        The design to simulate instead of ``BoardTop(config, divisor=divisor)``: anything with a
        ``rx`` input and ``tx`` output speaking the protocol (a test harness, say).

    Attributes
    ----------
    cycles : int
        Clock cycles simulated so far: throughput is bytes over cycles.
    framing_errors : int
        Bytes from the board whose stop bit was low (none, unless the design is broken).
    """

    def __init__(self, config: Config, *, divisor: int = DEFAULT_SIM_DIVISOR, reply_timeout: int = 200_000,
                 top=None):
        from amaranth.sim import Simulator

        from braze.hw.board import BoardTop

        self.top = top if top is not None else BoardTop(config, divisor=divisor)
        self.divisor = divisor
        self.reply_timeout = reply_timeout
        self.cycles = 0
        self.framing_errors = 0
        self._last_activity = 0     # cycle of the last byte sent or received
        # Bytes for the board, each with the level of its stop bit (low: a framing error).
        self._outgoing: collections.deque[tuple[int, int]] = collections.deque()
        self._incoming: collections.deque[int] = collections.deque()
        self._sim = Simulator(self.top)
        self._sim.add_clock(1e-8)
        self._sim.add_testbench(self._drive_rx)
        self._sim.add_testbench(self._sample_tx)

    def send(self, data: bytes) -> None:
        self._outgoing.extend((byte, 1) for byte in bytes(data))

    def send_framing_error(self, byte: int) -> None:
        """Queue ``byte`` with a low stop bit, as a line glitch or a wrong baud rate would send it."""
        self._outgoing.append((byte, 0))

    def receive(self, count: int) -> bytes:
        self._last_activity = self.cycles
        while len(self._incoming) < count:
            if self.cycles - self._last_activity > self.reply_timeout:
                raise BridgeError(f"simulated board: no reply byte within {self.reply_timeout} cycles "
                                  f"(got {len(self._incoming)} of {count})")
            self._sim.advance()
        return bytes(self._incoming.popleft() for _ in range(count))

    # Plain tick loops, not ``ctx.tick().repeat()``: these processes never end, and an unfinished
    # repeat() generator complains when the simulator is garbage-collected.
    async def _drive_rx(self, ctx) -> None:
        bit_time = self.divisor
        while True:
            if not self._outgoing:
                await ctx.tick()
                self.cycles += 1
                continue
            byte, stop = self._outgoing.popleft()
            for bit in [0, *((byte >> i) & 1 for i in range(8)), stop]:
                ctx.set(self.top.rx, bit)
                for _ in range(bit_time):
                    await ctx.tick()
                self.cycles += bit_time
            ctx.set(self.top.rx, 1)
            self._last_activity = self.cycles

    async def _sample_tx(self, ctx) -> None:
        bit_time = self.divisor
        while True:
            await ctx.negedge(self.top.tx)
            # Sample in the middle of each bit: half a bit after the start edge, then a bit apart.
            for _ in range(bit_time // 2):
                await ctx.tick()
            byte = 0
            for index in range(9):
                for _ in range(bit_time):
                    await ctx.tick()
                if index < 8:
                    byte |= ctx.get(self.top.tx) << index
            self._last_activity = self.cycles
            if ctx.get(self.top.tx):
                self._incoming.append(byte)
            else:
                self.framing_errors += 1


class SerialTransport(Transport):
    """A serial port (pyserial), e.g. ``/dev/ttyUSB0`` of a ULX3S running ``braze fpga --board ulx3s``.

    Parameters
    ----------
    port : str
        The port's name.
    baud : int
        Its speed: the board top's (:data:`braze.hw.board.DEFAULT_BAUD`).
    timeout : float
        Seconds :meth:`receive` waits.
    """

    def __init__(self, port: str, *, baud: int = 115_200, timeout: float = 2.0):
        try:
            import serial
        except ImportError:
            raise BrazeError("SerialTransport needs pyserial: pip install 'braze[board]' "
                             "(or pyserial)") from None
        self._port = serial.Serial(port, baudrate=baud, bytesize=8, parity="N", stopbits=1, timeout=timeout)
        # Drop what a previous session left unread (a TIMEOUT status for its unfinished request, say).
        self._port.reset_input_buffer()

    def send(self, data: bytes) -> None:
        self._port.write(bytes(data))

    def receive(self, count: int) -> bytes:
        data = self._port.read(count)
        if len(data) != count:
            raise BridgeError(f"serial port {self._port.port}: {len(data)} of {count} reply bytes before the "
                              f"{self._port.timeout} s timeout")
        return data

    def close(self) -> None:
        self._port.close()


class BridgeClient:
    """The host side of the bridge protocol over a :class:`Transport`.

    Every method sends one or more requests and checks each reply's status; an error status
    raises :class:`BridgeError` naming the request.  Memory spans of any length and alignment
    are split into aligned requests of at most :data:`~braze.hw.uart_bridge.MAX_MEM_COUNT` words.
    """

    def __init__(self, transport: Transport, *, reg_addr_width: int = AXIL_ADDR_WIDTH):
        self.transport = transport
        self.reg_addr_width = reg_addr_width
        self.memory_bytes, self.word_bytes = self.info()

    def _request(self, op: Op, header: bytes, payload: bytes = b"", reply_bytes: int = 0) -> bytes:
        assert len(header) == HEADER_BYTES[op]
        if op is not Op.INFO:
            # The board replies without a payload to a header it rejects: check it here, by the same rule.
            addr_bytes = 2 if op in (Op.REG_WRITE, Op.REG_READ) else 4
            verdict = header_status(op, int.from_bytes(header[:addr_bytes], "little"),
                                    int.from_bytes(header[addr_bytes:], "little"),
                                    reg_addr_width=self.reg_addr_width, mem_size=self.memory_bytes,
                                    word_bytes=self.word_bytes)
            if verdict is not Status.OK:
                raise BridgeError(f"bridge {op.name} {header.hex()}: {verdict.name} (checked before sending)")
        self.transport.send(bytes([op.value]) + header + payload)
        reply = self.transport.receive(reply_bytes + 1)
        status = Status(reply[-1]) if reply[-1] in {s.value for s in Status} else None
        if status is not Status.OK:
            name = status.name if status is not None else f"unknown status 0x{reply[-1]:02x}"
            raise BridgeError(f"bridge {op.name} {header.hex()}: {name}")
        return reply[:-1]

    def info(self) -> tuple[int, int]:
        """The board memory's size in bytes and its word size; checks the protocol version."""
        reply = self._request(Op.INFO, b"", reply_bytes=INFO_BYTES)
        memory_bytes, word_bytes, version = int.from_bytes(reply[:4], "little"), reply[4], reply[5]
        if version != PROTOCOL_VERSION:
            raise BridgeError(f"bridge speaks protocol version {version}; "
                              f"this host speaks {PROTOCOL_VERSION}")
        return memory_bytes, word_bytes

    def write_register(self, offset: int, value: int) -> None:
        header = offset.to_bytes(2, "little") + (value & 0xFFFF_FFFF).to_bytes(4, "little")
        self._request(Op.REG_WRITE, header)

    def read_registers(self, offset: int, count: int = 1) -> list[int]:
        """``count`` consecutive 32-bit registers from byte ``offset``."""
        words = []
        while count:
            step = min(count, MAX_REG_COUNT)
            header = offset.to_bytes(2, "little") + bytes([step])
            reply = self._request(Op.REG_READ, header, reply_bytes=4 * step)
            words += [int.from_bytes(reply[i:i + 4], "little") for i in range(0, len(reply), 4)]
            offset, count = offset + 4 * step, count - step
        return words

    def _write_words(self, addr: int, data: bytes) -> None:
        step_bytes = MAX_MEM_COUNT * self.word_bytes
        for start in range(0, len(data), step_bytes):
            chunk = data[start:start + step_bytes]
            count = len(chunk) // self.word_bytes
            header = (addr + start).to_bytes(4, "little") + count.to_bytes(2, "little")
            self._request(Op.MEM_WRITE, header, chunk)

    def _read_words(self, addr: int, nbytes: int) -> bytes:
        step_bytes = MAX_MEM_COUNT * self.word_bytes
        parts = []
        for start in range(0, nbytes, step_bytes):
            size = min(step_bytes, nbytes - start)
            header = (addr + start).to_bytes(4, "little") + (size // self.word_bytes).to_bytes(2, "little")
            parts.append(self._request(Op.MEM_READ, header, reply_bytes=size))
        return b"".join(parts)

    def write_memory(self, addr: int, data: bytes) -> None:
        """Write ``data`` at byte ``addr``; partial words at the ends are read, merged and written."""
        if not data:
            return
        first, end = addr - addr % self.word_bytes, addr + len(data)
        last = -(-end // self.word_bytes) * self.word_bytes
        if first != addr or last != end:
            span = bytearray(self._read_words(first, last - first))
            span[addr - first:end - first] = data
            data = bytes(span)
        self._write_words(first, data)

    def read_memory(self, addr: int, nbytes: int) -> bytes:
        if nbytes == 0:
            return b""
        first = addr - addr % self.word_bytes
        last = -(-(addr + nbytes) // self.word_bytes) * self.word_bytes
        return self._read_words(first, last - first)[addr - first:addr - first + nbytes]


class UARTDevice(Device):
    """A board top over its UART, as a device.

    Parameters
    ----------
    config : Config
        The build on the board; its ``dram_bytes`` must be the board memory's size (the bridge's
        INFO reply is checked against it).
    transport : Transport or None
        Where the bytes go; None simulates the board (:class:`SimulatedBoard` with ``divisor``).
    divisor : int
        Clock cycles per bit of the simulated board.
    """

    kind = "uart"

    def __init__(self, config: Config, *, transport: Transport | None = None,
                 divisor: int = DEFAULT_SIM_DIVISOR):
        super().__init__(config)
        self.transport = transport if transport is not None else SimulatedBoard(config, divisor=divisor)
        self.bridge = BridgeClient(self.transport)
        if (self.bridge.memory_bytes, self.bridge.word_bytes) != (config.dram_bytes, config.dma_bus_bytes):
            raise BrazeError(f"uart device: the board has {self.bridge.memory_bytes} bytes of memory in "
                             f"{self.bridge.word_bytes}-byte words; config {config.name!r} expects "
                             f"{config.dram_bytes} in {config.dma_bus_bytes}-byte words")
        self._scalars = ScalarShadow(SCALAR_REGS)

    def write(self, addr: int, data: bytes | np.ndarray) -> None:
        payload = data.astype(data.dtype.newbyteorder("<")).tobytes() if isinstance(data, np.ndarray) \
            else bytes(data)
        self._check_span(addr, len(payload))
        self.bridge.write_memory(addr, payload)

    def read(self, addr: int, nbytes: int) -> bytes:
        self._check_span(addr, nbytes)
        return self.bridge.read_memory(addr, nbytes)

    def _write_scalar(self, register: int, bits: int) -> None:
        self._scalars.write(register, bits)

    def read_scalar(self, register: int) -> int:
        return self._scalars.read(register)

    def _execute(self, base: int, max_cycles: int | None, cycle_limit: int) -> RunStatus:
        regs = self.bridge
        budget = cycle_limit + DEFAULT_MAX_CYCLES if max_cycles is None else max_cycles
        for register, bits in self._scalars.take_writes():
            regs.write_register(REGISTER_BY_NAME[f"SCALAR_R{register}"].offset, bits)
        regs.write_register(REGISTER_BY_NAME["PROG_BASE_LO"].offset, base & 0xFFFF_FFFF)
        regs.write_register(REGISTER_BY_NAME["PROG_BASE_HI"].offset, base >> 32)
        regs.write_register(REGISTER_BY_NAME["CYCLE_LIMIT"].offset, cycle_limit)
        regs.write_register(_CTRL.offset, CTRL_START_RUN)
        # STATUS .. RUN_CYCLES are consecutive: one request per poll.
        poll_count = (_RUN_CYCLES.offset - _STATUS.offset) // 4 + 1
        while True:
            window = regs.read_registers(_STATUS.offset, poll_count)
            status_bits, run_cycles = window[0], window[-1]
            if status_bits & (STATUS_DONE | STATUS_ERROR) or run_cycles >= budget:
                break
        timed_out = not status_bits & (STATUS_DONE | STATUS_ERROR)
        if timed_out:
            # Leave the machine usable for the next run.
            regs.write_register(_CTRL.offset, CTRL_SOFT_RESET)
            window = regs.read_registers(_STATUS.offset, poll_count)
        by_offset = {_STATUS.offset + 4 * i: value for i, value in enumerate(window)}
        cause = ErrorCause(by_offset[REGISTER_BY_NAME["ERROR_CAUSE"].offset])
        error_pc = by_offset[REGISTER_BY_NAME["ERROR_PC"].offset]
        cycles = by_offset[_RUN_CYCLES.offset]
        # Every counter in one request: LO before HI, so each 64-bit read is atomic.
        words = regs.read_registers(COUNTER_BASE, 2 * len(COUNTERS))
        counters = {spec.name: words[2 * i] | words[2 * i + 1] << 32 for i, spec in enumerate(COUNTERS)}
        scalars = regs.read_registers(REGISTER_BY_NAME["SCALAR_R1"].offset, SCALAR_REGS - 1)
        for register, bits in enumerate(scalars, start=1):
            self._scalars.read_back(register, bits)
        regs.write_register(_STATUS.offset, STATUS_DONE | STATUS_ERROR)
        failed = cause is not ErrorCause.NONE
        return RunStatus(cause, error_pc if failed else None, cycles, counters, timed_out=timed_out,
                         detail=f"not done after {budget} run cycles" if timed_out else "")

    def close(self) -> None:
        self.transport.close()
        super().close()
