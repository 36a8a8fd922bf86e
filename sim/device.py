"""One device interface over every back end.

The runtime, the verifier and the benchmarks talk to a :class:`Device`; the
back ends are the reference model (``golden``), Amaranth's simulator
(``amaranth``) and the generated RTL in Verilator hosted by cocotb
(``verilator``).  A device owns an external memory, runs programs that it
fetches from that memory, and reports the status and performance counters
the hardware's registers hold at the end of the run.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
from collections.abc import Callable, Sequence

import numpy as np

from braze.isa import (
    COUNTERS,
    BrazeError,
    Config,
    ErrorCause,
    ExecutionError,
    IllegalInstruction,
    Instruction,
    encode_program,
)
from braze.isa.counters import check_cycle_limit


def int32_of(bits: int) -> int:
    """The int32 a 32-bit register word holds (two's complement)."""
    return bits - (1 << 32) if bits >> 31 else bits


class ScalarShadow:
    """The host's copy of the scalar registers, for a back end that writes them over its register bus.

    Writes wait here until the next run starts (the back end sends :meth:`take_writes` then);
    after a run the back end reads the registers back into it with :meth:`read_back`, since a
    run's SCALAR and PREDICATE instructions change them.
    """

    def __init__(self, count: int):
        self._values = [0] * count
        self._pending: list[tuple[int, int]] = []

    def write(self, register: int, bits: int) -> None:
        self._pending.append((register, bits))
        self._values[register] = int32_of(bits)

    def read(self, register: int) -> int:
        return self._values[register]

    def take_writes(self) -> list[tuple[int, int]]:
        """The ``(register, bits)`` writes since the last run, in order; they are no longer pending."""
        writes, self._pending = self._pending, []
        return writes

    def read_back(self, register: int, bits: int) -> None:
        self._values[register] = int32_of(bits)


@dataclasses.dataclass(frozen=True)
class RunStatus:
    """What a device reports after a run.

    Attributes
    ----------
    cause : ErrorCause
        ``ErrorCause.NONE`` when the program reached HALT.
    error_pc : int or None
        External byte address of the instruction that stopped the machine.
    cycles : int
        Clock cycles of the run (the golden device reports its timing model's).  When the
        watchdog stopped the run (cause ``WATCHDOG``): the run cycles it counted, which is the
        cycle limit on every back end.
    counters : dict[str, int]
        Every performance counter at the end of the run, by name.
    timed_out : bool
        The run did not halt within its cycle budget (and was stopped).
    detail : str
        The back end's own words about an error.
    """

    cause: ErrorCause
    error_pc: int | None
    cycles: int
    counters: dict[str, int]
    timed_out: bool = False
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.cause is ErrorCause.NONE and not self.timed_out


class DeviceError(BrazeError):
    """A run stopped with an error cause; ``status`` holds what the device reported."""

    def __init__(self, device: str, status: RunStatus):
        self.status = status
        where = f" at pc 0x{status.error_pc:x}" if status.error_pc is not None else ""
        detail = f": {status.detail}" if status.detail else ""
        what = "did not halt within its cycle budget" if status.timed_out \
            else f"stopped with {status.cause.name.lower()}{where}"
        super().__init__(f"{device} device {what}{detail}")


class Device(abc.ABC):
    """A Braze accelerator with its external memory.

    Use it as a context manager, or call :meth:`close`, so that back ends
    holding a simulator process shut it down.

    Attributes
    ----------
    memory_generation : int
        How many times the device lost its memory contents (a simulator that died and was
        replaced, say).  Whoever keeps data in the device's memory across runs compares it with
        the value it saw when it wrote, and writes again when it changed.
    run_count : int
        How many runs (:meth:`run`) the device has started.  Whoever keeps data in its on-chip
        memories across runs compares it with the count after its own last run: any other run
        may have overwritten them.
    """

    #: Back-end name: ``golden``, ``amaranth`` or ``verilator``.
    kind: str = "abstract"

    def __init__(self, config: Config):
        if not isinstance(config, Config):
            raise TypeError(f"config must be a braze.Config, not {config!r}")
        self.config = config
        self.memory_generation = 0
        self.run_count = 0

    @property
    def memory_size(self) -> int:
        return self.config.dram_bytes

    def _check_span(self, addr: int, nbytes: int) -> None:
        if addr < 0 or nbytes < 0 or addr + nbytes > self.memory_size:
            raise BrazeError(f"{self.kind} device: bytes 0x{addr:x}..0x{addr + nbytes:x} lie outside "
                             f"its {self.memory_size}-byte external memory")

    @abc.abstractmethod
    def write(self, addr: int, data: bytes | np.ndarray) -> None:
        """Write bytes (or an array's raw little-endian bytes) to external memory."""

    @abc.abstractmethod
    def read(self, addr: int, nbytes: int) -> bytes:
        """Read bytes of external memory."""

    @abc.abstractmethod
    def _execute(self, base: int, max_cycles: int | None, cycle_limit: int) -> RunStatus:
        """Run the program already in memory at ``base`` until it halts or fails.

        ``cycle_limit`` (0: none) goes to the hardware's watchdog, ``max_cycles`` bounds the host's wait.
        """

    def run(self, program: bytes | Sequence[Instruction] | None = None, *, base: int = 0,
            max_cycles: int | None = None, cycle_limit: int | None = None, check: bool = True) -> RunStatus:
        """Write ``program`` at ``base`` (unless None), run it, and return the status.

        With ``check`` (the default) an error status raises :class:`DeviceError`.

        ``cycle_limit`` is the accelerator's watchdog (its ``CYCLE_LIMIT`` register; None or 0:
        none): a run that has not halted after that many run cycles stops with cause
        ``WATCHDOG``, at the same cycle on every back end (the golden device on its timing
        model's clock; see :mod:`braze.isa.model`).  ``max_cycles`` is the host's budget: a run
        not finished after that many clock cycles is stopped and reported ``timed_out``.  Either
        way a run is an error, never a hang.
        """
        cycle_limit = check_cycle_limit(cycle_limit)
        self.run_count += 1
        if program is not None:
            blob = program if isinstance(program, bytes | bytearray) else encode_program(list(program))
            self.write(base, bytes(blob))
        status = self._execute(base, max_cycles, cycle_limit)
        if check and not status.ok:
            raise DeviceError(self.kind, status)
        return status

    def write_scalar(self, register: int, value: int) -> None:
        """Set scalar register ``register`` (1..7) to the int32 ``value`` before a run: a runtime parameter.

        The registers keep their values across runs (a run's SCALAR and PREDICATE instructions
        change them).  A bad register or value raises :class:`~braze.isa.model.ScalarRegisterError`.
        """
        from braze.isa.model import check_scalar_write

        check_scalar_write(register, value)
        self._write_scalar(register, value & 0xFFFF_FFFF)

    def _write_scalar(self, register: int, bits: int) -> None:
        """Write the 32 bits of a checked value to scalar register ``register`` (its ``SCALAR_R`` CSR)."""
        raise BrazeError(f"{self.kind} device: scalar registers (runtime parameters) are not implemented "
                         "by this back end")

    def read_scalar(self, register: int) -> int:
        """The int32 value of scalar register ``register`` (1..7), as the last run (or write) left it."""
        raise BrazeError(f"{self.kind} device: scalar registers are not implemented by this back end")

    def read_array(self, addr: int, shape: tuple[int, ...], dtype: np.dtype | str) -> np.ndarray:
        dtype = np.dtype(dtype).newbyteorder("<")
        count = int(np.prod(shape))
        return np.frombuffer(self.read(addr, count * dtype.itemsize), dtype=dtype).reshape(shape).copy()

    def close(self) -> None:
        """Release the back end's resources (a simulator process, say)."""
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class GoldenDevice(Device):
    """The bit-exact reference model (:class:`braze.isa.model.Machine`) as a device.

    Cycle counts and timing counters are the analytical timing model's
    prediction; exact counters are exact.
    """

    kind = "golden"

    def __init__(self, config: Config, *, race_check: bool = True):
        super().__init__(config)
        from braze.isa.model import Machine

        self.machine = Machine(config, race_check=race_check)

    def write(self, addr: int, data: bytes | np.ndarray) -> None:
        if isinstance(data, np.ndarray):
            # Little-endian and contiguous (a copy only if it is not already): one copy into memory.
            payload = np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<")).reshape(-1)
            nbytes = payload.nbytes
        else:
            payload = bytes(data)
            nbytes = len(payload)
        self._check_span(addr, nbytes)
        self.machine.write_dram(addr, payload)

    def read(self, addr: int, nbytes: int) -> bytes:
        self._check_span(addr, nbytes)
        return self.machine.read_dram(addr, nbytes)

    def write_scalar(self, register: int, value: int) -> None:
        self.machine.write_scalar(register, value)

    def read_scalar(self, register: int) -> int:
        return self.machine.scalar_regs[register]

    def _execute(self, base: int, max_cycles: int | None, cycle_limit: int) -> RunStatus:
        from braze.isa.model import InstructionLimitExceeded, WatchdogError

        # The model counts instructions, not cycles; every instruction takes at least one cycle,
        # so a cycle budget bounds the instruction count too.
        try:
            result = self.machine.run(base, max_instructions=max_cycles, cycle_limit=cycle_limit)
        except WatchdogError as error:
            return RunStatus(error.cause, error.pc, error.cycle_limit, self._counters(), detail=str(error))
        except (ExecutionError, IllegalInstruction) as error:
            counters = self._counters()
            return RunStatus(error.cause, error.pc, counters["cycles"], counters, detail=str(error))
        except InstructionLimitExceeded as error:
            counters = self._counters()
            return RunStatus(ErrorCause.NONE, None, counters["cycles"], counters, timed_out=True,
                             detail=str(error))
        if max_cycles is not None and result.cycles > max_cycles:
            return RunStatus(ErrorCause.NONE, None, result.cycles, result.counters, timed_out=True,
                             detail=f"the run takes {result.cycles} cycles, over the budget of {max_cycles}")
        return RunStatus(ErrorCause.NONE, None, result.cycles, result.counters)

    def _counters(self) -> dict[str, int]:
        return {spec.name: int(value) for spec, value in zip(COUNTERS, self.machine.counters, strict=True)}


def _imported(module: str, name: str) -> Callable[..., Device]:
    """A factory that imports its back end on first use: simulators are heavy imports."""

    def factory(config: Config, **options) -> Device:
        return getattr(importlib.import_module(module), name)(config, **options)

    factory.__name__ = name
    return factory


#: Back ends by name: factories taking a Config and back-end options.
DEVICES: dict[str, Callable[..., Device]] = {
    "golden": GoldenDevice,
    "amaranth": _imported("braze.sim.amaranth_device", "AmaranthDevice"),
    "verilator": _imported("braze.sim.verilator_device", "VerilatorDevice"),
    # A board top over its serial port (simulated unless given a transport): braze.sim.uart_device.
    "uart": _imported("braze.sim.uart_device", "UARTDevice"),
}


def open_device(kind: str, config: Config | str = "default", **options) -> Device:
    """A device of the named back end for a configuration (a Config or a preset/spec string)."""
    if isinstance(config, str):
        config = Config.parse(config)
    if kind not in DEVICES:
        raise BrazeError(f"no device back end named {kind!r}; back ends are {', '.join(DEVICES)}")
    return DEVICES[kind](config, **options)
