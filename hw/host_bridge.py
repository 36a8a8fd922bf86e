"""A register-access engine: one AXI4-Lite access per host request.

Used by co-simulation hosts (:mod:`braze.sim.harness`) and by the board's serial bridge
(:class:`~braze.hw.uart_bridge.SerialBridge`), which performs its register accesses through one.

A testbench that drives AXI4-Lite handshakes itself must wake up every clock cycle of every
access.  :class:`HostBridge` moves the handshakes into the design: the host sets ``write``,
``addr`` and ``wdata`` and toggles ``req``; the bridge performs the access and toggles ``ack``
to match when ``rdata``/``resp`` hold its result.  A host therefore wakes once per access, on
the edge of ``ack`` (toggles, not pulses, so that the host never has to lower a strobe on the
next cycle).
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .axi import AXI4LiteSignature

__all__ = ["HostBridge", "HostSignature"]


class HostSignature(wiring.Signature):
    """The host side of a :class:`HostBridge`, seen from the host.

    Parameters
    ----------
    addr_width : int
        Byte address width of the register window.
    """

    def __init__(self, addr_width: int):
        if not isinstance(addr_width, int) or not 3 <= addr_width <= 32:
            raise ValueError(f"HostSignature: addr_width={addr_width!r} must be an integer from 3 to 32")
        self.addr_width = addr_width
        super().__init__({
            "req": Out(1), "write": Out(1), "addr": Out(addr_width), "wdata": Out(32),
            "ack": In(1), "rdata": In(32), "resp": In(2),
        })


class HostBridge(wiring.Component):
    """Turns toggled host requests into AXI4-Lite accesses.

    Parameters
    ----------
    addr_width : int
        Byte address width of the AXI4-Lite register window.

    Attributes
    ----------
    host : In(HostSignature(addr_width))
        Requests: a new access starts when ``req`` differs from ``ack``; it reads (``write`` low)
        or writes ``wdata`` at ``addr``.  ``ack`` toggles to equal ``req`` when it is done, with
        the read data in ``rdata`` and the AXI response in ``resp``.
    m_axil : Out(AXI4LiteSignature(addr_width, 32))
        The register port it drives.
    """

    def __init__(self, addr_width: int = 12):
        super().__init__({
            "host": In(HostSignature(addr_width)),
            "m_axil": Out(AXI4LiteSignature(addr_width=addr_width, data_width=32)),
        })

    def elaborate(self, platform):
        m = Module()
        host, bus = self.host, self.m_axil
        address_done = Signal()     # the write's AW (and W) handshakes, which may come in any order
        data_done = Signal()
        m.d.comb += [bus.awaddr.eq(host.addr), bus.araddr.eq(host.addr), bus.wdata.eq(host.wdata),
                     bus.wstrb.eq(0xF)]
        with m.FSM():
            with m.State("IDLE"):
                with m.If(host.req != host.ack):
                    m.d.sync += [address_done.eq(0), data_done.eq(0)]
                    with m.If(host.write):
                        m.next = "WRITE"
                    with m.Else():
                        m.next = "READ"
            with m.State("WRITE"):
                m.d.comb += [bus.awvalid.eq(~address_done), bus.wvalid.eq(~data_done)]
                with m.If(bus.awvalid & bus.awready):
                    m.d.sync += address_done.eq(1)
                with m.If(bus.wvalid & bus.wready):
                    m.d.sync += data_done.eq(1)
                with m.If((address_done | bus.awready) & (data_done | bus.wready)):
                    m.next = "WRITE_RESPONSE"
            with m.State("WRITE_RESPONSE"):
                m.d.comb += bus.bready.eq(1)
                with m.If(bus.bvalid):
                    m.d.sync += [host.resp.eq(bus.bresp), host.ack.eq(host.req)]
                    m.next = "IDLE"
            with m.State("READ"):
                m.d.comb += bus.arvalid.eq(1)
                with m.If(bus.arready):
                    m.next = "READ_DATA"
            with m.State("READ_DATA"):
                m.d.comb += bus.rready.eq(1)
                with m.If(bus.rvalid):
                    m.d.sync += [host.rdata.eq(bus.rdata), host.resp.eq(bus.rresp), host.ack.eq(host.req)]
                    m.next = "IDLE"
        return m
