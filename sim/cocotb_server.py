"""The cocotb test module a :class:`~braze.sim.verilator_device.VerilatorDevice` simulator runs.

Its one test, :func:`serve`, resets the :class:`~braze.sim.harness.Harness` (built with its host
bridge, on the clock of the C++ main :data:`braze.sim.build.HARNESS_MAIN`), and then serves
requests from the device over the socket whose file descriptor is in ``$BRAZE_SERVER_FD``, until
the device asks it to stop.  Waiting for a request blocks inside the test coroutine, so simulated
time stands still between requests.  Python never wakes per clock cycle: a register access awaits
the host bridge's acknowledgement, a run awaits the ``irq`` rising edge (or the cycle budget), the
counters are read from the harness's ``counters`` port, and memory moves by ``memcpy`` into the
RAM's storage array (``braze_storage`` of ``verilator_storage.cpp``).

Protocol: each message is a 4-byte little-endian length and a pickled tuple.  Requests are
``("write", addr, data)``, ``("read", addr, nbytes)``,
``("run", base, max_cycles, cycle_limit, wall_seconds)``,
``("reg_read", offset)``, ``("reg_write", offset, value)``, ``("counters_over_bus",)`` (every
counter read over AXI4-Lite, as driver software would), ``("stall", threshold)`` (the
memory's backpressure, in 1/256 steps), ``("stall_seed", seed or None)`` (runs start from a reset harness
``seed`` cycles after reset: a reproducible backpressure pattern), ``("ping",)`` and ``("stop",)``;
replies are ``("ok", value)`` or ``("error", text)``.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import socket
import struct
import time
import traceback

import cocotb
from cocotb.simtime import get_sim_time
from cocotb.triggers import ClockCycles, First, RisingEdge, Timer, ValueChange

from braze.hw.counters import COUNTER_BITS as _COUNTER_BITS
from braze.hw.csr import (
    COUNTER_BASE,
    CTRL_SOFT_RESET,
    CTRL_START_RUN,
    REGISTER_BY_NAME,
    STATUS_DONE,
    STATUS_ERROR,
)
from braze.isa import COUNTERS, ErrorCause

from .build import CLOCK_PERIOD_NS

_HEADER = struct.Struct("<I")
_REG = {name: reg.offset for name, reg in REGISTER_BY_NAME.items()}
_SCALAR_OFFSETS = [reg.offset for name, reg in REGISTER_BY_NAME.items() if name.startswith("SCALAR_R")]
#: The budget of a run that names none: long enough for any test program, short of forever.
DEFAULT_BUDGET = 1 << 40
#: Stall seeds are idle cycles after a reset: 0 .. MAX_STALL_SEED - 1.
MAX_STALL_SEED = 1 << 16
#: A run with a wall-clock budget waits for the interrupt in slices of about this many seconds (the
#: first of _FIRST_SLICE_CYCLES cycles), checking the budget in between.
_SLICE_SECONDS = 0.2
_FIRST_SLICE_CYCLES = 1 << 14


def send_message(sock: socket.socket, message) -> None:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(_HEADER.pack(len(payload)) + payload)


def _receive_exact(sock: socket.socket, nbytes: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < nbytes:
        chunk = sock.recv(min(nbytes - len(chunks), 1 << 20))
        if not chunk:
            raise ConnectionError("the peer closed the connection")
        chunks += chunk
    return bytes(chunks)


def receive_message(sock: socket.socket):
    (length,) = _HEADER.unpack(_receive_exact(sock, _HEADER.size))
    return pickle.loads(_receive_exact(sock, length))


class HarnessDriver:
    """Register access through the harness's host bridge and bulk memory access through C for one harness.

    The harness runs on the clock of its C++ main (:data:`braze.sim.build.HARNESS_MAIN`), so
    Python wakes only on what it awaits: a register access finishing (an edge of ``host_ack``),
    the interrupt, or a run's cycle budget.
    """

    def __init__(self, dut):
        self.dut = dut
        self.clk = dut.clk
        self._storage, self.mem_bytes, self.word_bytes = _storage()
        self._counters = dut.counters._handle
        self._req = 0
        self.stall_threshold = 0
        #: With a seed, every run starts from a reset harness after ``stall_seed`` idle cycles, so
        #: the memory's backpressure LFSR (free-running since reset) is in the same state at the
        #: start of every run seeded alike: the run's stall pattern, hence its cycles, reproduce.
        #: Without one (None) it starts wherever the process's earlier cycles left it.
        self.stall_seed: int | None = None

    async def reset(self) -> None:
        dut = self.dut
        self._req = 0
        for name in ("req", "write", "addr", "wdata"):
            getattr(dut, f"host_{name}").value = 0
        dut.mem_stall.value = self.stall_threshold
        dut.rst.value = 1
        await ClockCycles(self.clk, 4)
        dut.rst.value = 0
        await RisingEdge(self.clk)

    async def _access(self, write: bool, offset: int, value: int = 0) -> tuple[int, int]:
        """One AXI4-Lite access by the bridge: ``(read data, response)``."""
        dut = self.dut
        dut.host_write.value = int(write)
        dut.host_addr.value = offset
        dut.host_wdata.value = value
        self._req ^= 1
        dut.host_req.value = self._req
        await ValueChange(dut.host_ack)
        return dut.host_rdata.value.to_unsigned(), dut.host_resp.value.to_unsigned()

    async def reg_write(self, offset: int, value: int) -> int:
        return (await self._access(True, offset, value))[1]

    async def reg_read_response(self, offset: int) -> tuple[int, int]:
        return await self._access(False, offset)

    async def reg_read(self, offset: int) -> int:
        value, resp = await self.reg_read_response(offset)
        if resp:
            raise RuntimeError(f"AXI4-Lite read of register 0x{offset:03x} answered with response {resp}")
        return value

    # --- Memory: the storage array's bytes, in place; no clock cycles. ------------------------------
    def _check(self, addr: int, nbytes: int) -> None:
        if addr < 0 or nbytes < 0 or addr + nbytes > self.mem_bytes:
            raise ValueError(f"bytes 0x{addr:x}..0x{addr + nbytes:x} lie outside the "
                             f"{self.mem_bytes}-byte memory")

    def read_memory(self, addr: int, nbytes: int) -> bytes:
        self._check(addr, nbytes)
        return ctypes.string_at(self._storage + addr, nbytes)

    def write_memory(self, addr: int, payload: bytes) -> None:
        self._check(addr, len(payload))
        ctypes.memmove(self._storage + addr, payload, len(payload))

    # --- Runs. ------------------------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        """Every counter's live value, from the harness's ``counters`` port (no bus cycles)."""
        packed = int(self._counters.get_signal_val_binstr(), 2)
        mask = (1 << _COUNTER_BITS) - 1
        return {spec.name: packed >> (_COUNTER_BITS * index) & mask for index, spec in enumerate(COUNTERS)}

    async def counters_over_bus(self) -> dict[str, int]:
        """Every counter read over AXI4-Lite, as host software would (low word first: it latches the high)."""
        values = {}
        for index, spec in enumerate(COUNTERS):
            low = await self.reg_read(COUNTER_BASE + 8 * index)
            high = await self.reg_read(COUNTER_BASE + 8 * index + 4)
            values[spec.name] = high << 32 | low
        return values

    async def run(self, base: int, max_cycles: int | None, cycle_limit: int = 0,
                  wall_seconds: float | None = None) -> dict:
        """Run the program at ``base`` until the interrupt, ``max_cycles`` clock cycles, or
        ``wall_seconds`` of wall-clock time, whichever comes first; ``cycle_limit`` goes to the
        watchdog.  The wall-clock budget lets a run that will not end answer before the device
        gives up on the simulator."""
        budget = DEFAULT_BUDGET if max_cycles is None else max(1, int(max_cycles))
        deadline = None if wall_seconds is None else time.monotonic() + wall_seconds
        if self.stall_seed is not None:
            # The reset clears the host-written scalar registers too: they are read before and
            # written back after it (a fixed number of bus cycles, so the pattern still reproduces).
            scalars = [await self.reg_read(offset) for offset in _SCALAR_OFFSETS]
            await self.reset()
            for offset, value in zip(_SCALAR_OFFSETS, scalars, strict=True):
                await self.reg_write(offset, value)
            if self.stall_seed:
                await ClockCycles(self.clk, self.stall_seed)
        await self.reg_write(_REG["PROG_BASE_LO"], base & 0xFFFF_FFFF)
        await self.reg_write(_REG["PROG_BASE_HI"], base >> 32)
        await self.reg_write(_REG["CYCLE_LIMIT"], cycle_limit)
        await self.reg_write(_REG["CTRL"], CTRL_START_RUN)
        # `irq` is low now: the start cleared done and error.
        started = get_sim_time("ns")
        cpu_started = time.process_time()
        waited = 0
        out_of_time = False
        slice_cycles = budget if deadline is None else _FIRST_SLICE_CYCLES
        while not self.dut.irq.value and waited < budget:
            wall_started = time.monotonic()
            if deadline is not None and wall_started > deadline:
                out_of_time = True
                break
            await First(RisingEdge(self.dut.irq), Timer(min(slice_cycles, budget - waited) * CLOCK_PERIOD_NS,
                                                        unit="ns"))
            now = round((get_sim_time("ns") - started) / CLOCK_PERIOD_NS)
            if deadline is not None:
                # The next slice: about _SLICE_SECONDS at the speed of this one, and not past the deadline.
                rate = (now - waited) / max(time.monotonic() - wall_started, 1e-6)
                left = max(deadline - time.monotonic(), 0.0)
                slice_cycles = max(1, int(rate * min(_SLICE_SECONDS, left)))
            waited = now
        cpu_seconds = time.process_time() - cpu_started
        sim_cycles = round((get_sim_time("ns") - started) / CLOCK_PERIOD_NS)
        counters = self.counters()
        status = await self.reg_read(_REG["STATUS"])
        finished = bool(status & (STATUS_DONE | STATUS_ERROR))
        run_cycles = await self.reg_read(_REG["RUN_CYCLES"])
        cause = pc = None
        if status & STATUS_ERROR:
            cause = await self.reg_read(_REG["ERROR_CAUSE"])
            pc = await self.reg_read(_REG["ERROR_PC"])
        if finished:
            await self.reg_write(_REG["STATUS"], STATUS_DONE | STATUS_ERROR)
        else:
            # Over budget: stop the core so that the next run starts from a clean machine.  A soft
            # reset alone can leave AXI bursts in flight whose late beats the next run would take
            # for its own, so the whole harness is reset too (memory contents survive: the storage
            # array has no reset).
            await self.reg_write(_REG["CTRL"], CTRL_SOFT_RESET)
            await ClockCycles(self.clk, 4)
            await self.reset()
        return {"cause": ErrorCause.NONE.value if cause is None else cause, "error_pc": pc,
                "timed_out": not finished, "out_of_time": out_of_time and not finished, "counters": counters,
                "sim_cycles": sim_cycles, "run_cycles": run_cycles, "cpu_seconds": cpu_seconds}


def _storage() -> tuple[int, int, int]:
    """Address and size of the harness RAM's storage array, and its word size, from the C++ main."""
    find = ctypes.CDLL(None).braze_storage
    find.restype = ctypes.c_void_p
    find.argtypes = [ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_uint32),
                     ctypes.POINTER(ctypes.c_char_p)]
    nbytes, word_bytes, error = ctypes.c_uint64(), ctypes.c_uint32(), ctypes.c_char_p()
    address = find(ctypes.byref(nbytes), ctypes.byref(word_bytes), ctypes.byref(error))
    if not address:
        raise RuntimeError(f"no bulk access to the external memory: {error.value.decode()}")
    return address, nbytes.value, word_bytes.value


@cocotb.test()
async def serve(dut):
    """Serve the device on ``$BRAZE_SERVER_FD`` until it sends ``stop`` or goes away."""
    sock = socket.socket(fileno=int(os.environ["BRAZE_SERVER_FD"]))
    driver = HarnessDriver(dut)
    await driver.reset()
    send_message(sock, ("ok", {"mem_bytes": driver.mem_bytes, "word_bytes": driver.word_bytes}))
    while True:
        try:
            request = receive_message(sock)
        except (ConnectionError, EOFError, OSError):
            return      # the device is gone: end the simulation
        kind, *args = request
        try:
            if kind == "stop":
                send_message(sock, ("ok", None))
                return
            if kind == "ping":
                result = None
            elif kind == "write":
                driver.write_memory(*args)
                result = None
            elif kind == "read":
                result = driver.read_memory(*args)
            elif kind == "run":
                result = await driver.run(*args)
            elif kind == "reg_read":
                result = await driver.reg_read_response(*args)
            elif kind == "reg_write":
                result = await driver.reg_write(*args)
            elif kind == "counters_over_bus":
                result = await driver.counters_over_bus()
            elif kind == "stall":
                (threshold,) = args
                if not 0 <= threshold < 256:
                    raise ValueError(f"stall threshold {threshold} is outside 0..255")
                driver.stall_threshold = dut.mem_stall.value = threshold
                result = None
            elif kind == "stall_seed":
                (seed,) = args
                if seed is not None and not 0 <= seed < MAX_STALL_SEED:
                    raise ValueError(f"stall seed {seed} is outside 0..{MAX_STALL_SEED - 1}")
                driver.stall_seed = seed
                result = None
            else:
                raise ValueError(f"unknown request {kind!r}")
        except Exception:   # report to the device; the simulator keeps serving
            send_message(sock, ("error", traceback.format_exc()))
            continue
        send_message(sock, ("ok", result))
