"""Random valid Braze programs with their input data, for differential verification.

:func:`generate` builds a program in *tiles*, each a self-contained piece of
work split in the three unit phases -- loads, compute, stores -- the way a
compiler would emit a software-pipelined kernel:

* **gemm** tiles load A chunks and B rows (strided, unaligned, partial rows),
  run a chain of MATMULs into accumulator rows (``k`` beyond ``rows`` and not
  a multiple of it, ``a_stride`` other than ``m``, accumulate chains started by
  an overwrite, a zero load or a loaded accumulator), then EPILOGUE chains with
  random stages whose bias, multiplier and shift rows are loaded into the
  accumulator (an activation table activation preceded, the first time and by
  chance later, by a TABLE of freshly loaded random entries), optionally a
  VECTOR op, and STOREs of scratchpad and accumulator rows;
* **vector** tiles load operands into either memory and chain VECTOR ops
  (every op, immediates, in-place destinations) before storing;
* **dma** tiles load rows and store them straight back, sometimes reading a
  region an earlier tile stored (a round trip through external memory).

Tiles rotate over two or three *slots* of scratchpad and accumulator rows, and
their phases are emitted with a random skew (the loads of tile ``t+2`` may come
before the compute of tile ``t``), so the units overlap.  Dependency tokens
are not planned by hand: every emitted instruction (or, for some programs,
every phase) is ordered after exactly the earlier instructions on other units
it conflicts with, using the race rules of :mod:`braze.isa.model` -- a token
from a neighbouring unit's latest conflicting instruction; between the load and
store units, a no-op CONFIG on the compute unit relaying the token, or a FENCE
(by chance, or when a token would not fit its queue).  Every pushed token is popped, so the
queues are empty at HALT.  Program order is therefore a valid execution and
the program is race-free; the reference model accepts every generated program
(the tests check it over many seeds on every preset).

A program reads only on-chip rows and configuration registers it has written
itself, so its results do not depend on what ran before it.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

from braze.isa import SNAPSHOT_BYTES, Config, Instruction, encode_program
from braze.isa.asm import disassemble
from braze.isa.encoding import (
    INSN_BYTES,
    UNARY_VECTOR_OPS,
    Activation,
    ConfigReg,
    Memory,
    Opcode,
    Unit,
    VectorOp,
)
from braze.isa.errors import ConfigError, UsageError
from braze.isa.model import instruction_accesses
from braze.isa.timing import QUEUED_UNITS, element_bytes, table_rows

__all__ = ["Region", "GeneratedProgram", "generate", "generate_control_flow", "sync_tokens", "DEFAULT_SIZE"]

#: Tiles in a program by default: a few thousand cycles on the ``tiny`` preset.
DEFAULT_SIZE = 8
_MAX_SIZE = 256

_INT32_MIN, _INT32_MAX = -(1 << 31), (1 << 31) - 1
_UNIT_INDEX = {unit: i for i, unit in enumerate(QUEUED_UNITS)}
_ORDER = {Unit.LOAD: 0, Unit.COMPUTE: 1, Unit.STORE: 2}


@dataclasses.dataclass(frozen=True)
class Region:
    """A span of external memory that a generated program reads or writes.

    ``kind`` is ``"input"`` (read only), ``"output"`` (written by STOREs) or
    ``"counters"`` (a COUNTERS snapshot).  ``data`` is the initial contents:
    random bytes for every kind, so that stray or missing writes show.
    """

    name: str
    addr: int
    data: bytes
    kind: str

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def end(self) -> int:
        return self.addr + len(self.data)


@dataclasses.dataclass(frozen=True)
class GeneratedProgram:
    """A random program with its external-memory image.

    Attributes
    ----------
    config : Config
        The configuration it was generated for.
    seed : int or None
        The seed that reproduces it with :func:`generate` (None if built from a Generator).
    base : int
        External byte address of the first instruction.
    instructions : tuple of Instruction
        The program, ending with HALT.
    regions : tuple of Region
        Every external-memory region besides the program.
    """

    config: Config
    seed: int | None
    base: int
    instructions: tuple[Instruction, ...]
    regions: tuple[Region, ...]

    @functools.cached_property
    def program_bytes(self) -> bytes:
        return encode_program(list(self.instructions))

    @functools.cached_property
    def assembly(self) -> str:
        """The program as assembly text (re-assembles to :attr:`program_bytes`)."""
        return disassemble(list(self.instructions))

    @property
    def image(self) -> list[tuple[int, bytes]]:
        """The initial external memory as (address, bytes): the program at ``base``, then every region."""
        return [(self.base, self.program_bytes)] + [(region.addr, region.data) for region in self.regions]

    @property
    def outputs(self) -> tuple[Region, ...]:
        """The regions the program writes (``output`` and ``counters``)."""
        return tuple(region for region in self.regions if region.kind != "input")

    @property
    def program_span(self) -> tuple[int, int]:
        return self.base, self.base + len(self.program_bytes)

    def with_instructions(self, instructions: Sequence[Instruction]) -> GeneratedProgram:
        """The same memory image around another program (the minimiser's candidates)."""
        return dataclasses.replace(self, instructions=tuple(instructions))


def generate(config: Config, rng_or_seed: int | np.random.Generator, *,
             size: int = DEFAULT_SIZE) -> GeneratedProgram:
    """A random valid program for ``config`` with its input data.

    Parameters
    ----------
    config : Config
        The accelerator configuration; every address and tile fits it.
    rng_or_seed : int or numpy.random.Generator
        The same seed always gives the same program.
    size : int
        Number of tiles (units of work); the program has roughly 10 to 15
        instructions per tile.
    """
    if not isinstance(config, Config):
        raise TypeError(f"generate needs a Config, not {config!r}")
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= _MAX_SIZE:
        raise UsageError(f"generate: size={size!r} must be an integer from 1 to {_MAX_SIZE}")
    if isinstance(rng_or_seed, np.random.Generator):
        rng, seed = rng_or_seed, None
    elif isinstance(rng_or_seed, int | np.integer) and not isinstance(rng_or_seed, bool) and rng_or_seed >= 0:
        seed = int(rng_or_seed)
        rng = np.random.default_rng(seed)
    else:
        raise TypeError(f"generate: rng_or_seed={rng_or_seed!r} must be a non-negative int or a "
                        "numpy Generator")
    return _Generator(config, rng, seed, size).run()


#: Registers of :func:`generate_control_flow`: the loop counter, the predicate's result, a sum of results,
#: and the three registers that offset addresses by a value the field is lowered by.
_LOOP, _RESULT, _SUM, _ROW_OFFSET, _DRAM_OFFSET, _A_OFFSET = 1, 2, 3, 4, 5, 6


def generate_control_flow(config: Config, seed: int, *, size: int = DEFAULT_SIZE) -> GeneratedProgram:
    """A random valid program with bounded loops, data-dependent branches, predicates and register offsets.

    The program of :func:`generate` (same seed and size) becomes the body of a counted loop of one
    to three iterations, ended by a FENCE, a PREDICATE over the rows one of its LOADs writes, a
    BRANCH on its result (random condition) over a SCALAR that sums the results, the loop's
    count-down, a FENCE (so that iterations do not race) and the back-branch.  Some LOADs, STOREs
    and MATMULs of the body address their rows and external bytes through a register: the field
    is lowered by a random amount that a register, set before the loop, adds back -- the effective
    addresses are the original program's, so the body stays race-free.
    """
    base_program = generate(config, seed, size=size)
    rng = np.random.default_rng([seed, 13])
    row_offset, dram_offset, a_offset = (int(rng.integers(0, 64)) for _ in range(3))
    body = []
    for insn in base_program.instructions[:-1]:                    # without the HALT
        args = insn.args
        chance = rng.random() < 0.5
        if insn.opcode in (Opcode.LOAD, Opcode.STORE) and chance:
            values = {}
            if args["addr"] >= row_offset:
                values |= {"addr": args["addr"] - row_offset, "addr_reg": _ROW_OFFSET}
            if args["dram"] >= dram_offset and not (insn.opcode is Opcode.LOAD and args["zero"]):
                values |= {"dram": args["dram"] - dram_offset, "dram_reg": _DRAM_OFFSET}
            insn = insn.replace(**values)
        elif insn.opcode is Opcode.MATMUL and chance and args["a"] >= a_offset:
            insn = insn.replace(a=args["a"] - a_offset, a_reg=_A_OFFSET)
        body.append(insn)
    # The predicate reads rows a LOAD of the program wrote, so that its result depends on the program only.
    loads = [insn for insn in base_program.instructions if insn.opcode is Opcode.LOAD]
    tested = loads[int(rng.integers(0, len(loads)))]
    predicate = Instruction.make(Opcode.PREDICATE, op=str(rng.choice(["any", "max"])), dst=_RESULT,
                                 mem=tested.mem, addr=tested.addr, rows=tested.rows)
    cond = str(rng.choice(["always", "eq", "ne", "lt", "ge"]))
    tail = [Instruction.make(Opcode.FENCE), predicate,
            Instruction.make(Opcode.BRANCH, cond=cond, a=_RESULT, b=0, offset=2),
            Instruction.make(Opcode.SCALAR, dst=_SUM, src1=_SUM, src2=_RESULT, imm=int(rng.integers(-9, 10))),
            Instruction.make(Opcode.SCALAR, dst=_LOOP, src1=_LOOP, imm=-1),
            Instruction.make(Opcode.FENCE)]               # the next iteration's loads after the PREDICATE
    back = Instruction.make(Opcode.BRANCH, cond="ne", a=_LOOP, offset=-(len(body) + len(tail)))
    setup = [Instruction.make(Opcode.SCALAR, dst=register, imm=value)
             for register, value in ((_LOOP, int(rng.integers(1, 4))), (_SUM, 0), (_ROW_OFFSET, row_offset),
                                     (_DRAM_OFFSET, dram_offset), (_A_OFFSET, a_offset))]
    instructions = setup + body + tail + [back, Instruction.make(Opcode.HALT)]
    if base_program.base + len(instructions) * INSN_BYTES > config.dram_bytes:
        raise ConfigError(f"generate_control_flow: the program does not fit the external memory of "
                          f"config {config.name!r}")
    return base_program.with_instructions(instructions)


def sync_tokens(config: Config, instructions: Sequence[Instruction]) -> list[Instruction]:
    """The same instructions with dependency tokens placed afresh (old flags are dropped).

    Each instruction is ordered after the earlier instructions of other
    units it conflicts with (see the module docstring); no-op CONFIG relays
    and FENCEs may be inserted.  Used to repair a program after dropping
    instructions from it.
    """
    sync = _TokenPlanner(config, None)
    for insn in instructions:
        bare = Instruction(insn.opcode, insn.args)
        if insn.unit is Unit.CONTROL:
            sync.barrier(bare)
        else:
            sync.emit_synced(bare)
    return sync.instructions()


# ---------------------------------------------------------------------------------------------------------
# Token planning


def _bounds(index) -> tuple[int, int]:
    if isinstance(index, slice):
        return index.start, index.stop
    return int(index.min()), int(index.max()) + 1


def _as_array(index) -> np.ndarray:
    return np.arange(index.start, index.stop) if isinstance(index, slice) else index


def _overlap(first, second) -> bool:
    lo1, hi1 = _bounds(first)
    lo2, hi2 = _bounds(second)
    if hi1 <= lo2 or hi2 <= lo1:
        return False
    if isinstance(first, slice) and isinstance(second, slice):
        return True
    return bool(np.intersect1d(_as_array(first), _as_array(second)).size)


def _conflict(accesses, others) -> bool:
    for space, index, write in accesses:
        for other_space, other_index, other_write in others:
            if space == other_space and (write or other_write) and _overlap(index, other_index):
                return True
    return False


def _pop_flag(unit: Unit, source: Unit) -> str:
    return "pop_prev" if _ORDER[source] < _ORDER[unit] else "pop_next"


def _push_flag(unit: Unit, target: Unit) -> str:
    return "push_next" if _ORDER[target] > _ORDER[unit] else "push_prev"


@dataclasses.dataclass
class _Entry:
    insn: Instruction                 # without dependency flags
    unit: Unit
    accesses: list
    deps: set[str]
    snap: list[int]                   # the unit's vector clock after this instruction


class _TokenPlanner:
    """Emits instructions in program order and orders each after what it conflicts with.

    Vector clocks as in the reference model's race detector: ``clock[u][v]``
    is the sequence number (position + 1) of the latest instruction of unit v
    known to happen before unit u's next instruction.  Every token pushed is
    popped by the instruction that needed it, so no token is ever left over.
    """

    def __init__(self, config: Config, rng: np.random.Generator | None, *, fence_share: float = 0.0):
        self.config = config
        self.rng = rng
        self.fence_share = fence_share
        self.entries: list[_Entry] = []
        self.clock = {unit: [0, 0, 0] for unit in QUEUED_UNITS}
        self.by_unit: dict[Unit, list[int]] = {unit: [] for unit in QUEUED_UNITS}
        self.pushes: dict[tuple[Unit, Unit], list[int]] = {}
        self.pops: dict[tuple[Unit, Unit], list[int]] = {}
        self.config_regs = {reg: 0 for reg in ConfigReg}
        self.inserted_fences = 0
        self.relays = 0

    # --- public -------------------------------------------------------------------------------------------

    def instructions(self) -> list[Instruction]:
        return [Instruction(e.insn.opcode, e.insn.args, frozenset(e.deps)) for e in self.entries]

    def barrier(self, insn: Instruction) -> None:
        position = len(self.entries)
        self.entries.append(_Entry(insn, Unit.CONTROL, [], set(), [position + 1] * 3))
        for unit in QUEUED_UNITS:
            self.clock[unit] = [position + 1] * 3

    def emit_synced(self, insn: Instruction) -> None:
        """Emit one instruction, ordered after everything it conflicts with."""
        self.emit_phase([insn])

    def emit_phase(self, insns: Sequence[Instruction]) -> None:
        """Emit instructions of one unit; the first is ordered after what any of them conflicts with."""
        if not insns:
            return
        unit = insns[0].unit
        assert all(insn.unit is unit for insn in insns)
        accesses = [instruction_accesses(insn, self.config) for insn in insns]
        sources = self._plan(unit, [access for group in accesses for access in group])
        for i, insn in enumerate(insns):
            self._append(insn, accesses[i], sources if i == 0 else {})

    # --- planning -----------------------------------------------------------------------------------------

    def _latest_conflict(self, unit: Unit, other: Unit, accesses) -> int | None:
        known = self.clock[unit][_UNIT_INDEX[other]]
        for position in reversed(self.by_unit[other]):
            if position + 1 <= known:
                return None
            if _conflict(accesses, self.entries[position].accesses):
                return position
        return None

    def _fits(self, queue: tuple[Unit, Unit], pusher: int) -> bool:
        """Whether a new token pushed by ``pusher`` (and popped at the end) keeps every push legal."""
        pushes, pops = self.pushes.get(queue, []), self.pops.get(queue, [])
        depth = self.config.token_depth
        for position in [pusher] + [p for p in pushes if p > pusher]:
            outstanding = bisect.bisect_left(pushes, position) - bisect.bisect_left(pops, position)
            if position > pusher:
                outstanding += 1
            if outstanding >= depth:
                return False
        return True

    def _plan(self, unit: Unit, accesses) -> dict[Unit, int]:
        """The instruction of each neighbouring unit whose token the new instruction must pop."""
        latest = {other: self._latest_conflict(unit, other, accesses)
                  for other in QUEUED_UNITS if other is not unit}
        far = {Unit.LOAD: Unit.STORE, Unit.STORE: Unit.LOAD}.get(unit)
        if far is not None and latest[far] is not None:
            target = latest[far]
            if self.clock[Unit.COMPUTE][_UNIT_INDEX[far]] < target + 1:
                use_fence = self.rng is not None and self.rng.random() < self.fence_share
                if use_fence or not self._relay(far, target):
                    self._fence()
                    return {}
            # The compute unit's latest instruction now happens after `target` (and after every
            # other compute instruction the new one may conflict with).
            latest[Unit.COMPUTE] = self.by_unit[Unit.COMPUTE][-1]
            latest.pop(far)
        sources = {}
        for other, position in latest.items():
            if position is None or position + 1 <= self.clock[unit][_UNIT_INDEX[other]]:
                continue
            assert _push_flag(other, unit) not in self.entries[position].deps
            if not self._fits((other, unit), position):
                self._fence()
                return {}
            sources[other] = position
        return sources

    def _relay(self, far: Unit, target: int) -> bool:
        """A CONFIG that rewrites a register's value on the compute unit, popping ``target``'s token."""
        if not self._fits((far, Unit.COMPUTE), target):
            return False
        reg = ConfigReg.CLIP_LO if self.rng is None else ConfigReg(int(self.rng.integers(len(ConfigReg))))
        relay = Instruction.make(Opcode.CONFIG, reg=reg, value=self.config_regs[reg])
        self._append(relay, [], {far: target})
        self.relays += 1
        return True

    def _fence(self) -> None:
        self.inserted_fences += 1
        self.barrier(Instruction.make(Opcode.FENCE))

    def _append(self, insn: Instruction, accesses, sources: dict[Unit, int]) -> None:
        position = len(self.entries)
        unit = insn.unit
        clock = list(self.clock[unit])
        deps = set()
        for other, pusher in sources.items():
            queue = (other, unit)
            self.entries[pusher].deps.add(_push_flag(other, unit))
            deps.add(_pop_flag(unit, other))
            bisect.insort(self.pushes.setdefault(queue, []), pusher)
            self.pops.setdefault(queue, []).append(position)
            clock = [max(a, b) for a, b in zip(clock, self.entries[pusher].snap, strict=True)]
        clock[_UNIT_INDEX[unit]] = position + 1
        self.clock[unit] = clock
        self.by_unit[unit].append(position)
        self.entries.append(_Entry(insn, unit, accesses, deps, list(clock)))
        if insn.opcode is Opcode.CONFIG:
            self.config_regs[insn.reg] = insn.value


# ---------------------------------------------------------------------------------------------------------
# Program generation


class _Rows:
    """Bump allocator of on-chip rows within one slot, with random gaps."""

    def __init__(self, rng: np.random.Generator, first: int, end: int, memory: Memory):
        self.rng, self.next, self.end, self.memory = rng, first, end, memory

    def take(self, count: int) -> int:
        start = self.next + int(self.rng.integers(0, 3))
        if start + count > self.end:
            raise AssertionError(f"generator bug: {count} {self.memory.name} rows do not fit its slot")
        self.next = start + count
        return start


@dataclasses.dataclass
class _Tile:
    index: int
    kind: str
    load: list[Instruction] = dataclasses.field(default_factory=list)
    compute: list[Instruction] = dataclasses.field(default_factory=list)
    store: list[Instruction] = dataclasses.field(default_factory=list)
    stored: list[Region] = dataclasses.field(default_factory=list)


class _Generator:
    def __init__(self, config: Config, rng: np.random.Generator, seed: int | None, size: int):
        self.config, self.rng, self.seed, self.size = config, rng, seed, size
        R = config.rows
        # Rows one tile may take at most (see the tile makers), with room for allocation gaps.
        self.spad_need, self.acc_need = 48 * R + 40 + table_rows(config), 10 * R + 24
        self.table_written = False    # whether an earlier tile's compute wrote the activation table
        self.slots = int(rng.choice([2, 3]))
        while self.slots > 1 and (config.spad_rows // self.slots < self.spad_need
                                  or config.acc_rows // self.slots < self.acc_need):
            self.slots -= 1
        if config.spad_rows < self.spad_need or config.acc_rows < self.acc_need:
            raise ConfigError(f"config {config.name!r} is too small for the program generator: it needs "
                              f"{self.spad_need} scratchpad and {self.acc_need} accumulator rows per tile")
        self.planner = _TokenPlanner(config, rng, fence_share=0.25)
        self.regions: list[Region] = []
        self.cursor = int(rng.integers(0, 4096))
        self.stored: list[tuple[Region, int]] = []   # output regions and the step their store was emitted
        self.step = 0

    # --- helpers ------------------------------------------------------------------------------------------

    def rint(self, low: int, high: int) -> int:
        """A random integer in [low, high]."""
        return int(self.rng.integers(low, high + 1))

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def _alloc(self, size: int, kind: str, name: str, data: bytes | None = None) -> Region:
        bus = self.config.dma_bus_bytes
        addr = -(-self.cursor // bus) * bus
        if self.chance(0.6):
            addr += self.rint(1, bus + 7)      # unaligned
        if addr + size + 4096 > self.config.dram_bytes:
            raise ConfigError(f"the generated program's data does not fit the {self.config.dram_bytes}-byte "
                              f"external memory of config {self.config.name!r}; use a smaller size")
        if data is None:
            data = self.rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        region = Region(f"{name}@0x{addr:x}", addr, bytes(data), kind)
        self.regions.append(region)
        self.cursor = addr + size
        return region

    def _stride(self, rows: int, row_bytes: int, *, store: bool = False) -> int:
        if rows == 1:
            return self.rint(0, (1 << 32) - 1) if self.chance(0.15) else row_bytes
        u = self.rng.random()
        bus = self.config.dma_bus_bytes
        if u < 0.35:
            return row_bytes
        if u < 0.75:
            return row_bytes + self.rint(1, 24)
        if u < 0.88:
            return -(-row_bytes // bus) * bus + bus * self.rint(0, 2)
        if u < (0.93 if store else 0.97):
            return self.rint(1, row_bytes)            # rows overlap in external memory
        return 0

    def _int32_values(self, shape) -> np.ndarray:
        mode = self.rng.choice(["small", "medium", "full"], p=[0.5, 0.3, 0.2])
        bound = {"small": 1 << 12, "medium": 1 << 20, "full": 1 << 31}[mode]
        return self.rng.integers(-bound, bound, shape, dtype=np.int64)

    def _load(self, memory: Memory, addr: int, rows: int, *, values: np.ndarray | None = None,
              length: int | None = None, zero: bool = False, name: str = "in") -> Instruction:
        """A LOAD of ``rows`` local rows from a fresh input region (``values``: rows x len elements)."""
        cols = self.config.cols
        if zero:
            dram = self.rint(0, self.config.dram_bytes - 1) if self.chance(0.2) else 0
            return Instruction.make(Opcode.LOAD, mem=memory, zero=True, addr=addr, rows=rows,
                                    len=self.rint(1, cols), dram=dram)
        if values is not None:
            length = values.shape[1]
        elif length is None:
            length = cols if self.chance(0.5) else self.rint(1, cols)
        row_bytes = length * element_bytes(memory)
        stride = self._stride(rows, row_bytes)
        if values is not None and rows > 1:
            stride = max(stride, row_bytes)          # rows that overlap would garble chosen values
        span = row_bytes + (rows - 1) * stride
        blob = np.frombuffer(self.rng.integers(0, 256, span, dtype=np.uint8).tobytes(), dtype=np.uint8).copy()
        if values is None and memory is Memory.ACC:
            values = self._int32_values((rows, length))
        if values is not None:
            dtype = np.dtype("<i4") if memory is Memory.ACC else np.dtype("i1")
            raw = np.asarray(values, dtype=np.int64).astype(dtype).view(np.uint8).reshape(rows, row_bytes)
            for r in range(rows):
                blob[r * stride:r * stride + row_bytes] = raw[r]
        region = self._alloc(span, "input", name, blob.tobytes())
        return Instruction.make(Opcode.LOAD, mem=memory, addr=addr, rows=rows, len=length,
                                dram=region.addr, stride=stride)

    def _load_split(self, memory: Memory, addr: int, rows: int, tile: _Tile, **options) -> None:
        """Load rows with one LOAD or, sometimes, two."""
        if rows > 1 and self.chance(0.3):
            first = self.rint(1, rows - 1)
            values = options.pop("values", None)
            head, tail = (None, None) if values is None else (values[:first], values[first:])
            tile.load.append(self._load(memory, addr, first, values=head, **options))
            tile.load.append(self._load(memory, addr + first, rows - first, values=tail, **options))
        else:
            tile.load.append(self._load(memory, addr, rows, **options))

    def _store(self, memory: Memory, addr: int, rows: int, defined: int, tile: _Tile) -> None:
        """STORE rows whose first ``defined`` columns hold data."""
        length = defined if self.chance(0.5) else self.rint(1, defined)
        row_bytes = length * element_bytes(memory)
        stride = self._stride(rows, row_bytes, store=True)
        span = row_bytes + (rows - 1) * stride
        region = self._alloc(span, "output", "out")
        tile.store.append(Instruction.make(Opcode.STORE, mem=memory, addr=addr, rows=rows, len=length,
                                           dram=region.addr, stride=stride))
        tile.stored.append(region)

    def _config(self, reg: ConfigReg) -> Instruction:
        if reg is ConfigReg.OUT_ZP:
            value = self.rint(-128, 127) if self.chance(0.8) else int(self._int32_values(()))
        elif reg is ConfigReg.CLIP_LO:
            value = self.rint(-128, 0) if self.chance(0.7) else int(self._int32_values(()))
        else:
            value = self.rint(0, 127) if self.chance(0.7) else int(self._int32_values(()))
        return Instruction.make(Opcode.CONFIG, reg=reg, value=value)

    def _maybe_config(self, tile: _Tile, p: float = 0.3) -> None:
        if self.chance(p):
            tile.compute.append(self._config(ConfigReg(self.rint(0, len(ConfigReg) - 1))))

    # --- tiles --------------------------------------------------------------------------------------------

    def _slot_rows(self, index: int) -> tuple[_Rows, _Rows]:
        slot = index % self.slots
        allocators = []
        for memory, total, need in ((Memory.SPAD, self.config.spad_rows, self.spad_need),
                                    (Memory.ACC, self.config.acc_rows, self.acc_need)):
            part = total // self.slots
            first = slot * part + self.rint(0, part - need)
            allocators.append(_Rows(self.rng, first, first + need, memory))
        return allocators[0], allocators[1]

    def _make_tile(self, index: int) -> _Tile:
        if self.config.vector_unit:
            kind = str(self.rng.choice(["gemm", "vector", "dma"], p=[0.55, 0.3, 0.15]))
        else:       # no VECTOR unit (Config.vector_unit=0): its tiles would only stop at the first VECTOR
            kind = str(self.rng.choice(["gemm", "dma"], p=[0.55 / 0.7, 0.15 / 0.7]))
        tile = _Tile(index, kind)
        spad, acc = self._slot_rows(index)
        getattr(self, f"_{kind}_tile")(tile, spad, acc)
        return tile

    def _pick_k(self) -> int:
        R = self.config.rows
        u = self.rng.random()
        if u < 0.2:
            return self.rint(1, R)
        if u < 0.35:
            return R * self.rint(2, 3)
        return self.rint(R + 1, 3 * R)

    def _requant_rows(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Multipliers and shifts (before masking) that exercise rounding and saturation."""
        cols = self.config.cols
        mode = self.rng.choice(["scale", "ties", "saturate", "wild"], p=[0.5, 0.2, 0.15, 0.15])
        if mode == "scale":
            # Map the typical magnitude of a k-long int8 dot product onto the int8 range, roughly.
            shift = self.rng.integers(8, 32, cols)
            typical = 5500.0 * np.sqrt(k)
            mult = np.round(np.exp2(shift) * 100.0 / typical * self.rng.uniform(0.3, 3.0, cols))
            mult = mult * np.where(self.rng.random(cols) < 0.1, -1, 1)
        elif mode == "ties":
            shift = self.rng.integers(1, 4, cols)
            mult = self.rng.integers(-4, 5, cols)
        elif mode == "saturate":
            shift = self.rng.integers(0, 8, cols)
            mult = self.rng.choice([_INT32_MAX, _INT32_MIN, 1 << 30, -(1 << 30), 12345678], cols)
        else:
            shift = self.rng.integers(0, 64, cols)
            mult = self.rng.integers(_INT32_MIN, _INT32_MAX + 1, cols)
        mult = np.clip(mult, _INT32_MIN, _INT32_MAX).astype(np.int64)
        if self.chance(0.3):     # the hardware reads the low 6 bits only
            shift = shift + 64 * self.rng.integers(-(1 << 24), 1 << 24, cols)
        return mult, shift.astype(np.int64)

    def _gemm_tile(self, tile: _Tile, spad: _Rows, acc: _Rows) -> None:
        R, C = self.config.rows, self.config.cols
        m, n = self.rint(1, 2 * R), self.rint(1, C)
        c_rows = acc.take(m)
        init = str(self.rng.choice(["overwrite", "zero", "load"], p=[0.6, 0.2, 0.2]))
        if init == "zero":
            tile.load.append(self._load(Memory.ACC, c_rows, m, zero=True))
        elif init == "load":
            tile.load.append(self._load(Memory.ACC, c_rows, m, length=self.rint(1, C)))
        defined = C if init != "overwrite" else 0
        for j in range(int(self.rng.choice([1, 1, 2, 3]))):
            k = self._pick_k()
            chunks = -(-k // R)
            u = self.rng.random()
            a_stride = (m if u < 0.4 else m + self.rint(1, 3) if u < 0.7
                        else self.rint(0, m) if u < 0.85 else m + self.rint(4, 2 * R))
            a_span = (chunks - 1) * a_stride + m
            a, b = spad.take(a_span), spad.take(k)
            self._load_split(Memory.SPAD, a, a_span, tile, length=R if self.chance(0.5) else None)
            self._load_split(Memory.SPAD, b, k, tile, length=n if self.chance(0.5) else None)
            if j == 0:
                accumulate, n_j = init != "overwrite", n
            else:
                accumulate = self.chance(0.85)
                # Accumulating reads columns 0..n-1 of C, which must already hold data.
                n_j = self.rint(1, defined) if accumulate else self.rint(1, C)
            tile.compute.append(Instruction.make(Opcode.MATMUL, acc=c_rows, a=a, b=b, a_stride=a_stride,
                                                 m=m, n=n_j, k=k, accumulate=accumulate))
            defined = max(defined, n_j)
            last_k = k
        self._epilogues(tile, spad, acc, c_rows, m, defined, last_k)
        if self.chance(0.3):
            self._store(Memory.ACC, c_rows, m, defined, tile)

    def _epilogues(self, tile: _Tile, spad: _Rows, acc: _Rows, src: int, m: int, defined: int,
                   k: int) -> None:
        C = self.config.cols
        params = None
        if self.chance(0.85):
            params = acc.take(3)      # bias, multipliers, shifts
            mult, shift = self._requant_rows(k)
            bias = self._int32_values(C)
            self._load_split(Memory.ACC, params, 3, tile, values=np.stack([bias, mult, shift]))
        residual = None
        for stage in range(2):
            if stage and not self.chance(0.4):
                return
            n = self.rint(1, defined)
            use_params = params is not None
            flags = dict(bias=use_params and self.chance(0.5), requant=use_params and self.chance(0.65),
                         residual=self.chance(0.3), act=Activation(self.rint(0, len(Activation) - 1)))
            fields: dict = {"bias_addr": params if flags["bias"] else 0,
                            "quant_addr": params + 1 if flags["requant"] else 0}
            if self.chance(0.1) and params is not None:   # unused address fields must be ignored
                fields["bias_addr"], fields["quant_addr"] = params, params + 1
            if flags["residual"]:
                if residual is None:
                    residual = spad.take(m)
                    self._load_split(Memory.SPAD, residual, m, tile)
                fields["res_addr"] = residual
            out = Memory.SPAD if self.chance(0.6) else Memory.ACC
            if out is Memory.SPAD:
                if flags["residual"] and self.chance(0.3):
                    dst = residual                          # in place over the residual
                    residual = None                         # its rows no longer hold the loaded data
                else:
                    dst = spad.take(m)
            else:
                dst = src if self.chance(0.3) else acc.take(m)
            if flags["requant"] and self.chance(0.4):
                tile.compute.append(self._config(ConfigReg.OUT_ZP))
            if flags["act"] is Activation.CLIP and self.chance(0.5):
                tile.compute.append(self._config(ConfigReg.CLIP_LO))
                tile.compute.append(self._config(ConfigReg.CLIP_HI))
            self._maybe_config(tile, 0.1)
            if flags["act"] is Activation.TABLE and (not self.table_written or self.chance(0.3)):
                self._table(tile, spad)
            tile.compute.append(Instruction.make(Opcode.EPILOGUE, src=src, m=m, n=n, dst=dst, out=out,
                                                 **flags, **fields))
            if self.config.vector_unit and self.chance(0.2):
                self._vector_op(tile, spad, acc, [(out, dst)], m)
            if self.chance(0.8) or stage == 0:
                self._store(out, dst, m, C, tile)
            if out is Memory.ACC:
                src, defined = dst, C               # a second stage works on this one's result

    def _table(self, tile: _Tile, spad: _Rows) -> None:
        """Load 256 random int8 entries into scratchpad rows and write them into the activation table."""
        rows = table_rows(self.config)
        first = spad.take(rows)
        self._load_split(Memory.SPAD, first, rows, tile)
        tile.compute.append(Instruction.make(Opcode.TABLE, addr=first))
        self.table_written = True

    def _vector_op(self, tile: _Tile, spad: _Rows, acc: _Rows, pool: list[tuple[Memory, int]],
                   rows: int) -> tuple[Memory, int]:
        """One VECTOR over ranges of ``rows`` fully written rows from ``pool`` (equal or disjoint ranges)."""
        op = VectorOp(self.rint(0, len(VectorOp) - 1))
        src1_mem, src1 = pool[self.rint(0, len(pool) - 1)]
        binary = op not in UNARY_VECTOR_OPS
        use_imm = binary and self.chance(0.3)
        fields: dict = {}
        candidates = [(src1_mem, src1)]
        if binary and not use_imm:
            src2_mem, src2 = pool[self.rint(0, len(pool) - 1)]
            fields.update(src2_mem=src2_mem, src2=src2)
            candidates.append((src2_mem, src2))
        elif self.chance(0.1):     # an unused second operand must not be read
            fields.update(src2_mem=Memory(self.rint(0, 1)), src2=self.rint(0, 3))
        if use_imm:
            fields["imm"] = self.rint(-4, 4) if self.chance(0.4) else self.rint(-(1 << 15), (1 << 15) - 1)
        if op in (VectorOp.MUL, VectorOp.SHR):
            fields["shift"] = self.rint(0, 15) if self.chance(0.8) else self.rint(16, 31)
        elif self.chance(0.1):
            fields["shift"] = self.rint(0, 31)
        if self.chance(0.35):
            dst_mem, dst = candidates[self.rint(0, len(candidates) - 1)]     # in place
        else:
            dst_mem = Memory(self.rint(0, 1))
            dst = (spad if dst_mem is Memory.SPAD else acc).take(rows)
        if op is VectorOp.CLIP and self.chance(0.5):
            tile.compute.append(self._config(ConfigReg.CLIP_LO))
            tile.compute.append(self._config(ConfigReg.CLIP_HI))
        tile.compute.append(Instruction.make(Opcode.VECTOR, op=op, dst_mem=dst_mem, src1_mem=src1_mem,
                                             src1=src1, dst=dst, rows=rows, use_imm=use_imm, **fields))
        return dst_mem, dst

    def _vector_tile(self, tile: _Tile, spad: _Rows, acc: _Rows) -> None:
        R, C = self.config.rows, self.config.cols
        rows = self.rint(1, 2 * R)
        pool = []
        for _ in range(self.rint(1, 2)):
            memory = Memory(self.rint(0, 1))
            start = (spad if memory is Memory.SPAD else acc).take(rows)
            self._load_split(memory, start, rows, tile)
            pool.append((memory, start))
        self._maybe_config(tile)
        for _ in range(self.rint(1, 3)):
            result = self._vector_op(tile, spad, acc, pool, rows)
            if result not in pool:
                pool.append(result)
        last = tile.compute[-1]
        self._store(last.dst_mem, last.dst, rows, C, tile)
        if self.chance(0.3):
            memory, start = pool[self.rint(0, len(pool) - 1)]
            self._store(memory, start, rows, C, tile)

    def _dma_tile(self, tile: _Tile, spad: _Rows, acc: _Rows) -> None:
        R, C = self.config.rows, self.config.cols
        memory = Memory(self.rint(0, 1))
        rows = self.rint(1, 2 * R)
        start = (spad if memory is Memory.SPAD else acc).take(rows)
        earlier = [region for region, step in self.stored if step < self.step]
        if earlier and self.chance(0.5):
            # Read back what an earlier tile stored: a store-to-load dependency through external memory.
            region = earlier[self.rint(0, len(earlier) - 1)]
            length = self.rint(1, max(1, min(C, region.size // element_bytes(memory))))
            row_bytes = length * element_bytes(memory)
            if row_bytes <= region.size:
                count = min(rows, 1 + (region.size - row_bytes) // max(1, row_bytes))
                stride = (region.size - row_bytes) // (count - 1) if count > 1 else row_bytes
                tile.load.append(Instruction.make(Opcode.LOAD, mem=memory, addr=start, rows=count,
                                                  len=length, dram=region.addr, stride=stride))
                if count < rows:
                    tile.load.append(self._load(memory, start + count, rows - count, zero=True))
                self._store(memory, start, rows, C, tile)
                return
        self._load_split(memory, start, rows, tile, zero=self.chance(0.1))
        self._store(memory, start, rows, C, tile)

    # --- the program --------------------------------------------------------------------------------------

    def _snapshot(self) -> None:
        region = self._alloc(SNAPSHOT_BYTES, "counters", "counters")
        self.planner.barrier(Instruction.make(Opcode.COUNTERS, dram=region.addr, reset=self.chance(0.5)))

    def run(self) -> GeneratedProgram:
        planner = self.planner
        granularity = str(self.rng.choice(["phase", "instruction"]))
        load_ahead, store_lag = int(self.rng.choice([0, 1, 2])), int(self.rng.choice([0, 1]))
        regs = list(ConfigReg)
        self.rng.shuffle(regs)
        planner.emit_phase([self._config(reg) for reg in regs])   # no state from an earlier program

        def emit(insns: list[Instruction]) -> None:
            if granularity == "phase":
                planner.emit_phase(insns)
            else:
                for insn in insns:
                    planner.emit_synced(insn)

        # With two MATMULs in flight and EPILOGUEs beside the compute unit, half the programs emit what a
        # tile computes after its last MATMUL (its EPILOGUE, ...) after the next tile's compute up to its last
        # MATMUL, as the GEMM kernels do (Config.matmul_overlap; the EPILOGUE may then start beside that one).
        pipelined = bool(self.config.matmul_overlap and self.config.epilogue_overlap) and self.chance(0.5)
        deferred: list[Instruction] = []
        tiles: dict[int, _Tile] = {}
        for step in range(self.size + load_ahead + store_lag):
            self.step = step
            if step < self.size:
                tiles[step] = self._make_tile(step)
                emit(tiles[step].load)
            if 0 <= step - load_ahead < self.size:
                compute = tiles[step - load_ahead].compute
                if pipelined:
                    matmuls = [i for i, insn in enumerate(compute) if insn.opcode is Opcode.MATMUL]
                    split = matmuls[-1] + 1 if matmuls else len(compute)
                    emit(compute[:split])
                    emit(deferred)
                    deferred = compute[split:]
                else:
                    emit(compute)
            if 0 <= step - load_ahead - store_lag < self.size:
                tile = tiles[step - load_ahead - store_lag]
                emit(tile.store)
                self.stored.extend((region, step) for region in tile.stored)
            if self.chance(0.05):
                planner.barrier(Instruction.make(Opcode.FENCE))
            if self.chance(0.07):
                self._snapshot()
        emit(deferred)
        if self.chance(0.5):
            self._snapshot()
        planner.barrier(Instruction.make(Opcode.HALT))

        instructions = planner.instructions()
        base = -(-(self.cursor + self.rint(0, 256)) // 64) * 64
        if base + len(instructions) * INSN_BYTES > self.config.dram_bytes:
            raise ConfigError(f"the generated program does not fit the external memory of config "
                              f"{self.config.name!r}; use a smaller size")
        return GeneratedProgram(self.config, self.seed, base, tuple(instructions), tuple(self.regions))
