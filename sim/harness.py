"""The co-simulation top: the accelerator with its external memory.

:class:`Harness` puts an :class:`~braze.hw.top.Accelerator` and an :class:`~braze.sim.axi_ram.AXIRam`
(its ``m_axi`` on the RAM) in one design whose ports are the accelerator's AXI4-Lite register
port (or, with ``host_bridge``, a :class:`~braze.hw.host_bridge.HostBridge` in front of it),
``irq``, every counter, ``clk`` and ``rst``.  The host side (the cocotb server) loads programs and
data by writing the RAM's storage array in place, so loading memory costs no clock cycles.
:func:`harness_verilog` writes it as the Verilog module ``braze_<name>_harness``.
"""

from __future__ import annotations

from amaranth.back import verilog
from amaranth.hdl import unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from braze.hw.axi import AXI4LiteSignature, conventional_ports
from braze.hw.counters import COUNTER_BITS
from braze.hw.host_bridge import HostBridge, HostSignature
from braze.hw.top import AXIL_ADDR_WIDTH, Accelerator
from braze.isa import COUNTERS, Config

from .axi_ram import STORAGE_VERILOG, AXIRam

__all__ = ["Harness", "harness_name", "harness_options", "harness_verilog"]


def harness_name(config: Config) -> str:
    return f"braze_{config.name}_harness"


class Harness(wiring.Component):
    """An accelerator wired to an AXI4 RAM, for co-simulation.

    Parameters
    ----------
    config : Config
        The accelerator build.
    mem_bytes : int or None
        Bytes of external memory (a power of two); ``config.dram_bytes`` by default.
    read_latency : int or None
        The RAM's read latency in cycles; ``config.mem_latency`` by default, the latency the
        timing model assumes.
    stall : float or None
        Probability of random backpressure on each AXI handshake the RAM controls; None (the
        default) makes it a run-time input, the ``mem_stall`` port (probability ``mem_stall/256``).
    seed : int
        Seed of the backpressure pattern.
    storage : str
        ``"verilog"`` (for Verilator builds) or ``"memory"`` (for Amaranth's simulator).
    host_bridge : bool
        Reach the register port through a :class:`~braze.hw.host_bridge.HostBridge` (port
        ``host``), so that a host wakes once per register access instead of every cycle of its
        handshakes; otherwise the register port is the harness's ``s_axil``.

    Attributes
    ----------
    s_axil : In(AXI4LiteSignature(addr_width=12, data_width=32))
        Without ``host_bridge``: the accelerator's register port.
    host : In(HostSignature(12))
        With ``host_bridge``: register accesses, one per toggle of ``host.req``.
    irq : Out(1)
        The accelerator's interrupt.
    counters : Out(ArrayLayout(unsigned(64), len(COUNTERS)))
        Every performance counter's live value, as the register file sees it (observed without
        bus traffic, so reading it costs the host no simulated cycles).
    mem_stall : In(8)
        With ``stall=None``: the RAM's backpressure probability in 1/256 steps.
    """

    def __init__(self, config: Config, *, mem_bytes: int | None = None, read_latency: int | None = None,
                 stall: float | None = None, seed: int = 1, storage: str = "verilog",
                 host_bridge: bool = False):
        if not isinstance(config, Config):
            raise TypeError(f"Harness needs a braze.isa.Config, not {config!r}")
        self.config = config
        self.mem_bytes = config.dram_bytes if mem_bytes is None else mem_bytes
        size = self.mem_bytes
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0 or size & (size - 1):
            raise ValueError(f"Harness: mem_bytes={self.mem_bytes!r} must be a power of two")
        self.read_latency = config.mem_latency if read_latency is None else read_latency
        self.stall = stall
        self.seed = seed
        self.storage = storage
        self.host_bridge = bool(host_bridge)
        # Build the RAM now so that bad options fail here, not at elaboration.
        self.ram = AXIRam(size=self.mem_bytes, data_width=config.dma_bus_bits, read_latency=self.read_latency,
                          stall=stall or 0.0, stall_port=stall is None, seed=seed, storage=storage,
                          max_outstanding=32)
        members = {"host": In(HostSignature(AXIL_ADDR_WIDTH))} if self.host_bridge \
            else {"s_axil": In(AXI4LiteSignature(addr_width=AXIL_ADDR_WIDTH, data_width=32))}
        members["irq"] = Out(1)
        members["counters"] = Out(data.ArrayLayout(unsigned(COUNTER_BITS), len(COUNTERS)))
        if stall is None:
            members["mem_stall"] = In(8)
        super().__init__(members)

    def options(self) -> dict:
        """The harness options that change the generated design (for build cache keys)."""
        return harness_options(self.config, mem_bytes=self.mem_bytes, read_latency=self.read_latency,
                               stall=self.stall, seed=self.seed, storage=self.storage,
                               host_bridge=self.host_bridge)

    def elaborate(self, platform):
        from amaranth.hdl import Module

        m = Module()
        m.submodules.accelerator = accelerator = Accelerator(self.config)
        m.submodules.ram = self.ram
        wiring.connect(m, accelerator.m_axi, self.ram.s_axi)
        if self.host_bridge:
            m.submodules.host_bridge = bridge = HostBridge(AXIL_ADDR_WIDTH)
            wiring.connect(m, wiring.flipped(self.host), bridge.host)
            wiring.connect(m, bridge.m_axil, accelerator.s_axil)
        else:
            wiring.connect(m, wiring.flipped(self.s_axil), accelerator.s_axil)
        m.d.comb += [self.irq.eq(accelerator.irq), self.counters.eq(accelerator.counter_bank.values)]
        if self.stall is None:
            m.d.comb += self.ram.stall_threshold.eq(self.mem_stall)
        return m


def harness_options(config: Config, *, mem_bytes: int | None = None, read_latency: int | None = None,
                    stall: float | None = None, seed: int = 1, storage: str = "verilog",
                    host_bridge: bool = False) -> dict:
    """The options of a :class:`Harness` with its defaults filled in, without building one."""
    return {"mem_bytes": config.dram_bytes if mem_bytes is None else mem_bytes,
            "read_latency": config.mem_latency if read_latency is None else read_latency,
            "stall": stall, "seed": seed, "storage": storage, "host_bridge": bool(host_bridge)}


def harness_verilog(harness: Harness) -> str:
    """The harness as one Verilog text, top module :func:`harness_name`, storage module included."""
    text = verilog.convert(harness, name=harness_name(harness.config), ports=conventional_ports(harness),
                           emit_src=False)
    if harness.storage == "verilog":
        text += STORAGE_VERILOG
    return text
