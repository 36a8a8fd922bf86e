"""The ISA reference document, generated from the single source.

:func:`isa_markdown` renders ``docs/isa.md`` from :mod:`~braze.isa.encoding`,
:mod:`~braze.isa.counters`, :mod:`~braze.isa.config` and the assembler's
syntax description; nothing in the document is written by hand here.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable, Iterable
from typing import Any

from amaranth.hdl import Shape

from . import asm, config, counters, encoding
from .config import PRESETS, Config
from .counters import COUNTER_BYTES, COUNTERS
from .encoding import (
    ALLOWED_DEPS,
    ARGS_OFFSET,
    CONFIG_REG_DOC,
    DEP_FLAGS,
    DEPS,
    ERROR_CAUSE_DOC,
    FORMATS,
    INSN_BITS,
    INSTRUCTION,
    Activation,
    BranchCond,
    ConfigReg,
    ErrorCause,
    FieldSpec,
    Format,
    Instruction,
    Kind,
    Memory,
    Opcode,
    PredicateOp,
    Unit,
    VectorOp,
    field_range,
)
from .timing import (
    MATMUL_LATENCY,
    REDIRECT_STAGE_CYCLES,
    STORE_AHEAD_LATENCY,
    VECTOR_LATENCY,
    VECTOR_STAGE_CYCLES,
)

__all__ = ["isa_markdown", "preset_table"]

# Values for the per-opcode examples, chosen to read well.  Fields not named here get a
# value derived from their kind, so a format that gains a field still gets an example.
_EXAMPLE_VALUES: dict[str, dict[str, Any]] = {
    "load": {"mem": "spad", "addr": 16, "rows": 8, "len": 8, "dram": 0x1000, "stride": 8, "push_next": True},
    "store": {"mem": "acc", "addr": 0, "rows": 8, "len": 8, "dram": 0x8000, "stride": 32, "pop_prev": True},
    "matmul": {"acc": 0, "a": 0, "b": 16, "a_stride": 8, "m": 8, "n": 8, "k": 16, "pop_prev": True},
    "epilogue": {"src": 0, "m": 8, "n": 8, "dst": 64, "bias": True, "bias_addr": 100, "requant": True,
                 "quant_addr": 101, "act": "relu", "push_next": True},
    "vector": {"op": "add", "dst_mem": "spad", "src1_mem": "spad", "src2_mem": "spad", "dst": 32,
               "src1": 0, "src2": 16, "rows": 8},
    "config": {"reg": "clip_hi", "value": 127},
    "counters": {"dram": 0x10000, "reset": True},
    "predicate": {"op": "any", "dst": 1, "mem": "spad", "addr": 0, "rows": 8, "addr_reg": 2,
                  "pop_prev": True},
    "branch": {"cond": "ne", "a": 1, "b": 0, "offset": -4},
    "scalar": {"dst": 1, "src1": 1, "imm": -1},
}


def _example_value(spec: FieldSpec) -> Any:
    if spec.kind is Kind.ENUM:
        return next(iter(spec.shape))
    if spec.kind is Kind.FLAG:
        return False
    low, high = field_range(spec)
    return min(max(4 if spec.kind is Kind.COUNT else 0, low), high)


def example(fmt: Format) -> Instruction:
    """An instruction of this format, for the document."""
    chosen = _EXAMPLE_VALUES.get(fmt.mnemonic, {})
    known = {spec.name for spec in fmt.fields} | set(ALLOWED_DEPS[fmt.unit])
    values = {spec.name: _example_value(spec) for spec in fmt.fields if spec.default is None}
    values |= {name: value for name, value in chosen.items() if name in known}
    return Instruction.make(fmt.opcode, **values)


def _rst_to_markdown(text: str, heading: str = "###") -> str:
    """The small subset of reStructuredText our docstrings use, as Markdown."""
    text = inspect.cleandoc(text)
    # Sphinx roles: ``:class:`~a.b.C``` shows ``C``, ``:class:`a.b.C``` shows ``a.b.C``.
    text = re.sub(r":\w+:`(~?)([^`]+)`",
                  lambda m: f"`{m.group(2).split('.')[-1] if m.group(1) else m.group(2)}`", text)
    text = text.replace("``", "`")
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        underline = lines[i + 1] if i + 1 < len(lines) else ""
        if line and underline and set(underline) <= set("-=") and len(underline) == len(line):
            out.extend([f"{heading} {line}", ""])
            i += 2
            continue
        if line.endswith("::"):
            out.append(line[:-1] if not line.endswith(" ::") else line[:-3])
            out.extend(["", "```"])
            i += 1
            block = []
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith(" ")):
                block.append(lines[i])
                i += 1
            out.extend(inspect.cleandoc("\n".join(block)).splitlines())
            out.extend(["```", ""])
            continue
        out.append(line)
        i += 1
    return "\n".join(out).strip() + "\n"


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(headers: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    headers = list(headers)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _bits(low: int, width: int) -> str:
    return f"{low}" if width == 1 else f"{low}..{low + width - 1}"


def _default(spec: FieldSpec) -> str:
    if spec.kind is Kind.FLAG:
        return "off"
    if spec.default is None:
        return "required"
    if spec.kind is Kind.ENUM:
        default = f"`{spec.default.name.lower()}`"
    else:
        default = f"{spec.default:#x}" if spec.kind is Kind.DRAM else str(spec.default)
    if spec.required_if is not None:
        flag, value = spec.required_if
        return f"required {'with' if value else 'without'} `{flag}`, else {default}"
    return default


def _legal(spec: FieldSpec) -> str:
    if spec.kind is Kind.ENUM:
        return ", ".join(f"`{member.name.lower()}`" for member in spec.shape)
    if spec.kind is Kind.FLAG:
        return "bare word"
    low, high = field_range(spec)
    return f"{low:#x}..{high:#x}" if spec.kind is Kind.DRAM else f"{low}..{high}"


def _deps_text(unit: Unit) -> str:
    allowed = [name for name in DEP_FLAGS if name in ALLOWED_DEPS[unit]]
    return ", ".join(f"`{name}`" for name in allowed) if allowed else "none"


def _word_section() -> str:
    rows = []
    for name in ("opcode", "deps", "args"):
        field = INSTRUCTION[name]
        if name == "deps":
            for flag in DEP_FLAGS:
                rows.append((_bits(field.offset + DEPS[flag].offset, 1), f"`{flag}`",
                             "dependency flag (see below)"))
            continue
        meaning = {"opcode": "`Opcode`; 0 is illegal",
                   "args": "arguments: one layout per opcode; bits above it must be zero"}[name]
        rows.append((_bits(field.offset, Shape.cast(field.shape).width), f"`{name}`", meaning))
    units = [(f"`{unit.name.lower()}`",
              ", ".join(f"`{fmt.mnemonic}`" for fmt in FORMATS if fmt.unit is unit), _deps_text(unit))
             for unit in Unit]
    return "\n".join([
        "## Instruction word\n",
        _table(("bits", "field", "meaning"), rows),
        _rst_to_markdown(encoding.__doc__.split("\n", 1)[1]),
        "### Units and their dependency flags\n",
        _table(("unit", "instructions", "dependency flags allowed"), units),
    ])


def _opcode_section(fmt: Format) -> str:
    rows = []
    layout = fmt.layout
    for spec in fmt.fields:
        field = layout[spec.name]
        rows.append((f"`{spec.name}`", _bits(ARGS_OFFSET + field.offset, spec.width), spec.width,
                     spec.kind.value, _default(spec), _legal(spec), spec.doc))
    last_bit = ARGS_OFFSET + layout.size - 1
    parts = [
        f"### `{fmt.mnemonic}`: {fmt.summary}\n",
        f"Opcode {fmt.opcode.value}, {fmt.unit.name.lower()} unit; dependency flags allowed: "
        f"{_deps_text(fmt.unit)}.\n",
        fmt.doc + "\n",
    ]
    if fmt.fields:
        headers = ("field", "bits", "width", "kind", "default", "legal values", "description")
        parts.append(_table(headers, rows))
        parts.append(f"Bits {last_bit + 1}..{INSN_BITS - 1} are reserved and must be zero.\n")
    else:
        parts.append(f"No fields; bits {ARGS_OFFSET}..{INSN_BITS - 1} are reserved and must be zero.\n")
    parts.append(f"Example:\n\n```\n{asm.format_instruction(example(fmt))}\n```\n")
    return "\n".join(parts)


def _enum_table(enum_cls, doc: Callable[[Any], str] | None = None) -> str:
    headers = ["value", "name"] + (["meaning"] if doc else [])
    rows = [[member.value, f"`{member.name.lower()}`"] + ([doc(member)] if doc else [])
            for member in enum_cls]
    return _table(headers, rows)


def _enums_section() -> str:
    summaries = {fmt.opcode: fmt.summary for fmt in FORMATS}
    parts = ["## Enumerations\n"]
    enums = ((Opcode, summaries.get), (Unit, None), (Memory, None), (Activation, None), (VectorOp, None),
             (BranchCond, None), (PredicateOp, None), (ConfigReg, CONFIG_REG_DOC.get),
             (ErrorCause, ERROR_CAUSE_DOC.get))
    for enum_cls, doc in enums:
        width = Shape.cast(enum_cls).width
        parts.append(f"### `{enum_cls.__name__}` ({width} bit{'s' if width > 1 else ''})\n")
        parts.append(_rst_to_markdown(enum_cls.__doc__))
        parts.append(_enum_table(enum_cls, doc))
    return "\n".join(parts)


def _counters_section() -> str:
    rows = [(index, f"`{spec.name}`", f"{index * COUNTER_BYTES:#05x}", "yes" if spec.exact else "no",
             spec.doc) for index, spec in enumerate(COUNTERS)]
    return "\n".join([
        "## Performance counters\n",
        _rst_to_markdown(counters.__doc__),
        f"Each counter is {COUNTER_BYTES * 8} bits; a snapshot is {len(COUNTERS) * COUNTER_BYTES} bytes.\n",
        _COUNTER_BITS_DOC,
        _table(("index", "name", "snapshot offset", "exact", "counts"), rows),
    ])


#: What ``Config.counter_bits`` does (the hardware is :class:`braze.hw.counters.CounterBank`).
_COUNTER_BITS_DOC = (
    "`counter_bits=32` (64 in every preset; e.g. `--config tiny:counter_bits=32`) makes every counter 32 "
    "bits wide, for a small FPGA: each counts modulo 2**32 (the reference model too), a COUNTERS snapshot "
    "still writes 64-bit words, their upper halves zero, and the `COUNTER_<NAME>_HI` registers read 0.  "
    "`cycles` then wraps after 2**32 cycles (179 s at 24 MHz); a run that long needs 64-bit counters to be "
    "measured.  Timing is the same.\n"
)


_PRESET_COLUMNS: tuple[tuple[str, Callable[[Config], Any]], ...] = (
    ("name", lambda c: c.name),
    ("rows", lambda c: c.rows),
    ("cols", lambda c: c.cols),
    ("spad bytes", lambda c: c.spad_bytes),
    ("spad rows", lambda c: c.spad_rows),
    ("spad banks", lambda c: c.spad_banks),
    ("acc bytes", lambda c: c.acc_bytes),
    ("acc rows", lambda c: c.acc_rows),
    ("acc banks", lambda c: c.acc_banks),
    ("bus bits", lambda c: c.dma_bus_bits),
)


def preset_table(configs: Iterable[Config] | None = None) -> tuple[list[str], list[list[Any]]]:
    """Headers and rows describing configurations (by default every preset)."""
    configs = PRESETS.values() if configs is None else configs
    headers = [header for header, _ in _PRESET_COLUMNS]
    return headers, [[get(config) for _, get in _PRESET_COLUMNS] for config in configs]


def _presets_section() -> str:
    headers, rows = preset_table()
    other = [f.name for f in dataclasses.fields(Config)
             if f.name not in {"name", "rows", "cols", "spad_bytes", "spad_banks", "acc_bytes", "acc_banks",
                               "dma_bus_bits"}]
    other_rows = [[config.name] + [getattr(config, name) for name in other] for config in PRESETS.values()]
    return "\n".join([
        "## Configuration presets\n",
        _rst_to_markdown(config.__doc__.split("\n", 1)[1]),
        _table(headers, rows),
        "Parameters of the system around the accelerator:\n",
        _table(["name"] + [name.replace("_", " ") for name in other], other_rows),
        _WEIGHT_PRELOAD_DOC,
        _EPILOGUE_OVERLAP_DOC,
        _DISPATCH_STAGE_DOC,
        _REDIRECT_STAGE_DOC,
        _FMAX_REGISTERS_DOC,
        _VECTOR_STAGE_DOC,
        _MATMUL_OVERLAP_DOC,
        _STORE_AHEAD_DOC,
        _FETCH_DOC,
        _VECTOR_UNIT_DOC,
    ])


#: What ``Config.weight_preload`` does to timing (the formula is :func:`braze.isa.timing.matmul_cycles`).
_WEIGHT_PRELOAD_DOC = (
    "`weight_preload=1` (1 in `default` and `large`, 0 in `tiny`; e.g. `--config tiny:weight_preload=1`) "
    "gives every scratchpad "
    "bank one more read port, on which the MATMUL unit reads the next K-chunk's B rows while the current "
    "chunk's A rows stream.  A MATMUL of `chunks = ceil(k/rows)` K-chunks then takes "
    f"`rows + (chunks-1)*max(m, rows+1) + m + rows + cols + {MATMUL_LATENCY}` cycles instead of "
    f"`chunks*(rows + m) + rows + cols + {MATMUL_LATENCY}`: every chunk after the first hides "
    "`min(rows, m-1)` cycles.  Results and every exact counter are the same.\n"
)


#: What ``Config.epilogue_overlap`` does (the rule is :func:`braze.isa.timing.epilogue_runs_beside` and
#: :func:`braze.isa.timing.matmul_clear_of_epilogue`).
_EPILOGUE_OVERLAP_DOC = (
    "`epilogue_overlap=1` (1 in `default` and `large`, 0 in `tiny`; e.g. `--config tiny:epilogue_overlap=1`) "
    "gives every "
    "accumulator bank a second read port, the EPILOGUE unit's, and lets an EPILOGUE run *beside* the compute "
    "unit, as a PREDICATE of scratchpad rows does.  An EPILOGUE with `out=spad` and without `residual` is "
    "handed to the EPILOGUE unit, and the compute unit is free for its next instruction in the next cycle.  "
    "That instruction may start while the EPILOGUE runs only if it is a MATMUL that touches none of the "
    "EPILOGUE's rows: its accumulator rows `acc .. acc+m-1` hold none of the rows the EPILOGUE reads "
    "(`src .. src+m-1`, `bias_addr` with `bias`, `quant_addr` and `quant_addr+1` with `requant`), and "
    "the scratchpad rows it reads (A: `a .. a + (chunks-1)*a_stride + m - 1`, B: `b .. b+k-1`) none of "
    "those the EPILOGUE writes (`dst .. dst+m-1`).  Anything else waits until the EPILOGUE has retired.  "
    "The EPILOGUE pushes its tokens when it completes (waiting for room as any instruction does), and no "
    "later compute instruction retires before it: token order, results and every exact counter are those "
    "of program order.  A compiler gets the overlap by emitting a tile's EPILOGUE before the next tile's "
    "MATMUL into another accumulator slot (double-buffered C and output tiles), which the GEMM and "
    "convolution kernels do.\n"
)


#: What ``Config.dispatch_stage`` does to timing (the rule is :class:`braze.isa.timing.Scheduler`'s).
_DISPATCH_STAGE_DOC = (
    "`dispatch_stage=1` (0 in every preset; e.g. `--config tiny:dispatch_stage=1`) adds a dispatch stage "
    "after the control core's one-word slot.  The slot adds a LOAD, STORE, MATMUL or PREDICATE's register "
    "offsets and range-checks the sum as before; a load, compute or store instruction then moves into the "
    "stage, in a cycle in which the stage is empty or its word enters its queue, and from the stage enters "
    "its own unit's queue in the next cycle at the earliest (once the queue has room), or stops the run "
    "with its error.  The slot takes the next word in the cycle after its word moved on.  So each such "
    "instruction enters its queue (is dispatched) one cycle later than without the stage, and while a queue "
    "is full the stage holds one more instruction.  SCALAR, BRANCH and the barriers execute in the slot as "
    "without the stage (a barrier waits for every earlier instruction, so for the stage too), and an "
    "instruction that names a running PREDICATE's register waits in the slot from when the PREDICATE left "
    "it.  Whether the slot takes the next word then depends on registers only, not on the add and the "
    "range checks -- the control core's longest path on an FPGA.  Results and every exact counter are "
    "the same.\n\n"
    "`dispatch_stage=2` splits that path once more: the slot only adds the register offsets, and the word "
    "moves with the sum into a *check stage*, which range-checks it and passes it with its cause to the "
    "dispatch stage above.  A load, compute or store instruction moves on from the slot, and from the check "
    "stage, in a cycle in which the next stage is empty or its word moves on, a cycle after it entered at "
    "the earliest; so it enters its queue two cycles later than without the stages, and while a queue is "
    "full the stages hold two more instructions.  A SCALAR or BRANCH (and an illegal control word, or a "
    "word whose fetch failed) waits in the slot while the check stage holds a word -- whether that one "
    "fails is known only a cycle later, and its error comes first -- so it executes no earlier than the "
    "cycle after the last load, compute or store instruction before it left the check stage.  Results and "
    "every exact counter are the same.\n"
)


#: What ``Config.redirect_stage`` does to timing (the rule is :class:`braze.isa.timing.Scheduler`'s).
_REDIRECT_STAGE_DOC = (
    "`redirect_stage=1` (0 in every preset; e.g. `--config default:dispatch_stage=2,redirect_stage=1`) "
    "registers a taken BRANCH's redirect.  A BRANCH still executes in the slot, in the cycle it is there "
    "(reading the registers as SCALAR leaves them), and leaves it taken or not; the slot may take the next "
    "word in the same cycle.  Whether it was taken, and its target (or, below the program base, its "
    "`branch_range` error, at its pc), reach the fetch unit and the error latch from registers in the next "
    "cycle, which drops the word taken behind a taken BRANCH and restarts the fetch unit at the target (the "
    "target is the first word not yet dispatched in that cycle, for the watchdog).  So a taken BRANCH's "
    f"target is dispatched {REDIRECT_STAGE_CYCLES} cycle later than without the register, and a BRANCH not "
    "taken costs the dispatcher nothing.  The fetch unit issues no request in a cycle in which a BRANCH "
    "executes (one issued then would be dropped if the BRANCH was taken, its beats delaying the target's): "
    "after a taken BRANCH, when the fetch unit refills a few words at a time, a request that a BRANCH not "
    "taken made room for goes out a cycle later.  This takes the register compare and the target check "
    "off the path into the fetch unit's restart -- the control core's longest path on an FPGA with "
    "`dispatch_stage=2`.  Results and every exact counter are the same.\n"
)


#: What ``Config.fmax_registers`` does (nothing to timing: the registers cost no cycle).
_FMAX_REGISTERS_DOC = (
    "`fmax_registers=1` (0 in every preset) adds registers on long paths of an FPGA build where they cost no "
    "cycle: the control core takes the pc of a `deadlock` report (the earliest blocked instruction's) from "
    "the units' pcs of two cycles before, which in the fourth cycle of a deadlock, when it is reported, are "
    "the same (nothing has moved).  Timing, results and every counter are the same.\n"
)


#: What ``Config.vector_stage`` does to timing (the price is :func:`braze.isa.timing.vector_latency`).
_VECTOR_STAGE_DOC = (
    "`vector_stage=1` (0 in every preset; e.g. `--config default:dispatch_stage=2,vector_stage=1`) splits "
    "the VECTOR unit's int32 x int32 multiply over two pipeline stages: the four 16 x 16 partial products "
    "(a DSP each) are registered, and the next stage adds them, so that the DSPs and the adders joining "
    "their products are no longer one path -- the VECTOR unit's longest on an FPGA.  Every VECTOR, "
    f"whatever its op, takes {VECTOR_STAGE_CYCLES} cycle more: "
    f"`rows * reads_per_row + {VECTOR_LATENCY + VECTOR_STAGE_CYCLES}` cycles instead of "
    f"`rows * reads_per_row + {VECTOR_LATENCY}` (`reads_per_row` 2 for a binary op reading both operands "
    "from the same memory, else 1).  Results and every exact counter but the cycles are the same.\n"
)


#: What ``Config.matmul_overlap`` does to timing (the rule is :class:`braze.isa.timing.MatmulPipe`'s).
_MATMUL_OVERLAP_DOC = (
    "`matmul_overlap=1` (1 in `default` and `large`, 0 in `tiny`; needs `weight_preload=1`, e.g. `--config "
    "tiny:weight_preload=1,matmul_overlap=1`) lets the MATMUL unit hold two MATMULs at once, so that "
    "consecutive MATMULs pay the array's fill and drain once instead of each.  The unit takes the next "
    "MATMUL from the cycle the current one's last K-chunk begins streaming, provided the MATMUL before the "
    "current one is done (in its done cycle at the earliest).  It reads the next one's first-chunk B rows "
    "on the weight port in the `rows` cycles after taking it, and streams that chunk's A rows once those "
    "are in and the current one's last A row has been read -- that is, in cycle `max(a + rows + 1, L' + m', "
    "L' + gap)`, where `a` is the cycle it was taken, `L'` the cycle the current one's last chunk began "
    "streaming and `m'` its A rows.  The accumulator hazard decides `gap`: if the next MATMUL accumulates "
    "into rows the current one writes, `gap = acc - acc' + 3` (`acc'` the current one's accumulator row), "
    "because the next one reads its row `acc + j` `rows + cols + j` cycles after its chunk begins, the "
    "current one writes row `acc' + i` `rows + cols + i + 2` cycles after its last chunk began, and a read "
    "sees a write only from the next cycle; otherwise `gap = 0`.  The hardware enforces the gap, and it "
    "costs at most two cycles beyond `m'`.  A MATMUL that writes the current one's rows without "
    "`accumulate` needs no gap, because its writes always come later.  The next one then completes as it "
    "would alone from that first stream cycle: its last chunk begins `(chunks-1)*max(m, rows+1)` cycles "
    f"later, and it is done `m + rows + cols + {MATMUL_LATENCY - 1}` cycles after that.  Alone, "
    "accepted by an idle unit, a MATMUL still takes the weight-preload cycles above.  The output stage "
    "follows each MATMUL's rows with that MATMUL's own descriptor (accumulator row, `n`, `k`, "
    "`accumulate`), so each MATMUL completes at its own done and pushes its tokens then, in program order. "
    " The control core holds the earlier MATMUL in a lane of its own until it has retired, and hands a "
    "MATMUL to the unit while a MATMUL executes only if the lane is free.  Every other compute instruction "
    "still waits until the last MATMUL has retired, with one exception under `epilogue_overlap`: an "
    "EPILOGUE that runs beside the unit may start while a MATMUL executes if the MATMUL before that one has "
    "retired and the executing MATMUL is clear of the EPILOGUE's rows (the rule above for a MATMUL beside "
    "an EPILOGUE); that MATMUL then moves to the lane and retires before the EPILOGUE.  A MATMUL that is "
    "not clear of an EPILOGUE beside the unit waits until the EPILOGUE has completed, not until it has "
    "retired, and retires after it.  The GEMM and convolution kernels emit each output tile's EPILOGUE and "
    "STORE after the next tile's MATMULs when these rules let the EPILOGUE run beside them.  "
    "`array_busy` counts the cycles in which at least one MATMUL is in flight, from the cycle after it was "
    "taken through its done cycle: the union of the MATMULs' cycles, not their sum.  Results "
    "and every exact counter are the same.\n"
)


#: What ``Config.store_ahead`` does to timing (the formula is :func:`braze.isa.timing.instruction_cycles`'s).
_STORE_AHEAD_DOC = (
    "`store_ahead=1` (1 in `default` and `large`, 0 in `tiny`; e.g. `--config tiny:store_ahead=1`) lets the "
    "store engine issue a "
    "STORE's write requests (one per row, as before) ahead of reading the rows' data from local memory, up "
    "to a few rows ahead, so that a row's data finds its address already taken by the memory.  Without it a "
    "row's request goes out when its data is read, and each beat waits for its address's way through the "
    "write master and the memory's address queue: a long STORE of one-beat rows moves about three beats "
    "every seven cycles, twice the time the timing model gives it.  With it a STORE takes "
    f"`{STORE_AHEAD_LATENCY} + beats` cycles, `beats` its AXI write beats (`axi_write_beats`), instead of "
    "`mem_latency + beats + 1`, the model's price without it (in which the first term is not the write "
    "path's).  A row read refused on a bank conflict with the compute unit's read port still waits a cycle.  "
    "Results and every exact counter are the same.\n"
)


#: What ``Config.fetch_skid`` does (straight-line timing is unchanged: fetch is free there).
_FETCH_DOC = (
    "`fetch_skid=1` (0 in every preset; e.g. `--config large:fetch_skid=1`) gives the fetch unit a second "
    "beat register on a 256-bit bus.  The fetch unit shares the read port with the LOADs; a beat of that "
    "bus carries two instruction words and the unit passes on one a cycle, so without the register it "
    "refuses a request's second beat until the first is split, holding the read channel -- and the LOAD "
    "beats behind it -- for four cycles per 64-byte request instead of two.  With it both beats are taken "
    "in consecutive cycles (of requests back to back it still takes a beat every other cycle).  Words "
    "reach the dispatcher in the same cycles, and on a 64- or 128-bit bus it changes nothing.  Straight-line "
    "code is timed with fetch free either way (the timing model's simplification), so the model's "
    "predictions do not change; the RTL's LOADs finish sooner.  Results and every exact counter are the "
    "same.\n"
)


#: What ``Config.vector_unit`` does (the rule is :func:`braze.isa.model.check_ranges`').
_VECTOR_UNIT_DOC = (
    "`vector_unit=0` (1 in every preset; e.g. `--config tiny:vector_unit=0`) leaves the VECTOR unit out of "
    "the build, for a small FPGA.  A VECTOR that passes the encoding checks (`illegal_opcode` for an "
    "undefined opcode, `bad_deps`, `reserved_bits`, `bad_field`) then fails the first range check with "
    "`illegal_opcode`: it stops the run where a VECTOR that breaks a range rule would, at its pc, with the "
    "instructions before it completing.  `vector_busy` counts the EPILOGUE and TABLE cycles only.  The "
    "compiler generates no VECTOR for such a build: an operator whose kernel needs one (pooling, "
    "element-wise, ...) runs on the host.  Timing of every other instruction is the same.\n"
)


def isa_markdown() -> str:
    """The complete ISA reference as Markdown (deterministic)."""
    parts = [
        "# Braze instruction set\n",
        "<!-- Generated by `braze isa-doc > docs/isa.md` from braze.isa; do not edit by hand. -->\n",
        _word_section(),
        "## Opcodes\n",
        _table(("opcode", "mnemonic", "unit", "summary"),
               [(fmt.opcode.value, f"`{fmt.mnemonic}`", fmt.unit.name.lower(), fmt.summary)
                for fmt in FORMATS]),
        "Legal values in the field tables below are those of the encoding; `decode` rejects the "
        "others (`bad_field`).  A configuration further limits addresses and sizes: an access "
        "outside its memories or a tile wider than its array stops the machine with "
        "`spad_range`, `acc_range`, `tile_range` or `dram_range`.\n",
    ]
    parts += [_opcode_section(fmt) for fmt in FORMATS]
    parts += [_enums_section(), _counters_section(), _presets_section(),
              "## Assembly language\n", _rst_to_markdown(asm.__doc__.split("\n", 1)[1])]
    return "\n".join(part.rstrip("\n") + "\n" for part in parts)
