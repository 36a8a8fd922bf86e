"""AXI bus models for Amaranth simulator testbenches.

:class:`AXI4Memory`
    A byte-addressed memory that serves an AXI4 manager port (for example
    :class:`braze.hw.axi.AXI4ReadMaster`'s ``m_axi``) as simulator processes.  It stalls every
    handshake it controls at random (seeded), delays read data by a configurable latency,
    answers DECERR beyond its size and SLVERR inside chosen error regions, and checks the
    manager's side of the protocol (stable payloads, WLAST placement, bursts that cross 4 KiB).
:class:`AXI4LiteDriver`
    Performs single AXI4-Lite reads and writes from a testbench, with random AW/W ordering and
    random BREADY/RREADY stalls.

Both are written for ``async`` simulator coroutines (``ctx.tick()``, ``ctx.get``, ``ctx.set``)::

    memory = AXI4Memory(dut.m_axi, size=1 << 16, stall=0.3, read_latency=4, seed=1)
    memory.add_to(sim)                      # two background processes

    async def testbench(ctx):
        regs = AXI4LiteDriver(ctx, dut.s_axil, stall=0.2, seed=2)
        await regs.write(0x10, 1)
        status = await regs.read(0x14)

The memory model acts like registered logic: it samples the bus at each clock edge
(``ctx.tick().sample``) and drives its outputs right after the edge, so it never creates a
combinational loop with the design and each handshake is counted exactly once.
"""

from __future__ import annotations

import dataclasses
import random
from collections import deque
from collections.abc import Iterable, Mapping

import numpy as np

__all__ = ["AXIProtocolError", "AXIResponseError", "AXI4Memory", "AXI4LiteDriver", "OKAY", "EXOKAY",
           "SLVERR", "DECERR"]

OKAY, EXOKAY, SLVERR, DECERR = 0, 1, 2, 3
_RESP_NAMES = {OKAY: "OKAY", EXOKAY: "EXOKAY", SLVERR: "SLVERR", DECERR: "DECERR"}
_FIXED, _INCR, _WRAP = 0, 1, 2
_BOUNDARY = 4096


class AXIProtocolError(AssertionError):
    """The design broke an AXI rule the model checks (raised out of ``Simulator.run``)."""


class AXIResponseError(AssertionError):
    """An AXI4-Lite access got a different response from the one expected."""


_STALLED_SIGNALS = ("arready", "rvalid", "awready", "wready", "bvalid")


@dataclasses.dataclass
class _Burst:
    id: int
    addr: int
    len: int      # beats
    size: int     # bytes per beat
    kind: int     # FIXED / INCR / WRAP
    due: int = 0  # cycle from which the first beat (read) or the response (write) may go out
    beat: int = 0


@dataclasses.dataclass
class MemoryStats:
    """What an :class:`AXI4Memory` has served; tests use it to check bus behaviour."""

    read_bursts: int = 0
    read_beats: int = 0
    write_bursts: int = 0
    write_beats: int = 0
    max_reads_in_flight: int = 0    # most read bursts accepted and not yet finished at once
    max_writes_in_flight: int = 0   # most write bursts accepted and not yet answered at once
    max_read_len: int = 0
    max_write_len: int = 0


class AXI4Memory:
    """A byte-addressed memory serving an AXI4 slave port in the Amaranth simulator.

    Parameters
    ----------
    bus : interface of :class:`braze.hw.axi.AXI4Signature`
        The manager's port, e.g. ``dut.m_axi``.  The model drives ``arready rvalid rdata rresp
        rlast rid awready wready bvalid bresp bid`` and reads the rest.
    size : int
        Bytes of memory, at address 0 upwards.  A beat touching a byte at or beyond ``size``
        gets DECERR (reads return zero data; writes of that burst change nothing).
    read_latency : int
        Cycles from the AR handshake to the earliest cycle the burst's first beat may be valid
        (at least 1).  Beats of a burst then follow back to back unless stalled.
    write_latency : int
        Cycles from a burst's last W beat to the earliest cycle of its B response (at least 1).
    stall : float or mapping of str to float
        Probability that each of ``arready``, ``rvalid``, ``awready``, ``wready`` and
        ``bvalid`` is held low in a cycle where it could be high; a mapping sets them one by
        one (missing names are 0).  AXI rules are kept: a raised VALID stays raised until the
        handshake.
    seed : int
        Seed of the stall pattern.
    max_outstanding : int
        Read bursts, and write bursts, the model accepts before holding AxREADY low.
    error_regions : iterable of (start, end)
        Byte ranges ``[start, end)`` whose beats get SLVERR (reads return zero data; writes of
        that burst change nothing), to test error handling inside the memory.
    data : bytes-like, optional
        Initial contents (at most ``size`` bytes, from address 0); otherwise zeros.
    domain : str
        Clock domain of the bus.

    Attributes
    ----------
    mem : numpy.ndarray
        The contents, ``uint8`` of length ``size``; tests may read and write it directly.
    stats : MemoryStats
        Counts of what was served.
    """

    def __init__(self, bus, size: int, *, read_latency: int = 2, write_latency: int = 1,
                 stall: float | Mapping[str, float] = 0.0, seed: int = 0, max_outstanding: int = 8,
                 error_regions: Iterable[tuple[int, int]] = (), data=None, domain: str = "sync"):
        signature = bus.signature
        for name in ("data_width", "id_width", "addr_width"):
            if not hasattr(signature, name):
                raise TypeError(f"AXI4Memory: bus must have an AXI4Signature, not {signature!r}")
        if not isinstance(size, int) or size <= 0:
            raise ValueError(f"AXI4Memory: size={size!r} must be a positive integer")
        for name, value in (("read_latency", read_latency), ("write_latency", write_latency),
                            ("max_outstanding", max_outstanding)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"AXI4Memory: {name}={value!r} must be an integer of at least 1")
        stalls = dict.fromkeys(_STALLED_SIGNALS, stall) if not isinstance(stall, Mapping) else dict(stall)
        for name, probability in stalls.items():
            if name not in _STALLED_SIGNALS:
                raise ValueError(f"AXI4Memory: stall names {name!r}; stallable are {_STALLED_SIGNALS}")
            if not 0.0 <= probability < 1.0:
                raise ValueError(f"AXI4Memory: stall[{name!r}]={probability!r} must be in [0, 1)")
        self.bus = bus
        self.size = size
        self.bus_bytes = signature.data_width // 8
        self.read_latency = read_latency
        self.write_latency = write_latency
        self.max_outstanding = max_outstanding
        self.error_regions = [(int(lo), int(hi)) for lo, hi in error_regions]
        self.domain = domain
        self.stats = MemoryStats()
        self.mem = np.zeros(size, dtype=np.uint8)
        if data is not None:
            blob = np.frombuffer(bytes(data), dtype=np.uint8)
            if len(blob) > size:
                raise ValueError(f"AXI4Memory: initial data is {len(blob)} bytes, more than size={size}")
            self.mem[:len(blob)] = blob
        self._stall = {name: stalls.get(name, 0.0) for name in _STALLED_SIGNALS}
        self._rng = random.Random(seed)

    # -- contents -------------------------------------------------------------------------------

    def write_bytes(self, addr: int, blob) -> None:
        """Store ``blob`` at byte address ``addr`` (testbench-side, no bus traffic)."""
        blob = np.frombuffer(bytes(blob), dtype=np.uint8)
        if addr < 0 or addr + len(blob) > self.size:
            raise ValueError(f"AXI4Memory: bytes [{addr:#x}, {addr + len(blob):#x}) lie outside "
                             f"the {self.size:#x}-byte memory")
        self.mem[addr:addr + len(blob)] = blob

    def read_bytes(self, addr: int, length: int) -> bytes:
        """The ``length`` bytes at byte address ``addr``."""
        if addr < 0 or addr + length > self.size:
            raise ValueError(f"AXI4Memory: bytes [{addr:#x}, {addr + length:#x}) lie outside "
                             f"the {self.size:#x}-byte memory")
        return self.mem[addr:addr + length].tobytes()

    def add_to(self, sim) -> None:
        """Add the read and write processes to ``sim`` (an :class:`amaranth.sim.Simulator`)."""
        sim.add_process(self.read_process)
        sim.add_process(self.write_process)

    # -- protocol helpers -----------------------------------------------------------------------

    def _go(self, name: str) -> bool:
        probability = self._stall[name]
        return probability == 0.0 or self._rng.random() >= probability

    def _check_burst(self, channel: str, burst: _Burst):
        where = f"AXI4Memory: {channel} burst at {burst.addr:#x}"
        if burst.size > self.bus_bytes:
            raise AXIProtocolError(f"{where}: AxSIZE of {burst.size} bytes exceeds the "
                                   f"{self.bus_bytes}-byte bus")
        if burst.kind == _INCR:
            first_page = burst.addr // _BOUNDARY
            last_byte = (burst.addr // burst.size) * burst.size + burst.len * burst.size - 1
            if last_byte // _BOUNDARY != first_page:
                raise AXIProtocolError(f"{where} with {burst.len} beats of {burst.size} bytes crosses a "
                                       "4 KiB boundary")
        elif burst.kind == _WRAP:
            if burst.len not in (2, 4, 8, 16) or burst.addr % burst.size:
                raise AXIProtocolError(f"{where}: WRAP burst needs 2, 4, 8 or 16 beats and an aligned "
                                       f"address, not {burst.len} beats")
        elif burst.kind != _FIXED:
            raise AXIProtocolError(f"{where}: AxBURST={burst.kind} is reserved")
        elif burst.len > 16:
            raise AXIProtocolError(f"{where}: FIXED burst of {burst.len} beats (at most 16)")

    def _beat_lanes(self, burst: _Burst, beat: int) -> tuple[int, int, int]:
        """Byte address of the first valid lane, first lane index, and number of lanes of a beat."""
        size = burst.size
        aligned = (burst.addr // size) * size
        if burst.kind == _FIXED:
            addr = burst.addr
        elif burst.kind == _INCR:
            addr = burst.addr if beat == 0 else aligned + beat * size
        else:
            span = size * burst.len
            lower = (burst.addr // span) * span
            addr = lower + (burst.addr - lower + beat * size) % span
        beat_aligned = (addr // size) * size
        first_lane = addr % self.bus_bytes
        n_lanes = beat_aligned + size - addr
        return addr, first_lane, n_lanes

    def _response(self, addr: int, length: int) -> int:
        if addr + length > self.size:
            return DECERR
        for lo, hi in self.error_regions:
            if addr < hi and lo < addr + length:
                return SLVERR
        return OKAY

    # -- read channel ---------------------------------------------------------------------------

    def _read_beat(self, burst: _Burst, beat: int) -> tuple[int, int]:
        addr, lane, n = self._beat_lanes(burst, beat)
        resp = self._response(addr, n)
        if resp != OKAY:
            return 0, resp
        value = int.from_bytes(self.mem[addr:addr + n].tobytes(), "little")
        return value << (8 * lane), OKAY

    async def read_process(self, ctx) -> None:
        """Serve AR and R forever (add with ``sim.add_process``)."""
        bus = self.bus
        queue: deque[_Burst] = deque()
        cycle = 0
        arready = rvalid = False
        held_ar = None    # AR payload offered but not accepted at the last edge
        ctx.set(bus.arready, 0)
        ctx.set(bus.rvalid, 0)
        sampled = ctx.tick(self.domain).sample(
            bus.arvalid, bus.araddr, bus.arlen, bus.arsize, bus.arburst, bus.arid, bus.rready)
        async for _, _, arvalid, araddr, arlen, arsize, arburst, arid, rready in sampled:
            cycle += 1
            if arvalid:
                payload = (araddr, arlen, arsize, arburst, arid)
                if held_ar is not None and held_ar != payload:
                    raise AXIProtocolError(f"AXI4Memory: AR payload changed while ARVALID waited: "
                                           f"{held_ar} -> {payload}")
                if arready:
                    burst = _Burst(arid, araddr, arlen + 1, 1 << arsize, arburst,
                                   due=cycle + self.read_latency - 1)
                    self._check_burst("read", burst)
                    queue.append(burst)
                    self.stats.read_bursts += 1
                    self.stats.max_read_len = max(self.stats.max_read_len, burst.len)
                    self.stats.max_reads_in_flight = max(self.stats.max_reads_in_flight, len(queue))
                    held_ar = None
                else:
                    held_ar = payload
            elif held_ar is not None:
                raise AXIProtocolError("AXI4Memory: ARVALID fell before AR was accepted")

            if rvalid and rready:
                head = queue[0]
                head.beat += 1
                self.stats.read_beats += 1
                if head.beat == head.len:
                    queue.popleft()
                rvalid = False
                ctx.set(bus.rvalid, 0)

            if not rvalid and queue and queue[0].due <= cycle and self._go("rvalid"):
                head = queue[0]
                value, resp = self._read_beat(head, head.beat)
                ctx.set(bus.rdata, value)
                ctx.set(bus.rresp, resp)
                ctx.set(bus.rlast, head.beat == head.len - 1)
                ctx.set(bus.rid, head.id)
                ctx.set(bus.rvalid, 1)
                rvalid = True

            want_arready = len(queue) < self.max_outstanding and self._go("arready")
            if want_arready != arready:
                arready = want_arready
                ctx.set(bus.arready, arready)

    # -- write channel --------------------------------------------------------------------------

    def _write_burst(self, burst: _Burst, beats: list[tuple[int, int]]) -> int:
        lanes = [self._beat_lanes(burst, beat) for beat in range(burst.len)]
        resp = OKAY
        for addr, _, n in lanes:
            resp = max(resp, self._response(addr, n))
        if resp != OKAY:
            return resp
        full = (1 << self.bus_bytes) - 1
        for (addr, lane, n), (value, strb) in zip(lanes, beats, strict=True):
            raw = value.to_bytes(self.bus_bytes, "little")
            if strb == full and n == self.bus_bytes:
                self.mem[addr:addr + n] = np.frombuffer(raw, dtype=np.uint8)
                continue
            for i in range(n):
                if strb >> (lane + i) & 1:
                    self.mem[addr + i] = raw[lane + i]
        return OKAY

    async def write_process(self, ctx) -> None:
        """Serve AW, W and B forever (add with ``sim.add_process``)."""
        bus = self.bus
        addresses: deque[_Burst] = deque()        # accepted AW, data not complete
        data_bursts: deque[list] = deque()        # complete W bursts whose AW has not come yet
        current: list[tuple[int, int]] = []       # W beats of the burst being received
        responses: deque[_Burst] = deque()        # written bursts awaiting B
        cycle = 0
        awready = wready = bvalid = False
        held_aw = held_w = None
        ctx.set(bus.awready, 0)
        ctx.set(bus.wready, 0)
        ctx.set(bus.bvalid, 0)
        sampled = ctx.tick(self.domain).sample(
            bus.awvalid, bus.awaddr, bus.awlen, bus.awsize, bus.awburst, bus.awid,
            bus.wvalid, bus.wdata, bus.wstrb, bus.wlast, bus.bready)
        async for (_, _, awvalid, awaddr, awlen, awsize, awburst, awid,
                   wvalid, wdata, wstrb, wlast, bready) in sampled:
            cycle += 1
            if awvalid:
                payload = (awaddr, awlen, awsize, awburst, awid)
                if held_aw is not None and held_aw != payload:
                    raise AXIProtocolError(f"AXI4Memory: AW payload changed while AWVALID waited: "
                                           f"{held_aw} -> {payload}")
                if awready:
                    burst = _Burst(awid, awaddr, awlen + 1, 1 << awsize, awburst)
                    self._check_burst("write", burst)
                    addresses.append(burst)
                    self.stats.write_bursts += 1
                    self.stats.max_write_len = max(self.stats.max_write_len, burst.len)
                    held_aw = None
                else:
                    held_aw = payload
            elif held_aw is not None:
                raise AXIProtocolError("AXI4Memory: AWVALID fell before AW was accepted")

            if wvalid:
                payload = (wdata, wstrb, wlast)
                if held_w is not None and held_w != payload:
                    raise AXIProtocolError(f"AXI4Memory: W payload changed while WVALID waited: "
                                           f"{held_w} -> {payload}")
                if wready:
                    current.append((wdata, wstrb))
                    self.stats.write_beats += 1
                    held_w = None
                    if wlast:
                        data_bursts.append(current)
                        current = []
                else:
                    held_w = payload
            elif held_w is not None:
                raise AXIProtocolError("AXI4Memory: WVALID fell before W was accepted")

            # Pair complete data bursts with their addresses, in order.
            while addresses and data_bursts:
                burst, beats = addresses.popleft(), data_bursts.popleft()
                if len(beats) != burst.len:
                    raise AXIProtocolError(f"AXI4Memory: write burst at {burst.addr:#x} has AWLEN+1="
                                           f"{burst.len} beats but WLAST came on beat {len(beats)}")
                burst.beat = self._write_burst(burst, beats)   # the response code
                burst.due = cycle + self.write_latency - 1
                responses.append(burst)
            if addresses and len(current) > addresses[0].len:
                raise AXIProtocolError(f"AXI4Memory: write burst at {addresses[0].addr:#x} of "
                                       f"{addresses[0].len} beats got no WLAST on its last beat")
            in_flight = len(addresses) + len(responses)
            self.stats.max_writes_in_flight = max(self.stats.max_writes_in_flight, in_flight)

            if bvalid and bready:
                responses.popleft()
                bvalid = False
                ctx.set(bus.bvalid, 0)
            if not bvalid and responses and responses[0].due <= cycle and self._go("bvalid"):
                ctx.set(bus.bresp, responses[0].beat)
                ctx.set(bus.bid, responses[0].id)
                ctx.set(bus.bvalid, 1)
                bvalid = True

            want_awready = in_flight < self.max_outstanding and self._go("awready")
            if want_awready != awready:
                awready = want_awready
                ctx.set(bus.awready, awready)
            # Buffer at most a few bursts of data ahead of their addresses.
            want_wready = len(data_bursts) < self.max_outstanding and self._go("wready")
            if want_wready != wready:
                wready = want_wready
                ctx.set(bus.wready, wready)


class AXI4LiteDriver:
    """Single AXI4-Lite reads and writes from an Amaranth testbench.

    Parameters
    ----------
    ctx : SimulatorContext
        The testbench's context (``async def testbench(ctx)``).
    bus : interface of :class:`braze.hw.axi.AXI4LiteSignature`
        The slave's port, e.g. ``dut.s_axil``; the driver drives the manager's signals.
    stall : float
        Probability of holding back AWVALID, WVALID or ARVALID, and BREADY or RREADY, for a
        cycle; with a positive stall, AW and W are offered in random order and cycles.
    seed : int
        Seed of the stall pattern.
    timeout : int
        Cycles an access may take before :class:`AXIProtocolError` is raised.
    domain : str
        Clock domain of the bus.
    """

    def __init__(self, ctx, bus, *, stall: float = 0.0, seed: int = 0, timeout: int = 1000,
                 domain: str = "sync"):
        if not 0.0 <= stall < 1.0:
            raise ValueError(f"AXI4LiteDriver: stall={stall!r} must be in [0, 1)")
        self.ctx = ctx
        self.bus = bus
        self.stall = stall
        self.timeout = timeout
        self.domain = domain
        self.data_bytes = bus.signature.data_width // 8
        self._rng = random.Random(seed)
        for name in ("awvalid", "wvalid", "bready", "arvalid", "rready"):
            ctx.set(getattr(bus, name), 0)

    def _delay(self) -> int:
        delay = 0
        while self.stall and self._rng.random() < self.stall:
            delay += 1
        return delay

    def _go(self) -> bool:
        return not self.stall or self._rng.random() >= self.stall

    def _check(self, kind: str, addr: int, resp: int, expect: int | None):
        if expect is not None and resp != expect:
            raise AXIResponseError(f"AXI4-Lite {kind} at {addr:#x}: response {_RESP_NAMES[resp]}, "
                                   f"expected {_RESP_NAMES[expect]}")

    async def write(self, addr: int, value: int, *, strb: int | None = None,
                    expect: int | None = OKAY) -> int:
        """Write ``value`` at byte address ``addr``; returns the BRESP.

        ``strb`` defaults to all bytes.  Raises :class:`AXIResponseError` if the response is not
        ``expect`` (pass ``expect=None`` to accept any).
        """
        ctx, bus = self.ctx, self.bus
        ctx.set(bus.awaddr, addr)
        ctx.set(bus.awprot, 0)
        ctx.set(bus.wdata, value)
        ctx.set(bus.wstrb, (1 << self.data_bytes) - 1 if strb is None else strb)
        aw_at, w_at = self._delay(), self._delay()
        aw_done = w_done = False
        for cycle in range(self.timeout):
            ctx.set(bus.awvalid, not aw_done and cycle >= aw_at)
            ctx.set(bus.wvalid, not w_done and cycle >= w_at)
            ctx.set(bus.bready, self._go())
            sampled = ctx.tick(self.domain).sample(
                bus.awvalid, bus.awready, bus.wvalid, bus.wready, bus.bvalid, bus.bready, bus.bresp)
            _, _, awvalid, awready, wvalid, wready, bvalid, bready, bresp = await sampled
            aw_done |= bool(awvalid and awready)
            w_done |= bool(wvalid and wready)
            if bvalid and bready:
                if not (aw_done and w_done):
                    raise AXIProtocolError(f"AXI4-Lite write at {addr:#x}: BVALID before AW and W")
                ctx.set(bus.awvalid, 0)
                ctx.set(bus.wvalid, 0)
                ctx.set(bus.bready, 0)
                self._check("write", addr, bresp, expect)
                return bresp
        raise AXIProtocolError(f"AXI4-Lite write at {addr:#x}: no response in {self.timeout} cycles")

    async def read(self, addr: int, *, expect: int | None = OKAY) -> int:
        """Read the word at byte address ``addr``.

        Raises :class:`AXIResponseError` if the response is not ``expect`` (pass ``expect=None``
        to accept any; see :meth:`read_response` to get both).
        """
        value, _ = await self.read_response(addr, expect=expect)
        return value

    async def read_response(self, addr: int, *, expect: int | None = None) -> tuple[int, int]:
        """Read the word at byte address ``addr``; returns ``(RDATA, RRESP)``."""
        ctx, bus = self.ctx, self.bus
        ctx.set(bus.araddr, addr)
        ctx.set(bus.arprot, 0)
        ar_at = self._delay()
        ar_done = False
        for cycle in range(self.timeout):
            ctx.set(bus.arvalid, not ar_done and cycle >= ar_at)
            ctx.set(bus.rready, self._go())
            _, _, arvalid, arready, rvalid, rready, rdata, rresp = await ctx.tick(self.domain).sample(
                bus.arvalid, bus.arready, bus.rvalid, bus.rready, bus.rdata, bus.rresp)
            ar_done |= bool(arvalid and arready)
            if rvalid and rready:
                if not ar_done:
                    raise AXIProtocolError(f"AXI4-Lite read at {addr:#x}: RVALID before AR was accepted")
                ctx.set(bus.arvalid, 0)
                ctx.set(bus.rready, 0)
                self._check("read", addr, rresp, expect)
                return rdata, rresp
        raise AXIProtocolError(f"AXI4-Lite read at {addr:#x}: no response in {self.timeout} cycles")
