"""The whole accelerator: the synthesizable top of one build."""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from braze.isa import COUNTERS, Config, Counter, ErrorCause, Memory, Opcode
from braze.isa.encoding import CONTROL_FLOW_OPCODES

from .axi import AXI4LiteSignature, AXI4ReadMaster, AXI4Signature, AXI4WriteMaster, ReadArbiter
from .control import Control
from .counters import CounterBank
from .csr import CSRFile
from .dma import ADDR_WIDTH, LoadEngine, StoreEngine
from .epilogue import EpilogueUnit
from .fetch import Fetch
from .matmul import MatmulUnit
from .memories import BankedMemory
from .predicate import PredicateUnit
from .vector import VectorUnit

__all__ = ["Accelerator", "AXIL_ADDR_WIDTH", "BEATS_WIDTH", "MAX_OUTSTANDING", "top_name"]

#: Byte address width of the AXI4-Lite register window (4 KiB).
AXIL_ADDR_WIDTH = 12
#: Width of the read/write masters' request ``beats`` fields.
BEATS_WIDTH = 16
#: AXI bursts each master keeps in flight: enough to cover the memory latency with one-beat rows.
MAX_OUTSTANDING = 32
#: ReadArbiter clients.
_FETCH_CLIENT, _LOAD_CLIENT = 0, 1


def top_name(config: Config) -> str:
    """The Verilog module name of a build: ``braze_<config.name>``."""
    return f"braze_{config.name}"


def _mux_by_enable(candidates: list[tuple], default) -> object:
    """The value of the first candidate ``(enable, value)`` whose enable is high, else ``default``."""
    result = default
    for enable, value in reversed(candidates):
        result = Mux(enable, value, result)
    return result


class Accelerator(wiring.Component):
    """A Braze accelerator: an int8 weight-stationary systolic array with its memories, DMA and control.

    This is the synthesizable top of one build (no simulation-only logic); :mod:`braze.hw.rtl`
    writes it as the Verilog module ``braze_<config.name>`` with conventional port names
    (``m_axi_awaddr``, ``s_axil_araddr``, ``irq``).

    Architecture
    ------------
    The host writes ``PROG_BASE`` and ``CTRL.start`` over ``s_axil`` (:class:`~braze.hw.csr.CSRFile`;
    register map: :data:`braze.hw.csr.REGISTERS`, also in the build manifest).  The fetch unit
    (:class:`~braze.hw.fetch.Fetch`) reads 128-bit instructions from external memory and feeds
    the control core (:class:`~braze.hw.control.Control`), which decodes and range-checks them
    and dispatches them in order to three decoupled units that synchronise with dependency
    tokens (see :mod:`braze.isa.encoding`):

    * **load** -- :class:`~braze.hw.dma.LoadEngine`: LOAD, external rows into the scratchpad or
      accumulator;
    * **compute** -- one of :class:`~braze.hw.matmul.MatmulUnit` (MATMUL on the
      ``rows x cols`` :class:`~braze.hw.pe_array.PEArray`), :class:`~braze.hw.epilogue.EpilogueUnit`
      (EPILOGUE and TABLE), :class:`~braze.hw.vector.VectorUnit` (VECTOR) and
      :class:`~braze.hw.predicate.PredicateUnit` (PREDICATE, whose result goes to the control
      core's scalar registers), routed by opcode; only one compute instruction runs at a time, so
      they share the memories' compute ports.  CONFIG, SCALAR and BRANCH run in the control core
      (a taken BRANCH redirects the fetch unit);
    * **store** -- :class:`~braze.hw.dma.StoreEngine`: STORE, and the write-out of COUNTERS
      snapshots from the :class:`~braze.hw.counters.CounterBank`.

    Fetch and load share one :class:`~braze.hw.axi.AXI4ReadMaster` through a
    :class:`~braze.hw.axi.ReadArbiter`; the store engine owns the
    :class:`~braze.hw.axi.AXI4WriteMaster`.  The two drive the read and write channels of
    ``m_axi``.

    Dataflow
    --------
    LOAD fills scratchpad rows (``cols`` int8, :class:`~braze.hw.memories.BankedMemory` with
    ``spad_banks`` banks) and accumulator rows (``cols`` int32, ``acc_banks`` banks).  MATMUL
    preloads ``rows`` B rows as weights per K-chunk, streams the A rows through the array and
    adds the results into accumulator rows.  EPILOGUE turns accumulator rows into int8 (or
    int32) rows with bias, requantization, residual and activation; VECTOR works element-wise
    on whole rows.  STORE writes rows back.  The DMA ports of the memories yield to the compute
    ports on a bank conflict.

    Status and counters
    -------------------
    ``STATUS`` shows busy/done/error, ``ERROR_CAUSE``/``ERROR_PC`` the first failure; ``irq``
    is a level interrupt (``CTRL.irq_en_*``).  ``CYCLE_LIMIT`` is a watchdog: a run still going
    after that many run cycles (``RUN_CYCLES``) stops with ``WATCHDOG``
    (:class:`~braze.hw.control.Control` defines the rule).  The performance counters of
    :data:`braze.isa.COUNTERS` count from ``CTRL.start`` (and from a COUNTERS instruction with
    ``reset``); they read over ``s_axil`` and are written to memory by COUNTERS.

    Parameters
    ----------
    config : Config
        The build.

    Attributes
    ----------
    m_axi : Out(AXI4Signature(addr_width=32, data_width=config.dma_bus_bits, id_width=1))
        Manager port to external memory: instruction fetch and DMA.
    s_axil : In(AXI4LiteSignature(addr_width=12, data_width=32))
        Register port.
    irq : Out(1)
        Interrupt, level-sensitive.
    counter_bank : CounterBank
        The performance counters (a submodule).  Not a port: a simulation harness may read
        ``counter_bank.values`` to observe every counter without bus traffic.
    """

    def __init__(self, config: Config):
        if not isinstance(config, Config):
            raise TypeError(f"Accelerator needs a braze.isa.Config, not {config!r}")
        self.config = config
        super().__init__({
            "m_axi": Out(AXI4Signature(addr_width=ADDR_WIDTH, data_width=config.dma_bus_bits, id_width=1)),
            "s_axil": In(AXI4LiteSignature(addr_width=AXIL_ADDR_WIDTH, data_width=32)),
            "irq": Out(1),
        })
        self.counter_bank = CounterBank(inc_width=16, counter_bits=config.counter_bits)

    def elaborate(self, platform):
        m = Module()
        config = self.config
        bus_bits = config.dma_bus_bits

        # --- Blocks. ------------------------------------------------------------------------------
        m.submodules.csr = csr = CSRFile(config, addr_width=AXIL_ADDR_WIDTH)
        m.submodules.control = control = Control(config)
        m.submodules.fetch = fetch = Fetch(config, beats_width=BEATS_WIDTH)
        m.submodules.read_master = read_master = AXI4ReadMaster(
            addr_width=ADDR_WIDTH, data_width=bus_bits, beats_width=BEATS_WIDTH,
            max_outstanding=MAX_OUTSTANDING)
        m.submodules.write_master = write_master = AXI4WriteMaster(
            addr_width=ADDR_WIDTH, data_width=bus_bits, beats_width=BEATS_WIDTH,
            max_outstanding=MAX_OUTSTANDING)
        m.submodules.read_arbiter = arbiter = ReadArbiter(
            n_clients=2, addr_width=ADDR_WIDTH, beats_width=BEATS_WIDTH, data_width=bus_bits,
            depth=MAX_OUTSTANDING)
        m.submodules.load = load = LoadEngine(config, beats_width=BEATS_WIDTH)
        m.submodules.store = store = StoreEngine(config, beats_width=BEATS_WIDTH)
        m.submodules.counter_bank = bank = self.counter_bank
        # The scratchpad's side read port is the PREDICATE unit's, which may run beside a MATMUL; with
        # weight preload the MATMUL unit reads B rows on a weight read port of its own.
        m.submodules.spad = spad = BankedMemory(shape=data.ArrayLayout(signed(8), config.cols),
                                                depth=config.spad_rows, banks=config.spad_banks,
                                                side_read=True, weight_read=bool(config.weight_preload))
        # With epilogue overlap the EPILOGUE unit reads the accumulator on a side read port of its own,
        # so that it can run beside a MATMUL (which reads and writes on the compute ports).
        m.submodules.acc = acc = BankedMemory(shape=data.ArrayLayout(signed(32), config.cols),
                                              depth=config.acc_rows,
                                              banks=config.acc_banks,
                                              side_read=bool(config.epilogue_overlap))
        m.submodules.matmul = matmul = MatmulUnit(config)
        m.submodules.epilogue = epilogue = EpilogueUnit(config)
        # Config.vector_unit=0: no VECTOR unit (the decoders reject VECTOR with ILLEGAL_OPCODE).
        vector = VectorUnit(config) if config.vector_unit else None
        if vector is not None:
            m.submodules.vector = vector
        m.submodules.predicate = predicate = PredicateUnit(config)

        # --- Host interface and run control. ------------------------------------------------------
        wiring.connect(m, wiring.flipped(self.s_axil), csr.s_axil)
        new_run = csr.start & ~control.running
        m.d.comb += [
            control.start.eq(csr.start),
            control.soft_reset.eq(csr.soft_reset),
            csr.busy.eq(control.running),
            csr.done_event.eq(control.done & control.running),
            csr.error_event.eq(control.error & control.running),
            csr.error_cause.eq(control.cause),
            csr.error_pc.eq(control.error_pc),
            self.irq.eq(csr.irq),
            fetch.start.eq(new_run),
            fetch.restart.eq(csr.soft_reset),
            fetch.stop.eq(control.done | control.error | ~control.running),
            fetch.prog_base.eq(csr.prog_base[:32]),
            control.prog_base.eq(csr.prog_base[:32]),
            control.cycle_limit.eq(csr.cycle_limit),
            csr.run_cycles.eq(control.run_cycles),
            control.scalar_write.eq(csr.scalar_write),
            csr.scalar_regs.eq(control.scalar_regs),
            fetch.redirect.eq(control.redirect),
            fetch.redirect_pc.eq(control.redirect_pc),
        ]
        if config.redirect_stage:
            m.d.comb += fetch.hold.eq(control.branch_executes)
        wiring.connect(m, fetch.fetch, control.fetch)

        # --- External bus: fetch and load share the read master; store owns the write master. ----
        wiring.connect(m, fetch.req, arbiter.req[_FETCH_CLIENT])
        wiring.connect(m, arbiter.data[_FETCH_CLIENT], fetch.data)
        wiring.connect(m, load.read_req, arbiter.req[_LOAD_CLIENT])
        wiring.connect(m, arbiter.data[_LOAD_CLIENT], load.read_data)
        wiring.connect(m, arbiter.m_req, read_master.req)
        wiring.connect(m, read_master.data, arbiter.m_data)
        wiring.connect(m, store.write_req, write_master.req)
        wiring.connect(m, store.write_data, write_master.data)
        wiring.connect(m, write_master.resp, store.write_resp)
        for path, member, value in self.m_axi.signature.flatten(self.m_axi):
            name = path[-1]
            source = read_master.m_axi if name.startswith(("ar", "r")) else write_master.m_axi
            if member.flow == Out:
                m.d.comb += value.eq(getattr(source, name))
            else:
                m.d.comb += getattr(source, name).eq(value)

        # --- Execution clients. -------------------------------------------------------------------
        wiring.connect(m, control.load.insn, load.insn)
        m.d.comb += [
            control.load.done.eq(load.done),
            control.load.error.eq(load.error),
            control.load.cause.eq(load.cause),
        ]
        wiring.connect(m, control.store.insn, store.insn)
        # COUNTERS: the bank freezes a snapshot and the store engine writes it out; both take
        # the instruction in the same cycle.
        counters_insn = control.counters.insn
        m.d.comb += [
            bank.snapshot.payload.reset.eq(counters_insn.payload.args.counters.reset),
            bank.snapshot.valid.eq(counters_insn.valid & store.counters.ready),
            store.counters.payload.eq(counters_insn.payload),
            store.counters.valid.eq(counters_insn.valid & bank.snapshot.ready),
            counters_insn.ready.eq(bank.snapshot.ready & store.counters.ready),
        ]
        wiring.connect(m, bank.words, store.snapshot)
        for port in (control.store, control.counters):
            m.d.comb += [port.done.eq(store.done), port.error.eq(store.error), port.cause.eq(store.cause)]

        # Compute: route by opcode; the units never fail (the decoder has range-checked).
        compute = control.compute
        opcode = compute.insn.payload.opcode
        # TABLE runs on the epilogue unit, which holds the activation table.
        epilogue_done = epilogue.done
        if config.epilogue_overlap:
            # An EPILOGUE beside the compute unit reports to the control core on its own (see Control).
            epilogue_done = epilogue.done & ~control.epilogue_beside
            m.d.comb += control.epilogue_done.eq(epilogue.done)
        units = tuple((unit_opcode, unit) for unit_opcode, unit in (
            (Opcode.MATMUL, matmul), (Opcode.EPILOGUE, epilogue), (Opcode.VECTOR, vector),
            (Opcode.TABLE, epilogue), (Opcode.PREDICATE, predicate)) if unit is not None)
        for unit in (unit for unit in (matmul, epilogue, vector, predicate) if unit is not None):
            its_opcodes = [opcode == unit_opcode for unit_opcode, other in units if other is unit]
            m.d.comb += [
                unit.insn.payload.eq(compute.insn.payload),
                unit.insn.valid.eq(compute.insn.valid & _any(its_opcodes)),
            ]
        compute_done = matmul.done | epilogue_done
        if vector is not None:
            compute_done = compute_done | vector.done
        m.d.comb += [
            compute.insn.ready.eq(_mux_by_enable(
                [(opcode == unit_opcode, unit.insn.ready) for unit_opcode, unit in units], 0)),
            compute.done.eq(compute_done),
            control.predicate_done.eq(predicate.done),
            control.predicate_value.eq(predicate.value),
            compute.error.eq(0),
            compute.cause.eq(ErrorCause.NONE),
        ]
        for unit in (unit for unit in (epilogue, vector) if unit is not None):
            m.d.comb += [
                unit.clip_lo.eq(control.config_regs.clip_lo),
                unit.clip_hi.eq(control.config_regs.clip_hi),
            ]
        m.d.comb += epilogue.out_zp.eq(control.config_regs.out_zp)

        # Memories: DMA ports to the engines, compute ports to whichever unit uses them.
        wiring.connect(m, load.spad_write, spad.dma_write)
        wiring.connect(m, load.acc_write, acc.dma_write)
        wiring.connect(m, store.spad_read, spad.dma_read)
        wiring.connect(m, store.acc_read, acc.dma_read)
        self._connect_compute_ports(m, spad, Memory.SPAD, matmul, epilogue, vector, None)
        m.d.comb += [
            spad.side_read.en.eq(predicate.spad_read.en),
            spad.side_read.addr.eq(predicate.spad_read.addr[:spad.addr_width]),
            predicate.spad_read.data.eq(spad.side_read.data),
        ]
        if config.weight_preload:
            wiring.connect(m, matmul.weight_read, spad.weight_read)
        if config.epilogue_overlap:
            self._connect_compute_ports(m, acc, Memory.ACC, matmul, None, vector, predicate,
                                        write_epilogue=epilogue)
            m.d.comb += [
                acc.side_read.en.eq(epilogue.acc_read.en),
                acc.side_read.addr.eq(epilogue.acc_read.addr[:acc.addr_width]),
                epilogue.acc_read.data.eq(acc.side_read.data),
            ]
        else:
            self._connect_compute_ports(m, acc, Memory.ACC, matmul, epilogue, vector, predicate)

        # --- Performance counters. ----------------------------------------------------------------
        m.d.comb += bank.clear.eq(new_run | csr.soft_reset)
        increments: dict[Counter, object] = {
            Counter.CYCLES: control.running,
            Counter.ARRAY_BUSY: matmul.busy,
            Counter.VECTOR_BUSY: (epilogue.busy | vector.busy) if vector is not None else epilogue.busy,
            Counter.MACS: matmul.macs,
            Counter.STALL_DEP: control.stall_dep,
            Counter.STALL_FETCH: control.stall_fetch,
            Counter.SPAD_READS: spad.reads,
            Counter.SPAD_WRITES: spad.writes,
            Counter.ACC_READS: acc.reads,
            Counter.ACC_WRITES: acc.writes,
        }
        for engine in (load, store):
            for name in engine.events.shape().members:
                counter = Counter[name.upper()]
                if counter not in increments:   # memory accesses come from the memories
                    increments[counter] = getattr(engine.events, name)
        for opcode_ in Opcode:
            if opcode_ in CONTROL_FLOW_OPCODES:
                continue
            increments[Counter[f"INSN_{opcode_.name}"]] = control.retired[opcode_.name.lower()]
        missing = [spec.name for spec in COUNTERS if Counter[spec.name.upper()] not in increments]
        assert not missing, f"counters without a source: {missing}"
        for counter, increment in increments.items():
            m.d.comb += bank.inc[counter].eq(increment)
        m.d.comb += csr.counters.eq(bank.values)
        return m

    @staticmethod
    def _connect_compute_ports(m: Module, memory: BankedMemory, which: Memory, matmul, epilogue, vector,
                               predicate, write_epilogue=None):
        """Drive a memory's compute ports from the compute unit that uses them this cycle.

        ``write_epilogue``: the EPILOGUE unit when it writes here but reads elsewhere (``epilogue`` None)."""
        addr_width = memory.addr_width
        ones = Const((1 << memory.shape.length) - 1, memory.shape.length)
        name = "spad" if which is Memory.SPAD else "acc"
        readers = [getattr(unit, f"{name}_read") for unit in (matmul, epilogue, vector, predicate)
                   if unit is not None]
        writers = [getattr(unit, f"{name}_write") for unit in (epilogue or write_epilogue, vector)
                   if unit is not None]
        if which is Memory.ACC:
            writers.insert(0, matmul.acc_write)
        read, write = memory.compute_read, memory.compute_write
        m.d.comb += [
            read.en.eq(_any(port.en for port in readers)),
            read.addr.eq(_mux_by_enable([(port.en, port.addr[:addr_width]) for port in readers], 0)),
            write.en.eq(_any(port.en for port in writers)),
            write.addr.eq(_mux_by_enable([(port.en, port.addr[:addr_width]) for port in writers], 0)),
            write.data.eq(_mux_by_enable([(port.en, port.data.as_value()) for port in writers], 0)),
        ]
        if which is Memory.ACC:
            m.d.comb += write.mask.eq(Mux(matmul.acc_write.en, matmul.acc_write.mask, ones))
        else:
            m.d.comb += write.mask.eq(ones)
        for port in readers:
            m.d.comb += port.data.eq(read.data)


def _any(values) -> object:
    result = Const(0, 1)
    for value in values:
        result = result | value
    return result
