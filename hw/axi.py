"""AXI4 and AXI4-Lite interfaces, the accelerator's bus masters, and its register-bus bridge.

Blocks
------
:class:`AXI4Signature`, :class:`AXI4LiteSignature`
    The standard AXI channel signals as flat :class:`~amaranth.lib.wiring.Signature` members,
    seen from the manager (master): members the master drives are ``Out``.
:class:`AXI4ReadMaster`, :class:`AXI4WriteMaster`
    Turn requests of any length into legal INCR bursts (at most 256 beats, never crossing a
    4 KiB boundary) with several bursts outstanding; all transactions use one ID, so responses
    return in order.
:class:`ReadArbiter`
    Lets several clients (instruction fetch, the load DMA) share one :class:`AXI4ReadMaster`.
    It arbitrates at the request level and routes every data beat back to the client whose
    request it answers; it lives here, in front of the master, because sharing one AXI ID and one
    outstanding-burst queue keeps the bus in order and needs no reorder buffer.
:class:`AXI4LiteSlave`
    Bridges AXI4-Lite to a one-cycle register bus (:class:`RegisterBusSignature`); the
    control/status register file (:mod:`braze.hw.csr`) sits behind it.

Port names in Verilog
---------------------
Amaranth flattens an interface member's path with ``__``: a top-level port ``m_axi`` with member
``awaddr`` becomes the Verilog port ``m_axi__awaddr``.  Vivado's interface inference and LiteX
expect ``m_axi_awaddr``.  :func:`conventional_ports` builds the ``ports=`` argument of
:func:`amaranth.back.verilog.convert` with the path joined by a single ``_``::

    verilog.convert(top, name="braze_default", ports=conventional_ports(top))
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, unsigned
from amaranth.hdl._ir import PortDirection  # public spelling arrives in Amaranth 0.6
from amaranth.lib import data, enum, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = [
    "Burst", "Resp", "MAX_BURST_BEATS", "BOUNDARY_BYTES",
    "AXI4Signature", "AXI4LiteSignature", "RegisterBusSignature",
    "read_request_layout", "read_beat_layout", "write_request_layout", "write_beat_layout",
    "write_response_layout", "conventional_ports",
    "BurstSplitter", "AXI4ReadMaster", "AXI4WriteMaster", "ReadArbiter", "AXI4LiteSlave",
]

#: Longest INCR burst AXI4 allows.
MAX_BURST_BEATS = 256
#: No burst may cross a boundary of this many bytes.
BOUNDARY_BYTES = 4096

# AXCACHE "normal non-cacheable bufferable", the value Xilinx recommends for masters without caches.
_AXCACHE = 0b0011


class Burst(enum.Enum, shape=2):
    """AXI burst types (``AxBURST``)."""

    FIXED = 0
    INCR = 1
    WRAP = 2


class Resp(enum.Enum, shape=2):
    """AXI response codes (``xRESP``); bit 1 set means the access failed."""

    OKAY = 0
    EXOKAY = 1
    SLVERR = 2
    DECERR = 3


def _is_pow2(value: int) -> bool:
    return isinstance(value, int) and value > 0 and value & (value - 1) == 0


def _check_int(owner: str, name: str, value, low: int, high: int):
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{owner}: {name}={value!r} must be an integer from {low} to {high}")


def _check_data_width(owner: str, value, allowed: tuple[int, ...]):
    if value not in allowed:
        raise ValueError(f"{owner}: data_width={value!r} must be one of {allowed}")


class AXI4Signature(wiring.Signature):
    """An AXI4 (full) manager interface.

    Members are the AMBA names in lower case: write address ``aw*``, write data ``w*``, write
    response ``b*``, read address ``ar*`` and read data ``r*``.  Besides the required signals
    it carries ``AxLOCK``, ``AxCACHE``, ``AxPROT`` and ``AxQOS``, which Vivado and most
    interconnects expect; it has no ``AxREGION`` or user signals.

    Parameters
    ----------
    addr_width : int
        Byte address width, 12 to 64.
    data_width : int
        Data bus width in bits: a power of two from 8 to 1024.
    id_width : int
        Width of the ID signals, 1 to 32.
    """

    def __init__(self, *, addr_width: int = 32, data_width: int, id_width: int = 1):
        _check_int("AXI4Signature", "addr_width", addr_width, 12, 64)
        _check_data_width("AXI4Signature", data_width, tuple(8 << i for i in range(8)))
        _check_int("AXI4Signature", "id_width", id_width, 1, 32)
        self.addr_width = addr_width
        self.data_width = data_width
        self.id_width = id_width
        members = {}
        for ch in ("aw", "ar"):
            members.update({
                f"{ch}id": Out(id_width), f"{ch}addr": Out(addr_width), f"{ch}len": Out(8),
                f"{ch}size": Out(3), f"{ch}burst": Out(2), f"{ch}lock": Out(1), f"{ch}cache": Out(4),
                f"{ch}prot": Out(3), f"{ch}qos": Out(4), f"{ch}valid": Out(1), f"{ch}ready": In(1),
            })
            if ch == "aw":
                members.update({
                    "wdata": Out(data_width), "wstrb": Out(data_width // 8), "wlast": Out(1),
                    "wvalid": Out(1), "wready": In(1),
                    "bid": In(id_width), "bresp": In(2), "bvalid": In(1), "bready": Out(1),
                })
        members.update({
            "rid": In(id_width), "rdata": In(data_width), "rresp": In(2), "rlast": In(1),
            "rvalid": In(1), "rready": Out(1),
        })
        super().__init__(members)

    def __eq__(self, other):
        return (type(other) is type(self) and other.addr_width == self.addr_width
                and other.data_width == self.data_width and other.id_width == self.id_width)

    def __repr__(self):
        return (f"AXI4Signature(addr_width={self.addr_width}, data_width={self.data_width}, "
                f"id_width={self.id_width})")


class AXI4LiteSignature(wiring.Signature):
    """An AXI4-Lite manager interface (``aw* w* b* ar* r*`` with ``AxPROT``, no bursts or IDs).

    Parameters
    ----------
    addr_width : int
        Byte address width, 3 to 64.
    data_width : int
        32 or 64.
    """

    def __init__(self, addr_width: int, data_width: int = 32):
        _check_int("AXI4LiteSignature", "addr_width", addr_width, 3, 64)
        _check_data_width("AXI4LiteSignature", data_width, (32, 64))
        self.addr_width = addr_width
        self.data_width = data_width
        super().__init__({
            "awaddr": Out(addr_width), "awprot": Out(3), "awvalid": Out(1), "awready": In(1),
            "wdata": Out(data_width), "wstrb": Out(data_width // 8), "wvalid": Out(1), "wready": In(1),
            "bresp": In(2), "bvalid": In(1), "bready": Out(1),
            "araddr": Out(addr_width), "arprot": Out(3), "arvalid": Out(1), "arready": In(1),
            "rdata": In(data_width), "rresp": In(2), "rvalid": In(1), "rready": Out(1),
        })

    def __eq__(self, other):
        return (type(other) is type(self) and other.addr_width == self.addr_width
                and other.data_width == self.data_width)

    def __repr__(self):
        return f"AXI4LiteSignature(addr_width={self.addr_width}, data_width={self.data_width})"


class RegisterBusSignature(wiring.Signature):
    """A one-cycle register bus, seen from the initiator (:class:`AXI4LiteSlave`).

    In a cycle with ``r_stb`` or ``w_stb`` high the target decodes ``addr`` (a *word* address:
    the byte address divided by ``data_width // 8``) and answers in the same cycle: ``r_data``
    for a read, and ``error`` high if the access is not allowed (unmapped address, write to a
    read-only register).  A write takes effect, and a read's side effects happen, at the clock
    edge that ends the strobe cycle; ``w_strb`` has one bit per byte of ``w_data``.
    """

    def __init__(self, *, addr_width: int, data_width: int = 32):
        _check_int("RegisterBusSignature", "addr_width", addr_width, 1, 64)
        _check_data_width("RegisterBusSignature", data_width, (32, 64))
        self.addr_width = addr_width
        self.data_width = data_width
        super().__init__({
            "addr": Out(addr_width), "r_stb": Out(1), "w_stb": Out(1),
            "w_data": Out(data_width), "w_strb": Out(data_width // 8),
            "r_data": In(data_width), "error": In(1),
        })

    def __eq__(self, other):
        return (type(other) is type(self) and other.addr_width == self.addr_width
                and other.data_width == self.data_width)

    def __repr__(self):
        return f"RegisterBusSignature(addr_width={self.addr_width}, data_width={self.data_width})"


def conventional_ports(component: wiring.Component) -> dict[str, tuple]:
    """The ``ports=`` of :func:`amaranth.back.verilog.convert` with conventional AXI names.

    Every member path of ``component``'s signature is joined with ``_`` instead of Amaranth's
    ``__``, so an ``m_axi`` interface gives ``m_axi_awaddr`` and an ``s_axil`` interface
    ``s_axil_araddr`` -- the names Vivado's block design and LiteX infer AXI interfaces from.

    Raises
    ------
    ValueError
        If two members would get the same Verilog name.
    """
    ports: dict[str, tuple] = {}
    for path, member, value in component.signature.flatten(component):
        name = "_".join(map(str, path))
        if name in ports:
            raise ValueError(f"conventional_ports: two members of {component!r} are both named {name!r}")
        direction = PortDirection.Input if member.flow == In else PortDirection.Output
        ports[name] = (Value.cast(value), direction)
    return ports


def read_request_layout(addr_width: int, beats_width: int) -> data.StructLayout:
    """Payload of a read request: the first byte address and the number of data beats."""
    return data.StructLayout({"addr": unsigned(addr_width), "beats": unsigned(beats_width)})


#: A write request has the same fields as a read request.
write_request_layout = read_request_layout


def read_beat_layout(data_width: int) -> data.StructLayout:
    """Payload of a read data beat: ``last`` ends a request, ``error`` flags SLVERR/DECERR."""
    return data.StructLayout({"data": unsigned(data_width), "last": unsigned(1), "error": unsigned(1)})


def write_beat_layout(data_width: int) -> data.StructLayout:
    """Payload of a write data beat: the data and one strobe bit per byte."""
    return data.StructLayout({"data": unsigned(data_width), "strb": unsigned(data_width // 8)})


def write_response_layout() -> data.StructLayout:
    """Payload of a write completion: ``error`` if any burst of the request failed."""
    return data.StructLayout({"error": unsigned(1)})


def _burst_layout(addr_width: int) -> data.StructLayout:
    return data.StructLayout({"addr": unsigned(addr_width), "len": unsigned(8), "last": unsigned(1)})


def _check_master_params(owner, addr_width, data_width, id_width, beats_width, max_outstanding,
                         max_burst_beats):
    _check_int(owner, "addr_width", addr_width, 12, 64)
    _check_data_width(owner, data_width, tuple(8 << i for i in range(8)))
    _check_int(owner, "id_width", id_width, 1, 32)
    _check_int(owner, "beats_width", beats_width, 1, 32)
    _check_int(owner, "max_outstanding", max_outstanding, 1, 256)
    if not _is_pow2(max_burst_beats) or max_burst_beats > MAX_BURST_BEATS:
        raise ValueError(f"{owner}: max_burst_beats={max_burst_beats!r} must be a power of two "
                         f"no larger than {MAX_BURST_BEATS}")


class BurstSplitter(wiring.Component):
    """Splits requests of any length into AXI INCR bursts.

    Each burst has at most ``max_burst_beats`` beats and ends at or before the next 4 KiB
    boundary.  One burst leaves per cycle; the next request is accepted in the cycle its
    predecessor's last burst leaves.  The low address bits below the bus width are ignored
    (requests are bus-aligned); a request of zero beats is accepted and dropped.

    Parameters
    ----------
    addr_width, beats_width : int
        Widths of the request's ``addr`` and ``beats``.
    bytes_per_beat : int
        Bus width in bytes.
    max_burst_beats : int
        Longest burst to issue (a power of two, at most 256).

    Members
    -------
    req : In(stream.Signature(read_request_layout(addr_width, beats_width)))
        Requests.
    burst : Out(stream.Signature({addr, len, last}))
        Bursts: ``len`` is beats minus one (``AxLEN``), ``last`` marks a request's final burst.
    busy : Out(1)
        A request is being split.
    """

    def __init__(self, *, addr_width: int, beats_width: int, bytes_per_beat: int,
                 max_burst_beats: int = MAX_BURST_BEATS):
        if bytes_per_beat not in tuple(1 << i for i in range(8)):
            raise ValueError(f"BurstSplitter: bytes_per_beat={bytes_per_beat!r} must be a power of two "
                             "from 1 to 128")
        _check_master_params("BurstSplitter", addr_width, bytes_per_beat * 8, 1, beats_width, 1,
                             max_burst_beats)
        self._addr_width = addr_width
        self._beats_width = beats_width
        self._bytes_per_beat = bytes_per_beat
        self._max_burst = min(max_burst_beats, BOUNDARY_BYTES // bytes_per_beat)
        super().__init__({
            "req": In(stream.Signature(read_request_layout(addr_width, beats_width))),
            "burst": Out(stream.Signature(_burst_layout(addr_width))),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        shift = self._bytes_per_beat.bit_length() - 1
        beats_per_page = BOUNDARY_BYTES // self._bytes_per_beat

        active = Signal()
        addr = Signal(self._addr_width)
        remaining = Signal(self._beats_width)

        # Beats left before the 4 KiB boundary: 1 .. beats_per_page.
        to_boundary = Signal(range(beats_per_page + 1))
        m.d.comb += to_boundary.eq(beats_per_page - addr[shift:12])
        limit = Signal(range(self._max_burst + 1))
        m.d.comb += limit.eq(Mux(to_boundary < self._max_burst, to_boundary, self._max_burst))
        is_last = Signal()
        m.d.comb += is_last.eq(remaining <= limit)
        beats = Signal(range(self._max_burst + 1))
        m.d.comb += beats.eq(Mux(is_last, remaining, limit))

        m.d.comb += [
            self.burst.valid.eq(active),
            self.burst.payload.addr.eq(addr),
            self.burst.payload.len.eq(beats - 1),
            self.burst.payload.last.eq(is_last),
            self.busy.eq(active),
        ]
        sent = self.burst.valid & self.burst.ready
        with m.If(sent):
            m.d.sync += [
                addr.eq(addr + (beats << shift)),
                remaining.eq(remaining - beats),
            ]
            with m.If(is_last):
                m.d.sync += active.eq(0)

        m.d.comb += self.req.ready.eq(~active | (sent & is_last))
        with m.If(self.req.valid & self.req.ready):
            m.d.sync += [
                active.eq(self.req.payload.beats != 0),
                addr.eq(Cat(Const(0, shift), self.req.payload.addr[shift:])),
                remaining.eq(self.req.payload.beats),
            ]
        return m


class AXI4ReadMaster(wiring.Component):
    """AXI4 read master: requests in, data beats out.

    Every request becomes one or more INCR bursts (see :class:`BurstSplitter`), all with
    ARID 0, full-width beats (``ARSIZE`` = bus width), ``ARCACHE`` = 0b0011 and ``ARPROT`` = 0.
    Up to ``max_outstanding`` bursts may await their data.  Data beats leave in request order;
    the beat that ends a request has ``last`` set, and every beat whose RRESP was SLVERR or
    DECERR has ``error`` set (its data is whatever the slave returned).  ``RREADY`` follows the
    ``data`` stream's ``ready``, so a stalled consumer stalls the bus rather than losing data;
    address issue never waits for data to be consumed, so no pattern of AR/R backpressure can
    deadlock the master.

    Parameters
    ----------
    addr_width : int
        Byte address width (default 32).
    data_width : int
        Bus width in bits.
    id_width : int
        ARID width (all transactions use ID 0).
    beats_width : int
        Width of a request's ``beats`` field.
    max_outstanding : int
        Bursts that may be in flight (issued, last beat not yet received).
    max_burst_beats : int
        Longest burst (a power of two up to 256), for slaves that want shorter ones.

    Members
    -------
    req : In(stream.Signature(read_request_layout(addr_width, beats_width)))
        ``addr`` is a byte address (bits below the bus width are ignored); ``beats`` of zero
        is dropped without a bus access or a reply.
    data : Out(stream.Signature(read_beat_layout(data_width)))
        Data beats.
    busy : Out(1)
        A request is being issued or a burst awaits data.
    m_axi : Out(AXI4Signature(...))
        The bus; only the AR and R channels are used (AW/W idle, BREADY high).
    """

    def __init__(self, *, addr_width: int = 32, data_width: int, id_width: int = 1, beats_width: int = 16,
                 max_outstanding: int = 4, max_burst_beats: int = MAX_BURST_BEATS):
        _check_master_params("AXI4ReadMaster", addr_width, data_width, id_width, beats_width,
                             max_outstanding, max_burst_beats)
        self._addr_width = addr_width
        self._data_width = data_width
        self._beats_width = beats_width
        self._max_outstanding = max_outstanding
        self._max_burst_beats = max_burst_beats
        super().__init__({
            "req": In(stream.Signature(read_request_layout(addr_width, beats_width))),
            "data": Out(stream.Signature(read_beat_layout(data_width))),
            "busy": Out(1),
            "m_axi": Out(AXI4Signature(addr_width=addr_width, data_width=data_width, id_width=id_width)),
        })

    def elaborate(self, platform):
        m = Module()
        bus = self.m_axi
        bytes_per_beat = self._data_width // 8
        m.submodules.splitter = splitter = BurstSplitter(
            addr_width=self._addr_width, beats_width=self._beats_width, bytes_per_beat=bytes_per_beat,
            max_burst_beats=self._max_burst_beats)
        wiring.connect(m, wiring.flipped(self.req), splitter.req)

        # One entry per burst in flight: does it end its request?
        m.submodules.in_flight = in_flight = fifo.SyncFIFO(width=1, depth=self._max_outstanding)

        # AR register stage: ARVALID and the address come straight from flops.
        ar_free = ~bus.arvalid | bus.arready
        m.d.comb += splitter.burst.ready.eq(ar_free & in_flight.w_rdy)
        m.d.comb += [
            in_flight.w_en.eq(splitter.burst.valid & splitter.burst.ready),
            in_flight.w_data.eq(splitter.burst.payload.last),
        ]
        with m.If(splitter.burst.valid & splitter.burst.ready):
            m.d.sync += [
                bus.arvalid.eq(1),
                bus.araddr.eq(splitter.burst.payload.addr),
                bus.arlen.eq(splitter.burst.payload.len),
            ]
        with m.Elif(bus.arready):
            m.d.sync += bus.arvalid.eq(0)
        m.d.comb += [
            bus.arid.eq(0),
            bus.arsize.eq(bytes_per_beat.bit_length() - 1),
            bus.arburst.eq(Burst.INCR),
            bus.arlock.eq(0),
            bus.arcache.eq(_AXCACHE),
            bus.arprot.eq(0),
            bus.arqos.eq(0),
        ]

        # R channel: the burst at the head of in_flight is the one the beats belong to.
        expecting = in_flight.r_rdy
        m.d.comb += [
            self.data.valid.eq(bus.rvalid & expecting),
            self.data.payload.data.eq(bus.rdata),
            self.data.payload.last.eq(bus.rlast & in_flight.r_data[0]),
            self.data.payload.error.eq(bus.rresp[1]),
            bus.rready.eq(self.data.ready & expecting),
            in_flight.r_en.eq(bus.rvalid & bus.rready & bus.rlast),
        ]

        # The write channels are unused: hold them idle and accept any (impossible) response.
        m.d.comb += bus.bready.eq(1)

        m.d.comb += self.busy.eq(splitter.busy | bus.arvalid | (in_flight.level != 0))
        return m


class AXI4WriteMaster(wiring.Component):
    """AXI4 write master: requests and data beats in, one completion per request out.

    Requests are split into INCR bursts like :class:`AXI4ReadMaster`'s (AWID 0, full-width
    beats, ``AWCACHE`` = 0b0011).  The ``data`` stream supplies exactly ``beats`` beats per
    request, in request order; their ``strb`` becomes WSTRB, and WLAST is generated.  A burst's
    write data may flow as soon as its address is presented (the master never waits for
    AWREADY before WVALID, as AXI requires).  Each request produces one ``resp`` item after
    its last burst's write response; ``error`` is set if any of its bursts got SLVERR or DECERR.
    Up to ``max_outstanding`` bursts may await their response.

    Parameters
    ----------
    addr_width, data_width, id_width, beats_width, max_outstanding, max_burst_beats
        As for :class:`AXI4ReadMaster`.

    Members
    -------
    req : In(stream.Signature(write_request_layout(addr_width, beats_width)))
        ``beats`` of zero is dropped (no data is consumed and no completion is reported).
    data : In(stream.Signature(write_beat_layout(data_width)))
        Write data beats.
    resp : Out(stream.Signature(write_response_layout()))
        One completion per request.
    busy : Out(1)
        A request is being issued or a burst awaits data or a response.
    m_axi : Out(AXI4Signature(...))
        The bus; only AW, W and B are used (AR idle, RREADY high).
    """

    def __init__(self, *, addr_width: int = 32, data_width: int, id_width: int = 1, beats_width: int = 16,
                 max_outstanding: int = 4, max_burst_beats: int = MAX_BURST_BEATS):
        _check_master_params("AXI4WriteMaster", addr_width, data_width, id_width, beats_width,
                             max_outstanding, max_burst_beats)
        self._addr_width = addr_width
        self._data_width = data_width
        self._beats_width = beats_width
        self._max_outstanding = max_outstanding
        self._max_burst_beats = max_burst_beats
        super().__init__({
            "req": In(stream.Signature(write_request_layout(addr_width, beats_width))),
            "data": In(stream.Signature(write_beat_layout(data_width))),
            "resp": Out(stream.Signature(write_response_layout())),
            "busy": Out(1),
            "m_axi": Out(AXI4Signature(addr_width=addr_width, data_width=data_width, id_width=id_width)),
        })

    def elaborate(self, platform):
        m = Module()
        bus = self.m_axi
        bytes_per_beat = self._data_width // 8
        m.submodules.splitter = splitter = BurstSplitter(
            addr_width=self._addr_width, beats_width=self._beats_width, bytes_per_beat=bytes_per_beat,
            max_burst_beats=self._max_burst_beats)
        wiring.connect(m, wiring.flipped(self.req), splitter.req)

        # Bursts whose data is still to be sent (their AxLEN), and bursts awaiting a response
        # (do they end their request?).  Both are written when the burst enters the AW stage.
        m.submodules.w_queue = w_queue = fifo.SyncFIFO(width=8, depth=self._max_outstanding)
        m.submodules.b_queue = b_queue = fifo.SyncFIFO(width=1, depth=self._max_outstanding)

        take = Signal()
        aw_free = ~bus.awvalid | bus.awready
        m.d.comb += [
            splitter.burst.ready.eq(aw_free & w_queue.w_rdy & b_queue.w_rdy),
            take.eq(splitter.burst.valid & splitter.burst.ready),
            w_queue.w_en.eq(take),
            w_queue.w_data.eq(splitter.burst.payload.len),
            b_queue.w_en.eq(take),
            b_queue.w_data.eq(splitter.burst.payload.last),
        ]
        with m.If(take):
            m.d.sync += [
                bus.awvalid.eq(1),
                bus.awaddr.eq(splitter.burst.payload.addr),
                bus.awlen.eq(splitter.burst.payload.len),
            ]
        with m.Elif(bus.awready):
            m.d.sync += bus.awvalid.eq(0)
        m.d.comb += [
            bus.awid.eq(0),
            bus.awsize.eq(bytes_per_beat.bit_length() - 1),
            bus.awburst.eq(Burst.INCR),
            bus.awlock.eq(0),
            bus.awcache.eq(_AXCACHE),
            bus.awprot.eq(0),
            bus.awqos.eq(0),
        ]

        # W channel.
        beat = Signal(8)
        has_burst = w_queue.r_rdy
        m.d.comb += [
            bus.wvalid.eq(self.data.valid & has_burst),
            bus.wdata.eq(self.data.payload.data),
            bus.wstrb.eq(self.data.payload.strb),
            bus.wlast.eq(beat == w_queue.r_data),
            self.data.ready.eq(bus.wready & has_burst),
        ]
        with m.If(bus.wvalid & bus.wready):
            with m.If(bus.wlast):
                m.d.sync += beat.eq(0)
                m.d.comb += w_queue.r_en.eq(1)
            with m.Else():
                m.d.sync += beat.eq(beat + 1)

        # B channel: a request's completion waits for the response to its last burst.
        failed = Signal()  # an earlier burst of the current request got an error response
        awaiting = b_queue.r_rdy
        ends_request = b_queue.r_data[0]
        m.d.comb += [
            bus.bready.eq(awaiting & (~ends_request | self.resp.ready)),
            self.resp.valid.eq(bus.bvalid & awaiting & ends_request),
            self.resp.payload.error.eq(failed | bus.bresp[1]),
        ]
        with m.If(bus.bvalid & bus.bready):
            m.d.comb += b_queue.r_en.eq(1)
            m.d.sync += failed.eq(Mux(ends_request, 0, failed | bus.bresp[1]))

        # The read channels are unused.
        m.d.comb += bus.rready.eq(1)

        m.d.comb += self.busy.eq(splitter.busy | bus.awvalid | (b_queue.level != 0))
        return m


class ReadArbiter(wiring.Component):
    """Round-robin sharing of one read master between several clients.

    A client's request, once offered to the master, is held until the master takes it; then
    the grant moves on to the next client that is asking.  The client of every request the
    master has taken is queued, so the master's data beats (which come back in request order)
    are routed to the right client, up to ``last``.  A client that stops taking its data stalls
    the beats behind it for every client, so each client must drain the data it asked for.

    Parameters
    ----------
    n_clients : int
        Number of clients, 2 to 16.
    addr_width, beats_width, data_width : int
        As for :class:`AXI4ReadMaster`.
    depth : int
        Requests that may be in flight (taken by the master, last beat not yet delivered).

    Members
    -------
    req : In(stream.Signature(read_request_layout(...))).array(n_clients)
        Each client's requests.
    data : Out(stream.Signature(read_beat_layout(data_width))).array(n_clients)
        Each client's data beats.
    m_req : Out(stream.Signature(read_request_layout(...)))
        To the read master's ``req``.
    m_data : In(stream.Signature(read_beat_layout(data_width)))
        From the read master's ``data``.
    """

    def __init__(self, *, n_clients: int = 2, addr_width: int = 32, beats_width: int = 16, data_width: int,
                 depth: int = 4):
        _check_int("ReadArbiter", "n_clients", n_clients, 2, 16)
        _check_master_params("ReadArbiter", addr_width, data_width, 1, beats_width, depth, MAX_BURST_BEATS)
        self._n_clients = n_clients
        self._depth = depth
        req_sig = stream.Signature(read_request_layout(addr_width, beats_width))
        data_sig = stream.Signature(read_beat_layout(data_width))
        super().__init__({
            "req": In(req_sig).array(n_clients),
            "data": Out(data_sig).array(n_clients),
            "m_req": Out(req_sig),
            "m_data": In(data_sig),
        })

    def elaborate(self, platform):
        m = Module()
        n = self._n_clients
        m.submodules.route = route = fifo.SyncFIFO(width=(n - 1).bit_length(), depth=self._depth)

        # Grant: held while an offered request waits; otherwise the first asking client after
        # the one served last.
        last_served = Signal(range(n))
        held = Signal()
        held_client = Signal(range(n))
        chosen = Signal(range(n))
        asking = Cat(r.valid for r in self.req)
        with m.If(held):
            m.d.comb += chosen.eq(held_client)
        with m.Else():
            with m.Switch(last_served):
                for last in range(n):
                    with m.Case(last):
                        # Lowest priority first, so the last assignment (highest priority) wins.
                        for offset in reversed(range(1, n + 1)):
                            client = (last + offset) % n
                            with m.If(asking[client]):
                                m.d.comb += chosen.eq(client)

        offered = Signal()
        with m.Switch(chosen):
            for client in range(n):
                with m.Case(client):
                    m.d.comb += [
                        offered.eq(self.req[client].valid),
                        self.m_req.payload.eq(self.req[client].payload),
                        self.req[client].ready.eq(self.m_req.ready & route.w_rdy),
                    ]
        m.d.comb += self.m_req.valid.eq(offered & route.w_rdy)
        taken = self.m_req.valid & self.m_req.ready
        m.d.comb += [
            route.w_en.eq(taken & (self.m_req.payload.beats != 0)),
            route.w_data.eq(chosen),
        ]
        with m.If(taken):
            m.d.sync += [last_served.eq(chosen), held.eq(0)]
        with m.Elif(self.m_req.valid):
            m.d.sync += [held.eq(1), held_client.eq(chosen)]

        # Data routing.
        head = route.r_data
        with m.Switch(head):
            for client in range(n):
                with m.Case(client):
                    m.d.comb += self.m_data.ready.eq(route.r_rdy & self.data[client].ready)
        for client in range(n):
            m.d.comb += [
                self.data[client].payload.eq(self.m_data.payload),
                self.data[client].valid.eq(self.m_data.valid & route.r_rdy & (head == client)),
            ]
        m.d.comb += route.r_en.eq(self.m_data.valid & self.m_data.ready & self.m_data.payload.last)
        return m


class AXI4LiteSlave(wiring.Component):
    """AXI4-Lite slave bridging to a one-cycle register bus (:class:`RegisterBusSignature`).

    One transaction at a time.  AW and W are accepted independently, in any order or in the
    same cycle; the register write happens once both have arrived, then B is held until
    BREADY.  A read is accepted when no write has started; its data is held until RREADY.
    When a read and a write are both waiting, they alternate, so neither can starve the other.
    The response is OKAY, or SLVERR when the register bus reports ``error``.  AxPROT is
    ignored.  Every access takes at least three cycles from address to response.

    Parameters
    ----------
    addr_width : int
        AXI byte address width.
    data_width : int
        32 or 64.

    Members
    -------
    s_axil : In(AXI4LiteSignature(addr_width, data_width))
        The AXI4-Lite port.
    bus : Out(RegisterBusSignature(addr_width - log2(data_width // 8), data_width))
        The register bus, word-addressed.
    """

    def __init__(self, *, addr_width: int, data_width: int = 32):
        _check_int("AXI4LiteSlave", "addr_width", addr_width, 3, 64)
        _check_data_width("AXI4LiteSlave", data_width, (32, 64))
        self._addr_width = addr_width
        self._data_width = data_width
        self._word_shift = (data_width // 8).bit_length() - 1
        super().__init__({
            "s_axil": In(AXI4LiteSignature(addr_width=addr_width, data_width=data_width)),
            "bus": Out(RegisterBusSignature(addr_width=addr_width - self._word_shift, data_width=data_width)),
        })

    def elaborate(self, platform):
        m = Module()
        axil = self.s_axil
        shift = self._word_shift

        word_addr = Signal(self._addr_width - shift)
        aw_got = Signal()
        w_got = Signal()
        w_data = Signal(self._data_width)
        w_strb = Signal(self._data_width // 8)
        prefer_write = Signal()  # the last transaction was a read
        r_data = Signal(self._data_width)
        resp = Signal(2)

        m.d.comb += [
            self.bus.addr.eq(word_addr),
            self.bus.w_data.eq(w_data),
            self.bus.w_strb.eq(w_strb),
            axil.rdata.eq(r_data),
            axil.rresp.eq(resp),
            axil.bresp.eq(resp),
        ]
        with m.FSM():
            with m.State("IDLE"):
                write_started = aw_got | w_got
                write_waiting = axil.awvalid | axil.wvalid
                start_read = axil.arvalid & ~write_started & ~(prefer_write & write_waiting)
                m.d.comb += [
                    axil.arready.eq(start_read),
                    axil.awready.eq(~aw_got & ~start_read),
                    axil.wready.eq(~w_got & ~start_read),
                ]
                aw_now = axil.awvalid & axil.awready
                w_now = axil.wvalid & axil.wready
                with m.If(aw_now):
                    m.d.sync += [aw_got.eq(1), word_addr.eq(axil.awaddr[shift:])]
                with m.If(w_now):
                    m.d.sync += [w_got.eq(1), w_data.eq(axil.wdata), w_strb.eq(axil.wstrb)]
                with m.If(start_read):
                    m.d.sync += word_addr.eq(axil.araddr[shift:])
                    m.next = "READ"
                with m.Elif((aw_got | aw_now) & (w_got | w_now)):
                    m.next = "WRITE"
            with m.State("READ"):
                m.d.comb += self.bus.r_stb.eq(1)
                m.d.sync += [
                    r_data.eq(self.bus.r_data),
                    resp.eq(Mux(self.bus.error, Resp.SLVERR, Resp.OKAY)),
                ]
                m.next = "READ_RESPONSE"
            with m.State("READ_RESPONSE"):
                m.d.comb += axil.rvalid.eq(1)
                with m.If(axil.rready):
                    m.d.sync += prefer_write.eq(1)
                    m.next = "IDLE"
            with m.State("WRITE"):
                m.d.comb += self.bus.w_stb.eq(1)
                m.d.sync += [
                    resp.eq(Mux(self.bus.error, Resp.SLVERR, Resp.OKAY)),
                    aw_got.eq(0),
                    w_got.eq(0),
                ]
                m.next = "WRITE_RESPONSE"
            with m.State("WRITE_RESPONSE"):
                m.d.comb += axil.bvalid.eq(1)
                with m.If(axil.bready):
                    m.d.sync += prefer_write.eq(0)
                    m.next = "IDLE"
        return m
