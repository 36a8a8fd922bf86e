"""The host bridge of a board: a framed command protocol over a byte stream (the UART).

One definition of the protocol serves the hardware (:class:`SerialBridge`) and the host driver
(:mod:`braze.sim.uart_device`): the opcodes :class:`Op`, the status codes :class:`Status`, the
header lengths :data:`HEADER_BYTES` and the limits below.

Protocol
--------
All numbers are little-endian.  A request is an opcode byte and a fixed-length header; the
reply is the payload (only if the header was valid) followed by exactly one status byte::

    op         header           then the host sends    reply
    INFO       --               --                     mem_bytes:4 word_bytes:1 version:1, status
    REG_WRITE  addr:2 data:4    --                     status
    REG_READ   addr:2 count:1   --                     count x data:4, status
    MEM_WRITE  addr:4 count:2   count x word           status
    MEM_READ   addr:4 count:2   --                     count x word, status

Register addresses are byte offsets in the accelerator's AXI4-Lite window (word aligned;
REG_READ reads ``count`` consecutive registers: all counters in one request).  Memory addresses
are byte addresses, aligned to a memory word (the accelerator's DMA bus width, ``word_bytes``);
``count`` counts words.  Errors never hang the bridge and always leave it at a request boundary:

* an unknown opcode byte is answered by ``BAD_OPCODE`` at once;
* ``count == 0`` is ``BAD_LENGTH``, a misaligned or out-of-range span ``BAD_ADDRESS`` (a
  MEM_WRITE's payload is still read, and dropped, so the stream stays in step); neither has a
  payload in the reply;
* an AXI-Lite error response (unmapped register, read-only register) is ``BUS_ERROR``, after
  the payload of a REG_READ;
* a framing error or overrun of the UART aborts the request with ``RX_ERROR``;
* a request that stops arriving part way (a host that died, a cable pulled) ends with ``TIMEOUT``
  once no byte has come for ``timeout_cycles``, so the next host finds the bridge idle.
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal
from amaranth.lib import enum, stream, wiring
from amaranth.lib.wiring import In, Out

from .axi import AXI4LiteSignature
from .board_memory import MemoryHostSignature
from .host_bridge import HostBridge
from .uart import BoardParameterError

__all__ = ["Op", "Status", "HEADER_BYTES", "PROTOCOL_VERSION", "INFO_BYTES", "MAX_REG_COUNT",
           "MAX_MEM_COUNT", "header_status", "SerialBridge"]

#: Version of the protocol, in the INFO reply.
PROTOCOL_VERSION = 1
#: Bytes of the INFO reply's payload.
INFO_BYTES = 6
#: Most registers one REG_READ reads (its count is a byte).
MAX_REG_COUNT = 255
#: Most words one MEM_WRITE or MEM_READ moves (its count is two bytes).
MAX_MEM_COUNT = 0xFFFF


class Op(enum.Enum, shape=8):
    """Request opcodes: the first byte of a request."""

    INFO = 0x01
    REG_WRITE = 0x02
    REG_READ = 0x03
    MEM_WRITE = 0x04
    MEM_READ = 0x05


class Status(enum.Enum, shape=8):
    """The last byte of every reply."""

    OK = 0x00
    BAD_OPCODE = 0x01
    BAD_LENGTH = 0x02
    BAD_ADDRESS = 0x03
    BUS_ERROR = 0x04
    RX_ERROR = 0x05
    TIMEOUT = 0x06


#: Header bytes after each opcode.
HEADER_BYTES = {Op.INFO: 0, Op.REG_WRITE: 6, Op.REG_READ: 3, Op.MEM_WRITE: 6, Op.MEM_READ: 6}
_HEADER_WIDTH = 8 * max(HEADER_BYTES.values())


def header_status(op: Op, addr: int, count: int, *, reg_addr_width: int, mem_size: int,
                  word_bytes: int) -> Status:
    """The status :class:`SerialBridge` gives a request's header: ``OK`` if it executes the request.

    The host checks a request with it before sending, so that it knows the reply's length (a
    payload follows only an accepted header).  ``count`` is the data word of a REG_WRITE.
    """
    window = 1 << reg_addr_width
    if op is Op.INFO:
        return Status.OK
    if op is Op.REG_WRITE:
        return Status.BAD_ADDRESS if addr % 4 or not 0 <= addr < window else Status.OK
    if op is Op.REG_READ:
        if count == 0:
            return Status.BAD_LENGTH
        return Status.BAD_ADDRESS if addr % 4 or not (0 <= addr and addr + 4 * count <= window) else Status.OK
    if count == 0:
        return Status.BAD_LENGTH
    depth = mem_size // word_bytes
    return Status.BAD_ADDRESS if addr % word_bytes or addr // word_bytes + count > depth else Status.OK


class SerialBridge(wiring.Component):
    """Executes protocol requests from a byte stream on an AXI4-Lite port and a memory port.

    Parameters
    ----------
    reg_addr_width : int
        Byte address width of the AXI4-Lite register window (12 for the accelerator's CSRs).
    mem_size : int
        Bytes of the memory behind ``mem``: a power of two, at least 16 words.
    word_bytes : int
        Bytes of one memory word: 8, 16 or 32.
    timeout_cycles : int
        Clock cycles without a byte after which a request that has begun ends with ``TIMEOUT``
        (0: wait for ever).

    Attributes
    ----------
    rx : In(stream.Signature(8))
        Request bytes (from a :class:`~braze.hw.uart.UARTReceiver`).
    rx_error : In(1)
        The receiver dropped a byte: the request in progress ends with ``RX_ERROR``.
    tx : Out(stream.Signature(8))
        Reply bytes (to a :class:`~braze.hw.uart.UARTTransmitter`).
    m_axil : Out(AXI4LiteSignature(reg_addr_width, 32))
        Register accesses.
    mem : Out(MemoryHostSignature(log2(mem_size / word_bytes), 8 * word_bytes))
        Memory word accesses.
    """

    def __init__(self, *, reg_addr_width: int = 12, mem_size: int, word_bytes: int, timeout_cycles: int = 0):
        if not isinstance(reg_addr_width, int) or not 3 <= reg_addr_width <= 16:
            raise BoardParameterError(f"SerialBridge: reg_addr_width={reg_addr_width!r} must be an integer "
                                      "from 3 to 16 (the header's address has two bytes)")
        if word_bytes not in (8, 16, 32):
            raise BoardParameterError(f"SerialBridge: word_bytes={word_bytes!r} must be 8, 16 or 32")
        if (not isinstance(mem_size, int) or mem_size < 16 * word_bytes or mem_size & (mem_size - 1)
                or mem_size > 1 << 31):
            raise BoardParameterError(f"SerialBridge: mem_size={mem_size!r} must be a power of two from "
                                      f"{16 * word_bytes} to 2**31 bytes (INFO reports it in four bytes)")
        if not isinstance(timeout_cycles, int) or isinstance(timeout_cycles, bool) or \
                not 0 <= timeout_cycles < 1 << 32:
            raise BoardParameterError(f"SerialBridge: timeout_cycles={timeout_cycles!r} must be an integer "
                                      "from 0 (no timeout) to 2**32 - 1")
        self.timeout_cycles = timeout_cycles
        self.reg_addr_width = reg_addr_width
        self.mem_size = mem_size
        self.word_bytes = word_bytes
        self.depth = mem_size // word_bytes
        super().__init__({
            "rx": In(stream.Signature(8)),
            "rx_error": In(1),
            "tx": Out(stream.Signature(8)),
            "m_axil": Out(AXI4LiteSignature(reg_addr_width, 32)),
            "mem": Out(MemoryHostSignature((self.depth - 1).bit_length(), 8 * word_bytes)),
        })

    def elaborate(self, platform):
        m = Module()
        word_bytes, word_shift = self.word_bytes, self.word_bytes.bit_length() - 1
        mem = self.mem
        # Register accesses go through a HostBridge: one toggle of ``req`` per access, done when
        # ``ack`` equals it again (the AXI4-Lite handshakes are the HostBridge's).
        m.submodules.registers = registers = HostBridge(self.reg_addr_width)
        wiring.connect(m, registers.m_axil, wiring.flipped(self.m_axil))
        host = registers.host

        op = Signal(8)
        header = Signal(_HEADER_WIDTH)
        header_index = Signal(range(_HEADER_WIDTH // 8 + 1))
        header_last = Signal(range(_HEADER_WIDTH // 8 + 1))
        addr = Signal(33)                       # register byte address, or memory word address
        count = Signal(16)                      # registers or words left
        word = Signal(max(8 * word_bytes, 8 * INFO_BYTES))
        byte_index = Signal(range(max(word_bytes, INFO_BYTES) + 1))
        send_last = Signal.like(byte_index)     # index of the last byte to send from `word`
        discard = Signal(range(word_bytes * MAX_MEM_COUNT + 1))
        status = Signal(8)
        bus_failed = Signal()
        silence = Signal(range(self.timeout_cycles + 1))   # cycles since the last byte of a request
        m.d.sync += silence.eq(0)

        with m.Switch(op):
            for opcode, length in HEADER_BYTES.items():
                with m.Case(opcode):
                    m.d.comb += header_last.eq(max(length - 1, 0))

        m.d.comb += [
            host.addr.eq(addr), host.wdata.eq(word[:32]),
            mem.addr.eq(addr), mem.wdata.eq(word[:8 * word_bytes]),
            self.tx.payload.eq(word.word_select(byte_index, 8)),
        ]
        info = Const(self.mem_size | word_bytes << 32 | PROTOCOL_VERSION << 40, 8 * INFO_BYTES)

        def finish(code: Status):
            m.d.sync += status.eq(code)
            m.next = "STATUS"

        def receive_or_abort(*, part_way: bool = True):
            """Take a byte in this state; a receiver error (or, part way through a request, silence) ends
            the request instead."""
            m.d.comb += self.rx.ready.eq(1)
            with m.If(self.rx_error):
                finish(Status.RX_ERROR)
            if part_way and self.timeout_cycles:
                with m.If(~self.rx.valid & ~self.rx_error):
                    m.d.sync += silence.eq(silence + 1)
                    with m.If(silence == self.timeout_cycles - 1):
                        finish(Status.TIMEOUT)
            return m.If(self.rx.valid & ~self.rx_error)

        def send(last_index: int, next_state: str):
            m.d.sync += [byte_index.eq(0), send_last.eq(last_index)]
            m.next = next_state

        with m.FSM():
            with m.State("IDLE"):
                with receive_or_abort(part_way=False):
                    m.d.sync += [op.eq(self.rx.payload), header_index.eq(0), header.eq(0)]
                    with m.Switch(self.rx.payload):
                        with m.Case(Op.INFO):
                            m.d.sync += word.eq(info)
                            send(INFO_BYTES - 1, "SEND")
                        with m.Case(Op.REG_WRITE, Op.REG_READ, Op.MEM_WRITE, Op.MEM_READ):
                            m.next = "HEADER"
                        with m.Default():
                            finish(Status.BAD_OPCODE)

            with m.State("HEADER"):
                with receive_or_abort():
                    m.d.sync += [header.word_select(header_index, 8).eq(self.rx.payload),
                                 header_index.eq(header_index + 1)]
                    with m.If(header_index == header_last):
                        m.next = "CHECK"

            with m.State("CHECK"):
                # A complete header: start the request, or reply an error.
                reg_addr, reg_count = header[:16], header[16:24]
                mem_addr, mem_count = header[:32], header[32:48]
                first_word = mem_addr >> word_shift
                bad_span = (mem_addr[:word_shift] != 0) | (first_word + mem_count > self.depth)
                window = 1 << self.reg_addr_width
                with m.Switch(op):
                    with m.Case(Op.REG_WRITE):
                        with m.If((reg_addr[:2] != 0) | (reg_addr >= window)):
                            finish(Status.BAD_ADDRESS)
                        with m.Else():
                            m.d.sync += [addr.eq(reg_addr), word.eq(header[16:48]), host.req.eq(~host.req)]
                            m.next = "REG_WRITE"
                    with m.Case(Op.REG_READ):
                        with m.If(reg_count == 0):
                            finish(Status.BAD_LENGTH)
                        with m.Elif((reg_addr[:2] != 0) | (reg_addr + (reg_count << 2) > window)):
                            finish(Status.BAD_ADDRESS)
                        with m.Else():
                            m.d.sync += [addr.eq(reg_addr), count.eq(reg_count), bus_failed.eq(0)]
                            m.next = "REG_READ"
                    with m.Case(Op.MEM_WRITE, Op.MEM_READ):
                        with m.If(mem_count == 0):
                            finish(Status.BAD_LENGTH)
                        with m.Elif(bad_span & (op == Op.MEM_WRITE)):
                            # Read and drop the payload: the next byte is a request again.
                            m.d.sync += [status.eq(Status.BAD_ADDRESS), discard.eq(mem_count * word_bytes)]
                            m.next = "DISCARD"
                        with m.Elif(bad_span):
                            finish(Status.BAD_ADDRESS)
                        with m.Else():
                            m.d.sync += [addr.eq(first_word), count.eq(mem_count), byte_index.eq(0)]
                            with m.If(op == Op.MEM_WRITE):
                                m.next = "MEM_COLLECT"
                            with m.Else():
                                m.next = "MEM_READ"

            # --- Registers. -----------------------------------------------------------------------
            with m.State("REG_WRITE"):
                m.d.comb += host.write.eq(1)
                with m.If(host.ack == host.req):
                    finish(Mux(host.resp[1], Status.BUS_ERROR, Status.OK))
            with m.State("REG_READ"):
                m.d.sync += host.req.eq(~host.req)
                m.next = "REG_READ_DATA"
            with m.State("REG_READ_DATA"):
                with m.If(host.ack == host.req):
                    m.d.sync += [word.eq(host.rdata), bus_failed.eq(bus_failed | host.resp[1])]
                    send(3, "SEND")

            # --- Memory. --------------------------------------------------------------------------
            with m.State("MEM_COLLECT"):
                with receive_or_abort():
                    m.d.sync += [word.word_select(byte_index, 8).eq(self.rx.payload),
                                 byte_index.eq(byte_index + 1)]
                    with m.If(byte_index == word_bytes - 1):
                        m.next = "MEM_WRITE"
            with m.State("MEM_WRITE"):
                m.d.comb += [mem.valid.eq(1), mem.write.eq(1)]
                with m.If(mem.ready):
                    m.d.sync += [addr.eq(addr + 1), count.eq(count - 1), byte_index.eq(0)]
                    with m.If(count == 1):
                        finish(Status.OK)
                    with m.Else():
                        m.next = "MEM_COLLECT"
            with m.State("MEM_READ"):
                m.d.comb += mem.valid.eq(1)
                with m.If(mem.ready):
                    m.next = "MEM_READ_DATA"
            with m.State("MEM_READ_DATA"):
                m.d.sync += word.eq(mem.rdata)
                send(word_bytes - 1, "SEND")
            with m.State("DISCARD"):
                with receive_or_abort():
                    m.d.sync += discard.eq(discard - 1)
                    with m.If(discard == 1):
                        m.next = "STATUS"

            # --- Replies. -------------------------------------------------------------------------
            with m.State("SEND"):
                m.d.comb += self.tx.valid.eq(1)
                with m.If(self.tx.ready):
                    m.d.sync += byte_index.eq(byte_index + 1)
                    with m.If(byte_index == send_last):
                        m.next = "SENT"
            with m.State("SENT"):
                # A payload item is out: the next register or word, or the status.
                with m.Switch(op):
                    with m.Case(Op.REG_READ):
                        m.d.sync += [addr.eq(addr + 4), count.eq(count - 1)]
                        with m.If(count == 1):
                            finish(Mux(bus_failed, Status.BUS_ERROR, Status.OK))
                        with m.Else():
                            m.next = "REG_READ"
                    with m.Case(Op.MEM_READ):
                        m.d.sync += [addr.eq(addr + 1), count.eq(count - 1)]
                        with m.If(count == 1):
                            finish(Status.OK)
                        with m.Else():
                            m.next = "MEM_READ"
                    with m.Default():
                        finish(Status.OK)
            with m.State("STATUS"):
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(status)]
                with m.If(self.tx.ready):
                    m.next = "IDLE"
        return m
