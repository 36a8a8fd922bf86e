"""The generated RTL in Verilator, hosted by cocotb, as a :class:`~braze.sim.device.Device`.

:class:`VerilatorDevice` builds (or finds in the cache, :mod:`braze.sim.build`) the Verilator
model of the configuration's :class:`~braze.sim.harness.Harness` and starts it once as a
long-lived process that runs :mod:`braze.sim.cocotb_server`.  Every device call is one request
over a socket pair, so a program run pays for no simulator start.  The simulator's time
advances only while a request is being served.

A simulator that dies, or that does not answer within ``timeout`` seconds, becomes a
:class:`SimulatorError` carrying the tail of its log; the caller never hangs, and the process is
reaped (no zombie).  The next request starts a fresh simulator whose memory is cleared, and
:attr:`~braze.sim.device.Device.memory_generation` counts up so that whoever left data in the
device's memory knows to load it again.  The process is
stopped on :meth:`~VerilatorDevice.close`, on context exit and at interpreter exit.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path

import numpy as np

from braze.hw.csr import REGISTER_BY_NAME
from braze.isa import BrazeError, Config, ErrorCause

from .build import BuildResult, build_harness
from .cocotb_server import MAX_STALL_SEED, receive_message, send_message
from .device import Device, RunStatus, int32_of

__all__ = ["VerilatorDevice", "SimulatorError", "simulator_env"]

_SERVER_MODULE = "braze.sim.cocotb_server"
_LOG_TAIL_BYTES = 3000
_POLL_SECONDS = 0.05
#: Seconds a simulator process may take to start (load Python, cocotb and the model) before it is
#: declared hung, whatever the per-request ``timeout``: a start is not a run, and on a loaded
#: machine it takes seconds.
START_TIMEOUT_S = 120.0
#: The part of a request's timeout a run may take: the rest is for the simulator to stop it and answer.
_RUN_WALL_FRACTION = 0.8


class SimulatorError(BrazeError):
    """The simulator process died, hung, or failed a request."""


def simulator_env(build: BuildResult, test_module: str,
                  extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment cocotb needs to run ``test_module`` in a build's executable.

    This is what :meth:`cocotb_tools.runner.Runner.test` sets up, for a process that we start
    ourselves so that it can outlive one call.
    """
    import cocotb_tools.config
    import find_libpython

    env = dict(os.environ)
    libpython = find_libpython.find_libpython()
    if libpython is None:
        raise SimulatorError("cannot find libpython, which cocotb needs to host Python in the simulator")
    env["GPI_USERS"] = f"{libpython};{cocotb_tools.config.pygpi_entry_point()}"
    env["PATH"] = f"{env.get('PATH', '')}{os.pathsep}{cocotb_tools.config.libs_dir}"
    env.update(build.library_env(env))
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    env["PYGPI_PYTHON_BIN"] = sys.executable
    env["COCOTB_TOPLEVEL"] = build.top
    env["COCOTB_TEST_MODULES"] = test_module
    env["TOPLEVEL_LANG"] = "verilog"
    env["COCOTB_TRUST_INERTIAL_WRITES"] = "1"
    env.setdefault("COCOTB_LOG_LEVEL", "WARNING")
    env.update(extra or {})
    return env


def _shutdown(process: subprocess.Popen, sock: socket.socket, grace: float) -> None:
    """Stop a simulator: ask politely, then terminate, then kill (also runs at interpreter exit)."""
    if process.poll() is None:
        try:
            send_message(sock, ("stop",))
        except OSError:
            pass
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    sock.close()
    for stop in (signal.SIGTERM, signal.SIGKILL):
        if process.poll() is not None:
            break
        try:
            os.killpg(process.pid, stop)
        except ProcessLookupError:
            break
        try:
            process.wait(2.0)
        except subprocess.TimeoutExpired:
            continue


class VerilatorDevice(Device):
    """The accelerator's generated Verilog in Verilator, behind the :class:`Device` interface.

    Parameters
    ----------
    config : Config
        The accelerator build.
    waves : bool
        Record a VCD waveform of the whole session into :attr:`waves_path` (complete once the
        device closes).  Uses a separate build with tracing compiled in.
    timeout : float
        Seconds to wait for the simulator's answer to any one request (a run included); starting
        the simulator process may take up to ``max(timeout, START_TIMEOUT_S)``.
    mem_bytes : int or None
        External memory size (a power of two); ``config.dram_bytes`` by default.
    stall : float
        Probability of random AXI backpressure from the memory (exercises stalls; changes timing);
        set at run time, so every level shares one build.  :meth:`set_stall` changes it later.
    waves_path : str or Path or None
        Where to write the waveform; a file in the device's work directory by default.
    """

    kind = "verilator"

    def __init__(self, config: Config, *, waves: bool = False, timeout: float = 300.0,
                 mem_bytes: int | None = None, stall: float = 0.0, waves_path: str | Path | None = None):
        super().__init__(config)
        if not isinstance(timeout, int | float) or timeout <= 0:
            raise ValueError(f"VerilatorDevice: timeout={timeout!r} must be a positive number of seconds")
        self.closed = False
        self.timeout = float(timeout)
        self.build = build_harness(config, waves=waves, mem_bytes=mem_bytes)
        self.workdir = Path(tempfile.mkdtemp(prefix=f"braze-verilator-{config.name}-"))
        self.log_path = self.workdir / "simulator.log"
        self.waves_path: Path | None = None
        self._args = [str(self.build.executable)]
        if waves:
            self.waves_path = Path(waves_path) if waves_path is not None else self.workdir / "waves.vcd"
            self._args += ["--trace", "--trace-file", str(self.waves_path)]
        # A device never closed still leaves no work directory behind: removed on garbage collection
        # or at interpreter exit, after the simulator's own finalizer (made later, so it runs first)
        # has stopped the process.  A waveform inside it is kept, as close() keeps it.
        keep = self.waves_path is not None and self.waves_path.is_relative_to(self.workdir)
        self._workdir_finalizer = weakref.finalize(self, shutil.rmtree, self.workdir, True) if not keep \
            else None
        self._stall_level = 0
        self._stall_seed: int | None = None
        self._start()
        #: Clock cycles from the start of the last run to its end (its interrupt or its budget); unlike
        #: the ``cycles`` counter, not restarted by a COUNTERS instruction with ``reset``.
        self.last_run_cycles = 0
        #: CPU seconds the simulator process spent on the last run (its clock cycles, not the requests).
        self.last_run_cpu_seconds = 0.0
        if stall:
            self.set_stall(stall)

    def _start(self) -> None:
        """Start a simulator process and wait for its hello (memory zeroed, backpressure as last set)."""
        ours, theirs = socket.socketpair()
        env = simulator_env(self.build, _SERVER_MODULE, {
            "BRAZE_SERVER_FD": str(theirs.fileno()),
            "COCOTB_RESULTS_FILE": str(self.workdir / "results.xml"),
        })
        started = time.perf_counter()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self._args, env=env, cwd=self.workdir, stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT, pass_fds=[theirs.fileno()],
                                            start_new_session=True)
        theirs.close()
        self._sock = ours
        # Runs on close(), on garbage collection, or at interpreter exit, whichever comes first.
        self._finalizer = weakref.finalize(self, _shutdown, self.process, ours, 5.0)
        try:
            hello = self._receive(max(self.timeout, START_TIMEOUT_S), "start")
            if self._stall_level:
                send_message(self._sock, ("stall", self._stall_level))
                self._receive(self.timeout, "restoring the memory backpressure")
            if self._stall_seed is not None:
                send_message(self._sock, ("stall_seed", self._stall_seed))
                self._receive(self.timeout, "restoring the backpressure seed")
        except BaseException:
            self._lose()
            raise
        self.mem_bytes = hello["mem_bytes"]
        self.start_seconds = time.perf_counter() - started

    # --- Plumbing. -------------------------------------------------------------------------------
    @property
    def memory_size(self) -> int:
        return self.mem_bytes if hasattr(self, "mem_bytes") else self.config.dram_bytes

    def log_tail(self) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - _LOG_TAIL_BYTES))
                return log.read().decode(errors="replace")
        except OSError:
            return "(no simulator log)"

    def _fail(self, what: str) -> SimulatorError:
        if not self._finalizer.alive and "fresh simulator" not in what:
            what += "; the next request starts a fresh simulator, with its memory cleared"
        return SimulatorError(f"verilator device ({self.build.top}): {what}\n"
                              f"--- simulator log ({self.log_path}), last lines ---\n{self.log_tail()}")

    def _receive(self, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while True:
            ready, _, _ = select.select([self._sock], [], [], _POLL_SECONDS)
            if ready:
                try:
                    status, value = receive_message(self._sock)
                except (ConnectionError, EOFError, OSError):
                    self.process.poll()
                    self._lose()
                    raise self._fail(f"the simulator process died or closed its connection during {what} "
                                     f"(exit status {self.process.returncode})") from None
                if status != "ok":
                    raise self._fail(f"the simulator failed {what}:\n{value}")
                return value
            if self.process.poll() is not None:
                self._lose()
                raise self._fail(f"the simulator process died during {what} "
                                 f"(exit status {self.process.returncode})")
            if time.monotonic() > deadline:
                self._kill()
                raise self._fail(f"no answer to {what} within {timeout:g} s; the simulator was stopped")

    def _lose(self) -> None:
        """Stop and reap a simulator that failed: its memory is lost (see ``memory_generation``)."""
        if self._finalizer.alive:
            self._finalizer()
            self.memory_generation += 1

    def _kill(self) -> None:
        """Stop a simulator that does not answer: no polite request, straight to SIGKILL."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5.0)
        self._lose()

    def _request(self, *message, what: str):
        if self.closed:
            raise BrazeError(f"verilator device ({self.build.top}) is closed")
        if not self._finalizer.alive:
            # The last simulator died, or was stopped, and that was reported; start afresh.
            self._start()
        elif self.process.poll() is not None:
            self._lose()
            raise self._fail(f"the simulator process died before {what} "
                             f"(exit status {self.process.returncode}); the next request starts a fresh "
                             f"simulator, with its memory cleared")
        try:
            send_message(self._sock, message)
        except OSError as error:
            self._lose()
            raise self._fail(f"the simulator process died or closed its connection: cannot send {what} "
                             f"({error})") from None
        return self._receive(self.timeout, what)

    # --- Device interface. -------------------------------------------------------------------------
    def write(self, addr: int, data: bytes | np.ndarray) -> None:
        payload = data.astype(data.dtype.newbyteorder("<")).tobytes() if isinstance(data, np.ndarray) \
            else bytes(data)
        self._check_span(addr, len(payload))
        self._request("write", addr, payload, what=f"a write of {len(payload)} bytes at 0x{addr:x}")

    def read(self, addr: int, nbytes: int) -> bytes:
        self._check_span(addr, nbytes)
        return self._request("read", addr, nbytes, what=f"a read of {nbytes} bytes at 0x{addr:x}")

    def read_register(self, offset: int) -> tuple[int, int]:
        """An AXI4-Lite register read: ``(value, resp)``."""
        return self._request("reg_read", offset, what=f"a read of register 0x{offset:x}")

    def write_register(self, offset: int, value: int) -> int:
        """An AXI4-Lite register write; returns the response code."""
        return self._request("reg_write", offset, value, what=f"a write of register 0x{offset:x}")

    def _write_scalar(self, register: int, bits: int) -> None:
        offset = REGISTER_BY_NAME[f"SCALAR_R{register}"].offset
        resp = self.write_register(offset, bits)
        if resp:
            raise SimulatorError(f"verilator device: the write of SCALAR_R{register} got AXI response {resp}")

    def read_scalar(self, register: int) -> int:
        value, resp = self.read_register(REGISTER_BY_NAME[f"SCALAR_R{register}"].offset)
        if resp:
            raise SimulatorError(f"verilator device: the read of SCALAR_R{register} got AXI response {resp}")
        return int32_of(value)

    @property
    def stall(self) -> float:
        """The memory's current backpressure: the probability that it stalls an AXI handshake."""
        return self._stall_level / 256

    def counters_over_bus(self) -> dict[str, int]:
        """Every counter read over AXI4-Lite, as driver software would (a run reads them off the harness)."""
        return self._request("counters_over_bus", what="reading the counters over AXI4-Lite")

    def set_stall(self, probability: float) -> None:
        """Random backpressure of the memory from now on: each handshake stalls with this probability."""
        if not isinstance(probability, int | float) or not 0.0 <= probability < 1.0:
            raise ValueError(f"VerilatorDevice: stall={probability!r} must be a probability in [0, 1)")
        level = round(probability * 256)
        self._request("stall", level, what="setting the memory backpressure")
        self._stall_level = level

    @property
    def stall_seed(self) -> int | None:
        """The seed of every run's backpressure pattern, or None (the pattern runs on from the last run)."""
        return self._stall_seed

    def set_stall_seed(self, seed: int | None) -> None:
        """Make every run from now on start with the memory's backpressure generator in the state
        ``seed`` names, so that a run's stall pattern, hence its cycle count, reproduces.

        The generator is an LFSR stepping every clock cycle since reset: with a seed, each run starts
        from a reset harness (memory contents survive) after ``seed`` idle cycles.  Two runs of one
        program under one seed take the same cycles; different seeds sample different patterns.
        None (the default) lets the pattern run on from wherever the process's earlier cycles left it.
        """
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)
                                 or not 0 <= seed < MAX_STALL_SEED):
            raise ValueError(f"VerilatorDevice: stall seed={seed!r} must be None or an integer in "
                             f"0..{MAX_STALL_SEED - 1}")
        self._request("stall_seed", seed, what="setting the backpressure seed")
        self._stall_seed = seed

    def ping(self) -> None:
        self._request("ping", what="a ping")

    def _execute(self, base: int, max_cycles: int | None, cycle_limit: int) -> RunStatus:
        # The simulator gives up on a run in time to answer before this device gives up on it.
        wall_seconds = _RUN_WALL_FRACTION * self.timeout
        result = self._request("run", base, max_cycles, cycle_limit, wall_seconds,
                               what=f"the run of the program at 0x{base:x}")
        counters = result["counters"]
        self.last_run_cycles = result["sim_cycles"]
        self.last_run_cpu_seconds = result["cpu_seconds"]
        cause = ErrorCause(result["cause"])
        detail = ""
        if result["out_of_time"]:
            detail = (f"stopped after {self.last_run_cycles} cycles and {wall_seconds:g} s of wall-clock "
                      f"time (the device's timeout is {self.timeout:g} s); give the run a cycle_limit")
        elif result["timed_out"]:
            detail = f"stopped after {self.last_run_cycles} cycles, over the budget of {max_cycles}"
        # The run's length in clock cycles, from the simulator's clock: the `cycles` counter
        # restarts at every COUNTERS instruction with `reset`.  A watchdog stop reports what the
        # watchdog counted (the limit), not the cycles its in-flight instructions took to complete.
        cycles = result["run_cycles"] if cause is ErrorCause.WATCHDOG else self.last_run_cycles
        return RunStatus(cause, result["error_pc"], cycles, counters,
                         timed_out=result["timed_out"], detail=detail)

    @property
    def pid(self) -> int:
        """Process id of the simulator."""
        return self.process.pid

    def close(self) -> None:
        """Stop the simulator (which completes the waveform file) and remove the work directory."""
        if getattr(self, "closed", True):
            return
        self.closed = True
        self._finalizer()
        if self._workdir_finalizer is not None:
            self._workdir_finalizer()

