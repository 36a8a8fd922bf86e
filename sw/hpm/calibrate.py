"""Calibration: run a representative, diverse set of kernels on a device and record what they cost.

:func:`calibration_kernels` draws kernels from the kernel library -- GEMMs and convolutions across
shapes, strides, padding and fused epilogues, alternative tilings and single buffering, pools and
element-wise kernels -- so that few runs cover the space the compiler generates: candidate specs
are bucketed by family and arithmetic intensity (MACs per external byte, which decides whether a
kernel is bound by the array or by memory) and by burst shape (bytes per row: short strided rows
stall on the memory's latency, long rows stream), and drawn round-robin over the buckets.

:func:`calibrate` runs them on a device under several memory backpressure levels, one history row
per run, skipping what the history already holds (so an interrupted calibration resumes), within
an optional time budget, and reports progress.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np

from braze.isa import INSN_BYTES, SNAPSHOT_BYTES, BrazeError, Config, Instruction, Opcode, parse_snapshot
from braze.isa.timing import element_bytes

from ..compiler import kernels as library
from ..compiler.cache import default_cache
from ..compiler.energy import kernel_energy_pj
from ..compiler.kernels import OPERAND_ALIGN, Kernel, KernelError, Tiling
from .features import (
    FEATURE_VERSION,
    MemorySystem,
    kernel_family,
    kernel_features,
    kernel_signature,
    program_features,
)
from .store import HistoryStore, RunRecord, group_repeats, pack_program, signature_hash, unpack_program

__all__ = ["KernelSpec", "calibration_specs", "calibration_kernels", "calibrate", "CalibrationReport",
           "random_inputs", "record_run", "DEFAULT_STALLS", "tiling_variants", "refeature", "RefeatureReport",
           "STRATEGIES", "most_uncertain", "CalibrationOptionError", "DEFAULT_REPEATS", "REPEAT_BELOW_CYCLES",
           "calibration_seed", "wanted_runs", "coverage_order", "repeat_measurements",
           "repeat_worst_measured_once", "WORST_TO_REPEAT"]

#: Backpressure levels calibration runs every kernel under (probability per AXI handshake).
DEFAULT_STALLS = (0.0, 0.1, 0.25, 0.4)
#: Runs of one kernel under backpressure, each with its own recorded stall pattern (seed): a short
#: kernel's cycles depend on where its few memory requests fall in the random stall pattern --
#: measured on the default preset, a 300-cycle GEMM at backpressure 0.4 takes 297..319 cycles over
#: eight seeds -- so one run is a noisy sample of what the kernel costs; the model learns from, and
#: is judged against, the mean of the repeats, and their spread is the noise floor.
DEFAULT_REPEATS = 3
#: Kernels the analytic model expects to take at least this many cycles are run once per
#: backpressure level: over thousands of memory requests the stalls average out (spread < 1%).
REPEAT_BELOW_CYCLES = 4096
#: Calibration seeds are idle cycles before a run (:meth:`VerilatorDevice.set_stall_seed`): kept small.
CALIBRATION_SEEDS = 4096


def calibration_seed(signature_hash: str, repeat: int) -> int:
    """The backpressure seed of a kernel's ``repeat``-th calibration run: fixed by the kernel, so that
    a calibration repeated elsewhere measures the same patterns, and different across kernels, so
    that no one pattern's luck is shared by every kernel."""
    digest = hashlib.sha256(f"{signature_hash}:{repeat}".encode()).digest()
    return int.from_bytes(digest[:4], "little") % CALIBRATION_SEEDS


def wanted_runs(kernel: Kernel, stall: float, repeats: int) -> int:
    """How many runs calibration makes of ``kernel`` under backpressure ``stall``."""
    if stall <= 0.0 or kernel.predicted_cycles >= REPEAT_BELOW_CYCLES:
        return 1            # no backpressure: the RTL is deterministic; long kernels average out
    return repeats


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    """A kernel to generate: the library function's name and its arguments."""

    function: str
    args: tuple
    options: tuple = ()

    def build(self, config: Config, **extra) -> Kernel:
        return getattr(library, self.function)(config, *self.args, **dict(self.options), **extra)

    def cached(self, config: Config, tiling: Tiling | None = None) -> Kernel:
        """:meth:`build` (with ``tiling`` forced, if given) through the kernel cache: a calibration
        resumed in slices draws its few hundred kernels from disk instead of generating them again
        (on tiny, two minutes of every slice)."""
        extra = {} if tiling is None else {"tiling": tiling}
        signature = ("calibration", self.function, self.args, self.options, repr(tiling))
        return default_cache().get_or_build(signature, config, lambda: self.build(config, **extra))


def _gemm_specs(config: Config) -> list[KernelSpec]:
    specs = []
    epilogues = [(), (("bias", True), ("requant", True), ("act", "relu")),
                 (("bias", True), ("requant", True), ("residual", True), ("act", "relu"))]
    for m, k, n in itertools.product((1, 4, 16, 37, 64, 128), (8, 24, 64, 150, 256), (4, 16, 40, 64, 128)):
        for epilogue in epilogues:
            specs.append(KernelSpec("gemm", (m, k, n), epilogue))
    return specs


def _conv_specs(config: Config) -> list[KernelSpec]:
    specs = []
    for n, c, hw, k_out, (kh, stride, pad) in itertools.product(
            (1, 2, 4), (1, 3, 8, 16), (6, 8, 12, 16), (4, 8, 16),
            ((3, 1, 1), (3, 1, 0), (3, 2, 1), (1, 1, 0), (5, 1, 2), (2, 2, 0))):
        if hw + 2 * pad < kh:
            continue
        for epilogue in ((), (("bias", True), ("requant", True), ("act", "relu"))):
            specs.append(KernelSpec("conv2d", (n, c, hw, hw, k_out, kh, kh, stride, pad), epilogue))
    return specs


def _pool_specs(config: Config) -> list[KernelSpec]:
    specs = []
    for kind, n, c, hw, (k, stride, pad) in itertools.product(
            ("maxpool2d", "avgpool2d"), (1, 2, 4), (4, 8, 16), (4, 8, 12),
            ((2, 2, 0), (3, 1, 1), (3, 2, 1))):
        specs.append(KernelSpec(kind, (n, c, hw, hw, k, k, stride, pad)))
    for n, hw, c in itertools.product((1, 2, 4), (2, 4, 7), (4, 8, 16, 32)):
        specs.append(KernelSpec("global_avgpool", (n, hw, hw, c)))
    return specs


def _elementwise_specs(config: Config) -> list[KernelSpec]:
    specs = []
    for shape in ((4, 8), (16, 16), (64, 10), (2, 8, 8, 8), (4, 12, 12, 16), (256, 64)):
        specs.append(KernelSpec("relu", (shape,)))
        specs.append(KernelSpec("clip", (shape, -20, 90)))
        specs.append(KernelSpec("add", (shape,)))
        specs.append(KernelSpec("add", (shape,), (("x_scale", (3, 2)), ("y_scale", (5, 3)), ("out_zp", 4))))
    return specs


def _conv_pool_specs(config: Config) -> list[KernelSpec]:
    """Convolutions with the max pooling fused into them (``pool=2``: the fusion engine's ``conv_pool``).

    Its own family (``conv2d+bias+requant+maxpool``): its epilogue is followed by VECTOR max over
    the window's row blocks and a STORE of a quarter of the rows.  Without these runs the learned
    model extrapolated the family from plain convolutions: it priced the digits CNN's fused conv2+pool
    39% over the analytic model on the default preset.  Batches up to 64 images: with small kernels
    only, it still over-priced that kernel (about 30,000 cycles) by 7.5%.  No batch of 64 6x6 images:
    the digits CNN's conv2 (64 images of 6x6x8) is the kernel ``compare_plans`` judges the learned
    plan on, and stays unseen (smaller batches of 6x6 images cover its few pixels per image).
    """
    specs = []
    for n, c, hw, k_out, (kh, stride, pad) in itertools.product(
            (1, 2, 4, 16, 64), (1, 4, 8, 16), (6, 8, 10, 12, 16), (4, 8, 16, 32),
            ((3, 1, 1), (3, 1, 0), (5, 1, 2), (1, 1, 0))):
        if hw == 6 and n == 64:
            continue
        specs.append(KernelSpec("conv2d", (n, c, hw, hw, k_out, kh, kh, stride, pad),
                                (("bias", True), ("requant", True), ("act", "relu"), ("pool", 2))))
    return specs


def _thin_gemm_specs(config: Config) -> list[KernelSpec]:
    """GEMMs of one or two rows and a long K, without a residual: hundreds of one-beat LOADs, whose
    stalls under backpressure the memory-aware baseline over-counts by 10-25%.  The stratified GEMM
    draw rarely takes them outside the residual family, so held out, that family's m=1 kernels were
    predicted up to 13.6% high: nothing else taught the model the effect."""
    specs = []
    for m, k, n in itertools.product((1, 2), (150, 256, 512), (4, 16, 40)):
        for epilogue in ((), (("bias", True), ("requant", True), ("act", "relu"))):
            specs.append(KernelSpec("gemm", (m, k, n), epilogue))
    return specs


#: (channels, height = width) of the digits CNN's convolutions' inputs (:mod:`braze.sw.compiler.models`).
DIGITS_CNN_INPUTS = frozenset({(1, 8), (8, 6)})


def _conv_layout_specs(config: Config) -> list[KernelSpec]:
    """Batched convolutions in each of ``conv2d``'s layouts (rows, pixels, resident), forced.

    The library keeps the layout the timing model prices fastest, so without these runs the model
    sees little of the others, and cannot tell where backpressure reverses the order (the row-major
    layout re-reads the input in many short LOADs; the resident one reads each pixel once).  Specs
    whose layout does not fit the convolution fail to build and are passed over.  Neither of the
    digits CNN's convolutions (1 channel of 8x8, 8 channels of 6x6) at any batch: the CNN's plans,
    which ``benchmarks/hpm_plans.py`` and ``braze bench hpm`` judge the learned model on, stay unseen.
    """
    if config.rows < 8:
        return []       # tiny's 4x4 array: each batched convolution takes seconds to generate and run
    specs = []
    for n, c, hw, k_out, (kh, stride, pad), pool, layout in itertools.product(
            (8, 16, 32, 64), (1, 4, 8, 16), (6, 8, 10, 12), (8, 16, 32), ((3, 1, 0), (3, 1, 1), (5, 1, 2)),
            (1, 2), ("rows", "pixels", "resident")):
        if (c, hw) in DIGITS_CNN_INPUTS:
            continue
        options = (("bias", True), ("requant", True), ("act", "relu"), ("layout", layout))
        specs.append(KernelSpec("conv2d", (n, c, hw, hw, k_out, kh, kh, stride, pad),
                                options + ((("pool", 2),) if pool > 1 else ())))
    return specs


def _small_pool_specs(config: Config) -> list[KernelSpec]:
    """Max and average pooling of small images (3x3 to 6x6), every window, each shape in both kinds.

    A pool over a small image LOADs a row or two of each window at a time, and there the memory-aware
    baseline over-counts the hand-offs (the tiny preset's 2x2 pools of 4x4 images measure 5-12% under
    it), while over larger images it under-counts them by about 5%.  The stratified pool draw took few
    small images, nearly all of them max pools, so held out, ``maxpool2d`` learned the effect from
    two average pools and its 4x4 images were priced up to 15% high.  Max and average pooling run
    the same program shape (the VECTOR op differs), so each kind teaches the other.
    """
    specs = []
    for n, c, hw, (k, stride, pad), kind in itertools.product(
            (1, 2, 4, 8), (4, 8, 16, 32), (3, 4, 5, 6), ((2, 2, 0), (3, 2, 1), (3, 1, 1), (2, 1, 0)),
            ("maxpool2d", "avgpool2d")):
        if hw + 2 * pad < k:
            continue
        specs.append(KernelSpec(kind, (n, c, hw, hw, k, k, stride, pad)))
    return specs


def _plain_conv_layout_specs(config: Config) -> list[KernelSpec]:
    """Batched convolutions in each forced layout without an epilogue (the ``conv2d`` family).

    :func:`_conv_layout_specs` fuses the epilogue into all of its convolutions, so the pixel-major
    and resident layouts were seen only in the fused families, and held out, the fused ``conv2d+bias+
    requant`` family learned how backpressure treats them from the fused max pooling family alone
    (priced up to 15% low at backpressure 0.4 on the default preset).  Same shapes, and the same
    exclusion of the digits CNN's inputs.
    """
    if config.rows < 8:
        return []
    specs = []
    for n, c, hw, k_out, (kh, stride, pad), layout in itertools.product(
            (8, 16, 32), (1, 4, 8, 16), (6, 8, 10, 12), (8, 16, 32), ((3, 1, 0), (3, 1, 1), (5, 1, 2)),
            ("rows", "pixels", "resident")):
        if (c, hw) in DIGITS_CNN_INPUTS:
            continue
        specs.append(KernelSpec("conv2d", (n, c, hw, hw, k_out, kh, kh, stride, pad), (("layout", layout),)))
    return specs


#: The families' groups and their shares of a calibration.  (A group added later goes at the end:
#: the groups before it draw the same kernels, so a calibration that ran before resumes.)
_GROUPS = (("gemm", _gemm_specs, 0.35), ("conv2d", _conv_specs, 0.35), ("pool", _pool_specs, 0.15),
           ("elementwise", _elementwise_specs, 0.15), ("conv_pool", _conv_pool_specs, 0.1),
           ("thin_gemm", _thin_gemm_specs, 0.05), ("conv_layout", _conv_layout_specs, 0.1),
           ("small_pool", _small_pool_specs, 0.1), ("plain_conv_layout", _plain_conv_layout_specs, 0.05))


def calibration_specs(config: Config) -> list[KernelSpec]:
    """Every candidate spec for ``config`` (many more than a calibration runs)."""
    return [spec for _, specs, _ in _GROUPS for spec in specs(config)]


def tiling_variants(kernel: Kernel) -> list[Tiling]:
    """Other tilings of a GEMM/convolution kernel than the one the timing model chose (some may not fit)."""
    if not kernel.tiling or "m" not in kernel.tiling:
        return []
    chosen = Tiling(**{field.name: kernel.tiling[field.name] for field in dataclasses.fields(Tiling)})
    variants = {
        dataclasses.replace(chosen, m=max(1, chosen.m // 2)),
        dataclasses.replace(chosen, first_pieces=1),
        dataclasses.replace(chosen, buffers=1, first_pieces=1),
        dataclasses.replace(chosen, b_resident=False),      # streamed B (already so with K blocks)
    }
    variants.discard(chosen)
    return sorted(variants, key=repr)


def _fits_memory(kernel: Kernel) -> bool:
    """Whether the kernel's operands and its program (placed after them, as ``run_kernel`` does) fit
    the configuration's external memory."""
    program_addr = -(-kernel.data_end // library.OPERAND_ALIGN) * library.OPERAND_ALIGN
    return program_addr + (len(kernel.instructions) + 1) * INSN_BYTES <= kernel.config.dram_bytes


def _bucket(kernel: Kernel) -> tuple:
    """Family, arithmetic-intensity decade and burst-shape octave of a kernel."""
    external = sum(op.nbytes for op in kernel.operands.values() if op.role != "counters")
    intensity = kernel.macs / max(1, external)
    loads = [insn for insn in kernel.instructions if insn.opcode is Opcode.LOAD and not insn.zero]
    row_bytes = np.mean([insn.len * element_bytes(insn.mem) for insn in loads]) if loads else 0
    return (kernel_family(kernel), round(math.log10(intensity + 1) * 2),
            round(math.log2(row_bytes + 1)))


def calibration_kernels(config: Config, *, count: int = 200, seed: int = 0, tilings: bool = True,
                        log: Callable[[str], None] | None = None) -> list[Kernel]:
    """About ``count`` kernels covering ``config``'s space, stratified (see the module documentation).

    Each group of families (GEMM, convolution, pools, element-wise) gets its share of ``count``;
    within a group, specs are built in a seeded random order (about 1.5 times the share) and drawn
    round-robin over their intensity/burst buckets.  With ``tilings``, some GEMMs and convolutions
    also come in alternative tilings (forced), so that the model sees what the compiler's choices
    cost, not only its favourites.
    """
    with library.isolated_memos():
        chosen, buckets_seen = _draw_kernels(config, count, seed, tilings)
    if log:
        log(f"{config.name}: {len(chosen)} calibration kernels from {buckets_seen} intensity/burst buckets")
    return chosen


def _draw_kernels(config: Config, count: int, seed: int, tilings: bool) -> tuple[list[Kernel], int]:
    """:func:`calibration_kernels`' draw, and how many buckets it drew from."""
    rng = random.Random(seed)
    chosen: list[Kernel] = []
    buckets_seen = 0
    for _, make_specs, share in _GROUPS:
        quota = max(1, round(count * share))
        specs = make_specs(config)
        rng.shuffle(specs)
        buckets: dict[tuple, list[Kernel]] = defaultdict(list)
        built = 0
        for spec in specs:
            if built >= 1.5 * quota:
                break
            try:
                kernel = spec.cached(config)
            except (KernelError, ValueError):
                continue             # does not fit this configuration
            if not _fits_memory(kernel):
                continue
            buckets[_bucket(kernel)].append(kernel)
            built += 1
            if tilings and kernel.name in ("gemm", "conv2d") and rng.random() < 0.3:
                for tiling in tiling_variants(kernel):
                    try:
                        variant = spec.cached(config, tiling)
                    except (KernelError, ValueError):
                        continue
                    if not _fits_memory(variant):
                        continue
                    buckets[_bucket(variant)].append(variant)
                    built += 1
        queues = [buckets[key] for key in sorted(buckets)]
        buckets_seen += len(queues)
        taken = 0
        while taken < quota and any(queues):
            for queue in queues:
                if queue and taken < quota:
                    chosen.append(queue.pop(0))
                    taken += 1
    return chosen, buckets_seen


def coverage_order(kernels: Sequence[Kernel]) -> list[Kernel]:
    """``kernels`` round-robin over their families (in order of each family's first kernel; within a
    family in their own order): a calibration stopped early by its budget has measured every family,
    not the first groups' alone, and a held-out evaluation has each family to hold out."""
    by_family: dict[str, list[Kernel]] = {}
    for kernel in kernels:
        by_family.setdefault(kernel_family(kernel), []).append(kernel)
    queues = list(by_family.values())
    return [queue[i] for i in range(max(map(len, queues), default=0)) for queue in queues if i < len(queue)]


def random_inputs(kernel: Kernel, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random values for every input operand of ``kernel`` (timing does not depend on them)."""
    inputs = {}
    for op in kernel.inputs():
        if op.name == "params":
            columns = op.shape[1]
            given = {"bias": rng.integers(-1000, 1000, columns), "mult": rng.integers(1, 1 << 15, columns),
                     "shift": rng.integers(8, 20, columns)}
            inputs[op.name] = library.pack_params(kernel, **{name: given[name] for name in kernel.param_rows})
        else:
            inputs[op.name] = rng.integers(-128, 128, size=op.shape).astype(op.dtype)
    return inputs


def record_run(kernel: Kernel, counters: dict, *, device: str, memory: MemorySystem, source: str,
               predicted_cycles: int | None = None, predictor: str | None = None,
               energy_pj: float | None = None) -> RunRecord:
    """The history row of one run of ``kernel`` whose snapshot held ``counters``."""
    config = kernel.config
    if energy_pj is None:
        energy_pj = kernel_energy_pj(counters, config)["total"]
    return RunRecord(family=kernel_family(kernel), signature=kernel_signature(kernel),
                     config_name=config.name, config=config.to_dict(), device=device,
                     read_latency=memory.read_latency, stall=memory.stall,
                     features=kernel_features(kernel, config, memory),
                     counters={name: int(value) for name, value in counters.items()},
                     predicted_cycles=predicted_cycles if predicted_cycles is not None
                     else int(kernel.predicted_cycles),
                     predictor=predictor or "isa-timing", source=source, energy_pj=energy_pj,
                     program=pack_program(kernel.instructions))


@dataclasses.dataclass
class RefeatureReport:
    """What :func:`refeature` did."""

    refeatured: int = 0
    programs_found: int = 0
    current: int = 0
    left: int = 0

    def summary(self) -> str:
        return (f"refeature: {self.refeatured} runs given feature version {FEATURE_VERSION} "
                f"({self.programs_found} of them matched to regenerated calibration kernels), "
                f"{self.current} already current, {self.left} left (no program: run `braze hpm calibrate`)")


def refeature(store: HistoryStore, *, count: int = 200, seed: int = 0,
              progress: Callable[[str], None] | None = print) -> RefeatureReport:
    """Recompute the features of history rows recorded with other features, without running anything.

    Features are a function of the program and the memory system, both stored with each run; the
    measured counters stay as they are.  Rows recorded before the history stored programs are
    matched (by their signature) against the calibration kernels of their configuration
    (``count``/``seed`` as the calibration that recorded them) and get their program too; rows
    that match nothing are left for a calibration to run again.
    """
    report = RefeatureReport()
    stale = [record for record in store.records(programs=True)
             if record.features.get("feature_version") != FEATURE_VERSION]
    report.current = store.count() - len(stale)
    regenerated: dict[tuple[str, str], Kernel] = {}
    for config_name in sorted({record.config_name for record in stale if record.program is None}):
        rows = [record for record in stale if record.config_name == config_name]
        config = Config.from_dict(rows[0].config)
        versions = {record.signature.get("feature_version") for record in rows}
        for kernel in calibration_kernels(config, count=count, seed=seed, log=progress):
            for version in versions:
                old = dict(kernel_signature(kernel), feature_version=version)
                regenerated[(config_name, signature_hash(old))] = kernel
    updates = []
    for record in stale:
        program = None
        if record.program is not None:
            instructions = unpack_program(record.program)
        else:
            kernel = regenerated.get((record.config_name, record.signature_hash))
            if kernel is None:
                report.left += 1
                continue
            instructions = kernel.instructions
            program = pack_program(instructions)
            report.programs_found += 1
        config = Config.from_dict(record.config)
        features = program_features(instructions, config, MemorySystem(record.read_latency, record.stall))
        signature = dict(record.signature, feature_version=FEATURE_VERSION)
        updates.append((record.id, signature, features, program))
    report.refeatured = store.update_features(updates)
    if progress:
        progress(report.summary())
    return report


@dataclasses.dataclass
class CalibrationReport:
    """What a calibration did."""

    ran: int = 0
    skipped: int = 0
    failed: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    out_of_time: bool = False

    def summary(self) -> str:
        return (f"calibration: {self.ran} runs recorded, {self.skipped} already in the history, "
                f"{len(self.failed)} failed, {self.seconds:.0f} s"
                + (" (stopped at the time budget; run again to continue)" if self.out_of_time else ""))


class CalibrationOptionError(BrazeError, ValueError):
    """A calibration was asked for with options it cannot follow."""


#: How calibration orders its runs (``calibrate(strategy=...)``).
STRATEGIES = ("stratified", "uncertainty")


def most_uncertain(model, items: Sequence[tuple], take: int, read_latency: int) -> list[int]:
    """Indices of the ``take`` (stall, kernel, ...) items whose predicted 10%..90% band is widest
    relative to the prediction: where the model knows least, a run teaches it most."""
    features = [kernel_features(kernel, kernel.config, MemorySystem(read_latency, stall))
                for stall, kernel, *_ in items]
    widths = np.array([prediction.uncertainty for prediction in model.predict_features(features)])
    return [int(i) for i in np.argsort(-widths, kind="stable")[:take]]


def _next_batch(strategy: str, done: int, limit: int, seed_runs: int, pending: list, store: HistoryStore,
                config: Config, device: str) -> list[int]:
    """Indices into ``pending`` of the runs to make next (see :func:`calibrate`'s strategies)."""
    from .model import ModelError, PerformanceModel

    if strategy == "stratified":
        return list(range(limit - done))
    if done < seed_runs:
        return list(range(seed_runs - done))
    size = max(1, limit // 10)
    history = [record for record in store.records(config=config.to_dict(), device=device)
               if record.features.get("feature_version") == FEATURE_VERSION]
    try:
        return most_uncertain(PerformanceModel().fit(history), pending, size, config.mem_latency)
    except ModelError:             # too little history of this configuration yet
        return list(range(size))


def calibrate(configs: Sequence[Config], *, device: str = "verilator",
              stalls: Sequence[float] = DEFAULT_STALLS, count: int = 200, store: HistoryStore | None = None,
              budget_seconds: float | None = None, seed: int = 0,
              progress: Callable[[str], None] | None = print,
              device_options: dict | None = None, strategy: str = "stratified",
              runs: int | None = None, repeats: int = DEFAULT_REPEATS) -> CalibrationReport:
    """Run calibration kernels on ``device`` for each configuration and backpressure level.

    Resumable: a (kernel, configuration, device, memory system) already in the history is skipped.
    Under backpressure, a short kernel (analytic cycles < :data:`REPEAT_BELOW_CYCLES`) is run
    ``repeats`` times, each under its own recorded stall pattern (:func:`calibration_seed`, on a
    device with ``set_stall_seed``), counting the runs the history already has.
    ``budget_seconds`` stops after that long (between runs).  Kernels whose run fails are named
    in the report, not fatal.  ``runs`` caps the new runs per configuration.

    ``strategy="stratified"`` runs the candidates in their stratified order, kernel by kernel
    (each under every backpressure level) and family by family in turn (:func:`coverage_order`),
    so that a calibration its budget stops covers every family and level.  ``"uncertainty"``
    (active learning) runs the first quarter of them in that order, then, in batches of a tenth,
    those whose band a model trained on the history so far finds widest -- measured offline on
    the tiny history (``benchmarks/hpm_active_learning.py``), half the runs chosen so give a lower
    held-out error than the stratified or a random half.
    """
    from braze.sim.device import open_device

    from ..compiler.kernels import run_kernel

    if strategy not in STRATEGIES:
        raise CalibrationOptionError(f"no calibration strategy {strategy!r}; strategies are "
                                     f"{', '.join(STRATEGIES)}")
    if runs is not None and runs < 1:
        raise CalibrationOptionError(f"runs={runs!r}: a calibration makes at least 1 run per configuration")
    if not isinstance(repeats, int) or repeats < 1:
        raise CalibrationOptionError(f"repeats={repeats!r}: a kernel is run at least once per backpressure "
                                     f"level")
    store = store if store is not None else HistoryStore()
    report = CalibrationReport()
    started = time.monotonic()
    rng = np.random.default_rng(seed)
    for config in configs:
        kernels = calibration_kernels(config, count=count, seed=seed, log=progress)
        levels = list(stalls) if device in ("verilator", "amaranth") else [0.0]
        read_latency = config.mem_latency
        pending = []
        # Kernel-major, families interleaved: whatever part of the calibration the budget allows
        # covers every family under every backpressure level (repeats included).
        for kernel, stall in [(kernel, stall) for kernel in coverage_order(kernels) for stall in levels]:
            signature = kernel_signature(kernel)
            stored = store.stall_seeds(signature, config.to_dict(), device, read_latency, stall)
            wanted = wanted_runs(kernel, stall, repeats)
            if len(stored) >= wanted:
                report.skipped += 1
                continue
            seeds = [seed for seed in dict.fromkeys(calibration_seed(signature_hash(signature), repeat)
                                                    for repeat in range(wanted + len(stored)))
                     if seed not in stored]
            pending.extend((stall, kernel, seed) for seed in seeds[:wanted - len(stored)])
        limit = len(pending) if runs is None else min(runs, len(pending))
        seed_runs = max(20, limit // 4)
        done = 0
        with open_device(device, config, **(device_options or {})) as dev:
            current_stall = None
            seeded = hasattr(dev, "set_stall_seed")
            while done < limit and pending and not report.out_of_time:
                batch = _next_batch(strategy, done, limit, seed_runs, pending, store, config, device)
                chosen = [pending[i] for i in batch if i < len(pending)]
                picked = set(batch)
                pending = [item for i, item in enumerate(pending) if i not in picked]
                for stall, kernel, seed in chosen:
                    if budget_seconds is not None and time.monotonic() - started > budget_seconds:
                        report.out_of_time = True
                        break
                    done += 1
                    if stall != current_stall and hasattr(dev, "set_stall"):
                        dev.set_stall(stall)
                        current_stall = stall
                    if seeded:
                        dev.set_stall_seed(seed)
                    try:
                        result = run_kernel(dev, kernel, random_inputs(kernel, rng))
                    except BrazeError as error:
                        what = f"{kernel_family(kernel)} {kernel_signature(kernel)['operands']}"
                        report.failed.append(f"{what}: {str(error).splitlines()[0]}")
                        continue
                    record = record_run(kernel, result.counters, device=device,
                                        memory=MemorySystem(read_latency, stall), source="calibrate")
                    record.stall_seed = seed if seeded else None
                    store.add(record)
                    report.ran += 1
                    if progress and done % 25 == 0:
                        progress(f"{config.name}: {done}/{limit} runs ({time.monotonic() - started:.0f} s)")
        if report.out_of_time:
            break
    report.seconds = time.monotonic() - started
    return report


def _data_end(instructions: Sequence[Instruction]) -> int:
    """One past the last external byte a program's LOADs, STOREs and COUNTERS touch."""
    end = 0
    for insn in instructions:
        if insn.opcode in (Opcode.LOAD, Opcode.STORE) and not (insn.opcode is Opcode.LOAD and insn.zero):
            args = insn.args
            end = max(end, args["dram"] + (args["rows"] - 1) * args["stride"]
                      + args["len"] * element_bytes(args["mem"]))
        elif insn.opcode is Opcode.COUNTERS:
            end = max(end, insn.args["dram"] + SNAPSHOT_BYTES)
    return end


def repeat_measurements(store: HistoryStore, measurements: Sequence[Sequence[RunRecord]], *, repeats: int,
                        device: str = "verilator", budget_seconds: float | None = None,
                        seed: int = 0, progress: Callable[[str], None] | None = print) -> CalibrationReport:
    """Run measured kernels again until each measurement has ``repeats`` runs under backpressure.

    ``measurements``: groups of repeats (:func:`~.store.group_repeats`) of calibration runs under
    backpressure, each run with its program.  Calibration runs a long kernel once per level (its
    stalls average out over many requests), but then its "mean of repeats" is a single run, and the
    held-out worst error of such a measurement is partly its one stall pattern's luck: this tops the
    worst of them up.  Each new run executes the stored program (no kernel is generated again)
    placed after every byte it touches, as :func:`~braze.sw.compiler.kernels.run_kernels` places
    a kernel's, over random operands, under the next unused :func:`calibration_seed` of its
    signature, and is recorded as a copy of the measurement's first run with the new counters.
    Resumable: a measurement with ``repeats`` runs already is skipped.
    """
    from braze.sim.device import open_device

    if not isinstance(repeats, int) or repeats < 2:
        raise CalibrationOptionError(f"repeats={repeats!r}: repeating a measurement means at least 2 runs")
    report = CalibrationReport()
    started = time.monotonic()
    rng = np.random.default_rng(seed)
    by_config: dict[str, list[Sequence[RunRecord]]] = defaultdict(list)
    for group in measurements:
        first = group[0]
        if first.stall <= 0.0 or first.program is None or first.device != device:
            raise CalibrationOptionError(
                f"repeat_measurements: a {first.family} run on {first.config_name} (stall {first.stall}, "
                f"device {first.device}, program {'kept' if first.program else 'missing'}) cannot be "
                f"repeated: only {device} runs under backpressure with their programs can")
        if len(group) >= repeats:
            report.skipped += 1
            continue
        by_config[first.config_name].append(group)
    for config_name, groups in by_config.items():
        config = Config.from_dict(groups[0][0].config)
        with open_device(device, config) as dev:
            for group in groups:
                first = group[0]
                instructions = unpack_program(first.program)
                data_end = _data_end(instructions)
                base = -(-data_end // OPERAND_ALIGN) * OPERAND_ALIGN
                program = [*instructions, Instruction.make(Opcode.HALT)]
                counters_at = [insn.args["dram"] for insn in instructions if insn.opcode is Opcode.COUNTERS]
                if not counters_at:
                    report.failed.append(f"{first.family} on {config_name}: its program takes no snapshot")
                    continue
                used = {record.stall_seed for record in group}
                seeds = [candidate for candidate in dict.fromkeys(
                    calibration_seed(first.signature_hash, repeat) for repeat in range(4 * repeats))
                    if candidate not in used][:repeats - len(group)]
                dev.set_stall(first.stall)
                runs = len(group)
                for stall_seed in seeds:
                    if budget_seconds is not None and time.monotonic() - started > budget_seconds:
                        report.out_of_time = True
                        break
                    dev.write(0, rng.integers(0, 256, size=data_end, dtype=np.uint8).tobytes())
                    dev.set_stall_seed(stall_seed)
                    try:
                        dev.run(program, base=base)
                    except BrazeError as error:
                        report.failed.append(f"{first.family} on {config_name}: {str(error).splitlines()[0]}")
                        break
                    counters = parse_snapshot(dev.read(counters_at[-1], SNAPSHOT_BYTES))
                    counters = {name: int(value) for name, value in counters.items()}
                    store.add(dataclasses.replace(first, counters=counters, stall_seed=stall_seed, id=None,
                                                  recorded_at=time.time(),
                                                  energy_pj=kernel_energy_pj(counters, config)["total"]))
                    report.ran += 1
                    runs += 1
                if progress:
                    progress(f"{first.family} on {config_name} at stall {first.stall}: "
                             f"{runs} runs ({time.monotonic() - started:.0f} s)")
                if report.out_of_time:
                    break
        if report.out_of_time:
            break
    report.seconds = time.monotonic() - started
    return report


#: How many held-out measurements made once under backpressure :func:`repeat_worst_measured_once` repeats
#: by default (``braze hpm repeat --worst``, and ``braze bench hpm`` after its calibration).
WORST_TO_REPEAT = 30


def repeat_worst_measured_once(store: HistoryStore, records: Sequence[RunRecord], *,
                               worst: int = WORST_TO_REPEAT, repeats: int = DEFAULT_REPEATS,
                               device: str = "verilator", regressor: str = "lightgbm",
                               budget_seconds: float | None = None,
                               progress: Callable[[str], None] | None = print) -> CalibrationReport:
    """Repeat the ``worst`` held-out measurements of ``records`` made once under backpressure, up to
    ``repeats`` runs each (:func:`repeat_measurements` on the calibration runs of ``store``).

    Held out by family (:func:`~.evaluate.holdout_by_family`), the measurements whose learned error is
    largest among those calibration made once under backpressure (:func:`~.evaluate.worst_measured_once`:
    long kernels, whose "mean of repeats" is then a single stall pattern's luck) are the ones whose
    worst error a repeat can change, so a fixed, small number of repeats goes there first.
    """
    from .evaluate import holdout_by_family, worst_measured_once

    chosen = worst_measured_once(holdout_by_family(records, regressor=regressor), worst)
    wanted = {(signature_hash(m.signature), m.config_name, m.stall) for m in chosen}
    groups = [group for group in group_repeats(store.records(device=device, programs=True))
              if group[0].source == "calibrate"
              and (group[0].signature_hash, group[0].config_name, group[0].stall) in wanted]
    return repeat_measurements(store, groups, repeats=repeats, device=device, budget_seconds=budget_seconds,
                               progress=progress)
