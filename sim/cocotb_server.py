"""The cocotb test module a :class:`~braze.sim.verilator_device.VerilatorDevice` simulator runs.

Its one test, :func:`serve`, starts cocotb's C-level clock, resets the
:class:`~braze.sim.harness.Harness`, and then serves requests from the device over the
socket whose file descriptor is in ``$BRAZE_SERVER_FD``, until the device asks it to stop.
Waiting for a request blocks inside the test coroutine, so simulated time stands still
between requests; a run awaits the ``irq`` rising edge (or the cycle budget), so Python is
not woken every cycle while the accelerator works.

Protocol: each message is a 4-byte little-endian length and a pickled tuple.  Requests are
``("write", addr, data)``, ``("read", addr, nbytes)``, ``("run", base, max_cycles)``,
``("reg_read", offset)``, ``("reg_write", offset, value)``, ``("stall", threshold)`` (the
memory's backpressure, in 1/256 steps), ``("ping",)`` and ``("stop",)``;
replies are ``("ok", value)`` or ``("error", text)``.
"""

from __future__ import annotations

import os
import pickle
import socket
import struct
import traceback

import cocotb
from cocotb.clock import Clock
from cocotb.simtime import get_sim_time
from cocotb.triggers import ClockCycles, First, ReadOnly, RisingEdge, Timer

from braze.hw.csr import COUNTER_BASE, REGISTER_BY_NAME
from braze.isa import COUNTERS, ErrorCause

CLOCK_PERIOD_NS = 10
_HEADER = struct.Struct("<I")
_REG = {name: reg.offset for name, reg in REGISTER_BY_NAME.items()}
_CTRL_START, _CTRL_IRQ_DONE, _CTRL_IRQ_ERROR, _CTRL_SOFT_RESET = 1, 2, 4, 8
_STATUS_DONE, _STATUS_ERROR = 2, 4
_NO_DELAY = 3     # GPI set action: write now (what cocotb.handle.Immediate does)
#: The budget of a run that names none: long enough for any test program, short of forever.
DEFAULT_BUDGET = 1 << 40


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
    """Register access over AXI4-Lite and bulk memory access through VPI for one harness."""

    def __init__(self, dut):
        self.dut = dut
        self.clk = dut.clk
        mem = dut.ram.storage.mem
        self.word_bytes = len(mem[0]) // 8
        self.mem_bytes = len(mem) * self.word_bytes
        self._mem_handle = mem._handle
        self._words: dict[int, object] = {}
        self.stall_threshold = 0

    async def reset(self) -> None:
        dut = self.dut
        for name in ("awvalid", "wvalid", "bready", "arvalid", "rready", "awaddr", "wdata", "araddr",
                     "awprot", "arprot"):
            getattr(dut, f"s_axil_{name}").value = 0
        dut.s_axil_wstrb.value = 0xF
        dut.mem_stall.value = self.stall_threshold
        dut.rst.value = 1
        await ClockCycles(self.clk, 4)
        dut.rst.value = 0
        await RisingEdge(self.clk)

    async def _handshake(self, valid, ready) -> None:
        """Hold ``valid`` high until the edge at which ``ready`` is high too."""
        valid.value = 1
        while True:
            await ReadOnly()
            fired = bool(ready.value)
            await RisingEdge(self.clk)
            if fired:
                break
        valid.value = 0

    async def reg_write(self, offset: int, value: int) -> int:
        dut = self.dut
        dut.s_axil_awaddr.value = offset
        dut.s_axil_wdata.value = value
        # AW and W together: the slave takes them in any order.
        dut.s_axil_awvalid.value = 1
        dut.s_axil_wvalid.value = 1
        aw_done = w_done = False
        while not (aw_done and w_done):
            await ReadOnly()
            aw_fire = not aw_done and bool(dut.s_axil_awready.value)
            w_fire = not w_done and bool(dut.s_axil_wready.value)
            await RisingEdge(self.clk)
            if aw_fire:
                aw_done = True
                dut.s_axil_awvalid.value = 0
            if w_fire:
                w_done = True
                dut.s_axil_wvalid.value = 0
        dut.s_axil_bready.value = 1
        while True:
            await ReadOnly()
            if dut.s_axil_bvalid.value:
                resp = dut.s_axil_bresp.value.to_unsigned()
                await RisingEdge(self.clk)
                break
            await RisingEdge(self.clk)
        dut.s_axil_bready.value = 0
        return resp

    async def reg_read_response(self, offset: int) -> tuple[int, int]:
        dut = self.dut
        dut.s_axil_araddr.value = offset
        await self._handshake(dut.s_axil_arvalid, dut.s_axil_arready)
        dut.s_axil_rready.value = 1
        while True:
            await ReadOnly()
            if dut.s_axil_rvalid.value:
                value = dut.s_axil_rdata.value.to_unsigned()
                resp = dut.s_axil_rresp.value.to_unsigned()
                await RisingEdge(self.clk)
                break
            await RisingEdge(self.clk)
        dut.s_axil_rready.value = 0
        return value, resp

    async def reg_read(self, offset: int) -> int:
        value, resp = await self.reg_read_response(offset)
        if resp:
            raise RuntimeError(f"AXI4-Lite read of register 0x{offset:03x} answered with response {resp}")
        return value

    # --- Memory through VPI: no clock cycles. ---------------------------------------------------
    # cocotb's handle objects cost tens of microseconds per wide write; the raw GPI handles of
    # the array's words, with values as binary strings, cost a few.
    def _word(self, index: int):
        handle = self._words.get(index)
        if handle is None:
            handle = self._words[index] = self._mem_handle.get_handle_by_index(index)
        return handle

    def _check(self, addr: int, nbytes: int) -> None:
        if addr < 0 or nbytes < 0 or addr + nbytes > self.mem_bytes:
            raise ValueError(f"bytes 0x{addr:x}..0x{addr + nbytes:x} lie outside the "
                             f"{self.mem_bytes}-byte memory")

    def read_memory(self, addr: int, nbytes: int) -> bytes:
        self._check(addr, nbytes)
        if nbytes == 0:
            return b""
        size = self.word_bytes
        first, last = addr // size, (addr + nbytes - 1) // size
        word = self._word
        blob = b"".join(int(word(i).get_signal_val_binstr(), 2).to_bytes(size, "little")
                        for i in range(first, last + 1))
        start = addr - first * size
        return blob[start:start + nbytes]

    def write_memory(self, addr: int, payload: bytes) -> None:
        self._check(addr, len(payload))
        if not payload:
            return
        size = self.word_bytes
        first, last = addr // size, (addr + len(payload) - 1) // size
        start = addr - first * size
        end = start + len(payload)
        span = (last - first + 1) * size
        if start or end != span:    # partial words at the ends keep their other bytes
            blob = bytearray(self.read_memory(first * size, span))
            blob[start:end] = payload
        else:
            blob = payload
        word = self._word
        width = f"0{8 * size}b"
        for index in range(last - first + 1):
            value = int.from_bytes(blob[index * size:(index + 1) * size], "little")
            word(first + index).set_signal_val_binstr(_NO_DELAY, format(value, width))

    # --- Runs. ------------------------------------------------------------------------------------
    async def counters(self) -> dict[str, int]:
        values = {}
        for index, spec in enumerate(COUNTERS):
            low = await self.reg_read(COUNTER_BASE + 8 * index)      # latches the high word
            high = await self.reg_read(COUNTER_BASE + 8 * index + 4)
            values[spec.name] = high << 32 | low
        return values

    async def run(self, base: int, max_cycles: int | None) -> dict:
        budget = DEFAULT_BUDGET if max_cycles is None else max(1, int(max_cycles))
        await self.reg_write(_REG["PROG_BASE_LO"], base & 0xFFFF_FFFF)
        await self.reg_write(_REG["PROG_BASE_HI"], base >> 32)
        await self.reg_write(_REG["CTRL"], _CTRL_START | _CTRL_IRQ_DONE | _CTRL_IRQ_ERROR)
        # `irq` is low now: the start cleared done and error.
        started = get_sim_time("ns")
        timer = Timer(budget * CLOCK_PERIOD_NS, unit="ns")
        await First(RisingEdge(self.dut.irq), timer)
        sim_cycles = round((get_sim_time("ns") - started) / CLOCK_PERIOD_NS)
        # Back in step with the clock: the timer may have fired between edges.
        await RisingEdge(self.clk)
        status = await self.reg_read(_REG["STATUS"])
        finished = bool(status & (_STATUS_DONE | _STATUS_ERROR))
        cause = pc = None
        if status & _STATUS_ERROR:
            cause = await self.reg_read(_REG["ERROR_CAUSE"])
            pc = await self.reg_read(_REG["ERROR_PC"])
        counters = await self.counters()
        if finished:
            await self.reg_write(_REG["STATUS"], _STATUS_DONE | _STATUS_ERROR)
        else:
            # Over budget: stop the core so that the next run starts from a clean machine.  A soft
            # reset alone can leave AXI bursts in flight whose late beats the next run would take
            # for its own, so the whole harness is reset too (memory contents survive: the storage
            # array has no reset).
            await self.reg_write(_REG["CTRL"], _CTRL_SOFT_RESET)
            await ClockCycles(self.clk, 4)
            await self.reset()
        return {"cause": ErrorCause.NONE.value if cause is None else cause, "error_pc": pc,
                "timed_out": not finished, "counters": counters, "sim_cycles": sim_cycles}


@cocotb.test()
async def serve(dut):
    """Serve the device on ``$BRAZE_SERVER_FD`` until it sends ``stop`` or goes away."""
    sock = socket.socket(fileno=int(os.environ["BRAZE_SERVER_FD"]))
    Clock(dut.clk, CLOCK_PERIOD_NS, unit="ns").start()
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
            elif kind == "stall":
                (threshold,) = args
                if not 0 <= threshold < 256:
                    raise ValueError(f"stall threshold {threshold} is outside 0..255")
                driver.stall_threshold = dut.mem_stall.value = threshold
                result = None
            else:
                raise ValueError(f"unknown request {kind!r}")
        except Exception:   # report to the device; the simulator keeps serving
            send_message(sock, ("error", traceback.format_exc()))
            continue
        send_message(sock, ("ok", result))
