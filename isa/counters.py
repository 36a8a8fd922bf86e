"""Hardware performance counters, defined once.

The hardware implements one 64-bit counter per entry of :data:`COUNTERS`,
exposes them over AXI4-Lite in this order and writes them in this order when
a ``COUNTERS`` instruction snapshots them.  ``exact`` counters are a function
of the program alone, so the reference model's values must equal the
hardware's; the others depend on timing, and the reference model's values
are the timing model's prediction.
"""

from __future__ import annotations

import dataclasses
import enum
import numbers

from .encoding import CONTROL_FLOW_OPCODES, Opcode
from .errors import BrazeError

COUNTER_BYTES = 8

#: Width of the watchdog's run-cycle count and of its limit (the CYCLE_LIMIT register): a cycle
#: limit is at most ``2**CYCLE_LIMIT_BITS - 1`` (0 means none).
CYCLE_LIMIT_BITS = 32
MAX_CYCLE_LIMIT = (1 << CYCLE_LIMIT_BITS) - 1


def check_cycle_limit(cycle_limit: int | None) -> int:
    """A watchdog cycle limit as an int, 0 for none (``None`` or 0); :class:`BrazeError` if it is not one."""
    if cycle_limit is None:
        return 0
    if isinstance(cycle_limit, bool) or not isinstance(cycle_limit, numbers.Integral) \
            or not 0 <= cycle_limit <= MAX_CYCLE_LIMIT:
        raise BrazeError(f"cycle_limit={cycle_limit!r} must be an integer from 0 (no limit) to "
                         f"{MAX_CYCLE_LIMIT}, the width of the hardware's CYCLE_LIMIT register")
    return int(cycle_limit)


@dataclasses.dataclass(frozen=True)
class CounterSpec:
    name: str
    doc: str
    exact: bool


COUNTERS: tuple[CounterSpec, ...] = (
    CounterSpec("cycles", "clock cycles since start (or since the last reset)", False),
    CounterSpec("load_busy", "cycles the load unit spends executing LOADs", False),
    CounterSpec("store_busy", "cycles the store unit spends executing STOREs", False),
    CounterSpec("array_busy", "cycles the PE array spends executing MATMULs", False),
    CounterSpec("vector_busy", "cycles the epilogue/vector unit spends executing EPILOGUE, VECTOR and TABLE",
                False),
    CounterSpec("macs", "useful multiply-accumulates: m*n*k summed over MATMULs", True),
    CounterSpec("stall_dep", "unit-cycles spent waiting for a dependency token or a barrier", False),
    CounterSpec("stall_axi_read", "cycles the load unit waits for AXI read address or data", False),
    CounterSpec("stall_axi_write", "cycles the store unit waits for AXI write acceptance or response", False),
    CounterSpec("stall_fetch", "cycles the dispatcher waits for instruction fetch", False),
    CounterSpec("dma_read_bytes", "payload bytes LOAD reads from external memory", True),
    CounterSpec("dma_write_bytes", "payload bytes STORE and COUNTERS write to external memory", True),
    CounterSpec("axi_read_beats", "AXI data beats read by LOAD (whole bus words covering each row)", True),
    CounterSpec("axi_write_beats", "AXI data beats written by STORE and COUNTERS", True),
    CounterSpec("spad_reads", "scratchpad row reads", True),
    CounterSpec("spad_writes", "scratchpad row writes", True),
    CounterSpec("acc_reads", "accumulator row reads", True),
    CounterSpec("acc_writes", "accumulator row writes", True),
) + tuple(
    CounterSpec(f"insn_{op.name.lower()}", f"{op.name} instructions retired", True) for op in Opcode
    if op not in CONTROL_FLOW_OPCODES
)

Counter = enum.IntEnum("Counter", [(spec.name.upper(), index) for index, spec in enumerate(COUNTERS)])
Counter.__doc__ = "Index of each performance counter in the snapshot and the register map."

SNAPSHOT_BYTES = len(COUNTERS) * COUNTER_BYTES


def instret_counter(opcode: Opcode) -> Counter | None:
    """The instructions-retired counter of ``opcode``; None for the control-flow opcodes, which have none."""
    if opcode in CONTROL_FLOW_OPCODES:
        return None
    return Counter[f"INSN_{opcode.name}"]


def parse_snapshot(blob: bytes) -> dict[str, int]:
    """A COUNTERS snapshot as read from external memory, by counter name."""
    if len(blob) != SNAPSHOT_BYTES:
        raise ValueError(f"a counter snapshot is {SNAPSHOT_BYTES} bytes, not {len(blob)}")
    return {spec.name: int.from_bytes(blob[i * COUNTER_BYTES:(i + 1) * COUNTER_BYTES], "little")
            for i, spec in enumerate(COUNTERS)}
