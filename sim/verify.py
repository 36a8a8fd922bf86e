"""Differential verification of a device against the reference model.

:func:`verify` generates random valid programs (:mod:`braze.sim.progen`;
program ``i`` of a run with ``seed=S`` is ``generate(config, S + i)``), runs
each on the ``golden`` device and on the device under test, and compares,
bit for bit:

* the status: the error cause and pc (the golden run always halts), and timeouts;
* the exact performance counters (``exact`` in :data:`braze.isa.COUNTERS`) at the end;
* every output region and the whole external memory outside the program --
  except the timing counters inside COUNTERS snapshots, which only the
  timing model predicts.

It also reports how well the timing model predicts the device's cycle
count (the distribution of the relative error over the programs).

With ``control_flow``, program ``i`` is ``generate_control_flow(config, S + i)``: the same
program as the body of a counted loop with a PREDICATE, data-dependent BRANCHes, SCALAR
arithmetic and register-offset addresses.  Its length is what the reference model runs (the
timing model of the straight-line text does not follow branches), and the scalar registers
r1..r7 after the run are compared too.

With ``watchdog``, each program also runs, before that, with a cycle limit
drawn below its predicted length (:func:`run_watchdog`): both must stop with
``WATCHDOG`` at the limit, the device at an instruction boundary no later than
the reference model's pc (the model's pc is where its timing model predicts
the dispatcher to be, and it never predicts the hardware later than it is).

Every run is bounded: the reference model by a cycle limit just above the
program's predicted length, the device by a watchdog limit of 20 times that
(plus a constant) and a host budget of twice the watchdog's.

For every program that mismatches it writes a reproducer directory: the
program's assembly, its memory image, and a README with the command that
replays it and the first differing bytes.  The program is
minimised first, with bounded effort: blocks of instructions, then single
instructions, are dropped while the program stays valid for the reference
model and the mismatch stays present (tokens are re-placed with
:func:`braze.sim.progen.sync_tokens` when that keeps the mismatch).
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from braze.isa import COUNTERS, Config, ErrorCause, Instruction
from braze.isa.asm import assemble, read_source
from braze.isa.config import PRESETS
from braze.isa.counters import COUNTER_BYTES, MAX_CYCLE_LIMIT
from braze.isa.encoding import CONTROL_FLOW_OPCODES, SCALAR_REGS
from braze.isa.errors import BrazeError, ExecutionError, UsageError
from braze.isa.timing import schedule

from .device import Device, GoldenDevice, RunStatus
from .progen import DEFAULT_SIZE, GeneratedProgram, Region, generate, generate_control_flow, sync_tokens

__all__ = [
    "Mismatch", "ProgramResult", "VerifyReport", "GeneratorError", "verify", "run_and_compare",
    "run_watchdog", "watchdog_limit", "minimise", "write_reproducer", "load_reproducer", "replay",
]

DeviceFactory = Callable[[Config], Device]

#: Bytes of external memory compared per read.
_CHUNK = 1 << 22
#: Differing bytes listed per mismatch.
_SHOWN_BYTES = 8
#: The device's watchdog limit: this many times the predicted cycles, plus _DEVICE_LIMIT_CYCLES.
#: Far above the timing model's error (the device takes about 1.5x the prediction without
#: backpressure), so that only a device that does not halt reaches it.
_DEVICE_LIMIT_FACTOR = 20
_DEVICE_LIMIT_CYCLES = 10_000


class GeneratorError(BrazeError):
    """The reference model rejected a generated program: a bug of the generator, not of the device."""


@dataclasses.dataclass(frozen=True)
class Mismatch:
    """One difference between the device and the reference model.

    ``kind`` is ``status``, ``counter``, ``memory`` or ``crash`` (the
    device raised an exception); ``first_bytes`` holds (address, expected,
    got) for the first differing bytes of a ``memory`` mismatch.
    """

    kind: str
    detail: str
    first_bytes: tuple[tuple[int, int, int], ...] = ()


@dataclasses.dataclass(frozen=True)
class WatchdogResult:
    """A run with a cycle limit below the program's length: the limit and both stopping pcs."""

    cycle_limit: int
    golden_pc: int | None
    device_pc: int | None


@dataclasses.dataclass
class ProgramResult:
    """The outcome of one generated program."""

    index: int
    seed: int
    instructions: int
    golden_cycles: int
    device_cycles: int | None
    mismatches: list[Mismatch]
    reproducer: Path | None = None
    watchdog: WatchdogResult | None = None

    @property
    def cycles_error(self) -> float | None:
        """(device - golden) / golden cycles, when the device ran to HALT."""
        if self.device_cycles is None or self.golden_cycles <= 0:
            return None
        return (self.device_cycles - self.golden_cycles) / self.golden_cycles


@dataclasses.dataclass
class VerifyReport:
    """The outcome of :func:`verify`."""

    device: str
    config: Config
    seed: int
    size: int
    results: list[ProgramResult]
    wall_seconds: float
    control_flow: bool = False

    @property
    def programs(self) -> int:
        return len(self.results)

    @property
    def failed(self) -> list[ProgramResult]:
        return [result for result in self.results if result.mismatches]

    @property
    def mismatches(self) -> int:
        """Programs with at least one mismatch."""
        return len(self.failed)

    @property
    def ok(self) -> bool:
        return not self.failed

    def _errors(self) -> list[tuple[float, ProgramResult]]:
        return [(result.cycles_error, result) for result in self.results if result.cycles_error is not None]

    @property
    def cycles_error_mean(self) -> float | None:
        """Mean of |device - golden| / golden cycles over the programs that halted on the device."""
        errors = self._errors()
        return sum(abs(error) for error, _ in errors) / len(errors) if errors else None

    @property
    def cycles_error_worst(self) -> float | None:
        """The signed relative cycle error of largest magnitude."""
        errors = self._errors()
        return max(errors, key=lambda item: abs(item[0]))[0] if errors else None

    def error_distribution(self) -> list[tuple[str, float, float]]:
        """The timing model's error over the programs that halted on the device: (statistic,
        relative error, error in cycles) for the mean, the 50th, 90th and 99th percentiles, the
        maximum and the minimum.  A program's error is (device - predicted) cycles, relative to
        the predicted."""
        pairs = [(result.cycles_error, result.device_cycles - result.golden_cycles)
                 for result in self.results if result.cycles_error is not None]
        if not pairs:
            return []
        relative = np.array([pair[0] for pair in pairs], dtype=np.float64)
        cycles = np.array([pair[1] for pair in pairs], dtype=np.float64)
        rows = [("mean", float(relative.mean()), float(cycles.mean()))]
        rows += [(f"p{q}", float(np.percentile(relative, q)), float(np.percentile(cycles, q)))
                 for q in (50, 90, 99)]
        rows += [("max", float(relative.max()), float(cycles.max())),
                 ("min", float(relative.min()), float(cycles.min()))]
        return rows

    def timing_table(self) -> str:
        """:meth:`error_distribution` as a table ('' when no program halted on the device)."""
        rows = self.error_distribution()
        if not rows:
            return ""
        cells = [("", "relative", "cycles")] + [(name, f"{rel:+.2%}", f"{cycles:+.0f}")
                                                 for name, rel, cycles in rows]
        widths = [max(len(row[i]) for row in cells) for i in range(3)]
        lines = [f"timing model error, (device - predicted) / predicted cycles, over {len(self._errors())} "
                 "programs that halted on the device:"]
        lines += ["  ".join(cell.ljust(width) if i == 0 else cell.rjust(width)
                            for i, (cell, width) in enumerate(zip(row, widths, strict=True)))
                  for row in cells]
        return "\n".join(lines)

    def summary(self) -> str:
        lines = [f"braze verify: device {self.device}, config {self.config.name!r}, "
                 f"seeds {self.seed}..{self.seed + max(self.programs, 1) - 1}, size {self.size}"
                 + (", control-flow programs" if self.control_flow else ""),
                 f"programs run:    {self.programs}",
                 f"mismatches:      {self.mismatches}"]
        errors = self._errors()
        if errors:
            worst, worst_result = max(errors, key=lambda item: abs(item[0]))
            lines.append(f"cycles fidelity: mean |error| {self.cycles_error_mean:.2%}, worst {worst:+.2%} "
                         f"(program {worst_result.index}, seed {worst_result.seed}: golden "
                         f"{worst_result.golden_cycles}, device {worst_result.device_cycles} cycles)")
        else:
            lines.append("cycles fidelity: no program halted on the device")
        stopped = [r.watchdog for r in self.results if r.watchdog is not None]
        if stopped:
            same = sum(w.device_pc == w.golden_pc for w in stopped)
            # With loops pcs repeat: the device's stop is an instruction of the program, not ordered by pc.
            other = "at another instruction" if self.control_flow else "earlier"
            lines.append(f"watchdog:        {len(stopped)} programs also run with a cycle limit below their "
                         f"length; device pc = reference pc in {same}, {other} in {len(stopped) - same}")
        rate = self.programs / self.wall_seconds if self.wall_seconds > 0 else 0.0
        lines.append(f"wall time:       {self.wall_seconds:.1f} s ({rate:.1f} programs/s)")
        for result in self.failed:
            lines.append(f"program {result.index} (seed {result.seed}): {len(result.mismatches)} mismatch(es)"
                         + (f"; reproducer {result.reproducer}" if result.reproducer else ""))
            lines.extend(f"  {mismatch.kind}: {mismatch.detail}" for mismatch in result.mismatches[:8])
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# One program on two devices


def _load_image(device: Device, program: GeneratedProgram) -> None:
    for addr, blob in program.image:
        device.write(addr, blob)


def _ignored_spans(program: GeneratedProgram) -> list[tuple[int, int]]:
    """External bytes not compared: the program itself and the timing counters of snapshots."""
    spans = [program.program_span]
    for region in program.outputs:
        if region.kind == "counters":
            spans.extend((region.addr + i * COUNTER_BYTES, region.addr + (i + 1) * COUNTER_BYTES)
                         for i, spec in enumerate(COUNTERS) if not spec.exact)
    return spans


def _memory_mismatches(program: GeneratedProgram, golden: Device, device: Device) -> list[Mismatch]:
    size = golden.memory_size
    if device.memory_size != size:
        return [Mismatch("memory", f"device has {device.memory_size} bytes of external memory, "
                                   f"the reference model {size}")]
    ignored = _ignored_spans(program)
    addrs, expected, got = [], [], []
    for start in range(0, size, _CHUNK):
        count = min(_CHUNK, size - start)
        mine, theirs = golden.read(start, count), device.read(start, count)
        if mine == theirs:
            continue
        mine_arr, theirs_arr = np.frombuffer(mine, np.uint8), np.frombuffer(theirs, np.uint8)
        differ = mine_arr != theirs_arr
        for lo, hi in ignored:
            lo, hi = max(lo - start, 0), min(hi - start, count)
            if lo < hi:
                differ[lo:hi] = False
        index = np.flatnonzero(differ)
        addrs.append(index + start)
        expected.append(mine_arr[index])
        got.append(theirs_arr[index])
    if not addrs:
        return []
    addr_all, exp_all, got_all = np.concatenate(addrs), np.concatenate(expected), np.concatenate(got)
    if not addr_all.size:
        return []
    # Group by region (outside any region last).
    regions: list[Region | None] = [*program.regions, None]
    owner = np.full(addr_all.size, len(regions) - 1)
    for i, region in enumerate(program.regions):
        owner[(addr_all >= region.addr) & (addr_all < region.end)] = i
    result = []
    for i, region in enumerate(regions):
        picked = np.flatnonzero(owner == i)
        if not picked.size:
            continue
        first = tuple((int(addr_all[j]), int(exp_all[j]), int(got_all[j])) for j in picked[:_SHOWN_BYTES])
        where = (f"{region.kind} region {region.name} ({region.size} bytes)" if region is not None
                 else "external memory outside the program's regions")
        if region is not None and region.kind == "counters":
            names = sorted({COUNTERS[(int(addr_all[j]) - region.addr) // COUNTER_BYTES].name for j in picked})
            where += f", counter(s) {', '.join(names)}"
        shown = ", ".join(f"0x{a:x}: expected 0x{e:02x} got 0x{g:02x}" for a, e, g in first)
        result.append(Mismatch("memory", f"{picked.size} byte(s) differ in {where}; first {shown}", first))
    return result


def _status_mismatches(golden: RunStatus, device: RunStatus) -> list[Mismatch]:
    result = []
    if device.timed_out:
        result.append(Mismatch("status", f"device did not halt within its cycle budget ({device.detail})"))
    elif device.cause is not ErrorCause.NONE or device.error_pc is not None:
        pc = f" at pc 0x{device.error_pc:x}" if device.error_pc is not None else ""
        detail = f": {device.detail}" if device.detail else ""
        result.append(Mismatch("status", f"device stopped with {device.cause.name.lower()}{pc}, "
                                         f"the reference model halted{detail}"))
    for spec in COUNTERS:
        if not spec.exact:
            continue
        want, have = golden.counters.get(spec.name), device.counters.get(spec.name)
        if want != have:
            result.append(Mismatch("counter", f"{spec.name}: expected {want}, device counted {have}"))
    return result


#: A control-flow program's length is bounded by this many times its straight-line length, plus
#: _LOOP_BOUND_CYCLES (generated loops run at most three times); beyond it, it does not end.
_LOOP_BOUND_FACTOR = 4
_LOOP_BOUND_CYCLES = 10_000


def _has_control_flow(program: GeneratedProgram) -> bool:
    return any(insn.opcode in CONTROL_FLOW_OPCODES for insn in program.instructions)


def _predicted_cycles(program: GeneratedProgram) -> int | None:
    """The timing model's length of the program, None if it is not a valid token order.

    With control flow, the length of the reference model's run (which follows the branches), None
    if that run fails or does not end within a bound on its straight-line length.
    """
    try:
        cycles = schedule(list(program.instructions), program.config, base=program.base).cycles
    except ExecutionError:
        return None
    if not _has_control_flow(program):
        return cycles
    golden = GoldenDevice(program.config)
    _load_image(golden, program)
    status = golden.run(None, base=program.base, check=False,
                        cycle_limit=min(_LOOP_BOUND_FACTOR * cycles + _LOOP_BOUND_CYCLES, MAX_CYCLE_LIMIT))
    return status.cycles if status.ok else None


def _scalar_mismatches(golden: Device, device: Device) -> list[Mismatch]:
    """Differences in the scalar registers r1..r7 after a run."""
    result = []
    for register in range(1, SCALAR_REGS):
        want, have = golden.read_scalar(register), device.read_scalar(register)
        if want != have:
            result.append(Mismatch("status",
                                   f"scalar register r{register}: expected {want}, device has {have}"))
    return result


def _golden_limit(program: GeneratedProgram) -> int:
    """A cycle limit the reference model reaches only if the program does not halt (0: none needed)."""
    predicted = _predicted_cycles(program)
    return 0 if predicted is None else min(predicted + 1, MAX_CYCLE_LIMIT)


def _device_limit(golden_cycles: int) -> int:
    return min(_DEVICE_LIMIT_FACTOR * golden_cycles + _DEVICE_LIMIT_CYCLES, MAX_CYCLE_LIMIT)


def run_and_compare(program: GeneratedProgram, golden: Device, device: Device
                    ) -> tuple[RunStatus, RunStatus | None, list[Mismatch]]:
    """Run ``program`` on both devices and compare; returns both statuses and the differences.

    Raises :class:`GeneratorError` if the reference model does not halt cleanly.
    """
    _load_image(golden, program)
    golden_status = golden.run(None, base=program.base, cycle_limit=_golden_limit(program), check=False)
    if not golden_status.ok:
        raise GeneratorError(f"the reference model rejects generated program (seed {program.seed}, config "
                             f"{program.config.name!r}): {golden_status.detail}")
    _load_image(device, program)
    limit = _device_limit(golden_status.cycles)
    try:
        device_status = device.run(None, base=program.base, cycle_limit=limit, max_cycles=2 * limit,
                                   check=False)
    except Exception as error:  # noqa: BLE001 -- a crashing back end is a finding, not the end of the run
        return golden_status, None, [Mismatch("crash", f"device raised {type(error).__name__}: {error}")]
    mismatches = _status_mismatches(golden_status, device_status)
    if _has_control_flow(program) and device_status.ok:
        mismatches += _scalar_mismatches(golden, device)
    mismatches += _memory_mismatches(program, golden, device)
    return golden_status, device_status, mismatches


def watchdog_limit(program: GeneratedProgram) -> int:
    """The cycle limit :func:`verify` gives ``program`` with ``watchdog``: drawn from its seed, below its
    predicted length."""
    predicted = _predicted_cycles(program)
    if predicted is None or predicted < 2:
        raise GeneratorError(f"generated program (seed {program.seed}) has no predicted length to cut short")
    return random.Random(program.seed).randrange(1, predicted)


def run_watchdog(program: GeneratedProgram, golden: Device, device: Device, cycle_limit: int
                 ) -> tuple[RunStatus, RunStatus | None, list[Mismatch]]:
    """Run ``program`` on both devices with a cycle limit below its length and compare how they stop.

    Both must stop with ``WATCHDOG`` and report ``cycle_limit`` run cycles.  The pcs are equal
    where the timing model predicts the dispatch times exactly; otherwise the device's must be an
    instruction of the program no later than the model's, because the model (free fetch, one
    dispatch per cycle, no memory stalls) never predicts an instruction dispatched later than the
    hardware dispatches it.  With control flow, where the pcs of a loop repeat, the device's
    pc must only be an instruction of the program.  Memory is not compared: as after any error
    it is defined only up to the last barrier.  Raises :class:`GeneratorError` if the reference
    model does not stop so.
    """
    _load_image(golden, program)
    golden_status = golden.run(None, base=program.base, cycle_limit=cycle_limit, check=False)
    if golden_status.cause is not ErrorCause.WATCHDOG:
        raise GeneratorError(f"generated program (seed {program.seed}) does not stop at the cycle limit "
                             f"{cycle_limit} on the reference model: {golden_status.detail or 'it halts'}")
    _load_image(device, program)
    try:
        device_status = device.run(None, base=program.base, cycle_limit=cycle_limit,
                                   max_cycles=2 * _device_limit(cycle_limit), check=False)
    except Exception as error:  # noqa: BLE001 -- a crashing back end is a finding, not the end of the run
        return golden_status, None, [Mismatch("crash", f"device raised {type(error).__name__}: {error}")]
    want = f"watchdog at run cycle {cycle_limit}, pc 0x{golden_status.error_pc:x} or earlier"
    if device_status.timed_out or device_status.cause is not ErrorCause.WATCHDOG:
        got = ("no interrupt within its budget" if device_status.timed_out
               else device_status.cause.name.lower())
        return golden_status, device_status, [Mismatch("status", f"with cycle limit {cycle_limit}: expected "
                                                                 f"{want}, device stopped with {got}")]
    start, end = program.program_span
    pc = device_status.error_pc
    latest = end if _has_control_flow(program) else golden_status.error_pc
    if device_status.cycles != cycle_limit or pc is None or not start <= pc <= latest \
            or (pc - start) % 16 or pc >= end:
        where = "no pc" if pc is None else f"pc 0x{pc:x}"
        return golden_status, device_status, [Mismatch("status", f"with cycle limit {cycle_limit}: expected "
                                                                 f"{want}, device stopped at run cycle "
                                                                 f"{device_status.cycles}, {where}")]
    return golden_status, device_status, []


def _fresh_run(program: GeneratedProgram, device_factory: DeviceFactory) -> list[Mismatch] | None:
    """Mismatches of ``program`` on fresh devices; None if the reference model rejects it."""
    golden = GoldenDevice(program.config)
    _load_image(golden, program)
    if not golden.run(None, base=program.base, cycle_limit=_golden_limit(program), check=False).ok:
        return None
    device = device_factory(program.config)
    try:
        return run_and_compare(program, GoldenDevice(program.config), device)[2]
    finally:
        device.close()


# ---------------------------------------------------------------------------------------------------------
# Minimising and reproducers


def minimise(program: GeneratedProgram, device_factory: DeviceFactory, *, max_trials: int = 64,
             time_budget: float = 60.0) -> tuple[GeneratedProgram, list[Mismatch]]:
    """A shorter program that still mismatches on fresh devices, and its mismatches.

    Drops blocks of instructions (halving the block size down to one),
    keeping a candidate when the reference model still accepts it and some
    mismatch remains.  Bounded by ``max_trials`` runs and ``time_budget``
    seconds.  Returns the program unchanged, with no mismatches, if the
    mismatch does not show on fresh devices.
    """
    deadline = time.monotonic() + time_budget
    trials = 0
    found = _fresh_run(program, device_factory)
    if not found:
        return program, []
    config = program.config
    core = [Instruction(insn.opcode, insn.args) for insn in program.instructions[:-1]]
    halt = program.instructions[-1]

    resynced = program.with_instructions(sync_tokens(config, core + [halt]))
    resync_found = _fresh_run(resynced, device_factory)
    trials += 1
    if resync_found:
        def build(insns: list[Instruction]) -> GeneratedProgram:
            return program.with_instructions(sync_tokens(config, insns + [halt]))
        best, found = resynced, resync_found
    else:
        core = list(program.instructions[:-1])

        def build(insns: list[Instruction]) -> GeneratedProgram:
            return program.with_instructions(insns + [halt])
        best = program

    block = max(1, len(core) // 2)
    while core and trials < max_trials and time.monotonic() < deadline:
        progress = False
        end = len(core)
        while end > 0 and trials < max_trials and time.monotonic() < deadline:
            start = max(0, end - block)
            candidate_core = core[:start] + core[end:]
            candidate = build(candidate_core)
            trials += 1
            result = _fresh_run(candidate, device_factory)
            if result:
                core, best, found, progress = candidate_core, candidate, result, True
            end = start
        if block == 1 and not progress:
            break
        if not progress or block > 1:
            block = max(1, block // 2)
    return best, found


def _config_spec(config: Config) -> str:
    return config.name if PRESETS.get(config.name) == config else config.to_json()


def write_reproducer(directory: Path | str, program: GeneratedProgram, mismatches: Sequence[Mismatch], *,
                     device: str, note: str = "") -> Path:
    """Write ``program.s``, ``image.bin`` + ``image.json`` and ``README.md`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = program.config
    header = (f"# Braze verify reproducer: config {config.name!r}, program at external address "
              f"0x{program.base:x}\n# generated from seed {program.seed}\n")
    (directory / "program.s").write_text(header + program.assembly)
    blob, segments, offset = bytearray(), [], 0
    for region in program.regions:
        blob += region.data
        segments.append({"name": region.name, "kind": region.kind, "addr": region.addr, "offset": offset,
                         "size": region.size})
        offset += region.size
    (directory / "image.bin").write_bytes(bytes(blob))
    manifest = {"config": config.to_dict(), "base": program.base, "seed": program.seed, "device": device,
                "segments": segments}
    (directory / "image.json").write_text(json.dumps(manifest, indent=1) + "\n")
    spec = _config_spec(config)
    lines = [
        f"# Braze verify reproducer ({device} device, config {config.name!r})",
        "",
        f"Rerun: `braze verify --device {device} --replay {directory}`",
        "",
    ]
    if program.seed is not None:
        lines += [f"The unminimised program: `braze verify --device {device} --config '{spec}' --programs 1 "
                  f"--seed {program.seed}`", ""]
    lines += [f"`program.s` ({len(program.instructions)} instructions) runs from external address "
              f"0x{program.base:x}; `image.bin` holds the other regions at the addresses in "
              "`image.json`.", ""]
    if note:
        lines += [note, ""]
    lines.append("Mismatches:")
    lines += [f"- {mismatch.kind}: {mismatch.detail}" for mismatch in mismatches]
    first = next((m.first_bytes for m in mismatches if m.first_bytes), ())
    if first:
        lines += ["", "First differing bytes (address: expected, got):"]
        lines += [f"- 0x{addr:x}: 0x{want:02x}, 0x{have:02x}" for addr, want, have in first]
    (directory / "README.md").write_text("\n".join(lines) + "\n")
    return directory


def load_reproducer(directory: Path | str) -> GeneratedProgram:
    """The program and memory image of a reproducer written by :func:`write_reproducer`."""
    directory = Path(directory)
    try:
        manifest = json.loads((directory / "image.json").read_text())
        blob = (directory / "image.bin").read_bytes()
        source = read_source(directory / "program.s")
    except FileNotFoundError as error:
        raise BrazeError(f"{directory} is not a verify reproducer: {error.filename} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BrazeError(f"{directory / 'image.json'} is malformed: {error}") from None
    try:
        config = Config.from_dict(manifest["config"])
        regions = []
        for segment in manifest["segments"]:
            data = blob[segment["offset"]:segment["offset"] + segment["size"]]
            if len(data) != segment["size"]:
                raise BrazeError(f"{directory / 'image.bin'} is too short for segment {segment['name']!r}")
            regions.append(Region(segment["name"], segment["addr"], data, segment["kind"]))
        base = int(manifest["base"])
    except (KeyError, TypeError, ValueError) as error:
        if isinstance(error, BrazeError):
            raise
        raise BrazeError(f"{directory / 'image.json'} is malformed: "
                         f"{type(error).__name__}: {error}") from None
    instructions = assemble(source, filename=str(directory / "program.s"))
    return GeneratedProgram(config, manifest.get("seed"), base, tuple(instructions), tuple(regions))


def replay(directory: Path | str, device_factory: DeviceFactory) -> tuple[GeneratedProgram, list[Mismatch]]:
    """Run a reproducer on fresh devices; returns its program and the mismatches found."""
    program = load_reproducer(directory)
    device = device_factory(program.config)
    try:
        return program, run_and_compare(program, GoldenDevice(program.config), device)[2]
    finally:
        device.close()


# ---------------------------------------------------------------------------------------------------------
# The verification run


def verify(device_factory: DeviceFactory, config: Config, programs: int = 20, seed: int = 0, *,
           reproducer_dir: Path | str | None = None, size: int = DEFAULT_SIZE, reuse_devices: bool = True,
           minimise_trials: int = 64, minimise_seconds: float = 60.0, watchdog: bool = False,
           control_flow: bool = False) -> VerifyReport:
    """Run ``programs`` generated programs on the reference model and on ``device_factory(config)``.

    Parameters
    ----------
    device_factory : callable
        Makes the device under test for a configuration (``DEVICES[name]``, say).
    config : Config
    programs, seed : int
        Program ``i`` is ``generate(config, seed + i, size=size)``.
    reproducer_dir : path, optional
        Where to write one reproducer directory per mismatching program.
    reuse_devices : bool
        Run every program on the same pair of devices (both are reopened
        after a mismatch); otherwise open a fresh pair per program.
    minimise_trials, minimise_seconds
        Effort bound of :func:`minimise` per mismatching program (0 trials: no minimising).
    watchdog : bool
        First run each program with a cycle limit below its length (:func:`watchdog_limit`,
        :func:`run_watchdog`); a mismatch there is reported like any other (no reproducer).
    control_flow : bool
        Program ``i`` is ``generate_control_flow(config, seed + i, size=size)`` instead.
    """
    if not isinstance(config, Config):
        raise TypeError(f"verify needs a Config, not {config!r}")
    if isinstance(programs, bool) or not isinstance(programs, int) or programs < 0:
        raise UsageError(f"verify: programs={programs!r} must be a non-negative integer")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UsageError(f"verify: seed={seed!r} must be a non-negative integer")
    started = time.monotonic()
    results: list[ProgramResult] = []
    pair: tuple[Device, Device] | None = None
    device_kind = "device"
    try:
        for index in range(programs):
            program = (generate_control_flow if control_flow else generate)(config, seed + index, size=size)
            if pair is None:
                pair = (GoldenDevice(config), device_factory(config))
                device_kind = pair[1].kind
            stopped = None
            mismatches: list[Mismatch] = []
            if watchdog:
                # Before the full run, which reloads the memory image the stopped run left half-written.
                limit = watchdog_limit(program)
                stopped_golden, stopped_device, mismatches = run_watchdog(program, *pair, limit)
                stopped = WatchdogResult(limit, stopped_golden.error_pc,
                                         stopped_device.error_pc if stopped_device is not None else None)
            golden_status, device_status, full_mismatches = run_and_compare(program, *pair)
            mismatches += full_mismatches
            result = ProgramResult(index, seed + index, len(program.instructions), golden_status.cycles,
                                   device_status.cycles if device_status is not None and device_status.ok
                                   else None, mismatches, watchdog=stopped)
            if mismatches or not reuse_devices:
                pair[1].close()
                pair = None
            else:
                # Timing counters in snapshots may rightly differ; copy them over so that the next
                # program's comparison of the whole memory starts from identical memories.
                for lo, hi in _ignored_spans(program):
                    pair[1].write(lo, pair[0].read(lo, hi - lo))
            if mismatches and reproducer_dir is not None:
                result.reproducer = _reproduce(program, mismatches, device_factory, device_kind,
                                               Path(reproducer_dir), minimise_trials, minimise_seconds)
            results.append(result)
    finally:
        if pair is not None:
            pair[1].close()
    return VerifyReport(device_kind, config, seed, size, results, time.monotonic() - started, control_flow)


def _reproduce(program: GeneratedProgram, mismatches: list[Mismatch], device_factory: DeviceFactory,
               device_kind: str, root: Path, trials: int, seconds: float) -> Path:
    note = ""
    if trials > 0:
        small, found = minimise(program, device_factory, max_trials=trials, time_budget=seconds)
        if found:
            note = (f"Minimised from {len(program.instructions)} to {len(small.instructions)} instructions.")
            program, mismatches = small, found
        else:
            note = ("The mismatch did not show when rerun on fresh devices (it may depend on state left by "
                    "earlier programs); this is the unminimised program.")
    name = f"{device_kind}-{program.config.name}-seed{program.seed}"
    return write_reproducer(root / name, program, mismatches, device=device_kind, note=note)

