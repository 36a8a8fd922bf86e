"""Accelerator configurations.

A configuration sets the sizes of one build of the accelerator.  It never
changes the instruction encoding: it only limits which addresses and tile
sizes are legal (see :mod:`braze.isa.encoding`, whose field widths are the
hard ceilings checked here).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from .errors import ConfigError

#: Hard limits of the encoding; a configuration may not exceed them.
MAX_ARRAY_DIM = 64
MAX_LOCAL_ROWS = 1 << 16
DMA_BUS_BITS = (64, 128, 256)
#: Smallest external memory: the random programs of ``braze verify`` place up to ~48 KiB of data and
#: program at the default size on the large preset, and a compiled model needs room for its program,
#: operands and counter snapshots; the simulated AXI RAMs need a power of two.
MIN_DRAM_BYTES = 1 << 16
#: Largest external memory: every simulator holds all of it in host memory (the Amaranth RAM model
#: alone takes seconds to build 4 GiB, and a Verilator model allocates it), so 256 MiB, four times
#: the large preset's.  The hardware itself addresses 32 bits.
MAX_DRAM_BYTES = 1 << 28
#: Longest read latency the simulated AXI RAMs (``braze.sim.axi_ram``, ``braze.sim.axi_memory``) model.
MAX_MEM_LATENCY = 1 << 16
#: Deepest instruction queue per unit and dependency-token queue: the queues are flip-flop FIFOs
#: and token counters in the control core, so a deeper one only grows the design (an entry is 160
#: bits: the three queues of 2**20 entries that were accepted would need 5*10**8 flip-flops); 256 is
#: 32 times the presets'.
MAX_QUEUE_DEPTH = 256
#: Most LOAD instructions that may have reads in flight at once (``Config.load_overlap``): each one
#: in flight holds a pc and token flags in the control core and its parameters in the load engine.
MAX_LOAD_OVERLAP = 8
#: Fields added after the first release, with the value that keeps a configuration's identity
#: (``to_dict``/``to_json``, hence the kernel cache, Verilator builds and the learned model's
#: history) as it was before the field existed: at that value the field is left out.
_OMITTED_AT = {"load_overlap": 1, "weight_preload": 0, "epilogue_overlap": 0, "dispatch_stage": 0,
               "matmul_overlap": 0, "store_ahead": 0, "counter_bits": 64,
               "vector_unit": 1, "redirect_stage": 0, "fmax_registers": 0, "fetch_skid": 0,
               "vector_stage": 0}
#: Widths a performance counter may have (``Config.counter_bits``).
COUNTER_BITS_CHOICES = (32, 64)

#: Fields that take one of a few values: the values, and what the error says when another is given.
_CHOICES = {
    "weight_preload": ((0, 1), "must be 0 (off) or 1 (the next K-chunk's weights are read while the current "
                               "chunk streams)"),
    "epilogue_overlap": ((0, 1), "must be 0 (off) or 1 (an EPILOGUE runs beside the next MATMUL)"),
    "store_ahead": ((0, 1), "must be 0 (off) or 1 (a STORE's write requests run ahead of its data)"),
    "matmul_overlap": ((0, 1), "must be 0 (off) or 1 (two MATMULs in flight in the MATMUL unit)"),
    "vector_unit": ((0, 1), "must be 1 (the build has a VECTOR unit) or 0 (VECTOR is illegal)"),
    "counter_bits": (COUNTER_BITS_CHOICES, f"must be one of {COUNTER_BITS_CHOICES} (the width of a "
                                           "performance counter)"),
    "redirect_stage": ((0, 1), "must be 0 (off) or 1 (a taken BRANCH redirects the fetch unit a cycle later, "
                               "from a register)"),
    "fmax_registers": ((0, 1), "must be 0 (off) or 1 (registers that cost no cycle on long paths of an FPGA "
                               "build)"),
    "fetch_skid": ((0, 1), "must be 0 (off) or 1 (the fetch unit takes a second bus beat while it splits the "
                           "first into words)"),
    "vector_stage": ((0, 1), "must be 0 (off) or 1 (the VECTOR unit's multiply in two pipeline stages: a "
                             "VECTOR takes a cycle more)"),
    "dispatch_stage": ((0, 1, 2), "must be 0 (off), 1 (a dispatch stage after the control core's slot) or 2 "
                                  "(two: the add, then the range checks)"),
}


def _is_pow2(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


@dataclasses.dataclass(frozen=True)
class Config:
    """The parameters of one accelerator build.

    Parameters
    ----------
    name : str
        Preset or user-chosen name; the generated Verilog top is ``braze_<name>``.
    rows, cols : int
        Systolic array size.  ``rows`` is the reduction depth of one weight
        tile, ``cols`` the number of output columns.  ``rows <= cols``, because
        a scratchpad row (``cols`` bytes) carries one row of A (``rows`` bytes
        used) and one row of B (``cols`` bytes).
    spad_bytes, spad_banks : int
        Scratchpad capacity in bytes and number of banks; rows of ``cols``
        int8 values, interleaved across banks by row address.
    acc_bytes, acc_banks : int
        Accumulator capacity in bytes and number of banks; rows of ``cols``
        int32 values.
    dma_bus_bits : int
        AXI4 data width of the DMA and instruction-fetch master: 64, 128 or 256.
    dram_bytes : int
        Size of external memory the reference model provides (the hardware
        addresses 32 bits; this is the testbench's memory): a power of two
        from :data:`MIN_DRAM_BYTES` to :data:`MAX_DRAM_BYTES`.
    queue_depth : int
        Depth of each of the load, compute and store instruction queues.
    token_depth : int
        Capacity of each dependency-token queue between neighbouring units.
    mem_latency : int
        Cycles from an AXI read address to its first data beat, assumed by
        the timing model (a property of the system, not of the accelerator).
    load_overlap : int
        LOAD instructions that may have reads in flight at once: with 1 the
        load unit executes one LOAD at a time; with more, the load engine takes
        the next LOAD as soon as every row request of the previous one is
        issued, so consecutive LOADs share the memory latency.  A power of two
        up to :data:`MAX_LOAD_OVERLAP`.  Left out of :meth:`to_dict` at 1.
    weight_preload : int
        0 or 1.  With 1 the MATMUL unit reads the next K-chunk's weights on a second scratchpad read
        port while the current chunk's A rows stream (the scratchpad's banks get one more read port
        each), so a MATMUL of ``chunks`` K-chunks takes ``rows + (chunks-1)*max(m, rows+1) + m + rows +
        cols + MATMUL_LATENCY`` cycles instead of ``chunks*(rows + m) + rows + cols + MATMUL_LATENCY``
        (:func:`braze.isa.timing.matmul_cycles`); results are the same.  Left out of :meth:`to_dict`
        at 0.
    epilogue_overlap : int
        0 or 1.  With 1 an EPILOGUE that writes scratchpad rows without a residual runs *beside* the
        compute unit, on the accumulator's second read port, and the next MATMUL may start while it
        runs when the two touch different rows (:func:`braze.isa.timing.epilogue_runs_beside`,
        :func:`braze.isa.timing.matmul_clear_of_epilogue`; the rule is docs/isa.md's); results are
        the same.  Left out of :meth:`to_dict` at 0.
    dispatch_stage : int
        0, 1 or 2.  With 1 the control core has a dispatch stage after its slot: the slot adds a word's
        register offsets and range-checks the sum, and the stage, a cycle later, writes the checked
        word into its unit's queue (or stops with its error).  This takes the add and the checks off
        the path that decides whether the slot takes the next word (the control core's critical
        path on an FPGA); a load, compute or store instruction enters its queue a cycle later, and
        the stage holds one more word while a queue is full (:class:`braze.isa.timing.Scheduler`;
        the rule is docs/isa.md's).  With 2 the slot only adds the register offsets, the first stage
        range-checks the sum and the second writes the word into its queue: the add and the checks
        are in different cycles, an instruction enters its queue two cycles later than without the
        stages, and a SCALAR or BRANCH waits in the slot while the first stage holds a word.  Results
        are the same.  Left out of :meth:`to_dict` at 0.
    matmul_overlap : int
        0 or 1.  With 1 the MATMUL unit holds two MATMULs at once (needs ``weight_preload``; the rule is
        :class:`braze.isa.timing.MatmulPipe`'s).  Results are the same.  Left out of :meth:`to_dict` at 0.
    store_ahead : int
        0 or 1.  With 1 the store engine issues a STORE's write requests (the AXI write addresses) up to
        :attr:`braze.hw.dma.StoreEngine.REQUESTS_AHEAD` rows ahead of reading the rows' data from local
        memory, so that a row's data finds its address already taken by the memory.  Without it each
        row's request goes out when its data is read, and with two rows buffered a long STORE of one-beat
        rows moves about three beats every seven cycles.  A STORE then takes
        :data:`~braze.isa.timing.STORE_AHEAD_LATENCY` cycles plus one per write beat
        (:func:`braze.isa.timing.instruction_cycles`); results are the same.  Left out of :meth:`to_dict`
        at 0.
    counter_bits : int
        32 or 64: the width of each performance counter.  Every counter counts modulo
        ``2**counter_bits``; a COUNTERS snapshot still writes 64-bit words (the upper half zero with
        32) and the ``COUNTER_<NAME>_HI`` registers read 0.  32 halves the counter bank and the
        register file's counter read-out, for a small FPGA (the cycle counter then wraps after 179 s at
        24 MHz); no cycle changes.  Left out of :meth:`to_dict` at 64.
    vector_unit : int
        1 (every preset) or 0.  With 0 the build has no VECTOR unit, for a small FPGA: a VECTOR
        instruction that passes the encoding checks stops the run with ``ILLEGAL_OPCODE`` when it
        would be range-checked (:func:`braze.isa.model.check_ranges`), and the compiler runs what
        needs VECTOR on the host.  Left out of :meth:`to_dict` at 1.
    redirect_stage : int
        0 or 1.  With 1 a BRANCH still executes in the control core's slot, but whether it is taken, and
        its target, go to the fetch unit from registers a cycle later: the register compare and the
        target check are then off the path into the fetch unit's restart (the control core's critical
        path on an FPGA with ``dispatch_stage=2``).  A taken BRANCH's target is dispatched a cycle later
        (:class:`braze.isa.timing.Scheduler`; the rule is docs/isa.md's), a BRANCH holds the fetch unit's
        next request for its cycle, and one not taken costs the dispatcher nothing.  Results are the
        same.  Left out of :meth:`to_dict` at 0.
    fmax_registers : int
        0 or 1.  With 1 the build has registers on long paths of an FPGA build where they cost no cycle:
        the control core computes the DEADLOCK report's pc (the earliest blocked instruction's) from
        registered pcs, two cycles late, in a deadlock that has lasted four cycles in which nothing
        moved.  No cycle, result or counter changes.  Left out of :meth:`to_dict` at 0.
    fetch_skid : int
        0 or 1.  On a bus wider than an instruction word (256 bits) the fetch unit splits each beat into
        words, one per cycle; without the skid it refuses the request's next beat meanwhile, so each
        64-byte fetch holds the shared read channel -- and the LOAD beats behind it -- for four cycles
        instead of two.  With 1 a second beat register takes that beat at once.  Words reach the
        dispatcher in the same cycles; only the LOADs' beats move sooner.  No effect on narrower buses.
        Left out of :meth:`to_dict` at 0.
    vector_stage : int
        0 or 1.  With 1 the VECTOR unit's int32 x int32 multiply takes two pipeline stages instead of one:
        its four 16 x 16 partial products (one DSP each) are registered, and the next stage adds them, so
        that the multiplier's DSPs and the adders that join their products are no longer one path (the
        VECTOR unit's critical path on an FPGA).  Every VECTOR, whatever its op, takes one cycle more
        (:func:`braze.isa.timing.vector_latency`); results are the same.  Left out of :meth:`to_dict` at 0.
    """

    name: str = "custom"
    rows: int = 8
    cols: int = 8
    spad_bytes: int = 64 * 1024
    spad_banks: int = 4
    acc_bytes: int = 32 * 1024
    acc_banks: int = 2
    dma_bus_bits: int = 128
    dram_bytes: int = 16 * 1024 * 1024
    queue_depth: int = 8
    token_depth: int = 8
    mem_latency: int = 16
    load_overlap: int = 1
    weight_preload: int = 0
    epilogue_overlap: int = 0
    dispatch_stage: int = 0
    matmul_overlap: int = 0
    store_ahead: int = 0
    counter_bits: int = 64
    vector_unit: int = 1
    redirect_stage: int = 0
    fmax_registers: int = 0
    fetch_skid: int = 0
    vector_stage: int = 0

    def __post_init__(self):
        def fail(field: str, problem: str):
            raise ConfigError(f"config {self.name!r}: {field}={getattr(self, field)!r} {problem}")

        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "name":
                if not isinstance(value, str) or not value.isidentifier():
                    fail("name", "must be an identifier (it names the Verilog top)")
                continue
            if not isinstance(value, int) or isinstance(value, bool):
                fail(field.name, "must be an integer")
            if field.name in _CHOICES:
                allowed, problem = _CHOICES[field.name]
                if value not in allowed:
                    fail(field.name, problem)
                continue
            if value <= 0:
                fail(field.name, "must be positive")
        for dim in ("rows", "cols"):
            size = getattr(self, dim)
            if not _is_pow2(size) or not 2 <= size <= MAX_ARRAY_DIM:
                fail(dim, f"must be a power of two from 2 to {MAX_ARRAY_DIM}")
        if self.rows > self.cols:
            fail("rows", f"must not exceed cols={self.cols} (a scratchpad row holds one A row and one B row)")
        if self.dma_bus_bits not in DMA_BUS_BITS:
            fail("dma_bus_bits", f"must be one of {DMA_BUS_BITS}")
        for mem, row_bytes in (("spad", self.cols), ("acc", 4 * self.cols)):
            size, banks = getattr(self, f"{mem}_bytes"), getattr(self, f"{mem}_banks")
            if size % row_bytes:
                fail(f"{mem}_bytes", f"must be a multiple of the {row_bytes}-byte row")
            n_rows = size // row_bytes
            if not _is_pow2(n_rows):
                fail(f"{mem}_bytes", f"must hold a power-of-two number of rows (holds {n_rows})")
            if n_rows > MAX_LOCAL_ROWS:
                fail(f"{mem}_bytes", f"holds {n_rows} rows; the encoding addresses at most {MAX_LOCAL_ROWS}")
            if not _is_pow2(banks) or banks > n_rows:
                fail(f"{mem}_banks", f"must be a power of two no larger than the {n_rows} rows")
        if not _is_pow2(self.dram_bytes) or not MIN_DRAM_BYTES <= self.dram_bytes <= MAX_DRAM_BYTES:
            fail("dram_bytes", f"must be a power of two from {MIN_DRAM_BYTES} (64 KiB) to {MAX_DRAM_BYTES} "
                               "(256 MiB): the simulators hold it all in host memory, as a power of two")
        if self.mem_latency > MAX_MEM_LATENCY:
            fail("mem_latency", f"exceeds the {MAX_MEM_LATENCY} cycles the simulated memories model")
        for name in ("queue_depth", "token_depth"):
            if not _is_pow2(getattr(self, name)) or getattr(self, name) > MAX_QUEUE_DEPTH:
                fail(name, f"must be a power of two no larger than {MAX_QUEUE_DEPTH}")
        if self.matmul_overlap and not self.weight_preload:
            fail("matmul_overlap", "needs weight_preload=1 (the next MATMUL's first weights are read on the "
                                   "weight read port while the current one streams)")
        if not _is_pow2(self.load_overlap) or self.load_overlap > MAX_LOAD_OVERLAP:
            fail("load_overlap", f"must be a power of two no larger than {MAX_LOAD_OVERLAP} "
                                 "(LOAD instructions with reads in flight at once)")

    # Derived sizes: properties so that they can never disagree with the fields.
    @property
    def spad_rows(self) -> int:
        """Scratchpad rows; each holds ``cols`` int8 values."""
        return self.spad_bytes // self.cols

    @property
    def acc_rows(self) -> int:
        """Accumulator rows; each holds ``cols`` int32 values."""
        return self.acc_bytes // (4 * self.cols)

    @property
    def dma_bus_bytes(self) -> int:
        return self.dma_bus_bits // 8

    def asm_constants(self) -> dict[str, int]:
        """The configuration's sizes as assembler constants (``ROWS``, ``COLS``, ``SPAD_ROWS``, ...).

        ``braze asm --config NAME`` predefines them, so that a program such as
        ``braze/examples/fused_gemm.s`` can be written for any array size.
        """
        constants = {field.name.upper(): getattr(self, field.name) for field in dataclasses.fields(self)
                     if field.name != "name"}
        return constants | {"SPAD_ROWS": self.spad_rows, "ACC_ROWS": self.acc_rows,
                            "DMA_BUS_BYTES": self.dma_bus_bytes}

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed, validated like a new one."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        for name, value in _OMITTED_AT.items():
            if values[name] == value:
                del values[name]
        return values

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(sorted(unknown))}")
        return cls(**values)

    @classmethod
    def preset(cls, name: str) -> Config:
        """One of :data:`PRESETS` by name."""
        try:
            return PRESETS[name]
        except KeyError:
            raise ConfigError(f"no preset named {name!r}; presets are {', '.join(PRESETS)}") from None

    @classmethod
    def parse(cls, text: str) -> Config:
        """A preset name, a JSON object, or ``PRESET:field=value,...``."""
        text = text.strip()
        if text.startswith("{"):
            try:
                values = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"config JSON is malformed: {exc}") from None
            return cls.from_dict(values)
        base, _, overrides = text.partition(":")
        config = cls.preset(base)
        if not overrides:
            return config
        changes: dict[str, Any] = {"name": f"{base}_custom"}
        for item in overrides.split(","):
            key, eq, value = item.partition("=")
            if not eq:
                raise ConfigError(f"config override {item!r} is not of the form field=value")
            key = key.strip()
            if key not in {f.name for f in dataclasses.fields(cls)}:
                raise ConfigError(f"config override names unknown field {key!r}")
            try:
                changes[key] = value.strip() if key == "name" else int(value, 0)
            except ValueError:
                raise ConfigError(f"config override {key}={value!r} is not an integer") from None
        return config.replace(**changes)


PRESETS: dict[str, Config] = {
    "tiny": Config(name="tiny", rows=4, cols=4, spad_bytes=4 * 1024, spad_banks=2,
                   acc_bytes=4 * 1024, acc_banks=2, dma_bus_bits=64, dram_bytes=1 << 20,
                   queue_depth=4, token_depth=4, mem_latency=8),
    "default": Config(name="default", load_overlap=4, weight_preload=1, epilogue_overlap=1, matmul_overlap=1,
                      store_ahead=1),
    "large": Config(name="large", rows=16, cols=16, spad_bytes=256 * 1024, spad_banks=4,
                    acc_bytes=64 * 1024, acc_banks=2, dma_bus_bits=256, dram_bytes=64 << 20, load_overlap=4,
                    weight_preload=1, epilogue_overlap=1, matmul_overlap=1, store_ahead=1),
}
