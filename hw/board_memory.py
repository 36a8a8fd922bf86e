"""On-chip external memory for a board: an AXI4 slave over block RAM, with a second port for the host.

:class:`BoardMemory` stands where DRAM stands in a system: the accelerator's ``m_axi`` reads
instructions and rows from it and writes results to it.  Its ``host`` port -- one word per
access -- lets the UART bridge (:mod:`braze.hw.uart_bridge`) load programs and data and read
results.  The words are one :class:`amaranth.lib.memory.Memory` with one read port and one
write port (byte lanes), which Yosys maps to the part's block RAM; the AXI side has priority and
the host port is granted a cycle when the AXI side is between bursts.

What the AXI side implements: INCR bursts of full-width beats (what the accelerator's masters
issue), one read burst and one write burst at a time, a beat per cycle, two cycles from the AR
handshake to the first read beat.  Beats at or beyond ``size`` bytes, and beats of any other
burst type or beat size, get ``DECERR``/``SLVERR`` (reads return zeros, writes change nothing).
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .axi import AXI4Signature, Burst, Resp
from .uart import BoardParameterError

__all__ = ["BoardMemory", "MemoryHostSignature", "block_ram_blocks"]


def _is_pow2(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0 and value & (value - 1) == 0


class MemoryHostSignature(wiring.Signature):
    """A one-word-per-access memory port, seen from its initiator (the host bridge).

    The initiator holds ``valid`` with ``write``, ``addr`` (a word address) and ``wdata``
    until a cycle in which ``ready`` is high: the access happens at that clock edge, and a read's
    word is on ``rdata`` in the next cycle (only then: the AXI side reads through the same port).

    Parameters
    ----------
    addr_width : int
        Width of the word address.
    data_width : int
        Word width in bits.
    """

    def __init__(self, addr_width: int, data_width: int):
        self.addr_width = addr_width
        self.data_width = data_width
        super().__init__({
            "valid": Out(1), "write": Out(1), "addr": Out(addr_width), "wdata": Out(data_width),
            "ready": In(1), "rdata": In(data_width),
        })

    def __eq__(self, other):
        return (type(other) is type(self) and other.addr_width == self.addr_width
                and other.data_width == self.data_width)

    def __repr__(self):
        return f"MemoryHostSignature(addr_width={self.addr_width}, data_width={self.data_width})"


#: Block RAM configurations per FPGA family, as (depth, data bits) of a memory with byte enables.
_BLOCK_RAM = {
    # ECP5 DP16KD (18 Kbit): 512 x 36 ... 16384 x 1; with byte enables a 9-bit lane holds one byte.
    "ecp5": ((512, 32), (1024, 16), (2048, 8), (4096, 4), (8192, 2), (16384, 1)),
    # iCE40 SB_RAM40_4K (4 Kbit): 256 x 16 ... 2048 x 2 (bit-masked writes).
    "ice40": ((256, 16), (512, 8), (1024, 4), (2048, 2)),
}


def block_ram_blocks(family: str, depth: int, width: int) -> int:
    """Fewest block RAMs of ``family`` (``ecp5`` or ``ice40``) that hold ``depth`` words of ``width`` bits.

    The count for the best single configuration tiled in depth and width, as Yosys' memory mapper
    chooses for a simple-dual-port memory; the synthesized design's own count is in ``braze fpga``'s
    resource report.
    """
    if family not in _BLOCK_RAM:
        raise BoardParameterError(f"block_ram_blocks: no block RAM table for FPGA family {family!r}; "
                                  f"families are {', '.join(_BLOCK_RAM)}")
    shapes = _BLOCK_RAM[family]
    return min(-(-depth // block_depth) * -(-width // block_width) for block_depth, block_width in shapes)


class BoardMemory(wiring.Component):
    """Block-RAM-backed external memory with an AXI4 slave port and a host port.

    Parameters
    ----------
    size : int
        Bytes of memory from address 0: a power of two, at least 16 bus words.
    data_width : int
        AXI data width in bits (the accelerator's ``dma_bus_bits``: 64, 128 or 256).
    addr_width, id_width : int
        AXI address and ID widths of the accelerator's manager port.

    Attributes
    ----------
    s_axi : In(AXI4Signature(addr_width=addr_width, data_width=data_width, id_width=id_width))
        The port the accelerator's ``m_axi`` connects to.
    host : In(MemoryHostSignature(log2(size / word bytes), data_width))
        Word accesses for the host bridge; granted between AXI bursts.
    depth : int
        Words of ``data_width`` bits.
    """

    def __init__(self, *, size: int, data_width: int, addr_width: int = 32, id_width: int = 1):
        if data_width not in (64, 128, 256):
            raise BoardParameterError(f"BoardMemory: data_width={data_width!r} must be 64, 128 or 256")
        word_bytes = data_width // 8
        if not _is_pow2(size) or size < 16 * word_bytes or size > 1 << addr_width:
            raise BoardParameterError(f"BoardMemory: size={size!r} must be a power of two number of bytes "
                                      f"from {16 * word_bytes} to 2**{addr_width}")
        self.size = size
        self.data_width = data_width
        self.word_bytes = word_bytes
        self.depth = size // word_bytes
        self.word_shift = word_bytes.bit_length() - 1
        super().__init__({
            "s_axi": In(AXI4Signature(addr_width=addr_width, data_width=data_width, id_width=id_width)),
            "host": In(MemoryHostSignature((self.depth - 1).bit_length(), data_width)),
        })

    def elaborate(self, platform):
        m = Module()
        bus, host = self.s_axi, self.host
        addr_width = bus.signature.addr_width
        index_width = (self.depth - 1).bit_length()
        full_size = Const(self.word_shift, 3)
        m.submodules.storage = storage = Memory(shape=unsigned(self.data_width), depth=self.depth, init=[])
        read = storage.read_port()
        write = storage.write_port(granularity=8)

        # --- Read side: one burst at a time; a beat per cycle while rready. ----------------------
        read_id = Signal.like(bus.rid)
        read_word = Signal(addr_width)          # word address of the current beat
        read_left = Signal(8)                   # beats after the current one
        read_legal = Signal()                   # INCR, full-width beats
        beat_ok = Signal()                      # the current beat's word exists and the burst is legal
        read_idle = Signal()
        host_read = host.valid & ~host.write
        m.d.comb += [read.addr.eq(read_word[:index_width])]
        with m.FSM(name="read_fsm"):
            with m.State("IDLE"):
                m.d.comb += [read_idle.eq(1), bus.arready.eq(~host_read)]
                with m.If(bus.arvalid & bus.arready):
                    m.d.sync += [read_id.eq(bus.arid), read_word.eq(bus.araddr >> self.word_shift),
                                 read_left.eq(bus.arlen),
                                 read_legal.eq((bus.arburst == Burst.INCR) & (bus.arsize == full_size))]
                    m.next = "ISSUE"
            with m.State("ISSUE"):
                m.d.comb += read.en.eq(1)
                m.d.sync += beat_ok.eq(read_legal & (read_word < self.depth))
                m.next = "BEAT"
            with m.State("BEAT"):
                m.d.comb += [
                    bus.rvalid.eq(1), bus.rid.eq(read_id), bus.rlast.eq(read_left == 0),
                    bus.rdata.eq(beat_ok.any().replicate(self.data_width) & read.data),
                    bus.rresp.eq(Resp.OKAY),
                ]
                with m.If(~beat_ok):
                    m.d.comb += bus.rresp.eq(Resp.DECERR)
                    with m.If(~read_legal):
                        m.d.comb += bus.rresp.eq(Resp.SLVERR)
                with m.If(bus.rready):
                    with m.If(read_left == 0):
                        m.next = "IDLE"
                    with m.Else():
                        # Read the next beat's word now: it is on read.data in the next cycle.
                        next_word = read_word + 1
                        m.d.comb += [read.en.eq(1), read.addr.eq(next_word[:index_width])]
                        m.d.sync += [read_word.eq(next_word), read_left.eq(read_left - 1),
                                     beat_ok.eq(read_legal & (next_word < self.depth))]
        with m.If(read_idle & host_read):
            m.d.comb += [read.en.eq(1), read.addr.eq(host.addr), host.ready.eq(1)]
        m.d.comb += host.rdata.eq(read.data)

        # --- Write side: one burst at a time; a beat per cycle. ------------------------------------
        write_id = Signal.like(bus.bid)
        write_word = Signal(addr_width)
        write_legal = Signal()
        write_resp = Signal(2)
        host_write = host.valid & host.write
        with m.FSM(name="write_fsm"):
            with m.State("IDLE"):
                m.d.comb += bus.awready.eq(~host_write)
                with m.If(host_write):
                    m.d.comb += [write.en.eq(-1), write.addr.eq(host.addr), write.data.eq(host.wdata),
                                 host.ready.eq(1)]
                with m.Elif(bus.awvalid):
                    m.d.sync += [write_id.eq(bus.awid), write_word.eq(bus.awaddr >> self.word_shift),
                                 write_legal.eq((bus.awburst == Burst.INCR) & (bus.awsize == full_size)),
                                 write_resp.eq(Resp.OKAY)]
                    m.next = "DATA"
            with m.State("DATA"):
                m.d.comb += bus.wready.eq(1)
                in_range = write_legal & (write_word < self.depth)
                with m.If(bus.wvalid):
                    with m.If(in_range):
                        m.d.comb += [write.en.eq(bus.wstrb), write.addr.eq(write_word[:index_width]),
                                     write.data.eq(bus.wdata)]
                    with m.Elif(~write_legal):
                        m.d.sync += write_resp.eq(Resp.SLVERR)
                    with m.Else():
                        m.d.sync += write_resp.eq(Resp.DECERR)
                    m.d.sync += write_word.eq(write_word + 1)
                    with m.If(bus.wlast):
                        m.next = "RESPONSE"
            with m.State("RESPONSE"):
                m.d.comb += [bus.bvalid.eq(1), bus.bid.eq(write_id), bus.bresp.eq(write_resp)]
                with m.If(bus.bready):
                    m.next = "IDLE"
        return m
