"""Verilog generation of one accelerator build, its manifest, lint and synthesis report.

:func:`build` writes, into an output directory:

``braze_<name>.v``
    The :class:`~braze.hw.top.Accelerator` of the configuration as one Verilog file, top module
    ``braze_<name>``, with conventional AXI port names (``m_axi_awaddr``, ``s_axil_araddr``),
    plus ``clk`` and ``rst`` (synchronous, active high).
``braze_<name>.json``
    The manifest: the configuration, the top name, every port with its direction and width,
    the register map (:func:`braze.hw.csr.register_map`), the performance counters and the
    Verilator waivers the lint used.
``braze_<name>_regs.h``, ``braze_<name>.svd``, ``braze_<name>.core``
    The register map as a C header and a CMSIS-SVD file, and a FuseSoC core file for the Verilog
    (:mod:`braze.hw.packaging`, all generated from the manifest).
``braze_<name>_synth.json`` (with ``synth``)
    Yosys resource counts (:func:`braze.hw.toolchain.synth_report`) and the synthesis time.

``braze rtl --config NAME -o DIR [--synth] [--lint/--no-lint]`` is the command-line front end.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path
from typing import Any

from amaranth.back import verilog
from amaranth.hdl import Shape

from braze.isa import COUNTERS, BrazeError, Config

from .axi import conventional_ports
from .csr import register_map
from .packaging import write_packaging
from .toolchain import VERILATOR_WAIVERS, synth_report, verilator_lint
from .top import Accelerator, top_name

__all__ = ["MANIFEST_VERSION", "RtlBuild", "build", "manifest", "ports_of", "verilog_ports", "synth_table"]

#: Version of the manifest's layout.
MANIFEST_VERSION = 1

#: The clock and reset Amaranth adds for the ``sync`` domain.
_DOMAIN_PORTS = ({"name": "clk", "direction": "input", "width": 1},
                 {"name": "rst", "direction": "input", "width": 1})


@dataclasses.dataclass(frozen=True)
class RtlBuild:
    """What :func:`build` wrote and measured."""

    verilog: Path
    manifest: Path
    packaging: dict[str, Path]
    synth: Path | None
    lint_output: str | None
    synth_report: dict[str, Any] | None
    seconds: dict[str, float]


def ports_of(top: Accelerator) -> list[dict[str, Any]]:
    """Every port of the generated top: ``clk``, ``rst``, then the signature's members in order."""
    ports = [dict(port) for port in _DOMAIN_PORTS]
    for name, (value, direction) in conventional_ports(top).items():
        ports.append({"name": name, "direction": "input" if direction.name == "Input" else "output",
                      "width": Shape.cast(value.shape()).width})
    return ports


def verilog_ports(text: str, top: str) -> list[dict[str, Any]]:
    """The ports of module ``top`` as declared in Verilog ``text`` (name, direction, width)."""
    found = re.search(rf"^module {re.escape(top)}\s*\(.*?^endmodule", text, re.M | re.S)
    if found is None:
        raise BrazeError(f"the generated Verilog has no module {top}")
    declaration = r"^\s*(input|output)\s+(?:wire\s+|reg\s+)?(?:\[(\d+):(\d+)\]\s*)?(\w+)\s*;"
    ports = []
    for direction, msb, lsb, name in re.findall(declaration, found.group(0), re.M):
        width = int(msb) - int(lsb) + 1 if msb else 1
        ports.append({"name": name, "direction": direction, "width": width})
    return ports


def manifest(config: Config, top: Accelerator) -> dict[str, Any]:
    """The build manifest (JSON-ready)."""
    return {
        "manifest_version": MANIFEST_VERSION,
        "top": top_name(config),
        "config": config.to_dict() | {"spad_rows": config.spad_rows, "acc_rows": config.acc_rows},
        "clock": {"port": "clk", "reset": "rst", "reset_kind": "synchronous, active high"},
        "ports": ports_of(top),
        "registers": register_map(config),
        "counters": [{"index": index, "name": spec.name, "exact": spec.exact, "doc": spec.doc}
                     for index, spec in enumerate(COUNTERS)],
        "verilator_waivers": dict(VERILATOR_WAIVERS),
    }


def _writable_dir(out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise BrazeError(f"cannot create output directory {out_dir}: {error.strerror}") from None
    if not out_dir.is_dir():
        raise BrazeError(f"output path {out_dir} is not a directory")
    return out_dir


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as error:
        raise BrazeError(f"cannot write {path}: {error.strerror}") from None


def build(config: Config, out_dir: Path | str, *, lint: bool = True, synth: bool = False) -> RtlBuild:
    """Generate the Verilog and manifest of ``config`` into ``out_dir``; lint and synthesize on request.

    Raises
    ------
    BrazeError
        For a bad configuration, an output directory that cannot be written, or a failing
        tool (:class:`~braze.hw.toolchain.ToolError`).
    """
    if not isinstance(config, Config):
        raise BrazeError(f"rtl: config must be a braze.isa.Config, not {config!r}")
    out_dir = _writable_dir(Path(out_dir))
    name = top_name(config)
    seconds: dict[str, float] = {}

    began = time.perf_counter()
    top = Accelerator(config)
    ports = conventional_ports(top)
    text = verilog.convert(top, name=name, ports=ports, emit_src=False)
    seconds["generate"] = time.perf_counter() - began
    verilog_path = out_dir / f"{name}.v"
    _write(verilog_path, text)
    manifest_path = out_dir / f"{name}.json"
    _write(manifest_path, json.dumps(manifest(config, top), indent=2) + "\n")
    try:
        packaging = write_packaging(manifest_path, verilog_path)
    except OSError as error:
        raise BrazeError(f"cannot write the packaging files in {out_dir}: {error.strerror}") from None

    lint_output = None
    if lint:
        began = time.perf_counter()
        lint_output = verilator_lint(verilog_path, name)
        seconds["lint"] = time.perf_counter() - began

    report = None
    synth_path = None
    if synth:
        began = time.perf_counter()
        report = synth_report(verilog_path, name)
        seconds["synth"] = time.perf_counter() - began
        report = {"top": name, "config": config.name, "seconds": round(seconds["synth"], 1)} | report
        synth_path = out_dir / f"{name}_synth.json"
        _write(synth_path, json.dumps(report, indent=2) + "\n")
    return RtlBuild(verilog_path, manifest_path, packaging, synth_path, lint_output, report, seconds)


def synth_table(report: dict[str, Any]) -> str:
    """A synthesis report as a small text table."""
    ice40 = report["ice40"]
    rows = [
        ("generic cells", report["generic"]["cells"]),
        ("iCE40 LUT4", ice40["luts"]),
        ("iCE40 carry", ice40["carries"]),
        ("iCE40 DFF", ice40["ffs"]),
        ("iCE40 SB_MAC16", ice40["dsps"]),
        ("iCE40 BRAM (SB_RAM40_4K)", ice40["brams"]),
        ("synthesis seconds", report.get("seconds", "")),
    ]
    width = max(len(label) for label, _ in rows)
    lines = [f"{report['top']}: resources"]
    lines += [f"  {label.ljust(width)}  {value:>10}" for label, value in rows]
    return "\n".join(lines)
