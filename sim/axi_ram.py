"""An AXI4 slave RAM in Amaranth, for co-simulation testbenches (never part of the accelerator).

:class:`AXIRam` serves an :class:`braze.hw.axi.AXI4Signature` manager port (the accelerator's
``m_axi``) from a byte-addressed memory of bus-width words:

* INCR, FIXED and WRAP bursts, full-width or narrow beats, one beat per cycle when not stalled;
* a configurable read latency (cycles from the AR handshake to the first data beat) and write
  response latency, with up to ``max_outstanding`` read bursts and write bursts accepted;
* optional pseudo-random backpressure (a seeded LFSR) on ``arready``, ``rvalid``, ``awready``,
  ``wready`` and ``bvalid``, keeping the AXI rule that a raised VALID stays raised;
* DECERR for beats at or beyond ``size`` (reads return zeros, such writes change nothing).

Storage
-------
With ``storage="memory"`` the words are an :class:`amaranth.lib.memory.Memory`, for Amaranth's
simulator.  Amaranth writes an ``initial`` statement for every word of a Memory, and converting
one of a million words takes minutes, so Verilog builds use ``storage="verilog"``: the same
logic around an instance of :data:`STORAGE_VERILOG` (module ``braze_axi_ram_storage``), a plain
``reg`` array that Verilator zero-initialises (``--x-initial 0``) and that a cocotb testbench
reads and writes in bulk (``<ram instance>.storage.mem``, made public to the simulator; the
co-simulation main copies bytes into it directly, see ``verilator_storage.cpp``) without clocking
the design.
"""

from __future__ import annotations

from amaranth.hdl import ClockSignal, Const, Instance, Module, Mux, Signal, unsigned
from amaranth.lib import data, fifo, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In

from braze.hw.axi import AXI4Signature, Burst, Resp

__all__ = ["AXIRam", "STORAGE_MODULE", "STORAGE_VERILOG"]

#: Verilog module name of the RAM's storage array (``storage="verilog"``).
STORAGE_MODULE = "braze_axi_ram_storage"

#: The storage array as Verilog; appended to a design that instantiates it.
STORAGE_VERILOG = f"""
// Storage of braze.sim.axi_ram.AXIRam: a synchronous-read RAM with byte enables.
module {STORAGE_MODULE} #(parameter WIDTH = 64, parameter DEPTH = 1024, parameter ADDR_WIDTH = 10) (
  input  wire                    clk,
  input  wire                    rd_en,
  input  wire [ADDR_WIDTH-1:0]   rd_addr,
  output reg  [WIDTH-1:0]        rd_data,
  input  wire [WIDTH/8-1:0]      wr_en,
  input  wire [ADDR_WIDTH-1:0]   wr_addr,
  input  wire [WIDTH-1:0]        wr_data
);
  reg [WIDTH-1:0] mem [0:DEPTH-1];
  integer lane;
  always @(posedge clk) begin
    if (rd_en) rd_data <= mem[rd_addr];
    for (lane = 0; lane < WIDTH / 8; lane = lane + 1)
      if (wr_en[lane]) mem[wr_addr][lane * 8 +: 8] <= wr_data[lane * 8 +: 8];
  end
endmodule
"""

_TIME_WIDTH = 32
_LFSR_TAPS = 0x80200003  # x^32 + x^22 + x^2 + x + 1, maximal length


def _is_pow2(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0 and value & (value - 1) == 0


def _burst_layout(addr_width: int, id_width: int) -> data.StructLayout:
    return data.StructLayout({"id": id_width, "addr": addr_width, "len": 8, "size": 3, "burst": 2,
                              "due": _TIME_WIDTH})


class _BurstWalker:
    """Registers that step through the beats of one burst (shared by the read and write sides)."""

    def __init__(self, m: Module, name: str, addr_width: int, id_width: int):
        self.active = Signal(name=f"{name}_active")
        self.id = Signal(id_width, name=f"{name}_id")
        self.addr = Signal(addr_width, name=f"{name}_addr")
        self.left = Signal(8, name=f"{name}_left")      # beats after the current one
        self.size = Signal(3, name=f"{name}_size")
        self.burst = Signal(2, name=f"{name}_burst")
        self.wrap_mask = Signal(addr_width, name=f"{name}_wrap_mask")
        self.next_addr = Signal(addr_width, name=f"{name}_next_addr")
        step = Signal(addr_width, name=f"{name}_step")
        incremented = Signal(addr_width, name=f"{name}_incremented")
        m.d.comb += [
            step.eq(Const(1, addr_width) << self.size),
            # INCR beats after the first are aligned to the beat size.
            incremented.eq((self.addr & ~(step - 1)) + step),
        ]
        with m.Switch(self.burst):
            with m.Case(Burst.FIXED):
                m.d.comb += self.next_addr.eq(self.addr)
            with m.Case(Burst.WRAP):
                m.d.comb += self.next_addr.eq((self.addr & ~self.wrap_mask)
                                              | ((self.addr + step) & self.wrap_mask))
            with m.Default():
                m.d.comb += self.next_addr.eq(incremented)

    def start(self, m: Module, request) -> None:
        m.d.sync += [
            self.active.eq(1), self.id.eq(request.id), self.addr.eq(request.addr),
            self.left.eq(request.len), self.size.eq(request.size), self.burst.eq(request.burst),
            self.wrap_mask.eq(((request.len + 1) << request.size) - 1),
        ]

    def advance(self, m: Module) -> None:
        m.d.sync += [self.addr.eq(self.next_addr), self.left.eq(self.left - 1)]


class AXIRam(wiring.Component):
    """A byte-addressed AXI4 slave RAM for testbenches.

    Parameters
    ----------
    size : int
        Bytes of memory from address 0; a power of two and a multiple of the bus width.
    data_width : int
        AXI data width in bits (64, 128 or 256 for Braze builds; any power of two from 8 to 1024).
    addr_width, id_width : int
        AXI address and ID widths.
    read_latency : int
        Cycles from an AR handshake to the earliest cycle of the burst's first data beat (>= 1).
    write_latency : int
        Cycles from a burst's last W beat to the earliest cycle of its B response (>= 1).
    max_outstanding : int
        Read bursts, and write bursts, accepted before ``arready``/``awready`` go low (power of two).
    stall : float
        Probability, in 1/256 steps, that each of ``arready rvalid awready wready bvalid`` is held
        low in a cycle where it could be high (0 disables backpressure).
    stall_port : bool
        Take the stall probability from the ``stall_threshold`` input at run time instead
        (probability ``stall_threshold / 256``), so one build serves every backpressure level.
    seed : int
        Nonzero 32-bit seed of the backpressure LFSR.
    storage : str
        ``"memory"`` (an Amaranth Memory, for Amaranth's simulator) or ``"verilog"`` (an instance
        of :data:`STORAGE_VERILOG`, for Verilog builds of large memories).

    Attributes
    ----------
    s_axi : In(AXI4Signature(addr_width, data_width, id_width))
        The subordinate port; connect the manager's ``m_axi`` to it.
    stall_threshold : In(8)
        With ``stall_port``: the run-time stall probability in 1/256 steps.
    memory : amaranth.lib.memory.Memory or None
        The storage with ``storage="memory"`` (testbenches may read and write ``memory.data``).
    """

    def __init__(self, *, size: int, data_width: int, addr_width: int = 32, id_width: int = 1,
                 read_latency: int = 2, write_latency: int = 1, max_outstanding: int = 8,
                 stall: float = 0.0, stall_port: bool = False, seed: int = 1, storage: str = "memory"):
        if not _is_pow2(data_width) or not 8 <= data_width <= 1024:
            raise ValueError(f"AXIRam: data_width={data_width!r} must be a power of two from 8 to 1024")
        bus_bytes = data_width // 8
        if not _is_pow2(size) or size < bus_bytes:
            raise ValueError(f"AXIRam: size={size!r} must be a power of two of at least one "
                             f"{bus_bytes}-byte bus word")
        if not isinstance(addr_width, int) or size > 1 << addr_width:
            raise ValueError(f"AXIRam: size={size} does not fit addr_width={addr_width!r}")
        for name, value in (("read_latency", read_latency), ("write_latency", write_latency)):
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1 << 16:
                raise ValueError(f"AXIRam: {name}={value!r} must be an integer from 1 to 65536")
        if not _is_pow2(max_outstanding) or max_outstanding > 256:
            raise ValueError(f"AXIRam: max_outstanding={max_outstanding!r} must be a power of two up to 256")
        if not isinstance(stall, int | float) or not 0.0 <= stall < 1.0:
            raise ValueError(f"AXIRam: stall={stall!r} must be a probability in [0, 1)")
        if not isinstance(seed, int) or not 0 < seed < 1 << 32:
            raise ValueError(f"AXIRam: seed={seed!r} must be a nonzero 32-bit integer")
        if storage not in ("memory", "verilog"):
            raise ValueError(f"AXIRam: storage={storage!r} must be 'memory' or 'verilog'")
        self.size = size
        self.data_width = data_width
        self.addr_width = addr_width
        self.id_width = id_width
        self.read_latency = read_latency
        self.write_latency = write_latency
        self.max_outstanding = max_outstanding
        self.stall_level = round(stall * 256)
        self.stall_port = bool(stall_port)
        self.seed = seed
        self.storage = storage
        self.words = size // bus_bytes
        self.word_bits = (self.words - 1).bit_length() or 1
        self.memory = Memory(shape=unsigned(data_width), depth=self.words, init=[]) \
            if storage == "memory" else None
        signature = AXI4Signature(addr_width=addr_width, data_width=data_width, id_width=id_width)
        members = {"s_axi": In(signature)}
        if self.stall_port:
            members["stall_threshold"] = In(8)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        bus = self.s_axi
        bus_bytes = self.data_width // 8
        offset_bits = (bus_bytes - 1).bit_length()

        # --- Storage: one synchronous read port, one byte-enabled write port. ------------------
        rd_en, rd_addr, rd_data = Signal(), Signal(self.word_bits), Signal(self.data_width)
        wr_en, wr_addr, wr_data = Signal(bus_bytes), Signal(self.word_bits), Signal(self.data_width)
        if self.memory is not None:
            m.submodules.memory = self.memory
            read_port = self.memory.read_port()
            write_port = self.memory.write_port(granularity=8)
            m.d.comb += [read_port.en.eq(rd_en), read_port.addr.eq(rd_addr), rd_data.eq(read_port.data),
                         write_port.en.eq(wr_en), write_port.addr.eq(wr_addr), write_port.data.eq(wr_data)]
        else:
            m.submodules.storage = Instance(
                STORAGE_MODULE,
                p_WIDTH=self.data_width, p_DEPTH=self.words, p_ADDR_WIDTH=self.word_bits,
                i_clk=ClockSignal("sync"),
                i_rd_en=rd_en, i_rd_addr=rd_addr, o_rd_data=rd_data,
                i_wr_en=wr_en, i_wr_addr=wr_addr, i_wr_data=wr_data,
            )

        # --- Time and backpressure. -------------------------------------------------------------
        now = Signal(_TIME_WIDTH)
        m.d.sync += now.eq(now + 1)
        lfsr = Signal(32, init=self.seed)
        m.d.sync += lfsr.eq(Mux(lfsr[0], (lfsr >> 1) ^ _LFSR_TAPS, lfsr >> 1))
        threshold = self.stall_threshold if self.stall_port else self.stall_level

        def stalled(lane: int):
            # Five overlapping 8-bit windows of the LFSR, one per stallable signal.
            if isinstance(threshold, int) and threshold == 0:
                return Const(0)
            return lfsr[6 * lane:6 * lane + 8] < threshold

        def due(when) -> object:
            # `when` has come when now - when is non-negative (time is modular).
            return ~(now - when)[_TIME_WIDTH - 1]

        def in_range(addr) -> object:
            return (addr >> (self.size.bit_length() - 1)) == 0

        layout = _burst_layout(self.addr_width, self.id_width)

        # --- Read side: AR queue -> burst walker -> storage read -> R queue. ----------------------
        depth = self.max_outstanding
        m.submodules.ar_queue = ar_queue = fifo.SyncFIFOBuffered(width=layout.size, depth=depth)
        ar_request = data.View(layout, ar_queue.w_data)
        m.d.comb += [
            bus.arready.eq(ar_queue.w_rdy & ~stalled(0)),
            ar_queue.w_en.eq(bus.arvalid & bus.arready),
            ar_request.id.eq(bus.arid), ar_request.addr.eq(bus.araddr), ar_request.len.eq(bus.arlen),
            ar_request.size.eq(bus.arsize), ar_request.burst.eq(bus.arburst),
            ar_request.due.eq(now + self.read_latency),
        ]
        reader = _BurstWalker(m, "read", self.addr_width, self.id_width)
        beat_layout = data.StructLayout({"data": self.data_width, "resp": 2, "last": 1, "id": self.id_width})
        r_depth = 4
        m.submodules.r_queue = r_queue = fifo.SyncFIFOBuffered(width=beat_layout.size, depth=r_depth)
        pending = Signal()                 # a storage read issued last cycle lands in r_queue now
        pending_beat = Signal(beat_layout)
        issue = Signal()
        m.d.comb += [
            issue.eq(reader.active & (r_queue.level + pending < r_depth)),
            rd_en.eq(issue),
            rd_addr.eq(reader.addr >> offset_bits),
        ]
        m.d.sync += pending.eq(issue)
        with m.If(issue):
            m.d.sync += [pending_beat.resp.eq(Mux(in_range(reader.addr), Resp.OKAY, Resp.DECERR)),
                         pending_beat.last.eq(reader.left == 0), pending_beat.id.eq(reader.id)]
            reader.advance(m)
        r_beat = data.View(beat_layout, r_queue.w_data)
        m.d.comb += [
            r_queue.w_en.eq(pending),
            r_beat.data.eq(Mux(pending_beat.resp == Resp.OKAY, rd_data, 0)),
            r_beat.resp.eq(pending_beat.resp), r_beat.last.eq(pending_beat.last),
            r_beat.id.eq(pending_beat.id),
        ]
        next_ar = data.View(layout, ar_queue.r_data)
        reader_free = ~reader.active | (issue & (reader.left == 0))
        with m.If(reader_free):
            m.d.sync += reader.active.eq(0)
            with m.If(ar_queue.r_rdy & due(next_ar.due)):
                m.d.comb += ar_queue.r_en.eq(1)
                reader.start(m, next_ar)
        r_shown = Signal()                 # rvalid was high without a handshake: it must stay high
        r_out = data.View(beat_layout, r_queue.r_data)
        m.d.comb += [
            bus.rvalid.eq(r_queue.r_rdy & (r_shown | ~stalled(1))),
            bus.rdata.eq(r_out.data), bus.rresp.eq(r_out.resp), bus.rlast.eq(r_out.last),
            bus.rid.eq(r_out.id),
            r_queue.r_en.eq(bus.rvalid & bus.rready),
        ]
        m.d.sync += r_shown.eq(bus.rvalid & ~bus.rready)

        # --- Write side: AW queue -> burst walker consuming W beats -> B queue. -------------------
        m.submodules.aw_queue = aw_queue = fifo.SyncFIFOBuffered(width=layout.size, depth=depth)
        aw_request = data.View(layout, aw_queue.w_data)
        m.d.comb += [
            bus.awready.eq(aw_queue.w_rdy & ~stalled(2)),
            aw_queue.w_en.eq(bus.awvalid & bus.awready),
            aw_request.id.eq(bus.awid), aw_request.addr.eq(bus.awaddr), aw_request.len.eq(bus.awlen),
            aw_request.size.eq(bus.awsize), aw_request.burst.eq(bus.awburst), aw_request.due.eq(0),
        ]
        writer = _BurstWalker(m, "write", self.addr_width, self.id_width)
        response_layout = data.StructLayout({"id": self.id_width, "resp": 2, "due": _TIME_WIDTH})
        m.submodules.b_queue = b_queue = fifo.SyncFIFOBuffered(width=response_layout.size,
                                                               depth=self.max_outstanding)
        burst_failed = Signal()            # some beat of the current write burst was out of range
        beat_ok = Signal()
        m.d.comb += [
            bus.wready.eq(writer.active & b_queue.w_rdy & ~stalled(3)),
            beat_ok.eq(in_range(writer.addr)),
            wr_addr.eq(writer.addr >> offset_bits),
            wr_data.eq(bus.wdata),
        ]
        w_fire = bus.wvalid & bus.wready
        with m.If(w_fire):
            m.d.comb += wr_en.eq(Mux(beat_ok, bus.wstrb, 0))
            m.d.sync += burst_failed.eq(burst_failed | ~beat_ok)
            writer.advance(m)
        b_entry = data.View(response_layout, b_queue.w_data)
        burst_done = w_fire & (writer.left == 0)
        m.d.comb += [
            b_queue.w_en.eq(burst_done),
            b_entry.id.eq(writer.id),
            b_entry.resp.eq(Mux(burst_failed | ~beat_ok, Resp.DECERR, Resp.OKAY)),
            b_entry.due.eq(now + self.write_latency),
        ]
        with m.If(~writer.active | burst_done):
            m.d.sync += writer.active.eq(0)
            with m.If(burst_done):
                m.d.sync += burst_failed.eq(0)
            with m.If(aw_queue.r_rdy):
                m.d.comb += aw_queue.r_en.eq(1)
                writer.start(m, data.View(layout, aw_queue.r_data))
        b_shown = Signal()
        b_out = data.View(response_layout, b_queue.r_data)
        m.d.comb += [
            bus.bvalid.eq(b_queue.r_rdy & due(b_out.due) & (b_shown | ~stalled(4))),
            bus.bid.eq(b_out.id), bus.bresp.eq(b_out.resp),
            b_queue.r_en.eq(bus.bvalid & bus.bready),
        ]
        m.d.sync += b_shown.eq(bus.bvalid & ~bus.bready)
        return m
