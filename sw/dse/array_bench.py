"""``braze bench array``: how much a reconfigurable array (issue 17) could speed up the compiler's GEMMs.

Nothing of issue 17 is built yet: the machine has one weight-stationary (WS) dataflow and one array.
Before building an output-stationary (OS) mode or array fission, this benchmark measures the most
either could gain, on the programs the compiler really emits, under the timing model
(:mod:`braze.isa.timing`).  The timing model leaves out instruction fetch and the memory's
latency and backpressure, so on the RTL these small kernels take more cycles than it predicts
(``--device verilator`` shows it: 13-31% more on the M <= 16 shapes, with the MATMULs' own
``array_busy`` as predicted); the array's share of the real run is smaller still.

For every GEMM shape of the issue on each preset it takes the program ``gemm(config, M, K, N)`` picks
(``ws_pick``) and the programs of all its orderable candidate tilings, and schedules each with every
MATMUL priced four ways:

``ws``
    :func:`~braze.isa.timing.instruction_cycles`: today's machine.
``overlapped``
    ``chunks * (rows + m)``: WS with its fill and drain (``rows + cols + MATMUL_LATENCY``) hidden
    under the next instruction -- what pipelining consecutive MATMULs would give.
``one_port``
    ``ceil((m*k + k*n) / cols)``: every byte of A and B read once through the one ``cols``-byte
    scratchpad compute read port, nothing else.  No dataflow (OS included) and no fission that feeds
    the array through that port can take fewer cycles for the instruction.
``free``
    1 cycle: an infinitely fast array.  What remains is the DMA, the epilogue and the store.

A column ``price`` shows ``ws_pick / (fewest cycles of any candidate tiling under that price)``: a
*ceiling* on the speedup of that change, with the tiling engine re-picking the tiling for it (the
loads, epilogues and stores stay the compiler's).  ``ws_best`` is that minimum under ``ws`` itself
(``gemm`` keeps to the double-buffered candidates, so on the M = 1 shapes of the large preset a
single-buffered tiling is already 12-16% faster).  The table shows that the issue's targets are out
of reach of the array alone: on the M = 1 shapes even a free array gained at most 1.3x on default
and 1.7x on large (before the presets turned on their overlaps; default_ws1: 1.48x), below the 1.8x
target, and any dataflow behind the one read port at most
``one_port``.

The prices replace each MATMUL's duration, one MATMUL at a time, and ``one_port`` assumes the one read
port: so the shape and network studies run on the preset with ``weight_preload`` and ``matmul_overlap``
off (:func:`study_config`; the table names it ``<preset>_ws1``).  With the presets' two MATMULs in flight
the timing model's MATMUL pipe times them itself and a per-instruction price has nothing to replace
(:func:`price_program` refuses).  The fission study runs on the large preset as shipped.

The same four prices over a whole network (``--network``, default the demo's digits CNN at batch 1):
its kernels as the compiler emits them today, summed.

Fission: four independent ``16 x 16 x 16`` GEMMs on the large preset, run one after another (four
kernels), against two lower bounds of any schedule that runs them side by side: without fission (the
compute unit runs the four kernels' MATMULs, epilogues and vector instructions in turn) and with an
ideal 2 x 2 fission (each GEMM on its own 8 x 8 sub-array, all four at once, the compiler's own
8 x 8 tiling), both behind the one load unit, store unit and vector unit.

``--synth`` synthesizes the bare PE array of each preset and prints the issue's 15% area budget for
the mode logic in cells (no mode logic is built to measure against it).

Ends with ``array: best_vs_ws_small_worst=n/a fission_speedup=n/a area_overhead_pct=n/a
mismatches=n/a one_port_small_worst=<x> free_small_worst=<x> free_m1_worst=<x> fission_ceiling=<x>``:
the issue's four fields are ``n/a`` because neither an OS mode nor fission is built (there is no
compiler pick other than WS, nothing to verify and no mode logic to synthesize); the added fields are
the ceilings above (``*_small_worst``: the smallest ceiling among the M <= 16 shapes, ``free_m1_worst``
among the M = 1 shapes; ``fission_ceiling``: one-after-another cycles over the fissioned lower bound).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from braze.isa import Config, Instruction, Opcode
from braze.isa.errors import ArgumentParser
from braze.isa.timing import Scheduler, instruction_cycles, matmul_chunks, timing_key

__all__ = ["SHAPES", "PRICES", "ShapeStudy", "FissionStudy", "NetworkStudy", "Measurement", "price_program",
           "study_config", "study_shape", "study_fission", "study_network", "measure_picks", "main"]

#: The GEMM shapes (M, K, N) of issue 17.
SHAPES: tuple[tuple[int, int, int], ...] = (
    (1, 64, 10), (1, 64, 32), (16, 16, 16), (64, 9, 8), (64, 64, 64), (128, 128, 128), (256, 256, 256))
#: Shapes whose M is at most this are "small" (the issue's ``best_vs_ws_small_worst``).
SMALL_M = 16

MatmulPrice = Callable[[Instruction, Config], int]


def _one_port_cycles(insn: Instruction, config: Config) -> int:
    """Cycles to read every byte of A (m x k) and B (k x n) once through one ``cols``-byte port."""
    args = insn.args
    operand_bytes = args["m"] * args["k"] + args["k"] * args["n"]
    return max(1, -(-operand_bytes // config.cols))


#: How a MATMUL is priced, by name (see the module docstring); ``ws`` is the machine as built.
PRICES: dict[str, MatmulPrice] = {
    "ws": instruction_cycles,
    "overlapped": lambda insn, config: matmul_chunks(insn, config) * (config.rows + insn.args["m"]),
    "one_port": _one_port_cycles,
    "free": lambda insn, config: 1,
}


def study_config(config: Config) -> Config:
    """``config`` with one MATMUL at a time through the one scratchpad read port (``weight_preload`` and
    ``matmul_overlap`` off): the machine whose MATMULs the prices replace (see the module docstring)."""
    if not (config.weight_preload or config.matmul_overlap):
        return config
    return config.replace(name=f"{config.name}_ws1", weight_preload=0, matmul_overlap=0)


def price_program(program: Sequence[Instruction], config: Config, matmul_price: MatmulPrice) -> int:
    """Cycles of ``program`` under the timing model, every MATMUL taking ``matmul_price(insn, config)``.

    Raises ValueError for a price other than ``ws`` with ``config.matmul_overlap``: the timing model
    then times the MATMULs from their shapes and would ignore the price (use :func:`study_config`)."""
    if config.matmul_overlap and matmul_price is not PRICES["ws"]:
        raise ValueError(f"config {config.name!r} has matmul_overlap=1: its MATMULs are timed by the MATMUL "
                         "pipe, not by a price; reprice on study_config(config)")
    scheduler = Scheduler(config, keep_entries=False)
    for insn in program:
        cycles = matmul_price(insn, config) if insn.opcode is Opcode.MATMUL else None
        scheduler.add_keyed(insn, timing_key(insn, config, cycles))
    return scheduler.cycles


@dataclasses.dataclass(frozen=True)
class ShapeStudy:
    """One GEMM on one preset: the compiler's pick, and every candidate tiling priced every way.

    ``pick_cycles``: the program :func:`~braze.sw.compiler.kernels.gemm` picks (today's machine).
    ``best``: per price of :data:`PRICES`, the fewest cycles among the orderable candidate tilings
    (:func:`~braze.sw.compiler.kernels.matmul_tilings`) with every MATMUL priced so -- what the tiling
    engine could reach if the change were built and priced by the timing model.
    """

    preset: str
    shape: tuple[int, int, int]
    matmuls: int
    busy: dict[str, int]
    pick_cycles: int
    candidates: int
    best: dict[str, int]

    def ceiling(self, price: str) -> float:
        """Speedup over the compiler's pick if every MATMUL took the ``price`` cycles and the best
        candidate tiling for that were picked: an upper bound for that change."""
        return self.pick_cycles / self.best[price]


def study_shape(config: Config, shape: tuple[int, int, int]) -> ShapeStudy:
    from braze.sw.compiler.kernels import KernelError, gemm, matmul_tilings

    pick = gemm(config, *shape).program()
    scheduler = Scheduler(config, keep_entries=False)
    for insn in pick:
        scheduler.add(insn)
    assert price_program(pick, config, PRICES["ws"]) == scheduler.cycles, \
        "repricing with the timing model's own prices must be exact"
    best: dict[str, int] = {}
    candidates = 0
    for tiling in matmul_tilings(config, *shape):
        try:
            program = gemm(config, *shape, tiling=tiling).program()
        except KernelError:
            continue          # not orderable with this configuration's token queues
        candidates += 1
        for name, price in PRICES.items():
            cycles = price_program(program, config, price)
            best[name] = min(best.get(name, cycles), cycles)
    return ShapeStudy(config.name, shape, sum(insn.opcode is Opcode.MATMUL for insn in pick), scheduler.busy,
                      scheduler.cycles, candidates, best)


@dataclasses.dataclass(frozen=True)
class FissionStudy:
    """``count`` independent GEMMs of ``shape``: one after another against side-by-side lower bounds."""

    preset: str
    shape: tuple[int, int, int]
    count: int
    split: int
    sequential: int
    together_bound: int
    fissioned_bound: int

    @property
    def ceiling(self) -> float:
        """One-after-another cycles over the fissioned lower bound: the most fission could gain."""
        return self.sequential / self.fissioned_bound

    @property
    def together_ceiling(self) -> float:
        """The same without fission: running the kernels side by side on the one array."""
        return self.sequential / self.together_bound


def _independent_gemms(config: Config, shape: tuple[int, int, int], count: int) -> list:
    """``count`` GEMM kernels of ``shape`` with disjoint operands, one after another in memory."""
    from braze.sw.compiler.kernels import gemm

    kernels = [gemm(config, *shape)]
    while len(kernels) < count:
        kernels.append(gemm(config, *shape, base=kernels[-1].data_end))
    return kernels


def study_fission(config: Config, shape: tuple[int, int, int] = (16, 16, 16), count: int = 4,
                  split: int = 2) -> FissionStudy:
    """Bounds for ``count`` independent GEMMs, the array split ``split x split`` (``count`` sub-arrays).

    ``sequential``: the ``count`` kernels linked into one program, one after another (each ends in
    its COUNTERS barrier), as the runtime runs them today.  ``together_bound``: the busiest unit when
    all their instructions share the load, compute and store units (no schedule of them on today's
    machine is shorter).  ``fissioned_bound``: the same, but each GEMM's MATMULs on its own
    ``rows/split x cols/split`` sub-array running concurrently, priced by the compiler's kernel for
    that sub-array size; the epilogues and vector instructions still share one vector unit.
    """
    from braze.sw.compiler.kernels import gemm, link

    if split * split != count:
        raise ValueError(f"a {split}x{split} split has {split * split} sub-arrays, not {count}")
    scheduler = Scheduler(config, keep_entries=False)
    for insn in link(_independent_gemms(config, shape, count)):
        scheduler.add(insn)
    busy = scheduler.busy

    sub_config = config.replace(name=f"{config.name}_sub", rows=config.rows // split,
                                cols=config.cols // split)
    sub_scheduler = Scheduler(sub_config, keep_entries=False)
    for insn in gemm(sub_config, *shape).program():
        sub_scheduler.add(insn)
    sub_array_busy = sub_scheduler.busy["array_busy"]

    load, store, vector = (busy[name] for name in ("load_busy", "store_busy", "vector_busy"))
    together = max(load, store, vector + busy["array_busy"])
    fissioned = max(load, store, vector, sub_array_busy)
    return FissionStudy(config.name, shape, count, split, scheduler.cycles, together, fissioned)


@dataclasses.dataclass(frozen=True)
class NetworkStudy:
    """A whole workload's kernels, as compiled, with every MATMUL priced every way (summed over kernels).

    The tilings are not re-picked here (unlike :class:`ShapeStudy`): the ceilings are of the programs
    the compiler emits for the network today.
    """

    workload: str
    preset: str
    kernels: int
    cycles: dict[str, int]

    def ceiling(self, price: str) -> float:
        return self.cycles["ws"] / self.cycles[price]


def study_network(workload: str, config: Config, batch: int = 1) -> NetworkStudy:
    """``workload`` in ``braze bench dse`` syntax (``digits-cnn``, ``gemm:MxKxN``, ``MODEL.onnx``)."""
    from .workload import parse_workload

    parsed = parse_workload(workload, batch=batch)
    kernels = parsed.kernels(config)
    cycles = {name: sum(price_program(kernel.program(), config, price) for kernel in kernels)
              for name, price in PRICES.items()}
    return NetworkStudy(parsed.key, config.name, len(kernels), cycles)


@dataclasses.dataclass(frozen=True)
class Measurement:
    """The compiler's pick of one GEMM run on a device: cycles measured against the timing model."""

    preset: str
    shape: tuple[int, int, int]
    predicted: int
    measured: int
    array_busy_predicted: int
    array_busy_measured: int
    outputs_equal: bool


def measure_picks(device_kind: str, config: Config, shapes: Sequence[tuple[int, int, int]],
                  seed: int = 0) -> list[Measurement]:
    """Run ``gemm(config, *shape)`` with random operands on the golden model and on ``device_kind``."""
    import numpy as np

    from braze.sim.device import open_device
    from braze.sw.compiler.kernels import gemm, run_kernel

    rng = np.random.default_rng(seed)
    measurements = []
    with open_device("golden", config) as golden, open_device(device_kind, config) as device:
        for shape in shapes:
            kernel = gemm(config, *shape)
            m, k, n = shape
            inputs = {"A": rng.integers(-128, 128, (m, k), dtype=np.int8),
                      "B": rng.integers(-128, 128, (k, n), dtype=np.int8)}
            expected = run_kernel(golden, kernel, inputs)
            result = run_kernel(device, kernel, inputs)
            equal = all(np.array_equal(expected.outputs[name], result.outputs[name])
                        for name in expected.outputs)
            measurements.append(Measurement(config.name, shape, expected.cycles, result.cycles,
                                            expected.counters["array_busy"], result.counters["array_busy"],
                                            equal))
    return measurements


#: Share of the array's area the issue allows the mode logic of both features.
AREA_BUDGET = 0.15


def _format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [list(map(str, header))] + [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def shape_table(studies: Sequence[ShapeStudy]) -> str:
    rows = []
    for study in studies:
        rows.append([study.preset, "x".join(map(str, study.shape)), study.matmuls, study.busy["array_busy"],
                     study.busy["load_busy"], study.pick_cycles, "n/a (not built)", study.best["ws"],
                     *(f"{study.ceiling(name):.2f}x" for name in PRICES)])
    return _format_table(["preset", "MxKxN", "matmuls", "array_busy", "load_busy", "ws_pick", "os_cycles",
                          "ws_best", *PRICES], rows)


def summary_line(studies: Sequence[ShapeStudy], fission: FissionStudy) -> str:
    small = [study for study in studies if study.shape[0] <= SMALL_M]
    m1 = [study for study in studies if study.shape[0] == 1]
    one_port = min(study.ceiling("one_port") for study in small)
    free = min(study.ceiling("free") for study in small)
    free_m1 = min(study.ceiling("free") for study in m1)
    return ("array: best_vs_ws_small_worst=n/a fission_speedup=n/a area_overhead_pct=n/a mismatches=n/a "
            f"one_port_small_worst={one_port:.2f} free_small_worst={free:.2f} free_m1_worst={free_m1:.2f} "
            f"fission_ceiling={fission.ceiling:.2f}")


def _parse_shape(parser: ArgumentParser, text: str) -> tuple[int, int, int]:
    parts = text.strip().lower().split("x")
    try:
        shape = tuple(int(part) for part in parts)
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        parser.error(f"argument --shapes: {text.strip()!r} is not MxKxN with three positive integers")
    return shape


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="braze bench array", description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="default,large",
                        help="comma-separated configurations (presets or braze --config syntax); "
                             "default: default,large")
    parser.add_argument("--shapes", default=",".join("x".join(map(str, shape)) for shape in SHAPES),
                        help="comma-separated GEMM shapes MxKxN (default: the issue's seven)")
    parser.add_argument("--network", default="digits-cnn",
                        help="also price a whole workload's kernels (braze bench dse syntax: digits-cnn, "
                             "gemm:MxKxN or MODEL.onnx; 'none' to skip; default: digits-cnn)")
    parser.add_argument("--batch", type=int, default=1, help="batch size of --network (default: 1)")
    parser.add_argument("--synth", action="store_true",
                        help="synthesize the bare PE array of each preset (Yosys synth_ecp5, minutes unless "
                             "cached) and print the issue's 15%% area budget for mode logic in cells")
    parser.add_argument("--device", help="also run the compiler's pick of the M <= 16 shapes on this device "
                                         "(amaranth or verilator; verilator builds take minutes) and compare "
                                         "cycles and outputs with the reference model")
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error(f"argument --batch: {args.batch} must be at least 1")
    configs = [study_config(Config.parse(text)) for text in args.presets.split(",") if text.strip()]
    if not configs:
        parser.error("argument --presets: no configuration given")
    shapes = [_parse_shape(parser, text) for text in args.shapes.split(",") if text.strip()]
    if not shapes:
        parser.error("argument --shapes: no shape given")
    studies = [study_shape(config, shape) for config in configs for shape in shapes]
    if not any(study.shape[0] <= SMALL_M for study in studies):
        parser.error(f"argument --shapes: the summary needs a shape with M <= {SMALL_M} and one with M = 1")
    if not any(study.shape[0] == 1 for study in studies):
        parser.error("argument --shapes: the summary needs a shape with M = 1")
    print("== the compiler's GEMMs (WS, the only dataflow built, one MATMUL at a time) and the ceilings of "
          "changes to the array ==")
    print("   ws .. free: ws_pick over the fewest cycles of any candidate tiling with every MATMUL priced so "
          "(braze bench array --help)")
    print(shape_table(studies))
    if args.network != "none":
        networks = [study_network(args.network, config, args.batch) for config in configs]
        print(f"\n== {networks[0].workload}: its kernels as compiled, ws_total over the total priced so ==")
        rows = [[network.preset, network.kernels, network.cycles["ws"],
                 *(f"{network.ceiling(name):.2f}x" for name in PRICES)] for network in networks]
        print(_format_table(["preset", "kernels", "ws_total", *PRICES], rows))
    if args.device:
        measurements = [measurement for config in configs for measurement in measure_picks(
            args.device, config, [shape for shape in shapes if shape[0] <= SMALL_M])]
        print(f"\n== the compiler's pick on the {args.device} device ==")
        print(_format_table(["preset", "MxKxN", "predicted", "measured", "array_busy predicted", "measured",
                             "outputs"],
                            [[m.preset, "x".join(map(str, m.shape)), m.predicted, m.measured,
                              m.array_busy_predicted, m.array_busy_measured,
                              "equal" if m.outputs_equal else "DIFFER"] for m in measurements]))
    if args.synth:
        print("\n== area budget: the bare PE array (ECP5, synth_ecp5; no mode logic is built to compare) ==")
        from braze.hw.fpga import array_area

        rows = []
        for config in configs:
            area = array_area(config)
            rows.append([config.name, f"{config.rows}x{config.cols}",
                         *(f"{area[kind]} ({AREA_BUDGET * area[kind]:.0f})"
                           for kind in ("luts", "carry", "dsps", "ffs"))])
        print(_format_table(["preset", "array", "LUT4 (15%)", "carry (15%)", "DSP (15%)", "FF (15%)"], rows))
    large = Config.preset("large")
    fission = study_fission(large)
    shape = "x".join(map(str, fission.shape))
    print(f"\n== {fission.count} independent {shape} GEMMs on {fission.preset} ==")
    print(_format_table(
        ["schedule", "cycles", "speedup"],
        [["one after another (built)", fission.sequential, "1.00x"],
         ["side by side, one array (lower bound)", fission.together_bound,
          f"{fission.together_ceiling:.2f}x"],
         [f"side by side, {fission.split}x{fission.split} fission (lower bound)", fission.fissioned_bound,
          f"{fission.ceiling:.2f}x"]]))
    print("\nnot built: the OS mode, fission, their RTL, compiler candidates and verification (n/a below)")
    print(summary_line(studies, fission))
    return 0
