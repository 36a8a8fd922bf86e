"""Banked on-chip memories: the scratchpad and the accumulator.

Both are a :class:`BankedMemory`: ``depth`` rows of one row shape (a
:class:`~amaranth.lib.data.ArrayLayout`: ``cols`` int8 for the scratchpad,
``cols`` int32 for the accumulator), split into ``banks`` banks interleaved by
row address (bank = ``addr % banks``, row in bank = ``addr // banks``).  Each
bank is one :class:`amaranth.lib.memory.Memory` with one synchronous read
port and one write port, the shape of a simple dual-port block RAM, so per
bank and per cycle there is at most one read and one write; different banks
serve different ports in the same cycle.

Clients see four ports.  The *compute* read and write ports belong to the
compute unit, whose schedule is exact: they have no handshake and always win.
The *DMA* read and write ports have a ``ready`` handshake: a request is
accepted in a cycle where ``en`` and ``ready`` are both high, and ``ready`` is
low exactly when the compute port of the same direction uses the same bank in
that cycle, so the DMA client holds its request and retries.
"""

from __future__ import annotations

from collections.abc import Sequence

from amaranth.hdl import Array, Elaboratable, MemoryData, Module, Mux, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

__all__ = ["BankedMemory", "read_port_signature", "write_port_signature"]


def read_port_signature(addr_width: int, shape: data.ArrayLayout, *,
                        handshake: bool = False) -> wiring.Signature:
    """The signature of a read port, from the client's side.

    Members: ``addr`` and ``en`` (out: the request), ``data`` (in: the row read,
    valid the cycle after the request was accepted), ``valid`` (in: high in that
    cycle) and, with ``handshake``, ``ready`` (in: a request made in this cycle is
    accepted).
    """
    members = {
        "addr": Out(unsigned(addr_width)),
        "en": Out(1),
        "data": In(shape),
        "valid": In(1),
    }
    if handshake:
        members["ready"] = In(1)
    return wiring.Signature(members)


def write_port_signature(addr_width: int, shape: data.ArrayLayout, *,
                         handshake: bool = False) -> wiring.Signature:
    """The signature of a write port, from the client's side.

    Members: ``addr``, ``en``, ``data`` and ``mask`` (out: one bit per element
    of the row; elements whose bit is low keep their value; all ones unless
    driven) and, with ``handshake``, ``ready`` (in: a request made in this cycle
    is accepted; the row is written at the end of that cycle).
    """
    members = {
        "addr": Out(unsigned(addr_width)),
        "en": Out(1),
        "mask": Out(shape.length, init=(1 << shape.length) - 1),
        "data": Out(shape),
    }
    if handshake:
        members["ready"] = In(1)
    return wiring.Signature(members)


class BankedMemory(wiring.Component):
    """A row-addressed memory of ``depth`` rows in ``banks`` interleaved banks.

    Row ``addr`` lives in bank ``addr % banks`` at index ``addr // banks``.
    Every bank has one synchronous read port and one write port.  Reads return
    the row's value before any write in the same cycle (read-before-write).

    Parameters
    ----------
    shape : ArrayLayout
        Shape of one row, e.g. ``ArrayLayout(signed(8), cols)``.
    depth : int
        Number of rows; a positive multiple of ``banks``.
    banks : int
        Number of banks; a power of two.
    init : sequence of sequences of int, optional
        Initial rows, from row 0 (the rest are zero).
    side_read : bool, optional
        Give every bank a second read port, ``side_read`` (the scratchpad's, for the PREDICATE unit,
        which may read while a MATMUL reads ``compute_read``).
    weight_read : bool, optional
        Give every bank one more read port, ``weight_read`` (the scratchpad's with
        ``Config.weight_preload``: the MATMUL unit reads the next K-chunk's weights on it while it
        streams A rows on ``compute_read``).

    Attributes
    ----------
    compute_read : In(read_port_signature(addr_width, shape))
        Read port of the compute unit; never stalls.  ``data`` is valid the
        cycle after ``en`` (``valid`` high).
    compute_write : In(write_port_signature(addr_width, shape))
        Write port of the compute unit; never stalls.
    dma_read : In(read_port_signature(addr_width, shape, handshake=True))
        Read port of the DMA; ``ready`` is low when ``compute_read`` reads the
        same bank in this cycle.  ``data`` is valid the cycle after ``en`` and
        ``ready`` were both high.
    dma_write : In(write_port_signature(addr_width, shape, handshake=True))
        Write port of the DMA; ``ready`` is low when ``compute_write`` writes
        the same bank in this cycle.
    side_read : In(read_port_signature(addr_width, shape))
        With ``side_read``: a read port of its own on every bank; never stalls.
    weight_read : In(read_port_signature(addr_width, shape))
        With ``weight_read``: another read port of its own on every bank; never stalls.
    reads : Out(2), or Out(3) with ``weight_read``
        Rows read in this cycle (accepted requests of all read ports), for the
        performance counters.
    writes : Out(2)
        Rows written in this cycle (accepted requests of both write ports).
    """

    def __init__(self, *, shape: data.ArrayLayout, depth: int, banks: int,
                 init: Sequence[Sequence[int]] = (), side_read: bool = False, weight_read: bool = False):
        if not isinstance(shape, data.ArrayLayout):
            raise TypeError(f"BankedMemory shape must be a data.ArrayLayout (a row of elements), "
                            f"not {shape!r}")
        if not isinstance(banks, int) or banks <= 0 or banks & (banks - 1):
            raise ValueError(f"BankedMemory banks must be a positive power of two, not {banks!r}")
        if not isinstance(depth, int) or depth <= 0 or depth % banks:
            raise ValueError(f"BankedMemory depth must be a positive multiple of banks={banks}, "
                             f"not {depth!r}")
        if len(init) > depth:
            raise ValueError(f"BankedMemory init has {len(init)} rows, more than depth={depth}")
        self.shape = shape
        self.has_side_read = side_read
        self.has_weight_read = weight_read
        self.depth = depth
        self.banks = banks
        self.addr_width = ceil_log2(depth)
        self._bank_bits = exact_log2(banks)
        # The storage of each bank; the Memory components and their ports are
        # built in elaborate().  Kept here so that simulations can reach rows.
        self.bank_data = [
            MemoryData(shape=shape, depth=depth // banks, init=list(init[bank::banks]))
            for bank in range(banks)
        ]
        side = {"side_read": In(read_port_signature(self.addr_width, shape))} if side_read else {}
        if weight_read:
            side["weight_read"] = In(read_port_signature(self.addr_width, shape))
        super().__init__({
            **side,
            "compute_read": In(read_port_signature(self.addr_width, shape)),
            "compute_write": In(write_port_signature(self.addr_width, shape)),
            "dma_read": In(read_port_signature(self.addr_width, shape, handshake=True)),
            "dma_write": In(write_port_signature(self.addr_width, shape, handshake=True)),
            "reads": Out(3 if weight_read else 2),
            "writes": Out(2),
        })

    def storage_row(self, addr: int):
        """The stored row ``addr``, for ``ctx.get``/``ctx.set`` in a simulation."""
        if not 0 <= addr < self.depth:
            raise IndexError(f"row {addr} is outside the memory's {self.depth} rows")
        return self.bank_data[addr % self.banks][addr // self.banks]

    def _bank(self, addr):
        return addr[:self._bank_bits]

    def _index(self, addr):
        return addr[self._bank_bits:]

    def elaborate(self, platform) -> Elaboratable:
        m = Module()

        compute_read, dma_read = self.compute_read, self.dma_read
        compute_write, dma_write = self.compute_write, self.dma_write

        read_conflict = self._bank(compute_read.addr) == self._bank(dma_read.addr)
        write_conflict = self._bank(compute_write.addr) == self._bank(dma_write.addr)
        m.d.comb += [
            dma_read.ready.eq(~(compute_read.en & read_conflict)),
            dma_write.ready.eq(~(compute_write.en & write_conflict)),
        ]
        dma_read_go = dma_read.en & dma_read.ready
        dma_write_go = dma_write.en & dma_write.ready

        # Read ports of their own (never stalled): per name, the port and each bank's read data.
        own_ports = {name: (getattr(self, f"{name}_read"), []) for name, present in
                     (("side", self.has_side_read), ("weight", self.has_weight_read)) if present}
        read_data = []
        for bank, storage in enumerate(self.bank_data):
            memory = m.submodules[f"bank{bank}"] = Memory(data=storage)
            read_port = memory.read_port()
            write_port = memory.write_port(granularity=1)

            compute_reads_here = compute_read.en & (self._bank(compute_read.addr) == bank)
            dma_reads_here = dma_read_go & (self._bank(dma_read.addr) == bank)
            m.d.comb += [
                read_port.en.eq(compute_reads_here | dma_reads_here),
                read_port.addr.eq(Mux(compute_reads_here, self._index(compute_read.addr),
                                      self._index(dma_read.addr))),
            ]
            read_data.append(read_port.data.as_value())
            for port, bank_data in own_ports.values():
                own_read = memory.read_port()
                m.d.comb += [
                    own_read.en.eq(port.en & (self._bank(port.addr) == bank)),
                    own_read.addr.eq(self._index(port.addr)),
                ]
                bank_data.append(own_read.data.as_value())

            compute_writes_here = compute_write.en & (self._bank(compute_write.addr) == bank)
            dma_writes_here = dma_write_go & (self._bank(dma_write.addr) == bank)
            with m.If(compute_writes_here):
                m.d.comb += [
                    write_port.en.eq(compute_write.mask),
                    write_port.addr.eq(self._index(compute_write.addr)),
                    write_port.data.eq(compute_write.data),
                ]
            with m.Elif(dma_writes_here):
                m.d.comb += [
                    write_port.en.eq(dma_write.mask),
                    write_port.addr.eq(self._index(dma_write.addr)),
                    write_port.data.eq(dma_write.data),
                ]

        reads = compute_read.en + dma_read_go
        for port, _ in own_ports.values():
            reads = reads + port.en
        # Each read port's data comes from the bank it used in the previous cycle.
        read_data = Array(read_data)
        compute_bank = Signal(self._bank_bits)
        dma_bank = Signal(self._bank_bits)
        m.d.sync += [
            compute_bank.eq(self._bank(compute_read.addr)),
            dma_bank.eq(self._bank(dma_read.addr)),
            compute_read.valid.eq(compute_read.en),
            dma_read.valid.eq(dma_read_go),
        ]
        m.d.comb += [
            compute_read.data.eq(read_data[compute_bank]),
            dma_read.data.eq(read_data[dma_bank]),
            self.reads.eq(reads),
            self.writes.eq(compute_write.en + dma_write_go),
        ]
        for name, (port, bank_data) in own_ports.items():
            own_bank = Signal(self._bank_bits, name=f"{name}_bank")
            m.d.sync += [own_bank.eq(self._bank(port.addr)), port.valid.eq(port.en)]
            m.d.comb += port.data.eq(Array(bank_data)[own_bank])
        return m

