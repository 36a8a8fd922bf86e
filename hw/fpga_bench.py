"""``braze bench fpga``: does each preset fit each FPGA target, how fast does it run, how long do tools take?

For every preset and target: the Verilog (:func:`braze.hw.rtl.build`), then synthesis, packing,
place and route and the bitstream (:func:`braze.hw.fpga.implement`; every step cached, so a
second run only reads the cache -- ``cached`` in the table says which).  Prints a table and ends
with ``fpga: default_ecp5_fmax_mhz=<x> default_ecp5_fits=<0|1> tiny_ice40_fits=<0|1>`` (``-`` where
this run did not measure it: a pair not run, or the Fmax of a design that does not fit).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from braze.isa import Config
from braze.isa.errors import ArgumentParser

from .fpga import TARGETS, implement, result_table, target
from .rtl import build

__all__ = ["main", "summary_line"]


def summary_line(reports: list[dict]) -> str:
    """The bench's last line, from the reports of its runs; ``-`` for what this run did not measure
    (a pair not run, or an Fmax of a design that does not fit), so that it never reads as a 0."""
    by_key = {(report["config"], report["target"]): report for report in reports}
    default = by_key.get(("default", "ecp5-85k"))
    tiny = by_key.get(("tiny", "ice40-up5k"))
    fmax = (f"{default['fmax_mhz']:.1f}" if default and default["fits"] and default["fmax_mhz"] is not None
            else "-")

    def fits(report: dict | None) -> str:
        return "-" if report is None else str(int(bool(report["fits"])))

    return (f"fpga: default_ecp5_fmax_mhz={fmax} default_ecp5_fits={fits(default)} "
            f"tiny_ice40_fits={fits(tiny)}")


def _table(reports: list[dict]) -> str:
    headers = ["preset", "target", "fits", "over", "LUT/LC", "FF", "DSP", "BRAM", "Fmax MHz", "target MHz",
               "synth s", "pack s", "pnr s", "cached"]
    rows = []
    for report in reports:
        resources = report["resources"]
        first = resources[0]
        dsp = next((r for r in resources if r["resource"].startswith("DSP")), None)
        bram = next((r for r in resources if r["resource"].startswith("BRAM")), None)
        over = ",".join(f"{r['resource'].split()[0]}x{r['used'] / r['available']:.1f}"
                        for r in resources if r["used"] > r["available"])
        ffs = next((r["used"] for r in resources if r["resource"] == "FF"), report["yosys_cells"]["ffs"])
        seconds = report["seconds"]
        rows.append([report["config"], report["target"], "yes" if report["fits"] else "no", over or "-",
                     f"{first['used']}/{first['available']}", str(ffs),
                     f"{dsp['used']}/{dsp['available']}" if dsp else "-",
                     f"{bram['used']}/{bram['available']}" if bram else "-",
                     f"{report['fmax_mhz']:.1f}" if report["fmax_mhz"] is not None else "-",
                     f"{report['target_mhz']:g}", f"{seconds['synth']:.0f}", f"{seconds['pack']:.0f}",
                     f"{seconds['pnr']:.0f}" if "pnr" in seconds else "-",
                     ",".join(step for step, hit in report["cached"].items() if hit) or "-"])
    cells = [headers] + rows
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in cells)


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="braze bench fpga", description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="tiny,default",
                        help="comma-separated presets or specs (default: tiny,default)")
    parser.add_argument("--targets", default="ice40-up5k,ecp5-85k",
                        help=f"comma-separated targets among {', '.join(TARGETS)} (default: all)")
    parser.add_argument("--pairs", help="instead of every preset on every target, these PRESET:TARGET pairs "
                                         "(e.g. tiny:ice40-up5k,default:ecp5-85k: the summary line's runs)")
    parser.add_argument("--output", type=Path, help="keep the runs' files here (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.pairs:
        pairs = []
        for item in args.pairs.split(","):
            preset, colon, name = item.strip().rpartition(":")
            if not colon or not preset:
                parser.error(f"argument --pairs: {item.strip()!r} is not PRESET:TARGET")
            pairs.append((Config.parse(preset), target(name)))
    else:
        configs = [Config.parse(name.strip()) for name in args.presets.split(",") if name.strip()]
        targets = [target(name.strip()) for name in args.targets.split(",") if name.strip()]
        pairs = [(config, spec) for config in configs for spec in targets]
    began = time.monotonic()
    reports = []
    with tempfile.TemporaryDirectory(prefix="braze-bench-fpga-") as scratch:
        root = args.output or Path(scratch)
        builds = {}
        for config, spec in pairs:
            if config.name not in builds:
                builds[config.name] = build(config, root / config.name, lint=False)
            rtl = builds[config.name]
            result = implement(rtl.verilog, rtl.manifest, spec.name, root / config.name)
            print(result_table(result.report), flush=True)
            reports.append(result.report)
    print()
    print(_table(reports))
    print(f"\n{len(reports)} runs in {(time.monotonic() - began) / 60:.1f} minutes")
    print(summary_line(reports))
    return 0
