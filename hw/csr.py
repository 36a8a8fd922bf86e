"""The control/status register file, behind AXI4-Lite.

The register map is defined once, as data: :data:`REGISTERS`, a table of :class:`Register`
(name, byte offset, access, fields, doc).  :class:`CSRFile` builds its address decoder from
the table, :func:`register_map` turns it into the JSON-ready description the build manifest
and the drivers read, and nothing else writes an offset down.

Map
---
``0x000 ID``            constant :data:`MAGIC` (ASCII "BRZE", first letter in the top byte)
``0x004 VERSION``       register-map version, array rows and cols, DMA bus width in bytes
``0x008 GEOMETRY``      log2 of the scratchpad and accumulator rows
``0x010 CTRL``          start (write 1 to start; reads 0), irq_en_done, irq_en_error,
                        soft_reset (write 1 to request; reads 0)
``0x014 STATUS``        busy, done (write 1 to clear), error (write 1 to clear)
``0x018 ERROR_CAUSE``   :class:`braze.isa.ErrorCause` of the last error
``0x01C ERROR_PC``      byte address of the failing instruction
``0x020 PROG_BASE_LO``  program base address, bits 0..31
``0x024 PROG_BASE_HI``  program base address, bits 32..63
``0x028 CYCLE_LIMIT``   watchdog: a run stops with ``WATCHDOG`` after this many run cycles (0: no limit)
``0x02C RUN_CYCLES``    run cycles of the current (or last) run, as the watchdog counts them
``0x030 + 4*(i-1)``     ``SCALAR_R<i>`` for i = 1..7: scalar register r<i> (int32), the runtime
                        parameters a program reads; write between runs, read what a run left
``0x100 + 8*i``         ``COUNTER_<NAME>_LO`` of counter ``i`` of :data:`braze.isa.COUNTERS`
``0x104 + 8*i``         ``COUNTER_<NAME>_HI``; reading LO latches HI, so LO then HI is an atomic
                        64-bit read

Run cycles (the watchdog's clock) count the cycles of a run from the first cycle after
``CTRL.start`` up to the cycle in which the core stops on HALT or an error, exclusive; unlike the
``cycles`` counter they are never reset by a COUNTERS instruction.  See
:class:`braze.hw.control.Control` for the watchdog's exact rule.

Reads of unmapped addresses and writes to read-only registers get SLVERR.  Writing ``start``
also clears ``done``, ``error``, ``ERROR_CAUSE`` and ``ERROR_PC`` (a new run begins);
``soft_reset`` clears them too.  An event from the core in the same cycle wins over a clear.
"""

from __future__ import annotations

import dataclasses
import enum as py_enum
from collections.abc import Callable
from typing import Any

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from braze.isa import COUNTERS, Config, ErrorCause
from braze.isa.encoding import SCALAR_REGS

from .axi import AXI4LiteSignature, AXI4LiteSlave
from .control import SCALAR_FILE, SCALAR_WRITE

__all__ = [
    "Access", "Field", "Register", "REGISTERS", "REGISTER_BY_NAME", "MAGIC", "MAP_VERSION", "COUNTER_BASE",
    "CTRL_START_RUN", "CTRL_SOFT_RESET", "STATUS_DONE", "STATUS_ERROR",
    "counter_offsets", "register_map", "constant_value", "CSRFile",
]

#: Contents of ``ID``: ASCII "BRZE".
MAGIC = int.from_bytes(b"BRZE", "big")
#: Version of this register map, in ``VERSION.map_version``.
MAP_VERSION = 3
#: Byte offset of the first counter register.
COUNTER_BASE = 0x100
_WORD_BYTES = 4


class Access(py_enum.Enum):
    """How software may access a field."""

    RO = "ro"      # read only; writes to a register whose fields are all RO get SLVERR
    RW = "rw"      # read and write
    W1C = "w1c"    # reads the flag; writing 1 clears it
    W1P = "w1p"    # writing 1 makes a one-cycle pulse; reads 0


@dataclasses.dataclass(frozen=True)
class Field:
    """A bit field of a register.

    ``const`` gives the value of a constant field as a function of the configuration.
    """

    name: str
    lsb: int
    width: int
    access: Access
    doc: str
    const: Callable[[Config], int] | None = None

    @property
    def mask(self) -> int:
        return ((1 << self.width) - 1) << self.lsb


@dataclasses.dataclass(frozen=True)
class Register:
    """A 32-bit register at byte ``offset`` of the AXI4-Lite window."""

    name: str
    offset: int
    access: Access
    fields: tuple[Field, ...]
    doc: str

    def __post_init__(self):
        if self.offset % _WORD_BYTES:
            raise ValueError(f"register {self.name}: offset {self.offset:#x} is not word-aligned")
        all_ro = all(f.access is Access.RO for f in self.fields)
        if (self.access is Access.RO) != all_ro or self.access not in (Access.RO, Access.RW):
            raise ValueError(f"register {self.name}: access {self.access.value!r} disagrees with its fields")
        used = 0
        for f in self.fields:
            if f.lsb < 0 or f.width < 1 or f.lsb + f.width > 32 or used & f.mask:
                raise ValueError(f"register {self.name}: field {f.name} (bits {f.lsb}+{f.width}) "
                                 "overlaps another or leaves the 32-bit word")
            used |= f.mask

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"register {self.name} has no field {name!r}")


def _log2(value: int) -> int:
    return value.bit_length() - 1


def _ro(name, lsb, width, doc, const=None):
    return Field(name, lsb, width, Access.RO, doc, const)


def _counter_registers() -> tuple[Register, ...]:
    registers = []
    for index, spec in enumerate(COUNTERS):
        offset = COUNTER_BASE + 8 * index
        name = f"COUNTER_{spec.name.upper()}"
        registers.append(Register(f"{name}_LO", offset, Access.RO,
                                  (_ro("value", 0, 32, "bits 0..31 of the counter"),),
                                  f"{spec.doc} (bits 0..31; reading latches bits 32..63)"))
        registers.append(Register(f"{name}_HI", offset + 4, Access.RO,
                                  (_ro("value", 0, 32, "bits 32..63 of the counter"),),
                                  f"{spec.doc} (bits 32..63, as latched by the last read of {name}_LO)"))
    return tuple(registers)


REGISTERS: tuple[Register, ...] = (
    Register("ID", 0x000, Access.RO, (_ro("magic", 0, 32, 'ASCII "BRZE"', lambda c: MAGIC),),
             "identifies a Braze accelerator"),
    Register("VERSION", 0x004, Access.RO, (
        _ro("map_version", 0, 8, "version of this register map", lambda c: MAP_VERSION),
        _ro("rows", 8, 8, "systolic array rows", lambda c: c.rows),
        _ro("cols", 16, 8, "systolic array columns", lambda c: c.cols),
        _ro("bus_bytes", 24, 8, "AXI4 DMA data bus width in bytes", lambda c: c.dma_bus_bytes),
    ), "register-map version and the build's array and bus sizes"),
    Register("GEOMETRY", 0x008, Access.RO, (
        _ro("spad_rows_log2", 0, 8, "log2 of the scratchpad rows", lambda c: _log2(c.spad_rows)),
        _ro("acc_rows_log2", 8, 8, "log2 of the accumulator rows", lambda c: _log2(c.acc_rows)),
    ), "on-chip memory sizes of the build"),
    Register("CTRL", 0x010, Access.RW, (
        Field("start", 0, 1, Access.W1P, "write 1 to start the program at PROG_BASE; also clears "
                                         "STATUS.done, STATUS.error, ERROR_CAUSE and ERROR_PC"),
        Field("irq_en_done", 1, 1, Access.RW, "raise irq while STATUS.done is set"),
        Field("irq_en_error", 2, 1, Access.RW, "raise irq while STATUS.error is set"),
        Field("soft_reset", 3, 1, Access.W1P, "write 1 to reset the core (also clears STATUS.done, "
                                              "STATUS.error, ERROR_CAUSE and ERROR_PC)"),
    ), "control"),
    Register("STATUS", 0x014, Access.RW, (
        _ro("busy", 0, 1, "the core is running a program"),
        Field("done", 1, 1, Access.W1C, "the program halted; write 1 to clear"),
        Field("error", 2, 1, Access.W1C, "the program stopped with an error; write 1 to clear"),
    ), "status"),
    Register("ERROR_CAUSE", 0x018, Access.RO, (
        _ro("cause", 0, 4, "ErrorCause of the last error (0 when none)"),
    ), "why the last program stopped with an error"),
    Register("ERROR_PC", 0x01C, Access.RO, (_ro("pc", 0, 32, "byte address"),),
             "byte address of the instruction that failed"),
    Register("PROG_BASE_LO", 0x020, Access.RW,
             (Field("addr", 0, 32, Access.RW, "bits 0..31"),),
             "program base address, low word; must be 16-byte aligned (else FETCH_ERROR)"),
    Register("PROG_BASE_HI", 0x024, Access.RW,
             (Field("addr", 0, 32, Access.RW, "bits 32..63"),), "program base address, high word"),
    Register("CYCLE_LIMIT", 0x028, Access.RW,
             (Field("cycles", 0, 32, Access.RW, "run cycles a run may take (0: no limit)"),),
             "watchdog: a run still going after CYCLE_LIMIT run cycles stops with ERROR_CAUSE WATCHDOG"),
    Register("RUN_CYCLES", 0x02C, Access.RO, (_ro("cycles", 0, 32, "run cycles (saturating)"),),
             "run cycles of the current or last run: the watchdog's count, not reset by COUNTERS"),
) + tuple(
    Register(f"SCALAR_R{index}", 0x030 + 4 * (index - 1), Access.RW,
             (Field("value", 0, 32, Access.RW, f"r{index} (int32, two's complement)"),),
             f"scalar register r{index}: a runtime parameter the program reads (kept across runs; a run's "
             "SCALAR and PREDICATE instructions change it)")
    for index in range(1, SCALAR_REGS)
) + _counter_registers()

REGISTER_BY_NAME: dict[str, Register] = {reg.name: reg for reg in REGISTERS}
assert len(REGISTER_BY_NAME) == len(REGISTERS)
assert len({reg.offset for reg in REGISTERS}) == len(REGISTERS), "two registers share an offset"

_CTRL, _STATUS = REGISTER_BY_NAME["CTRL"], REGISTER_BY_NAME["STATUS"]
#: The CTRL word a driver writes to start a run with both interrupts (done, error) enabled.
CTRL_START_RUN = sum(_CTRL.field(name).mask for name in ("start", "irq_en_done", "irq_en_error"))
#: The CTRL word that stops whatever runs and leaves the core ready for the next run.
CTRL_SOFT_RESET = _CTRL.field("soft_reset").mask
#: STATUS bits: the last run halted / stopped with an error (write both back to clear them).
STATUS_DONE, STATUS_ERROR = _STATUS.field("done").mask, _STATUS.field("error").mask


def counter_offsets(index: int) -> tuple[int, int]:
    """Byte offsets of the LO and HI registers of counter ``index`` (a :class:`braze.isa.Counter`)."""
    if not 0 <= index < len(COUNTERS):
        raise ValueError(f"counter index {index} is outside 0..{len(COUNTERS) - 1}")
    return COUNTER_BASE + 8 * index, COUNTER_BASE + 8 * index + 4


def constant_value(register: Register, config: Config) -> int | None:
    """The value of a register whose fields are all constants, or ``None``."""
    if not register.fields or any(f.const is None for f in register.fields):
        return None
    value = 0
    for f in register.fields:
        field_value = f.const(config)
        if not 0 <= field_value < 1 << f.width:
            raise ValueError(f"{register.name}.{f.name} = {field_value} does not fit in {f.width} bits")
        value |= field_value << f.lsb
    return value


def register_map(config: Config) -> dict[str, Any]:
    """The register map as JSON-ready data (for the build manifest and drivers)."""
    registers = []
    for reg in REGISTERS:
        entry: dict[str, Any] = {
            "name": reg.name, "offset": reg.offset, "access": reg.access.value, "doc": reg.doc,
            "fields": [{"name": f.name, "lsb": f.lsb, "width": f.width, "access": f.access.value,
                        "doc": f.doc} for f in reg.fields],
        }
        value = constant_value(reg, config)
        if value is not None:
            entry["value"] = value
        registers.append(entry)
    return {
        "bus": "axi4-lite", "data_width": 32, "extent_bytes": _extent_bytes(),
        "counter_base": COUNTER_BASE, "registers": registers,
        "error_causes": {cause.name: cause.value for cause in ErrorCause},
    }


def _extent_bytes() -> int:
    return max(reg.offset for reg in REGISTERS) + _WORD_BYTES


def _addr_width_needed() -> int:
    return (_extent_bytes() - 1).bit_length()


class CSRFile(wiring.Component):
    """The control/status registers of one accelerator build, on an AXI4-Lite slave port.

    The decoder is generated from :data:`REGISTERS`; every field there is bound to a signal
    below (a missing binding fails elaboration).

    Parameters
    ----------
    config : Config
        The build; fills ``VERSION`` and ``GEOMETRY``.
    addr_width : int
        AXI4-Lite address width; the window must hold the whole map (default 12: 4 KiB).

    Members
    -------
    s_axil : In(AXI4LiteSignature(addr_width, 32))
        Host access.
    start : Out(1)
        One-cycle pulse, the cycle after the host writes ``CTRL.start`` = 1.
    soft_reset : Out(1)
        One-cycle pulse, the cycle after the host writes ``CTRL.soft_reset`` = 1.
    prog_base : Out(64)
        ``PROG_BASE_HI:PROG_BASE_LO``.
    cycle_limit : Out(32)
        ``CYCLE_LIMIT``.
    run_cycles : In(32)
        The core's run-cycle count, shown as ``RUN_CYCLES``.
    irq : Out(1)
        Level interrupt: ``done & irq_en_done | error & irq_en_error``.
    busy : In(1)
        The core is running; shown as ``STATUS.busy``.
    done_event, error_event : In(1)
        One-cycle pulses from the core; set ``STATUS.done`` / ``STATUS.error``.  An error event
        also latches ``error_cause`` and ``error_pc``.
    error_cause : In(ErrorCause)
    error_pc : In(32)
    counters : In(data.ArrayLayout(unsigned(64), len(COUNTERS)))
        The performance counters, in :data:`braze.isa.COUNTERS` order.
    scalar_regs : In(SCALAR_FILE)
        The control core's scalar registers, shown as ``SCALAR_R<i>``.
    scalar_write : Out(SCALAR_WRITE)
        A host write of ``SCALAR_R<i>`` (``en`` for one cycle), to the control core.
    """

    def __init__(self, config: Config, *, addr_width: int = 12):
        if not isinstance(config, Config):
            raise TypeError(f"CSRFile: config must be a braze.isa.Config, not {config!r}")
        needed = _addr_width_needed()
        if not isinstance(addr_width, int) or not needed <= addr_width <= 32:
            raise ValueError(f"CSRFile: addr_width={addr_width!r} must be from {needed} (the register "
                             "map's extent) to 32")
        self._config = config
        self._addr_width = addr_width
        super().__init__({
            "s_axil": In(AXI4LiteSignature(addr_width=addr_width, data_width=32)),
            "start": Out(1),
            "soft_reset": Out(1),
            "prog_base": Out(64),
            "cycle_limit": Out(32),
            "run_cycles": In(32),
            "irq": Out(1),
            "busy": In(1),
            "done_event": In(1),
            "error_event": In(1),
            "error_cause": In(ErrorCause),
            "error_pc": In(32),
            "counters": In(data.ArrayLayout(unsigned(64), len(COUNTERS))),
            "scalar_regs": In(SCALAR_FILE),
            "scalar_write": Out(SCALAR_WRITE),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.bridge = bridge = AXI4LiteSlave(addr_width=self._addr_width, data_width=32)
        wiring.connect(m, wiring.flipped(self.s_axil), bridge.s_axil)
        bus = bridge.bus

        irq_en_done = Signal()
        irq_en_error = Signal()
        done = Signal()
        error = Signal()
        cause = Signal(4)
        pc = Signal(32)
        prog_base = Signal(64)
        cycle_limit = Signal(32)
        hi_latch = Signal(32)
        hi_latched_index = Signal(range(len(COUNTERS)))

        # The signal behind every non-constant field, by (register, field).
        readable: dict[tuple[str, str], Any] = {
            ("CTRL", "irq_en_done"): irq_en_done, ("CTRL", "irq_en_error"): irq_en_error,
            ("STATUS", "busy"): self.busy, ("STATUS", "done"): done, ("STATUS", "error"): error,
            ("ERROR_CAUSE", "cause"): cause, ("ERROR_PC", "pc"): pc,
            ("PROG_BASE_LO", "addr"): prog_base[:32], ("PROG_BASE_HI", "addr"): prog_base[32:],
            ("CYCLE_LIMIT", "cycles"): cycle_limit, ("RUN_CYCLES", "cycles"): self.run_cycles,
        }
        # The scalar registers live in the control core: a write is passed on, not stored here.
        scalar_fields = {(f"SCALAR_R{index}", "value"): index for index in range(1, SCALAR_REGS)}
        for key, index in scalar_fields.items():
            readable[key] = self.scalar_regs[index]
        # With 32-bit counters (Config.counter_bits) the HI registers read 0: no latch, no read-out.
        wide_counters = self._config.counter_bits > 32
        for index, spec in enumerate(COUNTERS):
            name = f"COUNTER_{spec.name.upper()}"
            value = self.counters[index]
            readable[(f"{name}_LO", "value")] = value[:32]
            readable[(f"{name}_HI", "value")] = (Mux(hi_latched_index == index, hi_latch, value[32:])
                                                 if wide_counters else Const(0, 32))
        writable = {("CTRL", "irq_en_done"), ("CTRL", "irq_en_error"),
                    ("PROG_BASE_LO", "addr"), ("PROG_BASE_HI", "addr"), ("CYCLE_LIMIT", "cycles")}
        pulses = {("CTRL", "start"), ("CTRL", "soft_reset"), ("STATUS", "done"), ("STATUS", "error")}

        byte_mask = Cat(bit.replicate(8) for bit in bus.w_strb)
        written = Signal(32)  # bits the host writes as 1
        m.d.comb += written.eq(bus.w_data & byte_mask)

        fired: dict[tuple[str, str], Signal] = {}  # W1P/W1C bits written as 1 this cycle
        word_shift = _log2(_WORD_BYTES)
        with m.Switch(bus.addr):
            for reg in REGISTERS:
                with m.Case(reg.offset >> word_shift):
                    read_value = Const(0, 32)
                    for f in reg.fields:
                        key = (reg.name, f.name)
                        if f.const is not None:
                            source = Const(f.const(self._config), f.width)
                        elif f.access is Access.W1P:
                            source = Const(0, f.width)
                        elif key in readable:
                            source = readable[key]
                        else:
                            raise AssertionError(f"CSRFile: field {reg.name}.{f.name} has no signal")
                        read_value = read_value | (Value.cast(source) << f.lsb)
                        if f.access in (Access.W1P, Access.W1C):
                            if key not in pulses:
                                raise AssertionError(f"CSRFile: field {reg.name}.{f.name} has no pulse")
                            fired[key] = Signal(name=f"{reg.name.lower()}_{f.name}_fired")
                            m.d.comb += fired[key].eq(bus.w_stb & written[f.lsb])
                        elif f.access is Access.RW and key in scalar_fields:
                            keep = ~byte_mask[f.lsb:f.lsb + f.width]
                            current = Value.cast(readable[key]).as_unsigned()
                            with m.If(bus.w_stb):
                                m.d.comb += [
                                    self.scalar_write.en.eq(1),
                                    self.scalar_write.index.eq(scalar_fields[key]),
                                    self.scalar_write.value.eq(
                                        current & keep | written[f.lsb:f.lsb + f.width]),
                                ]
                        elif f.access is Access.RW:
                            if key not in writable:
                                raise AssertionError(f"CSRFile: field {reg.name}.{f.name} has no storage")
                            target = readable[key]
                            keep = ~byte_mask[f.lsb:f.lsb + f.width]
                            with m.If(bus.w_stb):
                                m.d.sync += target.eq(target & keep | written[f.lsb:f.lsb + f.width])
                    m.d.comb += bus.r_data.eq(read_value[:32])
                    if reg.access is Access.RO:
                        m.d.comb += bus.error.eq(bus.w_stb)
                    if wide_counters and reg.name.startswith("COUNTER_") and reg.name.endswith("_LO"):
                        index = (reg.offset - COUNTER_BASE) // 8
                        with m.If(bus.r_stb):
                            m.d.sync += [hi_latch.eq(self.counters[index][32:]), hi_latched_index.eq(index)]
            with m.Default():
                m.d.comb += bus.error.eq(1)

        def fired_now(key):
            return fired.get(key, Const(0))

        start = fired_now(("CTRL", "start"))
        soft_reset = fired_now(("CTRL", "soft_reset"))
        m.d.sync += [self.start.eq(start), self.soft_reset.eq(soft_reset)]
        new_run = start | soft_reset

        with m.If(self.done_event):
            m.d.sync += done.eq(1)
        with m.Elif(fired_now(("STATUS", "done")) | new_run):
            m.d.sync += done.eq(0)
        with m.If(self.error_event):
            m.d.sync += [error.eq(1), cause.eq(self.error_cause), pc.eq(self.error_pc)]
        with m.Elif(new_run):
            m.d.sync += [error.eq(0), cause.eq(ErrorCause.NONE), pc.eq(0)]
        with m.Elif(fired_now(("STATUS", "error"))):
            m.d.sync += error.eq(0)

        m.d.comb += [
            self.prog_base.eq(prog_base),
            self.cycle_limit.eq(cycle_limit),
            self.irq.eq(done & irq_en_done | error & irq_en_error),
        ]
        return m
